//! Part 2 of `shipgate-bench canary`: how fast an abort takes the canary away. A server with
//! production's canary at 50% under load; from the `POST /api/v1/canary/abort` call until the
//! router's own count of the canary's answers stops growing (read from `/metrics`, polled back
//! to back), until the call returns, and until the last request the client sent that the canary
//! answered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shipgate_api::records::Promotion;
use shipgate_api::requests::AppEnv;
use shipgate_api::status::CanaryView;
use shipgate_core::PromotionState;

use crate::canary::{
    APP, CANARY, PATIENCE, PRODUCTION, STABLE, ms, production_server, until_interrupted, verdict,
};
use crate::load::nearest_rank;
use crate::traffic::{Answered, Traffic};
use shipgate::client::Client;
use shipgate::output::table;

/// Load on production before an abort, and after its call returned.
const BEFORE_ABORT: Duration = Duration::from_millis(300);
const AFTER_ABORT: Duration = Duration::from_millis(150);

/// The router's count of the canary's answers in production, from the Prometheus text.
fn canary_count(metrics: &str) -> Option<u64> {
    let release = format!("release=\"{APP}@{CANARY}\"");
    let env = format!("env=\"{PRODUCTION}\"");
    let mut total = None;
    for line in metrics.lines() {
        if line.starts_with("shipgate_requests_total{")
            && line.contains(&release)
            && line.contains(&env)
        {
            let n: f64 = line.rsplit(' ').next()?.parse().ok()?;
            *total.get_or_insert(0) += n as u64;
        }
    }
    total
}

/// One abort, as measured.
struct Abort {
    /// The call until its answer.
    api: Duration,
    /// The call until the router's counter of the canary had its last value (the first poll
    /// that saw it: an upper bound).
    counter: Duration,
    /// The canary's answers counted after the call was made.
    counted_after: u64,
    /// The call until the last request the client sent that the canary answered (zero when it
    /// answered none sent after the call).
    client: Duration,
    /// Polls of `/metrics` during the abort, and the longest gap between two.
    polls: usize,
    gap: Duration,
}

/// Part 2: production's canary at 50% under load, aborted; `aborts` times.
pub async fn run(
    aborts: usize,
    connections: usize,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<()> {
    let extra = format!("\n[environments.{PRODUCTION}.canary]\nsteps = [\"50%\"]\nstep = \"1h\"\n");
    eprintln!("  running part 2 ({} aborts)…", aborts);
    let (sample, addr) = production_server("shipgate-bench-canary-abort-", &extra, false).await?;
    let token = std::fs::read_to_string(
        sample
            .work
            .path()
            .join("data")
            .join(shipgate_server::ADMIN_TOKEN_FILE),
    )
    .context("reading the admin token")?;
    let metrics_url = format!("http://{}/metrics", sample.api_addr());
    let http = reqwest::Client::builder().no_proxy().build()?;
    let poll = Poll {
        http,
        url: metrics_url,
        token: token.trim().to_owned(),
    };
    let mut measured = Vec::new();
    let result = until_interrupted(async {
        for _ in 0..aborts.max(1) {
            measured.push(one_abort(&sample.client, &poll, rt, addr, connections).await?);
        }
        anyhow::Ok(())
    })
    .await;
    sample.stop().await?;
    result?;

    let n = measured.len();
    let quantiles = |f: fn(&Abort) -> Duration| {
        let mut v: Vec<Duration> = measured.iter().map(f).collect();
        v.sort();
        let at = |q: f64| nearest_rank(v.len(), q).map_or(Duration::ZERO, |i| v[i]);
        (at(0.5), at(0.99), v.first().copied().unwrap_or_default())
    };
    let row = |what: &str, f: fn(&Abort) -> Duration, target: String| {
        let (median, p99, min) = quantiles(f);
        vec![what.to_owned(), ms(min), ms(median), ms(p99), target]
    };
    let (counter_median, _, _) = quantiles(|a| a.counter);
    println!(
        "2. Abort: production's canary at 50% (steps = [\"50%\"], step = \"1h\"), {} keep-alive connections sending GET /version back to back on production; {n} aborts, each of a new promotion of web@{CANARY} against web@{STABLE} (the sample app, data_plane = \"server\", one machine)",
        connections
    );
    let rows = vec![
        row(
            "POST /api/v1/canary/abort → the router's count of the canary's answers stops growing",
            |a| a.counter,
            format!(
                "< 10 ms  {}",
                verdict(counter_median < Duration::from_millis(10))
            ),
        ),
        row(
            "POST /api/v1/canary/abort → its answer (the promotion failed, the weight 0 before)",
            |a| a.api,
            String::new(),
        ),
        row(
            "POST /api/v1/canary/abort → the last request sent that the canary answered (client)",
            |a| a.client,
            String::new(),
        ),
    ];
    print!(
        "{}",
        table(&["figure", "min", "median", "p99", "target"], &rows)
    );
    let polls: usize = measured.iter().map(|a| a.polls).sum();
    let gap = measured.iter().map(|a| a.gap).max().unwrap_or_default();
    let after: u64 = measured.iter().map(|a| a.counted_after).sum();
    println!(
        "   the counter: /metrics polled back to back during each abort ({polls} polls in all, the longest gap {}), a stop time is the first poll that read the final value, so it is late by up to one gap; the canary answered {after} requests after the calls were made, {:.1} per abort",
        ms(gap),
        after as f64 / n.max(1) as f64
    );
    println!(
        "   (p99 is the nearest rank: of {n} values, the {}th smallest; three hosts in namespaces were not measured here)\n",
        nearest_rank(n, 0.99).map_or(0, |i| i + 1)
    );
    Ok(())
}

/// `GET /metrics` with the admin token.
struct Poll {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Poll {
    async fn canary_count(&self) -> anyhow::Result<Option<u64>> {
        let text = self
            .http
            .get(&self.url)
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(canary_count(&text))
    }
}

/// Promotes the canary into production, waits for its 50% step, puts load on production and
/// aborts it.
async fn one_abort(
    client: &Client,
    poll: &Poll,
    rt: &tokio::runtime::Handle,
    addr: SocketAddr,
    connections: usize,
) -> anyhow::Result<Abort> {
    let p = client
        .promote(&format!("{APP}@{CANARY}"), PRODUCTION)
        .await?;
    let query = [("app", APP.to_owned()), ("env", PRODUCTION.to_owned())];
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(view) = client.get::<CanaryView>("/canary", &query).await
            && view.promotion_id == p.id
            && view.weight == 50.0
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the canary of {APP}@{CANARY} did not reach 50% within {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let traffic = Traffic::start(rt, addr, &["/version"], connections, None);
    let started = traffic.started();
    tokio::time::sleep(BEFORE_ABORT).await;
    let before = poll.canary_count().await?.unwrap_or(0);
    let t0 = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let (done, http, url, token) = (
            Arc::clone(&done),
            poll.http.clone(),
            poll.url.clone(),
            poll.token.clone(),
        );
        tokio::spawn(async move {
            let poll = Poll { http, url, token };
            let mut samples = Vec::new();
            while !done.load(Ordering::Acquire) {
                let n = poll.canary_count().await?;
                samples.push((t0.elapsed(), n));
            }
            anyhow::Ok(samples)
        })
    };
    let body = AppEnv {
        app: APP.to_owned(),
        env: PRODUCTION.to_owned(),
    };
    let ended: anyhow::Result<Promotion> = client.post("/canary/abort", &body).await;
    let api = t0.elapsed();
    tokio::time::sleep(AFTER_ABORT).await;
    done.store(true, Ordering::Release);
    let samples = poller.await??;
    let answers = traffic.stop().await?;
    let ended = ended?;
    if ended.state != PromotionState::Failed {
        bail!(
            "the aborted promotion {} ended {}: {}",
            ended.id,
            ended.state,
            ended.reason.unwrap_or_default()
        );
    }
    let last = samples
        .last()
        .and_then(|s| s.1)
        .context("/metrics showed no count of the canary's answers")?;
    let counter = samples
        .iter()
        .find(|s| s.1 == Some(last))
        .map_or(Duration::ZERO, |s| s.0);
    let gap = samples
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .max()
        .unwrap_or_default();
    // The client's times are since the traffic started; the call's, since t0.
    let since = t0.duration_since(started);
    let client_side = answers
        .iter()
        .filter(|a| a.by == Answered::Canary && a.at >= since)
        .map(|a| a.at - since)
        .max()
        .unwrap_or_default();
    Ok(Abort {
        api,
        counter,
        counted_after: last.saturating_sub(before),
        client: client_side,
        polls: samples.len(),
        gap,
    })
}
