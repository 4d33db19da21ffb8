//! The client examples in `examples/` run against Stockyard in front of mock upstreams:
//! `examples/python/chat.py` (official `openai` Python SDK, always) and `examples/node/chat.mjs`
//! (official `openai` npm package, when `node` is installed and the package can be installed).

mod common;

use common::mock::{MockUpstream, Step};
use common::{two, Proxy};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Two mocks behind Stockyard; the first answers 503 once, so the plain request fails over to
/// `b` and the streaming one (made after it) is answered by `a`.
async fn setup() -> (MockUpstream, MockUpstream, Proxy) {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    a.set_default(Step::ok_chat("Hello from a"));
    b.set_default(Step::ok_chat("Hello from b"));
    a.push(Step::status(503));
    let p = Proxy::start(&two(&a.url(), &b.url(), "", "")).await;
    (a, b, p)
}

/// Runs a program with the example's environment, killed if it outlives `limit` (or the test).
async fn run_example(
    program: &str,
    args: &[&str],
    dir: &Path,
    proxy: &Proxy,
    limit: Duration,
) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(dir)
        .env("OPENAI_BASE_URL", format!("{}/v1", proxy.url))
        .env("OPENAI_API_KEY", "test-key")
        .env("STOCKYARD_MODEL", "gpt-4o-mini")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The output both examples print for the scenario of [`setup`].
fn check_output(stdout: &str, stderr: &str) {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(lines[0], "answer: Hello from b");
    assert!(
        lines[1].starts_with("  provider: b  model: gpt-4o-mini  failover: true  trace: tr_"),
        "{stdout}"
    );
    assert_eq!(lines[2], "streamed: Hello from a");
    assert_eq!(lines[3], "  finish_reason: stop");
}

#[tokio::test]
async fn python_example_runs_against_a_mock() {
    match std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .output()
    {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "examples/python/chat.py needs the official OpenAI Python SDK: run `pip install -r tests/sdk/requirements.txt` ({})",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("python3 is required to run examples/python/chat.py: {e}"),
    }
    let (a, b, p) = setup().await;
    let (ok, stdout, stderr) = run_example(
        "python3",
        &["examples/python/chat.py"],
        &repo(),
        &p,
        Duration::from_secs(60),
    )
    .await;
    assert!(ok, "chat.py failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    check_output(&stdout, &stderr);
    // a: the 503 and the stream; b: the failover.
    assert_eq!((a.hits(), b.hits()), (2, 1));
    let traces = p.traces("").await;
    assert_eq!(traces.len(), 2);
    assert_eq!(traces[0]["stream"], true);
    assert_eq!(traces[1]["failover"], true);
}

/// Runs `examples/node/chat.mjs` when Node.js is installed; installs the `openai` package into
/// `examples/node/node_modules` first if needed. Skips (and says why) when `node` is missing or
/// the package cannot be installed: CI does not depend on npm.
#[tokio::test]
async fn node_example_runs_against_a_mock() {
    let dir = repo().join("examples/node");
    match std::process::Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => {
            eprintln!("SKIP node_example_runs_against_a_mock: `node` is not installed");
            return;
        }
    }
    if !dir.join("node_modules/openai/package.json").exists() {
        let install = tokio::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--no-package-lock"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(Duration::from_secs(180), install).await {
            Ok(Ok(o)) if o.status.success() => {}
            Ok(Ok(o)) => {
                eprintln!(
                    "SKIP node_example_runs_against_a_mock: `npm install` failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                return;
            }
            Ok(Err(e)) => {
                eprintln!("SKIP node_example_runs_against_a_mock: cannot run npm: {e}");
                return;
            }
            Err(_) => {
                eprintln!("SKIP node_example_runs_against_a_mock: `npm install` took over 180 s");
                return;
            }
        }
    }
    let (a, b, p) = setup().await;
    let (ok, stdout, stderr) =
        run_example("node", &["chat.mjs"], &dir, &p, Duration::from_secs(60)).await;
    assert!(ok, "chat.mjs failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    check_output(&stdout, &stderr);
    assert_eq!((a.hits(), b.hits()), (2, 1));
}
