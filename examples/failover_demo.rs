//! Failover, live: two mock providers, Stockyard in front of them, and the first provider dying.
//!
//! ```text
//! cargo run --release --example failover_demo
//! ```
//!
//! Needs no API keys and no LLM server: both "providers" are tiny OpenAI-compatible servers
//! started inside this program on 127.0.0.1 (random free ports), and Stockyard runs in the same
//! process with a temporary trace database. The demo
//!
//! 1. sends requests while both providers are up (they go to `provider-a`, priority 1);
//! 2. kills `provider-a`: its port now refuses connections;
//! 3. sends more requests: each one tries `provider-a`, fails to connect and moves on to
//!    `provider-b` without the client noticing; after 3 failures in a row `provider-a`'s circuit
//!    opens and it is skipped without a network call;
//! 4. prints the breaker state (`GET /api/proxy/breakers`) and the trace table (the same table
//!    `stockyard traces` prints).
//!
//! It finishes in a second or two once built.

use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::error::Error;
use std::time::{Duration, Instant};
use stockyard::config::load::{load_str, Env};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// The model the demo asks for. Neither provider is its "natural" owner, so the chain is simply
/// the providers by priority: provider-a, then provider-b.
const MODEL: &str = "demo-model";

#[tokio::main]
async fn main() {
    if let Err(e) = run(&mut Printer::stdout()).await {
        eprintln!("failover demo failed: {e}");
        std::process::exit(1);
    }
}

/// Prints each line as it comes, and keeps a copy (the test reads it).
struct Printer {
    echo: bool,
    text: String,
}

impl Printer {
    fn stdout() -> Printer {
        Printer {
            echo: true,
            text: String::new(),
        }
    }

    fn say(&mut self, line: impl AsRef<str>) {
        let line = line.as_ref();
        if self.echo {
            println!("{line}");
        }
        self.text.push_str(line);
        self.text.push('\n');
    }
}

async fn run(out: &mut Printer) -> Res<()> {
    let started = Instant::now();

    // 1. Two mock providers and Stockyard.
    out.say("== 1. Two local mock providers and Stockyard in front of them ==");
    let provider_a = MockProvider::start("provider-a").await?;
    let provider_b = MockProvider::start("provider-b").await?;
    let data_dir = tempfile::tempdir()?;
    let yaml = format!(
        r#"
data_dir: "{dir}"
providers:
  - name: provider-a
    kind: openai-compatible
    base_url: {a}
    priority: 1
    local: false        # on 127.0.0.1 but standing in for a paid cloud API
  - name: provider-b
    kind: openai-compatible
    base_url: {b}
    priority: 2
    local: false
failover:
  circuit_breaker: {{failure_threshold: 3, recovery_timeout: 30s}}
pricing:
  {MODEL}: {{input: 2.5, output: 10}}   # USD per 1M tokens
"#,
        dir = data_dir.path().display(),
        a = provider_a.base_url,
        b = provider_b.base_url,
    );
    let config = load_str(
        &yaml,
        "failover-demo.yaml",
        &Env::from_pairs([("HOME", "/tmp")]),
    )?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let proxy = stockyard::server::start(config, Some(listener)).await?;
    let stockyard_url = format!("http://{}", proxy.addr);
    out.say(format!("provider-a  {}  (priority 1)", provider_a.base_url));
    out.say(format!("provider-b  {}  (priority 2)", provider_b.base_url));
    out.say(format!("stockyard   {stockyard_url}/v1"));
    out.say("");

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let demo = Demo {
        client,
        url: stockyard_url,
        proxy: &proxy,
    };

    // 2. Both up.
    out.say("== 2. Both providers up: requests go to provider-a (priority 1) ==");
    let mut n = 0;
    for _ in 0..3 {
        n += 1;
        demo.request(n, out).await?;
    }
    out.say("");

    // 3. Kill provider-a.
    out.say("== 3. Killing provider-a ==");
    provider_a.kill().await;
    out.say("provider-a stopped: its port now refuses connections");
    out.say("");

    // 4. Failover, then the circuit opens.
    out.say("== 4. The same requests now move to provider-b; after 3 failures provider-a's circuit opens ==");
    for _ in 0..5 {
        n += 1;
        demo.request(n, out).await?;
    }
    out.say("");

    // 5. Breakers.
    out.say("== 5. Circuit breakers: GET /api/proxy/breakers ==");
    let breakers = demo.get_json("/api/proxy/breakers").await?;
    out.say(serde_json::to_string_pretty(&breakers)?);
    out.say("");

    // 6. Trace table.
    out.say("== 6. Traces: the table `stockyard traces` prints (newest first) ==");
    proxy.flush_traces().await;
    let traces = demo.get_json("/api/traces?limit=20").await?;
    let rows = traces["traces"].as_array().cloned().unwrap_or_default();
    out.say(stockyard::cli::traces_table(&rows).trim_end());
    out.say("");

    out.say(format!(
        "Done in {} ms. Every request got a 200; no client saw provider-a die.",
        started.elapsed().as_millis()
    ));
    proxy.shutdown().await?;
    provider_b.kill().await;
    Ok(())
}

/// The demo's view of Stockyard: sends requests and reads the admin API, like any client.
struct Demo<'a> {
    client: reqwest::Client,
    url: String,
    proxy: &'a stockyard::server::Running,
}

impl Demo<'_> {
    /// Sends one chat completion and prints who answered, how, and provider-a's circuit.
    async fn request(&self, n: u32, out: &mut Printer) -> Res<()> {
        let resp = self
            .client
            .post(format!("{}/v1/chat/completions", self.url))
            .json(&json!({
                "model": MODEL,
                "messages": [{"role": "user", "content": "Say hello"}],
            }))
            .send()
            .await?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        let provider = header("x-stockyard-provider");
        let failover = header("x-stockyard-failover");
        let trace_id = header("x-stockyard-trace-id");
        let body: Value = resp.json().await?;
        let answer = body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("(no answer)")
            .to_string();

        // The trace records every provider considered, and why it was passed over.
        self.proxy.flush_traces().await;
        let trace = self.get_json(&format!("/api/traces/{trace_id}")).await?;
        let path: Vec<String> = trace["attempts"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|a| {
                let who = a["provider"].as_str().unwrap_or("?");
                match (a["outcome"].as_str(), a["reason"].as_str()) {
                    (Some("ok"), _) => format!("{who} ok"),
                    (Some(outcome), Some(reason)) => format!("{who} {outcome} ({reason})"),
                    (Some(outcome), None) => format!("{who} {outcome}"),
                    _ => who.to_string(),
                }
            })
            .collect();
        let breakers = self.get_json("/api/proxy/breakers").await?;
        let a = &breakers["breakers"]["provider-a"];
        out.say(format!(
            "request {n}: {status} from {provider:<10} failover={failover:<5} answer={answer:?}",
        ));
        out.say(format!(
            "           path: {:<52} provider-a circuit: {} ({})",
            path.join(" -> "),
            a["state"].as_str().unwrap_or("?"),
            match a["failures"].as_u64().unwrap_or(0) {
                1 => "1 failure".to_string(),
                f => format!("{f} failures"),
            },
        ));
        Ok(())
    }

    async fn get_json(&self, path: &str) -> Res<Value> {
        let resp = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await?;
        Ok(resp.error_for_status()?.json().await?)
    }
}

/// A minimal OpenAI-compatible server: `POST /v1/chat/completions` answers
/// "Hello from <name>", `GET /v1/models` lists the demo model.
struct MockProvider {
    base_url: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl MockProvider {
    async fn start(name: &'static str) -> Res<MockProvider> {
        let app = Router::new()
            .route(
                "/v1/chat/completions",
                post(move |Json(req): Json<Value>| async move {
                    let model = req["model"].as_str().unwrap_or(MODEL).to_string();
                    Json(json!({
                        "id": format!("chatcmpl-{name}"),
                        "object": "chat.completion",
                        "created": 1_700_000_000,
                        "model": model,
                        "choices": [{
                            "index": 0,
                            "message": {"role": "assistant", "content": format!("Hello from {name}")},
                            "finish_reason": "stop",
                        }],
                        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
                    }))
                }),
            )
            .route(
                "/v1/models",
                get(|| async {
                    Json(json!({"object": "list", "data": [{"id": MODEL, "object": "model"}]}))
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}/v1", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(MockProvider {
            base_url,
            stop,
            task,
        })
    }

    /// Stops the server and closes its listener and connections: from now on its port refuses
    /// connections, as when a real server process dies.
    async fn kill(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the whole demo (quietly) and checks the story it tells.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_shows_failover_circuit_and_traces() {
        let mut out = Printer {
            echo: false,
            text: String::new(),
        };
        let t = Instant::now();
        run(&mut out)
            .await
            .unwrap_or_else(|e| panic!("demo failed: {e}\n{}", out.text));
        let text = out.text;
        println!("{text}");
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "demo too slow\n{text}"
        );

        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("request ")).collect();
        assert_eq!(lines.len(), 8, "{text}");
        for l in &lines[..3] {
            assert!(
                l.contains("200 from provider-a") && l.contains("failover=false"),
                "{l}"
            );
        }
        for l in &lines[3..] {
            assert!(
                l.contains("200 from provider-b") && l.contains("failover=true"),
                "{l}"
            );
            assert!(l.contains("Hello from provider-b"), "{l}");
        }
        // Paths: three connection failures, then instant skips once the circuit is open.
        let paths: Vec<&str> = text.lines().filter(|l| l.contains("path:")).collect();
        for p in &paths[3..6] {
            assert!(
                p.contains("provider-a failed") && p.contains("provider-b ok"),
                "{p}"
            );
        }
        assert!(paths[5].contains("circuit: open"), "{}", paths[5]);
        for p in &paths[6..] {
            assert!(p.contains("provider-a skipped (circuit_open)"), "{p}");
        }
        // The breakers JSON and the trace table.
        assert!(text.contains("\"provider-a\": {"), "{text}");
        assert!(text.contains("\"state\": \"open\""), "{text}");
        assert!(text.contains("ID ") && text.contains("PROVIDER"), "{text}");
        assert_eq!(text.matches("provider-b*").count(), 5, "{text}");
        assert!(text.contains("* = failed over"), "{text}");
    }
}
