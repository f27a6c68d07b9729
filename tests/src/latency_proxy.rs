//! A TCP proxy that makes a healthy server slow: the server's answers
//! reach the client `delay` late (the server has done its work by then: a
//! slow answer, not a lost request). It can also take the server away
//! ([`LatencyProxy::set_down`]): connections are cut and new ones closed at
//! once, as when a server or its network is gone. It runs on its own thread
//! and runtime, so a test that blocks (killing a server, waiting on a
//! process) does not stall it. Stops when dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// A running proxy on 127.0.0.1.
#[derive(Debug)]
pub struct LatencyProxy {
    port: u16,
    delay_ms: Arc<AtomicU64>,
    down: tokio::sync::watch::Sender<bool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl LatencyProxy {
    /// Proxies 127.0.0.1:<ephemeral> to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Self {
        let upstream = upstream.to_owned();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let delay = delay_ms.clone();
        let (down, down_rx) = tokio::sync::watch::channel(false);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                port_tx
                    .send(listener.local_addr().expect("addr").port())
                    .expect("port");
                loop {
                    let (client, _) = tokio::select! {
                        _ = &mut stopped => return,
                        a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                    };
                    if *down_rx.borrow() {
                        drop(client);
                        continue;
                    }
                    let upstream = upstream.clone();
                    let delay = delay.clone();
                    let mut cut = down_rx.clone();
                    tokio::spawn(async move {
                        // Upstream down: the client sees its connection closed.
                        let Ok(server) = TcpStream::connect(&upstream).await else {
                            return;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (mut cr, mut cw) = client.into_split();
                        let (mut sr, mut sw) = server.into_split();
                        let up = async {
                            let _ = tokio::io::copy(&mut cr, &mut sw).await;
                            let _ = sw.shutdown().await;
                        };
                        // Latency, not throttling: each chunk leaves `delay`
                        // after it arrived, however it was split.
                        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                        let read = async move {
                            let mut buf = vec![0u8; 16 * 1024];
                            loop {
                                match sr.read(&mut buf).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => {
                                        let due = tokio::time::Instant::now()
                                            + Duration::from_millis(delay.load(Ordering::Relaxed));
                                        if tx.send((due, buf[..n].to_vec())).is_err() {
                                            break;
                                        }
                                    }
                                }
                            }
                        };
                        let write = async move {
                            while let Some((due, chunk)) = rx.recv().await {
                                tokio::time::sleep_until(due).await;
                                if cw.write_all(&chunk).await.is_err() {
                                    break;
                                }
                            }
                            let _ = cw.shutdown().await;
                        };
                        let down = async { tokio::join!(read, write) };
                        tokio::select! {
                            _ = async { tokio::join!(up, down) } => {}
                            _ = cut.wait_for(|d| *d) => {}
                        }
                    });
                }
            });
        });
        let port = port_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("proxy started");
        Self {
            port,
            delay_ms,
            down,
            stop: Some(stop),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Takes the server away (`true`: open connections are cut, new ones
    /// closed) or brings it back.
    pub fn set_down(&self, down: bool) {
        let _ = self.down.send(down);
    }

    /// Adds `d` of latency to the server's answers from now on.
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
