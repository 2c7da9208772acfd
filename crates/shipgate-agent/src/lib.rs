//! The agent: the data plane of one machine (its instances, and the routers of its
//! environments) in a process of its own, so that it outlives the server. The server drives it
//! through [`AgentClient`], which is a [`Driver`] like the in-process one: the engine cannot tell
//! them apart.
//!
//! The protocol is JSON over HTTP, one `POST /v1/OPERATION` per [`Driver`] method: HTTP/1.1 on a
//! Unix socket in the agent's data dir (mode 0600: only the server's user reaches it), and
//! HTTP/2 over mutual TLS on the connection an agent of another host dials to the server
//! ([`link`]). Every operation
//! is idempotent, keyed by the instance id or by environment and app, so a request repeated
//! after a lost answer does the work once. Supervision events carry a sequence number and are
//! read with a cursor, so a server that reconnects misses none the agent still holds.
#![forbid(unsafe_code)]

mod client;
pub mod handover;
pub mod link;
pub mod local;
pub mod placement;
mod protocol;
mod serve;
pub mod tls;

pub use client::AgentClient;
pub use link::Hosts;
pub use placement::{EnvPlacement, Placement, SharedKeep};
pub use protocol::{AGENT_SOCKET, Hello, LogChunk, LogFrom};
pub use serve::{AGENT_MARKER, Agent, BLOBS_FILE, STARTS_FILE, serve};

pub use shipgate_deploy::Driver;

/// Writes `bytes` to `path` (replacing it), readable and writable by its owner only: keys,
/// certificates, what hosts run (their variables included), the agent port.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    // A file made before with wider permissions is narrowed too.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)
}

/// [`write_private`] whole or not at all: a file beside `path` (`temp`), synced, then renamed
/// over it, so a crash leaves the old contents or the new ones, never half of them.
pub fn replace_private(
    path: &std::path::Path,
    temp: &std::path::Path,
    bytes: &[u8],
) -> std::io::Result<()> {
    write_private(temp, bytes)?;
    std::fs::File::open(temp)?.sync_all()?;
    std::fs::rename(temp, path)
}
