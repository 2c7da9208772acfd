//! The load of `shipgate-bench canary`'s parts 2 and 3: requests to an environment on
//! keep-alive connections, back to back or at a constant rate, each answer recorded with the
//! time it was sent and the release that gave it (told by its body), so that the client can say
//! when users stopped meeting a release.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::canary::{CANARY, STABLE};
use crate::load::Conn;

/// Which release answered a request of [`Traffic`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answered {
    Stable,
    /// The canary, or the buggy release (the only one whose `/` answers 500 in part 3).
    Canary,
    /// No answer (a connection error) or one that names neither.
    Neither,
}

/// One request of [`Traffic`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Answer {
    /// When it was sent, since the traffic started.
    pub(crate) at: Duration,
    pub(crate) by: Answered,
    /// A 5xx answer or none at all.
    pub(crate) failed: bool,
}

fn answered_by(body: &[u8]) -> Answered {
    let text = String::from_utf8_lossy(body);
    let names = |v: &str| text.trim() == v || text.contains(&format!(" {v} "));
    if text.contains("internal error") || names(CANARY) {
        Answered::Canary
    } else if names(STABLE) {
        Answered::Stable
    } else {
        Answered::Neither
    }
}

/// Requests to an environment on keep-alive connections, each answer recorded with its time
/// and the release that gave it: back to back, or at a constant rate.
pub(crate) struct Traffic {
    stop: Arc<AtomicBool>,
    started: Instant,
    workers: Vec<tokio::task::JoinHandle<Vec<Answer>>>,
}

impl Traffic {
    /// `connections` tasks on `rt`, each asking `paths` in turn; with a `rate` (requests per
    /// second, all connections together), each sends on its own beat, the beats spread evenly.
    pub(crate) fn start(
        rt: &tokio::runtime::Handle,
        addr: SocketAddr,
        paths: &'static [&'static str],
        connections: usize,
        rate: Option<f64>,
    ) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let connections = connections.max(1);
        let beat = rate.map(|r| Duration::from_secs_f64(connections as f64 / r.max(1e-3)));
        let workers = (0..connections)
            .map(|i| {
                let first = beat.map(|b| {
                    started
                        + b * u32::try_from(i).unwrap_or(0)
                            / u32::try_from(connections).unwrap_or(1)
                });
                rt.spawn(send(addr, paths, beat.zip(first), stop.clone(), started))
            })
            .collect();
        Traffic {
            stop,
            started,
            workers,
        }
    }

    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// Stops sending; every answer, by the time it was sent.
    pub(crate) async fn stop(self) -> anyhow::Result<Vec<Answer>> {
        self.stop.store(true, Ordering::Release);
        let mut all = Vec::new();
        for w in self.workers {
            all.extend(w.await.context("a load task panicked")?);
        }
        all.sort_by_key(|a| a.at);
        Ok(all)
    }
}

/// One connection's loop; `beat`: its period and its first time.
async fn send(
    addr: SocketAddr,
    paths: &'static [&'static str],
    beat: Option<(Duration, Instant)>,
    stop: Arc<AtomicBool>,
    started: Instant,
) -> Vec<Answer> {
    let mut ticks = beat.map(|(period, first)| {
        let mut t = tokio::time::interval_at(first.into(), period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    let mut answers = Vec::new();
    let mut conn: Option<Conn> = None;
    let mut n = 0usize;
    while !stop.load(Ordering::Acquire) {
        if let Some(t) = ticks.as_mut() {
            t.tick().await;
            if stop.load(Ordering::Acquire) {
                break;
            }
        }
        let mut c = match conn.take() {
            Some(c) => c,
            None => match Conn::open(addr).await {
                Ok(c) => c,
                Err(_) => {
                    let at = started.elapsed();
                    answers.push(Answer {
                        at,
                        by: Answered::Neither,
                        failed: true,
                    });
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            },
        };
        if !c.ready().await {
            // Closed cleanly between two requests: the same request on a new connection.
            match Conn::open(addr).await {
                Ok(fresh) => c = fresh,
                Err(_) => continue,
            }
        }
        let path = paths[n % paths.len()];
        n += 1;
        let at = started.elapsed();
        match c.get(path).await {
            Ok((status, body)) => {
                answers.push(Answer {
                    at,
                    by: answered_by(&body),
                    failed: status.is_server_error(),
                });
                conn = Some(c);
            }
            Err(_) => answers.push(Answer {
                at,
                by: Answered::Neither,
                failed: true,
            }),
        }
    }
    answers
}
