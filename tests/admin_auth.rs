//! The admin rule of SPEC section 6 on every admin route: with `admin_key`, no key or a wrong key
//! is 401 and the key works as `X-Admin-Key` or Bearer (from any address); without `admin_key`,
//! loopback clients are answered and every other address gets 403. The non-loopback cases use
//! a real connection from this machine's own non-loopback address.

mod common;

use common::mock::MockUpstream;
use std::net::{IpAddr, SocketAddr};
use stockyard::config::load::{load_str, Env};
use stockyard::server::{start, Running};

/// Every admin route, with its method. `/ui` is deliberately absent: the page holds no data.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/proxy/providers"),
    ("GET", "/api/proxy/breakers"),
    ("POST", "/api/proxy/breakers/reset"),
    ("POST", "/api/proxy/breakers/a/reset"),
    ("GET", "/api/proxy/route?model=m"),
    ("GET", "/api/traces"),
    ("GET", "/api/traces/spend"),
    ("GET", "/api/traces/tr_0000000000000000"),
    ("POST", "/api/proxy/reload"),
    ("GET", "/metrics"),
];

/// This machine's address on its default route (no packet is sent by a UDP `connect`).
fn non_loopback_ip() -> IpAddr {
    for target in ["192.0.2.1:9", "10.255.255.254:9", "203.0.113.1:9"] {
        let Ok(s) = std::net::UdpSocket::bind("0.0.0.0:0") else {
            continue;
        };
        if s.connect(target).is_ok() {
            if let Ok(a) = s.local_addr() {
                if !a.ip().is_loopback() && !a.ip().is_unspecified() {
                    return a.ip();
                }
            }
        }
    }
    panic!("this test needs a non-loopback IPv4 address on the machine");
}

async fn serve(yaml: &str) -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::from_pairs([
        ("HOME", "/tmp".to_string()),
        ("STOCKYARD_DATA_DIR", dir.path().display().to_string()),
    ]);
    let cfg = load_str(yaml, "t.yaml", &env).unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    (start(cfg, Some(listener)).await.unwrap(), dir)
}

async fn call(
    client: &reqwest::Client,
    base: SocketAddr,
    method: &str,
    path: &str,
    header: Option<(&str, &str)>,
) -> u16 {
    let url = format!("http://{base}{path}");
    let mut rb = match method {
        "POST" => client.post(&url),
        _ => client.get(&url),
    };
    if let Some((k, v)) = header {
        rb = rb.header(k, v);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    if status == 401 || status == 403 {
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(
            v["error"]["message"].is_string(),
            "{method} {path}: auth errors are OpenAI-shaped, got {v}"
        );
    }
    status
}

fn yaml(upstream: &str, extra: &str) -> String {
    format!(
        "{extra}allow_unauthenticated: true\nproviders:\n  - {{name: a, kind: openai-compatible, base_url: \"{upstream}\"}}\n"
    )
}

#[tokio::test]
async fn with_an_admin_key_every_route_needs_it() {
    let up = MockUpstream::start().await;
    let (running, _dir) = serve(&yaml(&up.url(), "admin_key: adm-key-123\n")).await;
    let client = reqwest::Client::new();
    let port = running.addr.port();
    for host in [IpAddr::from([127, 0, 0, 1]), non_loopback_ip()] {
        let base = SocketAddr::new(host, port);
        for (m, path) in ROUTES {
            let none = call(&client, base, m, path, None).await;
            assert_eq!(none, 401, "{m} {path} from {host} without a key");
            let wrong = call(&client, base, m, path, Some(("x-admin-key", "adm-key-12"))).await;
            assert_eq!(wrong, 401, "{m} {path} from {host} with a wrong key");
            let wrong_bearer = call(
                &client,
                base,
                m,
                path,
                Some(("authorization", "Bearer adm-key-1234")),
            )
            .await;
            assert_eq!(wrong_bearer, 401, "{m} {path} from {host} wrong bearer");
            for h in [
                ("x-admin-key", "adm-key-123"),
                ("authorization", "Bearer adm-key-123"),
            ] {
                let ok = call(&client, base, m, path, Some(h)).await;
                assert!(
                    ok != 401 && ok != 403 && ok < 500,
                    "{m} {path} from {host} with {h:?}: {ok}"
                );
            }
        }
    }
    // The proxy routes and liveness are not admin routes.
    let base = SocketAddr::new(non_loopback_ip(), port);
    assert_eq!(call(&client, base, "GET", "/health", None).await, 200);
    assert_eq!(call(&client, base, "GET", "/ui", None).await, 200);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn without_an_admin_key_only_loopback_is_answered() {
    let up = MockUpstream::start().await;
    let (running, _dir) = serve(&yaml(&up.url(), "")).await;
    let client = reqwest::Client::new();
    let port = running.addr.port();
    let local = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port);
    let remote = SocketAddr::new(non_loopback_ip(), port);
    for (m, path) in ROUTES {
        let s = call(&client, local, m, path, None).await;
        assert!(
            s != 401 && s != 403 && s < 500,
            "{m} {path} from loopback: {s}"
        );
        let s = call(&client, remote, m, path, None).await;
        assert_eq!(s, 403, "{m} {path} from a non-loopback address");
        // A key offered when none is configured changes nothing.
        let s = call(&client, remote, m, path, Some(("x-admin-key", "guess"))).await;
        assert_eq!(s, 403, "{m} {path} from a non-loopback address with a key");
    }
    // The proxy itself still answers remote clients (allow_unauthenticated).
    let r = client
        .post(format!("http://{remote}/v1/chat/completions"))
        .json(&common::chat_body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    running.shutdown().await.unwrap();
}
