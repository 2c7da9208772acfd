//! `shipgate store copy`: everything of one store into another, empty one (SQLite to
//! PostgreSQL, typically), in one transaction on the target, artifacts included; the audit
//! chain is verified on the target before it is called done.

use std::path::Path;

use futures_util::TryStreamExt;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::schema::Backend;
use crate::{EventFilter, Result, SqlStore, Store, StoreError, verify_chain};

#[derive(Clone, Copy)]
enum Kind {
    Text,
    Int,
    Real,
}

/// A column: its name and its kind (every value is read as optional: NULL goes across as NULL).
type Column = (&'static str, Kind);

const T: Kind = Kind::Text;
const I: Kind = Kind::Int;
const R: Kind = Kind::Real;

/// Every table, parents before children, each with its columns and the order rows are read in.
const TABLES: &[(&str, &str, &[Column])] = &[
    (
        "releases",
        "rowid",
        &[
            ("app", T),
            ("version", T),
            ("digest", T),
            ("size", I),
            ("commit_sha", T),
            ("commit_time", T),
            ("notes", T),
            ("created_by", T),
            ("created_at", T),
        ],
    ),
    (
        "promotions",
        "id",
        &[
            ("id", I),
            ("app", T),
            ("version", T),
            ("digest", T),
            ("env", T),
            ("kind", T),
            ("state", T),
            ("requested_by", T),
            ("previous_version", T),
            ("reason", T),
            ("created_at", T),
            ("updated_at", T),
        ],
    ),
    (
        "gates",
        "id",
        &[
            ("id", I),
            ("promotion_id", I),
            ("name", T),
            ("passed", I),
            ("output", T),
            ("started_at", T),
            ("finished_at", T),
        ],
    ),
    (
        "live",
        "app, env",
        &[
            ("app", T),
            ("env", T),
            ("version", T),
            ("digest", T),
            ("promotion_id", I),
            ("since", T),
        ],
    ),
    (
        "instances",
        "id",
        &[
            ("id", T),
            ("app", T),
            ("env", T),
            ("version", T),
            ("promotion_id", I),
            ("pid", I),
            ("port", I),
            ("state", T),
            ("log_path", T),
            ("updated_at", T),
        ],
    ),
    (
        "events",
        "id",
        &[
            ("id", I),
            ("at", T),
            ("actor", T),
            ("kind", T),
            ("app", T),
            ("env", T),
            ("promotion_id", I),
            ("message", T),
            ("data", T),
            ("prev_hash", T),
            ("hash", T),
        ],
    ),
    (
        "tokens",
        "id",
        &[
            ("id", I),
            ("name", T),
            ("role", T),
            ("hash", T),
            ("created_at", T),
            ("revoked_at", T),
            ("envs", T),
            ("person", T),
            ("expires_at", T),
        ],
    ),
    (
        "decisions",
        "id",
        &[
            ("id", I),
            ("promotion_id", I),
            ("stage", T),
            ("actor", T),
            ("role", T),
            ("approve", I),
            ("comment", T),
            ("at", T),
        ],
    ),
    (
        "freezes",
        "id",
        &[
            ("id", I),
            ("env", T),
            ("reason", T),
            ("frozen_by", T),
            ("frozen_at", T),
            ("lifted_by", T),
            ("lifted_at", T),
        ],
    ),
    (
        "overrides",
        "promotion_id",
        &[("promotion_id", I), ("actor", T), ("reason", T), ("at", T)],
    ),
    (
        "hosts",
        "name",
        &[
            ("name", T),
            ("token_hash", T),
            ("fingerprint", T),
            ("added_at", T),
            ("joined_at", T),
            ("removed_at", T),
        ],
    ),
    (
        "on_demand",
        "name",
        &[
            ("name", T),
            ("template", T),
            ("requester", T),
            ("port", I),
            ("state", T),
            ("ttl_secs", I),
            ("created_at", T),
            ("expires_at", T),
            ("releases", T),
            ("outcome", T),
        ],
    ),
    (
        "flag_states",
        "env",
        &[
            ("env", T),
            ("app", T),
            ("flag", T),
            ("state", T),
            ("changed_at", T),
            ("changed_by", T),
        ],
    ),
    (
        "flag_keys",
        "name",
        &[
            ("name", T),
            ("env", T),
            ("hash", T),
            ("created_at", T),
            ("created_by", T),
            ("revoked_at", T),
        ],
    ),
    (
        "flag_changes",
        "id",
        &[
            ("id", I),
            ("env", T),
            ("app", T),
            ("changes", T),
            ("requested_by", T),
            ("requested_at", T),
            ("decisions", T),
            ("status", T),
            ("closed_at", T),
        ],
    ),
    (
        "chaos_faults",
        "id",
        &[
            ("id", I),
            ("env", T),
            ("app", T),
            ("fault", T),
            ("created_by", T),
            ("created_at", T),
            ("ends_at", T),
            ("ended_at", T),
            ("ended_by", T),
        ],
    ),
    ("outbox", "event_id", &[("event_id", I)]),
    (
        "signoff_requests",
        "promotion_id",
        &[
            ("promotion_id", I),
            ("role", T),
            ("scenarios", T),
            ("requested_at", T),
            ("ended_at", T),
        ],
    ),
    (
        "backups",
        "id",
        &[
            ("id", I),
            ("app", T),
            ("env", T),
            ("state", T),
            ("reason", T),
            ("kind", T),
            ("source", T),
            ("checksum", T),
            ("size", I),
            ("duration_ms", I),
            ("counts", T),
            ("drill", T),
            ("error", T),
            ("created_at", T),
            ("finished_at", T),
            ("drilled_at", T),
            ("pruned_at", T),
        ],
    ),
    (
        "load_runs",
        "id",
        &[
            ("id", I),
            ("app", T),
            ("env", T),
            ("version", T),
            ("promotion_id", I),
            ("kind", T),
            ("fingerprint", T),
            ("verdict", T),
            ("figures", T),
            ("compared_with", I),
            ("at", T),
        ],
    ),
    ("secrets_key", "id", &[("id", T), ("created_at", T)]),
    (
        "secrets",
        "env, name, version",
        &[
            ("env", T),
            ("name", T),
            ("version", I),
            ("sealed", T),
            ("key_id", T),
            ("source", T),
            ("set_by", T),
            ("set_at", T),
        ],
    ),
    (
        "people",
        "name",
        &[("name", T), ("person", T), ("seen_at", T)],
    ),
    (
        "deployed_secrets",
        "promotion_id, var",
        &[
            ("promotion_id", I),
            ("var", T),
            ("env", T),
            ("name", T),
            ("version", I),
        ],
    ),
    (
        "signoffs",
        "id",
        &[
            ("id", I),
            ("promotion_id", I),
            ("scenario", T),
            ("person", T),
            ("token", T),
            ("pass", I),
            ("note", T),
            ("at", T),
        ],
    ),
    (
        "deliveries",
        "id",
        &[
            ("id", I),
            ("target", T),
            ("event_id", I),
            ("webhook_id", T),
            ("status", T),
            ("attempts", I),
            ("next_at", T),
            ("last_error", T),
            ("created_at", T),
            ("delivered_at", T),
        ],
    ),
    (
        "delivery_attempts",
        "delivery_id, attempt",
        &[
            ("delivery_id", I),
            ("attempt", I),
            ("at", T),
            ("status", I),
            ("error", T),
            ("took_ms", I),
        ],
    ),
    (
        "traffic_samples",
        "app, env, at_ms",
        &[
            ("app", T),
            ("env", T),
            ("at_ms", I),
            ("seconds", R),
            ("requests", I),
            ("errors", I),
            ("p99_ms", R),
        ],
    ),
];

/// Identity columns whose next value PostgreSQL must be told after rows came with their ids.
const IDENTITIES: &[(&str, &str)] = &[
    ("releases", "rowid"),
    ("promotions", "id"),
    ("gates", "id"),
    ("tokens", "id"),
    ("decisions", "id"),
    ("freezes", "id"),
    ("flag_changes", "id"),
    ("chaos_faults", "id"),
    ("deliveries", "id"),
    ("signoffs", "id"),
    ("backups", "id"),
    ("load_runs", "id"),
];

/// What a copy did.
#[derive(Debug, Default)]
pub struct CopyReport {
    /// Rows copied per table, in copy order.
    pub rows: Vec<(&'static str, u64)>,
    /// Artifacts copied, and their bytes.
    pub artifacts: u64,
    /// Bytes of those artifacts.
    pub artifact_bytes: u64,
    /// Releases whose artifact was in neither the source nor its data dir (pruned by retention).
    pub artifacts_missing: Vec<String>,
    /// Events whose chain was verified on the target.
    pub events_verified: usize,
}

fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { context, source }
}

/// Copies everything of `from` into `to`, which must be empty. `artifacts_dir` is the source's
/// `data_dir/artifacts` folder, where a SQLite store keeps its artifacts.
pub async fn copy_store(
    from: &SqlStore,
    to: &SqlStore,
    artifacts_dir: Option<&Path>,
) -> Result<CopyReport> {
    for (table, _, _) in TABLES {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(to.pool())
            .await
            .map_err(db("checking that the target is empty"))?;
        if n > 0 {
            return Err(StoreError::Conflict(format!(
                "the target is not empty: its table {table} has {n} rows; copy into a new, empty database (shipgate creates its tables)"
            )));
        }
    }
    let mut report = CopyReport::default();
    copy_artifacts(from, to, artifacts_dir, &mut report).await?;
    let mut tx = to.pool().begin().await.map_err(db("starting the copy"))?;
    for (table, order, columns) in TABLES {
        let names: Vec<&str> = columns.iter().map(|c| c.0).collect();
        let params: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
        let insert = format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            names.join(", "),
            params.join(", ")
        );
        let select = format!("SELECT {} FROM {table} ORDER BY {order}", names.join(", "));
        let mut rows = sqlx::query(&select).fetch(from.pool());
        let mut copied = 0u64;
        while let Some(row) = rows.try_next().await.map_err(db("reading the source"))? {
            bind_row(sqlx::query(&insert), &row, columns)?
                .execute(&mut *tx)
                .await
                .map_err(db("writing the target"))?;
            copied += 1;
        }
        report.rows.push((table, copied));
    }
    if to.backend() == Backend::Postgres {
        for (table, column) in IDENTITIES {
            sqlx::query(&format!(
                "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)"
            ))
            .execute(&mut *tx)
            .await
            .map_err(db("moving the target's id sequences on"))?;
        }
    }
    tx.commit().await.map_err(db("committing the copy"))?;
    let events = to
        .events(EventFilter {
            after: 0,
            ..EventFilter::default()
        })
        .await?;
    let audit = verify_chain(&events);
    if let Some(problem) = audit.problem {
        return Err(StoreError::Corrupt(format!(
            "the copied audit chain does not verify on the target: {problem}"
        )));
    }
    report.events_verified = audit.checked;
    Ok(report)
}

fn bind_row<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    row: &AnyRow,
    columns: &[Column],
) -> Result<sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>> {
    for (name, kind) in columns {
        let read = db("reading a source row");
        q = match kind {
            Kind::Text => q.bind(row.try_get::<Option<String>, _>(*name).map_err(read)?),
            Kind::Int => q.bind(row.try_get::<Option<i64>, _>(*name).map_err(read)?),
            Kind::Real => q.bind(row.try_get::<Option<f64>, _>(*name).map_err(read)?),
        };
    }
    Ok(q)
}

async fn copy_artifacts(
    from: &SqlStore,
    to: &SqlStore,
    artifacts_dir: Option<&Path>,
    report: &mut CopyReport,
) -> Result<()> {
    let digests: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT digest FROM releases ORDER BY digest")
            .fetch_all(from.pool())
            .await
            .map_err(db("reading the releases"))?;
    for digest in digests {
        let digest = shipgate_core::Digest::parse(&digest)
            .map_err(|e| StoreError::Corrupt(format!("digest `{digest}`: {e}")))?;
        let file = artifacts_dir.map(|d| d.join(format!("{}.tar", digest.hex())));
        if let Some(file) = file.filter(|f| f.exists()) {
            report.artifact_bytes += std::fs::metadata(&file).map_or(0, |m| m.len());
            to.put_artifact(&digest, &file).await?;
        } else if let Some(chunks) = from.artifact_chunks(&digest).await? {
            // From one database to another: through a temporary file, a chunk at a time.
            let io = |e: std::io::Error| StoreError::Database {
                context: "passing an artifact through a temporary file",
                source: sqlx::Error::Io(e),
            };
            let temp = tempfile::NamedTempFile::new().map_err(io)?;
            let mut file = tokio::fs::File::create(temp.path()).await.map_err(io)?;
            for seq in 0..chunks {
                let bytes = from.artifact_chunk(&digest, seq).await?;
                report.artifact_bytes += bytes.len() as u64;
                tokio::io::AsyncWriteExt::write_all(&mut file, &bytes)
                    .await
                    .map_err(io)?;
            }
            tokio::io::AsyncWriteExt::flush(&mut file)
                .await
                .map_err(io)?;
            to.put_artifact(&digest, temp.path()).await?;
        } else {
            report.artifacts_missing.push(digest.to_string());
            continue;
        }
        report.artifacts += 1;
    }
    Ok(())
}
