//! `signet-bench startup -- <command>`: spawns the command, polls a
//! readiness URL every millisecond, reports the time to the first 200, and
//! stops the command.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;

use crate::client::{self, Origin};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The readiness URL, e.g. https://127.0.0.1:8443/readyz.
    #[arg(long)]
    url: String,
    /// PEM file of the CA(s) to trust for an https URL.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Give up after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    timeout: Duration,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let tls = match &args.ca {
        Some(ca) => Some(client::tls_config(ca, &[b"http/1.1"])?),
        None => None,
    };
    let origin = Origin::parse(&args.url, tls)?;
    let path: http::Uri = args.url.parse()?;
    let path = path.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&args.command[0])
        .args(&args.command[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let ready = loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the command exited before it was ready: {status}");
        }
        if started.elapsed() > args.timeout {
            anyhow::bail!("not ready after {:?}", args.timeout);
        }
        if let Ok(mut sender) = origin.connect().await {
            let req = http::Request::get(path.as_str())
                .header(http::header::HOST, origin.authority.as_str())
                .body(Full::new(Bytes::new()))?;
            if let Ok((status, _)) = client::send(&mut sender, req).await
                && status.is_success()
            {
                break started.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    child.kill().await?;
    let ms = ready.as_secs_f64() * 1000.0;
    eprintln!("signet-bench: ready after {ms:.1} ms");
    println!("{}", serde_json::json!({ "ready_ms": ms }));
    Ok(())
}
