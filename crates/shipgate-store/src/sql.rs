//! The store in SQL, written once for SQLite (one file in WAL mode inside the data dir, the
//! embedded default) and PostgreSQL (shared by several servers).

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use shipgate_core::config::DataLocation;
use shipgate_core::gate::{Decision, Freeze, Stage};
use shipgate_core::{
    AppName, Digest, EnvName, EventKind, InstanceId, PromotionId, PromotionKind, PromotionState,
    Standing, Version,
};
use sqlx::AnyPool;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use tokio::sync::{Mutex, MutexGuard, broadcast};

mod backup;
mod chaos;
mod flags;
mod load;
mod notify;
mod on_demand;
mod secrets;
mod signoff;

use crate::schema::{self, Backend};
use crate::*;

/// Artifacts are kept in the database in pieces of this size.
const ARTIFACT_CHUNK: usize = 1 << 20;

const LEASE_COLUMNS: &str = "holder, address, epoch, expires_ms, since";

fn lease_from(row: &AnyRow) -> Result<Lease> {
    let expires_ms: i64 = get(row, "expires_ms")?;
    Ok(Lease {
        holder: get(row, "holder")?,
        address: get(row, "address")?,
        epoch: get(row, "epoch")?,
        since: get_time(row, "since")?,
        expires_at: Timestamp::from_millisecond(expires_ms)
            .map_err(|e| StoreError::Corrupt(format!("lease end {expires_ms}: {e}")))?,
    })
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn now_text() -> String {
    now().to_string()
}

const HOST_COLUMNS: &str = "name, fingerprint, added_at, joined_at, removed_at";

fn host_from(row: &AnyRow) -> Result<HostRecord> {
    Ok(HostRecord {
        name: get(row, "name")?,
        fingerprint: get(row, "fingerprint")?,
        added_at: get_time(row, "added_at")?,
        joined_at: get_time_opt(row, "joined_at")?,
        removed_at: get_time_opt(row, "removed_at")?,
    })
}

async fn host_in(tx: &mut Transaction<'static, Any>, name: &str) -> Result<Option<HostRecord>> {
    sqlx::query(&format!("SELECT {HOST_COLUMNS} FROM hosts WHERE name = $1"))
        .bind(name)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db("reading a host"))?
        .map(|row| host_from(&row))
        .transpose()
}

fn host_event(actor: &str, kind: EventKind, name: &str, message: String) -> NewEvent {
    NewEvent {
        actor: actor.to_owned(),
        kind,
        message,
        data: serde_json::json!({ "host": name }),
        ..NewEvent::about_nothing()
    }
}

/// The SQL implementation of [`Store`], on SQLite or PostgreSQL. Cloning shares the pool;
/// [`Store::fenced`] gives a clone whose writes hold only under a lease.
#[derive(Clone)]
pub struct SqlStore {
    shared: Arc<Shared>,
    /// Every write is refused once another server took this lease over.
    fence: Option<Lease>,
}

pub struct Shared {
    pool: AnyPool,
    backend: Backend,
    /// Serialises this process's writers; [`Backend::serialise_writers`] does it across servers.
    write: Mutex<()>,
    events: broadcast::Sender<Event>,
    /// The id of the last event sent to subscribers (PostgreSQL: other servers append too).
    tail: Mutex<i64>,
}

impl std::ops::Deref for SqlStore {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// How often a PostgreSQL store looks for events other servers appended.
const TAIL_EVERY: Duration = Duration::from_millis(200);

/// The one lease there is: the right to run the engine.
const ENGINE_LEASE: &str = "engine";

fn now() -> Timestamp {
    Timestamp::now()
}

fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { context, source }
}

fn parse<T, E: std::fmt::Display>(
    what: &str,
    s: &str,
    f: impl FnOnce(&str) -> std::result::Result<T, E>,
) -> Result<T> {
    f(s).map_err(|e| StoreError::Corrupt(format!("{what} `{s}`: {e}")))
}

fn get_time(row: &AnyRow, col: &str) -> Result<Timestamp> {
    parse("time", &get::<String>(row, col)?, str::parse::<Timestamp>)
}

fn get_time_opt(row: &AnyRow, col: &str) -> Result<Option<Timestamp>> {
    get::<Option<String>>(row, col)?
        .map(|t| parse("time", &t, str::parse::<Timestamp>))
        .transpose()
}

fn get<'r, T: sqlx::Decode<'r, Any> + sqlx::Type<Any>>(row: &'r AnyRow, col: &str) -> Result<T> {
    row.try_get(col).map_err(db("reading a row"))
}

impl SqlStore {
    /// Opens (creating if needed) the SQLite file and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        Self::open_at(&DataLocation::Sqlite(path.to_owned())).await
    }

    /// Opens the store at `location` (a SQLite file or a PostgreSQL URL) and applies pending
    /// migrations.
    pub async fn open_at(location: &DataLocation) -> Result<Self> {
        let (pool, backend) = schema::open(location).await?;
        let (events, _) = broadcast::channel(1024);
        let last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM events")
            .fetch_one(&pool)
            .await
            .map_err(db("reading the event chain"))?;
        let shared = Arc::new(Shared {
            pool,
            backend,
            write: Mutex::new(()),
            events,
            tail: Mutex::new(last),
        });
        if backend == Backend::Postgres {
            let weak = Arc::downgrade(&shared);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(TAIL_EVERY).await;
                    let Some(shared) = weak.upgrade() else { return };
                    if let Err(e) = shared.send_new_events().await {
                        tracing::warn!("could not read new events: {e}");
                    }
                }
            });
        }
        Ok(Self {
            shared,
            fence: None,
        })
    }

    /// Which database this store writes to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Starts a writing transaction: this process's writers one at a time, every server's on
    /// PostgreSQL, and, for a fenced store, only while nobody took its lease over (its epoch is
    /// the current one: checked by the database, and the lease row stays locked until commit,
    /// so no server can take the lease over between the check and the commit).
    async fn begin(&self) -> Result<(MutexGuard<'_, ()>, Transaction<'static, Any>)> {
        let guard = self.write.lock().await;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("starting a transaction"))?;
        if let Some(lock) = self.backend.serialise_writers() {
            sqlx::query(lock)
                .execute(&mut *tx)
                .await
                .map_err(db("waiting for other writers"))?;
        }
        if let Some(lease) = &self.fence {
            let held = sqlx::query(
                "UPDATE leases SET epoch = epoch WHERE name = $1 AND holder = $2 AND epoch = $3",
            )
            .bind(ENGINE_LEASE)
            .bind(&lease.holder)
            .bind(lease.epoch)
            .execute(&mut *tx)
            .await
            .map_err(db("checking the lease"))?;
            if held.rows_affected() == 0 {
                let now: Option<i64> =
                    sqlx::query_scalar("SELECT epoch FROM leases WHERE name = $1")
                        .bind(ENGINE_LEASE)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db("reading the lease"))?;
                tx.rollback().await.map_err(db("rolling back"))?;
                // Nobody took it over: the database never kept this server's own lease.
                if now.is_some_and(|now| now < lease.epoch) {
                    return Err(StoreError::Database {
                        context: "checking the lease",
                        source: sqlx::Error::Protocol(format!(
                            "the database did not keep the lease this server took (epoch {}, the database has {}): its writes are failing; is the disk full?",
                            lease.epoch,
                            now.unwrap_or_default()
                        )),
                    });
                }
                return Err(StoreError::Fenced {
                    holder: lease.holder.clone(),
                    epoch: lease.epoch,
                });
            }
        }
        Ok((guard, tx))
    }

    async fn commit(&self, tx: Transaction<'static, Any>, events: Vec<Event>) -> Result<()> {
        tx.commit().await.map_err(db("committing"))?;
        match self.backend {
            Backend::Sqlite => {
                for e in events {
                    // No subscriber is fine: the event is durable either way.
                    let _ = self.events.send(e);
                }
                Ok(())
            }
            // Other servers append too: subscribers get every event once, in chain order.
            Backend::Postgres => self.send_new_events().await,
        }
    }
}

impl Shared {
    /// Sends subscribers the events appended since the last one sent.
    async fn send_new_events(&self) -> Result<()> {
        let mut tail = self.tail.lock().await;
        loop {
            let rows = sqlx::query("SELECT * FROM events WHERE id > $1 ORDER BY id LIMIT 500")
                .bind(*tail)
                .fetch_all(&self.pool)
                .await
                .map_err(db("reading new events"))?;
            let Some(last) = rows.last() else {
                return Ok(());
            };
            *tail = get(last, "id")?;
            let more = rows.len() == 500;
            for row in &rows {
                let _ = self.events.send(event_from(row)?);
            }
            if !more {
                return Ok(());
            }
        }
    }
}

async fn append(tx: &mut Transaction<'static, Any>, e: NewEvent) -> Result<Event> {
    let last: Option<(i64, String)> =
        sqlx::query_as("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await
            .map_err(db("reading the event chain"))?;
    let (prev_id, prev_hash) = last.unwrap_or((0, shipgate_core::audit::GENESIS.to_owned()));
    let mut event = Event {
        id: prev_id + 1,
        at: now(),
        actor: e.actor,
        kind: e.kind,
        app: e.app,
        env: e.env,
        promotion_id: e.promotion_id,
        message: e.message,
        data: e.data,
        prev_hash,
        hash: String::new(),
    };
    event.hash = event.compute_hash();
    sqlx::query("INSERT INTO events (id, at, actor, kind, app, env, promotion_id, message, data, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
        .bind(event.id)
        .bind(event.at.to_string())
        .bind(&event.actor)
        .bind(event.kind.to_string())
        .bind(&event.app)
        .bind(&event.env)
        .bind(event.promotion_id.map(|p| p.0))
        .bind(&event.message)
        .bind(event.data.to_string())
        .bind(&event.prev_hash)
        .bind(&event.hash)
        .execute(&mut **tx)
        .await
        .map_err(db("appending an event"))?;
    // Its outbox row, in the same transaction: the sender fans it out to the notification
    // targets that want it, so no event is announced that was not written, nor written and
    // never announced.
    sqlx::query("INSERT INTO outbox (event_id) VALUES ($1)")
        .bind(event.id)
        .execute(&mut **tx)
        .await
        .map_err(db("writing the outbox"))?;
    Ok(event)
}

fn release_from(row: &AnyRow) -> Result<Release> {
    Ok(Release {
        app: parse("app", &get::<String>(row, "app")?, AppName::parse)?,
        version: parse("version", &get::<String>(row, "version")?, Version::parse)?,
        digest: parse("digest", &get::<String>(row, "digest")?, Digest::parse)?,
        size: get(row, "size")?,
        commit: get(row, "commit_sha")?,
        commit_time: get_time_opt(row, "commit_time")?,
        notes: get(row, "notes")?,
        created_by: get(row, "created_by")?,
        created_at: get_time(row, "created_at")?,
    })
}

fn promotion_from(row: &AnyRow) -> Result<Promotion> {
    let state: String = get(row, "state")?;
    let kind: String = get(row, "kind")?;
    let previous: Option<String> = get(row, "previous_version")?;
    Ok(Promotion {
        id: PromotionId(get(row, "id")?),
        app: parse("app", &get::<String>(row, "app")?, AppName::parse)?,
        version: parse("version", &get::<String>(row, "version")?, Version::parse)?,
        digest: parse("digest", &get::<String>(row, "digest")?, Digest::parse)?,
        env: parse("environment", &get::<String>(row, "env")?, EnvName::parse)?,
        kind: PromotionKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("promotion kind `{kind}`")))?,
        state: PromotionState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("promotion state `{state}`")))?,
        requested_by: get(row, "requested_by")?,
        previous_version: previous
            .map(|v| parse("version", &v, Version::parse))
            .transpose()?,
        reason: get(row, "reason")?,
        created_at: get_time(row, "created_at")?,
        updated_at: get_time(row, "updated_at")?,
    })
}

fn live_from(row: &AnyRow) -> Result<LiveRelease> {
    Ok(LiveRelease {
        app: parse("app", &get::<String>(row, "app")?, AppName::parse)?,
        env: parse("environment", &get::<String>(row, "env")?, EnvName::parse)?,
        version: parse("version", &get::<String>(row, "version")?, Version::parse)?,
        digest: parse("digest", &get::<String>(row, "digest")?, Digest::parse)?,
        promotion_id: PromotionId(get(row, "promotion_id")?),
        since: get_time(row, "since")?,
    })
}

fn event_from(row: &AnyRow) -> Result<Event> {
    let data: String = get(row, "data")?;
    Ok(Event {
        id: get(row, "id")?,
        at: get_time(row, "at")?,
        actor: get(row, "actor")?,
        kind: {
            let kind: String = get(row, "kind")?;
            EventKind::parse(&kind)
                .ok_or_else(|| StoreError::Corrupt(format!("event kind `{kind}`")))?
        },
        app: get(row, "app")?,
        env: get(row, "env")?,
        promotion_id: get::<Option<i64>>(row, "promotion_id")?.map(PromotionId),
        message: get(row, "message")?,
        data: serde_json::Value::from_str(&data)
            .map_err(|e| StoreError::Corrupt(format!("event data: {e}")))?,
        prev_hash: get(row, "prev_hash")?,
        hash: get(row, "hash")?,
    })
}

async fn promotion_in(tx: &mut Transaction<'static, Any>, id: PromotionId) -> Result<Promotion> {
    let row = sqlx::query("SELECT * FROM promotions WHERE id = $1")
        .bind(id.0)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db("reading a promotion"))?
        .ok_or_else(|| StoreError::NotFound(format!("promotion {id}")))?;
    promotion_from(&row)
}

async fn set_state(
    tx: &mut Transaction<'static, Any>,
    id: PromotionId,
    state: PromotionState,
    reason: Option<&str>,
) -> Result<()> {
    sqlx::query("UPDATE promotions SET state = $1, reason = COALESCE($2, reason), updated_at = $3 WHERE id = $4")
        .bind(state.as_str())
        .bind(reason)
        .bind(now().to_string())
        .bind(id.0)
        .execute(&mut **tx)
        .await
        .map_err(db("updating a promotion"))?;
    Ok(())
}

fn promotion_event(
    p: &Promotion,
    actor: &str,
    kind: EventKind,
    message: String,
    data: serde_json::Value,
) -> NewEvent {
    NewEvent {
        actor: actor.to_owned(),
        kind,
        app: Some(p.app.to_string()),
        env: Some(p.env.to_string()),
        promotion_id: Some(p.id),
        message,
        data,
    }
}

/// Records a new pending promotion and supersedes the pending ones of its app and environment.
async fn insert_promotion(
    tx: &mut Transaction<'static, Any>,
    p: NewPromotion,
    actor: &str,
    events: &mut Vec<Event>,
) -> Result<Promotion> {
    let pending: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM promotions WHERE app = $1 AND env = $2 AND state = 'pending'",
    )
    .bind(p.app.as_str())
    .bind(p.env.as_str())
    .fetch_all(&mut **tx)
    .await
    .map_err(db("reading pending promotions"))?;
    let at = now();
    let id: i64 = sqlx::query_scalar("INSERT INTO promotions (app, version, digest, env, kind, state, requested_by, previous_version, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $9) RETURNING id")
            .bind(p.app.as_str())
            .bind(p.version.as_str())
            .bind(p.digest.as_str())
            .bind(p.env.as_str())
            .bind(p.kind.as_str())
            .bind(actor)
            .bind(p.previous_version.as_ref().map(Version::as_str))
            .bind(at.to_string())
            .bind(at.to_string())
            .fetch_one(&mut **tx)
            .await
            .map_err(db("inserting a promotion"))?;
    let id = PromotionId(id);
    let promotion = promotion_in(tx, id).await?;
    if let Some(reason) = &p.override_reason {
        sqlx::query(
            "INSERT INTO overrides (promotion_id, actor, reason, at) VALUES ($1, $2, $3, $4)",
        )
        .bind(id.0)
        .bind(actor)
        .bind(reason)
        .bind(at.to_string())
        .execute(&mut **tx)
        .await
        .map_err(db("recording an override"))?;
        let message = format!(
            "{actor} overrode deploy windows and freezes for {}@{} into {}: {reason}",
            p.app, p.version, p.env
        );
        let event = promotion_event(
            &promotion,
            actor,
            EventKind::PromotionOverride,
            message,
            serde_json::json!({ "reason": reason }),
        );
        events.push(append(tx, event).await?);
    }
    for old in pending.into_iter().map(PromotionId) {
        let reason = format!("superseded by promotion {id} ({}@{})", p.app, p.version);
        set_state(tx, old, PromotionState::Superseded, Some(&reason)).await?;
        let old = promotion_in(tx, old).await?;
        let message = format!(
            "promotion {} of {}@{} to {} {reason}",
            old.id, old.app, old.version, old.env
        );
        events.push(
            append(
                tx,
                promotion_event(
                    &old,
                    actor,
                    EventKind::Promotion(PromotionState::Superseded),
                    message,
                    serde_json::json!({ "by": id }),
                ),
            )
            .await?,
        );
    }
    let mut message = format!(
        "{actor} asked to {} {}@{} in {}",
        p.kind.as_str(),
        p.app,
        p.version,
        p.env
    );
    if let Some(reason) = &p.hotfix_reason {
        message.push_str(&format!(": {reason}"));
    }
    let data = serde_json::json!({ "version": p.version, "digest": p.digest, "kind": p.kind, "previous_version": p.previous_version, "reason": p.hotfix_reason });
    events.push(
        append(
            tx,
            promotion_event(
                &promotion,
                actor,
                EventKind::PromotionRequested,
                message,
                data,
            ),
        )
        .await?,
    );
    Ok(promotion)
}

/// Records `promotion_id`'s release as live in its app and environment.
async fn put_live(tx: &mut Transaction<'static, Any>, l: &LiveRelease) -> Result<()> {
    sqlx::query("INSERT INTO live (app, env, version, digest, promotion_id, since) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (app, env) DO UPDATE SET version = excluded.version, digest = excluded.digest, promotion_id = excluded.promotion_id, since = excluded.since")
        .bind(l.app.as_str())
        .bind(l.env.as_str())
        .bind(l.version.as_str())
        .bind(l.digest.as_str())
        .bind(l.promotion_id.0)
        .bind(l.since.to_string())
        .execute(&mut **tx)
        .await
        .map_err(db("recording the live release"))?;
    Ok(())
}

/// Marks the promotion that made a release live as rolled back by `by`.
async fn mark_rolled_back(
    tx: &mut Transaction<'static, Any>,
    old: PromotionId,
    by: PromotionId,
    actor: &str,
    events: &mut Vec<Event>,
) -> Result<()> {
    let old_p = promotion_in(tx, old).await?;
    if !old_p.state.can_become(PromotionState::RolledBack) {
        return Ok(());
    }
    let reason = format!("rolled back by promotion {by}");
    set_state(tx, old, PromotionState::RolledBack, Some(&reason)).await?;
    let message = format!(
        "{}@{} was rolled back in {}",
        old_p.app, old_p.version, old_p.env
    );
    let event = promotion_event(
        &old_p,
        actor,
        EventKind::Promotion(PromotionState::RolledBack),
        message,
        serde_json::json!({ "by": by }),
    );
    events.push(append(tx, event).await?);
    Ok(())
}

#[async_trait]
impl Store for SqlStore {
    async fn insert_release(&self, r: NewRelease, actor: &str) -> Result<(Release, bool)> {
        let (_w, mut tx) = self.begin().await?;
        let existing = sqlx::query("SELECT * FROM releases WHERE app = $1 AND version = $2")
            .bind(r.app.as_str())
            .bind(r.version.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("reading a release"))?;
        if let Some(row) = existing {
            let existing = release_from(&row)?;
            if existing.digest == r.digest {
                return Ok((existing, false));
            }
            return Err(StoreError::ReleaseConflict {
                app: r.app,
                version: r.version,
                existing: existing.digest,
                offered: r.digest,
            });
        }
        let release = Release {
            app: r.app,
            version: r.version,
            digest: r.digest,
            size: r.size,
            commit: r.commit,
            commit_time: r.commit_time,
            notes: r.notes,
            created_by: actor.to_owned(),
            created_at: now(),
        };
        sqlx::query("INSERT INTO releases (app, version, digest, size, commit_sha, notes, created_by, created_at, commit_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
            .bind(release.app.as_str())
            .bind(release.version.as_str())
            .bind(release.digest.as_str())
            .bind(release.size)
            .bind(&release.commit)
            .bind(&release.notes)
            .bind(&release.created_by)
            .bind(release.created_at.to_string())
            .bind(release.commit_time.map(|t| t.to_string()))
            .execute(&mut *tx)
            .await
            .map_err(db("inserting a release"))?;
        let event = append(
            &mut tx,
            NewEvent {
                actor: actor.to_owned(),
                kind: EventKind::ReleaseCreated,
                app: Some(release.app.to_string()),
                message: format!("registered {}@{} ({})", release.app, release.version, release.digest),
                data: serde_json::json!({ "version": release.version, "digest": release.digest, "size": release.size, "commit": release.commit }),
                ..NewEvent::about_nothing()
            },
        )
        .await?;
        self.commit(tx, vec![event]).await?;
        Ok((release, true))
    }

    async fn release(&self, app: &AppName, version: &Version) -> Result<Option<Release>> {
        sqlx::query("SELECT * FROM releases WHERE app = $1 AND version = $2")
            .bind(app.as_str())
            .bind(version.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a release"))?
            .map(|r| release_from(&r))
            .transpose()
    }

    async fn releases(&self, app: Option<&AppName>) -> Result<Vec<Release>> {
        sqlx::query("SELECT * FROM releases WHERE $1 IS NULL OR app = $1 ORDER BY created_at DESC, rowid DESC")
            .bind(app.map(AppName::as_str))
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing releases"))?
            .iter()
            .map(release_from)
            .collect()
    }

    async fn create_promotion(&self, p: NewPromotion, actor: &str) -> Result<Promotion> {
        let (_w, mut tx) = self.begin().await?;
        let mut events = Vec::new();
        let promotion = insert_promotion(&mut tx, p, actor, &mut events).await?;
        self.commit(tx, events).await?;
        Ok(promotion)
    }

    async fn switch_back(
        &self,
        p: NewPromotion,
        replaced: PromotionId,
        gate: String,
        secrets: &[DeployedSecret],
        actor: &str,
    ) -> Result<Promotion> {
        let (_w, mut tx) = self.begin().await?;
        let mut events = Vec::new();
        let requested = insert_promotion(&mut tx, p, actor, &mut events).await?;
        let at = now();
        // Nothing was started or tested: the standby instance already ran this verified release.
        set_state(&mut tx, requested.id, PromotionState::Succeeded, None).await?;
        // With the secrets that instance was started with.
        secrets::insert_deployed(&mut tx, requested.id, secrets).await?;
        let done = promotion_in(&mut tx, requested.id).await?;
        sqlx::query("INSERT INTO gates (promotion_id, name, passed, output, started_at, finished_at) VALUES ($1, 'switch', 1, $2, $3, $4)")
            .bind(done.id.0)
            .bind(&gate)
            .bind(at.to_string())
            .bind(at.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db("recording a gate"))?;
        let live = LiveRelease {
            app: done.app.clone(),
            env: done.env.clone(),
            version: done.version.clone(),
            digest: done.digest.clone(),
            promotion_id: done.id,
            since: at,
        };
        put_live(&mut tx, &live).await?;
        let message = format!(
            "{}@{} is live again in {}: {gate}",
            done.app, done.version, done.env
        );
        let data = serde_json::json!({ "from": PromotionState::Pending, "to": PromotionState::Succeeded, "version": done.version, "instant": true });
        events.push(
            append(
                &mut tx,
                promotion_event(
                    &done,
                    actor,
                    EventKind::Promotion(PromotionState::Succeeded),
                    message,
                    data,
                ),
            )
            .await?,
        );
        mark_rolled_back(&mut tx, replaced, done.id, actor, &mut events).await?;
        self.commit(tx, events).await?;
        Ok(done)
    }

    async fn transition(&self, t: Transition) -> Result<Promotion> {
        let (_w, mut tx) = self.begin().await?;
        let before = promotion_in(&mut tx, t.promotion_id).await?;
        if !t.from.contains(&before.state) || !before.state.can_become(t.to) {
            let expected: Vec<&str> = t.from.iter().map(|s| s.as_str()).collect();
            return Err(StoreError::StateConflict {
                id: t.promotion_id,
                expected: expected.join(" or "),
                actual: before.state,
            });
        }
        set_state(&mut tx, t.promotion_id, t.to, t.reason.as_deref()).await?;
        if before.state == PromotionState::SigningOff {
            signoff::end_signoff(&mut tx, t.promotion_id).await?;
        }
        let mut events = Vec::new();
        match &t.live {
            LiveChange::Keep => {}
            LiveChange::Promoted => {
                let live = LiveRelease {
                    app: before.app.clone(),
                    env: before.env.clone(),
                    version: before.version.clone(),
                    digest: before.digest.clone(),
                    promotion_id: before.id,
                    since: now(),
                };
                put_live(&mut tx, &live).await?;
            }
            LiveChange::Restore(None) => {
                sqlx::query("DELETE FROM live WHERE app = $1 AND env = $2")
                    .bind(before.app.as_str())
                    .bind(before.env.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(db("clearing the live release"))?;
            }
            LiveChange::Restore(Some(l)) => put_live(&mut tx, l).await?,
        }
        let after = promotion_in(&mut tx, t.promotion_id).await?;
        let data = serde_json::json!({ "from": before.state, "to": t.to, "version": after.version, "reason": t.reason, "live": format!("{:?}", t.live) });
        events.push(
            append(
                &mut tx,
                promotion_event(
                    &after,
                    &t.actor,
                    EventKind::Promotion(t.to),
                    t.message.clone(),
                    data,
                ),
            )
            .await?,
        );
        if let Some(old) = t.roll_back_promotion {
            mark_rolled_back(&mut tx, old, after.id, &t.actor, &mut events).await?;
        }
        self.commit(tx, events).await?;
        Ok(after)
    }

    async fn promotion(&self, id: PromotionId) -> Result<Option<Promotion>> {
        sqlx::query("SELECT * FROM promotions WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a promotion"))?
            .map(|r| promotion_from(&r))
            .transpose()
    }

    async fn promotions(&self, f: PromotionFilter) -> Result<Vec<Promotion>> {
        // Only the conditions asked for are written, so SQLite can pick the index that serves
        // them (`$1 IS NULL OR app = $1` would scan the whole history). The states are our own
        // fixed names, written in.
        let mut sql = "SELECT * FROM promotions WHERE 1 = 1".to_owned();
        let mut binds: Vec<&str> = Vec::new();
        for (column, value) in [
            ("app", f.app.as_ref().map(AppName::as_str)),
            ("env", f.env.as_ref().map(EnvName::as_str)),
            ("version", f.version.as_ref().map(Version::as_str)),
        ] {
            if let Some(value) = value {
                sql.push_str(&format!(" AND {column} = ${}", binds.len() + 1));
                binds.push(value);
            }
        }
        if !f.apps.is_empty() {
            sql.push_str(&format!(
                " AND app IN ({})",
                placeholders(binds.len() + 1, f.apps.len())
            ));
            binds.extend(f.apps.iter().map(AppName::as_str));
        }
        if !f.states.is_empty() {
            let names: Vec<String> = f
                .states
                .iter()
                .map(|s| format!("'{}'", s.as_str()))
                .collect();
            // With an app given, its index is the one to use: nearly every promotion is
            // `succeeded`, and without statistics SQLite would rather walk the state index over
            // all of them. `state || ''` is the same value, just not an indexed column.
            let state = if f.app.is_some() || !f.apps.is_empty() {
                "(state || '')"
            } else {
                "state"
            };
            sql.push_str(&format!(" AND {state} IN ({})", names.join(", ")));
        }
        // `id + 0`: newest first without letting the order pick the rowid scan over the
        // index that serves the conditions.
        sql.push_str(&format!(" ORDER BY id + 0 DESC LIMIT ${}", binds.len() + 1));
        let mut query = sqlx::query(&sql);
        for value in binds {
            query = query.bind(value);
        }
        query
            .bind(f.limit.unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing promotions"))?
            .iter()
            .map(promotion_from)
            .collect()
    }

    async fn rollback_targets(&self, apps: &[AppName]) -> Result<Vec<Promotion>> {
        if apps.is_empty() {
            return Ok(Vec::new());
        }
        // One walk down the (app, env, id) index per live release, from the live promotion.
        let sql = format!(
            "SELECT p.* FROM live l JOIN promotions p ON p.id = (
                SELECT MAX(q.id) FROM promotions q WHERE q.app = l.app AND q.env = l.env
                AND q.id < l.promotion_id AND q.version <> l.version AND q.state = 'succeeded')
             WHERE l.app IN ({}) ORDER BY p.id DESC",
            placeholders(1, apps.len())
        );
        with_apps(&sql, apps)
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading where rollbacks go"))?
            .iter()
            .map(promotion_from)
            .collect()
    }

    async fn standing(&self, app: &AppName, version: &Version, env: &EnvName) -> Result<Standing> {
        let latest: Option<(String, String)> = sqlx::query_as(
            "SELECT digest, state FROM promotions WHERE app = $1 AND version = $2 AND env = $3
             AND state IN ('succeeded', 'rolled_back') ORDER BY id DESC LIMIT 1",
        )
        .bind(app.as_str())
        .bind(version.as_str())
        .bind(env.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading verified releases"))?;
        Ok(match latest {
            None => Standing::Unverified,
            Some((digest, state)) => {
                let digest = parse("digest", &digest, Digest::parse)?;
                if state == PromotionState::RolledBack.as_str() {
                    Standing::RolledBack(digest)
                } else {
                    Standing::Verified(digest)
                }
            }
        })
    }

    async fn verified_at(
        &self,
        app: &AppName,
        version: &Version,
        env: &EnvName,
    ) -> Result<Option<Timestamp>> {
        let latest: Option<(String, String)> = sqlx::query_as(
            "SELECT state, updated_at FROM promotions WHERE app = $1 AND version = $2 AND env = $3
             AND state IN ('succeeded', 'rolled_back') ORDER BY id DESC LIMIT 1",
        )
        .bind(app.as_str())
        .bind(version.as_str())
        .bind(env.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading verified releases"))?;
        Ok(latest
            .filter(|(state, _)| state == PromotionState::Succeeded.as_str())
            .map(|(_, at)| parse("time", &at, str::parse::<Timestamp>))
            .transpose()?)
    }

    async fn record_decision(&self, d: NewDecision) -> Result<Decision> {
        let (_w, mut tx) = self.begin().await?;
        let p = promotion_in(&mut tx, d.promotion_id).await?;
        // After entry, a decision is taken while it deploys (a rejection) or is verified.
        let expected: &[PromotionState] = match d.stage {
            Stage::Entry => &[PromotionState::Pending],
            Stage::Watch => &[
                PromotionState::Deploying,
                PromotionState::Verifying,
                PromotionState::SigningOff,
            ],
        };
        if !expected.contains(&p.state) {
            let expected: Vec<&str> = expected.iter().map(|s| s.as_str()).collect();
            return Err(StoreError::StateConflict {
                id: p.id,
                expected: expected.join(" or "),
                actual: p.state,
            });
        }
        let at = jiff::Timestamp::now();
        let inserted = sqlx::query("INSERT INTO decisions (promotion_id, stage, actor, role, approve, comment, at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING")
            .bind(p.id.0)
            .bind(d.stage.as_str())
            .bind(&d.actor)
            .bind(d.role.as_str())
            .bind(i64::from(d.verdict == shipgate_core::Verdict::Approve))
            .bind(&d.comment)
            .bind(at.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db("recording a decision"))?;
        if inserted.rows_affected() == 0 {
            // The insert took the write lock: release it now, not when the pool gets to the
            // dropped transaction (the next writer would meet "database is locked").
            tx.rollback().await.map_err(db("rolling back"))?;
            return Err(StoreError::Conflict(format!(
                "{} has already decided on promotion {}; each person decides once",
                d.actor, p.id
            )));
        }
        let verdict = d.verdict.past();
        let what = match d.stage {
            Stage::Entry => "",
            Stage::Watch => " after its inconclusive watch",
        };
        let mut message = format!(
            "{} {verdict} {}@{} into {}{what}",
            d.actor, p.app, p.version, p.env
        );
        if let Some(c) = &d.comment {
            message.push_str(&format!(": {c}"));
        }
        let data = serde_json::json!({ "stage": d.stage, "role": d.role, "verdict": d.verdict, "comment": d.comment });
        let event = append(
            &mut tx,
            promotion_event(
                &p,
                &d.actor,
                match d.verdict {
                    shipgate_core::Verdict::Approve => EventKind::Approved,
                    shipgate_core::Verdict::Reject => EventKind::Rejected,
                },
                message,
                data,
            ),
        )
        .await?;
        self.commit(tx, vec![event]).await?;
        Ok(Decision {
            actor: d.actor,
            role: d.role,
            verdict: d.verdict,
            comment: d.comment,
            at,
        })
    }

    async fn record_load_run(&self, run: NewLoadRun, event: NewEvent) -> Result<LoadRun> {
        SqlStore::record_load_run(self, run, event).await
    }

    async fn load_runs(&self, app: &AppName, env: &EnvName) -> Result<Vec<LoadRun>> {
        SqlStore::load_runs(self, app, env).await
    }

    async fn claim_secrets_key(&self, id: &str) -> Result<String> {
        SqlStore::claim_secrets_key(self, id).await
    }

    async fn secrets_key_id(&self) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT id FROM secrets_key ORDER BY created_at LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading the secrets key's id"))
    }

    async fn set_secret(&self, secret: NewSecret, actor: &str) -> Result<SecretVersion> {
        SqlStore::set_secret(self, secret, actor).await
    }

    async fn secrets(&self, env: &EnvName) -> Result<Vec<SecretVersion>> {
        SqlStore::secrets(self, env).await
    }

    async fn record_deployed_secrets(
        &self,
        promotion: PromotionId,
        secrets: &[DeployedSecret],
    ) -> Result<()> {
        SqlStore::record_deployed_secrets(self, promotion, secrets).await
    }

    async fn deployed_secrets(&self, promotion: PromotionId) -> Result<Vec<DeployedSecret>> {
        SqlStore::deployed_secrets(self, promotion).await
    }

    async fn insert_session(&self, session: &SessionRecord, event: Option<NewEvent>) -> Result<()> {
        SqlStore::insert_session(self, session, event).await
    }

    async fn people(&self) -> Result<Vec<(String, String)>> {
        SqlStore::people(self).await
    }

    async fn session(&self, id_hash: &str) -> Result<Option<SessionRecord>> {
        SqlStore::session(self, id_hash).await
    }

    async fn refresh_session(
        &self,
        id_hash: &str,
        grant: &shipgate_core::Grant,
        sealed_refresh: Option<&[u8]>,
        idp_expires_at: Option<Timestamp>,
    ) -> Result<()> {
        SqlStore::refresh_session(self, id_hash, grant, sealed_refresh, idp_expires_at).await
    }

    async fn end_session(&self, id_hash: &str, event: Option<NewEvent>) -> Result<()> {
        SqlStore::end_session(self, id_hash, event).await
    }

    async fn insert_sign_in(
        &self,
        state_hash: &str,
        payload: &str,
        expires_at: Timestamp,
    ) -> Result<()> {
        SqlStore::insert_sign_in(self, state_hash, payload, expires_at).await
    }

    async fn take_sign_in(&self, state_hash: &str) -> Result<Option<String>> {
        SqlStore::take_sign_in(self, state_hash).await
    }

    async fn start_backup(&self, b: NewBackup) -> Result<BackupRecord> {
        SqlStore::start_backup(self, b).await
    }

    async fn finish_backup(
        &self,
        id: i64,
        end: BackupEnd,
        event: NewEvent,
    ) -> Result<BackupRecord> {
        SqlStore::finish_backup(self, id, end, event).await
    }

    async fn backups(
        &self,
        app: Option<&AppName>,
        env: Option<&EnvName>,
    ) -> Result<Vec<BackupRecord>> {
        SqlStore::backups(self, app, env).await
    }

    async fn request_signoff(&self, r: NewSignoffRequest) -> Result<Promotion> {
        SqlStore::request_signoff(self, r).await
    }

    async fn record_signoff(&self, s: NewSignoff) -> Result<shipgate_core::signoff::SignoffEntry> {
        SqlStore::record_signoff(self, s).await
    }

    async fn signoff_sheet(
        &self,
        promotion_id: PromotionId,
    ) -> Result<Option<shipgate_core::signoff::SignoffSheet>> {
        SqlStore::signoff_sheet(self, promotion_id).await
    }

    async fn decisions(&self, promotion_id: PromotionId, stage: Stage) -> Result<Vec<Decision>> {
        let rows = sqlx::query("SELECT actor, role, approve, comment, at FROM decisions WHERE promotion_id = $1 AND stage = $2 ORDER BY id")
            .bind(promotion_id.0)
            .bind(stage.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading decisions"))?;
        rows.iter()
            .map(|row| {
                Ok(Decision {
                    actor: get(row, "actor")?,
                    role: parse(
                        "role",
                        &get::<String>(row, "role")?,
                        shipgate_core::Role::parse,
                    )?,
                    verdict: if get::<i64>(row, "approve")? != 0 {
                        shipgate_core::Verdict::Approve
                    } else {
                        shipgate_core::Verdict::Reject
                    },
                    comment: get(row, "comment")?,
                    at: parse("time", &get::<String>(row, "at")?, str::parse::<Timestamp>)?,
                })
            })
            .collect()
    }

    async fn override_of(&self, promotion_id: PromotionId) -> Result<Option<Override>> {
        let row: Option<(String, String, String)> =
            sqlx::query_as("SELECT actor, reason, at FROM overrides WHERE promotion_id = $1")
                .bind(promotion_id.0)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("reading an override"))?;
        row.map(|(actor, reason, at)| {
            Ok(Override {
                actor,
                reason,
                at: parse("time", &at, str::parse::<Timestamp>)?,
            })
        })
        .transpose()
    }

    async fn freeze(&self, env: Option<&EnvName>, reason: &str, actor: &str) -> Result<Freeze> {
        let (_w, mut tx) = self.begin().await?;
        let env_name = env.map(EnvName::as_str);
        let existing: Option<(String, String)> = sqlx::query_as(
            "SELECT frozen_by, reason FROM freezes WHERE env IS NOT DISTINCT FROM $1 AND lifted_at IS NULL",
        )
        .bind(env_name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("reading freezes"))?;
        let scope = env_name.unwrap_or("every environment");
        if let Some((by, why)) = existing {
            return Err(StoreError::Conflict(format!(
                "{scope} is already frozen by {by}: {why} (unfreeze it first to change the reason)"
            )));
        }
        let since = jiff::Timestamp::now();
        sqlx::query(
            "INSERT INTO freezes (env, reason, frozen_by, frozen_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(env_name)
        .bind(reason)
        .bind(actor)
        .bind(since.to_string())
        .execute(&mut *tx)
        .await
        .map_err(db("recording a freeze"))?;
        let event = append(
            &mut tx,
            NewEvent {
                actor: actor.to_owned(),
                kind: EventKind::EnvironmentFrozen,
                env: env_name.map(str::to_owned),
                message: format!("{actor} froze {scope}: {reason}"),
                data: serde_json::json!({ "env": env_name, "reason": reason }),
                ..NewEvent::about_nothing()
            },
        )
        .await?;
        self.commit(tx, vec![event]).await?;
        Ok(Freeze {
            env: env.cloned(),
            reason: reason.to_owned(),
            by: actor.to_owned(),
            since,
        })
    }

    async fn unfreeze(&self, env: Option<&EnvName>, actor: &str) -> Result<Freeze> {
        let (_w, mut tx) = self.begin().await?;
        let env_name = env.map(EnvName::as_str);
        let scope = env_name.unwrap_or("every environment");
        let row: Option<(i64, String, String, String)> = sqlx::query_as(
            "SELECT id, reason, frozen_by, frozen_at FROM freezes WHERE env IS NOT DISTINCT FROM $1 AND lifted_at IS NULL",
        )
        .bind(env_name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("reading freezes"))?;
        let Some((id, reason, by, since)) = row else {
            return Err(StoreError::NotFound(format!("a freeze of {scope}")));
        };
        sqlx::query("UPDATE freezes SET lifted_by = $1, lifted_at = $2 WHERE id = $3")
            .bind(actor)
            .bind(now().to_string())
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db("lifting a freeze"))?;
        let event = append(
            &mut tx,
            NewEvent {
                actor: actor.to_owned(),
                kind: EventKind::EnvironmentUnfrozen,
                env: env_name.map(str::to_owned),
                message: format!("{actor} lifted the freeze of {scope} (frozen by {by}: {reason})"),
                data: serde_json::json!({ "env": env_name }),
                ..NewEvent::about_nothing()
            },
        )
        .await?;
        self.commit(tx, vec![event]).await?;
        Ok(Freeze {
            env: env.cloned(),
            reason,
            by,
            since: parse("time", &since, str::parse::<Timestamp>)?,
        })
    }

    async fn freezes(&self) -> Result<Vec<Freeze>> {
        let rows: Vec<(Option<String>, String, String, String)> = sqlx::query_as(
            "SELECT env, reason, frozen_by, frozen_at FROM freezes WHERE lifted_at IS NULL ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading freezes"))?;
        rows.into_iter()
            .map(|(env, reason, by, since)| {
                Ok(Freeze {
                    env: env
                        .map(|e| parse("environment", &e, EnvName::parse))
                        .transpose()?,
                    reason,
                    by,
                    since: parse("time", &since, str::parse::<Timestamp>)?,
                })
            })
            .collect()
    }

    async fn record_gate(&self, g: NewGate, actor: &str) -> Result<Gate> {
        let (_w, mut tx) = self.begin().await?;
        let finished_at = now();
        let id: i64 = sqlx::query_scalar("INSERT INTO gates (promotion_id, name, passed, output, started_at, finished_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id")
            .bind(g.promotion_id.0)
            .bind(&g.name)
            .bind(i64::from(g.passed))
            .bind(&g.output)
            .bind(g.started_at.to_string())
            .bind(finished_at.to_string())
            .fetch_one(&mut *tx)
            .await
            .map_err(db("recording a gate"))?;
        let p = promotion_in(&mut tx, g.promotion_id).await?;
        let verdict = if g.passed { "passed" } else { "failed" };
        let message = format!(
            "{} of {}@{} in {} {verdict}",
            g.name, p.app, p.version, p.env
        );
        let event = append(
            &mut tx,
            promotion_event(
                &p,
                actor,
                if g.passed {
                    EventKind::GatePassed
                } else {
                    EventKind::GateFailed
                },
                message,
                serde_json::json!({ "gate": g.name, "gate_id": id }),
            ),
        )
        .await?;
        self.commit(tx, vec![event]).await?;
        Ok(Gate {
            id,
            promotion_id: g.promotion_id,
            name: g.name,
            passed: g.passed,
            output: g.output,
            started_at: g.started_at,
            finished_at,
        })
    }

    async fn gates(&self, promotion_id: PromotionId) -> Result<Vec<Gate>> {
        let rows = sqlx::query("SELECT * FROM gates WHERE promotion_id = $1 ORDER BY id")
            .bind(promotion_id.0)
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading gates"))?;
        rows.iter()
            .map(|row| {
                Ok(Gate {
                    id: get(row, "id")?,
                    promotion_id: PromotionId(get(row, "promotion_id")?),
                    name: get(row, "name")?,
                    passed: get::<i64>(row, "passed")? != 0,
                    output: get(row, "output")?,
                    started_at: get_time(row, "started_at")?,
                    finished_at: get_time(row, "finished_at")?,
                })
            })
            .collect()
    }

    async fn live(&self, app: Option<&AppName>) -> Result<Vec<LiveRelease>> {
        let query = match app {
            Some(app) => sqlx::query("SELECT * FROM live WHERE app = $1 ORDER BY app, env")
                .bind(app.as_str()),
            None => sqlx::query("SELECT * FROM live ORDER BY app, env"),
        };
        query
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading live releases"))?
            .iter()
            .map(live_from)
            .collect()
    }

    async fn live_of(&self, apps: &[AppName]) -> Result<Vec<LiveRelease>> {
        if apps.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT * FROM live WHERE app IN ({}) ORDER BY app, env",
            placeholders(1, apps.len())
        );
        with_apps(&sql, apps)
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading live releases"))?
            .iter()
            .map(live_from)
            .collect()
    }

    async fn put_instance(&self, i: InstanceRecord) -> Result<()> {
        let (_w, mut tx) = self.begin().await?;
        sqlx::query("INSERT INTO instances (id, app, env, version, promotion_id, pid, port, state, log_path, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO UPDATE SET app = excluded.app, env = excluded.env, version = excluded.version, promotion_id = excluded.promotion_id, pid = excluded.pid, port = excluded.port, state = excluded.state, log_path = excluded.log_path, updated_at = excluded.updated_at")
            .bind(i.id.as_str())
            .bind(i.app.as_str())
            .bind(i.env.as_str())
            .bind(i.version.as_str())
            .bind(i.promotion_id.0)
            .bind(i.pid)
            .bind(i.port)
            .bind(&i.state)
            .bind(&i.log_path)
            .bind(now().to_string())
            .execute(&mut *tx)
            .await
            .map_err(db("recording an instance"))?;
        self.commit(tx, Vec::new()).await
    }

    async fn mark_instance_stopped(&self, id: &InstanceId) -> Result<()> {
        let (_w, mut tx) = self.begin().await?;
        sqlx::query("UPDATE instances SET state = 'stopped', updated_at = $1 WHERE id = $2")
            .bind(now().to_string())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db("recording a stopped instance"))?;
        self.commit(tx, Vec::new()).await
    }

    async fn running_instances(&self) -> Result<Vec<InstanceRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM instances WHERE state IN ('starting', 'running') ORDER BY updated_at",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading instances"))?;
        rows.iter()
            .map(|row| {
                Ok(InstanceRecord {
                    id: InstanceId::recorded(get::<String>(row, "id")?),
                    app: parse("app", &get::<String>(row, "app")?, AppName::parse)?,
                    env: parse("environment", &get::<String>(row, "env")?, EnvName::parse)?,
                    version: parse("version", &get::<String>(row, "version")?, Version::parse)?,
                    promotion_id: PromotionId(get(row, "promotion_id")?),
                    pid: get(row, "pid")?,
                    port: get(row, "port")?,
                    state: get(row, "state")?,
                    log_path: get(row, "log_path")?,
                })
            })
            .collect()
    }

    async fn append_event(&self, e: NewEvent) -> Result<Event> {
        let (_w, mut tx) = self.begin().await?;
        let event = append(&mut tx, e).await?;
        self.commit(tx, vec![event.clone()]).await?;
        Ok(event)
    }

    async fn events(&self, f: EventFilter) -> Result<Vec<Event>> {
        const MATCHING: &str = "SELECT * FROM events WHERE id > $1 AND ($2 IS NULL OR app = $2) AND ($3 IS NULL OR env = $3)
            AND ($5 IS NULL OR actor = $5) AND ($6 IS NULL OR kind = $6 OR kind LIKE $6 || '.%')
            AND ($7 IS NULL OR id < $7)";
        let sql = if f.newest_first {
            format!("{MATCHING} ORDER BY id DESC LIMIT $4")
        } else {
            format!("{MATCHING} ORDER BY id LIMIT $4")
        };
        sqlx::query(&sql)
            .bind(f.after)
            .bind(f.app)
            .bind(f.env)
            .bind(f.limit.unwrap_or(i64::MAX))
            .bind(f.actor)
            .bind(f.kind)
            .bind(f.before)
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading events"))?
            .iter()
            .map(event_from)
            .collect()
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    async fn insert_token(&self, t: NewToken, actor: &str) -> Result<TokenRecord> {
        let (_w, mut tx) = self.begin().await?;
        let taken: Option<i64> = sqlx::query_scalar("SELECT id FROM tokens WHERE name = $1")
            .bind(&t.name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("reading tokens"))?;
        if taken.is_some() {
            return Err(StoreError::TokenExists(t.name));
        }
        let created_at = now();
        let envs: Vec<&str> = t.envs.iter().map(shipgate_core::EnvScope::as_str).collect();
        let id: i64 = sqlx::query_scalar("INSERT INTO tokens (name, role, hash, created_at, envs, person, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id")
            .bind(&t.name)
            .bind(t.role.as_str())
            .bind(&t.hash)
            .bind(created_at.to_string())
            .bind(serde_json::to_string(&envs).unwrap_or_else(|_| "[]".into()))
            .bind(t.person.clone())
            .bind(t.expires_at.map(|e| e.to_string()))
            .fetch_one(&mut *tx)
            .await
            .map_err(db("storing a token"))?;
        let scope = if envs.is_empty() {
            "every environment".to_owned()
        } else {
            envs.join(", ")
        };
        let event = append(
            &mut tx,
            NewEvent {
                actor: actor.to_owned(),
                kind: EventKind::TokenCreated,
                message: format!(
                    "token `{}` created with role {} for {scope}",
                    t.name, t.role
                ),
                data: serde_json::json!({ "name": t.name, "role": t.role, "envs": envs }),
                ..NewEvent::about_nothing()
            },
        )
        .await?;
        self.commit(tx, vec![event]).await?;
        Ok(TokenRecord {
            id,
            name: t.name,
            role: t.role,
            envs: t.envs,
            person: t.person,
            created_at,
            revoked_at: None,
            expires_at: t.expires_at,
        })
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>> {
        let row = sqlx::query("SELECT id, name, role, envs, person, created_at, revoked_at, expires_at FROM tokens WHERE hash = $1 AND revoked_at IS NULL")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a token"))?;
        // An expired token works no more than a revoked one.
        Ok(row
            .map(|row| token_from(&row))
            .transpose()?
            .filter(|t| t.expires_at.is_none_or(|e| e > now())))
    }

    async fn revoked_token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>> {
        let row = sqlx::query("SELECT id, name, role, envs, person, created_at, revoked_at, expires_at FROM tokens WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a token"))?;
        Ok(row
            .map(|row| token_from(&row))
            .transpose()?
            .filter(|t| t.revoked_at.is_some() || t.expires_at.is_some_and(|e| e <= now())))
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        sqlx::query(
            "SELECT id, name, role, envs, person, created_at, revoked_at, expires_at FROM tokens ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing tokens"))?
        .iter()
        .map(token_from)
        .collect()
    }

    async fn revoke_token(&self, name: &str, actor: &str) -> Result<TokenRecord> {
        let (_w, mut tx) = self.begin().await?;
        let active: Vec<shipgate_core::Grant> = sqlx::query(
            "SELECT id, name, role, envs, person, created_at, revoked_at, expires_at FROM tokens WHERE revoked_at IS NULL",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(db("reading tokens"))?
        .iter()
        .map(token_from)
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        // An expired admin token is no admin: it does not keep the last working one.
        .filter(|t| t.name == name || t.expires_at.is_none_or(|e| e > now()))
        .map(|t| t.grant())
        .collect();
        shipgate_core::access::may_revoke(&active, name, actor)
            .map_err(|refusal| StoreError::Conflict(refusal.to_string()))?;
        let at = now();
        let revoked =
            sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL")
                .bind(at.to_string())
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(db("revoking a token"))?;
        if revoked.rows_affected() == 0 {
            // As in `record_decision`: the update took the write lock.
            tx.rollback().await.map_err(db("rolling back"))?;
            return Err(StoreError::NotFound(format!(
                "an active token named `{name}`"
            )));
        }
        let row = sqlx::query(
            "SELECT id, name, role, envs, person, created_at, revoked_at, expires_at FROM tokens WHERE name = $1",
        )
        .bind(name)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("reading a token"))?;
        let token = token_from(&row)?;
        let event = append(
            &mut tx,
            NewEvent {
                actor: actor.to_owned(),
                kind: EventKind::TokenRevoked,
                message: format!("token `{name}` revoked"),
                data: serde_json::json!({ "name": name }),
                ..NewEvent::about_nothing()
            },
        )
        .await?;
        self.commit(tx, vec![event]).await?;
        Ok(token)
    }

    async fn add_host(&self, name: &str, token_hash: &str, actor: &str) -> Result<HostRecord> {
        let present = |h: Option<&HostRecord>| match h {
            Some(h) if h.removed_at.is_none() => Err(StoreError::Conflict(format!(
                "host `{name}` is already added; remove it first (shipgate host remove {name}) to issue a new join token"
            ))),
            _ => Ok(()),
        };
        let at = now().to_string();
        self.host_write(
            name,
            present,
            "INSERT INTO hosts (name, token_hash, fingerprint, added_at, joined_at, removed_at) VALUES ($1, $2, NULL, $3, NULL, NULL) \
             ON CONFLICT (name) DO UPDATE SET token_hash = excluded.token_hash, fingerprint = NULL, added_at = excluded.added_at, joined_at = NULL, removed_at = NULL",
            &[Some(name.to_owned()), Some(token_hash.to_owned()), Some(at)],
            host_event(actor, EventKind::HostAdded, name, format!("host `{name}` added; it joins with its one-time token")),
        )
        .await
    }

    async fn join_host(
        &self,
        name: &str,
        token_hash: &str,
        fingerprint: &str,
    ) -> Result<HostRecord> {
        let (_w, mut tx) = self.begin().await?;
        let waiting: Option<String> = sqlx::query_scalar(
            "SELECT token_hash FROM hosts WHERE name = $1 AND removed_at IS NULL AND joined_at IS NULL",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("reading a host"))?
        .flatten();
        let matches = waiting.is_some_and(|w| {
            use subtle::ConstantTimeEq;
            bool::from(w.as_bytes().ct_eq(token_hash.as_bytes()))
        });
        if !matches {
            tx.rollback().await.map_err(db("rolling back"))?;
            return Err(StoreError::NotFound(format!(
                "a host `{name}` waiting to join with this token (a join token works once: run `shipgate host add {name}` for a new one)"
            )));
        }
        sqlx::query(
            "UPDATE hosts SET token_hash = NULL, fingerprint = $1, joined_at = $2 WHERE name = $3",
        )
        .bind(fingerprint)
        .bind(now().to_string())
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(db("joining a host"))?;
        let host = host_in(&mut tx, name)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("host `{name}`")))?;
        let event = append(
            &mut tx,
            host_event(
                name,
                EventKind::HostJoined,
                name,
                format!("host `{name}` joined; its certificate {fingerprint} is pinned"),
            ),
        )
        .await?;
        self.commit(tx, vec![event]).await?;
        Ok(host)
    }

    async fn host_by_fingerprint(&self, fingerprint: &str) -> Result<Option<HostRecord>> {
        sqlx::query(&format!(
            "SELECT {HOST_COLUMNS} FROM hosts WHERE fingerprint = $1 AND removed_at IS NULL"
        ))
        .bind(fingerprint)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a host"))?
        .map(|row| host_from(&row))
        .transpose()
    }

    async fn hosts(&self) -> Result<Vec<HostRecord>> {
        sqlx::query(&format!("SELECT {HOST_COLUMNS} FROM hosts ORDER BY name"))
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing hosts"))?
            .iter()
            .map(host_from)
            .collect()
    }

    async fn record_traffic(
        &self,
        samples: &[(AppName, EnvName, TrafficSample)],
        forget_before: Timestamp,
    ) -> Result<()> {
        // A writer like any other: one at a time, or a promotion's write that read first
        // meets SQLITE_BUSY and its promotion is left unfinished.
        let (_w, mut tx) = self.begin().await?;
        for (app, env, sample) in samples {
            sqlx::query(
                "INSERT INTO traffic_samples (app, env, at_ms, seconds, requests, errors, p99_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (app, env, at_ms) DO UPDATE SET seconds = excluded.seconds, requests = excluded.requests, errors = excluded.errors, p99_ms = excluded.p99_ms",
            )
            .bind(app.as_str())
            .bind(env.as_str())
            .bind(sample.at.as_millisecond())
            .bind(sample.seconds)
            .bind(i64::try_from(sample.requests).unwrap_or(i64::MAX))
            .bind(i64::try_from(sample.errors).unwrap_or(i64::MAX))
            .bind(sample.p99_ms)
            .execute(&mut *tx)
            .await
            .map_err(db("recording traffic"))?;
        }
        sqlx::query("DELETE FROM traffic_samples WHERE at_ms < $1")
            .bind(forget_before.as_millisecond())
            .execute(&mut *tx)
            .await
            .map_err(db("forgetting old traffic"))?;
        tx.commit().await.map_err(db("committing traffic"))
    }

    async fn traffic(
        &self,
        app: &AppName,
        env: &EnvName,
        since: Timestamp,
    ) -> Result<Vec<TrafficSample>> {
        sqlx::query(
            "SELECT at_ms, seconds, requests, errors, p99_ms FROM traffic_samples WHERE app = $1 AND env = $2 AND at_ms >= $3 ORDER BY at_ms",
        )
        .bind(app.as_str())
        .bind(env.as_str())
        .bind(since.as_millisecond())
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading traffic"))?
        .iter()
        .map(|row| {
            let at_ms: i64 = get(row, "at_ms")?;
            Ok(TrafficSample {
                at: Timestamp::from_millisecond(at_ms)
                    .map_err(|e| StoreError::Corrupt(format!("traffic time {at_ms}: {e}")))?,
                seconds: get(row, "seconds")?,
                requests: u64::try_from(get::<i64>(row, "requests")?).unwrap_or(0),
                errors: u64::try_from(get::<i64>(row, "errors")?).unwrap_or(0),
                p99_ms: get(row, "p99_ms")?,
            })
        })
        .collect()
    }

    async fn remove_host(&self, name: &str, actor: &str) -> Result<HostRecord> {
        let present = |h: Option<&HostRecord>| match h {
            Some(h) if h.removed_at.is_none() => Ok(()),
            _ => Err(StoreError::NotFound(format!("a host named `{name}`"))),
        };
        self.host_write(
            name,
            present,
            "UPDATE hosts SET removed_at = $1, token_hash = NULL WHERE name = $2",
            &[Some(now().to_string()), Some(name.to_owned())],
            host_event(
                actor,
                EventKind::HostRemoved,
                name,
                format!("host `{name}` removed; its certificate is revoked"),
            ),
        )
        .await
    }

    async fn acquire_lease(
        &self,
        holder: &str,
        address: &str,
        length: Duration,
    ) -> Result<Option<Lease>> {
        let _w = self.write.lock().await;
        let now = self.backend.now_ms();
        sqlx::query("INSERT INTO leases (name, holder, address, epoch, expires_ms, since) VALUES ($1, '', '', 0, 0, $2) ON CONFLICT (name) DO NOTHING")
            .bind(ENGINE_LEASE)
            .bind(Timestamp::UNIX_EPOCH.to_string())
            .execute(&self.pool)
            .await
            .map_err(db("making the lease"))?;
        sqlx::query(&format!(
            "UPDATE leases SET holder = $2, address = $3, epoch = epoch + 1, expires_ms = {now} + $4, since = $5 \
             WHERE name = $1 AND (expires_ms <= {now} OR holder = $2) RETURNING {LEASE_COLUMNS}"
        ))
        .bind(ENGINE_LEASE)
        .bind(holder)
        .bind(address)
        .bind(millis(length))
        .bind(now_text())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("taking the lease"))?
        .map(|row| lease_from(&row))
        .transpose()
    }

    async fn renew_lease(&self, lease: &Lease, length: Duration) -> Result<Option<Lease>> {
        let _w = self.write.lock().await;
        let now = self.backend.now_ms();
        sqlx::query(&format!(
            "UPDATE leases SET expires_ms = {now} + $4 \
             WHERE name = $1 AND holder = $2 AND epoch = $3 RETURNING {LEASE_COLUMNS}"
        ))
        .bind(ENGINE_LEASE)
        .bind(&lease.holder)
        .bind(lease.epoch)
        .bind(millis(length))
        .fetch_optional(&self.pool)
        .await
        .map_err(db("renewing the lease"))?
        .map(|row| lease_from(&row))
        .transpose()
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let _w = self.write.lock().await;
        sqlx::query(
            "UPDATE leases SET expires_ms = 0 WHERE name = $1 AND holder = $2 AND epoch = $3",
        )
        .bind(ENGINE_LEASE)
        .bind(&lease.holder)
        .bind(lease.epoch)
        .execute(&self.pool)
        .await
        .map_err(db("releasing the lease"))?;
        Ok(())
    }

    async fn lease(&self) -> Result<Option<Lease>> {
        sqlx::query(&format!(
            "SELECT {LEASE_COLUMNS} FROM leases WHERE name = $1 AND epoch > 0"
        ))
        .bind(ENGINE_LEASE)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading the lease"))?
        .map(|row| lease_from(&row))
        .transpose()
    }

    fn fenced(&self, lease: Lease) -> Arc<dyn Store> {
        Arc::new(SqlStore {
            shared: Arc::clone(&self.shared),
            fence: Some(lease),
        })
    }

    async fn share_once(&self, name: &str, value: &str) -> Result<String> {
        let _w = self.write.lock().await;
        sqlx::query("INSERT INTO shared_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(db("sharing a secret"))?;
        sqlx::query_scalar("SELECT value FROM shared_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .map_err(db("reading a shared secret"))
    }

    async fn put_shared(&self, name: &str, value: &str) -> Result<()> {
        let (_w, mut tx) = self.begin().await?;
        sqlx::query("INSERT INTO shared_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value")
            .bind(name)
            .bind(value)
            .execute(&mut *tx)
            .await
            .map_err(db("keeping shared state"))?;
        self.commit(tx, Vec::new()).await
    }

    async fn shared(&self, name: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT value FROM shared_secrets WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading shared state"))
    }

    fn is_shared(&self) -> bool {
        self.backend == Backend::Postgres
    }

    async fn put_artifact(&self, digest: &Digest, file: &Path) -> Result<()> {
        use tokio::io::AsyncReadExt;
        if self.artifact_chunks(digest).await?.is_some() {
            return Ok(());
        }
        let io = |e: std::io::Error| StoreError::Database {
            context: "reading the artifact to store",
            source: sqlx::Error::Io(e),
        };
        let mut reader = tokio::fs::File::open(file).await.map_err(io)?;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("starting a transaction"))?;
        let mut chunk = vec![0u8; ARTIFACT_CHUNK];
        let (mut seq, mut size) = (0i64, 0i64);
        loop {
            let mut filled = 0;
            while filled < chunk.len() {
                let n = reader.read(&mut chunk[filled..]).await.map_err(io)?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 && seq > 0 {
                break;
            }
            sqlx::query("INSERT INTO artifact_chunks (digest, seq, bytes) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(digest.as_str())
                .bind(seq)
                .bind(&chunk[..filled])
                .execute(&mut *tx)
                .await
                .map_err(db("storing an artifact chunk"))?;
            seq += 1;
            size += filled as i64;
            if filled < chunk.len() {
                break;
            }
        }
        // Written last: an artifact is there only when all of its chunks are.
        sqlx::query("INSERT INTO artifacts (digest, size, chunks) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(digest.as_str())
            .bind(size)
            .bind(seq)
            .execute(&mut *tx)
            .await
            .map_err(db("storing an artifact"))?;
        tx.commit().await.map_err(db("committing an artifact"))
    }

    async fn remove_artifact(&self, digest: &Digest) -> Result<()> {
        let (_w, mut tx) = self.begin().await?;
        // The record first: from then on the artifact is not there, whatever chunks remain.
        for sql in [
            "DELETE FROM artifacts WHERE digest = $1",
            "DELETE FROM artifact_chunks WHERE digest = $1",
        ] {
            sqlx::query(sql)
                .bind(digest.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db("removing an artifact"))?;
        }
        self.commit(tx, Vec::new()).await
    }

    async fn artifact_chunks(&self, digest: &Digest) -> Result<Option<i64>> {
        sqlx::query_scalar("SELECT chunks FROM artifacts WHERE digest = $1")
            .bind(digest.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading an artifact"))
    }

    async fn artifact_chunk(&self, digest: &Digest, seq: i64) -> Result<Vec<u8>> {
        sqlx::query_scalar("SELECT bytes FROM artifact_chunks WHERE digest = $1 AND seq = $2")
            .bind(digest.as_str())
            .bind(seq)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading an artifact chunk"))?
            .ok_or_else(|| {
                StoreError::Corrupt(format!("chunk {seq} of artifact {digest} is missing"))
            })
    }

    async fn insert_on_demand(
        &self,
        env: OnDemandRecord,
        event: NewEvent,
    ) -> Result<OnDemandRecord> {
        SqlStore::insert_on_demand(self, env, event).await
    }

    async fn update_on_demand(
        &self,
        env: &OnDemandRecord,
        from: shipgate_core::on_demand::OnDemandState,
        event: Option<NewEvent>,
    ) -> Result<()> {
        SqlStore::update_on_demand(self, env, from, event).await
    }

    async fn touch_on_demand(&self, env: &EnvName, expires_at: Timestamp) -> Result<()> {
        SqlStore::touch_on_demand(self, env, expires_at).await
    }

    async fn begin_deleting(
        &self,
        env: &EnvName,
        unless_changed: Option<(shipgate_core::on_demand::OnDemandState, Timestamp)>,
    ) -> Result<bool> {
        SqlStore::begin_deleting(self, env, unless_changed).await
    }

    async fn delete_on_demand(&self, env: &EnvName, event: NewEvent) -> Result<()> {
        SqlStore::delete_on_demand(self, env, event).await
    }

    async fn on_demand(&self) -> Result<Vec<OnDemandRecord>> {
        self.all_on_demand().await
    }

    async fn set_flags(
        &self,
        env: &EnvName,
        app: &AppName,
        states: &[(String, shipgate_core::flag::FlagState)],
        actor: &str,
        supersede: &[i64],
        event: NewEvent,
    ) -> Result<()> {
        SqlStore::set_flags(self, env, app, states, actor, supersede, event).await
    }

    async fn request_flag_change(
        &self,
        env: &EnvName,
        app: &AppName,
        changes: &[FlagChange],
        event: NewEvent,
    ) -> Result<FlagChangeRecord> {
        SqlStore::request_flag_change(self, env, app, changes, event).await
    }

    async fn flag_changes(
        &self,
        env: Option<&EnvName>,
        pending_only: bool,
    ) -> Result<Vec<FlagChangeRecord>> {
        SqlStore::flag_changes(self, env, pending_only).await
    }

    async fn flag_change(&self, id: i64) -> Result<Option<FlagChangeRecord>> {
        SqlStore::flag_change(self, id).await
    }

    async fn decide_flag_change(
        &self,
        decide: FlagDecision,
        events: Vec<NewEvent>,
    ) -> Result<FlagChangeRecord> {
        SqlStore::decide_flag_change(self, decide, events).await
    }

    async fn flags(&self, env: Option<&EnvName>) -> Result<Vec<FlagRecord>> {
        SqlStore::flags(self, env).await
    }

    async fn insert_flag_key(
        &self,
        name: &str,
        env: &EnvName,
        hash: &str,
        event: NewEvent,
    ) -> Result<FlagKeyRecord> {
        SqlStore::insert_flag_key(self, name, env, hash, event).await
    }

    async fn flag_key_by_hash(&self, hash: &str) -> Result<Option<FlagKeyRecord>> {
        SqlStore::flag_key_by_hash(self, hash).await
    }

    async fn flag_keys(&self) -> Result<Vec<FlagKeyRecord>> {
        SqlStore::flag_keys(self).await
    }

    async fn revoke_flag_key(&self, name: &str, event: NewEvent) -> Result<FlagKeyRecord> {
        SqlStore::revoke_flag_key(self, name, event).await
    }

    async fn dora_changes(
        &self,
        since: jiff::Timestamp,
        app: Option<&AppName>,
    ) -> Result<Vec<shipgate_core::dora::Change>> {
        let rows = sqlx::query(
            "SELECT p.app, p.env, p.kind, p.state, p.created_at, p.updated_at, p.version, r.commit_time FROM promotions p \
             LEFT JOIN releases r ON r.app = p.app AND r.version = p.version \
             WHERE p.updated_at > $1 AND ($2 IS NULL OR p.app = $2)",
        )
        .bind(since.to_string())
        .bind(app.map(|a| a.as_str().to_owned()))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading promotions for DORA"))?;
        let waits = self.signoff_waits(app).await?;
        rows.iter()
            .map(|row| {
                let kind: String = get(row, "kind")?;
                let state: String = get(row, "state")?;
                Ok(shipgate_core::dora::Change {
                    app: get(row, "app")?,
                    env: get(row, "env")?,
                    kind: PromotionKind::parse(&kind)
                        .ok_or_else(|| StoreError::Corrupt(format!("promotion kind `{kind}`")))?,
                    state: PromotionState::parse(&state)
                        .ok_or_else(|| StoreError::Corrupt(format!("promotion state `{state}`")))?,
                    requested_at: get_time(row, "created_at")?,
                    finished_at: get_time(row, "updated_at")?,
                    commit_time: get_time_opt(row, "commit_time")?,
                    signoff_secs: signoff::waited(
                        &waits,
                        &get::<String>(row, "app")?,
                        &get::<String>(row, "version")?,
                        get_time(row, "updated_at")?,
                    ),
                })
            })
            .collect()
    }

    async fn count_promotions_since(&self, since: jiff::Timestamp) -> Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM promotions WHERE updated_at > $1")
            .bind(since.to_string())
            .fetch_one(&self.pool)
            .await
            .map_err(db("counting promotions"))
    }

    async fn pending_outbox(&self, limit: i64) -> Result<Vec<Event>> {
        SqlStore::pending_outbox(self, limit).await
    }

    async fn fan_out(&self, event_ids: &[i64], deliveries: Vec<NewDelivery>) -> Result<()> {
        SqlStore::fan_out(self, event_ids, deliveries).await
    }

    async fn first_pending_deliveries(&self) -> Result<Vec<Delivery>> {
        SqlStore::first_pending_deliveries(self).await
    }

    async fn record_attempt(
        &self,
        id: i64,
        attempt: DeliveryAttempt,
        outcome: AttemptOutcome,
    ) -> Result<()> {
        SqlStore::record_attempt(self, id, attempt, outcome).await
    }

    async fn deliveries(
        &self,
        status: Option<DeliveryStatus>,
        limit: i64,
    ) -> Result<Vec<Delivery>> {
        SqlStore::deliveries(self, status, limit).await
    }

    async fn delivery_attempts(&self, id: i64) -> Result<Vec<DeliveryAttempt>> {
        SqlStore::delivery_attempts(self, id).await
    }

    async fn retry_deliveries(&self, ids: &[i64], event: NewEvent) -> Result<Vec<Delivery>> {
        SqlStore::retry_deliveries(self, ids, event).await
    }

    async fn event(&self, id: i64) -> Result<Option<Event>> {
        let row = sqlx::query("SELECT * FROM events WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading an event"))?;
        row.as_ref().map(event_from).transpose()
    }

    async fn insert_fault(
        &self,
        env: &EnvName,
        app: &AppName,
        fault: &shipgate_core::chaos::HttpFault,
        ends_at: jiff::Timestamp,
        event: NewEvent,
    ) -> Result<FaultRecord> {
        SqlStore::insert_fault(self, env, app, fault, ends_at, event).await
    }

    async fn faults(&self, env: Option<&EnvName>, active_only: bool) -> Result<Vec<FaultRecord>> {
        SqlStore::faults(self, env, active_only).await
    }

    async fn end_faults(&self, by: &str, events: Vec<(i64, NewEvent)>) -> Result<Vec<FaultRecord>> {
        SqlStore::end_faults(self, by, events).await
    }
}

impl SqlStore {
    async fn host_write(
        &self,
        name: &str,
        check: impl FnOnce(Option<&HostRecord>) -> Result<()>,
        sql: &str,
        binds: &[Option<String>],
        event: NewEvent,
    ) -> Result<HostRecord> {
        let (_w, mut tx) = self.begin().await?;
        check(host_in(&mut tx, name).await?.as_ref())?;
        let mut q = sqlx::query(sql);
        for b in binds {
            q = q.bind(b.clone());
        }
        q.execute(&mut *tx).await.map_err(db("writing a host"))?;
        let host = host_in(&mut tx, name)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("host `{name}`")))?;
        let event = append(&mut tx, event).await?;
        self.commit(tx, vec![event]).await?;
        Ok(host)
    }
}

/// `sql` with each of `apps` bound in order (its `IN` list made by [`placeholders`]).
fn with_apps<'q>(
    sql: &'q str,
    apps: &'q [AppName],
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    apps.iter()
        .fold(sqlx::query(sql), |q, a| q.bind(a.as_str()))
}

/// `$first, $first+1, ...` for an `IN` list of `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn token_from(row: &AnyRow) -> Result<TokenRecord> {
    let role: String = get(row, "role")?;
    let envs: String = get(row, "envs")?;
    let envs: Vec<String> = serde_json::from_str(&envs)
        .map_err(|e| StoreError::Corrupt(format!("token environments: {e}")))?;
    Ok(TokenRecord {
        id: get(row, "id")?,
        name: get(row, "name")?,
        role: parse("role", &role, shipgate_core::Role::parse)?,
        envs: envs
            .iter()
            .map(|e| parse("environment", e, shipgate_core::EnvScope::parse))
            .collect::<Result<_>>()?,
        person: get(row, "person")?,
        created_at: get_time(row, "created_at")?,
        revoked_at: get_time_opt(row, "revoked_at")?,
        expires_at: get_time_opt(row, "expires_at")?,
    })
}
