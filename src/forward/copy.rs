//! Userspace copy for one direction: the portable fallback used when
//! `zero_copy = false`, when splice(2) is unsupported, or off Linux.
//!
//! Same semantics as the splice path: read readiness on the source, write
//! everything read before reading again, pass EOF on as a half-close, and
//! tag errors by side. One buffer per direction, allocated when the first
//! byte arrives and reused for the connection's life; nothing per chunk.

use std::io;

use super::{Direction, tag};

/// Buffer per direction. Matches the default pipe capacity of the splice
/// path, so both paths move similar chunks per wake-up.
pub const COPY_BUFFER_BYTES: usize = 64 * 1024;

/// Copy `dir.src` to `dir.dst` until EOF (then half-close `dst`) or error.
pub(super) async fn run(dir: &Direction<'_>) -> io::Result<()> {
    // Allocated lazily so a connection that never sends holds no buffer.
    let mut buf: Option<Box<[u8]>> = None;
    loop {
        dir.src.readable().await.map_err(tag(dir.src_side))?;
        let buf = buf.get_or_insert_with(|| vec![0; COPY_BUFFER_BYTES].into_boxed_slice());
        let n = match dir.src.try_read(buf) {
            Ok(0) => return dir.eof(),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
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
