//! `shipgate login`: signs in at the server's identity provider through the browser, and keeps
//! the CLI session it gives (RFC 8252: the provider comes back to a loopback listener).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use shipgate_api::answers::{LoginStarted, SessionToken};
use shipgate_api::requests::{LoginRequest, TokenExchangeRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cli::Global;
use crate::client::connect_without_token;
use crate::credentials;
use crate::output::Printer;

/// How long the sign-in in the browser may take.
const PATIENCE: Duration = Duration::from_secs(300);
/// The most of a request from the browser that is read.
const MAX_REQUEST: usize = 16 * 1024;

/// What the provider sent back to the loopback listener.
struct Callback {
    code: String,
    state: String,
}

pub(super) async fn login(g: &Global, out: Printer, browser: bool) -> anyhow::Result<ExitCode> {
    let client = connect_without_token(g)?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("listening on loopback for the identity provider's answer")?;
    let port = listener
        .local_addr()
        .context("reading the loopback port")?
        .port();
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");
    let started: LoginStarted = client
        .post("/auth/login", &LoginRequest { redirect_uri })
        .await?;
    let expected_state = reqwest::Url::parse(&started.authorize_url)
        .ok()
        .and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| k == "state")
                .map(|(_, v)| v.into_owned())
        })
        .context("the server's sign-in address carries no state")?;
    eprintln!("Open this address to sign in: {}", started.authorize_url);
    if browser {
        open_browser(&started.authorize_url);
    }
    let callback = tokio::time::timeout(PATIENCE, wait_for_callback(&listener, &expected_state))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no sign-in came back within {} minutes; run shipgate login again",
                PATIENCE.as_secs() / 60
            )
        })??;
    let session: SessionToken = client
        .post(
            "/auth/token",
            &TokenExchangeRequest {
                code: callback.code,
                state: callback.state,
            },
        )
        .await?;
    let path = credentials::keep(
        client.base(),
        credentials::Stored {
            token: session.token.clone(),
            expires_at: session.expires_at,
        },
    )?;
    let shown = serde_json::json!({
        "name": session.name,
        "roles": session.roles,
        "expires_at": session.expires_at,
        "credentials": path,
    });
    out.print(&shown, |_| {
        format!(
            "signed in as {} with roles {} (until {}; kept in {})",
            session.name,
            session.roles.join(", "),
            session.expires_at.strftime("%Y-%m-%d %H:%M UTC"),
            path.display()
        )
    });
    Ok(ExitCode::SUCCESS)
}

/// Asks the desktop to open `url`; nothing happens where there is none.
fn open_browser(url: &str) {
    let started = std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Ok(mut child) = started {
        // Reaped in the background; its outcome does not matter (the address is printed).
        std::thread::spawn(move || child.wait());
    }
}

/// Answers requests on the loopback listener until one is the provider's answer to this
/// sign-in (another path, such as the browser's favicon, gets a 404).
async fn wait_for_callback(
    listener: &TcpListener,
    expected_state: &str,
) -> anyhow::Result<Callback> {
    loop {
        let (mut stream, _) = listener
            .accept()
            .await
            .context("waiting for the identity provider's answer")?;
        let Some(target) = request_target(&mut stream).await else {
            continue;
        };
        let Ok(url) = reqwest::Url::parse(&format!("http://127.0.0.1{target}")) else {
            answer(
                &mut stream,
                "400 Bad Request",
                "This is not a sign-in answer.",
            )
            .await;
            continue;
        };
        if url.path() != "/callback" {
            answer(&mut stream, "404 Not Found", "Nothing here.").await;
            continue;
        }
        let param = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        if param("state").as_deref() != Some(expected_state) {
            answer(
                &mut stream,
                "400 Bad Request",
                "This answer belongs to another sign-in; it was ignored.",
            )
            .await;
            continue;
        }
        if let Some(error) = param("error") {
            let description = param("error_description")
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            answer(
                &mut stream,
                "403 Forbidden",
                "The identity provider did not sign you in; see the terminal.",
            )
            .await;
            bail!("the identity provider did not sign you in: {error}{description}");
        }
        let Some(code) = param("code") else {
            answer(&mut stream, "400 Bad Request", "The answer has no code.").await;
            continue;
        };
        answer(
            &mut stream,
            "200 OK",
            "Signed in to shipgate. You can close this tab and go back to the terminal.",
        )
        .await;
        return Ok(Callback {
            code,
            state: expected_state.to_owned(),
        });
    }
}

/// The target of a `GET` request (`/callback?...`), once its head has arrived.
async fn request_target(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if read == 0 || head.len() > MAX_REQUEST {
            return None;
        }
        head.extend_from_slice(&buf[..read]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut first = head.lines().next()?.split(' ');
    match (first.next(), first.next()) {
        (Some("GET"), Some(target)) if target.starts_with('/') => Some(target.to_owned()),
        _ => None,
    }
}

/// A small page for the browser.
async fn answer(stream: &mut TcpStream, status: &str, message: &str) {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>shipgate</title></head><body><p>{message}</p></body></html>"
    );
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
