//! Three failoverd instances in front of one primary and one backup, with
//! and without `[cluster]` (a real etcd, started here), and one instance
//! alone for the time to switch: the primary starts failing its checks while
//! it still accepts connections, and a client hits every instance every
//! 20 ms. Per run it counts the client connections that reached the old
//! primary after the first one reached the backup, how long the instances
//! disagreed (some instance's `failoverd_backend_active` still on the
//! primary while another's is on the backup, scraped every 2 ms), and the
//! time from the primary failing to every instance on the backup.
//!
//! Run: `cargo bench --bench cluster_overlap` (5 runs per mode) or
//! `cargo bench --bench cluster_overlap -- --quick` (1 run; the CI smoke).
//! Needs `etcd-server` (installed with apt-get when running as root).

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::*;

const FULL_RUNS: usize = 5;
const QUICK_RUNS: usize = 1;
/// A client to every instance this often.
const EVERY: Duration = Duration::from_millis(20);
/// Clients keep coming this long after the primary starts failing.
const AFTER: Duration = Duration::from_secs(3);
const BEFORE: Duration = Duration::from_millis(600);

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    Alone1,
    Alone3,
    Cluster3,
}

impl Setup {
    fn label(self) -> &'static str {
        match self {
            Setup::Alone1 => "1 instance",
            Setup::Alone3 => "3 instances, no [cluster]",
            Setup::Cluster3 => "3 instances, [cluster]",
        }
    }
}

/// One run's figures.
#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    late: usize,
    failed: usize,
    disagreed: Duration,
    all_on_backup: Duration,
}

fn main() -> ExitCode {
    let quick = std::env::args().any(|a| a == "--quick")
        || std::env::var_os("FAILOVERD_BENCH_QUICK").is_some();
    let runs = if quick { QUICK_RUNS } else { FULL_RUNS };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let etcd = Etcd::start().await;
        println!(
            "| setup | clients on the old primary after the first on the backup | instances disagreed (ms) | primary failing -> all on the backup (ms) | failed clients |"
        );
        println!("|---|---:|---:|---:|---:|");
        let mut status = ExitCode::SUCCESS;
        for setup in [Setup::Alone1, Setup::Alone3, Setup::Cluster3] {
            let mut all = Vec::new();
            for run in 0..runs {
                let prefix = format!("/bench-{run}");
                all.push(one_run(setup, &etcd, &prefix).await);
            }
            let median = |f: fn(&Figures) -> f64| {
                let mut v: Vec<f64> = all.iter().map(f).collect();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let failed: usize = all.iter().map(|f| f.failed).sum();
            if failed > 0 {
                status = ExitCode::FAILURE;
            }
            let late: Vec<String> = all.iter().map(|f| f.late.to_string()).collect();
            println!(
                "| {} | {} (runs: {}) | {:.0} | {:.0} | {} |",
                setup.label(),
                median(|f| f.late as f64),
                late.join(", "),
                median(|f| f.disagreed.as_secs_f64() * 1e3),
                median(|f| f.all_on_backup.as_secs_f64() * 1e3),
                failed
            );
        }
        status
    })
}

async fn one_run(setup: Setup, etcd: &Etcd, prefix: &str) -> Figures {
    let primary = TestBackend::start("primary", Mode::Status).await;
    let backup = TestBackend::start("backup", Mode::Status).await;
    let backends = [("primary", primary.addr), ("backup", backup.addr)];
    let count = if setup == Setup::Alone1 { 1 } else { 3 };
    let mut px = Vec::new();
    for i in 0..count {
        let name = format!("px{}", i + 1);
        px.push(start(setup, etcd, prefix, &name, &backends).await);
    }
    // Every instance on the primary before the fault.
    for p in &px {
        eventually(Duration::from_secs(20), "on the primary", || async {
            match answer(p.listen()).await {
                Ok(who) if who == "primary" => Ok(()),
                other => Err(other),
            }
        })
        .await;
    }
    let listens: Vec<SocketAddr> = px.iter().map(Failoverd::listen).collect();
    let metrics: Vec<SocketAddr> = px.iter().map(|p| p.layout().metrics).collect();
    let start_at = Instant::now();
    let failing_at = start_at + BEFORE;
    let done = Arc::new(AtomicBool::new(false));
    // When each instance stops showing the primary active, and when it
    // first shows the backup active.
    let watchers: Vec<_> = metrics
        .iter()
        .map(|&addr| {
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let (mut off, mut on) = (None, None);
                while !done.load(Ordering::SeqCst) && on.is_none() {
                    let scrape = scrape(addr).await;
                    let active =
                        |b: &str| scrape.sum("failoverd_backend_active", &[("backend", b)]);
                    let now = Instant::now();
                    if off.is_none() && now > failing_at && active("primary") == 0.0 {
                        off = Some(now);
                    }
                    if active("backup") == 1.0 {
                        on = Some(now);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                (off, on)
            })
        })
        .collect();
    let mut clients = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(EVERY);
    let mut failed_primary = false;
    while start_at.elapsed() < BEFORE + AFTER {
        tick.tick().await;
        if !failed_primary && Instant::now() >= failing_at {
            primary.set_healthy(false);
            failed_primary = true;
        }
        for &addr in &listens {
            clients.spawn(async move { (answer(addr).await, Instant::now()) });
        }
    }
    let mut answers = Vec::new();
    while let Some(done) = clients.join_next().await {
        answers.push(done.expect("client"));
    }
    done.store(true, Ordering::SeqCst);
    let (mut offs, mut ons) = (Vec::new(), Vec::new());
    for w in watchers {
        let (off, on) = w.await.expect("watcher");
        offs.extend(off);
        ons.extend(on);
    }
    let switched = ons.clone();
    let failed = answers.iter().filter(|(r, _)| r.is_err()).count() + (count - switched.len());
    let first_backup = answers
        .iter()
        .filter(|(r, _)| r.as_deref() == Ok("backup"))
        .map(|(_, at)| *at)
        .min();
    let late = first_backup.map_or(0, |first| {
        answers
            .iter()
            .filter(|(r, at)| r.as_deref() == Ok("primary") && *at > first)
            .count()
    });
    // Some instance still on the primary while another is on the backup:
    // from the first backup-on to the last primary-off.
    let disagreed = match (ons.iter().min(), offs.iter().max()) {
        (Some(first_on), Some(last_off)) => last_off.saturating_duration_since(*first_on),
        _ => Duration::ZERO,
    };
    Figures {
        late,
        failed,
        disagreed,
        all_on_backup: switched
            .iter()
            .max()
            .map_or(Duration::ZERO, |l| l.duration_since(failing_at)),
    }
}

async fn start(
    setup: Setup,
    etcd: &Etcd,
    prefix: &str,
    name: &str,
    backends: &[(&str, SocketAddr)],
) -> Failoverd {
    Failoverd::start(&format!("bench-{name}"), |layout| {
        let service = layout
            .service()
            .set("check_interval", "100ms")
            .set("check_timeout", "100ms")
            .set("fall", 2u32)
            .set("rise", 2u32)
            .set("check_expect", "OK")
            .set("hold_timeout", "5s")
            .backends(backends);
        let config = layout.config(service);
        match setup {
            Setup::Cluster3 => config.cluster(etcd.cluster_table(name, prefix)),
            Setup::Alone1 | Setup::Alone3 => config,
        }
        .to_string()
    })
    .await
}

/// The backend that answered a client through `addr`, or the error.
async fn answer(addr: SocketAddr) -> Result<String, String> {
    greeted_by(addr, Duration::from_secs(6)).await
}
