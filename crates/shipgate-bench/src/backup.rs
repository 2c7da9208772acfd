//! `shipgate-bench backup`: a backup and its restore drill of the masking benchmark's `users`
//! table (1,000,000 rows), side by side in one run with their anchors: plain `pg_dump -Fd` with
//! the same jobs, and `pg_restore` into a fresh database plus the same row counts. Rounds
//! alternate; the medians and their ratios are printed.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use shipgate_core::config::DataLocation;
use shipgate_mask::backup;
use shipgate_store::cluster::TempCluster;
use sqlx::{Connection, PgConnection};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn run_tool(bin: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new(format!("/usr/lib/postgresql/15/bin/{bin}"))
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {bin}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{bin} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Runs the benchmark on `rows` users, `rounds` alternated rounds, `jobs` parallel jobs.
pub async fn run(rows: u64, rounds: usize, jobs: u32) -> anyhow::Result<ExitCode> {
    let cluster = TempCluster::start().map_err(|e| anyhow::anyhow!(e))?;
    cluster.create_database("shop", None).await?;
    let url = cluster.url("shop");
    let mut shop = PgConnection::connect(&url).await?;
    let t = Instant::now();
    crate::mask::fill_users(&mut shop, rows).await?;
    drop(shop);
    println!(
        "backup and restore drill of {rows} users, PostgreSQL 15 on port {}, {jobs} jobs, {rounds} alternated rounds (filled in {:.1} s)",
        cluster.port,
        t.elapsed().as_secs_f64()
    );
    let location = DataLocation::Postgres(url.clone());
    let work = tempfile::tempdir()?;
    let (mut dump_s, mut ours_s, mut restore_s, mut drill_s) = (vec![], vec![], vec![], vec![]);
    let mut size = 0;
    for round in 0..rounds {
        // Anchor: pg_dump -Fd with the same jobs.
        let plain = work.path().join(format!("plain-{round}"));
        let plain_path = plain.display().to_string();
        let t = Instant::now();
        run_tool(
            "pg_dump",
            &[
                "--format=directory",
                &format!("--jobs={jobs}"),
                "--no-owner",
                "--file",
                &plain_path,
                "--dbname",
                &url,
            ],
        )
        .await?;
        dump_s.push(t.elapsed().as_secs_f64());
        // shipgate: the same dump in the counts' snapshot, and its checksum.
        let ours = work.path().join(format!("ours-{round}"));
        let t = Instant::now();
        let counts = backup::take(&location, &ours, jobs).await?;
        let (checksum, bytes) = backup::checksum(&ours)?;
        ours_s.push(t.elapsed().as_secs_f64());
        size = bytes;
        anyhow::ensure!(counts["users"] == rows as i64, "counts: {counts:?}");
        // Anchor: pg_restore into a fresh database, then the same counts.
        let fresh = format!("fresh_{round}");
        let t = Instant::now();
        cluster.create_database(&fresh, None).await?;
        run_tool(
            "pg_restore",
            &[
                "--no-owner",
                &format!("--jobs={jobs}"),
                "--dbname",
                &cluster.url(&fresh),
                &plain_path,
            ],
        )
        .await?;
        let mut conn = PgConnection::connect(&cluster.url(&fresh)).await?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(&mut conn)
            .await?;
        anyhow::ensure!(n == rows as i64);
        drop(conn);
        restore_s.push(t.elapsed().as_secs_f64());
        // shipgate: the drill (checksum, scratch database, restore, counts, drop).
        let t = Instant::now();
        let drill = backup::drill(
            &location,
            &ours,
            &checksum,
            &BTreeMap::from([("users".to_owned(), rows as i64)]),
            &[],
            jobs,
            &format!("shipgate_drill_bench_{round}"),
        )
        .await;
        drill_s.push(t.elapsed().as_secs_f64());
        anyhow::ensure!(drill.restorable, "the drill failed: {:?}", drill.error);
        println!(
            "  round {}: pg_dump {:.2} s, shipgate backup {:.2} s; pg_restore + count {:.2} s, shipgate drill {:.2} s",
            round + 1,
            dump_s[round],
            ours_s[round],
            restore_s[round],
            drill_s[round]
        );
    }
    let (dump, ours, restore, drill) = (
        median(dump_s),
        median(ours_s),
        median(restore_s),
        median(drill_s),
    );
    println!("  medians ({:.0} MiB per backup):", size as f64 / 1048576.0);
    println!(
        "  {:<52} {:>7.2} s\n  {:<52} {:>7.2} s   {:.2}× pg_dump (target ≤ 1.1)",
        "pg_dump -Fd (anchor)",
        dump,
        "shipgate backup (snapshot counts, pg_dump, checksum)",
        ours,
        ours / dump
    );
    println!(
        "  {:<52} {:>7.2} s\n  {:<52} {:>7.2} s   {:.2}× pg_restore + counts (target ≤ 1.1)",
        "pg_restore into a fresh database + count (anchor)",
        restore,
        "shipgate drill (checksum, restore, counts, drop)",
        drill,
        drill / restore
    );
    Ok(ExitCode::SUCCESS)
}
