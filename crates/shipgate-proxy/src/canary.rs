//! A canary's share of an app's requests: which side each request goes to (a tester's header,
//! then the client's pin, then the dice), the `shipgate-canary` cookie given to a client that
//! has no pin yet, the copies of requests a mirror step sends, and the figures of both sides in
//! the canary's current window, kept bounded whatever the traffic.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use serde::{Deserialize, Serialize};
use shipgate_core::canary::{Side, Sticky};
use tokio::time::Instant;

use crate::forwarding::{Gateway, Route};
use crate::upstream::Upstream;

/// The header a tester chooses a side with (`always`: the canary, `never`: the stable release).
pub const CANARY_HEADER: &str = "x-shipgate-canary";

/// The cookie that pins a client to its side for a whole rollout.
pub const CANARY_COOKIE: &str = "shipgate-canary";

/// Latencies kept per side of a canary's window: a uniform sample of its answers when there are
/// more (reservoir sampling), so the memory a window takes is bounded whatever the traffic.
pub const CANARY_SAMPLE: usize = 4096;

/// Mirrored requests in flight at most per router; a copy beyond it is not sent.
const MAX_MIRRORS: usize = 64;

/// How long a mirrored request may take, head and body, when the router has no request timeout.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);

/// The header a mirrored copy carries, so the canary can tell it from a user's request.
const MIRROR_HEADER: &str = "x-shipgate-mirror";

/// A canary's share of one app's requests, as a router applies it.
#[derive(Clone, Debug)]
pub struct Canary {
    /// The canary's instance.
    pub upstream: Upstream,
    /// Its share, in percent (0 to 100). At 0 only testers who send
    /// `x-shipgate-canary: always` meet it.
    pub weight: f64,
    /// The share is mirrored: users always meet the stable release, and copies of that share
    /// of the GET and HEAD requests go to the canary, whose answers are counted and thrown away.
    pub mirror: bool,
    /// How a client keeps its side.
    pub sticky: Sticky,
    /// The analysis window: the figures of both sides start afresh whenever it changes.
    pub window: u64,
}

/// What both sides of a canary answered in its current window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CanaryFigures {
    /// The window counted ([`Canary::window`]).
    pub window: u64,
    /// The canary's answers, mirrored ones included; at most [`CANARY_SAMPLE`] latencies.
    pub canary: Side,
    /// The stable release's answers to the app's requests in the same window; at most
    /// [`CANARY_SAMPLE`] latencies.
    pub stable: Side,
}

/// A canary as the route table holds it: replaced whole on every change, shared by the requests
/// that read it.
#[derive(Debug)]
pub(crate) struct Split {
    /// The canary's route; it records into the canary side of the window.
    pub(crate) canary: Route,
    /// The figures of the current window; the stable route's answers count on its stable side
    /// while this canary is set.
    pub(crate) window: Window,
    /// The window before, while it is the last one replaced: a change that is undone (a step
    /// that one host of several could not take) finds its figures again.
    previous: Option<Window>,
    pub(crate) weight: f64,
    pub(crate) mirror: bool,
    pub(crate) sticky: Sticky,
}

/// Both sides of one analysis window.
#[derive(Clone, Debug, Default)]
pub(crate) struct Window {
    pub(crate) number: u64,
    pub(crate) canary: Arc<SideFigures>,
    pub(crate) stable: Arc<SideFigures>,
}

/// Which side one request goes to.
pub(crate) struct Choice {
    /// The route that answers it.
    pub(crate) route: Route,
    /// A new pin for a client that had none, to give it in a `Set-Cookie`.
    pub(crate) cookie: Option<NewPin>,
    /// A copy of the request goes to the canary too.
    pub(crate) mirror: bool,
}

/// A client's new pin: 128 random bits, in hex.
#[derive(Clone, Copy)]
pub(crate) struct NewPin([u8; 32]);

impl NewPin {
    fn new() -> NewPin {
        let bits = random_bits();
        let mut hex = [0u8; 32];
        for (i, b) in bits.iter().enumerate() {
            hex[2 * i] = HEX[usize::from(b >> 4)];
            hex[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        NewPin(hex)
    }

    fn as_str(&self) -> &str {
        // Made of hex digits only.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The `Set-Cookie` value that gives a client this pin.
    pub(crate) fn set_cookie(&self) -> String {
        format!("{CANARY_COOKIE}={}{COOKIE_ATTRIBUTES}", self.as_str())
    }

    /// The whole `Set-Cookie` header line, added to `head`.
    pub(crate) fn push_header(&self, head: &mut Vec<u8>) {
        head.extend_from_slice(b"set-cookie: ");
        head.extend_from_slice(CANARY_COOKIE.as_bytes());
        head.push(b'=');
        head.extend_from_slice(&self.0);
        head.extend_from_slice(COOKIE_ATTRIBUTES.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
}

/// The attributes of the pin's cookie: the whole site, never read by scripts, sent on
/// top-level navigations from elsewhere.
const COOKIE_ATTRIBUTES: &str = "; Path=/; HttpOnly; SameSite=Lax";

/// Random bytes drawn from the system this many at once, so a pin costs no system call.
const RANDOM_BATCH: usize = 1024;

thread_local! {
    static RANDOM: std::cell::RefCell<([u8; RANDOM_BATCH], usize)> =
        const { std::cell::RefCell::new(([0; RANDOM_BATCH], RANDOM_BATCH)) };
}

/// 128 random bits, from this thread's batch of system randomness.
fn random_bits() -> [u8; 16] {
    RANDOM.with(|random| {
        let mut random = random.borrow_mut();
        let (batch, used) = &mut *random;
        if *used + 16 > RANDOM_BATCH {
            if getrandom::fill(batch).is_err() {
                // No system randomness: the thread's own dice still spread clients evenly.
                for chunk in batch.chunks_mut(8) {
                    let x = (crate::faults::roll() * (1u64 << 53) as f64) as u64;
                    chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
                }
            }
            *used = 0;
        }
        let mut bits = [0u8; 16];
        bits.copy_from_slice(&batch[*used..*used + 16]);
        // Each batch's bytes are handed out once.
        batch[*used..*used + 16].fill(0);
        *used += 16;
        bits
    })
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl Split {
    pub(crate) fn new(
        app: &str,
        canary: Canary,
        gateway: &Gateway,
        before: Option<&Split>,
    ) -> Self {
        let metrics = gateway.metrics.release(app, canary.upstream.label());
        // The same window goes on counting; another starts both sides at zero, but for the
        // window just replaced, which is taken up again.
        let fresh = || Window {
            number: canary.window,
            ..Window::default()
        };
        let (window, previous) = match before {
            None => (fresh(), None),
            Some(b) if b.window.number == canary.window => (b.window.clone(), b.previous.clone()),
            Some(b) => match &b.previous {
                Some(p) if p.number == canary.window => (p.clone(), Some(b.window.clone())),
                _ => (fresh(), Some(b.window.clone())),
            },
        };
        let weight = if canary.weight.is_nan() {
            0.0
        } else {
            canary.weight.clamp(0.0, 100.0)
        };
        Split {
            canary: Route {
                upstream: canary.upstream,
                metrics,
                side: Some(Arc::clone(&window.canary)),
            },
            window,
            previous,
            weight,
            mirror: canary.mirror,
            sticky: canary.sticky,
        }
    }

    /// The canary as it was set.
    pub(crate) fn describe(&self) -> Canary {
        Canary {
            upstream: self.canary.upstream.clone(),
            weight: self.weight,
            mirror: self.mirror,
            sticky: self.sticky.clone(),
            window: self.window.number,
        }
    }

    pub(crate) fn figures(&self) -> CanaryFigures {
        CanaryFigures {
            window: self.window.number,
            canary: self.window.canary.snapshot(),
            stable: self.window.stable.snapshot(),
        }
    }

    /// Which side a request goes to, `stable` being the app's route and `header(name)` giving
    /// every value of a request header: a tester's `x-shipgate-canary` first, then the client's
    /// pin (its cookie, or the header `sticky` names), else a draw. A mirror sends every user to
    /// the stable release and copies `idempotent` requests at its weight.
    pub(crate) fn choose<'n, 'h, I>(
        &'n self,
        stable: Route,
        idempotent: bool,
        header: impl Fn(&'n str) -> I,
    ) -> Choice
    where
        I: Iterator<Item = &'h [u8]>,
    {
        let asked = header(CANARY_HEADER)
            .next()
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::trim);
        let (to_canary, cookie, mirror) = if self.mirror {
            match asked {
                Some("always") => (true, None, false),
                _ => {
                    let copy = idempotent && crate::faults::roll() * 100.0 < self.weight;
                    (false, None, copy)
                }
            }
        } else {
            let pinned = match &self.sticky {
                Sticky::Cookie => header("cookie").find_map(pin_cookie),
                Sticky::Header(name) => header(name).next().filter(|v| !v.is_empty()),
                Sticky::None => None,
            };
            // A client without its cookie gets one, and its side is that of the new pin, so
            // its next requests, carrying it, stay there.
            let cookie = (pinned.is_none() && self.sticky == Sticky::Cookie).then(NewPin::new);
            let pin = match (pinned, &cookie) {
                (Some(p), _) => std::str::from_utf8(p).ok(),
                (None, Some(c)) => Some(c.as_str()),
                (None, None) => None,
            };
            let roll = if pin.is_none() {
                crate::faults::roll()
            } else {
                0.0
            };
            let side = shipgate_core::canary::to_canary(self.weight, asked, pin, roll);
            (side, cookie, false)
        };
        let route = if to_canary {
            self.canary.clone()
        } else {
            Route {
                side: Some(Arc::clone(&self.window.stable)),
                ..stable
            }
        };
        Choice {
            route,
            cookie,
            mirror,
        }
    }
}

/// The value of the `shipgate-canary` cookie in one Cookie header, if it is there and not empty.
fn pin_cookie(header: &[u8]) -> Option<&[u8]> {
    header
        .split(|&b| b == b';')
        .map(<[u8]>::trim_ascii)
        .find_map(|c| c.strip_prefix(CANARY_COOKIE.as_bytes())?.strip_prefix(b"="))
        .map(<[u8]>::trim_ascii)
        .filter(|v| !v.is_empty())
}

/// What one side of a canary answered in its window, behind one short lock.
#[derive(Debug, Default)]
pub(crate) struct SideFigures(Mutex<SideState>);

#[derive(Debug, Default)]
struct SideState {
    requests: u64,
    errors: u64,
    /// A uniform sample of the latencies, at most [`CANARY_SAMPLE`].
    latencies_ms: Vec<f64>,
}

impl SideFigures {
    /// Counts one response head with `status`, `latency` after its request was received.
    pub(crate) fn record(&self, status: StatusCode, latency: Duration) {
        let ms = latency.as_secs_f64() * 1000.0;
        let error = crate::metrics::is_error(status);
        let mut side = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        side.requests += 1;
        side.errors += u64::from(error);
        if side.latencies_ms.len() < CANARY_SAMPLE {
            side.latencies_ms.push(ms);
        } else {
            // Reservoir sampling: the n-th latency replaces a kept one with probability
            // CANARY_SAMPLE / n, so the sample stays uniform over the whole window.
            let slot = (crate::faults::roll() * side.requests as f64) as usize;
            if let Some(kept) = side.latencies_ms.get_mut(slot) {
                *kept = ms;
            }
        }
    }

    fn snapshot(&self) -> Side {
        let side = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Side {
            requests: side.requests,
            errors: side.errors,
            latencies_ms: side.latencies_ms.clone(),
        }
    }
}

/// Mirrored requests in flight, shared by a router's workers.
#[derive(Debug, Default)]
pub(crate) struct Mirrors(AtomicUsize);

/// One mirrored request in flight; dropping it frees its place.
struct MirrorSlot(Arc<Mirrors>);

impl Drop for MirrorSlot {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn take_slot(mirrors: &Arc<Mirrors>) -> Option<MirrorSlot> {
    let before = mirrors.0.fetch_add(1, Ordering::AcqRel);
    let slot = MirrorSlot(Arc::clone(mirrors));
    (before < MAX_MIRRORS).then_some(slot)
}

impl Gateway {
    /// Sends a copy of a request (method, target, headers without the hop-by-hop ones, no body)
    /// to the canary of `split` in the background, reads its answer to the end and counts it on
    /// the canary's side; the user's own request is not held up. Beyond [`MAX_MIRRORS`] copies
    /// in flight, the copy is not sent.
    pub(crate) fn mirror(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &http::HeaderMap,
        split: &Split,
    ) {
        let Some(slot) = take_slot(&self.mirrors) else {
            tracing::debug!(env = %self.env, "too many mirrored requests in flight; one not sent");
            return;
        };
        let route = split.canary.clone();
        let mut target = http::uri::Parts::default();
        target.scheme = Some(Scheme::HTTP);
        target.authority = Some(route.upstream.authority().clone());
        target.path_and_query = Some(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        let Ok(target) = Uri::from_parts(target) else {
            return;
        };
        let mut copy = Request::new(Empty::<Bytes>::new());
        *copy.method_mut() = method.clone();
        *copy.uri_mut() = target;
        let mut headers = headers.clone();
        crate::forwarding::strip_hop_by_hop(&mut headers);
        headers.remove(CONTENT_LENGTH);
        if !headers.contains_key(HOST)
            && let Some(host) = uri
                .authority()
                .and_then(|a| HeaderValue::try_from(a.as_str()).ok())
        {
            headers.insert(HOST, host);
        }
        headers.insert(MIRROR_HEADER, HeaderValue::from_static("1"));
        *copy.headers_mut() = headers;
        let client = self.mirror_client.clone();
        let limit = self.request_timeout().unwrap_or(MIRROR_TIMEOUT);
        tokio::spawn(async move {
            let _slot = slot;
            let sent = Instant::now();
            let _in_flight = route.upstream.start_request();
            let label = route.upstream.label();
            let head = tokio::time::timeout(limit, client.request(copy)).await;
            let response = match head {
                Ok(Ok(response)) => response,
                Ok(Err(err)) => {
                    tracing::debug!(upstream = label, "mirrored request failed: {err}");
                    route.record_response(StatusCode::BAD_GATEWAY, sent);
                    return;
                }
                Err(_elapsed) => {
                    route.record_response(StatusCode::GATEWAY_TIMEOUT, sent);
                    return;
                }
            };
            route.record_response(response.status(), sent);
            let mut body = response.into_body();
            let rest = limit.saturating_sub(sent.elapsed());
            let read = tokio::time::timeout(rest, async {
                while let Some(frame) = body.frame().await {
                    let frame = frame?;
                    if let Some(data) = frame.data_ref() {
                        route.metrics.add_response_bytes(data.len() as u64);
                    }
                }
                Ok::<_, hyper::Error>(())
            });
            match read.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::debug!(upstream = label, "mirrored answer cut: {err}"),
                Err(_elapsed) => tracing::debug!(upstream = label, "mirrored answer too slow"),
            }
        });
    }
}
