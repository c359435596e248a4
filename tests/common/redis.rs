//! A real `redis-server` (Debian package `redis-server`) for tests: on a
//! free loopback port, in its own temporary directory, no persistence,
//! with optional `requirepass` and ACL users, as a replica of another one
//! (`replicaof`), promotable (`REPLICAOF NO ONE`), killed by PID (SIGKILL)
//! and waited for on drop.
//!
//! Needs the sibling module `server` (tests/common/server.rs) as
//! `super::server`. Admin commands go through `redis-cli` (shipped with the
//! server), never through failoverd's own probe.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::server::{self, ServerDir};

/// How long a server may take to answer its first PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at a free port before giving up.
const PORT_ATTEMPTS: usize = 5;

/// How to start a server.
#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    /// `requirepass`: the default user's password.
    pub requirepass: Option<String>,
    /// ACL users `(name, password)` with every permission.
    pub users: Vec<(String, String)>,
    /// Start as a replica of this server (with its password as `masterauth`).
    pub replica_of: Option<(SocketAddr, Option<String>)>,
}

/// A running `redis-server`.
pub struct RedisServer {
    pub addr: SocketAddr,
    /// The default user's password, used for admin commands.
    pub requirepass: Option<String>,
    /// The ACL users it was started with (a replica gets them too).
    pub users: Vec<(String, String)>,
    child: Child,
    cli: PathBuf,
    dir: ServerDir,
}

impl RedisServer {
    /// A primary without a password.
    pub fn primary() -> RedisServer {
        RedisServer::start(&RedisOptions::default())
    }

    /// Start a server with `options`; panics with its log if it will not run.
    pub fn start(options: &RedisOptions) -> RedisServer {
        let bin = server::find_binary("redis-server", "redis-server");
        let cli = server::find_binary("redis-cli", "redis-tools");
        let dir = ServerDir::new("redis", None);
        for _ in 0..PORT_ATTEMPTS {
            let port = server::free_port();
            let conf = dir.join("redis.conf");
            std::fs::write(&conf, config(options, port, &dir)).expect("write redis.conf");
            let log = dir.join("redis.log");
            let _ = std::fs::remove_file(&log);
            let mut child = Command::new(&bin)
                .arg(&conf)
                .current_dir(&dir.path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            match wait_ready(&mut child, &cli, port) {
                Ok(()) => {
                    return RedisServer {
                        addr: server::loopback(port),
                        requirepass: options.requirepass.clone(),
                        users: options.users.clone(),
                        child,
                        cli,
                        dir,
                    };
                }
                Err(()) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log_text = server::log_tail(&log);
                    // Lost the port to someone else: try another one.
                    if !log_text.contains("Address already in use") {
                        panic!("redis-server did not start:\n{log_text}");
                    }
                }
            }
        }
        panic!("redis-server: no free loopback port after {PORT_ATTEMPTS} attempts");
    }

    /// A replica of this server (same passwords and users), already
    /// replicating.
    pub fn replica(&self) -> RedisServer {
        let replica = RedisServer::start(&RedisOptions {
            requirepass: self.requirepass.clone(),
            users: self.users.clone(),
            replica_of: Some((self.addr, self.requirepass.clone())),
        });
        let up = server::wait_until(START_TIMEOUT, || {
            replica
                .command(&["INFO", "replication"])
                .contains("master_link_status:up")
        });
        assert!(
            up,
            "redis replica {} never linked to {}",
            replica.addr, self.addr
        );
        replica
    }

    /// `REPLICAOF NO ONE`: make this replica a master.
    pub fn promote(&self) {
        let reply = self.command(&["REPLICAOF", "NO", "ONE"]);
        assert!(reply.starts_with("OK"), "promote {}: {reply}", self.addr);
    }

    /// The first line of `ROLE`'s reply: "master", "slave".
    pub fn role(&self) -> String {
        self.command(&["ROLE"])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// Run one command as the default user with `redis-cli`; its output.
    pub fn command(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(&self.cli);
        cmd.args(["-h", "127.0.0.1", "-p", &self.addr.port().to_string()]);
        if let Some(password) = &self.requirepass {
            cmd.args(["--no-auth-warning", "-a", password]);
        }
        let out = server::run_ok(cmd.args(args), "redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kill the server (SIGKILL) and wait for it: connects are refused after.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The config file: loopback only, no persistence, fast replication.
fn config(options: &RedisOptions, port: u16, dir: &ServerDir) -> String {
    let mut conf = format!(
        "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {}\nlogfile {}\n\
         save \"\"\nappendonly no\nrepl-diskless-sync yes\nrepl-diskless-sync-delay 0\n",
        dir.path.display(),
        dir.join("redis.log").display()
    );
    if let Some(password) = &options.requirepass {
        conf.push_str(&format!("requirepass {}\n", quote(password)));
    }
    for (user, password) in &options.users {
        conf.push_str(&format!("user {user} on >{password} ~* &* +@all\n"));
    }
    if let Some((primary, auth)) = &options.replica_of {
        conf.push_str(&format!("replicaof {} {}\n", primary.ip(), primary.port()));
        if let Some(password) = auth {
            conf.push_str(&format!("masterauth {}\n", quote(password)));
        }
    }
    conf
}

fn quote(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Wait for the first answer to PING; Err when the server exited or never
/// answered within [`START_TIMEOUT`].
fn wait_ready(child: &mut Child, cli: &PathBuf, port: u16) -> Result<(), ()> {
    let port = port.to_string();
    let mut exited = false;
    let ready = server::wait_until(START_TIMEOUT, || {
        if matches!(child.try_wait(), Ok(Some(_))) {
            exited = true;
            return true;
        }
        // Any answer, NOAUTH included, means the server is serving.
        Command::new(cli)
            .args(["-h", "127.0.0.1", "-p", &port, "PING"])
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| !o.stdout.is_empty() && !o.stdout.starts_with(b"Could not"))
    });
    if ready && !exited { Ok(()) } else { Err(()) }
}
