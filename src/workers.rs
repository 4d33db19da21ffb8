//! Connection workers: one single-threaded tokio runtime per core, each serving the client
//! connections handed to it and owning its own upstream connection pools.
//!
//! Why: a proxied request is a ping-pong between two tasks — the client connection's task (the
//! handler runs in it) and the upstream connection's task (hyper drives each pooled upstream
//! connection in a task of its own). On tokio's work-stealing runtime those wake-ups regularly
//! land on the other worker thread (a futex wake, a context switch and cold caches per hop; ~1.9
//! futex calls per request in the issue-8 profile, none for a bare forwarder). Here a client
//! connection lives on one thread for its whole life, and the upstream connections it uses are
//! in that thread's pools ([`current`] picks them), so every wake-up on the request path is a
//! local queue push.
//!
//! The accept loop stays on the main runtime and deals connections out round-robin; a
//! connection moves between threads once, when it is accepted.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::mpsc;

/// Worker threads started in this process (0 when connections are served on the caller's
/// runtime, as in-process tests do). Upstream clients keep one pool per worker plus one.
static STARTED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// 1-based index of the worker running on this thread; 0 elsewhere.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Which per-worker pool this thread uses: 1..=N on a worker, 0 anywhere else.
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// How many pools an upstream client built now should keep (one per worker, plus one).
pub fn pools() -> usize {
    STARTED.load(Ordering::Acquire) + 1
}

/// A connection's work, made on the accepting thread and run on a worker.
pub type Job = Box<dyn FnOnce() -> futures::future::BoxFuture<'static, ()> + Send>;

/// The worker threads; dropping this lets each finish its connections and exit.
pub struct Workers {
    senders: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
}

impl Workers {
    /// Starts `n` worker threads (at least one). Fails only if a thread or runtime cannot start.
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let n = n.max(1);
        let mut senders = Vec::with_capacity(n);
        let base = STARTED.fetch_add(n, Ordering::AcqRel);
        for i in 0..n {
            let (tx, rx) = mpsc::unbounded_channel::<Job>();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let index = base + i + 1;
            std::thread::Builder::new()
                .name(format!("stockyard-w{}", i + 1))
                .spawn(move || {
                    INDEX.with(|c| c.set(index));
                    rt.block_on(run(rx));
                })?;
            senders.push(tx);
        }
        Ok(Workers {
            senders,
            next: AtomicUsize::new(0),
        })
    }

    /// The worker count for this machine: its available parallelism (cgroup quotas included).
    pub fn default_count() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// Runs the future made by `job` on the next worker, round-robin. Hands the job back if
    /// that worker has stopped (the caller runs it itself).
    pub fn dispatch<F>(&self, job: F) -> Result<(), Job>
    where
        F: FnOnce() -> futures::future::BoxFuture<'static, ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        self.senders[i].send(Box::new(job)).map_err(|e| e.0)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.senders.len()
    }
}

/// A worker's life: spawn each job it is handed; once the sender is gone, wait for the jobs
/// still running (open connections finishing their requests), then return.
async fn run(mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut jobs = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            job = rx.recv() => match job {
                Some(job) => {
                    jobs.spawn(job());
                }
                None => break,
            },
            Some(_) = jobs.join_next(), if !jobs.is_empty() => {}
        }
    }
    while jobs.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_on_worker_threads_round_robin_and_finish_before_exit() {
        let w = Workers::start(2).unwrap();
        assert_eq!(w.len(), 2);
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let tx = tx.clone();
            w.dispatch(move || {
                Box::pin(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    let name = std::thread::current().name().unwrap_or("").to_string();
                    tx.send((name, current())).unwrap();
                })
            })
            .unwrap_or_else(|_| panic!("worker stopped"));
        }
        drop(tx);
        drop(w);
        let mut got: Vec<(String, usize)> = rx.iter().collect();
        got.sort();
        assert_eq!(
            got.len(),
            4,
            "every job ran to the end after the pool was dropped"
        );
        assert!(got.iter().all(|(_, i)| *i >= 1));
        let threads: std::collections::BTreeSet<_> = got.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(threads.len(), 2, "{got:?}");
        assert!(threads.iter().all(|n| n.starts_with("stockyard-w")));
        assert_eq!(current(), 0);
    }
}
