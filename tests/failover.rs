//! Non-streaming failover paths (SPEC section 5), driven through the real server over loopback
//! against scripted mock upstreams. Each test asserts which upstreams were hit how many times.

mod common;

use common::mock::{MockUpstream, Step};
use common::{chat_body, closed_port, eventually, hdr, two, Proxy};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

async fn pair() -> (MockUpstream, MockUpstream) {
    (MockUpstream::start().await, MockUpstream::start().await)
}

#[tokio::test]
async fn success_relays_body_untouched_and_passes_unknown_fields() {
    let a = MockUpstream::start().await;
    let upstream_body = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4},"x_vendor":  {"kept": true}}"#;
    a.push(
        Step::body(200, "application/json", upstream_body)
            .header("x-request-id", "req-123")
            .header("x-ratelimit-remaining-tokens", "9000")
            .header("set-cookie", "session=upstream")
            .header("x-upstream-internal", "1"),
    );
    let p = Proxy::start(&format!(
        "providers:\n  - {{name: a, kind: openai-compatible, base_url: \"{}\"}}\n",
        a.url()
    ))
    .await;
    let r = p
        .post_chat(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "x_custom": {"deep": [1, 2]}, "temperature": 0.2}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "a");
    assert_eq!(hdr(&r, "x-stockyard-model"), "m");
    assert_eq!(hdr(&r, "x-stockyard-attempts"), "1");
    assert_eq!(hdr(&r, "x-stockyard-failover"), "false");
    assert!(hdr(&r, "x-stockyard-trace-id").starts_with("tr_"));
    assert_eq!(hdr(&r, "x-request-id"), "req-123");
    assert_eq!(hdr(&r, "x-ratelimit-remaining-tokens"), "9000");
    assert_eq!(hdr(&r, "content-type"), "application/json");
    for not_relayed in ["set-cookie", "x-upstream-internal"] {
        assert!(r.headers().get(not_relayed).is_none(), "{not_relayed}");
    }
    assert_eq!(
        r.text().await.unwrap(),
        upstream_body,
        "body relayed byte for byte"
    );
    let sent = a.last_json().unwrap();
    assert_eq!(sent["x_custom"], json!({"deep": [1, 2]}));
    assert_eq!(sent["temperature"], 0.2);
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn retryable_statuses_fail_over_and_count_against_the_breaker() {
    for status in [408, 409, 429, 500, 502, 503, 504, 529] {
        let (a, b) = pair().await;
        a.push(Step::status(status));
        let p = Proxy::start(&two(&a.url(), &b.url(), "", "")).await;
        let r = p.chat("m").await;
        assert_eq!(r.status(), 200, "status {status}");
        assert_eq!(hdr(&r, "x-stockyard-provider"), "b");
        assert_eq!(hdr(&r, "x-stockyard-failover"), "true");
        assert_eq!(hdr(&r, "x-stockyard-attempts"), "2");
        assert_eq!((a.hits(), b.hits()), (1, 1), "status {status}");
        assert_eq!(p.breaker("a"), ("closed".into(), 1), "status {status}");
    }
}

#[tokio::test]
async fn connection_refused_fails_over() {
    let b = MockUpstream::start().await;
    let dead = format!("http://127.0.0.1:{}/v1", closed_port());
    let p = Proxy::start(&two(&dead, &b.url(), "", "")).await;
    let r = p.chat("m").await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "b");
    assert_eq!(b.hits(), 1);
    assert_eq!(p.breaker("a").1, 1);
}

#[tokio::test]
async fn connect_timeout_fails_over() {
    // A listener with a full accept queue: further SYNs are dropped, so connect hangs.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let b = MockUpstream::start().await;
    let p = Proxy::start(&two(
        &format!("http://{addr}/v1"),
        &b.url(),
        ", timeouts: {connect: 300ms}",
        "",
    ))
    .await;
    let t = Instant::now();
    let r = p.chat("m").await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "b");
    assert!(t.elapsed() < Duration::from_secs(5));
    // Both candidates unreachable this way: a 504 whose attempts say connect_timeout.
    let hung = format!("http://{addr}/v1");
    let p = Proxy::start(&two(&hung, &hung, ", timeouts: {connect: 300ms}", "")).await;
    let r = p.chat("m").await;
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["attempts"][0]["reason"], "connect_timeout");
    drop(listener);
}

#[tokio::test]
async fn first_byte_timeout_fails_over_and_cancels_the_slow_request() {
    let (a, b) = pair().await;
    a.push(Step::hang());
    let p = Proxy::start(&two(
        &a.url(),
        &b.url(),
        ", timeouts: {first_byte: 300ms}",
        "",
    ))
    .await;
    let t = Instant::now();
    let r = p.chat("m").await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "b");
    let took = t.elapsed();
    // (The upper bound only has to tell the timeout from a hang: the client gives up at 30 s.)
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert!(
        a.wait_client_closed(Duration::from_secs(10)).await,
        "abandoned request was not cancelled"
    );
    assert_eq!(p.breaker("a").1, 1);
}

#[tokio::test]
async fn total_timeout_fails_over() {
    let (a, b) = pair().await;
    // Headers arrive at once, the body drips far slower than the total budget allows.
    a.push(Step::ok_chat("slow").drip(Duration::from_millis(50)));
    let p = Proxy::start(&two(&a.url(), &b.url(), ", timeouts: {total: 500ms}", "")).await;
    let t = Instant::now();
    let r = p.chat("m").await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "b");
    // Far less than the drip would take (about 12 s for the ~250-byte body).
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert_eq!(p.breaker("a").1, 1);
}

#[tokio::test]
async fn malformed_and_error_bodies_fail_over() {
    let bad = [
        Step::garbage(),
        Step::body(
            200,
            "application/json",
            r#"{"error":{"message":"overloaded","type":"server_error"}}"#,
        ),
        Step::body(200, "application/json", r#"{"object":"list","data":[]}"#),
        Step::ok_chat("cut short").truncated(20),
        Step::close(),
        Step::reset(),
    ];
    for (i, step) in bad.into_iter().enumerate() {
        let (a, b) = pair().await;
        a.push(step);
        let p = Proxy::start(&two(&a.url(), &b.url(), "", "")).await;
        let r = p.chat("m").await;
        assert_eq!(r.status(), 200, "case {i}");
        assert_eq!(hdr(&r, "x-stockyard-provider"), "b", "case {i}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"], "Hello from mock",
            "case {i}"
        );
        assert_eq!((a.hits(), b.hits()), (1, 1), "case {i}");
        assert_eq!(p.breaker("a").1, 1, "case {i}: counts as a breaker failure");
    }
}

#[tokio::test]
async fn not_found_moves_on_without_breaker_failure() {
    let (a, b) = pair().await;
    a.push(Step::json(404, json!({"error": {"message": "model not found", "type": "invalid_request_error", "code": "model_not_found"}})));
    let p = Proxy::start(&two(&a.url(), &b.url(), "", "")).await;
    let r = p.chat("m").await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "b");
    assert_eq!((a.hits(), b.hits()), (1, 1));
    assert_eq!(p.breaker("a"), ("closed".into(), 0));
}

#[tokio::test]
async fn context_length_error_moves_on_without_breaker_failure() {
    let (a, b) = pair().await;
    a.push(Step::json(400, json!({"error": {"message": "This model's maximum context length is 8192 tokens", "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}})));
    let p = Proxy::start(&two(&a.url(), &b.url(), "", "")).await;
    let r = p.chat("m").await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "b");
    assert_eq!(p.breaker("a"), ("closed".into(), 0));
}

#[tokio::test]
async fn final_client_errors_are_returned_as_is_and_never_retried() {
    for status in [400, 401, 403, 422] {
        let (a, b) = pair().await;
        let body = json!({"error": {"message": format!("nope {status}"), "type": "invalid_request_error", "param": null, "code": "bad"}});
        a.push(Step::json(status, body.clone()));
        let p = Proxy::start(&two(&a.url(), &b.url(), ", retries: 2", "")).await;
        let r = p.chat("m").await;
        assert_eq!(r.status(), status);
        assert_eq!(hdr(&r, "x-stockyard-provider"), "a");
        assert!(hdr(&r, "x-stockyard-trace-id").starts_with("tr_"));
        let v: Value = r.json().await.unwrap();
        assert_eq!(v, body, "status {status}: OpenAI-shaped body relayed");
        assert_eq!((a.hits(), b.hits()), (1, 0), "status {status}");
        assert_eq!(p.breaker("a").1, 0);
    }
}

#[tokio::test]
async fn non_openai_error_bodies_are_reshaped() {
    let (a, b) = pair().await;
    a.push(Step::body(401, "text/plain", "bad key"));
    let p = Proxy::start(&two(&a.url(), &b.url(), "", "")).await;
    let r = p.chat("m").await;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["message"], "bad key");
    assert_eq!(v["error"]["type"], "authentication_error");
    // Gemini's array shape.
    a.push(Step::json(
        403,
        json!([{"error": {"code": 403, "message": "denied", "status": "PERMISSION_DENIED"}}]),
    ));
    let r = p.chat("m").await;
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["message"], "denied");
    assert_eq!(v["error"]["type"], "PERMISSION_DENIED");
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn retry_on_changes_the_retryable_set() {
    let (a, b) = pair().await;
    a.push(Step::status(503));
    a.push(Step::status(418));
    let p = Proxy::start(&two(
        &a.url(),
        &b.url(),
        "",
        "failover:\n  retry_on: [418, timeout]\n",
    ))
    .await;
    let r = p.chat("m").await;
    assert_eq!(r.status(), 503, "503 is no longer retryable");
    assert_eq!(b.hits(), 0);
    let r = p.chat("m").await;
    assert_eq!(r.status(), 200, "418 now is");
    assert_eq!(b.hits(), 1);
}

#[tokio::test]
async fn retries_with_backoff_on_the_same_provider() {
    let (a, b) = pair().await;
    a.push(Step::status(503));
    a.push(Step::status(502));
    let p = Proxy::start(&two(&a.url(), &b.url(), ", retries: 2", "")).await;
    let r = p.chat("m").await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "a");
    assert_eq!(hdr(&r, "x-stockyard-attempts"), "3");
    assert_eq!((a.hits(), b.hits()), (3, 0));
    assert_eq!(
        p.breaker("a"),
        ("closed".into(), 0),
        "success resets the count"
    );
}

#[tokio::test]
async fn retry_after_is_honoured_and_a_long_one_moves_on() {
    let (a, b) = pair().await;
    a.push(Step::status(429).header("retry-after-ms", "400"));
    let p = Proxy::start(&two(&a.url(), &b.url(), ", retries: 1", "")).await;
    let t = Instant::now();
    let r = p.chat("m").await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "a");
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "slept what the provider asked"
    );
    a.push(Step::status(429).header("retry-after", "1"));
    let t = Instant::now();
    let r = p.chat("m").await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "a");
    assert!(t.elapsed() >= Duration::from_secs(1));
    // Longer than the cap: no sleeping, straight to the next provider. (The bound stays under
    // the 10 s cap, so sleeping the cap instead would fail too.)
    a.push(Step::status(429).header("retry-after", "120"));
    let t = Instant::now();
    let r = p.chat("m").await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "b");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!((a.hits(), b.hits()), (5, 1));
}

#[tokio::test]
async fn quota_exhausted_fails_over_without_same_provider_retries() {
    let (a, b) = pair().await;
    a.push(Step::json(429, json!({"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"}})));
    let p = Proxy::start(&two(&a.url(), &b.url(), ", retries: 3", "")).await;
    let r = p.chat("m").await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "b");
    assert_eq!((a.hits(), b.hits()), (1, 1));
}

const BREAKER: &str =
    "failover:\n  circuit_breaker: {failure_threshold: 2, recovery_timeout: 1s}\n";

#[tokio::test]
async fn breaker_opens_skips_without_network_then_probes_once() {
    let (a, b) = pair().await;
    a.set_default(Step::status(500));
    let p = Proxy::start(&two(&a.url(), &b.url(), "", BREAKER)).await;
    for _ in 0..2 {
        assert_eq!(hdr(&p.chat("m").await, "x-stockyard-provider"), "b");
    }
    assert_eq!(p.breaker("a"), ("open".into(), 2));
    assert_eq!(a.hits(), 2);
    // Open: skipped instantly, no network call.
    for _ in 0..3 {
        let r = p.chat("m").await;
        assert_eq!(hdr(&r, "x-stockyard-provider"), "b");
        assert_eq!(hdr(&r, "x-stockyard-failover"), "true");
        assert_eq!(hdr(&r, "x-stockyard-attempts"), "1");
    }
    assert_eq!(a.hits(), 2);
    let (_, v) = p.get_json("/api/proxy/breakers").await;
    assert_eq!(v["breakers"]["a"]["state"], "open");
    assert_eq!(v["count"], 2);

    // After recovery_timeout: exactly one probe, which fails and re-opens the circuit.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(hdr(&p.chat("m").await, "x-stockyard-provider"), "b");
    assert_eq!(a.hits(), 3);
    assert_eq!(p.breaker("a").0, "open");
    assert_eq!(hdr(&p.chat("m").await, "x-stockyard-provider"), "b");
    assert_eq!(
        a.hits(),
        3,
        "timer restarted: no call right after the failed probe"
    );

    // Next probe succeeds and closes it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.set_default(Step::ok_chat("back"));
    assert_eq!(hdr(&p.chat("m").await, "x-stockyard-provider"), "a");
    assert_eq!(p.breaker("a"), ("closed".into(), 0));
    assert_eq!(hdr(&p.chat("m").await, "x-stockyard-provider"), "a");
}

#[tokio::test]
async fn concurrent_requests_skip_while_the_half_open_probe_is_in_flight() {
    let (a, b) = pair().await;
    a.set_default(Step::status(500));
    let p = Proxy::start(&two(&a.url(), &b.url(), "", BREAKER)).await;
    p.chat("m").await;
    p.chat("m").await;
    assert_eq!(p.breaker("a").0, "open");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.set_default(Step::ok_chat("slow probe").delay_headers(Duration::from_millis(1500)));
    let probe = p.spawn_chat(chat_body("m"));
    // The probe has reached `a` (so it holds the half-open slot) before the others start.
    a.wait_hits(3).await;
    let others = futures::future::join_all((0..5).map(|_| p.chat("m"))).await;
    for r in &others {
        assert_eq!(
            hdr(r, "x-stockyard-provider"),
            "b",
            "skipped while the probe runs"
        );
    }
    let r = probe.await.unwrap().unwrap();
    assert_eq!(hdr(&r, "x-stockyard-provider"), "a");
    assert_eq!(a.hits(), 3, "exactly one probe");
    assert_eq!(p.breaker("a").0, "closed");
}

#[tokio::test]
async fn exhausted_chain_with_open_circuits_is_503_with_retry_after() {
    let (a, b) = pair().await;
    a.set_default(Step::status(500));
    b.set_default(Step::status(500));
    let p = Proxy::start(&two(
        &a.url(),
        &b.url(),
        "",
        "failover:\n  circuit_breaker: {failure_threshold: 1, recovery_timeout: 30s}\n",
    ))
    .await;
    let r = p.chat("m").await;
    assert_eq!(r.status(), 500, "last upstream status");
    let r = p.chat("m").await;
    assert_eq!(r.status(), 503);
    let ra: u64 = hdr(&r, "retry-after").parse().unwrap();
    assert!((28..=30).contains(&ra), "retry-after {ra}");
    assert!(hdr(&r, "x-stockyard-trace-id").starts_with("tr_"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "all_providers_failed");
    assert_eq!(
        v["error"]["attempts"][0],
        json!({"provider": "a", "model": "m", "reason": "circuit_open", "status": null})
    );
    assert_eq!(v["error"]["attempts"][1]["reason"], "circuit_open");
    assert_eq!((a.hits(), b.hits()), (1, 1));
}

#[tokio::test]
async fn exhausted_chain_status_rules() {
    // Last failure an HTTP status: that status.
    let (a, b) = pair().await;
    a.push(Step::status(503));
    b.push(Step::status(429));
    let p = Proxy::start(&two(&a.url(), &b.url(), "", "")).await;
    let r = p.chat("m").await;
    assert_eq!(r.status(), 429);
    assert!(hdr(&r, "retry-after").is_empty());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "all_providers_failed");
    assert_eq!(v["error"]["type"], "upstream_error");
    assert_eq!(
        v["error"]["attempts"],
        json!([
            {"provider": "a", "model": "m", "reason": "http_error", "status": 503},
            {"provider": "b", "model": "m", "reason": "http_error", "status": 429},
        ])
    );
    // Transport: 502.
    let dead = |_: ()| format!("http://127.0.0.1:{}/v1", closed_port());
    let p = Proxy::start(&two(&dead(()), &dead(()), "", "")).await;
    let r = p.chat("m").await;
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["attempts"][1]["reason"], "connect_error");
    // Timeout: 504.
    let (a, b) = pair().await;
    a.push(Step::hang());
    b.push(Step::hang());
    let p = Proxy::start(&two(
        &a.url(),
        &b.url(),
        ", timeouts: {first_byte: 200ms}",
        "",
    ))
    .await;
    let r = p.chat("m").await;
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["attempts"][0]["reason"], "first_byte_timeout");
}

#[tokio::test]
async fn local_only_requests_never_leave_and_get_503() {
    let (local, cloud) = pair().await;
    local.set_default(Step::status(429));
    let yaml = format!(
        "providers:\n  - {{name: home, kind: openai-compatible, base_url: \"{}\", priority: 1}}\n  - {{name: cloud, kind: openai-compatible, base_url: \"{}\", local: false, priority: 2}}\nmodel_alias:\n  aliases:\n    private: {{targets: [home/llama3], local_only: true}}\n",
        local.url(),
        cloud.url()
    );
    let p = Proxy::start(&yaml).await;
    let r = p.chat("private").await;
    assert_eq!(
        r.status(),
        503,
        "local-only: 503 whatever the local provider answered"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["attempts"][1]["reason"], "not_local");
    let r = p
        .client
        .post(format!("{}/v1/chat/completions", p.url))
        .header("x-stockyard-local-only", "true")
        .json(&chat_body("llama3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(cloud.hits(), 0);
    // Without the marker it fails over to the cloud.
    let r = p.chat("llama3").await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "cloud");
}

#[tokio::test]
async fn no_failover_header_stops_after_the_first() {
    let (a, b) = pair().await;
    a.push(Step::status(503));
    let p = Proxy::start(&two(&a.url(), &b.url(), "", "")).await;
    let r = p
        .client
        .post(format!("{}/v1/chat/completions", p.url))
        .header("x-stockyard-no-failover", "true")
        .json(&chat_body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn aliases_model_map_and_natural_provider_reach_the_right_upstream() {
    let (openai, ollama) = pair().await;
    // What this Ollama reports at /api/tags (discovery).
    ollama.set_models(&["llama3:latest", "llama3:8b", "llama3:70b"]);
    let yaml = format!(
        r#"providers:
  - name: ollama
    base_url: "{}"
    priority: 1
    models: ["llama3*"]
    model_map: {{gpt-4o: "llama3:8b"}}
  - name: openai
    base_url: "{}"
    api_key: sk-server-key
    priority: 2
model_alias:
  aliases:
    fast: ollama/llama3
    smart: [openai/gpt-4o, ollama/llama3:70b]
"#,
        ollama.url(),
        openai.url()
    );
    let p = Proxy::start(&yaml).await;
    // Natural provider: gpt-4o goes to openai first, despite ollama's priority.
    let r = p.chat("gpt-4o").await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "openai");
    assert_eq!(
        openai.requests()[0].header("authorization"),
        Some("Bearer sk-server-key")
    );
    assert_eq!(ollama.hits(), 0);
    // Falling over to ollama renames the model through model_map.
    openai.push(Step::status(500));
    let r = p.chat("gpt-4o").await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "ollama");
    assert_eq!(hdr(&r, "x-stockyard-model"), "llama3:8b");
    assert_eq!(ollama.last_json().unwrap()["model"], "llama3:8b");
    assert!(ollama.requests()[0].header("authorization").is_none());
    // Alias pin.
    let r = p.chat("fast").await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "ollama");
    assert_eq!(ollama.last_json().unwrap()["model"], "llama3");
    // Alias chain: second target after the first fails.
    openai.push(Step::status(503));
    let r = p.chat("smart").await;
    assert_eq!(hdr(&r, "x-stockyard-model"), "llama3:70b");
    // A local model listed by ollama goes there first.
    let r = p.chat("llama3:8b").await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "ollama");
    // Pinned in the request.
    let r = p.chat("openai/gpt-4o-mini").await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "openai");
    assert_eq!(openai.last_json().unwrap()["model"], "gpt-4o-mini");
}

#[tokio::test]
async fn unknown_model_everywhere_excluded_is_404() {
    let a = MockUpstream::start().await;
    let p = Proxy::start(&format!(
        "providers:\n  - {{name: a, kind: openai-compatible, base_url: \"{}\", models: [\"llama*\"]}}\n",
        a.url()
    ))
    .await;
    let r = p.chat("gpt-99").await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(v["error"]["attempts"][0]["reason"], "model_unsupported");
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn bring_your_own_key_goes_straight_to_its_provider() {
    let (groq, other) = pair().await;
    let yaml = format!(
        "api_keys: [proxy-key-1]\nproviders:\n  - {{name: other, kind: openai-compatible, base_url: \"{}\", priority: 1}}\n  - {{name: groq, base_url: \"{}\", api_key: gsk_server, priority: 2}}\n",
        other.url(),
        groq.url()
    );
    let p = Proxy::start(&yaml).await;
    let send = |auth: &'static str| {
        p.client
            .post(format!("{}/v1/chat/completions", p.url))
            .header("authorization", auth)
            .json(&chat_body("llama-3.1-8b"))
            .send()
    };
    let r = send("Bearer gsk_user_key").await.unwrap();
    assert_eq!(hdr(&r, "x-stockyard-provider"), "groq");
    assert_eq!(
        groq.requests()[0].header("authorization"),
        Some("Bearer gsk_user_key")
    );
    assert_eq!(other.hits(), 0);
    // No failover for a BYOK request.
    groq.push(Step::status(503));
    let r = send("Bearer gsk_user_key").await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(other.hits(), 0);
    // The proxy key routes normally; the server's own groq key is not BYOK and is refused.
    let r = send("Bearer proxy-key-1").await.unwrap();
    assert_eq!(hdr(&r, "x-stockyard-provider"), "other");
    let r = send("Bearer gsk_server").await.unwrap();
    assert_eq!(r.status(), 401);
    let r = send("Bearer random").await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let r = p.chat("m").await;
    assert_eq!(r.status(), 401, "no key at all");
    assert!(hdr(&r, "x-stockyard-trace-id").starts_with("tr_"));
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_request() {
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
    assert!(
        !pending.is_finished(),
        "answered although the upstream hangs"
    );
    pending.abort();
    assert!(
        a.wait_client_closed(Duration::from_secs(10)).await,
        "upstream saw no close"
    );
    // The abandoned attempt leaves no in-flight count and no breaker failure behind (its
    // permit is given back when the proxy drops the handler).
    let rt = p.state().runtime();
    eventually(|| async {
        match rt.providers[0].in_flight.load(Ordering::SeqCst) {
            0 => Ok(()),
            _ => Err("the attempt still counts as in flight".to_string()),
        }
    })
    .await;
    assert_eq!(p.breaker("a"), ("closed".into(), 0));
}

#[tokio::test]
async fn max_concurrency_skips_a_full_provider() {
    let (a, b) = pair().await;
    a.push(Step::ok_chat("slow").delay_headers(Duration::from_millis(1000)));
    let p = Proxy::start(&two(&a.url(), &b.url(), ", max_concurrency: 1", "")).await;
    let first = p.spawn_chat(chat_body("m"));
    // The first request holds a's only slot (it is at the upstream) before the second starts.
    a.wait_hits(1).await;
    let r = p.chat("m").await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "b");
    assert_eq!(
        hdr(&first.await.unwrap().unwrap(), "x-stockyard-provider"),
        "a"
    );
    assert_eq!(a.hits(), 1);
}
