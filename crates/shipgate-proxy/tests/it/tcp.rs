//! The TCP fault proxy over real TCP streams on 127.0.0.1: each of Toxiproxy's toxics acts on
//! a connection as Toxiproxy's do, on open connections too, only as often as its toxicity says,
//! and a proxy taken down closes what it carries and refuses new connections. Times are only
//! checked from below (a toxic holds at least this long), never from above.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shipgate_core::chaos::{DependencyProxy, Stream, Toxic};
use shipgate_proxy::TcpProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP echo server.
async fn echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A server that says `bye` and closes.
async fn says_bye() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let _ = conn.write_all(b"bye").await;
        }
    });
    addr
}

fn free() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn toxic(kind: &str, stream: Stream, attributes: &[(&str, u64)]) -> Toxic {
    Toxic {
        name: String::new(),
        kind: kind.into(),
        stream,
        toxicity: 1.0,
        attributes: attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).into()))
            .collect(),
    }
    .checked()
    .unwrap()
}

async fn proxy(upstream: SocketAddr, toxics: Vec<Toxic>) -> TcpProxy {
    TcpProxy::start(DependencyProxy {
        name: "staging.db".into(),
        listen: free(),
        upstream: upstream.to_string(),
        enabled: true,
        toxics,
    })
    .await
    .unwrap()
}

async fn connect(p: &TcpProxy) -> TcpStream {
    TcpStream::connect(p.spec().listen).await.unwrap()
}

/// Sends `data` and reads back as much, or until the stream ends; with the time it took.
async fn round_trip(conn: &mut TcpStream, data: &[u8]) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    conn.write_all(data).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while got.len() < data.len() {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    (got, started.elapsed())
}

#[tokio::test]
async fn without_toxics_it_forwards_both_ways() {
    let p = proxy(echo().await, Vec::new()).await;
    let mut conn = connect(&p).await;
    let data: Vec<u8> = (0..200_000).map(|i| (i % 251) as u8).collect();
    assert_eq!(round_trip(&mut conn, &data).await.0, data);
}

#[tokio::test]
async fn latency_delays_what_passes_by_its_latency_less_its_jitter() {
    let p = proxy(
        echo().await,
        vec![toxic(
            "latency",
            Stream::Downstream,
            &[("latency", 300), ("jitter", 100)],
        )],
    )
    .await;
    let mut conn = connect(&p).await;
    for _ in 0..3 {
        let (got, took) = round_trip(&mut conn, b"ping").await;
        assert_eq!(got, b"ping");
        assert!(took >= Duration::from_millis(200), "{took:?}");
    }
}

#[tokio::test]
async fn bandwidth_holds_a_stream_to_its_rate() {
    // 100 KB at 200 KB/s takes at least half a second.
    let p = proxy(
        echo().await,
        vec![toxic("bandwidth", Stream::Downstream, &[("rate", 200)])],
    )
    .await;
    let mut conn = connect(&p).await;
    let data = vec![7u8; 100_000];
    let (got, took) = round_trip(&mut conn, &data).await;
    assert_eq!(got.len(), data.len());
    assert!(took >= Duration::from_millis(450), "{took:?}");
}

#[tokio::test]
async fn slicer_cuts_what_passes_into_small_pieces_with_pauses() {
    // 100 bytes in pieces of 10, 20 ms apart: at least 9 pauses.
    let p = proxy(
        echo().await,
        vec![toxic(
            "slicer",
            Stream::Downstream,
            &[
                ("average_size", 10),
                ("size_variation", 0),
                ("delay", 20_000),
            ],
        )],
    )
    .await;
    let mut conn = connect(&p).await;
    let data = vec![1u8; 100];
    let (got, took) = round_trip(&mut conn, &data).await;
    assert_eq!(got, data);
    assert!(took >= Duration::from_millis(180), "{took:?}");
}

#[tokio::test]
async fn limit_data_closes_the_connection_after_its_bytes() {
    let p = proxy(
        echo().await,
        vec![toxic("limit_data", Stream::Downstream, &[("bytes", 10)])],
    )
    .await;
    let mut conn = connect(&p).await;
    conn.write_all(&[5u8; 100]).await.unwrap();
    let mut got = Vec::new();
    let _ = conn.read_to_end(&mut got).await;
    assert_eq!(got, vec![5u8; 10]);
}

#[tokio::test]
async fn timeout_lets_nothing_through_and_closes_after_its_time() {
    let p = proxy(
        echo().await,
        vec![toxic("timeout", Stream::Upstream, &[("timeout", 300)])],
    )
    .await;
    let mut conn = connect(&p).await;
    let started = Instant::now();
    conn.write_all(b"anyone?").await.unwrap();
    let mut got = Vec::new();
    let _ = conn.read_to_end(&mut got).await;
    assert!(got.is_empty(), "{got:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn reset_peer_resets_the_connection_after_its_time() {
    let p = proxy(
        echo().await,
        vec![toxic("reset_peer", Stream::Downstream, &[("timeout", 100)])],
    )
    .await;
    let mut conn = connect(&p).await;
    conn.write_all(b"x").await.unwrap();
    let mut buf = [0u8; 16];
    let err = loop {
        match conn.read(&mut buf).await {
            Ok(0) => panic!("closed, not reset"),
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

#[tokio::test]
async fn slow_close_holds_the_close_for_its_delay() {
    let p = proxy(
        says_bye().await,
        vec![toxic("slow_close", Stream::Downstream, &[("delay", 300)])],
    )
    .await;
    let started = Instant::now();
    let mut conn = connect(&p).await;
    let mut got = Vec::new();
    conn.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"bye");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn toxicity_picks_the_share_of_connections_a_toxic_acts_on() {
    let mut never = toxic("limit_data", Stream::Downstream, &[("bytes", 0)]);
    never.toxicity = 0.0;
    let p = proxy(echo().await, vec![never]).await;
    for _ in 0..20 {
        let mut conn = connect(&p).await;
        assert_eq!(round_trip(&mut conn, b"hello").await.0, b"hello");
    }
    let mut half = toxic("limit_data", Stream::Downstream, &[("bytes", 0)]);
    half.toxicity = 0.5;
    let mut spec = p.spec();
    spec.toxics = vec![half];
    p.set(spec).await.unwrap();
    let mut cut = 0;
    for _ in 0..200 {
        let mut conn = connect(&p).await;
        if round_trip(&mut conn, b"hello").await.0.is_empty() {
            cut += 1;
        }
    }
    assert!((60..=140).contains(&cut), "{cut} of 200 at toxicity 0.5");
}

#[tokio::test]
async fn a_toxic_acts_on_an_open_connection_and_down_closes_everything() {
    let p = proxy(echo().await, Vec::new()).await;
    let mut conn = connect(&p).await;
    assert_eq!(round_trip(&mut conn, b"one").await.0, b"one");
    let mut spec = p.spec();
    spec.toxics = vec![toxic("limit_data", Stream::Downstream, &[("bytes", 0)])];
    p.set(spec.clone()).await.unwrap();
    assert!(round_trip(&mut conn, b"two").await.0.is_empty());

    spec.toxics.clear();
    p.set(spec.clone()).await.unwrap();
    let mut open = connect(&p).await;
    assert_eq!(round_trip(&mut open, b"three").await.0, b"three");
    spec.enabled = false;
    p.set(spec.clone()).await.unwrap();
    let mut got = Vec::new();
    let _ = open.read_to_end(&mut got).await;
    assert!(got.is_empty());
    assert!(
        TcpStream::connect(spec.listen).await.is_err(),
        "down: nothing listens"
    );
    spec.enabled = true;
    p.set(spec).await.unwrap();
    let mut again = connect(&p).await;
    assert_eq!(round_trip(&mut again, b"four").await.0, b"four");
}
