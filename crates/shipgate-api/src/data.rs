//! What a masked data refresh reports while it runs and when it ends, and the leak check.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One table copied.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TableReport {
    /// The table.
    pub table: String,
    /// Rows copied.
    pub rows: u64,
    /// Columns masked (with their rule).
    pub masked: BTreeMap<String, String>,
    /// How long it took.
    pub seconds: f64,
}

/// Masked columns compared with their source.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct LeakReport {
    /// One entry per masked column.
    pub columns: Vec<ColumnLeaks>,
}

impl LeakReport {
    /// Values that equal their source beyond what their rule allows.
    pub fn leaked(&self) -> u64 {
        self.columns.iter().map(|c| c.leaked).sum()
    }
}

/// One masked column compared with its source.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ColumnLeaks {
    /// The table.
    pub table: String,
    /// The column.
    pub column: String,
    /// The rule.
    pub rule: String,
    /// Non-null values compared.
    pub checked: u64,
    /// Values equal to their source where the rule does not allow it.
    pub leaked: u64,
}

/// A finished refresh.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RefreshReport {
    /// Each table, in the order copied.
    pub tables: Vec<TableReport>,
    /// The leak check of the new data, done before it was swapped in.
    pub leaks: LeakReport,
    /// Total time.
    pub seconds: f64,
}

/// Progress of one table, as it is copied.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    /// The table.
    pub table: String,
    /// Rows copied so far.
    pub rows: u64,
    /// Rows it has.
    pub total: u64,
}

/// What a running refresh reports.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DataMessage {
    /// A table's progress.
    Progress(Progress),
    /// It finished.
    Done(RefreshReport),
    /// It failed; the target kept its previous data.
    Failed(String),
}
