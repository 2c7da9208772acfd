//! Backups of an environment's data, proven by restoring them.
//!
//! - **PostgreSQL:** `pg_dump` in directory format with parallel jobs, by the tools of the
//!   server's own major version (`/usr/lib/postgresql/MAJOR/bin`). The row counts of every table
//!   are read in the very snapshot the dump takes (`pg_export_snapshot` and `--snapshot`).
//! - **SQLite:** `VACUUM INTO` a new file: a consistent copy taken through SQLite itself while
//!   the app writes (the backup API's guarantee, without holding the writer out for long); its
//!   counts are read from the copy, which is that snapshot.
//!
//! A backup is a folder; its checksum is sha256 over its files' names and contents, so a byte
//! changed anywhere is found. The drill restores it into scratch (a temporary database on the
//! same server, or a copy of the file), compares every table's rows with the counts at the
//! snapshot and runs the app's `verify` queries. Restoring into the environment itself replaces
//! its data in one transaction (SQLite) or with `pg_restore --clean --single-transaction`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shipgate_core::config::DataLocation;
use sqlx::{Connection, PgConnection, Row, SqliteConnection};

use crate::{MaskError, db};

/// The file a SQLite backup is kept in, inside its folder.
pub const SQLITE_FILE: &str = "data.sqlite";

/// What a drill found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Drill {
    /// Every table restored with the rows it had at the snapshot, every query answered.
    pub restorable: bool,
    /// Each table: rows at the snapshot, rows restored.
    pub tables: Vec<TableCount>,
    /// Each `verify` query with its first value, or its error.
    pub queries: Vec<QueryAnswer>,
    /// How long the restore and the checks took, in milliseconds.
    pub took_ms: u64,
    /// Why it is not restorable.
    pub error: Option<String>,
}

/// One table's rows, at the snapshot and restored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableCount {
    /// The table.
    pub table: String,
    /// Rows at the backup's snapshot.
    pub source: i64,
    /// Rows in the restored copy (None: the table is missing there).
    pub restored: Option<i64>,
}

/// One `verify` query's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueryAnswer {
    /// The query.
    pub query: String,
    /// Its first column of its first row, as text.
    pub answer: Option<String>,
    /// Its error, if it failed.
    pub error: Option<String>,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> MaskError {
    let context = context.into();
    move |source| MaskError::Io { context, source }
}

/// `postgres` or `sqlite`.
pub fn kind_of(location: &DataLocation) -> &'static str {
    match location {
        DataLocation::Postgres(_) => "postgres",
        DataLocation::Sqlite(_) => "sqlite",
    }
}

/// Takes a backup of `location` into the folder `into` (made here); returns the row counts
/// of every table at its snapshot.
pub async fn take(
    location: &DataLocation,
    into: &Path,
    jobs: u32,
) -> Result<BTreeMap<String, i64>, MaskError> {
    std::fs::create_dir_all(into).map_err(io(format!("making {}", into.display())))?;
    match location {
        DataLocation::Sqlite(path) => {
            let file = into.join(SQLITE_FILE);
            let mut conn = open_sqlite(path, true).await?;
            sqlx::query("VACUUM INTO $1")
                .bind(file.display().to_string())
                .execute(&mut conn)
                .await
                .map_err(db(format!("copying {}", path.display())))?;
            conn.close().await.ok();
            let mut copy = open_sqlite(&file, true).await?;
            sqlite_counts(&mut copy).await
        }
        DataLocation::Postgres(url) => {
            let mut conn = PgConnection::connect(url).await.map_err(db(format!(
                "connecting to {}",
                DataLocation::redacted_url(url)
            )))?;
            let bin = pg_bin(&mut conn).await?;
            sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .execute(&mut conn)
                .await
                .map_err(db("starting the backup's snapshot"))?;
            let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
                .fetch_one(&mut conn)
                .await
                .map_err(db("exporting the backup's snapshot"))?;
            let counts = pg_counts(&mut conn).await?;
            let dir = into.join("dump");
            let out = tokio::process::Command::new(bin.join("pg_dump"))
                .arg("--format=directory")
                .arg(format!("--jobs={jobs}"))
                .arg(format!("--snapshot={snapshot}"))
                .arg("--no-owner")
                .arg("--file")
                .arg(&dir)
                .arg("--dbname")
                .arg(url)
                .kill_on_drop(true)
                .output()
                .await
                .map_err(io("running pg_dump"))?;
            sqlx::query("COMMIT").execute(&mut conn).await.ok();
            if !out.status.success() {
                return Err(MaskError::Unsupported(format!(
                    "pg_dump failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            Ok(counts)
        }
    }
}

/// sha256 over the files of `dir` (their paths and contents, in order) and their bytes.
pub fn checksum(dir: &Path) -> Result<(String, u64), MaskError> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.sort();
    let mut all = Sha256::new();
    let mut bytes = 0;
    for rel in files {
        let mut file = std::fs::File::open(dir.join(&rel))
            .map_err(io(format!("reading {}", dir.join(&rel).display())))?;
        let mut one = Sha256::new();
        bytes += std::io::copy(&mut file, &mut one)
            .map_err(io(format!("reading {}", dir.join(&rel).display())))?;
        all.update(rel.as_bytes());
        all.update([0]);
        all.update(one.finalize());
    }
    Ok((hex::encode(all.finalize()), bytes))
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), MaskError> {
    for entry in std::fs::read_dir(dir).map_err(io(format!("listing {}", dir.display())))? {
        let entry = entry.map_err(io(format!("listing {}", dir.display())))?;
        let path = entry.path();
        if path.is_dir() {
            collect(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// Restores the backup in `dir` (taken of `location`) into scratch, compares its rows with
/// `counts` and runs `verify`. `checksum` is what it had when it was taken. Never touches the
/// environment's own data.
pub async fn drill(
    location: &DataLocation,
    dir: &Path,
    checksum_then: &str,
    counts: &BTreeMap<String, i64>,
    verify: &[String],
    jobs: u32,
    scratch_name: &str,
) -> Drill {
    let started = Instant::now();
    let mut drill = Drill {
        restorable: false,
        tables: Vec::new(),
        queries: Vec::new(),
        took_ms: 0,
        error: None,
    };
    let result = restore_to_scratch(location, dir, checksum_then, verify, jobs, scratch_name).await;
    let result = result.map(|(restored, answers)| {
        drill.tables = compare(counts, &restored);
        drill.queries = answers;
    });
    drill.took_ms = started.elapsed().as_millis() as u64;
    let mismatched: Vec<String> = drill
        .tables
        .iter()
        .filter(|t| t.restored != Some(t.source))
        .map(|t| match t.restored {
            Some(r) => format!(
                "{}: {} rows at the snapshot, {r} restored",
                t.table, t.source
            ),
            None => format!(
                "{}: {} rows at the snapshot, missing from the restore",
                t.table, t.source
            ),
        })
        .collect();
    let failed: Vec<String> = drill
        .queries
        .iter()
        .filter_map(|q| q.error.as_ref().map(|e| format!("`{}`: {e}", q.query)))
        .collect();
    drill.error = match result {
        Err(e) => Some(e.to_string()),
        Ok(()) if !mismatched.is_empty() => Some(format!("rows differ: {}", mismatched.join("; "))),
        Ok(()) if !failed.is_empty() => Some(format!("verify failed: {}", failed.join("; "))),
        Ok(()) => None,
    };
    drill.restorable = drill.error.is_none();
    drill
}

type Restored = (BTreeMap<String, i64>, Vec<QueryAnswer>);

/// The drill's restore into scratch: the rows of each table there, and the queries' answers.
async fn restore_to_scratch(
    location: &DataLocation,
    dir: &Path,
    checksum_then: &str,
    verify: &[String],
    jobs: u32,
    scratch_name: &str,
) -> Result<Restored, MaskError> {
    let (now, _) = checksum(dir)?;
    if now != checksum_then {
        return Err(MaskError::Unsupported(format!(
            "its files changed since it was taken (checksum {} then, {} now)",
            short(checksum_then),
            short(&now)
        )));
    }
    match location {
        DataLocation::Sqlite(_) => {
            let scratch = tempfile::Builder::new()
                .prefix("shipgate-drill-")
                .tempdir()
                .map_err(io("making the drill's scratch folder"))?;
            let file = scratch.path().join(SQLITE_FILE);
            std::fs::copy(dir.join(SQLITE_FILE), &file)
                .map_err(io("copying the backup into scratch"))?;
            let mut conn = open_sqlite(&file, false).await?;
            let check: String = sqlx::query_scalar("PRAGMA integrity_check")
                .fetch_one(&mut conn)
                .await
                .map_err(db("checking the restored file"))?;
            if check != "ok" {
                return Err(MaskError::Unsupported(format!(
                    "the restored file fails SQLite's integrity check: {check}"
                )));
            }
            let restored = sqlite_counts(&mut conn).await?;
            let mut answers = Vec::new();
            for q in verify {
                answers.push(answer_sqlite(&mut conn, q).await);
            }
            Ok((restored, answers))
        }
        DataLocation::Postgres(url) => {
            let (server, _) = url.rsplit_once('/').ok_or_else(|| {
                MaskError::Unsupported("the database URL names no database".into())
            })?;
            let scratch = format!("{server}/{scratch_name}");
            crate::drop_database(&scratch).await?;
            crate::create_database(&scratch).await?;
            let restored = restore_pg_scratch(&scratch, dir, verify, jobs).await;
            let dropped = crate::drop_database(&scratch).await;
            let restored = restored?;
            dropped?;
            Ok(restored)
        }
    }
}

async fn restore_pg_scratch(
    scratch: &str,
    dir: &Path,
    verify: &[String],
    jobs: u32,
) -> Result<Restored, MaskError> {
    let mut conn = PgConnection::connect(scratch)
        .await
        .map_err(db("connecting to the drill's scratch database"))?;
    let bin = pg_bin(&mut conn).await?;
    pg_restore(&bin, &dir.join("dump"), scratch, jobs, false).await?;
    let restored = pg_counts(&mut conn).await?;
    let mut answers = Vec::new();
    for q in verify {
        answers.push(answer_pg(&mut conn, q).await);
    }
    conn.close().await.ok();
    Ok((restored, answers))
}

/// Replaces the data of `location` with the backup in `dir`: in one transaction, so a failure
/// or a kill leaves it as it was.
pub async fn restore(location: &DataLocation, dir: &Path, jobs: u32) -> Result<(), MaskError> {
    match location {
        DataLocation::Sqlite(path) => {
            let mut conn = open_sqlite(path, false).await?;
            let backup = dir.join(SQLITE_FILE);
            sqlx::query("ATTACH DATABASE $1 AS backup")
                .bind(backup.display().to_string())
                .execute(&mut conn)
                .await
                .map_err(db("opening the backup"))?;
            let mut tx = conn.begin().await.map_err(db("starting the restore"))?;
            let live: Vec<(String, String)> = sqlx::query_as(
                "SELECT type, name FROM main.sqlite_master WHERE name NOT LIKE 'sqlite_%' AND type IN ('table', 'view', 'trigger')",
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(db("reading the live schema"))?;
            // Views and triggers first, then the tables they name.
            for table_pass in [false, true] {
                for (kind, name) in &live {
                    if (kind == "table") != table_pass {
                        continue;
                    }
                    sqlx::raw_sql(&format!(
                        "DROP {} IF EXISTS main.{}",
                        kind.to_uppercase(),
                        quote(name)
                    ))
                    .execute(&mut *tx)
                    .await
                    .map_err(db(format!("dropping {name}")))?;
                }
            }
            let wanted: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT type, name, sql FROM backup.sqlite_master WHERE name NOT LIKE 'sqlite_%' AND sql IS NOT NULL ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 ELSE 2 END",
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(db("reading the backup's schema"))?;
            for (kind, name, sql) in &wanted {
                sqlx::raw_sql(sql)
                    .execute(&mut *tx)
                    .await
                    .map_err(db(format!("creating {name}")))?;
                if kind == "table" {
                    sqlx::raw_sql(&format!(
                        "INSERT INTO main.{0} SELECT * FROM backup.{0}",
                        quote(name)
                    ))
                    .execute(&mut *tx)
                    .await
                    .map_err(db(format!("restoring the rows of {name}")))?;
                }
            }
            tx.commit().await.map_err(db("committing the restore"))?;
            Ok(())
        }
        DataLocation::Postgres(url) => {
            let mut conn = PgConnection::connect(url).await.map_err(db(format!(
                "connecting to {}",
                DataLocation::redacted_url(url)
            )))?;
            let bin = pg_bin(&mut conn).await?;
            conn.close().await.ok();
            pg_restore(&bin, &dir.join("dump"), url, jobs, true).await
        }
    }
}

async fn pg_restore(
    bin: &Path,
    dump: &Path,
    url: &str,
    jobs: u32,
    replace: bool,
) -> Result<(), MaskError> {
    let mut cmd = tokio::process::Command::new(bin.join("pg_restore"));
    cmd.arg("--no-owner").arg("--exit-on-error");
    if replace {
        // One transaction: the live data is replaced whole or not at all.
        cmd.arg("--clean")
            .arg("--if-exists")
            .arg("--single-transaction");
    } else {
        cmd.arg(format!("--jobs={jobs}"));
    }
    let out = cmd
        .arg("--dbname")
        .arg(url)
        .arg(dump)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(io("running pg_restore"))?;
    if !out.status.success() {
        return Err(MaskError::Unsupported(format!(
            "pg_restore failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The folder of the server's own major version's client tools, else the ones on PATH.
async fn pg_bin(conn: &mut PgConnection) -> Result<PathBuf, MaskError> {
    let version: String = sqlx::query_scalar("SHOW server_version_num")
        .fetch_one(&mut *conn)
        .await
        .map_err(db("reading the server's version"))?;
    let major = version.parse::<u32>().unwrap_or(0) / 10_000;
    let own = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    if own.join("pg_dump").exists() {
        return Ok(own);
    }
    Ok(PathBuf::new())
}

async fn pg_counts(conn: &mut PgConnection) -> Result<BTreeMap<String, i64>, MaskError> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
         AND n.nspname NOT LIKE 'pg_toast%' AND NOT c.relispartition ORDER BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db("listing tables"))?;
    let mut counts = BTreeMap::new();
    for (schema, table) in tables {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {}.{}",
            pg_ident(&schema),
            pg_ident(&table)
        ))
        .fetch_one(&mut *conn)
        .await
        .map_err(db(format!("counting {schema}.{table}")))?;
        let name = if schema == "public" {
            table
        } else {
            format!("{schema}.{table}")
        };
        counts.insert(name, n);
    }
    Ok(counts)
}

async fn sqlite_counts(conn: &mut SqliteConnection) -> Result<BTreeMap<String, i64>, MaskError> {
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db("listing tables"))?;
    let mut counts = BTreeMap::new();
    for (table,) in tables {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", quote(&table)))
            .fetch_one(&mut *conn)
            .await
            .map_err(db(format!("counting {table}")))?;
        counts.insert(table, n);
    }
    Ok(counts)
}

fn compare(then: &BTreeMap<String, i64>, restored: &BTreeMap<String, i64>) -> Vec<TableCount> {
    then.iter()
        .map(|(table, source)| TableCount {
            table: table.clone(),
            source: *source,
            restored: restored.get(table).copied(),
        })
        .collect()
}

async fn answer_sqlite(conn: &mut SqliteConnection, q: &str) -> QueryAnswer {
    let row = sqlx::query(q).fetch_optional(&mut *conn).await;
    answered(q, row.map(|r| r.and_then(|r| first_value(&r))))
}

async fn answer_pg(conn: &mut PgConnection, q: &str) -> QueryAnswer {
    let row = sqlx::query(q).fetch_optional(&mut *conn).await;
    answered(q, row.map(|r| r.and_then(|r| pg_first_value(&r))))
}

fn answered(query: &str, value: Result<Option<String>, sqlx::Error>) -> QueryAnswer {
    let (answer, error) = match value {
        Ok(answer) => (answer, None),
        Err(e) => (None, Some(e.to_string())),
    };
    QueryAnswer {
        query: query.to_owned(),
        answer,
        error,
    }
}

fn pg_first_value(row: &sqlx::postgres::PgRow) -> Option<String> {
    if let Ok(v) = row.try_get::<i64, _>(0) {
        return Some(v.to_string());
    }
    if let Ok(v) = row.try_get::<i32, _>(0) {
        return Some(v.to_string());
    }
    if let Ok(v) = row.try_get::<f64, _>(0) {
        return Some(v.to_string());
    }
    if let Ok(v) = row.try_get::<bool, _>(0) {
        return Some(v.to_string());
    }
    row.try_get::<String, _>(0).ok()
}

fn first_value(row: &sqlx::sqlite::SqliteRow) -> Option<String> {
    if let Ok(v) = row.try_get::<i64, _>(0) {
        return Some(v.to_string());
    }
    if let Ok(v) = row.try_get::<f64, _>(0) {
        return Some(v.to_string());
    }
    row.try_get::<String, _>(0).ok()
}

async fn open_sqlite(path: &Path, read_only: bool) -> Result<SqliteConnection, MaskError> {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(read_only)
        .foreign_keys(false)
        .busy_timeout(std::time::Duration::from_secs(10));
    SqliteConnection::connect_with(&options)
        .await
        .map_err(db(format!("opening {}", path.display())))
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn pg_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn short(checksum: &str) -> &str {
    checksum.get(..12).unwrap_or(checksum)
}
