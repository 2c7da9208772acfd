use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::metrics::ReleaseMetrics;
use crate::upstream::InFlight;

/// A client's request body on its way to an upstream, counting its bytes for the release.
pub(crate) struct RequestBody {
    body: Incoming,
    metrics: Arc<ReleaseMetrics>,
}

impl RequestBody {
    pub(crate) fn new(body: Incoming, metrics: Arc<ReleaseMetrics>) -> Self {
        Self { body, metrics }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(data))) = &frame
            && let Some(data) = data.data_ref()
        {
            self.metrics.add_request_bytes(data.remaining() as u64);
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

/// An upstream's response body on its way to the client: counts its bytes for the release and
/// keeps its request in flight until the body ends or is dropped.
pub(crate) struct ResponseBody {
    body: Incoming,
    metrics: Arc<ReleaseMetrics>,
    in_flight: Option<InFlight>,
}

impl ResponseBody {
    pub(crate) fn new(body: Incoming, metrics: Arc<ReleaseMetrics>, in_flight: InFlight) -> Self {
        Self {
            body,
            metrics,
            in_flight: Some(in_flight),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        match &frame {
            Poll::Ready(Some(Ok(data))) => {
                if let Some(data) = data.data_ref() {
                    self.metrics.add_response_bytes(data.remaining() as u64);
                }
            }
            // The end is released here, not only on drop, so `drain` does not depend on when the
            // server gets around to dropping a finished body.
            Poll::Ready(None) => self.in_flight = None,
            _ => {}
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
