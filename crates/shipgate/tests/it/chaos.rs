//! Chaos through the command line and a running server: faults injected into an environment's
//! router only where `chaos.allow` is set, for at most `chaos.max_duration`, at the end of the
//! flow by an admin only; shown by `chaos list`, `status` and the environment page; cleared by
//! hand; and one whose end passed while no server ran is ended, with an event, by the next.

use std::time::Duration;

use crate::helpers::{four_envs_with, spawn_server, text};

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
    let viewer = s.refused_as(
        &look,
        &[
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
        ],
    );
    assert!(viewer.contains("viewer"), "{viewer}");

    // A deployer injects into staging: every request to web there is aborted.
    let made = s.ok_as(
        &dana,
        &[
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
        ],
    );
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
    assert_eq!(all.as_array().unwrap().len(), 2);
    assert_eq!(all[1]["ended_by"], "duration");
    let injected = s.messages_of("chaos.injected");
    assert_eq!(injected.len(), 2, "{injected:?}");
}
