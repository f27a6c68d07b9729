//! JWKS fetched from a URL: cached, and re-fetched when a token names a key
//! the cache does not have (issuer key rotation).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use signet_core::SystemClock;
use signet_core::clock::ManualClock;
use signet_core::duration::HumanDuration;
use signet_istio::auth::jwt::JwtAuthenticator;
use signet_istio::config::JwtIssuerConfig;
use signet_istio::dev::DevIssuer;
use signet_istio::identity::Identity;

#[tokio::test]
async fn keys_are_refetched_when_the_issuer_rotates() {
    let old_dir = tempfile::tempdir().unwrap();
    let new_dir = tempfile::tempdir().unwrap();
    let old = DevIssuer::ensure(old_dir.path()).unwrap();
    let new = DevIssuer::ensure(new_dir.path()).unwrap();
    let served = Arc::new(Mutex::new(std::fs::read(&old.jwks).unwrap()));
    let fetches = Arc::new(Mutex::new(0u32));
    let app = {
        let (served, fetches) = (served.clone(), fetches.clone());
        axum::Router::new().route(
            "/keys",
            axum::routing::get(move || {
                let (served, fetches) = (served.clone(), fetches.clone());
                async move {
                    *fetches.lock().unwrap() += 1;
                    served.lock().unwrap().clone()
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let auth = JwtAuthenticator::new(
        JwtIssuerConfig {
            issuer: "signet-dev".into(),
            cluster: "east".into(),
            jwks_file: None,
            jwks_url: Some(format!("http://{addr}/keys")),
            audiences: vec!["istio-ca".into()],
            jwks_refresh: HumanDuration::from_secs(3600),
            leeway: HumanDuration::from_secs(60),
        },
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let t = old
        .mint(
            "default",
            "demo",
            Duration::from_secs(600),
            SystemTime::now(),
        )
        .unwrap();
    for _ in 0..5 {
        match auth.verify(&t).await.unwrap() {
            Identity::ServiceAccount {
                cluster,
                namespace,
                name,
                ..
            } => assert_eq!(
                (cluster.as_str(), namespace.as_str(), name.as_str()),
                ("east", "default", "demo")
            ),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(*fetches.lock().unwrap(), 1, "cached");

    // The issuer rotates to a new key; a token with the new kid triggers a fetch.
    *served.lock().unwrap() = std::fs::read(&new.jwks).unwrap();
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(31)).await;
    tokio::time::resume();
    let t2 = new
        .mint(
            "default",
            "demo",
            Duration::from_secs(600),
            SystemTime::now(),
        )
        .unwrap();
    auth.verify(&t2).await.expect("new key fetched");
    assert_eq!(*fetches.lock().unwrap(), 2);
    // The old key is gone: its token, verified (and remembered) before, is
    // checked again and refused.
    assert!(
        auth.verify(&t).await.is_err(),
        "a withdrawn key's token is not accepted from memory"
    );
    // Unknown kids do not hammer the issuer: within 30 s no new fetch.
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger = DevIssuer::ensure(stranger_dir.path()).unwrap();
    let t3 = stranger
        .mint(
            "default",
            "demo",
            Duration::from_secs(600),
            SystemTime::now(),
        )
        .unwrap();
    assert!(auth.verify(&t3).await.is_err());
    assert!(auth.verify(&t3).await.is_err());
    assert_eq!(*fetches.lock().unwrap(), 2, "rate-limited re-fetch");
}

/// A verified token is remembered, and the time checks are made again on
/// every use: past its `exp` (and the leeway) it is refused as expired.
#[tokio::test]
async fn a_remembered_token_still_expires() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = DevIssuer::ensure(dir.path()).unwrap();
    let start = SystemTime::now();
    let clock = Arc::new(ManualClock::new(start));
    let auth = JwtAuthenticator::new(
        JwtIssuerConfig {
            issuer: "signet-dev".into(),
            cluster: "east".into(),
            jwks_file: Some(issuer.jwks.clone()),
            jwks_url: None,
            audiences: vec!["istio-ca".into()],
            jwks_refresh: HumanDuration::from_secs(3600),
            leeway: HumanDuration::from_secs(60),
        },
        clock.clone(),
    )
    .await
    .unwrap();
    let t = issuer
        .mint("default", "demo", Duration::from_secs(600), start)
        .unwrap();
    let digest = signet_core::crypto::sha256(t.as_bytes());
    assert!(auth.remembered(&digest).is_none());
    auth.verify(&t).await.unwrap();
    assert!(auth.remembered(&digest).is_some(), "remembered");
    clock.advance(Duration::from_secs(600 + 30));
    auth.verify(&t).await.expect("within the leeway");
    clock.advance(Duration::from_secs(60));
    assert!(auth.remembered(&digest).is_none());
    match auth.verify(&t).await {
        Err(signet_istio::auth::AuthError::Invalid { public, .. }) => {
            assert_eq!(public, "token expired")
        }
        other => panic!("{other:?}"),
    }
}
