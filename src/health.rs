//! Active health checks: one probe of a backend (resolve, TCP connect,
//! optional `check_send` / `check_expect`) and the rise/fall hysteresis that
//! turns a stream of probe results into an up/down state.
//!
//! This module only measures and counts. It does not choose the active
//! backend (that is [`crate::decide`]), does not schedule checks, log, or
//! record metrics; the caller owns the check loop and reports state flips.
//! A probe never sends anything but `check_send` and never keeps its socket.

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use crate::config::BackendAddress;
use crate::conn;

/// Rise/fall hysteresis for one backend: `fall` consecutive failed checks turn
/// it down, `rise` consecutive good checks turn it up again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    pub up: bool,
    /// Length of the current run of good checks (0 after a failure).
    pub consecutive_ok: u32,
    /// Length of the current run of failed checks (0 after a success); keeps
    /// counting while down, for `ctl status`.
    pub consecutive_fail: u32,
}

impl Hysteresis {
    /// The start-up state: backends start up (SPEC.md).
    pub fn new_up() -> Self {
        Hysteresis {
            up: true,
            consecutive_ok: 0,
            consecutive_fail: 0,
        }
    }

    /// Record one check result; returns Some(new_up) when the state flips.
    ///
    /// `rise` and `fall` of 0 are treated as 1 (validation rejects them).
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok {
            self.consecutive_ok = self.consecutive_ok.saturating_add(1);
            self.consecutive_fail = 0;
            if !self.up && self.consecutive_ok >= rise.max(1) {
                self.up = true;
                return Some(true);
            }
        } else {
            self.consecutive_fail = self.consecutive_fail.saturating_add(1);
            self.consecutive_ok = 0;
            if self.up && self.consecutive_fail >= fall.max(1) {
                self.up = false;
                return Some(false);
            }
        }
        None
    }

    /// Force down (passive detection), resetting counters; returns true if it flipped.
    ///
    /// Coming back up then takes `rise` good checks, as after any fall.
    pub fn force_down(&mut self) -> bool {
        let flipped = self.up;
        self.up = false;
        self.consecutive_ok = 0;
        self.consecutive_fail = 0;
        flipped
    }
}

/// The step of a probe that ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeStage {
    Resolve,
    Connect,
    Send,
    Recv,
}

impl fmt::Display for ProbeStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeStage::Resolve => "resolve",
            ProbeStage::Connect => "connect",
            ProbeStage::Send => "send of check_send",
            ProbeStage::Recv => "wait for check_expect reply",
        })
    }
}

/// Why a health check failed. `Display` is lowercase and names the fix; the
/// caller prefixes the backend (`health check of db/primary (10.0.0.11:5432): ...`).
#[derive(Debug)]
pub enum ProbeError {
    /// The hostname did not resolve (or resolved to nothing); carries the detail.
    Resolve(String),
    Connect(std::io::Error),
    /// The whole probe exceeded `check_timeout`; `stage` is where it was stuck.
    Timeout {
        stage: ProbeStage,
        after: Duration,
    },
    Send(std::io::Error),
    Recv(std::io::Error),
    /// The first bytes did not start with `check_expect` (at most
    /// [`MISMATCH_KEEP_BYTES`] kept).
    Mismatch {
        got: Vec<u8>,
    },
    /// The backend closed the connection before sending anything.
    Closed,
}

/// How many received bytes a [`ProbeError::Mismatch`] keeps for the log.
pub const MISMATCH_KEEP_BYTES: usize = 64;

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Resolve(detail) => {
                write!(f, "cannot resolve {detail}; check the hostname and DNS")
            }
            ProbeError::Connect(err) => {
                write!(f, "connect failed: {err}; is the backend listening?")
            }
            ProbeError::Timeout { stage, after } => {
                write!(f, "{stage} timed out after {after:?} (check_timeout)")
            }
            ProbeError::Send(err) => write!(f, "sending check_send failed: {err}"),
            ProbeError::Recv(err) => write!(f, "reading the check reply failed: {err}"),
            ProbeError::Mismatch { got } => write!(
                f,
                "reply does not start with check_expect: got \"{}\"",
                got.escape_ascii()
            ),
            ProbeError::Closed => f.write_str(
                "backend closed the connection without a reply; check check_send and check_expect",
            ),
        }
    }
}

impl std::error::Error for ProbeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProbeError::Connect(err) | ProbeError::Send(err) | ProbeError::Recv(err) => Some(err),
            _ => None,
        }
    }
}

/// One health check: resolve (hostnames resolved now via tokio::net::lookup_host;
/// failure = failed check), TCP connect, then if `send` non-empty write it, if
/// `expect` non-empty read until at least expect.len() bytes arrived (or EOF)
/// and require they start with `expect`. The whole probe bounded by `timeout`.
///
/// A hostname resolving to several addresses is tried address by address, as
/// a client would. The socket is dropped (closed) at the end.
pub async fn probe(
    address: &BackendAddress,
    timeout: Duration,
    send: &[u8],
    expect: &[u8],
) -> Result<(), ProbeError> {
    let deadline = Instant::now() + timeout;
    let within = |stage| {
        move |_elapsed| ProbeError::Timeout {
            stage,
            after: timeout,
        }
    };

    let addrs = timeout_at(deadline, conn::resolve(address))
        .await
        .map_err(within(ProbeStage::Resolve))?
        .map_err(|err| ProbeError::Resolve(format!("{address}: {err}")))?;
    let mut stream = timeout_at(deadline, conn::connect_first(addrs))
        .await
        .map_err(within(ProbeStage::Connect))?
        .map_err(ProbeError::Connect)?;
    if !send.is_empty() {
        timeout_at(deadline, stream.write_all(send))
            .await
            .map_err(within(ProbeStage::Send))?
            .map_err(ProbeError::Send)?;
    }
    if !expect.is_empty() {
        timeout_at(deadline, read_expected(&mut stream, expect))
            .await
            .map_err(within(ProbeStage::Recv))??;
    }
    Ok(())
}

/// Read until `expect.len()` bytes arrived or EOF; fail as soon as the bytes
/// diverge from `expect`.
async fn read_expected(stream: &mut TcpStream, expect: &[u8]) -> Result<(), ProbeError> {
    let mut got = Vec::with_capacity(expect.len());
    let mut buf = [0u8; 512];
    while got.len() < expect.len() {
        let want = (expect.len() - got.len()).min(buf.len());
        let n = stream
            .read(&mut buf[..want])
            .await
            .map_err(ProbeError::Recv)?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if !expect.starts_with(&got) {
            break;
        }
    }
    if got.starts_with(expect) {
        Ok(())
    } else if got.is_empty() {
        Err(ProbeError::Closed)
    } else {
        got.truncate(MISMATCH_KEEP_BYTES);
        Err(ProbeError::Mismatch { got })
    }
}

/// `interval` ± up to 10%, derived from `seed` (xorshift64), so checks of many
/// backends started together spread out instead of firing in lockstep.
/// Feed the previous seed through [`xorshift64`] to get the next one.
pub fn jittered(interval: Duration, seed: u64) -> Duration {
    let nanos = interval.as_nanos();
    let spread = nanos / 10;
    if spread == 0 {
        return interval;
    }
    let r = u128::from(xorshift64(seed));
    // offset in [0, 2*spread], then shifted to [-spread, +spread].
    let offset = r % (2 * spread + 1);
    let total = nanos + offset - spread;
    let secs = u64::try_from(total / 1_000_000_000).unwrap_or(u64::MAX);
    // The remainder is below 1e9, so it fits.
    let sub = (total % 1_000_000_000) as u32;
    Duration::new(secs, sub)
}

/// One step of the xorshift64 generator (Marsaglia); a zero seed is replaced,
/// since zero is a fixed point.
pub fn xorshift64(seed: u64) -> u64 {
    let mut x = if seed == 0 {
        0x9E37_79B9_7F4A_7C15
    } else {
        seed
    };
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Failback;
    use crate::decide::{BackendView, Policy, decide};
    use std::net::SocketAddr;
    use tokio::net::TcpListener;

    /// Bound on every socket test, so a bug fails instead of hanging.
    const TEST_LIMIT: Duration = Duration::from_secs(5);

    /// Feed `results` into a fresh up state; return the flips seen.
    fn flips(start_up: bool, results: &[bool], rise: u32, fall: u32) -> Vec<(usize, bool)> {
        let mut h = Hysteresis::new_up();
        if !start_up {
            h.force_down();
        }
        results
            .iter()
            .enumerate()
            .filter_map(|(i, ok)| h.record(*ok, rise, fall).map(|up| (i, up)))
            .collect()
    }

    #[test]
    fn hysteresis_follows_rise_fall_table() {
        struct Case {
            name: &'static str,
            start_up: bool,
            results: &'static str,
            rise: u32,
            fall: u32,
            want: Vec<(usize, bool)>,
        }
        let cases = [
            Case {
                name: "fall failures turn up -> down",
                start_up: true,
                results: "xxx",
                rise: 2,
                fall: 3,
                want: vec![(2, false)],
            },
            Case {
                name: "fewer than fall failures stay up",
                start_up: true,
                results: "xxoxxoxx",
                rise: 2,
                fall: 3,
                want: vec![],
            },
            Case {
                name: "rise successes turn down -> up",
                start_up: false,
                results: "oo",
                rise: 2,
                fall: 3,
                want: vec![(1, true)],
            },
            Case {
                name: "a failure resets the rise run",
                start_up: false,
                results: "oxoxoo",
                rise: 2,
                fall: 3,
                want: vec![(5, true)],
            },
            Case {
                name: "fall=1 rise=1 flips on every change",
                start_up: true,
                results: "xoxo",
                rise: 1,
                fall: 1,
                want: vec![(0, false), (1, true), (2, false), (3, true)],
            },
            Case {
                name: "flapping every check never flips with rise,fall >= 2",
                start_up: true,
                results: "xoxoxoxoxoxoxoxoxoxo",
                rise: 2,
                fall: 2,
                want: vec![],
            },
            Case {
                name: "flapping every check while down never flips",
                start_up: false,
                results: "oxoxoxoxoxoxoxoxoxox",
                rise: 2,
                fall: 2,
                want: vec![],
            },
            Case {
                name: "successes while up do not flip",
                start_up: true,
                results: "oooo",
                rise: 2,
                fall: 3,
                want: vec![],
            },
            Case {
                name: "zero thresholds act as one",
                start_up: true,
                results: "xo",
                rise: 0,
                fall: 0,
                want: vec![(0, false), (1, true)],
            },
        ];
        for case in cases {
            let results: Vec<bool> = case.results.chars().map(|c| c == 'o').collect();
            assert_eq!(
                flips(case.start_up, &results, case.rise, case.fall),
                case.want,
                "case: {}",
                case.name
            );
        }
    }

    #[test]
    fn failures_keep_counting_while_down() {
        let mut h = Hysteresis::new_up();
        for _ in 0..5 {
            h.record(false, 2, 3);
        }
        assert!(!h.up);
        assert_eq!(h.consecutive_fail, 5);
        assert_eq!(h.consecutive_ok, 0);
    }

    #[test]
    fn force_down_flips_once_and_resets_counters() {
        let mut h = Hysteresis::new_up();
        h.record(false, 2, 3);
        assert!(h.force_down());
        assert_eq!(
            h,
            Hysteresis {
                up: false,
                consecutive_ok: 0,
                consecutive_fail: 0
            }
        );
        assert!(!h.force_down());
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), Some(true));
    }

    /// Drive a primary through `pattern` repeated `cycles` times, with a
    /// healthy backup, and count health flips and switches made by `decide`.
    fn simulate(pattern: &[bool], cycles: usize, rise: u32, fall: u32) -> (usize, usize, usize) {
        let start = std::time::Instant::now();
        let policy = Policy {
            failback: Failback::Auto,
            failback_delay: Duration::ZERO,
        };
        let mut primary = Hysteresis::new_up();
        let mut up_since = Some(start);
        let backup = BackendView {
            up: true,
            enabled: true,
            up_since: Some(start),
        };
        let mut active = Some(0);
        let (mut downs, mut ups, mut switches) = (0, 0, 0);
        let mut now = start;
        for ok in pattern.iter().cycle().take(pattern.len() * cycles) {
            now += Duration::from_millis(500);
            match primary.record(*ok, rise, fall) {
                Some(true) => {
                    ups += 1;
                    up_since = Some(now);
                }
                Some(false) => {
                    downs += 1;
                    up_since = None;
                }
                None => {}
            }
            let view = BackendView {
                up: primary.up,
                enabled: true,
                up_since,
            };
            let decision = decide(&[view, backup], active, policy, now);
            if decision.cause.is_some() {
                switches += 1;
                active = decision.active;
            }
        }
        (downs, ups, switches)
    }

    #[test]
    fn full_fall_rise_cycles_switch_once_each_way() {
        let (rise, fall) = (2, 3);
        let mut pattern = vec![false; fall as usize];
        pattern.extend(vec![true; rise as usize]);
        let cycles = 7;
        let (downs, ups, switches) = simulate(&pattern, cycles, rise, fall);
        assert_eq!(downs, cycles);
        assert_eq!(ups, cycles);
        // One failover and one failback per cycle, never more.
        assert_eq!(switches, 2 * cycles);
    }

    #[test]
    fn flapping_backend_never_causes_a_switch() {
        let (downs, ups, switches) = simulate(&[false, true], 50, 2, 2);
        assert_eq!((downs, ups, switches), (0, 0, 0));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let interval = Duration::from_millis(500);
        let mut seed = 1;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let d = jittered(interval, seed);
            assert!(
                d >= Duration::from_millis(450) && d <= Duration::from_millis(550),
                "{d:?}"
            );
            seen.insert(d);
            seed = xorshift64(seed);
        }
        assert!(seen.len() > 100, "jitter should vary with the seed");
        assert_eq!(jittered(interval, 42), jittered(interval, 42));
        assert_eq!(jittered(Duration::ZERO, 7), Duration::ZERO);
        assert_eq!(
            jittered(Duration::from_nanos(5), 7),
            Duration::from_nanos(5)
        );
        let huge = jittered(Duration::MAX, 3);
        assert!(huge >= Duration::MAX - Duration::MAX / 10);
    }

    fn ip(addr: SocketAddr) -> BackendAddress {
        BackendAddress::Ip(addr)
    }

    /// A server that runs `serve` on each accepted connection.
    async fn server<F, Fut>(serve: F) -> SocketAddr
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream));
            }
        });
        addr
    }

    /// Answers "PONG\r\n" to "PING\r\n", anything else with "ERR\r\n".
    async fn ping_server() -> SocketAddr {
        server(|mut stream| async move {
            let mut buf = [0u8; 6];
            if stream.read_exact(&mut buf).await.is_ok() {
                let reply: &[u8] = if &buf == b"PING\r\n" {
                    b"PONG\r\n"
                } else {
                    b"ERR\r\n"
                };
                let _ = stream.write_all(reply).await;
            }
        })
        .await
    }

    async fn free_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    async fn bounded<T>(fut: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(TEST_LIMIT, fut)
            .await
            .expect("test took too long")
    }

    const CHECK_TIMEOUT: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn probe_succeeds_against_a_listener() {
        let addr = server(|_stream| async {}).await;
        bounded(probe(&ip(addr), CHECK_TIMEOUT, b"", b""))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn probe_fails_when_connection_refused() {
        let addr = free_port().await;
        let err = bounded(probe(&ip(addr), CHECK_TIMEOUT, b"", b""))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProbeError::Connect(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("connect failed:"), "{err}");
    }

    #[tokio::test]
    async fn probe_times_out_against_a_hung_backend() {
        // Accepts and holds the connection, never answers.
        let addr = server(|stream| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(stream);
        })
        .await;
        let started = std::time::Instant::now();
        let err = bounded(probe(&ip(addr), CHECK_TIMEOUT, b"PING\r\n", b"PONG"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProbeError::Timeout { stage: ProbeStage::Recv, after } if after == CHECK_TIMEOUT),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            err.to_string(),
            "wait for check_expect reply timed out after 300ms (check_timeout)"
        );
    }

    #[tokio::test]
    async fn probe_accepts_expected_reply() {
        let addr = ping_server().await;
        bounded(probe(&ip(addr), CHECK_TIMEOUT, b"PING\r\n", b"PONG"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn probe_rejects_unexpected_reply() {
        let addr = ping_server().await;
        let err = bounded(probe(&ip(addr), CHECK_TIMEOUT, b"PING\r\n", b"+OK"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProbeError::Mismatch { got } if !got.is_empty() && b"PONG".starts_with(got)),
            "{err:?}"
        );
        let err = bounded(probe(&ip(addr), CHECK_TIMEOUT, b"HELLO\n", b"PONG"))
            .await
            .unwrap_err();
        // One write on loopback normally arrives whole, but a split read is legal.
        assert!(
            matches!(&err, ProbeError::Mismatch { got } if !got.is_empty() && b"ERR\r".starts_with(got)),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("reply does not start with check_expect: got \"E"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn probe_reads_a_greeting_without_send() {
        let addr = server(|mut stream| async move {
            let _ = stream.write_all(b"SSH-2.0-test\r\n").await;
        })
        .await;
        bounded(probe(&ip(addr), CHECK_TIMEOUT, b"", b"SSH-2.0"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn probe_fails_when_backend_closes_without_reply() {
        let addr = server(|stream| async move { drop(stream) }).await;
        let err = bounded(probe(&ip(addr), CHECK_TIMEOUT, b"", b"PONG"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProbeError::Closed | ProbeError::Recv(_)),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn probe_resolves_localhost() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // localhost may resolve to ::1 first; a v6 listener is not guaranteed,
        // so probe() must try every address.
        tokio::spawn(async move { while listener.accept().await.is_ok() {} });
        let address = BackendAddress::Host {
            host: "localhost".into(),
            port,
        };
        bounded(probe(&address, Duration::from_secs(2), b"", b""))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn probe_fails_on_unresolvable_host() {
        let address = BackendAddress::Host {
            host: "no-such-host.invalid".into(),
            port: 80,
        };
        // Resolution may take a while on some resolvers; give it room.
        let err = bounded(probe(&address, Duration::from_secs(4), b"", b""))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProbeError::Resolve(d) if d.starts_with("no-such-host.invalid:80")),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("cannot resolve no-such-host.invalid:80"),
            "{err}"
        );
    }

    #[test]
    fn probe_errors_read_as_actionable_messages() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let cases = [
            (
                ProbeError::Resolve("db.internal:5432: no addresses".into()),
                "cannot resolve db.internal:5432: no addresses; check the hostname and DNS",
            ),
            (
                ProbeError::Timeout {
                    stage: ProbeStage::Connect,
                    after: Duration::from_millis(500),
                },
                "connect timed out after 500ms (check_timeout)",
            ),
            (
                ProbeError::Mismatch {
                    got: b"ERR\r".to_vec(),
                },
                "reply does not start with check_expect: got \"ERR\\r\"",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
        let text = ProbeError::Connect(refused).to_string();
        assert!(
            text.starts_with("connect failed: ") && text.ends_with("is the backend listening?")
        );
    }
}
