//! SQLite to SQLite: one read transaction on the source, a fresh file beside the target, the
//! leak check, then an atomic rename over the target.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures_util::TryStreamExt;
use shipgate_core::config::DataConfig;
use shipgate_core::mask::{MaskKey, Transformer};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteRow, SqliteSynchronous};
use sqlx::{Connection, Row, SqliteConnection, TypeInfo, ValueRef};

use crate::{ColumnLeaks, LeakReport, MaskError, Progress, RefreshReport, TableReport, db};

/// Rows between two progress reports.
const PROGRESS_EVERY: u64 = 10_000;

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> MaskError {
    let context = context.into();
    move |source| MaskError::Io { context, source }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One value as SQLite stores it.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    fn read(row: &SqliteRow, i: usize) -> Result<Value, MaskError> {
        let raw = row.try_get_raw(i).map_err(db("reading a row"))?;
        if raw.is_null() {
            return Ok(Value::Null);
        }
        let kind = raw.type_info().name().to_ascii_uppercase();
        Ok(match kind.as_str() {
            "INTEGER" => Value::Int(row.try_get(i).map_err(db("reading an integer"))?),
            "REAL" => Value::Real(row.try_get(i).map_err(db("reading a number"))?),
            "BLOB" => Value::Blob(row.try_get(i).map_err(db("reading a blob"))?),
            _ => Value::Text(row.try_get(i).map_err(db("reading a text"))?),
        })
    }

    fn as_text(&self) -> Option<String> {
        match self {
            Value::Null => None,
            Value::Int(n) => Some(n.to_string()),
            Value::Real(x) => Some(x.to_string()),
            Value::Text(s) => Some(s.clone()),
            Value::Blob(b) => Some(b.iter().map(|x| format!("{x:02x}")).collect()),
        }
    }
}

struct Table {
    name: String,
    sql: String,
    columns: Vec<String>,
    /// Columns that carry a single-column UNIQUE index (or are the primary key).
    unique: HashSet<String>,
}

async fn tables(conn: &mut SqliteConnection) -> Result<Vec<Table>, MaskError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db("reading the source's schema"))?;
    let mut out = Vec::new();
    for (name, sql) in rows {
        if sql.to_ascii_uppercase().contains("WITHOUT ROWID") {
            return Err(MaskError::Unsupported(format!(
                "table {name} is WITHOUT ROWID, which this version cannot copy"
            )));
        }
        let info = sqlx::query(&format!("PRAGMA table_info({})", quote(&name)))
            .fetch_all(&mut *conn)
            .await
            .map_err(db(format!("reading the columns of {name}")))?;
        let mut columns = Vec::new();
        let mut unique = HashSet::new();
        for row in &info {
            let column: String = row.try_get("name").map_err(db("reading a column"))?;
            let pk: i64 = row.try_get("pk").map_err(db("reading a column"))?;
            if pk == 1 {
                unique.insert(column.clone());
            }
            columns.push(column);
        }
        let indexes = sqlx::query(&format!("PRAGMA index_list({})", quote(&name)))
            .fetch_all(&mut *conn)
            .await
            .map_err(db(format!("reading the indexes of {name}")))?;
        for index in &indexes {
            let is_unique: i64 = index.try_get("unique").map_err(db("reading an index"))?;
            let index_name: String = index.try_get("name").map_err(db("reading an index"))?;
            if is_unique == 1 {
                let cols = sqlx::query(&format!("PRAGMA index_info({})", quote(&index_name)))
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(db("reading an index"))?;
                if let [only] = cols.as_slice() {
                    unique.insert(only.try_get("name").map_err(db("reading an index"))?);
                }
            }
        }
        out.push(Table {
            name,
            sql,
            columns,
            unique,
        });
    }
    Ok(out)
}

fn plan(
    tables: &[Table],
    data: &DataConfig,
) -> Result<Vec<BTreeMap<String, Transformer>>, MaskError> {
    let shape: Vec<(&str, Vec<&str>)> = tables
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                t.columns.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    crate::plan(&shape, data)
}

async fn open(path: &Path, read_only: bool) -> Result<SqliteConnection, MaskError> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(read_only)
        .create_if_missing(!read_only)
        .foreign_keys(false);
    let options = if read_only {
        options
    } else {
        options
            .journal_mode(SqliteJournalMode::Off)
            .synchronous(SqliteSynchronous::Off)
    };
    SqliteConnection::connect_with(&options)
        .await
        .map_err(db(format!("opening {}", path.display())))
}

/// A column's values permuted among its rows, deterministically under the key.
async fn shuffled(
    conn: &mut SqliteConnection,
    table: &str,
    column: &str,
    key: &MaskKey,
) -> Result<HashMap<i64, Value>, MaskError> {
    let rows = sqlx::query(&format!(
        "SELECT rowid, {} FROM {} ORDER BY rowid",
        quote(column),
        quote(table)
    ))
    .fetch_all(&mut *conn)
    .await
    .map_err(db(format!("reading {table}.{column}")))?;
    let mut pairs: Vec<(i64, Value)> = Vec::with_capacity(rows.len());
    for row in &rows {
        pairs.push((
            row.try_get(0).map_err(db("reading a rowid"))?,
            Value::read(row, 1)?,
        ));
    }
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by_key(|&i| key.hash("shuffle", &format!("{table}.{column}.{}", pairs[i].0)));
    Ok(order
        .iter()
        .enumerate()
        .map(|(k, &i)| (pairs[k].0, pairs[i].1.clone()))
        .collect())
}

fn masked(rule: &Transformer, value: &Value, key: &MaskKey) -> Value {
    let Some(text) = value.as_text() else {
        return Value::Null;
    };
    match rule.apply(key, &text) {
        None => Value::Null,
        Some(out) => match (value, rule) {
            (Value::Int(_), Transformer::Noise(_)) => {
                out.parse().map_or(Value::Text(out), Value::Int)
            }
            (Value::Real(_), Transformer::Noise(_)) => {
                out.parse().map_or(Value::Text(out), Value::Real)
            }
            _ => Value::Text(out),
        },
    }
}

fn bind<'q>(
    q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    v: Value,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    match v {
        Value::Null => q.bind(None::<String>),
        Value::Int(n) => q.bind(n),
        Value::Real(x) => q.bind(x),
        Value::Text(s) => q.bind(s),
        Value::Blob(b) => q.bind(b),
    }
}

async fn insert(
    conn: &mut SqliteConnection,
    table: &Table,
    rows: &mut Vec<Vec<Value>>,
) -> Result<(), MaskError> {
    if rows.is_empty() {
        return Ok(());
    }
    let columns: Vec<String> = std::iter::once("rowid".to_owned())
        .chain(table.columns.iter().map(|c| quote(c)))
        .collect();
    let one = format!("({})", vec!["?"; columns.len()].join(", "));
    let sql = format!(
        "INSERT INTO {} ({}) VALUES {}",
        quote(&table.name),
        columns.join(", "),
        vec![one; rows.len()].join(", ")
    );
    let mut q = sqlx::query(&sql);
    for row in rows.drain(..) {
        for v in row {
            q = bind(q, v);
        }
    }
    q.execute(&mut *conn)
        .await
        .map_err(db(format!("writing rows of {}", table.name)))?;
    Ok(())
}

/// Copies the schema and masked rows of `source` into a fresh file and swaps it in for
/// `target` once complete and leak-free. `progress` sees each table's progress.
pub async fn refresh_sqlite(
    source: &Path,
    target: &Path,
    data: &DataConfig,
    key: &MaskKey,
    mut progress: impl FnMut(Progress),
) -> Result<RefreshReport, MaskError> {
    let started = Instant::now();
    let mut src = open(source, true).await?;
    // One read transaction: every table is read from the same snapshot.
    sqlx::query("BEGIN")
        .execute(&mut src)
        .await
        .map_err(db("starting the read transaction"))?;
    let schema = tables(&mut src).await?;
    let rules = plan(&schema, data)?;

    let fresh = fresh_path(target)?;
    let mut dst = open(&fresh, false).await?;
    sqlx::query("BEGIN")
        .execute(&mut dst)
        .await
        .map_err(db("starting to write"))?;
    let mut reports = Vec::new();
    for (table, rules) in schema.iter().zip(&rules) {
        let t0 = Instant::now();
        sqlx::raw_sql(&table.sql)
            .execute(&mut dst)
            .await
            .map_err(db(format!("creating {}", table.name)))?;
        let total: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM {}", quote(&table.name)))
                .fetch_one(&mut src)
                .await
                .map_err(db(format!("counting {}", table.name)))?;
        let mut shuffles: HashMap<String, HashMap<i64, Value>> = HashMap::new();
        for (column, rule) in rules {
            if *rule == Transformer::Shuffle {
                shuffles.insert(
                    column.clone(),
                    shuffled(&mut src, &table.name, column, key).await?,
                );
            }
        }
        let mut seen: HashMap<&str, HashSet<String>> = HashMap::new();
        let batch = (30_000 / (table.columns.len() + 1)).clamp(1, 500);
        let mut pending: Vec<Vec<Value>> = Vec::with_capacity(batch);
        let mut copied = 0u64;
        let select = format!("SELECT rowid, * FROM {} ORDER BY rowid", quote(&table.name));
        let mut stream = sqlx::query(&select).fetch(&mut src);
        let mut rows_out = Vec::new();
        while let Some(row) = stream
            .try_next()
            .await
            .map_err(db(format!("reading {}", table.name)))?
        {
            let rowid: i64 = row.try_get(0).map_err(db("reading a rowid"))?;
            let mut values = vec![Value::Int(rowid)];
            for (i, column) in table.columns.iter().enumerate() {
                let value = Value::read(&row, i + 1)?;
                let out = match rules.get(column) {
                    None | Some(Transformer::Keep) => value,
                    Some(Transformer::Shuffle) => shuffles
                        .get(column)
                        .and_then(|m| m.get(&rowid))
                        .cloned()
                        .unwrap_or(Value::Null),
                    Some(rule) => {
                        let mut out = masked(rule, &value, key);
                        if table.unique.contains(column) {
                            out = unique_value(
                                rule,
                                &value,
                                out,
                                key,
                                seen.entry(column).or_default(),
                            );
                        }
                        out
                    }
                };
                values.push(out);
            }
            rows_out.push(values);
            if rows_out.len() >= batch {
                pending.append(&mut rows_out);
                copied += pending.len() as u64;
                // Reads and writes use two connections: the source stream stays open.
                insert(&mut dst, table, &mut pending).await?;
                if copied % PROGRESS_EVERY < batch as u64 {
                    progress(Progress {
                        table: table.name.clone(),
                        rows: copied,
                        total: total as u64,
                    });
                }
            }
        }
        drop(stream);
        copied += rows_out.len() as u64;
        insert(&mut dst, table, &mut rows_out).await?;
        progress(Progress {
            table: table.name.clone(),
            rows: copied,
            total: total as u64,
        });
        reports.push(TableReport {
            table: table.name.clone(),
            rows: copied,
            masked: rules
                .iter()
                .map(|(c, r)| (c.clone(), r.to_string()))
                .collect(),
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    let extras: Vec<(String,)> = sqlx::query_as(
        "SELECT sql FROM sqlite_master WHERE type IN ('index', 'trigger', 'view') AND sql IS NOT NULL ORDER BY type = 'view', rowid",
    )
    .fetch_all(&mut src)
    .await
    .map_err(db("reading indexes, triggers and views"))?;
    for (sql,) in extras {
        sqlx::raw_sql(&sql)
            .execute(&mut dst)
            .await
            .map_err(db("creating an index, trigger or view"))?;
    }
    sqlx::query("COMMIT")
        .execute(&mut dst)
        .await
        .map_err(db("committing the new data"))?;
    sqlx::query("COMMIT")
        .execute(&mut src)
        .await
        .map_err(db("ending the read transaction"))?;
    let broken: Vec<SqliteRow> = sqlx::query("PRAGMA foreign_key_check")
        .fetch_all(&mut dst)
        .await
        .map_err(db("checking foreign keys"))?;
    dst.close().await.map_err(db("closing the new data"))?;
    src.close().await.map_err(db("closing the source"))?;
    if !broken.is_empty() {
        let _ = std::fs::remove_file(&fresh);
        return Err(MaskError::Unsupported(format!(
            "{} rows of the masked data break a foreign key (mask a key and the keys that refer to it with the same rule); staging keeps its previous data",
            broken.len()
        )));
    }
    let leaks = check_sqlite(source, &fresh, data).await?;
    if leaks.leaked() > 0 {
        let _ = std::fs::remove_file(&fresh);
        return Err(MaskError::Leaked(leaks));
    }
    swap_in(&fresh, target)?;
    Ok(RefreshReport {
        tables: reports,
        leaks,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// [`crate::unique`] for a SQLite value: the first masking keeps its type unless it collides.
fn unique_value(
    rule: &Transformer,
    original: &Value,
    first: Value,
    key: &MaskKey,
    seen: &mut HashSet<String>,
) -> Value {
    let first_text = first.as_text();
    let out = crate::unique(
        rule,
        original.as_text().as_deref(),
        first_text.clone(),
        key,
        seen,
    );
    match out {
        _ if out == first_text => first,
        Some(text) => Value::Text(text),
        None => Value::Null,
    }
}

/// `.<name>.refresh-<pid>` beside the target, after removing those a killed refresh left.
fn fresh_path(target: &Path) -> Result<PathBuf, MaskError> {
    let dir = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data.db".into());
    let prefix = format!(".{name}.refresh-");
    for entry in std::fs::read_dir(dir)
        .map_err(io(format!("reading {}", dir.display())))?
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(dir.join(format!("{prefix}{}", std::process::id())))
}

/// Makes the fresh file durable, then renames it over the target (atomic on one file system).
fn swap_in(fresh: &Path, target: &Path) -> Result<(), MaskError> {
    std::fs::File::open(fresh)
        .and_then(|f| f.sync_all())
        .map_err(io("writing the new data to disk"))?;
    // A journal or WAL of the old file must not be applied to the new one.
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut side = target.as_os_str().to_owned();
        side.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(side));
    }
    std::fs::rename(fresh, target).map_err(io(format!("swapping in {}", target.display())))?;
    if let Some(dir) = target.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Compares every masked column of `target` with `source`, row by row (by rowid): how many
/// values equal their source where the rule does not allow it.
pub async fn check_sqlite(
    source: &Path,
    target: &Path,
    data: &DataConfig,
) -> Result<LeakReport, MaskError> {
    let mut conn = open(target, true).await?;
    sqlx::query("ATTACH DATABASE ? AS src")
        .bind(source.display().to_string())
        .execute(&mut conn)
        .await
        .map_err(db(format!(
            "opening {} beside the target",
            source.display()
        )))?;
    let mut report = LeakReport::default();
    for (table, rules) in &data.mask {
        for (column, rule) in rules {
            if matches!(rule, Transformer::Keep | Transformer::Shuffle) {
                continue;
            }
            let (t, c) = (quote(table), quote(column));
            let from = format!(
                "FROM main.{t} m JOIN src.{t} s ON m.rowid = s.rowid WHERE s.{c} IS NOT NULL"
            );
            let checked: i64 = sqlx::query_scalar(&format!("SELECT count(*) {from}"))
                .fetch_one(&mut conn)
                .await
                .map_err(db(format!("checking {table}.{column}")))?;
            let equal = format!("{from} AND m.{c} = s.{c}");
            // Only these rules may leave a value as it was; the others are counted in SQL.
            let leaked = if matches!(rule, Transformer::KeepFormat | Transformer::Constant(_)) {
                let values: Vec<(String,)> =
                    sqlx::query_as(&format!("SELECT CAST(s.{c} AS TEXT) {equal}"))
                        .fetch_all(&mut conn)
                        .await
                        .map_err(db(format!("checking {table}.{column}")))?;
                values
                    .iter()
                    .filter(|(v,)| !rule.may_equal_input(v))
                    .count() as i64
            } else {
                sqlx::query_scalar(&format!("SELECT count(*) {equal}"))
                    .fetch_one(&mut conn)
                    .await
                    .map_err(db(format!("checking {table}.{column}")))?
            };
            report.columns.push(ColumnLeaks {
                table: table.clone(),
                column: column.clone(),
                rule: rule.to_string(),
                checked: checked as u64,
                leaked: leaked as u64,
            });
        }
    }
    Ok(report)
}
