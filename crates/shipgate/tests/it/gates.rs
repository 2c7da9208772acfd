//! Gates end to end: approvals, soak, freezes, deploy windows and overrides, watches stopped by
//! a person, held verifications, HTTP checks and auto-promotion. What happens when time passes
//! (a soak or a watch ends, a window opens) is tested on the engine's controlled clock in
//! `shipgate-engine`, and the rules' edges (windows across daylight saving) with a fixed clock in
//! `shipgate-core`; here the real server proves the rules are enforced and shown.

use serde_json::Value;

use crate::helpers::{TestServer, four_envs_with, free_port, spawn_server, text, wait_for};

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

    let first = s.ok_as(
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
    assert!(
        first.contains("it still waits on: 1 of 2 approvals (approved by alice)"),
        "{first}"
    );
    wait_for("one approval to count", || {
        s.waits("production") == ["1 of 2 approvals (approved by alice) from the role approver"]
    });
    let text = s.ok(&["status", "web"]);
    assert!(
        text.contains("waits on:\n    - 1 of 2 approvals (approved by alice)"),
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

    let last = s.ok_as(&bob, &["approve", "web@1.0.0", "--env", "production"]);
    assert!(
        last.contains("it waits on nothing more and deploys now")
            || last.contains("it is succeeded now"),
        "the last approval does not send anyone to see what it waits on: {last}"
    );
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
    let approved = s.messages_of("approval.approved");
    assert!(
        approved.contains(&"alice approved web@1.0.0 into production: looks good".to_owned()),
        "{approved:?}"
    );
    assert_eq!(
        s.messages_of("approval.rejected"),
        ["bob rejected web@1.1.0 into production: not on a Friday"]
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
    let overrides = s.messages_of("promotion.override");
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
fn a_person_may_stop_a_watch_and_the_rejection_rolls_back_at_once() {
    // The watch is long: it never ends during the test (its end is judged on the engine's
    // clock in shipgate-engine's tests); a person ends it first.
    let s = spawn_server(&watched("verify.watch = \"10m\""));
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
        reason.starts_with("rejected by admin-") && reason.ends_with(": wrong config"),
        "{reason}"
    );
    assert_eq!(s.version("production"), None, "nothing was live before it");
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

#[test]
fn a_quiet_watch_holds_by_default_and_watch_traffic_makes_it_conclusive() {
    // Nobody sends production a request: by default the release waits for a person.
    let s = spawn_server(&watched("verify.watch = \"1s\""));
    s.register("1.0.0", &[]);
    s.ok(&["promote", "web@1.0.0", "--to", "production"]);
    wait_for("the quiet watch to hold", || {
        s.waits("production")
            .first()
            .is_some_and(|w| w.starts_with("a person to decide: only "))
    });
    assert_eq!(state_of(&s, "production"), "verifying");
    drop(s);

    // With its own traffic, the same quiet environment is judged and passes.
    let s = spawn_server(&watched(
        "verify.watch = \"2s\"\nverify.min_requests = 10\nverify.watch_traffic = { path = \"/version\", rps = 20 }",
    ));
    s.register("1.0.0", &[]);
    s.ok(&["promote", "web@1.0.0", "--to", "production", "--wait"]);
    let latest = s.latest("production");
    assert_eq!(latest["state"], "succeeded", "{latest}");
    let watch = latest["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "watch")
        .cloned()
        .unwrap();
    assert_eq!(watch["passed"], true, "{watch}");
    assert!(
        !watch["output"].as_str().unwrap_or("").contains("only "),
        "judged on its own traffic: {watch}"
    );
    // `history` shows what a passed watch measured.
    let text = s.ok(&["history", "web", "--env", "production"]);
    assert!(
        text.contains("passed  watch\n        watched for 2s: "),
        "{text}"
    );
}

/// An automatic promotion is caused by whoever promoted the release into the environment
/// before: that person approves it with none of their tokens, and one person's two tokens
/// count as one approver.
#[test]
fn the_person_behind_an_automatic_promotion_never_approves_it_with_any_of_their_tokens() {
    let s = spawn_server(&four_envs_with(
        "",
        &[("production", "auto = true\nrequire.approvals = 2")],
    ));
    let erin = s.token("erin", "deployer", &[]);
    let erin_admin = s.json(&[
        "token",
        "create",
        "erin-admin",
        "--role",
        "admin",
        "--person",
        "erin",
    ])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let frank = s.token("frank", "approver", &[]);
    let frank_laptop = s.json(&[
        "token",
        "create",
        "frank-laptop",
        "--role",
        "approver",
        "--person",
        "frank",
    ])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "testing");
    s.ok_as(
        &erin,
        &["promote", "web@1.0.0", "--to", "staging", "--wait"],
    );
    wait_for("shipgate to ask for production by itself", || {
        s.waits("production") == ["0 of 2 approvals"]
    });
    assert_eq!(s.latest("production")["requested_by"], "shipgate");

    let caused = s.refused_as(
        &erin_admin,
        &["approve", "web@1.0.0", "--env", "production"],
    );
    assert!(
        caused.contains("erin caused this promotion")
            && caused.contains("so erin may not approve it"),
        "{caused}"
    );
    s.ok_as(&frank, &["approve", "web@1.0.0", "--env", "production"]);
    let twice = s.refused_as(
        &frank_laptop,
        &["approve", "web@1.0.0", "--env", "production"],
    );
    assert!(twice.contains("frank has already decided"), "{twice}");
    assert_eq!(
        s.waits("production"),
        ["1 of 2 approvals (approved by frank)"]
    );
    let shipgate = s.refused(&["token", "create", "shipgate", "--role", "admin"]);
    assert!(
        shipgate.contains("is the name of shipgate's own actions"),
        "{shipgate}"
    );
}
