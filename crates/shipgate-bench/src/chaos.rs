//! `shipgate-bench chaos`: what chaos costs when nothing is injected. (1) The TCP fault proxy
//! with no toxic: round trips of 64 bytes on one connection to a TCP echo service, directly,
//! through shipgate's proxy and through socat (the anchor; Toxiproxy's own claim is under
//! 100 µs added), p50 and p99. (2) The router's throughput with a fault rule that matches every
//! request at 0% against no rule, with wrk. socat is installed by the benchmark when missing
//! (as root, from Debian).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use shipgate_core::chaos::{DependencyProxy, FaultAction, HttpFault};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::wrk;

const ROUND_TRIPS: usize = 20_000;
const WARM_UP: usize = 1_000;

async fn echo() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let _ = conn.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// A minimal HTTP/1.1 responder: every request gets `200 ok`, keep-alive.
async fn responder() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let _ = conn.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(8192);
                let mut chunk = [0u8; 8192];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if conn.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    Ok(addr)
}

fn free() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Round-trip times of 64 bytes on one connection to `to`, sorted.
async fn round_trips(to: SocketAddr) -> anyhow::Result<Vec<Duration>> {
    let mut conn = TcpStream::connect(to)
        .await
        .with_context(|| format!("connecting to {to}"))?;
    conn.set_nodelay(true)?;
    let message = [42u8; 64];
    let mut back = [0u8; 64];
    let mut times = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..WARM_UP + ROUND_TRIPS {
        let started = Instant::now();
        conn.write_all(&message).await?;
        conn.read_exact(&mut back).await?;
        if i >= WARM_UP {
            times.push(started.elapsed());
        }
    }
    times.sort();
    Ok(times)
}

fn socat() -> anyhow::Result<std::path::PathBuf> {
    let found = |p: &str| std::path::Path::new(p).exists().then(|| p.into());
    if let Some(p) = found("/usr/bin/socat") {
        return Ok(p);
    }
    let root = nix::unistd::Uid::effective().is_root();
    anyhow::ensure!(
        root,
        "socat is not installed (apt-get install socat, as root)"
    );
    eprintln!("installing socat from Debian (apt-get install -y socat)");
    let ok = std::process::Command::new("apt-get")
        .args(["install", "-y", "socat"])
        .status()?
        .success();
    anyhow::ensure!(ok, "apt-get install socat failed");
    found("/usr/bin/socat").context("socat is still missing")
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn pct(times: &[Duration], p: f64) -> Duration {
    times[((times.len() as f64 - 1.0) * p) as usize]
}

pub async fn run() -> anyhow::Result<ExitCode> {
    // (1) the TCP proxy.
    let service = echo().await?;
    let proxy = shipgate_proxy::TcpProxy::start(DependencyProxy {
        name: "bench.db".into(),
        listen: free()?,
        upstream: service.to_string(),
        enabled: true,
        toxics: Vec::new(),
    })
    .await?;
    let socat_at = free()?;
    let mut socat = tokio::process::Command::new(socat()?)
        .arg(format!(
            "TCP-LISTEN:{},bind=127.0.0.1,fork,reuseaddr,nodelay",
            socat_at.port()
        ))
        .arg(format!("TCP:{service},nodelay"))
        .kill_on_drop(true)
        .spawn()?;
    for _ in 0..100 {
        if TcpStream::connect(socat_at).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let direct = round_trips(service).await?;
    let shipgate = round_trips(proxy.spec().listen).await?;
    let anchor = round_trips(socat_at).await?;
    let _ = socat.kill().await;
    println!(
        "TCP round trips of 64 bytes, {ROUND_TRIPS} on one connection each (after {WARM_UP} to warm up), loopback"
    );
    println!(
        "| path | p50 µs | p99 µs | added at p50 µs | added at p99 µs |\n|---|---|---|---|---|"
    );
    for (name, t) in [
        ("direct", &direct),
        ("shipgate TCP proxy, no toxic", &shipgate),
        ("socat", &anchor),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
            us(pct(t, 0.5)),
            us(pct(t, 0.99)),
            us(pct(t, 0.5)) - us(pct(&direct, 0.5)),
            us(pct(t, 0.99)) - us(pct(&direct, 0.99))
        );
    }
    println!(
        "ratio of the added p50, shipgate/socat: {:.2}",
        (us(pct(&shipgate, 0.5)) - us(pct(&direct, 0.5)))
            / (us(pct(&anchor, 0.5)) - us(pct(&direct, 0.5))).max(0.001)
    );

    // (2) the router with a fault rule at 0% against none.
    let exe = wrk::find().context("wrk is not installed (apt-get install wrk)")?;
    let backend = responder().await?;
    let router = shipgate_proxy::Router::bind(free()?, "bench").await?;
    router.set_apps(&["web"]);
    router.switch("web", Some(shipgate_proxy::Upstream::new(backend, "web@1")));
    let url = format!("http://{}/api/orders", router.local_addr());
    let measure = |url: String| {
        let exe = exe.clone();
        async move { wrk::run_on(&exe, &url, None, 2, 32, Duration::from_secs(10)).await }
    };
    let none = measure(url.clone()).await?;
    let until = SystemTime::now().duration_since(UNIX_EPOCH)? + Duration::from_secs(3600);
    router.set_faults(vec![HttpFault {
        id: 1,
        app: "web".into(),
        action: FaultAction::Abort { status: 503 },
        percent: 0.0,
        path: Some("/api/*".into()),
        header: None,
        until_ms: until.as_millis() as i64,
    }]);
    let zero = measure(url).await?;
    anyhow::ensure!(
        zero.failed == 0 && none.failed == 0,
        "requests failed under load"
    );
    println!(
        "\nrouter throughput, {} with 2 threads and 32 connections for 10 s each",
        wrk::version(&exe)
    );
    println!("| rule | req/s | p50 ms | p99 ms |\n|---|---|---|---|");
    for (name, f) in [
        ("no fault rule", &none),
        ("an abort rule on /api/* at 0%", &zero),
    ] {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} |",
            f.per_second(),
            f.p50.as_secs_f64() * 1000.0,
            f.p99.as_secs_f64() * 1000.0
        );
    }
    println!(
        "ratio with the rule / without: {:.3}",
        zero.per_second() / none.per_second()
    );
    Ok(ExitCode::SUCCESS)
}
