//! What clients send: JSON bodies and query strings. Names arrive as text and are parsed by the
//! server into their domain types at once, so a refusal can say which field was wrong and what
//! to write instead; the schemas state the same patterns the parsers accept.

use serde::{Deserialize, Serialize};
use shipgate_core::{AppName, EnvName, ReleaseRef, Role, Verdict, Version};
use utoipa::{IntoParams, ToSchema};

/// The pattern of text that must not be blank (written out in each `#[schema]`, which takes
/// only a literal; a test holds them to this one): a character that is not white space in
/// Unicode's sense, which is what the server's `trim` removes. ECMA-262's `\S` would let
/// U+0085 (NEL) through, which Rust counts as white space.
pub const NOT_BLANK: &str =
    "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";

/// `POST /api/v1/promotions`: put a release into an environment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PromoteRequest {
    /// The release.
    #[schema(value_type = ReleaseRef)]
    pub release: String,
    /// The environment.
    #[schema(value_type = EnvName)]
    pub env: String,
    /// Admin only: a reason to lift deploy windows and freezes for this promotion, recorded in
    /// the audit log.
    #[serde(rename = "override", default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
    )]
    pub override_reason: Option<String>,
    /// A hotfix, for this reason (an incident): the release need only be verified in the
    /// environment's hotfix `from`, and the requirements its lane names are skipped (approvals
    /// never). Needs the lane's role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
    )]
    pub hotfix: Option<String>,
}

/// `POST /api/v1/approvals`: approve or reject the promotion of a release into an environment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DecisionRequest {
    /// The release.
    #[schema(value_type = ReleaseRef)]
    pub release: String,
    /// The environment.
    #[schema(value_type = EnvName)]
    pub env: String,
    /// Approve or reject; a rejection needs a comment.
    pub verdict: Verdict,
    /// Why, in words (not blank).
    #[serde(default)]
    #[schema(
        pattern = "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
    )]
    pub comment: Option<String>,
}

/// `POST /api/v1/signoffs`: pass or fail one scenario of a release's user acceptance sign-off.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignoffRequest {
    /// The release.
    #[schema(value_type = ReleaseRef)]
    pub release: String,
    /// The environment that signs it off.
    #[schema(value_type = EnvName)]
    pub env: String,
    /// The scenario, as the config names it.
    #[schema(min_length = 1, max_length = 200)]
    pub scenario: String,
    /// Pass or fail; a fail needs a note.
    pub verdict: shipgate_core::signoff::SignoffVerdict,
    /// What was seen, in words (not blank).
    #[serde(default)]
    #[schema(
        max_length = 2000,
        pattern = "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
    )]
    pub note: Option<String>,
}

/// `POST /api/v1/backups`: take a backup of an app's data in an environment, then its drill.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    /// The app.
    #[schema(value_type = AppName)]
    pub app: String,
    /// The environment whose data is backed up.
    #[schema(value_type = EnvName)]
    pub env: String,
}

/// `POST /api/v1/backups/{id}/restore`: replace the environment's data with a backup.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// Why, in words: recorded in the audit log.
    #[schema(
        min_length = 1,
        max_length = 2000,
        pattern = "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
    )]
    pub reason: String,
}

/// `GET /api/v1/backups`: the backups of an app, or of one environment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BackupsQuery {
    /// The app.
    #[schema(value_type = Option<AppName>)]
    #[param(value_type = Option<AppName>)]
    pub app: Option<String>,
    /// The environment.
    #[schema(value_type = Option<EnvName>)]
    #[param(value_type = Option<EnvName>)]
    pub env: Option<String>,
}

/// `POST /api/v1/load`: a load test against what an environment serves now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadRequestBody {
    /// The app.
    #[schema(value_type = AppName)]
    pub app: String,
    /// The environment.
    #[schema(value_type = EnvName)]
    pub env: String,
    /// Requests per second (default: the environment's `verify.load`, else 100). An integer;
    /// read as a number, so `200.0` is 200 as JSON Schema has it.
    #[serde(default)]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 1000000)]
    pub rate: Option<f64>,
    /// How long (`10s`; default: the gate's, else 10 s), at most an hour.
    #[serde(default)]
    #[schema(pattern = "^(?=.*[1-9])([0-9]{1,9}(ms|s|m|h|d))+$")]
    pub duration: Option<String>,
    /// Seed the gate's baseline: the environment's `verify.load` exactly, recorded as the
    /// figures the next release is compared with.
    #[serde(default)]
    pub baseline: bool,
}

/// `GET /api/v1/signoffs`: a release's sign-off in one environment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SignoffQuery {
    /// The release, `app@version`.
    #[schema(value_type = ReleaseRef)]
    #[param(value_type = ReleaseRef)]
    pub release: String,
    /// The environment that signs it off.
    #[schema(value_type = EnvName)]
    #[param(value_type = EnvName)]
    pub env: String,
}

/// `POST /api/v1/rollbacks`: return an environment to an earlier release.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RollbackRequest {
    /// The app.
    #[schema(value_type = AppName)]
    pub app: String,
    /// The environment.
    #[schema(value_type = EnvName)]
    pub env: String,
    /// The version to return to; none: the one live before the current one.
    #[serde(default)]
    #[schema(value_type = Option<Version>)]
    pub to: Option<String>,
}

/// `POST /api/v1/hosts`: add a host, for an agent to join.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostRequest {
    /// Its name, as `environments.X.hosts` names it.
    #[schema(value_type = shipgate_core::HostName)]
    pub name: String,
}

/// `POST /api/v1/hosts/join`: an agent swaps its one-time token for a certificate.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinRequest {
    /// The host it joins as.
    #[schema(value_type = shipgate_core::HostName)]
    pub name: String,
    /// The token `shipgate host add` printed.
    pub token: String,
    /// Its public key: the hex of an uncompressed P-256 point, `04` then x and y (its private
    /// key never leaves the host).
    #[schema(pattern = "^04[0-9a-fA-F]{128}$")]
    pub public_key: String,
}

/// `POST /api/v1/tokens`: make a token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenRequest {
    /// Its name, the actor of what it does: 1 to 64 letters, digits, `-`, `_`, `.` or `@`.
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    pub name: String,
    /// Its role.
    #[schema(value_type = Role)]
    pub role: String,
    /// The environments it is limited to, each a name or a prefix and `*` (`pr-*`); empty or
    /// absent: all.
    #[serde(default)]
    #[schema(value_type = Vec<shipgate_core::EnvScope>)]
    pub envs: Vec<String>,
    /// The person it belongs to, when not the one its name says (`alice` for `alice-ci`): one
    /// person's tokens count as one approver, and never approve what that person caused.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    pub person: Option<String>,
    /// How long it works (`90d`, at most ten years); absent: until revoked.
    #[serde(default)]
    #[schema(pattern = "^(?=.*[1-9])([0-9]{1,9}(ms|s|m|h|d))+$")]
    pub expires: Option<String>,
}

/// `POST /api/v1/freezes`: stop promotions into one environment, or into all of them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FreezeRequest {
    /// The environment; none: every environment.
    #[serde(default)]
    #[schema(value_type = Option<EnvName>)]
    pub env: Option<String>,
    /// Why, in words (not blank).
    #[schema(
        pattern = "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
    )]
    pub reason: String,
}

/// `POST /api/v1/canary/skip`: the canary of an app in an environment takes every request at
/// once (admin), with why.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CanarySkipRequest {
    /// The app.
    #[schema(value_type = AppName)]
    pub app: String,
    /// The environment.
    #[schema(value_type = EnvName)]
    pub env: String,
    /// Why, in words (not blank); recorded in the step's gate and the audit log.
    #[schema(
        pattern = "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
    )]
    pub reason: String,
}

/// One app in one environment: the body of `POST /api/v1/drift/heal`, the query of
/// `GET /api/v1/data/check`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AppEnv {
    /// The app.
    #[schema(value_type = AppName)]
    #[param(value_type = AppName)]
    pub app: String,
    /// The environment.
    #[schema(value_type = EnvName)]
    #[param(value_type = EnvName)]
    pub env: String,
}

/// `POST /api/v1/data/refresh`: copy an app's data from one environment into another, masked.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DataRefreshRequest {
    /// The app.
    #[schema(value_type = AppName)]
    pub app: String,
    /// Where the data comes from (read only).
    #[schema(value_type = EnvName)]
    pub from: String,
    /// Where it goes (replaced whole, or not at all).
    #[schema(value_type = EnvName)]
    pub to: String,
}

/// The query of `POST /api/v1/apps/{app}/releases`, whose body is the artifact.
#[derive(Debug, Clone, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReleaseQuery {
    /// The version to register.
    #[param(value_type = Version)]
    pub version: String,
    /// The sha256 the client computed of the body; the server compares it with what arrived.
    #[param(value_type = shipgate_core::Digest)]
    pub digest: String,
    /// Source commit.
    pub commit: Option<String>,
    /// When that commit was made (RFC 3339).
    pub commit_time: Option<String>,
    /// Free text.
    pub notes: Option<String>,
    /// The body is an OCI image layout (a tar, as `oci-archive:` is) taken from this reference
    /// (`oci-archive:PATH`, `oci:DIR`, `docker-archive:PATH`, `HOST[:PORT]/NAME:TAG`,
    /// `HOST[:PORT]/NAME@sha256:…`): the release is that image, its digest the manifest's.
    #[serde(default)]
    pub image: Option<String>,
}

/// An optional app filter.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AppQuery {
    /// Only this app.
    #[param(value_type = Option<AppName>)]
    pub app: Option<String>,
}

/// `GET /api/v1/diff`: an app compared in two environments.
#[derive(Debug, Clone, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DiffQuery {
    /// The app.
    #[param(value_type = AppName)]
    pub app: String,
    /// The first environment.
    #[param(value_type = EnvName)]
    pub a: String,
    /// The second environment.
    #[param(value_type = EnvName)]
    pub b: String,
}

/// `GET /api/v1/history`: an app's promotions, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// The app.
    #[param(value_type = AppName)]
    pub app: String,
    /// Only this environment.
    #[param(value_type = Option<EnvName>)]
    pub env: Option<String>,
    /// At most this many (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// `GET /api/v1/logs`: an instance's output.
#[derive(Debug, Clone, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// The app.
    #[param(value_type = AppName)]
    pub app: String,
    /// The environment.
    #[param(value_type = EnvName)]
    pub env: String,
    /// Read from this byte offset (as returned by the previous call); without it, the last
    /// `lines` lines.
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    pub offset: Option<u64>,
    /// How many lines from the end (default 100).
    #[param(minimum = 1, maximum = 100_000)]
    pub lines: Option<i64>,
    /// For an environment placed on hosts: the host whose instance's log to read (default:
    /// the first of its hosts that answers).
    pub host: Option<String>,
}

/// Which end of the event log a page of `/events` is taken from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventOrder {
    /// The oldest events after `after`, oldest first.
    #[default]
    Oldest,
    /// The newest events, newest first.
    Newest,
}

/// `GET /api/v1/events`: a page of the audit log.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events after this id.
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    pub after: Option<i64>,
    /// At most this many (default 1000).
    #[param(minimum = 1, maximum = 10_000)]
    pub limit: Option<i64>,
    /// Oldest first (default) or newest first.
    #[serde(default)]
    #[param(inline)]
    pub order: EventOrder,
    /// Only this app.
    #[param(value_type = Option<AppName>)]
    pub app: Option<String>,
    /// Only this environment.
    #[param(value_type = Option<EnvName>)]
    pub env: Option<String>,
    /// Only events caused by this actor (a token's name, or `shipgate`).
    pub actor: Option<String>,
    /// Only this kind (`promotion.failed`) or family (`promotion`).
    pub kind: Option<String>,
}

/// `DELETE /api/v1/freezes`: which freeze to lift.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FreezeQuery {
    /// The environment whose freeze is lifted; none: the every-environment freeze.
    #[param(value_type = Option<EnvName>)]
    pub env: Option<String>,
}

/// `POST /api/v1/gc`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GcRequest {
    /// Only say what would go.
    #[serde(default)]
    pub dry_run: bool,
}

/// `POST /api/v1/envs`: make an on-demand environment from a template.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OnDemandRequest {
    /// Its name (`pr-123`).
    #[schema(value_type = EnvName)]
    pub name: String,
    /// The template (`[templates.NAME]`).
    #[schema(value_type = EnvName)]
    pub template: String,
    /// The releases to deploy into it, one per app; none: those live in the template's `from`.
    #[serde(default)]
    #[schema(value_type = Vec<ReleaseRef>)]
    pub releases: Vec<String>,
    /// Its TTL instead of the template's (`24h`), above 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^(?=.*[1-9])([0-9]{1,9}(ms|s|m|h|d))+$")]
    pub ttl: Option<String>,
}

/// `POST /api/v1/envs/{name}/extend`: more time for an on-demand environment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExtendRequest {
    /// It expires this long from now, and this is its TTL from now on (`24h`), above 0.
    #[schema(pattern = "^(?=.*[1-9])([0-9]{1,9}(ms|s|m|h|d))+$")]
    pub ttl: String,
}

/// `POST /api/v1/flags`: set a flag's state in one environment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetFlagRequest {
    /// The app that declares the flag.
    #[schema(value_type = AppName)]
    pub app: String,
    /// The flag's key.
    pub flag: String,
    /// The environment.
    #[schema(value_type = EnvName)]
    pub env: String,
    /// The new state.
    pub state: shipgate_core::flag::FlagState,
}

/// `POST /api/v1/flag-keys`: make an OFREP client key that selects one environment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagKeyRequest {
    /// Its name (1 to 64 letters, digits, `-`, `_`, `.` or `@`).
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    pub name: String,
    /// The environment whose flags it evaluates.
    #[schema(value_type = EnvName)]
    pub env: String,
}

/// `GET /api/v1/flags?env=`: one environment's flags (every environment's without it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FlagsQuery {
    /// The environment.
    #[param(value_type = Option<EnvName>)]
    pub env: Option<String>,
}

/// `POST /api/v1/flags/promote`: give `to` the flag states `from` has, as one change.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagPromoteRequest {
    /// The app whose flags are promoted.
    #[schema(value_type = AppName)]
    pub app: String,
    /// Where the states come from.
    #[schema(value_type = EnvName)]
    pub from: String,
    /// Where they go.
    #[schema(value_type = EnvName)]
    pub to: String,
    /// Only this flag.
    #[serde(default)]
    pub flag: Option<String>,
    /// Only say what would change.
    #[serde(default)]
    pub dry_run: bool,
}

/// `GET /api/v1/flag-changes?env=&all=`: flag changes waiting for approvals.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FlagChangesQuery {
    /// Only this environment's.
    #[param(value_type = Option<EnvName>)]
    pub env: Option<String>,
    /// Decided ones too (applied, rejected, superseded), not only those waiting.
    #[serde(default)]
    pub all: bool,
}

/// `POST /api/v1/flag-changes/{id}/decisions`: approve or reject a waiting flag change.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagDecisionRequest {
    /// Approve or reject; a rejection needs a comment.
    pub verdict: Verdict,
    /// Why, in words (not blank).
    #[serde(default)]
    #[schema(
        pattern = "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
    )]
    pub comment: Option<String>,
}

/// `POST /api/v1/chaos`: inject an HTTP fault into an environment's router for a while: one
/// of `abort` and `delay`, and `jitter` only with `delay` (the document says so in `oneOf` and
/// `dependentRequired`, from [`crate::constraints`]).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChaosRequest {
    /// The environment (`chaos.allow = true` there; an admin at the end of the flow).
    #[schema(value_type = EnvName)]
    pub env: String,
    /// The app whose requests it touches.
    #[schema(value_type = AppName)]
    pub app: String,
    /// Answer this status (400 to 599) instead of the app. Either this or `delay`.
    #[serde(default, deserialize_with = "whole::optional_u16")]
    #[schema(minimum = 400, maximum = 599, nullable = false)]
    pub abort: Option<u16>,
    /// Hold each request this long before forwarding it (`300ms`), above 0 and at most 60s.
    /// Either this or `abort`.
    #[serde(default)]
    #[schema(nullable = false, pattern = "^(?=.*[1-9])([0-9]{1,9}(ms|s|m|h|d))+$")]
    pub delay: Option<String>,
    /// With `delay`: the most it varies either way (`100ms`), at most the delay.
    #[serde(default)]
    #[schema(nullable = false, pattern = "^([0-9]{1,9}(ms|s|m|h|d))+$")]
    pub jitter: Option<String>,
    /// The share of requests touched, above 0 and at most 100 (default 100).
    #[serde(default)]
    #[schema(exclusive_minimum = 0, maximum = 100)]
    pub percent: Option<f64>,
    /// Only requests whose path matches (`/api/*`): a pattern starting with `/` or `*`.
    #[serde(default)]
    #[schema(pattern = "^[/*]")]
    pub path: Option<String>,
    /// Only requests with this header (`x-chaos: 1`): `NAME: VALUE`.
    #[serde(default)]
    #[schema(
        pattern = "^[\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]*[!#$%&'*+.^_`|~0-9A-Za-z-]+[\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]*:"
    )]
    pub header: Option<String>,
    /// How long it lasts (`5m`), above 0 and at most the environment's `chaos.max_duration`.
    #[schema(pattern = "^(?=.*[1-9])([0-9]{1,9}(ms|s|m|h|d))+$")]
    pub duration: String,
}

/// `GET /api/v1/chaos` and `DELETE /api/v1/chaos`: which faults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChaosQuery {
    /// Only this environment's.
    #[param(value_type = Option<EnvName>)]
    pub env: Option<String>,
    /// Only this app's.
    #[param(value_type = Option<AppName>)]
    pub app: Option<String>,
    /// Only the fault with this number.
    pub id: Option<i64>,
    /// With `GET`: ended ones too.
    #[serde(default)]
    pub all: bool,
}

/// `GET /api/v1/probe/traffic`: whether an app's traffic through its environment's router
/// over the last minute is within limits (a probe for experiments: 200 within, 503 not).
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TrafficProbeQuery {
    /// The environment.
    #[param(value_type = EnvName)]
    pub env: String,
    /// The app.
    #[param(value_type = AppName)]
    pub app: String,
    /// The highest share of 5xx answers, 0 to 1.
    pub max_error_rate: Option<f64>,
    /// The highest p99 latency, in milliseconds.
    pub max_p99_ms: Option<f64>,
}

/// `POST /api/v1/notify/retry`: send dead deliveries again: some (`ids`) or every one
/// (`all`), never both (the document says so in `oneOf`, from [`crate::constraints`]).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyRetryRequest {
    /// The deliveries (`shipgate notify list` numbers them); empty or absent with `all`.
    #[serde(default, deserialize_with = "whole::list_i64")]
    pub ids: Vec<i64>,
    /// Every dead delivery (none dead: nothing is sent, and the answer is empty).
    #[serde(default)]
    pub all: bool,
}

/// The dead deliveries a [`NotifyRetryRequest`] asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadDeliveries {
    /// Every one on the dead-letter list.
    All,
    /// These, by number (at least one).
    These(Vec<i64>),
}

impl NotifyRetryRequest {
    /// Which deliveries it asks for; refused, saying what to send instead, when it names none
    /// or both some and all.
    pub fn deliveries(&self) -> Result<DeadDeliveries, String> {
        match (self.all, self.ids.is_empty()) {
            (true, true) => Ok(DeadDeliveries::All),
            (false, false) => Ok(DeadDeliveries::These(self.ids.clone())),
            (false, true) => Err(
                "name dead deliveries (shipgate notify list shows them) or ask for all of them"
                    .to_owned(),
            ),
            (true, false) => Err(
                "ask for all dead deliveries or name some (`ids`), not both: `all` already covers them"
                    .to_owned(),
            ),
        }
    }
}

/// `POST /api/v1/notify/test`: send a test event to one target.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyTestRequest {
    /// The target (`[notify.NAME]`).
    pub target: String,
}

/// `GET /api/v1/dora?app=&days=`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DoraQuery {
    /// Only this app.
    #[param(value_type = Option<AppName>)]
    pub app: Option<String>,
    /// The window in days up to now (1 to 365; default 30).
    #[param(minimum = 1, maximum = 365)]
    pub days: Option<u32>,
}

/// Whole numbers as JSON writes them: an integer, or a float without a fraction (`418.0`),
/// which JSON Schema counts as an integer too.
mod whole {
    use serde::Deserialize;

    fn whole<E: serde::de::Error>(n: &serde_json::Number) -> Result<i64, E> {
        n.as_i64()
            .or_else(|| {
                n.as_f64()
                    // Every whole float up to 2^53 is exact (schemathesis sent 2^53 - 1).
                    .filter(|f| f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0)
                    .map(|f| f as i64)
            })
            .ok_or_else(|| E::custom(format!("{n} is not a whole number")))
    }

    pub(super) fn optional_u16<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<u16>, D::Error> {
        Option::<serde_json::Number>::deserialize(d)?
            .map(|n| {
                let w = whole(&n)?;
                u16::try_from(w)
                    .map_err(|_| serde::de::Error::custom(format!("{n} is out of range")))
            })
            .transpose()
    }

    pub(super) fn list_i64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
        Vec::<serde_json::Number>::deserialize(d)?
            .iter()
            .map(whole)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::PartialSchema;

    #[test]
    fn a_whole_number_written_with_a_decimal_point_is_whole() {
        // Read exactly (serde_json's float_roundtrip): schemathesis sent this one.
        let r: NotifyRetryRequest =
            serde_json::from_str(r#"{"ids": [2094209689864899.0, 915900.0, 360]}"#).unwrap();
        assert_eq!(r.ids, [2094209689864899, 915900, 360]);
    }

    #[test]
    fn the_not_blank_pattern_refuses_exactly_what_trim_removes() {
        let pattern = regex_lite::Regex::new(NOT_BLANK).unwrap();
        for c in (0..=0x3100).filter_map(char::from_u32) {
            let text = c.to_string();
            assert_eq!(
                pattern.is_match(&text),
                !text.trim().is_empty(),
                "U+{:04X}",
                c as u32
            );
        }
    }

    #[test]
    fn every_text_that_must_not_be_blank_declares_the_pattern() {
        for schema in [
            PromoteRequest::schema(),
            DecisionRequest::schema(),
            FreezeRequest::schema(),
            FlagDecisionRequest::schema(),
        ] {
            let json = serde_json::to_string(&schema).unwrap();
            let pattern = serde_json::to_string(NOT_BLANK).unwrap();
            assert!(json.contains(&pattern), "{json}");
        }
    }

    /// The durations' patterns, written out in each `#[schema]`, are the ones of
    /// `shipgate_core::duration`, which a test there holds to `Duration::parse`.
    #[test]
    fn every_duration_declares_the_pattern_parse_accepts() {
        use shipgate_core::duration::{DURATION_PATTERN, NONZERO_DURATION_PATTERN};
        let patterns = |schema: utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>| {
            let json = serde_json::to_value(schema).unwrap();
            json["properties"]
                .as_object()
                .unwrap()
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v["pattern"].as_str()?.to_owned())))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let chaos = patterns(ChaosRequest::schema());
        assert_eq!(chaos["duration"], NONZERO_DURATION_PATTERN);
        assert_eq!(chaos["delay"], NONZERO_DURATION_PATTERN);
        assert_eq!(chaos["jitter"], DURATION_PATTERN);
        assert_eq!(
            patterns(OnDemandRequest::schema())["ttl"],
            NONZERO_DURATION_PATTERN
        );
        assert_eq!(
            patterns(ExtendRequest::schema())["ttl"],
            NONZERO_DURATION_PATTERN
        );
    }

    /// The header's pattern, checked against the parser on the characters around its edges.
    #[test]
    fn the_header_pattern_accepts_what_the_parser_accepts() {
        let json = serde_json::to_value(ChaosRequest::schema()).unwrap();
        let pattern = json["properties"]["header"]["pattern"].as_str().unwrap();
        let pattern = regex_lite::Regex::new(pattern).unwrap();
        let parts = [
            "", " ", "\u{85}", "\u{3000}", "x-chaos", "a b", ":", "é", "1", "\t",
        ];
        for a in parts {
            for b in parts {
                for c in parts {
                    let text = format!("{a}{b}{c}: 1");
                    assert_eq!(
                        pattern.is_match(&text),
                        shipgate_core::chaos::parse_header(&text).is_ok(),
                        "{text:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_retry_names_some_deliveries_or_all_of_them() {
        let retry = |ids: Vec<i64>, all| NotifyRetryRequest { ids, all }.deliveries();
        assert_eq!(retry(vec![], true), Ok(DeadDeliveries::All));
        assert_eq!(retry(vec![3], false), Ok(DeadDeliveries::These(vec![3])));
        assert!(
            retry(vec![], false)
                .unwrap_err()
                .contains("name dead deliveries")
        );
        assert!(retry(vec![3], true).unwrap_err().contains("not both"));
    }
}

/// `PUT /api/v1/secrets/{env}/{name}`: a new version of a secret. The value is never returned.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretSetRequest {
    /// The value (text without NUL).
    #[schema(min_length = 1, max_length = 65536, pattern = "^[^\\u0000]+$")]
    pub value: String,
    /// Roll the live releases whose variables use it, through the environment's gates.
    #[serde(default)]
    pub deploy: bool,
}

impl std::fmt::Debug for SecretSetRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSetRequest")
            .field("value", &"[secret]")
            .field("deploy", &self.deploy)
            .finish()
    }
}

/// `POST /api/v1/auth/login`: start a sign-in at the identity provider for the CLI.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginRequest {
    /// Where the provider sends the browser back: a loopback address of the CLI's machine,
    /// `http://127.0.0.1:PORT/...` or `http://localhost:PORT/...`.
    pub redirect_uri: String,
}

/// `POST /api/v1/auth/token`: trade what the provider sent back for a session.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenExchangeRequest {
    /// The `code` the provider sent back.
    pub code: String,
    /// The `state` it sent back with it.
    pub state: String,
}
