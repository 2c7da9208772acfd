//! Every instance in a sandbox: probed from inside a staging instance, which must not see
//! production's variables, release or data, nor shipgate's own data dir, and whose memory and
//! process limits are enforced by the cgroup hierarchy this machine offers (v1 or v2).

use std::fs;
use std::path::Path;

use crate::helpers::{env_status, free_port, root_or_skip, spawn_server, wait_for};

const PROBE_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/probe");
const PRODUCTION_SECRET: &str = "prod-secret-9f2c";

fn config() -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\ndata_dir = \"data\"\n\n\
         [apps.web]\nrun = \"python3 server.py --port ${{PORT}}\"\nhealth = \"/healthz\"\n\
         crash_loop = {{ crashes = 20, within = \"1m\" }}\n\n\
         [environments.staging]\nlisten = \"127.0.0.1:{}\"\n\
         limits = {{ memory = \"64MiB\", pids = 48 }}\nvars.DB_PASSWORD = \"staging-pw\"\n\
         verify.tests = [\"test ! -e ${{DATA_DIR}}/../../../admin.token && test $(id -u) -ne 0\"]\n\n\
         [environments.production]\nafter = \"staging\"\nlisten = \"127.0.0.1:{}\"\n\
         vars.DB_PASSWORD = \"{PRODUCTION_SECRET}\"\n",
        free_port(),
        free_port(),
        free_port()
    )
}

fn uid_of(user: &str) -> u32 {
    nix::unistd::User::from_name(user)
        .unwrap()
        .unwrap_or_else(|| panic!("no user {user}"))
        .uid
        .as_raw()
}

#[test]
fn a_staging_instance_sees_nothing_of_production_or_shipgate_and_is_held_to_its_limits() {
    if !root_or_skip("isolation") {
        return;
    }
    let s = spawn_server(&config());
    let src = s.dir.path().join("probe");
    fs::create_dir_all(&src).unwrap();
    fs::copy(
        Path::new(PROBE_APP).join("server.py"),
        src.join("server.py"),
    )
    .unwrap();
    s.register_dir("1.0.0", &src);
    // staging's verification test runs in the sandbox too: as sg-staging, without the admin
    // token that is there for the server, three folders above its data dir.
    assert!(s.data_dir().join("admin.token").exists());
    s.ok(&["promote", "web@1.0.0", "--to", "staging", "--wait"]);
    s.ok(&["promote", "web@1.0.0", "--to", "production", "--wait"]);
    // staging moves on to a release of its own, so production's release directory is another.
    fs::write(src.join("NOTES"), "staging only\n").unwrap();
    s.register_dir("1.1.0", &src);
    s.ok(&["promote", "web@1.1.0", "--to", "staging", "--wait"]);

    let status = s.json(&["status", "web"]);
    let staging = env_status(&status, "staging");
    let production = env_status(&status, "production");
    assert_eq!(staging["isolation"]["sandboxed"], true, "{staging}");
    let detail = staging["isolation"]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("sandbox as user sg-staging, memory 64MiB, pids 48 (cgroup v"),
        "{detail}"
    );
    eprintln!("staging isolation: {detail}");
    let text = s.ok(&["status", "web"]);
    assert!(
        text.contains("web in production: sandbox as user sg-production, no limits"),
        "{text}"
    );

    let probe = |query: &str| -> String {
        let reply = s
            .get(&format!("{}/{query}", s.url("staging")))
            .unwrap_or_else(|| panic!("staging did not answer /{query}"));
        reply.body.trim().to_owned()
    };
    // It runs as staging's own user, not as root.
    assert!(
        probe("whoami").starts_with(&format!("uid {} ", uid_of("sg-staging"))),
        "{}",
        probe("whoami")
    );

    // Production's variables: present in its process, invisible from staging.
    let production_pid = production["instance"]["pid"].as_u64().unwrap();
    let environ = fs::read(format!("/proc/{production_pid}/environ")).unwrap();
    assert!(
        String::from_utf8_lossy(&environ).contains(PRODUCTION_SECRET),
        "the production process holds the secret the probe looks for"
    );
    assert_eq!(
        probe(&format!("environ?needle={PRODUCTION_SECRET}")),
        "0 processes hold it"
    );
    assert!(probe(&format!("read?path=/proc/{production_pid}/environ")).starts_with("refused"));

    // shipgate's data dir: the admin token, the database, production's data.
    let data = s.data_dir();
    for hidden in [
        data.join("admin.token"),
        data.join("shipgate.db"),
        s.app_data("production"),
        data.join("logs"),
    ] {
        let answer = probe(&format!("read?path={}", hidden.display()));
        assert!(
            answer.starts_with("refused"),
            "{}: {answer}",
            hidden.display()
        );
    }
    // Production's release directory (another digest than staging's), while staging's own is
    // there to read.
    let release_of = |env: &serde_json::Value| {
        env["live"]["digest"]
            .as_str()
            .map(|d| data.join("releases").join(d.trim_start_matches("sha256:")))
            .unwrap()
    };
    let production_release = release_of(&production);
    assert_ne!(production_release, release_of(&staging));
    assert!(production_release.join("server.py").exists());
    let answer = probe(&format!(
        "read?path={}/server.py",
        production_release.display()
    ));
    assert!(answer.starts_with("refused"), "{answer}");
    let answer = probe(&format!(
        "read?path={}/server.py",
        release_of(&staging).display()
    ));
    assert!(answer.starts_with("read "), "{answer}");

    // Writable: its own data dir and a private /tmp. Not: its release, the system.
    let release_dir = staging["live"]["digest"]
        .as_str()
        .map(|d| data.join("releases").join(d.trim_start_matches("sha256:")))
        .unwrap();
    let own = s.app_data("staging").join("kept");
    assert_eq!(probe(&format!("write?path={}", own.display())), "written");
    assert!(
        own.exists(),
        "the data dir is the real folder, kept across releases"
    );
    assert!(probe(&format!("write?path={}/x", release_dir.display())).starts_with("refused"));
    assert!(probe("write?path=/usr/x").starts_with("refused"));
    let marker = format!("shipgate-isolation-{}", std::process::id());
    assert_eq!(probe(&format!("write?path=/tmp/{marker}")), "written");
    assert!(
        !Path::new("/tmp").join(&marker).exists(),
        "its /tmp is its own"
    );

    // A fork bomb stops at the pids limit, and the instance keeps serving.
    let forked = probe("fork?n=200");
    let started: u32 = forked
        .strip_prefix("started ")
        .and_then(|r| r.split(';').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{forked}"));
    assert!(started < 48, "{forked}");
    assert!(!forked.ends_with("refused: none"), "{forked}");
    assert_eq!(probe("healthz"), "ok");

    // A memory hog over its limit is killed, recorded as such, and restarted.
    let _ = s.get(&format!("{}/hog?mb=200", s.url("staging")));
    wait_for("the hog to be killed and restarted", || {
        let staging = env_status(&s.json(&["status", "web"]), "staging");
        staging["instance"]["restarts"].as_u64().unwrap_or(0) >= 1
            && staging["instance"]["healthy"] == true
    });
    let staging = env_status(&s.json(&["status", "web"]), "staging");
    assert_eq!(
        staging["instance"]["last_crash"], "out of memory (limit 64MiB)",
        "{staging}"
    );
    let crashed = s.ok(&["audit", "--env", "staging"]);
    assert!(crashed.contains("out of memory (limit 64MiB)"), "{crashed}");
    let text = s.ok(&["status", "web"]);
    assert!(
        text.contains("last crash: out of memory (limit 64MiB)"),
        "{text}"
    );
}

/// Tries each of `addrs` from inside the sandbox with the release's connect.py.
fn connect_line(expect: &str, addrs: &[String]) -> String {
    format!("python3 connect.py --expect {expect} {}", addrs.join(" "))
}

/// The attacker suite: from inside a staging instance, a staging verify test and a staging
/// experiment, reach for production and for shipgate itself over the network. Every attempt is
/// refused, the token the experiment was given shows as `[secret token]`, and production
/// answers throughout.
#[test]
fn nothing_staging_runs_reaches_production_or_shipgate_over_the_network() {
    if !root_or_skip("the network fence") {
        return;
    }
    let (api, toxiproxy) = (free_port(), free_port());
    let (staging, production) = (free_port(), free_port());
    let (staging_db, production_db) = (free_port(), free_port());
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_port = upstream.local_addr().unwrap().port();
    let at = |p: u16| format!("127.0.0.1:{p}");
    let forbidden = [at(production), at(production_db), at(toxiproxy)];
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{api}\"\ndata_dir = \"data\"\ntoxiproxy_listen = \"127.0.0.1:{toxiproxy}\"\n\n\
         [apps.web]\nrun = \"python3 server.py --port ${{PORT}}\"\nhealth = \"/healthz\"\n\
         facts = {{ uid = \"id -u\", home = \"pwd\" }}\n\n\
         [environments.staging]\nlisten = \"127.0.0.1:{staging}\"\n\
         chaos.allow = true\n\
         dependencies.db = {{ listen = \"127.0.0.1:{staging_db}\", upstream = \"127.0.0.1:{upstream_port}\" }}\n\
         verify.tests = [\"{}\", \"{}\"]\n\
         verify.experiments = [\"attack.json\"]\n\n\
         [environments.production]\nafter = \"staging\"\nlisten = \"127.0.0.1:{production}\"\n\
         vars.DB_PASSWORD = \"{PRODUCTION_SECRET}\"\n\
         dependencies.db = {{ listen = \"127.0.0.1:{production_db}\", upstream = \"127.0.0.1:{upstream_port}\" }}\n",
        connect_line("refused", &forbidden),
        connect_line("connected", &[at(staging), at(staging_db), at(api)]),
    );
    let attack = serde_json::json!({
        "version": "1.0.0",
        "title": "staging reaches for production",
        "description": "An experiment shipped with a staging release, run by shipgate as a gate.",
        "steady-state-hypothesis": {
            "title": "production and shipgate are out of reach",
            "probes": [{
                "type": "probe", "name": "fenced", "tolerance": 0,
                "provider": {"type": "process", "path": "python3",
                             "arguments": ["connect.py", "--expect", "refused",
                                           forbidden[0], forbidden[1], forbidden[2]]}
            }]
        },
        "method": [{
            "type": "action", "name": "show-token",
            "provider": {"type": "process", "path": "sh",
                         "arguments": ["-c", "echo uid=$(id -u) token=$SHIPGATE_TOKEN"]}
        }, {
            "type": "action", "name": "production-http",
            "provider": {"type": "http", "url": format!("http://127.0.0.1:{production}/healthz")}
        }, {
            "type": "action", "name": "production-toxic",
            "provider": {"type": "python", "module": "chaostoxi.toxic.actions",
                         "func": "create_latency_toxic",
                         "arguments": {"for_proxy": "production.db", "toxic_name": "slow", "latency": 1500}}
        }]
    });
    let s = crate::helpers::spawn_server_after(&config, |dir| {
        std::fs::write(
            dir.join("attack.json"),
            serde_json::to_string_pretty(&attack).unwrap(),
        )
        .unwrap();
    });
    let src = s.dir.path().join("probe");
    fs::create_dir_all(&src).unwrap();
    for file in ["server.py", "connect.py"] {
        fs::copy(Path::new(PROBE_APP).join(file), src.join(file)).unwrap();
    }
    // Facts, while nothing is live yet, run in the sandbox too: as sg-staging, in its data dir.
    // (The two differ, as their users and folders do: `diff` exits 1 and prints them.)
    let out = s.cli(&["--output", "json", "diff", "web", "staging", "production"]);
    let diff: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fact = |key: &str| {
        crate::parity::item(&diff, key)["a"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        fact("facts.uid"),
        uid_of("sg-staging").to_string(),
        "{diff}"
    );
    assert_eq!(
        fact("facts.home"),
        s.app_data("staging").display().to_string()
    );

    s.register_dir("1.0.0", &src);
    s.ok(&["promote", "web@1.0.0", "--to", "staging", "--wait"]);
    s.ok(&["promote", "web@1.0.0", "--to", "production", "--wait"]);

    // The verify tests and the experiment passed: every forbidden address was refused from
    // inside the sandbox, and staging's own router, proxy and the API were reached.
    let history = s.json(&["history", "web", "--env", "staging"]);
    let gates = history[0]["gates"].as_array().unwrap();
    for gate in gates {
        assert_eq!(gate["passed"], true, "{gate}");
    }
    let experiment = gates
        .iter()
        .find(|g| g["name"] == "experiment: attack.json")
        .unwrap();
    let output = experiment["output"].as_str().unwrap();
    assert!(output.contains("token=[secret token]"), "{output}");
    assert!(!output.contains("sg_"), "{output}");
    assert!(!output.contains("uid=0 "), "{output}");
    assert!(
        output.contains(&format!(
            "action production-http: error: 127.0.0.1:{production} is not within the reach of environment `staging`"
        )),
        "shipgate makes no call for staging that staging could not make: {output}"
    );
    assert!(
        output.contains("production-toxic") && output.contains("may not act on production"),
        "an experiment of staging cannot touch production's proxy: {output}"
    );
    assert!(
        s.json(&["chaos", "list"])["proxies"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );

    // From inside the staging instance: production's instance, proxy and router, and the
    // Toxiproxy API are refused; its own router and proxy answer.
    let status = s.json(&["status", "web"]);
    let production_port = env_status(&status, "production")["instance"]["port"]
        .as_u64()
        .unwrap();
    let probe = |addr: &str| {
        s.get(&format!("{}/connect?addr={addr}", s.url("staging")))
            .map(|r| r.body.trim().to_owned())
            .unwrap_or_default()
    };
    for addr in forbidden.iter().chain([&at(production_port as u16)]) {
        let said = probe(addr);
        assert!(said.starts_with("refused"), "{addr}: {said}");
    }
    for addr in [at(staging), at(staging_db), at(api)] {
        assert_eq!(probe(&addr), "connected", "{addr}");
    }
    // Production answered throughout, and its dependency saw no toxic.
    assert_eq!(
        s.get(&format!("{}/healthz", s.url("production")))
            .map(|r| r.status),
        Some(200)
    );
    let proxy = crate::helpers::http_get(
        &format!("http://127.0.0.1:{toxiproxy}/proxies/production.db"),
        Some(&s.admin_token()),
    )
    .unwrap();
    assert!(proxy.body.contains("\"toxics\":[]"), "{}", proxy.body);
    drop(upstream);
}
