//! The conductor of shipgate: takes a promotion from `pending` to a verified live release (or
//! back to what was live before), runs verification, rolls back, records every step, and after
//! a restart brings every environment back to its recorded live release.
//!
//! It decides with the rules of `shipgate-core`, records with `shipgate-store`, and acts through
//! a `shipgate-deploy` driver and the `shipgate-proxy` routers. It must not speak HTTP to users
//! (that is `shipgate-server`) nor hold rules of its own about which release may enter where.
#![forbid(unsafe_code)]

mod alerts;
mod backup;
mod canary;
pub mod chaos;
pub mod clock;
mod data;
mod drift;
mod error;
pub mod experiment;
pub mod flags;
pub mod flow;
mod gates;
pub mod image;
mod isolation;
pub mod load;
mod migrate;
pub mod notify;
pub mod on_demand;
mod parity;
mod reconcile;
mod report;
mod retention;
pub mod secrets;
mod signoff;
mod standby;
mod stop;
mod traffic;
mod verify;
mod watch;

pub use clock::{Clock, ManualClock, SystemClock};
pub use data::{DataMessage, MASK_KEY_FILE};
pub use drift::{DriftReport, HEAL_GATE};
pub use error::EngineError;
pub use parity::Diff;
pub use report::{
    AppStatus, EnvironmentStatus, HistoryEntry, InstanceView, PromotionView, StandbyView, WaitView,
};
pub use shipgate_deploy::tail_lines;
pub use traffic::{SAMPLE_EVERY, TrafficSample};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shipgate_core::{AppName, Config, EnvName, InstanceId};
pub use shipgate_deploy::{Driver, ProcessDriver};
use shipgate_deploy::{DriverEvent, RouteTarget};

use shipgate_store::Store;
use shipgate_store::artifact::ArtifactStore;

/// The actor name of changes shipgate makes by itself.
pub const SYSTEM: &str = "shipgate";

/// How long a stopped instance may take to exit before it is killed, and how long requests in
/// flight on a replaced instance may take to finish.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);

/// The instance currently serving an app in an environment.
#[derive(Clone)]
struct LiveInstance {
    id: InstanceId,
    target: RouteTarget,
    log_path: PathBuf,
}

type Slot = (AppName, EnvName);

/// Runs promotions against one config, store, driver and set of routers.
pub struct Engine {
    /// What each environment's instance flag key is derived from (kept in the store).
    flag_secret: String,
    /// The config file's, with the on-demand environments there are now after the configured
    /// ones; replaced whole when one is created or deleted.
    config: std::sync::RwLock<Arc<Config>>,
    store: Arc<dyn Store>,
    artifacts: ArtifactStore,
    driver: Arc<dyn Driver>,
    clock: Arc<dyn Clock>,
    /// One lock per app and environment: at most one promotion deploys into a slot at a time.
    slots: Mutex<HashMap<Slot, Arc<tokio::sync::Mutex<()>>>>,
    live: Mutex<HashMap<Slot, LiveInstance>>,
    /// The release each slot had before its last promotion, still running for `standby`.
    standby: Mutex<HashMap<Slot, standby::Standby>>,
    /// Slots whose live instance crash-looped and is no longer restarted, with why.
    unhealthy: Mutex<HashMap<Slot, String>>,
    /// What each waiting promotion waits on (pending ones, and verifying ones held for a person),
    /// with how many decisions on it that was worked out from.
    waiting: Mutex<HashMap<shipgate_core::PromotionId, (Vec<shipgate_core::gate::Wait>, usize)>>,
    /// Held (shared) while a promotion or rollback checks its release and is recorded, and
    /// (alone) while retention decides and removes: a release is either recorded in a
    /// promotion before retention looks, or found pruned and refused with what to do.
    pruning: tokio::sync::RwLock<()>,
    /// The end a person asked of each promotion running here.
    stops: stop::Stops,
    /// Each watch under way, by promotion, as last looked at.
    watching: Mutex<HashMap<shipgate_core::PromotionId, shipgate_api::status::WatchView>>,
    /// The last hour of each slot's traffic, for charts.
    traffic: Mutex<HashMap<Slot, traffic::History>>,
    /// What the last drift scan found, for slots that drifted.
    drift: Mutex<HashMap<Slot, Vec<String>>>,
    /// The config changes the last drift scan found not deployed yet, by slot.
    undeployed: Mutex<HashMap<Slot, Vec<String>>>,
    /// Distinguishes instance ids across server starts (microseconds: two servers started in
    /// the same millisecond, as parallel tests do, still differ).
    boot: i64,
    /// True from the start until every recorded live release has been started again.
    restoring: std::sync::atomic::AtomicBool,
    /// How each environment's instances are confined.
    isolation: HashMap<EnvName, isolation::Confinement>,
    /// Held while an on-demand environment's quota and port are decided and recorded.
    on_demand_lock: tokio::sync::Mutex<()>,
    /// Held by a reaper pass.
    reaping: tokio::sync::Mutex<()>,
    /// Which on-demand environments are being made here, and their use.
    on_demand_tracking: Mutex<on_demand::Tracking>,
    /// Each environment's flags as last read, for OFREP; dropped on every flag change.
    flag_cache: Mutex<flags::Cache>,
    /// What the Toxiproxy API did to the dependency proxies.
    proxies: Mutex<chaos::Proxies>,
    /// Where each alert stands for each app.
    alerts: Mutex<alerts::Alerts>,
    /// Held by a look at the alerts.
    judging: tokio::sync::Mutex<()>,
    /// Each canary rollout under way.
    rollouts: Mutex<canary::Rollouts>,
    /// The key secrets are sealed with, and the age identity of `secrets_file`s.
    vault: Arc<secrets::Vault>,
}

/// Binds every environment's router (or updates it where the data plane already has it), and
/// closes those of environments the config no longer has.
async fn bind_routers(
    config: &Config,
    driver: &dyn Driver,
    store: &dyn Store,
    proxies: &chaos::Proxies,
) -> Result<(), EngineError> {
    let mut faults = chaos::active(store).await?;
    for env in &config.environments {
        let here = faults.remove(env.name.as_str()).unwrap_or_default();
        driver
            .bind_router(chaos::router_spec(config, env, here, proxies))
            .await
            .map_err(|e| EngineError::DataPlane(e.to_string()))?;
    }
    // An agent that outlived the server may still serve environments the config dropped.
    let envs: Vec<String> = config
        .environments
        .iter()
        .map(|e| e.name.to_string())
        .collect();
    for gone in driver.retain_routers(&envs).await {
        tracing::info!("environment {gone} is no longer in the config: its router is closed");
    }
    remove_gone_users(config, driver).await;
    Ok(())
}

/// Removes the Unix users of on-demand environments the config no longer has, on every machine.
async fn remove_gone_users(config: &Config, driver: &dyn Driver) -> Vec<String> {
    let keep: Vec<String> = config
        .environments
        .iter()
        .map(|e| isolation::env_user(&e.name))
        .collect();
    let removed = driver.remove_gone_users(&keep).await;
    for user in &removed {
        tracing::info!("the user {user} of an environment that is gone was removed");
    }
    removed
}

/// Locks a std mutex, taking over from a panicked holder: the maps it guards stay valid.
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Engine {
    /// Binds every environment's router, restores what was live and resumes or fails what was
    /// in flight when the server last stopped. The engine acts only through `driver` and reads
    /// time only from `clock`; whoever starts it chooses both.
    pub async fn start(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        driver: Arc<dyn Driver>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Engine>, EngineError> {
        let artifacts = ArtifactStore::open(&config.server.data_dir)?;
        let isolation = isolation::decide(
            &config,
            shipgate_deploy::sandbox::unavailable(),
            isolation::cgroups(),
            shipgate_deploy::network::unavailable().map_or(Ok(()), Err),
        )?;
        for said in isolation::warnings(&config, &isolation) {
            tracing::warn!("{said}");
        }
        // The on-demand environments there are, as the store has them, after the configured.
        let config = Arc::new(on_demand::with_rows(&config, &store.on_demand().await?));
        for env in &config.environments {
            on_demand::place(driver.as_ref(), env);
        }
        bind_routers(
            &config,
            driver.as_ref(),
            store.as_ref(),
            &chaos::Proxies::new(),
        )
        .await?;
        let flag_secret = flags::instance_secret(store.as_ref()).await?;
        let vault = Arc::new(secrets::Vault::open(&config, store.as_ref()).await?);
        let engine = Arc::new(Engine {
            vault,
            flag_secret,
            config: std::sync::RwLock::new(config),
            store,
            artifacts,
            driver,
            clock,
            slots: Mutex::default(),
            live: Mutex::default(),
            standby: Mutex::default(),
            unhealthy: Mutex::default(),
            waiting: Mutex::default(),
            stops: Mutex::default(),
            undeployed: Mutex::default(),
            watching: Mutex::default(),
            pruning: tokio::sync::RwLock::new(()),
            traffic: Mutex::default(),
            drift: Mutex::default(),
            boot: jiff::Timestamp::now().as_microsecond(),
            restoring: std::sync::atomic::AtomicBool::new(true),
            isolation,
            on_demand_lock: tokio::sync::Mutex::new(()),
            reaping: tokio::sync::Mutex::new(()),
            on_demand_tracking: Mutex::default(),
            flag_cache: Mutex::default(),
            proxies: Mutex::default(),
            alerts: Mutex::default(),
            judging: tokio::sync::Mutex::new(()),
            rollouts: Mutex::default(),
        });
        engine.record_driver_events();
        engine.sample_traffic();
        engine.scan_drift_periodically();
        engine.interrupted_backups().await?;
        for said in engine.import_secrets_files().await? {
            tracing::info!("{said}");
        }
        engine.reconcile().await?;
        // After reconciling: what runs (and its standbys) is known, so retention spares it.
        engine.collect_garbage_periodically();
        engine.reap_periodically();
        engine.forget_flags_on_change();
        engine.resume_faults().await?;
        engine.deliver_periodically();
        engine.judge_alerts_periodically();
        engine.end_toxics_periodically();
        engine.back_up_periodically();
        Ok(engine)
    }

    /// Whether the releases live when the server last stopped are still being started again.
    pub fn restoring(&self) -> bool {
        self.restoring.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The config this engine runs now, on-demand environments included.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Runs the config `change` makes of the current one from now on; changes go one at a
    /// time, so none is lost.
    fn change_config(&self, change: impl FnOnce(&Config) -> Config) {
        let mut config = self.config.write().unwrap_or_else(|e| e.into_inner());
        *config = Arc::new(change(&config));
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The artifact store (uploads are received through it).
    pub fn artifacts(&self) -> &ArtifactStore {
        &self.artifacts
    }

    /// Request metrics of every environment's router, in flow order.
    pub async fn request_metrics(&self) -> Vec<(String, Vec<shipgate_proxy::UpstreamMetrics>)> {
        let mut all = Vec::new();
        for e in &self.config().environments {
            all.push((
                e.name.to_string(),
                self.driver.router_metrics(e.name.as_str()).await,
            ));
        }
        all
    }

    /// Stops routing and every instance.
    pub async fn shutdown(&self) {
        // Stop accepting everywhere first, then let the requests in flight finish (each
        // environment within its `drain`) before their instances are stopped.
        let mut draining = Vec::new();
        for (env, routed) in self.driver.close_routers().await {
            let grace = self
                .config()
                .environments
                .iter()
                .find(|e| e.name.as_str() == env)
                .map_or(STOP_GRACE, |e| e.drain.as_std());
            let driver = &self.driver;
            draining.extend(
                routed
                    .into_iter()
                    .map(move |id| async move { driver.drain(&id, grace).await }),
            );
        }
        let drained = futures_util::future::join_all(draining).await;
        if drained.iter().any(|done| !done) {
            tracing::warn!("requests were still in flight when `drain` ran out; stopping anyway");
        }
        self.driver.stop_all(STOP_GRACE).await;
    }

    fn slot_lock(&self, slot: &Slot) -> Arc<tokio::sync::Mutex<()>> {
        locked(&self.slots).entry(slot.clone()).or_default().clone()
    }

    fn live_instance(&self, slot: &Slot) -> Option<LiveInstance> {
        locked(&self.live).get(slot).cloned()
    }

    fn set_live_instance(
        &self,
        slot: Slot,
        instance: Option<LiveInstance>,
    ) -> Option<LiveInstance> {
        // A new instance starts with a clean bill of health.
        locked(&self.unhealthy).remove(&slot);
        let mut live = locked(&self.live);
        match instance {
            Some(i) => live.insert(slot, i),
            None => live.remove(&slot),
        }
    }

    fn log_path(&self, slot: &Slot, instance_id: &InstanceId) -> PathBuf {
        self.config()
            .server
            .data_dir
            .join("logs")
            .join(slot.0.as_str())
            .join(slot.1.as_str())
            .join(format!("{instance_id}.log"))
    }

    /// Where `env` is reached (`${URL}`, `status`): its front, or the first of its hosts, or
    /// its `listen` on this machine.
    fn env_url(&self, env: &EnvName) -> String {
        let config = self.config();
        let Some(e) = config.environment(env) else {
            return String::new();
        };
        if let Some(front) = e.front {
            return format!("http://{front}");
        }
        let first = self
            .driver
            .endpoints(e.name.as_str(), e.listen)
            .into_iter()
            .next()
            .unwrap_or(e.listen);
        format!("http://{first}")
    }

    /// How long requests in flight on a replaced instance of `env` may take to finish.
    fn drain_grace(&self, env: &EnvName) -> Duration {
        self.config()
            .environment(env)
            .map_or(STOP_GRACE, |e| e.drain.as_std())
    }

    /// The slot whose live instance is `id`.
    fn slot_of_live(&self, id: &InstanceId) -> Option<Slot> {
        locked(&self.live)
            .iter()
            .find(|(_, i)| &i.id == id)
            .map(|(s, _)| s.clone())
    }

    /// Records the driver's crash and restart reports as events; a live instance that
    /// crash-loops marks its environment unhealthy.
    fn record_driver_events(self: &Arc<Self>) {
        let mut events = self.driver.subscribe();
        let engine = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                if let Err(e) = engine.record_driver_event(&event).await {
                    tracing::error!("could not record a driver event: {e}");
                }
            }
        });
    }

    async fn record_driver_event(&self, event: &DriverEvent) -> Result<(), EngineError> {
        // Marked unhealthy only once recorded: status never shows what the audit log lacks.
        let mut mark_unhealthy = None;
        let (id, kind, message) = match event {
            DriverEvent::Crashed {
                instance_id,
                exit,
                restart_in,
            } => (
                instance_id,
                shipgate_core::EventKind::InstanceCrashed,
                format!("instance {instance_id} crashed ({exit}); restarting in {restart_in:?}"),
            ),
            DriverEvent::Restarted { instance_id, pid } => (
                instance_id,
                shipgate_core::EventKind::InstanceRestarted,
                format!("instance {instance_id} restarted as pid {pid} and is healthy"),
            ),
            DriverEvent::GaveUp {
                instance_id,
                crashes,
            } => {
                let slot = self.slot_of_live(instance_id);
                let message = format!(
                    "instance {instance_id} crashed {crashes} times in a row and is no longer restarted"
                );
                match slot {
                    Some(slot) => {
                        let reason = format!("{message}; promote or roll back to recover");
                        mark_unhealthy = Some((slot, reason.clone()));
                        (
                            instance_id,
                            shipgate_core::EventKind::EnvironmentUnhealthy,
                            reason,
                        )
                    }
                    None => {
                        self.drop_standby_instance(instance_id);
                        (
                            instance_id,
                            shipgate_core::EventKind::InstanceGaveUp,
                            message,
                        )
                    }
                }
            }
        };
        let slot = self.slot_of_live(id).or_else(|| self.slot_of_standby(id));
        self.store
            .append_event(shipgate_store::NewEvent {
                actor: SYSTEM.into(),
                kind,
                app: slot.as_ref().map(|s| s.0.to_string()),
                env: slot.as_ref().map(|s| s.1.to_string()),
                promotion_id: None,
                message,
                data: serde_json::to_value(event).unwrap_or_default(),
            })
            .await?;
        if let Some((slot, reason)) = mark_unhealthy {
            // Unless a promotion replaced the crashed instance meanwhile.
            if self.slot_of_live(id).as_ref() == Some(&slot) {
                locked(&self.unhealthy).insert(slot, reason);
            }
        }
        Ok(())
    }
}
