//! `run --takeover` through the binary (SPEC.md: Takeover): a second
//! `failoverd run --takeover` on the same config receives the running
//! instance's listening sockets and health state over its control socket;
//! the old one drains and exits 0. A client opening a connection every
//! 10 ms across the upgrade sees no refused or reset connect, and a backend
//! that was down stays down (no client reaches it, no switch).

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// The backend that answered a client through `addr`, or the error.
async fn answer(addr: SocketAddr) -> Result<String, String> {
    greeted_by(addr, Duration::from_secs(5)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_under_load_refuses_nothing_and_keeps_health() {
    within(60, async {
        // The primary accepts but fails its checks: down, the backup active.
        let primary = TestBackend::start("primary", Mode::Status).await;
        primary.set_healthy(false);
        let backup = TestBackend::start("backup", Mode::Status).await;
        let backends = [("primary", primary.addr), ("backup", backup.addr)];
        let mut old = Failoverd::start("takeover", |layout| {
            layout
                .config(
                    layout
                        .service()
                        .set("check_interval", "200ms")
                        .set("check_timeout", "200ms")
                        .set("check_expect", "OK")
                        .backends(&backends),
                )
                .to_string()
        })
        .await;
        let listen = old.listen();
        old.wait_for_log("active backend switched", Duration::from_secs(10))
            .await;
        assert_eq!(answer(listen).await.unwrap(), "backup");

        // A client every 10 ms, from before the upgrade to after it.
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn({
            let stop = Arc::clone(&stop);
            async move {
                let mut clients = tokio::task::JoinSet::new();
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                while !stop.load(Ordering::SeqCst) {
                    tick.tick().await;
                    clients.spawn(answer(listen));
                }
                let mut results = Vec::new();
                while let Some(r) = clients.join_next().await {
                    results.push(r.expect("client"));
                }
                results
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;

        let (config, socket, new_log) = {
            let layout = old.layout();
            (
                layout.config_arg().to_string(),
                layout.socket.to_str().expect("utf-8").to_string(),
                layout.path("new.log"),
            )
        };
        let started = Instant::now();
        let mut new = Command::new(failoverd_bin())
            .args(["run", "-c", &config, "--takeover"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&new_log).expect("log file"))
            .spawn()
            .expect("spawn failoverd run --takeover");
        let code = old.wait_exit(Duration::from_secs(20)).await;
        let took = started.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::SeqCst);
        let results = load.await.expect("load");
        let log = std::fs::read_to_string(&new_log).unwrap_or_default();
        let _guard = KillOnDrop(&mut new);

        assert_eq!(code, Some(0), "the old instance's exit:\n{}", old.log());
        let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
        assert!(
            failed.is_empty(),
            "{} of {} clients failed across the upgrade: {failed:?}\nnew:\n{log}",
            failed.len(),
            results.len()
        );
        let to_primary = results
            .iter()
            .filter(|r| r.as_deref() == Ok("primary"))
            .count();
        assert_eq!(
            to_primary, 0,
            "clients reached the down primary\nnew:\n{log}"
        );
        assert!(log.contains("took over"), "{log}");
        assert!(
            !log.contains("active backend switched")
                && !log.contains("first active backend chosen"),
            "the upgrade caused a switch:\n{log}"
        );
        eprintln!(
            "takeover: {} clients across the upgrade, 0 failed, old exited 0 after {} ms",
            results.len(),
            took.as_millis()
        );
        // The new process answers on the control socket and serves.
        let out = run_failoverd(
            &["ctl", "--socket", &socket, "status", "--json"],
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(out.code, Some(0), "{out:?}");
        let status: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(status["services"][0]["active"], "backup");
        assert_eq!(status["services"][0]["backends"][0]["state"], "down");
        assert_eq!(answer(listen).await.unwrap(), "backup");
    })
    .await;
}

/// SIGUSR2 is the upgrade in one step: the running instance starts the
/// binary at its own path with `--takeover`; the successor takes over and
/// the old one exits 0, with clients served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_starts_the_successor_which_takes_over() {
    within(60, async {
        let backend = TestBackend::start("backend", Mode::Greet).await;
        let mut old = Failoverd::start("takeover-usr2", |layout| {
            layout
                .config(layout.service().backend("backend", backend.addr))
                .to_string()
        })
        .await;
        let listen = old.listen();
        let config = old.layout().config_arg().to_string();
        let old_pid = old.pid();
        old.signal(Signal::Usr2);
        let code = old.wait_exit(Duration::from_secs(20)).await;
        let successor = successor_of(&config, old_pid);
        let _guard = successor.map(KillPid);
        assert_eq!(code, Some(0), "{}", old.log());
        assert!(successor.is_some(), "no successor runs:\n{}", old.log());
        assert_eq!(answer(listen).await.unwrap(), "backend");
        assert!(old.log().contains("took over"), "{}", old.log());
    })
    .await;
}

/// The pid of a `failoverd run --takeover` on `config` other than `not`.
fn successor_of(config: &str, not: u32) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let has = |want: &str| args.contains(&want.as_bytes());
            (pid != not && has(config) && has("--takeover")).then_some(pid)
        })
}

struct KillPid(u32);

impl Drop for KillPid {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

/// `--takeover` with nothing running on the socket starts as a plain run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_with_nothing_running_starts_plainly() {
    within(30, async {
        let backend = TestBackend::start("backend", Mode::Greet).await;
        let proxy = Launch::new()
            .arg("--takeover")
            .start("takeover-plain", |layout| {
                layout
                    .config(layout.service().backend("backend", backend.addr))
                    .to_string()
            })
            .await;
        assert_eq!(answer(proxy.listen()).await.unwrap(), "backend");
        assert!(
            proxy
                .log()
                .contains("nothing runs there, starting as a plain run")
        );
    })
    .await;
}

struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
