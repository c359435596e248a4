//! Database-safe failover through the real binary with real servers: Redis
//! (`redis-server`, a replica promoted with `REPLICAOF NO ONE`) and
//! PostgreSQL (a `pg_basebackup -R` standby promoted with `pg_ctl
//! promote`), and an HTTP endpoint answering like Patroni's `/primary` on a
//! `check_port` of its own.
//!
//! - Per kind: the standby is never chosen while it is one (a client gets
//!   no byte of it), promoted it becomes active within the rise bound, and
//!   a wrong password is a failed check whose reason `ctl status` shows.
//! - The scenario operators fear, for Redis and for PostgreSQL: the primary
//!   killed, the replica promoted 0.5 s later, a new client every 20 ms for
//!   10 s, each writing and reading the answer under a 3 s deadline. With
//!   role checks and `hold_timeout = "5s"` no write fails and every
//!   acknowledged write is on the promoted server; the same run with
//!   `check = "tcp"` sends writes to the read-only replica (the control
//!   that shows the test can fail).
//! - Hold: 100 KiB sent while held arrive intact; a hold that times out
//!   closes the client after `hold_timeout`, not before, and counts it.

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::postgres::{PgAuth, PgServer};
use common::redis::{RedisOptions, RedisServer};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Check settings for every role-aware service here: a check every 200 ms,
/// two results to change state. The rise bound is `rise` intervals plus
/// one `check_timeout` for the check in flight.
const INTERVAL: Duration = Duration::from_millis(200);
const CHECK_TIMEOUT: Duration = Duration::from_millis(200);
const RISE: u32 = 2;

/// The client's deadline for one write, connect to answer.
const CLIENT_DEADLINE: Duration = Duration::from_secs(3);
/// One new client every 20 ms for 10 s.
const ATTEMPTS: u64 = 500;
const EVERY: Duration = Duration::from_millis(20);
/// The primary dies this long into the run; the replica is promoted 0.5 s later.
const KILL_AT: Duration = Duration::from_secs(2);
const PROMOTE_AFTER: Duration = Duration::from_millis(500);

fn checks(kind: &str) -> Table {
    Table::new()
        .set("check", kind)
        .set("check_interval", "200ms")
        .set("check_timeout", "200ms")
        .set("fall", 2u32)
        .set("rise", RISE)
        .set("failback", "manual")
}

/// The longest a promoted server may take to become active once its role
/// changed: `rise` passing checks, one more in flight, and slack for a
/// loaded machine.
fn rise_bound() -> Duration {
    INTERVAL * (RISE + 1) + CHECK_TIMEOUT + Duration::from_secs(1)
}

/// Poll `ctl status` until `backend` is the active one; how long that took.
async fn until_active(proxy: &Failoverd, backend: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    eventually(limit, &format!("{backend} active"), || async {
        match proxy.active().await {
            Some(name) if name == backend => Ok(()),
            other => Err(other),
        }
    })
    .await;
    start.elapsed()
}

/// The status of backend `name` of the first service.
async fn backend_status(proxy: &Failoverd, name: &str) -> serde_json::Value {
    let status = proxy.status_json().await;
    status["services"][0]["backends"]
        .as_array()
        .and_then(|all| all.iter().find(|b| b["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no backend {name} in {status}"))
}

/// Poll until backend `name` shows a last check error containing `needle`.
async fn until_check_error(proxy: &Failoverd, name: &str, needle: &str) -> String {
    eventually(
        Duration::from_secs(10),
        &format!("{name} failing its check with {needle:?}"),
        || async {
            let backend = backend_status(proxy, name).await;
            match backend["last_check_error"].as_str() {
                Some(err) if err.contains(needle) && backend["state"] == "down" => {
                    Ok(err.to_string())
                }
                _ => Err(backend),
            }
        },
    )
    .await
}

// ---------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------

/// `SET k<i> <i>` through `addr` as an inline Redis command; Ok on `+OK`,
/// the reply or the error otherwise.
async fn redis_write(addr: SocketAddr, i: u64) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(format!("SET k{i} {i}\r\n").as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let line = read_line(&mut stream)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if line.trim_end() == "+OK" {
        Ok(())
    } else {
        Err(line)
    }
}

/// A PostgreSQL session through `addr` as `app` that inserts `i`; Ok once
/// the INSERT is acknowledged.
async fn pg_write(addr: SocketAddr, i: u64) -> Result<(), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut config = tokio_postgres::Config::new();
    config.user("app").password(APP_PASSWORD).dbname("postgres");
    let (client, connection) = config
        .connect_raw(stream, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("session: {}", pg_error(&e)))?;
    let driver = tokio::spawn(connection);
    let id = i64::try_from(i).map_err(|e| e.to_string())?;
    let result = client
        .execute("INSERT INTO t (id) VALUES ($1)", &[&id])
        .await
        .map(|_| ())
        .map_err(|e| format!("insert: {}", pg_error(&e)));
    drop(client);
    let _ = driver.await;
    result
}

/// The server's message when there is one (tokio-postgres shows only
/// "db error" otherwise).
fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

/// What one run of clients saw.
#[derive(Debug, Default)]
struct Outcome {
    acked: BTreeSet<u64>,
    failures: Vec<(u64, String)>,
    /// The slowest acknowledged write, connect to answer (the longest hold).
    longest: Duration,
}

impl Outcome {
    /// Every acknowledged write is among `present` (read from the promoted
    /// server); `what` names them in the failure.
    fn assert_acked_in(&self, present: &BTreeSet<u64>, what: &str) {
        let lost: Vec<_> = self.acked.difference(present).collect();
        assert!(
            lost.is_empty(),
            "{what} missing on the promoted server: {lost:?}"
        );
    }

    fn assert_none_failed(&self) {
        assert!(
            self.failures.is_empty(),
            "writes failed: {}",
            self.summary()
        );
    }

    /// Some write failed with `needle` in its error (`what` says which).
    fn assert_some_failed_with(&self, needle: &str, what: &str) {
        assert!(
            self.failures.iter().any(|(_, e)| e.contains(needle)),
            "{what}: {}",
            self.summary()
        );
    }

    fn summary(&self) -> String {
        let mut kinds: Vec<String> = self
            .failures
            .iter()
            .map(|(_, e)| e.chars().take(60).collect())
            .collect();
        kinds.sort();
        kinds.dedup();
        format!(
            "{} acknowledged, {} failed, longest write {} ms; failures: {:?}",
            self.acked.len(),
            self.failures.len(),
            self.longest.as_millis(),
            kinds.iter().take(5).collect::<Vec<_>>()
        )
    }
}

/// Start [`ATTEMPTS`] clients, one every [`EVERY`], each running `write(i)`
/// under [`CLIENT_DEADLINE`], and wait for all of them. [`KILL_AT`] into
/// the run, between two clients (none in flight: a session the dying
/// server was serving fails whatever the proxy does), `kill` runs; the
/// thread running `promote` starts with it and sleeps [`PROMOTE_AFTER`]
/// first. What every client saw, and what `kill` and `promote` returned.
async fn drive<F, Fut, K, A, P, B>(write: F, kill: K, promote: P) -> (Outcome, A, B)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
    K: FnOnce() -> A + Send + 'static,
    A: Send + 'static,
    P: FnOnce() -> B + Send + 'static,
    B: Send + 'static,
{
    let kill_index = (KILL_AT.as_millis() / EVERY.as_millis()) as u64;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut fault = Some((kill, promote));
    let mut killed = None;
    let mut promoter = None;
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0..ATTEMPTS {
        tick.tick().await;
        if let Some((kill, promote)) = fault.take_if(|_| i == kill_index) {
            let idle = Instant::now();
            while in_flight.load(Ordering::SeqCst) > 0 && idle.elapsed() < CLIENT_DEADLINE {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            promoter = Some(std::thread::spawn(move || {
                std::thread::sleep(PROMOTE_AFTER);
                promote()
            }));
            // The server is dead before the next client starts.
            killed = Some(tokio::task::spawn_blocking(kill).await.expect("kill"));
        }
        spawn_client(&mut tasks, &in_flight, i, write(i));
    }
    let mut outcome = Outcome::default();
    while let Some(done) = tasks.join_next().await {
        let (i, result, took) = done.expect("client task");
        match result {
            Ok(()) => {
                outcome.acked.insert(i);
                outcome.longest = outcome.longest.max(took);
            }
            Err(e) => outcome.failures.push((i, e)),
        }
    }
    let promoter = promoter.expect("the fault ran");
    let promoted = tokio::task::spawn_blocking(move || promoter.join().expect("promote"))
        .await
        .expect("promote thread");
    (outcome, killed.expect("the fault ran"), promoted)
}

fn spawn_client(
    tasks: &mut tokio::task::JoinSet<(u64, Result<(), String>, Duration)>,
    in_flight: &Arc<AtomicUsize>,
    i: u64,
    attempt: impl Future<Output = Result<(), String>> + Send + 'static,
) {
    let in_flight = Arc::clone(in_flight);
    in_flight.fetch_add(1, Ordering::SeqCst);
    tasks.spawn(async move {
        let start = Instant::now();
        let result = match tokio::time::timeout(CLIENT_DEADLINE, attempt).await {
            Ok(result) => result,
            Err(_) => Err("timeout at the 3 s deadline".to_string()),
        };
        in_flight.fetch_sub(1, Ordering::SeqCst);
        (i, result, start.elapsed())
    });
}

// ---------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------

fn redis_service(layout: &Layout, kind: &str, backends: &[(&str, SocketAddr)]) -> Service {
    layout.service().merge(&checks(kind)).backends(backends)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_replica_is_never_chosen_until_promoted_then_within_the_rise_bound() {
    within(60, async {
        let primary = RedisServer::primary();
        let replica = primary.replica();
        let backends = [("replica", replica.addr)];
        let proxy = Failoverd::start("redis-rise", |layout| {
            layout
                .config(redis_service(layout, "redis", &backends))
                .to_string()
        })
        .await;
        let err = until_check_error(&proxy, "replica", "role is slave").await;
        assert_eq!(err, "role is slave");
        assert_eq!(proxy.active().await, None);
        for i in 0..5 {
            let write = redis_write(proxy.listen(), i).await;
            assert!(
                write.as_ref().is_err_and(|e| !e.contains("READONLY")),
                "a client reached the replica: {write:?}"
            );
        }

        let promoted = Instant::now();
        replica.promote();
        until_active(&proxy, "replica", rise_bound()).await;
        let took = promoted.elapsed();
        eprintln!(
            "redis: promoted replica active after {} ms",
            took.as_millis()
        );
        redis_write(proxy.listen(), 99)
            .await
            .expect("write after promotion");
        assert_eq!(replica.command(&["GET", "k99"]).trim(), "99");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_wrong_password_is_a_failed_check_with_the_reason() {
    within(60, async {
        let primary = RedisServer::start(&RedisOptions {
            requirepass: Some("right".into()),
            ..RedisOptions::default()
        });
        let backends = [("primary", primary.addr)];
        let proxy = Failoverd::start("redis-wrongpass", |layout| {
            let password = layout.write_file("redis.pw", "wrong\n");
            layout
                .config(
                    redis_service(layout, "redis", &backends).set("check_password_file", &password),
                )
                .to_string()
        })
        .await;
        let err = until_check_error(&proxy, "primary", "WRONGPASS").await;
        assert!(err.starts_with("authentication failed: "), "{err}");
        let out = proxy.ctl(&["status"]).await;
        assert!(
            out.stdout
                .contains("last check failed: authentication failed"),
            "{}",
            out.stdout
        );
    })
    .await;
}

/// The primary SIGKILLed `KILL_AT` into the run, the replica promoted
/// 0.5 s later, clients writing every 20 ms.
async fn redis_scenario(kind: &str) -> Outcome {
    let primary = RedisServer::primary();
    let replica = primary.replica();
    let backends = [("primary", primary.addr), ("replica", replica.addr)];
    let proxy = Failoverd::start(&format!("redis-{kind}"), |layout| {
        layout
            .config(redis_service(layout, kind, &backends).set("hold_timeout", "5s"))
            .to_string()
    })
    .await;
    until_active(&proxy, "primary", Duration::from_secs(10)).await;
    let listen = proxy.listen();
    let (outcome, _primary, replica) = drive(
        |i| redis_write(listen, i),
        move || {
            let mut primary = primary;
            primary.kill();
            primary
        },
        move || {
            replica.promote();
            replica
        },
    )
    .await;
    let keys: BTreeSet<u64> = replica
        .command(&["KEYS", "k*"])
        .lines()
        .filter_map(|k| k.trim().strip_prefix('k')?.parse().ok())
        .collect();
    outcome.assert_acked_in(&keys, "acknowledged writes");
    eprintln!("redis, check = {kind:?}: {}", outcome.summary());
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failover_with_role_checks_and_hold_fails_no_write() {
    within(90, async {
        redis_scenario("redis").await.assert_none_failed();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failover_with_tcp_checks_sends_writes_to_the_replica() {
    within(90, async {
        redis_scenario("tcp")
            .await
            .assert_some_failed_with("READONLY", "no write met the read-only replica");
    })
    .await;
}

// ---------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------

const APP_PASSWORD: &str = "app pw";

/// A SCRAM primary with role `app` (the clients and the check) owning table
/// `t`, and its streaming standby. Commits wait for the standby's flush
/// (`synchronous_commit = on` with `synchronous_standby_names`, set on the
/// primary alone after the base backup, so the promoted standby does not
/// wait for a standby of its own): an acknowledged write survives the
/// primary's death. (With asynchronous replication the last writes before
/// a crash are lost whatever the proxy does: a first run here lost 10.)
fn pg_pair() -> (PgServer, PgServer) {
    let primary = PgServer::primary(PgAuth::ScramSha256);
    primary.create_user("app", APP_PASSWORD);
    primary.sql("CREATE TABLE t (id bigint PRIMARY KEY)");
    primary.sql("GRANT ALL ON t TO app");
    let standby = primary.standby();
    primary.sql("ALTER SYSTEM SET synchronous_standby_names = '*'");
    primary.sql("ALTER SYSTEM SET synchronous_commit = on");
    primary.sql("SELECT pg_reload_conf()");
    (primary, standby)
}

fn pg_service(
    layout: &Layout,
    kind: &str,
    password: &str,
    backends: &[(&str, SocketAddr)],
) -> Service {
    let service = layout.service().merge(&checks(kind)).backends(backends);
    if kind == "postgres" {
        let file = layout.write_file("pg.pw", &format!("{password}\n"));
        service
            .set("check_user", "app")
            .set("check_password_file", &file)
    } else {
        service
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_standby_is_never_chosen_until_promoted_then_within_the_rise_bound() {
    within(90, async {
        let (primary, standby) = pg_pair();
        primary.sql("ALTER SYSTEM RESET synchronous_standby_names");
        primary.sql("SELECT pg_reload_conf()");
        let backends = [("standby", standby.addr)];
        let proxy = Failoverd::start("pg-rise", |layout| {
            layout
                .config(pg_service(layout, "postgres", APP_PASSWORD, &backends))
                .to_string()
        })
        .await;
        let err = until_check_error(&proxy, "standby", "in recovery").await;
        assert_eq!(err, "in recovery");
        assert_eq!(proxy.active().await, None);
        for i in 0..3 {
            let write = pg_write(proxy.listen(), i).await;
            assert!(
                write.as_ref().is_err_and(|e| !e.contains("read-only")),
                "a client reached the standby: {write:?}"
            );
        }

        let promoted = Instant::now();
        let standby = tokio::task::spawn_blocking(move || {
            standby.promote();
            standby
        })
        .await
        .expect("promote");
        until_active(&proxy, "standby", rise_bound()).await;
        eprintln!(
            "postgres: promoted standby active {} ms after pg_ctl promote began",
            promoted.elapsed().as_millis()
        );
        pg_write(proxy.listen(), 99)
            .await
            .expect("write after promotion");
        assert_eq!(standby.sql("SELECT id FROM t"), "99");
        drop(primary);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_wrong_password_is_a_failed_check_with_the_reason() {
    within(60, async {
        let primary = PgServer::primary(PgAuth::ScramSha256);
        primary.create_user("app", APP_PASSWORD);
        let backends = [("primary", primary.addr)];
        let proxy = Failoverd::start("pg-wrongpass", |layout| {
            layout
                .config(pg_service(layout, "postgres", "wrong", &backends))
                .to_string()
        })
        .await;
        let err = until_check_error(&proxy, "primary", "password authentication failed").await;
        assert_eq!(
            err,
            "authentication failed: password authentication failed for user \"app\""
        );
    })
    .await;
}

/// The primary stopped with `pg_ctl stop -m immediate` `KILL_AT` into the
/// run, the standby promoted 0.5 s later, clients inserting every 20 ms.
async fn pg_scenario(kind: &str) -> Outcome {
    let (primary, standby) = pg_pair();
    let backends = [("primary", primary.addr), ("standby", standby.addr)];
    let proxy = Failoverd::start(&format!("pg-{kind}"), |layout| {
        layout
            .config(pg_service(layout, kind, APP_PASSWORD, &backends).set("hold_timeout", "5s"))
            .to_string()
    })
    .await;
    until_active(&proxy, "primary", Duration::from_secs(10)).await;
    let listen = proxy.listen();
    let (outcome, _primary, standby) = drive(
        |i| pg_write(listen, i),
        move || {
            let mut primary = primary;
            primary.stop();
            primary
        },
        move || {
            standby.promote();
            standby
        },
    )
    .await;
    let rows: BTreeSet<u64> = standby
        .sql("SELECT id FROM t")
        .lines()
        .filter_map(|id| id.trim().parse().ok())
        .collect();
    outcome.assert_acked_in(&rows, "acknowledged inserts");
    eprintln!("postgres, check = {kind:?}: {}", outcome.summary());
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_failover_with_role_checks_and_hold_fails_no_write() {
    within(120, async {
        pg_scenario("postgres").await.assert_none_failed();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_failover_with_tcp_checks_sends_sessions_to_the_standby() {
    within(120, async {
        pg_scenario("tcp")
            .await
            .assert_some_failed_with("read-only", "no session met the standby in recovery");
    })
    .await;
}

// ---------------------------------------------------------------------
// HTTP (Patroni's REST API on a check_port)
// ---------------------------------------------------------------------

/// An HTTP server answering every request `200` while `leader` is set and
/// `503` otherwise, as Patroni's `GET /primary` does.
async fn patroni_like(leader: Arc<AtomicBool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let leader = Arc::clone(&leader);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let status = if !head.starts_with(b"GET /primary ") {
                    "404 Not Found"
                } else if leader.load(Ordering::SeqCst) {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_replica_is_never_chosen_until_its_api_says_primary() {
    within(60, async {
        let leader = Arc::new(AtomicBool::new(false));
        let api = patroni_like(Arc::clone(&leader)).await;
        let replica = TestBackend::start("replica", Mode::Greet).await;
        let backends = [("replica", replica.addr)];
        let proxy = Failoverd::start("http-rise", |layout| {
            layout
                .config(
                    layout
                        .service()
                        .merge(&checks("http"))
                        .set("check_path", "/primary")
                        .set("check_port", u32::from(api.port()))
                        .backends(&backends),
                )
                .to_string()
        })
        .await;
        let err = until_check_error(&proxy, "replica", "HTTP 503").await;
        assert!(err.starts_with("HTTP 503"), "{err}");
        assert!(
            who_answers(proxy.listen()).await.is_err(),
            "a client reached the replica"
        );

        let promoted = Instant::now();
        leader.store(true, Ordering::SeqCst);
        until_active(&proxy, "replica", rise_bound()).await;
        eprintln!(
            "http: replica active {} ms after /primary turned 200",
            promoted.elapsed().as_millis()
        );
        assert_eq!(who_answers(proxy.listen()).await.unwrap(), "replica");
    })
    .await;
}

// ---------------------------------------------------------------------
// Hold
// ---------------------------------------------------------------------

/// 100 KiB sent by a client while no backend is up arrive intact once the
/// backend comes back; the client was held, not closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_sent_while_held_arrive_intact() {
    within(60, async {
        let mut backend = TestBackend::start("backend", Mode::Echo).await;
        let backends = [("backend", backend.addr)];
        let proxy = Failoverd::start("hold-bytes", |layout| {
            layout
                .config(
                    layout
                        .service()
                        .merge(&checks("tcp"))
                        .set("hold_timeout", "10s")
                        .backends(&backends),
                )
                .to_string()
        })
        .await;
        backend.stop();
        until_check_error(&proxy, "backend", "").await;

        // The harness's readiness probe may be held too (it connected while
        // the backend stopped): count from what is held now.
        let before = proxy
            .metrics()
            .await
            .value("failoverd_connections_held", &[("service", "svc")])
            .unwrap_or(0.0);
        let data = Arc::new(random_bytes(100 * 1024, 9));
        let stream = TcpStream::connect(proxy.listen()).await.expect("connect");
        let (mut r, mut w) = stream.into_split();
        let sent = Arc::clone(&data);
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.expect("write while held");
            w.shutdown().await.expect("half-close");
        });
        proxy
            .metrics_until(Duration::from_secs(5), "one more held", |m| {
                m.value("failoverd_connections_held", &[("service", "svc")]) == Some(before + 1.0)
            })
            .await;
        let held = proxy.status_json().await["services"][0]["held"].as_u64();
        assert!(held.is_some_and(|h| h >= 1), "ctl status held {held:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let back = Instant::now();
        backend.restart().await;
        let (hash, len) = read_hashed(&mut r).await;
        writer.await.expect("writer");
        assert_eq!(len, data.len());
        assert_eq!(hash, sha256(&data), "bytes sent while held changed");
        eprintln!(
            "hold: 100 KiB intact, forwarded {} ms after the backend came back",
            back.elapsed().as_millis()
        );
        proxy
            .metrics_until(Duration::from_secs(5), "the held clients served", |m| {
                m.value("failoverd_connections_held", &[("service", "svc")]) == Some(0.0)
                    && m.value(
                        "failoverd_held_total",
                        &[("service", "svc"), ("result", "served")],
                    ) >= Some(1.0)
            })
            .await;
    })
    .await;
}

/// No backend ever comes back: the held client is closed after
/// `hold_timeout` (not before) and counted as a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_that_times_out_closes_after_hold_timeout_and_counts() {
    within(60, async {
        let mut backend = TestBackend::start("backend", Mode::Echo).await;
        let backends = [("backend", backend.addr)];
        let proxy = Failoverd::start("hold-timeout", |layout| {
            layout
                .config(
                    layout
                        .service()
                        .merge(&checks("tcp"))
                        .set("hold_timeout", "2s")
                        .backends(&backends),
                )
                .to_string()
        })
        .await;
        backend.stop();
        until_check_error(&proxy, "backend", "").await;

        let start = Instant::now();
        let mut stream = TcpStream::connect(proxy.listen()).await.expect("connect");
        stream.write_all(b"hello").await.expect("write");
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("closed within 10 s");
        let held = start.elapsed();
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "a held client got bytes: {read:?}"
        );
        assert!(
            held >= Duration::from_secs(2),
            "closed after {held:?}, before hold_timeout"
        );
        assert!(held < Duration::from_millis(3500), "closed after {held:?}");
        eprintln!("hold: timed out and closed after {} ms", held.as_millis());
        proxy
            .metrics_until(Duration::from_secs(5), "a timed-out hold", |m| {
                m.value(
                    "failoverd_held_total",
                    &[("service", "svc"), ("result", "timeout")],
                ) >= Some(1.0)
            })
            .await;
    })
    .await;
}
