//! The server's side: a [`Driver`] whose every operation is a request to an agent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use shipgate_deploy::{
    CanaryFigures, CanaryRoute, Driver, DriverError, DriverEvent, InstanceId, InstanceStarted,
    InstanceStatus, RouteTarget, RouterSpec, StartInstance, StopInstance, UpstreamMetrics,
};
use tokio::sync::broadcast;

use crate::protocol::{
    Drain, Env, Events, EventsAfter, Failed, Grace, Hello, SetCanary, Slot, Switch,
};

/// How long one wait for supervision events lasts before it is asked again.
const EVENT_WAIT: Duration = Duration::from_secs(20);
/// Pause before asking again after the agent could not be reached.
const RETRY: Duration = Duration::from_millis(200);

/// How requests reach the agent.
enum Transport {
    /// The local agent's Unix socket: a connection per request.
    Unix(PathBuf),
    /// An agent of another host, over the HTTP/2 connection it dialled in.
    Host {
        hosts: Arc<crate::link::Hosts>,
        name: String,
    },
}

impl Transport {
    fn describe(&self) -> String {
        match self {
            Transport::Unix(socket) => format!("the agent at {}", socket.display()),
            Transport::Host { name, .. } => format!("the agent of host {name}"),
        }
    }
}

/// A [`Driver`] served by an agent: the local one on a Unix socket, or that of another host.
pub struct AgentClient {
    transport: Transport,
    events: broadcast::Sender<DriverEvent>,
    /// The last event sequence number passed on.
    cursor: AtomicU64,
    /// The pid of the agent the cursor counts in.
    agent: std::sync::atomic::AtomicU32,
}

impl AgentClient {
    /// Connects to the agent at `socket` and starts passing on its supervision events, from
    /// the ones it has now on (those before this connection were another server's to record).
    pub async fn connect(socket: &Path) -> Result<Arc<AgentClient>, String> {
        let client = Self::new(Transport::Unix(socket.to_path_buf()));
        client.hello().await?;
        let now: Events = client
            .call(
                "/v1/events",
                &EventsAfter {
                    after: u64::MAX,
                    wait: Duration::ZERO,
                },
            )
            .await?;
        client.cursor.store(now.next, Ordering::Release);
        client.agent.store(now.agent, Ordering::Release);
        client.pump_events();
        Ok(client)
    }

    /// The agent of host `name`, reached while it is connected to `hosts`. Its events are passed
    /// on from the first connection on, and from 1 again whenever its agent is a new process.
    pub fn host(hosts: Arc<crate::link::Hosts>, name: &str) -> Arc<AgentClient> {
        let client = Self::host_once(hosts, name);
        client.pump_events();
        client
    }

    /// The agent of host `name`, for a few requests: its events are not read.
    pub fn host_once(hosts: Arc<crate::link::Hosts>, name: &str) -> Arc<AgentClient> {
        Self::new(Transport::Host {
            hosts,
            name: name.to_owned(),
        })
    }

    fn new(transport: Transport) -> Arc<AgentClient> {
        let (events, _) = broadcast::channel(256);
        Arc::new(AgentClient {
            transport,
            events,
            cursor: AtomicU64::new(0),
            agent: std::sync::atomic::AtomicU32::new(0),
        })
    }

    fn pump_events(self: &Arc<Self>) {
        let pump = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(client) = pump.upgrade() else { return };
                let after = client.cursor.load(Ordering::Acquire);
                let asked = EventsAfter {
                    after,
                    wait: EVENT_WAIT,
                };
                match client.call::<_, Events>("/v1/events", &asked).await {
                    Ok(got) if client.agent.load(Ordering::Acquire) == 0 => {
                        // First contact: the events it holds from before were another
                        // server's to record.
                        client.agent.store(got.agent, Ordering::Release);
                        client.cursor.store(got.next, Ordering::Release);
                    }
                    Ok(got) if got.agent != client.agent.load(Ordering::Acquire) => {
                        // Another agent (the last one died): its events are numbered from 1.
                        client.agent.store(got.agent, Ordering::Release);
                        client.cursor.store(0, Ordering::Release);
                    }
                    Ok(got) => {
                        for (seq, event) in got.events {
                            if seq > client.cursor.load(Ordering::Acquire) {
                                client.cursor.store(seq, Ordering::Release);
                                let _ = client.events.send(event);
                            }
                        }
                    }
                    Err(e) => {
                        if matches!(client.transport, Transport::Unix(_)) {
                            tracing::warn!("could not read the agent's events: {e}");
                        }
                        drop(client);
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
        });
    }

    /// Who the agent is and what it runs.
    pub async fn hello(&self) -> Result<Hello, String> {
        self.call("/v1/hello", &()).await
    }

    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
    ) -> Result<Resp, String> {
        let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        self.send(path, "application/json", &[], Bytes::from(body))
            .await
    }

    /// Sends one request with a body of `content_type` and extra `headers`, and reads the JSON
    /// answer.
    pub(crate) async fn send<Resp: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Resp, String> {
        let mut headers = headers.to_vec();
        let command = !READS.contains(&path);
        if command {
            headers.push((crate::serve::COMMAND_HEADER, command_id()));
        }
        // A host whose connection dropped mid-request is asked again, with the same command
        // id, once it is back: the agent runs a command once and answers a repeat from memory.
        let mut give_up = None;
        let (status, bytes) = loop {
            let tried = self
                .exchange(path, content_type, &headers, body.clone())
                .await;
            match tried {
                Ok(answer) => break answer,
                // Only a command is asked again: a read that fails says so at once.
                Err(e) if command && matches!(self.transport, Transport::Host { .. }) => {
                    // Counted from the first failure: a long start that loses its connection
                    // at its end is still asked again.
                    let until =
                        *give_up.get_or_insert_with(|| tokio::time::Instant::now() + RESEND_WITHIN);
                    if tokio::time::Instant::now() >= until {
                        return Err(e);
                    }
                    tracing::debug!("{e}; asking again");
                    tokio::time::sleep(RETRY).await;
                }
                Err(e) => return Err(e),
            }
        };
        if !status.is_success() {
            return Err(match serde_json::from_slice::<Failed>(&bytes) {
                Ok(f) => f.error,
                Err(_) => format!(
                    "the agent answered {status}: {}",
                    String::from_utf8_lossy(&bytes)
                ),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("the agent's answer to {path}: {e}"))
    }

    /// One request and its whole answer, or why the agent could not be reached.
    async fn exchange(
        &self,
        path: &str,
        content_type: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<(http::StatusCode, Bytes), String> {
        let unreachable = |e: &dyn std::fmt::Display| {
            format!("{} did not answer: {e}", self.transport.describe())
        };
        let mut request = match &self.transport {
            Transport::Unix(_) => http::Request::post(path).header(http::header::HOST, "agent"),
            Transport::Host { .. } => http::Request::post(format!("http://agent{path}")),
        }
        .header(http::header::CONTENT_TYPE, content_type);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Transport::Host { hosts, .. } = &self.transport
            && hosts.epoch() > 0
        {
            request = request.header(crate::serve::EPOCH_HEADER, hosts.epoch());
        }
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        let answer = match &self.transport {
            Transport::Unix(socket) => {
                let stream = tokio::net::UnixStream::connect(socket)
                    .await
                    .map_err(|e| unreachable(&e))?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .map_err(|e| unreachable(&e))?;
                tokio::spawn(conn);
                sender.send_request(request).await
            }
            Transport::Host { hosts, name } => {
                let mut sender = hosts.sender(name)?;
                sender.send_request(request).await
            }
        }
        .map_err(|e| unreachable(&e))?;
        let status = answer.status();
        let bytes = answer
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        Ok((status, bytes))
    }
}

/// The operations that carry no command id and are not remembered: those that only read or
/// wait, and the release and blob uploads, which are keyed by their digest (and whose answer to
/// a dropped upload is a failure, not to be repeated).
const READS: [&str; 12] = [
    "/v1/release",
    "/v1/blob",
    "/v1/lacks_blobs",
    "/v1/hello",
    "/v1/events",
    "/v1/status",
    "/v1/routed",
    "/v1/canary_figures",
    "/v1/router_metrics",
    "/v1/logs",
    "/v1/has_release",
    "/v1/drain",
];

/// How long a command to a host whose connection dropped is asked again.
const RESEND_WITHIN: Duration = Duration::from_secs(5);

/// An id for one command, chosen here: unique to this server process and call.
fn command_id() -> String {
    static BOOT: std::sync::OnceLock<i128> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let boot = BOOT.get_or_init(|| jiff::Timestamp::now().as_nanosecond());
    format!(
        "{boot:x}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn agent_error(message: String) -> DriverError {
    DriverError::Agent(message)
}

#[async_trait::async_trait]
impl Driver for AgentClient {
    async fn start(&self, req: StartInstance) -> Result<InstanceStarted, DriverError> {
        self.call("/v1/start", &req).await.map_err(agent_error)
    }

    async fn stop(&self, req: StopInstance) -> Result<(), DriverError> {
        self.call("/v1/stop", &req).await.map_err(agent_error)
    }

    async fn status(&self, instance_id: &InstanceId) -> Option<InstanceStatus> {
        self.call("/v1/status", instance_id).await.ok().flatten()
    }

    fn subscribe(&self) -> broadcast::Receiver<DriverEvent> {
        self.events.subscribe()
    }

    async fn stop_all(&self, grace: Duration) {
        if let Err(e) = self.call::<_, ()>("/v1/stop_all", &Grace { grace }).await {
            tracing::warn!("could not stop the agent's instances: {e}");
        }
    }

    async fn bind_router(&self, spec: RouterSpec) -> Result<(), DriverError> {
        self.call("/v1/bind_router", &spec)
            .await
            .map_err(agent_error)
    }

    async fn switch(
        &self,
        env: &str,
        app: &str,
        to: Option<RouteTarget>,
    ) -> Result<Option<RouteTarget>, DriverError> {
        let s = Switch {
            env: env.to_owned(),
            app: app.to_owned(),
            to,
        };
        self.call("/v1/switch", &s).await.map_err(agent_error)
    }

    async fn routed(&self, env: &str, app: &str) -> Option<RouteTarget> {
        let s = Slot {
            env: env.to_owned(),
            app: app.to_owned(),
            label: String::new(),
        };
        self.call("/v1/routed", &s).await.ok().flatten()
    }

    async fn set_canary(
        &self,
        env: &str,
        app: &str,
        canary: Option<CanaryRoute>,
    ) -> Result<(), DriverError> {
        let s = SetCanary {
            env: env.to_owned(),
            app: app.to_owned(),
            canary,
        };
        self.call("/v1/set_canary", &s).await.map_err(agent_error)
    }

    async fn canary_figures(&self, env: &str, app: &str) -> Option<CanaryFigures> {
        let s = Slot {
            env: env.to_owned(),
            app: app.to_owned(),
            label: String::new(),
        };
        self.call("/v1/canary_figures", &s).await.ok().flatten()
    }

    async fn set_starting(&self, env: &str, app: &str, label: &str) {
        let s = Slot {
            env: env.to_owned(),
            app: app.to_owned(),
            label: label.to_owned(),
        };
        if let Err(e) = self.call::<_, ()>("/v1/set_starting", &s).await {
            tracing::warn!("could not tell the agent what {env} is starting: {e}");
        }
    }

    async fn drain(&self, instance: &InstanceId, grace: Duration) -> bool {
        let d = Drain {
            instance_id: instance.clone(),
            grace,
        };
        self.call("/v1/drain", &d).await.unwrap_or(false)
    }

    async fn router_metrics(&self, env: &str) -> Vec<UpstreamMetrics> {
        let e = Env {
            env: env.to_owned(),
        };
        self.call("/v1/router_metrics", &e)
            .await
            .unwrap_or_default()
    }

    async fn close_routers(&self) -> Vec<(String, Vec<InstanceId>)> {
        self.call("/v1/close_routers", &())
            .await
            .unwrap_or_default()
    }

    async fn retain_routers(&self, envs: &[String]) -> Vec<String> {
        self.call("/v1/retain_routers", &envs)
            .await
            .unwrap_or_default()
    }

    async fn remove_gone_users(&self, keep: &[String]) -> Vec<String> {
        self.call("/v1/remove_gone_users", &keep)
            .await
            .unwrap_or_default()
    }

    async fn set_front(
        &self,
        env: &str,
        listen: std::net::SocketAddr,
        backends: Vec<std::net::SocketAddr>,
    ) -> Result<(), DriverError> {
        let f = crate::protocol::SetFront {
            env: env.to_owned(),
            listen,
            backends,
        };
        self.call("/v1/set_front", &f).await.map_err(agent_error)
    }
}
