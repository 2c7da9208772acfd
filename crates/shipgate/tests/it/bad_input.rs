//! Every bad input of issue 2 is refused with a message saying what to fix, and nothing is
//! written: config files, `init` over an existing file, unsafe or conflicting artifacts, an
//! artifact over the size limit, an API call without a token.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{Reply, TestServer, command, four_envs, http_get, spawn_server, text};

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

// The server answers as soon as the declared length passes the limit, and reads on a little
// after answering, so the client always sees the 413 message and never a reset connection;
// several tries catch a regression.
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

/// The head of a `POST` of an artifact to `s` for web@1.0.0, claiming `digest`; `framing` is
/// the `Content-Length` or `Transfer-Encoding` line.
fn upload_head(s: &TestServer, digest: &str, framing: &str) -> String {
    let addr = s.api().trim_start_matches("http://").to_owned();
    format!(
        "POST /api/v1/apps/web/releases?version=1.0.0&digest={digest} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/octet-stream\r\n{framing}\r\n\r\n",
        s.admin_token()
    )
}

fn connect(s: &TestServer) -> TcpStream {
    let stream = TcpStream::connect(s.api().trim_start_matches("http://")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

/// Reads one answer with a `Content-Length` body, and no more, from `stream`.
fn read_reply(stream: &mut TcpStream) -> Reply {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let (head, body_at) = loop {
        let n = stream.read(&mut buf).expect("the server answers");
        assert!(n > 0, "the server closed without answering");
        raw.extend_from_slice(&buf[..n]);
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break (String::from_utf8_lossy(&raw[..at]).into_owned(), at + 4);
        }
    };
    let header = |name: &str| {
        head.lines().find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_owned())
        })
    };
    let length: usize = header("content-length").unwrap().parse().unwrap();
    while raw.len() < body_at + length {
        let n = stream.read(&mut buf).expect("the server answers");
        assert!(n > 0, "the answer was cut off");
        raw.extend_from_slice(&buf[..n]);
    }
    Reply {
        status: head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        content_type: header("content-type").unwrap_or_default(),
        body: String::from_utf8_lossy(&raw[body_at..body_at + length]).into_owned(),
    }
}

/// Asserts `reply` is a problem+json of `status` whose detail contains `says`.
#[track_caller]
fn assert_problem(reply: &Reply, status: u16, says: &str) {
    assert_eq!(
        (reply.status, reply.content_type.as_str()),
        (status, "application/problem+json"),
        "{reply:?}"
    );
    let problem: Value = serde_json::from_str(&reply.body).unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains(says), "`{detail}` should say `{says}`");
}

#[test]
fn issue_29_a_chunked_upload_over_the_limit_is_answered_before_it_ends() {
    let s = spawn_server(&four_envs("max_artifact_size = \"1KiB\""));
    let mut stream = connect(&s);
    let digest = format!("sha256:{}", "0".repeat(64));
    stream
        .write_all(upload_head(&s, &digest, "Transfer-Encoding: chunked").as_bytes())
        .unwrap();
    // The limit, then 200 times as much, a KiB every 10 ms; `ending` is set before the last
    // chunk goes, so a server that reads to the end can only answer after it is set.
    let ending = Arc::new(AtomicBool::new(false));
    let mut sending = stream.try_clone().unwrap();
    let writer = std::thread::spawn({
        let ending = ending.clone();
        move || {
            let chunk = [b"400\r\n".as_slice(), &[b'x'; 1024], b"\r\n"].concat();
            for _ in 0..=200 {
                if sending.write_all(&chunk).is_err() {
                    // The server closed the connection: it has stopped reading.
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            ending.store(true, Ordering::SeqCst);
            let _ = sending.write_all(b"0\r\n\r\n");
        }
    });
    let reply = read_reply(&mut stream);
    assert!(
        !ending.load(Ordering::SeqCst),
        "the 413 came only after the whole body was sent: {reply:?}"
    );
    assert_problem(
        &reply,
        413,
        "the artifact is larger than the server's limit of 1KiB (raise `max_artifact_size` in [server] if this is expected)",
    );
    drop(stream);
    writer.join().unwrap();
    assert_nothing_written(&s);
}

#[test]
fn issue_29_a_declared_length_over_the_limit_is_answered_before_the_body() {
    let s = spawn_server(&four_envs("max_artifact_size = \"1KiB\""));
    let mut stream = connect(&s);
    let digest = format!("sha256:{}", "0".repeat(64));
    // Only the head: the answer cannot wait for a body that is not coming.
    stream
        .write_all(upload_head(&s, &digest, "Content-Length: 10485760").as_bytes())
        .unwrap();
    assert_problem(&read_reply(&mut stream), 413, "max_artifact_size");
    assert_nothing_written(&s);
}

/// A tar holding VERSION, then what `add` appends by hand (raw blocks), then `end`.
fn raw_tar(add: impl FnOnce(&mut Vec<u8>), end: &[u8]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(6);
    header.set_mode(0o644);
    tar.append_data(&mut header, "VERSION", &b"1.0.0\n"[..])
        .unwrap();
    let mut bytes = tar.into_inner().unwrap();
    bytes.truncate(bytes.len() - 1024);
    add(&mut bytes);
    bytes.extend_from_slice(end);
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&bytes).unwrap();
    gz.finish().unwrap()
}

/// A file entry `name` claiming `claimed` bytes and holding `data`, padded to a block.
fn entry(bytes: &mut Vec<u8>, name: &str, claimed: u64, data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.set_path(name).unwrap();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(claimed);
    header.set_cksum();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes.resize(bytes.len().next_multiple_of(512), 0);
}

#[test]
fn issue_29_cut_short_duplicate_and_deep_archives_get_422_and_leave_nothing() {
    let s = spawn_server(&four_envs(""));
    let deep = format!("{}f", "d/".repeat(2000));
    let cases = [
        (
            "the last entry claims more than the file holds",
            raw_tar(|t| entry(t, "last.bin", 1000, b"ten bytes!"), &[0; 1024]),
            "is cut short",
        ),
        (
            "the same path twice",
            raw_tar(|t| entry(t, "VERSION", 6, b"2.0.0\n"), &[0; 1024]),
            "entry `VERSION` appears twice",
        ),
        (
            "2,000 folders deep",
            raw_tar(
                |t| {
                    let mut b = tar::Builder::new(std::mem::take(t));
                    let mut header = tar::Header::new_gnu();
                    header.set_size(1);
                    header.set_mode(0o644);
                    b.append_data(&mut header, &deep, &b"x"[..]).unwrap();
                    *t = b.into_inner().unwrap();
                    t.truncate(t.len() - 1024);
                },
                &[0; 1024],
            ),
            "2001 path components",
        ),
    ];
    for (what, archive, says) in cases {
        let digest = format!("sha256:{:x}", Sha256::digest(&archive));
        let mut stream = connect(&s);
        let head = upload_head(&s, &digest, &format!("Content-Length: {}", archive.len()));
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&archive).unwrap();
        let reply = read_reply(&mut stream);
        assert_problem(
            &reply,
            422,
            "the artifact is refused, nothing was extracted",
        );
        assert_problem(&reply, 422, says);
        assert_nothing_written(&s);
        eprintln!("{what}: refused");
    }
}

#[test]
fn issue_29_an_upload_whose_unpack_fails_keeps_nothing() {
    let s = spawn_server(&four_envs(""));
    // The release cannot be moved into place (a full disk fails the same way, only earlier);
    // even root cannot make a folder inside a file.
    let releases = s.data_dir().join("releases");
    fs::remove_dir(&releases).unwrap();
    fs::write(&releases, "not a folder").unwrap();
    let release = s.app_release("1.0.0", &[]);
    let out = create(&s, "1.0.0", &release);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(s.json(&["release", "list"]), json!([]));
    for sub in ["artifacts", "tmp"] {
        assert_eq!(
            listing(&s.data_dir().join(sub)),
            Vec::<String>::new(),
            "{sub}/ is empty"
        );
    }
    fs::remove_file(&releases).unwrap();
    fs::create_dir(&releases).unwrap();
    let out = create(&s, "1.0.0", &release);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
