//! The agent's side: a [`Driver`] (the process driver, with its routers) served on a Unix socket.

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use shipgate_deploy::{Driver, DriverEvent, InstanceId, RouterSpec, StartInstance, StopInstance};
use tokio::sync::Notify;

use crate::protocol::{
    BlobReceived, Drain, Env, Events, EventsAfter, Failed, Grace, HasRelease, Hello, HostImage,
    ImageRootfs, LacksBlobs, LogChunk, LogFrom, SetCanary, SetFront, Slot, Switch,
};

/// The header that carries the id the server chose for a command.
pub(crate) const COMMAND_HEADER: &str = "x-shipgate-command";
/// How many commands' answers are remembered.
const COMMANDS_KEPT: usize = 1024;

/// The answers to the last commands, by id: a command asked again (its connection dropped
/// before the answer arrived) gets the first one's answer, or waits for it, and runs once.
#[derive(Default)]
struct Commands {
    answers: std::collections::HashMap<String, tokio::sync::watch::Sender<Option<Answer>>>,
    order: VecDeque<String>,
}

#[derive(Clone)]
struct Answer {
    status: StatusCode,
    body: bytes::Bytes,
}

/// The header that names the digest of a release sent to `/v1/release`, or of a blob sent to
/// `/v1/blob`.
pub(crate) const DIGEST_HEADER: &str = "x-shipgate-digest";
/// The environment variable that marks every instance with the data dir of its agent, so that
/// an agent started after a `kill -9` of the last one finds what it left running.
pub const AGENT_MARKER: &str = "SHIPGATE_AGENT";

/// How many supervision events the agent keeps for a server that reconnects.
const EVENTS_KEPT: usize = 4096;

/// The agent: its driver and the supervision events it has seen, numbered.
pub struct Agent {
    driver: Arc<dyn Driver>,
    events: Mutex<EventLog>,
    arrived: Notify,
    /// The instances started through it and not stopped since, with their log files.
    running: Mutex<Vec<InstanceId>>,
    logs: Mutex<std::collections::HashMap<InstanceId, PathBuf>>,
    /// Its data dir: releases sent to it are unpacked here (an agent of another host).
    data_dir: PathBuf,
    /// Opened on the first release sent (the local agent, which shares the server's data dir,
    /// is never sent one).
    artifacts: OnceLock<shipgate_store::artifact::ArtifactStore>,
    commands: Mutex<Commands>,
    /// The newest lease epoch a server commanded this agent under.
    leader_epoch: std::sync::atomic::AtomicI64,
}

#[derive(Default)]
struct EventLog {
    /// The sequence number the next event gets (the first is 1).
    next: u64,
    kept: VecDeque<(u64, DriverEvent)>,
}

impl Agent {
    /// An agent serving `driver`; it starts recording the driver's events at once.
    pub fn new(driver: Arc<dyn Driver>, data_dir: &Path) -> Arc<Agent> {
        let agent = Arc::new(Agent {
            driver,
            logs: Mutex::default(),
            data_dir: data_dir.to_path_buf(),
            artifacts: OnceLock::new(),
            commands: Mutex::default(),
            events: Mutex::new(EventLog {
                next: 1,
                kept: VecDeque::new(),
            }),
            arrived: Notify::new(),
            running: Mutex::default(),
            leader_epoch: std::sync::atomic::AtomicI64::new(0),
        });
        let mut events = agent.driver.subscribe();
        let recorder = Arc::downgrade(&agent);
        tokio::spawn(async move {
            loop {
                let event = match events.recv().await {
                    Ok(e) => e,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!("the agent missed {n} supervision events");
                        continue;
                    }
                    Err(_) => return,
                };
                let Some(agent) = recorder.upgrade() else {
                    return;
                };
                {
                    let mut log = agent.events.lock().unwrap_or_else(PoisonError::into_inner);
                    let seq = log.next;
                    log.next += 1;
                    log.kept.push_back((seq, event));
                    if log.kept.len() > EVENTS_KEPT {
                        log.kept.pop_front();
                    }
                }
                agent.arrived.notify_waiters();
            }
        });
        agent
    }

    fn events_after(&self, after: u64) -> Events {
        let log = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        Events {
            events: log
                .kept
                .iter()
                .filter(|(seq, _)| *seq > after)
                .cloned()
                .collect(),
            next: log.next - 1,
            agent: std::process::id(),
        }
    }

    /// Counts `adopted` (instances an earlier agent started) among those it runs.
    pub fn adopted(&self, adopted: impl IntoIterator<Item = InstanceId>) {
        self.running().extend(adopted);
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Vec<InstanceId>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Serves `agent` on the Unix socket `path` (replacing a stale one) until `shutdown` resolves.
pub async fn serve(
    path: &Path,
    agent: Arc<Agent>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let app = routes(agent);
    // Not a graceful shutdown: a server's long wait for events would hold it up to 20 s, and
    // every operation is idempotent, so one cut short is asked again.
    tokio::select! {
        served = axum::serve(listener, app).into_future() => served,
        () = shutdown => Ok(()),
    }
}

/// The agent protocol's operations, as served on the socket and over a host's connection.
pub(crate) fn routes(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/hello", post(hello))
        .route("/v1/start", post(start))
        .route("/v1/stop", post(stop))
        .route("/v1/status", post(status))
        .route("/v1/events", post(events))
        .route("/v1/stop_all", post(stop_all))
        .route("/v1/bind_router", post(bind_router))
        .route("/v1/switch", post(switch))
        .route("/v1/routed", post(routed))
        .route("/v1/set_canary", post(set_canary))
        .route("/v1/canary_figures", post(canary_figures))
        .route("/v1/set_starting", post(set_starting))
        .route("/v1/drain", post(drain))
        .route("/v1/router_metrics", post(router_metrics))
        .route("/v1/close_routers", post(close_routers))
        .route("/v1/retain_routers", post(retain_routers))
        .route("/v1/remove_gone_users", post(remove_gone_users))
        .route("/v1/has_release", post(has_release))
        .route(
            "/v1/release",
            post(receive_release).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/v1/lacks_blobs", post(lacks_blobs))
        .route(
            "/v1/blob",
            post(receive_blob).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/v1/image_rootfs", post(image_rootfs))
        .route("/v1/logs", post(logs))
        .route("/v1/set_front", post(set_front))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&agent),
            once_per_command,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&agent),
            newest_leader_only,
        ))
        .with_state(agent)
}

/// The epoch of the engine's lease a server sends with each request to a host.
pub const EPOCH_HEADER: &str = "x-shipgate-epoch";

/// A host obeys the newest leader only: once asked under an epoch, it refuses every request
/// sent under an older one (a server that lost its lease and does not know it yet), so two
/// servers can never both command it. Requests without an epoch (the server's own local
/// agent) are not fenced.
async fn newest_leader_only(
    State(agent): AgentState,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let epoch = request
        .headers()
        .get(EPOCH_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    if let Some(epoch) = epoch {
        let newest = agent
            .leader_epoch
            .fetch_max(epoch, std::sync::atomic::Ordering::AcqRel);
        if epoch < newest {
            return (
                StatusCode::CONFLICT,
                Json(Failed {
                    error: format!(
                        "this host is commanded by a newer leader (epoch {newest}); a request under epoch {epoch} is refused"
                    ),
                }),
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// Runs each command (a request with a command id) once: to its end even when the connection
/// that asked drops, with its answer kept for a repeat.
async fn once_per_command(
    State(agent): AgentState,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(id) = request
        .headers()
        .get(COMMAND_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return next.run(request).await;
    };
    let (tx, first) = {
        let mut commands = agent
            .commands
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match commands.answers.get(&id) {
            Some(tx) => (tx.clone(), false),
            None => {
                let (tx, _) = tokio::sync::watch::channel(None);
                commands.answers.insert(id.clone(), tx.clone());
                commands.order.push_back(id.clone());
                while commands.order.len() > COMMANDS_KEPT {
                    if let Some(old) = commands.order.pop_front() {
                        commands.answers.remove(&old);
                    }
                }
                (tx, true)
            }
        }
    };
    let mut answered = tx.subscribe();
    if first {
        let ran = tokio::spawn(async move {
            let response = next.run(request).await;
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap_or_default();
            Answer { status, body }
        });
        tokio::spawn(async move {
            // A handler that panicked still answers, and every repeat with it.
            let answer = ran.await.unwrap_or_else(|e| Answer {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                body: serde_json::to_vec(&Failed {
                    error: format!("the command failed inside the agent: {e}"),
                })
                .unwrap_or_default()
                .into(),
            });
            let _ = tx.send(Some(answer));
        });
    }
    let answer = match answered.wait_for(Option::is_some).await {
        Ok(a) => a.clone(),
        Err(_) => None,
    };
    match answer {
        Some(a) => (
            a.status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            a.body,
        )
            .into_response(),
        None => failed("the command ended without an answer"),
    }
}

type AgentState = State<Arc<Agent>>;

fn failed(error: impl std::fmt::Display) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(Failed {
            error: error.to_string(),
        }),
    )
        .into_response()
}

async fn hello(State(agent): AgentState) -> Json<Hello> {
    // Those the driver still runs: it forgets one it gave up on after a crash loop.
    let started = agent.running().clone();
    let mut instances = Vec::new();
    for id in started {
        if agent.driver.status(&id).await.is_some() {
            instances.push(id);
        }
    }
    agent.running().retain(|id| instances.contains(id));
    let listeners = agent
        .driver
        .listeners()
        .await
        .into_iter()
        .map(|(addr, _)| addr)
        .collect();
    Json(Hello {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        instances,
        data_dir: agent.data_dir.clone(),
        listeners,
    })
}

/// The agent's own record of every start it was asked for, one JSON line each, so that anyone
/// can check that no instance was started twice (through a server failover, say).
pub const STARTS_FILE: &str = "starts.jsonl";

async fn start(State(agent): AgentState, Json(mut req): Json<StartInstance>) -> Response {
    let id = req.instance_id.clone();
    agent.record_start(&id);
    req.env.insert(
        AGENT_MARKER.to_owned(),
        agent.data_dir.display().to_string(),
    );
    if req.sandbox.is_none()
        && let Some(dir) = req.template_vars.get("DATA_DIR")
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        return failed(format!("could not make the data directory {dir}: {e}"));
    }
    let log = req.log_path.clone();
    match agent.driver.start(req).await {
        Ok(started) => {
            let mut running = agent.running();
            if !running.contains(&id) {
                running.push(id.clone());
            }
            drop(running);
            agent
                .logs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, log);
            Json(started).into_response()
        }
        Err(e) => failed(e),
    }
}

/// The agent's own record of every image blob it was sent, one JSON line each (its digest,
/// size, whether it was new here, when), so that anyone can check that a host is sent each
/// layer once.
pub const BLOBS_FILE: &str = "blobs.jsonl";

impl Agent {
    fn record_start(&self, id: &shipgate_core::InstanceId) {
        let line = serde_json::json!({ "instance_id": id, "at": jiff::Timestamp::now() });
        self.append_record(STARTS_FILE, &line);
    }

    fn record_blob(&self, received: &BlobReceived) {
        let line = serde_json::json!({
            "digest": received.blob.digest,
            "size": received.blob.size,
            "receipt": received.receipt,
            "at": jiff::Timestamp::now(),
        });
        self.append_record(BLOBS_FILE, &line);
    }

    /// Appends `line` to the record `file` of the data dir (0600).
    fn append_record(&self, file: &str, line: &serde_json::Value) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.data_dir.join(file))
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = written {
            tracing::warn!("could not record {line} in {file}: {e}");
        }
    }

    fn artifacts(&self) -> Result<&shipgate_store::artifact::ArtifactStore, String> {
        if let Some(a) = self.artifacts.get() {
            return Ok(a);
        }
        let opened = shipgate_store::artifact::ArtifactStore::open(&self.data_dir)
            .map_err(|e| e.to_string())?;
        Ok(self.artifacts.get_or_init(|| opened))
    }
}

async fn has_release(State(agent): AgentState, Json(h): Json<HasRelease>) -> Response {
    match agent.artifacts() {
        Ok(artifacts) => {
            let dir = artifacts.release_dir(&h.digest);
            Json(dir.is_dir().then_some(dir)).into_response()
        }
        Err(e) => failed(e),
    }
}

/// The digest header of a `what` the server sends, and this agent's store; else the answer.
fn digest_and_store<'a>(
    agent: &'a Agent,
    headers: &axum::http::HeaderMap,
    what: &str,
) -> Result<
    (
        shipgate_core::Digest,
        &'a shipgate_store::artifact::ArtifactStore,
    ),
    Box<Response>,
> {
    let digest = match headers
        .get(DIGEST_HEADER)
        .and_then(|d| d.to_str().ok())
        .map(shipgate_core::Digest::parse)
    {
        Some(Ok(d)) => d,
        _ => {
            return Err(Box::new(failed(format!(
                "a {what} needs a valid {DIGEST_HEADER} header"
            ))));
        }
    };
    let artifacts = agent.artifacts().map_err(|e| Box::new(failed(e)))?;
    Ok((digest, artifacts))
}

/// A release archive sent by the server: checked and unpacked exactly as an upload to the
/// server is (its digest, size and entry limits, read-only), into this agent's data dir.
async fn receive_release(
    State(agent): AgentState,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Response {
    use futures_util::StreamExt;
    let (digest, artifacts) = match digest_and_store(&agent, &headers, "release") {
        Ok(both) => both,
        Err(answer) => return *answer,
    };
    let limits = shipgate_store::artifact::UnpackLimits {
        max_size: shipgate_core::ByteSize(u64::MAX / 2),
        max_files: u64::MAX / 2,
    };
    let received = async {
        let mut upload = artifacts
            .upload(shipgate_core::ByteSize(u64::MAX / 2), limits)
            .await
            .map_err(|e| e.to_string())?;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("receiving the release: {e}"))?;
            upload.write(&chunk).await.map_err(|e| e.to_string())?;
        }
        let checked = upload.finish(&digest).await.map_err(|e| e.to_string())?;
        artifacts.store(checked).await.map_err(|e| e.to_string())
    };
    match received.await {
        Ok(dir) => Json(dir).into_response(),
        Err(e) => failed(e),
    }
}

/// Which of the blobs asked about this host lacks.
async fn lacks_blobs(State(agent): AgentState, Json(q): Json<LacksBlobs>) -> Response {
    match agent.artifacts() {
        Ok(artifacts) => Json(artifacts.lacking(&q.blobs)).into_response(),
        Err(e) => failed(e),
    }
}

/// One blob of an image sent by the server, named by the digest header: written to `tmp/`
/// while it is hashed, and kept in `layers/sha256` only if its bytes are that digest's. A
/// blob held already is answered as such (a repeat does no harm).
async fn receive_blob(
    State(agent): AgentState,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Response {
    use futures_util::StreamExt;
    let (digest, artifacts) = match digest_and_store(&agent, &headers, "blob") {
        Ok(both) => both,
        Err(answer) => return *answer,
    };
    let received = async {
        let mut upload = artifacts.receive_blob(&digest).map_err(|e| e.to_string())?;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("receiving blob {digest}: {e}"))?;
            upload.write(&chunk).await.map_err(|e| e.to_string())?;
        }
        upload.finish().await.map_err(|e| e.to_string())
    };
    match received.await {
        Ok((blob, receipt)) => {
            let received = BlobReceived { blob, receipt };
            agent.record_blob(&received);
            Json(received).into_response()
        }
        Err(e) => {
            tracing::warn!("{e}");
            failed(e)
        }
    }
}

/// The rootfs of an image whose blobs this host holds, unpacked from them now if it is not yet
/// (each layer checked against its digest again as it is read).
async fn image_rootfs(State(agent): AgentState, Json(q): Json<ImageRootfs>) -> Response {
    let artifacts = match agent.artifacts() {
        Ok(a) => a.clone(),
        Err(e) => return failed(e),
    };
    // The server asks only for an image it unpacked itself, under its configured limits, from
    // these very blobs (checked by digest): the same rootfs cannot pass them here.
    let limits = shipgate_store::artifact::UnpackLimits {
        max_size: shipgate_core::ByteSize(u64::MAX / 2),
        max_files: u64::MAX / 2,
    };
    let digest = q.digest.clone();
    let built = tokio::task::spawn_blocking(move || {
        let release_dir = artifacts.release_dir(&digest);
        artifacts.image_rootfs(&digest, limits).map(|found| {
            found.map(|(_, rootfs)| HostImage {
                release_dir,
                rootfs,
            })
        })
    })
    .await;
    match built {
        Ok(Ok(Some(image))) => Json(image).into_response(),
        Ok(Ok(None)) => failed(format!(
            "this host holds no image {}: its blobs are sent before its rootfs is asked for",
            q.digest
        )),
        Ok(Err(e)) => failed(format!(
            "unpacking the image {} on this host: {e}",
            q.digest
        )),
        Err(e) => failed(format!(
            "unpacking the image {} on this host failed: {e}",
            q.digest
        )),
    }
}

/// An instance's log from `offset` (at most 1 MiB), or its last `lines` lines, and the offset
/// to read from next.
async fn logs(State(agent): AgentState, Json(q): Json<LogFrom>) -> Response {
    let path = agent
        .logs
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&q.instance_id)
        .cloned();
    let Some(path) = path else {
        return failed(format!("this agent has no log of {}", q.instance_id));
    };
    let read =
        tokio::task::spawn_blocking(move || shipgate_deploy::read_log(&path, q.offset, q.lines))
            .await;
    match read {
        Ok(Ok((text, next))) => Json(LogChunk { text, next }).into_response(),
        Ok(Err(e)) => failed(format!("reading the log of {}: {e}", q.instance_id)),
        Err(e) => failed(e),
    }
}

async fn set_front(State(agent): AgentState, Json(f): Json<SetFront>) -> Response {
    match agent.driver.set_front(&f.env, f.listen, f.backends).await {
        Ok(()) => Json(()).into_response(),
        Err(e) => failed(e),
    }
}

async fn stop(State(agent): AgentState, Json(req): Json<StopInstance>) -> Response {
    let id = req.instance_id.clone();
    match agent.driver.stop(req).await {
        Ok(()) => {
            agent.running().retain(|i| i != &id);
            Json(()).into_response()
        }
        Err(e) => failed(e),
    }
}

async fn status(State(agent): AgentState, Json(id): Json<InstanceId>) -> Response {
    Json(agent.driver.status(&id).await).into_response()
}

async fn events(State(agent): AgentState, Json(q): Json<EventsAfter>) -> Json<Events> {
    // Registered before looking, so an event arriving in between still wakes the wait.
    let arrived = agent.arrived.notified();
    let now = agent.events_after(q.after);
    if !now.events.is_empty() {
        return Json(now);
    }
    let _ = tokio::time::timeout(q.wait, arrived).await;
    Json(agent.events_after(q.after))
}

async fn stop_all(State(agent): AgentState, Json(g): Json<Grace>) -> Json<()> {
    agent.driver.stop_all(g.grace).await;
    agent.running().clear();
    Json(())
}

async fn bind_router(State(agent): AgentState, Json(spec): Json<RouterSpec>) -> Response {
    match agent.driver.bind_router(spec).await {
        Ok(()) => Json(()).into_response(),
        Err(e) => failed(e),
    }
}

async fn switch(State(agent): AgentState, Json(s): Json<Switch>) -> Response {
    match agent.driver.switch(&s.env, &s.app, s.to).await {
        Ok(previous) => Json(previous).into_response(),
        Err(e) => failed(e),
    }
}

async fn routed(State(agent): AgentState, Json(s): Json<Slot>) -> Response {
    Json(agent.driver.routed(&s.env, &s.app).await).into_response()
}

async fn set_canary(State(agent): AgentState, Json(s): Json<SetCanary>) -> Response {
    match agent.driver.set_canary(&s.env, &s.app, s.canary).await {
        Ok(()) => Json(()).into_response(),
        Err(e) => failed(e),
    }
}

async fn canary_figures(State(agent): AgentState, Json(s): Json<Slot>) -> Response {
    Json(agent.driver.canary_figures(&s.env, &s.app).await).into_response()
}

async fn set_starting(State(agent): AgentState, Json(s): Json<Slot>) -> Json<()> {
    agent.driver.set_starting(&s.env, &s.app, &s.label).await;
    Json(())
}

async fn drain(State(agent): AgentState, Json(d): Json<Drain>) -> Json<bool> {
    Json(agent.driver.drain(&d.instance_id, d.grace).await)
}

async fn router_metrics(State(agent): AgentState, Json(e): Json<Env>) -> Response {
    Json(agent.driver.router_metrics(&e.env).await).into_response()
}

async fn close_routers(State(agent): AgentState) -> Response {
    Json(agent.driver.close_routers().await).into_response()
}

async fn retain_routers(State(agent): AgentState, Json(envs): Json<Vec<String>>) -> Response {
    Json(agent.driver.retain_routers(&envs).await).into_response()
}

async fn remove_gone_users(State(agent): AgentState, Json(keep): Json<Vec<String>>) -> Response {
    Json(agent.driver.remove_gone_users(&keep).await).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    async fn hello(router: &Router, epoch: Option<i64>) -> StatusCode {
        let mut request = axum::http::Request::post("/v1/hello")
            .header(axum::http::header::CONTENT_TYPE, "application/json");
        if let Some(epoch) = epoch {
            request = request.header(EPOCH_HEADER, epoch);
        }
        let request = request.body(axum::body::Body::from("{}")).unwrap();
        tower::ServiceExt::oneshot(router.clone(), request)
            .await
            .unwrap()
            .status()
    }

    async fn post(
        router: &Router,
        path: &str,
        digest: Option<&shipgate_core::Digest>,
        body: Vec<u8>,
    ) -> (StatusCode, serde_json::Value) {
        let mut request = axum::http::Request::post(path).header(
            axum::http::header::CONTENT_TYPE,
            if digest.is_some() {
                "application/octet-stream"
            } else {
                "application/json"
            },
        );
        if let Some(d) = digest {
            request = request.header(DIGEST_HEADER, d.to_string());
        }
        let answer = tower::ServiceExt::oneshot(
            router.clone(),
            request.body(axum::body::Body::from(body)).unwrap(),
        )
        .await
        .unwrap();
        let status = answer.status();
        let bytes = axum::body::to_bytes(answer.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn a_blob_sent_with_wrong_bytes_is_refused_and_a_right_one_is_kept_once() {
        use sha2::Digest as _;
        let dir = tempfile::tempdir().unwrap();
        let driver: Arc<dyn shipgate_deploy::Driver> =
            Arc::new(shipgate_deploy::ProcessDriver::new());
        let router = routes(Agent::new(driver, dir.path()));
        let layer = b"the bytes of a layer".to_vec();
        let digest = shipgate_core::Digest::from_sha256(&sha2::Sha256::digest(&layer).into());
        let blob = shipgate_store::artifact::Blob {
            digest: digest.clone(),
            size: layer.len() as u64,
        };
        let lacks = |router: Router| {
            let asked =
                serde_json::to_vec(&serde_json::json!({ "blobs": [blob.clone()] })).unwrap();
            async move { post(&router, "/v1/lacks_blobs", None, asked).await }
        };
        assert_eq!(lacks(router.clone()).await.1.as_array().unwrap().len(), 1);

        let mut damaged = layer.clone();
        damaged[3] ^= 0xff;
        let (status, said) = post(&router, "/v1/blob", Some(&digest), damaged).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{said}");
        let error = said["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("blob {digest} was damaged in transit"))
                && error.contains("nothing was kept"),
            "{error}"
        );
        let layers = dir.path().join("layers/sha256");
        assert_eq!(std::fs::read_dir(&layers).unwrap().count(), 0);
        assert!(
            !dir.path().join(BLOBS_FILE).exists(),
            "a refusal is no receipt"
        );

        let (status, said) = post(&router, "/v1/blob", Some(&digest), layer.clone()).await;
        assert_eq!(status, StatusCode::OK, "{said}");
        assert_eq!(said["receipt"], "stored");
        assert_eq!(
            std::fs::read(layers.join(digest.hex())).unwrap(),
            layer,
            "kept by its digest"
        );
        assert!(lacks(router.clone()).await.1.as_array().unwrap().is_empty());
        // Sent again (a repeat after a lost answer): held already, nothing changes.
        let (status, said) = post(&router, "/v1/blob", Some(&digest), layer.clone()).await;
        assert_eq!(
            (status, said["receipt"].as_str()),
            (StatusCode::OK, Some("already_held"))
        );
        let receipts = std::fs::read_to_string(dir.path().join(BLOBS_FILE)).unwrap();
        assert_eq!(receipts.lines().count(), 2, "{receipts}");

        // Without a digest, nothing is received.
        let (status, said) = post(&router, "/v1/blob", None, layer).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{said}");
        // A rootfs of an image the host holds nothing of is refused, saying why.
        let unknown = shipgate_core::Digest::from_sha256(&sha2::Sha256::digest(b"no image").into());
        let (status, said) = post(
            &router,
            "/v1/image_rootfs",
            None,
            serde_json::to_vec(&serde_json::json!({ "digest": unknown })).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{said}");
        assert!(
            said["error"].as_str().unwrap().contains("holds no image"),
            "{said}"
        );
    }

    #[tokio::test]
    async fn a_host_refuses_a_server_whose_lease_a_newer_one_took() {
        let dir = tempfile::tempdir().unwrap();
        let driver: Arc<dyn shipgate_deploy::Driver> =
            Arc::new(shipgate_deploy::ProcessDriver::new());
        let router = routes(Agent::new(driver, dir.path()));
        assert_eq!(hello(&router, Some(1)).await, StatusCode::OK);
        assert_eq!(
            hello(&router, Some(2)).await,
            StatusCode::OK,
            "a newer leader"
        );
        assert_eq!(
            hello(&router, Some(1)).await,
            StatusCode::CONFLICT,
            "the old one is refused"
        );
        assert_eq!(hello(&router, Some(2)).await, StatusCode::OK);
        assert_eq!(
            hello(&router, None).await,
            StatusCode::OK,
            "the local agent's server"
        );
    }
}
