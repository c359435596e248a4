//! Hardening against what an SRE meets in the first week: values at the
//! edge of validation, a backend's last reply before it closes, local
//! faults that are not a backend's, unbounded admin inputs, name
//! resolution and notify under faults, and the pipe and TCP budgets.
//!
//! Every test runs the real binary (`FAILOVERD_BIN` overrides the one
//! cargo built, so the same tests can be pointed at an older build) against
//! real sockets on loopback or in a network namespace the test creates and
//! removes. Each bounds its own time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::*;

// ---------------------------------------------------------------------
// Defect 2: values that validate never panic later.
// ---------------------------------------------------------------------

#[test]
fn check_rejects_a_duration_longer_than_a_year() {
    let dir = TempDir::new("huge-duration");
    let config = dir.write(
        "failoverd.toml",
        &service_config(
            "127.0.0.1:1",
            "idle_timeout = \"2600000000000000h\"",
            &[("primary", "127.0.0.1:2".parse().unwrap())],
        ),
    );
    let out = failoverd_command()
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .expect("run failoverd check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "check must reject the value; stdout: {} stderr: {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("idle_timeout"), "{stderr}");
}

/// The largest values validation allows everywhere (a year, a million
/// connections), at start and again after a reload: connections are
/// forwarded, checks run, the process neither panics nor exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn largest_valid_values_forward_and_check_without_panic() {
    within(60, async {
        let backend = GreetBackend::start("primary").await;
        let dir = TempDir::new("largest");
        let listen = free_port();
        let socket = dir.path("ctl.sock");
        let settings = |max: u32| {
            format!(
                "connect_timeout = \"8760h\"\nidle_timeout = \"8760h\"\n\
                 check_interval = \"8760h\"\ncheck_timeout = \"8760h\"\n\
                 failback_delay = \"8760h\"\n\
                 max_connections = {max}\npassive_errors = 4294967295"
            )
        };
        let config_text = |max: u32| {
            format!(
                "[admin]\nsocket = \"{}\"\nshutdown_timeout = \"8760h\"\n{}",
                socket.display(),
                service_config(
                    &listen.to_string(),
                    &settings(max),
                    &[("primary", backend.addr)]
                )
            )
        };
        let config = dir.write("failoverd.toml", &config_text(999_999));
        let mut proxy = Failoverd::spawn(&dir, &config, &[]);
        proxy.wait_listening(listen).await;
        assert_eq!(greeting(listen).await.expect("served at start"), "primary");
        eventually(Duration::from_secs(10), || backend.checks() >= 1).await;

        dir.write("failoverd.toml", &config_text(1_000_000));
        let out = proxy.ctl(&socket, &["reload"]).await;
        assert!(out.status.success(), "reload: {out:?}");
        assert_eq!(
            greeting(listen).await.expect("served after reload"),
            "primary"
        );
        let status = proxy.ctl(&socket, &["status", "--json"]).await;
        assert!(status.status.success(), "status after reload: {status:?}");
        proxy.assert_alive_without_panic();
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
    let dir = TempDir::new("error-reply");
    let listen = free_port();
    let config = dir.write(
        "failoverd.toml",
        &service_config(
            &listen.to_string(),
            &format!("check_interval = \"1h\"\nzero_copy = {zero_copy}"),
            &[("primary", backend)],
        ),
    );
    let mut proxy = Failoverd::spawn(&dir, &config, &[]);
    proxy.wait_listening(listen).await;

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
    proxy.assert_alive_without_panic();
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
            let dir = TempDir::new("reset");
            let listen = free_port();
            let config = dir.write(
                "failoverd.toml",
                &service_config(
                    &listen.to_string(),
                    &format!("check_interval = \"1h\"\nzero_copy = {zero_copy}"),
                    &[("primary", backend)],
                ),
            );
            let proxy = Failoverd::spawn(&dir, &config, &[]);
            proxy.wait_listening(listen).await;
            let mut client = TcpStream::connect(listen).await.unwrap();
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
        let dir = TempDir::new("stuck");
        let listen = free_port();
        let config = dir.write(
            "failoverd.toml",
            &service_config(
                &listen.to_string(),
                "check_interval = \"1h\"",
                &[("primary", backend)],
            ),
        );
        let proxy = Failoverd::spawn(&dir, &config, &[]);
        proxy.wait_listening(listen).await;
        let client = small_buffer_client(listen).await;
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

/// failoverd out of file descriptors (RLIMIT_NOFILE 128, used up by held
/// client connections) while checks run every 200 ms: the checks that fail
/// with EMFILE are no result, so no backend goes down and nothing switches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_exhaustion_during_checks_marks_no_backend_down() {
    within(60, async {
        let primary = GreetBackend::start("primary").await;
        let backup = GreetBackend::start("backup").await;
        let dir = TempDir::new("emfile-checks");
        let listen = free_port();
        let config = dir.write(
            "failoverd.toml",
            &service_config(
                &listen.to_string(),
                "check_interval = \"200ms\"\ncheck_timeout = \"200ms\"\nfall = 2\npassive_errors = 1",
                &[("primary", primary.addr), ("backup", backup.addr)],
            ),
        );
        let proxy = Failoverd::spawn(&dir, &config, &["sh", "-c", "ulimit -n 128 && exec \"$0\" \"$@\""]);
        proxy.wait_listening(listen).await;
        assert_eq!(greeting(listen).await.unwrap(), "primary");

        // Hold connections until the proxy has no fd left for new ones.
        let mut held = Vec::new();
        let mut refused_in_a_row = 0;
        while refused_in_a_row < 3 {
            assert!(held.len() < 400, "the proxy never ran out of fds");
            let mut stream = TcpStream::connect(listen).await.expect("kernel backlog accepts");
            let mut byte = [0u8; 8];
            let served = tokio::time::timeout(Duration::from_millis(300), stream.read_exact(&mut byte)).await;
            refused_in_a_row = if matches!(served, Ok(Ok(_))) { 0 } else { refused_in_a_row + 1 };
            held.push(stream);
        }
        // Checks keep failing with EMFILE for a while.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let log = proxy.log();
        drop(held);
        assert!(
            !log.contains("backend state changed") && !log.contains("active backend switched"),
            "a local fd shortage was blamed on the backends:\n{log}"
        );
        assert!(log.contains("health check skipped"), "checks never hit the fd limit:\n{log}");
        eventually_async(Duration::from_secs(10), || async {
            greeting(listen).await.ok().as_deref() == Some("primary")
        })
        .await;
    })
    .await;
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
        let primary_listener = ns.run(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let backup_listener = ns.run(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let listen = ns.run(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap());
        let tokio_listener = |l: std::net::TcpListener| {
            l.set_nonblocking(true).unwrap();
            TcpListener::from_std(l).unwrap()
        };
        let primary = GreetBackend::serve(tokio_listener(primary_listener), "primary");
        let backup = GreetBackend::serve(tokio_listener(backup_listener), "backup");
        let dir = TempDir::new("eaddrnotavail");
        let socket = dir.path("ctl.sock");
        let text = format!(
            "[admin]\nsocket = \"{}\"\n{}",
            socket.display(),
            service_config(
                &listen.to_string(),
                "check_interval = \"200ms\"\ncheck_timeout = \"200ms\"\nfall = 2\npassive_errors = 1",
                &[("primary", primary.addr), ("backup", backup.addr)],
            )
        );
        let config = dir.write("failoverd.toml", &text);
        let ip = tool("ip", "iproute2");
        let prefix = [ip.to_str().unwrap(), "netns", "exec", ns.name.as_str()];
        let proxy = Failoverd::spawn(&dir, &config, &prefix);
        proxy.wait_control(&socket).await;
        let mut local_port = 20000;
        let mut ns_greeting = |ns: &Netns| {
            local_port += 1;
            let port = local_port;
            let stream = ns.run(move || connect_from(port, listen));
            async move {
                let stream = TcpStream::from_std(stream?)?;
                read_line(stream).await
            }
        };
        assert_eq!(ns_greeting(&ns).await.unwrap(), "primary");

        ns.sysctl("net.ipv4.ip_local_reserved_ports", "1024-65535");
        for _ in 0..5 {
            let answer = ns_greeting(&ns).await;
            assert!(answer.is_err(), "served without a free local port? {answer:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let status = proxy.ctl(&socket, &["status", "--json"]).await;
        ns.sysctl("net.ipv4.ip_local_reserved_ports", "");
        let text = String::from_utf8_lossy(&status.stdout).into_owned();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let service = &json["services"][0];
        assert_eq!(service["active"], "primary", "{text}\nlog:\n{}", proxy.log());
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

/// An admin-only config with a control socket and a metrics listener.
fn admin_config(
    dir: &TempDir,
    backend: SocketAddr,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    SocketAddr,
    SocketAddr,
) {
    let socket = dir.path("ctl.sock");
    let metrics = free_port();
    let listen = free_port();
    let text = format!(
        "[admin]\nsocket = \"{}\"\nmetrics = \"{metrics}\"\n{}",
        socket.display(),
        service_config(
            &listen.to_string(),
            "check_interval = \"1h\"",
            &[("primary", backend)]
        )
    );
    (dir.write("failoverd.toml", &text), socket, metrics, listen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_never_removes_a_file_that_is_not_a_socket() {
    within(30, async {
        let backend = GreetBackend::start("primary").await;
        let dir = TempDir::new("notsocket");
        let (config, socket, _, _) = admin_config(&dir, backend.addr);
        std::fs::write(&socket, "precious\n").unwrap();
        let mut proxy = Failoverd::spawn(&dir, &config, &[]);
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
        let backend = GreetBackend::start("primary").await;
        let dir = TempDir::new("umask");
        let (config, socket, _, _) = admin_config(&dir, backend.addr);
        let watched = socket.clone();
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
        let proxy = Failoverd::spawn(
            &dir,
            &config,
            &["sh", "-c", "umask 000; exec \"$0\" \"$@\""],
        );
        proxy.wait_control(&socket).await;
        let seen = watcher.join().unwrap();
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            vec![0o600],
            "modes seen at {}",
            socket.display()
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
        let backend = GreetBackend::start("primary").await;
        let dir = TempDir::new("ctl-bounds");
        let (config, socket, _, _) = admin_config(&dir, backend.addr);
        let proxy = Failoverd::spawn(&dir, &config, &[]);
        proxy.wait_control(&socket).await;

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
        let status = proxy.ctl(&socket, &["status"]).await;
        assert!(
            status.status.success(),
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
        let status = proxy.ctl(&socket, &["status"]).await;
        assert!(
            status.status.success(),
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
        let out = ctl(&path, &["status"]).await;
        let took = started.elapsed();
        server.abort();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
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
        let backend = GreetBackend::start("primary").await;
        let dir = TempDir::new("metrics-idle");
        let (config, _, metrics, _) = admin_config(&dir, backend.addr);
        let proxy = Failoverd::spawn(&dir, &config, &[]);
        proxy.wait_listening(metrics).await;
        let mut idle = Vec::new();
        for _ in 0..200 {
            idle.push(TcpStream::connect(metrics).await.unwrap());
        }
        let started = Instant::now();
        let body = scrape(metrics)
            .await
            .expect("scrape past 200 idle connections");
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
        let backend = GreetBackend::start("primary").await;
        let dir = TempDir::new("resolve");
        let hosts = dir.write("hosts", &format!("127.0.0.1 {BACKEND_HOST}\n"));
        // Nothing answers DNS here, quickly: the name is only in hosts.
        let resolv = dir.write("resolv.conf", "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n");
        let listen = free_port();
        let port = backend.addr.port();
        let text = format!(
            "[[service]]\nname = \"svc\"\nlisten = \"{listen}\"\ncheck_interval = \"1h\"\n\
             passive_errors = 1\n[[service.backend]]\nname = \"primary\"\naddress = \"{BACKEND_HOST}:{port}\"\n"
        );
        let config = dir.write("failoverd.toml", &text);
        let unshare = tool("unshare", "util-linux");
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
        let mut proxy = Failoverd::spawn(&dir, &config, &prefix);
        proxy.wait_listening(listen).await;
        assert_eq!(greeting(listen).await.expect("served while the name resolves"), "primary");

        // Break resolution inside failoverd's namespace, and prove it is broken.
        std::fs::write(&hosts, "").unwrap();
        let nsenter = tool("nsenter", "util-linux");
        let lookup = std::process::Command::new(nsenter)
            .args(["--target", &proxy.pid().to_string(), "--mount", "getent", "hosts", BACKEND_HOST])
            .output()
            .expect("nsenter getent");
        assert!(!lookup.status.success(), "the name still resolves: {lookup:?}");

        for i in 0..20 {
            match greeting(listen).await {
                Ok(who) => assert_eq!(who, "primary"),
                Err(err) => panic!("client {i} not served while resolution is broken: {err}; log:\n{}", proxy.log()),
            }
        }
        proxy.assert_alive_without_panic();
    })
    .await;
}

/// Five quick switches with a slow notify command: its runs never overlap
/// and the last run reports the last switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_runs_never_overlap_and_the_last_run_sees_the_last_switch() {
    within(60, async {
        let primary = GreetBackend::start("primary").await;
        let backup = GreetBackend::start("backup").await;
        let dir = TempDir::new("notify-order");
        let script = dir.write(
            "notify.sh",
            "mkdir \"$1/lock\" 2>/dev/null || echo OVERLAP >> \"$1/runs\"\n\
             echo \"start $FAILOVERD_FROM>$FAILOVERD_TO $FAILOVERD_REASON\" >> \"$1/runs\"\n\
             sleep 0.5\necho end >> \"$1/runs\"\nrmdir \"$1/lock\"\n",
        );
        let socket = dir.path("ctl.sock");
        let listen = free_port();
        let text = format!(
            "[admin]\nsocket = \"{}\"\n{}",
            socket.display(),
            service_config(
                &listen.to_string(),
                &format!(
                    "check_interval = \"1h\"\nnotify = [\"sh\", \"{}\", \"{}\"]",
                    script.display(),
                    dir.0.display()
                ),
                &[("primary", primary.addr), ("backup", backup.addr)],
            )
        );
        let config = dir.write("failoverd.toml", &text);
        let proxy = Failoverd::spawn(&dir, &config, &[]);
        proxy.wait_control(&socket).await;
        for action in ["disable", "enable", "disable", "enable", "disable"] {
            let out = proxy.ctl(&socket, &[action, "svc", "primary"]).await;
            assert!(out.status.success(), "ctl {action}: {out:?}");
        }
        let runs = dir.path("runs");
        // Settled: the last run ended and nothing started for 1.5 s.
        let mut last = String::new();
        let mut stable_since = Instant::now();
        loop {
            let text = std::fs::read_to_string(&runs).unwrap_or_default();
            if text != last {
                last = text;
                stable_since = Instant::now();
            } else if last.ends_with("end\n")
                && stable_since.elapsed() > Duration::from_millis(1500)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
        let backend = GreetBackend::start("primary").await;
        let dir = TempDir::new("blackhole");
        let listen = free_port();
        let config = dir.write(
            "failoverd.toml",
            &service_config(
                &listen.to_string(),
                "check_interval = \"1h\"\non_switch = \"keep\"\npassive_errors = 0",
                &[("primary", backend.addr)],
            ),
        );
        let proxy = Failoverd::spawn(&dir, &config, &[]);
        proxy.wait_listening(listen).await;
        let mut client = TcpStream::connect(listen).await.unwrap();
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
// Helpers, kept together so a shared harness can replace them.
// ---------------------------------------------------------------------

mod support {
    #![allow(dead_code)]

    use std::future::Future;
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Output, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use sha2::{Digest, Sha256};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// The binary under test: `FAILOVERD_BIN`, else the one cargo built.
    pub fn failoverd_bin() -> PathBuf {
        std::env::var_os("FAILOVERD_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_failoverd")))
    }

    pub fn failoverd_command() -> Command {
        Command::new(failoverd_bin())
    }

    /// Every test bounds its own time with this.
    pub async fn within<T>(secs: u64, fut: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(secs), fut)
            .await
            .expect("test timed out")
    }

    /// Poll `cond` until it holds; fail after `limit`.
    pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) {
        let started = Instant::now();
        while !cond() {
            assert!(
                started.elapsed() < limit,
                "condition not met within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A loopback port nothing listens on right now.
    pub fn free_port() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    }

    /// A one-service config.
    pub fn service_config(listen: &str, settings: &str, backends: &[(&str, SocketAddr)]) -> String {
        let mut text = format!("[[service]]\nname = \"svc\"\nlisten = \"{listen}\"\n{settings}\n");
        for (name, addr) in backends {
            text.push_str(&format!(
                "[[service.backend]]\nname = \"{name}\"\naddress = \"{addr}\"\n"
            ));
        }
        text
    }

    /// A temp directory removed on drop.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "failoverd-hb-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            TempDir(dir)
        }

        pub fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }

        pub fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.path(name);
            std::fs::write(&path, text).expect("write temp file");
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A running `failoverd run`, killed (and reaped) on drop; its stderr
    /// goes to a log file in the test's directory.
    pub struct Failoverd {
        child: Child,
        log: PathBuf,
    }

    impl Failoverd {
        /// `failoverd run -c CONFIG`, started through `prefix` (e.g.
        /// `["ip", "netns", "exec", NS]`) when it is not empty.
        pub fn spawn(dir: &TempDir, config: &Path, prefix: &[&str]) -> Failoverd {
            Failoverd::spawn_with(dir, config, prefix, |_| {})
        }

        pub fn spawn_with(
            dir: &TempDir,
            config: &Path,
            prefix: &[&str],
            tweak: impl FnOnce(&mut Command),
        ) -> Failoverd {
            let log = dir.path("failoverd.log");
            let mut command = match prefix.split_first() {
                Some((program, args)) => {
                    let mut c = Command::new(program);
                    c.args(args).arg(failoverd_bin());
                    c
                }
                None => failoverd_command(),
            };
            command
                .args(["run", "-c"])
                .arg(config)
                .env("RUST_LOG", "info,failoverd=debug")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file"));
            tweak(&mut command);
            let child = command.spawn().expect("spawn failoverd");
            Failoverd { child, log }
        }

        pub fn pid(&self) -> u32 {
            self.child.id()
        }

        pub fn log(&self) -> String {
            std::fs::read_to_string(&self.log).unwrap_or_default()
        }

        /// Wait until `addr` accepts connections (bounded).
        pub async fn wait_listening(&self, addr: SocketAddr) {
            let started = Instant::now();
            while TcpStream::connect(addr).await.is_err() {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "failoverd did not listen on {addr}; log:\n{}",
                    self.log()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        /// Wait until the control socket at `path` answers `status`.
        pub async fn wait_control(&self, path: &Path) {
            let started = Instant::now();
            while !self.ctl(path, &["status"]).await.status.success() {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "control socket {} never answered; log:\n{}",
                    path.display(),
                    self.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        /// `failoverd ctl --socket PATH ARGS...`, bounded by 30 s.
        pub async fn ctl(&self, socket: &Path, args: &[&str]) -> Output {
            ctl(socket, args).await
        }

        /// Wait up to `limit` for the process to exit; its exit code.
        pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
            let started = Instant::now();
            while started.elapsed() < limit {
                if let Ok(Some(status)) = self.child.try_wait() {
                    return status.code();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None
        }

        pub fn assert_alive_without_panic(&mut self) {
            let log = self.log();
            assert!(!log.contains("panicked"), "failoverd panicked:\n{log}");
            assert!(
                matches!(self.child.try_wait(), Ok(None)),
                "failoverd exited:\n{log}"
            );
        }
    }

    impl Drop for Failoverd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// `failoverd ctl --socket PATH ARGS...`, bounded by 30 s.
    pub async fn ctl(socket: &Path, args: &[&str]) -> Output {
        let mut command = tokio::process::Command::new(failoverd_bin());
        command
            .arg("ctl")
            .arg("--socket")
            .arg(socket)
            .args(args)
            .kill_on_drop(true);
        tokio::time::timeout(Duration::from_secs(30), command.output())
            .await
            .expect("ctl did not finish within 30 s")
            .expect("run failoverd ctl")
    }

    /// A backend that greets each client with its name and a newline, then
    /// echoes; connections that send nothing (health checks) are counted.
    pub struct GreetBackend {
        pub addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl GreetBackend {
        pub async fn start(name: &str) -> GreetBackend {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind backend");
            GreetBackend::serve(listener, name)
        }

        pub fn serve(listener: TcpListener, name: &str) -> GreetBackend {
            let addr = listener.local_addr().expect("backend addr");
            let accepted = Arc::new(AtomicUsize::new(0));
            let count = Arc::clone(&accepted);
            let greeting = format!("{name}\n");
            let task = tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    count.fetch_add(1, Ordering::Relaxed);
                    let greeting = greeting.clone();
                    tokio::spawn(async move {
                        let (mut r, mut w) = stream.into_split();
                        if w.write_all(greeting.as_bytes()).await.is_ok() {
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        }
                    });
                }
            });
            GreetBackend {
                addr,
                accepted,
                task,
            }
        }

        /// Connections accepted so far (checks and clients).
        pub fn checks(&self) -> usize {
            self.accepted.load(Ordering::Relaxed)
        }
    }

    impl Drop for GreetBackend {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Poll an async `cond` until it holds; fail after `limit`.
    pub async fn eventually_async<F, Fut>(limit: Duration, mut cond: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let started = Instant::now();
        while !cond().await {
            assert!(
                started.elapsed() < limit,
                "condition not met within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Connect and read the greeting line: who answered.
    pub async fn greeting(addr: SocketAddr) -> std::io::Result<String> {
        read_line(TcpStream::connect(addr).await?).await
    }

    /// Read one line (bounded by 10 s); EOF before it is an error.
    pub async fn read_line(mut stream: TcpStream) -> std::io::Result<String> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no greeting"))??;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if byte[0] == b'\n' {
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            line.push(byte[0]);
        }
    }

    /// GET /metrics; the body of a 200 answer.
    pub async fn scrape(addr: SocketAddr) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut text))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "scrape timed out"))??;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        if !head.starts_with("HTTP/1.1 200") {
            return Err(std::io::Error::other(format!("scrape answered {head}")));
        }
        Ok(body.to_string())
    }

    /// A client whose receive buffer is tiny, so the proxy cannot push a
    /// reply into it ahead of the client reading.
    pub async fn small_buffer_client(addr: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        socket.connect(addr).await.expect("connect to the proxy")
    }

    /// Close `stream` with a reset (SO_LINGER 0), not a FIN.
    pub fn reset(stream: TcpStream) {
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER");
        drop(stream);
    }

    /// Bytes written to `stream` its peer has not acknowledged yet.
    pub fn unacked(stream: &TcpStream) -> usize {
        use std::os::fd::AsFd;
        failoverd::forward::splice::unacked_bytes(stream.as_fd()).expect("SIOCOUTQ")
    }

    pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut data = vec![0u8; len];
        rng.fill(&mut data[..]);
        data
    }

    pub fn sha256(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    /// The path of a system tool, installing its Debian package once when
    /// it is missing and we are root; fails naming the package otherwise.
    pub fn tool(name: &str, package: &str) -> PathBuf {
        let find = || {
            let path = std::env::var("PATH").unwrap_or_default();
            path.split(':')
                .chain(["/usr/sbin", "/sbin", "/usr/bin"])
                .map(|dir| Path::new(dir).join(name))
                .find(|p| p.is_file())
        };
        if let Some(path) = find() {
            return path;
        }
        static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _once = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
        if find().is_none() && is_root() {
            let _ = Command::new("apt-get")
                .args(["install", "-y", "-qq", package])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        find().unwrap_or_else(|| panic!("{name} not found: install the Debian package {package}"))
    }

    pub fn is_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .map(|l| l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false)
    }

    /// Run a command to completion; panics with its output on failure.
    pub fn run(program: &Path, args: &[&str]) {
        let out = Command::new(program).args(args).output().expect("run tool");
        assert!(
            out.status.success(),
            "{} {args:?} failed: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// An nftables table of this test's own, deleted on drop.
    pub struct Nft {
        nft: PathBuf,
        table: String,
        netns: Option<String>,
    }

    impl Nft {
        /// Drop every loopback packet to or from `port` (a black hole).
        pub fn drop_port(port: u16) -> Nft {
            let nft = Nft::table(None);
            nft.add(&[
                "add",
                "rule",
                "inet",
                &nft.table,
                "out",
                "tcp",
                "dport",
                &port.to_string(),
                "drop",
            ]);
            nft.add(&[
                "add",
                "rule",
                "inet",
                &nft.table,
                "out",
                "tcp",
                "sport",
                &port.to_string(),
                "drop",
            ]);
            nft
        }

        /// An empty table with an output chain, in `netns` if given.
        pub fn table(netns: Option<&str>) -> Nft {
            static N: AtomicUsize = AtomicUsize::new(0);
            let nft = Nft {
                nft: tool("nft", "nftables"),
                table: format!(
                    "failoverd_hb_{}_{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ),
                netns: netns.map(str::to_owned),
            };
            nft.add(&["add", "table", "inet", &nft.table]);
            nft.add(&[
                "add",
                "chain",
                "inet",
                &nft.table,
                "out",
                "{ type filter hook output priority 0; }",
            ]);
            nft
        }

        pub fn add(&self, args: &[&str]) {
            match &self.netns {
                Some(ns) => {
                    let mut all = vec![
                        "netns",
                        "exec",
                        ns.as_str(),
                        self.nft.to_str().unwrap_or("nft"),
                    ];
                    all.extend_from_slice(args);
                    run(&tool("ip", "iproute2"), &all);
                }
                None => run(&self.nft, args),
            }
        }
    }

    impl Drop for Nft {
        fn drop(&mut self) {
            let args = ["delete", "table", "inet", self.table.as_str()];
            let mut command = match &self.netns {
                Some(ns) => {
                    let mut c = Command::new(tool("ip", "iproute2"));
                    c.args(["netns", "exec", ns.as_str()]).arg(&self.nft);
                    c
                }
                None => Command::new(&self.nft),
            };
            let _ = command.args(args).output();
        }
    }

    /// A blocking connect to `to` from 127.0.0.1:`port` (no ephemeral port
    /// needed); the stream is non-blocking, ready for tokio.
    pub fn connect_from(port: u16, to: SocketAddr) -> std::io::Result<std::net::TcpStream> {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())?;
        socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    }

    /// A network namespace of the test's own with loopback up, deleted on
    /// drop (drop the processes in it first).
    pub struct Netns {
        pub name: String,
        ip: PathBuf,
    }

    impl Netns {
        pub fn new() -> Netns {
            static N: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "failoverd-hb-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            let ip = tool("ip", "iproute2");
            run(&ip, &["netns", "add", &name]);
            let ns = Netns { name, ip };
            run(&ns.ip, &["-n", &ns.name, "link", "set", "lo", "up"]);
            ns
        }

        pub fn sysctl(&self, key: &str, value: &str) {
            let setting = format!("{key}={value}");
            run(
                &self.ip,
                &["netns", "exec", &self.name, "sysctl", "-q", "-w", &setting],
            );
        }

        /// Run `f` on a thread inside the namespace: sockets it creates
        /// belong to the namespace wherever they are used afterwards.
        pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
            let path = Path::new("/run/netns").join(&self.name);
            std::thread::scope(|scope| {
                scope
                    .spawn(move || {
                        let ns = std::fs::File::open(&path).expect("open the namespace");
                        enter_netns(&ns);
                        f()
                    })
                    .join()
                    .expect("namespace thread")
            })
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new(&self.ip)
                .args(["netns", "del", &self.name])
                .output();
        }
    }

    /// Move this thread (only) into the network namespace `ns`.
    #[allow(unsafe_code)]
    fn enter_netns(ns: &std::fs::File) {
        use std::os::fd::AsRawFd;
        // SAFETY: setns(2) takes an open namespace fd, borrowed for the
        // call, and a flag; it changes only the calling thread, a scoped
        // thread of `Netns::run` that ends when `f` returns.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }

    /// Write everything, then half-close; errors end it quietly.
    pub async fn write_and_close(mut stream: TcpStream, data: &[u8]) {
        let _ = stream.write_all(data).await;
        let _ = stream.shutdown().await;
    }
}
