//! Hardening against the real binary: `max_connections` exact on several
//! workers and resized in place by a reload; a second instance refused;
//! reloads that fail or move a listener; connections on a backend that is
//! not the active one are closed under `on_switch = "close"`.
//!
//! Every test starts `failoverd run` as a child process (`FAILOVERD_BIN`
//! overrides the binary, to run these against another build), talks to it
//! over loopback only, bounds its time and kills the child on drop.

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------
// Defect 1: max_connections exact with several workers, resized in place.

/// A client that connects, waits for the greeting, echoes one byte and
/// closes; fails if the greeting does not come within `limit`.
async fn one_client(proxy: SocketAddr, limit: Duration) -> Result<String, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(proxy).await.map_err(|e| e.to_string())?;
        let greeting = read_line(&mut stream).await.map_err(|e| e.to_string())?;
        stream.write_all(b"x").await.map_err(|e| e.to_string())?;
        let mut echo = [0u8; 1];
        stream
            .read_exact(&mut echo)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(greeting)
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("not served within {limit:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_1_serves_200_sequential_clients_on_every_worker() {
    within(60, async {
        let backend = Backend::start("primary").await;
        let proxy = Instance::start(&one_service(
            "max_connections = 1\ncheck_interval = \"1h\"",
            &[&backend],
        ))
        .await;
        for i in 0..200 {
            // At most one other connection is still closing: a client that
            // waits longer sits behind a slot parked on another worker.
            let greeting = one_client(proxy.addr, Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| {
                    panic!("client {i} of 200 (max_connections = 1, nothing else open): {e}")
                });
            assert_eq!(greeting, "OK primary");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_2_serves_a_second_client_while_one_is_open() {
    within(60, async {
        let backend = Backend::start("primary").await;
        let proxy = Instance::start(&one_service(
            "max_connections = 2\ncheck_interval = \"1h\"",
            &[&backend],
        ))
        .await;
        let mut held = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(read_line(&mut held).await.unwrap(), "OK primary");
        for i in 0..200 {
            one_client(proxy.addr, Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| {
                    panic!("client {i} of 200 (max_connections = 2, one open): {e}")
                });
        }
        // The held one still works.
        held.write_all(b"y").await.unwrap();
        let mut echo = [0u8; 1];
        held.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"y");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_exactly_for_200_concurrent_clients() {
    within(90, async {
        for max in [1, 2] {
            concurrent_clients(max, 200).await;
        }
    })
    .await;
}

/// `clients` connect at once to a service with `max_connections = max`;
/// each holds its connection 10 ms after the greeting. All are served,
/// never more than `max` at once, and `max` at once at some point.
async fn concurrent_clients(max: usize, clients: usize) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let backend = Backend::start("primary").await;
    let settings = format!("max_connections = {max}\ncheck_interval = \"1h\"");
    let proxy = Instance::start(&one_service(&settings, &[&backend])).await;
    // Greeted and not yet closed, counted by the clients themselves: a
    // client leaves the count before it closes, so before its slot frees.
    let open = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (open, peak) = (Arc::clone(&open), Arc::clone(&peak));
            let addr = proxy.addr;
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                read_line(&mut stream).await.map_err(|e| e.to_string())?;
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                open.fetch_sub(1, Ordering::SeqCst);
                drop(stream);
                Ok::<_, String>(())
            })
        })
        .collect();
    let mut served = 0;
    for task in tasks {
        // 5 s without one more client served: a client waits in a backlog
        // while fewer than `max` are open.
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(Ok(()))) => served += 1,
            Ok(Ok(Err(e))) => panic!("max_connections = {max}: a client failed: {e}"),
            Ok(Err(e)) => panic!("client task: {e}"),
            Err(_) => panic!(
                "max_connections = {max}: {served} of {clients} served, then none for 5 s \
                 with {} open",
                open.load(Ordering::SeqCst)
            ),
        }
    }
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        peak <= max,
        "{peak} connections open at once under max_connections = {max}"
    );
    assert_eq!(
        peak, max,
        "never {max} at once: the limit is stricter than configured"
    );
}

/// Clients that connect, wait for their greeting and then hold the
/// connection; the test counts and drops the greeted ones.
struct Crowd {
    addr: SocketAddr,
    tx: tokio::sync::mpsc::UnboundedSender<TcpStream>,
    greeted: tokio::sync::mpsc::UnboundedReceiver<TcpStream>,
    held: Vec<TcpStream>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Crowd {
    fn new(addr: SocketAddr) -> Crowd {
        let (tx, greeted) = tokio::sync::mpsc::unbounded_channel();
        Crowd {
            addr,
            tx,
            greeted,
            held: Vec::new(),
            tasks: Vec::new(),
        }
    }

    /// Start `n` more clients.
    fn connect(&mut self, n: usize) {
        for _ in 0..n {
            let (tx, addr) = (self.tx.clone(), self.addr);
            self.tasks.push(tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr)
                    .await
                    .expect("connect to the proxy");
                if read_line(&mut stream).await.is_ok() {
                    let _ = tx.send(stream);
                }
            }));
        }
    }

    /// Collect greetings for `wait`; returns how many are held in total.
    async fn settle(&mut self, wait: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(stream)) = tokio::time::timeout_at(deadline, self.greeted.recv()).await {
            self.held.push(stream);
        }
        self.held.len()
    }

    /// Wait until `want` are held (at most `limit`), then make sure no
    /// more come for `quiet`.
    async fn expect_held(&mut self, want: usize, limit: Duration, quiet: Duration, what: &str) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.held.len() < want {
            match tokio::time::timeout_at(deadline, self.greeted.recv()).await {
                Ok(Some(stream)) => self.held.push(stream),
                _ => panic!(
                    "{what}: {} served, wanted {want} within {limit:?}",
                    self.held.len()
                ),
            }
        }
        let now = self.settle(quiet).await;
        assert_eq!(now, want, "{what}: {now} served, wanted exactly {want}");
    }

    fn close(&mut self, n: usize) {
        for _ in 0..n {
            self.held.pop();
        }
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_resizes_max_connections_in_place_under_load() {
    within(90, async {
        let backend = Backend::start("primary").await;
        let listen = free_port();
        let config = |max: usize| {
            let settings = format!("max_connections = {max}\ncheck_interval = \"1h\"");
            service("svc", listen, &settings, &[&backend])
        };
        let mut proxy = Instance::start_with_control(&config(2)).await;
        let mut crowd = Crowd::new(proxy.addr);
        let serve = Duration::from_secs(5);
        let quiet = Duration::from_millis(400);

        crowd.connect(12);
        crowd
            .expect_held(2, serve, quiet, "max_connections = 2, 12 clients")
            .await;

        proxy.reload(&config(5)).await;
        crowd
            .expect_held(5, serve, quiet, "after a reload 2 -> 5")
            .await;

        proxy.reload(&config(1)).await;
        crowd.close(4);
        assert_eq!(
            crowd.settle(quiet).await,
            1,
            "5 -> 1 with 1 still open: nobody new"
        );
        crowd.close(1);
        crowd
            .expect_held(1, serve, quiet, "5 -> 1, all closed: one new")
            .await;

        // 1 -> unlimited: the 6 still waiting get in at once.
        proxy.reload(&config(0)).await;
        crowd
            .expect_held(7, serve, quiet, "after a reload 1 -> 0 (unlimited)")
            .await;

        // Unlimited -> 3 with 7 open: new clients wait until fewer than 3 are open.
        proxy.reload(&config(3)).await;
        crowd.connect(3);
        assert_eq!(
            crowd.settle(quiet).await,
            7,
            "0 -> 3 with 7 open: nobody new"
        );
        crowd.close(5);
        crowd
            .expect_held(3, serve, quiet, "0 -> 3, 2 left open: one new")
            .await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// Defect 4: a second instance on the same address exits 1 naming it.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_a_served_address_exits_1_naming_it() {
    within(30, async {
        let backend = Backend::start("primary").await;
        let config = one_service("check_interval = \"1h\"", &[&backend]);
        let first = Instance::start(&config).await;
        let mut second = Instance::spawn(&config, false);
        let code = second.exit_code(Duration::from_secs(10)).await;
        let log = second.log_text();
        assert_eq!(
            code,
            Some(1),
            "second instance on {}: exit {code:?}\n{log}",
            first.addr
        );
        assert!(
            log.contains(&first.addr.to_string()),
            "the error does not name {}:\n{log}",
            first.addr
        );
        // The first one serves every client, alone.
        for _ in 0..20 {
            let greeting = one_client(first.addr, Duration::from_secs(5)).await;
            assert_eq!(greeting.as_deref(), Ok("OK primary"));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_onto_an_address_another_process_serves_is_rejected() {
    within(30, async {
        let backend = Backend::start("primary").await;
        let listen = free_port();
        let mut proxy = Instance::start_with_control(&service(
            "svc",
            listen,
            "check_interval = \"1h\"",
            &[&backend],
        ))
        .await;
        // Another program on the port, with SO_REUSEPORT as failoverd's own
        // worker sockets have: the kernel would let a reload join it.
        let theirs = reuseport_listener();
        let taken = theirs.local_addr().unwrap();
        let answer = proxy
            .try_reload(&service(
                "svc",
                taken,
                "check_interval = \"1h\"",
                &[&backend],
            ))
            .await;
        assert_eq!(answer["ok"], false, "reload onto {taken} applied: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&taken.to_string()),
            "error does not name {taken}: {error}"
        );
        // Nothing changed: the old address serves.
        let greeting = one_client(listen, Duration::from_secs(5)).await;
        assert_eq!(greeting.as_deref(), Ok("OK primary"));
        drop(theirs);
    })
    .await;
}

// ---------------------------------------------------------------------------
// Defect 5: a reload that fails on one service leaves no new listener behind.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_leaves_no_new_listener_and_the_old_config_serves() {
    within(30, async {
        let backend = Backend::start("primary").await;
        let (a1, b1, a2) = (free_port(), free_port(), free_port());
        // TEST-NET-1 (RFC 5737): not on this host, and no freebind.
        let unbindable: SocketAddr = format!("192.0.2.1:{}", free_port().port()).parse().unwrap();
        let settings = "check_interval = \"1h\"";
        let config = |a: SocketAddr, b: SocketAddr| {
            service("a", a, settings, &[&backend]) + &service("b", b, settings, &[&backend])
        };
        let mut proxy = Instance::start_with_control(&config(a1, b1)).await;
        let answer = proxy.try_reload(&config(a2, unbindable)).await;
        assert_eq!(answer["ok"], false, "reload with {unbindable} applied: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(&unbindable.to_string()), "error does not name {unbindable}: {error}");
        // Service a's new address was bound before b failed: it must be closed.
        for _ in 0..10 {
            if let Ok(mut stream) = TcpStream::connect(a2).await {
                let served = tokio::time::timeout(Duration::from_secs(2), read_line(&mut stream)).await;
                panic!("{a2} (a's address in the rejected config) accepts a client after the failed reload; served: {served:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (name, addr) in [("a", a1), ("b", b1)] {
            let greeting = one_client(addr, Duration::from_secs(5)).await;
            assert_eq!(greeting.as_deref(), Ok("OK primary"), "service {name} on its old address {addr}");
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// Defect 6: a reload that moves the listen address keeps health state.

/// Health checks that pass on `OK` greetings, fast enough for a test.
const ROLE_CHECKS: &str = "check_interval = \"200ms\"\ncheck_timeout = \"200ms\"\n\
     check_expect = \"OK\"\nfall = 2\nrise = 2\non_switch = \"close\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moving_the_listen_address_keeps_health_and_connections() {
    within(60, async {
        let primary = Backend::start("primary").await;
        primary.set_healthy(false);
        let backup = Backend::start("backup").await;
        let (old, new) = (free_port(), free_port());
        let mut proxy =
            Instance::start_with_control(&service("svc", old, ROLE_CHECKS, &[&primary, &backup])).await;
        // The primary fails its checks: traffic moves to the backup.
        eventually(Duration::from_secs(10), "traffic on the backup", || async {
            one_client(old, Duration::from_secs(2)).await.as_deref() == Ok("OK backup")
        })
        .await;
        let switches = proxy.log_count("active backend switched");
        assert_eq!(switches, 1, "one switch, primary -> backup:\n{}", proxy.log_text());
        let mut before = TcpStream::connect(old).await.unwrap();
        assert_eq!(read_line(&mut before).await.unwrap(), "OK backup");

        proxy.reload(&service("svc", new, ROLE_CHECKS, &[&primary, &backup])).await;
        // Each check below adds what it saw, so a run shows every defect.
        let mut problems = Vec::new();
        // Right after the reload and for a while, the new address serves
        // from the backup: the primary is still down.
        let until = tokio::time::Instant::now() + Duration::from_millis(1500);
        let (mut clients, mut wrong) = (0, Vec::new());
        while tokio::time::Instant::now() < until {
            let greeting = one_client(new, Duration::from_secs(2)).await;
            if greeting.as_deref() != Ok("OK backup") {
                wrong.push(format!("client {clients}: {greeting:?}"));
            }
            clients += 1;
        }
        if !wrong.is_empty() {
            problems.push(format!(
                "{} of {clients} clients on {new} in the 1.5 s after the reload not served by the backup: {}",
                wrong.len(),
                wrong.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if TcpStream::connect(old).await.is_ok() {
            problems.push(format!("{old} still accepts after the move"));
        }
        let switches = proxy.log_count("active backend switched");
        if switches != 1 {
            problems.push(format!("{switches} switches logged, 1 before the reload"));
        }

        // A later switch (failback) closes the connection made before the reload.
        primary.set_healthy(true);
        eventually(Duration::from_secs(10), "failback to the primary", || async {
            one_client(new, Duration::from_secs(2)).await.as_deref() == Ok("OK primary")
        })
        .await;
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(3), before.read(&mut buf)).await;
        if !matches!(closed, Ok(Ok(0)) | Ok(Err(_))) {
            problems.push(format!(
                "the connection on the backup made before the reload is still open 3 s after the failback ({closed:?})"
            ));
        }
        assert!(problems.is_empty(), "{}\n{}", problems.join("\n"), proxy.log_text());
    })
    .await;
}

// ---------------------------------------------------------------------------
// Defect 7: no connection stays on a backend other than the active one
// under on_switch = "close".

/// Wait until `stream` is closed by the proxy (EOF or reset), at most `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// The primary refuses one connect (it is restarting); that client falls
/// back to the backup; the primary listens again and stays active.
/// Returns the client that fell back.
async fn fall_back_once(proxy: &Instance, primary: &mut Backend) -> TcpStream {
    eventually(
        Duration::from_secs(10),
        "traffic on the primary",
        || async {
            one_client(proxy.addr, Duration::from_secs(2))
                .await
                .as_deref()
                == Ok("OK primary")
        },
    )
    .await;
    primary.stop_listening().await;
    let mut fell_back = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(read_line(&mut fell_back).await.unwrap(), "OK backup");
    primary.listen_again().await;
    fell_back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_connection_closes_when_the_active_backend_takes_a_new_one() {
    within(30, async {
        let mut primary = Backend::start("primary").await;
        let backup = Backend::start("backup").await;
        // Checks at start only; one refused connect is below passive_errors.
        let settings = "check_interval = \"1h\"\npassive_errors = 3\non_switch = \"close\"";
        let proxy = Instance::start(&one_service(settings, &[&primary, &backup])).await;
        let mut fell_back = fall_back_once(&proxy, &mut primary).await;
        // The primary is active and takes the next client: now two
        // backends would take writes.
        let greeting = one_client(proxy.addr, Duration::from_secs(5)).await;
        assert_eq!(
            greeting.as_deref(),
            Ok("OK primary"),
            "the primary stayed active"
        );
        assert!(
            closed_within(&mut fell_back, Duration::from_secs(3)).await,
            "the connection that fell back to the backup is still open 3 s after the active \
             primary took a new client\n{}",
            proxy.log_text()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_connection_closes_at_the_active_backends_next_passing_check() {
    within(30, async {
        let mut primary = Backend::start("primary").await;
        let backup = Backend::start("backup").await;
        let settings = "check_interval = \"300ms\"\ncheck_timeout = \"300ms\"\n\
                        passive_errors = 3\non_switch = \"close\"";
        let proxy = Instance::start(&one_service(settings, &[&primary, &backup])).await;
        let mut fell_back = fall_back_once(&proxy, &mut primary).await;
        // No new client: the primary's next passing check is the proof.
        assert!(
            closed_within(&mut fell_back, Duration::from_secs(3)).await,
            "the connection that fell back to the backup is still open 3 s (10 checks) later\n{}",
            proxy.log_text()
        );
        assert_eq!(
            proxy.log_count("active backend switched"),
            0,
            "no switch in this test"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_keep_a_fallback_connection_stays_open() {
    within(30, async {
        let mut primary = Backend::start("primary").await;
        let backup = Backend::start("backup").await;
        let settings = "check_interval = \"300ms\"\ncheck_timeout = \"300ms\"\n\
                        passive_errors = 3\non_switch = \"keep\"";
        let proxy = Instance::start(&one_service(settings, &[&primary, &backup])).await;
        let mut fell_back = fall_back_once(&proxy, &mut primary).await;
        assert_eq!(
            one_client(proxy.addr, Duration::from_secs(5))
                .await
                .as_deref(),
            Ok("OK primary")
        );
        assert!(
            !closed_within(&mut fell_back, Duration::from_secs(1)).await,
            "closed under keep"
        );
        fell_back.write_all(b"z").await.unwrap();
        let mut echo = [0u8; 1];
        fell_back.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"z");
    })
    .await;
}

/// A switch lands while a connection is still choosing: its connect to the
/// active backend hangs (black-holed), and meanwhile the active backend is
/// disabled, which moves traffic to the third backend and closes the
/// second's connections. The connection must not then settle on the
/// second backend, chosen from the snapshot it loaded before the switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_during_a_slow_connect_is_not_slipped_past() {
    within(30, async {
        let hole = BlackHole::start();
        let second = Backend::start("second").await;
        let third = Backend::start("third").await;
        // Manual failback: re-enabling "second" does not switch back.
        let settings = "check_interval = \"1h\"\nconnect_timeout = \"2s\"\npassive_errors = 0\n\
                        failback = \"manual\"\non_switch = \"close\"";
        let backends = [
            ("first", hole.addr),
            ("second", second.addr),
            ("third", third.addr),
        ];
        let proxy =
            Instance::start_with_control(&service_with("svc", free_port(), settings, &backends))
                .await;
        // The start-up check has passed (first is active); now it takes no more.
        hole.fill().await;
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        // The connection has loaded its snapshot (first active) and hangs
        // in the connect to first for 2 s; meanwhile:
        tokio::time::sleep(Duration::from_millis(300)).await;
        for (cmd, backend) in [
            ("disable", "second"),
            ("disable", "first"),
            ("enable", "second"),
        ] {
            let answer = proxy
                .ctl(&format!(
                    r#"{{"cmd":"{cmd}","service":"svc","backend":"{backend}"}}"#
                ))
                .await;
            assert_eq!(answer["ok"], true, "{cmd} {backend}: {answer}");
        }
        let status = proxy.ctl(r#"{"cmd":"status"}"#).await;
        assert_eq!(
            status["status"]["services"][0]["active"], "third",
            "{status}"
        );
        let greeting = tokio::time::timeout(Duration::from_secs(5), read_line(&mut client)).await;
        let greeting = greeting.expect("served within 5 s").expect("served");
        assert_eq!(
            greeting,
            "OK third",
            "the client ended on a backend the switch to third had closed: split brain\n{}",
            proxy.log_text()
        );
    })
    .await;
}

// ---------------------------------------------------------------------------

mod support {
    //! Small helpers for this file: a greeting backend, a config writer,
    //! the binary as a child process, polling. Meant to be swapped for the
    //! shared harness in `tests/common` later.
    #![allow(dead_code)]

    use std::future::Future;
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream, UnixStream};
    use tokio::task::JoinHandle;

    /// Every test bounds its own time with this.
    pub async fn within<T>(secs: u64, fut: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(secs), fut)
            .await
            .unwrap_or_else(|_| panic!("test did not finish within {secs} s"))
    }

    /// Poll `check` every 20 ms until it holds or `limit` passes.
    pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + limit;
        while !check().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A listening socket on a fresh loopback port with SO_REUSEPORT, as
    /// another failoverd's worker sockets have.
    pub fn reuseport_listener() -> std::net::TcpListener {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        socket.set_reuse_port(true).expect("SO_REUSEPORT");
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        socket.bind(&addr.into()).expect("bind");
        socket.listen(16).expect("listen");
        socket.into()
    }

    /// A loopback port nothing listens on right now.
    pub fn free_port() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.local_addr().expect("local addr")
    }

    /// Read one line without its newline; EOF first is an error.
    pub async fn read_line(stream: &mut TcpStream) -> std::io::Result<String> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            if stream.read(&mut byte).await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before the end of the line",
                ));
            }
            if byte[0] == b'\n' {
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            line.push(byte[0]);
        }
    }

    /// A backend on 127.0.0.1 that greets every connection with
    /// `OK <name>` (healthy) or `DOWN <name>`, then echoes. With
    /// `check_expect = "OK"` its health follows [`Backend::set_healthy`].
    pub struct Backend {
        pub name: String,
        pub addr: SocketAddr,
        healthy: Arc<AtomicBool>,
        task: Option<JoinHandle<()>>,
    }

    impl Backend {
        pub async fn start(name: &str) -> Backend {
            let listener = listen("127.0.0.1:0".parse().expect("addr")).expect("bind backend");
            let mut backend = Backend {
                name: name.to_string(),
                addr: listener.local_addr().expect("backend addr"),
                healthy: Arc::new(AtomicBool::new(true)),
                task: None,
            };
            backend.serve(listener);
            backend
        }

        fn serve(&mut self, listener: TcpListener) {
            let (name, healthy) = (self.name.clone(), Arc::clone(&self.healthy));
            self.task = Some(tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        // Out of fds, say: do not spin.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let state = if healthy.load(Ordering::SeqCst) {
                        "OK"
                    } else {
                        "DOWN"
                    };
                    let greeting = format!("{state} {name}\n");
                    // Detached: stopping the listener leaves them open.
                    tokio::spawn(greet_and_echo(stream, greeting));
                }
            }));
        }

        pub fn set_healthy(&self, healthy: bool) {
            self.healthy.store(healthy, Ordering::SeqCst);
        }

        /// Stop listening (new connects are refused); open connections go on.
        pub async fn stop_listening(&mut self) {
            if let Some(task) = self.task.take() {
                task.abort();
                let _ = task.await;
            }
        }

        /// Listen again on the same port.
        pub async fn listen_again(&mut self) {
            for _ in 0..100 {
                if let Ok(listener) = listen(self.addr) {
                    self.serve(listener);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("cannot listen on {} again", self.addr);
        }
    }

    impl Drop for Backend {
        fn drop(&mut self) {
            if let Some(task) = self.task.take() {
                task.abort();
            }
        }
    }

    /// A listener with a deep accept queue, as failoverd's own: a burst of
    /// reconnects must not overflow it (the kernel would drop SYNs and the
    /// proxy's connect time out).
    fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        TcpListener::from_std(socket.into())
    }

    /// A listener that never accepts, with the shortest queue: once one
    /// connection waits in it the kernel drops every SYN, so connects hang
    /// (a black-holed backend, on loopback).
    pub struct BlackHole {
        pub addr: SocketAddr,
        _listener: std::net::TcpListener,
        fillers: std::sync::Mutex<Vec<TcpStream>>,
    }

    impl BlackHole {
        pub fn start() -> BlackHole {
            use socket2::{Domain, Socket, Type};
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
            let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
            socket.bind(&addr.into()).expect("bind");
            socket.listen(0).expect("listen");
            let listener: std::net::TcpListener = socket.into();
            BlackHole {
                addr: listener.local_addr().expect("addr"),
                _listener: listener,
                fillers: std::sync::Mutex::new(Vec::new()),
            }
        }

        /// Connect until a connect hangs: from then on, every one does.
        pub async fn fill(&self) {
            for _ in 0..16 {
                let connect = TcpStream::connect(self.addr);
                match tokio::time::timeout(Duration::from_millis(300), connect).await {
                    Ok(Ok(stream)) => self.fillers.lock().expect("lock").push(stream),
                    Ok(Err(e)) => panic!("connect to the black hole {}: {e}", self.addr),
                    Err(_) => return,
                }
            }
            panic!("the black hole {} keeps accepting connects", self.addr);
        }
    }

    async fn greet_and_echo(mut stream: TcpStream, greeting: String) -> std::io::Result<()> {
        stream.write_all(greeting.as_bytes()).await?;
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            stream.write_all(&buf[..n]).await?;
        }
    }

    /// A `[[service]]` table with these backends in order.
    pub fn service(
        name: &str,
        listen: SocketAddr,
        settings: &str,
        backends: &[&Backend],
    ) -> String {
        let pairs: Vec<(&str, SocketAddr)> =
            backends.iter().map(|b| (b.name.as_str(), b.addr)).collect();
        service_with(name, listen, settings, &pairs)
    }

    /// As [`service`], with backends given as (name, address).
    pub fn service_with(
        name: &str,
        listen: SocketAddr,
        settings: &str,
        backends: &[(&str, SocketAddr)],
    ) -> String {
        let mut text =
            format!("[[service]]\nname = \"{name}\"\nlisten = \"{listen}\"\n{settings}\n");
        for (backend, addr) in backends {
            text.push_str(&format!(
                "[[service.backend]]\nname = \"{backend}\"\naddress = \"{addr}\"\n"
            ));
        }
        text
    }

    /// One service `svc` on a fresh port; `Instance::start` reads it back.
    pub fn one_service(settings: &str, backends: &[&Backend]) -> String {
        service("svc", free_port(), settings, backends)
    }

    /// The binary under test: `FAILOVERD_BIN`, else this crate's build.
    pub fn bin() -> PathBuf {
        std::env::var_os("FAILOVERD_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_failoverd")))
    }

    /// A temporary directory removed on drop.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new() -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "failoverd-hardening-a-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// `failoverd run` as a child process; killed on drop.
    pub struct Instance {
        child: Child,
        /// The first service's listen address.
        pub addr: SocketAddr,
        pub config: PathBuf,
        pub log: PathBuf,
        pub socket: Option<PathBuf>,
        _dir: TempDir,
    }

    impl Instance {
        /// Start on `services` and wait until the first one accepts.
        pub async fn start(services: &str) -> Instance {
            let instance = Instance::spawn(services, false);
            instance.wait_listening().await;
            instance
        }

        /// As `start`, with a control socket for `reload` and `ctl`.
        pub async fn start_with_control(services: &str) -> Instance {
            let instance = Instance::spawn(services, true);
            instance.wait_listening().await;
            instance
        }

        /// Start without waiting (for a start that is expected to fail).
        pub fn spawn(services: &str, control: bool) -> Instance {
            let dir = TempDir::new();
            let config = dir.0.join("failoverd.toml");
            let socket = control.then(|| dir.0.join("ctl.sock"));
            let log = dir.0.join("stderr.log");
            let addr = first_listen(services);
            std::fs::write(&config, config_text(socket.as_ref(), services)).expect("write config");
            let child = Command::new(bin())
                .arg("run")
                .arg("-c")
                .arg(&config)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file"))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin().display()));
            Instance {
                child,
                addr,
                config,
                log,
                socket,
                _dir: dir,
            }
        }

        async fn wait_listening(&self) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(self.addr).await.is_err() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "failoverd did not listen on {}:\n{}",
                    self.addr,
                    self.log_text()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        /// Wait for the process to exit (at most `limit`); its exit code.
        pub async fn exit_code(&mut self, limit: Duration) -> Option<i32> {
            let deadline = tokio::time::Instant::now() + limit;
            loop {
                if let Some(status) = self.child.try_wait().expect("try_wait") {
                    return status.code();
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "failoverd still running after {limit:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        pub fn log_text(&self) -> String {
            std::fs::read_to_string(&self.log).unwrap_or_default()
        }

        /// Lines of the log that contain `pattern`.
        pub fn log_count(&self, pattern: &str) -> usize {
            self.log_text()
                .lines()
                .filter(|l| l.contains(pattern))
                .count()
        }

        /// Write `services` as the new config and reload; panics unless applied.
        pub async fn reload(&mut self, services: &str) {
            let answer = self.try_reload(services).await;
            assert_eq!(
                answer["ok"],
                true,
                "reload not applied: {answer}\n{}",
                self.log_text()
            );
        }

        /// Write `services` and reload; the control socket's answer.
        pub async fn try_reload(&mut self, services: &str) -> serde_json::Value {
            std::fs::write(&self.config, config_text(self.socket.as_ref(), services))
                .expect("write config");
            self.ctl(r#"{"cmd":"reload"}"#).await
        }

        /// One request on the control socket.
        pub async fn ctl(&self, request: &str) -> serde_json::Value {
            let path = self
                .socket
                .as_ref()
                .expect("instance started with a control socket");
            let stream = UnixStream::connect(path)
                .await
                .expect("connect control socket");
            let (read, mut write) = stream.into_split();
            write
                .write_all(format!("{request}\n").as_bytes())
                .await
                .expect("send request");
            let mut lines = BufReader::new(read).lines();
            let line = lines
                .next_line()
                .await
                .expect("read answer")
                .expect("an answer");
            serde_json::from_str(&line).expect("answer is JSON")
        }
    }

    impl Drop for Instance {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn config_text(socket: Option<&PathBuf>, services: &str) -> String {
        match socket {
            Some(path) => format!("[admin]\nsocket = \"{}\"\n\n{services}", path.display()),
            None => services.to_string(),
        }
    }

    fn first_listen(services: &str) -> SocketAddr {
        services
            .lines()
            .find_map(|l| l.strip_prefix("listen = \""))
            .and_then(|rest| rest.strip_suffix('"'))
            .and_then(|addr| addr.parse().ok())
            .expect("a listen address in the config")
    }
}
