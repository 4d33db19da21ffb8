//! Replays the fuzz corpus (`fuzz/corpus/<target>/`) and crash reproducers
//! (`fuzz/regressions/<target>/`) through the same checks the `cargo fuzz` targets run
//! (`stockyard::fuzzing`), so CI covers them on the stable toolchain in seconds.

use std::path::{Path, PathBuf};

type Check = fn(&[u8]);

const TARGETS: &[(&str, Check)] = &[
    ("sse", stockyard::fuzzing::sse),
    ("config", stockyard::fuzzing::config),
    ("to_anthropic", stockyard::fuzzing::to_anthropic),
    ("from_anthropic", stockyard::fuzzing::from_anthropic),
    ("body", stockyard::fuzzing::body),
];

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// Runs every input of one target; a failing input is reported by name.
fn replay(target: &str, check: Check) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for sub in ["corpus", "regressions"] {
        for path in files(&root.join(sub).join(target)) {
            let data = std::fs::read(&path).unwrap();
            let r = std::panic::catch_unwind(|| check(&data));
            assert!(r.is_ok(), "{target}: {} fails its check", path.display());
            n += 1;
        }
    }
    n
}

#[test]
fn corpus_and_regressions_pass() {
    for (target, check) in TARGETS {
        let n = replay(target, *check);
        assert!(n > 0, "no corpus files for target {target}");
    }
}

#[test]
fn every_fuzz_target_is_replayed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    for path in files(&dir) {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(
            TARGETS.iter().any(|(t, _)| *t == name),
            "fuzz target {name} is not replayed here"
        );
    }
}

fn fails(f: impl FnOnce() + std::panic::UnwindSafe) -> bool {
    std::panic::catch_unwind(f).is_err()
}

/// The checks are not vacuous: outputs that break a property are caught.
#[test]
fn checks_reject_bad_outputs() {
    use serde_json::json;
    use stockyard::fuzzing::*;
    let good = json!({"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "a"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "b"}]},
    ]});
    assert!(!fails(|| check_anthropic_request(&good, "m", false)));
    let mut same_role = good.clone();
    same_role["messages"][1]["role"] = json!("user");
    assert!(fails(|| check_anthropic_request(&same_role, "m", false)));
    let mut hot = good.clone();
    hot["temperature"] = json!(1.5);
    assert!(fails(|| check_anthropic_request(&hot, "m", false)));
    assert!(fails(|| check_anthropic_request(&good, "m", true)));

    let start = json!({"type": "message_start", "message": {}});
    let block = json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}});
    let delta = json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}});
    let stop = json!({"type": "content_block_stop", "index": 0});
    let mdelta = json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}});
    let mstop = json!({"type": "message_stop"});
    let ok = [
        ("message_start", start.clone()),
        ("content_block_start", block.clone()),
        ("content_block_delta", delta.clone()),
        ("content_block_stop", stop.clone()),
        ("message_delta", mdelta.clone()),
        ("message_stop", mstop.clone()),
    ];
    assert!(!fails(|| check_anthropic_events(&ok)));
    let unclosed = [ok[0].clone(), ok[1].clone(), ok[4].clone(), ok[5].clone()];
    assert!(fails(move || check_anthropic_events(&unclosed)));
    let delta_first = [ok[0].clone(), ok[2].clone()];
    assert!(fails(move || check_anthropic_events(&delta_first)));
    let no_end = [ok[0].clone()];
    assert!(fails(move || check_anthropic_events(&no_end)));

    let resp = json!({"object": "chat.completion", "choices": [{"message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}});
    assert!(!fails(|| check_openai_response(&resp)));
    let mut bad_total = resp.clone();
    bad_total["usage"]["total_tokens"] = json!(4);
    assert!(fails(move || check_openai_response(&bad_total)));
}
