//! PostgreSQL to PostgreSQL: the source read in one repeatable-read, read-only transaction,
//! rows streamed through `COPY ... TO STDOUT` and `COPY ... FROM STDIN` into a fresh schema of
//! the target, constraints and indexes added once the data is in, the leak check, then one
//! transaction swaps the fresh schema in for `public`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use shipgate_core::config::DataConfig;
use shipgate_core::mask::{MaskKey, Transformer};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};

use crate::{ColumnLeaks, LeakReport, MaskError, Progress, RefreshReport, TableReport, db};

/// The schema a refresh fills before it becomes `public`.
const FRESH: &str = "shipgate_refresh";
/// Bytes gathered before they are sent to the target.
const SEND_EVERY: usize = 1 << 20;
/// Rows between two progress reports.
const PROGRESS_EVERY: u64 = 50_000;

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

struct PgTable {
    name: String,
    /// Name, SQL type, NOT NULL.
    columns: Vec<(String, String, bool)>,
    primary_key: Vec<String>,
    unique: HashSet<String>,
    /// `ALTER TABLE ... ADD` clauses of primary keys, unique and check constraints.
    constraints: Vec<String>,
    /// The same of foreign keys, added once every table has its keys.
    foreign: Vec<String>,
    /// Indexes that back no constraint.
    indexes: Vec<String>,
}

async fn connect(url: &str) -> Result<PgConnection, MaskError> {
    PgConnection::connect(url)
        .await
        .map_err(db(format!("connecting to {}", redact(url))))
}

fn redact(url: &str) -> String {
    shipgate_core::config::DataLocation::redacted_url(url)
}

async fn tables(conn: &mut PgConnection) -> Result<Vec<PgTable>, MaskError> {
    let names: Vec<(String,)> = sqlx::query_as(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db("reading the source's tables"))?;
    let mut out = Vec::new();
    for (name,) in names {
        let regclass = format!("public.{}", ident(&name));
        let columns: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull FROM pg_attribute a
             WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        )
        .bind(&regclass)
        .fetch_all(&mut *conn)
        .await
        .map_err(db(format!("reading the columns of {name}")))?;
        let keys = sqlx::query(
            "SELECT i.indisprimary, i.indisunique, i.indnatts, a.attname::text FROM pg_index i
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
             WHERE i.indrelid = $1::regclass ORDER BY array_position(i.indkey, a.attnum)",
        )
        .bind(&regclass)
        .fetch_all(&mut *conn)
        .await
        .map_err(db(format!("reading the keys of {name}")))?;
        let mut primary_key = Vec::new();
        let mut unique = HashSet::new();
        for k in &keys {
            let column: String = k.get(3);
            if k.get::<bool, _>(0) {
                primary_key.push(column.clone());
            }
            if k.get::<bool, _>(1) && k.get::<i16, _>(2) == 1 {
                unique.insert(column);
            }
        }
        let constraints: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT conname::text, pg_get_constraintdef(oid), contype = 'f' FROM pg_constraint WHERE conrelid = $1::regclass
             ORDER BY CASE contype WHEN 'p' THEN 0 WHEN 'u' THEN 1 WHEN 'c' THEN 2 ELSE 3 END, conname",
        )
        .bind(&regclass)
        .fetch_all(&mut *conn)
        .await
        .map_err(db(format!("reading the constraints of {name}")))?;
        let indexes: Vec<(String,)> = sqlx::query_as(
            "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indrelid = $1::regclass
             AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
        )
        .bind(&regclass)
        .fetch_all(&mut *conn)
        .await
        .map_err(db(format!("reading the indexes of {name}")))?;
        out.push(PgTable {
            name,
            columns,
            primary_key,
            unique,
            constraints: constraints
                .iter()
                .filter(|c| !c.2)
                .map(|(n, def, _)| format!("CONSTRAINT {} {def}", ident(n)))
                .collect(),
            foreign: constraints
                .iter()
                .filter(|c| c.2)
                .map(|(n, def, _)| format!("CONSTRAINT {} {def}", ident(n)))
                .collect(),
            indexes: indexes.into_iter().map(|(d,)| d).collect(),
        });
    }
    Ok(out)
}

fn plan(
    tables: &[PgTable],
    data: &DataConfig,
) -> Result<Vec<BTreeMap<String, Transformer>>, MaskError> {
    let shape: Vec<(&str, Vec<&str>)> = tables
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                t.columns.iter().map(|c| c.0.as_str()).collect(),
            )
        })
        .collect();
    let rules = crate::plan(&shape, data)?;
    for (t, rules) in tables.iter().zip(&rules) {
        if rules.values().any(|r| *r == Transformer::Shuffle) {
            return Err(MaskError::Unsupported(format!(
                "shuffle in {} is not supported for PostgreSQL yet",
                t.name
            )));
        }
        if !rules.is_empty() && t.primary_key.is_empty() {
            return Err(MaskError::Unsupported(format!(
                "table {} has masked columns but no primary key, which the leak check compares rows by",
                t.name
            )));
        }
    }
    Ok(rules)
}

/// One field of COPY's text format, decoded; None for `\N`.
fn decode(field: &[u8]) -> Option<String> {
    if field == b"\\N" {
        return None;
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 1 < field.len() {
            i += 1;
            out.push(match field[i] {
                b'n' => b'\n',
                b't' => b'\t',
                b'r' => b'\r',
                b'b' => 8,
                b'f' => 12,
                b'v' => 11,
                other => other,
            });
        } else {
            out.push(field[i]);
        }
        i += 1;
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn encode(value: Option<&str>, out: &mut Vec<u8>) {
    let Some(v) = value else {
        out.extend_from_slice(b"\\N");
        return;
    };
    for b in v.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            other => out.push(other),
        }
    }
}

/// Lines of a COPY stream, across chunk boundaries.
struct Lines<'c> {
    stream: BoxStream<'c, sqlx::Result<bytes::Bytes>>,
    pending: Vec<u8>,
    start: usize,
}

impl<'c> Lines<'c> {
    fn new(stream: BoxStream<'c, sqlx::Result<bytes::Bytes>>) -> Self {
        Self {
            stream,
            pending: Vec::new(),
            start: 0,
        }
    }

    /// The next line without its newline, or None at the end.
    async fn next(&mut self) -> Result<Option<Vec<u8>>, MaskError> {
        loop {
            if let Some(end) = self.pending[self.start..].iter().position(|b| *b == b'\n') {
                let line = self.pending[self.start..self.start + end].to_vec();
                self.start += end + 1;
                return Ok(Some(line));
            }
            self.pending.drain(..self.start);
            self.start = 0;
            match self.stream.next().await {
                Some(chunk) => self
                    .pending
                    .extend_from_slice(&chunk.map_err(db("reading rows"))?),
                None if self.pending.is_empty() => return Ok(None),
                None => return Ok(Some(std::mem::take(&mut self.pending))),
            }
        }
    }
}

fn column_list(t: &PgTable) -> String {
    t.columns
        .iter()
        .map(|c| ident(&c.0))
        .collect::<Vec<_>>()
        .join(", ")
}

fn order_by(t: &PgTable) -> String {
    if t.primary_key.is_empty() {
        String::new()
    } else {
        let keys: Vec<String> = t.primary_key.iter().map(|k| ident(k)).collect();
        format!(" ORDER BY {}", keys.join(", "))
    }
}

/// Copies, masks and swaps in; see the module's documentation.
pub async fn refresh_postgres(
    source: &str,
    target: &str,
    data: &DataConfig,
    key: &MaskKey,
    mut progress: impl FnMut(Progress),
) -> Result<RefreshReport, MaskError> {
    let started = Instant::now();
    let mut src = connect(source).await?;
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut src)
        .await
        .map_err(db("starting the read-only snapshot"))?;
    let schema = tables(&mut src).await?;
    let rules = plan(&schema, data)?;
    let mut dst = connect(target).await?;
    sqlx::raw_sql(&format!(
        "DROP SCHEMA IF EXISTS {FRESH} CASCADE; CREATE SCHEMA {FRESH}"
    ))
    .execute(&mut dst)
    .await
    .map_err(db("preparing the target"))?;
    let mut reports = Vec::new();
    for (t, rules) in schema.iter().zip(&rules) {
        let t0 = Instant::now();
        let columns: Vec<String> = t
            .columns
            .iter()
            .map(|(n, ty, not_null)| {
                format!(
                    "{} {ty}{}",
                    ident(n),
                    if *not_null { " NOT NULL" } else { "" }
                )
            })
            .collect();
        sqlx::raw_sql(&format!(
            "CREATE TABLE {FRESH}.{} ({})",
            ident(&t.name),
            columns.join(", ")
        ))
        .execute(&mut dst)
        .await
        .map_err(db(format!("creating {}", t.name)))?;
        let total: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM public.{}", ident(&t.name)))
                .fetch_one(&mut src)
                .await
                .map_err(db(format!("counting {}", t.name)))?;
        let masked: Vec<Option<&Transformer>> = t
            .columns
            .iter()
            .map(|(c, _, _)| rules.get(c).filter(|r| **r != Transformer::Keep))
            .collect();
        let mut seen: HashMap<usize, HashSet<String>> = HashMap::new();
        let out_copy = format!(
            "COPY (SELECT {} FROM public.{}{}) TO STDOUT",
            column_list(t),
            ident(&t.name),
            order_by(t)
        );
        let mut copy_in = dst
            .copy_in_raw(&format!(
                "COPY {FRESH}.{} ({}) FROM STDIN",
                ident(&t.name),
                column_list(t)
            ))
            .await
            .map_err(db(format!("writing {}", t.name)))?;
        let mut lines = Lines::new(
            src.copy_out_raw(&out_copy)
                .await
                .map_err(db(format!("reading {}", t.name)))?,
        );
        let mut buf: Vec<u8> = Vec::with_capacity(SEND_EVERY + 4096);
        let mut rows = 0u64;
        while let Some(line) = lines.next().await? {
            if masked.iter().all(Option::is_none) {
                buf.extend_from_slice(&line);
            } else {
                for (i, field) in line.split(|b| *b == b'\t').enumerate() {
                    if i > 0 {
                        buf.push(b'\t');
                    }
                    match masked.get(i).copied().flatten() {
                        None => buf.extend_from_slice(field),
                        Some(rule) => {
                            let value = decode(field);
                            let mut out = value.as_deref().and_then(|v| rule.apply(key, v));
                            if t.unique.contains(&t.columns[i].0) {
                                let seen = seen.entry(i).or_default();
                                out = crate::unique(rule, value.as_deref(), out, key, seen);
                            }
                            encode(out.as_deref(), &mut buf);
                        }
                    }
                }
            }
            buf.push(b'\n');
            rows += 1;
            if buf.len() >= SEND_EVERY {
                copy_in
                    .send(std::mem::take(&mut buf))
                    .await
                    .map_err(db(format!("writing {}", t.name)))?;
                buf.reserve(SEND_EVERY + 4096);
            }
            if rows.is_multiple_of(PROGRESS_EVERY) {
                progress(Progress {
                    table: t.name.clone(),
                    rows,
                    total: total as u64,
                });
            }
        }
        drop(lines);
        if !buf.is_empty() {
            copy_in
                .send(buf)
                .await
                .map_err(db(format!("writing {}", t.name)))?;
        }
        copy_in
            .finish()
            .await
            .map_err(db(format!("writing {}", t.name)))?;
        progress(Progress {
            table: t.name.clone(),
            rows,
            total: total as u64,
        });
        reports.push(TableReport {
            table: t.name.clone(),
            rows,
            masked: rules
                .iter()
                .map(|(c, r)| (c.clone(), r.to_string()))
                .collect(),
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    // Constraints once the data is in (faster, and foreign keys no longer order the tables).
    sqlx::query(&format!("SET search_path = {FRESH}"))
        .execute(&mut dst)
        .await
        .map_err(db("preparing constraints"))?;
    let foreign = schema
        .iter()
        .flat_map(|t| t.foreign.iter().map(move |c| (t, c)));
    let keys = schema
        .iter()
        .flat_map(|t| t.constraints.iter().map(move |c| (t, c)));
    for (t, c) in keys.chain(foreign) {
        sqlx::raw_sql(&format!("ALTER TABLE {FRESH}.{} ADD {c}", ident(&t.name)))
            .execute(&mut dst)
            .await
            .map_err(db(format!(
                "adding a constraint of {} ({c}); the masked data breaks it",
                t.name
            )))?;
    }
    for t in &schema {
        for index in &t.indexes {
            let index = index.replacen(" ON public.", &format!(" ON {FRESH}."), 1);
            sqlx::raw_sql(&index)
                .execute(&mut dst)
                .await
                .map_err(db(format!("creating an index of {}", t.name)))?;
        }
    }
    let leaks = leak_check(&mut src, &mut dst, &schema, &rules, FRESH).await?;
    if leaks.leaked() > 0 {
        let _ = sqlx::raw_sql(&format!("DROP SCHEMA {FRESH} CASCADE"))
            .execute(&mut dst)
            .await;
        return Err(MaskError::Leaked(leaks));
    }
    sqlx::raw_sql(&format!(
        "SET search_path = public; BEGIN; DROP SCHEMA IF EXISTS public CASCADE; ALTER SCHEMA {FRESH} RENAME TO public; COMMIT"
    ))
    .execute(&mut dst)
    .await
    .map_err(db("swapping the new data in"))?;
    let _ = sqlx::query("COMMIT").execute(&mut src).await;
    Ok(RefreshReport {
        tables: reports,
        leaks,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Compares each masked column of `schema_b` on `b` with `public` on `a`, row by row in
/// primary-key order.
async fn leak_check(
    a: &mut PgConnection,
    b: &mut PgConnection,
    schema: &[PgTable],
    rules: &[BTreeMap<String, Transformer>],
    schema_b: &str,
) -> Result<LeakReport, MaskError> {
    let mut report = LeakReport::default();
    for (t, rules) in schema.iter().zip(rules) {
        let checked: Vec<(&String, &Transformer)> = rules
            .iter()
            .filter(|(_, r)| !matches!(r, Transformer::Keep | Transformer::Shuffle))
            .collect();
        if checked.is_empty() {
            continue;
        }
        let cols: Vec<String> = checked.iter().map(|(c, _)| ident(c)).collect();
        let select = |schema: &str| {
            format!(
                "COPY (SELECT {} FROM {schema}.{}{}) TO STDOUT",
                cols.join(", "),
                ident(&t.name),
                order_by(t)
            )
        };
        let mut counts: Vec<(u64, u64)> = vec![(0, 0); checked.len()];
        let mut la = Lines::new(
            a.copy_out_raw(&select("public"))
                .await
                .map_err(db("checking for leaks"))?,
        );
        let mut lb = Lines::new(
            b.copy_out_raw(&select(schema_b))
                .await
                .map_err(db("checking for leaks"))?,
        );
        while let (Some(ra), Some(rb)) = (la.next().await?, lb.next().await?) {
            for (i, (fa, fb)) in ra
                .split(|x| *x == b'\t')
                .zip(rb.split(|x| *x == b'\t'))
                .enumerate()
            {
                if fa == b"\\N" {
                    continue;
                }
                counts[i].0 += 1;
                if fa == fb {
                    let value = decode(fa).unwrap_or_default();
                    if !checked[i].1.may_equal_input(&value) {
                        counts[i].1 += 1;
                    }
                }
            }
        }
        for ((column, rule), (n, leaked)) in checked.iter().zip(counts) {
            report.columns.push(ColumnLeaks {
                table: t.name.clone(),
                column: (*column).clone(),
                rule: rule.to_string(),
                checked: n,
                leaked,
            });
        }
    }
    Ok(report)
}

/// The leak check of `target`'s `public` against `source`'s.
pub async fn check_postgres(
    source: &str,
    target: &str,
    data: &DataConfig,
) -> Result<LeakReport, MaskError> {
    let mut src = connect(source).await?;
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut src)
        .await
        .map_err(db("starting the read-only snapshot"))?;
    let mut dst = connect(target).await?;
    let schema = tables(&mut src).await?;
    let rules: Vec<BTreeMap<String, Transformer>> = schema
        .iter()
        .map(|t| data.mask.get(&t.name).cloned().unwrap_or_default())
        .collect();
    leak_check(&mut src, &mut dst, &schema, &rules, "public").await
}

/// The server part of `url` (everything before its database) and its database.
fn split_database(url: &str) -> Result<(&str, &str), MaskError> {
    let (server, rest) = url
        .rsplit_once('/')
        .ok_or_else(|| MaskError::Unsupported(format!("`{}` names no database", redact(url))))?;
    Ok((server, rest.split('?').next().unwrap_or(rest)))
}

/// A connection to the `postgres` database of the server `url` is on: databases are made
/// and dropped from there.
async fn maintenance(url: &str) -> Result<PgConnection, MaskError> {
    let (server, _) = split_database(url)?;
    connect(&format!("{server}/postgres")).await
}

/// Makes the database `url` names, unless it exists.
pub async fn create_database(url: &str) -> Result<(), MaskError> {
    let (_, name) = split_database(url)?;
    let mut conn = maintenance(url).await?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&mut conn)
        .await
        .map_err(db(format!("looking for the database {name}")))?;
    if exists.is_none() {
        sqlx::raw_sql(&format!("CREATE DATABASE {}", ident(name)))
            .execute(&mut conn)
            .await
            .map_err(db(format!("creating the database {name}")))?;
    }
    Ok(())
}

/// Drops the database `url` names, with whatever is still connected to it.
pub async fn drop_database(url: &str) -> Result<(), MaskError> {
    let (_, name) = split_database(url)?;
    let mut conn = maintenance(url).await?;
    sqlx::raw_sql(&format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        ident(name)
    ))
    .execute(&mut conn)
    .await
    .map_err(db(format!("dropping the database {name}")))?;
    Ok(())
}

/// The databases on the server of `url` whose names start with `prefix`, each as a URL like
/// `url`.
pub async fn databases_named(url: &str, prefix: &str) -> Result<Vec<String>, MaskError> {
    let (server, _) = split_database(url)?;
    let mut conn = maintenance(url).await?;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE strpos(datname, $1) = 1")
            .bind(prefix)
            .fetch_all(&mut conn)
            .await
            .map_err(db("listing databases".to_owned()))?;
    Ok(names.into_iter().map(|n| format!("{server}/{n}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_fields_round_trip() {
        for v in ["plain", "tab\there", "line\nbreak", "back\\slash", ""] {
            let mut out = Vec::new();
            encode(Some(v), &mut out);
            assert_eq!(decode(&out).as_deref(), Some(v));
        }
        let mut out = Vec::new();
        encode(None, &mut out);
        assert_eq!(decode(&out), None);
        assert_eq!(
            redact("postgres://app:secret@db:5432/shop"),
            "postgres://app:***@db:5432/shop"
        );
    }
}
