//! The dashboard's canary panel in a real headless Chromium: a rollout paused at its first
//! step, both sides' figures redrawn in place, no buttons for a viewer, and an admin's Resume,
//! Skip refused without a reason, and Abort after its question; each role's buttons over plain
//! HTTP; and `shipgate canary status` on the same rollout.

use crate::browser::Browser;
use crate::dashboard::{raw, sign_in};
use crate::helpers::{TestServer, four_envs_with, raw_http, wait_for};

/// Production rolls out a canary through a pause (held until resumed, so no clock is involved)
/// and a 50% step long enough never to end during the test.
const CANARY: &str =
    "[environments.production.canary]\nsteps = [\"pause\", \"50%\"]\nstep = \"1h\"";

/// web@1.0.0 live everywhere and web@2.0.0 asked into production, where its canary is paused
/// at its first step.
fn paused_canary() -> TestServer {
    let s = crate::helpers::spawn_server(&four_envs_with("", &[("production", CANARY)]));
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "production");
    s.register("2.0.0", &[]);
    s.walk("2.0.0", "staging");
    s.ok(&["promote", "web@2.0.0", "--to", "production"]);
    wait_for("the canary of web@2.0.0 to pause at its first step", || {
        let latest = s.latest("production");
        assert_ne!(
            latest["state"], "failed",
            "the promotion ended instead of rolling out: {latest}"
        );
        latest["canary"]["state"] == "paused"
    });
    s
}

/// Sends `n` GETs of /version to production's address, `header` added; their bodies.
fn versions(s: &TestServer, n: usize, header: &str) -> Vec<String> {
    let addr = s.url("production");
    let addr = addr.strip_prefix("http://").unwrap();
    (0..n)
        .map(|_| {
            let answer = raw_http(
                addr,
                &format!("GET /version HTTP/1.0\r\nHost: {addr}\r\n{header}\r\n"),
            );
            answer
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.trim().to_owned())
                .unwrap_or_default()
        })
        .collect()
}

fn sign_in_as(b: &Browser, s: &TestServer, token: &str) {
    b.goto(&format!("{}/sign-in?next=/", s.api()));
    b.type_into("#token", token);
    b.click("#sign-in");
    wait_for("the board after signing in", || {
        b.url() == format!("{}/", s.api())
    });
}

#[test]
fn the_environment_page_shows_a_canary_live_and_offers_resume_abort_and_skip_to_those_allowed() {
    let s = paused_canary();
    let promotion = s.latest("production")["id"].as_i64().unwrap();
    let page = format!("{}/apps/web/environments/production", s.api());
    let panel = "section.canary[data-env=production]";

    // The command line shows the same rollout.
    let status = s.ok(&["canary", "status", "web", "--env", "production"]);
    for said in [
        "web@2.0.0",
        "step 1 of 2",
        "pause → 50%",
        "REQUESTS",
        "stable web@1.0.0",
    ] {
        assert!(status.contains(said), "{said} in: {status}");
    }

    // A viewer sees where the rollout stands and both sides' figures, and no button.
    let viewer = s.token("vera", "viewer", &[]);
    let b = Browser::start();
    sign_in_as(&b, &s, &viewer);
    b.goto(&page);
    let text = b.text(panel);
    for said in [
        "Canary web@2.0.0",
        "against web@1.0.0",
        "paused",
        "step 1 of 2 · paused at 0% of requests until resumed",
        "not judged: a pause waits for Resume",
    ] {
        assert!(text.contains(said), "{said} in: {text}");
    }
    let current = format!("{panel} .canary-steps li[aria-current=step]");
    assert_eq!(b.text(&current), "pause");
    assert_eq!(
        b.run(
            "return [...document.querySelectorAll(arguments[0] + ' .canary-steps li')].map(l => l.textContent);",
            serde_json::json!([panel]),
        ),
        serde_json::json!(["pause", "50%", "100%"]),
        "the steps in a row, 100% after the last"
    );
    assert_eq!(
        b.run(
            "return document.querySelectorAll(arguments[0] + ' button').length;",
            serde_json::json!([panel]),
        ),
        0,
        "a viewer gets no button: {text}"
    );

    // Both sides' figures follow the traffic without a reload: a tester's header picks the
    // canary at 0%, everyone else meets the stable release.
    wait_for("the live badge", || b.text("#live").contains("live"));
    b.run("window.__not_reloaded = 42;", serde_json::json!([]));
    assert!(
        versions(&s, 5, "x-shipgate-canary: always\r\n")
            .iter()
            .all(|v| v == "2.0.0"),
        "a tester who asks for the canary meets it"
    );
    assert!(
        versions(&s, 10, "").iter().all(|v| v == "1.0.0"),
        "at 0% everyone else meets the stable release"
    );
    let requests = |side: &str| -> u64 {
        b.text(&format!("{panel} tr[data-side={side}] td:nth-of-type(2)"))
            .parse()
            .unwrap_or(0)
    };
    wait_for("both sides' requests on the panel", || {
        requests("canary") >= 5 && requests("stable") >= 10
    });
    assert_eq!(
        b.run("return window.__not_reloaded;", serde_json::json!([])),
        42,
        "the figures were redrawn in place"
    );
    assert!(
        b.text(&format!("{panel} tr[data-side=canary]"))
            .contains("web@2.0.0")
    );

    // The board and the release page say so too.
    b.goto(&format!("{}/", s.api()));
    let cell = b.text("tr[data-app=web] td[data-env=production]");
    assert!(cell.contains("step 1 of 2 (pause)"), "{cell}");
    b.goto(&format!("{}/apps/web/releases/2.0.0", s.api()));
    let section = b.text(&format!("#promotion-{promotion}"));
    assert!(section.contains("Canary web@2.0.0"), "{section}");

    // Each role gets the buttons it may use.
    for (name, role, buttons) in [
        ("ann", "approver", &["canary-resume"][..]),
        ("dan", "deployer", &["canary-abort"][..]),
    ] {
        let token = s.token(name, role, &[]);
        let cookie = sign_in(&s, &token);
        let (status, _, html) = raw(
            &s,
            "GET",
            "/apps/web/environments/production",
            &[("Cookie", cookie.as_str())],
            "",
        );
        assert_eq!(status, 200);
        for button in ["canary-resume", "canary-abort", "canary-skip"] {
            assert_eq!(
                html.contains(&format!("{button}\"")),
                buttons.contains(&button),
                "{role}: {button}"
            );
        }
    }

    // An admin: Skip without a reason is refused with the API's words, Resume moves on.
    b.click("header button.link");
    wait_for("the sign-in page", || b.url().contains("/sign-in"));
    sign_in_as(&b, &s, &s.admin_token());
    b.goto(&page);
    for button in ["canary-resume", "canary-abort", "canary-skip"] {
        assert!(
            !b.text(&format!("{panel} button.{button}")).is_empty(),
            "an admin gets {button}"
        );
    }
    b.type_into(&format!("{panel} input.canary-skip-reason"), "   ");
    b.click(&format!("{panel} button.canary-skip"));
    wait_for("the refusal of a blank reason", || {
        b.text("main")
            .contains("say why the canary skips its steps")
    });
    assert_eq!(
        s.latest("production")["canary"]["step"],
        1,
        "nothing skipped"
    );

    b.goto(&page);
    b.click(&format!("{panel} button.canary-resume"));
    wait_for("the panel at step 2, 50%", || {
        b.url() == page && b.text(panel).contains("step 2 of 2 · 50% of requests")
    });
    assert_eq!(b.text(&current), "50%");
    assert!(b.text(panel).contains("running"), "{}", b.text(panel));
    assert!(
        b.text(panel).contains("judged at"),
        "when the step is judged: {}",
        b.text(panel)
    );
    assert!(
        b.text(&format!("{panel} button.canary-resume")).is_empty(),
        "no Resume while a step runs"
    );
    let status = s.ok(&["canary", "status", "web", "--env", "production"]);
    assert!(status.contains("step 2 of 2"), "{status}");

    // On a 420 px screen the panel fits: its table scrolls inside itself.
    b.resize(420, 900);
    b.goto(&page);
    let (page_width, screen) = (
        b.run(
            "return document.documentElement.scrollWidth;",
            serde_json::json!([]),
        ),
        b.run("return window.innerWidth;", serde_json::json!([])),
    );
    assert!(
        page_width.as_i64() <= screen.as_i64(),
        "the page is {page_width} px wide on a {screen} px screen"
    );
    b.resize(1400, 1000);

    // Abort asks first; its answer ends the rollout and the promotion fails, saying why.
    b.click(&format!("{panel} button.canary-abort"));
    wait_for("the question", || {
        b.text("h1") == "Abort the canary of web in production?"
    });
    assert!(
        b.text("main")
            .contains(&format!("promotion #{promotion} fails")),
        "{}",
        b.text("main")
    );
    assert_eq!(s.latest("production")["state"], "deploying", "not yet");
    b.click("#abort-confirm");
    wait_for("the environment page with the promotion failed", || {
        b.url() == page && b.text("table.history tbody tr").contains("failed")
    });
    let row = b.text("table.history tbody tr");
    assert!(
        row.contains("2.0.0") && row.contains("aborted by admin"),
        "{row}"
    );
    assert!(b.text(panel).is_empty(), "the panel goes with the rollout");
    let latest = s.latest("production");
    assert_eq!(latest["state"], "failed");
    assert!(
        latest["reason"]
            .as_str()
            .unwrap()
            .contains("aborted by admin"),
        "{latest}"
    );
    assert_eq!(s.version("production").as_deref(), Some("1.0.0"));
}
