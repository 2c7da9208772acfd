//! The API client used by every client command and by the demo.

use std::path::Path;

use anyhow::{Context, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use shipgate_api::answers::CreatedRelease;
use shipgate_api::records::Promotion;
use shipgate_api::requests::{PromoteRequest, ReleaseQuery};
use shipgate_api::status::HistoryEntry;
use shipgate_core::PromotionId;

/// A refusal or failure answered by the server, with its problem+json detail.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct Refused {
    /// HTTP status.
    pub status: u16,
    /// What to do about it.
    pub detail: String,
    /// The problem+json body as the server sent it (printed as is with `--output json`).
    pub problem: Option<Value>,
}

impl Refused {
    /// A refusal the command itself makes, before asking the server.
    pub fn local(status: u16, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        let problem = serde_json::json!({
            "type": "about:blank",
            "title": "refused",
            "status": status,
            "detail": detail,
        });
        Self {
            status,
            detail,
            problem: Some(problem),
        }
    }

    /// Reads a failed answer's body: its problem+json, or the raw text when it is none.
    fn from_answer(status: reqwest::StatusCode, body: &[u8]) -> Self {
        let problem = serde_json::from_slice::<Value>(body)
            .ok()
            .filter(|v| v.get("detail").is_some_and(Value::is_string));
        let detail = problem
            .as_ref()
            .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| {
                format!(
                    "the server answered {status}: {}",
                    String::from_utf8_lossy(body)
                )
            });
        Self {
            status: status.as_u16(),
            detail,
            problem,
        }
    }
}

/// How long a client given several servers keeps trying when none takes a request: longer
/// than a lease (5 s by default) and a new leader's start.
const FAILOVER: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a client of one server keeps trying while it cannot connect: a server reloading
/// its config starts again in the same process, and is away for a moment.
const RESTARTING: std::time::Duration = std::time::Duration::from_secs(3);

/// How long a client keeps asking a server that answers it is starting its engine.
const STARTING: std::time::Duration = std::time::Duration::from_secs(20);

/// Talks to a server with one token. Given several servers (`--server URL1,URL2`), it uses
/// whichever answers: one that cannot be reached, or that stands by while another leads, is
/// passed over, and the one that answered is asked first next time.
#[derive(Clone)]
pub struct Client {
    bases: Vec<String>,
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for `bases`: one URL (e.g. `http://127.0.0.1:7300`) or several, comma-separated.
    pub fn new(bases: &str, token: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .context("building the HTTP client")?;
        let bases: Vec<String> = bases
            .split(',')
            .map(|b| b.trim().trim_end_matches('/').to_owned())
            .filter(|b| !b.is_empty())
            .collect();
        anyhow::ensure!(!bases.is_empty(), "--server names no server");
        Ok(Self {
            bases,
            current: std::sync::Arc::default(),
            token: token.to_owned(),
            http,
        })
    }

    /// The server's address, as the CLI reaches it (the one that answered last).
    pub fn base(&self) -> &str {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        &self.bases[i % self.bases.len()]
    }

    fn url(base: &str, path: &str) -> String {
        format!("{base}/api/v1{path}")
    }

    /// Sends the request `build` makes for a server's URL to the first server that takes it.
    /// A request is sent on only when the previous server did not take it: it could not be
    /// reached, or it answered 503 as a server standing by (or starting). Given several
    /// servers, a request that none took is tried again for up to [`FAILOVER`]: one of them
    /// takes the engine over within its lease, so a command (and `--wait`) rides out a failover.
    async fn answer(
        &self,
        build: impl Fn(&str) -> anyhow::Result<reqwest::RequestBuilder>,
    ) -> anyhow::Result<reqwest::Response> {
        let patience = if self.bases.len() > 1 {
            FAILOVER
        } else {
            std::time::Duration::ZERO
        };
        let started = std::time::Instant::now();
        'asking: loop {
            let first = self.current.load(std::sync::atomic::Ordering::Relaxed);
            let mut passed = Vec::new();
            for k in 0..self.bases.len() {
                let i = (first + k) % self.bases.len();
                let base = &self.bases[i];
                let request = build(base)?
                    .bearer_auth(&self.token)
                    .build()
                    .with_context(|| format!("making a request to {base}"))?;
                // A read cut off mid-way (its server died) is asked again; a write only when
                // it never reached the server.
                let rereadable = request.method() == reqwest::Method::GET;
                let response = match self.http.execute(request).await {
                    Ok(r) => r,
                    Err(e) if e.is_connect() => {
                        passed.push(format!("{base} cannot be reached"));
                        continue;
                    }
                    Err(e) if rereadable && self.bases.len() > 1 => {
                        passed.push(format!("{base} broke off: {e}"));
                        continue;
                    }
                    Err(e) => bail!("request to {base} failed: {e}"),
                };
                if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
                    && self.bases.len() > 1
                {
                    let body = response.bytes().await.unwrap_or_default();
                    let refused =
                        Refused::from_answer(reqwest::StatusCode::SERVICE_UNAVAILABLE, &body);
                    passed.push(format!("{base}: {}", refused.detail));
                    continue;
                }
                if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                    // A server that is starting (after a reload, say) did nothing with it.
                    let body = response.bytes().await.unwrap_or_default();
                    let refused =
                        Refused::from_answer(reqwest::StatusCode::SERVICE_UNAVAILABLE, &body);
                    if refused.detail.contains("is starting") && started.elapsed() < STARTING {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue 'asking;
                    }
                    return Err(refused.into());
                }
                self.current.store(i, std::sync::atomic::Ordering::Relaxed);
                return Ok(response);
            }
            if self.bases.len() == 1 && started.elapsed() < RESTARTING.max(patience) {
                // Not there for a moment (a reload), or starting: asked again.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
            if self.bases.len() == 1 {
                bail!(
                    "cannot reach the shipgate server at {} (start it with `shipgate server`, or pass --server URL)",
                    self.bases[0]
                );
            }
            if started.elapsed() >= patience {
                bail!(
                    "no shipgate server took the request within {}s: {} (start one, or check --server)",
                    patience.as_secs(),
                    passed.join("; ")
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        build: impl Fn(&str) -> anyhow::Result<reqwest::RequestBuilder>,
    ) -> anyhow::Result<T> {
        let response = self.answer(build).await?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .context("reading the server's answer")?;
        if !status.is_success() {
            return Err(Refused::from_answer(status, &body).into());
        }
        serde_json::from_slice(&body).with_context(|| {
            format!(
                "the server's answer is not the JSON expected: {}",
                String::from_utf8_lossy(&body)
            )
        })
    }

    /// GET a JSON document.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        self.send(|base| Ok(self.http.get(Self::url(base, path)).query(query)))
            .await
    }

    /// POST a JSON body.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(|base| Ok(self.http.post(Self::url(base, path)).json(body)))
            .await
    }

    /// PUT a JSON body.
    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(|base| Ok(self.http.put(Self::url(base, path)).json(body)))
            .await
    }

    /// POST a JSON body and hand each JSON line of the streamed answer to `each`.
    pub async fn post_lines<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        mut each: impl FnMut(T),
    ) -> anyhow::Result<()> {
        use futures_util::StreamExt;
        let response = self
            .answer(|base| Ok(self.http.post(Self::url(base, path)).json(body)))
            .await?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            return Err(Refused::from_answer(status, &body).into());
        }
        let mut stream = response.bytes_stream();
        let mut pending: Vec<u8> = Vec::new();
        while let Some(chunk) = stream.next().await {
            pending.extend_from_slice(&chunk.context("reading the server's answer")?);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = serde_json::from_slice(&line).with_context(|| {
                    format!(
                        "the server's answer is not the JSON expected: {}",
                        String::from_utf8_lossy(&line)
                    )
                })?;
                each(line);
            }
        }
        Ok(())
    }

    /// DELETE a resource.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.delete_with(path, &[]).await
    }

    /// DELETE with a query string.
    pub async fn delete_with<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        self.send(|base| Ok(self.http.delete(Self::url(base, path)).query(query)))
            .await
    }

    /// Uploads an artifact file (already a .tar or .tar.gz, or an image layout's tar) with its
    /// digest.
    pub async fn upload_release(
        &self,
        app: &str,
        query: &ReleaseQuery,
        file: &Path,
    ) -> anyhow::Result<CreatedRelease> {
        let path = format!("/apps/{app}/releases");
        // Opened for each server tried: a server passed over did not read any of it.
        self.send(|base| {
            let f =
                std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
            let len = f.metadata().context("reading the artifact size")?.len();
            Ok(self
                .http
                .post(Self::url(base, &path))
                .query(query)
                .header(reqwest::header::CONTENT_LENGTH, len)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(file_body(f)))
        })
        .await
    }

    /// Asks for `release` (`app@version`) to enter `env`.
    pub async fn promote(&self, release: &str, env: &str) -> anyhow::Result<Promotion> {
        let body = PromoteRequest {
            release: release.to_owned(),
            env: env.to_owned(),
            override_reason: None,
            hotfix: None,
        };
        self.post("/promotions", &body).await
    }

    /// Polls a promotion until it ends; `on_change` sees each new state.
    pub async fn wait_promotion(
        &self,
        id: PromotionId,
        mut on_change: impl FnMut(&str),
    ) -> anyhow::Result<HistoryEntry> {
        let mut last = String::new();
        loop {
            let p: HistoryEntry = self.get(&format!("/promotions/{id}"), &[]).await?;
            let state = p.promotion.state;
            // Shown: the state, and what a waiting promotion waits on.
            let waits: Vec<&str> = p.waiting_on.iter().map(|w| w.message.as_str()).collect();
            let shown = if waits.is_empty() {
                state.to_string()
            } else {
                format!("{state}, waiting on {}", waits.join("; "))
            };
            if shown != last {
                on_change(&shown);
                last = shown;
            }
            if state.is_terminal() {
                return Ok(p);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// The server URL and token a command uses: flags, then environment, then what `shipgate
/// login` stored for that server (unless it expired), then the config's own server and the
/// admin token in its data dir.
pub fn connect(global: &crate::cli::Global) -> anyhow::Result<Client> {
    let config = read_config(global)?;
    let server = server_url(global, config.as_ref());
    let given = global
        .token
        .clone()
        .or_else(|| crate::credentials::token_for(&server));
    let token = match (given, &config) {
        (Some(t), _) => t,
        (None, Some(c)) => {
            let path = c.server.data_dir.join(shipgate_server::ADMIN_TOKEN_FILE);
            std::fs::read_to_string(&path)
                .with_context(|| format!("no token given and none readable at {} (start the server once to create it, pass --token, or sign in with shipgate login)", path.display()))?
                .trim()
                .to_owned()
        }
        (None, None) => bail!(
            "no token: pass --token or set SHIPGATE_TOKEN, sign in with `shipgate login` (or run in the folder of the server's shipgate.toml)"
        ),
    };
    Client::new(&server, &token)
}

/// A client of the server a command would use, with no token (for signing in).
pub fn connect_without_token(global: &crate::cli::Global) -> anyhow::Result<Client> {
    let config = read_config(global)?;
    Client::new(&server_url(global, config.as_ref()), "")
}

/// The config file, when there is one (`None` when it is invalid but not needed).
fn read_config(global: &crate::cli::Global) -> anyhow::Result<Option<shipgate_core::Config>> {
    if !global.config.exists() {
        return Ok(None);
    }
    match crate::config_file::load(&global.config)? {
        Ok((c, _)) => Ok(Some(c)),
        Err(_) if global.server.is_some() && global.token.is_some() => Ok(None),
        Err(invalid) => {
            let first = invalid.0.lines().next().unwrap_or_default().to_owned();
            bail!(
                "{} is invalid, so the server and token cannot be read from it: {first}\n(see every problem with `shipgate validate`; or pass --server and --token)",
                global.config.display()
            );
        }
    }
}

/// `--server`, else the config's `listen` (on loopback when it listens everywhere), else the
/// default address; as written, without a trailing slash.
pub fn server_url(global: &crate::cli::Global, config: Option<&shipgate_core::Config>) -> String {
    let server = match (&global.server, config) {
        (Some(s), _) => s.clone(),
        (None, Some(c)) => {
            let mut addr = c.server.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        }
        (None, None) => "http://127.0.0.1:7300".to_owned(),
    };
    server.trim().trim_end_matches('/').to_owned()
}

/// A file as a request body, read 1 MiB at a time (a body made of the file itself reads 4 KiB
/// at a time, which made a 100 MB upload take 2.3 times as long).
fn file_body(f: std::fs::File) -> reqwest::Body {
    let chunks = futures_util::stream::try_unfold(tokio::fs::File::from_std(f), |mut f| async {
        let mut buf = vec![0u8; 1 << 20];
        let n = tokio::io::AsyncReadExt::read(&mut f, &mut buf).await?;
        if n == 0 {
            return Ok::<_, std::io::Error>(None);
        }
        buf.truncate(n);
        Ok(Some((buf, f)))
    });
    reqwest::Body::wrap_stream(chunks)
}
