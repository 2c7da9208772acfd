//! The bodies of the agent protocol that are not already [`shipgate_deploy`] requests.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use shipgate_deploy::{CanaryRoute, DriverEvent, InstanceId, RouteTarget};

/// The socket's file name in the agent's data dir.
pub const AGENT_SOCKET: &str = "agent.sock";

/// `POST /v1/hello`: who answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The agent's pid.
    pub pid: u32,
    /// Its version (the shipgate release it was built from).
    pub version: String,
    /// The instances it runs now.
    pub instances: Vec<InstanceId>,
    /// Its data dir (where a host's agent keeps releases, logs and instance data).
    #[serde(default)]
    pub data_dir: std::path::PathBuf,
    /// The addresses its routers listen on.
    #[serde(default)]
    pub listeners: Vec<std::net::SocketAddr>,
}

/// `POST /v1/has_release`: whether the agent has a release unpacked (its directory if so).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct HasRelease {
    pub digest: shipgate_core::Digest,
}

/// `POST /v1/lacks_blobs`: which of an image's blobs (manifest, config, layers) the host does
/// not hold with their size; answered with those, in the order asked.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LacksBlobs {
    pub blobs: Vec<shipgate_store::artifact::Blob>,
}

/// The answer to `POST /v1/blob` (its body the blob's bytes, its digest in the digest header):
/// the blob as received, and whether it was new to the host.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct BlobReceived {
    pub blob: shipgate_store::artifact::Blob,
    pub receipt: shipgate_store::artifact::BlobReceipt,
}

/// `POST /v1/image_rootfs`: the host's rootfs of an image whose blobs it holds, unpacked now
/// if it is not yet.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ImageRootfs {
    pub digest: shipgate_core::Digest,
}

/// The answer to `/v1/image_rootfs`: the image release's directory on the host, and its rootfs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct HostImage {
    pub release_dir: std::path::PathBuf,
    pub rootfs: std::path::PathBuf,
}

/// `POST /v1/logs`: a log read with a cursor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogFrom {
    /// The instance.
    pub instance_id: InstanceId,
    /// The byte offset to read from (the `next` of the last chunk); None: the last `lines`.
    pub offset: Option<u64>,
    /// How many lines from the end, without an offset.
    pub lines: usize,
}

/// The answer to `/v1/logs`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LogChunk {
    /// The text read.
    pub text: String,
    /// Where the next read starts.
    pub next: u64,
}

/// `POST /v1/switch`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Switch {
    pub env: String,
    pub app: String,
    pub to: Option<RouteTarget>,
}

/// `POST /v1/set_canary`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SetCanary {
    pub env: String,
    pub app: String,
    pub canary: Option<CanaryRoute>,
}

/// `POST /v1/routed`, `POST /v1/canary_figures` and `POST /v1/set_starting` (without a label
/// but for `set_starting`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Slot {
    pub env: String,
    pub app: String,
    #[serde(default)]
    pub label: String,
}

/// `POST /v1/drain`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Drain {
    pub instance_id: InstanceId,
    pub grace: Duration,
}

/// `POST /v1/router_metrics`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Env {
    pub env: String,
}

/// `POST /v1/stop_all`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Grace {
    pub grace: Duration,
}

/// `POST /v1/events`: the events after `after`, waiting up to `wait` for one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct EventsAfter {
    pub after: u64,
    pub wait: Duration,
}

/// The answer to `/v1/events`: events in order, each with its sequence number, and the
/// cursor to ask from next.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Events {
    pub events: Vec<(u64, DriverEvent)>,
    pub next: u64,
    /// The pid of the agent answering: another one numbers its events anew.
    pub agent: u32,
}

/// An operation that failed on the agent: the driver's message, as it would have been
/// in-process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Failed {
    pub error: String,
}

/// `POST /v1/set_front`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SetFront {
    pub env: String,
    pub listen: std::net::SocketAddr,
    pub backends: Vec<std::net::SocketAddr>,
}
