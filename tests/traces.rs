//! Trace rows in SQLite for each failover scenario, pagination and filters, spend, and trace
//! storage failures that must never affect requests.

mod common;

use common::mock::{MockUpstream, SseEv, Step};
use common::{chat_body, eventually, hdr, two, Proxy};
use serde_json::{json, Value};
use std::time::Duration;

async fn pair() -> (MockUpstream, MockUpstream) {
    (MockUpstream::start().await, MockUpstream::start().await)
}

#[tokio::test]
async fn success_and_failover_rows_with_attempts_tokens_and_cost() {
    let (a, b) = pair().await;
    a.push(Step::status(503));
    let p = Proxy::start(&format!(
        "providers:\n  - {{name: a, kind: openai-compatible, base_url: \"{}\", priority: 1, local: false}}\n  - {{name: b, kind: openai-compatible, base_url: \"{}\", priority: 2, local: false}}\n",
        a.url(),
        b.url()
    ))
    .await;
    let r = p.chat("gpt-4o").await;
    let id = hdr(&r, "x-stockyard-trace-id");
    assert_eq!(r.status(), 200);
    let t = p.trace(&id).await;
    assert_eq!(t["id"], id.as_str());
    assert_eq!(t["status"], "ok");
    assert_eq!(t["model_requested"], "gpt-4o");
    assert_eq!(t["provider"], "b");
    assert_eq!(t["model"], "gpt-4o");
    assert_eq!(t["failover"], true);
    assert_eq!(t["http_status"], 200);
    assert_eq!(t["tries"], 2);
    assert_eq!(t["tokens_in"], 10);
    assert_eq!(t["tokens_out"], 5);
    let cost = t["cost_usd"].as_f64().unwrap();
    assert!(
        (cost - (10.0 * 2.5 + 5.0 * 10.0) / 1e6).abs() < 1e-12,
        "{cost}"
    );
    let att = t["attempts"].as_array().unwrap();
    assert_eq!(att.len(), 2);
    assert_eq!(
        (
            att[0]["provider"].as_str(),
            att[0]["outcome"].as_str(),
            att[0]["reason"].as_str(),
            att[0]["http_status"].as_i64()
        ),
        (Some("a"), Some("failed"), Some("http_error"), Some(503))
    );
    assert_eq!(
        (att[1]["provider"].as_str(), att[1]["outcome"].as_str()),
        (Some("b"), Some("ok"))
    );
    assert!(t["created_at"].as_i64().unwrap() > 1_700_000_000_000);
    assert!(
        t.get("request_body").is_none(),
        "bodies are not stored by default"
    );
}

#[tokio::test]
async fn final_exhausted_and_skipped_rows() {
    let (a, b) = pair().await;
    a.set_default(Step::status(500));
    b.push(Step::status(401));
    let p = Proxy::start(&two(
        &a.url(),
        &b.url(),
        "",
        "failover:\n  circuit_breaker: {failure_threshold: 1, recovery_timeout: 1m}\n",
    ))
    .await;
    let r = p.chat("m").await; // a 500 (opens), b 401 final
    assert_eq!(r.status(), 401);
    let final_id = hdr(&r, "x-stockyard-trace-id");
    b.set_default(Step::status(500));
    let r = p.chat("m").await; // a skipped (open), b 500 → exhausted
    assert_eq!(r.status(), 500);
    let exhausted_id = hdr(&r, "x-stockyard-trace-id");
    let t = p.trace(&final_id).await;
    assert_eq!(
        (
            t["status"].as_str(),
            t["http_status"].as_i64(),
            t["provider"].as_str()
        ),
        (Some("error"), Some(401), Some("b"))
    );
    let t = p.trace(&exhausted_id).await;
    assert_eq!(t["status"], "error");
    assert_eq!(t["provider"], Value::Null);
    assert!(t["error"]
        .as_str()
        .unwrap()
        .contains("all providers failed"));
    let att = t["attempts"].as_array().unwrap();
    assert_eq!(att[0]["outcome"], "skipped");
    assert_eq!(att[0]["reason"], "circuit_open");
    assert_eq!(att[1]["outcome"], "failed");
    assert_eq!(att[1]["http_status"], 500);
}

#[tokio::test]
async fn client_disconnect_is_recorded_as_client_closed() {
    let a = MockUpstream::start().await;
    a.push(Step::hang());
    let p = Proxy::start(&format!(
        "providers:\n  - {{name: a, kind: openai-compatible, base_url: \"{}\"}}\n",
        a.url()
    ))
    .await;
    // The client goes away once its request is at the upstream (a fixed client timeout could
    // fire before the request got there on a slow machine).
    let pending = p.spawn_chat(chat_body("m"));
    a.wait_hits(1).await;
    pending.abort();
    assert!(a.wait_client_closed(Duration::from_secs(10)).await);
    // The trace is written when the proxy drops the request: poll for it.
    let rows = eventually(|| async {
        let rows = p.traces("").await;
        if rows.is_empty() {
            Err("no trace of the abandoned request".to_string())
        } else {
            Ok(rows)
        }
    })
    .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["status"], "client_closed");
    let t = p.trace(rows[0]["id"].as_str().unwrap()).await;
    assert_eq!(t["attempts"][0]["reason"], "client_closed");
}

#[tokio::test]
async fn streams_are_traced_ok_error_and_client_closed() {
    let a = MockUpstream::start().await;
    let p = Proxy::start(&format!("providers:\n  - {{name: a, kind: openai-compatible, base_url: \"{}\", timeouts: {{idle: 300ms}}}}\n", a.url())).await;
    let mut body = chat_body("m");
    body["stream"] = json!(true);
    // Complete stream: usage was requested upstream by the proxy and lands in the trace.
    let r = p.post_chat(body.clone()).await;
    let ok_id = hdr(&r, "x-stockyard-trace-id");
    let text = r.text().await.unwrap();
    assert!(text.contains("[DONE]"));
    // Cut after content.
    a.push(Step::sse(vec![
        SseEv::Data(common::mock::chunk_json("m", "partial")),
        SseEv::Drop,
    ]));
    let r = p.post_chat(body.clone()).await;
    let cut_id = hdr(&r, "x-stockyard-trace-id");
    let text = r.text().await.unwrap();
    assert!(text.contains("stream_error"));
    // Client leaves mid-stream.
    a.push(Step::sse(vec![
        SseEv::Data(common::mock::chunk_json("m", "hello")),
        SseEv::Stall,
    ]));
    let mut r = p.post_chat(body.clone()).await;
    let gone_id = hdr(&r, "x-stockyard-trace-id");
    let _ = r.chunk().await.unwrap();
    drop(r);
    assert!(a.wait_client_closed(Duration::from_secs(10)).await);

    let t = p.wait_trace(&ok_id).await;
    assert_eq!(
        (t["status"].as_str(), t["stream"].as_bool()),
        (Some("ok"), Some(true))
    );
    assert_eq!(
        (t["tokens_in"].as_i64(), t["tokens_out"].as_i64()),
        (Some(10), Some(5))
    );
    assert!(t["ttft_ms"].is_number());
    let t = p.wait_trace(&cut_id).await;
    assert_eq!(t["status"], "error");
    assert!(t["error"].as_str().is_some_and(|e| !e.is_empty()), "{t}");
    let t = p.wait_trace(&gone_id).await;
    assert_eq!(t["status"], "client_closed");
}

#[tokio::test]
async fn pagination_and_filters() {
    let (a, b) = pair().await;
    let p = Proxy::start(&two(&a.url(), &b.url(), "", "")).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        if i % 3 == 0 {
            a.push(Step::status(503));
        }
        let r = p.chat(if i % 2 == 0 { "m-even" } else { "m-odd" }).await;
        ids.push(hdr(&r, "x-stockyard-trace-id"));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    ids.reverse(); // newest first
    let page1 = p.traces("limit=4").await;
    let got: Vec<&str> = page1.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(got, ids[..4].iter().map(String::as_str).collect::<Vec<_>>());
    let page2 = p.traces(&format!("limit=4&before={}", got[3])).await;
    let got2: Vec<&str> = page2.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(
        got2,
        ids[4..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(p.traces("failover=true").await.len(), 2);
    assert_eq!(p.traces("provider=b").await.len(), 2);
    assert_eq!(p.traces("provider=a").await.len(), 4);
    assert_eq!(p.traces("model=m-odd").await.len(), 3);
    assert_eq!(p.traces("status=ok").await.len(), 6);
    assert_eq!(p.traces("status=error").await.len(), 0);
    let (s, v) = p.get_json("/api/traces?limit=abc").await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = p.get_json("/api/traces/tr_nope").await;
    assert_eq!(s, 404);
    // Spend totals.
    let (s, v) = p.get_json("/api/traces/spend?since=1h").await;
    assert_eq!(s, 200);
    assert_eq!(v["totals"]["requests"], 6);
    assert_eq!(v["totals"]["tokens_in"], 60);
    assert_eq!(
        v["totals"]["local_share"], 1.0,
        "loopback providers are local"
    );
}

#[tokio::test]
async fn secrets_never_reach_the_database_and_bodies_only_when_asked() {
    let a = MockUpstream::start().await;
    let p = Proxy::start(&format!(
        "traces: {{store_bodies: true}}\nproviders:\n  - {{name: a, kind: openai-compatible, base_url: \"{}\", api_key: sk-super-secret-123}}\n",
        a.url()
    ))
    .await;
    let r = p
        .client
        .post(format!("{}/v1/chat/completions", p.url))
        .bearer_auth("client-token-xyz")
        .json(&chat_body("m"))
        .send()
        .await
        .unwrap();
    let id = hdr(&r, "x-stockyard-trace-id");
    let t = p.trace(&id).await;
    assert!(t["request_body"].as_str().unwrap().contains("\"hi\""));
    let mut all = Vec::new();
    for f in std::fs::read_dir(p.data_dir.path()).unwrap() {
        all.extend(std::fs::read(f.unwrap().path()).unwrap());
    }
    let text = String::from_utf8_lossy(&all);
    assert!(!text.contains("sk-super-secret-123"));
    assert!(!text.contains("client-token-xyz"));
}

#[tokio::test]
async fn an_unusable_database_never_affects_requests_and_drops_are_counted() {
    let a = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let yaml = format!(
        "data_dir: \"{}\"\nproviders:\n  - {{name: a, kind: openai-compatible, base_url: \"{}\"}}\n",
        not_a_dir.display(),
        a.url()
    );
    let cfg = stockyard::config::load::load_str(
        &yaml,
        "t.yaml",
        &stockyard::config::Env::from_pairs([("HOME", "/tmp")]),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = stockyard::server::start(cfg, Some(listener)).await.unwrap();
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let r = client
            .post(format!("http://{}/v1/chat/completions", running.addr))
            .json(&chat_body("m"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        running
            .state
            .traces
            .stats
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    running.shutdown().await.unwrap();
}

/// A database created by the first release (schema v1 only, with traces in it) is upgraded in
/// place when a newer build starts on it: old rows stay readable, new rows use the new columns.
#[tokio::test]
async fn a_v1_database_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("stockyard.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL);",
        )
        .unwrap();
        conn.execute_batch(include_str!("../migrations/0001_init.sql"))
            .unwrap();
        // Recent enough to survive retention pruning at start-up.
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
            - 3_600_000;
        conn.execute_batch(&format!(
            "INSERT INTO schema_version VALUES (1, 0);
             INSERT INTO requests (id, created_at, model_requested, provider, model, stream, status,
                 http_status, attempts, failover, local, latency_ms)
               VALUES ('tr_00000000001aaaa', {created}, 'old-model', 'a', 'old-model', 0, 'ok', 200, 1, 0, 1, 12);
             INSERT INTO attempts (request_id, seq, provider, model, outcome, reason, http_status, latency_ms)
               VALUES ('tr_00000000001aaaa', 0, 'a', 'old-model', 'ok', NULL, 200, 12);"
        ))
        .unwrap();
    }
    let a = MockUpstream::start().await;
    let env = stockyard::config::Env::from_pairs([("HOME", "/tmp")]);
    let cfg = stockyard::config::load::load_str(
        &format!(
            "data_dir: \"{}\"\nproviders:\n  - {{name: a, kind: openai-compatible, base_url: \"{}\"}}\n",
            dir.path().display(),
            a.url()
        ),
        "t.yaml",
        &env,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = stockyard::server::start(cfg, Some(listener)).await.unwrap();
    let client = reqwest::Client::new();
    let r = client
        .post(format!("http://{}/v1/chat/completions", running.addr))
        .json(&chat_body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let new_id = hdr(&r, "x-stockyard-trace-id");
    running.flush_traces().await;

    let get = |path: String| {
        let client = client.clone();
        async move {
            let r = client.get(path).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let base = format!("http://{}", running.addr);
    let old = get(format!("{base}/api/traces/tr_00000000001aaaa")).await;
    assert_eq!(old["model_requested"], "old-model");
    assert_eq!(old["truncated_tokens"], Value::Null);
    assert_eq!(old["attempts"][0]["hedged"], false);
    let new = get(format!("{base}/api/traces/{new_id}")).await;
    assert_eq!(new["status"], "ok");
    assert_eq!(new["attempts"][0]["hedged"], false);
    let list = get(format!("{base}/api/traces")).await;
    assert_eq!(list["traces"].as_array().unwrap().len(), 2);
    running.shutdown().await.unwrap();

    let conn = rusqlite::Connection::open(&db).unwrap();
    let versions: Vec<i64> = conn
        .prepare("SELECT version FROM schema_version ORDER BY version")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let latest = stockyard::traces::db::MIGRATIONS.last().unwrap().0;
    assert_eq!(versions, (1..=latest).collect::<Vec<_>>());
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}
