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
    match res {
        Err(e) => eprintln!("logging was already initialised: {e}"),
        Ok(()) if cfg.log_format == LogFormat::Json || !ansi => {
            let _ = FAST.set(cfg.log_format);
        }
        Ok(()) => {}
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

/// The info line for a finished request (called when its trace completes, on the trace writer's
/// thread). Written straight into the line buffer when the line's format allows it (JSON, or text
/// without colours), in exactly the subscriber's layout: the subscriber's formatter costs ~17 k
/// instructions per line (issue 8 profile), this ~5 k. Colours (a terminal) take the subscriber.
pub fn request_finished(r: &TraceRecord) {
    match FAST.get() {
        Some(&format) => {
            if tracing::enabled!(target: "stockyard::logging", tracing::Level::INFO) {
                write_line(|out| request_line(out, format, std::time::SystemTime::now(), r));
            }
        }
        // Colours: only text reaches here, with the client's model name made safe.
        None => request_event(r, &NoControl(&r.model_requested)),
    }
}

/// Set by [`init`] when [`request_finished`] may write its line itself.
static FAST: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

fn request_event(r: &TraceRecord, model: &dyn std::fmt::Display) {
    tracing::info!(
        trace_id = %r.id,
        model = %model,
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

/// A client-chosen string shown bare in text lines, its control characters escaped (`\n`,
/// `\u{7}`) so a model name cannot forge a log line. (JSON lines escape it as JSON.)
struct NoControl<'a>(&'a str);

impl std::fmt::Display for NoControl<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        if !self.0.chars().any(char::is_control) {
            return f.write_str(self.0);
        }
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_debug())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// Appends a line to this thread's batch, or writes it to stderr at once when not batching.
fn write_line(fill: impl FnOnce(&mut Vec<u8>)) {
    BATCH.with(|b| match b.borrow_mut().as_mut() {
        Some(batch) => fill(batch),
        None => {
            let mut line = Vec::with_capacity(320);
            fill(&mut line);
            let _ = std::io::stderr().write_all(&line);
        }
    });
}

/// The request line as tracing-subscriber's `Full` text format (no colours) or its flattened
/// JSON format writes it; `request_lines_match_the_subscriber` holds the two together.
fn request_line(out: &mut Vec<u8>, format: LogFormat, now: std::time::SystemTime, r: &TraceRecord) {
    let provider = r.provider.as_deref().unwrap_or("-");
    let upstream_model = r.model.as_deref().unwrap_or("-");
    let status = r.status.as_str();
    let cache = r.cache.map(|c| c.as_str());
    match format {
        LogFormat::Text => {
            timestamp(out, now);
            let _ = write!(
                out,
                "  INFO stockyard::logging: request trace_id={} model={} provider={:?} upstream_model={:?} stream={} attempts={} failover={} status={:?}",
                r.id,
                NoControl(&r.model_requested),
                provider,
                upstream_model,
                r.stream,
                r.tries,
                r.failover,
                status
            );
            if let Some(v) = r.http_status {
                let _ = write!(out, " http_status={v}");
            }
            let _ = write!(out, " latency_ms={}", r.latency_ms);
            if let Some(v) = r.ttft_ms {
                let _ = write!(out, " ttft_ms={v}");
            }
            if let Some(v) = cache {
                let _ = write!(out, " cache={v:?}");
            }
        }
        LogFormat::Json => {
            let s = |out: &mut Vec<u8>, v: &str| {
                let _ = serde_json::to_writer(&mut *out, v);
            };
            out.extend_from_slice(b"{\"timestamp\":\"");
            timestamp(out, now);
            out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"trace_id\":");
            s(out, &r.id);
            out.extend_from_slice(b",\"model\":");
            s(out, &r.model_requested);
            out.extend_from_slice(b",\"provider\":");
            s(out, provider);
            out.extend_from_slice(b",\"upstream_model\":");
            s(out, upstream_model);
            let _ = write!(
                out,
                ",\"stream\":{},\"attempts\":{},\"failover\":{},\"status\":\"{status}\"",
                r.stream, r.tries, r.failover
            );
            if let Some(v) = r.http_status {
                let _ = write!(out, ",\"http_status\":{v}");
            }
            let _ = write!(out, ",\"latency_ms\":{}", r.latency_ms);
            if let Some(v) = r.ttft_ms {
                let _ = write!(out, ",\"ttft_ms\":{v}");
            }
            if let Some(v) = cache {
                let _ = write!(out, ",\"cache\":\"{v}\"");
            }
            out.extend_from_slice(b",\"target\":\"stockyard::logging\"}");
        }
    }
    out.push(b'\n');
}

/// `2026-11-23T18:31:40.116131Z`: UTC, microseconds, as tracing-subscriber's `SystemTime` timer.
fn timestamp(out: &mut Vec<u8>, now: std::time::SystemTime) {
    let d = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = crate::cli::civil_from_days(days as i64);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What tracing-subscriber itself writes for [`request_event`], as the proxy configures it.
    fn subscriber_line(format: LogFormat, r: &TraceRecord) -> String {
        use std::sync::{Arc, Mutex};
        #[derive(Clone)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf(Arc::new(Mutex::new(Vec::new())));
        let w = buf.clone();
        let builder = tracing_subscriber::fmt().with_writer(move || w.clone());
        match format {
            LogFormat::Text => {
                let sub = builder.with_ansi(false).finish();
                let model = NoControl(&r.model_requested);
                tracing::subscriber::with_default(sub, || request_event(r, &model));
            }
            LogFormat::Json => {
                let sub = builder
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .finish();
                let model = &r.model_requested;
                tracing::subscriber::with_default(sub, || request_event(r, model));
            }
        }
        let out = buf.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    /// The line with its 27-character timestamp cut out.
    fn without_time(line: &str) -> String {
        let at = line.find("20").expect("a timestamp");
        let ts = &line[at..at + 27];
        assert!(
            ts.as_bytes()[10] == b'T' && ts.ends_with('Z') && ts.as_bytes()[19] == b'.',
            "{line}"
        );
        format!("{}{}", &line[..at], &line[at + 27..])
    }

    #[test]
    fn request_lines_match_the_subscriber() {
        use crate::cache::CacheOutcome;
        use crate::traces::TraceStatus;
        let mut records = Vec::new();
        let mut r = TraceRecord::new("tr_019ab3c4d5e6f708".into(), "gpt-4o", false);
        r.provider = Some("openai".into());
        r.model = Some("gpt-4o-2024-08-06".into());
        r.status = TraceStatus::Ok;
        r.http_status = Some(200);
        r.tries = 1;
        r.latency_ms = 812;
        records.push(r.clone());
        r.stream = true;
        r.ttft_ms = Some(640);
        r.failover = true;
        r.tries = 3;
        r.cache = Some(CacheOutcome::Miss);
        records.push(r.clone());
        let mut e = TraceRecord::new("tr_1".into(), "a \"quoted\" é 模型\\ x", true);
        e.status = TraceStatus::ClientClosed;
        records.push(e.clone());
        e.model_requested = "line\nbreak\r\u{7}\u{1b}[31m tab\t".into();
        e.provider = Some("we\"ird\u{0}".into());
        e.cache = Some(CacheOutcome::Hit);
        e.http_status = Some(502);
        records.push(e);
        for r in &records {
            for format in [LogFormat::Text, LogFormat::Json] {
                let want = subscriber_line(format, r);
                let mut got = Vec::new();
                request_line(&mut got, format, std::time::SystemTime::now(), r);
                let got = String::from_utf8(got).unwrap();
                assert_eq!(without_time(&got), without_time(&want), "{format:?}");
                assert_eq!(got.matches('\n').count(), 1, "one line: {got}");
                if format == LogFormat::Json {
                    let v: serde_json::Value = serde_json::from_str(&got).unwrap();
                    assert_eq!(v["model"], r.model_requested.as_str());
                }
            }
        }
    }

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        let at = |us: u64| {
            let mut v = Vec::new();
            timestamp(
                &mut v,
                std::time::UNIX_EPOCH + std::time::Duration::from_micros(us),
            );
            String::from_utf8(v).unwrap()
        };
        assert_eq!(at(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(1_795_458_700_116_131), "2026-11-23T18:31:40.116131Z");
        assert_eq!(at(1_709_208_000_500_000), "2024-02-29T12:00:00.500000Z");
        assert_eq!(at(951_868_799_999_999), "2000-02-29T23:59:59.999999Z");
        assert_eq!(at(4_107_542_400_000_001), "2100-03-01T00:00:00.000001Z");
        // The subscriber's own timestamp has the same shape and (within a second) value.
        let mut mine = Vec::new();
        timestamp(&mut mine, std::time::SystemTime::now());
        let theirs = subscriber_line(
            LogFormat::Text,
            &TraceRecord::new("tr_1".into(), "m", false),
        );
        let secs = |t: &str| -> i64 {
            let n = |a: usize| t[a..a + 2].parse::<i64>().unwrap();
            n(11) * 3600 + n(14) * 60 + n(17)
        };
        let gap = (secs(&theirs) - secs(&String::from_utf8(mine).unwrap())).rem_euclid(86_400);
        assert!(gap <= 2 || gap >= 86_398, "{theirs}");
    }

    #[test]
    fn request_lines_join_the_batch() {
        batch_begin();
        let r = TraceRecord::new("tr_2".into(), "m", false);
        write_line(|out| request_line(out, LogFormat::Json, std::time::SystemTime::now(), &r));
        write_line(|out| request_line(out, LogFormat::Text, std::time::SystemTime::now(), &r));
        let held = BATCH.with(|b| b.borrow().clone()).unwrap();
        let held = String::from_utf8(held).unwrap();
        assert_eq!(held.lines().count(), 2, "{held}");
        assert!(held.starts_with("{\"timestamp\""), "{held}");
        BATCH.with(|b| b.borrow_mut().take());
    }

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
