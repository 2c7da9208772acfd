//! The embedded store: one SQLite file in WAL mode inside the data dir.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use shipgate_core::gate::{Decision, Freeze, Stage};
use shipgate_core::{
    AppName, Digest, EnvName, EventKind, InstanceId, PromotionId, PromotionKind, PromotionState,
    Standing, Version,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use tokio::sync::{Mutex, broadcast};

use crate::*;

/// Schema changes, applied in order at start; never edit one that has shipped, add another.
/// A migration that adds a column must come with the queries of that table naming their columns:
/// sqlx-sqlite panics when a cached `SELECT *` meets a table whose column count changed.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE releases (
    app TEXT NOT NULL, version TEXT NOT NULL, digest TEXT NOT NULL, size INTEGER NOT NULL,
    commit_sha TEXT, notes TEXT, created_by TEXT NOT NULL, created_at TEXT NOT NULL,
    PRIMARY KEY (app, version)
);
CREATE TABLE promotions (
    id INTEGER PRIMARY KEY, app TEXT NOT NULL, version TEXT NOT NULL, digest TEXT NOT NULL,
    env TEXT NOT NULL, kind TEXT NOT NULL, state TEXT NOT NULL, requested_by TEXT NOT NULL,
    previous_version TEXT, reason TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    FOREIGN KEY (app, version) REFERENCES releases (app, version)
);
CREATE INDEX promotions_app_env ON promotions (app, env, id);
CREATE INDEX promotions_state ON promotions (state);
CREATE TABLE gates (
    id INTEGER PRIMARY KEY, promotion_id INTEGER NOT NULL REFERENCES promotions (id),
    name TEXT NOT NULL, passed INTEGER NOT NULL, output TEXT NOT NULL,
    started_at TEXT NOT NULL, finished_at TEXT NOT NULL
);
CREATE INDEX gates_promotion ON gates (promotion_id);
CREATE TABLE live (
    app TEXT NOT NULL, env TEXT NOT NULL, version TEXT NOT NULL, digest TEXT NOT NULL,
    promotion_id INTEGER NOT NULL REFERENCES promotions (id), since TEXT NOT NULL,
    PRIMARY KEY (app, env)
);
CREATE TABLE instances (
    id TEXT PRIMARY KEY, app TEXT NOT NULL, env TEXT NOT NULL, version TEXT NOT NULL,
    promotion_id INTEGER NOT NULL, pid INTEGER, port INTEGER, state TEXT NOT NULL,
    log_path TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, kind TEXT NOT NULL,
    app TEXT, env TEXT, promotion_id INTEGER, message TEXT NOT NULL, data TEXT NOT NULL,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL
);
CREATE INDEX events_app_env ON events (app, env);
CREATE TRIGGER events_are_append_only_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER events_are_append_only_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TABLE tokens (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, role TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL, revoked_at TEXT
);
"#,
    r#"
ALTER TABLE tokens ADD COLUMN envs TEXT NOT NULL DEFAULT '[]';
"#,
    r#"
CREATE TABLE decisions (
    id INTEGER PRIMARY KEY, promotion_id INTEGER NOT NULL REFERENCES promotions (id),
    stage TEXT NOT NULL, actor TEXT NOT NULL, role TEXT NOT NULL, approve INTEGER NOT NULL,
    comment TEXT, at TEXT NOT NULL, UNIQUE (promotion_id, stage, actor)
);
CREATE TABLE freezes (
    id INTEGER PRIMARY KEY, env TEXT, reason TEXT NOT NULL, frozen_by TEXT NOT NULL,
    frozen_at TEXT NOT NULL, lifted_by TEXT, lifted_at TEXT
);
CREATE TABLE overrides (
    promotion_id INTEGER PRIMARY KEY REFERENCES promotions (id), actor TEXT NOT NULL,
    reason TEXT NOT NULL, at TEXT NOT NULL
);
"#,
    r#"
CREATE INDEX promotions_app_version ON promotions (app, version, id);
CREATE INDEX events_actor ON events (actor, id);
CREATE INDEX events_kind ON events (kind, id);
"#,
    r#"
CREATE TABLE hosts (
    name TEXT PRIMARY KEY, token_hash TEXT, fingerprint TEXT UNIQUE, added_at TEXT NOT NULL,
    joined_at TEXT, removed_at TEXT
);
"#,
    r#"
CREATE TABLE traffic_samples (
    app TEXT NOT NULL, env TEXT NOT NULL, at_ms INTEGER NOT NULL, seconds REAL NOT NULL,
    requests INTEGER NOT NULL, errors INTEGER NOT NULL, p99_ms REAL,
    PRIMARY KEY (app, env, at_ms)
);
CREATE INDEX traffic_samples_at ON traffic_samples (at_ms);
"#,
];

const HOST_COLUMNS: &str = "name, fingerprint, added_at, joined_at, removed_at";

fn host_from(row: &SqliteRow) -> Result<HostRecord> {
    Ok(HostRecord {
        name: get(row, "name")?,
        fingerprint: get(row, "fingerprint")?,
        added_at: get_time(row, "added_at")?,
        joined_at: get_time_opt(row, "joined_at")?,
        removed_at: get_time_opt(row, "removed_at")?,
    })
}

async fn host_in(tx: &mut Transaction<'_, Sqlite>, name: &str) -> Result<Option<HostRecord>> {
    sqlx::query(&format!("SELECT {HOST_COLUMNS} FROM hosts WHERE name = ?"))
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

/// The SQLite implementation of [`Store`].
pub struct SqliteStore {
    pool: SqlitePool,
    /// Serialises writers so the event chain has one tail; readers never wait on it.
    write: Mutex<()>,
    events: broadcast::Sender<Event>,
}

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

fn get_time(row: &SqliteRow, col: &str) -> Result<Timestamp> {
    parse("time", &get::<String>(row, col)?, str::parse::<Timestamp>)
}

fn get_time_opt(row: &SqliteRow, col: &str) -> Result<Option<Timestamp>> {
    get::<Option<String>>(row, col)?
        .map(|t| parse("time", &t, str::parse::<Timestamp>))
        .transpose()
}

fn get<'r, T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>>(
    row: &'r SqliteRow,
    col: &str,
) -> Result<T> {
    row.try_get(col).map_err(db("reading a row"))
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        // SQLite gives its -wal and -shm files the mode of the database file: make that 0600
        // before the first connection, so no other local user can read tokens' neighbours.
        private_file(path).map_err(|e| StoreError::Database {
            context: "making the database file private",
            source: sqlx::Error::Io(e),
        })?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(db("opening the database"))?;
        migrate(&pool).await?;
        let (events, _) = broadcast::channel(1024);
        Ok(Self {
            pool,
            write: Mutex::new(()),
            events,
        })
    }

    async fn begin(&self) -> Result<Transaction<'_, Sqlite>> {
        self.pool
            .begin()
            .await
            .map_err(db("starting a transaction"))
    }

    async fn commit(&self, tx: Transaction<'_, Sqlite>, events: Vec<Event>) -> Result<()> {
        tx.commit().await.map_err(db("committing"))?;
        for e in events {
            // No subscriber is fine: the event is durable either way.
            let _ = self.events.send(e);
        }
        Ok(())
    }
}

async fn migrate(pool: &SqlitePool) -> Result<()> {
    sqlx::raw_sql("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        .execute(pool)
        .await
        .map_err(db("creating the migrations table"))?;
    let applied: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            .fetch_one(pool)
            .await
            .map_err(db("reading the schema version"))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        let mut tx = pool.begin().await.map_err(db("starting a migration"))?;
        sqlx::raw_sql(sql)
            .execute(&mut *tx)
            .await
            .map_err(db("applying a migration"))?;
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)")
            .bind(i as i64 + 1)
            .bind(now().to_string())
            .execute(&mut *tx)
            .await
            .map_err(db("recording a migration"))?;
        tx.commit().await.map_err(db("committing a migration"))?;
    }
    Ok(())
}

async fn append(tx: &mut Transaction<'_, Sqlite>, e: NewEvent) -> Result<Event> {
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
    sqlx::query("INSERT INTO events (id, at, actor, kind, app, env, promotion_id, message, data, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
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
    Ok(event)
}

fn release_from(row: &SqliteRow) -> Result<Release> {
    Ok(Release {
        app: parse("app", &get::<String>(row, "app")?, AppName::parse)?,
        version: parse("version", &get::<String>(row, "version")?, Version::parse)?,
        digest: parse("digest", &get::<String>(row, "digest")?, Digest::parse)?,
        size: get(row, "size")?,
        commit: get(row, "commit_sha")?,
        notes: get(row, "notes")?,
        created_by: get(row, "created_by")?,
        created_at: get_time(row, "created_at")?,
    })
}

fn promotion_from(row: &SqliteRow) -> Result<Promotion> {
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

fn live_from(row: &SqliteRow) -> Result<LiveRelease> {
    Ok(LiveRelease {
        app: parse("app", &get::<String>(row, "app")?, AppName::parse)?,
        env: parse("environment", &get::<String>(row, "env")?, EnvName::parse)?,
        version: parse("version", &get::<String>(row, "version")?, Version::parse)?,
        digest: parse("digest", &get::<String>(row, "digest")?, Digest::parse)?,
        promotion_id: PromotionId(get(row, "promotion_id")?),
        since: get_time(row, "since")?,
    })
}

fn event_from(row: &SqliteRow) -> Result<Event> {
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

async fn promotion_in(tx: &mut Transaction<'_, Sqlite>, id: PromotionId) -> Result<Promotion> {
    let row = sqlx::query("SELECT * FROM promotions WHERE id = ?")
        .bind(id.0)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db("reading a promotion"))?
        .ok_or_else(|| StoreError::NotFound(format!("promotion {id}")))?;
    promotion_from(&row)
}

async fn set_state(
    tx: &mut Transaction<'_, Sqlite>,
    id: PromotionId,
    state: PromotionState,
    reason: Option<&str>,
) -> Result<()> {
    sqlx::query("UPDATE promotions SET state = ?, reason = COALESCE(?, reason), updated_at = ? WHERE id = ?")
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
    tx: &mut Transaction<'_, Sqlite>,
    p: NewPromotion,
    actor: &str,
    events: &mut Vec<Event>,
) -> Result<Promotion> {
    let pending: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM promotions WHERE app = ? AND env = ? AND state = 'pending'",
    )
    .bind(p.app.as_str())
    .bind(p.env.as_str())
    .fetch_all(&mut **tx)
    .await
    .map_err(db("reading pending promotions"))?;
    let at = now();
    let id: i64 = sqlx::query_scalar("INSERT INTO promotions (app, version, digest, env, kind, state, requested_by, previous_version, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?) RETURNING id")
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
        sqlx::query("INSERT INTO overrides (promotion_id, actor, reason, at) VALUES (?, ?, ?, ?)")
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
    let message = format!(
        "{actor} asked to {} {}@{} in {}",
        p.kind.as_str(),
        p.app,
        p.version,
        p.env
    );
    let data = serde_json::json!({ "version": p.version, "digest": p.digest, "kind": p.kind, "previous_version": p.previous_version });
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
async fn put_live(tx: &mut Transaction<'_, Sqlite>, l: &LiveRelease) -> Result<()> {
    sqlx::query("INSERT OR REPLACE INTO live (app, env, version, digest, promotion_id, since) VALUES (?, ?, ?, ?, ?, ?)")
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
    tx: &mut Transaction<'_, Sqlite>,
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
impl Store for SqliteStore {
    async fn insert_release(&self, r: NewRelease, actor: &str) -> Result<(Release, bool)> {
        let _w = self.write.lock().await;
        let mut tx = self.begin().await?;
        let existing = sqlx::query("SELECT * FROM releases WHERE app = ? AND version = ?")
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
            notes: r.notes,
            created_by: actor.to_owned(),
            created_at: now(),
        };
        sqlx::query("INSERT INTO releases (app, version, digest, size, commit_sha, notes, created_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(release.app.as_str())
            .bind(release.version.as_str())
            .bind(release.digest.as_str())
            .bind(release.size)
            .bind(&release.commit)
            .bind(&release.notes)
            .bind(&release.created_by)
            .bind(release.created_at.to_string())
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
        sqlx::query("SELECT * FROM releases WHERE app = ? AND version = ?")
            .bind(app.as_str())
            .bind(version.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a release"))?
            .map(|r| release_from(&r))
            .transpose()
    }

    async fn releases(&self, app: Option<&AppName>) -> Result<Vec<Release>> {
        sqlx::query("SELECT * FROM releases WHERE ?1 IS NULL OR app = ?1 ORDER BY created_at DESC, rowid DESC")
            .bind(app.map(AppName::as_str))
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing releases"))?
            .iter()
            .map(release_from)
            .collect()
    }

    async fn create_promotion(&self, p: NewPromotion, actor: &str) -> Result<Promotion> {
        let _w = self.write.lock().await;
        let mut tx = self.begin().await?;
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
        actor: &str,
    ) -> Result<Promotion> {
        let _w = self.write.lock().await;
        let mut tx = self.begin().await?;
        let mut events = Vec::new();
        let requested = insert_promotion(&mut tx, p, actor, &mut events).await?;
        let at = now();
        // Nothing was started or tested: the standby instance already ran this verified release.
        set_state(&mut tx, requested.id, PromotionState::Succeeded, None).await?;
        let done = promotion_in(&mut tx, requested.id).await?;
        sqlx::query("INSERT INTO gates (promotion_id, name, passed, output, started_at, finished_at) VALUES (?, 'switch', 1, ?, ?, ?)")
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
        let _w = self.write.lock().await;
        let mut tx = self.begin().await?;
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
                sqlx::query("DELETE FROM live WHERE app = ? AND env = ?")
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
        sqlx::query("SELECT * FROM promotions WHERE id = ?")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a promotion"))?
            .map(|r| promotion_from(&r))
            .transpose()
    }

    async fn promotions(&self, f: PromotionFilter) -> Result<Vec<Promotion>> {
        // Only the conditions asked for are written, so SQLite can pick the index that serves
        // them (`?1 IS NULL OR app = ?1` would scan the whole history). The states are our own
        // fixed names, written in.
        let mut sql = "SELECT * FROM promotions WHERE 1 = 1".to_owned();
        let mut binds: Vec<&str> = Vec::new();
        for (column, value) in [
            ("app", f.app.as_ref().map(AppName::as_str)),
            ("env", f.env.as_ref().map(EnvName::as_str)),
            ("version", f.version.as_ref().map(Version::as_str)),
        ] {
            if let Some(value) = value {
                sql.push_str(&format!(" AND {column} = ?"));
                binds.push(value);
            }
        }
        if !f.apps.is_empty() {
            sql.push_str(&format!(" AND app IN ({})", placeholders(f.apps.len())));
            binds.extend(f.apps.iter().map(AppName::as_str));
        }
        if !f.states.is_empty() {
            let names: Vec<String> = f
                .states
                .iter()
                .map(|s| format!("'{}'", s.as_str()))
                .collect();
            sql.push_str(&format!(" AND state IN ({})", names.join(", ")));
        }
        // `id + 0`: newest first without letting the order pick the rowid scan over the
        // index that serves the conditions.
        sql.push_str(" ORDER BY id + 0 DESC LIMIT ?");
        let mut query = sqlx::query(&sql);
        for value in binds {
            query = query.bind(value);
        }
        query
            .bind(f.limit.unwrap_or(-1))
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing promotions"))?
            .iter()
            .map(promotion_from)
            .collect()
    }

    async fn standing(&self, app: &AppName, version: &Version, env: &EnvName) -> Result<Standing> {
        let latest: Option<(String, String)> = sqlx::query_as(
            "SELECT digest, state FROM promotions WHERE app = ? AND version = ? AND env = ?
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
            "SELECT state, updated_at FROM promotions WHERE app = ? AND version = ? AND env = ?
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
        let _w = self.write.lock().await;
        let mut tx = self.begin().await?;
        let p = promotion_in(&mut tx, d.promotion_id).await?;
        let expected = match d.stage {
            Stage::Entry => PromotionState::Pending,
            Stage::Watch => PromotionState::Verifying,
        };
        if p.state != expected {
            return Err(StoreError::StateConflict {
                id: p.id,
                expected: expected.to_string(),
                actual: p.state,
            });
        }
        let at = jiff::Timestamp::now();
        let inserted = sqlx::query("INSERT INTO decisions (promotion_id, stage, actor, role, approve, comment, at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")
            .bind(p.id.0)
            .bind(d.stage.as_str())
            .bind(&d.actor)
            .bind(d.role.as_str())
            .bind(d.verdict == shipgate_core::Verdict::Approve)
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

    async fn decisions(&self, promotion_id: PromotionId, stage: Stage) -> Result<Vec<Decision>> {
        let rows = sqlx::query("SELECT actor, role, approve, comment, at FROM decisions WHERE promotion_id = ? AND stage = ? ORDER BY id")
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
                    verdict: if get::<bool>(row, "approve")? {
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
            sqlx::query_as("SELECT actor, reason, at FROM overrides WHERE promotion_id = ?")
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
        let _w = self.write.lock().await;
        let mut tx = self.begin().await?;
        let env_name = env.map(EnvName::as_str);
        let existing: Option<(String, String)> = sqlx::query_as(
            "SELECT frozen_by, reason FROM freezes WHERE env IS ? AND lifted_at IS NULL",
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
        sqlx::query("INSERT INTO freezes (env, reason, frozen_by, frozen_at) VALUES (?, ?, ?, ?)")
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
        let _w = self.write.lock().await;
        let mut tx = self.begin().await?;
        let env_name = env.map(EnvName::as_str);
        let scope = env_name.unwrap_or("every environment");
        let row: Option<(i64, String, String, String)> = sqlx::query_as(
            "SELECT id, reason, frozen_by, frozen_at FROM freezes WHERE env IS ? AND lifted_at IS NULL",
        )
        .bind(env_name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("reading freezes"))?;
        let Some((id, reason, by, since)) = row else {
            return Err(StoreError::NotFound(format!("a freeze of {scope}")));
        };
        sqlx::query("UPDATE freezes SET lifted_by = ?, lifted_at = ? WHERE id = ?")
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
        let _w = self.write.lock().await;
        let mut tx = self.begin().await?;
        let finished_at = now();
        let id: i64 = sqlx::query_scalar("INSERT INTO gates (promotion_id, name, passed, output, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id")
            .bind(g.promotion_id.0)
            .bind(&g.name)
            .bind(g.passed)
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
        let rows = sqlx::query("SELECT * FROM gates WHERE promotion_id = ? ORDER BY id")
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
                    passed: get(row, "passed")?,
                    output: get(row, "output")?,
                    started_at: get_time(row, "started_at")?,
                    finished_at: get_time(row, "finished_at")?,
                })
            })
            .collect()
    }

    async fn live(&self, app: Option<&AppName>) -> Result<Vec<LiveRelease>> {
        let query = match app {
            Some(app) => {
                sqlx::query("SELECT * FROM live WHERE app = ? ORDER BY app, env").bind(app.as_str())
            }
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
            placeholders(apps.len())
        );
        let mut query = sqlx::query(&sql);
        for app in apps {
            query = query.bind(app.as_str());
        }
        query
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading live releases"))?
            .iter()
            .map(live_from)
            .collect()
    }

    async fn put_instance(&self, i: InstanceRecord) -> Result<()> {
        let _w = self.write.lock().await;
        sqlx::query("INSERT OR REPLACE INTO instances (id, app, env, version, promotion_id, pid, port, state, log_path, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
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
            .execute(&self.pool)
            .await
            .map_err(db("recording an instance"))?;
        Ok(())
    }

    async fn mark_instance_stopped(&self, id: &InstanceId) -> Result<()> {
        let _w = self.write.lock().await;
        sqlx::query("UPDATE instances SET state = 'stopped', updated_at = ? WHERE id = ?")
            .bind(now().to_string())
            .bind(id.as_str())
            .execute(&self.pool)
            .await
            .map_err(db("recording a stopped instance"))?;
        Ok(())
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
        let _w = self.write.lock().await;
        let mut tx = self.begin().await?;
        let event = append(&mut tx, e).await?;
        self.commit(tx, vec![event.clone()]).await?;
        Ok(event)
    }

    async fn events(&self, f: EventFilter) -> Result<Vec<Event>> {
        const MATCHING: &str = "SELECT * FROM events WHERE id > ?1 AND (?2 IS NULL OR app = ?2) AND (?3 IS NULL OR env = ?3)
            AND (?5 IS NULL OR actor = ?5) AND (?6 IS NULL OR kind = ?6 OR kind LIKE ?6 || '.%')
            AND (?7 IS NULL OR id < ?7)";
        let sql = if f.newest_first {
            format!("{MATCHING} ORDER BY id DESC LIMIT ?4")
        } else {
            format!("{MATCHING} ORDER BY id LIMIT ?4")
        };
        sqlx::query(&sql)
            .bind(f.after)
            .bind(f.app)
            .bind(f.env)
            .bind(f.limit.unwrap_or(-1))
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
        let _w = self.write.lock().await;
        let mut tx = self.begin().await?;
        let taken: Option<i64> = sqlx::query_scalar("SELECT id FROM tokens WHERE name = ?")
            .bind(&t.name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("reading tokens"))?;
        if taken.is_some() {
            return Err(StoreError::TokenExists(t.name));
        }
        let created_at = now();
        let envs: Vec<&str> = t.envs.iter().map(EnvName::as_str).collect();
        let id: i64 = sqlx::query_scalar("INSERT INTO tokens (name, role, hash, created_at, envs) VALUES (?, ?, ?, ?, ?) RETURNING id")
            .bind(&t.name)
            .bind(t.role.as_str())
            .bind(&t.hash)
            .bind(created_at.to_string())
            .bind(serde_json::to_string(&envs).unwrap_or_else(|_| "[]".into()))
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
            created_at,
            revoked_at: None,
        })
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>> {
        let row = sqlx::query("SELECT id, name, role, envs, created_at, revoked_at FROM tokens WHERE hash = ? AND revoked_at IS NULL")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a token"))?;
        row.map(|row| token_from(&row)).transpose()
    }

    async fn revoked_token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>> {
        let row = sqlx::query("SELECT id, name, role, envs, created_at, revoked_at FROM tokens WHERE hash = ? AND revoked_at IS NOT NULL")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a token"))?;
        row.map(|row| token_from(&row)).transpose()
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        sqlx::query("SELECT id, name, role, envs, created_at, revoked_at FROM tokens ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing tokens"))?
            .iter()
            .map(token_from)
            .collect()
    }

    async fn revoke_token(&self, name: &str, actor: &str) -> Result<TokenRecord> {
        let _w = self.write.lock().await;
        let mut tx = self.begin().await?;
        let active: Vec<shipgate_core::Grant> = sqlx::query(
            "SELECT id, name, role, envs, created_at, revoked_at FROM tokens WHERE revoked_at IS NULL",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(db("reading tokens"))?
        .iter()
        .map(|row| token_from(row).map(|t| t.grant()))
        .collect::<Result<_>>()?;
        shipgate_core::access::may_revoke(&active, name, actor)
            .map_err(|refusal| StoreError::Conflict(refusal.to_string()))?;
        let at = now();
        let revoked =
            sqlx::query("UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL")
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
            "SELECT id, name, role, envs, created_at, revoked_at FROM tokens WHERE name = ?",
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
            "INSERT INTO hosts (name, token_hash, fingerprint, added_at, joined_at, removed_at) VALUES (?, ?, NULL, ?, NULL, NULL) \
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
        let _w = self.write.lock().await;
        let mut tx = self.begin().await?;
        let waiting: Option<String> = sqlx::query_scalar(
            "SELECT token_hash FROM hosts WHERE name = ? AND removed_at IS NULL AND joined_at IS NULL",
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
            "UPDATE hosts SET token_hash = NULL, fingerprint = ?, joined_at = ? WHERE name = ?",
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
            "SELECT {HOST_COLUMNS} FROM hosts WHERE fingerprint = ? AND removed_at IS NULL"
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
        let _w = self.write.lock().await;
        let mut tx = self.begin().await?;
        for (app, env, sample) in samples {
            sqlx::query(
                "INSERT OR REPLACE INTO traffic_samples (app, env, at_ms, seconds, requests, errors, p99_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
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
        sqlx::query("DELETE FROM traffic_samples WHERE at_ms < ?")
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
            "SELECT at_ms, seconds, requests, errors, p99_ms FROM traffic_samples WHERE app = ? AND env = ? AND at_ms >= ? ORDER BY at_ms",
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
            "UPDATE hosts SET removed_at = ?, token_hash = NULL WHERE name = ?",
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
}

impl SqliteStore {
    async fn host_write(
        &self,
        name: &str,
        check: impl FnOnce(Option<&HostRecord>) -> Result<()>,
        sql: &str,
        binds: &[Option<String>],
        event: NewEvent,
    ) -> Result<HostRecord> {
        let _w = self.write.lock().await;
        let mut tx = self.begin().await?;
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

/// Creates `path` (mode 0600) if missing and makes it and its -wal and -shm files 0600.
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// `?, ?, ?` for an `IN` list of `n` values.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn token_from(row: &SqliteRow) -> Result<TokenRecord> {
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
            .map(|e| parse("environment", e, EnvName::parse))
            .collect::<Result<_>>()?,
        created_at: get_time(row, "created_at")?,
        revoked_at: get_time_opt(row, "revoked_at")?,
    })
}
