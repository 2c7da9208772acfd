//! Secrets: values sealed in the store per environment (XChaCha20-Poly1305 under the server's
//! key), every version kept. A deploy records which versions its instances got, so a restart
//! starts them with the same values and a rollback gets the values its release had. A new
//! version reaches instances only through a deploy (`secret set --deploy`, or `redeploy`); until
//! then the drift scan says the config changed and is not deployed.
//!
//! Values are read from stdin by the CLI and from the body by the API, and never leave the
//! server except into the environments of the processes they are for; every text shipgate
//! records passes through the environment's redactor, which knows them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use shipgate_api::answers::SecretInfo;
use shipgate_core::config::{Config, SecretRef};
use shipgate_core::{EnvName, Grant, PromotionKind, Role};
use shipgate_store::age::{AgeIdentity, parse_env_file};
use shipgate_store::seal::{KeySource, SecretsKey};
use shipgate_store::{DeployedSecret, NewSecret, Promotion, SecretVersion, Store};

use crate::{Engine, EngineError, locked};

/// The server's secrets key, its age identity, and the values opened so far (by environment),
/// which the redactors replace.
pub(crate) struct Vault {
    key: SecretsKey,
    source: KeySource,
    age: AgeIdentity,
    opened: Mutex<HashMap<EnvName, BTreeMap<String, String>>>,
}

fn aad(env: &EnvName, name: &str, version: i64) -> Vec<u8> {
    format!("shipgate secret\0{env}\0{name}\0{version}").into_bytes()
}

impl Vault {
    /// Loads the key (from `server.secrets_key_env` or the data dir's key file, made at first
    /// start) and the age identity, and refuses a key other than the one the store's secrets
    /// were sealed with, saying which key is missing.
    pub(crate) async fn open(config: &Config, store: &dyn Store) -> Result<Vault, EngineError> {
        let dir = &config.server.data_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| EngineError::Secrets(format!("making {}: {e}", dir.display())))?;
        let (key, source) =
            shipgate_store::seal::load_or_create(dir, config.server.secrets_key_env.as_deref())
                .map_err(EngineError::Secrets)?;
        let age = AgeIdentity::load_or_create(dir).map_err(EngineError::Secrets)?;
        if let Some(known) = store.secrets_key_id().await?
            && known != key.id()
        {
            return Err(EngineError::Secrets(format!(
                "the secrets in the store are sealed with key {known}, but this server's key ({source}) is {}: give this server the key the store was sealed with (the same `server.secrets_key_env` value as the other servers of this database, or the secrets.key file of the server that made them)",
                key.id()
            )));
        }
        Ok(Vault {
            key,
            source,
            age,
            opened: Mutex::default(),
        })
    }

    fn seal(&self, env: &EnvName, name: &str, version: i64, value: &str) -> Vec<u8> {
        self.key.seal(value.as_bytes(), &aad(env, name, version))
    }

    fn open_version(&self, s: &SecretVersion) -> Result<Option<String>, String> {
        let Some(sealed) = &s.sealed else {
            return Ok(None);
        };
        let plain = self
            .key
            .open(sealed, &aad(&s.env, &s.name, s.version))
            .map_err(|e| {
                format!(
                    "secret {} of {} (version {}) could not be opened with this server's key ({}): {e}",
                    s.name, s.env, s.version, self.source
                )
            })?;
        let value = String::from_utf8(plain)
            .map_err(|_| format!("secret {} of {} is not text", s.name, s.env))?;
        locked(&self.opened)
            .entry(s.env.clone())
            .or_default()
            .insert(format!("{}#{}", s.name, s.version), value.clone());
        Ok(Some(value))
    }

    /// The values opened so far for `env`, as `(name, value)`, for its redactor.
    pub(crate) fn known(&self, env: &EnvName) -> Vec<(String, String)> {
        locked(&self.opened)
            .get(env)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.split('#').next().unwrap_or(k).to_owned(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The newest version of each secret, removed ones included (as None values).
fn newest(versions: &[SecretVersion]) -> BTreeMap<String, &SecretVersion> {
    let mut out = BTreeMap::new();
    for v in versions {
        out.insert(v.name.clone(), v);
    }
    out
}

impl Engine {
    fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    /// The recipient `secrets_file`s are encrypted for (`age -r`).
    pub fn secrets_recipient(&self) -> String {
        self.vault().age.recipient()
    }

    /// Seals a token the server keeps for later (a provider's refresh token) with the secrets
    /// key, bound to `purpose` (what it is, and whose): a sealed value moved to another purpose
    /// does not open. Claims the key in the store first, as a secret's first write does.
    pub async fn seal_token(&self, purpose: &str, plain: &str) -> Result<Vec<u8>, EngineError> {
        let key_id = self.store.claim_secrets_key(&self.vault().key.id()).await?;
        if key_id != self.vault().key.id() {
            return Err(EngineError::Secrets(format!(
                "the store's secrets are sealed with key {key_id}, not this server's {}",
                self.vault().key.id()
            )));
        }
        Ok(self.vault().key.seal(plain.as_bytes(), purpose.as_bytes()))
    }

    /// Opens what [`Engine::seal_token`] sealed for `purpose`; `None` when it does not open
    /// (another key, another purpose, or altered).
    pub fn open_token(&self, purpose: &str, sealed: &[u8]) -> Option<String> {
        let plain = self.vault().key.open(sealed, purpose.as_bytes()).ok()?;
        String::from_utf8(plain).ok()
    }

    /// Who may write the secrets of `env`: admins, and its deployers when
    /// `secrets.deployers_write`.
    fn may_write_secrets(&self, grant: &Grant, env: &EnvName) -> Result<(), EngineError> {
        let deployers = self.config().secrets.deployers_write;
        if grant.has_role(Role::Admin, Some(env))
            || (deployers && grant.has_role(Role::Deployer, Some(env)))
        {
            return Ok(());
        }
        let who = if deployers {
            "an admin, or a deployer of this environment"
        } else {
            "an admin (deployers too with `[secrets] deployers_write = true`)"
        };
        Err(EngineError::SecretsForbidden(format!(
            "token `{}` may not set or remove the secrets of {env}: that takes {who}",
            grant.name
        )))
    }

    /// Sets a new version of `name` in `env`, and with `deploy` rolls the live releases whose
    /// variables use it through `env`'s gates (their promotions are returned).
    pub async fn set_secret(
        self: &Arc<Self>,
        env: &EnvName,
        name: &str,
        value: &str,
        grant: &Grant,
        deploy: bool,
    ) -> Result<(SecretVersion, Vec<Promotion>), EngineError> {
        self.known_env(env)?;
        check_name(name)?;
        if value.is_empty() || value.contains('\0') {
            return Err(EngineError::SecretRefused(format!(
                "the value of {name} is {}: send the value on stdin (shipgate secret set {env} {name} < FILE)",
                if value.is_empty() {
                    "empty"
                } else {
                    "holding a NUL character, which no process environment can carry"
                }
            )));
        }
        self.may_write_secrets(grant, env)?;
        let set = self
            .write_secret(
                env,
                name,
                Some(value),
                "shipgate secret set",
                grant.person(),
            )
            .await?;
        let promotions = if deploy {
            self.deploy_secret(env, name, grant).await?
        } else {
            Vec::new()
        };
        Ok((set, promotions))
    }

    /// Removes `name` from `env`: its versions stay for rollbacks; the next deploy of a release
    /// that uses it fails until it is set again.
    pub async fn remove_secret(
        self: &Arc<Self>,
        env: &EnvName,
        name: &str,
        grant: &Grant,
    ) -> Result<SecretVersion, EngineError> {
        self.known_env(env)?;
        self.may_write_secrets(grant, env)?;
        let versions = self.store.secrets(env).await?;
        if newest(&versions)
            .get(name)
            .is_none_or(|v| v.sealed.is_none())
        {
            return Err(EngineError::NoSuchSecret(format!(
                "{env} has no secret {name} (shipgate secret list {env} lists them)"
            )));
        }
        self.write_secret(env, name, None, "shipgate secret rm", grant.person())
            .await
    }

    async fn write_secret(
        &self,
        env: &EnvName,
        name: &str,
        value: Option<&str>,
        source: &str,
        actor: &str,
    ) -> Result<SecretVersion, EngineError> {
        let key_id = self.store.claim_secrets_key(&self.vault().key.id()).await?;
        if key_id != self.vault().key.id() {
            return Err(EngineError::Secrets(format!(
                "the store's secrets are sealed with key {key_id}, not this server's {}",
                self.vault().key.id()
            )));
        }
        let version = self
            .store
            .secrets(env)
            .await?
            .iter()
            .filter(|v| v.name == name)
            .map(|v| v.version)
            .max()
            .unwrap_or(0)
            + 1;
        let sealed = value.map(|v| self.vault().seal(env, name, version, v));
        let set = self
            .store
            .set_secret(
                NewSecret {
                    env: env.clone(),
                    name: name.to_owned(),
                    version,
                    sealed,
                    key_id,
                    source: source.to_owned(),
                },
                actor,
            )
            .await?;
        Ok(set)
    }

    /// Promotes the live release of each app whose variables use `name` of `env` again, so the
    /// new version reaches its instances through the environment's gates.
    async fn deploy_secret(
        self: &Arc<Self>,
        env: &EnvName,
        name: &str,
        grant: &Grant,
    ) -> Result<Vec<Promotion>, EngineError> {
        let config = self.config();
        let uses = config.environment(env).is_some_and(|e| {
            e.secret_vars
                .values()
                .any(|r| r.env == *env && r.name == name)
        });
        let mut promotions = Vec::new();
        if !uses {
            return Ok(promotions);
        }
        for app in &config.apps {
            let Some(live) = self.live_record(&app.name, env).await? else {
                continue;
            };
            grant
                .check(shipgate_core::Action::Promote, Some(env))
                .map_err(|d| {
                    EngineError::SecretsForbidden(format!(
                        "{d}; the secret was set, deploy it with shipgate redeploy {} --env {env}",
                        app.name
                    ))
                })?;
            let release = self
                .registered(&shipgate_core::ReleaseRef {
                    app: app.name.clone(),
                    version: live.version.clone(),
                })
                .await?;
            promotions.push(
                self.request(release, env, PromotionKind::Promote, grant.person(), None)
                    .await?,
            );
        }
        Ok(promotions)
    }

    /// The secrets of `env`, newest version of each, never a value.
    pub async fn secret_list(&self, env: &EnvName) -> Result<Vec<SecretInfo>, EngineError> {
        self.known_env(env)?;
        let versions = self.store.secrets(env).await?;
        Ok(newest(&versions)
            .into_values()
            .filter(|v| v.sealed.is_some())
            .map(|v| self.secret_info(v))
            .collect())
    }

    /// A version of a secret as the API shows it: name, version, who, when, from where, and
    /// the variables of its environment that use it; never its value.
    pub fn secret_info(&self, v: &SecretVersion) -> SecretInfo {
        let config = self.config();
        let used_by = config
            .environment(&v.env)
            .map(|e| {
                e.secret_vars
                    .iter()
                    .filter(|(_, r)| r.env == v.env && r.name == v.name)
                    .map(|(var, _)| var.clone())
                    .collect()
            })
            .unwrap_or_default();
        SecretInfo {
            env: v.env.clone(),
            name: v.name.clone(),
            version: v.version,
            set_by: v.set_by.clone(),
            set_at: v.set_at,
            source: v.source.clone(),
            used_by,
            removed: v.sealed.is_none(),
        }
    }

    fn known_env(&self, env: &EnvName) -> Result<(), EngineError> {
        if self.config().environment(env).is_none() {
            return Err(EngineError::UnknownEnvironment(env.to_string()));
        }
        Ok(())
    }

    /// The secret variables of promotion `p`'s instances, with the versions they get: those it
    /// got before (a restart), else those of the promotion it returns to (a rollback), else
    /// the newest. Recorded before the instance starts. An error says which secret is missing.
    pub(crate) async fn secret_env(
        &self,
        p: &Promotion,
    ) -> Result<BTreeMap<String, String>, String> {
        let config = self.config();
        let refs: BTreeMap<String, SecretRef> = config
            .environment(&p.env)
            .map(|e| e.secret_vars.clone())
            .unwrap_or_default();
        if refs.is_empty() {
            return Ok(BTreeMap::new());
        }
        let read = |e: shipgate_store::StoreError| format!("could not read its secrets: {e}");
        let mut pinned = self.store.deployed_secrets(p.id).await.map_err(read)?;
        // Healing puts the live release back as recorded: with the secrets it had.
        if pinned.is_empty()
            && p.kind == PromotionKind::Redeploy
            && let Ok(Some(live)) = self.live_record(&p.app, &p.env).await
        {
            pinned = self
                .store
                .deployed_secrets(live.promotion_id)
                .await
                .map_err(read)?;
        }
        if pinned.is_empty() && p.kind == PromotionKind::Rollback {
            // The promotion the rollback returns to, as the rollback chose it (what is live is
            // still the release it replaces).
            if let Ok(Some(live)) = self.live_record(&p.app, &p.env).await
                && let Ok(Ok(back_to)) = self
                    .rollback_target(&p.app, &p.env, &live, Some(&p.version))
                    .await
            {
                pinned = self
                    .store
                    .deployed_secrets(back_to.id)
                    .await
                    .map_err(read)?;
            }
        }
        let by_env = self
            .versions_of(refs.values().map(|r| &r.env))
            .await
            .map_err(read)?;
        let mut out = BTreeMap::new();
        let mut deployed = Vec::new();
        for (var, r) in &refs {
            let versions = &by_env[&r.env];
            let want = pinned
                .iter()
                .find(|d| d.var == *var && d.env == r.env && d.name == r.name)
                .and_then(|d| {
                    versions
                        .iter()
                        .find(|v| v.name == r.name && v.version == d.version)
                });
            let chosen = match want {
                Some(v) => Some(v),
                None => newest(versions).get(&r.name).copied(),
            };
            let value = match chosen {
                Some(v) => self.vault().open_version(v)?,
                None => None,
            };
            let (Some(v), Some(value)) = (chosen, value) else {
                return Err(format!(
                    "variable {var} is the secret {} of {}, which is not set: set it with `shipgate secret set {} {}` (the value on stdin), then promote again",
                    r.name, r.env, r.env, r.name
                ));
            };
            out.insert(var.clone(), value);
            deployed.push(DeployedSecret {
                var: var.clone(),
                env: r.env.clone(),
                name: r.name.clone(),
                version: v.version,
            });
        }
        self.store
            .record_deployed_secrets(p.id, &deployed)
            .await
            .map_err(|e| format!("could not record its secrets' versions: {e}"))?;
        Ok(out)
    }

    /// Every version of the secrets of each of `envs`, each environment read once.
    async fn versions_of(
        &self,
        envs: impl Iterator<Item = &EnvName>,
    ) -> Result<HashMap<EnvName, Vec<SecretVersion>>, shipgate_store::StoreError> {
        let mut by_env = HashMap::new();
        for env in envs {
            if !by_env.contains_key(env) {
                by_env.insert(env.clone(), self.store.secrets(env).await?);
            }
        }
        Ok(by_env)
    }

    /// The secrets whose newest version is not the one promotion `id`'s instances got, as
    /// "not deployed" lines (name and versions only).
    pub(crate) async fn undeployed_secrets(&self, id: shipgate_core::PromotionId) -> Vec<String> {
        let Ok(deployed) = self.store.deployed_secrets(id).await else {
            return Vec::new();
        };
        let Ok(by_env) = self.versions_of(deployed.iter().map(|d| &d.env)).await else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for d in deployed {
            let newest = newest(&by_env[&d.env])
                .get(&d.name)
                .map(|v| (v.version, v.sealed.is_some()));
            match newest {
                Some((version, true)) if version != d.version => out.push(format!(
                    "secret {} of {} is at version {version}, the running instance has version {}",
                    d.name, d.env, d.version
                )),
                Some((_, false)) => out.push(format!(
                    "secret {} of {} was removed; the running instance still has version {}",
                    d.name, d.env, d.version
                )),
                _ => {}
            }
        }
        out
    }

    /// Each secret variable of `env`: its secret's newest version, when and by whom it was
    /// set, and the version the live release (promotion `live`) got; never a value.
    pub(crate) async fn secret_versions(
        &self,
        env: &EnvName,
        live: Option<shipgate_core::PromotionId>,
    ) -> BTreeMap<String, String> {
        let config = self.config();
        let Some(e) = config.environment(env) else {
            return BTreeMap::new();
        };
        let deployed = match live {
            Some(id) => self.store.deployed_secrets(id).await.unwrap_or_default(),
            None => Vec::new(),
        };
        let by_env = self
            .versions_of(e.secret_vars.values().map(|r| &r.env))
            .await
            .unwrap_or_default();
        let mut out = BTreeMap::new();
        for (var, r) in &e.secret_vars {
            let versions = by_env.get(&r.env).map_or(&[][..], Vec::as_slice);
            let newest = newest(versions).get(&r.name).copied();
            let mut line = match newest {
                Some(v) if v.sealed.is_some() => format!(
                    "{} version {} (set {} by {})",
                    r.name, v.version, v.set_at, v.set_by
                ),
                Some(v) => format!("{} removed (version {})", r.name, v.version),
                None => format!("{} not set", r.name),
            };
            if let Some(d) = deployed.iter().find(|d| d.var == *var) {
                line.push_str(&format!("; the live release has version {}", d.version));
            }
            out.insert(var.clone(), line);
        }
        out
    }

    /// Reads each environment's `secrets_file` (age, for the server's recipient): a name whose
    /// value differs from its newest version becomes a new version. At start and at reload.
    pub async fn import_secrets_files(&self) -> Result<Vec<String>, EngineError> {
        let config = self.config();
        let mut said = Vec::new();
        for env in &config.environments {
            let Some(path) = &env.secrets_file else {
                continue;
            };
            let data = std::fs::read(path).map_err(|e| {
                EngineError::Secrets(format!("reading secrets_file {}: {e}", path.display()))
            })?;
            let plain = self.vault().age.decrypt(&data).map_err(|e| {
                EngineError::Secrets(format!(
                    "secrets_file {} of {}: {e}",
                    path.display(),
                    env.name
                ))
            })?;
            let text = String::from_utf8(plain).map_err(|_| {
                EngineError::Secrets(format!(
                    "secrets_file {} is not text: write NAME=value lines, then encrypt them with age",
                    path.display()
                ))
            })?;
            let lines = parse_env_file(&text).map_err(|e| {
                EngineError::Secrets(format!("secrets_file {}: {e}", path.display()))
            })?;
            let versions = self.store.secrets(&env.name).await?;
            let newest = newest(&versions);
            for (name, value) in lines {
                let same = match newest.get(&name) {
                    Some(v) => {
                        self.vault()
                            .open_version(v)
                            .map_err(EngineError::Secrets)?
                            .as_deref()
                            == Some(value.as_str())
                    }
                    None => false,
                };
                if same {
                    continue;
                }
                let source = format!(
                    "secrets_file {}",
                    path.file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default()
                );
                let set = self
                    .write_secret(&env.name, &name, Some(&value), &source, crate::SYSTEM)
                    .await?;
                said.push(format!(
                    "secret {name} of {} is now version {} ({source})",
                    env.name, set.version
                ));
            }
        }
        Ok(said)
    }
}

/// A secret's name: what a variable may be called.
fn check_name(name: &str) -> Result<(), EngineError> {
    if name.len() <= 128 && shipgate_core::config::is_variable_name(name) {
        Ok(())
    } else {
        Err(EngineError::SecretRefused(format!(
            "`{name}` is not a secret name: use letters, digits and `_`, not starting with a digit (DB_PASSWORD)"
        )))
    }
}
