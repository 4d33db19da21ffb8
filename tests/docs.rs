//! The README against the code: its configuration reference lists exactly the keys the loader
//! accepts (each documented example value loads through the real loader; every key of the schema
//! is documented), its YAML examples load, its seed configs exist and load, and the set-up
//! commands it promises are the ones CI runs.

use serde_yaml::{Mapping, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;
use stockyard::config::load::{load_str, Env};
use stockyard::config::schema::known_keys;

fn repo_file(path: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn env() -> Env {
    Env::from_pairs([("HOME", "/tmp")])
}

/// One row of the README's configuration reference.
#[derive(Debug)]
struct Row {
    line: usize,
    key: String,
    example: String,
}

fn unquote(cell: &str) -> String {
    let c = cell.trim();
    c.strip_prefix('`')
        .and_then(|c| c.strip_suffix('`'))
        .unwrap_or(c)
        .to_string()
}

/// The table rows under `## Configuration reference` whose first cell is a backticked key.
fn reference_rows(readme: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut inside = false;
    for (i, line) in readme.lines().enumerate() {
        if line.starts_with("## ") {
            inside = line.trim() == "## Configuration reference";
            continue;
        }
        if !inside || !line.starts_with("| `") {
            continue;
        }
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        assert_eq!(
            cells.len(),
            5,
            "README.md:{}: a reference row needs 5 cells (key, type, default, example, meaning): {line}",
            i + 1
        );
        rows.push(Row {
            line: i + 1,
            key: unquote(cells[0]),
            example: unquote(cells[3]),
        });
    }
    rows
}

/// A valid config that the example values are applied to: one provider named `ollama`, an
/// alias `demo` in the long form and a price for `demo-model`, so that keys inside those
/// (`<alias>.local_only`, `<model>.input`) can be set one at a time.
const BASE: &str = r#"
providers:
  - {name: ollama, kind: ollama, base_url: "http://localhost:11434/v1"}
model_alias:
  aliases:
    demo: {targets: [ollama/llama3]}
pricing:
  demo-model: {input: 1, output: 2}
"#;

/// Sets `key` (README notation: `a.b`, `providers[].x`, `<alias>`, `<model>`) in `doc`.
fn set(doc: &mut Value, key: &str, value: Value) {
    let mut cur = doc;
    for seg in key.split('.') {
        let (name, list) = match seg.strip_suffix("[]") {
            Some(n) => (n, true),
            None => (seg, false),
        };
        let name = match name {
            "<alias>" => "demo",
            "<model>" => "demo-model",
            n => n,
        };
        if !cur.is_mapping() {
            *cur = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(m) = cur else {
            unreachable!()
        };
        let k = Value::String(name.to_string());
        if !m.contains_key(&k) {
            m.insert(k.clone(), Value::Null);
        }
        cur = m.get_mut(&k).unwrap();
        if list {
            if !matches!(cur, Value::Sequence(s) if !s.is_empty()) {
                *cur = Value::Sequence(vec![Value::Mapping(Mapping::new())]);
            }
            let Value::Sequence(s) = cur else {
                unreachable!()
            };
            cur = &mut s[0];
        }
    }
    *cur = value;
}

/// The base config with `key` set to the YAML `example`, as text.
fn with_key(key: &str, example: &str) -> String {
    let mut doc: Value = serde_yaml::from_str(BASE).unwrap();
    let value: Value = serde_yaml::from_str(example)
        .unwrap_or_else(|e| panic!("example `{example}` for `{key}` is not YAML: {e}"));
    set(&mut doc, key, value);
    serde_yaml::to_string(&doc).unwrap()
}

#[test]
fn base_config_loads() {
    load_str(BASE, "base.yaml", &env()).unwrap();
}

#[test]
fn the_check_rejects_what_the_loader_rejects() {
    // Guards the test itself: a misspelt key or a bad value built the same way must fail.
    for (key, example) in [
        ("providers[].priorty", "1"),
        ("failover.circuit_breaker.treshold", "3"),
        ("lissen", "127.0.0.1:4200"),
        ("pricing.<model>.inptu", "1"),
        ("providers[].timeouts.connect", "soon"),
    ] {
        let yaml = with_key(key, example);
        assert!(
            load_str(&yaml, "probe.yaml", &env()).is_err(),
            "`{key}: {example}` should be rejected:\n{yaml}"
        );
    }
}

#[test]
fn every_documented_key_is_accepted_by_the_loader() {
    let readme = repo_file("README.md");
    let rows = reference_rows(&readme);
    assert!(
        rows.len() > 40,
        "the configuration reference looks truncated"
    );
    let mut failures = Vec::new();
    for r in &rows {
        let yaml = with_key(&r.key, &r.example);
        if let Err(e) = load_str(&yaml, "example.yaml", &env()) {
            failures.push(format!(
                "README.md:{}: `{}` with example `{}` is rejected: {e}\n{yaml}",
                r.line, r.key, r.example
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_key_the_loader_accepts_is_documented_once() {
    let readme = repo_file("README.md");
    let rows = reference_rows(&readme);
    let mut documented = BTreeSet::new();
    for r in &rows {
        assert!(
            documented.insert(r.key.clone()),
            "README.md:{}: `{}` is documented twice",
            r.line,
            r.key
        );
    }
    let known: BTreeSet<String> = known_keys().into_iter().collect();
    let undocumented: Vec<&String> = known.difference(&documented).collect();
    let unknown: Vec<&String> = documented.difference(&known).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "README.md's configuration reference is out of sync with src/config/schema.rs\n\
         accepted by the loader but not documented: {undocumented:?}\n\
         documented but not a key of the schema: {unknown:?}"
    );
}

#[test]
fn readme_yaml_examples_load() {
    let readme = repo_file("README.md");
    let mut blocks = Vec::new();
    let mut cur: Option<(usize, String)> = None;
    for (i, line) in readme.lines().enumerate() {
        match (&mut cur, line.trim_end()) {
            (None, "```yaml") => cur = Some((i + 2, String::new())),
            (Some(_), "```") => blocks.push(cur.take().unwrap()),
            (Some((_, text)), l) => {
                text.push_str(l);
                text.push('\n');
            }
            _ => {}
        }
    }
    assert!(!blocks.is_empty(), "README.md has no yaml example");
    for (line, text) in blocks {
        if let Err(e) = load_str(&text, "README.md", &env()) {
            panic!("the yaml block at README.md:{line} does not load: {e}\n{text}");
        }
    }
}

#[test]
fn seed_configs_exist_and_load() {
    let readme = repo_file("README.md");
    let mut seen = 0;
    for name in ["local-first.yaml", "cloud-only.yaml", "aliases.yaml"] {
        let path = format!("config/{name}");
        assert!(readme.contains(&path), "README.md does not mention {path}");
        if let Err(e) = load_str(&repo_file(&path), &path, &env()) {
            panic!("{e}");
        }
        seen += 1;
    }
    let on_disk = std::fs::read_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config"))
        .unwrap()
        .count();
    assert_eq!(
        on_disk, seen,
        "config/ has a file the README does not describe"
    );
}

#[test]
fn set_up_commands_are_the_ones_ci_runs() {
    let readme = repo_file("README.md");
    assert!(
        readme.contains("\ncargo run --release "),
        "README lost `cargo run --release`"
    );
    assert!(
        readme.contains("\n./scripts/test.sh "),
        "README lost `./scripts/test.sh`"
    );
    let ci = repo_file(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == "./scripts/test.sh"),
        ".ci/run must run ./scripts/test.sh"
    );
    let test_sh = repo_file("scripts/test.sh");
    assert!(test_sh.contains("cargo test --locked"), "{test_sh}");
}
