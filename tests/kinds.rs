//! Every OpenAI-compatible kind (SPEC section 4): the right path and auth header reach the
//! upstream, and chat completions and model lists work through it.

mod common;

use common::mock::MockUpstream;
use common::{hdr, Proxy};
use stockyard::providers::{Kind, Wire, KINDS};

#[tokio::test]
async fn every_openai_compatible_kind_gets_its_auth_header() {
    let mock = MockUpstream::start().await;
    let mut yaml = String::from("providers:\n");
    let kinds: Vec<_> = KINDS.iter().filter(|k| k.wire == Wire::OpenAi).collect();
    assert_eq!(
        kinds.len(),
        16,
        "every kind but anthropic speaks the OpenAI wire format"
    );
    for k in &kinds {
        yaml.push_str(&format!(
            "  - {{name: p-{0}, kind: {0}, base_url: \"{1}\", api_key: key-{0}}}\n",
            k.name,
            mock.url()
        ));
    }
    // Local kinds (ollama, lmstudio) discover their models from the upstream's list.
    let names: Vec<String> = kinds.iter().map(|k| format!("model-{}", k.name)).collect();
    mock.set_models(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let p = Proxy::start(&yaml).await;
    for (i, k) in kinds.iter().enumerate() {
        let r = p.chat(&format!("p-{}/model-{}", k.name, k.name)).await;
        assert_eq!(r.status(), 200, "{}", k.name);
        assert_eq!(hdr(&r, "x-stockyard-provider"), format!("p-{}", k.name));
        let posts: Vec<_> = mock
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect();
        let req = &posts[i];
        assert_eq!(req.path, "/v1/chat/completions", "{}", k.name);
        assert_eq!(req.json()["model"], format!("model-{}", k.name));
        let key = format!("key-{}", k.name);
        match k.kind {
            Kind::Azure => {
                assert_eq!(req.header("api-key"), Some(key.as_str()));
                assert!(req.header("authorization").is_none());
            }
            _ => assert_eq!(
                req.header("authorization"),
                Some(format!("Bearer {key}").as_str()),
                "{}",
                k.name
            ),
        }
        assert_eq!(req.header("content-type"), Some("application/json"));
    }
    let (s, v) = p.get_json("/v1/models").await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for n in &names {
        assert!(ids.contains(&n.as_str()), "{n} missing from {ids:?}");
    }
    assert!(mock.hits_path("/v1/models") >= kinds.len());
}

#[test]
fn default_base_urls_match_the_providers() {
    let want = [
        (Kind::Openai, "https://api.openai.com/v1"),
        (Kind::Anthropic, "https://api.anthropic.com/v1"),
        (
            Kind::Google,
            "https://generativelanguage.googleapis.com/v1beta/openai",
        ),
        (Kind::Ollama, "http://localhost:11434/v1"),
        (Kind::Lmstudio, "http://localhost:1234/v1"),
        (Kind::Groq, "https://api.groq.com/openai/v1"),
        (Kind::Mistral, "https://api.mistral.ai/v1"),
        (Kind::Together, "https://api.together.xyz/v1"),
        (Kind::Deepseek, "https://api.deepseek.com/v1"),
        (Kind::Fireworks, "https://api.fireworks.ai/inference/v1"),
        (Kind::Perplexity, "https://api.perplexity.ai"),
        (Kind::Openrouter, "https://openrouter.ai/api/v1"),
        (Kind::Xai, "https://api.x.ai/v1"),
        (Kind::Cerebras, "https://api.cerebras.ai/v1"),
        (Kind::Cohere, "https://api.cohere.ai/compatibility/v1"),
    ];
    for (k, url) in want {
        assert_eq!(k.info().base_url, url, "{k:?}");
    }
    assert!(Kind::Ollama.info().local && Kind::Lmstudio.info().local);
}
