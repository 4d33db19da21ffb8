//! `POST /v1/embeddings`: the same aliases, natural-provider rules (`text-embedding-*` → openai),
//! breakers, failover and traces as chat completions. The body passes through with `model`
//! replaced; providers without an embeddings endpoint (Anthropic's native API) are skipped as
//! `model_unsupported`.

use super::attempt::{self, Call, Usage};
use super::auth::{authenticate, ClientAuth};
use super::body::RawObject;
use super::chat::{candidates, finish_json_with, header_true, read_body, respond, Meta, UsageJson};
use super::classify::AttemptError;
use super::state::{AppState, Runtime};
use crate::error::ApiError;
use crate::providers::Wire;
use crate::routing::{RouteOptions, SkipReason};
use crate::traces::{PendingTrace, TraceRecord};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::Response;
use http::HeaderMap;
use std::sync::Arc;

pub async fn embeddings(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let rt = st.runtime();
    let mut meta = Meta::new();
    let result = handle(&st, &rt, &headers, body, &mut meta).await;
    meta.finish(result)
}

/// The fields an embeddings request must have, checked before anything is sent.
pub fn parse(bytes: &[u8]) -> Result<(RawObject<'_>, String), ApiError> {
    let obj = RawObject::parse(bytes)?;
    let model = match obj
        .get("model")
        .map(|v| serde_json::from_str::<String>(v.get()))
    {
        None => {
            return Err(ApiError::InvalidField {
                param: "model",
                message: "`model` is required".into(),
            })
        }
        Some(Ok(m)) if !m.trim().is_empty() => m,
        Some(Ok(_)) => {
            return Err(ApiError::InvalidField {
                param: "model",
                message: "`model` must not be empty".into(),
            })
        }
        Some(Err(_)) => {
            return Err(ApiError::InvalidField {
                param: "model",
                message: "`model` must be a string".into(),
            })
        }
    };
    match obj
        .get("input")
        .map(|v| v.get().trim_start().as_bytes().first().copied())
    {
        None => Err(ApiError::InvalidField {
            param: "input",
            message: "`input` is required".into(),
        }),
        Some(Some(b'"' | b'[')) => Ok((obj, model)),
        Some(_) => Err(ApiError::InvalidField {
            param: "input",
            message: "`input` must be a string or an array of strings or token arrays".into(),
        }),
    }
}

async fn handle(
    st: &AppState,
    rt: &Runtime,
    headers: &HeaderMap,
    body: Body,
    meta: &mut Meta,
) -> Result<Response, ApiError> {
    let auth = authenticate(&rt.config, headers)?;
    let bytes: Bytes = read_body(headers, body, rt.config.max_body_size).await?;
    let (obj, model) = parse(&bytes)?;
    let trace = PendingTrace::new(
        st.traces.clone(),
        TraceRecord::new(meta.trace_id.clone(), &model, false),
    );
    let opts = RouteOptions {
        local_only: header_true(headers, "x-stockyard-local-only"),
        no_failover: header_true(headers, "x-stockyard-no-failover"),
    };
    let (mut cands, local_only) = candidates(rt, &auth, &model, &opts);
    for c in &mut cands {
        if c.skip.is_none() && c.provider.cfg.kind.info().wire != Wire::OpenAi {
            c.skip = Some(SkipReason::ModelUnsupported);
        }
    }
    let key = match &auth {
        ClientAuth::Byok { key, .. } => Some(key.as_str()),
        _ => None,
    };
    let call = Call {
        path: "/embeddings",
        anthropic_path: None,
        accept_sse: false,
        key,
        retry_on: &rt.config.failover.retry_on,
        local_only,
        hedge_after: rt.config.failover.hedge_after,
        requested_model: &model,
    };
    let mut trace = trace;
    let body_for = |c: &attempt::Cand| -> Result<Vec<u8>, AttemptError> {
        let m = serde_json::Value::String(c.model.clone()).to_string();
        Ok(obj.write_with(&[("model", Some(&m))]))
    };
    let run = attempt::run(&cands, &call, &mut trace.attempts, body_for, |resp, ctx| {
        finish_json_with(resp, ctx, validate_embeddings)
    })
    .await;
    Ok(respond(run, meta, trace, &rt.config.pricing))
}

#[derive(serde::Deserialize)]
struct EmbeddingsProbe {
    data: Option<Vec<serde::de::IgnoredAny>>,
    error: Option<serde::de::IgnoredAny>,
    usage: Option<UsageJson>,
}

/// A 2xx embeddings answer must be JSON with a `data` list; a 200 carrying `error` is an
/// upstream failure.
pub fn validate_embeddings(status: u16, body: &[u8]) -> Result<Option<Usage>, AttemptError> {
    let probe: EmbeddingsProbe = serde_json::from_slice(body).map_err(|e| {
        AttemptError::Malformed(format!("body is not an embeddings JSON object ({e})"))
    })?;
    super::chat::answer_verdict(
        status,
        body,
        "data",
        probe.data.is_some(),
        probe.error.is_some(),
        probe.usage,
    )
}
