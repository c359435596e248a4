//! The demo's built-in backends: a TCP server on 127.0.0.1 that greets every
//! connection with its name and a newline, then echoes what it reads.
//!
//! A backend can be killed (listener and every open connection closed, so
//! new connects are refused) and started again on the same port. It exists
//! only for `failoverd demo`: no limits, no logging, no metrics.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// How long a restart keeps trying to listen on the old port again.
const REBIND_ATTEMPTS: u32 = 100;
const REBIND_PAUSE: Duration = Duration::from_millis(20);
/// Pause after a failed accept (EMFILE and the like) so the loop cannot spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);
const LISTEN_BACKLOG: u32 = 128;

/// One running (or killed) demo backend.
pub struct DemoBackend {
    name: String,
    addr: SocketAddr,
    /// The accept loop; it owns the listener and every open connection.
    task: Option<JoinHandle<()>>,
}

impl DemoBackend {
    /// Listen on an ephemeral port of 127.0.0.1 and start serving.
    pub fn start(name: &str) -> anyhow::Result<DemoBackend> {
        let any_port = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let listener = bind(any_port)
            .with_context(|| format!("backend {name}: cannot listen on {any_port}"))?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("backend {name}: no local address"))?;
        Ok(DemoBackend {
            name: name.to_string(),
            addr,
            task: Some(tokio::spawn(serve(listener, name.to_string()))),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop listening and close every open connection. When this returns,
    /// connects to the port are refused.
    pub async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // Wait for the task to be dropped: its listener and connections
            // are closed only then.
            let _ = task.await;
        }
    }

    /// Listen on the same port again, retrying briefly.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        let listener = rebind(self.addr).await.with_context(|| {
            format!(
                "backend {}: cannot listen on {} again",
                self.name, self.addr
            )
        })?;
        self.task = Some(tokio::spawn(serve(listener, self.name.clone())));
        Ok(())
    }
}

impl Drop for DemoBackend {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // A killed backend leaves its closed connections in TIME_WAIT on this
    // port; SO_REUSEADDR lets it listen there again at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn rebind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let mut attempt = 1;
    loop {
        match bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(err) if attempt >= REBIND_ATTEMPTS => return Err(err),
            Err(_) => attempt += 1,
        }
        tokio::time::sleep(REBIND_PAUSE).await;
    }
}

/// Accept loop. Aborting this task drops `connections`, which aborts (and
/// so closes) every open connection: that is the "kill".
async fn serve(listener: TcpListener, name: String) {
    let mut connections = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                connections.spawn(greet_then_echo(stream, name.clone()));
            }
            Err(_) => tokio::time::sleep(ACCEPT_ERROR_PAUSE).await,
        }
        // Reap finished connections so the set holds only open ones.
        while connections.try_join_next().is_some() {}
    }
}

/// Health checks connect and close at once, so write errors are expected
/// and simply end the connection.
async fn greet_then_echo(mut stream: TcpStream, name: String) {
    let _ = stream.set_nodelay(true);
    if stream
        .write_all(format!("{name}\n").as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let (mut reader, mut writer) = stream.split();
    let _ = tokio::io::copy(&mut reader, &mut writer).await;
}
