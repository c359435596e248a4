//! Validation rules, one test each, plus the example config and the summary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const FILE: &str = "failoverd.toml";

fn ok(text: &str) -> Config {
    match parse(text, Path::new(FILE)) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got: {e}"),
    }
}

/// Parse `text`, expect an error, check it starts with the file name and
/// return the whole message.
fn err(text: &str) -> String {
    match parse(text, Path::new(FILE)) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => {
            assert_eq!(e.file, FILE);
            let shown = e.to_string();
            assert!(shown.starts_with("failoverd.toml: "), "{shown}");
            assert!(!shown.contains('\n'), "one line: {shown}");
            shown
        }
    }
}

fn assert_contains(message: &str, needles: &[&str]) {
    for needle in needles {
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }
}

/// A minimal valid service with `extra` lines in the service table.
fn service(extra: &str) -> String {
    format!(
        "[[service]]\nname = \"db\"\nlisten = \"10.0.0.100:5432\"\n{extra}\n\
         [[service.backend]]\nname = \"primary\"\naddress = \"10.0.0.11:5432\"\n"
    )
}

/// A valid config with one service whose backends are given as
/// (name, address) pairs.
fn with_backends(backends: &[(&str, &str)]) -> String {
    let mut text = "[[service]]\nname = \"db\"\nlisten = \"10.0.0.100:5432\"\n".to_string();
    for (name, address) in backends {
        text.push_str(&format!(
            "[[service.backend]]\nname = \"{name}\"\naddress = \"{address}\"\n"
        ));
    }
    text
}

const FULL: &str = r#"
[admin]
metrics = "127.0.0.1:9898"
socket = "/run/failoverd/failoverd.sock"
shutdown_timeout = "10s"

[defaults]
connect_timeout = "2s"
idle_timeout = "30m"
check_interval = "1s"
check_timeout = "750ms"
fall = 4
rise = 3
passive_errors = 0
failback = "manual"
failback_delay = "5s"
on_switch = "keep"
max_connections = 100
zero_copy = false
check_send = "PING\r\n"
check_expect = "+PONG"
notify = ["/bin/notify", "--x"]

[[service]]
name = "db"
listen = "10.0.0.100:5432"
freebind = true

  [[service.backend]]
  name = "primary"
  address = "10.0.0.11:5432"

  [[service.backend]]
  name = "standby"
  address = "10.0.0.12:5432"
"#;

#[test]
fn parses_a_full_config() {
    let c = ok(FULL);
    assert_eq!(c.path, PathBuf::from(FILE));
    assert_eq!(
        c.admin,
        Admin {
            metrics: Some("127.0.0.1:9898".parse().unwrap()),
            socket: Some(PathBuf::from("/run/failoverd/failoverd.sock")),
            shutdown_timeout: Duration::from_secs(10),
        }
    );
    assert_eq!(c.services.len(), 1);
    let s = &c.services[0];
    assert_eq!(s.name, "db");
    assert_eq!(
        s.listen,
        Some("10.0.0.100:5432".parse::<SocketAddr>().unwrap())
    );
    assert!(s.freebind);
    assert_eq!(
        s.settings,
        Settings {
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Some(Duration::from_secs(1800)),
            check_interval: Duration::from_secs(1),
            check_timeout: Duration::from_millis(750),
            fall: 4,
            rise: 3,
            passive_errors: 0,
            failback: Failback::Manual,
            failback_delay: Duration::from_secs(5),
            on_switch: OnSwitch::Keep,
            max_connections: 100,
            zero_copy: false,
            check_send: b"PING\r\n".to_vec(),
            check_expect: b"+PONG".to_vec(),
            notify: vec!["/bin/notify".to_string(), "--x".to_string()],
            ..Settings::default()
        }
    );
    let names: Vec<_> = s.backends.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["primary", "standby"]);
    assert_eq!(
        s.backends[1].address,
        BackendAddress::Ip("10.0.0.12:5432".parse().unwrap())
    );
}

#[test]
fn minimal_config_uses_built_in_defaults() {
    let c = ok(&service(""));
    assert_eq!(c.services[0].settings, Settings::default());
    assert!(!c.services[0].freebind);
    assert_eq!(
        c.admin,
        Admin {
            metrics: None,
            socket: None,
            shutdown_timeout: Duration::from_secs(30),
        }
    );
}

#[test]
fn services_inherit_defaults_and_override_them() {
    let text = r#"
[defaults]
fall = 5
check_interval = "2s"
on_switch = "keep"

[[service]]
name = "a"
listen = "127.0.0.1:1000"
  [[service.backend]]
  name = "x"
  address = "127.0.0.1:2000"

[[service]]
name = "b"
listen = "127.0.0.1:1001"
fall = 1
on_switch = "close"
rise = 7
  [[service.backend]]
  name = "x"
  address = "127.0.0.1:2001"
"#;
    let c = ok(text);
    let a = &c.services[0].settings;
    let b = &c.services[1].settings;
    assert_eq!((a.fall, a.rise, a.on_switch), (5, 2, OnSwitch::Keep));
    assert_eq!((b.fall, b.rise, b.on_switch), (1, 7, OnSwitch::Close));
    // Inherited by both, not overridden by b.
    assert_eq!(a.check_interval, Duration::from_secs(2));
    assert_eq!(b.check_interval, Duration::from_secs(2));
    // Untouched keys keep the built-in default.
    assert_eq!(b.connect_timeout, Settings::default().connect_timeout);
}

#[test]
fn idle_timeout_zero_means_never() {
    let c = ok(&service("idle_timeout = \"0s\""));
    assert_eq!(c.services[0].settings.idle_timeout, None);
    let c = ok(&service("idle_timeout = \"90s\""));
    assert_eq!(
        c.services[0].settings.idle_timeout,
        Some(Duration::from_secs(90))
    );
}

#[test]
fn duration_parsing_table() {
    let good = [
        ("0s", Duration::ZERO),
        ("0ms", Duration::ZERO),
        ("250ms", Duration::from_millis(250)),
        ("2s", Duration::from_secs(2)),
        ("1m", Duration::from_secs(60)),
        ("1h", Duration::from_secs(3600)),
        ("1.5s", Duration::from_millis(1500)),
        ("0.25m", Duration::from_secs(15)),
        ("90s", Duration::from_secs(90)),
    ];
    for (text, want) in good {
        assert_eq!(parse_duration(text), Ok(want), "{text}");
    }
    let bad = [
        ("5", "missing unit"),
        ("-1s", "negative"),
        ("5d", "unknown unit \"d\""),
        ("5 s", "unknown unit"),
        ("s", "missing number"),
        ("", "empty"),
        ("1.s", "malformed"),
        (".5s", "malformed"),
        ("1.2.3s", "malformed"),
        ("99999999999999999999999h", "too large"),
    ];
    for (text, why) in bad {
        let e = parse_duration(text).expect_err(text);
        assert_contains(&e, &[&format!("\"{text}\""), why]);
    }
}

#[test]
fn format_duration_round_trips() {
    for text in ["0s", "250ms", "1500ms", "2s", "90s", "1m", "1h", "25h"] {
        let d = parse_duration(text).unwrap();
        assert_eq!(format_duration(d), text);
    }
    assert_eq!(format_duration(Duration::from_secs(120)), "2m");
}

// --- one test per validation rule ---

#[test]
fn rejects_config_without_services() {
    let e = err("[admin]\nmetrics = \"127.0.0.1:9898\"\n");
    assert_contains(&e, &["[[service]]", "at least one"]);
}

#[test]
fn rejects_invalid_service_name() {
    let text = service("").replace("name = \"db\"", "name = \"my db\"");
    let e = err(&text);
    assert_contains(&e, &["service \"my db\"", "[a-zA-Z0-9_.-]+"]);
}

#[test]
fn rejects_empty_service_name() {
    let text = service("").replace("name = \"db\"", "name = \"\"");
    assert_contains(&err(&text), &["service #1", "name is empty"]);
}

#[test]
fn rejects_missing_listen() {
    let text = service("").replace("listen = \"10.0.0.100:5432\"", "");
    assert_contains(&err(&text), &["service \"db\"", "\"listen\""]);
}

#[test]
fn rejects_duplicate_service_names() {
    let text = format!(
        "{}{}",
        service(""),
        service("").replace("10.0.0.100:5432", "10.0.0.100:5433")
    );
    assert_contains(&err(&text), &["service \"db\"", "duplicate service name"]);
}

#[test]
fn rejects_duplicate_listen_addresses() {
    let text = format!(
        "{}{}",
        service(""),
        service("").replace("name = \"db\"", "name = \"db2\"")
    );
    assert_contains(
        &err(&text),
        &[
            "service \"db2\": listen \"10.0.0.100:5432\"",
            "already used by service \"db\"",
        ],
    );
}

#[test]
fn rejects_hostname_as_listen_address() {
    let text = service("").replace("10.0.0.100:5432", "proxy.local:5432");
    assert_contains(
        &err(&text),
        &["service \"db\": listen \"proxy.local:5432\"", "IP address"],
    );
}

#[test]
fn rejects_listen_without_port() {
    let text = service("").replace("10.0.0.100:5432", "10.0.0.100");
    assert_eq!(
        err(&text),
        "failoverd.toml: service \"db\": listen \"10.0.0.100\": missing port"
    );
}

#[test]
fn rejects_service_without_backends() {
    let text = "[[service]]\nname = \"db\"\nlisten = \"10.0.0.100:5432\"\n";
    assert_contains(&err(text), &["service \"db\"", "[[service.backend]]"]);
}

#[test]
fn rejects_duplicate_backend_names() {
    let text = with_backends(&[("primary", "10.0.0.11:5432"), ("primary", "10.0.0.12:5432")]);
    assert_contains(
        &err(&text),
        &[
            "service \"db\": backend \"primary\"",
            "duplicate backend name",
        ],
    );
}

#[test]
fn rejects_empty_backend_name() {
    let text = with_backends(&[("primary", "10.0.0.11:5432"), ("", "10.0.0.12:5432")]);
    assert_contains(
        &err(&text),
        &["service \"db\": backend #2", "name is empty"],
    );
}

#[test]
fn rejects_backend_address_without_port() {
    let text = with_backends(&[("primary", "10.0.0.11:5432"), ("standby", "10.0.0.12")]);
    assert_eq!(
        err(&text),
        "failoverd.toml: service \"db\": backend \"standby\": address \"10.0.0.12\": missing port"
    );
}

#[test]
fn rejects_backend_address_with_invalid_port() {
    for bad in [
        "10.0.0.11:0",
        "10.0.0.11:65536",
        "10.0.0.11:pg",
        "db.local:+5",
    ] {
        let text = with_backends(&[("primary", bad)]);
        assert_contains(
            &err(&text),
            &[&format!("address \"{bad}\""), "invalid port"],
        );
    }
}

#[test]
fn rejects_malformed_backend_addresses() {
    let cases = [
        ("10.0.0.300:5432", "invalid IPv4 address"),
        ("[fd00::zz]:5432", "invalid IPv6 address"),
        ("fd00::1:5432", "brackets"),
        ("[fd00::1]", "missing port"),
        ("db_1.local:5432", "invalid hostname"),
        ("-db.local:5432", "invalid hostname"),
        (":5432", "missing host"),
    ];
    for (bad, why) in cases {
        let text = with_backends(&[("primary", bad)]);
        assert_contains(
            &err(&text),
            &[&format!("backend \"primary\": address \"{bad}\""), why],
        );
    }
}

#[test]
fn rejects_check_timeout_above_check_interval() {
    let text = service("check_interval = \"1s\"\ncheck_timeout = \"2s\"");
    assert_contains(
        &err(&text),
        &[
            "service \"db\"",
            "check_timeout (2s)",
            "check_interval (1s)",
        ],
    );
}

#[test]
fn rejects_check_timeout_above_check_interval_in_defaults() {
    let text = format!("[defaults]\ncheck_timeout = \"1s\"\n{}", service(""));
    assert_contains(
        &err(&text),
        &["defaults", "check_timeout (1s)", "check_interval (500ms)"],
    );
}

#[test]
fn rejects_zero_fall() {
    let text = service("fall = 0");
    assert_contains(&err(&text), &["service \"db\": fall", "at least 1"]);
}

#[test]
fn rejects_zero_rise_in_defaults() {
    let text = format!("[defaults]\nrise = 0\n{}", service(""));
    assert_contains(&err(&text), &["defaults.rise", "at least 1"]);
}

#[test]
fn rejects_negative_integers() {
    let e = err(&service("passive_errors = -1"));
    assert_contains(&e, &["line 4", "passive_errors = -1", "-1"]);
    let e = err(&service("max_connections = -5"));
    assert_contains(&e, &["line 4", "max_connections = -5"]);
}

#[test]
fn rejects_duration_without_unit() {
    let text = format!("[defaults]\ncheck_timeout = \"5\"\n{}", service(""));
    assert_eq!(
        err(&text),
        "failoverd.toml: defaults.check_timeout: invalid duration \"5\": \
         missing unit (use ms, s, m or h)"
    );
}

#[test]
fn rejects_bad_durations_naming_the_key() {
    let e = err(&service("connect_timeout = \"3x\""));
    assert_contains(
        &e,
        &["service \"db\": connect_timeout", "\"3x\"", "unknown unit"],
    );
    let e = err(&format!(
        "[admin]\nshutdown_timeout = \"-1s\"\n{}",
        service("")
    ));
    assert_contains(&e, &["admin.shutdown_timeout", "\"-1s\"", "negative"]);
    let e = err(&service("failback_delay = \"soon\""));
    assert_contains(&e, &["service \"db\": failback_delay", "\"soon\""]);
}

#[test]
fn rejects_zero_check_interval() {
    let e = err(&service("check_interval = \"0s\""));
    assert_contains(&e, &["service \"db\": check_interval", "greater than 0s"]);
}

#[test]
fn rejects_unknown_failback_value() {
    let e = err(&service("failback = \"sometimes\""));
    assert_contains(
        &e,
        &["service \"db\": failback", "\"sometimes\"", "\"manual\""],
    );
}

#[test]
fn rejects_unknown_on_switch_value() {
    let e = err(&format!(
        "[defaults]\non_switch = \"drain\"\n{}",
        service("")
    ));
    assert_contains(&e, &["defaults.on_switch", "\"drain\"", "\"keep\""]);
}

#[test]
fn rejects_notify_with_empty_command() {
    let e = err(&service("notify = [\"\", \"arg\"]"));
    assert_contains(&e, &["service \"db\": notify", "empty"]);
}

#[test]
fn accepts_empty_notify() {
    let c = ok(&service("notify = []"));
    assert!(c.services[0].settings.notify.is_empty());
}

#[test]
fn rejects_metrics_address_that_is_not_an_ip_socket_address() {
    let e = err(&format!(
        "[admin]\nmetrics = \"localhost:9898\"\n{}",
        service("")
    ));
    assert_contains(&e, &["admin.metrics \"localhost:9898\"", "IP address"]);
}

#[test]
fn rejects_empty_admin_socket() {
    let e = err(&format!("[admin]\nsocket = \"\"\n{}", service("")));
    assert_contains(&e, &["admin.socket", "empty"]);
}

// --- TOML types, syntax and unknown keys ---

#[test]
fn rejects_wrong_type_with_line_number() {
    let e = err(&service("fall = \"3\""));
    assert_contains(&e, &["line 4", "fall = \"3\"", "invalid type", "u32"]);
}

#[test]
fn rejects_string_for_bool_and_int_for_duration() {
    assert_contains(
        &err(&service("freebind = \"yes\"")),
        &["line 4", "freebind"],
    );
    assert_contains(
        &err(&service("check_interval = 5")),
        &["line 4", "check_interval"],
    );
}

#[test]
fn rejects_toml_syntax_errors_with_line_number() {
    let e = err("[[service]]\nname = \"db\nlisten = 1\n");
    assert_contains(&e, &["line 2"]);
}

#[test]
fn rejects_unknown_top_level_key() {
    let text = format!("{}[[services]]\nname = \"x\"\n", service(""));
    assert_contains(&err(&text), &["line 8", "services", "unknown field"]);
}

#[test]
fn rejects_unknown_key_in_admin() {
    let text = format!("[admin]\nmetric = \"127.0.0.1:1\"\n{}", service(""));
    assert_contains(&err(&text), &["line 2", "metric", "unknown field"]);
}

#[test]
fn rejects_unknown_key_in_defaults() {
    let text = format!("[defaults]\nfal = 3\n{}", service(""));
    assert_contains(&err(&text), &["line 2", "`fal`", "unknown field"]);
}

#[test]
fn rejects_unknown_key_in_service() {
    let e = err(&service("chek_interval = \"1s\""));
    assert_contains(&e, &["line 4", "chek_interval", "unknown field"]);
}

#[test]
fn rejects_unknown_key_in_backend() {
    let text = format!("{}weight = 10\n", service(""));
    assert_contains(&err(&text), &["line 8", "weight", "unknown field"]);
}

// --- address forms ---

#[test]
fn accepts_ipv6_listen_and_backend() {
    let text =
        with_backends(&[("v6", "[fd00::11]:5432")]).replace("10.0.0.100:5432", "[::1]:15432");
    let c = ok(&text);
    let s = &c.services[0];
    assert_eq!(s.listen, Some("[::1]:15432".parse::<SocketAddr>().unwrap()));
    assert_eq!(
        s.backends[0].address,
        BackendAddress::Ip("[fd00::11]:5432".parse().unwrap())
    );
    assert_eq!(s.backends[0].address.to_string(), "[fd00::11]:5432");
}

#[test]
fn accepts_hostname_backend() {
    let c = ok(&with_backends(&[("dns", "db-1.example.internal:5432")]));
    assert_eq!(
        c.services[0].backends[0].address,
        BackendAddress::Host {
            host: "db-1.example.internal".to_string(),
            port: 5432
        }
    );
    let c = ok(&with_backends(&[("dns", "localhost:6379")]));
    assert_eq!(
        c.services[0].backends[0].address.to_string(),
        "localhost:6379"
    );
}

// --- files ---

#[test]
fn load_reports_missing_file() {
    let e = load(Path::new("/nonexistent/failoverd.toml")).unwrap_err();
    assert_eq!(e.file, "/nonexistent/failoverd.toml");
    let shown = e.to_string();
    assert!(
        shown.starts_with("/nonexistent/failoverd.toml: cannot read config: "),
        "{shown}"
    );
}

#[test]
fn error_starts_with_the_path_as_given() {
    let e = parse("", Path::new("conf/x.toml")).unwrap_err();
    assert!(e.to_string().starts_with("conf/x.toml: "), "{e}");
}

#[test]
fn example_config_is_valid() {
    let c = load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config.example.toml"
    )))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.admin.metrics, Some("127.0.0.1:9898".parse().unwrap()));
    assert_eq!(
        c.admin.socket,
        Some(PathBuf::from("/run/failoverd/failoverd.sock"))
    );
    let services: Vec<_> = c.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(services, ["db", "web", "cache"]);
    let db = &c.services[0];
    assert!(db.freebind);
    assert_eq!(db.settings.check, CheckKind::Postgres);
    assert_eq!(db.settings.hold_timeout, Some(Duration::from_secs(5)));
    assert_eq!(c.services[2].settings.check, CheckKind::Redis);
    assert_eq!(
        db.listen,
        Some("10.0.0.100:5432".parse::<SocketAddr>().unwrap())
    );
    let order: Vec<_> = db.backends.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(order, ["primary", "standby", "dr"]);
    let web = &c.services[1];
    assert_eq!(
        web.settings.check_send,
        b"GET /healthz HTTP/1.0\r\nHost: web\r\n\r\n"
    );
    assert_eq!(web.settings.check_expect, b"HTTP/1.1 200");
}

#[test]
fn summary_lists_backends_in_priority_order_and_timings() {
    let c = ok(FULL);
    let s = c.summary();
    assert_contains(
        &s,
        &[
            "service \"db\" listen 10.0.0.100:5432 (freebind)",
            "1. primary 10.0.0.11:5432 (primary)",
            "2. standby 10.0.0.12:5432 (backup)",
            "connect_timeout 2s",
            "idle_timeout 30m",
            "check_interval 1s, check_timeout 750ms, fall 4, rise 3, passive_errors off",
            "failback manual, failback_delay 5s, on_switch keep",
            "max_connections 100",
            "zero_copy off",
            "metrics http://127.0.0.1:9898/metrics",
            "socket /run/failoverd/failoverd.sock",
            "shutdown_timeout 10s",
            "check_send \"PING\\r\\n\"",
        ],
    );
    let primary = s.find("1. primary").unwrap();
    let standby = s.find("2. standby").unwrap();
    assert!(primary < standby);
}

/// A file in a fresh temporary directory, removed with it.
struct TempFile {
    dir: PathBuf,
    pub path: PathBuf,
}

impl TempFile {
    fn new(name: &str, contents: &str) -> TempFile {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "failoverd-config-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        TempFile { dir, path }
    }

    fn show(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const KEY: &str =
    "key \"upd\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0LXNlY3JldA==\";\n};\n";

/// A service with `[service.dns]` whose lines are `dns` (server, zone, ...).
fn with_dns(service_extra: &str, dns: &str, backend_extra: &str) -> String {
    format!(
        "[[service]]\nname = \"db\"\n{service_extra}\n\
         [[service.backend]]\nname = \"primary\"\naddress = \"10.0.0.11:5432\"\n{backend_extra}\n\
         [service.dns]\n{dns}\n"
    )
}

#[test]
fn durations_above_one_year_and_huge_limits_are_rejected() {
    let cases = [
        (
            service("idle_timeout = \"2600000000000000h\""),
            &["service \"db\": idle_timeout", "too large"][..],
        ),
        (
            service("idle_timeout = \"8761h\""),
            &["idle_timeout", "at most 1 year"][..],
        ),
        (
            format!(
                "[defaults]\ncheck_interval = \"9000h\"\ncheck_timeout = \"9000h\"\n{}",
                service("")
            ),
            &["defaults.check_interval", "at most 1 year"][..],
        ),
        (
            service("max_connections = 1000001"),
            &["service \"db\": max_connections: 1000001 is too large (at most 1000000"][..],
        ),
        (
            service("max_connections = 9223372036854775807"),
            &["max_connections", "too large"][..],
        ),
        (
            format!("[admin]\nshutdown_timeout = \"400d\"\n{}", service("")),
            &["admin.shutdown_timeout"][..],
        ),
    ];
    for (text, want) in cases {
        assert_contains(&err(&text), want);
    }
    let c = ok(&service(
        "idle_timeout = \"8760h\"\nmax_connections = 1000000",
    ));
    assert_eq!(c.services[0].settings.idle_timeout, Some(MAX_DURATION));
    assert_eq!(
        c.services[0].settings.max_connections,
        MAX_CONNECTIONS_LIMIT
    );
}

#[test]
fn check_kinds_and_their_keys_are_validated() {
    let cases = [
        (
            service("check = \"mysql\""),
            "service \"db\": check: invalid value \"mysql\", expected \"tcp\" or \"http\" or \"redis\" or \"postgres\"",
        ),
        (
            service("check = \"redis\"\ncheck_send = \"PING\\r\\n\""),
            "service \"db\": check_send: only with check = \"tcp\" (check is \"redis\")",
        ),
        (
            format!(
                "[defaults]\ncheck_expect = \"+PONG\"\n{}",
                service("check = \"http\"")
            ),
            "service \"db\": check_expect: only with check = \"tcp\" (check is \"http\")",
        ),
        (
            service("check_port = 70000"),
            "service \"db\": check_port: 70000 is out of range (0-65535",
        ),
        (service("check_port = -1"), "check_port: -1 is out of range"),
        (
            service("check = \"http\"\ncheck_path = \"primary\""),
            "service \"db\": check_path \"primary\": must start with \"/\"",
        ),
        (
            service("check_path = \"/a b\""),
            "check_path \"/a b\": must start with \"/\" and contain no spaces",
        ),
        (
            service("check = \"postgres\"\ncheck_password_file = \"/nonexistent/failoverd/pw\""),
            "service \"db\": check_password_file \"/nonexistent/failoverd/pw\": cannot read:",
        ),
    ];
    for (text, want) in cases {
        assert_contains(&err(&text), &[want]);
    }
    for device in ["/dev/zero", "/dev/null"] {
        let text = service(&format!(
            "check = \"redis\"\ncheck_password_file = \"{device}\""
        ));
        assert_contains(&err(&text), &["check_password_file", "not a regular file"]);
    }
    let pw = TempFile::new("pw", "s3cret\nignored second line\n");
    let c = ok(&service(&format!(
        "check = \"postgres\"\ncheck_port = 8008\ncheck_password_file = \"{}\"\ncheck_database = \"app\"",
        pw.show()
    )));
    let s = &c.services[0].settings;
    assert_eq!(s.check, CheckKind::Postgres);
    assert_eq!(s.check_port, Some(8008));
    assert_eq!(
        s.check_password.as_ref().map(Secret::expose),
        Some("s3cret")
    );
    assert_eq!(s.check_user_for(), Some("postgres"));
    assert_eq!(s.check_database_or_default(), "app");
    assert!(!format!("{s:?}").contains("s3cret"), "secrets never print");
    let c = ok(&service("check = \"redis\"\ncheck_port = 0"));
    assert_eq!(c.services[0].settings.check_port, None);
    assert_eq!(c.services[0].settings.check_user_for(), None);
}

#[test]
fn hold_proxy_and_allow_are_validated() {
    let cases = [
        (
            service("send_proxy = \"v3\""),
            "service \"db\": send_proxy: invalid value \"v3\", expected \"off\" or \"v1\" or \"v2\"",
        ),
        (
            service("allow = [\"10.0.0.0/33\"]"),
            "service \"db\": allow entry \"10.0.0.0/33\": invalid prefix length",
        ),
        (
            service("allow = [\"db.example.com\"]"),
            "allow entry \"db.example.com\": not an IP address or CIDR",
        ),
        (service("accept_proxy = \"yes\""), "accept_proxy"),
        (
            service("hold_timeout = \"5\""),
            "service \"db\": hold_timeout: invalid duration \"5\"",
        ),
    ];
    for (text, want) in cases {
        assert_contains(&err(&text), &[want]);
    }
    let c = ok(&service(
        "hold_timeout = \"5s\"\nsend_proxy = \"v2\"\naccept_proxy = true\nallow = [\"10.1.2.3/8\", \"2001:db8::/32\", \"192.0.2.7\"]",
    ));
    let s = &c.services[0].settings;
    assert_eq!(s.hold_timeout, Some(Duration::from_secs(5)));
    assert_eq!(s.send_proxy, ProxyVersion::V2);
    assert!(s.accept_proxy);
    let allow: Vec<String> = s.allow.networks().map(|n| n.to_string()).collect();
    assert_eq!(allow, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
    let c = ok(&service("hold_timeout = \"0s\""));
    assert_eq!(c.services[0].settings.hold_timeout, None);
}

#[test]
fn cluster_section_is_validated() {
    let svc = service("");
    let cases = [
        (
            "[cluster]\nname = \"px1\"\n",
            "cluster.etcd: at least one etcd endpoint is required",
        ),
        ("[cluster]\netcd = []\n", "cluster.etcd: at least one"),
        (
            "[cluster]\netcd = [\"10.0.0.21:2379\"]\n",
            "cluster.etcd \"10.0.0.21:2379\": must start with http:// or https://",
        ),
        (
            "[cluster]\netcd = [\"http://10.0.0.21\"]\n",
            "cluster.etcd \"http://10.0.0.21\": missing port",
        ),
        (
            "[cluster]\netcd = [\"http://10.0.0.21:2379/v3\"]\n",
            "cluster.etcd \"http://10.0.0.21:2379/v3\"",
        ),
        (
            "[cluster]\netcd = [\"http://e1:2379\"]\nname = \"px 1\"\n",
            "cluster.name \"px 1\": invalid name, must match [a-zA-Z0-9_.-]+",
        ),
        (
            "[cluster]\netcd = [\"http://e1:2379\"]\nttl = \"500ms\"\n",
            "cluster.ttl: must be at least 1s, got \"500ms\"",
        ),
        (
            "[cluster]\netcd = [\"http://e1:2379\"]\non_lost = \"panic\"\n",
            "cluster.on_lost: invalid value \"panic\", expected \"close\" or \"keep\"",
        ),
        (
            "[cluster]\netcd = [\"http://e1:2379\"]\nprefix = \"failoverd\"\n",
            "cluster.prefix \"failoverd\": must start with \"/\"",
        ),
        (
            "[cluster]\netcd = [\"http://e1:2379\"]\nleader = true\n",
            "unknown field `leader`",
        ),
    ];
    for (cluster, want) in cases {
        assert_contains(&err(&format!("{cluster}{svc}")), &[want]);
    }
    let c = ok(&format!(
        "[cluster]\netcd = [\"http://10.0.0.21:2379\", \"https://[fd00::1]:2379\", \"http://etcd-3.internal:2379\"]\nname = \"px1\"\nprefix = \"/failoverd/\"\nttl = \"3s\"\non_lost = \"keep\"\n{svc}"
    ));
    let cluster = c.cluster.unwrap();
    assert_eq!(cluster.name, "px1");
    assert_eq!(cluster.prefix, "/failoverd");
    assert_eq!(cluster.on_lost, OnLost::Keep);
    let c = ok(&format!(
        "[cluster]\netcd = [\"http://127.0.0.1:2379\"]\n{svc}"
    ));
    let cluster = c.cluster.unwrap();
    assert!(!cluster.name.is_empty(), "defaults to the host name");
    assert_eq!(
        (cluster.ttl, cluster.on_lost),
        (Duration::from_secs(3), OnLost::Close)
    );
}

#[test]
fn dns_section_is_validated() {
    let key = TempFile::new("update.key", KEY);
    let bad_key = TempFile::new(
        "md5.key",
        "key \"k\" { algorithm hmac-md5; secret \"c2U=\"; };",
    );
    let good = |server: &str, zone: &str, name: &str, ttl: &str, key: &str| {
        format!(
            "server = \"{server}\"\nzone = \"{zone}\"\nname = \"{name}\"\nttl = \"{ttl}\"\ntsig_key = \"{key}\""
        )
    };
    let k = key.show();
    let cases = [
        (
            with_dns("", &good("10.0.0.53", "example.com.", "db.example.com.", "30s", &k), ""),
            "service \"db\": dns.server \"10.0.0.53\": missing port".to_string(),
        ),
        (
            with_dns("", &good("ns1.example.com:53", "example.com.", "db.example.com.", "30s", &k), ""),
            "dns.server \"ns1.example.com:53\": must be an IP address and port".to_string(),
        ),
        (
            with_dns("", &good("10.0.0.53:53", "example.com", "db.example.com.", "30s", &k), ""),
            "service \"db\": dns.zone \"example.com\": must be an absolute name ending in \".\"".to_string(),
        ),
        (
            with_dns("", &good("10.0.0.53:53", "example.com.", "db.example.com", "30s", &k), ""),
            "dns.name \"db.example.com\": must be an absolute name".to_string(),
        ),
        (
            with_dns("", &good("10.0.0.53:53", "example.com.", "db.example.org.", "30s", &k), ""),
            "dns.name \"db.example.org.\": not inside zone \"example.com.\"".to_string(),
        ),
        (
            with_dns("", &good("10.0.0.53:53", "example.com.", "db.notexample.com.", "30s", &k), ""),
            "not inside zone".to_string(),
        ),
        (
            with_dns("", &good("10.0.0.53:53", "example.com.", "db.example.com.", "500ms", &k), ""),
            "service \"db\": dns.ttl: must be at least 1s, got \"500ms\"".to_string(),
        ),
        (
            with_dns("", &good("10.0.0.53:53", "example.com.", "db.example.com.", "30s", "/nonexistent/k.key"), ""),
            "service \"db\": dns.tsig_key \"/nonexistent/k.key\": cannot read:".to_string(),
        ),
        (
            with_dns("", &good("10.0.0.53:53", "example.com.", "db.example.com.", "30s", &bad_key.show()), ""),
            "unsupported algorithm \"hmac-md5\"".to_string(),
        ),
        (
            with_dns("", "server = \"10.0.0.53:53\"\nzone = \"example.com.\"\nname = \"db.example.com.\"\nttl = \"30s\"", ""),
            "service \"db\": dns.tsig_key: missing".to_string(),
        ),
        (
            with_dns("", &good("10.0.0.53:53", "example.com.", "db.example.com.", "30s", &k), "publish = \"not-an-ip\""),
            "service \"db\": backend \"primary\": publish \"not-an-ip\": must be an IP address".to_string(),
        ),
        (
            with_dns("", &good("10.0.0.53:53", "example.com.", "db.example.com.", "30s", &k), "")
                .replace("10.0.0.11:5432", "db-1.internal:5432"),
            "service \"db\": backend \"primary\": publish: required when the service has [service.dns] and the address is a hostname".to_string(),
        ),
        (
            service("").replace("listen = \"10.0.0.100:5432\"\n", ""),
            "service \"db\": missing key \"listen\" (only a service with [service.dns] may have none)".to_string(),
        ),
    ];
    for (text, want) in cases {
        assert_contains(&err(&text), &[&want]);
    }
    // DNS only: no listen; a hostname backend with publish.
    let text = with_dns(
        "",
        &good("10.0.0.53:53", "Example.COM.", "db.example.com.", "30s", &k),
        "publish = \"203.0.113.11\"",
    )
    .replace("10.0.0.11:5432", "db-1.internal:5432");
    let c = ok(&text);
    let svc = &c.services[0];
    assert_eq!(svc.listen, None);
    let dns = svc.dns.as_ref().unwrap();
    assert_eq!(dns.zone, "example.com.");
    assert_eq!(dns.tsig_key.name(), "upd");
    assert_eq!(
        svc.backends[0].publish,
        Some("203.0.113.11".parse().unwrap())
    );
    assert!(
        c.summary().contains("(DNS only, no listener)"),
        "{}",
        c.summary()
    );
    // Default publish: the backend's own IP.
    let c = ok(&with_dns(
        "listen = \"10.0.0.100:5432\"",
        &good("[::1]:53", "example.com.", "example.com.", "1m", &k),
        "",
    ));
    assert_eq!(
        c.services[0].backends[0].publish,
        Some("10.0.0.11".parse().unwrap())
    );
}
