//! `shipgate diff` and `require.parity`: the facts of each environment gathered (the config's
//! `facts` commands run in the live release) and, where the app's data is declared in both,
//! the schemas of their databases read, then compared by `shipgate_core::parity`.

pub use shipgate_api::parity::Diff;

use std::collections::BTreeMap;
use std::time::Duration;

use shipgate_core::config::DataLocation;
use shipgate_core::parity::{Observed, compare};
use shipgate_core::template::expand;
use shipgate_core::{AppName, EnvName};

use crate::{Engine, EngineError};

/// How long one fact command may run.
const FACT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long reading one database's schema may take, connecting included.
const SCHEMA_TIMEOUT: Duration = Duration::from_secs(30);

/// The schema of the database at `location`, or why it could not be read (which becomes an
/// item of the diff rather than failing it).
async fn schema_at(location: &DataLocation) -> Result<BTreeMap<String, String>, String> {
    match tokio::time::timeout(SCHEMA_TIMEOUT, shipgate_mask::schema::schema_of(location)).await {
        Ok(read) => read.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "{location} did not answer within {}s",
            SCHEMA_TIMEOUT.as_secs()
        )),
    }
}

impl Engine {
    /// Compares `app` in `a` and `b`, running its facts in both.
    pub async fn diff(&self, app: &AppName, a: &EnvName, b: &EnvName) -> Result<Diff, EngineError> {
        let config = self.config();
        let app_config = config
            .app(app)
            .ok_or_else(|| EngineError::UnknownApp(app.to_string()))?;
        let env_of = |e: &EnvName| {
            config
                .environment(e)
                .ok_or_else(|| EngineError::UnknownEnvironment(e.to_string()))
        };
        let (ea, eb) = (env_of(a)?, env_of(b)?);
        // Schemas are compared only where the app's data is declared in both.
        let data = app_config.data.as_ref();
        let locations = data.and_then(|d| Some((d.locations.get(a)?, d.locations.get(b)?)));
        let schemas = async {
            match locations {
                Some((la, lb)) => Some(tokio::join!(schema_at(la), schema_at(lb))),
                None => None,
            }
        };
        let (oa, ob, schemas) = tokio::join!(self.observe(app, a), self.observe(app, b), schemas);
        let (mut oa, mut ob) = (oa?, ob?);
        if let Some((sa, sb)) = schemas {
            (oa.schema, ob.schema) = (Some(sa), Some(sb));
        }
        let items = compare(app_config, (ea, &oa), (eb, &ob));
        Ok(Diff {
            unexpected: items.iter().any(|i| i.class.is_unexpected()),
            app: app.clone(),
            a: a.clone(),
            b: b.clone(),
            items,
        })
    }

    /// The live release of `app` in `env` and the output of each of its facts there. Facts
    /// describe the environment (runtime, schema, flags): they run in the live release's
    /// directory, or in the app's data dir there while nothing is live yet; always in the
    /// environment's sandbox, as every process shipgate starts for an environment.
    async fn observe(&self, app: &AppName, env: &EnvName) -> Result<Observed, EngineError> {
        let live = self.live_record(app, env).await?;
        let declared = self
            .config()
            .app(app)
            .map(|a| a.facts.clone())
            .unwrap_or_default();
        let (mut vars, dir) = match &live {
            Some(l) => (
                self.template_vars(app, env, &l.version, l.digest.as_str(), None),
                self.artifacts.release_dir(&l.digest),
            ),
            None => {
                let url = self.env_url(env);
                let vars = BTreeMap::from([
                    ("APP".to_owned(), app.to_string()),
                    ("ENV".to_owned(), env.to_string()),
                    ("URL".to_owned(), url),
                    (
                        "DATA_DIR".to_owned(),
                        self.app_data_dir(app, env).display().to_string(),
                    ),
                ]);
                let dir = self.app_data_dir(app, env);
                std::fs::create_dir_all(&dir).map_err(|e| {
                    EngineError::DataPlane(format!("making {}: {e}", dir.display()))
                })?;
                (vars, dir)
            }
        };
        if let Some(i) = self.live_instance(&(app.clone(), env.clone())) {
            vars.insert("PORT".to_owned(), i.target.addr.port().to_string());
        }
        let exported = self.exported_env(env, &vars);
        let redactor = self.redactor(env);
        let sandbox = self.sandbox_for(app, env);
        let mut facts = BTreeMap::new();
        for (name, command) in declared {
            let command = expand(&command, &vars);
            let run =
                crate::verify::run_test(&command, &dir, &exported, FACT_TIMEOUT, sandbox.as_ref())
                    .await;
            let value = if run.passed {
                run.output.trim().to_owned()
            } else {
                format!("(failed: {}) {}", run.verdict, run.output.trim())
            };
            facts.insert(name, redactor.redact(&value));
        }
        let flags = self
            .flags_of(env)
            .await?
            .flags
            .into_iter()
            .filter(|(_, (owner, _, _))| owner == app)
            .map(|(key, (_, _, state))| (key, state.to_string()))
            .collect();
        let image = match &live {
            Some(l) => self
                .artifacts
                .image_record(&l.digest)
                .ok()
                .flatten()
                .and_then(|r| r.image_config().ok())
                .map(|c| shipgate_core::parity::image_items(l.digest.as_str(), &c))
                .unwrap_or_default(),
            None => BTreeMap::new(),
        };
        let secrets = self
            .secret_versions(env, live.as_ref().map(|l| l.promotion_id))
            .await;
        Ok(Observed {
            live: live.map(|l| (l.version, l.digest)),
            facts,
            flags,
            image,
            schema: None,
            secrets,
        })
    }
}
