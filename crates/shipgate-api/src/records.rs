//! What the store records and the API answers with: releases, promotions, gates, what is live,
//! audit events and tokens.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use shipgate_core::{
    AppName, Digest, EnvName, EventKind, PromotionId, PromotionKind, PromotionState, Version,
};
use utoipa::ToSchema;

/// A registered, immutable release.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Release {
    /// The app.
    pub app: AppName,
    /// Its version.
    pub version: Version,
    /// sha256 of the artifact as uploaded.
    pub digest: Digest,
    /// Artifact size in bytes.
    pub size: i64,
    /// Source commit, if given.
    pub commit: Option<String>,
    /// When that commit was made, if known (`--commit-time`, or git's for `--commit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub commit_time: Option<Timestamp>,
    /// Free text, if given.
    pub notes: Option<String>,
    /// Who registered it.
    pub created_by: String,
    /// When (RFC 3339).
    pub created_at: Timestamp,
}

/// A request to put one release into one environment, and where it stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Promotion {
    /// Sequence number.
    pub id: PromotionId,
    /// The app.
    pub app: AppName,
    /// The version promoted.
    pub version: Version,
    /// Its digest (the one deployed).
    pub digest: Digest,
    /// Target environment.
    pub env: EnvName,
    /// Promote or rollback.
    pub kind: PromotionKind,
    /// Where it stands.
    pub state: PromotionState,
    /// Who asked for it.
    pub requested_by: String,
    /// The version live in the environment when it was asked for.
    pub previous_version: Option<Version>,
    /// Why it ended as it did (failure, supersession), if it has.
    pub reason: Option<String>,
    /// When it was asked for (RFC 3339).
    pub created_at: Timestamp,
    /// Last change (RFC 3339).
    pub updated_at: Timestamp,
}

/// One recorded requirement or verification step of a promotion.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Gate {
    /// Sequence number.
    pub id: i64,
    /// The promotion it belongs to.
    pub promotion_id: PromotionId,
    /// What was checked (`deploy`, `health`, `test: ./smoke --url ...`).
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// Output kept for `history` (truncated to its last 64 KiB).
    pub output: String,
    /// When it started (RFC 3339).
    pub started_at: Timestamp,
    /// When it ended (RFC 3339).
    pub finished_at: Timestamp,
}

/// The release live in one environment for one app.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct LiveRelease {
    /// The app.
    pub app: AppName,
    /// The environment.
    pub env: EnvName,
    /// The live version.
    pub version: Version,
    /// Its digest.
    pub digest: Digest,
    /// The promotion that made it live.
    pub promotion_id: PromotionId,
    /// Since when (RFC 3339).
    pub since: Timestamp,
}

/// One audit record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Event {
    /// Sequence number, 1-based and gapless.
    pub id: i64,
    /// When (RFC 3339).
    pub at: Timestamp,
    /// Who caused it.
    pub actor: String,
    /// What kind of change (`promotion.succeeded`, ...).
    #[schema(value_type = String, example = "promotion.succeeded")]
    pub kind: EventKind,
    /// The app concerned, if any.
    pub app: Option<String>,
    /// The environment concerned, if any.
    pub env: Option<String>,
    /// The promotion concerned, if any.
    pub promotion_id: Option<PromotionId>,
    /// What happened, in a sentence.
    pub message: String,
    /// Details.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    /// Hash of the event before.
    pub prev_hash: String,
    /// Hash of this event (see `shipgate_core::audit`).
    pub hash: String,
}

impl Event {
    /// The hash this event should carry.
    pub fn compute_hash(&self) -> String {
        let data = self.data.to_string();
        let kind = self.kind.to_string();
        let at = self.at.to_string();
        shipgate_core::audit::chain_hash(
            &self.prev_hash,
            &shipgate_core::audit::EventContent {
                id: self.id,
                at: &at,
                actor: &self.actor,
                kind: &kind,
                message: &self.message,
                data: &data,
            },
        )
    }
}

/// Result of checking the audit chain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct AuditReport {
    /// Events found intact before the first problem.
    pub checked: usize,
    /// The first problem, if any.
    pub problem: Option<String>,
}

/// A host agents may run on, as stored: added with a one-time join token (only its hash is
/// kept), joined when its agent swapped that token for a certificate (only its fingerprint is
/// kept), removed when that certificate was revoked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct HostRecord {
    /// Its name (`environments.X.hosts` names it).
    pub name: String,
    /// When it was added.
    pub added_at: Timestamp,
    /// When its agent joined, if it has.
    pub joined_at: Option<Timestamp>,
    /// The SHA-256 of the certificate it was issued, if it has joined.
    pub fingerprint: Option<String>,
    /// When it was removed (its certificate revoked), if it was.
    pub removed_at: Option<Timestamp>,
}

/// An on-demand environment as stored: made from a template for a requester, on a port of
/// the template's range, until it expires.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct OnDemandRecord {
    /// Its name (`pr-123`).
    pub name: EnvName,
    /// The template it was made from.
    pub template: EnvName,
    /// Who asked for it (the token's name).
    pub requester: String,
    /// Its router's port, in the template's `listen_range`.
    pub port: u16,
    /// Where it is in its life.
    pub state: shipgate_core::on_demand::OnDemandState,
    /// How long it lives after its last use (or its creation), in seconds.
    pub ttl_secs: u64,
    /// When it was asked for.
    pub created_at: Timestamp,
    /// When the reaper deletes it, unless it is used or extended.
    pub expires_at: Timestamp,
    /// The releases asked for (`web@1.4.2-pr123`); none: those live in the template's `from`.
    pub releases: Vec<shipgate_core::ReleaseRef>,
    /// What making it found: each seed, deploy and test, or why it failed.
    pub outcome: Option<String>,
}

/// An API token as stored: only its hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct TokenRecord {
    /// Sequence number.
    pub id: i64,
    /// Who it belongs to (shown as the actor of what it does).
    pub name: String,
    /// Its role.
    pub role: shipgate_core::Role,
    /// The environments it is limited to (a name, or a prefix and `*`); empty: all.
    pub envs: Vec<shipgate_core::EnvScope>,
    /// The person it belongs to, when not the one its name says (`token create --person`).
    #[serde(default)]
    pub person: Option<String>,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it was revoked, if it was.
    pub revoked_at: Option<Timestamp>,
    /// When it stops working (`token create --expires`); none: when revoked.
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
}

impl TokenRecord {
    /// What the token may do.
    pub fn grant(&self) -> shipgate_core::Grant {
        shipgate_core::Grant {
            name: self.name.clone(),
            role: self.role,
            envs: self.envs.clone(),
            person: self.person.clone(),
            also: Vec::new(),
        }
    }
}

/// A feature flag's state in one environment, as last set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct FlagRecord {
    /// The environment.
    pub env: EnvName,
    /// The app that declares the flag.
    pub app: AppName,
    /// The flag's key.
    pub flag: String,
    /// Its state there.
    pub state: shipgate_core::flag::FlagState,
    /// When it was set.
    #[schema(value_type = String)]
    pub changed_at: Timestamp,
    /// Who set it.
    pub changed_by: String,
}

/// A client key for OFREP: it selects one environment's flags. Only its hash is stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct FlagKeyRecord {
    /// Its name (unique).
    pub name: String,
    /// The environment it selects.
    pub env: EnvName,
    /// When it was made.
    #[schema(value_type = String)]
    pub created_at: Timestamp,
    /// Who made it.
    pub created_by: String,
    /// When it was revoked, if it was.
    #[schema(value_type = Option<String>)]
    pub revoked_at: Option<Timestamp>,
}

/// One flag whose state a change sets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct FlagChange {
    /// The flag's key.
    pub flag: String,
    /// Its state in the environment before.
    pub before: shipgate_core::flag::FlagState,
    /// Its state there after.
    pub after: shipgate_core::flag::FlagState,
}

/// Where a flag change that waits for approvals stands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlagChangeStatus {
    /// Waiting for approvals.
    Pending,
    /// Approved and applied.
    Applied,
    /// Rejected by an approver.
    Rejected,
    /// Overtaken by a kill switch (`flag off`) of one of its flags before it was approved.
    Superseded,
}

impl FlagChangeStatus {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Applied => "applied",
            Self::Rejected => "rejected",
            Self::Superseded => "superseded",
        }
    }

    /// The status stored as `s`.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Applied,
            Self::Rejected,
            Self::Superseded,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// A change of flag states asked for in an environment that requires approvals: it is applied,
/// as one change, once enough approvers said yes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct FlagChangeRecord {
    /// Its number (`shipgate flag approve ID`).
    pub id: i64,
    /// The environment.
    pub env: EnvName,
    /// The app whose flags change.
    pub app: AppName,
    /// Each flag it sets; `before` is the state when it was asked for.
    pub changes: Vec<FlagChange>,
    /// Who asked for it.
    pub requested_by: String,
    /// When.
    #[schema(value_type = String)]
    pub requested_at: Timestamp,
    /// The approvals and rejections so far, oldest first.
    pub decisions: Vec<shipgate_core::gate::Decision>,
    /// Where it stands.
    pub status: FlagChangeStatus,
    /// When it stopped pending (applied, rejected or superseded).
    #[schema(value_type = Option<String>)]
    pub closed_at: Option<Timestamp>,
}

/// A chaos fault injected into an environment's router, with its end.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct FaultRecord {
    /// Its number (`shipgate chaos clear ID`).
    pub id: i64,
    /// The environment.
    pub env: EnvName,
    /// The app whose requests it touches.
    pub app: AppName,
    /// The rule the router applies.
    pub fault: shipgate_core::chaos::HttpFault,
    /// Who injected it.
    pub created_by: String,
    /// When.
    #[schema(value_type = String)]
    pub created_at: Timestamp,
    /// When it ends by itself.
    #[schema(value_type = String)]
    pub ends_at: Timestamp,
    /// When it ended, if it has.
    #[schema(value_type = Option<String>)]
    pub ended_at: Option<Timestamp>,
    /// Who ended it: a person, or `duration` when its time ran out.
    pub ended_by: Option<String>,
}

/// A backup of one app's data in one environment, with what its restore drill proved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct BackupRecord {
    /// Its number (`shipgate backup show ID`).
    pub id: i64,
    /// The app.
    pub app: AppName,
    /// The environment whose data it holds.
    pub env: EnvName,
    /// `running`, `taken`, `restorable`, `not_restorable`, `failed` or `interrupted`.
    pub state: String,
    /// Why it was taken: `schedule`, `promotion N`, or the person who asked.
    pub reason: String,
    /// `postgres` (pg_dump directory format) or `sqlite`.
    pub kind: String,
    /// The database it came from, password masked.
    pub source: String,
    /// sha256 over its files, once taken: where it lives under the data dir.
    pub checksum: Option<String>,
    /// Bytes, once taken.
    pub size: Option<i64>,
    /// How long taking it took, in milliseconds.
    pub duration_ms: Option<i64>,
    /// Rows of each table at its snapshot.
    pub counts: std::collections::BTreeMap<String, i64>,
    /// What its restore drill found, once run.
    pub drill: Option<serde_json::Value>,
    /// Why it failed or is not restorable.
    pub error: Option<String>,
    /// When it was started.
    #[schema(value_type = String)]
    pub created_at: Timestamp,
    /// When it was taken or failed.
    #[schema(value_type = Option<String>)]
    pub finished_at: Option<Timestamp>,
    /// When its drill ended.
    #[schema(value_type = Option<String>)]
    pub drilled_at: Option<Timestamp>,
    /// When retention removed its files (its record stays).
    #[schema(value_type = Option<String>)]
    pub pruned_at: Option<Timestamp>,
}

/// One run of a load test: a promotion's `verify.load` gate, a baseline, or a run on demand.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct LoadRun {
    /// Its number.
    pub id: i64,
    /// The app.
    pub app: AppName,
    /// The environment.
    pub env: EnvName,
    /// The release that served it.
    pub version: String,
    /// The promotion whose gate it was.
    pub promotion_id: Option<i64>,
    /// `gate`, `baseline` or `run`.
    pub kind: String,
    /// What makes two runs comparable (rate, durations, mix, connections).
    pub fingerprint: String,
    /// `pass`, `fail` or `inconclusive`, with why.
    pub verdict: shipgate_core::load::LoadVerdict,
    /// What it measured.
    pub figures: shipgate_core::load::LoadFigures,
    /// The run it was compared with, if any.
    pub compared_with: Option<i64>,
    /// When it ended.
    #[schema(value_type = String)]
    pub at: Timestamp,
}

/// Where a notification's delivery stands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not delivered yet; tried again at `next_at`.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Every attempt failed: on the dead-letter list until `shipgate notify retry`.
    Dead,
}

impl DeliveryStatus {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
        }
    }

    /// The status stored as `s`.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Dead]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// One event on its way to one notification target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Delivery {
    /// Its number (`shipgate notify retry ID`).
    pub id: i64,
    /// The target (`[notify.NAME]`).
    pub target: String,
    /// The audit event it announces.
    pub event_id: i64,
    /// The `webhook-id` it is sent with, the same on every attempt (receivers deduplicate by it).
    pub webhook_id: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// When it is tried next (while pending).
    #[schema(value_type = String)]
    pub next_at: Timestamp,
    /// What the last failed attempt said.
    pub last_error: Option<String>,
    /// When it was made.
    #[schema(value_type = String)]
    pub created_at: Timestamp,
    /// When the receiver took it.
    #[schema(value_type = Option<String>)]
    pub delivered_at: Option<Timestamp>,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct DeliveryAttempt {
    /// When.
    #[schema(value_type = String)]
    pub at: Timestamp,
    /// The receiver's status, when it answered.
    pub status: Option<u16>,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// How long it took.
    pub took_ms: i64,
}
