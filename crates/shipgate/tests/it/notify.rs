//! Notifications through a running server to a real receiver: every event reaches a receiver
//! that fails half its requests, at least once and with the same `webhook-id` on every attempt;
//! the signatures verify with the `standardwebhooks` package from PyPI; a server killed with -9
//! between writing an event and sending it delivers it after its restart; dead letters are
//! listed and sent again; `notify test` reaches one target.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{TestServer, four_envs, free_port, python_venv, spawn_server};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A webhook receiver on `port` that answers 500 to every other request (with `flaky`),
/// checks each signature with `standardwebhooks`, and writes a line per request to `log`.
struct Receiver(std::process::Child);

impl Receiver {
    fn start(port: u16, log: &Path, flaky: bool) -> Receiver {
        let python = python_venv("webhooks-venv", &["standardwebhooks==1.3.0"]);
        let script = format!(
            r#"
import json, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from standardwebhooks.webhooks import Webhook
hook = Webhook({SECRET:?})
seen = [0]
lock = threading.Lock()
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        with lock:
            seen[0] += 1
            fail = {flaky} and seen[0] % 2 == 0
        try:
            hook.verify(body, {{k.lower(): v for k, v in self.headers.items()}})
            verified = True
        except Exception as e:
            verified = str(e)
        with open({log:?}, "a") as f:
            f.write(json.dumps({{"id": self.headers["webhook-id"], "type": self.headers["content-type"], "verified": verified, "failed": fail, "body": json.loads(body)}}) + "\n")
        self.send_response(500 if fail else 204)
        self.end_headers()
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", {port}), H).serve_forever()
"#,
            flaky = if flaky { "True" } else { "False" },
            log = log.to_str().unwrap(),
        );
        let child = std::process::Command::new(python)
            .arg("-c")
            .arg(script)
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Receiver(child)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn received(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn started(port: u16, extra: &str) -> TestServer {
    let config = format!(
        "{}\n[notify.ops]\nurl = \"http://127.0.0.1:{port}/hook\"\nevents = [\"environment.*\", \"notify.test\"]\nsecret = \"{SECRET}\"\n{extra}\n",
        four_envs("")
    );
    spawn_server(&config)
}

/// The ids of the events of `kinds` in the audit log.
fn event_ids(s: &TestServer, family: &str) -> BTreeSet<i64> {
    s.json(&["audit", "--limit", "1000"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"].as_str().unwrap().starts_with(family))
        .map(|e| e["id"].as_i64().unwrap())
        .collect()
}

/// Waits (up to a minute) until every event of `ids` was taken by the receiver.
fn taken_all(log: &Path, ids: &BTreeSet<i64>) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = received(log);
        let taken: BTreeSet<i64> = got
            .iter()
            .filter(|r| r["failed"] == false)
            .filter_map(|r| r["body"]["data"]["id"].as_i64())
            .collect();
        if ids.is_subset(&taken) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "not every event was delivered: wanted {ids:?}, taken {taken:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_receiver_that_fails_half_its_requests_still_gets_every_event_signed() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("received.jsonl");
    let _receiver = Receiver::start(port, &log, true);
    let s = started(port, "max_attempts = 20");
    for i in 0..6 {
        s.ok(&[
            "freeze",
            "--env",
            "staging",
            "--reason",
            &format!("freeze {i}"),
        ]);
        s.ok(&["unfreeze", "--env", "staging"]);
    }
    let ids = event_ids(&s, "environment.");
    assert_eq!(ids.len(), 12);
    let got = taken_all(&log, &ids);
    assert!(
        got.iter().any(|r| r["failed"] == true),
        "the receiver failed some"
    );
    for r in &got {
        assert_eq!(r["verified"], true, "{r}");
        assert_eq!(r["type"], "application/cloudevents+json");
        assert_eq!(r["body"]["specversion"], "1.0");
    }
    // Every attempt of one event has the same webhook-id, so receivers deduplicate by it.
    let mut ids_of: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for r in &got {
        ids_of
            .entry(r["body"]["data"]["id"].as_i64().unwrap())
            .or_default()
            .insert(r["id"].as_str().unwrap().to_owned());
    }
    assert!(ids_of.values().all(|ids| ids.len() == 1), "{ids_of:?}");
    // Only what the target asked for: promotions and tokens were not sent.
    assert!(got.iter().all(|r| {
        r["body"]["type"]
            .as_str()
            .unwrap()
            .starts_with("dev.shipgate.environment.")
    }));

    // A test event reaches the target; the list shows what was delivered.
    let said = s.ok(&["notify", "test", "ops"]);
    assert!(said.contains("on its way to ops"), "{said}");
    let tests = event_ids(&s, "notify.test");
    taken_all(&log, &tests);
    let view = s.json(&["notify", "list"]);
    assert_eq!(view["targets"][0]["name"], "ops");
    assert_eq!(
        view["targets"][0]["url"],
        format!("http://127.0.0.1:{port}/…")
    );
    assert!(
        view["targets"][0]["delivered"].as_u64().unwrap() >= 13,
        "{view}"
    );
    assert!(
        s.refused(&["notify", "test", "nobody"])
            .contains("no [notify.nobody] in the config")
    );
}

#[test]
fn after_an_outage_a_receiver_gets_the_events_in_the_order_they_happened() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("received.jsonl");
    let s = started(port, "max_attempts = 20");
    let freeze_and_unfreeze = |times: usize| {
        for i in 0..times {
            s.ok(&[
                "freeze",
                "--env",
                "staging",
                "--reason",
                &format!("freeze {i}"),
            ]);
            s.ok(&["unfreeze", "--env", "staging"]);
        }
    };
    // The receiver is down: the first events fail and back off (1 s, 2 s, 4 s, …).
    freeze_and_unfreeze(5);
    std::thread::sleep(Duration::from_secs(6));
    let _receiver = Receiver::start(port, &log, false);
    // Back up: newer events are not let past the older ones still backing off.
    freeze_and_unfreeze(3);
    let ids = event_ids(&s, "environment.");
    assert_eq!(ids.len(), 16);
    let got = taken_all(&log, &ids);
    let taken: Vec<i64> = got
        .iter()
        .filter(|r| r["failed"] == false)
        .map(|r| r["body"]["data"]["id"].as_i64().unwrap())
        .collect();
    assert!(
        taken.windows(2).all(|w| w[0] < w[1]),
        "taken out of order: {taken:?}"
    );
    for r in &got {
        assert_eq!(r["verified"], true, "{r}");
    }
}

#[test]
fn killed_between_the_write_and_the_send_it_delivers_after_its_restart_and_dead_letters_go_again() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("received.jsonl");
    // Nothing listens yet: no send can succeed before the kill.
    let mut s = started(port, "max_attempts = 2");
    s.ok(&["freeze", "--env", "production", "--reason", "year-end"]);
    s.kill9();
    let receiver = Receiver::start(port, &log, false);
    s.restart();
    let frozen = event_ids(&s, "environment.frozen");
    let got = taken_all(&log, &frozen);
    assert!(got.iter().all(|r| r["verified"] == true));

    // With the receiver gone, a delivery runs out of attempts and waits on the dead-letter
    // list; `notify retry` sends it again once the receiver is back.
    drop(receiver);
    s.ok(&["unfreeze", "--env", "production"]);
    let unfrozen = event_ids(&s, "environment.unfrozen");
    let deadline = Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let view = s.json(&["notify", "list"]);
        if let Some(d) = view["dead"].as_array().and_then(|d| d.first()).cloned() {
            break d;
        }
        assert!(Instant::now() < deadline, "no dead letter: {view}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(dead["attempts"], 2);
    assert!(
        dead["last_error"]
            .as_str()
            .unwrap()
            .contains("POST http://127.0.0.1"),
        "{dead}"
    );
    let listed = s.ok(&["notify", "list"]);
    assert!(
        listed.contains("dead letters") && listed.contains("2 attempts"),
        "{listed}"
    );
    let _back = Receiver::start(port, &log, false);
    let again = s.ok(&["notify", "retry", "--all"]);
    assert!(again.contains("is sent again"), "{again}");
    taken_all(&log, &unfrozen);
    assert!(
        s.json(&["notify", "list"])["dead"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.messages_of("notify.retried").len(), 1);
}

#[test]
fn dora_counts_what_was_promoted_failed_and_restored() {
    let s = spawn_server(&four_envs(""));
    let now = jiff::Timestamp::now();
    for (version, hours) in [("1.0.0", 2), ("1.1.0", 1)] {
        let dir = s.app_release(version, &[]);
        let commit_time = now - jiff::SignedDuration::from_hours(hours);
        s.ok(&[
            "release",
            "create",
            "web",
            "--version",
            version,
            "--artifact",
            dir.to_str().unwrap(),
            "--commit-time",
            &commit_time.to_string(),
        ]);
        s.walk(version, "production");
    }
    // 1.1.0 is rolled back by hand: a failed change, restored by the rollback.
    s.ok(&["rollback", "web", "--env", "production", "--wait"]);
    let refused = s.cli(&[
        "release",
        "create",
        "web",
        "--version",
        "9.0.0",
        "--artifact",
        ".",
        "--commit-time",
        "yesterday",
    ]);
    assert!(crate::helpers::text(&refused).contains("is not an RFC 3339 time"));

    let view = s.json(&["dora", "--days", "7"]);
    assert_eq!(view["production"], "production");
    let of = |env: &str| {
        view["figures"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["env"] == env)
            .unwrap()
            .clone()
    };
    let prod = of("production");
    assert_eq!(prod["deployments"], 2, "{prod}");
    assert_eq!(prod["changes"], 2);
    assert_eq!(prod["failed_changes"], 1);
    assert_eq!(prod["change_failure_rate"], 0.5);
    assert_eq!(prod["frequency"], "weekly");
    // Lead times about 2 h and 1 h: the median about 1.5 h.
    let lead = prod["lead_time_secs"].as_f64().unwrap();
    assert!((5400.0..5700.0).contains(&lead), "{lead}");
    assert_eq!(prod["lead_time"], "under a day");
    assert_eq!(prod["unrestored"], 0);
    assert!(prod["restore_secs"].as_f64().unwrap() < 600.0, "{prod}");
    let testing = of("testing");
    assert_eq!(
        (
            testing["deployments"].as_u64(),
            testing["failed_changes"].as_u64()
        ),
        (Some(2), Some(0))
    );
    let text = s.ok(&["dora"]);
    assert!(
        text.contains("production (production)") && text.contains("50% (1/2)"),
        "{text}"
    );

    let admin = std::fs::read_to_string(s.data_dir().join("admin.token")).unwrap();
    let cookie = crate::dashboard::sign_in(&s, admin.trim());
    let (status, _, page) = crate::dashboard::raw(
        &s,
        "GET",
        "/dora?days=7",
        &[("Cookie", cookie.as_str())],
        "",
    );
    assert_eq!(status, 200);
    assert!(
        page.contains("DORA metrics, last 7 days")
            && page.contains("50% (1 of 2)")
            && page.contains("<svg class=\"dora\""),
        "{page}"
    );
}

#[test]
fn a_commit_whose_time_git_cannot_tell_is_warned_about_at_release_create() {
    let s = spawn_server(&four_envs(""));
    let create = |version: &str, extra: &[&str]| {
        let dir = s.app_release(version, &[]);
        let mut args = vec![
            "release",
            "create",
            "web",
            "--version",
            version,
            "--artifact",
            dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = s.cli(&args);
        assert!(out.status.success(), "{}", crate::helpers::text(&out));
        String::from_utf8(out.stderr).unwrap()
    };
    let says_what_to_do = |warning: &str, commit: &str| {
        assert!(
            warning.contains("warning: ")
                && warning.contains("lead time will not be computed for this release")
                && warning.contains("run it inside the repository")
                && warning.contains("--commit-time")
                && warning.contains(&format!("git show -s --format=%cI {commit}")),
            "{warning}"
        );
    };
    let commit_time = |version: &str| {
        s.json(&["release", "list", "web"])
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["version"] == version)
            .unwrap()["commit_time"]
            .clone()
    };

    // The tests' folder is no git repository.
    let outside = create("1.0.0", &["--commit", "4f2a9c1"]);
    says_what_to_do(&outside, "4f2a9c1");
    assert!(
        outside.contains("is not inside a git repository"),
        "{outside}"
    );
    assert!(commit_time("1.0.0").is_null());

    // Inside one, a commit git does not know; then one it knows, and a time given: no warning.
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(s.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            crate::helpers::text(&out)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    git(&["init", "-q"]);
    git(&["commit", "-q", "--allow-empty", "-m", "first"]);
    let head = git(&["rev-parse", "HEAD"]);
    let unknown = create("1.1.0", &["--commit", "deadbeef"]);
    says_what_to_do(&unknown, "deadbeef");
    assert!(
        unknown.contains("git does not know commit deadbeef"),
        "{unknown}"
    );
    assert!(!create("1.2.0", &["--commit", &head]).contains("warning"));
    assert!(!commit_time("1.2.0").is_null(), "read from git");
    let given = create(
        "1.3.0",
        &[
            "--commit",
            "4f2a9c1",
            "--commit-time",
            "2026-12-01T09:30:00Z",
        ],
    );
    assert!(!given.contains("warning"), "{given}");
}

#[test]
fn a_firing_alert_shows_in_status_and_on_the_environment_page() {
    let s = spawn_server(&format!(
        "{}\n[alerts.errors]\nenv = \"development\"\nwhen = \"error_rate > 0.05\"\n",
        four_envs("")
    ));
    s.register("1.0.0", &[("BUG", "")]);
    s.deploy("1.0.0", "development");
    let url = format!("{}/", s.url("development"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for _ in 0..20 {
            let _ = s.get(&url);
        }
        let status = s.ok(&["status"]);
        if status.contains("alerts firing:") {
            assert!(
                status.contains("errors: error_rate > 0.05 (web in development)"),
                "{status}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the alert did not fire: {status}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let firing = s.messages_of("alert.firing");
    assert_eq!(firing.len(), 1, "{firing:?}");
    // DORA's time to restore counts the firing alert: still open, so unrestored.
    let dora = s.json(&["dora", "--days", "1"]);
    let dev = dora["figures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["env"] == "development")
        .unwrap()
        .clone();
    assert_eq!(
        (dev["failed_changes"].as_u64(), dev["unrestored"].as_u64()),
        (Some(0), Some(1)),
        "{dev}"
    );
    let admin = std::fs::read_to_string(s.data_dir().join("admin.token")).unwrap();
    let cookie = crate::dashboard::sign_in(&s, admin.trim());
    let (_, _, page) = crate::dashboard::raw(
        &s,
        "GET",
        "/apps/web/environments/development",
        &[("Cookie", cookie.as_str())],
        "",
    );
    assert!(
        page.contains("Alerts firing") && page.contains("errors: error_rate &#62; 0.05"),
        "{page}"
    );
}
