//! Chaos matrix (issue 9): every upstream fault × {non-streaming, streaming} × {the first provider
//! fails and the second answers, every provider fails}, through the real server on loopback,
//! plus client-side faults. Single faults are also tested in detail in tests/failover.rs and
//! tests/streaming.rs; this file checks the same contract uniformly and adds what those do not:
//! the trace row of every case, that the server still answers, and that no task or connection
//! leaks.
//!
//! Table-driven: a new fault is one [`Row`] in [`rows`]. Each row says what provider `a` does for
//! a plain and for a streaming request and what the client must see:
//! * [`Expect::Failover`]: `a` fails before anything reached the client. With `b` healthy the
//!   client gets `b`'s clean answer (`x-stockyard-provider: b`, failover, 2 attempts; a stream
//!   has one `[DONE]`, no error event and none of `a`'s held bytes) and the trace is `ok` with
//!   attempts `a failed <reason>`, `b ok`. With `b` failing the same way the client gets the
//!   SPEC's exhausted-chain error (`status`, JSON even for a stream, type `upstream_error`, code
//!   `all_providers_failed`, both attempts with `reason`) and the trace is `error` with that
//!   status.
//! * [`Expect::Relayed`]: `a`'s (large) answer is relayed in full; trace `ok`, provider `a`.
//! * [`Expect::Interrupted`] (streams only): content from `a` has flowed, so the stream ends with
//!   the `stream_error` / `upstream_interrupted` event and no `[DONE]`; trace `error`.
//!
//! Leak check. Every case runs on its own current-thread tokio runtime (in its own thread, so
//! cases run concurrently), which makes `num_alive_tasks()` a per-case figure. Sockets are counted
//! from `/proc/self/fd` (`socket:[inode]` links) and attributed to the case through
//! `/proc/self/net/tcp{,6}`: a socket belongs to the case when its local or remote port is one of
//! the case's ports (proxy listener, mock upstreams, TLS listener). The case runs once as a
//! warm-up; once the counts are stable that is the baseline, which includes what may legitimately
//! stay open: the client's keep-alive connection to the proxy, the proxy's pooled idle
//! connection to `b` (and to `a` where the fault leaves its connection reusable), their hyper
//! tasks and the mocks' connection tasks. The case then runs again and both counts must come back
//! to at most the baseline within a generous poll window: anything a faulty request leaves behind
//! (a hung upstream connection never closed, a relay task never dropped) makes the second run end
//! above the first. After all cases, the process-wide socket count must be back to what it was
//! before the matrix.

mod common;

use common::mock::{chunk_json, error_json, finish_json, role_json, MockUpstream, SseEv, Step};
use common::{chat_body, closed_port, hdr, Proxy};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Model name in the chunks of the failing provider, so its bytes can be recognised.
const A_MODEL: &str = "model-from-a";
const B_TEXT: &str = "Answer from b";
const MB10: usize = 10 << 20;
/// Base URL whose host never resolves (RFC 2606 `.invalid`; resolution fails at once here).
const DNS_FAIL: &str = "http://stockyard-chaos.invalid/v1";
/// Short timeouts so the timeout faults are quick. `total` also bounds the 1 byte/s drip.
const TIMEOUTS: &str = ", timeouts: {connect: 1s, first_byte: 600ms, idle: 400ms, total: 2s}";
/// Cases run at once (each on its own thread and runtime).
const PARALLEL: usize = 6;

// ---------------------------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------------------------

/// What a provider's base URL points at.
#[derive(Clone, Debug)]
enum Fault {
    /// A mock upstream answering every POST with this step.
    Mock(Step),
    /// A port nothing listens on.
    Refused,
    /// A host name that does not resolve.
    Dns,
    /// A TLS listener with a self-signed certificate.
    Tls,
}

#[derive(Clone, Copy, Debug)]
enum Expect {
    /// `reason`: the attempt reason (alternatives separated by `|`); `status`: what the client
    /// gets when every provider fails this way.
    Failover { reason: &'static str, status: u16 },
    /// The answer is relayed in full: `len` bytes (non-streaming) or characters of content.
    Relayed { len: usize },
    /// Stream cut after content: `stream_error` event, no `[DONE]`, `text` relayed before it.
    Interrupted { text: &'static str },
}

#[derive(Clone, Debug)]
struct Side {
    fault: Fault,
    expect: Expect,
}

struct Row {
    name: &'static str,
    plain: Option<Side>,
    stream: Option<Side>,
    /// Provider timeouts (YAML appended to both providers); [`TIMEOUTS`] unless a row needs
    /// others.
    timeouts: &'static str,
}

fn fo(fault: Fault, reason: &'static str, status: u16) -> Option<Side> {
    Some(Side {
        fault,
        expect: Expect::Failover { reason, status },
    })
}

fn mock(step: Step) -> Fault {
    Fault::Mock(step)
}

fn a_role() -> SseEv {
    SseEv::Data(role_json(A_MODEL))
}

fn a_text(s: &str) -> SseEv {
    SseEv::Data(chunk_json(A_MODEL, s))
}

/// `a`'s chat completion (plain) with its own model name.
fn a_completion(content: &str) -> Step {
    Step::json(200, common::mock::chat_completion_json(A_MODEL, content))
}

fn rows() -> Vec<Row> {
    let headers_only = || {
        Step::raw(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 300\r\n\r\n",
        )
    };
    let big_completion = {
        let v = common::mock::chat_completion_json(A_MODEL, &"x".repeat(MB10));
        bytes::Bytes::from(v.to_string())
    };
    let big_len = big_completion.len();
    let big_stream = {
        let piece = "y".repeat(100 << 10);
        let mut evs = vec![a_role()];
        for _ in 0..100 {
            evs.push(a_text(&piece));
        }
        evs.push(SseEv::Data(finish_json(A_MODEL, "stop")));
        evs.push(SseEv::Done);
        evs
    };
    vec![
        Row {
            name: "connection refused",
            timeouts: TIMEOUTS,
            plain: fo(Fault::Refused, "connect_error", 502),
            stream: fo(Fault::Refused, "connect_error", 502),
        },
        Row {
            name: "DNS failure of the base URL",
            timeouts: TIMEOUTS,
            plain: fo(Fault::Dns, "connect_error", 502),
            stream: fo(Fault::Dns, "connect_error", 502),
        },
        Row {
            name: "TLS handshake failure (self-signed certificate)",
            timeouts: TIMEOUTS,
            plain: fo(Fault::Tls, "connect_error", 502),
            stream: fo(Fault::Tls, "connect_error", 502),
        },
        Row {
            name: "reset before headers",
            timeouts: TIMEOUTS,
            plain: fo(mock(Step::reset()), "transport_error|connect_error", 502),
            stream: fo(mock(Step::reset()), "transport_error|connect_error", 502),
        },
        Row {
            name: "reset after headers",
            timeouts: TIMEOUTS,
            plain: fo(
                mock(headers_only().delay_body(Duration::from_millis(100)).rst()),
                "transport_error",
                502,
            ),
            stream: fo(
                mock(Step::sse(vec![SseEv::Delay(Duration::from_millis(100)), SseEv::Drop]).rst()),
                "transport_error",
                502,
            ),
        },
        Row {
            name: "reset mid-body / mid-stream before content",
            timeouts: TIMEOUTS,
            plain: fo(
                mock(a_completion("cut").truncated(40).rst()),
                "transport_error",
                502,
            ),
            stream: fo(
                mock(Step::sse(vec![a_role(), SseEv::Drop]).rst()),
                "transport_error",
                502,
            ),
        },
        Row {
            name: "reset mid-stream after content",
            timeouts: TIMEOUTS,
            plain: None,
            stream: Some(Side {
                fault: mock(Step::sse(vec![a_role(), a_text("Partial"), SseEv::Drop]).rst()),
                expect: Expect::Interrupted { text: "Partial" },
            }),
        },
        Row {
            name: "hang before headers",
            timeouts: TIMEOUTS,
            plain: fo(mock(Step::hang()), "first_byte_timeout", 504),
            stream: fo(mock(Step::hang()), "first_byte_timeout", 504),
        },
        Row {
            name: "hang mid-body / mid-stream before content",
            timeouts: TIMEOUTS,
            plain: fo(
                mock(a_completion("stall").truncated(40).hold()),
                "idle_timeout",
                504,
            ),
            stream: fo(
                mock(Step::sse(vec![a_role(), SseEv::Stall])),
                "first_byte_timeout",
                504,
            ),
        },
        Row {
            name: "hang mid-stream after content",
            timeouts: TIMEOUTS,
            plain: None,
            stream: Some(Side {
                fault: mock(Step::sse(vec![a_role(), a_text("Partial"), SseEv::Stall])),
                expect: Expect::Interrupted { text: "Partial" },
            }),
        },
        Row {
            name: "slow drip, 1 byte/s",
            // idle above the drip interval, so only the total timeout (non-streaming) or the
            // first-content deadline (streaming) can end it.
            // (idle well above it too: a late timer on a loaded machine must not turn the
            // total timeout into an idle one.)
            timeouts: ", timeouts: {connect: 1s, first_byte: 600ms, idle: 2s, total: 2500ms}",
            plain: fo(
                mock(a_completion("drip").drip(Duration::from_secs(1))),
                "total_timeout",
                504,
            ),
            stream: fo(
                mock(Step::sse(Step::chat_stream(&["drip"])).drip(Duration::from_secs(1))),
                "first_byte_timeout",
                504,
            ),
        },
        Row {
            name: "garbage bytes instead of HTTP",
            timeouts: TIMEOUTS,
            plain: fo(
                mock(Step::raw(&b"\x00\xff\xfegarbage\r\n\r\nmore garbage"[..])),
                "transport_error",
                502,
            ),
            stream: fo(
                mock(Step::raw(&b"\x00\xff\xfegarbage\r\n\r\nmore garbage"[..])),
                "transport_error",
                502,
            ),
        },
        Row {
            name: "garbage body / garbage SSE",
            timeouts: TIMEOUTS,
            plain: fo(mock(Step::garbage()), "malformed_response", 502),
            stream: fo(
                mock(Step::sse(vec![SseEv::Raw("data: {{{ not json\n\n".into())])),
                "malformed_response",
                502,
            ),
        },
        Row {
            name: "truncated JSON",
            timeouts: TIMEOUTS,
            plain: fo(
                mock(Step::body(
                    200,
                    "application/json",
                    r#"{"id":"chatcmpl-1","choi"#,
                )),
                "malformed_response",
                502,
            ),
            stream: fo(
                mock(Step::sse(vec![
                    a_role(),
                    SseEv::Data(r#"{"id":"chatcmpl-1","choices":[{"delta":{"cont"#.into()),
                ])),
                "malformed_response",
                502,
            ),
        },
        Row {
            name: "valid JSON of the wrong shape",
            timeouts: TIMEOUTS,
            plain: fo(
                mock(Step::json(200, json!({"object": "list", "data": []}))),
                "malformed_response",
                502,
            ),
            stream: fo(
                mock(Step::sse(vec![SseEv::Data("[1,2,3]".into()), SseEv::Done])),
                "malformed_response",
                502,
            ),
        },
        Row {
            name: "HTTP 200 with an error body",
            timeouts: TIMEOUTS,
            plain: fo(
                mock(Step::json(200, error_json("overloaded"))),
                "upstream_error",
                502,
            ),
            stream: fo(
                mock(Step::json(200, error_json("overloaded"))),
                "upstream_error",
                502,
            ),
        },
        Row {
            name: "SSE without [DONE], before content",
            timeouts: TIMEOUTS,
            plain: fo(
                mock(Step::sse(vec![a_role(), a_text("x")])),
                "malformed_response",
                502,
            ),
            stream: fo(mock(Step::sse(vec![a_role()])), "stream_error", 502),
        },
        Row {
            name: "SSE without [DONE] or finish, after content",
            timeouts: TIMEOUTS,
            plain: None,
            stream: Some(Side {
                fault: mock(Step::sse(vec![a_role(), a_text("Partial")])),
                expect: Expect::Interrupted { text: "Partial" },
            }),
        },
        Row {
            name: "10 MB answer",
            timeouts: TIMEOUTS,
            plain: Some(Side {
                fault: mock(Step::body(200, "application/json", big_completion)),
                expect: Expect::Relayed { len: big_len },
            }),
            stream: Some(Side {
                fault: mock(Step::sse(big_stream)),
                expect: Expect::Relayed {
                    len: 100 * (100 << 10),
                },
            }),
        },
        Row {
            name: "10 MB error body (HTTP 500)",
            timeouts: TIMEOUTS,
            plain: fo(
                mock(Step::body(500, "application/json", "e".repeat(MB10))),
                "http_error",
                500,
            ),
            stream: fo(
                mock(Step::body(500, "application/json", "e".repeat(MB10))),
                "http_error",
                500,
            ),
        },
        Row {
            name: "10 MB non-SSE body to a stream request",
            timeouts: TIMEOUTS,
            plain: None,
            stream: fo(
                mock(Step::body(200, "application/json", "z".repeat(MB10))),
                "malformed_response",
                502,
            ),
        },
        Row {
            name: "non-SSE body to a stream request that stalls",
            timeouts: TIMEOUTS,
            plain: None,
            stream: fo(
                mock(Step::json(200, error_json("x")).truncated(10).hold()),
                "idle_timeout",
                504,
            ),
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// Running one case
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    /// `a` faulty, `b` healthy.
    FirstFails,
    /// `a` and `b` both faulty.
    AllFail,
}

struct Case {
    name: String,
    timeouts: &'static str,
    streaming: bool,
    scenario: Scenario,
    side: Side,
}

/// A provider endpoint set up for a case; keeps its server alive.
struct Target {
    url: String,
    port: Option<u16>,
    mock: Option<MockUpstream>,
    _tls: Option<TlsBad>,
}

async fn target(f: &Fault) -> Target {
    match f {
        Fault::Mock(step) => {
            let m = MockUpstream::start().await;
            m.set_default(step.clone());
            Target {
                url: m.url(),
                port: Some(m.addr.port()),
                mock: Some(m),
                _tls: None,
            }
        }
        Fault::Refused => {
            let port = closed_port();
            Target {
                url: format!("http://127.0.0.1:{port}/v1"),
                port: Some(port),
                mock: None,
                _tls: None,
            }
        }
        Fault::Dns => Target {
            url: DNS_FAIL.into(),
            port: None,
            mock: None,
            _tls: None,
        },
        Fault::Tls => {
            let t = TlsBad::start().await;
            Target {
                url: format!("https://127.0.0.1:{}/v1", t.port),
                port: Some(t.port),
                mock: None,
                _tls: Some(t),
            }
        }
    }
}

fn config(a: &str, b: &str, t: &str) -> String {
    format!(
        "providers:\n  - {{name: a, kind: openai-compatible, base_url: \"{a}\", priority: 1{t}}}\n  - {{name: b, kind: openai-compatible, base_url: \"{b}\", priority: 2{t}}}\nfailover:\n  circuit_breaker: {{failure_threshold: 1000}}\n"
    )
}

fn request_body(streaming: bool) -> Value {
    let mut b = chat_body("m");
    if streaming {
        b["stream"] = json!(true);
    }
    b
}

/// A streamed answer as the client saw it.
struct Streamed {
    raw: String,
    /// `data:` payloads in order.
    data: Vec<String>,
    body_error: Option<String>,
}

impl Streamed {
    fn text(&self) -> String {
        self.data
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect()
    }

    fn dones(&self) -> usize {
        self.data.iter().filter(|d| *d == "[DONE]").count()
    }

    fn has_error(&self) -> bool {
        self.data
            .iter()
            .any(|d| serde_json::from_str::<Value>(d).is_ok_and(|v| v.get("error").is_some()))
            || self.raw.contains("event: error")
    }
}

async fn read_stream(r: reqwest::Response) -> Streamed {
    let mut body = r.bytes_stream();
    let mut raw = Vec::new();
    let mut body_error = None;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(b) => raw.extend_from_slice(&b),
            Err(e) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }
    let raw = String::from_utf8_lossy(&raw).replace("\r\n", "\n");
    let data = raw
        .split("\n\n")
        .filter_map(|block| {
            let lines: Vec<&str> = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|l| l.strip_prefix(' ').unwrap_or(l))
                .collect();
            (!lines.is_empty()).then(|| lines.join("\n"))
        })
        .collect();
    Streamed {
        raw,
        data,
        body_error,
    }
}

/// The trace of a finished request. A stream's trace is written when its body ends, which can be
/// a moment after the client has read the last byte, so poll (generously).
async fn trace_of(p: &Proxy, id: &str, ctx: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        p.flush().await;
        let (s, v) = p.get_json(&format!("/api/traces/{id}")).await;
        if s == 200 {
            return v;
        }
        assert!(Instant::now() < deadline, "{ctx}: no trace {id}: {s} {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn attempt_rows(t: &Value) -> Vec<(String, String, String)> {
    t["attempts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    (
                        x["provider"].as_str().unwrap_or("").to_string(),
                        x["outcome"].as_str().unwrap_or("").to_string(),
                        x["reason"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn reason_ok(got: &str, want: &str) -> bool {
    want.split('|').any(|w| w == got)
}

/// One request of the case with every assertion on the answer and its trace.
async fn exercise(case: &Case, p: &Proxy, a: &Target, b: &Target) {
    let ctx = format!(
        "{} ({}, {:?})",
        case.name,
        if case.streaming { "stream" } else { "plain" },
        case.scenario
    );
    let hits = |t: &Target| t.mock.as_ref().map(|m| m.hits());
    let (a0, b0) = (hits(a), hits(b));
    let r = p.post_chat(request_body(case.streaming)).await;
    let status = r.status().as_u16();
    let (provider, failover, tries, trace_id, ctype) = (
        hdr(&r, "x-stockyard-provider"),
        hdr(&r, "x-stockyard-failover"),
        hdr(&r, "x-stockyard-attempts"),
        hdr(&r, "x-stockyard-trace-id"),
        hdr(&r, "content-type"),
    );
    assert!(trace_id.starts_with("tr_"), "{ctx}: trace id {trace_id:?}");
    let delta = |t: &Target, before: Option<usize>| hits(t).zip(before).map(|(n, b)| n - b);
    match (case.side.expect, case.scenario) {
        (Expect::Failover { .. }, Scenario::FirstFails) => {
            assert_eq!(status, 200, "{ctx}");
            if case.streaming {
                let s = read_stream(r).await;
                assert!(ctype.starts_with("text/event-stream"), "{ctx}: {ctype}");
                assert_eq!(s.text(), B_TEXT, "{ctx}: {}", s.raw);
                assert_eq!(s.dones(), 1, "{ctx}: {}", s.raw);
                assert_eq!(s.data.last().map(String::as_str), Some("[DONE]"), "{ctx}");
                assert!(!s.has_error(), "{ctx}: {}", s.raw);
                assert!(
                    !s.raw.contains(A_MODEL),
                    "{ctx}: a's bytes leaked: {}",
                    s.raw
                );
                assert!(s.body_error.is_none(), "{ctx}: {:?}", s.body_error);
            } else {
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["choices"][0]["message"]["content"], B_TEXT, "{ctx}: {v}");
            }
            assert_eq!(
                (provider.as_str(), failover.as_str(), tries.as_str()),
                ("b", "true", "2"),
                "{ctx}"
            );
            assert_eq!(delta(b, b0), Some(1), "{ctx}: b answered once");
        }
        (
            Expect::Failover {
                reason,
                status: want,
            },
            Scenario::AllFail,
        ) => {
            assert_eq!(status, want, "{ctx}");
            assert!(ctype.starts_with("application/json"), "{ctx}: {ctype}");
            let text = r.text().await.unwrap();
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{ctx}: not JSON ({e}): {text}"));
            assert_eq!(v["error"]["type"], "upstream_error", "{ctx}: {v}");
            assert_eq!(v["error"]["code"], "all_providers_failed", "{ctx}: {v}");
            assert!(v["error"]["message"].is_string(), "{ctx}: {v}");
            let got: Vec<(&str, &str)> = v["error"]["attempts"]
                .as_array()
                .unwrap_or_else(|| panic!("{ctx}: no attempts: {v}"))
                .iter()
                .map(|x| {
                    (
                        x["provider"].as_str().unwrap_or(""),
                        x["reason"].as_str().unwrap_or(""),
                    )
                })
                .collect();
            assert_eq!(got.len(), 2, "{ctx}: {v}");
            for (i, name) in ["a", "b"].iter().enumerate() {
                assert_eq!(got[i].0, *name, "{ctx}: {v}");
                assert!(reason_ok(got[i].1, reason), "{ctx}: {v}");
            }
            assert_eq!(delta(b, b0).unwrap_or(1), 1, "{ctx}: b tried once");
        }
        (Expect::Relayed { len }, _) => {
            assert_eq!(status, 200, "{ctx}");
            assert_eq!(
                (provider.as_str(), failover.as_str()),
                ("a", "false"),
                "{ctx}"
            );
            if case.streaming {
                let s = read_stream(r).await;
                assert_eq!(s.text().len(), len, "{ctx}: content relayed in full");
                assert_eq!(s.dones(), 1, "{ctx}");
                assert!(!s.has_error() && s.body_error.is_none(), "{ctx}");
            } else {
                let body = r.bytes().await.unwrap();
                assert_eq!(body.len(), len, "{ctx}: body relayed in full");
                let v: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["model"], A_MODEL, "{ctx}");
            }
            assert_eq!(delta(b, b0).unwrap_or(0), 0, "{ctx}: b not tried");
        }
        (Expect::Interrupted { text }, _) => {
            assert_eq!(status, 200, "{ctx}");
            assert_eq!(provider, "a", "{ctx}");
            let s = read_stream(r).await;
            assert_eq!(s.text(), text, "{ctx}: {}", s.raw);
            assert_eq!(s.dones(), 0, "{ctx}: no [DONE]: {}", s.raw);
            let last: Value = s
                .data
                .last()
                .and_then(|d| serde_json::from_str(d).ok())
                .unwrap_or_else(|| panic!("{ctx}: no final JSON event: {}", s.raw));
            assert_eq!(last["error"]["type"], "stream_error", "{ctx}: {last}");
            assert_eq!(
                last["error"]["code"], "upstream_interrupted",
                "{ctx}: {last}"
            );
            assert!(s.body_error.is_none(), "{ctx}: {:?}", s.body_error);
            assert_eq!(delta(b, b0).unwrap_or(0), 0, "{ctx}: b not tried");
        }
    }
    if let Some(d) = delta(a, a0) {
        assert_eq!(d, 1, "{ctx}: a tried once");
    }

    // The trace row.
    let t = trace_of(p, &trace_id, &ctx).await;
    assert_eq!(t["stream"], case.streaming, "{ctx}: {t}");
    let rows = attempt_rows(&t);
    match (case.side.expect, case.scenario) {
        (Expect::Failover { reason, .. }, Scenario::FirstFails) => {
            assert_eq!(t["status"], "ok", "{ctx}: {t}");
            assert_eq!(t["provider"], "b", "{ctx}: {t}");
            assert_eq!(t["http_status"], 200, "{ctx}: {t}");
            assert_eq!(t["failover"], true, "{ctx}: {t}");
            assert_eq!(rows.len(), 2, "{ctx}: {t}");
            assert_eq!((rows[0].0.as_str(), rows[0].1.as_str()), ("a", "failed"));
            assert!(reason_ok(&rows[0].2, reason), "{ctx}: {t}");
            assert_eq!((rows[1].0.as_str(), rows[1].1.as_str()), ("b", "ok"));
        }
        (Expect::Failover { reason, status }, Scenario::AllFail) => {
            assert_eq!(t["status"], "error", "{ctx}: {t}");
            assert_eq!(t["http_status"], status, "{ctx}: {t}");
            assert!(
                t["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{ctx}: {t}"
            );
            assert_eq!(rows.len(), 2, "{ctx}: {t}");
            for r in &rows {
                assert_eq!(r.1, "failed", "{ctx}: {t}");
                assert!(reason_ok(&r.2, reason), "{ctx}: {t}");
            }
        }
        (Expect::Relayed { .. }, _) => {
            assert_eq!(t["status"], "ok", "{ctx}: {t}");
            assert_eq!(t["provider"], "a", "{ctx}: {t}");
            assert_eq!(rows.len(), 1, "{ctx}: {t}");
        }
        (Expect::Interrupted { .. }, _) => {
            assert_eq!(t["status"], "error", "{ctx}: {t}");
            assert_eq!(t["provider"], "a", "{ctx}: {t}");
            assert!(
                t["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{ctx}: {t}"
            );
            assert_eq!(rows.len(), 1, "{ctx}: {t}");
        }
    }
    // No panic took the server down: it still answers.
    let (s, _) = p.get_json("/health").await;
    assert_eq!(s, 200, "{ctx}: server still answers");
}

async fn run_case(case: Case) {
    let a = target(&case.side.fault).await;
    let b = match case.scenario {
        Scenario::AllFail => target(&case.side.fault).await,
        Scenario::FirstFails => {
            let m = MockUpstream::start().await;
            m.set_default(Step::ok_chat(B_TEXT));
            Target {
                url: m.url(),
                port: Some(m.addr.port()),
                mock: Some(m),
                _tls: None,
            }
        }
    };
    let p = Proxy::start(&config(&a.url, &b.url, case.timeouts)).await;
    let mut ports: Vec<u16> = vec![port_of(&p.url)];
    ports.extend(a.port);
    ports.extend(b.port);
    let ctx = format!(
        "{} ({}, {:?})",
        case.name,
        if case.streaming { "stream" } else { "plain" },
        case.scenario
    );
    // Warm-up of the same shape, then the baseline once the counts are stable.
    exercise(&case, &p, &a, &b).await;
    let base = stable_counts(&ports).await;
    exercise(&case, &p, &a, &b).await;
    assert_no_leak(&ctx, &ports, base).await;
    drop(p);
}

// ---------------------------------------------------------------------------------------------
// Task and socket accounting
// ---------------------------------------------------------------------------------------------

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// Inodes of this process's open sockets.
fn socket_inodes() -> Vec<u64> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        for e in dir.flatten() {
            if let Ok(link) = std::fs::read_link(e.path()) {
                let l = link.to_string_lossy();
                if let Some(n) = l.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    if let Ok(n) = n.parse() {
                        out.push(n);
                    }
                }
            }
        }
    }
    out
}

/// TCP sockets by inode: (local port, remote port, state), from `/proc/self/net/tcp{,6}`.
fn tcp_table() -> HashMap<u64, (u16, u16, String)> {
    let mut m = HashMap::new();
    for f in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                continue;
            }
            let port = |s: &str| {
                s.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    .unwrap_or(0)
            };
            if let Ok(inode) = cols[9].parse::<u64>() {
                if inode != 0 {
                    m.insert(inode, (port(cols[1]), port(cols[2]), cols[3].to_string()));
                }
            }
        }
    }
    m
}

/// This process's sockets whose local or remote port is one of `ports`.
fn case_sockets(ports: &[u16]) -> Vec<(u16, u16, String)> {
    let table = tcp_table();
    socket_inodes()
        .into_iter()
        .filter_map(|i| table.get(&i).cloned())
        .filter(|(l, r, _)| ports.contains(l) || ports.contains(r))
        .collect()
}

/// This process's TCP sockets (any port). Unix-domain sockets are left out: the test harness
/// itself holds some (e.g. a socketpair left by spawning the `openssl` CLI), and the proxy opens
/// none.
fn inet_sockets() -> Vec<u64> {
    let table = tcp_table();
    socket_inodes()
        .into_iter()
        .filter(|i| table.contains_key(i))
        .collect()
}

/// Where each socket inode shows up in `/proc/self/net/*` (for failure messages).
fn describe_sockets(inodes: &[u64]) -> String {
    let mut out = Vec::new();
    for i in inodes {
        let mut found = format!("{i}: ?");
        for f in ["tcp", "tcp6", "udp", "udp6", "unix", "netlink", "raw"] {
            let text = std::fs::read_to_string(format!("/proc/self/net/{f}")).unwrap_or_default();
            if let Some(l) = text
                .lines()
                .find(|l| l.split_whitespace().any(|c| c == i.to_string()))
            {
                found = format!("{i}: {f} {}", l.trim());
            }
        }
        out.push(found);
    }
    out.join("\n")
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[derive(Clone, Copy, Debug)]
struct Counts {
    tasks: usize,
    sockets: usize,
}

fn counts(ports: &[u16]) -> Counts {
    Counts {
        tasks: alive_tasks(),
        sockets: case_sockets(ports).len(),
    }
}

/// The counts once they have not changed for 200 ms (at most 5 s; connections of the warm-up
/// may still be closing).
async fn stable_counts(ports: &[u16]) -> Counts {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = counts(ports);
    let mut same = 0;
    while same < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let c = counts(ports);
        if (c.tasks, c.sockets) == (last.tasks, last.sockets) {
            same += 1;
        } else {
            same = 0;
        }
        last = c;
    }
    last
}

/// Polls (up to 10 s: generous on a loaded machine) until tasks and sockets are back to at most
/// the baseline.
async fn assert_no_leak(ctx: &str, ports: &[u16], base: Counts) {
    if let Some(c) = leaked(ports, base, Duration::from_secs(10)).await {
        panic!(
            "{ctx}: leak: {c:?} after the case, baseline {base:?}; sockets (local, remote, \
             state): {:?}",
            case_sockets(ports)
        );
    }
}

/// `None` once the counts are at most `base` within `window`, else the last counts.
async fn leaked(ports: &[u16], base: Counts, window: Duration) -> Option<Counts> {
    let deadline = Instant::now() + window;
    loop {
        let c = counts(ports);
        if c.tasks <= base.tasks && c.sockets <= base.sockets {
            return None;
        }
        if Instant::now() >= deadline {
            return Some(c);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The two tests of this file run one at a time: the matrix's final check counts every TCP
/// socket of the process.
static SERIAL: Mutex<()> = Mutex::new(());

/// The leak check itself: a connection and a task left behind are both noticed.
#[test]
fn leak_check_notices_a_leftover_connection_and_task() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(leak_check_self_test());
}

async fn leak_check_self_test() {
    let a = MockUpstream::start().await;
    let ports = [a.addr.port()];
    let base = stable_counts(&ports).await;
    let conn = tokio::net::TcpStream::connect(a.addr).await.unwrap();
    // Both ends open: wait until the mock has accepted it (and spawned its connection task).
    while a.connections_opened() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let c = leaked(&ports, base, Duration::from_millis(300)).await;
    assert!(
        c.is_some_and(|c| c.sockets >= base.sockets + 2 && c.tasks > base.tasks),
        "{c:?} vs {base:?}"
    );
    drop(conn);
    assert!(leaked(&ports, base, Duration::from_secs(10))
        .await
        .is_none());
    let task = tokio::spawn(std::future::pending::<()>());
    assert!(leaked(&ports, base, Duration::from_millis(100))
        .await
        .is_some());
    task.abort();
    assert!(leaked(&ports, base, Duration::from_secs(10))
        .await
        .is_none());
}

// ---------------------------------------------------------------------------------------------
// TLS listener with a certificate the proxy must refuse
// ---------------------------------------------------------------------------------------------

/// Accepts TLS connections with a freshly generated self-signed certificate (the `openssl` CLI)
/// and answers nothing: the proxy's handshake must fail (unknown issuer) and count as a
/// connection failure.
struct TlsBad {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsBad {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `(cert DER, PKCS#8 key DER)`, generated once per test process.
fn self_signed() -> &'static (Vec<u8>, Vec<u8>) {
    static CERT: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    CERT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.der"), dir.path().join("key.der"));
        let out = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=127.0.0.1", "-outform", "DER", "-keyout"])
            .arg(dir.path().join("key.pem"))
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("the openssl CLI is needed for the TLS row");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = std::process::Command::new("openssl")
            .args(["pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in"])
            .arg(dir.path().join("key.pem"))
            .arg("-out")
            .arg(&key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (std::fs::read(cert).unwrap(), std::fs::read(key).unwrap())
    })
}

impl TlsBad {
    async fn start() -> TlsBad {
        use tokio_rustls::rustls;
        let (cert, key) = self_signed().clone();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from(cert)],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    Ok((s, _)) = listener.accept() => {
                        let acceptor = acceptor.clone();
                        conns.spawn(async move {
                            // The client aborts the handshake; a success would be a bug the
                            // matrix reports through the failover assertions.
                            if let Ok(mut tls) = acceptor.accept(s).await {
                                let _ = tls.shutdown().await;
                            }
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        TlsBad { port, task }
    }
}

// ---------------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------------

/// Runs `jobs` on `PARALLEL` threads, each job on its own current-thread runtime; returns the
/// failures (name and panic message).
fn run_all(jobs: Vec<Job>) -> Vec<String> {
    let queue = Arc::new(Mutex::new(jobs));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..PARALLEL)
        .map(|_| {
            let (queue, failures) = (queue.clone(), failures.clone());
            std::thread::spawn(move || loop {
                let Some((name, job)) = queue.lock().unwrap().pop() else {
                    return;
                };
                let t0 = Instant::now();
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(job);
                }));
                eprintln!("{:>6.2}s {name}", t0.elapsed().as_secs_f64());
                if let Err(e) = res {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failures.lock().unwrap().push(format!("{name}: {msg}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let f = failures.lock().unwrap().clone();
    f
}

type Job = (
    String,
    std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
);

fn matrix_jobs() -> Vec<Job> {
    let mut jobs: Vec<Job> = Vec::new();
    for row in rows() {
        for (streaming, side) in [(false, &row.plain), (true, &row.stream)] {
            let Some(side) = side else { continue };
            let mut scenarios = vec![Scenario::FirstFails];
            if matches!(side.expect, Expect::Failover { .. }) {
                scenarios.push(Scenario::AllFail);
            }
            for scenario in scenarios {
                let case = Case {
                    name: row.name.to_string(),
                    timeouts: row.timeouts,
                    streaming,
                    scenario,
                    side: side.clone(),
                };
                let label = format!(
                    "{} ({}, {:?})",
                    row.name,
                    if streaming { "stream" } else { "plain" },
                    scenario
                );
                jobs.push((label, Box::pin(run_case(case))));
            }
        }
    }
    // Longest cases (timeouts, drip, 10 MB) first, since the queue pops from the end.
    jobs.reverse();
    jobs
}

#[test]
fn chaos_matrix() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = inet_sockets().len();
    let mut jobs = matrix_jobs();
    jobs.push((
        "client disconnects mid-request-body".into(),
        Box::pin(client_gone_mid_body()),
    ));
    jobs.push((
        "client disconnects mid-stream".into(),
        Box::pin(client_gone_mid_stream()),
    ));
    jobs.push((
        "client gives up on a non-stream request in flight".into(),
        Box::pin(client_gone_in_flight()),
    ));
    let n = jobs.len();
    let t0 = Instant::now();
    let failures = run_all(jobs);
    eprintln!("{n} cases in {:.1}s", t0.elapsed().as_secs_f64());
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    // Every case's runtime is gone: the process holds no more TCP sockets than before.
    let deadline = Instant::now() + Duration::from_secs(5);
    while inet_sockets().len() > before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = inet_sockets();
    assert!(
        after.len() <= before,
        "sockets before {before}, after {}: {}",
        after.len(),
        describe_sockets(&after)
    );
}

// ---------------------------------------------------------------------------------------------
// Client-side faults
// ---------------------------------------------------------------------------------------------

fn one(url: &str) -> String {
    format!("providers:\n  - {{name: a, kind: openai-compatible, base_url: \"{url}\"{TIMEOUTS}}}\n")
}

/// Number of trace rows (all statuses), after a flush.
async fn trace_count(p: &Proxy, query: &str) -> usize {
    p.traces(&format!("limit=1000{query}")).await.len()
}

/// Sends headers announcing a 1000-byte body, 100 bytes of it, then closes.
async fn send_partial_body(p: &Proxy) {
    let addr = p.url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&[b' '; 100]).await.unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(s);
}

/// A request never fully received: nothing is sent upstream, no trace, nothing left open.
async fn client_gone_mid_body() {
    let ctx = "client disconnects mid-request-body";
    let a = MockUpstream::start().await;
    let p = Proxy::start(&one(&a.url())).await;
    let ports = [port_of(&p.url), a.addr.port()];
    send_partial_body(&p).await;
    let base = stable_counts(&ports).await;
    send_partial_body(&p).await;
    assert_no_leak(ctx, &ports, base).await;
    assert_eq!(a.hits(), 0, "{ctx}: nothing sent upstream");
    assert_eq!(trace_count(&p, "").await, 0, "{ctx}: no trace");
    let (s, _) = p.get_json("/health").await;
    assert_eq!(s, 200);
    // The proxy still serves full requests.
    let r = p.chat("m").await;
    assert_eq!(r.status(), 200, "{ctx}");
}

/// Reads a stream request until its first content event, then drops the response.
async fn read_first_content_then_drop(p: &Proxy) -> String {
    let r = p.post_chat(request_body(true)).await;
    assert_eq!(r.status(), 200);
    let id = hdr(&r, "x-stockyard-trace-id");
    let mut body = r.bytes_stream();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("first") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("first content within 10s")
            .expect("body ended before content")
            .unwrap();
        seen.extend_from_slice(&chunk);
    }
    drop(body);
    id
}

/// The upstream connection is closed at once and the trace says `client_closed`.
async fn client_gone_mid_stream() {
    let ctx = "client disconnects mid-stream";
    let a = MockUpstream::start().await;
    let mut evs = vec![a_role(), a_text("first")];
    for i in 0..300 {
        evs.push(a_text(&format!(" t{i}")));
        evs.push(SseEv::Delay(Duration::from_millis(20)));
    }
    a.set_default(Step::sse(evs));
    let p = Proxy::start(&one(&a.url())).await;
    let ports = [port_of(&p.url), a.addr.port()];
    let mut ids = Vec::new();
    for warm_up in [true, false] {
        let base = if warm_up {
            None
        } else {
            Some(stable_counts(&ports).await)
        };
        ids.push(read_first_content_then_drop(&p).await);
        assert!(
            a.wait_client_closed(Duration::from_secs(10)).await,
            "{ctx}: upstream connection still open after the client left"
        );
        if let Some(base) = base {
            assert_no_leak(ctx, &ports, base).await;
        }
    }
    for id in ids {
        let t = trace_of(&p, &id, ctx).await;
        assert_eq!(t["status"], "client_closed", "{ctx}: {t}");
        assert_eq!(t["provider"], "a", "{ctx}: {t}");
    }
    let (s, _) = p.get_json("/health").await;
    assert_eq!(s, 200);
}

/// A non-stream request whose client leaves while the upstream is still working: the upstream
/// connection is closed and the trace says `client_closed`.
async fn client_gone_in_flight() {
    let ctx = "client gives up on a non-stream request in flight";
    let a = MockUpstream::start().await;
    a.set_default(Step::ok_chat("late").delay_headers(Duration::from_secs(30)));
    // first_byte well above the client's patience.
    let p = Proxy::start(&format!(
        "providers:\n  - {{name: a, kind: openai-compatible, base_url: \"{}\", timeouts: {{first_byte: 60s}}}}\n",
        a.url()
    ))
    .await;
    let ports = [port_of(&p.url), a.addr.port()];
    for (i, warm_up) in [true, false].into_iter().enumerate() {
        let base = if warm_up {
            None
        } else {
            Some(stable_counts(&ports).await)
        };
        // The client gives up once its request is at the upstream (a fixed client timeout could
        // fire before the request got there on a loaded machine).
        let pending = p.spawn_chat(chat_body("m"));
        a.wait_hits(i + 1).await;
        assert!(!pending.is_finished(), "{ctx}: answered early");
        pending.abort();
        assert!(
            a.wait_client_closed(Duration::from_secs(10)).await,
            "{ctx}: upstream connection still open after the client left"
        );
        if let Some(base) = base {
            assert_no_leak(ctx, &ports, base).await;
        }
    }
    // Both requests are traced as client_closed (the trace is written when the handler is
    // dropped, which is what closes the upstream connection).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = trace_count(&p, "&status=client_closed").await;
        if n == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{ctx}: {n} client_closed traces");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, _) = p.get_json("/health").await;
    assert_eq!(s, 200);
}
