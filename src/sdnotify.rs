//! systemd's readiness protocol (`sd_notify(3)`), without libsystemd: one
//! datagram to `$NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace). With `Type=notify` and `NotifyAccess=all`, `READY=1` tells
//! systemd the proxy is up, and `MAINPID=` moves the unit's main process
//! to the new one during a takeover. Without `$NOTIFY_SOCKET` it does
//! nothing.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Send `state` ("READY=1\nMAINPID=42") to systemd, if it is listening.
pub fn notify(state: &str) -> io::Result<()> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(target) => notify_to(&target, state),
        None => Ok(()),
    }
}

/// Send `state` to the notify socket `target` (a path or `@abstract`).
fn notify_to(target: &std::ffi::OsStr, state: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let bytes = target.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        socket.send_to(state.as_bytes(), target)?;
    }
    Ok(())
}

/// This process is ready and is the unit's main process.
pub fn ready() {
    let state = format!("READY=1\nMAINPID={}", std::process::id());
    if let Err(err) = notify(&state) {
        tracing::warn!(error = %err, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reaches_the_socket_at_a_path() {
        let dir = std::env::temp_dir().join(format!("failoverd-sdnotify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "READY=1\nMAINPID=7").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nMAINPID=7");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_datagram_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("failoverd-sdnotify-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(std::ffi::OsStr::new(&format!("@{name}")), "READY=1").unwrap();
        let mut buf = [0u8; 16];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
