//! The real `failoverd` executable as an operator runs it: one-shot
//! commands ([`run_failoverd`]) and a running instance ([`Failoverd`]) with
//! its own temp dir, ports and control socket, its stderr readable while it
//! runs, killed and reaped on drop.
//!
//! The executable is the one cargo built for this test, unless the
//! environment names another in `FAILOVERD_BIN` (to show that an older
//! build has a defect the test catches).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UnixStream};

use super::config::{ConfigToml, Service, Table};
use super::net::free_port;
use super::prom::{Scrape, scrape};
use super::tempdir::{TempDir, write_atomically};
use super::wait::eventually;

/// How long a one-shot command (`ctl`, `check`) may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `failoverd run` may take to listen on everything it was given.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait for the rest of a child's output once it has exited.
const PIPE_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How often [`Launch::start`] tries with fresh ports when another process
/// took one of them between their pick and failoverd's bind.
const START_ATTEMPTS: usize = 3;

/// The executable under test: `$FAILOVERD_BIN`, else cargo's build.
pub fn failoverd_bin() -> PathBuf {
    std::env::var_os("FAILOVERD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_failoverd")))
}

/// The result of a one-shot command.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Run `failoverd ARGS` to completion with `RUST_LOG=info`; killed and
/// reported (with what it printed) if it takes longer than `timeout`.
pub async fn run_failoverd(args: &[&str], timeout: Duration) -> Output {
    let mut child = tokio::process::Command::new(failoverd_bin())
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", failoverd_bin().display()));
    let stdout = tokio::spawn(read_to_end(child.stdout.take()));
    let stderr = tokio::spawn(read_to_end(child.stderr.take()));
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => Some(status.expect("wait for failoverd")),
        Err(_) => {
            let _ = child.kill().await;
            None
        }
    };
    let collect = |task: tokio::task::JoinHandle<String>| async move {
        match tokio::time::timeout(PIPE_DRAIN_TIMEOUT, task).await {
            Ok(Ok(text)) => text,
            _ => "(not read to the end)".to_string(),
        }
    };
    let (stdout, stderr) = (collect(stdout).await, collect(stderr).await);
    let Some(status) = status else {
        panic!(
            "failoverd {args:?} still running after {timeout:?}, killed\n\
             stdout:\n{stdout}\nstderr:\n{stderr}"
        );
    };
    Output {
        code: status.code(),
        stdout,
        stderr,
    }
}

async fn read_to_end(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
    let mut bytes = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut bytes).await;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The files and ports of one instance: a fresh temp dir holding the
/// config and the control socket, and a listen and a metrics port that
/// were free a moment ago.
pub struct Layout {
    dir: TempDir,
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
    pub socket: PathBuf,
    pub config: PathBuf,
}

impl Layout {
    pub fn new(tag: &str) -> Layout {
        let dir = TempDir::new(tag);
        Layout {
            listen: free_port(),
            metrics: free_port(),
            socket: dir.path("ctl.sock"),
            config: dir.path("failoverd.toml"),
            dir,
        }
    }

    /// A file in the temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path(name)
    }

    /// `[admin]` with this layout's metrics address and control socket.
    pub fn admin(&self) -> Table {
        Table::new()
            .set("metrics", self.metrics)
            .set("socket", &self.socket)
    }

    /// Service "svc" on this layout's listen address (add backends).
    pub fn service(&self) -> Service {
        Service::new("svc").listen(self.listen)
    }

    /// [`Layout::admin`] and `service`.
    pub fn config(&self, service: Service) -> ConfigToml {
        ConfigToml::new().admin(self.admin()).service(service)
    }

    /// Replace the config file atomically, so a reload never reads half a file.
    pub fn write(&self, text: &str) {
        write_atomically(&self.config, text);
    }

    /// The config file's path as a command-line argument.
    pub fn config_arg(&self) -> &str {
        self.config.to_str().expect("utf-8 temp path")
    }

    /// Write another file into the temp dir (a script, a key); its path.
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }
}

/// The signals an operator sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Hup,
    Int,
    Term,
    Kill,
    Usr2,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Hup => "HUP",
            Signal::Int => "INT",
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
            Signal::Usr2 => "USR2",
        }
    }
}

/// How to start `failoverd run`: extra arguments, environment, an
/// open-file limit, and a command to run it through.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    args: Vec<String>,
    env: Vec<(String, String)>,
    nofile: Option<u32>,
    through: Vec<String>,
}

impl Launch {
    pub fn new() -> Launch {
        Launch::default()
    }

    /// An argument after `run -c FILE` (`--takeover`, `--log-format json`).
    pub fn arg(mut self, arg: &str) -> Launch {
        self.args.push(arg.to_string());
        self
    }

    /// An environment variable (`RUST_LOG` is `info` unless set here).
    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Run under `ulimit -n limit`.
    pub fn nofile(mut self, limit: u32) -> Launch {
        self.nofile = Some(limit);
        self
    }

    /// Run the binary through a wrapper command that ends by executing
    /// its arguments: `["ip", "netns", "exec", NS]`, `["unshare", ...]`,
    /// `["sh", "-c", "umask 000; exec \"$0\" \"$@\""]`.
    pub fn through(mut self, command: &[impl AsRef<str>]) -> Launch {
        self.through = command.iter().map(|a| a.as_ref().to_string()).collect();
        self
    }

    /// Write the config `config(&layout)` into a fresh [`Layout`], start
    /// and wait until it listens on everything the config names. If it
    /// exits 1 with an address "in use" (another process took a port
    /// after it was picked), try again with fresh ports.
    pub async fn start(self, tag: &str, config: impl Fn(&Layout) -> String) -> Failoverd {
        for attempt in 1..=START_ATTEMPTS {
            let layout = Layout::new(tag);
            let text = config(&layout);
            let mut failoverd = self.clone().spawn(layout, &text);
            match failoverd.ready().await {
                Ok(()) => return failoverd,
                Err(code) => {
                    let log = failoverd.log();
                    let collision = code == Some(1) && log.contains("in use");
                    if !collision || attempt == START_ATTEMPTS {
                        failoverd.quiet = true;
                        panic!(
                            "failoverd exited during start-up with {code:?}; \
                             config:\n{text}\nstderr:\n{log}"
                        );
                    }
                    failoverd.quiet = true;
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Write `toml` into `layout` and spawn `failoverd run -c` on it,
    /// without waiting for anything (see [`Failoverd::wait_ready`]).
    pub fn spawn(self, layout: Layout, toml: &str) -> Failoverd {
        layout.write(toml);
        let bin = failoverd_bin();
        let mut argv: Vec<std::ffi::OsString> = self.through.iter().map(Into::into).collect();
        if let Some(limit) = self.nofile {
            argv.extend(["sh".into(), "-c".into()]);
            argv.push(format!("ulimit -n {limit} && exec \"$0\" \"$@\"").into());
        }
        argv.push(bin.clone().into());
        let mut command = std::process::Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .arg("run")
            .arg("-c")
            .arg(&layout.config)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} run: {e}", bin.display()));
        let log = Arc::new(LogBuffer::default());
        let stderr = child.stderr.take().expect("stderr piped");
        std::thread::spawn({
            let log = Arc::clone(&log);
            move || log.fill_from(stderr)
        });
        Failoverd {
            child,
            endpoints: Endpoints::of(toml),
            layout,
            log,
            quiet: false,
        }
    }
}

/// Text that `Debug` prints as is (a scrape in a panic message).
struct Unquoted(String);

impl std::fmt::Debug for Unquoted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\n{}", self.0)
    }
}

/// A child's stderr, line by line, as far as it has been read.
#[derive(Default)]
struct LogBuffer {
    text: Mutex<String>,
    /// The pipe reached EOF: the text is complete.
    done: AtomicBool,
}

impl LogBuffer {
    /// Read until EOF (a line that is not UTF-8 is kept, lossily: the
    /// pipe must never stop being read, or the child blocks on it).
    fn fill_from(&self, pipe: impl std::io::Read) {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let mut text = self.text.lock().unwrap_or_else(|e| e.into_inner());
            text.push_str(&String::from_utf8_lossy(&line));
            if !line.ends_with(b"\n") {
                text.push('\n');
            }
            line.clear();
        }
        self.done.store(true, Ordering::Release);
    }

    fn text(&self) -> String {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a config says failoverd will listen on: start-up is done when
/// each of these accepts a connection.
#[derive(Debug, Default)]
struct Endpoints {
    metrics: Option<SocketAddr>,
    socket: Option<PathBuf>,
    /// Listen addresses with a fixed port.
    listens: Vec<SocketAddr>,
}

impl Endpoints {
    /// Read from the config text; nothing from a text that does not parse.
    fn of(toml: &str) -> Endpoints {
        let Ok(doc) = toml.parse::<toml::Table>() else {
            return Endpoints::default();
        };
        let admin = doc.get("admin");
        let str_at = |table: Option<&toml::Value>, key: &str| {
            table
                .and_then(|t| t.get(key))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let listens = doc
            .get("service")
            .and_then(|s| s.as_array())
            .into_iter()
            .flatten()
            .filter_map(|s| str_at(Some(s), "listen")?.parse::<SocketAddr>().ok())
            .filter(|addr| addr.port() != 0)
            .collect();
        Endpoints {
            metrics: str_at(admin, "metrics").and_then(|m| m.parse().ok()),
            socket: str_at(admin, "socket").map(PathBuf::from),
            listens,
        }
    }

    async fn all_accept(&self) -> bool {
        for addr in self.metrics.iter().chain(&self.listens) {
            if TcpStream::connect(addr).await.is_err() {
                return false;
            }
        }
        match &self.socket {
            Some(path) => UnixStream::connect(path).await.is_ok(),
            None => true,
        }
    }
}

/// A running `failoverd run`; killed, reaped and its temp dir removed on
/// drop (its stderr is printed then if the test is failing).
pub struct Failoverd {
    child: Child,
    layout: Layout,
    log: Arc<LogBuffer>,
    endpoints: Endpoints,
    /// Its stderr was already shown; do not print it again on drop.
    quiet: bool,
}

impl Failoverd {
    /// [`Launch::start`] with the defaults.
    pub async fn start(tag: &str, config: impl Fn(&Layout) -> String) -> Failoverd {
        Launch::new().start(tag, config).await
    }

    /// [`Launch::spawn`] with the defaults.
    pub fn spawn(layout: Layout, toml: &str) -> Failoverd {
        Launch::new().spawn(layout, toml)
    }

    /// Wait until the listen addresses (with a fixed port), the metrics
    /// address and the control socket of the config all accept; panics
    /// if it exits first or takes longer than [`START_TIMEOUT`].
    pub async fn wait_ready(&mut self) {
        if let Err(code) = self.ready().await {
            panic!(
                "failoverd exited during start-up with {code:?}; stderr:\n{}",
                self.log()
            );
        }
    }

    /// Ready, or the exit code if it exited first.
    async fn ready(&mut self) -> Result<(), Option<i32>> {
        let Failoverd {
            child, endpoints, ..
        } = self;
        let endpoints: &Endpoints = endpoints;
        let what = format!("failoverd (pid {}) ready", child.id());
        let outcome = eventually(START_TIMEOUT, &what, || {
            let exited = child.try_wait().expect("try_wait");
            async move {
                if let Some(status) = exited {
                    return Ok(Err(status.code()));
                }
                if endpoints.all_accept().await {
                    Ok(Ok(()))
                } else {
                    Err("not listening on everything yet")
                }
            }
        })
        .await;
        if outcome.is_err() {
            self.wait_log_complete().await;
        }
        outcome
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The listen address the layout picked (the one `Layout::service`
    /// listens on).
    pub fn listen(&self) -> SocketAddr {
        self.layout.listen
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Send `signal` with kill(1).
    pub fn signal(&self, signal: Signal) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{}", signal.name()))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -{} {} failed",
            signal.name(),
            self.pid()
        );
    }

    /// Wait for the process to exit within `timeout`; its exit code
    /// (`None` if a signal ended it). Its stderr is complete afterwards.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let what = format!("failoverd (pid {}) to exit", self.pid());
        let child = &mut self.child;
        let status = eventually(timeout, &what, || {
            let exited = child.try_wait().expect("try_wait");
            async move { exited }
        })
        .await;
        self.wait_log_complete().await;
        status.code()
    }

    /// Wait until `ctl status` answers: for an instance whose listen
    /// addresses the test cannot reach (another network namespace).
    pub async fn wait_control(&mut self) {
        let what = format!("failoverd (pid {}) answering ctl status", self.pid());
        let socket = self.socket().to_str().expect("utf-8 path").to_string();
        let child = &mut self.child;
        let outcome = eventually(START_TIMEOUT, &what, || {
            let exited = child.try_wait().expect("try_wait");
            let socket = socket.clone();
            async move {
                if let Some(status) = exited {
                    return Ok(Err(status.code()));
                }
                let out =
                    run_failoverd(&["ctl", "--socket", &socket, "status"], COMMAND_TIMEOUT).await;
                if out.code == Some(0) {
                    Ok(Ok(()))
                } else {
                    Err(out.stderr)
                }
            }
        })
        .await;
        if let Err(code) = outcome {
            self.wait_log_complete().await;
            panic!(
                "failoverd exited during start-up with {code:?}; stderr:\n{}",
                self.log()
            );
        }
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        self.log.text()
    }

    /// How many lines of its stderr so far contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Panics unless it is still running and its log shows no panic.
    pub fn assert_alive(&mut self) {
        let log = self.log();
        assert!(!log.contains("panicked"), "failoverd panicked:\n{log}");
        assert!(self.running(), "failoverd exited:\n{log}");
    }

    /// Wait until a line of its stderr contains `needle`; that line.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        eventually(timeout, &format!("a log line with {needle:?}"), || async {
            self.log()
                .lines()
                .find(|line| line.contains(needle))
                .map(str::to_string)
        })
        .await
    }

    async fn wait_log_complete(&self) {
        // A child of failoverd (a notify command) may hold the pipe open:
        // bounded, and what was read is kept either way.
        let _ = tokio::time::timeout(PIPE_DRAIN_TIMEOUT, async {
            while !self.log.done.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    /// Replace the config file (then send [`Signal::Hup`] or `ctl reload`).
    pub fn write_config(&self, text: &str) {
        self.layout.write(text);
    }

    /// Replace the config file and `ctl reload`: the command's output
    /// (exit 0 applied, 2 rejected, the reason on stderr).
    pub async fn reload(&self, text: &str) -> Output {
        self.write_config(text);
        self.ctl(&["reload"]).await
    }

    /// The control socket the config names.
    pub fn socket(&self) -> &Path {
        self.endpoints
            .socket
            .as_deref()
            .expect("the config has no admin.socket")
    }

    /// `failoverd ctl --socket SOCKET ARGS`.
    pub async fn ctl(&self, args: &[&str]) -> Output {
        let socket = self.socket().to_str().expect("utf-8 path");
        let mut all = vec!["ctl", "--socket", socket];
        all.extend_from_slice(args);
        run_failoverd(&all, COMMAND_TIMEOUT).await
    }

    /// `ctl status --json`, parsed; panics unless it exits 0.
    pub async fn status_json(&self) -> serde_json::Value {
        let out = self.ctl(&["status", "--json"]).await;
        assert_eq!(out.code, Some(0), "ctl status --json: {out:?}");
        serde_json::from_str(&out.stdout).expect("status is JSON")
    }

    /// The active backend of the first service, as `ctl status` shows it.
    pub async fn active(&self) -> Option<String> {
        self.status_json().await["services"][0]["active"]
            .as_str()
            .map(str::to_string)
    }

    /// `GET /metrics` on the config's `admin.metrics`.
    pub async fn metrics(&self) -> Scrape {
        scrape(
            self.endpoints
                .metrics
                .expect("the config has no admin.metrics"),
        )
        .await
    }

    /// Scrape until `pred` holds (at most `timeout`); that scrape. On
    /// timeout the panic shows the last scrape's text.
    pub async fn metrics_until(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Scrape) -> bool,
    ) -> Scrape {
        eventually(timeout, &format!("metrics showing {what}"), || async {
            let scrape = self.metrics().await;
            if pred(&scrape) {
                Ok(scrape)
            } else {
                Err(Unquoted(scrape.text))
            }
        })
        .await
    }
}

impl Drop for Failoverd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() && !self.quiet {
            eprintln!(
                "--- stderr of failoverd (pid {}) ---\n{}--- end ---",
                self.child.id(),
                self.log()
            );
        }
    }
}
