//! Moving bytes between an accepted client and its backend, both ways,
//! until both directions are closed.
//!
//! `forward` uses splice(2) through a pipe on Linux (see `splice.rs`, the
//! only module with `unsafe`) and a userspace copy otherwise (`copy.rs`).
//! It must not pick backends, count connections or log per chunk.
//!
//! Both directions run in the caller's task, driven by tokio readiness
//! (`readable`/`writable` + `try_io`), so a connection costs one task and
//! no per-chunk allocation or lock. Each direction passes EOF on as a
//! half-close (`shutdown(Write)` on the other socket). An I/O error ends its
//! direction; the other one still delivers what it had received, bounded by
//! [`DRAIN_AFTER_ERROR`] (see [`forward`]). Errors are tagged with their
//! [`Side`] (see [`error_side`]).

mod copy;
#[cfg(target_os = "linux")]
pub mod splice;

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[cfg(target_os = "linux")]
pub use splice::{POOL_MAX_PIPES_PER_THREAD, pooled_pipes, splice_calls};

/// How one connection is forwarded.
#[derive(Debug, Clone, Copy)]
pub struct ForwardOptions {
    /// Use splice(2) when the kernel supports it.
    pub zero_copy: bool,
    /// Close when neither direction moved a byte for this long.
    pub idle_timeout: Option<Duration>,
    /// Run this on the backend socket once the connection has lived this
    /// long (failoverd arms TCP keepalive there: a connection that ends
    /// sooner never pays its system calls).
    pub backend_later: Option<(Duration, SocketHook)>,
}

/// Something done to a socket later in a connection's life.
pub type SocketHook = fn(&TcpStream) -> io::Result<()>;

/// Byte counters, bumped after every splice/copy call.
#[derive(Clone)]
pub struct ByteCounters {
    pub to_backend: metrics::Counter,
    pub to_client: metrics::Counter,
}

impl ByteCounters {
    /// Counters that count nothing (tests, benches).
    pub fn noop() -> Self {
        ByteCounters {
            to_backend: metrics::Counter::noop(),
            to_client: metrics::Counter::noop(),
        }
    }
}

/// Why forwarding ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Both directions saw EOF and passed it on.
    Closed,
    /// `idle_timeout` passed with no byte moved.
    IdleTimeout,
    /// The cancel token fired (switch with `on_switch = "close"`, shutdown).
    Cancelled,
}

/// Totals for one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    pub to_backend: u64,
    pub to_client: u64,
}

/// After one direction fails, how long the other may still deliver what it
/// had received (a backend's error reply before it closed) and the
/// surviving socket may take to flush it to its peer, before the connection
/// is closed anyway. A client that never reads is not waited for longer.
pub const DRAIN_AFTER_ERROR: Duration = Duration::from_secs(5);

/// How often a closing socket's unacknowledged bytes are looked at while
/// it drains (only after an error, never on the normal path).
#[cfg(target_os = "linux")]
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// Forward both directions until both are closed, the idle timeout fires,
/// or `cancel` is cancelled.
///
/// When one direction fails, the other still delivers what was received
/// (bounded by [`DRAIN_AFTER_ERROR`]) and the surviving socket is flushed
/// before it is closed: a backend's last reply is never dropped. A reset
/// read from one peer is passed on to the other as a reset (SO_LINGER 0);
/// every other end is a normal close. The first error is returned.
pub async fn forward(
    client: TcpStream,
    backend: TcpStream,
    options: ForwardOptions,
    counters: &ByteCounters,
    cancel: &CancellationToken,
) -> std::io::Result<(Outcome, Transferred)> {
    let activity = Activity::new();
    let to_backend = AtomicU64::new(0);
    let to_client = AtomicU64::new(0);
    let upstream = Direction {
        name: "client_to_backend",
        src: &client,
        src_side: Side::Client,
        dst: &backend,
        dst_side: Side::Backend,
        counter: &counters.to_backend,
        total: &to_backend,
        activity: &activity,
    };
    let downstream = Direction {
        name: "backend_to_client",
        src: &backend,
        src_side: Side::Backend,
        dst: &client,
        dst_side: Side::Client,
        counter: &counters.to_client,
        total: &to_client,
        activity: &activity,
    };
    let both = async {
        let ended = both_directions(&upstream, &downstream, options.zero_copy).await;
        ended.close(&client, &backend).await
    };
    let outcome = tokio::select! {
        biased;
        () = cancel.cancelled() => Outcome::Cancelled,
        () = idle(&activity, options.idle_timeout) => Outcome::IdleTimeout,
        never = later(&backend, options.backend_later) => match never {},
        done = both => done.map(|()| Outcome::Closed)?,
    };
    let transferred = Transferred {
        to_backend: to_backend.load(Ordering::Relaxed),
        to_client: to_client.load(Ordering::Relaxed),
    };
    Ok((outcome, transferred))
}

/// How the two directions of one connection ended.
struct Ended {
    /// The first error, tagged with its side.
    error: Option<io::Error>,
    /// Sides whose peer failed (nothing more can reach it): client, backend.
    failed: [bool; 2],
    /// Pass a reset on to this side: the other peer really reset.
    reset: Option<Side>,
    /// Until when the survivor may still drain.
    deadline: Option<Instant>,
}

/// Run both directions to their end. A half-close (EOF) lets the other
/// direction go on for as long as it likes. A failed destination ends its
/// direction only: the other one still carries the failed peer's last
/// bytes, until its own end or [`DRAIN_AFTER_ERROR`]. A failed source ends
/// both at once: everything it sent was delivered, and the other direction
/// would write to a peer that is gone.
async fn both_directions(up: &Direction<'_>, down: &Direction<'_>, zero_copy: bool) -> Ended {
    let up_run = up.run(zero_copy);
    let down_run = down.run(zero_copy);
    tokio::pin!(up_run, down_run);
    let mut ended = Ended {
        error: None,
        failed: [false; 2],
        reset: None,
        deadline: None,
    };
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        let (dir, result) = tokio::select! {
            result = &mut up_run, if !up_done => { up_done = true; (up, result) }
            result = &mut down_run, if !down_done => { down_done = true; (down, result) }
            () = sleep_until_some(ended.deadline) => break,
        };
        let Err(err) = result else { continue };
        let side = error_side(&err).unwrap_or(dir.src_side);
        ended.failed[side.index()] = true;
        let from_source = side == dir.src_side;
        if from_source && err.kind() == io::ErrorKind::ConnectionReset {
            ended.reset.get_or_insert(dir.dst_side);
        }
        tracing::trace!(direction = dir.name, error = %err, "direction failed");
        ended.error.get_or_insert(err);
        if ended.deadline.is_none() {
            ended.deadline = Instant::now().checked_add(DRAIN_AFTER_ERROR);
        }
        if from_source {
            break;
        }
    }
    ended
}

impl Ended {
    /// Flush the surviving socket (bounded), pass a reset on if the other
    /// peer reset, and return the first error.
    async fn close(self, client: &TcpStream, backend: &TcpStream) -> io::Result<()> {
        let Some(error) = self.error else {
            return Ok(());
        };
        for (side, socket) in [(Side::Client, client), (Side::Backend, backend)] {
            if self.failed[side.index()] {
                continue;
            }
            flush(socket, self.deadline).await;
            if self.reset == Some(side) {
                // SO_LINGER 0: close() sends a reset instead of a FIN.
                let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
            }
        }
        Err(error)
    }
}

/// Wait until the peer has acknowledged every byte written to `socket`, or
/// `deadline`: closing a socket that still has unread input resets it, and
/// the reset would drop whatever had not reached the peer yet.
#[cfg(target_os = "linux")]
async fn flush(socket: &TcpStream, deadline: Option<Instant>) {
    use std::os::fd::AsFd;
    while splice::unacked_bytes(socket.as_fd()).is_ok_and(|n| n > 0) {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

#[cfg(not(target_os = "linux"))]
async fn flush(_socket: &TcpStream, _deadline: Option<Instant>) {}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Which socket an error came from. Only backend-side errors should count
/// against a backend (passive health).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::Client => 0,
            Side::Backend => 1,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Backend => "backend",
        })
    }
}

/// An I/O error from one side of the connection. `forward` returns it
/// wrapped in an `io::Error` of the same kind.
#[derive(Debug, thiserror::Error)]
#[error("{side} side: {source}")]
pub struct SideError {
    pub side: Side,
    #[source]
    pub source: io::Error,
}

/// The side an error returned by [`forward`] came from.
pub fn error_side(err: &io::Error) -> Option<Side> {
    err.get_ref()?.downcast_ref::<SideError>().map(|e| e.side)
}

fn tag(side: Side) -> impl FnOnce(io::Error) -> io::Error {
    move |source| io::Error::new(source.kind(), SideError { side, source })
}

/// When a byte last moved, as coarse milliseconds since the connection
/// started; shared by both directions and read by the idle timer. Also
/// whether a direction already reached EOF.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    eof_seen: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            eof_seen: AtomicBool::new(false),
        }
    }

    /// A direction reached EOF; true when the other one already had.
    fn second_eof(&self) -> bool {
        self.eof_seen.swap(true, Ordering::Relaxed)
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        let since = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        // Never past now, so it cannot overflow; checked all the same.
        self.start.checked_add(since).unwrap_or_else(Instant::now)
    }
}

/// Resolves once nothing moved for `timeout`. The timer re-arms to the
/// latest activity when it wakes instead of being reset on every chunk.
async fn idle(activity: &Activity, timeout: Option<Duration>) {
    let Some(timeout) = timeout.filter(|t| !t.is_zero()) else {
        return std::future::pending().await;
    };
    loop {
        // A deadline past what an `Instant` can hold never comes.
        let Some(deadline) = activity.last().checked_add(timeout) else {
            return std::future::pending().await;
        };
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// Runs `what` on `socket` after `after`, then never resolves. A failure
/// is logged and not fatal: the connection goes on without it.
async fn later(
    socket: &TcpStream,
    what: Option<(Duration, SocketHook)>,
) -> std::convert::Infallible {
    if let Some((after, run)) = what {
        tokio::time::sleep(after).await;
        if let Err(err) = run(socket) {
            tracing::debug!(error = %err, "backend socket option failed");
        }
    }
    std::future::pending().await
}

/// One direction of a connection: bytes from `src` to `dst`.
struct Direction<'a> {
    /// For logs: `client_to_backend` or `backend_to_client`.
    name: &'static str,
    src: &'a TcpStream,
    src_side: Side,
    dst: &'a TcpStream,
    dst_side: Side,
    counter: &'a metrics::Counter,
    total: &'a AtomicU64,
    activity: &'a Activity,
}

impl Direction<'_> {
    async fn run(&self, zero_copy: bool) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        if zero_copy && !splice_unsupported() {
            return self.splice().await;
        }
        let _ = zero_copy;
        copy::run(self).await
    }

    /// Account for `n` bytes written to `dst`.
    fn moved(&self, n: usize) {
        let n = n as u64;
        self.counter.increment(n);
        self.total.fetch_add(n, Ordering::Relaxed);
        self.activity.touch();
    }

    /// `src` reached EOF: pass the half-close on to `dst`. When the other
    /// direction already ended the same way, `dst` has nothing left to
    /// read and is closed next, and its close sends the FIN: no
    /// `shutdown` call (one system call fewer per connection).
    fn eof(&self) -> io::Result<()> {
        if self.activity.second_eof() {
            tracing::trace!(direction = self.name, "eof, both directions done");
            return Ok(());
        }
        tracing::trace!(direction = self.name, "eof, shutting down write side");
        socket2::SockRef::from(self.dst)
            .shutdown(std::net::Shutdown::Write)
            .map_err(tag(self.dst_side))
    }
}

/// Set once splice(2) fails with EINVAL/ENOSYS, so later connections go
/// straight to the copy path.
#[cfg(target_os = "linux")]
static SPLICE_UNSUPPORTED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

#[cfg(target_os = "linux")]
fn splice_unsupported() -> bool {
    SPLICE_UNSUPPORTED.load(Ordering::Relaxed)
}

/// A pipe that a fill splice filled to the brim is grown to this size:
/// bulk transfers then move up to 1 MiB per wake-up instead of 64 KiB
/// (1.2-1.5x the single-stream throughput on loopback, half the CPU per GB),
/// while request/response connections keep small pipes and stay within the
/// user's pipe budget. 1 MiB is the default `fs.pipe-max-size`.
#[cfg(target_os = "linux")]
const PIPE_GROWN_BYTES: usize = 1 << 20;

/// Most bytes asked of one socket -> pipe splice; the kernel stops earlier
/// when the pipe is full.
#[cfg(target_os = "linux")]
const SPLICE_CHUNK_BYTES: usize = 1 << 20;

#[cfg(target_os = "linux")]
impl Direction<'_> {
    /// Zero-copy forwarding with a copy front end: small messages are
    /// copied (one read, one write), and once a read fills the copy buffer
    /// the direction splices until its source goes idle again.
    async fn splice(&self) -> io::Result<()> {
        loop {
            if let copy::Burst::Eof = copy::copy(self, true).await? {
                return Ok(());
            }
            match self.splice_burst().await? {
                SpliceEnd::Idle => {}
                SpliceEnd::Eof => return Ok(()),
                SpliceEnd::Unavailable => return copy::run(self).await,
            }
        }
    }

    /// Splice until the source has nothing more to read. The pipe is filled
    /// only when empty, so an EAGAIN from the fill splice always means the
    /// source socket has no data and may clear its read readiness; the
    /// drain splice runs only while the pipe holds bytes, so its EAGAIN
    /// always means `dst` is full.
    async fn splice_burst(&self) -> io::Result<SpliceEnd> {
        use std::os::fd::AsFd;
        use tokio::io::Interest;

        let src_fd = self.src.as_fd();
        let dst_fd = self.dst.as_fd();
        let mut pipe = match splice::take_pipe() {
            Ok(pipe) => pipe,
            Err(err) => {
                // Out of fds or pipe pages: this direction copies.
                tracing::debug!(direction = self.name, error = %err, "no pipe, copying");
                return Ok(SpliceEnd::Unavailable);
            }
        };
        loop {
            self.src.readable().await.map_err(tag(self.src_side))?;
            let filled = self.src.try_io(Interest::READABLE, || {
                pipe.fill_from(src_fd, SPLICE_CHUNK_BYTES)
            });
            match filled {
                Ok(0) => {
                    splice::put_pipe(pipe);
                    self.eof()?;
                    return Ok(SpliceEnd::Eof);
                }
                Ok(n) => {
                    if n >= pipe.capacity() {
                        pipe.grow(PIPE_GROWN_BYTES);
                    }
                    self.drain(&mut pipe, dst_fd).await?;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    // Idle: hand the empty pipe back until data arrives.
                    splice::put_pipe(pipe);
                    return Ok(SpliceEnd::Idle);
                }
                Err(err) if is_unsupported(&err) => {
                    tracing::debug!(direction = self.name, error = %err, "splice unsupported, copying");
                    SPLICE_UNSUPPORTED.store(true, Ordering::Relaxed);
                    splice::put_pipe(pipe);
                    return Ok(SpliceEnd::Unavailable);
                }
                Err(err) => return Err(tag(self.src_side)(err)),
            }
        }
    }

    /// Splice everything in `pipe` out to `dst`, waiting while it is full.
    async fn drain(
        &self,
        pipe: &mut splice::Pipe,
        dst_fd: std::os::fd::BorrowedFd<'_>,
    ) -> io::Result<()> {
        while !pipe.is_empty() {
            self.dst.writable().await.map_err(tag(self.dst_side))?;
            match self
                .dst
                .try_io(tokio::io::Interest::WRITABLE, || pipe.drain_to(dst_fd))
            {
                Ok(0) => return Err(tag(self.dst_side)(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.moved(n),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(tag(self.dst_side)(err)),
            }
        }
        Ok(())
    }
}

/// How a splice burst ended.
#[cfg(target_os = "linux")]
enum SpliceEnd {
    /// The source had nothing more to read; the pipe went back to the pool.
    Idle,
    /// The source reached EOF and the half-close was passed on.
    Eof,
    /// No pipe could be had, or the kernel cannot splice these sockets.
    Unavailable,
}

#[cfg(target_os = "linux")]
fn is_unsupported(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS))
}

#[cfg(all(test, target_os = "linux"))]
mod tests;
