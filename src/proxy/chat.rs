//! `POST /v1/chat/completions` and `GET /v1/models`.

use super::attempt::{self, AttemptCtx, Call, Cand, Run, RunOutcome, Success, Usage};
use super::auth::{authenticate, ClientAuth};
use super::body::ChatRequest;
use super::classify::{AttemptError, ErrorInfo};
use super::state::{AppState, ProviderRuntime, Runtime};
use crate::error::{openai_error_body, ApiError};
use crate::providers::openai::{self, RELAYED_HEADERS};
use crate::providers::transport::UpstreamResponse;
use crate::providers::{anthropic, Wire};
use crate::routing::RouteOptions;
use crate::traces::{new_trace_id, PendingTrace, TraceRecord, TraceStatus};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Non-streaming bodies up to this size are validated before relaying; larger ones are streamed
/// through as they arrive.
const VALIDATE_LIMIT: usize = 8 << 20;

pub fn header_true(headers: &HeaderMap, name: &str) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}

/// Reads the request body, refusing more than `limit` bytes with a 413.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    if let Some(len) = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(ApiError::BodyTooLarge { limit });
        }
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_large {
            ApiError::BodyTooLarge { limit }
        } else {
            ApiError::InvalidRequest(format!("could not read request body: {e}"))
        }
    })
}

/// Resolves the candidates for a request: a bring-your-own key goes straight to its provider,
/// everything else follows the routing plan.
pub fn candidates(
    rt: &Runtime,
    auth: &ClientAuth,
    model: &str,
    opts: &RouteOptions,
) -> (Vec<Cand>, bool) {
    if let ClientAuth::Byok { kind, .. } = auth {
        if let Some(p) = rt.byok.get(kind) {
            let model = match model.split_once('/') {
                Some((prefix, m)) if prefix == p.name() => m,
                _ => model,
            };
            return (vec![Cand::new(p.clone(), model.to_string(), None)], false);
        }
    }
    let route = rt.plan(model, opts);
    let cands = route
        .candidates
        .iter()
        .map(|c| Cand::new(rt.providers[c.provider].clone(), c.model.clone(), c.skip))
        .collect();
    (cands, route.local_only)
}

/// The `x-stockyard-*` headers every answer carries.
pub struct Meta {
    pub trace_id: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub tries: u32,
    pub failover: bool,
}

const TRACE_ID: HeaderName = HeaderName::from_static("x-stockyard-trace-id");
const PROVIDER: HeaderName = HeaderName::from_static("x-stockyard-provider");
const MODEL: HeaderName = HeaderName::from_static("x-stockyard-model");
const ATTEMPTS: HeaderName = HeaderName::from_static("x-stockyard-attempts");
const FAILOVER: HeaderName = HeaderName::from_static("x-stockyard-failover");

impl Meta {
    /// Sets the `x-stockyard-*` headers (names are constants; common values are static, so
    /// only the trace id, provider and model are copied).
    pub fn apply(&self, h: &mut HeaderMap) {
        let mut set = |name: HeaderName, v: &str| {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.insert(name, v);
            }
        };
        set(TRACE_ID, &self.trace_id);
        if let Some(p) = &self.provider {
            set(PROVIDER, p);
        }
        if let Some(m) = &self.model {
            set(MODEL, m);
        }
        const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
        let attempts = match DIGITS.get(self.tries as usize) {
            Some(d) => HeaderValue::from_static(d),
            None => HeaderValue::from(self.tries),
        };
        h.insert(ATTEMPTS, attempts);
        h.insert(
            FAILOVER,
            HeaderValue::from_static(if self.failover { "true" } else { "false" }),
        );
    }
}

impl Meta {
    /// A fresh request's metadata, with a new trace id.
    pub fn new() -> Meta {
        Meta {
            trace_id: new_trace_id(),
            provider: None,
            model: None,
            tries: 0,
            failover: false,
        }
    }

    /// The client response for a handler's result, with the `x-stockyard-*` headers set.
    pub fn finish(&self, result: Result<Response, ApiError>) -> Response {
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(trace_id = %self.trace_id, status = e.status().as_u16(), error = %e, "request rejected");
                e.into_response()
            }
        };
        self.apply(resp.headers_mut());
        resp
    }
}

impl Default for Meta {
    fn default() -> Self {
        Meta::new()
    }
}

pub async fn chat_completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let rt = st.runtime();
    let mut meta = Meta::new();
    let mut cache_hit = false;
    let result = handle_chat(&st, &rt, &headers, body, &mut meta, &mut cache_hit).await;
    let mut resp = meta.finish(result);
    if rt.config.cache.enabled {
        super::cached::set_header(resp.headers_mut(), cache_hit);
    }
    resp
}

async fn handle_chat(
    st: &AppState,
    rt: &Runtime,
    headers: &HeaderMap,
    body: Body,
    meta: &mut Meta,
    cache_hit: &mut bool,
) -> Result<Response, ApiError> {
    let auth = authenticate(&rt.config, headers)?;
    let bytes = read_body(headers, body, rt.config.max_body_size).await?;
    let req = ChatRequest::parse(&bytes)?;
    let mut trace = PendingTrace::new(
        st.traces.clone(),
        TraceRecord::new(meta.trace_id.clone(), &req.model, req.stream),
    );
    if trace.store_bodies() {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        trace.update(|r| r.request_body = Some(text));
    }
    let opts = RouteOptions {
        local_only: header_true(headers, "x-stockyard-local-only"),
        no_failover: header_true(headers, "x-stockyard-no-failover"),
    };
    let cache = super::cached::plan(&rt.config, &auth, headers, &bytes, &req, opts.local_only);
    let mut storing = None;
    if let Some(plan) = cache {
        if let Some(hit) = st.cache.lookup(plan.key, rt.config.cache.ttl).await {
            *cache_hit = true;
            return Ok(super::cached::respond_hit(
                hit,
                req.stream,
                req.include_usage,
                meta,
                trace,
            ));
        }
        trace.update(|r| r.cache = Some(crate::cache::CacheOutcome::Miss));
        storing = st.cache.opened().map(|store| super::cached::Storing {
            store,
            plan,
            ttl: rt.config.cache.ttl,
            max_entries: rt.config.cache.max_entries,
        });
    }
    let (mut cands, local_only) = candidates(rt, &auth, &req.model, &opts);
    super::fit::fit(&bytes, &mut cands);
    let key = match &auth {
        ClientAuth::Byok { key, .. } => Some(key.as_str()),
        _ => None,
    };
    let call = Call {
        path: "/chat/completions",
        anthropic_path: Some("/messages"),
        accept_sse: req.stream,
        key,
        retry_on: &rt.config.failover.retry_on,
        local_only,
        hedge_after: rt.config.failover.hedge_after,
        requested_model: &req.model,
    };
    // The request as a JSON tree, parsed only if a candidate needs translation.
    let tree: std::sync::OnceLock<Result<serde_json::Value, String>> = std::sync::OnceLock::new();
    let body_for = |c: &Cand| -> Result<Vec<u8>, AttemptError> {
        match c.provider.cfg.kind.info().wire {
            Wire::OpenAi => Ok(req.upstream_body_with(&c.model, c.messages.as_deref())),
            Wire::Anthropic => {
                let v = tree
                    .get_or_init(|| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
                    .as_ref()
                    .map_err(|e| AttemptError::Translate(e.clone()))?;
                let truncated;
                let v = match c.messages.as_deref() {
                    Some(m) => {
                        let mut t = v.clone();
                        t["messages"] = serde_json::from_str(m)
                            .map_err(|e| AttemptError::Translate(e.to_string()))?;
                        truncated = t;
                        &truncated
                    }
                    None => v,
                };
                let out = anthropic::request_to_anthropic(v, &c.model, req.stream)
                    .map_err(|e| AttemptError::Translate(e.to_string()))?;
                serde_json::to_vec(&out).map_err(|e| AttemptError::Translate(e.to_string()))
            }
        }
    };
    let mut run = if req.stream {
        let include_usage = req.include_usage;
        attempt::run(&cands, &call, &mut trace.attempts, body_for, |resp, ctx| {
            super::stream::finish_stream(resp, ctx, include_usage)
        })
        .await
    } else {
        attempt::run(
            &cands,
            &call,
            &mut trace.attempts,
            body_for,
            |resp, ctx| async move {
                match ctx.provider.cfg.kind.info().wire {
                    Wire::OpenAi => finish_chat_json(resp, ctx).await,
                    Wire::Anthropic => finish_anthropic_json(resp, ctx).await,
                }
            },
        )
        .await
    };
    if let RunOutcome::Ok {
        provider, model, ..
    } = &run.outcome
    {
        let dropped = cands
            .iter()
            .find(|c| Arc::ptr_eq(&c.provider, provider) && c.model == *model)
            .and_then(|c| c.truncated_tokens);
        trace.update(|r| r.truncated_tokens = dropped);
    }
    if let Some(storing) = storing {
        super::cached::store_on_success(&mut run, storing).await;
    }
    Ok(respond(run, meta, trace, &rt.config.pricing))
}

/// Turns a finished run into the client response, completes the trace (for a stream, when the
/// stream ends) and logs the request line.
pub fn respond(
    run: Run,
    meta: &mut Meta,
    mut trace: PendingTrace,
    pricing: &std::collections::BTreeMap<String, crate::config::RawPrice>,
) -> Response {
    meta.tries = run.tries;
    meta.failover = run.failover;
    let ttft_ms = run.ttfb.map(|d| d.as_millis() as u64);
    let overhead = trace.elapsed().saturating_sub(run.upstream);
    trace.update(|r| {
        r.overhead_us = Some(overhead.as_micros() as u64);
        r.tries = run.tries;
        r.failover = run.failover;
        r.ttft_ms = ttft_ms;
    });
    crate::logging::failovers(&meta.trace_id, trace.model_requested(), &trace.attempts);
    // The request's own log line is written when its trace completes (a stream's at its end).
    match run.outcome {
        RunOutcome::Ok {
            success,
            provider,
            model,
        } => {
            meta.provider = Some(provider.name().to_string());
            meta.model = Some(model.clone());
            let local = provider.cfg.local;
            let usage = success.usage;
            trace.update(|r| {
                r.provider = Some(provider.name().to_string());
                r.model = Some(model.clone());
                r.local = local;
                r.http_status = Some(success.status.as_u16());
                set_usage(r, usage, pricing);
            });
            let Success {
                status,
                headers,
                body,
                stream,
                ..
            } = success;
            let body = match stream {
                Some(state) => {
                    Body::from_stream(TracedStream::new(body, trace, state, pricing.clone()))
                }
                None => {
                    trace.finish(TraceStatus::Ok);
                    body
                }
            };
            let mut resp = Response::new(body);
            *resp.status_mut() = status;
            *resp.headers_mut() = headers;
            resp
        }
        RunOutcome::Final {
            error,
            provider,
            model,
        } => {
            let resp = final_error_response(&error);
            meta.provider = Some(provider.name().to_string());
            meta.model = Some(model.clone());
            let status = resp.status().as_u16();
            trace.update(|r| {
                r.provider = Some(provider.name().to_string());
                r.model = Some(model);
                r.local = provider.cfg.local;
                r.http_status = Some(status);
                r.error = Some(error.to_string());
            });
            trace.finish(TraceStatus::Error);
            resp
        }
        RunOutcome::Exhausted(e) => {
            let status = e.status().as_u16();
            trace.update(|r| {
                r.http_status = Some(status);
                r.error = Some(e.to_string());
            });
            trace.finish(TraceStatus::Error);
            e.into_response()
        }
    }
}

fn set_usage(
    r: &mut TraceRecord,
    usage: Option<Usage>,
    pricing: &std::collections::BTreeMap<String, crate::config::RawPrice>,
) {
    if let Some(u) = usage {
        r.tokens_in = Some(u.prompt_tokens);
        r.tokens_out = Some(u.completion_tokens);
        let model = r.model.as_deref().unwrap_or(&r.model_requested);
        r.cost_usd = Some(crate::traces::pricing::cost(
            model,
            r.local,
            u.prompt_tokens,
            u.completion_tokens,
            pricing,
        ));
    }
}

/// Relays a committed stream's body and completes its trace when the stream ends (ok, or the
/// upstream failed mid-stream) or is dropped (the client went away).
struct TracedStream {
    inner: axum::body::BodyDataStream,
    trace: Option<PendingTrace>,
    state: attempt::StreamState,
    pricing: std::collections::BTreeMap<String, crate::config::RawPrice>,
}

impl TracedStream {
    fn new(
        body: Body,
        trace: PendingTrace,
        state: attempt::StreamState,
        pricing: std::collections::BTreeMap<String, crate::config::RawPrice>,
    ) -> TracedStream {
        TracedStream {
            inner: body.into_data_stream(),
            trace: Some(trace),
            state,
            pricing,
        }
    }

    fn complete(&mut self, client_gone: bool) {
        let Some(mut trace) = self.trace.take() else {
            return;
        };
        let end = self.state.lock().map(|s| s.clone()).unwrap_or_default();
        let pricing = &self.pricing;
        trace.update(|r| {
            set_usage(
                r,
                end.usage
                    .or(r.tokens_in.zip(r.tokens_out).map(|(p, c)| Usage {
                        prompt_tokens: p,
                        completion_tokens: c,
                    })),
                pricing,
            );
            if let Some(e) = &end.error {
                r.error = Some(e.clone());
            }
        });
        let status = if client_gone && !end.complete {
            TraceStatus::ClientClosed
        } else if end.error.is_some() {
            TraceStatus::Error
        } else {
            TraceStatus::Ok
        };
        trace.finish(status);
    }
}

impl futures::Stream for TracedStream {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let next = std::pin::Pin::new(&mut self.inner).poll_next(cx);
        if let std::task::Poll::Ready(None) = next {
            self.complete(false);
        }
        next
    }
}

impl Drop for TracedStream {
    fn drop(&mut self) {
        self.complete(true);
    }
}

/// A final upstream error keeps its status; the body is relayed when it is already
/// OpenAI-shaped, otherwise re-shaped.
pub fn final_error_response(e: &AttemptError) -> Response {
    match e {
        AttemptError::Http { status, body, .. } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY);
            let openai_shaped = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .is_some_and(|v| v["error"]["message"].is_string() && v.get("type").is_none());
            let body = if openai_shaped {
                body.clone()
            } else {
                let info = ErrorInfo::from_body(body);
                let message = info.message.unwrap_or_else(|| {
                    let text = String::from_utf8_lossy(&body[..body.len().min(500)])
                        .trim()
                        .to_string();
                    if text.is_empty() {
                        format!("upstream returned HTTP {}", status.as_u16())
                    } else {
                        text
                    }
                });
                let etype = info.etype.unwrap_or_else(|| default_type(status).into());
                Bytes::from(openai_error_body(&message, &etype, info.code.as_deref()).to_string())
            };
            let mut r = Response::new(Body::from(body));
            *r.status_mut() = status;
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        other => {
            let status =
                StatusCode::from_u16(other.exhausted_status()).unwrap_or(StatusCode::BAD_GATEWAY);
            let body =
                openai_error_body(&other.to_string(), "upstream_error", Some(other.reason()));
            (status, axum::Json(body)).into_response()
        }
    }
}

fn default_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    }
}

/// Headers relayed from a successful upstream answer.
pub fn relay_headers(upstream: &HeaderMap, content_type: &'static str) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(8);
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    // One pass over what the upstream sent (its first value of each relayed header), rather
    // than a hashed lookup, with a name parsed at run time, per relayed header.
    for (name, v) in upstream {
        if RELAYED_HEADERS.contains(&name.as_str()) {
            h.entry(name).or_insert_with(|| v.clone());
        }
    }
    h
}

#[derive(serde::Deserialize)]
struct CompletionProbe {
    choices: Option<serde::de::IgnoredAny>,
    error: Option<serde::de::IgnoredAny>,
    usage: Option<UsageJson>,
}

#[derive(serde::Deserialize, Debug, Clone, Copy, Default)]
pub struct UsageJson {
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
}

impl From<UsageJson> for Usage {
    fn from(u: UsageJson) -> Usage {
        Usage {
            prompt_tokens: u.prompt_tokens.unwrap_or(0),
            completion_tokens: u.completion_tokens.unwrap_or(0),
        }
    }
}

/// Validates a completed chat completion body: it must be JSON with `choices`; a 200 carrying
/// an `error` object is an upstream failure.
pub fn validate_chat_json(status: u16, body: &[u8]) -> Result<Option<Usage>, AttemptError> {
    let probe: CompletionProbe = serde_json::from_slice(body).map_err(|e| {
        AttemptError::Malformed(format!("body is not a chat completion JSON object ({e})"))
    })?;
    answer_verdict(
        status,
        body,
        "choices",
        probe.choices.is_some(),
        probe.error.is_some(),
        probe.usage,
    )
}

/// The verdict on a parsed 2xx answer: with its main field (`choices`, `data`) it is an answer
/// (with its usage); without it, an `error` makes it an upstream failure, and anything else is
/// malformed.
pub fn answer_verdict(
    status: u16,
    body: &[u8],
    field: &str,
    has_field: bool,
    has_error: bool,
    usage: Option<UsageJson>,
) -> Result<Option<Usage>, AttemptError> {
    match (has_field, has_error) {
        (true, _) => Ok(usage.map(Usage::from)),
        (false, true) => Err(AttemptError::ErrorBody {
            status,
            body: Bytes::copy_from_slice(&body[..body.len().min(4096)]),
        }),
        (false, false) => Err(AttemptError::Malformed(format!(
            "response has no `{field}`"
        ))),
    }
}

/// Reads a 2xx chat completion: small bodies are validated whole and relayed byte for byte;
/// bodies over [`VALIDATE_LIMIT`] are streamed through as they arrive.
pub async fn finish_chat_json(
    resp: UpstreamResponse,
    ctx: AttemptCtx,
) -> Result<Success, AttemptError> {
    finish_json_with(resp, ctx, validate_chat_json).await
}

/// Reads a 2xx JSON answer: small bodies are checked whole by `validate` (which also reads the
/// usage) and relayed byte for byte; bodies over [`VALIDATE_LIMIT`] are streamed through.
pub async fn finish_json_with(
    resp: UpstreamResponse,
    ctx: AttemptCtx,
    validate: fn(u16, &[u8]) -> Result<Option<Usage>, AttemptError>,
) -> Result<Success, AttemptError> {
    let (p, deadline) = (ctx.provider, ctx.deadline);
    let status = resp.status();
    let headers = relay_headers(resp.headers(), "application/json");
    let idle = p.cfg.timeouts.idle;
    let mut stream = resp.bytes_stream();
    let mut buf = bytes::BytesMut::new();
    loop {
        let now = Instant::now();
        let wait = idle.min(deadline.saturating_duration_since(now));
        match tokio::time::timeout(wait, stream.next()).await {
            Err(_) if wait < idle => return Err(AttemptError::TotalTimeout(p.cfg.timeouts.total)),
            Err(_) => return Err(AttemptError::IdleTimeout(idle)),
            Ok(Some(Err(e))) => return Err(openai::body_error(&e)),
            Ok(Some(Ok(chunk))) => {
                buf.extend_from_slice(&chunk);
                if buf.len() > VALIDATE_LIMIT {
                    let head = buf.freeze();
                    let rest = stream.map(|r| r.map_err(std::io::Error::other));
                    let body = Body::from_stream(
                        futures::stream::once(async move { Ok::<_, std::io::Error>(head) })
                            .chain(idle_guard(rest, idle)),
                    );
                    return Ok(Success {
                        status,
                        headers,
                        body,
                        usage: None,
                        stream: None,
                    });
                }
            }
            Ok(None) => {
                let body = buf.freeze();
                let usage = validate(status.as_u16(), &body)?;
                return Ok(Success {
                    status,
                    headers,
                    body: Body::from(body),
                    usage,
                    stream: None,
                });
            }
        }
    }
}

/// Ends a relayed byte stream with an error if no chunk arrives within `idle`.
fn idle_guard<S>(s: S, idle: Duration) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>>
where
    S: futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    tokio_stream::StreamExt::timeout(s, idle).map(|r| match r {
        Ok(inner) => inner,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "upstream idle timeout",
        )),
    })
}

/// Reads a 2xx Anthropic Messages answer and translates it into a chat completion.
pub async fn finish_anthropic_json(
    resp: UpstreamResponse,
    ctx: AttemptCtx,
) -> Result<Success, AttemptError> {
    let status = resp.status();
    let headers = relay_headers(resp.headers(), "application/json");
    let p = &ctx.provider;
    let (body, truncated) =
        openai::read_limited(resp, VALIDATE_LIMIT, p.cfg.timeouts.idle, ctx.deadline).await?;
    if truncated {
        return Err(AttemptError::Malformed(
            "Anthropic response too large to translate".into(),
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| AttemptError::Malformed(format!("body is not JSON ({e})")))?;
    if v.get("type").and_then(|t| t.as_str()) == Some("error") {
        return Err(AttemptError::ErrorBody {
            status: status.as_u16(),
            body,
        });
    }
    let out = anthropic::response_to_openai(&v, &ctx.model)
        .map_err(|e| AttemptError::Malformed(e.to_string()))?;
    let bytes = serde_json::to_vec(&out).map_err(|e| AttemptError::Malformed(e.to_string()))?;
    let usage = validate_chat_json(status.as_u16(), &bytes)?;
    Ok(Success {
        status,
        headers,
        body: Body::from(bytes),
        usage,
        stream: None,
    })
}

/// `GET /v1/models`: aliases plus the models each provider reports (or lists in its config).
pub async fn list_models(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let rt = st.runtime();
    if let Err(e) = authenticate(&rt.config, &headers) {
        return e.into_response();
    }
    let mut data: Vec<serde_json::Value> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for name in rt
        .config
        .aliases
        .keys()
        .filter(|_| rt.config.aliases_enabled)
    {
        if seen.insert(name.clone()) {
            data.push(serde_json::json!({"id": name, "object": "model", "created": 0, "owned_by": "stockyard"}));
        }
    }
    let fetches = rt
        .providers
        .iter()
        .filter(|p| p.cfg.enabled)
        .filter(|p| p.with_breaker(|b| b.snapshot().state) != crate::breaker::State::Open)
        .map(|p| {
            let p = p.clone();
            async move {
                let ids = fetch_models(&p).await.unwrap_or_else(|| {
                    p.cfg
                        .models
                        .iter()
                        .map(|g| g.as_str().to_string())
                        .filter(|s| !s.contains(['*', '?', '[']))
                        .collect()
                });
                (p, ids)
            }
        });
    for (p, ids) in futures::future::join_all(fetches).await {
        for id in ids {
            if p.cfg.serves(&id) && seen.insert(id.clone()) {
                data.push(serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": p.name()}));
            }
        }
    }
    axum::Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

async fn fetch_models(p: &ProviderRuntime) -> Option<Vec<String>> {
    let req = crate::health::get_request(p, &p.url("/models"));
    let resp = tokio::time::timeout(Duration::from_secs(3), req.send())
        .await
        .ok()?
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let body = tokio::time::timeout(Duration::from_secs(3), resp.bytes())
        .await
        .ok()?
        .ok()?;
    crate::health::parse_models(&body)
}
