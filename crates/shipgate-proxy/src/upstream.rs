use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// One backend instance that a router may forward to. Cheap to clone; clones share the in-flight counter.
#[derive(Clone, Debug)]
pub struct Upstream {
    addr: SocketAddr,
    label: Arc<str>,
    in_flight: Arc<AtomicUsize>,
}

impl Upstream {
    /// An instance listening on `addr`; `label` names it in logs and errors, e.g. `web@1.4.2`.
    pub fn new(addr: SocketAddr, label: impl Into<String>) -> Self {
        let label = label.into().into();
        Self {
            addr,
            label,
            in_flight: Arc::default(),
        }
    }

    /// Where the instance listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The name given at creation, e.g. `web@1.4.2`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Requests dispatched to this instance whose response has not been fully sent to the client yet.
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

/// An upstream's response body that keeps its request in flight until the body ends or is dropped.
pub(crate) struct TrackedBody {
    body: Incoming,
    in_flight: Option<InFlight>,
}

impl TrackedBody {
    pub(crate) fn new(body: Incoming, in_flight: InFlight) -> Self {
        Self {
            body,
            in_flight: Some(in_flight),
        }
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        // The end is released here, not only on drop, so `drain` does not depend on when the
        // server gets around to dropping a finished body.
        if let Poll::Ready(None) = frame {
            self.in_flight = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
