//! A real etcd for tests: one member or a cluster of several, on free
//! loopback ports, each member with its own data directory. A member can be
//! killed (SIGKILL) and started again with the same data and ports;
//! everything is stopped on drop, so a failing test cleans up too.
//!
//! Standalone (std, tokio, serde_json): include it with
//! `#[path = "common/etcd.rs"] mod etcd_harness;`.
//!
//! The `etcd` binary comes from PATH, `/usr/bin` or `/usr/sbin`; when it
//! is missing and the tests run as root, `apt-get install -y etcd-server`
//! runs once; without it the test fails naming the Debian package.
#![allow(dead_code)]

use std::fs::File;
use std::net::TcpListener as StdListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The Debian package that ships `/usr/bin/etcd`.
const ETCD_PACKAGE: &str = "etcd-server";

/// How long a member (or a whole cluster) may take to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Fast raft timers so a leader failover in a test takes well under 2 s.
const HEARTBEAT_INTERVAL_MS: u32 = 100;
const ELECTION_TIMEOUT_MS: u32 = 500;

/// Start attempts with fresh ports, in case another process took one.
const START_ATTEMPTS: usize = 3;

/// The etcd binary, installing the Debian package once if needed.
pub fn etcd_binary() -> PathBuf {
    static BINARY: OnceLock<Option<PathBuf>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            find_binary("etcd").or_else(|| {
                if is_root() {
                    eprintln!("etcd not found: running apt-get install -y {ETCD_PACKAGE}");
                    let _ = Command::new("apt-get")
                        .args(["install", "-y", ETCD_PACKAGE])
                        .env("DEBIAN_FRONTEND", "noninteractive")
                        .status();
                }
                find_binary("etcd")
            })
        })
        .clone()
        .unwrap_or_else(|| {
            panic!("etcd binary not found: install the Debian package {ETCD_PACKAGE}")
        })
}

fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    // /proc/self belongs to the effective user.
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Go's name for this architecture: etcd 3.4 refuses to start on some
/// (arm64 among them) unless `ETCD_UNSUPPORTED_ARCH` names it.
fn unsupported_arch() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => None,
        "aarch64" => Some("arm64"),
        "x86" => Some("386"),
        "powerpc64" => Some(if cfg!(target_endian = "little") {
            "ppc64le"
        } else {
            "ppc64"
        }),
        other => Some(other),
    }
}

/// A free loopback port (bound, read, closed).
fn free_port() -> u16 {
    let l = StdListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn spawn(&mut self, initial_cluster: &str, token: &str) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("etcd log file");
        let mut cmd = Command::new(etcd_binary());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(key);
            }
        }
        if let Some(arch) = unsupported_arch() {
            cmd.env("ETCD_UNSUPPORTED_ARCH", arch);
        }
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &self.client_url()])
            .args(["--advertise-client-urls", &self.client_url()])
            .args(["--listen-peer-urls", &self.peer_url()])
            .args(["--initial-advertise-peer-urls", &self.peer_url()])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", token])
            .arg(format!("--heartbeat-interval={HEARTBEAT_INTERVAL_MS}"))
            .arg(format!("--election-timeout={ELECTION_TIMEOUT_MS}"))
            .args(["--logger=zap", "--log-level=error"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn etcd"));
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process is still running (it exits at once on a port
    /// collision or a bad flag).
    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// Real etcd members on loopback, stopped on drop.
pub struct Etcd {
    members: Vec<Member>,
    dir: PathBuf,
    token: String,
}

impl Etcd {
    /// One member.
    pub async fn start() -> Etcd {
        Etcd::start_cluster(1).await
    }

    /// `size` members forming one cluster, all healthy on return.
    pub async fn start_cluster(size: usize) -> Etcd {
        static N: AtomicUsize = AtomicUsize::new(0);
        for attempt in 1..=START_ATTEMPTS {
            let tag = format!(
                "{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            let dir = std::env::temp_dir().join(format!("failoverd-test-etcd-{tag}"));
            std::fs::create_dir_all(&dir).expect("etcd temp dir");
            let members = (1..=size)
                .map(|i| Member {
                    name: format!("n{i}"),
                    client_port: free_port(),
                    peer_port: free_port(),
                    data_dir: dir.join(format!("n{i}.data")),
                    log: dir.join(format!("n{i}.log")),
                    child: None,
                })
                .collect();
            let mut etcd = Etcd {
                members,
                dir,
                token: format!("failoverd-test-{tag}"),
            };
            let cluster = etcd.initial_cluster();
            for m in &mut etcd.members {
                m.spawn(&cluster, &etcd.token);
            }
            match etcd.wait_healthy(&(0..size).collect::<Vec<_>>()).await {
                Ok(()) => return etcd,
                Err(why) if attempt < START_ATTEMPTS => {
                    eprintln!("etcd start attempt {attempt} failed: {why}")
                }
                Err(why) => panic!("etcd did not start: {why}"),
            }
        }
        unreachable!()
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Client URLs of every member, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// The `[cluster]` table of a failoverd member `name` of this etcd
    /// under `prefix`, with a 2 s lease (add `on_lost` as needed).
    pub fn cluster_table(&self, name: &str, prefix: &str) -> super::config::Table {
        super::config::Table::new()
            .set("name", name)
            .set("etcd", self.endpoints())
            .set("prefix", prefix)
            .set("ttl", "2s")
    }

    pub fn endpoint(&self, member: usize) -> String {
        self.members[member].client_url()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn data_root(&self) -> &Path {
        &self.dir
    }

    /// SIGKILL one member and wait for it to exit.
    pub fn kill(&mut self, member: usize) {
        self.members[member].kill();
    }

    /// Start a killed member again with its data directory and ports;
    /// returns once it is healthy.
    pub async fn restart(&mut self, member: usize) {
        let cluster = self.initial_cluster();
        self.members[member].kill();
        self.members[member].spawn(&cluster, &self.token);
        if let Err(why) = self.wait_healthy(&[member]).await {
            panic!(
                "etcd member {} did not come back: {why}",
                self.members[member].name
            );
        }
    }

    /// The member that is the raft leader now (asks the live members).
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            for (i, m) in self.members.iter().enumerate() {
                if m.child.is_none() {
                    continue;
                }
                let Ok((200, body)) = http(m.client_port, "/v3/maintenance/status", "{}").await
                else {
                    continue;
                };
                let Ok(status) = serde_json::from_str::<serde_json::Value>(&body) else {
                    continue;
                };
                let leader = status["leader"].as_str().unwrap_or("");
                if !leader.is_empty() && status["header"]["member_id"].as_str() == Some(leader) {
                    return i;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no etcd leader within {START_TIMEOUT:?}");
    }

    /// Compact the history up to `revision` (a watch from before it then
    /// fails).
    pub async fn compact(&self, revision: i64) {
        let body = format!(r#"{{"revision":"{revision}","physical":true}}"#);
        let live = self
            .members
            .iter()
            .find(|m| m.child.is_some())
            .expect("a live etcd member");
        match http(live.client_port, "/v3/kv/compaction", &body).await {
            Ok((200, _)) => {}
            other => panic!("etcd compaction to {revision} failed: {other:?}"),
        }
    }

    async fn wait_healthy(&mut self, members: &[usize]) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut pending = members.to_vec();
        while !pending.is_empty() {
            for &i in &pending {
                if !self.members[i].running() {
                    return Err(self.failure(i, "exited"));
                }
            }
            let mut still = Vec::new();
            for &i in &pending {
                let healthy = matches!(http_get(self.members[i].client_port, "/health").await,
                    Ok((200, body)) if body.contains(r#""health":"true""#));
                if !healthy {
                    still.push(i);
                }
            }
            pending = still;
            if let Some(&i) = pending.first()
                && Instant::now() > deadline
            {
                return Err(self.failure(i, &format!("not healthy within {START_TIMEOUT:?}")));
            }
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    fn failure(&mut self, i: usize, what: &str) -> String {
        let m = &self.members[i];
        let text = format!(
            "member {} ({}) {what}; its log:\n{}",
            m.name,
            m.client_url(),
            m.log_tail()
        );
        for m in &mut self.members {
            m.kill();
        }
        text
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    request(
        port,
        &format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"),
    )
    .await
}

/// POST `body` to `path` (HTTP/1.0: the answer ends with the connection).
pub async fn http(port: u16, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let req = format!(
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    request(port, &req).await
}

async fn request(port: u16, req: &str) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&out).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "etcd did not answer in 2s")
        })??;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
