//! On-demand environments: made from a `[templates.NAME]` of the config, given a port of the
//! template's range, held by whoever asked for them, and deleted when their time is up. The
//! rules (what such an environment is, who may still have one, when it expires) live here;
//! the engine acts on them.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use jiff::Timestamp;

use crate::config::{Config, DataLocation, EnvironmentConfig, Limits, VerifyConfig};
use crate::{AppName, Duration, EnvName};

/// The folder of the data dir that on-demand environments' SQLite data lives in, one folder
/// per environment.
pub const DATA_FOLDER: &str = "on-demand";

/// What a PostgreSQL database of an on-demand environment is named after its source's:
/// `shop` becomes `shop__od_pr_123`, so that leftovers are known by name.
pub const DATABASE_MARK: &str = "__od_";

/// `[templates.NAME]`: how to make an on-demand environment.
#[derive(Debug, Clone)]
pub struct TemplateConfig {
    /// The template's name (`--template preview`).
    pub name: EnvName,
    /// The configured environment whose vars, requirements, verification, limits and hosts an
    /// environment made from this template takes.
    pub from: EnvName,
    /// How long an environment lives after its last use (or its creation, see `ttl_from`).
    pub ttl: Duration,
    /// What the TTL counts from.
    pub ttl_from: TtlFrom,
    /// How many environments of this template may exist at once.
    pub max: usize,
    /// How many of them one requester may hold at once (None: as many as `max`).
    pub max_per_requester: Option<usize>,
    /// The ports environments of this template listen on, one each.
    pub listen_range: PortRange,
    /// Where every environment of this template is also reached by name (`host_suffix`).
    pub listen: Option<SocketAddr>,
    /// `pr-123` + this (`.preview.localhost`) is the host name `pr-123` is reached by on
    /// `listen`.
    pub host_suffix: Option<String>,
    /// The environment whose data seeds a new one, masked (`data = { from = "production",
    /// masked = true }`).
    pub data_from: Option<EnvName>,
    /// Variables over those of `from`.
    pub vars: BTreeMap<String, String>,
    /// Its own variables that are secrets of `from` (`{ secret = "NAME" }`).
    pub secret_vars: BTreeMap<String, crate::config::SecretRef>,
    /// `secrets`: the secret variables of `from` its environments get too (default none: a
    /// preview never holds a staging password unless the template says so).
    pub secrets: Vec<String>,
    /// Limits over those of `from`.
    pub limits: Limits,
    /// Hosts instead of those of `from` (None: those of `from`).
    pub hosts: Option<Vec<String>>,
    /// Verification instead of that of `from` (None: that of `from`).
    pub verify: Option<VerifyConfig>,
}

/// What an on-demand environment's TTL counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TtlFrom {
    /// Its last use: a deploy into it, or a request through its router.
    LastUse,
    /// Its creation: using it does not keep it.
    Creation,
}

impl TtlFrom {
    /// Parses `ttl_from`.
    pub fn parse(s: &str) -> Result<TtlFrom, String> {
        match s {
            "last_use" => Ok(Self::LastUse),
            "creation" => Ok(Self::Creation),
            other => Err(format!(
                "`ttl_from = \"{other}\"`: write \"last_use\" (the default: a deploy or a request keeps it) or \"creation\""
            )),
        }
    }
}

/// `listen_range = "127.0.0.1:9100-9199"`: an address and an inclusive range of ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// The address every port is on.
    pub ip: IpAddr,
    /// The first port.
    pub first: u16,
    /// The last port (included).
    pub last: u16,
}

impl PortRange {
    /// Parses `IP:FIRST-LAST`.
    pub fn parse(s: &str) -> Result<PortRange, String> {
        let bad = || {
            format!(
                "`{s}` is not a port range: write IP:FIRST-LAST, for example \"127.0.0.1:9100-9199\""
            )
        };
        let (ip, ports) = s.rsplit_once(':').ok_or_else(bad)?;
        let (first, last) = ports.split_once('-').ok_or_else(bad)?;
        let ip: IpAddr = ip
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| bad())?;
        let (first, last): (u16, u16) = (
            first.parse().map_err(|_| bad())?,
            last.parse().map_err(|_| bad())?,
        );
        if first == 0 || first > last {
            return Err(format!(
                "`{s}`: the range must run from a port above 0 up to one at least as high"
            ));
        }
        Ok(PortRange { ip, first, last })
    }

    /// Whether `addr` is one of the range's addresses.
    pub fn holds(&self, addr: SocketAddr) -> bool {
        (self.first..=self.last).contains(&addr.port())
            && (addr.ip() == self.ip || addr.ip().is_unspecified() || self.ip.is_unspecified())
    }

    /// Each address of the range, in order.
    pub fn addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        (self.first..=self.last).map(|p| SocketAddr::new(self.ip, p))
    }

    /// How many ports it holds.
    pub fn len(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    /// Never true: a range holds at least one port.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", SocketAddr::new(self.ip, self.first), self.last)
    }
}

impl TemplateConfig {
    /// The environment `name`, made from this template over `base` (the template's `from`),
    /// listening on `listen`. It is a leaf: nothing comes after it and it comes after nothing,
    /// so any release may enter it and being verified here proves nothing elsewhere.
    pub fn environment(
        &self,
        base: &EnvironmentConfig,
        name: EnvName,
        listen: SocketAddr,
    ) -> EnvironmentConfig {
        let mut env = base.clone();
        env.name = name;
        env.template = Some(self.name.clone());
        env.after = None;
        env.auto = false;
        env.mirrors = None;
        env.front = None;
        env.listen = listen;
        // A preview serves its testers: a new release there takes every request at once.
        env.canary = None;
        // Nothing is promoted on from a preview, so nobody signs it off, and it needs no
        // sign-off elsewhere to be entered.
        env.signoff = None;
        env.require.signoff = None;
        // Its data is a copy made for it: nothing to keep.
        env.require.backup_within = None;
        // Its dependency proxies' addresses are the base's own: it connects to the
        // dependencies through the base's proxies, or directly, as its vars say.
        env.dependencies.clear();
        // Soak is time spent in the environment before: a leaf has none.
        env.require.soak = None;
        // No secret of the base comes along unless the template names it.
        let declared: Vec<&String> = base.secrets.iter().collect();
        env.vars.retain(|name, value| {
            self.secrets.contains(name)
                || !crate::parity::is_secret(name, &[Some(value)], &declared)
        });
        env.vars.extend(self.vars.clone());
        // Secrets too: only those the template names (still the base's), and its own.
        env.secret_vars
            .retain(|name, _| self.secrets.contains(name));
        env.secret_vars.extend(self.secret_vars.clone());
        env.secrets_file = None;
        env.limits = base.limits.overridden_by(self.limits);
        if let Some(hosts) = &self.hosts {
            env.hosts.clone_from(hosts);
            env.hosts_required = env.hosts.len();
        }
        match &self.verify {
            Some(verify) => env.verify = verify.clone(),
            // A preview is for its testers: no load test of the base's unless the template
            // asks for one.
            None => env.verify.load = None,
        }
        env
    }

    /// The host name `env` is reached by on the template's `listen`.
    pub fn host_name(&self, env: &EnvName) -> Option<String> {
        self.host_suffix.as_ref().map(|s| format!("{env}{s}"))
    }

    /// The environment a request for `host` (its `Host` header, port or not) names.
    pub fn env_of_host(&self, host: &str) -> Option<EnvName> {
        let suffix = self.host_suffix.as_ref()?;
        let host = match host.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => host,
        };
        let name = host.to_ascii_lowercase();
        EnvName::parse(name.strip_suffix(suffix.as_str())?).ok()
    }
}

/// Where an on-demand environment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum OnDemandState {
    /// Being made: its data seeded, its releases deployed and tested.
    Creating,
    /// Made, and everything asked for passed.
    Ready,
    /// Made, but a seed, deploy or test failed (it stays for a look until deleted or expired).
    Failed,
    /// Being deleted; a crash meanwhile is finished by the next reaper pass.
    Deleting,
}

impl OnDemandState {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Ready => "ready",
            Self::Failed => "failed",
            Self::Deleting => "deleting",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Result<Self, String> {
        [Self::Creating, Self::Ready, Self::Failed, Self::Deleting]
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a state of an on-demand environment"))
    }
}

impl std::fmt::Display for OnDemandState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where `app`'s data lives in on-demand environment `env` of `template`: beside the data of
/// the template's `from` (or of `data.from`) but its own: a SQLite file of its own folder in
/// the data dir, or a database of its own on the same PostgreSQL server.
pub fn data_location(
    config: &Config,
    template: &TemplateConfig,
    app: &AppName,
    env: &EnvName,
) -> Option<DataLocation> {
    let data = config.app(app)?.data.as_ref()?;
    let source = data.locations.get(template.data_from.as_ref()?)?;
    let beside = data.locations.get(&template.from).unwrap_or(source);
    Some(match beside {
        DataLocation::Sqlite(_) => DataLocation::Sqlite(
            config
                .server
                .data_dir
                .join(DATA_FOLDER)
                .join(env.as_str())
                .join(format!("{app}.db")),
        ),
        DataLocation::Postgres(url) => {
            let (server, db) = url.rsplit_once('/')?;
            let (db, query) = db.split_once('?').map_or((db, ""), |(d, q)| (d, q));
            let own = format!("{db}{DATABASE_MARK}{}", env.as_str().replace('-', "_"));
            let query = if query.is_empty() {
                String::new()
            } else {
                format!("?{query}")
            };
            DataLocation::Postgres(format!("{server}/{own}{query}"))
        }
    })
}

impl Config {
    /// This config as its file has it: without on-demand environments.
    pub fn configured(&self) -> Config {
        let mut c = self.clone();
        c.environments.retain(|e| e.template.is_none());
        for app in &mut c.apps {
            if let Some(data) = &mut app.data {
                let envs: Vec<EnvName> = c.environments.iter().map(|e| e.name.clone()).collect();
                data.locations.retain(|e, _| envs.contains(e));
            }
        }
        c
    }

    /// This config with on-demand environment `env` (made from its template) added, and
    /// where each app's data lives in it.
    pub fn with_on_demand(&self, env: EnvironmentConfig) -> Config {
        let mut c = self.without(&env.name);
        let template = env
            .template
            .as_ref()
            .and_then(|t| self.template(t))
            .cloned();
        if let Some(template) = template {
            let names: Vec<AppName> = c.apps.iter().map(|a| a.name.clone()).collect();
            for name in names {
                if let Some(l) = data_location(self, &template, &name, &env.name)
                    && let Some(app) = c.apps.iter_mut().find(|a| a.name == name)
                    && let Some(data) = &mut app.data
                {
                    data.locations.insert(env.name.clone(), l);
                }
            }
        }
        c.environments.push(env);
        c
    }

    /// This config without on-demand environment `name` (a configured one stays).
    pub fn without(&self, name: &EnvName) -> Config {
        let mut c = self.clone();
        let on_demand = |e: &EnvironmentConfig| &e.name == name && e.template.is_some();
        if c.environments.iter().any(on_demand) {
            c.environments.retain(|e| !on_demand(e));
            for app in &mut c.apps {
                if let Some(data) = &mut app.data {
                    data.locations.remove(name);
                }
            }
        }
        c
    }
}

/// An on-demand environment that holds a slot of its template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The environment.
    pub env: EnvName,
    /// Who asked for it.
    pub requester: String,
    /// When it expires unless used.
    pub expires_at: Timestamp,
}

/// Why no environment of a template may be made now, with who holds the slots and until when.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaRefusal {
    /// Every slot of the template is taken.
    #[error(
        "template {template} allows {max} environments at once and all {max} exist: {held}; delete one (shipgate env delete NAME) or wait until one expires"
    )]
    Full {
        /// The template.
        template: EnvName,
        /// Its `max`.
        max: usize,
        /// The holders, each with its requester and expiry.
        held: String,
    },
    /// The requester holds as many as one requester may.
    #[error(
        "{requester} already holds {max} environments of template {template}, as many as one requester may (max_per_requester = {max}): {held}; delete one of them (shipgate env delete NAME) or wait until one expires"
    )]
    PerRequester {
        /// The template.
        template: EnvName,
        /// Who asked.
        requester: String,
        /// Its `max_per_requester`.
        max: usize,
        /// The requester's environments, each with its expiry.
        held: String,
    },
}

/// Whether `requester` may have one more environment of `template`, which `holders` (its
/// environments now, soonest to expire first in the message) already hold.
pub fn admit(
    template: &TemplateConfig,
    requester: &str,
    holders: &[Holder],
) -> Result<(), QuotaRefusal> {
    let mut holders: Vec<&Holder> = holders.iter().collect();
    holders.sort_by_key(|h| (h.expires_at, h.env.clone()));
    let list = |held: &[&Holder], with_requester: bool| {
        let each: Vec<String> = held
            .iter()
            .map(|h| {
                let expires = h.expires_at.strftime("%Y-%m-%d %H:%M UTC");
                if with_requester {
                    format!("{} (held by {}, expires {expires})", h.env, h.requester)
                } else {
                    format!("{} (expires {expires})", h.env)
                }
            })
            .collect();
        each.join(", ")
    };
    if holders.len() >= template.max {
        return Err(QuotaRefusal::Full {
            template: template.name.clone(),
            max: template.max,
            held: list(&holders, true),
        });
    }
    if let Some(max) = template.max_per_requester {
        let own: Vec<&Holder> = holders
            .iter()
            .copied()
            .filter(|h| h.requester == requester)
            .collect();
        if own.len() >= max {
            return Err(QuotaRefusal::PerRequester {
                template: template.name.clone(),
                requester: requester.to_owned(),
                max,
                held: list(&own, false),
            });
        }
    }
    Ok(())
}

/// When an environment used (deployed into, or requested through) at `now` expires: `ttl`
/// after it, unless the TTL counts from creation, or it was extended further already.
pub fn expiry_after_use(
    ttl_from: TtlFrom,
    ttl: Duration,
    now: Timestamp,
    expires_at: Timestamp,
) -> Timestamp {
    match ttl_from {
        TtlFrom::Creation => expires_at,
        TtlFrom::LastUse => expires_at.max(later(now, ttl)),
    }
}

/// `now` + `ttl`, saturating at the latest time there is.
pub fn later(now: Timestamp, ttl: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(ttl.as_std())
        .ok()
        .and_then(|d| now.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(max: usize, per: Option<usize>) -> TemplateConfig {
        TemplateConfig {
            secrets: Vec::new(),
            name: EnvName::parse("preview").unwrap(),
            from: EnvName::parse("staging").unwrap(),
            ttl: Duration::parse("48h").unwrap(),
            ttl_from: TtlFrom::LastUse,
            max,
            max_per_requester: per,
            listen_range: PortRange::parse("127.0.0.1:9100-9199").unwrap(),
            listen: None,
            host_suffix: Some(".preview.localhost".into()),
            data_from: None,
            vars: BTreeMap::new(),
            secret_vars: BTreeMap::new(),
            limits: Limits::default(),
            hosts: None,
            verify: None,
        }
    }

    fn holder(env: &str, requester: &str, expires: &str) -> Holder {
        Holder {
            env: EnvName::parse(env).unwrap(),
            requester: requester.into(),
            expires_at: expires.parse().unwrap(),
        }
    }

    #[test]
    fn a_full_template_says_who_holds_each_slot_and_until_when() {
        let held = [
            holder("pr-2", "bob", "2026-12-05T10:00:00Z"),
            holder("pr-1", "alice", "2026-12-04T09:30:00Z"),
        ];
        let refused = admit(&template(2, None), "carol", &held).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "template preview allows 2 environments at once and all 2 exist: pr-1 (held by alice, expires 2026-12-04 09:30 UTC), pr-2 (held by bob, expires 2026-12-05 10:00 UTC); delete one (shipgate env delete NAME) or wait until one expires"
        );
    }

    #[test]
    fn one_requester_is_held_to_their_own_share() {
        let held = [
            holder("pr-1", "alice", "2026-12-04T09:30:00Z"),
            holder("pr-2", "bob", "2026-12-05T10:00:00Z"),
        ];
        let t = template(10, Some(1));
        assert!(admit(&t, "carol", &held).is_ok());
        let refused = admit(&t, "alice", &held).unwrap_err();
        assert!(
            refused
                .to_string()
                .starts_with("alice already holds 1 environments of template preview, as many as one requester may (max_per_requester = 1): pr-1 (expires 2026-12-04 09:30 UTC)"),
            "{refused}"
        );
    }

    #[test]
    fn use_pushes_the_expiry_back_unless_it_counts_from_creation() {
        let ttl = Duration::parse("1h").unwrap();
        let now: Timestamp = "2026-12-03T12:00:00Z".parse().unwrap();
        let soon: Timestamp = "2026-12-03T12:10:00Z".parse().unwrap();
        let pushed = expiry_after_use(TtlFrom::LastUse, ttl, now, soon);
        assert_eq!(pushed.to_string(), "2026-12-03T13:00:00Z");
        assert_eq!(expiry_after_use(TtlFrom::Creation, ttl, now, soon), soon);
        // An extension beyond the TTL is never shortened by a use.
        let far: Timestamp = "2026-12-04T12:00:00Z".parse().unwrap();
        assert_eq!(expiry_after_use(TtlFrom::LastUse, ttl, now, far), far);
    }

    #[test]
    fn host_names_select_their_environment() {
        let t = template(10, None);
        let pr = EnvName::parse("pr-123").unwrap();
        assert_eq!(
            t.host_name(&pr).as_deref(),
            Some("pr-123.preview.localhost")
        );
        assert_eq!(
            t.env_of_host("pr-123.preview.localhost:9000"),
            Some(pr.clone())
        );
        assert_eq!(t.env_of_host("PR-123.preview.localhost"), Some(pr));
        assert_eq!(t.env_of_host("preview.localhost"), None);
        assert_eq!(t.env_of_host("pr-1.other.localhost"), None);
    }

    #[test]
    fn port_ranges_parse_and_hold_their_ports() {
        let r = PortRange::parse("127.0.0.1:9100-9102").unwrap();
        assert_eq!(r.len(), 3);
        assert!(r.holds("127.0.0.1:9101".parse().unwrap()));
        assert!(!r.holds("127.0.0.1:9103".parse().unwrap()));
        assert!(r.holds("0.0.0.0:9100".parse().unwrap()));
        assert_eq!(r.to_string(), "127.0.0.1:9100-9102");
        assert!(PortRange::parse("127.0.0.1:9200-9100").is_err());
        assert!(PortRange::parse("127.0.0.1:9100").is_err());
    }
}
