//! Hardening against the real binary: `max_connections` exact on several
//! workers and resized in place by a reload; a second instance refused;
//! reloads that fail or move a listener; connections on a backend that is
//! not the active one are closed under `on_switch = "close"`.
//!
//! Every test starts `failoverd run` through the harness (`FAILOVERD_BIN`
//! overrides the binary, to run these against another build), talks to it
//! over loopback only, bounds its time and kills the child on drop. The
//! backends greet `OK <name>` (or `DOWN <name>`, failing the checks that
//! expect `OK`) and echo.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Checks once an hour: the start-up round only.
fn hourly() -> Table {
    Table::new().set("check_interval", "1h")
}

/// `max_connections = max`, checks at start only.
fn limited(max: usize) -> Table {
    hourly().set("max_connections", max)
}

/// Checks every 300 ms; three refused connects on live traffic mark a
/// backend down.
fn checks_300ms() -> Table {
    Table::new()
        .set("check_interval", "300ms")
        .set("check_timeout", "300ms")
        .set("passive_errors", 3)
}

/// Service "svc" on `listen` with `settings` and these backends in order.
fn service(listen: SocketAddr, settings: &Table, backends: &[&TestBackend]) -> Service {
    backends.iter().fold(
        Service::new("svc").listen(listen).merge(settings),
        |service, b| service.backend(&b.name, b.addr),
    )
}

/// The whole config: the layout's `[admin]` and `service`.
fn config(layout: &Layout, service: Service) -> String {
    layout.config(service).to_string()
}

/// failoverd with service "svc" on the layout's listen address.
async fn start(tag: &str, settings: &Table, backends: &[&TestBackend]) -> Failoverd {
    Failoverd::start(tag, |layout| {
        config(layout, service(layout.listen, settings, backends))
    })
    .await
}

/// Replace the config and reload; panics unless applied.
async fn reload(proxy: &Failoverd, text: &str) {
    let answer = proxy.reload(text).await;
    assert_eq!(
        answer.code,
        Some(0),
        "reload not applied: {answer:?}\n{}",
        proxy.log()
    );
}

/// Wait until a new client on `listen` is greeted with `want`.
async fn served_by(listen: SocketAddr, want: &str, what: &str) {
    eventually(Duration::from_secs(10), what, || async {
        let greeting = one_client(listen, Duration::from_secs(2)).await;
        if greeting.as_deref() == Ok(want) {
            Ok(())
        } else {
            Err(greeting)
        }
    })
    .await;
}

/// A listening socket on a fresh loopback port with SO_REUSEPORT, as
/// another failoverd's worker sockets have.
fn reuseport_listener() -> std::net::TcpListener {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    socket.set_reuse_port(true).expect("SO_REUSEPORT");
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    socket.bind(&addr.into()).expect("bind");
    socket.listen(16).expect("listen");
    socket.into()
}

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
        let backend = TestBackend::start("primary", Mode::Status).await;
        let proxy = start("max1", &limited(1), &[&backend]).await;
        for i in 0..200 {
            // At most one other connection is still closing: a client that
            // waits longer sits behind a slot parked on another worker.
            let greeting = one_client(proxy.listen(), Duration::from_secs(5))
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
        let backend = TestBackend::start("primary", Mode::Status).await;
        let proxy = start("max2", &limited(2), &[&backend]).await;
        let mut held = TcpStream::connect(proxy.listen()).await.unwrap();
        assert_eq!(read_line(&mut held).await.unwrap(), "OK primary");
        for i in 0..200 {
            one_client(proxy.listen(), Duration::from_secs(5))
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
    let backend = TestBackend::start("primary", Mode::Status).await;
    let proxy = start("max-concurrent", &limited(max), &[&backend]).await;
    // Greeted and not yet closed, counted by the clients themselves: a
    // client leaves the count before it closes, so before its slot frees.
    let open = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (open, peak) = (Arc::clone(&open), Arc::clone(&peak));
            let addr = proxy.listen();
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
        let backend = TestBackend::start("primary", Mode::Status).await;
        let with_max = |layout: &Layout, max: usize| {
            config(layout, service(layout.listen, &limited(max), &[&backend]))
        };
        let proxy = Failoverd::start("resize", |layout| with_max(layout, 2)).await;
        let config = |max: usize| with_max(proxy.layout(), max);
        let mut crowd = Crowd::new(proxy.listen());
        let serve = Duration::from_secs(5);
        let quiet = Duration::from_millis(400);

        crowd.connect(12);
        crowd
            .expect_held(2, serve, quiet, "max_connections = 2, 12 clients")
            .await;

        reload(&proxy, &config(5)).await;
        crowd
            .expect_held(5, serve, quiet, "after a reload 2 -> 5")
            .await;

        reload(&proxy, &config(1)).await;
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
        reload(&proxy, &config(0)).await;
        crowd
            .expect_held(7, serve, quiet, "after a reload 1 -> 0 (unlimited)")
            .await;

        // Unlimited -> 3 with 7 open: new clients wait until fewer than 3 are open.
        reload(&proxy, &config(3)).await;
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
        let backend = TestBackend::start("primary", Mode::Status).await;
        let first = start("first", &hourly(), &[&backend]).await;
        // Its own control socket and metrics port, the first one's listen address.
        let layout = Layout::new("second");
        let text = config(&layout, service(first.listen(), &hourly(), &[&backend]));
        let mut second = Failoverd::spawn(layout, &text);
        let code = second.wait_exit(Duration::from_secs(10)).await;
        let log = second.log();
        assert_eq!(
            code,
            Some(1),
            "second instance on {}: exit {code:?}\n{log}",
            first.listen()
        );
        assert!(
            log.contains(&first.listen().to_string()),
            "the error does not name {}:\n{log}",
            first.listen()
        );
        // The first one serves every client, alone.
        for _ in 0..20 {
            let greeting = one_client(first.listen(), Duration::from_secs(5)).await;
            assert_eq!(greeting.as_deref(), Ok("OK primary"));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_onto_an_address_another_process_serves_is_rejected() {
    within(30, async {
        let backend = TestBackend::start("primary", Mode::Status).await;
        let proxy = start("reload-taken", &hourly(), &[&backend]).await;
        let listen = proxy.listen();
        // Another program on the port, with SO_REUSEPORT as failoverd's own
        // worker sockets have: the kernel would let a reload join it.
        let theirs = reuseport_listener();
        let taken = theirs.local_addr().unwrap();
        let answer = proxy
            .reload(&config(
                proxy.layout(),
                service(taken, &hourly(), &[&backend]),
            ))
            .await;
        assert_eq!(
            answer.code,
            Some(2),
            "reload onto {taken} applied: {answer:?}"
        );
        let error = &answer.stderr;
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
        let backend = TestBackend::start("primary", Mode::Status).await;
        let (b1, a2) = (free_port(), free_port());
        // TEST-NET-1 (RFC 5737): not on this host, and no freebind.
        let unbindable: SocketAddr = format!("192.0.2.1:{}", free_port().port()).parse().unwrap();
        let config = |layout: &Layout, a: SocketAddr, b: SocketAddr| {
            let named = |name: &str, listen| {
                Service::new(name)
                    .listen(listen)
                    .merge(&hourly())
                    .backend("primary", backend.addr)
            };
            layout
                .config(named("a", a))
                .service(named("b", b))
                .to_string()
        };
        let proxy = Failoverd::start("failed-reload", |layout| config(layout, layout.listen, b1)).await;
        let a1 = proxy.listen();
        let answer = proxy.reload(&config(proxy.layout(), a2, unbindable)).await;
        assert_eq!(answer.code, Some(2), "reload with {unbindable} applied: {answer:?}");
        let error = &answer.stderr;
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
fn role_checks() -> Table {
    Table::new()
        .set("check_interval", "200ms")
        .set("check_timeout", "200ms")
        .set("check_expect", "OK")
        .set("fall", 2)
        .set("rise", 2)
        .set("on_switch", "close")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moving_the_listen_address_keeps_health_and_connections() {
    within(60, async {
        let primary = TestBackend::start("primary", Mode::Status).await;
        primary.set_healthy(false);
        let backup = TestBackend::start("backup", Mode::Status).await;
        let proxy = start("move", &role_checks(), &[&primary, &backup]).await;
        let (old, new) = (proxy.listen(), free_port());
        // The primary fails its checks: traffic moves to the backup.
        served_by(old, "OK backup", "traffic on the backup").await;
        let switches = proxy.log_count("active backend switched");
        assert_eq!(switches, 1, "one switch, primary -> backup:\n{}", proxy.log());
        let mut before = TcpStream::connect(old).await.unwrap();
        assert_eq!(read_line(&mut before).await.unwrap(), "OK backup");

        reload(
            &proxy,
            &config(proxy.layout(), service(new, &role_checks(), &[&primary, &backup])),
        )
        .await;
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
        served_by(new, "OK primary", "failback to the primary").await;
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(3), before.read(&mut buf)).await;
        if !matches!(closed, Ok(Ok(0)) | Ok(Err(_))) {
            problems.push(format!(
                "the connection on the backup made before the reload is still open 3 s after the failback ({closed:?})"
            ));
        }
        assert!(problems.is_empty(), "{}\n{}", problems.join("\n"), proxy.log());
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
/// Returns the client that fell back. With `checks`, waits until a check
/// of the primary has failed before the client connects: a check that
/// connected before the primary stopped listening and passed after the
/// fallback would close the fallback at once (what the tests assert, but
/// too early for this set-up; seen once in CI as a reset greeting).
async fn fall_back_once(proxy: &Failoverd, primary: &mut TestBackend, checks: bool) -> TcpStream {
    served_by(proxy.listen(), "OK primary", "traffic on the primary").await;
    primary.stop_listening().await;
    if checks {
        eventually(
            Duration::from_secs(5),
            "a failed check of the stopped primary",
            || async {
                let status = proxy.status_json().await;
                let failures = status["services"][0]["backends"][0]["consecutive_failures"]
                    .as_u64()
                    .unwrap_or(0);
                if failures >= 1 { Ok(()) } else { Err(failures) }
            },
        )
        .await;
    }
    let mut fell_back = TcpStream::connect(proxy.listen()).await.unwrap();
    assert_eq!(read_line(&mut fell_back).await.unwrap(), "OK backup");
    primary.restart().await;
    fell_back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_connection_closes_when_the_active_backend_takes_a_new_one() {
    within(30, async {
        let mut primary = TestBackend::start("primary", Mode::Status).await;
        let backup = TestBackend::start("backup", Mode::Status).await;
        // Checks at start only; one refused connect is below passive_errors.
        let settings = hourly().set("passive_errors", 3).set("on_switch", "close");
        let proxy = start("fallback-new", &settings, &[&primary, &backup]).await;
        let mut fell_back = fall_back_once(&proxy, &mut primary, false).await;
        // The primary is active and takes the next client: now two
        // backends would take writes.
        let greeting = one_client(proxy.listen(), Duration::from_secs(5)).await;
        assert_eq!(
            greeting.as_deref(),
            Ok("OK primary"),
            "the primary stayed active"
        );
        assert!(
            closed_within(&mut fell_back, Duration::from_secs(3)).await,
            "the connection that fell back to the backup is still open 3 s after the active \
             primary took a new client\n{}",
            proxy.log()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_connection_closes_at_the_active_backends_next_passing_check() {
    within(30, async {
        let mut primary = TestBackend::start("primary", Mode::Status).await;
        let backup = TestBackend::start("backup", Mode::Status).await;
        let settings = checks_300ms().set("on_switch", "close");
        let proxy = start("fallback-check", &settings, &[&primary, &backup]).await;
        let mut fell_back = fall_back_once(&proxy, &mut primary, true).await;
        // No new client: the primary's next passing check is the proof.
        assert!(
            closed_within(&mut fell_back, Duration::from_secs(3)).await,
            "the connection that fell back to the backup is still open 3 s (10 checks) later\n{}",
            proxy.log()
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
        let mut primary = TestBackend::start("primary", Mode::Status).await;
        let backup = TestBackend::start("backup", Mode::Status).await;
        let settings = checks_300ms().set("on_switch", "keep");
        let proxy = start("fallback-keep", &settings, &[&primary, &backup]).await;
        let mut fell_back = fall_back_once(&proxy, &mut primary, true).await;
        assert_eq!(
            one_client(proxy.listen(), Duration::from_secs(5))
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
        let mut hole = TestBackend::start("first", Mode::Status).await;
        let second = TestBackend::start("second", Mode::Status).await;
        let third = TestBackend::start("third", Mode::Status).await;
        // Manual failback: re-enabling "second" does not switch back.
        let settings = hourly()
            .set("connect_timeout", "2s")
            .set("passive_errors", 0)
            .set("failback", "manual")
            .set("on_switch", "close");
        let proxy = start("slow-connect", &settings, &[&hole, &second, &third]).await;
        // The start-up check has passed (first is active); now it takes no more.
        hole.black_hole().await;
        let mut client = TcpStream::connect(proxy.listen()).await.unwrap();
        // The connection has loaded its snapshot (first active) and hangs
        // in the connect to first for 2 s; meanwhile:
        tokio::time::sleep(Duration::from_millis(300)).await;
        for (cmd, backend) in [
            ("disable", "second"),
            ("disable", "first"),
            ("enable", "second"),
        ] {
            let answer = proxy.ctl(&[cmd, "svc", backend]).await;
            assert_eq!(answer.code, Some(0), "{cmd} {backend}: {answer:?}");
        }
        let status = proxy.status_json().await;
        assert_eq!(status["services"][0]["active"], "third", "{status}");
        let greeting = tokio::time::timeout(Duration::from_secs(5), read_line(&mut client)).await;
        let greeting = greeting.expect("served within 5 s").expect("served");
        assert_eq!(
            greeting,
            "OK third",
            "the client ended on a backend the switch to third had closed: split brain\n{}",
            proxy.log()
        );
    })
    .await;
}
