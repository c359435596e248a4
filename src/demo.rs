//! `failoverd demo`: a self-contained failover demonstration on loopback.
//!
//! It starts two built-in backends ("primary" and "backup", see `backend`)
//! and the proxy in front of them, sends a steady trickle of short client
//! connections (`traffic`), kills the primary, watches the switch, restarts
//! the primary, watches the failback, and reports the timings. The narrative
//! goes to stdout; this module installs no tracing subscriber, so the proxy
//! stays quiet.
//!
//! Client connections run one at a time on a fixed period and the primary
//! is killed between two of them, so no client is in flight at the instant
//! of the kill: every failure counted is the proxy's, not the kill's.

mod backend;
mod traffic;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::time::{Interval, MissedTickBehavior};

use crate::config;
use crate::proxy::{Proxy, ServiceStatus};
use backend::DemoBackend;
use traffic::{Outcome, Side, Tally};

const SERVICE: &str = "demo";
/// One client connection this often.
const CLIENT_PERIOD: Duration = Duration::from_millis(20);
/// Traffic on the primary before it is killed.
const WARMUP: Duration = Duration::from_secs(1);
/// Traffic on the backup before the primary comes back.
const HOLD_ON_BACKUP: Duration = Duration::from_secs(2);
/// Traffic on the primary after the failback.
const TAIL: Duration = Duration::from_millis(500);
/// A switch (or failback) not seen within this long fails the demo.
const STAGE_BOUND: Duration = Duration::from_secs(10);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

/// Run the whole demo. `Ok` means the proxy switched, failed back and no
/// client connection failed.
pub async fn run() -> anyhow::Result<()> {
    let start = Instant::now();
    let mut primary = DemoBackend::start(Side::Primary.name())?;
    let backup = DemoBackend::start(Side::Backup.name())?;
    let text = config_text(primary.addr(), backup.addr());
    print_config(&text);
    let config = config::parse(&text, Path::new("demo.toml")).context("demo config")?;
    let proxy = Proxy::start(config).await.context("start the proxy")?;
    let mut demo = Demo::new(start, Arc::clone(&proxy)).await?;
    demo.say(&format!(
        "backends: primary on {}, backup on {}",
        primary.addr(),
        backup.addr()
    ));
    demo.say(&format!(
        "proxy: service {SERVICE} listening on {}, active backend {}",
        demo.addr,
        show(&demo.active)
    ));
    let result = demo.scenario(&mut primary).await;
    proxy.shutdown(SHUTDOWN_TIMEOUT).await;
    let timings = result?;
    demo.report(&timings);
    demo.verdict()
}

/// Snappy timings so the demo takes a few seconds. `on_switch = "keep"`:
/// each demo client reads its greeting and leaves, so there is no split
/// brain to prevent, and closing a connection mid-greeting at the failback
/// would be a failure of the demo's making.
fn config_text(primary: SocketAddr, backup: SocketAddr) -> String {
    format!(
        r#"[defaults]
connect_timeout = "250ms"
check_interval  = "200ms"
check_timeout   = "200ms"
fall            = 2
rise            = 2
passive_errors  = 3
failback        = "auto"
failback_delay  = "1s"
on_switch       = "keep"

[[service]]
name   = "{SERVICE}"
listen = "127.0.0.1:0"

  [[service.backend]]
  name    = "primary"
  address = "{primary}"

  [[service.backend]]
  name    = "backup"
  address = "{backup}"
"#
    )
}

fn print_config(text: &str) {
    println!("failoverd demo: config");
    for line in text.lines() {
        println!("    {line}");
    }
    println!();
}

/// When the traffic moved to a backend, measured from the kill or restart.
struct Switch {
    /// Until the first client connection served by the new backend.
    first_served: Duration,
    /// Until the proxy's status named the new backend active.
    status: Duration,
}

struct Timings {
    failover: Switch,
    failback: Switch,
}

/// The running demo: the clock, the proxy, the client trickle and what the
/// proxy's status showed last.
struct Demo {
    start: Instant,
    proxy: Arc<Proxy>,
    addr: SocketAddr,
    ticker: Interval,
    tally: Tally,
    /// Active backend at the last status read.
    active: Option<String>,
    /// Each backend's state ("up"/"down") at the last status read.
    states: HashMap<String, String>,
    /// The last kill or restart, so status changes can say how long after.
    event: Option<(Instant, &'static str)>,
}

impl Demo {
    async fn new(start: Instant, proxy: Arc<Proxy>) -> anyhow::Result<Demo> {
        let addr = proxy
            .local_addr(SERVICE)
            .await
            .context("the proxy has no demo service")?;
        let mut ticker = tokio::time::interval(CLIENT_PERIOD);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut demo = Demo {
            start,
            proxy,
            addr,
            ticker,
            tally: Tally::default(),
            active: None,
            states: HashMap::new(),
            event: None,
        };
        demo.read_initial_status().await?;
        Ok(demo)
    }

    async fn scenario(&mut self, primary: &mut DemoBackend) -> anyhow::Result<Timings> {
        self.say(&format!(
            "clients: one connection every {}ms through the proxy",
            CLIENT_PERIOD.as_millis()
        ));
        self.run_for(WARMUP).await;
        if self.tally.primary == 0 {
            bail!("no client connection was served by the primary in the first second");
        }
        primary.kill().await;
        self.mark("the kill");
        self.say(&format!(
            "primary killed (listener and open connections closed) after {} connections on it",
            self.tally.primary
        ));
        let failover = self.wait_for_switch(Side::Backup, "switched to").await?;
        self.run_for(HOLD_ON_BACKUP).await;
        primary.restart().await?;
        self.mark("the restart");
        self.say(&format!("primary restarted on {}", primary.addr()));
        let failback = self
            .wait_for_switch(Side::Primary, "failed back to")
            .await?;
        self.run_for(TAIL).await;
        self.say("stopping");
        Ok(Timings { failover, failback })
    }

    /// Keep the trickle going until a connection is served by `to` and the
    /// proxy's status names `to` active, within [`STAGE_BOUND`]. `verb`
    /// opens the narrative line ("switched to", "failed back to").
    async fn wait_for_switch(&mut self, to: Side, verb: &str) -> anyhow::Result<Switch> {
        let (since, event) = self.event.unwrap_or((Instant::now(), "the start"));
        let (mut first_served, mut status) = (None, None);
        loop {
            if let (Some(first_served), Some(status)) = (first_served, status) {
                return Ok(Switch {
                    first_served,
                    status,
                });
            }
            if since.elapsed() > STAGE_BOUND {
                bail!(self.stage_timeout(to, event, first_served, status));
            }
            let served = self.tick().await;
            if served == Some(to) && first_served.is_none() {
                first_served = Some(since.elapsed());
                self.say(&format!(
                    "{verb} {to}: first connection served by {to} {} after {event}",
                    secs(since.elapsed())
                ));
            }
            if self.active.as_deref() == Some(to.name()) && status.is_none() {
                status = Some(since.elapsed());
            }
        }
    }

    fn stage_timeout(
        &self,
        to: Side,
        event: &str,
        first_served: Option<Duration>,
        status: Option<Duration>,
    ) -> String {
        let seen = |what: Option<Duration>| match what {
            Some(after) => format!("yes, after {}", secs(after)),
            None => "no".to_string(),
        };
        format!(
            "no switch to {to} within {} of {event} (connection served by {to}: {}; \
             proxy status shows {to} active: {})",
            secs(STAGE_BOUND),
            seen(first_served),
            seen(status)
        )
    }

    async fn run_for(&mut self, length: Duration) {
        let until = Instant::now() + length;
        while Instant::now() < until {
            self.tick().await;
        }
    }

    /// One client connection, then a look at the proxy's status.
    async fn tick(&mut self) -> Option<Side> {
        self.ticker.tick().await;
        let outcome = traffic::probe(self.addr).await;
        self.tally.record(&outcome);
        let served = match outcome {
            Outcome::Served(side) => Some(side),
            Outcome::Failed(why) => {
                self.say(&format!("client connection failed: {why}"));
                None
            }
        };
        self.observe().await;
        served
    }

    /// The starting point later status reads are compared with.
    async fn read_initial_status(&mut self) -> anyhow::Result<()> {
        let status = self.proxy.status().await;
        let service = status
            .services
            .into_iter()
            .find(|s| s.name == SERVICE)
            .context("the proxy's status has no demo service")?;
        for backend in &service.backends {
            self.states
                .insert(backend.name.clone(), backend.state.clone());
        }
        self.active = service.active;
        Ok(())
    }

    /// Read the proxy's status and narrate what changed since last time.
    async fn observe(&mut self) {
        let status = self.proxy.status().await;
        let Some(service) = status.services.into_iter().find(|s| s.name == SERVICE) else {
            return;
        };
        self.observe_states(&service);
        if service.active == self.active {
            return;
        }
        let line = format!(
            "proxy: active backend {} -> {}{}",
            show(&self.active),
            show(&service.active),
            self.since_event()
        );
        self.active = service.active;
        self.say(&line);
    }

    fn observe_states(&mut self, service: &ServiceStatus) {
        for backend in &service.backends {
            let before = self
                .states
                .insert(backend.name.clone(), backend.state.clone());
            if before.is_some_and(|before| before != backend.state) {
                let line = format!(
                    "proxy: {} is {}{}",
                    backend.name,
                    backend.state,
                    self.since_event()
                );
                self.say(&line);
            }
        }
    }

    fn mark(&mut self, event: &'static str) {
        self.event = Some((Instant::now(), event));
    }

    fn since_event(&self) -> String {
        match self.event {
            Some((at, event)) => format!(" ({} after {event})", secs(at.elapsed())),
            None => String::new(),
        }
    }

    fn say(&self, line: &str) {
        println!("[{:5.2}s] {line}", self.start.elapsed().as_secs_f64());
    }

    fn report(&self, timings: &Timings) {
        let tally = &self.tally;
        println!();
        println!("report");
        println!(
            "  time to detect (kill -> first connection served by backup): {}",
            secs(timings.failover.first_served)
        );
        println!(
            "  proxy status switched to backup after: {}",
            secs(timings.failover.status)
        );
        println!("  failed client connections: {}", tally.failed);
        println!(
            "  time to fail back (restart -> first connection served by primary): {}",
            secs(timings.failback.first_served)
        );
        println!(
            "  proxy status switched back to primary after: {}",
            secs(timings.failback.status)
        );
        println!(
            "  connections served: primary {}, backup {}",
            tally.served(Side::Primary),
            tally.served(Side::Backup)
        );
    }

    fn verdict(&self) -> anyhow::Result<()> {
        match self.tally.failed {
            0 => {
                println!("demo ok");
                Ok(())
            }
            n => bail!("{n} client connections failed (expected 0)"),
        }
    }
}

fn show(active: &Option<String>) -> &str {
    active.as_deref().unwrap_or("none")
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}
