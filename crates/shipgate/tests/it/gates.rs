//! Gates end to end: approvals, soak, freezes, deploy windows and overrides, watched
//! verification with automatic rollback, held verifications, HTTP checks and auto-promotion.
//! The rules' clock-dependent edges (soak ends, windows across daylight saving) are unit-tested
//! with a fixed clock in `shipgate-core`; here the real server proves they are enforced.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{
    TestServer, four_envs_with, free_port, http_get, spawn_server, text, wait_for,
};

fn state_of(s: &TestServer, env: &str) -> String {
    s.latest(env)["state"].as_str().unwrap().to_owned()
}

fn gate_names(p: &Value) -> Vec<String> {
    p["gates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap().to_owned())
        .collect()
}

fn event_messages(s: &TestServer, kind: &str) -> Vec<String> {
    s.json(&["audit", "--limit", "1000"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| e["message"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn approvals_come_from_distinct_people_never_the_requester() {
    let s = spawn_server(&four_envs_with(
        "",
        &[(
            "production",
            "require.approvals = { count = 2, role = \"approver\" }",
        )],
    ));
    let alice = s.token("alice", "approver", &[]);
    let bob = s.token("bob", "approver", &[]);
    let carol = s.token("carol", "deployer", &[]);
    let dana = s.token("dana", "admin", &[]);
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "staging");

    s.ok_as(&dana, &["promote", "web@1.0.0", "--to", "production"]);
    wait_for("the promotion to wait on approvals", || {
        s.waits("production") == ["0 of 2 approvals from the role approver"]
    });
    let own = s.refused_as(&dana, &["approve", "web@1.0.0", "--env", "production"]);
    assert!(
        own.contains("dana asked for this promotion, so dana may not approve it"),
        "{own}"
    );
    let deployer = s.refused_as(&carol, &["approve", "web@1.0.0", "--env", "production"]);
    assert!(
        deployer.contains("has the role deployer, which may not approve"),
        "{deployer}"
    );

    s.ok_as(
        &alice,
        &[
            "approve",
            "web@1.0.0",
            "--env",
            "production",
            "--comment",
            "looks good",
        ],
    );
    wait_for("one approval to count", || {
        s.waits("production") == ["1 of 2 approvals (alice) from the role approver"]
    });
    let text = s.ok(&["status", "web"]);
    assert!(
        text.contains("waits on:\n    - 1 of 2 approvals (alice)"),
        "{text}"
    );
    let twice = s.refused_as(&alice, &["approve", "web@1.0.0", "--env", "production"]);
    assert!(twice.contains("alice has already decided"), "{twice}");
    assert_eq!(state_of(&s, "production"), "pending");
    assert_eq!(
        s.version("production"),
        None,
        "nothing deployed before the approvals"
    );

    s.ok_as(&bob, &["approve", "web@1.0.0", "--env", "production"]);
    wait_for("production to be verified", || {
        state_of(&s, "production") == "succeeded"
    });
    assert_eq!(s.version("production").as_deref(), Some("1.0.0"));
    let p = s.latest("production");
    let approvals = p["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "approvals")
        .unwrap();
    let output = approvals["output"].as_str().unwrap();
    assert!(
        output.starts_with("2 of 2 approvals, requested by dana"),
        "{output}"
    );
    assert!(
        output.contains("alice at ")
            && output.contains(": looks good")
            && output.contains("bob at "),
        "{output}"
    );
    assert_eq!(p["decisions"].as_array().unwrap().len(), 2);

    // Approvals belong to one promotion: a superseding request starts from zero.
    s.register("1.1.0", &[]);
    s.walk("1.1.0", "staging");
    s.ok_as(&dana, &["promote", "web@1.1.0", "--to", "production"]);
    s.ok_as(&alice, &["approve", "web@1.1.0", "--env", "production"]);
    wait_for("alice's approval", || {
        s.waits("production")[0].starts_with("1 of 2")
    });
    s.ok_as(&dana, &["promote", "web@1.1.0", "--to", "production"]);
    wait_for("the new promotion to start from zero", || {
        s.waits("production") == ["0 of 2 approvals from the role approver"]
    });

    // A rejection needs a reason and ends the promotion.
    let out = s.cli_as(&bob, &["reject", "web@1.1.0", "--env", "production"]);
    assert_eq!(out.status.code(), Some(2), "clap requires --comment");
    s.ok_as(
        &bob,
        &[
            "reject",
            "web@1.1.0",
            "--env",
            "production",
            "--comment",
            "not on a Friday",
        ],
    );
    wait_for("the rejection to end it", || {
        state_of(&s, "production") == "failed"
    });
    let p = s.latest("production");
    assert_eq!(p["reason"], "rejected by bob: not on a Friday");
    assert_eq!(s.version("production").as_deref(), Some("1.0.0"));
    let approved = event_messages(&s, "approval.approved");
    assert!(
        approved.contains(&"alice approved web@1.0.0 into production: looks good".to_owned()),
        "{approved:?}"
    );
    assert_eq!(
        event_messages(&s, "approval.rejected"),
        ["bob rejected web@1.1.0 into production: not on a Friday"]
    );
}

#[test]
fn a_soaking_promotion_proceeds_by_itself_when_the_soak_ends() {
    let s = spawn_server(&four_envs_with(
        "",
        &[("production", "require.soak = \"3s\"")],
    ));
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "staging");
    let staged: jiff::Timestamp = s.latest("staging")["updated_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    s.ok(&["promote", "web@1.0.0", "--to", "production"]);
    wait_for("the soak to show", || !s.waits("production").is_empty());
    let waits = s.waits("production");
    assert_eq!(waits.len(), 1, "{waits:?}");
    assert!(
        waits[0].starts_with("soak in staging ends at "),
        "{waits:?}"
    );
    // Nobody acts: the promotion deploys once the soak is over.
    wait_for("production to be verified", || {
        state_of(&s, "production") == "succeeded"
    });
    let p = s.latest("production");
    assert_eq!(gate_names(&p)[..2], ["soak", "deploy"]);
    let deployed: jiff::Timestamp = p["gates"][1]["started_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        deployed >= staged + jiff::SignedDuration::from_secs(3),
        "deployed at {deployed}, verified in staging at {staged}"
    );
}

#[test]
fn freezes_and_deploy_windows_hold_promotions_and_an_admin_override_is_audited() {
    // A daily window that opens two hours from now: closed for the whole test.
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    let opens = now.hour() as i64 + 2;
    let window = format!("daily {:02}:00-{:02}:30 UTC", opens % 24, opens % 24);
    let s = spawn_server(&four_envs_with(
        "",
        &[("production", &format!("require.window = \"{window}\""))],
    ));
    let deployer = s.token("carol", "deployer", &[]);
    let scoped = s.token("dev-approver", "approver", &["development"]);
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "testing");

    s.ok(&["freeze", "--env", "staging", "--reason", "year-end"]);
    s.ok(&["promote", "web@1.0.0", "--to", "staging"]);
    wait_for("the freeze to hold the promotion", || {
        s.waits("staging")
            .first()
            .is_some_and(|w| w.contains("staging is frozen by") && w.contains(": year-end"))
    });
    assert_eq!(s.version("staging"), None);
    let all = s.refused_as(&scoped, &["freeze", "--all", "--reason", "x"]);
    assert!(all.contains("limited to no environment"), "{all}");
    s.ok(&["unfreeze", "--env", "staging"]);
    wait_for("staging to be verified", || {
        state_of(&s, "staging") == "succeeded"
    });

    s.ok(&["promote", "web@1.0.0", "--to", "production"]);
    wait_for("the window to hold the promotion", || {
        s.waits("production")
            .first()
            .is_some_and(|w| w.starts_with("deploy window opens "))
    });
    let no = s.refused_as(
        &deployer,
        &[
            "promote",
            "web@1.0.0",
            "--to",
            "production",
            "--override",
            "x",
        ],
    );
    assert!(
        no.contains("may not override deploy windows and freezes"),
        "{no}"
    );
    s.ok(&[
        "promote",
        "web@1.0.0",
        "--to",
        "production",
        "--override",
        "hotfix for incident 42",
        "--wait",
    ]);
    assert_eq!(s.version("production").as_deref(), Some("1.0.0"));
    let p = s.latest("production");
    assert!(gate_names(&p).contains(&"override".to_owned()), "{p}");
    let overrides = event_messages(&s, "promotion.override");
    assert_eq!(overrides.len(), 1, "{overrides:?}");
    assert!(overrides[0].ends_with("overrode deploy windows and freezes for web@1.0.0 into production: hotfix for incident 42"), "{overrides:?}");

    // Freezing everything holds every environment; lifting it lets the promotion go.
    s.ok(&["freeze", "--all", "--reason", "incident 43"]);
    let text = s.ok(&["status"]);
    assert!(
        text.contains("frozen:\n  every environment frozen by "),
        "{text}"
    );
    s.register("1.1.0", &[]);
    s.ok(&["promote", "web@1.1.0", "--to", "development"]);
    wait_for("the freeze to hold development", || {
        s.waits("development")
            .first()
            .is_some_and(|w| w.starts_with("every environment is frozen by"))
    });
    s.ok(&["unfreeze", "--all"]);
    wait_for("development to be verified", || {
        state_of(&s, "development") == "succeeded"
    });
}

/// A config with one environment, `production`, watched after every switch.
fn watched(extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\ndata_dir = \"data\"\n\n[apps.web]\nrun = \"python3 server.py --port ${{PORT}}\"\nhealth = \"/healthz\"\n\n[environments.production]\nlisten = \"127.0.0.1:{}\"\n{extra}\n",
        free_port(),
        free_port()
    )
}

#[test]
fn a_release_over_the_error_rate_is_rolled_back_with_the_figure_that_tripped_it() {
    let s = spawn_server(&watched(
        "verify.watch = \"6s\"\nverify.max_error_rate = 0.01\nverify.min_requests = 20\nverify.inconclusive = \"pass\"",
    ));
    s.register("1.0.0", &[]);
    // No traffic yet: too few requests to judge, and `inconclusive = "pass"` accepts it.
    s.ok(&["promote", "web@1.0.0", "--to", "production", "--wait"]);
    let watch = &s.latest("production")["gates"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(watch["name"], "watch");
    assert!(
        watch["output"]
            .as_str()
            .unwrap()
            .contains("verify.inconclusive = \"pass\" accepts it"),
        "{watch}"
    );

    // Constant load on the stable address while a broken release goes live and is rolled back.
    let url = format!("{}/", s.url("production"));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut answers: Vec<(u16, String)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match http_get(&url, None) {
                    Some(r) => answers.push((r.status, r.body)),
                    None => answers.push((0, "no answer".into())),
                }
                thread::sleep(Duration::from_millis(5));
            }
            answers
        })
    };
    s.register("2.0.0", &[("BUG", "")]);
    let out = s.cli(&["promote", "web@2.0.0", "--to", "production", "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let answers = load.join().unwrap();

    assert_eq!(s.version("production").as_deref(), Some("1.0.0"));
    let p = s.latest("production");
    assert_eq!(p["state"], "failed");
    let reason = p["reason"].as_str().unwrap();
    eprintln!("watch rollback reason: {reason}");
    assert!(reason.starts_with("error rate 1.0000 ("), "{reason}");
    assert!(
        reason.ends_with("requests failed) is above verify.max_error_rate 0.01"),
        "{reason}"
    );
    let failed = event_messages(&s, "promotion.failed");
    assert!(
        failed
            .iter()
            .any(|m| m.contains("is above verify.max_error_rate 0.01")
                && m.contains("production is back on web@1.0.0")),
        "{failed:?}"
    );

    let from_bad = |(status, body): &&(u16, String)| {
        *status == 500 && body.contains("fixture app 2.0.0: broken")
    };
    let from_good =
        |(status, body): &&(u16, String)| *status == 200 && body.contains("fixture app 1.0.0");
    let bad_release = answers.iter().filter(from_bad).count();
    let good = answers.iter().filter(from_good).count();
    let other: Vec<&(u16, String)> = answers
        .iter()
        .filter(|a| !from_bad(a) && !from_good(a))
        .collect();
    eprintln!(
        "watch rollback: {} answers under load, {bad_release} from the bad release, {good} from the good one, 0 others",
        answers.len()
    );
    assert!(
        other.is_empty(),
        "requests failed outside the bad release's own errors: {other:?}"
    );
    assert!(
        bad_release >= 20,
        "the watch saw the bad release's errors: {bad_release}"
    );
    assert!(good > 0, "the good release answered before and after");

    // A person may stop a watch that has not tripped yet: the rejection rolls back at once.
    s.register("3.0.0", &[]);
    s.ok(&["promote", "web@3.0.0", "--to", "production"]);
    wait_for("3.0.0 to be watched", || {
        state_of(&s, "production") == "verifying"
    });
    let early = s.refused(&["approve", "web@3.0.0", "--env", "production"]);
    assert!(
        early.contains("is being verified in production and passes or fails by itself"),
        "{early}"
    );
    s.ok(&[
        "reject",
        "web@3.0.0",
        "--env",
        "production",
        "--comment",
        "wrong config",
    ]);
    wait_for("the rejection to roll it back", || {
        state_of(&s, "production") == "failed"
    });
    let reason = s.latest("production")["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.starts_with("rejected by admin-")
            && reason.ends_with(" during the watch: wrong config"),
        "{reason}"
    );
    assert_eq!(s.version("production").as_deref(), Some("1.0.0"));
}

#[test]
fn an_inconclusive_watch_can_hold_for_a_person_and_http_checks_verify_the_body() {
    let s = spawn_server(&watched(
        "verify.watch = \"1s\"\nverify.min_requests = 1000\nverify.inconclusive = \"hold\"\nverify.http = [{ path = \"/version\", status = 200, body = \"^1\\\\.\" }]",
    ));
    let alice = s.token("alice", "approver", &[]);
    s.register("1.0.0", &[]);
    s.ok(&["promote", "web@1.0.0", "--to", "production"]);
    wait_for("the watch to hold for a person", || {
        s.waits("production")
            .first()
            .is_some_and(|w| w.starts_with("a person to decide: only "))
    });
    assert_eq!(state_of(&s, "production"), "verifying");
    s.ok_as(
        &alice,
        &[
            "approve",
            "web@1.0.0",
            "--env",
            "production",
            "--comment",
            "quiet hour",
        ],
    );
    wait_for("the approval to pass it", || {
        state_of(&s, "production") == "succeeded"
    });
    let names = gate_names(&s.latest("production"));
    assert_eq!(
        names,
        [
            "deploy",
            "http: GET /version → 200",
            "watch",
            "watch decision"
        ]
    );

    s.register("1.1.0", &[]);
    s.ok(&["promote", "web@1.1.0", "--to", "production"]);
    wait_for("the second watch to hold", || {
        !s.waits("production").is_empty()
    });
    s.ok_as(
        &alice,
        &[
            "reject",
            "web@1.1.0",
            "--env",
            "production",
            "--comment",
            "saw errors in the logs",
        ],
    );
    wait_for("the rejection to roll it back", || {
        state_of(&s, "production") == "failed"
    });
    assert_eq!(s.version("production").as_deref(), Some("1.0.0"));
    assert_eq!(
        s.latest("production")["reason"],
        "rejected by alice: saw errors in the logs"
    );

    // The body pattern wants a 1.x version: 2.0.0 fails its HTTP check and never stays live.
    s.register("2.0.0", &[]);
    let out = s.cli(&["promote", "web@2.0.0", "--to", "production", "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let p = s.latest("production");
    let reason = p["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("http: GET /version → 200 failed: GET http://"),
        "{reason}"
    );
    assert!(
        reason.contains("but the body does not match /^1\\./"),
        "{reason}"
    );
    assert_eq!(s.version("production").as_deref(), Some("1.0.0"));
}

#[test]
fn auto_promotion_follows_verification_and_still_waits_on_requirements() {
    let s = spawn_server(&four_envs_with(
        "",
        &[
            ("staging", "auto = true"),
            ("production", "auto = true\nrequire.approvals = 1"),
        ],
    ));
    let alice = s.token("alice", "approver", &[]);
    s.register("1.0.0", &[]);
    s.ok(&["promote", "web@1.0.0", "--to", "development", "--wait"]);
    s.ok(&["promote", "web@1.0.0", "--to", "testing", "--wait"]);
    // Nobody promotes to staging: it follows testing's verification.
    wait_for("staging to be verified", || {
        state_of(&s, "staging") == "succeeded"
    });
    assert_eq!(s.latest("staging")["requested_by"], "shipgate");
    assert_eq!(s.version("staging").as_deref(), Some("1.0.0"));
    wait_for("production to wait on its approval", || {
        s.waits("production") == ["0 of 1 approvals"]
    });
    s.ok_as(&alice, &["approve", "web@1.0.0", "--env", "production"]);
    wait_for("production to be verified", || {
        state_of(&s, "production") == "succeeded"
    });
    assert_eq!(s.version("production").as_deref(), Some("1.0.0"));
}
