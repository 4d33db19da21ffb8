//! The Lookout dashboard (`GET /ui`) in a real headless Chromium, driven over the DevTools
//! protocol: it asks for the admin key, shows the providers and the traces produced by the test,
//! opens a trace's attempts, filters, and a breaker reset from the page closes the breaker.
//!
//! Needs `/usr/bin/chromium` (Debian's `chromium` package; `.ci/run` installs it) or `$CHROMIUM`.
//! Set `LOOKOUT_SCREENSHOT=/path.png` to save a full-page screenshot.

mod common;

use common::mock::{MockUpstream, Step};
use common::{hdr, Proxy};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const ADMIN_KEY: &str = "adm-test";

/// A headless Chromium process, killed on drop.
struct Chromium {
    child: Child,
    ws_url: String,
    _profile: tempfile::TempDir,
}

impl Chromium {
    fn launch() -> Chromium {
        let path = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            std::path::Path::new(&path).exists(),
            "headless Chromium not found at {path}: the dashboard test needs it \
             (apt-get install -y chromium, as .ci/run does, or set CHROMIUM=/path/to/chromium)"
        );
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(&path)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-default-apps",
                "--no-first-run",
                "--no-default-browser-check",
                "--mute-audio",
                "--window-size=1400,1000",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {path}: {e}"));
        // Chromium prints `DevTools listening on ws://…` on stderr; keep draining it afterwards so
        // it never blocks on a full pipe.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut seen = Vec::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find("ws://") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line[at..].trim().to_string());
                    }
                } else if tx.is_some() && seen.len() < 50 {
                    seen.push(line);
                }
            }
            if let Some(tx) = tx {
                let _ = tx.send(format!("EXIT\n{}", seen.join("\n")));
            }
        });
        let ws_url = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("Chromium did not print its DevTools URL within 15 s");
        assert!(
            ws_url.starts_with("ws://"),
            "Chromium exited before listening: {ws_url}"
        );
        Chromium {
            child,
            ws_url,
            _profile: profile,
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal DevTools-protocol client over the browser websocket, attached (flattened) to one page.
struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next: u64,
    session: Option<String>,
    /// Uncaught page exceptions and console/security errors seen so far.
    problems: Vec<String>,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("DevTools websocket {url}: {e}"));
        Cdp {
            ws,
            next: 0,
            session: None,
            problems: Vec::new(),
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params).await {
            Ok(v) => v,
            Err(e) => panic!("{method} failed: {e}"),
        }
    }

    /// [`Cdp::call`], with a DevTools error returned instead of panicking.
    async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => panic!("no answer to {method} within 15 s"),
                Ok(None) => panic!("DevTools connection closed during {method}"),
                Ok(Some(Err(e))) => panic!("DevTools websocket error during {method}: {e}"),
                Ok(Some(Ok(m))) => m,
            };
            let Ok(text) = frame.to_text() else { continue };
            let Ok(v) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            if v["id"].as_u64() == Some(id) {
                if let Some(e) = v.get("error") {
                    return Err(e.clone());
                }
                return Ok(v["result"].clone());
            }
            self.event(&v);
        }
    }

    fn event(&mut self, v: &Value) {
        match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let d = &v["params"]["exceptionDetails"];
                self.problems.push(format!(
                    "exception: {} {}",
                    d["text"].as_str().unwrap_or(""),
                    d["exception"]["description"].as_str().unwrap_or("")
                ));
            }
            Some("Log.entryAdded") => {
                let e = &v["params"]["entry"];
                // The expected 401 of the first, keyless call is logged as a network error.
                if e["level"] == "error" && e["source"] != "network" {
                    self.problems
                        .push(format!("{}: {}", e["source"], e["text"]));
                }
            }
            Some("Runtime.consoleAPICalled") if v["params"]["type"] == "error" => {
                self.problems
                    .push(format!("console.error: {}", v["params"]["args"]));
            }
            _ => {}
        }
    }

    /// Evaluates `expr` in the page (promises awaited) and returns its JSON value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(d) = r.get("exceptionDetails") {
            panic!("page script failed: {d}\n{expr}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it returns something truthy.
    async fn wait_for(&mut self, what: &str, expr: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let params = json!({"expression": expr, "returnByValue": true, "awaitPromise": true});
            let v = match self.try_call("Runtime.evaluate", params).await {
                Ok(r) => {
                    if let Some(d) = r.get("exceptionDetails") {
                        panic!("page script failed: {d}\n{expr}");
                    }
                    r["result"]["value"].clone()
                }
                // The page is (re)loading: its old context is gone; ask again.
                Err(e)
                    if e["message"].as_str().is_some_and(|m| {
                        m.contains("navigated or closed")
                            || m.contains("context was destroyed")
                            || m.contains("Cannot find context")
                    }) =>
                {
                    Value::Null
                }
                Err(e) => panic!("Runtime.evaluate failed: {e}"),
            };
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let body = self
                    .eval("document.body ? document.body.innerText.slice(0, 3000) : ''")
                    .await;
                panic!(
                    "timed out waiting for {what}\nlast value: {v}\npage text:\n{}",
                    body.as_str().unwrap_or("")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a full-page PNG (the viewport is grown to the page height for the shot).
    async fn screenshot(&mut self, path: &str) {
        let height = self
            .eval("window.scrollTo(0, 0); Math.max(1000, document.documentElement.scrollHeight)")
            .await;
        let metrics = |h: &Value| json!({"width": 1400, "height": h, "deviceScaleFactor": 1, "mobile": false});
        self.call("Emulation.setDeviceMetricsOverride", metrics(&height))
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        std::fs::write(path, base64_decode(shot["data"].as_str().unwrap())).unwrap();
        self.call("Emulation.setDeviceMetricsOverride", metrics(&json!(1000)))
            .await;
    }

    /// A real mouse click in the middle of the element matching `selector`.
    async fn click(&mut self, selector: &str) {
        let sel = serde_json::to_string(selector).unwrap();
        let rect = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({sel}); if (!e) return null; \
                 e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
                 return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
            ))
            .await;
        let (x, y) = match rect.as_array() {
            Some(a) => (a[0].as_f64().unwrap(), a[1].as_f64().unwrap()),
            None => panic!("nothing to click at {selector}"),
        };
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            )
            .await;
        }
    }
}

async fn admin_get(p: &Proxy, path: &str) -> Value {
    let r = p
        .client
        .get(format!("{}{path}", p.url))
        .header("x-admin-key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

async fn admin_breaker(p: &Proxy, name: &str) -> String {
    let v = admin_get(p, "/api/proxy/breakers").await;
    v["breakers"][name]["state"]
        .as_str()
        .unwrap_or("?")
        .to_string()
}

/// Trace ids (newest first) the admin API returns for a filter query.
async fn admin_ids(p: &Proxy, query: &str) -> Vec<String> {
    let v = admin_get(p, &format!("/api/traces?{query}")).await;
    v["traces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

/// JS: the ids of the trace table rows, in order.
const ROW_IDS: &str =
    "[...document.querySelectorAll('#traces tbody tr[data-id]')].map(r => r.dataset.id)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium_shows_state_and_resets_a_breaker() {
    let started = Instant::now();
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.set_models(&["gpt-4o", "gpt-4o-mini"]);
    a.set_default(Step::status(500));
    let p = Proxy::start(&format!(
        "admin_key: {ADMIN_KEY}\n\
         failover:\n  circuit_breaker: {{failure_threshold: 1, recovery_timeout: 10m}}\n\
         providers:\n  \
         - {{name: a, kind: openai-compatible, base_url: \"{}\", priority: 1, local: true}}\n  \
         - {{name: b, kind: openai-compatible, base_url: \"{}\", priority: 2, local: false}}\n",
        a.url(),
        b.url()
    ))
    .await;

    // Traffic: a fails with 500 and its circuit opens (threshold 1); b serves; one final error.
    let mut ids = Vec::new();
    let r = p.chat("gpt-4o").await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-failover"), "true");
    let failover_id = hdr(&r, "x-stockyard-trace-id");
    ids.push(failover_id.clone());
    for model in ["gpt-4o", "gpt-4o-mini", "gpt-4o-mini"] {
        let r = p.chat(model).await;
        assert_eq!(r.status(), 200);
        ids.push(hdr(&r, "x-stockyard-trace-id"));
    }
    b.push(Step::status(400));
    let r = p.chat("gpt-4o").await;
    assert_eq!(r.status(), 400);
    let error_id = hdr(&r, "x-stockyard-trace-id");
    ids.push(error_id.clone());
    assert!(ids.iter().all(|i| i.starts_with("tr_")), "{ids:?}");
    p.flush().await;
    assert_eq!(admin_breaker(&p, "a").await, "open");

    // The page is served without a key; the API is not.
    let r = p.client.get(format!("{}/ui", p.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "content-type"), "text/html; charset=utf-8");
    assert_eq!(hdr(&r, "cache-control"), "no-cache");
    let csp = hdr(&r, "content-security-policy");
    assert!(
        csp.contains("default-src 'self'") && csp.contains("script-src 'self' 'unsafe-inline'"),
        "{csp}"
    );
    let html = r.text().await.unwrap();
    assert!(html.contains("id=\"key-form\"") && !html.contains("://cdn"));
    let r = p.client.get(format!("{}/ui/", p.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (s, _) = p.get_json("/api/proxy/providers").await;
    assert_eq!(s, 401);

    let browser = Chromium::launch();
    let mut cdp = Cdp::connect(&browser.ws_url).await;
    let target = cdp
        .call("Target.createTarget", json!({"url": "about:blank"}))
        .await;
    let attached = cdp
        .call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        )
        .await;
    cdp.session = Some(attached["sessionId"].as_str().unwrap().to_string());
    for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
        cdp.call(domain, json!({})).await;
    }
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
    )
    .await;
    cdp.call("Page.navigate", json!({"url": format!("{}/ui", p.url)}))
        .await;

    // Without a key the API answers 401 and the page asks for the key with its form.
    let t = Duration::from_secs(15);
    cdp.wait_for(
        "the admin key form",
        "(() => { const f = document.querySelector('#key-form'); return !!f && !f.hidden \
         && !!document.querySelector('#key-form input') && !!document.querySelector('#key-form button'); })()",
        t,
    )
    .await;
    assert_eq!(
        cdp.eval("document.querySelectorAll('#providers .provider').length")
            .await,
        0
    );
    cdp.click("#key-form input").await;
    cdp.call("Input.insertText", json!({"text": ADMIN_KEY}))
        .await;
    cdp.click("#key-form button").await;

    // Providers with live circuit state.
    let state_of = |name: &str| {
        format!(
            "(() => {{ const e = document.querySelector('#providers .provider[data-name=\"{name}\"] .state'); \
             return e ? e.textContent : ''; }})()"
        )
    };
    cdp.wait_for(
        "provider a shown open",
        &format!("{} === 'open'", state_of("a")),
        t,
    )
    .await;
    assert_eq!(cdp.eval(&state_of("b")).await, "closed");
    assert!(cdp.eval("document.querySelector('#key-form').hidden").await == true);
    assert_eq!(
        cdp.eval("sessionStorage.getItem('stockyard.lookout.adminKey')")
            .await,
        ADMIN_KEY
    );
    let card_a = cdp
        .eval(
            "(() => { const c = document.querySelector('#providers .provider[data-name=\"a\"]'); \
             return {failures: c.querySelector('.failures').textContent, \
                     where: c.querySelector('.badge.local, .badge.cloud').textContent, \
                     reset: !!c.querySelector('button.reset')}; })()",
        )
        .await;
    assert_eq!(
        card_a,
        json!({"failures": "1", "where": "local", "reset": true})
    );

    // Every trace of the test is in the table.
    let ids_js = serde_json::to_string(&ids).unwrap();
    cdp.wait_for(
        "all test traces in the table",
        &format!(
            "{ids_js}.every(id => !!document.querySelector('#traces tbody tr[data-id=\"' + id + '\"]'))"
        ),
        t,
    )
    .await;
    assert_eq!(
        cdp.eval("document.querySelectorAll('#traces tbody tr[data-id]').length")
            .await,
        json!(ids.len())
    );
    // Charts drew the traffic; spend counted it.
    cdp.wait_for(
        "charts and spend",
        "document.querySelectorAll('#chart-rate rect').length >= 1 \
         && document.querySelectorAll('#chart-local rect').length >= 1 \
         && document.querySelectorAll('#chart-errors rect').length >= 1 \
         && document.querySelector('#spend-requests').textContent === '5'",
        t,
    )
    .await;

    // Filters: failover only, then errors only; the rows match what the API filters give.
    let failover_ids = admin_ids(&p, "failover=true").await;
    assert!(failover_ids.contains(&failover_id), "{failover_ids:?}");
    let error_ids = admin_ids(&p, "status=error").await;
    assert_eq!(error_ids, vec![error_id.clone()]);
    cdp.click("#filter-failover").await;
    cdp.wait_for(
        "failover-only rows",
        &format!(
            "JSON.stringify({ROW_IDS}) === {:?}",
            serde_json::to_string(&failover_ids).unwrap()
        ),
        t,
    )
    .await;
    // Detail view of the first request's attempts.
    cdp.click(&format!("#traces tbody tr[data-id=\"{failover_id}\"]"))
        .await;
    // The table re-renders on every refresh; a click that landed on a row just replaced is
    // repeated until the detail view opens.
    let attempts = cdp
        .wait_for(
            "trace detail with attempts",
            &format!(
                "(() => {{ const d = document.querySelector('#trace-detail'); \
                 if (d.hidden) {{ const r = document.querySelector('#traces tbody tr[data-id=\"{failover_id}\"]'); \
                   if (r) r.click(); return null; }} \
                 if (!d.hasAttribute('data-loaded')) return null; \
                 return [...d.querySelectorAll('.attempts tbody tr')].map(r => \
                   [r.dataset.provider, r.dataset.outcome]); }})()"
            ),
            t,
        )
        .await;
    assert_eq!(attempts, json!([["a", "failed"], ["b", "ok"]]));
    if let Ok(path) = std::env::var("LOOKOUT_SCREENSHOT") {
        cdp.screenshot(&path.replace(".png", "-detail.png")).await;
    }
    cdp.click("#trace-detail-close").await;
    cdp.click("#filter-failover").await;
    cdp.click("#filter-errors").await;
    cdp.wait_for(
        "errors-only rows",
        &format!(
            "JSON.stringify({ROW_IDS}) === {:?}",
            serde_json::to_string(&error_ids).unwrap()
        ),
        t,
    )
    .await;
    cdp.click("#filter-errors").await;
    cdp.wait_for(
        "unfiltered rows again",
        &format!(
            "document.querySelectorAll('#traces tbody tr[data-id]').length === {}",
            ids.len()
        ),
        t,
    )
    .await;

    if let Ok(path) = std::env::var("LOOKOUT_SCREENSHOT") {
        cdp.screenshot(&path).await;
    }

    // Reset a's breaker from the page: the live breaker closes.
    cdp.click("#providers .provider[data-name=\"a\"] .reset")
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while admin_breaker(&p, "a").await != "closed" {
        assert!(
            Instant::now() < deadline,
            "breaker a still open after clicking Reset"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(p.breaker("a"), ("closed".to_string(), 0));
    cdp.wait_for(
        "provider a shown closed",
        &format!("{} === 'closed'", state_of("a")),
        t,
    )
    .await;

    // A stale key is rejected: the page asks again, saying why.
    cdp.eval(
        "sessionStorage.setItem('stockyard.lookout.adminKey', 'wrong'); location.reload(); true",
    )
    .await;
    cdp.wait_for(
        "the key form again after a rejected key",
        "(() => { const f = document.querySelector('#key-form'), e = document.querySelector('#key-error'); \
         return !!f && !f.hidden && !!e && !e.hidden && e.textContent.includes('rejected'); })()",
        t,
    )
    .await;

    assert!(cdp.problems.is_empty(), "page errors: {:#?}", cdp.problems);
    drop(cdp);
    drop(browser);
    p.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

/// Standard base64 (the screenshot payload), without pulling in a crate for it.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => 0,
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let pads = chunk.iter().filter(|&&c| c == b'=').count();
        let n = chunk.iter().fold(0u32, |acc, &c| (acc << 6) | val(c)) << (6 * (4 - chunk.len()));
        let b = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&b[..3 - pads.max(4 - chunk.len())]);
    }
    out
}
