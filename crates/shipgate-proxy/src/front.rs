//! A front for an environment on several hosts (`front = "ADDR"`): one address on the server's
//! machine whose connections are spread over the routers of the environment's hosts, round robin.
//! It forwards TCP, so HTTP/1.1 keep-alive, h2c and upgrades pass through unchanged and each
//! host's router still counts and routes every request. A host that does not accept the
//! connection within a second is skipped for the next one, so a host that went away costs a
//! retry, not a failed request; the data plane also takes unreachable hosts out of the list.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::ProxyError;

/// How long one host may take to accept a forwarded connection before the next is tried.
const CONNECT: Duration = Duration::from_secs(1);

/// A bound front.
pub struct Front {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    backends: Mutex<Vec<SocketAddr>>,
    next: AtomicUsize,
}

impl Front {
    /// Listens at `addr` for `env`, forwarding to no host until [`Front::set_backends`].
    pub async fn bind(addr: SocketAddr, env: &str) -> Result<Front, ProxyError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ProxyError::Bind {
                addr,
                env: env.to_owned(),
                source,
            })?;
        let addr = listener.local_addr().unwrap_or(addr);
        let shared = Arc::new(Shared {
            backends: Mutex::default(),
            next: AtomicUsize::new(0),
        });
        let serving = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let shared = Arc::clone(&serving);
                tokio::spawn(async move { shared.forward(client).await });
            }
        });
        Ok(Front { addr, shared, task })
    }

    /// The address it listens at.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The hosts' router addresses to spread connections over.
    pub fn set_backends(&self, backends: Vec<SocketAddr>) {
        *self
            .shared
            .backends
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = backends;
    }

    /// The addresses it spreads over now.
    pub fn backends(&self) -> Vec<SocketAddr> {
        self.shared
            .backends
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    async fn forward(&self, mut client: tokio::net::TcpStream) {
        let backends = self
            .backends
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if backends.is_empty() {
            return;
        }
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..backends.len() {
            let to = backends[(first + i) % backends.len()];
            match tokio::time::timeout(CONNECT, tokio::net::TcpStream::connect(to)).await {
                Ok(Ok(mut upstream)) => {
                    let _ = upstream.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    return;
                }
                _ => tracing::debug!("front: {to} did not accept; trying the next host"),
            }
        }
        tracing::warn!("front: none of {backends:?} accepted a connection");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo(tag: u8) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 1];
                    if s.read_exact(&mut b).await.is_ok() {
                        let _ = s.write_all(&[tag, b[0]]).await;
                    }
                });
            }
        });
        addr
    }

    async fn ask(front: SocketAddr) -> Vec<u8> {
        let mut s = tokio::net::TcpStream::connect(front).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        out
    }

    #[tokio::test]
    async fn connections_are_spread_over_the_hosts_and_skip_one_that_is_gone() {
        let (a, b) = (echo(1).await, echo(2).await);
        // A port nothing listens on.
        let gone = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let front = Front::bind("127.0.0.1:0".parse().unwrap(), "production")
            .await
            .unwrap();
        assert!(ask(front.local_addr()).await.is_empty(), "no host: closed");
        front.set_backends(vec![a, gone, b]);
        let mut seen = Vec::new();
        for _ in 0..6 {
            let got = ask(front.local_addr()).await;
            assert_eq!(got.len(), 2, "every connection is answered: {got:?}");
            assert_eq!(got[1], b'x');
            seen.push(got[0]);
        }
        assert!(seen.contains(&1) && seen.contains(&2), "{seen:?}");
        assert_eq!(front.backends(), vec![a, gone, b]);
    }
}
