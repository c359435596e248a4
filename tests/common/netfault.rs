//! Network faults a test makes and undoes itself: a network namespace of
//! its own ([`Netns`], with loopback up, for sysctls that must not touch
//! the host), an nftables table that black-holes a port ([`Nft`]), and a
//! connect from a fixed local port ([`connect_from`]). Everything is
//! removed in `Drop`, so a failing test leaves no rule or namespace.
//!
//! Needs root and the Debian packages `iproute2` and `nftables` (installed
//! once when missing, see `server::find_binary`); the one `unsafe` here is
//! setns(2) on a scoped thread.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::server::find_binary;

/// Tells the names of one test binary's namespaces and tables apart.
static INSTANCE: AtomicUsize = AtomicUsize::new(0);

/// How long [`connect_from`] waits for the handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Run a command to completion; panics with its stderr on failure.
fn run(program: &Path, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An nftables table of this test's own, deleted on drop.
pub struct Nft {
    nft: PathBuf,
    table: String,
}

impl Nft {
    /// Drop every packet this host sends to or from TCP `port` (loopback
    /// included): a black-holed server, whose peers retransmit into silence.
    pub fn drop_port(port: u16) -> Nft {
        let nft = Nft {
            nft: find_binary("nft", "nftables"),
            table: format!(
                "failoverd_test_{}_{}",
                std::process::id(),
                INSTANCE.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let table = nft.table.as_str();
        run(&nft.nft, &["add", "table", "inet", table]);
        run(
            &nft.nft,
            &[
                "add",
                "chain",
                "inet",
                table,
                "out",
                "{ type filter hook output priority 0; }",
            ],
        );
        let port = port.to_string();
        for side in ["dport", "sport"] {
            run(
                &nft.nft,
                &[
                    "add", "rule", "inet", table, "out", "tcp", side, &port, "drop",
                ],
            );
        }
        nft
    }
}

impl Drop for Nft {
    fn drop(&mut self) {
        let _ = Command::new(&self.nft)
            .args(["delete", "table", "inet", self.table.as_str()])
            .output();
    }
}

/// A blocking connect to `to` from 127.0.0.1:`port` (no ephemeral port
/// needed); the stream is non-blocking, ready for tokio.
pub fn connect_from(port: u16, to: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    socket.connect_timeout(&to.into(), CONNECT_TIMEOUT)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A network namespace of the test's own with loopback up, deleted on
/// drop (drop the processes in it first).
pub struct Netns {
    pub name: String,
    ip: PathBuf,
}

impl Netns {
    pub fn new() -> Netns {
        let name = format!(
            "failoverd-test-{}-{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        );
        let ip = find_binary("ip", "iproute2");
        run(&ip, &["netns", "add", &name]);
        let ns = Netns { name, ip };
        run(&ns.ip, &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// The command that runs a program inside: `ip netns exec NAME` (for
    /// `Launch::through`).
    pub fn exec_prefix(&self) -> Vec<String> {
        vec![
            self.ip.display().to_string(),
            "netns".to_string(),
            "exec".to_string(),
            self.name.clone(),
        ]
    }

    /// `sysctl -w key=value` inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        let setting = format!("{key}={value}");
        run(
            &self.ip,
            &["netns", "exec", &self.name, "sysctl", "-q", "-w", &setting],
        );
    }

    /// Run `f` on a thread inside the namespace: sockets it creates
    /// belong to the namespace wherever they are used afterwards.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = Path::new("/run/netns").join(&self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let ns = std::fs::File::open(&path).expect("open the namespace");
                    enter_netns(&ns);
                    f()
                })
                .join()
                .expect("namespace thread")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new(&self.ip)
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Move this thread (only) into the network namespace `ns`.
#[allow(unsafe_code)]
fn enter_netns(ns: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: setns(2) takes an open namespace fd, borrowed for the call,
    // and a flag; it changes only the calling thread, a scoped thread of
    // `Netns::run` that ends when `f` returns.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}
