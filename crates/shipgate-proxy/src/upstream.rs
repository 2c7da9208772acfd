use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One backend instance that a router may forward to. Cheap to clone; clones share the in-flight counter.
#[derive(Clone, Debug)]
pub struct Upstream {
    addr: SocketAddr,
    /// `addr` as a URI authority, made once rather than per request.
    authority: http::uri::Authority,
    label: Arc<str>,
    in_flight: Arc<AtomicUsize>,
}

impl Upstream {
    /// An instance listening on `addr`; `label` names it in logs and errors, e.g. `web@1.4.2`.
    pub fn new(addr: SocketAddr, label: impl Into<String>) -> Self {
        let label = label.into().into();
        // A socket address always renders as a valid authority.
        let authority = http::uri::Authority::try_from(addr.to_string())
            .expect("a socket address is a valid URI authority");
        Self {
            addr,
            authority,
            label,
            in_flight: Arc::default(),
        }
    }

    /// Where the instance listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the instance listens, as a URI authority.
    pub(crate) fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }

    /// The name given at creation, e.g. `web@1.4.2`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Requests dispatched to this instance whose response has not been fully sent to the client
    /// yet, and upgraded connections (WebSocket) to it that are still open.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Counts one request as in flight until the returned guard is dropped.
    pub(crate) fn start_request(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.in_flight.clone())
    }
}

/// One request in flight on an upstream; dropping it ends the request as far as draining goes.
pub(crate) struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
