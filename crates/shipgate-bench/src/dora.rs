//! `shipgate-bench dora`: the DORA metrics over 1,000,000 promotions against a plain count of
//! the same rows, in one run, on SQLite (the default store). 100 apps × 4 environments, 2,500
//! promotions each spread over the last 90 days (one in ten failed, one in twenty rolled back,
//! every release with its commit time); then, three times each, `SELECT COUNT(*)` of the
//! promotions of the last 30 days, and the whole `GET /api/v1/dora` work for the same window
//! (the store's read of those rows with their releases' commit times, and the arithmetic).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use shipgate_store::{SqlStore, Store};

const APPS: usize = 100;
const ENVS: [&str; 4] = ["development", "testing", "staging", "production"];
const PER_SLOT: usize = 2_500;
const DAYS: u32 = 30;

async fn fill(url: &str) -> anyhow::Result<usize> {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut db = sqlx::AnyConnection::connect(url)
        .await
        .context("opening the benchmark's database")?;
    let now = jiff::Timestamp::now();
    let span = 90 * 86_400;
    let mut n = 0usize;
    let mut tx = db.begin().await?;
    for a in 0..APPS {
        let app = format!("app-{a:03}");
        for v in 0..PER_SLOT {
            let version = format!("1.{v}.0");
            let digest = format!("sha256:{:064x}", a * PER_SLOT + v);
            let at =
                now - jiff::SignedDuration::from_secs((span * (PER_SLOT - v) / PER_SLOT) as i64);
            let commit = at - jiff::SignedDuration::from_secs(3_600 + (v as i64 % 7) * 600);
            sqlx::query("INSERT INTO releases (app, version, digest, size, commit_sha, notes, created_by, created_at, commit_time) VALUES ($1, $2, $3, 1000, NULL, NULL, 'ci', $4, $5)")
                .bind(&app).bind(&version).bind(&digest).bind(at.to_string()).bind(commit.to_string())
                .execute(&mut *tx).await?;
            for (e, env) in ENVS.iter().enumerate() {
                let finished = at + jiff::SignedDuration::from_secs(60 * (e as i64 + 1));
                let (kind, state) = match (v + e) % 20 {
                    0 | 10 => ("promote", "failed"),
                    5 => ("rollback", "succeeded"),
                    _ => ("promote", "succeeded"),
                };
                sqlx::query("INSERT INTO promotions (app, version, digest, env, kind, state, requested_by, previous_version, reason, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 'ci', NULL, NULL, $7, $8)")
                    .bind(&app).bind(&version).bind(&digest).bind(*env).bind(kind).bind(state)
                    .bind(at.to_string()).bind(finished.to_string())
                    .execute(&mut *tx).await?;
                n += 1;
            }
        }
    }
    tx.commit().await?;
    sqlx::query("ANALYZE").execute(&mut db).await?;
    Ok(n)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub async fn run() -> anyhow::Result<ExitCode> {
    let dir = tempfile::Builder::new()
        .prefix("shipgate-bench-dora-")
        .tempdir()?;
    let path = dir.path().join("shipgate.db");
    let location = shipgate_core::config::DataLocation::Sqlite(path.clone());
    // Made by the store, so the schema is the server's own.
    drop(SqlStore::open_at(&location).await?);
    let started = Instant::now();
    let rows = fill(&format!("sqlite://{}", path.display())).await?;
    eprintln!(
        "{rows} promotions written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let store = SqlStore::open_at(&location).await?;
    let now = jiff::Timestamp::now();
    let since = now - jiff::SignedDuration::from_secs(i64::from(DAYS) * 86_400);
    let (mut counts, mut doras) = (Vec::new(), Vec::new());
    let (mut counted, mut slots) = (0, 0);
    for _ in 0..3 {
        let t = Instant::now();
        counted = store.count_promotions_since(since).await?;
        counts.push(t.elapsed());
        let t = Instant::now();
        let changes = store.dora_changes(since, None).await?;
        let figures = shipgate_core::dora::figures(&changes, now, DAYS);
        doras.push(t.elapsed());
        slots = figures.len();
    }
    let (count, dora) = (median(counts), median(doras));
    println!(
        "{rows} promotions in SQLite ({APPS} apps × {} environments), {counted} of them in the last {DAYS} days",
        ENVS.len()
    );
    println!("| work, median of 3 | ms |\n|---|---|");
    println!(
        "| plain `SELECT COUNT(*)` of the window's promotions | {:.1} |",
        count.as_secs_f64() * 1000.0
    );
    println!(
        "| DORA over the window ({slots} app × environment figures, series per day) | {:.1} |",
        dora.as_secs_f64() * 1000.0
    );
    println!(
        "ratio DORA / count: {:.1}",
        dora.as_secs_f64() / count.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
