//! A canary on an environment placed on several hosts: every host applies the same split (on
//! its own address of the canary's instance) or none does, and the figures of the window are
//! the hosts' figures summed.

use std::collections::BTreeMap;

use shipgate_deploy::{CANARY_SAMPLE, CanaryFigures, CanaryRoute, Driver, DriverError};

use super::{EnvPlacement, Placement, lock, on_host};

impl Placement {
    /// Applies `canary` on every connected host of `env` at once, or on none: a host that does
    /// not run the canary's instance healthy refuses it before any host takes it, and if one
    /// fails to take it, the hosts that did get the canary they had back (the router takes up
    /// the figures of that window again). The error names the host. Ending a canary (`None`)
    /// needs no number of hosts: the hosts away end it when they connect again.
    pub(super) async fn set_canary_on_hosts(
        &self,
        p: &EnvPlacement,
        env: &str,
        app: &str,
        canary: Option<CanaryRoute>,
    ) -> Result<(), DriverError> {
        let key = (env.to_owned(), app.to_owned());
        let up = match &canary {
            // Ending a canary is never refused for want of hosts: those that answer end it
            // now, the others when they connect again (`reconcile_host`).
            None => {
                let (up, away) = self.reachable(p);
                let mut ended_away = lock(&self.ended_away);
                for h in away {
                    ended_away.entry(h).or_default().insert(key.clone());
                }
                up
            }
            Some(_) => self.enough(env, p)?,
        };
        let before = lock(&self.canaries).get(&key).cloned().unwrap_or_default();
        // First each host's own address of the canary's instance (none to ask for when it
        // applies that instance already, as an abort does): a host that does not run it
        // healthy refuses the step before any host has taken it.
        let resolving = up.iter().map(|h| {
            let (canary, before) = (canary.as_ref(), before.get(h));
            async move {
                match canary {
                    Some(c) => self.canary_on(h, c, before).await.map(Some),
                    None => Ok(None),
                }
            }
        });
        let mut there = Vec::new();
        for result in futures_util::future::join_all(resolving).await {
            match result {
                Ok(canary) => there.push(canary),
                Err(e) => {
                    return Err(DriverError::Agent(format!(
                        "the canary of {app} in {env} was not changed: {e}"
                    )));
                }
            }
        }
        // Then every host at once, so a step (or an abort) reaches them all within one round
        // trip.
        let applying = up.iter().zip(&there).map(|(h, canary)| async move {
            self.clients[h]
                .set_canary(env, app, canary.clone())
                .await
                .map_err(|e| on_host(h, e))
        });
        let results = futures_util::future::join_all(applying).await;
        let mut applied = BTreeMap::new();
        let mut failed = Vec::new();
        let mut took = Vec::new();
        for ((h, canary), result) in up.iter().zip(there).zip(results) {
            match result {
                Ok(()) => {
                    took.push(h.clone());
                    if let Some(canary) = canary {
                        applied.insert(h.clone(), canary);
                    }
                }
                Err(e) => failed.push(e.to_string()),
            }
        }
        if !failed.is_empty() {
            // All or none: the hosts that took the new setting get the one they had back.
            let back = took.iter().map(|h| {
                let had = before.get(h).cloned();
                async move {
                    if let Err(e) = self.clients[h].set_canary(env, app, had).await {
                        tracing::warn!(
                            "host {h}: could not put the canary of {app} in {env} back: {e}"
                        );
                    }
                }
            });
            futures_util::future::join_all(back).await;
            let put_back = if took.is_empty() {
                String::new()
            } else {
                format!(
                    "; the hosts that had applied it were put back ({})",
                    took.join(", ")
                )
            };
            return Err(DriverError::Agent(format!(
                "the canary of {app} in {env} was not changed: {}{put_back}",
                failed.join("; ")
            )));
        }
        let mut canaries = lock(&self.canaries);
        if applied.is_empty() {
            canaries.remove(&key);
        } else {
            canaries.insert(key, applied);
        }
        Ok(())
    }

    /// Both sides' figures of the canary's window, summed over the connected hosts of `env`.
    pub(super) async fn canary_figures_of_hosts(
        &self,
        p: &EnvPlacement,
        env: &str,
        app: &str,
    ) -> Option<CanaryFigures> {
        let asking = self
            .reachable(p)
            .0
            .into_iter()
            .map(|h| async move { self.clients[&h].canary_figures(env, app).await });
        let each: Vec<CanaryFigures> = futures_util::future::join_all(asking)
            .await
            .into_iter()
            .flatten()
            .collect();
        // The window set last here; else (a server restarted since) the newest a host counts.
        let set = lock(&self.canaries)
            .get(&(env.to_owned(), app.to_owned()))
            .and_then(|hosts| hosts.values().next().map(|c| c.window));
        let window = set.or_else(|| each.iter().map(|f| f.window).max())?;
        Some(sum_figures(window, each))
    }

    /// The canary of `canary` as host `h` applies it: on the host's own address of the canary's
    /// instance (the one it applies already, when it is the same instance).
    async fn canary_on(
        &self,
        h: &str,
        canary: &CanaryRoute,
        applied: Option<&CanaryRoute>,
    ) -> Result<CanaryRoute, DriverError> {
        let target = match applied {
            Some(a) if a.target.instance_id == canary.target.instance_id => a.target.clone(),
            _ => self.target_on(h, &canary.target).await?,
        };
        Ok(CanaryRoute {
            target,
            ..canary.clone()
        })
    }
}

/// The figures of the hosts that count `window`, summed; the latencies of both sides a uniform
/// sample of at most [`CANARY_SAMPLE`] of the hosts' samples together.
fn sum_figures(window: u64, each: Vec<CanaryFigures>) -> CanaryFigures {
    let mut sum = CanaryFigures {
        window,
        ..CanaryFigures::default()
    };
    for f in each.into_iter().filter(|f| f.window == window) {
        for (into, from) in [(&mut sum.canary, f.canary), (&mut sum.stable, f.stable)] {
            into.requests += from.requests;
            into.errors += from.errors;
            into.latencies_ms.extend(from.latencies_ms);
        }
    }
    subsample(&mut sum.canary.latencies_ms);
    subsample(&mut sum.stable.latencies_ms);
    sum
}

/// Keeps a uniform random sample of at most [`CANARY_SAMPLE`] of `values` (a partial
/// Fisher-Yates shuffle).
fn subsample(values: &mut Vec<f64>) {
    if values.len() <= CANARY_SAMPLE {
        return;
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // xorshift64*: dice for a sample, not for secrets.
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for i in 0..CANARY_SAMPLE {
        let left = (values.len() - i) as u64;
        let j = i + (next() % left) as usize;
        values.swap(i, j);
    }
    values.truncate(CANARY_SAMPLE);
}

#[cfg(test)]
mod tests {
    use shipgate_core::canary::Side;

    use super::*;

    fn side(requests: u64, errors: u64, latency: f64, kept: usize) -> Side {
        Side {
            requests,
            errors,
            latencies_ms: vec![latency; kept],
        }
    }

    #[test]
    fn the_hosts_of_one_window_are_summed_with_a_bounded_uniform_sample() {
        let host = |window, latency| CanaryFigures {
            window,
            canary: side(10_000, 7, latency, CANARY_SAMPLE),
            stable: side(90_000, 2, latency, CANARY_SAMPLE),
        };
        let hosts = vec![host(3, 1.0), other_window(2), host(3, 2.0), host(3, 3.0)];
        let sum = sum_figures(3, hosts);
        assert_eq!(sum.window, 3);
        assert_eq!((sum.canary.requests, sum.canary.errors), (30_000, 21));
        assert_eq!((sum.stable.requests, sum.stable.errors), (270_000, 6));
        for kept in [&sum.canary.latencies_ms, &sum.stable.latencies_ms] {
            assert_eq!(kept.len(), CANARY_SAMPLE);
            // A uniform sample of three equal shares: each about a third (1,365, sd 25).
            for latency in [1.0, 2.0, 3.0] {
                let n = kept.iter().filter(|l| **l == latency).count();
                assert!((1_150..=1_580).contains(&n), "{n} of {latency} ms");
            }
        }
        let small = sum_figures(2, vec![other_window(2)]);
        assert_eq!(small.canary.latencies_ms, vec![99.0; 5]);
    }

    fn other_window(window: u64) -> CanaryFigures {
        CanaryFigures {
            window,
            canary: side(5, 5, 99.0, 5),
            ..CanaryFigures::default()
        }
    }
}
