//! The `shipgate.toml` model: parsed with spans, validated as a whole, and every problem
//! reported at the `line:column` where it was written, with what to do about it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::gate::Inconclusive;
use crate::on_demand::{PortRange, TemplateConfig, TtlFrom};
use crate::window::DeployWindow;
use crate::{AppName, ByteSize, Duration, EnvName, Role};

/// A validated config. Holding one proves every rule of this module holds.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[apps.*]`, in file order.
    pub apps: Vec<AppConfig>,
    /// `[environments.*]`, each after the one it names in `after` (file order otherwise).
    /// A running server adds its on-demand environments here, after the configured ones.
    pub environments: Vec<EnvironmentConfig>,
    /// `[templates.*]`: how on-demand environments are made, in file order.
    pub templates: Vec<TemplateConfig>,
    /// `[notify.NAME]`: where events are sent.
    pub notify: Vec<crate::notify::Target>,
    /// `[alerts.NAME]`: conditions on live figures that fire and resolve.
    pub alerts: Vec<crate::alert::AlertRule>,
    /// How image registries are reached (`[registries."HOST[:PORT]"]`), by host.
    pub registries: BTreeMap<String, RegistryConfig>,
    /// `[secrets]`: who may set secrets besides admins.
    pub secrets: SecretsPolicy,
    /// Every key of the file with its value as written, so a reload can name what changed.
    pub written: Written,
}

/// `[secrets]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecretsPolicy {
    /// `deployers_write`: a deployer of an environment may set and remove its secrets (else
    /// only admins may).
    pub deployers_write: bool,
}

/// `vars.NAME = { secret = "SECRET" }`: a variable whose value is a secret kept in the store
/// (or in the environment's `secrets_file`), sealed, of environment `env`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretRef {
    /// The environment whose secret it is (a preview's come from the environment it copies).
    pub env: EnvName,
    /// The secret's name.
    pub name: String,
}

/// The keys and values of a config file as written (comments and layout aside). Its `Debug`
/// is empty: the parsed fields say what the config means.
#[derive(Clone, Default, PartialEq)]
pub struct Written(pub toml::Table);

impl std::fmt::Debug for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("..")
    }
}

/// `[server]`: where the API listens and where state is kept.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address of the API and dashboard.
    pub listen: SocketAddr,
    /// Database, artifacts, logs and the admin token live here (absolute, resolved against the
    /// config file's folder).
    pub data_dir: PathBuf,
    /// The control plane's database: a SQLite file (default `data_dir/shipgate.db`;
    /// `database = "sqlite://PATH"`) or PostgreSQL (`database = "postgres://..."`), which
    /// several servers can share.
    pub database: DataLocation,
    /// Largest artifact upload accepted.
    pub max_artifact_size: ByteSize,
    /// Largest total size of the files an artifact unpacks to (counted while it is read).
    pub max_unpacked_size: ByteSize,
    /// Most entries (files, folders, links) an artifact may hold.
    pub max_files: u64,
    /// How often live releases are checked for drift; None: only on demand (`shipgate drift`).
    pub drift_scan: Option<Duration>,
    /// How instances are confined unless their environment says otherwise.
    pub isolation: Isolation,
    /// Where the instances and routers run.
    pub data_plane: DataPlane,
    /// Where agents of other hosts dial in (mutual TLS); default: the API's address with port
    /// 0 (any free port; agents ask the API which one).
    pub agent_listen: SocketAddr,
    /// Where the Toxiproxy-compatible API of the dependency proxies listens (no token, as
    /// Toxiproxy takes none; loopback unless told otherwise), when an environment has
    /// `dependencies`.
    pub toxiproxy_listen: SocketAddr,
    /// `public_url`: the API's address as clients reach it (`https://shipgate.example.com`),
    /// which links it gives out (OFREP's event stream) are built from; None: `listen`.
    pub public_url: Option<String>,
    /// Whether `shipgate server` reloads the config file by itself when it changes.
    pub watch_config: bool,
    /// The folder of the config file (`${CONFIG_DIR}`; relative paths are resolved against it).
    pub config_dir: PathBuf,
    /// What is kept of old releases and logs (`retention = { releases = 20, logs = "14d" }`).
    pub retention: Retention,
    /// How long the engine's lease lasts unless renewed (`lease = "5s"`): when the server
    /// leading stops answering, another server on the same database takes over after it.
    pub lease: Duration,
    /// `[server.oidc]`: the identity provider people sign in through; None: tokens only.
    pub oidc: Option<crate::sso::OidcConfig>,
    /// `secrets_key_env`: the environment variable holding the key secrets are sealed with;
    /// None: the key file in `data_dir` (made at first start).
    pub secrets_key_env: Option<String>,
}

/// `server.retention`: how much of the past is kept on disk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    /// The newest releases of each app whose artifact and release directory are kept; older
    /// ones go, unless live, a standby, or where a rollback would go. Their record stays.
    pub releases: usize,
    /// Instance logs not written for this long go (never the log of a running instance).
    pub logs: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            releases: 20,
            logs: Duration::from_std(std::time::Duration::from_secs(14 * 86_400)),
        }
    }
}

/// How many hosts of an environment start a new release at once (`rollout.batch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Batch {
    /// Every host at once.
    #[default]
    All,
    /// This many hosts at a time.
    Hosts(usize),
    /// This share of the hosts at a time, in percent (rounded up, at least one host).
    Percent(u8),
}

impl Batch {
    /// How many of `hosts` hosts start at once.
    pub fn size(self, hosts: usize) -> usize {
        match self {
            Batch::All => hosts,
            Batch::Hosts(n) => n,
            Batch::Percent(p) => (hosts * usize::from(p)).div_ceil(100),
        }
        .clamp(1, hosts.max(1))
    }
}

/// `data_plane = "server" | "agent"`: which process runs the instances and the routers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataPlane {
    /// The server's own process: they stop when it stops.
    Server,
    /// A local agent process the server starts (or finds running) and drives: they outlive the
    /// server, so a restart, crash or upgrade of the server drops no request.
    #[default]
    Agent,
}

impl DataPlane {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "server" => Ok(Self::Server),
            "agent" => Ok(Self::Agent),
            other => Err(format!(
                "`data_plane = \"{other}\"`: write \"server\" or \"agent\""
            )),
        }
    }
}

/// `isolation = "auto" | "sandbox" | "none"`: how an environment's instances are confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// In a sandbox where the server can make one (it runs as root with bubblewrap installed);
    /// otherwise unisolated, and the server says so at start and in `status`.
    #[default]
    Auto,
    /// Always in a sandbox: the server refuses to start where it cannot make one.
    Sandbox,
    /// As ordinary child processes of the server's user (a laptop without root).
    None,
}

impl Isolation {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "sandbox" => Ok(Self::Sandbox),
            "none" => Ok(Self::None),
            other => Err(format!(
                "`isolation = \"{other}\"`: write \"auto\", \"sandbox\" or \"none\""
            )),
        }
    }

    /// The word the config uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Sandbox => "sandbox",
            Self::None => "none",
        }
    }
}

/// `limits = { memory = "512MiB", cpu = 1.5, pids = 512 }` on an app or an environment; each
/// one the environment sets wins over the app's. Also what the driver enforces on an instance.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Memory; over it the kernel kills the instance.
    pub memory: Option<ByteSize>,
    /// CPU, in cores.
    pub cpu: Option<f64>,
    /// Processes and threads at once.
    pub pids: Option<u64>,
}

impl Limits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.memory.is_some() || self.cpu.is_some() || self.pids.is_some()
    }

    /// These limits, with `over`'s wherever it sets one.
    pub fn overridden_by(self, over: Limits) -> Limits {
        Limits {
            memory: over.memory.or(self.memory),
            cpu: over.cpu.or(self.cpu),
            pids: over.pids.or(self.pids),
        }
    }
}

/// `[apps.NAME]`: one deployable service.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// The app's name.
    pub name: AppName,
    /// Shell command started inside the unpacked release directory. Empty when not set, which
    /// only an image release may be (it runs the image's own Entrypoint and Cmd); for an image,
    /// a set `run` replaces them, run by the image's `/bin/sh -c`.
    pub run: String,
    /// HTTP path that answers 2xx once an instance is ready.
    pub health: String,
    /// How long an instance may take to become healthy.
    pub health_timeout: Duration,
    /// When a live instance counts as crash-looping.
    pub crash_loop: CrashLoop,
    /// `facts = { runtime = "python3 --version" }`: commands run in each environment's live
    /// release for `shipgate diff`, by name.
    pub facts: BTreeMap<String, String>,
    /// `[apps.NAME.data]`: where each environment's data lives and how it is masked.
    pub data: Option<DataConfig>,
    /// Resource limits of each instance (an environment's own win).
    pub limits: Limits,
    /// `[apps.NAME.flags.KEY]`: its feature flags by key.
    pub flags: BTreeMap<String, crate::flag::FlagConfig>,
    /// `[apps.NAME.backup]`: backups of its data, each proven by a restore drill.
    pub backup: Option<BackupConfig>,
    /// `migrate`: run from the release, in the environment's sandbox with `${DATA_URL}`, before
    /// the switch (after the backup); a failure fails the promotion before traffic moves.
    pub migrate: Option<String>,
    /// `migrate_check`: run before `migrate`; a non-zero exit means the release's schema is not
    /// compatible with the running release (expand and contract take two releases).
    pub migrate_check: Option<String>,
}

/// `[apps.NAME.backup]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupConfig {
    /// The environments whose data is backed up (each declared in `[apps.NAME.data]`).
    pub envs: Vec<EnvName>,
    /// How often a backup is taken by itself (none: only on demand and before promotions).
    pub every: Option<Duration>,
    /// How many restorable backups to keep per environment.
    pub keep: Option<u32>,
    /// How long to keep a backup.
    pub keep_for: Option<Duration>,
    /// Take a fresh backup before each promotion's switch into those environments.
    pub before_promotion: bool,
    /// Queries run in the restore drill's scratch database; each must succeed (their answers
    /// are recorded beside the row counts).
    pub verify: Vec<String>,
    /// Parallel jobs of `pg_dump` and `pg_restore`.
    pub jobs: u32,
}

/// `[apps.NAME.data]`.
#[derive(Debug, Clone)]
pub struct DataConfig {
    /// Each environment's database.
    pub locations: BTreeMap<EnvName, DataLocation>,
    /// What to do with a column that looks personal and has no rule.
    pub unlisted: Unlisted,
    /// `mask.TABLE.COLUMN = rule`.
    pub mask: BTreeMap<String, BTreeMap<String, crate::mask::Transformer>>,
    /// Who may refresh (admin by default).
    pub role: Role,
}

/// Where an environment's data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataLocation {
    /// A SQLite file (absolute).
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://user:password@host:port/db`).
    Postgres(String),
}

impl DataLocation {
    /// `sqlite://PATH` (relative to `base_dir`) or `postgres://...`; `None` for anything else.
    pub fn parse(location: &str, base_dir: &Path) -> Option<DataLocation> {
        if location.starts_with("postgres://") || location.starts_with("postgresql://") {
            return Some(DataLocation::Postgres(location.to_owned()));
        }
        location
            .strip_prefix("sqlite://")
            .or_else(|| location.strip_prefix("sqlite:"))
            .filter(|p| !p.is_empty())
            .map(|p| DataLocation::Sqlite(base_dir.join(p)))
    }

    /// A connection URL without its password, for messages.
    pub fn redacted_url(url: &str) -> String {
        match (url.split_once("://"), url.rsplit_once('@')) {
            (Some((scheme, rest)), Some((_, host))) if rest.contains('@') => {
                let user = rest.split([':', '@']).next().unwrap_or_default();
                format!("{scheme}://{user}:***@{host}")
            }
            _ => url.to_owned(),
        }
    }
}

/// Where it is, for messages: the file, or the URL without its password.
impl std::fmt::Display for DataLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataLocation::Sqlite(path) => write!(f, "{}", path.display()),
            DataLocation::Postgres(url) => f.write_str(&Self::redacted_url(url)),
        }
    }
}

/// `unlisted = "refuse" | "keep"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlisted {
    /// A personal-looking column without a rule stops the refresh before it writes anything.
    Refuse,
    /// Such columns are copied as they are.
    Keep,
}

/// `crash_loop = { crashes = 5, within = "1m" }`: more than `crashes` crashes within `within`
/// and the instance is no longer restarted; its environment is marked unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashLoop {
    /// Crashes tolerated within the window.
    pub crashes: u32,
    /// The window.
    pub within: Duration,
}

impl Default for CrashLoop {
    fn default() -> Self {
        Self {
            crashes: 5,
            within: Duration::from_std(std::time::Duration::from_secs(60)),
        }
    }
}

/// `[environments.NAME]`: one place a release runs.
#[derive(Debug, Clone)]
pub struct EnvironmentConfig {
    /// The environment's name.
    pub name: EnvName,
    /// The environment a release must be verified in before it may enter this one.
    pub after: Option<EnvName>,
    /// Stable address served by the router.
    pub listen: SocketAddr,
    /// Environment variables of every instance here.
    pub vars: BTreeMap<String, String>,
    /// Variables whose values are secrets (`vars.NAME = { secret = "SECRET" }`), by variable.
    pub secret_vars: BTreeMap<String, SecretRef>,
    /// `secrets_file`: a file of `NAME=value` lines encrypted with age for the server's
    /// recipient, whose values become this environment's secrets at start and at reload.
    pub secrets_file: Option<PathBuf>,
    /// What a release must pass after the switch.
    pub verify: VerifyConfig,
    /// How long the replaced release keeps running after a switch, so a rollback is instant.
    pub standby: Duration,
    /// How long requests in flight on a replaced or stopped instance may take to finish.
    pub drain: Duration,
    /// Longest wait for an instance's response head before the router answers 504.
    pub request_timeout: Option<Duration>,
    /// `chaos.allow` and `chaos.max_duration`: whether faults may be injected here, and for
    /// how long at most.
    pub chaos: crate::chaos::ChaosRules,
    /// `dependencies.NAME`: TCP proxies between the apps here and what they depend on, where
    /// toxics act (Toxiproxy's), driven through the Toxiproxy-compatible API as `ENV.NAME`.
    pub dependencies: Vec<Dependency>,
    /// `network.egress` and `network.allow`: what its processes may reach besides its own
    /// router, dependency proxies and shipgate's API.
    pub network: crate::network::NetworkRules,
    /// What a promotion must have before it may deploy here.
    pub require: Requirements,
    /// A release verified in `after` is promoted here as soon as its requirements hold.
    pub auto: bool,
    /// The environment this one mirrors (`mirrors = "production"` on staging).
    pub mirrors: Option<EnvName>,
    /// Differences with other environments that are meant (`vars.DATABASE_URL`, `listen`,
    /// `require.*`).
    pub differs: Vec<String>,
    /// Variables whose values are never shown, besides those whose names look secret.
    pub secrets: Vec<String>,
    /// How its instances are confined (the server's `isolation` unless set here).
    pub isolation: Isolation,
    /// Resource limits of its instances, over the app's.
    pub limits: Limits,
    /// The hosts it runs on (`shipgate host add` names them); empty: the server's own machine.
    pub hosts: Vec<String>,
    /// How many hosts start a new release at once.
    pub batch: Batch,
    /// How many of its hosts must take part in a promotion (all of them unless set).
    pub hosts_required: usize,
    /// An address on the server's machine that spreads connections over its hosts' routers.
    pub front: Option<SocketAddr>,
    /// For an on-demand environment, the template it was made from (None: configured).
    pub template: Option<EnvName>,
    /// `[environments.NAME.canary]`: a new release meets a share of the requests first.
    pub canary: Option<CanaryConfig>,
    /// `[environments.NAME.hotfix]`: a lane for a fix that cannot wait for the whole flow.
    pub hotfix: Option<HotfixConfig>,
    /// `[environments.NAME.signoff]`: a verified release waits for testers to pass each
    /// scenario before it counts as verified here.
    pub signoff: Option<SignoffConfig>,
    /// `parity.schema`: `require.parity` compares the apps' database schemas too.
    pub parity_schema: bool,
    /// `load.allow`: `shipgate load run` may send load here (at the end of the flow, an admin's
    /// only, and only with this).
    pub load_allow: bool,
}

/// `[environments.NAME.signoff]`: user acceptance. After its verification a release waits in
/// `signing_off` until someone with `role` passed every scenario; one fail ends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignoffConfig {
    /// Who may sign (an admin always may).
    pub role: Role,
    /// What the testers walk through, each passed or failed on its own.
    pub scenarios: Vec<String>,
}

/// The longest scenario name: a line on a page, not a test plan.
pub const SCENARIO_MAX: usize = 200;

/// `[environments.NAME.hotfix]`: `shipgate promote --hotfix --reason TEXT` may bring a release
/// verified in `from` straight here, whatever lies between, skipping the requirements in
/// `skip` (never approvals), when asked by someone with `role` (or an admin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotfixConfig {
    /// Where a hotfix must still be verified first (its tests, its watch).
    pub from: EnvName,
    /// The requirements a hotfix skips: `require.soak`, `require.window`, `require.parity`.
    pub skip: Vec<String>,
    /// Who may call a hotfix (an admin always may).
    pub role: Role,
}

/// The requirements a hotfix may skip; approvals are never among them.
pub const HOTFIX_SKIPPABLE: [&str; 4] = [
    "require.soak",
    "require.window",
    "require.parity",
    "require.signoff",
];

/// `[environments.NAME.canary]`: a new release takes a growing share of the requests, step by
/// step, each step judged against the stable release in the same window.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryConfig {
    /// The steps; after the last one the canary takes every request.
    pub steps: Vec<crate::canary::Step>,
    /// How long a step lasts: its analysis window.
    pub step: Duration,
    /// How a step is judged.
    pub rules: crate::canary::Rules,
    /// How a client is kept on its side.
    pub sticky: crate::canary::Sticky,
}

impl CanaryConfig {
    /// Default `steps`.
    pub const DEFAULT_STEPS: [crate::canary::Step; 3] = [
        crate::canary::Step::Weight(5.0),
        crate::canary::Step::Weight(25.0),
        crate::canary::Step::Weight(50.0),
    ];
    /// Default `step`.
    pub const DEFAULT_STEP: std::time::Duration = std::time::Duration::from_secs(60);
    /// Default `min_requests`, `max_error_rate`, `max_latency_increase` and `confidence`.
    pub const DEFAULT_RULES: crate::canary::Rules = crate::canary::Rules {
        min_requests: 100,
        max_error_rate: 0.01,
        max_latency_increase: 0.25,
        confidence: 0.98,
    };

    /// The number of steps whose end is judged.
    pub fn judged_steps(&self) -> usize {
        self.steps.iter().filter(|s| s.judged()).count()
    }
}

/// `require.*` of an environment: what a promotion waits on before it deploys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Requirements {
    /// `require.approvals`: distinct approvers, never the requester.
    pub approvals: Option<ApprovalRule>,
    /// `require.soak`: verified in `after` at least this long.
    pub soak: Option<Duration>,
    /// `require.window`: only while one of these is open.
    pub windows: Vec<DeployWindow>,
    /// `require.parity`: no unexpected difference with this environment but the release.
    pub parity: Option<EnvName>,
    /// `require.signoff`: the very digest completed the user acceptance sign-off there.
    pub signoff: Option<EnvName>,
    /// `require.backup_within`: a restorable backup of each app's data here at most this old.
    pub backup_within: Option<Duration>,
}

impl Requirements {
    /// True when a promotion here never waits.
    pub fn is_empty(&self) -> bool {
        self.approvals.is_none()
            && self.soak.is_none()
            && self.windows.is_empty()
            && self.parity.is_none()
            && self.signoff.is_none()
            && self.backup_within.is_none()
    }
}

/// `require.approvals = 2` or `{ count = 2, role = "approver" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRule {
    /// Distinct approvers needed.
    pub count: u32,
    /// Only approvals from tokens of this role (or admin) count.
    pub role: Option<Role>,
}

/// A TCP proxy in front of a dependency of an environment's apps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// Its name (`db`); the proxy is `ENV.NAME`.
    pub name: String,
    /// Where the apps connect (their vars point here).
    pub listen: SocketAddr,
    /// Where the dependency is, `HOST:PORT`.
    pub upstream: String,
}

/// `verify.watch` and its thresholds: the router's figures for the new release after the switch.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchRule {
    /// How long to watch.
    pub watch: Duration,
    /// Above this share of 5xx responses: roll back.
    pub max_error_rate: Option<f64>,
    /// Above this 99th percentile latency: roll back.
    pub max_p99: Option<Duration>,
    /// Fewer responses than this during the watch: the outcome follows `inconclusive`.
    pub min_requests: u64,
    /// What too little traffic means.
    pub inconclusive: Inconclusive,
    /// Requests shipgate sends itself during the watch, so a quiet environment is judged too.
    pub traffic: Option<WatchTraffic>,
}

/// `verify.watch_traffic = { path = "/", rps = 5 }`.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchTraffic {
    /// The path requested (GET), on every address of the environment.
    pub path: String,
    /// Requests per second, in all.
    pub rps: f64,
}

impl WatchRule {
    /// Default `verify.min_requests`.
    pub const DEFAULT_MIN_REQUESTS: u64 = 10;
}

/// One `verify.http` check: a request to the environment's stable address after the switch.
#[derive(Debug, Clone)]
pub struct HttpCheck {
    /// Path requested (GET).
    pub path: String,
    /// Status expected.
    pub status: u16,
    /// A regular expression the body must match, if given.
    pub body: Option<regex_lite::Regex>,
}

impl EnvironmentConfig {
    /// Default `standby`.
    pub const DEFAULT_STANDBY: std::time::Duration = std::time::Duration::from_secs(600);
    /// Default `drain`.
    pub const DEFAULT_DRAIN: std::time::Duration = std::time::Duration::from_secs(30);
}

/// `verify.*` of an environment.
#[derive(Debug, Clone, Default)]
pub struct VerifyConfig {
    /// Commands that must exit 0 against the freshly switched environment.
    pub tests: Vec<String>,
    /// How long one test command may run.
    pub timeout: Option<Duration>,
    /// HTTP checks against the stable address.
    pub http: Vec<HttpCheck>,
    /// The watch after the switch, if any.
    pub watch: Option<WatchRule>,
    /// `verify.experiments`: Chaos Toolkit experiment files (relative to the config's folder)
    /// run after the switch; a deviation fails the promotion.
    pub experiments: Vec<String>,
    /// `[environments.NAME.verify.load]`: a load test after the switch, judged against
    /// ceilings and the release it replaces.
    pub load: Option<crate::load::LoadConfig>,
}

impl VerifyConfig {
    /// The default limit of one test command.
    pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
}

/// One problem in a config file, located by byte range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Where in the file (bytes).
    pub span: Range<usize>,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub help: Option<String>,
}

/// Every problem found in a config file; the config is refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} problem(s) in the config", problems.len())]
pub struct ConfigError {
    /// The problems, in file order.
    pub problems: Vec<ConfigProblem>,
}

impl ConfigError {
    /// Plain-text report: `file:line:column: message` and a `help:` line per problem.
    pub fn render(&self, file: &str, src: &str) -> String {
        let mut out = String::new();
        for p in &self.problems {
            let (line, col) = line_col(src, p.span.start);
            out.push_str(&format!("{file}:{line}:{col}: {}\n", p.message));
            if let Some(help) = &p.help {
                out.push_str(&format!("  help: {help}\n"));
            }
        }
        out
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..src.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Default API address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7300";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    apps: BTreeMap<Spanned<String>, RawApp>,
    #[serde(default)]
    environments: BTreeMap<Spanned<String>, RawEnvironment>,
    #[serde(default)]
    templates: BTreeMap<Spanned<String>, RawTemplate>,
    #[serde(default)]
    notify: BTreeMap<Spanned<String>, RawNotify>,
    #[serde(default)]
    alerts: BTreeMap<Spanned<String>, RawAlert>,
    #[serde(default)]
    registries: BTreeMap<Spanned<String>, RawRegistry>,
    #[serde(default)]
    secrets: RawSecretsPolicy,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSecretsPolicy {
    #[serde(default)]
    deployers_write: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    username: Option<String>,
    password_env: Option<Spanned<String>>,
    ca_file: Option<String>,
    #[serde(default)]
    insecure: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlert {
    env: Spanned<String>,
    app: Option<Spanned<String>>,
    when: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    url: Spanned<String>,
    events: Vec<Spanned<String>>,
    #[serde(default)]
    envs: Vec<String>,
    #[serde(default)]
    apps: Vec<String>,
    format: Option<Spanned<String>>,
    secret: Option<Spanned<String>>,
    secret_env: Option<String>,
    max_attempts: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    from: Spanned<String>,
    ttl: Option<Spanned<String>>,
    ttl_from: Option<Spanned<String>>,
    max: Option<Spanned<i64>>,
    max_per_requester: Option<Spanned<i64>>,
    listen_range: Spanned<String>,
    listen: Option<Spanned<String>>,
    host_suffix: Option<Spanned<String>>,
    data: Option<RawTemplateData>,
    #[serde(default)]
    vars: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    secrets: Vec<Spanned<String>>,
    limits: Option<RawLimits>,
    hosts: Option<Vec<Spanned<String>>>,
    verify: Option<RawVerify>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplateData {
    from: Spanned<String>,
    masked: Spanned<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<String>>,
    data_dir: Option<Spanned<String>>,
    database: Option<Spanned<String>>,
    max_artifact_size: Option<Spanned<String>>,
    max_unpacked_size: Option<Spanned<String>>,
    max_files: Option<Spanned<i64>>,
    drift_scan: Option<Spanned<String>>,
    isolation: Option<Spanned<String>>,
    data_plane: Option<Spanned<String>>,
    agent_listen: Option<Spanned<String>>,
    toxiproxy_listen: Option<Spanned<String>>,
    public_url: Option<Spanned<String>>,
    watch_config: Option<bool>,
    retention: Option<RawRetention>,
    lease: Option<Spanned<String>>,
    oidc: Option<Spanned<crate::sso::RawOidc>>,
    secrets_key_env: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    releases: Option<Spanned<i64>>,
    logs: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    batch: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: Option<Spanned<String>>,
    cpu: Option<Spanned<f64>>,
    pids: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    #[serde(default)]
    run: Option<Spanned<String>>,
    health: Option<Spanned<String>>,
    health_timeout: Option<Spanned<String>>,
    crash_loop: Option<RawCrashLoop>,
    #[serde(default)]
    facts: BTreeMap<String, String>,
    data: Option<Spanned<toml::Table>>,
    limits: Option<RawLimits>,
    #[serde(default)]
    flags: BTreeMap<Spanned<String>, RawFlag>,
    backup: Option<Spanned<RawBackup>>,
    migrate: Option<Spanned<String>>,
    migrate_check: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackup {
    envs: Spanned<Vec<Spanned<String>>>,
    every: Option<Spanned<String>>,
    keep: Option<Spanned<i64>>,
    keep_for: Option<Spanned<String>>,
    before_promotion: Option<bool>,
    #[serde(default)]
    verify: Vec<String>,
    jobs: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParity {
    schema: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlag {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    default: Spanned<toml::Value>,
    variants: Option<Spanned<BTreeMap<String, toml::Value>>>,
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCrashLoop {
    crashes: Spanned<u32>,
    within: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    after: Option<Spanned<String>>,
    listen: Spanned<String>,
    #[serde(default)]
    vars: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    secrets_file: Option<Spanned<String>>,
    #[serde(default)]
    verify: RawVerify,
    #[serde(default)]
    require: RawRequire,
    auto: Option<Spanned<bool>>,
    mirrors: Option<Spanned<String>>,
    #[serde(default)]
    differs: Vec<Spanned<String>>,
    #[serde(default)]
    secrets: Vec<String>,
    standby: Option<Spanned<String>>,
    drain: Option<Spanned<String>>,
    request_timeout: Option<Spanned<String>>,
    isolation: Option<Spanned<String>>,
    limits: Option<RawLimits>,
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    rollout: Option<RawRollout>,
    hosts_required: Option<Spanned<i64>>,
    front: Option<Spanned<String>>,
    chaos: Option<RawChaos>,
    #[serde(default)]
    dependencies: BTreeMap<Spanned<String>, RawDependency>,
    network: Option<RawNetwork>,
    canary: Option<Spanned<RawCanary>>,
    hotfix: Option<Spanned<RawHotfix>>,
    signoff: Option<Spanned<RawSignoff>>,
    parity: Option<RawParity>,
    load: Option<RawLoadAccess>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignoff {
    role: Option<Spanned<String>>,
    scenarios: Spanned<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHotfix {
    from: Spanned<String>,
    #[serde(default)]
    skip: Vec<Spanned<String>>,
    role: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCanary {
    steps: Option<Vec<Spanned<String>>>,
    step: Option<Spanned<String>>,
    min_requests: Option<Spanned<i64>>,
    max_error_rate: Option<Spanned<f64>>,
    max_latency_increase: Option<Spanned<f64>>,
    confidence: Option<Spanned<f64>>,
    sticky: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    egress: Option<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDependency {
    listen: Spanned<String>,
    upstream: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChaos {
    #[serde(default)]
    allow: bool,
    max_duration: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawVerify {
    #[serde(default)]
    tests: Vec<String>,
    timeout: Option<Spanned<String>>,
    watch: Option<Spanned<String>>,
    max_error_rate: Option<Spanned<f64>>,
    max_p99: Option<Spanned<String>>,
    min_requests: Option<Spanned<u64>>,
    inconclusive: Option<Spanned<String>>,
    watch_traffic: Option<Spanned<RawWatchTraffic>>,
    #[serde(default)]
    http: Vec<RawHttpCheck>,
    #[serde(default)]
    experiments: Vec<Spanned<String>>,
    load: Option<Spanned<RawLoad>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoad {
    rate: Spanned<i64>,
    duration: Spanned<String>,
    warmup: Option<Spanned<String>>,
    requests: Spanned<Vec<RawLoadRequest>>,
    max_error_rate: Option<Spanned<f64>>,
    max_p99: Option<Spanned<String>>,
    compare: Option<Spanned<String>>,
    max_regression: Option<Spanned<f64>>,
    connections: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoadRequest {
    method: Option<String>,
    path: Spanned<String>,
    body: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    weight: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoadAccess {
    allow: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatchTraffic {
    path: Option<String>,
    rps: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpCheck {
    path: Spanned<String>,
    status: Option<Spanned<u16>>,
    body: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRequire {
    approvals: Option<Spanned<toml::Value>>,
    soak: Option<Spanned<String>>,
    window: Option<Spanned<toml::Value>>,
    parity: Option<Spanned<toml::Value>>,
    signoff: Option<Spanned<String>>,
    backup_within: Option<Spanned<String>>,
}

/// Collects problems while a raw config is turned into a [`Config`].
#[derive(Default)]
pub(crate) struct Problems(Vec<ConfigProblem>);

impl Problems {
    pub(crate) fn add(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        help: impl Into<Option<String>>,
    ) {
        self.0.push(ConfigProblem {
            span,
            message: message.into(),
            help: help.into(),
        });
    }

    pub(crate) fn parse<T>(
        &mut self,
        value: &Spanned<String>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        parse(value.get_ref())
            .map_err(|e| self.add(value.span(), e, None))
            .ok()
    }
}

impl Config {
    /// Parses and validates a config file's text. Relative paths are resolved against
    /// `base_dir` (the folder of the file).
    pub fn parse(src: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let (raw, unreadable) = read_raw(src);
        let Some(raw) = raw else {
            return Err(ConfigError {
                problems: unreadable,
            });
        };
        let mut problems = Problems(unreadable);
        let server = server(raw.server, base_dir, &mut problems);
        let apps = apps(raw.apps, base_dir, &mut problems);
        let environments = environments(raw.environments, &server, &mut problems);
        if let Some(oidc) = &server.oidc {
            crate::sso::check_role_envs(oidc, &environments, &mut problems);
        }
        let templates = templates(raw.templates, &environments, &server, &mut problems);
        let notify = notify_targets(&raw.notify, &mut problems);
        let mut alerts = Vec::new();
        for (name, a) in &raw.alerts {
            let env = problems.parse(&a.env, |e| EnvName::parse(e).map_err(|e| e.to_string()));
            if let Some(env) = &env
                && !environments.iter().any(|e| e.name == *env)
            {
                problems.add(
                    a.env.span(),
                    format!(
                        "alert `{}` watches environment `{env}`, which the config does not have",
                        name.get_ref()
                    ),
                    "name one of the config's environments".to_owned(),
                );
            }
            let app = a.app.as_ref().and_then(|x| {
                let app = problems.parse(x, |s| AppName::parse(s).map_err(|e| e.to_string()))?;
                if !apps.iter().any(|c| c.name == app) {
                    problems.add(
                        x.span(),
                        format!(
                            "alert `{}` watches app `{app}`, which the config does not have",
                            name.get_ref()
                        ),
                        None,
                    );
                }
                Some(app)
            });
            let condition = problems.parse(&a.when, crate::alert::Condition::parse);
            if let (Some(env), Some((condition, hold))) = (env, condition) {
                alerts.push(crate::alert::AlertRule {
                    name: name.get_ref().clone(),
                    env,
                    app,
                    condition,
                    hold,
                    when: a.when.get_ref().clone(),
                });
            }
        }
        let registries = registries(raw.registries, base_dir, &mut problems);
        if apps.is_empty() {
            problems.add(0..0, "the config defines no app", "add one, for example:\n[apps.web]\nrun = \"./web --port ${PORT}\"\nhealth = \"/healthz\"".to_owned());
        }
        if environments.is_empty() && problems.0.is_empty() {
            problems.add(
                0..0,
                "the config defines no environment",
                "add one, for example:\n[environments.development]\nlisten = \"127.0.0.1:8101\""
                    .to_owned(),
            );
        }
        if !problems.0.is_empty() {
            problems.0.sort_by_key(|p| p.span.start);
            return Err(ConfigError {
                problems: problems.0,
            });
        }
        Ok(Config {
            server,
            apps,
            environments,
            templates,
            notify,
            alerts,
            registries,
            secrets: SecretsPolicy {
                deployers_write: raw.secrets.deployers_write,
            },
            written: Written(toml::from_str(src).unwrap_or_default()),
        })
    }

    /// The template of that name.
    pub fn template(&self, name: &EnvName) -> Option<&TemplateConfig> {
        self.templates.iter().find(|t| &t.name == name)
    }

    /// The app of that name.
    pub fn app(&self, name: &AppName) -> Option<&AppConfig> {
        self.apps.iter().find(|a| &a.name == name)
    }

    /// The environment of that name.
    pub fn environment(&self, name: &EnvName) -> Option<&EnvironmentConfig> {
        self.environments.iter().find(|e| &e.name == name)
    }

    /// The environments right after `env` (those whose `after` names it): where a release
    /// live in `env` goes on to. None after the last of the flow.
    pub fn next_after<'a>(
        &'a self,
        env: &'a EnvName,
    ) -> impl Iterator<Item = &'a EnvironmentConfig> + 'a {
        self.environments
            .iter()
            .filter(move |e| e.after.as_ref() == Some(env))
    }

    /// Whether `earlier` is on the way into `env`: its `after`, the one before that, and so on.
    pub fn comes_before(&self, earlier: &EnvName, env: &EnvName) -> bool {
        // Ends: holding a Config proves `after` has no cycle.
        let mut at = self.environment(env).and_then(|e| e.after.as_ref());
        while let Some(before) = at {
            if before == earlier {
                return true;
            }
            at = self.environment(before).and_then(|e| e.after.as_ref());
        }
        false
    }
}

fn server(raw: RawServer, base_dir: &Path, problems: &mut Problems) -> ServerConfig {
    let listen = match &raw.listen {
        Some(l) => problems.parse(l, parse_address),
        None => parse_address(DEFAULT_LISTEN).ok(),
    };
    let data_dir = base_dir.join(
        raw.data_dir
            .as_ref()
            .map_or(".shipgate", |d| d.get_ref().as_str()),
    );
    if let Some(d) = &raw.data_dir
        && data_dir.exists()
        && !data_dir.is_dir()
    {
        problems.add(
            d.span(),
            format!("data_dir `{}` exists and is not a folder", d.get_ref()),
            "name a folder (shipgate creates it if missing), for example data_dir = \".shipgate\""
                .to_owned(),
        );
    }
    let database = match &raw.database {
        None => DataLocation::Sqlite(data_dir.join("shipgate.db")),
        Some(db) => DataLocation::parse(db.get_ref(), base_dir).unwrap_or_else(|| {
            problems.add(
                db.span(),
                format!("database `{}` is neither SQLite nor PostgreSQL", db.get_ref()),
                "write \"sqlite://PATH\" or \"postgres://USER:PASSWORD@HOST:PORT/DB\", or remove `database` to use shipgate.db in data_dir".to_owned(),
            );
            DataLocation::Sqlite(data_dir.join("shipgate.db"))
        }),
    };
    let max_artifact_size = raw
        .max_artifact_size
        .as_ref()
        .and_then(|s| problems.parse(s, positive_size("max_artifact_size")));
    let max_unpacked_size = raw
        .max_unpacked_size
        .as_ref()
        .and_then(|s| problems.parse(s, positive_size("max_unpacked_size")));
    let max_files = raw.max_files.as_ref().and_then(|n| {
        let value = u64::try_from(*n.get_ref()).ok().filter(|n| *n > 0);
        if value.is_none() {
            problems.add(
                n.span(),
                format!("`max_files` must be at least 1, not {}", n.get_ref()),
                "write the most entries an artifact may hold, for example max_files = 100000"
                    .to_owned(),
            );
        }
        value
    });
    let drift_scan = match &raw.drift_scan {
        Some(d) => problems.parse(d, Duration::parse),
        None => Some(Duration::from_std(std::time::Duration::from_secs(60))),
    }
    .filter(|d| !d.as_std().is_zero());
    let listen = listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7300)));
    let agent_listen = match &raw.agent_listen {
        Some(a) => problems.parse(a, parse_address),
        None => None,
    }
    .unwrap_or(SocketAddr::new(listen.ip(), 0));
    let toxiproxy_listen = match &raw.toxiproxy_listen {
        Some(a) => problems.parse(a, parse_address).filter(|at| {
            let ok = at.ip().is_loopback();
            if !ok {
                problems.add(
                    a.span(),
                    format!("`toxiproxy_listen = \"{at}\"` is off loopback: other machines could reach the API that breaks dependencies"),
                    "keep it on 127.0.0.1 (any port); chaos tools run on the server's machine, or reach it through `shipgate chaos`".to_owned(),
                );
            }
            ok
        }),
        None => None,
    }
    .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8474)));
    let retention = retention(raw.retention.as_ref(), problems);
    let lease = match &raw.lease {
        Some(l) => problems.parse(l, Duration::parse).filter(|d| {
            let ok = d.as_std() >= std::time::Duration::from_secs(1);
            if !ok {
                problems.add(
                    l.span(),
                    format!("`lease` must be at least 1s, not {}", l.get_ref()),
                    "write how long a leader keeps the engine without renewing, for example lease = \"5s\"".to_owned(),
                );
            }
            ok
        }),
        None => None,
    }
    .unwrap_or(Duration::from_std(std::time::Duration::from_secs(5)));
    let oidc = raw
        .oidc
        .as_ref()
        .and_then(|o| crate::sso::oidc(o, problems));
    let secrets_key_env = raw.secrets_key_env.as_ref().and_then(|e| {
        problems.parse(e, |s| {
            if is_variable_name(s) {
                Ok(s.to_owned())
            } else {
                Err(format!("`secrets_key_env = \"{s}\"` names no environment variable: write the variable's name (SHIPGATE_SECRETS_KEY), never the key"))
            }
        })
    });
    let public_url = raw.public_url.as_ref().and_then(|u| {
        problems.parse(u, |s| {
            let ok = (s.starts_with("http://") || s.starts_with("https://"))
                && s.split_once("://").is_some_and(|(_, rest)| !rest.is_empty() && !rest.contains(char::is_whitespace));
            if ok {
                Ok(s.trim_end_matches('/').to_owned())
            } else {
                Err(format!("public_url is the API's address as clients reach it, http:// or https:// (\"https://shipgate.example.com\"), not \"{s}\""))
            }
        })
    });
    ServerConfig {
        oidc,
        secrets_key_env,
        retention,
        lease,
        listen,
        agent_listen,
        toxiproxy_listen,
        public_url,
        watch_config: raw.watch_config.unwrap_or(true),
        config_dir: base_dir.to_path_buf(),
        data_dir,
        database,
        max_artifact_size: max_artifact_size.unwrap_or(ByteSize(512 << 20)),
        max_unpacked_size: max_unpacked_size.unwrap_or(ByteSize(4 << 30)),
        max_files: max_files.unwrap_or(100_000),
        drift_scan,
        isolation: raw
            .isolation
            .as_ref()
            .and_then(|i| problems.parse(i, Isolation::parse))
            .unwrap_or_default(),
        data_plane: raw
            .data_plane
            .as_ref()
            .and_then(|d| problems.parse(d, DataPlane::parse))
            .unwrap_or_default(),
    }
}

/// Checks `server.retention`; a value out of range is a problem at its position.
fn retention(raw: Option<&RawRetention>, problems: &mut Problems) -> Retention {
    let mut out = Retention::default();
    let Some(raw) = raw else {
        return out;
    };
    if let Some(n) = &raw.releases {
        match usize::try_from(*n.get_ref()) {
            Ok(n) if n > 0 => out.releases = n,
            _ => problems.add(
                n.span(),
                format!(
                    "`retention.releases` must be at least 1, not {}",
                    n.get_ref()
                ),
                "write how many of each app's newest releases to keep on disk, for example retention = { releases = 20 }".to_owned(),
            ),
        }
    }
    if let Some(logs) = &raw.logs {
        match problems.parse(logs, Duration::parse) {
            Some(d) if d.as_std().is_zero() => problems.add(
                logs.span(),
                "`retention.logs` must be longer than 0s",
                "write how long a log not written to is kept, for example retention = { logs = \"14d\" }".to_owned(),
            ),
            Some(d) => out.logs = d,
            None => {}
        }
    }
    out
}

/// Checks `limits = { ... }`; a value out of range is a problem at its position.
fn limits(raw: Option<&RawLimits>, problems: &mut Problems) -> Limits {
    let Some(raw) = raw else {
        return Limits::default();
    };
    let memory = raw.memory.as_ref().and_then(|m| {
        let size = problems.parse(m, ByteSize::parse)?;
        if size.0 < 4 << 20 {
            problems.add(
                m.span(),
                format!(
                    "`limits.memory = \"{}\"` is too small to start a process",
                    m.get_ref()
                ),
                "give at least 4MiB, for example limits.memory = \"512MiB\"".to_owned(),
            );
            return None;
        }
        Some(size)
    });
    let cpu = raw.cpu.as_ref().and_then(|c| {
        let cores = *c.get_ref();
        if !(cores.is_finite() && (0.01..=1024.0).contains(&cores)) {
            problems.add(
                c.span(),
                format!("`limits.cpu = {cores}` is not a number of cores between 0.01 and 1024"),
                "write the cores' worth of CPU time an instance may use, for example limits.cpu = 1.5".to_owned(),
            );
            return None;
        }
        Some(cores)
    });
    let pids = raw.pids.as_ref().and_then(|p| {
        let n = u64::try_from(*p.get_ref()).ok().filter(|n| *n >= 8);
        if n.is_none() {
            problems.add(
                p.span(),
                format!(
                    "`limits.pids = {}` leaves no room for the app's own processes and threads",
                    p.get_ref()
                ),
                "give at least 8, for example limits.pids = 512".to_owned(),
            );
        }
        n
    });
    Limits { memory, cpu, pids }
}

/// Parses a size that a limit is set to: zero would refuse everything.
fn positive_size(key: &'static str) -> impl FnOnce(&str) -> Result<ByteSize, String> {
    move |s| match ByteSize::parse(s)? {
        ByteSize(0) => Err(format!(
            "`{key}` must be more than 0 bytes (write a size such as \"512MiB\")"
        )),
        size => Ok(size),
    }
}

fn data_config(
    raw: &Spanned<toml::Table>,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<DataConfig> {
    let span = raw.span();
    let mut bad = |message: String, help: Option<String>| problems.add(span.clone(), message, help);
    let mut data = DataConfig {
        locations: BTreeMap::new(),
        unlisted: Unlisted::Refuse,
        mask: BTreeMap::new(),
        role: Role::Admin,
    };
    for (key, value) in raw.get_ref() {
        match (key.as_str(), value) {
            ("unlisted", toml::Value::String(u)) => {
                data.unlisted = match u.as_str() {
                    "refuse" => Unlisted::Refuse,
                    "keep" => Unlisted::Keep,
                    _ => {
                        bad(format!("`unlisted = \"{u}\"`: write \"refuse\" or \"keep\""), None);
                        continue;
                    }
                }
            }
            ("role", toml::Value::String(r)) => match Role::parse(r) {
                Ok(role) => data.role = role,
                Err(e) => bad(e, None),
            },
            ("mask", toml::Value::Table(tables)) => {
                for (table, columns) in tables {
                    let Some(columns) = columns.as_table() else {
                        bad(format!("`mask.{table}` is a table of column = rule"), None);
                        continue;
                    };
                    let mut rules = BTreeMap::new();
                    for (column, rule) in columns {
                        match crate::mask::Transformer::parse(rule) {
                            Ok(t) => {
                                rules.insert(column.clone(), t);
                            }
                            Err(e) => bad(format!("mask.{table}.{column}: {e}"), None),
                        }
                    }
                    data.mask.insert(table.clone(), rules);
                }
            }
            (env, toml::Value::String(location)) => {
                let Ok(env) = EnvName::parse(env) else {
                    bad(format!("`{env}` in [data] is neither an environment nor a known key (unlisted, role, mask)"), None);
                    continue;
                };
                match DataLocation::parse(location, base_dir) {
                    Some(l) => {
                        data.locations.insert(env, l);
                    }
                    None => bad(
                        format!("data location `{location}` of {env} is neither SQLite nor PostgreSQL"),
                        Some("write \"sqlite://PATH\" or \"postgres://USER:PASSWORD@HOST:PORT/DB\"".to_owned()),
                    ),
                }
            }
            (other, _) => bad(format!("`{other}` in [data] is not understood"), Some("write ENV = \"sqlite://PATH\", unlisted = \"refuse\", role = \"admin\" and [apps.NAME.data.mask.TABLE]".to_owned())),
        }
    }
    Some(data)
}

fn apps(
    raw: BTreeMap<Spanned<String>, RawApp>,
    base_dir: &Path,
    problems: &mut Problems,
) -> Vec<AppConfig> {
    let mut raw: Vec<_> = raw.into_iter().collect();
    raw.sort_by_key(|(name, _)| name.span().start);
    let mut apps = Vec::new();
    // OFREP asks for a flag by key alone: one key, one app.
    let mut flag_owners: BTreeMap<String, String> = BTreeMap::new();
    for (name, app) in raw {
        for key in app.flags.keys() {
            if let Some(owner) = flag_owners.insert(key.get_ref().clone(), name.get_ref().clone()) {
                problems.add(
                    key.span(),
                    format!("flag `{}` is declared by app `{owner}` already", key.get_ref()),
                    "flag keys are unique across apps, since clients ask for a flag by key; rename one, for example to `{app}-{key}`".to_owned(),
                );
            }
        }
        let parsed_name = problems.parse(&name, |s| AppName::parse(s).map_err(|e| e.0));
        let health = app
            .health
            .map(Spanned::into_inner)
            .unwrap_or_else(|| "/".to_owned());
        if !health.starts_with('/') {
            problems.add(
                name.span(),
                format!(
                    "health path `{health}` of app `{}` must start with `/`",
                    name.get_ref()
                ),
                None,
            );
        }
        if let Some(run) = &app.run
            && run.get_ref().trim().is_empty()
        {
            problems.add(
                run.span(),
                format!("`run` of app `{}` is empty", name.get_ref()),
                "give the command that starts the app, for example \"./web --port ${PORT}\""
                    .to_owned(),
            );
        }
        let health_timeout = app
            .health_timeout
            .as_ref()
            .and_then(|t| problems.parse(t, positive_duration("health_timeout")));
        let crash_loop = match &app.crash_loop {
            Some(c) => CrashLoop {
                crashes: *c.crashes.get_ref(),
                within: problems
                    .parse(&c.within, Duration::parse)
                    .unwrap_or(CrashLoop::default().within),
            },
            None => CrashLoop::default(),
        };
        let data = app
            .data
            .as_ref()
            .and_then(|d| data_config(d, base_dir, problems));
        let backup = app
            .backup
            .as_ref()
            .and_then(|b| backup(b, data.as_ref(), name.get_ref(), problems));
        for command in [&app.migrate, &app.migrate_check].into_iter().flatten() {
            if command.get_ref().trim().is_empty() {
                problems.add(
                    command.span(),
                    format!("a migration command of app `{}` is empty", name.get_ref()),
                    "give the command, run from the release, for example \"./migrate up\""
                        .to_owned(),
                );
            }
        }
        if let (Some(m), None) = (&app.migrate, &data) {
            problems.add(
                m.span(),
                format!(
                    "`migrate` of app `{}` has no database to migrate",
                    name.get_ref()
                ),
                format!(
                    "declare where each environment's data lives in [apps.{}.data]",
                    name.get_ref()
                ),
            );
        }
        if let Some(name) = parsed_name {
            apps.push(AppConfig {
                name,
                backup,
                migrate: app.migrate.map(Spanned::into_inner),
                migrate_check: app.migrate_check.map(Spanned::into_inner),
                run: app.run.map(Spanned::into_inner).unwrap_or_default(),
                crash_loop,
                data,
                facts: app.facts,
                limits: limits(app.limits.as_ref(), problems),
                flags: flags(app.flags, problems),
                health,
                health_timeout: health_timeout
                    .unwrap_or(Duration::from_std(std::time::Duration::from_secs(30))),
            });
        }
    }
    apps
}

/// `[apps.NAME.backup]`: its environments have data declared; `jobs` defaults to 2.
fn backup(
    raw: &Spanned<RawBackup>,
    data: Option<&DataConfig>,
    app: &str,
    problems: &mut Problems,
) -> Option<BackupConfig> {
    let b = raw.get_ref();
    let mut envs = Vec::new();
    for env in b.envs.get_ref() {
        let Some(name) = problems.parse(env, |s| EnvName::parse(s).map_err(|e| e.0)) else {
            continue;
        };
        if data.is_none_or(|d| !d.locations.contains_key(&name)) {
            problems.add(
                env.span(),
                format!("app `{app}` has no data declared in `{name}` to back up"),
                format!("add {name} = \"postgres://…\" or \"sqlite://…\" to [apps.{app}.data]"),
            );
            continue;
        }
        envs.push(name);
    }
    if b.envs.get_ref().is_empty() {
        problems.add(
            b.envs.span(),
            "`backup.envs` is empty, so nothing would be backed up",
            "name the environments whose data is kept, for example envs = [\"production\"]"
                .to_owned(),
        );
    }
    let every = b
        .every
        .as_ref()
        .and_then(|e| problems.parse(e, positive_duration("backup.every")));
    if let (Some(e), Some(every)) = (&b.every, every)
        && every.as_std() < std::time::Duration::from_secs(60)
    {
        problems.add(
            e.span(),
            "`backup.every` is under a minute",
            "back up at most once a minute, for example every = \"6h\"".to_owned(),
        );
    }
    let keep = match &b.keep {
        Some(k) if !(1..=10_000).contains(k.get_ref()) => {
            problems.add(k.span(), "`backup.keep` is from 1 to 10000", None);
            None
        }
        Some(k) => Some(*k.get_ref() as u32),
        None => None,
    };
    let keep_for = b
        .keep_for
        .as_ref()
        .and_then(|k| problems.parse(k, positive_duration("backup.keep_for")));
    let jobs = match &b.jobs {
        Some(j) if !(1..=32).contains(j.get_ref()) => {
            problems.add(j.span(), "`backup.jobs` is from 1 to 32", None);
            2
        }
        Some(j) => *j.get_ref() as u32,
        None => 2,
    };
    for query in &b.verify {
        if query.trim().is_empty() {
            problems.add(raw.span(), "a `backup.verify` query is empty", "write a query that checks the restored data, for example \"SELECT count(*) FROM orders\"".to_owned());
        }
    }
    Some(BackupConfig {
        envs,
        every,
        keep,
        keep_for,
        before_promotion: b.before_promotion.unwrap_or(false),
        verify: b.verify.clone(),
        jobs,
    })
}

/// `[apps.NAME.flags.KEY]`: each flag's type, variants (a boolean flag has `on` and `off`
/// unless it declares its own) and default, whose variant is the one with that value (or a
/// variant `default` added for it).
fn flags(
    raw: BTreeMap<Spanned<String>, RawFlag>,
    problems: &mut Problems,
) -> BTreeMap<String, crate::flag::FlagConfig> {
    use crate::flag::{FlagConfig, FlagType};
    let json = |v: &toml::Value| serde_json::to_value(v).unwrap_or(serde_json::Value::Null);
    let mut flags = BTreeMap::new();
    for (key, flag) in raw {
        let key_ok = !key.get_ref().is_empty()
            && key.get_ref().len() <= 128
            && key
                .get_ref()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !key_ok {
            problems.add(
                key.span(),
                format!(
                    "flag key `{}` is not 1 to 128 letters, digits, `-`, `_` or `.`",
                    key.get_ref()
                ),
                None,
            );
            continue;
        }
        let Some(kind) = problems.parse(&flag.kind, FlagType::parse) else {
            continue;
        };
        let mut variants: BTreeMap<String, serde_json::Value> = match &flag.variants {
            Some(v) => v
                .get_ref()
                .iter()
                .map(|(k, v)| (k.clone(), json(v)))
                .collect(),
            None if kind == FlagType::Boolean => [
                ("on".to_owned(), serde_json::Value::Bool(true)),
                ("off".to_owned(), serde_json::Value::Bool(false)),
            ]
            .into_iter()
            .collect(),
            None => BTreeMap::new(),
        };
        let span = flag
            .variants
            .as_ref()
            .map_or(flag.kind.span(), Spanned::span);
        if let Some((name, _)) = variants.iter().find(|(_, v)| !kind.holds(v)) {
            problems.add(
                span.clone(),
                format!(
                    "variant `{name}` of flag `{}` is not a {}",
                    key.get_ref(),
                    kind.as_str()
                ),
                None,
            );
            continue;
        }
        let default = json(flag.default.get_ref());
        if !kind.holds(&default) {
            problems.add(
                flag.default.span(),
                format!(
                    "the default of flag `{}` is not a {}",
                    key.get_ref(),
                    kind.as_str()
                ),
                None,
            );
            continue;
        }
        let default_variant = match variants.iter().find(|(_, v)| **v == default) {
            Some((name, _)) => name.clone(),
            None => {
                variants.insert("default".to_owned(), default);
                "default".to_owned()
            }
        };
        if variants.len() < 2 {
            problems.add(
                span,
                format!("flag `{}` has no variant to turn on besides its default", key.get_ref()),
                "declare its variants, for example variants = { blue = \"blue\", green = \"green\" }"
                    .to_owned(),
            );
            continue;
        }
        flags.insert(
            key.get_ref().clone(),
            FlagConfig {
                key: key.into_inner(),
                kind,
                description: flag.description,
                variants,
                default_variant,
            },
        );
    }
    flags
}

fn environments(
    raw: BTreeMap<Spanned<String>, RawEnvironment>,
    server: &ServerConfig,
    problems: &mut Problems,
) -> Vec<EnvironmentConfig> {
    let mut raw: Vec<_> = raw.into_iter().collect();
    raw.sort_by_key(|(name, _)| name.span().start);
    let names: Vec<String> = raw.iter().map(|(n, _)| n.get_ref().clone()).collect();
    let mut envs = Vec::new();
    // Each address in use, the machines it is bound on, and by what: addresses clash only on
    // the same machine.
    let mut addresses: Vec<(SocketAddr, Vec<String>, String)> = vec![(
        server.listen,
        vec![SERVER_MACHINE.to_owned()],
        "the server (`[server] listen`)".to_owned(),
    )];
    let taken = |addresses: &[(SocketAddr, Vec<String>, String)], at: SocketAddr, on: &[String]| {
        addresses
            .iter()
            .find(|(a, m, _)| same_socket(*a, at) && m.iter().any(|m| on.contains(m)))
            .map(|(_, _, owner)| owner.clone())
    };
    for (name, env) in &raw {
        let parsed_name = problems.parse(name, |s| EnvName::parse(s).map_err(|e| e.0));
        let machines: Vec<String> = if env.hosts.is_empty() {
            vec![SERVER_MACHINE.to_owned()]
        } else {
            env.hosts.iter().map(|h| h.get_ref().clone()).collect()
        };
        let after = env.after.as_ref().and_then(|after| {
            if after.get_ref() == name.get_ref() {
                problems.add(
                    after.span(),
                    format!("environment `{}` comes after itself", name.get_ref()),
                    "name the environment a release must pass first, or remove `after`".to_owned(),
                );
                return None;
            }
            if !names.contains(after.get_ref()) {
                let help = match closest(after.get_ref(), names.iter().map(String::as_str)) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None => format!(
                        "define [environments.{}] or name one of: {}",
                        after.get_ref(),
                        names.join(", ")
                    ),
                };
                problems.add(
                    after.span(),
                    format!("`after = \"{}\"` names no environment", after.get_ref()),
                    help,
                );
                return None;
            }
            problems.parse(after, |s| EnvName::parse(s).map_err(|e| e.0))
        });
        let listen = problems.parse(&env.listen, parse_address);
        if let Some(addr) = listen
            && addr.port() == 0
        {
            problems.add(
                env.listen.span(),
                format!(
                    "environment `{}` listens on port 0, which picks a new port at every start",
                    name.get_ref()
                ),
                "give the environment a stable port, for example listen = \"127.0.0.1:8101\""
                    .to_owned(),
            );
        }
        if let Some(addr) = listen {
            if let Some(owner) = taken(&addresses, addr, &machines) {
                problems.add(
                    env.listen.span(),
                    format!(
                        "environment `{}` listens on {addr}, which {owner} already uses",
                        name.get_ref()
                    ),
                    "give every environment its own address".to_owned(),
                );
            }
            addresses.push((
                addr,
                machines.clone(),
                format!("environment `{}`", name.get_ref()),
            ));
        }
        let mut require = requirements(&env.require, name, env.after.is_some(), problems);
        let known_env = |key: &Spanned<String>, what: &str, problems: &mut Problems| {
            if names.contains(key.get_ref()) && key.get_ref() != name.get_ref() {
                return problems.parse(key, |s| EnvName::parse(s).map_err(|e| e.0));
            }
            let help = closest(key.get_ref(), names.iter().map(String::as_str))
                .filter(|c| *c != name.get_ref())
                .map(|c| format!("did you mean `{c}`?"));
            problems.add(
                key.span(),
                format!(
                    "`{what} = \"{}\"` on environment `{}` names no other environment",
                    key.get_ref(),
                    name.get_ref()
                ),
                help,
            );
            None
        };
        if let Some(p) = &env.require.parity {
            match p.get_ref().as_str() {
                Some(other) => {
                    let key = Spanned::new(p.span(), other.to_owned());
                    require.parity = known_env(&key, "require.parity", problems);
                }
                None => problems.add(p.span(), "`require.parity` names an environment, for example require.parity = \"staging\"", None),
            }
        }
        if let Some(with) = &env.require.signoff {
            require.signoff = known_env(with, "require.signoff", problems);
            let signs_off = raw
                .iter()
                .find(|(n, _)| n.get_ref() == with.get_ref())
                .is_some_and(|(_, e)| e.signoff.is_some());
            if require.signoff.is_some() && !signs_off {
                problems.add(
                    with.span(),
                    format!(
                        "`require.signoff = \"{}\"` names an environment with no sign-off",
                        with.get_ref()
                    ),
                    format!(
                        "add [environments.{}.signoff] with its scenarios",
                        with.get_ref()
                    ),
                );
            }
        }
        let mirrors = env
            .mirrors
            .as_ref()
            .and_then(|m| known_env(m, "mirrors", problems));
        for d in &env.differs {
            if let Err(e) = crate::parity::check_key(d.get_ref()) {
                problems.add(d.span(), e, None);
            }
        }
        let auto = env.auto.as_ref().is_some_and(|a| *a.get_ref());
        if let (Some(a), None) = (&env.auto, &env.after)
            && *a.get_ref()
        {
            problems.add(
                    a.span(),
                    format!("`auto = true` on environment `{}`, which has no `after`", name.get_ref()),
                    "auto-promotion takes releases verified in the environment named by `after`: add `after` or remove `auto`".to_owned(),
                );
        }
        let verify = verify(&env.verify, &server.config_dir, problems);
        let duration = |key: &Option<Spanned<String>>, problems: &mut Problems| {
            key.as_ref()
                .and_then(|d| problems.parse(d, Duration::parse))
        };
        let standby = duration(&env.standby, problems)
            .unwrap_or(Duration::from_std(EnvironmentConfig::DEFAULT_STANDBY));
        let drain = duration(&env.drain, problems)
            .unwrap_or(Duration::from_std(EnvironmentConfig::DEFAULT_DRAIN));
        let request_timeout = duration(&env.request_timeout, problems);
        let chaos = crate::chaos::ChaosRules {
            allow: env.chaos.as_ref().is_some_and(|c| c.allow),
            max_duration: env
                .chaos
                .as_ref()
                .and_then(|c| Some((c.max_duration.as_ref()?, duration(&c.max_duration, problems)?)))
                .filter(|(at, d)| {
                    let ok = d.as_std() <= crate::chaos::LONGEST_MAX_DURATION;
                    if !ok {
                        problems.add(
                            at.span(),
                            format!("`chaos.max_duration = \"{}\"` is longer than a fault may ever last (7d)", at.get_ref()),
                            "a fault must end by itself: write at most \"7d\", for example chaos.max_duration = \"1h\"".to_owned(),
                        );
                    }
                    ok
                })
                .map_or(crate::chaos::DEFAULT_MAX_DURATION, |(_, d)| d.as_std()),
        };
        let network = crate::network::NetworkRules {
            closed: env
                .network
                .as_ref()
                .and_then(|n| n.egress.as_ref())
                .and_then(|e| problems.parse(e, crate::network::NetworkRules::parse_egress))
                .unwrap_or(false),
            allow: env
                .network
                .iter()
                .flat_map(|n| &n.allow)
                .filter_map(|a| problems.parse(a, parse_address))
                .collect(),
        };
        let mut dependencies = Vec::new();
        for (dep, raw) in &env.dependencies {
            let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
            if dep.get_ref().is_empty() || !dep.get_ref().chars().all(ok) {
                problems.add(
                    dep.span(),
                    format!("`{}` is not a dependency name", dep.get_ref()),
                    "name it with lowercase letters, digits and `-` (`db`, `cache`)".to_owned(),
                );
                continue;
            }
            let Some(at) = problems.parse(&raw.listen, parse_address) else {
                continue;
            };
            if let Some(owner) = taken(&addresses, at, &machines) {
                problems.add(
                    raw.listen.span(),
                    format!(
                        "dependency `{}` of `{}` listens on {at}, which {owner} already uses",
                        dep.get_ref(),
                        name.get_ref()
                    ),
                    "give each dependency proxy an address of its own".to_owned(),
                );
            }
            addresses.push((
                at,
                machines.clone(),
                format!(
                    "dependency `{}` of environment `{}`",
                    dep.get_ref(),
                    name.get_ref()
                ),
            ));
            if !raw.upstream.get_ref().contains(':') {
                problems.add(
                    raw.upstream.span(),
                    format!("`{}` is not HOST:PORT", raw.upstream.get_ref()),
                    "write where the dependency listens, for example upstream = \"127.0.0.1:5432\""
                        .to_owned(),
                );
                continue;
            }
            if parse_address(raw.upstream.get_ref()).is_ok_and(|up| same_socket(up, at)) {
                problems.add(
                    raw.upstream.span(),
                    format!(
                        "dependency `{}` of `{}` proxies {at} to itself",
                        dep.get_ref(),
                        name.get_ref()
                    ),
                    "`listen` is where the apps connect and `upstream` where the dependency really is: they must differ".to_owned(),
                );
                continue;
            }
            dependencies.push(Dependency {
                name: dep.get_ref().clone(),
                listen: at,
                upstream: raw.upstream.get_ref().clone(),
            });
        }
        let placement = hosts(env, name, problems);
        let front = env.front.as_ref().and_then(|f| {
            if placement.0.is_empty() {
                problems.add(
                    f.span(),
                    format!("`front` on environment `{}`, which has no `hosts`", name.get_ref()),
                    "a front spreads an environment over its hosts: add `hosts = [...]`, or remove `front`".to_owned(),
                );
                return None;
            }
            let addr = problems.parse(f, parse_address)?;
            let server_machine = [SERVER_MACHINE.to_owned()];
            if let Some(owner) = taken(&addresses, addr, &server_machine) {
                problems.add(
                    f.span(),
                    format!("the front of `{}` is at {addr}, which {owner} already uses", name.get_ref()),
                    "give the front an address of its own".to_owned(),
                );
            }
            addresses.push((
                addr,
                server_machine.to_vec(),
                format!("the front of environment `{}`", name.get_ref()),
            ));
            Some(addr)
        });
        let (vars, secret_vars) = env_vars(&env.vars, parsed_name.as_ref(), problems);
        let secrets_file = env.secrets_file.as_ref().map(|f| {
            let path = server.config_dir.join(f.get_ref());
            if !path.is_file() {
                problems.add(
                    f.span(),
                    format!("secrets_file `{}` is not a file ({})", f.get_ref(), path.display()),
                    "encrypt NAME=value lines for the server's recipient: age -r \"$(shipgate secret recipient)\" -o FILE, relative to the config file's folder".to_owned(),
                );
            }
            path
        });
        if let (Some(name), Some(listen)) = (parsed_name, listen) {
            envs.push(EnvironmentConfig {
                name,
                after,
                listen,
                vars,
                secret_vars,
                secrets_file,
                verify,
                standby,
                drain,
                request_timeout,
                require,
                auto,
                mirrors,
                differs: env.differs.iter().map(|d| d.get_ref().clone()).collect(),
                secrets: env.secrets.clone(),
                isolation: env
                    .isolation
                    .as_ref()
                    .and_then(|i| problems.parse(i, Isolation::parse))
                    .unwrap_or(server.isolation),
                limits: limits(env.limits.as_ref(), problems),
                hosts: placement.0,
                batch: placement.1,
                hosts_required: placement.2,
                front,
                template: None,
                chaos,
                dependencies,
                network,
                canary: env.canary.as_ref().map(|c| canary(c, problems)),
                hotfix: env.hotfix.as_ref().and_then(|h| hotfix(h, problems)),
                signoff: env.signoff.as_ref().and_then(|s| signoff(s, problems)),
                parity_schema: env.parity.as_ref().and_then(|p| p.schema).unwrap_or(false),
                load_allow: env.load.as_ref().and_then(|l| l.allow).unwrap_or(false),
            });
        }
    }
    // A hotfix's `from` must be on the way into its environment.
    for (name, env) in &raw {
        let (Some(h), Some(lane)) = (
            env.hotfix.as_ref(),
            envs.iter()
                .find(|e| e.name.as_str() == name.get_ref())
                .and_then(|e| e.hotfix.as_ref()),
        ) else {
            continue;
        };
        let mut at = envs
            .iter()
            .find(|e| e.name.as_str() == name.get_ref())
            .and_then(|e| e.after.clone());
        let mut seen = 0;
        let on_the_way = loop {
            match at {
                Some(before) if before == lane.from => break true,
                Some(before) if seen < envs.len() => {
                    seen += 1;
                    at = envs
                        .iter()
                        .find(|e| e.name == before)
                        .and_then(|e| e.after.clone());
                }
                _ => break false,
            }
        };
        if !on_the_way {
            problems.add(
                h.get_ref().from.span(),
                format!(
                    "the hotfix lane of `{}` comes from `{}`, which is not on the way into it",
                    name.get_ref(),
                    lane.from
                ),
                "name an environment its `after` chain passes through, such as staging".to_owned(),
            );
        }
    }
    if let Some(cycle) = find_cycle(&envs) {
        let first = raw.iter().find(|(n, _)| n.get_ref() == cycle[0].as_str());
        let span = first
            .and_then(|(_, e)| e.after.as_ref())
            .map_or(0..0, Spanned::span);
        let path: Vec<&str> = cycle.iter().map(EnvName::as_str).collect();
        problems.add(
            span,
            format!("environments form a cycle in `after`: {}", path.join(" → ")),
            "one of them must come first: remove its `after`".to_owned(),
        );
        return envs;
    }
    order(envs)
}

/// `[environments.NAME.signoff]`: the role defaults to tester; the scenarios are named, distinct
/// and at least one.
fn signoff(raw: &Spanned<RawSignoff>, problems: &mut Problems) -> Option<SignoffConfig> {
    let s = raw.get_ref();
    let role = match &s.role {
        Some(r) => match problems.parse(r, Role::parse)? {
            Role::Viewer => {
                problems.add(
                    r.span(),
                    "a viewer changes nothing, so it may not sign off",
                    "write role = \"tester\" (the default), or another role that may act"
                        .to_owned(),
                );
                return None;
            }
            role => role,
        },
        None => Role::Tester,
    };
    let mut scenarios: Vec<String> = Vec::new();
    for scenario in s.scenarios.get_ref() {
        let name = scenario.get_ref().trim();
        if name.is_empty()
            || name.chars().count() > SCENARIO_MAX
            || name.chars().any(char::is_control)
        {
            problems.add(
                scenario.span(),
                format!("a scenario is one line of 1 to {SCENARIO_MAX} characters"),
                "name what the tester walks through, for example \"checkout with a saved card\""
                    .to_owned(),
            );
        } else if scenarios.iter().any(|n| n == name) {
            problems.add(
                scenario.span(),
                format!("the scenario `{name}` is listed twice"),
                "each scenario is passed once per person: list it once".to_owned(),
            );
        } else {
            scenarios.push(name.to_owned());
        }
    }
    if s.scenarios.get_ref().is_empty() {
        problems.add(
            s.scenarios.span(),
            "`signoff.scenarios` is empty, so there would be nothing to sign off",
            "list what the testers walk through, for example scenarios = [\"checkout with a saved card\"]".to_owned(),
        );
        return None;
    }
    Some(SignoffConfig { role, scenarios })
}

/// `[environments.NAME.hotfix]`: the role defaults to admin; approvals are never skipped.
fn hotfix(raw: &Spanned<RawHotfix>, problems: &mut Problems) -> Option<HotfixConfig> {
    let h = raw.get_ref();
    let from = problems.parse(&h.from, |s| EnvName::parse(s).map_err(|e| e.to_string()));
    let mut skip = Vec::new();
    for key in &h.skip {
        let k = key.get_ref();
        if HOTFIX_SKIPPABLE.contains(&k.as_str()) {
            skip.push(k.clone());
        } else if k == "require.approvals" {
            problems.add(
                key.span(),
                "a hotfix never skips `require.approvals`".to_owned(),
                "approvals still hold for a hotfix; the people of the rule may give them at once"
                    .to_owned(),
            );
        } else {
            problems.add(
                key.span(),
                format!("`{k}` is not a requirement a hotfix may skip"),
                format!("write one of {}", HOTFIX_SKIPPABLE.join(", ")),
            );
        }
    }
    let role = match &h.role {
        Some(r) => problems.parse(r, Role::parse)?,
        None => Role::Admin,
    };
    Some(HotfixConfig {
        from: from?,
        skip,
        role,
    })
}

/// `[environments.NAME.canary]`, with its defaults.
fn canary(raw: &Spanned<RawCanary>, problems: &mut Problems) -> CanaryConfig {
    use crate::canary::Step;
    let at = raw.span();
    let raw = raw.get_ref();
    let mut steps = Vec::new();
    match &raw.steps {
        None => steps.extend(CanaryConfig::DEFAULT_STEPS),
        Some(written) if written.is_empty() || written.len() > 20 => problems.add(
            at.clone(),
            format!("`canary.steps` has {} steps", written.len()),
            "write 1 to 20 steps, for example steps = [\"5%\", \"25%\", \"50%\"]".to_owned(),
        ),
        Some(written) => {
            let mut share = 0.0;
            for w in written {
                let Some(step) = problems.parse(w, Step::parse) else {
                    continue;
                };
                match step {
                    Step::Weight(p) if p <= share => problems.add(
                        w.span(),
                        format!("step `{}` does not grow the canary's share ({share}% before it)", w.get_ref()),
                        "each weight step is larger than the one before, so no pinned client goes back to the stable release".to_owned(),
                    ),
                    Step::Weight(p) => share = p,
                    Step::Mirror(_) if share > 0.0 => problems.add(
                        w.span(),
                        format!("mirror step `{}` comes after the canary already serves {share}% of the users", w.get_ref()),
                        "put mirror steps first: a mirror sends users only to the stable release".to_owned(),
                    ),
                    Step::Mirror(_) | Step::Pause => {}
                }
                steps.push(step);
            }
        }
    }
    let step = raw
        .step
        .as_ref()
        .and_then(|d| Some((d, problems.parse(d, Duration::parse)?)))
        .filter(|(d, step)| {
            let ok = step.as_std() >= std::time::Duration::from_secs(1);
            if !ok {
                problems.add(
                    d.span(),
                    format!("`canary.step = \"{}\"` is shorter than a second", d.get_ref()),
                    "a step is its analysis window: write at least \"1s\", for example step = \"1m\"".to_owned(),
                );
            }
            ok
        })
        .map_or(Duration::from_std(CanaryConfig::DEFAULT_STEP), |(_, d)| d);
    let defaults = CanaryConfig::DEFAULT_RULES;
    let mut share = |key: &str,
                     value: &Option<Spanned<f64>>,
                     lo: f64,
                     hi: f64,
                     default: f64,
                     example: &str| {
        match value {
            Some(v) if !(*v.get_ref() >= lo && *v.get_ref() < hi) => {
                problems.add(
                    v.span(),
                    format!("`canary.{key} = {}` is out of range", v.get_ref()),
                    format!("write a number from {lo} up to (not including) {hi}, for example {key} = {example}"),
                );
                default
            }
            Some(v) => *v.get_ref(),
            None => default,
        }
    };
    let max_error_rate = share(
        "max_error_rate",
        &raw.max_error_rate,
        0.0,
        1.0,
        defaults.max_error_rate,
        "0.01",
    );
    let max_latency_increase = share(
        "max_latency_increase",
        &raw.max_latency_increase,
        0.0,
        100.0,
        defaults.max_latency_increase,
        "0.25",
    );
    let confidence = share(
        "confidence",
        &raw.confidence,
        0.5,
        1.0,
        defaults.confidence,
        "0.98",
    );
    let min_requests = match &raw.min_requests {
        Some(n) if !(1..=10_000_000).contains(n.get_ref()) => {
            problems.add(
                n.span(),
                format!("`canary.min_requests = {}` is out of range", n.get_ref()),
                "write how many requests each side needs in a step before it is judged, 1 or more, for example min_requests = 100".to_owned(),
            );
            defaults.min_requests
        }
        Some(n) => *n.get_ref() as u64,
        None => defaults.min_requests,
    };
    let sticky = raw
        .sticky
        .as_ref()
        .and_then(|s| problems.parse(s, crate::canary::Sticky::parse))
        .unwrap_or_default();
    CanaryConfig {
        steps,
        step,
        rules: crate::canary::Rules {
            min_requests,
            max_error_rate,
            max_latency_increase,
            confidence,
        },
        sticky,
    }
}

/// `verify.*` of an environment or a template.
fn verify(raw: &RawVerify, config_dir: &Path, problems: &mut Problems) -> VerifyConfig {
    for file in &raw.experiments {
        let at = Path::new(file.get_ref());
        let inside = at.is_relative()
            && at
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !inside {
            problems.add(
                file.span(),
                format!("experiment `{}` is not a file inside the config's folder", file.get_ref()),
                "name the experiment by its path relative to the config file's folder, for example \"chaos/db-slow.json\"".to_owned(),
            );
        } else if !config_dir.join(at).is_file() {
            problems.add(
                file.span(),
                format!(
                    "experiment `{}` is not there: {} is no file",
                    file.get_ref(),
                    config_dir.join(at).display()
                ),
                "write the Chaos Toolkit experiment there, or correct the path (relative to the config file's folder)".to_owned(),
            );
        }
    }
    VerifyConfig {
        tests: raw.tests.clone(),
        timeout: raw
            .timeout
            .as_ref()
            .and_then(|t| problems.parse(t, Duration::parse)),
        http: http_checks(&raw.http, problems),
        watch: watch_rule(raw, problems),
        experiments: raw
            .experiments
            .iter()
            .map(|e| e.get_ref().clone())
            .collect(),
        load: raw.load.as_ref().and_then(|l| load(l, problems)),
    }
}

/// `verify.load`, with its defaults: warmup 5 s, max_error_rate 0.001, compare "previous",
/// max_regression 0.15, 64 connections.
fn load(raw: &Spanned<RawLoad>, problems: &mut Problems) -> Option<crate::load::LoadConfig> {
    let l = raw.get_ref();
    let rate = *l.rate.get_ref();
    if !(1..=1_000_000).contains(&rate) {
        problems.add(
            l.rate.span(),
            "`verify.load.rate` is from 1 to 1000000 requests per second",
            None,
        );
    }
    let duration = problems.parse(&l.duration, positive_duration("verify.load.duration"));
    let warmup = match &l.warmup {
        Some(w) => problems.parse(w, Duration::parse),
        None => Some(Duration::from_std(std::time::Duration::from_secs(5))),
    };
    let mut requests = Vec::new();
    for r in l.requests.get_ref() {
        let method = r
            .method
            .clone()
            .unwrap_or_else(|| "GET".to_owned())
            .to_ascii_uppercase();
        if !r.path.get_ref().starts_with('/') {
            problems.add(
                r.path.span(),
                format!("request path `{}` must start with `/`", r.path.get_ref()),
                None,
            );
        }
        if !matches!(
            method.as_str(),
            "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS"
        ) {
            problems.add(
                r.path.span(),
                format!("`{method}` is not an HTTP method shipgate sends"),
                "write GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS".to_owned(),
            );
        }
        requests.push(crate::load::LoadRequest {
            method,
            path: r.path.get_ref().clone(),
            body: r.body.clone(),
            headers: r.headers.clone(),
            weight: r.weight.unwrap_or(1).max(1),
        });
    }
    if requests.is_empty() {
        problems.add(
            l.requests.span(),
            "`verify.load.requests` is empty, so there is nothing to send",
            "list the requests, for example requests = [{ path = \"/\" }]".to_owned(),
        );
    }
    let ratio =
        |v: &Option<Spanned<f64>>, what: &str, default: f64, problems: &mut Problems| match v {
            Some(x) if !(0.0..=10.0).contains(x.get_ref()) => {
                problems.add(
                    x.span(),
                    format!("`verify.load.{what}` is a share from 0 to 10"),
                    None,
                );
                default
            }
            Some(x) => *x.get_ref(),
            None => default,
        };
    let max_error_rate = ratio(&l.max_error_rate, "max_error_rate", 0.001, problems);
    let max_regression = ratio(&l.max_regression, "max_regression", 0.15, problems);
    let max_p99 = l
        .max_p99
        .as_ref()
        .and_then(|m| problems.parse(m, positive_duration("verify.load.max_p99")));
    let compare_previous = match &l.compare {
        None => true,
        Some(c) if c.get_ref() == "previous" => true,
        Some(c) if c.get_ref() == "none" => false,
        Some(c) => {
            problems.add(
                c.span(),
                format!("`compare = \"{}\"` is not known", c.get_ref()),
                "write \"previous\" (the release this one replaces) or \"none\"".to_owned(),
            );
            true
        }
    };
    let connections = match &l.connections {
        Some(c) if !(1..=10_000).contains(c.get_ref()) => {
            problems.add(
                c.span(),
                "`verify.load.connections` is from 1 to 10000",
                None,
            );
            64
        }
        Some(c) => *c.get_ref() as u32,
        None => 64,
    };
    Some(crate::load::LoadConfig {
        rate: rate.clamp(1, 1_000_000) as u32,
        duration: duration?.as_std(),
        warmup: warmup?.as_std(),
        requests,
        max_error_rate,
        max_p99: max_p99.map(|d| d.as_std()),
        compare_previous,
        max_regression,
        connections,
    })
}

/// `[notify.*]`: each target's URL, events, filters, format, secret and attempts.
fn notify_targets(
    raw: &BTreeMap<Spanned<String>, RawNotify>,
    problems: &mut Problems,
) -> Vec<crate::notify::Target> {
    let mut targets = Vec::new();
    for (name, t) in raw {
        let url = t.url.get_ref();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            problems.add(
                t.url.span(),
                format!("`{url}` is not an http:// or https:// URL"),
                "write where events are POSTed, for example url = \"https://hooks.example.com/shipgate\"".to_owned(),
            );
        } else if let Some(ip) = url_ip(url).filter(|ip| is_link_local(*ip)) {
            problems.add(
                t.url.span(),
                format!("`{url}` is on a link-local address ({ip}): that is where clouds serve instance metadata and credentials, never a webhook"),
                "write the receiver's own address or host name".to_owned(),
            );
        }
        if t.events.is_empty() {
            problems.add(
                name.span(),
                format!("[notify.{}] names no events", name.get_ref()),
                "write events = [\"promotion.failed\", \"environment.*\"] (or [\"*\"] for all)"
                    .to_owned(),
            );
        }
        for e in &t.events {
            let family = e.get_ref().strip_suffix(".*").unwrap_or(e.get_ref());
            let known = e.get_ref() == "*"
                || crate::EventKind::all()
                    .iter()
                    .any(|k| k.to_string() == *e.get_ref() || k.family() == family);
            if !known {
                problems.add(
                    e.span(),
                    format!("`{}` is not an event kind shipgate records", e.get_ref()),
                    "write a kind such as \"promotion.failed\", a family such as \"environment.*\", or \"*\"".to_owned(),
                );
            }
        }
        let format = t
            .format
            .as_ref()
            .and_then(|f| problems.parse(f, crate::notify::Format::parse))
            .unwrap_or(crate::notify::Format::CloudEvents);
        if let Some(secret) = &t.secret
            && !secret.get_ref().starts_with("whsec_")
        {
            problems.add(
                secret.span(),
                "a signing secret is `whsec_` and base64".to_owned(),
                "write secret = \"whsec_...\" (or secret_env = \"VARIABLE\" to read it from the environment)".to_owned(),
            );
        }
        let max_attempts = match &t.max_attempts {
            Some(n) if !(1..=100).contains(n.get_ref()) => {
                problems.add(n.span(), "max_attempts is from 1 to 100".to_owned(), None);
                crate::notify::DEFAULT_MAX_ATTEMPTS
            }
            Some(n) => *n.get_ref() as u32,
            None => crate::notify::DEFAULT_MAX_ATTEMPTS,
        };
        targets.push(crate::notify::Target {
            name: name.get_ref().clone(),
            url: url.clone(),
            events: t.events.iter().map(|e| e.get_ref().clone()).collect(),
            envs: t.envs.clone(),
            apps: t.apps.clone(),
            format,
            secret: t.secret.as_ref().map(|s| s.get_ref().clone()),
            secret_env: t.secret_env.clone(),
            max_attempts,
        });
    }
    targets
}

/// `[templates.*]`, checked against the environments they copy and the addresses in use.
fn templates(
    raw: BTreeMap<Spanned<String>, RawTemplate>,
    envs: &[EnvironmentConfig],
    server: &ServerConfig,
    problems: &mut Problems,
) -> Vec<TemplateConfig> {
    let mut raw: Vec<_> = raw.into_iter().collect();
    raw.sort_by_key(|(name, _)| name.span().start);
    let names: Vec<&str> = envs.iter().map(|e| e.name.as_str()).collect();
    let mut taken: Vec<(SocketAddr, String)> = envs
        .iter()
        .map(|e| (e.listen, format!("environment `{}`", e.name)))
        .chain(
            envs.iter()
                .filter_map(|e| Some((e.front?, format!("the front of `{}`", e.name)))),
        )
        .chain([(server.listen, "the server (`[server] listen`)".to_owned())])
        .collect();
    let mut ranges: Vec<(PortRange, String)> = Vec::new();
    let mut out = Vec::new();
    for (name, t) in &raw {
        let template_name = problems.parse(name, |s| EnvName::parse(s).map_err(|e| e.0));
        let known = |key: &Spanned<String>, what: &str, problems: &mut Problems| {
            if names.contains(&key.get_ref().as_str()) {
                return problems.parse(key, |s| EnvName::parse(s).map_err(|e| e.0));
            }
            let help = match closest(key.get_ref(), names.iter().copied()) {
                Some(c) => format!("did you mean `{c}`?"),
                None => format!("name one of: {}", names.join(", ")),
            };
            problems.add(
                key.span(),
                format!(
                    "`{what} = \"{}\"` of template `{}` names no environment",
                    key.get_ref(),
                    name.get_ref()
                ),
                help,
            );
            None
        };
        let from = known(&t.from, "from", problems);
        let data_from = t.data.as_ref().and_then(|d| {
            if !*d.masked.get_ref() {
                problems.add(
                    d.masked.span(),
                    format!("template `{}` would seed its environments with unmasked data", name.get_ref()),
                    "on-demand environments get masked data only: write masked = true (the app's [apps.NAME.data.mask] rules apply), or remove `data`".to_owned(),
                );
            }
            known(&d.from, "data.from", problems)
        });
        let ttl = t
            .ttl
            .as_ref()
            .and_then(|d| problems.parse(d, positive_duration("ttl")))
            .unwrap_or(Duration::from_std(std::time::Duration::from_secs(
                48 * 3600,
            )));
        let ttl_from = t
            .ttl_from
            .as_ref()
            .and_then(|f| problems.parse(f, TtlFrom::parse))
            .unwrap_or(TtlFrom::LastUse);
        let count = |key: &Option<Spanned<i64>>, what: &str, problems: &mut Problems| {
            let n = key.as_ref()?;
            let value = usize::try_from(*n.get_ref()).ok().filter(|n| *n > 0);
            if value.is_none() {
                problems.add(
                    n.span(),
                    format!("`{what}` must be at least 1, not {}", n.get_ref()),
                    format!(
                        "write how many environments may exist at once, for example {what} = 3"
                    ),
                );
            }
            value
        };
        let max = count(&t.max, "max", problems).unwrap_or(10);
        let max_per_requester = count(&t.max_per_requester, "max_per_requester", problems);
        let listen_range = problems.parse(&t.listen_range, PortRange::parse);
        if let Some(range) = listen_range {
            if let Some((a, owner)) = taken.iter().find(|(a, _)| range.holds(*a)) {
                problems.add(
                    t.listen_range.span(),
                    format!(
                        "the range {range} of template `{}` holds {a}, which {owner} uses",
                        name.get_ref()
                    ),
                    "give on-demand environments a range of ports nothing else listens on"
                        .to_owned(),
                );
            }
            if let Some((other, owner)) = ranges.iter().find(|(r, _)| {
                r.first <= range.last
                    && range.first <= r.last
                    && (r.ip == range.ip || r.ip.is_unspecified() || range.ip.is_unspecified())
            }) {
                problems.add(
                    t.listen_range.span(),
                    format!(
                        "the range {range} of template `{}` overlaps {other} of {owner}",
                        name.get_ref()
                    ),
                    "give each template a range of its own".to_owned(),
                );
            }
            if max > range.len() {
                problems.add(
                    t.listen_range.span(),
                    format!("template `{}` allows {max} environments but its range {range} has {} ports", name.get_ref(), range.len()),
                    "widen the range or lower `max`: each environment needs a port".to_owned(),
                );
            }
            ranges.push((range, format!("template `{}`", name.get_ref())));
        }
        let listen = t.listen.as_ref().and_then(|l| {
            let addr = problems.parse(l, parse_address)?;
            let in_range = ranges.iter().find(|(r, _)| r.holds(addr));
            if let Some((_, owner)) = taken.iter().find(|(a, _)| same_socket(*a, addr)) {
                problems.add(
                    l.span(),
                    format!(
                        "template `{}` listens on {addr}, which {owner} already uses",
                        name.get_ref()
                    ),
                    "give it an address of its own".to_owned(),
                );
            } else if let Some((_, owner)) = in_range {
                problems.add(
                    l.span(),
                    format!(
                        "template `{}` listens on {addr}, inside the range of {owner}",
                        name.get_ref()
                    ),
                    "give it an address outside every `listen_range`".to_owned(),
                );
            }
            taken.push((addr, format!("template `{}`", name.get_ref())));
            Some(addr)
        });
        let host_suffix = t.host_suffix.as_ref().and_then(|h| {
            let suffix = h.get_ref().to_ascii_lowercase();
            let valid = suffix.starts_with('.')
                && suffix.len() > 1
                && suffix[1..].split('.').all(|label| {
                    !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !valid {
                problems.add(h.span(), format!("`host_suffix = \"{}\"` is not the end of a host name", h.get_ref()), "start it with a dot, for example host_suffix = \".preview.localhost\"".to_owned());
                return None;
            }
            if t.listen.is_none() {
                problems.add(h.span(), format!("`host_suffix` on template `{}`, which has no `listen`", name.get_ref()), "host names are served on the template's own address: add listen = \"127.0.0.1:9000\"".to_owned());
            }
            Some(suffix)
        });
        let hosts = t.hosts.as_ref().map(|hosts| {
            hosts
                .iter()
                .filter_map(|h| match EnvName::parse(h.get_ref()) {
                    Ok(_) => Some(h.get_ref().clone()),
                    Err(e) => {
                        problems.add(
                            h.span(),
                            format!("host name `{}`: {}", h.get_ref(), e.0),
                            None,
                        );
                        None
                    }
                })
                .collect()
        });
        let verify = t
            .verify
            .as_ref()
            .map(|v| verify(v, &server.config_dir, problems));
        let (vars, secret_vars) = env_vars(&t.vars, from.as_ref(), problems);
        let base = from
            .as_ref()
            .and_then(|f| envs.iter().find(|e| e.name == *f));
        for secret in &t.secrets {
            if base.is_some_and(|b| {
                !b.vars.contains_key(secret.get_ref())
                    && !b.secret_vars.contains_key(secret.get_ref())
            }) {
                problems.add(
                    secret.span(),
                    format!(
                        "`secrets` of template `{}` names `{}`, which is no variable of `{}`",
                        name.get_ref(),
                        secret.get_ref(),
                        t.from.get_ref()
                    ),
                    "name variables of the environment the template copies, or give the template a value of its own in `vars`".to_owned(),
                );
            }
        }
        let secrets = t.secrets.iter().map(|s| s.get_ref().clone()).collect();
        let limits = limits(t.limits.as_ref(), problems);
        if let (Some(name), Some(from), Some(listen_range)) = (template_name, from, listen_range) {
            out.push(TemplateConfig {
                name,
                from,
                ttl,
                ttl_from,
                max,
                max_per_requester,
                listen_range,
                listen,
                host_suffix,
                data_from,
                vars,
                secret_vars,
                secrets,
                limits,
                hosts,
                verify,
            });
        }
    }
    out
}

/// `hosts`, `rollout.batch` and `hosts_required` of one environment.
fn hosts(
    env: &RawEnvironment,
    name: &Spanned<String>,
    problems: &mut Problems,
) -> (Vec<String>, Batch, usize) {
    let mut hosts: Vec<String> = Vec::new();
    for h in &env.hosts {
        if let Err(e) = crate::names::EnvName::parse(h.get_ref()) {
            problems.add(
                h.span(),
                format!("host name `{}`: {}", h.get_ref(), e.0),
                None,
            );
        } else if hosts.contains(h.get_ref()) {
            problems.add(
                h.span(),
                format!(
                    "host `{}` is named twice on environment `{}`",
                    h.get_ref(),
                    name.get_ref()
                ),
                None,
            );
        } else {
            hosts.push(h.get_ref().clone());
        }
    }
    let batch = match env.rollout.as_ref().and_then(|r| r.batch.as_ref()) {
        None => Batch::All,
        Some(b) => {
            let parsed = match b.get_ref() {
                toml::Value::Integer(n) if *n >= 1 => usize::try_from(*n).ok().map(Batch::Hosts),
                toml::Value::String(s) => s
                    .strip_suffix('%')
                    .and_then(|p| p.trim().parse::<u8>().ok())
                    .filter(|p| (1..=100).contains(p))
                    .map(Batch::Percent),
                _ => None,
            };
            parsed.unwrap_or_else(|| {
                problems.add(
                    b.span(),
                    "`rollout.batch` is a number of hosts (batch = 2) or a share of them (batch = \"25%\")",
                    None,
                );
                Batch::All
            })
        }
    };
    if env.rollout.is_some() && hosts.is_empty() {
        problems.add(
            0..0,
            format!(
                "`rollout` on environment `{}`, which has no `hosts`",
                name.get_ref()
            ),
            "add `hosts = [...]`, or remove `rollout`".to_owned(),
        );
    }
    let required = match &env.hosts_required {
        None => hosts.len(),
        Some(n) => match usize::try_from(*n.get_ref()) {
            Ok(r) if r >= 1 && r <= hosts.len() => r,
            _ => {
                problems.add(
                    n.span(),
                    format!(
                        "`hosts_required = {}` on environment `{}`, which has {} hosts",
                        n.get_ref(),
                        name.get_ref(),
                        hosts.len()
                    ),
                    "write a number from 1 to the number of its hosts".to_owned(),
                );
                hosts.len()
            }
        },
    };
    (hosts, batch, required)
}

/// `require.*` of one environment.
fn requirements(
    raw: &RawRequire,
    env: &Spanned<String>,
    has_after: bool,
    problems: &mut Problems,
) -> Requirements {
    let mut req = Requirements::default();
    if let Some(a) = &raw.approvals {
        req.approvals = approval_rule(a, problems);
    }
    if let Some(within) = &raw.backup_within {
        req.backup_within = problems.parse(within, positive_duration("require.backup_within"));
    }
    if let Some(soak) = &raw.soak {
        req.soak = problems.parse(soak, Duration::parse);
        if !has_after {
            problems.add(
                soak.span(),
                format!("`require.soak` on environment `{}`, which has no `after`", env.get_ref()),
                "soak time is counted in the environment before this one: add `after` or remove `require.soak`".to_owned(),
            );
        }
    }
    if let Some(w) = &raw.window {
        let texts: Vec<&toml::Value> = match w.get_ref() {
            toml::Value::Array(items) => items.iter().collect(),
            one => vec![one],
        };
        if texts.is_empty() {
            problems.add(
                w.span(),
                "`require.window = []` names no window, so no deploy could ever enter",
                "name at least one, for example require.window = \"Mon-Fri 09:00-17:00 Europe/Paris\", or remove the line".to_owned(),
            );
        }
        for text in texts {
            match text.as_str().map(DeployWindow::parse) {
                Some(Ok(window)) => req.windows.push(window),
                Some(Err(e)) => problems.add(w.span(), e, None),
                None => problems.add(
                    w.span(),
                    "`require.window` is a string or a list of strings",
                    "for example require.window = \"Mon-Fri 09:00-17:00 Europe/Paris\"".to_owned(),
                ),
            }
        }
    }
    req
}

fn approval_rule(raw: &Spanned<toml::Value>, problems: &mut Problems) -> Option<ApprovalRule> {
    let help = "write require.approvals = 2, or { count = 2, role = \"approver\" }".to_owned();
    let (count, role) = match raw.get_ref() {
        toml::Value::Integer(n) => (Some(*n), None),
        toml::Value::Table(t) => {
            if let Some(key) = t.keys().find(|k| !matches!(k.as_str(), "count" | "role")) {
                problems.add(
                    raw.span(),
                    format!("unknown key `{key}` in `require.approvals`"),
                    help,
                );
                return None;
            }
            (
                t.get("count").and_then(toml::Value::as_integer),
                t.get("role"),
            )
        }
        _ => (None, None),
    };
    let Some(count) = count.filter(|n| (1..=100).contains(n)) else {
        problems.add(
            raw.span(),
            "`require.approvals` needs a count from 1 to 100",
            help,
        );
        return None;
    };
    let role = match role {
        None => None,
        Some(r) => match r.as_str().map(Role::parse) {
            Some(Ok(r @ (Role::Approver | Role::Admin))) => Some(r),
            _ => {
                problems.add(
                    raw.span(),
                    "the role of `require.approvals` must be \"approver\" or \"admin\" (the roles that may approve)",
                    None,
                );
                return None;
            }
        },
    };
    Some(ApprovalRule {
        count: count as u32,
        role,
    })
}

fn watch_rule(raw: &RawVerify, problems: &mut Problems) -> Option<WatchRule> {
    let Some(watch) = &raw.watch else {
        let thresholds = [
            raw.max_error_rate.as_ref().map(Spanned::span),
            raw.max_p99.as_ref().map(Spanned::span),
            raw.min_requests.as_ref().map(Spanned::span),
            raw.inconclusive.as_ref().map(Spanned::span),
            raw.watch_traffic.as_ref().map(Spanned::span),
        ];
        if let Some(span) = thresholds.into_iter().flatten().next() {
            problems.add(
                span,
                "this threshold of the watch has no `verify.watch`",
                "say how long to watch after the switch, for example verify.watch = \"2m\""
                    .to_owned(),
            );
        }
        return None;
    };
    let duration = problems.parse(watch, Duration::parse)?;
    if let Some(rate) = &raw.max_error_rate
        && !(0.0..=1.0).contains(rate.get_ref())
    {
        problems.add(
            rate.span(),
            format!(
                "verify.max_error_rate {} is not a share from 0 to 1",
                rate.get_ref()
            ),
            "write 0.01 for 1%".to_owned(),
        );
    }
    let max_p99 = raw
        .max_p99
        .as_ref()
        .and_then(|p| problems.parse(p, positive_duration("verify.max_p99")));
    if let Some(m) = &raw.min_requests
        && *m.get_ref() == 0
    {
        problems.add(
            m.span(),
            "`verify.min_requests` must be at least 1",
            "a watch that needs no request judges nothing: write 1 or more, or remove it for the default"
                .to_owned(),
        );
    }
    // A quiet environment is not a failed release: by default it waits for a person.
    let inconclusive = match &raw.inconclusive {
        Some(i) => problems.parse(i, Inconclusive::parse)?,
        None => Inconclusive::Hold,
    };
    let traffic = raw.watch_traffic.as_ref().and_then(|t| {
        let w = t.get_ref();
        let path = w.path.clone().unwrap_or_else(|| "/".to_owned());
        if !(w.rps > 0.0 && w.rps <= 1000.0 && path.starts_with('/')) {
            problems.add(
                t.span(),
                format!(
                    "`verify.watch_traffic` needs a path starting with `/` and 0 < rps ≤ 1000 (got {path:?}, {})",
                    w.rps
                ),
                "for example verify.watch_traffic = { path = \"/\", rps = 5 }".to_owned(),
            );
            return None;
        }
        Some(WatchTraffic { path, rps: w.rps })
    });
    Some(WatchRule {
        watch: duration,
        max_error_rate: raw.max_error_rate.as_ref().map(|r| *r.get_ref()),
        max_p99,
        min_requests: raw
            .min_requests
            .as_ref()
            .map_or(WatchRule::DEFAULT_MIN_REQUESTS, |m| *m.get_ref()),
        inconclusive,
        traffic,
    })
}

fn http_checks(raw: &[RawHttpCheck], problems: &mut Problems) -> Vec<HttpCheck> {
    let mut checks = Vec::new();
    for c in raw {
        if !c.path.get_ref().starts_with('/') {
            problems.add(
                c.path.span(),
                format!(
                    "verify.http path `{}` must start with `/`",
                    c.path.get_ref()
                ),
                None,
            );
            continue;
        }
        let status = c.status.as_ref().map_or(200, |s| *s.get_ref());
        if !(100..=599).contains(&status) {
            if let Some(s) = &c.status {
                problems.add(s.span(), format!("{status} is not an HTTP status"), None);
            }
            continue;
        }
        let body = match &c.body {
            None => None,
            Some(b) => match regex_lite::Regex::new(b.get_ref()) {
                Ok(r) => Some(r),
                Err(e) => {
                    problems.add(
                        b.span(),
                        format!("verify.http body pattern is not a regular expression: {e}"),
                        None,
                    );
                    continue;
                }
            },
        };
        checks.push(HttpCheck {
            path: c.path.get_ref().clone(),
            status,
            body,
        });
    }
    checks
}

/// The IP address a URL names as its host, if it names one (not a host name).
fn url_ip(url: &str) -> Option<std::net::IpAddr> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next()?.parse().ok();
    }
    host.split(':').next()?.parse().ok()
}

/// Whether `ip` is link-local (169.254.0.0/16, fe80::/10).
fn is_link_local(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_link_local(),
        std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// The server's own machine, among host names (which are never empty).
const SERVER_MACHINE: &str = "";

/// Whether two addresses would collide; port 0 (any free port) never does.
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Follows `after` from each environment; returns the names around the first cycle found.
fn find_cycle(envs: &[EnvironmentConfig]) -> Option<Vec<EnvName>> {
    let after: HashMap<&EnvName, &EnvName> = envs
        .iter()
        .filter_map(|e| Some((&e.name, e.after.as_ref()?)))
        .collect();
    for env in envs {
        let mut path = vec![&env.name];
        let mut at = &env.name;
        while let Some(next) = after.get(at) {
            if let Some(pos) = path.iter().position(|p| p == next) {
                let mut cycle: Vec<EnvName> = path[pos..].iter().map(|n| (*n).clone()).collect();
                cycle.push((*next).clone());
                return Some(cycle);
            }
            path.push(next);
            at = next;
        }
    }
    None
}

/// Sorts environments so each comes after the one it names; file order otherwise. Needs no cycle.
fn order(mut envs: Vec<EnvironmentConfig>) -> Vec<EnvironmentConfig> {
    let mut ordered: Vec<EnvironmentConfig> = Vec::with_capacity(envs.len());
    while !envs.is_empty() {
        let ready = envs
            .iter()
            .position(|e| {
                e.after
                    .as_ref()
                    .is_none_or(|a| ordered.iter().any(|o| &o.name == a))
            })
            .unwrap_or(0);
        ordered.push(envs.remove(ready));
    }
    ordered
}

/// Whether `name` is a name a shell can export: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_variable_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An environment's `vars`: names a shell can export (`[A-Za-z_][A-Za-z0-9_]*`) and values
/// without NUL, which no process environment can hold; or `{ secret = "NAME" }`, a secret of
/// environment `secrets_of` (returned apart, by variable).
fn env_vars(
    raw: &BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    secrets_of: Option<&EnvName>,
    problems: &mut Problems,
) -> (BTreeMap<String, String>, BTreeMap<String, SecretRef>) {
    let mut vars = BTreeMap::new();
    let mut secret_vars = BTreeMap::new();
    for (name, value) in raw {
        let n = name.get_ref();
        if !is_variable_name(n) {
            problems.add(
                name.span(),
                format!("`{n}` is not a variable name"),
                "use letters, digits and `_`, not starting with a digit, for example LOG_LEVEL"
                    .to_owned(),
            );
            continue;
        }
        match value.get_ref() {
            toml::Value::String(v) if v.contains('\0') => problems.add(
                value.span(),
                format!("the value of `{n}` holds a NUL character, which no process environment can carry"),
                "remove the \\u0000 from the value".to_owned(),
            ),
            toml::Value::String(v) => {
                vars.insert(n.clone(), v.clone());
            }
            toml::Value::Table(t)
                if t.len() == 1
                    && t.get("secret")
                        .and_then(|s| s.as_str())
                        .is_some_and(is_variable_name) =>
            {
                let secret = t.get("secret").and_then(|s| s.as_str()).unwrap_or_default();
                if let Some(env) = secrets_of {
                    secret_vars.insert(
                        n.clone(),
                        SecretRef {
                            env: env.clone(),
                            name: secret.to_owned(),
                        },
                    );
                }
            }
            _ => problems.add(
                value.span(),
                format!("the value of `{n}` is neither text nor a secret"),
                format!("write {n} = \"VALUE\", or {n} = {{ secret = \"NAME\" }} for a secret set with `shipgate secret set ENV NAME` (letters, digits and `_`)"),
            ),
        }
    }
    (vars, secret_vars)
}

/// Parses a duration that a timeout or threshold is set to: zero would fail or pass everything.
fn positive_duration(key: &'static str) -> impl FnOnce(&str) -> Result<Duration, String> {
    move |s| {
        let d = Duration::parse(s)?;
        if d.as_std().is_zero() {
            Err(format!(
                "`{key}` must be longer than 0 (write a duration such as \"30s\")"
            ))
        } else {
            Ok(d)
        }
    }
}

fn parse_address(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("`{s}` is not an address: write IP:PORT, for example \"127.0.0.1:8101\" (host names are not accepted)")
    })
}

/// The known key closest to `word`, if it is close enough to be a likely typo.
fn closest<'a>(word: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    known
        .map(|k| (strsim::damerau_levenshtein(word, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// The most problems of the file's form (unknown keys, wrong types) reported in one go.
const MAX_FORM_PROBLEMS: usize = 50;

/// Reads the file into its raw form, going on past each `key = value` line that cannot be
/// read (an unknown key, a value of the wrong type) so that all of them are reported at once:
/// such a line is read again as a comment, which keeps every position in the file. It stops
/// at a problem it cannot step over (a syntax error, a table header, a value over several
/// lines), and a key found missing only because a bad line was stepped over is not reported.
fn read_raw(src: &str) -> (Option<RawConfig>, Vec<ConfigProblem>) {
    let mut text = src.to_owned();
    let mut found = Vec::new();
    while found.len() < MAX_FORM_PROBLEMS {
        let e = match toml::from_str::<RawConfig>(&text) {
            Ok(raw) => return (Some(raw), found),
            Err(e) => e,
        };
        if e.message().starts_with("missing field") && !found.is_empty() {
            break;
        }
        found.push(toml_problem(&e, src));
        let Some(start) = e.span().map(|s| text.floor_char_boundary(s.start)) else {
            break;
        };
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let line = &text[line_start..line_end];
        let one_line_key = !line.trim_start().starts_with(['[', '#'])
            && line.as_bytes().first().is_some_and(u8::is_ascii)
            && toml::from_str::<toml::Table>(line).is_ok_and(|t| !t.is_empty());
        if !one_line_key {
            break;
        }
        text.replace_range(line_start..line_start + 1, "#");
    }
    (None, found)
}

/// Turns a TOML/serde error into a problem, adding the closest key for unknown keys.
fn toml_problem(e: &toml::de::Error, src: &str) -> ConfigProblem {
    let span = e.span().unwrap_or(0..0);
    let msg = e.message().trim();
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or_default();
        let known: Vec<&str> = rest
            .split('`')
            .skip(1)
            .collect::<Vec<_>>()
            .chunks(2)
            .filter_map(|c| c.get(1).copied())
            .collect();
        let help = match closest(field, known.iter().copied()) {
            Some(k) => format!("did you mean `{k}`?"),
            None if known.is_empty() => "remove it".to_owned(),
            None => format!("remove it; the keys known here are: {}", known.join(", ")),
        };
        return ConfigProblem {
            span,
            message: format!("unknown key `{field}`"),
            help: Some(help),
        };
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or_default();
        let help = match field {
            "run" => {
                "add the command that starts the app, for example run = \"./web --port ${PORT}\""
            }
            "listen" => {
                "give the environment its stable address, for example listen = \"127.0.0.1:8101\""
            }
            _ => "add it",
        };
        return ConfigProblem {
            span,
            message: format!("missing key `{field}`"),
            help: Some(help.to_owned()),
        };
    }
    let _ = src;
    ConfigProblem {
        span,
        message: msg.to_owned(),
        help: None,
    }
}

/// The commented example written by `shipgate init`; it must parse as a valid config.
pub const EXAMPLE: &str = r#"# shipgate.toml: how releases of your apps move from development to production.
# Reference: every key is in shipgate's docs/config.md. Check this file with `shipgate validate`.

[server]
listen = "127.0.0.1:7300"          # the API and the dashboard
data_dir = ".shipgate"             # database, artifacts, logs and the admin token
# database = "sqlite://.shipgate/shipgate.db"   # the default; or "postgres://USER@HOST/DB", shared by several servers
# max_artifact_size = "512MiB"     # largest release artifact accepted
# max_unpacked_size = "4GiB"       # largest total size an artifact may unpack to
# max_files = 100000               # most entries an artifact may hold
# drift_scan = "1m"                # how often live releases are checked for drift ("0s": only on demand)
# lease = "5s"                      # several servers on one PostgreSQL: a new leader after this
# retention = { releases = 20, logs = "14d" }   # per app: older artifacts and idle logs go (shipgate gc --dry-run)

[apps.web]
run = "./web --port ${PORT}"       # started inside the unpacked release directory
health = "/healthz"                # answers 2xx once an instance is ready
# health_timeout = "30s"
# crash_loop = { crashes = 5, within = "1m" }   # more crashes than this: stop restarting, mark unhealthy
# facts = { runtime = "python3 --version" }     # run in each environment, compared by shipgate diff

[environments.development]
listen = "127.0.0.1:8101"          # stable address; the router forwards it to the live instance
vars = { LOG_LEVEL = "debug" }     # environment variables of every instance here
# standby = "10m"                  # the replaced release keeps running this long: rollback is instant
# drain = "30s"                    # requests in flight on a replaced instance may take this long
# request_timeout = "60s"          # the router answers 504 if an instance takes longer to answer

[environments.testing]
after = "development"              # only releases verified in development may enter
listen = "127.0.0.1:8102"
verify.tests = ["curl -fsS ${URL}/healthz"]   # must exit 0 against the freshly switched environment
# verify.timeout = "5m"

[environments.staging]
after = "testing"
listen = "127.0.0.1:8103"
# auto = true                      # promote here by itself what passes testing
# mirrors = "production"           # staging is meant to look like production...
# differs = ["listen", "vars.LOG_LEVEL", "vars.DATABASE_URL"]   # ...except in these (shipgate diff)

[environments.production]
after = "staging"
listen = "127.0.0.1:8104"
# require.approvals = 1            # distinct approvers, never the requester; or { count = 2, role = "approver" }
# require.soak = "10m"             # verified in staging at least this long
# require.window = "Mon-Fri 09:00-17:00 Europe/Paris"   # deploy only then (shipgate freeze stops all)
# require.parity = "staging"       # wait until staging and production differ only as declared
# verify.http = [{ path = "/healthz", status = 200 }]   # GET on the stable address after the switch
# verify.watch = "2m"              # after the switch: the router's figures for the new release watched this long
# verify.max_error_rate = 0.01     # above it: automatic rollback
# verify.max_p99 = "500ms"         # above it: automatic rollback
# verify.min_requests = 10         # fewer during the watch is inconclusive...
# verify.inconclusive = "hold"     # ...and then "hold" (the default) waits for shipgate approve/reject, "fail" rolls back, "pass" accepts
# verify.watch_traffic = { path = "/", rps = 5 }   # shipgate's own requests during the watch, so a quiet environment is judged
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(src: &str) -> String {
        Config::parse(src, Path::new("/p"))
            .unwrap_err()
            .render("shipgate.toml", src)
    }

    const BASE: &str = "[apps.web]\nrun = \"./web\"\n";

    const FLOW: &str = "[apps.web]\nrun = \"./web\"\n[apps.web.data]\nproduction = \"sqlite://p.db\"\n[environments.staging]\nlisten = \"127.0.0.1:8103\"\n[environments.production]\nafter = \"staging\"\nlisten = \"127.0.0.1:8104\"\n";

    #[test]
    fn a_signoff_lists_distinct_scenarios_and_require_signoff_names_an_environment_with_one() {
        let with = |uat: &str, production: &str| {
            format!(
                "{BASE}[environments.staging]\nlisten = \"127.0.0.1:8103\"\n[environments.uat]\nafter = \"staging\"\nlisten = \"127.0.0.1:8105\"\n{uat}\n[environments.production]\nafter = \"staging\"\nlisten = \"127.0.0.1:8104\"\n{production}\n"
            )
        };
        let config = Config::parse(
            &with(
                "[environments.uat.signoff]\nscenarios = [\"checkout\", \" invoice \"]",
                "require.signoff = \"uat\"",
            ),
            Path::new("/p"),
        )
        .unwrap();
        let uat = config.environment(&EnvName::parse("uat").unwrap()).unwrap();
        let signoff = uat.signoff.as_ref().unwrap();
        assert_eq!(signoff.role, Role::Tester);
        assert_eq!(signoff.scenarios, ["checkout", "invoice"]);
        let production = config
            .environment(&EnvName::parse("production").unwrap())
            .unwrap();
        assert_eq!(production.require.signoff.as_ref().unwrap().as_str(), "uat");
        for (uat, production, said) in [
            ("[environments.uat.signoff]\nscenarios = []", "", "is empty"),
            (
                "[environments.uat.signoff]\nscenarios = [\"a\", \"a\"]",
                "",
                "listed twice",
            ),
            (
                "[environments.uat.signoff]\nscenarios = [\" \"]",
                "",
                "1 to 200 characters",
            ),
            (
                "[environments.uat.signoff]\nrole = \"viewer\"\nscenarios = [\"a\"]",
                "",
                "may not sign off",
            ),
            (
                "[environments.uat.signoff]\nscenarios = [\"a\"]\nwho = 1",
                "",
                "unknown key `who`",
            ),
            (
                "",
                "require.signoff = \"uat\"",
                "names an environment with no sign-off",
            ),
            ("", "require.signoff = \"qa\"", "names no other environment"),
        ] {
            let e = errors(&with(uat, production));
            assert!(e.contains(said), "{said}: {e}");
        }
    }

    #[test]
    fn a_load_gate_is_read_with_its_defaults_and_bad_values_are_refused() {
        let with = |load: &str| {
            format!(
                "{BASE}[environments.staging]\nlisten = \"127.0.0.1:8103\"\n[environments.staging.verify.load]\n{load}\n"
            )
        };
        let config = Config::parse(
            &with("rate = 500\nduration = \"30s\"\nrequests = [{ path = \"/\" }, { method = \"post\", path = \"/api/orders\", weight = 2 }]"),
            Path::new("/p"),
        )
        .unwrap();
        let staging = config
            .environment(&EnvName::parse("staging").unwrap())
            .unwrap();
        let load = staging.verify.load.as_ref().unwrap();
        assert_eq!((load.rate, load.connections), (500, 64));
        assert_eq!(load.warmup, std::time::Duration::from_secs(5));
        assert_eq!((load.max_error_rate, load.max_regression), (0.001, 0.15));
        assert!(load.compare_previous);
        assert_eq!(load.requests[1].label(), "POST /api/orders");
        assert_eq!(load.requests[1].weight, 2);
        for (lines, said) in [
            (
                "rate = 0\nduration = \"1s\"\nrequests = [{ path = \"/\" }]",
                "from 1 to 1000000",
            ),
            (
                "rate = 10\nduration = \"1s\"\nrequests = []",
                "nothing to send",
            ),
            (
                "rate = 10\nduration = \"1s\"\nrequests = [{ path = \"x\" }]",
                "must start with `/`",
            ),
            (
                "rate = 10\nduration = \"1s\"\nrequests = [{ path = \"/\", method = \"BREW\" }]",
                "not an HTTP method",
            ),
            (
                "rate = 10\nduration = \"1s\"\ncompare = \"last\"\nrequests = [{ path = \"/\" }]",
                "\"previous\"",
            ),
            (
                "rate = 10\nduration = \"1s\"\nrps = 3\nrequests = [{ path = \"/\" }]",
                "unknown key `rps`",
            ),
        ] {
            let e = errors(&with(lines));
            assert!(e.contains(said), "{said}: {e}");
        }
    }

    #[test]
    fn the_flow_goes_on_to_the_environments_after_and_never_back() {
        let config = Config::parse(
            &format!(
                "{BASE}[environments.staging]\nlisten = \"127.0.0.1:8103\"\n[environments.production]\nafter = \"staging\"\nlisten = \"127.0.0.1:8104\"\n[environments.demo]\nafter = \"staging\"\nlisten = \"127.0.0.1:8105\"\n[environments.eu]\nafter = \"production\"\nlisten = \"127.0.0.1:8106\"\n"
            ),
            Path::new("/p"),
        )
        .unwrap();
        let name = |s: &str| EnvName::parse(s).unwrap();
        let next = |env: &str| -> Vec<String> {
            config
                .next_after(&name(env))
                .map(|e| e.name.to_string())
                .collect()
        };
        assert_eq!(next("staging"), ["production", "demo"]);
        assert_eq!(next("production"), ["eu"]);
        assert!(next("eu").is_empty() && next("demo").is_empty());
        assert!(config.comes_before(&name("staging"), &name("eu")));
        assert!(config.comes_before(&name("production"), &name("eu")));
        assert!(!config.comes_before(&name("demo"), &name("eu")));
        assert!(!config.comes_before(&name("eu"), &name("staging")));
        assert!(!config.comes_before(&name("staging"), &name("staging")));
    }

    #[test]
    fn a_hotfix_lane_comes_from_an_environment_on_the_way_and_never_skips_approvals() {
        let lane = |hotfix: &str| {
            format!(
                "{BASE}[environments.development]\nlisten = \"127.0.0.1:8101\"\n[environments.staging]\nafter = \"development\"\nlisten = \"127.0.0.1:8103\"\n[environments.production]\nafter = \"staging\"\nlisten = \"127.0.0.1:8104\"\n[environments.production.hotfix]\n{hotfix}\n[environments.demo]\nlisten = \"127.0.0.1:8105\"\n"
            )
        };
        let ok = Config::parse(
            &lane("from = \"development\"\nskip = [\"require.soak\", \"require.window\"]"),
            Path::new("/p"),
        )
        .unwrap();
        let production = ok
            .environment(&EnvName::parse("production").unwrap())
            .unwrap();
        let h = production.hotfix.as_ref().unwrap();
        assert_eq!(
            (h.from.as_str(), h.role, h.skip.len()),
            ("development", Role::Admin, 2)
        );
        let elsewhere = errors(&lane("from = \"demo\""));
        assert!(elsewhere.contains("not on the way into it"), "{elsewhere}");
        let approvals = errors(&lane("from = \"staging\"\nskip = [\"require.approvals\"]"));
        assert!(
            approvals.contains("never skips `require.approvals`"),
            "{approvals}"
        );
        let unknown = errors(&lane("from = \"staging\"\nskip = [\"verify.tests\"]"));
        assert!(
            unknown.contains("not a requirement a hotfix may skip"),
            "{unknown}"
        );
    }

    #[test]
    fn registries_need_both_credentials_and_plain_http_only_on_loopback() {
        let env = "[environments.staging]\nlisten = \"127.0.0.1:8103\"\n";
        let ok = Config::parse(
            &format!("{BASE}{env}[registries.\"registry.example.com:5000\"]\nusername = \"ci\"\npassword_env = \"PW\"\nca_file = \"ca.pem\"\n[registries.\"127.0.0.1:5001\"]\ninsecure = true\n"),
            Path::new("/p"),
        )
        .unwrap();
        let r = &ok.registries["registry.example.com:5000"];
        assert_eq!(r.ca_file.as_deref(), Some(Path::new("/p/ca.pem")));
        assert!(ok.registries["127.0.0.1:5001"].insecure);
        let half = errors(&format!(
            "{BASE}{env}[registries.\"r.example.com\"]\nusername = \"ci\"\n"
        ));
        assert!(
            half.contains("needs both `username` and `password_env`"),
            "{half}"
        );
        let plain = errors(&format!(
            "{BASE}{env}[registries.\"r.example.com\"]\ninsecure = true\n"
        ));
        assert!(plain.contains("only allowed on loopback"), "{plain}");
        let unknown = errors(&format!(
            "{BASE}{env}[registries.\"r.example.com\"]\npassword = \"x\"\n"
        ));
        assert!(unknown.contains("password"), "{unknown}");
    }

    #[test]
    fn addresses_clash_only_on_the_same_machine() {
        let on = |dev: &str, prod: &str| {
            Config::parse(
                &format!(
                    "{BASE}[environments.development]\nlisten = \"0.0.0.0:8080\"\n{dev}\n[environments.production]\nlisten = \"0.0.0.0:8080\"\n{prod}\n"
                ),
                Path::new("/p"),
            )
        };
        assert!(on("hosts = [\"h1\"]", "hosts = [\"h2\"]").is_ok());
        let shared = on("hosts = [\"h1\"]", "hosts = [\"h2\", \"h1\"]").unwrap_err();
        assert!(
            shared.problems[0]
                .message
                .contains("listens on 0.0.0.0:8080, which environment `development` already uses"),
            "{shared:?}"
        );
        // Without hosts, both run on the server's machine.
        assert!(on("", "").is_err());
        assert!(on("", "hosts = [\"h2\"]").is_ok());
    }

    #[test]
    fn risky_values_are_refused_with_what_to_do() {
        let dir = std::env::temp_dir().join(format!("shipgate-risky-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("chaos")).unwrap();
        std::fs::write(dir.join("chaos/ok.json"), "{}").unwrap();
        let refused = |server: &str, env: &str, rest: &str| {
            let src = format!(
                "[server]\n{server}\n{BASE}[environments.staging]\nlisten = \"127.0.0.1:8103\"\n{env}\n{rest}"
            );
            match Config::parse(&src, &dir) {
                Ok(_) => String::new(),
                Err(e) => e.render("shipgate.toml", &src),
            }
        };
        for (server, env, rest, said) in [
            (
                "toxiproxy_listen = \"0.0.0.0:8474\"",
                "",
                "",
                "is off loopback",
            ),
            (
                "",
                "chaos.max_duration = \"1000000d\"",
                "",
                "longer than a fault may ever last",
            ),
            (
                "",
                "verify.experiments = [\"missing.json\"]",
                "",
                "is not there",
            ),
            (
                "",
                "verify.experiments = [\"/etc/shadow\"]",
                "",
                "not a file inside the config's folder",
            ),
            (
                "",
                "verify.experiments = [\"../x.json\"]",
                "",
                "not a file inside the config's folder",
            ),
            (
                "",
                "dependencies.db = { listen = \"127.0.0.1:15432\", upstream = \"127.0.0.1:15432\" }",
                "",
                "proxies 127.0.0.1:15432 to itself",
            ),
            (
                "",
                "",
                "[notify.x]\nurl = \"http://169.254.169.254/latest/meta-data\"\nevents = [\"*\"]\n",
                "link-local address (169.254.169.254)",
            ),
            (
                "",
                "",
                "[notify.x]\nurl = \"http://[fe80::1]:80/\"\nevents = [\"*\"]\n",
                "link-local address (fe80::1)",
            ),
        ] {
            let problems = refused(server, env, rest);
            assert!(problems.contains(said), "{server} {env} {rest}: {problems}");
            assert!(problems.contains("help:"), "{problems}");
        }
        for (server, env) in [
            (
                "toxiproxy_listen = \"127.0.0.1:18474\"",
                "chaos.max_duration = \"7d\"",
            ),
            ("", "verify.experiments = [\"chaos/ok.json\"]"),
        ] {
            assert_eq!(refused(server, env, ""), "", "{server} {env}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_canary_is_read_with_its_defaults_and_bad_steps_are_refused() {
        use crate::canary::{Step, Sticky};
        let parse = |canary: &str| {
            let src = format!(
                "[apps.web]\nrun = \"./web\"\n[environments.production]\nlisten = \"127.0.0.1:8103\"\n[environments.production.canary]\n{canary}\n"
            );
            Config::parse(&src, Path::new("/p")).map_err(|e| e.render("shipgate.toml", &src))
        };
        let config = parse("").unwrap();
        let c = config.environments[0].canary.clone().unwrap();
        assert_eq!(c.steps, CanaryConfig::DEFAULT_STEPS);
        assert_eq!(c.rules, CanaryConfig::DEFAULT_RULES);
        assert_eq!(c.sticky, Sticky::Cookie);
        assert_eq!(c.step.as_std(), CanaryConfig::DEFAULT_STEP);
        let c = parse("steps = [\"mirror 10%\", \"5%\", \"pause\", \"50%\"]\nstep = \"30s\"\nsticky = \"header:X-User-Id\"\nmin_requests = 50")
            .unwrap()
            .environments[0]
            .canary
            .clone()
            .unwrap();
        assert_eq!(
            c.steps,
            [
                Step::Mirror(10.0),
                Step::Weight(5.0),
                Step::Pause,
                Step::Weight(50.0)
            ]
        );
        assert_eq!(c.judged_steps(), 3);
        assert_eq!(c.sticky, Sticky::Header("x-user-id".into()));
        assert_eq!(c.rules.min_requests, 50);
        for (bad, said) in [
            ("steps = []", "has 0 steps"),
            ("steps = [\"5\"]", "write a share as a percent"),
            ("steps = [\"100%\"]", "below 100%"),
            (
                "steps = [\"25%\", \"5%\"]",
                "does not grow the canary's share",
            ),
            ("steps = [\"5%\", \"mirror 10%\"]", "put mirror steps first"),
            ("step = \"100ms\"", "shorter than a second"),
            ("confidence = 1.0", "out of range"),
            ("max_error_rate = -0.1", "out of range"),
            ("min_requests = 0", "out of range"),
            ("sticky = \"session\"", "header:NAME"),
            ("stepz = \"1m\"", "did you mean `steps`"),
        ] {
            let problems = parse(bad).unwrap_err();
            assert!(problems.contains(said), "{bad}: {problems}");
        }
    }

    #[test]
    fn public_url_is_an_http_address_without_its_trailing_slash() {
        let with = |url: &str| {
            Config::parse(
                &format!(
                    "[server]\npublic_url = \"{url}\"\n[apps.web]\nrun = \"./web\"\n[environments.staging]\nlisten = \"127.0.0.1:8103\"\n"
                ),
                Path::new("/p"),
            )
        };
        assert_eq!(
            with("https://shipgate.example.com/")
                .unwrap()
                .server
                .public_url
                .as_deref(),
            Some("https://shipgate.example.com")
        );
        let said = errors(
            "[server]\npublic_url = \"shipgate.example.com\"\n[apps.web]\nrun = \"./web\"\n[environments.staging]\nlisten = \"127.0.0.1:8103\"\n",
        );
        assert!(
            said.contains(
                "public_url is the API's address as clients reach it, http:// or https://"
            ),
            "{said}"
        );
        assert!(with("ftp://x").is_err());
    }

    #[test]
    fn a_template_copies_no_secret_of_its_environment_unless_it_names_it() {
        let flow = "[apps.web]\nrun = \"./web\"\n[environments.staging]\nlisten = \"127.0.0.1:8103\"\nsecrets = [\"API_SEED\"]\nvars = { DB_PASSWORD = \"staging-pw\", STRIPE_KEY = \"sk_staging\", API_SEED = \"s33d\", DATABASE_URL = \"postgres://app:pw@db/app\", LOG_LEVEL = \"debug\", MAIL_KEY = { secret = \"MAIL_KEY\" }, SMS_KEY = { secret = \"SMS_KEY\" } }\n";
        let preview_env = |extra: &str| {
            let c = Config::parse(
                &format!("{flow}[templates.preview]\nfrom = \"staging\"\nlisten_range = \"127.0.0.1:9100-9109\"\n{extra}"),
                Path::new("/p"),
            )
            .unwrap();
            let t = c
                .template(&EnvName::parse("preview").unwrap())
                .unwrap()
                .clone();
            t.environment(
                c.environment(&t.from).unwrap(),
                EnvName::parse("pr-1").unwrap(),
                "127.0.0.1:9100".parse().unwrap(),
            )
        };
        let preview = |extra: &str| preview_env(extra).vars.into_keys().collect::<Vec<_>>();
        assert_eq!(preview(""), ["LOG_LEVEL"]);
        // Sealed secrets too: none unless named, and those named stay staging's.
        assert!(preview_env("").secret_vars.is_empty());
        let named = preview_env("secrets = [\"SMS_KEY\"]\n").secret_vars;
        let staging = EnvName::parse("staging").unwrap();
        assert_eq!(
            named.into_iter().collect::<Vec<_>>(),
            [(
                "SMS_KEY".to_owned(),
                SecretRef {
                    env: staging,
                    name: "SMS_KEY".into()
                }
            )]
        );
        assert_eq!(
            preview("secrets = [\"STRIPE_KEY\"]\nvars = { DB_PASSWORD = \"preview-pw\" }\n"),
            ["DB_PASSWORD", "LOG_LEVEL", "STRIPE_KEY"]
        );
        let said = errors(&format!(
            "{flow}[templates.preview]\nfrom = \"staging\"\nlisten_range = \"127.0.0.1:9100-9109\"\nsecrets = [\"DB_PASWORD\"]\n"
        ));
        assert!(
            said.contains("`secrets` of template `preview` names `DB_PASWORD`, which is no variable of `staging`"),
            "{said}"
        );
    }

    #[test]
    fn templates_copy_an_environment_of_the_config_and_are_checked_against_it() {
        let ok = format!(
            "{FLOW}[templates.preview]\nfrom = \"staging\"\nttl = \"24h\"\nmax = 3\nmax_per_requester = 1\nlisten_range = \"127.0.0.1:9100-9102\"\nlisten = \"127.0.0.1:9000\"\nhost_suffix = \".Preview.localhost\"\ndata = {{ from = \"production\", masked = true }}\nvars = {{ FEATURE = \"on\" }}\n"
        );
        let c = Config::parse(&ok, Path::new("/p")).unwrap();
        let t = c.template(&EnvName::parse("preview").unwrap()).unwrap();
        assert_eq!(
            (t.max, t.max_per_requester, t.ttl.as_std().as_secs()),
            (3, Some(1), 86_400)
        );
        assert_eq!(t.host_suffix.as_deref(), Some(".preview.localhost"));
        let pr = EnvName::parse("pr-1").unwrap();
        let env = t.environment(
            c.environment(&t.from).unwrap(),
            pr.clone(),
            "127.0.0.1:9100".parse().unwrap(),
        );
        assert_eq!(
            (env.after.clone(), env.template.clone()),
            (None, Some(t.name.clone()))
        );
        assert_eq!(env.vars["FEATURE"], "on");
        let with = c.with_on_demand(env);
        let location = with.apps[0].data.as_ref().unwrap().locations[&pr].clone();
        assert_eq!(
            location,
            DataLocation::Sqlite(PathBuf::from("/p/.shipgate/on-demand/pr-1/web.db"))
        );
        assert_eq!(with.configured().environments.len(), 2);
        assert!(with.without(&pr).environment(&pr).is_none());

        let bad = format!(
            "{FLOW}[templates.preview]\nfrom = \"stagin\"\nlisten_range = \"127.0.0.1:8100-8110\"\nhost_suffix = \"preview\"\ndata = {{ from = \"production\", masked = false }}\n[templates.other]\nfrom = \"staging\"\nmax = 20\nlisten_range = \"127.0.0.1:8105-8110\"\nhost_suffix = \".other.localhost\"\n"
        );
        let said = errors(&bad);
        for expected in [
            "`from = \"stagin\"` of template `preview` names no environment",
            "did you mean `staging`?",
            "the range 127.0.0.1:8100-8110 of template `preview` holds 127.0.0.1:8103, which environment `staging` uses",
            "`host_suffix = \"preview\"` is not the end of a host name",
            "template `preview` would seed its environments with unmasked data",
            "overlaps 127.0.0.1:8100-8110 of template `preview`",
            "template `other` allows 20 environments but its range 127.0.0.1:8105-8110 has 6 ports",
            "`host_suffix` on template `other`, which has no `listen`",
        ] {
            assert!(said.contains(expected), "{expected}\nnot in:\n{said}");
        }
    }

    #[test]
    fn flags_are_typed_with_variants_and_a_default_and_bad_ones_point_at_their_key() {
        let ok = format!(
            "{FLOW}[apps.web.flags.new-checkout]\ntype = \"boolean\"\ndefault = false\n[apps.web.flags.theme]\ntype = \"string\"\ndefault = \"light\"\nvariants = {{ light = \"light\", dark = \"dark\" }}\n[apps.web.flags.limit]\ntype = \"number\"\ndefault = 10\nvariants = {{ high = 100 }}\n"
        );
        let c = Config::parse(&ok, Path::new("/p")).unwrap();
        let flags = &c.apps[0].flags;
        assert_eq!(flags["new-checkout"].default_variant, "off");
        assert_eq!(flags["new-checkout"].on_variant(), Some("on"));
        assert_eq!(flags["theme"].default_variant, "light");
        assert_eq!(flags["limit"].default_variant, "default");
        assert_eq!(flags["limit"].on_variant(), Some("high"));
        let bad = errors(&format!(
            "{FLOW}[apps.web.flags.a]\ntype = \"boolean\"\ndefault = \"yes\"\n[apps.web.flags.b]\ntype = \"colour\"\ndefault = 1\n[apps.web.flags.c]\ntype = \"string\"\ndefault = \"x\"\n[apps.web.flags.d]\ntype = \"boolean\"\ndefault = true\nvarients = 1\n"
        ));
        assert!(
            bad.contains("the default of flag `a` is not a boolean"),
            "{bad}"
        );
        assert!(bad.contains("flag type `colour` is not one of"), "{bad}");
        assert!(bad.contains("flag `c` has no variant to turn on"), "{bad}");
        assert!(bad.contains("varients"), "{bad}");
    }

    #[test]
    fn example_is_valid_and_ordered() {
        let c = Config::parse(EXAMPLE, Path::new("/p")).unwrap();
        let names: Vec<_> = c.environments.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["development", "testing", "staging", "production"]);
        assert_eq!(c.server.data_dir, Path::new("/p/.shipgate"));
        assert_eq!(c.apps[0].health, "/healthz");
    }

    #[test]
    fn example_gates_are_valid_when_uncommented() {
        let src = EXAMPLE
            .replace("\n# require.", "\nrequire.")
            .replace("\n# verify.", "\nverify.")
            .replace("\n# auto", "\nauto")
            .replace("\n# mirrors", "\nmirrors")
            .replace("\n# differs", "\ndiffers")
            .replace("\n# facts", "\nfacts")
            .replace("\n# drift_scan", "\ndrift_scan")
            .replace("\n# retention", "\nretention");
        let c = Config::parse(&src, Path::new("/p")).unwrap();
        let prod = c
            .environment(&EnvName::parse("production").unwrap())
            .unwrap();
        assert!(prod.require.approvals.is_some() && prod.verify.watch.is_some());
        assert!(prod.require.parity.is_some() && !c.apps[0].facts.is_empty());
        assert!(
            c.environment(&EnvName::parse("staging").unwrap())
                .unwrap()
                .auto
        );
    }

    #[test]
    fn defect_10_zero_limits_are_refused_at_their_position() {
        let src = format!(
            "[server]\nmax_artifact_size = \"0B\"\nmax_unpacked_size = \"0GiB\"\nmax_files = -1\n{BASE}[environments.dev]\nlisten = \"127.0.0.1:8101\"\n"
        );
        let errors = errors(&src);
        for expected in [
            "shipgate.toml:2:21: `max_artifact_size` must be more than 0 bytes",
            "shipgate.toml:3:21: `max_unpacked_size` must be more than 0 bytes",
            "shipgate.toml:4:13: `max_files` must be at least 1, not -1",
        ] {
            assert!(errors.contains(expected), "{expected} in:\n{errors}");
        }
    }

    #[test]
    fn defect_10_bad_values_are_refused_at_their_position() {
        let src = format!(
            "{BASE}health_timeout = \"0s\"\n[environments.dev]\nlisten = \"127.0.0.1:0\"\nvars = {{ \"A=B\" = \"1\", NUL = \"a\\u0000b\" }}\nrequire.window = []\nverify.watch = \"1m\"\nverify.min_requests = 0\nverify.max_p99 = \"0ms\"\n"
        );
        insta::assert_snapshot!(errors(&src));
    }

    #[test]
    fn defect_10_a_data_dir_that_is_a_file_is_refused_at_its_position() {
        let file = std::env::temp_dir().join(format!("shipgate-not-a-dir-{}", std::process::id()));
        std::fs::write(&file, "x").unwrap();
        let src = format!(
            "[server]\ndata_dir = \"{}\"\n{BASE}[environments.dev]\nlisten = \"127.0.0.1:8101\"\n",
            file.display()
        );
        let errors = errors(&src);
        std::fs::remove_file(&file).unwrap();
        assert!(
            errors.starts_with("shipgate.toml:2:12: data_dir `"),
            "{errors}"
        );
        assert!(errors.contains("exists and is not a folder"), "{errors}");
    }

    #[test]
    fn unknown_key_suggests_closest() {
        let src = format!("{BASE}[environments.dev]\nlisten = \"127.0.0.1:8101\"\nlisen = \"x\"\n");
        insta::assert_snapshot!(errors(&src), @r"
        shipgate.toml:5:1: unknown key `lisen`
          help: did you mean `listen`?
        ");
    }

    #[test]
    fn every_unreadable_key_is_reported_at_once_with_the_other_problems() {
        let src = format!(
            "[server]\nlisen = \"127.0.0.1:7300\"\n{BASE}helth = \"/\"\n[environments.dev]\nlisten = \"127.0.0.1:8101\"\nstandby = 5\nverify.watch = \"1 minute\"\n[environments.prod]\nafter = \"dve\"\nlisten = \"127.0.0.1:8102\"\n"
        );
        insta::assert_snapshot!(errors(&src), @r#"
        shipgate.toml:2:1: unknown key `lisen`
          help: did you mean `listen`?
        shipgate.toml:5:1: unknown key `helth`
          help: did you mean `health`?
        shipgate.toml:8:11: invalid type: integer `5`, expected a string
        shipgate.toml:9:16: `1 minute` is not a duration: write a number and a unit (ms, s, m, h, d), for example "30s", "10m" or "1h30m"
        shipgate.toml:11:9: `after = "dve"` names no environment
          help: did you mean `dev`?
        "#);
    }

    #[test]
    fn retention_is_checked_at_its_position() {
        let ok = format!(
            "[server]\nretention = {{ releases = 3, logs = \"2d\" }}\n{BASE}[environments.dev]\nlisten = \"127.0.0.1:8101\"\n"
        );
        let c = Config::parse(&ok, Path::new("/p")).unwrap();
        assert_eq!(c.server.retention.releases, 3);
        assert_eq!(c.server.retention.logs.as_std().as_secs(), 2 * 86_400);
        let bad = ok
            .replace("releases = 3", "releases = 0")
            .replace("\"2d\"", "\"0s\"");
        insta::assert_snapshot!(errors(&bad), @r#"
        shipgate.toml:2:26: `retention.releases` must be at least 1, not 0
          help: write how many of each app's newest releases to keep on disk, for example retention = { releases = 20 }
        shipgate.toml:2:36: `retention.logs` must be longer than 0s
          help: write how long a log not written to is kept, for example retention = { logs = "14d" }
        "#);
    }

    #[test]
    fn a_key_missing_only_because_its_line_was_unreadable_is_not_reported() {
        let src = "[apps.web]\nrun = 5\n[environments.dev]\nlisten = \"127.0.0.1:8101\"\n";
        let errors = errors(src);
        assert!(errors.starts_with("shipgate.toml:2:7: "), "{errors}");
        assert!(!errors.contains("missing key `run`"), "{errors}");
    }

    #[test]
    fn after_naming_nothing() {
        let src = format!(
            "{BASE}[environments.testing]\nlisten = \"127.0.0.1:8101\"\n[environments.staging]\nafter = \"testin\"\nlisten = \"127.0.0.1:8102\"\n"
        );
        insta::assert_snapshot!(errors(&src), @r#"
        shipgate.toml:6:9: `after = "testin"` names no environment
          help: did you mean `testing`?
        "#);
    }

    #[test]
    fn cycle_is_named() {
        let src = format!(
            "{BASE}[environments.a]\nafter = \"b\"\nlisten = \"127.0.0.1:8101\"\n[environments.b]\nafter = \"a\"\nlisten = \"127.0.0.1:8102\"\n"
        );
        insta::assert_snapshot!(errors(&src), @r"
        shipgate.toml:4:9: environments form a cycle in `after`: a → b → a
          help: one of them must come first: remove its `after`
        ");
    }

    #[test]
    fn duplicate_address_malformed_address_and_duration() {
        let src = format!(
            "{BASE}health_timeout = \"ten\"\n[environments.a]\nlisten = \"127.0.0.1:8101\"\n[environments.b]\nlisten = \"0.0.0.0:8101\"\n[environments.c]\nlisten = \"localhost\"\nverify.timeout = \"5 minutes\"\n"
        );
        insta::assert_snapshot!(errors(&src), @r#"
        shipgate.toml:3:18: `ten` is not a duration: write a number and a unit (ms, s, m, h, d), for example "30s", "10m" or "1h30m"
        shipgate.toml:7:10: environment `b` listens on 0.0.0.0:8101, which environment `a` already uses
          help: give every environment its own address
        shipgate.toml:9:10: `localhost` is not an address: write IP:PORT, for example "127.0.0.1:8101" (host names are not accepted)
        shipgate.toml:10:18: `5 minutes` is not a duration: write a number and a unit (ms, s, m, h, d), for example "30s", "10m" or "1h30m"
        "#);
    }

    #[test]
    fn port_zero_is_for_the_api_only() {
        let src = format!(
            "{BASE}[server]\nlisten = \"127.0.0.1:0\"\n[environments.a]\nlisten = \"127.0.0.1:8101\"\n"
        );
        assert!(Config::parse(&src, Path::new("/p")).is_ok());
    }

    #[test]
    fn parity_and_mirrors_name_another_environment() {
        let src = format!(
            "{BASE}[environments.s]\nlisten = \"127.0.0.1:8101\"\nmirrors = \"p\"\ndiffers = [\"vars.DATABASE_URL\", \"require.*\"]\n[environments.p]\nafter = \"s\"\nlisten = \"127.0.0.1:8102\"\nrequire.parity = \"s\"\n"
        );
        let c = Config::parse(&src, Path::new("/p")).unwrap();
        assert_eq!(
            c.environments[0].mirrors.as_ref().map(EnvName::as_str),
            Some("p")
        );
        assert_eq!(
            c.environments[1]
                .require
                .parity
                .as_ref()
                .map(EnvName::as_str),
            Some("s")
        );
        let bad = format!(
            "{BASE}[environments.s]\nlisten = \"127.0.0.1:8101\"\nmirrors = \"prod\"\ndiffers = [\"colour\"]\nrequire.parity = \"s\"\n"
        );
        let e = errors(&bad);
        assert!(
            e.contains("`mirrors = \"prod\"` on environment `s` names no other environment"),
            "{e}"
        );
        assert!(
            e.contains("`require.parity = \"s\"` on environment `s` names no other environment"),
            "{e}"
        );
        assert!(
            e.contains("`colour` is not something environments differ in"),
            "{e}"
        );
    }

    #[test]
    fn gates_parse_and_bad_ones_point_at_the_key() {
        let src = format!(
            "{BASE}[environments.s]\nlisten = \"127.0.0.1:8101\"\n[environments.p]\nafter = \"s\"\nlisten = \"127.0.0.1:8102\"\nauto = true\nrequire.approvals = {{ count = 2, role = \"approver\" }}\nrequire.soak = \"10m\"\nrequire.window = [\"Mon-Fri 09:00-17:00 Europe/Paris\"]\nverify.watch = \"2m\"\nverify.max_error_rate = 0.01\nverify.max_p99 = \"300ms\"\nverify.inconclusive = \"hold\"\nverify.http = [{{ path = \"/healthz\", body = \"^ok\" }}]\n"
        );
        let c = Config::parse(&src, Path::new("/p")).unwrap();
        let p = &c.environments[1];
        assert!(p.auto);
        assert_eq!(
            p.require.approvals,
            Some(ApprovalRule {
                count: 2,
                role: Some(Role::Approver)
            })
        );
        assert_eq!(p.require.soak, Some(Duration::parse("10m").unwrap()));
        assert_eq!(p.require.windows.len(), 1);
        let watch = p.verify.watch.as_ref().unwrap();
        assert_eq!(
            (watch.min_requests, watch.inconclusive),
            (10, Inconclusive::Hold)
        );
        assert_eq!(p.verify.http[0].status, 200);

        let bad = format!(
            "{BASE}[environments.d]\nlisten = \"127.0.0.1:8101\"\nauto = true\nrequire.soak = \"1h\"\nrequire.approvals = 0\nrequire.window = \"Mon-Fri 9-5\"\nverify.max_error_rate = 0.5\n"
        );
        insta::assert_snapshot!(errors(&bad), @r#"
        shipgate.toml:5:8: `auto = true` on environment `d`, which has no `after`
          help: auto-promotion takes releases verified in the environment named by `after`: add `after` or remove `auto`
        shipgate.toml:6:16: `require.soak` on environment `d`, which has no `after`
          help: soak time is counted in the environment before this one: add `after` or remove `require.soak`
        shipgate.toml:7:21: `require.approvals` needs a count from 1 to 100
          help: write require.approvals = 2, or { count = 2, role = "approver" }
        shipgate.toml:8:18: `9-5` is not a time range: write DAYS HH:MM-HH:MM TIME_ZONE, for example "Mon-Fri 09:00-17:00 Europe/Paris"
        shipgate.toml:9:25: this threshold of the watch has no `verify.watch`
          help: say how long to watch after the switch, for example verify.watch = "2m"
        "#);
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
        assert_eq!(line_col("x", 0), (1, 1));
    }

    #[test]
    fn a_rollout_batch_is_a_count_or_a_share_of_the_hosts_rounded_up() {
        assert_eq!(Batch::All.size(5), 5);
        assert_eq!(Batch::Hosts(2).size(5), 2);
        assert_eq!(Batch::Hosts(9).size(3), 3);
        assert_eq!(Batch::Percent(25).size(3), 1);
        assert_eq!(Batch::Percent(50).size(3), 2);
        assert_eq!(Batch::Percent(100).size(4), 4);
        let base = "[apps.web]\nrun = \"x\"\n\n[environments.production]\nlisten = \"0.0.0.0:8080\"\nhosts = [\"a\", \"b\", \"c\"]\n";
        let parse = |extra: &str| Config::parse(&format!("{base}{extra}"), Path::new("/tmp"));
        let ok = parse("rollout = { batch = \"34%\" }\nhosts_required = 2\n").unwrap();
        assert_eq!(ok.environments[0].batch, Batch::Percent(34));
        assert_eq!(ok.environments[0].hosts_required, 2);
        assert!(parse("rollout = { batch = 0 }\n").is_err());
        assert!(parse("hosts_required = 4\n").is_err());
        // The front is on the server's machine, the routers on the hosts: no clash.
        assert!(parse("front = \"0.0.0.0:8080\"\n").is_ok());
        assert!(
            parse("front = \"127.0.0.1:7300\"\n").is_err(),
            "the front may not take the API's address"
        );
    }
}

/// How shipgate reaches one image registry when `release create --image HOST/NAME:TAG` pulls from
/// it. The password is read from the server's environment at each pull: never stored, never
/// shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// The user name for basic auth, if it needs one.
    pub username: Option<String>,
    /// The variable of the server's environment that holds the password.
    pub password_env: Option<String>,
    /// A CA certificate (PEM) its TLS certificate is checked against, beside the system's.
    pub ca_file: Option<PathBuf>,
    /// Plain HTTP, or TLS without checking the certificate; only for a registry on loopback.
    pub insecure: bool,
}

fn registries(
    raw: BTreeMap<Spanned<String>, RawRegistry>,
    base_dir: &Path,
    problems: &mut Problems,
) -> BTreeMap<String, RegistryConfig> {
    let mut out = BTreeMap::new();
    for (host, r) in raw {
        let name = host.get_ref().clone();
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        if !valid {
            problems.add(
                host.span(),
                format!("registry `{name}` is not a host name with an optional port"),
                "write it as the image references do, for example [registries.\"registry.example.com:5000\"]".to_owned(),
            );
            continue;
        }
        if r.username.is_some() != r.password_env.is_some() {
            problems.add(
                host.span(),
                format!("registry `{name}` needs both `username` and `password_env`, or neither"),
                "set password_env to the name of the variable that holds the password".to_owned(),
            );
        }
        let loopback =
            name.starts_with("127.") || name.starts_with("localhost") || name.starts_with("[::1]");
        if r.insecure && !loopback {
            problems.add(
                host.span(),
                format!("registry `{name}` is `insecure`, which is only allowed on loopback (127.0.0.1, localhost)"),
                "give its CA with ca_file instead".to_owned(),
            );
        }
        out.insert(
            name,
            RegistryConfig {
                username: r.username,
                password_env: r.password_env.map(Spanned::into_inner),
                ca_file: r.ca_file.map(|f| base_dir.join(f)),
                insecure: r.insecure,
            },
        );
    }
    out
}
