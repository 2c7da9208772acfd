//! What happens without a promotion being run to its end: a crashed instance, a request
//! overtaken by a newer one, the live event stream, and rollbacks to a named version.

use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::helpers::{TestServer, env_status, four_envs, spawn_server, wait_for};

/// States a promotion never leaves.
const FINAL: [&str; 5] = [
    "succeeded",
    "failed",
    "rolled_back",
    "cancelled",
    "superseded",
];

/// The history entry of promotion `id` in development.
fn promotion(s: &TestServer, id: i64) -> Value {
    let history = s.json(&["history", "web", "--env", "development"]);
    history
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("no promotion {id} in the history: {history}"))
        .clone()
}

/// Requests `web@version` in development without waiting; returns the promotion's id.
fn request(s: &TestServer, version: &str) -> i64 {
    let release = format!("web@{version}");
    s.json(&["promote", &release, "--to", "development"])["id"]
        .as_i64()
        .unwrap()
}

/// Every event of the audit log.
fn audit(s: &TestServer) -> Vec<Value> {
    let events = s.json(&["audit", "--limit", "10000"]);
    events.as_array().unwrap().clone()
}

#[test]
fn a_crashed_live_instance_is_restarted_and_recorded() {
    let s = spawn_server(&four_envs(""));
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "development");
    let before = env_status(&s.json(&["status"]), "development")["instance"].clone();
    assert_eq!(before["healthy"], json!(true), "{before}");
    let instance_id = before["id"].as_str().unwrap().to_owned();
    let pid = before["pid"].as_i64().unwrap();

    kill(Pid::from_raw(i32::try_from(pid).unwrap()), Signal::SIGKILL).unwrap();
    wait_for("a new healthy process of the instance", || {
        let i = &env_status(&s.json(&["status"]), "development")["instance"];
        i["healthy"] == true && i["pid"].as_i64().is_some_and(|p| p != pid)
    });
    wait_for("development to serve 1.0.0 again", || {
        s.version("development").as_deref() == Some("1.0.0")
    });

    // Events of the driver are recorded by a task of their own: they may trail the restart.
    let recorded = |kind: &str, events: &[Value]| {
        events.iter().any(|e| {
            e["kind"] == kind
                && e["app"] == "web"
                && e["env"] == "development"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(&instance_id))
        })
    };
    wait_for(
        "instance.crashed and instance.restarted in the audit",
        || {
            let events = audit(&s);
            recorded("instance.crashed", &events) && recorded("instance.restarted", &events)
        },
    );
    let events = audit(&s);
    let crashed = events
        .iter()
        .position(|e| e["kind"] == "instance.crashed")
        .unwrap();
    let restarted = events
        .iter()
        .position(|e| e["kind"] == "instance.restarted")
        .unwrap();
    assert!(
        crashed < restarted,
        "the crash is recorded before the restart: {events:#?}"
    );

    let after = env_status(&s.json(&["status"]), "development");
    assert_eq!(after["live"]["version"], json!("1.0.0"), "{after}");
    assert_eq!(after["instance"]["id"], json!(instance_id), "{after}");
    assert!(
        after["instance"]["restarts"]
            .as_u64()
            .is_some_and(|r| r >= 1),
        "{after}"
    );
    let history = s.json(&["history", "web", "--env", "development"]);
    assert_eq!(
        history.as_array().unwrap().len(),
        1,
        "a restart is not a promotion: {history}"
    );
    assert!(s.ok(&["audit", "--verify"]).contains("hash chain verified"));
}

#[test]
fn a_newer_request_supersedes_a_pending_one() {
    let s = spawn_server(&four_envs(""));
    let gate = s.app_data("development").join("let-1.0.0-listen");
    s.register("1.0.0", &[("SLOW", "let-1.0.0-listen")]);
    s.register("1.1.0", &[]);
    s.register("1.2.0", &[]);

    let a = request(&s, "1.0.0");
    wait_for("web@1.0.0 deploying in development", || {
        promotion(&s, a)["state"] == "deploying"
    });
    let b = request(&s, "1.1.0");
    let c = request(&s, "1.2.0");

    let superseded = promotion(&s, b);
    assert_eq!(superseded["state"], json!("superseded"), "{superseded}");
    let reason = superseded["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("superseded by promotion {c} (web@1.2.0)")),
        "{superseded}"
    );
    assert_eq!(superseded["gates"], json!([]), "B never deployed");
    assert_eq!(
        promotion(&s, a)["state"],
        json!("deploying"),
        "a deploying promotion is not superseded"
    );
    assert_eq!(promotion(&s, c)["state"], json!("pending"));

    fs::write(&gate, "").unwrap();
    wait_for("web@1.2.0 to finish in development", || {
        promotion(&s, c)["state"]
            .as_str()
            .is_some_and(|state| FINAL.contains(&state))
    });
    let history = s.json(&["history", "web", "--env", "development"]);
    let states: Vec<_> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_i64().unwrap(), p["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [(c, "succeeded"), (b, "superseded"), (a, "succeeded")],
        "{history:#}"
    );
    assert_eq!(s.version("development").as_deref(), Some("1.2.0"));
    let development = env_status(&s.json(&["status"]), "development");
    assert_eq!(development["live"]["version"], json!("1.2.0"));
    assert_eq!(development["in_progress"], json!([]));
}

/// `GET /api/v1/events/stream` over a plain TCP connection, read line by line.
struct EventStream {
    reader: BufReader<TcpStream>,
    /// Bytes of a line not finished when a read timed out.
    partial: Vec<u8>,
}

/// One server-sent event.
#[derive(Debug)]
struct Sse {
    event: String,
    id: String,
    data: Value,
}

impl EventStream {
    /// Opens the stream with the admin token and reads the answer's head.
    fn open(s: &TestServer, deadline: Instant) -> EventStream {
        let token = fs::read_to_string(s.data_dir().join("admin.token")).unwrap();
        let api = s.api();
        let host = api.strip_prefix("http://").unwrap();
        let mut stream = TcpStream::connect(host).unwrap();
        // Short, so a quiet stream hands back control to check the deadline.
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        // HTTP/1.0: the body is not chunked, its lines come as they are.
        write!(
            stream,
            "GET /api/v1/events/stream HTTP/1.0\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\n\r\n",
            token.trim()
        )
        .unwrap();
        let mut events = EventStream {
            reader: BufReader::new(stream),
            partial: Vec::new(),
        };
        let status = events.line(deadline);
        assert!(status.contains(" 200 "), "{status}");
        let mut content_type = String::new();
        loop {
            let header = events.line(deadline);
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-type")
            {
                content_type = value.trim().to_owned();
            }
        }
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        events
    }

    /// The next line without its line end; panics after `deadline`.
    fn line(&mut self, deadline: Instant) -> String {
        loop {
            assert!(
                Instant::now() < deadline,
                "the event stream sent no full line in time (so far: {:?})",
                String::from_utf8_lossy(&self.partial)
            );
            match self.reader.read_until(b'\n', &mut self.partial) {
                Ok(0) => panic!("the server closed the event stream"),
                Ok(_) if self.partial.ends_with(b"\n") => {
                    let line = String::from_utf8(std::mem::take(&mut self.partial)).unwrap();
                    return line.trim_end_matches(['\r', '\n']).to_owned();
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("reading the event stream: {e}"),
            }
        }
    }

    /// The next event (comments and keep-alives skipped); panics after `deadline`.
    fn next(&mut self, deadline: Instant) -> Sse {
        let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
        loop {
            let line = self.line(deadline);
            if line.is_empty() {
                if data.is_empty() {
                    continue;
                }
                let data = serde_json::from_str(&data)
                    .unwrap_or_else(|e| panic!("data of {event} is not JSON ({e}): {data}"));
                return Sse { event, id, data };
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event = value.to_owned(),
                "id" => id = value.to_owned(),
                "data" if data.is_empty() => data = value.to_owned(),
                "data" => data = format!("{data}\n{value}"),
                _ => {}
            }
        }
    }
}

#[test]
fn the_event_stream_shows_a_promotion_live() {
    let s = spawn_server(&four_envs(""));
    s.register("1.0.0", &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    // Declared after the server, so it is closed first: an open stream holds a stopping server.
    let mut stream = EventStream::open(&s, deadline);

    s.ok(&["promote", "web@1.0.0", "--to", "development", "--wait"]);
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &Sse| e.event == "promotion.succeeded") {
        seen.push(stream.next(deadline));
    }
    let kinds: Vec<&str> = seen.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        kinds.first(),
        Some(&"promotion.requested"),
        "the stream starts with the request: {seen:#?}"
    );
    let promotion_id = &seen[0].data["promotion_id"];
    for e in &seen {
        assert_eq!(e.data["kind"], json!(e.event), "{e:?}");
        assert_eq!(e.id, e.data["id"].to_string(), "{e:?}");
        assert_eq!(
            (&e.data["app"], &e.data["env"], &e.data["promotion_id"]),
            (&json!("web"), &json!("development"), promotion_id),
            "{e:?}"
        );
        if e.event.starts_with("promotion.") {
            assert_eq!(e.data["data"]["version"], json!("1.0.0"), "{e:?}");
        }
    }
    let ids: Vec<i64> = seen
        .iter()
        .map(|e| e.data["id"].as_i64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    let message = &seen.last().unwrap().data["message"];
    assert_eq!(message, &json!("web@1.0.0 is verified in development"));
}

#[test]
fn rollback_to_a_named_version_and_refusals() {
    let s = spawn_server(&four_envs(""));
    for version in ["1.0.0", "1.1.0"] {
        s.register(version, &[]);
        s.walk(version, "development");
    }
    assert_eq!(s.version("development").as_deref(), Some("1.1.0"));

    s.ok(&[
        "rollback",
        "web",
        "--env",
        "development",
        "--to",
        "1.0.0",
        "--wait",
    ]);
    assert_eq!(s.version("development").as_deref(), Some("1.0.0"));
    let history = s.json(&["history", "web", "--env", "development"]);
    let states: Vec<_> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{} {} {}", p["kind"], p["version"], p["state"]))
        .collect();
    assert_eq!(
        states,
        [
            r#""rollback" "1.0.0" "succeeded""#,
            r#""promote" "1.1.0" "rolled_back""#,
            r#""promote" "1.0.0" "succeeded""#
        ]
    );

    let never = s.refused(&["rollback", "web", "--env", "development", "--to", "9.9.9"]);
    assert!(
        never.contains("web@9.9.9 was never live in development"),
        "{never}"
    );
    let undone = s.refused(&["rollback", "web", "--env", "development", "--to", "1.1.0"]);
    assert!(
        undone.contains(
            "web@1.1.0 was rolled back in development; to bring it back, promote it there again"
        ),
        "{undone}"
    );
    let plain = s.refused(&["rollback", "web", "--env", "development"]);
    assert!(
        plain.contains("web@1.1.0 was rolled back in development"),
        "{plain}"
    );
    let nothing = s.refused(&["rollback", "web", "--env", "staging"]);
    assert!(
        nothing.contains("nothing of web is live in staging, so there is nothing to roll back"),
        "{nothing}"
    );
    assert_eq!(
        s.json(&["history", "web", "--env", "development"])
            .as_array()
            .unwrap()
            .len(),
        3,
        "the refusals recorded no promotion"
    );
    assert_eq!(s.json(&["history", "web", "--env", "staging"]), json!([]));
    assert_eq!(s.version("development").as_deref(), Some("1.0.0"));
}

#[test]
fn sigterm_ends_open_event_streams_and_exits_0() {
    // The server's own data plane: stopping the server stops its instances (with a local
    // agent, they keep serving; see agent.rs).
    let mut s = spawn_server(&four_envs("data_plane = \"server\""));
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "development");
    let deadline = Instant::now() + Duration::from_secs(30);
    let _stream = EventStream::open(&s, deadline);
    let exit = s.terminate();
    assert_eq!(exit.code(), Some(0), "{}", s.log());
    assert_eq!(s.instance_processes(), [], "every instance was stopped");
}

#[test]
fn request_metrics_count_what_the_router_served() {
    let s = spawn_server(&four_envs(""));
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "development");
    let url = s.url("development");
    for _ in 0..5 {
        assert_eq!(s.get(&format!("{url}/")).unwrap().status, 200);
    }
    for _ in 0..2 {
        assert_eq!(s.get(&format!("{url}/missing")).unwrap().status, 404);
    }
    let token = fs::read_to_string(s.data_dir().join("admin.token")).unwrap();
    assert_eq!(
        crate::helpers::http_get(&format!("{}/metrics", s.api()), None)
            .unwrap()
            .status,
        401
    );
    let metrics =
        crate::helpers::http_get(&format!("{}/metrics", s.api()), Some(token.trim())).unwrap();
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .content_type
            .starts_with("text/plain; version=0.0.4"),
        "{}",
        metrics.content_type
    );
    let series = r#"{app="web",env="development",release="web@1.0.0""#;
    for line in [
        format!("shipgate_requests_total{series},class=\"2xx\"}} 5"),
        format!("shipgate_requests_total{series},class=\"4xx\"}} 2"),
        format!("shipgate_requests_total{series},class=\"5xx\"}} 0"),
        format!("shipgate_request_duration_seconds_count{series}}} 7"),
    ] {
        assert!(
            metrics.body.lines().any(|l| l == line),
            "no line `{line}` in:\n{}",
            metrics.body
        );
    }
    let traffic = env_status(&s.json(&["status"]), "development")["traffic"].clone();
    assert_eq!(traffic["requests"], json!(7), "{traffic}");
    assert_eq!(traffic["error_rate"], json!(0.0), "{traffic}");
    assert!(s.ok(&["status"]).contains("0.0% 5xx"));
}
