//! The test harness itself: what the builders write is what failoverd
//! reads, the Prometheus reader reads labels and sums, `eventually` returns
//! or names what it waited for, and a `Failoverd` leaves no process and no
//! temp dir behind.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use failoverd::config::{self, BackendAddress};

#[test]
fn builders_write_toml_that_failoverd_reads_back() {
    let script = "echo \"ünïcode\" 'quoted' \\ back\\slash";
    let text = ConfigToml::new()
        .set_admin("shutdown_timeout", "3s")
        .set_default("fall", 5)
        .set_default("fall", 7)
        .service(
            svc(&[
                ("primary", "127.0.0.1:7001".parse().unwrap()),
                ("backup", "127.0.0.1:7002".parse().unwrap()),
            ])
            .set("check_send", "PING\r\n")
            .set("check_expect", "PONG")
            .set("notify", ["sh", "-c", script])
            .set("max_connections", 10u64)
            .set("zero_copy", false),
        )
        .service(
            Service::new("second")
                .listen("127.0.0.1:7000")
                .backend_table(
                    Table::new()
                        .set("name", "host")
                        .set("address", "localhost:7003"),
                ),
        )
        .to_string();
    let parsed =
        config::parse(&text, Path::new("harness.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(parsed.admin.shutdown_timeout, Duration::from_secs(3));
    let first = &parsed.services[0];
    assert_eq!(first.name, "svc");
    assert_eq!(first.listen, Some("127.0.0.1:0".parse().unwrap()));
    assert_eq!(
        first.settings.fall, 7,
        "a key set twice keeps the last value"
    );
    assert_eq!(first.settings.check_send, b"PING\r\n");
    assert_eq!(first.settings.notify, ["sh", "-c", script]);
    assert_eq!(first.settings.max_connections, 10);
    assert!(!first.settings.zero_copy);
    let names: Vec<&str> = first.backends.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["primary", "backup"]);
    assert_eq!(
        first.backends[1].address,
        BackendAddress::Ip("127.0.0.1:7002".parse().unwrap())
    );
    let second = &parsed.services[1];
    assert_eq!(second.listen, Some("127.0.0.1:7000".parse().unwrap()));
    assert_eq!(
        second.settings.fall, 7,
        "[defaults] applies to every service"
    );
    assert_eq!(second.backends[0].address.to_string(), "localhost:7003");
}

#[test]
fn raw_values_reach_the_file_as_written() {
    let text = svc(&[("primary", "127.0.0.1:7001".parse().unwrap())])
        .set("check_interval", Value::raw("5"))
        .toml();
    let err = config::parse(&text, Path::new("harness.toml")).expect_err("a number");
    assert!(err.to_string().contains("check_interval"), "{err}");
}

#[test]
fn scrape_reads_labels_values_and_sums() {
    let text = "# TYPE failoverd_bytes_total counter\n\
                failoverd_bytes_total{service=\"db\",backend=\"a\",direction=\"to_client\"} 10\n\
                failoverd_bytes_total{service=\"db\",backend=\"b\",direction=\"to_client\"} 5.5\n\
                failoverd_bytes_total{service=\"web\",backend=\"q\\\"x\",direction=\"to_client\"} 1\n\
                failoverd_config_last_reload_successful 1\n";
    let m = Scrape::parse(text);
    assert!(m.has_type("failoverd_bytes_total", "counter"));
    assert!(!m.has_type("failoverd_bytes_total", "gauge"));
    let a = [
        ("service", "db"),
        ("backend", "a"),
        ("direction", "to_client"),
    ];
    assert_eq!(m.value("failoverd_bytes_total", &a), Some(10.0));
    assert_eq!(
        m.value("failoverd_bytes_total", &[("service", "db")]),
        None,
        "value wants the exact label set"
    );
    assert_eq!(m.sum("failoverd_bytes_total", &[("service", "db")]), 15.5);
    assert_eq!(m.sum("failoverd_bytes_total", &[("service", "none")]), 0.0);
    let quoted = [
        ("service", "web"),
        ("backend", "q\"x"),
        ("direction", "to_client"),
    ];
    assert_eq!(m.value("failoverd_bytes_total", &quoted), Some(1.0));
    assert_eq!(
        m.value("failoverd_config_last_reload_successful", &[]),
        Some(1.0)
    );
}

#[tokio::test]
async fn eventually_returns_the_first_value_a_probe_yields() {
    let mut calls = 0;
    let got = eventually(Duration::from_secs(5), "the third call", || {
        calls += 1;
        let n = calls;
        async move { if n >= 3 { Some(n) } else { None } }
    })
    .await;
    assert_eq!(got, 3);
}

#[tokio::test]
#[should_panic(expected = "the answer: not within 100ms; last observed: \"still 41\"")]
async fn eventually_names_what_it_waited_for_and_the_last_observation() {
    eventually(Duration::from_millis(100), "the answer", || async {
        Err::<(), _>("still 41")
    })
    .await;
}

#[tokio::test]
#[should_panic(expected = "a probe was still running at the deadline")]
async fn eventually_cuts_off_a_probe_that_hangs() {
    eventually(Duration::from_millis(100), "a hung probe", || async {
        std::future::pending::<Option<()>>().await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "still running after 300ms, killed")]
async fn run_failoverd_kills_a_command_that_outlives_its_timeout() {
    let layout = Layout::new("harness-hang");
    let backend = closed_port().await;
    layout.write(&layout.service().backend("primary", backend).toml());
    run_failoverd(
        &["run", "-c", layout.config_arg()],
        Duration::from_millis(300),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failoverd_leaves_no_process_and_no_temp_dir_behind() {
    within(30, async {
        let backend = TestBackend::start("primary", Mode::Greet).await;
        let daemon = Failoverd::start("harness", |l| {
            l.config(l.service().backend("primary", backend.addr))
                .to_string()
        })
        .await;
        let listen = format!("listen={}", daemon.listen());
        let line = daemon.wait_for_log(&listen, Duration::from_secs(5)).await;
        assert!(line.contains("service=svc"), "{line}");
        assert_eq!(answered_by(daemon.listen()).await, "primary");
        assert_eq!(daemon.active().await.as_deref(), Some("primary"));
        let m = daemon.metrics().await;
        assert_eq!(
            m.value(
                "failoverd_backend_up",
                &[("service", "svc"), ("backend", "primary")]
            ),
            Some(1.0),
            "{}",
            m.text
        );
        let pid = daemon.pid();
        let dir = daemon.layout().config.parent().unwrap().to_path_buf();
        assert!(dir.exists());
        drop(daemon);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "failoverd {pid} still there after drop"
        );
        assert!(!dir.exists(), "temp dir {} left behind", dir.display());
    })
    .await;
}
