//! `failoverd demo` end to end: the built binary must fail over and back
//! with no failed client connection, and print its report.

mod common;

use std::time::Duration;

use common::*;

/// The demo takes a few seconds; this bounds a hung one.
const DEMO_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_fails_over_and_back_without_failed_connections() {
    let out = run_failoverd(&["demo"], DEMO_TIMEOUT).await;
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    assert_eq!(
        out.code,
        Some(0),
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
