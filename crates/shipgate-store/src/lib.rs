//! Durable state of shipgate: releases, promotions and their gates, what is live where, the
//! instances started for it, API tokens, and the append-only, hash-chained event log; plus the
//! content-addressed artifact store on disk.
//!
//! Every change of state is written in one transaction together with its event. This crate
//! records decisions; it must not make them (the rules live in `shipgate-core`, the flow in
//! `shipgate-engine`). [`Store`] is the boundary; [`SqlStore`] implements it on SQLite (embedded)
//! and on PostgreSQL (several servers, one of them leading under the lease).
#![forbid(unsafe_code)]

pub mod age;
pub mod artifact;
pub mod cluster;
mod copy;
mod model;
mod schema;
pub mod seal;
mod sql;

pub use artifact::{
    ImageRecord, ImageRefusal, ImportedImage, LayerRecord, RunConfigJson, write_layout,
};
pub use copy::{CopyReport, copy_store};
pub use model::*;
pub use schema::Backend;
pub use sql::SqlStore;

use async_trait::async_trait;
use shipgate_core::gate::{Decision, Freeze, Stage};
use shipgate_core::{
    AppName, Digest, EnvName, InstanceId, PromotionId, PromotionState, Standing, Version,
};

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The version exists with other content; releases are immutable.
    #[error(
        "{app}@{version} is already registered with digest {existing}, and this artifact has digest {offered}; releases are immutable: register the new content under a new version"
    )]
    ReleaseConflict {
        /// The app.
        app: AppName,
        /// The version registered twice.
        version: Version,
        /// The digest on record.
        existing: Digest,
        /// The digest offered now.
        offered: Digest,
    },
    /// The promotion was not in a state the change starts from (someone else moved it first).
    #[error("promotion {id} is {actual}, not {expected}")]
    StateConflict {
        /// The promotion.
        id: PromotionId,
        /// The states the change starts from.
        expected: String,
        /// Its state now.
        actual: PromotionState,
    },
    /// No such record.
    #[error("{0} not found")]
    NotFound(String),
    /// Token names are unique (they are the actor in the audit log).
    #[error("a token named `{0}` already exists; choose another name (revoked tokens keep theirs)")]
    TokenExists(String),
    /// The change collides with one already recorded (a second freeze, a second decision).
    #[error("{0}")]
    Conflict(String),
    /// A stored value no longer parses: the database was changed outside shipgate.
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    /// A fenced store's lease has ended (another server may lead): nothing was written.
    #[error(
        "this server no longer holds the engine's lease (it held epoch {epoch} as {holder}); another server leads now, so nothing was written"
    )]
    Fenced {
        /// Who held the lease.
        holder: String,
        /// The epoch it held.
        epoch: i64,
    },
    /// The database failed while doing `context`.
    #[error("database error while {context}: {source}")]
    Database {
        /// What the store was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

/// Result of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything shipgate keeps: plain data in, plain data out, one transaction per method.
#[async_trait]
pub trait Store: Send + Sync {
    /// Registers a release. The same version with the same digest returns the existing release
    /// (`created == false`) and writes nothing; with another digest it is refused.
    async fn insert_release(&self, release: NewRelease, actor: &str) -> Result<(Release, bool)>;
    /// One release.
    async fn release(&self, app: &AppName, version: &Version) -> Result<Option<Release>>;
    /// Releases, newest first, of one app or all.
    async fn releases(&self, app: Option<&AppName>) -> Result<Vec<Release>>;

    /// Records a new pending promotion, superseding any pending one for the same app and
    /// environment (each with its event).
    async fn create_promotion(&self, promotion: NewPromotion, actor: &str) -> Result<Promotion>;
    /// Records a rollback that happened by switching traffic back to a still-running (standby)
    /// instance: the promotion goes straight to `succeeded`, its release is live, the promotion
    /// it replaced is `rolled_back`, and `gate` says what was switched, all in one transaction.
    async fn switch_back(
        &self,
        promotion: NewPromotion,
        replaced: PromotionId,
        gate: String,
        secrets: &[DeployedSecret],
        actor: &str,
    ) -> Result<Promotion>;
    /// Moves a promotion from one of `from` to `to`, applies `live`, and appends the event, all
    /// in one transaction; refused with [`StoreError::StateConflict`] if it was not in `from`.
    async fn transition(&self, change: Transition) -> Result<Promotion>;
    /// One promotion.
    async fn promotion(&self, id: PromotionId) -> Result<Option<Promotion>>;
    /// Promotions matching the filter, newest first.
    async fn promotions(&self, filter: PromotionFilter) -> Result<Vec<Promotion>>;
    /// Where a rollback of each live release of these apps goes by default: in its app and
    /// environment, the newest promotion that succeeded before the live one with another
    /// version (none where there is no such promotion). At most one per live release.
    async fn rollback_targets(&self, apps: &[AppName]) -> Result<Vec<Promotion>>;
    /// Where `app@version` stands in `env`: by its latest promotion there that succeeded (and
    /// maybe was rolled back since).
    async fn standing(&self, app: &AppName, version: &Version, env: &EnvName) -> Result<Standing>;

    /// When `app@version` last became verified in `env`, unless rolled back since.
    async fn verified_at(
        &self,
        app: &AppName,
        version: &Version,
        env: &EnvName,
    ) -> Result<Option<jiff::Timestamp>>;

    /// Records an approval or rejection with its event. Refused with
    /// [`StoreError::StateConflict`] unless the promotion is `pending` (entry stage) or
    /// `verifying` (watch stage), and with [`StoreError::Conflict`] if that person already decided.
    async fn record_decision(&self, decision: NewDecision) -> Result<Decision>;
    /// Moves a `verifying` promotion to `signing_off` and records what its sign-off asks, with
    /// both events (`promotion.signing_off`, `signoff.requested`); refused with
    /// [`StoreError::StateConflict`] unless it is `verifying`.
    async fn request_signoff(&self, request: NewSignoffRequest) -> Result<Promotion>;
    /// Records one pass or fail with its event (`signoff.passed`, `signoff.failed`). Refused
    /// with [`StoreError::StateConflict`] unless the promotion is `signing_off`, and with
    /// [`StoreError::Conflict`] if that person already signed that scenario.
    async fn record_signoff(
        &self,
        signoff: NewSignoff,
    ) -> Result<shipgate_core::signoff::SignoffEntry>;
    /// The sign-off sheet of a promotion, if it was asked for one.
    async fn signoff_sheet(
        &self,
        promotion_id: PromotionId,
    ) -> Result<Option<shipgate_core::signoff::SignoffSheet>>;
    /// Records a load test run with its event.
    async fn record_load_run(&self, run: NewLoadRun, event: NewEvent) -> Result<LoadRun>;
    /// The load test runs of `app` in `env`, newest first.
    async fn load_runs(&self, app: &AppName, env: &EnvName) -> Result<Vec<LoadRun>>;
    /// The id of the key the store's secrets are sealed with: the one recorded first, or `id`
    /// when none was (recorded now).
    async fn claim_secrets_key(&self, id: &str) -> Result<String>;
    /// The id of the key the store's secrets are sealed with, once one was claimed.
    async fn secrets_key_id(&self) -> Result<Option<String>>;
    /// Records the next version of a secret (a removal when it has no value), with its event.
    async fn set_secret(&self, secret: NewSecret, actor: &str) -> Result<SecretVersion>;
    /// Every version of every secret of `env`, by name then version.
    async fn secrets(&self, env: &EnvName) -> Result<Vec<SecretVersion>>;
    /// Records which secret versions a promotion's instances got (replacing what it had).
    async fn record_deployed_secrets(
        &self,
        promotion: PromotionId,
        secrets: &[DeployedSecret],
    ) -> Result<()>;
    /// The secret versions a promotion's instances got.
    async fn deployed_secrets(&self, promotion: PromotionId) -> Result<Vec<DeployedSecret>>;
    /// Keeps a new session (and the sign-in's event).
    async fn insert_session(&self, session: &SessionRecord, event: Option<NewEvent>) -> Result<()>;
    /// Who signed in under each name: `(name, person)` (the provider's subject), kept from
    /// every sign-in.
    async fn people(&self) -> Result<Vec<(String, String)>>;
    /// The session whose id hashes to `id_hash`, unless it ended.
    async fn session(&self, id_hash: &str) -> Result<Option<SessionRecord>>;
    /// A session's roles and provider tokens after a refresh at the provider.
    async fn refresh_session(
        &self,
        id_hash: &str,
        grant: &shipgate_core::Grant,
        sealed_refresh: Option<&[u8]>,
        idp_expires_at: Option<jiff::Timestamp>,
    ) -> Result<()>;
    /// Ends a session (and records why, when there is an event).
    async fn end_session(&self, id_hash: &str, event: Option<NewEvent>) -> Result<()>;
    /// Keeps a sign-in under way at the identity provider until `expires_at`.
    async fn insert_sign_in(
        &self,
        state_hash: &str,
        payload: &str,
        expires_at: jiff::Timestamp,
    ) -> Result<()>;
    /// Takes a sign-in under way (once: a second take finds nothing), unless it expired.
    async fn take_sign_in(&self, state_hash: &str) -> Result<Option<String>>;
    /// Records a backup as `running`, before its files are written.
    async fn start_backup(&self, backup: NewBackup) -> Result<BackupRecord>;
    /// Moves a backup on (taken, failed, interrupted, drilled, pruned) with its event; refused
    /// with [`StoreError::Conflict`] when it is not in the state that step follows.
    async fn finish_backup(&self, id: i64, end: BackupEnd, event: NewEvent)
    -> Result<BackupRecord>;
    /// Backups, newest first, of one app and environment or all.
    async fn backups(
        &self,
        app: Option<&AppName>,
        env: Option<&EnvName>,
    ) -> Result<Vec<BackupRecord>>;
    /// The decisions of one stage of a promotion, oldest first.
    async fn decisions(&self, promotion_id: PromotionId, stage: Stage) -> Result<Vec<Decision>>;
    /// The override of a promotion, if an admin gave one.
    async fn override_of(&self, promotion_id: PromotionId) -> Result<Option<Override>>;

    /// Freezes one environment (or all: `None`), with its event; refused with
    /// [`StoreError::Conflict`] if that scope is frozen already.
    async fn freeze(&self, env: Option<&EnvName>, reason: &str, actor: &str) -> Result<Freeze>;
    /// Lifts the freeze of exactly that scope, with its event.
    async fn unfreeze(&self, env: Option<&EnvName>, actor: &str) -> Result<Freeze>;
    /// Freezes in force, oldest first.
    async fn freezes(&self) -> Result<Vec<Freeze>>;

    /// Records one gate result of a promotion, with its event.
    async fn record_gate(&self, gate: NewGate, actor: &str) -> Result<Gate>;
    /// The gates of a promotion, in order.
    async fn gates(&self, promotion_id: PromotionId) -> Result<Vec<Gate>>;

    /// What is live, for one app or all.
    async fn live(&self, app: Option<&AppName>) -> Result<Vec<LiveRelease>>;
    /// What is live for these apps (a page of the dashboard).
    async fn live_of(&self, apps: &[AppName]) -> Result<Vec<LiveRelease>>;

    /// Records an instance (started or changed).
    async fn put_instance(&self, instance: InstanceRecord) -> Result<()>;
    /// Records that an instance has stopped.
    async fn mark_instance_stopped(&self, id: &InstanceId) -> Result<()>;
    /// Instances recorded as starting or running (to stop after a restart).
    async fn running_instances(&self) -> Result<Vec<InstanceRecord>>;

    /// Appends an event by itself (for changes that are not promotions: crashes, restarts).
    async fn append_event(&self, event: NewEvent) -> Result<Event>;
    /// Events with id greater than `after`, oldest first, at most `limit`.
    async fn events(&self, filter: EventFilter) -> Result<Vec<Event>>;
    /// Subscribes to every event appended from now on.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event>;

    /// Stores a token's hash under a name.
    async fn insert_token(&self, token: NewToken, actor: &str) -> Result<TokenRecord>;
    /// The token whose sha256 hash is `hash`, unless revoked.
    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>>;
    /// The token whose sha256 hash is `hash` if it no longer works, revoked or expired (so a
    /// refusal can say which).
    async fn revoked_token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>>;
    /// Every token, revoked ones included, oldest first.
    async fn tokens(&self) -> Result<Vec<TokenRecord>>;
    /// Revokes the active token of that name for the token `actor`, with its event; refused
    /// (see `shipgate_core::access::may_revoke`) for the last unscoped admin and for `actor` itself.
    async fn revoke_token(&self, name: &str, actor: &str) -> Result<TokenRecord>;

    /// Adds host `name`, waiting to join with the token whose hash is `token_hash`, with its
    /// event. A removed host of that name is added anew; a present one is refused.
    async fn add_host(&self, name: &str, token_hash: &str, actor: &str) -> Result<HostRecord>;
    /// Joins host `name` with its token (used up) and pins the certificate `fingerprint`, with
    /// its event. Refused unless the host waits to join with exactly that token.
    async fn join_host(
        &self,
        name: &str,
        token_hash: &str,
        fingerprint: &str,
    ) -> Result<HostRecord>;
    /// The joined, not removed host whose certificate has this fingerprint.
    async fn host_by_fingerprint(&self, fingerprint: &str) -> Result<Option<HostRecord>>;
    /// Every host, removed ones included, in name order.
    async fn hosts(&self) -> Result<Vec<HostRecord>>;
    /// Removes host `name` (its certificate is no longer accepted), with its event.
    async fn remove_host(&self, name: &str, actor: &str) -> Result<HostRecord>;

    /// Keeps one sample period of traffic for each of these slots, and forgets every sample
    /// older than `forget_before`.
    async fn record_traffic(
        &self,
        samples: &[(AppName, EnvName, TrafficSample)],
        forget_before: jiff::Timestamp,
    ) -> Result<()>;
    /// The traffic samples of an app in an environment since `since`, oldest first.
    async fn traffic(
        &self,
        app: &AppName,
        env: &EnvName,
        since: jiff::Timestamp,
    ) -> Result<Vec<TrafficSample>>;

    /// Takes the engine's lease for `length` if nobody holds it, its holder let it expire, or
    /// `holder` holds it already (a server starting again in the same process), always with a
    /// new epoch; `None` while another holder's lease runs. Judged by the database's
    /// clock, in one compare-and-set.
    async fn acquire_lease(
        &self,
        holder: &str,
        address: &str,
        length: std::time::Duration,
    ) -> Result<Option<Lease>>;
    /// Extends `lease` by `length` if nobody took it over (its epoch is still the current one,
    /// even if it ran out meanwhile: a renewal held up behind a long write is not a lost lease);
    /// `None` if it was lost.
    async fn renew_lease(
        &self,
        lease: &Lease,
        length: std::time::Duration,
    ) -> Result<Option<Lease>>;
    /// Ends `lease` now (a clean stop), so another server takes over without waiting.
    async fn release_lease(&self, lease: &Lease) -> Result<()>;
    /// The engine's lease as last taken (it may have expired).
    async fn lease(&self) -> Result<Option<Lease>>;
    /// This store, except that every write is refused with [`StoreError::Fenced`] once another
    /// server took `lease` over (its epoch moved on); the database checks it as the write's
    /// transaction begins, and the lease cannot change hands before that transaction ends.
    fn fenced(&self, lease: Lease) -> std::sync::Arc<dyn Store>;

    /// Keeps `value` under `name` unless a value is kept there already, and returns the value
    /// kept: the first server to ask decides (the CA that agents trust, shared by every server).
    async fn share_once(&self, name: &str, value: &str) -> Result<String>;
    /// Keeps `value` under `name` for every server (what the leader's data plane serves),
    /// replacing what was there; a write like any other, so a fenced store refuses it.
    async fn put_shared(&self, name: &str, value: &str) -> Result<()>;
    /// What is kept under `name` for every server.
    async fn shared(&self, name: &str) -> Result<Option<String>>;

    /// Whether several servers can share this store (PostgreSQL): then the artifacts, the
    /// agents' CA and what the hosts serve are kept in it too, for whichever server leads.
    fn is_shared(&self) -> bool;
    /// Stores the artifact file at `file` (already checked against `digest`) in chunks, read
    /// and written one at a time; an artifact stored already is left as it is.
    async fn put_artifact(&self, digest: &Digest, file: &std::path::Path) -> Result<()>;
    /// Removes the stored artifact of `digest` (retention), its chunks with it.
    async fn remove_artifact(&self, digest: &Digest) -> Result<()>;
    /// How many chunks the stored artifact of `digest` has, if it is stored.
    async fn artifact_chunks(&self, digest: &Digest) -> Result<Option<i64>>;
    /// Chunk `seq` (from 0) of the stored artifact of `digest`.
    async fn artifact_chunk(&self, digest: &Digest, seq: i64) -> Result<Vec<u8>>;

    /// Records a new on-demand environment with its event; refused with
    /// [`StoreError::Conflict`] if its name or port is taken.
    async fn insert_on_demand(
        &self,
        env: OnDemandRecord,
        event: NewEvent,
    ) -> Result<OnDemandRecord>;
    /// Writes an on-demand environment's state, TTL, expiry and outcome (with `event`, if any),
    /// if it is still in state `from`; refused with [`StoreError::Conflict`] otherwise.
    async fn update_on_demand(
        &self,
        env: &OnDemandRecord,
        from: shipgate_core::on_demand::OnDemandState,
        event: Option<NewEvent>,
    ) -> Result<()>;
    /// Moves an on-demand environment's expiry, unless it is being deleted.
    async fn touch_on_demand(&self, env: &EnvName, expires_at: jiff::Timestamp) -> Result<()>;
    /// Marks an on-demand environment `deleting`: any time, or only if it is still in that
    /// state with that expiry (a reaper that read it a moment ago); whether it did.
    async fn begin_deleting(
        &self,
        env: &EnvName,
        unless_changed: Option<(shipgate_core::on_demand::OnDemandState, jiff::Timestamp)>,
    ) -> Result<bool>;
    /// Removes an on-demand environment, what is live in it and its instances' running marks,
    /// with `event`, in one transaction.
    async fn delete_on_demand(&self, env: &EnvName, event: NewEvent) -> Result<()>;
    /// Every on-demand environment, oldest first.
    async fn on_demand(&self) -> Result<Vec<OnDemandRecord>>;

    /// Sets flags of `app` in `env` at once, with the event that announces the change.
    async fn set_flags(
        &self,
        env: &EnvName,
        app: &AppName,
        states: &[(String, shipgate_core::flag::FlagState)],
        actor: &str,
        supersede: &[i64],
        event: NewEvent,
    ) -> Result<()>;

    /// Records a flag change that waits for approvals, with its event.
    async fn request_flag_change(
        &self,
        env: &EnvName,
        app: &AppName,
        changes: &[FlagChange],
        event: NewEvent,
    ) -> Result<FlagChangeRecord>;

    /// The flag changes asked for in `env` (every environment's with None), pending ones
    /// alone with `pending_only`, oldest first.
    async fn flag_changes(
        &self,
        env: Option<&EnvName>,
        pending_only: bool,
    ) -> Result<Vec<FlagChangeRecord>>;

    /// One flag change.
    async fn flag_change(&self, id: i64) -> Result<Option<FlagChangeRecord>>;

    /// Adds a decision to a pending flag change, closing it as told (applying its states when
    /// it closes as applied), with `events`, in one transaction. Refused (Conflict) when the
    /// change is no longer pending or got another decision since it was read.
    async fn decide_flag_change(
        &self,
        decide: FlagDecision,
        events: Vec<NewEvent>,
    ) -> Result<FlagChangeRecord>;

    /// The flag states set in `env` (every environment's with None); unset flags are off.
    async fn flags(&self, env: Option<&EnvName>) -> Result<Vec<FlagRecord>>;

    /// Records a flag client key for `env` by the hash of its secret.
    async fn insert_flag_key(
        &self,
        name: &str,
        env: &EnvName,
        hash: &str,
        event: NewEvent,
    ) -> Result<FlagKeyRecord>;

    /// The active flag key with this hash.
    async fn flag_key_by_hash(&self, hash: &str) -> Result<Option<FlagKeyRecord>>;

    /// Every flag key, revoked ones too.
    async fn flag_keys(&self) -> Result<Vec<FlagKeyRecord>>;

    /// Revokes the active flag key `name`, with its event.
    async fn revoke_flag_key(&self, name: &str, event: NewEvent) -> Result<FlagKeyRecord>;

    /// Every promotion that reached its state after `since` (of `app`, or every app), with its
    /// release's commit time: what DORA's metrics are worked out from.
    async fn dora_changes(
        &self,
        since: jiff::Timestamp,
        app: Option<&AppName>,
    ) -> Result<Vec<shipgate_core::dora::Change>>;

    /// How many promotions reached their state after `since`: a plain count of the same rows
    /// `dora_changes` reads (the benchmark's anchor).
    async fn count_promotions_since(&self, since: jiff::Timestamp) -> Result<i64>;

    /// The events whose outbox row has not been fanned out yet, oldest first.
    async fn pending_outbox(&self, limit: i64) -> Result<Vec<Event>>;

    /// Records `deliveries` (once per target and event) and removes the outbox rows of
    /// `event_ids`, in one transaction.
    async fn fan_out(&self, event_ids: &[i64], deliveries: Vec<NewDelivery>) -> Result<()>;

    /// Each target's first pending delivery (the one of its lowest event id), due or not, in
    /// event order: a target's deliveries go one at a time, in the order their events
    /// happened, the next once this one is delivered or dead.
    async fn first_pending_deliveries(&self) -> Result<Vec<Delivery>>;

    /// Records an attempt of delivery `id` and what it leaves the delivery as.
    async fn record_attempt(
        &self,
        id: i64,
        attempt: DeliveryAttempt,
        outcome: AttemptOutcome,
    ) -> Result<()>;

    /// Deliveries (of one status, or all), newest first.
    async fn deliveries(&self, status: Option<DeliveryStatus>, limit: i64)
    -> Result<Vec<Delivery>>;

    /// Every attempt of delivery `id`, in order.
    async fn delivery_attempts(&self, id: i64) -> Result<Vec<DeliveryAttempt>>;

    /// Puts the dead deliveries `ids` back to pending with no attempts, with `event`;
    /// answers those it put back.
    async fn retry_deliveries(&self, ids: &[i64], event: NewEvent) -> Result<Vec<Delivery>>;

    /// One event of the log.
    async fn event(&self, id: i64) -> Result<Option<Event>>;

    /// Records a chaos fault of `app` in `env` ending at `ends_at`, with its event; the
    /// record's fault carries its number.
    async fn insert_fault(
        &self,
        env: &EnvName,
        app: &AppName,
        fault: &shipgate_core::chaos::HttpFault,
        ends_at: jiff::Timestamp,
        event: NewEvent,
    ) -> Result<FaultRecord>;

    /// The chaos faults of `env` (every environment's with None), those not ended alone with
    /// `active_only`, oldest first.
    async fn faults(&self, env: Option<&EnvName>, active_only: bool) -> Result<Vec<FaultRecord>>;

    /// Ends those of the faults named in `events` that have not ended, by `by`, each with its
    /// event, in one transaction; answers those it ended.
    async fn end_faults(&self, by: &str, events: Vec<(i64, NewEvent)>) -> Result<Vec<FaultRecord>>;
}

/// Re-computes the audit chain over `events` (all of them, oldest first).
pub fn verify_chain(events: &[Event]) -> AuditReport {
    let mut prev = shipgate_core::audit::GENESIS.to_owned();
    for (i, e) in events.iter().enumerate() {
        let expected_id = i as i64 + 1;
        let problem = if e.id != expected_id {
            Some(format!(
                "event {expected_id} is missing (found {} in its place)",
                e.id
            ))
        } else if e.prev_hash != prev {
            Some(format!(
                "event {} does not follow event {}: the log was changed or reordered",
                e.id,
                e.id - 1
            ))
        } else if e.hash != e.compute_hash() {
            Some(format!("event {} was changed after it was written", e.id))
        } else {
            None
        };
        if let Some(problem) = problem {
            return AuditReport {
                checked: i,
                problem: Some(problem),
            };
        }
        prev = e.hash.clone();
    }
    AuditReport {
        checked: events.len(),
        problem: None,
    }
}
