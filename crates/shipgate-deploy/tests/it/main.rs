//! The process driver against real child processes: `python3 -m http.server` and `sh` scripts.

#![allow(clippy::unwrap_used)]

mod canary;
mod runc;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shipgate_deploy::{
    Driver, DriverError, DriverEvent, InstanceId, ProcessDriver, StartInstance, StopInstance,
    tail_lines,
};
use tempfile::TempDir;

const HTTP_SERVER: &str = "exec python3 -m http.server ${PORT} --bind 127.0.0.1";
/// Only a guard against hanging forever; no test asserts on time.
const PATIENCE: Duration = Duration::from_secs(30);

fn id(key: &str) -> InstanceId {
    InstanceId::recorded(key)
}

fn request(dir: &TempDir, instance_id: &str, command: &str) -> StartInstance {
    StartInstance {
        instance_id: id(instance_id),
        release_dir: dir.path().to_path_buf(),
        command: command.to_string(),
        template_vars: BTreeMap::new(),
        env: BTreeMap::new(),
        health_path: "/".to_string(),
        health_timeout: PATIENCE,
        log_path: dir.path().join("logs").join(format!("{instance_id}.log")),
        port: None,
        crash_loop: shipgate_deploy::CrashLoopPolicy::default(),
        sandbox: None,
        image: None,
        secret_names: Vec::new(),
    }
}

fn stop(instance_id: &str) -> StopInstance {
    StopInstance {
        instance_id: id(instance_id),
        pid: None,
        grace: Duration::from_secs(5),
    }
}

fn markers(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|line| line.starts_with("--- shipgate: started instance"))
        .count()
}

async fn get_status(addr: std::net::SocketAddr) -> u16 {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    client
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn start_serves_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let driver = ProcessDriver::new();
    let req = request(&dir, "web-development-1", HTTP_SERVER);

    let started = driver.start(req.clone()).await.unwrap();
    assert_eq!(started.addr.port(), started.port);
    assert_eq!(get_status(started.addr).await, 200);
    let status = driver.status(&id("web-development-1")).await.unwrap();
    assert_eq!(
        (status.pid, status.port, status.restarts),
        (started.pid, started.port, 0)
    );
    assert!(status.healthy);
    let marker = format!(
        "--- shipgate: started instance web-development-1 (pid {}, port {}) ---",
        started.pid, started.port
    );
    assert!(tail_lines(&req.log_path, 100).unwrap().contains(&marker));

    driver.stop(stop("web-development-1")).await.unwrap();
    assert!(TcpStream::connect(started.addr).is_err());
    assert!(driver.status(&id("web-development-1")).await.is_none());
    driver.stop(stop("web-development-1")).await.unwrap();
}

#[tokio::test]
async fn starting_twice_runs_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let driver = ProcessDriver::new();
    let req = request(&dir, "web-development-2", HTTP_SERVER);

    let (first, second) = tokio::join!(driver.start(req.clone()), driver.start(req.clone()));
    let (first, second) = (first.unwrap(), second.unwrap());
    let third = driver.start(req.clone()).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(first, third);
    assert_eq!(markers(&req.log_path), 1);

    driver.stop_all(Duration::from_secs(5)).await;
    assert!(TcpStream::connect(first.addr).is_err());
}

#[tokio::test]
async fn exiting_before_healthy_reports_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let driver = ProcessDriver::new();
    let req = request(&dir, "web-development-3", "echo boom-line-42 >&2; exit 1");

    let err = driver.start(req).await.unwrap_err();
    assert!(matches!(err, DriverError::ExitedEarly { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("exited with exit code 1"), "{message}");
    assert!(message.contains("boom-line-42"), "{message}");
    assert!(driver.status(&id("web-development-3")).await.is_none());
}

#[tokio::test]
async fn never_healthy_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let driver = ProcessDriver::new();
    let mut req = request(
        &dir,
        "web-development-4",
        "echo $$ > pid; echo waiting-forever; exec sleep 60",
    );
    req.health_timeout = Duration::from_millis(300);

    let err = driver.start(req).await.unwrap_err();
    assert!(matches!(err, DriverError::Unhealthy { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("did not become healthy"), "{message}");
    assert!(message.contains("waiting-forever"), "{message}");
    let pid = std::fs::read_to_string(dir.path().join("pid")).unwrap();
    assert!(!Path::new(&format!("/proc/{}", pid.trim())).exists());
    assert!(driver.status(&id("web-development-4")).await.is_none());
}

#[tokio::test]
async fn crash_is_restarted_on_the_same_port() {
    let dir = tempfile::tempdir().unwrap();
    let driver = ProcessDriver::new();
    let mut events = driver.subscribe();
    let req = request(&dir, "web-development-5", HTTP_SERVER);
    let started = driver.start(req.clone()).await.unwrap();

    kill(Pid::from_raw(started.pid as i32), Signal::SIGKILL).unwrap();

    let crashed = tokio::time::timeout(PATIENCE, events.recv())
        .await
        .unwrap()
        .unwrap();
    let DriverEvent::Crashed {
        instance_id, exit, ..
    } = crashed
    else {
        panic!("expected Crashed, got {crashed:?}");
    };
    assert_eq!(
        (instance_id.as_str(), exit.as_str()),
        ("web-development-5", "signal 9")
    );
    let restarted = tokio::time::timeout(PATIENCE, events.recv())
        .await
        .unwrap()
        .unwrap();
    let DriverEvent::Restarted { pid, .. } = restarted else {
        panic!("expected Restarted, got {restarted:?}");
    };
    assert_ne!(pid, started.pid);

    let status = driver.status(&id("web-development-5")).await.unwrap();
    assert_eq!(
        (status.pid, status.port, status.restarts),
        (pid, started.port, 1)
    );
    assert_eq!(get_status(started.addr).await, 200);
    assert_eq!(markers(&req.log_path), 2);
    assert_eq!(driver.start(req).await.unwrap().pid, pid);

    driver.stop(stop("web-development-5")).await.unwrap();
    assert!(TcpStream::connect(started.addr).is_err());
}

#[tokio::test]
async fn stop_while_starting_leaves_nothing_running() {
    let dir = tempfile::tempdir().unwrap();
    let driver = ProcessDriver::new();
    let req = request(&dir, "web-development-6", "echo $$ > pid; exec sleep 60");
    let starting = tokio::spawn({
        let driver = driver.clone();
        async move { driver.start(req).await }
    });
    while driver.status(&id("web-development-6")).await.is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    driver.stop(stop("web-development-6")).await.unwrap();
    let err = starting.await.unwrap().unwrap_err();
    assert!(matches!(err, DriverError::Stopped { .. }), "{err:?}");
    let pid = std::fs::read_to_string(dir.path().join("pid")).unwrap();
    assert!(!Path::new(&format!("/proc/{}", pid.trim())).exists());
}

#[tokio::test]
async fn leftover_pid_is_stopped_only_if_it_is_that_instance() {
    use std::os::unix::process::{CommandExt, ExitStatusExt};

    let driver = ProcessDriver::new();
    let grace = Duration::from_millis(200);

    let mut stranger = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    driver
        .stop(StopInstance {
            instance_id: id("web-development-7"),
            pid: Some(stranger.id()),
            grace,
        })
        .await
        .unwrap();
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "a stranger was killed"
    );
    stranger.kill().unwrap();
    stranger.wait().unwrap();

    let mut leftover = std::process::Command::new("sleep")
        .arg("60")
        .env("SHIPGATE_INSTANCE", "web-development-7")
        .process_group(0)
        .spawn()
        .unwrap();
    // Right after exec the kernel may not have filled in the new environment yet.
    let environ = format!("/proc/{}/environ", leftover.id());
    while !String::from_utf8_lossy(&std::fs::read(&environ).unwrap()).contains("web-development-7")
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    driver
        .stop(StopInstance {
            instance_id: id("web-development-7"),
            pid: Some(leftover.id()),
            grace,
        })
        .await
        .unwrap();
    assert_eq!(
        leftover.wait().unwrap().signal(),
        Some(Signal::SIGTERM as i32)
    );
}

#[tokio::test]
async fn crash_loop_is_given_up() {
    let dir = tempfile::tempdir().unwrap();
    let driver = ProcessDriver::new();
    let mut events = driver.subscribe();
    // Healthy the first time only; every restart exits at once.
    let command = format!("if [ -e started ]; then exit 3; fi; touch started; {HTTP_SERVER}");
    let started = driver
        .start(request(&dir, "web-development-8", &command))
        .await
        .unwrap();

    kill(Pid::from_raw(started.pid as i32), Signal::SIGKILL).unwrap();

    let mut crashed = Vec::new();
    loop {
        match tokio::time::timeout(PATIENCE, events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            DriverEvent::Crashed { exit, .. } => crashed.push(exit),
            DriverEvent::GaveUp { crashes, .. } => {
                assert_eq!(crashes, 6);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(crashed.len(), 5);
    assert_eq!(crashed[0], "signal 9");
    assert_eq!(crashed[1], "exit code 3 before becoming healthy");
    assert!(driver.status(&id("web-development-8")).await.is_none());
    driver.stop(stop("web-development-8")).await.unwrap();
}
