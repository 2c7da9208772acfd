//! Chaos through the command line and a running server: faults injected into an environment's
//! router only where `chaos.allow` is set, for at most `chaos.max_duration`, at the end of the
//! flow by an admin only; shown by `chaos list`, `status` and the environment page; cleared by
//! hand; and one whose end passed while no server ran is ended, with an event, by the next.

use std::time::Duration;

use crate::helpers::{four_envs_with, spawn_server, text};

/// Every request to web in staging aborted with 503 for 5 minutes.
pub(crate) const ABORT_STAGING: &[&str] = &[
    "chaos",
    "inject",
    "--env",
    "staging",
    "--app",
    "web",
    "--abort",
    "503",
    "--duration",
    "5m",
];

#[test]
fn faults_are_injected_where_allowed_shown_everywhere_and_never_forgotten_on() {
    let mut s = spawn_server(&four_envs_with(
        "",
        &[
            (
                "staging",
                "chaos.allow = true\nchaos.max_duration = \"10m\"",
            ),
            ("production", "chaos.allow = true"),
        ],
    ));
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "production");
    let dana = s.token("dana", "deployer", &[]);
    let look = s.token("look", "viewer", &[]);

    // Refusals say what to do.
    let testing = s.refused(&[
        "chaos",
        "inject",
        "--env",
        "testing",
        "--app",
        "web",
        "--abort",
        "503",
        "--duration",
        "5m",
    ]);
    assert!(
        testing.contains("set `chaos.allow = true` in [environments.testing]"),
        "{testing}"
    );
    let long = s.refused(&[
        "chaos",
        "inject",
        "--env",
        "staging",
        "--app",
        "web",
        "--abort",
        "503",
        "--duration",
        "1h",
    ]);
    assert!(long.contains("longer than staging allows"), "{long}");
    let no_duration = s.cli(&[
        "chaos", "inject", "--env", "staging", "--app", "web", "--abort", "503",
    ]);
    assert!(!no_duration.status.success());
    assert!(
        text(&no_duration).contains("--duration"),
        "{}",
        text(&no_duration)
    );
    let production = s.refused_as(
        &dana,
        &[
            "chaos",
            "inject",
            "--env",
            "production",
            "--app",
            "web",
            "--abort",
            "503",
            "--duration",
            "5m",
        ],
    );
    assert!(
        production.contains("faults there need an admin"),
        "{production}"
    );
    let viewer = s.refused_as(&look, ABORT_STAGING);
    assert!(viewer.contains("viewer"), "{viewer}");

    // A deployer injects into staging: every request to web there is aborted.
    let made = s.ok_as(&dana, ABORT_STAGING);
    assert!(
        made.contains("fault #1 in staging: abort 503 for 100% of web until"),
        "{made}"
    );
    let reply = s.get(&format!("{}/", s.url("staging"))).unwrap();
    assert_eq!(reply.status, 503);
    assert!(reply.body.contains("injected 503"), "{}", reply.body);
    assert_eq!(
        s.get(&format!("{}/", s.url("testing"))).unwrap().status,
        200
    );
    let listed = s.ok(&["chaos", "list"]);
    assert!(
        listed.contains("#1") && listed.contains("abort 503 for 100% of web"),
        "{listed}"
    );
    let status = s.ok(&["status"]);
    assert!(
        status.contains("chaos (faults injected on purpose")
            && status.contains("#1 in staging: abort 503"),
        "{status}"
    );
    let admin = std::fs::read_to_string(s.data_dir().join("admin.token")).unwrap();
    let cookie = crate::dashboard::sign_in(&s, admin.trim());
    let (_, _, page) = crate::dashboard::raw(
        &s,
        "GET",
        "/apps/web/environments/staging",
        &[("Cookie", cookie.as_str())],
        "",
    );
    assert!(
        page.contains("<h2>Chaos</h2>") && page.contains("#1: abort 503 for 100% of web until"),
        "{page}"
    );
    // What the fault touched is counted apart in the metrics.
    let metrics = crate::helpers::http_get(&format!("{}/metrics", s.api()), Some(admin.trim()))
        .unwrap()
        .body;
    assert!(metrics.contains("release=\"chaos\""), "{metrics}");

    let cleared = s.ok_as(&dana, &["chaos", "clear", "1"]);
    assert!(cleared.contains("fault #1 in staging ended"), "{cleared}");
    assert_eq!(
        s.get(&format!("{}/", s.url("staging"))).unwrap().status,
        200
    );
    assert!(s.ok(&["chaos", "list"]).contains("no fault is in force"));
    assert!(
        s.refused(&["chaos", "clear", "1"])
            .contains("no fault #1 is in force")
    );

    // An admin may inject into production. A fault that ends while no server runs stops being
    // applied by the router at its end, and the next server records that it ended.
    s.ok(&[
        "chaos",
        "inject",
        "--env",
        "production",
        "--app",
        "web",
        "--delay",
        "50ms",
        "--jitter",
        "10ms",
        "--percent",
        "50",
        "--path",
        "/api/*",
        "--header",
        "x-chaos: 1",
        "--duration",
        "3s",
    ]);
    assert!(
        s.ok(&["chaos", "list"])
            .contains("delay 50ms ±10ms for 50% of web on /api/* with x-chaos: 1")
    );
    s.kill9();
    std::thread::sleep(Duration::from_secs(9));
    s.restart();
    let ended = s.messages_of("chaos.ended");
    assert!(
        ended.iter().any(|m| m
            .contains("chaos fault #2 in production ended: its duration ran out at")
            && m.contains("no server ran then")),
        "{ended:?}"
    );
    assert!(s.ok(&["chaos", "list"]).contains("no fault is in force"));
    let all = s.json(&["chaos", "list", "--all"]);
    assert_eq!(all["faults"].as_array().unwrap().len(), 2);
    assert_eq!(all["faults"][1]["ended_by"], "duration");
    let injected = s.messages_of("chaos.injected");
    assert_eq!(injected.len(), 2, "{injected:?}");
}

/// A `psql` query through `port` (the dependency proxy): whether it worked, and how long it
/// took.
fn psql(port: u16, database: &str) -> (bool, Duration) {
    let started = std::time::Instant::now();
    let out = std::process::Command::new("psql")
        .arg(format!(
            "postgres://postgres@127.0.0.1:{port}/{database}?connect_timeout=5"
        ))
        .args(["-tAc", "select 41 + 1"])
        .output()
        .unwrap();
    let took = started.elapsed();
    (
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "42",
        took,
    )
}

#[test]
fn toxiproxy_python_drives_the_dependency_proxies_and_a_postgres_client_feels_each_toxic() {
    let url = crate::helpers::postgres_database("toxic");
    let (rest, database) = url.rsplit_once('/').unwrap();
    let pg_port: u16 = rest.rsplit_once(':').unwrap().1.parse().unwrap();
    let (proxy_port, api_port) = (crate::helpers::free_port(), crate::helpers::free_port());
    let production_proxy = crate::helpers::free_port();
    let s = spawn_server(&four_envs_with(
        &format!("toxiproxy_listen = \"127.0.0.1:{api_port}\""),
        &[
            (
                "staging",
                &format!(
                    "chaos = {{ allow = true, max_duration = \"5s\" }}\ndependencies.db = {{ listen = \"127.0.0.1:{proxy_port}\", upstream = \"127.0.0.1:{pg_port}\" }}"
                ),
            ),
            (
                "production",
                &format!(
                    "dependencies.db = {{ listen = \"127.0.0.1:{production_proxy}\", upstream = \"127.0.0.1:{pg_port}\" }}"
                ),
            ),
        ],
    ));
    let (ok, _) = psql(proxy_port, database);
    assert!(ok, "psql through the proxy without toxics");

    // The client sends its token the one way it can: HTTP Basic from a netrc entry.
    let deployer = s.token("chaos-staging", "deployer", &["staging"]);
    let netrc = s.dir.path().join("netrc");
    let python = crate::helpers::python_venv("toxiproxy-venv", &["toxiproxy-python==0.1.1"]);
    let drive_as = |token: &str, proxy: &str, script: &str| {
        std::fs::write(
            &netrc,
            format!("machine 127.0.0.1 login shipgate password {token}\n"),
        )
        .unwrap();
        let script = format!(
            "import json, requests\nbase = 'http://127.0.0.1:{api_port}'\nfrom toxiproxy import Toxiproxy\nt = Toxiproxy()\nt.update_api_consumer('127.0.0.1', {api_port})\np = t.get_proxy('{proxy}')\n{script}"
        );
        let out = std::process::Command::new(&python)
            .arg("-c")
            .arg(&script)
            .env("NETRC", &netrc)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let drive = |script: &str| drive_as(&deployer, "staging.db", script);
    let admin = s.admin_token();

    // Without a token, with a name that is not the API's own, and beyond the token's rights:
    // refused, and production's database never feels a thing.
    let status_of = |req: &str| {
        let answer = crate::helpers::raw_http(&format!("127.0.0.1:{api_port}"), req);
        answer.lines().next().unwrap_or_default().to_owned()
    };
    let body = r#"{"type":"latency","attributes":{"latency":1500}}"#;
    let post = |host: &str, auth: &str| {
        format!(
            "POST /proxies/production.db/toxics HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let own = format!("127.0.0.1:{api_port}");
    assert!(status_of(&post(&own, "")).contains(" 401 "), "no token");
    assert!(
        status_of(&post(
            "attacker.example",
            &format!("Authorization: Bearer {admin}\r\nOrigin: http://attacker.example\r\n")
        ))
        .contains(" 421 "),
        "another Host"
    );
    assert!(
        status_of(&post(
            &own,
            &format!("Authorization: Bearer {deployer}\r\n")
        ))
        .contains(" 403 "),
        "a staging deployer on production"
    );
    let refused = status_of(&post(&own, &format!("Authorization: Bearer {admin}\r\n")));
    assert!(
        refused.contains(" 403 "),
        "production has no chaos.allow: {refused}"
    );
    let listed = drive_as(&admin, "production.db", "print(list(p.toxics()))");
    assert_eq!(listed.trim(), "[]");
    let viewer = s.token("watcher", "viewer", &[]);
    let seen = drive_as(
        &viewer,
        "staging.db",
        "r = requests.post(base + '/proxies/staging.db/toxics', json={'type': 'latency', 'attributes': {'latency': 5}})\nprint(r.status_code, r.json()['error'])",
    );
    assert!(
        seen.starts_with("403 token `watcher` has the role viewer"),
        "{seen}"
    );
    let names = drive_as(&deployer, "staging.db", "print(list(t.proxies()))");
    assert_eq!(
        names.trim(),
        "['staging.db']",
        "a staging token sees staging's proxies only"
    );
    let seen = drive(
        "print(json.dumps({'running': t.running(), 'version': t.version().decode(), 'listen': p.listen, 'upstream': p.upstream, 'enabled': p.enabled, 'names': list(t.proxies())}))",
    );
    let seen: serde_json::Value = serde_json::from_str(seen.trim()).unwrap();
    assert_eq!(seen["running"], true);
    assert_eq!(seen["listen"], format!("127.0.0.1:{proxy_port}"));
    assert_eq!(seen["upstream"], format!("127.0.0.1:{pg_port}"));
    assert_eq!(seen["names"], serde_json::json!(["staging.db"]));

    // Latency on what PostgreSQL answers: the query's round trips each wait 300 ms. The toxic
    // is listed with who made it and its end, and ends by itself at staging's max_duration.
    drive(
        "p.add_toxic(type='latency', attributes={'latency': 300, 'jitter': 0})\nprint(list(p.toxics()))",
    );
    let (ok, took) = psql(proxy_port, database);
    assert!(ok);
    assert!(took >= Duration::from_millis(600), "{took:?}");
    let listed = s.json(&["chaos", "list"]);
    assert_eq!(listed["proxies"][0]["proxy"], "staging.db", "{listed}");
    assert_eq!(
        listed["proxies"][0]["created_by"], "chaos-staging",
        "{listed}"
    );
    assert!(
        s.ok(&["chaos", "list"])
            .contains("toxic latency_downstream (latency downstream")
    );
    crate::helpers::wait_for("the toxic to end at chaos.max_duration", || {
        s.json(&["chaos", "list"])["proxies"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    assert!(
        s.messages_of("chaos.ended")
            .iter()
            .any(|m| m.contains("toxic latency_downstream ended: its duration ran out")),
    );
    assert!(psql(proxy_port, database).0);

    // limit_data cuts the connection before the answer; reset_peer resets it; down refuses.
    drive("p.add_toxic(type='limit_data', name='cut', attributes={'bytes': 20})");
    assert!(!psql(proxy_port, database).0, "limit_data");
    drive(
        "p.destroy_toxic('cut')\np.add_toxic(type='reset_peer', stream='upstream', attributes={'timeout': 0})",
    );
    assert!(!psql(proxy_port, database).0, "reset_peer");
    drive("t.reset()");
    assert!(psql(proxy_port, database).0, "after reset");
    drive("p.disable()");
    assert!(!psql(proxy_port, database).0, "down");
    drive("p.enable()");
    assert!(psql(proxy_port, database).0, "up again");

    // A proxy not in the config is refused with the reason; a toxic twice is a conflict.
    let refused = drive(
        "r = requests.post(base + '/proxies', json={'name': 'x', 'listen': '127.0.0.1:0', 'upstream': '127.0.0.1:1'})\nprint(r.status_code, r.json()['error'])",
    );
    assert!(
        refused.starts_with("400 shipgate's proxies come from the config"),
        "{refused}"
    );
    let twice = drive(
        "p.add_toxic(type='bandwidth', attributes={'rate': 100})\ntry:\n  p.add_toxic(type='bandwidth', attributes={'rate': 100})\n  print('added twice')\nexcept Exception as e:\n  print(type(e).__name__)",
    );
    assert_eq!(twice.trim(), "ProxyExists");
    let bad = drive(
        "r = requests.post(base + '/proxies/staging.db/toxics', json={'type': 'latency', 'attributes': {'latncy': 5}})\nprint(r.status_code, r.json()['error'])",
    );
    assert!(
        bad.starts_with("400 a latency toxic takes latency, jitter, not `latncy`"),
        "{bad}"
    );

    // Every change went to the audit log, by the token that made it.
    let injected = s.messages_of("chaos.injected");
    assert!(
        injected.iter().any(|m| m.contains("dependency proxy staging.db: toxic latency_downstream added (latency downstream, toxicity 1")),
        "{injected:?}"
    );
    assert!(
        injected.iter().any(|m| m.contains("staging.db: down")),
        "{injected:?}"
    );
    let ended = s.messages_of("chaos.ended");
    assert!(
        ended.iter().any(|m| m.contains("toxic cut removed")),
        "{ended:?}"
    );
    assert!(
        ended
            .iter()
            .any(|m| m.contains("reset: up, without toxics")),
        "{ended:?}"
    );
}

/// A TCP service that answers each line with `pong`.
fn pong_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                use std::io::{BufRead, Write};
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if conn.write_all(b"pong\n").is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    port
}

/// The experiment of docs/chaos.md: the page that reads the database must answer while the
/// database is a second slow.
const DB_SLOW: &str = r#"{
  "version": "1.0.0",
  "title": "web survives a database that answers a second late",
  "description": "The page that reads the database still answers while every answer of the database comes a second late.",
  "configuration": {
    "app_url": {"type": "env", "key": "SHIPGATE_URL"},
    "toxiproxy_host": {"type": "env", "key": "TOXIPROXY_HOST"},
    "toxiproxy_port": {"type": "env", "key": "TOXIPROXY_PORT"},
    "api": {"type": "env", "key": "SHIPGATE_API"}
  },
  "secrets": {
    "shipgate": {"token": {"type": "env", "key": "SHIPGATE_TOKEN"}}
  },
  "steady-state-hypothesis": {
    "title": "the page that reads the database answers",
    "probes": [
      {"type": "probe", "name": "db-page", "tolerance": 200,
       "provider": {"type": "http", "url": "${app_url}/db", "timeout": 10}}
    ]
  },
  "method": [
    {"type": "action", "name": "slow-db",
     "provider": {"type": "python", "module": "chaostoxi.toxic.actions", "func": "create_latency_toxic",
                  "arguments": {"for_proxy": "staging.db", "toxic_name": "slow-db", "latency": 1000}},
     "pauses": {"after": 0.5}},
    {"type": "action", "name": "failing-exports",
     "provider": {"type": "http", "method": "POST", "url": "${api}/api/v1/chaos",
                  "headers": {"Authorization": "Bearer ${token}", "Content-Type": "application/json"},
                  "arguments": {"env": "staging", "app": "web", "abort": 503, "path": "/exports/*", "duration": "2m"}}}
  ],
  "rollbacks": [
    {"type": "action", "name": "fast-db",
     "provider": {"type": "python", "module": "chaostoxi.toxic.actions", "func": "delete_toxic",
                  "arguments": {"for_proxy": "staging.db", "toxic_name": "slow-db"}}},
    {"type": "action", "name": "no-faults",
     "provider": {"type": "http", "method": "DELETE", "url": "${api}/api/v1/chaos",
                  "headers": {"Authorization": "Bearer ${token}"}}}
  ]
}"#;

#[test]
fn an_experiment_gate_fails_a_release_that_does_not_survive_a_slow_database_and_chaos_run_agrees() {
    let db = pong_server();
    let (proxy_port, api_port) = (crate::helpers::free_port(), crate::helpers::free_port());
    let s = crate::helpers::spawn_server_after(
        &four_envs_with(
            &format!("toxiproxy_listen = \"127.0.0.1:{api_port}\""),
            &[(
                "staging",
                &format!(
                    "chaos.allow = true\nvars = {{ DB_ADDR = \"127.0.0.1:{proxy_port}\" }}\nverify.experiments = [\"chaos/db-slow.json\"]\ndependencies.db = {{ listen = \"127.0.0.1:{proxy_port}\", upstream = \"127.0.0.1:{db}\" }}"
                ),
            )],
        ),
        |dir| {
            std::fs::create_dir_all(dir.join("chaos")).unwrap();
            std::fs::write(dir.join("chaos/db-slow.json"), DB_SLOW).unwrap();
        },
    );

    // A release that waits for its database passes the experiment.
    s.register("1.0.0", &[("PATIENT", "")]);
    s.walk("1.0.0", "staging");
    let history = s.json(&["history", "web", "--env", "staging"]);
    let gate = history[0]["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "experiment: chaos/db-slow.json")
        .unwrap()
        .clone();
    assert_eq!(gate["passed"], true, "{gate}");
    let output = gate["output"].as_str().unwrap();
    // Its token was a staging deployer's, for that run only, and is gone now.
    let tokens = s.json(&["token", "list"]);
    let minted: Vec<&serde_json::Value> = tokens
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| {
            t["name"]
                .as_str()
                .unwrap_or_default()
                .starts_with("experiment-staging-")
        })
        .collect();
    assert_eq!(minted.len(), 1, "{tokens}");
    assert_eq!(minted[0]["role"], "deployer");
    assert_eq!(minted[0]["envs"], serde_json::json!(["staging"]));
    assert!(!minted[0]["revoked_at"].is_null(), "{tokens}");
    for line in [
        "steady state before: the page that reads the database answers",
        "probe db-page: 200 db answered pong",
        "action slow-db: 0 chaostoxi.toxic.actions.create_latency_toxic done",
        "steady state after:",
        "action failing-exports: 201 ",
        "action fast-db: 0 chaostoxi.toxic.actions.delete_toxic done",
        "action no-faults: 200 ",
        "the steady state held",
    ] {
        assert!(output.contains(line), "{line}\n{output}");
    }

    // One that gives up after half a second does not: the promotion fails and staging goes
    // back; the rollback ran all the same.
    s.register("2.0.0", &[]);
    s.walk("2.0.0", "testing");
    let failed = s.cli(&["promote", "web@2.0.0", "--to", "staging", "--wait"]);
    assert!(!failed.status.success());
    let said = text(&failed);
    assert!(
        said.contains("experiment `chaos/db-slow.json` failed: the steady state deviated after the method: probe `db-page` gave 503"),
        "{said}"
    );
    assert_eq!(s.version("staging").as_deref(), Some("1.0.0"));
    let proxy = crate::helpers::http_get(
        &format!("http://127.0.0.1:{api_port}/proxies/staging.db"),
        Some(&s.admin_token()),
    )
    .unwrap();
    assert!(proxy.body.contains("\"toxics\":[]"), "{}", proxy.body);

    // The same file under the real `chaos run` of chaostoolkit with chaostoolkit-toxiproxy,
    // against staging as it is now (1.0.0): the steady state holds.
    let python = crate::helpers::python_venv(
        "chaostoolkit-venv",
        &["chaostoolkit==1.19.0", "chaostoolkit-toxiproxy==0.3.1"],
    );
    let chaos = python.parent().unwrap().join("chaos");
    let journal = s.dir.path().join("journal.json");
    // chaostoolkit-toxiproxy sends no header of its own: its token comes from a netrc entry.
    let deployer = s.token("chaos-run", "deployer", &["staging"]);
    let netrc = s.dir.path().join("netrc");
    std::fs::write(
        &netrc,
        format!("machine 127.0.0.1 login shipgate password {deployer}\n"),
    )
    .unwrap();
    let run = std::process::Command::new(&chaos)
        .current_dir(s.dir.path())
        .args(["--no-version-check", "run", "--journal-path"])
        .arg(&journal)
        .arg("chaos/db-slow.json")
        .env("SHIPGATE_URL", s.url("staging"))
        .env("TOXIPROXY_HOST", "127.0.0.1")
        .env("TOXIPROXY_PORT", api_port.to_string())
        .env("SHIPGATE_API", s.api())
        .env("SHIPGATE_TOKEN", &deployer)
        .env("NETRC", &netrc)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", text(&run));
    let journal: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&journal).unwrap()).unwrap();
    assert_eq!(journal["status"], "completed", "{journal}");
    assert_eq!(journal["deviated"], false, "{journal}");
    let injected = s.messages_of("chaos.injected");
    assert!(
        injected
            .iter()
            .any(|m| m.contains("toxic slow-db added (latency downstream")),
        "chaos run drove shipgate's proxy through its Toxiproxy API: {injected:?}"
    );
}

#[test]
fn an_injected_fault_counts_for_alerts_and_status_but_never_against_the_release() {
    let config = four_envs_with("", &[("staging", "chaos.allow = true")])
        + "\n[alerts.staging-errors]\nenv = \"staging\"\nwhen = \"error_rate > 0.2\"\n";
    let s = spawn_server(&config);
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "staging");
    s.ok(&[ABORT_STAGING, &["--percent", "50"]].concat());
    let url = format!("{}/version", s.url("staging"));
    let failed = (0..200)
        .filter(|_| crate::helpers::http_get(&url, None).is_none_or(|r| r.status != 200))
        .count();
    assert!((50..=150).contains(&failed), "{failed} of 200 aborted");

    // The release answered every request it got; users met the faults' 503s too.
    let status = s.ok(&["status", "web"]);
    let staging = status
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("staging"))
        .unwrap_or_default()
        .to_owned();
    assert!(staging.contains("0.0% 5xx, "), "{status}");
    assert!(staging.contains("% with faults"), "{status}");
    let with_faults = crate::helpers::env_status(&s.json(&["status", "web"]), "staging")["traffic"]
        ["error_rate_with_faults"]
        .as_f64()
        .unwrap();
    assert!((0.25..=0.75).contains(&with_faults), "{with_faults}");

    // An alert judges what users met: the fault fires it.
    crate::helpers::wait_for("the alert to fire on the injected errors", || {
        s.ok(&["status"]).contains("alerts firing")
    });
    let fired = s.messages_of("alert.firing");
    assert!(
        fired.iter().any(|m| m.contains("staging-errors")),
        "{fired:?}"
    );
}
