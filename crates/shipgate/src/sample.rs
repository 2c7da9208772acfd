//! The demo's sample app and its smoke test, built into the binary so the demo needs nothing
//! else. The app reads `VERSION` from its release directory; a `BUG` file there makes `/` fail,
//! which is what the smoke test catches.

use std::process::ExitCode;

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

/// Serves `/`, `/healthz` and `/version` on 127.0.0.1:`port` until stopped.
pub async fn serve(port: u16) -> anyhow::Result<ExitCode> {
    let version = std::fs::read_to_string("VERSION")
        .unwrap_or_else(|_| "unknown".into())
        .trim()
        .to_owned();
    let buggy = std::path::Path::new("BUG").exists();
    let env = std::env::var("SHIPGATE_ENV").unwrap_or_else(|_| "nowhere".into());
    let greeting = format!("hello from the sample app {version} in {env}\n");
    let v = version.clone();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/version", get(move || async move { format!("{v}\n") }))
        .route(
            "/",
            get(move || async move {
                if buggy {
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal error: division by zero in the greeting\n".to_owned(),
                    )
                } else {
                    (StatusCode::OK, greeting)
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("binding port {port}"))?;
    println!("sample app {version} listening on 127.0.0.1:{port}");
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::commands::shutdown_signal())
        .await
        .context("serving")?;
    Ok(ExitCode::SUCCESS)
}

/// Checks that `url` answers `/` with 200 and `/version` with the expected version.
pub async fn smoke(url: &str, expect_version: &str) -> anyhow::Result<ExitCode> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let home = http
        .get(format!("{url}/"))
        .send()
        .await
        .with_context(|| format!("GET {url}/"))?;
    let status = home.status();
    let body = home.text().await.unwrap_or_default();
    if !status.is_success() {
        println!("FAIL GET {url}/ answered {status}: {}", body.trim());
        return Ok(ExitCode::FAILURE);
    }
    println!("ok   GET {url}/ answered {status}");
    let version = http
        .get(format!("{url}/version"))
        .send()
        .await?
        .text()
        .await?;
    if version.trim() != expect_version {
        println!(
            "FAIL GET {url}/version answered {:?}, expected {expect_version:?}",
            version.trim()
        );
        return Ok(ExitCode::FAILURE);
    }
    println!("ok   GET {url}/version answered {expect_version}");
    Ok(ExitCode::SUCCESS)
}
