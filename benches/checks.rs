//! What health checks cost failoverd: N checks of each kind, one after the
//! other, against real servers on loopback (redis-server, PostgreSQL with
//! trust / md5 / SCRAM-SHA-256, an HTTP server answering like Patroni's
//! `/primary`), timing the CPU of this process (getrusage RUSAGE_SELF,
//! user + system) and the wall clock. Each check is what the checker does:
//! a TCP connect, then the probe; `tcp` is the connect alone.
//!
//! The servers run in other processes (the HTTP one is this binary
//! started again with `--serve-http`), so the CPU counted is the checking
//! side only. The table prices 1,000 backends checked every 500 ms (the
//! default `check_interval`): 2,000 checks a second, as a share of one core.
//!
//! Run: `cargo bench --bench checks` (full) or
//! `cargo bench --bench checks -- --quick` (CI smoke, a few checks each;
//! `FAILOVERD_BENCH_QUICK=1` does the same). A further argument that does
//! not start with `-` keeps only the kinds whose name contains it.

#[path = "../tests/common/postgres.rs"]
mod postgres_harness;
#[path = "../tests/common/redis.rs"]
mod redis_harness;
#[path = "../tests/common/server.rs"]
mod server;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use failoverd::config::{BackendAddress, CheckKind, Secret, Settings};
use failoverd::health;
use postgres_harness::{PgAuth, PgServer};
use redis_harness::{RedisOptions, RedisServer};

/// Checks per kind.
const FULL_CHECKS: usize = 2_000;
const QUICK_CHECKS: usize = 50;
/// Untimed checks before each measurement (first-use page faults and
/// allocator growth happen here, not in the figures).
const WARMUP_CHECKS: usize = 20;
/// The bound on one check (failoverd's default `check_timeout` is 500 ms;
/// this is looser so a slow CI machine measures rather than fails).
const CHECK_LIMIT: Duration = Duration::from_secs(5);
/// The fleet priced in the last column: backends and their check period.
const FLEET_BACKENDS: f64 = 1_000.0;
const FLEET_INTERVAL_SECS: f64 = 0.5;

const PASSWORD: &str = "bench-pw";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--serve-http") {
        serve_http();
        return ExitCode::SUCCESS;
    }
    // The servers live in `run` and are stopped when it returns.
    if run(&args) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Start the servers, measure, print the table; false if a check failed.
fn run(args: &[String]) -> bool {
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var_os("FAILOVERD_BENCH_QUICK").is_some_and(|v| v != "0");
    let filter = args.iter().find(|a| !a.starts_with('-')).cloned();
    let checks = if quick { QUICK_CHECKS } else { FULL_CHECKS };

    eprintln!("starting servers: redis-server, PostgreSQL x3, HTTP ...");
    let http = HttpChild::start();
    let redis = RedisServer::primary();
    let redis_acl = RedisServer::start(&RedisOptions {
        requirepass: Some("admin-pw".into()),
        users: vec![("failoverd".into(), PASSWORD.into())],
        ..RedisOptions::default()
    });
    let pg_trust = PgServer::primary(PgAuth::Trust);
    let pg_md5 = PgServer::primary(PgAuth::Md5);
    pg_md5.create_user("failoverd", PASSWORD);
    let pg_scram = PgServer::primary(PgAuth::ScramSha256);
    pg_scram.create_user("failoverd", PASSWORD);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut rows = Vec::new();
    let mut failed = false;
    let wants = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let mut bench = |name: &'static str, addr: SocketAddr, kind: Kind| {
        if !wants(name) {
            return;
        }
        match runtime.block_on(measure(addr, kind, checks)) {
            Ok(row) => {
                if let Some(err) = &row.first_error {
                    eprintln!(
                        "{name}: {} of {checks} checks failed, first: {err}",
                        row.failed
                    );
                    failed = true;
                }
                rows.push((name, row));
            }
            Err(err) => {
                eprintln!("{name}: {err}");
                failed = true;
            }
        }
    };
    bench("tcp connect", redis.addr, Kind::Tcp);
    bench("http /primary", http.addr, Kind::Http);
    bench("redis ROLE", redis.addr, Kind::Redis(None));
    bench(
        "redis AUTH+ROLE (ACL user)",
        redis_acl.addr,
        Kind::Redis(Some("failoverd")),
    );
    bench(
        "postgres trust",
        pg_trust.addr,
        Kind::Postgres {
            user: "postgres",
            password: None,
        },
    );
    bench(
        "postgres md5",
        pg_md5.addr,
        Kind::Postgres {
            user: "failoverd",
            password: Some(PASSWORD),
        },
    );
    bench(
        "postgres scram-sha-256",
        pg_scram.addr,
        Kind::Postgres {
            user: "failoverd",
            password: Some(PASSWORD),
        },
    );
    print_table(&rows, checks, quick);
    !failed
}

#[derive(Clone, Copy)]
enum Kind {
    Tcp,
    Http,
    /// With the ACL user (and [`PASSWORD`]) or none.
    Redis(Option<&'static str>),
    Postgres {
        user: &'static str,
        password: Option<&'static str>,
    },
}

struct Row {
    wall: Duration,
    cpu: Duration,
    /// Checks that failed, and the first reason.
    failed: usize,
    first_error: Option<String>,
}

/// Warm up (a failure there is an error: the setup is wrong), then run
/// `checks` checks, counting failures, and take the CPU and wall time.
async fn measure(addr: SocketAddr, kind: Kind, checks: usize) -> Result<Row, String> {
    for _ in 0..WARMUP_CHECKS {
        one_check(addr, kind).await?;
    }
    let mut failed = 0;
    let mut first_error = None;
    let cpu_before = cpu_time();
    let started = Instant::now();
    for _ in 0..checks {
        if let Err(err) = one_check(addr, kind).await {
            failed += 1;
            first_error.get_or_insert(err);
        }
    }
    Ok(Row {
        wall: started.elapsed(),
        cpu: cpu_time().saturating_sub(cpu_before),
        failed,
        first_error,
    })
}

/// One whole check as the check loop runs it (connect, then the kind's
/// exchange), bounded by [`CHECK_LIMIT`]; a failure is an error.
async fn one_check(addr: SocketAddr, kind: Kind) -> Result<(), String> {
    let mut settings = Settings {
        check_timeout: CHECK_LIMIT,
        ..Settings::default()
    };
    match kind {
        Kind::Tcp => {}
        Kind::Http => {
            settings.check = CheckKind::Http;
            settings.check_path = "/primary".to_string();
        }
        Kind::Redis(user) => {
            settings.check = CheckKind::Redis;
            settings.check_user = user.unwrap_or_default().to_string();
            settings.check_password = user.map(|_| Secret::new(PASSWORD.to_string()));
        }
        Kind::Postgres { user, password } => {
            settings.check = CheckKind::Postgres;
            settings.check_user = user.to_string();
            settings.check_password = password.map(|p| Secret::new(p.to_string()));
        }
    }
    let address = BackendAddress::Ip(addr);
    health::check(&address, &settings)
        .await
        .map_err(|e| format!("check of {addr} failed: {e}"))
}

/// User + system CPU time of this process, all threads.
fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

fn print_table(rows: &[(&str, Row)], checks: usize, quick: bool) {
    println!();
    println!(
        "health checks, {checks} sequential per kind{} (CPU = this process, user+sys)",
        if quick { ", --quick" } else { "" }
    );
    println!(
        "{:<28} {:>14} {:>18} {:>18} {:>22} {:>7}",
        "check",
        "wall ms/check",
        "CPU ms/1000 chk",
        "checks/s (1 core)",
        "1000 backends@500ms",
        "failed"
    );
    for (name, row) in rows {
        let n = checks as f64;
        let cpu_per_check = row.cpu.as_secs_f64() / n;
        let wall_ms = row.wall.as_secs_f64() * 1e3 / n;
        let per_second = if cpu_per_check > 0.0 {
            1.0 / cpu_per_check
        } else {
            f64::INFINITY
        };
        let fleet_pct = cpu_per_check * FLEET_BACKENDS / FLEET_INTERVAL_SECS * 100.0;
        println!(
            "{name:<28} {wall_ms:>14.3} {:>18.1} {per_second:>18.0} {:>20.1} % {:>7}",
            cpu_per_check * 1e6,
            fleet_pct,
            row.failed
        );
    }
    println!(
        "(last column: CPU % of one core for {FLEET_BACKENDS} backends checked every {FLEET_INTERVAL_SECS} s)"
    );
}

/// An HTTP server in a child process (this binary with `--serve-http`),
/// so its CPU is not counted; killed and waited for on drop.
struct HttpChild {
    addr: SocketAddr,
    child: Child,
}

impl HttpChild {
    fn start() -> HttpChild {
        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new(exe)
            .arg("--serve-http")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the HTTP server");
        let stdout = child.stdout.take().expect("child stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the HTTP port");
        let addr = line.trim().parse().expect("HTTP server address");
        HttpChild { addr, child }
    }
}

impl Drop for HttpChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--serve-http`: answer every request like Patroni's `/primary` on the
/// leader, one connection at a time (the bench checks sequentially);
/// print the address first. Runs until the parent kills it.
fn serve_http() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind HTTP server");
    let addr = listener.local_addr().expect("HTTP addr");
    println!("{addr}");
    let _ = std::io::stdout().flush();
    let body = r#"{"state": "running", "role": "master", "server_version": 150000}"#;
    let reply = format!(
        "HTTP/1.0 200 OK\r\nServer: BaseHTTP/0.6 Python/3.11\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut request = Vec::new();
        let mut buf = [0u8; 2048];
        while !request.ends_with(b"\r\n\r\n") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let _ = stream.write_all(reply.as_bytes());
    }
}
