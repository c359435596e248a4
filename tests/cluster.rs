//! Cluster mode through the binary: three `failoverd run` processes that
//! share a real etcd (`etcd-server`, started here on free loopback ports
//! with its own data directory) decide as one (SPEC.md: Cluster).
//!
//! - all three agree on the primary, with exactly one decider;
//! - the primary killed: all three on the backup with one generation, and
//!   `notify` ran once in all;
//! - no overlap: the primary fails its checks while it still accepts, and
//!   clients hitting all three every 20 ms never reach it after the first
//!   one reached the backup, and none fails (hold covers the switch);
//! - one instance alone cannot reach the primary: no switch;
//! - the decider killed: another takes over within ttl, no switch;
//! - etcd killed: `on_lost = "keep"` keeps serving, `"close"` refuses
//!   within ttl; both serve again when etcd is back;
//! - the etcd leader of a 3-member store killed: nothing visible happens.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::*;

/// The lease ttl of every instance here.
const TTL: Duration = Duration::from_secs(2);
/// How late etcd may expire a lease (its lessor looks every 500 ms) plus
/// slack for a loaded machine.
const EXPIRY_SLACK: Duration = Duration::from_secs(3);

/// One instance's settings besides its name.
struct Member<'a> {
    name: &'a str,
    on_lost: &'a str,
    backends: Vec<(&'a str, SocketAddr)>,
}

fn member<'a>(name: &'a str, backends: &[(&'a str, SocketAddr)]) -> Member<'a> {
    Member {
        name,
        on_lost: "close",
        backends: backends.to_vec(),
    }
}

/// Start one `failoverd run` in the cluster at `etcd` under `prefix`, its
/// `notify` appending a line per run to `notify_log`.
async fn start(etcd: &Etcd, prefix: &str, m: &Member<'_>, notify_log: &Path) -> Failoverd {
    let log = notify_log.display().to_string();
    Failoverd::start(&format!("cluster-{}", m.name), |layout| {
        let service = layout
            .service()
            .set("check_interval", "100ms")
            .set("check_timeout", "100ms")
            .set("fall", 2u32)
            .set("rise", 2u32)
            .set("check_expect", "OK")
            .set("hold_timeout", "5s")
            .set(
                "notify",
                [
                    "sh",
                    "-c",
                    "echo \"$0 $FAILOVERD_FROM>$FAILOVERD_TO@$FAILOVERD_GENERATION\" >> \"$1\"",
                    m.name,
                    log.as_str(),
                ],
            )
            .backends(&m.backends);
        layout
            .config(service)
            .cluster(etcd.cluster_table(m.name, prefix).set("on_lost", m.on_lost))
            .to_string()
    })
    .await
}

/// What one instance says: (active, generation, decider, connected).
async fn view(proxy: &Failoverd) -> (Option<String>, Option<u64>, Option<String>, bool) {
    let status = proxy.status_json().await;
    let service = &status["services"][0];
    (
        service["active"].as_str().map(str::to_string),
        service["generation"].as_u64(),
        status["cluster"]["decider"].as_str().map(str::to_string),
        status["cluster"]["connected"] == true,
    )
}

/// Wait until every instance is connected and shows `active` with one
/// generation and one decider; that generation and decider.
async fn agreed_on(proxies: &[&Failoverd], active: &str, limit: Duration) -> (u64, String) {
    eventually(limit, &format!("every instance on {active}"), || async {
        let mut views = Vec::new();
        for p in proxies {
            views.push(view(p).await);
        }
        let first = views[0].clone();
        let same = views
            .iter()
            .all(|v| v.0.as_deref() == Some(active) && v.1 == first.1 && v.2 == first.2 && v.3);
        match (same, first.1, first.2.clone()) {
            (true, Some(generation), Some(decider)) => Ok((generation, decider)),
            _ => Err(views),
        }
    })
    .await
}

/// The backend that answered a client through `addr`, or the error.
async fn answer(addr: SocketAddr) -> Result<String, String> {
    greeted_by(addr, Duration::from_secs(6)).await
}

fn notify_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_agree_then_move_to_the_backup_as_one_with_one_notify() {
    within(90, async {
        let etcd = Etcd::start().await;
        let mut primary = TestBackend::start("primary", Mode::Status).await;
        let backup = TestBackend::start("backup", Mode::Status).await;
        let backends = [("primary", primary.addr), ("backup", backup.addr)];
        let dir = TempDir::new("cluster-notify");
        let notify_log = dir.path("notify.log");
        let mut px = Vec::new();
        for name in ["px1", "px2", "px3"] {
            px.push(start(&etcd, "/agree", &member(name, &backends), &notify_log).await);
        }
        let all: Vec<&Failoverd> = px.iter().collect();
        let (generation, decider) = agreed_on(&all, "primary", Duration::from_secs(15)).await;
        let mut deciders = 0.0;
        for p in &px {
            deciders += p.metrics().await.sum("failoverd_cluster_decider", &[]);
            assert_eq!(answer(p.listen()).await.unwrap(), "primary");
        }
        assert_eq!(deciders, 1.0, "exactly one decider ({decider})");
        let members = px[0].status_json().await["cluster"]["members"].clone();
        assert_eq!(members, serde_json::json!(["px1", "px2", "px3"]));

        let killed = Instant::now();
        primary.stop();
        let (after, decider_after) = agreed_on(&all, "backup", Duration::from_secs(10)).await;
        let took = killed.elapsed();
        assert!(after > generation, "generation {generation} -> {after}");
        assert_eq!(decider_after, decider);
        for p in &px {
            assert_eq!(answer(p.listen()).await.unwrap(), "backup");
        }
        eprintln!(
            "cluster: primary stopped -> all three on the backup in {} ms (generation {generation} -> {after})",
            took.as_millis()
        );
        // notify is asynchronous: give a stray second run time to show.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let lines = notify_lines(&notify_log);
        assert_eq!(
            lines,
            vec![format!("{decider} primary>backup@{after}")],
            "notify must run once, on the decider"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_reaches_the_old_primary_after_one_reached_the_backup() {
    within(90, async {
        let etcd = Etcd::start().await;
        let primary = TestBackend::start("primary", Mode::Status).await;
        let backup = TestBackend::start("backup", Mode::Status).await;
        let backends = [("primary", primary.addr), ("backup", backup.addr)];
        let dir = TempDir::new("cluster-overlap");
        let notify_log = dir.path("notify.log");
        let mut px = Vec::new();
        for name in ["px1", "px2", "px3"] {
            px.push(start(&etcd, "/overlap", &member(name, &backends), &notify_log).await);
        }
        let all: Vec<&Failoverd> = px.iter().collect();
        agreed_on(&all, "primary", Duration::from_secs(15)).await;
        let listens: Vec<SocketAddr> = px.iter().map(Failoverd::listen).collect();

        let start_at = Instant::now();
        let mut clients = tokio::task::JoinSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for i in 0..200usize {
            tick.tick().await;
            if i == 50 {
                // Fails its checks from here on, and still accepts.
                primary.set_healthy(false);
            }
            let addr = listens[i % 3];
            clients.spawn(async move {
                let result = answer(addr).await;
                (i, result, start_at.elapsed())
            });
        }
        let mut answers = Vec::new();
        while let Some(done) = clients.join_next().await {
            answers.push(done.expect("client task"));
        }
        let failed: Vec<_> = answers.iter().filter(|(_, r, _)| r.is_err()).collect();
        assert!(failed.is_empty(), "clients failed: {failed:?}");
        let first_backup = answers
            .iter()
            .filter(|(_, r, _)| r.as_deref() == Ok("backup"))
            .map(|(_, _, at)| *at)
            .min()
            .expect("some client reached the backup");
        let late: Vec<_> = answers
            .iter()
            .filter(|(_, r, at)| r.as_deref() == Ok("primary") && *at > first_backup)
            .collect();
        assert!(
            late.is_empty(),
            "clients reached the old primary after the backup served at {first_backup:?}: {late:?}"
        );
        let to_primary = answers
            .iter()
            .filter(|(_, r, _)| r.as_deref() == Ok("primary"))
            .count();
        eprintln!(
            "cluster no-overlap: 200 clients, {to_primary} on the primary, {} on the backup, 0 failed, 0 on the primary after the first on the backup",
            200 - to_primary
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_that_cannot_reach_the_primary_moves_nobody() {
    within(90, async {
        let etcd = Etcd::start().await;
        let primary = TestBackend::start("primary", Mode::Status).await;
        let backup = TestBackend::start("backup", Mode::Status).await;
        let backends = [("primary", primary.addr), ("backup", backup.addr)];
        // px3 reaches "primary" by a route of its own that is broken.
        let broken = [("primary", closed_port().await), ("backup", backup.addr)];
        let dir = TempDir::new("cluster-consensus");
        let notify_log = dir.path("notify.log");
        let px1 = start(&etcd, "/consensus", &member("px1", &backends), &notify_log).await;
        let px2 = start(&etcd, "/consensus", &member("px2", &backends), &notify_log).await;
        let px3 = start(&etcd, "/consensus", &member("px3", &broken), &notify_log).await;
        let all = [&px1, &px2, &px3];
        let (generation, _) = agreed_on(&all, "primary", Duration::from_secs(15)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (again, _) = agreed_on(&all, "primary", Duration::from_secs(1)).await;
        assert_eq!(again, generation, "a switch happened");
        let status = px3.status_json().await;
        assert_eq!(
            status["services"][0]["backends"][0]["state"], "down",
            "px3 sees its primary down: {status}"
        );
        assert!(notify_lines(&notify_log).is_empty());
        assert_eq!(answer(px1.listen()).await.unwrap(), "primary");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_decider_hands_over_within_ttl_without_a_switch() {
    within(90, async {
        let etcd = Etcd::start().await;
        let primary = TestBackend::start("primary", Mode::Status).await;
        let backup = TestBackend::start("backup", Mode::Status).await;
        let backends = [("primary", primary.addr), ("backup", backup.addr)];
        let dir = TempDir::new("cluster-decider");
        let notify_log = dir.path("notify.log");
        let mut px = Vec::new();
        for name in ["px1", "px2", "px3"] {
            px.push(start(&etcd, "/decider", &member(name, &backends), &notify_log).await);
        }
        let all: Vec<&Failoverd> = px.iter().collect();
        let (generation, decider) = agreed_on(&all, "primary", Duration::from_secs(15)).await;
        let index = ["px1", "px2", "px3"]
            .iter()
            .position(|n| *n == decider)
            .expect("the decider is one of the three");
        let mut gone = px.remove(index);
        let killed = Instant::now();
        gone.signal(Signal::Kill);
        gone.wait_exit(Duration::from_secs(5)).await;
        let rest: Vec<&Failoverd> = px.iter().collect();
        let (after, new_decider) = eventually(TTL + EXPIRY_SLACK, "another decider", || async {
            let v = view(rest[0]).await;
            match (&v.2, v.1) {
                (Some(d), Some(g)) if *d != decider => Ok((g, d.clone())),
                _ => Err(v),
            }
        })
        .await;
        eprintln!(
            "cluster: decider {decider} killed, {new_decider} took over after {} ms (ttl {} ms)",
            killed.elapsed().as_millis(),
            TTL.as_millis()
        );
        let (settled, _) = agreed_on(&rest, "primary", Duration::from_secs(5)).await;
        assert!(after >= generation && settled >= generation);
        for p in &px {
            assert_eq!(answer(p.listen()).await.unwrap(), "primary");
        }
        assert!(
            notify_lines(&notify_log).is_empty(),
            "a new decider is no switch"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_lost_keep_serves_close_refuses_and_both_rejoin() {
    within(120, async {
        let mut etcd = Etcd::start().await;
        let primary = TestBackend::start("primary", Mode::Status).await;
        let backup = TestBackend::start("backup", Mode::Status).await;
        let backends = [("primary", primary.addr), ("backup", backup.addr)];
        let dir = TempDir::new("cluster-lost");
        let notify_log = dir.path("notify.log");
        let keep = Member {
            name: "keep",
            on_lost: "keep",
            backends: backends.to_vec(),
        };
        let keep = start(&etcd, "/lost", &keep, &notify_log).await;
        let close = start(&etcd, "/lost", &member("close", &backends), &notify_log).await;
        let (generation, _) = agreed_on(&[&keep, &close], "primary", Duration::from_secs(15)).await;

        let killed = Instant::now();
        etcd.kill(0);
        let refused = eventually(TTL + Duration::from_secs(2), "close refusing", || async {
            match answer(close.listen()).await {
                Err(e) => Ok(e),
                Ok(who) => Err(who),
            }
        })
        .await;
        let took = killed.elapsed();
        eprintln!(
            "cluster: etcd killed, on_lost = \"close\" refused after {} ms ({refused})",
            took.as_millis()
        );
        // Counted from the last confirmed renewal, sent up to ttl/3 before the kill.
        assert!(
            took >= TTL * 2 / 3 - Duration::from_millis(200),
            "refused too early: {took:?}"
        );
        // "keep" serves throughout.
        for _ in 0..5 {
            assert_eq!(answer(keep.listen()).await.unwrap(), "primary");
        }
        assert_eq!(
            keep.metrics()
                .await
                .value("failoverd_cluster_connected", &[]),
            Some(0.0)
        );

        etcd.restart(0).await;
        let (after, _) = agreed_on(&[&keep, &close], "primary", Duration::from_secs(20)).await;
        assert!(after >= generation);
        assert_eq!(answer(close.listen()).await.unwrap(), "primary");
        assert!(
            notify_lines(&notify_log).is_empty(),
            "losing etcd is no switch"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_etcd_leader_of_three_changes_nothing_visible() {
    within(120, async {
        let mut etcd = Etcd::start_cluster(3).await;
        let primary = TestBackend::start("primary", Mode::Status).await;
        let backup = TestBackend::start("backup", Mode::Status).await;
        let backends = [("primary", primary.addr), ("backup", backup.addr)];
        let dir = TempDir::new("cluster-leader");
        let notify_log = dir.path("notify.log");
        let mut px = Vec::new();
        for name in ["px1", "px2", "px3"] {
            px.push(start(&etcd, "/leader", &member(name, &backends), &notify_log).await);
        }
        let all: Vec<&Failoverd> = px.iter().collect();
        let (generation, decider) = agreed_on(&all, "primary", Duration::from_secs(20)).await;
        let leader = etcd.leader().await;
        etcd.kill(leader);
        let until = Instant::now() + TTL + EXPIRY_SLACK;
        let mut served = 0;
        while Instant::now() < until {
            for p in &px {
                assert_eq!(answer(p.listen()).await.unwrap(), "primary");
                served += 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (after, decider_after) = agreed_on(&all, "primary", Duration::from_secs(5)).await;
        assert_eq!(after, generation, "a switch happened");
        assert_eq!(decider_after, decider, "the decider changed");
        for p in &px {
            assert_eq!(
                p.metrics().await.value("failoverd_cluster_connected", &[]),
                Some(1.0)
            );
        }
        eprintln!("cluster: etcd leader {leader} killed, {served} clients served, nothing changed");
    })
    .await;
}

/// `ctl disable` on a member that is not the decider applies cluster-wide:
/// every instance moves to the backup and shows the primary disabled;
/// `ctl enable` brings them all back (failback auto).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_disable_on_any_member_applies_cluster_wide() {
    within(90, async {
        let etcd = Etcd::start().await;
        let primary = TestBackend::start("primary", Mode::Status).await;
        let backup = TestBackend::start("backup", Mode::Status).await;
        let backends = [("primary", primary.addr), ("backup", backup.addr)];
        let dir = TempDir::new("cluster-maintenance");
        let notify_log = dir.path("notify.log");
        let px1 = start(&etcd, "/maint", &member("px1", &backends), &notify_log).await;
        let px2 = start(&etcd, "/maint", &member("px2", &backends), &notify_log).await;
        let all = [&px1, &px2];
        let (_, decider) = agreed_on(&all, "primary", Duration::from_secs(15)).await;
        let other = if decider == "px1" { &px2 } else { &px1 };
        let out = other.ctl(&["disable", "svc", "primary"]).await;
        assert_eq!(out.code, Some(0), "{out:?}");
        agreed_on(&all, "backup", Duration::from_secs(10)).await;
        for p in all {
            let status = p.status_json().await;
            assert_eq!(
                status["services"][0]["backends"][0]["enabled"], false,
                "{status}"
            );
        }
        let out = other.ctl(&["enable", "svc", "primary"]).await;
        assert_eq!(out.code, Some(0), "{out:?}");
        agreed_on(&all, "primary", Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let lines = notify_lines(&notify_log);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines.iter().all(|l| l.starts_with(&decider)), "{lines:?}");
    })
    .await;
}
