//! Requirements before the deploy (`require.*`, freezes, overrides), approvals and rejections,
//! and auto-promotion. The rules are `shipgate_core::gate`'s; this module gathers the facts,
//! waits for them to change and records the outcome.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use shipgate_core::config::{EnvironmentConfig, Requirements};
use shipgate_core::gate::{
    self, Decision, DecisionAsk, EntryFacts, Freeze, Stage, Wait, check_decision,
};
use shipgate_core::promotion::check_entry;
use shipgate_core::{EnvName, Grant, PromotionState, ReleaseRef, Standing, Verdict};
use shipgate_store::{Event, NewDecision, Promotion, PromotionFilter};
use tokio::sync::broadcast::error::RecvError;

use crate::{Engine, EngineError, SYSTEM, locked};

/// Longest sleep between two looks at a waiting promotion's facts when no event arrives.
const RECHECK: Duration = Duration::from_secs(60);

impl Engine {
    /// What a promotion waits on now (empty when it waits on nothing or is not pending).
    pub fn waiting_on(&self, promotion_id: shipgate_core::PromotionId) -> Vec<Wait> {
        locked(&self.waiting)
            .get(&promotion_id)
            .map(|(waits, _)| waits.clone())
            .unwrap_or_default()
    }

    pub(crate) fn set_waiting(&self, promotion_id: shipgate_core::PromotionId, waits: Vec<Wait>) {
        let mut waiting = locked(&self.waiting);
        if waits.is_empty() {
            waiting.remove(&promotion_id);
        } else {
            waiting.insert(promotion_id, (waits, 0));
        }
    }

    /// Sets what a pending promotion waits on, worked out from `decided` decisions, unless what is
    /// there already was worked out from more: a look that began before an approval landed must
    /// not put back the approval it no longer waits on.
    fn set_entry_waits(
        &self,
        promotion_id: shipgate_core::PromotionId,
        waits: Vec<Wait>,
        decided: usize,
    ) {
        let mut waiting = locked(&self.waiting);
        if waiting
            .get(&promotion_id)
            .is_some_and(|(_, seen)| *seen > decided)
        {
            return;
        }
        waiting.insert(promotion_id, (waits, decided));
    }

    /// Works out again what a pending promotion waits on, so an answer given right after a
    /// decision already counts it.
    async fn refresh_entry_waits(&self, p: &Promotion) -> Result<(), EngineError> {
        let config = self.config();
        let Some(env) = config.environment(&p.env) else {
            return Ok(());
        };
        let decisions = self.store.decisions(p.id, Stage::Entry).await?;
        let decided = decisions.len();
        let facts = self.entry_facts(p, entered_from(env, p), decisions).await?;
        let waits = gate::waiting_on(&requirements_of(env, p), &facts.borrowed());
        self.set_entry_waits(p.id, waits, decided);
        Ok(())
    }

    /// Waits until the promotion's requirements hold (true) or it ended while waiting (false):
    /// superseded, rejected, or no longer allowed in by the entry rule.
    pub(crate) async fn await_requirements(&self, p: &Promotion) -> Result<bool, EngineError> {
        let config = self.config();
        let Some(env) = config.environment(&p.env) else {
            return Ok(true);
        };
        let mut events = self.store.subscribe();
        let started_at = self.clock.now();
        let facts = loop {
            let current = self.store.promotion(p.id).await?;
            if current.is_none_or(|c| c.state != PromotionState::Pending) {
                self.set_waiting(p.id, vec![]);
                return Ok(false);
            }
            let standing = match entered_from(env, p) {
                Some(before) => self.store.standing(&p.app, &p.version, before).await?,
                None => Standing::Unverified,
            };
            let release = ReleaseRef {
                app: p.app.clone(),
                version: p.version.clone(),
            };
            let entry = if p.kind == shipgate_core::PromotionKind::Hotfix {
                shipgate_core::promotion::check_hotfix_entry(
                    &config,
                    &release,
                    &p.digest,
                    &p.env,
                    |_| standing,
                )
            } else {
                check_entry(&config, &release, &p.digest, &p.env, |_| standing)
            };
            if let Err(refusal) = entry {
                self.end_pending(p, format!("no longer allowed in: {refusal}"))
                    .await?;
                return Ok(false);
            }
            let decisions = self.store.decisions(p.id, Stage::Entry).await?;
            let decided = decisions.len();
            if let Some(rejection) = decisions.iter().find(|d| d.verdict == Verdict::Reject) {
                let why = format!(
                    "rejected by {}: {}",
                    rejection.actor,
                    rejection.comment.as_deref().unwrap_or("")
                );
                self.gate(p, "approvals", false, why.clone(), started_at)
                    .await?;
                self.end_pending(p, why).await?;
                return Ok(false);
            }
            let facts = self.entry_facts(p, entered_from(env, p), decisions).await?;
            let waits = gate::waiting_on(&requirements_of(env, p), &facts.borrowed());
            if waits.is_empty() {
                break facts;
            }
            let next = waits.iter().filter_map(Wait::until).min();
            self.set_entry_waits(p.id, waits, decided);
            let sleep = next
                .and_then(|t| Duration::try_from(t.duration_since(self.clock.now())).ok())
                .map_or(RECHECK, |d| (d + Duration::from_millis(5)).min(RECHECK));
            tokio::select! {
                got = next_relevant(&mut events, p) => if got.is_none() { return Ok(false) },
                () = self.clock.sleep_until(crate::clock::after(self.clock.now(), sleep)) => {}
            }
        };
        self.set_waiting(p.id, vec![]);
        self.record_entry_gates(p, &facts, started_at).await?;
        Ok(true)
    }

    async fn entry_facts(
        &self,
        p: &Promotion,
        after: Option<&EnvName>,
        decisions: Vec<Decision>,
    ) -> Result<OwnedFacts, EngineError> {
        let verified_before_at = match after {
            Some(after) => self.store.verified_at(&p.app, &p.version, after).await?,
            None => None,
        };
        let freezes = self
            .store
            .freezes()
            .await?
            .into_iter()
            .filter(|f| f.env.as_ref().is_none_or(|e| e == &p.env))
            .collect();
        let overridden = self.store.override_of(p.id).await?;
        let signoff = match self
            .config()
            .environment(&p.env)
            .and_then(|e| requirements_of(e, p).signoff)
        {
            Some(there) => {
                let progress = self.signoff_progress(p, &there).await?;
                Some((there, progress))
            }
            None => None,
        };
        let parity = match self
            .config()
            .environment(&p.env)
            .and_then(|e| requirements_of(e, p).parity)
        {
            Some(with) => {
                let counts_schema = self
                    .config()
                    .environment(&p.env)
                    .is_some_and(|e| e.parity_schema);
                let diff = self.diff(&p.app, &with, &p.env).await?;
                let left = shipgate_core::parity::blocking_entry(&diff.items, counts_schema);
                Some((with, left))
            }
            None => None,
        };
        let backup = match self
            .config()
            .environment(&p.env)
            .and_then(|e| e.require.backup_within)
        {
            Some(within) => self.backup_missing(p, within.as_std()).await?,
            None => None,
        };
        Ok(OwnedFacts {
            parity,
            signoff,
            backup,
            after: after.cloned(),
            verified_before_at,
            decisions,
            freezes,
            overridden,
            now: self.clock.now(),
        })
    }

    /// Records, once the requirements hold, what each of them saw.
    async fn record_entry_gates(
        &self,
        p: &Promotion,
        facts: &OwnedFacts,
        started_at: Timestamp,
    ) -> Result<(), EngineError> {
        let config = self.config();
        let Some(env) = config.environment(&p.env) else {
            return Ok(());
        };
        let req = &requirements_of(env, p);
        if let Some(rule) = &req.approvals {
            let approvers = gate::counted_approvers(rule, &facts.decisions);
            let comments: Vec<String> = facts
                .decisions
                .iter()
                .filter(|d| approvers.contains(&d.actor))
                .map(|d| match &d.comment {
                    Some(c) => format!("{} at {}: {c}", d.actor, d.at),
                    None => format!("{} at {}", d.actor, d.at),
                })
                .collect();
            let output = format!(
                "{} of {} approvals, requested by {}\n{}",
                approvers.len(),
                rule.count,
                p.requested_by,
                comments.join("\n")
            );
            self.gate(p, "approvals", true, output, started_at).await?;
        }
        if let (Some(soak), Some(after), Some(at)) =
            (req.soak, &facts.after, facts.verified_before_at)
        {
            let output = format!("verified in {after} since {at}, soak {soak} ended");
            self.gate(p, "soak", true, output, started_at).await?;
        }
        if let (Some((with, left)), None) = (&facts.parity, &facts.overridden) {
            let output = format!(
                "no unexpected difference with {with} besides the release{}",
                if left.is_empty() { "" } else { " (overridden)" }
            );
            self.gate(p, "parity", true, output, started_at).await?;
        }
        if let Some((there, None)) = &facts.signoff {
            let output = format!("{}@{} is signed off in {there}", p.app, p.version);
            self.gate(p, "signoff", true, output, started_at).await?;
        }
        if let Some(o) = &facts.overridden {
            let output = format!(
                "deploy windows and freezes overridden by {} at {}: {}",
                o.actor, o.at, o.reason
            );
            self.gate(p, "override", true, output, started_at).await?;
        } else if let Some(shipgate_core::window::WindowState::Open { closes }) =
            shipgate_core::window::state_of(&req.windows, facts.now)
        {
            let output = format!("deploy window open until {closes}");
            self.gate(p, "window", true, output, started_at).await?;
        }
        Ok(())
    }

    /// Ends a pending promotion as failed, with why.
    pub(crate) async fn end_pending(
        &self,
        p: &Promotion,
        reason: String,
    ) -> Result<(), EngineError> {
        self.set_waiting(p.id, vec![]);
        let mut t = self.step(
            p,
            PromotionState::Pending,
            PromotionState::Failed,
            format!("{}@{} will not enter {}: {reason}", p.app, p.version, p.env),
        );
        t.reason = Some(reason);
        match self.store.transition(t).await {
            Ok(_) | Err(shipgate_store::StoreError::StateConflict { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Records an approval (or rejection) of `release`'s promotion into `env` by `grant`: the
    /// pending one, or the verifying one whose watch is held for a person.
    pub async fn decide(
        &self,
        release: &ReleaseRef,
        env: &EnvName,
        grant: &Grant,
        verdict: Verdict,
        comment: Option<String>,
    ) -> Result<(Promotion, Decision), EngineError> {
        let config = self.config();
        let Some(env_config) = config.environment(env) else {
            return Err(EngineError::UnknownEnvironment(env.to_string()));
        };
        let open = PromotionFilter {
            app: Some(release.app.clone()),
            env: Some(env.clone()),
            version: None,
            apps: Vec::new(),
            states: PromotionState::UNFINISHED.to_vec(),
            limit: None,
        };
        let promotion = self
            .store
            .promotions(open)
            .await?
            .into_iter()
            .find(|p| p.version == release.version && p.kind.is_forward());
        let held = |p: &Promotion| {
            self.waiting_on(p.id)
                .iter()
                .any(|w| matches!(w, Wait::Decision { .. }))
        };
        let (promotion, stage) = match promotion {
            Some(p) if p.state == PromotionState::Pending => (p, Stage::Entry),
            Some(p) if held(&p) => (p, Stage::Watch),
            // A rejection while it deploys or is verified ends it at once.
            Some(p) if verdict == Verdict::Reject => (p, Stage::Watch),
            Some(p) if p.state == PromotionState::SigningOff => {
                return Err(EngineError::NothingToDecide(format!(
                    "{release} waits in {env} for its testers' sign-off, not for an approval (shipgate signoff status {release} --env {env}); reject it to roll back now (shipgate reject {release} --env {env} --comment WHY)"
                )));
            }
            Some(_) => {
                return Err(EngineError::NothingToDecide(format!(
                    "{release} is being verified in {env} and passes or fails by itself; reject it to roll back now (shipgate reject {release} --env {env} --comment WHY)"
                )));
            }
            None => {
                return Err(EngineError::NothingToDecide(format!(
                    "{release} has no promotion into {env} waiting for a decision (see: shipgate status {})",
                    release.app
                )));
            }
        };
        let rule = env_config.require.approvals.as_ref();
        if stage == Stage::Entry && verdict == Verdict::Approve && rule.is_none() {
            return Err(EngineError::NothingToDecide(format!(
                "{env} does not require approvals, so there is nothing to approve; {release} waits on: {}",
                describe(&self.waiting_on(promotion.id))
            )));
        }
        let earlier = self.store.decisions(promotion.id, stage).await?;
        let (requested_by, caused_by) = self.people_behind(&promotion).await?;
        let wanted = rule
            .and_then(|r| r.role)
            .unwrap_or(shipgate_core::Role::Approver);
        let grant = &self
            .as_person(&grant.in_env(env, &[wanted, shipgate_core::Role::Admin]))
            .await?;
        let ask = DecisionAsk {
            subject: "promotion",
            stage,
            requested_by: &requested_by,
            caused_by: &caused_by,
            grant,
            verdict,
            comment: comment.as_deref(),
        };
        check_decision(rule, env, &ask, &earlier)?;
        let decision = self
            .store
            .record_decision(NewDecision {
                promotion_id: promotion.id,
                stage,
                actor: grant.person().to_owned(),
                role: grant.role,
                verdict,
                comment,
            })
            .await?;
        if stage == Stage::Entry && verdict == Verdict::Approve {
            self.refresh_entry_waits(&promotion).await?;
        }
        if verdict == Verdict::Reject {
            let why = match decision.comment.as_deref() {
                Some(c) if !c.is_empty() => format!("rejected by {}: {c}", decision.actor),
                _ => format!("rejected by {}", decision.actor),
            };
            self.stop(promotion.id, &why);
        }
        Ok((promotion, decision))
    }

    /// The person who asked for `p` (`shipgate` for an automatic promotion) and, for an
    /// automatic one, the people who caused it: who asked for the promotion of the same release
    /// into the environment before, back through automatic ones to a person. Derived from the
    /// history, so nothing about it can be forgotten or stored wrong.
    pub(crate) async fn people_behind(
        &self,
        p: &Promotion,
    ) -> Result<(String, Vec<String>), EngineError> {
        let persons = self.persons().await?;
        let requested_by = persons(&p.requested_by);
        let config = self.config();
        let mut caused_by = Vec::new();
        let mut at = p.clone();
        while at.requested_by == SYSTEM {
            let Some(after) = config.environment(&at.env).and_then(|e| e.after.clone()) else {
                break;
            };
            let before = PromotionFilter {
                app: Some(at.app.clone()),
                env: Some(after),
                version: Some(at.version.clone()),
                apps: Vec::new(),
                states: vec![PromotionState::Succeeded],
                limit: None,
            };
            let Some(before) = self
                .store
                .promotions(before)
                .await?
                .into_iter()
                .filter(|b| b.id < at.id && b.kind.is_forward())
                .max_by_key(|b| b.id)
            else {
                break;
            };
            if before.requested_by != SYSTEM {
                caused_by.push(persons(&before.requested_by));
            }
            at = before;
        }
        Ok((requested_by, caused_by))
    }

    /// The person behind each actor name: a token's `person` (or its name), then whoever
    /// signed in at the identity provider under that name or email (their subject).
    pub(crate) async fn persons(&self) -> Result<impl Fn(&str) -> String, EngineError> {
        let tokens = self.store.tokens().await?;
        let people: std::collections::HashMap<String, String> =
            self.store.people().await?.into_iter().collect();
        Ok(move |name: &str| {
            let named = tokens
                .iter()
                .find(|t| t.name == name)
                .and_then(|t| t.person.clone())
                .unwrap_or_else(|| name.to_owned());
            people.get(&named).cloned().unwrap_or(named)
        })
    }

    /// `grant` as the person behind it (see [`Engine::persons`]): a token whose `person` is
    /// the email someone signs in with is that person.
    pub(crate) async fn as_person(
        &self,
        grant: &shipgate_core::Grant,
    ) -> Result<shipgate_core::Grant, EngineError> {
        let person = (self.persons().await?)(grant.person());
        Ok(shipgate_core::Grant {
            person: Some(person),
            ..grant.clone()
        })
    }

    /// Freezes one environment or all of them: pending promotions there wait until it is lifted.
    pub async fn freeze(
        &self,
        env: Option<&EnvName>,
        reason: &str,
        actor: &str,
    ) -> Result<Freeze, EngineError> {
        if let Some(env) = env.filter(|e| self.config().environment(e).is_none()) {
            return Err(EngineError::UnknownEnvironment(env.to_string()));
        }
        Ok(self.store.freeze(env, reason, actor).await?)
    }

    /// Lifts the freeze of exactly that scope.
    pub async fn unfreeze(
        &self,
        env: Option<&EnvName>,
        actor: &str,
    ) -> Result<Freeze, EngineError> {
        Ok(self.store.unfreeze(env, actor).await?)
    }

    /// After `p` succeeded, promotes its release into every `auto = true` environment after it.
    pub(crate) async fn auto_promote(self: &Arc<Self>, p: &Promotion) {
        let config = self.config();
        let release = ReleaseRef {
            app: p.app.clone(),
            version: p.version.clone(),
        };
        let next = config
            .environments
            .iter()
            .filter(|e| e.auto && e.after.as_ref() == Some(&p.env));
        for env in next {
            if let Err(e) = self.promote(&release, &env.name, SYSTEM, None).await {
                let event = shipgate_store::NewEvent {
                    actor: SYSTEM.into(),
                    kind: shipgate_core::EventKind::PromotionAutoRefused,
                    app: Some(p.app.to_string()),
                    env: Some(env.name.to_string()),
                    promotion_id: Some(p.id),
                    message: format!(
                        "{release} was not promoted into {} automatically: {e}",
                        env.name
                    ),
                    data: serde_json::json!({ "version": p.version }),
                };
                if let Err(e) = self.store.append_event(event).await {
                    tracing::error!("could not record a refused auto-promotion: {e}");
                }
            }
        }
    }

    /// Waits for a person's decision on a verifying promotion whose watch was inconclusive.
    /// Returns the failure reason when they rejected it.
    pub(crate) async fn await_watch_decision(
        &self,
        p: &Promotion,
        watched: String,
    ) -> Result<Option<String>, EngineError> {
        let mut events = self.store.subscribe();
        self.set_waiting(p.id, vec![Wait::Decision { watched }]);
        let started_at = self.clock.now();
        loop {
            let decisions = self.store.decisions(p.id, Stage::Watch).await?;
            if let Some(d) = decisions.first() {
                self.set_waiting(p.id, vec![]);
                let comment = d.comment.as_deref().unwrap_or("");
                let output = format!("{} by {}: {comment}", d.verdict.past(), d.actor);
                let approved = d.verdict == Verdict::Approve;
                self.gate(p, "watch decision", approved, output.clone(), started_at)
                    .await?;
                return Ok((!approved).then_some(output));
            }
            if next_relevant(&mut events, p).await.is_none() {
                return Ok(Some(
                    "the server stopped while waiting for a decision".into(),
                ));
            }
        }
    }
}

/// The waits as one line.
/// The environment `p` must have been verified in to enter its own: the lane's `from` for a
/// hotfix, else `after`.
fn entered_from<'a>(env: &'a EnvironmentConfig, p: &Promotion) -> Option<&'a EnvName> {
    match (&env.hotfix, p.kind) {
        (Some(lane), shipgate_core::PromotionKind::Hotfix) => Some(&lane.from),
        _ => env.after.as_ref(),
    }
}

/// What `p` must wait for to enter `env`: `require`, less what a hotfix lane skips.
fn requirements_of(env: &EnvironmentConfig, p: &Promotion) -> Requirements {
    let mut req = env.require.clone();
    if let (Some(lane), shipgate_core::PromotionKind::Hotfix) = (&env.hotfix, p.kind) {
        for skipped in &lane.skip {
            match skipped.as_str() {
                "require.soak" => req.soak = None,
                "require.window" => req.windows.clear(),
                "require.parity" => req.parity = None,
                "require.signoff" => req.signoff = None,
                _ => {}
            }
        }
    }
    req
}

pub(crate) fn describe(waits: &[Wait]) -> String {
    if waits.is_empty() {
        return "nothing".to_owned();
    }
    waits
        .iter()
        .map(Wait::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The next event that may change what `p` waits on; None once the store is gone.
async fn next_relevant(
    events: &mut tokio::sync::broadcast::Receiver<Event>,
    p: &Promotion,
) -> Option<()> {
    loop {
        match events.recv().await {
            Ok(e) if relevant(&e, p) => return Some(()),
            Ok(_) => {}
            // Missed some: look again rather than guess which.
            Err(RecvError::Lagged(_)) => return Some(()),
            Err(RecvError::Closed) => return None,
        }
    }
}

fn relevant(e: &Event, p: &Promotion) -> bool {
    use shipgate_core::EventKind;
    matches!(
        e.kind,
        EventKind::Approved
            | EventKind::Rejected
            | EventKind::EnvironmentFrozen
            | EventKind::EnvironmentUnfrozen
    ) || (matches!(e.kind.family(), "promotion" | "signoff" | "backup")
        && e.app.as_deref() == Some(p.app.as_str()))
}

/// [`EntryFacts`] with owned parts, so they can be kept after the wait.
struct OwnedFacts {
    after: Option<EnvName>,
    verified_before_at: Option<Timestamp>,
    decisions: Vec<Decision>,
    freezes: Vec<Freeze>,
    overridden: Option<shipgate_store::Override>,
    parity: Option<(EnvName, Vec<String>)>,
    signoff: Option<(EnvName, Option<String>)>,
    backup: Option<String>,
    now: Timestamp,
}

impl OwnedFacts {
    fn borrowed(&self) -> EntryFacts<'_> {
        EntryFacts {
            after: self.after.as_ref(),
            verified_before_at: self.verified_before_at,
            decisions: &self.decisions,
            freezes: &self.freezes,
            overridden: self.overridden.is_some(),
            parity: self.parity.as_ref().map(|(e, d)| (e, d.clone())),
            signoff: self.signoff.as_ref().map(|(e, s)| (e, s.clone())),
            backup: self.backup.clone(),
            now: self.now,
        }
    }
}
