//! Records as the store keeps them. Those that cross the wire are the API's own types
//! (`shipgate-api`), re-exported here.

pub use shipgate_api::records::{
    AuditReport, BackupRecord, Delivery, DeliveryAttempt, DeliveryStatus, Event, FaultRecord,
    FlagChange, FlagChangeRecord, FlagChangeStatus, FlagKeyRecord, FlagRecord, Gate, HostRecord,
    LiveRelease, LoadRun, OnDemandRecord, Promotion, Release, TokenRecord,
};

use serde::{Deserialize, Serialize};
use shipgate_core::{
    AppName, Digest, EnvName, InstanceId, PromotionId, PromotionKind, PromotionState, Version,
};

/// A release about to be registered.
#[derive(Debug, Clone)]
pub struct NewRelease {
    /// The app.
    pub app: AppName,
    /// Its version.
    pub version: Version,
    /// sha256 of the artifact.
    pub digest: Digest,
    /// Artifact size in bytes.
    pub size: i64,
    /// Source commit.
    pub commit: Option<String>,
    /// When that commit was made (lead time for changes counts from it).
    pub commit_time: Option<jiff::Timestamp>,
    /// Free text.
    pub notes: Option<String>,
}

/// A promotion about to be recorded.
#[derive(Debug, Clone)]
pub struct NewPromotion {
    /// The app.
    pub app: AppName,
    /// The version.
    pub version: Version,
    /// Its digest.
    pub digest: Digest,
    /// Target environment.
    pub env: EnvName,
    /// Promote or rollback.
    pub kind: PromotionKind,
    /// What is live there now.
    pub previous_version: Option<Version>,
    /// An admin lifts deploy windows and freezes for this promotion, for this reason.
    pub override_reason: Option<String>,
    /// A hotfix's reason (its incident), said by its request's event.
    pub hotfix_reason: Option<String>,
}

/// An approval or rejection about to be recorded.
#[derive(Debug, Clone)]
pub struct NewDecision {
    /// The promotion decided on.
    pub promotion_id: PromotionId,
    /// Before the deploy or on a held watch.
    pub stage: shipgate_core::gate::Stage,
    /// Who decides.
    pub actor: String,
    /// Their token's role.
    pub role: shipgate_core::Role,
    /// Approve or reject.
    pub verdict: shipgate_core::Verdict,
    /// Why.
    pub comment: Option<String>,
}

/// A load test run about to be recorded.
#[derive(Debug, Clone)]
pub struct NewLoadRun {
    /// The app.
    pub app: AppName,
    /// The environment.
    pub env: EnvName,
    /// The release that served it.
    pub version: String,
    /// The promotion whose gate it was.
    pub promotion_id: Option<PromotionId>,
    /// `gate`, `baseline` or `run`.
    pub kind: String,
    /// Its config's fingerprint.
    pub fingerprint: String,
    /// Its verdict.
    pub verdict: shipgate_core::load::LoadVerdict,
    /// Its figures.
    pub figures: shipgate_core::load::LoadFigures,
    /// The run it was compared with.
    pub compared_with: Option<i64>,
}

/// A backup about to be taken (recorded `running` first).
#[derive(Debug, Clone)]
pub struct NewBackup {
    /// The app.
    pub app: AppName,
    /// The environment whose data it holds.
    pub env: EnvName,
    /// Why: `schedule`, `promotion N`, or the person who asked.
    pub reason: String,
    /// `postgres` or `sqlite`.
    pub kind: String,
    /// The database, password masked.
    pub source: String,
}

/// How a backup moves on.
#[derive(Debug, Clone)]
pub enum BackupEnd {
    /// Its files are written and checked in.
    Taken {
        /// sha256 over its files.
        checksum: String,
        /// Bytes.
        size: i64,
        /// How long it took.
        duration_ms: i64,
        /// Rows of each table at its snapshot.
        counts: std::collections::BTreeMap<String, i64>,
    },
    /// It could not be taken.
    Failed(String),
    /// The server stopped while it was taken.
    Interrupted(String),
    /// Its restore drill ran.
    Drilled {
        /// Whether it restored with matching counts and its queries passed.
        restorable: bool,
        /// What the drill found.
        drill: serde_json::Value,
        /// Why not, when not.
        error: Option<String>,
    },
    /// Retention removed its files.
    Pruned,
}

/// A verified promotion about to wait for its user acceptance sign-off.
#[derive(Debug, Clone)]
pub struct NewSignoffRequest {
    /// The promotion, `verifying`.
    pub promotion_id: PromotionId,
    /// Who may sign (an admin always may).
    pub role: shipgate_core::Role,
    /// What is signed, each on its own.
    pub scenarios: Vec<String>,
    /// Who asks (the engine).
    pub actor: String,
    /// The message of its `promotion.signing_off` event.
    pub message: String,
}

/// A pass or fail about to be recorded (its time is the store's).
#[derive(Debug, Clone)]
pub struct NewSignoff {
    /// The promotion, `signing_off`.
    pub promotion_id: PromotionId,
    /// What was signed.
    pub entry: shipgate_core::signoff::SignoffEntry,
}

/// An admin's override of a promotion's windows and freezes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Override {
    /// Who overrode.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When.
    pub at: jiff::Timestamp,
}

/// What a transition does to the environment's live release.
#[derive(Debug, Clone, PartialEq)]
pub enum LiveChange {
    /// Leave it.
    Keep,
    /// The promotion's release is now live.
    Promoted,
    /// Put back what was live before (the release and promotion given), or nothing.
    Restore(Option<LiveRelease>),
}

/// One change of a promotion's state, with its event.
#[derive(Debug, Clone)]
pub struct Transition {
    /// The promotion.
    pub promotion_id: PromotionId,
    /// States it may be in now.
    pub from: Vec<PromotionState>,
    /// State after.
    pub to: PromotionState,
    /// Why (for failures and supersession).
    pub reason: Option<String>,
    /// Effect on the live release.
    pub live: LiveChange,
    /// Who made the change.
    pub actor: String,
    /// The sentence recorded in the event.
    pub message: String,
    /// Also mark the promotion that made the previous release live as rolled back.
    pub roll_back_promotion: Option<PromotionId>,
}

/// Which promotions to list.
#[derive(Debug, Clone, Default)]
pub struct PromotionFilter {
    /// Only this app.
    pub app: Option<AppName>,
    /// Only these apps (any if empty).
    pub apps: Vec<AppName>,
    /// Only this environment.
    pub env: Option<EnvName>,
    /// Only this version.
    pub version: Option<Version>,
    /// Only these states (any if empty).
    pub states: Vec<PromotionState>,
    /// At most this many (all if None).
    pub limit: Option<i64>,
}

/// A gate result about to be recorded.
#[derive(Debug, Clone)]
pub struct NewGate {
    /// The promotion.
    pub promotion_id: PromotionId,
    /// What was checked.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// Its output.
    pub output: String,
    /// When it started.
    pub started_at: jiff::Timestamp,
}

/// An instance started for a release in an environment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceRecord {
    /// Driver key.
    pub id: InstanceId,
    /// The app.
    pub app: AppName,
    /// The environment.
    pub env: EnvName,
    /// The release version it runs.
    pub version: Version,
    /// The promotion it serves.
    pub promotion_id: PromotionId,
    /// Process id, if known.
    pub pid: Option<i64>,
    /// Its port.
    pub port: Option<i64>,
    /// `starting` (spawned, not yet healthy), `running` or `stopped`.
    pub state: String,
    /// Its log file.
    pub log_path: String,
}

impl InstanceRecord {
    /// An instance of promotion `p` about to be spawned (no pid or port yet).
    pub fn starting(p: &Promotion, id: &InstanceId, log_path: String) -> Self {
        Self {
            id: id.clone(),
            app: p.app.clone(),
            env: p.env.clone(),
            version: p.version.clone(),
            promotion_id: p.id,
            pid: None,
            port: None,
            state: "starting".into(),
            log_path,
        }
    }
}

/// An event about to be appended.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Who caused it.
    pub actor: String,
    /// What kind of change.
    pub kind: shipgate_core::EventKind,
    /// The app concerned.
    pub app: Option<String>,
    /// The environment concerned.
    pub env: Option<String>,
    /// The promotion concerned.
    pub promotion_id: Option<PromotionId>,
    /// What happened.
    pub message: String,
    /// Details.
    pub data: serde_json::Value,
}

impl NewEvent {
    /// An event of no app, environment or promotion: fill in actor, kind, message and data.
    pub fn about_nothing() -> Self {
        Self {
            actor: String::new(),
            kind: shipgate_core::EventKind::ReleaseCreated,
            app: None,
            env: None,
            promotion_id: None,
            message: String::new(),
            data: serde_json::Value::Null,
        }
    }
}

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only events after this id.
    pub after: i64,
    /// At most this many.
    pub limit: Option<i64>,
    /// Only this app.
    pub app: Option<String>,
    /// Only this environment.
    pub env: Option<String>,
    /// Only events caused by this actor.
    pub actor: Option<String>,
    /// Only this kind (`promotion.failed`), or this family of kinds (`promotion`).
    pub kind: Option<String>,
    /// Only events with id lower than this.
    pub before: Option<i64>,
    /// Newest first (the default is oldest first).
    pub newest_first: bool,
}

/// A token about to be stored.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: shipgate_core::Role,
    /// The environments it is limited to; empty: all.
    pub envs: Vec<shipgate_core::EnvScope>,
    /// Hex sha256 of the secret.
    pub hash: String,
    /// The person it belongs to, when not the one its name says: one person's tokens count
    /// as one approver, and never approve what that person caused.
    pub person: Option<String>,
    /// When it stops working; None: when revoked.
    pub expires_at: Option<jiff::Timestamp>,
}

/// What one app answered in one environment during one sample period of the traffic history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrafficSample {
    /// End of the period.
    pub at: jiff::Timestamp,
    /// Length of the period in seconds.
    pub seconds: f64,
    /// Responses.
    pub requests: u64,
    /// 5xx responses.
    pub errors: u64,
    /// Estimated 99th percentile latency, if there were responses.
    pub p99_ms: Option<f64>,
}

/// The right to run the engine, held by one server at a time. Every write of the engine
/// carries it (see [`crate::Store::fenced`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// The server holding it (its host name and data dir).
    pub holder: String,
    /// Where that server's API answers.
    pub address: String,
    /// Raised each time the lease changes hands (or is taken again after it expired).
    pub epoch: i64,
    /// When its holder took it.
    pub since: jiff::Timestamp,
    /// When it ends unless renewed, by the database's clock.
    pub expires_at: jiff::Timestamp,
}

/// A decision on a pending flag change, as the engine judged it.
#[derive(Debug, Clone)]
pub struct FlagDecision {
    /// The change.
    pub id: i64,
    /// How many decisions it had when the engine read it; another one since refuses this one.
    pub decided_before: usize,
    /// The decision to add.
    pub decision: shipgate_core::gate::Decision,
    /// The status to close it with (applied, rejected), or None to leave it pending.
    pub close: Option<FlagChangeStatus>,
}

/// A delivery to make: one event to one target.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// The target's name.
    pub target: String,
    /// The event.
    pub event_id: i64,
    /// Its `webhook-id`.
    pub webhook_id: String,
}

/// How an attempt leaves its delivery.
#[derive(Debug, Clone, Copy)]
pub enum AttemptOutcome {
    /// Delivered.
    Delivered,
    /// Tried again then.
    Retry {
        /// When.
        next_at: jiff::Timestamp,
    },
    /// Given up: on the dead-letter list.
    Dead,
}

/// A new version of a secret (or its removal: no value).
#[derive(Debug, Clone)]
pub struct NewSecret {
    /// The environment it belongs to.
    pub env: EnvName,
    /// Its name.
    pub name: String,
    /// The version it is to be (sealed under that number): the newest one plus one, or it is
    /// refused as a conflict, nothing written.
    pub version: i64,
    /// The value sealed with the secrets key; None: removed.
    pub sealed: Option<Vec<u8>>,
    /// The id of the key it is sealed with.
    pub key_id: String,
    /// Where it came from (`shipgate secret set`, `secrets_file FILE`).
    pub source: String,
}

/// One version of a secret as kept: its value only sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretVersion {
    /// The environment it belongs to.
    pub env: EnvName,
    /// Its name.
    pub name: String,
    /// Its version, from 1.
    pub version: i64,
    /// The sealed value; None: this version removed the secret.
    pub sealed: Option<Vec<u8>>,
    /// The id of the key it is sealed with.
    pub key_id: String,
    /// Where it came from.
    pub source: String,
    /// Who set it.
    pub set_by: String,
    /// When.
    pub set_at: jiff::Timestamp,
}

/// A secret version one promotion's instances got, as the variable `var`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployedSecret {
    /// The variable.
    pub var: String,
    /// The environment the secret belongs to.
    pub env: EnvName,
    /// The secret.
    pub name: String,
    /// Its version.
    pub version: i64,
}

/// A signed-in browser or command line: a token pasted on the dashboard (`token`), or a
/// person signed in through the identity provider (`oidc`). Only the hash of its id is kept.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// sha256 of the session's id (the cookie, or the CLI's token).
    pub id_hash: String,
    /// `token`, `oidc` or `cli`.
    pub kind: String,
    /// The hash of the pasted token (a `token` session), which must stay unrevoked.
    pub token_hash: Option<String>,
    /// What the session may do: a person's roles, read from their groups at sign-in and at
    /// each refresh.
    pub grant: shipgate_core::Grant,
    /// The person's email, if the provider gave one.
    pub email: Option<String>,
    /// The provider's refresh token, sealed with the secrets key.
    pub sealed_refresh: Option<Vec<u8>>,
    /// When the provider's ID token ends: the roles are read again then.
    pub idp_expires_at: Option<jiff::Timestamp>,
    /// The CSRF token of the dashboard's forms.
    pub csrf: String,
    /// When it began.
    pub created_at: jiff::Timestamp,
    /// When it ends at the latest.
    pub expires_at: jiff::Timestamp,
}
