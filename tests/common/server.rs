//! Shared parts of the real-server harnesses (`redis.rs`, `postgres.rs`):
//! finding a server binary (installing its Debian package once when we are
//! root), free loopback ports, private temporary directories, and the
//! unprivileged account servers that refuse root run under.
//!
//! Synchronous on purpose: harnesses are set up before a test's runtime
//! work starts and torn down in `Drop`, where nothing can be awaited. A
//! missing binary fails the test with a message naming the package; it is
//! never a silent skip.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Installs run one at a time (apt holds a lock) and at most once per package.
static INSTALLED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Directories searched after `PATH`.
const EXTRA_BIN_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// Find `name` on PATH or in the usual system directories; when missing and
/// root, `apt-get install -y package` once and look again. Panics, naming
/// the package, when it cannot be found.
pub fn find_binary(name: &str, package: &str) -> PathBuf {
    find_with(package, || search_path(name)).unwrap_or_else(|| {
        panic!("`{name}` not found on PATH or in /usr/sbin: install the Debian package `{package}`")
    })
}

/// Run `find`; if it finds nothing, install `package` (root only, once) and
/// run it again.
pub fn find_with(package: &str, find: impl Fn() -> Option<PathBuf>) -> Option<PathBuf> {
    if let Some(found) = find() {
        return Some(found);
    }
    install(package);
    find()
}

fn search_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_BIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `apt-get install -y package` when root, at most once per package.
fn install(package: &str) {
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if installed.iter().any(|p| p == package) || !is_root() {
        return;
    }
    installed.push(package.to_owned());
    eprintln!("installing the Debian package `{package}` for the test servers");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !apt(&["install", "-y", "--no-install-recommends", package]) {
        apt(&["update"]);
        apt(&["install", "-y", "--no-install-recommends", package]);
    }
}

/// Whether this process runs with effective uid 0.
pub fn is_root() -> bool {
    effective_uid() == Some(0)
}

/// The effective uid, from /proc/self/status (`Uid: real effective ...`).
pub fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// A local account: its uid and gid, from /etc/passwd.
#[derive(Clone, Copy, Debug)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
}

/// Look `name` up in /etc/passwd.
pub fn account(name: &str) -> Option<Account> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 4 || fields[0] != name {
            return None;
        }
        Some(Account {
            uid: fields[2].parse().ok()?,
            gid: fields[3].parse().ok()?,
        })
    })
}

/// A loopback port that was free a moment ago (bind :0, read, close). The
/// server may still lose a race for it: harnesses retry on "address in use".
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A private temporary directory (mode 0700), optionally owned by `owner`,
/// removed with everything in it on drop.
pub struct ServerDir {
    pub path: PathBuf,
}

impl ServerDir {
    pub fn new(tag: &str, owner: Option<Account>) -> ServerDir {
        use std::os::unix::fs::PermissionsExt;
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "failoverd-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create server temp dir");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .expect("chmod server temp dir");
        if let Some(owner) = owner {
            std::os::unix::fs::chown(&path, Some(owner.uid), Some(owner.gid))
                .expect("chown server temp dir");
        }
        ServerDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for ServerDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Poll `ready` every 10 ms until it is true; false after `limit`.
pub fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Run a command to completion, panicking with its output on failure.
pub fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {:?}: {e}", cmd.get_program()));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// The tail of a log file, for a panic message.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
