//! Registering releases and carrying promotions and rollbacks through their states.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use shipgate_core::promotion::check_entry;
use shipgate_core::{
    AppName, EnvName, InstanceId, PromotionKind, PromotionState, ReleaseRef, Standing, Version,
};
use shipgate_deploy::RouteTarget;
use shipgate_deploy::{CrashLoopPolicy, StartInstance, StopInstance};
use shipgate_store::artifact::CheckedArtifact;
use shipgate_store::{
    LiveChange, LiveRelease, NewGate, NewPromotion, NewRelease, Promotion, PromotionFilter,
    Release, StoreError, Transition,
};

use crate::{Engine, EngineError, LiveInstance, STOP_GRACE, SYSTEM, Slot};

/// Metadata of a release being registered.
#[derive(Debug, Clone)]
pub struct ReleaseRequest {
    /// The app and version.
    pub release: ReleaseRef,
    /// Source commit.
    pub commit: Option<String>,
    /// When that commit was made.
    pub commit_time: Option<jiff::Timestamp>,
    /// Free text.
    pub notes: Option<String>,
}

impl Engine {
    /// Keeps the artifact of `digest` in the database too, when the database is shared by
    /// several servers, so that whichever leads can deploy it.
    async fn share_artifact(&self, digest: &shipgate_core::Digest) -> Result<(), EngineError> {
        if self.store.is_shared() {
            self.store
                .put_artifact(digest, &self.artifacts.archive(digest))
                .await?;
        }
        Ok(())
    }

    /// Registers a release whose artifact has been received and checked. The same version with
    /// the same digest is a no-op (`false`); another digest is refused before anything is stored.
    pub async fn create_release(
        &self,
        req: ReleaseRequest,
        artifact: CheckedArtifact,
        actor: &str,
    ) -> Result<(Release, bool), EngineError> {
        let ReleaseRef { app, version } = req.release;
        if self.config().app(&app).is_none() {
            return Err(EngineError::UnknownApp(app.to_string()));
        }
        // Until the release is recorded, retention would take its artifact for an orphan.
        let _not_pruning = self.pruning.read().await;
        if let Some(existing) = self.registered_as(&app, &version, &artifact.digest).await? {
            // The same file again: stored anew if retention had removed it.
            self.artifacts.store(artifact).await?;
            self.share_artifact(&existing.digest).await?;
            return Ok((existing, false));
        }
        let (digest, size) = (artifact.digest.clone(), artifact.size as i64);
        self.artifacts.store(artifact).await?;
        // Before the release is recorded: a release on record always has its artifact there.
        self.share_artifact(&digest).await?;
        let new = NewRelease {
            app,
            version,
            digest,
            size,
            commit: req.commit,
            commit_time: req.commit_time,
            notes: req.notes,
        };
        Ok(self.store.insert_release(new, actor).await?)
    }

    /// `app@version` as registered with `digest` already (None: not registered); refused when
    /// it is registered with another digest, as releases are immutable.
    pub(crate) async fn registered_as(
        &self,
        app: &AppName,
        version: &Version,
        digest: &shipgate_core::Digest,
    ) -> Result<Option<Release>, EngineError> {
        match self.store.release(app, version).await? {
            Some(existing) if &existing.digest == digest => Ok(Some(existing)),
            Some(existing) => Err(StoreError::ReleaseConflict {
                app: app.clone(),
                version: version.clone(),
                existing: existing.digest,
                offered: digest.clone(),
            }
            .into()),
            None => Ok(None),
        }
    }

    /// Asks for `release` to enter `env`. Refused unless it is verified (same digest) in the
    /// environment before; otherwise recorded `pending` and carried on in the background: it
    /// deploys once its requirements hold. `override_reason` (an admin's, checked by the caller)
    /// lifts deploy windows and freezes for this promotion and is recorded with it.
    pub async fn promote(
        self: &Arc<Self>,
        release: &ReleaseRef,
        env: &EnvName,
        actor: &str,
        override_reason: Option<String>,
    ) -> Result<Promotion, EngineError> {
        let _not_pruning = self.pruning.read().await;
        let registered = self.registered(release).await?;
        let after = self.config().environment(env).and_then(|e| e.after.clone());
        let standing = self.standing_in(release, after.as_ref()).await?;
        check_entry(&self.config(), release, &registered.digest, env, |_| {
            standing
        })?;
        self.request(
            registered,
            env,
            PromotionKind::Promote,
            actor,
            override_reason,
        )
        .await
    }

    /// Where `release` stands in `env` (None: it need not have passed anywhere).
    async fn standing_in(
        &self,
        release: &ReleaseRef,
        env: Option<&EnvName>,
    ) -> Result<Standing, EngineError> {
        Ok(match env {
            Some(env) => {
                self.store
                    .standing(&release.app, &release.version, env)
                    .await?
            }
            None => Standing::Unverified,
        })
    }

    /// Asks for `release` to enter `env` as a hotfix, for `reason` (an incident): it must be
    /// verified in the environment's hotfix `from` (whatever lies between), and skips the
    /// requirements the lane names, never approvals. Who may ask is checked by the caller; an
    /// `override_reason` lifts windows and freezes as for [`Engine::promote`].
    pub async fn hotfix(
        self: &Arc<Self>,
        release: &ReleaseRef,
        env: &EnvName,
        actor: &str,
        reason: String,
        override_reason: Option<String>,
    ) -> Result<Promotion, EngineError> {
        let _not_pruning = self.pruning.read().await;
        let registered = self.registered(release).await?;
        let config = self.config();
        let from = config
            .environment(env)
            .and_then(|e| e.hotfix.as_ref())
            .map(|h| h.from.clone());
        let standing = self.standing_in(release, from.as_ref()).await?;
        shipgate_core::promotion::check_hotfix_entry(
            &config,
            release,
            &registered.digest,
            env,
            |_| standing,
        )?;
        self.request_as(
            registered,
            env,
            PromotionKind::Hotfix,
            actor,
            override_reason,
            Some(reason),
        )
        .await
    }

    /// Returns `env` to the release that was live before the current one (or to `to`, which
    /// must have been live there). Goes through the normal deploy path, without re-running tests.
    pub async fn rollback(
        self: &Arc<Self>,
        app: &AppName,
        env: &EnvName,
        to: Option<&Version>,
        actor: &str,
    ) -> Result<Promotion, EngineError> {
        if self.config().app(app).is_none() {
            return Err(EngineError::UnknownApp(app.to_string()));
        }
        if self.config().environment(env).is_none() {
            return Err(EngineError::UnknownEnvironment(env.to_string()));
        }
        if let Some(done) = self.end_in_flight(app, env, to, actor).await? {
            return Ok(done);
        }
        let _not_pruning = self.pruning.read().await;
        let live = self.live_record(app, env).await?;
        let Some(live) = live else {
            return Err(EngineError::NothingToRollBack(format!(
                "nothing of {app} is live in {env}, so there is nothing to roll back"
            )));
        };
        let target = match self.rollback_target(app, env, &live, to).await? {
            Ok(target) => target,
            Err(msg) => return Err(EngineError::NothingToRollBack(msg)),
        };
        let release = self
            .registered(&ReleaseRef {
                app: app.clone(),
                version: target.version.clone(),
            })
            .await?;
        if let Some(done) = self
            .switch_back(&(app.clone(), env.clone()), &release, &live, actor)
            .await?
        {
            return Ok(done);
        }
        self.request(release, env, PromotionKind::Rollback, actor, None)
            .await
    }

    /// A rollback while a promotion deploys or is verified in `env` ends that promotion now,
    /// which puts back what was live before it. When that is where the rollback goes, it is
    /// recorded as done (a switch back); otherwise (`to` another release) the rollback goes on
    /// from there.
    async fn end_in_flight(
        self: &Arc<Self>,
        app: &AppName,
        env: &EnvName,
        to: Option<&Version>,
        actor: &str,
    ) -> Result<Option<Promotion>, EngineError> {
        let Some(running) = self.in_flight(app, env).await? else {
            return Ok(None);
        };
        let why = format!("rolled back by {actor}");
        if !self.stop(running.id, &why) {
            return Ok(None);
        }
        let ended = self.ended(running.id).await?;
        // Its reason starts with why (a canary adds the step it was at).
        let by_this = ended.state == PromotionState::Failed
            && ended.reason.as_deref().is_some_and(|r| r.starts_with(&why));
        if !by_this || to.is_some_and(|v| running.previous_version.as_ref() != Some(v)) {
            return Ok(None);
        }
        let Some(back) = self.live_record(app, env).await? else {
            return Ok(Some(ended));
        };
        let new = NewPromotion {
            app: back.app.clone(),
            version: back.version.clone(),
            digest: back.digest.clone(),
            env: env.clone(),
            kind: PromotionKind::Rollback,
            previous_version: Some(running.version.clone()),
            override_reason: None,
            hotfix_reason: None,
        };
        let gate = format!(
            "ended promotion {} of {}@{} in flight; {}@{} serves {env} again",
            running.id, running.app, running.version, back.app, back.version
        );
        // What serves again runs with the secrets it was started with.
        let secrets = self.store.deployed_secrets(back.promotion_id).await?;
        Ok(Some(
            self.store
                .switch_back(new, running.id, gate, &secrets, actor)
                .await?,
        ))
    }

    /// The promotion `rollback` goes back to in `env` from `live`: the release of `to`, or
    /// else the newest one verified there before the live one; `Err` says why there is none.
    pub(crate) async fn rollback_target(
        &self,
        app: &AppName,
        env: &EnvName,
        live: &LiveRelease,
        to: Option<&Version>,
    ) -> Result<Result<Promotion, String>, EngineError> {
        let history = self
            .store
            .promotions(PromotionFilter {
                app: Some(app.clone()),
                env: Some(env.clone()),
                ..rollback_history(Vec::new())
            })
            .await?;
        Ok(rollback_choice(&history, live, to))
    }

    pub(crate) async fn registered(&self, release: &ReleaseRef) -> Result<Release, EngineError> {
        if self.config().app(&release.app).is_none() {
            return Err(EngineError::UnknownApp(release.app.to_string()));
        }
        let registered = self
            .store
            .release(&release.app, &release.version)
            .await?
            .ok_or_else(|| EngineError::NotRegistered {
                release: release.to_string(),
                app: release.app.to_string(),
                version: release.version.to_string(),
            })?;
        if !self
            .artifacts
            .fetch(self.store.as_ref(), &registered.digest)
            .await?
        {
            return Err(EngineError::Pruned {
                release: release.to_string(),
                app: release.app.to_string(),
                version: release.version.to_string(),
            });
        }
        Ok(registered)
    }

    pub(crate) async fn request(
        self: &Arc<Self>,
        release: Release,
        env: &EnvName,
        kind: PromotionKind,
        actor: &str,
        override_reason: Option<String>,
    ) -> Result<Promotion, EngineError> {
        self.request_as(release, env, kind, actor, override_reason, None)
            .await
    }

    /// [`Engine::request`], for a hotfix with its reason.
    async fn request_as(
        self: &Arc<Self>,
        release: Release,
        env: &EnvName,
        kind: PromotionKind,
        actor: &str,
        override_reason: Option<String>,
        hotfix_reason: Option<String>,
    ) -> Result<Promotion, EngineError> {
        let previous_version = self
            .live_record(&release.app, env)
            .await?
            .map(|l| l.version);
        let new = NewPromotion {
            app: release.app,
            version: release.version,
            digest: release.digest,
            env: env.clone(),
            kind,
            previous_version,
            override_reason,
            hotfix_reason,
        };
        let promotion = self.store.create_promotion(new, actor).await?;
        self.spawn_run(promotion.id);
        Ok(promotion)
    }

    pub(crate) fn spawn_run(self: &Arc<Self>, promotion_id: shipgate_core::PromotionId) {
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = engine.run(promotion_id).await {
                tracing::error!("promotion {promotion_id} stopped on an error: {e}");
                let fail = Transition {
                    promotion_id,
                    from: PromotionState::UNFINISHED.to_vec(),
                    to: PromotionState::Failed,
                    reason: Some(e.to_string()),
                    live: LiveChange::Keep,
                    actor: SYSTEM.into(),
                    message: format!("promotion {promotion_id} failed: {e}"),
                    roll_back_promotion: None,
                };
                let _ = engine.store.transition(fail).await;
            }
        });
    }

    /// Carries one promotion from `pending` to its end.
    async fn run(
        self: &Arc<Self>,
        promotion_id: shipgate_core::PromotionId,
    ) -> Result<(), EngineError> {
        let promotion = self
            .store
            .promotion(promotion_id)
            .await?
            .ok_or(EngineError::NoSuchPromotion(promotion_id))?;
        let slot: Slot = (promotion.app.clone(), promotion.env.clone());
        let mut stop = self.stop_signal(promotion_id);
        // Requirements are waited on before the slot is taken: a rollback or a newer promotion
        // must never queue behind an approval.
        if promotion.kind.is_forward()
            && promotion.state == PromotionState::Pending
            && !self.await_requirements(&promotion).await?
        {
            return Ok(());
        }
        let lock = self.slot_lock(&slot);
        let _held = match lock.try_lock() {
            Ok(held) => held,
            Err(_) => {
                // A release before it may wait for its sign-off here for days: say so.
                self.say_signoff_holds(&promotion).await?;
                let held = lock.lock().await;
                self.set_waiting(promotion.id, vec![]);
                held
            }
        };
        // Rejected or rolled back while it waited for its turn: it never deploys.
        if let Some(why) = stop.asked() {
            self.end_pending(&promotion, why).await?;
            return Ok(());
        }
        let release = format!("{}@{}", promotion.app, promotion.version);
        let deploying = self
            .store
            .transition(self.step(
                &promotion,
                PromotionState::Pending,
                PromotionState::Deploying,
                format!("deploying {release} to {}", promotion.env),
            ))
            .await;
        let promotion = match deploying {
            Ok(p) => p,
            // Superseded or cancelled while it waited for the slot: nothing to do.
            Err(StoreError::StateConflict { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let started_at = self.clock.now();
        // The data first: its backup and migration, before anything starts or switches. A
        // migration is never cut short (a rollback asked meanwhile waits for its end).
        if promotion.kind.is_forward()
            && let Some(stopped) = self.before_switch(&promotion).await?
        {
            return self
                .fail_deploy(
                    &promotion,
                    stopped.gate,
                    stopped.output,
                    started_at,
                    stopped.what,
                )
                .await;
        }
        let started = {
            let start = self.start_instance(&promotion, &slot);
            tokio::pin!(start);
            tokio::select! {
                biased;
                why = stop.asked_later() => {
                    // Ended before its switch: the environment keeps what it has. The start
                    // goes on alongside (it may hold the store mid-write), and its instance is
                    // stopped once it is up.
                    let ended = async {
                        let keeps = self
                            .live_record(&promotion.app, &promotion.env)
                            .await?;
                        let keeps = live_name(keeps.as_ref());
                        let mut t = self.step(
                            &promotion,
                            PromotionState::Deploying,
                            PromotionState::Failed,
                            format!(
                                "{release} was stopped before its switch in {}: {why}; {} stays on {keeps}",
                                promotion.env, promotion.env
                            ),
                        );
                        t.reason = Some(why);
                        self.store.transition(t).await?;
                        Ok::<(), EngineError>(())
                    };
                    let (ended, started) = tokio::join!(ended, start.as_mut());
                    if let Ok(instance) = started {
                        self.stop_instance(&instance.id, None).await;
                    }
                    return ended;
                }
                started = &mut start => started,
            }
        };
        let instance = match started {
            Ok(i) => i,
            Err(message) => {
                let what = format!("{release} did not start in {}", promotion.env);
                return self
                    .fail_deploy(&promotion, "deploy", message, started_at, what)
                    .await;
            }
        };
        // On hosts: where it runs on each of them.
        let on_hosts = match self.driver.status(&instance.id).await {
            Some(s) if !s.hosts.is_empty() => s
                .hosts
                .iter()
                .map(|h| format!("\n  {}: pid {}, port {}", h.host, h.pid, h.port))
                .collect::<String>(),
            _ => String::new(),
        };
        let output = if on_hosts.is_empty() {
            format!(
                "instance {} healthy on port {}",
                instance.id,
                instance.target.addr.port()
            )
        } else {
            format!("instance {} healthy on every host:{on_hosts}", instance.id)
        };
        self.gate(&promotion, "deploy", true, output, started_at)
            .await?;

        let previous_live = self.live_record(&promotion.app, &promotion.env).await?;
        // A canary meets a share of the requests first, where the environment has one and a
        // release is live to judge it against.
        let canary = self
            .config()
            .environment(&promotion.env)
            .and_then(|e| e.canary.clone())
            .filter(|_| promotion.kind.is_forward());
        if let (Some(rules), Some(stable)) = (canary, self.live_instance(&slot)) {
            let ended = self
                .canary(&promotion, &slot, &instance, &stable, &rules, &mut stop)
                .await;
            let why = match ended {
                Ok(None) => None,
                Ok(Some(why)) => Some(why),
                Err(e) => {
                    let _ = self
                        .driver
                        .set_canary(promotion.env.as_str(), promotion.app.as_str(), None)
                        .await;
                    Some(format!("its canary stopped on an error: {e}"))
                }
            };
            if let Some(why) = why {
                let back_on = live_name(previous_live.as_ref());
                let mut t = self.step(
                    &promotion,
                    PromotionState::Deploying,
                    PromotionState::Failed,
                    format!(
                        "{release} was ended in {}: {why}; {} stays on {back_on}",
                        promotion.env, promotion.env
                    ),
                );
                t.reason = Some(why.clone());
                // Recorded before the promotion's end, so whoever sees it failed finds why.
                self.canary_aborted(&promotion, &why, &back_on).await;
                self.store.transition(t).await?;
                self.retire_later(slot, instance);
                return Ok(());
            }
        }
        let previous_instance = self.set_live_instance(slot.clone(), Some(instance.clone()));
        if let Err(e) = self.route(&slot, Some(&instance)).await {
            // Nothing switched (a driver on several hosts switches back those it did): the
            // environment keeps what it had, and the new instance goes.
            self.set_live_instance(slot.clone(), previous_instance);
            self.stop_instance(&instance.id, None).await;
            let message = format!("the switch to instance {} failed: {e}", instance.id);
            let what = format!("{release} could not be switched to in {}", promotion.env);
            return self
                .fail_deploy(&promotion, "switch", message, started_at, what)
                .await;
        }
        // A canary that took every request is the route now: its split goes.
        if let Err(e) = self
            .driver
            .set_canary(promotion.env.as_str(), promotion.app.as_str(), None)
            .await
        {
            tracing::warn!("could not remove the canary split of {release}: {e}");
        }
        let mut t = self.step(
            &promotion,
            PromotionState::Deploying,
            PromotionState::Verifying,
            format!("{release} is live in {}; verifying", promotion.env),
        );
        t.live = LiveChange::Promoted;
        let promotion = self.store.transition(t).await?;

        let judged = async {
            match promotion.kind {
                PromotionKind::Promote | PromotionKind::Hotfix => {
                    match self.verify(&promotion, instance.target.addr.port()).await? {
                        Some(failure) => Ok(Some(failure)),
                        None => self.watch(&promotion, &instance).await,
                    }
                }
                // Both go back to a release verified here before.
                PromotionKind::Rollback | PromotionKind::Redeploy => Ok(None),
            }
        };
        // A rollback or a rejection ends the verification at once (its tests are killed).
        let (mut failure, mut stopped) = tokio::select! {
            biased;
            why = stop.asked_later() => (Some(why), true),
            judged = judged => (judged?, false),
        };
        // Verified: where testers sign off, it waits for them, live, the release before it
        // still running to go back to.
        let signoff = self
            .config()
            .environment(&promotion.env)
            .and_then(|e| e.signoff.clone())
            .filter(|_| promotion.kind.is_forward());
        let promotion = match signoff {
            Some(rules) if failure.is_none() => {
                let signing = self.request_signoff(&promotion, &rules).await?;
                (failure, stopped) = tokio::select! {
                    biased;
                    why = stop.asked_later() => (Some(why), true),
                    judged = self.await_signoff(&signing) => (judged?, false),
                };
                self.set_waiting(signing.id, vec![]);
                signing
            }
            _ => promotion,
        };
        let signing_off = promotion.state == PromotionState::SigningOff;
        if stopped {
            self.revoke_run_tokens(&promotion).await;
        }
        if let Some(reason) = failure {
            self.route(&slot, previous_instance.as_ref()).await?;
            self.set_live_instance(slot.clone(), previous_instance);
            let back = live_name(previous_live.as_ref());
            let mut t = self.step(
                &promotion,
                promotion.state,
                PromotionState::Failed,
                if signing_off && !stopped {
                    format!(
                        "{release} was not signed off in {}: {reason}; {} is back on {back}",
                        promotion.env, promotion.env
                    )
                } else if stopped {
                    format!(
                        "{release} was ended in {} during its {}: {reason}; {} is back on {back}",
                        promotion.env,
                        if signing_off {
                            "sign-off"
                        } else {
                            "verification"
                        },
                        promotion.env
                    )
                } else {
                    format!(
                        "{release} failed verification in {}: {reason}; {} is back on {back}",
                        promotion.env, promotion.env
                    )
                },
            );
            t.reason = Some(reason);
            t.live = LiveChange::Restore(previous_live);
            self.store.transition(t).await?;
            if stopped {
                // Out of the slot at once, so what asked for it goes on; the drain goes on
                // meanwhile.
                self.retire_later(slot, instance);
            } else {
                self.retire(&instance, self.drain_grace(&slot.1)).await;
            }
            return Ok(());
        }
        let mut t = self.step(
            &promotion,
            promotion.state,
            PromotionState::Succeeded,
            if signing_off {
                format!("{release} is signed off and verified in {}", promotion.env)
            } else {
                format!("{release} is verified in {}", promotion.env)
            },
        );
        if promotion.kind == PromotionKind::Rollback {
            // The release it went back to was not rolled back when it was live already.
            t.roll_back_promotion = previous_live
                .as_ref()
                .filter(|l| l.digest != promotion.digest)
                .map(|l| l.promotion_id);
        }
        let succeeded = self.store.transition(t).await?;
        self.used_by_deploy(&succeeded.env).await;
        if succeeded.kind.is_forward() {
            self.auto_promote(&succeeded).await;
        }
        let Some(old) = previous_instance else {
            return Ok(());
        };
        // A replaced release that still runs stays warm for an instant rollback; a rolled-back
        // or crashed one does not.
        let warm = promotion.kind.is_forward()
            && self.driver.status(&old.id).await.is_some_and(|s| s.healthy);
        match previous_live {
            Some(live) if warm => self.keep_warm(slot, old, live),
            _ => self.retire_later(slot, old),
        }
        Ok(())
    }

    pub(crate) fn step(
        &self,
        p: &Promotion,
        from: PromotionState,
        to: PromotionState,
        message: String,
    ) -> Transition {
        Transition {
            promotion_id: p.id,
            from: vec![from],
            to,
            reason: None,
            live: LiveChange::Keep,
            actor: SYSTEM.into(),
            message,
            roll_back_promotion: None,
        }
    }

    pub(crate) async fn gate(
        &self,
        p: &Promotion,
        name: &str,
        passed: bool,
        output: String,
        started_at: Timestamp,
    ) -> Result<(), EngineError> {
        let gate = NewGate {
            promotion_id: p.id,
            name: name.to_owned(),
            passed,
            output: keep_tail(self.redactor(&p.env).redact(&output)),
            started_at,
        };
        self.store.record_gate(gate, SYSTEM).await?;
        Ok(())
    }

    /// What replaces the secret values of `env` in any text stored or shown.
    pub fn redactor(&self, env: &EnvName) -> shipgate_core::secret::Redactor {
        let config = self.config();
        let mut redactor = config
            .environment(env)
            .map(shipgate_core::secret::Redactor::of)
            .unwrap_or_default();
        let mut known = self.vault.known(env);
        if let Some(e) = config.environment(env) {
            for r in e.secret_vars.values().filter(|r| r.env != *env) {
                known.extend(self.vault.known(&r.env));
            }
        }
        if !known.is_empty() {
            redactor = redactor.with(known);
        }
        redactor
    }

    /// The variables offered to `run` and `verify.tests` (`${URL}` ...), also exported as `SHIPGATE_*`.
    pub(crate) fn template_vars(
        &self,
        app: &AppName,
        env: &EnvName,
        version: &Version,
        digest: &str,
        promotion: Option<shipgate_core::PromotionId>,
    ) -> BTreeMap<String, String> {
        let url = self.env_url(env);
        let data_url = self
            .config()
            .app(app)
            .and_then(|a| a.data.as_ref()?.locations.get(env).cloned())
            .map(|l| match l {
                shipgate_core::config::DataLocation::Sqlite(path) => {
                    format!("sqlite://{}", path.display())
                }
                shipgate_core::config::DataLocation::Postgres(url) => url,
            });
        let mut vars = BTreeMap::from([
            ("APP".to_owned(), app.to_string()),
            ("ENV".to_owned(), env.to_string()),
            ("VERSION".to_owned(), version.to_string()),
            ("DIGEST".to_owned(), digest.to_owned()),
            ("URL".to_owned(), url),
            (
                "DATA_DIR".to_owned(),
                self.app_data_dir(app, env).display().to_string(),
            ),
            (
                "RELEASE_DIR".to_owned(),
                shipgate_core::Digest::parse(digest)
                    .map(|d| self.artifacts.release_dir(&d).display().to_string())
                    .unwrap_or_default(),
            ),
            (
                "CONFIG_DIR".to_owned(),
                self.config().server.config_dir.display().to_string(),
            ),
        ]);
        if let Some(data_url) = data_url {
            vars.insert("DATA_URL".to_owned(), data_url);
        }
        if let Some(api) = self.api_url() {
            vars.insert("OFREP_URL".to_owned(), api);
            if let Some(id) = promotion {
                vars.insert("OFREP_KEY".to_owned(), self.instance_flag_key(env, app, id));
            }
        }
        vars
    }

    pub(crate) fn exported_env(
        &self,
        env: &EnvName,
        vars: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut exported: BTreeMap<String, String> = self
            .config()
            .environment(env)
            .map(|e| e.vars.clone())
            .unwrap_or_default();
        for (k, v) in vars {
            exported.insert(format!("SHIPGATE_{k}"), v.clone());
        }
        exported
    }

    /// Ends a deploying promotion as failed at its gate `gate`: the environment keeps what it
    /// had.
    async fn fail_deploy(
        &self,
        promotion: &Promotion,
        gate: &str,
        message: String,
        started_at: jiff::Timestamp,
        what: String,
    ) -> Result<(), EngineError> {
        self.gate(promotion, gate, false, message.clone(), started_at)
            .await?;
        let mut t = self.step(
            promotion,
            PromotionState::Deploying,
            PromotionState::Failed,
            format!("{what}; {} keeps what it had", promotion.env),
        );
        t.reason = Some(first_line(&message));
        self.store.transition(t).await?;
        Ok(())
    }

    /// Starts an instance of the promotion's release; on failure returns the message to record.
    /// The instance's port is picked free and bound by the app a moment later: when the app
    /// says its address is already in use, something took the port in between, and the start
    /// is tried once more on another port.
    pub(crate) async fn start_instance(
        &self,
        p: &Promotion,
        slot: &Slot,
    ) -> Result<LiveInstance, String> {
        match self.start_instance_once(p, slot, "").await {
            Err(message) if lost_its_port(&message) => {
                tracing::warn!(
                    "instance of {}@{} lost its port before binding it; starting it again",
                    p.app,
                    p.version
                );
                self.start_instance_once(p, slot, "-2").await
            }
            other => other,
        }
    }

    async fn start_instance_once(
        &self,
        p: &Promotion,
        slot: &Slot,
        attempt: &str,
    ) -> Result<LiveInstance, String> {
        let config = self.config();
        let app = config
            .app(&p.app)
            .ok_or_else(|| format!("app `{}` is no longer in the config", p.app))?;
        // Registered through another server of the same database: brought here first.
        self.artifacts
            .fetch(self.store.as_ref(), &p.digest)
            .await
            .map_err(|e| e.to_string())?;
        let id = InstanceId::instance(&p.app, &p.env, p.id, self.boot, attempt);
        let log_path = self.log_path(slot, &id);
        self.rotate_instance_key(p)
            .await
            .map_err(|e| format!("could not record its OFREP key: {e}"))?;
        let vars = self.template_vars(&p.app, &p.env, &p.version, p.digest.as_str(), Some(p.id));
        let sandbox = self.sandbox_for(&p.app, &p.env);
        if sandbox.is_none() {
            // Unisolated: the server makes the data dir (a sandbox's own is made by the driver).
            let dir = self.app_data_dir(&p.app, &p.env);
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("could not make the data directory {}: {e}", dir.display()))?;
        }
        let image = self.image_run(&p.app, &p.env, &p.digest, &id).await?;
        if image.is_none() && app.run.trim().is_empty() {
            return Err(format!(
                "app `{}` has no `run`, which only an image release may leave out: set `run` in [apps.{}], or register the release with --image",
                p.app, p.app
            ));
        }
        let mut env = self.exported_env(&p.env, &vars);
        let secrets = self.secret_env(p).await?;
        let secret_names = secrets.keys().cloned().collect();
        env.extend(secrets);
        let req = StartInstance {
            instance_id: id.clone(),
            release_dir: self.artifacts.release_dir(&p.digest),
            command: app.run.clone(),
            env,
            template_vars: vars,
            health_path: app.health.clone(),
            health_timeout: app.health_timeout.as_std(),
            log_path: log_path.clone(),
            port: None,
            crash_loop: CrashLoopPolicy {
                crashes: app.crash_loop.crashes,
                within: app.crash_loop.within.as_std(),
            },
            sandbox,
            image,
            secret_names,
        };
        // Recorded before it is spawned, so a server killed during the health wait finds it
        // (by its SHIPGATE_INSTANCE marker) and stops it after the restart.
        let mut record =
            shipgate_store::InstanceRecord::starting(p, &id, log_path.display().to_string());
        self.store
            .put_instance(record.clone())
            .await
            .map_err(|e| format!("could not record instance {id}: {e}"))?;
        let started = match self.driver.start(req).await {
            Ok(started) => started,
            Err(e) => {
                self.stop_instance(&id, None).await;
                return Err(e.to_string());
            }
        };
        record.pid = Some(i64::from(started.pid));
        record.port = Some(i64::from(started.port));
        record.state = "running".into();
        if let Err(e) = self.store.put_instance(record).await {
            self.stop_instance(&id, Some(started.pid)).await;
            return Err(format!("could not record instance {id}: {e}"));
        }
        Ok(LiveInstance {
            id: id.clone(),
            target: RouteTarget {
                instance_id: id.clone(),
                addr: started.addr,
                label: format!("{}@{}", p.app, p.version),
            },
            log_path,
        })
    }

    /// Lets requests in flight on a replaced instance finish (up to `grace`), then stops it.
    /// Its OFREP key is revoked once no instance of its promotion runs.
    pub(crate) async fn retire(&self, instance: &LiveInstance, grace: std::time::Duration) {
        let record = self
            .store
            .running_instances()
            .await
            .ok()
            .and_then(|all| all.into_iter().find(|r| r.id == instance.id));
        self.driver.drain(&instance.id, grace).await;
        self.stop_instance(&instance.id, None).await;
        if let Some(record) = record {
            self.revoke_retired_instance_key(&record).await;
        }
    }

    /// Sends the slot's traffic to `to` (None: nothing is live).
    pub(crate) async fn route(
        &self,
        slot: &Slot,
        to: Option<&LiveInstance>,
    ) -> Result<(), EngineError> {
        self.driver
            .switch(
                slot.1.as_str(),
                slot.0.as_str(),
                to.map(|i| i.target.clone()),
            )
            .await
            .map(|_| ())
            .map_err(|e| EngineError::DataPlane(e.to_string()))
    }

    pub(crate) async fn stop_instance(&self, id: &InstanceId, pid: Option<u32>) {
        if let Err(e) = self
            .driver
            .stop(StopInstance {
                instance_id: id.clone(),
                pid,
                grace: STOP_GRACE,
            })
            .await
        {
            tracing::warn!("could not stop instance {id}: {e}");
        }
        if let Err(e) = self.store.mark_instance_stopped(id).await {
            tracing::warn!("could not record that instance {id} stopped: {e}");
        }
    }

    /// The live release recorded for a slot, as it was before a change.
    pub(crate) async fn live_record(
        &self,
        app: &AppName,
        env: &EnvName,
    ) -> Result<Option<LiveRelease>, EngineError> {
        Ok(self
            .store
            .live(Some(app))
            .await?
            .into_iter()
            .find(|l| &l.env == env))
    }
}

/// What is live, as events say it: `web@1.4.2`, or `nothing`.
pub(crate) fn live_name(live: Option<&LiveRelease>) -> String {
    live.map_or("nothing".to_owned(), |l| format!("{}@{}", l.app, l.version))
}

/// Whether a failed start's output says the app could not bind its address.
fn lost_its_port(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("address already in use") || m.contains("eaddrinuse")
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_owned()
}

/// Keeps the last 64 KiB of a gate's output.
fn keep_tail(mut s: String) -> String {
    const LIMIT: usize = 64 * 1024;
    if s.len() > LIMIT {
        let mut cut = s.len() - LIMIT;
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        s = format!("[... {cut} bytes cut ...]\n{}", &s[cut..]);
    }
    s
}

/// The promotions a rollback may go back to, of these apps (all when empty), newest first.
pub(crate) fn rollback_history(apps: Vec<AppName>) -> PromotionFilter {
    PromotionFilter {
        apps,
        states: vec![PromotionState::Succeeded, PromotionState::RolledBack],
        ..PromotionFilter::default()
    }
}

/// [`Engine::rollback_target`] from `history` (as [`rollback_history`] lists it; other slots'
/// promotions are passed over).
pub(crate) fn rollback_choice(
    history: &[Promotion],
    live: &LiveRelease,
    to: Option<&Version>,
) -> Result<Promotion, String> {
    let (app, env) = (&live.app, &live.env);
    let candidate = |p: &&Promotion| {
        &p.app == app
            && &p.env == env
            && match to {
                Some(v) => &p.version == v,
                None => p.id < live.promotion_id && p.version != live.version,
            }
    };
    if let Some(target) = history
        .iter()
        .filter(candidate)
        .find(|p| p.state == PromotionState::Succeeded)
    {
        return Ok(target.clone());
    }
    // Tell apart "never there" from "there, but rolled back since".
    let rolled_back = history.iter().find(candidate).map(|p| &p.version);
    Err(match (to, rolled_back) {
        (Some(v), _) if *v == live.version => format!("{app}@{v} is already live in {env}"),
        (_, Some(v)) => format!(
            "{app}@{v} was rolled back in {env}; to bring it back, promote it there again: shipgate promote {app}@{v} --to {env}"
        ),
        (Some(v), None) => format!(
            "{app}@{v} was never live in {env}; roll back only to a release that was (see: shipgate history {app} --env {env})"
        ),
        (None, None) => format!(
            "{env} has had no other verified release of {app} before {}; nothing to roll back to",
            live.version
        ),
    })
}
