//! The schema of both backends and how a pool is opened on each. The queries in `sql.rs` are
//! written once for both: `$N` parameters, `ON CONFLICT`, `RETURNING`, `IS NOT DISTINCT FROM`,
//! integers for booleans, text for times.

use std::path::Path;
use std::time::Duration;

use shipgate_core::config::DataLocation;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

use crate::{Result, StoreError};

/// Which database a store writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One file, one server.
    Sqlite,
    /// Shared by several servers; artifacts live in it too.
    Postgres,
}

impl Backend {
    /// The database's own clock in Unix milliseconds, as SQL: leases are judged by it, so that
    /// servers whose clocks disagree still agree on when a lease ends.
    pub(crate) fn now_ms(self) -> &'static str {
        match self {
            Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
            Backend::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }

    /// Taken first in every writing transaction: writers go one at a time, so the event chain
    /// has one tail. SQLite's first write takes its file lock anyway; on PostgreSQL, where
    /// other servers write too, a transaction-scoped advisory lock does it (released at commit
    /// or rollback, so a dropped connection cannot leave it held).
    pub(crate) fn serialise_writers(self) -> Option<&'static str> {
        match self {
            Backend::Sqlite => None,
            Backend::Postgres => Some("SELECT pg_advisory_xact_lock(7395470211)"),
        }
    }

    pub(crate) fn migrations(self) -> &'static [&'static str] {
        match self {
            Backend::Sqlite => SQLITE,
            Backend::Postgres => POSTGRES,
        }
    }
}

/// How long a PostgreSQL session of the store may sit idle inside a transaction (none of its
/// transactions waits between statements).
const IDLE_IN_TRANSACTION: &str = "SET idle_in_transaction_session_timeout = '10s'";

fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { context, source }
}

/// Opens a pool on `location` and applies pending migrations.
pub(crate) async fn open(location: &DataLocation) -> Result<(AnyPool, Backend)> {
    sqlx::any::install_default_drivers();
    let (pool, backend) = match location {
        DataLocation::Sqlite(path) => (open_sqlite(path).await?, Backend::Sqlite),
        DataLocation::Postgres(url) => (
            AnyPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                // A server stopped (SIGSTOP, a frozen VM) inside a transaction would hold the
                // writers' lock and the lease row for ever, and no standby could take over:
                // PostgreSQL ends such a session, and its transaction, after this long.
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        sqlx::query(IDLE_IN_TRANSACTION)
                            .execute(conn)
                            .await
                            .map(|_| ())
                    })
                })
                .connect(url)
                .await
                .map_err(db("connecting to PostgreSQL"))?,
            Backend::Postgres,
        ),
    };
    migrate(&pool, backend).await?;
    Ok((pool, backend))
}

async fn open_sqlite(path: &Path) -> Result<AnyPool> {
    // SQLite gives its -wal and -shm files the mode of the database file: make that 0600
    // before the first connection, so no other local user can read tokens' neighbours.
    private_file(path).map_err(|e| StoreError::Database {
        context: "making the database file private",
        source: sqlx::Error::Io(e),
    })?;
    // `%`, `?` and `#` would end the path in the URL.
    let escaped = path
        .to_string_lossy()
        .replace('%', "%25")
        .replace('?', "%3F")
        .replace('#', "%23");
    AnyPoolOptions::new()
        .max_connections(4)
        .after_connect(|conn, _| {
            Box::pin(async move {
                use sqlx::Executor;
                conn.execute(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                     PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                )
                .await?;
                Ok(())
            })
        })
        .connect(&format!("sqlite://{escaped}?mode=rwc"))
        .await
        .map_err(db("opening the database"))
}

async fn migrate(pool: &AnyPool, backend: Backend) -> Result<()> {
    sqlx::raw_sql("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at TEXT NOT NULL)")
        .execute(pool)
        .await
        .map_err(db("creating the migrations table"))?;
    // Two servers starting at once on one PostgreSQL would both apply the same migration.
    let mut tx = pool.begin().await.map_err(db("starting a migration"))?;
    if let Some(lock) = backend.serialise_writers() {
        sqlx::query(lock)
            .execute(&mut *tx)
            .await
            .map_err(db("waiting for other servers' migrations"))?;
    }
    let applied: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            .fetch_one(&mut *tx)
            .await
            .map_err(db("reading the schema version"))?;
    let migrations = backend.migrations();
    if applied as usize > migrations.len() {
        return Err(StoreError::Corrupt(format!(
            "the database has schema version {applied}, newer than this shipgate knows ({}); run the newer shipgate, or restore a backup",
            migrations.len()
        )));
    }
    for (i, sql) in migrations.iter().enumerate().skip(applied as usize) {
        sqlx::raw_sql(sql)
            .execute(&mut *tx)
            .await
            .map_err(db("applying a migration"))?;
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(i as i64 + 1)
            .bind(jiff::Timestamp::now().to_string())
            .execute(&mut *tx)
            .await
            .map_err(db("recording a migration"))?;
    }
    tx.commit().await.map_err(db("committing a migration"))
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

/// SQLite's schema changes, applied in order at start; never edit one that has shipped, add
/// another (here and in [`POSTGRES`]).
/// A migration that adds a column must come with the queries of that table naming their columns:
/// sqlx-sqlite panics when a cached `SELECT *` meets a table whose column count changed.
pub(crate) const SQLITE: &[&str] = &[
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
    r#"
CREATE TABLE leases (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, address TEXT NOT NULL, epoch INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL, since TEXT NOT NULL
);
CREATE TABLE artifact_chunks (
    digest TEXT NOT NULL, seq INTEGER NOT NULL, bytes BLOB NOT NULL, PRIMARY KEY (digest, seq)
);
CREATE TABLE artifacts (digest TEXT PRIMARY KEY, size INTEGER NOT NULL, chunks INTEGER NOT NULL);
CREATE TABLE shared_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"#,
    r#"
CREATE TABLE on_demand (
    name TEXT PRIMARY KEY, template TEXT NOT NULL, requester TEXT NOT NULL,
    port INTEGER NOT NULL UNIQUE, state TEXT NOT NULL, ttl_secs INTEGER NOT NULL,
    created_at TEXT NOT NULL, expires_at TEXT NOT NULL, releases TEXT NOT NULL, outcome TEXT
);
"#,
    r#"
ALTER TABLE releases ADD COLUMN commit_time TEXT;
CREATE INDEX promotions_updated ON promotions (updated_at);
CREATE TABLE flag_states (
    env TEXT NOT NULL, app TEXT NOT NULL, flag TEXT NOT NULL, state TEXT NOT NULL,
    changed_at TEXT NOT NULL, changed_by TEXT NOT NULL, PRIMARY KEY (env, app, flag)
);
CREATE TABLE flag_keys (
    name TEXT PRIMARY KEY, env TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL, created_by TEXT NOT NULL, revoked_at TEXT
);
CREATE TABLE flag_changes (
    id INTEGER PRIMARY KEY, env TEXT NOT NULL, app TEXT NOT NULL, changes TEXT NOT NULL,
    requested_by TEXT NOT NULL, requested_at TEXT NOT NULL, decisions TEXT NOT NULL,
    status TEXT NOT NULL, closed_at TEXT
);
CREATE TABLE chaos_faults (
    id INTEGER PRIMARY KEY, env TEXT NOT NULL, app TEXT NOT NULL, fault TEXT NOT NULL,
    created_by TEXT NOT NULL, created_at TEXT NOT NULL, ends_at TEXT NOT NULL,
    ended_at TEXT, ended_by TEXT
);
CREATE TABLE outbox (event_id INTEGER PRIMARY KEY);
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY, target TEXT NOT NULL, event_id INTEGER NOT NULL, webhook_id TEXT NOT NULL,
    status TEXT NOT NULL, attempts INTEGER NOT NULL, next_at TEXT NOT NULL, last_error TEXT,
    created_at TEXT NOT NULL, delivered_at TEXT, UNIQUE (target, event_id)
);
CREATE INDEX deliveries_due ON deliveries (status, next_at);
CREATE TABLE delivery_attempts (
    delivery_id INTEGER NOT NULL, attempt INTEGER NOT NULL, at TEXT NOT NULL, status INTEGER, error TEXT,
    took_ms INTEGER NOT NULL, PRIMARY KEY (delivery_id, attempt)
);
"#,
    r#"
ALTER TABLE tokens ADD COLUMN person TEXT;
"#,
    r#"
CREATE TABLE signoff_requests (
    promotion_id INTEGER PRIMARY KEY REFERENCES promotions (id), role TEXT NOT NULL,
    scenarios TEXT NOT NULL, requested_at TEXT NOT NULL, ended_at TEXT
);
CREATE TABLE signoffs (
    id INTEGER PRIMARY KEY, promotion_id INTEGER NOT NULL REFERENCES signoff_requests (promotion_id),
    scenario TEXT NOT NULL, person TEXT NOT NULL, token TEXT NOT NULL, pass INTEGER NOT NULL,
    note TEXT, at TEXT NOT NULL, UNIQUE (promotion_id, scenario, person)
);
"#,
    r#"
CREATE TABLE backups (
    id INTEGER PRIMARY KEY, app TEXT NOT NULL, env TEXT NOT NULL, state TEXT NOT NULL,
    reason TEXT NOT NULL, kind TEXT NOT NULL, source TEXT NOT NULL, checksum TEXT, size INTEGER,
    duration_ms INTEGER, counts TEXT NOT NULL, drill TEXT, error TEXT, created_at TEXT NOT NULL,
    finished_at TEXT, drilled_at TEXT, pruned_at TEXT
);
CREATE INDEX backups_app_env ON backups (app, env, id);
"#,
    r#"
CREATE TABLE load_runs (
    id INTEGER PRIMARY KEY, app TEXT NOT NULL, env TEXT NOT NULL, version TEXT NOT NULL,
    promotion_id INTEGER, kind TEXT NOT NULL, fingerprint TEXT NOT NULL, verdict TEXT NOT NULL,
    figures TEXT NOT NULL, compared_with INTEGER, at TEXT NOT NULL
);
CREATE INDEX load_runs_app_env ON load_runs (app, env, id);
"#,
    r#"
CREATE TABLE secrets_key (id TEXT PRIMARY KEY, created_at TEXT NOT NULL);
CREATE TABLE secrets (
    env TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, sealed TEXT, key_id TEXT NOT NULL,
    source TEXT NOT NULL, set_by TEXT NOT NULL, set_at TEXT NOT NULL, PRIMARY KEY (env, name, version)
);
CREATE TABLE deployed_secrets (
    promotion_id INTEGER NOT NULL, var TEXT NOT NULL, env TEXT NOT NULL, name TEXT NOT NULL,
    version INTEGER NOT NULL, PRIMARY KEY (promotion_id, var)
);
CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY, kind TEXT NOT NULL, token_hash TEXT, grant_json TEXT NOT NULL,
    email TEXT, sealed_refresh TEXT, idp_expires_at TEXT, csrf TEXT NOT NULL,
    created_at TEXT NOT NULL, expires_at TEXT NOT NULL
);
CREATE TABLE sign_ins (state_hash TEXT PRIMARY KEY, payload TEXT NOT NULL, expires_at TEXT NOT NULL);
CREATE TABLE people (name TEXT PRIMARY KEY, person TEXT NOT NULL, seen_at TEXT NOT NULL);
ALTER TABLE tokens ADD COLUMN expires_at TEXT;
"#,
];

/// PostgreSQL's schema: its first migration is SQLite's first seven at once. Integers are
/// BIGINT (what the store binds), ids are identities that `store copy` may set, and `releases`
/// has a `rowid` like SQLite's, which orders releases registered within one clock tick.
pub(crate) const POSTGRES: &[&str] = &[
    r#"
CREATE TABLE releases (
    app TEXT NOT NULL, version TEXT NOT NULL, digest TEXT NOT NULL, size BIGINT NOT NULL,
    commit_sha TEXT, notes TEXT, created_by TEXT NOT NULL, created_at TEXT NOT NULL,
    rowid BIGINT GENERATED BY DEFAULT AS IDENTITY,
    PRIMARY KEY (app, version)
);
CREATE TABLE promotions (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, app TEXT NOT NULL,
    version TEXT NOT NULL, digest TEXT NOT NULL, env TEXT NOT NULL, kind TEXT NOT NULL,
    state TEXT NOT NULL, requested_by TEXT NOT NULL, previous_version TEXT, reason TEXT,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    FOREIGN KEY (app, version) REFERENCES releases (app, version)
);
CREATE INDEX promotions_app_env ON promotions (app, env, id);
CREATE INDEX promotions_state ON promotions (state);
CREATE INDEX promotions_app_version ON promotions (app, version, id);
CREATE TABLE gates (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    promotion_id BIGINT NOT NULL REFERENCES promotions (id),
    name TEXT NOT NULL, passed BIGINT NOT NULL, output TEXT NOT NULL,
    started_at TEXT NOT NULL, finished_at TEXT NOT NULL
);
CREATE INDEX gates_promotion ON gates (promotion_id);
CREATE TABLE live (
    app TEXT NOT NULL, env TEXT NOT NULL, version TEXT NOT NULL, digest TEXT NOT NULL,
    promotion_id BIGINT NOT NULL REFERENCES promotions (id), since TEXT NOT NULL,
    PRIMARY KEY (app, env)
);
CREATE TABLE instances (
    id TEXT PRIMARY KEY, app TEXT NOT NULL, env TEXT NOT NULL, version TEXT NOT NULL,
    promotion_id BIGINT NOT NULL, pid BIGINT, port BIGINT, state TEXT NOT NULL,
    log_path TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE TABLE events (
    id BIGINT PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, kind TEXT NOT NULL,
    app TEXT, env TEXT, promotion_id BIGINT, message TEXT NOT NULL, data TEXT NOT NULL,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL
);
CREATE INDEX events_app_env ON events (app, env);
CREATE INDEX events_actor ON events (actor, id);
CREATE INDEX events_kind ON events (kind, id);
CREATE FUNCTION shipgate_events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'the event log is append-only'; END $$;
CREATE TRIGGER events_are_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION shipgate_events_are_append_only();
CREATE TRIGGER events_are_not_truncated BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION shipgate_events_are_append_only();
CREATE TABLE tokens (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL, revoked_at TEXT,
    envs TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE decisions (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    promotion_id BIGINT NOT NULL REFERENCES promotions (id),
    stage TEXT NOT NULL, actor TEXT NOT NULL, role TEXT NOT NULL, approve BIGINT NOT NULL,
    comment TEXT, at TEXT NOT NULL, UNIQUE (promotion_id, stage, actor)
);
CREATE TABLE freezes (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, env TEXT, reason TEXT NOT NULL,
    frozen_by TEXT NOT NULL, frozen_at TEXT NOT NULL, lifted_by TEXT, lifted_at TEXT
);
CREATE TABLE overrides (
    promotion_id BIGINT PRIMARY KEY REFERENCES promotions (id), actor TEXT NOT NULL,
    reason TEXT NOT NULL, at TEXT NOT NULL
);
CREATE TABLE hosts (
    name TEXT PRIMARY KEY, token_hash TEXT, fingerprint TEXT UNIQUE, added_at TEXT NOT NULL,
    joined_at TEXT, removed_at TEXT
);
CREATE TABLE traffic_samples (
    app TEXT NOT NULL, env TEXT NOT NULL, at_ms BIGINT NOT NULL, seconds DOUBLE PRECISION NOT NULL,
    requests BIGINT NOT NULL, errors BIGINT NOT NULL, p99_ms DOUBLE PRECISION,
    PRIMARY KEY (app, env, at_ms)
);
CREATE INDEX traffic_samples_at ON traffic_samples (at_ms);
CREATE TABLE leases (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, address TEXT NOT NULL, epoch BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL, since TEXT NOT NULL
);
CREATE TABLE artifact_chunks (
    digest TEXT NOT NULL, seq BIGINT NOT NULL, bytes BYTEA NOT NULL, PRIMARY KEY (digest, seq)
);
CREATE TABLE artifacts (digest TEXT PRIMARY KEY, size BIGINT NOT NULL, chunks BIGINT NOT NULL);
CREATE TABLE shared_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"#,
    r#"
CREATE TABLE on_demand (
    name TEXT PRIMARY KEY, template TEXT NOT NULL, requester TEXT NOT NULL,
    port BIGINT NOT NULL UNIQUE, state TEXT NOT NULL, ttl_secs BIGINT NOT NULL,
    created_at TEXT NOT NULL, expires_at TEXT NOT NULL, releases TEXT NOT NULL, outcome TEXT
);
"#,
    r#"
ALTER TABLE releases ADD COLUMN commit_time TEXT;
CREATE INDEX promotions_updated ON promotions (updated_at);
CREATE TABLE flag_states (
    env TEXT NOT NULL, app TEXT NOT NULL, flag TEXT NOT NULL, state TEXT NOT NULL,
    changed_at TEXT NOT NULL, changed_by TEXT NOT NULL, PRIMARY KEY (env, app, flag)
);
CREATE TABLE flag_keys (
    name TEXT PRIMARY KEY, env TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL, created_by TEXT NOT NULL, revoked_at TEXT
);
CREATE TABLE flag_changes (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, env TEXT NOT NULL, app TEXT NOT NULL, changes TEXT NOT NULL,
    requested_by TEXT NOT NULL, requested_at TEXT NOT NULL, decisions TEXT NOT NULL,
    status TEXT NOT NULL, closed_at TEXT
);
CREATE TABLE chaos_faults (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, env TEXT NOT NULL, app TEXT NOT NULL, fault TEXT NOT NULL,
    created_by TEXT NOT NULL, created_at TEXT NOT NULL, ends_at TEXT NOT NULL,
    ended_at TEXT, ended_by TEXT
);
CREATE TABLE outbox (event_id BIGINT PRIMARY KEY);
CREATE TABLE deliveries (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, target TEXT NOT NULL, event_id BIGINT NOT NULL, webhook_id TEXT NOT NULL,
    status TEXT NOT NULL, attempts BIGINT NOT NULL, next_at TEXT NOT NULL, last_error TEXT,
    created_at TEXT NOT NULL, delivered_at TEXT, UNIQUE (target, event_id)
);
CREATE INDEX deliveries_due ON deliveries (status, next_at);
CREATE TABLE delivery_attempts (
    delivery_id BIGINT NOT NULL, attempt BIGINT NOT NULL, at TEXT NOT NULL, status BIGINT, error TEXT,
    took_ms BIGINT NOT NULL, PRIMARY KEY (delivery_id, attempt)
);
"#,
    r#"
ALTER TABLE tokens ADD COLUMN person TEXT;
"#,
    r#"
CREATE TABLE signoff_requests (
    promotion_id BIGINT PRIMARY KEY REFERENCES promotions (id), role TEXT NOT NULL,
    scenarios TEXT NOT NULL, requested_at TEXT NOT NULL, ended_at TEXT
);
CREATE TABLE signoffs (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    promotion_id BIGINT NOT NULL REFERENCES signoff_requests (promotion_id),
    scenario TEXT NOT NULL, person TEXT NOT NULL, token TEXT NOT NULL, pass BIGINT NOT NULL,
    note TEXT, at TEXT NOT NULL, UNIQUE (promotion_id, scenario, person)
);
"#,
    r#"
CREATE TABLE backups (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, app TEXT NOT NULL, env TEXT NOT NULL,
    state TEXT NOT NULL, reason TEXT NOT NULL, kind TEXT NOT NULL, source TEXT NOT NULL,
    checksum TEXT, size BIGINT, duration_ms BIGINT, counts TEXT NOT NULL, drill TEXT, error TEXT,
    created_at TEXT NOT NULL, finished_at TEXT, drilled_at TEXT, pruned_at TEXT
);
CREATE INDEX backups_app_env ON backups (app, env, id);
"#,
    r#"
CREATE TABLE load_runs (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, app TEXT NOT NULL, env TEXT NOT NULL,
    version TEXT NOT NULL, promotion_id BIGINT, kind TEXT NOT NULL, fingerprint TEXT NOT NULL,
    verdict TEXT NOT NULL, figures TEXT NOT NULL, compared_with BIGINT, at TEXT NOT NULL
);
CREATE INDEX load_runs_app_env ON load_runs (app, env, id);
"#,
    r#"
CREATE TABLE secrets_key (id TEXT PRIMARY KEY, created_at TEXT NOT NULL);
CREATE TABLE secrets (
    env TEXT NOT NULL, name TEXT NOT NULL, version BIGINT NOT NULL, sealed TEXT, key_id TEXT NOT NULL,
    source TEXT NOT NULL, set_by TEXT NOT NULL, set_at TEXT NOT NULL, PRIMARY KEY (env, name, version)
);
CREATE TABLE deployed_secrets (
    promotion_id BIGINT NOT NULL, var TEXT NOT NULL, env TEXT NOT NULL, name TEXT NOT NULL,
    version BIGINT NOT NULL, PRIMARY KEY (promotion_id, var)
);
CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY, kind TEXT NOT NULL, token_hash TEXT, grant_json TEXT NOT NULL,
    email TEXT, sealed_refresh TEXT, idp_expires_at TEXT, csrf TEXT NOT NULL,
    created_at TEXT NOT NULL, expires_at TEXT NOT NULL
);
CREATE TABLE sign_ins (state_hash TEXT PRIMARY KEY, payload TEXT NOT NULL, expires_at TEXT NOT NULL);
CREATE TABLE people (name TEXT PRIMARY KEY, person TEXT NOT NULL, seen_at TEXT NOT NULL);
ALTER TABLE tokens ADD COLUMN expires_at TEXT;
"#,
];
