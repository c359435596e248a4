//! The `notify` hook: runs the operator's command once per switch, in the
//! background, with the switch described in `FAILOVERD_*` environment
//! variables (SPEC.md, Behaviour: notify).
//!
//! It must never delay the caller or the data path: the command runs in its
//! own task, one run at a time per service (later switches coalesce into
//! the latest, see [`Notifier`]), is killed after a time limit, and its
//! failure is only logged. It does not decide anything and never retries.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a notify command may run before it is killed (SPEC.md: 10 s).
pub const NOTIFY_TIME_LIMIT: Duration = Duration::from_secs(10);

/// How much of the command's stderr is kept for the failure log line.
const STDERR_KEEP_BYTES: usize = 1024;

/// After the command exits, how long to wait for its stderr to close (a
/// background grandchild may hold it open).
const STDERR_GRACE: Duration = Duration::from_millis(100);

/// One switch as the notify command sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    /// The program and its arguments (`settings.notify`).
    pub command: Vec<String>,
    pub service: String,
    pub from: Option<String>,
    /// `None` when no backend is up.
    pub to: Option<String>,
    pub reason: String,
    /// Cluster mode: the generation that completed the switch.
    pub generation: Option<u64>,
}

/// One service's notify runs, one at a time and in order: a switch that
/// comes while a run is in progress waits for it, and several waiting
/// switches collapse into the latest one, so the last run always describes
/// the last switch. Dropping the notifier stops it after the current run.
pub struct Notifier {
    latest: watch::Sender<Option<Switch>>,
}

impl Notifier {
    /// Start the service's notify task (inside a tokio runtime); each run
    /// is killed after `limit`.
    pub fn start(limit: Duration) -> Notifier {
        let (latest, mut next) = watch::channel(None::<Switch>);
        tokio::spawn(async move {
            while next.changed().await.is_ok() {
                let switch = next.borrow_and_update().clone();
                if let Some(switch) = switch {
                    run_logged(&switch, limit).await;
                }
            }
        });
        Notifier { latest }
    }

    /// Queue a run for `switch`, replacing one still waiting; never blocks.
    pub fn notify(&self, switch: Switch) {
        self.latest.send_replace(Some(switch));
    }
}

/// Run the command for one switch and log its failure (spawn error,
/// non-zero exit, killed at `limit`) with the service and the command.
///
/// `command[0]` is the program (looked up in `PATH`), the rest its
/// arguments; no shell is involved. An empty `command` does nothing. The
/// environment carries FAILOVERD_SERVICE, FAILOVERD_FROM, FAILOVERD_TO
/// (empty when none), FAILOVERD_REASON and, in cluster mode,
/// FAILOVERD_GENERATION. stdin and stdout are
/// `/dev/null`; the tail of stderr goes into the failure log line. At the
/// limit its whole process group is killed.
pub async fn run_logged(switch: &Switch, limit: Duration) {
    if switch.command.is_empty() {
        return;
    }
    let mut env = vec![
        ("FAILOVERD_SERVICE", switch.service.clone()),
        ("FAILOVERD_FROM", switch.from.clone().unwrap_or_default()),
        ("FAILOVERD_TO", switch.to.clone().unwrap_or_default()),
        ("FAILOVERD_REASON", switch.reason.clone()),
    ];
    if let Some(generation) = switch.generation {
        env.push(("FAILOVERD_GENERATION", generation.to_string()));
    }
    if let Err(problem) = run(&switch.command, &env, limit).await {
        tracing::warn!(
            service = %switch.service,
            command = ?switch.command,
            reason = %switch.reason,
            error = %problem,
            "notify command failed"
        );
    }
}

/// One run in its own task (tests).
#[cfg(test)]
fn spawn_notify(
    command: &[String],
    service: &str,
    from: Option<&str>,
    to: Option<&str>,
    reason: &str,
    limit: Duration,
) -> JoinHandle<()> {
    let switch = Switch {
        command: command.to_vec(),
        service: service.to_owned(),
        from: from.map(str::to_owned),
        to: to.map(str::to_owned),
        reason: reason.to_owned(),
        generation: None,
    };
    tokio::spawn(async move { run_logged(&switch, limit).await })
}

/// Run the command to completion or until `limit`; `Err` describes a failure.
async fn run(command: &[String], env: &[(&str, String)], limit: Duration) -> Result<(), String> {
    let Some((program, args)) = command.split_first() else {
        return Ok(());
    };
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group, so the time limit can end whatever it forked.
        .process_group(0)
        .spawn()
        .map_err(|err| format!("cannot start {program:?}: {err}; check the notify path"))?;

    // Drain stderr in its own task so a chatty command never blocks on a full pipe.
    let stderr = child
        .stderr
        .take()
        .map(|pipe| tokio::spawn(read_tail(pipe)));

    let status = match tokio::time::timeout(limit, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(err)) => return Err(format!("waiting for it failed: {err}")),
        Err(_elapsed) => {
            if let Some(pid) = child.id() {
                kill_group(pid);
            }
            // kill() also reaps the child, so no zombie is left behind.
            let killed = child.kill().await;
            abort(stderr);
            return Err(match killed {
                Ok(()) => format!("killed after {limit:?} (notify time limit)"),
                Err(err) => format!("still running after {limit:?} and kill failed: {err}"),
            });
        }
    };
    if status.success() {
        abort(stderr);
        return Ok(());
    }
    let tail = match stderr {
        Some(task) => collect(task).await,
        None => String::new(),
    };
    Err(describe(status, &tail))
}

/// SIGKILL the command's process group (its pid, see `process_group(0)`).
/// The child is not reaped yet, so its pid, the group's id, cannot have
/// been reused by another process.
#[allow(unsafe_code)]
fn kill_group(pid: u32) {
    let Ok(group) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: killpg(2) takes two integers and touches no memory of ours;
    // a failure (the group is already gone) is harmless and ignored.
    unsafe {
        libc::killpg(group, libc::SIGKILL);
    }
}

fn describe(status: ExitStatus, stderr: &str) -> String {
    let stderr = stderr.trim();
    if stderr.is_empty() {
        format!("{status}")
    } else {
        format!("{status}: {stderr}")
    }
}

/// Read the pipe to EOF, keeping only the last [`STDERR_KEEP_BYTES`].
async fn read_tail(mut pipe: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return tail,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > STDERR_KEEP_BYTES {
                    tail.drain(..tail.len() - STDERR_KEEP_BYTES);
                }
            }
        }
    }
}

async fn collect(mut task: JoinHandle<Vec<u8>>) -> String {
    match tokio::time::timeout(STDERR_GRACE, &mut task).await {
        Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        Ok(Err(_)) => String::new(),
        Err(_) => {
            task.abort();
            String::new()
        }
    }
}

fn abort(task: Option<JoinHandle<Vec<u8>>>) {
    if let Some(task) = task {
        task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Instant;

    /// A temp file path unique to this test run; removed on drop.
    struct TempPath(PathBuf);

    impl TempPath {
        fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("failoverd-notify-{tag}-{}-{n}", std::process::id());
            TempPath(std::env::temp_dir().join(name))
        }
        fn arg(&self) -> String {
            self.0.to_string_lossy().into_owned()
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn sh(script: &str, args: &[&str]) -> Vec<String> {
        let mut command = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            script.to_owned(),
            "sh".to_owned(),
        ];
        command.extend(args.iter().map(|a| (*a).to_owned()));
        command
    }

    const WRITE_ENV: &str = r#"printf '%s|%s|%s|%s' "$FAILOVERD_SERVICE" "$FAILOVERD_FROM" "$FAILOVERD_TO" "$FAILOVERD_REASON" > "$1""#;

    async fn bounded<T>(fut: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .expect("test took too long")
    }

    #[tokio::test]
    async fn notify_passes_the_switch_in_the_environment() {
        let out = TempPath::new("env");
        let command = sh(WRITE_ENV, &[&out.arg()]);
        let handle = spawn_notify(
            &command,
            "db",
            Some("primary"),
            Some("standby"),
            "health_check",
            NOTIFY_TIME_LIMIT,
        );
        bounded(handle).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&out.0).unwrap(),
            "db|primary|standby|health_check"
        );
    }

    #[tokio::test]
    async fn notify_sets_empty_to_when_no_backend_is_up() {
        let out = TempPath::new("none");
        let command = sh(WRITE_ENV, &[&out.arg()]);
        let handle = spawn_notify(
            &command,
            "db",
            Some("standby"),
            None,
            "passive",
            NOTIFY_TIME_LIMIT,
        );
        bounded(handle).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&out.0).unwrap(),
            "db|standby||passive"
        );
    }

    /// Five switches while a slow run is in progress: runs never overlap
    /// and the last run describes the last switch.
    #[tokio::test]
    async fn notifier_runs_one_at_a_time_and_ends_with_the_latest_switch() {
        let dir = TempPath::new("serial");
        std::fs::create_dir_all(&dir.0).unwrap();
        let script = r#"mkdir "$1/lock" 2>/dev/null || echo OVERLAP >> "$1/runs"
echo "start $FAILOVERD_TO" >> "$1/runs"; sleep 0.3; echo end >> "$1/runs"; rmdir "$1/lock""#;
        let notifier = Notifier::start(NOTIFY_TIME_LIMIT);
        for i in 1..=5 {
            notifier.notify(Switch {
                command: sh(script, &[&dir.arg()]),
                service: "db".into(),
                from: None,
                to: Some(format!("b{i}")),
                reason: "health_check".into(),
                generation: None,
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let runs = dir.0.join("runs");
        bounded(async {
            loop {
                let text = std::fs::read_to_string(&runs).unwrap_or_default();
                if text.contains("start b5") && text.ends_with("end\n") {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        let text = std::fs::read_to_string(&runs).unwrap();
        let _ = std::fs::remove_dir_all(&dir.0);
        assert!(!text.contains("OVERLAP"), "runs overlapped:\n{text}");
        let starts: Vec<&str> = text.lines().filter(|l| l.starts_with("start")).collect();
        assert_eq!(starts.first(), Some(&"start b1"), "{text}");
        assert_eq!(starts.last(), Some(&"start b5"), "{text}");
        assert!(
            starts.len() < 5,
            "waiting switches were not coalesced:\n{text}"
        );
    }

    #[tokio::test]
    async fn notify_kills_a_command_past_the_limit() {
        let started = Instant::now();
        let command = vec!["sleep".to_owned(), "30".to_owned()];
        let handle = spawn_notify(
            &command,
            "db",
            None,
            Some("primary"),
            "failback",
            Duration::from_millis(200),
        );
        tokio::time::timeout(Duration::from_secs(2), handle)
            .await
            .expect("notify task must end soon after the limit")
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn notify_limit_kills_what_the_command_forked() {
        let pidfile = TempPath::new("forked");
        let command = sh(r#"sleep 30 & echo $! > "$1"; wait"#, &[&pidfile.arg()]);
        let handle = spawn_notify(
            &command,
            "db",
            None,
            None,
            "passive",
            Duration::from_millis(300),
        );
        tokio::time::timeout(Duration::from_secs(3), handle)
            .await
            .expect("notify task must end soon after the limit")
            .unwrap();
        let pid = std::fs::read_to_string(&pidfile.0).unwrap();
        let pid = pid.trim();
        // Gone, or at most a zombie waiting for its new parent to reap it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let alive = state
            .rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'));
        assert!(!alive, "forked sleep {pid} survived the limit: {state}");
    }

    #[tokio::test]
    async fn notify_returns_before_the_command_finishes() {
        let out = TempPath::new("async");
        let command = sh(r#"sleep 0.5; echo done > "$1""#, &[&out.arg()]);
        let started = Instant::now();
        let handle = spawn_notify(
            &command,
            "db",
            Some("primary"),
            Some("standby"),
            "disabled",
            NOTIFY_TIME_LIMIT,
        );
        assert!(started.elapsed() < Duration::from_millis(100));
        assert!(!handle.is_finished());
        assert!(!out.0.exists(), "command must still be running");
        bounded(handle).await.unwrap();
        assert_eq!(std::fs::read_to_string(&out.0).unwrap(), "done\n");
    }

    #[tokio::test]
    async fn notify_survives_failing_commands() {
        let missing = vec!["/nonexistent/failoverd-notify".to_owned()];
        bounded(spawn_notify(
            &missing,
            "db",
            None,
            None,
            "reload",
            NOTIFY_TIME_LIMIT,
        ))
        .await
        .unwrap();
        let failing = sh("echo oops >&2; exit 3", &[]);
        bounded(spawn_notify(
            &failing,
            "db",
            None,
            None,
            "reload",
            NOTIFY_TIME_LIMIT,
        ))
        .await
        .unwrap();
        bounded(spawn_notify(
            &[],
            "db",
            None,
            None,
            "reload",
            NOTIFY_TIME_LIMIT,
        ))
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn failure_description_includes_status_and_stderr() {
        let command = sh("echo 'no route to pager' >&2; exit 3", &[]);
        let env = [("FAILOVERD_SERVICE", "db".to_owned())];
        let err = bounded(run(&command, &env, NOTIFY_TIME_LIMIT))
            .await
            .unwrap_err();
        assert_eq!(err, "exit status: 3: no route to pager");
        let err = bounded(run(&["/nonexistent/x".to_owned()], &env, NOTIFY_TIME_LIMIT))
            .await
            .unwrap_err();
        assert!(err.starts_with("cannot start \"/nonexistent/x\""), "{err}");
        let err = bounded(run(
            &["sleep".to_owned(), "30".to_owned()],
            &env,
            Duration::from_millis(100),
        ))
        .await
        .unwrap_err();
        assert_eq!(err, "killed after 100ms (notify time limit)");
    }

    /// Collects formatted log output for one test.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn notify_failure_is_logged_with_service_and_command() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        // Thread-local default: the current-thread test runtime polls the
        // notify task on this thread.
        let _guard = tracing::subscriber::set_default(subscriber);
        let command = sh("exit 7", &[]);
        bounded(spawn_notify(
            &command,
            "db",
            Some("a"),
            Some("b"),
            "passive",
            NOTIFY_TIME_LIMIT,
        ))
        .await
        .unwrap();
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(log.contains("WARN"), "{log}");
        assert!(log.contains("notify command failed"), "{log}");
        assert!(log.contains("service=db"), "{log}");
        assert!(
            log.contains(r#"command=["sh", "-c", "exit 7", "sh"]"#),
            "{log}"
        );
        assert!(log.contains("exit status: 7"), "{log}");
    }
}
