//! The `failoverd` binary: command line, logging and metrics set-up, exit
//! status. Everything else lives in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use failoverd::config::{self, Config};
use failoverd::control::{self, Request};
use failoverd::proxy::Proxy;
use failoverd::workers::Workers;

/// Where `ctl` looks for the control socket when neither `--socket` nor
/// `-c` says.
const DEFAULT_SOCKET: &str = "/run/failoverd/failoverd.sock";

#[derive(Parser)]
#[command(name = "failoverd", version, about = "Layer-4 TCP failover proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with this config.
    Run {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Take over from the instance running on admin.socket: its
        /// listening sockets and health state, then it drains and exits.
        #[arg(long)]
        takeover: bool,
        /// Data-path worker threads (default: one per CPU this process may use).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
        workers: Option<u16>,
    },
    /// Validate the config and print a summary; binds nothing.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Talk to a running instance over its control socket.
    Ctl {
        /// Read the socket path from this config's `admin.socket`.
        #[arg(short, long, value_name = "FILE", conflicts_with = "socket")]
        config: Option<PathBuf>,
        /// The control socket path.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        #[command(subcommand)]
        action: CtlAction,
    },
    /// Start two backends and the proxy on loopback, fail over and back, report.
    Demo,
}

#[derive(Subcommand)]
enum CtlAction {
    /// Per service: the active backend; per backend: state and connections.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Maintenance: never choose this backend (checks go on).
    Disable { service: String, backend: String },
    /// Undo `disable`.
    Enable { service: String, backend: String },
    /// Re-read the config file, like SIGHUP.
    Reload,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            log_format,
            takeover,
            workers,
        } => run(&config, log_format, takeover, workers.map(usize::from)),
        Command::Check { config } => check(&config),
        Command::Ctl {
            config,
            socket,
            action,
        } => ctl(config, socket, action),
        Command::Demo => demo(),
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: a log file or the journal must not fill
    // with escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// The main runtime: signals, control socket, metrics, failover engines and
/// health checks. The data path runs on `Workers`, one runtime per core.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn load_or_report(path: &Path) -> Result<Config, ExitCode> {
    config::load(path).map_err(|err| {
        eprintln!("{err}");
        ExitCode::from(2)
    })
}

fn check(path: &Path) -> ExitCode {
    match load_or_report(path) {
        Ok(config) => {
            print!("{}", config.summary());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn run(path: &Path, format: LogFormat, takeover: bool, workers: Option<usize>) -> ExitCode {
    let config = match load_or_report(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    init_logging(format);
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("failoverd: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let workers = workers.unwrap_or_else(Workers::default_count);
    match runtime.block_on(serve(config, takeover, workers)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("failoverd: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// Start everything the config asks for, then wait for SIGTERM/SIGINT
/// (or, after a takeover by a newer process, drain and end).
async fn serve(config: Config, takeover: bool, workers: usize) -> anyhow::Result<()> {
    use anyhow::Context;
    let signals = control::Signals::install().context("cannot install signal handlers")?;
    let stop = CancellationToken::new();
    let taken = if takeover {
        take_over(&config).await?
    } else {
        None
    };
    let (inherited, handover) = match taken {
        Some((inherited, stream)) => (inherited, Some(stream)),
        None => (Default::default(), None),
    };
    let mut inherited: failoverd::proxy::Inherited = inherited;
    let handle = failoverd::metrics::install().map_err(anyhow::Error::msg)?;
    let mut metrics_listener = None;
    if let Some(addr) = config.admin.metrics {
        let listener = match inherited.metrics.take() {
            Some(std_listener) => {
                std_listener.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(std_listener)
                    .context("admin.metrics: the socket handed over")?
            }
            None => tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("admin.metrics: cannot listen on {addr}"))?,
        };
        tracing::info!(address = %listener.local_addr()?, "metrics listening");
        metrics_listener = listener_dup(&listener);
        tokio::spawn(failoverd::metrics::serve(listener, handle, stop.clone()));
    }
    // Present from the start, so an alert on reload errors has a series.
    for result in ["ok", "error"] {
        metrics::counter!(failoverd::metrics::CONFIG_RELOADS_TOTAL, "result" => result)
            .increment(0);
    }
    metrics::gauge!(failoverd::metrics::CONFIG_LAST_RELOAD_SUCCESSFUL).set(1.0);
    let admin = config.admin.clone();
    // A takeover binds the control socket once the old process let go of it.
    let socket = match (&admin.socket, &handover) {
        (Some(path), None) => Some((
            control::bind(path)
                .await
                .with_context(|| format!("admin.socket: cannot create {}", path.display()))?,
            path.clone(),
        )),
        _ => None,
    };
    let workers = Workers::start(workers).context("cannot start worker threads")?;
    let proxy: Arc<Proxy> =
        match Proxy::start_inheriting(config, workers.handles(), inherited).await {
            Ok(proxy) => proxy,
            Err(err) => {
                // Do not leave the socket file of a failed start behind.
                if let Some((_, path)) = &socket {
                    let _ = std::fs::remove_file(path);
                }
                return Err(err.into());
            }
        };
    if let Some(listener) = metrics_listener {
        proxy.keep_metrics_listener(listener);
    }
    let socket = match (handover, &admin.socket) {
        (Some(stream), Some(path)) => {
            // Before the old process can exit: systemd (NotifyAccess=all)
            // then follows this process as the unit's main one.
            failoverd::sdnotify::ready();
            control::finish_takeover(stream)
                .await
                .context("takeover: the old instance did not let go")?;
            tracing::info!("took over: the old instance drains and exits");
            Some((
                control::bind(path)
                    .await
                    .with_context(|| format!("admin.socket: cannot create {}", path.display()))?,
                path.clone(),
            ))
        }
        _ => socket,
    };
    failoverd::sdnotify::ready();
    if let Some((listener, path)) = socket {
        tokio::spawn(control::serve(
            listener,
            path,
            Arc::clone(&proxy),
            stop.clone(),
        ));
    }
    control::run_signals(signals, Arc::clone(&proxy), admin.shutdown_timeout).await;
    stop.cancel();
    // Let the control socket task remove its file.
    tokio::task::yield_now().await;
    if let (Some(path), false) = (&admin.socket, proxy.retired().is_cancelled()) {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// `run --takeover`: the sockets and state of the instance on
/// `admin.socket`, or `None` (a plain start) when nothing runs there.
async fn take_over(
    config: &Config,
) -> anyhow::Result<Option<(failoverd::proxy::Inherited, tokio::net::UnixStream)>> {
    use anyhow::Context;
    if config.cluster.is_some() {
        anyhow::bail!(
            "--takeover is not available with [cluster]: stop this instance and start the new one (the other members keep the cluster's state meanwhile)"
        );
    }
    let Some(path) = &config.admin.socket else {
        anyhow::bail!(
            "--takeover needs admin.socket: the running instance hands its sockets over its control socket"
        );
    };
    let taken = control::take_over(path)
        .await
        .with_context(|| format!("takeover from the instance on {}", path.display()))?;
    if taken.is_none() {
        tracing::info!(socket = %path.display(), "--takeover: nothing runs there, starting as a plain run");
    }
    Ok(taken)
}

/// A duplicate of a listener's socket (for a later takeover).
fn listener_dup(listener: &tokio::net::TcpListener) -> Option<std::net::TcpListener> {
    let fd = std::os::fd::AsFd::as_fd(listener)
        .try_clone_to_owned()
        .ok()?;
    Some(std::net::TcpListener::from(fd))
}

fn ctl(config: Option<PathBuf>, socket: Option<PathBuf>, action: CtlAction) -> ExitCode {
    let path = match (socket, config) {
        (Some(path), _) => path,
        (None, Some(file)) => match load_or_report(&file) {
            Ok(cfg) => cfg
                .admin
                .socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            Err(code) => return code,
        },
        (None, None) => PathBuf::from(DEFAULT_SOCKET),
    };
    let (request, json) = match action {
        CtlAction::Status { json } => (Request::Status, json),
        CtlAction::Disable { service, backend } => (Request::Disable { service, backend }, false),
        CtlAction::Enable { service, backend } => (Request::Enable { service, backend }, false),
        CtlAction::Reload => (Request::Reload, false),
    };
    let is_reload = request == Request::Reload;
    let response = match runtime().and_then(|rt| rt.block_on(control::request(&path, &request))) {
        Ok(response) => response,
        Err(err) => {
            eprintln!("failoverd ctl: {err}");
            return ExitCode::from(1);
        }
    };
    if !response.ok {
        eprintln!(
            "failoverd ctl: {}",
            response.error.as_deref().unwrap_or("request failed")
        );
        return ExitCode::from(if is_reload { 2 } else { 1 });
    }
    match (&response.status, json) {
        (Some(status), true) => match serde_json::to_string(status) {
            Ok(text) => println!("{text}"),
            Err(err) => {
                eprintln!("failoverd ctl: {err}");
                return ExitCode::from(1);
            }
        },
        (Some(status), false) => print!("{}", control::format_status(status)),
        (None, _) if is_reload => println!("reload applied"),
        (None, _) => println!("ok"),
    }
    ExitCode::SUCCESS
}

/// `failoverd demo`. No tracing subscriber: the narrative on stdout is the
/// output, and proxy logs would drown it.
fn demo() -> ExitCode {
    let result = runtime()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(failoverd::demo::run()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("failoverd demo: {err:#}");
            ExitCode::from(1)
        }
    }
}
