//! The only `unsafe` code of the data path: owned pipes and safe wrappers
//! around pipe2(2), splice(2), fcntl(F_SETPIPE_SZ) and ioctl(SIOCOUTQ),
//! plus a per-thread pool of idle pipes.
//!
//! Zero-copy forwarding moves bytes socket -> pipe -> socket inside the
//! kernel. A direction holds a pipe only while it has bytes in flight and
//! hands it back to the pool when it goes idle, so an idle connection holds
//! no pipe (HAProxy's `maxpipes` idea). The pool is a `thread_local!`, so
//! taking and returning a pipe never locks; only empty pipes go back.
//!
//! This module knows nothing about tokio or readiness: callers run these
//! calls inside `TcpStream::try_io` so that `EAGAIN` clears readiness.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicU64, Ordering};

/// SPLICE_F_MOVE is only a hint; SPLICE_F_NONBLOCK makes the pipe side
/// non-blocking (the sockets are already O_NONBLOCK under tokio).
const SPLICE_FLAGS: libc::c_uint = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;

/// Idle pipes kept per worker thread; extra pipes are closed. Each pipe is
/// two fds and holds no buffer pages while empty, but its capacity counts
/// against the user's `fs.pipe-user-pages-soft` (64 MiB by default), so
/// the pool stays small and its pipes are shrunk to [`POOLED_PIPE_BYTES`]:
/// 16 pooled pipes are 1 MiB of that budget.
pub const POOL_MAX_PIPES_PER_THREAD: usize = 16;

/// The capacity a pipe is given back before it goes into the pool: the
/// kernel's default (16 pages). A pipe a bulk transfer grew to 1 MiB would
/// otherwise sit idle at 1 MiB, and a few workers' pools would use up the
/// user's `fs.pipe-user-pages-soft`, after which every new pipe gets one
/// page and throughput collapses (an unprivileged user such as systemd's
/// `DynamicUser` is subject to it).
pub const POOLED_PIPE_BYTES: usize = 64 * 1024;

/// Pipes grown past their size since start, process-wide (tests).
static PIPES_GROWN: AtomicU64 = AtomicU64::new(0);

/// How many times a pipe was grown in this process.
pub fn pipes_grown() -> u64 {
    PIPES_GROWN.load(Ordering::Relaxed)
}

/// Successful splice(2) calls since start, process-wide.
static SPLICE_CALLS: AtomicU64 = AtomicU64::new(0);

/// How many splice(2) calls succeeded in this process (evidence that the
/// zero-copy path really runs).
pub fn splice_calls() -> u64 {
    SPLICE_CALLS.load(Ordering::Relaxed)
}

/// Move up to `len` bytes from `from` to `to` with splice(2); one of them
/// must be a pipe. Returns 0 at EOF of `from`. `WouldBlock` means the
/// non-pipe side (or a full/empty pipe) would block.
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: both fds are borrowed, so they stay open for the whole call;
    // null offsets are required for pipes and valid for sockets; splice
    // reads no memory of ours.
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            null_mut(),
            to.as_raw_fd(),
            null_mut(),
            len,
            SPLICE_FLAGS,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    SPLICE_CALLS.fetch_add(1, Ordering::Relaxed);
    // n >= 0 and never more than `len`, so it fits in usize.
    Ok(n as usize)
}

/// Set the capacity of a pipe with fcntl(F_SETPIPE_SZ); returns the size
/// the kernel actually chose (rounded up to a power-of-two of pages).
pub fn set_pipe_size(pipe: BorrowedFd<'_>, bytes: usize) -> io::Result<usize> {
    let bytes = libc::c_int::try_from(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pipe size too large"))?;
    // SAFETY: the fd is borrowed and open for the call; F_SETPIPE_SZ takes
    // an int argument and touches no memory of ours.
    let n = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Read a pipe's capacity with fcntl(F_GETPIPE_SZ).
pub fn pipe_size(pipe: BorrowedFd<'_>) -> io::Result<usize> {
    // SAFETY: the fd is borrowed and open for the call; F_GETPIPE_SZ takes
    // no argument and touches no memory of ours.
    let n = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Bytes written to a TCP socket that its peer has not acknowledged yet
/// (ioctl SIOCOUTQ, which Linux spells TIOCOUTQ): 0 once everything sent
/// has reached the peer's kernel.
pub fn unacked_bytes(socket: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: the fd is borrowed and open for the call; SIOCOUTQ writes one
    // int through the pointer, which points at `n`, alive for the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// A non-blocking, close-on-exec pipe that remembers how many bytes it
/// holds and how many it can hold. Both ends are closed on drop.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes spliced in and not yet spliced out.
    len: usize,
    /// What the kernel says the pipe holds at most.
    capacity: usize,
}

impl Pipe {
    /// Create a pipe with pipe2(O_NONBLOCK | O_CLOEXEC).
    pub fn new() -> io::Result<Pipe> {
        let mut fds = [-1 as libc::c_int; 2];
        // SAFETY: `fds` is a valid, writable array of two ints, as pipe2
        // requires.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody
        // else; each is wrapped exactly once.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let capacity = pipe_size(write.as_fd())?;
        Ok(Pipe {
            read,
            write,
            len: 0,
            capacity,
        })
    }

    /// Bytes the pipe can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Grow the pipe to `bytes` if it is smaller; best effort (the kernel
    /// refuses past `fs.pipe-max-size` or the user's pipe budget, and the
    /// pipe then keeps working at its current size).
    pub fn grow(&mut self, bytes: usize) {
        if self.capacity >= bytes {
            return;
        }
        if let Ok(size) = set_pipe_size(self.write.as_fd(), bytes) {
            self.capacity = size;
            PIPES_GROWN.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Shrink an empty pipe back to `bytes` if it is larger; false if the
    /// kernel refused (the pipe should then be closed, not kept).
    pub fn shrink(&mut self, bytes: usize) -> bool {
        if self.capacity <= bytes {
            return true;
        }
        match set_pipe_size(self.write.as_fd(), bytes) {
            Ok(size) => {
                self.capacity = size;
                true
            }
            Err(_) => false,
        }
    }

    /// Bytes currently in the pipe.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when every byte spliced in has been spliced out.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Splice up to `max` bytes from `from` into the pipe; 0 means EOF.
    pub fn fill_from(&mut self, from: BorrowedFd<'_>, max: usize) -> io::Result<usize> {
        let n = splice(from, self.write.as_fd(), max)?;
        self.len += n;
        Ok(n)
    }

    /// Splice as many buffered bytes as `to` accepts out of the pipe.
    pub fn drain_to(&mut self, to: BorrowedFd<'_>) -> io::Result<usize> {
        let n = splice(self.read.as_fd(), to, self.len)?;
        self.len -= n.min(self.len);
        Ok(n)
    }
}

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// Take an idle pipe from this thread's pool, or create one at the
/// kernel's default capacity (see [`Pipe::grow`]).
pub fn take_pipe() -> io::Result<Pipe> {
    if let Some(pipe) = POOL.try_with(|pool| pool.borrow_mut().pop()).ok().flatten() {
        return Ok(pipe);
    }
    Pipe::new()
}

/// Return a pipe to this thread's pool, shrunk back to
/// [`POOLED_PIPE_BYTES`]. A pipe that still holds bytes, one that cannot be
/// shrunk, or one beyond the pool's cap, is closed instead.
pub fn put_pipe(mut pipe: Pipe) {
    if !pipe.is_empty() || !pipe.shrink(POOLED_PIPE_BYTES) {
        return;
    }
    // If the thread-local is gone (thread exit) the pipe is simply dropped.
    let _ = POOL.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOL_MAX_PIPES_PER_THREAD {
            pool.push(pipe);
        }
    });
}

/// Idle pipes in this thread's pool.
pub fn pooled_pipes() -> usize {
    POOL.try_with(|pool| pool.borrow().len()).unwrap_or(0)
}

/// The capacity of every idle pipe in this thread's pool, as the kernel
/// reports it (F_GETPIPE_SZ).
pub fn pooled_pipe_sizes() -> Vec<usize> {
    POOL.try_with(|pool| {
        pool.borrow()
            .iter()
            .filter_map(|pipe| pipe_size(pipe.write.as_fd()).ok())
            .collect()
    })
    .unwrap_or_default()
}

/// Close every idle pipe in this thread's pool (tests).
#[cfg(test)]
pub(crate) fn clear_pool() {
    let _ = POOL.try_with(|pool| pool.borrow_mut().clear());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        (a, b)
    }

    #[test]
    fn pipe_moves_bytes_between_sockets() {
        let (mut src_user, src) = socket_pair();
        let (dst, mut dst_user) = socket_pair();
        src_user.write_all(b"hello splice").unwrap();
        src_user.shutdown(std::net::Shutdown::Write).unwrap();

        let before = splice_calls();
        let mut pipe = Pipe::new().unwrap();
        let mut moved = 0;
        loop {
            // Blocking socket: splice waits for data or EOF.
            let n = pipe.fill_from(src.as_fd(), 1 << 16).unwrap();
            if n == 0 {
                break;
            }
            while !pipe.is_empty() {
                moved += pipe.drain_to(dst.as_fd()).unwrap();
            }
        }
        drop(dst);
        let mut got = Vec::new();
        dst_user.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello splice");
        assert_eq!(moved, got.len());
        assert!(splice_calls() >= before + 3);
    }

    #[test]
    fn splice_from_empty_nonblocking_pipe_would_block() {
        let mut pipe = Pipe::new().unwrap();
        let (dst, _dst_user) = socket_pair();
        pipe.len = 1; // pretend, so drain_to asks for one byte
        let err = pipe.drain_to(dst.as_fd()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        pipe.len = 0;
    }

    #[test]
    fn set_pipe_size_grows_capacity() {
        let mut pipe = Pipe::new().unwrap();
        assert_eq!(pipe.capacity(), pipe_size(pipe.write.as_fd()).unwrap());
        pipe.grow(256 * 1024);
        assert_eq!(pipe.capacity(), pipe_size(pipe.write.as_fd()).unwrap());
        assert!(pipe.capacity() >= 256 * 1024);
        pipe.grow(1 << 20);
        assert_eq!(pipe.capacity(), 1 << 20);
        pipe.grow(4096);
        assert_eq!(pipe.capacity(), 1 << 20, "grow never shrinks");
    }

    #[test]
    fn pool_keeps_empty_pipes_and_closes_others() {
        // The pool is per thread; start from empty even if tests share one.
        clear_pool();
        let pipe = take_pipe().unwrap();
        put_pipe(pipe);
        assert_eq!(pooled_pipes(), 1);

        let mut dirty = take_pipe().unwrap();
        assert_eq!(pooled_pipes(), 0, "take reuses the pooled pipe");
        dirty.len = 3;
        put_pipe(dirty);
        assert_eq!(pooled_pipes(), 0, "a pipe with bytes is closed");
    }

    #[test]
    fn pool_is_capped() {
        clear_pool();
        let pipes: Vec<Pipe> = (0..POOL_MAX_PIPES_PER_THREAD + 5)
            .map(|_| Pipe::new().unwrap())
            .collect();
        for pipe in pipes {
            put_pipe(pipe);
        }
        assert_eq!(pooled_pipes(), POOL_MAX_PIPES_PER_THREAD);
    }
}
