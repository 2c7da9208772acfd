//! Canary rollouts on the engine clock: real processes, the real router splitting requests,
//! steps that end when the test moves the clock.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use shipgate_api::status::CanaryState;
use shipgate_core::{AppName, EnvName, EventKind, PromotionState};

use super::{Fixture, MINUTE, start};

/// A keep-alive HTTP/1.1 client of one router, sending what a browser would: the cookies it was
/// given.
struct Client {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
    cookie: Option<String>,
    /// Extra header lines (`x-shipgate-canary: always`).
    extra: String,
}

impl Client {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            conn: None,
            cookie: None,
            extra: String::new(),
        }
    }

    fn pinned(addr: SocketAddr, pin: &str) -> Self {
        let mut c = Self::new(addr);
        c.cookie = Some(format!("shipgate-canary={pin}"));
        c
    }

    /// GET /: the status and the body.
    fn get(&mut self) -> (u16, String) {
        for _ in 0..3 {
            if let Some(answer) = self.try_get() {
                return answer;
            }
            self.conn = None;
        }
        panic!("no answer from {}", self.addr);
    }

    fn try_get(&mut self) -> Option<(u16, String)> {
        if self.conn.is_none() {
            let c = TcpStream::connect(self.addr).ok()?;
            c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
            c.set_nodelay(true).ok()?;
            self.conn = Some(BufReader::new(c));
        }
        let conn = self.conn.as_mut()?;
        let cookie = self
            .cookie
            .as_ref()
            .map(|c| format!("Cookie: {c}\r\n"))
            .unwrap_or_default();
        let req = format!("GET / HTTP/1.1\r\nHost: web\r\n{cookie}{}\r\n", self.extra);
        conn.get_mut().write_all(req.as_bytes()).ok()?;
        let mut line = String::new();
        conn.read_line(&mut line).ok()?;
        let status: u16 = line.split(' ').nth(1)?.parse().ok()?;
        let mut length = 0;
        let mut close = false;
        loop {
            let mut h = String::new();
            conn.read_line(&mut h).ok()?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(':')?;
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().ok()?,
                "connection" if value.eq_ignore_ascii_case("close") => close = true,
                "set-cookie" if value.starts_with("shipgate-canary=") => {
                    self.cookie = value.split(';').next().map(str::to_owned);
                }
                _ => {}
            }
        }
        let mut body = vec![0; length];
        conn.read_exact(&mut body).ok()?;
        if close {
            self.conn = None;
        }
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// An app that keeps connections alive; it answers its version, and 500 on every other request
/// when its release holds `HALF`, or on every request when it holds `BUG`.
const APP: &str = r#"
import http.server, os, sys, itertools
VERSION = open("VERSION").read()
HALF = os.path.exists("HALF")
BUG = os.path.exists("BUG")
COUNT = itertools.count()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 65536  # head and body in one write: no wait on a delayed ACK between them
    def do_GET(self):
        n = next(COUNT)
        bad = self.path != "/healthz" and (BUG or (HALF and n % 2 == 1))
        body = ("app %s" % VERSION).encode()
        self.send_response(500 if bad else 200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

fn web() -> AppName {
    AppName::parse("web").unwrap()
}

fn production() -> EnvName {
    EnvName::parse("production").unwrap()
}

impl Fixture {
    /// Registers `web@version` of the canary app (with these marker files), verified in
    /// development.
    async fn canary_release(&self, version: &str, files: &[&str]) -> shipgate_core::ReleaseRef {
        let release = self.register_source(version, APP, files).await;
        let dev = self.promote(&release, "development").await;
        self.reaches(dev, PromotionState::Succeeded).await;
        release
    }

    /// Why promotion `id` ended.
    async fn reason(&self, id: shipgate_core::PromotionId) -> String {
        let p = self.engine.store().promotion(id).await.unwrap().unwrap();
        let state = p.state;
        p.reason
            .unwrap_or_else(|| panic!("promotion {id} ({state}) has no reason"))
    }

    /// Registers `web@version` (with these marker files), verified in development, and promotes
    /// it to production, whose canary is then at its first step.
    async fn rolling_out(
        &self,
        version: &str,
        files: &[&str],
    ) -> (shipgate_core::ReleaseRef, shipgate_core::PromotionId) {
        let release = self.canary_release(version, files).await;
        let prod = self.promote(&release, "production").await;
        self.canary_at(1, CanaryState::Running).await;
        (release, prod)
    }

    /// Waits (real time) until the canary of web in production stands at `step` in `state`.
    async fn canary_at(&self, step: usize, state: CanaryState) -> shipgate_api::status::CanaryView {
        for _ in 0..600 {
            if let Ok(v) = self.engine.canary_status(&web(), &production()).await
                && v.step == step
                && v.state == state
            {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let last = self
            .engine
            .store()
            .promotions(shipgate_store::PromotionFilter::default())
            .await
            .unwrap()
            .into_iter()
            .map(|p| (p.id, p.state, p.reason))
            .max_by_key(|p| p.0);
        let gates = match &last {
            Some((id, ..)) => self.engine.store().gates(*id).await.unwrap(),
            None => Vec::new(),
        };
        let gates: Vec<String> = gates
            .into_iter()
            .map(|g| format!("{}: {}", g.name, g.output))
            .collect();
        panic!(
            "the canary is not at step {step} ({state:?}): {:?}; the last promotion: {last:?}; its gates: {gates:#?}",
            self.engine.canary_status(&web(), &production()).await
        );
    }

    async fn events_of(&self, kind: EventKind) -> Vec<String> {
        let filter = shipgate_store::EventFilter {
            kind: Some(kind.to_string()),
            ..Default::default()
        };
        self.engine
            .store()
            .events(filter)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.message)
            .collect()
    }
}

/// Production with a canary of these settings; web@1.0.0 live there already.
async fn with_stable(canary: &str) -> Fixture {
    let f = start(&format!("[environments.production.canary]\n{canary}")).await;
    let stable = f.canary_release("1.0.0", &[]).await;
    let first = f.promote(&stable, "production").await;
    // Nothing was live to judge against: the first release switches at once.
    f.reaches(first, PromotionState::Succeeded).await;
    f
}

/// `n` GETs, each from a new visitor (no cookie yet), over one kept-alive connection; how many
/// the canary (`app 2.0.0`) answered, and how many failed.
fn load(addr: SocketAddr, n: usize) -> (usize, usize) {
    let began = Instant::now();
    let (mut canary, mut failed) = (0, 0);
    let mut client = Client::new(addr);
    for _ in 0..n {
        client.cookie = None;
        let (status, body) = client.get();
        if body.contains("2.0.0") {
            canary += 1;
        }
        if status >= 500 {
            failed += 1;
        }
    }
    println!("{n} requests in {:?}", began.elapsed());
    (canary, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_goes_5_25_50_then_100_and_pinned_clients_never_go_back() {
    let f =
        with_stable("steps = [\"5%\", \"25%\", \"50%\"]\nstep = \"1m\"\nmin_requests = 100").await;
    let addr = f.router("production");
    let good = f.canary_release("2.0.0", &[]).await;
    let prod = f.promote(&good, "production").await;
    let mut pinned: Vec<(Client, Option<bool>)> = (0..40)
        .map(|i| (Client::pinned(addr, &format!("user-{i}")), None))
        .collect();
    for (step, weight) in [(1, 5.0), (2, 25.0), (3, 50.0)] {
        let v = f.canary_at(step, CanaryState::Running).await;
        assert_eq!(v.weight, weight);
        let (canary, failed) = tokio::task::spawn_blocking(move || load(addr, 10_000))
            .await
            .unwrap();
        let share = canary as f64 / 100.0;
        println!("step {step}: {canary} of 10000 answered by the canary ({share:.2}%)");
        assert!(
            (share - weight).abs() <= 1.5,
            "step {step}: {share}% at {weight}%"
        );
        assert_eq!(failed, 0);
        for (client, side) in &mut pinned {
            let on_canary = client.get().1.contains("2.0.0");
            for _ in 0..5 {
                assert_eq!(
                    client.get().1.contains("2.0.0"),
                    on_canary,
                    "a pinned client changed side within a step"
                );
            }
            assert!(
                *side != Some(true) || on_canary,
                "a pinned client went back to the stable release"
            );
            *side = Some(on_canary);
        }
        f.clock.advance(MINUTE);
    }
    f.reaches(prod, PromotionState::Succeeded).await;
    let (canary, _) = tokio::task::spawn_blocking(move || load(addr, 200))
        .await
        .unwrap();
    assert_eq!(
        canary, 200,
        "after the last step the canary takes every request"
    );
    // Every step's figures are recorded in its gate.
    let gates = f.engine.store().gates(prod).await.unwrap();
    let steps: Vec<&shipgate_store::Gate> = gates
        .iter()
        .filter(|g| g.name.starts_with("canary step"))
        .collect();
    assert_eq!(steps.len(), 3, "{gates:?}");
    for g in steps {
        assert!(
            g.passed && g.output.contains("passed: canary") && g.output.contains("Mann-Whitney U"),
            "{}",
            g.output
        );
    }
    assert_eq!(f.events_of(EventKind::CanaryStep).await.len(), 3);
    assert_eq!(f.events_of(EventKind::CanaryCompleted).await.len(), 1);
    f.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_half_its_requests_at_5_percent_aborts_at_the_end_of_its_first_step() {
    let f = with_stable("steps = [\"5%\", \"50%\"]\nstep = \"1m\"\nmin_requests = 100").await;
    let addr = f.router("production");
    let (_, prod) = f.rolling_out("2.0.0", &["HALF"]).await;
    // Constant load through the whole first step.
    let (canary, failed) = tokio::task::spawn_blocking(move || load(addr, 4_000))
        .await
        .unwrap();
    f.clock.advance(MINUTE);
    f.reaches(prod, PromotionState::Failed).await;
    let reason = f.reason(prod).await;
    assert!(
        reason.contains("its canary failed at step 1 of 2 (5%)"),
        "{reason}"
    );
    assert!(reason.contains("error rate"), "{reason}");
    // Production's failed share: 5% of the requests, half of those failing.
    let share = failed as f64 / 4_000.0;
    println!(
        "{failed} of 4000 requests failed ({:.2}%), {canary} met the canary",
        share * 100.0
    );
    assert!(share < 0.025 + 0.015, "{share}");
    // Nobody meets the canary any more.
    let (after, failed_after) = tokio::task::spawn_blocking(move || load(addr, 500))
        .await
        .unwrap();
    assert_eq!((after, failed_after), (0, 0));
    assert_eq!(f.events_of(EventKind::CanaryAborted).await.len(), 1);
    let gates = f.engine.store().gates(prod).await.unwrap();
    assert!(
        gates
            .iter()
            .any(|g| !g.passed && g.name == "canary step 1 (5%)"),
        "{gates:?}"
    );
    // DORA counts the aborted canary as a failed change of production.
    let changes = f
        .engine
        .store()
        .dora_changes(jiff::Timestamp::MIN, None)
        .await
        .unwrap();
    let scope = shipgate_core::dora::Scope {
        apps: vec!["web".into()],
        envs: vec!["development".into(), "production".into()],
        ..Default::default()
    };
    let figures =
        shipgate_core::dora::figures_in(&scope, &changes, &[], jiff::Timestamp::now(), 30);
    let prod_figures = figures.iter().find(|x| x.env == "production").unwrap();
    assert_eq!(
        (prod_figures.changes, prod_figures.failed_changes),
        (2, 1),
        "{prod_figures:?}"
    );
    f.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_traffic_holds_a_step_as_inconclusive_and_it_goes_on_once_traffic_arrives() {
    let f = with_stable(
        "steps = [\"20%\", \"50%\"]\nstep = \"1m\"\nmin_requests = 50\n[alerts.held]\nenv = \"production\"\nwhen = \"canary_held\"",
    )
    .await;
    let addr = f.router("production");
    let (_, prod) = f.rolling_out("2.0.0", &[]).await;
    f.clock.advance(MINUTE);
    let held = f.canary_at(1, CanaryState::Held).await;
    assert!(
        held.message.contains("waiting for 50 more requests"),
        "{}",
        held.message
    );
    assert_eq!(f.state(prod).await, PromotionState::Deploying);
    assert_eq!(f.events_of(EventKind::CanaryInconclusive).await.len(), 1);
    // An alert pages on it.
    f.engine.judge_alerts().await.unwrap();
    let firing = f.engine.firing_alerts();
    assert!(firing.iter().any(|(name, ..)| name == "held"), "{firing:?}");
    // Held again and again, never passed nor failed, while nothing comes.
    f.clock.advance(MINUTE);
    f.settle().await;
    f.canary_at(1, CanaryState::Held).await;
    tokio::task::spawn_blocking(move || load(addr, 1_000))
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(5));
    f.canary_at(2, CanaryState::Running).await;
    f.engine
        .canary_abort(&web(), &production(), "alice")
        .await
        .unwrap();
    f.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_during_a_step_ends_the_canary_before_it_answers() {
    let f = with_stable("steps = [\"50%\"]\nstep = \"10m\"").await;
    let addr = f.router("production");
    f.rolling_out("2.0.0", &[]).await;
    // Testers choose their side at any weight.
    let mut tester = Client::new(addr);
    tester.extra = "x-shipgate-canary: always\r\n".into();
    assert!(tester.get().1.contains("2.0.0"));
    tester.extra = "x-shipgate-canary: never\r\n".into();
    assert!(tester.get().1.contains("1.0.0"));
    let started = Instant::now();
    let ended = f
        .engine
        .canary_abort(&web(), &production(), "alice")
        .await
        .unwrap();
    println!("the abort took {:?}", started.elapsed());
    assert_eq!(ended.state, PromotionState::Failed);
    assert!(
        ended
            .reason
            .as_deref()
            .unwrap()
            .contains("aborted by alice, at step 1 of 1 (50%)"),
        "{ended:?}"
    );
    // From the moment the call returns, no request reaches the canary, even one asking for it.
    tester.extra = "x-shipgate-canary: always\r\n".into();
    assert!(tester.get().1.contains("1.0.0"));
    let (canary, failed) = tokio::task::spawn_blocking(move || load(addr, 400))
        .await
        .unwrap();
    assert_eq!((canary, failed), (0, 0));
    f.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_step_judges_the_canary_without_a_user_meeting_it() {
    let f =
        with_stable("steps = [\"mirror 50%\", \"50%\"]\nstep = \"1m\"\nmin_requests = 100").await;
    let addr = f.router("production");
    let (_, prod) = f.rolling_out("2.0.0", &["BUG"]).await;
    let v = f.canary_at(1, CanaryState::Running).await;
    assert!(v.mirror);
    let (canary, failed) = tokio::task::spawn_blocking(move || load(addr, 1_000))
        .await
        .unwrap();
    assert_eq!(
        (canary, failed),
        (0, 0),
        "users met only the stable release"
    );
    // The canary's answers to the copies were counted all the same.
    let v = f.engine.canary_status(&web(), &production()).await.unwrap();
    assert!(
        v.canary_figures.requests >= 300 && v.canary_figures.error_rate == 1.0,
        "{v:?}"
    );
    f.clock.advance(MINUTE);
    f.reaches(prod, PromotionState::Failed).await;
    let reason = f.reason(prod).await;
    assert!(reason.contains("at step 1 of 2 (mirror 50%)"), "{reason}");
    f.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_or_a_rollback_during_a_canary_ends_it_at_once() {
    let f = with_stable("steps = [\"50%\"]\nstep = \"10m\"").await;
    let addr = f.router("production");
    // A rejection.
    let (second, prod) = f.rolling_out("2.0.0", &[]).await;
    f.engine
        .decide(
            &second,
            &production(),
            &super::admin(),
            shipgate_core::gate::Verdict::Reject,
            Some("not today".into()),
        )
        .await
        .unwrap();
    f.reaches(prod, PromotionState::Failed).await;
    let (canary, failed) = tokio::task::spawn_blocking(move || load(addr, 200))
        .await
        .unwrap();
    assert_eq!((canary, failed), (0, 0));
    // A rollback: production is back on what it had, at once.
    let (_, prod) = f.rolling_out("3.0.0", &[]).await;
    let back = f
        .engine
        .rollback(&web(), &production(), None, "alice")
        .await
        .unwrap();
    assert_eq!(back.state, PromotionState::Succeeded, "{back:?}");
    let ended = f.engine.store().promotion(prod).await.unwrap().unwrap();
    assert_eq!(ended.state, PromotionState::Failed);
    assert!(
        ended
            .reason
            .as_deref()
            .unwrap()
            .starts_with("rolled back by alice"),
        "{ended:?}"
    );
    let mut client = Client::new(addr);
    client.extra = "x-shipgate-canary: always\r\n".into();
    assert!(client.get().1.contains("1.0.0"));
    assert_eq!(f.events_of(EventKind::CanaryAborted).await.len(), 2);
    f.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_look_a_second_into_a_step_stops_a_canary_that_errs_beyond_doubt() {
    let f = with_stable("steps = [\"5%\", \"50%\"]\nstep = \"1m\"\nmin_requests = 100").await;
    let addr = f.router("production");
    let (_, prod) = f.rolling_out("2.0.0", &["HALF"]).await;
    let (canary, failed) = tokio::task::spawn_blocking(move || load(addr, 400))
        .await
        .unwrap();
    println!("{failed} of 400 failed, {canary} met the canary");
    // One second of the step, not its minute.
    f.clock.advance(Duration::from_secs(1));
    f.reaches(prod, PromotionState::Failed).await;
    let reason = f.reason(prod).await;
    assert!(
        reason.contains("at step 1 of 2 (5%), 1.0 s in") && reason.contains("above its ceiling"),
        "{reason}"
    );
    f.engine.shutdown().await;
}
