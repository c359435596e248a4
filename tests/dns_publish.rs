//! DNS failover against a real BIND 9: records written by failoverd's
//! signed RFC 2136 updates and read back with `dig`.

mod common;
use common::bind;

use std::future::Future;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bind::{Answer, Named, ZONE};
use failoverd::config::{self, TsigKey};
use failoverd::dns::{
    self, DnsStatus, Publish, PublisherConfig, PublisherHandle, Target, UpdateError,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;

const TIMEOUT: Duration = Duration::from_secs(2);

async fn within<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .expect("test timed out")
}

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// One Prometheus recorder for the whole test binary; tests tell their
/// series apart by the `service` label.
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("install the metrics recorder")
    })
}

/// The value of one series, e.g. `failoverd_dns_updates_total{result="ok",service="s"}`.
fn metric(name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = recorder().render();
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?;
        let ok = (rest.starts_with('{') || rest.is_empty())
            && labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        if ok { value.parse().ok() } else { None }
    })
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn target(named: &Named, label: &str, ttl_secs: u64) -> Target {
    Target {
        server: named.addr(),
        zone: ZONE.to_string(),
        name: format!("{label}.{ZONE}"),
        ttl: Duration::from_secs(ttl_secs),
    }
}

fn key(named: &Named) -> TsigKey {
    config::load_key_file(&named.key_file()).expect("load the tsig-keygen key file")
}

fn answer(ttl: u32, addresses: &[&str]) -> Answer {
    Answer {
        ttl: Some(ttl),
        addresses: addresses.iter().map(|a| ip(a)).collect(),
    }
}

fn nothing() -> Answer {
    Answer {
        ttl: None,
        addresses: vec![],
    }
}

#[tokio::test]
async fn publishes_an_a_record_with_the_configured_ttl() {
    within(30, async {
        let named = Named::start("hmac-sha256").await;
        let target = target(&named, "db", 42);
        assert_eq!(named.lookup(&target.name, "A").await, nothing());
        dns::update(&target, &key(&named), ip("192.0.2.10"), TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", named.log()));
        assert_eq!(
            named.lookup(&target.name, "A").await,
            answer(42, &["192.0.2.10"])
        );

        // A second update replaces the RRset, it does not add to it.
        dns::update(&target, &key(&named), ip("192.0.2.11"), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(
            named.lookup(&target.name, "A").await,
            answer(42, &["192.0.2.11"])
        );
    })
    .await;
}

#[tokio::test]
async fn an_ipv6_address_is_published_as_aaaa_and_removes_the_a_rrset() {
    within(30, async {
        let named = Named::start("hmac-sha256").await;
        let target = target(&named, "db6", 30);
        let key = key(&named);
        dns::update(&target, &key, ip("192.0.2.20"), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(
            named.lookup(&target.name, "A").await,
            answer(30, &["192.0.2.20"])
        );

        dns::update(&target, &key, ip("2001:db8::20"), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(
            named.lookup(&target.name, "AAAA").await,
            answer(30, &["2001:db8::20"])
        );
        assert_eq!(
            named.lookup(&target.name, "A").await,
            nothing(),
            "stale A record left"
        );

        dns::update(&target, &key, ip("192.0.2.21"), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(
            named.lookup(&target.name, "A").await,
            answer(30, &["192.0.2.21"])
        );
        assert_eq!(
            named.lookup(&target.name, "AAAA").await,
            nothing(),
            "stale AAAA record left"
        );
    })
    .await;
}

#[tokio::test]
async fn a_wrong_secret_or_unknown_key_is_refused_and_changes_nothing() {
    within(30, async {
        let named = Named::start("hmac-sha256").await;
        let target = target(&named, "db", 60);
        dns::update(&target, &key(&named), ip("192.0.2.30"), TIMEOUT)
            .await
            .unwrap();

        // Same key name, another secret.
        let wrong = config::parse_key(&bind::tsig_keygen("hmac-sha256", named.key_name())).unwrap();
        let err = dns::update(&target, &wrong, ip("192.0.2.31"), TIMEOUT)
            .await
            .expect_err("the server must refuse a wrong secret");
        println!("wrong secret: {err}");
        let text = err.to_string();
        assert!(matches!(err, UpdateError::Refused { .. }), "{err:?}");
        assert!(text.contains("NOTAUTH/BADSIG"), "{text}");
        assert!(
            text.contains("failoverd-update") && text.contains("check the secret"),
            "{text}"
        );
        assert!(text.contains(&named.addr().to_string()), "{text}");

        // A key the server does not know.
        let unknown = config::parse_key(&bind::tsig_keygen("hmac-sha256", "nobody")).unwrap();
        let err = dns::update(&target, &unknown, ip("192.0.2.32"), TIMEOUT)
            .await
            .expect_err("the server must refuse an unknown key");
        println!("unknown key: {err}");
        let text = err.to_string();
        assert!(
            text.contains("NOTAUTH/BADKEY") && text.contains("\"nobody\""),
            "{text}"
        );

        // A zone the server does not serve.
        let mut elsewhere = target.clone();
        elsewhere.zone = "example.org.".to_string();
        elsewhere.name = "db.example.org.".to_string();
        let err = dns::update(&elsewhere, &key(&named), ip("192.0.2.33"), TIMEOUT)
            .await
            .expect_err("the server must refuse a zone it does not serve");
        println!("other zone: {err}");
        assert!(matches!(err, UpdateError::Refused { .. }), "{err:?}");

        assert_eq!(
            named.lookup(&target.name, "A").await,
            answer(60, &["192.0.2.30"])
        );
    })
    .await;
}

#[tokio::test]
async fn hmac_sha384_and_sha512_keys_work() {
    within(60, async {
        for algorithm in ["hmac-sha384", "hmac-sha512"] {
            let named = Named::start(algorithm).await;
            let key = key(&named);
            assert_eq!(key.algorithm().as_str(), algorithm);
            let target = target(&named, "db", 30);
            dns::update(&target, &key, ip("198.51.100.5"), TIMEOUT)
                .await
                .unwrap_or_else(|e| panic!("{algorithm}: {e}"));
            assert_eq!(
                named.lookup(&target.name, "A").await,
                answer(30, &["198.51.100.5"])
            );
        }
    })
    .await;
}

#[tokio::test]
async fn an_update_without_a_server_fails_within_its_timeout() {
    within(30, async {
        let key = config::parse_key(&bind::tsig_keygen("hmac-sha256", "k")).unwrap();
        // Nothing listens: refused at once.
        let closed = Target {
            server: (std::net::Ipv4Addr::LOCALHOST, bind::free_port()).into(),
            zone: ZONE.to_string(),
            name: format!("db.{ZONE}"),
            ttl: Duration::from_secs(30),
        };
        let err = dns::update(&closed, &key, ip("192.0.2.1"), TIMEOUT)
            .await
            .unwrap_err();
        println!("closed port: {err}");
        assert!(err.to_string().contains("connection refused"), "{err}");

        // A socket that never answers: the attempt ends at the timeout.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut blackhole = closed.clone();
        blackhole.server = silent.local_addr().unwrap();
        let started = Instant::now();
        let err = dns::update(
            &blackhole,
            &key,
            ip("192.0.2.1"),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        let took = started.elapsed();
        println!("silent server: {err} (after {took:?})");
        assert!(matches!(err, UpdateError::Timeout { .. }), "{err:?}");
        assert!(err.to_string().contains("within 300ms"), "{err}");
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(1),
            "{took:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn measures_update_latency_on_loopback() {
    within(60, async {
        let named = Named::start("hmac-sha256").await;
        let target = target(&named, "lat", 30);
        let key = key(&named);
        let mut samples = Vec::new();
        for i in 0..20u8 {
            let started = Instant::now();
            dns::update(&target, &key, IpAddr::from([192, 0, 2, 100 + i]), TIMEOUT)
                .await
                .unwrap();
            samples.push(started.elapsed());
        }
        samples.sort();
        let median = samples[samples.len() / 2];
        println!(
            "update latency over 20 updates on loopback: median {median:?}, min {:?}, max {:?}",
            samples[0],
            samples[samples.len() - 1]
        );
        assert_eq!(
            named.lookup(&target.name, "A").await,
            answer(30, &["192.0.2.119"])
        );
        assert!(median < Duration::from_millis(500), "median {median:?}");
    })
    .await;
}

fn config(named: &Named, service: &str, backends: &[&str]) -> PublisherConfig {
    PublisherConfig {
        service: service.to_string(),
        target: target(named, service, 30),
        key: key(named),
        backends: backends.iter().map(|b| b.to_string()).collect(),
        timeout: TIMEOUT,
    }
}

fn publish(backend: &str, address: &str) -> Option<Publish> {
    Some(Publish {
        backend: backend.to_string(),
        address: ip(address),
    })
}

/// Wait until the publisher reports `address` as published.
async fn published(handle: &PublisherHandle, address: &str) -> DnsStatus {
    let mut status = handle.watch_status();
    let want = Some(ip(address));
    status
        .wait_for(|s| s.published == want)
        .await
        .expect("publisher alive")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_ends_at_the_latest_of_quick_changes() {
    init_logging();
    recorder();
    within(30, async {
        let named = Named::start("hmac-sha256").await;
        let (tx, rx) = watch::channel(publish("a", "192.0.2.1"));
        let handle = dns::spawn_publisher(config(&named, "quick", &["a", "b", "c"]), rx);
        tx.send(publish("b", "192.0.2.2")).unwrap();
        tx.send(publish("c", "192.0.2.3")).unwrap();
        let status = published(&handle, "192.0.2.3").await;
        assert_eq!(status.backend.as_deref(), Some("c"));
        assert_eq!(status.error, None);
        // Give a stale update every chance to land after the newest one.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            named.lookup("quick.failoverd.test.", "A").await,
            answer(30, &["192.0.2.3"])
        );
        assert_eq!(handle.status().published, Some(ip("192.0.2.3")));

        let gauge = |b| {
            metric(
                failoverd::metrics::DNS_PUBLISHED,
                &[("service", "quick"), ("backend", b)],
            )
        };
        assert_eq!(
            (gauge("a"), gauge("b"), gauge("c")),
            (Some(0.0), Some(0.0), Some(1.0))
        );
        let ok = metric(
            failoverd::metrics::DNS_UPDATES_TOTAL,
            &[("service", "quick"), ("result", "ok")],
        );
        assert!(ok >= Some(1.0), "{ok:?}");

        // Many changes in a burst, then a switch to an IPv6 backend.
        for i in 0..50u8 {
            tx.send(Some(Publish {
                backend: "b".to_string(),
                address: IpAddr::from([192, 0, 2, 10 + i]),
            }))
            .unwrap();
            tokio::task::yield_now().await;
        }
        tx.send(publish("a", "2001:db8::a")).unwrap();
        published(&handle, "2001:db8::a").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            named.lookup("quick.failoverd.test.", "AAAA").await,
            answer(30, &["2001:db8::a"])
        );
        assert_eq!(named.lookup("quick.failoverd.test.", "A").await, nothing());
        assert_eq!(
            (gauge("a"), gauge("b"), gauge("c")),
            (Some(1.0), Some(0.0), Some(0.0))
        );

        let json = serde_json::to_value(handle.status()).unwrap();
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["at", "error", "name", "published"]);
        assert_eq!(json["name"], "quick.failoverd.test.");
        assert_eq!(json["published"], "2001:db8::a");
        assert!(json["at"].as_f64().unwrap() > 1.7e9, "{json}");
        assert!(json["error"].is_null(), "{json}");
        handle.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_retries_with_back_off_until_the_server_starts() {
    init_logging();
    recorder();
    within(60, async {
        let mut named = Named::prepare("hmac-sha256");
        let (_tx, rx) = watch::channel(publish("primary", "203.0.113.10"));
        let spawned = Instant::now();
        let handle = dns::spawn_publisher(config(&named, "late", &["primary", "standby"]), rx);

        tokio::time::sleep(Duration::from_secs(3)).await;
        let status = handle.status();
        assert_eq!(status.published, None);
        let error = status.error.expect("the failed attempts are reported");
        assert!(error.contains("connection refused"), "{error}");
        let errors = metric(failoverd::metrics::DNS_UPDATES_TOTAL, &[("service", "late"), ("result", "error")]);
        // Attempts at 0 s, 1 s and 3 s (back-off 1 s, 2 s): two or three by now.
        assert!(errors >= Some(2.0) && errors <= Some(3.0), "{errors:?}");
        assert_eq!(
            metric(failoverd::metrics::DNS_PUBLISHED, &[("service", "late"), ("backend", "primary")]),
            Some(0.0)
        );

        named.run().await.unwrap();
        let up = spawned.elapsed();
        let status = published(&handle, "203.0.113.10").await;
        let done = spawned.elapsed();
        println!(
            "named up {:.2}s after the publisher started; record published at {:.2}s ({:.2}s after the server came up)",
            up.as_secs_f64(),
            done.as_secs_f64(),
            (done - up).as_secs_f64()
        );
        // The next attempt after 3 s is at 7 s (back-off 4 s): no later.
        assert!(done < Duration::from_millis(7_800), "{done:?}");
        assert_eq!(status.error, None);
        assert_eq!(named.lookup("late.failoverd.test.", "A").await, answer(30, &["203.0.113.10"]));
        assert_eq!(
            metric(failoverd::metrics::DNS_PUBLISHED, &[("service", "late"), ("backend", "primary")]),
            Some(1.0)
        );
        assert_eq!(
            metric(failoverd::metrics::DNS_UPDATES_TOTAL, &[("service", "late"), ("result", "ok")]),
            Some(1.0)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_decision_does_not_wait_for_the_back_off() {
    init_logging();
    recorder();
    within(60, async {
        let mut named = Named::prepare("hmac-sha256");
        let (tx, rx) = watch::channel(publish("a", "192.0.2.60"));
        let spawned = Instant::now();
        let handle = dns::spawn_publisher(config(&named, "hurry", &["a", "b"]), rx);
        // Attempts at 0 s, 1 s, 3 s fail; the next one would be at 7 s.
        tokio::time::sleep(Duration::from_millis(3_300)).await;
        named.run().await.unwrap();
        let sent = Instant::now();
        tx.send(publish("b", "192.0.2.61")).unwrap();
        published(&handle, "192.0.2.61").await;
        let took = sent.elapsed();
        println!(
            "new decision during a 4 s back-off published after {:.0} ms (at {:.2}s)",
            took.as_secs_f64() * 1000.0,
            spawned.elapsed().as_secs_f64()
        );
        assert!(took < Duration::from_secs(1), "{took:?}");
        assert_eq!(
            named.lookup("hurry.failoverd.test.", "A").await,
            answer(30, &["192.0.2.61"])
        );
    })
    .await;
}

/// A UDP relay in front of `named` that holds the first update it sees
/// and forwards everything else; `release()` sends the held one on, late.
struct Relay {
    addr: std::net::SocketAddr,
    release: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: std::net::SocketAddr) -> Relay {
        use std::collections::HashMap;
        use tokio::net::UdpSocket;
        let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.connect(upstream).await.unwrap();
        let addr = front.local_addr().unwrap();
        let (release_tx, mut release_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut clients: HashMap<[u8; 2], std::net::SocketAddr> = HashMap::new();
            let mut held: Option<Vec<u8>> = None;
            let mut seen = false;
            let mut released = false;
            let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
            loop {
                tokio::select! {
                    r = front.recv_from(&mut a) => {
                        let (n, from) = r.unwrap();
                        clients.insert([a[0], a[1]], from);
                        if !seen {
                            seen = true;
                            held = Some(a[..n].to_vec());
                        } else {
                            back.send(&a[..n]).await.unwrap();
                        }
                    }
                    r = back.recv(&mut b) => {
                        let n = r.unwrap();
                        if let Some(client) = clients.get(&[b[0], b[1]]) {
                            let _ = front.send_to(&b[..n], client).await;
                        }
                    }
                    _ = &mut release_rx, if !released => {
                        released = true;
                        if let Some(late) = held.take() {
                            back.send(&late).await.unwrap();
                        }
                    }
                }
            }
        });
        Relay {
            addr,
            release: Some(release_tx),
            task,
        }
    }

    fn release(&mut self) {
        if let Some(tx) = self.release.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_old_update_that_lands_late_does_not_have_the_last_word() {
    init_logging();
    recorder();
    within(60, async {
        let named = Named::start("hmac-sha256").await;
        let mut relay = Relay::start(named.addr()).await;
        let mut config = config(&named, "stuck", &["a", "b"]);
        config.target.server = relay.addr;
        config.timeout = Duration::from_secs(3);
        let name = "stuck.failoverd.test.";

        let (tx, rx) = watch::channel(publish("a", "192.0.2.70"));
        let spawned = Instant::now();
        let handle = dns::spawn_publisher(config, rx);
        // The update for "a" is held by the relay: in flight, no answer.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(handle.status().published, None);

        tx.send(publish("b", "192.0.2.71")).unwrap();
        published(&handle, "192.0.2.71").await;
        let took = spawned.elapsed();
        println!(
            "newer decision published {:.0} ms after the stuck one was sent",
            took.as_secs_f64() * 1000.0
        );
        assert!(
            took < Duration::from_secs(2),
            "waited for the stuck update: {took:?}"
        );
        assert_eq!(named.lookup(name, "A").await, answer(30, &["192.0.2.71"]));

        // The old update arrives late and is applied by the server ...
        relay.release();
        let landed = Instant::now();
        while named.lookup(name, "A").await != answer(30, &["192.0.2.70"]) {
            assert!(
                landed.elapsed() < Duration::from_secs(2),
                "the held update never landed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "the late old update landed at {:.2}s",
            spawned.elapsed().as_secs_f64()
        );
        // ... and the publisher sends the latest decision once more when the
        // old attempt's timeout (3 s after it was sent) has passed.
        tokio::time::sleep_until((spawned + Duration::from_millis(3_800)).into()).await;
        assert_eq!(named.lookup(name, "A").await, answer(30, &["192.0.2.71"]));
        assert_eq!(handle.status().published, Some(ip("192.0.2.71")));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_backend_up_leaves_the_record_alone() {
    init_logging();
    recorder();
    within(30, async {
        let named = Named::start("hmac-sha256").await;
        let name = "idle.failoverd.test.";

        // Nothing up at start: nothing is written.
        let (tx, rx) = watch::channel(None);
        let handle = dns::spawn_publisher(config(&named, "idle", &["a", "b"]), rx);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(named.lookup(name, "A").await, nothing());
        assert_eq!(handle.status().published, None);

        tx.send(publish("a", "192.0.2.50")).unwrap();
        published(&handle, "192.0.2.50").await;
        tx.send(None).unwrap();
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(named.lookup(name, "A").await, answer(30, &["192.0.2.50"]));
        assert_eq!(
            metric(
                failoverd::metrics::DNS_UPDATES_TOTAL,
                &[("service", "idle"), ("result", "ok")]
            ),
            Some(1.0),
            "None must send no update"
        );
        let status = handle.status();
        assert_eq!(status.published, Some(ip("192.0.2.50")));
        assert_eq!(status.backend.as_deref(), Some("a"));

        // The next decision after "none up" is published again.
        tx.send(publish("b", "192.0.2.51")).unwrap();
        published(&handle, "192.0.2.51").await;
        assert_eq!(named.lookup(name, "A").await, answer(30, &["192.0.2.51"]));
    })
    .await;
}

#[test]
fn key_files_are_parsed_and_errors_say_what_is_wrong() {
    let good = "key \"upd\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0c2VjcmV0\";\n};\n";
    let key = config::parse_key(good).unwrap();
    assert_eq!(key.name(), "upd");
    assert_eq!(key.algorithm(), config::KeyAlgorithm::HmacSha256);
    let debug = format!("{key:?}");
    assert!(
        debug.contains("***") && !debug.contains("c2VjcmV0"),
        "{debug}"
    );

    let commented = "# made by tsig-keygen\n// another comment\n/* a\n block */\n\
        key upd { algorithm \"HMAC-SHA512\"; secret \"c2Vj cmV0\"; }; # trailing\n";
    let key = config::parse_key(commented).unwrap();
    assert_eq!(key.algorithm(), config::KeyAlgorithm::HmacSha512);

    let cases: &[(&str, &str)] = &[
        ("", "no key statement"),
        ("# only a comment\n", "no key statement"),
        (
            "key \"k\" { algorithm hmac-md5; secret \"c2VjcmV0\"; };",
            "key \"k\": unsupported algorithm \"hmac-md5\" (use hmac-sha256, hmac-sha384 or hmac-sha512)",
        ),
        (
            "key \"k\" { algorithm hmac-sha256; };",
            "key \"k\": no secret",
        ),
        (
            "key \"k\" { secret \"c2VjcmV0\"; };",
            "key \"k\": no algorithm",
        ),
        (
            "key \"k\" { algorithm hmac-sha256; secret \"not base64!\"; };",
            "key \"k\": secret is not valid base64",
        ),
        (
            "key \"k\" { algorithm hmac-sha256; secret \"\"; };",
            "key \"k\": empty secret",
        ),
        (
            "key \"k\" { algorithm hmac-sha256; secret \"c2VjcmV0\"; };\nkey \"j\" { algorithm hmac-sha256; secret \"c2VjcmV0\"; };",
            "2 key statements; keep one key per file",
        ),
        (
            "key \"k\" {\n algorithm hmac-sha256;\n secrte \"c2VjcmV0\";\n};",
            "line 3: key \"k\": unknown option \"secrte\"",
        ),
        (
            "key \"k\" { algorithm hmac-sha256 secret \"c2VjcmV0\"; };",
            "key \"k\": expected \";\", found \"secret\"",
        ),
        (
            "key \"k\" { algorithm hmac-sha256; secret \"c2VjcmV0\"; }",
            "expected \";\", found the end of the file",
        ),
        (
            "key \"k\" { algorithm hmac-sha256; /* secret",
            "line 1: unterminated /* comment",
        ),
        ("key \"k\" { secret \"c2Vj", "line 1: unterminated string"),
        (
            "options { directory \"/tmp\"; };",
            "line 1: unexpected \"options\"",
        ),
        (
            "key \"k\" { algorithm hmac-sha256; algorithm hmac-sha512; secret \"c2VjcmV0\"; };",
            "algorithm given twice",
        ),
        (
            "key \"a..b\" { algorithm hmac-sha256; secret \"c2VjcmV0\"; };",
            "key name \"a..b\" is not a valid DNS name",
        ),
    ];
    for (text, want) in cases {
        let err = config::parse_key(text).expect_err(text);
        assert!(err.contains(want), "{text:?}: got {err:?}, want {want:?}");
    }

    let missing =
        config::load_key_file(std::path::Path::new("/nonexistent/failoverd.key")).unwrap_err();
    assert_eq!(missing, "cannot read: no such file");
    let dir = config::load_key_file(&std::env::temp_dir()).unwrap_err();
    assert_eq!(dir, "cannot read: is a directory");
}
