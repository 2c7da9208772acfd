//! Start-up after a stop of any kind, `kill -9` included: nothing stays in flight, every
//! environment serves its recorded live release again.

use std::collections::HashMap;
use std::sync::Arc;

use shipgate_core::PromotionState;
use shipgate_deploy::RouteTarget;
use shipgate_store::{
    InstanceRecord, LiveChange, LiveRelease, Promotion, PromotionFilter, Transition,
};

use crate::{Engine, EngineError, LiveInstance, SYSTEM};

/// The instance a recorded, still running instance is, as the engine tracks it.
fn adopted_instance(r: &InstanceRecord) -> Option<LiveInstance> {
    let port = u16::try_from(r.port?).ok()?;
    Some(LiveInstance {
        id: r.id.clone(),
        target: RouteTarget {
            instance_id: r.id.clone(),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            label: format!("{}@{}", r.app, r.version),
        },
        log_path: std::path::PathBuf::from(&r.log_path),
    })
}

impl Engine {
    pub(crate) async fn reconcile(self: &Arc<Self>) -> Result<(), EngineError> {
        // Instances a previous server process started may still run. Where the data plane
        // outlived it (an agent), the driver still runs them: a healthy instance of a release is
        // adopted, without a restart. Any other (a test, an unhealthy one, one left by a
        // server's own process) is stopped.
        let in_flight = PromotionFilter {
            states: vec![PromotionState::Deploying, PromotionState::Verifying],
            ..Default::default()
        };
        let in_flight = self.store.promotions(in_flight).await?;
        // A canary the routers still split for (they outlived the server) is ended first, so
        // nobody meets an instance that is about to be stopped.
        let mut canaries = HashMap::new();
        for p in in_flight
            .iter()
            .filter(|p| p.state == PromotionState::Deploying)
        {
            if let Some(f) = self
                .driver
                .canary_figures(p.env.as_str(), p.app.as_str())
                .await
            {
                if let Err(e) = self
                    .driver
                    .set_canary(p.env.as_str(), p.app.as_str(), None)
                    .await
                {
                    tracing::error!("could not end the canary of {} in {}: {e}", p.app, p.env);
                }
                canaries.insert(p.id, f);
            }
        }
        let adopted = self.adopt_running().await?;
        for p in &in_flight {
            let canary = canaries.get(&p.id);
            self.fail_interrupted(p, canary).await?;
            if canary.is_some() {
                // A canary ends before its switch: the environment stays on what is live.
                let live = self.live_record(&p.app, &p.env).await?;
                let back_on = crate::flow::live_name(live.as_ref());
                self.canary_aborted(p, "the server stopped during its rollout", &back_on)
                    .await;
            }
        }
        // Restoring can take as long as the slowest instance takes to get healthy: the API
        // answers meanwhile, and each router says what it is starting.
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = engine.restore_and_resume(adopted).await {
                tracing::error!("could not restore what was live: {e}");
            }
            engine
                .restoring
                .store(false, std::sync::atomic::Ordering::Release);
        });
        Ok(())
    }

    /// A new agent took over the data plane (the one before died): binds the routers again,
    /// keeps the instances the new agent adopted (the same processes, live and warm standbys),
    /// stops what it did not, and starts again every recorded live release that lost its
    /// instance. In-flight promotions fail on their own when their instance or route is gone.
    pub async fn data_plane_restarted(self: &Arc<Self>) -> Result<(), EngineError> {
        self.restoring
            .store(true, std::sync::atomic::Ordering::Release);
        tracing::warn!("the data plane was restarted: restoring every live release");
        let proxies = crate::locked(&self.proxies).clone();
        crate::bind_routers(
            &self.config(),
            self.driver.as_ref(),
            self.store.as_ref(),
            &proxies,
        )
        .await?;
        crate::locked(&self.live).clear();
        crate::locked(&self.standby).clear();
        let adopted = self.adopt_running().await?;
        let restored = match self.restore_live(adopted).await {
            Ok(rest) => self.keep_adopted_standbys(rest).await,
            Err(e) => Err(e),
        };
        self.restoring
            .store(false, std::sync::atomic::Ordering::Release);
        restored
    }

    /// The recorded instances the data plane still runs healthy (tests aside), to be adopted;
    /// every other recorded instance is stopped.
    async fn adopt_running(&self) -> Result<Vec<InstanceRecord>, EngineError> {
        let mut adopted = Vec::new();
        for old in self.store.running_instances().await? {
            let runs = self.driver.status(&old.id).await.is_some_and(|s| s.healthy);
            if runs && !old.id.is_test() && old.port.is_some() {
                adopted.push(old);
                continue;
            }
            let pid = old.pid.and_then(|p| u32::try_from(p).ok());
            self.stop_instance(&old.id, pid).await;
        }
        Ok(adopted)
    }

    /// Starts every recorded live release again, then resumes the pending promotions.
    async fn restore_and_resume(
        self: &Arc<Self>,
        adopted: Vec<InstanceRecord>,
    ) -> Result<(), EngineError> {
        let adopted = self.restore_live(adopted).await?;
        self.keep_adopted_standbys(adopted).await?;
        self.resume_signoffs().await?;
        let pending = PromotionFilter {
            states: vec![PromotionState::Pending],
            ..Default::default()
        };
        let mut pending = self.store.promotions(pending).await?;
        pending.reverse();
        for p in pending {
            self.spawn_run(p.id);
        }
        Ok(())
    }

    /// A promotion cut off mid-way fails; a verifying one gives the environment back to the
    /// release verified there before it.
    async fn fail_interrupted(
        &self,
        p: &Promotion,
        canary: Option<&shipgate_deploy::CanaryFigures>,
    ) -> Result<(), EngineError> {
        let live = if p.state == PromotionState::Verifying {
            LiveChange::Restore(self.live_before(p).await?)
        } else {
            LiveChange::Keep
        };
        let back = match &live {
            LiveChange::Restore(Some(l)) => format!("{} is back on {}@{}", p.env, l.app, l.version),
            LiveChange::Restore(None) => format!("{} is back to having nothing live", p.env),
            _ => format!("{} keeps what it had", p.env),
        };
        let reason = match canary {
            // The rollout is ended, not continued: its steps' figures were the old server's.
            Some(f) => format!(
                "the server stopped during its canary (step {}, {} canary requests and {} errors in that step so far); the restarted server ended the canary, which no longer takes any request; {back}",
                f.window, f.canary.requests, f.canary.errors
            ),
            None => match self.interrupted_migration(p).await? {
                Some(what) => format!("the server stopped {what}; {back}"),
                None => format!(
                    "the server stopped while this promotion was {}; {back}",
                    p.state
                ),
            },
        };
        let t = Transition {
            promotion_id: p.id,
            from: vec![p.state],
            to: PromotionState::Failed,
            message: format!("{}@{} in {}: {reason}", p.app, p.version, p.env),
            reason: Some(reason),
            live,
            actor: SYSTEM.into(),
            roll_back_promotion: None,
        };
        self.store.transition(t).await?;
        Ok(())
    }

    /// The release verified in `p`'s environment before `p`, as its live record.
    pub(crate) async fn live_before(
        &self,
        p: &Promotion,
    ) -> Result<Option<LiveRelease>, EngineError> {
        let before = PromotionFilter {
            app: Some(p.app.clone()),
            env: Some(p.env.clone()),
            version: None,
            apps: Vec::new(),
            states: vec![PromotionState::Succeeded],
            limit: None,
        };
        let previous = self
            .store
            .promotions(before)
            .await?
            .into_iter()
            .find(|q| q.id < p.id);
        Ok(previous.map(|q| LiveRelease {
            app: q.app,
            env: q.env,
            version: q.version,
            digest: q.digest,
            promotion_id: q.id,
            since: q.updated_at,
        }))
    }

    /// Starts every recorded live release (in parallel) and points its router at it.
    /// Returns the adopted instances that serve no live release.
    async fn restore_live(
        self: &Arc<Self>,
        mut adopted: Vec<InstanceRecord>,
    ) -> Result<Vec<InstanceRecord>, EngineError> {
        let mut starts = tokio::task::JoinSet::new();
        for live in self.store.live(None).await? {
            if self.config().app(&live.app).is_none()
                || self.config().environment(&live.env).is_none()
            {
                continue;
            }
            let slot = (live.app.clone(), live.env.clone());
            // The instance of the promotion that made it live, or else one of the same release
            // there: after a rollback to a warm standby, the rollback's promotion is live and
            // the standby's instance (started by an earlier promotion) serves it.
            let same_release = |i: &InstanceRecord| {
                i.app == live.app && i.env == live.env && i.version == live.version
            };
            let at = adopted
                .iter()
                .position(|i| i.promotion_id == live.promotion_id && i.env == live.env)
                .or_else(|| adopted.iter().position(same_release));
            if let Some(at) = at {
                let record = adopted.remove(at);
                if let Some(instance) = adopted_instance(&record) {
                    tracing::info!(
                        "{}@{} in {}: adopted instance {} (pid {:?}), still serving",
                        live.app,
                        live.version,
                        live.env,
                        record.id,
                        record.pid
                    );
                    self.route(&slot, Some(&instance)).await?;
                    self.set_live_instance(slot, Some(instance));
                    continue;
                }
            }
            let engine = Arc::clone(self);
            starts.spawn(async move {
                let result = engine.restore_one(&live).await;
                (live, result)
            });
        }
        while let Some(done) = starts.join_next().await {
            let Ok((live, result)) = done else { continue };
            if let Err(message) = result {
                self.unavailable(&live, &message).await?;
            }
        }
        Ok(adopted)
    }

    /// An adopted instance that serves no live release becomes its slot's warm standby when
    /// its release was verified there (a fresh `standby` time from now); any other is stopped.
    async fn keep_adopted_standbys(
        self: &Arc<Self>,
        adopted: Vec<InstanceRecord>,
    ) -> Result<(), EngineError> {
        for record in adopted {
            let slot = (record.app.clone(), record.env.clone());
            let promotion = self.store.promotion(record.promotion_id).await?;
            let standby = match (&promotion, adopted_instance(&record)) {
                (Some(p), Some(instance))
                    if p.state == PromotionState::Succeeded
                        && self.standby_of(&slot).is_none()
                        && self.live_instance(&slot).is_some() =>
                {
                    Some((p.clone(), instance))
                }
                _ => None,
            };
            match standby {
                Some((p, instance)) => {
                    tracing::info!(
                        "{}@{} in {}: adopted instance {} as the warm standby",
                        p.app,
                        p.version,
                        p.env,
                        record.id
                    );
                    let live = LiveRelease {
                        app: p.app,
                        env: p.env,
                        version: p.version,
                        digest: p.digest,
                        promotion_id: p.id,
                        since: p.updated_at,
                    };
                    self.keep_warm(slot, instance, live);
                }
                None => {
                    let pid = record.pid.and_then(|p| u32::try_from(p).ok());
                    self.stop_instance(&record.id, pid).await;
                }
            }
        }
        Ok(())
    }

    async fn restore_one(&self, live: &LiveRelease) -> Result<(), String> {
        let p = self
            .store
            .promotion(live.promotion_id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("its promotion is missing")?;
        let slot = (live.app.clone(), live.env.clone());
        // A promotion asked for meanwhile waits until the recorded release is back.
        let lock = self.slot_lock(&slot);
        let _slot = lock.lock().await;
        self.driver
            .set_starting(
                live.env.as_str(),
                live.app.as_str(),
                &format!("{}@{}", live.app, live.version),
            )
            .await;
        let instance = self.start_instance(&p, &slot).await?;
        self.route(&slot, Some(&instance))
            .await
            .map_err(|e| e.to_string())?;
        self.set_live_instance(slot, Some(instance));
        Ok(())
    }
}
