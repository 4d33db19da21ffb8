//! The response cache on the chat completions path: deciding whether a request may use the
//! cache and under which key, answering a hit (JSON, or a replayed SSE stream), and storing a
//! miss's answer once it is complete (a stream only when it ended cleanly).

use super::attempt::{Run, RunOutcome, StreamState};
use super::auth::ClientAuth;
use super::body::ChatRequest;
use super::chat::{header_true, Meta};
use crate::cache::replay::{self, Assembler, MAX_ENTRY_BYTES};
use crate::cache::{key, CacheOutcome, Entry, Hit, Key, Store, Tenant};
use crate::config::Config;
use crate::traces::{PendingTrace, TraceStatus};
use axum::body::{Body, Bytes};
use axum::response::Response;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::sync::Arc;
use std::time::Duration;

pub const CACHE_HEADER: &str = "x-stockyard-cache";
pub const NO_CACHE_HEADER: &str = "x-stockyard-no-cache";

/// A request that may be answered from, and stored in, the cache.
#[derive(Debug, Clone)]
pub struct Plan {
    pub key: Key,
    pub tenant: String,
}

/// The cache plan for a request: `None` when the cache is off, the client sent
/// `x-stockyard-no-cache: true`, or `cache.mode` does not cache this request.
pub fn plan(
    cfg: &Config,
    auth: &ClientAuth,
    headers: &HeaderMap,
    bytes: &[u8],
    req: &ChatRequest<'_>,
    local_only_header: bool,
) -> Option<Plan> {
    if !cfg.cache.enabled || header_true(headers, NO_CACHE_HEADER) {
        return None;
    }
    let serde_json::Value::Object(obj) = serde_json::from_slice(bytes).ok()? else {
        return None;
    };
    if !key::cacheable(&obj, cfg.cache.mode) {
        return None;
    }
    let tenant = Tenant::of(auth, headers);
    let (model, alias_local) = match auth {
        // A bring-your-own key goes straight to its provider: no aliases.
        ClientAuth::Byok { .. } => (req.model.clone(), false),
        _ => (
            key::resolved_model(cfg, &req.model),
            cfg.aliases
                .get(&req.model)
                .filter(|_| cfg.aliases_enabled)
                .is_some_and(|a| a.local_only),
        ),
    };
    let key = key::key(&obj, &model, local_only_header || alias_local, &tenant);
    Some(Plan {
        key,
        tenant: tenant.label,
    })
}

/// Sets `x-stockyard-cache` on a response.
pub fn set_header(h: &mut HeaderMap, hit: bool) {
    h.insert(
        HeaderName::from_static(CACHE_HEADER),
        HeaderValue::from_static(if hit { "hit" } else { "miss" }),
    );
}

/// Answers a request from a cache hit: the stored JSON, or for a stream its replay. The trace is
/// `ok` with `cache = hit`, no attempts, cost 0 and the stored answer's token counts.
pub fn respond_hit(
    hit: Hit,
    stream: bool,
    include_usage: bool,
    meta: &mut Meta,
    mut trace: PendingTrace,
) -> Response {
    let Hit { entry, completion } = hit;
    meta.provider = Some(entry.provider.clone());
    meta.model = Some(entry.model.clone());
    meta.tries = 0;
    meta.failover = false;
    let usage = replay::usage_of(&completion);
    let elapsed = trace.elapsed();
    trace.update(|r| {
        r.provider = Some(entry.provider.clone());
        r.model = Some(entry.model.clone());
        r.local = entry.local;
        r.http_status = Some(200);
        r.tries = 0;
        r.failover = false;
        r.cache = Some(CacheOutcome::Hit);
        r.tokens_in = usage.map(|u| u.0);
        r.tokens_out = usage.map(|u| u.1);
        r.cost_usd = Some(0.0);
        r.overhead_us = Some(elapsed.as_micros() as u64);
    });
    let mut headers = HeaderMap::new();
    let body = if stream {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        Body::from(replay::replay_sse(&completion, include_usage))
    } else {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Body::from(entry.body)
    };
    trace.finish(TraceStatus::Ok);
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    *resp.headers_mut() = headers;
    resp
}

/// What a miss's answer is stored under.
pub struct Storing {
    pub store: Arc<Store>,
    pub plan: Plan,
    pub ttl: Duration,
    pub max_entries: u64,
}

impl Storing {
    fn put(&self, provider: &str, model: &str, local: bool, body: Bytes) {
        let entry = Entry {
            key: self.plan.key,
            tenant: self.plan.tenant.clone(),
            provider: provider.to_string(),
            model: model.to_string(),
            local,
            body,
            created_at: crate::traces::now_ms(),
        };
        if let Err(e) = self.store.put(entry, self.ttl, self.max_entries) {
            tracing::warn!(error = %e, "cache entry not stored");
        }
    }
}

/// Arranges for a successful answer to be stored: a non-streamed body at once (it is already in
/// memory; bodies streamed through because of their size are not cached), a stream when it
/// ends, if it ended cleanly.
pub async fn store_on_success(run: &mut Run, storing: Storing) {
    let RunOutcome::Ok {
        success,
        provider,
        model,
    } = &mut run.outcome
    else {
        return;
    };
    if !success.status.is_success() {
        return;
    }
    match &success.stream {
        None => {
            let size = http_body::Body::size_hint(&success.body).exact();
            if size.is_none_or(|n| n > MAX_ENTRY_BYTES as u64) {
                return;
            }
            let body = std::mem::take(&mut success.body);
            match axum::body::to_bytes(body, MAX_ENTRY_BYTES).await {
                Ok(bytes) => {
                    if replay::parse_completion(&bytes).is_some() {
                        storing.put(provider.name(), model, provider.cfg.local, bytes.clone());
                    }
                    success.body = Body::from(bytes);
                }
                Err(e) => {
                    // An in-memory body cannot fail to collect; if it ever does, the client
                    // gets the same error the relay would have produced.
                    tracing::warn!(error = %e, "could not read the answer to cache it");
                    success.body = Body::from_stream(futures::stream::once(async move {
                        Err::<Bytes, _>(std::io::Error::other(e.to_string()))
                    }));
                }
            }
        }
        Some(state) => {
            let tee = Tee {
                inner: std::mem::take(&mut success.body).into_data_stream(),
                asm: Some(Assembler::new()),
                state: state.clone(),
                provider: provider.name().to_string(),
                model: model.clone(),
                local: provider.cfg.local,
                storing,
            };
            success.body = Body::from_stream(tee);
        }
    }
}

/// Passes a relayed stream through unchanged while assembling the answer; stores it when the
/// stream reaches its end cleanly (never after an error or a client disconnect).
struct Tee {
    inner: axum::body::BodyDataStream,
    asm: Option<Assembler>,
    state: StreamState,
    provider: String,
    model: String,
    local: bool,
    storing: Storing,
}

impl Tee {
    fn end(&mut self) {
        let Some(asm) = self.asm.take() else { return };
        let end = self.state.lock().map(|s| s.clone()).unwrap_or_default();
        if !end.complete || end.error.is_some() {
            return;
        }
        let usage = end.usage.map(|u| (u.prompt_tokens, u.completion_tokens));
        let Some(completion) = asm.finish(usage) else {
            tracing::debug!("stream not cached: it did not assemble into a complete answer");
            return;
        };
        match serde_json::to_vec(&completion) {
            Ok(body) if body.len() <= MAX_ENTRY_BYTES => {
                self.storing
                    .put(&self.provider, &self.model, self.local, Bytes::from(body));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not serialise the answer to cache it"),
        }
    }
}

impl futures::Stream for Tee {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let next = std::pin::Pin::new(&mut self.inner).poll_next(cx);
        match &next {
            Poll::Ready(Some(Ok(b))) => {
                if let Some(a) = self.asm.as_mut() {
                    a.push(b);
                    if a.is_done() {
                        // The relay has recorded how the stream ended before handing over
                        // `[DONE]`: store now, so the client's next request can already hit.
                        self.end();
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => self.asm = None,
            Poll::Ready(None) => self.end(),
            Poll::Pending => {}
        }
        next
    }
}
