//! The engine's refusals and failures, each with what to do next.

use shipgate_core::EntryRefusal;
use shipgate_core::gate::DecisionRefusal;
use shipgate_store::StoreError;
use shipgate_store::artifact::ArtifactError;

/// Why the engine refused a request or could not carry it out.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The rules refuse the promotion.
    #[error(transparent)]
    Refused(#[from] EntryRefusal),
    /// The app is not in the config.
    #[error(
        "app `{0}` is not in the config (add [apps.{0}] to shipgate.toml and restart the server)"
    )]
    UnknownApp(String),
    /// The environment is not in the config.
    #[error("environment `{0}` is not in the config")]
    UnknownEnvironment(String),
    /// The release was never registered.
    #[error(
        "{release} is not registered (register it first: shipgate release create {app} --version {version} --artifact PATH)"
    )]
    NotRegistered {
        /// `app@version`.
        release: String,
        /// The app.
        app: String,
        /// The version.
        version: String,
    },
    /// Retention removed the release's artifact; its record stays.
    #[error(
        "{release}'s artifact was removed by retention (server.retention.releases); register the same file again to bring it back: shipgate release create {app} --version {version} --artifact PATH"
    )]
    Pruned {
        /// `app@version`.
        release: String,
        /// The app.
        app: String,
        /// The version.
        version: String,
    },
    /// No such promotion.
    #[error("promotion {0} does not exist")]
    NoSuchPromotion(shipgate_core::PromotionId),
    /// The approval or rejection is not allowed.
    #[error(transparent)]
    Decision(#[from] DecisionRefusal),
    /// A data refresh or check may not happen as asked.
    #[error("{0}")]
    DataRefused(String),
    /// An on-demand environment may not be made, extended or deleted as asked.
    #[error("{0}")]
    OnDemand(String),
    /// A template's quota is used up: who holds the slots, until when.
    #[error("{0}")]
    Quota(String),
    /// No app declares the flag asked for.
    #[error("{0}")]
    UnknownFlag(String),
    /// A flag state names a variant its flag does not declare.
    #[error("{0}")]
    UnknownVariant(String),
    /// A flag change or flag key was refused as asked.
    #[error("{0}")]
    Flag(String),
    /// A fault injection was refused: the fault is malformed.
    #[error("{0}")]
    Chaos(String),
    /// The environment's `chaos` rules refuse a fault: not allowed there, or too long.
    #[error("{0}")]
    ChaosNotAllowed(String),
    /// Faults at the end of the flow (production) need an admin.
    #[error("{0}")]
    ChaosForbidden(String),
    /// No such fault.
    #[error("{0}")]
    UnknownFault(String),
    /// No such notification target.
    #[error("{0}")]
    UnknownTarget(String),
    /// Nothing waits for the decision asked for.
    #[error("{0}")]
    NothingToDecide(String),
    /// A load test may not run as asked (nothing live, no gate to seed a baseline for).
    #[error("{0}")]
    LoadRefused(String),
    /// A load test at the end of the flow without an admin and `load.allow`.
    #[error("{0}")]
    LoadForbidden(String),
    /// The secrets key or a `secrets_file` cannot be used (the server refuses to start).
    #[error("{0}")]
    Secrets(String),
    /// Setting or removing a secret without the role for it.
    #[error("{0}")]
    SecretsForbidden(String),
    /// A secret refused as asked (its name, an empty value).
    #[error("{0}")]
    SecretRefused(String),
    /// No such secret.
    #[error("{0}")]
    NoSuchSecret(String),
    /// No sign-off of that release in that environment is under way or on record.
    #[error("{0}")]
    NoSignoff(String),
    /// A pass or fail was refused as asked.
    #[error(transparent)]
    Signoff(#[from] shipgate_core::signoff::SignoffRefusal),
    /// Rollback has nothing to go back to.
    #[error("{0}")]
    NothingToRollBack(String),
    /// No canary is under way where one was asked about, or it cannot do what was asked.
    #[error("{0}")]
    NoCanary(String),
    /// A heal was asked for where nothing has drifted.
    #[error("{0}")]
    NothingToHeal(String),
    /// The artifact was refused or could not be stored.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The config asks for an isolation this machine cannot give.
    #[error("{0}")]
    CannotIsolate(String),
    /// The data plane (a router, an instance) refused or failed.
    #[error("{0}")]
    DataPlane(String),
}
