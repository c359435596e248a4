//! Userspace copy for one direction: the portable fallback used when
//! `zero_copy = false`, when splice(2) is unsupported, or off Linux.
//!
//! Same semantics as the splice path: read readiness on the source, write
//! everything read before reading again, pass EOF on as a half-close, and
//! tag errors by side. A direction takes a buffer from a per-thread pool
//! when bytes arrive and gives it back when its source goes idle, so an idle
//! connection holds no buffer (as the splice path holds no pipe); nothing
//! is allocated per chunk.

use std::cell::RefCell;
use std::io::{self, Read};

use socket2::SockRef;
use tokio::io::Interest;

use super::{Direction, tag};

/// Buffer per direction. Matches the default pipe capacity of the splice
/// path, so both paths move similar chunks per wake-up.
pub const COPY_BUFFER_BYTES: usize = 64 * 1024;

/// Idle buffers kept per worker thread; extra ones are freed.
pub const POOL_MAX_BUFFERS_PER_THREAD: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn take_buffer() -> Box<[u8]> {
    POOL.try_with(|pool| pool.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| vec![0; COPY_BUFFER_BYTES].into_boxed_slice())
}

fn put_buffer(buf: Box<[u8]>) {
    let _ = POOL.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOL_MAX_BUFFERS_PER_THREAD {
            pool.push(buf);
        }
    });
}

/// Idle buffers in this thread's pool.
#[cfg(test)]
pub(super) fn pooled_buffers() -> usize {
    POOL.try_with(|pool| pool.borrow().len()).unwrap_or(0)
}

/// Free every idle buffer in this thread's pool (tests).
#[cfg(test)]
pub(super) fn clear_pool() {
    let _ = POOL.try_with(|pool| pool.borrow_mut().clear());
}

/// Copy `dir.src` to `dir.dst` until EOF (then half-close `dst`) or error.
pub(super) async fn run(dir: &Direction<'_>) -> io::Result<()> {
    copy(dir, false).await.map(drop)
}

/// How a copy burst ended.
pub(super) enum Burst {
    /// `src` reached EOF and the half-close was passed on.
    Eof,
    /// A read filled the whole buffer: bulk data, worth splicing.
    Full,
}

/// Copy until EOF, or with `until_full` until a read fills the whole
/// buffer: small request/response traffic costs one read and one write per
/// message here (a short read clears readiness, so no read fails with
/// EAGAIN), and the splice path takes over for bulk (HAProxy's
/// `splice-auto` idea).
pub(super) async fn copy(dir: &Direction<'_>, until_full: bool) -> io::Result<Burst> {
    // Only Some while bytes are moving; handed back when the source idles.
    let mut held: Option<Box<[u8]>> = None;
    loop {
        dir.src.readable().await.map_err(tag(dir.src_side))?;
        let buf = held.get_or_insert_with(take_buffer);
        // A short read means the socket's receive queue is empty: the read
        // reports WouldBlock to tokio so it forgets the read readiness it
        // observed before the read (race-free, as tokio's own `poll_read`
        // does; the closed bits are never cleared, so a queued FIN is still
        // seen), instead of learning it from one more read failing with
        // EAGAIN. `got` carries the bytes out.
        let mut got = 0;
        let read = dir.src.try_io(Interest::READABLE, || {
            let n = (&*SockRef::from(dir.src)).read(buf)?;
            got = n;
            if n > 0 && n < buf.len() {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(n)
            }
        });
        let drained = match read {
            Ok(0) => {
                release(&mut held);
                dir.eof()?;
                return Ok(Burst::Eof);
            }
            Ok(_) => false,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock && got > 0 => true,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                release(&mut held);
                continue;
            }
            Err(err) => return Err(tag(dir.src_side)(err)),
        };
        write_all(dir, &buf[..got]).await?;
        if drained {
            // Idle until the next readiness: hand the buffer back.
            release(&mut held);
        } else if until_full {
            release(&mut held);
            return Ok(Burst::Full);
        }
    }
}

fn release(held: &mut Option<Box<[u8]>>) {
    if let Some(buf) = held.take() {
        put_buffer(buf);
    }
}

/// Write all of `data` to `dir.dst`, waiting for write readiness when the
/// socket buffer is full; counts every successful write.
async fn write_all(dir: &Direction<'_>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        dir.dst.writable().await.map_err(tag(dir.dst_side))?;
        match dir.dst.try_write(data) {
            Ok(0) => return Err(tag(dir.dst_side)(io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                dir.moved(n);
                data = &data[n..];
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(tag(dir.dst_side)(err)),
        }
    }
    Ok(())
}
