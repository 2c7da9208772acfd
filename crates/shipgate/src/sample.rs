//! The demo's sample app and its smoke test, built into the binary so the demo needs nothing
//! else. The app reads `VERSION` from its release directory; a `BUG` file there makes `/` fail,
//! which is what the smoke test catches.

use std::process::ExitCode;

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

/// The file whose presence in the release directory makes the app answer from
/// [`serve_minimal`].
pub const MINIMAL: &str = "MINIMAL";

/// Serves `/`, `/healthz` and `/version` on 127.0.0.1:`port` until stopped.
pub async fn serve(port: u16) -> anyhow::Result<ExitCode> {
    if std::path::Path::new(MINIMAL).exists() {
        return serve_minimal(port).await;
    }
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

/// The same three answers as [`serve`], from a hand-written HTTP/1.1 responder that costs almost
/// nothing per request (no router, no allocation per request beyond the read buffer), so that a
/// proxy in front of it measures its own cost (`shipgate-bench router`, on a release with a `MINIMAL` file).
/// Keep-alive and pipelining work; request bodies are skipped by their Content-Length, and a
/// chunked request body, which no benchmark sends, closes the connection.
async fn serve_minimal(port: u16) -> anyhow::Result<ExitCode> {
    let version = std::fs::read_to_string("VERSION")
        .unwrap_or_else(|_| "unknown".into())
        .trim()
        .to_owned();
    let env = std::env::var("SHIPGATE_ENV").unwrap_or_else(|_| "nowhere".into());
    let answers = std::sync::Arc::new(MinimalAnswers {
        root: canned(&format!("hello from the sample app {version} in {env}\n")),
        version: canned(&format!("{version}\n")),
        healthz: canned("ok\n"),
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("binding port {port}"))?;
    println!("sample app {version} (minimal responder) listening on 127.0.0.1:{port}");
    let accept = async {
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(answer_minimal(stream, answers.clone()));
        }
        #[allow(unreachable_code)]
        std::io::Result::Ok(())
    };
    tokio::select! {
        r = accept => r.context("accepting")?,
        () = crate::commands::shutdown_signal() => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// The full responses of the minimal responder, made once.
struct MinimalAnswers {
    root: Vec<u8>,
    version: Vec<u8>,
    healthz: Vec<u8>,
}

fn canned(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers the requests of one connection until the client closes it or asks to.
async fn answer_minimal(
    mut stream: tokio::net::TcpStream,
    answers: std::sync::Arc<MinimalAnswers>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::with_capacity(4096);
    let mut out = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut close = false;
        // Every complete request in the buffer (pipelined ones too) is answered in one write.
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = &buf[..end];
            let Ok(head) = std::str::from_utf8(head) else {
                return Ok(());
            };
            let path = head.split(' ').nth(1).unwrap_or("/");
            let mut body_len = 0usize;
            for line in head.split("\r\n").skip(1) {
                let Some((name, value)) = line.split_once(':') else {
                    continue;
                };
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    body_len = value.parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("transfer-encoding")
                    || (name.eq_ignore_ascii_case("connection")
                        && value.eq_ignore_ascii_case("close"))
                {
                    close = true;
                }
            }
            if buf.len() < end + 4 + body_len {
                break;
            }
            out.extend_from_slice(match path {
                "/version" => &answers.version,
                "/healthz" => &answers.healthz,
                _ => &answers.root,
            });
            buf.drain(..end + 4 + body_len);
            if close {
                break;
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if close {
            return Ok(());
        }
    }
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
