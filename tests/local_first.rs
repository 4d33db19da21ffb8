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
    assert!(
        local.wait_client_closed(ms(1000)).await,
        "the losing local request was not cancelled"
    );
    println!("slow local (3 s to first byte): without hedging {unhedged:?}, with hedge_after 500ms {hedged:?}");

    let rid = p.traces("limit=1").await[0]["id"].as_str().unwrap().to_string();
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
    assert!(local.wait_client_closed(ms(1000)).await);
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
    local.set_default(Step::ok_chat("from local").delay_headers(ms(700)));
    cloud.set_default(Step::ok_chat("from cloud").delay_headers(ms(5000)));
    let p = Proxy::start(&pair_yaml(&local, &cloud, "  hedge_after: 200ms\n")).await;
    let t = Instant::now();
    let r = p.chat("m").await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "local");
    assert!(t.elapsed() < ms(2000));
    let att = attempts_of(&p, &r).await;
    assert!(cloud.wait_client_closed(ms(1000)).await, "hedge not cancelled");
    assert_eq!(cloud.hits(), 1);
    assert_eq!(att[0]["outcome"], "ok");
    assert_eq!(att[1]["provider"], "cloud");
    assert_eq!(att[1]["reason"], "hedge_lost");
    assert_eq!(att[1]["hedged"], true);
}

#[tokio::test]
async fn a_failing_hedge_waits_for_the_original() {
    let (local, cloud) = (MockUpstream::start().await, MockUpstream::start().await);
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
    assert_eq!(p.breaker("local").1, 1, "a busy 503 counts against the breaker");

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
    let url = format!("{}/v1/chat/completions", p.url);
    let client = p.client.clone();
    let first = tokio::spawn(async move {
        client
            .post(url)
            .json(&chat_body("m"))
            .send()
            .await
            .unwrap()
    });
    tokio::time::sleep(ms(300)).await;
    let t = Instant::now();
    let r = p.chat("m").await;
    assert!(t.elapsed() < ms(500), "the busy provider was waited for");
    assert_eq!(hdr(&r, "x-stockyard-provider"), "cloud");
    let att = attempts_of(&p, &r).await;
    assert_eq!(att[0]["outcome"], "skipped");
    assert_eq!(att[0]["reason"], "overloaded");
    let first = first.await.unwrap();
    assert_eq!(hdr(&first, "x-stockyard-provider"), "local");
}

// ---------------------------------------------------------------------------------------------
// Privacy
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn local_only_aliases_never_reach_the_cloud() {
    let (local, cloud) = (MockUpstream::start().await, MockUpstream::start().await);
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
    assert!(msg.contains("nothing was sent to a cloud provider"), "{msg}");
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
