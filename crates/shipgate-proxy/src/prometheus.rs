use std::fmt::Write;

use crate::metrics::UpstreamMetrics;

/// Renders the request metrics of every environment in the Prometheus text format 0.0.4, each
/// family introduced once by its `# HELP` and `# TYPE` lines. `all` pairs an environment's name
/// with its router's [`crate::Router::metrics`]. The `release` label is the upstream's label
/// verbatim (`web@1.4.2`, or `none`).
pub fn render_prometheus(all: &[(String, Vec<UpstreamMetrics>)]) -> String {
    let mut out = String::new();
    let series = || {
        all.iter().flat_map(|(env, metrics)| {
            metrics.iter().map(move |release| {
                let labels = format!(
                    "app=\"{}\",env=\"{}\",release=\"{}\"",
                    escape(&release.app),
                    escape(env),
                    escape(&release.label)
                );
                (labels, release)
            })
        })
    };

    family(
        &mut out,
        "shipgate_requests_total",
        "counter",
        "Responses sent through the router by status class, including the 502/503/504 it answers itself.",
    );
    for (labels, release) in series() {
        for (class, count) in release.requests.by_name() {
            line(
                &mut out,
                "shipgate_requests_total",
                &labels,
                &format!(",class=\"{class}\""),
                count,
            );
        }
    }

    family(
        &mut out,
        "shipgate_request_duration_seconds",
        "histogram",
        "Time from the router receiving a request to the response head.",
    );
    for (labels, release) in series() {
        let histogram = &release.latency;
        for bucket in &histogram.buckets {
            let le = format!(",le=\"{}\"", bucket.le_ms / 1000.0);
            line(
                &mut out,
                "shipgate_request_duration_seconds_bucket",
                &labels,
                &le,
                bucket.count,
            );
        }
        let inf = ",le=\"+Inf\"";
        line(
            &mut out,
            "shipgate_request_duration_seconds_bucket",
            &labels,
            inf,
            histogram.count,
        );
        let sum = histogram.sum_ms / 1000.0;
        line(
            &mut out,
            "shipgate_request_duration_seconds_sum",
            &labels,
            "",
            sum,
        );
        line(
            &mut out,
            "shipgate_request_duration_seconds_count",
            &labels,
            "",
            histogram.count,
        );
    }

    family(
        &mut out,
        "shipgate_request_bytes_total",
        "counter",
        "Request body bytes forwarded to upstreams, and client-to-upstream bytes of closed upgraded connections.",
    );
    for (labels, release) in series() {
        line(
            &mut out,
            "shipgate_request_bytes_total",
            &labels,
            "",
            release.request_bytes,
        );
    }

    family(
        &mut out,
        "shipgate_response_bytes_total",
        "counter",
        "Response body bytes sent to clients, and upstream-to-client bytes of closed upgraded connections.",
    );
    for (labels, release) in series() {
        line(
            &mut out,
            "shipgate_response_bytes_total",
            &labels,
            "",
            release.response_bytes,
        );
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn line(out: &mut String, name: &str, labels: &str, extra: &str, value: impl std::fmt::Display) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "{name}{{{labels}{extra}}} {value}");
}

/// A label value as the text format wants it: backslash, double quote and line feed escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{LATENCY_BUCKETS_MS, LatencyBucket, LatencyHistogram, StatusClasses};
    use crate::metrics::{UpstreamMetrics, WindowSummary};

    fn release(app: &str, label: &str) -> UpstreamMetrics {
        UpstreamMetrics {
            app: app.into(),
            label: label.into(),
            live: true,
            requests: StatusClasses {
                success: 3,
                ..StatusClasses::default()
            },
            latency: LatencyHistogram {
                buckets: LATENCY_BUCKETS_MS
                    .iter()
                    .map(|&le_ms| LatencyBucket { le_ms, count: 3 })
                    .collect(),
                sum_ms: 1.5,
                count: 3,
            },
            request_bytes: 10,
            response_bytes: 20,
            last_minute: WindowSummary {
                requests_per_second: 0.0,
                error_rate: 0.0,
                p50_ms: None,
                p99_ms: None,
                requests: 0,
            },
        }
    }

    #[test]
    fn each_family_is_introduced_once_across_environments() {
        let text = render_prometheus(&[
            ("staging".into(), vec![release("web", "web@2")]),
            ("production".into(), vec![release("web", "web@1")]),
        ]);
        assert_eq!(
            text.matches("# TYPE shipgate_requests_total counter\n")
                .count(),
            1
        );
        assert_eq!(text.matches("# HELP ").count(), 4);
        assert_eq!(text.matches("# TYPE ").count(), 4);
        for line in [
            "shipgate_requests_total{app=\"web\",env=\"staging\",release=\"web@2\",class=\"2xx\"} 3",
            "shipgate_requests_total{app=\"web\",env=\"production\",release=\"web@1\",class=\"5xx\"} 0",
            "shipgate_request_duration_seconds_bucket{app=\"web\",env=\"staging\",release=\"web@2\",le=\"0.001\"} 3",
            "shipgate_request_duration_seconds_bucket{app=\"web\",env=\"staging\",release=\"web@2\",le=\"0.0025\"} 3",
            "shipgate_request_duration_seconds_bucket{app=\"web\",env=\"staging\",release=\"web@2\",le=\"10\"} 3",
            "shipgate_request_duration_seconds_bucket{app=\"web\",env=\"staging\",release=\"web@2\",le=\"+Inf\"} 3",
            "shipgate_request_duration_seconds_sum{app=\"web\",env=\"staging\",release=\"web@2\"} 0.0015",
            "shipgate_request_duration_seconds_count{app=\"web\",env=\"staging\",release=\"web@2\"} 3",
            "shipgate_request_bytes_total{app=\"web\",env=\"production\",release=\"web@1\"} 10",
            "shipgate_response_bytes_total{app=\"web\",env=\"production\",release=\"web@1\"} 20",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        let les: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("env=\"staging\"") && l.contains("_bucket"))
            .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(
            les,
            [
                "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
                "2.5", "5", "10", "+Inf"
            ]
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
