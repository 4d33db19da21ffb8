//! Security: proxy-key authentication on every proxy route, header hygiene in both directions
//! (hop-by-hop and credential headers), a client never choosing the upstream URL, redirects never
//! followed, and no secret anywhere a user or an operator can see it (logs, the trace database,
//! the admin API, metrics, error bodies). Admin-key rules are in tests/admin_auth.rs.

mod common;

use common::mock::{chunk_json, error_json, role_json, MockUpstream, SseEv, Step, MOCK_MODEL};
use common::{chat_body, hdr, Proxy};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PROXY_KEY: &str = "sy-proxy-key-PX71";
const PROVIDER_KEY: &str = "prov-key-PV42-abcdef";

/// One provider `a` on `url` with the provider key, proxy keys on.
fn config(url: &str, extra: &str) -> String {
    format!(
        "api_keys: [{PROXY_KEY}]\n{extra}providers:\n  - {{name: a, kind: openai-compatible, base_url: \"{url}\", api_key: {PROVIDER_KEY}}}\n"
    )
}

/// Sends raw bytes on a fresh connection and reads the whole answer (the request should say
/// `Connection: close`). Returns (status, lowercased header lines, body text).
async fn raw(p: &Proxy, request: &[u8]) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(p.url.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("no complete answer")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn body_json() -> String {
    chat_body("m").to_string()
}

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn proxy_keys_guard_every_proxy_route() {
    let m = MockUpstream::start().await;
    let p = Proxy::start(&config(&m.url(), "admin_key: adm-key-AD93\n")).await;
    let routes: [(&str, &str, Value); 4] = [
        ("POST", "/v1/chat/completions", chat_body("m")),
        (
            "POST",
            "/v1/messages",
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "POST",
            "/v1/embeddings",
            json!({"model": "m", "input": "hi"}),
        ),
        ("GET", "/v1/models", Value::Null),
    ];
    for (method, path, body) in &routes {
        let url = format!("{}{path}", p.url);
        let send = |auth: Option<(&'static str, String)>| {
            let mut rb = match *method {
                "GET" => p.client.get(&url),
                _ => p.client.post(&url).json(body),
            };
            if let Some((k, v)) = auth {
                rb = rb.header(k, v);
            }
            rb.send()
        };
        // Missing, wrong, the admin key, the provider's own key: all 401, OpenAI-shaped.
        for auth in [
            None,
            Some(("authorization", "Bearer wrong-key-123".to_string())),
            Some(("authorization", "Bearer adm-key-AD93".to_string())),
            Some(("authorization", format!("Bearer {PROVIDER_KEY}"))),
            Some(("authorization", format!("Basic {PROXY_KEY}"))),
            Some(("x-api-key", "wrong-key-123".to_string())),
        ] {
            let r = send(auth.clone()).await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {auth:?}");
            let text = r.text().await.unwrap();
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["error"]["type"], "authentication_error", "{path}: {v}");
            if *path == "/v1/messages" {
                // Anthropic's shape there: {"type":"error","error":{"type","message"}}.
                assert_eq!(v["type"], "error", "{path}: {v}");
            } else {
                assert_eq!(v["error"]["code"], "invalid_api_key", "{path}: {v}");
            }
            assert!(!text.contains("wrong-key-123") && !text.contains(PROVIDER_KEY));
        }
        // The proxy key works as a bearer and as x-api-key (Anthropic SDKs send that).
        for auth in [
            ("authorization", format!("Bearer {PROXY_KEY}")),
            ("x-api-key", PROXY_KEY.to_string()),
        ] {
            let r = send(Some(auth.clone())).await.unwrap();
            assert_eq!(r.status(), 200, "{method} {path} with {auth:?}");
        }
    }
    // The proxy key is not an admin key.
    let r = p
        .client
        .get(format!("{}/api/proxy/providers", p.url))
        .bearer_auth(PROXY_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Rejected requests never reached the upstream.
    assert!(m
        .requests()
        .iter()
        .all(|r| r.header("authorization") == Some(&format!("Bearer {PROVIDER_KEY}"))));
}

// ---------------------------------------------------------------------------------------------
// Header hygiene
// ---------------------------------------------------------------------------------------------

/// The only headers an upstream call carries (plus `x-api-key`/`anthropic-version` for
/// Anthropic and the provider's configured `headers`).
const UPSTREAM_HEADERS: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "accept",
    "accept-encoding",
    "authorization",
    "user-agent",
];

fn assert_clean_upstream(m: &MockUpstream) {
    let reqs = m.requests();
    assert!(!reqs.is_empty());
    for r in reqs.iter().filter(|r| r.method == "POST") {
        for (k, v) in &r.headers {
            assert!(
                UPSTREAM_HEADERS.contains(&k.as_str()),
                "client header `{k}: {v}` reached the upstream"
            );
            assert!(!v.contains(PROXY_KEY), "proxy key forwarded in `{k}`");
            assert!(
                !v.contains("evil"),
                "client-chosen value forwarded: `{k}: {v}`"
            );
        }
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {PROVIDER_KEY}").as_str())
        );
        assert_eq!(r.header("host"), Some(m.addr.to_string().as_str()));
        assert_eq!(r.path, "/v1/chat/completions");
        assert_eq!(r.query, None);
    }
}

#[tokio::test]
async fn hop_by_hop_and_client_credential_headers_never_reach_the_upstream() {
    let m = MockUpstream::start().await;
    let p = Proxy::start(&config(&m.url(), "")).await;
    let body = body_json();
    let common = format!(
        "Host: evil.example\r\nAuthorization: Bearer {PROXY_KEY}\r\nX-Api-Key: {PROXY_KEY}\r\nContent-Type: application/json\r\nConnection: close, X-Secret-Hop\r\nX-Secret-Hop: evil-hop\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic ZXZpbDpldmls\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-Evil-Trailer\r\nUpgrade: evil/1.0\r\nCookie: session=evil\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-For: 203.0.113.66\r\nX-Forwarded-Proto: evil\r\nForwarded: host=evil.example\r\nX-Real-IP: 203.0.113.66\r\nOrigin: http://evil.example\r\nReferer: http://evil.example/\r\nOpenAI-Organization: org-evil\r\nAnthropic-Version: evil\r\nX-Stockyard-Local-Only: false\r\n"
    );
    // Content-Length framing.
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\n{common}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, _, text) = raw(&p, req.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    // Chunked framing (Transfer-Encoding is hop-by-hop too), with a trailer.
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\n{common}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\nX-Evil-Trailer: evil\r\n\r\n",
        body.len()
    );
    let (status, _, text) = raw(&p, req.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(m.hits(), 2);
    assert_clean_upstream(&m);
}

/// Headers an upstream may send that a client must never see from Stockyard.
const UPSTREAM_ONLY: &[(&str, &str)] = &[
    ("set-cookie", "upstream-session=SECRET-COOKIE; HttpOnly"),
    (
        "www-authenticate",
        "Bearer realm=\"upstream\", error=\"invalid_token\"",
    ),
    ("proxy-authenticate", "Basic realm=\"upstream-proxy\""),
    ("authorization", "Bearer upstream-echo"),
    ("x-api-key", "upstream-echo"),
    ("connection", "x-up-hop"),
    ("x-up-hop", "hop"),
    ("keep-alive", "timeout=999"),
    ("proxy-connection", "keep-alive"),
    ("upgrade", "evil/1.0"),
    ("trailer", "x-up-trailer"),
    ("alt-svc", "h3=\":443\""),
    ("strict-transport-security", "max-age=1"),
    ("location", "http://evil.example/"),
    ("server", "upstream-server/1.0"),
];

fn with_upstream_headers(mut s: Step) -> Step {
    for (k, v) in UPSTREAM_ONLY {
        s = s.header(k, v);
    }
    s.header("x-request-id", "req-upstream-1")
}

fn assert_clean_response(what: &str, headers: &reqwest::header::HeaderMap) {
    for (k, v) in UPSTREAM_ONLY {
        if let Some(got) = headers.get(*k) {
            assert_ne!(
                got.to_str().unwrap_or(""),
                *v,
                "{what}: upstream `{k}` relayed"
            );
        }
    }
    for k in [
        "set-cookie",
        "www-authenticate",
        "proxy-authenticate",
        "authorization",
        "x-api-key",
        "x-up-hop",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "trailer",
        "location",
        "alt-svc",
    ] {
        assert!(
            headers.get(k).is_none(),
            "{what}: `{k}` in the response: {headers:?}"
        );
    }
    for v in headers.values() {
        let v = v.to_str().unwrap_or("");
        assert!(
            !v.contains("SECRET-COOKIE") && !v.contains("upstream-echo"),
            "{what}: {headers:?}"
        );
    }
}

#[tokio::test]
async fn upstream_credential_and_hop_by_hop_headers_never_reach_the_client() {
    let m = MockUpstream::start().await;
    let p = Proxy::start(&config(&m.url(), "")).await;
    let send = |body: Value| {
        p.client
            .post(format!("{}/v1/chat/completions", p.url))
            .bearer_auth(PROXY_KEY)
            .json(&body)
            .send()
    };
    // A plain answer: x-request-id is relayed, nothing else of the list.
    m.push(with_upstream_headers(Step::ok_chat("hi")));
    let r = send(chat_body("m")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-request-id"), "req-upstream-1");
    assert_clean_response("json", r.headers());
    // A stream.
    m.push(with_upstream_headers(Step::sse(vec![
        SseEv::Data(role_json(MOCK_MODEL)),
        SseEv::Data(chunk_json(MOCK_MODEL, "hi")),
        SseEv::Done,
    ])));
    let mut b = chat_body("m");
    b["stream"] = json!(true);
    let r = send(b).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_clean_response("stream", r.headers());
    assert!(r.text().await.unwrap().contains("[DONE]"));
    // A final upstream error (401 with WWW-Authenticate) keeps its status, not its headers.
    m.push(with_upstream_headers(Step::json(
        401,
        error_json("bad key"),
    )));
    let r = send(chat_body("m")).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_clean_response("401", r.headers());
    // An upstream that answers something unparseable.
    m.push(with_upstream_headers(Step::garbage()));
    let r = send(chat_body("m")).await.unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
    assert_clean_response("garbage", r.headers());
}

// ---------------------------------------------------------------------------------------------
// The upstream URL is Stockyard's choice, never the client's
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_client_cannot_choose_the_upstream() {
    let good = MockUpstream::start().await;
    let evil = MockUpstream::start().await;
    let p = Proxy::start(&config(&good.url(), "admin_key: adm-key-AD93\n")).await;
    let evil_addr = evil.addr.to_string();
    let body = body_json();
    let post = |target: &str, extra: &str| {
        format!(
            "POST {target} HTTP/1.1\r\nHost: {evil_addr}\r\n{extra}Authorization: Bearer {PROXY_KEY}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    // Absolute-form target, Host and forwarding headers naming another server: routed as usual.
    for req in [
        post(&format!("http://{evil_addr}/v1/chat/completions"), ""),
        post("/v1/chat/completions", &format!("X-Forwarded-Host: {evil_addr}\r\nX-Forwarded-Proto: http\r\nForwarded: host={evil_addr}\r\n")),
        post(&format!("/v1/chat/completions?base_url=http://{evil_addr}/v1&url=http://evil"), ""),
    ] {
        let (status, headers, text) = raw(&p, req.as_bytes()).await;
        assert_eq!(status, 200, "{req}\n{text}");
        assert!(
            headers.iter().any(|(k, v)| k == "x-stockyard-provider" && v == "a"),
            "{headers:?}"
        );
    }
    // Models that look like URLs or paths are just model names.
    for model in [
        format!("http://{evil_addr}/v1"),
        "a/../../evil".to_string(),
        format!("a/http://{evil_addr}/"),
        "../../../etc/passwd".to_string(),
    ] {
        let r = p
            .client
            .post(format!("{}/v1/chat/completions", p.url))
            .bearer_auth(PROXY_KEY)
            .json(&chat_body(&model))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{model}");
    }
    // Path tricks do not reach the admin API (and are not normalised into it).
    for path in [
        "/v1/../api/proxy/providers",
        "/v1/chat/completions/../../api/traces",
        "/v1/%2e%2e/api/traces",
        "/v1/..%2fapi/traces",
        "//api/traces",
        "/v1//../api/traces",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PROXY_KEY}\r\nConnection: close\r\n\r\n");
        let (status, _, text) = raw(&p, req.as_bytes()).await;
        assert!(status == 404 || status == 400, "{path}: {status} {text}");
        assert!(
            !text.contains("\"traces\"") && !text.contains("base_url"),
            "{path}: {text}"
        );
    }
    assert_eq!(
        evil.hits(),
        0,
        "the client steered a request to another server"
    );
    assert_clean_upstream(&good);
}

#[tokio::test]
async fn upstream_redirects_are_never_followed() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let evil = MockUpstream::start().await;
    let p = Proxy::start(&format!(
        "api_keys: [{PROXY_KEY}]\nfailover:\n  circuit_breaker: {{failure_threshold: 100}}\nproviders:\n  - {{name: a, kind: openai-compatible, base_url: \"{}\", api_key: {PROVIDER_KEY}, priority: 1}}\n  - {{name: b, kind: openai-compatible, base_url: \"{}\", api_key: prov-key-b-QQ, priority: 2}}\n",
        a.url(),
        b.url()
    ))
    .await;
    let send = || {
        p.client
            .post(format!("{}/v1/chat/completions", p.url))
            .bearer_auth(PROXY_KEY)
            .json(&chat_body("m"))
            .send()
    };
    for status in [301, 302, 303, 307, 308] {
        a.push(
            Step::json(status, json!({"moved": true}))
                .header("location", &format!("{}/chat/completions", evil.url())),
        );
        // A redirect is a failed attempt: the next provider answers.
        let r = send().await.unwrap();
        assert_eq!(r.status(), 200, "{status}");
        assert_eq!(hdr(&r, "x-stockyard-provider"), "b");
        assert!(r.headers().get("location").is_none());
    }
    // With nowhere to fail over to, the client gets a 502, not the redirect.
    a.push(Step::status(307).header("location", &format!("{}/chat/completions", evil.url())));
    let r = p
        .client
        .post(format!("{}/v1/chat/completions", p.url))
        .bearer_auth(PROXY_KEY)
        .header("x-stockyard-no-failover", "true")
        .json(&chat_body("a/m"))
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert!(r.headers().get("location").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 502, "{v}");
    assert_eq!(v["error"]["code"], "all_providers_failed", "{v}");
    assert_eq!(evil.hits(), 0, "a redirect was followed");
}

// ---------------------------------------------------------------------------------------------
// Secret hygiene, against the real binary
// ---------------------------------------------------------------------------------------------

#[cfg(unix)]
mod secrets {
    use super::*;
    use common::bin::Server;
    use futures::StreamExt;

    const KEY_A: &str = "sk-prov-a-SECRET-1111";
    const KEY_B: &str = "prov-b-SECRET-2222";
    const KEY_O: &str = "sk-server-openai-SECRET-3333";
    const PROXY: &str = "sy-proxy-SECRET-4444";
    const ADMIN: &str = "adm-SECRET-5555";
    const BYOK: &str = "sk-byok-client-SECRET-6666";
    const WRONG: &str = "sy-wrong-SECRET-7777";
    const ALL: &[&str] = &[KEY_A, KEY_B, KEY_O, PROXY, ADMIN, BYOK, WRONG];

    fn assert_no_secret(what: &str, text: &str) {
        for s in ALL {
            assert!(!text.contains(s), "{what} contains `{s}`:\n{text}");
        }
    }

    /// An upstream error that echoes the key it was sent.
    fn echo(status: u16, key: &str) -> Step {
        Step::json(
            status,
            json!({"error": {"message": format!("Incorrect API key provided: {key}. You can find your API key at https://example.invalid/keys ({key})"), "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
        )
    }

    async fn session(format: &str) {
        let a = MockUpstream::start().await;
        let b = MockUpstream::start().await;
        let o = MockUpstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let port = common::closed_port();
        let yaml = format!(
            "listen: 127.0.0.1:{port}\nlog_format: {format}\nlog_level: debug\napi_keys: [${{PROXY_KEY}}]\nadmin_key: ${{ADMIN_KEY}}\nfailover:\n  circuit_breaker: {{failure_threshold: 100}}\nproviders:\n  - {{name: a, kind: openai-compatible, base_url: \"{}\", api_key: ${{KEY_A}}, priority: 1, headers: {{X-Org: org-1}}}}\n  - {{name: b, kind: openai-compatible, base_url: \"{}\", api_key: {KEY_B}, priority: 2}}\n  - {{name: openai, kind: openai, base_url: \"{}\", api_key: {KEY_O}, priority: 3, models: [\"gpt-*\"]}}\n",
            a.url(),
            b.url(),
            o.url()
        );
        let config = dir.path().join("stockyard.yaml");
        std::fs::write(&config, &yaml).unwrap();
        let data = dir.path().join("data");
        let mut server = Server::serve(
            dir.path(),
            &config,
            port,
            &[
                ("STOCKYARD_DATA_DIR", data.to_str().unwrap()),
                ("PROXY_KEY", PROXY),
                ("ADMIN_KEY", ADMIN),
                ("KEY_A", KEY_A),
                ("RUST_LOG", "debug"),
            ],
        )
        .await;
        let url = server.url();
        let client = reqwest::Client::new();
        let mut bodies: Vec<String> = Vec::new();
        let mut ids: Vec<String> = Vec::new();
        let chat = |bearer: &str, body: Value| {
            client
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(bearer)
                .json(&body)
                .send()
        };
        let mut stream_body = chat_body("m");
        stream_body["stream"] = json!(true);

        // 1. Success.
        a.push(Step::ok_chat("one"));
        // 2. Failover: a answers 500 echoing its key, b answers.
        a.push(echo(500, KEY_A));
        b.push(Step::ok_chat("two"));
        // 3. A final 401 from a that echoes the key.
        a.push(echo(401, KEY_A));
        // 4. A stream.
        a.push(Step::ok_chat("three"));
        // 5. A stream whose first event is an error echoing the key: fails over to b.
        a.push(Step::sse(vec![SseEv::Data(
            json!({"error": {"message": format!("bad key {KEY_A}"), "type": "invalid_request_error"}}).to_string(),
        )]));
        b.push(Step::ok_chat("five"));
        // 6. A stream cut after content with an error echoing the key.
        a.push(Step::sse(vec![
            SseEv::Data(role_json(MOCK_MODEL)),
            SseEv::Data(chunk_json(MOCK_MODEL, "six")),
            SseEv::Data(json!({"error": {"message": format!("key {KEY_A} revoked"), "type": "server_error"}}).to_string()),
        ]));
        // 7. A redirect, then a connection reset: b answers after both.
        a.push(Step::status(302).header("location", &format!("{}?key={KEY_A}", b.url())));
        a.push(Step::reset());
        for (i, body) in [
            chat_body("m"),
            chat_body("m"),
            chat_body("m"),
            stream_body.clone(),
            stream_body.clone(),
            stream_body.clone(),
            chat_body("m"),
            chat_body("m"),
        ]
        .into_iter()
        .enumerate()
        {
            let r = chat(PROXY, body).await.unwrap();
            ids.push(hdr(&r, "x-stockyard-trace-id"));
            let status = r.status();
            let headers = format!("{:?}", r.headers());
            let mut text = String::new();
            let mut s = r.bytes_stream();
            while let Some(c) = s.next().await {
                match c {
                    Ok(c) => text.push_str(&String::from_utf8_lossy(&c)),
                    Err(_) => break,
                }
            }
            assert_no_secret(
                &format!("response {} (HTTP {status})", i + 1),
                &format!("{headers}\n{text}"),
            );
            bodies.push(text);
        }
        assert!(bodies[2].contains("[redacted]"), "{}", bodies[2]);
        // 8. Bring your own key: goes to the openai provider, which rejects it loudly.
        o.push(echo(401, BYOK));
        let r = chat(BYOK, chat_body("gpt-4o")).await.unwrap();
        assert_eq!(r.status(), 401);
        ids.push(hdr(&r, "x-stockyard-trace-id"));
        assert_eq!(
            o.requests()[0].header("authorization"),
            Some(format!("Bearer {BYOK}").as_str())
        );
        assert_no_secret("BYOK error", &r.text().await.unwrap());
        o.push(Step::ok_chat("byok ok"));
        let r = chat(BYOK, chat_body("gpt-4o")).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_no_secret("BYOK answer", &r.text().await.unwrap());
        // 9. A wrong proxy key; messages and embeddings; a bad body.
        let r = chat(WRONG, chat_body("m")).await.unwrap();
        assert_eq!(r.status(), 401);
        assert_no_secret("401", &r.text().await.unwrap());
        for (path, body) in [
            (
                "/v1/messages",
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
            ),
            ("/v1/embeddings", json!({"model": "m", "input": "hi"})),
            ("/v1/chat/completions", json!({"model": PROXY})),
        ] {
            a.push(echo(403, KEY_A));
            let r = client
                .post(format!("{url}{path}"))
                .bearer_auth(PROXY)
                .json(&body)
                .send()
                .await
                .unwrap();
            let h = format!("{:?}", r.headers());
            let t = format!("{h}\n{}", r.text().await.unwrap());
            // (The last one names the model, which is the key the client chose to send as a model.)
            if path != "/v1/chat/completions" {
                assert_no_secret(path, &t);
            }
        }
        let r = client
            .get(format!("{url}/v1/models"))
            .header("x-api-key", PROXY)
            .send()
            .await
            .unwrap();
        assert_no_secret("/v1/models", &r.text().await.unwrap());

        // Everything an operator can read.
        let get = |path: String| {
            let c = client.clone();
            let url = url.clone();
            async move {
                let r = c
                    .get(format!("{url}{path}"))
                    .header("x-admin-key", ADMIN)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{path}");
                r.text().await.unwrap()
            }
        };
        // Traces are written off the request path: wait until every one is listed.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let t = get("/api/traces?limit=100".into()).await;
            if ids
                .iter()
                .filter(|i| !i.is_empty())
                .all(|i| t.contains(i.as_str()))
            {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "traces missing: {t}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut admin = vec![
            "/api/proxy/providers".to_string(),
            "/api/proxy/breakers".into(),
            "/api/proxy/route?model=m".into(),
            "/api/proxy/route?model=gpt-4o".into(),
            "/api/traces?limit=100".into(),
            "/api/traces?failover=true".into(),
            "/api/traces/spend?since=24h".into(),
            "/metrics".into(),
            "/health".into(),
            "/ready".into(),
        ];
        admin.extend(
            ids.iter()
                .filter(|i| !i.is_empty())
                .map(|i| format!("/api/traces/{i}")),
        );
        for path in admin {
            let t = get(path.clone()).await;
            assert_no_secret(&path, &t);
        }
        let r = client
            .post(format!("{url}/api/proxy/reload"))
            .header("x-admin-key", ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_no_secret("reload", &r.text().await.unwrap());

        // The database files while the server runs (the WAL holds the recent writes)...
        let live = grep_dir(&data);
        assert!(
            live >= 2,
            "expected the database and its -wal file, found {live} files"
        );

        server.signal(libc::SIGTERM);
        let status = server
            .wait_exit(Duration::from_secs(20))
            .await
            .expect("exit");
        assert_eq!(status.code(), Some(0), "{}", server.stderr());
        let log = server.stderr();
        assert!(
            log.contains("DEBUG") || log.contains("\"level\":\"DEBUG\""),
            "debug logs expected:\n{log}"
        );
        assert_no_secret(&format!("{format} log"), &log);
        // ...and after it has exited.
        assert!(grep_dir(&data) >= 1, "no database written");
    }

    /// Asserts that no file in `dir` contains a secret, byte for byte; returns how many files
    /// it read.
    fn grep_dir(dir: &std::path::Path) -> usize {
        let mut files = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let Ok(bytes) = std::fs::read(&path) else {
                continue; // removed meanwhile (-shm at exit)
            };
            files += 1;
            for s in ALL {
                assert!(
                    memchr::memmem::find(&bytes, s.as_bytes()).is_none(),
                    "{} contains `{s}`",
                    path.display()
                );
            }
        }
        files
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_secret_in_json_logs_database_admin_api_metrics_or_errors() {
        session("json").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_secret_in_text_logs_database_admin_api_metrics_or_errors() {
        session("text").await;
    }
}
