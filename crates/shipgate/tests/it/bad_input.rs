//! Every bad input of issue 2 is refused with a message saying what to fix, and nothing is
//! written: config files, `init` over an existing file, unsafe or conflicting artifacts, an
//! artifact over the size limit, an API call without a token.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{TestServer, command, four_envs, http_get, spawn_server, text};

const VALID: &str = r#"[server]
listen = "127.0.0.1:7300"
data_dir = "data"

[apps.web]
run = "python3 server.py --port ${PORT}"

[environments.development]
listen = "127.0.0.1:8101"

[environments.testing]
after = "development"
listen = "127.0.0.1:8102"
"#;

/// `VALID` with `from` replaced by `to`, in a folder of its own.
fn config_dir(from: &str, to: &str) -> tempfile::TempDir {
    assert!(VALID.contains(from), "{from}");
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("shipgate.toml"),
        VALID.replacen(from, to, 1),
    )
    .unwrap();
    dir
}

/// The folder's entries, to show nothing was written.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `shipgate validate` on `VALID` with one change: must exit 1, write nothing; returns stderr.
fn invalid(from: &str, to: &str) -> String {
    let dir = config_dir(from, to);
    let out = command(dir.path())
        .args(["validate", "-c", "shipgate.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(listing(dir.path()), ["shipgate.toml"]);
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn the_valid_base_config_validates() {
    let dir = config_dir("", "");
    let out = command(dir.path()).arg("validate").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn config_unknown_key_names_the_closest() {
    insta::assert_snapshot!(invalid("listen = \"127.0.0.1:8102\"", "lisen = \"127.0.0.1:8102\""), @r"
    shipgate.toml:13:1: unknown key `lisen`
      help: did you mean `listen`?
    ");
}

#[test]
fn config_after_naming_no_environment() {
    insta::assert_snapshot!(invalid("after = \"development\"", "after = \"developmnt\""), @r#"
    shipgate.toml:12:9: `after = "developmnt"` names no environment
      help: did you mean `development`?
    "#);
}

#[test]
fn config_cycle_in_after() {
    let to = "[environments.development]\nafter = \"testing\"";
    insta::assert_snapshot!(invalid("[environments.development]", to), @r"
    shipgate.toml:9:9: environments form a cycle in `after`: development → testing → development
      help: one of them must come first: remove its `after`
    ");
}

#[test]
fn config_two_environments_on_one_address() {
    insta::assert_snapshot!(invalid("127.0.0.1:8102", "127.0.0.1:8101"), @r"
    shipgate.toml:13:10: environment `testing` listens on 127.0.0.1:8101, which environment `development` already uses
      help: give every environment its own address
    ");
}

#[test]
fn config_malformed_duration() {
    let to = "listen = \"127.0.0.1:8102\"\nverify.timeout = \"5 minutes\"";
    insta::assert_snapshot!(invalid("listen = \"127.0.0.1:8102\"", to), @r#"shipgate.toml:14:18: `5 minutes` is not a duration: write a number and a unit (ms, s, m, h, d), for example "30s", "10m" or "1h30m""#);
}

#[test]
fn config_malformed_address() {
    insta::assert_snapshot!(invalid("127.0.0.1:8102", "localhost:8102"), @r#"shipgate.toml:13:10: `localhost:8102` is not an address: write IP:PORT, for example "127.0.0.1:8101" (host names are not accepted)"#);
}

#[test]
fn the_server_does_not_start_on_an_invalid_config() {
    let dir = config_dir("127.0.0.1:8102", "127.0.0.1:8101");
    let mut child = command(dir.path())
        .args(["server", "-c", "shipgate.toml"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the server started on an invalid config");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("error: the server does not start on an invalid config"),
        "{}",
        text(&out)
    );
    assert_eq!(
        listing(dir.path()),
        ["shipgate.toml"],
        "no data dir was created"
    );
}

#[test]
fn init_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shipgate.toml");
    fs::write(&path, "# my own config\n").unwrap();
    let out = command(dir.path()).arg("init").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("shipgate.toml already exists; nothing was written"),
        "{}",
        text(&out)
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), "# my own config\n");

    let empty = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| command(empty.path()).args(args).output().unwrap();
    assert!(run(&["init"]).status.success());
    let out = run(&["validate"]);
    assert!(
        out.status.success(),
        "the example written by init is valid: {}",
        text(&out)
    );
    // The data dir (admin token, database) is kept out of git, once.
    let ignore = fs::read_to_string(empty.path().join(".gitignore")).unwrap();
    assert!(ignore.lines().any(|l| l == ".shipgate/"), "{ignore}");
    fs::remove_file(empty.path().join("shipgate.toml")).unwrap();
    assert!(run(&["init"]).status.success());
    let again = fs::read_to_string(empty.path().join(".gitignore")).unwrap();
    assert_eq!(again, ignore, "not added twice");
}

/// A .tar.gz holding a harmless VERSION file, then whatever `add` appends.
fn archive(dir: &Path, add: impl FnOnce(&mut tar::Builder<GzEncoder<File>>)) -> PathBuf {
    let path = dir.join(format!(
        "artifact-{}.tar.gz",
        fs::read_dir(dir).unwrap().count()
    ));
    let mut tar = tar::Builder::new(GzEncoder::new(
        File::create(&path).unwrap(),
        Compression::default(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(6);
    header.set_mode(0o644);
    tar.append_data(&mut header, "VERSION", &b"1.0.0\n"[..])
        .unwrap();
    add(&mut tar);
    tar.into_inner().unwrap().finish().unwrap();
    path
}

/// A file entry named exactly `name`: `tar::Builder` refuses `..` and absolute paths in
/// `set_path`, so the name bytes are written into the header directly.
fn raw_file(tar: &mut tar::Builder<GzEncoder<File>>, name: &str) {
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(5);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append(&header, &b"evil\n"[..]).unwrap();
}

fn create(s: &TestServer, version: &str, artifact: &Path) -> Output {
    s.cli(&[
        "release",
        "create",
        "web",
        "--version",
        version,
        "--artifact",
        artifact.to_str().unwrap(),
    ])
}

/// No release is listed, and nothing is stored, unpacked or left over in the data dir.
fn assert_nothing_written(s: &TestServer) {
    assert_eq!(s.json(&["release", "list"]), json!([]));
    for sub in ["artifacts", "releases", "tmp"] {
        assert_eq!(
            listing(&s.data_dir().join(sub)),
            Vec::<String>::new(),
            "{sub}/ is empty"
        );
    }
}

/// Uploads an unsafe archive: must be refused with exit 1, nothing written; returns the message.
fn unsafe_artifact(add: impl FnOnce(&mut tar::Builder<GzEncoder<File>>)) -> String {
    let s = spawn_server(&four_envs(""));
    let out = create(&s, "1.0.0", &archive(s.dir.path(), add));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_nothing_written(&s);
    text(&out)
}

#[test]
fn artifact_entry_climbing_out_with_dotdot_is_refused() {
    let message = unsafe_artifact(|tar| raw_file(tar, "../evil"));
    assert!(message.contains("the artifact is refused, nothing was extracted: entry `../evil` has an absolute path or climbs out with `..`"), "{message}");
}

#[test]
fn artifact_entry_with_an_absolute_path_is_refused() {
    let message = unsafe_artifact(|tar| raw_file(tar, "/tmp/x"));
    assert!(message.contains("the artifact is refused, nothing was extracted: entry `/tmp/x` has an absolute path or climbs out with `..`"), "{message}");
}

#[test]
fn artifact_symlink_pointing_outside_is_refused() {
    let message = unsafe_artifact(|tar| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        tar.append_link(&mut header, "link", "../../etc").unwrap();
    });
    assert!(message.contains("the artifact is refused, nothing was extracted: entry `link` is a link to `../../etc`, outside the release"), "{message}");
}

#[test]
fn the_same_version_with_other_content_is_refused_naming_both_digests() {
    let s = spawn_server(&four_envs(""));
    let original = s.register("1.0.0", &[]);
    let other = archive(s.dir.path(), |_| {});
    let offered = format!("sha256:{:x}", Sha256::digest(fs::read(&other).unwrap()));
    let out = create(&s, "1.0.0", &other);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let expected = format!(
        "web@1.0.0 is already registered with digest {original}, and this artifact has digest {offered}"
    );
    assert!(text(&out).contains(&expected), "{}", text(&out));

    let listed = s.json(&["release", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(
        listed[0]["digest"],
        json!(original),
        "the original is still listed"
    );
    let stored = listing(&s.data_dir().join("artifacts"));
    assert_eq!(
        stored,
        [format!("{}.tar", original.trim_start_matches("sha256:"))],
        "only the original is stored"
    );
}

// The server reads the rest of a refused upload before answering, so the client always sees
// the 413 message and never a reset connection; several tries catch a regression.
#[test]
fn an_artifact_over_the_size_limit_is_refused() {
    let s = spawn_server(&four_envs("max_artifact_size = \"1KiB\""));
    // Incompressible bytes, so the packed artifact is well over the limit.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let noise: String = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b"0123456789abcdef"[(x % 16) as usize])
        })
        .collect();
    let dir = s.app_release("1.0.0", &[("noise.txt", &noise)]);
    let expected = "the artifact is larger than the server's limit of 1KiB (raise `max_artifact_size` in [server] if this is expected)";
    for attempt in 1..=20 {
        let out = create(&s, "1.0.0", &dir);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains(expected),
            "attempt {attempt}: {}",
            text(&out)
        );
    }
    assert_nothing_written(&s);
}

#[test]
fn an_api_call_without_a_token_gets_401_problem_json() {
    let s = spawn_server(&four_envs(""));
    let status = format!("{}/api/v1/status", s.api());
    for (token, title) in [
        (None, "token required"),
        (Some("sg_not-a-known-token"), "unknown token"),
    ] {
        let reply = http_get(&status, token).unwrap();
        assert_eq!(
            (reply.status, reply.content_type.as_str()),
            (401, "application/problem+json"),
            "{reply:?}"
        );
        let problem: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(
            (&problem["status"], &problem["title"]),
            (&json!(401), &json!(title))
        );
        assert!(!problem["detail"].as_str().unwrap().is_empty());
    }
    assert_eq!(
        http_get(&format!("{}/healthz", s.api()), None)
            .unwrap()
            .status,
        200,
        "/healthz needs no token"
    );
}

#[test]
fn malformed_names_on_the_command_line_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| command(dir.path()).args(args).output().unwrap();
    let out = run(&["promote", "web", "--to", "testing"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("write APP@VERSION"), "{}", text(&out));
    let out = run(&["rollback", "web", "--env", "../prod"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("not a valid environment name"),
        "{}",
        text(&out)
    );
}

#[test]
fn completions_and_the_manual_page_are_printed() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = command(dir.path())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {}", text(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("promote") && script.contains("reload"),
            "{shell}"
        );
    }
    let out = command(dir.path()).arg("man").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH shipgate 1"), "{page}");
    let bad = command(dir.path())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
}

#[test]
fn help_shows_examples() {
    let dir = tempfile::tempdir().unwrap();
    for command in [
        &["promote", "--help"][..],
        &["rollback", "--help"],
        &["release", "create", "--help"],
        &["agent", "--help"],
    ] {
        let out = command_in(dir.path(), command);
        assert!(out.contains("Examples:\n  shipgate "), "{command:?}: {out}");
    }
}

fn command_in(dir: &Path, args: &[&str]) -> String {
    text(&command(dir).args(args).output().unwrap())
}
