//! Every metric name of SPEC.md as a const, their descriptions, and the
//! Prometheus recorder. Handles are resolved once per backend (see
//! `backend.rs`), never looked up by name on the data path. Also the
//! small HTTP server behind `admin.metrics`.

use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::conncap::ConnectionCap;

pub const CONNECTIONS_TOTAL: &str = "failoverd_connections_total";
pub const CONNECTIONS_ACTIVE: &str = "failoverd_connections_active";
pub const CONNECT_ERRORS_TOTAL: &str = "failoverd_connect_errors_total";
pub const CLIENT_FAILURES_TOTAL: &str = "failoverd_client_failures_total";
pub const BYTES_TOTAL: &str = "failoverd_bytes_total";
pub const BACKEND_UP: &str = "failoverd_backend_up";
pub const BACKEND_ACTIVE: &str = "failoverd_backend_active";
pub const SWITCHES_TOTAL: &str = "failoverd_switches_total";
pub const HEALTH_CHECKS_TOTAL: &str = "failoverd_health_checks_total";
pub const HEALTH_CHECK_DURATION_SECONDS: &str = "failoverd_health_check_duration_seconds";
pub const LAST_HEALTH_CHECK_TIMESTAMP_SECONDS: &str =
    "failoverd_last_health_check_timestamp_seconds";
pub const CONFIG_RELOADS_TOTAL: &str = "failoverd_config_reloads_total";
pub const CONFIG_LAST_RELOAD_SUCCESSFUL: &str = "failoverd_config_last_reload_successful";
pub const CONNECTIONS_HELD: &str = "failoverd_connections_held";
pub const HELD_TOTAL: &str = "failoverd_held_total";
pub const REJECTED_TOTAL: &str = "failoverd_rejected_total";
pub const CLUSTER_CONNECTED: &str = "failoverd_cluster_connected";
pub const CLUSTER_DECIDER: &str = "failoverd_cluster_decider";
pub const CLUSTER_MEMBERS: &str = "failoverd_cluster_members";
pub const CLUSTER_GENERATION: &str = "failoverd_cluster_generation";
pub const DNS_UPDATES_TOTAL: &str = "failoverd_dns_updates_total";
pub const DNS_PUBLISHED: &str = "failoverd_dns_published";

/// Register the help texts shown in the scrape output.
pub fn describe() {
    describe_counter!(
        CONNECTIONS_TOTAL,
        "Client connections forwarded to a backend."
    );
    describe_gauge!(
        CONNECTIONS_ACTIVE,
        "Client connections open to a backend now."
    );
    describe_counter!(
        CONNECT_ERRORS_TOTAL,
        "Failed connects to a backend on live traffic."
    );
    describe_counter!(
        CLIENT_FAILURES_TOTAL,
        "Client connections closed because every backend failed."
    );
    describe_counter!(BYTES_TOTAL, Unit::Bytes, "Bytes forwarded, by direction.");
    describe_gauge!(BACKEND_UP, "1 when the backend is up by its health state.");
    describe_gauge!(BACKEND_ACTIVE, "1 for the backend new connections go to.");
    describe_counter!(SWITCHES_TOTAL, "Changes of the active backend.");
    describe_counter!(HEALTH_CHECKS_TOTAL, "Active health checks, by result.");
    describe_histogram!(
        HEALTH_CHECK_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of active health checks."
    );
    describe_gauge!(
        LAST_HEALTH_CHECK_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "Unix time of the last completed health check."
    );
    describe_counter!(CONFIG_RELOADS_TOTAL, "Config reloads, by result.");
    describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESSFUL,
        "1 when the last reload was applied."
    );
    describe_gauge!(
        CONNECTIONS_HELD,
        "Client connections waiting under hold_timeout for a backend."
    );
    describe_counter!(
        HELD_TOTAL,
        "Held client connections, by how the hold ended (served or timeout)."
    );
    describe_counter!(
        REJECTED_TOTAL,
        "Client connections closed before any backend was contacted (allow, proxy_header)."
    );
    describe_gauge!(
        CLUSTER_CONNECTED,
        "1 while this instance is a cluster member (its lease lives)."
    );
    describe_gauge!(CLUSTER_DECIDER, "1 while this instance is the decider.");
    describe_gauge!(CLUSTER_MEMBERS, "Cluster members seen.");
    describe_gauge!(
        CLUSTER_GENERATION,
        "Generation of the agreed backend of a service."
    );
    describe_counter!(DNS_UPDATES_TOTAL, "DNS UPDATE messages sent, by result.");
    describe_gauge!(
        DNS_PUBLISHED,
        "1 for the backend whose address the DNS record holds."
    );
}

/// Histogram buckets for check durations, in seconds.
pub const CHECK_DURATION_BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Install the Prometheus recorder for this process. Call once, before any
/// service starts (handles resolved earlier would count nowhere).
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(HEALTH_CHECK_DURATION_SECONDS.to_string()),
            CHECK_DURATION_BUCKETS_SECONDS,
        )
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    describe();
    Ok(handle)
}

/// Serve `GET /metrics` on `listener` until `stop`. A deliberately small
/// HTTP/1.0-style server: one request per connection, then close.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, stop: CancellationToken) {
    let upkeep = handle.clone();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => upkeep.run_upkeep(),
                    _ = stop.cancelled() => return,
                }
            }
        }
    });
    let mut cap = ConnectionCap::new(METRICS_MAX_CONNECTIONS);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let handle = handle.clone();
                let admitted = cap.admit();
                tokio::spawn(async move {
                    let _done = admitted.done;
                    tokio::select! {
                        _ = tokio::time::timeout(SCRAPE_TIMEOUT, answer(stream, &handle)) => {}
                        _ = admitted.evicted.cancelled() => {}
                    }
                });
            }
            Err(err) => {
                tracing::warn!(error = %err, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A scrape that has not finished in this long is dropped.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection that has not sent its request head in this long is closed
/// (a scraper sends it at once).
pub const METRICS_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Open `/metrics` connections at most; a new one closes the oldest, so
/// idle connections cannot lock a scraper out (this listener shares the
/// runtime of the engines and checks).
pub const METRICS_MAX_CONNECTIONS: usize = 64;

async fn answer(mut stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    // Read the request head (up to 8 KiB), bounded in time.
    let head = async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(METRICS_READ_TIMEOUT, head)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let (status, content_type, body) = match (method, path) {
        (Some(b"GET"), Some(p)) if p == b"/metrics" || p.starts_with(b"/metrics?") => {
            ("200 OK", "text/plain; version=0.0.4", handle.render())
        }
        (Some(b"GET"), _) => (
            "404 Not Found",
            "text/plain",
            "not found; try /metrics\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
