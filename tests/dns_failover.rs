//! DNS failover end to end: the real `failoverd` binary monitors real
//! backends on loopback and publishes the active one into a real BIND 9
//! (`named`, see `common::bind`) by TSIG-signed RFC 2136 updates; every
//! record is read back with `dig`, a DNS client that is not failoverd's.
//!
//! What an operator relies on: the record holds the primary at start with
//! the configured TTL, moves to the backup within the detection bound and
//! back on failback, walks an ordered list top to bottom for a service
//! without `listen`, reaches a server that starts late, survives a wrong
//! key (refused, counted, record untouched), publishes AAAA for IPv6, and
//! follows a reload to a new target. `failoverd check` rejects each bad
//! `[service.dns]` with exit 2 naming the key.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::bind::{Named, ZONE};
use common::*;

/// Bounds every wait that is not a timing under test.
const LIMIT: Duration = Duration::from_secs(15);

/// The checks of the timing tests: SPEC.md's defaults.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);
const CHECK_TIMEOUT: Duration = Duration::from_millis(500);
const FALL: u32 = 3;
const RISE: u32 = 2;

/// Kill-to-answer runs whose median goes into the README.
const TIMING_RUNS: usize = 5;

/// Quick checks for the tests that time nothing.
fn quick_checks() -> Table {
    Table::new()
        .set("check_interval", "200ms")
        .set("check_timeout", "200ms")
        .set("fall", 2)
        .set("rise", 2)
}

/// SPEC.md's default checks, spelled out.
fn default_checks() -> Table {
    Table::new()
        .set("check_interval", "500ms")
        .set("check_timeout", "500ms")
        .set("fall", FALL)
        .set("rise", RISE)
}

/// The longest a dead active backend can go unnoticed: `fall` checks one
/// interval apart, the last one taking up to its timeout.
fn detection_bound() -> Duration {
    CHECK_INTERVAL * FALL + CHECK_TIMEOUT
}

/// The longest a recovered primary waits for traffic (failback_delay 0).
fn recovery_bound() -> Duration {
    CHECK_INTERVAL * RISE + CHECK_TIMEOUT
}

/// `[service.dns]` for the record `label` in the test zone of `named`.
fn dns(named: &Named, label: &str, ttl: &str) -> Table {
    Table::new()
        .set("server", named.addr())
        .set("zone", ZONE)
        .set("name", record(label))
        .set("ttl", ttl)
        .set("tsig_key", &named.key_file())
}

fn record(label: &str) -> String {
    format!("{label}.{ZONE}")
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

/// A greeting backend on a loopback address of its own (127.0.0.0/8 is
/// all loopback), so the address failoverd publishes by default, the IP of
/// `address`, tells the backends apart.
async fn backend_on(name: &str, host: &str) -> TestBackend {
    let addr: SocketAddr = format!("{host}:0").parse().expect("backend address");
    TestBackend::start_on(name, Mode::Greet, addr).await
}

/// failoverd with the layout's `[admin]` and `service` on the layout's
/// listen address.
async fn start(tag: &str, service: Service) -> Failoverd {
    Failoverd::start(tag, |layout| {
        layout
            .config(service.clone().listen(layout.listen))
            .to_string()
    })
    .await
}

/// A `[[service.backend]]` whose record address is `publish`.
fn published_as(name: &str, address: SocketAddr, publish: &str) -> Table {
    Table::new()
        .set("name", name)
        .set("address", address.to_string())
        .set("publish", publish)
}

/// The record type of an address.
fn rtype(address: IpAddr) -> &'static str {
    if address.is_ipv4() { "A" } else { "AAAA" }
}

/// Every answer `dig` gave for one name while waiting, in order, each
/// once: a record that passed through a wrong value shows it here.
#[derive(Default)]
struct Seen(Mutex<Vec<String>>);

impl Seen {
    fn note(&self, answer: &str) {
        let mut seen = self.0.lock().expect("seen lock");
        if seen.last().map(String::as_str) != Some(answer) {
            seen.push(answer.to_string());
        }
    }

    fn list(&self) -> Vec<String> {
        self.0.lock().expect("seen lock").clone()
    }
}

/// The A and AAAA records of `name`, read in one query, as one line:
/// `A 127.0.0.11 ttl 7`, `nothing` when there are none; `Err` when `dig`
/// got no answer.
async fn records(
    named: &Named,
    name: &str,
) -> Result<(Vec<(String, u32, IpAddr)>, String), String> {
    let found = named.addresses(name).await?;
    let line = if found.is_empty() {
        "nothing".to_string()
    } else {
        let parts: Vec<String> = found
            .iter()
            .map(|(kind, ttl, address)| format!("{kind} {address} ttl {ttl}"))
            .collect();
        parts.join(" + ")
    };
    Ok((found, line))
}

/// Wait until `name` holds exactly `want` (one record, nothing in the
/// other family) at `named`; the TTL it has and how long it took.
async fn wait_record(
    named: &Named,
    name: &str,
    want: IpAddr,
    limit: Duration,
    seen: &Seen,
) -> (u32, Duration) {
    let started = Instant::now();
    let ttl = eventually(limit, &format!("{name} {} {want}", rtype(want)), || async {
        let (found, line) = records(named, name).await?;
        seen.note(&line);
        match found.as_slice() {
            [(kind, ttl, address)] if kind == rtype(want) && *address == want => Ok(*ttl),
            _ => Err(line),
        }
    })
    .await;
    (ttl, started.elapsed())
}

/// `failoverd_dns_updates_total{service, result}` (0 when absent).
fn updates(scrape: &Scrape, service: &str, result: &str) -> f64 {
    scrape
        .value(
            "failoverd_dns_updates_total",
            &[("service", service), ("result", result)],
        )
        .unwrap_or(0.0)
}

/// `failoverd_dns_published{service, backend}`.
fn published_gauge(scrape: &Scrape, service: &str, backend: &str) -> Option<f64> {
    scrape.value(
        "failoverd_dns_published",
        &[("service", service), ("backend", backend)],
    )
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

// ---------------------------------------------------------------------------
// Start-up, failover and failback.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_holds_the_primary_at_start_with_the_configured_ttl() {
    within(60, async {
        let named = Named::start("hmac-sha256").await;
        let primary = backend_on("primary", "127.0.0.11").await;
        let backup = backend_on("backup", "127.0.0.12").await;
        let name = record("start");
        let before = unix_now();
        let service = svc(&[("primary", primary.addr), ("backup", backup.addr)])
            .merge(&quick_checks())
            .dns(dns(&named, "start", "7s"));
        let failoverd = start("dns-start", service).await;
        let seen = Seen::default();
        let (ttl, took) = wait_record(&named, &name, ip("127.0.0.11"), LIMIT, &seen).await;
        println!(
            "record {name} published {} ms after failoverd was ready",
            ms(took)
        );
        assert_eq!(ttl, 7, "the TTL of the record is `ttl`");
        assert_eq!(
            answered_by(failoverd.listen()).await,
            "primary",
            "the proxy and the record agree"
        );

        let status = failoverd.status_json().await;
        let dns = &status["services"][0]["dns"];
        assert_eq!(dns["name"], name.as_str(), "{status}");
        assert_eq!(dns["published"], "127.0.0.11", "{status}");
        assert!(dns["error"].is_null(), "{status}");
        let at = dns["at"].as_f64().expect("dns.at is a number");
        assert!(
            at >= before - 1.0 && at <= unix_now() + 1.0,
            "dns.at {at} is not the time of the update"
        );

        let scrape = failoverd.metrics().await;
        assert_eq!(updates(&scrape, "svc", "ok"), 1.0, "{}", scrape.text);
        assert_eq!(updates(&scrape, "svc", "error"), 0.0, "{}", scrape.text);
        assert_eq!(published_gauge(&scrape, "svc", "primary"), Some(1.0));
        assert_eq!(published_gauge(&scrape, "svc", "backup"), Some(0.0));
        assert_eq!(
            seen.list().last().map(String::as_str),
            Some("A 127.0.0.11 ttl 7")
        );
    })
    .await;
}

/// The primary is killed (connects refused) [`TIMING_RUNS`] times under
/// SPEC.md's default checks: each time the record holds the backup's
/// `publish` address within the detection bound plus one second, and the
/// primary's again once it is back. The median goes into the README.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_primary_moves_the_record_to_the_backup_and_back() {
    within(120, async {
        let named = Named::start("hmac-sha256").await;
        let mut primary = backend_on("primary", "127.0.0.11").await;
        let backup = backend_on("backup", "127.0.0.12").await;
        let name = record("db");
        let ttl = "30s";
        let service = svc(&[("primary", primary.addr)])
            .backend_table(published_as("backup", backup.addr, "192.0.2.12"))
            .merge(&default_checks())
            .dns(dns(&named, "db", ttl));
        let failoverd = start("dns-failover", service).await;
        let seen = Seen::default();
        wait_record(&named, &name, ip("127.0.0.11"), LIMIT, &seen).await;

        let failover_limit = detection_bound() + Duration::from_secs(1);
        let failback_limit = recovery_bound() + Duration::from_secs(1);
        let (mut failovers, mut failbacks) = (Vec::new(), Vec::new());
        for run in 1..=TIMING_RUNS {
            primary.stop();
            let (got_ttl, took) =
                wait_record(&named, &name, ip("192.0.2.12"), failover_limit, &seen).await;
            assert_eq!(got_ttl, 30);
            failovers.push(took);
            assert_eq!(answered_by(failoverd.listen()).await, "backup");

            primary.restart().await;
            let (_, back) =
                wait_record(&named, &name, ip("127.0.0.11"), failback_limit, &seen).await;
            failbacks.push(back);
            println!(
                "run {run}: primary killed -> backup's address at the server in {} ms; \
                 primary back -> its address in {} ms",
                ms(took),
                ms(back)
            );
        }
        let (worst, best) = (
            failovers.iter().max().copied().unwrap_or_default(),
            failovers.iter().min().copied().unwrap_or_default(),
        );
        println!(
            "DNS failover, {TIMING_RUNS} runs, check_interval 500ms, fall {FALL}, ttl {ttl}: \
             kill -> new answer median {} ms (min {}, max {}), detection bound {} ms; \
             failback median {} ms",
            ms(median(failovers)),
            ms(best),
            ms(worst),
            ms(detection_bound()),
            ms(median(failbacks)),
        );

        // The record went straight from one address to the other: never
        // empty, never both, never anything else.
        let mut want = vec!["A 127.0.0.11 ttl 30".to_string()];
        for _ in 0..TIMING_RUNS {
            want.push("A 192.0.2.12 ttl 30".to_string());
            want.push("A 127.0.0.11 ttl 30".to_string());
        }
        assert_eq!(seen.list(), want);
        let scrape = failoverd.metrics().await;
        let ok = updates(&scrape, "svc", "ok");
        assert_eq!(ok, (1 + 2 * TIMING_RUNS) as f64, "{}", scrape.text);
        assert_eq!(updates(&scrape, "svc", "error"), 0.0);
        assert_eq!(published_gauge(&scrape, "svc", "primary"), Some(1.0));
        assert_eq!(published_gauge(&scrape, "svc", "backup"), Some(0.0));
    })
    .await;
}

/// The monitoring-only DNS failover: no `listen`, three backends, the
/// first two down. The third is published, without passing through the
/// dead ones; as the second and then the first come back, the record
/// walks back up the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_only_service_publishes_the_first_healthy_backend_in_order() {
    within(60, async {
        let named = Named::start("hmac-sha256").await;
        let mut first = backend_on("first", "127.0.0.21").await;
        let mut second = backend_on("second", "127.0.0.22").await;
        let third = backend_on("third", "127.0.0.23").await;
        first.stop();
        second.stop();
        let name = record("www");
        let failoverd = Failoverd::start("dns-only", |layout| {
            layout
                .config(
                    Service::new("www")
                        .no_listen()
                        .merge(&quick_checks())
                        .backends(&[
                            ("first", first.addr),
                            ("second", second.addr),
                            ("third", third.addr),
                        ])
                        .dns(dns(&named, "www", "10s")),
                )
                .to_string()
        })
        .await;
        let seen = Seen::default();
        wait_record(&named, &name, ip("127.0.0.23"), LIMIT, &seen).await;
        let status = failoverd.status_json().await;
        let service = &status["services"][0];
        assert!(service["listen"].is_null(), "{status}");
        assert_eq!(service["active"], "third", "{status}");
        assert_eq!(service["dns"]["published"], "127.0.0.23", "{status}");

        second.restart().await;
        wait_record(&named, &name, ip("127.0.0.22"), LIMIT, &seen).await;
        first.restart().await;
        wait_record(&named, &name, ip("127.0.0.21"), LIMIT, &seen).await;
        // Empty until the dead ones are found (no backend is published
        // before it passed a check), then straight to the third.
        let seen: Vec<String> = seen
            .list()
            .into_iter()
            .skip_while(|line| line == "nothing")
            .collect();
        assert_eq!(
            seen,
            [
                "A 127.0.0.23 ttl 10",
                "A 127.0.0.22 ttl 10",
                "A 127.0.0.21 ttl 10"
            ],
            "the record held a backend that was down, or skipped one"
        );
        let scrape = failoverd.metrics().await;
        assert_eq!(published_gauge(&scrape, "www", "first"), Some(1.0));
        assert_eq!(published_gauge(&scrape, "www", "third"), Some(0.0));
        assert_eq!(updates(&scrape, "www", "ok"), 3.0, "{}", scrape.text);
    })
    .await;
}

// ---------------------------------------------------------------------------
// The server: late, or refusing the key.

/// `named` is down when failoverd starts and comes up 3 s later: the
/// attempts fail (counted, `dns.error` says why) and the record is
/// published at the next back-off step, at most 4 s after the server
/// answers (the steps are 1 s, 2 s, 4 s: the one running at 3 s is 4 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_starts_late_is_published_within_the_back_off() {
    within(60, async {
        let mut named = Named::prepare("hmac-sha256");
        let primary = backend_on("primary", "127.0.0.11").await;
        let name = record("late");
        let started = Instant::now();
        let service = svc(&[("primary", primary.addr)])
            .merge(&quick_checks())
            .dns(dns(&named, "late", "30s"));
        let failoverd = start("dns-late", service).await;
        tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
        let status = failoverd.status_json().await;
        let dns = &status["services"][0]["dns"];
        assert!(dns["published"].is_null(), "{status}");
        let error = dns["error"].as_str().unwrap_or_default().to_string();
        assert!(
            error.contains(&named.addr().to_string()) && error.contains("refused"),
            "dns.error should name the server and say it refused: {status}"
        );
        let errors = updates(&failoverd.metrics().await, "svc", "error");
        assert!(
            (2.0..=3.0).contains(&errors),
            "attempts at 0 s, 1 s and 3 s: {errors} errors counted in 3 s"
        );

        named.run().await.expect("named starts");
        let up = started.elapsed();
        let seen = Seen::default();
        let (_, after) = wait_record(&named, &name, ip("127.0.0.11"), LIMIT, &seen).await;
        println!(
            "named answered {} ms after failoverd started; the record was published {} ms later",
            ms(up),
            ms(after)
        );
        assert!(
            after <= Duration::from_secs(5),
            "published {} ms after the server came up: beyond the 4 s back-off step",
            ms(after)
        );
        let status = failoverd.status_json().await;
        assert!(status["services"][0]["dns"]["error"].is_null(), "{status}");
        assert_eq!(updates(&failoverd.metrics().await, "svc", "ok"), 1.0);
    })
    .await;
}

/// A key file whose secret the server does not know: every update is
/// refused (BADSIG), counted as an error, `dns.error` says to check the
/// secret, the record keeps what it held, and failoverd goes on proxying
/// and retrying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_tsig_secret_is_refused_counted_and_changes_nothing() {
    within(60, async {
        let named = Named::start("hmac-sha256").await;
        let primary = backend_on("primary", "127.0.0.11").await;
        let name = record("keyed");
        // What the record holds before: written with the right key.
        let right = failoverd::config::load_key_file(&named.key_file()).expect("the server's key");
        let target = failoverd::dns::Target {
            server: named.addr(),
            zone: ZONE.to_string(),
            name: name.clone(),
            ttl: Duration::from_secs(60),
        };
        failoverd::dns::update(&target, &right, ip("192.0.2.99"), LIMIT)
            .await
            .expect("the record is set with the right key");
        // Same key name and algorithm, another secret.
        let wrong = named.path("wrong.key");
        std::fs::write(
            &wrong,
            common::bind::tsig_keygen("hmac-sha256", named.key_name()),
        )
        .expect("write the wrong key");

        let service = svc(&[("primary", primary.addr)])
            .merge(&quick_checks())
            .dns(dns(&named, "keyed", "30s").set("tsig_key", &wrong));
        let mut failoverd = start("dns-badkey", service).await;
        // Attempts at 0 s, 1 s, 3 s: the retries go on.
        let scrape = failoverd
            .metrics_until(LIMIT, "two refused updates", |s| {
                updates(s, "svc", "error") >= 2.0
            })
            .await;
        assert_eq!(updates(&scrape, "svc", "ok"), 0.0, "{}", scrape.text);
        assert_eq!(published_gauge(&scrape, "svc", "primary"), Some(0.0));

        let status = failoverd.status_json().await;
        let dns = &status["services"][0]["dns"];
        assert!(dns["published"].is_null(), "{status}");
        let error = dns["error"].as_str().unwrap_or_default();
        for want in ["BADSIG", "secret", named.key_name()] {
            assert!(error.contains(want), "dns.error lacks {want:?}: {error}");
        }
        let (_, line) = records(&named, &name).await.expect("dig answers");
        assert_eq!(
            line, "A 192.0.2.99 ttl 60",
            "the refused updates changed the record"
        );

        failoverd.assert_alive();
        assert_eq!(answered_by(failoverd.listen()).await, "primary");
        let log = failoverd.log();
        assert!(log.contains("dns update failed"), "{log}");
    })
    .await;
}

/// The README's BIND setup: `update-policy` grants the key its one name,
/// A and AAAA only. failoverd's update (delete both RRsets, add one
/// record) is within it; a service publishing another name with the same
/// key is refused, and `dns.error` points at the policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_update_policy_admits_the_one_record_and_refuses_others() {
    within(60, async {
        let named = Named::start_with("hmac-sha256", |key| {
            format!(
                "update-policy {{ grant {key} name {} A AAAA; }};",
                record("db")
            )
        })
        .await;
        let primary = backend_on("primary", "127.0.0.11").await;
        let failoverd = Failoverd::start("dns-policy", |layout| {
            let granted = layout
                .service()
                .merge(&quick_checks())
                .backend("primary", primary.addr)
                .dns(dns(&named, "db", "30s"));
            let other = Service::new("other")
                .no_listen()
                .merge(&quick_checks())
                .backend("primary", primary.addr)
                .dns(dns(&named, "other", "30s"));
            layout.config(granted).service(other).to_string()
        })
        .await;
        let seen = Seen::default();
        wait_record(&named, &record("db"), ip("127.0.0.11"), LIMIT, &seen).await;
        failoverd
            .metrics_until(LIMIT, "the other name refused", |s| {
                updates(s, "other", "error") >= 1.0
            })
            .await;
        let status = failoverd.status_json().await;
        let error = status["services"][1]["dns"]["error"]
            .as_str()
            .unwrap_or_default();
        assert!(
            error.contains("REFUSED") && error.contains("update-policy"),
            "dns.error of the refused name: {status}"
        );
        let (_, line) = records(&named, &record("other"))
            .await
            .expect("dig answers");
        assert_eq!(line, "nothing");
    })
    .await;
}

// ---------------------------------------------------------------------------
// IPv6, and a reload that moves the record.

/// An IPv6 backend becomes active: the record turns into an AAAA with its
/// address and the A RRset goes; back on the IPv4 primary, the reverse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_backend_publishes_aaaa_and_the_a_rrset_goes() {
    within(60, async {
        let named = Named::start("hmac-sha256").await;
        let mut primary = backend_on("primary", "127.0.0.11").await;
        let backup = backend_on("backup6", "[::1]").await;
        let name = record("dual");
        let service = svc(&[("primary", primary.addr), ("backup6", backup.addr)])
            .merge(&quick_checks())
            .dns(dns(&named, "dual", "20s"));
        let failoverd = start("dns-v6", service).await;
        let seen = Seen::default();
        wait_record(&named, &name, ip("127.0.0.11"), LIMIT, &seen).await;
        primary.stop();
        let (ttl, _) = wait_record(&named, &name, ip("::1"), LIMIT, &seen).await;
        assert_eq!(ttl, 20);
        assert_eq!(answered_by(failoverd.listen()).await, "backup6");
        let status = failoverd.status_json().await;
        assert_eq!(status["services"][0]["dns"]["published"], "::1", "{status}");
        primary.restart().await;
        wait_record(&named, &name, ip("127.0.0.11"), LIMIT, &seen).await;
        assert_eq!(
            seen.list(),
            [
                "A 127.0.0.11 ttl 20",
                "AAAA ::1 ttl 20",
                "A 127.0.0.11 ttl 20"
            ]
        );
    })
    .await;
}

/// `ctl reload` with a changed `[service.dns]` publishes to the new
/// target: a new name, then a new TTL, then another server; a changed
/// `publish` of the active backend republishes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_dns_section_republishes_to_the_new_target() {
    within(60, async {
        let named = Named::start("hmac-sha256").await;
        let other = Named::start("hmac-sha512").await;
        let primary = backend_on("primary", "127.0.0.11").await;
        let backup = backend_on("backup", "127.0.0.12").await;
        let config = |layout: &Layout, dns: Table, publish: Option<&str>| {
            let mut first = Table::new()
                .set("name", "primary")
                .set("address", primary.addr.to_string());
            if let Some(publish) = publish {
                first = first.set("publish", publish);
            }
            layout
                .config(
                    layout
                        .service()
                        .merge(&quick_checks())
                        .backend_table(first)
                        .backend("backup", backup.addr)
                        .dns(dns),
                )
                .to_string()
        };
        let failoverd = Failoverd::start("dns-reload", |layout| {
            config(layout, dns(&named, "old", "30s"), None)
        })
        .await;
        let seen = Seen::default();
        wait_record(&named, &record("old"), ip("127.0.0.11"), LIMIT, &seen).await;

        // (what changes, the server, the record, its ttl, the primary's publish)
        let steps = [
            ("a new name", &named, "new", "30s", None),
            ("a new ttl", &named, "new", "45s", None),
            ("a new server and key", &other, "moved", "45s", None),
            (
                "a new publish of the active backend",
                &other,
                "moved",
                "45s",
                Some("192.0.2.50"),
            ),
        ];
        for (what, server, label, ttl, publish) in steps {
            let out = failoverd
                .reload(&config(
                    failoverd.layout(),
                    dns(server, label, ttl),
                    publish,
                ))
                .await;
            assert_eq!(out.code, Some(0), "reload with {what}: {out:?}");
            let address = publish.unwrap_or("127.0.0.11");
            let seen = Seen::default();
            let (got, took) = wait_record(server, &record(label), ip(address), LIMIT, &seen).await;
            assert_eq!(
                format!("{got}s"),
                ttl,
                "the record's TTL after a reload with {what}"
            );
            println!("reload with {what}: republished in {} ms", ms(took));
            let status = failoverd.status_json().await;
            let dns = &status["services"][0]["dns"];
            assert_eq!(dns["name"], record(label).as_str(), "{status}");
            assert_eq!(dns["published"], address, "{status}");
        }
        // No switch happened: the proxy stayed on the primary throughout.
        assert_eq!(answered_by(failoverd.listen()).await, "primary");
        let scrape = failoverd.metrics().await;
        assert_eq!(updates(&scrape, "svc", "error"), 0.0, "{}", scrape.text);
        assert_eq!(
            scrape.sum("failoverd_switches_total", &[("service", "svc")]),
            0.0
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// Validation through `failoverd check`.

/// One bad config for `failoverd check`: what is changed, and the text
/// the error must contain.
struct Bad {
    what: &'static str,
    config: String,
    names: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_rejects_each_bad_dns_setting_with_exit_2_naming_the_key() {
    within(60, async {
        let dir = TempDir::new("dns-check");
        let key = dir.path("update.key");
        std::fs::write(
            &key,
            common::bind::tsig_keygen("hmac-sha256", "failoverd-update"),
        )
        .expect("write key");
        let md5 = dir.path("md5.key");
        std::fs::write(
            &md5,
            "key \"old\" {\n\talgorithm hmac-md5;\n\tsecret \"c2VjcmV0c2VjcmV0\";\n};\n",
        )
        .expect("write md5 key");
        let garbage = dir.path("garbage.key");
        std::fs::write(&garbage, "this is not a key file\n").expect("write garbage");
        let good_dns = || {
            Table::new()
                .set("server", "127.0.0.1:53")
                .set("zone", "example.com.")
                .set("name", "db.example.com.")
                .set("ttl", "30s")
                .set("tsig_key", &key)
        };
        let service = |dns: Option<Table>| {
            let service = Service::new("svc")
                .listen("127.0.0.1:1")
                .backend("primary", "127.0.0.1:2");
            match dns {
                Some(dns) => service.dns(dns),
                None => service,
            }
        };
        let with_dns = |dns: Table| service(Some(dns)).toml();
        let hostname_backend = |publish: Option<&str>| {
            let mut backend = Table::new()
                .set("name", "byname")
                .set("address", "localhost:5432");
            if let Some(p) = publish {
                backend = backend.set("publish", p);
            }
            service(Some(good_dns())).backend_table(backend).toml()
        };
        let path = |p: &std::path::Path| Some(Value::from(p));
        let text = |t: &str| Some(Value::from(t));
        // (what is wrong, the `[service.dns]` key, its value or None to
        // leave it out, what the error must name)
        let dns_cases = [
            ("server missing", "server", None, "dns.server"),
            (
                "server a hostname",
                "server",
                text("ns1.example.com:53"),
                "dns.server",
            ),
            (
                "server without a port",
                "server",
                text("127.0.0.1"),
                "dns.server",
            ),
            ("server port 0", "server", text("127.0.0.1:0"), "dns.server"),
            ("zone missing", "zone", None, "dns.zone"),
            ("zone not absolute", "zone", text("example.com"), "dns.zone"),
            (
                "zone not a DNS name",
                "zone",
                text("exa mple.com."),
                "dns.zone",
            ),
            ("name missing", "name", None, "dns.name"),
            (
                "name not absolute",
                "name",
                text("db.example.com"),
                "dns.name",
            ),
            (
                "name outside the zone",
                "name",
                text("db.example.org."),
                "dns.name",
            ),
            (
                "name only ending like the zone",
                "name",
                text("dbexample.com."),
                "dns.name",
            ),
            ("ttl missing", "ttl", None, "dns.ttl"),
            ("ttl below 1s", "ttl", text("500ms"), "dns.ttl"),
            ("ttl without a unit", "ttl", text("30"), "dns.ttl"),
            ("ttl an integer", "ttl", Some(Value::raw("30")), "ttl"),
            ("tsig_key missing", "tsig_key", None, "dns.tsig_key"),
            (
                "tsig_key no such file",
                "tsig_key",
                path(&dir.path("absent.key")),
                "dns.tsig_key",
            ),
            (
                "tsig_key not a key file",
                "tsig_key",
                path(&garbage),
                "dns.tsig_key",
            ),
            (
                "tsig_key with an unsupported algorithm",
                "tsig_key",
                path(&md5),
                "dns.tsig_key",
            ),
            (
                "tsig_key a directory",
                "tsig_key",
                path(&dir.0),
                "dns.tsig_key",
            ),
            ("an unknown key", "port", Some(Value::from(53)), "port"),
        ];
        let mut cases: Vec<Bad> = dns_cases
            .into_iter()
            .map(|(what, key, value, names)| {
                let dns = match value {
                    Some(value) => good_dns().set(key, value),
                    None => good_dns().unset(key),
                };
                Bad {
                    what,
                    config: with_dns(dns),
                    names,
                }
            })
            .collect();
        cases.extend([
            Bad {
                what: "no listen and no [service.dns]",
                config: Service::new("svc")
                    .no_listen()
                    .backend("primary", "127.0.0.1:2")
                    .toml(),
                names: "\"listen\"",
            },
            Bad {
                what: "a hostname backend without publish",
                config: hostname_backend(None),
                names: "publish",
            },
            Bad {
                what: "publish not an IP address",
                config: hostname_backend(Some("db.example.com")),
                names: "publish",
            },
        ]);
        assert!(cases.len() > 20, "the table is not empty");
        let config = dir.path("failoverd.toml");
        let config_arg = config.to_str().expect("utf-8 path");
        let mut wrong = Vec::new();
        for case in &cases {
            std::fs::write(&config, &case.config).expect("write config");
            let out = run_failoverd(&["check", "-c", config_arg], LIMIT).await;
            let named = out.stderr.contains(case.names) && out.stderr.contains(config_arg);
            if out.code != Some(2) || !named {
                wrong.push(format!(
                    "{}: exit {:?}, want 2 naming {:?}; stderr: {}",
                    case.what,
                    out.code,
                    case.names,
                    out.stderr.trim()
                ));
            }
        }
        // The same files with good values pass, so each case fails for its
        // own reason.
        for (what, text) in [
            ("the good [service.dns]", with_dns(good_dns())),
            (
                "a hostname backend with publish",
                hostname_backend(Some("192.0.2.7")),
            ),
            (
                "a DNS-only service",
                Service::new("svc")
                    .no_listen()
                    .backend("primary", "127.0.0.1:2")
                    .dns(good_dns())
                    .toml(),
            ),
        ] {
            std::fs::write(&config, &text).expect("write config");
            let out = run_failoverd(&["check", "-c", config_arg], LIMIT).await;
            if out.code != Some(0) {
                wrong.push(format!("{what}: exit {:?}, want 0; {out:?}", out.code));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        println!(
            "failoverd check: {} bad [service.dns] configs rejected with exit 2",
            cases.len()
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// Cluster mode.

/// Two cluster members with the same `[service.dns]`: the record follows
/// the agreed backend, and only the decider sends updates (the other
/// member counts none, and shows nothing published).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cluster_mode_only_the_decider_publishes() {
    within(90, async {
        let named = Named::start("hmac-sha256").await;
        let etcd = common::etcd::Etcd::start().await;
        let mut primary = backend_on("primary", "127.0.0.11").await;
        let backup = backend_on("backup", "127.0.0.12").await;
        let name = record("cluster");
        let service = svc(&[("primary", primary.addr), ("backup", backup.addr)])
            .merge(&quick_checks())
            .set("hold_timeout", "5s")
            .dns(dns(&named, "cluster", "5s"));
        let mut members = Vec::new();
        for member in ["px1", "px2"] {
            members.push(
                Failoverd::start(&format!("dns-{member}"), |layout| {
                    layout
                        .config(service.clone().listen(layout.listen))
                        .cluster(etcd.cluster_table(member, "/dns-cluster"))
                        .to_string()
                })
                .await,
            );
        }
        let seen = Seen::default();
        wait_record(&named, &name, ip("127.0.0.11"), LIMIT, &seen).await;
        let decider = eventually(LIMIT, "a decider", || async {
            let status = members[0].status_json().await;
            status["cluster"]["decider"]
                .as_str()
                .map(str::to_string)
                .ok_or(status)
        })
        .await;
        primary.stop();
        let (_, took) = wait_record(&named, &name, ip("127.0.0.12"), LIMIT, &seen).await;
        println!(
            "cluster: record on the backup {} ms after the primary stopped",
            ms(took)
        );
        for (member, proxy) in ["px1", "px2"].iter().zip(&members) {
            let scrape = proxy.metrics().await;
            let ok = updates(&scrape, "svc", "ok");
            let status = proxy.status_json().await;
            if *member == decider {
                assert!(ok >= 2.0, "{member} (decider) sent {ok} updates");
                assert_eq!(status["services"][0]["dns"]["published"], "127.0.0.12");
            } else {
                assert_eq!(ok, 0.0, "{member} is not the decider but published");
                assert!(
                    status["services"][0]["dns"]["published"].is_null(),
                    "{status}"
                );
            }
        }
        let history: Vec<String> = seen
            .list()
            .into_iter()
            .skip_while(|line| line == "nothing")
            .collect();
        assert_eq!(
            history,
            vec!["A 127.0.0.11 ttl 5", "A 127.0.0.12 ttl 5"],
            "the record went straight from the primary to the backup"
        );
    })
    .await;
}
