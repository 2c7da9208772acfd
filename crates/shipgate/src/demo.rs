//! `shipgate demo`: a guided tour on the built-in sample app, in a temporary data dir.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use shipgate_api::status::AppStatus;
use shipgate_core::PromotionState;

use crate::client::Client;
use crate::output::Printer;

/// A free loopback port, preferring `wanted` (unless 0) so the addresses are the README's when possible.
pub fn free_port(wanted: u16) -> anyhow::Result<u16> {
    if wanted != 0 && std::net::TcpListener::bind(("127.0.0.1", wanted)).is_ok() {
        return Ok(wanted);
    }
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// The demo's config: the sample app behind four environments, a smoke test in testing. Its
/// data plane is the server's own process (`data_plane = "server"`), so that everything the
/// demo started ends with it and leaves nothing running; and its instances are unisolated
/// (`isolation = "none"`), because the sample app is this very binary, outside any release
/// directory a sandbox would show it.
pub fn demo_config(exe: &Path, api_port: u16, env_ports: [u16; 4], verify_testing: bool) -> String {
    let exe = exe.display();
    let names = ["development", "testing", "staging", "production"];
    let mut toml = format!(
        "[server]\nlisten = \"127.0.0.1:{api_port}\"\ndata_dir = \"data\"\ndata_plane = \"server\"\nisolation = \"none\"\n\n[apps.web]\nrun = \"'{exe}' sample-app --port ${{PORT}}\"\nhealth = \"/healthz\"\n"
    );
    for (i, name) in names.iter().enumerate() {
        toml.push_str(&format!(
            "\n[environments.{name}]\nlisten = \"127.0.0.1:{}\"\n",
            env_ports[i]
        ));
        if i > 0 {
            toml.push_str(&format!("after = \"{}\"\n", names[i - 1]));
        }
        if *name == "testing" && verify_testing {
            toml.push_str(&format!("verify.tests = [\"'{exe}' sample-smoke --url ${{URL}} --expect-version ${{VERSION}}\"]\n"));
        }
    }
    toml
}

/// Writes a sample app release directory.
pub fn sample_release(dir: &Path, version: &str, buggy: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("VERSION"), format!("{version}\n"))?;
    if buggy {
        std::fs::write(dir.join("BUG"), "the greeting divides by zero\n")?;
    }
    Ok(())
}

/// Writes a sample app release directory whose app answers from its minimal responder, which
/// costs almost nothing per request (see [`crate::sample::serve_minimal`]).
pub fn minimal_release(dir: &Path, version: &str) -> anyhow::Result<()> {
    sample_release(dir, version, false)?;
    std::fs::write(
        dir.join(crate::sample::MINIMAL),
        "answer from the minimal responder\n",
    )?;
    Ok(())
}

/// How a [`SampleServer`] differs from the demo's.
#[derive(Clone, Debug, Default)]
pub struct SampleSetup {
    /// Run the smoke test in testing.
    pub verify_testing: bool,
    /// The data plane in a local agent process (`data_plane = "agent"`).
    pub agent: bool,
    /// `server.database` (default: the SQLite file in the data dir).
    pub database: Option<String>,
    /// More config, appended to the file (a `[templates.NAME]` section, ...).
    pub extra: String,
}

/// A server on the sample app's config, in its own temporary folder, for the demo and the
/// benchmarks.
pub struct SampleServer {
    /// The temporary folder (config, data dir, release directories); deleted on drop.
    pub work: tempfile::TempDir,
    /// The config file inside it.
    pub config_path: std::path::PathBuf,
    /// A client holding the admin token.
    pub client: Client,
    server: shipgate_server::Server,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl SampleServer {
    /// Starts the server in this process on the given ports.
    pub async fn start(
        prefix: &str,
        api_port: u16,
        env_ports: [u16; 4],
        verify_testing: bool,
    ) -> anyhow::Result<Self> {
        let setup = SampleSetup {
            verify_testing,
            ..SampleSetup::default()
        };
        Self::start_with(prefix, api_port, env_ports, setup).await
    }

    /// As [`SampleServer::start`], set up as `setup` says (a local agent is stopped by
    /// [`SampleServer::stop`]).
    pub async fn start_with(
        prefix: &str,
        api_port: u16,
        env_ports: [u16; 4],
        setup: SampleSetup,
    ) -> anyhow::Result<Self> {
        let work = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("creating a temporary folder")?;
        let exe = crate::shipgate_exe()?;
        let config_path = work.path().join("shipgate.toml");
        let mut src = demo_config(&exe, api_port, env_ports, setup.verify_testing);
        if setup.agent {
            src = src.replace("data_plane = \"server\"", "data_plane = \"agent\"");
        }
        if let Some(database) = &setup.database {
            src = src.replace(
                "data_dir = \"data\"\n",
                &format!("data_dir = \"data\"\ndatabase = \"{database}\"\n"),
            );
        }
        src.push_str(&setup.extra);
        std::fs::write(&config_path, &src)?;
        let config = shipgate_core::Config::parse(&src, work.path()).map_err(|e| {
            anyhow::anyhow!(
                "the sample config is invalid:\n{}",
                e.render("shipgate.toml", &src)
            )
        })?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = shipgate_server::Server::start(Arc::new(config), async {
            let _ = stopped.await;
        })
        .await?;
        let token_file = work
            .path()
            .join("data")
            .join(shipgate_server::ADMIN_TOKEN_FILE);
        let token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("reading {}", token_file.display()))?;
        let client = Client::new(&format!("http://{}", server.addr), token.trim())?;
        Ok(Self {
            work,
            config_path,
            client,
            server,
            stop,
        })
    }

    /// The address of the API and dashboard.
    pub fn api_addr(&self) -> std::net::SocketAddr {
        self.server.addr
    }

    /// Stops the server and every instance it started (and its local agent, if it has one).
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.server.wait().await?;
        let data_dir = self.work.path().join("data");
        if shipgate_agent::local::AgentFiles::of(&data_dir)
            .pid
            .exists()
        {
            shipgate_agent::local::stop(&data_dir)
                .await
                .map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }
}

pub async fn run(exit: bool, out: Printer) -> anyhow::Result<ExitCode> {
    let ports = [
        free_port(8101)?,
        free_port(8102)?,
        free_port(8103)?,
        free_port(8104)?,
    ];
    let sample = SampleServer::start("shipgate-demo-", free_port(7300)?, ports, true).await?;
    let (work, client, config_path) = (&sample.work, &sample.client, &sample.config_path);
    let say = |line: String| {
        if !out.json() {
            println!("{line}");
        }
    };

    say(format!(
        "shipgate demo: the sample app `web` through development → testing → staging → production\n(data in {})\n",
        work.path().display()
    ));
    for (version, buggy) in [("1.0.0", false), ("1.1.0", true)] {
        let dir = work.path().join(format!("web-{version}"));
        sample_release(&dir, version, buggy)?;
        let r = crate::commands::upload(
            client,
            "web",
            version,
            &dir,
            crate::commands::Source {
                notes: Some(if buggy {
                    "adds a bug the smoke test catches".into()
                } else {
                    "first release".into()
                }),
                ..Default::default()
            },
        )
        .await?;
        say(format!("registered web@{version}  {}", r.release.digest));
    }
    say(String::new());
    for env in ["development", "testing", "staging", "production"] {
        step(client, &say, "web@1.0.0", env).await?;
    }
    say(String::new());
    step(client, &say, "web@1.1.0", "development").await?;
    step(client, &say, "web@1.1.0", "testing").await?;
    match client.promote("web@1.1.0", "staging").await {
        Err(e) => say(format!("  refused  web@1.1.0 → staging: {e}")),
        Ok(_) => anyhow::bail!("the demo expected web@1.1.0 to be refused in staging"),
    }

    let status: Vec<AppStatus> = client.get("/status", &[]).await?;
    say(format!(
        "\nwhat is live where:\n{}",
        crate::commands::render_status(&status)
    ));
    if out.json() {
        println!("{}", serde_json::to_string_pretty(&status)?);
    }
    say(format!(
        "try: curl http://127.0.0.1:{}/   (production, web@1.0.0)",
        ports[3]
    ));
    say(format!(
        "     curl http://127.0.0.1:{}/   (development, web@1.1.0 with its bug)",
        ports[0]
    ));
    if !exit {
        say(format!(
            "     shipgate -c {} history web",
            config_path.display()
        ));
        say(format!(
            "dashboard: http://{}/   (sign in with the token in {})",
            sample.api_addr(),
            work.path()
                .join("data")
                .join(shipgate_server::ADMIN_TOKEN_FILE)
                .display()
        ));
        say("\nserving until Ctrl-C".into());
        crate::commands::shutdown_signal().await;
    }
    sample.stop().await?;
    Ok(ExitCode::SUCCESS)
}

/// Promotes and waits, printing one line with the outcome and time.
async fn step(
    client: &Client,
    say: &impl Fn(String),
    release: &str,
    env: &str,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let p = client.promote(release, env).await?;
    let done = client.wait_promotion(p.id, |_| {}).await?;
    let ms = started.elapsed().as_millis();
    match done.promotion.state {
        PromotionState::Succeeded => say(format!("  ok       {release} → {env}  ({ms} ms)")),
        _ => {
            say(format!(
                "  failed   {release} → {env}  ({ms} ms): {}",
                done.promotion.reason.as_deref().unwrap_or("")
            ));
            if let Some(gate) = done.gates.iter().find(|g| !g.passed) {
                for line in gate.output.lines() {
                    say(format!("             | {line}"));
                }
            }
            say(format!("           {env} stays on what it had"));
        }
    }
    Ok(())
}
