//! Answers that are not records of the store: what creating something returns, log chunks,
//! the leak check, and errors.

use serde::{Deserialize, Serialize};
use shipgate_core::gate::Decision;
use shipgate_core::{AppName, EnvName};
use utoipa::ToSchema;

use crate::data::ColumnLeaks;
use crate::records::{FlagChange, FlagChangeRecord, Promotion, Release, TokenRecord};

/// `POST /api/v1/apps/{app}/releases`: 201 when registered now, 200 when it already was.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedRelease {
    /// The release on record.
    pub release: Release,
    /// False when this version was already registered with this digest (nothing was written).
    pub created: bool,
}

/// `GET /api/v1/apps/{app}/releases/{version}`: a release and, for an image, what it holds.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReleaseDetail {
    /// The release on record.
    pub release: Release,
    /// Its image, for an image release.
    pub image: Option<ImageSummary>,
}

/// `GET /api/v1/signoffs` and `POST /api/v1/signoffs`: a release's user acceptance sign-off
/// in one environment, as a tester needs it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SignoffStatus {
    /// The promotion signed off (its latest into the environment with a sign-off).
    pub promotion: Promotion,
    /// `open` while it waits, `complete` once every scenario passed, `failed` after a fail,
    /// `ended` when it stopped otherwise (rejected, rolled back, the server restarted mid-way
    /// is not one: it carries on).
    pub outcome: String,
    /// Where it stands, in words.
    pub progress: String,
    /// The role that may sign (an admin always may).
    pub role: shipgate_core::Role,
    /// Where the environment answers: what the testers open.
    pub url: String,
    /// When it began to wait for sign-off.
    pub requested_at: jiff::Timestamp,
    /// Each scenario with its passes and fails, in the config's order.
    pub scenarios: Vec<ScenarioStatus>,
    /// The release last signed off in this environment, if one was.
    pub since: Option<String>,
    /// The releases registered after it, up to this one (its commit and notes): what changed.
    pub changes: Vec<Release>,
    /// Who asked for the promotion (they may not sign it).
    pub requested_by: String,
}

/// `POST /api/v1/load`: the run and its report as the gate shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LoadReport {
    /// The run, with its figures and verdict.
    pub run: crate::records::LoadRun,
    /// Each figure beside the previous release's, and the verdict, in words.
    pub report: String,
}

/// One scenario of a sign-off.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScenarioStatus {
    /// As the config names it.
    pub name: String,
    /// Its passes and fails, oldest first.
    pub entries: Vec<shipgate_core::signoff::SignoffEntry>,
}

/// An image release's image, as `release show` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImageSummary {
    /// `os/architecture`.
    pub platform: String,
    /// The image config's digest.
    pub config_digest: String,
    /// The layers, lowest first.
    pub layers: Vec<ImageLayer>,
    /// The layers' sizes together, in bytes (as stored: compressed).
    pub size: u64,
    /// The user it names (empty: root, which shipgate never runs it as).
    pub user: String,
    /// What it runs: Entrypoint then Cmd.
    pub command: Vec<String>,
    /// Where it starts.
    pub workdir: String,
    /// The ports it says it listens on (`8080/tcp`).
    pub exposed_ports: Vec<String>,
}

/// One layer of an image.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImageLayer {
    /// `sha256:` and 64 hex digits.
    pub digest: String,
    /// Bytes as stored.
    pub size: u64,
    /// Its media type.
    pub media_type: String,
}

/// `POST /api/v1/approvals`: the decision and the promotion it is about.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DecisionRecorded {
    /// The promotion decided on.
    pub promotion: Promotion,
    /// The decision as recorded.
    pub decision: Decision,
}

/// `POST /api/v1/tokens`: the secret, shown this once (only its hash is stored).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// The secret to send as `Authorization: Bearer ...`.
    pub token: String,
    /// The token as stored.
    pub record: TokenRecord,
}

/// `POST /api/v1/reload`: what the new config file changes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Reloaded {
    /// Each change, in config order; empty when the file says what runs already.
    pub changes: Vec<String>,
    /// Whether the server is starting again on it now (the data plane keeps serving).
    pub reloading: bool,
}

/// `POST /api/v1/hosts`: the host's one-time join token, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedHost {
    /// The token for `shipgate agent --join`; it works once.
    pub token: String,
    /// The SHA-256 of shipgate's CA certificate (hex), for `shipgate agent --ca-fingerprint`:
    /// the joining agent checks the CA it is sent against it, so nobody between it and the
    /// server can hand it another.
    pub ca_fingerprint: String,
    /// The host as stored.
    pub record: crate::records::HostRecord,
}

/// `POST /api/v1/hosts/join`: the agent's certificate, and what it needs to dial in.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Joined {
    /// Its certificate (PEM), issued by shipgate's CA for the public key it sent.
    pub certificate: String,
    /// The CA's certificate (PEM): the only issuer the agent trusts for the server.
    pub ca: String,
    /// The port agents dial on the server's address (mutual TLS).
    pub agent_port: u16,
}

/// `GET /api/v1/hosts/endpoint`: where agents dial.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentEndpoint {
    /// The port agents dial on the server's address (mutual TLS).
    pub agent_port: u16,
}

/// `GET /api/v1/logs`: a piece of an instance's output.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct LogChunk {
    /// The text read.
    pub text: String,
    /// Where to read from next time (to follow the log).
    pub offset: u64,
}

/// `GET /api/v1/data/check`: masked data compared with the data it was made from.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DataCheck {
    /// The app.
    pub app: AppName,
    /// The environment checked.
    pub env: EnvName,
    /// Where its data comes from.
    pub from: EnvName,
    /// Values equal to their source where the rule does not allow it; 0 is a pass.
    pub leaked: u64,
    /// Each masked column.
    pub columns: Vec<ColumnLeaks>,
}

/// Every error: `application/problem+json` (RFC 9457), with a detail saying what to do next.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the status and title say what kind of problem it is.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short name of the problem.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened and what to do next, for a person.
    pub detail: String,
}

/// `POST /api/v1/gc`: what retention removed (or, with `dry_run`, would remove).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GcReport {
    /// Whether this only says what would go.
    pub dry_run: bool,
    /// The releases whose artifact and directory go (their record stays).
    pub releases: Vec<PrunedRelease>,
    /// The log files that go.
    pub logs: Vec<PrunedLog>,
    /// Releases older than the newest `retention.releases` that stay, and why.
    pub kept: Vec<KeptRelease>,
    /// Artifacts in the data dir that no release refers to (an upload whose unpacking failed
    /// could leave one), which go whatever `retention` keeps.
    #[serde(default)]
    pub orphans: Vec<OrphanArtifact>,
    /// The bytes freed (or that would be).
    pub freed_bytes: u64,
}

/// A release retention removes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PrunedRelease {
    /// The app.
    pub app: shipgate_core::AppName,
    /// The version.
    pub version: shipgate_core::Version,
    /// Its digest.
    pub digest: shipgate_core::Digest,
    /// The bytes its artifact and directory take.
    pub bytes: u64,
}

/// An artifact in the data dir that no release refers to.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrphanArtifact {
    /// Its digest.
    pub digest: shipgate_core::Digest,
    /// The bytes it and its release directory take.
    pub bytes: u64,
}

/// A log file retention removes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PrunedLog {
    /// Its path.
    pub path: String,
    /// Its size.
    pub bytes: u64,
}

/// An old release retention keeps.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeptRelease {
    /// The app.
    pub app: shipgate_core::AppName,
    /// The version.
    pub version: shipgate_core::Version,
    /// Why it stays (`live in production`, `standby in staging`, `where a rollback of
    /// production goes`, `promotion in progress`).
    pub why: Vec<String>,
}

/// An on-demand environment as `env list`, `env create` and the dashboard show it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OnDemandView {
    /// The record: template, requester, port, state, expiry, releases asked for, outcome.
    #[serde(flatten)]
    pub record: crate::records::OnDemandRecord,
    /// Its own address (`http://127.0.0.1:9100`).
    pub url: String,
    /// Where it is reached by name on the template's address, if the template names them.
    pub named_url: Option<String>,
    /// What is live in it now (`web@1.4.2-pr123`).
    pub live: Vec<shipgate_core::ReleaseRef>,
    /// Whole seconds until it expires, rounded up: 0 only once its expiry has passed.
    pub expires_in_secs: u64,
}

impl OnDemandView {
    /// Whether its expiry has passed (it goes at the next sweep).
    pub fn is_due(&self) -> bool {
        self.expires_in_secs == 0
    }

    /// The time left, for people: `2d 3h`, `5h 20m`, `40m`, `59s`, or `due` once it has passed.
    pub fn time_left(&self) -> String {
        let secs = self.expires_in_secs;
        let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
        match (d, h, m) {
            _ if self.is_due() => "due".into(),
            (0, 0, 0) => format!("{secs}s"),
            (0, 0, m) => format!("{m}m"),
            (0, h, m) => format!("{h}h {m}m"),
            (d, h, _) => format!("{d}d {h}h"),
        }
    }
}

/// A declared flag and its state in one environment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FlagView {
    /// The app that declares it.
    pub app: AppName,
    /// Its key.
    pub flag: String,
    /// The environment.
    pub env: EnvName,
    /// The type of its values.
    pub kind: shipgate_core::flag::FlagType,
    /// What it is for.
    pub description: Option<String>,
    /// Its variants and their values.
    #[schema(value_type = Object)]
    pub variants: serde_json::Value,
    /// The variant served when it is off or no rule matches.
    pub default_variant: String,
    /// Its state there (off when never set).
    pub state: shipgate_core::flag::FlagState,
    /// The state as text (`off`, `on (on)`, `rules: 10% on / 90% off`).
    pub summary: String,
}

/// `POST /api/v1/flag-keys`: the key, shown this once (only its hash is stored).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedFlagKey {
    /// The key to send as `X-API-Key` (or `Authorization: Bearer ...`) to `/ofrep/v1/`.
    pub key: String,
    /// The key as stored.
    pub record: crate::records::FlagKeyRecord,
}

/// `POST /api/v1/flags/promote`: what changed (or would, with `dry_run`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FlagPromotion {
    /// The app.
    pub app: AppName,
    /// The source environment.
    pub from: EnvName,
    /// The target environment.
    pub to: EnvName,
    /// Each flag that differs; empty when the target has the source's states already.
    pub changes: Vec<FlagChange>,
    /// Whether the changes were applied (false for a dry run, when nothing differs, and when
    /// they wait for approvals).
    pub applied: bool,
    /// The change waiting for approvals, when the target requires them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<FlagChangeRecord>,
}

/// `GET /api/v1/probe/traffic`: the figures, and whether they are within the limits asked.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TrafficProbe {
    /// True when every limit asked holds.
    pub within: bool,
    /// The router's figures for the app's live release over the last minute (what the fault
    /// rules touched is counted apart and not in them); None before any traffic.
    pub traffic: Option<crate::status::Traffic>,
    /// Each limit that does not hold, in words.
    pub beyond: Vec<String>,
}

/// `GET /api/v1/chaos/proxies`: one change in force on a dependency proxy, made through the
/// Toxiproxy API or an experiment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProxyFaultView {
    /// The proxy (`staging.db`).
    pub proxy: String,
    /// Its environment.
    #[schema(value_type = String)]
    pub env: EnvName,
    /// The toxic; None: the proxy is down.
    pub toxic: Option<shipgate_core::chaos::Toxic>,
    /// The token (or experiment) that made it.
    pub created_by: String,
    /// When it ends by itself (`chaos.max_duration` after it was made).
    #[schema(value_type = String)]
    pub ends_at: jiff::Timestamp,
}

/// `GET /api/v1/notify`: one notification target and how its deliveries stand.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NotifyTargetView {
    /// Its name.
    pub name: String,
    /// Where it is sent, without its path (which may hold a secret, as Slack's do).
    pub url: String,
    /// `cloudevents` or `slack`.
    pub format: String,
    /// The event kinds it takes.
    pub events: Vec<String>,
    /// Whether its bodies are signed.
    pub signed: bool,
    /// Deliveries the receiver took.
    pub delivered: u64,
    /// Deliveries still being tried.
    pub pending: u64,
    /// Deliveries given up on (the dead-letter list).
    pub dead: u64,
}

/// `GET /api/v1/notify`: every target, and the dead-letter list with each delivery's attempts.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NotifyView {
    /// The targets of the config.
    pub targets: Vec<NotifyTargetView>,
    /// Deliveries given up on, newest first.
    pub dead: Vec<crate::records::Delivery>,
}

/// `GET /api/v1/dora`: the four metrics of each app and environment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DoraView {
    /// The window in days up to `at`.
    pub days: u32,
    /// When they were worked out.
    #[schema(value_type = String)]
    pub at: jiff::Timestamp,
    /// The environment at the end of the flow (production), where the metrics are DORA's own.
    pub production: Option<EnvName>,
    /// Per app and environment.
    pub figures: Vec<shipgate_core::dora::Figures>,
}

/// One secret of an environment: its newest version, never its value.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretInfo {
    /// The environment.
    pub env: EnvName,
    /// Its name.
    pub name: String,
    /// Its newest version (a removal is a version too).
    pub version: i64,
    /// Who set that version.
    pub set_by: String,
    /// When.
    pub set_at: jiff::Timestamp,
    /// `shipgate secret set`, `shipgate secret rm` or `secrets_file FILE`.
    pub source: String,
    /// The variables of the environment that are this secret.
    pub used_by: Vec<String>,
    /// Whether this version removed it.
    pub removed: bool,
}

/// `PUT /api/v1/secrets/{env}/{name}`: the version set, and the promotions `deploy` asked for.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretSet {
    /// The version set.
    pub secret: SecretInfo,
    /// The redeploys of the live releases that use it (with `deploy`).
    pub promotions: Vec<Promotion>,
}

/// `GET /api/v1/secrets-recipient`: the age recipient `secrets_file`s are encrypted for.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretsRecipient {
    /// `age1...`: `age -r RECIPIENT -o secrets.production.age secrets.production`.
    pub recipient: String,
}

/// `POST /api/v1/auth/login`: where to send the person to sign in at the identity provider.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginStarted {
    /// The provider's authorization address for this sign-in (it comes back to the
    /// `redirect_uri` asked for, with `code` and `state`).
    pub authorize_url: String,
}

/// `POST /api/v1/auth/token`: a session for the CLI, after a sign-in at the provider.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionToken {
    /// The session's secret (`sgs_` and hex), sent as `Authorization: Bearer ...`; shown once.
    pub token: String,
    /// When the session ends at the latest (the person's groups are read again before then).
    #[schema(value_type = String)]
    pub expires_at: jiff::Timestamp,
    /// The person signed in, as the audit log names them.
    pub name: String,
    /// Their roles, each with the environments it holds in ("deployer (development)").
    pub roles: Vec<String>,
}
