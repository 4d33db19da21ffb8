//! `POST /v1/embeddings`: aliases, natural provider, failover, breakers and traces as for chat;
//! Anthropic-native providers are skipped as `model_unsupported`; bad bodies name the field.

mod common;

use common::mock::{MockUpstream, Step};
use common::{hdr, Proxy};
use serde_json::{json, Value};

async fn embed(p: &Proxy, body: Value) -> reqwest::Response {
    p.client
        .post(format!("{}/v1/embeddings", p.url))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn embeddings_route_fail_over_and_are_traced() {
    let (openai, claude, other) = (
        MockUpstream::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
    );
    let p = Proxy::start(&format!(
        "model_alias:\n  aliases:\n    embed: text-embedding-3-small\n\
         providers:\n  \
         - {{name: anthropic, base_url: \"{}\", api_key: sk-ant-x, priority: 1, local: false}}\n  \
         - {{name: other, kind: openai-compatible, base_url: \"{}\", priority: 2, local: false}}\n  \
         - {{name: openai, base_url: \"{}\", api_key: sk-x, priority: 3, local: false}}\n",
        claude.url(),
        other.url(),
        openai.url()
    ))
    .await;
    // text-embedding-* belongs to openai, whatever the priorities.
    let r = embed(
        &p,
        json!({"model": "text-embedding-3-small", "input": ["a", "b"]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "openai");
    let id = hdr(&r, "x-stockyard-trace-id");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let req = openai
        .requests()
        .into_iter()
        .find(|r| r.method == "POST")
        .unwrap();
    assert_eq!(req.path, "/v1/embeddings");
    assert_eq!(req.json()["input"], json!(["a", "b"]));
    let t = p.trace(&id).await;
    assert_eq!(t["status"], "ok");
    assert_eq!(t["tokens_in"], 10);

    // openai fails: the alias falls over to the next OpenAI-compatible provider; the native
    // Anthropic provider has no embeddings endpoint and is skipped without a call.
    openai.push(Step::status(503));
    let r = embed(&p, json!({"model": "embed", "input": "hello"})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "other");
    assert_eq!(hdr(&r, "x-stockyard-failover"), "true");
    let t = p.trace(&hdr(&r, "x-stockyard-trace-id")).await;
    let reasons: Vec<(String, String)> = t["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["provider"].as_str().unwrap().to_string(),
                a["reason"].as_str().unwrap_or("ok").to_string(),
            )
        })
        .collect();
    assert!(
        reasons.contains(&("openai".into(), "http_error".into())),
        "{reasons:?}"
    );
    assert_eq!(t["attempts"][0]["http_status"], 503);
    assert!(
        reasons.contains(&("anthropic".into(), "model_unsupported".into())),
        "{reasons:?}"
    );
    assert_eq!(claude.hits(), 0);
    assert_eq!(p.breaker("openai").1, 1);

    // A 200 without `data` is a malformed answer: next provider.
    openai.push(Step::json(200, json!({"object": "list"})));
    let r = embed(&p, json!({"model": "text-embedding-3-small", "input": "x"})).await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "other");

    // Bad bodies name the field.
    for (body, param) in [
        (json!({"input": "x"}), "model"),
        (json!({"model": "text-embedding-3-small"}), "input"),
        (
            json!({"model": "text-embedding-3-small", "input": 5}),
            "input",
        ),
    ] {
        let r = embed(&p, body).await;
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["param"], param);
    }
}
