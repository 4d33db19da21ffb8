//! Streaming (SSE) relay and transparent failover before the first content event (SPEC section 6,
//! "Streaming"; issue 3), driven through the real server over loopback against scripted mock
//! upstreams. Streaming and non-streaming are exercised side by side where both apply.
//!
//! Failure points and where they are tested:
//! * before the first byte (HTTP error status, refused / reset / closed connection, no headers
//!   within `first_byte`): `fails_over_before_first_byte`;
//! * before the first content event (role chunk then stall, keep-alives only, in-stream errors,
//!   streams that end early, malformed SSE): `fails_over_on_timeouts_before_first_content`,
//!   `fails_over_on_in_stream_errors_before_content`, `fails_over_on_streams_that_end_before_content`,
//!   `fails_over_on_malformed_streams_before_content`;
//! * mid-stream (after content): `interruption_after_content_ends_with_stream_error`,
//!   `missing_done_after_finish_is_synthesized`, `first_content_kinds_commit_the_stream`;
//! * client gone: `client_disconnect_cancels_upstream`.
//!
//! Relay timing: `relays_chunk_by_chunk_without_buffering` (paced upstream),
//! `relays_back_to_back_events_without_delay` (no coalescing / Nagle stall), and the ignored
//! measurement `ttft_overhead` (added time to first content token, median of 100 streams).

mod common;

use common::mock::{chunk_json, error_json, finish_json, role_json, MockUpstream, SseEv, Step};
use common::{chat_body, closed_port, hdr, two, Proxy};
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Client-side SSE reading (independent of the proxy's own decoder)
// ---------------------------------------------------------------------------------------------

/// One SSE block as the client received it.
#[derive(Debug, Clone)]
struct Ev {
    /// Arrival time of the read that completed this block, since the request was sent.
    at: Duration,
    event: Option<String>,
    data: Option<String>,
}

impl Ev {
    fn json(&self) -> Option<Value> {
        self.data
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
    }

    fn is_done(&self) -> bool {
        self.data.as_deref() == Some("[DONE]")
    }

    /// `choices[0].delta.content` when non-empty.
    fn content(&self) -> Option<String> {
        let v = self.json()?;
        let s = v["choices"][0]["delta"]["content"].as_str()?;
        (!s.is_empty()).then(|| s.to_string())
    }

    /// Carries text, a tool call or a finish_reason.
    fn has_content(&self) -> bool {
        let Some(v) = self.json() else { return false };
        let c = &v["choices"][0];
        self.content().is_some()
            || c["delta"]["tool_calls"].is_array()
            || c["finish_reason"].is_string()
    }

    /// The usage-only chunk (`choices: []` plus `usage`).
    fn is_usage_only(&self) -> bool {
        self.json().is_some_and(|v| {
            v["choices"].as_array().is_some_and(|c| c.is_empty()) && v["usage"].is_object()
        })
    }
}

/// Incremental SSE splitter: normalises CRLF / CR / LF and cuts blocks at blank lines.
#[derive(Default)]
struct Splitter {
    buf: Vec<u8>,
    pending_cr: bool,
}

impl Splitter {
    fn push(&mut self, bytes: &[u8], at: Duration, out: &mut Vec<Ev>) {
        for &b in bytes {
            if self.pending_cr {
                self.pending_cr = false;
                self.buf.push(b'\n');
                if b == b'\n' {
                    continue;
                }
            }
            if b == b'\r' {
                self.pending_cr = true;
            } else {
                self.buf.push(b);
            }
        }
        self.cut(at, out, false);
    }

    fn finish(&mut self, at: Duration, out: &mut Vec<Ev>) {
        if std::mem::take(&mut self.pending_cr) {
            self.buf.push(b'\n');
        }
        self.cut(at, out, true);
    }

    fn cut(&mut self, at: Duration, out: &mut Vec<Ev>, eof: bool) {
        loop {
            let end = self.buf.windows(2).position(|w| w == b"\n\n");
            let block: Vec<u8> = match end {
                Some(i) => self.buf.drain(..i + 2).collect(),
                None if eof && !self.buf.is_empty() => std::mem::take(&mut self.buf),
                None => return,
            };
            if let Some(ev) = parse_block(&String::from_utf8_lossy(&block), at) {
                out.push(ev);
            }
        }
    }
}

fn parse_block(block: &str, at: Duration) -> Option<Ev> {
    let mut ev = Ev {
        at,
        event: None,
        data: None,
    };
    let mut any = false;
    for line in block.split('\n').filter(|l| !l.is_empty()) {
        any = true;
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => {
                ev.data = Some(match ev.data.take() {
                    Some(d) => format!("{d}\n{value}"),
                    None => value.to_string(),
                })
            }
            "event" => ev.event = Some(value.to_string()),
            _ => {}
        }
    }
    any.then_some(ev)
}

/// A response read to the end (or until an error).
struct Streamed {
    status: u16,
    headers: reqwest::header::HeaderMap,
    /// The whole body as text.
    raw: String,
    /// Blocks with a `data` or `event` field (keep-alive comments are skipped).
    events: Vec<Ev>,
    /// The body ended with a transport error instead of a clean end.
    body_error: Option<String>,
}

impl Streamed {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }

    fn text(&self) -> String {
        self.events.iter().filter_map(Ev::content).collect()
    }

    fn done_count(&self) -> usize {
        self.events.iter().filter(|e| e.is_done()).count()
    }

    fn content_events(&self) -> Vec<&Ev> {
        self.events.iter().filter(|e| e.has_content()).collect()
    }

    /// A complete stream: 200 SSE, the expected text, one `[DONE]` as the last event, no error.
    #[track_caller]
    fn assert_clean(&self, text: &str, ctx: &str) {
        assert_eq!(self.status, 200, "{ctx}: status; body: {}", self.raw);
        assert!(
            self.header("content-type").starts_with("text/event-stream"),
            "{ctx}: content-type {}",
            self.header("content-type")
        );
        assert_eq!(self.text(), text, "{ctx}: content; body: {}", self.raw);
        assert_eq!(
            self.done_count(),
            1,
            "{ctx}: one [DONE]; body: {}",
            self.raw
        );
        assert!(
            self.events.last().is_some_and(Ev::is_done),
            "{ctx}: [DONE] last; body: {}",
            self.raw
        );
        assert!(
            !self
                .events
                .iter()
                .any(|e| e.json().is_some_and(|v| v.get("error").is_some())
                    || e.event.as_deref() == Some("error")),
            "{ctx}: no error event; body: {}",
            self.raw
        );
        assert!(self.body_error.is_none(), "{ctx}: {:?}", self.body_error);
    }

    /// Content then the SPEC's stream_error event as the last event, and no `[DONE]`.
    #[track_caller]
    fn assert_interrupted(&self, text: &str, ctx: &str) {
        assert_eq!(self.status, 200, "{ctx}: status; body: {}", self.raw);
        assert_eq!(self.text(), text, "{ctx}: content; body: {}", self.raw);
        assert_eq!(self.done_count(), 0, "{ctx}: no [DONE]; body: {}", self.raw);
        let last = self
            .events
            .last()
            .and_then(Ev::json)
            .unwrap_or_else(|| panic!("{ctx}: no final JSON event; body: {}", self.raw));
        assert_eq!(last["error"]["type"], "stream_error", "{ctx}: {last}");
        assert_eq!(
            last["error"]["code"], "upstream_interrupted",
            "{ctx}: {last}"
        );
        assert!(
            last["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{ctx}: {last}"
        );
        assert!(
            self.raw.ends_with("\n\n"),
            "{ctx}: error event is properly terminated"
        );
        assert!(self.body_error.is_none(), "{ctx}: {:?}", self.body_error);
    }
}

/// Reads the whole response, timestamping each SSE block at its arrival.
async fn read_stream(resp: reqwest::Response, t0: Instant) -> Streamed {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body = resp.bytes_stream();
    let mut split = Splitter::default();
    let mut events = Vec::new();
    let mut raw = Vec::new();
    let mut body_error = None;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(b) => {
                raw.extend_from_slice(&b);
                split.push(&b, t0.elapsed(), &mut events);
            }
            Err(e) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }
    split.finish(t0.elapsed(), &mut events);
    events.retain(|e| e.data.is_some() || e.event.is_some());
    Streamed {
        status,
        headers,
        raw: String::from_utf8_lossy(&raw).into_owned(),
        events,
        body_error,
    }
}

// ---------------------------------------------------------------------------------------------
// Requests, configs and scripted streams
// ---------------------------------------------------------------------------------------------

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn stream_body(model: &str) -> Value {
    let mut b = chat_body(model);
    b["stream"] = json!(true);
    b
}

fn stream_body_usage(model: &str, include: bool) -> Value {
    let mut b = stream_body(model);
    b["stream_options"] = json!({"include_usage": include});
    b
}

async fn stream(p: &Proxy, body: Value) -> Streamed {
    let t0 = Instant::now();
    let r = p.post_chat(body).await;
    read_stream(r, t0).await
}

/// One OpenAI-compatible provider `a`, with extra YAML appended to it.
fn one(url: &str, extra: &str) -> String {
    format!(
        "providers:\n  - {{name: a, kind: openai-compatible, base_url: \"{url}\", priority: 1{extra}}}\n"
    )
}

async fn pair() -> (MockUpstream, MockUpstream) {
    (MockUpstream::start().await, MockUpstream::start().await)
}

/// Model name used in the chunks of the provider that fails, so its bytes can be traced.
const A_MODEL: &str = "model-from-a";
const B_TEXT: &str = "Answer from b";

fn a_role() -> SseEv {
    SseEv::Data(role_json(A_MODEL))
}

fn a_text(s: &str) -> SseEv {
    SseEv::Data(chunk_json(A_MODEL, s))
}

/// Anthropic-style in-stream error.
fn anthropic_error() -> SseEv {
    SseEv::Event(
        "error".into(),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
            .to_string(),
    )
}

/// OpenAI-style in-stream error.
fn openai_error() -> SseEv {
    SseEv::Data(
        json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error", "code": null}})
            .to_string(),
    )
}

fn tool_call_json(model: &str) -> String {
    json!({
        "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": model,
        "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"ci"}}]}, "finish_reason": null}]
    })
    .to_string()
}

/// A failover case: what provider `a` does (`None`: nothing listens), with provider YAML.
struct Case {
    name: &'static str,
    a: Option<Step>,
    extra: &'static str,
    /// The failover cannot happen sooner than this (a timeout).
    min: Duration,
    /// Also run the same failure for a non-streaming request.
    plain: bool,
}

impl Case {
    fn new(name: &'static str, a: Step) -> Case {
        Case {
            name,
            a: Some(a),
            extra: "",
            min: Duration::ZERO,
            plain: false,
        }
    }

    fn sse(name: &'static str, evs: Vec<SseEv>) -> Case {
        Case::new(name, Step::sse(evs))
    }

    fn timeout(mut self, extra: &'static str, min: Duration) -> Case {
        self.extra = extra;
        self.min = min;
        self
    }

    fn plain(mut self) -> Case {
        self.plain = true;
        self
    }
}

/// Runs `case` streaming (and non-streaming when it applies): `a` fails before any content, so the
/// client must see one clean answer from `b`, and `a`'s bytes must not leak into it.
async fn run_failover_case(case: Case) {
    let modes: &[bool] = if case.plain { &[true, false] } else { &[true] };
    for &streaming in modes {
        let ctx = format!(
            "{} ({})",
            case.name,
            if streaming { "stream" } else { "non-stream" }
        );
        let (a, b) = pair().await;
        let a_url = match &case.a {
            Some(step) => {
                a.push(step.clone());
                a.url()
            }
            None => format!("http://127.0.0.1:{}/v1", closed_port()),
        };
        b.push(Step::ok_chat(B_TEXT));
        let p = Proxy::start(&two(&a_url, &b.url(), case.extra, "")).await;
        let t0 = Instant::now();
        let r = p
            .post_chat(if streaming {
                stream_body("m")
            } else {
                chat_body("m")
            })
            .await;
        let (provider, failover, attempts, trace_id) = (
            hdr(&r, "x-stockyard-provider"),
            hdr(&r, "x-stockyard-failover"),
            hdr(&r, "x-stockyard-attempts"),
            hdr(&r, "x-stockyard-trace-id"),
        );
        if streaming {
            let s = read_stream(r, t0).await;
            s.assert_clean(B_TEXT, &ctx);
            assert!(
                !s.raw.contains(A_MODEL),
                "{ctx}: a's held bytes leaked: {}",
                s.raw
            );
            assert!(s.events[0].json().unwrap()["choices"][0]["delta"]["role"] == "assistant");
        } else {
            assert_eq!(r.status(), 200, "{ctx}");
            assert!(hdr(&r, "content-type").starts_with("application/json"));
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["choices"][0]["message"]["content"], B_TEXT, "{ctx}");
        }
        let took = t0.elapsed();
        assert_eq!(provider, "b", "{ctx}");
        assert_eq!(failover, "true", "{ctx}");
        assert_eq!(attempts, "2", "{ctx}");
        if case.a.is_some() {
            assert_eq!(a.hits(), 1, "{ctx}: a tried once");
        }
        assert_eq!(b.hits(), 1, "{ctx}: b tried once");
        assert!(
            took >= case.min && took < case.min + Duration::from_secs(5),
            "{ctx}: took {took:?}"
        );
        // The trace records the failed attempt and the one that answered.
        let t = p.wait_trace(&trace_id).await;
        assert_eq!(t["status"], "ok", "{ctx}: {t}");
        assert_eq!(t["provider"], "b", "{ctx}: {t}");
        assert_eq!(t["stream"], streaming, "{ctx}: {t}");
        let outcomes: Vec<(&str, &str)> = t["attempts"]
            .as_array()
            .unwrap_or_else(|| panic!("{ctx}: {t}"))
            .iter()
            .map(|a| {
                (
                    a["provider"].as_str().unwrap_or(""),
                    a["outcome"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(outcomes, [("a", "failed"), ("b", "ok")], "{ctx}: {t}");
        assert!(
            t["attempts"][0]["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "{ctx}: {t}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Relay
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn relays_chunk_by_chunk_without_buffering() {
    let a = MockUpstream::start().await;
    let mut evs = vec![SseEv::Data(role_json("m"))];
    for i in 0..5 {
        if i > 0 {
            evs.push(SseEv::Delay(ms(200)));
        }
        evs.push(SseEv::Data(chunk_json("m", &format!("tok{i} "))));
    }
    evs.push(SseEv::Data(finish_json("m", "stop")));
    evs.push(SseEv::Done);
    a.push(Step::sse(evs));
    let p = Proxy::start(&one(&a.url(), "")).await;
    let s = stream(&p, stream_body("m")).await;
    s.assert_clean("tok0 tok1 tok2 tok3 tok4 ", "paced stream");
    let at: Vec<Duration> = s
        .events
        .iter()
        .filter(|e| e.content().is_some())
        .map(|e| e.at)
        .collect();
    assert_eq!(at.len(), 5);
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    println!("arrival gaps between content chunks: {gaps:?}");
    for g in &gaps {
        // A relay that batched would deliver the chunks together (gaps ~0). The lower bound is
        // loose so a scheduling hiccup on a loaded machine does not fail the test.
        assert!(
            *g >= ms(100) && *g < ms(1500),
            "chunks not relayed as they arrive: gaps {gaps:?}"
        );
    }
    // Spread over ~800 ms like the upstream, not delivered in one burst at the end.
    assert!(at[4] - at[0] >= ms(700), "{at:?}");
}

/// After `[DONE]` the proxy reads the rest of the upstream body (the chunked terminator) so the
/// connection goes back to the pool: sequential streams share one upstream connection instead
/// of paying a new handshake each.
#[tokio::test]
async fn sequential_streams_reuse_the_upstream_connection() {
    let a = MockUpstream::start().await;
    for _ in 0..3 {
        // The body's end comes a little after `[DONE]`, as over a real network.
        let mut evs = Step::chat_stream(&["a", "b"]);
        evs.push(SseEv::Delay(ms(20)));
        a.push(Step::sse(evs));
    }
    let p = Proxy::start(&one(&a.url(), "")).await;
    for i in 0..3 {
        let s = stream(&p, stream_body("m")).await;
        s.assert_clean("ab", &format!("stream {i}"));
        // Give the background read of the body's end (20 ms away) time before the next request.
        tokio::time::sleep(ms(300)).await;
    }
    assert_eq!(a.hits(), 3);
    assert_eq!(
        a.connections_opened(),
        1,
        "each stream opened its own upstream connection"
    );
}

/// Back-to-back upstream events must not be held back either: no write coalescing, no Nagle
/// delay on the client socket (which would hold every small write after the first until the
/// client's delayed ACK, ~40 ms on Linux).
#[tokio::test]
async fn relays_back_to_back_events_without_delay() {
    let a = MockUpstream::start().await;
    let pieces: Vec<String> = (0..10).map(|i| format!("w{i} ")).collect();
    let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
    a.set_default(Step::sse(Step::chat_stream(&refs)));
    let p = Proxy::start(&one(&a.url(), "")).await;
    // Time from the first content event to the end of the stream, direct and through the proxy.
    let tail = |s: &Streamed, end: Duration| end - s.content_events()[0].at;
    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        for (url, out) in [
            (format!("{}/chat/completions", a.url()), &mut direct),
            (format!("{}/v1/chat/completions", p.url), &mut proxied),
        ] {
            let t0 = Instant::now();
            let r = p
                .client
                .post(url)
                .json(&stream_body("m"))
                .send()
                .await
                .unwrap();
            let s = read_stream(r, t0).await;
            let end = t0.elapsed();
            s.assert_clean(&pieces.concat(), "back to back");
            out.push(tail(&s, end));
        }
    }
    let (d, q) = (median(direct), median(proxied));
    println!("first content to end of stream: direct median {d:?}, through the proxy {q:?}");
    assert!(
        q < d + ms(20),
        "the relay holds back-to-back events: median tail {q:?} through the proxy vs {d:?} direct"
    );
}

#[tokio::test]
async fn stream_response_headers() {
    // Straight success, streaming and non-streaming side by side.
    let a = MockUpstream::start().await;
    let p = Proxy::start(&one(&a.url(), "")).await;
    let r = p.post_chat(stream_body("m")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "content-type"), "text/event-stream");
    assert_eq!(hdr(&r, "cache-control"), "no-cache");
    assert_eq!(hdr(&r, "x-accel-buffering"), "no");
    assert_eq!(hdr(&r, "x-stockyard-provider"), "a");
    assert_eq!(hdr(&r, "x-stockyard-model"), "m");
    assert_eq!(hdr(&r, "x-stockyard-failover"), "false");
    assert_eq!(hdr(&r, "x-stockyard-attempts"), "1");
    assert!(hdr(&r, "x-stockyard-trace-id").starts_with("tr_"));
    assert!(
        r.headers().get("content-length").is_none(),
        "a stream has no length"
    );
    read_stream(r, Instant::now())
        .await
        .assert_clean("Hello from mock", "plain success");

    let r = p.chat("m").await;
    assert_eq!(r.status(), 200);
    assert!(hdr(&r, "content-type").starts_with("application/json"));
    assert_eq!(hdr(&r, "x-stockyard-provider"), "a");
    assert_eq!(hdr(&r, "x-stockyard-failover"), "false");
    assert!(hdr(&r, "x-stockyard-trace-id").starts_with("tr_"));

    // After a failover the held stream is served with b's identity.
    let (a, b) = pair().await;
    a.push(Step::status(503));
    let p = Proxy::start(&two(&a.url(), &b.url(), "", "")).await;
    let r = p.post_chat(stream_body("m")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "content-type"), "text/event-stream");
    assert_eq!(hdr(&r, "cache-control"), "no-cache");
    assert_eq!(hdr(&r, "x-accel-buffering"), "no");
    assert_eq!(hdr(&r, "x-stockyard-provider"), "b");
    assert_eq!(hdr(&r, "x-stockyard-failover"), "true");
    assert_eq!(hdr(&r, "x-stockyard-attempts"), "2");
    let t1 = hdr(&r, "x-stockyard-trace-id");
    assert!(t1.starts_with("tr_"));
    read_stream(r, Instant::now())
        .await
        .assert_clean("Hello from mock", "after failover");
    let r = p.post_chat(stream_body("m")).await;
    assert_ne!(
        hdr(&r, "x-stockyard-trace-id"),
        t1,
        "trace ids are per request"
    );
}

// ---------------------------------------------------------------------------------------------
// Failover before the first content event
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn fails_over_before_first_byte() {
    let cases = vec![
        Case::new("HTTP 503", Step::status(503)).plain(),
        Case::new("HTTP 429", Step::status(429)).plain(),
        Case::new(
            "HTTP 500 with an SSE content type",
            Step::status(500).header("content-type", "text/event-stream"),
        )
        .plain(),
        Case {
            name: "connection refused",
            a: None,
            extra: "",
            min: Duration::ZERO,
            plain: true,
        },
        Case::new("connection reset", Step::reset()).plain(),
        Case::new("closed before the status line", Step::close()).plain(),
        Case::new("no headers within first_byte", Step::hang())
            .timeout(", timeouts: {first_byte: 300ms}", ms(300))
            .plain(),
    ];
    for case in cases {
        run_failover_case(case).await;
    }
}

#[tokio::test]
async fn fails_over_on_timeouts_before_first_content() {
    let cases = vec![
        Case::sse(
            "headers and role chunk, then no content within first_byte",
            vec![a_role(), SseEv::Stall],
        )
        .timeout(", timeouts: {first_byte: 300ms}", ms(300)),
        Case::sse(
            "only keep-alives within first_byte",
            vec![
                SseEv::Comment("OPENROUTER PROCESSING".into()),
                a_role(),
                SseEv::Delay(ms(100)),
                SseEv::Comment("OPENROUTER PROCESSING".into()),
                SseEv::Delay(ms(100)),
                SseEv::Comment("OPENROUTER PROCESSING".into()),
                SseEv::Delay(ms(100)),
                SseEv::Comment("OPENROUTER PROCESSING".into()),
                SseEv::Stall,
            ],
        )
        .timeout(", timeouts: {first_byte: 300ms}", ms(300)),
        Case::new(
            "headers, then the body held back",
            Step::sse(vec![a_role(), a_text("late")]).delay_body(Duration::from_secs(5)),
        )
        .timeout(", timeouts: {first_byte: 300ms}", ms(300)),
    ];
    for case in cases {
        run_failover_case(case).await;
    }
}

#[tokio::test]
async fn fails_over_on_in_stream_errors_before_content() {
    let cases = vec![
        Case::sse("data error event", vec![a_role(), openai_error()]),
        Case::sse(
            "Anthropic-style event: error",
            vec![a_role(), anthropic_error()],
        ),
        Case::sse("error as the very first event", vec![openai_error()]),
        Case::sse(
            "error after keep-alives",
            vec![
                SseEv::Comment("OPENROUTER PROCESSING".into()),
                a_role(),
                anthropic_error(),
            ],
        ),
        // Some backends answer a stream request with a JSON error body and status 200.
        Case::new(
            "200 with a JSON error body",
            Step::json(200, error_json("overloaded")),
        ),
    ];
    for case in cases {
        run_failover_case(case).await;
    }
}

#[tokio::test]
async fn fails_over_on_streams_that_end_before_content() {
    let cases = vec![
        Case::sse("dropped after the role chunk", vec![a_role(), SseEv::Drop]),
        Case::sse("dropped before any event", vec![SseEv::Drop]),
        Case::sse("clean end after the role chunk", vec![a_role()]),
        Case::sse("[DONE] before content", vec![a_role(), SseEv::Done]),
        Case::sse(
            "empty content chunks then [DONE]",
            vec![a_role(), a_text(""), a_text(""), SseEv::Done],
        ),
        Case::sse(
            "keep-alive then [DONE]",
            vec![SseEv::Comment("OPENROUTER PROCESSING".into()), SseEv::Done],
        ),
    ];
    for case in cases {
        run_failover_case(case).await;
    }
}

#[tokio::test]
async fn fails_over_on_malformed_streams_before_content() {
    let mut invalid_utf8 =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\ndata: "
            .to_vec();
    invalid_utf8.extend_from_slice(b"\xff\xfe\xfd\n\n");
    let cases = vec![
        Case::sse(
            "garbage JSON data",
            vec![a_role(), SseEv::Data("{not json".into())],
        ),
        Case::sse("plain text data", vec![SseEv::Data("hello there".into())]),
        Case::sse(
            "event cut mid-way by a dropped connection",
            vec![a_role(), SseEv::Raw("data: {\"choi".into()), SseEv::Drop],
        ),
        Case::new("invalid UTF-8 in an event", Step::raw(invalid_utf8)),
        // Not an event stream at all.
        Case::new("200 with a non-JSON, non-SSE body", Step::garbage()).plain(),
        Case::new(
            "200 text/html",
            Step::body(200, "text/html", "<html>gateway</html>"),
        )
        .plain(),
    ];
    for case in cases {
        run_failover_case(case).await;
    }
}

/// Anything that carries content commits the stream: text, a tool-call fragment, or a finish
/// reason. After that a failure is a stream_error, never a failover.
#[tokio::test]
async fn first_content_kinds_commit_the_stream() {
    // Tool-call fragment first, then the connection drops: committed, so interrupted.
    let (a, b) = pair().await;
    a.push(Step::sse(vec![
        a_role(),
        SseEv::Data(tool_call_json(A_MODEL)),
        SseEv::Drop,
    ]));
    let p = Proxy::start(&two(&a.url(), &b.url(), "", "")).await;
    let s = stream(&p, stream_body("m")).await;
    s.assert_interrupted("", "tool call then drop");
    assert!(s.events[1].json().unwrap()["choices"][0]["delta"]["tool_calls"].is_array());
    assert_eq!(s.header("x-stockyard-provider"), "a");
    assert_eq!((a.hits(), b.hits()), (1, 0));

    // A bare finish_reason is content too; with it the stream is complete even without [DONE].
    let (a, b) = pair().await;
    a.push(Step::sse(vec![
        a_role(),
        SseEv::Data(finish_json(A_MODEL, "stop")),
        SseEv::Drop,
    ]));
    let p = Proxy::start(&two(&a.url(), &b.url(), "", "")).await;
    let s = stream(&p, stream_body("m")).await;
    s.assert_clean("", "finish only");
    assert_eq!(s.content_events().len(), 1);
    assert_eq!((a.hits(), b.hits()), (1, 0));
}

// ---------------------------------------------------------------------------------------------
// Failures after content
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn interruption_after_content_ends_with_stream_error() {
    struct After {
        name: &'static str,
        tail: Vec<SseEv>,
        extra: &'static str,
        min: Duration,
    }
    let after = |name, tail| After {
        name,
        tail,
        extra: "",
        min: Duration::ZERO,
    };
    let cases = vec![
        after("data error event", vec![openai_error()]),
        after("Anthropic-style event: error", vec![anthropic_error()]),
        after("dropped connection", vec![SseEv::Drop]),
        after(
            "dropped connection mid-event",
            vec![SseEv::Raw("data: {\"id\":".into()), SseEv::Drop],
        ),
        after("clean end without finish_reason or [DONE]", vec![]),
        after("garbage JSON data", vec![SseEv::Data("{oops".into())]),
        After {
            name: "stall longer than idle",
            tail: vec![SseEv::Stall],
            extra: ", timeouts: {idle: 300ms}",
            min: ms(300),
        },
    ];
    for case in cases {
        let ctx = case.name;
        let (a, b) = pair().await;
        let mut evs = vec![a_role(), a_text("Partial"), a_text(" answer")];
        evs.extend(case.tail);
        a.push(Step::sse(evs));
        let p = Proxy::start(&two(&a.url(), &b.url(), case.extra, "")).await;
        let t0 = Instant::now();
        let s = stream(&p, stream_body("m")).await;
        let took = t0.elapsed();
        s.assert_interrupted("Partial answer", ctx);
        assert_eq!(s.header("x-stockyard-provider"), "a", "{ctx}");
        assert_eq!((a.hits(), b.hits()), (1, 0), "{ctx}: b must not be hit");
        assert!(
            took >= case.min && took < case.min + Duration::from_secs(5),
            "{ctx}: {took:?}"
        );
        let t = p.wait_trace(&s.header("x-stockyard-trace-id")).await;
        assert_eq!(
            (t["status"].as_str(), t["provider"].as_str()),
            (Some("error"), Some("a")),
            "{ctx}: {t}"
        );
        assert!(
            t["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{ctx}: the trace records why the stream was cut: {t}"
        );
        if ctx.starts_with("stall") {
            assert!(
                a.wait_client_closed(Duration::from_secs(10)).await,
                "{ctx}: the stalled upstream connection was not closed"
            );
        }
    }

    // Non-streaming side by side: the same failures mid-body are still before anything was
    // committed to the client, so they fail over.
    for (name, step, extra) in [
        ("body cut short", Step::ok_chat("from a").truncated(20), ""),
        (
            "body stalls longer than idle",
            Step::ok_chat("from a").delay_body(Duration::from_secs(5)),
            ", timeouts: {idle: 300ms}",
        ),
    ] {
        let (a, b) = pair().await;
        a.push(step);
        b.push(Step::ok_chat(B_TEXT));
        let p = Proxy::start(&two(&a.url(), &b.url(), extra, "")).await;
        let r = p.chat("m").await;
        assert_eq!(r.status(), 200, "{name}");
        assert_eq!(hdr(&r, "x-stockyard-provider"), "b", "{name}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], B_TEXT, "{name}");
        assert_eq!((a.hits(), b.hits()), (1, 1), "{name}");
    }
}

#[tokio::test]
async fn missing_done_after_finish_is_synthesized() {
    let cases: Vec<(&str, Vec<SseEv>, bool)> = vec![
        (
            "finish then dropped connection",
            vec![
                a_text("All"),
                a_text(" done"),
                SseEv::Data(finish_json(A_MODEL, "stop")),
                SseEv::Drop,
            ],
            false,
        ),
        (
            "finish then clean end",
            vec![
                a_text("All"),
                a_text(" done"),
                SseEv::Data(finish_json(A_MODEL, "stop")),
            ],
            false,
        ),
        (
            "finish, usage, then dropped connection",
            vec![
                a_text("All"),
                a_text(" done"),
                SseEv::Data(finish_json(A_MODEL, "stop")),
                SseEv::Data(common::mock::usage_json(A_MODEL)),
                SseEv::Drop,
            ],
            true,
        ),
    ];
    for (ctx, tail, include_usage) in cases {
        let a = MockUpstream::start().await;
        let mut evs = vec![a_role()];
        evs.extend(tail);
        a.push(Step::sse(evs));
        let p = Proxy::start(&one(&a.url(), "")).await;
        let body = if include_usage {
            stream_body_usage("m", true)
        } else {
            stream_body("m")
        };
        let s = stream(&p, body).await;
        s.assert_clean("All done", ctx);
        let t = p.wait_trace(&s.header("x-stockyard-trace-id")).await;
        assert_eq!(t["status"], "ok", "{ctx}: {t}");
        assert_eq!(
            s.events.iter().filter(|e| e.is_usage_only()).count(),
            usize::from(include_usage),
            "{ctx}"
        );
    }

    // Content but no finish_reason, then the connection closes: truncated, so stream_error.
    let a = MockUpstream::start().await;
    a.push(Step::sse(vec![a_role(), a_text("All"), SseEv::Drop]));
    let p = Proxy::start(&one(&a.url(), "")).await;
    stream(&p, stream_body("m"))
        .await
        .assert_interrupted("All", "no finish_reason");
}

// ---------------------------------------------------------------------------------------------
// Every provider fails before content
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn all_providers_failing_before_content_is_a_json_error() {
    struct Both {
        name: &'static str,
        a: Step,
        b: Step,
        /// The same failure for a non-streaming request.
        a_plain: Step,
        b_plain: Step,
        extra: &'static str,
        status: u16,
        reasons: [&'static str; 2],
        plain_reasons: [&'static str; 2],
    }
    let cases = vec![
        Both {
            name: "both 503",
            a: Step::status(503),
            b: Step::status(503),
            a_plain: Step::status(503),
            b_plain: Step::status(503),
            extra: "",
            status: 503,
            reasons: ["http_error", "http_error"],
            plain_reasons: ["http_error", "http_error"],
        },
        Both {
            name: "503 then 429",
            a: Step::status(503),
            b: Step::status(429),
            a_plain: Step::status(503),
            b_plain: Step::status(429),
            extra: "",
            status: 429,
            reasons: ["http_error", "http_error"],
            plain_reasons: ["http_error", "http_error"],
        },
        Both {
            name: "503 then an in-stream error (plain: a garbage body)",
            a: Step::status(503),
            b: Step::sse(vec![a_role(), anthropic_error()]),
            a_plain: Step::status(503),
            b_plain: Step::garbage(),
            extra: "",
            status: 502,
            reasons: ["http_error", "stream_error"],
            plain_reasons: ["http_error", "malformed_response"],
        },
        Both {
            name: "both time out",
            a: Step::hang(),
            b: Step::sse(vec![a_role(), SseEv::Stall]),
            a_plain: Step::hang(),
            b_plain: Step::hang(),
            extra: ", timeouts: {first_byte: 300ms}",
            status: 504,
            reasons: ["first_byte_timeout", "first_byte_timeout"],
            plain_reasons: ["first_byte_timeout", "first_byte_timeout"],
        },
    ];
    for case in cases {
        for streaming in [true, false] {
            let ctx = format!(
                "{} ({})",
                case.name,
                if streaming { "stream" } else { "non-stream" }
            );
            let (a, b) = pair().await;
            let (sa, sb, reasons) = if streaming {
                (case.a.clone(), case.b.clone(), case.reasons)
            } else {
                (
                    case.a_plain.clone(),
                    case.b_plain.clone(),
                    case.plain_reasons,
                )
            };
            a.push(sa);
            b.push(sb);
            let p = Proxy::start(&two(&a.url(), &b.url(), case.extra, "")).await;
            let r = p
                .post_chat(if streaming {
                    stream_body("m")
                } else {
                    chat_body("m")
                })
                .await;
            assert_eq!(r.status().as_u16(), case.status, "{ctx}");
            assert!(
                hdr(&r, "content-type").starts_with("application/json"),
                "{ctx}: {}",
                hdr(&r, "content-type")
            );
            let text = r.text().await.unwrap();
            assert!(!text.starts_with("data:"), "{ctx}: not SSE: {text}");
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{ctx}: not JSON ({e}): {text}"));
            assert_eq!(v["error"]["code"], "all_providers_failed", "{ctx}: {v}");
            assert!(v["error"]["message"].is_string(), "{ctx}: {v}");
            let got: Vec<&str> = v["error"]["attempts"]
                .as_array()
                .unwrap_or_else(|| panic!("{ctx}: no attempts: {v}"))
                .iter()
                .map(|a| a["reason"].as_str().unwrap_or(""))
                .collect();
            assert_eq!(got, reasons, "{ctx}: {v}");
            assert_eq!((a.hits(), b.hits()), (1, 1), "{ctx}");
        }
    }

    // Nothing listening anywhere: transport failure, 502.
    let dead = || format!("http://127.0.0.1:{}/v1", closed_port());
    let p = Proxy::start(&two(&dead(), &dead(), "", "")).await;
    let r = p.post_chat(stream_body("m")).await;
    assert_eq!(r.status(), 502);
    assert!(hdr(&r, "content-type").starts_with("application/json"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "all_providers_failed");
}

// ---------------------------------------------------------------------------------------------
// Client disconnect
// ---------------------------------------------------------------------------------------------

/// Sends a stream request, reads until the first content event, then drops the response.
async fn read_first_content_then_drop(p: &Proxy) {
    let r = p.post_chat(stream_body("m")).await;
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut split = Splitter::default();
    let mut events = Vec::new();
    while !events.iter().any(Ev::has_content) {
        let chunk = tokio::time::timeout(Duration::from_secs(20), body.next())
            .await
            .expect("first content within 20s")
            .expect("body ended before content")
            .unwrap();
        split.push(&chunk, Duration::ZERO, &mut events);
    }
    drop(body);
}

/// How long the upstream may stay open after the client left. Without a cancel it stays open
/// until the proxy's idle timeout (60 s by default) or for good; the observed delay is printed.
const CANCEL_WITHIN: Duration = Duration::from_secs(5);

#[tokio::test]
async fn client_disconnect_cancels_upstream() {
    // Upstream stalls after some content.
    let a = MockUpstream::start().await;
    a.push(Step::sse(vec![a_role(), a_text("first"), SseEv::Stall]));
    let p = Proxy::start(&one(&a.url(), "")).await;
    read_first_content_then_drop(&p).await;
    let t = Instant::now();
    assert!(
        a.wait_client_closed(CANCEL_WITHIN).await,
        "upstream still open {CANCEL_WITHIN:?} after the client left (stalled upstream)"
    );
    println!(
        "stalled upstream closed {:?} after client disconnect",
        t.elapsed()
    );

    // Upstream still actively streaming (a chunk every 20 ms for 10 s, longer than CANCEL_WITHIN).
    let a = MockUpstream::start().await;
    let mut evs = vec![a_role()];
    for i in 0..500 {
        evs.push(a_text(&format!("t{i} ")));
        evs.push(SseEv::Delay(ms(20)));
    }
    a.push(Step::sse(evs));
    let p = Proxy::start(&one(&a.url(), "")).await;
    read_first_content_then_drop(&p).await;
    let t = Instant::now();
    assert!(
        a.wait_client_closed(CANCEL_WITHIN).await,
        "upstream still open {CANCEL_WITHIN:?} after the client left (active upstream)"
    );
    println!(
        "active upstream closed {:?} after client disconnect",
        t.elapsed()
    );

    // Client gives up while the response is still held (before first content).
    let a = MockUpstream::start().await;
    a.push(Step::sse(vec![a_role(), SseEv::Stall]));
    let p = Proxy::start(&one(&a.url(), "")).await;
    // The client gives up once its request is at the upstream and nothing came back for 300 ms
    // (a fixed client timeout alone could fire before the request got there).
    let mut pending = p.spawn_chat(stream_body("m"));
    a.wait_hits(1).await;
    let give_up = tokio::time::timeout(ms(300), &mut pending).await;
    assert!(give_up.is_err(), "nothing may be sent before content");
    pending.abort();
    let t = Instant::now();
    assert!(
        a.wait_client_closed(CANCEL_WITHIN).await,
        "upstream still open {CANCEL_WITHIN:?} after the client left (before content)"
    );
    println!(
        "held upstream closed {:?} after client disconnect",
        t.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// SSE framing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sse_framing_variants_relay_the_same_content() {
    const PIECES: [&str; 4] = ["Hello", ", wor", "ld! ", "Ünïcødé ✓"];
    let text: String = PIECES.concat();
    let standard = || Step::chat_stream(&PIECES);
    let keepalive = || SseEv::Comment("OPENROUTER PROCESSING".into());
    let m = common::mock::MOCK_MODEL;
    let pretty = |piece: &str| {
        let v: Value = serde_json::from_str(&chunk_json(m, piece)).unwrap();
        SseEv::Data(serde_json::to_string_pretty(&v).unwrap())
    };
    let cases: Vec<(&str, Step)> = vec![
        ("LF framing", Step::sse(standard())),
        ("CRLF framing", Step::sse(standard()).crlf()),
        ("split writes", Step::sse(standard()).split_writes()),
        (
            "CRLF framing, split writes",
            Step::sse(standard()).crlf().split_writes(),
        ),
        (
            "CR-only framing",
            Step::sse(
                standard()
                    .into_iter()
                    .map(|e| match e {
                        SseEv::Data(d) => SseEv::Raw(format!("data: {d}\r\r")),
                        SseEv::Done => SseEv::Raw("data: [DONE]\r\r".into()),
                        other => other,
                    })
                    .collect(),
            ),
        ),
        ("keep-alive comments before and after content", {
            let mut evs = vec![keepalive(), keepalive()];
            for e in standard() {
                evs.push(e);
                evs.push(keepalive());
            }
            Step::sse(evs)
        }),
        ("multi-line data (pretty-printed JSON)", {
            let mut evs = vec![SseEv::Data(role_json(m))];
            evs.extend(PIECES.iter().map(|p| pretty(p)));
            evs.push(SseEv::Data(finish_json(m, "stop")));
            evs.push(SseEv::Done);
            Step::sse(evs).split_writes()
        }),
        ("id/retry/event fields and extra blank lines", {
            let mut evs = vec![SseEv::Raw("retry: 1000\n\n".into())];
            for (i, e) in standard().into_iter().enumerate() {
                evs.push(SseEv::Raw("\n\n".into()));
                match e {
                    SseEv::Data(d) => evs.push(SseEv::Raw(format!("id: {i}\ndata: {d}\n\n"))),
                    other => evs.push(other),
                }
            }
            Step::sse(evs)
        }),
        (
            "everything in one write",
            Step::sse(vec![SseEv::Raw(
                standard()
                    .iter()
                    .map(|e| match e {
                        SseEv::Data(d) => format!("data: {d}\n\n"),
                        _ => "data: [DONE]\n\n".to_string(),
                    })
                    .collect(),
            )]),
        ),
    ];
    for (ctx, step) in cases {
        let a = MockUpstream::start().await;
        a.push(step);
        let p = Proxy::start(&one(&a.url(), "")).await;
        let s = stream(&p, stream_body("m")).await;
        s.assert_clean(&text, ctx);
        if ctx == "CRLF framing" {
            // Events are relayed byte for byte, framing included.
            let want = format!("data: {}\r\n\r\n", chunk_json(m, PIECES[1]));
            assert!(s.raw.contains(&want), "{ctx}: {}", s.raw);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Usage
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn usage_is_requested_upstream_and_only_relayed_when_asked() {
    for (ctx, body, client_asked) in [
        ("client did not ask", stream_body("m"), false),
        ("client asked", stream_body_usage("m", true), true),
        ("client said no", stream_body_usage("m", false), false),
    ] {
        let a = MockUpstream::start().await;
        let p = Proxy::start(&one(&a.url(), "")).await;
        let s = stream(&p, body).await;
        s.assert_clean("Hello from mock", ctx);
        // The tokens are recorded whether or not the client sees the usage chunk.
        let t = p.wait_trace(&s.header("x-stockyard-trace-id")).await;
        assert_eq!(
            (t["tokens_in"].as_i64(), t["tokens_out"].as_i64()),
            (Some(10), Some(5)),
            "{ctx}: {t}"
        );
        let sent = a.last_json().unwrap();
        assert_eq!(sent["stream"], true, "{ctx}");
        assert_eq!(
            sent["stream_options"]["include_usage"], true,
            "{ctx}: upstream is always asked for usage: {sent}"
        );
        let usage: Vec<Value> = s
            .events
            .iter()
            .filter(|e| e.is_usage_only())
            .filter_map(Ev::json)
            .collect();
        if client_asked {
            assert_eq!(usage.len(), 1, "{ctx}: {}", s.raw);
            assert_eq!(usage[0]["usage"]["total_tokens"], 15, "{ctx}");
            // It comes after the content and right before [DONE].
            let n = s.events.len();
            assert!(s.events[n - 2].is_usage_only(), "{ctx}: {}", s.raw);
        } else {
            assert!(usage.is_empty(), "{ctx}: usage chunk leaked: {}", s.raw);
            assert!(!s.raw.contains("\"usage\""), "{ctx}: {}", s.raw);
        }
    }

    // Non-streaming side by side: no stream_options upstream, usage in the body as always.
    let a = MockUpstream::start().await;
    let p = Proxy::start(&one(&a.url(), "")).await;
    let r = p.chat("m").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["usage"]["total_tokens"], 15);
    let sent = a.last_json().unwrap();
    assert!(
        sent.get("stream_options").is_none(),
        "stream_options only with stream: {sent}"
    );
}

// ---------------------------------------------------------------------------------------------
// The official OpenAI Python SDK
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn openai_python_sdk_streams_through_failover() {
    let check = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .output();
    match check {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "the official OpenAI Python SDK is required: run `pip install openai` ({})",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("python3 is required for this test, then `pip install openai`: {e}"),
    }
    let (a, b) = pair().await;
    // Request 1: a answers 503; request 2: a fails inside the stream before content.
    a.push(Step::status(503));
    a.push(Step::sse(vec![a_role(), anthropic_error()]));
    // Request 3: a is interrupted after content; the SDK must raise, not end quietly.
    a.push(Step::sse(vec![a_role(), a_text("Partial"), SseEv::Drop]));
    b.push(Step::sse(Step::chat_stream(&["The answer", " is", " 42."])));
    b.push(Step::sse(Step::chat_stream(&["The answer", " is", " 42."])));
    let p = Proxy::start(&two(&a.url(), &b.url(), "", "")).await;
    let url = p.url.clone();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_stream.py");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .arg(&url)
            .output()
            .expect("run python3")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK script failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "1: The answer is 42. [finish=stop]",
            "2: The answer is 42. [finish=stop]",
            "3: Partial [APIError]",
        ],
        "stderr:\n{stderr}"
    );
    assert_eq!((a.hits(), b.hits()), (3, 2));
}

// ---------------------------------------------------------------------------------------------
// Measurement
// ---------------------------------------------------------------------------------------------

/// Time from sending the request to the first content event at the client, and to the end of
/// the stream.
async fn ttft(client: &reqwest::Client, url: &str) -> (Duration, Duration) {
    let t0 = Instant::now();
    let r = client
        .post(url)
        .json(&stream_body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut split = Splitter::default();
    let mut events = Vec::new();
    let mut first = None;
    while let Some(chunk) = body.next().await {
        split.push(&chunk.unwrap(), t0.elapsed(), &mut events);
        if first.is_none() {
            first = events.iter().find(|e| e.has_content()).map(|e| e.at);
        }
    }
    (first.expect("stream had content"), t0.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
#[ignore = "measurement; run with --release -- --ignored --nocapture"]
async fn ttft_overhead() {
    const N: usize = 100;
    let a = MockUpstream::start().await;
    let p = Proxy::start(&one(&a.url(), "")).await;
    let client = reqwest::Client::new();
    let direct_url = format!("{}/chat/completions", a.url());
    let proxy_url = format!("{}/v1/chat/completions", p.url);
    // Warm up connections on both paths.
    for _ in 0..10 {
        ttft(&client, &direct_url).await;
        ttft(&client, &proxy_url).await;
    }
    let mut direct = Vec::with_capacity(N);
    let mut proxied = Vec::with_capacity(N);
    // Interleave so both see the same machine load.
    for _ in 0..N {
        direct.push(ttft(&client, &direct_url).await);
        proxied.push(ttft(&client, &proxy_url).await);
    }
    let first = |v: &[(Duration, Duration)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
    let whole = |v: &[(Duration, Duration)]| v.iter().map(|x| x.1).collect::<Vec<_>>();
    let (d, q) = (median(first(&direct)), median(first(&proxied)));
    let p90 = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() * 9 / 10]
    };
    println!(
        "ttft over {N} streams: direct median {d:?} (p90 {:?}), through stockyard median {q:?} (p90 {:?}), added median {:?}",
        p90(first(&direct)),
        p90(first(&proxied)),
        q.saturating_sub(d)
    );
    let (dw, qw) = (median(whole(&direct)), median(whole(&proxied)));
    println!(
        "whole stream: direct median {dw:?}, through stockyard median {qw:?}, added median {:?}",
        qw.saturating_sub(dw)
    );
}
