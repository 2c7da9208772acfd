//! What a promotion does to the data before its switch, in order: the backup
//! (`backup.before_promotion`), `migrate_check`, then `migrate`. Each runs from the release, in
//! the environment's sandbox, with `${DATA_URL}`; any failure fails the promotion before traffic
//! moves, with its output (secrets masked) in the gate, and the environment keeps serving the
//! release it had.

use std::sync::Arc;
use std::time::Duration;

use shipgate_core::EventKind;
use shipgate_store::{NewEvent, Promotion};

use crate::{Engine, EngineError, SYSTEM};

/// How long a migration (or its check) may run.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The numbers the migration runs are recorded under, beside the tests' (1, 2, …), so a server
/// killed meanwhile finds and stops them at its next start.
const CHECK_RUN: usize = 900;
const MIGRATE_RUN: usize = 901;

/// Why the switch must not happen: the gate that failed and what it saw.
pub(crate) struct Stopped {
    pub(crate) gate: &'static str,
    pub(crate) output: String,
    pub(crate) what: String,
}

impl Engine {
    /// For a promotion cut off while deploying: when it was in its migration, what that means
    /// for the data (the migration may have run partly) and the backup taken before it.
    pub(crate) async fn interrupted_migration(
        &self,
        p: &Promotion,
    ) -> Result<Option<String>, EngineError> {
        let Some(migrate) = self.config().app(&p.app).and_then(|a| a.migrate.clone()) else {
            return Ok(None);
        };
        if p.state != shipgate_core::PromotionState::Deploying {
            return Ok(None);
        }
        let gates = self.store.gates(p.id).await?;
        if gates
            .iter()
            .any(|g| g.name == "migrate" || g.name == "deploy")
        {
            return Ok(None);
        }
        let before = self
            .store
            .backups(Some(&p.app), Some(&p.env))
            .await?
            .into_iter()
            .find(|b| b.reason == format!("before promotion {}", p.id) && b.state == "restorable");
        let backup = match before {
            Some(b) => format!(
                "; the backup taken just before it is backup {} (shipgate backup restore {} --env {} --id {} --reason TEXT)",
                b.id, p.app, p.env, b.id
            ),
            None => String::new(),
        };
        Ok(Some(format!(
            "during its migration (`{migrate}`), which may have changed the database partly; nothing was switched{backup}"
        )))
    }

    /// The backup, the check and the migration `p` makes before its switch; None when all
    /// passed (or there were none).
    pub(crate) async fn before_switch(
        self: &Arc<Self>,
        p: &Promotion,
    ) -> Result<Option<Stopped>, EngineError> {
        let config = self.config();
        let Some(app) = config.app(&p.app) else {
            return Ok(None);
        };
        let release = format!("{}@{}", p.app, p.version);
        let started = self.clock.now();
        let before = app
            .backup
            .as_ref()
            .is_some_and(|b| b.before_promotion && b.envs.contains(&p.env));
        if before {
            let b = self
                .take_backup(&p.app, &p.env, &format!("before promotion {}", p.id))
                .await?;
            if b.state != "restorable" {
                return Ok(Some(Stopped {
                    gate: "backup",
                    output: format!(
                        "backup {} before the switch is {}: {}; nothing was changed (shipgate backup show {})",
                        b.id,
                        b.state,
                        b.error.as_deref().unwrap_or(""),
                        b.id
                    ),
                    what: format!(
                        "{release} was not switched to in {}: no restorable backup before it",
                        p.env
                    ),
                }));
            }
            let output = format!(
                "backup {} taken and proven restorable before the switch (restore it: shipgate backup restore {} --env {} --id {} --reason TEXT)",
                b.id, p.app, p.env, b.id
            );
            self.gate(p, "backup", true, output, started).await?;
        }
        let has_data = app
            .data
            .as_ref()
            .is_some_and(|d| d.locations.contains_key(&p.env));
        if !has_data {
            return Ok(None);
        }
        for (run, gate, command) in [
            (CHECK_RUN, "migrate_check", &app.migrate_check),
            (MIGRATE_RUN, "migrate", &app.migrate),
        ] {
            let Some(command) = command else { continue };
            let started = self.clock.now();
            let vars =
                self.template_vars(&p.app, &p.env, &p.version, p.digest.as_str(), Some(p.id));
            let mut exported = self.exported_env(&p.env, &vars);
            // The migration gets the secrets the release's instances will get (its database's
            // password, say): the versions are recorded now, and the instance gets the same.
            match self.secret_env(p).await {
                Ok(secrets) => exported.extend(secrets),
                Err(why) => {
                    return Ok(Some(Stopped {
                        gate,
                        output: why,
                        what: format!(
                            "{release} was not switched to in {}: a secret is missing",
                            p.env
                        ),
                    }));
                }
            }
            let command = shipgate_core::template::expand(command, &vars);
            let ran = self
                .run_recorded_test(p, run - 1, &command, &exported, MIGRATE_TIMEOUT)
                .await?;
            let output = format!("`{command}` {}\n{}", ran.verdict, ran.output);
            let (kind, message) = if ran.passed {
                (
                    EventKind::MigrationPassed,
                    format!(
                        "{gate} of {release} passed in {}: `{command}` {}",
                        p.env, ran.verdict
                    ),
                )
            } else {
                (
                    EventKind::MigrationFailed,
                    format!(
                        "{gate} of {release} failed in {}: `{command}` {}; nothing was switched",
                        p.env, ran.verdict
                    ),
                )
            };
            self.store
                .append_event(NewEvent {
                    actor: SYSTEM.into(),
                    kind,
                    app: Some(p.app.to_string()),
                    env: Some(p.env.to_string()),
                    promotion_id: Some(p.id),
                    message: self.redactor(&p.env).redact(&message),
                    data: serde_json::json!({ "version": p.version, "gate": gate }),
                })
                .await?;
            if !ran.passed {
                let what = if gate == "migrate_check" {
                    format!(
                        "{release} is not compatible with the release running in {} (its migrate_check {})",
                        p.env, ran.verdict
                    )
                } else {
                    format!(
                        "{release}'s migration failed in {} before its switch",
                        p.env
                    )
                };
                return Ok(Some(Stopped { gate, output, what }));
            }
            self.gate(p, gate, true, output, started).await?;
        }
        Ok(None)
    }
}
