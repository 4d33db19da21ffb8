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
use crate::providers::openai::{body_error, read_limited};
use crate::providers::transport::UpstreamResponse;
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

type EventStream = Pin<Box<dyn Stream<Item = Result<SseEvent, StreamError<hyper::Error>>> + Send>>;

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
    finish_reason: NonEmpty,
}

#[derive(Deserialize)]
struct DeltaJson {
    #[serde(default)]
    content: NonEmpty,
    #[serde(default)]
    tool_calls: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(default)]
    function_call: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    refusal: NonEmpty,
    #[serde(default)]
    reasoning_content: NonEmpty,
    #[serde(default)]
    reasoning: NonEmpty,
}

/// Whether a field holds something: any value but `null` and `""`. Read without keeping (or
/// allocating) the value, as every chunk of every stream goes through here.
#[derive(Default)]
struct NonEmpty(bool);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<NonEmpty, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = NonEmpty;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, s: &str) -> Result<NonEmpty, E> {
                Ok(NonEmpty(!s.is_empty()))
            }
            fn visit_unit<E>(self) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_none<E>(self) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<NonEmpty, D::Error> {
                d.deserialize_any(V)
            }
            fn visit_bool<E>(self, _: bool) -> Result<NonEmpty, E> {
                Ok(NonEmpty(true))
            }
            fn visit_i64<E>(self, _: i64) -> Result<NonEmpty, E> {
                Ok(NonEmpty(true))
            }
            fn visit_u64<E>(self, _: u64) -> Result<NonEmpty, E> {
                Ok(NonEmpty(true))
            }
            fn visit_f64<E>(self, _: f64) -> Result<NonEmpty, E> {
                Ok(NonEmpty(true))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<NonEmpty, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(NonEmpty(true))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<NonEmpty, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(NonEmpty(true))
            }
        }
        d.deserialize_any(V)
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
        if ch.finish_reason.0 {
            finish = true;
        }
        if let Some(d) = &ch.delta {
            if d.content.0
                || d.tool_calls.as_ref().is_some_and(|t| !t.is_empty())
                || d.function_call.is_some()
                || d.refusal.0
                || d.reasoning_content.0
                || d.reasoning.0
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
        let out: Vec<Result<SseEvent, StreamError<hyper::Error>>> = match item {
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

fn stream_err(e: StreamError<hyper::Error>) -> AttemptError {
    match e {
        StreamError::Transport(t) => body_error(&t),
        StreamError::Sse(s) => AttemptError::Malformed(s.to_string()),
    }
}

/// Reads the stream until the first content event (failing the attempt on anything else), then
/// returns a body that relays the rest.
pub async fn finish_stream(
    resp: UpstreamResponse,
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
            Ok(Some(Err(e))) => return Err(stream_err(e)),
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
                    let e = stream_err(e);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(data: &str) -> SseEvent {
        SseEvent {
            data: Some(data.to_string()),
            ..Default::default()
        }
    }

    fn kind(data: &str) -> String {
        match classify_event(&ev(data)) {
            Ok((Chunk::Content { finish }, u)) => {
                format!("content finish={finish} usage={}", u.is_some())
            }
            Ok((Chunk::Empty, u)) => format!("empty usage={}", u.is_some()),
            Ok((Chunk::UsageOnly(u), _)) => {
                format!("usage {}+{}", u.prompt_tokens, u.completion_tokens)
            }
            Ok((Chunk::Error(m), _)) => format!("error {m}"),
            Ok((Chunk::Done, _)) => "done".into(),
            Err(e) => format!("malformed {e}"),
        }
    }

    #[test]
    fn events_are_classified_by_what_the_client_must_see() {
        let d = |delta: &str| format!(r#"{{"choices":[{{"index":0,"delta":{delta}}}]}}"#);
        for (data, want) in [
            (d(r#"{"role":"assistant","content":""}"#), "empty usage=false"),
            (d(r#"{"role":"assistant"}"#), "empty usage=false"),
            (d(r#"{"content":null}"#), "empty usage=false"),
            (d(r#"{"content":"hi \"there\" \u00e9"}"#), "content finish=false usage=false"),
            (d(r#"{"content":[{"type":"text","text":"x"}]}"#), "content finish=false usage=false"),
            (d(r#"{"content":0}"#), "content finish=false usage=false"),
            (d(r#"{"tool_calls":[]}"#), "empty usage=false"),
            (d(r#"{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}"#), "content finish=false usage=false"),
            (d(r#"{"function_call":{"name":"f"}}"#), "content finish=false usage=false"),
            (d(r#"{"refusal":"no"}"#), "content finish=false usage=false"),
            (d(r#"{"refusal":""}"#), "empty usage=false"),
            (d(r#"{"reasoning_content":"think"}"#), "content finish=false usage=false"),
            (d(r#"{"reasoning":"think"}"#), "content finish=false usage=false"),
            (d(r#"{"reasoning":{"summary":[]}}"#), "content finish=false usage=false"),
            (d(r#"{"unknown":{"deep":[1,{"x":null}]},"content":"a"}"#), "content finish=false usage=false"),
            (
                r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#.into(),
                "content finish=true usage=false",
            ),
            (
                r#"{"choices":[{"index":0,"delta":{},"finish_reason":null}]}"#.into(),
                "empty usage=false",
            ),
            (
                r#"{"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":""}]}"#.into(),
                "content finish=false usage=false",
            ),
            (
                r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}"#.into(),
                "usage 3+5",
            ),
            (
                r#"{"choices":[{"delta":{"content":"a"},"finish_reason":"length"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#.into(),
                "content finish=true usage=true",
            ),
            (r#"{"id":"x"}"#.into(), "empty usage=false"),
            (r#"{"error":{"message":"overloaded","type":"server_error"}}"#.into(), "error overloaded"),
            (r#"{"error":"bad thing"}"#.into(), "error \"bad thing\""),
            ("[DONE]".into(), "done"),
        ] {
            assert_eq!(kind(&data), want, "{data}");
        }
        for bad in [
            "not json",
            r#"{"choices":[{"delta":{"content":"a"}}"#,
            r#"{"choices":"x"}"#,
        ] {
            assert!(kind(bad).starts_with("malformed"), "{bad}: {}", kind(bad));
        }
        let error_event = SseEvent {
            event: Some("error".into()),
            data: Some("boom".into()),
            ..Default::default()
        };
        assert!(matches!(classify_event(&error_event), Ok((Chunk::Error(m), None)) if m == "boom"));
        assert!(matches!(
            classify_event(&SseEvent::default()),
            Ok((Chunk::Empty, None))
        ));
    }
}
