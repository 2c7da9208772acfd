//! The load gate's run as the release page shows it: the verdict in words, this release's
//! figures beside those of the run it was judged against, and both latency distributions drawn
//! over each other as SVG (no script).

use std::collections::HashMap;
use std::fmt::Write;

use shipgate_core::load::{LoadFigures, LoadVerdict};
use shipgate_core::{EnvName, PromotionId};
use shipgate_engine::HistoryEntry;
use shipgate_store::{LoadRun, Store, StoreError};

use super::pages::{Badge, short_time};

/// One row of the figures table: a figure, then its value in each run (this release first).
pub(crate) struct FigureRow {
    pub name: &'static str,
    pub values: Vec<String>,
}

/// The load panel of one promotion: its gate's run.
pub(crate) struct LoadPanel {
    pub env: String,
    pub run_id: i64,
    pub badge: Badge,
    /// The verdict in words: `failed: p99 15.2 ms is worse than …`.
    pub verdict: String,
    /// When the run ended and at what rate: `100 req/s asked, ended 12:04:05`.
    pub asked: String,
    /// The table's column heads after the figure's: this release, then the run compared with.
    pub columns: Vec<String>,
    pub rows: Vec<FigureRow>,
    /// Why nothing stands beside this release (empty when something does).
    pub alone: String,
    /// Both distributions as one SVG.
    pub chart: String,
}

/// The panels of `entries`' promotions whose gate ran a load test, by promotion.
pub(crate) async fn panels(
    store: &dyn Store,
    entries: &[HistoryEntry],
) -> Result<HashMap<PromotionId, LoadPanel>, StoreError> {
    let mut runs_by_env: Vec<(EnvName, Vec<LoadRun>)> = Vec::new();
    let mut panels = HashMap::new();
    for entry in entries {
        let p = &entry.promotion;
        if !runs_by_env.iter().any(|(env, _)| *env == p.env) {
            runs_by_env.push((p.env.clone(), store.load_runs(&p.app, &p.env).await?));
        }
        let runs = runs_by_env
            .iter()
            .find(|(env, _)| *env == p.env)
            .map_or(&[][..], |(_, runs)| runs.as_slice());
        // Newest first: a promotion's latest gate run is the one that decided.
        let Some(run) = runs
            .iter()
            .find(|r| r.kind == "gate" && r.promotion_id == Some(p.id.0))
        else {
            continue;
        };
        let compared = run
            .compared_with
            .map(|id| (id, runs.iter().find(|r| r.id == id)));
        panels.insert(p.id, panel(run, compared));
    }
    Ok(panels)
}

/// The panel of `run`, beside the run it was compared with (`None` inside when no longer kept).
fn panel(run: &LoadRun, compared: Option<(i64, Option<&LoadRun>)>) -> LoadPanel {
    let (badge, verdict) = match &run.verdict {
        LoadVerdict::Pass(why) => (Badge::new("ok", "●", "passed"), format!("passed: {why}")),
        LoadVerdict::Fail(why) => (Badge::new("bad", "▲", "failed"), format!("failed: {why}")),
        LoadVerdict::Inconclusive(why) => (
            Badge::new("wait", "◆", "inconclusive"),
            format!("inconclusive: {why}"),
        ),
    };
    let previous = compared.and_then(|(_, r)| r);
    let mut columns = vec![format!("{}@{} (this release)", run.app, run.version)];
    let mut curves = vec![Curve {
        name: format!("{}@{}", run.app, run.version),
        class: "s-now",
        points: &run.figures.distribution,
    }];
    if let Some(p) = previous {
        columns.push(format!("{}@{} (run #{})", p.app, p.version, p.id));
        curves.push(Curve {
            name: format!("{}@{}", p.app, p.version),
            class: "s-then",
            points: &p.figures.distribution,
        });
    }
    let alone = match compared {
        Some((_, Some(_))) => String::new(),
        Some((id, None)) => format!("compared with run #{id}, which is no longer kept"),
        None => "no earlier run with this config to compare with: judged on the ceilings only"
            .to_owned(),
    };
    let figures: Vec<&LoadFigures> = std::iter::once(&run.figures)
        .chain(previous.map(|p| &p.figures))
        .collect();
    let row = |name, value: fn(&LoadFigures) -> String| FigureRow {
        name,
        values: figures.iter().map(|f| value(f)).collect(),
    };
    LoadPanel {
        env: run.env.to_string(),
        run_id: run.id,
        badge,
        verdict,
        asked: format!(
            "{} req/s asked, ended {}",
            run.figures.rate,
            short_time(&run.at)
        ),
        columns,
        rows: vec![
            row("achieved rate", |f| format!("{:.1} req/s", f.achieved_rate)),
            row("p50", |f| ms(f.p50_ms)),
            row("p90", |f| ms(f.p90_ms)),
            row("p99", |f| ms(f.p99_ms)),
            row("max", |f| ms(f.max_ms)),
            row("errors", errors),
        ],
        alone,
        chart: svg(&curves),
    }
}

fn ms(v: f64) -> String {
    format!("{v:.1} ms")
}

/// `3 (0.150%): 2× 500, 1× timeout`.
fn errors(f: &LoadFigures) -> String {
    let n: u64 = f.errors.values().sum();
    let mut out = format!("{n} ({:.3}%)", f.error_rate() * 100.0);
    let kinds: Vec<String> = f.errors.iter().map(|(k, n)| format!("{n}× {k}")).collect();
    if !kinds.is_empty() {
        let _ = write!(out, ": {}", kinds.join(", "));
    }
    out
}

// ------------------------------------------------------------------------------------ chart --

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 34.0;

/// One release's latency distribution: (quantile, milliseconds).
struct Curve<'a> {
    name: String,
    class: &'static str,
    points: &'a [(f64, f64)],
}

/// How many nines a quantile has (0.99 → 2), so the tail gets as much room as the body.
/// Rounded so that 0.999's float error does not make it a fourth nine.
fn nines(q: f64) -> f64 {
    (-(1.0 - q).log10() * 1e6).round() / 1e6
}

/// `min`, `p50`, `p99.9`, `max`.
fn quantile_name(q: f64) -> String {
    if q <= 0.0 {
        "min".to_owned()
    } else if q >= 1.0 {
        "max".to_owned()
    } else {
        format!("p{}", (q * 100.0 * 1e4).round() / 1e4)
    }
}

/// `p90`, `p99`, `p99.9` for 1, 2, 3 nines.
fn nines_name(k: u32) -> String {
    match k {
        0 => "min".to_owned(),
        1 => "p90".to_owned(),
        _ => format!(
            "p99{}{}",
            if k > 2 { "." } else { "" },
            "9".repeat(k as usize - 2)
        ),
    }
}

/// The smallest of 1, 2 or 5 times a power of ten that is at least `v`.
fn nice(v: f64) -> f64 {
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= v * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The curves over each other: x the quantile on a scale of nines (min, p90, p99, p99.9 … max
/// at the right), y milliseconds from zero.
fn svg(curves: &[Curve<'_>]) -> String {
    let all = || curves.iter().flat_map(|c| c.points.iter());
    if all().next().is_none() {
        return "<p class=\"muted\">No latency distribution was recorded.</p>".to_owned();
    }
    // The max sits one step of nines past the finest quantile kept below it.
    let finest = all()
        .filter(|(q, _)| *q < 1.0)
        .map(|(q, _)| nines(*q))
        .fold(0.0_f64, f64::max);
    let end = finest.ceil() + 1.0;
    let slowest = all().map(|(_, ms)| *ms).fold(0.0_f64, f64::max);
    let step = nice(slowest.max(0.1) / 4.0);
    let top = step * (slowest / step).ceil().max(1.0);
    let (x0, x1) = (LEFT, WIDTH - RIGHT);
    let (y0, y1) = (HEIGHT - BOTTOM, TOP);
    let x = |q: f64| x0 + (x1 - x0) * if q >= 1.0 { 1.0 } else { nines(q) / end };
    let y = |ms: f64| y0 - (y0 - y1) * ms / top;

    let names: Vec<String> = curves.iter().map(|c| escape(&c.name)).collect();
    let mut out = format!(
        "<svg class=\"chart load-chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"latency distribution of {}, in milliseconds by percentile\">",
        names.join(" and ")
    );
    // Milliseconds up the left.
    let mut tick = 0.0;
    while tick <= top * (1.0 + 1e-9) {
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{x0}\" y1=\"{0:.1}\" x2=\"{x1}\" y2=\"{0:.1}\"/><text class=\"axis\" x=\"{1}\" y=\"{2:.1}\" text-anchor=\"end\">{3}</text>",
            y(tick),
            x0 - 6.0,
            y(tick) + 4.0,
            pretty(tick)
        );
        tick += step;
    }
    let _ = write!(
        out,
        "<text class=\"axis\" x=\"8\" y=\"{}\">ms</text>",
        TOP - 8.0
    );
    // Percentiles along the bottom: every nine, p50, and the max.
    let mut marks: Vec<(f64, String)> = (0..end as u32)
        .map(|k| (1.0 - 10f64.powi(-(k as i32)), nines_name(k)))
        .collect();
    marks.push((0.5, "p50".to_owned()));
    marks.push((1.0, "max".to_owned()));
    for (q, name) in marks {
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{0:.1}\" y1=\"{y1}\" x2=\"{0:.1}\" y2=\"{y0}\"/><text class=\"axis\" x=\"{0:.1}\" y=\"{1}\" text-anchor=\"middle\">{name}</text>",
            x(q),
            y0 + 16.0
        );
    }
    let _ = write!(
        out,
        "<text class=\"axis\" x=\"{x1}\" y=\"{}\" text-anchor=\"end\">percentile</text>",
        HEIGHT - 4.0
    );
    for (c, name) in curves.iter().zip(&names) {
        let points: Vec<String> = c
            .points
            .iter()
            .map(|(q, ms)| format!("{:.1},{:.1}", x(*q), y(*ms)))
            .collect();
        let _ = write!(
            out,
            "<g class=\"series\" data-release=\"{name}\"><polyline class=\"{}\" points=\"{}\"/>",
            c.class,
            points.join(" ")
        );
        for (q, ms) in c.points {
            let _ = write!(
                out,
                "<circle class=\"{}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\"><title>{name} {}: {ms:.1} ms</title></circle>",
                c.class,
                x(*q),
                y(*ms),
                quantile_name(*q)
            );
        }
        out.push_str("</g>");
    }
    // The legend, top left, names each release by its line.
    let mut at = x0;
    for (c, name) in curves.iter().zip(&names) {
        let _ = write!(
            out,
            "<g class=\"legend\"><line class=\"{}\" x1=\"{at}\" y1=\"14\" x2=\"{}\" y2=\"14\"/><text class=\"label\" x=\"{}\" y=\"18\">{name}</text></g>",
            c.class,
            at + 22.0,
            at + 28.0
        );
        at += 40.0 + 7.5 * name.chars().count() as f64;
    }
    out.push_str("</svg>");
    out
}

/// A tick's value: whole without decimals, else as the traffic chart writes numbers.
fn pretty(v: f64) -> String {
    if v == v.trunc() {
        format!("{v:.0}")
    } else {
        super::chart::pretty(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUANTILES: [f64; 6] = [0.0, 0.5, 0.9, 0.99, 0.999, 1.0];

    fn distribution(scale: f64) -> Vec<(f64, f64)> {
        QUANTILES
            .iter()
            .enumerate()
            .map(|(i, q)| (*q, scale * (1.0 + i as f64)))
            .collect()
    }

    #[test]
    fn draws_both_distributions_on_a_scale_of_nines_with_a_legend() {
        let (now, then) = (distribution(15.0), distribution(5.0));
        let svg = svg(&[
            Curve {
                name: "web@1.1.0".into(),
                class: "s-now",
                points: &now,
            },
            Curve {
                name: "web@1.0.0".into(),
                class: "s-then",
                points: &then,
            },
        ]);
        assert!(svg.starts_with("<svg class=\"chart load-chart\""), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        assert_eq!(svg.matches("<circle").count(), 12, "{svg}");
        for label in [
            ">web@1.1.0<",
            ">web@1.0.0<",
            ">p99<",
            ">p99.9<",
            ">max<",
            ">min<",
        ] {
            assert!(svg.contains(label), "{label} in {svg}");
        }
        // 0.999 is three nines, not four: the max sits at the fourth step, the right edge.
        assert!(!svg.contains(">p99.99<"), "{svg}");
        assert!(
            svg.contains("<title>web@1.1.0 p99: 60.0 ms</title>"),
            "{svg}"
        );
        // The slowest point (90 ms) is under the top tick (100 ms).
        assert!(svg.contains(">100<"), "{svg}");
    }

    #[test]
    fn nines_and_names() {
        assert_eq!(nines(0.999), 3.0);
        assert_eq!(nines(0.9999), 4.0);
        assert_eq!(nines_name(3), "p99.9");
        assert_eq!(nines_name(2), "p99");
        assert_eq!(quantile_name(0.995), "p99.5");
        assert_eq!(nice(7.0), 10.0);
        assert_eq!(nice(2.5), 5.0);
        assert_eq!(nice(0.2), 0.2);
    }

    #[test]
    fn without_figures_it_says_so() {
        assert!(svg(&[]).contains("No latency distribution"));
    }
}
