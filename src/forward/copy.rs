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
use std::io;

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
    // Only Some while bytes are moving; handed back when the source idles.
    let mut held: Option<Box<[u8]>> = None;
    loop {
        dir.src.readable().await.map_err(tag(dir.src_side))?;
        let buf = held.get_or_insert_with(take_buffer);
        let n = match dir.src.try_read(buf) {
            Ok(0) => return dir.eof(),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                if let Some(buf) = held.take() {
                    put_buffer(buf);
                }
                continue;
            }
            Err(err) => return Err(tag(dir.src_side)(err)),
        };
        write_all(dir, &buf[..n]).await?;
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
