use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::metrics::ReleaseMetrics;
use crate::upstream::InFlight;

/// One upgraded connection (WebSocket or another `Upgrade` protocol) through the router: once
/// both sides have switched protocols, their bytes are copied both ways until either side closes.
pub(crate) struct Tunnel {
    pub(crate) client: OnUpgrade,
    pub(crate) upstream: OnUpgrade,
    /// Keeps the upstream from counting as drained while the connection is open.
    pub(crate) in_flight: InFlight,
    pub(crate) metrics: Arc<ReleaseMetrics>,
}

impl Tunnel {
    /// Runs the tunnel in the background; the 101 has to reach the client before its side of the
    /// connection is handed over.
    pub(crate) fn spawn(self) {
        tokio::spawn(self.run());
    }

    async fn run(self) {
        let label = self.metrics.label();
        let (client, upstream) = match tokio::try_join!(self.client, self.upstream) {
            Ok(both) => both,
            Err(err) => {
                tracing::debug!(upstream = label, "upgrade did not complete: {err}");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((sent, received)) => {
                self.metrics.add_request_bytes(sent);
                self.metrics.add_response_bytes(received);
            }
            Err(err) => tracing::debug!(upstream = label, "upgraded connection ended: {err}"),
        }
        drop(self.in_flight);
    }
}
