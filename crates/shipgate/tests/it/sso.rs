//! Single sign-on against a real OpenID Connect provider on loopback (`oidc_provider.rs`):
//! `shipgate login` through its loopback callback, the dashboard's sign-in over plain HTTP,
//! tokens the provider got wrong refused, sessions that outlive a restart, and roles read again
//! from the groups of now once the ID token expires.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::browser::Browser;
use crate::helpers::{TestServer, command, four_envs, spawn_server_with_env, text, wait_for};
use crate::oidc_provider::{OidcProvider, person};

const SECRET_ENV: &str = "SHIPGATE_IT_OIDC_SECRET";
const SECRET: &str = "s3cret-of-the-client";
const PATIENCE: Duration = Duration::from_secs(30);

/// The four environments with `[server.oidc]` at `provider`: developers deploy to
/// development, platform people are admins.
fn config(provider: &OidcProvider) -> String {
    four_envs(&format!(
        "[server.oidc]\nissuer = \"{}\"\nclient_id = \"shipgate\"\nclient_secret_env = \"{SECRET_ENV}\"\n[server.oidc.roles]\n\"developers\" = {{ role = \"deployer\", envs = [\"development\"] }}\n\"platform\" = \"admin\"\n",
        provider.issuer()
    ))
}

/// The control file for `groups` of Ada, with the client registered at the provider.
fn ada(groups: &[&str]) -> Value {
    let mut control = person("ada-sub", "ada@example.com", "Ada Lovelace", groups);
    control["client_id"] = json!("shipgate");
    control["client_secret"] = json!(SECRET);
    control
}

fn start(provider: &OidcProvider) -> TestServer {
    spawn_server_with_env(&config(provider), &[(SECRET_ENV, SECRET)])
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An HTTP client that follows no redirect, as the tests walk each one.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(PATIENCE)
        .build()
        .unwrap()
}

fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("location")
        .unwrap_or_else(|| panic!("no Location in the {} answer", response.status()))
        .to_str()
        .unwrap()
        .to_owned()
}

/// A way back from the provider: the callback address, and the cookie `/auth/login` gave the
/// browser that started it.
struct Callback {
    url: String,
    cookie: String,
}

impl Callback {
    /// The browser that started the sign-in follows it back.
    async fn follow(&self, http: &reqwest::Client) -> reqwest::Response {
        http.get(&self.url)
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap()
    }
}

/// Goes to the provider from the server's `/auth/login`; the way the provider sends the
/// browser back.
async fn to_provider_and_back(
    http: &reqwest::Client,
    api: &str,
    provider: &OidcProvider,
) -> Callback {
    let login = http
        .get(format!("{api}/auth/login?next=/audit"))
        .send()
        .await
        .unwrap();
    assert!(login.status().is_redirection(), "{}", login.status());
    let cookie = login.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("SameSite=Lax"), "{cookie}");
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let authorize = location(&login);
    assert!(authorize.starts_with(&provider.issuer()), "{authorize}");
    let back = http.get(&authorize).send().await.unwrap();
    assert!(
        back.status().is_redirection(),
        "{}: {}",
        back.status(),
        provider.log()
    );
    let url = location(&back);
    assert!(url.starts_with(&format!("{api}/auth/callback?")), "{url}");
    Callback { url, cookie }
}

/// The whole dashboard sign-in; the session cookie (`name=value`).
async fn dashboard_sign_in(http: &reqwest::Client, api: &str, provider: &OidcProvider) -> String {
    let callback = to_provider_and_back(http, api, provider).await;
    let answer = callback.follow(http).await;
    assert_eq!(answer.status().as_u16(), 200);
    let cookie = answer.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let body = answer.text().await.unwrap();
    assert!(body.contains("url=/audit"), "it moves on to next: {body}");
    cookie
}

/// A page of the dashboard with `cookie`: its status and body.
async fn page(http: &reqwest::Client, url: &str, cookie: &str) -> (u16, String) {
    let answer = http.get(url).header("cookie", cookie).send().await.unwrap();
    (answer.status().as_u16(), answer.text().await.unwrap())
}

/// A sign-in that must be refused at the callback: its status and page.
async fn refused_sign_in(
    http: &reqwest::Client,
    api: &str,
    provider: &OidcProvider,
) -> (u16, String) {
    let callback = to_provider_and_back(http, api, provider).await;
    let answer = callback.follow(http).await;
    assert!(
        answer.headers().get("set-cookie").is_none(),
        "a refused sign-in sets no cookie"
    );
    (answer.status().as_u16(), answer.text().await.unwrap())
}

/// `shipgate -c CONFIG ARGS` as a person whose home is `home` (where `shipgate login` keeps
/// its session).
fn as_person(server: &TestServer, home: &Path) -> Command {
    let mut c = command(server.dir.path());
    c.env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .arg("-c")
        .arg(&server.config);
    c
}

/// Starts `shipgate login`; the child and the address it says to open.
fn start_login(server: &TestServer, home: &Path) -> (Child, String, mpsc::Receiver<String>) {
    let mut child = as_person(server, home)
        .args(["login", "--no-browser"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines, said) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match said.recv_timeout(left) {
            Ok(line) => {
                if let Some(url) = line.strip_prefix("Open this address to sign in: ") {
                    return (child, url.to_owned(), said);
                }
                seen.push(line);
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("shipgate login printed no address: {seen:?}");
            }
        }
    }
}

/// Waits for a child with a bound; its output.
fn finished(mut child: Child, said: mpsc::Receiver<String>) -> Output {
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let mut out = child.wait_with_output().unwrap();
    out.stderr
        .extend(said.try_iter().flat_map(|l| format!("{l}\n").into_bytes()));
    out
}

/// A home where `shipgate login` signed in at the provider as its control file says.
fn logged_in(server: &TestServer) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let (child, url, said) = start_login(server, home.path());
    runtime().block_on(async {
        let http = browser();
        let callback = location(&http.get(&url).send().await.unwrap());
        http.get(&callback).send().await.unwrap();
    });
    let out = finished(child, said);
    assert!(out.status.success(), "{}", text(&out));
    home
}

#[test]
fn shipgate_login_keeps_a_session_whose_roles_come_from_the_groups() {
    let provider = OidcProvider::start();
    provider.set(ada(&["developers", "unrelated"]));
    let server = start(&provider);
    server.register("1.0.0", &[]);
    let home = tempfile::tempdir().unwrap();

    let (child, url, said) = start_login(&server, home.path());
    runtime().block_on(async {
        let http = browser();
        let at_provider = http.get(&url).send().await.unwrap();
        assert!(
            at_provider.status().is_redirection(),
            "{}: {}",
            at_provider.status(),
            provider.log()
        );
        let callback = location(&at_provider);
        assert!(callback.starts_with("http://127.0.0.1:"), "{callback}");
        let tab = http.get(&callback).send().await.unwrap();
        assert_eq!(tab.status().as_u16(), 200);
        assert!(tab.text().await.unwrap().contains("close this tab"));
    });
    let out = finished(child, said);
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("signed in as ada@example.com with roles deployer (development)"),
        "{printed}"
    );

    let credentials = home.path().join(".config/shipgate/credentials.json");
    let mode = std::fs::metadata(&credentials)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{}", credentials.display());
    let kept: Value = serde_json::from_slice(&std::fs::read(&credentials).unwrap()).unwrap();
    let session = &kept[server.api()];
    assert!(
        session["token"].as_str().unwrap().starts_with("sgs_"),
        "{kept}"
    );

    let status = as_person(&server, home.path())
        .arg("status")
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", text(&status));

    let promote = |env: &str| {
        as_person(&server, home.path())
            .args(["promote", "web@1.0.0", "--to", env, "--wait"])
            .output()
            .unwrap()
    };
    let development = promote("development");
    assert!(development.status.success(), "{}", text(&development));
    let staging = promote("staging");
    assert!(!staging.status.success(), "{}", text(&staging));
    assert!(
        text(&staging).contains("ada@example.com"),
        "refused as the person: {}",
        text(&staging)
    );
    let events = server.messages_of("session.signed_in");
    assert!(
        events
            .iter()
            .any(|m| m.contains("ada@example.com") && m.contains("deployer (development)")),
        "{events:?}"
    );

    // Without credentials the local admin token is used, as before.
    let elsewhere = tempfile::tempdir().unwrap();
    let admin = as_person(&server, elsewhere.path())
        .args(["promote", "web@1.0.0", "--to", "testing", "--wait"])
        .output()
        .unwrap();
    assert!(admin.status.success(), "{}", text(&admin));
}

#[test]
fn the_dashboard_signs_in_at_the_provider_and_refuses_what_it_must() {
    let provider = OidcProvider::start();
    provider.set(ada(&["developers"]));
    let server = start(&provider);
    let api = server.api();
    runtime().block_on(async {
        let http = browser();
        let (status, sign_in) = page(&http, &format!("{api}/sign-in"), "").await;
        assert_eq!(status, 200);
        assert!(
            sign_in.contains("Sign in with your identity provider"),
            "{sign_in}"
        );

        let callback = to_provider_and_back(&http, &api, &provider).await;
        // Another browser (one without the cookie of this sign-in) is refused it.
        let elsewhere = http.get(&callback.url).send().await.unwrap();
        assert_eq!(elsewhere.status().as_u16(), 400);
        assert!(
            elsewhere
                .text()
                .await
                .unwrap()
                .contains("was not started in this browser")
        );
        let answer = callback.follow(&http).await;
        assert_eq!(answer.status().as_u16(), 200);
        let cookie = answer.headers()["set-cookie"].to_str().unwrap();
        assert!(cookie.contains("HttpOnly"), "{cookie}");
        let cookie = cookie.split(';').next().unwrap().to_owned();
        let (status, board) = page(&http, &format!("{api}/"), &cookie).await;
        assert_eq!(status, 200, "{board}");
        assert!(board.contains("ada@example.com"), "{board}");
        assert!(board.contains("deployer (development)"), "{board}");

        // The provider rotates its key: the key set is fetched again for the new one.
        let mut rotated = ada(&["developers"]);
        rotated["rotate_key"] = json!(1);
        provider.set(rotated);
        let again = dashboard_sign_in(&http, &api, &provider).await;
        assert_eq!(page(&http, &format!("{api}/"), &again).await.0, 200);

        let replayed = callback.follow(&http).await;
        assert_eq!(replayed.status().as_u16(), 400);
        assert!(
            replayed
                .text()
                .await
                .unwrap()
                .contains("this sign-in was already used or has expired; sign in again")
        );

        let mut wrong_audience = ada(&["developers"]);
        wrong_audience["aud"] = json!("another-client");
        provider.set(wrong_audience);
        let (status, body) = refused_sign_in(&http, &api, &provider).await;
        assert_eq!(status, 400);
        assert!(body.contains("not to this client"), "{body}");

        for (field, says) in [
            ("expired", "expired"),
            ("bad_signature", "signature does not verify"),
        ] {
            let mut control = ada(&["developers"]);
            control[field] = json!(true);
            provider.set(control);
            let (status, body) = refused_sign_in(&http, &api, &provider).await;
            assert_eq!(status, 400, "{field}: {body}");
            assert!(body.contains(says), "{field}: {body}");
        }

        provider.set(ada(&["marketing"]));
        let (status, body) = refused_sign_in(&http, &api, &provider).await;
        assert_eq!(status, 403, "{body}");
        assert!(
            body.contains("you signed in as ada@example.com, but none of your groups (marketing) maps to a role in shipgate"),
            "{body}"
        );
        assert!(body.contains("developers, platform"), "{body}");

        let mut overage = ada(&["developers"]);
        overage["overage"] = json!(true);
        provider.set(overage);
        let (status, body) = refused_sign_in(&http, &api, &provider).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("group overage"), "{body}");

        // Signing out ends the session in the store.
        let (_, board) = page(&http, &format!("{api}/"), &cookie).await;
        let csrf = board
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap()
            .to_owned();
        let out = http
            .post(format!("{api}/sign-out"))
            .header("cookie", &cookie)
            .form(&[("csrf", csrf)])
            .send()
            .await
            .unwrap();
        assert!(out.status().is_redirection(), "{}", out.status());
        let after = http
            .get(format!("{api}/"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert!(location(&after).starts_with("/sign-in"));
    });
}

#[test]
fn a_session_outlives_a_restart() {
    let provider = OidcProvider::start();
    provider.set(ada(&["platform"]));
    let mut server = start(&provider);
    let api = server.api();
    let cookie = runtime().block_on(async {
        let http = browser();
        let cookie = dashboard_sign_in(&http, &api, &provider).await;
        let (status, _) = page(&http, &format!("{api}/"), &cookie).await;
        assert_eq!(status, 200);
        cookie
    });
    server.kill9();
    server.restart_answering();
    assert_ada_signed_in(&api, &cookie);
}

/// The board of the server at `api`, with `cookie`, shows Ada signed in.
fn assert_ada_signed_in(api: &str, cookie: &str) {
    runtime().block_on(async {
        let (status, board) = page(&browser(), &format!("{api}/"), cookie).await;
        assert_eq!(status, 200, "{board}");
        assert!(board.contains("ada@example.com"), "{board}");
    });
}

#[test]
fn servers_on_one_postgresql_database_share_sessions() {
    let provider = OidcProvider::start();
    provider.set(ada(&["platform"]));
    let database = crate::helpers::postgres_database("sso");
    let key = "5a".repeat(32);
    let config = || {
        format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\ndata_dir = \"data\"\ndatabase = \"{database}\"\nlease = \"2s\"\ndata_plane = \"server\"\nisolation = \"none\"\nsecrets_key_env = \"SHIPGATE_IT_SECRETS_KEY\"\n[server.oidc]\nissuer = \"{}\"\nclient_id = \"shipgate\"\nclient_secret_env = \"{SECRET_ENV}\"\n[server.oidc.roles]\n\"platform\" = \"admin\"\n\n[apps.web]\nrun = \"python3 server.py --port ${{PORT}}\"\nhealth = \"/healthz\"\n\n[environments.development]\nlisten = \"127.0.0.1:{}\"\n",
            crate::helpers::free_port(),
            provider.issuer(),
            crate::helpers::free_port()
        )
    };
    let env = [
        (SECRET_ENV, SECRET),
        ("SHIPGATE_IT_SECRETS_KEY", key.as_str()),
    ];
    let mut a = spawn_server_with_env(&config(), &env);
    let b = crate::helpers::spawn_standby_with_env(&config(), &env);
    // Unisolated, an instance inherits the server's environment, but never the secrets key or
    // the client secret.
    a.register("1.0.0", &[]);
    a.deploy("1.0.0", "development");
    for hidden in ["SHIPGATE_IT_SECRETS_KEY", SECRET_ENV] {
        let reply = a
            .get(&format!("{}/envhash?name={hidden}", a.url("development")))
            .unwrap();
        assert_eq!(reply.status, 404, "{hidden} reached the instance");
    }
    let inherited = a
        .get(&format!("{}/envhash?name=PATH", a.url("development")))
        .unwrap();
    assert_eq!(
        inherited.status, 200,
        "the rest of the environment is inherited"
    );
    let cookie = runtime().block_on(async {
        let http = browser();
        let cookie = dashboard_sign_in(&http, &a.api(), &provider).await;
        let (status, _) = page(&http, &format!("{}/", a.api()), &cookie).await;
        assert_eq!(status, 200);
        cookie
    });
    // The server that signed Ada in is gone; the one that takes over knows her session (and
    // opens its sealed refresh token with the key they share).
    a.kill9();
    let api = b.api();
    wait_for("the standby to lead", || {
        crate::helpers::http_get(&format!("{api}/healthz"), None).is_some_and(|r| r.status == 200)
    });
    assert_ada_signed_in(&api, &cookie);
}

#[test]
fn groups_are_read_again_when_the_id_token_expires() {
    let provider = OidcProvider::start();
    let mut control = ada(&["developers"]);
    control["id_token_lifetime"] = json!(2);
    provider.set(control.clone());
    let server = start(&provider);
    let api = server.api();
    let home = logged_in(&server);
    runtime().block_on(async {
        let http = browser();
        let cookie = dashboard_sign_in(&http, &api, &provider).await;
        let (status, board) = page(&http, &format!("{api}/"), &cookie).await;
        assert_eq!(status, 200, "{board}");

        // Still in a group: a refresh keeps the session.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (status, board) = page(&http, &format!("{api}/"), &cookie).await;
        assert_eq!(status, 200, "{board}\n{}", provider.log());
        assert!(
            provider.log().contains("refresh_token"),
            "the roles were read again: {}",
            provider.log()
        );

        control["groups"] = json!(["marketing"]);
        provider.set(control.clone());
        let deadline = Instant::now() + PATIENCE;
        let (status, body) = loop {
            let (status, body) = page(&http, &format!("{api}/"), &cookie).await;
            if status != 200 || Instant::now() > deadline {
                break (status, body);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("none of your groups (marketing)"), "{body}");
        let after = http
            .get(format!("{api}/"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert!(
            location(&after).starts_with("/sign-in"),
            "the session ended"
        );
    });
    // The CLI's session is read again too, at its next request after the ID token expired.
    let status = as_person(&server, home.path())
        .arg("status")
        .output()
        .unwrap();
    assert!(!status.status.success(), "{}", text(&status));
    assert!(
        text(&status).contains("none of your groups (marketing)"),
        "{}",
        text(&status)
    );
    let again = as_person(&server, home.path())
        .arg("status")
        .output()
        .unwrap();
    assert!(
        text(&again).contains("sign in again (shipgate login)"),
        "{}",
        text(&again)
    );
    let ended = server.messages_of("session.ended");
    assert!(
        ended.iter().any(|m| m.contains("ada@example.com")),
        "{ended:?}"
    );
}

#[test]
fn a_browser_comes_back_from_the_provider_signed_in_on_the_page_it_asked_for() {
    let provider = OidcProvider::start();
    provider.set(ada(&["developers"]));
    let server = start(&provider);
    let b = Browser::start();
    // Started on another site (localhost) than the one the provider sends the browser back to
    // (127.0.0.1), as after following a link from elsewhere: the SameSite=Strict cookie set at
    // the callback must still reach the page asked for.
    let elsewhere = server.api().replace("127.0.0.1", "localhost");
    b.goto(&format!("{elsewhere}/sign-in?next=/audit"));
    b.click("#sign-in-oidc");
    wait_for("the audit page, signed in as Ada", || {
        b.url().ends_with("/audit") && b.text("body").contains("ada@example.com")
    });
}

#[test]
fn a_pasted_token_session_is_kept_in_the_store_and_ends_with_its_token() {
    let mut server = crate::helpers::spawn_server(&four_envs(""));
    let token = server.token("reader", "viewer", &[]);
    let api = server.api();
    let http = browser();
    let rt = runtime();
    let cookie = rt.block_on(async {
        let (_, sign_in) = page(&http, &format!("{api}/sign-in"), "").await;
        assert!(!sign_in.contains("identity provider"), "{sign_in}");
        let answer = http
            .post(format!("{api}/sign-in"))
            .form(&[("token", token.as_str()), ("next", "/audit")])
            .send()
            .await
            .unwrap();
        assert_eq!(location(&answer), "/audit");
        let cookie = answer.headers()["set-cookie"].to_str().unwrap();
        cookie.split(';').next().unwrap().to_owned()
    });
    server.kill9();
    server.restart_answering();
    // A new client: the old one's kept connection went with the server.
    let http = browser();
    rt.block_on(async {
        let (status, board) = page(&http, &format!("{api}/"), &cookie).await;
        assert_eq!(status, 200, "{board}");
        assert!(board.contains("reader"), "{board}");
    });
    server.ok(&["token", "revoke", "reader"]);
    rt.block_on(async {
        let (status, body) = page(&http, &format!("{api}/"), &cookie).await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("was revoked"), "{body}");
    });
}

/// A server whose production needs one approval, with release managers approving there (and
/// `roles` more), and a release waiting in staging.
fn approvals_server(provider: &OidcProvider, roles: &str) -> TestServer {
    let config = crate::helpers::four_envs_with(
        &format!(
            "[server.oidc]\nissuer = \"{}\"\nclient_id = \"shipgate\"\nclient_secret_env = \"{SECRET_ENV}\"\n[server.oidc.roles]\n\"release-managers\" = {{ role = \"approver\", envs = [\"production\"] }}\n{roles}",
            provider.issuer()
        ),
        &[("production", "require.approvals = 1")],
    );
    let server = spawn_server_with_env(&config, &[(SECRET_ENV, SECRET)]);
    server.register("1.0.0", &[]);
    server.walk("1.0.0", "staging");
    server
}

/// Bob, a release manager, signed in with `shipgate login`: his home.
fn bob_logged_in(provider: &OidcProvider, server: &TestServer) -> tempfile::TempDir {
    let mut bob = person("bob-sub", "bob@example.com", "Bob", &["release-managers"]);
    bob["client_id"] = json!("shipgate");
    bob["client_secret"] = json!(SECRET);
    provider.set(bob);
    logged_in(server)
}

/// `shipgate approve web@1.0.0 --env production` as `cmd` says.
fn approve(cmd: &mut Command) -> Output {
    cmd.args(["approve", "web@1.0.0", "--env", "production"])
        .output()
        .unwrap()
}

/// A person never approves their own promotion, whether they asked with a token made for them
/// (`--person SUB`) or signed in: the provider's `sub` is the person.
#[test]
fn a_person_signed_in_never_approves_what_their_own_token_promoted() {
    let provider = OidcProvider::start();
    let server = approvals_server(&provider, "");
    let ada_ci = server.json(&[
        "token", "create", "ada-ci", "--role", "deployer", "--person", "ada-sub",
    ])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    server.ok_as(&ada_ci, &["promote", "web@1.0.0", "--to", "production"]);

    provider.set(ada(&["release-managers"]));
    let ada_home = logged_in(&server);
    let bob_home = bob_logged_in(&provider, &server);
    let own = approve(&mut as_person(&server, ada_home.path()));
    assert!(!own.status.success(), "{}", text(&own));
    assert!(
        text(&own).contains("asked for this promotion, so ada-sub may not approve it"),
        "{}",
        text(&own)
    );
    let other = approve(&mut as_person(&server, bob_home.path()));
    assert!(other.status.success(), "{}", text(&other));
}

#[test]
fn a_person_never_approves_what_they_promoted_signed_in_whichever_credential_approves() {
    let provider = OidcProvider::start();
    let server = approvals_server(&provider, "\"deployers\" = \"deployer\"\n");
    // Ada's laptop token names her by the email she signs in with.
    let ada_laptop = server.json(&[
        "token",
        "create",
        "ada-laptop",
        "--role",
        "approver",
        "--person",
        "ada@example.com",
    ])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Ada is a deployer everywhere and an approver of production: she promotes signed in.
    provider.set(ada(&["deployers", "release-managers"]));
    let ada_home = logged_in(&server);
    let promoted = as_person(&server, ada_home.path())
        .args(["promote", "web@1.0.0", "--to", "production"])
        .output()
        .unwrap();
    assert!(promoted.status.success(), "{}", text(&promoted));
    for own in [
        approve(&mut as_person(&server, ada_home.path())),
        approve(as_person(&server, ada_home.path()).args(["--token", &ada_laptop])),
    ] {
        assert!(!own.status.success(), "{}", text(&own));
        assert!(
            text(&own).contains("asked for this promotion"),
            "{}",
            text(&own)
        );
    }
    let bob_home = bob_logged_in(&provider, &server);
    let other = approve(&mut as_person(&server, bob_home.path()));
    assert!(other.status.success(), "{}", text(&other));
}
