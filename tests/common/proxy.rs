//! The proxy started in-process from TOML text, on the test's own
//! runtime: for tests that drive `Proxy` directly (status, maintenance)
//! and need no process around it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use failoverd::config;
use failoverd::proxy::Proxy;

use super::wait::eventually;

/// Log to the test's output when RUST_LOG is set.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A proxy started in-process; shut down (connections closed) on drop.
pub struct TestProxy {
    pub proxy: Arc<Proxy>,
    /// The first service's bound listen address (`listen` may use port 0).
    pub addr: SocketAddr,
}

impl TestProxy {
    /// Parse and validate `toml` (panics if invalid), then start it.
    pub async fn start(toml: &str) -> TestProxy {
        let config = config::parse(toml, Path::new("test.toml"))
            .unwrap_or_else(|e| panic!("invalid test config: {e}\n{toml}"));
        let name = config.services[0].name.clone();
        let proxy = Proxy::start(config).await.expect("proxy starts");
        let addr = proxy.local_addr(&name).await.expect("service bound");
        TestProxy { proxy, addr }
    }

    /// The first service's active backend.
    pub async fn active(&self) -> Option<String> {
        self.proxy.status().await.services[0].active.clone()
    }

    /// Wait until the first service's active backend is `want`; returns how long it took.
    pub async fn wait_active(&self, want: Option<&str>, limit: Duration) -> Duration {
        let start = Instant::now();
        eventually(limit, &format!("active backend {want:?}"), || async {
            let active = self.active().await;
            if active.as_deref() == want {
                Ok(())
            } else {
                Err(active)
            }
        })
        .await;
        start.elapsed()
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        let proxy = Arc::clone(&self.proxy);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                proxy.shutdown(Duration::ZERO).await;
            });
        }
    }
}

/// [`TestProxy::start`] (the name the style guide uses).
pub async fn spawn_proxy(toml: &str) -> TestProxy {
    TestProxy::start(toml).await
}
