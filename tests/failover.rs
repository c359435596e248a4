//! The failover engine through a real proxy on loopback: switches on
//! refused, black-holed and hung backends, failback auto/manual with its
//! delay, `on_switch`, `notify` and the switch reasons.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// Fast checks for tests that wait for a switch.
fn fast_checks() -> Table {
    Table::new()
        .set("check_interval", "100ms")
        .set("check_timeout", "100ms")
        .set("rise", 2)
        .set("fall", 2)
}

/// A `Greet` primary and backup, and a proxy in front of them with fast
/// checks and `settings`.
async fn greet_pair(settings: Table) -> (TestBackend, TestBackend, TestProxy) {
    let primary = TestBackend::start("primary", Mode::Greet).await;
    let backup = TestBackend::start("backup", Mode::Greet).await;
    let proxy = TestProxy::start(
        &svc(&[("primary", primary.addr), ("backup", backup.addr)])
            .merge(&fast_checks())
            .merge(&settings)
            .toml(),
    )
    .await;
    (primary, backup, proxy)
}

/// Long enough for any switch these tests wait for.
const SWITCH_LIMIT: Duration = Duration::from_secs(5);

/// `notify` running `sh -c SCRIPT ARG0`.
fn notify_sh(script: &str, arg0: &Path) -> Value {
    Value::from(vec![
        "sh".to_string(),
        "-c".to_string(),
        script.to_string(),
        arg0.display().to_string(),
    ])
}

/// A notify command that appends one line per switch to `log`: every
/// `FAILOVERD_*` variable of its environment as `KEY=VALUE`, sorted.
fn notify_to_log(log: &Path) -> Value {
    notify_sh(
        "line=$(env | grep '^FAILOVERD_' | sort | tr '\\n' ' '); echo \"$line\" >> \"$0\"",
        log,
    )
}

/// Wait until `log` holds `n` lines; parse them into `KEY -> VALUE` maps.
async fn notify_lines(log: &Path, n: usize) -> Vec<BTreeMap<String, String>> {
    let what = format!("{n} lines in the notify log");
    let text = eventually(SWITCH_LIMIT, &what, || async {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().count() >= n {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await;
    text.lines()
        .map(|line| {
            line.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// The notify environment of one switch, for comparison.
fn switch_env(from: &str, to: &str, reason: &str) -> BTreeMap<String, String> {
    [
        ("FAILOVERD_SERVICE", "svc"),
        ("FAILOVERD_FROM", from),
        ("FAILOVERD_TO", to),
        ("FAILOVERD_REASON", reason),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A long-lived client connection through the proxy to a `Greet` backend
/// that keeps moving data: after the greeting it sends 1 KiB and reads it
/// back every 10 ms, until the connection ends.
struct LiveConn {
    /// The backend that greeted.
    backend: String,
    roundtrips: Arc<AtomicUsize>,
    /// Ends with a description of how the connection ended.
    task: JoinHandle<String>,
}

impl LiveConn {
    async fn open(addr: SocketAddr) -> LiveConn {
        let (mut stream, backend) = connect_greeted(addr).await;
        let roundtrips = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let roundtrips = Arc::clone(&roundtrips);
            async move {
                let mut round = 0u64;
                loop {
                    let data = random_bytes(1024, round);
                    if let Err(err) = stream.write_all(&data).await {
                        return format!("write failed: {err}");
                    }
                    let mut back = vec![0u8; data.len()];
                    if let Err(err) = stream.read_exact(&mut back).await {
                        return format!("read failed: {err}");
                    }
                    assert_eq!(back, data, "echo through the proxy");
                    roundtrips.fetch_add(1, Ordering::Relaxed);
                    round += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        let conn = LiveConn {
            backend,
            roundtrips,
            task,
        };
        conn.wait_roundtrips(1).await;
        conn
    }

    fn roundtrips(&self) -> usize {
        self.roundtrips.load(Ordering::Relaxed)
    }

    /// Wait until `more` roundtrips beyond the current count succeeded.
    async fn wait_roundtrips(&self, more: usize) {
        let want = self.roundtrips() + more;
        let what = format!("{want} roundtrips on the connection to {}", self.backend);
        eventually(SWITCH_LIMIT, &what, || async {
            assert!(
                !self.task.is_finished(),
                "the connection to {} ended",
                self.backend
            );
            let done = self.roundtrips();
            if done >= want { Ok(()) } else { Err(done) }
        })
        .await;
    }

    /// Wait for the connection to be closed; returns how it ended.
    async fn closed_within(self, limit: Duration) -> String {
        tokio::time::timeout(limit, self.task)
            .await
            .unwrap_or_else(|_| panic!("the connection to {} is still open", self.backend))
            .expect("client task")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_without_a_failed_client_when_primary_refuses() {
    init_logging();
    within(20, async {
        let mut primary = TestBackend::start("primary", Mode::Greet).await;
        let backup = TestBackend::start("backup", Mode::Greet).await;
        // Defaults: passive_errors = 3, check_interval = 500ms.
        let proxy =
            TestProxy::start(&svc(&[("primary", primary.addr), ("backup", backup.addr)]).toml())
                .await;

        // One connection every 10 ms for 2 s; the primary stops listening
        // after 300 ms, between two connections (a connection the kernel
        // accepted when the server died is lost by any layer-4 proxy).
        let start = Instant::now();
        let mut killed_at = None;
        let mut switched_at = None;
        let mut answers: Vec<(Duration, Result<String, String>)> = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while start.elapsed() < Duration::from_secs(2) {
            tick.tick().await;
            if killed_at.is_none() && start.elapsed() >= Duration::from_millis(300) {
                primary.stop_listening().await;
                primary.stop();
                killed_at = Some(start.elapsed());
            }
            let answer = who_answers(proxy.addr).await.map_err(|e| e.to_string());
            answers.push((start.elapsed(), answer));
            if switched_at.is_none() && proxy.active().await.as_deref() == Some("backup") {
                switched_at = Some(start.elapsed());
            }
        }
        let killed_at = killed_at.expect("primary stopped");

        let failed: Vec<_> = answers.iter().filter(|(_, a)| a.is_err()).collect();
        assert!(
            failed.is_empty(),
            "{} of {} connections failed: {failed:?}",
            failed.len(),
            answers.len()
        );
        assert!(answers.len() > 50, "only {} connections", answers.len());
        let before: Vec<_> = answers.iter().filter(|(t, _)| *t < killed_at).collect();
        assert!(!before.is_empty());
        assert!(
            before.iter().all(|(_, a)| a.as_deref() == Ok("primary")),
            "before the stop the primary answers"
        );
        let after: Vec<_> = answers.iter().filter(|(t, _)| *t > killed_at).collect();
        assert!(
            after.len() > 25,
            "only {} connections after the stop",
            after.len()
        );
        assert!(
            after.iter().all(|(_, a)| a.as_deref() == Ok("backup")),
            "after the stop every connection lands on the backup"
        );
        assert_eq!(proxy.active().await.as_deref(), Some("backup"));
        let status = proxy.proxy.status().await;
        assert_eq!(status.services[0].backends[0].state, "down");
        let switched_at = switched_at.expect("switch seen by the loop");
        eprintln!(
            "refused primary: {} connections, 0 failed, switch {:?} after the stop",
            answers.len(),
            switched_at - killed_at
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_within_fall_checks_when_primary_connects_time_out() {
    init_logging();
    within(20, async {
        let mut primary = TestBackend::start("primary", Mode::Greet).await;
        let backup = TestBackend::start("backup", Mode::Greet).await;
        let proxy = TestProxy::start(
            &svc(&[("primary", primary.addr), ("backup", backup.addr)])
                .set("check_interval", "200ms")
                .set("check_timeout", "200ms")
                .set("fall", 3)
                .set("connect_timeout", "300ms")
                .toml(),
        )
        .await;
        assert_eq!(who_answers(proxy.addr).await.expect("answer"), "primary");
        assert_eq!(proxy.active().await.as_deref(), Some("primary"));

        let holed = Instant::now();
        primary.black_hole().await;
        // fall × check_interval + check_timeout + 1 s slack.
        let bound = Duration::from_millis(3 * 200 + 200 + 1000);
        proxy.wait_active(Some("backup"), bound).await;
        let detected = holed.elapsed();
        assert!(
            detected <= bound,
            "switch took {detected:?}, bound {bound:?}"
        );
        assert_eq!(who_answers(proxy.addr).await.expect("answer"), "backup");
        let status = proxy.proxy.status().await;
        assert_eq!(status.services[0].backends[0].state, "down");
        eprintln!("black-holed primary: switch after {detected:?} (bound {bound:?})");
    })
    .await;
}

/// The performance target: at the defaults (check_interval 500ms, fall 3,
/// check_timeout 500ms, connect_timeout 1s, passive_errors 3), with a
/// client connecting every 20 ms, a black-holed primary has traffic on the
/// backup within 2 s, and no client connection fails: each waits out one
/// connect timeout and is served by the backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_primary_at_defaults_moves_traffic_within_two_seconds() {
    within(20, async {
        let mut primary = TestBackend::start("primary", Mode::Greet).await;
        let backup = TestBackend::start("backup", Mode::Greet).await;
        let proxy =
            TestProxy::start(&svc(&[("primary", primary.addr), ("backup", backup.addr)]).toml())
                .await;
        assert_eq!(who_answers(proxy.addr).await.expect("answer"), "primary");
        primary.black_hole().await;
        let holed = Instant::now();
        let watcher = tokio::spawn({
            let proxy = Arc::clone(&proxy.proxy);
            async move {
                eventually(Duration::from_secs(15), "the pointer on backup", || async {
                    let active = proxy.status().await.services[0].active.clone();
                    if active.as_deref() == Some("backup") {
                        Ok(())
                    } else {
                        Err(active)
                    }
                })
                .await;
                holed.elapsed()
            }
        });
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let addr = proxy.addr;
            clients.spawn(async move {
                let answer = tokio::time::timeout(Duration::from_secs(5), who_answers(addr)).await;
                (answer, holed.elapsed())
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let switched = watcher.await.expect("watcher");
        let mut first_on_backup = None::<Duration>;
        let mut failed = 0;
        while let Some(joined) = clients.join_next().await {
            match joined.expect("client task") {
                (Ok(Ok(name)), at) if name == "backup" => {
                    first_on_backup = Some(first_on_backup.map_or(at, |f| f.min(at)));
                }
                (Ok(Ok(_)), _) => {}
                _ => failed += 1,
            }
        }
        let first = first_on_backup.expect("no connection reached the backup");
        assert_eq!(failed, 0, "client connections failed during the black hole");
        assert!(
            first <= Duration::from_secs(2),
            "first served by backup after {first:?}"
        );
        assert!(
            switched <= Duration::from_secs(2),
            "pointer moved after {switched:?}"
        );
        let status = proxy.proxy.status().await;
        assert_eq!(status.services[0].backends[0].state, "down");
        eprintln!(
            "black-holed primary at defaults: first served by backup {first:?} after the hole; \
             pointer on backup after {switched:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_when_primary_accepts_but_never_answers_the_check() {
    init_logging();
    within(20, async {
        let primary = TestBackend::start("primary", Mode::Hang).await;
        let backup = TestBackend::start("backup", Mode::PingPong).await;
        let proxy = TestProxy::start(
            &svc(&[("primary", primary.addr), ("backup", backup.addr)])
                .merge(&fast_checks())
                .set("check_send", "PING\r\n")
                .set("check_expect", "PONG")
                .toml(),
        )
        .await;
        let took = proxy.wait_active(Some("backup"), SWITCH_LIMIT).await;
        assert_eq!(
            who_answers_when_asked(proxy.addr).await.expect("answer"),
            "backup"
        );
        let status = proxy.proxy.status().await;
        let backends = &status.services[0].backends;
        assert_eq!(
            backends[0].state, "down",
            "the hung primary fails its checks"
        );
        assert_eq!(backends[1].state, "up", "the backup answers PONG");
        assert!(
            primary.accepted() > 0,
            "the checks reached the hung primary"
        );
        // The backup keeps passing its checks: no switch away from it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(proxy.active().await.as_deref(), Some("backup"));
        eprintln!("hung primary: switch after {took:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_back_automatically_after_rise_and_failback_delay() {
    init_logging();
    within(20, async {
        let (mut primary, _backup, proxy) = greet_pair(
            Table::new()
                .set("failback", "auto")
                .set("failback_delay", "1s"),
        )
        .await;
        primary.stop_listening().await;
        primary.stop();
        proxy.wait_active(Some("backup"), SWITCH_LIMIT).await;

        primary.restart().await;
        let back = Instant::now();
        // Up again after `rise` checks, but within failback_delay traffic stays.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(proxy.active().await.as_deref(), Some("backup"));
        assert_eq!(who_answers(proxy.addr).await.expect("answer"), "backup");
        assert_eq!(
            proxy.proxy.status().await.services[0].backends[0].state,
            "up"
        );

        proxy.wait_active(Some("primary"), SWITCH_LIMIT).await;
        let took = back.elapsed();
        let delay = Duration::from_secs(1);
        let bound = 2 * Duration::from_millis(100) + delay + Duration::from_millis(1500);
        assert!(
            took >= delay,
            "failback after {took:?}, before failback_delay"
        );
        assert!(took <= bound, "failback after {took:?}, bound {bound:?}");
        assert_eq!(who_answers(proxy.addr).await.expect("answer"), "primary");
        eprintln!("auto failback: {took:?} after the primary returned (delay {delay:?})");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_failback_stays_on_backup_until_the_backup_fails() {
    init_logging();
    within(20, async {
        let (mut primary, mut backup, proxy) =
            greet_pair(Table::new().set("failback", "manual")).await;
        primary.stop_listening().await;
        primary.stop();
        proxy.wait_active(Some("backup"), SWITCH_LIMIT).await;

        primary.restart().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            proxy.proxy.status().await.services[0].backends[0].state,
            "up",
            "the primary recovered"
        );
        assert_eq!(proxy.active().await.as_deref(), Some("backup"));
        assert_eq!(who_answers(proxy.addr).await.expect("answer"), "backup");

        backup.stop_listening().await;
        backup.stop();
        let took = proxy.wait_active(Some("primary"), SWITCH_LIMIT).await;
        assert_eq!(who_answers(proxy.addr).await.expect("answer"), "primary");
        eprintln!("manual failback: back on the primary {took:?} after the backup failed");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_backup_serves_when_primary_and_first_backup_are_down() {
    init_logging();
    within(20, async {
        let mut primary = TestBackend::start("primary", Mode::Greet).await;
        let mut backup = TestBackend::start("backup", Mode::Greet).await;
        let backup2 = TestBackend::start("backup2", Mode::Greet).await;
        let proxy = TestProxy::start(
            &svc(&[
                ("primary", primary.addr),
                ("backup", backup.addr),
                ("backup2", backup2.addr),
            ])
            .merge(&fast_checks())
            .toml(),
        )
        .await;
        assert_eq!(who_answers(proxy.addr).await.expect("answer"), "primary");
        primary.stop_listening().await;
        primary.stop();
        backup.stop_listening().await;
        backup.stop();
        // Before any switch, the connection tries each backend in turn.
        assert_eq!(who_answers(proxy.addr).await.expect("answer"), "backup2");
        proxy.wait_active(Some("backup2"), SWITCH_LIMIT).await;
        assert_eq!(who_answers(proxy.addr).await.expect("answer"), "backup2");
        let status = proxy.proxy.status().await;
        let states: Vec<&str> = status.services[0]
            .backends
            .iter()
            .map(|b| b.state.as_str())
            .collect();
        assert_eq!(states, ["down", "down", "up"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_switch_close_closes_connections_on_failover_and_failback() {
    init_logging();
    within(20, async {
        let (mut primary, _backup, proxy) =
            greet_pair(Table::new().set("on_switch", "close")).await;
        let on_primary = LiveConn::open(proxy.addr).await;
        assert_eq!(on_primary.backend, "primary");

        // The primary stops listening, its checks fail; the connection it
        // already accepted stays open on its side and keeps moving data.
        primary.stop_listening().await;
        on_primary.wait_roundtrips(3).await;
        proxy.wait_active(Some("backup"), SWITCH_LIMIT).await;
        let ended = on_primary.closed_within(Duration::from_secs(1)).await;
        eprintln!("connection to the failed primary closed at the switch: {ended}");

        let on_backup = LiveConn::open(proxy.addr).await;
        assert_eq!(on_backup.backend, "backup");
        primary.restart().await;
        proxy.wait_active(Some("primary"), SWITCH_LIMIT).await;
        let ended = on_backup.closed_within(Duration::from_secs(1)).await;
        eprintln!("connection to the backup closed at failback: {ended}");
        assert_eq!(who_answers(proxy.addr).await.expect("answer"), "primary");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_switch_close_closes_connections_when_the_active_backend_is_disabled() {
    init_logging();
    within(20, async {
        let (_primary, _backup, proxy) = greet_pair(Table::new().set("on_switch", "close")).await;
        let on_primary = LiveConn::open(proxy.addr).await;
        assert_eq!(on_primary.backend, "primary");
        proxy
            .proxy
            .set_enabled("svc", "primary", false)
            .await
            .expect("disable");
        assert_eq!(proxy.active().await.as_deref(), Some("backup"));
        on_primary.closed_within(Duration::from_secs(1)).await;
        assert_eq!(who_answers(proxy.addr).await.expect("answer"), "backup");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_switch_keep_lets_connections_run_across_the_switch() {
    init_logging();
    within(20, async {
        let (mut primary, _backup, proxy) = greet_pair(Table::new().set("on_switch", "keep")).await;
        let on_primary = LiveConn::open(proxy.addr).await;
        assert_eq!(on_primary.backend, "primary");

        primary.stop_listening().await;
        proxy.wait_active(Some("backup"), SWITCH_LIMIT).await;
        let on_backup = LiveConn::open(proxy.addr).await;
        assert_eq!(on_backup.backend, "backup");
        // Well after the switch, the old connection still echoes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        on_primary.wait_roundtrips(10).await;
        on_backup.wait_roundtrips(1).await;
        let status = proxy.proxy.status().await;
        let connections: Vec<u64> = status.services[0]
            .backends
            .iter()
            .map(|b| b.connections)
            .collect();
        assert_eq!(connections, [1, 1], "one open connection on each backend");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_gets_service_from_to_and_reason_of_each_switch() {
    init_logging();
    within(20, async {
        let dir = TempDir::new("notify");
        let log = dir.path("switches.log");
        let (_primary, _backup, proxy) =
            greet_pair(Table::new().set("notify", notify_to_log(&log))).await;
        let p = &proxy.proxy;

        p.set_enabled("svc", "primary", false)
            .await
            .expect("disable");
        assert_eq!(
            notify_lines(&log, 1).await[0],
            switch_env("primary", "backup", "disabled")
        );

        p.set_enabled("svc", "primary", true).await.expect("enable");
        assert_eq!(
            notify_lines(&log, 2).await[1],
            switch_env("backup", "primary", "failback")
        );

        // No backend left: FAILOVERD_TO is empty.
        p.set_enabled("svc", "backup", false)
            .await
            .expect("disable");
        p.set_enabled("svc", "primary", false)
            .await
            .expect("disable");
        assert_eq!(proxy.active().await, None);
        assert_eq!(
            notify_lines(&log, 3).await[2],
            switch_env("primary", "", "disabled")
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_notify_does_not_delay_the_next_switch() {
    init_logging();
    within(20, async {
        let dir = TempDir::new("slow-notify");
        let started = dir.path("started");
        let (_primary, _backup, proxy) = greet_pair(Table::new().set(
            "notify",
            notify_sh(
                "echo \"$FAILOVERD_REASON\" >> \"$0\"; exec sleep 30",
                &started,
            ),
        ))
        .await;
        let p = &proxy.proxy;

        p.set_enabled("svc", "primary", false)
            .await
            .expect("disable");
        proxy.wait_active(Some("backup"), SWITCH_LIMIT).await;
        // The first notify is running (and sleeping).
        eventually(SWITCH_LIMIT, "the first notify running", || async {
            let text = std::fs::read_to_string(&started).unwrap_or_default();
            if text.lines().count() >= 1 {
                Ok(())
            } else {
                Err(text)
            }
        })
        .await;

        let enabled = Instant::now();
        p.set_enabled("svc", "primary", true).await.expect("enable");
        proxy
            .wait_active(Some("primary"), Duration::from_secs(1))
            .await;
        let took = enabled.elapsed();
        assert!(took < Duration::from_secs(1), "failback took {took:?}");
        assert_eq!(who_answers(proxy.addr).await.expect("answer"), "primary");
        eprintln!("failback {took:?} after enable, with a sleeping notify");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connects_on_live_traffic_switch_with_reason_passive() {
    init_logging();
    within(20, async {
        let dir = TempDir::new("passive");
        let log = dir.path("switches.log");
        let mut primary = TestBackend::start("primary", Mode::Greet).await;
        let backup = TestBackend::start("backup", Mode::Greet).await;
        // Checks run at start-up and then once an hour: only live traffic
        // can notice the primary is gone.
        let proxy = TestProxy::start(
            &svc(&[("primary", primary.addr), ("backup", backup.addr)])
                .set("check_interval", "1h")
                .set("check_timeout", "1s")
                .set("passive_errors", 3)
                .set("notify", notify_to_log(&log))
                .toml(),
        )
        .await;
        assert_eq!(who_answers(proxy.addr).await.expect("answer"), "primary");
        primary.stop_listening().await;
        primary.stop();

        for _ in 0..3 {
            assert_eq!(who_answers(proxy.addr).await.expect("answer"), "backup");
        }
        proxy.wait_active(Some("backup"), SWITCH_LIMIT).await;
        let status = proxy.proxy.status().await;
        let backends = &status.services[0].backends;
        assert_eq!(backends[0].state, "down");
        assert_eq!(backends[1].state, "up");
        assert!(backends[1].active);
        assert_eq!(
            notify_lines(&log, 1).await[0],
            switch_env("primary", "backup", "passive")
        );
    })
    .await;
}
