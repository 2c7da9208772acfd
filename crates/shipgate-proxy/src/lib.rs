//! The per-environment router: the data plane of shipgate. It owns one listener per environment,
//! forwards each request to the live upstream of the app it is for, switches that upstream
//! atomically, and tells the engine when an old upstream has drained. It must not decide which
//! release is live (the engine calls [`Router::switch`]) and must not touch the database.
#![forbid(unsafe_code)]

mod forwarding;
mod router;
mod upstream;

use std::net::SocketAddr;

pub use router::Router;
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
