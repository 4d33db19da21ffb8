//! Admin API (`/api/*`): provider and breaker state, breaker resets, and live route plans.
//! Every route applies the admin rule of SPEC section 6.

use crate::error::ApiError;
use crate::proxy::auth::authorize_admin;
use crate::proxy::state::{AppState, Runtime};
use crate::routing::RouteOptions;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

pub fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/proxy/providers", get(providers))
        .route("/api/proxy/breakers", get(breakers))
        .route("/api/proxy/breakers/reset", post(reset_all))
        .route("/api/proxy/breakers/{name}/reset", post(reset_one))
        .route("/api/proxy/route", get(route))
        .route("/api/proxy/reload", post(reload))
        .route("/api/traces", get(traces_list))
        .route("/api/traces/spend", get(traces_spend))
        .route("/api/traces/{id}", get(trace_get))
        .route_layer(middleware::from_fn_with_state(state, admin_guard))
}

/// The Lookout dashboard page, embedded in the binary.
const UI_HTML: &str = include_str!("ui.html");

/// `GET /ui`: the dashboard. The page itself needs no key (it holds no data); every data call it
/// makes goes to `/api/*` with the admin key.
pub fn ui_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/ui", get(ui_page))
        .route("/ui/", get(ui_page))
}

async fn ui_page() -> Response {
    (
        [
            (http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (http::header::CACHE_CONTROL, "no-cache"),
            (
                http::header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; \
                 img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
                 form-action 'none'; frame-ancestors 'none'",
            ),
            (http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (http::header::REFERRER_POLICY, "no-referrer"),
        ],
        UI_HTML,
    )
        .into_response()
}

/// Applies the admin rule before any `/api/*` handler runs.
pub async fn admin_guard(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let rt = state.runtime();
    match authorize_admin(&rt.config, req.headers(), peer) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Wall-clock milliseconds of a monotonic instant (for `retry_at`).
fn wall_ms(t: Instant) -> u64 {
    let now = Instant::now();
    let sys = SystemTime::now();
    let at = if t >= now {
        sys + (t - now)
    } else {
        sys - (now - t)
    };
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn providers(State(st): State<Arc<AppState>>) -> Json<Value> {
    let rt = st.runtime();
    let list: Vec<Value> = rt
        .providers
        .iter()
        .map(|p| {
            let snap = p.with_breaker(|b| b.snapshot());
            json!({
                "name": p.cfg.name,
                "kind": p.cfg.kind.name(),
                "base_url": p.cfg.base_url,
                "priority": p.cfg.priority,
                "local": p.cfg.local,
                "enabled": p.cfg.enabled,
                "models": p.cfg.models.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
                "discovered_models": p.discovered().map(|d| d.to_vec()),
                "in_flight": p.in_flight.load(Ordering::Relaxed),
                "circuit": {
                    "state": snap.state.as_str(),
                    "failures": snap.failures,
                    "retry_at": snap.retry_at.map(wall_ms),
                },
                "stats": {
                    "requests": p.stats.requests.load(Ordering::Relaxed),
                    "errors": p.stats.errors.load(Ordering::Relaxed),
                    "ewma_ms": p.stats.ewma_us.load(Ordering::Relaxed) as f64 / 1000.0,
                },
            })
        })
        .collect();
    Json(Value::Array(list))
}

async fn breakers(State(st): State<Arc<AppState>>) -> Json<Value> {
    let rt = st.runtime();
    let mut map = serde_json::Map::new();
    for p in &rt.providers {
        let snap = p.with_breaker(|b| b.snapshot());
        map.insert(
            p.cfg.name.clone(),
            json!({"state": snap.state.as_str(), "failures": snap.failures}),
        );
    }
    Json(json!({
        "enabled": rt.config.failover.breaker.enabled,
        "count": map.len(),
        "breakers": map,
    }))
}

async fn reset_all(State(st): State<Arc<AppState>>) -> Json<Value> {
    let rt = st.runtime();
    for p in &rt.providers {
        if let Some(t) = p.with_breaker(|b| b.reset()) {
            tracing::warn!(provider = %p.name(), from = t.from.as_str(), to = "closed", "circuit reset by admin");
        }
    }
    Json(json!({"reset": rt.providers.len()}))
}

async fn reset_one(State(st): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    let rt = st.runtime();
    match rt.providers.iter().find(|p| p.cfg.name == name) {
        Some(p) => {
            if let Some(t) = p.with_breaker(|b| b.reset()) {
                tracing::warn!(provider = %p.name(), from = t.from.as_str(), to = "closed", "circuit reset by admin");
            }
            Json(json!({"reset": name})).into_response()
        }
        None => ApiError::NotFound(format!("unknown provider `{name}`")).into_response(),
    }
}

/// `POST /api/proxy/reload`: re-reads and validates the config file; an invalid file is a 422
/// whose message is the `file:line:col: message` that `stockyard check` prints, and the running
/// config stays.
async fn reload(axum::Extension(r): axum::Extension<Arc<crate::reload::Reloader>>) -> Response {
    match r.reload("api").await {
        Ok(report) => Json(report).into_response(),
        Err(e) => ApiError::InvalidConfig(e.to_string()).into_response(),
    }
}

/// The live chain for a model, with request-time skip reasons (open circuits, full providers).
pub fn route_json(rt: &Runtime, model: &str, opts: &RouteOptions) -> Value {
    let route = rt.plan(model, opts);
    let now = Instant::now();
    let chain: Vec<Value> = route
        .candidates
        .iter()
        .map(|c| {
            let p = &rt.providers[c.provider];
            let snap = p.with_breaker(|b| b.snapshot());
            let live_skip = match snap.state {
                crate::breaker::State::Open if snap.retry_at.is_some_and(|t| t > now) => {
                    Some("circuit_open")
                }
                _ if p
                    .cfg
                    .max_concurrency
                    .is_some_and(|m| p.in_flight.load(Ordering::Relaxed) >= m) =>
                {
                    Some("overloaded")
                }
                _ => None,
            };
            let skip = c.skip.map(|s| s.as_str()).or(live_skip);
            json!({
                "provider": p.cfg.name,
                "model": c.model,
                "local": p.cfg.local,
                "circuit": snap.state.as_str(),
                "skip": skip,
            })
        })
        .collect();
    json!({
        "model": model,
        "alias": route.alias,
        "local_only": route.local_only,
        "chain": chain,
    })
}

async fn route(
    State(st): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(model) = q.get("model").filter(|m| !m.is_empty()) else {
        return ApiError::InvalidField {
            param: "model",
            message: "query parameter `model` is required".into(),
        }
        .into_response();
    };
    let opts = RouteOptions {
        local_only: q.get("local_only").is_some_and(|v| v == "true"),
        no_failover: false,
    };
    Json(route_json(&st.runtime(), model, &opts)).into_response()
}

/// Runs a read query against the trace database off the async runtime.
async fn with_db<T: Send + 'static>(
    st: &AppState,
    f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let Some(path) = st.db_path.clone() else {
        return Err(ApiError::NotFound(
            "traces are disabled (traces.enabled: false)".into(),
        ));
    };
    tokio::task::spawn_blocking(move || {
        let conn = crate::traces::db::open_reader(&path)?;
        f(&conn)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Internal(format!("trace database: {e}")))
}

fn parse_bool(v: Option<&String>) -> Option<bool> {
    v.map(|s| matches!(s.as_str(), "true" | "1" | "yes"))
}

async fn traces_list(
    State(st): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let limit = match q.get("limit").map(|l| l.parse::<u32>()) {
        Some(Err(_)) => {
            return ApiError::InvalidField {
                param: "limit",
                message: "`limit` must be a positive integer".into(),
            }
            .into_response()
        }
        Some(Ok(n)) => Some(n),
        None => None,
    };
    let filter = crate::traces::query::TraceFilter {
        limit,
        before: q.get("before").cloned(),
        provider: q.get("provider").cloned(),
        model: q.get("model").cloned(),
        status: q.get("status").cloned(),
        failover: parse_bool(q.get("failover")),
    };
    match with_db(&st, move |c| crate::traces::query::list(c, &filter)).await {
        Ok(rows) => {
            let next = rows
                .last()
                .and_then(|r| r["id"].as_str())
                .map(str::to_string);
            Json(json!({"traces": rows, "next_before": next})).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn trace_get(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let lookup = id.clone();
    match with_db(&st, move |c| crate::traces::query::get(c, &lookup)).await {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => ApiError::NotFound(format!("no trace `{id}`")).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn traces_spend(
    State(st): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let since = q.get("since").map(String::as_str).unwrap_or("24h");
    let window = match crate::config::units::parse_duration(since) {
        Ok(d) => d,
        Err(m) => {
            return ApiError::InvalidField {
                param: "since",
                message: m,
            }
            .into_response()
        }
    };
    let since_ms = crate::traces::now_ms().saturating_sub(window.as_millis() as u64);
    match with_db(&st, move |c| crate::traces::query::spend(c, since_ms)).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}
