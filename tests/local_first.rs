//! Local first, cloud when needed (issue 6): hedging slow providers, overload, latency strategy,
//! health probes and discovery, privacy, and context windows. Every test drives the real server
//! over loopback against mock upstreams.

mod common;

use common::mock::{MockUpstream, Step};
use common::{chat_body, hdr, Proxy};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A local provider `local` and a cloud provider `cloud`, tried in that order.
fn pair_yaml(local: &MockUpstream, cloud: &MockUpstream, failover_extra: &str) -> String {
    format!(
        "failover:\n  enabled: true\n{failover_extra}providers:\n  \
         - {{name: local, kind: openai-compatible, base_url: \"{}\", priority: 1, local: true}}\n  \
         - {{name: cloud, kind: openai-compatible, base_url: \"{}\", priority: 2, local: false}}\n",
        local.url(),
        cloud.url()
    )
}

async fn attempts_of(p: &Proxy, r: &reqwest::Response) -> Vec<Value> {
    let id = hdr(r, "x-stockyard-trace-id");
    p.trace(&id).await["attempts"].as_array().unwrap().clone()
}

fn stream_body(model: &str) -> Value {
    json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hi"}]})
}

/// Reads an SSE body to the end and returns the concatenated content.
async fn stream_text(r: reqwest::Response) -> (String, bool) {
    let text = r.text().await.unwrap();
    let mut out = String::new();
    let mut done = false;
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            out.push_str(c);
        }
    }
    (out, done)
}

// ---------------------------------------------------------------------------------------------
// Hedging
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn hedging_beats_a_slow_local_provider_and_cancels_it() {
    let (local, cloud) = (MockUpstream::start().await, MockUpstream::start().await);
    local.set_models(&["m", "llama3"]);
    local.set_default(Step::ok_chat("from local").delay_headers(ms(3000)));
    cloud.set_default(Step::ok_chat("from cloud"));

    // Without hedging the slow local provider answers, after 3 s.
    let p = Proxy::start(&pair_yaml(&local, &cloud, "")).await;
    let t = Instant::now();
    let r = p.chat("m").await;
    let unhedged = t.elapsed();
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "local");
    assert!(unhedged >= ms(3000));

    // With hedge_after: 500ms the cloud starts at 0.5 s and wins; the local request is dropped.
    let p = Proxy::start(&pair_yaml(&local, &cloud, "  hedge_after: 500ms\n")).await;
    let t = Instant::now();
    let r = p.chat("m").await;
    let hedged = t.elapsed();
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "cloud");
    assert_eq!(hdr(&r, "x-stockyard-failover"), "true");
    assert_eq!(hdr(&r, "x-stockyard-attempts"), "2");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "from cloud");
    assert!(hedged >= ms(500), "{hedged:?}");
    assert!(hedged < ms(2000), "hedged request took {hedged:?}");
    // (Without a cancel the local answer would complete at 3 s: no close is ever seen.)
    assert!(
        local.wait_client_closed(ms(10_000)).await,
        "the losing local request was not cancelled"
    );
    println!("slow local (3 s to first byte): without hedging {unhedged:?}, with hedge_after 500ms {hedged:?}");

    let rid = p.traces("limit=1").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let att = p.trace(&rid).await["attempts"].clone();
    assert_eq!(att[0]["provider"], "local");
    assert_eq!(att[0]["outcome"], "failed");
    assert_eq!(att[0]["reason"], "hedge_lost");
    assert_eq!(att[0]["hedged"], false);
    assert_eq!(att[1]["provider"], "cloud");
    assert_eq!(att[1]["outcome"], "ok");
    assert_eq!(att[1]["hedged"], true);
    // Losing a hedge is not a failure of the provider.
    assert_eq!(p.breaker("local"), ("closed".to_string(), 0));
}

#[tokio::test]
async fn hedging_works_for_streams() {
    let (local, cloud) = (MockUpstream::start().await, MockUpstream::start().await);
    local.set_models(&["m", "llama3"]);
    local.set_default(Step::ok_chat("from local").delay_headers(ms(3000)));
    cloud.set_default(Step::ok_chat("from cloud"));
    let p = Proxy::start(&pair_yaml(&local, &cloud, "  hedge_after: 300ms\n")).await;
    let t = Instant::now();
    let r = p.post_chat(stream_body("m")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "cloud");
    let attempts = attempts_of_after(&p, &r);
    let (text, done) = stream_text(r).await;
    assert_eq!(text, "from cloud");
    assert!(done);
    assert!(t.elapsed() < ms(2000), "{:?}", t.elapsed());
    assert!(local.wait_client_closed(ms(10_000)).await);
    let att = attempts.await;
    assert_eq!(att[0]["reason"], "hedge_lost");
    assert_eq!(att[1]["outcome"], "ok");
    assert_eq!(att[1]["hedged"], true);
}

/// The trace id of a response, resolved to its attempts once the stream has been read.
fn attempts_of_after<'a>(
    p: &'a Proxy,
    r: &reqwest::Response,
) -> impl std::future::Future<Output = Vec<Value>> + 'a {
    let id = hdr(r, "x-stockyard-trace-id");
    async move { p.trace(&id).await["attempts"].as_array().unwrap().clone() }
}

#[tokio::test]
async fn no_hedge_when_the_first_byte_comes_in_time() {
    let (local, cloud) = (MockUpstream::start().await, MockUpstream::start().await);
    local.set_models(&["m", "llama3"]);
    local.set_default(Step::ok_chat("from local").delay_headers(ms(100)));
    let p = Proxy::start(&pair_yaml(&local, &cloud, "  hedge_after: 1s\n")).await;
    let r = p.chat("m").await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "local");
    assert_eq!(hdr(&r, "x-stockyard-failover"), "false");
    assert_eq!(cloud.hits(), 0);
    // Headers in time but a slow body: still no hedge (the first byte arrived).
    local.set_default(Step::ok_chat("slow body").delay_body(ms(1500)));
    let p = Proxy::start(&pair_yaml(&local, &cloud, "  hedge_after: 300ms\n")).await;
    let r = p.chat("m").await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "local");
    assert_eq!(cloud.hits(), 0);
}

#[tokio::test]
async fn the_original_can_still_win_and_the_hedge_is_cancelled() {
    let (local, cloud) = (MockUpstream::start().await, MockUpstream::start().await);
    local.set_models(&["m", "llama3"]);
    local.set_default(Step::ok_chat("from local").delay_headers(ms(700)));
    cloud.set_default(Step::ok_chat("from cloud").delay_headers(ms(5000)));
    let p = Proxy::start(&pair_yaml(&local, &cloud, "  hedge_after: 200ms\n")).await;
    let t = Instant::now();
    let r = p.chat("m").await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "local");
    // Waiting for the hedge would take the cloud's 5 s.
    assert!(t.elapsed() < ms(4000), "{:?}", t.elapsed());
    let att = attempts_of(&p, &r).await;
    assert!(
        cloud.wait_client_closed(ms(10_000)).await,
        "hedge not cancelled"
    );
    assert_eq!(cloud.hits(), 1);
    assert_eq!(att[0]["outcome"], "ok");
    assert_eq!(att[1]["provider"], "cloud");
    assert_eq!(att[1]["reason"], "hedge_lost");
    assert_eq!(att[1]["hedged"], true);
}

#[tokio::test]
async fn a_failing_hedge_waits_for_the_original() {
    let (local, cloud) = (MockUpstream::start().await, MockUpstream::start().await);
    local.set_models(&["m", "llama3"]);
    local.set_default(Step::ok_chat("from local").delay_headers(ms(900)));
    cloud.set_default(Step::status(503));
    let p = Proxy::start(&pair_yaml(&local, &cloud, "  hedge_after: 200ms\n")).await;
    let r = p.chat("m").await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "local");
    let att = attempts_of(&p, &r).await;
    assert_eq!(att[0]["outcome"], "ok");
    assert_eq!(att[1]["outcome"], "failed");
    assert_eq!(att[1]["http_status"], 503);
    // And when both fail, the chain goes on to the next provider.
    let third = MockUpstream::start().await;
    local.set_default(Step::status(500).delay_headers(ms(600)));
    let p = Proxy::start(&format!(
        "failover: {{hedge_after: 200ms}}\nproviders:\n  \
         - {{name: local, kind: openai-compatible, base_url: \"{}\", priority: 1, local: true}}\n  \
         - {{name: cloud, kind: openai-compatible, base_url: \"{}\", priority: 2}}\n  \
         - {{name: third, kind: openai-compatible, base_url: \"{}\", priority: 3}}\n",
        local.url(),
        cloud.url(),
        third.url()
    ))
    .await;
    let r = p.chat("m").await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "third");
    assert_eq!(hdr(&r, "x-stockyard-attempts"), "3");
}

// ---------------------------------------------------------------------------------------------
// Overloaded
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_busy_local_provider_is_skipped_at_once_and_its_503_is_retryable() {
    let (local, cloud) = (MockUpstream::start().await, MockUpstream::start().await);
    local.set_models(&["m", "llama3"]);
    // Ollama's answer when its queue is full.
    local.push(Step::json(
        503,
        json!({"error": "server busy, please try again.  maximum pending requests exceeded"}),
    ));
    let p = Proxy::start(&pair_yaml(&local, &cloud, "")).await;
    let r = p.chat("m").await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "cloud");
    let att = attempts_of(&p, &r).await;
    assert_eq!(att[0]["http_status"], 503);
    assert_eq!(
        p.breaker("local").1,
        1,
        "a busy 503 counts against the breaker"
    );

    // max_concurrency: 1 and one request in flight: the next skips local with no queueing.
    local.set_default(Step::ok_chat("slow").delay_headers(ms(1500)));
    let p = Proxy::start(&format!(
        "providers:\n  \
         - {{name: local, kind: openai-compatible, base_url: \"{}\", priority: 1, local: true, max_concurrency: 1}}\n  \
         - {{name: cloud, kind: openai-compatible, base_url: \"{}\", priority: 2}}\n",
        local.url(),
        cloud.url()
    ))
    .await;
    let first = p.spawn_chat(chat_body("m"));
    // The first request holds local's only slot (it is at the upstream: the busy 503 above was
    // local's first POST) before the second starts.
    local.wait_hits(2).await;
    let t = Instant::now();
    let r = p.chat("m").await;
    // Waiting for the busy provider would take most of its 1.5 s.
    assert!(
        t.elapsed() < ms(1000),
        "the busy provider was waited for: {:?}",
        t.elapsed()
    );
    assert_eq!(hdr(&r, "x-stockyard-provider"), "cloud");
    let att = attempts_of(&p, &r).await;
    assert_eq!(att[0]["outcome"], "skipped");
    assert_eq!(att[0]["reason"], "overloaded");
    let first = first.await.unwrap().unwrap();
    assert_eq!(hdr(&first, "x-stockyard-provider"), "local");
}

// ---------------------------------------------------------------------------------------------
// Privacy
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn local_only_aliases_never_reach_the_cloud() {
    let (local, cloud) = (MockUpstream::start().await, MockUpstream::start().await);
    local.set_models(&["m", "llama3"]);
    let yaml = format!(
        "model_alias:\n  aliases:\n    private:\n      targets: [local/llama3]\n      local_only: true\n    open: local/llama3\n\
         providers:\n  \
         - {{name: local, kind: openai-compatible, base_url: \"{}\", priority: 1, local: true}}\n  \
         - {{name: cloud, kind: openai-compatible, base_url: \"{}\", priority: 2, local: false}}\n",
        local.url(),
        cloud.url()
    );
    let p = Proxy::start(&yaml).await;
    let r = p.chat("private").await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "local");
    // Local down: 503 saying so, and the cloud never sees the prompt.
    local.set_default(Step::status(500));
    let r = p.chat("private").await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "all_providers_failed");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("local-only"), "{msg}");
    assert!(
        msg.contains("nothing was sent to a cloud provider"),
        "{msg}"
    );
    let reasons: Vec<&str> = v["error"]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["reason"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"not_local"), "{reasons:?}");
    // The header does the same for any model.
    let r = p
        .client
        .post(format!("{}/v1/chat/completions", p.url))
        .header("x-stockyard-local-only", "true")
        .json(&chat_body("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let r = p
        .client
        .post(format!("{}/v1/chat/completions", p.url))
        .header("x-stockyard-local-only", "true")
        .json(&stream_body("private"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(cloud.hits(), 0, "a local-only prompt reached the cloud");
    // Without the marker the same alias target fails over to the cloud.
    let r = p.chat("open").await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "cloud");
    assert_eq!(cloud.hits(), 1);
}

// ---------------------------------------------------------------------------------------------
// Discovery and health probes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn local_models_are_discovered_and_route_without_round_trips() {
    let (ollama, cloud) = (MockUpstream::start().await, MockUpstream::start().await);
    ollama.set_models(&["llama3:8b", "qwen2.5:latest"]);
    let p = Proxy::start(&format!(
        "providers:\n  \
         - {{name: cloud, kind: openai-compatible, base_url: \"{}\", priority: 1, local: false}}\n  \
         - {{name: ollama, kind: ollama, base_url: \"{}\", priority: 2}}\n",
        cloud.url(),
        ollama.url()
    ))
    .await;
    assert!(
        ollama.hits_path("/api/tags") >= 1,
        "Ollama's /api/tags not asked"
    );
    let (_, v) = p.get_json("/api/proxy/providers").await;
    let o = v
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "ollama")
        .unwrap()
        .clone();
    assert_eq!(
        o["discovered_models"],
        json!(["llama3:8b", "qwen2.5:latest"])
    );

    // A model Ollama has goes there first, despite its lower priority.
    let r = p.chat("llama3:8b").await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "ollama");
    // A name without a tag means `:latest`, as in Ollama.
    let r = p.chat("qwen2.5").await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "ollama");
    assert_eq!(ollama.hits(), 2);
    // One it lacks skips it without a round trip.
    let r = p.chat("mistral:7b").await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "cloud");
    assert_eq!(ollama.hits(), 2, "a model Ollama lacks was sent to it");
    cloud.set_default(Step::status(503));
    let r = p.chat("mistral:7b").await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    let skipped = v["error"]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["provider"] == "ollama")
        .unwrap()
        .clone();
    assert_eq!(skipped["reason"], "model_unsupported");
    assert_eq!(ollama.hits(), 2);
}

#[tokio::test]
async fn health_probes_open_a_dead_provider_early_and_close_it_when_back() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let p = Proxy::start(&format!(
        "providers:\n  \
         - {{name: a, kind: openai-compatible, base_url: \"{}\", priority: 1, local: false, health_check: {{interval: 150ms}}}}\n  \
         - {{name: b, kind: openai-compatible, base_url: \"{}\", priority: 2, local: false}}\n",
        a.url(),
        b.url()
    ))
    .await;
    let wait_for = |want: &'static str| {
        let p = &p;
        async move {
            let deadline = Instant::now() + ms(20_000);
            while p.breaker("a").0 != want {
                assert!(
                    Instant::now() < deadline,
                    "breaker of a never became {want}"
                );
                tokio::time::sleep(ms(25)).await;
            }
        }
    };
    // The models endpoint starts failing: the circuit opens with no user request at all.
    a.set_models_step(Some(Step::status(502)));
    wait_for("open").await;
    assert_eq!(a.hits(), 0);
    let r = p.chat("m").await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "b");
    assert_eq!(a.hits(), 0, "an open circuit was called");
    let att = attempts_of(&p, &r).await;
    assert_eq!(att[0]["reason"], "circuit_open");
    // A dead port (connection refused) counts as a failed probe too; a passing probe closes
    // the circuit long before recovery_timeout (30 s by default).
    a.set_models_step(None);
    wait_for("closed").await;
    let r = p.chat("m").await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "a");
    // Probes are not user traffic: only the two chat requests are traced.
    assert_eq!(p.traces("limit=100").await.len(), 2);
    let paths: Vec<String> = a
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(a.hits_path("/v1/models") >= 2, "{paths:?}");
}

#[tokio::test]
async fn ready_follows_health_probes() {
    let a = MockUpstream::start().await;
    let p = Proxy::start(&format!(
        "providers:\n  - {{name: a, kind: openai-compatible, base_url: \"{}\", health_check: {{interval: 100ms}}}}\n",
        a.url()
    ))
    .await;
    assert_eq!(p.get_json("/ready").await.0, 200);
    a.set_models_step(Some(Step::hang()));
    let deadline = Instant::now() + ms(20_000);
    while p.get_json("/ready").await.0 != 503 {
        assert!(Instant::now() < deadline, "/ready never turned 503");
        tokio::time::sleep(ms(25)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Context windows
// ---------------------------------------------------------------------------------------------

/// About `tokens` tokens of English text (4 characters per token in the estimate).
fn words(tokens: usize, tag: &str) -> String {
    let mut s = format!("{tag}: ");
    while s.len() < tokens * 4 {
        s.push_str("lorem ipsum ");
    }
    s
}

#[tokio::test]
async fn providers_too_small_for_the_prompt_are_skipped() {
    let (local, cloud) = (MockUpstream::start().await, MockUpstream::start().await);
    local.set_models(&["m"]);
    let p = Proxy::start(&format!(
        "providers:\n  \
         - {{name: local, kind: openai-compatible, base_url: \"{}\", priority: 1, local: true, context_window: 1000}}\n  \
         - {{name: cloud, kind: openai-compatible, base_url: \"{}\", priority: 2, local: false, context_window: 100000}}\n",
        local.url(),
        cloud.url()
    ))
    .await;
    // Fits: local answers.
    let r = p.chat("m").await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "local");
    // A 2,000-token prompt does not fit 1,000 tokens: skipped without a round trip.
    let big = json!({"model": "m", "messages": [{"role": "user", "content": words(2000, "q")}]});
    let r = p.post_chat(big).await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "cloud");
    let att = attempts_of(&p, &r).await;
    assert_eq!(att[0]["reason"], "context_too_small");
    assert_eq!(local.hits(), 1);
    // The prompt fits but prompt + max_tokens does not.
    let r = p
        .post_chat(json!({"model": "m", "max_tokens": 900,
                          "messages": [{"role": "user", "content": words(300, "q")}]}))
        .await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "cloud");
    assert_eq!(local.hits(), 1);
    // Too big for everyone: 400 context_length_exceeded, nothing sent.
    let huge =
        json!({"model": "m", "messages": [{"role": "user", "content": words(120_000, "q")}]});
    let r = p.post_chat(huge).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert_eq!(cloud.hits(), 2);
}

#[tokio::test]
async fn truncation_drops_the_oldest_turns_and_keeps_system_latest_user_and_tool_pairs() {
    let (local, cloud) = (MockUpstream::start().await, MockUpstream::start().await);
    local.set_models(&["m"]);
    cloud.set_default(Step::status(503));
    let p = Proxy::start(&format!(
        "providers:\n  \
         - {{name: cloud, kind: openai-compatible, base_url: \"{}\", priority: 1, local: false, context_window: 100000}}\n  \
         - {{name: local, kind: openai-compatible, base_url: \"{}\", priority: 2, local: false, context_window: 1000, truncate: true}}\n",
        cloud.url(),
        local.url()
    ))
    .await;
    let messages = json!([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": words(300, "u1")},
        {"role": "assistant", "content": words(300, "a1")},
        {"role": "user", "content": words(100, "u2")},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": words(250, "t1")},
        {"role": "assistant", "content": words(50, "a2")},
        {"role": "user", "content": "latest question"}
    ]);
    let r = p
        .post_chat(json!({"model": "m", "max_tokens": 100, "messages": messages}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "local");
    // The cloud got the whole conversation; the local provider a truncated one.
    assert_eq!(
        cloud.last_json().unwrap()["messages"]
            .as_array()
            .unwrap()
            .len(),
        8
    );
    let sent = local.last_json().unwrap()["messages"].clone();
    let tags: Vec<String> = sent
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let c = m["content"].as_str().unwrap_or("");
            format!(
                "{}:{}",
                m["role"].as_str().unwrap(),
                c.split(':').next().unwrap()
            )
        })
        .collect();
    // u1 and a1 (600 tokens) had to go; u2 fits, and the tool call and its result stay together.
    assert_eq!(
        tags,
        [
            "system:You are terse.",
            "user:u2",
            "assistant:",
            "tool:t1",
            "assistant:a2",
            "user:latest question"
        ]
    );
    let trace = p.trace(&hdr(&r, "x-stockyard-trace-id")).await;
    let dropped = trace["truncated_tokens"]
        .as_u64()
        .unwrap_or_else(|| panic!("{trace}"));
    assert!((500..=800).contains(&dropped), "dropped {dropped}");

    // A window so small the tool pair must go too: it goes as a whole, never split (a window
    // that only the call or only the result would fit in drops both).
    let p = Proxy::start(&format!(
        "providers:\n  \
         - {{name: local, kind: openai-compatible, base_url: \"{}\", priority: 1, local: true, context_window: 420, truncate: true}}\n",
        local.url()
    ))
    .await;
    let r = p
        .post_chat(json!({"model": "m", "max_tokens": 100, "messages": messages}))
        .await;
    assert_eq!(r.status(), 200);
    let sent = local.last_json().unwrap()["messages"].clone();
    let roles: Vec<&str> = sent
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    // The tool call and its result went together, and the conversation still opens with a
    // user turn (a2 would have been first), so only the system prompt and the question remain.
    assert_eq!(roles, ["system", "user"], "{sent}");
    assert_eq!(sent[1]["content"], "latest question");
}

#[tokio::test]
async fn a_context_length_error_moves_on_to_a_larger_window() {
    let (small, same, large) = (
        MockUpstream::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
    );
    small.set_default(Step::json(
        400,
        json!({"error": {"message": "This model's maximum context length is 8192 tokens",
                         "type": "invalid_request_error", "param": "messages",
                         "code": "context_length_exceeded"}}),
    ));
    let p = Proxy::start(&format!(
        "providers:\n  \
         - {{name: small, kind: openai-compatible, base_url: \"{}\", priority: 1, local: false, context_window: 8192}}\n  \
         - {{name: same, kind: openai-compatible, base_url: \"{}\", priority: 2, local: false, context_window: 8192}}\n  \
         - {{name: large, kind: openai-compatible, base_url: \"{}\", priority: 3, local: false, context_window: 128000}}\n",
        small.url(),
        same.url(),
        large.url()
    ))
    .await;
    let r = p.chat("m").await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "large");
    assert_eq!(
        same.hits(),
        0,
        "a window no larger than the one that failed was tried"
    );
    let att = attempts_of(&p, &r).await;
    assert_eq!(att[0]["reason"], "context_length");
    assert_eq!(att[1]["reason"], "context_too_small");
    assert_eq!(
        p.breaker("small").1,
        0,
        "context errors are not breaker failures"
    );
}

// ---------------------------------------------------------------------------------------------
// Latency strategy
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn latency_strategy_prefers_the_fastest_but_keeps_a_near_local_first() {
    let (slow, fast, local) = (
        MockUpstream::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
    );
    slow.set_default(Step::ok_chat("slow").delay_headers(ms(250)));
    local.set_default(Step::ok_chat("local").delay_headers(ms(60)));
    local.set_models(&["m"]);
    let yaml = |factor: u32| {
        format!(
            "failover: {{strategy: latency, local_factor: {factor}}}\nproviders:\n  \
             - {{name: slow, kind: openai-compatible, base_url: \"{}\", priority: 1, local: false}}\n  \
             - {{name: fast, kind: openai-compatible, base_url: \"{}\", priority: 2, local: false}}\n",
            slow.url(),
            fast.url()
        )
    };
    let p = Proxy::start(&yaml(2)).await;
    // Nothing measured yet: priority order, and each answer teaches the EWMA.
    assert_eq!(hdr(&p.chat("m").await, "x-stockyard-provider"), "slow");
    assert_eq!(hdr(&p.chat("m").await, "x-stockyard-provider"), "fast");
    for _ in 0..3 {
        assert_eq!(hdr(&p.chat("m").await, "x-stockyard-provider"), "fast");
    }
    let (_, route) = p.get_json("/api/proxy/route?model=m").await;
    assert_eq!(route["chain"][0]["provider"], "fast");
    assert_eq!(slow.hits(), 1);

    // A local provider ~60 ms against a ~1 ms cloud: first only with a generous factor.
    let with_local = |factor: u32| {
        format!(
            "failover: {{strategy: latency, local_factor: {factor}}}\nproviders:\n  \
             - {{name: fast, kind: openai-compatible, base_url: \"{}\", priority: 1, local: false}}\n  \
             - {{name: local, kind: openai-compatible, base_url: \"{}\", priority: 2, local: true}}\n",
            fast.url(),
            local.url()
        )
    };
    for (factor, want) in [(2, "fast"), (1000, "local")] {
        let p = Proxy::start(&with_local(factor)).await;
        // Measure both: fast first (priority), then local (unmeasured scores 0).
        p.chat("m").await;
        p.chat("m").await;
        let mut last = String::new();
        for _ in 0..3 {
            last = hdr(&p.chat("m").await, "x-stockyard-provider");
        }
        assert_eq!(last, want, "local_factor {factor}");
    }
}
