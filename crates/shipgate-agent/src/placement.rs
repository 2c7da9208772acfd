//! Environments placed on hosts: a [`Driver`] that sends each environment's work where the
//! config puts it. An environment without `hosts` runs on the server's own machine (the local
//! driver); one with `hosts` runs on each of them, and this driver makes those hosts act as one:
//!
//! - a start runs on every reachable host (all at once, or in batches), and only when every one
//!   of them is healthy does it succeed; if any fails, the new instances are stopped everywhere
//!   and the error names the host and its last log lines;
//! - a switch checks first that every host has the instance healthy, then switches them all
//!   (switching back those it did if one fails), so no host is left half-switched; a switch
//!   to what the environment serves already (a restarted server restoring it) goes to the
//!   hosts that answer, however few: `hosts_required` is for promotions;
//! - an instance's status is its health on the hosts that answer, with the others named
//!   unreachable, so a restarted server keeps (adopts) what still serves users;
//! - a canary's step is taken by every host at once, or by none (`placement/canary.rs`);
//! - what each environment serves is kept in `placement.json`, so that a host that comes back
//!   (or whose agent was started again) is given its environments' live releases before its
//!   router serves them.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use shipgate_deploy::{
    CanaryFigures, CanaryRoute, Driver, DriverError, DriverEvent, HostInstance, InstanceId,
    InstanceStarted, InstanceStatus, RouteTarget, RouterSpec, StartInstance, StopInstance,
    UpstreamMetrics,
};
use tokio::sync::broadcast;

use crate::AgentClient;
use crate::link::Hosts;
use crate::protocol::{HasRelease, Hello, LogChunk, LogFrom};

mod canary;
mod image;

/// How an environment is spread over hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvPlacement {
    /// Its hosts, in config order.
    pub hosts: Vec<String>,
    /// How many start at once.
    pub batch: usize,
    /// How many must take part in a promotion.
    pub required: usize,
    /// The port its router listens on, on each host.
    pub port: u16,
    /// The address on the server's machine that spreads connections over its hosts, if any.
    pub front: Option<SocketAddr>,
}

/// How long `host list` waits for a host to say who it is.
const HELLO_WITHIN: Duration = Duration::from_secs(2);

/// How often the fronts' lists of hosts are brought up to date.
const FRONT_EVERY: Duration = Duration::from_millis(500);

/// What an environment's app serves, kept so that a returning host can be given it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Served {
    target: RouteTarget,
    start: StartInstance,
}

/// What is kept in [`PLACEMENT_FILE`].
#[derive(Default, Serialize, Deserialize)]
struct Kept {
    #[serde(default)]
    served: BTreeMap<String, BTreeMap<String, Served>>,
    #[serde(default)]
    started: HashMap<InstanceId, StartInstance>,
}

/// The file that keeps what hosts run across server restarts.
const PLACEMENT_FILE: &str = "placement.json";
/// How long a stopped instance on a host may take to exit.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Where a placement is also kept when several servers share one database: what the server
/// that led before kept (read at start, preferred over the data dir's file), and how to keep
/// each new snapshot there, so that the next leader knows what every host serves.
pub struct SharedKeep {
    /// The last snapshot kept there, if any.
    pub kept: Option<Vec<u8>>,
    /// Keeps a snapshot (in order; it may write later, off the caller's thread).
    pub save: Box<dyn Fn(Vec<u8>) + Send + Sync>,
}

/// A [`Driver`] over the local data plane and the agents of other hosts.
pub struct Placement {
    local: Arc<dyn Driver>,
    hosts: Arc<Hosts>,
    clients: BTreeMap<String, Arc<AgentClient>>,
    /// Where each hosted environment runs: those of the config, and those made on demand.
    envs: std::sync::RwLock<HashMap<String, EnvPlacement>>,
    data_dir: PathBuf,
    events: broadcast::Sender<DriverEvent>,
    /// The requests of the instances started on hosts (server-side paths), by instance.
    started: Mutex<HashMap<InstanceId, StartInstance>>,
    /// What each hosted environment's apps serve, by environment and app.
    served: Mutex<BTreeMap<String, BTreeMap<String, Served>>>,
    routers: Mutex<HashMap<String, RouterSpec>>,
    /// The canary each host of an environment applies, by environment and app, then host (with
    /// the host's own address of the canary's instance): what a step that fails on one host
    /// puts back on the others.
    canaries: Mutex<HashMap<(String, String), BTreeMap<String, CanaryRoute>>>,
    /// The canaries (environment, app) ended while a host of theirs was away, by host: its
    /// router still splits for them, so they are ended there when it connects again.
    ended_away: Mutex<HashMap<String, std::collections::BTreeSet<(String, String)>>>,
    /// One reconciliation of a host at a time.
    reconciling: tokio::sync::Mutex<()>,
    /// One sending of image blobs to each host at a time, by host.
    sending: BTreeMap<String, tokio::sync::Mutex<()>>,
    /// One write of `placement.json` at a time, snapshot to rename.
    saving: Mutex<()>,
    shared: Option<Box<dyn Fn(Vec<u8>) + Send + Sync>>,
    /// False when `placement.json` was there but unreadable: then nothing a host runs is
    /// stopped as unknown, since what is known was lost.
    trusted: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn on_host(host: &str, e: impl std::fmt::Display) -> DriverError {
    DriverError::Agent(format!("on host {host}: {e}"))
}

/// `path` moved from under `from` to under `to` (unchanged when it is not under `from`).
fn rebase(path: &Path, from: &Path, to: &Path) -> PathBuf {
    path.strip_prefix(from)
        .map_or_else(|_| path.to_path_buf(), |rest| to.join(rest))
}

/// The digest of the release unpacked in `release_dir` (its folder is named by it).
fn release_digest(release_dir: &Path) -> Result<shipgate_core::Digest, String> {
    let hex = release_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("the release directory has no name")?;
    shipgate_core::Digest::parse(&format!("sha256:{hex}"))
        .map_err(|e| format!("the release directory's digest: {e:?}"))
}

fn rebase_text(text: &str, from: &Path, to: &Path) -> String {
    let from = from.display().to_string();
    match text.strip_prefix(&from) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            format!("{}{rest}", to.display())
        }
        _ => text.to_owned(),
    }
}

impl Placement {
    /// Places `envs` on their hosts; everything else runs on `local`. Hosts are reached while
    /// they are connected to `hosts`.
    pub fn new(
        local: Arc<dyn Driver>,
        hosts: Arc<Hosts>,
        envs: HashMap<String, EnvPlacement>,
        data_dir: &Path,
        shared: Option<SharedKeep>,
    ) -> Arc<Placement> {
        let mut clients = BTreeMap::new();
        for p in envs.values() {
            for h in &p.hosts {
                clients
                    .entry(h.clone())
                    .or_insert_with(|| AgentClient::host(Arc::clone(&hosts), h));
            }
        }
        let path = data_dir.join(PLACEMENT_FILE);
        let (from_shared, save_shared) = match shared {
            Some(SharedKeep { kept, save }) => (kept, Some(save)),
            None => (None, None),
        };
        let read = match from_shared {
            Some(bytes) => Ok(bytes),
            None => std::fs::read(&path),
        };
        let (kept, trusted): (Kept, bool) = match read {
            Err(_) => (Kept::default(), true),
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(kept) => (kept, true),
                Err(e) => {
                    tracing::error!(
                        "{} is unreadable ({e}): hosts are not reconciled against it, and nothing they run is stopped as unknown",
                        path.display()
                    );
                    (Kept::default(), false)
                }
            },
        };
        let (events, _) = broadcast::channel(256);
        let sending = clients
            .keys()
            .map(|h| (h.clone(), tokio::sync::Mutex::new(())))
            .collect();
        let placement = Arc::new(Placement {
            local,
            hosts,
            clients,
            envs: std::sync::RwLock::new(envs),
            data_dir: data_dir.to_path_buf(),
            events,
            started: Mutex::new(kept.started),
            served: Mutex::new(kept.served),
            routers: Mutex::default(),
            canaries: Mutex::default(),
            ended_away: Mutex::default(),
            reconciling: tokio::sync::Mutex::new(()),
            sending,
            saving: Mutex::new(()),
            shared: save_shared,
            trusted,
        });
        placement.pass_on_events();
        placement.reconcile_on_connect();
        placement.keep_fronts();
        placement
    }

    /// Keeps each front's list of hosts to those connected, on the local data plane (which
    /// holds the front, as it holds the routers, so that it outlives the server).
    fn keep_fronts(self: &Arc<Self>) {
        let fronted: Vec<(String, SocketAddr, u16)> = self
            .envs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|(e, p)| Some((e.clone(), p.front?, p.port)))
            .collect();
        if fronted.is_empty() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut said: HashMap<String, String> = HashMap::new();
            loop {
                let Some(placement) = weak.upgrade() else {
                    return;
                };
                for (env, front, port) in &fronted {
                    let listen = SocketAddr::from(([0, 0, 0, 0], *port));
                    let backends = placement.endpoints(env, listen);
                    // With no host connected (a server that just started, or a network that
                    // failed on this side) the front keeps the hosts it had: they may well
                    // still serve, and an empty front would refuse everyone.
                    if backends.is_empty() {
                        continue;
                    }
                    let result = placement.local.set_front(env, *front, backends).await;
                    let now = result.err().map(|e| e.to_string()).unwrap_or_default();
                    if said.get(env) != Some(&now) {
                        if !now.is_empty() {
                            tracing::warn!("the front of {env} at {front}: {now}");
                        }
                        said.insert(env.clone(), now);
                    }
                }
                drop(placement);
                tokio::time::sleep(FRONT_EVERY).await;
            }
        });
    }

    /// The host names this placement uses.
    pub fn host_names(&self) -> Vec<String> {
        self.clients.keys().cloned().collect()
    }

    /// Who answers on `host` now.
    pub async fn hello(&self, host: &str) -> Option<Hello> {
        if !self.hosts.is_connected(host) {
            return None;
        }
        let client = match self.clients.get(host) {
            Some(client) => Arc::clone(client),
            // Joined, but no environment of this config is placed on it yet.
            None => AgentClient::host_once(Arc::clone(&self.hosts), host),
        };
        // A host that does not answer at once counts as not answering (the connection's own
        // pings take a few seconds more to give up on it).
        tokio::time::timeout(HELLO_WITHIN, client.hello())
            .await
            .ok()?
            .ok()
    }

    fn pass_on_events(self: &Arc<Self>) {
        let mut sources = vec![(String::new(), self.local.subscribe())];
        for (name, client) in &self.clients {
            sources.push((name.clone(), client.subscribe()));
        }
        for (host, mut rx) in sources {
            let tx = self.events.clone();
            tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(event) => {
                            let event = match event {
                                DriverEvent::Crashed {
                                    instance_id,
                                    exit,
                                    restart_in,
                                } if !host.is_empty() => DriverEvent::Crashed {
                                    instance_id,
                                    exit: format!("{exit} on host {host}"),
                                    restart_in,
                                },
                                other => other,
                            };
                            let _ = tx.send(event);
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => return,
                    }
                }
            });
        }
    }

    fn reconcile_on_connect(self: &Arc<Self>) {
        let mut connections = self.hosts.connections();
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let host = match connections.recv().await {
                    Ok(h) => h,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                };
                let Some(placement) = weak.upgrade() else {
                    return;
                };
                if placement.clients.contains_key(&host) {
                    let p = Arc::clone(&placement);
                    tokio::spawn(async move { p.reconcile_host(&host).await });
                }
            }
        });
    }

    /// Gives a host that (re)connected its environments: their routers, their live releases
    /// started and switched to, and nothing else of theirs running.
    async fn reconcile_host(&self, host: &str) {
        let _one = self.reconciling.lock().await;
        let Some(client) = self.clients.get(host) else {
            return;
        };
        let envs: Vec<String> = self
            .envs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, p)| p.hosts.iter().any(|h| h == host))
            .map(|(e, _)| e.clone())
            .collect();
        let specs: Vec<RouterSpec> = {
            let routers = lock(&self.routers);
            envs.iter()
                .filter_map(|e| routers.get(e).cloned())
                .collect()
        };
        let served: Vec<(String, String, Served)> = {
            let served = lock(&self.served);
            envs.iter()
                .filter_map(|e| served.get(e).map(|apps| (e, apps)))
                .flat_map(|(e, apps)| {
                    apps.iter()
                        .map(move |(a, s)| (e.clone(), a.clone(), s.clone()))
                })
                .collect()
        };
        // The live releases first, then the routers: a host that lost everything (its agent
        // started again) does not accept connections before it has something to serve.
        let mut targets = Vec::new();
        for (env, app, s) in served {
            let routed = client.routed(&env, &app).await;
            if routed.as_ref().map(|r| &r.instance_id) == Some(&s.target.instance_id) {
                continue;
            }
            if s.start.lacks_secrets() {
                tracing::warn!(
                    "host {host}: {} needs secrets, which are not kept on disk and this server has not had since it started; a deploy gives the host its instance again (shipgate redeploy {app} --env {env})",
                    s.target.label
                );
                continue;
            }
            tracing::info!(
                "host {host}: bringing {env} to {} before its router serves it",
                s.target.label
            );
            match self.start_on(host, s.start.clone()).await {
                Ok(started) => targets.push((
                    env,
                    app,
                    RouteTarget {
                        addr: started.addr,
                        ..s.target.clone()
                    },
                )),
                Err(e) => tracing::warn!("host {host}: could not start {}: {e}", s.target.label),
            }
        }
        for spec in specs {
            if let Err(e) = client.bind_router(spec.clone()).await {
                tracing::warn!(
                    "host {host}: could not bind the router of {}: {e}",
                    spec.env
                );
            }
        }
        // A canary ended while it was away (an abort, a restarted server ending a rollout):
        // its router would still send a share to an instance that is stopped below.
        let ended = lock(&self.ended_away).remove(host).unwrap_or_default();
        for (env, app) in ended {
            tracing::info!(
                "host {host}: ending the canary of {app} in {env}, ended while it was away"
            );
            if let Err(e) = client.set_canary(&env, &app, None).await {
                tracing::warn!("host {host}: could not end the canary of {app} in {env}: {e}");
                lock(&self.ended_away)
                    .entry(host.to_owned())
                    .or_default()
                    .insert((env, app));
            }
        }
        for (env, app, target) in targets {
            if let Err(e) = client.switch(&env, &app, Some(target)).await {
                tracing::warn!("host {host}: could not switch {env} to its live release: {e}");
            }
        }
        // Anything else it runs is from before: a promotion that failed, a standby that ended.
        if !self.trusted {
            return;
        }
        let mut keep: Vec<InstanceId> = lock(&self.started).keys().cloned().collect();
        keep.extend(
            lock(&self.served)
                .values()
                .flat_map(|apps| apps.values().map(|s| s.target.instance_id.clone())),
        );
        if let Ok(hello) = client.hello().await {
            for id in hello.instances.iter().filter(|i| !keep.contains(i)) {
                let stop = StopInstance {
                    instance_id: id.clone(),
                    pid: None,
                    grace: STOP_GRACE,
                };
                if let Err(e) = client.stop(stop).await {
                    tracing::warn!("host {host}: could not stop {id}: {e}");
                }
            }
        }
    }

    fn save(&self) {
        let _one = lock(&self.saving);
        let kept = Kept {
            // Without secrets' values (see `started`).
            served: lock(&self.served)
                .iter()
                .map(|(env, apps)| {
                    let apps = apps
                        .iter()
                        .map(|(app, s)| {
                            let kept = Served {
                                target: s.target.clone(),
                                start: s.start.for_disk(),
                            };
                            (app.clone(), kept)
                        })
                        .collect();
                    (env.clone(), apps)
                })
                .collect(),
            // Without secrets' values: a host that comes back is given the request again by a
            // deploy, not from this file.
            started: lock(&self.started)
                .iter()
                .map(|(id, req)| (id.clone(), req.for_disk()))
                .collect(),
        };
        let path = self.data_dir.join(PLACEMENT_FILE);
        let temp = path.with_extension("json.tmp");
        let bytes = match serde_json::to_vec_pretty(&kept) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!("could not keep {}: {e}", path.display());
                return;
            }
        };
        if let Some(save) = &self.shared {
            save(bytes.clone());
        }
        if let Err(e) = crate::replace_private(&path, &temp, &bytes) {
            tracing::warn!("could not keep {}: {e}", path.display());
        }
    }

    fn placed(&self, env: &str) -> Option<EnvPlacement> {
        self.envs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(env)
            .cloned()
    }

    /// The environment an instance belongs to, if it is one of a hosted environment.
    fn env_of_instance(&self, id: &InstanceId) -> Option<String> {
        if let Some(req) = lock(&self.started).get(id) {
            return req.template_vars.get("ENV").cloned();
        }
        let served = lock(&self.served);
        served
            .iter()
            .find(|(_, apps)| apps.values().any(|s| &s.target.instance_id == id))
            .map(|(e, _)| e.clone())
    }

    /// The hosts of `env` that are connected now, and those that are not.
    fn reachable(&self, p: &EnvPlacement) -> (Vec<String>, Vec<String>) {
        p.hosts
            .iter()
            .cloned()
            .partition(|h| self.hosts.is_connected(h))
    }

    /// Whether `to` is the instance kept as what `app` in `env` serves (what a host that
    /// connects again is given).
    fn serves(&self, env: &str, app: &str, to: Option<&RouteTarget>) -> bool {
        to.is_some_and(|t| {
            lock(&self.served)
                .get(env)
                .and_then(|apps| apps.get(app))
                .is_some_and(|s| s.target.instance_id == t.instance_id)
        })
    }

    fn enough(&self, env: &str, p: &EnvPlacement) -> Result<Vec<String>, DriverError> {
        let (up, down) = self.reachable(p);
        if up.len() < p.required {
            let why: Vec<String> = down
                .iter()
                .map(|h| match self.hosts.sender(h) {
                    Err(e) => e,
                    Ok(_) => format!("host {h} is unreachable"),
                })
                .collect();
            return Err(DriverError::Agent(format!(
                "{env} needs {} of its {} hosts and only {} answer: {}{}",
                p.required,
                p.hosts.len(),
                up.len(),
                why.join("; "),
                if p.required == p.hosts.len() {
                    " (set `hosts_required` to run on fewer)"
                } else {
                    ""
                }
            )));
        }
        Ok(up)
    }

    /// The host's copy of the release in `release_dir` (the server's), sent if it lacks it.
    async fn ensure_release(
        &self,
        client: &AgentClient,
        release_dir: &Path,
    ) -> Result<PathBuf, String> {
        let digest = release_digest(release_dir)?;
        let hex = digest.hex();
        let has: Option<PathBuf> = client
            .call(
                "/v1/has_release",
                &HasRelease {
                    digest: digest.clone(),
                },
            )
            .await?;
        if let Some(dir) = has {
            return Ok(dir);
        }
        let archive = self.data_dir.join("artifacts").join(format!("{hex}.tar"));
        let bytes = tokio::fs::read(&archive)
            .await
            .map_err(|e| format!("reading {}: {e}", archive.display()))?;
        client
            .send(
                "/v1/release",
                "application/octet-stream",
                &[(crate::serve::DIGEST_HEADER, digest.to_string())],
                Bytes::from(bytes),
            )
            .await
    }

    /// Starts the instance of `req` (server-side paths) on `host`, with its paths moved to the
    /// host's data dir.
    async fn start_on(&self, host: &str, req: StartInstance) -> Result<InstanceStarted, String> {
        let client = self.clients.get(host).ok_or("not a host of this config")?;
        let hello = client.hello().await?;
        let there = hello.data_dir;
        let mut req = req;
        match req.image.as_mut() {
            Some(run) => {
                let digest = release_digest(&req.release_dir)?;
                let image = self.ensure_image(host, client, &digest).await?;
                image::on_host_paths(run, &image, &self.data_dir, &there);
                req.release_dir = image.release_dir;
            }
            None => req.release_dir = self.ensure_release(client, &req.release_dir).await?,
        }
        req.log_path = rebase(&req.log_path, &self.data_dir, &there);
        if let Some(s) = req.sandbox.as_mut() {
            s.data_dir = rebase(&s.data_dir, &self.data_dir, &there);
        }
        for v in req.template_vars.values_mut().chain(req.env.values_mut()) {
            *v = rebase_text(v, &self.data_dir, &there);
        }
        client.start(req).await.map_err(|e| e.to_string())
    }

    async fn stop_on(&self, hosts: &[String], id: &InstanceId, grace: Duration) {
        let stops = hosts.iter().filter_map(|h| {
            let client = self.clients.get(h)?;
            let stop = StopInstance {
                instance_id: id.clone(),
                pid: None,
                grace,
            };
            Some(async move {
                if let Err(e) = client.stop(stop).await {
                    tracing::warn!("host {h}: could not stop {id}: {e}");
                }
            })
        });
        futures_util::future::join_all(stops).await;
    }

    /// The instance's address on each of `hosts` where it runs healthy, or the first host where
    /// it does not.
    async fn targets_on(
        &self,
        hosts: &[String],
        to: &RouteTarget,
    ) -> Result<Vec<(String, RouteTarget)>, DriverError> {
        let mut out = Vec::new();
        for h in hosts {
            out.push((h.clone(), self.target_on(h, to).await?));
        }
        Ok(out)
    }

    /// The instance's address on host `h`, if it runs healthy there.
    async fn target_on(&self, h: &str, to: &RouteTarget) -> Result<RouteTarget, DriverError> {
        let client = self
            .clients
            .get(h)
            .ok_or_else(|| on_host(h, "not a host of this config"))?;
        match client.status(&to.instance_id).await {
            Some(s) if s.healthy => Ok(RouteTarget {
                addr: SocketAddr::from(([127, 0, 0, 1], s.port)),
                ..to.clone()
            }),
            Some(_) => Err(on_host(h, format!("{} is not healthy", to.instance_id))),
            None => {
                // A host that connected after the start began: it is given the instance now,
                // so that it switches with the others.
                let req = lock(&self.started).get(&to.instance_id).cloned();
                let Some(req) = req.filter(|r| !r.lacks_secrets()) else {
                    return Err(on_host(h, format!("{} is not running", to.instance_id)));
                };
                let started = self.start_on(h, req).await.map_err(|e| on_host(h, e))?;
                Ok(RouteTarget {
                    addr: started.addr,
                    ..to.clone()
                })
            }
        }
    }

    /// The addresses an environment answers at: its hosts' addresses with its port, or its
    /// `listen` on the server's machine.
    pub fn endpoints(&self, env: &str, listen: SocketAddr) -> Vec<SocketAddr> {
        match self.placed(env) {
            None => vec![listen],
            Some(p) => p
                .hosts
                .iter()
                .filter(|h| self.hosts.is_connected(h))
                .filter_map(|h| self.hosts.peer(h))
                .map(|ip| SocketAddr::new(ip, listen.port()))
                .collect(),
        }
    }
}

#[async_trait::async_trait]
impl Driver for Placement {
    async fn start(&self, req: StartInstance) -> Result<InstanceStarted, DriverError> {
        let env = req.template_vars.get("ENV").cloned().unwrap_or_default();
        let Some(p) = self.placed(&env) else {
            return self.local.start(req).await;
        };
        let up = self.enough(&env, &p)?;
        lock(&self.started).insert(req.instance_id.clone(), req.clone());
        self.save();
        let mut first: Option<InstanceStarted> = None;
        let mut tried: Vec<String> = Vec::new();
        for batch in up.chunks(p.batch.max(1)) {
            tried.extend(batch.iter().cloned());
            let mut starts: futures_util::stream::FuturesUnordered<_> = batch
                .iter()
                .map(|h| {
                    let req = req.clone();
                    async move { (h.clone(), self.start_on(h, req).await) }
                })
                .collect();
            // The first failure stops the instance everywhere at once: the starts still
            // waiting for their health check end then, instead of running out their timeout.
            let mut failure = None;
            while let Some((host, result)) = futures_util::StreamExt::next(&mut starts).await {
                match result {
                    Ok(started) if first.is_none() => first = Some(started),
                    Ok(_) => {}
                    Err(e) if failure.is_none() => {
                        failure = Some((host, e));
                        lock(&self.started).remove(&req.instance_id);
                        self.save();
                        self.stop_on(&tried, &req.instance_id, STOP_GRACE).await;
                    }
                    Err(_) => {}
                }
            }
            drop(starts);
            if let Some((host, e)) = failure {
                // Stopped again now that every start has ended: one that became healthy just
                // as the stop arrived is gone too.
                self.stop_on(&tried, &req.instance_id, STOP_GRACE).await;
                return Err(DriverError::Agent(format!(
                    "on host {host}: {e}\nthe new instances were stopped on every host ({}); nothing was switched",
                    tried.join(", ")
                )));
            }
        }
        first.ok_or_else(|| DriverError::Agent(format!("{env} has no host to start on")))
    }

    async fn stop(&self, req: StopInstance) -> Result<(), DriverError> {
        let hosts: Vec<String> = match self.env_of_instance(&req.instance_id) {
            Some(env) => match self.placed(&env) {
                Some(p) => p.hosts.clone(),
                None => return self.local.stop(req).await,
            },
            None => {
                // Unknown here (a server restart since): wherever it may run.
                self.local.stop(req.clone()).await?;
                self.clients.keys().cloned().collect()
            }
        };
        let reachable: Vec<String> = hosts
            .into_iter()
            .filter(|h| self.hosts.is_connected(h))
            .collect();
        self.stop_on(&reachable, &req.instance_id, req.grace).await;
        if lock(&self.started).remove(&req.instance_id).is_some() {
            self.save();
        }
        Ok(())
    }

    async fn status(&self, instance_id: &InstanceId) -> Option<InstanceStatus> {
        let hosts: Vec<String> = match self.env_of_instance(instance_id) {
            Some(env) => match self.placed(&env) {
                Some(p) => p.hosts.clone(),
                None => return self.local.status(instance_id).await,
            },
            None => {
                if let Some(s) = self.local.status(instance_id).await {
                    return Some(s);
                }
                self.clients.keys().cloned().collect()
            }
        };
        let mut each = Vec::new();
        let mut unreachable = Vec::new();
        for h in &hosts {
            if !self.hosts.is_connected(h) {
                unreachable.push(h.clone());
                continue;
            }
            if let Some(s) = self.clients[h].status(instance_id).await {
                each.push((h.clone(), s));
            }
        }
        let (_, first) = each.first()?.clone();
        // Healthy wherever it is seen: fewer hosts than `hosts_required` refuse a start or a
        // switch, but they do not make what still serves on the others unhealthy (a restarted
        // server would stop it there).
        Some(InstanceStatus {
            healthy: each.iter().all(|(_, s)| s.healthy),
            restarts: each.iter().map(|(_, s)| s.restarts).sum(),
            last_crash: each
                .iter()
                .find_map(|(h, s)| s.last_crash.as_ref().map(|c| format!("{c} on host {h}"))),
            hosts: each
                .iter()
                .map(|(h, s)| HostInstance {
                    host: h.clone(),
                    pid: s.pid,
                    port: s.port,
                    healthy: s.healthy,
                    restarts: s.restarts,
                })
                .collect(),
            unreachable,
            ..first
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<DriverEvent> {
        self.events.subscribe()
    }

    async fn stop_all(&self, grace: Duration) {
        // Hosts keep serving: they outlive the server, as the local agent does.
        self.local.stop_all(grace).await;
    }

    async fn bind_router(&self, spec: RouterSpec) -> Result<(), DriverError> {
        let Some(p) = self.placed(&spec.env) else {
            return self.local.bind_router(spec).await;
        };
        lock(&self.routers).insert(spec.env.clone(), spec.clone());
        let (up, down) = self.reachable(&p);
        for h in &down {
            tracing::warn!(
                "host {h} is not connected: {}'s router there is bound when it connects",
                spec.env
            );
        }
        for h in &up {
            self.clients[h]
                .bind_router(spec.clone())
                .await
                .map_err(|e| on_host(h, e))?;
        }
        Ok(())
    }

    async fn switch(
        &self,
        env: &str,
        app: &str,
        to: Option<RouteTarget>,
    ) -> Result<Option<RouteTarget>, DriverError> {
        let Some(p) = self.placed(env) else {
            return self.local.switch(env, app, to).await;
        };
        let up = match self.enough(env, &p) {
            Ok(up) => up,
            // Pointing the hosts that answer at what the environment serves already (a
            // restarted server restoring its live release) is no promotion: it is never
            // refused for want of hosts, and the others get it when they connect again.
            Err(_) if self.serves(env, app, to.as_ref()) => self.reachable(&p).0,
            Err(e) => return Err(e),
        };
        let targets: Vec<(String, Option<RouteTarget>)> = match &to {
            Some(t) => self
                .targets_on(&up, t)
                .await?
                .into_iter()
                .map(|(h, t)| (h, Some(t)))
                .collect(),
            None => up.iter().map(|h| (h.clone(), None)).collect(),
        };
        let mut done: Vec<(String, Option<RouteTarget>)> = Vec::new();
        let mut previous = None;
        for (h, t) in targets {
            match self.clients[&h].switch(env, app, t).await {
                Ok(before) => {
                    if done.is_empty() {
                        previous = before.clone();
                    }
                    done.push((h, before));
                }
                Err(e) => {
                    for (back, before) in done {
                        let _ = self.clients[&back].switch(env, app, before).await;
                    }
                    return Err(on_host(
                        &h,
                        format!("{e}; the hosts switched before it were switched back"),
                    ));
                }
            }
        }
        {
            let mut served = lock(&self.served);
            let apps = served.entry(env.to_owned()).or_default();
            match &to {
                Some(t) => {
                    let start = lock(&self.started).get(&t.instance_id).cloned();
                    match start {
                        Some(start) => {
                            apps.insert(
                                app.to_owned(),
                                Served {
                                    target: t.clone(),
                                    start,
                                },
                            );
                        }
                        // Adopted after a server restart: what was kept for it still holds.
                        None => {
                            if apps
                                .get(app)
                                .is_some_and(|s| s.target.instance_id != t.instance_id)
                            {
                                tracing::warn!(
                                    "{env}: no start request is known for {}; a returning host gets the last one kept",
                                    t.instance_id
                                );
                            }
                        }
                    }
                }
                None => {
                    apps.remove(app);
                }
            }
        }
        self.save();
        Ok(previous)
    }

    async fn routed(&self, env: &str, app: &str) -> Option<RouteTarget> {
        let Some(p) = self.placed(env) else {
            return self.local.routed(env, app).await;
        };
        for h in self.reachable(&p).0 {
            if let Some(r) = self.clients[&h].routed(env, app).await {
                return Some(r);
            }
        }
        None
    }

    async fn set_canary(
        &self,
        env: &str,
        app: &str,
        canary: Option<CanaryRoute>,
    ) -> Result<(), DriverError> {
        match self.placed(env) {
            None => self.local.set_canary(env, app, canary).await,
            Some(p) => self.set_canary_on_hosts(&p, env, app, canary).await,
        }
    }

    async fn canary_figures(&self, env: &str, app: &str) -> Option<CanaryFigures> {
        match self.placed(env) {
            None => self.local.canary_figures(env, app).await,
            Some(p) => self.canary_figures_of_hosts(&p, env, app).await,
        }
    }

    async fn set_starting(&self, env: &str, app: &str, label: &str) {
        let Some(p) = self.placed(env) else {
            return self.local.set_starting(env, app, label).await;
        };
        for h in self.reachable(&p).0 {
            self.clients[&h].set_starting(env, app, label).await;
        }
    }

    async fn drain(&self, instance: &InstanceId, grace: Duration) -> bool {
        let Some(p) = self.env_of_instance(instance).and_then(|e| self.placed(&e)) else {
            return self.local.drain(instance, grace).await;
        };
        let drains = self
            .reachable(&p)
            .0
            .into_iter()
            .map(|h| async move { self.clients[&h].drain(instance, grace).await });
        futures_util::future::join_all(drains)
            .await
            .into_iter()
            .all(|d| d)
    }

    async fn router_metrics(&self, env: &str) -> Vec<UpstreamMetrics> {
        let Some(p) = self.placed(env) else {
            return self.local.router_metrics(env).await;
        };
        let mut merged: Vec<UpstreamMetrics> = Vec::new();
        for h in self.reachable(&p).0 {
            for m in self.clients[&h].router_metrics(env).await {
                match merged
                    .iter_mut()
                    .find(|x| x.app == m.app && x.label == m.label)
                {
                    Some(x) => x.absorb(&m),
                    None => merged.push(m),
                }
            }
        }
        merged
    }

    async fn close_routers(&self) -> Vec<(String, Vec<InstanceId>)> {
        self.local.close_routers().await
    }

    async fn retain_routers(&self, envs: &[String]) -> Vec<String> {
        let local: Vec<String> = envs
            .iter()
            .filter(|e| self.placed(e).is_none())
            .cloned()
            .collect();
        let mut closed = self.local.retain_routers(&local).await;
        for (h, client) in &self.clients {
            if !self.hosts.is_connected(h) {
                continue;
            }
            let mine: Vec<String> = self
                .envs
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .filter(|(e, p)| p.hosts.contains(h) && envs.contains(e))
                .map(|(e, _)| e.clone())
                .collect();
            closed.extend(
                client
                    .retain_routers(&mine)
                    .await
                    .into_iter()
                    .map(|e| format!("{e} (host {h})")),
            );
        }
        closed
    }

    async fn remove_gone_users(&self, keep: &[String]) -> Vec<String> {
        let mut removed = self.local.remove_gone_users(keep).await;
        for (h, client) in &self.clients {
            if self.hosts.is_connected(h) {
                let there = client.remove_gone_users(keep).await;
                removed.extend(there.into_iter().map(|u| format!("{u} (host {h})")));
            }
        }
        removed
    }

    fn endpoints(&self, env: &str, listen: SocketAddr) -> Vec<SocketAddr> {
        Placement::endpoints(self, env, listen)
    }

    fn place(&self, env: &str, hosts: &[String], batch: usize, required: usize, port: u16) {
        let known: Vec<String> = hosts
            .iter()
            .filter(|h| self.clients.contains_key(*h))
            .cloned()
            .collect();
        if known.len() < hosts.len() {
            tracing::warn!(
                "{env} names hosts no environment of the config uses; it runs on those that are: {known:?}"
            );
        }
        let placed = EnvPlacement {
            required: required.min(known.len()),
            hosts: known,
            batch,
            port,
            front: None,
        };
        self.envs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(env.to_owned(), placed);
    }

    fn unplace(&self, env: &str) {
        self.envs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(env);
        lock(&self.served).remove(env);
        lock(&self.routers).remove(env);
        lock(&self.canaries).retain(|(e, _), _| e != env);
        self.save();
    }

    async fn read_log(
        &self,
        instance: &InstanceId,
        host: Option<&str>,
        offset: Option<u64>,
        lines: usize,
    ) -> Option<Result<(String, u64), String>> {
        let p = self.placed(&self.env_of_instance(instance)?)?;
        let candidates: Vec<String> = match host {
            Some(h) if p.hosts.iter().any(|x| x == h) => vec![h.to_owned()],
            Some(h) => {
                return Some(Err(format!(
                    "host {h} is not one of this environment's hosts ({})",
                    p.hosts.join(", ")
                )));
            }
            None => self.reachable(&p).0,
        };
        let mut last = format!("none of the hosts {} answers", p.hosts.join(", "));
        for h in candidates {
            let asked = LogFrom {
                instance_id: instance.clone(),
                offset,
                lines,
            };
            match self.clients[&h]
                .call::<_, LogChunk>("/v1/logs", &asked)
                .await
            {
                Ok(chunk) => return Some(Ok((chunk.text, chunk.next))),
                Err(e) => last = format!("on host {h}: {e}"),
            }
        }
        Some(Err(last))
    }
}
