//! The command line, as DESIGN.md gives it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use shipgate_core::{AppName, EnvName, ReleaseRef, Version};

/// shipgate: releases from development to production through gates that prove every step.
#[derive(Debug, Parser)]
#[command(name = "shipgate", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Config file.
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        default_value = "shipgate.toml",
        env = "SHIPGATE_CONFIG"
    )]
    pub config: PathBuf,
    /// Server URL (default: the config's `[server] listen`, else http://127.0.0.1:7300).
    #[arg(long, global = true, env = "SHIPGATE_SERVER")]
    pub server: Option<String>,
    /// API token (default: the admin token in the config's data dir).
    #[arg(long, global = true, env = "SHIPGATE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// For people.
    Text,
    /// One JSON document, for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented shipgate.toml (never overwrites).
    #[command(
        after_help = "Examples:\n  shipgate init            # writes shipgate.toml here, and .shipgate/ to .gitignore\n  shipgate validate"
    )]
    Init,
    /// Check the config; errors point at file:line:column.
    #[command(
        after_help = "Examples:\n  shipgate validate\n  shipgate -c deploy/shipgate.toml validate"
    )]
    Validate,
    /// Run the API, router and supervisor.
    #[command(
        after_help = "Examples:\n  shipgate server\n  shipgate -c /etc/shipgate/shipgate.toml server"
    )]
    Server,
    /// Print a shell completion script: `shipgate completions bash > /etc/bash_completion.d/shipgate`.
    #[command(
        after_help = "Examples:\n  shipgate completions bash > /etc/bash_completion.d/shipgate\n  shipgate completions zsh > \"${fpath[1]}/_shipgate\"\n  shipgate completions fish > ~/.config/fish/completions/shipgate.fish"
    )]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `shipgate man | man -l -`.
    #[command(
        after_help = "Examples:\n  shipgate man | man -l -\n  shipgate man > /usr/local/share/man/man1/shipgate.1"
    )]
    Man,
    /// Make the running server take up the changed config file: it is validated first (an
    /// invalid one changes nothing), each change is listed, and the server starts again on it
    /// while the agent keeps serving (no request drops). SIGHUP, or saving the file, does the same.
    #[command(
        after_help = "Examples:\n  shipgate reload\n  kill -HUP $(pgrep -f \"shipgate server\")   # the same"
    )]
    Reload,
    /// Remove what `server.retention` no longer keeps: artifacts and directories of each app's
    /// releases older than the newest `releases` (never one live, a standby, where a rollback
    /// goes, or in a promotion in progress; records stay), and logs idle for `logs`. The server
    /// also does it every hour.
    #[command(
        after_help = "Examples:\n  shipgate gc --dry-run    # what would go, and what stays and why\n  shipgate gc"
    )]
    Gc {
        /// Only say what would go.
        #[arg(long)]
        dry_run: bool,
    },
    /// A guided tour on a built-in sample app.
    #[command(
        after_help = "Examples:\n  shipgate demo\n  shipgate demo --exit      # the tour, then stop"
    )]
    Demo {
        /// End after the tour instead of serving until Ctrl-C.
        #[arg(long)]
        exit: bool,
    },
    /// Register and list releases.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Put a release into an environment.
    #[command(
        alias = "deploy",
        after_help = "Examples:\n  shipgate promote web@1.4.2 --to staging --wait\n  shipgate promote web@1.4.2 --to production --override \"approved by the on-call lead\"\n  shipgate promote web@1.4.3 --to production --hotfix --reason \"INC-2291 checkout 500s\""
    )]
    Promote {
        /// APP@VERSION
        release: ReleaseRef,
        /// Target environment.
        #[arg(long)]
        to: EnvName,
        /// Wait until it has succeeded or failed.
        #[arg(long)]
        wait: bool,
        /// Admin only: lift deploy windows and freezes for this promotion, for this reason
        /// (recorded in the audit log). Approvals and soak still apply.
        #[arg(long = "override", value_name = "REASON")]
        override_reason: Option<String>,
        /// A hotfix, through the environment's hotfix lane ([environments.NAME.hotfix]): the
        /// release need only be verified in the lane's `from`, and the requirements it names
        /// are skipped; approvals still hold. Needs --reason and the lane's role.
        #[arg(long, requires = "reason")]
        hotfix: bool,
        /// Why the hotfix (an incident), recorded with it in the audit log.
        #[arg(long, requires = "hotfix", value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Approve a release's pending promotion into an environment (never your own).
    #[command(
        after_help = "Examples:\n  shipgate approve web@1.4.2 --env production --comment \"release notes checked\""
    )]
    Approve {
        /// APP@VERSION
        release: ReleaseRef,
        /// The environment it waits to enter.
        #[arg(long)]
        env: EnvName,
        /// Why, recorded with the approval.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Reject a release's pending promotion into an environment: it ends, failed.
    #[command(
        after_help = "Examples:\n  shipgate reject web@1.4.2 --env production --comment \"wait for the schema change\""
    )]
    Reject {
        /// APP@VERSION
        release: ReleaseRef,
        /// The environment it waits to enter.
        #[arg(long)]
        env: EnvName,
        /// Why (required).
        #[arg(long)]
        comment: String,
    },
    /// Stop promotions into an environment (or all) until `shipgate unfreeze`.
    #[command(
        after_help = "Examples:\n  shipgate freeze --env production --reason \"incident 42\"\n  shipgate freeze --all --reason \"end-of-year freeze\""
    )]
    Freeze {
        /// The environment.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        env: Option<EnvName>,
        /// Every environment at once.
        #[arg(long)]
        all: bool,
        /// Why (shown to everyone whose promotion waits).
        #[arg(long)]
        reason: String,
    },
    /// Lift a freeze (of one environment, or the one of every environment with --all).
    #[command(
        after_help = "Examples:\n  shipgate unfreeze --env production\n  shipgate unfreeze --all"
    )]
    Unfreeze {
        /// The environment.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        env: Option<EnvName>,
        /// The freeze of every environment.
        #[arg(long)]
        all: bool,
    },
    /// Staging data from production, masked (see [apps.APP.data]).
    #[command(subcommand)]
    Data(DataCommand),
    /// Compare an app in two environments; exit 1 on an unexpected difference in its settings
    /// (releases and gates too with --strict).
    #[command(
        after_help = "Examples:\n  shipgate diff web staging production\n  shipgate diff web staging production --strict   # releases and gates count too"
    )]
    Diff {
        /// The app.
        app: AppName,
        /// The first environment (staging, say).
        env_a: EnvName,
        /// The second environment (production, say).
        env_b: EnvName,
        /// Exit 1 on any unexpected difference, the releases and the gate settings (`require.*`,
        /// `verify.*`) included; by default those are shown in sections of their own and do not
        /// count, since staging ahead of production with gates of its own is the normal state.
        #[arg(long)]
        strict: bool,
    },
    /// Check live releases against what was recorded; exit 1 if any drifted.
    #[command(
        after_help = "Examples:\n  shipgate drift\n  shipgate drift web --env production --heal"
    )]
    Drift {
        /// Only this app.
        app: Option<AppName>,
        /// With --heal: the environment to heal.
        #[arg(long, requires = "heal")]
        env: Option<EnvName>,
        /// Redeploy the recorded release there from its artifact.
        #[arg(long, requires = "env")]
        heal: bool,
    },
    /// Deploy the live release of an environment again with the config as it is now (its
    /// changed variables), through that environment's gates.
    #[command(after_help = "Examples:\n  shipgate redeploy web --env staging --wait")]
    Redeploy {
        /// The app.
        app: AppName,
        /// The environment.
        #[arg(long)]
        env: EnvName,
        /// Wait until it is done.
        #[arg(long)]
        wait: bool,
    },
    /// Return an environment to the release it had before.
    #[command(
        after_help = "Examples:\n  shipgate rollback web --env production --wait\n  shipgate rollback web --env production --to 1.4.0"
    )]
    Rollback {
        /// The app.
        app: AppName,
        /// The environment.
        #[arg(long)]
        env: EnvName,
        /// A version that was live there (default: the one before the current).
        #[arg(long)]
        to: Option<Version>,
        /// Wait until it is done.
        #[arg(long)]
        wait: bool,
    },
    /// Sign in at the server's identity provider ([server.oidc]) through the browser; the
    /// session is kept for that server in ~/.config/shipgate/credentials.json.
    #[command(
        after_help = "Examples:\n  shipgate login --server https://shipgate.example.com\n  shipgate login --no-browser   # only print the address to open"
    )]
    Login {
        /// Only print the address to open; do not ask the desktop to open it.
        #[arg(long)]
        no_browser: bool,
    },
    /// What is live where, instance health, promotions in progress.
    #[command(after_help = "Examples:\n  shipgate status\n  shipgate status web --output json")]
    Status {
        /// Only this app.
        app: Option<AppName>,
    },
    /// Promotions of an app with their gates.
    #[command(
        after_help = "Examples:\n  shipgate history web --env production\n  shipgate history web --limit 5 --output json"
    )]
    History {
        /// The app.
        app: AppName,
        /// Only this environment.
        #[arg(long)]
        env: Option<EnvName>,
        /// At most this many promotions.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Output of the instance serving an app in an environment.
    #[command(
        after_help = "Examples:\n  shipgate logs web --env staging --lines 50\n  shipgate logs web --env production -f"
    )]
    Logs {
        /// The app.
        app: AppName,
        /// The environment.
        #[arg(long)]
        env: EnvName,
        /// Keep printing new output.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Lines to show first.
        #[arg(long, default_value_t = 100)]
        lines: usize,
        /// For an environment on hosts: the host whose instance to read (default: the first
        /// that answers).
        #[arg(long)]
        host: Option<String>,
    },
    /// The audit log of every change.
    #[command(
        after_help = "Examples:\n  shipgate audit --env production --limit 20\n  shipgate audit --verify"
    )]
    Audit {
        /// Check the hash chain instead of listing.
        #[arg(long)]
        verify: bool,
        /// Only this app.
        #[arg(long)]
        app: Option<AppName>,
        /// Only this environment.
        #[arg(long)]
        env: Option<EnvName>,
        /// At most this many events (the newest), 1 to 10000.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
    },
    /// Create, list and revoke API tokens (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// The control plane's database.
    #[command(subcommand)]
    Store(StoreCommand),
    /// The machines that run instances and routers.
    #[command(subcommand)]
    Host(HostCommand),
    /// On-demand environments: made from a template, tested on arrival, gone when their time
    /// is up.
    #[command(subcommand)]
    Env(EnvCommand),
    /// Feature flags per environment, changed at run time and served over OFREP at
    /// /ofrep/v1/.
    #[command(subcommand)]
    Flag(FlagCommand),
    /// Faults injected on purpose into an environment's router, always for a while.
    #[command(subcommand)]
    Chaos(ChaosCommand),
    /// A canary rollout under way (`[environments.NAME.canary]`): its step and figures, and
    /// resume, abort or skip.
    #[command(subcommand)]
    Canary(CanaryCommand),
    /// Load tests at a constant arrival rate: a run on demand, or the baseline the
    /// environment's `verify.load` gate compares the next release with.
    #[command(subcommand)]
    Load(LoadCommand),
    /// Secrets of an environment, sealed in the store and versioned: set one (the value from
    /// stdin, never from the command line), list them (names and versions, never values),
    /// remove one, or print the recipient `secrets_file`s are encrypted for.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Backups of an environment's data, each proven by a restore drill: take one, list them,
    /// show one, restore one (admin, with a reason).
    #[command(subcommand)]
    Backup(BackupCommand),
    /// User acceptance: pass or fail one scenario of a release waiting for its sign-off
    /// (`[environments.NAME.signoff]`), or see where its sign-off stands.
    #[command(
        args_conflicts_with_subcommands = true,
        subcommand_negates_reqs = true,
        after_help = "Examples:\n  shipgate signoff web@1.4.2 --env uat --scenario \"invoice PDF opens\" --pass\n  shipgate signoff web@1.4.2 --env uat --scenario \"invoice PDF opens\" --fail --note \"the PDF is blank\"\n  shipgate signoff status web@1.4.2 --env uat"
    )]
    Signoff(SignoffArgs),
    /// Notifications: the targets of `[notify.NAME]`, their dead letters, a test event.
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// DORA metrics from shipgate's own history: deployment frequency, lead time for changes,
    /// change failure rate and time to restore, per app and environment.
    #[command(
        after_help = "Examples:\n  shipgate dora\n  shipgate dora web --days 90\n  shipgate dora --days 7 --output json"
    )]
    Dora {
        /// Only this app.
        app: Option<AppName>,
        /// The window, in days up to now (1 to 365).
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    /// Runs the data plane of this machine (instances and routers) for the server. The server
    /// starts the one on its own machine itself; on another host, join once with `--server URL
    /// --join TOKEN --name NAME` (the token from `shipgate host add NAME`), and from then on
    /// `shipgate agent --data-dir DIR` dials the server with the certificate it got.
    #[command(
        after_help = "Examples:\n  shipgate agent --server http://shipgate.example:7300 --join sg_... --name web-1 --ca-fingerprint 3f2a...\n  shipgate agent --data-dir /var/lib/shipgate-agent\n  shipgate agent --stop"
    )]
    Agent {
        /// Where the agent keeps its socket, pid, lock, and on another host its certificate,
        /// releases, logs and instance data (default: the config's `data_dir` on the server's
        /// machine, /var/lib/shipgate-agent on another host).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// Join the server (`--server URL`, its API address) with this one-time token.
        #[arg(long, requires = "name")]
        join: Option<String>,
        /// The host's name, as `shipgate host add` named it (on a restart, checked against
        /// the name it joined as).
        #[arg(long)]
        name: Option<String>,
        /// The SHA-256 of the server's CA certificate, as `shipgate host add` prints it: the
        /// join is refused unless the CA it is sent has it.
        #[arg(long, requires = "join")]
        ca_fingerprint: Option<String>,
        /// Stop the agent running there instead: its routers stop accepting, requests in flight
        /// finish, and its instances are stopped.
        #[arg(long)]
        stop: bool,
    },
    /// The demo's sample app (used by `shipgate demo` and by shipgate-bench).
    #[command(hide = true)]
    SampleApp {
        #[arg(long)]
        port: u16,
    },
    /// The demo's smoke test.
    #[command(hide = true)]
    SampleSmoke {
        #[arg(long)]
        url: String,
        #[arg(long)]
        expect_version: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Pack (a directory) or take (a .tar/.tar.gz) an artifact, or take an OCI image, and
    /// register it.
    #[command(
        disable_version_flag = true,
        after_help = "Examples:\n  shipgate release create web --version 1.4.2 --artifact ./build\n  shipgate release create web --version 1.4.2 --artifact web.tar.gz --commit $(git rev-parse HEAD)\n  shipgate release create web --version 1.4.3 --artifact ./build --commit-time 2026-12-01T09:30:00Z\n  shipgate release create web --version 1.5.0 --image oci-archive:web.tar\n  shipgate release create web --version 1.5.1 --image registry.example.com/team/web:1.5.1\n  shipgate release create web --version 1.5.2 --artifact ./build --base oci-archive:python-3.12.tar"
    )]
    Create {
        /// The app.
        app: AppName,
        /// The version (immutable once registered).
        #[arg(long)]
        version: Version,
        /// A directory, .tar or .tar.gz.
        #[arg(long, required_unless_present = "image", conflicts_with = "image")]
        artifact: Option<PathBuf>,
        /// With --artifact DIR: make an image of DIR on this base image (any --image
        /// reference), at /app, its working directory. For teams without an image build yet.
        #[arg(long, requires = "artifact")]
        base: Option<String>,
        /// An OCI image: oci-archive:PATH, oci:DIR, docker-archive:PATH, or a registry's
        /// HOST[:PORT]/NAME:TAG or HOST[:PORT]/NAME@sha256:DIGEST (pulled by the server, the tag
        /// resolved once). The release's digest is the image manifest's.
        #[arg(long)]
        image: Option<String>,
        /// Source commit.
        #[arg(long)]
        commit: Option<String>,
        /// When that commit was made (RFC 3339); read from git when --commit is given inside
        /// a repository (a warning says so when git cannot tell it). DORA's lead time counts
        /// from it.
        #[arg(long)]
        commit_time: Option<String>,
        /// Free text.
        #[arg(long)]
        notes: Option<String>,
    },
    /// Registered releases, newest first.
    List {
        /// Only this app.
        app: Option<AppName>,
    },
    /// One release: its digest and source, and for an image its layers, size, user, command
    /// and exposed ports.
    #[command(after_help = "Examples:\n  shipgate release show web@1.4.2")]
    Show {
        /// `APP@VERSION`.
        release: ReleaseRef,
    },
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Replace an environment's data with another's, masked; the source is only read.
    #[command(after_help = "Examples:\n  shipgate data refresh web --from production --to staging")]
    Refresh {
        /// The app.
        app: AppName,
        /// Where the data comes from (production).
        #[arg(long)]
        from: EnvName,
        /// Where it goes (staging); its previous data stays if the refresh fails.
        #[arg(long)]
        to: EnvName,
    },
    /// The leak check: masked columns compared with the environment the data comes from.
    #[command(after_help = "Examples:\n  shipgate data check web --env staging")]
    Check {
        /// The app.
        app: AppName,
        /// The masked environment.
        #[arg(long)]
        env: EnvName,
    },
}

/// `shipgate store ...`.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy everything of one store into another, empty one (SQLite to PostgreSQL, to run
    /// several servers): releases, promotions, gates, decisions, tokens, freezes, hosts,
    /// traffic, artifacts and the audit chain, which is verified on the target. Refused for
    /// the store of a server still running, and for a target that is not empty.
    #[command(
        after_help = "Examples:\n  shipgate store copy --from sqlite://.shipgate/shipgate.db --to postgres://shipgate@db.internal/shipgate"
    )]
    Copy {
        /// The store to copy: sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DB.
        #[arg(long)]
        from: String,
        /// The store to fill: postgres://... (or sqlite://PATH); its tables are created.
        #[arg(long)]
        to: String,
        /// Where the source keeps its artifacts (default: `artifacts/` beside a SQLite source).
        #[arg(long, value_name = "DIR")]
        artifacts: Option<std::path::PathBuf>,
    },
}

/// `shipgate env ...`.
#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Make an environment from a template: seed its data (masked), deploy the releases (or
    /// those live in the template's `from`), run its verification, and print its URL. Exits 0
    /// only when everything passed (deployer or admin).
    #[command(
        after_help = "Examples:\n  shipgate env create pr-123 --template preview --release web@1.4.2-pr123\n  shipgate env create uat-acme --template preview --ttl 72h --output json"
    )]
    Create {
        /// Its name (`pr-123`).
        name: EnvName,
        /// The template (`[templates.NAME]` in the config).
        #[arg(long)]
        template: EnvName,
        /// A release to deploy into it (repeat it, one per app).
        #[arg(long = "release")]
        releases: Vec<ReleaseRef>,
        /// Its TTL instead of the template's (`24h`).
        #[arg(long)]
        ttl: Option<String>,
        /// Answer at once, while it is still being made.
        #[arg(long)]
        no_wait: bool,
    },
    /// Every on-demand environment: template, requester, state, URL and time left.
    List,
    /// Give an environment until TTL from now (deployer or admin).
    #[command(after_help = "Examples:\n  shipgate env extend pr-123 --ttl 24h")]
    Extend {
        /// The environment.
        name: EnvName,
        /// How long from now.
        #[arg(long)]
        ttl: String,
    },
    /// Delete an environment and everything of it: instances, router, data, folders (deployer
    /// or admin).
    #[command(after_help = "Examples:\n  shipgate env delete pr-123")]
    Delete {
        /// The environment.
        name: EnvName,
    },
}

/// `shipgate flag ...`.
#[derive(Debug, Subcommand)]
pub enum FlagCommand {
    /// Give a flag rules in one environment: attribute conditions in order, then an optional
    /// sticky rollout by targeting key (deployer of the environment).
    #[command(
        after_help = "Examples:\n  shipgate flag set web new-checkout --env production --rollout 10%\n  shipgate flag set web new-checkout --env staging --rule 'plan in [\"pro\",\"team\"] -> on' --rollout 25%\n  shipgate flag set web theme --env staging --rule 'version semver \">=2.0.0\" -> dark'"
    )]
    Set {
        /// The app that declares the flag.
        app: AppName,
        /// The flag's key.
        flag: String,
        /// The environment.
        #[arg(long)]
        env: EnvName,
        /// `ATTRIBUTE OP VALUE -> VARIANT`, OP one of ==, in, semver, regex, >, >=, <, <= (repeat
        /// it; the first that matches decides).
        #[arg(long = "rule")]
        rules: Vec<String>,
        /// Serve this share of targeting keys the `--variant` (sticky: murmur3 of flag key and
        /// targeting key), the rest the default.
        #[arg(long)]
        rollout: Option<String>,
        /// The variant a rollout serves (`on` for a boolean flag).
        #[arg(long)]
        variant: Option<String>,
    },
    /// Serve one variant to everyone (`on` for a boolean flag).
    #[command(after_help = "Examples:\n  shipgate flag on web new-checkout --env staging")]
    On {
        /// The app.
        app: AppName,
        /// The flag's key.
        flag: String,
        /// The environment.
        #[arg(long)]
        env: EnvName,
        /// The variant to serve.
        #[arg(long)]
        variant: Option<String>,
    },
    /// The kill switch: serve the default to everyone, at once (it never waits for approvals).
    #[command(after_help = "Examples:\n  shipgate flag off web new-checkout --env production")]
    Off {
        /// The app.
        app: AppName,
        /// The flag's key.
        flag: String,
        /// The environment.
        #[arg(long)]
        env: EnvName,
    },
    /// Give an environment another's flag states of an app (or of one flag), as one change:
    /// the difference is printed first, then applied (deployer of the target).
    #[command(
        after_help = "Examples:\n  shipgate flag promote web --from staging --to production\n  shipgate flag promote web --from staging --to production --flag new-checkout --dry-run"
    )]
    Promote {
        /// The app.
        app: AppName,
        /// Where the states come from.
        #[arg(long)]
        from: EnvName,
        /// Where they go.
        #[arg(long)]
        to: EnvName,
        /// Only this flag.
        #[arg(long)]
        flag: Option<String>,
        /// Only print the difference.
        #[arg(long)]
        dry_run: bool,
    },
    /// Each declared flag's state in each environment (or in one).
    #[command(
        after_help = "Examples:\n  shipgate flag show\n  shipgate flag show new-checkout --env production --output json"
    )]
    Show {
        /// Only this flag.
        flag: Option<String>,
        /// Only this environment.
        #[arg(long)]
        env: Option<EnvName>,
    },
    /// Flag changes waiting for approvals (in environments with `require.approvals`), or
    /// every one with --all.
    #[command(
        after_help = "Examples:\n  shipgate flag changes\n  shipgate flag changes --env production --all --output json"
    )]
    Changes {
        /// Only this environment's.
        #[arg(long)]
        env: Option<EnvName>,
        /// Decided ones too (applied, rejected, superseded).
        #[arg(long)]
        all: bool,
    },
    /// Approve a waiting flag change (approver of its environment, or admin; never the one
    /// who asked); the approval that completes the count applies it.
    #[command(
        after_help = "Examples:\n  shipgate flag approve 3\n  shipgate flag approve 3 --comment 'checked with support'"
    )]
    Approve {
        /// The change's number (shipgate flag changes).
        id: i64,
        /// Why, in words.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Reject a waiting flag change; it is never applied.
    #[command(after_help = "Examples:\n  shipgate flag reject 3 --comment 'not during the sale'")]
    Reject {
        /// The change's number (shipgate flag changes).
        id: i64,
        /// Why (required).
        #[arg(long)]
        comment: String,
    },
    /// OFREP client keys: each selects one environment's flags.
    #[command(subcommand)]
    Key(FlagKeyCommand),
}

/// `shipgate notify ...`.
#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Every target with how its deliveries stand, and the dead-letter list with each
    /// delivery's last error.
    #[command(
        after_help = "Examples:\n  shipgate notify list\n  shipgate notify list --output json"
    )]
    List,
    /// Send dead deliveries again (admin): by number, or every one with --all.
    #[command(
        after_help = "Examples:\n  shipgate notify retry 12 13\n  shipgate notify retry --all"
    )]
    Retry {
        /// The deliveries (shipgate notify list numbers them).
        ids: Vec<i64>,
        /// Every dead delivery.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Send a test event (`notify.test`) to one target (admin), signed and retried like any.
    #[command(after_help = "Examples:\n  shipgate notify test ops")]
    Test {
        /// The target (`[notify.NAME]`).
        name: String,
    },
}

/// `shipgate load ...`.
#[derive(Debug, Subcommand)]
pub enum LoadCommand {
    /// Send load to what an environment serves now, as the `verify.load` gate does (its mix,
    /// or `GET /`), and show the figures. At the end of the flow: an admin, with `load.allow`.
    #[command(
        after_help = "Examples:\n  shipgate load run web --env staging --rate 200 --duration 10s"
    )]
    Run {
        /// The app.
        app: AppName,
        /// The environment.
        #[arg(long)]
        env: EnvName,
        /// Requests per second.
        #[arg(long)]
        rate: Option<u32>,
        /// How long (`10s`).
        #[arg(long)]
        duration: Option<String>,
    },
    /// Run the environment's `verify.load` against what is live now, and keep its figures as
    /// those the next release is compared with.
    #[command(after_help = "Examples:\n  shipgate load baseline web --env staging")]
    Baseline {
        /// The app.
        app: AppName,
        /// The environment.
        #[arg(long)]
        env: EnvName,
    },
}

/// `shipgate secret ...`.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Set a new version of a secret; the value is read from stdin (one trailing newline is
    /// dropped). It reaches instances at their next deploy; `--deploy` does that now, through
    /// the environment's gates.
    #[command(
        after_help = "Examples:\n  printf %s \"$PW\" | shipgate secret set production DB_PASSWORD\n  shipgate secret set production DB_PASSWORD --deploy < new-password.txt"
    )]
    Set {
        /// The environment.
        env: EnvName,
        /// The secret's name (what `vars.X = { secret = \"NAME\" }` names).
        name: String,
        /// Roll the live releases that use it now.
        #[arg(long)]
        deploy: bool,
    },
    /// The secrets of an environment: names, versions, who set them, which variables use them.
    #[command(after_help = "Examples:\n  shipgate secret list production")]
    List {
        /// The environment.
        env: EnvName,
    },
    /// Remove a secret: its versions stay for rollbacks; the next deploy that needs it fails
    /// until it is set again.
    #[command(after_help = "Examples:\n  shipgate secret rm production OLD_API_KEY")]
    Rm {
        /// The environment.
        env: EnvName,
        /// The secret's name.
        name: String,
    },
    /// Print the age recipient to encrypt a `secrets_file` for.
    #[command(
        after_help = "Examples:\n  age -r \"$(shipgate secret recipient)\" -o secrets.production.age secrets.production"
    )]
    Recipient,
}

/// `shipgate backup ...`.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Take a backup of an app's data in an environment, then prove it by restoring it into
    /// scratch (its drill); answers once both are done.
    #[command(after_help = "Examples:\n  shipgate backup create web --env production")]
    Create {
        /// The app.
        app: AppName,
        /// The environment whose data is backed up.
        #[arg(long)]
        env: EnvName,
    },
    /// The backups of an app, newest first, with what their drills found.
    #[command(after_help = "Examples:\n  shipgate backup list web --env production")]
    List {
        /// The app.
        app: AppName,
        /// Only this environment.
        #[arg(long)]
        env: Option<EnvName>,
    },
    /// Prove a backup again: restore it into scratch and compare (its drill).
    #[command(after_help = "Examples:\n  shipgate backup drill 12")]
    Drill {
        /// The backup's number.
        id: i64,
    },
    /// One backup: its source, checksum, counts and drill.
    #[command(after_help = "Examples:\n  shipgate backup show 12")]
    Show {
        /// The backup's number.
        id: i64,
    },
    /// Replace an environment's data with a restorable backup (admin; refused while a
    /// promotion is in flight there). Audited with the reason.
    #[command(
        after_help = "Examples:\n  shipgate backup restore web --env production --reason \"undo the 1.4.3 migration\"\n  shipgate backup restore web --env production --id 12 --reason \"INC-2291\""
    )]
    Restore {
        /// The app.
        app: AppName,
        /// The environment whose data is replaced.
        #[arg(long)]
        env: EnvName,
        /// Which backup (default: the newest restorable one).
        #[arg(long)]
        id: Option<i64>,
        /// Why, recorded in the audit log.
        #[arg(long)]
        reason: String,
    },
}

/// `shipgate signoff APP@VERSION --env ENV --scenario NAME --pass|--fail [--note TEXT]`, or
/// `shipgate signoff status APP@VERSION --env ENV`.
#[derive(Debug, Args)]
pub struct SignoffArgs {
    /// `status`: where the sign-off stands.
    #[command(subcommand)]
    pub command: Option<SignoffCommand>,
    /// APP@VERSION
    #[arg(required = true)]
    pub release: Option<ReleaseRef>,
    /// The environment that signs it off.
    #[arg(long, required = true)]
    pub env: Option<EnvName>,
    /// The scenario, as the config names it.
    #[arg(long, required = true)]
    pub scenario: Option<String>,
    /// It works the way it should.
    #[arg(long, conflicts_with = "fail", required_unless_present = "fail")]
    pub pass: bool,
    /// It does not: the promotion fails and the environment goes back (needs --note).
    #[arg(long, requires = "note")]
    pub fail: bool,
    /// What you saw, in words.
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
}

/// `shipgate signoff status ...`.
#[derive(Debug, Subcommand)]
pub enum SignoffCommand {
    /// Each scenario with who passed or failed it, the environment's URL, and what changed
    /// since the release signed off there before.
    #[command(after_help = "Examples:\n  shipgate signoff status web@1.4.2 --env uat")]
    Status {
        /// APP@VERSION
        release: ReleaseRef,
        /// The environment that signs it off.
        #[arg(long)]
        env: EnvName,
    },
}

/// `shipgate canary ...`.
#[derive(Debug, Subcommand)]
pub enum CanaryCommand {
    /// Where the rollout stands: its step, the canary's share, and both sides' figures in the
    /// step's window.
    #[command(
        after_help = "Examples:\n  shipgate canary status web --env production\n  shipgate canary status web --env production --output json"
    )]
    Status {
        /// The app.
        app: AppName,
        /// The environment.
        #[arg(long)]
        env: EnvName,
    },
    /// A `pause` step, or a step held for too few requests, goes on (approver or admin).
    #[command(after_help = "Examples:\n  shipgate canary resume web --env production")]
    Resume {
        /// The app.
        app: AppName,
        /// The environment.
        #[arg(long)]
        env: EnvName,
    },
    /// The canary takes no request from now on, on every host, and its promotion fails
    /// (deployer or admin).
    #[command(after_help = "Examples:\n  shipgate canary abort web --env production")]
    Abort {
        /// The app.
        app: AppName,
        /// The environment.
        #[arg(long)]
        env: EnvName,
    },
    /// The canary takes every request at once, and the release's verify follows (admin).
    #[command(
        after_help = "Examples:\n  shipgate canary skip web --env production --reason \"hotfix for the checkout outage\""
    )]
    Skip {
        /// The app.
        app: AppName,
        /// The environment.
        #[arg(long)]
        env: EnvName,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
}

/// `shipgate chaos ...`.
#[derive(Debug, Subcommand)]
pub enum ChaosCommand {
    /// Inject an HTTP fault into an environment's router: an abort (a status instead of the
    /// app) or a delay, for a share of an app's requests, until --duration ends it by itself.
    /// Only where `chaos.allow = true`; at the end of the flow (production) an admin only.
    #[command(
        after_help = "Examples:\n  shipgate chaos inject --env staging --app web --abort 503 --percent 10 --duration 5m\n  shipgate chaos inject --env staging --app web --delay 300ms --jitter 100ms --percent 25 --path '/api/*' --duration 10m\n  shipgate chaos inject --env staging --app web --abort 500 --header 'x-chaos: 1' --duration 1h"
    )]
    Inject {
        /// The environment.
        #[arg(long)]
        env: EnvName,
        /// The app whose requests it touches.
        #[arg(long)]
        app: AppName,
        /// Answer this status (400 to 599) instead of the app.
        #[arg(long, conflicts_with = "delay", required_unless_present = "delay")]
        abort: Option<u16>,
        /// Hold each request this long before forwarding it (`300ms`).
        #[arg(long)]
        delay: Option<String>,
        /// With --delay: the most it varies either way (`100ms`).
        #[arg(long, requires = "delay")]
        jitter: Option<String>,
        /// The share of requests touched, above 0 and at most 100.
        #[arg(long, default_value_t = 100.0)]
        percent: f64,
        /// Only requests whose path matches; `*` stands for anything (`/api/*`).
        #[arg(long)]
        path: Option<String>,
        /// Only requests with this header and value (`x-chaos: 1`).
        #[arg(long)]
        header: Option<String>,
        /// How long it lasts (`5m`), at most the environment's `chaos.max_duration`.
        #[arg(long)]
        duration: String,
    },
    /// The faults in force, with their end (ended ones too with --all).
    #[command(
        after_help = "Examples:\n  shipgate chaos list\n  shipgate chaos list --env staging --all --output json"
    )]
    List {
        /// Only this environment's.
        #[arg(long)]
        env: Option<EnvName>,
        /// Ended ones too.
        #[arg(long)]
        all: bool,
    },
    /// End faults before their time: one by number, or those of an environment or app.
    #[command(
        after_help = "Examples:\n  shipgate chaos clear 3\n  shipgate chaos clear --env staging\n  shipgate chaos clear --env staging --app web"
    )]
    Clear {
        /// The fault's number (shipgate chaos list).
        id: Option<i64>,
        /// Those of this environment.
        #[arg(long)]
        env: Option<EnvName>,
        /// Those of this app.
        #[arg(long)]
        app: Option<AppName>,
    },
}

/// `shipgate flag key ...`.
#[derive(Debug, Subcommand)]
pub enum FlagKeyCommand {
    /// Make a client key for an environment; it is printed once, only its hash is kept (admin).
    #[command(after_help = "Examples:\n  shipgate flag key create web-frontend --env production")]
    Create {
        /// Its name.
        name: String,
        /// The environment whose flags it evaluates.
        #[arg(long)]
        env: EnvName,
    },
    /// Every client key, revoked ones too (admin).
    List,
    /// Revoke a client key: OFREP answers 401 to it from now on (admin).
    #[command(after_help = "Examples:\n  shipgate flag key revoke web-frontend")]
    Revoke {
        /// Its name.
        name: String,
    },
}

/// `shipgate host ...`.
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Every host: connected, or since when not; its agent's pid, version and instances.
    List,
    /// Add a host; prints its one-time join token for `shipgate agent --join` (admin).
    #[command(after_help = "Examples:\n  shipgate host add web-1")]
    Add {
        /// Its name, as `environments.X.hosts` names it.
        name: String,
    },
    /// Remove a host: its certificate is revoked and its agent cut off at once (admin).
    #[command(after_help = "Examples:\n  shipgate host remove web-1")]
    Remove {
        /// The host.
        name: String,
    },
    /// Put an agent on a machine over SSH (OpenSSH's `ssh` and `scp`): add the host, copy this
    /// binary, write a start script, join and start the agent, and wait until it connects.
    #[command(
        after_help = "Examples:\n  shipgate host install web-1 --ssh root@web-1.example --identity ~/.ssh/id_ed25519"
    )]
    Install {
        /// The host's name, as `environments.X.hosts` will name it.
        name: String,
        /// Where to log in: USER@ADDRESS.
        #[arg(long)]
        ssh: String,
        /// The private key to log in with (`ssh -i`).
        #[arg(long)]
        identity: Option<std::path::PathBuf>,
        /// The SSH port.
        #[arg(long, default_value_t = 22)]
        port: u16,
        /// The folder on the machine for the binary, the start script, the log and the data.
        #[arg(long, default_value = "/var/lib/shipgate-agent")]
        dir: String,
        /// More `ssh -o` options, e.g. `--ssh-option UserKnownHostsFile=FILE` (repeat it).
        #[arg(long = "ssh-option")]
        ssh_options: Vec<String>,
    },
}

/// `shipgate token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once and stored only as a hash.
    #[command(
        after_help = "Examples:\n  shipgate token create ci --role deployer\n  shipgate token create alice --role approver --env production\n  shipgate token create alice-ci --role deployer --person alice --expires 90d"
    )]
    Create {
        /// Who or what holds it (the actor in the audit log).
        name: String,
        /// viewer, deployer, approver, tester or admin.
        #[arg(long, value_parser = shipgate_core::Role::parse)]
        role: shipgate_core::Role,
        /// Limit it to these environments (repeat the flag), each a name or a prefix and `*`
        /// (`pr-*`: every environment whose name starts with `pr-`, on-demand ones included);
        /// default: all.
        #[arg(long = "env")]
        envs: Vec<shipgate_core::EnvScope>,
        /// The person it belongs to, when not the one its name says (`--person alice` for
        /// `alice-laptop`): one person's tokens count as one approver, and never approve what
        /// that person caused.
        #[arg(long)]
        person: Option<String>,
        /// How long it works (`90d`, `12h`); default: until revoked. Tokens for robots (CI)
        /// should expire.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Every token (never their secrets).
    List,
    /// Revoke a token: it stops working at once.
    #[command(after_help = "Examples:\n  shipgate token revoke ci")]
    Revoke {
        /// The token's name.
        name: String,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }

    /// Every command a person runs shows examples in its `--help` (list commands need none).
    #[test]
    fn every_command_has_examples_in_its_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
                let name = format!("{path} {}", sub.get_name());
                if sub.has_subcommands() {
                    walk(sub, &name, missing);
                } else if sub.get_name() != "list"
                    && !sub
                        .get_after_help()
                        .is_some_and(|h| h.to_string().starts_with("Examples:"))
                {
                    missing.push(name);
                }
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "shipgate", &mut missing);
        missing.retain(|m| m != "shipgate help");
        assert!(missing.is_empty(), "no examples in --help of: {missing:?}");
    }
}
