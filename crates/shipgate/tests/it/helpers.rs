//! The real `shipgate` binary as child processes: a server in its own temp dir on free loopback
//! ports, CLI calls against it, plain HTTP to its addresses, and release folders of the fixture
//! app (`tests/fixtures/app`, a Python `http.server` script that is not shipgate's own).

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_shipgate");
pub const ENVS: [&str; 4] = ["development", "testing", "staging", "production"];
const FIXTURE_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/app");
const PATIENCE: Duration = Duration::from_secs(30);

/// The ports handed to tests of this run: the kernel may hand the same free port out twice in a
/// row, and a port handed out is not bound until its server starts.
static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// A loopback port that was free a moment ago and that no other test of this run was given.
pub fn free_port() -> u16 {
    free_range(1)
}

/// The first of `n` consecutive loopback ports that are free now and that no other test of
/// this run was given (nor one of them).
pub fn free_range(n: u16) -> u16 {
    loop {
        let first = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if first > 65_000 - n {
            continue;
        }
        let mut given = GIVEN.lock().unwrap();
        let ports = first..first + n;
        let usable = ports.clone().all(|p| {
            !given.contains(&p) && (n == 1 || TcpListener::bind(("127.0.0.1", p)).is_ok())
        });
        if usable {
            given.extend(ports);
            return first;
        }
    }
}

/// Polls `done` until it holds; panics naming `what` after 30 s.
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The status entry of `env` in a `status --output json` document (of the only app).
pub fn env_status(status: &Value, env: &str) -> Value {
    status[0]["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["env"] == env)
        .unwrap_or_else(|| panic!("no {env} in the status: {status}"))
        .clone()
}

/// The fixture app in development → testing → staging → production, with the smoke test in
/// testing; `server_extra` goes into `[server]`.
pub fn four_envs(server_extra: &str) -> String {
    four_envs_with(server_extra, &[])
}

/// [`four_envs`] with extra lines in some environments: `(environment, lines)`.
pub fn four_envs_with(server_extra: &str, extra: &[(&str, &str)]) -> String {
    let mut toml = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\ndata_dir = \"data\"\n{server_extra}\n\n[apps.web]\nrun = \"python3 server.py --port ${{PORT}}\"\nhealth = \"/healthz\"\n",
        free_port()
    );
    for (i, env) in ENVS.iter().enumerate() {
        toml.push_str(&format!(
            "\n[environments.{env}]\nlisten = \"127.0.0.1:{}\"\n",
            free_port()
        ));
        if i > 0 {
            toml.push_str(&format!("after = \"{}\"\n", ENVS[i - 1]));
        }
        if *env == "testing" {
            toml.push_str("verify.tests = [\"sh smoke.sh ${URL}\"]\n");
        }
        for (_, lines) in extra.iter().filter(|(e, _)| e == env) {
            toml.push_str(lines);
            toml.push('\n');
        }
    }
    toml
}

/// The `listen` address written in `[section]` of a config.
fn listen_of(config: &str, section: &str) -> String {
    let start = config
        .find(&format!("[{section}]"))
        .unwrap_or_else(|| panic!("no [{section}] in the config"));
    let line = config[start..]
        .lines()
        .find(|l| l.starts_with("listen = "))
        .unwrap();
    line.trim_start_matches("listen = ")
        .trim_matches('"')
        .to_owned()
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// `GET url` over a plain TCP connection (HTTP/1.0, so no chunking); None if nothing listens.
pub fn http_get(url: &str, token: Option<&str>) -> Option<Reply> {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut stream = TcpStream::connect(host).ok()?;
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n{auth}\r\n").ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let content_type = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    Some(Reply {
        status,
        content_type,
        body: body.to_owned(),
    })
}

/// Sends `request` as it is to `addr` and answers all that came back ("" if nothing listens).
pub fn raw_http(addr: &str, request: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return String::new();
    };
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let _ = stream.write_all(request.as_bytes());
    let mut raw = String::new();
    let _ = stream.read_to_string(&mut raw);
    raw
}

/// The stdout of a command that must have exited 0.
fn succeeded(out: Output, args: &[&str]) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "`shipgate {}` failed:\n{}",
        args.join(" "),
        text(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Both streams of a command that must have been refused (exit 1).
fn was_refused(out: Output, args: &[&str]) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "`shipgate {}` should have been refused:\n{}",
        args.join(" "),
        text(&out)
    );
    text(&out)
}

/// Text of a finished command, both streams, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Pid and process group of every process whose working directory is inside `dir`.
pub fn processes_in(dir: &Path) -> Vec<(i32, i32)> {
    let Ok(dir) = dir.canonicalize() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // Unreadable for processes that are gone or zombies, which hold nothing.
        let Ok(cwd) = fs::read_link(entry.path().join("cwd")) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let pgid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(2)?.parse().ok());
        if let (true, Some(pgid)) = (cwd.starts_with(&dir), pgid) {
            found.push((pid, pgid));
        }
    }
    found
}

/// SIGKILLs the process group of every process whose environment holds `marker` (`NAME=VALUE`).
pub fn kill_marked(marker: &str) {
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(environ) = fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
            let pid = Pid::from_raw(pid);
            let group = nix::unistd::getpgid(Some(pid)).unwrap_or(pid);
            let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
        }
    }
}

/// `pid: command line (in its working directory)`, for messages.
pub fn describe_process(pid: i32) -> String {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
    format!("{pid}: {} (in {})", cmdline.trim(), cwd.display())
}

/// A `shipgate server` child with its own temp dir, config and data dir (`data/`).
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    config_text: String,
    child: Option<Child>,
    /// Variables the server process is started with, beside the test's own.
    env: Vec<(String, String)>,
}

/// Root is needed to switch users and make namespaces and cgroups. Without it the test cannot
/// check anything, so it fails, unless SHIPGATE_SKIP_ROOT_TESTS=1 says to skip it.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("SHIPGATE_SKIP_ROOT_TESTS").is_some(),
        "{test} needs root (it makes users, namespaces and cgroups): run it as root, or set \
         SHIPGATE_SKIP_ROOT_TESTS=1 to skip it"
    );
    eprintln!("SKIPPED {test}: not root (SHIPGATE_SKIP_ROOT_TESTS is set)");
    false
}

/// GETs `url` back to back until `stop`; returns (answers, failures with what they were).
pub fn load(
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(usize, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut ok, mut failed) = (0, Vec::new());
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match http_get(&url, None) {
                Some(r) if r.status == 200 => ok += 1,
                Some(r) => failed.push(format!("{} {}", r.status, r.body.trim())),
                None => failed.push("no answer".to_owned()),
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (ok, failed)
    })
}

/// Stops the load of [`load`] and asserts it ran (more than 50 answers) with not one failure;
/// prints `what` with the figures. Returns how many were answered.
pub fn load_ended_without_failures(
    stop: &std::sync::atomic::AtomicBool,
    traffic: std::thread::JoinHandle<(usize, Vec<String>)>,
    what: &str,
) -> usize {
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (answered, failed) = traffic.join().unwrap();
    eprintln!("{what}: {answered} requests, {} failed", failed.len());
    assert!(failed.is_empty(), "{what}: {failed:?}");
    assert!(answered > 50, "{what}: the load ran ({answered})");
    answered
}

/// Writes `config_toml` to `<tempdir>/shipgate.toml`, starts `shipgate server -c` on it (stderr
/// to `<tempdir>/server.log`) and waits until `/healthz` answers.
pub fn spawn_server(config_toml: &str) -> TestServer {
    spawn_server_after(config_toml, |_| {})
}

/// [`spawn_server`] with variables `env` in the server's environment.
pub fn spawn_server_with_env(config_toml: &str, env: &[(&str, &str)]) -> TestServer {
    let mut server = TestServer::unstarted(config_toml);
    server.env = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    server.start();
    server
}

/// [`spawn_server`], running `before` with the temp dir (config written, server not started).
pub fn spawn_server_after(config_toml: &str, before: impl FnOnce(&Path)) -> TestServer {
    let mut server = TestServer::unstarted(config_toml);
    before(server.dir.path());
    server.start();
    server
}

/// A database of its own in the PostgreSQL cluster this test process shares (started with
/// initdb/pg_ctl on first use, stopped when the process ends); its URL.
pub fn postgres_database(prefix: &str) -> String {
    let cluster = shipgate_store::cluster::TempCluster::shared().unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(cluster.fresh_database(prefix))
        .unwrap()
}

/// [`spawn_server`] for a server that is to stand by while another leads: returns once its
/// `/healthz` says so (503, `standby: ...`).
pub fn spawn_standby(config_toml: &str) -> TestServer {
    spawn_standby_with_env(config_toml, &[])
}

/// [`spawn_standby`] with variables `env` in the server's environment.
pub fn spawn_standby_with_env(config_toml: &str, env: &[(&str, &str)]) -> TestServer {
    let mut server = TestServer::unstarted(config_toml);
    server.env = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    server.start_when(|r| r.status == 503 && r.body.starts_with("standby:"));
    server
}

impl TestServer {
    /// Its temp dir with `config_toml` written there; not started.
    fn unstarted(config_toml: &str) -> TestServer {
        let dir = tempfile::Builder::new()
            .prefix("shipgate-it-")
            .tempdir()
            .unwrap();
        let config = dir.path().join("shipgate.toml");
        fs::write(&config, config_toml).unwrap();
        TestServer {
            dir,
            config,
            config_text: config_toml.to_owned(),
            child: None,
            env: Vec::new(),
        }
    }

    fn start(&mut self) {
        self.start_until(|r| r.body.starts_with("ok\n"));
    }

    /// Starts the server and waits until `/healthz` answers 200 with a body that `ready` accepts.
    fn start_until(&mut self, ready: impl Fn(&Reply) -> bool) {
        self.start_when(|r| r.status == 200 && ready(r));
    }

    /// Whether the server process has exited, and how.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    /// Starts the server and waits until `/healthz` answers as `ready` accepts.
    fn start_when(&mut self, ready: impl Fn(&Reply) -> bool) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let child = command(self.dir.path())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(["server", "-c"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let health = format!("{}/healthz", self.api());
        let deadline = Instant::now() + PATIENCE;
        while http_get(&health, None).is_none_or(|r| !ready(&r)) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the server exited ({status}) before answering:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the server did not answer {health} within {PATIENCE:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `http://` address of the API.
    pub fn api(&self) -> String {
        format!("http://{}", listen_of(&self.config_text, "server"))
    }

    /// `http://` address of an environment.
    pub fn url(&self, env: &str) -> String {
        format!(
            "http://{}",
            listen_of(&self.config_text, &format!("environments.{env}"))
        )
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is not running").id()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// What the server wrote to stderr.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Runs `shipgate -c <config> ARGS` with `input` on its stdin.
    pub fn cli_with_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write as _;
        let mut child = command(self.dir.path())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs `shipgate -c <config> ARGS`; it finds the server and admin token by itself.
    pub fn cli(&self, args: &[&str]) -> Output {
        command(self.dir.path())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    /// The folder of the config file (relative paths of the config are taken there).
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The admin token of the server's data dir.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Creates a token; returns its secret.
    pub fn token(&self, name: &str, role: &str, envs: &[&str]) -> String {
        let mut args = vec!["token", "create", name, "--role", role];
        for env in envs {
            args.extend(["--env", env]);
        }
        self.json(&args)["token"].as_str().unwrap().to_owned()
    }

    /// Runs a command with another token than the admin's.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Output {
        self.cli(&[&["--token", token], args].concat())
    }

    /// The messages of what each promotion in progress in `env` waits on.
    pub fn waits(&self, env: &str) -> Vec<String> {
        let status = self.json(&["status", "web"]);
        env_status(&status, env)["in_progress"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["waiting_on"].as_array().unwrap().clone())
            .map(|w| w["message"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The newest promotion of web into `env`, with its gates and decisions.
    pub fn latest(&self, env: &str) -> Value {
        self.json(&["history", "web", "--env", env, "--limit", "1"])[0].clone()
    }

    /// Runs a command that must exit 0; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        succeeded(self.cli(args), args)
    }

    /// [`Self::ok`] with another token than the admin's.
    pub fn ok_as(&self, token: &str, args: &[&str]) -> String {
        succeeded(self.cli_as(token, args), args)
    }

    /// Runs a command that must exit 1; returns stdout and stderr.
    pub fn refused(&self, args: &[&str]) -> String {
        was_refused(self.cli(args), args)
    }

    /// [`Self::refused`] with another token than the admin's.
    pub fn refused_as(&self, token: &str, args: &[&str]) -> String {
        was_refused(self.cli_as(token, args), args)
    }

    /// Runs a command with `--output json` that must exit 0; returns its document.
    /// The messages of the audit events of `kind`, oldest first.
    pub fn messages_of(&self, kind: &str) -> Vec<String> {
        self.json(&["audit", "--limit", "1000"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == kind)
            .map(|e| e["message"].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(&[args, &["--output", "json"]].concat());
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    /// GET on a URL (an environment address, usually).
    pub fn get(&self, url: &str) -> Option<Reply> {
        http_get(url, None)
    }

    /// The version an environment's address serves, or None if it does not answer 200.
    pub fn version(&self, env: &str) -> Option<String> {
        self.get(&format!("{}/version", self.url(env)))
            .filter(|r| r.status == 200)
            .map(|r| r.body.trim().to_owned())
    }

    /// The data folder (`${DATA_DIR}`) of web in `env`: the one folder its instances and the
    /// test both see, sandboxed or not.
    pub fn app_data(&self, env: &str) -> PathBuf {
        self.data_dir().join("data").join(env).join("web")
    }

    /// A release folder of the fixture app with its VERSION and `extra` files (BUG, SLOW, ...).
    pub fn app_release(&self, version: &str, extra: &[(&str, &str)]) -> PathBuf {
        let names: String = extra.iter().map(|(name, _)| format!("-{name}")).collect();
        let dir = self
            .dir
            .path()
            .join("src")
            .join(format!("{version}{names}"));
        fs::create_dir_all(&dir).unwrap();
        for file in ["server.py", "smoke.sh"] {
            fs::copy(Path::new(FIXTURE_APP).join(file), dir.join(file)).unwrap();
        }
        fs::write(dir.join("VERSION"), format!("{version}\n")).unwrap();
        for (name, content) in extra {
            fs::write(dir.join(name), content).unwrap();
        }
        dir
    }

    /// Registers a fixture app release; returns its digest.
    pub fn register(&self, version: &str, extra: &[(&str, &str)]) -> String {
        let dir = self.app_release(version, extra);
        self.register_dir(version, &dir)["release"]["digest"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Registers the folder `dir` as web@version; returns the answer.
    pub fn register_dir(&self, version: &str, dir: &Path) -> Value {
        self.json(&[
            "release",
            "create",
            "web",
            "--version",
            version,
            "--artifact",
            dir.to_str().unwrap(),
        ])
    }

    /// Registers a fixture app release with a commit (`c` and the version's digits), notes
    /// (`notes of VERSION`) and the commit's time.
    pub fn register_noted(&self, version: &str, commit_time: &str) {
        let dir = self.app_release(version, &[]);
        self.ok(&[
            "release",
            "create",
            "web",
            "--version",
            version,
            "--artifact",
            dir.to_str().unwrap(),
            "--commit",
            &format!("c{}", version.replace('.', "")),
            "--notes",
            &format!("notes of {version}"),
            "--commit-time",
            commit_time,
        ]);
    }

    /// Promotes `web@version` into `env` and waits until it succeeded.
    pub fn deploy(&self, version: &str, env: &str) {
        self.ok(&["promote", &format!("web@{version}"), "--to", env, "--wait"]);
    }

    /// Promotes `web@version` with `--wait` through every environment up to `last`.
    pub fn walk(&self, version: &str, last: &str) {
        let release = format!("web@{version}");
        for env in ENVS {
            self.ok(&["promote", &release, "--to", env, "--wait"]);
            if env == last {
                return;
            }
        }
        panic!("no environment {last}");
    }

    /// Replaces the config file (the server reads it at its next start).
    pub fn rewrite_config(&mut self, text: &str) {
        fs::write(&self.config, text).unwrap();
        self.config_text = text.to_owned();
    }

    /// The text of the config file.
    pub fn config_text(&self) -> &str {
        &self.config_text
    }

    /// The pid of the data dir's local agent, while one runs.
    pub fn agent_pid(&self) -> Option<i32> {
        let pid: i32 = fs::read_to_string(self.data_dir().join("agent.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    /// Processes of app instances (and tests) running from an unpacked release.
    pub fn instance_processes(&self) -> Vec<(i32, i32)> {
        processes_in(&self.data_dir().join("releases"))
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("the server is not running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts the server again on the same config and data dir, and waits until every live
    /// release has been started again.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        self.start();
    }

    /// Like [`Self::restart`], but returns as soon as the API answers.
    pub fn restart_answering(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        self.start_until(|_| true);
    }

    /// Whether `/healthz` says live releases are still being started again.
    pub fn restoring(&self) -> bool {
        http_get(&format!("{}/healthz", self.api()), None)
            .is_some_and(|r| r.body.contains("restoring"))
    }

    /// SIGTERM, then waits for the exit (SIGKILL after 60 s).
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the server is not running");
        kill(
            Pid::from_raw(i32::try_from(child.id()).unwrap()),
            Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + 2 * PATIENCE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "the server did not stop within 60 s of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(
                Pid::from_raw(i32::try_from(child.id()).unwrap_or(0)),
                Signal::SIGTERM,
            );
            let deadline = Instant::now() + 2 * PATIENCE;
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // A local agent outlives the server by design: stop it (it stops its instances).
        if let Some(pid) = self.agent_pid() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let deadline = Instant::now() + 2 * PATIENCE;
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        // A safety net, so a test that failed (or found a leak) leaves no process behind.
        for (pid, _) in self.instance_processes() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        // Releases are unpacked read-only; without write access the temp dir stays behind.
        make_dirs_writable(&self.data_dir().join("releases"));
    }
}

fn make_dirs_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            make_dirs_writable(&entry.path());
        }
    }
}

/// `shipgate` in `dir`, without the caller's SHIPGATE_* settings.
pub fn command(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir)
        .env_remove("SHIPGATE_SERVER")
        .env_remove("SHIPGATE_TOKEN")
        .env_remove("SHIPGATE_CONFIG")
        .env_remove("RUST_LOG");
    c
}

/// Runs a Python 3 script (not shipgate's code, to check its work from outside); its output.
/// A Python in a venv under target/`name` with `packages` installed from PyPI (once: the
/// venv stays for later runs).
pub fn python_venv(name: &str, packages: &[&str]) -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target")
        .join(name);
    let python = venv.join("bin/python");
    let done = venv.join(".installed");
    if !done.exists() {
        let made = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", text(&made));
        let pip = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(packages)
            .output()
            .unwrap();
        assert!(pip.status.success(), "pip install: {}", text(&pip));
        fs::write(&done, packages.join("\n")).unwrap();
    }
    python
}

pub fn python(script: &str) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
