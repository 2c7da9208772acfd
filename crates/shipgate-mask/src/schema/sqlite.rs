//! SQLite: `sqlite_master` and the `pragma_*` table functions over every table at once, and the
//! CHECK constraints read from each table's statement.

use std::collections::BTreeMap;
use std::path::Path;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};

use super::statement::{checks, table_description, view_description};
use super::{collapse, key};
use crate::{MaskError, db};

/// SQLite's own tables, and those of virtual tables' modules.
const SQLITE_USER_TABLE: &str = "m.type = 'table' AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
    AND m.sql NOT LIKE 'CREATE VIRTUAL TABLE%'";

/// The schema of the SQLite file at `path`.
pub(super) async fn schema(path: &Path) -> Result<BTreeMap<String, String>, MaskError> {
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
