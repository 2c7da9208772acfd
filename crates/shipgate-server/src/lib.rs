//! The HTTP face of shipgate: the JSON API under `/api/v1/`, bearer-token auth, live events
//! over server-sent events, `/healthz`, and the dashboard (`/`, signed in by cookie). It translates requests into engine calls and
//! engine answers into JSON or `application/problem+json`; it must not decide anything itself.
#![forbid(unsafe_code)]

mod api;
mod auth;
mod backup;
mod chaos;
mod data_dir;
mod dora;
mod extract;
mod flags;
mod host_names;
mod lead;
mod load;
mod notify;
mod oidc;
mod on_demand;
mod openapi;
mod problem;
pub mod reload;
mod secrets;
mod session;
mod toxiproxy;
mod ui;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use shipgate_core::Config;
use shipgate_core::config::DataPlane;
use shipgate_engine::Engine;
use shipgate_store::{SqlStore, Store};

pub use auth::{ADMIN_TOKEN_FILE, generate_token, hash_token};
pub use data_dir::{DataDirLock, LOCK_FILE};

/// Shared by every handler.
#[derive(Clone)]
struct AppState {
    engine: Arc<Engine>,
    /// Turns true when the server begins to stop; endless responses (the event stream) end then,
    /// or the graceful shutdown would wait on them forever.
    stopping: tokio::sync::watch::Receiver<bool>,
    /// The identity provider of `[server.oidc]`, if any.
    oidc: Option<Arc<oidc::Provider>>,
    /// The server's own machine, as the agent supervisor last saw it.
    local_host: Arc<std::sync::Mutex<shipgate_api::status::HostView>>,
    /// The agents of other hosts connected now.
    hosts: Arc<shipgate_agent::Hosts>,
    /// What the config places on them.
    placement: Arc<shipgate_agent::Placement>,
    /// The CA that issues their certificates.
    ca: Arc<shipgate_agent::tls::Ca>,
    /// Reloads the config file.
    reloader: Arc<reload::Reloader>,
    /// The engine's lease as last renewed by this server (`None` once lost).
    leader: tokio::sync::watch::Receiver<Option<shipgate_store::Lease>>,
}

/// Which agents may connect: those whose certificate fingerprint a joined host pinned.
struct StoreCheck(Arc<dyn Store>);

#[async_trait::async_trait]
impl shipgate_agent::link::HostCheck for StoreCheck {
    async fn host_of(&self, fingerprint: &str) -> Option<String> {
        match self.0.host_by_fingerprint(fingerprint).await {
            Ok(h) => h.map(|h| h.name),
            Err(e) => {
                tracing::error!("could not look up an agent's certificate: {e}");
                None
            }
        }
    }
}

/// Where each environment with `hosts` runs, as the placement driver takes it.
fn placements(config: &Config) -> std::collections::HashMap<String, shipgate_agent::EnvPlacement> {
    config
        .environments
        .iter()
        .filter(|e| !e.hosts.is_empty())
        .map(|e| {
            (
                e.name.to_string(),
                shipgate_agent::EnvPlacement {
                    hosts: e.hosts.clone(),
                    batch: e.batch.size(e.hosts.len()),
                    required: e.hosts_required,
                    port: e.listen.port(),
                    front: e.front,
                },
            )
        })
        .collect()
}

/// A started server: its API address and a way to stop it.
pub struct Server {
    /// The address the API listens on (useful when the config asked for port 0).
    pub addr: std::net::SocketAddr,
    /// The engine (for the demo and benchmarks running in the same process).
    pub engine: Arc<Engine>,
    task: tokio::task::JoinHandle<anyhow::Result<Ended>>,
    reloader: Arc<reload::Reloader>,
}

/// The server was asked to stop while it stood by for another server's lease: it never ran
/// the engine, so there is nothing to stop.
#[derive(Debug, thiserror::Error)]
#[error("stopped while standing by (another server leads)")]
pub struct StoppedStandingBy;

/// How a server ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Its shutdown future resolved.
    Stopped,
    /// A reload was decided: start again on the config file (the data plane kept serving).
    Reload,
}

impl Server {
    /// Opens the store, ensures the admin token, starts the engine (routers, reconcile) and the
    /// API. Returns once everything listens; the server runs until `shutdown` resolves.
    pub async fn start(
        config: Arc<Config>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Server> {
        Self::start_reloadable(config, None, shutdown).await
    }

    /// [`Server::start`] for a config read from a file by `loader`, watched at `path`: it can
    /// be reloaded ([`Server::reload`], `POST /api/v1/reload`, or the file changing).
    pub async fn start_from_file(
        config: Arc<Config>,
        loader: reload::Loader,
        path: std::path::PathBuf,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Server> {
        let watch = config.server.watch_config;
        let server = Self::start_reloadable(config, Some(loader), shutdown).await?;
        if watch {
            server.reloader.watch(Arc::clone(&server.engine), path);
        }
        Ok(server)
    }

    /// Validates the config file and applies what changed (see [`reload`]).
    pub async fn reload(&self) -> Result<reload::Reload, reload::NotReloaded> {
        self.reloader.reload(&self.engine).await
    }

    /// A handle that reloads this server from another task (a signal handler).
    pub fn reload_handle(&self) -> reload::Handle {
        reload::Handle {
            reloader: Arc::clone(&self.reloader),
            engine: Arc::clone(&self.engine),
        }
    }

    async fn start_reloadable(
        config: Arc<Config>,
        loader: Option<reload::Loader>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Server> {
        let reloader = reload::Reloader::new(loader);
        let data_dir = config.server.data_dir.clone();
        let lock = data_dir::DataDirLock::take(&data_dir)?;
        let store: Arc<dyn Store> = Arc::new(
            SqlStore::open_at(&config.server.database)
                .await
                .with_context(|| format!("opening the database {}", config.server.database))?,
        );
        auth::ensure_admin_token(store.as_ref(), &data_dir).await?;
        let listener = tokio::net::TcpListener::bind(config.server.listen).await.with_context(|| {
            format!("cannot listen on {} for the API (is another shipgate running? change `listen` in [server])", config.server.listen)
        })?;
        let addr = listener.local_addr().context("reading the API address")?;
        // The address answers from now on: as a standby, then a starting server, then the API.
        let switch = lead::Switch::starting(lead::starting_routes(None));
        let (serve_stop, mut serve_stopping) = tokio::sync::watch::channel(false);
        let serving = Owned(Some(tokio::spawn(
            axum::serve(listener, switch.app())
                .with_graceful_shutdown(async move {
                    let _ = serve_stopping.wait_for(|stop| *stop).await;
                })
                .into_future(),
        )));
        // Only the server holding the lease runs the engine; until then this one stands by.
        let length = config.server.lease.as_std();
        let address = format!("http://{addr}");
        let shutdown = futures_util::FutureExt::shared(Box::pin(shutdown));
        let me = lead::server_name(&data_dir);
        let lease = tokio::select! {
            lease = lead::take(&store, &me, &address, &switch, length) => lease?,
            () = shutdown.clone() => return Err(StoppedStandingBy.into()),
        };
        switch.set_starting(lead::starting_routes(None));
        let (leader, renewing) = lead::keep(Arc::clone(&store), lease.clone(), length);
        let renewing = Owned(Some(renewing));
        let unfenced = Arc::clone(&store);
        let store = store.fenced(lease.clone());
        store
            .append_event(shipgate_store::NewEvent {
                actor: lease.holder.clone(),
                kind: shipgate_core::EventKind::ServerLeading,
                message: format!("{} at {} took the engine's lease (epoch {})", lease.holder, lease.address, lease.epoch),
                data: serde_json::json!({ "server": lease.holder, "address": lease.address, "epoch": lease.epoch }),
                ..shipgate_store::NewEvent::about_nothing()
            })
            .await?;
        // The secrets key and the client secret stay the server's own.
        shipgate_deploy::hide_from_children(
            config.server.secrets_key_env.iter().cloned().chain(
                config
                    .server
                    .oidc
                    .iter()
                    .filter_map(|o| o.client_secret_env.clone()),
            ),
        );
        let data_plane = config.server.data_plane;
        let (driver, agent): (Arc<dyn shipgate_deploy::Driver>, _) = match data_plane {
            DataPlane::Server => (Arc::new(shipgate_engine::ProcessDriver::new()), None),
            DataPlane::Agent => {
                let exe = shipgate_agent::local::agent_exe().map_err(anyhow::Error::msg)?;
                let client = shipgate_agent::local::connect_or_start(&exe, &data_dir)
                    .await
                    .map_err(anyhow::Error::msg)?;
                (
                    client.clone() as Arc<dyn shipgate_deploy::Driver>,
                    Some((client, exe)),
                )
            }
        };
        let ca = Arc::new(shared_ca(unfenced.as_ref(), &data_dir).await?);
        let hosts = shipgate_agent::Hosts::listen(
            agent_listen(&config, &data_dir),
            ca.server_config().map_err(anyhow::Error::msg)?,
            Arc::new(StoreCheck(Arc::clone(&store))),
        )
        .await
        .map_err(anyhow::Error::msg)?;
        hosts.set_epoch(lease.epoch);
        tracing::info!("agents of other hosts dial port {}", hosts.port);
        switch.set_starting(lead::starting_routes(Some(hosts.port)));
        let kept = shipgate_agent::write_private(
            &data_dir.join(AGENT_PORT_FILE),
            hosts.port.to_string().as_bytes(),
        );
        if let Err(e) = kept {
            tracing::warn!("could not keep the agent port in {AGENT_PORT_FILE}: {e}");
        }
        let placement = shipgate_agent::Placement::new(
            driver,
            Arc::clone(&hosts),
            placements(&config),
            &data_dir,
            shared_placement(&store).await?,
        );
        wait_for_hosts(&hosts, &placement, store.as_ref()).await;
        let engine = Engine::start(
            config,
            store,
            Arc::clone(&placement) as Arc<dyn shipgate_deploy::Driver>,
            Arc::new(shipgate_engine::SystemClock),
        )
        .await?;
        let toxiproxy = Owned(toxiproxy::serve(&engine).await?);
        let named: Vec<Owned<()>> = host_names::serve(&engine)
            .await?
            .into_iter()
            .map(|t| Owned(Some(t)))
            .collect();
        let local_host = Arc::new(std::sync::Mutex::new(shipgate_api::status::HostView {
            name: "local".into(),
            data_plane: match data_plane {
                DataPlane::Server => "server",
                DataPlane::Agent => "agent",
            }
            .into(),
            connected: true,
            since: jiff::Timestamp::now(),
            pid: Some(std::process::id()),
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            instances: 0,
            address: None,
        }));
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let oidc = match engine.config().server.oidc.clone() {
            Some(config) => Some(Arc::new(
                oidc::Provider::new(config, Arc::clone(engine.store()))
                    .context("building the HTTP client for the identity provider")?,
            )),
            None => None,
        };
        let app = api::routes(AppState {
            engine: Arc::clone(&engine),
            stopping,
            oidc,
            local_host: Arc::clone(&local_host),
            hosts,
            placement,
            ca,
            reloader: Arc::clone(&reloader),
            leader: leader.clone(),
        });
        let supervisor = agent.map(|(client, exe)| {
            tokio::spawn(supervise_agent(
                client,
                exe,
                data_dir.clone(),
                Arc::clone(&engine),
                Arc::clone(&local_host),
            ))
        });
        let engine_to_stop = Arc::clone(&engine);
        let reloading = Arc::clone(&reloader);
        let reload_flag = Arc::clone(&reloader);
        let mut lost = leader.clone();
        let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let signal = async move {
                tokio::select! {
                    () = shutdown => {}
                    () = reloading.decided() => {}
                    _ = lost.wait_for(Option::is_none) => { let _ = lost_tx.send(()); }
                }
                let _ = stop.send(true);
            };
            switch.set(app);
            signal.await;
            let _ = serve_stop.send(true);
            serving.ended().await?.context("serving the API")?;
            if let Some(supervisor) = supervisor {
                supervisor.abort();
            }
            let mut lost_rx = lost_rx;
            if lost_rx.try_recv().is_ok() {
                // Fail-stop: the database refuses this server's writes already; what runs keeps
                // running (an agent's instances) or is stopped with the process.
                drop(lock);
                anyhow::bail!(
                    "this server lost the engine's lease and stopped; start it again to stand by (another server leads, see its /healthz)"
                );
            }
            let ended = if reload_flag.asked() {
                tracing::info!(
                    "reloading: starting again on the new config; the agent keeps serving"
                );
                Ended::Reload
            } else {
                match data_plane {
                    DataPlane::Server => engine_to_stop.shutdown().await,
                    // The agent keeps serving: the next server takes it over.
                    DataPlane::Agent => tracing::info!(
                        "the local agent keeps serving the environments; stop it with SIGTERM (its pid is in agent.pid)"
                    ),
                }
                Ended::Stopped
            };
            drop(named);
            drop(toxiproxy);
            // No renewal after this: a lease handed back stays handed back.
            drop(renewing);
            if ended == Ended::Stopped
                && let Err(e) = unfenced.release_lease(&lease).await
            {
                tracing::warn!("could not hand the engine's lease back: {e}");
            }
            // Held until every instance has stopped: only then may another server take over.
            drop(lock);
            Ok(ended)
        });
        tracing::info!("shipgate API listening on http://{addr}");
        Ok(Server {
            addr,
            engine,
            task,
            reloader,
        })
    }

    /// Waits until the server has stopped (after its shutdown future resolved, and every
    /// instance has been stopped, or after a reload was decided).
    pub async fn wait(self) -> anyhow::Result<Ended> {
        self.task.await.context("the server task panicked")?
    }
}

/// Where the port agents dial is kept, so that a restarted server listens on the same one
/// and its agents find it again without asking the API.
const AGENT_PORT_FILE: &str = "agent.port";

/// A task of the server's that must not outlive it: aborted when dropped (a start that fails
/// half-way, or a server that stopped) unless waited for with [`Owned::ended`].
struct Owned<T>(Option<tokio::task::JoinHandle<T>>);

impl<T> Owned<T> {
    async fn ended(mut self) -> anyhow::Result<T> {
        match self.0.take() {
            Some(task) => task.await.context("a task of the server panicked"),
            None => anyhow::bail!("the task was already waited for"),
        }
    }
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Where the CA agents trust is kept for every server of a shared database.
pub const AGENT_CA: &str = "agent-ca";

/// The CA of `key` and `cert` (PEM) as it is kept under [`AGENT_CA`].
pub fn ca_to_share(key: &str, cert: &str) -> String {
    serde_json::json!({ "key": key, "cert": cert }).to_string()
}

/// On a database several servers share, what the hosts serve is kept there too, so the next
/// leader reconciles hosts against it rather than against nothing (which would stop all).
/// Snapshots are written in order by one task, through the fenced store: a deposed leader's
/// are refused.
async fn shared_placement(
    store: &Arc<dyn Store>,
) -> anyhow::Result<Option<shipgate_agent::SharedKeep>> {
    const NAME: &str = "placement";
    if !store.is_shared() {
        return Ok(None);
    }
    let kept = store.shared(NAME).await?.map(String::into_bytes);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let writer = Arc::clone(store);
    tokio::spawn(async move {
        while let Some(mut bytes) = rx.recv().await {
            while let Ok(newer) = rx.try_recv() {
                bytes = newer;
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Err(e) = writer.put_shared(NAME, &text).await {
                tracing::warn!("could not keep what the hosts serve in the database: {e}");
            }
        }
    });
    Ok(Some(shipgate_agent::SharedKeep {
        kept,
        save: Box::new(move |bytes| {
            let _ = tx.send(bytes);
        }),
    }))
}

/// The CA agents trust: the data dir's, and on a database that several servers share, the
/// one the first of them kept there, so an agent may dial any of them.
async fn shared_ca(
    store: &dyn Store,
    data_dir: &std::path::Path,
) -> anyhow::Result<shipgate_agent::tls::Ca> {
    use shipgate_agent::tls::Ca;
    let ca = Ca::load_or_create(data_dir).map_err(anyhow::Error::msg)?;
    if !store.is_shared() {
        return Ok(ca);
    }
    let (key, cert) = ca.to_pem();
    let kept: serde_json::Value = serde_json::from_str(
        &store
            .share_once(AGENT_CA, &ca_to_share(&key, &cert))
            .await?,
    )
    .context("reading the CA the servers share")?;
    match (kept["key"].as_str(), kept["cert"].as_str()) {
        (Some(k), Some(c)) if c != cert => Ca::adopt(data_dir, k, c).map_err(anyhow::Error::msg),
        (Some(_), Some(_)) => Ok(ca),
        _ => anyhow::bail!("the CA the servers share is damaged in the database"),
    }
}

/// `agent_listen`; with port 0 (the default), the port the last start used, if there was one.
fn agent_listen(config: &Config, data_dir: &std::path::Path) -> std::net::SocketAddr {
    let mut addr = config.server.agent_listen;
    if addr.port() == 0
        && let Some(port) = std::fs::read_to_string(data_dir.join(AGENT_PORT_FILE))
            .ok()
            .and_then(|p| p.trim().parse().ok())
        && std::net::TcpListener::bind((addr.ip(), port)).is_ok()
    {
        addr.set_port(port);
    }
    addr
}

/// How long a starting server waits for the agents of its hosts to dial in again before it
/// reconciles what they run (an agent dials again within a second or two).
const HOSTS_RETURN: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits (at most [`HOSTS_RETURN`]) until every joined host the config places environments on
/// is connected, so that what they still run is adopted rather than started again.
async fn wait_for_hosts(
    hosts: &shipgate_agent::Hosts,
    placement: &shipgate_agent::Placement,
    store: &dyn Store,
) {
    let joined: Vec<String> = match store.hosts().await {
        Ok(all) => all
            .into_iter()
            .filter(|h| h.joined_at.is_some() && h.removed_at.is_none())
            .map(|h| h.name)
            .collect(),
        Err(e) => {
            tracing::error!("could not read the hosts: {e}");
            return;
        }
    };
    let expected: Vec<String> = placement
        .host_names()
        .into_iter()
        .filter(|h| joined.contains(h))
        .collect();
    let deadline = tokio::time::Instant::now() + HOSTS_RETURN;
    loop {
        let missing: Vec<&String> = expected.iter().filter(|h| !hosts.is_connected(h)).collect();
        if missing.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                "hosts not connected after {HOSTS_RETURN:?}: {missing:?}; they are reconciled when they connect"
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// How often the server checks that its local agent answers.
const AGENT_CHECK: std::time::Duration = std::time::Duration::from_millis(200);

/// Keeps the local agent running: one that stops answering is started again, and a new agent
/// (whatever ended the last one) gets every live release back from the engine.
async fn supervise_agent(
    client: Arc<shipgate_agent::AgentClient>,
    exe: std::path::PathBuf,
    data_dir: std::path::PathBuf,
    engine: Arc<Engine>,
    local_host: Arc<std::sync::Mutex<shipgate_api::status::HostView>>,
) {
    let mut seen = client.hello().await;
    let mut known = seen.as_ref().ok().map(|h| h.pid);
    // A handle to each of the agent's routers' listening sockets: when the agent dies, they
    // stay open (connections wait in their queues) and go to the agent started next.
    let mut kept: Vec<(std::net::SocketAddr, std::net::TcpListener)> = Vec::new();
    loop {
        if let Ok(h) = &seen {
            let mut now: Vec<std::net::SocketAddr> = h.listeners.clone();
            let mut held: Vec<std::net::SocketAddr> = kept.iter().map(|(a, _)| *a).collect();
            now.sort();
            held.sort();
            if now != held {
                match shipgate_agent::local::listeners_of(&data_dir) {
                    Ok(listeners) => kept = listeners,
                    Err(e) => tracing::warn!("could not keep the agent's listening sockets: {e}"),
                }
            }
        }
        {
            let mut host = local_host.lock().unwrap_or_else(|e| e.into_inner());
            if host.connected != seen.is_ok() {
                host.since = jiff::Timestamp::now();
            }
            host.connected = seen.is_ok();
            if let Ok(h) = &seen {
                host.pid = Some(h.pid);
                host.version = Some(h.version.clone());
                host.instances = h.instances.len();
            }
        }
        tokio::time::sleep(AGENT_CHECK).await;
        seen = client.hello().await;
        match &seen {
            Ok(h) if Some(h.pid) == known => {}
            Ok(h) => {
                tracing::warn!(
                    "the local agent is a new one (pid {}, was {:?}): restoring what was live",
                    h.pid,
                    known
                );
                known = Some(h.pid);
                if let Err(e) = engine.data_plane_restarted().await {
                    tracing::error!("could not restore what was live on the new agent: {e}");
                }
            }
            Err(e) => {
                tracing::error!("the local agent does not answer ({e}); starting it again");
                let started =
                    shipgate_agent::local::connect_or_start_with(&exe, &data_dir, &kept).await;
                if let Err(e) = started {
                    tracing::error!("could not start the local agent: {e}");
                }
            }
        }
    }
}
