//! Parity and drift: an app compared in two environments, and live releases against their record.

use serde::{Deserialize, Serialize};
use shipgate_core::parity::DiffItem;
use shipgate_core::{AppName, EnvName, Version};
use utoipa::ToSchema;

/// An app compared in two environments.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Diff {
    /// The app.
    pub app: AppName,
    /// The first environment.
    pub a: EnvName,
    /// The second environment.
    pub b: EnvName,
    /// Every item, by key.
    pub items: Vec<DiffItem>,
    /// Whether any item is an unexpected difference (or present on one side only).
    pub unexpected: bool,
}

/// What a scan found for one app in one environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DriftReport {
    /// The app.
    pub app: AppName,
    /// The environment.
    pub env: EnvName,
    /// The recorded live release.
    pub version: Version,
    /// Each difference found, in a sentence; empty when nothing drifted.
    pub drift: Vec<String>,
    /// When (RFC 3339).
    pub checked_at: jiff::Timestamp,
}
