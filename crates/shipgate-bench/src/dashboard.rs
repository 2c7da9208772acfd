//! `shipgate-bench dashboard`: the dashboard at scale. A server with 1,000 apps × 4
//! environments whose store holds 100,000 promotions (one `deploy` gate each) and 4,000 live
//! releases; then the time to answer the board and a release page, median of 20, over loopback
//! HTTP (an upper bound of the server's own time). The anchor, in the same run: `GET /healthz`
//! on the same server, the cost of the round trip alone.
//!
//! The store is filled with plain SQL after the server started, so the server does not try to
//! start 4,000 instances at start-up; the pages read it as they read any store.

use shipgate_core::config::DataLocation;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

/// Apps, environments and promotions of the benchmark, as issue 5 asks.
const APPS: usize = 1000;
const ENVS: [&str; 4] = ["development", "testing", "staging", "production"];
const VERSIONS: usize = 25;

fn config(apps: usize) -> anyhow::Result<String> {
    let mut toml =
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\ndata_plane = \"server\"\n"
            .to_owned();
    for i in 0..apps {
        toml.push_str(&format!(
            "\n[apps.app-{i:04}]\nrun = \"./app --port ${{PORT}}\"\nhealth = \"/healthz\"\n"
        ));
    }
    for (i, env) in ENVS.iter().enumerate() {
        // An environment's address is stable: port 0 is refused there.
        toml.push_str(&format!(
            "\n[environments.{env}]\nlisten = \"127.0.0.1:{}\"\n",
            shipgate::demo::free_port(0)?
        ));
        if i > 0 {
            toml.push_str(&format!("after = \"{}\"\n", ENVS[i - 1]));
        }
        if *env == "production" {
            toml.push_str("require.approvals = 2\n");
        }
    }
    Ok(toml)
}

/// 100,000 promotions: every version of every app through every environment, the newest one
/// still waiting for production.
async fn fill(database: &DataLocation) -> anyhow::Result<usize> {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let url = match database {
        DataLocation::Sqlite(path) => format!("sqlite://{}", path.display()),
        DataLocation::Postgres(url) => url.clone(),
    };
    let mut db = sqlx::AnyConnection::connect(&url)
        .await
        .context("opening the benchmark's database")?;
    let mut tx = db.begin().await?;
    let at = jiff::Timestamp::now().to_string();
    let mut promotions = 0;
    for a in 0..APPS {
        let app = format!("app-{a:04}");
        for v in 0..VERSIONS {
            let version = format!("1.0.{v}");
            let digest = format!("sha256:{:064x}", a * VERSIONS + v);
            sqlx::query("INSERT INTO releases (app, version, digest, size, commit_sha, notes, created_by, created_at) VALUES ($1, $2, $3, 1000, NULL, NULL, 'ci', $4)")
                .bind(&app).bind(&version).bind(&digest).bind(&at)
                .execute(&mut *tx).await?;
            for (e, env) in ENVS.iter().enumerate() {
                let newest = v == VERSIONS - 1;
                let state = match (newest, e) {
                    (true, 3) => "pending",
                    (false, _) if v % 7 == 3 && e == 1 => "failed",
                    _ => "succeeded",
                };
                let id: i64 = sqlx::query_scalar("INSERT INTO promotions (app, version, digest, env, kind, state, requested_by, previous_version, reason, created_at, updated_at) VALUES ($1, $2, $3, $4, 'promote', $5, 'ci', NULL, NULL, $6, $7) RETURNING id")
                    .bind(&app).bind(&version).bind(&digest).bind(env).bind(state).bind(&at).bind(&at)
                    .fetch_one(&mut *tx).await?;
                sqlx::query("INSERT INTO gates (promotion_id, name, passed, output, started_at, finished_at) VALUES ($1, 'deploy', $2, 'instance healthy on port 40000', $3, $4)")
                    .bind(id).bind(i64::from(state != "failed")).bind(&at).bind(&at)
                    .execute(&mut *tx).await?;
                promotions += 1;
                let live_here = if e == 3 { v == VERSIONS - 2 } else { newest };
                if live_here {
                    sqlx::query("INSERT INTO live (app, env, version, digest, promotion_id, since) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (app, env) DO UPDATE SET version = excluded.version, digest = excluded.digest, promotion_id = excluded.promotion_id, since = excluded.since")
                        .bind(&app).bind(env).bind(&version).bind(&digest).bind(id).bind(&at)
                        .execute(&mut *tx).await?;
                }
            }
        }
    }
    tx.commit().await?;
    if matches!(database, DataLocation::Postgres(_)) {
        // PostgreSQL plans by its statistics, which autovacuum gathers within a minute of a
        // bulk load like this one; gathered now, so the pages are timed on the plans a running
        // server has.
        sqlx::query("ANALYZE").execute(&mut db).await?;
    }
    Ok(promotions)
}

async fn median_ms(
    http: &reqwest::Client,
    url: &str,
    cookie: &str,
    runs: usize,
) -> anyhow::Result<(f64, usize)> {
    let mut times = Vec::with_capacity(runs);
    let mut size = 0;
    for i in 0..=runs {
        let started = Instant::now();
        let response = http
            .get(url)
            .header("Cookie", cookie)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let body = response.bytes().await?;
        let took = started.elapsed();
        anyhow::ensure!(status.is_success(), "GET {url} answered {status}");
        size = body.len();
        // The first answer warms the page cache and the connection; it is not counted.
        if i > 0 {
            times.push(took);
        }
    }
    times.sort();
    Ok((times[times.len() / 2].as_secs_f64() * 1000.0, size))
}

/// What one run of the benchmark measured.
struct Measured {
    promotions: usize,
    filled_in: Duration,
    /// `GET /healthz`, ms.
    anchor: f64,
    /// Each page: its name, its median in ms, its size in bytes, and its target in ms.
    pages: Vec<(&'static str, f64, usize, f64)>,
}

/// Fills a server's store (`database`, or the SQLite file when None) and times its pages.
async fn measure(runs: usize, database: Option<&str>) -> anyhow::Result<Measured> {
    let work = tempfile::Builder::new()
        .prefix("shipgate-bench-dashboard-")
        .tempdir()?;
    let mut src = config(APPS)?;
    if let Some(url) = database {
        src = src.replace(
            "data_dir = \"data\"\n",
            &format!("data_dir = \"data\"\ndatabase = \"{url}\"\n"),
        );
    }
    let config = shipgate_core::Config::parse(&src, work.path())
        .map_err(|e| anyhow::anyhow!("{}", e.render("shipgate.toml", &src)))?;
    let database = config.server.database.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = shipgate_server::Server::start(Arc::new(config), async {
        let _ = stopped.await;
    })
    .await?;
    let filling = Instant::now();
    let promotions = fill(&database).await?;
    let filled_in = filling.elapsed();
    let base = format!("http://{}", server.addr);
    let token = std::fs::read_to_string(
        work.path()
            .join("data")
            .join(shipgate_server::ADMIN_TOKEN_FILE),
    )?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()?;
    let signed_in = http
        .post(format!("{base}/sign-in"))
        .form(&[("token", token.trim()), ("next", "/")])
        .send()
        .await?;
    let cookie = signed_in
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("signing in gave no session cookie")?
        .to_owned();
    let (anchor, _) = median_ms(&http, &format!("{base}/healthz"), &cookie, runs).await?;
    let pages = [
        (
            "board, page 1 (50 apps × 4 environments)",
            format!("{base}/"),
            100.0,
        ),
        ("board, page 20", format!("{base}/?page=20"), 100.0),
        (
            "board, filtered (app=app-09)",
            format!("{base}/?app=app-09"),
            100.0,
        ),
        (
            "release page (4 promotions with gates)",
            format!("{base}/apps/app-0500/releases/1.0.24"),
            20.0,
        ),
    ];
    let mut timed = Vec::new();
    for (name, url, target) in pages {
        let (ms, size) = median_ms(&http, &url, &cookie, runs).await?;
        timed.push((name, ms, size, target));
    }
    let _ = stop.send(());
    server.wait().await?;
    Ok(Measured {
        promotions,
        filled_in,
        anchor,
        pages: timed,
    })
}

/// Runs the benchmark on the SQLite store and on PostgreSQL (a cluster started for the run)
/// and prints their figures side by side.
pub async fn run(runs: usize) -> anyhow::Result<ExitCode> {
    let runs = runs.max(1);
    let cluster = shipgate_store::cluster::TempCluster::start().map_err(anyhow::Error::msg)?;
    let url = cluster.fresh_database("bench_dashboard").await?;
    let sqlite = measure(runs, None).await?;
    let postgres = measure(runs, Some(&url)).await?;
    println!(
        "dashboard at scale: {APPS} apps × {} environments, {} promotions (filled in {:.1} s on SQLite, {:.1} s on PostgreSQL), median of {runs}",
        ENVS.len(),
        sqlite.promotions,
        sqlite.filled_in.as_secs_f64(),
        postgres.filled_in.as_secs_f64()
    );
    println!(
        "  {:<44} {:>10} {:>12}   {:>7}",
        "page", "SQLite", "PostgreSQL", "size"
    );
    println!(
        "  {:<44} {:>7.2} ms {:>9.2} ms",
        "anchor: GET /healthz (round trip only)", sqlite.anchor, postgres.anchor
    );
    for ((name, lite, size, target), (_, pg, _, _)) in sqlite.pages.iter().zip(&postgres.pages) {
        let verdict = |ms: f64| if ms < *target { "meets" } else { "MISSES" };
        println!(
            "  {name:<44} {lite:>7.2} ms {pg:>9.2} ms   {:>4} KB   {} / {} the {target:.0} ms target (PostgreSQL/SQLite {:.2}×)",
            size / 1024,
            verdict(*lite),
            verdict(*pg),
            pg / lite.max(1e-6)
        );
    }
    Ok(ExitCode::SUCCESS)
}
