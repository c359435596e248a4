//! The etcd client against real etcd servers: leases, the election
//! transaction, conditioned writes, watches, and failover when a member or
//! the leader dies.

mod common;
use common::etcd as etcd_harness;

use std::future::Future;
use std::net::TcpListener as StdListener;
use std::time::{Duration, Instant};

use etcd_harness::Etcd;
use failoverd::cluster::etcd::{
    Client, Compare, CompareOp, EtcdError, Event, EventKind, LeaseId, Op, OpResponse, Txn,
};

/// The client's per-request bound in these tests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

async fn within<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    init_logging();
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .expect("test timed out")
}

fn client(endpoints: &[String]) -> Client {
    Client::new(endpoints, REQUEST_TIMEOUT).unwrap()
}

/// Create-if-absent: the election of a decider under `lease`.
fn elect(key: &[u8], name: &[u8], lease: LeaseId) -> Txn {
    Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([Op::put(key, name, Some(lease))])
        .or_else([Op::get(key)])
}

/// A write that only happens while `lease` still holds `decider`.
fn write_as_decider(decider: &[u8], lease: LeaseId, key: &[u8], value: &[u8]) -> Txn {
    Txn::new()
        .when([Compare::lease(decider, CompareOp::Equal, lease)])
        .and_then([Op::put(key, value, None)])
}

async fn value_of(c: &Client, key: &[u8]) -> Option<Vec<u8>> {
    c.get(key).await.unwrap().0.map(|kv| kv.value)
}

/// Polls until `key` is gone; returns how long that took.
async fn wait_gone(c: &Client, key: &[u8], limit: Duration) -> Duration {
    let start = Instant::now();
    while c.get(key).await.unwrap().0.is_some() {
        assert!(
            start.elapsed() < limit,
            "{} still there after {limit:?}",
            String::from_utf8_lossy(key)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// Reads events until `count` have arrived.
async fn collect(watch: &mut failoverd::cluster::etcd::Watch, count: usize) -> Vec<Event> {
    let mut events = Vec::new();
    while events.len() < count {
        events.extend(watch.next().await.unwrap());
    }
    events
}

fn summary(events: &[Event]) -> Vec<(EventKind, String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.kind,
                String::from_utf8_lossy(&e.kv.key).into_owned(),
                String::from_utf8_lossy(&e.kv.value).into_owned(),
            )
        })
        .collect()
}

/// Log to the test's output when RUST_LOG is set.
fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

#[tokio::test]
async fn a_key_under_a_lease_lives_while_renewed_and_vanishes_after_its_ttl() {
    within(60, async {
        let etcd = Etcd::start().await;
        let c = client(&etcd.endpoints());
        let lease = c.grant(Duration::from_millis(1500)).await.unwrap();
        assert_eq!(
            lease.ttl,
            Duration::from_secs(2),
            "1.5s rounds up to whole seconds"
        );
        c.put(b"/t/lease/member", b"px1", Some(lease.id))
            .await
            .unwrap();

        // Renewed for twice its TTL: the key stays.
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(
                c.keep_alive(lease.id).await.unwrap(),
                Some(Duration::from_secs(2))
            );
            assert_eq!(
                value_of(&c, b"/t/lease/member").await.as_deref(),
                Some(&b"px1"[..])
            );
        }

        // Not renewed: gone after about the TTL, not before.
        let gone = wait_gone(&c, b"/t/lease/member", Duration::from_secs(6)).await;
        println!(
            "key vanished {} ms after the last renewal (ttl 2 s)",
            gone.as_millis()
        );
        assert!(
            gone >= Duration::from_millis(1500),
            "expired early: {gone:?}"
        );
        assert_eq!(
            c.keep_alive(lease.id).await.unwrap(),
            None,
            "an expired lease cannot be renewed"
        );
        let err = c
            .put(b"/t/lease/again", b"x", Some(lease.id))
            .await
            .unwrap_err();
        assert!(err.is_lease_not_found(), "{err}");
        assert!(
            err.to_string().contains("requested lease not found"),
            "{err}"
        );

        // Revoke deletes at once; revoking a gone lease is no error.
        let lease = c.grant(Duration::from_secs(30)).await.unwrap();
        c.put(b"/t/lease/other", b"x", Some(lease.id))
            .await
            .unwrap();
        c.revoke(lease.id).await.unwrap();
        assert_eq!(value_of(&c, b"/t/lease/other").await, None);
        c.revoke(lease.id).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn the_create_if_absent_election_has_exactly_one_winner() {
    within(60, async {
        let etcd = Etcd::start().await;
        // Two instances, each with its own client and lease.
        let (a, b) = (client(&etcd.endpoints()), client(&etcd.endpoints()));
        let la = a.grant(Duration::from_secs(10)).await.unwrap().id;
        let lb = b.grant(Duration::from_secs(10)).await.unwrap().id;
        for round in 0..20 {
            let decider = format!("/t/elect/{round}/decider");
            let state = format!("/t/elect/{round}/state");
            let (ta, tb) = (
                elect(decider.as_bytes(), b"px1", la),
                elect(decider.as_bytes(), b"px2", lb),
            );
            let (ra, rb) = tokio::join!(a.txn(&ta), b.txn(&tb));
            let (ra, rb) = (ra.unwrap(), rb.unwrap());
            assert!(
                ra.succeeded != rb.succeeded,
                "round {round}: exactly one wins: {ra:?} {rb:?}"
            );
            let a_won = ra.succeeded;
            let (winner, winner_lease, winner_client, loser_lease, loser_client, lost) = if a_won {
                ("px1", la, &a, lb, &b, rb)
            } else {
                ("px2", lb, &b, la, &a, ra)
            };
            // The loser learns who won from its failure branch.
            match &lost.responses[..] {
                [OpResponse::Range(kvs)] => {
                    assert_eq!(kvs[0].value, winner.as_bytes());
                    assert_eq!(kvs[0].lease, Some(winner_lease));
                }
                other => panic!("round {round}: loser's read: {other:?}"),
            }
            // Only the winner's conditioned write goes through.
            let as_loser =
                write_as_decider(decider.as_bytes(), loser_lease, state.as_bytes(), b"loser");
            let w = loser_client.txn(&as_loser).await.unwrap();
            assert!(!w.succeeded, "round {round}: the loser wrote as decider");
            let as_winner = write_as_decider(
                decider.as_bytes(),
                winner_lease,
                state.as_bytes(),
                winner.as_bytes(),
            );
            let w = winner_client.txn(&as_winner).await.unwrap();
            assert!(w.succeeded && w.revision > 0 && w.responses == vec![OpResponse::Put]);
            assert_eq!(
                value_of(&a, state.as_bytes()).await.as_deref(),
                Some(winner.as_bytes())
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_write_conditioned_on_the_decider_key_fails_once_its_lease_expired() {
    within(60, async {
        let etcd = Etcd::start().await;
        let c = client(&etcd.endpoints());
        let lease = c.grant(Duration::from_secs(1)).await.unwrap().id;
        assert!(
            c.txn(&elect(b"/t/cond/decider", b"px1", lease))
                .await
                .unwrap()
                .succeeded
        );
        let w = c
            .txn(&write_as_decider(
                b"/t/cond/decider",
                lease,
                b"/t/cond/state",
                b"gen1",
            ))
            .await
            .unwrap();
        assert!(w.succeeded);

        wait_gone(&c, b"/t/cond/decider", Duration::from_secs(5)).await;
        let w = c
            .txn(&write_as_decider(
                b"/t/cond/decider",
                lease,
                b"/t/cond/state",
                b"gen2",
            ))
            .await
            .unwrap();
        assert!(
            !w.succeeded,
            "a write as decider after the lease expired went through"
        );
        assert_eq!(
            value_of(&c, b"/t/cond/state").await.as_deref(),
            Some(&b"gen1"[..])
        );
    })
    .await;
}

#[tokio::test]
async fn a_watch_delivers_puts_and_deletes_in_order_from_a_start_revision() {
    within(60, async {
        let etcd = Etcd::start().await;
        let c = client(&etcd.endpoints());
        let first = c.put(b"/t/w/a", b"1", None).await.unwrap();
        c.put(b"/t/w/b", b"2", None).await.unwrap();
        assert!(c.delete(b"/t/w/a").await.unwrap());
        assert!(
            !c.delete(b"/t/w/a").await.unwrap(),
            "deleting a missing key deletes nothing"
        );
        c.put(b"/t/other", b"outside the prefix", None)
            .await
            .unwrap();
        c.put(b"/t/w/b", b"3", None).await.unwrap();

        let mut watch = c.watch_prefix(b"/t/w/", first).await.unwrap();
        let events = collect(&mut watch, 4).await;
        assert_eq!(
            summary(&events),
            vec![
                (EventKind::Put, "/t/w/a".into(), "1".into()),
                (EventKind::Put, "/t/w/b".into(), "2".into()),
                (EventKind::Delete, "/t/w/a".into(), "".into()),
                (EventKind::Put, "/t/w/b".into(), "3".into()),
            ]
        );
        assert_eq!(events[0].kv.mod_revision, first);
        assert!(
            events
                .windows(2)
                .all(|w| w[0].kv.mod_revision < w[1].kv.mod_revision)
        );

        // Live events after the history, and a txn's writes in one batch.
        let txn = Txn::new().and_then([Op::put(b"/t/w/c", b"4", None), Op::delete(b"/t/w/b")]);
        let rev = c.txn(&txn).await.unwrap().revision;
        let batch = watch.next().await.unwrap();
        assert_eq!(
            summary(&batch),
            vec![
                (EventKind::Put, "/t/w/c".into(), "4".into()),
                (EventKind::Delete, "/t/w/b".into(), "".into())
            ]
        );
        assert!(batch.iter().all(|e| e.kv.mod_revision == rev));
        assert_eq!(watch.revision(), rev);

        // get_prefix and its revision: watching from revision + 1 misses nothing.
        let (kvs, rev) = c.get_prefix(b"/t/w/").await.unwrap();
        assert_eq!(
            kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
            vec![b"/t/w/c".to_vec()]
        );
        let mut watch = c.watch_prefix(b"/t/w/", rev + 1).await.unwrap();
        c.put(b"/t/w/d", b"5", None).await.unwrap();
        assert_eq!(
            summary(&watch.next().await.unwrap()),
            vec![(EventKind::Put, "/t/w/d".into(), "5".into())]
        );
    })
    .await;
}

#[tokio::test]
async fn an_idle_watch_is_re_created_without_losing_or_repeating_events() {
    within(60, async {
        let etcd = Etcd::start().await;
        let c = client(&etcd.endpoints()).with_watch_idle(Duration::from_millis(200));
        let (_, rev) = c.get_prefix(b"/t/idle/").await.unwrap();
        let mut watch = c.watch_prefix(b"/t/idle/", rev + 1).await.unwrap();
        let writer = async {
            // Several idle bounds pass before the write.
            tokio::time::sleep(Duration::from_millis(1200)).await;
            c.put(b"/t/idle/k", b"v", None).await.unwrap()
        };
        let (events, put_rev) = tokio::join!(watch.next(), writer);
        let events = events.unwrap();
        assert_eq!(
            summary(&events),
            vec![(EventKind::Put, "/t/idle/k".into(), "v".into())]
        );
        assert_eq!(events[0].kv.mod_revision, put_rev);
        let again = tokio::time::timeout(Duration::from_millis(800), watch.next()).await;
        assert!(again.is_err(), "the event came twice: {again:?}");
        // The watch still works after being cancelled mid-wait.
        c.put(b"/t/idle/k", b"w", None).await.unwrap();
        assert_eq!(
            summary(&watch.next().await.unwrap()),
            vec![(EventKind::Put, "/t/idle/k".into(), "w".into())]
        );
    })
    .await;
}

#[tokio::test]
async fn a_watch_from_a_compacted_revision_reports_compaction() {
    within(60, async {
        let etcd = Etcd::start().await;
        let c = client(&etcd.endpoints());
        let first = c.put(b"/t/c/k", b"1", None).await.unwrap();
        let last = c.put(b"/t/c/k", b"2", None).await.unwrap();
        etcd.compact(last).await;
        let err = match c.watch_prefix(b"/t/c/", first).await {
            Err(e) => e,
            Ok(mut watch) => watch.next().await.unwrap_err(),
        };
        assert_eq!(
            err,
            EtcdError::Compacted {
                requested: first,
                compact_revision: last
            }
        );
        assert!(err.to_string().contains("read the keys again"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn a_watch_reports_its_only_server_killed_and_resumes_after_a_restart() {
    within(60, async {
        let mut etcd = Etcd::start().await;
        let c = client(&etcd.endpoints());
        let (_, rev) = c.get_prefix(b"/t/kill/").await.unwrap();
        let mut watch = c.watch_prefix(b"/t/kill/", rev + 1).await.unwrap();
        c.put(b"/t/kill/a", b"1", None).await.unwrap();
        assert_eq!(collect(&mut watch, 1).await.len(), 1);

        etcd.kill(0);
        let start = Instant::now();
        let err = watch.next().await.unwrap_err();
        println!(
            "watch reported the killed server after {} ms: {err}",
            start.elapsed().as_millis()
        );
        assert!(matches!(err, EtcdError::Unreachable { .. }), "{err:?}");
        assert!(err.to_string().contains(&etcd.endpoint(0)), "{err}");

        etcd.restart(0).await;
        c.put(b"/t/kill/b", b"2", None).await.unwrap();
        let events = watch.next().await.unwrap();
        assert_eq!(
            summary(&events),
            vec![(EventKind::Put, "/t/kill/b".into(), "2".into())]
        );
    })
    .await;
}

#[tokio::test]
async fn a_watch_survives_a_killed_member_of_three() {
    within(90, async {
        let mut etcd = Etcd::start_cluster(3).await;
        let c = client(&etcd.endpoints());
        let (_, rev) = c.get_prefix(b"/t/survive/").await.unwrap();
        // The client starts at the first endpoint: the watch streams from it.
        let mut watch = c.watch_prefix(b"/t/survive/", rev + 1).await.unwrap();
        etcd.kill(0);
        let writer = client(&etcd.endpoints()[1..]);
        let start = Instant::now();
        // Member 0 may have been the leader: write once a new one is there.
        let put = async {
            while let Err(e) = writer.put(b"/t/survive/k", b"after the kill", None).await {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "no write after the kill: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let (events, ()) = tokio::join!(watch.next(), put);
        println!(
            "watch delivered through another member {} ms after the kill",
            start.elapsed().as_millis()
        );
        assert_eq!(
            summary(&events.unwrap()),
            vec![(
                EventKind::Put,
                "/t/survive/k".into(),
                "after the kill".into()
            )]
        );
    })
    .await;
}

#[tokio::test]
async fn the_client_keeps_working_when_the_leader_is_killed() {
    within(90, async {
        let mut etcd = Etcd::start_cluster(3).await;
        let leader = etcd.leader().await;
        // The leader first, so the client is talking to it when it dies.
        let mut endpoints = etcd.endpoints();
        endpoints.rotate_left(leader);
        let c = client(&endpoints);
        let lease = c.grant(Duration::from_secs(5)).await.unwrap().id;
        assert!(
            c.txn(&elect(b"/t/leader/decider", b"px1", lease))
                .await
                .unwrap()
                .succeeded
        );

        etcd.kill(leader);
        let start = Instant::now();
        let mut errors = Vec::new();
        loop {
            match c
                .txn(&write_as_decider(
                    b"/t/leader/decider",
                    lease,
                    b"/t/leader/state",
                    b"v",
                ))
                .await
            {
                Ok(r) => {
                    assert!(r.succeeded, "the decider key survives a leader change");
                    break;
                }
                Err(e) => errors.push(e.to_string()),
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no write within 5 s of the kill: {errors:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let write = start.elapsed();
        assert!(
            c.keep_alive(lease).await.unwrap().is_some(),
            "the lease survives a leader change"
        );
        println!(
            "leader killed: first conditioned write after {} ms; failed tries before it: {errors:#?}",
            write.as_millis()
        );
        let new_leader = etcd.leader().await;
        println!("new leader elected: member {new_leader} (was {leader})");
        assert_ne!(new_leader, leader);
    })
    .await;
}

#[tokio::test]
async fn a_txn_round_trip_on_loopback_is_fast() {
    within(60, async {
        let etcd = Etcd::start().await;
        let c = client(&etcd.endpoints());
        let lease = c.grant(Duration::from_secs(30)).await.unwrap().id;
        assert!(c.txn(&elect(b"/t/rtt/decider", b"px1", lease)).await.unwrap().succeeded);
        let mut rtt = Vec::new();
        for i in 0..100 {
            let txn = write_as_decider(b"/t/rtt/decider", lease, b"/t/rtt/state", format!("gen{i}").as_bytes());
            let start = Instant::now();
            assert!(c.txn(&txn).await.unwrap().succeeded);
            rtt.push(start.elapsed());
        }
        rtt.sort();
        println!(
            "conditioned txn round trip on loopback over 100: median {:.2} ms, p90 {:.2} ms, max {:.2} ms",
            rtt[50].as_secs_f64() * 1e3,
            rtt[90].as_secs_f64() * 1e3,
            rtt[99].as_secs_f64() * 1e3
        );
        assert!(rtt[50] < Duration::from_millis(200), "median txn {:?}", rtt[50]);
    })
    .await;
}

#[tokio::test]
async fn unreachable_endpoints_fail_fast_naming_each_one() {
    within(30, async {
        let closed: Vec<String> = (0..2)
            .map(|_| {
                let l = StdListener::bind("127.0.0.1:0").unwrap();
                format!("http://{}", l.local_addr().unwrap())
            })
            .collect();
        let c = client(&closed);
        let start = Instant::now();
        let err = c.get(b"/t/x").await.unwrap_err();
        assert!(
            start.elapsed() < REQUEST_TIMEOUT,
            "refused connects take no timeout: {:?}",
            start.elapsed()
        );
        let text = err.to_string();
        assert!(matches!(err, EtcdError::Unreachable { .. }), "{err:?}");
        assert!(
            text.contains(&closed[0]) && text.contains(&closed[1]) && text.contains("refused"),
            "{text}"
        );
        let err = c.watch_prefix(b"/t/", 1).await.err().unwrap();
        assert!(matches!(err, EtcdError::Unreachable { .. }), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn a_silent_endpoint_costs_one_timeout_and_a_write_to_it_is_reported_uncertain() {
    within(60, async {
        let etcd = Etcd::start().await;
        // Accepts connections (the kernel does) but never answers.
        let silent = StdListener::bind("127.0.0.1:0").unwrap();
        let endpoints = vec![
            format!("http://{}", silent.local_addr().unwrap()),
            etcd.endpoint(0),
        ];

        // A read moves on to the next endpoint after the timeout.
        let c = client(&endpoints);
        let start = Instant::now();
        c.get(b"/t/silent").await.unwrap();
        let took = start.elapsed();
        assert!(
            took >= REQUEST_TIMEOUT && took < 2 * REQUEST_TIMEOUT,
            "read took {took:?}"
        );
        // ... and the client stays with the endpoint that worked.
        let start = Instant::now();
        c.get(b"/t/silent").await.unwrap();
        assert!(start.elapsed() < REQUEST_TIMEOUT / 2);

        // A write may have reached the silent server: not repeated elsewhere.
        let c = client(&endpoints);
        let err = c.put(b"/t/silent", b"v", None).await.unwrap_err();
        assert!(
            matches!(&err, EtcdError::Uncertain { endpoint, .. } if *endpoint == endpoints[0]),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("may or may not have been applied"),
            "{err}"
        );
        assert_eq!(
            value_of(&c, b"/t/silent").await,
            None,
            "not sent to the other endpoint"
        );
        // The next write goes to the other endpoint.
        c.put(b"/t/silent", b"v", None).await.unwrap();
        drop(silent);
    })
    .await;
}

#[tokio::test]
async fn https_to_a_plain_http_etcd_fails_the_handshake_and_says_so() {
    within(30, async {
        let etcd = Etcd::start().await;
        let url = etcd.endpoint(0).replace("http://", "https://");
        let c = match Client::new(std::slice::from_ref(&url), REQUEST_TIMEOUT) {
            Ok(c) => c,
            // No system CA store at all: the error says what to install.
            Err(e) => {
                assert!(
                    matches!(e, EtcdError::Tls { .. }) && e.to_string().contains("CA"),
                    "{e}"
                );
                return;
            }
        };
        let err = c.get(b"/t/tls").await.unwrap_err();
        println!("https to a plain http etcd: {err}");
        assert!(matches!(err, EtcdError::Unreachable { .. }), "{err:?}");
        assert!(err.to_string().contains(&url), "{err}");
    })
    .await;
}

#[tokio::test]
async fn a_member_that_lost_its_quorum_refuses_reads_and_ends_watches() {
    within(60, async {
        let mut etcd = Etcd::start_cluster(3).await;
        // Talk only to member 0, then take its two peers away.
        let c = client(&etcd.endpoints()[..1]);
        let (_, rev) = c.get_prefix(b"/t/quorum/").await.unwrap();
        let mut watch = c.watch_prefix(b"/t/quorum/", rev + 1).await.unwrap();
        etcd.kill(1);
        etcd.kill(2);
        let start = Instant::now();
        let err = watch.next().await.unwrap_err();
        println!(
            "watch on a member without quorum ended after {} ms: {err}",
            start.elapsed().as_millis()
        );
        assert!(matches!(err, EtcdError::Unreachable { .. }), "{err:?}");
        let err = c.get(b"/t/quorum/k").await.unwrap_err();
        println!("read on a member without quorum: {err}");
        assert!(matches!(err, EtcdError::Unreachable { .. }), "{err:?}");
    })
    .await;
}
