//! On-demand environments through the command line: made from a template with masked data,
//! tested on arrival, reached by port and by name, held to their quotas, and deleted without
//! a trace (no process, port, folder or database left, as `ps`'s `/proc`, `ss` and the file
//! system see it), also when the server is killed midway.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::data::production_db;
use crate::helpers::{
    TestServer, four_envs_with, free_port, free_range, spawn_server, text, wait_for,
};

/// The fixture flow with staging testing each arrival, production data in SQLite, and a
/// `preview` template over staging; `template` adds lines to the template.
fn previews(template: &str) -> String {
    let first = free_range(25);
    let config = four_envs_with("", &[("staging", "verify.tests = [\"sh smoke.sh ${URL}\"]")])
        .replace(
            "health = \"/healthz\"\n",
            "health = \"/healthz\"\n\n[apps.web.data]\nproduction = \"sqlite://production.db\"\n\n[apps.web.data.mask.users]\nemail = \"email\"\nfull_name = \"name\"\n",
        );
    format!(
        "{config}\n[templates.preview]\nfrom = \"staging\"\nttl = \"48h\"\nlisten_range = \"127.0.0.1:{first}-{}\"\nlisten = \"127.0.0.1:{}\"\nhost_suffix = \".preview.localhost\"\ndata = {{ from = \"production\", masked = true }}\n{template}\n",
        first + 24,
        free_port()
    )
}

fn started(config: &str) -> TestServer {
    let s = spawn_server(config);
    production_db(&s.dir.path().join("production.db"));
    s
}

/// The processes whose environment says they belong to `env`.
fn processes_of(env: &str) -> Vec<i32> {
    let marker = format!("SHIPGATE_ENV={env}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

/// What `ss` says listens on `port`.
fn listening_on(port: u16) -> String {
    let out = Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("ss runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Nothing of `env` remains: no process, no listener on its port, no folder.
fn gone_without_a_trace(s: &TestServer, env: &str, port: u16) {
    wait_for(&format!("the processes of {env} to end"), || {
        processes_of(env).is_empty()
    });
    // The server's handle to a closed router's socket goes at its next look at the agent.
    wait_for(&format!("port {port} of {env} to close"), || {
        listening_on(port).is_empty()
    });
    let data = s.data_dir();
    for left in [
        data.join("on-demand").join(env),
        data.join("data").join(env),
        data.join("logs").join("web").join(env),
    ] {
        assert!(!left.exists(), "{} is left", left.display());
    }
}

/// GET `path` at `addr` with `Host: host`; the status and body.
fn get_named(addr: &str, host: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

/// How many rows of `db`'s users hold an email of production's.
fn real_emails_in(db: &Path, production: &Path) -> (i64, i64) {
    let script = format!(
        "import sqlite3\ndb = sqlite3.connect({db:?})\ndb.execute('ATTACH DATABASE ? AS p', ({production:?},))\nprint(db.execute('SELECT count(*) FROM users').fetchone()[0], db.execute('SELECT count(*) FROM users u JOIN p.users r ON u.email = r.email').fetchone()[0])\n",
        db = db.display().to_string(),
        production = production.display().to_string()
    );
    let t = crate::helpers::python(&script);
    let mut n = t.split_whitespace().map(|n| n.parse::<i64>().unwrap());
    (n.next().unwrap(), n.next().unwrap())
}

fn create(s: &TestServer, name: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "env",
        "create",
        name,
        "--template",
        "preview",
        "--output",
        "json",
    ];
    args.extend_from_slice(extra);
    let out = s.cli(&args);
    assert!(
        out.status.success(),
        "env create {name}: {}\nLOG:\n{}",
        text(&out),
        s.log()
            .lines()
            .filter(|l| !l.contains(" INFO "))
            .collect::<Vec<_>>()
            .join("\n")
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn twenty_environments_from_one_template_are_made_tested_reached_and_removed_without_a_trace() {
    let s = started(&previews("max = 25"));
    s.register("1.0.0", &[]);
    let names: Vec<String> = (1..=20).map(|i| format!("pr-{i}")).collect();
    let made: Vec<Value> = std::thread::scope(|scope| {
        let batches: Vec<_> = names
            .chunks(5)
            .map(|batch| {
                let s = &s;
                scope.spawn(move || {
                    batch
                        .iter()
                        .map(|n| create(s, n, &["--release", "web@1.0.0"]))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        batches
            .into_iter()
            .flat_map(|b| b.join().unwrap())
            .collect()
    });
    let named_at = s
        .config_text()
        .lines()
        .skip_while(|l| !l.starts_with("[templates.preview]"))
        .find_map(|l| l.strip_prefix("listen = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_owned();
    let production = s.dir.path().join("production.db");
    let mut ports = std::collections::HashSet::new();
    for env in &made {
        let name = env["name"].as_str().unwrap();
        assert_eq!(env["state"], "ready", "{env}");
        let outcome = env["outcome"].as_str().unwrap();
        assert!(
            outcome.contains("web data seeded from production, masked: 200 rows"),
            "{outcome}"
        );
        assert!(
            outcome.contains("web@1.0.0 deployed and verified"),
            "{outcome}"
        );
        assert!(outcome.contains("smoke.sh ${URL} passed"), "{outcome}");
        let port = u16::try_from(env["port"].as_u64().unwrap()).unwrap();
        assert!(ports.insert(port), "port {port} given twice");
        let url = env["url"].as_str().unwrap();
        let version = s.get(&format!("{url}/version")).unwrap();
        assert_eq!((version.status, version.body.trim()), (200, "1.0.0"));
        let (status, body) = get_named(&named_at, &format!("{name}.preview.localhost"), "/version");
        assert_eq!((status, body.trim()), (200, "1.0.0"), "by name");
        let db = s.data_dir().join("on-demand").join(name).join("web.db");
        assert_eq!(
            real_emails_in(&db, &production),
            (200, 0),
            "masked data in {name}"
        );
    }
    let (status, body) = get_named(&named_at, "pr-99.preview.localhost", "/");
    assert_eq!(status, 404);
    assert!(
        body.contains("no environment of template preview is named"),
        "{body}"
    );
    let list = s.json(&["env", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 20);
    let listed = s.ok(&["env", "list"]);
    assert!(
        listed.contains("pr-20") && listed.contains("left"),
        "{listed}"
    );

    // A newer release goes in as into any environment, and proves nothing for the main path.
    s.register("1.1.0", &[]);
    s.ok(&["promote", "web@1.1.0", "--to", "pr-1", "--wait"]);
    let refused = s.refused(&["promote", "web@1.1.0", "--to", "production"]);
    assert!(refused.contains("not verified in staging"), "{refused}");

    std::thread::scope(|scope| {
        for batch in made.chunks(5) {
            let s = &s;
            scope.spawn(move || {
                for env in batch {
                    let name = env["name"].as_str().unwrap();
                    let said = s.ok(&["env", "delete", name]);
                    assert!(said.contains(&format!("{name} deleted")), "{said}");
                    let port = u16::try_from(env["port"].as_u64().unwrap()).unwrap();
                    gone_without_a_trace(s, name, port);
                }
            });
        }
    });
    assert_eq!(s.json(&["env", "list"]), serde_json::json!([]));
    let audit = s.ok(&["audit", "--env", "pr-7"]);
    assert!(
        audit.contains("environment.deleted") && audit.contains("deleted pr-7"),
        "{audit}"
    );
}

#[test]
fn quotas_say_who_holds_the_slots_and_until_when_and_scopes_cover_prefixes() {
    let s = started(&previews("max = 3\nmax_per_requester = 1"));
    let bot = s.token("pr-bot", "deployer", &["pr-*"]);
    let carol = s.token("carol", "deployer", &[]);
    let dave = s.token("dave", "deployer", &[]);
    s.ok_as(&bot, &["env", "create", "pr-1", "--template", "preview"]);
    let outside = s.refused_as(&bot, &["env", "create", "uat-1", "--template", "preview"]);
    assert!(
        outside.contains("limited to pr-*; it may not act on uat-1"),
        "{outside}"
    );
    let staging = s.refused_as(&bot, &["env", "delete", "staging"]);
    assert!(staging.contains("limited to pr-*"), "{staging}");
    let again = s.refused_as(&bot, &["env", "create", "pr-2", "--template", "preview"]);
    assert!(
        again.contains("pr-bot already holds 1 environments of template preview, as many as one requester may (max_per_requester = 1): pr-1 (expires "),
        "{again}"
    );
    s.ok_as(&carol, &["env", "create", "pr-2", "--template", "preview"]);
    s.ok(&[
        "env",
        "create",
        "pr-3",
        "--template",
        "preview",
        "--ttl",
        "2h",
    ]);
    let full = s.refused_as(&dave, &["env", "create", "pr-4", "--template", "preview"]);
    assert!(
        full.contains(
            "template preview allows 3 environments at once and all 3 exist: pr-3 (held by admin-"
        ),
        "{full}"
    );
    assert!(
        full.contains("pr-1 (held by pr-bot") && full.contains("pr-2 (held by carol"),
        "{full}"
    );
    assert!(
        full.contains("delete one (shipgate env delete NAME) or wait until one expires"),
        "{full}"
    );
    let viewer = s.token("v", "viewer", &[]);
    let denied = s.refused_as(&viewer, &["env", "delete", "pr-1"]);
    assert!(
        denied.contains("may not create, extend or delete on-demand environments"),
        "{denied}"
    );
    let extended = s.ok_as(&bot, &["env", "extend", "pr-1", "--ttl", "72h"]);
    // Seconds left are rounded up: 2d 23h only if a second went by between the two.
    assert!(
        extended.contains("pr-1 expires")
            && (extended.contains("(3d 0h left)") || extended.contains("(2d 23h left)")),
        "{extended}"
    );
    s.ok_as(&bot, &["env", "delete", "pr-1"]);
    s.ok_as(&dave, &["env", "create", "pr-4", "--template", "preview"]);
    let configured = s.refused(&["env", "create", "staging", "--template", "preview"]);
    assert!(
        configured.contains("`staging` is an environment of the config"),
        "{configured}"
    );

    // The dashboard lists them apart from the main path; Delete is there for who may.
    let seen = crate::dashboard::sign_in(&s, &viewer);
    let (status, _, board) =
        crate::dashboard::raw(&s, "GET", "/", &[("Cookie", seen.as_str())], "");
    assert_eq!(status, 200);
    assert!(board.contains("On-demand environments"), "{board}");
    assert!(
        board.contains("<th scope=\"row\">pr-2</th>") && board.contains(">carol<"),
        "{board}"
    );
    assert!(
        !board.contains("<th scope=\"col\">pr-2</th>"),
        "not a column of the main path"
    );
    assert!(
        !board.contains(">Delete<"),
        "a viewer gets no Delete button"
    );
    let deployer = crate::dashboard::sign_in(&s, &carol);
    let auth = [("Cookie", deployer.as_str())];
    let (_, _, board) = crate::dashboard::raw(&s, "GET", "/", &auth, "");
    assert!(
        board.contains(">Delete<") && board.contains("left"),
        "{board}"
    );
    let csrf = crate::dashboard::csrf_of(&board);
    let (status, _, asked) = crate::dashboard::raw(
        &s,
        "POST",
        "/envs/pr-2/delete",
        &auth,
        &format!("csrf={csrf}"),
    );
    assert_eq!(status, 200, "{asked}");
    assert!(
        asked.contains("Delete pr-2?"),
        "a post that names nothing is asked: {asked}"
    );
    assert!(listed(&s, "pr-2").is_some(), "asked, not deleted");
    let (status, head, _) = crate::dashboard::raw(
        &s,
        "POST",
        "/envs/pr-2/delete",
        &auth,
        &format!("csrf={csrf}&confirm=pr-2"),
    );
    assert_eq!(status, 303, "{head}");
    assert!(listed(&s, "pr-2").is_none(), "deleted from the dashboard");
    let audit = s.ok(&["audit", "--env", "pr-2"]);
    assert!(audit.contains("carol deleted pr-2"), "{audit}");
}

#[test]
fn a_preview_with_under_a_minute_left_shows_its_seconds_not_due() {
    let s = started(&previews("max = 2"));
    create(&s, "pr-1", &["--ttl", "59s"]);
    let list = s.ok(&["env", "list"]);
    let row = list
        .lines()
        .find(|l| l.starts_with("pr-1 "))
        .unwrap_or_else(|| panic!("no pr-1 in:\n{list}"));
    let left: u64 = row
        .rsplit_once('(')
        .and_then(|(_, l)| l.strip_suffix("s left)"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not `(Ns left)`: {row}"));
    assert!((1..=59).contains(&left), "{row}");
    assert!(!row.contains("due"), "{row}");
    let json = listed(&s, "pr-1").unwrap();
    assert!(json["expires_in_secs"].as_u64().unwrap() >= 1, "{json}");
}

#[test]
fn the_dashboard_asks_before_deleting_an_on_demand_environment_and_names_it() {
    let s = started(&previews("max = 2"));
    create(&s, "pr-1", &[]);
    let carol = s.token("carol", "deployer", &[]);
    let b = crate::browser::Browser::start();
    b.goto(&format!("{}/", s.api()));
    b.type_into("#token", &carol);
    b.click("#sign-in");
    wait_for("the board after signing in", || {
        b.url() == format!("{}/", s.api())
    });
    let delete = "tr[data-env=pr-1] button.danger";

    // Delete asks first, naming the environment; Cancel keeps it.
    b.click(delete);
    wait_for("the question before deleting pr-1", || {
        b.text("main").contains("Delete pr-1?")
    });
    let question = b.text("main");
    assert!(
        question.contains("pr-1") && question.contains("cannot be undone"),
        "{question}"
    );
    assert!(listed(&s, "pr-1").is_some(), "asked, not deleted yet");
    b.click("#delete-cancel");
    wait_for("the board after cancelling", || {
        b.url() == format!("{}/", s.api())
    });
    assert!(listed(&s, "pr-1").is_some(), "cancelled: pr-1 stays");
    assert!(b.text("table.on-demand").contains("pr-1"));

    // Confirmed, it goes.
    b.click(delete);
    wait_for("the question before deleting pr-1", || {
        b.text("main").contains("Delete pr-1?")
    });
    b.click("#delete-confirm");
    wait_for("the board after deleting", || {
        b.url() == format!("{}/", s.api())
    });
    assert!(listed(&s, "pr-1").is_none(), "deleted once confirmed");
    assert!(!b.text("main").contains("pr-1"), "{}", b.text("main"));
    let audit = s.ok(&["audit", "--env", "pr-1"]);
    assert!(audit.contains("carol deleted pr-1"), "{audit}");
}

#[test]
fn dora_leaves_out_deleted_previews_and_keeps_configured_environments_without_promotions() {
    let s = started(&previews("max = 3"));
    s.register("1.0.0", &[]);
    create(&s, "pr-1", &["--release", "web@1.0.0"]);
    create(&s, "pr-2", &["--release", "web@1.0.0"]);
    s.ok(&["env", "delete", "pr-1"]);
    let figures = |s: &TestServer| -> Vec<(String, u64)> {
        s.json(&["dora"])["figures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["env"].as_str().unwrap().to_owned(),
                    f["deployments"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let shown = figures(&s);
    let deployments = |shown: &[(String, u64)], env: &str| {
        shown
            .iter()
            .find(|(e, _)| e == env)
            .map(|(_, n)| *n)
            .unwrap_or_else(|| panic!("no {env} in DORA: {shown:?}"))
    };
    assert!(
        !shown.iter().any(|(e, _)| e == "pr-1"),
        "pr-1 is gone: {shown:?}"
    );
    assert_eq!(deployments(&shown, "pr-2"), 1);
    for env in crate::helpers::ENVS {
        assert_eq!(deployments(&shown, env), 0, "configured, nothing promoted");
    }
    let text = s.ok(&["dora"]);
    assert!(!text.contains("pr-1") && text.contains("pr-2"), "{text}");

    // A new pr-1 starts afresh: the deleted one's deployment is not its.
    create(&s, "pr-1", &["--release", "web@1.0.0"]);
    assert_eq!(deployments(&figures(&s), "pr-1"), 1);
}

/// The on-demand environment `name` as `env list` has it, if it exists.
fn listed(s: &TestServer, name: &str) -> Option<Value> {
    s.json(&["env", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .cloned()
}

#[test]
fn a_server_killed_mid_create_or_mid_delete_finishes_the_job_after_a_restart() {
    let mut s = started(&previews("max = 5").replace(
        "verify.tests = [\"sh smoke.sh ${URL}\"]\n",
        "verify.tests = [\"sh smoke.sh ${URL}\"]\ndrain = \"60s\"\n",
    ));
    s.register("1.0.0", &[]);
    // Held before listening: the creation is cut off while it deploys.
    let held = s.app_release("2.0.0-held", &[("SLOW", "never")]);
    s.register_dir("2.0.0-held", &held);
    let mut creating = crate::helpers::command(s.dir.path());
    creating.args([
        "env",
        "create",
        "pr-held",
        "--template",
        "preview",
        "--release",
        "web@2.0.0-held",
    ]);
    let mut creating = creating
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the held instance to start", || {
        !processes_of("pr-held").is_empty()
    });
    let port = u16::try_from(listed(&s, "pr-held").unwrap()["port"].as_u64().unwrap()).unwrap();
    s.kill9();
    let _ = creating.wait();
    s.restart();
    wait_for("the cut-off creation to be deleted", || {
        listed(&s, "pr-held").is_none()
    });
    gone_without_a_trace(&s, "pr-held", port);
    let audit = s.ok(&["audit", "--env", "pr-held"]);
    assert!(
        audit.contains("its creation or deletion had been cut off"),
        "{audit}"
    );

    // A request in flight holds the deletion (it drains first), and the server is killed then.
    let env = create(&s, "pr-busy", &["--release", "web@1.0.0"]);
    let port = u16::try_from(env["port"].as_u64().unwrap()).unwrap();
    let url = env["url"].as_str().unwrap().to_owned();
    let in_flight =
        std::thread::spawn(move || crate::helpers::http_get(&format!("{url}/slow?ms=20000"), None));
    wait_for("the slow request to be in flight", || {
        !processes_of("pr-busy").is_empty()
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut deleting = crate::helpers::command(s.dir.path());
    deleting.args(["env", "delete", "pr-busy"]);
    let mut deleting = deleting
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the deletion to begin", || {
        listed(&s, "pr-busy").is_some_and(|e| e["state"] == "deleting")
    });
    s.kill9();
    let _ = deleting.wait();
    assert!(
        !processes_of("pr-busy").is_empty(),
        "the instance outlived the server"
    );
    s.restart();
    wait_for("the cut-off deletion to be finished", || {
        listed(&s, "pr-busy").is_none()
    });
    gone_without_a_trace(&s, "pr-busy", port);
    let _ = in_flight.join();
}

/// Runs `sql` with the cluster's own `psql` against `url`; its output, trimmed.
fn psql(url: &str, sql: &str) -> String {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap()
        .flatten()
        .map(|d| d.path().join("bin/psql"))
        .find(|p| p.exists())
        .expect("PostgreSQL's psql");
    let out = Command::new(bin)
        .args([url, "-qAt", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .unwrap();
    assert!(out.status.success(), "{sql}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn a_preview_on_postgresql_gets_a_database_of_its_own_dropped_with_it_and_leftovers_go_too() {
    let production = crate::helpers::postgres_database("od_prod");
    psql(
        &production,
        "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL, full_name text); INSERT INTO users SELECT i, 'user' || i || '@corp.example', 'Real Name ' || i FROM generate_series(1, 100) i",
    );
    let config = previews("max = 3").replace(
        "production = \"sqlite://production.db\"",
        &format!("production = \"{production}\""),
    );
    let s = spawn_server(&config);
    s.register("1.0.0", &[]);
    let env = create(&s, "pr-pg", &["--release", "web@1.0.0"]);
    assert!(
        env["outcome"]
            .as_str()
            .unwrap()
            .contains("masked: 100 rows"),
        "{env}"
    );
    let (server, db) = production.rsplit_once('/').unwrap();
    let own = format!("{server}/{db}__od_pr_pg");
    assert_eq!(psql(&own, "SELECT count(*) FROM users"), "100");
    assert_eq!(
        psql(
            &own,
            "SELECT count(*) FROM users WHERE email IN (SELECT 'user' || i || '@corp.example' FROM generate_series(1, 100) i)"
        ),
        "0",
        "no real email in the preview"
    );
    let databases = |name: &str| {
        psql(
            &production,
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
        )
    };
    s.ok(&["env", "delete", "pr-pg"]);
    assert_eq!(
        databases(&format!("{db}__od_pr_pg")),
        "0",
        "dropped with it"
    );
    // A database a crash left (no row owns it) is dropped by the next reaper pass; one of
    // another database's previews on the same server is not this server's to drop.
    psql(&production, &format!("CREATE DATABASE {db}__od_ghost"));
    psql(&production, "CREATE DATABASE someone_else__od_pr_9");
    wait_for("the leftover database to be dropped", || {
        databases(&format!("{db}__od_ghost")) == "0"
    });
    assert_eq!(databases("someone_else__od_pr_9"), "1");
    psql(&production, "DROP DATABASE someone_else__od_pr_9");
}

/// Whether the system has the user `name`.
fn has_user(name: &str) -> bool {
    std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .any(|l| l.split(':').next() == Some(name))
}

#[test]
fn a_deleted_environment_takes_its_unix_user_along_and_a_start_removes_those_left_behind() {
    if !crate::helpers::root_or_skip("on_demand::users") {
        return;
    }
    // Left by an environment deleted while no server ran.
    let tag = std::process::id() % 100_000;
    let left = format!("sg-left-{tag}");
    let made = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
        ])
        .args(["--comment", "shipgate on-demand environment", &left])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    let s = started(&previews(""));
    wait_for("the user left behind to be removed at start", || {
        !has_user(&left)
    });

    let name = format!("users-{tag}");
    s.register("1.0.0", &[]);
    s.ok(&[
        "env",
        "create",
        &name,
        "--template",
        "preview",
        "--release",
        "web@1.0.0",
    ]);
    let user = format!("sg-{name}");
    assert!(
        has_user(&user),
        "a sandboxed environment runs as a user of its own"
    );
    let said = s.ok(&["env", "delete", &name]);
    assert!(said.contains(&format!("{name} deleted")), "{said}");
    assert!(!has_user(&user), "{user} is left behind");
    let audit = s.ok(&["audit", "--env", &name]);
    assert!(audit.contains(&format!("user {user} removed")), "{audit}");
    // A configured environment's user stays.
    s.walk("1.0.0", "development");
    let configured = s.cli(&["env", "delete", "development"]);
    assert!(!configured.status.success());
    assert!(has_user("sg-development"));
}
