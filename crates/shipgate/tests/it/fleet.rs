//! One environment on three hosts. Each host is a network namespace the test makes (netns.rs)
//! running its own `shipgate agent`, joined with a token from `shipgate host add` and talking
//! mutual TLS to the server, which runs in the root namespace. Load goes to every host's address
//! over the bridge.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{
    BIN, TestServer, env_status, free_port, http_get, load, root_or_skip, spawn_server, text,
    wait_for,
};
use crate::netns::Hosts;

/// The agents of the hosts, stopped (with their instances) when dropped.
pub(crate) struct Agents<'a> {
    hosts: &'a Hosts,
    server: String,
    pub(crate) dirs: Vec<PathBuf>,
    running: Vec<Option<Child>>,
    /// Whether each agent runs as on a machine of its own ([`Hosts::command_as_machine`]).
    machines: bool,
}

impl<'a> Agents<'a> {
    /// Adds `web-1` … `web-N` and joins an agent on each host.
    fn join(hosts: &'a Hosts, s: &TestServer) -> Agents<'a> {
        Self::join_servers(hosts, s, &s.api())
    }

    /// [`Agents::join`] through `s`, with agents that know every server of `servers` (one API
    /// address or several, comma-separated) and dial whichever leads.
    pub(crate) fn join_servers(hosts: &'a Hosts, s: &TestServer, servers: &str) -> Agents<'a> {
        Self::join_with(hosts, s, servers, false)
    }

    /// [`Agents::join`] with each agent run as on a machine of its own (a `/run/runc` of its
    /// own, and the machine's cgroups): what image instances need.
    pub(crate) fn join_machines(hosts: &'a Hosts, s: &TestServer) -> Agents<'a> {
        Self::join_with(hosts, s, &s.api(), true)
    }

    fn join_with(hosts: &'a Hosts, s: &TestServer, servers: &str, machines: bool) -> Agents<'a> {
        let mut agents = Agents {
            hosts,
            server: servers.to_owned(),
            dirs: Vec::new(),
            running: Vec::new(),
            machines,
        };
        for n in 1..=hosts.hosts.len() {
            hosts.assert_routed_from(n, &hosts.root_addr);
            let added = s.json(&["host", "add", &format!("web-{n}")]);
            let token = added["token"].as_str().expect("a join token").to_owned();
            let ca = added["ca_fingerprint"]
                .as_str()
                .expect("the CA's")
                .to_owned();
            let dir = s.dir.path().join(format!("host-{n}"));
            agents.dirs.push(dir.clone());
            let child = agents.spawn(
                n,
                &[
                    "--server",
                    &agents.server,
                    "--join",
                    &token,
                    "--name",
                    &format!("web-{n}"),
                    "--ca-fingerprint",
                    &ca,
                ],
            );
            agents.running.push(Some(child));
        }
        agents.wait_connected(s, &(1..=hosts.hosts.len()).collect::<Vec<_>>());
        agents
    }

    fn spawn(&self, n: usize, extra: &[&str]) -> Child {
        let dir = &self.dirs[n - 1];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("log"))
            .unwrap();
        let mut command = if self.machines {
            self.hosts.command_as_machine(n, Path::new(BIN))
        } else {
            self.hosts.command_in(n, Path::new(BIN))
        };
        command
            .arg("agent")
            .arg("--data-dir")
            .arg(dir)
            .args(extra)
            .env_remove("SHIPGATE_SERVER")
            .env_remove("SHIPGATE_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    pub(crate) fn wait_connected(&self, s: &TestServer, which: &[usize]) {
        wait_for("the hosts' agents to connect", || {
            let list = s.json(&["host", "list"]);
            which.iter().all(|n| host(&list, *n)["connected"] == true)
        });
    }

    fn kill9(&mut self, n: usize) {
        let mut child = self.running[n - 1]
            .take()
            .expect("that agent is not running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts host `n`'s agent again from its data dir (its certificate is kept there), as
    /// its join command without the token.
    fn restart(&mut self, n: usize) {
        assert!(self.running[n - 1].is_none());
        let (server, name) = (self.server.clone(), format!("web-{n}"));
        self.running[n - 1] = Some(self.spawn(n, &["--server", &server, "--name", &name]));
    }

    /// What host `n`'s agent says when started with `extra`, and it exits.
    fn refused(&self, n: usize, extra: &[&str]) -> String {
        let out = self.spawn(n, extra).wait_with_output().unwrap();
        assert!(!out.status.success());
        self.log(n)
    }

    fn log(&self, n: usize) -> String {
        std::fs::read_to_string(self.dirs[n - 1].with_extension("log")).unwrap_or_default()
    }
}

impl Drop for Agents<'_> {
    fn drop(&mut self) {
        for (n, child) in self.running.iter_mut().enumerate() {
            if let Some(child) = child {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
                let _ = child.wait();
            }
            // Instances a killed agent left behind (they carry its data dir as a marker).
            crate::helpers::kill_marked(&format!("SHIPGATE_AGENT={}", self.dirs[n].display()));
        }
    }
}

/// Host `n` (web-N) in `host list`.
pub(crate) fn host(list: &Value, n: usize) -> Value {
    let name = format!("web-{n}");
    list.as_array()
        .and_then(|l| l.iter().find(|h| h["name"] == name.as_str()))
        .cloned()
        .unwrap_or(Value::Null)
}

/// `count` test hosts and the port their environment listens on, or None (said why) when not
/// root.
fn make_hosts(count: usize) -> Option<(Hosts, u16)> {
    if !root_or_skip("fleet") {
        return None;
    }
    Some((Hosts::make(count), free_port()))
}

fn config(hosts: &Hosts, port: u16, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"{}:{}\"\ndata_dir = \"data\"\n\n[apps.web]\nrun = \"python3 server.py --port ${{PORT}}\"\nhealth = \"/healthz\"\n\n[environments.production]\nlisten = \"0.0.0.0:{port}\"\nhosts = [\"web-1\", \"web-2\", \"web-3\"]\nstandby = \"1h\"\n{extra}\n",
        hosts.root_addr,
        free_port()
    )
}

/// `http://FRONT/version`, once the front answers.
fn answering_front(front: &str) -> String {
    let url = format!("http://{front}/version");
    wait_for("the front to answer", || {
        http_get(&url, None).is_some_and(|r| r.status == 200)
    });
    url
}

/// `http://HOST:PORT/version` of every host.
fn urls(hosts: &Hosts, port: u16) -> Vec<String> {
    hosts
        .hosts
        .iter()
        .map(|(_, addr)| {
            hosts.assert_routed(addr);
            format!("http://{addr}:{port}/version")
        })
        .collect()
}

fn versions(urls: &[String]) -> Vec<Option<String>> {
    urls.iter()
        .map(|u| http_get(u, None).map(|r| r.body.trim().to_owned()))
        .collect()
}

/// The pid of the live instance on each host, from `status`.
fn host_pids(s: &TestServer) -> Vec<Value> {
    let live = env_status(&s.json(&["status", "web"]), "production");
    let mut pids: Vec<(String, Value)> = live["instance"]["hosts"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|h| {
            (
                h["host"].as_str().unwrap_or("").to_owned(),
                h["pid"].clone(),
            )
        })
        .collect();
    pids.sort_by(|a, b| a.0.cmp(&b.0));
    pids.into_iter().map(|(_, p)| p).collect()
}

#[test]
fn three_hosts_switch_as_one_through_ten_cycles_and_a_server_kill_9_under_load() {
    let Some((hosts, port)) = make_hosts(3) else {
        return;
    };
    let front = format!("{}:{}", hosts.root_addr, free_port());
    let mut s = spawn_server(&config(&hosts, port, &format!("front = \"{front}\"")));
    let agents = Agents::join(&hosts, &s);
    let list = s.json(&["host", "list"]);
    for n in 1..=3 {
        assert_eq!(host(&list, n)["data_plane"], "agent", "{list}");
        assert_eq!(
            host(&list, n)["address"],
            hosts.hosts[n - 1].1.as_str(),
            "{list}"
        );
    }
    let table = s.ok(&["host", "list"]);
    assert!(
        table.contains("web-3") && table.contains("connected since"),
        "{table}"
    );

    for v in 0..=10 {
        s.register(&format!("1.0.{v}"), &[]);
    }
    s.ok(&["promote", "web@1.0.0", "--to", "production", "--wait"]);
    let urls = urls(&hosts, port);
    assert_eq!(versions(&urls), vec![Some("1.0.0".to_owned()); 3]);
    let live = env_status(&s.json(&["status", "web"]), "production");
    assert_eq!(
        live["instance"]["hosts"].as_array().map(Vec::len),
        Some(3),
        "status shows the instance on each host: {live}"
    );
    let table = s.ok(&["status", "web"]);
    assert!(
        table.contains("hosts:") && table.contains("web-2 pid") && table.contains("healthy"),
        "{table}"
    );
    // Keys, certificates and what hosts run (their variables included) are the owner's only.
    use std::os::unix::fs::PermissionsExt;
    for file in [
        s.data_dir().join("ca.key"),
        s.data_dir().join("placement.json"),
        s.data_dir().join("agent.port"),
        agents.dirs[0].join("host.key"),
        agents.dirs[0].join("host.crt"),
    ] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    let admin = std::fs::read_to_string(s.data_dir().join("admin.token")).unwrap();
    let cookie = crate::dashboard::sign_in(&s, admin.trim());
    let (code, _, page) = crate::dashboard::raw(
        &s,
        "GET",
        "/apps/web/environments/production",
        &[("Cookie", cookie.as_str())],
        "",
    );
    assert_eq!(code, 200, "{page}");
    for n in 1..=3 {
        assert!(page.contains(&format!("<li>web-{n}: pid ")), "{page}");
    }
    assert!(
        page.contains("fixture app 1.0.0 listening"),
        "the host's log: {page}"
    );
    let history = s.latest("production");
    let deploy = history["gates"][0]["output"].as_str().unwrap_or_default();
    assert!(
        deploy.contains("healthy on every host") && deploy.contains("web-3: pid"),
        "{history}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    // Every host's address, and the front that spreads over them.
    let front_url = answering_front(&front);
    let traffic: Vec<_> = urls
        .iter()
        .chain(std::iter::once(&front_url))
        .map(|u| load(u.clone(), Arc::clone(&stop)))
        .collect();
    let promote = |version: &str| {
        let release = format!("web@{version}");
        s.ok(&["promote", &release, "--to", "production", "--wait"]);
    };
    for v in 1..=10 {
        let version = format!("1.0.{v}");
        promote(&version);
        assert_eq!(versions(&urls), vec![Some(version.clone()); 3], "cycle {v}");
        s.ok(&["rollback", "web", "--env", "production", "--wait"]);
        let back = format!("1.0.{}", v - 1);
        assert_eq!(
            versions(&urls),
            vec![Some(back); 3],
            "cycle {v} rolled back"
        );
        // The next cycle promotes from the same place.
        promote(&version);
    }
    let before = host_pids(&s);
    assert_eq!(before.len(), 3, "{before:?}");
    s.kill9();
    thread::sleep(Duration::from_millis(500));
    assert_eq!(versions(&urls), vec![Some("1.0.10".to_owned()); 3]);
    s.restart();
    agents.wait_connected(&s, &[1, 2, 3]);
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for (n, t) in traffic.into_iter().enumerate() {
        let (answered, failed) = t.join().unwrap();
        let via = if n < 3 {
            format!("host web-{}", n + 1)
        } else {
            "the front".to_owned()
        };
        eprintln!(
            "fleet: {via}: {answered} requests through 10 promote/rollback cycles and a server kill -9, {} failed",
            failed.len()
        );
        assert!(failed.is_empty(), "{via}: {failed:?}");
        assert!(answered > 50, "{via}: {answered}");
        total += answered;
    }
    eprintln!("fleet: {total} requests on 3 hosts and their front, 0 failed");
    assert_eq!(
        host_pids(&s),
        before,
        "no instance was restarted: {}\n{}",
        s.ok(&["status", "web"]),
        s.log()
    );
    // The standbys are still there: a rollback is a switch on every host.
    s.ok(&["rollback", "web", "--env", "production", "--wait"]);
    let rollback = s.latest("production");
    let gate = rollback["gates"][0]["output"].as_str().unwrap_or_default();
    assert!(
        gate.starts_with("switched traffic back to standby instance"),
        "{rollback}"
    );
    assert_eq!(versions(&urls), vec![Some("1.0.9".to_owned()); 3]);
    drop(agents);
}

#[test]
fn an_agent_killed_mid_promotion_fails_it_naming_the_host_and_comes_back_to_the_live_release() {
    let Some((hosts, port)) = make_hosts(3) else {
        return;
    };
    // Unisolated, so the held start (SLOW) can wait on a file in the test's own folder.
    let s = spawn_server(&config(&hosts, port, "isolation = \"none\""));
    let mut agents = Agents::join(&hosts, &s);
    s.register("1.0.0", &[]);
    s.ok(&["promote", "web@1.0.0", "--to", "production", "--wait"]);
    let urls = urls(&hosts, port);
    assert_eq!(versions(&urls), vec![Some("1.0.0".to_owned()); 3]);

    let gate = s.dir.path().join("go");
    let digest = s.register("2.0.0", &[("SLOW", gate.to_str().unwrap())]);
    let hex = digest.trim_start_matches("sha256:").to_owned();
    let dirs = agents.dirs.clone();
    let running_new =
        |n: usize| crate::helpers::processes_in(&dirs[n - 1].join("releases").join(&hex)).len();
    s.ok(&["promote", "web@2.0.0", "--to", "production"]);
    wait_for("2.0.0 to be starting on every host", || {
        (1..=3).all(|n| running_new(n) > 0)
    });
    agents.kill9(2);
    for _ in 0..300 {
        if s.latest("production")["state"] == "failed" {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        s.latest("production")["state"],
        "failed",
        "{}\n{}",
        s.latest("production"),
        s.log()
    );
    let failed = s.latest("production");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("web-2"),
        "the failure names the host: {failed}"
    );
    std::fs::write(&gate, "").unwrap();
    // Nothing switched: the other hosts serve 1.0.0, with no 2.0.0 left running.
    let [one, _, three] = [0, 1, 2].map(|i| urls[i].clone());
    assert_eq!(versions(&[one, three]), vec![Some("1.0.0".to_owned()); 2]);
    for n in [1, 3] {
        wait_for("the new instances to be stopped", || running_new(n) == 0);
    }
    // Unreachable within 10 s, and a promotion now fails naming it.
    let mut seen = None;
    for _ in 0..100 {
        let list = s.json(&["host", "list"]);
        if host(&list, 2)["connected"] == false {
            seen = Some(list);
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let list = seen.expect("web-2 shows as unreachable within 10 s");
    eprintln!("fleet: {}", host(&list, 2));
    let table = s.ok(&["host", "list"]);
    assert!(table.contains("UNREACHABLE since"), "{table}");
    s.register("2.0.1", &[]);
    let refused = s.cli(&["promote", "web@2.0.1", "--to", "production", "--wait"]);
    let said = text(&refused);
    assert!(said.contains("web-2"), "{said}");

    // Started again as it joined, but naming another host or server: refused, saying why.
    let wrong_name = agents.refused(2, &["--server", &s.api(), "--name", "web-9"]);
    assert!(
        wrong_name.contains("joined as host web-2, not web-9: start it with --name web-2"),
        "{wrong_name}"
    );
    let wrong_server = agents.refused(2, &["--server", "http://127.0.0.1:1", "--name", "web-2"]);
    assert!(
        wrong_server.contains(&format!(
            "host web-2 joined {}, not http://127.0.0.1:1",
            s.api()
        )),
        "{wrong_server}"
    );
    // The restarted agent reuses its certificate and is given the live release again.
    agents.restart(2);
    agents.wait_connected(&s, &[2]);
    wait_for("web-2 to serve 1.0.0 again", || {
        versions(&urls[1..2]) == vec![Some("1.0.0".to_owned())]
    });
    assert!(
        agents.log(2).contains("connected to the server"),
        "{}",
        agents.log(2)
    );
    s.ok(&["promote", "web@2.0.1", "--to", "production", "--wait"]);
    assert_eq!(versions(&urls), vec![Some("2.0.1".to_owned()); 3]);
    // Its log is read on the host, with a cursor.
    let log = s.ok(&["logs", "web", "--env", "production", "--host", "web-2"]);
    assert!(log.contains("fixture app 2.0.1 listening"), "{log}");

    // A removed host's certificate no longer gets in.
    s.ok(&["host", "remove", "web-3"]);
    thread::sleep(Duration::from_secs(3));
    let list = s.json(&["host", "list"]);
    assert_eq!(host(&list, 3), Value::Null, "{list}");
    let refused = s.cli(&["promote", "web@1.0.0", "--to", "production", "--wait"]);
    assert!(text(&refused).contains("web-3"), "{}", text(&refused));
    drop(agents);
}

/// Debian's sshd in a test host, on a config, keys and port of the test's own.
struct Sshd {
    child: Child,
    dir: PathBuf,
}

impl Sshd {
    fn start(hosts: &Hosts, n: usize, dir: &Path) -> Sshd {
        let (_, addr) = &hosts.hosts[n - 1];
        std::fs::create_dir_all(dir).unwrap();
        let keygen = |file: &str| {
            let out = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(file))
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", text(&out));
        };
        keygen("host_key");
        keygen("id");
        std::fs::copy(dir.join("id.pub"), dir.join("authorized_keys")).unwrap();
        // sshd's privilege separation folder.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let config = format!(
            "Port 2222\nListenAddress {addr}\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nSubsystem sftp /usr/lib/openssh/sftp-server\nPidFile {d}/sshd.pid\n",
            d = dir.display()
        );
        std::fs::write(dir.join("sshd_config"), config).unwrap();
        let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
        let child = hosts
            .command_in(n, Path::new("/usr/sbin/sshd"))
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        hosts.assert_routed(addr);
        wait_for("sshd to listen", || {
            std::net::TcpStream::connect((addr.as_str(), 2222)).is_ok()
        });
        Sshd {
            child,
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn host_install_puts_an_agent_on_a_machine_over_ssh() {
    let Some((hosts, port)) = make_hosts(1) else {
        return;
    };
    assert!(
        Path::new("/usr/sbin/sshd").exists(),
        "the install test needs Debian's openssh-server (scripts/test installs it)"
    );
    let s = spawn_server(&config(&hosts, port, "").replace(
        "hosts = [\"web-1\", \"web-2\", \"web-3\"]",
        "hosts = [\"web-1\"]",
    ));
    let sshd = Sshd::start(&hosts, 1, &s.dir.path().join("ssh"));
    let (_, addr) = hosts.hosts[0].clone();
    let remote = s.dir.path().join("remote");
    let known = format!(
        "UserKnownHostsFile={}",
        sshd.dir.join("known_hosts").display()
    );
    let install_into = |name: &str, key: &str, remote: &Path| {
        s.cli(&[
            "host",
            "install",
            name,
            "--ssh",
            &format!("root@{addr}"),
            "--port",
            "2222",
            "--identity",
            sshd.dir.join(key).to_str().unwrap(),
            "--dir",
            remote.to_str().unwrap(),
            "--ssh-option",
            &known,
        ])
    };
    let install = |name: &str, key: &str| install_into(name, key, &remote);
    // A key the machine does not accept: refused before anything is added.
    let wrong = sshd.dir.join("wrong");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&wrong)
        .output()
        .unwrap();
    assert!(out.status.success());
    let refused = install("web-1", "wrong");
    assert_ne!(refused.status.code(), Some(0), "{}", text(&refused));
    assert!(
        text(&refused).contains("checking the machine"),
        "{}",
        text(&refused)
    );
    assert_eq!(host(&s.json(&["host", "list"]), 1), Value::Null);

    let done = install("web-1", "id");
    assert_eq!(done.status.code(), Some(0), "{}", text(&done));
    let said = text(&done);
    assert!(
        said.contains("installed") && said.contains("connected"),
        "{said}"
    );
    assert!(remote.join("start.sh").exists() && remote.join("bin/shipgate").exists());
    let script = std::fs::read_to_string(remote.join("start.sh")).unwrap();
    assert!(
        !script.contains("--join"),
        "the token is not kept: {script}"
    );
    let list = s.json(&["host", "list"]);
    assert_eq!(host(&list, 1)["connected"], true, "{list}");

    s.register("1.0.0", &[]);
    s.ok(&["promote", "web@1.0.0", "--to", "production", "--wait"]);
    assert_eq!(
        versions(&urls(&hosts, port)),
        vec![Some("1.0.0".to_owned())]
    );
    let pid: i32 = std::fs::read_to_string(remote.join("data/agent.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
    wait_for("the installed agent to stop", || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    crate::helpers::kill_marked(&format!("SHIPGATE_AGENT={}", remote.join("data").display()));

    // A host no environment names yet installs and connects too (the config comes after).
    let spare = s.dir.path().join("spare");
    let done = install_into("spare", "id", &spare);
    assert_eq!(done.status.code(), Some(0), "{}", text(&done));
    let list = s.json(&["host", "list"]);
    let row = list
        .as_array()
        .and_then(|l| l.iter().find(|h| h["name"] == "spare"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(row["connected"], true, "{list}");
    assert!(row["version"].is_string(), "{list}");
    let stopped = std::process::Command::new(BIN)
        .args(["agent", "--stop", "--data-dir"])
        .arg(spare.join("data"))
        .output()
        .unwrap();
    assert_eq!(stopped.status.code(), Some(0), "{}", text(&stopped));
}

#[test]
fn a_host_cut_off_is_unreachable_within_10_s_and_given_the_live_release_when_it_returns() {
    let Some((hosts, port)) = make_hosts(3) else {
        return;
    };
    let front = format!("{}:{}", hosts.root_addr, free_port());
    let text_of = |extra: &str| {
        config(
            &hosts,
            port,
            &format!("isolation = \"none\"\nfront = \"{front}\"\n{extra}"),
        )
    };
    let mut s = spawn_server(&text_of(""));
    let agents = Agents::join(&hosts, &s);
    s.register("1.0.0", &[]);
    s.register("2.0.0", &[]);
    s.ok(&["promote", "web@1.0.0", "--to", "production", "--wait"]);
    let urls = urls(&hosts, port);
    let front_url = answering_front(&front);

    // The load starts once web-3 is seen gone: a request already in flight to a host whose cable
    // is pulled waits for the cable (the front forwards connections), which is not what this
    // measures. What it measures: every request while web-3 is away and after it is back.
    hosts.set_link(3, false);
    let cut = std::time::Instant::now();
    wait_for("web-3 to show as unreachable", || {
        host(&s.json(&["host", "list"]), 3)["connected"] == false
    });
    let noticed = cut.elapsed();
    eprintln!("fleet: web-3 cut off; unreachable in `host list` after {noticed:?}");
    assert!(noticed < Duration::from_secs(10), "{noticed:?}");
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(front_url.clone(), Arc::clone(&stop));
    // All three are required: refused, naming the host.
    let refused = s.cli(&["promote", "web@2.0.0", "--to", "production", "--wait"]);
    let said = text(&refused);
    assert!(
        said.contains("web-3") && said.contains("hosts_required"),
        "{said}"
    );
    // Two of three may do: the config says so, and the server is restarted on it.
    s.rewrite_config(&text_of("hosts_required = 2"));
    assert!(s.terminate().success());
    s.restart();
    s.ok(&["promote", "web@2.0.0", "--to", "production", "--wait"]);
    assert_eq!(
        versions(&urls[..2]),
        vec![Some("2.0.0".to_owned()); 2],
        "web-1 and web-2 switched"
    );
    // Back on the network: brought to 2.0.0 before it is spread over again.
    hosts.set_link(3, true);
    agents.wait_connected(&s, &[3]);
    wait_for("web-3 to serve 2.0.0", || {
        versions(&urls[2..]) == vec![Some("2.0.0".to_owned())]
    });
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let (answered, failed) = traffic.join().unwrap();
    eprintln!(
        "fleet: {answered} requests through the front while web-3 was cut off and came back, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(answered > 50, "{answered}");
    drop(agents);
}

#[test]
fn rollout_batch_starts_the_hosts_one_batch_after_the_other() {
    let Some((hosts, port)) = make_hosts(3) else {
        return;
    };
    let s = spawn_server(&config(
        &hosts,
        port,
        "isolation = \"none\"\nrollout = { batch = 2 }",
    ));
    let agents = Agents::join(&hosts, &s);
    let gate = s.dir.path().join("go");
    let digest = s.register("1.0.0", &[("SLOW", gate.to_str().unwrap())]);
    let hex = digest.trim_start_matches("sha256:").to_owned();
    let dirs = agents.dirs.clone();
    let starting = |n: usize| {
        !crate::helpers::processes_in(&dirs[n - 1].join("releases").join(&hex)).is_empty()
    };
    s.ok(&["promote", "web@1.0.0", "--to", "production"]);
    wait_for("the first batch to start", || starting(1) && starting(2));
    // Held in its health wait: the second batch has not started.
    thread::sleep(Duration::from_millis(1500));
    assert!(!starting(3), "web-3 waits for the first batch");
    std::fs::write(&gate, "").unwrap();
    wait_for("the promotion to succeed", || {
        s.latest("production")["state"] == "succeeded"
    });
    assert_eq!(
        versions(&urls(&hosts, port)),
        vec![Some("1.0.0".to_owned()); 3]
    );
    drop(agents);
}

#[test]
fn a_join_that_is_sent_another_ca_is_refused_and_saves_nothing() {
    let Some((hosts, port)) = make_hosts(1) else {
        return;
    };
    let s = spawn_server(&config(&hosts, port, "").replace(
        "hosts = [\"web-1\", \"web-2\", \"web-3\"]",
        "hosts = [\"web-1\"]",
    ));
    hosts.assert_routed_from(1, &hosts.root_addr);
    let added = s.json(&["host", "add", "web-1"]);
    let printed = s.ok(&["host", "remove", "web-1"]);
    assert!(printed.contains("removed"), "{printed}");
    let added_again = s.ok(&["host", "add", "web-1"]);
    assert!(
        added_again.contains("--ca-fingerprint") && added_again.contains("--join sg_"),
        "{added_again}"
    );
    let token = added_again
        .split("--join ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap()
        .to_owned();
    let dir = s.dir.path().join("host-1");
    let out = hosts
        .command_in(1, Path::new(BIN))
        .args([
            "agent",
            "--server",
            &s.api(),
            "--join",
            &token,
            "--name",
            "web-1",
        ])
        .args(["--ca-fingerprint", &"0".repeat(64), "--data-dir"])
        .arg(&dir)
        .env_remove("SHIPGATE_SERVER")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("nothing was saved"), "{said}");
    assert!(!dir.join("host.json").exists() && !dir.join("host.key").exists());
    // The fingerprint the server gave is the one of the CA it hands out.
    assert_eq!(
        added["ca_fingerprint"].as_str().map(str::len),
        Some(64),
        "{added}"
    );
}

#[test]
fn an_on_demand_environment_runs_on_the_hosts_of_the_one_it_copies_and_leaves_nothing_there() {
    let Some((hosts, port)) = make_hosts(3) else {
        return;
    };
    let first = free_port();
    let template = format!(
        "isolation = \"none\"\n\n[templates.preview]\nfrom = \"production\"\nmax = 2\nlisten_range = \"0.0.0.0:{first}-{}\"\n",
        first + 1
    );
    let s = spawn_server(&config(&hosts, port, &template));
    let agents = Agents::join(&hosts, &s);
    s.register("1.0.0", &[]);
    let made = s.json(&[
        "env",
        "create",
        "pr-1",
        "--template",
        "preview",
        "--release",
        "web@1.0.0",
    ]);
    assert_eq!(made["state"], "ready", "{made}");
    let preview = urls(&hosts, first);
    assert_eq!(
        versions(&preview),
        vec![Some("1.0.0".to_owned()); 3],
        "on every host"
    );
    for answer in versions(&urls(&hosts, port)) {
        assert!(
            answer.unwrap_or_default().contains("no live release"),
            "production untouched"
        );
    }
    s.ok(&["env", "delete", "pr-1"]);
    wait_for("the hosts to stop serving pr-1", || {
        versions(&preview).iter().all(Option::is_none)
    });
    for dir in &agents.dirs {
        let left: Vec<_> = crate::helpers::processes_in(&dir.join("releases"));
        assert!(left.is_empty(), "instances left on a host: {left:?}");
    }
    drop(agents);
}

/// The attacker suite across hosts: staging on web-1, production on web-2, production's
/// instance listening on every address of its host. From inside staging's instance on web-1,
/// production's instance on web-2 is out of reach (only its router is reached from other
/// machines); from the test's own namespace too.
#[test]
fn a_staging_instance_on_one_host_cannot_reach_production_instances_on_another() {
    let Some((hosts, staging_port)) = make_hosts(2) else {
        return;
    };
    let production_port = free_port();
    let s = spawn_server(&format!(
        "[server]\nlisten = \"{}:{}\"\ndata_dir = \"data\"\n\n\
         [apps.web]\nrun = \"python3 server.py --port ${{PORT}}\"\nhealth = \"/healthz\"\n\n\
         [environments.staging]\nlisten = \"0.0.0.0:{staging_port}\"\nhosts = [\"web-1\"]\n\n\
         [environments.production]\nafter = \"staging\"\nlisten = \"0.0.0.0:{production_port}\"\n\
         hosts = [\"web-2\"]\nvars.BIND = \"0.0.0.0\"\n",
        hosts.root_addr,
        free_port()
    ));
    let _agents = Agents::join(&hosts, &s);
    let src = s.dir.path().join("probe");
    std::fs::create_dir_all(&src).unwrap();
    let probe_app = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/probe");
    for file in ["server.py", "connect.py"] {
        std::fs::copy(Path::new(probe_app).join(file), src.join(file)).unwrap();
    }
    s.register_dir("1.0.0", &src);
    s.ok(&["promote", "web@1.0.0", "--to", "staging", "--wait"]);
    s.ok(&["promote", "web@1.0.0", "--to", "production", "--wait"]);

    let (host1, host2) = (&hosts.hosts[0].1, &hosts.hosts[1].1);
    hosts.assert_routed(host1);
    hosts.assert_routed(host2);
    let production = env_status(&s.json(&["status", "web"]), "production");
    let instance_port = production["instance"]["hosts"][0]["port"].as_u64().unwrap();
    let instance = format!("{host2}:{instance_port}");

    // Production's router on web-2 answers other machines; its instance does not.
    let router = http_get(&format!("http://{host2}:{production_port}/healthz"), None);
    assert_eq!(router.map(|r| r.status), Some(200));
    assert!(
        std::net::TcpStream::connect_timeout(&instance.parse().unwrap(), Duration::from_secs(2))
            .is_err(),
        "production's instance answered the root namespace at {instance}"
    );
    // From inside staging's instance on web-1: refused, while its own router answers.
    let probe = |addr: &str| {
        http_get(
            &format!("http://{host1}:{staging_port}/connect?addr={addr}"),
            None,
        )
        .map(|r| r.body.trim().to_owned())
        .unwrap_or_default()
    };
    let said = probe(&instance);
    assert!(said.starts_with("refused"), "{instance}: {said}");
    assert_eq!(probe(&format!("{host1}:{staging_port}")), "connected");
}
