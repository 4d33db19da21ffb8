//! The Dockerfile, checked without a Docker engine: its structure is parsed here, and the binary
//! is run with the environment the image sets to check it starts, answers its health check, and
//! refuses to listen on 0.0.0.0 without proxy keys.

mod common;

use common::bin::{command, Server};
use common::closed_port;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One Dockerfile instruction: keyword (upper case) and its arguments, continuations joined.
#[derive(Debug, Clone)]
struct Instr {
    cmd: String,
    args: String,
}

/// Instructions grouped by build stage (each starts with its FROM).
fn parse(text: &str) -> Vec<Vec<Instr>> {
    let mut logical = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head.trim_end());
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                logical.push(std::mem::take(&mut cur));
            }
        }
    }
    assert!(cur.is_empty(), "dangling line continuation");
    let mut stages: Vec<Vec<Instr>> = Vec::new();
    for l in logical {
        let (cmd, args) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
        let instr = Instr {
            cmd: cmd.to_ascii_uppercase(),
            args: args.trim().to_string(),
        };
        if instr.cmd == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("the first instruction is FROM")
            .push(instr);
    }
    stages
}

fn find<'a>(stage: &'a [Instr], cmd: &str) -> Vec<&'a Instr> {
    stage.iter().filter(|i| i.cmd == cmd).collect()
}

/// `ENV K=V K2=V2` (and the old `ENV K V`) of a stage.
fn env_of(stage: &[Instr]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for i in find(stage, "ENV") {
        if !i.args.contains('=') {
            let (k, v) = i.args.split_once(' ').unwrap();
            out.insert(k.to_string(), v.trim().to_string());
            continue;
        }
        for kv in i.args.split_whitespace() {
            let (k, v) = kv.split_once('=').unwrap();
            out.insert(k.to_string(), v.trim_matches('"').to_string());
        }
    }
    out
}

/// The exec-form JSON array after `CMD` in a HEALTHCHECK.
fn healthcheck_cmd(stage: &[Instr]) -> Vec<String> {
    let hc = find(stage, "HEALTHCHECK");
    assert_eq!(hc.len(), 1, "one HEALTHCHECK in the final stage");
    let args = &hc[0].args;
    let cmd = args
        .split_once("CMD ")
        .expect("HEALTHCHECK ... CMD [...]")
        .1;
    serde_json::from_str(cmd.trim()).expect("exec form CMD [\"stockyard\", \"health\"]")
}

struct Image {
    stages: Vec<Vec<Instr>>,
}

impl Image {
    fn load() -> Image {
        let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
        Image {
            stages: parse(&text),
        }
    }

    fn last(&self) -> &[Instr] {
        self.stages.last().unwrap()
    }

    fn env(&self) -> BTreeMap<String, String> {
        env_of(self.last())
    }

    /// The repository file the final stage copies to `dest`.
    fn copied_to(&self, dest: &str) -> PathBuf {
        find(self.last(), "COPY")
            .into_iter()
            .find_map(|i| {
                let parts: Vec<&str> = i.args.split_whitespace().collect();
                (parts.last() == Some(&dest) && !parts[0].starts_with("--"))
                    .then(|| root().join(parts[0]))
            })
            .unwrap_or_else(|| panic!("nothing is copied to {dest}"))
    }
}

#[test]
fn dockerfile_structure() {
    let img = Image::load();
    assert!(img.stages.len() >= 2, "multi-stage");
    let builder = &img.stages[0];
    assert_eq!(builder[0].args, "rust:1-bookworm AS builder");
    let build = find(builder, "RUN")
        .into_iter()
        .find(|r| r.args.contains("cargo build"))
        .expect("a cargo build step");
    assert!(
        build.args.contains("--release") && build.args.contains("--locked"),
        "{}",
        build.args
    );
    // Every file the build copies exists and is not excluded by .dockerignore.
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    assert!(
        ignored.contains(&"target"),
        "the build context skips target/"
    );
    for stage in &img.stages {
        for c in find(stage, "COPY") {
            let parts: Vec<&str> = c.args.split_whitespace().collect();
            if parts[0].starts_with("--from") {
                continue;
            }
            for src in &parts[..parts.len() - 1] {
                assert!(root().join(src).exists(), "COPY source {src} is missing");
                assert!(
                    !ignored.iter().any(|i| src.starts_with(i)),
                    "COPY source {src} is excluded by .dockerignore"
                );
            }
        }
    }

    let last = img.last();
    assert_eq!(last[0].args, "debian:bookworm-slim");
    assert!(
        find(last, "COPY")
            .iter()
            .any(|c| c.args.starts_with("--from=builder")),
        "the binary comes from the builder"
    );
    let apt = find(last, "RUN")
        .into_iter()
        .find(|r| r.args.contains("apt-get install"))
        .expect("installs packages");
    assert!(apt.args.contains("ca-certificates"));
    assert!(apt.args.contains("rm -rf /var/lib/apt/lists/*"));
    assert!(apt.args.contains("--no-install-recommends"));

    let users = find(last, "USER");
    let user = users.last().expect("a USER in the final stage");
    let name = user.args.split(':').next().unwrap();
    assert!(
        !["root", "0", ""].contains(&name),
        "runs as non-root, got USER {}",
        user.args
    );
    assert!(find(last, "EXPOSE").iter().any(|e| e.args == "4200"));
    assert!(find(last, "VOLUME")
        .iter()
        .any(|v| v.args == "/data" || v.args == "[\"/data\"]"));
    assert_eq!(healthcheck_cmd(last), ["stockyard", "health"]);
    let env = img.env();
    assert_eq!(env["STOCKYARD_CONFIG"], "/etc/stockyard/stockyard.yaml");
    assert_eq!(env["STOCKYARD_DATA_DIR"], "/data");
    assert_eq!(env["STOCKYARD_LISTEN"], "0.0.0.0:4200");
    assert!(img.copied_to("/etc/stockyard/stockyard.yaml").exists());
    let entry = find(last, "ENTRYPOINT");
    assert_eq!(entry.last().unwrap().args, "[\"stockyard\"]");
}

/// The image's environment for a process on this machine: the same values, except that the two
/// paths point at the file the image copies there and at a temporary data directory, and `PORT`
/// picks a free port so tests can run side by side (the address stays 0.0.0.0).
fn image_env(img: &Image, data: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, v) in img.env() {
        let v = match k.as_str() {
            "STOCKYARD_CONFIG" => img.copied_to(&v).display().to_string(),
            "STOCKYARD_DATA_DIR" => data.display().to_string(),
            _ => v,
        };
        out.push((k, v));
    }
    out
}

fn image_command(
    img: &Image,
    home: &Path,
    port: u16,
    extra: &[(&str, &str)],
) -> std::process::Command {
    let mut cmd = command(home);
    for (k, v) in image_env(img, &home.join("data")) {
        cmd.env(k, v);
    }
    cmd.env("PORT", port.to_string());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd
}

#[test]
fn without_api_keys_the_image_refuses_to_listen_on_all_interfaces() {
    let img = Image::load();
    let home = tempfile::tempdir().unwrap();
    let port = closed_port();
    let o = image_command(&img, home.path(), port, &[])
        .args(["serve"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "refusing to listen on 0.0.0.0:{port} without `api_keys`"
        )),
        "{err}"
    );
    assert!(err.contains("STOCKYARD_LISTEN"), "{err}");
    // `check` says the same.
    let o = image_command(&img, home.path(), port, &[])
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_api_key_the_image_serves_and_its_healthcheck_passes() {
    let img = Image::load();
    let home = tempfile::tempdir().unwrap();
    let port = closed_port();
    let key = [("STOCKYARD_API_KEY", "docker-test-key")];
    let mut cmd = image_command(&img, home.path(), port, &key);
    cmd.arg("serve");
    let server = Server::spawn(cmd, port).await;
    // The port accepts connections as soon as it is bound, before the startup discovery of
    // the ollama provider (up to 2 s) and this line.
    let line = server
        .wait_log("stockyard listening", std::time::Duration::from_secs(20))
        .await;
    assert!(
        line.contains(&format!("addr=0.0.0.0:{port}")),
        "listens on every interface: {line}"
    );

    // The HEALTHCHECK command exactly as the image runs it, with the image's environment.
    let hc = healthcheck_cmd(img.last());
    assert_eq!(hc[0], "stockyard");
    let o = image_command(&img, home.path(), port, &key)
        .args(&hc[1..])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let r = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Proxy keys are enforced (an empty body: 401 without the key, 400 with it, no upstream).
    let chat = format!("{base}/v1/chat/completions");
    let r = client
        .post(&chat)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(&chat)
        .bearer_auth("docker-test-key")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        home.path().join("data/stockyard.db").exists(),
        "traces in the data dir"
    );
    drop(server);

    // Nothing listening: the health check fails.
    let o = image_command(&img, home.path(), port, &key)
        .args(&hc[1..])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_unauthenticated_opens_the_image_explicitly() {
    let img = Image::load();
    let home = tempfile::tempdir().unwrap();
    let port = closed_port();
    let allow = [("STOCKYARD_ALLOW_UNAUTHENTICATED", "true")];
    let mut cmd = image_command(&img, home.path(), port, &allow);
    cmd.arg("serve");
    let server = Server::spawn(cmd, port).await;
    // Serving, not only bound: until the startup discovery of the ollama provider is done (up
    // to 2 s) connections wait in the backlog, which could outlast the 2 s health timeout.
    server
        .wait_log("stockyard listening", std::time::Duration::from_secs(20))
        .await;
    let o = image_command(&img, home.path(), port, &allow)
        .args(["health", "--timeout", "2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "no key needed");
    // `--url` works without any config.
    let o = command(home.path())
        .args(["health", "--url", &format!("http://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(o.status.success());
}

/// hadolint, when it is installed (CI installs it from PyPI when it can; it is optional).
#[test]
fn hadolint_when_available() {
    let Ok(o) = std::process::Command::new("hadolint")
        .arg(root().join("Dockerfile"))
        .output()
    else {
        eprintln!("hadolint not installed; skipped");
        return;
    };
    assert!(
        o.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
