//! The process driver: every instance is a child process of this server, in its own process
//! group, owned by one task that starts it, waits on it and restarts it after a crash.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, getpgid};
use tokio::process::{Child, Command};
use tokio::sync::{broadcast, oneshot, watch};
use tokio::time::{Instant, sleep, sleep_until, timeout};

use crate::cgroup::{Cgroup, Hierarchy};
use crate::log_file::{error_tail, open_append, write_marker};
use crate::routes::Routes;
use crate::sandbox::{self, Account, Sandbox};
use crate::{
    CanaryFigures, CanaryRoute, Driver, DriverError, DriverEvent, InstanceId, InstanceStarted,
    InstanceStatus, RouteTarget, RouterSpec, StartInstance, StopInstance, UpstreamMetrics,
};

/// One health request may take this long before it counts as a failed probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How often a process this driver did not start is checked for exit during its grace.
const LEFTOVER_POLL: Duration = Duration::from_millis(50);
const EVENT_BUFFER: usize = 256;

/// Runs instances as child processes of this server; create one per server.
///
/// Dropping it leaves its instances running and supervised: call [`Driver::stop_all`] on shutdown.
#[derive(Clone)]
pub struct ProcessDriver {
    shared: Arc<Shared>,
}

struct Shared {
    instances: Mutex<HashMap<InstanceId, Arc<Instance>>>,
    events: broadcast::Sender<DriverEvent>,
    http: reqwest::Client,
    /// Where limits are enforced, or why they cannot be.
    cgroups: Result<Hierarchy, String>,
    routes: Routes,
    /// Where what runs is kept (its instances and routes), so that a process that takes over
    /// after this one died adopts them; None: nothing is kept.
    kept: Option<std::path::PathBuf>,
}

/// What a data plane keeps on disk of what it runs, for the process that takes over.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Kept {
    instances: Vec<KeptInstance>,
    routes: Vec<(String, String, RouteTarget)>,
    /// The canaries set, so the routers of the process that takes over keep the split.
    #[serde(default)]
    canaries: Vec<(String, String, CanaryRoute)>,
}

/// A running instance, as kept.
#[derive(serde::Serialize, serde::Deserialize)]
struct KeptInstance {
    req: StartInstance,
    port: u16,
    pid: u32,
    restarts: u32,
}

/// A sandboxed instance's account, data directory and cgroup, made once for all its starts.
struct Confined {
    account: Account,
    sandbox: Sandbox,
    cgroup: Option<Cgroup>,
}

/// Run as root before the sandbox: writes 0 (itself) to each `cgroup.procs` file given before
/// `--`, then becomes the command after it, so the sandbox and all it starts are in the cgroup
/// from its first instruction.
const JOIN_CGROUP: &str =
    r#"while [ "$1" != -- ]; do echo 0 > "$1" || exit 125; shift; done; shift; exec "$@""#;

/// One instance, from its first start until it is stopped, fails to start, or is given up.
struct Instance {
    req: StartInstance,
    /// Chosen once, so a restarted process keeps the address the router points at.
    port: u16,
    /// `Some(grace)` once someone asked to stop it.
    stop: watch::Sender<Option<Duration>>,
    phase: watch::Sender<Phase>,
    live: Mutex<Live>,
}

#[derive(Clone)]
enum Phase {
    /// Not healthy yet; whoever asks to start it too waits for the first start's outcome.
    Starting,
    /// Became healthy; the reply every later start gets (with the current pid).
    Running(InstanceStarted),
    /// No process is left and the instance is gone from the driver's table.
    Finished,
}

#[derive(Clone, Default)]
struct Live {
    /// `None` until the first process is spawned.
    pid: Option<u32>,
    restarts: u32,
    healthy: bool,
    last_crash: Option<String>,
}

/// Where the caller that created an instance learns how its first start went.
type FirstStart = oneshot::Receiver<Result<InstanceStarted, DriverError>>;

/// An instance's process: a child of this one, or one adopted from an earlier process.
enum Process {
    Child(Child),
    /// Not a child: watched through `/proc`, and its exit status is not known.
    Adopted(u32),
}

impl Process {
    async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match self {
            Process::Child(child) => child.wait().await,
            Process::Adopted(pid) => {
                while is_running(*pid).await {
                    sleep(LEFTOVER_POLL).await;
                }
                Err(std::io::Error::other(
                    "it exited (adopted from an earlier agent, so its exit status is unknown)",
                ))
            }
        }
    }
}

/// A process that answered its health check.
struct Healthy {
    child: Process,
    pid: u32,
    ready_after: Duration,
    /// Its cgroup's OOM kills before it started.
    oom_before: u64,
}

impl ProcessDriver {
    /// A driver with no instances that keeps what it runs in `kept` (an agent's data dir), so
    /// that the process that takes over after this one dies adopts it ([`Driver::adopt`]).
    pub fn keeping(kept: std::path::PathBuf) -> Self {
        let mut driver = Self::new();
        if let Some(shared) = Arc::get_mut(&mut driver.shared) {
            shared.kept = Some(kept);
        }
        driver
    }

    /// A driver with no instances.
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            // A proxy from the environment must not sit between us and a loopback health check.
            .no_proxy()
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        ProcessDriver {
            shared: Arc::new(Shared {
                instances: Mutex::new(HashMap::new()),
                events,
                http,
                cgroups: Hierarchy::detect(),
                routes: Routes::default(),
                kept: None,
            }),
        }
    }
}

impl Default for ProcessDriver {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl Driver for ProcessDriver {
    async fn start(&self, req: StartInstance) -> Result<InstanceStarted, DriverError> {
        loop {
            let (inst, first_start) = self.shared.instance_for(&req)?;
            if let Some(outcome) = first_start {
                return outcome.await.unwrap_or_else(|_| {
                    Err(DriverError::Stopped {
                        instance_id: req.instance_id.clone(),
                    })
                });
            }
            // Someone else started it: share their outcome, or start anew once a stop is done.
            let stopping = inst.stop.borrow().is_some();
            let mut phase = inst.phase.subscribe();
            let settled = phase
                .wait_for(|p| match p {
                    Phase::Finished => true,
                    Phase::Running(_) => !stopping,
                    Phase::Starting => false,
                })
                .await
                .map(|p| p.clone());
            if let Ok(Phase::Running(started)) = settled {
                return Ok(started);
            }
        }
    }

    async fn stop(&self, req: StopInstance) -> Result<(), DriverError> {
        match self.shared.instance(&req.instance_id) {
            Some(inst) => {
                inst.request_stop(req.grace);
                inst.finished().await;
            }
            None => {
                // Left by a previous server: the recorded pid if any, and every process still
                // carrying the instance's marker (one killed before its pid was recorded).
                let mut pids = marked_pids(&req.instance_id).await;
                pids.extend(req.pid);
                pids.sort_unstable();
                pids.dedup();
                for pid in pids {
                    stop_leftover(&req.instance_id, pid, req.grace).await;
                }
            }
        }
        self.shared.routes.forget(&req.instance_id);
        Ok(())
    }

    async fn status(&self, instance_id: &InstanceId) -> Option<InstanceStatus> {
        let inst = self.shared.instance(instance_id)?;
        let live = lock(&inst.live).clone();
        Some(InstanceStatus {
            instance_id: instance_id.clone(),
            pid: live.pid?,
            port: inst.port,
            restarts: live.restarts,
            healthy: live.healthy,
            last_crash: live.last_crash,
            hosts: Vec::new(),
            unreachable: Vec::new(),
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<DriverEvent> {
        self.shared.events.subscribe()
    }

    async fn stop_all(&self, grace: Duration) {
        let all: Vec<Arc<Instance>> = lock(&self.shared.instances).values().cloned().collect();
        for inst in &all {
            inst.request_stop(grace);
        }
        for inst in &all {
            inst.finished().await;
        }
    }

    async fn bind_router(&self, spec: RouterSpec) -> Result<(), DriverError> {
        self.shared.routes.bind(spec).await
    }

    async fn switch(
        &self,
        env: &str,
        app: &str,
        to: Option<RouteTarget>,
    ) -> Result<Option<RouteTarget>, DriverError> {
        let before = self.shared.routes.switch(env, app, to).await;
        self.shared.keep().await;
        before
    }

    async fn set_canary(
        &self,
        env: &str,
        app: &str,
        canary: Option<CanaryRoute>,
    ) -> Result<(), DriverError> {
        let set = self.shared.routes.set_canary(env, app, canary).await;
        self.shared.keep().await;
        set
    }

    async fn canary_figures(&self, env: &str, app: &str) -> Option<CanaryFigures> {
        self.shared.routes.canary_figures(env, app).await
    }

    async fn adopt(&self) -> Vec<(InstanceId, u32)> {
        self.shared.adopt().await
    }

    fn inherit_listeners(&self, listeners: Vec<(SocketAddr, std::net::TcpListener)>) {
        self.shared.routes.inherit(listeners);
    }

    async fn listeners(&self) -> Vec<(SocketAddr, std::net::TcpListener)> {
        self.shared.routes.listeners().await
    }

    async fn routed(&self, env: &str, app: &str) -> Option<RouteTarget> {
        self.shared.routes.routed(env, app).await
    }

    async fn set_starting(&self, env: &str, app: &str, label: &str) {
        self.shared.routes.set_starting(env, app, label).await;
    }

    async fn drain(&self, instance: &InstanceId, grace: Duration) -> bool {
        self.shared.routes.drain(instance, grace).await
    }

    async fn router_metrics(&self, env: &str) -> Vec<UpstreamMetrics> {
        self.shared.routes.metrics(env).await
    }

    async fn close_routers(&self) -> Vec<(String, Vec<InstanceId>)> {
        self.shared.routes.close().await
    }

    async fn retain_routers(&self, envs: &[String]) -> Vec<String> {
        self.shared.routes.retain(envs).await
    }

    async fn remove_gone_users(&self, keep: &[String]) -> Vec<String> {
        let keep = keep.to_vec();
        tokio::task::spawn_blocking(move || sandbox::remove_gone_users(&keep))
            .await
            .unwrap_or_default()
    }

    async fn set_front(
        &self,
        env: &str,
        listen: std::net::SocketAddr,
        backends: Vec<std::net::SocketAddr>,
    ) -> Result<(), DriverError> {
        self.shared.routes.front(env, listen, backends).await
    }
}

impl Shared {
    fn instance(&self, instance_id: &InstanceId) -> Option<Arc<Instance>> {
        lock(&self.instances).get(instance_id).cloned()
    }

    /// The instance for this request, and, if this call created it, the outcome of its first start.
    fn instance_for(
        self: &Arc<Self>,
        req: &StartInstance,
    ) -> Result<(Arc<Instance>, Option<FirstStart>), DriverError> {
        let mut instances = lock(&self.instances);
        if let Some(inst) = instances.get(&req.instance_id) {
            return Ok((inst.clone(), None));
        }
        let port = match req.port {
            Some(port) => port,
            None => free_port()?,
        };
        let inst = Arc::new(Instance {
            req: req.clone(),
            port,
            stop: watch::Sender::new(None),
            phase: watch::Sender::new(Phase::Starting),
            live: Mutex::new(Live::default()),
        });
        instances.insert(req.instance_id.clone(), inst.clone());
        let (outcome, first_start) = oneshot::channel();
        // A task of its own, so the instance is neither orphaned nor left half-started when
        // the caller of `start` goes away.
        tokio::spawn(self.clone().run(inst.clone(), outcome));
        Ok((inst, Some(first_start)))
    }

    async fn run(
        self: Arc<Self>,
        inst: Arc<Instance>,
        outcome: oneshot::Sender<Result<InstanceStarted, DriverError>>,
    ) {
        let confined = match self.confine(&inst.req, inst.port) {
            Ok(confined) => confined,
            Err(reason) => {
                self.forget(&inst);
                let _ = outcome.send(Err(DriverError::Sandbox {
                    instance_id: inst.req.instance_id.clone(),
                    reason,
                }));
                return;
            }
        };
        let confined = confined.as_ref();
        match self.launch(&inst, confined).await {
            Ok(first) => {
                let started = InstanceStarted {
                    instance_id: inst.req.instance_id.clone(),
                    pid: first.pid,
                    port: inst.port,
                    addr: SocketAddr::from((Ipv4Addr::LOCALHOST, inst.port)),
                    ready_after: first.ready_after,
                };
                inst.phase.send_replace(Phase::Running(started.clone()));
                self.keep().await;
                // The caller may have gone away; the instance runs on regardless.
                let _ = outcome.send(Ok(started));
                self.supervise(&inst, first, confined).await;
                self.forget(&inst);
                self.keep().await;
            }
            Err(err) => {
                // Forget first, so a caller retrying on this error starts afresh.
                self.forget(&inst);
                let _ = outcome.send(Err(err));
            }
        }
        unconfine(confined, inst.port);
        forget_container(&inst.req);
    }

    /// Supervises an instance an earlier process started (from its pid on), as if started here.
    async fn keep_adopted(
        self: Arc<Self>,
        inst: Arc<Instance>,
        confined: Option<Confined>,
        pid: u32,
    ) {
        let first = Healthy {
            child: Process::Adopted(pid),
            pid,
            ready_after: Duration::ZERO,
            oom_before: oom_kills(confined.as_ref()),
        };
        self.supervise(&inst, first, confined.as_ref()).await;
        self.forget(&inst);
        self.keep().await;
        unconfine(confined.as_ref(), inst.port);
        forget_container(&inst.req);
    }

    /// Writes what runs (instances, routes) where the process that takes over finds it.
    async fn keep(&self) {
        let Some(path) = &self.kept else { return };
        let instances: Vec<Arc<Instance>> = lock(&self.instances).values().cloned().collect();
        let mut kept = Kept {
            routes: self.routes.table().await,
            canaries: self.routes.canaries().await,
            ..Kept::default()
        };
        for inst in instances {
            let running = matches!(&*inst.phase.borrow(), Phase::Running(_));
            let live = lock(&inst.live).clone();
            if let (true, Some(pid)) = (running, live.pid) {
                kept.instances.push(KeptInstance {
                    req: inst.req.for_disk(),
                    port: inst.port,
                    pid,
                    restarts: live.restarts,
                });
            }
        }
        let written = serde_json::to_vec(&kept)
            .map_err(std::io::Error::other)
            .and_then(|json| {
                // It holds the instances' variables, secrets among them: the agent's user only.
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let partial = path.with_extension("partial");
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .mode(0o600)
                    .open(&partial)?
                    .write_all(&json)?;
                std::fs::rename(&partial, path)
            });
        if let Err(e) = written {
            tracing::warn!("could not keep what runs in {}: {e}", path.display());
        }
    }

    /// Adopts the instances an earlier process kept that still run (the same processes, by
    /// their marker), and the routes to them; answers their pids.
    async fn adopt(self: &Arc<Self>) -> Vec<(InstanceId, u32)> {
        let Some(path) = &self.kept else {
            return Vec::new();
        };
        let Some(kept) = std::fs::read(path)
            .ok()
            .and_then(|json| serde_json::from_slice::<Kept>(&json).ok())
        else {
            return Vec::new();
        };
        let mut adopted = Vec::new();
        for k in kept.instances {
            let id = k.req.instance_id.clone();
            if !is_running(k.pid).await || !belongs_to(k.pid, &id).await {
                continue;
            }
            let confined = match self.confine(&k.req, k.port) {
                Ok(c) => c,
                Err(why) => {
                    tracing::warn!(instance_id = %id, "cannot adopt: {why}");
                    continue;
                }
            };
            let started = InstanceStarted {
                instance_id: id.clone(),
                pid: k.pid,
                port: k.port,
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, k.port)),
                ready_after: Duration::ZERO,
            };
            let req = k.req.with_secrets_of(k.pid);
            if req.lacks_secrets() {
                tracing::warn!(
                    instance_id = %id,
                    "adopted without its secrets (its process environment could not be read): a restart after a crash would start it without them; deploy it again"
                );
            }
            let inst = Arc::new(Instance {
                req,
                port: k.port,
                stop: watch::Sender::new(None),
                phase: watch::Sender::new(Phase::Running(started)),
                live: Mutex::new(Live {
                    pid: Some(k.pid),
                    restarts: k.restarts,
                    healthy: true,
                    last_crash: None,
                }),
            });
            lock(&self.instances).insert(id.clone(), inst.clone());
            tracing::info!(instance_id = %id, pid = k.pid, port = k.port, "adopted a running instance");
            tokio::spawn(Arc::clone(self).keep_adopted(inst, confined, k.pid));
            adopted.push((id, k.pid));
        }
        let instances = lock(&self.instances);
        let routes = kept
            .routes
            .into_iter()
            .filter(|(_, _, t)| instances.contains_key(&t.instance_id))
            .collect();
        let canaries = kept
            .canaries
            .into_iter()
            .filter(|(_, _, c)| instances.contains_key(&c.target.instance_id))
            .collect();
        drop(instances);
        self.routes.restore(routes, canaries);
        adopted
    }

    /// Makes what the sandbox of `req` needs: its user, its data directory, its network fence
    /// (which lets its environment reach `port`, and other machines only through the router)
    /// and its cgroup.
    fn confine(&self, req: &StartInstance, port: u16) -> Result<Option<Confined>, String> {
        let Some(sandbox) = &req.sandbox else {
            return Ok(None);
        };
        let account = sandbox::ensure_user(sandbox)?;
        sandbox::prepare_data_dir(&sandbox.data_dir, account)?;
        if let Some(reach) = &sandbox.network {
            crate::network::fence(account, reach, &[port])?;
        }
        let cgroup = if sandbox.limits.any() {
            let hierarchy = self
                .cgroups
                .as_ref()
                .map_err(|why| format!("its limits cannot be enforced: {why}"))?;
            Some(
                hierarchy
                    .create(req.instance_id.as_str(), &sandbox.limits)
                    .map_err(|e| format!("could not make its cgroup: {e}"))?,
            )
        } else {
            None
        };
        Ok(Some(Confined {
            account,
            sandbox: sandbox.clone(),
            cgroup,
        }))
    }

    fn forget(&self, inst: &Arc<Instance>) {
        let mut instances = lock(&self.instances);
        if instances
            .get(&inst.req.instance_id)
            .is_some_and(|known| Arc::ptr_eq(known, inst))
        {
            instances.remove(&inst.req.instance_id);
        }
        drop(instances);
        inst.phase.send_replace(Phase::Finished);
    }

    /// Spawns the instance's process and waits until it answers its health check. On any
    /// failure no process of it is left running.
    async fn launch(
        &self,
        inst: &Instance,
        confined: Option<&Confined>,
    ) -> Result<Healthy, DriverError> {
        let req = &inst.req;
        let id = &req.instance_id;
        let command = expand(&req.command, inst.port, &req.template_vars);
        let log = open_append(&req.log_path)?;
        let output = || {
            log.try_clone().map_err(|source| DriverError::Io {
                context: format!(
                    "sharing log file {} with the process",
                    req.log_path.display()
                ),
                source,
            })
        };
        let port = inst.port.to_string();
        let oom_before = oom_kills(confined);
        let spawned_at = Instant::now();
        let mut process = Command::new("sh");
        match (confined, &req.image) {
            (_, Some(run)) => {
                let mut env = req.env.clone();
                env.insert("PORT".into(), port.clone());
                env.insert("SHIPGATE_PORT".into(), port.clone());
                env.insert("SHIPGATE_INSTANCE".into(), id.to_string());
                let cgroup = confined
                    .and_then(|c| c.cgroup.as_ref())
                    .map(|_| format!("/shipgate/{id}"));
                let runc = crate::image::prepare(
                    run,
                    id,
                    &env,
                    confined.map(|c| c.account),
                    confined.map_or(run.data_dir.as_path(), |c| c.sandbox.data_dir.as_path()),
                    cgroup.as_deref(),
                )
                .map_err(|reason| DriverError::Sandbox {
                    instance_id: id.clone(),
                    reason,
                })?;
                process
                    .env_clear()
                    .envs(sandbox::BASE_ENV)
                    .arg("-c")
                    .arg(JOIN_CGROUP)
                    .arg("sh")
                    .args(
                        confined
                            .and_then(|c| c.cgroup.as_ref())
                            .iter()
                            .flat_map(|c| c.procs_files()),
                    )
                    .arg("--")
                    .args(runc)
            }
            (None, None) => {
                for hidden in crate::hidden_from_children() {
                    process.env_remove(hidden);
                }
                process.arg("-c").arg(&command)
            }
            (Some(c), None) => process
                .env_clear()
                .envs(sandbox::BASE_ENV)
                .arg("-c")
                .arg(JOIN_CGROUP)
                .arg("sh")
                .args(c.cgroup.iter().flat_map(Cgroup::procs_files))
                .args(["--", "bwrap"])
                .args(sandbox::command_line(
                    &req.release_dir,
                    &c.sandbox.data_dir,
                    c.account,
                    &command,
                )),
        };
        let mut child = process
            .current_dir(&req.release_dir)
            .envs(&req.env)
            .env("PORT", &port)
            .env("SHIPGATE_PORT", &port)
            .env("SHIPGATE_INSTANCE", id.as_str())
            .stdin(Stdio::null())
            .stdout(output()?)
            .stderr(output()?)
            // Its own group, so stopping reaches everything the command started.
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|source| DriverError::Spawn {
                instance_id: id.clone(),
                command: command.clone(),
                release_dir: req.release_dir.clone(),
                source,
            })?;
        // A freshly spawned child has not been reaped, so it always has an id.
        let pid = child.id().unwrap_or_default();
        write_marker(&log, id, pid, inst.port);
        inst.update_live(|live| {
            live.pid = Some(pid);
            live.healthy = false;
        });

        let url = format!("http://127.0.0.1:{}{}", inst.port, req.health_path);
        let deadline = spawned_at + req.health_timeout;
        let mut stop = inst.stop.subscribe();
        let mut last_error = "no answer yet".to_string();
        loop {
            let probe = async {
                let problem = match self.http.get(&url).timeout(PROBE_TIMEOUT).send().await {
                    Ok(answer) if answer.status().is_success() => None,
                    Ok(answer) => Some(format!("answered {}", answer.status())),
                    Err(err) => Some(root_cause(&err)),
                };
                if problem.is_some() {
                    sleep(probe_interval(spawned_at.elapsed())).await;
                }
                problem
            };
            tokio::select! {
                biased;
                grace = stop_asked(&mut stop) => {
                    terminate_child(&mut child, pid, grace).await;
                    return Err(DriverError::Stopped { instance_id: id.clone() });
                }
                status = child.wait() => {
                    // Whatever it left behind in its group must not hold the port.
                    signal_group(pid, Signal::SIGKILL);
                    return Err(DriverError::ExitedEarly {
                        instance_id: id.clone(),
                        exit: describe_end(status, confined, oom_before),
                        log_tail: error_tail(&req.log_path),
                    });
                }
                problem = probe => match problem {
                    None => break,
                    Some(problem) => last_error = problem,
                },
                () = sleep_until(deadline) => {
                    terminate_child(&mut child, pid, Duration::ZERO).await;
                    return Err(DriverError::Unhealthy {
                        instance_id: id.clone(),
                        timeout: req.health_timeout,
                        url,
                        last_error,
                        log_tail: error_tail(&req.log_path),
                    });
                }
            }
        }
        inst.update_live(|live| live.healthy = true);
        // runc read the bundle's config.json when it made the container: it holds the
        // instance's variables, secrets among them, so it goes now (each start writes it anew).
        if let Some(run) = &req.image {
            let _ = std::fs::remove_file(run.bundle.join("config.json"));
        }
        tracing::info!(instance_id = %id, pid, port = inst.port, "instance is healthy");
        Ok(Healthy {
            child: Process::Child(child),
            pid,
            ready_after: spawned_at.elapsed(),
            oom_before,
        })
    }

    /// Waits on the running process until a stop is asked; restarts it after each crash
    /// until the crash window overflows.
    async fn supervise(&self, inst: &Instance, first: Healthy, confined: Option<&Confined>) {
        let id = &inst.req.instance_id;
        let mut stop = inst.stop.subscribe();
        let (mut child, mut pid, mut oom_before) = (first.child, first.pid, first.oom_before);
        let mut crashes: VecDeque<Instant> = VecDeque::new();
        let mut backoff = FIRST_BACKOFF;
        let mut healthy_since = Instant::now();
        let policy = inst.req.crash_loop;
        loop {
            let status = tokio::select! {
                biased;
                grace = stop_asked(&mut stop) => {
                    terminate(&mut child, pid, grace).await;
                    return;
                }
                status = child.wait() => status,
            };
            signal_group(pid, Signal::SIGKILL);
            inst.update_live(|live| live.healthy = false);
            if healthy_since.elapsed() >= policy.within {
                backoff = FIRST_BACKOFF;
            }
            let mut exit = describe_end(status, confined, oom_before);
            inst.update_live(|live| live.last_crash = Some(exit.clone()));
            // Retry until one start becomes healthy, a stop is asked, or the window overflows.
            loop {
                let now = Instant::now();
                crashes.push_back(now);
                while crashes
                    .front()
                    .is_some_and(|at| now.duration_since(*at) > policy.within)
                {
                    crashes.pop_front();
                }
                if crashes.len() > policy.crashes as usize {
                    let crashes = u32::try_from(crashes.len()).unwrap_or(u32::MAX);
                    tracing::error!(instance_id = %id, crashes, "instance keeps crashing; giving up");
                    self.emit(DriverEvent::GaveUp {
                        instance_id: id.clone(),
                        crashes,
                    });
                    return;
                }
                tracing::warn!(instance_id = %id, %exit, restart_in = ?backoff, "instance crashed");
                self.emit(DriverEvent::Crashed {
                    instance_id: id.clone(),
                    exit: exit.clone(),
                    restart_in: backoff,
                });
                tokio::select! {
                    biased;
                    _ = stop_asked(&mut stop) => return,
                    () = sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                match self.launch(inst, confined).await {
                    Ok(restarted) => {
                        (child, pid, oom_before) =
                            (restarted.child, restarted.pid, restarted.oom_before);
                        healthy_since = Instant::now();
                        inst.update_live(|live| live.restarts += 1);
                        inst.phase.send_modify(|phase| {
                            if let Phase::Running(started) = phase {
                                started.pid = pid;
                            }
                        });
                        self.emit(DriverEvent::Restarted {
                            instance_id: id.clone(),
                            pid,
                        });
                        self.keep().await;
                        break;
                    }
                    Err(DriverError::Stopped { .. }) => return,
                    Err(err) => exit = err.crash_reason(),
                }
            }
        }
    }

    fn emit(&self, event: DriverEvent) {
        // Nobody listening is fine: the events are a record, not a control path.
        let _ = self.events.send(event);
    }
}

impl Instance {
    fn request_stop(&self, grace: Duration) {
        self.stop.send_if_modified(|stop| {
            let first = stop.is_none();
            if first {
                *stop = Some(grace);
            }
            first
        });
    }

    async fn finished(&self) {
        let mut phase = self.phase.subscribe();
        // An error means the sender is gone, which cannot outlive `self`; either way it is over.
        let _ = phase.wait_for(|p| matches!(p, Phase::Finished)).await;
    }

    fn update_live(&self, change: impl FnOnce(&mut Live)) {
        change(&mut lock(&self.live));
    }
}

/// Resolves once a stop is asked, with its grace.
async fn stop_asked(stop: &mut watch::Receiver<Option<Duration>>) -> Duration {
    match stop.wait_for(Option::is_some).await {
        Ok(grace) => (*grace).unwrap_or_default(),
        Err(_) => Duration::ZERO,
    }
}

/// Undoes what [`Shared::confine`] made for one instance (its cgroup, its port in the fence).
fn unconfine(confined: Option<&Confined>, port: u16) {
    if let Some(c) = confined {
        if let Some(cgroup) = &c.cgroup {
            cgroup.remove();
        }
        if c.sandbox.network.is_some() {
            crate::network::forget_instance(Some(c.account), port);
        }
    }
}

/// For an image's instance: what runc keeps of its container, and its bundle.
fn forget_container(req: &StartInstance) {
    if let Some(run) = &req.image {
        crate::image::remove_container(&req.instance_id);
        let _ = std::fs::remove_dir_all(&run.bundle);
    }
}

/// SIGTERM to the group, SIGKILL after `grace`, then reaps the process.
async fn terminate(process: &mut Process, pid: u32, grace: Duration) {
    match process {
        Process::Child(child) => terminate_child(child, pid, grace).await,
        Process::Adopted(pid) => {
            signal_group(*pid, Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while is_running(*pid).await && Instant::now() < deadline {
                sleep(LEFTOVER_POLL).await;
            }
            signal_group(*pid, Signal::SIGKILL);
        }
    }
}

/// [`terminate`] for a child.
async fn terminate_child(child: &mut Child, pid: u32, grace: Duration) {
    signal_group(pid, Signal::SIGTERM);
    if timeout(grace, child.wait()).await.is_err() {
        tracing::warn!(
            pid,
            ?grace,
            "instance did not exit within its grace; killing it"
        );
    }
    // Also reaches whatever the leader started and left behind.
    signal_group(pid, Signal::SIGKILL);
    let _ = child.wait().await;
}

fn signal_group(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    match killpg(Pid::from_raw(raw), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(err) => tracing::warn!(pid, %signal, %err, "could not signal process group"),
    }
}

/// Stops a process that a previous server started, if it is still that instance.
async fn stop_leftover(instance_id: &InstanceId, pid: u32, grace: Duration) {
    let Ok(raw) = i32::try_from(pid) else { return };
    let target = Pid::from_raw(raw);
    if !belongs_to(pid, instance_id).await {
        tracing::info!(%instance_id, pid, "pid is not this instance (anymore); not stopping it");
        return;
    }
    let is_leader = getpgid(Some(target)).is_ok_and(|group| group == target);
    let send = |signal| {
        let sent = if is_leader {
            killpg(target, signal)
        } else {
            kill(target, signal)
        };
        if let Err(err) = sent.or_else(|err| {
            if err == Errno::ESRCH {
                Ok(())
            } else {
                Err(err)
            }
        }) {
            tracing::warn!(%instance_id, pid, %signal, %err, "could not signal leftover instance");
        }
    };
    send(Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while is_running(pid).await && Instant::now() < deadline {
        sleep(LEFTOVER_POLL).await;
    }
    if is_running(pid).await && belongs_to(pid, instance_id).await {
        send(Signal::SIGKILL);
    }
}

/// Every process whose environment carries the instance's marker.
async fn marked_pids(instance_id: &InstanceId) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir("/proc").await else {
        return pids;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if belongs_to(pid, instance_id).await {
            pids.push(pid);
        }
    }
    pids
}

/// Whether `/proc/<pid>/environ` carries the marker the driver gives every instance.
async fn belongs_to(pid: u32, instance_id: &InstanceId) -> bool {
    let marker = format!("SHIPGATE_INSTANCE={instance_id}");
    match tokio::fs::read(format!("/proc/{pid}/environ")).await {
        Ok(environ) => environ
            .split(|b| *b == 0)
            .any(|var| var == marker.as_bytes()),
        Err(_) => false,
    }
}

/// Whether the process exists and is not a zombie waiting to be reaped.
async fn is_running(pid: u32) -> bool {
    match tokio::fs::read_to_string(format!("/proc/{pid}/stat")).await {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// How long to wait between health probes: short while a quick app is likely to come up, so a
/// promotion does not wait on the poll, then longer so a slow app is not flooded.
fn probe_interval(since_spawn: Duration) -> Duration {
    match since_spawn.as_millis() {
        0..200 => Duration::from_millis(2),
        200..2000 => Duration::from_millis(10),
        _ => Duration::from_millis(50),
    }
}

fn free_port() -> Result<u16, DriverError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|source| DriverError::Io {
            context: "picking a free loopback port".to_string(),
            source,
        })
}

/// Replaces `${PORT}` and `${NAME}` for every key of `vars`; other `${...}` stay for the shell.
fn expand(template: &str, port: u16, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("${") {
        let Some(len) = rest[open..].find('}') else {
            break;
        };
        let (placeholder, name) = (&rest[open..=open + len], &rest[open + 2..open + len]);
        out.push_str(&rest[..open]);
        match vars.get(name) {
            _ if name == "PORT" => out.push_str(&port.to_string()),
            Some(value) => out.push_str(value),
            None => out.push_str(placeholder),
        }
        rest = &rest[open + len + 1..];
    }
    out.push_str(rest);
    out
}

/// How a process ended; `out of memory (limit 512MiB)` when the kernel killed it for its cgroup's
/// memory limit (more OOM kills than the `before` counted when it started).
fn describe_end(
    status: std::io::Result<ExitStatus>,
    confined: Option<&Confined>,
    before: u64,
) -> String {
    if let Some(c) = confined
        && let (Some(cgroup), Some(limit)) = (&c.cgroup, c.sandbox.limits.memory)
        && cgroup.oom_kills() > before
    {
        return format!(
            "out of memory (limit {})",
            crate::cgroup::bytes_text(limit.0)
        );
    }
    describe_wait(status)
}

fn oom_kills(confined: Option<&Confined>) -> u64 {
    confined
        .and_then(|c| c.cgroup.as_ref())
        .map_or(0, Cgroup::oom_kills)
}

fn describe_wait(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            (None, None) => status.to_string(),
        },
        Err(err) => format!("an unknown status (waiting failed: {err})"),
    }
}

/// The innermost error, e.g. "Connection refused (os error 111)" rather than reqwest's wrapper.
fn root_cause(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return format!("no answer within {PROBE_TIMEOUT:?}");
    }
    let mut cause: &dyn std::error::Error = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// The table and status locks are only held for plain reads and writes that cannot panic, so
/// a poisoned lock still holds consistent data.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_replaces_port_and_known_vars_only() {
        let vars = BTreeMap::from([
            ("APP".to_string(), "web".to_string()),
            ("PORT".to_string(), "ignored".to_string()),
        ]);
        assert_eq!(
            expand("run ${APP} --port ${PORT} ${HOME} $X ${open", 4312, &vars),
            "run web --port 4312 ${HOME} $X ${open"
        );
    }
}
