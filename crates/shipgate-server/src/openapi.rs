//! The OpenAPI 3.1 document, derived from the wire types of `shipgate-api`: one declaration
//! per endpoint here, the bodies' schemas from their types. A test checks that it lists exactly
//! the routes served, and schemathesis checks the server against it.

use shipgate_api::answers::{
    AgentEndpoint, CreatedFlagKey, CreatedHost, CreatedRelease, CreatedToken, DataCheck,
    DecisionRecorded, DoraView, FlagPromotion, FlagView, GcReport, Joined, LoadReport, LogChunk,
    LoginStarted, NotifyView, OnDemandView, Problem, ProxyFaultView, ReleaseDetail, Reloaded,
    SecretInfo, SecretSet, SecretsRecipient, SessionToken, SignoffStatus, TrafficProbe,
};
use shipgate_api::data::DataMessage;
use shipgate_api::parity::{Diff, DriftReport};
use shipgate_api::records::{
    AuditReport, BackupRecord, Delivery, Event, FaultRecord, FlagChangeRecord, FlagKeyRecord,
    HostRecord, LoadRun, Promotion, Release, TokenRecord,
};
use shipgate_api::requests::{
    AppEnv, AppQuery, BackupRequest, BackupsQuery, CanarySkipRequest, ChaosQuery, ChaosRequest,
    DataRefreshRequest, DecisionRequest, DiffQuery, DoraQuery, EventsQuery, ExtendRequest,
    FlagChangesQuery, FlagDecisionRequest, FlagKeyRequest, FlagPromoteRequest, FlagsQuery,
    FreezeQuery, FreezeRequest, GcRequest, HistoryQuery, HostRequest, JoinRequest, LoadRequestBody,
    LoginRequest, LogsQuery, NotifyRetryRequest, NotifyTestRequest, OnDemandRequest,
    PromoteRequest, ReleaseQuery, RestoreRequest, RollbackRequest, SecretSetRequest,
    SetFlagRequest, SignoffQuery, SignoffRequest, TokenExchangeRequest, TokenRequest,
    TrafficProbeQuery,
};
use shipgate_api::status::{AppStatus, CanaryView, HistoryEntry, HostView, LeaderView};
use shipgate_core::gate::Freeze;
use utoipa::openapi::link::{Link, LinkBuilder};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, OpenApi as Document, RefOr, Response};
use utoipa::{Modify, OpenApi, ToSchema};

const ANY_ERROR: &str = "refused or failed: `detail` says what to do next";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "shipgate API",
        version = "1",
        description = "Releases, promotions through environments, rollbacks, status, history, logs and the audit log. Every call but /healthz needs `Authorization: Bearer TOKEN` (a local server's admin token is in its data dir, admin.token). Errors are application/problem+json (RFC 9457) whose `detail` says what to do next. Roles: viewer reads; deployer also registers releases, promotes and rolls back; approver also approves; tester also signs off scenarios of user acceptance; admin does everything, and manages tokens when limited to no environment. A token limited to environments is refused (403) anything about another environment."
    ),
    paths(
        declared::healthz,
        declared::metrics,
        declared::create_release,
        declared::list_releases,
        declared::show_release,
        declared::promote,
        declared::promotion,
        declared::rollback,
        declared::canary_status,
        declared::canary_resume,
        declared::canary_skip,
        declared::canary_abort,
        declared::decide,
        declared::signoff_status,
        declared::sign_off,
        declared::create_backup,
        declared::list_backups,
        declared::show_backup,
        declared::restore_backup,
        declared::drill_backup,
        declared::load_run,
        declared::load_runs,
        declared::set_secret,
        declared::remove_secret,
        declared::list_secrets,
        declared::secrets_recipient,
        declared::diff,
        declared::refresh_data,
        declared::check_data,
        declared::drift,
        declared::heal,
        declared::list_freezes,
        declared::freeze,
        declared::unfreeze,
        declared::status,
        declared::history,
        declared::logs,
        declared::events,
        declared::event_stream,
        declared::verify_audit,
        declared::openapi,
        declared::create_token,
        declared::list_tokens,
        declared::list_hosts,
        declared::leader,
        declared::add_host,
        declared::reload,
        declared::gc,
        declared::remove_host,
        declared::join_host,
        declared::auth_login,
        declared::auth_token,
        declared::agent_endpoint,
        declared::revoke_token,
        declared::create_env,
        declared::list_envs,
        declared::show_env,
        declared::extend_env,
        declared::delete_env,
        declared::list_flags,
        declared::set_flag,
        declared::promote_flags,
        declared::list_flag_changes,
        declared::inject_fault,
        declared::list_faults,
        declared::clear_faults,
        declared::probe_traffic,
        declared::list_proxy_faults,
        declared::list_notify,
        declared::dora,
        declared::retry_notify,
        declared::test_notify,
        declared::decide_flag_change,
        declared::create_flag_key,
        declared::list_flag_keys,
        declared::revoke_flag_key,
    ),
    components(schemas(Problem)),
    security(("bearer" = [])),
    modifiers(&Bearer, &Links)
)]
struct ApiDoc;

/// The document, as served at `/api/v1/openapi.json`.
pub(crate) fn document() -> String {
    let mut doc = match serde_json::to_value(ApiDoc::openapi()) {
        Ok(doc) => doc,
        Err(e) => {
            return format!("{{\"error\": \"the OpenAPI document cannot be written: {e}\"}}");
        }
    };
    tidy(&mut doc);
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// Three touches utoipa 5 leaves to do: the rules between fields it cannot state (from
/// `shipgate_api::constraints`), its links serialize `operation_id` where OpenAPI says
/// `operationId`, and it tags each operation with the module declaring it, which says nothing.
fn tidy(doc: &mut serde_json::Value) {
    let schemas = doc
        .pointer_mut("/components/schemas")
        .and_then(|s| s.as_object_mut());
    if let Some(schemas) = schemas {
        for (name, keywords) in shipgate_api::constraints::constraints() {
            let schema = schemas.get_mut(name).and_then(|s| s.as_object_mut());
            let keywords = keywords.as_object().cloned().unwrap_or_default();
            if let Some(schema) = schema {
                schema.extend(keywords);
            }
        }
    }
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    for op in paths
        .values_mut()
        .filter_map(|i| i.as_object_mut())
        .flat_map(|i| i.values_mut())
    {
        let Some(op) = op.as_object_mut() else {
            continue;
        };
        op.remove("tags");
        let responses = op.get_mut("responses").and_then(|r| r.as_object_mut());
        for response in responses.into_iter().flat_map(|r| r.values_mut()) {
            let links = response.get_mut("links").and_then(|l| l.as_object_mut());
            for link in links.into_iter().flat_map(|l| l.values_mut()) {
                if let Some(link) = link.as_object_mut()
                    && let Some(id) = link.remove("operation_id")
                {
                    link.insert("operationId".to_owned(), id);
                }
            }
        }
    }
}

/// The paths and methods the document describes (for the test against the routes).
#[cfg(test)]
pub(crate) fn operations() -> Vec<(String, String)> {
    let doc = ApiDoc::openapi();
    let mut out = Vec::new();
    for (path, item) in &doc.paths.paths {
        let methods = [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
        ];
        for (method, op) in methods {
            if op.is_some() {
                out.push((method.to_owned(), path.clone()));
            }
        }
    }
    out
}

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The links a stateful client follows: what creates a token or a promotion leads to it.
struct Links;

impl Modify for Links {
    fn modify(&self, doc: &mut Document) {
        let link = |operation: &str, name: &str, from: &str| {
            LinkBuilder::new()
                .operation_id(operation)
                .parameter(name, from)
                .build()
        };
        let mut add = |path: &str, status: &str, name: &str, l: Link| {
            let Some(item) = doc.paths.paths.get_mut(path) else {
                return;
            };
            let Some(op) = item.post.as_mut() else {
                return;
            };
            with_response(op, status, |r| {
                r.links.insert(name.to_owned(), RefOr::T(l));
            });
        };
        add(
            "/api/v1/tokens",
            "201",
            "RevokeToken",
            link("revokeToken", "name", "$response.body#/record/name"),
        );
        for path in [
            "/api/v1/promotions",
            "/api/v1/rollbacks",
            "/api/v1/drift/heal",
        ] {
            add(
                path,
                "202",
                "GetPromotion",
                link("getPromotion", "id", "$response.body#/id"),
            );
        }
    }
}

fn with_response(op: &mut Operation, status: &str, f: impl FnOnce(&mut Response)) {
    if let Some(RefOr::T(r)) = op.responses.responses.get_mut(status) {
        f(r);
    }
}

/// The schema of one server-sent event of `/api/v1/events/stream`.
struct SseEvent;

impl utoipa::PartialSchema for SseEvent {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::Type;
        let text = |description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(description))
                .build()
        };
        let data = ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("the Event, as JSON (schema Event)"))
            .content_media_type("application/json");
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("id", text("the event's id"))
            .property("event", text("the event's kind"))
            .property("data", data)
            .required("id")
            .required("event")
            .required("data")
            .into()
    }
}

impl ToSchema for SseEvent {}

/// One declaration per endpoint, describing the handlers of `api.rs`.
#[allow(
    dead_code,
    reason = "the declarations describe the handlers of api.rs; they are never called"
)]
mod declared {
    use super::*;

    /// Whether the server answers: `ok`, or `ok: restoring the live releases` while a restarted
    /// server starts them again.
    #[utoipa::path(get, path = "/healthz", operation_id = "health", security(()),
        responses((status = 200, description = "the server answers", body = String, content_type = "text/plain")))]
    fn healthz() {}

    /// Request metrics of every environment the token sees, in the Prometheus text format.
    #[utoipa::path(get, path = "/metrics", operation_id = "metrics",
        responses(
            (status = 200, description = "metrics", body = String, content_type = "text/plain"),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn metrics() {}

    /// Register a release: the body is the .tar or .tar.gz artifact, streamed.
    #[utoipa::path(post, path = "/api/v1/apps/{app}/releases", operation_id = "createRelease",
        params(("app" = shipgate_core::AppName, Path, description = "the app"), ReleaseQuery),
        request_body(content = Vec<u8>, content_type = "application/octet-stream"),
        responses(
            (status = 201, description = "registered", body = CreatedRelease),
            (status = 200, description = "already registered with this digest; nothing changed", body = CreatedRelease),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn create_release() {}

    /// Registered releases, newest first.
    #[utoipa::path(get, path = "/api/v1/releases", operation_id = "listReleases", params(AppQuery),
        responses(
            (status = 200, description = "releases", body = Vec<Release>),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn list_releases() {}

    /// One release and, for an image release, its layers, size, user, command and ports.
    #[utoipa::path(get, path = "/api/v1/apps/{app}/releases/{version}", operation_id = "showRelease",
        params(("app" = shipgate_core::AppName, Path, description = "the app"),
               ("version" = shipgate_core::Version, Path, description = "the version")),
        responses(
            (status = 200, description = "the release", body = ReleaseDetail),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn show_release() {}

    /// Ask for a release to enter an environment: refused unless it is verified in the
    /// environment before; then pending until its requirements hold.
    #[utoipa::path(post, path = "/api/v1/promotions", operation_id = "promote", request_body = PromoteRequest,
        responses(
            (status = 202, description = "accepted, pending", body = Promotion,
                headers(("Location" = String, description = "where the promotion can be read"))),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn promote() {}

    /// One promotion with its gates, decisions and what it waits on.
    #[utoipa::path(get, path = "/api/v1/promotions/{id}", operation_id = "getPromotion",
        params(("id" = i64, Path, minimum = 1, description = "the promotion")),
        responses(
            (status = 200, description = "the promotion", body = HistoryEntry),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn promotion() {}

    /// Return an environment to the release live before the current one, or to `to`.
    #[utoipa::path(post, path = "/api/v1/rollbacks", operation_id = "rollBack", request_body = RollbackRequest,
        responses(
            (status = 202, description = "accepted", body = Promotion,
                headers(("Location" = String, description = "where the promotion can be read"))),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn rollback() {}

    /// The canary rollout of an app in an environment: its step, weight, and both sides' figures
    /// in the step's window.
    #[utoipa::path(get, path = "/api/v1/canary", operation_id = "canaryStatus", params(AppEnv),
        responses(
            (status = 200, description = "the rollout", body = CanaryView),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn canary_status() {}

    /// A paused canary step, or one held for too few requests, goes on to the next step
    /// (approver or admin).
    #[utoipa::path(post, path = "/api/v1/canary/resume", operation_id = "canaryResume", request_body = AppEnv,
        responses(
            (status = 200, description = "resumed", body = CanaryView),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn canary_resume() {}

    /// The canary takes every request at once, and the release's `verify` follows (admin, with a
    /// reason).
    #[utoipa::path(post, path = "/api/v1/canary/skip", operation_id = "canarySkip", request_body = CanarySkipRequest,
        responses(
            (status = 200, description = "skipped", body = CanaryView),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn canary_skip() {}

    /// The canary takes no request from now on, on every host, and its promotion fails
    /// (deployer or admin); answers once it has.
    #[utoipa::path(post, path = "/api/v1/canary/abort", operation_id = "canaryAbort", request_body = AppEnv,
        responses(
            (status = 200, description = "aborted: the promotion as it ended", body = Promotion),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn canary_abort() {}

    /// Approve or reject (with a comment) the pending promotion of a release into an environment,
    /// or the verifying one held after an inconclusive watch. Nobody approves their own promotion.
    #[utoipa::path(post, path = "/api/v1/approvals", operation_id = "decide", request_body = DecisionRequest,
        responses(
            (status = 201, description = "recorded", body = DecisionRecorded),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn decide() {}

    /// A release's user acceptance sign-off in one environment: each scenario with its passes
    /// and fails, the environment's URL, and what changed since the release signed off before.
    #[utoipa::path(get, path = "/api/v1/signoffs", operation_id = "signoffStatus", params(SignoffQuery),
        responses(
            (status = 200, description = "the sign-off", body = SignoffStatus),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn signoff_status() {}

    /// Pass or fail (with a note) one scenario of the sign-off a verified release waits for
    /// (the environment's sign-off role, tester by default, or admin). Each person signs a
    /// scenario once, and never one of a promotion they asked for; one fail ends the promotion.
    #[utoipa::path(post, path = "/api/v1/signoffs", operation_id = "signOff", request_body = SignoffRequest,
        responses(
            (status = 201, description = "recorded: the sign-off as it stands", body = SignoffStatus),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn sign_off() {}

    /// Take a backup of an app's data in an environment (deployer or admin), then prove it by a
    /// restore drill into scratch; answers once both are done (`state` restorable,
    /// not_restorable or failed).
    #[utoipa::path(post, path = "/api/v1/backups", operation_id = "createBackup", request_body = BackupRequest,
        responses(
            (status = 201, description = "taken and drilled", body = BackupRecord),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn create_backup() {}

    /// The backups, newest first, of an app or of one environment.
    #[utoipa::path(get, path = "/api/v1/backups", operation_id = "listBackups", params(BackupsQuery),
        responses(
            (status = 200, description = "the backups", body = Vec<BackupRecord>),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn list_backups() {}

    /// One backup, with its drill's figures.
    #[utoipa::path(get, path = "/api/v1/backups/{id}", operation_id = "showBackup",
        params(("id" = i64, Path, description = "the backup's number")),
        responses(
            (status = 200, description = "the backup", body = BackupRecord),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn show_backup() {}

    /// Replace the environment's data with a restorable backup (admin, with a reason); refused
    /// while a promotion is in flight there. Audited.
    #[utoipa::path(post, path = "/api/v1/backups/{id}/restore", operation_id = "restoreBackup",
        params(("id" = i64, Path, description = "the backup's number")), request_body = RestoreRequest,
        responses(
            (status = 200, description = "restored", body = BackupRecord),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn restore_backup() {}

    /// Prove a backup again by restoring it into scratch (deployer or admin): its checksum,
    /// every table's rows against its snapshot, and the app's `verify` queries.
    #[utoipa::path(post, path = "/api/v1/backups/{id}/drill", operation_id = "drillBackup",
        params(("id" = i64, Path, description = "the backup's number")),
        responses(
            (status = 200, description = "drilled: restorable or not_restorable", body = BackupRecord),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn drill_backup() {}

    /// A load test at a constant arrival rate against what the environment serves now (a
    /// deployer of it; at the end of the flow an admin, with `load.allow`); answers once it
    /// ended, with the figures beside the previous release's. `baseline` seeds the gate's.
    #[utoipa::path(post, path = "/api/v1/load", operation_id = "loadRun", request_body = LoadRequestBody,
        responses(
            (status = 201, description = "the run", body = LoadReport),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn load_run() {}

    /// Set a new version of a secret of an environment (admin; a deployer of it with
    /// `[secrets] deployers_write`). The value goes in the body and is never returned; with
    /// `deploy`, the live releases that use it are promoted again through the environment's
    /// gates. Audited (name and version only).
    #[utoipa::path(put, path = "/api/v1/secrets/{env}/{name}", operation_id = "setSecret",
        params(("env" = shipgate_core::EnvName, Path, description = "the environment"),
            ("name" = String, Path, description = "the secret's name", pattern = "^[A-Za-z_][A-Za-z0-9_]{0,127}$")),
        request_body = SecretSetRequest,
        responses(
            (status = 200, description = "the version set", body = SecretSet),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn set_secret() {}

    /// Remove a secret (who may set it): its versions stay for rollbacks; the next deploy of a
    /// release that uses it fails until it is set again.
    #[utoipa::path(delete, path = "/api/v1/secrets/{env}/{name}", operation_id = "removeSecret",
        params(("env" = shipgate_core::EnvName, Path, description = "the environment"),
            ("name" = String, Path, description = "the secret's name", pattern = "^[A-Za-z_][A-Za-z0-9_]{0,127}$")),
        responses(
            (status = 200, description = "the removal, as a version", body = SecretInfo),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn remove_secret() {}

    /// The secrets of an environment: names and versions, never values.
    #[utoipa::path(get, path = "/api/v1/secrets/{env}", operation_id = "listSecrets",
        params(("env" = shipgate_core::EnvName, Path, description = "the environment")),
        responses(
            (status = 200, description = "its secrets", body = Vec<SecretInfo>),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn list_secrets() {}

    /// The age recipient that `secrets_file`s are encrypted for.
    #[utoipa::path(get, path = "/api/v1/secrets-recipient", operation_id = "secretsRecipient",
        responses(
            (status = 200, description = "the recipient", body = SecretsRecipient),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn secrets_recipient() {}

    /// The load test runs of an app in an environment, newest first.
    #[utoipa::path(get, path = "/api/v1/load", operation_id = "loadRuns", params(AppEnv),
        responses(
            (status = 200, description = "the runs", body = Vec<LoadRun>),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn load_runs() {}

    /// Compare an app in two environments; each item same, expected, unexpected, only_in_a or
    /// only_in_b. Secret values are never returned.
    #[utoipa::path(get, path = "/api/v1/diff", operation_id = "diff", params(DiffQuery),
        responses(
            (status = 200, description = "the comparison", body = Diff),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn diff() {}

    /// Refresh one environment's data from another (it must come after it), masked: one JSON line
    /// per progress report, then `{"done": report}` or `{"failed": reason}`.
    #[utoipa::path(post, path = "/api/v1/data/refresh", operation_id = "refreshData", request_body = DataRefreshRequest,
        responses(
            (status = 200, description = "progress and outcome, as JSON lines", body = DataMessage, content_type = "application/x-ndjson"),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn refresh_data() {}

    /// Leak check: masked columns of `env` compared row by row with the data they come from.
    #[utoipa::path(get, path = "/api/v1/data/check", operation_id = "checkData", params(AppEnv),
        responses(
            (status = 200, description = "the check", body = DataCheck),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn check_data() {}

    /// Check every live release now against its record.
    #[utoipa::path(get, path = "/api/v1/drift", operation_id = "drift", params(AppQuery),
        responses(
            (status = 200, description = "one report per live release", body = Vec<DriftReport>),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn drift() {}

    /// Put a drifted live release back as recorded and deploy it again (a `redeploy` promotion).
    #[utoipa::path(post, path = "/api/v1/drift/heal", operation_id = "heal", request_body = AppEnv,
        responses(
            (status = 202, description = "accepted", body = Promotion,
                headers(("Location" = String, description = "where the promotion can be read"))),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn heal() {}

    /// Freezes in force.
    #[utoipa::path(get, path = "/api/v1/freezes", operation_id = "listFreezes",
        responses(
            (status = 200, description = "freezes", body = Vec<Freeze>),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn list_freezes() {}

    /// Freeze one environment (or every one when `env` is absent).
    #[utoipa::path(post, path = "/api/v1/freezes", operation_id = "freeze", request_body = FreezeRequest,
        responses(
            (status = 201, description = "frozen", body = Freeze),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn freeze() {}

    /// Lift the freeze of one environment, or the one of every environment (no `env`).
    #[utoipa::path(delete, path = "/api/v1/freezes", operation_id = "unfreeze", params(FreezeQuery),
        responses(
            (status = 200, description = "lifted", body = Freeze),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn unfreeze() {}

    /// What is live where, instance health, promotions in progress.
    #[utoipa::path(get, path = "/api/v1/status", operation_id = "status", params(AppQuery),
        responses(
            (status = 200, description = "one entry per app", body = Vec<AppStatus>),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn status() {}

    /// Promotions of an app with their gates, newest first.
    #[utoipa::path(get, path = "/api/v1/history", operation_id = "history", params(HistoryQuery),
        responses(
            (status = 200, description = "promotions", body = Vec<HistoryEntry>),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn history() {}

    /// Output of the instance serving an app in an environment.
    #[utoipa::path(get, path = "/api/v1/logs", operation_id = "logs", params(LogsQuery),
        responses(
            (status = 200, description = "log text and the offset to continue from", body = LogChunk),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn logs() {}

    /// Audit events after an id, oldest first, or the newest first.
    #[utoipa::path(get, path = "/api/v1/events", operation_id = "listEvents", params(EventsQuery),
        responses(
            (status = 200, description = "events", body = Vec<Event>),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn events() {}

    /// Every new event as server-sent events (`event:` its kind, `id:` its id, `data:` the Event).
    #[utoipa::path(get, path = "/api/v1/events/stream", operation_id = "streamEvents",
        responses(
            (status = 200, description = "an endless stream", body = SseEvent, content_type = "text/event-stream"),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn event_stream() {}

    /// Check the audit log's hash chain.
    #[utoipa::path(get, path = "/api/v1/audit/verify", operation_id = "verifyAudit",
        responses(
            (status = 200, description = "the result", body = AuditReport),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn verify_audit() {}

    /// This document.
    #[utoipa::path(get, path = "/api/v1/openapi.json", operation_id = "openapi",
        responses(
            (status = 200, description = "OpenAPI 3.1", body = Object),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn openapi() {}

    /// Create a token (admin limited to no environment); the secret is returned once.
    #[utoipa::path(post, path = "/api/v1/tokens", operation_id = "createToken", request_body = TokenRequest,
        responses(
            (status = 201, description = "created", body = CreatedToken,
                headers(("Location" = String, description = "the token's path"))),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn create_token() {}

    /// Every token, revoked ones included (never their secrets).
    #[utoipa::path(get, path = "/api/v1/tokens", operation_id = "listTokens",
        responses(
            (status = 200, description = "tokens", body = Vec<TokenRecord>),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn list_tokens() {}

    /// The machines that run instances and routers: the server's own (`local`), with whether
    /// its agent answers.
    #[utoipa::path(get, path = "/api/v1/hosts", operation_id = "listHosts",
        responses(
            (status = 200, description = "hosts", body = Vec<HostView>),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn list_hosts() {}

    /// The server that runs the engine: the holder of the engine's lease, since when, and its
    /// epoch. Any server answers it (a standby passes it on to the leader).
    #[utoipa::path(get, path = "/api/v1/leader", operation_id = "leader",
        responses(
            (status = 200, description = "the leader", body = LeaderView),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn leader() {}

    /// Reload the config file (admin limited to no environment): validated first, its changes
    /// listed, then applied by a fresh start of the server on it while the data plane keeps
    /// serving. Refused (409) while a promotion deploys or verifies, 422 when the file is invalid.
    #[utoipa::path(post, path = "/api/v1/reload", operation_id = "reload",
        responses(
            (status = 200, description = "what changed, and whether it is being applied", body = Reloaded),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn reload() {}

    /// Remove what `server.retention` no longer keeps (admin limited to no environment): old
    /// releases' artifacts and directories (never one live, a standby, where a rollback goes,
    /// or in a promotion in progress; records stay) and idle logs. `dry_run` only says what.
    #[utoipa::path(post, path = "/api/v1/gc", operation_id = "collectGarbage", request_body = GcRequest,
        responses(
            (status = 200, description = "what went (or would go), and what stayed and why", body = GcReport),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn gc() {}

    /// Add a host (admin limited to no environment); its one-time join token is returned once.
    #[utoipa::path(post, path = "/api/v1/hosts", operation_id = "addHost", request_body = HostRequest,
        responses(
            (status = 201, description = "added", body = CreatedHost,
                headers(("Location" = String, description = "the host's path"))),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn add_host() {}

    /// Remove a host: its certificate is revoked and its agent disconnected.
    #[utoipa::path(delete, path = "/api/v1/hosts/{name}", operation_id = "removeHost",
        params(("name" = shipgate_core::HostName, Path, description = "the host")),
        responses(
            (status = 200, description = "removed", body = HostRecord),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn remove_host() {}

    /// An agent swaps its one-time join token for a certificate from shipgate's CA (no API
    /// token: the join token is the credential, and works once).
    #[utoipa::path(post, path = "/api/v1/hosts/join", operation_id = "joinHost", request_body = JoinRequest, security(()),
        responses(
            (status = 200, description = "joined", body = Joined),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn join_host() {}

    /// Starts a sign-in at the identity provider for the CLI (no token: this is how one gets a
    /// session). 404 when the server has no `[server.oidc]`; 422 for a redirect that is not a
    /// loopback address.
    #[utoipa::path(post, path = "/api/v1/auth/login", operation_id = "authLogin", request_body = LoginRequest, security(()),
        responses(
            (status = 200, description = "where to sign in", body = LoginStarted),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn auth_login() {}

    /// Trades the code and state the provider sent back for a CLI session (`sgs_...`, sent as
    /// a bearer token). The state works once.
    #[utoipa::path(post, path = "/api/v1/auth/token", operation_id = "authToken", request_body = TokenExchangeRequest, security(()),
        responses(
            (status = 200, description = "signed in", body = SessionToken),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn auth_token() {}

    /// The port agents dial (mutual TLS), on the address of this API.
    #[utoipa::path(get, path = "/api/v1/hosts/endpoint", operation_id = "agentEndpoint", security(()),
        responses(
            (status = 200, description = "where agents dial", body = AgentEndpoint)))]
    fn agent_endpoint() {}

    /// Revoke a token; refused for the last admin token limited to no environment and for the
    /// token the request comes with.
    #[utoipa::path(delete, path = "/api/v1/tokens/{name}", operation_id = "revokeToken",
        params(("name" = String, Path, pattern = "^[A-Za-z0-9._@-]{1,64}$", description = "the token")),
        responses(
            (status = 200, description = "revoked", body = TokenRecord),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn revoke_token() {}

    /// Make an on-demand environment from a template (deployer or admin, within the token's
    /// scope): refused with who holds the slots when the template's quota is used up (429).
    /// It answers at once, `creating`; its data, releases and tests follow, and `GET
    /// /api/v1/envs/{name}` says when it is `ready` or `failed`.
    #[utoipa::path(post, path = "/api/v1/envs", operation_id = "createEnv", request_body = OnDemandRequest,
        responses(
            (status = 201, description = "being made", body = OnDemandView,
                headers(("Location" = String, description = "the environment's path"))),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn create_env() {}

    /// Every on-demand environment in the token's scope, oldest first.
    #[utoipa::path(get, path = "/api/v1/envs", operation_id = "listEnvs",
        responses(
            (status = 200, description = "on-demand environments", body = Vec<OnDemandView>),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn list_envs() {}

    /// One on-demand environment.
    #[utoipa::path(get, path = "/api/v1/envs/{name}", operation_id = "showEnv",
        params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9_-]{0,62}$", description = "the environment")),
        responses(
            (status = 200, description = "the environment", body = OnDemandView),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn show_env() {}

    /// Give an on-demand environment until `ttl` from now (deployer or admin).
    #[utoipa::path(post, path = "/api/v1/envs/{name}/extend", operation_id = "extendEnv", request_body = ExtendRequest,
        params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9_-]{0,62}$", description = "the environment")),
        responses(
            (status = 200, description = "extended", body = OnDemandView),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn extend_env() {}

    /// Delete an on-demand environment and everything of it (deployer or admin): its
    /// instances, router, data and folders. Answers with what it was.
    #[utoipa::path(delete, path = "/api/v1/envs/{name}", operation_id = "deleteEnv",
        params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9_-]{0,62}$", description = "the environment")),
        responses(
            (status = 200, description = "deleted", body = OnDemandView),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn delete_env() {}

    /// Each declared flag's state in each environment the token sees (or in `env`).
    #[utoipa::path(get, path = "/api/v1/flags", operation_id = "listFlags", params(FlagsQuery),
        responses(
            (status = 200, description = "flags", body = Vec<FlagView>),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn list_flags() {}

    /// Set a flag's state in one environment (deployer of it, or admin), with an audit event;
    /// in an environment that requires approvals, a change that turns anything on waits for
    /// them (202); `off` never waits.
    #[utoipa::path(post, path = "/api/v1/flags", operation_id = "setFlag", request_body = SetFlagRequest,
        responses(
            (status = 200, description = "set", body = FlagView),
            (status = 202, description = "waiting for approvals", body = FlagChangeRecord,
                headers(("Location" = String, description = "the change's path"))),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn set_flag() {}

    /// Give the target environment the source's states of an app's flags (or of one), as one
    /// change with one audit event (deployer of the target, or admin); `dry_run` only says
    /// what differs.
    #[utoipa::path(post, path = "/api/v1/flags/promote", operation_id = "promoteFlags", request_body = FlagPromoteRequest,
        responses(
            (status = 200, description = "what differed, and whether it was applied", body = FlagPromotion),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn promote_flags() {}

    /// The flag changes waiting for approvals (every one with `all`) in the environments the
    /// token sees, oldest first.
    #[utoipa::path(get, path = "/api/v1/flag-changes", operation_id = "listFlagChanges", params(FlagChangesQuery),
        responses(
            (status = 200, description = "flag changes", body = Vec<FlagChangeRecord>),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn list_flag_changes() {}

    /// Inject an HTTP fault into an environment's router for a while (deployer of it; an
    /// admin at the end of the flow; only where `chaos.allow = true`), with an audit event. It
    /// ends by itself at its duration.
    #[utoipa::path(post, path = "/api/v1/chaos", operation_id = "injectFault", request_body = ChaosRequest,
        responses(
            (status = 201, description = "injected", body = FaultRecord),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn inject_fault() {}

    /// The faults in force (every one with `all`) in the environments the token sees.
    #[utoipa::path(get, path = "/api/v1/chaos", operation_id = "listFaults", params(ChaosQuery),
        responses(
            (status = 200, description = "faults", body = Vec<FaultRecord>),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn list_faults() {}

    /// End the faults in force that match before their end (deployer of their environment).
    #[utoipa::path(delete, path = "/api/v1/chaos", operation_id = "clearFaults", params(ChaosQuery),
        responses(
            (status = 200, description = "the faults ended", body = Vec<FaultRecord>),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn clear_faults() {}

    /// Whether an app's traffic through its environment's router over the last minute is
    /// within the limits asked: 200 within, 503 not (a probe for experiments).
    #[utoipa::path(get, path = "/api/v1/probe/traffic", operation_id = "probeTraffic", params(TrafficProbeQuery),
        responses(
            (status = 200, description = "within the limits", body = TrafficProbe),
            (status = 503, description = "beyond a limit", body = TrafficProbe),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn probe_traffic() {}

    /// The toxics and downed dependency proxies in force (made through the Toxiproxy API or an
    /// experiment), with who made each and when it ends, in the environments the token sees.
    #[utoipa::path(get, path = "/api/v1/chaos/proxies", operation_id = "listProxyFaults",
        responses(
            (status = 200, description = "toxics and downed proxies", body = Vec<ProxyFaultView>),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn list_proxy_faults() {}

    /// Every notification target with how its deliveries stand, and the dead-letter list.
    #[utoipa::path(get, path = "/api/v1/notify", operation_id = "listNotify",
        responses(
            (status = 200, description = "targets and dead letters", body = NotifyView),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn list_notify() {}

    /// The four DORA metrics of each app and environment over a window (default 30 days),
    /// from shipgate's own history, with the Four Keys buckets and a series per day.
    #[utoipa::path(get, path = "/api/v1/dora", operation_id = "dora", params(DoraQuery),
        responses(
            (status = 200, description = "the metrics", body = DoraView),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn dora() {}

    /// Send dead deliveries again (admin), with an audit event.
    #[utoipa::path(post, path = "/api/v1/notify/retry", operation_id = "retryNotify", request_body = NotifyRetryRequest,
        responses(
            (status = 200, description = "the deliveries put back", body = Vec<Delivery>),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn retry_notify() {}

    /// Send a `notify.test` event to one target (admin).
    #[utoipa::path(post, path = "/api/v1/notify/test", operation_id = "testNotify", request_body = NotifyTestRequest,
        responses(
            (status = 202, description = "the test event, on its way", body = Object),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn test_notify() {}

    /// Approve or reject a waiting flag change (approver of its environment, or admin; never
    /// the requester); the approval that completes the count applies it.
    #[utoipa::path(post, path = "/api/v1/flag-changes/{id}/decisions", operation_id = "decideFlagChange",
        request_body = FlagDecisionRequest,
        params(("id" = i64, Path, description = "the change's number")),
        responses(
            (status = 200, description = "the change after the decision", body = FlagChangeRecord),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn decide_flag_change() {}

    /// Make an OFREP client key for one environment (admin); the key is in this answer only.
    #[utoipa::path(post, path = "/api/v1/flag-keys", operation_id = "createFlagKey", request_body = FlagKeyRequest,
        responses(
            (status = 201, description = "made", body = CreatedFlagKey,
                headers(("Location" = String, description = "the key's path"))),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn create_flag_key() {}

    /// Every flag client key, revoked ones included (never the keys themselves; admin).
    #[utoipa::path(get, path = "/api/v1/flag-keys", operation_id = "listFlagKeys",
        responses(
            (status = 200, description = "flag keys", body = Vec<FlagKeyRecord>),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn list_flag_keys() {}

    /// Revoke a flag client key (admin): OFREP answers 401 to it from now on.
    #[utoipa::path(delete, path = "/api/v1/flag-keys/{name}", operation_id = "revokeFlagKey",
        params(("name" = String, Path, pattern = "^[A-Za-z0-9._@-]{1,64}$", description = "the key's name")),
        responses(
            (status = 200, description = "revoked", body = FlagKeyRecord),
            (status = "default", description = ANY_ERROR, body = Problem, content_type = "application/problem+json")))]
    fn revoke_flag_key() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each rule between fields lands on a schema of the document and overwrites nothing
    /// utoipa derived there.
    #[test]
    fn every_constraint_adds_to_a_schema_of_the_document() {
        let derived = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let served: serde_json::Value = serde_json::from_str(&document()).unwrap();
        for (name, keywords) in shipgate_api::constraints::constraints() {
            let schema = &derived["components"]["schemas"][name];
            assert!(schema.is_object(), "{name} is not a schema of the document");
            for (key, value) in keywords.as_object().unwrap() {
                assert!(schema.get(key).is_none(), "{name} has its own {key}");
                assert_eq!(&served["components"]["schemas"][name][key], value);
            }
        }
    }
}
