//! Read queries behind `/api/traces*` and `stockyard traces`. Each uses an index: newest-first
//! walks the primary key (ids sort by time), filters use `(column, id)` indexes, failover-only
//! a partial index.

use rusqlite::{params_from_iter, Connection, Row};
use serde_json::{json, Value};

#[derive(Debug, Default, Clone)]
pub struct TraceFilter {
    pub limit: Option<u32>,
    /// Cursor: return traces older than this trace id.
    pub before: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub status: Option<String>,
    pub failover: Option<bool>,
}

pub const MAX_LIMIT: u32 = 1000;

fn row_json(r: &Row) -> rusqlite::Result<Value> {
    Ok(json!({
        "id": r.get::<_, String>("id")?,
        "created_at": r.get::<_, i64>("created_at")?,
        "model_requested": r.get::<_, String>("model_requested")?,
        "provider": r.get::<_, Option<String>>("provider")?,
        "model": r.get::<_, Option<String>>("model")?,
        "stream": r.get::<_, bool>("stream")?,
        "status": r.get::<_, String>("status")?,
        "http_status": r.get::<_, Option<i64>>("http_status")?,
        "attempts": r.get::<_, i64>("attempts")?,
        "failover": r.get::<_, bool>("failover")?,
        "local": r.get::<_, bool>("local")?,
        "latency_ms": r.get::<_, Option<i64>>("latency_ms")?,
        "ttft_ms": r.get::<_, Option<i64>>("ttft_ms")?,
        "tokens_in": r.get::<_, Option<i64>>("tokens_in")?,
        "tokens_out": r.get::<_, Option<i64>>("tokens_out")?,
        "cost_usd": r.get::<_, Option<f64>>("cost_usd")?,
        "error": r.get::<_, Option<String>>("error")?,
        "truncated_tokens": r.get::<_, Option<i64>>("truncated_tokens")?,
    }))
}

const COLUMNS: &str = "id, created_at, model_requested, provider, model, stream, status, http_status, attempts, failover, local, latency_ms, ttft_ms, tokens_in, tokens_out, cost_usd, error, truncated_tokens";

/// Newest-first page of traces.
pub fn list(conn: &Connection, f: &TraceFilter) -> rusqlite::Result<Vec<Value>> {
    let mut sql = format!("SELECT {COLUMNS} FROM requests");
    let mut conds: Vec<&str> = Vec::new();
    let mut args: Vec<String> = Vec::new();
    if let Some(b) = &f.before {
        conds.push("id < ?");
        args.push(b.clone());
    }
    if let Some(p) = &f.provider {
        conds.push("provider = ?");
        args.push(p.clone());
    }
    if let Some(m) = &f.model {
        conds.push("model_requested = ?");
        args.push(m.clone());
    }
    if let Some(s) = &f.status {
        conds.push("status = ?");
        args.push(s.clone());
    }
    match f.failover {
        Some(true) => conds.push("failover = 1"),
        Some(false) => conds.push("failover = 0"),
        None => {}
    }
    if !conds.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conds.join(" AND "));
    }
    let limit = f.limit.unwrap_or(50).clamp(1, MAX_LIMIT);
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(args.iter()), row_json)?;
    rows.collect()
}

/// One trace with its attempts.
pub fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<Value>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS}, request_body, response_body FROM requests WHERE id = ?1"
    ))?;
    let mut rows = stmt.query([id])?;
    let Some(r) = rows.next()? else {
        return Ok(None);
    };
    let mut v = row_json(r)?;
    let req_body: Option<String> = r.get("request_body")?;
    let resp_body: Option<String> = r.get("response_body")?;
    if req_body.is_some() || resp_body.is_some() {
        v["request_body"] = json!(req_body);
        v["response_body"] = json!(resp_body);
    }
    let mut st = conn.prepare_cached(
        "SELECT seq, provider, model, outcome, reason, http_status, latency_ms, hedged FROM attempts WHERE request_id = ?1 ORDER BY seq",
    )?;
    let attempts: Vec<Value> = st
        .query_map([id], |a| {
            Ok(json!({
                "seq": a.get::<_, i64>(0)?,
                "provider": a.get::<_, String>(1)?,
                "model": a.get::<_, String>(2)?,
                "outcome": a.get::<_, String>(3)?,
                "reason": a.get::<_, Option<String>>(4)?,
                "http_status": a.get::<_, Option<i64>>(5)?,
                "latency_ms": a.get::<_, Option<i64>>(6)?,
                "hedged": a.get::<_, bool>(7)?,
            }))
        })?
        .collect::<rusqlite::Result<_>>()?;
    v["tries"] = v["attempts"].clone();
    v["attempts"] = Value::Array(attempts);
    Ok(Some(v))
}

/// Totals since `since_ms`, by provider and model.
pub fn spend(conn: &Connection, since_ms: u64) -> rusqlite::Result<Value> {
    let mut stmt = conn.prepare_cached(
        "SELECT COALESCE(provider, '(none)'), COALESCE(model, model_requested), MAX(local),
                COUNT(*), SUM(status = 'ok'), COALESCE(SUM(tokens_in), 0), COALESCE(SUM(tokens_out), 0),
                COALESCE(SUM(cost_usd), 0.0)
         FROM requests WHERE created_at >= ?1
         GROUP BY 1, 2 ORDER BY 8 DESC, 4 DESC",
    )?;
    let mut rows_out = Vec::new();
    let (mut req, mut local_req, mut tin, mut tout, mut cost) = (0i64, 0i64, 0i64, 0i64, 0f64);
    let rows = stmt.query_map([since_ms as i64], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, bool>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, i64>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, f64>(7)?,
        ))
    })?;
    for row in rows {
        let (provider, model, local, n, ok, ti, to, c) = row?;
        req += n;
        if local {
            local_req += n;
        }
        tin += ti;
        tout += to;
        cost += c;
        rows_out.push(json!({
            "provider": provider, "model": model, "local": local, "requests": n, "ok": ok,
            "tokens_in": ti, "tokens_out": to, "cost_usd": c,
        }));
    }
    Ok(json!({
        "since": since_ms,
        "totals": {
            "requests": req, "tokens_in": tin, "tokens_out": tout, "cost_usd": cost,
            "local_requests": local_req,
            "local_share": if req > 0 { local_req as f64 / req as f64 } else { 0.0 },
        },
        "by_model": rows_out,
    }))
}
