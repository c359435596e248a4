//! A real PostgreSQL cluster (Debian package `postgresql`; the newest
//! `/usr/lib/postgresql/*/bin` is used) for tests: `initdb` into its own
//! temporary directory, started with `pg_ctl` on a free loopback port with
//! a private socket directory, `pg_hba.conf` set for trust, md5 or
//! SCRAM-SHA-256 on TCP, a streaming standby made with `pg_basebackup -R`,
//! promotion with `pg_ctl promote`, and `pg_ctl stop -m immediate` (then
//! SIGKILL by PID if need be) on drop.
//!
//! PostgreSQL refuses to run as root: when the tests run as root every
//! server program runs as the `postgres` account the Debian package
//! creates, and the temporary directory (mode 0700) belongs to it. Start-up
//! is kept fast: no fsync, 16 MB of shared buffers, few connections.
//!
//! Needs the sibling module `server` (tests/common/server.rs) as
//! `super::server`. Admin SQL goes through `psql` on the Unix socket as the
//! superuser (trusted locally), never through failoverd's own probe.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::server::{self, Account, ServerDir};

/// Attempts at a free port before giving up.
const PORT_ATTEMPTS: usize = 5;
/// How long `pg_ctl` may wait for start, promotion or stop (seconds).
const PG_CTL_WAIT_SECS: &str = "30";
/// How long a standby may take to stream from its primary.
const STREAM_TIMEOUT: Duration = Duration::from_secs(20);

/// How TCP clients (the failoverd probe) authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgAuth {
    Trust,
    /// md5 in `pg_hba.conf`, passwords stored as md5 (`password_encryption = md5`).
    Md5,
    ScramSha256,
}

impl PgAuth {
    fn hba_method(self) -> &'static str {
        match self {
            PgAuth::Trust => "trust",
            PgAuth::Md5 => "md5",
            PgAuth::ScramSha256 => "scram-sha-256",
        }
    }

    fn password_encryption(self) -> &'static str {
        match self {
            PgAuth::Md5 => "md5",
            PgAuth::Trust | PgAuth::ScramSha256 => "scram-sha-256",
        }
    }
}

/// A running PostgreSQL server (primary or standby).
pub struct PgServer {
    pub addr: SocketAddr,
    pub auth: PgAuth,
    bin: PathBuf,
    /// The account server programs run as (None: ourselves, not root).
    owner: Option<Account>,
    dir: ServerDir,
    running: bool,
}

impl PgServer {
    /// `initdb` a new cluster and start it as a primary that authenticates
    /// TCP clients with `auth`.
    pub fn primary(auth: PgAuth) -> PgServer {
        let bin = bin_dir();
        let owner = owner();
        let dir = ServerDir::new("pg", owner);
        let data = dir.join("data");
        let mut initdb = pg_command(&bin, "initdb", owner, &dir.path);
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--auth-local=trust",
            "--auth-host=reject",
            "--no-sync",
        ]);
        server::run_ok(&mut initdb, "initdb");
        std::fs::write(data.join("pg_hba.conf"), hba(auth)).expect("write pg_hba.conf");
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).expect("read conf");
        conf.push_str(&settings(auth));
        std::fs::write(data.join("postgresql.conf"), conf).expect("write postgresql.conf");
        // Rewritten files keep their owner; the socket directory is new.
        socket_dir(&dir, owner);
        PgServer::start(bin, owner, dir, auth)
    }

    /// A streaming standby of this server (`pg_basebackup -R`), started and
    /// connected to it; it sees every role created on the primary.
    pub fn standby(&self) -> PgServer {
        let dir = ServerDir::new("pg", self.owner);
        socket_dir(&dir, self.owner);
        let mut backup = pg_command(&self.bin, "pg_basebackup", self.owner, &dir.path);
        backup
            .arg("-D")
            .arg(dir.join("data"))
            .arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.addr.port().to_string(), "-U", "postgres"])
            .args(["-X", "stream", "-R", "-c", "fast", "--no-sync"]);
        server::run_ok(&mut backup, "pg_basebackup");
        let standby = PgServer::start(self.bin.clone(), self.owner, dir, self.auth);
        let streaming = server::wait_until(STREAM_TIMEOUT, || {
            self.sql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") != "0"
        });
        assert!(
            streaming,
            "standby {} never streamed from {}",
            standby.addr, self.addr
        );
        standby
    }

    /// `pg_ctl promote -w`: the standby leaves recovery and takes writes.
    pub fn promote(&self) {
        let mut promote = self.pg_ctl();
        promote.args(["promote", "-w", "-t", PG_CTL_WAIT_SECS]);
        server::run_ok(&mut promote, "pg_ctl promote");
        assert_eq!(
            self.sql("SELECT pg_is_in_recovery()"),
            "f",
            "promoted standby"
        );
    }

    /// Create a login role with `password`, stored per the cluster's
    /// `password_encryption` (md5 for [`PgAuth::Md5`], SCRAM otherwise).
    pub fn create_user(&self, name: &str, password: &str) {
        self.sql(&format!(
            "CREATE ROLE \"{}\" LOGIN PASSWORD '{}'",
            name.replace('"', "\"\""),
            password.replace('\'', "''")
        ));
    }

    /// Run SQL as the superuser over the Unix socket; the unaligned,
    /// tuples-only output, trimmed. Panics on an SQL error.
    pub fn sql(&self, sql: &str) -> String {
        let mut psql = pg_command(&self.bin, "psql", self.owner, &self.dir.path);
        psql.arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.addr.port().to_string(), "-U", "postgres"])
            .args([
                "-d",
                "postgres",
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .args(["-c", sql]);
        let out = server::run_ok(&mut psql, "psql");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `pg_ctl stop -m immediate`; SIGKILL by PID if that fails. Connects
    /// are refused afterwards.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let pid = self.postmaster_pid();
        let mut stop = self.pg_ctl();
        stop.args(["stop", "-m", "immediate", "-w", "-t", PG_CTL_WAIT_SECS]);
        let stopped = output(&mut stop).is_some_and(|o| o.status.success());
        if let (false, Some(pid)) = (stopped, pid) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let gone = server::wait_until(Duration::from_secs(10), || {
                !Path::new(&format!("/proc/{pid}")).exists()
            });
            assert!(gone, "postgres {pid} survived SIGKILL");
        }
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// The postmaster's process id (first line of `postmaster.pid`).
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.join("sock")
    }

    fn pg_ctl(&self) -> Command {
        let mut cmd = pg_command(&self.bin, "pg_ctl", self.owner, &self.dir.path);
        cmd.arg("-D").arg(self.dir.join("data"));
        cmd
    }

    /// `pg_ctl start -w` on a free port, retrying another port when the one
    /// picked was taken meanwhile.
    fn start(bin: PathBuf, owner: Option<Account>, dir: ServerDir, auth: PgAuth) -> PgServer {
        let mut pg = PgServer {
            addr: server::loopback(0),
            auth,
            bin,
            owner,
            dir,
            running: false,
        };
        let log = pg.dir.join("postgres.log");
        for _ in 0..PORT_ATTEMPTS {
            let port = server::free_port();
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1",
                pg.socket_dir().display()
            );
            let mut start = pg.pg_ctl();
            start
                .args(["start", "-w", "-t", PG_CTL_WAIT_SECS, "-o", &options, "-l"])
                .arg(&log);
            let started = output(&mut start).is_some_and(|o| o.status.success());
            if started {
                pg.addr = server::loopback(port);
                pg.running = true;
                return pg;
            }
            let tail = server::log_tail(&log);
            if !tail.contains("could not bind") && !tail.contains("already in use") {
                panic!("postgres did not start:\n{tail}");
            }
        }
        panic!("postgres: no free loopback port after {PORT_ATTEMPTS} attempts");
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The newest `/usr/lib/postgresql/*/bin` holding `initdb`, or `initdb`'s
/// directory on PATH; installs `postgresql` (root) when there is none.
fn bin_dir() -> PathBuf {
    let find = || {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                bin.join("initdb").is_file().then_some((version, bin))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin).or_else(|| {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path).find(|dir| dir.join("initdb").is_file())
        })
    };
    server::find_with("postgresql", find).unwrap_or_else(|| {
        panic!("PostgreSQL server programs (initdb, pg_ctl) not found: install the Debian package `postgresql`")
    })
}

/// The account server programs run as: `postgres` when we are root.
fn owner() -> Option<Account> {
    if !server::is_root() {
        return None;
    }
    let found = server::account("postgres").or_else(|| {
        // The Debian package creates the account.
        bin_dir();
        server::account("postgres")
    });
    Some(found.unwrap_or_else(|| {
        panic!("PostgreSQL refuses to run as root and there is no `postgres` account: install the Debian package `postgresql`")
    }))
}

/// A PostgreSQL program, run as `owner`, in `cwd`, with a plain locale.
fn pg_command(bin: &Path, program: &str, owner: Option<Account>, cwd: &Path) -> Command {
    let mut cmd = Command::new(bin.join(program));
    cmd.current_dir(cwd)
        .env("LC_ALL", "C")
        .env("HOME", cwd)
        .env_remove("PGDATA")
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .stdin(Stdio::null());
    if let Some(owner) = owner {
        cmd.uid(owner.uid).gid(owner.gid);
    }
    cmd
}

fn output(cmd: &mut Command) -> Option<Output> {
    cmd.output().ok()
}

/// Superuser over the socket is trusted (the harness's admin path); TCP
/// clients use `auth`; replication over the socket (pg_basebackup, the
/// standby's stream) is trusted.
fn hba(auth: PgAuth) -> String {
    format!(
        "local all all trust\nlocal replication all trust\nhost all all 127.0.0.1/32 {}\n",
        auth.hba_method()
    )
}

/// Appended to postgresql.conf: fast and small, ready for a standby.
fn settings(auth: PgAuth) -> String {
    format!(
        "\n# failoverd test harness\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
         shared_buffers = 16MB\nmax_connections = 50\nwal_level = replica\nmax_wal_senders = 5\n\
         hot_standby = on\npassword_encryption = '{}'\nlog_min_messages = warning\n",
        auth.password_encryption()
    )
}

/// `DIR/sock`, owned by the server's account.
fn socket_dir(dir: &ServerDir, owner: Option<Account>) {
    let sock = dir.join("sock");
    std::fs::create_dir_all(&sock).expect("create socket dir");
    if let Some(owner) = owner {
        std::os::unix::fs::chown(&sock, Some(owner.uid), Some(owner.gid))
            .expect("chown socket dir");
    }
}
