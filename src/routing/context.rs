//! Context windows (issue 6): a built-in table of model context windows, a fast prompt-token
//! estimate for OpenAI chat request bodies, and truncation of the oldest turns to fit a window.
//! Pure and synchronous, no I/O; the proxy decides what to do with the numbers.
//!
//! # Token estimate: method and expected error
//!
//! No real tokenizer is used (they are large, differ per provider and are slow); instead every
//! string is measured in *quarter tokens* straight from its UTF-8 bytes, without decoding:
//!
//! - each ASCII byte counts 1/4 token (the usual "4 characters per token" rule for English);
//! - each 2-byte UTF-8 character (accented Latin, Cyrillic, Greek, Hebrew, Arabic) counts 1/2;
//! - each 3-byte UTF-8 character (CJK, Japanese kana, Korean, Devanagari, Thai, fullwidth
//!   punctuation) counts 1 token;
//! - each 4-byte UTF-8 character (emoji, rare CJK) counts 2 tokens;
//!
//! and the sum per message (or per JSON value) is rounded up. On top of that, following OpenAI's
//! cookbook counting (`num_tokens_from_messages`): 4 tokens per message (role and delimiters),
//! 1 more when the message has a `name`, and 3 tokens once per request for the reply priming.
//! Tool calls add 3 tokens each plus their function name and argument text. Images count a fixed
//! 765 tokens each (OpenAI's high-detail estimate for a 1024x1024 image: 85 + 4 tiles x 170), or
//! 85 with `detail: "low"`. Audio parts count about 10 tokens per second assuming compressed audio
//! at 128 kbit/s (16 000 bytes/s of decoded base64). File parts (PDFs) cannot be sized without
//! parsing them and count a fixed 765 tokens (about one page). Tool and function definitions, a
//! `json_schema` response format and an object `tool_choice` count as the length of their compact
//! JSON text (measured by walking the value, never serialised), plus 10 tokens of preamble when
//! tools are present.
//!
//! Expected error against real BPE tokenizers (cl100k/o200k for OpenAI, Claude's, Llama 3's, ...):
//!
//! - English prose: within about ±15-25%, usually a little high (real tokenizers average 4-4.5
//!   characters per token on prose; 100 words is ~130 tokens and we say ~140).
//! - Code: indentation-heavy code is overestimated (runs of spaces merge into one token);
//!   symbol-dense code, JSON and long numbers (split into groups of 3 digits) are underestimated by
//!   up to ~25-30%.
//! - Random-looking text (base64, hex, hashes, UUIDs) is underestimated by up to ~2x.
//! - CJK: about right for cl100k (1-1.3 tokens per common character), high for o200k and newer
//!   vocabularies (~0.7). Cyrillic/Greek/Arabic are usually overestimated (real: 0.3-0.5 per
//!   character). Devanagari/Thai can be underestimated on older vocabularies.
//! - Tool definitions: OpenAI renders them as compact TypeScript-like declarations, shorter than
//!   the JSON we measure, so they are overestimated.
//! - Images depend on size and provider (OpenAI up to ~1500 for large images, Claude up to ~1600,
//!   Gemini 258): off by up to 2x either way.
//!
//! The estimate is deliberately a little conservative for ordinary chat (rounding up per message,
//! counting ids and overheads), so a request that the estimate says fits usually does. It is not
//! exact: an upstream context-length error is still possible and is handled by failover.

use serde_json::Value;
use std::ops::Range;

/// Tokens per chat message for the role and the message delimiters (OpenAI cookbook: 3, plus
/// about 1 for the role text).
pub const TOKENS_PER_MESSAGE: u64 = 4;
/// Extra token for a message's `name` field (its text is counted as well).
pub const TOKENS_PER_NAME: u64 = 1;
/// Tokens once per request: every reply is primed with `<|start|>assistant<|message|>`.
pub const REPLY_PRIMING_TOKENS: u64 = 3;
/// One image at high (or auto) detail: OpenAI's estimate for 1024x1024 (85 + 4 tiles x 170).
pub const IMAGE_TOKENS: u64 = 765;
/// One image with `detail: "low"`.
pub const IMAGE_LOW_DETAIL_TOKENS: u64 = 85;
/// One `file` content part (a PDF or similar); its size cannot be judged without parsing it.
pub const FILE_TOKENS: u64 = 765;
/// Per tool call in an assistant message, besides its name and arguments.
pub const TOKENS_PER_TOOL_CALL: u64 = 3;
/// Preamble the upstream adds when tools or functions are defined.
pub const TOOLS_PREAMBLE_TOKENS: u64 = 10;
/// Decoded audio bytes per token (10 tokens/s at 128 kbit/s).
const AUDIO_BYTES_PER_TOKEN: u64 = 1_600;

/// Built-in context windows in tokens: published limits as of 2025 (provider documentation and
/// Ollama's model pages). All names are lowercase; see [`builtin_window`] for the matching rules.
///
/// For local models these are the models' trained limits. Ollama serves with a smaller `num_ctx`
/// unless it is configured (2048-8192 depending on the version and memory), so operators of a
/// local provider should set `context_window` on it when they rely on the exact limit.
const BUILTIN_WINDOWS: &[(&str, u64)] = &[
    // OpenAI
    ("gpt-3.5-turbo", 16_385),
    ("gpt-3.5-turbo-instruct", 4_096),
    ("gpt-4", 8_192),
    ("gpt-4-32k", 32_768),
    ("gpt-4-turbo", 128_000),
    ("gpt-4-1106", 128_000),
    ("gpt-4-0125", 128_000),
    ("gpt-4-vision", 128_000),
    ("gpt-4.5", 128_000),
    ("gpt-4o", 128_000),
    ("gpt-4o-mini", 128_000),
    ("chatgpt-4o", 128_000),
    ("gpt-4.1", 1_047_576),
    ("gpt-4.1-mini", 1_047_576),
    ("gpt-4.1-nano", 1_047_576),
    ("o1", 200_000),
    ("o1-mini", 128_000),
    ("o1-preview", 128_000),
    ("o3", 200_000),
    ("o3-mini", 200_000),
    ("o4-mini", 200_000),
    ("codex-mini", 200_000),
    ("gpt-5", 400_000),
    ("gpt-5-mini", 400_000),
    ("gpt-5-nano", 400_000),
    ("gpt-5-chat", 128_000),
    ("gpt-oss", 131_072),
    // Anthropic: every Claude 3+ model has 200k (Sonnet 4/4.5 offer 1M only behind a beta header).
    ("claude-", 200_000),
    ("claude-2", 100_000),
    ("claude-instant", 100_000),
    ("claude-sonnet-4", 200_000),
    ("claude-sonnet-4-5", 200_000),
    ("claude-opus-4", 200_000),
    // Google Gemini (`models/` prefixes are stripped by the lookup).
    ("gemini-1.5-pro", 2_097_152),
    ("gemini-1.5-flash", 1_048_576),
    ("gemini-2.0", 1_048_576),
    ("gemini-2.5", 1_048_576),
    // xAI
    ("grok", 131_072),
    ("grok-2-vision", 32_768),
    ("grok-vision-beta", 8_192),
    ("grok-3", 131_072),
    ("grok-4", 256_000),
    ("grok-4-fast", 2_000_000),
    ("grok-code-fast", 256_000),
    // Mistral (La Plateforme names; the bare `mistral` entry below is Ollama's Mistral 7B).
    ("mistral-large", 131_072),
    ("mistral-medium", 131_072),
    ("mistral-small", 131_072),
    ("mistral-small3", 131_072),
    ("mistral-nemo", 131_072),
    ("open-mistral-nemo", 131_072),
    ("open-mistral-7b", 32_768),
    ("ministral", 131_072),
    ("pixtral", 131_072),
    ("devstral", 131_072),
    ("codestral", 256_000),
    // Ollama's codestral (22B, v0.1) has 32k.
    ("codestral:22b", 32_768),
    ("codestral:latest", 32_768),
    ("open-mixtral-8x7b", 32_768),
    ("open-mixtral-8x22b", 65_536),
    ("mixtral", 32_768),
    ("mixtral:8x22b", 65_536),
    ("mistral", 32_768),
    // DeepSeek API: 128k since V3.1 (August 2025); it was 64k before, so an older self-hosted
    // deployment may still reject prompts between 64k and 128k.
    ("deepseek-chat", 128_000),
    ("deepseek-reasoner", 128_000),
    ("deepseek-r1", 131_072),
    ("deepseek-coder", 16_384),
    ("deepseek-coder-v2", 163_840),
    // Cohere
    ("command", 4_096),
    ("command-r", 128_000),
    ("command-r-plus", 128_000),
    ("command-r7b", 128_000),
    ("command-a", 256_000),
    // Perplexity
    ("sonar", 127_072),
    ("sonar-pro", 200_000),
    // Meta Llama (Ollama tags, Groq/Together and LM Studio/Hugging Face spellings)
    ("llama2", 4_096),
    ("llama3", 8_192),
    ("llama3.1", 131_072),
    ("llama3.2", 131_072),
    ("llama3.3", 131_072),
    ("llama-3", 8_192),
    ("llama-3.1", 131_072),
    ("llama-3.2", 131_072),
    ("llama-3.3", 131_072),
    ("meta-llama-3", 8_192),
    ("meta-llama-3.1", 131_072),
    ("codellama", 16_384),
    // Qwen
    ("qwen2", 32_768),
    ("qwen2.5", 32_768),
    ("qwen2.5-coder", 32_768),
    ("qwen3", 40_960),
    ("qwen3-coder", 262_144),
    ("qwq", 40_960),
    // Microsoft Phi (the 128k variants of phi3 resolve to the conservative 4k)
    ("phi3", 4_096),
    ("phi3.5", 131_072),
    ("phi4", 16_384),
    ("phi4-mini", 131_072),
    ("phi4-reasoning", 32_768),
    ("phi-3", 4_096),
    ("phi-3.5", 131_072),
    ("phi-4", 16_384),
    // Google Gemma
    ("gemma", 8_192),
    ("gemma2", 8_192),
    ("gemma-2", 8_192),
    ("gemma3", 131_072),
    ("gemma-3", 131_072),
    ("gemma3:1b", 32_768),
    ("gemma3:270m", 32_768),
    ("gemma3n", 32_768),
    ("starcoder2", 16_384),
];

/// Built-in context windows (tokens) for common models of every cloud kind and common local models.
/// Matching: exact name first, then the longest matching prefix entry (so dated snapshots like
/// `gpt-4o-2024-08-06` and `claude-3-5-haiku-latest` resolve); case-insensitive; Ollama-style
/// tags (`llama3:8b`, `qwen2.5:7b-instruct`) match by the part before `:` and then prefix.
///
/// A prefix entry only matches at a boundary: the entry ends in a non-alphanumeric character
/// (`claude-`) or the model name continues with one (`-`, `.`, `:`, `_`, ...). So `gpt-4` covers
/// `gpt-4-0613` but not an unknown `gpt-4z`, and `gemma3` does not swallow `gemma3n`. Because `:`
/// is a boundary, a tag resolves to the entry for the part before it unless a tag-specific entry
/// (`gemma3:1b`) matches longer. If nothing matches, the part after the last `/` is tried, for
/// namespaced names like `models/gemini-1.5-pro`, `openai/gpt-4o` or
/// `meta-llama/Llama-3.3-70B-Instruct`. Unknown models give `None`.
pub fn builtin_window(model: &str) -> Option<u64> {
    // Every request asks this for each candidate; the answer only depends on the name, and a
    // table scan is thousands of instructions, so each thread remembers the names it has seen
    // (a bounded set: forgotten all at once when full, since names come from clients).
    const REMEMBERED: usize = 512;
    thread_local! {
        static SEEN: std::cell::RefCell<std::collections::HashMap<Box<str>, Option<u64>>> =
            std::cell::RefCell::new(std::collections::HashMap::new());
    }
    SEEN.with(|seen| {
        if let Some(w) = seen.borrow().get(model) {
            return *w;
        }
        let w = scan_window(model);
        let mut seen = seen.borrow_mut();
        if seen.len() >= REMEMBERED {
            seen.clear();
        }
        seen.insert(model.into(), w);
        w
    })
}

fn scan_window(model: &str) -> Option<u64> {
    let name = model.trim();
    lookup(name).or_else(|| {
        name.rsplit_once('/')
            .and_then(|(_, tail)| lookup(tail.trim()))
    })
}

fn lookup(name: &str) -> Option<u64> {
    if name.is_empty() {
        return None;
    }
    let n = name.as_bytes();
    if let Some(&(_, w)) = BUILTIN_WINDOWS
        .iter()
        .find(|(e, _)| n.eq_ignore_ascii_case(e.as_bytes()))
    {
        return Some(w);
    }
    BUILTIN_WINDOWS
        .iter()
        .filter(|(e, _)| prefix_matches(n, e.as_bytes()))
        .max_by_key(|(e, _)| e.len())
        .map(|&(_, w)| w)
}

/// `entry` is a case-insensitive prefix of `name` ending at a word boundary.
fn prefix_matches(name: &[u8], entry: &[u8]) -> bool {
    if name.len() <= entry.len() || !name[..entry.len()].eq_ignore_ascii_case(entry) {
        return false;
    }
    let entry_ends_at_boundary = entry.last().is_some_and(|b| !b.is_ascii_alphanumeric());
    entry_ends_at_boundary || !name[entry.len()].is_ascii_alphanumeric()
}

/// Running size of some text in quarter tokens (see the module documentation).
#[derive(Debug, Default, Clone, Copy)]
struct Quarters(u64);

impl Quarters {
    fn text(&mut self, s: &str) {
        let mut q = 0u64;
        for &b in s.as_bytes() {
            q += match b {
                0x00..=0x7f => 1,
                0x80..=0xbf => 0, // continuation byte
                0xc0..=0xdf => 2,
                0xe0..=0xef => 4,
                _ => 8,
            };
        }
        self.0 = self.0.saturating_add(q);
    }

    /// ASCII punctuation/quotes of JSON text.
    fn ascii(&mut self, bytes: u64) {
        self.0 = self.0.saturating_add(bytes);
    }

    fn tokens(self) -> u64 {
        self.0.div_ceil(4)
    }
}

/// Counts the bytes a `Display` value writes, without allocating.
struct ByteCounter(u64);

impl std::fmt::Write for ByteCounter {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0 += s.len() as u64;
        Ok(())
    }
}

/// Adds the size of `v` as compact JSON text (string escapes are not counted).
fn json_text(v: &Value, q: &mut Quarters) {
    match v {
        Value::Null => q.ascii(4),
        Value::Bool(b) => q.ascii(if *b { 4 } else { 5 }),
        Value::Number(n) => {
            let mut c = ByteCounter(0);
            let _ = std::fmt::Write::write_fmt(&mut c, format_args!("{n}"));
            q.ascii(c.0);
        }
        Value::String(s) => {
            q.ascii(2);
            q.text(s);
        }
        Value::Array(a) => {
            q.ascii(2 + a.len().saturating_sub(1) as u64);
            for x in a {
                json_text(x, q);
            }
        }
        Value::Object(o) => {
            q.ascii(2 + o.len().saturating_sub(1) as u64);
            for (k, x) in o {
                q.ascii(3); // quotes and colon
                q.text(k);
                json_text(x, q);
            }
        }
    }
}

fn json_tokens(v: &Value) -> u64 {
    let mut q = Quarters::default();
    json_text(v, &mut q);
    q.tokens()
}

/// Estimated prompt tokens of an OpenAI chat request body (the whole JSON object: `messages`,
/// plus `tools`/`functions` definitions and `response_format` schema if present).
///
/// Equals the sum of [`estimate_message_tokens`] over `messages`, plus
/// [`REPLY_PRIMING_TOKENS`], plus [`estimate_non_message_tokens`].
pub fn estimate_prompt_tokens(body: &Value) -> u64 {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(0, |m| sum_message_tokens(m));
    messages
        .saturating_add(REPLY_PRIMING_TOKENS)
        .saturating_add(estimate_non_message_tokens(body))
}

/// Estimated tokens of the parts of a chat request body that are not messages: `tools`,
/// legacy `functions`, an object `tool_choice` and a `json_schema` `response_format`. Plus
/// [`requested_output_tokens`], this is the `fixed_overhead` of [`truncate_to_fit`].
pub fn estimate_non_message_tokens(body: &Value) -> u64 {
    let mut total = 0u64;
    for key in ["tools", "functions"] {
        if let Some(defs) = body.get(key).and_then(Value::as_array) {
            if !defs.is_empty() {
                total = total
                    .saturating_add(TOOLS_PREAMBLE_TOKENS)
                    .saturating_add(defs.iter().map(json_tokens).sum::<u64>());
            }
        }
    }
    if let Some(choice) = body.get("tool_choice").filter(|c| c.is_object()) {
        total = total.saturating_add(json_tokens(choice));
    }
    if let Some(rf) = body.get("response_format") {
        if rf.get("type").and_then(Value::as_str) == Some("json_schema") {
            if let Some(schema) = rf.get("json_schema") {
                total = total.saturating_add(json_tokens(schema));
            }
        }
    }
    total
}

fn sum_message_tokens(messages: &[Value]) -> u64 {
    messages
        .iter()
        .map(estimate_message_tokens)
        .fold(0u64, u64::saturating_add)
}

/// Estimated tokens of one message (content string or parts, tool_calls names+arguments,
/// tool results), including per-message overhead.
pub fn estimate_message_tokens(msg: &Value) -> u64 {
    let Some(obj) = msg.as_object() else {
        return TOKENS_PER_MESSAGE.saturating_add(json_tokens(msg));
    };
    let mut q = Quarters::default();
    let mut fixed = TOKENS_PER_MESSAGE;
    for (key, v) in obj {
        match key.as_str() {
            "content" => fixed = fixed.saturating_add(content(v, &mut q)),
            "refusal" | "tool_call_id" => {
                if let Some(s) = v.as_str() {
                    q.text(s);
                }
            }
            "name" => {
                if let Some(s) = v.as_str() {
                    fixed += TOKENS_PER_NAME;
                    q.text(s);
                }
            }
            "tool_calls" => {
                for call in v.as_array().into_iter().flatten() {
                    fixed = fixed.saturating_add(TOKENS_PER_TOOL_CALL);
                    if let Some(f) = call.get("function") {
                        function_call(f, &mut q);
                    } else {
                        json_text(call, &mut q);
                    }
                }
            }
            "function_call" if v.is_object() => {
                fixed = fixed.saturating_add(TOKENS_PER_TOOL_CALL);
                function_call(v, &mut q);
            }
            // The role is inside TOKENS_PER_MESSAGE; other fields (ids, cache hints, audio
            // references) are not shown to the model as text.
            _ => {}
        }
    }
    fixed.saturating_add(q.tokens())
}

/// Name and arguments of a `{name, arguments}` function call. `arguments` is normally a JSON
/// string; some clients send an object.
fn function_call(f: &Value, q: &mut Quarters) {
    if let Some(name) = f.get("name").and_then(Value::as_str) {
        q.text(name);
    }
    match f.get("arguments") {
        Some(Value::String(s)) => q.text(s),
        Some(other) => json_text(other, q),
        None => {}
    }
}

/// Adds the text of a message's `content` to `q`; returns the fixed tokens of non-text parts.
fn content(v: &Value, q: &mut Quarters) -> u64 {
    match v {
        Value::Null => 0,
        Value::String(s) => {
            q.text(s);
            0
        }
        Value::Array(parts) => parts
            .iter()
            .map(|p| part(p, q))
            .fold(0u64, u64::saturating_add),
        Value::Object(_) => part(v, q),
        other => {
            json_text(other, q);
            0
        }
    }
}

fn str_field<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.get(key).and_then(Value::as_str)
}

/// One content part; returns its fixed tokens (images, audio, files) and adds its text to `q`.
fn part(p: &Value, q: &mut Quarters) -> u64 {
    if let Some(s) = p.as_str() {
        q.text(s);
        return 0;
    }
    match str_field(p, "type") {
        Some("text") => {
            if let Some(s) = str_field(p, "text") {
                q.text(s);
            }
            0
        }
        Some("refusal") => {
            if let Some(s) = str_field(p, "refusal") {
                q.text(s);
            }
            0
        }
        Some("image_url") | Some("image") => {
            let low = p
                .get("image_url")
                .and_then(|i| str_field(i, "detail"))
                .or_else(|| str_field(p, "detail"))
                == Some("low");
            if low {
                IMAGE_LOW_DETAIL_TOKENS
            } else {
                IMAGE_TOKENS
            }
        }
        Some("input_audio") => {
            let b64 = p
                .get("input_audio")
                .and_then(|a| str_field(a, "data"))
                .map_or(0, str::len) as u64;
            (b64 / 4 * 3).div_ceil(AUDIO_BYTES_PER_TOKEN).max(1)
        }
        Some("file") => {
            if let Some(name) = p.get("file").and_then(|f| str_field(f, "filename")) {
                q.text(name);
            }
            FILE_TOKENS
        }
        _ => {
            json_text(p, q);
            0
        }
    }
}

/// Requested completion budget: `max_completion_tokens`, else `max_tokens`, else 0.
///
/// A field that is absent, `null`, negative or not a number is skipped; a fractional number is
/// rounded up.
pub fn requested_output_tokens(body: &Value) -> u64 {
    ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| {
            let v = body.get(*k)?;
            v.as_u64().or_else(|| {
                v.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f.ceil() as u64)
            })
        })
        .unwrap_or(0)
}

/// The result of [`truncate_to_fit`].
#[derive(Debug, Clone, PartialEq)]
pub struct Truncation {
    /// The messages to send, in order.
    pub messages: Vec<Value>,
    /// How many messages were removed and their estimated tokens.
    pub dropped_messages: usize,
    pub dropped_tokens: u64,
}

fn role(m: &Value) -> Option<&str> {
    m.get("role").and_then(Value::as_str)
}

fn is_system(m: &Value) -> bool {
    matches!(role(m), Some("system" | "developer"))
}

/// A tool (or legacy function) result message.
fn is_tool_result(m: &Value) -> bool {
    matches!(role(m), Some("tool" | "function"))
}

/// An assistant message that calls tools (or a legacy function), whose results follow it.
fn calls_tools(m: &Value) -> bool {
    role(m) == Some("assistant")
        && (m
            .get("tool_calls")
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty())
            || m.get("function_call").is_some_and(Value::is_object))
}

/// Splits the non-system messages into droppable units, in order: an assistant message that
/// calls tools together with the tool results that follow it (system messages in between are
/// stepped over and stay kept), or any other single message. A unit's range may contain system
/// messages; they are never dropped.
fn units(messages: &[Value]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < messages.len() {
        if is_system(&messages[i]) {
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        if calls_tools(&messages[start]) {
            let mut j = i;
            while j < messages.len() {
                if is_tool_result(&messages[j]) {
                    j += 1;
                    i = j;
                } else if is_system(&messages[j]) {
                    j += 1;
                } else {
                    break;
                }
            }
        }
        out.push(start..i);
    }
    out
}

/// Drops the oldest non-system turns until `estimate(messages) + fixed_overhead <= budget`.
/// Rules: every `system`/`developer` message is kept (wherever it is); the latest `user`
/// message is always kept, as is everything after it; an assistant message with `tool_calls`
/// and the `tool` messages answering it form one unit, dropped together or kept together
/// (never split); after dropping, the first non-system message should not be an orphan `tool`
/// message. Returns None if it cannot fit even after dropping everything droppable.
/// `fixed_overhead` = tokens of the non-message parts (tools etc.) + requested output tokens.
///
/// `estimate(messages)` is the sum of [`estimate_message_tokens`] plus
/// [`REPLY_PRIMING_TOKENS`], so with `fixed_overhead = estimate_non_message_tokens(body) +
/// requested_output_tokens(body)` the check matches [`estimate_prompt_tokens`] + output.
///
/// Dropping is per message (or per tool-call unit), oldest first, so the result can start with
/// an assistant message whose question was dropped. If there is no `user` message, the last
/// unit is kept instead. A message list that already fits is returned unchanged.
pub fn truncate_to_fit(messages: &[Value], budget: u64, fixed_overhead: u64) -> Option<Truncation> {
    let tokens: Vec<u64> = messages.iter().map(estimate_message_tokens).collect();
    let mut total = tokens
        .iter()
        .fold(REPLY_PRIMING_TOKENS, |a, &t| a.saturating_add(t));
    let fits = |total: u64| total.saturating_add(fixed_overhead) <= budget;
    if fits(total) {
        return Some(Truncation {
            messages: messages.to_vec(),
            dropped_messages: 0,
            dropped_tokens: 0,
        });
    }

    let units = units(messages);
    // Units from the latest user message on are protected (a user message is always a unit of
    // its own); without any user message, the last unit is.
    let protected_from = units
        .iter()
        .rposition(|u| role(&messages[u.start]) == Some("user"))
        .unwrap_or(units.len().saturating_sub(1));

    let mut dropped = vec![false; messages.len()];
    let mut dropped_messages = 0usize;
    let mut dropped_tokens = 0u64;
    let mut drop_unit = |u: &Range<usize>, total: &mut u64| {
        for i in u.clone().filter(|&i| !is_system(&messages[i])) {
            dropped[i] = true;
            dropped_messages += 1;
            dropped_tokens = dropped_tokens.saturating_add(tokens[i]);
            *total = total.saturating_sub(tokens[i]);
        }
    };

    let mut next = 0;
    while !fits(total) && next < protected_from {
        drop_unit(&units[next], &mut total);
        next += 1;
    }
    if !fits(total) {
        return None;
    }
    // Units are never split, so a tool result that is now first had no tool call before it in
    // the request either; drop it (and any like it) rather than lead with an orphan.
    while next < protected_from && is_tool_result(&messages[units[next].start]) {
        drop_unit(&units[next], &mut total);
        next += 1;
    }

    let kept = messages
        .iter()
        .zip(&dropped)
        .filter(|(_, &d)| !d)
        .map(|(m, _)| m.clone())
        .collect();
    Some(Truncation {
        messages: kept,
        dropped_messages,
        dropped_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // ---- built-in table ----

    #[test]
    fn remembered_answers_match_the_table_across_forgetting() {
        let names: Vec<String> = (0..1300)
            .map(|i| match i % 3 {
                0 => format!("gpt-4o-{i}"),
                1 => format!("unknown-model-{i}"),
                _ => format!("ns/llama3.1:{i}b"),
            })
            .collect();
        for round in 0..2 {
            for n in &names {
                assert_eq!(builtin_window(n), scan_window(n), "{n} (round {round})");
            }
        }
        assert_eq!(builtin_window("gpt-4o-1"), Some(128_000));
        assert_eq!(builtin_window("unknown-model-1"), None);
    }

    #[test]
    fn exact_names() {
        assert_eq!(builtin_window("gpt-4o"), Some(128_000));
        assert_eq!(builtin_window("gpt-4o-mini"), Some(128_000));
        assert_eq!(builtin_window("gpt-4.1"), Some(1_047_576));
        assert_eq!(builtin_window("gpt-4.1-mini"), Some(1_047_576));
        assert_eq!(builtin_window("gpt-4-turbo"), Some(128_000));
        assert_eq!(builtin_window("gpt-4"), Some(8_192));
        assert_eq!(builtin_window("gpt-3.5-turbo"), Some(16_385));
        assert_eq!(builtin_window("o1"), Some(200_000));
        assert_eq!(builtin_window("o3"), Some(200_000));
        assert_eq!(builtin_window("o4-mini"), Some(200_000));
        assert_eq!(builtin_window("gpt-5"), Some(400_000));
        assert_eq!(builtin_window("gemini-1.5-pro"), Some(2_097_152));
        assert_eq!(builtin_window("gemini-1.5-flash"), Some(1_048_576));
        assert_eq!(builtin_window("grok-4"), Some(256_000));
        assert_eq!(builtin_window("codestral"), Some(256_000));
        assert_eq!(builtin_window("deepseek-chat"), Some(128_000));
        assert_eq!(builtin_window("deepseek-reasoner"), Some(128_000));
        assert_eq!(builtin_window("command-r"), Some(128_000));
        assert_eq!(builtin_window("command-r-plus"), Some(128_000));
        assert_eq!(builtin_window("command-a"), Some(256_000));
        assert_eq!(builtin_window("sonar"), Some(127_072));
        assert_eq!(builtin_window("mistral"), Some(32_768));
    }

    #[test]
    fn dated_snapshots_and_suffixes_use_longest_prefix() {
        assert_eq!(builtin_window("gpt-4o-2024-08-06"), Some(128_000));
        assert_eq!(builtin_window("gpt-4o-mini-2024-07-18"), Some(128_000));
        assert_eq!(builtin_window("gpt-4-0613"), Some(8_192));
        assert_eq!(builtin_window("gpt-4-turbo-2024-04-09"), Some(128_000));
        assert_eq!(builtin_window("gpt-4-32k-0613"), Some(32_768));
        assert_eq!(builtin_window("gpt-4.1-2025-04-14"), Some(1_047_576));
        assert_eq!(builtin_window("gpt-3.5-turbo-0125"), Some(16_385));
        assert_eq!(builtin_window("gpt-3.5-turbo-instruct"), Some(4_096));
        assert_eq!(builtin_window("o1-mini-2024-09-12"), Some(128_000));
        assert_eq!(builtin_window("o1-2024-12-17"), Some(200_000));
        assert_eq!(builtin_window("o3-mini-2025-01-31"), Some(200_000));
        assert_eq!(builtin_window("gpt-5-mini-2025-08-07"), Some(400_000));
        assert_eq!(builtin_window("gpt-5-chat-latest"), Some(128_000));
        assert_eq!(builtin_window("claude-3-5-haiku-latest"), Some(200_000));
        assert_eq!(builtin_window("claude-3-5-sonnet-20241022"), Some(200_000));
        assert_eq!(builtin_window("claude-sonnet-4-20250514"), Some(200_000));
        assert_eq!(builtin_window("claude-sonnet-4-5-20250929"), Some(200_000));
        assert_eq!(builtin_window("claude-opus-4-1-20250805"), Some(200_000));
        assert_eq!(builtin_window("claude-2.1"), Some(100_000));
        assert_eq!(builtin_window("gemini-1.5-pro-002"), Some(2_097_152));
        assert_eq!(builtin_window("gemini-1.5-flash-8b"), Some(1_048_576));
        assert_eq!(builtin_window("gemini-2.0-flash"), Some(1_048_576));
        assert_eq!(builtin_window("gemini-2.5-pro"), Some(1_048_576));
        assert_eq!(builtin_window("grok-2-1212"), Some(131_072));
        assert_eq!(builtin_window("grok-3-mini"), Some(131_072));
        assert_eq!(builtin_window("grok-4-0709"), Some(256_000));
        assert_eq!(builtin_window("mistral-large-latest"), Some(131_072));
        assert_eq!(builtin_window("mistral-medium-2505"), Some(131_072));
        assert_eq!(builtin_window("mistral-small-latest"), Some(131_072));
        assert_eq!(builtin_window("codestral-latest"), Some(256_000));
        assert_eq!(builtin_window("command-r-08-2024"), Some(128_000));
        assert_eq!(builtin_window("command-a-03-2025"), Some(256_000));
        assert_eq!(builtin_window("sonar-reasoning"), Some(127_072));
        assert_eq!(builtin_window("sonar-pro"), Some(200_000));
    }

    #[test]
    fn ollama_tags_match_by_base_name() {
        assert_eq!(builtin_window("llama3:8b"), Some(8_192));
        assert_eq!(builtin_window("llama3:latest"), Some(8_192));
        assert_eq!(builtin_window("llama3.1:8b"), Some(131_072));
        assert_eq!(builtin_window("llama3.2:3b-instruct-q4_K_M"), Some(131_072));
        assert_eq!(builtin_window("llama3.3:70b"), Some(131_072));
        assert_eq!(builtin_window("qwen2.5:7b-instruct"), Some(32_768));
        assert_eq!(builtin_window("qwen2.5-coder:14b"), Some(32_768));
        assert_eq!(builtin_window("qwen3:8b"), Some(40_960));
        assert_eq!(builtin_window("mistral:7b"), Some(32_768));
        assert_eq!(builtin_window("mistral:latest"), Some(32_768));
        assert_eq!(builtin_window("phi3:mini"), Some(4_096));
        assert_eq!(builtin_window("phi3.5:latest"), Some(131_072));
        assert_eq!(builtin_window("gemma2:9b"), Some(8_192));
        assert_eq!(builtin_window("gemma3:12b"), Some(131_072));
        assert_eq!(builtin_window("deepseek-r1:14b"), Some(131_072));
        assert_eq!(builtin_window("gpt-oss:20b"), Some(131_072));
        // Tag-specific entries win over the base name.
        assert_eq!(builtin_window("gemma3:1b"), Some(32_768));
        assert_eq!(builtin_window("gemma3:1b-it-qat"), Some(32_768));
        assert_eq!(builtin_window("codestral:22b"), Some(32_768));
        assert_eq!(builtin_window("mixtral:8x22b"), Some(65_536));
        assert_eq!(builtin_window("mixtral:8x7b"), Some(32_768));
    }

    #[test]
    fn case_insensitive_trimmed_and_namespaced() {
        assert_eq!(builtin_window("GPT-4o"), Some(128_000));
        assert_eq!(builtin_window("Claude-3-Opus-20240229"), Some(200_000));
        assert_eq!(builtin_window("  gpt-4o  "), Some(128_000));
        assert_eq!(builtin_window("Llama3.1:8B"), Some(131_072));
        assert_eq!(builtin_window("models/gemini-1.5-pro"), Some(2_097_152));
        assert_eq!(builtin_window("openai/gpt-4o-mini"), Some(128_000));
        assert_eq!(
            builtin_window("meta-llama/Llama-3.3-70B-Instruct"),
            Some(131_072)
        );
        assert_eq!(
            builtin_window("meta-llama/Meta-Llama-3.1-8B-Instruct"),
            Some(131_072)
        );
        assert_eq!(builtin_window("llama-3.1-8b-instant"), Some(131_072));
        assert_eq!(builtin_window("qwen2.5-7b-instruct"), Some(32_768));
        assert_eq!(builtin_window("gemma-3-12b-it"), Some(131_072));
    }

    #[test]
    fn unknown_models_are_none() {
        assert_eq!(builtin_window(""), None);
        assert_eq!(builtin_window("   "), None);
        assert_eq!(builtin_window("my-finetune"), None);
        assert_eq!(builtin_window("text-embedding-3-small"), None);
        assert_eq!(builtin_window("gemini-exp-1206"), None);
        // A prefix must end at a boundary: these are not gpt-4 / o1 / gemma3 / claude-.
        assert_eq!(builtin_window("gpt-4z"), None);
        assert_eq!(builtin_window("o1x"), None);
        assert_eq!(builtin_window("claude"), None);
        assert_eq!(builtin_window("gemma3n:e4b"), Some(32_768));
        // `qwen2` ends at a boundary (`.`), so an unlisted qwen2.5 variant gets qwen2's window.
        assert_eq!(builtin_window("qwen2.5vl:7b"), Some(32_768));
        // Multi-byte text must not panic on byte slicing.
        assert_eq!(builtin_window("gpt-é"), None);
        assert_eq!(builtin_window("ゲーム"), None);
        assert_eq!(builtin_window("/"), None);
    }

    #[test]
    fn table_is_lowercase_unique_and_self_consistent() {
        for (i, (name, w)) in BUILTIN_WINDOWS.iter().enumerate() {
            assert_eq!(*name, name.to_ascii_lowercase(), "{name} is not lowercase");
            assert!(*w >= 2_048, "{name}");
            assert!(
                BUILTIN_WINDOWS[i + 1..].iter().all(|(n, _)| n != name),
                "{name} is listed twice"
            );
            if !name.ends_with('-') {
                assert_eq!(builtin_window(name), Some(*w), "{name}");
            }
        }
    }

    // ---- estimation ----

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": text})
    }

    #[test]
    fn text_counting_by_utf8_class() {
        let tok = |s: &str| {
            let mut q = Quarters::default();
            q.text(s);
            q.tokens()
        };
        assert_eq!(tok(""), 0);
        assert_eq!(tok("a"), 1);
        assert_eq!(tok("abcd"), 1);
        assert_eq!(tok("abcde"), 2);
        assert_eq!(tok("hello world"), 3);
        // 2-byte characters: half a token each.
        assert_eq!(tok("Привет"), 3);
        // "caf" is 3 quarters, "é" 2: 5 quarters round up to 2 tokens.
        assert_eq!(tok("café"), 2);
        // 3-byte characters: one token each.
        assert_eq!(tok("你好世界"), 4);
        assert_eq!(tok("こんにちは"), 5);
        // 4-byte characters: two tokens each.
        assert_eq!(tok("😀"), 2);
    }

    #[test]
    fn message_overheads() {
        assert_eq!(estimate_message_tokens(&user("")), TOKENS_PER_MESSAGE);
        assert_eq!(estimate_message_tokens(&user("hello world")), 4 + 3);
        assert_eq!(
            estimate_message_tokens(&json!({"role": "user", "content": null})),
            4
        );
        // name: 1 extra token plus its text ("bob" -> 1), counted together with the content.
        assert_eq!(
            estimate_message_tokens(&json!({"role": "user", "name": "bob", "content": "hi"})),
            4 + 1 + 2
        );
        // Body-level priming.
        let body = json!({"model": "gpt-4o", "messages": [user("hello world")]});
        assert_eq!(estimate_prompt_tokens(&body), 7 + REPLY_PRIMING_TOKENS);
        assert_eq!(estimate_prompt_tokens(&json!({})), REPLY_PRIMING_TOKENS);
    }

    #[test]
    fn english_prose_is_close_to_real_counts() {
        // 100 words of ordinary English: real BPE tokenizers give ~130 tokens.
        let text = "The quick brown fox jumps over the lazy dog while the farmer watches from \
                    the porch of his old wooden house. Every morning he wakes before sunrise, \
                    feeds the chickens, and walks along the fence to check that nothing has \
                    broken during the night. His daughter studies engineering in the city and \
                    calls every Sunday to tell him about her projects, her friends, and the \
                    strange food she has learned to cook. He listens carefully, asks simple \
                    questions, and promises to visit her before the winter arrives, although \
                    both of them know that the farm rarely lets him go away.";
        assert_eq!(text.split_whitespace().count(), 100);
        let est = estimate_message_tokens(&user(text)) - TOKENS_PER_MESSAGE;
        assert!((91..=169).contains(&est), "estimate {est} vs ~130");
        // Deliberately a little conservative: not below the usual count (it is 142).
        assert!(est >= 130, "estimate {est}");
    }

    #[test]
    fn openai_cookbook_example_within_tolerance() {
        // The example from OpenAI's "How to count tokens with tiktoken" cookbook; it counts 129
        // prompt tokens for gpt-4-0613 and 124 for gpt-4o.
        let body = json!({"messages": [
            {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
            {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
            {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
            {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."},
            {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to do better."},
            {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client deliverable."},
        ]});
        let est = estimate_prompt_tokens(&body);
        // 129 +-25%; the estimate is 158 (+22%, the `name` values cost more than real).
        assert!((97..=161).contains(&est), "estimate {est} vs 129");
        assert!(est >= 129, "estimate {est}");
    }

    #[test]
    fn cjk_counts_about_one_token_per_character() {
        // 21 CJK characters (including fullwidth punctuation): one token each.
        let text = "今天天气很好，我们一起去公园散步吧。好的！";
        assert_eq!(text.chars().count(), 21);
        assert_eq!(estimate_message_tokens(&user(text)), 4 + 21);
        // Mixed text.
        assert_eq!(estimate_message_tokens(&user("Hello 世界")), 4 + 2 + 2);
    }

    #[test]
    fn images_count_fixed_tokens() {
        let msg = json!({"role": "user", "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", "A".repeat(100_000))}},
        ]});
        // 22 ASCII chars -> 6 tokens; the base64 data is not counted as text.
        assert_eq!(estimate_message_tokens(&msg), 4 + 6 + IMAGE_TOKENS);

        let two = json!({"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/b.png", "detail": "low"}},
        ]});
        assert_eq!(
            estimate_message_tokens(&two),
            4 + IMAGE_TOKENS + IMAGE_LOW_DETAIL_TOKENS
        );
    }

    #[test]
    fn audio_and_file_parts() {
        // 160 000 base64 chars = 120 000 bytes ~ 7.5 s at 128 kbit/s -> 75 tokens.
        let audio = json!({"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "A".repeat(160_000), "format": "mp3"}},
        ]});
        assert_eq!(estimate_message_tokens(&audio), 4 + 75);
        let file = json!({"role": "user", "content": [
            {"type": "file", "file": {"filename": "a.pdf", "file_data": "A".repeat(50_000)}},
        ]});
        assert_eq!(estimate_message_tokens(&file), 4 + FILE_TOKENS + 2);
    }

    #[test]
    fn tool_calls_and_results() {
        let args = r#"{"location":"Paris, France","unit":"celsius"}"#; // 45 chars
        assert_eq!(args.len(), 45);
        let call = json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": args}},
        ]});
        // 4 + 3 per call + (11 + 45 = 56 chars -> 14)
        assert_eq!(estimate_message_tokens(&call), 4 + 3 + 14);

        let two_calls = json!({"role": "assistant", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": args}},
            {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": args}},
        ]});
        assert_eq!(estimate_message_tokens(&two_calls), 4 + 6 + 28);

        // tool result: content + tool_call_id ("call_1" + "22 degrees and sunny" = 26 chars -> 7)
        let result =
            json!({"role": "tool", "tool_call_id": "call_1", "content": "22 degrees and sunny"});
        assert_eq!(estimate_message_tokens(&result), 4 + 7);

        // Legacy function_call with object arguments.
        let legacy =
            json!({"role": "assistant", "function_call": {"name": "f", "arguments": {"a": 1}}});
        // "f" + {"a":1} (7 chars) = 8 quarters -> 2
        assert_eq!(estimate_message_tokens(&legacy), 4 + 3 + 2);
    }

    #[test]
    fn tool_definitions_and_schema_count_as_json_text() {
        let tool = json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}});
        // {"type":"function","function":{"name":"f","parameters":{"type":"object"}}} = 74 chars
        assert_eq!(tool.to_string().len(), 74);
        assert_eq!(json_tokens(&tool), 19);
        let messages = json!([user("hello world")]);
        let plain = json!({"messages": messages});
        let with_tools = json!({"messages": messages, "tools": [tool]});
        assert_eq!(
            estimate_prompt_tokens(&with_tools) - estimate_prompt_tokens(&plain),
            TOOLS_PREAMBLE_TOKENS + 19
        );
        assert_eq!(
            estimate_non_message_tokens(&with_tools),
            TOOLS_PREAMBLE_TOKENS + 19
        );
        assert_eq!(
            estimate_non_message_tokens(&json!({"tools": []})),
            0,
            "empty tools cost nothing"
        );

        let schema = json!({"name": "x", "schema": {"type": "object", "properties": {"n": {"type": "integer", "maximum": 12345}}}});
        let with_schema = json!({"messages": messages, "response_format": {"type": "json_schema", "json_schema": schema}});
        assert_eq!(
            estimate_non_message_tokens(&with_schema),
            json_tokens(&schema)
        );
        assert!(json_tokens(&schema) > 15);
        let json_object = json!({"response_format": {"type": "json_object"}});
        assert_eq!(estimate_non_message_tokens(&json_object), 0);

        let choice = json!({"tool_choice": {"type": "function", "function": {"name": "f"}}});
        assert!(estimate_non_message_tokens(&choice) > 0);
        assert_eq!(
            estimate_non_message_tokens(&json!({"tool_choice": "auto"})),
            0
        );
    }

    #[test]
    fn json_text_length_is_exact_for_plain_values() {
        for v in [
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(-12345),
            json!(1.5),
            json!(18446744073709551615u64),
            json!([]),
            json!({}),
            json!([1, "a", null, {"k": [true, 2.25]}]),
            json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}),
        ] {
            let mut q = Quarters::default();
            json_text(&v, &mut q);
            assert_eq!(q.0, v.to_string().len() as u64, "{v}");
        }
    }

    #[test]
    fn requested_output() {
        assert_eq!(requested_output_tokens(&json!({})), 0);
        assert_eq!(requested_output_tokens(&json!({"max_tokens": 100})), 100);
        assert_eq!(
            requested_output_tokens(&json!({"max_completion_tokens": 50, "max_tokens": 100})),
            50
        );
        assert_eq!(
            requested_output_tokens(&json!({"max_completion_tokens": null, "max_tokens": 100})),
            100
        );
        assert_eq!(
            requested_output_tokens(&json!({"max_completion_tokens": -5, "max_tokens": 7})),
            7
        );
        assert_eq!(requested_output_tokens(&json!({"max_tokens": 99.2})), 100);
        assert_eq!(requested_output_tokens(&json!({"max_tokens": "100"})), 0);
    }

    // ---- truncation ----

    fn msg(role: &str, text: &str) -> Value {
        json!({"role": role, "content": text})
    }

    /// A message of `n` 4-character words: `n` text tokens + 4 overhead.
    fn sized(role: &str, tag: &str, n: usize) -> Value {
        let mut text = format!("{tag:<4}");
        text.truncate(4);
        text.push_str(&"abcd".repeat(n.saturating_sub(1)));
        json!({"role": role, "content": text})
    }

    fn tool_call(id: &str, args_len: usize) -> Value {
        json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": id, "type": "function", "function": {"name": "lookup", "arguments": "x".repeat(args_len)}},
        ]})
    }

    fn tool_result(id: &str, text: &str) -> Value {
        json!({"role": "tool", "tool_call_id": id, "content": text})
    }

    /// A short label for each message: its content, or `call:<id>` for a tool call.
    fn labels(messages: &[Value]) -> Vec<String> {
        messages
            .iter()
            .map(|m| match m.get("tool_calls") {
                Some(c) => format!("call:{}", c[0]["id"].as_str().unwrap()),
                None => {
                    let s: String = m["content"].as_str().unwrap().chars().take(4).collect();
                    s.trim_end().to_string()
                }
            })
            .collect()
    }

    /// The budget under which exactly `kept` (with priming) plus `overhead` fit.
    fn budget_for(kept: &[&Value], overhead: u64) -> u64 {
        kept.iter().map(|m| estimate_message_tokens(m)).sum::<u64>()
            + REPLY_PRIMING_TOKENS
            + overhead
    }

    #[test]
    fn sized_messages_have_predictable_cost() {
        assert_eq!(estimate_message_tokens(&sized("user", "u1", 10)), 14);
        assert_eq!(estimate_message_tokens(&sized("user", "u1", 1)), 5);
    }

    #[test]
    fn no_op_when_it_already_fits() {
        let msgs = vec![
            msg("system", "sys"),
            msg("user", "hi"),
            msg("assistant", "hello"),
            msg("user", "bye"),
        ];
        let total = sum_message_tokens(&msgs) + REPLY_PRIMING_TOKENS;
        let t = truncate_to_fit(&msgs, total + 100, 100).unwrap();
        assert_eq!(t.messages, msgs);
        assert_eq!(t.dropped_messages, 0);
        assert_eq!(t.dropped_tokens, 0);
        // Exactly at the budget still fits.
        assert_eq!(
            truncate_to_fit(&msgs, total + 100, 100)
                .unwrap()
                .dropped_messages,
            0
        );
        // Empty input fits any budget that covers the priming.
        let t = truncate_to_fit(&[], REPLY_PRIMING_TOKENS, 0).unwrap();
        assert!(t.messages.is_empty());
    }

    #[test]
    fn drops_oldest_first_keeping_system_and_latest_user() {
        let msgs = vec![
            sized("system", "sys", 10),
            sized("user", "u1", 10),
            sized("assistant", "a1", 10),
            sized("user", "u2", 10),
            sized("assistant", "a2", 10),
            sized("user", "u3", 10),
        ];
        let overhead = 50;
        // Room for sys + a2 + u3: drops u1, a1, u2 (oldest first).
        let budget = budget_for(&[&msgs[0], &msgs[4], &msgs[5]], overhead);
        let t = truncate_to_fit(&msgs, budget, overhead).unwrap();
        assert_eq!(labels(&t.messages), ["sys", "a2", "u3"]);
        assert_eq!(t.dropped_messages, 3);
        assert_eq!(t.dropped_tokens, 3 * 14);

        // One token less than that: a2 goes too.
        let t = truncate_to_fit(&msgs, budget - 1, overhead).unwrap();
        assert_eq!(labels(&t.messages), ["sys", "u3"]);
        assert_eq!(t.dropped_messages, 4);

        // Room for everything but u1: only u1 goes.
        let budget = budget_for(
            &[&msgs[0], &msgs[2], &msgs[3], &msgs[4], &msgs[5]],
            overhead,
        );
        let t = truncate_to_fit(&msgs, budget, overhead).unwrap();
        assert_eq!(labels(&t.messages), ["sys", "a1", "u2", "a2", "u3"]);
        assert_eq!(t.dropped_messages, 1);
        assert_eq!(t.dropped_tokens, 14);
    }

    #[test]
    fn system_and_developer_messages_are_kept_wherever_they_are() {
        let msgs = vec![
            sized("user", "u1", 10),
            sized("developer", "dev", 10),
            sized("assistant", "a1", 10),
            sized("system", "sys2", 10),
            sized("user", "u2", 10),
        ];
        let budget = budget_for(&[&msgs[1], &msgs[3], &msgs[4]], 0);
        let t = truncate_to_fit(&msgs, budget, 0).unwrap();
        assert_eq!(labels(&t.messages), ["dev", "sys2", "u2"]);
        assert_eq!(t.dropped_messages, 2);
    }

    #[test]
    fn everything_after_the_latest_user_is_kept() {
        // An agent loop in progress: the request ends with tool results after the latest user.
        let msgs = vec![
            sized("system", "sys", 5),
            sized("user", "u1", 20),
            sized("assistant", "a1", 20),
            sized("user", "u2", 5),
            tool_call("c1", 40),
            tool_result("c1", "r1"),
            tool_call("c2", 40),
            tool_result("c2", "r2"),
        ];
        let tail: Vec<&Value> = msgs[3..].iter().collect();
        let mut kept = vec![&msgs[0]];
        kept.extend(tail.iter().copied());
        let t = truncate_to_fit(&msgs, budget_for(&kept, 0), 0).unwrap();
        assert_eq!(
            labels(&t.messages),
            ["sys", "u2", "call:c1", "r1", "call:c2", "r2"]
        );
        assert_eq!(t.dropped_messages, 2);
        // Even less room: the tail cannot be shortened.
        assert_eq!(truncate_to_fit(&msgs, budget_for(&kept, 0) - 1, 0), None);
    }

    #[test]
    fn tool_pair_is_dropped_together_even_if_the_call_alone_would_do() {
        let msgs = vec![
            sized("system", "sys", 5),
            tool_call("c1", 400), // big: dropping it alone would fit
            tool_result("c1", "r1"),
            sized("assistant", "a1", 5),
            sized("user", "u2", 5),
        ];
        let total = sum_message_tokens(&msgs) + REPLY_PRIMING_TOKENS;
        let call_tokens = estimate_message_tokens(&msgs[1]);
        let result_tokens = estimate_message_tokens(&msgs[2]);
        let t = truncate_to_fit(&msgs, total - call_tokens, 0).unwrap();
        assert_eq!(labels(&t.messages), ["sys", "a1", "u2"]);
        assert_eq!(t.dropped_messages, 2);
        assert_eq!(t.dropped_tokens, call_tokens + result_tokens);
    }

    #[test]
    fn tool_pair_is_kept_together_when_an_older_turn_suffices() {
        let msgs = vec![
            sized("system", "sys", 5),
            sized("user", "u1", 30),
            tool_call("c1", 40),
            tool_result("c1", "r1"),
            tool_result("c1", "r1b"), // parallel calls answered by two results
            sized("assistant", "a1", 5),
            sized("user", "u2", 5),
        ];
        let total = sum_message_tokens(&msgs) + REPLY_PRIMING_TOKENS;
        let t = truncate_to_fit(&msgs, total - 30, 0).unwrap();
        assert_eq!(
            labels(&t.messages),
            ["sys", "call:c1", "r1", "r1b", "a1", "u2"]
        );
        assert_eq!(t.dropped_messages, 1);

        // One token more to shed: the whole unit of three goes, never only part of it.
        let t = truncate_to_fit(&msgs, total - 35, 0).unwrap();
        assert_eq!(labels(&t.messages), ["sys", "a1", "u2"]);
        assert_eq!(t.dropped_messages, 4);
    }

    #[test]
    fn system_message_inside_a_tool_unit_is_kept() {
        let msgs = vec![
            sized("user", "u1", 5),
            tool_call("c1", 40),
            sized("system", "note", 5),
            tool_result("c1", "r1"),
            sized("user", "u2", 5),
        ];
        let budget = budget_for(&[&msgs[2], &msgs[4]], 0);
        let t = truncate_to_fit(&msgs, budget, 0).unwrap();
        assert_eq!(labels(&t.messages), ["note", "u2"]);
        assert_eq!(t.dropped_messages, 3);
        // Room for the unit: only u1 goes, the unit stays whole around the system message.
        let budget = budget_for(&msgs[1..].iter().collect::<Vec<_>>(), 0);
        let t = truncate_to_fit(&msgs, budget, 0).unwrap();
        assert_eq!(labels(&t.messages), ["call:c1", "note", "r1", "u2"]);
    }

    #[test]
    fn orphan_tool_result_never_leads() {
        // The request already holds an orphan tool result (its call was trimmed by the client).
        let msgs = vec![
            sized("system", "sys", 5),
            sized("user", "u1", 10),
            tool_result("gone", "orph"),
            tool_result("gone", "orp2"),
            sized("assistant", "a1", 5),
            sized("user", "u2", 5),
        ];
        let total = sum_message_tokens(&msgs) + REPLY_PRIMING_TOKENS;
        // Dropping u1 alone would fit, but then the orphans would lead: they go too.
        let t = truncate_to_fit(&msgs, total - 14, 0).unwrap();
        assert_eq!(labels(&t.messages), ["sys", "a1", "u2"]);
        assert_eq!(t.dropped_messages, 3);
        assert_eq!(
            t.dropped_tokens,
            14 + estimate_message_tokens(&msgs[2]) + estimate_message_tokens(&msgs[3])
        );
        // A system message between does not change that.
        let msgs2 = vec![
            sized("user", "u1", 10),
            sized("system", "sys", 5),
            tool_result("gone", "orph"),
            sized("user", "u2", 5),
        ];
        let total = sum_message_tokens(&msgs2) + REPLY_PRIMING_TOKENS;
        let t = truncate_to_fit(&msgs2, total - 14, 0).unwrap();
        assert_eq!(labels(&t.messages), ["sys", "u2"]);
        // Without any dropping, the request is left as the client sent it.
        let t = truncate_to_fit(&msgs2, total, 0).unwrap();
        assert_eq!(t.messages, msgs2);
    }

    #[test]
    fn none_when_it_cannot_fit() {
        let msgs = vec![
            sized("system", "sys", 100),
            sized("user", "u1", 10),
            sized("user", "u2", 10),
        ];
        // System + latest user need 104 + 14 + 3 = 121.
        assert_eq!(truncate_to_fit(&msgs, 120, 0), None);
        let t = truncate_to_fit(&msgs, 121, 0).unwrap();
        assert_eq!(labels(&t.messages), ["sys", "u2"]);
        // The fixed overhead (tools + max_tokens) counts against the budget too.
        assert_eq!(truncate_to_fit(&msgs, 1_000, 900), None);
        assert_eq!(truncate_to_fit(&msgs, 0, 0), None);
        assert_eq!(truncate_to_fit(&msgs, 100, u64::MAX), None);
        // Only system messages: nothing is droppable.
        assert_eq!(truncate_to_fit(&msgs[..1], 50, 0), None);
    }

    #[test]
    fn without_a_user_message_the_last_unit_is_kept() {
        let msgs = vec![
            sized("system", "sys", 5),
            sized("assistant", "a1", 20),
            tool_call("c1", 40),
            tool_result("c1", "r1"),
        ];
        let budget = budget_for(&[&msgs[0], &msgs[2], &msgs[3]], 0);
        let t = truncate_to_fit(&msgs, budget, 0).unwrap();
        assert_eq!(labels(&t.messages), ["sys", "call:c1", "r1"]);
        assert_eq!(truncate_to_fit(&msgs, budget - 1, 0), None);
    }

    #[test]
    fn truncation_matches_the_body_estimate() {
        // With fixed_overhead built from the body, the fit check equals estimate_prompt_tokens
        // + requested output.
        let body = json!({
            "messages": [
                sized("system", "sys", 5),
                sized("user", "u1", 50),
                sized("assistant", "a1", 50),
                sized("user", "u2", 5),
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "max_tokens": 200,
        });
        let need = estimate_prompt_tokens(&body) + requested_output_tokens(&body);
        let fixed = estimate_non_message_tokens(&body) + requested_output_tokens(&body);
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(
            truncate_to_fit(messages, need, fixed)
                .unwrap()
                .dropped_messages,
            0
        );
        let t = truncate_to_fit(messages, need - 1, fixed).unwrap();
        assert_eq!(labels(&t.messages), ["sys", "a1", "u2"]);
        assert_eq!(t.dropped_tokens, 54);
    }
}
