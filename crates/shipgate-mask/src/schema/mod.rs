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

mod postgres;
mod sqlite;
mod statement;

use std::collections::BTreeMap;

use shipgate_core::config::DataLocation;

use crate::MaskError;

/// The schema of the database at `location`, key → description (see the module's doc).
pub async fn schema_of(location: &DataLocation) -> Result<BTreeMap<String, String>, MaskError> {
    match location {
        DataLocation::Postgres(url) => postgres::schema(url).await,
        DataLocation::Sqlite(path) => sqlite::schema(path).await,
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
}
