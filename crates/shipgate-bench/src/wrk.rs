//! Debian's `wrk` as a second, independent load client for `shipgate-bench router`: its own
//! process, its own HTTP/1.1 parser and its own latency histogram, so that a figure of the
//! built-in client cannot be an artefact of that client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::load::Report;

/// What one load run measured, from either client.
#[derive(Debug, Default)]
pub struct Figures {
    /// Requests completed.
    pub requests: u64,
    /// Failed: connection errors, timeouts and non-2xx/3xx answers.
    pub failed: u64,
    /// Connections reopened after a clean close (built-in client only; wrk does not say).
    pub reconnects: Option<u64>,
    /// Length of the measured run.
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
    /// The built-in client's whole report, whose latencies two runs pool.
    report: Option<Report>,
}

impl Figures {
    pub fn per_second(&self) -> f64 {
        (self.requests - self.failed.min(self.requests)) as f64
            / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// Two runs against one target as one: counts and times added, and the latencies pooled; for
    /// wrk, which gives percentiles and not the latencies behind them, the percentiles are the
    /// mean of the two runs'.
    pub fn merge(self, other: Figures) -> Figures {
        if let (Some(a), Some(b)) = (self.report, other.report) {
            return Figures::from(a.merge(b));
        }
        Figures {
            requests: self.requests + other.requests,
            failed: self.failed + other.failed,
            reconnects: self.reconnects.zip(other.reconnects).map(|(a, b)| a + b),
            elapsed: self.elapsed + other.elapsed,
            p50: (self.p50 + other.p50) / 2,
            p99: (self.p99 + other.p99) / 2,
            report: None,
        }
    }
}

impl From<Report> for Figures {
    fn from(r: Report) -> Self {
        Figures {
            requests: r.ok + r.failed,
            failed: r.failed,
            reconnects: Some(r.reconnects),
            elapsed: r.elapsed,
            p50: r.latency(0.5),
            p99: r.latency(0.99),
            report: Some(r),
        }
    }
}

/// `wrk` on `PATH`, or where Debian puts it.
pub fn find() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("wrk"))
        .find(|p| p.is_file())
}

/// The first line of `wrk -v` (`wrk 4.1.0 [epoll] …`).
pub fn version(exe: &Path) -> String {
    std::process::Command::new(exe)
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| {
            let text = [o.stdout, o.stderr].concat();
            let text = String::from_utf8_lossy(&text);
            text.lines()
                .next()
                .map(|l| l.split(" Copyright").next().unwrap_or(l).trim().to_owned())
        })
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "wrk".into())
}

/// Runs `wrk --latency` with `threads` threads and `connections` keep-alive connections on
/// `GET /` of `addr` for `duration` (whole seconds, at least 1).
pub async fn run(
    exe: &Path,
    addr: SocketAddr,
    threads: usize,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    run_on(
        exe,
        &format!("http://{addr}/"),
        None,
        threads,
        connections,
        duration,
    )
    .await
}

/// [`run`] on any URL, with a Lua `script` (`-s`) that sets the method, headers and body.
pub async fn run_on(
    exe: &Path,
    url: &str,
    script: Option<&Path>,
    threads: usize,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    let secs = duration.as_secs().max(1);
    let threads = threads.clamp(1, connections.max(1));
    let mut command = tokio::process::Command::new(exe);
    command
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{secs}s"))
        .arg("--latency");
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let out = command
        .arg(url)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", exe.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} exited with {}: {}{}",
            exe.display(),
            out.status,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse(&text).with_context(|| format!("reading wrk's output:\n{text}"))
}

/// Reads the figures out of wrk's report.
fn parse(text: &str) -> anyhow::Result<Figures> {
    let mut f = Figures::default();
    let (mut p50, mut p99, mut total) = (None, None, None);
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", value] => p50 = Some(latency(value)?),
            ["99%", value] => p99 = Some(latency(value)?),
            // `397842 requests in 10.00s, 57.23MB read`
            [n, "requests", "in", secs, ..] => {
                f.requests = n.parse().context("the request count")?;
                let secs = secs.trim_end_matches(',');
                total = Some(latency(secs).context("the run's length")?);
            }
            // `Socket errors: connect 0, read 0, write 0, timeout 0`
            ["Socket", "errors:", rest @ ..] => {
                for n in rest.iter().skip(1).step_by(2) {
                    f.failed += n.trim_end_matches(',').parse::<u64>().unwrap_or(0);
                }
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => f.failed += n.parse::<u64>()?,
            _ => {}
        }
    }
    f.p50 = p50.context("no 50% line")?;
    f.p99 = p99.context("no 99% line")?;
    f.elapsed = total.context("no `N requests in T` line")?;
    Ok(f)
}

/// A time as wrk prints it: `123.45us`, `1.20ms`, `2.00s`, `1.00m`.
fn latency(value: &str) -> anyhow::Result<Duration> {
    let split = value
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("`{value}` has no unit"))?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("`{value}` is not a time"))?;
    let scale = match unit {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => bail!("`{value}` has an unknown unit"),
    };
    Ok(Duration::from_secs_f64(number * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 2s test @ http://127.0.0.1:40575/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   412.31us  201.10us   9.88ms   91.02%
    Req/Sec    19.61k     1.02k   21.40k    70.00%
  Latency Distribution
     50%  380.00us
     75%  450.00us
     90%  560.00us
     99%    1.10ms
  78040 requests in 2.00s, 11.32MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  39019.84
Transfer/sec:      5.66MB
";

    #[test]
    fn wrk_report_is_read() {
        let f = parse(REPORT).unwrap();
        assert_eq!(f.requests, 78040);
        assert_eq!(f.failed, 7);
        assert_eq!(f.p50, Duration::from_micros(380));
        assert_eq!(f.p99, Duration::from_micros(1100));
        assert_eq!(f.elapsed, Duration::from_secs(2));
        assert!((f.per_second() - 39016.5).abs() < 0.01);
    }

    #[test]
    fn a_report_without_percentiles_is_refused() {
        let cut = REPORT.replace("     99%    1.10ms\n", "");
        assert!(parse(&cut).unwrap_err().to_string().contains("99%"));
        assert!(latency("12xs").is_err());
    }
}
