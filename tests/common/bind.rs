//! A real BIND 9 (`named`) for tests, standalone: a TSIG key made by
//! `tsig-keygen`, a dynamic zone `failoverd.test.` that the key may update,
//! one loopback port it picks itself, and a temporary directory, all gone
//! (process killed by PID and waited for) when the guard drops. Records are
//! read back with `dig`, a DNS client independent of failoverd's.
//!
//! Binaries come from PATH or /usr/sbin; when missing and running as root
//! the Debian packages are installed once; otherwise the test fails naming
//! the package.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The zone every test server holds.
pub const ZONE: &str = "failoverd.test.";
/// How long `named` may take to answer its first SOA query.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Tries at a fresh port when `named` cannot listen on the one picked.
const START_TRIES: usize = 3;

static INSTANCE: AtomicU32 = AtomicU32::new(0);
static INSTALLED: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// Find `name` on PATH, /usr/sbin or /usr/bin; install the Debian `package`
/// once when missing and root; panic naming the package otherwise.
pub fn binary(name: &str, package: &'static str) -> PathBuf {
    if let Some(path) = find(name) {
        return path;
    }
    let root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    if root {
        let mut tried = INSTALLED.lock().unwrap_or_else(|p| p.into_inner());
        if !tried.contains(&package) {
            tried.push(package);
            let install = || {
                Command::new("apt-get")
                    .args(["install", "-y", package])
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false)
            };
            if !install() {
                let _ = Command::new("apt-get").arg("update").status();
                install();
            }
        }
    }
    find(name).unwrap_or_else(|| {
        panic!("{name} not found: install the Debian package {package} (apt-get install {package})")
    })
}

fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `tsig-keygen -a ALGORITHM NAME`: the text of a BIND key file.
pub fn tsig_keygen(algorithm: &str, name: &str) -> String {
    let keygen = binary("tsig-keygen", "bind9");
    let out = Command::new(keygen)
        .args(["-a", algorithm, name])
        .output()
        .expect("run tsig-keygen");
    assert!(
        out.status.success(),
        "tsig-keygen -a {algorithm} {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("tsig-keygen prints text")
}

/// A port free for both UDP and TCP on 127.0.0.1 (closed again on return).
pub fn free_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind udp 127.0.0.1:0");
        let port = udp.local_addr().expect("udp local addr").port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("failoverd-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The addresses of one RRset as `dig` saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// TTL of the RRset; `None` when there is no such record.
    pub ttl: Option<u32>,
    pub addresses: Vec<IpAddr>,
}

/// The zone clause that lets `key` update every name of the zone.
pub fn allow_update(key: &str) -> String {
    format!("allow-update {{ key {key}; }};")
}

/// One `named` with its directory, key and port.
pub struct Named {
    dir: TempDir,
    port: u16,
    key_name: String,
    /// Unique per instance, in the SOA: proves the answer comes from this
    /// server and not another test's on a reused port.
    hostmaster: String,
    named: PathBuf,
    dig: PathBuf,
    child: Option<Child>,
}

impl Named {
    /// Start a server whose update key uses `algorithm` (`hmac-sha256` ...)
    /// and wait until it answers.
    pub async fn start(algorithm: &str) -> Named {
        Named::start_with(algorithm, allow_update).await
    }

    /// Write the config on a fresh port, but do not start `named` yet
    /// (for tests where the server comes up late; see [`run`](Self::run)).
    /// The key may update the whole zone (`allow-update`).
    pub fn prepare(algorithm: &str) -> Named {
        Named::prepare_with(algorithm, allow_update)
    }

    /// Start a server whose zone says who may update what with the clause
    /// `update(key_name)` returns (`update-policy { grant ... };`).
    pub async fn start_with(algorithm: &str, update: impl Fn(&str) -> String) -> Named {
        let mut last = String::new();
        for _ in 0..START_TRIES {
            let mut named = Named::prepare_with(algorithm, &update);
            match named.run().await {
                Ok(()) => return named,
                Err(err) => last = err,
            }
        }
        panic!("named did not start in {START_TRIES} tries: {last}");
    }

    /// [`prepare`](Self::prepare) with the zone's update clause made by
    /// `update` from the key name.
    pub fn prepare_with(algorithm: &str, update: impl Fn(&str) -> String) -> Named {
        let named = binary("named", "bind9");
        let dig = binary("dig", "bind9-dnsutils");
        let dir = TempDir::new("named");
        let n = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let key_name = "failoverd-update".to_string();
        let hostmaster = format!("t{}-{n}.{ZONE}", std::process::id());
        let port = free_port();
        let d = dir.path().display().to_string();
        std::fs::write(
            dir.path().join("update.key"),
            tsig_keygen(algorithm, &key_name),
        )
        .expect("write key file");
        std::fs::write(
            dir.path().join("zone"),
            format!(
                "$TTL 300\n\
                 @ IN SOA ns.{ZONE} {hostmaster} 1 3600 600 86400 60\n\
                 @ IN NS ns.{ZONE}\n\
                 ns IN A 127.0.0.1\n"
            ),
        )
        .expect("write zone file");
        std::fs::write(
            dir.path().join("named.conf"),
            format!(
                r#"include "{d}/update.key";
options {{
    directory "{d}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
zone "{zone}" {{
    type primary;
    file "{d}/zone";
    journal "{d}/zone.jnl";
    {update}
}};
"#,
                zone = ZONE.trim_end_matches('.'),
                update = update(&key_name),
            ),
        )
        .expect("write named.conf");
        Named {
            dir,
            port,
            key_name,
            hostmaster,
            named,
            dig,
            child: None,
        }
    }

    /// Start `named` in the foreground (`-g`, log to a file) and wait until
    /// it answers a SOA query with this instance's SOA.
    pub async fn run(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.path().join("named.log")).expect("create log");
        let child = Command::new(&self.named)
            .arg("-g")
            .arg("-c")
            .arg(self.dir.path().join("named.conf"))
            .args(["-n", "1"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.named.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("named exited ({status}):\n{}", self.log()));
            }
            if self.log().contains("address in use") {
                self.stop();
                return Err(format!("port {} taken:\n{}", self.port, self.log()));
            }
            if let Ok(lines) = self.dig(ZONE, "SOA").await
                && lines
                    .iter()
                    .any(|(_, rdata)| rdata.contains(&self.hostmaster))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "named gave no SOA within {START_TIMEOUT:?}:\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kill `named` by PID and wait for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.port).into()
    }

    /// The key file `tsig-keygen` wrote, the one the server trusts.
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("update.key")
    }

    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// A file path in this server's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The server's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }

    /// `dig` one RRset: (TTL, RDATA) per record of the answer section.
    pub async fn dig(&self, name: &str, rtype: &str) -> Result<Vec<(u32, String)>, String> {
        let records = self.query(name, rtype).await?;
        Ok(records
            .into_iter()
            .filter(|(kind, _, _)| kind.eq_ignore_ascii_case(rtype))
            .map(|(_, ttl, rdata)| (ttl, rdata))
            .collect())
    }

    /// Every A and AAAA record of `name` from one `ANY` query, so the
    /// answer is one state of the zone (two queries can straddle an
    /// update): (type, TTL, address), sorted. An error when `dig` got no
    /// answer (a loaded machine), for a poll to try again.
    pub async fn addresses(&self, name: &str) -> Result<Vec<(String, u32, IpAddr)>, String> {
        let records = self.query(name, "ANY").await?;
        let mut found: Vec<(String, u32, IpAddr)> = records
            .into_iter()
            .filter(|(kind, _, _)| kind == "A" || kind == "AAAA")
            .map(|(kind, ttl, rdata)| {
                let address = rdata
                    .parse()
                    .unwrap_or_else(|_| panic!("not an address: {rdata}"));
                (kind, ttl, address)
            })
            .collect();
        found.sort();
        Ok(found)
    }

    /// `dig` one query: (TYPE, TTL, RDATA) per record of the answer section.
    async fn query(&self, name: &str, rtype: &str) -> Result<Vec<(String, u32, String)>, String> {
        let out = tokio::process::Command::new(&self.dig)
            .arg(format!("@{}", Ipv4Addr::LOCALHOST))
            .args(["-p", &self.port.to_string()])
            .args(["+noall", "+answer", "+norecurse", "+time=1", "+tries=1"])
            .args([name, rtype])
            .output()
            .await
            .map_err(|e| format!("run dig: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            return Err(format!(
                "dig {name} {rtype} failed ({}): {text}",
                out.status
            ));
        }
        let mut records = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
        {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 5 {
                continue;
            }
            let ttl = fields[1]
                .parse()
                .map_err(|_| format!("dig line without a TTL: {line}"))?;
            records.push((fields[3].to_ascii_uppercase(), ttl, fields[4..].join(" ")));
        }
        Ok(records)
    }

    /// The addresses of `name`'s A or AAAA RRset, read with a real query.
    pub async fn lookup(&self, name: &str, rtype: &str) -> Answer {
        let records = self
            .dig(name, rtype)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut addresses: Vec<IpAddr> = records
            .iter()
            .map(|(_, rdata)| {
                rdata
                    .parse()
                    .unwrap_or_else(|_| panic!("not an address: {rdata}"))
            })
            .collect();
        addresses.sort();
        Answer {
            ttl: records.first().map(|(ttl, _)| *ttl),
            addresses,
        }
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        self.stop();
    }
}
