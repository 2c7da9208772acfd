//! The environment page's traffic chart: requests per second, share of 5xx and p99 latency over
//! the last hour, drawn on the server as SVG (no script, no library).

use std::fmt::Write;

use shipgate_engine::TrafficSample;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 90.0;
const LEFT: f64 = 88.0;

/// One panel: a series over the hour, its maximum labelled.
struct Series<'a> {
    title: &'a str,
    unit: &'a str,
    class: &'a str,
    points: Vec<(f64, Option<f64>)>,
}

/// Three panels, one above the other, sharing the time axis (the last hour, now at the right).
pub(crate) fn svg(samples: &[TrafficSample]) -> String {
    let Some(last) = samples.last() else {
        return "<p class=\"muted\">No traffic recorded in the last hour yet (a sample is taken every 10 seconds).</p>".to_owned();
    };
    // The last hour, or less while the server is younger than that (at least a minute).
    let first = samples.first().map_or(last.at, |s| s.at);
    let span = (last.at.duration_since(first).as_secs_f64() + last.seconds).clamp(60.0, 3600.0);
    let x = |s: &TrafficSample| {
        let age = last.at.duration_since(s.at).as_secs_f64();
        LEFT + (WIDTH - LEFT) * (1.0 - age / span).max(0.0)
    };
    let rate = |s: &TrafficSample| s.requests as f64 / s.seconds.max(1e-9);
    let series = [
        Series {
            title: "requests/s",
            unit: "",
            class: "s-rps",
            points: samples.iter().map(|s| (x(s), Some(rate(s)))).collect(),
        },
        Series {
            title: "5xx",
            unit: "%",
            class: "s-err",
            points: samples
                .iter()
                .map(|s| {
                    let share =
                        (s.requests > 0).then(|| 100.0 * s.errors as f64 / s.requests as f64);
                    (x(s), share)
                })
                .collect(),
        },
        Series {
            title: "p99",
            unit: "ms",
            class: "s-p99",
            points: samples.iter().map(|s| (x(s), s.p99_ms)).collect(),
        },
    ];
    let total = HEIGHT * series.len() as f64 + 24.0;
    let mut out = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {total}\" role=\"img\" aria-label=\"requests per second, share of 5xx and p99 latency over the last hour\">"
    );
    for (i, s) in series.iter().enumerate() {
        panel(&mut out, s, i as f64 * HEIGHT);
    }
    let _ = write!(
        out,
        "<text class=\"axis\" x=\"{LEFT}\" y=\"{}\">{} ago</text><text class=\"axis\" x=\"{}\" y=\"{}\" text-anchor=\"end\">now</text></svg>",
        total - 6.0,
        ago(span),
        WIDTH - 4.0,
        total - 6.0
    );
    out
}

fn panel(out: &mut String, s: &Series<'_>, top: f64) {
    let max = s
        .points
        .iter()
        .filter_map(|(_, v)| *v)
        .fold(0.0_f64, f64::max);
    let scale = if max > 0.0 { max } else { 1.0 };
    let (y0, y1) = (top + HEIGHT - 14.0, top + 8.0);
    let _ = write!(
        out,
        "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{y0}\" x2=\"{WIDTH}\" y2=\"{y0}\"/><text class=\"label\" x=\"8\" y=\"{}\">{}</text><text class=\"axis\" x=\"8\" y=\"{}\">max {}{}</text>",
        top + 22.0,
        s.title,
        top + 38.0,
        pretty(max),
        s.unit
    );
    // A gap in the data (no responses) breaks the line instead of drawing a false zero.
    let mut segment: Vec<String> = Vec::new();
    let flush = |segment: &mut Vec<String>, out: &mut String| {
        if !segment.is_empty() {
            let _ = write!(
                out,
                "<polyline class=\"{}\" points=\"{}\"/>",
                s.class,
                segment.join(" ")
            );
            segment.clear();
        }
    };
    for (x, v) in &s.points {
        match v {
            Some(v) => segment.push(format!("{x:.1},{:.1}", y0 - (y0 - y1) * v / scale)),
            None => flush(&mut segment, out),
        }
    }
    flush(&mut segment, out);
}

fn ago(seconds: f64) -> String {
    if seconds >= 3600.0 {
        "1 hour".to_owned()
    } else if seconds >= 120.0 {
        format!("{:.0} minutes", seconds / 60.0)
    } else {
        format!("{seconds:.0} seconds")
    }
}

pub(super) fn pretty(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: &str, requests: u64, errors: u64, p99: Option<f64>) -> TrafficSample {
        TrafficSample {
            at: at.parse().unwrap_or(jiff::Timestamp::UNIX_EPOCH),
            seconds: 10.0,
            requests,
            errors,
            p99_ms: p99,
        }
    }

    #[test]
    fn draws_three_series_and_breaks_lines_where_there_was_no_traffic() {
        let samples = [
            sample("2026-12-01T10:00:00Z", 100, 0, Some(12.0)),
            sample("2026-12-01T10:00:10Z", 0, 0, None),
            sample("2026-12-01T10:00:20Z", 200, 20, Some(40.0)),
        ];
        let svg = svg(&samples);
        assert!(svg.starts_with("<svg class=\"chart\""), "{svg}");
        // requests/s is one line (0 is a value); 5xx and p99 break at the quiet sample.
        assert_eq!(svg.matches("class=\"s-rps\"").count(), 1);
        assert_eq!(svg.matches("class=\"s-err\"").count(), 2);
        assert_eq!(svg.matches("class=\"s-p99\"").count(), 2);
        assert!(
            svg.contains(">max 20.0<"),
            "the rps maximum is labelled: {svg}"
        );
        assert!(
            svg.contains(">max 10.0%<"),
            "the 5xx maximum is labelled: {svg}"
        );
        assert!(svg.contains(">max 40.0ms<"));
        assert!(
            svg.contains(">60 seconds ago<"),
            "a young history spans what it has: {svg}"
        );
        assert!(super::svg(&[]).contains("No traffic recorded"));
    }
}
