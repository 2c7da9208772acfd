//! A database's schema as flat lines, one per thing, so that two environments' databases
//! compare line by line (`shipgate diff`, `require.parity` with `parity.schema = true`):
//!
//! - `schema.orders` → `table`
//! - `schema.orders.column.note` → `text NOT NULL DEFAULT ''::text`
//! - `schema.orders.index.orders_created_idx` → `CREATE INDEX orders_created_idx ON orders USING btree (created_at)`
//! - `schema.orders.constraint.orders_pkey` → `PRIMARY KEY (id)`
//! - `schema.orders.trigger.orders_touch` → `CREATE TRIGGER orders_touch ...`
//! - `schema.enum.order_status` → `new, paid, shipped`
//!
//! Names in `public` (PostgreSQL) carry no schema, so two databases compare equal; tables of
//! other schemas are written `schema.audit.log`. One query per kind of thing, never one per
//! table, inside one read-only transaction. The database is only read.

use std::collections::BTreeMap;
use std::path::Path;

use shipgate_core::config::DataLocation;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};

use crate::{MaskError, db};

/// The schema of the database at `location`, key → description (see the module's doc).
pub async fn schema_of(location: &DataLocation) -> Result<BTreeMap<String, String>, MaskError> {
    match location {
        DataLocation::Postgres(url) => postgres(url).await,
        DataLocation::Sqlite(path) => sqlite(path).await,
    }
}

/// `schema.a.b...`.
fn key(parts: &[&str]) -> String {
    let mut out = String::from("schema");
    for p in parts {
        out.push('.');
        out.push_str(p);
    }
    out
}

/// Runs of whitespace (line breaks of a hand-written statement) as one space.
fn collapse(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The schemas that hold the app's own things: not PostgreSQL's, and not the one a masked
/// refresh fills before it becomes `public`.
const PG_USER_SCHEMA: &str =
    "n.nspname NOT IN ('pg_catalog', 'information_schema', 'shipgate_refresh')
    AND n.nspname NOT LIKE 'pg\\_%'";

/// A relation's name as keys write it: bare in `public`, `schema.name` elsewhere.
const PG_NAME: &str =
    "(CASE WHEN n.nspname = 'public' THEN '' ELSE n.nspname || '.' END || c.relname)";

/// Not a member of an extension (whose things come and go with the extension).
const PG_OWN_RELATION: &str = "NOT EXISTS (SELECT 1 FROM pg_depend d
    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')";

async fn postgres(url: &str) -> Result<BTreeMap<String, String>, MaskError> {
    let redacted = DataLocation::redacted_url(url);
    let mut conn = PgConnection::connect(url)
        .await
        .map_err(db(format!("connecting to {redacted}")))?;
    let mut tx = conn
        .begin()
        .await
        .map_err(db(format!("reading the schema of {redacted}")))?;
    // One snapshot for every query; `public` on the search path so that definitions name its
    // tables and types without it, whatever the database's own setting.
    // One statement each: a future of `raw_sql` is not provably Send, and the engine spawns this.
    for set in [
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        "SET LOCAL search_path = public",
        "SET LOCAL statement_timeout = '30s'",
    ] {
        sqlx::query(set)
            .execute(&mut *tx)
            .await
            .map_err(db(format!("reading the schema of {redacted}")))?;
    }

    let mut out = BTreeMap::new();
    let relations: Vec<(String, String, Option<String>)> = sqlx::query_as(&format!(
        "SELECT {PG_NAME}, c.relkind::text, CASE c.relkind
             WHEN 'p' THEN pg_get_partkeydef(c.oid)
             WHEN 'v' THEN pg_get_viewdef(c.oid) WHEN 'm' THEN pg_get_viewdef(c.oid) END
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p', 'v', 'm') AND {PG_USER_SCHEMA} AND {PG_OWN_RELATION}"
    ))
    .fetch_all(&mut *tx)
    .await
    .map_err(db(format!("reading the tables of {redacted}")))?;
    for (name, kind, definition) in relations {
        let definition = collapse(definition.as_deref().unwrap_or_default());
        let description = match kind.as_str() {
            "r" => "table".to_owned(),
            "p" => format!("table PARTITION BY {definition}"),
            "v" => format!("view AS {definition}"),
            _ => format!("materialized view AS {definition}"),
        };
        out.insert(key(&[&name]), description);
    }

    let columns: Vec<(String, String, String)> = sqlx::query_as(&format!(
        "SELECT {PG_NAME}, a.attname::text, format_type(a.atttypid, a.atttypmod)
             || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
             || CASE WHEN a.attgenerated = 's'
                     THEN ' GENERATED ALWAYS AS (' || pg_get_expr(d.adbin, d.adrelid) || ') STORED'
                     WHEN d.adbin IS NOT NULL THEN ' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid)
                     ELSE '' END
             || CASE a.attidentity WHEN 'a' THEN ' GENERATED ALWAYS AS IDENTITY'
                     WHEN 'd' THEN ' GENERATED BY DEFAULT AS IDENTITY' ELSE '' END
         FROM pg_attribute a
         JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
           AND {PG_USER_SCHEMA} AND {PG_OWN_RELATION}"
    ))
    .fetch_all(&mut *tx)
    .await
    .map_err(db(format!("reading the columns of {redacted}")))?;
    for (table, column, description) in columns {
        out.insert(key(&[&table, "column", &column]), description);
    }

    // Indexes that back a primary key, a unique or an exclusion constraint are that
    // constraint's: listed once, as the constraint.
    let indexes: Vec<(String, String, String)> = sqlx::query_as(&format!(
        "SELECT {PG_NAME}, ic.relname::text, replace(pg_get_indexdef(i.indexrelid),
             quote_ident(n.nspname) || '.' || quote_ident(c.relname), quote_ident(c.relname))
         FROM pg_index i
         JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         JOIN pg_class ic ON ic.oid = i.indexrelid
         WHERE {PG_USER_SCHEMA} AND {PG_OWN_RELATION} AND NOT EXISTS (SELECT 1 FROM pg_constraint k
             WHERE k.conindid = i.indexrelid AND k.contype IN ('p', 'u', 'x'))"
    ))
    .fetch_all(&mut *tx)
    .await
    .map_err(db(format!("reading the indexes of {redacted}")))?;
    for (table, index, definition) in indexes {
        out.insert(key(&[&table, "index", &index]), definition);
    }

    // Checks, foreign keys, primary keys, uniques and exclusions; NOT NULL is the column's.
    let constraints: Vec<(String, String, String)> = sqlx::query_as(&format!(
        "SELECT {PG_NAME}, k.conname::text, pg_get_constraintdef(k.oid)
         FROM pg_constraint k
         JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE k.contype IN ('c', 'f', 'p', 'u', 'x') AND {PG_USER_SCHEMA} AND {PG_OWN_RELATION}"
    ))
    .fetch_all(&mut *tx)
    .await
    .map_err(db(format!("reading the constraints of {redacted}")))?;
    for (table, name, definition) in constraints {
        out.insert(key(&[&table, "constraint", &name]), definition);
    }

    let triggers: Vec<(String, String, String)> = sqlx::query_as(&format!(
        "SELECT {PG_NAME}, t.tgname::text, replace(pg_get_triggerdef(t.oid),
             quote_ident(n.nspname) || '.' || quote_ident(c.relname), quote_ident(c.relname))
         FROM pg_trigger t
         JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE NOT t.tgisinternal AND {PG_USER_SCHEMA} AND {PG_OWN_RELATION}"
    ))
    .fetch_all(&mut *tx)
    .await
    .map_err(db(format!("reading the triggers of {redacted}")))?;
    for (table, name, definition) in triggers {
        out.insert(key(&[&table, "trigger", &name]), definition);
    }

    let enums: Vec<(String, String)> = sqlx::query_as(&format!(
        "SELECT CASE WHEN n.nspname = 'public' THEN '' ELSE n.nspname || '.' END || t.typname,
             string_agg(e.enumlabel, ', ' ORDER BY e.enumsortorder)
         FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
         JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE {PG_USER_SCHEMA} AND NOT EXISTS (SELECT 1 FROM pg_depend d
             WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e')
         GROUP BY n.nspname, t.typname"
    ))
    .fetch_all(&mut *tx)
    .await
    .map_err(db(format!("reading the enums of {redacted}")))?;
    for (name, values) in enums {
        out.insert(key(&["enum", &name]), values);
    }
    tx.rollback()
        .await
        .map_err(db(format!("ending the read of {redacted}")))?;
    Ok(out)
}

/// SQLite's own tables, and those of virtual tables' modules.
const SQLITE_USER_TABLE: &str = "m.type = 'table' AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
    AND m.sql NOT LIKE 'CREATE VIRTUAL TABLE%'";

async fn sqlite(path: &Path) -> Result<BTreeMap<String, String>, MaskError> {
    let shown = path.display();
    // Opening read-only a file that is not there fails with "unable to open database file":
    // say plainly that it is missing.
    std::fs::metadata(path).map_err(|source| MaskError::Io {
        context: format!("reading the schema of {shown}"),
        source,
    })?;
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .create_if_missing(false);
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .map_err(db(format!("opening {shown}")))?;
    let mut tx = conn
        .begin()
        .await
        .map_err(db(format!("reading the schema of {shown}")))?;

    let objects: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT type, name, tbl_name, sql FROM sqlite_master
         WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(db(format!("reading the tables of {shown}")))?;
    let columns: Vec<(String, String, String, bool, Option<String>, i64)> =
        sqlx::query_as(&format!(
            "SELECT m.name, p.name, p.type, p.\"notnull\", p.dflt_value, p.pk
             FROM sqlite_master m JOIN pragma_table_info(m.name) p WHERE {SQLITE_USER_TABLE}"
        ))
        .fetch_all(&mut *tx)
        .await
        .map_err(db(format!("reading the columns of {shown}")))?;
    let uniques: Vec<(String, String, Option<String>)> = sqlx::query_as(&format!(
        "SELECT m.name, l.name, i.name
         FROM sqlite_master m JOIN pragma_index_list(m.name) l JOIN pragma_index_info(l.name) i
         WHERE {SQLITE_USER_TABLE} AND l.origin = 'u' ORDER BY m.name, l.name, i.seqno"
    ))
    .fetch_all(&mut *tx)
    .await
    .map_err(db(format!("reading the unique constraints of {shown}")))?;
    type ForeignKey = (String, i64, String, String, Option<String>, String, String);
    let foreign: Vec<ForeignKey> = sqlx::query_as(&format!(
        "SELECT m.name, f.id, f.\"table\", f.\"from\", f.\"to\", f.on_update, f.on_delete
         FROM sqlite_master m JOIN pragma_foreign_key_list(m.name) f
         WHERE {SQLITE_USER_TABLE} ORDER BY m.name, f.id, f.seq"
    ))
    .fetch_all(&mut *tx)
    .await
    .map_err(db(format!("reading the foreign keys of {shown}")))?;
    tx.rollback()
        .await
        .map_err(db(format!("ending the read of {shown}")))?;

    let mut out = BTreeMap::new();
    for (kind, name, table, sql) in objects {
        let sql = sql.unwrap_or_default();
        match kind.as_str() {
            "table" => {
                out.insert(key(&[&name]), table_description(&sql));
                for (constraint, check) in checks(&name, &sql) {
                    out.insert(key(&[&name, "constraint", &constraint]), check);
                }
            }
            "view" => {
                out.insert(key(&[&name]), view_description(&sql));
            }
            // Indexes without SQL are those SQLite makes for a unique or primary key.
            "index" if !sql.is_empty() => {
                let sql = collapse(&sql).replacen(" IF NOT EXISTS", "", 1);
                out.insert(key(&[&table, "index", &name]), sql);
            }
            "trigger" => {
                let sql = collapse(&sql).replacen(" IF NOT EXISTS", "", 1);
                out.insert(key(&[&table, "trigger", &name]), sql);
            }
            _ => {}
        }
    }

    let mut primary: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for (table, column, kind, not_null, default, pk) in columns {
        let mut description = if kind.is_empty() {
            "(no type)".to_owned()
        } else {
            kind
        };
        if not_null {
            description.push_str(" NOT NULL");
        }
        if let Some(d) = default {
            description.push_str(&format!(" DEFAULT {d}"));
        }
        if pk > 0 {
            primary
                .entry(table.clone())
                .or_default()
                .push((pk, column.clone()));
        }
        out.insert(key(&[&table, "column", &column]), description);
    }
    // SQLite names none of these: they get the names PostgreSQL would give them.
    for (table, mut columns) in primary {
        columns.sort();
        let names: Vec<String> = columns.into_iter().map(|(_, c)| c).collect();
        let k = key(&[&table, "constraint", &format!("{table}_pkey")]);
        out.insert(k, format!("PRIMARY KEY ({})", names.join(", ")));
    }
    let mut unique: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (table, index, column) in uniques {
        let column = column.unwrap_or_else(|| "(expression)".to_owned());
        unique.entry((table, index)).or_default().push(column);
    }
    for ((table, _), columns) in unique {
        let name = format!("{table}_{}_key", columns.join("_"));
        let k = key(&[&table, "constraint", &name]);
        out.insert(k, format!("UNIQUE ({})", columns.join(", ")));
    }
    let mut keys: BTreeMap<(String, i64), Vec<ForeignKey>> = BTreeMap::new();
    for f in foreign {
        keys.entry((f.0.clone(), f.1)).or_default().push(f);
    }
    for ((table, _), parts) in keys {
        let from: Vec<&str> = parts.iter().map(|f| f.3.as_str()).collect();
        let to: Vec<&str> = parts.iter().filter_map(|f| f.4.as_deref()).collect();
        let (_, _, target, _, _, on_update, on_delete) = &parts[0]; // a group is never empty
        let mut definition = format!("FOREIGN KEY ({}) REFERENCES {target}", from.join(", "));
        if !to.is_empty() {
            definition.push_str(&format!("({})", to.join(", ")));
        }
        for (when, action) in [("UPDATE", on_update), ("DELETE", on_delete)] {
            if action != "NO ACTION" {
                definition.push_str(&format!(" ON {when} {action}"));
            }
        }
        let name = format!("{table}_{}_fkey", from.join("_"));
        out.insert(key(&[&table, "constraint", &name]), definition);
    }
    Ok(out)
}

/// `table`, with the options written after its columns (`table WITHOUT ROWID`); a virtual
/// table as its statement.
fn table_description(sql: &str) -> String {
    if sql.starts_with("CREATE VIRTUAL TABLE") {
        return collapse(sql);
    }
    let shape = structure(sql);
    let options = body(&shape)
        .map(|(_, end)| collapse(&sql[end + 1..]).to_ascii_uppercase())
        .unwrap_or_default();
    if options.is_empty() {
        "table".to_owned()
    } else {
        format!("table {options}")
    }
}

/// `view AS SELECT ...`.
fn view_description(sql: &str) -> String {
    let shape = structure(sql).to_ascii_uppercase();
    let at = find_word(&shape, 0, "AS").unwrap_or(0);
    format!("view {}", collapse(&sql[at..]))
}

/// `sql` with what is quoted blanked (its quotes kept) and comments blanked, byte for byte, so
/// that the parentheses, commas and words found in it are the statement's own.
fn structure(sql: &str) -> String {
    let bytes = sql.as_bytes();
    let mut out = bytes.to_vec();
    let mut i = 0;
    while i < bytes.len() {
        let (end, keep_quotes) = match bytes[i] {
            q @ (b'\'' | b'"' | b'`') => {
                let mut j = i + 1;
                while j < bytes.len() {
                    if bytes[j] == q {
                        if bytes.get(j + 1) == Some(&q) {
                            j += 2;
                            continue;
                        }
                        break;
                    }
                    j += 1;
                }
                (j, true)
            }
            b'[' => (sql[i..].find(']').map_or(bytes.len(), |e| i + e), true),
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                (sql[i..].find('\n').map_or(bytes.len(), |e| i + e), false)
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => (
                sql[i..].find("*/").map_or(bytes.len(), |e| i + e + 1),
                false,
            ),
            _ => {
                i += 1;
                continue;
            }
        };
        // `end` is the closing quote or the comment's last byte; past the end when unclosed.
        let (from, to) = if keep_quotes {
            (i + 1, end.min(bytes.len()))
        } else {
            (i, (end + 1).min(bytes.len()))
        };
        for b in out.iter_mut().take(to).skip(from) {
            *b = b' ';
        }
        i = end + 1;
    }
    // Every blanked run starts after an ASCII delimiter and ends at one or at the end, so it
    // holds whole characters and this is still UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// The byte offsets of the first `(` of `shape` and the `)` that closes it.
fn body(shape: &str) -> Option<(usize, usize)> {
    let open = shape.find('(')?;
    closing(shape, open).map(|close| (open, close))
}

/// The offset of the `)` closing the `(` at `open`.
fn closing(shape: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, b) in shape.bytes().enumerate().skip(open) {
        match b {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// The offset of `word` (upper case) as a whole word in `shape` (upper case) from `from`.
fn find_word(shape: &str, from: usize, word: &str) -> Option<usize> {
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = shape.as_bytes();
    let mut at = from;
    while let Some(found) = shape[at..].find(word) {
        let start = at + found;
        let end = start + word.len();
        let before = start == 0 || !is_word(bytes[start - 1]);
        let after = end >= bytes.len() || !is_word(bytes[end]);
        if before && after {
            return Some(start);
        }
        at = end;
    }
    None
}

/// The words of `shape[from..to]` outside parentheses, as offset ranges.
fn words(shape: &str, from: usize, to: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = None;
    for (i, b) in shape.bytes().enumerate().take(to).skip(from) {
        let boundary = b.is_ascii_whitespace() || b == b'(' || b == b')' || b == b',';
        if boundary || depth > 0 {
            if let Some(s) = start.take() {
                out.push((s, i));
            }
        } else if start.is_none() {
            start = Some(i);
        }
        match b {
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, to));
    }
    out
}

/// A name as written, without its quotes.
fn unquote(name: &str) -> String {
    let inner = match name.as_bytes().first() {
        Some(b'"' | b'`' | b'[' | b'\'') if name.len() >= 2 => &name[1..name.len() - 1],
        _ => name,
    };
    inner.replace("\"\"", "\"")
}

/// The CHECK constraints of a `CREATE TABLE` statement, name → `CHECK (expression)`. SQLite
/// keeps no record of them besides the statement. An unnamed one gets the name PostgreSQL
/// would give it: `TABLE_COLUMN_check` on a column, `TABLE_check` on the table (then
/// `TABLE_check1`, ...).
fn checks(table: &str, sql: &str) -> Vec<(String, String)> {
    let shape = structure(sql);
    let upper = shape.to_ascii_uppercase();
    let Some((open, close)) = body(&shape) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = Vec::new();
    let mut start = open + 1;
    let mut depth = 0usize;
    let mut parts = Vec::new();
    for (i, b) in shape.bytes().enumerate().take(close).skip(open + 1) {
        match b {
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => {
                parts.push((start, i));
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push((start, close));
    for (from, to) in parts {
        let words = words(&shape, from, to);
        let Some(&(first_start, first_end)) = words.first() else {
            continue;
        };
        let first = &upper[first_start..first_end];
        let column = (!["CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"].contains(&first))
            .then(|| unquote(&sql[first_start..first_end]));
        for (n, &(s, e)) in words.iter().enumerate() {
            if &upper[s..e] != "CHECK" {
                continue;
            }
            let Some(open) = shape[e..to].find('(').map(|o| e + o) else {
                continue;
            };
            let Some(close) = closing(&shape, open) else {
                continue;
            };
            let named = n
                .checked_sub(2)
                .map(|c| words[c])
                .filter(|&(cs, ce)| &upper[cs..ce] == "CONSTRAINT")
                .map(|_| unquote(&sql[words[n - 1].0..words[n - 1].1]));
            let name = named.unwrap_or_else(|| {
                let base = match &column {
                    Some(c) => format!("{table}_{c}_check"),
                    None => format!("{table}_check"),
                };
                let mut name = base.clone();
                let mut count = 0;
                while out.iter().any(|(n, _)| *n == name) {
                    count += 1;
                    name = format!("{base}{count}");
                }
                name
            });
            out.push((name, format!("CHECK {}", collapse(&sql[open..=close]))));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine spawns its diffs: this does not compile if reading a schema is not Send.
    #[allow(dead_code, reason = "compiled, never run")]
    fn reading_a_schema_can_be_spawned(location: DataLocation) {
        drop(tokio::spawn(async move {
            schema_of(&location).await.map(|lines| lines.len())
        }));
    }

    #[test]
    fn checks_are_found_in_the_statement_named_as_postgresql_would() {
        let sql = "CREATE TABLE \"order\" (
            id INTEGER PRIMARY KEY,
            amount REAL NOT NULL CHECK (amount > 0), -- a comment with CHECK (x)
            note TEXT DEFAULT 'CHECK (no), really' CHECK (length(note) < 100),
            [odd, name] TEXT,
            CONSTRAINT sane CHECK (amount < 1e9),
            CHECK (note <> ''),
            CHECK (id > 0)
        ) WITHOUT ROWID";
        assert_eq!(
            checks("order", sql),
            [
                ("order_amount_check".into(), "CHECK (amount > 0)".into()),
                (
                    "order_note_check".into(),
                    "CHECK (length(note) < 100)".into()
                ),
                ("sane".into(), "CHECK (amount < 1e9)".into()),
                ("order_check".into(), "CHECK (note <> '')".into()),
                ("order_check1".into(), "CHECK (id > 0)".into()),
            ] as [(String, String); 5]
        );
        assert_eq!(table_description(sql), "table WITHOUT ROWID");
        assert_eq!(
            view_description("CREATE VIEW paid AS\n  SELECT * FROM \"order\""),
            "view AS SELECT * FROM \"order\""
        );
    }
}
