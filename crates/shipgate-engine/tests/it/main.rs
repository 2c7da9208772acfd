//! The engine on a controlled clock: a real SQLite store, real processes through the process
//! driver, real routers, and a [`ManualClock`] that moves only when the test says so, so soak,
//! deploy windows and watches are judged without sleeping through real minutes.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use shipgate_core::gate::Wait;
use shipgate_core::{Config, EnvName, PromotionId, PromotionState, ReleaseRef};
use shipgate_engine::flow::ReleaseRequest;
use shipgate_engine::{Engine, ManualClock, ProcessDriver};
use shipgate_store::artifact::UnpackLimits;
use shipgate_store::{SqlStore, Store};

mod canary;

/// An app that is not shipgate's own: healthy at `/healthz`; every other path answers 200 with
/// its version, or 500 when the release holds a file named `BUG`.
const APP: &str = r#"
import http.server, os, sys, time
if os.path.exists("SLOW"): time.sleep(1.5)
VERSION = open("VERSION").read()
BROKEN = os.path.exists("BUG")
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        status = 500 if BROKEN and self.path != "/healthz" else 200
        body = ("app %s" % VERSION).encode()
        self.send_response(status); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

const MINUTE: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Fixture {
    dir: tempfile::TempDir,
    engine: Arc<Engine>,
    clock: Arc<ManualClock>,
    driver: Arc<ProcessDriver>,
}

/// An engine for web in development → production, `production` holding `extra` lines.
async fn start(extra: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    // Two free ports, never the same one twice (each is free only until it is bound).
    let development = free_port();
    let production = std::iter::repeat_with(free_port)
        .find(|p| *p != development)
        .unwrap();
    let toml = format!(
        "[server]\ndata_dir = \"data\"\n[apps.web]\nrun = \"python3 app.py ${{PORT}}\"\nhealth = \"/healthz\"\n\
         [environments.development]\nlisten = \"127.0.0.1:{}\"\n\
         [environments.production]\nafter = \"development\"\nlisten = \"127.0.0.1:{}\"\n{extra}\n",
        development, production
    );
    let config = Arc::new(Config::parse(&toml, dir.path()).unwrap());
    std::fs::create_dir_all(&config.server.data_dir).unwrap();
    let store: Arc<dyn Store> = Arc::new(SqlStore::open_at(&config.server.database).await.unwrap());
    let clock = Arc::new(ManualClock::new(jiff::Timestamp::now()));
    let driver = Arc::new(ProcessDriver::new());
    let engine = Engine::start(
        config,
        store,
        Arc::clone(&driver) as Arc<dyn shipgate_engine::Driver>,
        Arc::clone(&clock) as Arc<dyn shipgate_engine::Clock>,
    )
    .await
    .unwrap();
    Fixture {
        dir,
        engine,
        clock,
        driver,
    }
}

impl Fixture {
    /// Registers `web@version` with these extra files in it.
    async fn register_with(&self, version: &str, files: &[&str]) -> ReleaseRef {
        self.register_source(version, APP, files).await
    }

    /// Registers `web@version` whose `app.py` is `app`, with these extra (empty) files in it.
    async fn register_source(&self, version: &str, app: &str, files: &[&str]) -> ReleaseRef {
        let src = self.dir.path().join(format!("src-{version}"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("app.py"), app).unwrap();
        std::fs::write(src.join("VERSION"), version).unwrap();
        for file in files {
            std::fs::write(src.join(file), "").unwrap();
        }
        let mut packed = Vec::new();
        shipgate_store::artifact::pack_dir(&src, &mut packed).unwrap();
        let server = &self.engine.config().server;
        let mut upload = self
            .engine
            .artifacts()
            .upload(server.max_artifact_size, UnpackLimits::of(server))
            .await
            .unwrap();
        upload.write(&packed).await.unwrap();
        let digest = shipgate_store::artifact::digest_file(&{
            let f = self.dir.path().join(format!("{version}.tar.gz"));
            std::fs::write(&f, &packed).unwrap();
            f
        })
        .unwrap();
        let checked = upload.finish(&digest).await.unwrap();
        let release = ReleaseRef::parse(&format!("web@{version}")).unwrap();
        let request = ReleaseRequest {
            release: release.clone(),
            commit: None,
            commit_time: None,
            notes: None,
        };
        self.engine
            .create_release(request, checked, "ci")
            .await
            .unwrap();
        release
    }

    /// Registers `web@version` (with these extra files) and has it verified in development.
    async fn verified_in_development(&self, version: &str, files: &[&str]) -> ReleaseRef {
        let release = self.register_with(version, files).await;
        let dev = self.promote(&release, "development").await;
        self.reaches(dev, PromotionState::Succeeded).await;
        release
    }

    /// The address of `env`'s router.
    fn router(&self, env: &str) -> std::net::SocketAddr {
        self.engine
            .config()
            .environment(&EnvName::parse(env).unwrap())
            .unwrap()
            .listen
    }

    /// Promotes and returns the promotion's id.
    async fn promote(&self, release: &ReleaseRef, env: &str) -> PromotionId {
        let env = EnvName::parse(env).unwrap();
        self.engine
            .promote(release, &env, "ci", None)
            .await
            .unwrap()
            .id
    }

    async fn state(&self, id: PromotionId) -> PromotionState {
        self.engine
            .store()
            .promotion(id)
            .await
            .unwrap()
            .unwrap()
            .state
    }

    /// Waits (real time, for processes to start) until promotion `id` is in `state`.
    async fn reaches(&self, id: PromotionId, state: PromotionState) {
        for _ in 0..600 {
            if self.state(id).await == state {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "promotion {id} is {} after 30 s, not {state}",
            self.state(id).await
        );
    }

    /// Waits (real time) until the watch of promotion `id` has begun, so that moving the
    /// clock counts against it.
    async fn watching(&self, id: PromotionId) {
        for _ in 0..600 {
            if self.engine.watch_of(id).is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the watch of promotion {id} did not begin");
    }

    /// Asserts that promotion `id` waits on something `is` recognizes.
    #[track_caller]
    fn waits_on(&self, id: PromotionId, is: impl Fn(&Wait) -> bool) {
        let waits = self.engine.waiting_on(id);
        assert!(waits.iter().any(is), "{waits:?}");
    }

    /// Lets the engine's tasks run for a moment of real time without moving the clock.
    async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_is_counted_on_the_engine_clock() {
    let f = start("require.soak = \"10m\"").await;
    let release = f.verified_in_development("1.0.0", &[]).await;

    let prod = f.promote(&release, "production").await;
    f.settle().await;
    assert_eq!(f.state(prod).await, PromotionState::Pending);
    f.waits_on(prod, |w| matches!(w, Wait::Soak { .. }));
    f.clock.advance(9 * MINUTE);
    f.settle().await;
    assert_eq!(
        f.state(prod).await,
        PromotionState::Pending,
        "9 of 10 minutes"
    );

    f.clock.advance(MINUTE + Duration::from_secs(30));
    f.reaches(prod, PromotionState::Succeeded).await;
    f.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_lasts_its_time_on_the_engine_clock() {
    let f = start("verify.watch = \"2m\"\nverify.inconclusive = \"pass\"").await;
    let release = f.verified_in_development("1.0.0", &[]).await;

    let prod = f.promote(&release, "production").await;
    f.watching(prod).await;
    f.clock.advance(MINUTE);
    f.settle().await;
    assert_eq!(
        f.state(prod).await,
        PromotionState::Verifying,
        "1 of 2 minutes"
    );

    f.clock.advance(MINUTE);
    f.reaches(prod, PromotionState::Succeeded).await;
    f.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_window_opens_on_the_engine_clock() {
    // A window that opens 30 minutes from now and lasts an hour (cut at midnight).
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    let opens = now
        .checked_add(jiff::SignedDuration::from_mins(30))
        .unwrap();
    let closes = opens
        .checked_add(jiff::SignedDuration::from_mins(60))
        .unwrap();
    let (close_hour, close_minute) = if closes.date() == opens.date() {
        (closes.hour(), closes.minute())
    } else {
        (23, 59)
    };
    let window = format!(
        "require.window = \"Mon-Sun {:02}:{:02}-{close_hour:02}:{close_minute:02} UTC\"",
        opens.hour(),
        opens.minute(),
    );
    let f = start(&window).await;
    let release = f.verified_in_development("1.0.0", &[]).await;

    let prod = f.promote(&release, "production").await;
    f.settle().await;
    assert_eq!(f.state(prod).await, PromotionState::Pending);
    f.waits_on(prod, |w| matches!(w, Wait::Window { .. }));
    f.clock.advance(31 * MINUTE);
    f.reaches(prod, PromotionState::Succeeded).await;
    f.engine.shutdown().await;
}

/// One GET through a router: the status and body, or None when the request failed.
fn get(addr: std::net::SocketAddr) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).ok()?;
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_over_the_error_rate_is_rolled_back_when_its_watch_ends_on_the_engine_clock() {
    let f = start(
        "verify.watch = \"10m\"\nverify.max_error_rate = 0.01\nverify.min_requests = 20\nverify.inconclusive = \"pass\"",
    )
    .await;
    let good = f.verified_in_development("1.0.0", &[]).await;
    let prod = f.promote(&good, "production").await;
    f.watching(prod).await;
    f.clock.advance(10 * MINUTE);
    f.reaches(prod, PromotionState::Succeeded).await;

    let bad = f.verified_in_development("2.0.0", &["BUG"]).await;
    // Constant load on production's stable address while the broken release goes live, is
    // judged when its watch ends and is rolled back.
    let addr = f.router("production");
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, errors) = (Arc::clone(&stop), Arc::clone(&errors));
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let answer = get(addr);
                if answer.as_ref().is_some_and(|(status, _)| *status == 500) {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                answers.push(answer);
                std::thread::sleep(Duration::from_millis(5));
            }
            answers
        })
    };
    let prod = f.promote(&bad, "production").await;
    f.watching(prod).await;
    while errors.load(Ordering::Relaxed) < 40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f.clock.advance(10 * MINUTE);
    f.reaches(prod, PromotionState::Failed).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let answers = load.join().unwrap();

    let p = f.engine.store().promotion(prod).await.unwrap().unwrap();
    let reason = p.reason.unwrap();
    assert!(reason.starts_with("error rate 1.0000 ("), "{reason}");
    assert!(
        reason.ends_with("requests failed) is above verify.max_error_rate 0.01"),
        "{reason}"
    );
    assert_eq!(get(addr), Some((200, "app 1.0.0".to_owned())));
    let failed = f
        .engine
        .store()
        .events(shipgate_store::EventFilter {
            kind: Some("promotion.failed".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        failed.iter().any(
            |e| e.message.contains("is above verify.max_error_rate 0.01")
                && e.message.contains("production is back on web@1.0.0")
        ),
        "{failed:?}"
    );
    let from_bad = |a: &&Option<(u16, String)>| {
        a.as_ref()
            .is_some_and(|(s, b)| *s == 500 && b == "app 2.0.0")
    };
    let from_good = |a: &&Option<(u16, String)>| {
        a.as_ref()
            .is_some_and(|(s, b)| *s == 200 && b == "app 1.0.0")
    };
    let other: Vec<_> = answers
        .iter()
        .filter(|a| !from_bad(a) && !from_good(a))
        .collect();
    assert!(
        other.is_empty(),
        "requests failed outside the bad release's own errors: {other:?}"
    );
    assert!(answers.iter().filter(from_bad).count() >= 20);
    assert!(answers.iter().filter(from_good).count() > 0);
    f.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_that_fails_fails_the_promotion_and_stops_its_instance() {
    use shipgate_engine::Driver;
    let f = start("").await;
    let release = f.verified_in_development("1.0.0", &["SLOW"]).await;
    let prod = f.promote(&release, "production").await;
    f.reaches(prod, PromotionState::Deploying).await;
    // The data plane loses production's router while the instance starts: the switch fails.
    let closed = f.driver.retain_routers(&["development".to_owned()]).await;
    assert_eq!(closed, vec!["production".to_owned()]);
    f.reaches(prod, PromotionState::Failed).await;
    let p = f.engine.store().promotion(prod).await.unwrap().unwrap();
    let reason = p.reason.unwrap_or_default();
    assert!(reason.contains("the switch to instance"), "{reason}");
    let running = f.engine.store().running_instances().await.unwrap();
    assert!(
        running.iter().all(|i| i.env.as_str() != "production"),
        "the new instance was stopped: {running:?}"
    );
    assert!(
        f.engine
            .store()
            .live(None)
            .await
            .unwrap()
            .iter()
            .all(|l| l.env.as_str() != "production"),
        "production keeps what it had (nothing)"
    );
    f.engine.shutdown().await;
}

/// Production's status for web.
async fn production(f: &Fixture) -> shipgate_engine::EnvironmentStatus {
    let web = shipgate_core::AppName::parse("web").unwrap();
    f.engine
        .status_of(&[web])
        .await
        .unwrap()
        .remove(0)
        .environments
        .into_iter()
        .find(|e| e.env.as_str() == "production")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_shows_when_it_ends_and_its_figures_so_far_and_the_standby_is_where_a_rollback_goes()
 {
    let f = start(
        "verify.watch = \"2m\"\nverify.max_error_rate = 0.05\nverify.min_requests = 5\nverify.inconclusive = \"pass\"",
    )
    .await;
    for version in ["1.0.0", "1.1.0"] {
        let release = f.verified_in_development(version, &[]).await;
        let prod = f.promote(&release, "production").await;
        f.watching(prod).await;
        f.clock.advance(2 * MINUTE);
        f.reaches(prod, PromotionState::Succeeded).await;
    }
    let before = production(&f).await;
    assert_eq!(
        before.rollback_to.as_ref().map(|v| v.as_str()),
        Some("1.0.0")
    );
    assert_eq!(
        before.standby.as_ref().map(|s| s.version.as_str()),
        Some("1.0.0")
    );

    let release = f.verified_in_development("1.2.0", &[]).await;
    let prod = f.promote(&release, "production").await;
    f.watching(prod).await;
    let watching = production(&f).await;
    let watch = watching.in_progress[0]
        .watch
        .clone()
        .expect("a watch under way");
    assert_eq!(
        watch.ends_at.duration_since(watch.started_at).as_secs(),
        120
    );
    let settings: Vec<(&str, bool)> = watch
        .checks
        .iter()
        .map(|c| (c.setting.as_str(), c.within))
        .collect();
    assert_eq!(
        settings,
        [
            ("verify.min_requests", false),
            ("verify.max_error_rate", true)
        ],
        "{watch:?}"
    );
    assert!(
        watch.message.starts_with("watch ends at "),
        "{}",
        watch.message
    );
    assert!(
        watch
            .message
            .contains("min_requests 0 (verify.min_requests 5: not yet)"),
        "{}",
        watch.message
    );
    // During the watch a rollback (and the watch's own failure) goes back to 1.1.0, so the
    // standby of 1.0.0 is not shown as if it were where it would go.
    assert_eq!(
        watching.rollback_to.as_ref().map(|v| v.as_str()),
        Some("1.1.0")
    );
    assert_eq!(watching.standby, None, "{:?}", watching.standby);

    for _ in 0..6 {
        assert_eq!(get(f.router("production")).unwrap().0, 200);
    }
    f.clock.advance(Duration::from_secs(1));
    f.settle().await;
    let watch = production(&f).await.in_progress[0].watch.clone().unwrap();
    assert_eq!(watch.figures.requests, 6, "{watch:?}");
    assert!(watch.checks.iter().all(|c| c.within), "{watch:?}");

    f.clock.advance(2 * MINUTE);
    f.reaches(prod, PromotionState::Succeeded).await;
    let after = production(&f).await;
    assert!(after.in_progress.is_empty());
    assert_eq!(
        after.rollback_to.as_ref().map(|v| v.as_str()),
        Some("1.1.0")
    );
    assert_eq!(
        after.standby.as_ref().map(|s| s.version.as_str()),
        Some("1.1.0")
    );
    let entry = f.engine.promotion(prod).await.unwrap();
    assert_eq!(entry.watch, None, "the watch is over");
    let gate = entry.gates.iter().find(|g| g.name == "watch").unwrap();
    assert!(gate.passed);
    assert!(
        gate.output
            .starts_with("watched for 2m: 6 requests, 0 errors"),
        "{}",
        gate.output
    );
    f.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_traffic_history_is_kept_in_the_store_through_a_restart_and_for_an_hour() {
    let f = start("").await;
    f.verified_in_development("1.0.0", &[]).await;
    let (web, dev) = (
        shipgate_core::AppName::parse("web").unwrap(),
        EnvName::parse("development").unwrap(),
    );
    // One request so the router counts web at all, a sample to count from, then five.
    assert_eq!(get(f.router("development")).unwrap().0, 200);
    f.clock.advance(shipgate_engine::SAMPLE_EVERY);
    f.settle().await;
    for _ in 0..5 {
        assert_eq!(get(f.router("development")).unwrap().0, 200);
    }
    f.clock.advance(shipgate_engine::SAMPLE_EVERY);
    f.settle().await;
    let before = f.engine.traffic_history(&web, &dev).await.unwrap();
    let five = *before.last().unwrap();
    assert_eq!(five.requests, 5, "{before:?}");
    assert_eq!(five.seconds, 10.0);

    // A new engine on the same store, a few minutes later: the samples are still there.
    f.engine.shutdown().await;
    let config = f.engine.config();
    let store = Arc::clone(f.engine.store());
    use shipgate_engine::Clock;
    let clock = Arc::new(ManualClock::new(
        f.clock.now() + jiff::SignedDuration::from_mins(5),
    ));
    let engine = Engine::start(
        config,
        Arc::clone(&store),
        Arc::new(ProcessDriver::new()) as Arc<dyn shipgate_engine::Driver>,
        Arc::clone(&clock) as Arc<dyn shipgate_engine::Clock>,
    )
    .await
    .unwrap();
    let after = engine.traffic_history(&web, &dev).await.unwrap();
    assert!(after.contains(&five), "{after:?}");

    // An hour on, the chart no longer shows them, and the store has forgotten them.
    clock.advance(61 * MINUTE);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !engine
            .traffic_history(&web, &dev)
            .await
            .unwrap()
            .contains(&five)
    );
    let kept = store
        .traffic(&web, &dev, jiff::Timestamp::MIN)
        .await
        .unwrap();
    assert!(!kept.contains(&five), "{kept:?}");
    engine.shutdown().await;
}

/// A `preview` template over development with a TTL of an hour, on one port.
fn preview(ttl_from: &str) -> String {
    let port = free_port();
    format!(
        "[templates.preview]\nfrom = \"development\"\nttl = \"1h\"\nttl_from = \"{ttl_from}\"\nmax = 1\nlisten_range = \"127.0.0.1:{port}-{port}\"\n"
    )
}

async fn ready(f: &Fixture, name: &EnvName) -> shipgate_store::OnDemandRecord {
    for _ in 0..600 {
        let r = f.engine.on_demand_env(name).await.unwrap();
        if r.state != shipgate_core::on_demand::OnDemandState::Creating {
            assert_eq!(
                r.state,
                shipgate_core::on_demand::OnDemandState::Ready,
                "{r:?}"
            );
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} is still being made after 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_demand_environment_expires_on_the_engine_clock_unless_requests_keep_it() {
    let f = start(&preview("last_use")).await;
    let release = f.register_with("1.0.0", &[]).await;
    let name = EnvName::parse("pr-1").unwrap();
    let asked = shipgate_engine::on_demand::NewOnDemand {
        name: name.clone(),
        template: EnvName::parse("preview").unwrap(),
        releases: vec![release],
        ttl: None,
    };
    f.engine.create_on_demand(asked, "alice").await.unwrap();
    let made = ready(&f, &name).await;
    let created = made.expires_at;
    // The first pass only notes the router's count.
    assert!(f.engine.reap().await.unwrap().is_empty());
    f.clock.advance(50 * MINUTE);
    assert!(
        f.engine.reap().await.unwrap().is_empty(),
        "50 minutes in: kept"
    );
    assert_eq!(get(f.router("pr-1")).unwrap().0, 200);
    f.clock.advance(5 * MINUTE);
    assert!(f.engine.reap().await.unwrap().is_empty());
    let used = f.engine.on_demand_env(&name).await.unwrap().expires_at;
    assert_eq!(
        used.duration_since(created).as_secs(),
        55 * 60,
        "a request pushed the expiry back to an hour after the pass that saw it"
    );
    f.clock.advance(59 * MINUTE);
    assert!(
        f.engine.reap().await.unwrap().is_empty(),
        "the pushed expiry holds"
    );
    f.clock.advance(2 * MINUTE);
    // This pass, or the engine's own that may run meanwhile, deletes it.
    f.engine.reap().await.unwrap();
    assert!(f.engine.on_demand().await.unwrap().is_empty());
    assert!(f.engine.config().environment(&name).is_none());
    let events = f
        .engine
        .store()
        .events(shipgate_store::EventFilter::default())
        .await
        .unwrap();
    let deleted = events
        .iter()
        .find(|e| e.kind == shipgate_core::EventKind::EnvironmentDeleted)
        .unwrap();
    assert_eq!(deleted.actor, "ttl");
    assert!(
        deleted.message.contains("pr-1 expired and was deleted"),
        "{}",
        deleted.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_demand_environment_counted_from_creation_expires_however_it_is_used() {
    let f = start(&preview("creation")).await;
    let release = f.register_with("1.0.0", &[]).await;
    let name = EnvName::parse("uat-1").unwrap();
    let asked = shipgate_engine::on_demand::NewOnDemand {
        name: name.clone(),
        template: EnvName::parse("preview").unwrap(),
        releases: vec![release.clone()],
        ttl: None,
    };
    f.engine.create_on_demand(asked, "alice").await.unwrap();
    let made = ready(&f, &name).await;
    let again = f.promote(&release, "uat-1").await;
    f.reaches(again, PromotionState::Succeeded).await;
    assert_eq!(
        f.engine.on_demand_env(&name).await.unwrap().expires_at,
        made.expires_at
    );
    f.clock.advance(61 * MINUTE);
    f.engine.reap().await.unwrap();
    assert!(f.engine.on_demand_env(&name).await.is_err(), "deleted");
}

/// Constant GETs on an address, counting the answers of one status.
struct Load {
    stop: Arc<AtomicBool>,
    counted: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl Load {
    fn on(addr: std::net::SocketAddr, status: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let counted = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, counted) = (Arc::clone(&stop), Arc::clone(&counted));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if get(addr).is_some_and(|(s, _)| s == status) {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Load {
            stop,
            counted,
            thread,
        }
    }

    /// Waits (real time) until `n` answers of the status came.
    async fn until(&self, n: usize) {
        while self.counted.load(Ordering::Relaxed) < n {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
    }
}

fn admin() -> shipgate_core::Grant {
    shipgate_core::Grant {
        name: "ops".into(),
        role: shipgate_core::Role::Admin,
        envs: Vec::new(),
        person: None,
        also: Vec::new(),
    }
}

fn abort_all<'a>(
    env: &'a EnvName,
    app: &'a shipgate_core::AppName,
    percent: f64,
    minutes: u32,
) -> shipgate_core::chaos::FaultAsk<'a> {
    shipgate_core::chaos::FaultAsk {
        env,
        app,
        action: shipgate_core::chaos::FaultAction::Abort { status: 503 },
        percent,
        path: None,
        header: None,
        duration: MINUTE * minutes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_ends_at_its_duration_on_the_engine_clock_and_a_watch_never_counts_it() {
    let f = start(
        "chaos.allow = true\nverify.watch = \"10m\"\nverify.max_error_rate = 0.01\nverify.min_requests = 20\nverify.inconclusive = \"pass\"",
    )
    .await;
    let prod = EnvName::parse("production").unwrap();
    let web = shipgate_core::AppName::parse("web").unwrap();
    let good = f.verified_in_development("1.0.0", &[]).await;
    let first = f.promote(&good, "production").await;
    f.watching(first).await;
    f.clock.advance(10 * MINUTE);
    f.reaches(first, PromotionState::Succeeded).await;
    let addr = f.router("production");

    // Every request aborted for 5 minutes of the engine's clock.
    let fault = f
        .engine
        .inject_fault(&admin(), abort_all(&prod, &web, 100.0, 5))
        .await
        .unwrap();
    let (status, body) = get(addr).unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("injected 503"), "{body}");
    f.clock.advance(4 * MINUTE);
    f.settle().await;
    assert_eq!(get(addr).unwrap().0, 503, "4 of 5 minutes");
    f.clock.advance(MINUTE);
    f.settle().await;
    assert_eq!(get(addr), Some((200, "app 1.0.0".to_owned())));
    let ended = f.engine.store().faults(None, false).await.unwrap();
    assert_eq!(ended[0].id, fault.id);
    assert_eq!(ended[0].ended_by.as_deref(), Some("duration"));
    assert!(
        f.engine
            .store()
            .faults(None, true)
            .await
            .unwrap()
            .is_empty()
    );

    // With half the requests aborted on purpose, a healthy release's watch still passes: what
    // the fault touched is counted apart from the release's own answers.
    f.engine
        .inject_fault(&admin(), abort_all(&prod, &web, 50.0, 30))
        .await
        .unwrap();
    let next = f.verified_in_development("1.1.0", &[]).await;
    let load = Load::on(addr, 503);
    let second = f.promote(&next, "production").await;
    f.watching(second).await;
    load.until(40).await;
    f.clock.advance(10 * MINUTE);
    f.reaches(second, PromotionState::Succeeded).await;
    load.stop();
    let cleared = f
        .engine
        .clear_faults(&admin(), Some(&prod), None, None)
        .await
        .unwrap();
    assert_eq!(cleared.len(), 1);
    assert_eq!(cleared[0].ended_by.as_deref(), Some("ops"));
    assert_eq!(get(addr), Some((200, "app 1.1.0".to_owned())));
    f.engine.shutdown().await;
}

/// An HTTP receiver on a port of its own: every request body it gets, answered 204.
fn receiver() -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = Arc::clone(&got);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut data = Vec::new();
            let mut buf = [0u8; 8192];
            // Read the head, then the body by its length.
            let (head_end, length) = loop {
                let n = conn.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break (None, 0);
                }
                data.extend_from_slice(&buf[..n]);
                if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&data[..at]).to_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    break (Some(at + 4), length);
                }
            };
            let Some(start) = head_end else { continue };
            while data.len() < start + length {
                let n = conn.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
            }
            keep.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&data[start..]).into_owned());
            let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        }
    });
    (port, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_fires_once_after_its_time_resolves_once_and_reaches_a_notification() {
    let (hook, received) = receiver();
    let f = start(&format!(
        "\n[alerts.high-errors]\nenv = \"production\"\nwhen = \"error_rate > 0.05 for 2m\"\n\n[notify.ops]\nurl = \"http://127.0.0.1:{hook}/\"\nevents = [\"alert.*\"]\n"
    ))
    .await;
    let good = f.verified_in_development("1.0.0", &[]).await;
    let first = f.promote(&good, "production").await;
    f.reaches(first, PromotionState::Succeeded).await;
    let bad = f.verified_in_development("2.0.0", &["BUG"]).await;
    let second = f.promote(&bad, "production").await;
    f.reaches(second, PromotionState::Succeeded).await;

    let addr = f.router("production");
    let load = Load::on(addr, 500);
    load.until(20).await;
    let count = |kind: &'static str| {
        let store = f.engine.store().clone();
        async move {
            store
                .events(shipgate_store::EventFilter {
                    kind: Some(kind.into()),
                    ..Default::default()
                })
                .await
                .unwrap()
        }
    };
    f.engine.judge_alerts().await.unwrap();
    f.clock.advance(MINUTE);
    f.engine.judge_alerts().await.unwrap();
    assert!(count("alert.firing").await.is_empty(), "1 of 2 minutes");
    f.clock.advance(MINUTE);
    f.engine.judge_alerts().await.unwrap();
    f.clock.advance(MINUTE);
    f.engine.judge_alerts().await.unwrap();
    let firing = count("alert.firing").await;
    assert_eq!(firing.len(), 1, "{firing:?}");
    assert!(
        firing[0]
            .message
            .starts_with("alert high-errors firing for web in production: `error_rate > 0.05 for 2m` (error rate 1.0000"),
        "{}",
        firing[0].message
    );
    assert_eq!(f.engine.firing_alerts().len(), 1);

    // Back on the good release, the live release's figures are clean: resolved, once.
    let back = f
        .engine
        .rollback(
            &shipgate_core::AppName::parse("web").unwrap(),
            &EnvName::parse("production").unwrap(),
            None,
            "ops",
        )
        .await
        .unwrap();
    f.reaches(back.id, PromotionState::Succeeded).await;
    f.settle().await;
    f.engine.judge_alerts().await.unwrap();
    f.clock.advance(MINUTE);
    f.engine.judge_alerts().await.unwrap();
    load.stop();
    assert_eq!(count("alert.resolved").await.len(), 1);
    assert_eq!(count("alert.firing").await.len(), 1);
    assert!(f.engine.firing_alerts().is_empty());

    // Both reached the notification target.
    for _ in 0..200 {
        let got = received.lock().unwrap().clone();
        if got.iter().any(|b| b.contains("dev.shipgate.alert.firing"))
            && got
                .iter()
                .any(|b| b.contains("dev.shipgate.alert.resolved"))
        {
            f.engine.shutdown().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the notifications did not arrive: {:?}",
        received.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_are_taken_every_hour_on_the_engine_clock_and_retention_keeps_two() {
    let f = start(
        "\n[apps.web.data]\nproduction = \"sqlite://p.db\"\n[apps.web.backup]\nenvs = [\"production\"]\nevery = \"1h\"\nkeep = 2\n",
    )
    .await;
    let app = shipgate_core::AppName::parse("web").unwrap();
    let env = EnvName::parse("production").unwrap();
    let backups = || async {
        f.engine
            .store()
            .backups(Some(&app), Some(&env))
            .await
            .unwrap()
    };
    // The file does not exist yet: the first look's backup fails, and is not tried again at
    // each look.
    wait_until(|| async { !backups().await.is_empty() }).await;
    assert_eq!(backups().await[0].state, "failed");
    let db = f.dir.path().join("p.db");
    std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3\ndb = sqlite3.connect({:?})\ndb.execute('CREATE TABLE t (x)')\ndb.executemany('INSERT INTO t VALUES (?)', [(i,) for i in range(10)])\ndb.commit()",
            db.display().to_string()
        ))
        .status()
        .unwrap();
    f.clock.advance(std::time::Duration::from_secs(60));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        backups().await.len(),
        1,
        "a failed backup waits five minutes"
    );
    for hour in 1..=3 {
        f.clock.advance(std::time::Duration::from_secs(3600));
        wait_until(|| async {
            backups()
                .await
                .iter()
                .filter(|b| b.state == "restorable")
                .count()
                >= hour
        })
        .await;
    }
    let all = backups().await;
    let restorable: Vec<_> = all.iter().filter(|b| b.state == "restorable").collect();
    assert_eq!(restorable.len(), 3, "{all:?}");
    assert_eq!(restorable[0].counts["t"], 10);
    // Keep 2: the oldest of the three is pruned, its record kept.
    wait_until(|| async {
        backups()
            .await
            .iter()
            .filter(|b| b.pruned_at.is_some())
            .count()
            == 1
    })
    .await;
    let pruned = backups()
        .await
        .into_iter()
        .find(|b| b.pruned_at.is_some())
        .unwrap();
    assert_eq!(pruned.id, restorable[2].id);
}

/// Polls `done` every 50 ms for up to 30 s.
async fn wait_until<F, Fut>(mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..600 {
        if done().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("gave up waiting");
}
