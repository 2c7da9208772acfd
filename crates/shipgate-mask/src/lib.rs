//! An environment's data: backups proven by restoring them (`backup`), its schema read as one
//! line per thing for parity (`schema`), and staging data refreshed from production with
//! personal data masked. It reads the source in one
//! consistent snapshot (a read transaction), writes the schema and the masked rows into a fresh
//! file beside the target, checks that no masked value leaked, and only then swaps the file in:
//! a refresh that fails or is killed leaves the target's previous data as it was. The source is
//! opened read-only and never written.
//!
//! The rules (which transformer does what, which columns look personal) are in
//! `shipgate_core::mask`; this crate applies them to SQLite files and PostgreSQL databases.
#![forbid(unsafe_code)]

pub use shipgate_api::data::{ColumnLeaks, LeakReport, Progress, RefreshReport, TableReport};

pub mod backup;
mod postgres;
pub mod schema;
mod sqlite;

use std::collections::BTreeMap;

use shipgate_core::config::{DataConfig, Unlisted};
use shipgate_core::mask::{MaskKey, Transformer, looks_personal};

pub use postgres::{
    check_postgres, create_database, databases_named, drop_database, refresh_postgres,
};
pub use sqlite::{check_sqlite, refresh_sqlite};

/// Why a refresh or a check did not happen, or failed.
#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    /// Columns that look personal have no rule while `unlisted = "refuse"`.
    #[error(
        "refused before writing anything: these columns look personal and have no masking rule: {}; add a rule for each under [apps.APP.data.mask.TABLE] (\"keep\" if they are not personal), or set unlisted = \"keep\"",
        .0.join(", ")
    )]
    Unmasked(Vec<String>),
    /// A rule names a table or column the source does not have.
    #[error("{0}")]
    UnknownColumn(String),
    /// Masked values equal their source values: the target was not replaced.
    #[error("leak check failed, staging keeps its previous data: {}", describe_leaks(.0))]
    Leaked(LeakReport),
    /// The database failed while doing `context`.
    #[error("database error while {context}: {source}")]
    Database {
        /// What was being done.
        context: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The source holds something this version cannot copy.
    #[error("{0}")]
    Unsupported(String),
}

fn describe_leaks(r: &LeakReport) -> String {
    r.columns
        .iter()
        .filter(|c| c.leaked > 0)
        .map(|c| {
            format!(
                "{}.{}: {} of {} values equal the source",
                c.table, c.column, c.leaked, c.checked
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The rule of every column of every table (`(table, columns)` as the source has them),
/// checked against the source's schema: nothing is written when a rule names nothing or a
/// personal-looking column has no rule.
fn plan(
    tables: &[(&str, Vec<&str>)],
    data: &DataConfig,
) -> Result<Vec<BTreeMap<String, Transformer>>, MaskError> {
    for (table, rules) in &data.mask {
        let Some((_, columns)) = tables.iter().find(|(t, _)| t == table) else {
            let known: Vec<&str> = tables.iter().map(|(t, _)| *t).collect();
            return Err(MaskError::UnknownColumn(format!(
                "mask.{table} names no table of the source (tables: {})",
                known.join(", ")
            )));
        };
        if let Some(c) = rules.keys().find(|c| !columns.contains(&c.as_str())) {
            return Err(MaskError::UnknownColumn(format!(
                "mask.{table}.{c} names no column of {table} (columns: {})",
                columns.join(", ")
            )));
        }
    }
    let mut unmasked = Vec::new();
    let mut out = Vec::new();
    for (table, columns) in tables {
        let rules = data.mask.get(*table).cloned().unwrap_or_default();
        for c in columns {
            if !rules.contains_key(*c) && data.unlisted == Unlisted::Refuse && looks_personal(c) {
                unmasked.push(format!("{table}.{c}"));
            }
        }
        out.push(rules);
    }
    if unmasked.is_empty() {
        Ok(out)
    } else {
        Err(MaskError::Unmasked(unmasked))
    }
}

/// What a database call failed while doing, as the error of this crate.
fn db(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> MaskError {
    let context = context.into();
    move |source| MaskError::Database { context, source }
}

/// The masked value of a unique column that no earlier row of this refresh got: on a
/// collision the original is masked again with a counter (`value#1`, `value#2`, ...), which is
/// deterministic for rows read in key order. `first` is the value's first masking.
fn unique(
    rule: &Transformer,
    original: Option<&str>,
    first: Option<String>,
    key: &MaskKey,
    seen: &mut std::collections::HashSet<String>,
) -> Option<String> {
    let mut out = first;
    let mut n = 1u32;
    while let Some(o) = out.clone() {
        if seen.insert(o) {
            break;
        }
        out = original.and_then(|v| rule.apply(key, &format!("{v}#{n}")));
        n += 1;
    }
    out
}
