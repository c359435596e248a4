//! `failoverd demo` end to end: the built binary must fail over and back
//! with no failed client connection, and print its report.

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The demo takes a few seconds; this bounds a hung one.
const DEMO_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

/// Run `failoverd demo`, killing it after `DEMO_TIMEOUT`. Returns whether
/// it exited 0, and its stdout and stderr.
fn run_demo() -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_failoverd"))
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn failoverd demo");
    let stdout = drain(child.stdout.take().expect("stdout piped"));
    let stderr = drain(child.stderr.take().expect("stderr piped"));
    let deadline = Instant::now() + DEMO_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for failoverd demo") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(POLL);
    };
    let (stdout, stderr) = (join(stdout), join(stderr));
    assert!(
        status.is_some(),
        "failoverd demo still running after {DEMO_TIMEOUT:?}, killed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (status.is_some_and(|s| s.success()), stdout, stderr)
}

/// Read a pipe to the end on its own thread, so a full pipe never blocks
/// the child.
fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

fn join(reader: thread::JoinHandle<String>) -> String {
    reader.join().expect("pipe reader thread")
}

#[test]
fn demo_fails_over_and_back_without_failed_connections() {
    let (ok, stdout, stderr) = run_demo();
    assert!(
        ok,
        "failoverd demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for line in [
        "primary killed",
        "switched to backup: first connection served by backup",
        "primary restarted",
        "failed back to primary: first connection served by primary",
        "time to detect (kill -> first connection served by backup): ",
        "  failed client connections: 0\n",
        "time to fail back (restart -> first connection served by primary): ",
        "connections served: primary ",
        "demo ok",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}
