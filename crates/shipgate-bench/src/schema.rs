//! `shipgate-bench schema`: schema parity between two PostgreSQL databases of 200 tables each
//! (four columns, an index, a check and a primary key each; one column added on one side):
//! both schemas read at once, as `shipgate diff` does, then compared. Its anchor in the same
//! run is `pg_dump --schema-only` of both databases, what one would run to compare them by
//! hand. Prints each run, the median, and the differences found (one is expected).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use shipgate_core::config::DataLocation;
use shipgate_core::parity::{ItemClass, Observed, compare};
use shipgate_mask::schema::schema_of;
use shipgate_store::cluster::TempCluster;
use sqlx::{Connection, PgConnection};

const TABLES: usize = 200;
/// What a diff must take at most.
const TARGET: Duration = Duration::from_secs(1);

/// The tables of one database; `extra` adds a column to the last one.
fn tables(extra: bool) -> String {
    let mut sql = String::new();
    for t in 0..TABLES {
        sql.push_str(&format!(
            "CREATE TABLE t{t} (id bigint PRIMARY KEY, name text NOT NULL DEFAULT '',
               amount numeric(10, 2) CHECK (amount >= 0), created_at timestamptz NOT NULL DEFAULT now());
             CREATE INDEX t{t}_created_idx ON t{t} (created_at);"
        ));
    }
    if extra {
        sql.push_str(&format!(
            "ALTER TABLE t{} ADD COLUMN note text;",
            TABLES - 1
        ));
    }
    sql
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The newest `pg_dump` of Debian's postgresql.
fn pg_dump() -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed: apt-get install -y postgresql")?
        .flatten()
        .map(|e| e.path().join("bin/pg_dump"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found
        .pop()
        .context("no pg_dump under /usr/lib/postgresql/*/bin")
}

async fn dump(pg_dump: &Path, url: &str) -> anyhow::Result<usize> {
    let out = tokio::process::Command::new(pg_dump)
        .args(["--schema-only", "--no-owner", url])
        .output()
        .await
        .context("running pg_dump")?;
    anyhow::ensure!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout.len())
}

pub async fn run(runs: usize) -> anyhow::Result<ExitCode> {
    let cluster = TempCluster::start().map_err(|e| anyhow::anyhow!(e))?;
    for (db, extra) in [("staging", true), ("production", false)] {
        cluster.create_database(db, None).await?;
        let mut conn = PgConnection::connect(&cluster.url(db)).await?;
        sqlx::raw_sql(&tables(extra)).execute(&mut conn).await?;
        sqlx::raw_sql("ANALYZE").execute(&mut conn).await?;
    }
    let (staging, production) = (cluster.url("staging"), cluster.url("production"));
    let locations = (
        DataLocation::Postgres(staging.clone()),
        DataLocation::Postgres(production.clone()),
    );
    let config = shipgate_core::Config::parse(
        "[apps.web]\nrun = \"./web\"\n[environments.staging]\nlisten = \"127.0.0.1:1\"\n[environments.production]\nafter = \"staging\"\nlisten = \"127.0.0.1:2\"\ndiffers = [\"listen\"]\n",
        Path::new("/"),
    )
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let pg_dump = pg_dump()?;
    println!(
        "schema parity: 2 PostgreSQL databases of {TABLES} tables (4 columns, an index, a check and a primary key each), one column added in staging; {runs} runs"
    );
    let (mut ours, mut anchor) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let started = Instant::now();
        let (a, b) = tokio::join!(schema_of(&locations.0), schema_of(&locations.1));
        let observed = |lines: BTreeMap<String, String>| Observed {
            schema: Some(Ok(lines)),
            ..Observed::default()
        };
        let (a, b) = (observed(a?), observed(b?));
        let (lines_a, lines_b) = match (&a.schema, &b.schema) {
            (Some(Ok(x)), Some(Ok(y))) => (x.len(), y.len()),
            _ => (0, 0),
        };
        let (ea, eb) = (&config.environments[0], &config.environments[1]);
        let items = compare(&config.apps[0], (ea, &a), (eb, &b));
        let took = started.elapsed();
        let differing: Vec<&str> = items
            .iter()
            .filter(|i| i.class != ItemClass::Same)
            .map(|i| i.key.as_str())
            .collect();
        let started = Instant::now();
        let (da, db) = tokio::join!(dump(&pg_dump, &staging), dump(&pg_dump, &production));
        let (da, db) = (da?, db?);
        let dumped = started.elapsed();
        println!(
            "run {run}: shipgate {:.0} ms ({lines_a} + {lines_b} lines, {} items, differences: {}); pg_dump --schema-only of both {:.0} ms ({da} + {db} bytes)",
            took.as_secs_f64() * 1000.0,
            items.len(),
            differing.join(", "),
            dumped.as_secs_f64() * 1000.0,
        );
        anyhow::ensure!(
            differing == ["listen", "schema.t199.column.note"],
            "expected the one added column (and the declared listen), found {differing:?}"
        );
        ours.push(took);
        anchor.push(dumped);
    }
    let (ours, anchor) = (median(ours), median(anchor));
    println!(
        "median: shipgate {:.0} ms (target under {} ms), pg_dump --schema-only of both {:.0} ms; ratio {:.2}",
        ours.as_secs_f64() * 1000.0,
        TARGET.as_millis(),
        anchor.as_secs_f64() * 1000.0,
        ours.as_secs_f64() / anchor.as_secs_f64(),
    );
    Ok(if ours < TARGET {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
