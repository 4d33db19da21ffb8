//! Streaming relay (SPEC section 6, "Streaming"). Before the first event that carries content,
//! nothing is sent to the client and any failure is an attempt error, so the attempt loop fails
//! over transparently. After that, events are relayed one by one as they arrive (their original
//! bytes, no re-serialisation), with backpressure: upstream is read only as fast as the client
//! takes. A failure after content ends the stream with a `stream_error` event and no `[DONE]`.

use super::attempt::{AttemptCtx, StreamState, Success, Usage};
use super::chat::{relay_headers, UsageJson};
use super::classify::AttemptError;
use super::state::ProviderRuntime;
use crate::providers::anthropic::{AnthropicToOpenAiStream, OpenAiOut};
use crate::providers::openai::{read_limited, transport_error};
use crate::providers::Wire;
use crate::sse::{self, SseEvent, StreamError};
use axum::body::{Body, Bytes};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

/// How much of a non-SSE answer to a stream request is read to look for an error object.
const NON_SSE_LIMIT: usize = 1 << 20;

/// How long the end of an upstream body is awaited after `[DONE]` to keep its connection.
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

type EventStream =
    Pin<Box<dyn Stream<Item = Result<SseEvent, StreamError<reqwest::Error>>> + Send>>;

/// What one upstream data event means for the relay.
#[derive(Debug, PartialEq)]
pub enum Chunk {
    /// Text, a tool-call fragment, or a finish_reason: the stream is committed.
    Content {
        finish: bool,
    },
    /// A chunk with nothing the client needs to wait for (the role chunk, empty deltas).
    Empty,
    /// The trailing usage-only chunk.
    UsageOnly(Usage),
    /// An in-stream error event.
    Error(String),
    Done,
}

#[derive(Deserialize)]
struct ChunkJson {
    #[serde(default)]
    choices: Option<Vec<ChoiceJson>>,
    #[serde(default)]
    usage: Option<UsageJson>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChoiceJson {
    #[serde(default)]
    delta: Option<DeltaJson>,
    #[serde(default)]
    finish_reason: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct DeltaJson {
    #[serde(default)]
    content: Option<serde_json::Value>,
    #[serde(default)]
    tool_calls: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(default)]
    function_call: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    refusal: Option<serde_json::Value>,
    #[serde(default)]
    reasoning_content: Option<serde_json::Value>,
    #[serde(default)]
    reasoning: Option<serde_json::Value>,
}

fn non_empty(v: &Option<serde_json::Value>) -> bool {
    match v {
        Some(serde_json::Value::String(s)) => !s.is_empty(),
        Some(serde_json::Value::Null) | None => false,
        Some(_) => true,
    }
}

/// Classifies one SSE event of an OpenAI-compatible stream. Usage is returned alongside content
/// when a backend puts it on the last content chunk.
pub fn classify_event(ev: &SseEvent) -> Result<(Chunk, Option<Usage>), AttemptError> {
    if ev.event.as_deref() == Some("error") {
        let msg = ev.data.clone().unwrap_or_else(|| "error event".into());
        return Ok((Chunk::Error(msg), None));
    }
    let Some(data) = &ev.data else {
        return Ok((Chunk::Empty, None));
    };
    if ev.is_done() {
        return Ok((Chunk::Done, None));
    }
    let c: ChunkJson = serde_json::from_str(data)
        .map_err(|e| AttemptError::Malformed(format!("stream event is not JSON ({e})")))?;
    if let Some(err) = c.error {
        let msg = err
            .get("message")
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| err.to_string());
        return Ok((Chunk::Error(msg), None));
    }
    let usage = c.usage.map(Usage::from);
    let choices = c.choices.unwrap_or_default();
    if choices.is_empty() {
        return Ok((
            match usage {
                Some(u) => Chunk::UsageOnly(u),
                None => Chunk::Empty,
            },
            usage,
        ));
    }
    let mut content = false;
    let mut finish = false;
    for ch in &choices {
        if non_empty(&ch.finish_reason) {
            finish = true;
        }
        if let Some(d) = &ch.delta {
            if non_empty(&d.content)
                || d.tool_calls.as_ref().is_some_and(|t| !t.is_empty())
                || d.function_call.is_some()
                || non_empty(&d.refusal)
                || non_empty(&d.reasoning_content)
                || non_empty(&d.reasoning)
            {
                content = true;
            }
        }
    }
    Ok((
        if content || finish {
            Chunk::Content { finish }
        } else {
            Chunk::Empty
        },
        usage,
    ))
}

/// An SSE event synthesised from JSON (its raw bytes are what the client receives).
fn synth_event(event: Option<&str>, data: String) -> SseEvent {
    let raw = match event {
        Some(name) => sse::named_event(name, &data),
        None => sse::data_event(&data),
    };
    SseEvent {
        raw,
        event: event.map(str::to_string),
        data: Some(data),
        id: None,
        comments: Vec::new(),
    }
}

/// Translates an Anthropic Messages event stream into OpenAI chunk events, so the same
/// pre-content rules and relay apply. Usage is always requested from the translator (for
/// traces); the relay drops the usage chunk unless the client asked for it.
fn anthropic_events(inner: EventStream, model: &str) -> EventStream {
    let mut tr = AnthropicToOpenAiStream::new(model, true);
    Box::pin(inner.flat_map(move |item| {
        let out: Vec<Result<SseEvent, StreamError<reqwest::Error>>> = match item {
            Err(e) => vec![Err(e)],
            Ok(ev) if ev.is_comment_only() => vec![Ok(ev)],
            Ok(ev) => match ev.data.as_deref() {
                None => Vec::new(),
                Some(data) => match tr.on_event(ev.event.as_deref(), data) {
                    Ok(outs) => outs
                        .into_iter()
                        .map(|o| {
                            Ok(match o {
                                OpenAiOut::Chunk(v) => synth_event(None, v.to_string()),
                                OpenAiOut::Error { etype, message } => synth_event(
                                    None,
                                    serde_json::json!({"error": {"type": etype, "message": message}})
                                        .to_string(),
                                ),
                                OpenAiOut::Done => synth_event(None, "[DONE]".into()),
                            })
                        })
                        .collect(),
                    Err(e) => vec![Ok(synth_event(
                        None,
                        serde_json::json!({"error": {"type": "malformed_event", "message": e.to_string()}})
                            .to_string(),
                    ))],
                },
            },
        };
        futures::stream::iter(out)
    }))
}

/// The terminal event sent after content when the upstream fails.
pub fn stream_error_event(message: &str) -> Bytes {
    let v = serde_json::json!({"error": {"message": message, "type": "stream_error", "code": "upstream_interrupted"}});
    sse::data_event(&v.to_string())
}

fn stream_err(e: StreamError<reqwest::Error>, p: &ProviderRuntime) -> AttemptError {
    match e {
        StreamError::Transport(t) => transport_error(&t, p.cfg.timeouts.connect),
        StreamError::Sse(s) => AttemptError::Malformed(s.to_string()),
    }
}

/// Reads the stream until the first content event (failing the attempt on anything else), then
/// returns a body that relays the rest.
pub async fn finish_stream(
    resp: reqwest::Response,
    ctx: AttemptCtx,
    include_usage: bool,
) -> Result<Success, AttemptError> {
    let AttemptCtx {
        provider: p,
        model,
        started,
        deadline,
        byok,
    } = ctx;
    let status = resp.status();
    let ctype = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !ctype.starts_with("text/event-stream") {
        // Some backends answer a stream request with a JSON error and status 200. Only a
        // bounded prefix is read, within the idle and total timeouts: this body is never
        // relayed, and an unbounded read would buffer whatever the upstream sends (or wait on a
        // stalled body until the total timeout).
        let (body, cut) = read_limited(resp, NON_SSE_LIMIT, p.cfg.timeouts.idle, deadline).await?;
        if !cut
            && serde_json::from_slice::<serde_json::Value>(&body)
                .is_ok_and(|v| v.get("error").is_some())
        {
            return Err(AttemptError::ErrorBody {
                status: status.as_u16(),
                body,
            });
        }
        return Err(AttemptError::Malformed(format!(
            "expected text/event-stream, got `{ctype}`"
        )));
    }
    let headers = stream_headers(resp.headers());
    let mut events: EventStream = Box::pin(sse::decode_stream(resp.bytes_stream()));
    if p.cfg.kind.info().wire == Wire::Anthropic {
        events = anthropic_events(events, &model);
    }
    let first_byte = p.cfg.timeouts.first_byte;
    let content_deadline = (started + first_byte).min(deadline);
    let mut held: Vec<Bytes> = Vec::new();
    let mut usage = None;
    loop {
        let wait = content_deadline.saturating_duration_since(Instant::now());
        let ev = match tokio::time::timeout(wait, events.next()).await {
            Err(_) => return Err(AttemptError::FirstByteTimeout(first_byte)),
            Ok(None) => {
                return Err(AttemptError::StreamError(
                    "stream ended before any content".into(),
                ))
            }
            Ok(Some(Err(e))) => return Err(stream_err(e, &p)),
            Ok(Some(Ok(ev))) => ev,
        };
        if ev.is_comment_only() {
            continue;
        }
        let (chunk, u) = classify_event(&ev)?;
        usage = u.or(usage);
        match chunk {
            Chunk::Error(m) => return Err(AttemptError::StreamError(m)),
            Chunk::Done => {
                return Err(AttemptError::StreamError(
                    "stream ended before any content".into(),
                ))
            }
            Chunk::Empty => held.push(ev.raw),
            Chunk::UsageOnly(_) => {
                if include_usage {
                    held.push(ev.raw)
                }
            }
            Chunk::Content { finish } => {
                held.push(ev.raw);
                let state = StreamState::default();
                let relay = Relay {
                    state: state.clone(),
                    error: None,
                    events,
                    provider: p,
                    byok,
                    deadline,
                    include_usage,
                    finished: finish,
                    usage,
                    done: false,
                };
                let first = Bytes::from(held.concat());
                let body = futures::stream::once(async move { Ok::<_, std::io::Error>(first) })
                    .chain(relay.into_stream());
                return Ok(Success {
                    status,
                    headers,
                    body: Body::from_stream(body),
                    usage,
                    stream: Some(state),
                });
            }
        }
    }
}

fn stream_headers(upstream: &http::HeaderMap) -> http::HeaderMap {
    let mut h = relay_headers(upstream, "text/event-stream");
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    h.insert("x-accel-buffering", http::HeaderValue::from_static("no"));
    h
}

/// The committed part of a stream.
struct Relay {
    events: EventStream,
    provider: Arc<ProviderRuntime>,
    /// The client's own key, if it brought one.
    byok: Option<Arc<str>>,
    deadline: Instant,
    include_usage: bool,
    /// A finish_reason was seen: a missing `[DONE]` is then tolerated.
    finished: bool,
    usage: Option<Usage>,
    done: bool,
    /// Why the stream was cut after content, if it was.
    error: Option<String>,
    /// Shared with the trace: usage and how the stream ended.
    state: StreamState,
}

impl Relay {
    fn publish(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.usage = self.usage;
            s.error = self.error.clone();
            s.complete = self.done;
        }
    }

    fn into_stream(self) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
        futures::stream::unfold(self, |mut r| async move {
            if r.done {
                return None;
            }
            let out = r.next_bytes().await;
            if r.done {
                r.publish();
            }
            Some((Ok(out), r))
        })
    }

    /// The next bytes to send; sets `done` when the stream is over.
    async fn next_bytes(&mut self) -> Bytes {
        let idle = self.provider.cfg.timeouts.idle;
        loop {
            let now = Instant::now();
            let wait = idle.min(self.deadline.saturating_duration_since(now));
            let next = tokio::time::timeout(wait, self.events.next()).await;
            let ev = match next {
                Err(_) => {
                    let what = if wait < idle { "total" } else { "idle" };
                    return self.fail(&format!(
                        "upstream sent nothing within the {what} timeout ({})",
                        crate::config::units::format_duration(if wait < idle {
                            self.provider.cfg.timeouts.total
                        } else {
                            idle
                        })
                    ));
                }
                Ok(None) => {
                    self.done = true;
                    if self.finished {
                        // Complete answer, upstream just omitted the terminator.
                        return sse::data_event("[DONE]");
                    }
                    return self.fail("upstream closed the stream before it finished");
                }
                Ok(Some(Err(e))) => {
                    let e = stream_err(e, &self.provider);
                    if self.finished && matches!(e, AttemptError::Transport(_)) {
                        // Complete answer; the upstream dropped the connection (e.g. no final
                        // chunk of a chunked body) instead of sending the terminator.
                        self.done = true;
                        tracing::debug!(provider = %self.provider.name(), error = %e, "connection closed after finish_reason without [DONE]");
                        return sse::data_event("[DONE]");
                    }
                    return self.fail(&e.to_string());
                }
                Ok(Some(Ok(ev))) => ev,
            };
            if ev.is_comment_only() {
                return ev.raw;
            }
            match classify_event(&ev) {
                Err(e) => return self.fail(&e.to_string()),
                Ok((chunk, u)) => {
                    self.usage = u.or(self.usage);
                    match chunk {
                        Chunk::Error(m) => return self.fail(&format!("upstream error: {m}")),
                        Chunk::Done => {
                            self.done = true;
                            self.release_connection();
                            return ev.raw;
                        }
                        Chunk::UsageOnly(_) if !self.include_usage => continue,
                        Chunk::Content { finish: true } => {
                            self.finished = true;
                            return ev.raw;
                        }
                        _ => return ev.raw,
                    }
                }
            }
        }
    }

    /// After `[DONE]` the upstream body usually still owes its end (the last chunk of a chunked
    /// body). Reading it lets the connection go back to the pool; dropping the body unread would
    /// close it, and the next request would pay for a new TCP (and TLS) handshake. The end is
    /// read in the background, for at most [`DRAIN_WAIT`], so the client's stream ends at once.
    fn release_connection(&mut self) {
        let rest = std::mem::replace(&mut self.events, Box::pin(futures::stream::empty()));
        tokio::spawn(async move {
            let _ = tokio::time::timeout(DRAIN_WAIT, rest.for_each(|_| async {})).await;
        });
    }

    fn fail(&mut self, message: &str) -> Bytes {
        // An upstream that echoes the key it was sent must not hand it on.
        let secrets = self.provider.secrets(self.byok.as_deref());
        let message = &crate::proxy::classify::redact_text(message, &secrets);
        self.done = true;
        self.error = Some(message.to_string());
        tracing::warn!(provider = %self.provider.name(), error = message, "stream interrupted after content");
        stream_error_event(message)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The client went away mid-stream: keep what was seen for the trace.
        if !self.done {
            self.publish();
        }
    }
}
