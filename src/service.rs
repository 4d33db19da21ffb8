//! Running as a service: signals and the systemd notify protocol around a [`Running`] server.
//!
//! * SIGHUP reloads the config (see [`crate::reload`]).
//! * SIGTERM or SIGINT: `STOPPING=1`, stop accepting, let in-flight requests and streams finish
//!   within `shutdown_grace`, flush pending traces, exit 0.
//! * A second SIGTERM or SIGINT during that exits at once (128 + the signal number).

use crate::notify::Notifier;
use crate::server::{Drain, Running};
use std::sync::Arc;

/// The process exit code once the server has stopped.
pub type ExitCode = i32;

/// The signal handlers, installed before the server binds so that a signal sent as soon as the
/// port accepts connections (or `READY=1` arrives) is never handled by the default action.
#[cfg(unix)]
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

#[cfg(not(unix))]
pub struct Signals;

impl Signals {
    /// Installs the handlers (inside the async runtime).
    #[cfg(unix)]
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    #[cfg(not(unix))]
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals)
    }
}

/// Serves until a stop signal, then shuts down as described in the module docs.
#[cfg(unix)]
pub async fn run(running: Running, notifier: Option<Arc<Notifier>>, signals: Signals) -> ExitCode {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    let first = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => {
                let _ = running.reloader.reload("SIGHUP").await;
            }
        }
    };
    let second = async move {
        loop {
            tokio::select! {
                _ = term.recv() => return ("SIGTERM", 128 + libc::SIGTERM),
                _ = int.recv() => return ("SIGINT", 128 + libc::SIGINT),
                _ = hup.recv() => tracing::info!("SIGHUP ignored: shutting down"),
            }
        }
    };
    stop(running, notifier, first, second).await
}

/// Without Unix signals: Ctrl-C stops, a second Ctrl-C exits at once.
#[cfg(not(unix))]
pub async fn run(running: Running, notifier: Option<Arc<Notifier>>, _signals: Signals) -> ExitCode {
    if tokio::signal::ctrl_c().await.is_err() {
        return 1;
    }
    let second = async {
        let _ = tokio::signal::ctrl_c().await;
        ("Ctrl-C", 130)
    };
    stop(running, notifier, "Ctrl-C", second).await
}

async fn stop(
    mut running: Running,
    notifier: Option<Arc<Notifier>>,
    first: &str,
    second: impl std::future::Future<Output = (&'static str, ExitCode)>,
) -> ExitCode {
    if let Some(n) = &notifier {
        n.send("STOPPING=1");
    }
    let grace = running.state.runtime().config.shutdown_grace;
    tracing::info!(
        signal = first,
        in_flight = running.in_flight(),
        grace_ms = grace.as_millis() as u64,
        "shutting down: new connections are refused, in-flight requests may finish (send the signal again to exit at once)"
    );
    running.stop_accepting();
    let graceful = async move {
        let drained = running.drain(grace).await;
        tracing::info!("flushing pending traces");
        running.finish().await;
        drained
    };
    tokio::select! {
        drained = graceful => match drained {
            Ok(Drain::Complete) => {
                tracing::info!("stopped: every in-flight request finished, traces flushed");
                0
            }
            Ok(Drain::Cut(n)) => {
                tracing::warn!(cut = n, "stopped: shutdown_grace ran out, requests still running were cut; traces flushed");
                0
            }
            Err(e) => {
                tracing::error!(error = %e, "server error while shutting down");
                1
            }
        },
        (sig, code) = second => {
            tracing::warn!(signal = sig, "second signal: exiting now without waiting for requests or traces");
            code
        }
    }
}

/// Raises the soft open-file limit to the hard limit (as Go programs and nginx's
/// `worker_rlimit_nofile` do): every client connection and every upstream connection is a file
/// descriptor, and the common soft default of 1024 caps the server far below what it can hold.
/// Returns `(before, after)` when it changed.
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
pub fn raise_fd_limit() -> Option<(u64, u64)> {
    // Past this the kernel's `nr_open` usually refuses anyway; plenty for one proxy.
    const CAP: u64 = 1 << 20;
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return None;
    }
    let before = l.rlim_cur as u64;
    let want = (l.rlim_max as u64).min(CAP);
    if want <= before {
        return None;
    }
    let new = libc::rlimit {
        rlim_cur: want as libc::rlim_t,
        rlim_max: l.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        return None;
    }
    Some((before, want))
}

#[cfg(not(unix))]
pub fn raise_fd_limit() -> Option<(u64, u64)> {
    None
}
