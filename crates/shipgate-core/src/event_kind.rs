//! What kind of change an audit event records. Stored and sent as its dotted name
//! (`promotion.succeeded`), which the audit chain hashes, so a name never changes once used.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::PromotionState;

/// The kind of one audit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A gate of a promotion passed (`gate.passed`).
    GatePassed,
    /// A gate of a promotion failed (`gate.failed`).
    GateFailed,
    /// A person approved a promotion (`approval.approved`).
    Approved,
    /// A person rejected a promotion (`approval.rejected`).
    Rejected,
    /// A release was registered (`release.created`).
    ReleaseCreated,
    /// Retention removed a release's artifact and directory; its record stays (`release.pruned`).
    ReleasePruned,
    /// A promotion was asked for (`promotion.requested`).
    PromotionRequested,
    /// A promotion reached this state (`promotion.deploying`, `promotion.succeeded`, ...).
    Promotion(PromotionState),
    /// An admin lifted windows and freezes for a promotion (`promotion.override`).
    PromotionOverride,
    /// An automatic promotion was not asked for, and why (`promotion.auto_refused`).
    PromotionAutoRefused,
    /// A live release could not be started again after a restart (`environment.unavailable`).
    EnvironmentUnavailable,
    /// An environment (or every one) was frozen (`environment.frozen`).
    EnvironmentFrozen,
    /// A freeze was lifted (`environment.unfrozen`).
    EnvironmentUnfrozen,
    /// A live release no longer matches its record (`environment.drifted`).
    EnvironmentDrifted,
    /// A drifted live release matches its record again (`environment.drift_cleared`).
    EnvironmentDriftCleared,
    /// The live instance crash-looped and is no longer restarted (`environment.unhealthy`).
    EnvironmentUnhealthy,
    /// An instance exited on its own (`instance.crashed`).
    InstanceCrashed,
    /// A crashed instance was started again (`instance.restarted`).
    InstanceRestarted,
    /// A standby instance crash-looped and was given up (`instance.gave_up`).
    InstanceGaveUp,
    /// A token was made (`token.created`).
    TokenCreated,
    /// A token was revoked (`token.revoked`).
    TokenRevoked,
    /// A secret got a new version (`secret.set`).
    SecretSet,
    /// A secret was removed; its versions stay for rollbacks (`secret.removed`).
    SecretRemoved,
    /// A person signed in through the identity provider (`session.signed_in`).
    SignedIn,
    /// A session ended: signed out, or refused at a refresh (`session.ended`).
    SessionEnded,
    /// A host was added, with a join token (`host.added`).
    HostAdded,
    /// A host's agent joined and was issued its certificate (`host.joined`).
    HostJoined,
    /// A host was removed and its certificate revoked (`host.removed`).
    HostRemoved,
    /// Staging data was refreshed, masked (`data.refreshed`).
    DataRefreshed,
    /// A data refresh failed and changed nothing (`data.refresh_failed`).
    DataRefreshFailed,
    /// A server took the engine's lease and runs the engine from now on (`server.leading`).
    ServerLeading,
    /// An on-demand environment was made from a template (`environment.created`).
    EnvironmentCreated,
    /// An on-demand environment has its data and releases and passed its tests
    /// (`environment.ready`).
    EnvironmentReady,
    /// Making an on-demand environment failed; it is deleted (`environment.create_failed`).
    EnvironmentCreateFailed,
    /// An on-demand environment was given more time (`environment.extended`).
    EnvironmentExtended,
    /// An on-demand environment and everything of it was removed, by a person or its TTL
    /// (`environment.deleted`).
    EnvironmentDeleted,
    /// A feature flag's state in an environment changed (`flag.changed`).
    FlagChanged,
    /// A flag change was asked for where approvals are required, and waits
    /// (`flag.change_requested`).
    FlagChangeRequested,
    /// A waiting flag change was approved by one approver (`flag.change_approved`).
    FlagChangeApproved,
    /// A waiting flag change was rejected (`flag.change_rejected`).
    FlagChangeRejected,
    /// A flag client key was made for an environment (`flag_key.created`).
    FlagKeyCreated,
    /// An alert's condition has held for its time (`alert.firing`).
    AlertFiring,
    /// A firing alert's condition no longer holds (`alert.resolved`).
    AlertResolved,
    /// A test notification was asked for one target (`notify.test`).
    NotifyTest,
    /// Dead deliveries were put back to be sent again (`notify.retried`).
    NotifyRetried,
    /// A chaos fault was injected into an environment's router (`chaos.injected`).
    ChaosInjected,
    /// A chaos fault ended: cleared by a person, or its duration ran out (`chaos.ended`).
    ChaosEnded,
    /// A flag client key was revoked (`flag_key.revoked`).
    FlagKeyRevoked,
    /// A canary rollout began a step (`canary.step`).
    CanaryStep,
    /// A canary step had too few requests to judge; the rollout holds (`canary.inconclusive`).
    CanaryInconclusive,
    /// A canary rollout ended before it took every request (`canary.aborted`).
    CanaryAborted,
    /// A canary rollout passed every step and takes every request (`canary.completed`).
    CanaryCompleted,
    /// A verified release waits for its user acceptance scenarios (`signoff.requested`).
    SignoffRequested,
    /// A tester passed one scenario (`signoff.passed`).
    SignoffPassed,
    /// A tester failed one scenario; the promotion fails (`signoff.failed`).
    SignoffFailed,
    /// Every scenario passed; the release is verified (`signoff.completed`).
    SignoffCompleted,
    /// A backup of an environment's data was taken (`backup.taken`).
    BackupTaken,
    /// A backup could not be taken (`backup.failed`).
    BackupFailed,
    /// A backup's restore drill proved it restorable (`backup.restorable`).
    BackupRestorable,
    /// A backup's restore drill found it not restorable (`backup.not_restorable`).
    BackupNotRestorable,
    /// A backup was restored into its environment (`backup.restored`).
    BackupRestored,
    /// Retention removed a backup's files (`backup.pruned`).
    BackupPruned,
    /// The server stopped during a backup, drill or restore (`backup.interrupted`).
    BackupInterrupted,
    /// A release's migration ran before its switch (`migration.passed`).
    MigrationPassed,
    /// A release's migration (or its check) failed; nothing switched (`migration.failed`).
    MigrationFailed,
    /// A load test ran: a baseline or a run on demand (`load.ran`; a gate's is a gate event).
    LoadRan,
}

impl EventKind {
    const NAMED: [(EventKind, &'static str); 65] = [
        (Self::GatePassed, "gate.passed"),
        (Self::GateFailed, "gate.failed"),
        (Self::Approved, "approval.approved"),
        (Self::Rejected, "approval.rejected"),
        (Self::ReleaseCreated, "release.created"),
        (Self::ReleasePruned, "release.pruned"),
        (Self::PromotionRequested, "promotion.requested"),
        (Self::PromotionOverride, "promotion.override"),
        (Self::PromotionAutoRefused, "promotion.auto_refused"),
        (Self::EnvironmentUnavailable, "environment.unavailable"),
        (Self::EnvironmentFrozen, "environment.frozen"),
        (Self::EnvironmentUnfrozen, "environment.unfrozen"),
        (Self::EnvironmentDrifted, "environment.drifted"),
        (Self::EnvironmentDriftCleared, "environment.drift_cleared"),
        (Self::EnvironmentUnhealthy, "environment.unhealthy"),
        (Self::InstanceCrashed, "instance.crashed"),
        (Self::InstanceRestarted, "instance.restarted"),
        (Self::InstanceGaveUp, "instance.gave_up"),
        (Self::TokenCreated, "token.created"),
        (Self::TokenRevoked, "token.revoked"),
        (Self::HostAdded, "host.added"),
        (Self::HostJoined, "host.joined"),
        (Self::HostRemoved, "host.removed"),
        (Self::DataRefreshed, "data.refreshed"),
        (Self::DataRefreshFailed, "data.refresh_failed"),
        (Self::ServerLeading, "server.leading"),
        (Self::EnvironmentCreated, "environment.created"),
        (Self::EnvironmentReady, "environment.ready"),
        (Self::EnvironmentCreateFailed, "environment.create_failed"),
        (Self::EnvironmentExtended, "environment.extended"),
        (Self::EnvironmentDeleted, "environment.deleted"),
        (Self::FlagChanged, "flag.changed"),
        (Self::FlagChangeRequested, "flag.change_requested"),
        (Self::FlagChangeApproved, "flag.change_approved"),
        (Self::FlagChangeRejected, "flag.change_rejected"),
        (Self::FlagKeyCreated, "flag_key.created"),
        (Self::AlertFiring, "alert.firing"),
        (Self::AlertResolved, "alert.resolved"),
        (Self::NotifyTest, "notify.test"),
        (Self::NotifyRetried, "notify.retried"),
        (Self::ChaosInjected, "chaos.injected"),
        (Self::ChaosEnded, "chaos.ended"),
        (Self::FlagKeyRevoked, "flag_key.revoked"),
        (Self::CanaryStep, "canary.step"),
        (Self::CanaryInconclusive, "canary.inconclusive"),
        (Self::CanaryAborted, "canary.aborted"),
        (Self::CanaryCompleted, "canary.completed"),
        (Self::SignoffRequested, "signoff.requested"),
        (Self::SignoffPassed, "signoff.passed"),
        (Self::SignoffFailed, "signoff.failed"),
        (Self::SignoffCompleted, "signoff.completed"),
        (Self::BackupTaken, "backup.taken"),
        (Self::BackupFailed, "backup.failed"),
        (Self::BackupRestorable, "backup.restorable"),
        (Self::BackupNotRestorable, "backup.not_restorable"),
        (Self::BackupRestored, "backup.restored"),
        (Self::BackupPruned, "backup.pruned"),
        (Self::BackupInterrupted, "backup.interrupted"),
        (Self::MigrationPassed, "migration.passed"),
        (Self::MigrationFailed, "migration.failed"),
        (Self::LoadRan, "load.ran"),
        (Self::SecretSet, "secret.set"),
        (Self::SecretRemoved, "secret.removed"),
        (Self::SignedIn, "session.signed_in"),
        (Self::SessionEnded, "session.ended"),
    ];

    /// Every kind, in a stable order (by family).
    pub fn all() -> Vec<EventKind> {
        let mut kinds: Vec<EventKind> = Self::NAMED.iter().map(|(k, _)| *k).collect();
        kinds.extend(PromotionState::ALL.map(Self::Promotion));
        kinds.sort_by_key(|k| (k.family(), k.to_string()));
        kinds
    }

    /// The family: the part before the dot (`promotion`, `environment`, ...).
    pub fn family(&self) -> &'static str {
        match self {
            Self::GatePassed | Self::GateFailed => "gate",
            Self::Approved | Self::Rejected => "approval",
            Self::ReleaseCreated | Self::ReleasePruned => "release",
            Self::PromotionRequested
            | Self::Promotion(_)
            | Self::PromotionOverride
            | Self::PromotionAutoRefused => "promotion",
            Self::EnvironmentUnavailable
            | Self::EnvironmentFrozen
            | Self::EnvironmentUnfrozen
            | Self::EnvironmentDrifted
            | Self::EnvironmentDriftCleared
            | Self::EnvironmentUnhealthy
            | Self::EnvironmentCreated
            | Self::EnvironmentReady
            | Self::EnvironmentCreateFailed
            | Self::EnvironmentExtended
            | Self::EnvironmentDeleted => "environment",
            Self::InstanceCrashed | Self::InstanceRestarted | Self::InstanceGaveUp => "instance",
            Self::TokenCreated | Self::TokenRevoked => "token",
            Self::SecretSet | Self::SecretRemoved => "secret",
            Self::SignedIn | Self::SessionEnded => "session",
            Self::HostAdded | Self::HostJoined | Self::HostRemoved => "host",
            Self::DataRefreshed | Self::DataRefreshFailed => "data",
            Self::ServerLeading => "server",
            Self::FlagChanged
            | Self::FlagChangeRequested
            | Self::FlagChangeApproved
            | Self::FlagChangeRejected => "flag",
            Self::FlagKeyCreated | Self::FlagKeyRevoked => "flag_key",
            Self::ChaosInjected | Self::ChaosEnded => "chaos",
            Self::NotifyTest | Self::NotifyRetried => "notify",
            Self::AlertFiring | Self::AlertResolved => "alert",
            Self::CanaryStep
            | Self::CanaryInconclusive
            | Self::CanaryAborted
            | Self::CanaryCompleted => "canary",
            Self::SignoffRequested
            | Self::SignoffPassed
            | Self::SignoffFailed
            | Self::SignoffCompleted => "signoff",
            Self::BackupTaken
            | Self::BackupFailed
            | Self::BackupRestorable
            | Self::BackupNotRestorable
            | Self::BackupRestored
            | Self::BackupPruned
            | Self::BackupInterrupted => "backup",
            Self::MigrationPassed | Self::MigrationFailed => "migration",
            Self::LoadRan => "load",
        }
    }

    /// Parses a dotted name.
    pub fn parse(s: &str) -> Option<Self> {
        if let Some((kind, _)) = Self::NAMED.iter().find(|(_, name)| *name == s) {
            return Some(*kind);
        }
        s.strip_prefix("promotion.")
            .and_then(PromotionState::parse)
            .map(Self::Promotion)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Promotion(state) => write!(f, "promotion.{state}"),
            kind => {
                let name = Self::NAMED
                    .iter()
                    .find(|(k, _)| k == kind)
                    .map_or("unknown", |(_, name)| name);
                f.write_str(name)
            }
        }
    }
}

impl Serialize for EventKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not an event kind")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_name() {
        for kind in EventKind::all() {
            let name = kind.to_string();
            assert_ne!(name, "unknown", "{kind:?}");
            assert_eq!(EventKind::parse(&name), Some(kind), "{name}");
            assert!(name.starts_with(&format!("{}.", kind.family())), "{name}");
        }
        assert_eq!(
            EventKind::Promotion(PromotionState::RolledBack).to_string(),
            "promotion.rolled_back"
        );
        assert_eq!(EventKind::parse("promotion.exploded"), None);
    }
}
