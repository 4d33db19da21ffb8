//! The HTTP surface: the OpenAI-compatible proxy routes, their handlers, and the router.

pub mod attempt;
pub mod auth;
pub mod body;
pub mod cached;
pub mod chat;
pub mod classify;
pub mod embeddings;
pub mod fit;
pub mod messages;
pub mod state;
pub mod stream;

use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use state::AppState;
use std::sync::Arc;

/// The proxy routes' paths (the router's and the server's fast path's).
pub const CHAT_PATH: &str = "/v1/chat/completions";
pub const MESSAGES_PATH: &str = "/v1/messages";
pub const EMBEDDINGS_PATH: &str = "/v1/embeddings";

/// Builds the application router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(CHAT_PATH, post(chat::chat_completions))
        .route("/v1/models", get(chat::list_models))
        .route(MESSAGES_PATH, post(messages::messages))
        .route(EMBEDDINGS_PATH, post(embeddings::embeddings))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .merge(crate::admin::routes(state.clone()))
        .merge(crate::admin::ui_routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// `GET /metrics` (admin rule applies).
async fn metrics(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let rt = st.runtime();
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    if let Err(e) = auth::authorize_admin(&rt.config, req.headers(), peer) {
        return e.into_response();
    }
    let body = st.traces.metrics.encode(&rt, &st.traces.stats);
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// 200 when at least one provider's circuit is not open.
async fn ready(State(st): State<Arc<AppState>>) -> Response {
    let rt = st.runtime();
    let open = rt
        .providers
        .iter()
        .filter(|p| p.cfg.enabled)
        .filter(|p| p.with_breaker(|b| b.snapshot().state) == crate::breaker::State::Open)
        .count();
    let enabled = rt.providers.iter().filter(|p| p.cfg.enabled).count();
    let ok = enabled > open;
    let status = if ok {
        http::StatusCode::OK
    } else {
        http::StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({
            "status": if ok { "ready" } else { "unavailable" },
            "providers": enabled,
            "open_circuits": open,
        })),
    )
        .into_response()
}

async fn not_found(req: Request) -> ApiError {
    ApiError::RouteNotFound {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
    }
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::MethodNotAllowed {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
    }
}
