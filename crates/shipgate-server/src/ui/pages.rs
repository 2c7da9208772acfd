//! The dashboard's pages: what each shows, gathered from the engine and handed to its template.

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use shipgate_core::gate::Wait;
use shipgate_core::{Action, AppName, EnvName, PromotionState, ReleaseRef, Version};
use shipgate_engine::{EnvironmentStatus, HistoryEntry};
use shipgate_store::{Event, EventFilter, PromotionFilter};

use super::{Viewer, chart};
use crate::AppState;
use crate::problem::Problem;

/// Apps per board page.
pub(crate) const APPS_PER_PAGE: usize = 50;
/// Events per audit page.
const EVENTS_PER_PAGE: i64 = 100;

pub(crate) type Page = Result<Response, PageError>;

/// Why a page is not shown: an error page with its status, or a trip to the sign-in page.
#[derive(Debug)]
pub(crate) enum PageError {
    /// Shown as a page of its own.
    Refused(StatusCode, String),
    /// Not signed in: go here.
    SignIn(String),
    /// The session ended just now (its token revoked, or refused at the identity provider):
    /// the sign-in page, saying why.
    SessionEnded {
        /// The page asked for.
        next: String,
        /// Why it ended.
        message: String,
        /// Whether the server signs in through an identity provider.
        oidc: bool,
    },
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            Self::Refused(status, message) => {
                let page = ErrorPage {
                    status: status.as_u16(),
                    message,
                };
                (status, html(&page)).into_response()
            }
            Self::SignIn(to) => Redirect::to(&to).into_response(),
            Self::SessionEnded {
                next,
                message,
                oidc,
            } => {
                let mut page = super::sign_in::SignInPage::answer(
                    StatusCode::UNAUTHORIZED,
                    &next,
                    &message,
                    oidc,
                );
                page.headers_mut()
                    .insert(header::SET_COOKIE, super::session_cookie("", 0));
                page
            }
        }
    }
}

/// A status shown by colour, a shape and a word, so it reads without colour too.
#[derive(Clone, Debug)]
pub(crate) struct Badge {
    pub class: &'static str,
    pub symbol: &'static str,
    pub label: String,
}

impl Badge {
    pub(crate) fn new(class: &'static str, symbol: &'static str, label: impl Into<String>) -> Self {
        Self {
            class,
            symbol,
            label: label.into(),
        }
    }

    fn of_state(state: PromotionState) -> Self {
        use PromotionState::*;
        let (class, symbol) = match state {
            Succeeded => ("ok", "●"),
            Failed | RolledBack => ("bad", "▲"),
            Pending | SigningOff => ("wait", "◆"),
            Deploying | Verifying => ("run", "▶"),
            Cancelled | Superseded => ("idle", "○"),
        };
        Self::new(class, symbol, state.as_str().replace('_', " "))
    }

    fn of_gate(passed: bool) -> Self {
        if passed {
            Self::new("ok", "●", "passed")
        } else {
            Self::new("bad", "▲", "failed")
        }
    }
}

/// What every page shows around its content.
pub(crate) struct Layout {
    pub title: String,
    pub user: String,
    pub role: String,
    pub csrf: String,
    pub tab: &'static str,
}

impl Layout {
    pub(crate) fn new(viewer: &Viewer, title: impl Into<String>, tab: &'static str) -> Self {
        let grant = &viewer.caller.0;
        let role = crate::session::roles(grant).join(", ");
        Self {
            title: title.into(),
            user: grant.name.clone(),
            role,
            csrf: viewer.csrf.clone(),
            tab,
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    status: u16,
    message: String,
}

/// An error as a page of its own, with the status it deserves.
pub(crate) fn error_page(status: StatusCode, message: &str) -> PageError {
    PageError::Refused(status, message.to_owned())
}

pub(crate) fn from_problem(p: Problem) -> PageError {
    error_page(p.status(), p.detail())
}

pub(crate) fn html(t: &impl Template) -> Response {
    match t.render() {
        Ok(body) => Html(body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the page could not be drawn: {e}"),
        )
            .into_response(),
    }
}

pub(crate) fn allow(
    viewer: &Viewer,
    action: Action,
    env: Option<&EnvName>,
) -> Result<(), PageError> {
    viewer.caller.allow(action, env).map_err(from_problem)
}

/// Percent-encodes a value for a query string.
pub(crate) fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `2026-12-01T19:45:12.123Z` as `2026-12-01 19:45:12`.
pub(crate) fn short_time(t: &jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S").to_string()
}

pub(crate) fn release_link(app: &str, version: &str) -> String {
    format!("/apps/{app}/releases/{}", query_escape(version))
}

/// The sign-off sheet of `app@version` in `env`.
pub(crate) fn signoff_link(app: &str, version: &str, env: &str) -> String {
    format!("{}/signoff/{env}", release_link(app, version))
}

pub(crate) fn environment_link(app: &str, env: &str) -> String {
    format!("/apps/{app}/environments/{env}")
}

fn waits_of(state: &AppState, id: shipgate_core::PromotionId) -> Vec<String> {
    state
        .engine
        .waiting_on(id)
        .iter()
        .map(Wait::to_string)
        .collect()
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    pub(crate) csrf: String,
}

// ------------------------------------------------------------------------------------ board --

pub(crate) struct Pending {
    pub version: String,
    pub link: String,
    pub state: Badge,
    pub waits: Vec<String>,
    /// The watch under way, in a sentence (empty when none).
    pub watch: String,
    /// The canary rollout under way, in a sentence (empty when none).
    pub canary: String,
    /// Its sign-off sheet, while it waits for testers (empty otherwise).
    pub signoff: String,
}

pub(crate) struct Cell {
    pub env: String,
    pub link: String,
    pub live: String,
    pub live_link: String,
    pub health: Badge,
    pub traffic: String,
    pub pending: Vec<Pending>,
    pub standby: String,
    pub frozen: String,
    /// `hotfix` when the live release came by hotfix.
    pub hotfix: bool,
    /// `behind production` when a hotfix went past this environment.
    pub behind: String,
}

pub(crate) struct BoardRow {
    pub app: String,
    pub cells: Vec<Cell>,
}

#[derive(Template)]
#[template(path = "board.html")]
struct BoardPage {
    layout: Layout,
    envs: Vec<String>,
    rows: Vec<BoardRow>,
    filter: String,
    page: usize,
    pages: usize,
    matching: usize,
    prev: String,
    next: String,
    on_demand: Vec<super::on_demand::OnDemandRow>,
}

#[derive(Deserialize)]
pub(crate) struct BoardQuery {
    app: Option<String>,
    page: Option<String>,
}

fn health(e: &EnvironmentStatus) -> Badge {
    match (&e.live, &e.instance, &e.unhealthy) {
        (None, _, _) => Badge::new("idle", "○", "nothing live"),
        (_, _, Some(_)) => Badge::new("bad", "▲", "crash-looping"),
        _ if !e.drift.is_empty() => Badge::new("bad", "▲", "drifted"),
        (Some(_), Some(i), None) if i.healthy => Badge::new("ok", "●", "healthy"),
        (Some(_), Some(_), None) => Badge::new("bad", "▲", "unhealthy"),
        (Some(_), None, None) => Badge::new("bad", "▲", "down"),
    }
}

fn traffic(e: &EnvironmentStatus) -> String {
    match &e.traffic {
        Some(t) if t.requests > 0 => format!("{} · {:.1}% 5xx", t.volume(), t.error_rate * 100.0),
        _ => "no traffic".to_owned(),
    }
}

fn cell(app: &str, e: &EnvironmentStatus) -> Cell {
    let live = e.live.as_ref().map(|l| l.version.to_string());
    Cell {
        env: e.env.to_string(),
        link: environment_link(app, e.env.as_str()),
        live_link: live
            .as_deref()
            .map(|v| release_link(app, v))
            .unwrap_or_default(),
        live: live.unwrap_or_default(),
        hotfix: e.live_by_hotfix,
        behind: e
            .behind
            .as_ref()
            .map(|b| format!("behind {}: {}", b.env, b.command))
            .unwrap_or_default(),
        health: health(e),
        traffic: traffic(e),
        pending: e
            .in_progress
            .iter()
            .map(|p| Pending {
                version: p.promotion.version.to_string(),
                link: release_link(app, p.promotion.version.as_str()),
                state: Badge::of_state(p.promotion.state),
                waits: p.waiting_on.iter().map(|w| w.message.clone()).collect(),
                watch: p
                    .watch
                    .as_ref()
                    .map(|w| w.message.clone())
                    .unwrap_or_default(),
                canary: p
                    .canary
                    .as_ref()
                    .map(|c| c.message.clone())
                    .unwrap_or_default(),
                signoff: if p.promotion.state == PromotionState::SigningOff {
                    signoff_link(app, p.promotion.version.as_str(), e.env.as_str())
                } else {
                    String::new()
                },
            })
            .collect(),
        standby: e
            .standby
            .as_ref()
            .map(|s| s.version.to_string())
            .unwrap_or_default(),
        frozen: e
            .frozen
            .first()
            .map(|f| format!("frozen: {}", f.reason))
            .unwrap_or_default(),
    }
}

pub(crate) async fn board(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<BoardQuery>,
) -> Page {
    allow(&viewer, Action::Read, None)?;
    let filter = q.app.unwrap_or_default().trim().to_lowercase();
    let config = state.engine.config();
    let matching: Vec<AppName> = config
        .apps
        .iter()
        .filter(|a| a.name.as_str().contains(&filter))
        .map(|a| a.name.clone())
        .collect();
    let pages = matching.len().div_ceil(APPS_PER_PAGE).max(1);
    let page = q
        .page
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, pages);
    let shown = &matching[((page - 1) * APPS_PER_PAGE).min(matching.len())
        ..(page * APPS_PER_PAGE).min(matching.len())];
    let statuses = state
        .engine
        .status_of(shown)
        .await
        .map_err(|e| from_problem(e.into()))?;
    let caller = &viewer.caller;
    // The main path; on-demand environments are listed apart.
    let main_path = |env: &EnvName| {
        config
            .environment(env)
            .is_some_and(|e| e.template.is_none())
    };
    let envs: Vec<String> = config
        .environments
        .iter()
        .filter(|e| e.template.is_none() && caller.sees(Some(e.name.as_str())))
        .map(|e| e.name.to_string())
        .collect();
    let rows = statuses
        .iter()
        .map(|a| BoardRow {
            app: a.app.to_string(),
            cells: a
                .environments
                .iter()
                .filter(|e| main_path(&e.env) && caller.sees(Some(e.env.as_str())))
                .map(|e| cell(a.app.as_str(), e))
                .collect(),
        })
        .collect();
    let link = |p: usize| format!("/?app={}&page={p}", query_escape(&filter));
    let on_demand = super::on_demand::rows(&state, &viewer).await?;
    let board = BoardPage {
        on_demand,
        layout: Layout::new(&viewer, "Board", "board"),
        envs,
        rows,
        page,
        pages,
        matching: matching.len(),
        prev: if page > 1 {
            link(page - 1)
        } else {
            String::new()
        },
        next: if page < pages {
            link(page + 1)
        } else {
            String::new()
        },
        filter,
    };
    Ok(html(&board))
}

// ---------------------------------------------------------------------------------- release --

pub(crate) struct GateView {
    pub name: String,
    pub badge: Badge,
    pub started: String,
    pub finished: String,
    pub output: String,
}

pub(crate) struct PromotionBlock {
    pub id: shipgate_core::PromotionId,
    pub env: String,
    pub env_link: String,
    pub kind: String,
    pub badge: Badge,
    pub requested_by: String,
    pub created: String,
    pub reason: String,
    /// For a failed promotion: what the environment runs since (`production is on web@1.1.0,
    /// as before this promotion`).
    pub back_on: String,
    /// The watch under way, in a sentence (empty when none).
    pub watch: String,
    /// The canary rollout under way.
    pub canary: Option<super::canary::CanaryPanel>,
    /// Its load gate's run, beside the run it was compared with.
    pub load: Option<super::load::LoadPanel>,
    /// Its sign-off sheet, when the environment takes one (empty otherwise).
    pub signoff: String,
    pub gates: Vec<GateView>,
    pub decisions: Vec<String>,
    pub waits: Vec<String>,
    pub can_approve: bool,
    pub can_reject: bool,
}

pub(crate) struct Step {
    pub env: String,
    pub badge: Badge,
    pub when: String,
}

#[derive(Template)]
#[template(path = "release.html")]
struct ReleasePage {
    layout: Layout,
    app: String,
    version: String,
    digest: String,
    commit: String,
    notes: String,
    created_by: String,
    created: String,
    timeline: Vec<Step>,
    promotions: Vec<PromotionBlock>,
    action: String,
}

pub(crate) fn configured_app(state: &AppState, app: &str) -> Result<AppName, PageError> {
    let name =
        AppName::parse(app).map_err(|e| error_page(StatusCode::NOT_FOUND, &format!("app: {e}")))?;
    if state.engine.config().app(&name).is_none() {
        return Err(error_page(
            StatusCode::NOT_FOUND,
            &format!("app `{app}` is not in the config"),
        ));
    }
    Ok(name)
}

fn block(
    state: &AppState,
    viewer: &Viewer,
    entry: &HistoryEntry,
    load: Option<super::load::LoadPanel>,
) -> PromotionBlock {
    let p = &entry.promotion;
    let waits = waits_of(state, p.id);
    let held = state
        .engine
        .waiting_on(p.id)
        .iter()
        .any(|w| matches!(w, Wait::Decision { .. }));
    let may_decide = viewer.caller.allow(Action::Approve, Some(&p.env)).is_ok();
    let decidable = p.state == PromotionState::Pending || held;
    let needs_approvals = state
        .engine
        .config()
        .environment(&p.env)
        .is_some_and(|e| e.require.approvals.is_some());
    PromotionBlock {
        id: p.id,
        env: p.env.to_string(),
        env_link: environment_link(p.app.as_str(), p.env.as_str()),
        kind: p.kind.as_str().to_owned(),
        badge: Badge::of_state(p.state),
        requested_by: p.requested_by.clone(),
        created: short_time(&p.created_at),
        reason: p.reason.clone().unwrap_or_default(),
        back_on: match (p.state, &p.previous_version) {
            (PromotionState::Failed, Some(v)) => {
                format!("{} is on {}@{v}, as before this promotion", p.env, p.app)
            }
            (PromotionState::Failed, None) => {
                format!("nothing is live in {}, as before this promotion", p.env)
            }
            _ => String::new(),
        },
        watch: entry
            .watch
            .as_ref()
            .map(|w| w.message.clone())
            .unwrap_or_default(),
        canary: entry
            .canary
            .as_ref()
            .map(|c| super::canary::panel(viewer, &p.app, &p.env, c)),
        load,
        signoff: if p.kind.is_forward()
            && state
                .engine
                .config()
                .environment(&p.env)
                .is_some_and(|e| e.signoff.is_some())
        {
            signoff_link(p.app.as_str(), p.version.as_str(), p.env.as_str())
        } else {
            String::new()
        },
        gates: entry
            .gates
            .iter()
            .map(|g| GateView {
                name: g.name.clone(),
                badge: Badge::of_gate(g.passed),
                started: short_time(&g.started_at),
                finished: short_time(&g.finished_at),
                output: g.output.clone(),
            })
            .collect(),
        decisions: entry
            .decisions
            .iter()
            .map(|d| {
                let verdict = d.verdict.past();
                let comment = d
                    .comment
                    .as_deref()
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default();
                format!(
                    "{verdict} by {} ({}) at {}{comment}",
                    d.actor,
                    d.role,
                    short_time(&d.at)
                )
            })
            .collect(),
        waits,
        can_approve: may_decide
            && decidable
            && (held || needs_approvals)
            && p.requested_by != viewer.caller.0.name,
        can_reject: may_decide && (decidable || p.state == PromotionState::Verifying),
    }
}

pub(crate) async fn release(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((app, version)): Path<(String, String)>,
) -> Page {
    allow(&viewer, Action::Read, None)?;
    let app = configured_app(&state, &app)?;
    let version = Version::parse(&version)
        .map_err(|e| error_page(StatusCode::NOT_FOUND, &format!("version: {e}")))?;
    let store = state.engine.store();
    let release = store
        .release(&app, &version)
        .await
        .map_err(|e| from_problem(e.into()))?
        .ok_or_else(|| {
            error_page(
                StatusCode::NOT_FOUND,
                &format!("{app}@{version} is not registered"),
            )
        })?;
    let filter = PromotionFilter {
        app: Some(app.clone()),
        version: Some(version.clone()),
        ..Default::default()
    };
    let mut entries = Vec::new();
    for p in store
        .promotions(filter)
        .await
        .map_err(|e| from_problem(e.into()))?
    {
        if viewer.caller.sees(Some(p.env.as_str())) {
            entries.push(
                state
                    .engine
                    .promotion(p.id)
                    .await
                    .map_err(|e| from_problem(e.into()))?,
            );
        }
    }
    let timeline = state
        .engine
        .config()
        .environments
        .iter()
        .filter(|e| viewer.caller.sees(Some(e.name.as_str())))
        .map(|e| {
            let latest = entries.iter().find(|h| h.promotion.env == e.name);
            Step {
                env: e.name.to_string(),
                badge: latest.map_or(Badge::new("idle", "○", "not yet"), |h| {
                    Badge::of_state(h.promotion.state)
                }),
                when: latest
                    .map(|h| short_time(&h.promotion.updated_at))
                    .unwrap_or_default(),
            }
        })
        .collect();
    let mut loads = super::load::panels(store.as_ref(), &entries)
        .await
        .map_err(|e| from_problem(e.into()))?;
    let promotions = entries
        .iter()
        .map(|e| block(&state, &viewer, e, loads.remove(&e.promotion.id)))
        .collect();
    let page = ReleasePage {
        layout: Layout::new(&viewer, format!("{app}@{version}"), "board"),
        action: format!("{}/decisions", release_link(app.as_str(), version.as_str())),
        app: app.to_string(),
        version: version.to_string(),
        digest: release.digest.to_string(),
        commit: release.commit.unwrap_or_default(),
        notes: release.notes.unwrap_or_default(),
        created_by: release.created_by,
        created: short_time(&release.created_at),
        timeline,
        promotions,
    };
    Ok(html(&page))
}

#[derive(Deserialize)]
pub(crate) struct DecisionForm {
    csrf: String,
    env: String,
    /// An unknown value is refused by the form's parsing, never read as a rejection.
    verdict: shipgate_core::Verdict,
    comment: Option<String>,
}

pub(crate) async fn decide(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((app, version)): Path<(String, String)>,
    Form(f): Form<DecisionForm>,
) -> Page {
    viewer.check_csrf(&f.csrf)?;
    let app = configured_app(&state, &app)?;
    let bad = |e: shipgate_core::NameError| error_page(StatusCode::BAD_REQUEST, &e.to_string());
    let version = Version::parse(&version).map_err(bad)?;
    let env = EnvName::parse(&f.env).map_err(bad)?;
    allow(&viewer, Action::Approve, Some(&env))?;
    let release = ReleaseRef {
        app: app.clone(),
        version: version.clone(),
    };
    let comment = f.comment.filter(|c| !c.trim().is_empty());
    state
        .engine
        .decide(&release, &env, &viewer.caller.0, f.verdict, comment)
        .await
        .map_err(|e| from_problem(e.into()))?;
    Ok(Redirect::to(&release_link(app.as_str(), version.as_str())).into_response())
}

// ------------------------------------------------------------------------------ environment --

pub(crate) struct HistoryRow {
    pub id: shipgate_core::PromotionId,
    pub version: String,
    pub link: String,
    pub kind: String,
    pub badge: Badge,
    pub by: String,
    pub at: String,
    pub reason: String,
}

#[derive(Template)]
#[template(path = "environment.html")]
struct EnvironmentPage {
    layout: Layout,
    app: String,
    env: String,
    url: String,
    live: String,
    live_link: String,
    since: String,
    health: Badge,
    traffic: String,
    standby: String,
    frozen: String,
    can_rollback: bool,
    rollback_action: String,
    /// Earlier releases verified here that a rollback may go to, the default first.
    rollback_choices: Vec<String>,
    /// Whether the viewer may promote the live release on, and to which environments (those
    /// right after this one in the flow; never back).
    can_promote: bool,
    promote_action: String,
    promote_choices: Vec<String>,
    chart: String,
    log: String,
    history: Vec<HistoryRow>,
    pending: Vec<Pending>,
    /// The canary rollouts under way here (one at most), with the viewer's buttons.
    canaries: Vec<super::canary::CanaryPanel>,
    /// For an environment on hosts: the live instance on each (`web-1: pid 12, healthy`).
    hosts: Vec<String>,
    /// The app's flags and their state here.
    flags: Vec<super::flags::FlagRow>,
    /// Whether the viewer may turn them on and off here.
    can_flag: bool,
    /// The app's flag changes waiting for approvals here.
    flag_changes: Vec<super::flags::ChangeRow>,
    /// Whether the viewer may approve or reject them.
    can_approve: bool,
    /// The chaos faults in force on the app here, as lines.
    faults: Vec<String>,
    /// The alerts firing for the app here, as lines.
    alerts: Vec<String>,
}

/// An environment of the config named in a page's path, or the page that says it is not.
pub(crate) fn configured_env(state: &AppState, env: &str) -> Result<EnvName, PageError> {
    EnvName::parse(env)
        .ok()
        .filter(|e| state.engine.config().environment(e).is_some())
        .ok_or_else(|| {
            error_page(
                StatusCode::NOT_FOUND,
                &format!("environment `{env}` is not in the config"),
            )
        })
}

pub(crate) async fn environment(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((app, env)): Path<(String, String)>,
) -> Page {
    let app = configured_app(&state, &app)?;
    let env = configured_env(&state, &env)?;
    allow(&viewer, Action::Read, Some(&env))?;
    let engine = &state.engine;
    let status = engine
        .status_of(std::slice::from_ref(&app))
        .await
        .map_err(|e| from_problem(e.into()))?;
    let Some(e) = status
        .into_iter()
        .flat_map(|a| a.environments)
        .find(|e| e.env == env)
    else {
        return Err(error_page(StatusCode::NOT_FOUND, "no such environment"));
    };
    let history = engine
        .history(&app, Some(&env), 50)
        .await
        .map_err(|e| from_problem(e.into()))?;
    let log = match engine.read_remote_log(&app, &env, None, None, 40).await {
        Some(read) => read.map(|(text, _)| text).unwrap_or_else(|e| e),
        None => match engine.log_file(&app, &env) {
            Some(path) => {
                tokio::task::spawn_blocking(move || shipgate_engine::tail_lines(&path, 40))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|lines| lines.join("\n"))
                    .unwrap_or_default()
            }
            None => String::new(),
        },
    };
    let log = engine.redactor(&env).redact(&log);
    let away = |h: &String| format!("{h}: unreachable, given the live release when it connects");
    let hosts = e
        .instance
        .iter()
        .flat_map(|i| &i.hosts)
        .map(|h| {
            format!(
                "{}: pid {}, {}",
                h.host,
                h.pid,
                if h.healthy { "healthy" } else { "unhealthy" }
            )
        })
        .chain(e.instance.iter().flat_map(|i| &i.unreachable).map(away))
        .collect();
    let chart_samples = engine
        .traffic_history(&app, &env)
        .await
        .map_err(|e| from_problem(e.into()))?;
    let c = cell(app.as_str(), &e);
    let canaries = e
        .in_progress
        .iter()
        .filter_map(|p| p.canary.as_ref())
        .map(|v| super::canary::panel(&viewer, &app, &env, v))
        .collect();
    let mut rollback_choices: Vec<String> = e.rollback_to.iter().map(ToString::to_string).collect();
    for h in history.iter().filter(|h| {
        h.promotion.state == PromotionState::Succeeded
            && e.live
                .as_ref()
                .is_some_and(|l| l.version != h.promotion.version)
    }) {
        let v = h.promotion.version.to_string();
        if !rollback_choices.contains(&v) {
            rollback_choices.push(v);
        }
    }
    let config = engine.config();
    let promote_choices: Vec<String> = config
        .next_after(&env)
        .filter(|x| viewer.caller.allow(Action::Promote, Some(&x.name)).is_ok())
        .map(|x| x.name.to_string())
        .collect();
    let page = EnvironmentPage {
        layout: Layout::new(&viewer, format!("{app} in {env}"), "board"),
        url: e.url.clone(),
        since: e
            .live
            .as_ref()
            .map(|l| short_time(&l.since))
            .unwrap_or_default(),
        can_rollback: e.live.is_some() && viewer.caller.allow(Action::Rollback, Some(&env)).is_ok(),
        rollback_action: format!("{}/rollback", environment_link(app.as_str(), env.as_str())),
        rollback_choices,
        can_promote: e.live.is_some() && !promote_choices.is_empty(),
        promote_action: format!("{}/promote", environment_link(app.as_str(), env.as_str())),
        promote_choices,
        chart: chart::svg(&chart_samples),
        log,
        history: history
            .iter()
            .map(|h| HistoryRow {
                id: h.promotion.id,
                version: h.promotion.version.to_string(),
                link: release_link(app.as_str(), h.promotion.version.as_str()),
                kind: h.promotion.kind.as_str().to_owned(),
                badge: Badge::of_state(h.promotion.state),
                by: h.promotion.requested_by.clone(),
                at: short_time(&h.promotion.created_at),
                reason: h.promotion.reason.clone().unwrap_or_default(),
            })
            .collect(),
        app: app.to_string(),
        env: env.to_string(),
        live: c.live,
        live_link: c.live_link,
        health: c.health,
        traffic: c.traffic,
        standby: c.standby,
        frozen: c.frozen,
        pending: c.pending,
        canaries,
        hosts,
        flags: super::flags::rows(&state, &app, &env).await?,
        can_flag: viewer.caller.allow(Action::Promote, Some(&env)).is_ok(),
        flag_changes: super::flags::waiting(&state, &app, &env).await?,
        can_approve: viewer.caller.allow(Action::Approve, Some(&env)).is_ok(),
        alerts: state
            .engine
            .firing_alerts()
            .into_iter()
            .filter(|(_, a, e, _)| *a == app && *e == env)
            .map(|(name, _, _, when)| format!("{name}: {when}"))
            .collect(),
        faults: state
            .engine
            .store()
            .faults(Some(&env), true)
            .await
            .map_err(|e| from_problem(shipgate_engine::EngineError::from(e).into()))?
            .into_iter()
            .filter(|f| f.app == app)
            .map(|f| {
                format!(
                    "#{}: {} until {} (injected by {}; shipgate chaos clear {} ends it)",
                    f.id,
                    f.fault,
                    short_time(&f.ends_at),
                    f.created_by,
                    f.id
                )
            })
            .collect(),
    };
    Ok(html(&page))
}

/// An environment named in a form or path; a bad name is a 400 page.
pub(crate) fn env_param(name: &str) -> Result<EnvName, PageError> {
    EnvName::parse(name).map_err(|e| error_page(StatusCode::BAD_REQUEST, &e.to_string()))
}

/// The rollback form: the release to go back to (the default one when absent).
#[derive(Deserialize)]
pub(crate) struct RollbackForm {
    csrf: String,
    to: Option<String>,
}

pub(crate) async fn rollback(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((app, env)): Path<(String, String)>,
    Form(f): Form<RollbackForm>,
) -> Page {
    viewer.check_csrf(&f.csrf)?;
    let app = configured_app(&state, &app)?;
    let env = env_param(&env)?;
    allow(&viewer, Action::Rollback, Some(&env))?;
    let to =
        f.to.as_deref()
            .filter(|v| !v.is_empty())
            .map(Version::parse)
            .transpose()
            .map_err(|e| error_page(StatusCode::BAD_REQUEST, &e.to_string()))?;
    state
        .engine
        .rollback(&app, &env, to.as_ref(), viewer.caller.name())
        .await
        .map_err(|e| from_problem(e.into()))?;
    Ok(Redirect::to(&environment_link(app.as_str(), env.as_str())).into_response())
}

/// The promote form: the environment the release live here goes to.
#[derive(Deserialize)]
pub(crate) struct PromoteForm {
    csrf: String,
    to: String,
}

/// Promotes the release live in `env` to the chosen environment, then shows that one.
pub(crate) async fn promote(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((app, env)): Path<(String, String)>,
    Form(f): Form<PromoteForm>,
) -> Page {
    viewer.check_csrf(&f.csrf)?;
    let app = configured_app(&state, &app)?;
    let env = env_param(&env)?;
    let to = env_param(&f.to)?;
    allow(&viewer, Action::Promote, Some(&to))?;
    let live = state
        .engine
        .store()
        .live(Some(&app))
        .await
        .map_err(|e| from_problem(e.into()))?
        .into_iter()
        .find(|l| l.env == env)
        .ok_or_else(|| {
            error_page(
                StatusCode::CONFLICT,
                &format!(
                    "nothing of {app} is live in {env}, so there is nothing to promote from it"
                ),
            )
        })?;
    let release = ReleaseRef {
        app: app.clone(),
        version: live.version,
    };
    onward(&state.engine.config(), &env, &to, &release)?;
    state
        .engine
        .promote(&release, &to, viewer.caller.name(), None)
        .await
        .map_err(|e| from_problem(e.into()))?;
    Ok(Redirect::to(&environment_link(app.as_str(), to.as_str())).into_response())
}

/// Refuses a Promote form that names an environment not right after the page's: the page
/// offers only those, and a form out of date or made by hand must not go back.
fn onward(
    config: &shipgate_core::Config,
    from: &EnvName,
    to: &EnvName,
    release: &ReleaseRef,
) -> Result<(), PageError> {
    if config.next_after(from).any(|e| &e.name == to) {
        return Ok(());
    }
    let onward: Vec<&str> = config.next_after(from).map(|e| e.name.as_str()).collect();
    let relation = if config.comes_before(to, from) {
        "comes before"
    } else {
        "does not come right after"
    };
    let offered = if onward.is_empty() {
        format!("nothing comes after {from}")
    } else {
        format!("it goes on to {}", onward.join(" or "))
    };
    Err(error_page(
        StatusCode::CONFLICT,
        &format!(
            "{to} {relation} {from}, and the {from} page promotes only onward ({offered}). To put {release} in {to} anyway, run: shipgate promote {release} --to {to}"
        ),
    ))
}

// ------------------------------------------------------------------------------------ audit --

pub(crate) struct EventRow {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub kind: String,
    pub app: String,
    pub env: String,
    pub message: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    layout: Layout,
    app: String,
    env: String,
    actor: String,
    kind: String,
    events: Vec<EventRow>,
    older: String,
    export: String,
    /// The values each filter offers: configured apps and environments, the users with a
    /// token (and `system`), event families then kinds.
    apps: Vec<String>,
    envs: Vec<String>,
    actors: Vec<String>,
    kinds: Vec<String>,
}

#[derive(Deserialize, Default)]
pub(crate) struct AuditQuery {
    app: Option<String>,
    env: Option<String>,
    actor: Option<String>,
    kind: Option<String>,
    before: Option<String>,
}

impl AuditQuery {
    fn cleaned(v: &Option<String>) -> Option<String> {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    fn filter(&self) -> EventFilter {
        EventFilter {
            app: Self::cleaned(&self.app),
            env: Self::cleaned(&self.env),
            actor: Self::cleaned(&self.actor),
            kind: Self::cleaned(&self.kind),
            before: self.before.as_deref().and_then(|b| b.parse().ok()),
            ..EventFilter::default()
        }
    }

    fn query(&self) -> String {
        [
            ("app", &self.app),
            ("env", &self.env),
            ("actor", &self.actor),
            ("kind", &self.kind),
        ]
        .iter()
        .filter_map(|(k, v)| Self::cleaned(v).map(|v| format!("{k}={}", query_escape(&v))))
        .collect::<Vec<_>>()
        .join("&")
    }

    fn env_name(&self) -> Result<Option<EnvName>, PageError> {
        Self::cleaned(&self.env)
            .map(|e| EnvName::parse(&e))
            .transpose()
            .map_err(|e| error_page(StatusCode::BAD_REQUEST, &format!("environment: {e}")))
    }
}

fn row(e: Event) -> EventRow {
    EventRow {
        id: e.id,
        at: short_time(&e.at),
        actor: e.actor,
        kind: e.kind.to_string(),
        app: e.app.unwrap_or_default(),
        env: e.env.unwrap_or_default(),
        message: e.message,
    }
}

pub(crate) async fn audit(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<AuditQuery>,
) -> Page {
    allow(&viewer, Action::Read, q.env_name()?.as_ref())?;
    let filter = EventFilter {
        limit: Some(EVENTS_PER_PAGE),
        newest_first: true,
        ..q.filter()
    };
    let mut events = state
        .engine
        .store()
        .events(filter)
        .await
        .map_err(|e| from_problem(e.into()))?;
    let full_page = events.len() as i64 == EVENTS_PER_PAGE;
    let oldest = events.last().map(|e| e.id);
    events.retain(|e| viewer.caller.sees(e.env.as_deref()));
    let query = q.query();
    let sep = if query.is_empty() { "" } else { "&" };
    let config = state.engine.config();
    let mut actors: Vec<String> = state
        .engine
        .store()
        .tokens()
        .await
        .map_err(|e| from_problem(e.into()))?
        .into_iter()
        .map(|t| t.name)
        .chain(["system".to_owned(), "admin".to_owned()])
        .chain(AuditQuery::cleaned(&q.actor))
        .collect();
    actors.sort();
    actors.dedup();
    let all = shipgate_core::EventKind::all();
    let mut kinds: Vec<String> = all.iter().map(|k| k.family().to_owned()).collect();
    kinds.dedup();
    kinds.extend(all.iter().map(ToString::to_string));
    let page = AuditPage {
        layout: Layout::new(&viewer, "Audit log", "audit"),
        older: match oldest {
            Some(id) if full_page => format!("/audit?{query}{sep}before={id}"),
            _ => String::new(),
        },
        export: format!("/audit.jsonl?{query}"),
        events: events.into_iter().map(row).collect(),
        apps: config.apps.iter().map(|a| a.name.to_string()).collect(),
        envs: config
            .environments
            .iter()
            .filter(|e| viewer.caller.sees(Some(e.name.as_str())))
            .map(|e| e.name.to_string())
            .collect(),
        actors,
        kinds,
        app: AuditQuery::cleaned(&q.app).unwrap_or_default(),
        env: AuditQuery::cleaned(&q.env).unwrap_or_default(),
        actor: AuditQuery::cleaned(&q.actor).unwrap_or_default(),
        kind: AuditQuery::cleaned(&q.kind).unwrap_or_default(),
    };
    Ok(html(&page))
}

/// The events the audit page shows (all of them, oldest first) as JSON lines.
pub(crate) async fn audit_export(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<AuditQuery>,
) -> Page {
    allow(&viewer, Action::Read, q.env_name()?.as_ref())?;
    let events = state
        .engine
        .store()
        .events(q.filter())
        .await
        .map_err(|e| from_problem(e.into()))?;
    let mut body = String::new();
    for e in events
        .iter()
        .filter(|e| viewer.caller.sees(e.env.as_deref()))
    {
        if let Ok(line) = serde_json::to_string(e) {
            body.push_str(&line);
            body.push('\n');
        }
    }
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"shipgate-audit.jsonl\"",
            ),
        ],
        body,
    )
        .into_response())
}

/// The event stream for the page's script, signed in by cookie.
pub(crate) async fn live(State(state): State<AppState>, viewer: Viewer) -> Page {
    allow(&viewer, Action::Read, None)?;
    Ok(crate::api::live_events(&state, viewer.caller, false).into_response())
}
