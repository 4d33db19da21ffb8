//! HTTP surface: bad input, limits, unknown routes, models list, health/ready and the admin API.

mod common;

use common::mock::{MockUpstream, Step};
use common::{hdr, two, Proxy};
use serde_json::{json, Value};

async fn one() -> (MockUpstream, Proxy) {
    let a = MockUpstream::start().await;
    let p = Proxy::start(&format!(
        "max_body_size: 64KiB\nproviders:\n  - {{name: a, kind: openai-compatible, base_url: \"{}\", models: [\"m*\", \"exact-model\"]}}\nmodel_alias:\n  aliases:\n    fast: a/m1\n",
        a.url()
    ))
    .await;
    (a, p)
}

async fn post_raw(
    p: &Proxy,
    body: impl Into<reqwest::Body>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = p
        .client
        .post(format!("{}/v1/chat/completions", p.url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    let h = r.headers().clone();
    (s, r.json().await.unwrap_or(Value::Null), h)
}

#[tokio::test]
async fn bad_request_bodies_get_400_naming_the_field() {
    let (a, p) = one().await;
    let cases: &[(&str, &str, Value)] = &[
        ("{\"model\": ", "invalid_json", Value::Null),
        ("[1,2]", "", Value::Null),
        ("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "invalid_value", json!("model")),
        ("{\"model\":\"m\"}", "invalid_value", json!("messages")),
        ("{\"model\":7,\"messages\":[]}", "invalid_value", json!("model")),
        ("{\"model\":\"m\",\"messages\":\"hi\"}", "invalid_value", json!("messages")),
        ("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":\"yes\"}", "invalid_value", json!("stream")),
    ];
    for (body, code, param) in cases {
        let (s, v, h) = post_raw(&p, body.to_string()).await;
        assert_eq!(s, 400, "{body}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{body}");
        if !code.is_empty() {
            assert_eq!(v["error"]["code"], *code, "{body}");
        }
        assert_eq!(v["error"]["param"], *param, "{body}");
        assert!(h.get("x-stockyard-trace-id").is_some());
    }
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let (a, p) = one().await;
    let big = format!(
        "{{\"model\":\"m\",\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        "x".repeat(70 * 1024)
    );
    let (s, v, _) = post_raw(&p, big.clone()).await;
    assert_eq!(s, 413);
    assert_eq!(v["error"]["code"], "request_too_large");
    // Chunked upload without Content-Length is cut off at the limit too.
    let stream = futures::stream::iter(
        big.into_bytes()
            .chunks(8192)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let (s, _, _) = post_raw(&p, reqwest::Body::wrap_stream(stream)).await;
    assert_eq!(s, 413);
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn unknown_routes_are_404_json_and_wrong_methods_405() {
    let (_a, p) = one().await;
    let (s, v) = p.get_json("/v1/nope").await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["code"], "unknown_route");
    let r = p
        .client
        .get(format!("{}/v1/chat/completions", p.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn models_lists_aliases_and_provider_models() {
    let (a, p) = one().await;
    a.set_models(&["m1", "m2", "other-model"]);
    let (s, v) = p.get_json("/v1/models").await;
    assert_eq!(s, 200);
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["fast", "m1", "m2"],
        "aliases, then models the provider serves"
    );
    assert_eq!(v["data"][1]["owned_by"], "a");
    // Provider down: its literal configured models are listed instead.
    a.set_models_step(Some(Step::status(500)));
    let (_, v) = p.get_json("/v1/models").await;
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["fast", "exact-model"]);
}

#[tokio::test]
async fn health_and_ready_follow_the_breakers() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.set_default(Step::status(500));
    b.set_default(Step::status(500));
    let p = Proxy::start(&two(
        &a.url(),
        &b.url(),
        "",
        "failover:\n  circuit_breaker: {failure_threshold: 1, recovery_timeout: 1m}\n",
    ))
    .await;
    assert_eq!(p.get_json("/health").await, (200, json!({"status": "ok"})));
    assert_eq!(p.get_json("/ready").await.0, 200);
    p.chat("m").await;
    let (s, v) = p.get_json("/ready").await;
    assert_eq!(s, 503, "{v}");
    // Admin reset brings one back.
    let r = p
        .client
        .post(format!("{}/api/proxy/breakers/a/reset", p.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(p.get_json("/ready").await.0, 200);
    assert_eq!(p.breaker("a").0, "closed");
    assert_eq!(p.breaker("b").0, "open");
    let r = p
        .client
        .post(format!("{}/api/proxy/breakers/nope/reset", p.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = p
        .client
        .post(format!("{}/api/proxy/breakers/reset", p.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(p.breaker("b").0, "closed");
}

#[tokio::test]
async fn admin_api_requires_the_admin_key_when_set_and_never_shows_secrets() {
    let a = MockUpstream::start().await;
    let p = Proxy::start(&format!(
        "admin_key: adm-secret\nproviders:\n  - {{name: a, kind: openai-compatible, base_url: \"{}\", api_key: sk-very-secret}}\n",
        a.url()
    ))
    .await;
    let url = format!("{}/api/proxy/providers", p.url);
    let r = p.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = p
        .client
        .get(&url)
        .header("x-admin-key", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = p
        .client
        .get(&url)
        .header("x-admin-key", "adm-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains("sk-very-secret"));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v[0]["name"], "a");
    assert_eq!(v[0]["circuit"]["state"], "closed");
    let r = p
        .client
        .get(format!("{}/api/proxy/route?model=gpt-4o", p.url))
        .bearer_auth("adm-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["chain"][0]["provider"], "a");
    // /health needs no key.
    assert_eq!(p.get_json("/health").await.0, 200);
    // A failing upstream error never echoes the key.
    a.push(Step::status(401));
    let r = p.chat("m").await;
    assert!(!r.text().await.unwrap().contains("sk-very-secret"));
    assert_eq!(hdr(&p.chat("m").await, "x-stockyard-provider"), "a");
}
