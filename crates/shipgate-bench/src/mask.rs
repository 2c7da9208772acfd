//! `shipgate-bench mask`: a masked refresh of a realistic `users` table, PostgreSQL to
//! PostgreSQL, side by side in one run with its anchors: a plain unmasked copy of the same table
//! (`COPY ... TO STDOUT` into `COPY ... FROM STDIN`, the physical limit) and pganonymize 0.13
//! from PyPI with equivalent rules. Prints rows/s, the ratios and shipgate's peak memory.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use futures_util::StreamExt;
use shipgate_core::config::{DataConfig, Unlisted};
use shipgate_core::mask::{MaskKey, Transformer};
use shipgate_store::cluster::TempCluster;
use sqlx::{Connection, PgConnection};

const TABLE: &str = "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL UNIQUE,
    full_name text NOT NULL, phone text, birth_date date, address text, notes text)";

/// Peak resident memory of this process so far, in MiB.
fn peak_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn rules() -> DataConfig {
    let mut users = BTreeMap::new();
    for (c, r) in [
        ("email", Transformer::Email),
        ("full_name", Transformer::Name),
        ("phone", Transformer::KeepFormat),
        ("birth_date", Transformer::ShiftDays(30)),
        ("address", Transformer::Hash),
        ("notes", Transformer::Null),
    ] {
        users.insert(c.to_owned(), r);
    }
    DataConfig {
        locations: BTreeMap::new(),
        unlisted: Unlisted::Refuse,
        mask: BTreeMap::from([("users".to_owned(), users)]),
        role: shipgate_core::Role::Admin,
    }
}

const PGANONYMIZE_SCHEMA: &str = "tables:
 - users:
    primary_key: id
    fields:
     - email:
        provider:
          name: fake.unique.email
     - full_name:
        provider:
          name: fake.name
     - phone:
        provider:
          name: fake.phone_number
     - birth_date:
        provider:
          name: fake.date_of_birth
     - address:
        provider:
          name: md5
     - notes:
        provider:
          name: clear
";

/// The plain copy: bytes from one COPY into the other, nothing parsed.
async fn plain_copy(from: &str, to: &str) -> anyhow::Result<()> {
    let mut src = PgConnection::connect(from).await?;
    let mut dst = PgConnection::connect(to).await?;
    sqlx::raw_sql(TABLE).execute(&mut dst).await?;
    let mut copy_in = dst.copy_in_raw("COPY users FROM STDIN").await?;
    let mut out = src.copy_out_raw("COPY users TO STDOUT").await?;
    while let Some(chunk) = out.next().await {
        copy_in.send(chunk?).await?;
    }
    drop(out);
    copy_in.finish().await?;
    Ok(())
}

/// Makes the `users` table with `rows` realistic rows, analysed.
pub(crate) async fn fill_users(shop: &mut PgConnection, rows: u64) -> anyhow::Result<()> {
    sqlx::raw_sql(&format!(
        "{TABLE};
         INSERT INTO users SELECT i, 'customer' || i || '@mail.example', 'First' || (i % 997) || ' Last' || (i % 1009),
           '+33 6 ' || lpad((i % 100000000)::text, 8, '0'), date '1950-01-01' + (i % 20000),
           i || ' rue de la Paix, 750' || lpad((i % 20)::text, 2, '0') || ' Paris',
           'called on ' || i || ', prefers email, VIP since ' || (2000 + i % 24)
           FROM generate_series(1, {rows}) i"
    ))
    .execute(&mut *shop)
    .await
    .context("filling the source table")?;
    sqlx::raw_sql("VACUUM ANALYZE users")
        .execute(&mut *shop)
        .await
        .context("vacuuming the source table")?;
    Ok(())
}

/// Runs the benchmark on `rows` users.
pub async fn run(rows: u64) -> anyhow::Result<ExitCode> {
    let cluster = TempCluster::start().map_err(|e| anyhow::anyhow!(e))?;
    for db in ["shop", "shop_copy", "shop_staging"] {
        cluster.create_database(db, None).await?;
    }
    let mut shop = PgConnection::connect(&cluster.url("shop")).await?;
    let t = Instant::now();
    fill_users(&mut shop, rows).await?;
    drop(shop);
    println!(
        "masked refresh of {rows} users (id, email, full name, phone, birth date, address, notes), PostgreSQL {} → same cluster, filled in {:.1} s",
        cluster.port,
        t.elapsed().as_secs_f64()
    );
    cluster.create_database("shop_anon", Some("shop")).await?;

    let t = Instant::now();
    plain_copy(&cluster.url("shop"), &cluster.url("shop_copy")).await?;
    let copy_s = t.elapsed().as_secs_f64();

    let before = peak_mib();
    let key = MaskKey::new([7; 32]);
    let t = Instant::now();
    let report = shipgate_mask::refresh_postgres(
        &cluster.url("shop"),
        &cluster.url("shop_staging"),
        &rules(),
        &key,
        |_| {},
    )
    .await?;
    let ours_s = t.elapsed().as_secs_f64();
    let peak = peak_mib();

    let rate = |s: f64| rows as f64 / s.max(1e-9);
    println!(
        "  {:<58} {:>9.2} s  {:>10.0} rows/s",
        "plain copy (COPY TO STDOUT → COPY FROM STDIN)",
        copy_s,
        rate(copy_s)
    );
    println!(
        "  {:<58} {:>9.2} s  {:>10.0} rows/s   {:.2}× the plain copy (target ≥ 0.5)",
        "shipgate masked refresh (snapshot, mask, constraints, leak check, swap)",
        ours_s,
        rate(ours_s),
        copy_s / ours_s
    );
    println!(
        "  shipgate peak memory: {peak:.0} MiB (before the refresh: {before:.0} MiB; target < 200 MB); leak check: {} of {} masked columns leaked",
        report.leaks.columns.iter().filter(|c| c.leaked > 0).count(),
        report.leaks.columns.len()
    );
    let schema = tempfile::NamedTempFile::new()?;
    std::fs::write(schema.path(), PGANONYMIZE_SCHEMA)?;
    let t = Instant::now();
    let anon = tokio::process::Command::new("pganonymize")
        .arg("--schema")
        .arg(schema.path())
        .args([
            "--dbname",
            "shop_anon",
            "--user",
            "postgres",
            "--host",
            "127.0.0.1",
            "--port",
        ])
        .arg(cluster.port.to_string())
        .output()
        .await;
    let anon_s = t.elapsed().as_secs_f64();
    match anon {
        Ok(out) if out.status.success() => println!(
            "  {:<58} {:>9.2} s  {:>10.0} rows/s   shipgate is {:.1}× faster (target ≥ 20)",
            "pganonymize 0.13, equivalent rules, in place",
            anon_s,
            rate(anon_s),
            anon_s / ours_s
        ),
        Ok(out) => println!(
            "  pganonymize failed ({}): {}",
            out.status,
            format!(
                "{} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
            .trim()
            .lines()
            .rev()
            .take(6)
            .collect::<Vec<_>>()
            .join(" | ")
        ),
        Err(e) => println!(
            "  pganonymize could not run ({e}): pip install pganonymize==0.13.0 psycopg2-binary"
        ),
    }
    Ok(ExitCode::SUCCESS)
}
