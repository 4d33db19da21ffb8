//! `POST /v1/messages`: Anthropic-format inbound (Anthropic SDKs, coding agents with
//! `ANTHROPIC_BASE_URL`). Same routing, aliases, breakers and traces as chat completions. To an
//! Anthropic provider the request body passes through (model replaced); to any other provider it
//! is translated to Chat Completions and the answer (and stream) translated back. Errors come
//! back in Anthropic's shape.

use super::attempt::{self, AttemptCtx, Call, Cand, Success, Usage};
use super::auth::{authenticate, ClientAuth};
use super::body::RawObject;
use super::chat::{self, header_true, read_body, Meta};
use super::classify::AttemptError;
use super::state::AppState;
use crate::error::ApiError;
use crate::providers::anthropic::{self, OpenAiToAnthropicStream};
use crate::providers::transport::UpstreamResponse;
use crate::providers::{openai, Wire};
use crate::routing::RouteOptions;
use crate::sse::{self, SseDecoder};
use crate::traces::{PendingTrace, TraceRecord};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::{HeaderMap, HeaderValue};
use serde_json::Value;
use std::sync::Arc;

pub async fn messages(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let rt = st.runtime();
    let mut meta = Meta::new();
    let resp = match handle(&st, &rt, &headers, body, &mut meta).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    let mut resp = to_anthropic_error(resp).await;
    meta.apply(resp.headers_mut());
    resp
}

/// What a `/v1/messages` body must carry, checked before anything is sent.
#[derive(Debug)]
pub struct MessagesRequest<'a> {
    /// The body as received (passed through to Anthropic providers, `model` replaced).
    pub obj: RawObject<'a>,
    /// The parsed tree (translated for OpenAI-wire providers).
    pub tree: Value,
    pub model: String,
    pub stream: bool,
}

/// Parses and validates a `/v1/messages` body: a JSON object with a non-empty string `model`
/// and a non-empty `messages` array.
pub fn parse_request(bytes: &[u8]) -> Result<MessagesRequest<'_>, ApiError> {
    let obj = RawObject::parse(bytes)?;
    let tree: Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let model = match tree.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() => m.clone(),
        Some(_) => {
            return Err(ApiError::InvalidField {
                param: "model",
                message: "`model` must be a non-empty string".into(),
            })
        }
        None => {
            return Err(ApiError::InvalidField {
                param: "model",
                message: "`model` is required".into(),
            })
        }
    };
    match tree.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() => {}
        _ => {
            return Err(ApiError::InvalidField {
                param: "messages",
                message: "`messages` must be a non-empty array".into(),
            })
        }
    }
    let stream = tree.get("stream").and_then(Value::as_bool).unwrap_or(false);
    Ok(MessagesRequest {
        obj,
        tree,
        model,
        stream,
    })
}

async fn handle(
    st: &AppState,
    rt: &super::state::Runtime,
    headers: &HeaderMap,
    body: Body,
    meta: &mut Meta,
) -> Result<Response, ApiError> {
    let auth = authenticate(&rt.config, headers)?;
    let bytes = read_body(headers, body, rt.config.max_body_size).await?;
    let MessagesRequest {
        obj,
        tree,
        model,
        stream,
    } = parse_request(&bytes)?;
    let mut trace = PendingTrace::new(
        st.traces.clone(),
        TraceRecord::new(meta.trace_id.clone(), &model, stream),
    );
    if trace.store_bodies() {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        trace.update(|r| r.request_body = Some(text));
    }
    let opts = RouteOptions {
        local_only: header_true(headers, "x-stockyard-local-only"),
        no_failover: header_true(headers, "x-stockyard-no-failover"),
    };
    let (cands, local_only) = chat::candidates(rt, &auth, &model, &opts);
    let key = match &auth {
        ClientAuth::Byok { key, .. } => Some(key.as_str()),
        _ => None,
    };
    let call = Call {
        path: "/chat/completions",
        anthropic_path: Some("/messages"),
        accept_sse: stream,
        key,
        retry_on: &rt.config.failover.retry_on,
        local_only,
        hedge_after: rt.config.failover.hedge_after,
        requested_model: &model,
    };
    let body_for = |c: &Cand| -> Result<Vec<u8>, AttemptError> {
        match c.provider.cfg.kind.info().wire {
            Wire::Anthropic => {
                let m = Value::String(c.model.clone()).to_string();
                Ok(obj.write_with(&[("model", Some(&m))]))
            }
            Wire::OpenAi => {
                let out = anthropic::request_to_openai(&tree, &c.model)
                    .map_err(|e| AttemptError::Translate(e.to_string()))?;
                serde_json::to_vec(&out).map_err(|e| AttemptError::Translate(e.to_string()))
            }
        }
    };
    let run = attempt::run(
        &cands,
        &call,
        &mut trace.attempts,
        body_for,
        |resp, ctx| async move {
            let wire = ctx.provider.cfg.kind.info().wire;
            let model = ctx.model.clone();
            match (stream, wire) {
                (false, Wire::Anthropic) => finish_native_json(resp, ctx).await,
                (false, Wire::OpenAi) => {
                    let s = chat::finish_chat_json(resp, ctx).await?;
                    openai_json_to_anthropic(s, &model).await
                }
                (true, _) => {
                    // Both wires come out of the relay as OpenAI chunks (Anthropic upstreams are
                    // translated in); re-encode them as Anthropic events.
                    let mut s = super::stream::finish_stream(resp, ctx, true).await?;
                    s.body = anthropic_event_body(s.body, &model);
                    Ok(s)
                }
            }
        },
    )
    .await;
    Ok(chat::respond(run, meta, trace, &rt.config.pricing))
}

/// A 2xx native Messages answer, relayed byte for byte after validation.
async fn finish_native_json(
    resp: UpstreamResponse,
    ctx: AttemptCtx,
) -> Result<Success, AttemptError> {
    let status = resp.status();
    let headers = chat::relay_headers(resp.headers(), "application/json");
    let p = &ctx.provider;
    let (body, truncated) =
        openai::read_limited(resp, 8 << 20, p.cfg.timeouts.idle, ctx.deadline).await?;
    if truncated {
        return Err(AttemptError::Malformed("response too large".into()));
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "type")]
        kind: Option<String>,
        usage: Option<AUsage>,
    }
    #[derive(serde::Deserialize)]
    struct AUsage {
        input_tokens: Option<u64>,
        output_tokens: Option<u64>,
    }
    let probe: Probe = serde_json::from_slice(&body)
        .map_err(|e| AttemptError::Malformed(format!("body is not JSON ({e})")))?;
    match probe.kind.as_deref() {
        Some("message") => {}
        Some("error") => {
            return Err(AttemptError::ErrorBody {
                status: status.as_u16(),
                body,
            })
        }
        _ => return Err(AttemptError::Malformed("response is not a message".into())),
    }
    let usage = probe.usage.map(|u| Usage {
        prompt_tokens: u.input_tokens.unwrap_or(0),
        completion_tokens: u.output_tokens.unwrap_or(0),
    });
    Ok(Success {
        status,
        headers,
        body: Body::from(body),
        usage,
        stream: None,
    })
}

/// Translates a validated chat completion into a Messages answer.
async fn openai_json_to_anthropic(s: Success, model: &str) -> Result<Success, AttemptError> {
    let bytes = axum::body::to_bytes(s.body, usize::MAX)
        .await
        .map_err(|e| AttemptError::Transport(e.to_string()))?;
    let v: Value =
        serde_json::from_slice(&bytes).map_err(|e| AttemptError::Malformed(e.to_string()))?;
    let out = anthropic::response_to_anthropic(&v, model)
        .map_err(|e| AttemptError::Malformed(e.to_string()))?;
    let out = serde_json::to_vec(&out).map_err(|e| AttemptError::Malformed(e.to_string()))?;
    Ok(Success {
        body: Body::from(out),
        ..s
    })
}

/// Re-encodes a relayed OpenAI SSE body (chunks, `[DONE]`, or a terminal `stream_error`) as an
/// Anthropic Messages event stream, event by event as it flows.
pub fn anthropic_event_body(body: Body, model: &str) -> Body {
    struct St {
        inner: axum::body::BodyDataStream,
        dec: SseDecoder,
        enc: OpenAiToAnthropicStream,
        done: bool,
    }
    let st = St {
        inner: body.into_data_stream(),
        dec: SseDecoder::new(),
        enc: OpenAiToAnthropicStream::new(model),
        done: false,
    };
    let encode = |evs: Vec<(&'static str, Value)>| -> Bytes {
        let mut out = Vec::new();
        for (name, v) in evs {
            out.extend_from_slice(&sse::named_event(name, &v.to_string()));
        }
        Bytes::from(out)
    };
    let s = futures::stream::unfold(st, move |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            // Drain complete events first.
            match st.dec.next_event() {
                Ok(Some(ev)) => {
                    let Some(data) = ev.data.as_deref() else {
                        if ev.is_comment_only() {
                            return Some((
                                Ok::<Bytes, axum::Error>(Bytes::from_static(b": ping\n\n")),
                                st,
                            ));
                        }
                        continue;
                    };
                    if ev.is_done() {
                        st.done = true;
                        return Some((Ok(encode(st.enc.finish())), st));
                    }
                    let Ok(v) = serde_json::from_str::<Value>(data) else {
                        continue;
                    };
                    if let Some(err) = v.get("error") {
                        st.done = true;
                        let msg = err["message"].as_str().unwrap_or("upstream error");
                        let body = serde_json::json!({"type": "error", "error": {"type": "api_error", "message": msg}});
                        return Some((Ok(sse::named_event("error", &body.to_string())), st));
                    }
                    let out = encode(st.enc.on_chunk(&v));
                    if out.is_empty() {
                        continue;
                    }
                    return Some((Ok(out), st));
                }
                Ok(None) => {}
                Err(_) => continue,
            }
            match st.inner.next().await {
                Some(Ok(chunk)) => st.dec.push(&chunk),
                Some(Err(e)) => return Some((Err(e), st)),
                None => return None,
            }
        }
    });
    Body::from_stream(s)
}

/// Rewrites an OpenAI-shaped error response into Anthropic's `{"type":"error","error":{...}}`
/// (an upstream Anthropic error body is already in that shape and passes through).
async fn to_anthropic_error(resp: Response) -> Response {
    if resp.status().is_success() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let out = if v.get("type").and_then(Value::as_str) == Some("error") {
        bytes
    } else {
        let msg = v["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| anthropic::error_body_message(&bytes, parts.status.as_u16()));
        let mut e = anthropic::error_to_anthropic(parts.status.as_u16(), &msg);
        if let Some(a) = v["error"].get("attempts") {
            e["error"]["attempts"] = a.clone();
        }
        Bytes::from(e.to_string())
    };
    parts.headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(out))
}
