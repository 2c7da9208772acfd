//! Part 3 of `shipgate-bench canary`: how many requests a broken release fails before shipgate
//! takes it away, and how long that takes. The release (web@1.1.0 with the sample app's `BUG`:
//! its `/` answers 500, its `/version` 200) meets a constant load that asks `/` and `/version`
//! in turn, so it fails half of the requests it gets. It enters production once switched all at
//! once and watched (`verify.watch`), and once as a canary, each on a server of its own.

use std::time::Duration;

use anyhow::Context;
use shipgate_api::status::HistoryEntry;

use crate::canary::{APP, CANARY, PRODUCTION, STABLE, ms, until_interrupted};
use crate::traffic::{Answer, Answered, Traffic};
use shipgate::output::table;

/// Load before the promotion, and after it ended.
const QUIET: Duration = Duration::from_secs(1);
/// Keep-alive connections the constant rate is spread over.
const CONNECTIONS: usize = 4;

/// One way of bringing the broken release in.
struct Way {
    name: &'static str,
    /// What the config says, in one line.
    settings: &'static str,
    /// Appended to the sample config.
    extra: &'static str,
}

const WAYS: [Way; 3] = [
    Way {
        name: "all at once, then verify.watch",
        settings: "watch = \"10s\", max_error_rate = 0.01, min_requests = 20, inconclusive = \"pass\"",
        extra: "\n[environments.production.verify]\nwatch = \"10s\"\nmax_error_rate = 0.01\nmin_requests = 20\ninconclusive = \"pass\"\n",
    },
    Way {
        name: "canary, 10 s steps",
        settings: "steps = [\"5%\", \"25%\", \"50%\"], step = \"10s\", min_requests = 50",
        extra: "\n[environments.production.canary]\nsteps = [\"5%\", \"25%\", \"50%\"]\nstep = \"10s\"\nmin_requests = 50\n",
    },
    Way {
        name: "canary, 30 s steps",
        settings: "steps = [\"5%\", \"25%\", \"50%\"], step = \"30s\", min_requests = 100",
        extra: "\n[environments.production.canary]\nsteps = [\"5%\", \"25%\", \"50%\"]\nstep = \"30s\"\nmin_requests = 100\n",
    },
];

/// What one way measured.
struct Exposure {
    way: &'static Way,
    answers: Vec<Answer>,
    /// When the promotion was asked for, since the load started.
    promoted_at: Duration,
    entry: HistoryEntry,
}

impl Exposure {
    fn count(&self, f: impl Fn(&Answer) -> bool) -> usize {
        self.answers.iter().filter(|a| f(a)).count()
    }

    /// The first and the last request the broken release answered, by the time it was sent.
    fn met(&self) -> Option<(Duration, Duration)> {
        let mut bad = self.answers.iter().filter(|a| a.by == Answered::Canary);
        let first = bad.next()?.at;
        Some((first, bad.next_back().map_or(first, |a| a.at)))
    }

    /// By the engine's own gates: from the switch (the watch's start) or the canary's first
    /// step to the gate that failed.
    fn decision(&self) -> Option<Duration> {
        let gates = &self.entry.gates;
        let start = gates
            .iter()
            .find(|g| g.name == "watch" || g.name.starts_with("canary step 1 "))?;
        let failed = gates.iter().find(|g| !g.passed)?;
        let took = failed.finished_at.duration_since(start.started_at);
        Duration::try_from(took).ok()
    }
}

pub async fn run(rate: f64, rt: &tokio::runtime::Handle) -> anyhow::Result<()> {
    let mut measured = Vec::new();
    for way in &WAYS {
        eprintln!("  running part 3 ({})…", way.name);
        measured.push(expose(way, rate, rt).await?);
    }
    println!(
        "3. Exposure: web@{CANARY}, whose `/` answers 500 (the sample app's BUG) and `/version` 200, enters production where web@{STABLE} is live, under {rate:.0} requests/s on {CONNECTIONS} keep-alive connections asking `/` and `/version` in turn, so it fails half of the requests it gets"
    );
    println!(
        "   no cookie is sent, so every request is drawn (a pinned user would meet the same side each time); nothing before production tests it, so it gets there; each way on a server of its own, data_plane = \"server\""
    );
    let mut rows = Vec::new();
    for m in &measured {
        let (first, last) = m.met().unwrap_or_default();
        let failed = m.count(|a| a.failed);
        let during = m.count(|a| a.at >= first && a.at <= last);
        rows.push(vec![
            m.way.name.to_owned(),
            m.count(|_| true).to_string(),
            format!(
                "{failed} ({:.1}% of the {during} sent while it was met)",
                100.0 * failed as f64 / during.max(1) as f64
            ),
            m.count(|a| a.by == Answered::Canary).to_string(),
            m.decision().map_or("-".into(), ms),
            ms(last.saturating_sub(first)),
            m.entry.promotion.state.to_string(),
        ]);
    }
    let head = [
        "way",
        "requests",
        "failed, seen by users",
        "answered by the broken release",
        "switch or first step → decision (gates)",
        "first → last request it answered (client)",
        "promotion",
    ];
    print!("{}", table(&head, &rows));
    for m in &measured {
        println!("   {}: {}", m.way.name, m.way.settings);
        let reason = m.entry.promotion.reason.as_deref().unwrap_or("-");
        let reason: String = reason.chars().take(400).collect();
        println!("     why it ended: {reason}");
        println!(
            "     promoted {:.3} s into the load; {} requests failed before the promotion or after the decision",
            m.promoted_at.as_secs_f64(),
            outside(m)
        );
    }
    println!();
    Ok(())
}

/// Failed requests the broken release cannot account for (before it was met, or after).
fn outside(m: &Exposure) -> usize {
    let Some((first, last)) = m.met() else {
        return m.count(|a| a.failed);
    };
    m.count(|a| a.failed && (a.at < first || a.at > last))
}

async fn expose(
    way: &'static Way,
    rate: f64,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<Exposure> {
    let (sample, addr) =
        crate::canary::production_server("shipgate-bench-exposure-", way.extra, true).await?;
    let measured = until_interrupted(async {
        let traffic = Traffic::start(rt, addr, &["/", "/version"], CONNECTIONS, Some(rate));
        tokio::time::sleep(QUIET).await;
        let promoted_at = traffic.started().elapsed();
        let p = sample
            .client
            .promote(&format!("{APP}@{CANARY}"), PRODUCTION)
            .await?;
        let entry = sample.client.wait_promotion(p.id, |_| {}).await;
        tokio::time::sleep(QUIET).await;
        let answers = traffic.stop().await?;
        let entry = entry.context("waiting for the promotion of the broken release")?;
        anyhow::Ok(Exposure {
            way,
            answers,
            promoted_at,
            entry,
        })
    })
    .await;
    sample.stop().await?;
    measured
}
