//! Logs: `tracing` to stderr as text or JSON lines (`log_format`), filtered by `RUST_LOG` or
//! `log_level`. The proxy writes one info line per finished request and a warn line for every
//! failover and every circuit change; none of them carries a key, a header or a body.

use crate::config::{Config, LogFormat};
use crate::proxy::attempt::{AttemptOutcome, AttemptRecord};
use crate::traces::TraceRecord;
use std::cell::RefCell;
use std::io::Write;

thread_local! {
    /// Lines logged on this thread while batching ([`batch_begin`]), written by [`batch_flush`].
    static BATCH: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// Stderr, or this thread's batch when it batches: the trace writer logs one line per finished
/// request and writes a whole group commit's lines with one `write(2)` instead of one each.
pub struct Stderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Stderr {
        Stderr
    }
}

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let batched = BATCH.with(|b| match b.borrow_mut().as_mut() {
            Some(v) => {
                v.extend_from_slice(buf);
                true
            }
            None => false,
        });
        if batched {
            Ok(buf.len())
        } else {
            std::io::stderr().write(buf)
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// From now on, lines logged on this thread wait for [`batch_flush`].
pub fn batch_begin() {
    BATCH.with(|b| {
        b.borrow_mut()
            .get_or_insert_with(|| Vec::with_capacity(64 * 1024));
    });
}

/// Writes this thread's batched lines (one write) and keeps batching.
pub fn batch_flush() {
    BATCH.with(|b| {
        if let Some(v) = b.borrow_mut().as_mut() {
            if !v.is_empty() {
                let _ = std::io::stderr().write_all(v);
                v.clear();
            }
        }
    });
}

/// Installs the global subscriber (once, at startup). `RUST_LOG` wins over `log_level`.
pub fn init(cfg: &Config) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| cfg.log_level.clone());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Stderr);
    let res = match cfg.log_format {
        // One JSON object per line, the event's fields at the top level next to
        // `timestamp`, `level`, `message` and `target`.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(ansi).try_init(),
    };
    if let Err(e) = res {
        eprintln!("logging was already initialised: {e}");
    }
}

/// Plan-time skips (the provider was never a candidate for this request), not failovers.
fn static_skip(a: &AttemptRecord) -> bool {
    a.outcome == AttemptOutcome::Skipped
        && matches!(
            a.reason.as_deref(),
            Some("model_unsupported" | "not_local" | "context_too_small")
        )
}

/// One warn line per move from one provider to another: `from`, `to`, `reason` (and the HTTP
/// status when the upstream answered). Same-provider retries are not failovers.
pub fn failovers(trace_id: &str, model: &str, attempts: &[AttemptRecord]) {
    let live: Vec<&AttemptRecord> = attempts.iter().filter(|a| !static_skip(a)).collect();
    for pair in live.windows(2) {
        let (from, to) = (pair[0], pair[1]);
        if from.outcome == AttemptOutcome::Ok || from.provider == to.provider {
            continue;
        }
        tracing::warn!(
            trace_id,
            model,
            from = %from.provider,
            to = %to.provider,
            reason = from.reason.as_deref().unwrap_or("failed"),
            http_status = from.http_status,
            "failover"
        );
    }
}

/// The info line for a finished request (called when its trace completes).
pub fn request_finished(r: &TraceRecord) {
    tracing::info!(
        trace_id = %r.id,
        model = %r.model_requested,
        provider = r.provider.as_deref().unwrap_or("-"),
        upstream_model = r.model.as_deref().unwrap_or("-"),
        stream = r.stream,
        attempts = r.tries,
        failover = r.failover,
        status = r.status.as_str(),
        http_status = r.http_status,
        latency_ms = r.latency_ms,
        ttft_ms = r.ttft_ms,
        cache = r.cache.map(|c| c.as_str()),
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batched_lines_wait_for_the_flush_and_other_threads_write_at_once() {
        let mut w = Stderr;
        batch_begin();
        w.write_all(b"one\n").unwrap();
        w.write_all(b"two\n").unwrap();
        let held = BATCH.with(|b| b.borrow().as_ref().map(|v| v.clone()));
        assert_eq!(held.as_deref(), Some(&b"one\ntwo\n"[..]));
        // Another thread is not batching: nothing of its lines lands in this thread's batch.
        std::thread::spawn(|| {
            let mut w = Stderr;
            w.write_all(b"").unwrap();
            assert!(BATCH.with(|b| b.borrow().is_none()));
        })
        .join()
        .unwrap();
        batch_flush();
        assert_eq!(BATCH.with(|b| b.borrow().as_ref().map(Vec::len)), Some(0));
    }
}
