//! Secrets: set from stdin, sealed in the store, versioned; they reach the instances of their
//! environment and nowhere else (not the store file, the API, the logs, the events or `ps`);
//! rotation with `--deploy`, a rollback that gets the old value back, a `secrets_file`
//! encrypted with the `age` command, and a wrong key that refuses to start.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{four_envs_with, text, wait_for};

fn sha256(value: &str) -> String {
    shipgate_core::secret::hash(value)
}

/// The sha256 the live instance of `env` has of its variable `name` (None: not set there).
fn instance_hash(s: &crate::helpers::TestServer, env: &str, name: &str) -> Option<String> {
    let reply = s.get(&format!("{}/envhash?name={name}", s.url(env)))?;
    (reply.status == 200).then(|| reply.body.trim().to_owned())
}

fn set(s: &crate::helpers::TestServer, args: &[&str], value: &str) -> String {
    let out = s.cli_with_stdin(args, value);
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    text(&out)
}

/// Every file under `dir`, as bytes (the store's SQLite file, its WAL, the logs).
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => {
                    if let Ok(bytes) = std::fs::read(&path) {
                        out.push((path, bytes));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn a_secret_set_by_stdin_reaches_its_instances_only_and_a_rollback_gets_the_old_value() {
    let age = Command::new("age").arg("--version").output();
    assert!(
        age.is_ok_and(|o| o.status.success()),
        "install age (apt-get install age)"
    );
    // Its tests get the secret too (and print it: their output is masked).
    let prod_vars = "vars = { DB_PASSWORD = { secret = \"DB_PASSWORD\" }, LOG_LEVEL = \"info\" }\nverify.tests = [\"printenv DB_PASSWORD\"]";
    let mut s = crate::helpers::spawn_server(&four_envs_with(
        "watch_config = false\ndrift_scan = \"1s\"",
        &[("production", prod_vars)],
    ));
    let v1 = format!("pw-one-{}", shipgate_core::secret::random_hex(8).unwrap());
    let v2 = format!("pw-two-{}", shipgate_core::secret::random_hex(8).unwrap());
    let v3 = format!("pw-three-{}", shipgate_core::secret::random_hex(8).unwrap());
    let file_value = format!(
        "key-from-file-{}",
        shipgate_core::secret::random_hex(8).unwrap()
    );

    s.register("1.0.0", &[]);
    s.walk("1.0.0", "staging");
    // Not set yet: the deploy into production fails and says what to do.
    let out = s.cli(&["promote", "web@1.0.0", "--to", "production", "--wait"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("shipgate secret set production DB_PASSWORD"),
        "{}",
        text(&out)
    );

    // Who may write: an admin; a deployer is refused, with what it takes.
    let deployer = s.token("ci", "deployer", &[]);
    let out = s.cli_with_stdin(
        &[
            "--token",
            &deployer,
            "secret",
            "set",
            "production",
            "DB_PASSWORD",
        ],
        &v1,
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("deployers_write"), "{}", text(&out));
    let said = set(
        &s,
        &["secret", "set", "production", "DB_PASSWORD"],
        &format!("{v1}\n"),
    );
    assert!(said.contains("version 1"), "{said}");
    let list = s.ok(&["secret", "list", "production"]);
    assert!(
        list.contains("DB_PASSWORD  version 1") && list.contains("used by DB_PASSWORD"),
        "{list}"
    );

    s.deploy("1.0.0", "production");
    assert_eq!(
        instance_hash(&s, "production", "DB_PASSWORD"),
        Some(sha256(&v1))
    );
    let tested = s.latest("production")["gates"].to_string();
    assert!(tested.contains("[secret DB_PASSWORD]"), "{tested}");
    assert_eq!(
        instance_hash(&s, "staging", "DB_PASSWORD"),
        None,
        "only production has it"
    );
    s.register("1.1.0", &[]);
    s.walk("1.1.0", "staging");
    s.deploy("1.1.0", "production");
    assert_eq!(
        instance_hash(&s, "production", "DB_PASSWORD"),
        Some(sha256(&v1))
    );

    // A new version without a deploy: instances keep theirs, status says it is not deployed.
    set(&s, &["secret", "set", "production", "DB_PASSWORD"], &v2);
    wait_for("status to say the secret is not deployed", || {
        s.ok(&["status", "web"])
            .contains("config changed, not deployed")
    });
    assert_eq!(
        instance_hash(&s, "production", "DB_PASSWORD"),
        Some(sha256(&v1))
    );
    // Rotation: a third version with --deploy rolls 1.1.0 through production's gates.
    let said = set(
        &s,
        &["secret", "set", "production", "DB_PASSWORD", "--deploy"],
        &v3,
    );
    assert!(
        said.contains("redeploys web@1.1.0 into production"),
        "{said}"
    );
    wait_for("the redeploy with version 3", || {
        instance_hash(&s, "production", "DB_PASSWORD") == Some(sha256(&v3))
    });
    // A rollback gets the value its release had.
    s.ok(&["rollback", "web", "--env", "production"]);
    wait_for("the rollback", || {
        instance_hash(&s, "production", "DB_PASSWORD") == Some(sha256(&v1))
    });

    // diff says production's secret changed since its release was deployed: names and
    // versions only.
    // (It exits 1: production has a variable staging has not.)
    let out = s.cli(&["diff", "web", "staging", "production", "--output", "json"]);
    let diff: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let item = diff["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["key"] == "secrets.DB_PASSWORD")
        .unwrap_or_else(|| panic!("{diff}"))
        .clone();
    let b = item["b"].as_str().unwrap();
    assert!(
        b.starts_with("DB_PASSWORD version 3") && b.ends_with("the live release has version 1"),
        "{item}"
    );

    // A restart starts the live instance with the versions it had.
    s.kill9();
    s.restart();
    assert_eq!(
        instance_hash(&s, "production", "DB_PASSWORD"),
        Some(sha256(&v1))
    );

    // A secrets file encrypted with the age command for the server's recipient.
    let recipient = s.ok(&["secret", "recipient"]).trim().to_owned();
    assert!(recipient.starts_with("age1"), "{recipient}");
    let plain = s.config_dir().join("secrets.staging");
    std::fs::write(&plain, format!("# staging\nAPI_KEY={file_value}\n")).unwrap();
    let encrypted = s.config_dir().join("secrets.staging.age");
    let out = Command::new("age")
        .args(["-r", &recipient, "-o"])
        .arg(&encrypted)
        .arg(&plain)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    std::fs::remove_file(&plain).unwrap();
    let config = s.config_text().replace(
        "[environments.staging]\n",
        "[environments.staging]\nsecrets_file = \"secrets.staging.age\"\nvars = { API_KEY = { secret = \"API_KEY\" } }\n",
    );
    s.rewrite_config(&config);
    s.ok(&["reload"]);
    wait_for("the reload to read the secrets file", || {
        s.cli(&["secret", "list", "staging"]).status.success()
            && s.ok(&["secret", "list", "staging"])
                .contains("API_KEY  version 1")
    });
    s.ok(&["promote", "web@1.1.0", "--to", "staging", "--wait"]);
    assert_eq!(
        instance_hash(&s, "staging", "API_KEY"),
        Some(sha256(&file_value))
    );

    // Found nowhere else: the store's files and every log in the data dir, the API's answers,
    // the events, the server's own log, and the command lines of every process.
    let values = [&v1, &v2, &v3, &file_value];
    for (path, bytes) in files_under(&s.data_dir()) {
        for v in values {
            assert!(
                !contains(&bytes, v),
                "a secret value is in {}",
                path.display()
            );
        }
    }
    let mut answers = String::new();
    for args in [
        &["secret", "list", "production", "--output", "json"][..],
        &["status", "web", "--output", "json"],
        &["history", "web", "--output", "json"],
        &["audit", "--output", "json"],
    ] {
        answers.push_str(&text(&s.cli(args)));
    }
    let events = crate::helpers::http_get(
        &format!("{}/api/v1/events?limit=1000", s.api()),
        Some(&s.admin_token()),
    )
    .map(|r| r.body)
    .unwrap_or_default();
    assert!(events.contains("secret.set"), "{events}");
    let ps = Command::new("ps")
        .args(["-eo", "args"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    for v in values {
        assert!(
            !answers.contains(v.as_str()),
            "a secret value is in an answer"
        );
        assert!(
            !events.contains(v.as_str()),
            "a secret value is in the events"
        );
        assert!(
            !s.log().contains(v.as_str()),
            "a secret value is in the server's log"
        );
        assert!(
            !contains(&ps.stdout, v),
            "a secret value is in a command line"
        );
    }

    // A wrong key refuses to start, and says which key is missing.
    s.terminate();
    let key = s.data_dir().join("secrets.key");
    std::fs::remove_file(&key).unwrap();
    let out = wrong_key_start(&s);
    assert!(
        out.contains("sealed with key") && out.contains("secrets.key"),
        "{out}"
    );
}

/// Starts the server expecting it to refuse (it exits); its output.
fn wrong_key_start(s: &crate::helpers::TestServer) -> String {
    let mut child = crate::helpers::command(&s.config_dir())
        .args(["server", "-c"])
        .arg(&s.config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started with another key");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    text(&out)
}

#[test]
fn with_deployers_write_a_deployer_sets_the_secrets_of_their_environments_only() {
    let mut config = four_envs_with("watch_config = false", &[]);
    config.push_str("\n[secrets]\ndeployers_write = true\n");
    let s = crate::helpers::spawn_server(&config);
    let dev = s.token("dev-ci", "deployer", &["development"]);
    let viewer = s.token("reader", "viewer", &[]);
    let out = s.cli_with_stdin(
        &["--token", &dev, "secret", "set", "development", "API_KEY"],
        "dev-key-1234",
    );
    assert!(out.status.success(), "{}", text(&out));
    for (token, env, says) in [
        (&dev, "production", "limited to development"),
        (
            &viewer,
            "development",
            "an admin, or a deployer of this environment",
        ),
    ] {
        let out = s.cli_with_stdin(
            &["--token", token, "secret", "set", env, "API_KEY"],
            "x-1234",
        );
        assert!(!out.status.success());
        assert!(text(&out).contains(says), "{}", text(&out));
    }
    let listed = s.ok_as(&viewer, &["secret", "list", "development"]);
    assert!(
        listed.contains("API_KEY  version 1  set by dev-ci"),
        "{listed}"
    );
    assert!(!listed.contains("dev-key-1234"));
}
