//! One single-threaded tokio runtime per core for the data path.
//!
//! Each worker runs its own accept loop on its own `SO_REUSEPORT` socket
//! (see `proxy.rs`), and a connection stays on the worker that accepted
//! it: no work stealing and no cross-thread wake-ups per chunk, the way
//! HAProxy's threads each own their connections. Failover engines, health
//! checks, signals and the control socket run on the main runtime.

use std::io;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// Running worker threads; they stop when this is dropped.
pub struct Workers {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Start `count` workers (at least one), named `failoverd-worker-N`.
    pub fn start(count: usize) -> io::Result<Workers> {
        let mut workers = Workers {
            handles: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for i in 0..count.max(1) {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            runtime.spawn(timer_floor());
            let (stop, stopped) = oneshot::channel::<()>();
            workers.handles.push(runtime.handle().clone());
            workers.stops.push(stop);
            workers.threads.push(
                std::thread::Builder::new()
                    .name(format!("failoverd-worker-{i}"))
                    .spawn(move || {
                        let _ = runtime.block_on(stopped);
                        // Dropping the runtime drops whatever it still runs.
                    })?,
            );
        }
        Ok(workers)
    }

    /// One worker per CPU this process may run on (honours `taskset` and
    /// cgroup CPU limits).
    pub fn default_count() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    pub fn handles(&self) -> Vec<Handle> {
        self.handles.clone()
    }
}

/// How often a worker's timer floor wakes it (see [`timer_floor`]).
pub const TIMER_FLOOR: Duration = Duration::from_millis(250);

/// Keeps a timer at most [`TIMER_FLOOR`] away on the worker. tokio wakes
/// its own reactor through an eventfd (a `write` system call, then one more
/// `epoll_wait` round) whenever a new timer expires before every timer it
/// already has, and each backend connect starts a `connect_timeout` timer:
/// with no nearer timer that is one wake-up per connection. With the floor
/// in place a connect timer of more than 250 ms never is the nearest, at
/// the cost of four wake-ups a second per worker.
async fn timer_floor() {
    loop {
        tokio::time::sleep(TIMER_FLOOR).await;
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
