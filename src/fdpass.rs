//! File descriptors plus a payload over a Unix stream socket (`SCM_RIGHTS`),
//! for `run --takeover`: the old process hands its listening sockets and a
//! description of them (its health state) to the new one.
//!
//! One frame is a 12-byte head — the magic `FDP1`, the payload length and the
//! descriptor count, both u32 big-endian — then the payload. The descriptors
//! ride on the first byte of the head, so they arrive with the read that
//! takes it. Received descriptors are owned and close-on-exec; truncated
//! control data is an error, never a silent loss. This module only moves
//! bytes and descriptors: what they mean is the caller's business. It uses
//! rustix's safe `sendmsg`/`recvmsg`, so it needs no `unsafe`.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::io::Interest;
use tokio::net::UnixStream;

/// The first bytes of every frame: a peer speaking something else fails fast.
const MAGIC: &[u8; 4] = b"FDP1";
/// Magic, payload length, descriptor count.
const HEAD_BYTES: usize = 12;
/// The kernel's limit on descriptors in one message (`SCM_MAX_FD`).
pub const MAX_FDS_PER_FRAME: usize = 253;

/// Send `payload` and `fds` as one frame. The descriptors stay open here: the
/// peer gets duplicates. At most [`MAX_FDS_PER_FRAME`] descriptors.
pub async fn send_fds(
    stream: &UnixStream,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    if fds.len() > MAX_FDS_PER_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "cannot pass {} descriptors in one frame: the limit is {MAX_FDS_PER_FRAME}; send several frames",
                fds.len()
            ),
        ));
    }
    let payload_len = u32::try_from(payload.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "payload of {} bytes does not fit a frame (4 GiB at most)",
                payload.len()
            ),
        )
    })?;
    let mut head = [0u8; HEAD_BYTES];
    head[..4].copy_from_slice(MAGIC);
    head[4..8].copy_from_slice(&payload_len.to_be_bytes());
    head[8..].copy_from_slice(&(fds.len() as u32).to_be_bytes());

    let sent = send_head_with_fds(stream, &head, payload, fds).await?;
    // sendmsg may take only part of a large payload; the descriptors went
    // with its first byte, so the rest is plain stream data.
    let head_sent = sent.min(HEAD_BYTES);
    write_all(stream, &head[head_sent..]).await?;
    write_all(stream, &payload[sent - head_sent..]).await
}

/// One `sendmsg` carrying the descriptors; returns how many bytes it took.
async fn send_head_with_fds(
    stream: &UnixStream,
    head: &[u8],
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other(
            "control buffer too small for the descriptors",
        ));
    }
    let iov = [IoSlice::new(head), IoSlice::new(payload)];
    loop {
        stream.writable().await?;
        let result = stream.try_io(Interest::WRITABLE, || {
            rustix::net::sendmsg(stream, &iov, &mut control, SendFlags::NOSIGNAL)
                .map_err(io::Error::from)
        });
        match result {
            Ok(sent) => return Ok(sent),
            Err(err) if retry(&err) => {}
            Err(err) => return Err(err),
        }
    }
}

async fn write_all(stream: &UnixStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
        match stream.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(err) if retry(&err) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Receive one frame: its payload (at most `max_payload` bytes) and its
/// descriptors (at most `max_fds`, capped at [`MAX_FDS_PER_FRAME`]), owned and
/// close-on-exec. A frame over either limit, a wrong magic, a descriptor count
/// that differs from the head, truncated control data or an early close is an
/// error; descriptors received before the error are closed.
pub async fn recv_fds(
    stream: &UnixStream,
    max_payload: usize,
    max_fds: usize,
) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let max_fds = max_fds.min(MAX_FDS_PER_FRAME);
    let mut head = [0u8; HEAD_BYTES];
    let mut fds = Vec::new();
    let mut got = 0;
    while got < HEAD_BYTES {
        got += recv_head_part(stream, &mut head[got..], max_fds, &mut fds).await?;
    }
    if &head[..4] != MAGIC {
        return Err(invalid(format!(
            "the peer sent \"{}\", not a descriptor frame: is it a failoverd of the same version?",
            head[..4].escape_ascii()
        )));
    }
    let payload_len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
    let fd_count = u32::from_be_bytes([head[8], head[9], head[10], head[11]]) as usize;
    if payload_len > max_payload {
        return Err(invalid(format!(
            "frame payload of {payload_len} bytes is above the limit of {max_payload}"
        )));
    }
    if fd_count != fds.len() {
        return Err(invalid(format!(
            "frame announced {fd_count} descriptors but {} arrived",
            fds.len()
        )));
    }
    let mut payload = vec![0u8; payload_len];
    read_exact(stream, &mut payload).await?;
    Ok((payload, fds))
}

/// One `recvmsg` into `buf`, collecting any descriptors into `fds`.
async fn recv_head_part(
    stream: &UnixStream,
    buf: &mut [u8],
    max_fds: usize,
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    // Room for one more than allowed: a peer that sends too many shows as
    // "too many", not as truncated control data.
    let room = max_fds.saturating_add(1);
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(room))];
    loop {
        stream.readable().await?;
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let result = stream.try_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(buf)];
            rustix::net::recvmsg(stream, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
                .map_err(io::Error::from)
        });
        let msg = match result {
            Ok(msg) => msg,
            Err(err) if retry(&err) => continue,
            Err(err) => return Err(err),
        };
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if msg.flags.contains(ReturnFlags::CTRUNC) {
            return Err(invalid(format!(
                "descriptor control data was truncated (more than {max_fds} descriptors?)"
            )));
        }
        if fds.len() > max_fds {
            return Err(invalid(format!(
                "the peer sent more than {max_fds} descriptors"
            )));
        }
        if msg.bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the socket before a whole descriptor frame arrived",
            ));
        }
        return Ok(msg.bytes);
    }
}

async fn read_exact(stream: &UnixStream, buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        stream.readable().await?;
        match stream.try_read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the peer closed the socket after {filled} of {} payload bytes",
                        buf.len()
                    ),
                ));
            }
            Ok(n) => filled += n,
            Err(err) if retry(&err) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

fn retry(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}
