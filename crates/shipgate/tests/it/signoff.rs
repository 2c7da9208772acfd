//! User acceptance sign-off (issue 32): a release verified in uat waits there, live, in
//! `signing_off` until a tester passed each scenario; production needs that very sign-off
//! (`require.signoff`); one fail ends the promotion and uat goes back; who may sign is
//! refused with what to do; and a server killed with SIGKILL between two sign-offs loses none.

use crate::helpers::{TestServer, four_envs_with, spawn_server, wait_for};

/// A uat environment beside production, both after staging: testers sign off in uat, and
/// production needs that sign-off.
fn uat_server() -> TestServer {
    let mut config = four_envs_with("", &[("production", "require.signoff = \"uat\"")]);
    config.push_str(&format!(
        "\n[environments.uat]\nlisten = \"127.0.0.1:{}\"\nafter = \"staging\"\n[environments.uat.signoff]\nscenarios = [\"checkout with a saved card\", \"invoice PDF opens\"]\n\n[alerts.uat-waits]\nenv = \"uat\"\nwhen = \"signing_off\"\n",
        crate::helpers::free_port()
    ));
    spawn_server(&config)
}

/// Promotes `web@version` into uat and waits until it is live there, waiting for sign-off.
fn into_signoff(s: &TestServer, version: &str) {
    s.ok(&["promote", &format!("web@{version}"), "--to", "uat"]);
    wait_for("the release to wait for its sign-off in uat", || {
        let latest = s.latest("uat");
        assert_ne!(latest["state"], "failed", "{latest}");
        latest["state"] == "signing_off"
    });
    assert_eq!(s.version("uat").as_deref(), Some(version));
}

fn sign(s: &TestServer, token: &str, version: &str, scenario: &str, verdict: &[&str]) -> String {
    let release = format!("web@{version}");
    let args = [
        &[
            "signoff",
            release.as_str(),
            "--env",
            "uat",
            "--scenario",
            scenario,
        ][..],
        verdict,
    ]
    .concat();
    s.ok_as(token, &args)
}

#[test]
fn a_release_waits_for_each_scenario_production_needs_that_sign_off_and_one_fail_puts_uat_back() {
    let s = uat_server();
    for (version, commit_time) in [
        ("1.0.0", "2026-12-01T08:00:00Z"),
        ("1.1.0", "2026-12-01T09:00:00Z"),
    ] {
        s.register_noted(version, commit_time);
    }
    s.walk("1.0.0", "staging");
    // Production waits for the sign-off, with where it stands and the command.
    s.ok(&["promote", "web@1.0.0", "--to", "production"]);
    wait_for(
        "production to wait for 1.0.0 to be promoted into uat",
        || {
            s.waits("production")
                .iter()
                .any(|w| w.contains("not promoted there yet (shipgate promote web@1.0.0 --to uat)"))
        },
    );
    into_signoff(&s, "1.0.0");
    wait_for("production to wait for uat's sign-off", || {
        s.waits("production")
            .iter()
            .any(|w| w.contains("sign-off in uat: 0 of 2 scenarios passed"))
    });
    let uat_waits = s.waits("uat");
    assert!(
        uat_waits
            .iter()
            .any(|w| w.contains("0 of 2 scenarios passed")
                && w.contains("shipgate signoff web@1.0.0")),
        "{uat_waits:?}"
    );

    // Refused, each with what to do: the wrong role, the requester, an unknown scenario, a
    // fail without a note.
    let deployer = s.token("dee", "deployer", &[]);
    let tess = s.token("tess", "tester", &[]);
    let tom = s.token("tom", "tester", &[]);
    let base = ["signoff", "web@1.0.0", "--env", "uat", "--scenario"];
    let wrong_role = s.refused_as(
        &deployer,
        &[&base[..], &["invoice PDF opens", "--pass"]].concat(),
    );
    assert!(
        wrong_role.contains("needs the role tester (or admin)"),
        "{wrong_role}"
    );
    let own = s.refused(&[&base[..], &["invoice PDF opens", "--pass"]].concat());
    assert!(own.contains("someone else must sign it off"), "{own}");
    let unknown = s.refused_as(&tess, &[&base[..], &["login", "--pass"]].concat());
    assert!(
        unknown.contains("name one of: \"checkout with a saved card\", \"invoice PDF opens\""),
        "{unknown}"
    );
    let no_note = s.cli_as(
        &tess,
        &[&base[..], &["invoice PDF opens", "--fail"]].concat(),
    );
    assert_eq!(no_note.status.code(), Some(2), "a usage error");
    assert!(crate::helpers::text(&no_note).contains("--note"));

    // An alert can watch a release waiting for its sign-off.
    wait_for("the alert on a release waiting for sign-off", || {
        !s.messages_of("alert.firing").is_empty()
    });
    // One pass each; a person signs a scenario once.
    let said = sign(
        &s,
        &tess,
        "1.0.0",
        "checkout with a saved card",
        &["--pass", "--note", "paid with the test card"],
    );
    assert!(said.contains("1 of 2 scenarios passed"), "{said}");
    let twice = s.refused_as(
        &tess,
        &[&base[..], &["checkout with a saved card", "--pass"]].concat(),
    );
    assert!(
        twice.contains("already signed") && twice.contains("once"),
        "{twice}"
    );
    assert_eq!(s.latest("uat")["state"], "signing_off");
    let said = sign(&s, &tom, "1.0.0", "invoice PDF opens", &["--pass"]);
    assert!(
        said.contains("every scenario passed: web@1.0.0 is signed off and succeeded in uat"),
        "{said}"
    );
    // Production was waiting for it: it goes on by itself, with the sign-off as a gate.
    wait_for("production to go live", || {
        s.version("production").as_deref() == Some("1.0.0")
    });
    let gates = s.latest("production")["gates"].to_string();
    assert!(gates.contains("web@1.0.0 is signed off in uat"), "{gates}");
    let gates = s.latest("uat")["gates"].to_string();
    assert!(gates.contains("all 2 scenarios passed"), "{gates}");
    wait_for("the alert to resolve once nothing waits", || {
        !s.messages_of("alert.resolved").is_empty()
    });
    let status = s.json(&["signoff", "status", "web@1.0.0", "--env", "uat"]);
    assert_eq!(status["outcome"], "complete", "{status}");
    assert_eq!(status["scenarios"][0]["entries"][0]["by"], "tess");
    assert_eq!(
        status["scenarios"][0]["entries"][0]["note"],
        "paid with the test card"
    );
    assert_eq!(status["url"], s.url("uat"));

    // 1.1.0: what changed since 1.0.0 is shown; one fail ends it and uat is back on 1.0.0.
    s.walk("1.1.0", "staging");
    into_signoff(&s, "1.1.0");
    let status = s.ok(&["signoff", "status", "web@1.1.0", "--env", "uat"]);
    assert!(status.contains("what changed since web@1.0.0"), "{status}");
    assert!(
        status.contains("c110") && status.contains("notes of 1.1.0"),
        "{status}"
    );
    assert!(!status.contains("notes of 1.0.0"), "{status}");
    let said = sign(
        &s,
        &tess,
        "1.1.0",
        "invoice PDF opens",
        &["--fail", "--note", "the PDF is blank"],
    );
    assert!(said.contains("web@1.1.0 failed its sign-off"), "{said}");
    assert!(
        said.contains("`invoice PDF opens` failed its sign-off by tess: the PDF is blank"),
        "{said}"
    );
    assert!(said.contains("uat is back on web@1.0.0"), "{said}");
    assert_eq!(s.version("uat").as_deref(), Some("1.0.0"));
    assert_eq!(s.latest("uat")["state"], "failed");
    let late = s.refused_as(
        &tom,
        &[
            "signoff",
            "web@1.1.0",
            "--env",
            "uat",
            "--scenario",
            "checkout with a saved card",
            "--pass",
        ],
    );
    assert!(
        late.contains("waits for no sign-off in uat: its sign-off failed"),
        "{late}"
    );
    s.ok(&["promote", "web@1.1.0", "--to", "production"]);
    wait_for("production to say 1.1.0 failed its sign-off", || {
        s.waits("production")
            .iter()
            .any(|w| w.contains("ended failed without a completed sign-off"))
    });

    // The audit log and notify targets see each step; DORA shows the wait as its share.
    assert_eq!(s.messages_of("signoff.requested").len(), 2);
    assert_eq!(s.messages_of("signoff.passed").len(), 2);
    assert_eq!(s.messages_of("signoff.failed").len(), 1);
    assert_eq!(s.messages_of("signoff.completed").len(), 1);
    let dora = s.json(&["dora", "web"]);
    let production = dora["figures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["env"] == "production")
        .unwrap()
        .clone();
    let share = production["signoff_share"].as_f64().unwrap();
    assert!(share > 0.0 && share < 1.0, "{production}");
    assert!(
        production["signoff_secs"].as_f64().unwrap() > 0.0,
        "{production}"
    );
}

#[test]
fn a_server_killed_between_two_signoffs_loses_none_and_a_fail_after_it_still_puts_uat_back() {
    let mut s = uat_server();
    for version in ["1.0.0", "1.1.0", "1.2.0"] {
        s.register(version, &[]);
    }
    let tess = s.token("tess", "tester", &[]);
    let tom = s.token("tom", "tester", &[]);
    s.walk("1.0.0", "staging");
    into_signoff(&s, "1.0.0");
    sign(
        &s,
        &tess,
        "1.0.0",
        "checkout with a saved card",
        &["--pass"],
    );
    s.kill9();
    s.restart();
    // Still live and still waiting, with tess's pass kept.
    assert_eq!(s.latest("uat")["state"], "signing_off");
    assert_eq!(s.version("uat").as_deref(), Some("1.0.0"));
    let status = s.json(&["signoff", "status", "web@1.0.0", "--env", "uat"]);
    assert_eq!(
        status["scenarios"][0]["entries"][0]["by"], "tess",
        "{status}"
    );
    let said = sign(&s, &tom, "1.0.0", "invoice PDF opens", &["--pass"]);
    assert!(said.contains("signed off and succeeded in uat"), "{said}");

    // Killed again while 1.1.0 waits; the fail after the restart puts 1.0.0 back.
    s.walk("1.1.0", "staging");
    into_signoff(&s, "1.1.0");
    s.kill9();
    s.restart();
    assert_eq!(s.latest("uat")["state"], "signing_off");
    assert_eq!(s.version("uat").as_deref(), Some("1.1.0"));
    let said = sign(
        &s,
        &tom,
        "1.1.0",
        "checkout with a saved card",
        &["--fail", "--note", "card declined"],
    );
    assert!(said.contains("uat is back on web@1.0.0"), "{said}");
    wait_for("uat to serve 1.0.0 again", || {
        s.version("uat").as_deref() == Some("1.0.0")
    });
    assert_eq!(s.latest("uat")["state"], "failed");

    // A newer release waits for its turn behind one that waits for sign-off, and says so; a
    // rejection ends a sign-off at once.
    s.walk("1.2.0", "staging");
    s.ok(&["promote", "web@1.1.0", "--to", "uat"]);
    wait_for("1.1.0 to wait for its sign-off again", || {
        s.latest("uat")["state"] == "signing_off"
    });
    s.ok(&["promote", "web@1.2.0", "--to", "uat"]);
    wait_for("1.2.0 to say what it waits behind", || {
        s.waits("uat").iter().any(|w| {
            w.contains("web@1.1.0 waits for its sign-off here first")
                && w.contains("shipgate reject web@1.1.0 --env uat")
        })
    });
    let approver = s.token("ann", "approver", &[]);
    s.ok_as(
        &approver,
        &[
            "reject",
            "web@1.1.0",
            "--env",
            "uat",
            "--comment",
            "1.2.0 replaces it",
        ],
    );
    wait_for("1.2.0 to wait for its own sign-off", || {
        let latest = s.latest("uat");
        latest["version"] == "1.2.0" && latest["state"] == "signing_off"
    });
    assert_eq!(s.version("uat").as_deref(), Some("1.2.0"));
    let ended = s.json(&["signoff", "status", "web@1.1.0", "--env", "uat"]);
    assert_eq!(ended["outcome"], "ended", "{ended}");
    assert!(
        ended["progress"]
            .as_str()
            .unwrap()
            .contains("rejected by ann: 1.2.0 replaces it"),
        "{ended}"
    );
}
