//! The role-aware probes against real servers: PostgreSQL primaries and
//! streaming standbys (trust, md5, SCRAM-SHA-256), Redis masters and
//! replicas (requirepass, ACL users), and an in-test HTTP server that
//! answers like Patroni's REST API. Scripted loopback servers cover what a
//! real server never does (replies split byte by byte, oversize or foreign
//! replies). Every check is bounded by [`CHECK_LIMIT`].

mod common;
use common::postgres as postgres_harness;
use common::redis as redis_harness;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use failoverd::config::{BackendAddress, CheckKind, Secret, Settings};
use failoverd::health::{self, CheckFailure, ProbeError};
use postgres_harness::{PgAuth, PgServer};
use redis_harness::{RedisOptions, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The bound on every check in these tests (failoverd's caller applies
/// `check_timeout`; this only keeps a broken probe from hanging the test).
const CHECK_LIMIT: Duration = Duration::from_secs(10);

/// Run one check of `addr` as `settings` say, bounded by [`CHECK_LIMIT`];
/// the role-aware verdict, or a panic when the check never got that far.
async fn check(addr: SocketAddr, settings: Settings) -> Result<(), CheckFailure> {
    let settings = Settings {
        check_timeout: CHECK_LIMIT,
        ..settings
    };
    let address = BackendAddress::Ip(addr);
    let run = health::check(&address, &settings);
    match tokio::time::timeout(CHECK_LIMIT + Duration::from_secs(1), run)
        .await
        .expect("the check took longer than its check_timeout")
    {
        Ok(()) => Ok(()),
        Err(ProbeError::Failed(failure)) => Err(failure),
        Err(other) => panic!("check of {addr} failed before its exchange: {other}"),
    }
}

/// The failure's operator text, panicking if the check passed.
fn reason(result: Result<(), CheckFailure>) -> String {
    match result {
        Ok(()) => panic!("check passed, expected a failure"),
        Err(failure) => failure.to_string(),
    }
}

fn passed(result: Result<(), CheckFailure>) {
    if let Err(failure) = result {
        panic!("check failed: {failure}");
    }
}

/// No task of a probe outlives it (tests run on a current-thread runtime).
fn assert_no_tasks_left() {
    let alive = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    assert_eq!(alive, 0, "tasks left running after the checks");
}

// ---------------------------------------------------------------- http

/// How the in-test HTTP server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Http {
    /// Patroni's `/primary` on the leader: 200 with a JSON body.
    Leader,
    /// Patroni's `/primary` on a replica: 503.
    Replica,
    /// An SSH server on the port.
    Ssh,
    /// Headers that never end.
    EndlessHeaders,
    /// Close after reading the request.
    Close,
    /// 100 Continue, then the leader's 200, one byte per write.
    Dribble,
}

/// A loopback HTTP server answering every connection per `mode`; keeps the
/// requests it read.
struct HttpServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    async fn start(mode: Http) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind http server");
        let addr = listener.local_addr().expect("http addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let request = answer(stream, mode).await;
                seen.lock().expect("requests").push(request);
            }
        });
        HttpServer {
            addr,
            requests,
            task,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests").clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(mut stream: TcpStream, mode: Http) -> String {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.ends_with(b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
        // Like a real server, refuse what is not a request at once.
        if request.len() >= 4 && !request.starts_with(b"GET ") {
            let _ = stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                .await;
            return String::from_utf8_lossy(&request).into_owned();
        }
    }
    let body = r#"{"state": "running", "role": "master", "server_version": 150000}"#;
    let leader = format!(
        "HTTP/1.0 200 OK\r\nServer: BaseHTTP/0.6 Python/3.11\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = match mode {
        Http::Leader => stream.write_all(leader.as_bytes()).await,
        Http::Replica => {
            let body = r#"{"state": "running", "role": "replica"}"#;
            let reply = format!(
                "HTTP/1.0 503 Service Unavailable\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(reply.as_bytes()).await
        }
        Http::Ssh => {
            stream
                .write_all(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
                .await
        }
        Http::EndlessHeaders => {
            let mut result = stream.write_all(b"HTTP/1.1 200 OK\r\n").await;
            while result.is_ok() {
                result = stream
                    .write_all(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n")
                    .await;
            }
            result
        }
        Http::Close => Ok(()),
        Http::Dribble => {
            let reply = format!("HTTP/1.1 100 Continue\r\n\r\n{leader}");
            let mut result = Ok(());
            for byte in reply.as_bytes() {
                result = stream.write_all(std::slice::from_ref(byte)).await;
                if result.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            result
        }
    };
    String::from_utf8_lossy(&request).into_owned()
}

async fn http_check(addr: SocketAddr, path: &str) -> Result<(), CheckFailure> {
    let settings = Settings {
        check: CheckKind::Http,
        check_path: path.to_owned(),
        ..Settings::default()
    };
    check(addr, settings).await
}

#[tokio::test]
async fn http_leader_200_passes_and_the_request_is_a_plain_get() {
    let server = HttpServer::start(Http::Leader).await;
    passed(http_check(server.addr, "/primary").await);
    let requests = server.requests();
    let request = requests.first().expect("the server saw the request");
    let lines: Vec<&str> = request.split("\r\n").collect();
    assert_eq!(lines[0], "GET /primary HTTP/1.1");
    let host = format!("Host: 127.0.0.1:{}", server.addr.port());
    for header in [host.as_str(), "Connection: close", "User-Agent: failoverd"] {
        assert!(
            lines.contains(&header),
            "request lacks {header:?}: {request:?}"
        );
    }
}

#[tokio::test]
async fn http_replica_503_fails_with_the_status() {
    let server = HttpServer::start(Http::Replica).await;
    assert_eq!(
        reason(http_check(server.addr, "/primary").await),
        "HTTP 503"
    );
}

#[tokio::test]
async fn http_check_of_a_non_http_server_fails_at_once() {
    let server = HttpServer::start(Http::Ssh).await;
    let why = reason(http_check(server.addr, "/primary").await);
    assert!(why.starts_with("not an HTTP response"), "{why}");
    assert!(why.contains("SSH-2.0"), "shows what came: {why}");
}

#[tokio::test]
async fn http_head_is_read_to_8_kib_at_most() {
    let server = HttpServer::start(Http::EndlessHeaders).await;
    assert_eq!(
        reason(http_check(server.addr, "/primary").await),
        "HTTP response head larger than 8192 bytes"
    );
}

#[tokio::test]
async fn http_server_closing_without_reply_fails() {
    let server = HttpServer::start(Http::Close).await;
    assert_eq!(
        reason(http_check(server.addr, "/primary").await),
        "connection closed before a reply"
    );
}

#[tokio::test]
async fn http_reply_split_into_single_bytes_after_100_continue_passes() {
    let server = HttpServer::start(Http::Dribble).await;
    passed(http_check(server.addr, "/primary").await);
}

#[tokio::test]
async fn http_check_of_a_redis_port_fails() {
    let redis = RedisServer::primary();
    let why = reason(http_check(redis.addr, "/").await);
    // Redis answers an HTTP request with an error reply, or drops it.
    assert!(
        why.starts_with("not an HTTP response") || why == "connection closed before a reply",
        "{why}"
    );
}

// ---------------------------------------------------------------- redis

async fn redis_check(
    addr: SocketAddr,
    user: Option<&str>,
    password: Option<&str>,
) -> Result<(), CheckFailure> {
    let settings = Settings {
        check: CheckKind::Redis,
        check_user: user.unwrap_or_default().to_owned(),
        check_password: password.map(|p| Secret::new(p.to_owned())),
        ..Settings::default()
    };
    check(addr, settings).await
}

#[tokio::test]
async fn redis_master_passes_replica_fails_until_promoted() {
    let primary = RedisServer::primary();
    let replica = primary.replica();
    passed(redis_check(primary.addr, None, None).await);
    assert_eq!(
        reason(redis_check(replica.addr, None, None).await),
        "role is slave"
    );

    replica.promote();
    assert_eq!(replica.role(), "master");
    passed(redis_check(replica.addr, None, None).await);
    assert_no_tasks_left();
}

#[tokio::test]
async fn redis_requirepass_needs_the_right_password() {
    let options = RedisOptions {
        requirepass: Some("s3cret pass".into()),
        ..RedisOptions::default()
    };
    let primary = RedisServer::start(&options);
    let replica = primary.replica();
    passed(redis_check(primary.addr, None, Some("s3cret pass")).await);
    assert_eq!(
        reason(redis_check(replica.addr, None, Some("s3cret pass")).await),
        "role is slave"
    );

    let wrong = reason(redis_check(primary.addr, None, Some("wrong")).await);
    assert!(
        wrong.starts_with("authentication failed: WRONGPASS"),
        "{wrong}"
    );
    let missing = reason(redis_check(primary.addr, None, None).await);
    assert!(missing.starts_with("authentication failed: "), "{missing}");
    assert!(missing.contains("NOAUTH"), "{missing}");
}

#[tokio::test]
async fn redis_acl_user_authenticates_with_its_own_password() {
    let options = RedisOptions {
        requirepass: Some("admin-pw".into()),
        users: vec![("failoverd".into(), "check-pw".into())],
        ..RedisOptions::default()
    };
    let server = RedisServer::start(&options);
    let replica = server.replica();
    passed(redis_check(server.addr, Some("failoverd"), Some("check-pw")).await);
    assert_eq!(
        reason(redis_check(replica.addr, Some("failoverd"), Some("check-pw")).await),
        "role is slave"
    );
    let wrong = reason(redis_check(server.addr, Some("failoverd"), Some("admin-pw")).await);
    assert!(
        wrong.starts_with("authentication failed: WRONGPASS"),
        "{wrong}"
    );
    let unknown = reason(redis_check(server.addr, Some("nobody"), Some("check-pw")).await);
    assert!(unknown.starts_with("authentication failed: "), "{unknown}");
}

#[tokio::test]
async fn redis_check_of_an_http_server_fails() {
    let server = HttpServer::start(Http::Leader).await;
    let why = reason(redis_check(server.addr, None, None).await);
    assert!(
        why.starts_with("not a Redis reply: starts with \"HTTP/1.1 400"),
        "{why}"
    );
}

/// A loopback server that reads a little, then writes `reply` one byte at
/// a time and keeps the connection open.
async fn scripted(reply: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind scripted server");
    let addr = listener.local_addr().expect("scripted addr");
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                let _ = stream.read(&mut buf).await;
                for byte in reply {
                    if stream.write_all(std::slice::from_ref(byte)).await.is_err() {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
                let _ = stream.read(&mut buf).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn redis_replies_split_into_single_bytes_are_read() {
    let (master, a) = scripted(b"+OK\r\n*3\r\n$6\r\nmaster\r\n:3129\r\n*0\r\n").await;
    passed(redis_check(master, None, Some("pw")).await);
    let (sentinel, b) = scripted(b"*2\r\n$8\r\nsentinel\r\n*1\r\n$8\r\nmymaster\r\n").await;
    assert_eq!(
        reason(redis_check(sentinel, None, None).await),
        "role is sentinel"
    );
    a.abort();
    b.abort();
}

#[tokio::test]
async fn redis_oversize_reply_is_refused() {
    static HUGE: &[u8] = b"*1\r\n$999999999\r\n";
    let (addr, task) = scripted(HUGE).await;
    assert_eq!(
        reason(redis_check(addr, None, None).await),
        "Redis reply line larger than 4096 bytes"
    );
    task.abort();
}

// ---------------------------------------------------------------- postgres

async fn pg_check(
    addr: SocketAddr,
    user: &str,
    database: &str,
    password: Option<&str>,
) -> Result<(), CheckFailure> {
    let settings = Settings {
        check: CheckKind::Postgres,
        check_user: user.to_owned(),
        check_database: database.to_owned(),
        check_password: password.map(|p| Secret::new(p.to_owned())),
        ..Settings::default()
    };
    check(addr, settings).await
}

/// No failoverd session is left open on the server.
fn assert_no_session_left(server: &PgServer) {
    let left =
        server.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'failoverd'");
    assert_eq!(left, "0", "failoverd sessions left open");
}

/// Relay one connection to `upstream`; resolves to the bytes the client sent.
async fn relay(upstream: SocketAddr) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let addr = listener.local_addr().expect("relay addr");
    let task = tokio::spawn(async move {
        let (client, _) = listener.accept().await.expect("relay accept");
        let server = TcpStream::connect(upstream).await.expect("relay connect");
        let (mut client_rx, mut client_tx) = client.into_split();
        let (mut server_rx, mut server_tx) = server.into_split();
        let to_client = async move {
            let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
            let _ = client_tx.shutdown().await;
        };
        let to_server = async move {
            let mut sent = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = client_rx.read(&mut buf).await {
                if n == 0 || server_tx.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                sent.extend_from_slice(&buf[..n]);
            }
            let _ = server_tx.shutdown().await;
            sent
        };
        tokio::join!(to_client, to_server).1
    });
    (addr, task)
}

#[tokio::test]
async fn postgres_primary_passes_standby_is_in_recovery_until_promoted() {
    let primary = PgServer::primary(PgAuth::Trust);
    let standby = primary.standby();
    passed(pg_check(primary.addr, "postgres", "postgres", None).await);
    assert_eq!(
        reason(pg_check(standby.addr, "postgres", "postgres", None).await),
        "in recovery"
    );

    standby.promote();
    passed(pg_check(standby.addr, "postgres", "postgres", None).await);

    // The session ends with Terminate ('X', length 4), not a dropped socket.
    let (via, relayed) = relay(primary.addr).await;
    passed(pg_check(via, "postgres", "postgres", None).await);
    let sent = tokio::time::timeout(CHECK_LIMIT, relayed)
        .await
        .expect("relay finished")
        .expect("relay task");
    assert!(
        sent.ends_with(b"X\0\0\0\x04"),
        "last bytes sent: {:?}",
        &sent[sent.len().saturating_sub(8)..]
    );
    assert_no_tasks_left();
    assert_no_session_left(&primary);
    assert_no_session_left(&standby);
}

/// Right, wrong and missing password, against a primary and its standby.
async fn password_cases(auth: PgAuth, stored_prefix: &str) {
    let primary = PgServer::primary(auth);
    primary.create_user("failoverd", "check pw'1");
    let stored = primary.sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'failoverd'");
    assert!(
        stored.starts_with(stored_prefix),
        "password stored as {stored}"
    );
    let standby = primary.standby();

    passed(pg_check(primary.addr, "failoverd", "postgres", Some("check pw'1")).await);
    assert_eq!(
        reason(pg_check(standby.addr, "failoverd", "postgres", Some("check pw'1")).await),
        "in recovery"
    );
    assert_eq!(
        reason(pg_check(primary.addr, "failoverd", "postgres", Some("wrong")).await),
        "authentication failed: password authentication failed for user \"failoverd\""
    );
    let missing = reason(pg_check(primary.addr, "failoverd", "postgres", None).await);
    assert!(
        missing.starts_with("authentication failed: the server wants a password"),
        "{missing}"
    );
    let no_db = reason(pg_check(primary.addr, "failoverd", "nope", Some("check pw'1")).await);
    assert_eq!(no_db, "server error: database \"nope\" does not exist");
    assert_no_tasks_left();
    assert_no_session_left(&primary);
}

#[tokio::test]
async fn postgres_md5_password() {
    password_cases(PgAuth::Md5, "md5").await;
}

#[tokio::test]
async fn postgres_scram_sha_256_password() {
    password_cases(PgAuth::ScramSha256, "SCRAM-SHA-256$").await;
}

#[tokio::test]
async fn postgres_check_of_an_http_port_fails() {
    let server = HttpServer::start(Http::Leader).await;
    let why = reason(pg_check(server.addr, "postgres", "postgres", None).await);
    assert!(
        why.starts_with("not a PostgreSQL server: starts with \"HTTP/1.1 400"),
        "{why}"
    );
}
