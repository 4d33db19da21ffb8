//! Scriptable mock LLM upstream for integration tests.
//!
//! The server is a raw tokio `TcpListener` with a tiny hand-written HTTP/1.1 parser, so tests can
//! script faults a real framework would never produce: closing before the status line, TCP resets,
//! truncated bodies, garbage, byte-by-byte drip, stalled or abruptly dropped SSE streams.
//!
//! Routing:
//! * every `POST` (any path) consumes the next queued [`Step`] (FIFO); when the queue is empty the
//!   responder chooses one ([`MockUpstream::set_responder`]), else the default step answers
//!   (initially `Step::ok_chat("Hello from mock")`);
//! * `GET …/models` (e.g. `/v1/models`) and `GET /api/tags` serve the model list from
//!   [`MockUpstream::set_models`] without consuming steps; `GET /api/version` answers a version;
//! * anything else gets an OpenAI-shaped 404.
//!
//! Every request is recorded. Dropping the [`MockUpstream`] aborts the accept task and with it
//! every connection task (they live in a `JoinSet` owned by the accept task), closing all sockets.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

/// Fixed `created` timestamp used in every generated object.
const CREATED: u64 = 1_700_000_000;
/// Model name used when the request carries none (and by [`Step::chat_stream`]).
pub const MOCK_MODEL: &str = "mock-model";
const MAX_HEAD: usize = 1 << 20;
const MAX_BODY: usize = 64 << 20;

// ---------------------------------------------------------------------------------------------
// Recorded requests
// ---------------------------------------------------------------------------------------------

/// One request as received by the mock.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path without the query string, e.g. `/v1/chat/completions`.
    pub path: String,
    pub query: Option<String>,
    /// Header names are lowercased; values are trimmed; order and duplicates are preserved.
    pub headers: Vec<(String, String)>,
    /// Body with any chunked transfer-encoding removed.
    pub body: Bytes,
}

impl Recorded {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Body parsed as JSON; `Value::Null` when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

// ---------------------------------------------------------------------------------------------
// Scripted behaviour
// ---------------------------------------------------------------------------------------------

/// One SSE item written by a [`Step::sse`] response. Each textual item is written (and flushed)
/// as its own HTTP chunk, unless [`Step::split_writes`] / [`Step::drip`] cut it further.
#[derive(Clone, Debug)]
pub enum SseEv {
    /// `data: <s>\n\n` (a multi-line `s` becomes several `data:` lines).
    Data(String),
    /// `event: <name>\ndata: <s>\n\n`.
    Event(String, String),
    /// `: <s>\n\n` (keep-alive comment).
    Comment(String),
    /// Exact text, no framing added.
    Raw(String),
    /// Pause before the next item.
    Delay(Duration),
    /// Stop sending but keep the connection open until the client closes it.
    Stall,
    /// Close the connection abruptly right here (no terminating chunk).
    Drop,
    /// `data: [DONE]\n\n`.
    Done,
}

impl SseEv {
    /// Wire text of a textual item (`None` for control items).
    fn render(&self, nl: &str) -> Option<String> {
        let data =
            |s: &str| -> String { s.split('\n').map(|l| format!("data: {l}{nl}")).collect() };
        Some(match self {
            SseEv::Data(s) => format!("{}{nl}", data(s)),
            SseEv::Event(name, s) => format!("event: {name}{nl}{}{nl}", data(s)),
            SseEv::Comment(s) => format!(": {s}{nl}{nl}"),
            SseEv::Raw(s) => s.clone(),
            SseEv::Done => format!("data: [DONE]{nl}{nl}"),
            SseEv::Delay(_) | SseEv::Stall | SseEv::Drop => return None,
        })
    }
}

#[derive(Clone, Debug)]
enum Kind {
    /// Path/request-aware success answer (chat, chat stream, embeddings, Anthropic messages).
    OkChat(String),
    /// Fixed body with Content-Length.
    Body {
        content_type: String,
        body: Bytes,
    },
    /// Chunked `text/event-stream`.
    Sse(Vec<SseEv>),
    Hang,
    Close,
    Reset,
    Raw(Bytes),
}

/// A scripted reaction to one request. Constructors pick the kind of answer; the builder methods
/// (`header`, `delay_*`, `truncated`, `drip`, `crlf`, `split_writes`, `with_status`) modify it.
#[derive(Clone, Debug)]
pub struct Step {
    kind: Kind,
    status: u16,
    headers: Vec<(String, String)>,
    delay_headers: Duration,
    delay_body: Duration,
    truncate: Option<usize>,
    drip: Option<Duration>,
    crlf: bool,
    split: bool,
    /// End with a TCP reset instead of a FIN where this step closes the connection.
    rst: bool,
    /// Where this step would close the connection, keep it open until the client closes it.
    hold: bool,
}

impl Step {
    fn new(kind: Kind, status: u16) -> Step {
        Step {
            kind,
            status,
            headers: Vec::new(),
            delay_headers: Duration::ZERO,
            delay_body: Duration::ZERO,
            truncate: None,
            drip: None,
            crlf: false,
            split: false,
            rst: false,
            hold: false,
        }
    }

    /// 200 success whose `model` echoes the request's. Shape depends on the request:
    /// * `…/embeddings`: an OpenAI embeddings list (one 3-dim vector per input);
    /// * `…/messages`: an Anthropic message (or its event stream when `"stream":true`);
    /// * otherwise an OpenAI `chat.completion` with usage 10/5/15, or with `"stream":true` an SSE
    ///   stream: role chunk, `content` in ~3 pieces, finish chunk, usage chunk (only with
    ///   `stream_options.include_usage`), `[DONE]`.
    pub fn ok_chat(content: &str) -> Step {
        Step::new(Kind::OkChat(content.to_string()), 200)
    }

    /// `status` with a JSON body.
    pub fn json(status: u16, body: Value) -> Step {
        Step::body(status, "application/json", body.to_string())
    }

    /// `status` with an OpenAI-shaped error body (`"mock error <status>"`, type `mock_error`).
    pub fn status(status: u16) -> Step {
        Step::json(status, error_json(&format!("mock error {status}")))
    }

    /// Arbitrary body with Content-Length.
    pub fn body(status: u16, content_type: &str, body: impl Into<Bytes>) -> Step {
        let content_type = content_type.to_string();
        Step::new(
            Kind::Body {
                content_type,
                body: body.into(),
            },
            status,
        )
    }

    /// 200 `application/json` whose body is not JSON.
    pub fn garbage() -> Step {
        Step::body(200, "application/json", "this is not json {{{")
    }

    /// Read the request and never answer; the socket stays open until the client closes it
    /// (which counts for [`MockUpstream::wait_client_closed`]).
    pub fn hang() -> Step {
        Step::new(Kind::Hang, 0)
    }

    /// Read the request, then close the socket (FIN) without writing a byte.
    pub fn close() -> Step {
        Step::new(Kind::Close, 0)
    }

    /// Read the request, then reset the connection (SO_LINGER 0 + drop → RST).
    pub fn reset() -> Step {
        Step::new(Kind::Reset, 0)
    }

    /// Write exactly these bytes (no HTTP framing added), then close.
    pub fn raw(bytes: impl Into<Bytes>) -> Step {
        Step::new(Kind::Raw(bytes.into()), 0)
    }

    /// 200 `text/event-stream` with `Transfer-Encoding: chunked` (so keep-alive continues after a
    /// complete stream); each item is its own write.
    pub fn sse(events: Vec<SseEv>) -> Step {
        Step::new(Kind::Sse(events), 200)
    }

    /// OpenAI chat stream (model [`MOCK_MODEL`]): role chunk, one content chunk per piece,
    /// `finish_reason:"stop"` chunk, `[DONE]`.
    pub fn chat_stream(pieces: &[&str]) -> Vec<SseEv> {
        let mut evs = vec![SseEv::Data(role_json(MOCK_MODEL))];
        evs.extend(
            pieces
                .iter()
                .map(|p| SseEv::Data(chunk_json(MOCK_MODEL, p))),
        );
        evs.push(SseEv::Data(finish_json(MOCK_MODEL, "stop")));
        evs.push(SseEv::Done);
        evs
    }

    /// Add a response header; replaces a default header of the same name (e.g. `content-type`,
    /// even `content-length` to lie about the size).
    pub fn header(mut self, name: &str, value: &str) -> Step {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Override the status code (useful for `sse`/`ok_chat`).
    pub fn with_status(mut self, status: u16) -> Step {
        self.status = status;
        self
    }

    /// Sleep before writing the status line.
    pub fn delay_headers(mut self, d: Duration) -> Step {
        self.delay_headers = d;
        self
    }

    /// Write (and flush) the headers, sleep, then write the body.
    pub fn delay_body(mut self, d: Duration) -> Step {
        self.delay_body = d;
        self
    }

    /// Advertise the full Content-Length but send only the first `n` body bytes, then close.
    pub fn truncated(mut self, n: usize) -> Step {
        self.truncate = Some(n);
        self
    }

    /// Write the body (or each SSE item, or raw bytes) one byte at a time, pausing `per_byte`.
    pub fn drip(mut self, per_byte: Duration) -> Step {
        self.drip = Some(per_byte);
        self
    }

    /// Use `\r\n` line endings in SSE framing.
    pub fn crlf(mut self) -> Step {
        self.crlf = true;
        self
    }

    /// Where the step ends the connection early (after [`Step::raw`] bytes, a
    /// [`Step::truncated`] body, or [`SseEv::Drop`]), reset it (SO_LINGER 0 → RST) instead of
    /// closing it cleanly: "reset after headers" is `truncated(0).rst()`, "reset mid-body" is
    /// `truncated(n).rst()`, "reset mid-stream" is an `SseEv::Drop` in a `.rst()` stream.
    pub fn rst(mut self) -> Step {
        self.rst = true;
        self
    }

    /// Where the step ends the connection early (as for [`Step::rst`]), keep the socket open
    /// and silent until the client closes it instead: "hang mid-body" is `truncated(n).hold()`.
    pub fn hold(mut self) -> Step {
        self.hold = true;
        self
    }

    /// Write every SSE item / body in 3-byte pieces (each its own HTTP chunk) with 1 ms pauses.
    pub fn split_writes(mut self) -> Step {
        self.split = true;
        self
    }
}

// ---------------------------------------------------------------------------------------------
// JSON helpers (public so tests can build expectations / custom streams)
// ---------------------------------------------------------------------------------------------

/// OpenAI error body.
pub fn error_json(message: &str) -> Value {
    json!({"error": {"message": message, "type": "mock_error", "param": null, "code": null}})
}

fn chunk_with(model: &str, delta: Value, finish: Value) -> String {
    json!({
        "id": "chatcmpl-mock", "object": "chat.completion.chunk",
        "created": CREATED, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
    })
    .to_string()
}

/// `chat.completion.chunk` carrying `delta.role = "assistant"`.
pub fn role_json(model: &str) -> String {
    chunk_with(
        model,
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )
}

/// `chat.completion.chunk` carrying `delta.content`.
pub fn chunk_json(model: &str, content: &str) -> String {
    chunk_with(model, json!({"content": content}), Value::Null)
}

/// `chat.completion.chunk` with an empty delta and `finish_reason`.
pub fn finish_json(model: &str, reason: &str) -> String {
    chunk_with(model, json!({}), json!(reason))
}

/// Final usage chunk (`choices: []`) as sent with `stream_options.include_usage`.
pub fn usage_json(model: &str) -> String {
    json!({
        "id": "chatcmpl-mock", "object": "chat.completion.chunk",
        "created": CREATED, "model": model,
        "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    })
    .to_string()
}

/// Non-streaming OpenAI `chat.completion`.
pub fn chat_completion_json(model: &str, content: &str) -> Value {
    json!({
        "id": "chatcmpl-mock", "object": "chat.completion", "created": CREATED, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    })
}

/// Non-streaming Anthropic message.
pub fn anthropic_message_json(model: &str, content: &str) -> Value {
    json!({
        "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": content}], "stop_reason": "end_turn",
        "stop_sequence": null, "usage": {"input_tokens": 10, "output_tokens": 5}
    })
}

/// Anthropic Messages event stream for a single text block made of `pieces`.
pub fn anthropic_stream(model: &str, pieces: &[&str]) -> Vec<SseEv> {
    let ev = |name: &str, v: Value| SseEv::Event(name.to_string(), v.to_string());
    let mut msg = anthropic_message_json(model, "");
    msg["content"] = json!([]);
    msg["stop_reason"] = Value::Null;
    msg["usage"] = json!({"input_tokens": 10, "output_tokens": 1});
    let mut evs = vec![
        ev(
            "message_start",
            json!({"type": "message_start", "message": msg}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    evs.extend(pieces.iter().map(|p| {
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": p}}),
        )
    }));
    evs.push(ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    evs.push(ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": 5}}),
    ));
    evs.push(ev("message_stop", json!({"type": "message_stop"})));
    evs
}

/// Split `s` into at most 3 non-empty pieces on char boundaries.
fn split3(s: &str) -> Vec<&str> {
    let chars: Vec<usize> = s.char_indices().map(|(i, _)| i).collect();
    let n = chars.len().min(3);
    if n == 0 {
        return Vec::new();
    }
    let bounds: Vec<usize> = (0..n)
        .map(|k| chars[k * chars.len() / n])
        .chain([s.len()])
        .collect();
    bounds.windows(2).map(|w| &s[w[0]..w[1]]).collect()
}

/// What a step turns into for a concrete request.
enum Payload {
    Full { content_type: String, body: Bytes },
    Stream(Vec<SseEv>),
    Raw(Bytes),
}

impl Kind {
    /// Resolve to a payload (`None` for the no-answer kinds).
    fn payload(&self, req: &Recorded) -> Option<Payload> {
        let full = |v: Value| Payload::Full {
            content_type: "application/json".into(),
            body: v.to_string().into(),
        };
        Some(match self {
            Kind::Body { content_type, body } => Payload::Full {
                content_type: content_type.clone(),
                body: body.clone(),
            },
            Kind::Sse(evs) => Payload::Stream(evs.clone()),
            Kind::Raw(b) => Payload::Raw(b.clone()),
            Kind::Hang | Kind::Close | Kind::Reset => return None,
            Kind::OkChat(content) => {
                let j = req.json();
                let model = j["model"].as_str().unwrap_or(MOCK_MODEL);
                let stream = j["stream"].as_bool() == Some(true);
                if req.path.ends_with("/embeddings") {
                    let n = j["input"].as_array().map_or(1, |a| a.len().max(1));
                    let data: Vec<Value> = (0..n)
                        .map(|i| {
                            json!({"object": "embedding", "index": i,
                                         "embedding": [0.1, 0.2, 0.3]})
                        })
                        .collect();
                    full(json!({"object": "list", "data": data, "model": model,
                                "usage": {"prompt_tokens": 10, "total_tokens": 10}}))
                } else if req.path.ends_with("/messages") {
                    if stream {
                        Payload::Stream(anthropic_stream(model, &split3(content)))
                    } else {
                        full(anthropic_message_json(model, content))
                    }
                } else if stream {
                    let mut evs = vec![SseEv::Data(role_json(model))];
                    evs.extend(
                        split3(content)
                            .into_iter()
                            .map(|p| SseEv::Data(chunk_json(model, p))),
                    );
                    evs.push(SseEv::Data(finish_json(model, "stop")));
                    if j["stream_options"]["include_usage"].as_bool() == Some(true) {
                        evs.push(SseEv::Data(usage_json(model)));
                    }
                    evs.push(SseEv::Done);
                    Payload::Stream(evs)
                } else {
                    full(chat_completion_json(model, content))
                }
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

/// Chooses the step for a POST (see [`MockUpstream::set_responder`]).
pub type Responder = Arc<dyn Fn(&Recorded) -> Step + Send + Sync>;

struct Shared {
    queue: Mutex<VecDeque<Step>>,
    responder: Mutex<Option<Responder>>,
    default: Mutex<Step>,
    models: Mutex<Vec<String>>,
    models_step: Mutex<Option<Step>>,
    requests: Mutex<Vec<Recorded>>,
    opened: AtomicUsize,
    closed: AtomicUsize,
    /// Connections the client closed while a response was in flight.
    cancels: AtomicUsize,
    /// How many of those `wait_client_closed` has already consumed.
    cancels_seen: AtomicUsize,
    notify: Notify,
}

/// Lock ignoring poisoning: the server task must never panic because a test thread did.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Record the request and choose the step that answers it.
    fn route(&self, req: &Recorded) -> Step {
        lock(&self.requests).push(req.clone());
        if req.method == "POST" {
            if let Some(next) = lock(&self.queue).pop_front() {
                return next;
            }
            let responder = lock(&self.responder).clone();
            if let Some(f) = responder {
                return f(req);
            }
            return lock(&self.default).clone();
        }
        let tags = req.path == "/api/tags";
        if req.method == "GET" && (tags || req.path.ends_with("/models")) {
            if let Some(step) = lock(&self.models_step).clone() {
                return step;
            }
            let ids = lock(&self.models).clone();
            return Step::json(
                200,
                if tags {
                    let models: Vec<Value> = ids
                        .iter()
                        .map(|id| json!({"name": id, "model": id, "size": 0, "details": {}}))
                        .collect();
                    json!({"models": models})
                } else {
                    let data: Vec<Value> = ids
                        .iter()
                        .map(|id| {
                            json!({"id": id, "object": "model",
                                         "created": CREATED, "owned_by": "mock"})
                        })
                        .collect();
                    json!({"object": "list", "data": data})
                },
            );
        }
        if req.method == "GET" && req.path == "/api/version" {
            return Step::json(200, json!({"version": "0.0.0-mock"}));
        }
        Step::json(
            404,
            error_json(&format!("mock: no route for {} {}", req.method, req.path)),
        )
    }

    fn client_cancelled(&self) {
        self.cancels.fetch_add(1, SeqCst);
        self.notify.notify_waiters();
    }
}

/// A running mock upstream bound to `127.0.0.1:<random port>`.
pub struct MockUpstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        // Dropping the accept future drops its JoinSet, which aborts every connection task.
        self.accept_task.abort();
    }
}

impl MockUpstream {
    /// Bind and start serving. Default step: `Step::ok_chat("Hello from mock")`; default models:
    /// `["mock-model"]`.
    pub async fn start() -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind mock upstream");
        let addr = listener.local_addr().expect("mock local addr");
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            responder: Mutex::new(None),
            default: Mutex::new(Step::ok_chat("Hello from mock")),
            models: Mutex::new(vec![MOCK_MODEL.to_string()]),
            models_step: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
            opened: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            cancels: AtomicUsize::new(0),
            cancels_seen: AtomicUsize::new(0),
            notify: Notify::new(),
        });
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone()));
        MockUpstream {
            addr,
            shared,
            accept_task,
        }
    }

    /// API root including `/v1`, e.g. `http://127.0.0.1:PORT/v1`.
    pub fn url(&self) -> String {
        format!("{}/v1", self.root())
    }

    /// `http://127.0.0.1:PORT`.
    pub fn root(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queue a step for the next POST (FIFO).
    pub fn push(&self, step: Step) {
        lock(&self.shared.queue).push_back(step);
    }

    /// Steps still queued.
    pub fn pending(&self) -> usize {
        lock(&self.shared.queue).len()
    }

    /// Step used for POSTs when the queue is empty.
    pub fn set_default(&self, step: Step) {
        *lock(&self.shared.default) = step;
    }

    /// Let `f` choose the step for every POST the queue does not answer (instead of the default
    /// step), e.g. random faults; `None` restores the default step.
    pub fn set_responder(&self, f: Option<Responder>) {
        *lock(&self.shared.responder) = f;
    }

    /// Models served by `GET …/models` and `GET /api/tags`.
    pub fn set_models(&self, ids: &[&str]) {
        *lock(&self.shared.models) = ids.iter().map(|s| s.to_string()).collect();
    }

    /// Answer the model-list GETs with this step instead (e.g. `Step::status(500)`);
    /// `None` restores the normal lists.
    pub fn set_models_step(&self, step: Option<Step>) {
        *lock(&self.shared.models_step) = step;
    }

    /// Number of POST requests received (any path).
    pub fn hits(&self) -> usize {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.method == "POST")
            .count()
    }

    /// Waits (up to 20 s, polling) until the mock has received `n` POSTs: the way to know a
    /// request started elsewhere has reached the upstream (a fixed sleep is a race).
    pub async fn wait_hits(&self, n: usize) {
        super::eventually(|| async move {
            match self.hits() {
                h if h >= n => Ok(()),
                h => Err(format!("mock got {h} of {n} requests")),
            }
        })
        .await
    }

    /// Number of requests (any method) whose path (without query) equals `path`.
    pub fn hits_path(&self, path: &str) -> usize {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    /// All requests in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.requests).clone()
    }

    /// Body of the last POST parsed as JSON (`None` if there was none or it is not JSON).
    pub fn last_json(&self) -> Option<Value> {
        let reqs = lock(&self.shared.requests);
        let last = reqs.iter().rev().find(|r| r.method == "POST")?;
        serde_json::from_slice(&last.body).ok()
    }

    pub fn connections_opened(&self) -> usize {
        self.shared.opened.load(SeqCst)
    }

    /// Connections that ended, whether the client or the mock closed them.
    pub fn connections_closed(&self) -> usize {
        self.shared.closed.load(SeqCst)
    }

    /// Total client closes that happened while a response was in flight (hang, stall, delays,
    /// mid-stream).
    pub fn client_cancels(&self) -> usize {
        self.shared.cancels.load(SeqCst)
    }

    /// Wait until the client closes a connection whose request was still in flight (hanging,
    /// delayed or streaming). Each successful call consumes one such close, so sequential
    /// cancellation checks in one test work. Returns `false` on timeout.
    pub async fn wait_client_closed(&self, timeout: Duration) -> bool {
        let s = &self.shared;
        let wait = async {
            loop {
                let notified = s.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let seen = s.cancels_seen.load(SeqCst);
                if s.cancels.load(SeqCst) > seen {
                    if s.cancels_seen
                        .compare_exchange(seen, seen + 1, SeqCst, SeqCst)
                        .is_ok()
                    {
                        return;
                    }
                    continue;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    shared.opened.fetch_add(1, SeqCst);
                    conns.spawn(serve_conn(stream, shared.clone()));
                }
                // E.g. EMFILE: back off briefly instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            },
            // Reap finished connection tasks so the set does not grow forever.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Serve requests on one connection until either side closes it.
async fn serve_conn(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        stream,
        buf: BytesMut::with_capacity(8192),
    };
    while let Some((req, close_after)) = conn.read_request().await {
        let step = shared.route(&req);
        match conn.respond(&req, &step, close_after).await {
            Ok(true) => continue,
            Ok(false) => break,
            Err(ClientGone) => {
                shared.client_cancelled();
                break;
            }
        }
    }
    shared.closed.fetch_add(1, SeqCst);
}

/// The client closed the connection (or an I/O error occurred) while we were answering.
struct ClientGone;

struct Conn {
    stream: TcpStream,
    /// Bytes read but not consumed yet (may hold a pipelined next request).
    buf: BytesMut,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Conn {
    /// Read more bytes into `buf`; `None` on EOF, error or an oversized buffer.
    async fn fill(&mut self) -> Option<()> {
        if self.buf.len() > MAX_HEAD + MAX_BODY {
            return None;
        }
        self.buf.reserve(8192);
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(()),
        }
    }

    async fn take(&mut self, n: usize) -> Option<Bytes> {
        while self.buf.len() < n {
            self.fill().await?;
        }
        Some(self.buf.split_to(n).freeze())
    }

    /// One CRLF-terminated line, without the CRLF.
    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = self.buf.split_to(i + 2);
                return Some(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            if self.buf.len() > MAX_HEAD {
                return None;
            }
            self.fill().await?;
        }
    }

    /// Read one request; returns it with "close after responding". `None` ends the connection
    /// (EOF, I/O error, malformed request).
    async fn read_request(&mut self) -> Option<(Recorded, bool)> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if self.buf.len() > MAX_HEAD {
                return None;
            }
            self.fill().await?;
        };
        let head = self.buf.split_to(head_end + 4);
        let head = String::from_utf8_lossy(&head[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut parts = lines.next()?.split_whitespace();
        let (method, target) = (parts.next()?.to_string(), parts.next()?);
        let http10 = parts.next() == Some("HTTP/1.0");
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (target.to_string(), None),
        };
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut req = Recorded {
            method,
            path,
            query,
            headers,
            body: Bytes::new(),
        };
        let has = |name: &str, token: &str| {
            req.header(name)
                .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        };
        let chunked = has("transfer-encoding", "chunked");
        let close_after =
            has("connection", "close") || (http10 && !has("connection", "keep-alive"));
        if has("expect", "100-continue") {
            self.stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .ok()?;
        }
        req.body = if chunked {
            self.read_chunked().await?
        } else {
            let len: usize = match req.header("content-length") {
                Some(v) => v.parse().ok()?,
                None => 0,
            };
            if len > MAX_BODY {
                return None;
            }
            self.take(len).await?
        };
        Some((req, close_after))
    }

    async fn read_chunked(&mut self) -> Option<Bytes> {
        let mut body = BytesMut::new();
        loop {
            let line = self.line().await?;
            let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                // Skip trailers up to the terminating empty line.
                while !self.line().await?.is_empty() {}
                return Some(body.freeze());
            }
            if body.len() + size > MAX_BODY {
                return None;
            }
            let data = self.take(size + 2).await?;
            body.extend_from_slice(&data[..size]);
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientGone> {
        self.stream.write_all(bytes).await.map_err(|_| ClientGone)?;
        self.stream.flush().await.map_err(|_| ClientGone)
    }

    /// Sleep for `d`, but notice the client closing meanwhile (bytes it sends are kept).
    async fn pause(&mut self, d: Duration) -> Result<(), ClientGone> {
        let sleep = tokio::time::sleep(d);
        tokio::pin!(sleep);
        loop {
            if self.buf.len() > MAX_HEAD + MAX_BODY {
                return Err(ClientGone);
            }
            self.buf.reserve(4096);
            tokio::select! {
                _ = &mut sleep => return Ok(()),
                r = self.stream.read_buf(&mut self.buf) => if matches!(r, Ok(0) | Err(_)) {
                    return Err(ClientGone);
                },
            }
        }
    }

    /// Keep the socket open, discarding input, until the client closes it.
    async fn wait_eof(&mut self) -> ClientGone {
        loop {
            self.buf.clear();
            self.buf.reserve(4096);
            if matches!(self.stream.read_buf(&mut self.buf).await, Ok(0) | Err(_)) {
                return ClientGone;
            }
        }
    }

    /// Write body bytes honouring `drip` / `split_writes`; with `chunked`, every piece is framed
    /// as its own HTTP chunk.
    async fn write_pieces(
        &mut self,
        data: &[u8],
        step: &Step,
        chunked: bool,
    ) -> Result<(), ClientGone> {
        let (size, gap) = match (step.drip, step.split) {
            (Some(d), _) => (1, d),
            (None, true) => (3, Duration::from_millis(1)),
            (None, false) => (data.len().max(1), Duration::ZERO),
        };
        for (i, piece) in data.chunks(size).enumerate() {
            if i > 0 && !gap.is_zero() {
                self.pause(gap).await?;
            }
            if chunked {
                let mut framed = format!("{:x}\r\n", piece.len()).into_bytes();
                framed.extend_from_slice(piece);
                framed.extend_from_slice(b"\r\n");
                self.write(&framed).await?;
            } else {
                self.write(piece).await?;
            }
        }
        Ok(())
    }

    /// Status line + headers: `defaults`, with any the step overrides removed, then the step's.
    async fn write_head(
        &mut self,
        step: &Step,
        defaults: Vec<(&str, String)>,
        close_after: bool,
    ) -> Result<(), ClientGone> {
        let reason = http::StatusCode::from_u16(step.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Mock");
        let mut head = format!("HTTP/1.1 {} {reason}\r\n", step.status);
        let overridden = |n: &str| step.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
        for (k, v) in defaults.iter().filter(|(k, _)| !overridden(k)) {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if close_after && !overridden("connection") {
            head.push_str("connection: close\r\n");
        }
        for (k, v) in &step.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        self.write(head.as_bytes()).await
    }

    /// The step closes the connection early here: hold it open (`hold`), reset it (`rst`), or
    /// let the caller close it.
    async fn end_early(&mut self, step: &Step) -> Result<bool, ClientGone> {
        if step.hold {
            return Err(self.wait_eof().await);
        }
        if step.rst {
            let _ = self.stream.set_zero_linger();
        }
        Ok(false)
    }

    /// Execute `step` for `req`. `Ok(keep_alive)`, or `Err` when the client went away mid-answer.
    async fn respond(
        &mut self,
        req: &Recorded,
        step: &Step,
        close_after: bool,
    ) -> Result<bool, ClientGone> {
        match step.kind {
            Kind::Hang => return Err(self.wait_eof().await),
            Kind::Close => return Ok(false),
            Kind::Reset => {
                let _ = self.stream.set_zero_linger();
                return Ok(false);
            }
            _ => {}
        }
        if !step.delay_headers.is_zero() {
            self.pause(step.delay_headers).await?;
        }
        match step.kind.payload(req) {
            None => Ok(false),
            Some(Payload::Raw(bytes)) => {
                self.write_pieces(&bytes, step, false).await?;
                self.end_early(step).await
            }
            Some(Payload::Full { content_type, body }) => {
                let defaults = vec![
                    ("content-type", content_type),
                    ("content-length", body.len().to_string()),
                ];
                self.write_head(step, defaults, close_after).await?;
                if !step.delay_body.is_zero() {
                    self.pause(step.delay_body).await?;
                }
                let n = step.truncate.map_or(body.len(), |n| n.min(body.len()));
                self.write_pieces(&body[..n], step, false).await?;
                if step.truncate.is_some() {
                    return self.end_early(step).await;
                }
                Ok(!close_after)
            }
            Some(Payload::Stream(events)) => {
                let defaults = vec![
                    ("content-type", "text/event-stream".to_string()),
                    ("cache-control", "no-cache".to_string()),
                    ("transfer-encoding", "chunked".to_string()),
                ];
                self.write_head(step, defaults, close_after).await?;
                if !step.delay_body.is_zero() {
                    self.pause(step.delay_body).await?;
                }
                let nl = if step.crlf { "\r\n" } else { "\n" };
                for ev in &events {
                    match ev {
                        SseEv::Delay(d) => self.pause(*d).await?,
                        SseEv::Stall => return Err(self.wait_eof().await),
                        SseEv::Drop => return self.end_early(step).await,
                        _ => {
                            let text = ev.render(nl).unwrap_or_default();
                            self.write_pieces(text.as_bytes(), step, true).await?;
                        }
                    }
                }
                self.write(b"0\r\n\r\n").await?;
                Ok(!close_after)
            }
        }
    }
}
