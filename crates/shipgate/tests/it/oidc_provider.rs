//! An OpenID Connect provider on loopback for the sign-in tests: `tests/fixtures/oidc/provider.js`,
//! oauth2-mock-server from the npm registry with what a real provider checks added around it
//! (PKCE, a code used once, client secrets, refresh tokens), steered by a control file that the
//! test rewrites between requests. The fields of that file are listed at the top of
//! provider.js.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/oidc");
const PATIENCE: Duration = Duration::from_secs(30);
const INSTALL_HINT: &str = "install nodejs and npm (apt-get install nodejs npm)";

/// A provider process with its own temp dir (control file and log), killed on drop.
pub struct OidcProvider {
    dir: tempfile::TempDir,
    issuer: String,
    child: Child,
    /// Held open: the provider exits when its stdin closes, so it never outlives this process.
    _stdin: ChildStdin,
    /// Held open so that the provider never writes into a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

/// The control-file fields of the person who signs in.
pub fn person(sub: &str, email: &str, name: &str, groups: &[&str]) -> Value {
    json!({ "sub": sub, "email": email, "name": name, "groups": groups })
}

impl OidcProvider {
    /// Installs the npm packages when needed, starts `node provider.js` on a free loopback port
    /// with an empty control file, and returns once it listens.
    pub fn start() -> OidcProvider {
        installed();
        let dir = tempfile::Builder::new()
            .prefix("shipgate-oidc-")
            .tempdir()
            .unwrap();
        let log = fs::File::create(dir.path().join("provider.log")).unwrap();
        let control = dir.path().join("control.json");
        fs::write(&control, "{}").unwrap();
        let mut child = Command::new("node")
            .arg("provider.js")
            .arg(&control)
            .current_dir(FIXTURE)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting node provider.js ({e}): {INSTALL_HINT}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, first_line) = mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            let _ = stdout.read_line(&mut line);
            let _ = sender.send((line, stdout));
        });
        let Ok((line, stdout)) = first_line.recv_timeout(PATIENCE) else {
            let _ = child.kill();
            panic!(
                "provider.js did not say it listens within 30 s:\n{}",
                read_log(dir.path())
            );
        };
        let Some(issuer) = line.trim_end().strip_prefix("listening ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "provider.js did not start (it printed {line:?}):\n{}",
                read_log(dir.path())
            );
        };
        OidcProvider {
            issuer: issuer.to_owned(),
            dir,
            child,
            _stdin: stdin,
            _stdout: stdout,
        }
    }

    /// `http://127.0.0.1:PORT`, the `iss` of its tokens and the base of its discovery document.
    pub fn issuer(&self) -> String {
        self.issuer.clone()
    }

    /// Replaces the control file, whole (a temp file renamed over it, so the provider never
    /// reads half of one); the provider reads it at its next request.
    pub fn set(&self, control: Value) {
        let path = self.control_path();
        let temp = path.with_extension("json.new");
        fs::write(&temp, serde_json::to_vec_pretty(&control).unwrap()).unwrap();
        fs::rename(&temp, &path).unwrap();
    }

    /// What the provider logged (each request, each refusal with its reason), for messages.
    pub fn log(&self) -> String {
        read_log(self.dir.path())
    }

    fn control_path(&self) -> PathBuf {
        self.dir.path().join("control.json")
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_log(dir: &Path) -> String {
    fs::read_to_string(dir.join("provider.log")).unwrap_or_default()
}

/// Runs `npm ci` in the fixture folder when its packages are missing or older than its
/// package-lock.json, once per test process; the file lock keeps two test processes from
/// installing at the same time.
fn installed() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        node_is_there();
        let fixture = Path::new(FIXTURE);
        let lock = fs::File::create(fixture.join(".install.lock")).unwrap();
        lock.lock().unwrap();
        let modified = |path: &Path| fs::metadata(path).and_then(|m| m.modified()).ok();
        let stale = match (
            modified(&fixture.join("node_modules/.package-lock.json")),
            modified(&fixture.join("package-lock.json")),
        ) {
            (Some(installed), Some(locked)) => installed < locked,
            _ => true,
        };
        if stale {
            let out = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
                .current_dir(fixture)
                .output()
                .unwrap_or_else(|e| panic!("running npm ({e}): {INSTALL_HINT}"));
            assert!(
                out.status.success(),
                "npm ci in {FIXTURE} failed:\n{}",
                crate::helpers::text(&out)
            );
        }
    });
}

/// Panics saying what to install unless `node` (18 or later, as oauth2-mock-server 7 needs) and
/// `npm` run.
fn node_is_there() {
    let version = Command::new("node")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("running node ({e}): {INSTALL_HINT}"));
    let version = String::from_utf8_lossy(&version.stdout);
    let major: u32 = version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("node --version said {version:?}: {INSTALL_HINT}"));
    assert!(
        major >= 18,
        "node {version} is too old for oauth2-mock-server (18 or later): {INSTALL_HINT}"
    );
    Command::new("npm")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("running npm ({e}): {INSTALL_HINT}"));
}

const CLIENT: &str = "shipgate";
const SECRET: &str = "s3cret";
const REDIRECT: &str = "http://127.0.0.1:9/auth/callback";

#[test]
fn the_provider_signs_in_with_pkce_and_refreshes_with_the_groups_of_now() {
    let provider = OidcProvider::start();
    let mut control = person(
        "ada",
        "ada@example.com",
        "Ada Lovelace",
        &["deployers", "admins"],
    );
    control["client_secret"] = json!(SECRET);
    provider.set(control.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let discovery: Value = http
            .get(format!(
                "{}/.well-known/openid-configuration",
                provider.issuer()
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(discovery["issuer"], provider.issuer());
        let authorize = discovery["authorization_endpoint"].as_str().unwrap();
        let token = discovery["token_endpoint"].as_str().unwrap();
        let jwks_uri = discovery["jwks_uri"].as_str().unwrap();
        assert!(discovery["end_session_endpoint"].is_string(), "{discovery}");

        let verifier = "the-verifier-of-the-first-sign-in-43-characters-at-least";
        let (code, state) = sign_in(&http, authorize, verifier, "state-1", "nonce-1").await;
        assert_eq!(state, "state-1");
        let exchange = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ];
        let (status, tokens) =
            answer(http.post(token).basic_auth(CLIENT, Some(SECRET)), &exchange).await;
        assert_eq!(status, 200, "{tokens}\n{}", provider.log());
        let id_token = tokens["id_token"].as_str().unwrap();
        let claims = jwt_part(id_token, 1);
        assert_eq!(claims["iss"], provider.issuer());
        assert_eq!(claims["aud"], CLIENT);
        assert_eq!(claims["nonce"], "nonce-1");
        assert_eq!(claims["sub"], "ada");
        assert_eq!(claims["email"], "ada@example.com");
        assert_eq!(claims["groups"], json!(["deployers", "admins"]));
        let kid = jwt_part(id_token, 0)["kid"].clone();
        let jwks: Value = http
            .get(jwks_uri)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kid"] == kid && k["alg"] == "RS256"),
            "the id_token's key {kid} is not in {jwks}"
        );

        let (status, refused) =
            answer(http.post(token).basic_auth(CLIENT, Some(SECRET)), &exchange).await;
        assert_eq!((status, &refused["error"]), (400, &json!("invalid_grant")));

        let (code, _) = sign_in(
            &http,
            authorize,
            "another-verifier-of-a-second-sign-in-43-characters-at-least",
            "state-2",
            "nonce-2",
        )
        .await;
        let wrong = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ];
        let (status, refused) =
            answer(http.post(token).basic_auth(CLIENT, Some(SECRET)), &wrong).await;
        assert_eq!((status, &refused["error"]), (400, &json!("invalid_grant")));

        let (code, _) = sign_in(&http, authorize, verifier, "state-3", "nonce-3").await;
        let without_verifier = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
        ];
        let (status, refused) = answer(
            http.post(token).basic_auth(CLIENT, Some(SECRET)),
            &without_verifier,
        )
        .await;
        assert_eq!((status, &refused["error"]), (400, &json!("invalid_grant")));

        let (code, _) = sign_in(&http, authorize, verifier, "state-4", "nonce-4").await;
        let wrong_secret = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
            ("client_id", CLIENT),
            ("client_secret", "not-the-secret"),
        ];
        let (status, refused) = answer(http.post(token), &wrong_secret).await;
        assert_eq!((status, &refused["error"]), (401, &json!("invalid_client")));

        control["groups"] = json!(["deployers"]);
        provider.set(control.clone());
        let first_refresh_token = tokens["refresh_token"].as_str().unwrap();
        let refresh = |refresh_token: &str| {
            [
                ("grant_type", "refresh_token".to_owned()),
                ("refresh_token", refresh_token.to_owned()),
                ("client_id", CLIENT.to_owned()),
                ("client_secret", SECRET.to_owned()),
            ]
        };
        let (status, refreshed) = answer(http.post(token), &refresh(first_refresh_token)).await;
        assert_eq!(status, 200, "{refreshed}\n{}", provider.log());
        let claims = jwt_part(refreshed["id_token"].as_str().unwrap(), 1);
        assert_eq!(claims["groups"], json!(["deployers"]));
        assert_eq!(claims["aud"], CLIENT);
        assert!(claims["nonce"].is_null(), "a refreshed id_token: {claims}");
        let refresh_token = refreshed["refresh_token"].as_str().unwrap();
        assert_ne!(refresh_token, first_refresh_token);
        let (status, refused) = answer(http.post(token), &refresh(first_refresh_token)).await;
        assert_eq!(
            (status, &refused["error"]),
            (400, &json!("invalid_grant")),
            "a spent refresh token"
        );

        control["refresh"] = json!(false);
        provider.set(control.clone());
        let (status, refused) = answer(http.post(token), &refresh(refresh_token)).await;
        assert_eq!((status, &refused["error"]), (400, &json!("invalid_grant")));
    });
}

/// `/authorize` for [`CLIENT`] with the S256 challenge of `verifier`; the code and state of
/// the redirect it answers (not followed).
async fn sign_in(
    http: &reqwest::Client,
    authorize: &str,
    verifier: &str,
    state: &str,
    nonce: &str,
) -> (String, String) {
    let challenge = base64url(&Sha256::digest(verifier.as_bytes()));
    let response = http
        .get(authorize)
        .query(&[
            ("response_type", "code"),
            ("client_id", CLIENT),
            ("redirect_uri", REDIRECT),
            ("scope", "openid email profile"),
            ("state", state),
            ("nonce", nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 302);
    let location = response.headers()["location"].to_str().unwrap();
    let location = reqwest::Url::parse(location).unwrap();
    let param = |name: &str| {
        location
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| panic!("no {name} in the redirect to {location}"))
    };
    (param("code"), param("state"))
}

/// Sends `form` with `request`; the status and the JSON body of the answer.
async fn answer<V: serde::Serialize>(
    request: reqwest::RequestBuilder,
    form: &[(&str, V)],
) -> (u16, Value) {
    let response = request.form(form).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Part `index` of a JWT (0 the header, 1 the claims) as JSON; the signature is not checked.
fn jwt_part(jwt: &str, index: usize) -> Value {
    let part = jwt.split('.').nth(index).unwrap();
    serde_json::from_slice(&unbase64url(part)).unwrap()
}

// The shipgate crate has no base64 dependency; these few lines are all the tests need.
const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64url without padding (RFC 4648 section 5), as JWTs and PKCE write it.
fn base64url(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let bits = chunk
            .iter()
            .enumerate()
            .fold(0u32, |bits, (i, b)| bits | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(
                BASE64URL[((bits >> (18 - 6 * i)) & 63) as usize],
            ));
        }
    }
    out
}

fn unbase64url(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut bits, mut count) = (0u32, 0);
    for c in text.bytes() {
        let value = BASE64URL
            .iter()
            .position(|a| *a == c)
            .unwrap_or_else(|| panic!("{text:?} is not base64url"));
        bits = (bits << 6) | u32::try_from(value).unwrap();
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push(u8::try_from(bits >> count).unwrap());
            bits &= (1 << count) - 1;
        }
    }
    out
}
