//! Runs release instances on a machine: starting them, waiting until they answer their health
//! check, supervising them (restart with backoff after a crash, giving up on a crash loop),
//! stopping them, and keeping their logs. It acts on what it is asked and reports what happened;
//! it must not decide which release is live, and it never touches the database or the router.
//! Requests and replies are plain serializable data so that a remote agent can serve them later.

#![forbid(unsafe_code)]

pub mod cgroup;
pub mod image;
mod log_file;
pub mod network;
mod process;
mod routes;
pub mod sandbox;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use cgroup::{Hierarchy, Limits};
pub use image::ImageRun;
pub use sandbox::Sandbox;
use serde::{Deserialize, Serialize};
pub use shipgate_core::InstanceId;
pub use shipgate_proxy::UpstreamMetrics;
/// What both sides of a canary answered in one window ([`CanaryRoute::window`]), and how many
/// latencies each side keeps at most.
pub use shipgate_proxy::{CANARY_SAMPLE, CanaryFigures};

pub use log_file::{read_log, tail_lines};
pub use process::ProcessDriver;

/// The data plane of one machine: starts, supervises and stops instances, and holds the
/// environments' routers that send each app's traffic to one of them.
///
/// Requests and replies are plain serializable data so a remote agent can serve them later.
/// Every operation is idempotent, keyed by `instance_id` (instances) or environment and app
/// (routes).
#[async_trait::async_trait]
pub trait Driver: Send + Sync {
    /// Starts an instance and waits until it is healthy. Asked again for an `instance_id` that
    /// is already running, returns the same [`InstanceStarted`] without starting another.
    async fn start(&self, req: StartInstance) -> Result<InstanceStarted, DriverError>;

    /// Stops an instance: SIGTERM to its process group, then SIGKILL after `grace`. Unknown or
    /// already stopped: `Ok(())`. If this driver does not know the instance but `pid` is given
    /// (an instance left by a previous server process that was killed), it kills that process
    /// group only if `/proc/<pid>/environ` contains `SHIPGATE_INSTANCE=<instance_id>`, so a
    /// reused pid is never killed.
    async fn stop(&self, req: StopInstance) -> Result<(), DriverError>;

    /// Whether the driver currently runs this instance, and its pid, port and restarts.
    async fn status(&self, instance_id: &InstanceId) -> Option<InstanceStatus>;

    /// Supervision events (crash, restart, crash-loop give-up) for the engine to record.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<DriverEvent>;

    /// Stops every instance (server shutdown).
    async fn stop_all(&self, grace: Duration);

    /// Binds the router of an environment at its address, or updates its apps and request
    /// timeout if it is already bound there.
    async fn bind_router(&self, spec: RouterSpec) -> Result<(), DriverError>;

    /// Sends the traffic of `app` in `env` to `to` (None: nothing is live); returns what it went
    /// to before. Requests in flight on the previous target continue.
    async fn switch(
        &self,
        env: &str,
        app: &str,
        to: Option<RouteTarget>,
    ) -> Result<Option<RouteTarget>, DriverError>;

    /// Where the traffic of `app` in `env` goes now.
    async fn routed(&self, env: &str, app: &str) -> Option<RouteTarget>;

    /// Gives `canary` its share of the requests of `app` in `env`, beside the app's route (None:
    /// no canary; every request to the route, and the figures are forgotten). A canary with the
    /// same `window` as the one in force keeps counting its figures; another window starts both
    /// sides at zero. On several hosts every router applies it, or none does: the hosts that did
    /// are put back and the error names the one that failed. Asked twice, it does the work once.
    async fn set_canary(
        &self,
        env: &str,
        app: &str,
        canary: Option<CanaryRoute>,
    ) -> Result<(), DriverError>;

    /// What the canary of `app` in `env` and its stable side answered in the canary's current
    /// window (summed over the environment's hosts); None without a canary.
    async fn canary_figures(&self, env: &str, app: &str) -> Option<CanaryFigures>;

    /// Until the next switch of `app` in `env`, its requests get 503 "starting LABEL".
    async fn set_starting(&self, env: &str, app: &str, label: &str);

    /// Waits until no request is in flight on `instance` (through any router), at most
    /// `grace`; true if it drained.
    async fn drain(&self, instance: &InstanceId, grace: Duration) -> bool;

    /// The request metrics of `env`'s router, per app and release.
    async fn router_metrics(&self, env: &str) -> Vec<UpstreamMetrics>;

    /// Stops every router accepting; returns, per environment, the instances they routed to
    /// (so they can be drained before they are stopped).
    async fn close_routers(&self) -> Vec<(String, Vec<InstanceId>)>;

    /// Closes the routers of every environment not in `envs` (gone from the config); returns
    /// the ones it closed.
    async fn retain_routers(&self, envs: &[String]) -> Vec<String>;

    /// Adopts what an earlier process of this data plane ran and kept (its instances, still
    /// running, and the routes to them); answers them with their pids. Nothing for a driver
    /// that keeps nothing.
    async fn adopt(&self) -> Vec<(InstanceId, u32)> {
        Vec::new()
    }

    /// Takes over the listening sockets of an earlier process of this data plane: routers bound
    /// at their addresses serve on them (and the connections queued there meanwhile).
    fn inherit_listeners(&self, listeners: Vec<(SocketAddr, std::net::TcpListener)>) {
        drop(listeners);
    }

    /// Each router's address and a handle to its listening socket, for a process that keeps
    /// them while this one is replaced.
    async fn listeners(&self) -> Vec<(SocketAddr, std::net::TcpListener)> {
        Vec::new()
    }

    /// Removes the Unix users of on-demand environments (`sg-NAME`) but those in `keep`, where
    /// nothing runs as them any more; returns the ones it removed.
    async fn remove_gone_users(&self, keep: &[String]) -> Vec<String>;

    /// From now on, runs `env` (made at run time: on demand) on `hosts`, `batch` at a time, at
    /// least `required` of them taking part, its router on `port` of each. A driver of one
    /// machine has no hosts and ignores it.
    fn place(&self, env: &str, hosts: &[String], batch: usize, required: usize, port: u16) {
        let _ = (env, hosts, batch, required, port);
    }

    /// Forgets where `env` runs (it was deleted); after its routers were closed.
    fn unplace(&self, env: &str) {
        let _ = env;
    }

    /// The addresses `env`, whose router listens at `listen`, answers at: `listen` itself on
    /// this machine, or that port on each host of an environment placed on hosts.
    fn endpoints(&self, env: &str, listen: SocketAddr) -> Vec<SocketAddr> {
        let _ = env;
        vec![listen]
    }

    /// Holds the front of `env` at `listen` on this machine (binding it if needed) and spreads
    /// its connections over `backends`, the routers of the environment's hosts.
    async fn set_front(
        &self,
        env: &str,
        listen: SocketAddr,
        backends: Vec<SocketAddr>,
    ) -> Result<(), DriverError> {
        let _ = (listen, backends);
        Err(DriverError::Router(format!(
            "this data plane cannot front environment {env}"
        )))
    }

    /// For an instance whose log is kept on another host: its log from `offset` (or its last
    /// `lines` lines), read there, from `host` or the first of its hosts that answers. None:
    /// the log is a file on this machine, at the path it was started with.
    async fn read_log(
        &self,
        instance: &InstanceId,
        host: Option<&str>,
        offset: Option<u64>,
        lines: usize,
    ) -> Option<Result<(String, u64), String>> {
        let _ = (instance, host, offset, lines);
        None
    }
}

/// An instance of an environment placed on hosts, as it runs on one of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInstance {
    /// The host.
    pub host: String,
    /// Its process there.
    pub pid: u32,
    /// Its loopback port there.
    pub port: u16,
    /// Whether it answers its health check there.
    pub healthy: bool,
    /// Its restarts there.
    pub restarts: u32,
}

/// An environment's router: where it listens and what it serves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterSpec {
    /// The environment.
    pub env: String,
    /// Its stable address.
    pub listen: SocketAddr,
    /// The apps of the config (a request naming none of them goes to the first).
    pub apps: Vec<String>,
    /// Longest wait for an instance's response head before the router answers 504.
    pub request_timeout: Option<Duration>,
    /// The HTTP faults in force there (chaos), each until its end.
    #[serde(default)]
    pub faults: Vec<shipgate_core::chaos::HttpFault>,
    /// The TCP fault proxies in front of its dependencies, with their toxics.
    #[serde(default)]
    pub dependencies: Vec<shipgate_core::chaos::DependencyProxy>,
}

/// The instance a router sends an app's traffic to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTarget {
    /// The instance.
    pub instance_id: InstanceId,
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it runs, as metrics and errors name it (`web@1.4.2`).
    pub label: String,
}

/// A canary's share of an app's requests, as every router of its environment applies it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanaryRoute {
    /// The canary's instance.
    pub target: RouteTarget,
    /// Its share, in percent (0 to 100). At 0 only testers who ask for it
    /// (`x-shipgate-canary: always`) meet it.
    pub weight: f64,
    /// The share is mirrored: copies of that share of the GET and HEAD requests go to the canary,
    /// whose answers are counted and thrown away; every user meets the stable release.
    pub mirror: bool,
    /// How a client is kept on its side.
    pub sticky: shipgate_core::canary::Sticky,
    /// The analysis window: the figures start afresh whenever it changes.
    pub window: u64,
}

/// A request to run one instance of a release.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StartInstance {
    /// Key of every operation on this instance, e.g. `web-development-12`.
    pub instance_id: InstanceId,
    /// Working directory of the process (the unpacked release).
    pub release_dir: PathBuf,
    /// Shell command template, run with `sh -c`. `${PORT}` is replaced by the chosen port and
    /// every `${NAME}` whose `NAME` is a key of `template_vars` by its value (verbatim, not
    /// quoted); any other `${...}` is left for the shell.
    pub command: String,
    /// Values for the command template, e.g. `APP`, `ENV`, `VERSION`, `DIGEST`, `URL`.
    pub template_vars: BTreeMap<String, String>,
    /// Environment variables exported to the process, on top of the inherited environment.
    /// The driver adds `PORT`, `SHIPGATE_PORT` and `SHIPGATE_INSTANCE=<instance_id>`.
    pub env: BTreeMap<String, String>,
    /// `GET http://127.0.0.1:<port><health_path>` must answer 2xx for the instance to be healthy.
    pub health_path: String,
    /// How long a (re)start may take to become healthy.
    pub health_timeout: Duration,
    /// File that stdout and stderr are appended to; parent directories are created.
    pub log_path: PathBuf,
    /// Loopback port to listen on; `None` picks a free one.
    pub port: Option<u16>,
    /// When to stop restarting a crashing instance.
    pub crash_loop: CrashLoopPolicy,
    /// How it is confined; `None`: an ordinary child process of the driver's own user.
    pub sandbox: Option<Sandbox>,
    /// For an image release: run by runc from its bundle, in place of `command` (which is
    /// ignored; the app's `run`, if any, is in [`ImageRun::command`]).
    #[serde(default)]
    pub image: Option<ImageRun>,
    /// The variables of `env` whose values are secrets: never written to disk with the
    /// request (see [`StartInstance::for_disk`]).
    #[serde(default)]
    pub secret_names: Vec<String>,
}

impl StartInstance {
    /// The request as it may be kept on disk: without the values of its secrets. An instance
    /// adopted from it gets them back from the running process's own environment
    /// ([`StartInstance::with_secrets_of`]).
    pub fn for_disk(&self) -> StartInstance {
        let mut kept = self.clone();
        kept.env.retain(|k, _| !self.secret_names.contains(k));
        kept
    }

    /// Whether it names secrets whose values it lacks (read back from disk, where they are
    /// never kept): starting it would start an instance without them.
    pub fn lacks_secrets(&self) -> bool {
        self.secret_names.iter().any(|n| !self.env.contains_key(n))
    }

    /// Puts back the secrets [`StartInstance::for_disk`] left out, from process `pid`'s
    /// environment (the instance they were started with).
    pub fn with_secrets_of(mut self, pid: u32) -> StartInstance {
        if self.secret_names.is_empty() {
            return self;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            return self;
        };
        for kv in environ.split(|b| *b == 0) {
            let kv = String::from_utf8_lossy(kv);
            if let Some((k, v)) = kv.split_once('=')
                && self.secret_names.iter().any(|n| n == k)
            {
                self.env.insert(k.to_owned(), v.to_owned());
            }
        }
        self
    }
}

/// More than `crashes` crashes within `within` and the driver stops restarting an instance
/// (and reports [`DriverEvent::GaveUp`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashLoopPolicy {
    /// Crashes tolerated within the window.
    pub crashes: u32,
    /// The window; a healthy run this long also resets the restart backoff.
    pub within: Duration,
}

impl Default for CrashLoopPolicy {
    fn default() -> Self {
        Self {
            crashes: 5,
            within: Duration::from_secs(60),
        }
    }
}

/// The reply to a successful [`Driver::start`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStarted {
    /// The instance this reply is about.
    pub instance_id: InstanceId,
    /// Pid of the process (also its process group id).
    pub pid: u32,
    /// Loopback port the instance listens on; it keeps it across restarts.
    pub port: u16,
    /// `127.0.0.1:<port>`, the address the router should send traffic to.
    pub addr: SocketAddr,
    /// Time from spawn to the first 2xx health answer.
    pub ready_after: Duration,
}

/// A request to stop one instance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StopInstance {
    /// The instance to stop.
    pub instance_id: InstanceId,
    /// Pid recorded when it started, used only when this driver does not know the instance.
    pub pid: Option<u32>,
    /// How long to wait after SIGTERM before SIGKILL.
    pub grace: Duration,
}

/// What the driver knows about an instance it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// The instance this status is about.
    pub instance_id: InstanceId,
    /// Pid of the current (or, while restarting, the last) process.
    pub pid: u32,
    /// Loopback port the instance listens on.
    pub port: u16,
    /// How many times it was restarted after a crash.
    pub restarts: u32,
    /// Whether the current process passed its health check and has not exited since; on
    /// hosts, on every host that answers (how many hosts a promotion needs is not its
    /// health: a start and a switch check that).
    pub healthy: bool,
    /// How the last crash ended, if it crashed (`out of memory (limit 512MiB)`, `signal 9`).
    pub last_crash: Option<String>,
    /// Where the instance runs on each host, for an environment placed on hosts (empty on the
    /// server's own machine).
    #[serde(default)]
    pub hosts: Vec<HostInstance>,
    /// The hosts of its environment that are not connected now: what they run is unknown
    /// until they connect again.
    #[serde(default)]
    pub unreachable: Vec<String>,
}

/// Something that happened to a running instance without anyone asking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DriverEvent {
    /// A running instance exited without being asked to (or a restart of it failed); it will
    /// be restarted after `restart_in`.
    Crashed {
        /// The instance that crashed.
        instance_id: InstanceId,
        /// How it ended, e.g. `exit code 3` or `signal 9`.
        exit: String,
        /// Backoff before the next start attempt.
        restart_in: Duration,
    },
    /// The instance was started again after a crash and answers its health check.
    Restarted {
        /// The instance that was restarted.
        instance_id: InstanceId,
        /// Pid of the new process.
        pid: u32,
    },
    /// Too many crashes in the window: the driver stopped restarting it and forgot it.
    GaveUp {
        /// The instance that was given up.
        instance_id: InstanceId,
        /// Crashes counted within the window.
        crashes: u32,
    },
}

/// Why a driver operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The process kept running but did not answer 2xx in time; it was killed.
    #[error(
        "instance {instance_id} did not become healthy within {timeout:?} (GET {url}: {last_error}); last log lines:\n{log_tail}"
    )]
    Unhealthy {
        /// The instance that was started.
        instance_id: InstanceId,
        /// The health timeout that passed.
        timeout: Duration,
        /// The health URL that was polled.
        url: String,
        /// The last answer or connection error seen.
        last_error: String,
        /// The last lines of the instance's log.
        log_tail: String,
    },
    /// The process exited before it was healthy.
    #[error(
        "instance {instance_id} exited with {exit} before becoming healthy; last log lines:\n{log_tail}"
    )]
    ExitedEarly {
        /// The instance that was started.
        instance_id: InstanceId,
        /// How it ended, e.g. `exit code 1` or `signal 9`.
        exit: String,
        /// The last lines of the instance's log.
        log_tail: String,
    },
    /// The process could not be spawned at all.
    #[error(
        "could not start instance {instance_id} (sh -c {command:?} in {}): {source}",
        release_dir.display()
    )]
    Spawn {
        /// The instance that was started.
        instance_id: InstanceId,
        /// The expanded command.
        command: String,
        /// The working directory it was to run in.
        release_dir: PathBuf,
        /// Why spawning failed.
        source: std::io::Error,
    },
    /// A stop was asked while the instance was still starting; nothing is left running.
    #[error("instance {instance_id} was stopped before it became healthy")]
    Stopped {
        /// The instance that was started.
        instance_id: InstanceId,
    },
    /// Its sandbox could not be prepared (user, data directory, cgroup); nothing was started.
    #[error("could not prepare the sandbox of instance {instance_id}: {reason}")]
    Sandbox {
        /// The instance that was started.
        instance_id: InstanceId,
        /// What failed.
        reason: String,
    },
    /// A router could not be bound or is not bound.
    #[error("{0}")]
    Router(String),
    /// The agent serving this driver refused or could not be reached (its message).
    #[error("{0}")]
    Agent(String),
    /// Some other I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What the driver was doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl DriverError {
    /// A short reason for a failed restart, for [`DriverEvent::Crashed`].
    fn crash_reason(&self) -> String {
        match self {
            DriverError::Unhealthy { timeout, .. } => {
                format!("not healthy within {timeout:?} after restart")
            }
            DriverError::ExitedEarly { exit, .. } => format!("{exit} before becoming healthy"),
            other => other.to_string(),
        }
    }
}

/// Variables of this process's own environment that no process it starts may inherit.
static HIDDEN: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Names variables of the server's environment that no process it starts inherits (the
/// secrets key's, the identity provider's client secret's): instances, tests and the local
/// agent get everything else of it when they are not isolated, never these.
pub fn hide_from_children(names: impl IntoIterator<Item = String>) {
    let mut hidden = HIDDEN.write().unwrap_or_else(|e| e.into_inner());
    for name in names {
        if !hidden.contains(&name) {
            hidden.push(name);
        }
    }
}

/// The variables [`hide_from_children`] named.
pub fn hidden_from_children() -> Vec<String> {
    HIDDEN.read().unwrap_or_else(|e| e.into_inner()).clone()
}
