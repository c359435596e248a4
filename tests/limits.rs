//! Resource limits: a proxy that runs out of file descriptors backs off,
//! neither crashing nor spinning, and serves again once fds free up.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Open-file limit for the proxy under test: enough to start, too few for
/// the connections the test opens.
const NOFILE: u32 = 64;

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Write a one-service config and start `failoverd run` on it, with its
/// open-file limit lowered to `nofile` if given; returns the process and
/// the file its log goes to.
fn spawn_failoverd(
    dir: &TempDir,
    listen: SocketAddr,
    settings: &str,
    backends: &[(&str, SocketAddr)],
    nofile: Option<u32>,
) -> (Proxy, PathBuf) {
    let config = dir.path("failoverd.toml");
    std::fs::write(
        &config,
        format!(
            "[[service]]\nname = \"svc\"\nlisten = \"{listen}\"\n{settings}\n{}",
            backends_toml(backends)
        ),
    )
    .unwrap();
    let log = dir.path("stderr.log");
    let limit = nofile.map_or(String::new(), |n| format!("ulimit -n {n} && "));
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("{limit}exec \"$0\" run -c \"$1\""))
        .arg(env!("CARGO_BIN_EXE_failoverd"))
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn failoverd");
    (Proxy(child), log)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name (which may contain spaces).
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while StdTcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "proxy did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backs_off_on_emfile_and_serves_again_when_fds_free() {
    let backend = TestBackend::start("primary", Mode::Greet).await;
    let dir = TempDir::new("emfile");
    let listen = closed_port().await;
    let (proxy, log) = spawn_failoverd(
        &dir,
        listen,
        "check_interval = \"1h\"\ncheck_timeout = \"1s\"",
        &[("primary", backend.addr)],
        Some(NOFILE),
    );
    let pid = proxy.0.id();

    tokio::task::spawn_blocking(move || {
        wait_listening(listen);
        // Hold more connections than the proxy has fds for.
        let mut held = Vec::new();
        for _ in 0..NOFILE {
            let stream = StdTcpStream::connect(listen).expect("kernel backlog accepts");
            held.push(stream);
        }
        std::thread::sleep(Duration::from_millis(500));
        let before = cpu_ticks(pid);
        std::thread::sleep(Duration::from_secs(2));
        let used = cpu_ticks(pid) - before;
        let ticks_per_sec = 100; // USER_HZ on Linux
        assert!(
            used < ticks_per_sec / 2,
            "proxy burned {used} ticks in 2 s while out of fds: it spins"
        );
        let text = std::fs::read_to_string(&log).unwrap();
        let warnings = text.matches("accept failed").count();
        assert!(warnings >= 1, "EMFILE not logged:\n{text}");
        assert!(
            warnings <= 4,
            "EMFILE logged {warnings} times in ~2.5 s: not rate limited"
        );
        // The process lives on.
        assert!(
            std::fs::metadata(format!("/proc/{pid}")).is_ok(),
            "proxy died"
        );
        // Free the fds: a new client is served, intact.
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut stream = StdTcpStream::connect(listen).expect("connect after recovery");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut greeting = [0u8; 8];
            if stream.read_exact(&mut greeting).is_ok() {
                assert_eq!(&greeting, b"primary\n");
                stream.write_all(b"ping").unwrap();
                let mut echo = [0u8; 4];
                stream.read_exact(&mut echo).unwrap();
                assert_eq!(&echo, b"ping");
                break;
            }
            assert!(Instant::now() < deadline, "proxy did not recover");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .expect("test body");
    drop(proxy);
}

/// During an outage every client's connect to the dead backend fails; the
/// log gets one line a second with a count, not one line per client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_backend_connects_are_logged_once_a_second() {
    let dead = closed_port().await;
    let backup = TestBackend::start("backup", Mode::Greet).await;
    let dir = TempDir::new("logflood");
    let listen = closed_port().await;
    // passive_errors = 0 and hourly checks: the dead primary stays first in line.
    let (proxy, log) = spawn_failoverd(
        &dir,
        listen,
        "check_interval = \"1h\"\ncheck_timeout = \"1s\"\npassive_errors = 0",
        &[("primary", dead), ("backup", backup.addr)],
        None,
    );
    tokio::task::spawn_blocking(move || wait_listening(listen))
        .await
        .unwrap();
    let started = Instant::now();
    for _ in 0..200 {
        assert_eq!(
            who_answers(listen).await.expect("served by backup"),
            "backup"
        );
    }
    let elapsed = started.elapsed();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = text.matches("backend connect failed").count();
    let allowed = 1 + elapsed.as_secs() as usize + 1;
    assert!(lines >= 1, "connect failures not logged:\n{text}");
    assert!(
        lines <= allowed,
        "{lines} lines for 200 failed connects in {elapsed:?}"
    );
    assert!(text.contains("suppressed"), "no suppressed count:\n{text}");
    drop(proxy);
}
