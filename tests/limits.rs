//! Resource limits: a proxy that runs out of file descriptors backs off,
//! neither crashing nor spinning, and serves again once fds free up.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Open-file limit for the proxy under test: enough to start, too few for
/// the connections the test opens.
const NOFILE: u32 = 64;

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name (which may contain spaces).
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backs_off_on_emfile_and_serves_again_when_fds_free() {
    within(60, async {
        let backend = TestBackend::start("primary", Mode::Greet).await;
        let proxy = Launch::new()
            .nofile(NOFILE)
            .start("emfile", |l| {
                l.service()
                    .set("check_interval", "1h")
                    .set("check_timeout", "1s")
                    .backend("primary", backend.addr)
                    .toml()
            })
            .await;
        let (pid, listen) = (proxy.pid(), proxy.listen());

        // Hold more connections than the proxy has fds for.
        let mut held = Vec::new();
        for _ in 0..NOFILE {
            let stream = TcpStream::connect(listen)
                .await
                .expect("kernel backlog accepts");
            held.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = cpu_ticks(pid);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let used = cpu_ticks(pid) - before;
        let ticks_per_sec = 100; // USER_HZ on Linux
        assert!(
            used < ticks_per_sec / 2,
            "proxy burned {used} ticks in 2 s while out of fds: it spins"
        );
        let text = proxy.log();
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
        eventually(
            Duration::from_secs(10),
            "the proxy serving again",
            || async {
                let mut stream = TcpStream::connect(listen)
                    .await
                    .expect("connect after recovery");
                let mut greeting = [0u8; 8];
                let read =
                    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut greeting))
                        .await;
                match read {
                    Ok(Ok(_)) => {}
                    other => return Err(format!("no greeting: {other:?}")),
                }
                assert_eq!(&greeting, b"primary\n");
                stream.write_all(b"ping").await.unwrap();
                let mut echo = [0u8; 4];
                stream.read_exact(&mut echo).await.unwrap();
                assert_eq!(&echo, b"ping");
                Ok(())
            },
        )
        .await;
    })
    .await;
}

/// During an outage every client's connect to the dead backend fails; the
/// log gets one line a second with a count, not one line per client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_backend_connects_are_logged_once_a_second() {
    within(60, async {
        let dead = closed_port().await;
        let backup = TestBackend::start("backup", Mode::Greet).await;
        // passive_errors = 0 and hourly checks: the dead primary stays first in line.
        let proxy = Failoverd::start("logflood", |l| {
            l.service()
                .set("check_interval", "1h")
                .set("check_timeout", "1s")
                .set("passive_errors", 0)
                .backends(&[("primary", dead), ("backup", backup.addr)])
                .toml()
        })
        .await;
        let started = Instant::now();
        for _ in 0..200 {
            assert_eq!(
                who_answers(proxy.listen()).await.expect("served by backup"),
                "backup"
            );
        }
        let elapsed = started.elapsed();
        let text = proxy.log();
        let lines = text.matches("backend connect failed").count();
        let allowed = 1 + elapsed.as_secs() as usize + 1;
        assert!(lines >= 1, "connect failures not logged:\n{text}");
        assert!(
            lines <= allowed,
            "{lines} lines for 200 failed connects in {elapsed:?}"
        );
        assert!(text.contains("suppressed"), "no suppressed count:\n{text}");
    })
    .await;
}
