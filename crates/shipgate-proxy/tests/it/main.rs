//! Integration tests of the router over real TCP on 127.0.0.1, against tiny hyper backends.
#![allow(clippy::unwrap_used, reason = "a test should fail loudly")]

mod canary;
mod faults;
mod forwarding;
mod helpers;
mod http2;
mod metrics;
mod own_path;
mod shutdown;
mod switching;
mod tcp;
mod timeout;
mod upgrade;
