//! The `stockyard` binary: check, route, init, --version, and serving with the built-in default.

mod common;

use common::mock::MockUpstream;
use common::{chat_body, closed_port};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_stockyard");

/// The binary with a clean environment (no provider keys leak in from the machine).
fn cmd(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir);
    c
}

fn run(dir: &Path, args: &[&str]) -> Output {
    cmd(dir).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn version() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(dir.path(), &["--version"]);
    assert!(o.status.success());
    assert_eq!(
        text(&o.stdout).trim(),
        format!("stockyard {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn init_writes_a_starter_that_passes_check_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(dir.path(), &["init"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let written = std::fs::read_to_string(dir.path().join("stockyard.yaml")).unwrap();
    let o = run(dir.path(), &["check"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.starts_with("stockyard.yaml: ok"), "{out}");
    assert!(
        out.contains("aliases:") && out.contains("private (local only):"),
        "{out}"
    );
    std::fs::write(dir.path().join("stockyard.yaml"), "listen: 127.0.0.1:1\n").unwrap();
    let o = run(dir.path(), &["init"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("already exists"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("stockyard.yaml")).unwrap(),
        "listen: 127.0.0.1:1\n"
    );
    assert!(written.contains("${OPENAI_API_KEY:-}"));
}

/// `check` on a broken file: `file:line:col: message` on stderr and exit 1.
#[test]
fn check_reports_file_line_col() {
    let cases: &[(&str, &str)] = &[
        ("providers:\n  - name: a\n    kind: openai\n   bad: [\n", "bad.yaml:4:"),
        ("providers:\n  - name: openai\n    priorty: 1\n", "bad.yaml:3:5: providers[0]: unknown key `priorty` (did you mean `priority`?)"),
        ("listn: 127.0.0.1:4200\n", "bad.yaml:1:1: unknown key `listn` (did you mean `listen`?)"),
        ("providers:\n  - name: openai\n    priority: high\n", "bad.yaml:3:15: providers[0].priority: invalid type: string \"high\""),
        ("providers:\n  - name: openai\n    timeouts: {connect: 5 seconds}\n", "bad.yaml:3:25: providers[0].timeouts.connect: invalid duration `5 seconds`"),
        ("providers:\n  - name: openai\n    timeouts:\n      total: 30\n", "bad.yaml:4:14: providers[0].timeouts.total: durations need a unit"),
        ("providers:\n  - name: openai\n  - name: groq\n  - name: openai\n", "bad.yaml:4:11: duplicate provider name `openai`"),
        ("providers:\n  - name: openai\nmodel_alias:\n  aliases:\n    smart: anthropic/claude-x\n", "bad.yaml:5:12: alias `smart`: target `anthropic/claude-x` points at unknown provider `anthropic`"),
        ("providers:\n  - name: openai\n    api_key: ${MISSING_KEY}\n", "bad.yaml:3:14: environment variable `MISSING_KEY` is not set"),
        ("providers:\n  - name: x\n    kind: olama\n", "bad.yaml:3:11: unknown provider kind `olama` (did you mean `ollama`?)"),
        ("failover:\n  providers: [opena]\nproviders:\n  - name: openai\n", "bad.yaml:2:15: unknown provider `opena` (did you mean `openai`?)"),
        ("listen: 0.0.0.0:4200\n", "bad.yaml:1:9: refusing to listen on 0.0.0.0:4200 without `api_keys`"),
        ("max_body_size: lots\n", "bad.yaml:1:16: max_body_size: invalid size `lots`"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (yaml, want) in cases {
        std::fs::write(dir.path().join("bad.yaml"), yaml).unwrap();
        let o = run(dir.path(), &["check", "-c", "bad.yaml"]);
        assert_eq!(o.status.code(), Some(1), "{yaml}");
        let err = text(&o.stderr);
        assert!(
            err.starts_with(want),
            "for\n{yaml}\nwanted `{want}`\ngot    `{err}`"
        );
        assert!(o.stdout.is_empty());
    }
    // Non-loopback with keys, or explicitly allowed, is fine.
    std::fs::write(
        dir.path().join("ok.yaml"),
        "listen: 0.0.0.0:4200\nallow_unauthenticated: true\n",
    )
    .unwrap();
    assert!(run(dir.path(), &["check", "-c", "ok.yaml"])
        .status
        .success());
    let o = run(dir.path(), &["check", "-c", "missing.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).starts_with("missing.yaml: cannot read config file"));
}

#[test]
fn check_and_route_on_the_example_configs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    for entry in std::fs::read_dir(root.join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            n += 1;
            let o = run(dir.path(), &["check", "-c", path.to_str().unwrap()]);
            assert!(
                o.status.success(),
                "{}: {}",
                path.display(),
                text(&o.stderr)
            );
        }
    }
    assert!(n >= 3, "config/ holds the example configs");
    let seed = root.join("config/local-first.yaml");
    let o = run(
        dir.path(),
        &["route", "gpt-4o", "-c", seed.to_str().unwrap()],
    );
    assert!(o.status.success());
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("route for `gpt-4o`"), "{out}");
    assert!(
        lines[1].contains("openai") && lines[1].contains(" 1. "),
        "natural provider first:\n{out}"
    );
}

#[test]
fn route_shows_skip_reasons() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("stockyard.yaml"),
        "providers:\n  - {name: ollama, priority: 1}\n  - {name: groq, api_key: k, models: [\"llama*\"], priority: 2}\n  - {name: openai, api_key: k, priority: 3}\nmodel_alias:\n  aliases:\n    private: {targets: [ollama/qwen2], local_only: true}\n",
    )
    .unwrap();
    let o = run(dir.path(), &["route", "gpt-4o"]);
    let out = text(&o.stdout);
    assert!(
        out.contains(" 1. openai")
            && out.contains("groq")
            && out.contains("skipped: model_unsupported"),
        "{out}"
    );
    let o = run(dir.path(), &["route", "private"]);
    let out = text(&o.stdout);
    assert!(
        out.contains("(alias of ollama/qwen2) [local only]"),
        "{out}"
    );
    assert!(out.contains("skipped: not_local"), "{out}");
    assert!(out.contains(" 1. ollama"), "{out}");
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("server did not start listening on {port}");
}

#[tokio::test]
async fn built_in_default_routes_to_local_ollama_and_fails_cleanly_with_nothing_up() {
    let ollama = MockUpstream::start().await;
    ollama.set_models(&["llama3:latest"]);
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let server = Server(
        cmd(dir.path())
            .env("PORT", port.to_string())
            .env("OLLAMA_HOST", ollama.root())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(port);
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let r = client
        .post(&url)
        .json(&chat_body("llama3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-stockyard-provider"], "ollama");
    assert_eq!(ollama.hits(), 1);
    drop(server);

    // Nothing running locally and no cloud keys: a prompt all_providers_failed, no hang.
    let port = closed_port();
    let _server = Server(
        cmd(dir.path())
            .env("PORT", port.to_string())
            .env("OLLAMA_HOST", format!("127.0.0.1:{}", closed_port()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(port);
    let t = Instant::now();
    let r = client
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .json(&chat_body("llama3"))
        .send()
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "all_providers_failed");
    assert_eq!(v["error"]["attempts"][0]["provider"], "ollama");
    assert_eq!(v["error"]["attempts"][0]["reason"], "connect_error");
}

#[test]
fn serve_refuses_an_invalid_config_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stockyard.yaml"), "listen: 0.0.0.0:4200\n").unwrap();
    let o = run(dir.path(), &["serve"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).starts_with("stockyard.yaml:1:9: refusing to listen"));
}
