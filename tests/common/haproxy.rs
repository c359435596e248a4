//! A real HAProxy (Debian package `haproxy`) for tests: in the foreground
//! (`-db`) on free loopback ports with its config in a temp dir, its log
//! (`log stdout`) collected line by line, stopped by PID on drop.
//!
//! Needs the sibling modules `server`, `tempdir` and `net`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::net::free_port;
use super::server::find_binary;
use super::tempdir::TempDir;

/// A running HAProxy.
pub struct HaProxy {
    child: Child,
    /// The frontend under test.
    pub front: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

impl HaProxy {
    /// `sections(front)` returns the frontend/backend sections; `front` is the
    /// free port chosen for the frontend under test. A port taken in the
    /// meantime makes HAProxy exit: then try again with fresh ports.
    pub async fn start(sections: impl Fn(SocketAddr) -> String) -> HaProxy {
        let binary = find_binary("haproxy", "haproxy");
        let mut last_error = String::new();
        for _attempt in 0..5 {
            let front = free_port();
            let ready = free_port();
            let dir = TempDir::new("haproxy");
            let config = dir.0.join("haproxy.cfg");
            std::fs::write(&config, config_text(ready, &sections(front))).expect("config");
            let mut child = Command::new(&binary)
                .arg("-db")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn haproxy");
            let log = Arc::new(Mutex::new(Vec::new()));
            collect_lines(child.stdout.take(), Arc::clone(&log));
            let stderr = Arc::new(Mutex::new(Vec::new()));
            collect_lines(child.stderr.take(), Arc::clone(&stderr));
            let mut haproxy = HaProxy {
                child,
                front,
                log,
                _dir: dir,
            };
            if haproxy.wait_listening(ready).await {
                return haproxy;
            }
            last_error = stderr.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
        }
        panic!("haproxy did not start: {last_error}");
    }

    /// Listening on the `ready` frontend (bound with all the others), or
    /// exited (a port collision), within 10 s.
    async fn wait_listening(&mut self, ready: SocketAddr) -> bool {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if TcpStream::connect(ready).await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Wait up to 5 s for a log line containing `needle`.
    pub async fn wait_log(&self, needle: &str) -> String {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let lines = self.log.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(line) = lines.iter().find(|line| line.contains(needle)) {
                return line.clone();
            }
            assert!(
                Instant::now() < until,
                "no haproxy log line with {needle:?}; got {lines:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect_lines(pipe: Option<impl std::io::Read + Send + 'static>, into: Arc<Mutex<Vec<String>>>) {
    let Some(pipe) = pipe else { return };
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            into.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    });
}

fn config_text(ready: SocketAddr, sections: &str) -> String {
    format!(
        "global\n    maxconn 100\n    nbthread 1\n    log stdout format raw local0\n\n\
         defaults\n    mode tcp\n    log global\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\n\
         frontend ready\n    bind {ready}\n    tcp-request connection reject\n\n\
         {sections}\n"
    )
}
