//! User acceptance sign-off (`[environments.NAME.signoff]`): a verified release waits in
//! `signing_off`, live, until someone with the role passed each scenario; one fail ends it and
//! the environment goes back to what it had. A server stopped meanwhile (kill -9 included)
//! carries on where it was: the sheet is in the store. Who may sign is
//! `shipgate_core::signoff`'s rule; `require.signoff` elsewhere waits on a completed sheet.

use std::sync::Arc;

use shipgate_api::answers::{ScenarioStatus, SignoffStatus};
use shipgate_core::config::SignoffConfig;
use shipgate_core::gate::Wait;
use shipgate_core::signoff::{
    self, Outcome, SignoffAsk, SignoffEntry, SignoffSheet, SignoffVerdict,
};
use shipgate_core::{EnvName, EventKind, Grant, PromotionState, ReleaseRef};
use shipgate_store::{
    LiveChange, NewEvent, NewSignoff, NewSignoffRequest, Promotion, PromotionFilter,
};
use tokio::sync::broadcast::error::RecvError;

use crate::{Engine, EngineError, SYSTEM};

impl Engine {
    /// Moves verified `p` to `signing_off`, with what its testers must pass.
    pub(crate) async fn request_signoff(
        &self,
        p: &Promotion,
        rules: &SignoffConfig,
    ) -> Result<Promotion, EngineError> {
        let message = format!(
            "{}@{} is verified in {} and waits for its sign-off (shipgate signoff status {}@{} --env {})",
            p.app, p.version, p.env, p.app, p.version, p.env
        );
        Ok(self
            .store
            .request_signoff(NewSignoffRequest {
                promotion_id: p.id,
                role: rules.role,
                scenarios: rules.scenarios.clone(),
                actor: SYSTEM.into(),
                message,
            })
            .await?)
    }

    /// Waits until `p`'s sheet is complete (None) or has a fail (why), and records the gate.
    pub(crate) async fn await_signoff(&self, p: &Promotion) -> Result<Option<String>, EngineError> {
        let mut events = self.store.subscribe();
        loop {
            let sheet = self.store.signoff_sheet(p.id).await?.ok_or_else(|| {
                EngineError::NoSignoff(format!("promotion {} has no sign-off", p.id))
            })?;
            let outcome = sheet.outcome();
            self.set_waiting(
                p.id,
                match outcome {
                    Outcome::Open(_) => vec![Wait::Signoff {
                        env: p.env.clone(),
                        progress: format!(
                            "{} (shipgate signoff {}@{} --env {} --scenario NAME --pass, or the dashboard)",
                            sheet.progress(),
                            p.app,
                            p.version,
                            p.env
                        ),
                    }],
                    _ => vec![],
                },
            );
            match outcome {
                Outcome::Failed(fail) => {
                    let why = format!(
                        "`{}` failed its sign-off by {}: {}",
                        fail.scenario,
                        fail.by,
                        fail.note.as_deref().unwrap_or("")
                    );
                    self.gate(p, "signoff", false, sheet_lines(&sheet), sheet.requested_at)
                        .await?;
                    return Ok(Some(why));
                }
                Outcome::Complete => {
                    self.gate(p, "signoff", true, sheet_lines(&sheet), sheet.requested_at)
                        .await?;
                    let message = format!(
                        "{}@{} is signed off in {}: {}",
                        p.app,
                        p.version,
                        p.env,
                        sheet.progress()
                    );
                    self.store
                        .append_event(NewEvent {
                            actor: SYSTEM.into(),
                            kind: EventKind::SignoffCompleted,
                            app: Some(p.app.to_string()),
                            env: Some(p.env.to_string()),
                            promotion_id: Some(p.id),
                            message,
                            data: serde_json::json!({ "version": p.version, "scenarios": sheet.scenarios }),
                        })
                        .await?;
                    return Ok(None);
                }
                Outcome::Open(_) => {}
            }
            loop {
                match events.recv().await {
                    Ok(e) if e.promotion_id == Some(p.id) && e.kind.family() == "signoff" => break,
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => break,
                    // The server is going down: the sign-off carries on after its restart.
                    Err(RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        }
    }

    /// After a restart: each promotion that was signing off waits on, its release live.
    pub(crate) async fn resume_signoffs(self: &Arc<Self>) -> Result<(), EngineError> {
        let waiting = PromotionFilter {
            states: vec![PromotionState::SigningOff],
            ..Default::default()
        };
        for p in self.store.promotions(waiting).await? {
            let engine = Arc::clone(self);
            tokio::spawn(async move {
                if let Err(e) = engine.resume_signoff(&p).await {
                    tracing::error!("the sign-off of {}@{} in {}: {e}", p.app, p.version, p.env);
                }
            });
        }
        Ok(())
    }

    async fn resume_signoff(self: &Arc<Self>, p: &Promotion) -> Result<(), EngineError> {
        let slot = (p.app.clone(), p.env.clone());
        let mut stop = self.stop_signal(p.id);
        let lock = self.slot_lock(&slot);
        let _held = lock.lock().await;
        let failure = tokio::select! {
            biased;
            why = stop.asked_later() => Some(why),
            judged = self.await_signoff(p) => judged?,
        };
        self.set_waiting(p.id, vec![]);
        let release = format!("{}@{}", p.app, p.version);
        let Some(reason) = failure else {
            let t = self.step(
                p,
                PromotionState::SigningOff,
                PromotionState::Succeeded,
                format!("{release} is signed off and verified in {}", p.env),
            );
            let succeeded = self.store.transition(t).await?;
            self.used_by_deploy(&succeeded.env).await;
            self.auto_promote(&succeeded).await;
            return Ok(());
        };
        // What was live before it: its instance may be a warm standby still, or else starts.
        let previous = self.live_before(p).await?;
        let back = crate::flow::live_name(previous.as_ref());
        let mut t = self.step(
            p,
            PromotionState::SigningOff,
            PromotionState::Failed,
            format!(
                "{release} was not signed off in {}: {reason}; {} is back on {back}",
                p.env, p.env
            ),
        );
        t.reason = Some(reason);
        t.live = LiveChange::Restore(previous.clone());
        self.store.transition(t).await?;
        let current = self.live_instance(&slot);
        let serving = match &previous {
            Some(live) => {
                let standby = self
                    .standby_of(&slot)
                    .filter(|s| s.live.version == live.version && s.live.digest == live.digest);
                match standby {
                    Some(s) => {
                        crate::locked(&self.standby).remove(&slot);
                        Some(s.instance)
                    }
                    None => {
                        let before = self
                            .store
                            .promotion(live.promotion_id)
                            .await?
                            .ok_or(EngineError::NoSuchPromotion(live.promotion_id))?;
                        match self.start_instance(&before, &slot).await {
                            Ok(i) => Some(i),
                            Err(message) => {
                                self.unavailable(live, &message).await?;
                                None
                            }
                        }
                    }
                }
            }
            None => None,
        };
        self.route(&slot, serving.as_ref()).await?;
        self.set_live_instance(slot.clone(), serving);
        if let Some(current) = current {
            self.retire_later(slot, current);
        }
        Ok(())
    }

    /// When `p` waits for its turn behind a release that waits for its sign-off in the same
    /// environment, says so as what `p` waits on.
    pub(crate) async fn say_signoff_holds(&self, p: &Promotion) -> Result<(), EngineError> {
        let signing = PromotionFilter {
            app: Some(p.app.clone()),
            env: Some(p.env.clone()),
            states: vec![PromotionState::SigningOff],
            ..Default::default()
        };
        if let Some(q) = self.store.promotions(signing).await?.first() {
            let before = format!("{}@{}", q.app, q.version);
            self.set_waiting(
                p.id,
                vec![Wait::Signoff {
                    env: p.env.clone(),
                    progress: format!(
                        "{before} waits for its sign-off here first; pass or fail its scenarios (shipgate signoff status {before} --env {}), or end it: shipgate reject {before} --env {} --comment WHY",
                        p.env, p.env
                    ),
                }],
            );
        }
        Ok(())
    }

    /// Records a tester's pass or fail of one scenario of `release`'s sign-off in `env`.
    pub async fn sign_off(
        &self,
        release: &ReleaseRef,
        env: &EnvName,
        grant: &Grant,
        scenario: &str,
        verdict: SignoffVerdict,
        note: Option<String>,
    ) -> Result<SignoffStatus, EngineError> {
        let (p, sheet) = self.sheet_of(release, env).await?;
        if p.state != PromotionState::SigningOff {
            let now = match sheet.outcome() {
                Outcome::Complete => "its sign-off is complete".to_owned(),
                Outcome::Failed(f) => format!("its sign-off failed (`{}` by {})", f.scenario, f.by),
                Outcome::Open(_) => format!("its promotion ended {} first", p.state),
            };
            return Err(EngineError::NoSignoff(format!(
                "{release} waits for no sign-off in {env}: {now} (promote a release there again to sign it off anew)"
            )));
        }
        let (requested_by, caused_by) = self.people_behind(&p).await?;
        let mut people = vec![requested_by];
        people.extend(caused_by);
        let scenario = scenario.trim();
        let note = note.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
        let grant = &self
            .as_person(&grant.in_env(env, &[sheet.role, shipgate_core::Role::Admin]))
            .await?;
        let ask = SignoffAsk {
            grant,
            scenario,
            verdict,
            note: note.as_deref(),
            requested_by: &people,
        };
        signoff::check(&sheet, &ask)?;
        self.store
            .record_signoff(NewSignoff {
                promotion_id: p.id,
                entry: SignoffEntry {
                    scenario: scenario.to_owned(),
                    by: grant.person().to_owned(),
                    token: grant.name.clone(),
                    verdict,
                    note,
                    at: self.clock.now(),
                },
            })
            .await?;
        self.signoff_status(release, env).await
    }

    /// `release`'s sign-off in `env`: its scenarios, who signed what, and what changed since
    /// the release signed off there before.
    pub async fn signoff_status(
        &self,
        release: &ReleaseRef,
        env: &EnvName,
    ) -> Result<SignoffStatus, EngineError> {
        let (p, sheet) = self.sheet_of(release, env).await?;
        let outcome = match sheet.outcome() {
            Outcome::Failed(_) => "failed",
            Outcome::Complete => "complete",
            Outcome::Open(_) if p.state == PromotionState::SigningOff => "open",
            Outcome::Open(_) => "ended",
        };
        let progress = match (outcome, &p.reason) {
            ("ended", Some(why)) => format!("{}; it ended: {why}", sheet.progress()),
            _ => sheet.progress(),
        };
        // The release signed off here before this one.
        let earlier = self
            .store
            .promotions(PromotionFilter {
                app: Some(p.app.clone()),
                env: Some(p.env.clone()),
                states: vec![PromotionState::Succeeded, PromotionState::RolledBack],
                ..Default::default()
            })
            .await?;
        let mut since = None;
        for e in earlier
            .into_iter()
            .filter(|e| e.id < p.id && e.version != p.version)
        {
            let complete = self
                .store
                .signoff_sheet(e.id)
                .await?
                .is_some_and(|s| s.outcome() == Outcome::Complete);
            if complete && since.as_ref().is_none_or(|s: &Promotion| s.id < e.id) {
                since = Some(e);
            }
        }
        let mut releases = self.store.releases(Some(&p.app)).await?;
        releases.sort_by_key(|r| r.created_at);
        let this_at = releases
            .iter()
            .find(|r| r.version == p.version)
            .map(|r| r.created_at);
        let since_at = since.as_ref().and_then(|s| {
            releases
                .iter()
                .find(|r| r.version == s.version)
                .map(|r| r.created_at)
        });
        let changes = releases
            .into_iter()
            .filter(|r| this_at.is_some_and(|t| r.created_at <= t))
            .filter(|r| match since_at {
                Some(s) => r.created_at > s,
                None => r.version == p.version,
            })
            .rev()
            .collect();
        let scenarios = sheet
            .scenarios
            .iter()
            .map(|name| ScenarioStatus {
                name: name.clone(),
                entries: sheet
                    .entries
                    .iter()
                    .filter(|e| &e.scenario == name)
                    .cloned()
                    .collect(),
            })
            .collect();
        let (requested_by, _) = self.people_behind(&p).await?;
        Ok(SignoffStatus {
            outcome: outcome.to_owned(),
            progress,
            role: sheet.role,
            url: self.env_url(&p.env),
            requested_at: sheet.requested_at,
            scenarios,
            since: since.map(|s| format!("{}@{}", s.app, s.version)),
            changes,
            requested_by,
            promotion: p,
        })
    }

    /// The latest promotion of `release` into `env` that was asked for a sign-off, with its
    /// sheet; refused with what to do when there is none.
    async fn sheet_of(
        &self,
        release: &ReleaseRef,
        env: &EnvName,
    ) -> Result<(Promotion, SignoffSheet), EngineError> {
        let config = self.config();
        let Some(env_config) = config.environment(env) else {
            return Err(EngineError::UnknownEnvironment(env.to_string()));
        };
        let mut promotions = self
            .store
            .promotions(PromotionFilter {
                app: Some(release.app.clone()),
                env: Some(env.clone()),
                version: Some(release.version.clone()),
                ..Default::default()
            })
            .await?;
        promotions.retain(|p| p.kind.is_forward());
        promotions.sort_by_key(|p| std::cmp::Reverse(p.id));
        for p in &promotions {
            if let Some(sheet) = self.store.signoff_sheet(p.id).await? {
                return Ok((p.clone(), sheet));
            }
        }
        let why = match (promotions.first(), &env_config.signoff) {
            (_, None) => format!(
                "{env} takes no sign-off: add [environments.{env}.signoff] with its scenarios to the config"
            ),
            (None, _) => format!(
                "{release} was never promoted into {env} (shipgate promote {release} --to {env})"
            ),
            (Some(p), _) if !p.state.is_terminal() => format!(
                "{release} is {} in {env}; its sign-off begins once it is verified (shipgate status {})",
                p.state, release.app
            ),
            (Some(p), _) => format!(
                "{release} ended {} in {env} before its sign-off (shipgate history {} --env {env})",
                p.state, release.app
            ),
        };
        Err(EngineError::NoSignoff(why))
    }

    /// With `require.signoff = ENV`: where `p`'s release stands in ENV's sign-off, or None once
    /// that very digest completed it there.
    pub(crate) async fn signoff_progress(
        &self,
        p: &Promotion,
        env: &EnvName,
    ) -> Result<Option<String>, EngineError> {
        let release = ReleaseRef {
            app: p.app.clone(),
            version: p.version.clone(),
        };
        let mut there = self
            .store
            .promotions(PromotionFilter {
                app: Some(p.app.clone()),
                env: Some(env.clone()),
                version: Some(p.version.clone()),
                ..Default::default()
            })
            .await?;
        there.retain(|q| q.kind.is_forward() && q.digest == p.digest);
        there.sort_by_key(|q| std::cmp::Reverse(q.id));
        for q in there
            .iter()
            .filter(|q| q.state == PromotionState::Succeeded)
        {
            if self
                .store
                .signoff_sheet(q.id)
                .await?
                .is_some_and(|s| s.outcome() == Outcome::Complete)
            {
                return Ok(None);
            }
        }
        let status = format!("shipgate signoff status {release} --env {env}");
        Ok(Some(match there.first() {
            None => format!(
                "{release} was not promoted there yet (shipgate promote {release} --to {env})"
            ),
            Some(q) if q.state == PromotionState::SigningOff => {
                match self.store.signoff_sheet(q.id).await? {
                    Some(sheet) => format!("{} ({status})", sheet.progress()),
                    None => format!("waiting ({status})"),
                }
            }
            Some(q) if !q.state.is_terminal() => {
                format!(
                    "{release} is {} there; its sign-off begins once it is verified",
                    q.state
                )
            }
            Some(q) => format!(
                "its promotion there ended {} without a completed sign-off ({status}); promote it there again",
                q.state
            ),
        }))
    }

    /// Records that `live` could not be started again.
    pub(crate) async fn unavailable(
        &self,
        live: &shipgate_store::LiveRelease,
        message: &str,
    ) -> Result<(), EngineError> {
        self.store
            .append_event(NewEvent {
                actor: SYSTEM.into(),
                kind: EventKind::EnvironmentUnavailable,
                app: Some(live.app.to_string()),
                env: Some(live.env.to_string()),
                promotion_id: Some(live.promotion_id),
                message: format!(
                    "{}@{} could not be started again in {}: {message}",
                    live.app, live.version, live.env
                ),
                data: serde_json::json!({ "version": live.version }),
            })
            .await?;
        Ok(())
    }
}

/// A sheet as a gate's output: each pass and fail on its line.
fn sheet_lines(sheet: &SignoffSheet) -> String {
    let mut out = sheet.progress();
    for e in &sheet.entries {
        out.push_str(&format!(
            "\n{} `{}` by {} at {}{}",
            e.verdict,
            e.scenario,
            e.by,
            e.at,
            e.note
                .as_deref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        ));
    }
    out
}
