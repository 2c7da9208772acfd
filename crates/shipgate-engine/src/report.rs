//! What the engine shows: status per app and environment, history with gates, log files.

use std::collections::HashMap;
use std::path::PathBuf;

pub use shipgate_api::status::{
    AppStatus, EnvironmentStatus, HistoryEntry, InstanceView, PromotionView, StandbyView, Traffic,
    WaitView,
};
use shipgate_core::gate::Stage;
use shipgate_core::{AppName, EnvName, PromotionState, Standing};
use shipgate_store::{Promotion, PromotionFilter};

use crate::{Engine, EngineError};

impl Engine {
    /// What is live where, with the instances and unfinished promotions.
    pub async fn status(&self, app: Option<&AppName>) -> Result<Vec<AppStatus>, EngineError> {
        if let Some(app) = app.filter(|a| self.config().app(a).is_none()) {
            return Err(EngineError::UnknownApp(app.to_string()));
        }
        let apps: Vec<AppName> = self
            .config()
            .apps
            .iter()
            .filter(|a| app.is_none_or(|x| x == &a.name))
            .map(|a| a.name.clone())
            .collect();
        self.status_of(&apps).await
    }

    /// [`Self::status`] of these apps (of the config), in the order given.
    pub async fn status_of(&self, apps: &[AppName]) -> Result<Vec<AppStatus>, EngineError> {
        let config = self.config();
        let live = self.store.live_of(apps).await?;
        let unfinished = PromotionFilter {
            apps: apps.to_vec(),
            states: PromotionState::UNFINISHED.to_vec(),
            ..Default::default()
        };
        let unfinished = self.store.promotions(unfinished).await?;
        // Where each environment's rollback goes, from one read for all of them.
        let targets = self.store.rollback_targets(apps).await?;
        let freezes = self.store.freezes().await?;
        let faults = self.store.faults(None, true).await?;
        let firing = self.firing_alerts();
        // One snapshot per router, not one per cell: a snapshot covers every release it saw.
        // Per app: the live release's last minute, and what users met, faults included.
        type Seen = (
            shipgate_proxy::WindowSummary,
            Option<shipgate_proxy::WindowSummary>,
        );
        let mut traffic: HashMap<&EnvName, HashMap<String, Seen>> = HashMap::new();
        for env in config.environments.iter().map(|e| &e.name) {
            let metrics = self.driver.router_metrics(env.as_str()).await;
            let live = metrics
                .iter()
                .filter(|m| m.live)
                .map(|m| {
                    let faulted = metrics.iter().any(|f| {
                        f.app == m.app
                            && f.label == shipgate_proxy::FAULTED
                            && f.last_minute.requests > 0
                    });
                    let seen = faulted
                        .then(|| shipgate_proxy::users_saw(&metrics, &m.app))
                        .flatten();
                    (m.app.clone(), (m.last_minute, seen))
                })
                .collect();
            traffic.insert(env, live);
        }
        let mut out = Vec::new();
        for a in apps.iter().filter_map(|a| config.app(a)) {
            let mut environments = Vec::new();
            // Where a hotfix went live: the environments before it that never verified it are
            // behind.
            let mut hotfixed = Vec::new();
            for l in live.iter().filter(|l| l.app == a.name) {
                let by_hotfix = self
                    .store
                    .promotion(l.promotion_id)
                    .await?
                    .is_some_and(|p| p.kind == shipgate_core::PromotionKind::Hotfix);
                if by_hotfix {
                    hotfixed.push(l.clone());
                }
            }
            for e in &config.environments {
                let mut behind = None;
                for l in hotfixed
                    .iter()
                    .filter(|l| config.comes_before(&e.name, &l.env))
                {
                    let here = self.store.standing(&a.name, &l.version, &e.name).await?;
                    if !matches!(here, Standing::Verified(d) if d == l.digest) {
                        behind = Some(shipgate_api::status::Behind {
                            env: l.env.clone(),
                            version: l.version.clone(),
                            command: format!(
                                "shipgate promote {}@{} --to {}",
                                a.name, l.version, e.name
                            ),
                        });
                        break;
                    }
                }
                let slot = (a.name.clone(), e.name.clone());
                let instance = match self.live_instance(&slot) {
                    Some(i) => self.driver.status(&i.id).await.map(|s| InstanceView {
                        id: s.instance_id,
                        pid: s.pid,
                        port: s.port,
                        restarts: s.restarts,
                        healthy: s.healthy,
                        last_crash: s.last_crash,
                        hosts: s
                            .hosts
                            .into_iter()
                            .map(|h| shipgate_api::status::HostInstanceView {
                                host: h.host,
                                pid: h.pid,
                                port: h.port,
                                healthy: h.healthy,
                                restarts: h.restarts,
                            })
                            .collect(),
                        unreachable: s.unreachable,
                    }),
                    None => None,
                };
                let mut in_progress = Vec::new();
                for p in unfinished
                    .iter()
                    .filter(|p| p.app == a.name && p.env == e.name)
                {
                    in_progress.push(PromotionView {
                        promotion: p.clone(),
                        waiting_on: self
                            .waiting_on(p.id)
                            .into_iter()
                            .map(WaitView::from)
                            .collect(),
                        watch: self.watch_of(p.id),
                        canary: self.canary_of(p.id).await,
                    });
                }
                let rollback_to = targets
                    .iter()
                    .find(|p| p.app == a.name && p.env == e.name)
                    .map(|p| p.version.clone());
                environments.push(EnvironmentStatus {
                    env: e.name.clone(),
                    url: self.env_url(&e.name),
                    live: live
                        .iter()
                        .find(|l| l.app == a.name && l.env == e.name)
                        .cloned(),
                    instance,
                    in_progress,
                    frozen: freezes
                        .iter()
                        .filter(|f| f.env.as_ref().is_none_or(|x| x == &e.name))
                        .cloned()
                        .collect(),
                    standby: self
                        .standby_of(&slot)
                        .filter(|s| rollback_to.as_ref() == Some(&s.live.version))
                        .map(|s| StandbyView {
                            version: s.live.version,
                            instance_id: s.instance.id,
                            until: s.until,
                        }),
                    rollback_to,
                    unhealthy: crate::locked(&self.unhealthy).get(&slot).cloned(),
                    drift: self.drift_of_slot(&a.name, &e.name),
                    undeployed: self.undeployed_of_slot(&a.name, &e.name),
                    isolation: self.isolation_view(&a.name, &e.name),
                    alerts: firing
                        .iter()
                        .filter(|(_, app, env, _)| *app == a.name && *env == e.name)
                        .map(|(name, _, _, when)| format!("{name}: {when}"))
                        .collect(),
                    behind,
                    live_by_hotfix: hotfixed.iter().any(|l| l.env == e.name),
                    faults: faults
                        .iter()
                        .filter(|f| f.app == a.name && f.env == e.name)
                        .cloned()
                        .collect(),
                    traffic: traffic
                        .get(&e.name)
                        .and_then(|t| t.get(a.name.as_str()))
                        .map(|(w, seen)| Traffic {
                            requests_per_second: w.requests_per_second,
                            error_rate: w.error_rate,
                            p50_ms: w.p50_ms,
                            p99_ms: w.p99_ms,
                            requests: w.requests,
                            error_rate_with_faults: seen.map(|s| s.error_rate),
                        }),
                });
            }
            out.push(AppStatus {
                app: a.name.clone(),
                environments,
            });
        }
        Ok(out)
    }

    /// Promotions of an app (in one environment or all), newest first, with their gates.
    pub async fn history(
        &self,
        app: &AppName,
        env: Option<&EnvName>,
        limit: i64,
    ) -> Result<Vec<HistoryEntry>, EngineError> {
        let filter = PromotionFilter {
            app: Some(app.clone()),
            env: env.cloned(),
            version: None,
            apps: Vec::new(),
            states: vec![],
            limit: Some(limit),
        };
        let mut out = Vec::new();
        for promotion in self.store.promotions(filter).await? {
            out.push(self.entry(promotion).await?);
        }
        Ok(out)
    }

    /// One promotion with its gates.
    pub async fn promotion(
        &self,
        id: shipgate_core::PromotionId,
    ) -> Result<HistoryEntry, EngineError> {
        let promotion = self
            .store
            .promotion(id)
            .await?
            .ok_or(EngineError::NoSuchPromotion(id))?;
        self.entry(promotion).await
    }

    async fn entry(&self, promotion: Promotion) -> Result<HistoryEntry, EngineError> {
        let gates = self.store.gates(promotion.id).await?;
        let mut decisions = self.store.decisions(promotion.id, Stage::Entry).await?;
        decisions.extend(self.store.decisions(promotion.id, Stage::Watch).await?);
        Ok(HistoryEntry {
            waiting_on: self
                .waiting_on(promotion.id)
                .into_iter()
                .map(WaitView::from)
                .collect(),
            watch: self.watch_of(promotion.id),
            canary: self.canary_of(promotion.id).await,
            promotion,
            gates,
            decisions,
        })
    }

    /// The log file of the instance serving `app` in `env`, or else the newest one written there.
    /// The live instance's log when it is kept on the environment's hosts (from `host`, or the
    /// first that answers); None when it is a file on this machine ([`Self::log_file`]).
    pub async fn read_remote_log(
        &self,
        app: &AppName,
        env: &EnvName,
        host: Option<&str>,
        offset: Option<u64>,
        lines: usize,
    ) -> Option<Result<(String, u64), String>> {
        let live = self.live_instance(&(app.clone(), env.clone()))?;
        self.driver.read_log(&live.id, host, offset, lines).await
    }

    pub fn log_file(&self, app: &AppName, env: &EnvName) -> Option<PathBuf> {
        if let Some(i) = self.live_instance(&(app.clone(), env.clone())) {
            return Some(i.log_path);
        }
        let dir = self
            .config()
            .server
            .data_dir
            .join("logs")
            .join(app.as_str())
            .join(env.as_str());
        std::fs::read_dir(dir)
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .max()
            .map(|(_, p)| p)
    }
}
