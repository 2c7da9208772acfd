//! The per-environment router: the data plane of shipgate. It owns one listener per environment,
//! forwards each request (HTTP/1.1, h2c, or an upgraded connection such as a WebSocket) to the
//! live upstream of the app it is for, switches that upstream atomically, tells the engine when an
//! old upstream has drained, and counts what each release answered ([`Router::metrics`],
//! [`render_prometheus`]). It must not decide which release is live (the engine calls
//! [`Router::switch`]), must not judge the metrics it counts (gates do), and must not touch the
//! database. It also injects the HTTP faults it is given ([`Router::set_faults`]), each until
//! its end, counting what they touched apart ([`FAULTED`]), and gives a canary the share of an
//! app's requests it is told ([`Router::set_canary`]), counting both sides of the split in the
//! canary's window ([`Router::canary_figures`]) without judging them.
#![forbid(unsafe_code)]

mod body;
mod canary;
mod fast;
mod faults;
mod forwarding;
mod front;
mod metrics;
mod prometheus;
mod router;
mod tcp;
mod tunnel;
mod upstream;
mod window;

use std::net::SocketAddr;

pub use canary::{CANARY_COOKIE, CANARY_HEADER, CANARY_SAMPLE, Canary, CanaryFigures};
pub use faults::FAULTED;
pub use front::Front;
pub use metrics::{
    LATENCY_BUCKETS_MS, LatencyBucket, LatencyHistogram, NO_RELEASE, StatusClasses,
    UpstreamMetrics, WindowSummary, users_saw,
};
pub use prometheus::render_prometheus;
pub use router::Router;
pub use tcp::TcpProxy;
pub use upstream::Upstream;

/// Why a router could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The environment's address could not be bound, usually because another program listens on it.
    #[error(
        "cannot listen on {addr} (is another program using it? change `listen` of environment `{env}`): {source}"
    )]
    Bind {
        /// The address the router was asked to listen on.
        addr: SocketAddr,
        /// The environment whose router it is.
        env: String,
        /// What the operating system said.
        source: std::io::Error,
    },
}
