//! The sign-off sheet of a release in an environment, for testers who never open a terminal:
//! what to open, what changed, each scenario with who passed or failed it, and Pass and Fail
//! for those who may sign. A signature goes back to the sheet with a line saying it was taken
//! (post, redirect, get); a refusal draws the sheet again with the engine's words above it.
//!
//! Whether the viewer may sign is asked of `shipgate_core::signoff::check`, the rule the engine
//! applies, so the buttons shown are the buttons that work.

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use serde::Deserialize;
use shipgate_api::answers::{ScenarioStatus, SignoffStatus};
use shipgate_core::signoff::{self, SignoffAsk, SignoffRefusal, SignoffSheet, SignoffVerdict};
use shipgate_core::{Action, EnvName, PromotionState, ReleaseRef, Role, Version};
use shipgate_engine::EngineError;
use shipgate_store::{Promotion, PromotionFilter};

use super::Viewer;
use super::pages::{
    Badge, Layout, Page, PageError, allow, configured_app, environment_link, error_page,
    from_problem, html, release_link, short_time, signoff_link,
};
use crate::AppState;
use crate::problem::Problem;

/// One release registered since the last one signed off here.
pub(crate) struct ChangeRow {
    pub version: String,
    pub link: String,
    pub commit: String,
    pub notes: String,
    pub registered: String,
}

/// One pass or fail of a scenario.
pub(crate) struct EntryRow {
    pub badge: Badge,
    pub by: String,
    pub at: String,
    pub note: String,
}

/// One scenario of the sheet, with the viewer's buttons.
pub(crate) struct ScenarioRow {
    /// From 1, as the page numbers them; the form's redirect names the scenario by it.
    pub number: usize,
    pub name: String,
    pub badge: Badge,
    pub entries: Vec<EntryRow>,
    /// Whether Pass and Fail are offered to the viewer.
    pub can_sign: bool,
    /// The note typed before a refusal, given back in its field.
    pub note: String,
}

#[derive(Template)]
#[template(path = "signoff.html")]
struct SignoffPage {
    layout: Layout,
    /// `web@1.2.0`.
    release: String,
    release_link: String,
    env: String,
    env_link: String,
    badge: Badge,
    /// Where the sign-off stands, in a sentence.
    headline: String,
    /// What happens next, or what the viewer can do now.
    next: String,
    /// The environment's address, to open (empty when there is no sheet yet).
    url: String,
    requested_by: String,
    requested_at: String,
    /// When the release began to wait for its testers.
    waiting_since: String,
    /// Who signs: `tester (or an admin)`.
    signers: String,
    /// What the viewer just signed, in a line (after the redirect).
    notice: String,
    /// Why the engine refused what the viewer just sent.
    refusal: String,
    /// Whether the sheet exists: the release reached its sign-off here.
    has_sheet: bool,
    /// The release signed off here before this one (empty: none was).
    since: String,
    changes: Vec<ChangeRow>,
    scenarios: Vec<ScenarioRow>,
    /// Where Pass and Fail post: the page itself.
    action: String,
}

/// What a sign-off path names, once it is known to the config and the viewer may read it.
struct Target {
    release: ReleaseRef,
    env: EnvName,
}

fn target(
    state: &AppState,
    viewer: &Viewer,
    app: &str,
    version: &str,
    env: &str,
) -> Result<Target, PageError> {
    let app = configured_app(state, app)?;
    let version = Version::parse(version)
        .map_err(|e| error_page(StatusCode::NOT_FOUND, &format!("version: {e}")))?;
    let env = super::pages::configured_env(state, env)?;
    allow(viewer, Action::Read, Some(&env))?;
    Ok(Target {
        release: ReleaseRef { app, version },
        env,
    })
}

/// What the page draws besides the engine's state: a line after a signature, or a refusal
/// with the note that was sent.
#[derive(Default)]
struct Said {
    /// The scenario the viewer just signed (after the redirect), from 1.
    signed: Option<usize>,
    refusal: Option<Refusal>,
}

/// A pass or fail the engine refused.
#[derive(Default)]
struct Refusal {
    /// The engine's words.
    message: String,
    /// The scenario it was for, and the note sent with it (given back in its field).
    scenario: String,
    note: String,
}

/// The sheet as the engine keeps it, rebuilt from its status so the core's rule can be asked.
fn sheet_of(s: &SignoffStatus) -> SignoffSheet {
    SignoffSheet {
        promotion_id: s.promotion.id,
        role: s.role,
        scenarios: s.scenarios.iter().map(|x| x.name.clone()).collect(),
        requested_at: s.requested_at,
        entries: s
            .scenarios
            .iter()
            .flat_map(|x| x.entries.iter().cloned())
            .collect(),
    }
}

fn verdict_badge(verdict: SignoffVerdict) -> Badge {
    match verdict {
        SignoffVerdict::Pass => Badge::new("ok", "●", "passed"),
        SignoffVerdict::Fail => Badge::new("bad", "▲", "failed"),
    }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("“{n}”"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn draw(state: &AppState, viewer: &Viewer, t: &Target, said: Said) -> Page {
    match state.engine.signoff_status(&t.release, &t.env).await {
        Ok(status) => Ok(html(&sheet_page(state, viewer, t, &status, said))),
        Err(EngineError::NoSignoff(_)) => no_sheet_page(state, viewer, t, said).await,
        Err(e) => Err(from_problem(e.into())),
    }
}

fn base(viewer: &Viewer, t: &Target) -> SignoffPage {
    let (app, env) = (t.release.app.as_str(), t.env.as_str());
    SignoffPage {
        layout: Layout::new(
            viewer,
            format!("Sign-off of {} in {env}", t.release),
            "board",
        ),
        release: t.release.to_string(),
        release_link: release_link(app, t.release.version.as_str()),
        env: env.to_owned(),
        env_link: environment_link(app, env),
        badge: Badge::new("idle", "○", "nothing to sign"),
        headline: String::new(),
        next: String::new(),
        url: String::new(),
        requested_by: String::new(),
        requested_at: String::new(),
        waiting_since: String::new(),
        signers: String::new(),
        notice: String::new(),
        refusal: String::new(),
        has_sheet: false,
        since: String::new(),
        changes: Vec::new(),
        scenarios: Vec::new(),
        action: signoff_link(app, t.release.version.as_str(), env),
    }
}

fn signers(role: Role) -> String {
    if role == Role::Admin {
        "an admin".to_owned()
    } else {
        format!("anyone with the role {role} (or an admin)")
    }
}

/// Where a sign-off stands, as the top of the page says it.
struct Standing {
    badge: Badge,
    /// Where it stands, in a sentence.
    headline: String,
    /// What happens next, or what the viewer can do now.
    next: String,
}

/// The sheet of a release that reached its sign-off: open, complete, failed or ended.
fn sheet_page(
    state: &AppState,
    viewer: &Viewer,
    t: &Target,
    s: &SignoffStatus,
    said: Said,
) -> SignoffPage {
    let sheet = sheet_of(s);
    let grant = &viewer
        .caller
        .0
        .in_env(&s.promotion.env, &[sheet.role, shipgate_core::Role::Admin]);
    let requested_by = std::slice::from_ref(&s.requested_by);
    // The viewer may sign a scenario when the core's rule would take a pass of it now.
    let may = |scenario: &str| {
        signoff::check(
            &sheet,
            &SignoffAsk {
                grant,
                scenario,
                verdict: SignoffVerdict::Pass,
                note: None,
                requested_by,
            },
        )
    };
    let open = s.outcome == "open" && s.promotion.state == PromotionState::SigningOff;
    let refused = said.refusal.unwrap_or_default();
    let scenarios: Vec<ScenarioRow> = s
        .scenarios
        .iter()
        .enumerate()
        .map(|(i, x)| ScenarioRow {
            number: i + 1,
            name: x.name.clone(),
            badge: scenario_badge(x),
            entries: x
                .entries
                .iter()
                .map(|e| EntryRow {
                    badge: verdict_badge(e.verdict),
                    by: e.by.clone(),
                    at: short_time(&e.at),
                    note: e.note.clone().unwrap_or_default(),
                })
                .collect(),
            can_sign: open && may(&x.name).is_ok(),
            note: if refused.scenario == x.name {
                refused.note.clone()
            } else {
                String::new()
            },
        })
        .collect();
    let standing = match s.outcome.as_str() {
        "open" => {
            let why_not = if scenarios.iter().any(|x| x.can_sign) {
                None
            } else {
                may(s.scenarios.first().map_or("", |x| x.name.as_str())).err()
            };
            waiting(t, s, viewer, why_not)
        }
        "complete" => complete(state, t, s),
        "failed" => failed(t, s),
        _ => ended(t, s),
    };
    SignoffPage {
        badge: standing.badge,
        headline: standing.headline,
        next: standing.next,
        url: s.url.clone(),
        requested_by: s.requested_by.clone(),
        requested_at: short_time(&s.promotion.created_at),
        waiting_since: short_time(&s.requested_at),
        signers: signers(s.role),
        notice: notice(s, grant.person(), said.signed),
        refusal: refused.message,
        has_sheet: true,
        since: s.since.clone().unwrap_or_default(),
        changes: s
            .changes
            .iter()
            .map(|r| ChangeRow {
                version: format!("{}@{}", r.app, r.version),
                link: release_link(r.app.as_str(), r.version.as_str()),
                commit: r.commit.clone().unwrap_or_default(),
                notes: r.notes.clone().unwrap_or_default(),
                registered: short_time(&r.created_at),
            })
            .collect(),
        scenarios,
        ..base(viewer, t)
    }
}

fn scenario_badge(x: &ScenarioStatus) -> Badge {
    let has = |v| x.entries.iter().any(|e| e.verdict == v);
    if has(SignoffVerdict::Fail) {
        Badge::new("bad", "▲", "failed")
    } else if has(SignoffVerdict::Pass) {
        Badge::new("ok", "●", "passed")
    } else {
        Badge::new("wait", "◆", "not yet")
    }
}

/// What the environment runs once the release is failed: what it ran before.
fn before(s: &SignoffStatus) -> String {
    match &s.promotion.previous_version {
        Some(v) => format!("{}@{v}", s.promotion.app),
        None => "running nothing".to_owned(),
    }
}

/// Open: how far it is, and what the viewer can do (`why_not`: why they cannot sign at all).
fn waiting(
    t: &Target,
    s: &SignoffStatus,
    viewer: &Viewer,
    why_not: Option<SignoffRefusal>,
) -> Standing {
    let (release, env) = (&t.release, &t.env);
    let grant = &viewer.caller.0;
    let waiting: Vec<&str> = s
        .scenarios
        .iter()
        .filter(|x| x.entries.is_empty())
        .map(|x| x.name.as_str())
        .collect();
    let next = match why_not {
        None => format!(
            "Open {} in your browser, walk through each scenario below, then press Pass or Fail. A Fail needs a note saying what you saw. Once every scenario has a pass, the release is signed off; one fail ends it and {env} goes back to {}.",
            s.url,
            before(s)
        ),
        Some(SignoffRefusal::WrongRole { .. }) => format!(
            "You are signed in as {} ({}), so you can read this sheet but not sign it: {} signs here.",
            grant.name,
            grant.role,
            signers(s.role)
        ),
        Some(SignoffRefusal::OwnPromotion(_)) => format!(
            "You asked for this promotion, so someone else signs it off: {}.",
            signers(s.role)
        ),
        Some(_) => "You signed every scenario you can; the others are for someone else to sign. This page updates by itself.".to_owned(),
    };
    Standing {
        badge: Badge::new("wait", "◆", "waiting for testers"),
        headline: format!(
            "{release} is live in {env} and waits for its testers: {} of {} scenarios passed, still waiting for {}.",
            s.scenarios.len() - waiting.len(),
            s.scenarios.len(),
            quoted(&waiting)
        ),
        next,
    }
}

fn complete(state: &AppState, t: &Target, s: &SignoffStatus) -> Standing {
    let (release, env) = (&t.release, &t.env);
    let config = state.engine.config();
    let onward: Vec<&str> = config.next_after(env).map(|e| e.name.as_str()).collect();
    Standing {
        badge: Badge::new("ok", "●", "signed off"),
        headline: format!(
            "{release} is signed off in {env}: all {} scenarios passed.",
            s.scenarios.len()
        ),
        next: if onward.is_empty() {
            "Nothing is left to sign.".to_owned()
        } else {
            format!(
                "Nothing is left to sign: {release} may now be promoted to {}.",
                onward.join(" or ")
            )
        },
    }
}

fn failed(t: &Target, s: &SignoffStatus) -> Standing {
    let (release, env) = (&t.release, &t.env);
    let why = s
        .scenarios
        .iter()
        .flat_map(|x| &x.entries)
        .find(|e| e.verdict == SignoffVerdict::Fail)
        .map_or(String::new(), |f| {
            format!(
                ": “{}” failed by {}: {}",
                f.scenario,
                f.by,
                f.note.as_deref().unwrap_or("")
            )
        });
    // The engine puts the environment back just after the fail is recorded.
    let is_back = match (s.promotion.state, &s.promotion.previous_version) {
        (PromotionState::Failed, Some(_)) => "is back on",
        (PromotionState::Failed, None) => "is back to",
        _ => "is going back to",
    };
    Standing {
        badge: Badge::new("bad", "▲", "failed"),
        headline: format!("The sign-off of {release} in {env} failed{why}"),
        next: format!(
            "Nothing is left to sign: {env} {is_back} {}, as before this promotion. Once the problem is fixed, a new release promoted into {env} gets a new sheet.",
            before(s)
        ),
    }
}

fn ended(t: &Target, s: &SignoffStatus) -> Standing {
    let (release, env) = (&t.release, &t.env);
    let why = s
        .promotion
        .reason
        .as_deref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    Standing {
        badge: Badge::new("idle", "○", "ended"),
        headline: format!(
            "The promotion of {release} into {env} ended before every scenario passed{why}."
        ),
        next: format!(
            "Nothing is left to sign. To sign {release} off, it must be promoted into {env} again."
        ),
    }
}

/// After the redirect: what `me` just signed of scenario number `signed`, from the sheet itself
/// (so a link made by hand cannot claim what was not signed).
fn notice(s: &SignoffStatus, me: &str, signed: Option<usize>) -> String {
    signed
        .and_then(|n| s.scenarios.get(n.wrapping_sub(1)))
        .and_then(|x| x.entries.iter().rev().find(|e| e.by == me))
        .map(|e| match e.verdict {
            SignoffVerdict::Pass => format!("You passed “{}”.", e.scenario),
            SignoffVerdict::Fail => format!(
                "You failed “{}”: {}",
                e.scenario,
                e.note.as_deref().unwrap_or("")
            ),
        })
        .unwrap_or_default()
}

/// A release with no sheet in the environment yet (or none to come): why, and what is next.
async fn no_sheet_page(state: &AppState, viewer: &Viewer, t: &Target, said: Said) -> Page {
    let (release, env) = (&t.release, &t.env);
    let store = state.engine.store();
    let registered = store
        .release(&release.app, &release.version)
        .await
        .map_err(|e| from_problem(e.into()))?;
    if registered.is_none() {
        return Err(error_page(
            StatusCode::NOT_FOUND,
            &format!("{release} is not registered"),
        ));
    }
    let config = state.engine.config();
    let scenarios = config
        .environment(env)
        .and_then(|e| e.signoff.as_ref())
        .map(|s| s.scenarios.clone());
    let latest = store
        .promotions(PromotionFilter {
            app: Some(release.app.clone()),
            env: Some(env.clone()),
            version: Some(release.version.clone()),
            ..Default::default()
        })
        .await
        .map_err(|e| from_problem(e.into()))?
        .into_iter()
        .filter(|p| p.kind.is_forward())
        .max_by_key(|p| p.id);
    let standing = before_signoff(state, t, scenarios.is_some(), latest.as_ref());
    let waiting_scenarios = scenarios
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, name)| ScenarioRow {
            number: i + 1,
            name,
            badge: Badge::new("idle", "○", "not yet"),
            entries: Vec::new(),
            can_sign: false,
            note: String::new(),
        })
        .collect();
    let page = SignoffPage {
        badge: standing.badge,
        headline: standing.headline,
        next: standing.next,
        requested_by: latest
            .as_ref()
            .map(|p| p.requested_by.clone())
            .unwrap_or_default(),
        requested_at: latest
            .as_ref()
            .map(|p| short_time(&p.created_at))
            .unwrap_or_default(),
        refusal: said.refusal.map(|r| r.message).unwrap_or_default(),
        scenarios: waiting_scenarios,
        ..base(viewer, t)
    };
    Ok(html(&page))
}

/// Where a release stands before its sign-off: `latest` is its newest promotion into the
/// environment, if any; `takes_signoff`, whether the environment asks for one.
fn before_signoff(
    state: &AppState,
    t: &Target,
    takes_signoff: bool,
    latest: Option<&Promotion>,
) -> Standing {
    let (release, env) = (&t.release, &t.env);
    let appear = "When its checks pass, its scenarios appear here for testers to sign; this page updates by itself.";
    let (badge, headline, next) = match latest {
        _ if !takes_signoff => (
            Badge::new("idle", "○", "no sign-off here"),
            format!("{env} takes no sign-off: releases go live there without testers' scenarios."),
            "There is nothing to sign here. The environments that take one say so on their page."
                .to_owned(),
        ),
        None => (
            Badge::new("idle", "○", "not promoted"),
            format!("{release} has not been promoted into {env} yet."),
            format!(
                "Nothing to sign yet. Once someone promotes it into {env} and its checks pass, its scenarios appear here for testers to sign."
            ),
        ),
        Some(p) => match p.state {
            PromotionState::Pending => {
                let waits: Vec<String> = state
                    .engine
                    .waiting_on(p.id)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                let on = if waits.is_empty() {
                    String::new()
                } else {
                    format!(" (waiting on: {})", waits.join("; "))
                };
                (
                    Badge::new("wait", "◆", "waiting"),
                    format!("{release} waits to be deployed into {env}{on}."),
                    format!("Nothing to sign yet. {appear}"),
                )
            }
            PromotionState::Deploying => (
                Badge::new("run", "▶", "deploying"),
                format!("{release} is being deployed into {env}."),
                format!("Nothing to sign yet. {appear}"),
            ),
            PromotionState::Verifying => (
                Badge::new("run", "▶", "checking"),
                format!("{release} is deployed in {env} and its checks are running."),
                format!("Nothing to sign yet. {appear}"),
            ),
            other => (
                Badge::new("idle", "○", "ended"),
                format!(
                    "The promotion of {release} into {env} ended ({}) before its sign-off{}.",
                    other.as_str().replace('_', " "),
                    p.reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ),
                format!(
                    "There is nothing to sign. Promoting {release} into {env} again starts a new sign-off."
                ),
            ),
        },
    };
    Standing {
        badge,
        headline,
        next,
    }
}

/// `?signed=N`: the scenario just signed, for the line saying so.
#[derive(Deserialize)]
pub(crate) struct SignedQuery {
    signed: Option<usize>,
}

/// The sheet of a release in an environment.
pub(crate) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((app, version, env)): Path<(String, String, String)>,
    Query(q): Query<SignedQuery>,
) -> Page {
    let t = target(&state, &viewer, &app, &version, &env)?;
    let said = Said {
        signed: q.signed,
        refusal: None,
    };
    draw(&state, &viewer, &t, said).await
}

/// Pass or Fail on one scenario, with an optional note (a fail needs one).
#[derive(Deserialize)]
pub(crate) struct SignForm {
    csrf: String,
    scenario: String,
    /// An unknown value is refused by the form's parsing, never read as either verdict.
    verdict: SignoffVerdict,
    #[serde(default)]
    note: String,
}

/// Records a pass or a fail and goes back to the sheet; a refusal draws the sheet again with
/// the engine's words, its status and the note that was typed.
pub(crate) async fn sign(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((app, version, env)): Path<(String, String, String)>,
    Form(f): Form<SignForm>,
) -> Page {
    viewer.check_csrf(&f.csrf)?;
    let t = target(&state, &viewer, &app, &version, &env)?;
    let note = Some(f.note.trim().to_owned()).filter(|n| !n.is_empty());
    let signed = state
        .engine
        .sign_off(
            &t.release,
            &t.env,
            &viewer.caller.0,
            &f.scenario,
            f.verdict,
            note,
        )
        .await;
    match signed {
        Ok(status) => {
            let number = status
                .scenarios
                .iter()
                .position(|x| x.name == f.scenario.trim())
                .map_or(0, |i| i + 1);
            let to = format!(
                "{}?signed={number}",
                signoff_link(
                    t.release.app.as_str(),
                    t.release.version.as_str(),
                    t.env.as_str()
                )
            );
            Ok(Redirect::to(&to).into_response())
        }
        Err(e) => {
            let problem = Problem::from(e);
            let said = Said {
                signed: None,
                refusal: Some(Refusal {
                    message: problem.detail().to_owned(),
                    scenario: f.scenario,
                    note: f.note,
                }),
            };
            let page = draw(&state, &viewer, &t, said).await?;
            Ok((problem.status(), page).into_response())
        }
    }
}
