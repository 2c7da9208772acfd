//! `shipgate-bench`: the benchmarks of docs/BENCHMARKS.md, each measured side by side with its
//! anchor in the same run (nginx, a plain COPY, pganonymize, the app's own start). Not part of
//! the shipped binary; it starts the sample app through the `shipgate` binary beside it.
#![forbid(unsafe_code)]

mod abort;
mod agent_kill;
mod backup;
mod canary;
mod chaos;
mod dashboard;
mod dora;
mod exposure;
mod fence;
mod flags;
mod hosts;
mod image;
mod image_create;
mod image_fixture;
mod load;
mod load_gate;
mod mask;
/// The test hosts of the integration tests (network namespaces on a bridge of their own), shared.
#[path = "../../shipgate/tests/it/netns.rs"]
#[allow(dead_code)]
mod netns;
mod on_demand;
mod promote;
mod router;
mod sandbox;
mod schema;
mod traffic;
mod wrk;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Measurements (see docs/BENCHMARKS.md).
#[derive(Debug, Parser)]
#[command(name = "shipgate-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Requests lost when the local agent is killed under load (its replacement takes over the
    /// sockets and adopts the instance), against nginx losing a worker.
    AgentKill {
        /// Kills of each.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Keep-alive connections of the load client.
        #[arg(long, default_value_t = 8)]
        connections: usize,
    },
    /// Canary rollouts: the router's throughput and p99 with a 5% split against none, the time
    /// from `canary abort` until no request reaches the canary, and the requests a broken
    /// release fails as a canary against all at once with a watch.
    Canary {
        /// The parts to run, in order.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "split,abort,exposure"
        )]
        part: Vec<canary::Part>,
        /// Part 1: rounds of the router's configurations taking turns (medians are compared).
        #[arg(long, default_value_t = 9)]
        rounds: usize,
        /// Part 1: length of each wrk run, after 1 s of warm-up.
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        load_duration: std::time::Duration,
        /// Part 1: wrk's keep-alive connections.
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Part 2: aborts timed.
        #[arg(long, default_value_t = 20)]
        aborts: usize,
        /// Part 2: keep-alive connections of the load on production.
        #[arg(long, default_value_t = 2)]
        abort_connections: usize,
        /// Part 3: requests per second on production.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
    },
    /// OFREP evaluation, single and bulk, with 350 flags, against Unleash Edge (offline).
    Flags,
    /// DORA metrics over 1,000,000 promotions against a plain count of the same rows.
    Dora,
    /// What chaos costs with nothing injected: the TCP fault proxy against a direct connection
    /// and socat, and the router with a 0% fault rule against none.
    Chaos,
    /// The load gate's generator (issue 34): the highest constant rate it holds against wrk's
    /// closed-loop throughput on the same nginx, and its p99 at a modest rate against one
    /// request at a time.
    Load {
        /// Connections of wrk and of the generator.
        #[arg(long, default_value_t = 64)]
        connections: u32,
        /// Worker threads of the generator's tokio runtime (wrk runs with one thread).
        #[arg(long, default_value_t = 1)]
        client_threads: usize,
        /// Part 2: the constant rate, requests per second.
        #[arg(long, default_value_t = 5_000)]
        rate: u32,
        /// Part 2: the measured window, after 1 s of warmup.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: std::time::Duration,
    },
    /// A masked PostgreSQL refresh against a plain COPY and pganonymize 0.13.
    Mask {
        /// Rows of the users table.
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
    },
    /// A backup and its restore drill of 1,000,000 rows against plain `pg_dump -Fd` (same jobs)
    /// and `pg_restore` into a fresh database plus the same counts.
    Backup {
        /// Rows of the users table.
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Alternated rounds (the medians are printed).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Parallel jobs of pg_dump and pg_restore, on both sides.
        #[arg(long, default_value_t = 2)]
        jobs: u32,
    },
    /// Schema parity of two PostgreSQL databases of 200 tables (one column differs), against
    /// `pg_dump --schema-only` of both.
    Schema {
        /// Diffs timed (the median is printed).
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// The dashboard at scale: 1,000 apps × 4 environments and 100,000 promotions.
    Dashboard {
        /// Requests timed per page (the median is printed).
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// An instance's start in the sandbox (with and without limits) against a bare process's.
    Sandbox {
        /// Starts measured of each kind.
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// Router -> instance throughput and p99 with the network fence against none, in a network
    /// namespace of its own (as root, with wrk).
    Fence {
        /// Measured rounds of each (one more warms up).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Length of each wrk run, in seconds.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Already in the namespace of its own (how the command runs itself again).
        #[arg(long, hide = true)]
        inner: bool,
    },
    /// A promotion into an environment on 3 hosts (network namespaces, as root) against the
    /// same promotion on the server's own machine.
    Hosts {
        /// Promotions measured into each.
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// Image releases (issue 31): spawn → first 2xx of the same image under shipgate (runc)
    /// and `podman run` (runc), and as a directory release; `release create` of a 100 MiB
    /// image against `skopeo copy`; the disk of ten releases sharing a 90 MiB base layer
    /// against ten copies. As root, with runc, podman, skopeo and busybox-static.
    Image {
        /// The parts to run, in order.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "start,create,disk"
        )]
        part: Vec<image::Part>,
        /// Part 1: starts measured of each kind (one more warms up).
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Part 2: rounds of `release create` and `skopeo copy` in turns (one more warms up).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Part 3: releases sharing the base layer.
        #[arg(long, default_value_t = 10)]
        releases: usize,
    },
    /// On-demand environments: env create → first 2xx and → ready (tests apart), against the
    /// app's own start; and how many idle previews fit in 1 GiB.
    OnDemand {
        /// Environments made and timed, one after another.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Idle previews made at once for the memory figure.
        #[arg(long, default_value_t = 20)]
        idle: usize,
    },
    /// shipgate's own overhead of a promotion, against the app's own time to become healthy.
    Promote {
        /// Promotions measured.
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// The router: zero drops under switches, rollback time, throughput and latency against nginx.
    Router {
        /// Length of the constant load during the promote/rollback cycles (issue 3 asks ≥ 30s).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        duration: std::time::Duration,
        /// Promote/rollback cycles spread over `--duration`.
        #[arg(long, default_value_t = 20)]
        cycles: usize,
        /// Rollbacks timed.
        #[arg(long, default_value_t = 50)]
        rollbacks: usize,
        /// Length of each throughput run (backend, router, nginx), after 1s of warm-up.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        load_duration: std::time::Duration,
        /// Keep-alive connections of the load client.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Threads of the load client (a runtime of its own, apart from the server's).
        #[arg(long, default_value_t = 2)]
        client_threads: usize,
        /// Where the instances and the router run: `server` (this process) or `agent` (a local
        /// agent process, the default of `shipgate server`).
        #[arg(long, default_value = "server", value_parser = ["server", "agent"])]
        data_plane: String,
        /// The backends of the throughput part: `sample` (the sample app's axum server) and
        /// `minimal` (a responder that costs almost nothing per request, so the proxies' own cost
        /// is measured).
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "sample,minimal"
        )]
        backend: Vec<router::Backend>,
        /// The load clients of the throughput part: `builtin` (this process) and `wrk` (Debian's).
        #[arg(long, value_enum, value_delimiter = ',', default_value = "builtin,wrk")]
        client: Vec<router::LoadClient>,
    },
}

/// A duration as the config writes it (`500ms`, `30s`, `1m`).
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    shipgate_core::Duration::parse(s).map(|d| d.as_std())
}

fn main() -> ExitCode {
    shipgate::run_to_exit(run(Cli::parse().command))
}

async fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Promote { runs } => promote::run(runs).await,
        BenchCommand::AgentKill { runs, connections } => agent_kill::run(runs, connections).await,
        BenchCommand::OnDemand { runs, idle } => on_demand::run(runs, idle).await,
        BenchCommand::Hosts { runs } => hosts::run(runs).await,
        BenchCommand::Image {
            part,
            runs,
            rounds,
            releases,
        } => {
            image::run(image::Options {
                parts: part,
                runs,
                rounds,
                releases,
            })
            .await
        }
        BenchCommand::Dashboard { runs } => dashboard::run(runs).await,
        BenchCommand::Mask { rows } => mask::run(rows).await,
        BenchCommand::Backup { rows, rounds, jobs } => backup::run(rows, rounds, jobs).await,
        BenchCommand::Schema { runs } => schema::run(runs).await,
        BenchCommand::Canary {
            part,
            rounds,
            load_duration,
            connections,
            aborts,
            abort_connections,
            rate,
        } => {
            canary::run(canary::Options {
                parts: part,
                rounds,
                load_duration,
                connections,
                aborts,
                abort_connections,
                rate,
            })
            .await
        }
        BenchCommand::Load {
            connections,
            client_threads,
            rate,
            duration,
        } => {
            load_gate::run(load_gate::Options {
                connections,
                client_threads,
                rate,
                duration,
            })
            .await
        }
        BenchCommand::Flags => flags::run().await,
        BenchCommand::Chaos => chaos::run().await,
        BenchCommand::Dora => dora::run().await,
        BenchCommand::Sandbox { runs } => sandbox::run(runs).await,
        BenchCommand::Fence {
            rounds,
            seconds,
            inner,
        } => fence::run(rounds, seconds, inner).await,
        BenchCommand::Router {
            duration,
            cycles,
            rollbacks,
            load_duration,
            connections,
            client_threads,
            data_plane,
            backend,
            client,
        } => {
            router::run(router::Options {
                agent: data_plane == "agent",
                duration,
                cycles,
                rollbacks,
                load_duration,
                connections,
                client_threads,
                backends: backend,
                clients: client,
            })
            .await
        }
    }
}
