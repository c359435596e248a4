//! Hardening against what an SRE meets in the first week: values at the
//! edge of validation, a backend's last reply before it closes, local
//! faults that are not a backend's, unbounded admin inputs, name
//! resolution and notify under faults, and the pipe and TCP budgets.
//!
//! Every test runs the real binary through the harness (`FAILOVERD_BIN`
//! overrides the one cargo built, so the same tests can be pointed at an
//! older build) against real sockets on loopback or in a network namespace
//! the test creates and removes (`common::netfault`). Each bounds its own
//! time.

mod common;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::netfault::{Netns, Nft, connect_from};
use common::server::find_binary;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a client waits for a backend's greeting.
const GREETING_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks once an hour: the start-up round only.
fn hourly() -> Table {
    Table::new().set("check_interval", "1h")
}

/// Checks every 200 ms, down after two failures, and one refused connect
/// on live traffic marks a backend down.
fn fast_checks() -> Table {
    Table::new()
        .set("check_interval", "200ms")
        .set("check_timeout", "200ms")
        .set("fall", 2)
        .set("passive_errors", 1)
}

/// Service "svc" on `listen` with `settings` and these backends in order.
fn service(listen: SocketAddr, settings: &Table, backends: &[(&str, SocketAddr)]) -> Service {
    Service::new("svc")
        .listen(listen)
        .merge(settings)
        .backends(backends)
}

/// failoverd with the layout's `[admin]` and service "svc" on its listen
/// address.
async fn start(tag: &str, settings: &Table, backends: &[(&str, SocketAddr)]) -> Failoverd {
    Failoverd::start(tag, |layout| {
        layout
            .config(service(layout.listen, settings, backends))
            .to_string()
    })
    .await
}

/// Read the greeting line of `stream` within [`GREETING_TIMEOUT`].
async fn greeting_of(mut stream: TcpStream) -> io::Result<String> {
    tokio::time::timeout(GREETING_TIMEOUT, read_line(&mut stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no greeting"))?
}

/// Connect and read the greeting line: who answered.
async fn greeting(addr: SocketAddr) -> io::Result<String> {
    greeting_of(TcpStream::connect(addr).await?).await
}

// ---------------------------------------------------------------------
// Defect 2: values that validate never panic later.
// ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_rejects_a_duration_longer_than_a_year() {
    within(30, async {
        let dir = TempDir::new("huge-duration");
        let config = dir.path("failoverd.toml");
        let text = service(
            "127.0.0.1:1".parse().unwrap(),
            &Table::new().set("idle_timeout", "2600000000000000h"),
            &[("primary", "127.0.0.1:2".parse().unwrap())],
        )
        .toml();
        std::fs::write(&config, text).expect("write config");
        let out = run_failoverd(
            &["check", "-c", config.to_str().expect("utf-8 path")],
            Duration::from_secs(10),
        )
        .await;
        let stderr = &out.stderr;
        assert_eq!(
            out.code,
            Some(2),
            "check must reject the value; stdout: {} stderr: {stderr}",
            out.stdout
        );
        assert!(stderr.contains("idle_timeout"), "{stderr}");
    })
    .await;
}

/// The largest values validation allows everywhere (a year, a million
/// connections), at start and again after a reload: connections are
/// forwarded, checks run, the process neither panics nor exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn largest_valid_values_forward_and_check_without_panic() {
    within(60, async {
        let backend = TestBackend::start("primary", Mode::Greet).await;
        let settings = |max: u32| {
            Table::new()
                .set("connect_timeout", "8760h")
                .set("idle_timeout", "8760h")
                .set("check_interval", "8760h")
                .set("check_timeout", "8760h")
                .set("failback_delay", "8760h")
                .set("max_connections", max)
                .set("passive_errors", 4_294_967_295u64)
        };
        let config_text = |layout: &Layout, max: u32| {
            ConfigToml::new()
                .admin(layout.admin().set("shutdown_timeout", "8760h"))
                .service(service(
                    layout.listen,
                    &settings(max),
                    &[("primary", backend.addr)],
                ))
                .to_string()
        };
        let mut proxy = Failoverd::start("largest", |layout| config_text(layout, 999_999)).await;
        let listen = proxy.listen();
        assert_eq!(greeting(listen).await.expect("served at start"), "primary");
        eventually(Duration::from_secs(10), "a health check", || async {
            (backend.accepted() >= 1).then_some(())
        })
        .await;

        let out = proxy.reload(&config_text(proxy.layout(), 1_000_000)).await;
        assert_eq!(out.code, Some(0), "reload: {out:?}");
        assert_eq!(
            greeting(listen).await.expect("served after reload"),
            "primary"
        );
        let status = proxy.ctl(&["status", "--json"]).await;
        assert_eq!(status.code, Some(0), "status after reload: {status:?}");
        proxy.assert_alive();
    })
    .await;
}

// ---------------------------------------------------------------------
// Defect 3: a reply is never dropped when the other direction fails.
// ---------------------------------------------------------------------

const REPLY_BYTES: usize = 100 * 1024;
const UPLOAD_BYTES: usize = 64 * 1024 * 1024;

/// A backend that reads the first KiB of a request, answers with an error
/// reply, half-closes and closes while the client is still uploading (so
/// its kernel resets the connection). It closes only once its reply
/// reached the proxy's kernel: what is tested is the proxy keeping it.
async fn error_reply_backend(reply: Arc<Vec<u8>>) -> (SocketAddr, tokio::sync::mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, closed_rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let reply = Arc::clone(&reply);
            let closed = closed_tx.clone();
            tokio::spawn(async move {
                let mut head = vec![0u8; 1024];
                // Health checks connect and close without a byte.
                if stream.read_exact(&mut head).await.is_err() {
                    return;
                }
                stream.write_all(&reply).await.unwrap();
                stream.shutdown().await.unwrap();
                let started = Instant::now();
                while unacked(&stream) > 0 {
                    assert!(
                        started.elapsed() < Duration::from_secs(10),
                        "reply never acknowledged"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                drop(stream);
                let _ = closed.send(()).await;
            });
        }
    });
    (addr, closed_rx)
}

async fn error_reply_reaches_the_client(zero_copy: bool) {
    let reply = Arc::new(random_bytes(REPLY_BYTES, 413));
    let (backend, mut closed) = error_reply_backend(Arc::clone(&reply)).await;
    let mut proxy = start(
        "error-reply",
        &hourly().set("zero_copy", zero_copy),
        &[("primary", backend)],
    )
    .await;
    let listen = proxy.listen();

    // A small receive buffer and a client that reads only after the
    // backend closed: the reply is still inside the proxy when the
    // upload fails.
    let client = small_buffer_client(listen).await;
    let (mut rd, mut wr) = client.into_split();
    let uploader = tokio::spawn(async move {
        let chunk = vec![b'u'; 64 * 1024];
        let mut sent = 0;
        while sent < UPLOAD_BYTES {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    closed.recv().await.expect("backend closed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = Vec::new();
    let read = rd.read_to_end(&mut got).await;
    let uploaded = uploader.await.unwrap();
    assert!(
        uploaded < UPLOAD_BYTES,
        "the upload should have been cut off"
    );
    match read {
        Ok(_) => {}
        Err(err) => panic!(
            "client got {err} after {} of {REPLY_BYTES} reply bytes (zero_copy = {zero_copy})",
            got.len()
        ),
    }
    assert_eq!(
        got.len(),
        REPLY_BYTES,
        "reply length (zero_copy = {zero_copy})"
    );
    assert!(sha256(&got) == sha256(&reply), "reply bytes differ");
    proxy.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_reply_reaches_the_client_while_it_uploads_with_splice() {
    within(60, error_reply_reaches_the_client(true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_reply_reaches_the_client_while_it_uploads_with_copy() {
    within(60, error_reply_reaches_the_client(false)).await;
}

/// A backend that really resets (SO_LINGER 0) is passed on as a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_reset_reaches_the_client_as_a_reset() {
    within(60, async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = [0u8; 5];
                    if stream.read_exact(&mut head).await.is_ok() {
                        reset(stream);
                    }
                });
            }
        });
        for zero_copy in [true, false] {
            let proxy = start(
                "reset",
                &hourly().set("zero_copy", zero_copy),
                &[("primary", backend)],
            )
            .await;
            let mut client = TcpStream::connect(proxy.listen()).await.unwrap();
            client.write_all(b"hello").await.unwrap();
            let mut buf = [0u8; 16];
            let read = client.read(&mut buf).await;
            assert!(
                matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
                "zero_copy = {zero_copy}: the client should see a reset, got {read:?}"
            );
        }
    })
    .await;
}

/// After the backend failed, a client that never reads holds its
/// connection only for the drain bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_client_is_closed_within_the_drain_bound() {
    within(60, async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = listener.local_addr().unwrap();
        let (closed_tx, mut closed) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let closed = closed_tx.clone();
                tokio::spawn(async move {
                    let mut head = vec![0u8; 1024];
                    if stream.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    // More than every buffer on the way holds.
                    let reply = vec![b'r'; 32 << 20];
                    let _ =
                        tokio::time::timeout(Duration::from_millis(500), stream.write_all(&reply))
                            .await;
                    drop(stream);
                    let _ = closed.send(Instant::now()).await;
                });
            }
        });
        let proxy = start("stuck", &hourly(), &[("primary", backend)]).await;
        let client = small_buffer_client(proxy.listen()).await;
        let (_rd, mut wr) = client.into_split();
        let uploader = tokio::spawn(async move {
            let chunk = vec![b'u'; 64 * 1024];
            loop {
                if let Err(err) = wr.write_all(&chunk).await {
                    return (Instant::now(), err);
                }
            }
        });
        let backend_closed = closed.recv().await.expect("backend closed");
        let (failed_at, err) = tokio::time::timeout(Duration::from_secs(20), uploader)
            .await
            .expect("the proxy kept a stuck client's connection open past the drain bound")
            .unwrap();
        let held = failed_at.duration_since(backend_closed);
        assert!(
            held < Duration::from_secs(9),
            "held {held:?} after the backend closed ({err})"
        );
    })
    .await;
}

// ---------------------------------------------------------------------
// Defect 8: local faults are not blamed on backends.
// ---------------------------------------------------------------------

/// failoverd out of file descriptors while checks run every 200 ms: its
/// soft RLIMIT_NOFILE is lowered at run time below every fd number it has
/// open, so every socket it makes fails with EMFILE (checks, accepts and
/// connects alike). Checks that fail that way are no result: no backend
/// goes down and nothing switches; with the limit back, the primary serves.
/// (Lowering the limit, rather than filling it with held clients, leaves
/// no free fd for a check to win in a race with the accept loop.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_exhaustion_during_checks_marks_no_backend_down() {
    within(60, async {
        let primary = TestBackend::start("primary", Mode::Greet).await;
        let backup = TestBackend::start("backup", Mode::Greet).await;
        let backends = [("primary", primary.addr), ("backup", backup.addr)];
        let proxy = Launch::new()
            .start("emfile-checks", |layout| {
                layout
                    .config(service(layout.listen, &fast_checks(), &backends))
                    .to_string()
            })
            .await;
        let listen = proxy.listen();
        assert_eq!(greeting(listen).await.unwrap(), "primary");

        let pid = proxy.pid().to_string();
        let soft = prlimit(&[
            "--pid",
            &pid,
            "--nofile",
            "--output",
            "SOFT",
            "--noheadings",
        ]);
        prlimit(&["--pid", &pid, "--nofile=3:"]);
        // A client meanwhile waits in the kernel's backlog, unserved.
        let waiting = TcpStream::connect(listen).await.expect("backlog accepts");
        // Checks keep failing with EMFILE for a while.
        tokio::time::sleep(Duration::from_secs(3)).await;
        prlimit(&["--pid", &pid, &format!("--nofile={}:", soft.trim())]);
        let log = proxy.log();
        assert!(
            log.contains("health check skipped"),
            "checks never hit the fd limit:\n{log}"
        );
        assert!(
            !log.contains("backend state changed") && !log.contains("active backend switched"),
            "a local fd shortage was blamed on the backends:\n{log}"
        );
        assert_eq!(
            greeting_of(waiting).await.unwrap(),
            "primary",
            "the waiting client is served once fds are back"
        );
        assert_eq!(greeting(listen).await.unwrap(), "primary");
    })
    .await;
}

/// Run util-linux `prlimit` on failoverd; its standard output.
fn prlimit(args: &[&str]) -> String {
    let out = std::process::Command::new("prlimit")
        .args(args)
        .output()
        .expect("prlimit (util-linux) runs");
    assert!(
        out.status.success(),
        "prlimit {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Ephemeral ports used up (all reserved, in a network namespace of the
/// test's own): client connects to the backends fail with EADDRNOTAVAIL,
/// and so do the checks; neither counts against a backend, so both stay
/// up and the primary stays active. EPERM from a local firewall is sorted
/// the same way (unit-tested in net.rs: no firewall rule makes connect(2)
/// return EPERM for TCP here, a drop only times out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_local_ports_count_against_no_backend() {
    within(60, async {
        let ns = Netns::new();
        let bind = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let primary = TestBackend::from_listener("primary", Mode::Greet, ns.run(bind));
        let backup = TestBackend::from_listener("backup", Mode::Greet, ns.run(bind));
        let listen = ns.run(|| bind().local_addr().unwrap());
        let layout = Layout::new("eaddrnotavail");
        // The control socket only: the test reaches nothing else in there.
        let text = ConfigToml::new()
            .admin(Table::new().set("socket", &layout.socket))
            .service(service(
                listen,
                &fast_checks(),
                &[("primary", primary.addr), ("backup", backup.addr)],
            ))
            .to_string();
        let mut proxy = Launch::new()
            .through(&ns.exec_prefix())
            .spawn(layout, &text);
        proxy.wait_control().await;
        let mut local_port = 20000;
        let mut ns_greeting = |ns: &Netns| {
            local_port += 1;
            let port = local_port;
            let stream = ns.run(move || connect_from(port, listen));
            async move { greeting_of(TcpStream::from_std(stream?)?).await }
        };
        assert_eq!(ns_greeting(&ns).await.unwrap(), "primary");

        ns.sysctl("net.ipv4.ip_local_reserved_ports", "1024-65535");
        for _ in 0..5 {
            let answer = ns_greeting(&ns).await;
            assert!(
                answer.is_err(),
                "served without a free local port? {answer:?}"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let status = proxy.ctl(&["status", "--json"]).await;
        ns.sysctl("net.ipv4.ip_local_reserved_ports", "");
        let text = status.stdout;
        let json: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let service = &json["services"][0];
        assert_eq!(
            service["active"],
            "primary",
            "{text}\nlog:\n{}",
            proxy.log()
        );
        for backend in service["backends"].as_array().unwrap() {
            assert_eq!(backend["state"], "up", "{text}");
            assert_eq!(backend["consecutive_failures"], 0, "{text}");
        }
        let log = proxy.log();
        assert!(log.contains("not counted against it"), "{log}");
        assert!(log.contains("health check skipped"), "{log}");
        assert_eq!(ns_greeting(&ns).await.unwrap(), "primary");
    })
    .await;
}

// ---------------------------------------------------------------------
// Defect 9: the admin inputs are bounded.
// ---------------------------------------------------------------------

/// The layout's control socket and metrics listener, and service "svc"
/// with one backend checked at start only.
fn admin_config(layout: &Layout, backend: SocketAddr) -> String {
    layout
        .config(service(layout.listen, &hourly(), &[("primary", backend)]))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_never_removes_a_file_that_is_not_a_socket() {
    within(30, async {
        let backend = TestBackend::start("primary", Mode::Greet).await;
        let layout = Layout::new("notsocket");
        let socket = layout.socket.clone();
        let text = admin_config(&layout, backend.addr);
        std::fs::write(&socket, "precious\n").unwrap();
        let mut proxy = Failoverd::spawn(layout, &text);
        let status = proxy.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(
            status,
            Some(1),
            "failoverd must refuse to start; log:\n{}",
            proxy.log()
        );
        let log = proxy.log();
        assert!(
            log.contains(&socket.display().to_string()) && log.contains("not a socket"),
            "the error names the path: {log}"
        );
        assert_eq!(std::fs::read_to_string(&socket).unwrap(), "precious\n");
    })
    .await;
}

/// Created 0600 even under umask 000, and never seen with another mode
/// while failoverd starts (a watcher stats the path in a tight loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_is_created_owner_only_under_any_umask() {
    within(30, async {
        use std::os::unix::fs::PermissionsExt;
        let backend = TestBackend::start("primary", Mode::Greet).await;
        let layout = Layout::new("umask");
        let text = admin_config(&layout, backend.addr);
        let watched = layout.socket.clone();
        let watcher = std::thread::spawn(move || {
            let started = Instant::now();
            let mut seen = std::collections::BTreeSet::new();
            while started.elapsed() < Duration::from_secs(5) {
                if let Ok(meta) = std::fs::symlink_metadata(&watched) {
                    seen.insert(meta.permissions().mode() & 0o777);
                    if started.elapsed() > Duration::from_secs(1) {
                        break;
                    }
                }
            }
            seen
        });
        let mut proxy = Launch::new()
            .through(&["sh", "-c", "umask 000; exec \"$0\" \"$@\""])
            .spawn(layout, &text);
        proxy.wait_ready().await;
        let seen = watcher.join().unwrap();
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            vec![0o600],
            "modes seen at {}",
            proxy.socket().display()
        );
    })
    .await;
}

/// A request line past 64 KiB is cut off (the sender's writes fail long
/// before 64 MiB), a silent client is closed after the idle timeout, and
/// neither an 8 MiB line in progress nor 40 idle connections keep
/// `ctl status` from answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_bounds_lines_idle_clients_and_connections() {
    within(60, async {
        use tokio::net::UnixStream;
        let backend = TestBackend::start("primary", Mode::Greet).await;
        let proxy =
            Failoverd::start("ctl-bounds", |layout| admin_config(layout, backend.addr)).await;
        let socket = proxy.socket().to_path_buf();

        // An 8 MiB line being written slowly while ctl status runs.
        let mut slow = UnixStream::connect(&socket).await.unwrap();
        let slow_writer = tokio::spawn(async move {
            let chunk = vec![b'a'; 1 << 20];
            for _ in 0..8 {
                if slow.write_all(&chunk).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = slow.write_all(b"\n").await;
        });
        let status = proxy.ctl(&["status"]).await;
        assert_eq!(
            status.code,
            Some(0),
            "ctl status during an 8 MiB line: {status:?}"
        );
        slow_writer.abort();

        // A line that never ends is cut off after 64 KiB.
        let mut long = UnixStream::connect(&socket).await.unwrap();
        let mut written = 0usize;
        let chunk = vec![b'a'; 64 * 1024];
        let cut = tokio::time::timeout(Duration::from_secs(10), async {
            while written < 64 << 20 {
                if long.write_all(&chunk).await.is_err() {
                    return true;
                }
                written += chunk.len();
            }
            false
        })
        .await
        .unwrap_or(false);
        assert!(
            cut,
            "the control socket read {written} bytes of one line without cutting it off"
        );

        // A silent client is closed.
        let mut idle = UnixStream::connect(&socket).await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(20), idle.read(&mut buf))
            .await
            .expect("an idle control connection stayed open 20 s");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(
            started.elapsed() >= Duration::from_secs(5),
            "closed too soon: {:?}",
            started.elapsed()
        );

        // 40 idle connections do not lock ctl out.
        let mut held = Vec::new();
        for _ in 0..40 {
            held.push(UnixStream::connect(&socket).await.unwrap());
        }
        let status = proxy.ctl(&["status"]).await;
        assert_eq!(
            status.code,
            Some(0),
            "ctl status past 40 idle connections: {status:?}"
        );
    })
    .await;
}

/// `ctl` gives up on a control socket that accepts and never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_gives_up_on_a_control_socket_that_never_answers() {
    within(60, async {
        let dir = TempDir::new("ctl-timeout");
        let path = dir.path("hung.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let started = Instant::now();
        let socket = path.to_str().expect("utf-8 path");
        let out = run_failoverd(
            &["ctl", "--socket", socket, "status"],
            Duration::from_secs(30),
        )
        .await;
        let took = started.elapsed();
        server.abort();
        assert_eq!(out.code, Some(1), "{out:?}");
        let stderr = &out.stderr;
        assert!(stderr.contains("no answer"), "{stderr}");
        assert!(took < Duration::from_secs(20), "ctl waited {took:?}");
    })
    .await;
}

/// 200 idle connections to /metrics neither stop a scrape nor stay open:
/// beyond the cap the oldest are closed at once, the rest after the read
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_serves_a_scrape_past_200_idle_connections_and_closes_them() {
    within(60, async {
        let backend = TestBackend::start("primary", Mode::Greet).await;
        let proxy =
            Failoverd::start("metrics-idle", |layout| admin_config(layout, backend.addr)).await;
        let metrics = proxy.layout().metrics;
        let mut idle = Vec::new();
        for _ in 0..200 {
            idle.push(TcpStream::connect(metrics).await.unwrap());
        }
        let started = Instant::now();
        // Panics unless the scrape is answered.
        let body = scrape(metrics).await.text;
        assert!(body.contains("failoverd_backend_up"), "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "scrape took {:?}",
            started.elapsed()
        );
        // Every idle connection is closed by the server within 5 s.
        let closed_all = tokio::time::timeout(Duration::from_secs(5), async {
            for mut stream in idle {
                let mut buf = [0u8; 1];
                let _ = stream.read(&mut buf).await;
            }
        })
        .await;
        assert!(
            closed_all.is_ok(),
            "idle /metrics connections still open after 5 s"
        );
    })
    .await;
}

// ---------------------------------------------------------------------
// Defect 10: name resolution and notify under faults.
// ---------------------------------------------------------------------

/// The name the hosts file of the test's mount namespace resolves; `.invalid`
/// so that no DNS server ever answers it.
const BACKEND_HOST: &str = "failoverd-test-backend.invalid";

/// A hostname backend keeps serving while its name no longer resolves: the
/// data path connects to the addresses the check loop cached and never
/// resolves. failoverd runs in a mount namespace of its own whose
/// /etc/hosts (the test's file, bind-mounted) is emptied after start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostname_backend_keeps_serving_while_resolution_is_broken() {
    within(60, async {
        let backend = TestBackend::start("primary", Mode::Greet).await;
        let layout = Layout::new("resolve");
        let hosts = layout.write_file("hosts", &format!("127.0.0.1 {BACKEND_HOST}\n"));
        // Nothing answers DNS here, quickly: the name is only in hosts.
        let resolv = layout.write_file(
            "resolv.conf",
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        );
        let listen = layout.listen;
        let text = layout
            .config(
                Service::new("svc")
                    .listen(listen)
                    .merge(&hourly().set("passive_errors", 1))
                    .backend("primary", format!("{BACKEND_HOST}:{}", backend.addr.port())),
            )
            .to_string();
        let unshare = find_binary("unshare", "util-linux");
        let mount_script = format!(
            "mount --bind {} /etc/hosts && mount --bind {} /etc/resolv.conf && exec \"$0\" \"$@\"",
            hosts.display(),
            resolv.display()
        );
        let prefix = [
            unshare.to_str().unwrap(),
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            mount_script.as_str(),
        ];
        let mut proxy = Launch::new().through(&prefix).spawn(layout, &text);
        proxy.wait_ready().await;
        assert_eq!(
            greeting(listen)
                .await
                .expect("served while the name resolves"),
            "primary"
        );

        // Break resolution inside failoverd's namespace, and prove it is broken.
        std::fs::write(&hosts, "").unwrap();
        let nsenter = find_binary("nsenter", "util-linux");
        let lookup = std::process::Command::new(nsenter)
            .args([
                "--target",
                &proxy.pid().to_string(),
                "--mount",
                "getent",
                "hosts",
                BACKEND_HOST,
            ])
            .output()
            .expect("nsenter getent");
        assert!(
            !lookup.status.success(),
            "the name still resolves: {lookup:?}"
        );

        for i in 0..20 {
            match greeting(listen).await {
                Ok(who) => assert_eq!(who, "primary"),
                Err(err) => panic!(
                    "client {i} not served while resolution is broken: {err}; log:\n{}",
                    proxy.log()
                ),
            }
        }
        proxy.assert_alive();
    })
    .await;
}

/// Five quick switches with a slow notify command: its runs never overlap
/// and the last run reports the last switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_runs_never_overlap_and_the_last_run_sees_the_last_switch() {
    within(60, async {
        let primary = TestBackend::start("primary", Mode::Greet).await;
        let backup = TestBackend::start("backup", Mode::Greet).await;
        let dir = TempDir::new("notify-order");
        let script = dir.path("notify.sh");
        std::fs::write(
            &script,
            "mkdir \"$1/lock\" 2>/dev/null || echo OVERLAP >> \"$1/runs\"\n\
             echo \"start $FAILOVERD_FROM>$FAILOVERD_TO $FAILOVERD_REASON\" >> \"$1/runs\"\n\
             sleep 0.5\necho end >> \"$1/runs\"\nrmdir \"$1/lock\"\n",
        )
        .expect("write notify script");
        let notify = vec![
            "sh".to_string(),
            script.display().to_string(),
            dir.0.display().to_string(),
        ];
        let settings = hourly().set("notify", notify);
        let proxy = start(
            "notify-order",
            &settings,
            &[("primary", primary.addr), ("backup", backup.addr)],
        )
        .await;
        for action in ["disable", "enable", "disable", "enable", "disable"] {
            let out = proxy.ctl(&[action, "svc", "primary"]).await;
            assert_eq!(out.code, Some(0), "ctl {action}: {out:?}");
        }
        let runs = dir.path("runs");
        // Settled: the last run ended and nothing started for 1.5 s.
        let changed = Mutex::new((String::new(), Instant::now()));
        let last = eventually(
            Duration::from_secs(30),
            "notify runs settled (the last one ended, none started for 1.5 s)",
            || async {
                let text = std::fs::read_to_string(&runs).unwrap_or_default();
                let mut changed = changed.lock().expect("lock");
                if text != changed.0 {
                    *changed = (text, Instant::now());
                } else if text.ends_with("end\n")
                    && changed.1.elapsed() > Duration::from_millis(1500)
                {
                    return Ok(text);
                }
                Err(changed.0.clone())
            },
        )
        .await;
        assert!(!last.contains("OVERLAP"), "notify runs overlapped:\n{last}");
        let final_start = last.lines().rfind(|l| l.starts_with("start"));
        assert_eq!(
            final_start,
            Some("start primary>backup disabled"),
            "runs:\n{last}"
        );
    })
    .await;
}

// ---------------------------------------------------------------------
// Defect 11: resource budgets (pipes are unit-tested in forward/).
// ---------------------------------------------------------------------

/// A backend that stops answering (every packet to and from its port
/// dropped) while the proxy has unacknowledged data for it: the proxy gives
/// up on it after TCP_USER_TIMEOUT (30 s) and closes the client, instead of
/// retransmitting for ~15 minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_backend_with_data_in_flight_is_closed_within_the_user_timeout() {
    within(120, async {
        let backend = TestBackend::start("primary", Mode::Greet).await;
        let settings = hourly().set("on_switch", "keep").set("passive_errors", 0);
        let proxy = start("blackhole", &settings, &[("primary", backend.addr)]).await;
        let mut client = TcpStream::connect(proxy.listen()).await.unwrap();
        let mut greeting = [0u8; 8];
        client.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"primary\n");

        let _blackhole = Nft::drop_port(backend.addr.port());
        client.write_all(&[b'x'; 4096]).await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(60), client.read(&mut buf))
            .await
            .expect("the proxy still holds the connection 60 s after the backend went silent");
        let held = started.elapsed();
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "unexpected bytes from a black-holed backend: {read:?}"
        );
        assert!(
            held >= Duration::from_secs(25) && held < Duration::from_secs(45),
            "closed after {held:?}, want about 30 s (TCP_USER_TIMEOUT)"
        );
    })
    .await;
}

// ---------------------------------------------------------------------
// Socket tricks only these tests need.
// ---------------------------------------------------------------------

/// A client whose receive buffer is tiny, so the proxy cannot push a
/// reply into it ahead of the client reading.
async fn small_buffer_client(addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(addr).await.expect("connect to the proxy")
}

/// Close `stream` with a reset (SO_LINGER 0), not a FIN.
fn reset(stream: TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
    drop(stream);
}

/// Bytes written to `stream` its peer has not acknowledged yet.
fn unacked(stream: &TcpStream) -> usize {
    use std::os::fd::AsFd;
    failoverd::forward::splice::unacked_bytes(stream.as_fd()).expect("SIOCOUTQ")
}
