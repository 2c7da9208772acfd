//! The dashboard in a real headless Chromium (sign in, the board, approving on the release
//! page, the board changing without a reload, sign-out) and over plain HTTP (cookie flags,
//! CSRF and cross-site refusals, scoped views, the audit export).
//!
//! Screenshots go to a temp dir; with `SHIPGATE_SCREENSHOTS=1` they replace `docs/screenshots/`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::browser::Browser;
use crate::helpers::{TestServer, four_envs_with, spawn_server, wait_for};

fn screenshot_dir() -> (PathBuf, Option<tempfile::TempDir>) {
    if std::env::var_os("SHIPGATE_SCREENSHOTS").is_some() {
        let dir = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/screenshots"
        ));
        std::fs::create_dir_all(&dir).unwrap();
        (dir, None)
    } else {
        let tmp = tempfile::tempdir().unwrap();
        (tmp.path().to_owned(), Some(tmp))
    }
}

fn save(b: &Browser, dir: &std::path::Path, name: &str) {
    let png = b.screenshot();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name} is a PNG");
    assert!(
        png.len() > 10_000,
        "{name} shows something ({} bytes)",
        png.len()
    );
    std::fs::write(dir.join(name), png).unwrap();
}

/// web@1.0.0 walked to staging and asked into production, which needs one approval; and the
/// secret of alice, an approver.
fn production_waiting_on_alice() -> (TestServer, String) {
    let s = spawn_server(&four_envs_with(
        "",
        &[("production", "require.approvals = 1")],
    ));
    let alice = s.token("alice", "approver", &[]);
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "staging");
    s.ok(&["promote", "web@1.0.0", "--to", "production"]);
    (s, alice)
}

#[test]
fn sign_in_approve_on_the_release_page_and_watch_the_board_change() {
    let (s, alice) = production_waiting_on_alice();
    let promotion = s.latest("production")["id"].as_i64().unwrap();
    let (dir, _keep) = screenshot_dir();

    let b = Browser::start();
    b.goto(&format!("{}/", s.api()));
    assert!(b.url().contains("/sign-in?next=/"), "{}", b.url());
    b.type_into("#token", "not-a-token");
    b.click("#sign-in");
    wait_for("the refusal of a wrong token", || {
        b.text("main").contains("This token is not known")
    });
    b.type_into("#token", &alice);
    b.click("#sign-in");
    wait_for("the board after signing in", || {
        b.url() == format!("{}/", s.api())
    });
    assert!(
        b.text("header").contains("alice · approver"),
        "{}",
        b.text("header")
    );

    let production = "tr[data-app=web] td[data-env=production]";
    wait_for("the board to show what production waits on", || {
        b.text(production).contains("waits on: 0 of 1 approvals")
    });
    save(&b, &dir, "board.png");
    assert!(
        b.text("tr[data-app=web] td[data-env=staging]")
            .contains("1.0.0")
    );
    assert!(
        b.text("tr[data-app=web] td[data-env=staging]")
            .contains("healthy")
    );

    b.goto(&format!("{}/apps/web/releases/1.0.0", s.api()));
    let section = format!("#promotion-{promotion}");
    assert!(
        b.text(&section).contains("waits on: 0 of 1 approvals"),
        "{}",
        b.text(&section)
    );
    b.type_into(
        &format!("{section} input[name=comment]"),
        "checked the notes",
    );
    b.click(&format!("{section} button.approve"));
    wait_for("the release page after approving", || {
        b.url().ends_with("/apps/web/releases/1.0.0") && b.text(&section).contains("approved by")
    });
    wait_for(
        "the approval and the deploy to show on the release page",
        || {
            let text = b.text(&section);
            text.contains("approved by alice (approver)") && text.contains("succeeded")
        },
    );
    assert!(b.text(&section).contains("checked the notes"));
    assert_eq!(s.version("production").as_deref(), Some("1.0.0"));
    save(&b, &dir, "release.png");

    // The board follows the event stream: a promotion shows up without a reload.
    b.goto(&format!("{}/", s.api()));
    wait_for("the live badge", || b.text("#live").contains("live"));
    b.run("window.__not_reloaded = 42;", serde_json::json!([]));
    s.register("1.1.0", &[]);
    s.ok(&["promote", "web@1.1.0", "--to", "development", "--wait"]);
    let development = "tr[data-app=web] td[data-env=development]";
    wait_for("the board to show 1.1.0 live in development", || {
        b.text(&format!("{development} a.release")) == "1.1.0"
            && !b.text(development).contains("deploying")
    });
    assert_eq!(
        b.run("return window.__not_reloaded;", serde_json::json!([])),
        42,
        "the page was redrawn in place, not reloaded"
    );
    assert!(b.text(production).contains("1.0.0"));

    // Some traffic, so the environment page has figures. The chart takes a sample every 10 s:
    // for the docs' screenshot, keep the traffic going long enough to draw lines.
    let traffic_for = if std::env::var_os("SHIPGATE_SCREENSHOTS").is_some() {
        Duration::from_secs(45)
    } else {
        Duration::ZERO
    };
    let started = std::time::Instant::now();
    let mut sent = 0;
    while sent < 50 || started.elapsed() < traffic_for {
        let path = if sent % 7 == 0 { "/missing" } else { "/" };
        s.get(&format!("{}{path}", s.url("development")));
        sent += 1;
        std::thread::sleep(Duration::from_millis(if traffic_for.is_zero() {
            0
        } else {
            20
        }));
    }
    b.goto(&format!("{}/apps/web/environments/development", s.api()));
    let main = b.text("main");
    assert!(main.contains("Traffic, last hour"), "{main}");
    let log = b.text("pre.log");
    assert!(
        log.contains("fixture app 1.1.0: \"GET / HTTP/1.1\" 200"),
        "the log tail: {log}"
    );
    assert!(
        !main.contains("Roll back") && !main.contains("Promote 1.1.0"),
        "alice may neither roll back nor promote: {main}"
    );
    save(&b, &dir, "environment.png");

    b.goto(&format!("{}/audit?actor=alice", s.api()));
    assert!(
        b.text("table.events")
            .contains("alice approved web@1.0.0 into production: checked the notes")
    );

    // On a 420 px screen nothing runs off the side: wide tables scroll inside themselves.
    b.resize(420, 900);
    for page in [
        "/",
        "/apps/web/environments/development",
        "/apps/web/releases/1.0.0",
        "/audit",
    ] {
        b.goto(&format!("{}{page}", s.api()));
        let (page_width, screen) = (
            b.run(
                "return document.documentElement.scrollWidth;",
                serde_json::json!([]),
            ),
            b.run("return window.innerWidth;", serde_json::json!([])),
        );
        let wide = b.run(
            "return [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > window.innerWidth).slice(-5).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right)).join(', ');",
            serde_json::json!([]),
        );
        assert!(
            page_width.as_i64() <= screen.as_i64(),
            "{page} is {page_width} px wide on a {screen} px screen: {wide}"
        );
    }
    save(&b, &dir, "narrow-audit.png");
    b.resize(1400, 1000);
    let signed_in = || {
        b.run(
            "return document.querySelector('header button.link') !== null;",
            serde_json::json!([]),
        ) == true
    };
    let since = std::time::Instant::now();
    while !signed_in() {
        assert!(
            since.elapsed() < Duration::from_secs(20),
            "no sign-out button on {}: {}",
            b.url(),
            b.text("body")
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    b.click("header button.link");
    wait_for("the sign-in page after signing out", || {
        b.url().contains("/sign-in")
    });
    b.goto(&format!("{}/", s.api()));
    assert!(b.url().contains("/sign-in"), "signed out: {}", b.url());
}

/// A raw HTTP/1.0 request: status, headers and body.
pub(crate) fn raw(
    s: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let api = s.api();
    let host = api.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\n{extra}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

pub(crate) fn sign_in(s: &TestServer, token: &str) -> String {
    let (status, head, _) = raw(s, "POST", "/sign-in", &[], &format!("token={token}&next=/"));
    assert_eq!(status, 303, "{head}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("no cookie: {head}"));
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Path=/"),
        "{cookie}"
    );
    cookie.split(';').next().unwrap().to_owned()
}

pub(crate) fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..].split('"').next().unwrap().to_owned()
}

#[test]
fn forms_need_the_session_csrf_token_and_cross_site_posts_are_refused() {
    let (s, alice) = production_waiting_on_alice();
    let cookie = sign_in(&s, &alice);
    let auth = [("Cookie", cookie.as_str())];
    let (status, _, page) = raw(&s, "GET", "/apps/web/releases/1.0.0", &auth, "");
    assert_eq!(status, 200);
    let csrf = csrf_of(&page);
    let path = "/apps/web/releases/1.0.0/decisions";

    let (status, _, body) = raw(
        &s,
        "POST",
        path,
        &auth,
        "env=production&verdict=approve&csrf=wrong",
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("This form is out of date or came from another site"),
        "{body}"
    );
    let cross = [
        ("Cookie", cookie.as_str()),
        ("Origin", "http://evil.example"),
    ];
    let form = format!("env=production&verdict=approve&csrf={csrf}");
    let (status, _, body) = raw(&s, "POST", path, &cross, &form);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("came from another site"), "{body}");
    let (status, _, _) = raw(&s, "POST", path, &[], &form);
    assert_eq!(status, 303, "without a session: to the sign-in page");
    // An unknown verdict is refused, never read as a rejection.
    let unknown = format!("env=production&verdict=maybe&comment=hmm&csrf={csrf}");
    let (status, _, body) = raw(&s, "POST", path, &auth, &unknown);
    assert!((400..500).contains(&status), "{status}: {body}");
    assert_eq!(
        s.latest("production")["decisions"]
            .as_array()
            .unwrap()
            .len(),
        0,
        "nothing recorded"
    );

    let (status, head, _) = raw(&s, "POST", path, &auth, &form);
    assert_eq!(status, 303, "{head}");
    wait_for("the approved promotion to succeed", || {
        s.latest("production")["state"] == "succeeded"
    });

    // Revoking the token ends its sessions at once: the sign-in page says why, and the
    // cookie goes.
    s.ok(&["token", "revoke", "alice"]);
    let (status, head, body) = raw(&s, "GET", "/", &auth, "");
    assert_eq!(status, 401, "{head}");
    assert!(body.contains("was revoked; sign in again"), "{body}");
    assert!(head.contains("shipgate_session=;"), "{head}");
}

#[test]
fn scoped_viewers_see_their_environments_and_the_audit_exports_json_lines() {
    let s = spawn_server(&four_envs_with("", &[]));
    let dev = s.token("dev-viewer", "viewer", &["development"]);
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "testing");
    let cookie = sign_in(&s, &dev);
    let auth = [("Cookie", cookie.as_str())];
    let (status, _, board) = raw(&s, "GET", "/", &auth, "");
    assert_eq!(status, 200);
    assert!(board.contains("data-env=\"development\""));
    assert!(
        !board.contains("data-env=\"testing\""),
        "testing is out of scope"
    );
    let (status, _, body) = raw(&s, "GET", "/apps/web/environments/testing", &auth, "");
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("token `dev-viewer` is limited to development"),
        "{body}"
    );
    let (status, _, body) = raw(&s, "GET", "/?app=nothing-like-it", &auth, "");
    assert_eq!(status, 200);
    assert!(body.contains("No app matches"), "{body}");

    let admin = std::fs::read_to_string(s.data_dir().join("admin.token")).unwrap();
    let cookie = sign_in(&s, admin.trim());
    let auth = [("Cookie", cookie.as_str())];
    let (status, head, lines) = raw(
        &s,
        "GET",
        "/audit.jsonl?kind=promotion.succeeded",
        &auth,
        "",
    );
    assert_eq!(status, 200);
    assert!(head.contains("application/x-ndjson"), "{head}");
    let events: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "development and testing: {lines}");
    assert!(events.iter().all(|e| e["kind"] == "promotion.succeeded"));
    let (status, _, page) = raw(&s, "GET", "/audit?env=testing&kind=promotion", &auth, "");
    assert_eq!(status, 200);
    assert!(page.contains("web@1.0.0 is verified in testing"), "{page}");
    assert!(
        !page.contains("web@1.0.0 is verified in development"),
        "{page}"
    );
}

#[test]
fn the_board_pages_fifty_apps_and_the_buttons_promote_and_roll_back_to_a_chosen_release() {
    let mut config = four_envs_with("", &[]);
    let app = "[apps.web]\nrun = \"python3 server.py --port ${PORT}\"\nhealth = \"/healthz\"\n";
    let many: String = (0..119)
        .map(|i| format!("[apps.svc-{i:03}]\nrun = \"python3 server.py --port ${{PORT}}\"\n"))
        .collect();
    config = config.replace(app, &format!("{app}{many}"));
    let s = spawn_server(&config);
    s.register("1.0.0", &[]);
    s.ok(&["promote", "web@1.0.0", "--to", "development", "--wait"]);
    for version in ["1.1.0", "1.2.0"] {
        s.register(version, &[]);
        s.deploy(version, "development");
    }
    let admin = std::fs::read_to_string(s.data_dir().join("admin.token")).unwrap();
    let cookie = sign_in(&s, admin.trim());
    let auth = [("Cookie", cookie.as_str())];

    let rows = |page: &str| page.matches("<tr data-app=").count();
    let (_, _, first) = raw(&s, "GET", "/", &auth, "");
    assert_eq!(rows(&first), 50);
    assert!(
        first.contains("120 apps · page 1 of 3"),
        "the count and pages"
    );
    assert!(
        first.contains("href=\"/?app=&#38;page=2\" rel=\"next\""),
        "a next link: {}",
        &first[first.find("class=\"pages\"").unwrap_or(0)..]
    );
    let (_, _, last) = raw(&s, "GET", "/?page=3", &auth, "");
    assert_eq!(rows(&last), 20);
    assert!(last.contains("rel=\"prev\"") && !last.contains("rel=\"next\""));
    let (_, _, filtered) = raw(&s, "GET", "/?app=svc-01", &auth, "");
    assert_eq!(rows(&filtered), 10, "svc-010 to svc-019");

    let (status, _, page) = raw(&s, "GET", "/apps/web/environments/development", &auth, "");
    assert_eq!(status, 200);
    let choices = |page: &str, select: &str| -> Vec<String> {
        let from = page.find(&format!("id=\"{select}\"")).unwrap();
        let to = from + page[from..].find("</select>").unwrap();
        page[from..to]
            .split("<option value=\"")
            .skip(1)
            .map(|o| o.split('"').next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        choices(&page, "rollback-to"),
        ["1.1.0", "1.0.0"],
        "the release a rollback goes to by default comes first"
    );
    assert_eq!(
        choices(&page, "promote-to")[0],
        "testing",
        "the next environment comes first"
    );
    assert!(
        page.contains("<dt>Rollback goes to</dt><dd>1.1.0</dd>"),
        "{page}"
    );
    assert!(
        page.contains("<link rel=\"icon\" href=\"data:image/svg+xml,"),
        "a favicon"
    );
    assert!(
        page.contains("<td class=\"small at\">"),
        "times kept on one line"
    );
    let form = format!("csrf={}&to=1.0.0", csrf_of(&page));
    let (status, head, _) = raw(
        &s,
        "POST",
        "/apps/web/environments/development/rollback",
        &auth,
        &form,
    );
    assert_eq!(status, 303, "{head}");
    wait_for("development back on the chosen 1.0.0", || {
        s.version("development").as_deref() == Some("1.0.0")
    });
    let latest = s.latest("development");
    assert_eq!(latest["kind"], "rollback");
    assert_eq!(latest["previous_version"], "1.2.0");

    let form = format!("csrf={}&to=testing", csrf_of(&page));
    let (status, head, _) = raw(
        &s,
        "POST",
        "/apps/web/environments/development/promote",
        &auth,
        &form,
    );
    assert_eq!(status, 303, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("location: /apps/web/environments/testing"),
        "{head}"
    );
    wait_for("testing running what development runs", || {
        s.version("testing").as_deref() == Some("1.0.0")
    });

    // A release whose smoke test fails in testing: its page says where testing stays.
    s.register("3.0.0", &[("BUG", "")]);
    s.deploy("3.0.0", "development");
    s.refused(&["promote", "web@3.0.0", "--to", "testing", "--wait"]);
    let (_, _, page) = raw(&s, "GET", "/apps/web/releases/3.0.0", &auth, "");
    assert!(
        page.contains(
            "<strong class=\"back-on\">testing is on web@1.0.0, as before this promotion</strong>"
        ),
        "{page}"
    );

    // The audit filters offer the values there are, the chosen one selected.
    let (_, _, audit) = raw(&s, "GET", "/audit?env=testing&kind=promotion", &auth, "");
    for option in [
        "<option selected>testing</option>",
        "<option selected>promotion</option>",
        "<option>promotion.failed</option>",
        "<option>release.pruned</option>",
        "<option>svc-000</option>",
        "<option>production</option>",
    ] {
        assert!(audit.contains(option), "{option} in the audit filters");
    }
    assert!(
        !audit.contains("type=\"text\" name=\"kind\""),
        "no free text"
    );
    assert!(
        latest["requested_by"]
            .as_str()
            .unwrap()
            .starts_with("admin-")
    );
}

/// The environments a page's Promote offers, in order (none without the form).
fn promote_choices(page: &str) -> Vec<String> {
    let Some(from) = page.find("id=\"promote-to\"") else {
        return Vec::new();
    };
    let to = from + page[from..].find("</select>").unwrap();
    page[from..to]
        .split("<option value=\"")
        .skip(1)
        .map(|o| o.split('"').next().unwrap().to_owned())
        .collect()
}

#[test]
fn an_environment_page_promotes_only_to_the_environments_after_it_never_back() {
    let mut config = four_envs_with("", &[]);
    config.push_str(&format!(
        "\n[environments.demo]\nlisten = \"127.0.0.1:{}\"\nafter = \"staging\"\n",
        crate::helpers::free_port()
    ));
    let s = spawn_server(&config);
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "production");
    let admin = std::fs::read_to_string(s.data_dir().join("admin.token")).unwrap();
    let cookie = sign_in(&s, admin.trim());
    let auth = [("Cookie", cookie.as_str())];

    for (env, onward) in [
        ("development", &["testing"][..]),
        ("staging", &["production", "demo"][..]),
        ("production", &[][..]),
    ] {
        let (status, _, page) = raw(
            &s,
            "GET",
            &format!("/apps/web/environments/{env}"),
            &auth,
            "",
        );
        assert_eq!(status, 200, "{page}");
        assert_eq!(promote_choices(&page), onward, "Promote on the {env} page");
    }
    let (_, _, production) = raw(&s, "GET", "/apps/web/environments/production", &auth, "");
    assert!(
        !production.contains("id=\"promote-form\"") && !production.contains("Promote 1.0.0"),
        "nothing comes after production: no Promote at all"
    );

    // A form that names an environment before it is refused, saying where to go instead.
    let before = s.latest("development")["id"].clone();
    let form = format!("csrf={}&to=development", csrf_of(&production));
    let (status, _, refusal) = raw(
        &s,
        "POST",
        "/apps/web/environments/production/promote",
        &auth,
        &form,
    );
    assert_eq!(status, 409, "{refusal}");
    assert!(
        refusal.contains("development comes before production"),
        "{refusal}"
    );
    assert_eq!(s.latest("development")["id"], before, "nothing promoted");
}
