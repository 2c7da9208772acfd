//! `[environments.NAME.canary]`: between a promotion's deploy and its switch, the new release
//! takes a growing share of the requests, step by step; each step is judged against the stable
//! release in the same window ([`shipgate_core::canary::judge`]). A failed step, `canary
//! abort`, `reject` or `rollback` puts the share to 0% at once, on every host; after the last
//! step the promotion switches as any other and its `verify` follows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shipgate_api::status::{CanaryState, CanaryView, SideFigures};
use shipgate_core::canary::{
    Decision, Figures, Move, Side, Stage, Step, interim, judge, next, quantile,
};
use shipgate_core::config::CanaryConfig;
use shipgate_core::{AppName, EnvName, EventKind, PromotionId};
use shipgate_deploy::CanaryRoute;
use shipgate_store::{NewEvent, Promotion};
use tokio::sync::mpsc;

use crate::stop::StopSignal;
use crate::{Engine, EngineError, LiveInstance, SYSTEM, Slot, locked};

/// How often a held step (too few requests) is judged again, at most.
const RECHECK: Duration = Duration::from_secs(5);
/// How often a step is looked at before its end, for a canary that errs beyond doubt.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// What a person asks of a rollout under way.
#[derive(Debug)]
enum Control {
    /// A pause or a hold goes on.
    Resume(String),
    /// Every request to the canary at once (an admin, with a reason).
    Skip(String, String),
}

/// A rollout under way, as shown, and how to reach it.
pub(crate) struct Rollout {
    view: CanaryView,
    control: mpsc::UnboundedSender<Control>,
}

/// Every rollout under way, by slot.
pub(crate) type Rollouts = HashMap<Slot, Rollout>;

/// How a rollout ended when it did not complete: why, in a sentence naming the figure.
pub(crate) type Ended = String;

impl Engine {
    /// Runs the canary of `p`, whose new `instance` is up, against `stable`, the live one. Ok(None)
    /// once the canary takes every request (the caller switches); Ok(Some(why)) when it ended,
    /// its share already back to 0%.
    pub(crate) async fn canary(
        self: &Arc<Self>,
        p: &Promotion,
        slot: &Slot,
        instance: &LiveInstance,
        stable: &LiveInstance,
        rules: &CanaryConfig,
        stop: &mut StopSignal<'_>,
    ) -> Result<Option<Ended>, EngineError> {
        let (tx, mut control) = mpsc::unbounded_channel();
        let steps = &rules.steps;
        let judged = rules.judged_steps();
        let now = self.clock.now();
        let view = CanaryView {
            promotion_id: p.id,
            canary: instance.target.label.clone(),
            stable: stable.target.label.clone(),
            steps: steps.iter().map(step_name).collect(),
            step: 1,
            weight: 0.0,
            mirror: false,
            state: CanaryState::Running,
            step_started_at: now,
            step_ends_at: None,
            canary_figures: SideFigures::default(),
            stable_figures: SideFigures::default(),
            last: None,
            message: String::new(),
        };
        // Shown once its first share is set.
        let mut first = Some(Rollout { view, control: tx });
        let _shown = Shown { engine: self, slot };
        let _traffic = self.synthetic_traffic(&p.env);
        let mut stage = Stage::At(0);
        let mut window = 0;
        let mut last = String::new();
        loop {
            let (n, held) = match stage {
                Stage::Completed => {
                    self.event(p, EventKind::CanaryCompleted, format!(
                        "{} canary completed in {}: it takes every request from now on{last}",
                        instance.target.label, p.env
                    ), serde_json::json!({ "canary": instance.target.label, "steps": steps.len() }))
                    .await;
                    return Ok(None);
                }
                Stage::Aborted => unreachable!("an abort returns at once"),
                Stage::At(n) => (n, false),
                Stage::Held(n) => (n, true),
            };
            let step = steps[n];
            let at = format!("step {} of {} ({})", n + 1, steps.len(), step_name(&step));
            let name = format!("canary step {} ({})", n + 1, step_name(&step));
            if !held {
                window += 1;
            }
            let weight = shipgate_core::canary::weight(steps, stage);
            let (share, mirror) = match step {
                Step::Mirror(m) => (m, true),
                _ => (weight, false),
            };
            let route = CanaryRoute {
                target: instance.target.clone(),
                weight: share,
                mirror,
                sticky: rules.sticky.clone(),
                window,
            };
            if let Err(e) = self
                .driver
                .set_canary(p.env.as_str(), p.app.as_str(), Some(route))
                .await
            {
                let why = format!("the canary's share could not be set: {e}");
                self.end_canary(p, slot).await;
                return Ok(Some(why));
            }
            let started = self.clock.now();
            let ends = match (step, held) {
                (Step::Pause, _) => None,
                (_, false) => Some(crate::clock::after(started, rules.step.as_std())),
                (_, true) => Some(crate::clock::after(
                    started,
                    RECHECK.min(rules.step.as_std()),
                )),
            };
            if !held {
                let what = match step {
                    Step::Pause => format!(
                        "paused at {weight}%: resume with shipgate canary resume {} --env {}",
                        p.app, p.env
                    ),
                    Step::Mirror(m) => format!(
                        "mirroring {m}% of GET and HEAD requests (users meet only {})",
                        stable.target.label
                    ),
                    Step::Weight(w) => format!("{w}% of requests"),
                };
                self.event(p, EventKind::CanaryStep, format!(
                    "{} canary in {}: step {} of {}, {what}{last}",
                    instance.target.label, p.env, n + 1, steps.len()
                ), serde_json::json!({ "step": n + 1, "steps": steps.len(), "weight": share, "mirror": mirror })).await;
            }
            // Shown, the first time, with its share set: never before.
            self.show_rollout(slot, first.take(), |v| {
                v.step = n + 1;
                v.weight = if mirror { 0.0 } else { share };
                v.mirror = mirror;
                v.state = match (step, held) {
                    (Step::Pause, _) => CanaryState::Paused,
                    (_, true) => CanaryState::Held,
                    _ => CanaryState::Running,
                };
                if !held {
                    v.step_started_at = started;
                }
                v.step_ends_at = ends;
            });
            // The step's end, a person, or the end of the promotion, whichever comes first;
            // meanwhile a look every second stops a canary that errs beyond doubt.
            let asked = loop {
                let now = self.clock.now();
                let look = crate::clock::after(now, LOOK_EVERY);
                let end = async {
                    match ends {
                        Some(at) => self.clock.sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    why = stop.asked_later() => {
                        self.end_canary(p, slot).await;
                        return Ok(Some(format!("{why}, at {at}")));
                    }
                    c = control.recv() => break c,
                    () = end => break None,
                    () = self.clock.sleep_until(look) => {}
                }
                let figures = self.window_figures(p, window).await;
                if let Some((f, why)) =
                    interim(&figures.canary, &figures.stable, &rules.rules, judged)
                {
                    let took = self.clock.now().duration_since(started).as_secs_f64();
                    let said = format!("failed {took:.1} s into the step: {why}; {}", describe(&f));
                    self.fail_step(p, slot, &name, said, started).await?;
                    return Ok(Some(format!(
                        "its canary failed at {at}, {took:.1} s in: {why}"
                    )));
                }
            };
            match asked {
                Some(Control::Skip(actor, reason)) => {
                    let gate = format!(
                        "skipped by {actor} at step {} of {}: {reason}",
                        n + 1,
                        steps.len()
                    );
                    self.gate(p, "canary", true, gate.clone(), started).await?;
                    last = format!(" ({gate})");
                    stage = next(steps, stage, Move::Skip);
                    continue;
                }
                Some(Control::Resume(actor)) => {
                    if matches!(step, Step::Pause) || held {
                        last = format!(" (resumed by {actor})");
                        self.gate(
                            p,
                            &format!("canary step {}", n + 1),
                            true,
                            format!("resumed by {actor}"),
                            started,
                        )
                        .await?;
                        stage = next(steps, stage, Move::Resume);
                    }
                    continue;
                }
                None if matches!(step, Step::Pause) => continue,
                None => {}
            }
            let figures = self.window_figures(p, window).await;
            match judge(&figures.canary, &figures.stable, &rules.rules, judged) {
                Decision::Pass(f) => {
                    let said = format!("passed: {}", describe(&f));
                    self.gate(p, &name, true, said.clone(), started).await?;
                    last = format!("; step {} {said}", n + 1);
                    self.show_rollout(slot, None, |v| {
                        v.last = Some(format!("step {} {said}", n + 1))
                    });
                    stage = next(steps, stage, Move::Passed);
                }
                Decision::Fail(f, why) => {
                    let said = format!("failed: {why}; {}", describe(&f));
                    self.fail_step(p, slot, &name, said, started).await?;
                    return Ok(Some(format!("its canary failed at {at}: {why}")));
                }
                Decision::Inconclusive(f, why) => {
                    // Recorded as an event; the step's gate is its judgement, once it comes.
                    if !held {
                        self.event(
                            p,
                            EventKind::CanaryInconclusive,
                            format!(
                                "{} canary in {} holds at step {} of {} ({share}%): {why}; {}",
                                instance.target.label,
                                p.env,
                                n + 1,
                                steps.len(),
                                describe(&f)
                            ),
                            serde_json::json!({ "step": n + 1, "weight": share, "why": why }),
                        )
                        .await;
                    }
                    self.show_rollout(slot, None, |v| {
                        v.last = Some(format!("step {}: {why}", n + 1))
                    });
                    stage = next(steps, stage, Move::Inconclusive);
                }
            }
        }
    }

    /// What both sides answered in `window` (empty when the data plane has moved on or has
    /// none).
    async fn window_figures(&self, p: &Promotion, window: u64) -> shipgate_deploy::CanaryFigures {
        self.driver
            .canary_figures(p.env.as_str(), p.app.as_str())
            .await
            .filter(|f| f.window == window)
            .unwrap_or_default()
    }

    /// A failed step: nobody more meets the canary, before its gate is written.
    async fn fail_step(
        &self,
        p: &Promotion,
        slot: &Slot,
        name: &str,
        said: String,
        started: jiff::Timestamp,
    ) -> Result<(), EngineError> {
        self.end_canary(p, slot).await;
        self.gate(p, name, false, said, started).await
    }

    /// Puts the canary's share of `p`'s app to 0% on every host, and says so.
    async fn end_canary(&self, p: &Promotion, slot: &Slot) {
        if let Err(e) = self
            .driver
            .set_canary(p.env.as_str(), p.app.as_str(), None)
            .await
        {
            tracing::error!("could not end the canary of {} in {}: {e}", p.app, p.env);
        }
        locked(&self.rollouts).remove(slot);
    }

    /// Records `canary.aborted` for a rollout that ended for `why`.
    pub(crate) async fn canary_aborted(&self, p: &Promotion, why: &str, back_on: &str) {
        self.event(
            p,
            EventKind::CanaryAborted,
            format!(
                "{}@{} canary aborted in {}: {why}; {} stays on {back_on}",
                p.app, p.version, p.env, p.env
            ),
            serde_json::json!({ "why": why }),
        )
        .await;
    }

    async fn event(
        &self,
        p: &Promotion,
        kind: EventKind,
        message: String,
        data: serde_json::Value,
    ) {
        let event = NewEvent {
            actor: SYSTEM.into(),
            kind,
            app: Some(p.app.to_string()),
            env: Some(p.env.to_string()),
            promotion_id: Some(p.id),
            message: self.redactor(&p.env).redact(&message),
            data,
        };
        if let Err(e) = self.store.append_event(event).await {
            tracing::warn!("could not record a canary event: {e}");
        }
    }

    fn show_rollout(
        &self,
        slot: &Slot,
        first: Option<Rollout>,
        change: impl FnOnce(&mut CanaryView),
    ) {
        let mut rollouts = locked(&self.rollouts);
        if let Some(r) = first {
            rollouts.insert(slot.clone(), r);
        }
        if let Some(r) = rollouts.get_mut(slot) {
            change(&mut r.view);
            r.view.message = sentence(&r.view);
        }
    }

    /// Whether the rollout of a slot holds (a step too quiet to judge, or a pause).
    pub(crate) fn canary_held(&self, slot: &Slot) -> bool {
        locked(&self.rollouts)
            .get(slot)
            .is_some_and(|r| r.view.state != CanaryState::Running)
    }

    /// The rollout of promotion `id`, with both sides' figures of its window now.
    pub(crate) async fn canary_of(&self, id: PromotionId) -> Option<CanaryView> {
        let (slot, mut view) = locked(&self.rollouts)
            .iter()
            .find(|(_, r)| r.view.promotion_id == id)
            .map(|(s, r)| (s.clone(), r.view.clone()))?;
        if let Some(f) = self
            .driver
            .canary_figures(slot.1.as_str(), slot.0.as_str())
            .await
        {
            view.canary_figures = side(&f.canary);
            view.stable_figures = side(&f.stable);
        }
        Some(view)
    }

    /// The rollout of `app` in `env` now; refused with what to do when there is none.
    pub async fn canary_status(
        &self,
        app: &AppName,
        env: &EnvName,
    ) -> Result<CanaryView, EngineError> {
        self.known(app, env)?;
        let id = locked(&self.rollouts)
            .get(&(app.clone(), env.clone()))
            .map(|r| r.view.promotion_id);
        match id {
            Some(id) => self.canary_of(id).await.ok_or_else(|| no_canary(app, env)),
            None => Err(no_canary(app, env)),
        }
    }

    /// `canary resume`: a pause, or a step held for too few requests, goes on to the next step.
    pub async fn canary_resume(
        &self,
        app: &AppName,
        env: &EnvName,
        actor: &str,
    ) -> Result<CanaryView, EngineError> {
        let view = self.canary_status(app, env).await?;
        if view.state == CanaryState::Running {
            return Err(EngineError::NoCanary(format!(
                "the canary of {app} in {env} is running step {} of {}, not paused or held; it is judged at the step's end (or: shipgate canary skip|abort {app} --env {env})",
                view.step,
                view.steps.len()
            )));
        }
        self.tell(app, env, Control::Resume(actor.to_owned()))?;
        Ok(view)
    }

    /// `canary skip`: the canary takes every request at once, its `verify` follows.
    pub async fn canary_skip(
        &self,
        app: &AppName,
        env: &EnvName,
        actor: &str,
        reason: &str,
    ) -> Result<CanaryView, EngineError> {
        let view = self.canary_status(app, env).await?;
        self.tell(app, env, Control::Skip(actor.to_owned(), reason.to_owned()))?;
        Ok(view)
    }

    /// `canary abort`: the canary's share goes to 0% now, on every host, and its promotion
    /// fails; returns the promotion as it ended.
    pub async fn canary_abort(
        &self,
        app: &AppName,
        env: &EnvName,
        actor: &str,
    ) -> Result<Promotion, EngineError> {
        let view = self.canary_status(app, env).await?;
        let why = format!("aborted by {actor}");
        if !self.stop(view.promotion_id, &why) {
            return Err(no_canary(app, env));
        }
        self.ended(view.promotion_id).await
    }

    fn tell(&self, app: &AppName, env: &EnvName, c: Control) -> Result<(), EngineError> {
        let rollouts = locked(&self.rollouts);
        let r = rollouts
            .get(&(app.clone(), env.clone()))
            .ok_or_else(|| no_canary(app, env))?;
        r.control.send(c).map_err(|_| no_canary(app, env))
    }

    fn known(&self, app: &AppName, env: &EnvName) -> Result<(), EngineError> {
        let config = self.config();
        if config.app(app).is_none() {
            return Err(EngineError::UnknownApp(app.to_string()));
        }
        if config.environment(env).is_none() {
            return Err(EngineError::UnknownEnvironment(env.to_string()));
        }
        Ok(())
    }
}

/// Takes a rollout off the list however it ends.
struct Shown<'a> {
    engine: &'a Engine,
    slot: &'a Slot,
}

impl Drop for Shown<'_> {
    fn drop(&mut self) {
        locked(&self.engine.rollouts).remove(self.slot);
    }
}

fn no_canary(app: &AppName, env: &EnvName) -> EngineError {
    EngineError::NoCanary(format!(
        "no canary of {app} is under way in {env} (see: shipgate status {app})"
    ))
}

/// A step as the config writes it.
fn step_name(step: &Step) -> String {
    match step {
        Step::Weight(w) => format!("{w}%"),
        Step::Pause => "pause".to_owned(),
        Step::Mirror(m) => format!("mirror {m}%"),
    }
}

fn side(s: &Side) -> SideFigures {
    let mut sorted = s.latencies_ms.clone();
    sorted.sort_by(f64::total_cmp);
    SideFigures {
        requests: s.requests,
        errors: s.errors,
        error_rate: s.error_rate(),
        p50_ms: quantile(&sorted, 0.5),
        p99_ms: quantile(&sorted, 0.99),
    }
}

/// Every figure of a judgement, in one line: both sides, then the tests that were run.
pub(crate) fn describe(f: &Figures) -> String {
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1} ms"));
    let mut said = format!(
        "canary {} requests, {:.2}% errors, p50 {}, p99 {}; stable {} requests, {:.2}% errors, p50 {}, p99 {}",
        f.requests.0,
        f.error_rates.0 * 100.0,
        ms(f.p50_ms.0),
        ms(f.p99_ms.0),
        f.requests.1,
        f.error_rates.1 * 100.0,
        ms(f.p50_ms.1),
        ms(f.p99_ms.1),
    );
    // Mann-Whitney runs with the comparison of the sides; untested figures stay at p = 1.
    if f.u > 0.0 || f.p_latency < 1.0 {
        said.push_str(&format!(
            "; Fisher p = {:.3e}, ceiling p = {:.3e}, Mann-Whitney U = {:.0}, p = {:.3e}",
            f.p_errors, f.p_ceiling, f.u, f.p_latency
        ));
    } else if f.p_ceiling < 1.0 {
        said.push_str(&format!("; ceiling p = {:.3e}", f.p_ceiling));
    }
    said.push_str(&format!("; each test fails below {:.2e}", f.alpha));
    said
}

fn sentence(v: &CanaryView) -> String {
    let at = format!(
        "step {} of {} ({})",
        v.step,
        v.steps.len(),
        v.steps.get(v.step - 1).map_or("", String::as_str)
    );
    match v.state {
        CanaryState::Running if v.mirror => format!("{} is mirrored, {at}", v.canary),
        CanaryState::Running => format!("{} takes {}% of requests, {at}", v.canary, v.weight),
        CanaryState::Paused => format!(
            "{} holds at {}%, {at}: waiting for shipgate canary resume",
            v.canary, v.weight
        ),
        CanaryState::Held => format!(
            "{} holds at {}%, {at}: {}",
            v.canary,
            v.weight,
            v.last.as_deref().unwrap_or("too few requests to judge")
        ),
    }
}
