//! The binary as an operator runs it: `check`, `run` exit statuses,
//! `/metrics`, SIGHUP reloads under load, SIGTERM draining and `ctl`.
//!
//! Every test starts the real `failoverd` executable with a config written
//! into its own temp dir (its own ports and control socket), so the tests
//! run in parallel. [`Daemon`] kills the child when dropped, so a failing
//! test leaks no process.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

const BIN: &str = env!("CARGO_BIN_EXE_failoverd");

/// Bounds every wait on the daemon (start-up, exit, a metric to appear).
const LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// The addresses and paths of one test instance.
struct Layout {
    /// Holds the config, log and socket; removed on drop.
    _dir: TempDir,
    listen: SocketAddr,
    metrics: SocketAddr,
    socket: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

impl Layout {
    fn new(tag: &str) -> Layout {
        let dir = TempDir::new(tag);
        Layout {
            listen: free_port(),
            metrics: free_port(),
            socket: dir.path("ctl.sock"),
            config: dir.path("failoverd.toml"),
            log: dir.path("failoverd.log"),
            _dir: dir,
        }
    }

    /// A config with `[admin]` (metrics, socket and `admin` lines) and one
    /// service "svc" with these settings and backends.
    fn toml(&self, admin: &str, settings: &str, backends: &[(&str, SocketAddr)]) -> String {
        format!(
            "[admin]\nmetrics = \"{}\"\nsocket = \"{}\"\n{admin}\n\n\
             [[service]]\nname = \"svc\"\nlisten = \"{}\"\n{settings}\n\n{}",
            self.metrics,
            self.socket.display(),
            self.listen,
            backends_toml(backends)
        )
    }

    /// Replace the config file atomically, so a reload never reads half a file.
    fn write(&self, text: &str) {
        write_atomically(&self.config, text);
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

/// The result of a one-shot command.
#[derive(Debug)]
struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Run `failoverd ARGS` to completion (bounded by [`LIMIT`]).
async fn failoverd(args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(args)
        .stdin(Stdio::null())
        .env("RUST_LOG", "info")
        .kill_on_drop(true);
    let out = tokio::time::timeout(LIMIT, command.output())
        .await
        .unwrap_or_else(|_| panic!("failoverd {args:?} did not finish within {LIMIT:?}"))
        .expect("spawn failoverd");
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A `failoverd run` child process; killed on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
    listen: SocketAddr,
    metrics: SocketAddr,
    socket: PathBuf,
}

impl Daemon {
    /// Spawn `failoverd run -c CONFIG` (stderr to the log file) without
    /// waiting for it.
    fn spawn(config: &Path, log: &Path) -> Child {
        let log = std::fs::File::create(log).expect("create log");
        std::process::Command::new(BIN)
            .arg("run")
            .arg("-c")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn failoverd run")
    }

    /// Start on the layout's config and wait until the listener, the
    /// metrics port and the control socket all accept connections.
    async fn start(layout: &Layout) -> Daemon {
        let child = Daemon::spawn(&layout.config, &layout.log);
        let mut daemon = Daemon {
            child,
            log: layout.log.clone(),
            listen: layout.listen,
            metrics: layout.metrics,
            socket: layout.socket.clone(),
        };
        daemon.wait_ready().await;
        daemon
    }

    async fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "failoverd exited during start-up with {status}; log:\n{}",
                    self.log()
                );
            }
            let ready = TcpStream::connect(self.listen).await.is_ok()
                && TcpStream::connect(self.metrics).await.is_ok()
                && UnixStream::connect(&self.socket).await.is_ok();
            if ready {
                return;
            }
            assert!(
                start.elapsed() < LIMIT,
                "failoverd not ready within {LIMIT:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Send a signal by name ("HUP", "TERM") with kill(1).
    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Wait for the process to exit; its exit code.
    async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                start.elapsed() < limit,
                "failoverd still running after {limit:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `failoverd ctl --socket S ARGS`.
    async fn ctl(&self, args: &[&str]) -> Output {
        let socket = self.socket.to_str().expect("utf-8 path");
        let mut all = vec!["ctl", "--socket", socket];
        all.extend_from_slice(args);
        failoverd(&all).await
    }

    /// `ctl status --json`, parsed.
    async fn status(&self) -> serde_json::Value {
        let out = self.ctl(&["status", "--json"]).await;
        assert_eq!(out.code, Some(0), "ctl status --json: {out:?}");
        serde_json::from_str(&out.stdout).expect("status is JSON")
    }

    /// The active backend of the first service, as `ctl status` shows it.
    async fn active(&self) -> Option<String> {
        self.status().await["services"][0]["active"]
            .as_str()
            .map(str::to_string)
    }

    /// GET /metrics over plain TCP.
    async fn scrape(&self) -> Metrics {
        let mut stream = TcpStream::connect(self.metrics)
            .await
            .expect("connect metrics");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: failoverd\r\nConnection: close\r\n\r\n")
            .await
            .expect("send request");
        let mut response = String::new();
        tokio::time::timeout(LIMIT, stream.read_to_string(&mut response))
            .await
            .expect("scrape timed out")
            .expect("read response");
        let (head, body) = response.split_once("\r\n\r\n").expect("HTTP head");
        assert!(head.starts_with("HTTP/1.1 200"), "scrape answered {head}");
        Metrics::parse(body)
    }

    /// Scrape until `pred` holds (bounded by [`LIMIT`]).
    async fn scrape_until(&self, what: &str, pred: impl Fn(&Metrics) -> bool) -> Metrics {
        let start = Instant::now();
        loop {
            let metrics = self.scrape().await;
            if pred(&metrics) {
                return metrics;
            }
            assert!(
                start.elapsed() < LIMIT,
                "metrics never showed {what} within {LIMIT:?}:\n{}",
                metrics.text
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One sample of the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed scrape.
struct Metrics {
    text: String,
    samples: Vec<Sample>,
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|line| parse_sample(line).unwrap_or_else(|| panic!("bad sample line {line:?}")))
            .collect();
        Metrics {
            text: text.to_string(),
            samples,
        }
    }

    /// The samples of `name` whose labels include all of `labels`.
    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The value of the one sample of `name` with exactly these labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.matching(name, labels)
            .find(|s| s.labels.len() == labels.len())
            .map(|s| s.value)
    }

    fn has_type(&self, name: &str, kind: &str) -> bool {
        self.text
            .lines()
            .any(|l| l == format!("# TYPE {name} {kind}"))
    }
}

/// `name{k="v",...} value` or `name value`.
fn parse_sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => {
            let (name, value) = line.split_once(' ')?;
            return Some(Sample {
                name: name.to_string(),
                labels: BTreeMap::new(),
                value: value.trim().parse().ok()?,
            });
        }
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest.char_indices().peekable();
    let end = loop {
        let (start, c) = chars.next()?;
        if c == '}' {
            break start;
        }
        if c == ',' {
            continue;
        }
        let mut key = String::from(c);
        for (_, c) in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()?.1 {
                '"' => break,
                '\\' => value.push(chars.next()?.1),
                c => value.push(c),
            }
        }
        labels.insert(key, value);
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value: rest[end + 1..].trim().parse().ok()?,
    })
}

/// SPEC.md's metrics table: name, type, labels.
const SPEC_METRICS: &[(&str, &str, &[&str])] = &[
    (
        "failoverd_connections_total",
        "counter",
        &["service", "backend"],
    ),
    (
        "failoverd_connections_active",
        "gauge",
        &["service", "backend"],
    ),
    (
        "failoverd_connect_errors_total",
        "counter",
        &["service", "backend"],
    ),
    ("failoverd_client_failures_total", "counter", &["service"]),
    (
        "failoverd_bytes_total",
        "counter",
        &["service", "backend", "direction"],
    ),
    ("failoverd_backend_up", "gauge", &["service", "backend"]),
    ("failoverd_backend_active", "gauge", &["service", "backend"]),
    (
        "failoverd_switches_total",
        "counter",
        &["service", "from", "to", "reason"],
    ),
    (
        "failoverd_health_checks_total",
        "counter",
        &["service", "backend", "result"],
    ),
    (
        "failoverd_health_check_duration_seconds",
        "histogram",
        &["service", "backend"],
    ),
    (
        "failoverd_last_health_check_timestamp_seconds",
        "gauge",
        &["service", "backend"],
    ),
    ("failoverd_config_reloads_total", "counter", &["result"]),
    ("failoverd_config_last_reload_successful", "gauge", &[]),
];

/// Connect and read the greeting line of a `Mode::Greet` backend; keep the
/// connection for more traffic.
async fn connect_greeted(addr: SocketAddr) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect proxy");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = stream.read(&mut byte).await.expect("read greeting");
        assert!(n > 0, "closed before the greeting");
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    (stream, String::from_utf8_lossy(&line).into_owned())
}

/// Send `chunk` and read its echo back; an error says what went wrong.
async fn echo_once(stream: &mut TcpStream, chunk: &[u8]) -> Result<(), String> {
    let exchange = async {
        stream.write_all(chunk).await?;
        let mut back = vec![0u8; chunk.len()];
        stream.read_exact(&mut back).await?;
        Ok::<_, std::io::Error>(back)
    };
    match tokio::time::timeout(Duration::from_secs(3), exchange).await {
        Ok(Ok(back)) if back == chunk => Ok(()),
        Ok(Ok(_)) => Err("echo differs from what was sent".into()),
        Ok(Err(err)) => Err(format!("echo failed: {err}")),
        Err(_) => Err("echo timed out".into()),
    }
}

/// Who answers, with a bound.
async fn answered_by(addr: SocketAddr) -> String {
    within(5, who_answers(addr))
        .await
        .expect("connection through the proxy")
}

/// Wait until new connections are answered by `want`.
async fn wait_answered_by(addr: SocketAddr, want: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = answered_by(addr).await;
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "answered by {got}, wanted {want} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn backend_names(status: &serde_json::Value) -> Vec<String> {
    status["services"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["name"].as_str().expect("name").to_string())
        .collect()
}

// ---------------------------------------------------------------------------
// 1. check / run exit statuses
// ---------------------------------------------------------------------------

/// A config whose `check_interval` has no unit.
fn bad_config(dir: &TempDir) -> (PathBuf, String) {
    let path = dir.path("bad.toml");
    let text = "[[service]]\nname = \"svc\"\nlisten = \"127.0.0.1:1\"\ncheck_interval = \"5\"\n\
                [[service.backend]]\nname = \"primary\"\naddress = \"127.0.0.1:2\"\n";
    std::fs::write(&path, text).expect("write bad config");
    let display = path.display().to_string();
    (path, display)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_the_example_config_and_prints_every_service() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let out = failoverd(&["check", "-c", example]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    for want in [
        "service \"db\"",
        "service \"web\"",
        "1. primary",
        "2. standby",
        "3. dr",
        "1. web-1",
        "2. web-2",
    ] {
        assert!(
            out.stdout.contains(want),
            "missing {want:?} in:\n{}",
            out.stdout
        );
    }
    let primary = out.stdout.find("1. primary").expect("primary");
    let standby = out.stdout.find("2. standby").expect("standby");
    assert!(primary < standby, "backends in priority order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_run_reject_a_bad_config_with_exit_2_naming_file_and_key() {
    let dir = TempDir::new("badcfg");
    let (path, display) = bad_config(&dir);
    let path = path.to_str().expect("utf-8");
    let check = failoverd(&["check", "-c", path]).await;
    assert_eq!(check.code, Some(2), "{check:?}");
    assert!(check.stdout.is_empty(), "nothing on stdout: {check:?}");
    assert!(
        check.stderr.contains(&display) && check.stderr.contains("check_interval"),
        "stderr names the file and the key: {:?}",
        check.stderr
    );
    let run = failoverd(&["run", "-c", path]).await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert_eq!(
        run.stderr.trim(),
        check.stderr.trim(),
        "run reports the same error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exits_1_naming_service_and_address_when_listen_address_is_taken() {
    let mut layout = Layout::new("inuse");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    layout.listen = addr;
    layout.write(&layout.toml("", "", &[("primary", closed_port().await)]));
    let out = failoverd(&["run", "-c", layout.config.to_str().expect("utf-8")]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("service \"svc\"") && out.stderr.contains(&addr.to_string()),
        "stderr names the service and address: {:?}",
        out.stderr
    );
    // The control socket was created before the listeners: a failed start
    // does not leave it behind.
    assert!(!layout.socket.exists(), "control socket left behind");
    drop(taken);
}

// ---------------------------------------------------------------------------
// 2. /metrics
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_every_spec_metric_with_its_labels_after_traffic_a_switch_and_a_reload() {
    within(30, async {
        let primary = TestBackend::start("primary", Mode::Greet).await;
        let backup = TestBackend::start("backup", Mode::Greet).await;
        let layout = Layout::new("metrics");
        layout.write(&layout.toml(
            "",
            "check_interval = \"100ms\"\ncheck_timeout = \"100ms\"",
            &[("primary", primary.addr), ("backup", backup.addr)],
        ));
        let daemon = Daemon::start(&layout).await;

        // Traffic through the primary: the greeting, then an echoed payload.
        let payload = random_bytes(64 * 1024, 7);
        let (mut stream, who) = connect_greeted(daemon.listen).await;
        assert_eq!(who, "primary");
        echo_once(&mut stream, &payload).await.expect("echo");
        drop(stream);
        let sent = payload.len() as f64;
        let received = (payload.len() + "primary\n".len()) as f64;

        // One switch: maintenance of the primary.
        let out = daemon.ctl(&["disable", "svc", "primary"]).await;
        assert_eq!(out.code, Some(0), "{out:?}");
        assert_eq!(answered_by(daemon.listen).await, "backup");
        // One reload, so both reload metrics exist.
        let out = daemon.ctl(&["reload"]).await;
        assert_eq!(out.code, Some(0), "{out:?}");

        let svc = ("service", "svc");
        let m = daemon
            .scrape_until("bytes, checks and the reload", |m| {
                let bytes = |dir| {
                    m.get(
                        "failoverd_bytes_total",
                        &[svc, ("backend", "primary"), ("direction", dir)],
                    )
                    .unwrap_or(0.0)
                };
                bytes("to_backend") >= sent
                    && bytes("to_client") >= received
                    && ["primary", "backup"].iter().all(|b| {
                        m.get(
                            "failoverd_health_checks_total",
                            &[svc, ("backend", b), ("result", "ok")],
                        )
                        .unwrap_or(0.0)
                            >= 1.0
                    })
            })
            .await;

        // Every name in SPEC.md's table, of its type, with exactly its labels.
        for (name, kind, labels) in SPEC_METRICS {
            assert!(
                m.has_type(name, kind),
                "no `# TYPE {name} {kind}`:\n{}",
                m.text
            );
            let want: BTreeSet<&str> = labels.iter().copied().collect();
            let series: Vec<String> = if *kind == "histogram" {
                vec![format!("{name}_sum"), format!("{name}_count")]
            } else {
                vec![name.to_string()]
            };
            for series in series {
                let samples: Vec<&Sample> = m.matching(&series, &[]).collect();
                assert!(!samples.is_empty(), "no sample of {series}:\n{}", m.text);
                for s in samples {
                    let got: BTreeSet<&str> = s.labels.keys().map(String::as_str).collect();
                    assert_eq!(got, want, "labels of {series}");
                }
            }
            if *kind == "histogram" {
                let bucket = format!("{name}_bucket");
                let mut want = want.clone();
                want.insert("le");
                let samples: Vec<&Sample> = m.matching(&bucket, &[]).collect();
                assert!(!samples.is_empty(), "no {bucket}");
                for s in samples {
                    let got: BTreeSet<&str> = s.labels.keys().map(String::as_str).collect();
                    assert_eq!(got, want, "labels of {bucket}");
                }
            }
        }
        for s in m.matching("failoverd_bytes_total", &[]) {
            let dir = s.labels["direction"].as_str();
            assert!(dir == "to_backend" || dir == "to_client", "direction {dir}");
        }
        for s in m.matching("failoverd_health_checks_total", &[]) {
            let result = s.labels["result"].as_str();
            assert!(result == "ok" || result == "fail", "result {result}");
        }

        // backend_up / backend_active agree with `ctl status --json`.
        let status = daemon.status().await;
        let m = daemon.scrape().await;
        assert_eq!(status["services"][0]["active"], "backup");
        for b in status["services"][0]["backends"]
            .as_array()
            .expect("backends")
        {
            let name = b["name"].as_str().expect("name");
            let labels = [svc, ("backend", name)];
            let up = if b["state"] == "up" { 1.0 } else { 0.0 };
            let active = if b["active"] == true { 1.0 } else { 0.0 };
            assert_eq!(
                m.get("failoverd_backend_up", &labels),
                Some(up),
                "{name} up"
            );
            assert_eq!(
                m.get("failoverd_backend_active", &labels),
                Some(active),
                "{name} active"
            );
        }
        assert_eq!(
            m.get(
                "failoverd_switches_total",
                &[
                    svc,
                    ("from", "primary"),
                    ("to", "backup"),
                    ("reason", "disabled")
                ]
            ),
            Some(1.0),
            "{}",
            m.text
        );
        assert!(
            m.get(
                "failoverd_connections_total",
                &[svc, ("backend", "primary")]
            )
            .unwrap_or(0.0)
                >= 1.0
        );
        assert_eq!(m.get("failoverd_client_failures_total", &[svc]), Some(0.0));
        assert_eq!(
            m.get("failoverd_config_reloads_total", &[("result", "ok")]),
            Some(1.0)
        );
        assert_eq!(
            m.get("failoverd_config_last_reload_successful", &[]),
            Some(1.0)
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let last = m
            .get(
                "failoverd_last_health_check_timestamp_seconds",
                &[svc, ("backend", "backup")],
            )
            .expect("last check timestamp");
        assert!((now - last).abs() < 60.0, "last check {last}, now {now}");
    })
    .await;
}

// ---------------------------------------------------------------------------
// 3. Reload under load
// ---------------------------------------------------------------------------

/// Open a new connection every 5 ms until `stop`; each must be greeted.
/// Returns the greeted count, the failures and who answered.
async fn greet_loop(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
) -> (usize, Vec<String>, BTreeSet<String>) {
    let mut ok = 0;
    let mut failures = Vec::new();
    let mut seen = BTreeSet::new();
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_secs(3), who_answers(addr)).await {
            Ok(Ok(name)) => {
                ok += 1;
                seen.insert(name);
            }
            Ok(Err(err)) => failures.push(format!("{:?}: {err}", err.kind())),
            Err(_) => failures.push("no greeting within 3s".into()),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (ok, failures, seen)
}

/// Keep one connection moving data (a chunk echoed every 20 ms) until
/// `stop`; returns the rounds done or the first failure.
async fn echo_loop(addr: SocketAddr, stop: Arc<AtomicBool>) -> Result<usize, String> {
    let (mut stream, who) = connect_greeted(addr).await;
    assert_eq!(who, "primary", "the long connection starts on the primary");
    let mut rounds = 0;
    while !stop.load(Ordering::Relaxed) {
        let chunk = random_bytes(1024, rounds as u64);
        echo_once(&mut stream, &chunk)
            .await
            .map_err(|e| format!("round {rounds}: {e}"))?;
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(rounds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_under_load_refuse_nothing_and_keep_established_connections() {
    within(40, async {
        let primary = TestBackend::start("primary", Mode::Greet).await;
        let backup = TestBackend::start("backup", Mode::Greet).await;
        let layout = Layout::new("reload");
        let normal = [("primary", primary.addr), ("backup", backup.addr)];
        let swapped = [("backup", backup.addr), ("primary", primary.addr)];
        // on_switch = "keep" in every version: reload 4 swaps the order, so
        // the active backend moves to "backup" (reason reload) and reload 5
        // moves it back. The long echo connection lives on "primary"; with
        // "close" the swap would (rightly, per SPEC.md) close it. "keep"
        // makes every reload one that must not touch it, so it has to
        // survive all ten.
        let base = "on_switch = \"keep\"\ncheck_interval = \"100ms\"\ncheck_timeout = \"100ms\"";
        let with = |extra: &str| format!("{base}\n{extra}");
        let original = layout.toml("", base, &normal);
        let invalid = layout.toml(
            "",
            // check_timeout > check_interval; other backend names, to show
            // that none of this file is applied.
            "on_switch = \"keep\"\ncheck_interval = \"100ms\"\ncheck_timeout = \"1s\"",
            &[("other", backup.addr), ("another", primary.addr)],
        );
        // The ten reloads, 150 ms apart: (file contents, valid?).
        let versions: Vec<(String, bool)> = vec![
            (layout.toml("", &with("fall = 2"), &normal), true),
            (layout.toml("", &with("rise = 3\nfall = 4"), &normal), true),
            (
                layout.toml("", &with("connect_timeout = \"500ms\""), &normal),
                true,
            ),
            (layout.toml("", base, &swapped), true),
            (layout.toml("", base, &normal), true),
            (invalid, false),
            (
                layout.toml("", &with("idle_timeout = \"10m\""), &normal),
                true,
            ),
            (
                layout.toml("", &with("max_connections = 1000"), &normal),
                true,
            ),
            (
                layout.toml(
                    "",
                    &with("passive_errors = 5\nfailback_delay = \"0s\""),
                    &normal,
                ),
                true,
            ),
            (original.clone(), true),
        ];
        layout.write(&original);
        let daemon = Daemon::start(&layout).await;

        let stop = Arc::new(AtomicBool::new(false));
        let echo = tokio::spawn(echo_loop(daemon.listen, Arc::clone(&stop)));
        let greet = tokio::spawn(greet_loop(daemon.listen, Arc::clone(&stop)));
        tokio::time::sleep(Duration::from_millis(150)).await;

        let (mut ok, mut error) = (0.0, 0.0);
        for (i, (text, valid)) in versions.iter().enumerate() {
            let n = i + 1;
            let started = Instant::now();
            layout.write(text);
            daemon.signal("HUP");
            if *valid {
                ok += 1.0;
            } else {
                error += 1.0;
            }
            let m = daemon
                .scrape_until(&format!("reload {n} counted"), |m| {
                    m.get("failoverd_config_reloads_total", &[("result", "ok")])
                        .unwrap_or(0.0)
                        == ok
                        && m.get("failoverd_config_reloads_total", &[("result", "error")])
                            .unwrap_or(0.0)
                            == error
                })
                .await;
            let successful = m.get("failoverd_config_last_reload_successful", &[]);
            assert_eq!(
                successful,
                Some(if *valid { 1.0 } else { 0.0 }),
                "after reload {n}"
            );
            match n {
                4 => assert_eq!(daemon.active().await.as_deref(), Some("backup")),
                5 => assert_eq!(daemon.active().await.as_deref(), Some("primary")),
                6 => {
                    // The old config keeps running.
                    let status = daemon.status().await;
                    assert_eq!(backend_names(&status), ["primary", "backup"]);
                    assert_eq!(status["services"][0]["active"], "primary");
                    assert_eq!(answered_by(daemon.listen).await, "primary");
                    // `ctl reload` of the same file: exit 2 and why.
                    let out = daemon.ctl(&["reload"]).await;
                    assert_eq!(out.code, Some(2), "{out:?}");
                    assert!(
                        out.stderr.contains("check_timeout")
                            && out.stderr.contains(&layout.config.display().to_string()),
                        "ctl reload says why: {:?}",
                        out.stderr
                    );
                    error += 1.0;
                }
                _ => {}
            }
            if let Some(rest) = Duration::from_millis(150).checked_sub(started.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
        assert!(daemon.log().contains("config reload rejected"));

        stop.store(true, Ordering::Relaxed);
        let rounds = echo.await.expect("echo task");
        let (greeted, failures, seen) = greet.await.expect("greet task");
        assert!(
            failures.is_empty(),
            "{} of {} new connections failed during reloads: {failures:?}",
            failures.len(),
            greeted + failures.len()
        );
        assert!(greeted >= 50, "only {greeted} connections made");
        assert_eq!(
            seen,
            BTreeSet::from(["backup".to_string(), "primary".to_string()]),
            "the swap sent new connections to the backup for a while"
        );
        let rounds = rounds.expect("the established connection survives every reload");
        assert!(rounds >= 20, "only {rounds} echo rounds");
        let status = daemon.status().await;
        assert_eq!(backend_names(&status), ["primary", "backup"]);
        assert_eq!(status["services"][0]["active"], "primary");
    })
    .await;
}

// ---------------------------------------------------------------------------
// 4. Reload while the primary is down
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_while_primary_is_down_keeps_traffic_on_the_backup() {
    within(30, async {
        let mut primary = TestBackend::start("primary", Mode::Greet).await;
        let backup = TestBackend::start("backup", Mode::Greet).await;
        let layout = Layout::new("reloaddown");
        let backends = [("primary", primary.addr), ("backup", backup.addr)];
        // passive_errors off: only the health checks may mark it down.
        let settings =
            "check_interval = \"100ms\"\ncheck_timeout = \"100ms\"\nfall = 2\npassive_errors = 0";
        layout.write(&layout.toml("", settings, &backends));
        let daemon = Daemon::start(&layout).await;
        assert_eq!(answered_by(daemon.listen).await, "primary");

        primary.stop();
        let start = Instant::now();
        loop {
            let status = daemon.status().await;
            let service = &status["services"][0];
            if service["active"] == "backup" && service["backends"][0]["state"] == "down" {
                break;
            }
            assert!(
                start.elapsed() < LIMIT,
                "primary never marked down: {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Same backends, new timings.
        let settings =
            "check_interval = \"300ms\"\ncheck_timeout = \"200ms\"\nfall = 3\npassive_errors = 0";
        layout.write(&layout.toml("", settings, &backends));
        daemon.signal("HUP");
        daemon
            .scrape_until("the reload", |m| {
                m.get("failoverd_config_reloads_total", &[("result", "ok")]) == Some(1.0)
            })
            .await;
        for i in 0..20 {
            assert_eq!(answered_by(daemon.listen).await, "backup", "connection {i}");
        }
        let status = daemon.status().await;
        assert_eq!(status["services"][0]["active"], "backup");
        assert_eq!(status["services"][0]["backends"][0]["state"], "down");
        let m = daemon.scrape().await;
        assert!(
            m.matching("failoverd_switches_total", &[("reason", "reload")])
                .next()
                .is_none(),
            "no switch by reload:\n{}",
            m.text
        );
        assert_eq!(
            m.get(
                "failoverd_connect_errors_total",
                &[("service", "svc"), ("backend", "primary")]
            ),
            Some(0.0),
            "no client connection tried the stopped primary"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// 5. SIGTERM
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_refuses_new_connections_and_exits_0_when_the_last_one_ends() {
    within(30, async {
        let backend = TestBackend::start("primary", Mode::Greet).await;
        let layout = Layout::new("term");
        layout.write(&layout.toml(
            "shutdown_timeout = \"20s\"",
            "",
            &[("primary", backend.addr)],
        ));
        let mut daemon = Daemon::start(&layout).await;
        let (mut stream, _) = connect_greeted(daemon.listen).await;
        echo_once(&mut stream, b"before").await.expect("echo");

        daemon.signal("TERM");
        let sent = Instant::now();
        loop {
            match TcpStream::connect(daemon.listen).await {
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => break,
                // Caught in the handshake as the listener closed: try again.
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
                Err(err) => panic!("connect failed with {err}, wanted refused"),
                // Accepted before the listener closed: let it go.
                Ok(probe) => drop(probe),
            }
            assert!(sent.elapsed() < LIMIT, "still accepting after SIGTERM");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let refused_after = sent.elapsed();
        assert!(
            refused_after < Duration::from_millis(250),
            "new connects refused only {refused_after:?} after SIGTERM"
        );

        // The open connection keeps moving data while the proxy drains.
        for round in 0..10u8 {
            echo_once(&mut stream, &[round; 512])
                .await
                .expect("the open connection works while draining");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(daemon.running(), "exited with a connection still open");

        // The client closes: the proxy passes the FIN on, the backend
        // closes, and failoverd exits.
        stream.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.expect("read to EOF");
        drop(stream);
        assert_eq!(daemon.wait_exit(Duration::from_secs(5)).await, Some(0));
        let log = daemon.log();
        assert!(log.contains("closed_by_force=0"), "log:\n{log}");
        assert!(!layout.socket.exists(), "the control socket is removed");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_connections_still_open_after_shutdown_timeout_and_exits_0() {
    within(30, async {
        let backend = TestBackend::start("primary", Mode::Greet).await;
        let layout = Layout::new("termforce");
        layout.write(&layout.toml(
            "shutdown_timeout = \"1s\"",
            "",
            &[("primary", backend.addr)],
        ));
        let mut daemon = Daemon::start(&layout).await;
        // A connection that never closes on its own.
        let (mut stream, _) = connect_greeted(daemon.listen).await;

        daemon.signal("TERM");
        let sent = Instant::now();
        assert_eq!(daemon.wait_exit(Duration::from_secs(5)).await, Some(0));
        let took = sent.elapsed();
        assert!(
            took >= Duration::from_millis(800) && took <= Duration::from_secs(5),
            "exited {took:?} after SIGTERM with shutdown_timeout 1s"
        );
        let log = daemon.log();
        assert!(log.contains("closed_by_force=1"), "log:\n{log}");
        // The proxy closed it.
        let mut buf = [0u8; 16];
        let n = within(5, stream.read(&mut buf)).await.unwrap_or(0);
        assert_eq!(n, 0, "the forced connection is closed");
    })
    .await;
}

// ---------------------------------------------------------------------------
// 6. ctl and the control socket
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_disable_moves_traffic_and_enable_brings_it_back() {
    within(30, async {
        let primary = TestBackend::start("primary", Mode::Greet).await;
        let backup = TestBackend::start("backup", Mode::Greet).await;
        let layout = Layout::new("ctl");
        layout.write(&layout.toml(
            "",
            "check_interval = \"100ms\"\ncheck_timeout = \"100ms\"",
            &[("primary", primary.addr), ("backup", backup.addr)],
        ));
        let daemon = Daemon::start(&layout).await;

        let mode = std::fs::metadata(&layout.socket)
            .expect("socket exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

        let table = daemon.ctl(&["status"]).await;
        assert_eq!(table.code, Some(0), "{table:?}");
        for want in ["svc", "primary", "backup", &primary.addr.to_string()] {
            assert!(
                table.stdout.contains(want),
                "missing {want}:\n{}",
                table.stdout
            );
        }

        // `-c FILE` finds the socket from admin.socket.
        let out = failoverd(&[
            "ctl",
            "-c",
            layout.config.to_str().expect("utf-8"),
            "status",
            "--json",
        ])
        .await;
        assert_eq!(out.code, Some(0), "{out:?}");
        let status: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
        assert_eq!(status["services"][0]["name"], "svc");
        assert_eq!(status["services"][0]["active"], "primary");
        assert_eq!(backend_names(&status), ["primary", "backup"]);

        // Once `ctl disable` has returned, no new connection goes there.
        let out = daemon.ctl(&["disable", "svc", "primary"]).await;
        assert_eq!(out.code, Some(0), "{out:?}");
        assert_eq!(answered_by(daemon.listen).await, "backup");
        let status = daemon.status().await;
        assert_eq!(status["services"][0]["backends"][0]["enabled"], false);
        let m = daemon.scrape().await;
        assert_eq!(
            m.get(
                "failoverd_switches_total",
                &[
                    ("service", "svc"),
                    ("from", "primary"),
                    ("to", "backup"),
                    ("reason", "disabled")
                ]
            ),
            Some(1.0),
            "{}",
            m.text
        );

        let out = daemon.ctl(&["enable", "svc", "primary"]).await;
        assert_eq!(out.code, Some(0), "{out:?}");
        wait_answered_by(daemon.listen, "primary", Duration::from_secs(3)).await;

        let out = daemon.ctl(&["disable", "svc", "nosuch"]).await;
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(out.stderr.contains("nosuch"), "{out:?}");
        let out = daemon.ctl(&["disable", "nosvc", "primary"]).await;
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(out.stderr.contains("nosvc"), "{out:?}");
        let out = failoverd(&["ctl", "--socket", "/nonexistent", "status"]).await;
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(out.stderr.contains("/nonexistent"), "{out:?}");
        // The failed requests changed nothing.
        assert_eq!(answered_by(daemon.listen).await, "primary");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_file_is_replaced_and_a_live_one_is_not_stolen() {
    within(30, async {
        let backend = TestBackend::start("primary", Mode::Greet).await;
        // Stale: a socket nobody listens on (a crash). A path that is not a
        // socket is never removed (see tests/hardening_b.rs).
        {
            let layout = Layout::new("stale");
            layout.write(&layout.toml("", "", &[("primary", backend.addr)]));
            drop(std::os::unix::net::UnixListener::bind(&layout.socket).expect("stale socket"));
            let daemon = Daemon::start(&layout).await;
            let meta = std::fs::metadata(&layout.socket).expect("socket");
            assert!(meta.file_type().is_socket(), "stale socket replaced");
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            assert_eq!(daemon.active().await.as_deref(), Some("primary"));
        }

        // Live: a second instance on the same socket (other ports) fails.
        let first = Layout::new("live");
        first.write(&first.toml("", "", &[("primary", backend.addr)]));
        let daemon = Daemon::start(&first).await;
        let second = Layout::new("live2");
        let text = second.toml("", "", &[("primary", backend.addr)]).replace(
            &second.socket.display().to_string(),
            &first.socket.display().to_string(),
        );
        second.write(&text);
        let out = failoverd(&["run", "-c", second.config.to_str().expect("utf-8")]).await;
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(
            out.stderr.contains(&first.socket.display().to_string())
                && out.stderr.contains("in use"),
            "the error names the socket in use: {:?}",
            out.stderr
        );
        // The same config started twice fails too.
        let out = failoverd(&["run", "-c", first.config.to_str().expect("utf-8")]).await;
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(out.stderr.contains("in use"), "{out:?}");
        // The running instance keeps its socket.
        assert_eq!(daemon.active().await.as_deref(), Some("primary"));
        assert_eq!(answered_by(daemon.listen).await, "primary");
    })
    .await;
}
