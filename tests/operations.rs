//! The binary as an operator runs it: `check`, `run` exit statuses,
//! `/metrics`, SIGHUP reloads under load, SIGTERM draining and `ctl`.
//!
//! Every test starts the real `failoverd` executable with a config written
//! into its own temp dir (its own ports and control socket), so the tests
//! run in parallel. [`Failoverd`] kills the child when dropped, so a
//! failing test leaks no process.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bounds every wait on the daemon (start-up, exit, a metric to appear)
/// and every one-shot command.
const LIMIT: Duration = Duration::from_secs(10);

/// SPEC.md's metrics table: name, type, labels.
const SPEC_METRICS: &[(&str, &str, &[&str])] = &[
    (
        "failoverd_connections_total",
        "counter",
        &["service", "backend"],
    ),
    (
        "failoverd_connections_active",
        "gauge",
        &["service", "backend"],
    ),
    (
        "failoverd_connect_errors_total",
        "counter",
        &["service", "backend"],
    ),
    ("failoverd_client_failures_total", "counter", &["service"]),
    (
        "failoverd_bytes_total",
        "counter",
        &["service", "backend", "direction"],
    ),
    ("failoverd_backend_up", "gauge", &["service", "backend"]),
    ("failoverd_backend_active", "gauge", &["service", "backend"]),
    (
        "failoverd_switches_total",
        "counter",
        &["service", "from", "to", "reason"],
    ),
    (
        "failoverd_health_checks_total",
        "counter",
        &["service", "backend", "result"],
    ),
    (
        "failoverd_health_check_duration_seconds",
        "histogram",
        &["service", "backend"],
    ),
    (
        "failoverd_last_health_check_timestamp_seconds",
        "gauge",
        &["service", "backend"],
    ),
    ("failoverd_config_reloads_total", "counter", &["result"]),
    ("failoverd_config_last_reload_successful", "gauge", &[]),
];

/// Wait until new connections are answered by `want`.
async fn wait_answered_by(addr: SocketAddr, want: &str, limit: Duration) {
    eventually(
        limit,
        &format!("new connections answered by {want}"),
        || async {
            let got = answered_by(addr).await;
            if got == want { Ok(()) } else { Err(got) }
        },
    )
    .await;
}

fn backend_names(status: &serde_json::Value) -> Vec<String> {
    status["services"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["name"].as_str().expect("name").to_string())
        .collect()
}

// ---------------------------------------------------------------------------
// 1. check / run exit statuses
// ---------------------------------------------------------------------------

/// A config whose `check_interval` has no unit.
fn bad_config(dir: &TempDir) -> (PathBuf, String) {
    let path = dir.path("bad.toml");
    let text = Service::new("svc")
        .listen("127.0.0.1:1")
        .set("check_interval", "5")
        .backend("primary", "127.0.0.1:2")
        .toml();
    std::fs::write(&path, text).expect("write bad config");
    let display = path.display().to_string();
    (path, display)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_the_example_config_and_prints_every_service() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let out = run_failoverd(&["check", "-c", example], LIMIT).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    for want in [
        "service \"db\"",
        "service \"web\"",
        "service \"cache\"",
        "check postgres as failoverd@postgres",
        "check redis ROLE master",
        "hold_timeout 5s",
        "1. primary",
        "2. standby",
        "3. dr",
        "1. web-1",
        "2. web-2",
    ] {
        assert!(
            out.stdout.contains(want),
            "missing {want:?} in:\n{}",
            out.stdout
        );
    }
    let primary = out.stdout.find("1. primary").expect("primary");
    let standby = out.stdout.find("2. standby").expect("standby");
    assert!(primary < standby, "backends in priority order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_run_reject_a_bad_config_with_exit_2_naming_file_and_key() {
    let dir = TempDir::new("badcfg");
    let (path, display) = bad_config(&dir);
    let path = path.to_str().expect("utf-8");
    let check = run_failoverd(&["check", "-c", path], LIMIT).await;
    assert_eq!(check.code, Some(2), "{check:?}");
    assert!(check.stdout.is_empty(), "nothing on stdout: {check:?}");
    assert!(
        check.stderr.contains(&display) && check.stderr.contains("check_interval"),
        "stderr names the file and the key: {:?}",
        check.stderr
    );
    let run = run_failoverd(&["run", "-c", path], LIMIT).await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert_eq!(
        run.stderr.trim(),
        check.stderr.trim(),
        "run reports the same error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exits_1_naming_service_and_address_when_listen_address_is_taken() {
    let mut layout = Layout::new("inuse");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    layout.listen = addr;
    let dead = closed_port().await;
    layout.write(
        &layout
            .config(layout.service().backend("primary", dead))
            .to_string(),
    );
    let out = run_failoverd(&["run", "-c", layout.config_arg()], LIMIT).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("service \"svc\"") && out.stderr.contains(&addr.to_string()),
        "stderr names the service and address: {:?}",
        out.stderr
    );
    // The control socket was created before the listeners: a failed start
    // does not leave it behind.
    assert!(!layout.socket.exists(), "control socket left behind");
    drop(taken);
}

// ---------------------------------------------------------------------------
// 2. /metrics
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_every_spec_metric_with_its_labels_after_traffic_a_switch_and_a_reload() {
    within(30, async {
        let primary = TestBackend::start("primary", Mode::Greet).await;
        let backup = TestBackend::start("backup", Mode::Greet).await;
        let backends = [("primary", primary.addr), ("backup", backup.addr)];
        let daemon = Failoverd::start("metrics", |l| {
            l.config(
                l.service()
                    .set("check_interval", "100ms")
                    .set("check_timeout", "100ms")
                    .backends(&backends),
            )
            .to_string()
        })
        .await;

        // Traffic through the primary: the greeting, then an echoed payload.
        let payload = random_bytes(64 * 1024, 7);
        let (mut stream, who) = connect_greeted(daemon.listen()).await;
        assert_eq!(who, "primary");
        echo_once(&mut stream, &payload).await.expect("echo");
        drop(stream);
        let sent = payload.len() as f64;
        let received = (payload.len() + "primary\n".len()) as f64;

        // One switch: maintenance of the primary.
        let out = daemon.ctl(&["disable", "svc", "primary"]).await;
        assert_eq!(out.code, Some(0), "{out:?}");
        assert_eq!(answered_by(daemon.listen()).await, "backup");
        // One reload, so both reload metrics exist.
        let out = daemon.ctl(&["reload"]).await;
        assert_eq!(out.code, Some(0), "{out:?}");

        let svc = ("service", "svc");
        let m = daemon
            .metrics_until(LIMIT, "bytes, checks and the reload", |m| {
                let bytes = |dir| {
                    m.value(
                        "failoverd_bytes_total",
                        &[svc, ("backend", "primary"), ("direction", dir)],
                    )
                    .unwrap_or(0.0)
                };
                bytes("to_backend") >= sent
                    && bytes("to_client") >= received
                    && ["primary", "backup"].iter().all(|b| {
                        m.value(
                            "failoverd_health_checks_total",
                            &[svc, ("backend", b), ("result", "ok")],
                        )
                        .unwrap_or(0.0)
                            >= 1.0
                    })
            })
            .await;

        // Every name in SPEC.md's table, of its type, with exactly its labels.
        for (name, kind, labels) in SPEC_METRICS {
            assert!(
                m.has_type(name, kind),
                "no `# TYPE {name} {kind}`:\n{}",
                m.text
            );
            let want: BTreeSet<&str> = labels.iter().copied().collect();
            let series: Vec<String> = if *kind == "histogram" {
                vec![format!("{name}_sum"), format!("{name}_count")]
            } else {
                vec![name.to_string()]
            };
            for series in series {
                let samples: Vec<&Sample> = m.samples(&series, &[]).collect();
                assert!(!samples.is_empty(), "no sample of {series}:\n{}", m.text);
                for s in samples {
                    let got: BTreeSet<&str> = s.labels.keys().map(String::as_str).collect();
                    assert_eq!(got, want, "labels of {series}");
                }
            }
            if *kind == "histogram" {
                let bucket = format!("{name}_bucket");
                let mut want = want.clone();
                want.insert("le");
                let samples: Vec<&Sample> = m.samples(&bucket, &[]).collect();
                assert!(!samples.is_empty(), "no {bucket}");
                for s in samples {
                    let got: BTreeSet<&str> = s.labels.keys().map(String::as_str).collect();
                    assert_eq!(got, want, "labels of {bucket}");
                }
            }
        }
        for s in m.samples("failoverd_bytes_total", &[]) {
            let dir = s.labels["direction"].as_str();
            assert!(dir == "to_backend" || dir == "to_client", "direction {dir}");
        }
        for s in m.samples("failoverd_health_checks_total", &[]) {
            let result = s.labels["result"].as_str();
            assert!(result == "ok" || result == "fail", "result {result}");
        }

        // backend_up / backend_active agree with `ctl status --json`.
        let status = daemon.status_json().await;
        let m = daemon.metrics().await;
        assert_eq!(status["services"][0]["active"], "backup");
        for b in status["services"][0]["backends"]
            .as_array()
            .expect("backends")
        {
            let name = b["name"].as_str().expect("name");
            let labels = [svc, ("backend", name)];
            let up = if b["state"] == "up" { 1.0 } else { 0.0 };
            let active = if b["active"] == true { 1.0 } else { 0.0 };
            assert_eq!(
                m.value("failoverd_backend_up", &labels),
                Some(up),
                "{name} up"
            );
            assert_eq!(
                m.value("failoverd_backend_active", &labels),
                Some(active),
                "{name} active"
            );
        }
        assert_eq!(
            m.value(
                "failoverd_switches_total",
                &[
                    svc,
                    ("from", "primary"),
                    ("to", "backup"),
                    ("reason", "disabled")
                ]
            ),
            Some(1.0),
            "{}",
            m.text
        );
        assert!(
            m.value(
                "failoverd_connections_total",
                &[svc, ("backend", "primary")]
            )
            .unwrap_or(0.0)
                >= 1.0
        );
        assert_eq!(
            m.value("failoverd_client_failures_total", &[svc]),
            Some(0.0)
        );
        assert_eq!(
            m.value("failoverd_config_reloads_total", &[("result", "ok")]),
            Some(1.0)
        );
        assert_eq!(
            m.value("failoverd_config_last_reload_successful", &[]),
            Some(1.0)
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let last = m
            .value(
                "failoverd_last_health_check_timestamp_seconds",
                &[svc, ("backend", "backup")],
            )
            .expect("last check timestamp");
        assert!((now - last).abs() < 60.0, "last check {last}, now {now}");
    })
    .await;
}

// ---------------------------------------------------------------------------
// 3. Reload under load
// ---------------------------------------------------------------------------

/// Open a new connection every 5 ms until `stop`; each must be greeted.
/// Returns the greeted count, the failures and who answered.
async fn greet_loop(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
) -> (usize, Vec<String>, BTreeSet<String>) {
    let mut ok = 0;
    let mut failures = Vec::new();
    let mut seen = BTreeSet::new();
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_secs(3), who_answers(addr)).await {
            Ok(Ok(name)) => {
                ok += 1;
                seen.insert(name);
            }
            Ok(Err(err)) => failures.push(format!("{:?}: {err}", err.kind())),
            Err(_) => failures.push("no greeting within 3s".into()),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (ok, failures, seen)
}

/// Keep one connection moving data (a chunk echoed every 20 ms) until
/// `stop`; returns the rounds done or the first failure.
async fn echo_loop(addr: SocketAddr, stop: Arc<AtomicBool>) -> Result<usize, String> {
    let (mut stream, who) = connect_greeted(addr).await;
    assert_eq!(who, "primary", "the long connection starts on the primary");
    let mut rounds = 0;
    while !stop.load(Ordering::Relaxed) {
        let chunk = random_bytes(1024, rounds as u64);
        echo_once(&mut stream, &chunk)
            .await
            .map_err(|e| format!("round {rounds}: {e}"))?;
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(rounds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_under_load_refuse_nothing_and_keep_established_connections() {
    within(40, async {
        let primary = TestBackend::start("primary", Mode::Greet).await;
        let backup = TestBackend::start("backup", Mode::Greet).await;
        let normal = [("primary", primary.addr), ("backup", backup.addr)];
        let swapped = [("backup", backup.addr), ("primary", primary.addr)];
        // on_switch = "keep" in every version: reload 4 swaps the order, so
        // the active backend moves to "backup" (reason reload) and reload 5
        // moves it back. The long echo connection lives on "primary"; with
        // "close" the swap would (rightly, per SPEC.md) close it. "keep"
        // makes every reload one that must not touch it, so it has to
        // survive all ten.
        let base = |l: &Layout| {
            l.service()
                .set("on_switch", "keep")
                .set("check_interval", "100ms")
                .set("check_timeout", "100ms")
        };
        let daemon = Failoverd::start("reload", |l| {
            l.config(base(l).backends(&normal)).to_string()
        })
        .await;
        let l = daemon.layout();
        let version = |service: Service| l.config(service).to_string();
        let original = version(base(l).backends(&normal));
        // check_timeout > check_interval; other backend names, to show
        // that none of this file is applied.
        let invalid = version(
            base(l)
                .set("check_timeout", "1s")
                .backends(&[("other", backup.addr), ("another", primary.addr)]),
        );
        // The ten reloads, 150 ms apart: (file contents, valid?).
        let versions: Vec<(String, bool)> = vec![
            (version(base(l).set("fall", 2).backends(&normal)), true),
            (
                version(base(l).set("rise", 3).set("fall", 4).backends(&normal)),
                true,
            ),
            (
                version(base(l).set("connect_timeout", "500ms").backends(&normal)),
                true,
            ),
            (version(base(l).backends(&swapped)), true),
            (version(base(l).backends(&normal)), true),
            (invalid, false),
            (
                version(base(l).set("idle_timeout", "10m").backends(&normal)),
                true,
            ),
            (
                version(base(l).set("max_connections", 1000).backends(&normal)),
                true,
            ),
            (
                version(
                    base(l)
                        .set("passive_errors", 5)
                        .set("failback_delay", "0s")
                        .backends(&normal),
                ),
                true,
            ),
            (original.clone(), true),
        ];

        let stop = Arc::new(AtomicBool::new(false));
        let echo = tokio::spawn(echo_loop(daemon.listen(), Arc::clone(&stop)));
        let greet = tokio::spawn(greet_loop(daemon.listen(), Arc::clone(&stop)));
        tokio::time::sleep(Duration::from_millis(150)).await;

        let (mut ok, mut error) = (0.0, 0.0);
        for (i, (text, valid)) in versions.iter().enumerate() {
            let n = i + 1;
            let started = Instant::now();
            daemon.write_config(text);
            daemon.signal(Signal::Hup);
            if *valid {
                ok += 1.0;
            } else {
                error += 1.0;
            }
            let m = daemon
                .metrics_until(LIMIT, &format!("reload {n} counted"), |m| {
                    m.value("failoverd_config_reloads_total", &[("result", "ok")])
                        .unwrap_or(0.0)
                        == ok
                        && m.value("failoverd_config_reloads_total", &[("result", "error")])
                            .unwrap_or(0.0)
                            == error
                })
                .await;
            let successful = m.value("failoverd_config_last_reload_successful", &[]);
            assert_eq!(
                successful,
                Some(if *valid { 1.0 } else { 0.0 }),
                "after reload {n}"
            );
            match n {
                4 => assert_eq!(daemon.active().await.as_deref(), Some("backup")),
                5 => assert_eq!(daemon.active().await.as_deref(), Some("primary")),
                6 => {
                    // The old config keeps running.
                    let status = daemon.status_json().await;
                    assert_eq!(backend_names(&status), ["primary", "backup"]);
                    assert_eq!(status["services"][0]["active"], "primary");
                    assert_eq!(answered_by(daemon.listen()).await, "primary");
                    // `ctl reload` of the same file: exit 2 and why.
                    let out = daemon.ctl(&["reload"]).await;
                    assert_eq!(out.code, Some(2), "{out:?}");
                    assert!(
                        out.stderr.contains("check_timeout")
                            && out.stderr.contains(&l.config.display().to_string()),
                        "ctl reload says why: {:?}",
                        out.stderr
                    );
                    error += 1.0;
                }
                _ => {}
            }
            if let Some(rest) = Duration::from_millis(150).checked_sub(started.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
        assert!(daemon.log().contains("config reload rejected"));

        stop.store(true, Ordering::Relaxed);
        let rounds = echo.await.expect("echo task");
        let (greeted, failures, seen) = greet.await.expect("greet task");
        assert!(
            failures.is_empty(),
            "{} of {} new connections failed during reloads: {failures:?}",
            failures.len(),
            greeted + failures.len()
        );
        assert!(greeted >= 50, "only {greeted} connections made");
        assert_eq!(
            seen,
            BTreeSet::from(["backup".to_string(), "primary".to_string()]),
            "the swap sent new connections to the backup for a while"
        );
        let rounds = rounds.expect("the established connection survives every reload");
        assert!(rounds >= 20, "only {rounds} echo rounds");
        let status = daemon.status_json().await;
        assert_eq!(backend_names(&status), ["primary", "backup"]);
        assert_eq!(status["services"][0]["active"], "primary");
    })
    .await;
}

// ---------------------------------------------------------------------------
// 4. Reload while the primary is down
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_while_primary_is_down_keeps_traffic_on_the_backup() {
    within(30, async {
        let mut primary = TestBackend::start("primary", Mode::Greet).await;
        let backup = TestBackend::start("backup", Mode::Greet).await;
        let backends = [("primary", primary.addr), ("backup", backup.addr)];
        // passive_errors off: only the health checks may mark it down.
        let daemon = Failoverd::start("reloaddown", |l| {
            l.config(
                l.service()
                    .set("check_interval", "100ms")
                    .set("check_timeout", "100ms")
                    .set("fall", 2)
                    .set("passive_errors", 0)
                    .backends(&backends),
            )
            .to_string()
        })
        .await;
        assert_eq!(answered_by(daemon.listen()).await, "primary");

        primary.stop();
        eventually(LIMIT, "primary marked down", || async {
            let status = daemon.status_json().await;
            let service = &status["services"][0];
            if service["active"] == "backup" && service["backends"][0]["state"] == "down" {
                Ok(())
            } else {
                Err(status)
            }
        })
        .await;

        // Same backends, new timings.
        let l = daemon.layout();
        daemon.write_config(
            &l.config(
                l.service()
                    .set("check_interval", "300ms")
                    .set("check_timeout", "200ms")
                    .set("fall", 3)
                    .set("passive_errors", 0)
                    .backends(&backends),
            )
            .to_string(),
        );
        daemon.signal(Signal::Hup);
        daemon
            .metrics_until(LIMIT, "the reload", |m| {
                m.value("failoverd_config_reloads_total", &[("result", "ok")]) == Some(1.0)
            })
            .await;
        for i in 0..20 {
            assert_eq!(
                answered_by(daemon.listen()).await,
                "backup",
                "connection {i}"
            );
        }
        let status = daemon.status_json().await;
        assert_eq!(status["services"][0]["active"], "backup");
        assert_eq!(status["services"][0]["backends"][0]["state"], "down");
        let m = daemon.metrics().await;
        assert!(
            m.samples("failoverd_switches_total", &[("reason", "reload")])
                .next()
                .is_none(),
            "no switch by reload:\n{}",
            m.text
        );
        assert_eq!(
            m.value(
                "failoverd_connect_errors_total",
                &[("service", "svc"), ("backend", "primary")]
            ),
            Some(0.0),
            "no client connection tried the stopped primary"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// 5. SIGTERM
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_refuses_new_connections_and_exits_0_when_the_last_one_ends() {
    within(30, async {
        let backend = TestBackend::start("primary", Mode::Greet).await;
        let mut daemon = Failoverd::start("term", |l| {
            l.config(l.service().backend("primary", backend.addr))
                .set_admin("shutdown_timeout", "20s")
                .to_string()
        })
        .await;
        let (mut stream, _) = connect_greeted(daemon.listen()).await;
        echo_once(&mut stream, b"before").await.expect("echo");

        daemon.signal(Signal::Term);
        let sent = Instant::now();
        eventually(LIMIT, "new connects refused after SIGTERM", || async {
            match TcpStream::connect(daemon.listen()).await {
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
                // Caught in the handshake as the listener closed: try again.
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => Err("reset"),
                Err(err) => panic!("connect failed with {err}, wanted refused"),
                // Accepted before the listener closed: let it go.
                Ok(_probe) => Err("accepted"),
            }
        })
        .await;
        let refused_after = sent.elapsed();
        assert!(
            refused_after < Duration::from_millis(250),
            "new connects refused only {refused_after:?} after SIGTERM"
        );

        // The open connection keeps moving data while the proxy drains.
        for round in 0..10u8 {
            echo_once(&mut stream, &[round; 512])
                .await
                .expect("the open connection works while draining");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(daemon.running(), "exited with a connection still open");

        // The client closes: the proxy passes the FIN on, the backend
        // closes, and failoverd exits.
        stream.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.expect("read to EOF");
        drop(stream);
        assert_eq!(daemon.wait_exit(Duration::from_secs(5)).await, Some(0));
        let log = daemon.log();
        assert!(log.contains("closed_by_force=0"), "log:\n{log}");
        assert!(
            !daemon.layout().socket.exists(),
            "the control socket is removed"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_connections_still_open_after_shutdown_timeout_and_exits_0() {
    within(30, async {
        let backend = TestBackend::start("primary", Mode::Greet).await;
        let mut daemon = Failoverd::start("termforce", |l| {
            l.config(l.service().backend("primary", backend.addr))
                .set_admin("shutdown_timeout", "1s")
                .to_string()
        })
        .await;
        // A connection that never closes on its own.
        let (mut stream, _) = connect_greeted(daemon.listen()).await;

        daemon.signal(Signal::Term);
        let sent = Instant::now();
        assert_eq!(daemon.wait_exit(Duration::from_secs(5)).await, Some(0));
        let took = sent.elapsed();
        assert!(
            took >= Duration::from_millis(800) && took <= Duration::from_secs(5),
            "exited {took:?} after SIGTERM with shutdown_timeout 1s"
        );
        let log = daemon.log();
        assert!(log.contains("closed_by_force=1"), "log:\n{log}");
        // The proxy closed it.
        let mut buf = [0u8; 16];
        let n = within(5, stream.read(&mut buf)).await.unwrap_or(0);
        assert_eq!(n, 0, "the forced connection is closed");
    })
    .await;
}

// ---------------------------------------------------------------------------
// 6. ctl and the control socket
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_disable_moves_traffic_and_enable_brings_it_back() {
    within(30, async {
        let primary = TestBackend::start("primary", Mode::Greet).await;
        let backup = TestBackend::start("backup", Mode::Greet).await;
        let backends = [("primary", primary.addr), ("backup", backup.addr)];
        let daemon = Failoverd::start("ctl", |l| {
            l.config(
                l.service()
                    .set("check_interval", "100ms")
                    .set("check_timeout", "100ms")
                    .backends(&backends),
            )
            .to_string()
        })
        .await;

        let mode = std::fs::metadata(daemon.socket())
            .expect("socket exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

        let table = daemon.ctl(&["status"]).await;
        assert_eq!(table.code, Some(0), "{table:?}");
        for want in ["svc", "primary", "backup", &primary.addr.to_string()] {
            assert!(
                table.stdout.contains(want),
                "missing {want}:\n{}",
                table.stdout
            );
        }

        // `-c FILE` finds the socket from admin.socket.
        let out = run_failoverd(
            &[
                "ctl",
                "-c",
                daemon.layout().config_arg(),
                "status",
                "--json",
            ],
            LIMIT,
        )
        .await;
        assert_eq!(out.code, Some(0), "{out:?}");
        let status: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
        assert_eq!(status["services"][0]["name"], "svc");
        assert_eq!(status["services"][0]["active"], "primary");
        assert_eq!(backend_names(&status), ["primary", "backup"]);

        // Once `ctl disable` has returned, no new connection goes there.
        let out = daemon.ctl(&["disable", "svc", "primary"]).await;
        assert_eq!(out.code, Some(0), "{out:?}");
        assert_eq!(answered_by(daemon.listen()).await, "backup");
        let status = daemon.status_json().await;
        assert_eq!(status["services"][0]["backends"][0]["enabled"], false);
        let m = daemon.metrics().await;
        assert_eq!(
            m.value(
                "failoverd_switches_total",
                &[
                    ("service", "svc"),
                    ("from", "primary"),
                    ("to", "backup"),
                    ("reason", "disabled")
                ]
            ),
            Some(1.0),
            "{}",
            m.text
        );

        let out = daemon.ctl(&["enable", "svc", "primary"]).await;
        assert_eq!(out.code, Some(0), "{out:?}");
        wait_answered_by(daemon.listen(), "primary", Duration::from_secs(3)).await;

        let out = daemon.ctl(&["disable", "svc", "nosuch"]).await;
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(out.stderr.contains("nosuch"), "{out:?}");
        let out = daemon.ctl(&["disable", "nosvc", "primary"]).await;
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(out.stderr.contains("nosvc"), "{out:?}");
        let out = run_failoverd(&["ctl", "--socket", "/nonexistent", "status"], LIMIT).await;
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(out.stderr.contains("/nonexistent"), "{out:?}");
        // The failed requests changed nothing.
        assert_eq!(answered_by(daemon.listen()).await, "primary");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_file_is_replaced_and_a_live_one_is_not_stolen() {
    within(30, async {
        let backend = TestBackend::start("primary", Mode::Greet).await;
        // Stale: a socket nobody listens on (a crash). A path that is not a
        // socket is never removed (see tests/hardening_b.rs).
        {
            let layout = Layout::new("stale");
            let text = layout
                .config(layout.service().backend("primary", backend.addr))
                .to_string();
            drop(std::os::unix::net::UnixListener::bind(&layout.socket).expect("stale socket"));
            let mut daemon = Failoverd::spawn(layout, &text);
            daemon.wait_ready().await;
            let meta = std::fs::metadata(daemon.socket()).expect("socket");
            assert!(meta.file_type().is_socket(), "stale socket replaced");
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            assert_eq!(daemon.active().await.as_deref(), Some("primary"));
        }

        // Live: a second instance on the same socket (other ports) fails.
        let daemon = Failoverd::start("live", |l| {
            l.config(l.service().backend("primary", backend.addr))
                .to_string()
        })
        .await;
        let first_socket = daemon.socket().display().to_string();
        let second = Layout::new("live2");
        let text = second
            .config(second.service().backend("primary", backend.addr))
            .set_admin("socket", daemon.socket())
            .to_string();
        second.write(&text);
        let out = run_failoverd(&["run", "-c", second.config_arg()], LIMIT).await;
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(
            out.stderr.contains(&first_socket) && out.stderr.contains("in use"),
            "the error names the socket in use: {:?}",
            out.stderr
        );
        // The same config started twice fails too.
        let out = run_failoverd(&["run", "-c", daemon.layout().config_arg()], LIMIT).await;
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(out.stderr.contains("in use"), "{out:?}");
        // The running instance keeps its socket.
        assert_eq!(daemon.active().await.as_deref(), Some("primary"));
        assert_eq!(answered_by(daemon.listen()).await, "primary");
    })
    .await;
}

/// A reload cannot turn an instance into a cluster member (or back): it
/// is rejected, naming the section, and the running config stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_adds_cluster_is_rejected() {
    within(30, async {
        let backend = TestBackend::start("backend", Mode::Greet).await;
        let cluster = Table::new()
            .set("name", "px1")
            .set("etcd", ["http://127.0.0.1:2379"]);
        let proxy = Failoverd::start("cluster-reload", |layout| {
            layout
                .config(layout.service().backend("backend", backend.addr))
                .to_string()
        })
        .await;
        let layout = proxy.layout();
        let with_cluster = layout
            .config(layout.service().backend("backend", backend.addr))
            .cluster(cluster)
            .to_string();
        let out = proxy.reload(&with_cluster).await;
        assert_eq!(out.code, Some(2), "{out:?}");
        assert!(
            out.stderr
                .contains("[cluster] can be added or removed only by a restart"),
            "{out:?}"
        );
        assert_eq!(who_answers(proxy.listen()).await.unwrap(), "backend");
    })
    .await;
}

// ---------------------------------------------------------------------------
// `run --workers N`
// ---------------------------------------------------------------------------

/// The names of a process's threads (`/proc/PID/task/*/comm`).
fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("read /proc/PID/task")
        .filter_map(|task| {
            let path = task.ok()?.path().join("comm");
            Some(std::fs::read_to_string(path).ok()?.trim().to_string())
        })
        .collect();
    names.sort();
    names
}

/// `--workers 3` on this 2-CPU machine runs exactly three data-path
/// workers, each accepting (three clients in a row are all served) and
/// logs the count; 0 is refused with exit 2 before anything starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_workers_sets_the_data_path_thread_count() {
    let backend = TestBackend::start("only", Mode::Greet).await;
    let proxy = Launch::new()
        .arg("--workers")
        .arg("3")
        .start("workers", |layout| {
            layout
                .config(layout.service().backend("only", backend.addr))
                .to_string()
        })
        .await;
    let listening = proxy.wait_for_log("workers=", LIMIT).await;
    assert!(listening.contains("workers=3"), "{listening}");
    let workers: Vec<String> = thread_names(proxy.pid())
        .into_iter()
        .filter(|n| n.starts_with("failoverd-worke"))
        .collect();
    assert_eq!(workers.len(), 3, "worker threads: {workers:?}");
    for _ in 0..3 {
        assert_eq!(greeted_by(proxy.listen(), LIMIT).await.unwrap(), "only");
    }

    let dir = TempDir::new("workers0");
    let path = dir.path("f.toml");
    std::fs::write(&path, "").expect("write");
    let zero = run_failoverd(
        &["run", "-c", path.to_str().expect("utf-8"), "--workers", "0"],
        LIMIT,
    )
    .await;
    assert_eq!(zero.code, Some(2), "{zero:?}");
    assert!(zero.stderr.contains("--workers"), "{zero:?}");
}
