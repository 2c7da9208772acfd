//! The dashboard's sign-off sheet in a real headless Chromium, as a tester who never opens a
//! terminal uses it: found from the environment page and the board, the release, the address
//! to open, what changed since the last release signed off and the scenarios; a pass, a fail
//! refused without a note, a fail with one that ends the promotion and puts staging back. Over
//! plain HTTP: the sheet before its release arrives, each person's buttons, a viewer's post
//! refused, and each person signing a scenario once.

use crate::browser::Browser;
use crate::dashboard::{csrf_of, raw, sign_in};
use crate::helpers::{TestServer, four_envs_with, spawn_server, wait_for};

const CHECKOUT: &str = "checkout with a saved card";
const INVOICE: &str = "invoice PDF opens";

/// Staging takes a sign-off of two scenarios by testers.
fn staging_with_signoff() -> TestServer {
    spawn_server(&four_envs_with(
        "",
        &[(
            "staging",
            "[environments.staging.signoff]\nscenarios = [\"checkout with a saved card\", \"invoice PDF opens\"]",
        )],
    ))
}

/// Walks web@version to testing, promotes it into staging and waits for its sign-off.
fn into_signoff(s: &TestServer, version: &str) {
    s.walk(version, "testing");
    s.ok(&["promote", &format!("web@{version}"), "--to", "staging"]);
    wait_for("the release to wait for its sign-off in staging", || {
        let latest = s.latest("staging");
        assert_ne!(latest["state"], "failed", "{latest}");
        latest["state"] == "signing_off" && latest["version"] == version
    });
}

fn sheet_path(version: &str) -> String {
    format!("/apps/web/releases/{version}/signoff/staging")
}

/// A form body, percent-encoded.
fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| {
            let v: String = v
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("{k}={v}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A person signed in over plain HTTP: their cookie, and the sheet as they get it.
struct Person<'a> {
    s: &'a TestServer,
    cookie: String,
}

impl<'a> Person<'a> {
    fn new(s: &'a TestServer, token: &str) -> Self {
        Person {
            s,
            cookie: sign_in(s, token),
        }
    }

    fn get(&self, path: &str) -> (u16, String) {
        let (status, _, body) = raw(self.s, "GET", path, &[("Cookie", &self.cookie)], "");
        (status, body)
    }

    /// Posts a verdict on `scenario` from the sheet's form: the status, the Location, the body.
    fn sign(
        &self,
        version: &str,
        scenario: &str,
        verdict: &str,
        note: &str,
    ) -> (u16, String, String) {
        let (status, page) = self.get(&sheet_path(version));
        assert_eq!(status, 200, "{page}");
        let body = form(&[
            ("csrf", &csrf_of(&page)),
            ("scenario", scenario),
            ("verdict", verdict),
            ("note", note),
        ]);
        let (status, head, body) = raw(
            self.s,
            "POST",
            &sheet_path(version),
            &[("Cookie", &self.cookie)],
            &body,
        );
        let location = head
            .lines()
            .find_map(|l| l.strip_prefix("location: "))
            .unwrap_or_default()
            .to_owned();
        (status, location, body)
    }
}

fn pass_buttons(page: &str) -> usize {
    page.matches("signoff-pass\"").count()
}

fn sign_in_as(b: &Browser, s: &TestServer, token: &str) {
    b.goto(&format!("{}/sign-in?next=/", s.api()));
    b.type_into("#token", token);
    b.click("#sign-in");
    wait_for("the board after signing in", || {
        b.url() == format!("{}/", s.api())
    });
}

fn scenario(n: usize) -> String {
    format!("li.scenario[data-scenario=\"{n}\"]")
}

#[test]
fn a_tester_signs_off_on_the_dashboard_and_a_fail_with_a_note_puts_staging_back() {
    let s = staging_with_signoff();
    let tess = s.token("tess", "tester", &[]);
    let tom = s.token("tom", "tester", &[]);
    let vera = s.token("vera", "viewer", &[]);
    s.register_noted("1.0.0", "2026-12-01T08:00:00Z");
    s.register_noted("1.1.0", "2026-12-01T09:00:00Z");
    s.register_noted("1.2.0", "2026-12-01T10:00:00Z");

    // Before the release arrives, the sheet says so and what comes; an environment without a
    // sign-off says it takes none.
    let tess_http = Person::new(&s, &tess);
    let (status, page) = tess_http.get(&sheet_path("1.0.0"));
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("web@1.0.0 has not been promoted into staging yet."),
        "{page}"
    );
    assert!(page.contains(CHECKOUT) && page.contains(INVOICE), "{page}");
    assert_eq!(pass_buttons(&page), 0, "nothing to sign yet");
    let (status, page) = tess_http.get("/apps/web/releases/1.0.0/signoff/production");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("production takes no sign-off"), "{page}");
    let (status, page) = tess_http.get("/apps/web/releases/9.9.9/signoff/staging");
    assert_eq!(status, 404, "{page}");
    assert!(page.contains("web@9.9.9 is not registered"), "{page}");

    // 1.0.0: tess finds the sheet from the environment page, passes one scenario; tom passes
    // the other over HTTP, and it is signed off.
    into_signoff(&s, "1.0.0");
    let b = Browser::start();
    sign_in_as(&b, &s, &tess);
    assert!(
        b.text("header").contains("tess · tester"),
        "{}",
        b.text("header")
    );
    b.click("tr[data-app=web] td[data-env=staging] a.traffic");
    wait_for("the staging page", || b.text("h1") == "web in staging");
    b.click("a.signoff-link");
    let sheet_1 = format!("{}{}", s.api(), sheet_path("1.0.0"));
    wait_for("the sheet of web@1.0.0", || b.url() == sheet_1);
    assert_eq!(b.text("h1"), "Sign-off of web@1.0.0 in staging");
    let main = b.text("main");
    for said in [
        "waiting for testers",
        "web@1.0.0 is live in staging and waits for its testers: 0 of 2 scenarios passed",
        "No release was signed off in staging before: this is the first.",
        "c100",
        "notes of 1.0.0",
        "A Fail needs a note saying what you saw.",
    ] {
        assert!(main.contains(said), "{said} in: {main}");
    }
    let facts = b.text("dl.facts");
    assert!(facts.contains("Asked for by\nadmin"), "{facts}");
    assert_eq!(
        b.run(
            "return document.getElementById('signoff-url').getAttribute('href');",
            serde_json::json!([])
        ),
        s.url("staging"),
        "the address to open is a link"
    );
    b.click(&format!("{} button.signoff-pass", scenario(1)));
    wait_for("the line saying tess passed checkout", || {
        b.text("#signoff-notice") == format!("You passed “{CHECKOUT}”.")
    });
    assert!(b.url().ends_with("?signed=1"), "{}", b.url());
    assert!(
        b.text(&scenario(1)).contains("passed by tess"),
        "{}",
        b.text(&scenario(1))
    );
    assert!(
        b.text(&format!("{} button.signoff-pass", scenario(1)))
            .is_empty(),
        "tess signed checkout once, and has no button for it any more"
    );
    let tom_http = Person::new(&s, &tom);
    let (status, page) = tom_http.get(&sheet_path("1.0.0"));
    assert_eq!(status, 200);
    assert_eq!(
        pass_buttons(&page),
        2,
        "tom may sign both scenarios: {page}"
    );
    let (status, location, body) = tom_http.sign("1.0.0", INVOICE, "pass", "");
    assert_eq!(status, 303, "{body}");
    assert_eq!(location, format!("{}?signed=2", sheet_path("1.0.0")));
    wait_for("web@1.0.0 signed off in staging", || {
        s.latest("staging")["state"] == "succeeded"
    });
    b.goto(&sheet_1);
    let main = b.text("main");
    assert!(
        main.contains("web@1.0.0 is signed off in staging: all 2 scenarios passed.")
            && main
                .contains("Nothing is left to sign: web@1.0.0 may now be promoted to production."),
        "{main}"
    );
    assert_eq!(
        b.run(
            "return document.querySelectorAll('form.sign').length;",
            serde_json::json!([])
        ),
        0,
        "nothing left to sign"
    );

    // 1.2.0: found from the board, with what changed since 1.0.0.
    into_signoff(&s, "1.2.0");
    b.goto(&format!("{}/", s.api()));
    wait_for("the board's link to the sheet", || {
        !b.text("tr[data-app=web] td[data-env=staging] a.signoff-link")
            .is_empty()
    });
    b.click("tr[data-app=web] td[data-env=staging] a.signoff-link");
    let sheet_2 = format!("{}{}", s.api(), sheet_path("1.2.0"));
    wait_for("the sheet of web@1.2.0", || b.url() == sheet_2);
    let main = b.text("main");
    assert!(
        main.contains("Since web@1.0.0, the last release signed off in staging:"),
        "{main}"
    );
    let changes = b.text("ul.changes");
    for said in [
        "web@1.2.0",
        "c120",
        "notes of 1.2.0",
        "web@1.1.0",
        "c110",
        "notes of 1.1.0",
    ] {
        assert!(changes.contains(said), "{said} in: {changes}");
    }
    assert!(!changes.contains("web@1.0.0"), "{changes}");
    assert!(
        changes.find("web@1.2.0") < changes.find("web@1.1.0"),
        "newest first: {changes}"
    );

    // Pass, then a fail without a note: refused with the engine's words, nothing recorded.
    b.click(&format!("{} button.signoff-pass", scenario(1)));
    wait_for("the line saying tess passed checkout", || {
        b.text("#signoff-notice") == format!("You passed “{CHECKOUT}”.")
    });
    assert!(
        b.text("main").contains("1 of 2 scenarios passed"),
        "{}",
        b.text("main")
    );
    b.click(&format!("{} button.signoff-fail", scenario(2)));
    wait_for("the refusal of a fail without a note", || {
        b.text("#signoff-refusal")
            .contains("a fail needs a note saying what you saw")
    });
    assert_eq!(s.latest("staging")["state"], "signing_off");
    assert!(
        !b.text(&format!("{} button.signoff-fail", scenario(2)))
            .is_empty(),
        "the form is still there to try again"
    );

    // Over plain HTTP meanwhile: a viewer reads the sheet without buttons and their post is
    // refused; tess signs a scenario once; the requester may not sign; tom still may.
    let vera_http = Person::new(&s, &vera);
    let (status, page) = vera_http.get(&sheet_path("1.2.0"));
    assert_eq!(status, 200);
    assert_eq!(pass_buttons(&page), 0, "{page}");
    assert!(
        page.contains("you can read this sheet but not sign it"),
        "{page}"
    );
    let (status, _, body) = vera_http.sign("1.2.0", INVOICE, "pass", "");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("needs the role tester (or admin)"), "{body}");
    let (status, _, body) = tess_http.sign("1.2.0", CHECKOUT, "pass", "");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("each person signs a scenario once"), "{body}");
    let admin_http = Person::new(&s, &s.admin_token());
    let (_, page) = admin_http.get(&sheet_path("1.2.0"));
    assert_eq!(pass_buttons(&page), 0, "{page}");
    assert!(page.contains("You asked for this promotion"), "{page}");
    let (_, page) = tom_http.get(&sheet_path("1.2.0"));
    assert_eq!(pass_buttons(&page), 2, "{page}");
    assert_eq!(s.latest("staging")["state"], "signing_off");

    // A fail with a note: the sheet says it failed, and staging goes back to 1.0.0.
    b.type_into("#note-2", "the PDF is blank");
    b.click(&format!("{} button.signoff-fail", scenario(2)));
    wait_for("the line saying tess failed the invoice", || {
        b.text("#signoff-notice") == format!("You failed “{INVOICE}”: the PDF is blank")
    });
    let state = b.text("p.signoff-state");
    assert!(
        state.contains("failed")
            && state.contains(&format!("“{INVOICE}” failed by tess: the PDF is blank")),
        "{state}"
    );
    wait_for("the promotion to fail", || {
        s.latest("staging")["state"] == "failed"
    });
    wait_for("staging back on 1.0.0", || {
        s.version("staging").as_deref() == Some("1.0.0")
    });
    b.goto(&sheet_2);
    let main = b.text("main");
    assert!(
        main.contains("staging is back on web@1.0.0, as before this promotion"),
        "{main}"
    );
    assert_eq!(
        b.run(
            "return document.querySelectorAll('form.sign').length;",
            serde_json::json!([])
        ),
        0,
        "nothing left to sign"
    );
    let (status, _, body) = tom_http.sign("1.2.0", INVOICE, "pass", "");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("waits for no sign-off in staging"), "{body}");
}
