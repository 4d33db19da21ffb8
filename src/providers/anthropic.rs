//! Pure translation between the OpenAI Chat Completions format and the Anthropic Messages format
//! (`../shared/WIRE.md`), both directions, non-streaming and streaming. No I/O happens here: the
//! proxy feeds JSON in and sends what comes out.
//!
//! # Outbound: OpenAI client request → Anthropic upstream ([`request_to_anthropic`])
//!
//! | OpenAI request                                   | Anthropic Messages request                                        |
//! |--------------------------------------------------|-------------------------------------------------------------------|
//! | `model`                                          | `model` = the routed model name (argument)                        |
//! | `system` / `developer` messages (string or text parts, anywhere in the list) | top-level `system` string, every non-empty piece joined with `"\n\n"` |
//! | `user` content string / parts                    | `user` turn; `text` part → `{type:text}` (empty text dropped)      |
//! | `image_url` part, `data:<mt>;base64,<d>` URL      | `{type:image, source:{type:base64, media_type, data}}` (`detail` dropped) |
//! | `image_url` part, `http(s)://` URL                | `{type:image, source:{type:url, url}}`                            |
//! | `file` part with a `data:application/pdf;base64` `file_data` | `{type:document, source:{type:base64, media_type, data}}` |
//! | `assistant` content (text / refusal parts)       | `assistant` turn, `text` blocks first                             |
//! | `assistant.tool_calls[]`                         | `tool_use {id, name, input}` blocks after the text; `arguments` must be a JSON object (`""` → `{}`) |
//! | `tool` message (`tool_call_id`, content)         | `{type:tool_result, tool_use_id, content}` in a `user` turn (content string, or text/image blocks; omitted when empty) |
//! | consecutive same-role turns (`tool` counts as `user`) | merged into one turn; in a user turn `tool_result` blocks are moved first (Anthropic requires it) |
//! | messages that translate to no blocks (e.g. `""`) | skipped                                                           |
//! | `tools[].function {name, description, parameters}` | `tools[] {name, description, input_schema}` (`parameters` absent → `{"type":"object","properties":{}}`; `strict` dropped) |
//! | `tool_choice` `"auto"` / `"required"` / `"none"` / `{type:function,function:{name}}` | `{type:auto}` / `{type:any}` / `{type:none}` / `{type:tool,name}` |
//! | `parallel_tool_calls: false`                     | `tool_choice.disable_parallel_tool_use: true` (creates `{type:auto}` if absent; not added to `{type:none}`) |
//! | `tools` absent or empty                          | `tools`, `tool_choice`, `parallel_tool_calls` not sent            |
//! | `stop` (string or list)                          | `stop_sequences` (list; empty strings dropped)                     |
//! | `max_completion_tokens`, else `max_tokens`       | `max_tokens` (default [`DEFAULT_MAX_TOKENS`] = 4096)              |
//! | `temperature`                                    | `temperature` clamped into Anthropic's `0..=1`                    |
//! | `top_p`                                          | `top_p`                                                           |
//! | `stream` (argument)                              | `stream: true` when streaming (omitted otherwise)                 |
//! | `user`                                           | `metadata.user_id`                                                |
//!
//! **Dropped (never sent upstream):** `n`, `presence_penalty`, `frequency_penalty`, `logit_bias`,
//! `logprobs`, `top_logprobs`, `seed`, `response_format`, `stream_options`, `service_tier`, `store`,
//! `metadata`, `reasoning_effort`, `modalities`, `audio`, `prediction`, `web_search_options`,
//! `prompt_cache_key`, `safety_identifier`, `verbosity`, the message-level `name`, `tools[].function.strict`,
//! `image_url.detail`, and any unknown field. Rejected with [`TranslateError`] (the message names the
//! field): roles other than system/developer/user/assistant/tool (e.g. legacy `function`), the legacy
//! assistant `function_call`, `input_audio` and other unknown part types, non-PDF or `file_id` files,
//! image URLs that are neither `data:…;base64` nor http(s), tool-call `arguments` that are not a JSON
//! object, non-`function` tools, unknown `tool_choice` values, and fields of the wrong JSON type.
//!
//! # Anthropic response → OpenAI ([`response_to_openai`], [`AnthropicToOpenAiStream`])
//!
//! | Anthropic                                         | OpenAI                                                       |
//! |---------------------------------------------------|--------------------------------------------------------------|
//! | `id` `msg_X`                                      | `id` `chatcmpl-X`; `object`, `created` (now), `model` (argument) |
//! | `text` blocks                                     | `message.content` (concatenated; `null` when there is none)  |
//! | `tool_use {id, name, input}`                      | `message.tool_calls[] {id, type:function, function:{name, arguments: JSON string of input}}` |
//! | `thinking`, `redacted_thinking`, server-tool blocks | dropped                                                    |
//! | `stop_reason` (see [`stop_reason_to_finish`])     | `finish_reason`                                              |
//! | `usage.input_tokens + cache_creation_input_tokens + cache_read_input_tokens` | `usage.prompt_tokens` (`prompt_tokens_details.cached_tokens` = cache reads when > 0) |
//! | `usage.output_tokens`                             | `usage.completion_tokens`; `total_tokens` = sum              |
//! | stream `message_start`                            | chunk `delta {role:"assistant", content:""}`                 |
//! | stream `content_block_start` `tool_use`           | chunk `delta.tool_calls[{index:i, id, type, function:{name, arguments:""}}]`, `i` counts tool_use blocks |
//! | stream `text_delta` / `input_json_delta`          | chunk `delta.content` / `delta.tool_calls[{index:i, function:{arguments}}]` |
//! | stream `message_delta`                            | chunk `delta {}` with `finish_reason` (once); usage remembered |
//! | stream `message_stop`                             | (finish chunk if none yet), usage chunk `choices:[]` when asked, then [`OpenAiOut::Done`] |
//! | stream `error`                                    | [`OpenAiOut::Error`]                                         |
//! | stream `ping`, `content_block_stop`, unknown      | nothing                                                      |
//!
//! # Inbound: Anthropic client request → OpenAI upstream ([`request_to_openai`])
//!
//! | Anthropic request                                 | OpenAI request                                               |
//! |---------------------------------------------------|--------------------------------------------------------------|
//! | `system` (string or text blocks, joined `"\n\n"`) | first message `{role:system}`                                |
//! | `user` content string                             | `{role:user, content: string}`                               |
//! | `user` `text` / `image` blocks                    | content parts `text` / `image_url` (base64 source → data URL); a lone text block → string content |
//! | `document` block (base64 PDF / text source)       | `file` part with a data URL / `text` part                    |
//! | `tool_result {tool_use_id, content, is_error}`    | `{role:tool, tool_call_id, content}` emitted before the rest of the turn; block content → text joined `"\n"`; `is_error` → prefix `"Error: "`; images inside → appended to the following user message |
//! | `assistant` `text` / `tool_use {id,name,input}`   | `content` (concatenated, `null` when only tool calls) / `tool_calls` (`arguments` = JSON string of `input`) |
//! | `thinking`, `redacted_thinking` blocks            | dropped                                                      |
//! | `tools[] {name, description, input_schema}`       | `tools[] {type:function, function:{name, description, parameters}}` |
//! | `tool_choice` `auto` / `any` / `none` / `tool{name}` | `"auto"` / `"required"` / `"none"` / `{type:function,function:{name}}` |
//! | `tool_choice.disable_parallel_tool_use: true`     | `parallel_tool_calls: false` (tool fields only sent with tools) |
//! | `stop_sequences`                                  | `stop`                                                       |
//! | `max_tokens`, `temperature`, `top_p`              | same names                                                   |
//! | `stream: true`                                    | `stream: true` + `stream_options: {include_usage: true}`     |
//! | `metadata.user_id`                                | `user`                                                       |
//!
//! **Dropped:** `top_k`, `thinking`, `service_tier`, `container`, `mcp_servers`, `context_management`,
//! other `metadata` keys, `cache_control` and `citations` on blocks, and any unknown field. Server tools
//! (`type` other than `custom`), unknown block types and image `file` sources are rejected.
//!
//! # OpenAI response → Anthropic ([`response_to_anthropic`], [`OpenAiToAnthropicStream`])
//! `chatcmpl-X` → `msg_X`; content → a `text` block (or the `refusal` text); `tool_calls` → `tool_use`
//! blocks with `input` parsed from `arguments` (`""` → `{}`, anything that is not a JSON object →
//! `{"_raw_arguments": "<the string>"}`); `finish_reason` via [`finish_to_stop_reason`], and `tool_use`
//! whenever tool calls are present but the backend said `stop`; `usage.prompt_tokens - cached_tokens` →
//! `input_tokens`, `cached_tokens` → `cache_read_input_tokens`, `completion_tokens` → `output_tokens`.
//! Streaming emits `message_start` on the first chunk, one content block per text run or tool-call
//! index (closing the previous one when switching), remembers usage and `finish_reason`, and on
//! [`OpenAiToAnthropicStream::finish`] closes the open block, sends `message_delta` (stop reason,
//! `input_tokens`, `output_tokens`) and `message_stop`. A chunk carrying an `error` key becomes an
//! `error` event and ends the stream.
//!
//! # Errors
//! [`error_to_openai`] keeps the Anthropic error `type` and derives `code`
//! (`context_length_exceeded` for "prompt is too long", `invalid_api_key`, `rate_limit_exceeded`);
//! [`error_to_anthropic`] derives the Anthropic type from the status ([`anthropic_error_type`]).

use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};

/// A request or response that cannot be translated. The message names the offending field.
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error("{0}")]
    Invalid(String),
}

/// `max_tokens` sent to Anthropic when the OpenAI request sets neither `max_tokens` nor
/// `max_completion_tokens` (Anthropic requires it).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Schema sent for a function tool that declares no `parameters`.
fn empty_schema() -> Value {
    json!({"type": "object", "properties": {}})
}

// ------------------------------------------------------------------------------------------------
// Small helpers
// ------------------------------------------------------------------------------------------------

fn invalid(field: impl AsRef<str>, msg: impl std::fmt::Display) -> TranslateError {
    TranslateError::Invalid(format!("{}: {}", field.as_ref(), msg))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn as_obj<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, TranslateError> {
    v.as_object()
        .ok_or_else(|| invalid(field, format!("expected an object, got {}", type_name(v))))
}

/// A required string field.
fn req_str<'a>(
    o: &'a Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<&'a str, TranslateError> {
    match o.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err(invalid(
            format!("{field}.{key}"),
            format!("expected a string, got {}", type_name(v)),
        )),
        None => Err(invalid(format!("{field}.{key}"), "missing")),
    }
}

/// An optional string field (`null` counts as absent).
fn opt_str<'a>(
    o: &'a Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<&'a str>, TranslateError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(invalid(
            format!("{field}.{key}"),
            format!("expected a string, got {}", type_name(v)),
        )),
    }
}

/// An optional number field (`null` counts as absent).
fn opt_num<'a>(
    o: &'a Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<&'a Value>, TranslateError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Number(_)) => Ok(Some(v)),
        Some(v) => Err(invalid(
            format!("{field}{key}"),
            format!("expected a number, got {}", type_name(v)),
        )),
    }
}

/// An optional positive integer field (`null` counts as absent).
fn opt_pos_int(o: &Map<String, Value>, key: &str) -> Result<Option<u64>, TranslateError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(invalid(key, "expected a positive integer")),
        },
    }
}

fn u64_at(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_suffix() -> String {
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// `msg_X` → `chatcmpl-X`; anything else gets a fresh id.
fn openai_id(anthropic_id: Option<&str>) -> String {
    match anthropic_id {
        Some(id) if !id.is_empty() => {
            format!("chatcmpl-{}", id.strip_prefix("msg_").unwrap_or(id))
        }
        _ => format!("chatcmpl-{}", random_suffix()),
    }
}

/// `chatcmpl-X` → `msg_X`; anything else gets a fresh id.
fn anthropic_id(openai_id: Option<&str>) -> String {
    match openai_id {
        Some(id) if !id.is_empty() => {
            format!("msg_{}", id.strip_prefix("chatcmpl-").unwrap_or(id))
        }
        _ => format!("msg_{}", random_suffix()),
    }
}

/// Splits `data:<media type>[;params];base64,<data>` into (lower-cased media type, data).
fn parse_data_url(url: &str) -> Option<(String, &str)> {
    let scheme = url.get(..5)?;
    if !scheme.eq_ignore_ascii_case("data:") {
        return None;
    }
    let (header, data) = url.get(5..)?.split_once(',')?;
    let mut params = header.split(';');
    let media = params.next()?.trim();
    let base64 = params.any(|p| p.trim().eq_ignore_ascii_case("base64"));
    if media.is_empty() || !base64 || data.is_empty() {
        return None;
    }
    Some((media.to_ascii_lowercase(), data))
}

fn is_http_url(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

// ------------------------------------------------------------------------------------------------
// Finish / stop reasons
// ------------------------------------------------------------------------------------------------

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub fn stop_reason_to_finish(s: &str) -> &'static str {
    match s {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and anything new.
        _ => "stop",
    }
}

/// OpenAI `finish_reason` → Anthropic `stop_reason`.
pub fn finish_to_stop_reason(s: &str) -> &'static str {
    match s {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

// ------------------------------------------------------------------------------------------------
// Outbound request: OpenAI → Anthropic
// ------------------------------------------------------------------------------------------------

/// Translates the client's OpenAI chat request into an Anthropic Messages body for `model`.
pub fn request_to_anthropic(
    req: &Value,
    model: &str,
    stream: bool,
) -> Result<Value, TranslateError> {
    let obj = as_obj(req, "body")?;
    let msgs = match obj.get("messages") {
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(invalid(
                "messages",
                format!("expected an array, got {}", type_name(v)),
            ))
        }
        None => return Err(invalid("messages", "missing")),
    };

    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let f = format!("messages[{i}]");
        let mo = as_obj(m, &f)?;
        let (role, blocks) = match req_str(mo, "role", &f)? {
            "system" | "developer" => {
                system.extend(system_pieces(mo.get("content"), &f)?);
                continue;
            }
            "user" => ("user", user_blocks(mo.get("content"), &f)?),
            "assistant" => ("assistant", assistant_blocks(mo, &f)?),
            "tool" => ("user", vec![tool_result_block(mo, &f)?]),
            other => {
                return Err(invalid(
                    format!("{f}.role"),
                    format!("unsupported role `{other}`"),
                ))
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((r, b)) if *r == role => b.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, blocks)| {
            let blocks = if role == "user" {
                tool_results_first(blocks)
            } else {
                blocks
            };
            json!({"role": role, "content": blocks})
        })
        .collect();

    let max_tokens = match opt_pos_int(obj, "max_completion_tokens")? {
        Some(n) => n,
        None => opt_pos_int(obj, "max_tokens")?.unwrap_or(DEFAULT_MAX_TOKENS),
    };

    let mut out = Map::new();
    out.insert("model".into(), Value::String(model.to_string()));
    out.insert("max_tokens".into(), Value::from(max_tokens));
    if !system.is_empty() {
        out.insert("system".into(), Value::String(system.join("\n\n")));
    }
    out.insert("messages".into(), Value::Array(messages));

    let tools = tools_to_anthropic(obj.get("tools"))?;
    if !tools.is_empty() {
        let mut choice = match obj.get("tool_choice") {
            None | Some(Value::Null) => None,
            Some(v) => Some(tool_choice_to_anthropic(v)?),
        };
        match obj.get("parallel_tool_calls") {
            None | Some(Value::Null) | Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => {
                let c = choice.get_or_insert_with(|| {
                    let mut m = Map::new();
                    m.insert("type".into(), json!("auto"));
                    m
                });
                if c.get("type") != Some(&json!("none")) {
                    c.insert("disable_parallel_tool_use".into(), Value::Bool(true));
                }
            }
            Some(v) => {
                return Err(invalid(
                    "parallel_tool_calls",
                    format!("expected a boolean, got {}", type_name(v)),
                ))
            }
        }
        out.insert("tools".into(), Value::Array(tools));
        if let Some(c) = choice {
            out.insert("tool_choice".into(), Value::Object(c));
        }
    }

    let stops = stop_sequences(obj.get("stop"))?;
    if !stops.is_empty() {
        out.insert("stop_sequences".into(), Value::Array(stops));
    }
    if let Some(t) = opt_num(obj, "temperature", "")? {
        let clamped = match t.as_f64() {
            Some(x) if x > 1.0 => json!(1.0),
            Some(x) if x < 0.0 => json!(0.0),
            _ => t.clone(),
        };
        out.insert("temperature".into(), clamped);
    }
    if let Some(p) = opt_num(obj, "top_p", "")? {
        out.insert("top_p".into(), p.clone());
    }
    if stream {
        out.insert("stream".into(), Value::Bool(true));
    }
    if let Some(user) = opt_str(obj, "user", "body")? {
        if !user.is_empty() {
            out.insert("metadata".into(), json!({"user_id": user}));
        }
    }
    Ok(Value::Object(out))
}

/// Moves `tool_result` blocks to the front of a user turn, keeping the relative order.
fn tool_results_first(blocks: Vec<Value>) -> Vec<Value> {
    let (mut results, rest): (Vec<Value>, Vec<Value>) = blocks
        .into_iter()
        .partition(|b| str_at(b, "type") == Some("tool_result"));
    results.extend(rest);
    results
}

/// The part's `type`, required.
fn part_type<'a>(part: &'a Value, f: &str) -> Result<&'a str, TranslateError> {
    let po = as_obj(part, f)?;
    req_str(po, "type", f)
}

fn unsupported_part(f: &str, t: &str) -> TranslateError {
    invalid(f, format!("unsupported part type `{t}`"))
}

/// Non-empty text pieces of a system/developer message.
fn system_pieces(content: Option<&Value>, f: &str) -> Result<Vec<String>, TranslateError> {
    let mut out = Vec::new();
    match content {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            if !s.is_empty() {
                out.push(s.clone());
            }
        }
        Some(Value::Array(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                let pf = format!("{f}.content[{j}]");
                match part_type(part, &pf)? {
                    "text" => {
                        let t = req_str(as_obj(part, &pf)?, "text", &pf)?;
                        if !t.is_empty() {
                            out.push(t.to_string());
                        }
                    }
                    other => return Err(unsupported_part(&pf, other)),
                }
            }
        }
        Some(v) => {
            return Err(invalid(
                format!("{f}.content"),
                format!("expected a string or an array, got {}", type_name(v)),
            ))
        }
    }
    Ok(out)
}

fn text_block(t: &str) -> Value {
    json!({"type": "text", "text": t})
}

fn user_blocks(content: Option<&Value>, f: &str) -> Result<Vec<Value>, TranslateError> {
    match content {
        None | Some(Value::Null) => Err(invalid(format!("{f}.content"), "missing")),
        Some(Value::String(s)) => Ok(if s.is_empty() {
            vec![]
        } else {
            vec![text_block(s)]
        }),
        Some(Value::Array(parts)) => {
            let mut out = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                let pf = format!("{f}.content[{j}]");
                match part_type(part, &pf)? {
                    "text" => {
                        let t = req_str(as_obj(part, &pf)?, "text", &pf)?;
                        if !t.is_empty() {
                            out.push(text_block(t));
                        }
                    }
                    "image_url" => out.push(image_block(part, &pf)?),
                    "file" => out.push(document_block(part, &pf)?),
                    other => return Err(unsupported_part(&pf, other)),
                }
            }
            Ok(out)
        }
        Some(v) => Err(invalid(
            format!("{f}.content"),
            format!("expected a string or an array, got {}", type_name(v)),
        )),
    }
}

fn image_block(part: &Value, pf: &str) -> Result<Value, TranslateError> {
    let url = match part.get("image_url") {
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Object(o)) => req_str(o, "url", &format!("{pf}.image_url"))?,
        Some(v) => {
            return Err(invalid(
                format!("{pf}.image_url"),
                format!("expected an object, got {}", type_name(v)),
            ))
        }
        None => return Err(invalid(format!("{pf}.image_url"), "missing")),
    };
    if let Some((media_type, data)) = parse_data_url(url) {
        Ok(
            json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}),
        )
    } else if is_http_url(url) {
        Ok(json!({"type": "image", "source": {"type": "url", "url": url}}))
    } else {
        Err(invalid(
            format!("{pf}.image_url.url"),
            "expected a data:<media type>;base64 URL or an http(s) URL",
        ))
    }
}

fn document_block(part: &Value, pf: &str) -> Result<Value, TranslateError> {
    let ff = format!("{pf}.file");
    let file = as_obj(part.get("file").unwrap_or(&Value::Null), &ff)?;
    let Some(data_url) = opt_str(file, "file_data", &ff)? else {
        return Err(invalid(
            format!("{ff}.file_data"),
            "missing (file_id references are not supported by Anthropic)",
        ));
    };
    match parse_data_url(data_url) {
        Some((mt, data)) if mt == "application/pdf" => Ok(
            json!({"type": "document", "source": {"type": "base64", "media_type": mt, "data": data}}),
        ),
        _ => Err(invalid(
            format!("{ff}.file_data"),
            "only data:application/pdf;base64 files are supported",
        )),
    }
}

fn assistant_blocks(mo: &Map<String, Value>, f: &str) -> Result<Vec<Value>, TranslateError> {
    let mut out = Vec::new();
    match mo.get("content") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            if !s.is_empty() {
                out.push(text_block(s));
            }
        }
        Some(Value::Array(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                let pf = format!("{f}.content[{j}]");
                let key = match part_type(part, &pf)? {
                    "text" => "text",
                    "refusal" => "refusal",
                    other => return Err(unsupported_part(&pf, other)),
                };
                let t = req_str(as_obj(part, &pf)?, key, &pf)?;
                if !t.is_empty() {
                    out.push(text_block(t));
                }
            }
        }
        Some(v) => {
            return Err(invalid(
                format!("{f}.content"),
                format!("expected a string or an array, got {}", type_name(v)),
            ))
        }
    }
    if !matches!(mo.get("function_call"), None | Some(Value::Null)) {
        return Err(invalid(
            format!("{f}.function_call"),
            "legacy function_call is not supported; use tool_calls",
        ));
    }
    match mo.get("tool_calls") {
        None | Some(Value::Null) => {}
        Some(Value::Array(calls)) => {
            for (j, call) in calls.iter().enumerate() {
                out.push(tool_use_block(call, &format!("{f}.tool_calls[{j}]"))?);
            }
        }
        Some(v) => {
            return Err(invalid(
                format!("{f}.tool_calls"),
                format!("expected an array, got {}", type_name(v)),
            ))
        }
    }
    Ok(out)
}

fn tool_use_block(call: &Value, cf: &str) -> Result<Value, TranslateError> {
    let co = as_obj(call, cf)?;
    if let Some(t) = opt_str(co, "type", cf)? {
        if t != "function" {
            return Err(invalid(
                format!("{cf}.type"),
                format!("unsupported tool call type `{t}`"),
            ));
        }
    }
    let id = req_str(co, "id", cf)?;
    let ff = format!("{cf}.function");
    let func = as_obj(co.get("function").unwrap_or(&Value::Null), &ff)?;
    let name = req_str(func, "name", &ff)?;
    let af = format!("{ff}.arguments");
    let input = match func.get("arguments") {
        None | Some(Value::Null) => json!({}),
        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => v,
            Ok(v) => {
                return Err(invalid(
                    af,
                    format!("expected a JSON object, got {}", type_name(&v)),
                ))
            }
            Err(e) => return Err(invalid(af, format!("invalid JSON: {e}"))),
        },
        Some(v @ Value::Object(_)) => v.clone(),
        Some(v) => {
            return Err(invalid(
                af,
                format!("expected a string, got {}", type_name(v)),
            ))
        }
    };
    Ok(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
}

fn tool_result_block(mo: &Map<String, Value>, f: &str) -> Result<Value, TranslateError> {
    let id = req_str(mo, "tool_call_id", f)?;
    let mut block = Map::new();
    block.insert("type".into(), json!("tool_result"));
    block.insert("tool_use_id".into(), json!(id));
    match mo.get("content") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            if !s.is_empty() {
                block.insert("content".into(), json!(s));
            }
        }
        Some(Value::Array(parts)) => {
            let mut blocks = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                let pf = format!("{f}.content[{j}]");
                match part_type(part, &pf)? {
                    "text" => {
                        let t = req_str(as_obj(part, &pf)?, "text", &pf)?;
                        if !t.is_empty() {
                            blocks.push(text_block(t));
                        }
                    }
                    "image_url" => blocks.push(image_block(part, &pf)?),
                    other => return Err(unsupported_part(&pf, other)),
                }
            }
            if !blocks.is_empty() {
                block.insert("content".into(), Value::Array(blocks));
            }
        }
        Some(v) => {
            return Err(invalid(
                format!("{f}.content"),
                format!("expected a string or an array, got {}", type_name(v)),
            ))
        }
    }
    Ok(Value::Object(block))
}

fn tools_to_anthropic(tools: Option<&Value>) -> Result<Vec<Value>, TranslateError> {
    let list = match tools {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(invalid(
                "tools",
                format!("expected an array, got {}", type_name(v)),
            ))
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        let tf = format!("tools[{i}]");
        let to = as_obj(tool, &tf)?;
        if let Some(t) = opt_str(to, "type", &tf)? {
            if t != "function" {
                return Err(invalid(
                    format!("{tf}.type"),
                    format!("unsupported tool type `{t}`"),
                ));
            }
        }
        let ff = format!("{tf}.function");
        let func = as_obj(to.get("function").unwrap_or(&Value::Null), &ff)?;
        let mut t = Map::new();
        t.insert("name".into(), json!(req_str(func, "name", &ff)?));
        if let Some(d) = opt_str(func, "description", &ff)? {
            t.insert("description".into(), json!(d));
        }
        let schema = match func.get("parameters") {
            None | Some(Value::Null) => empty_schema(),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(v) => {
                return Err(invalid(
                    format!("{ff}.parameters"),
                    format!("expected an object, got {}", type_name(v)),
                ))
            }
        };
        t.insert("input_schema".into(), schema);
        out.push(Value::Object(t));
    }
    Ok(out)
}

fn tool_choice_to_anthropic(v: &Value) -> Result<Map<String, Value>, TranslateError> {
    let ty = |t: &str| {
        let mut m = Map::new();
        m.insert("type".into(), json!(t));
        m
    };
    match v {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(ty("auto")),
            "required" => Ok(ty("any")),
            "none" => Ok(ty("none")),
            other => Err(invalid(
                "tool_choice",
                format!("unsupported value `{other}`"),
            )),
        },
        Value::Object(o) => {
            match opt_str(o, "type", "tool_choice")? {
                Some("function") | None => {}
                Some(other) => {
                    return Err(invalid(
                        "tool_choice.type",
                        format!("unsupported tool_choice type `{other}`"),
                    ))
                }
            }
            let func = as_obj(
                o.get("function").unwrap_or(&Value::Null),
                "tool_choice.function",
            )?;
            let name = req_str(func, "name", "tool_choice.function")?;
            let mut m = ty("tool");
            m.insert("name".into(), json!(name));
            Ok(m)
        }
        other => Err(invalid(
            "tool_choice",
            format!("expected a string or an object, got {}", type_name(other)),
        )),
    }
}

fn stop_sequences(stop: Option<&Value>) -> Result<Vec<Value>, TranslateError> {
    match stop {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::String(s)) => Ok(if s.is_empty() { vec![] } else { vec![json!(s)] }),
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for (i, s) in items.iter().enumerate() {
                match s {
                    Value::String(s) if s.is_empty() => {}
                    Value::String(s) => out.push(json!(s)),
                    v => {
                        return Err(invalid(
                            format!("stop[{i}]"),
                            format!("expected a string, got {}", type_name(v)),
                        ))
                    }
                }
            }
            Ok(out)
        }
        Some(v) => Err(invalid(
            "stop",
            format!("expected a string or an array, got {}", type_name(v)),
        )),
    }
}

// ------------------------------------------------------------------------------------------------
// Anthropic response → OpenAI
// ------------------------------------------------------------------------------------------------

/// Anthropic token counts, split so that partial updates (stream `message_delta`) can be merged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct AUsage {
    input: u64,
    cache_creation: u64,
    cache_read: u64,
    output: u64,
}

impl AUsage {
    /// Merges the fields present in an Anthropic `usage` object.
    fn merge(&mut self, u: &Value) {
        if let Some(n) = u64_at(u, "input_tokens") {
            self.input = n;
        }
        if let Some(n) = u64_at(u, "cache_creation_input_tokens") {
            self.cache_creation = n;
        }
        if let Some(n) = u64_at(u, "cache_read_input_tokens") {
            self.cache_read = n;
        }
        if let Some(n) = u64_at(u, "output_tokens") {
            self.output = n;
        }
    }

    fn prompt(&self) -> u64 {
        self.input
            .saturating_add(self.cache_creation)
            .saturating_add(self.cache_read)
    }

    fn openai(&self) -> Value {
        let prompt = self.prompt();
        let mut u = json!({
            "prompt_tokens": prompt,
            "completion_tokens": self.output,
            "total_tokens": prompt.saturating_add(self.output),
        });
        if self.cache_read > 0 {
            u["prompt_tokens_details"] = json!({"cached_tokens": self.cache_read});
        }
        u
    }
}

/// Translates an Anthropic Messages response body into an OpenAI `chat.completion`.
pub fn response_to_openai(resp: &Value, model: &str) -> Result<Value, TranslateError> {
    let o = as_obj(resp, "response")?;
    if str_at(resp, "type") == Some("error") {
        let msg = resp
            .get("error")
            .and_then(|e| str_at(e, "message"))
            .unwrap_or("unknown error");
        return Err(invalid("response", format!("upstream error: {msg}")));
    }
    let content = match o.get("content") {
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(invalid(
                "response.content",
                format!("expected an array, got {}", type_name(v)),
            ))
        }
        None => return Err(invalid("response.content", "missing")),
    };
    let mut text: Option<String> = None;
    let mut calls = Vec::new();
    for (i, block) in content.iter().enumerate() {
        let bf = format!("response.content[{i}]");
        let bo = as_obj(block, &bf)?;
        match opt_str(bo, "type", &bf)? {
            Some("text") => text
                .get_or_insert_with(String::new)
                .push_str(req_str(bo, "text", &bf)?),
            Some("tool_use") => {
                let input = bo.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": req_str(bo, "id", &bf)?,
                    "type": "function",
                    "function": {"name": req_str(bo, "name", &bf)?, "arguments": input.to_string()},
                }));
            }
            // thinking, redacted_thinking, server tool blocks: no OpenAI equivalent.
            _ => {}
        }
    }
    let finish = match str_at(resp, "stop_reason") {
        Some(s) => stop_reason_to_finish(s),
        None if !calls.is_empty() => "tool_calls",
        None => "stop",
    };
    let mut usage = AUsage::default();
    if let Some(u) = o.get("usage") {
        usage.merge(u);
    }
    let mut message = json!({"role": "assistant", "content": text});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    Ok(json!({
        "id": openai_id(str_at(resp, "id")),
        "object": "chat.completion",
        "created": now_secs(),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
        "usage": usage.openai(),
    }))
}

/// One output of [`AnthropicToOpenAiStream::on_event`].
#[derive(Debug, Clone, PartialEq)]
pub enum OpenAiOut {
    /// A `chat.completion.chunk` to send as `data: {chunk}`.
    Chunk(Value),
    /// An Anthropic `error` event (e.g. `overloaded_error`): the stream failed.
    Error { etype: String, message: String },
    /// `message_stop` was seen: the caller sends `data: [DONE]`.
    Done,
}

/// Translates an Anthropic SSE event sequence into OpenAI chunks.
#[derive(Debug)]
pub struct AnthropicToOpenAiStream {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    usage: AUsage,
    saw_usage: bool,
    /// Anthropic content-block index → OpenAI tool-call index, for `tool_use` blocks.
    tools: HashMap<u64, u64>,
    next_tool: u64,
    role_sent: bool,
    finish_sent: bool,
    done: bool,
}

impl AnthropicToOpenAiStream {
    pub fn new(model: &str, include_usage: bool) -> Self {
        AnthropicToOpenAiStream {
            id: openai_id(None),
            created: now_secs(),
            model: model.to_string(),
            include_usage,
            usage: AUsage::default(),
            saw_usage: false,
            tools: HashMap::new(),
            next_tool: 0,
            role_sent: false,
            finish_sent: false,
            done: false,
        }
    }

    /// (input tokens including cache reads/writes, output tokens) seen so far.
    pub fn usage(&self) -> Option<(u64, u64)> {
        self.saw_usage
            .then(|| (self.usage.prompt(), self.usage.output))
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> OpenAiOut {
        OpenAiOut::Chunk(json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }))
    }

    /// Emits the role chunk if it has not been sent yet.
    fn ensure_role(&mut self, out: &mut Vec<OpenAiOut>) {
        if !self.role_sent {
            self.role_sent = true;
            out.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
        }
    }

    fn merge_usage(&mut self, u: Option<&Value>) {
        if let Some(u @ Value::Object(_)) = u {
            self.usage.merge(u);
            self.saw_usage = true;
        }
    }

    fn finish_chunk(&mut self, reason: &str) -> OpenAiOut {
        self.finish_sent = true;
        self.chunk(json!({}), Some(reason))
    }

    /// Feeds one SSE event (`event:` name, `data:` text) and returns what to send to the client.
    pub fn on_event(
        &mut self,
        event: Option<&str>,
        data: &str,
    ) -> Result<Vec<OpenAiOut>, TranslateError> {
        let v: Value = if data.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(data)
                .map_err(|e| invalid("stream event data", format!("invalid JSON: {e}")))?
        };
        let kind = str_at(&v, "type").or(event).unwrap_or("");
        let mut out = Vec::new();
        if self.done {
            return Ok(out);
        }
        match kind {
            "message_start" => {
                let msg = v.get("message").unwrap_or(&Value::Null);
                if !self.role_sent {
                    if let Some(id) = str_at(msg, "id") {
                        self.id = openai_id(Some(id));
                    }
                }
                self.merge_usage(msg.get("usage"));
                self.ensure_role(&mut out);
            }
            "content_block_start" => {
                let block = v.get("content_block").unwrap_or(&Value::Null);
                match str_at(block, "type") {
                    Some("text") => {
                        if let Some(t) = str_at(block, "text").filter(|t| !t.is_empty()) {
                            self.ensure_role(&mut out);
                            out.push(self.chunk(json!({"content": t}), None));
                        }
                    }
                    Some("tool_use") => {
                        let index = u64_at(&v, "index").ok_or_else(|| {
                            invalid("content_block_start.index", "missing or not an integer")
                        })?;
                        let name = str_at(block, "name").ok_or_else(|| {
                            invalid("content_block_start.content_block.name", "missing")
                        })?;
                        let id = match str_at(block, "id") {
                            Some(id) => id.to_string(),
                            None => format!("call_{}", random_suffix()),
                        };
                        let arguments = match block.get("input") {
                            Some(Value::Object(m)) if !m.is_empty() => {
                                Value::Object(m.clone()).to_string()
                            }
                            _ => String::new(),
                        };
                        let ti = self.next_tool;
                        self.next_tool += 1;
                        self.tools.insert(index, ti);
                        self.ensure_role(&mut out);
                        out.push(self.chunk(
                            json!({"tool_calls": [{
                                "index": ti, "id": id, "type": "function",
                                "function": {"name": name, "arguments": arguments},
                            }]}),
                            None,
                        ));
                    }
                    // thinking, redacted_thinking, server tool blocks: nothing to send.
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = v.get("delta").unwrap_or(&Value::Null);
                match str_at(delta, "type") {
                    Some("text_delta") => {
                        if let Some(t) = str_at(delta, "text").filter(|t| !t.is_empty()) {
                            self.ensure_role(&mut out);
                            out.push(self.chunk(json!({"content": t}), None));
                        }
                    }
                    Some("input_json_delta") => {
                        let ti = u64_at(&v, "index").and_then(|i| self.tools.get(&i).copied());
                        let part = str_at(delta, "partial_json").filter(|p| !p.is_empty());
                        if let (Some(ti), Some(part)) = (ti, part) {
                            self.ensure_role(&mut out);
                            out.push(self.chunk(
                                json!({"tool_calls": [{"index": ti, "function": {"arguments": part}}]}),
                                None,
                            ));
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                self.merge_usage(v.get("usage"));
                let reason = v.get("delta").and_then(|d| str_at(d, "stop_reason"));
                if let (Some(r), false) = (reason, self.finish_sent) {
                    self.ensure_role(&mut out);
                    let fc = self.finish_chunk(stop_reason_to_finish(r));
                    out.push(fc);
                }
            }
            "message_stop" => {
                self.ensure_role(&mut out);
                if !self.finish_sent {
                    let reason = if self.next_tool > 0 {
                        "tool_calls"
                    } else {
                        "stop"
                    };
                    let fc = self.finish_chunk(reason);
                    out.push(fc);
                }
                if self.include_usage {
                    out.push(OpenAiOut::Chunk(json!({
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": self.usage.openai(),
                    })));
                }
                out.push(OpenAiOut::Done);
                self.done = true;
            }
            "error" => {
                let err = v.get("error").unwrap_or(&Value::Null);
                out.push(OpenAiOut::Error {
                    etype: str_at(err, "type").unwrap_or("api_error").to_string(),
                    message: str_at(err, "message")
                        .unwrap_or("upstream stream error")
                        .to_string(),
                });
            }
            // ping, content_block_stop and event types added later.
            _ => {}
        }
        Ok(out)
    }
}

// ------------------------------------------------------------------------------------------------
// Inbound request: Anthropic → OpenAI
// ------------------------------------------------------------------------------------------------

/// Translates an Anthropic Messages request (`POST /v1/messages`) into an OpenAI chat request.
pub fn request_to_openai(req: &Value, model: &str) -> Result<Value, TranslateError> {
    let obj = as_obj(req, "body")?;
    let mut messages: Vec<Value> = Vec::new();

    let system = match obj.get("system") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => {
            let mut pieces = Vec::new();
            for (i, b) in blocks.iter().enumerate() {
                let bf = format!("system[{i}]");
                match part_type(b, &bf)? {
                    "text" => pieces.push(req_str(as_obj(b, &bf)?, "text", &bf)?),
                    other => return Err(invalid(&bf, format!("unsupported block type `{other}`"))),
                }
            }
            pieces.retain(|p| !p.is_empty());
            pieces.join("\n\n")
        }
        Some(v) => {
            return Err(invalid(
                "system",
                format!("expected a string or an array, got {}", type_name(v)),
            ))
        }
    };
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }

    let msgs = match obj.get("messages") {
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(invalid(
                "messages",
                format!("expected an array, got {}", type_name(v)),
            ))
        }
        None => return Err(invalid("messages", "missing")),
    };
    for (i, m) in msgs.iter().enumerate() {
        let f = format!("messages[{i}]");
        let mo = as_obj(m, &f)?;
        let role = req_str(mo, "role", &f)?;
        if role != "user" && role != "assistant" {
            return Err(invalid(
                format!("{f}.role"),
                format!("unsupported role `{role}`"),
            ));
        }
        match mo.get("content") {
            Some(Value::String(s)) => messages.push(json!({"role": role, "content": s})),
            Some(Value::Array(blocks)) if role == "user" => {
                user_blocks_to_openai(blocks, &f, &mut messages)?
            }
            Some(Value::Array(blocks)) => messages.push(assistant_to_openai(blocks, &f)?),
            Some(v) => {
                return Err(invalid(
                    format!("{f}.content"),
                    format!("expected a string or an array, got {}", type_name(v)),
                ))
            }
            None => return Err(invalid(format!("{f}.content"), "missing")),
        }
    }

    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert("messages".into(), Value::Array(messages));
    if let Some(n) = opt_pos_int(obj, "max_tokens")? {
        out.insert("max_tokens".into(), json!(n));
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = opt_num(obj, key, "")? {
            out.insert(key.into(), v.clone());
        }
    }
    match obj.get("stop_sequences") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            let mut stops = Vec::new();
            for (i, s) in items.iter().enumerate() {
                match s {
                    Value::String(s) => stops.push(json!(s)),
                    v => {
                        return Err(invalid(
                            format!("stop_sequences[{i}]"),
                            format!("expected a string, got {}", type_name(v)),
                        ))
                    }
                }
            }
            if !stops.is_empty() {
                out.insert("stop".into(), Value::Array(stops));
            }
        }
        Some(v) => {
            return Err(invalid(
                "stop_sequences",
                format!("expected an array, got {}", type_name(v)),
            ))
        }
    }
    match obj.get("stream") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            out.insert("stream".into(), json!(true));
            out.insert("stream_options".into(), json!({"include_usage": true}));
        }
        Some(v) => {
            return Err(invalid(
                "stream",
                format!("expected a boolean, got {}", type_name(v)),
            ))
        }
    }
    match obj.get("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(md)) => {
            if let Some(u) = opt_str(md, "user_id", "metadata")? {
                out.insert("user".into(), json!(u));
            }
        }
        Some(v) => {
            return Err(invalid(
                "metadata",
                format!("expected an object, got {}", type_name(v)),
            ))
        }
    }

    let tools = tools_to_openai(obj.get("tools"))?;
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        match obj.get("tool_choice") {
            None | Some(Value::Null) => {}
            Some(tc) => {
                let tco = as_obj(tc, "tool_choice")?;
                let choice = match req_str(tco, "type", "tool_choice")? {
                    "auto" => json!("auto"),
                    "any" => json!("required"),
                    "none" => json!("none"),
                    "tool" => {
                        json!({"type": "function", "function": {"name": req_str(tco, "name", "tool_choice")?}})
                    }
                    other => {
                        return Err(invalid(
                            "tool_choice.type",
                            format!("unsupported tool_choice type `{other}`"),
                        ))
                    }
                };
                out.insert("tool_choice".into(), choice);
                if tco.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
                    out.insert("parallel_tool_calls".into(), json!(false));
                }
            }
        }
    }
    Ok(Value::Object(out))
}

/// An Anthropic image block → an OpenAI `image_url` part.
fn image_to_openai(b: &Map<String, Value>, bf: &str) -> Result<Value, TranslateError> {
    let sf = format!("{bf}.source");
    let src = as_obj(b.get("source").unwrap_or(&Value::Null), &sf)?;
    let url = match req_str(src, "type", &sf)? {
        "base64" => format!(
            "data:{};base64,{}",
            req_str(src, "media_type", &sf)?,
            req_str(src, "data", &sf)?
        ),
        "url" => req_str(src, "url", &sf)?.to_string(),
        other => {
            return Err(invalid(
                format!("{sf}.type"),
                format!("unsupported image source type `{other}`"),
            ))
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// An Anthropic document block → an OpenAI `file` part (base64) or `text` part (text source).
fn document_to_openai(b: &Map<String, Value>, bf: &str) -> Result<Value, TranslateError> {
    let sf = format!("{bf}.source");
    let src = as_obj(b.get("source").unwrap_or(&Value::Null), &sf)?;
    match req_str(src, "type", &sf)? {
        "base64" => {
            let mt = req_str(src, "media_type", &sf)?;
            let data = req_str(src, "data", &sf)?;
            let mut file = json!({"file_data": format!("data:{mt};base64,{data}")});
            if let Some(title) = opt_str(b, "title", bf)? {
                file["filename"] = json!(title);
            }
            Ok(json!({"type": "file", "file": file}))
        }
        "text" => Ok(json!({"type": "text", "text": req_str(src, "data", &sf)?})),
        other => Err(invalid(
            format!("{sf}.type"),
            format!("unsupported document source type `{other}`"),
        )),
    }
}

fn user_blocks_to_openai(
    blocks: &[Value],
    f: &str,
    messages: &mut Vec<Value>,
) -> Result<(), TranslateError> {
    let mut parts: Vec<Value> = Vec::new();
    let mut tool_images: Vec<Value> = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bf = format!("{f}.content[{j}]");
        let bo = as_obj(b, &bf)?;
        match req_str(bo, "type", &bf)? {
            "text" => {
                let t = req_str(bo, "text", &bf)?;
                if !t.is_empty() {
                    parts.push(json!({"type": "text", "text": t}));
                }
            }
            "image" => parts.push(image_to_openai(bo, &bf)?),
            "document" => parts.push(document_to_openai(bo, &bf)?),
            "tool_result" => {
                let id = req_str(bo, "tool_use_id", &bf)?;
                let mut text = match bo.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(items)) => {
                        let mut texts = Vec::new();
                        for (k, item) in items.iter().enumerate() {
                            let itf = format!("{bf}.content[{k}]");
                            let io = as_obj(item, &itf)?;
                            match req_str(io, "type", &itf)? {
                                "text" => texts.push(req_str(io, "text", &itf)?),
                                "image" => tool_images.push(image_to_openai(io, &itf)?),
                                other => {
                                    return Err(invalid(
                                        &itf,
                                        format!("unsupported block type `{other}`"),
                                    ))
                                }
                            }
                        }
                        texts.join("\n")
                    }
                    Some(v) => {
                        return Err(invalid(
                            format!("{bf}.content"),
                            format!("expected a string or an array, got {}", type_name(v)),
                        ))
                    }
                };
                if bo.get("is_error") == Some(&Value::Bool(true)) {
                    text = format!("Error: {text}");
                }
                messages.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            other => return Err(invalid(&bf, format!("unsupported block type `{other}`"))),
        }
    }
    parts.extend(tool_images);
    match parts.as_slice() {
        [] => {}
        [single] if str_at(single, "type") == Some("text") => {
            messages.push(json!({"role": "user", "content": single.get("text")}))
        }
        _ => messages.push(json!({"role": "user", "content": parts})),
    }
    Ok(())
}

fn assistant_to_openai(blocks: &[Value], f: &str) -> Result<Value, TranslateError> {
    let mut text: Option<String> = None;
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bf = format!("{f}.content[{j}]");
        let bo = as_obj(b, &bf)?;
        match req_str(bo, "type", &bf)? {
            "text" => text
                .get_or_insert_with(String::new)
                .push_str(req_str(bo, "text", &bf)?),
            "tool_use" => {
                let input = bo.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": req_str(bo, "id", &bf)?,
                    "type": "function",
                    "function": {"name": req_str(bo, "name", &bf)?, "arguments": input.to_string()},
                }));
            }
            "thinking" | "redacted_thinking" => {}
            other => return Err(invalid(&bf, format!("unsupported block type `{other}`"))),
        }
    }
    let content = match text {
        Some(t) => json!(t),
        None if !calls.is_empty() => Value::Null,
        None => json!(""),
    };
    let mut msg = json!({"role": "assistant", "content": content});
    if !calls.is_empty() {
        msg["tool_calls"] = Value::Array(calls);
    }
    Ok(msg)
}

fn tools_to_openai(tools: Option<&Value>) -> Result<Vec<Value>, TranslateError> {
    let list = match tools {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(invalid(
                "tools",
                format!("expected an array, got {}", type_name(v)),
            ))
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        let tf = format!("tools[{i}]");
        let to = as_obj(tool, &tf)?;
        match opt_str(to, "type", &tf)? {
            None | Some("custom") => {}
            Some(other) => {
                return Err(invalid(
                    format!("{tf}.type"),
                    format!(
                        "unsupported tool type `{other}` (only custom tools can be translated)"
                    ),
                ))
            }
        }
        let mut func = Map::new();
        func.insert("name".into(), json!(req_str(to, "name", &tf)?));
        if let Some(d) = opt_str(to, "description", &tf)? {
            func.insert("description".into(), json!(d));
        }
        let schema = match to.get("input_schema") {
            None | Some(Value::Null) => empty_schema(),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(v) => {
                return Err(invalid(
                    format!("{tf}.input_schema"),
                    format!("expected an object, got {}", type_name(v)),
                ))
            }
        };
        func.insert("parameters".into(), schema);
        out.push(json!({"type": "function", "function": func}));
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------------
// OpenAI response → Anthropic
// ------------------------------------------------------------------------------------------------

/// Tool-call `arguments` → `input`: `""` → `{}`, a JSON object → itself, anything else wrapped.
fn arguments_to_input(args: Option<&Value>) -> Value {
    match args {
        None | Some(Value::Null) => json!({}),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => v,
            _ => json!({"_raw_arguments": s}),
        },
        Some(other) => json!({"_raw_arguments": other.to_string()}),
    }
}

fn anthropic_usage(u: Option<&Value>) -> (u64, u64, u64) {
    let u = u.unwrap_or(&Value::Null);
    let prompt = u64_at(u, "prompt_tokens").unwrap_or(0);
    let completion = u64_at(u, "completion_tokens").unwrap_or(0);
    let cached = u
        .get("prompt_tokens_details")
        .and_then(|d| u64_at(d, "cached_tokens"))
        .unwrap_or(0)
        .min(prompt);
    (prompt - cached, cached, completion)
}

/// Translates an OpenAI `chat.completion` into an Anthropic `message`.
pub fn response_to_anthropic(resp: &Value, model: &str) -> Result<Value, TranslateError> {
    let o = as_obj(resp, "response")?;
    if let Some(err) = o.get("error").filter(|e| !e.is_null()) {
        let msg = str_at(err, "message").unwrap_or("unknown error");
        return Err(invalid("response", format!("upstream error: {msg}")));
    }
    let choice = match o.get("choices") {
        Some(Value::Array(c)) => c
            .first()
            .ok_or_else(|| invalid("response.choices", "empty"))?,
        Some(v) => {
            return Err(invalid(
                "response.choices",
                format!("expected an array, got {}", type_name(v)),
            ))
        }
        None => return Err(invalid("response.choices", "missing")),
    };
    let msg = as_obj(
        choice.get("message").unwrap_or(&Value::Null),
        "response.choices[0].message",
    )?;
    let mut content = Vec::new();
    let text = match msg.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| str_at(p, "text"))
            .collect::<String>(),
        _ => String::new(),
    };
    let text = if text.is_empty() {
        msg.get("refusal")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    } else {
        text
    };
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    let mut has_tools = false;
    if let Some(Value::Array(calls)) = msg.get("tool_calls") {
        for (j, call) in calls.iter().enumerate() {
            let cf = format!("response.choices[0].message.tool_calls[{j}]");
            let co = as_obj(call, &cf)?;
            let ff = format!("{cf}.function");
            let func = as_obj(co.get("function").unwrap_or(&Value::Null), &ff)?;
            let id = match opt_str(co, "id", &cf)? {
                Some(id) if !id.is_empty() => id.to_string(),
                _ => format!("toolu_{}", random_suffix()),
            };
            content.push(json!({
                "type": "tool_use",
                "id": id,
                "name": req_str(func, "name", &ff)?,
                "input": arguments_to_input(func.get("arguments")),
            }));
            has_tools = true;
        }
    }
    let stop_reason = match (str_at(choice, "finish_reason"), has_tools) {
        (Some("stop") | None, true) => "tool_use",
        (Some(f), _) => finish_to_stop_reason(f),
        (None, false) => "end_turn",
    };
    let (input, cached, output) = anthropic_usage(o.get("usage"));
    Ok(json!({
        "id": anthropic_id(str_at(resp, "id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {
            "input_tokens": input,
            "output_tokens": output,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
        },
    }))
}

/// The content block currently open in an [`OpenAiToAnthropicStream`].
#[derive(Debug, Clone, PartialEq)]
enum OpenBlock {
    Text,
    Tool { index: u64, id: String },
}

/// Translates OpenAI `chat.completion.chunk`s into Anthropic SSE events.
#[derive(Debug)]
pub struct OpenAiToAnthropicStream {
    model: String,
    id: Option<String>,
    started: bool,
    finished: bool,
    open: Option<OpenBlock>,
    next_block: u64,
    closed_tools: HashSet<u64>,
    saw_tool: bool,
    finish_reason: Option<String>,
    input: u64,
    cached: u64,
    output: u64,
}

impl OpenAiToAnthropicStream {
    pub fn new(model: &str) -> Self {
        OpenAiToAnthropicStream {
            model: model.to_string(),
            id: None,
            started: false,
            finished: false,
            open: None,
            next_block: 0,
            closed_tools: HashSet::new(),
            saw_tool: false,
            finish_reason: None,
            input: 0,
            cached: 0,
            output: 0,
        }
    }

    fn start(&mut self, chunk: &Value, out: &mut Vec<(&'static str, Value)>) {
        if self.started {
            return;
        }
        self.started = true;
        let id = anthropic_id(str_at(chunk, "id"));
        self.id = Some(id.clone());
        out.push((
            "message_start",
            json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": self.input, "output_tokens": 0,
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": self.cached},
            }}),
        ));
    }

    fn close(&mut self, out: &mut Vec<(&'static str, Value)>) {
        if let Some(block) = self.open.take() {
            if let OpenBlock::Tool { index, .. } = block {
                self.closed_tools.insert(index);
            }
            let index = self.next_block.saturating_sub(1);
            out.push((
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    fn open_block(
        &mut self,
        block: OpenBlock,
        content_block: Value,
        out: &mut Vec<(&'static str, Value)>,
    ) -> u64 {
        self.close(out);
        let index = self.next_block;
        self.next_block += 1;
        self.open = Some(block);
        out.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": content_block}),
        ));
        index
    }

    fn text(&mut self, t: &str, out: &mut Vec<(&'static str, Value)>) {
        if t.is_empty() {
            return;
        }
        let index = if self.open == Some(OpenBlock::Text) {
            self.next_block.saturating_sub(1)
        } else {
            self.open_block(OpenBlock::Text, json!({"type": "text", "text": ""}), out)
        };
        out.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index,
                   "delta": {"type": "text_delta", "text": t}}),
        ));
    }

    fn tool_fragment(&mut self, pos: usize, tc: &Value, out: &mut Vec<(&'static str, Value)>) {
        let index = u64_at(tc, "index").unwrap_or(pos as u64);
        let id = str_at(tc, "id").filter(|s| !s.is_empty());
        let func = tc.get("function").unwrap_or(&Value::Null);
        let args = str_at(func, "arguments").unwrap_or("");
        let continues = match &self.open {
            Some(OpenBlock::Tool { index: oi, id: oid }) => {
                *oi == index && id.is_none_or(|i| i == oid)
            }
            _ => false,
        };
        let block_index = if continues {
            self.next_block.saturating_sub(1)
        } else {
            if id.is_none() && self.closed_tools.contains(&index) {
                // A late fragment of a tool call whose block is already closed: it cannot be
                // reopened in Anthropic's format, so it is dropped.
                return;
            }
            let id = match id {
                Some(i) => i.to_string(),
                None => format!("toolu_{}", random_suffix()),
            };
            let name = str_at(func, "name").unwrap_or("");
            self.saw_tool = true;
            self.open_block(
                OpenBlock::Tool {
                    index,
                    id: id.clone(),
                },
                json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                out,
            )
        };
        if !args.is_empty() {
            out.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": block_index,
                       "delta": {"type": "input_json_delta", "partial_json": args}}),
            ));
        }
    }

    /// One OpenAI chunk → the Anthropic events to send, as (event name, data).
    pub fn on_chunk(&mut self, chunk: &Value) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        if let Some(err) = chunk.get("error").filter(|e| !e.is_null()) {
            let message = str_at(err, "message")
                .map(str::to_string)
                .unwrap_or_else(|| err.to_string());
            let etype = match u64_at(err, "code")
                .and_then(|c| u16::try_from(c).ok())
                .filter(|c| *c >= 400)
            {
                Some(status) => anthropic_error_type(status),
                None => "api_error",
            };
            out.push((
                "error",
                json!({"type": "error", "error": {"type": etype, "message": message}}),
            ));
            self.finished = true;
            return out;
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            let (input, cached, output) = anthropic_usage(Some(u));
            self.input = input;
            self.cached = cached;
            self.output = output;
        }
        self.start(chunk, &mut out);
        let Some(Value::Array(choices)) = chunk.get("choices") else {
            return out;
        };
        for choice in choices {
            if u64_at(choice, "index").unwrap_or(0) != 0 {
                continue;
            }
            let delta = choice.get("delta").unwrap_or(&Value::Null);
            if let Some(t) = str_at(delta, "content") {
                self.text(t, &mut out);
            }
            if let Some(t) = str_at(delta, "refusal") {
                self.text(t, &mut out);
            }
            if let Some(Value::Array(calls)) = delta.get("tool_calls") {
                for (pos, tc) in calls.iter().enumerate() {
                    self.tool_fragment(pos, tc, &mut out);
                }
            }
            if let Some(f) = str_at(choice, "finish_reason") {
                self.finish_reason = Some(f.to_string());
            }
        }
        out
    }

    /// At the end of the upstream stream: close the open block, then `message_delta` and
    /// `message_stop`. Later calls return nothing.
    pub fn finish(&mut self) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        self.start(&Value::Null, &mut out);
        self.close(&mut out);
        let stop_reason = match (self.finish_reason.as_deref(), self.saw_tool) {
            (Some("stop") | None, true) => "tool_use",
            (Some(f), _) => finish_to_stop_reason(f),
            (None, false) => "end_turn",
        };
        out.push((
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                   "usage": {"input_tokens": self.input, "output_tokens": self.output,
                             "cache_read_input_tokens": self.cached}}),
        ));
        out.push(("message_stop", json!({"type": "message_stop"})));
        self.finished = true;
        out
    }
}

// ------------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------------

/// The Anthropic error `type` for an HTTP status.
pub fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        408 | 504 => "timeout_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// Extracts (type, message, code) from an error body of any provider: Anthropic
/// `{"type":"error","error":{…}}`, OpenAI `{"error":{…}}`, Gemini `[{"error":{…}}]`,
/// `{"error":"text"}`, or plain text.
fn parse_error_body(body: &[u8], status: u16) -> (Option<String>, String, Option<Value>) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let root = match &parsed {
        Some(Value::Array(a)) => a.first(),
        other => other.as_ref(),
    };
    if let Some(err) = root.and_then(|r| r.get("error")) {
        match err {
            Value::Object(_) => {
                let message = match err.get("message") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) if !v.is_null() => v.to_string(),
                    _ => format!("upstream returned HTTP {status}"),
                };
                let etype = str_at(err, "type")
                    .or_else(|| str_at(err, "status"))
                    .map(str::to_string);
                let code = err.get("code").filter(|c| c.is_string()).cloned();
                return (etype, message, code);
            }
            Value::String(s) => return (None, s.clone(), None),
            _ => {}
        }
    }
    if let Some(m) = root.and_then(|r| str_at(r, "message")) {
        return (None, m.to_string(), None);
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let message = if text.is_empty() {
        format!("upstream returned HTTP {status}")
    } else {
        truncate_chars(text, 1000)
    };
    (None, message, None)
}

/// The human-readable message of any provider's error body (see [`error_to_openai`]).
pub fn error_body_message(body: &[u8], status: u16) -> String {
    parse_error_body(body, status).1
}

/// An Anthropic error body → the OpenAI error shape, keeping the Anthropic error type as `type`.
/// `code` is `context_length_exceeded` for "prompt is too long", `invalid_api_key` for
/// authentication errors, `rate_limit_exceeded` for rate limits, an upstream string code if any,
/// else `null`.
pub fn error_to_openai(body: &[u8], status: u16) -> Value {
    let (etype, message, code) = parse_error_body(body, status);
    let etype = etype.unwrap_or_else(|| anthropic_error_type(status).to_string());
    let lower = message.to_ascii_lowercase();
    let code = if lower.contains("prompt is too long") || lower.contains("context length") {
        json!("context_length_exceeded")
    } else if let Some(c) = code {
        c
    } else {
        match etype.as_str() {
            "authentication_error" => json!("invalid_api_key"),
            "rate_limit_error" => json!("rate_limit_exceeded"),
            _ => Value::Null,
        }
    };
    json!({"error": {"message": message, "type": etype, "param": null, "code": code}})
}

/// An error message and status → the Anthropic error body.
pub fn error_to_anthropic(status: u16, message: &str) -> Value {
    json!({"type": "error", "error": {"type": anthropic_error_type(status), "message": message}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn out_req(req: Value) -> Value {
        request_to_anthropic(&req, "claude-sonnet-4-5", false).unwrap()
    }

    fn err_of<T: std::fmt::Debug>(r: Result<T, TranslateError>) -> String {
        match r {
            Err(TranslateError::Invalid(m)) => m,
            Ok(v) => panic!("expected an error, got {v:?}"),
        }
    }

    /// Replaces `created` (wall clock) with 0 so chunks compare as goldens.
    fn norm(mut v: Value) -> Value {
        if v.get("created").is_some() {
            assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
            v["created"] = json!(0);
        }
        v
    }

    fn chunks(outs: Vec<OpenAiOut>) -> Vec<Value> {
        outs.into_iter()
            .map(|o| match o {
                OpenAiOut::Chunk(c) => norm(c),
                OpenAiOut::Done => json!("[DONE]"),
                OpenAiOut::Error { etype, message } => json!({"ERROR": etype, "message": message}),
            })
            .collect()
    }

    fn feed(s: &mut AnthropicToOpenAiStream, events: &[(&str, Value)]) -> Vec<Value> {
        let mut all = Vec::new();
        for (name, data) in events {
            all.extend(s.on_event(Some(name), &data.to_string()).unwrap());
        }
        chunks(all)
    }

    fn chunk(delta: Value, finish: Value) -> Value {
        json!({"id": "chatcmpl-01XFDUDYJgAACzvnptvVoYEL", "object": "chat.completion.chunk",
               "created": 0, "model": "gpt-4o",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    }

    // ---------------------------------------------------------------- outbound request

    #[test]
    fn outbound_text_system_and_developer() {
        let got = out_req(json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}, {"type": "text", "text": ""}]},
                {"role": "user", "content": "Hello"},
                {"role": "system", "content": "Late system note."}
            ]
        }));
        assert_eq!(
            got,
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 4096,
                "system": "You are terse.\n\nAnswer in French.\n\nLate system note.",
                "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]
            })
        );
    }

    #[test]
    fn outbound_merges_consecutive_same_role_turns() {
        let got = out_req(json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "user", "content": "First question."},
                {"role": "user", "content": [{"type": "text", "text": "Second part."}]},
                {"role": "assistant", "content": "Answer one."},
                {"role": "assistant", "content": [{"type": "text", "text": "Answer two."}]},
                {"role": "assistant", "content": ""},
                {"role": "user", "content": "Thanks"}
            ]
        }));
        assert_eq!(
            got["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "First question."}, {"type": "text", "text": "Second part."}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Answer one."}, {"type": "text", "text": "Answer two."}]},
                {"role": "user", "content": [{"type": "text", "text": "Thanks"}]}
            ])
        );
    }

    #[test]
    fn outbound_images_data_url_and_http_url() {
        let got = out_req(json!({
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "Compare these."},
                {"type": "image_url", "image_url": {"url": "data:image/PNG;base64,iVBORw0KGgo=", "detail": "high"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}}
            ]}]
        }));
        assert_eq!(
            got["messages"],
            json!([{"role": "user", "content": [
                {"type": "text", "text": "Compare these."},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
            ]}])
        );
    }

    #[test]
    fn outbound_pdf_file_part() {
        let got = out_req(json!({"messages": [{"role": "user", "content": [
            {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
            {"type": "text", "text": "Summarize."}
        ]}]}));
        assert_eq!(
            got["messages"][0]["content"],
            json!([
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
                {"type": "text", "text": "Summarize."}
            ])
        );
    }

    #[test]
    fn outbound_parallel_tool_calls_and_merged_tool_results() {
        let got = out_req(json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "user", "content": "Weather in Paris and Tokyo?"},
                {"role": "assistant", "content": "Checking both.", "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Tokyo\",\"unit\":\"c\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_a", "content": "18C, cloudy"},
                {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "24C"}, {"type": "text", "text": "sunny"}]},
                {"role": "user", "content": "And tomorrow?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_c", "type": "function", "function": {"name": "get_time", "arguments": ""}}
                ]},
                {"role": "tool", "tool_call_id": "call_c", "content": ""}
            ],
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "description": "Current weather",
                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}, "strict": true}},
                {"type": "function", "function": {"name": "get_time"}}
            ]
        }));
        assert_eq!(
            got,
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 4096,
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Tokyo?"}]},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Checking both."},
                        {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Paris"}},
                        {"type": "tool_use", "id": "call_b", "name": "get_weather", "input": {"city": "Tokyo", "unit": "c"}}
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "call_a", "content": "18C, cloudy"},
                        {"type": "tool_result", "tool_use_id": "call_b", "content": [{"type": "text", "text": "24C"}, {"type": "text", "text": "sunny"}]},
                        {"type": "text", "text": "And tomorrow?"}
                    ]},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "call_c", "name": "get_time", "input": {}}]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_c"}]}
                ],
                "tools": [
                    {"name": "get_weather", "description": "Current weather",
                     "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
                    {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
                ]
            })
        );
    }

    #[test]
    fn outbound_tool_results_are_moved_before_text() {
        let got = out_req(json!({"messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "user", "content": "note first"},
            {"role": "tool", "tool_call_id": "t1", "content": [{"type": "image_url", "image_url": {"url": "https://x.test/s.png"}}]}
        ]}));
        assert_eq!(
            got["messages"][2],
            json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "image", "source": {"type": "url", "url": "https://x.test/s.png"}}]},
                {"type": "text", "text": "note first"}
            ]})
        );
    }

    #[test]
    fn outbound_sampling_stop_max_tokens_stream_user() {
        let got = request_to_anthropic(
            &json!({
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 100,
                "max_completion_tokens": 300,
                "temperature": 1.7,
                "top_p": 0.9,
                "stop": "END",
                "stream": true,
                "user": "user-42"
            }),
            "claude-3-5-haiku-latest",
            true,
        )
        .unwrap();
        assert_eq!(
            got,
            json!({
                "model": "claude-3-5-haiku-latest",
                "max_tokens": 300,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                "temperature": 1.0,
                "top_p": 0.9,
                "stop_sequences": ["END"],
                "stream": true,
                "metadata": {"user_id": "user-42"}
            })
        );
        let got = out_req(json!({
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 50, "temperature": 0, "stop": ["\n\n", "", "Human:"]
        }));
        assert_eq!(got["max_tokens"], json!(50));
        assert_eq!(got["temperature"], json!(0));
        assert_eq!(got["stop_sequences"], json!(["\n\n", "Human:"]));
        assert!(got.get("stream").is_none());
        let got = out_req(
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": null, "stop": []}),
        );
        assert_eq!(got["max_tokens"], json!(DEFAULT_MAX_TOKENS));
        assert!(got.get("stop_sequences").is_none());
    }

    fn with_tools(extra: Value) -> Value {
        let mut req = json!({
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
        });
        for (k, v) in extra.as_object().unwrap() {
            req[k] = v.clone();
        }
        out_req(req)
    }

    #[test]
    fn outbound_tool_choice_variants() {
        let cases = [
            (json!("auto"), json!({"type": "auto"})),
            (json!("required"), json!({"type": "any"})),
            (json!("none"), json!({"type": "none"})),
            (
                json!({"type": "function", "function": {"name": "lookup"}}),
                json!({"type": "tool", "name": "lookup"}),
            ),
        ];
        for (choice, want) in cases {
            let got = with_tools(json!({"tool_choice": choice}));
            assert_eq!(got["tool_choice"], want, "{choice}");
        }
        assert!(with_tools(json!({})).get("tool_choice").is_none());
    }

    #[test]
    fn outbound_parallel_tool_calls_false() {
        let got = with_tools(json!({"parallel_tool_calls": false}));
        assert_eq!(
            got["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        let got = with_tools(json!({"parallel_tool_calls": false, "tool_choice": "required"}));
        assert_eq!(
            got["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        let got = with_tools(
            json!({"parallel_tool_calls": false, "tool_choice": {"type": "function", "function": {"name": "lookup"}}}),
        );
        assert_eq!(
            got["tool_choice"],
            json!({"type": "tool", "name": "lookup", "disable_parallel_tool_use": true})
        );
        let got = with_tools(json!({"parallel_tool_calls": false, "tool_choice": "none"}));
        assert_eq!(got["tool_choice"], json!({"type": "none"}));
        let got = with_tools(json!({"parallel_tool_calls": true}));
        assert!(got.get("tool_choice").is_none());
    }

    #[test]
    fn outbound_without_tools_drops_tool_choice() {
        let got = out_req(json!({
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [], "tool_choice": "required", "parallel_tool_calls": false
        }));
        assert!(got.get("tools").is_none());
        assert!(got.get("tool_choice").is_none());
    }

    #[test]
    fn outbound_drops_fields_without_equivalent() {
        let got = out_req(json!({
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "hi", "name": "bob"}],
            "n": 1, "presence_penalty": 0.5, "frequency_penalty": 0.5, "logit_bias": {"50256": -100},
            "logprobs": true, "top_logprobs": 3, "seed": 7, "response_format": {"type": "json_object"},
            "stream_options": {"include_usage": true}, "service_tier": "auto", "store": true,
            "metadata": {"k": "v"}, "reasoning_effort": "low", "x_custom_unknown": {"a": 1}
        }));
        assert_eq!(
            got,
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 4096,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
            })
        );
    }

    #[test]
    fn outbound_errors_name_the_field() {
        let cases = [
            (json!([]), "body: expected an object, got array"),
            (json!({}), "messages: missing"),
            (json!({"messages": {}}), "messages: expected an array, got object"),
            (json!({"messages": [1]}), "messages[0]: expected an object, got number"),
            (json!({"messages": [{"content": "x"}]}), "messages[0].role: missing"),
            (json!({"messages": [{"role": "function", "name": "f", "content": "x"}]}), "messages[0].role: unsupported role `function`"),
            (json!({"messages": [{"role": "user"}]}), "messages[0].content: missing"),
            (json!({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "audio"}]}]}),
             "messages[1].content[0]: unsupported part type `audio`"),
            (json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}),
             "messages[0].content[0]: unsupported part type `input_audio`"),
            (json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]}),
             "messages[0].content[0].image_url.url: expected a data:<media type>;base64 URL or an http(s) URL"),
            (json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,raw"}}]}]}),
             "messages[0].content[0].image_url.url: expected a data:<media type>;base64 URL or an http(s) URL"),
            (json!({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]}),
             "messages[0].content[0].file.file_data: missing (file_id references are not supported by Anthropic)"),
            (json!({"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "r"},
                    {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"a\":"}}]}]}),
             "messages[2].tool_calls[0].function.arguments: invalid JSON: EOF while parsing a value at line 1 column 5"),
            (json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}]}]}),
             "messages[0].tool_calls[0].function.arguments: expected a JSON object, got array"),
            (json!({"messages": [{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f"}}]}]}),
             "messages[0].tool_calls[0].id: missing"),
            (json!({"messages": [{"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}]}),
             "messages[0].function_call: legacy function_call is not supported; use tool_calls"),
            (json!({"messages": [{"role": "tool", "content": "x"}]}), "messages[0].tool_call_id: missing"),
            (json!({"messages": [], "max_tokens": 0}), "max_tokens: expected a positive integer"),
            (json!({"messages": [], "max_completion_tokens": "10"}), "max_completion_tokens: expected a positive integer"),
            (json!({"messages": [], "temperature": "hot"}), "temperature: expected a number, got string"),
            (json!({"messages": [], "stop": [1]}), "stop[0]: expected a string, got number"),
            (json!({"messages": [], "user": 5}), "body.user: expected a string, got number"),
            (json!({"messages": [], "tools": [{"type": "web_search"}]}), "tools[0].type: unsupported tool type `web_search`"),
            (json!({"messages": [], "tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}),
             "tools[0].function.parameters: expected an object, got array"),
            (json!({"messages": [], "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "sometimes"}),
             "tool_choice: unsupported value `sometimes`"),
            (json!({"messages": [], "tools": [{"type": "function", "function": {"name": "f"}}], "parallel_tool_calls": "no"}),
             "parallel_tool_calls: expected a boolean, got string"),
        ];
        for (req, want) in cases {
            assert_eq!(
                err_of(request_to_anthropic(&req, "m", false)),
                want,
                "{req}"
            );
        }
    }

    // ---------------------------------------------------------------- Anthropic response → OpenAI

    #[test]
    fn response_to_openai_text() {
        let got = response_to_openai(
            &json!({
                "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF", "type": "message", "role": "assistant",
                "model": "claude-sonnet-4-5-20250929",
                "content": [{"type": "text", "text": "Hi! "}, {"type": "text", "text": "How can I help?"}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 12, "output_tokens": 8}
            }),
            "gpt-4o",
        )
        .unwrap();
        assert_eq!(
            norm(got),
            json!({
                "id": "chatcmpl-013Zva2CMHLNnXjNJJKqJ2EF", "object": "chat.completion", "created": 0, "model": "gpt-4o",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi! How can I help?"},
                             "logprobs": null, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}
            })
        );
    }

    #[test]
    fn response_to_openai_parallel_tool_use_and_cache_usage() {
        let got = response_to_openai(
            &json!({
                "id": "msg_01A", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {"city": "Tokyo"}}
                ],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 5, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 1000, "output_tokens": 40}
            }),
            "gpt-4o",
        )
        .unwrap();
        assert_eq!(
            norm(got),
            json!({
                "id": "chatcmpl-01A", "object": "chat.completion", "created": 0, "model": "gpt-4o",
                "choices": [{"index": 0, "logprobs": null, "finish_reason": "tool_calls", "message": {
                    "role": "assistant", "content": null, "tool_calls": [
                        {"id": "toolu_01", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                        {"id": "toolu_02", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Tokyo\"}"}}
                    ]}}],
                "usage": {"prompt_tokens": 1105, "completion_tokens": 40, "total_tokens": 1145,
                          "prompt_tokens_details": {"cached_tokens": 1000}}
            })
        );
    }

    #[test]
    fn response_to_openai_stop_reasons_and_errors() {
        for (stop, finish) in [
            ("max_tokens", "length"),
            ("stop_sequence", "stop"),
            ("refusal", "content_filter"),
            ("pause_turn", "stop"),
        ] {
            let got = response_to_openai(
                &json!({"id": "msg_x", "content": [{"type": "text", "text": "a"}], "stop_reason": stop, "usage": {}}),
                "m",
            )
            .unwrap();
            assert_eq!(got["choices"][0]["finish_reason"], json!(finish));
        }
        let got = response_to_openai(&json!({"content": []}), "m").unwrap();
        assert!(got["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(got["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(
            err_of(response_to_openai(
                &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
                "m"
            )),
            "response: upstream error: Overloaded"
        );
        assert_eq!(
            err_of(response_to_openai(&json!({"content": "x"}), "m")),
            "response.content: expected an array, got string"
        );
        assert_eq!(
            err_of(response_to_openai(
                &json!({"content": [{"type": "tool_use", "id": "t"}]}),
                "m"
            )),
            "response.content[0].name: missing"
        );
    }

    // ---------------------------------------------------------------- Anthropic stream → OpenAI

    #[test]
    fn stream_text_golden_with_usage() {
        let mut s = AnthropicToOpenAiStream::new("gpt-4o", true);
        assert_eq!(s.usage(), None);
        let got = feed(
            &mut s,
            &[
                (
                    "message_start",
                    json!({"type": "message_start", "message": {"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}),
                ),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                ),
                ("ping", json!({"type": "ping"})),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}),
                ),
                (
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ),
                (
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 15}}),
                ),
                ("message_stop", json!({"type": "message_stop"})),
            ],
        );
        assert_eq!(
            got,
            vec![
                chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                chunk(json!({"content": "Hello"}), Value::Null),
                chunk(json!({"content": "!"}), Value::Null),
                chunk(json!({}), json!("stop")),
                json!({"id": "chatcmpl-01XFDUDYJgAACzvnptvVoYEL", "object": "chat.completion.chunk", "created": 0,
                       "model": "gpt-4o", "choices": [],
                       "usage": {"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40}}),
                json!("[DONE]"),
            ]
        );
        assert_eq!(s.usage(), Some((25, 15)));
        // Anything after message_stop is ignored.
        assert!(s
            .on_event(Some("ping"), "{\"type\":\"ping\"}")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn stream_parallel_tools_golden_without_usage() {
        let mut s = AnthropicToOpenAiStream::new("gpt-4o", false);
        let got = feed(
            &mut s,
            &[
                (
                    "message_start",
                    json!({"type": "message_start", "message": {"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5", "usage": {"input_tokens": 472, "output_tokens": 2}}}),
                ),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking."}}),
                ),
                (
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Par"}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "is\"}"}}),
                ),
                (
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 1}),
                ),
                ("ping", json!({"type": "ping"})),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_02", "name": "get_time", "input": {}}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
                ),
                (
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 2}),
                ),
                (
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 89}}),
                ),
                ("message_stop", json!({"type": "message_stop"})),
            ],
        );
        assert_eq!(
            got,
            vec![
                chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                chunk(json!({"content": "Checking."}), Value::Null),
                chunk(
                    json!({"tool_calls": [{"index": 0, "id": "toolu_01", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
                    Value::Null
                ),
                chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": \"Par"}}]}),
                    Value::Null
                ),
                chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "is\"}"}}]}),
                    Value::Null
                ),
                chunk(
                    json!({"tool_calls": [{"index": 1, "id": "toolu_02", "type": "function", "function": {"name": "get_time", "arguments": ""}}]}),
                    Value::Null
                ),
                chunk(
                    json!({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
                    Value::Null
                ),
                chunk(json!({}), json!("tool_calls")),
                json!("[DONE]"),
            ]
        );
        assert_eq!(s.usage(), Some((472, 89)));
    }

    #[test]
    fn stream_error_event_before_content() {
        let mut s = AnthropicToOpenAiStream::new("gpt-4o", true);
        let got = feed(
            &mut s,
            &[
                ("ping", json!({"type": "ping"})),
                (
                    "error",
                    json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
                ),
            ],
        );
        assert_eq!(
            got,
            vec![json!({"ERROR": "overloaded_error", "message": "Overloaded"})]
        );
        let outs = s.on_event(Some("error"), "{\"type\":\"error\"}").unwrap();
        assert_eq!(
            outs,
            vec![OpenAiOut::Error {
                etype: "api_error".into(),
                message: "upstream stream error".into()
            }]
        );
    }

    #[test]
    fn stream_ignores_thinking_server_tools_and_unknown_events() {
        let mut s = AnthropicToOpenAiStream::new("gpt-4o", false);
        let got = feed(
            &mut s,
            &[
                (
                    "message_start",
                    json!({"type": "message_start", "message": {"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "usage": {"input_tokens": 10, "cache_read_input_tokens": 90, "output_tokens": 1}}}),
                ),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me think"}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQB"}}),
                ),
                (
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 1, "content_block": {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"query\":\"x\"}"}}),
                ),
                (
                    "brand_new_event",
                    json!({"type": "brand_new_event", "x": 1}),
                ),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": ""}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "Done."}}),
                ),
                (
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": null}, "usage": {"output_tokens": 30}}),
                ),
                (
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"input_tokens": 12, "output_tokens": 31}}),
                ),
                ("message_stop", json!({"type": "message_stop"})),
            ],
        );
        assert_eq!(
            got,
            vec![
                chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                chunk(json!({"content": "Done."}), Value::Null),
                chunk(json!({}), json!("length")),
                json!("[DONE]"),
            ]
        );
        assert_eq!(s.usage(), Some((102, 31)));
    }

    #[test]
    fn stream_without_message_delta_still_finishes_and_bad_data_errors() {
        let mut s = AnthropicToOpenAiStream::new("m", false);
        let outs = s.on_event(None, "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}}").unwrap();
        assert_eq!(outs.len(), 2, "role chunk is sent before the first content");
        let outs = s.on_event(Some("message_stop"), "").unwrap();
        let got = chunks(outs);
        assert_eq!(got[0]["choices"][0]["finish_reason"], json!("stop"));
        assert_eq!(got[1], json!("[DONE]"));
        let mut s = AnthropicToOpenAiStream::new("m", false);
        assert!(err_of(s.on_event(Some("message_start"), "{not json"))
            .starts_with("stream event data: invalid JSON"));
        assert!(err_of(s.on_event(Some("content_block_start"), "{\"type\":\"content_block_start\",\"content_block\":{\"type\":\"tool_use\",\"name\":\"f\"}}"))
            .starts_with("content_block_start.index"));
    }

    // ---------------------------------------------------------------- inbound request

    #[test]
    fn inbound_request_full_golden() {
        let got = request_to_openai(
            &json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 1024,
                "system": [{"type": "text", "text": "You are a helpful agent.", "cache_control": {"type": "ephemeral"}},
                           {"type": "text", "text": "Be brief."}],
                "messages": [
                    {"role": "user", "content": [
                        {"type": "text", "text": "What is in this image, and what's the weather?"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/b.png"}}
                    ]},
                    {"role": "assistant", "content": [
                        {"type": "thinking", "thinking": "...", "signature": "s"},
                        {"type": "text", "text": "Let me check."},
                        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
                        {"type": "tool_use", "id": "toolu_02", "name": "screenshot", "input": {}}
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18C"},
                        {"type": "tool_result", "tool_use_id": "toolu_02", "is_error": true, "content": [
                            {"type": "text", "text": "partial"},
                            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
                            {"type": "text", "text": "timeout"}
                        ]},
                        {"type": "text", "text": "Continue."}
                    ]},
                    {"role": "assistant", "content": "Sure."},
                    {"role": "user", "content": [{"type": "text", "text": "Thanks", "cache_control": {"type": "ephemeral"}}]}
                ],
                "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}, "cache_control": {"type": "ephemeral"}},
                          {"type": "custom", "name": "screenshot", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
                "stop_sequences": ["###"],
                "temperature": 0.3, "top_p": 0.8, "top_k": 40,
                "stream": true,
                "metadata": {"user_id": "u-1"},
                "thinking": {"type": "enabled", "budget_tokens": 2000}
            }),
            "gpt-4o",
        )
        .unwrap();
        assert_eq!(
            got,
            json!({
                "model": "gpt-4o",
                "messages": [
                    {"role": "system", "content": "You are a helpful agent.\n\nBe brief."},
                    {"role": "user", "content": [
                        {"type": "text", "text": "What is in this image, and what's the weather?"},
                        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/b.png"}}
                    ]},
                    {"role": "assistant", "content": "Let me check.", "tool_calls": [
                        {"id": "toolu_01", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                        {"id": "toolu_02", "type": "function", "function": {"name": "screenshot", "arguments": "{}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "toolu_01", "content": "18C"},
                    {"role": "tool", "tool_call_id": "toolu_02", "content": "Error: partial\ntimeout"},
                    {"role": "user", "content": [
                        {"type": "text", "text": "Continue."},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}
                    ]},
                    {"role": "assistant", "content": "Sure."},
                    {"role": "user", "content": "Thanks"}
                ],
                "max_tokens": 1024,
                "temperature": 0.3,
                "top_p": 0.8,
                "stop": ["###"],
                "stream": true,
                "stream_options": {"include_usage": true},
                "user": "u-1",
                "tools": [
                    {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
                    {"type": "function", "function": {"name": "screenshot", "parameters": {"type": "object"}}}
                ],
                "tool_choice": "required",
                "parallel_tool_calls": false
            })
        );
    }

    #[test]
    fn inbound_tool_choice_variants_and_simple_request() {
        let base = |tc: Value| {
            request_to_openai(
                &json!({"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}],
                        "tools": [{"name": "f", "input_schema": {"type": "object"}}], "tool_choice": tc}),
                "m",
            )
            .unwrap()
        };
        assert_eq!(base(json!({"type": "auto"}))["tool_choice"], json!("auto"));
        assert_eq!(base(json!({"type": "none"}))["tool_choice"], json!("none"));
        assert_eq!(
            base(json!({"type": "tool", "name": "f"}))["tool_choice"],
            json!({"type": "function", "function": {"name": "f"}})
        );
        assert!(base(json!({"type": "auto"}))
            .get("parallel_tool_calls")
            .is_none());
        let got = request_to_openai(
            &json!({"model": "claude-x", "max_tokens": 5, "system": "Sys", "messages": [{"role": "user", "content": "hi"}],
                    "tool_choice": {"type": "any"}, "stream": false}),
            "llama3",
        )
        .unwrap();
        assert_eq!(
            got,
            json!({"model": "llama3", "max_tokens": 5, "messages": [
                {"role": "system", "content": "Sys"}, {"role": "user", "content": "hi"}]})
        );
    }

    #[test]
    fn inbound_errors_name_the_field() {
        let cases = [
            (json!({"messages": [{"role": "system", "content": "x"}]}), "messages[0].role: unsupported role `system`"),
            (json!({"messages": [{"role": "user", "content": [{"type": "search_result"}]}]}),
             "messages[0].content[0]: unsupported block type `search_result`"),
            (json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}),
             "messages[0].content[0].source.type: unsupported image source type `file`"),
            (json!({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}), "messages[0].content[0].tool_use_id: missing"),
            (json!({"messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
             "tools[0].type: unsupported tool type `web_search_20250305` (only custom tools can be translated)"),
            (json!({"messages": [], "tools": [{"name": "f"}], "tool_choice": {"type": "tool"}}), "tool_choice.name: missing"),
            (json!({"messages": [], "system": 3}), "system: expected a string or an array, got number"),
            (json!({"messages": [], "stream": "yes"}), "stream: expected a boolean, got string"),
            (json!({"messages": [], "stop_sequences": "x"}), "stop_sequences: expected an array, got string"),
            (json!({"messages": [], "metadata": {"user_id": 1}}), "metadata.user_id: expected a string, got number"),
        ];
        for (req, want) in cases {
            assert_eq!(err_of(request_to_openai(&req, "m")), want, "{req}");
        }
    }

    // ---------------------------------------------------------------- OpenAI response → Anthropic

    #[test]
    fn response_to_anthropic_text() {
        let got = response_to_anthropic(
            &json!({
                "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", "object": "chat.completion", "created": 1741569952,
                "model": "gpt-4o-2024-08-06",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there.", "refusal": null}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
                          "prompt_tokens_details": {"cached_tokens": 4}}
            }),
            "claude-sonnet-4-5",
        )
        .unwrap();
        assert_eq!(
            got,
            json!({
                "id": "msg_B9MBs8CjcvOU2jLn4n570S5qMJKcT", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                "content": [{"type": "text", "text": "Hello there."}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 15, "output_tokens": 10, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4}
            })
        );
    }

    #[test]
    fn response_to_anthropic_tool_calls() {
        let got = response_to_anthropic(
            &json!({
                "id": "chatcmpl-1",
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "noop", "arguments": ""}},
                    {"id": "call_3", "type": "function", "function": {"name": "broken", "arguments": "{\"a\": tru"}},
                    {"type": "function", "function": {"name": "listy", "arguments": "[1,2]"}}
                ]}}],
                "usage": {"prompt_tokens": 50, "completion_tokens": 20}
            }),
            "claude-sonnet-4-5",
        )
        .unwrap();
        assert_eq!(
            got["stop_reason"],
            json!("tool_use"),
            "tool calls with finish `stop` still mean tool_use"
        );
        let content = got["content"].as_array().unwrap();
        assert_eq!(content.len(), 4);
        assert_eq!(
            content[0],
            json!({"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}})
        );
        assert_eq!(
            content[1],
            json!({"type": "tool_use", "id": "call_2", "name": "noop", "input": {}})
        );
        assert_eq!(
            content[2],
            json!({"type": "tool_use", "id": "call_3", "name": "broken", "input": {"_raw_arguments": "{\"a\": tru"}})
        );
        assert!(content[3]["id"].as_str().unwrap().starts_with("toolu_"));
        assert_eq!(content[3]["input"], json!({"_raw_arguments": "[1,2]"}));
        assert_eq!(got["usage"]["input_tokens"], json!(50));
        assert_eq!(got["usage"]["output_tokens"], json!(20));
    }

    #[test]
    fn response_to_anthropic_finish_reasons_refusal_and_errors() {
        for (finish, stop) in [
            ("length", "max_tokens"),
            ("tool_calls", "tool_use"),
            ("content_filter", "refusal"),
            ("stop", "end_turn"),
        ] {
            let got = response_to_anthropic(
                &json!({"choices": [{"message": {"content": "x"}, "finish_reason": finish}]}),
                "m",
            )
            .unwrap();
            assert_eq!(got["stop_reason"], json!(stop));
            assert!(got["id"].as_str().unwrap().starts_with("msg_"));
        }
        let got = response_to_anthropic(
            &json!({"choices": [{"message": {"content": null, "refusal": "I can't help with that."}, "finish_reason": "content_filter"}]}),
            "m",
        )
        .unwrap();
        assert_eq!(
            got["content"],
            json!([{"type": "text", "text": "I can't help with that."}])
        );
        assert_eq!(
            err_of(response_to_anthropic(
                &json!({"error": {"message": "bad key"}}),
                "m"
            )),
            "response: upstream error: bad key"
        );
        assert_eq!(
            err_of(response_to_anthropic(&json!({"choices": []}), "m")),
            "response.choices: empty"
        );
    }

    // ---------------------------------------------------------------- OpenAI stream → Anthropic

    fn events(evs: Vec<(&'static str, Value)>) -> Vec<Value> {
        evs.into_iter()
            .map(|(name, data)| {
                assert_eq!(data["type"], json!(name), "event name matches data.type");
                data
            })
            .collect()
    }

    fn oai_chunk(delta: Value, finish: Value) -> Value {
        json!({"id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    }

    fn message_start(input: u64) -> Value {
        json!({"type": "message_start", "message": {
            "id": "msg_abc", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input, "output_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}})
    }

    #[test]
    fn openai_stream_text_golden() {
        let mut s = OpenAiToAnthropicStream::new("claude-sonnet-4-5");
        let mut all = Vec::new();
        for c in [
            oai_chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            oai_chunk(json!({"content": "Hello"}), Value::Null),
            oai_chunk(json!({"content": " world"}), Value::Null),
            oai_chunk(json!({}), json!("stop")),
            json!({"id": "chatcmpl-abc", "object": "chat.completion.chunk", "choices": [],
                   "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}),
        ] {
            all.extend(s.on_chunk(&c));
        }
        all.extend(s.finish());
        assert_eq!(
            events(all),
            vec![
                message_start(0),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " world"}}),
                json!({"type": "content_block_stop", "index": 0}),
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                       "usage": {"input_tokens": 9, "output_tokens": 2, "cache_read_input_tokens": 0}}),
                json!({"type": "message_stop"}),
            ]
        );
        assert!(s.finish().is_empty());
        assert!(s
            .on_chunk(&oai_chunk(json!({"content": "late"}), Value::Null))
            .is_empty());
    }

    #[test]
    fn openai_stream_parallel_tools_golden() {
        let mut s = OpenAiToAnthropicStream::new("claude-sonnet-4-5");
        let tc = |v: Value| oai_chunk(json!({"tool_calls": [v]}), Value::Null);
        let mut all = Vec::new();
        for c in [
            oai_chunk(json!({"role": "assistant", "content": null}), Value::Null),
            oai_chunk(json!({"content": "Checking."}), Value::Null),
            tc(
                json!({"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}),
            ),
            tc(json!({"index": 0, "function": {"arguments": "{\"city\":"}})),
            tc(json!({"index": 0, "function": {"arguments": "\"Paris\"}"}})),
            tc(
                json!({"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Tokyo\"}"}}),
            ),
            tc(json!({"index": 0, "function": {"arguments": "late"}})),
            oai_chunk(json!({}), json!("tool_calls")),
        ] {
            all.extend(s.on_chunk(&c));
        }
        all.extend(s.finish());
        assert_eq!(
            events(all),
            vec![
                message_start(0),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking."}}),
                json!({"type": "content_block_stop", "index": 0}),
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}}}),
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
                json!({"type": "content_block_stop", "index": 1}),
                json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "call_b", "name": "get_weather", "input": {}}}),
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":\"Tokyo\"}"}}),
                json!({"type": "content_block_stop", "index": 2}),
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                       "usage": {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0}}),
                json!({"type": "message_stop"}),
            ]
        );
    }

    #[test]
    fn openai_stream_whole_calls_without_index_and_finish_stop() {
        // Some backends send each complete call in one chunk without `index`, and say `stop`.
        let mut s = OpenAiToAnthropicStream::new("m");
        let mut all = Vec::new();
        all.extend(s.on_chunk(&oai_chunk(
            json!({"tool_calls": [
            {"id": "c1", "function": {"name": "a", "arguments": "{}"}}]}),
            Value::Null,
        )));
        all.extend(s.on_chunk(&oai_chunk(
            json!({"tool_calls": [
            {"id": "c2", "function": {"name": "b", "arguments": "{\"x\":1}"}}]}),
            json!("stop"),
        )));
        all.extend(s.finish());
        let all = events(all);
        let starts: Vec<&Value> = all
            .iter()
            .filter(|e| e["type"] == "content_block_start")
            .collect();
        assert_eq!(starts.len(), 2);
        assert_eq!(starts[1]["content_block"]["id"], json!("c2"));
        assert_eq!(starts[1]["index"], json!(1));
        assert_eq!(
            all[all.len() - 2]["delta"]["stop_reason"],
            json!("tool_use")
        );
    }

    #[test]
    fn openai_stream_error_chunk_and_empty_stream() {
        let mut s = OpenAiToAnthropicStream::new("m");
        let got =
            events(s.on_chunk(&json!({"error": {"message": "Provider overloaded", "code": 503}})));
        assert_eq!(
            got,
            vec![
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Provider overloaded"}})
            ]
        );
        assert!(s.finish().is_empty());

        let mut s = OpenAiToAnthropicStream::new("m");
        let got = events(s.finish());
        assert_eq!(got.len(), 3);
        assert_eq!(got[0]["type"], json!("message_start"));
        assert!(got[0]["message"]["id"]
            .as_str()
            .unwrap()
            .starts_with("msg_"));
        assert_eq!(got[1]["delta"]["stop_reason"], json!("end_turn"));
        assert_eq!(got[2], json!({"type": "message_stop"}));
    }

    #[test]
    fn openai_stream_length_finish_and_choices_null_usage() {
        let mut s = OpenAiToAnthropicStream::new("m");
        let mut all = s.on_chunk(&oai_chunk(json!({"content": "abc"}), json!("length")));
        all.extend(s.on_chunk(&json!({"id": "chatcmpl-abc", "choices": null,
            "usage": {"prompt_tokens": 30, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 10}}})));
        all.extend(s.finish());
        let all = events(all);
        assert_eq!(
            all[all.len() - 2],
            json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": null},
                   "usage": {"input_tokens": 20, "output_tokens": 3, "cache_read_input_tokens": 10}})
        );
    }

    // ---------------------------------------------------------------- errors and reasons

    #[test]
    fn errors_to_openai() {
        let body = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}"#;
        assert_eq!(
            error_to_openai(body, 529),
            json!({"error": {"message": "Overloaded", "type": "overloaded_error", "param": null, "code": null}})
        );
        let body = br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#;
        assert_eq!(
            error_to_openai(body, 400)["error"]["code"],
            json!("context_length_exceeded")
        );
        assert_eq!(
            error_to_openai(body, 400)["error"]["type"],
            json!("invalid_request_error")
        );
        let body = br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;
        assert_eq!(
            error_to_openai(body, 401)["error"]["code"],
            json!("invalid_api_key")
        );
        let body = br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#;
        assert_eq!(
            error_to_openai(body, 429)["error"]["code"],
            json!("rate_limit_exceeded")
        );
        assert_eq!(
            error_to_openai(b"<html>Bad Gateway</html>", 502),
            json!({"error": {"message": "<html>Bad Gateway</html>", "type": "api_error", "param": null, "code": null}})
        );
        assert_eq!(
            error_to_openai(b"", 504)["error"]["message"],
            json!("upstream returned HTTP 504")
        );
        assert_eq!(
            error_to_openai(b"", 504)["error"]["type"],
            json!("timeout_error")
        );
        let long = "x".repeat(5000);
        let msg = error_to_openai(long.as_bytes(), 500)["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(msg.chars().count(), 1001);
        let openai = br#"{"error":{"message":"Incorrect API key","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
        assert_eq!(
            error_to_openai(openai, 401)["error"]["code"],
            json!("invalid_api_key")
        );
        let gemini = br#"[{"error":{"code":429,"message":"Resource exhausted","status":"RESOURCE_EXHAUSTED"}}]"#;
        assert_eq!(
            error_to_openai(gemini, 429),
            json!({"error": {"message": "Resource exhausted", "type": "RESOURCE_EXHAUSTED", "param": null, "code": null}})
        );
        assert_eq!(error_body_message(br#"{"error":"plain"}"#, 400), "plain");
    }

    #[test]
    fn errors_to_anthropic() {
        let cases = [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (402, "billing_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (408, "timeout_error"),
            (413, "request_too_large"),
            (422, "invalid_request_error"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (503, "overloaded_error"),
            (504, "timeout_error"),
            (529, "overloaded_error"),
        ];
        for (status, ty) in cases {
            assert_eq!(
                error_to_anthropic(status, "boom"),
                json!({"type": "error", "error": {"type": ty, "message": "boom"}}),
                "{status}"
            );
        }
    }

    #[test]
    fn reason_maps() {
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("pause_turn", "stop"),
            ("model_context_window_exceeded", "length"),
            ("something_new", "stop"),
        ] {
            assert_eq!(stop_reason_to_finish(stop), finish, "{stop}");
        }
        for (finish, stop) in [
            ("stop", "end_turn"),
            ("length", "max_tokens"),
            ("tool_calls", "tool_use"),
            ("function_call", "tool_use"),
            ("content_filter", "refusal"),
            ("weird", "end_turn"),
        ] {
            assert_eq!(finish_to_stop_reason(finish), stop, "{finish}");
        }
    }

    #[test]
    fn outbound_then_inbound_round_trip_keeps_the_conversation() {
        let openai = json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "Sys"},
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "One moment.", "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "w", "arguments": "{\"c\":\"P\"}"}}]},
                {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
                {"role": "user", "content": "Thanks"}
            ],
            "tools": [{"type": "function", "function": {"name": "w", "description": "d", "parameters": {"type": "object"}}}],
            "tool_choice": "required", "parallel_tool_calls": false, "stop": ["x"], "max_tokens": 9,
            "temperature": 0.5, "user": "u"
        });
        let anthropic = request_to_anthropic(&openai, "claude", false).unwrap();
        let back = request_to_openai(&anthropic, "gpt-4o").unwrap();
        assert_eq!(back, openai);
    }

    // ---------------------------------------------------------------- hostile input

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            (-1e6f64..1e6).prop_map(|f| json!(f)),
            prop::sample::select(vec![
                "user",
                "assistant",
                "system",
                "tool",
                "developer",
                "text",
                "image_url",
                "image",
                "tool_use",
                "tool_result",
                "function",
                "auto",
                "required",
                "none",
                "any",
                "tool",
                "data:image/png;base64,AA",
                "data:",
                "https://x",
                "{",
                "{}",
                "[1]",
                "",
                "message_start",
                "content_block_start",
                "content_block_delta",
                "text_delta",
                "input_json_delta",
                "message_delta",
                "message_stop",
                "error",
                "msg_1",
                "chatcmpl-1",
            ])
            .prop_map(|s| json!(s)),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            let keys = prop::sample::select(vec![
                "role",
                "content",
                "type",
                "text",
                "image_url",
                "url",
                "tool_calls",
                "id",
                "function",
                "name",
                "arguments",
                "tool_call_id",
                "messages",
                "tools",
                "tool_choice",
                "parallel_tool_calls",
                "stop",
                "max_tokens",
                "temperature",
                "user",
                "system",
                "source",
                "input",
                "tool_use_id",
                "is_error",
                "choices",
                "delta",
                "message",
                "index",
                "usage",
                "content_block",
                "partial_json",
                "stop_reason",
                "finish_reason",
                "error",
                "file",
                "file_data",
                "input_schema",
                "parameters",
                "metadata",
                "stop_sequences",
                "refusal",
            ]);
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(keys, inner, 0..6).prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                )),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn hostile_json_never_panics(v in arb_json(), w in arb_json(), bytes in prop::collection::vec(any::<u8>(), 0..64), status in any::<u16>()) {
            let _ = request_to_anthropic(&v, "m", true);
            let _ = request_to_openai(&v, "m");
            let _ = response_to_openai(&v, "m");
            let _ = response_to_anthropic(&v, "m");
            let mut a = AnthropicToOpenAiStream::new("m", true);
            let _ = a.on_event(None, &v.to_string());
            let _ = a.on_event(Some("content_block_delta"), &w.to_string());
            let _ = a.on_event(Some("x"), &String::from_utf8_lossy(&bytes));
            let _ = a.usage();
            let mut o = OpenAiToAnthropicStream::new("m");
            let _ = o.on_chunk(&v);
            let _ = o.on_chunk(&w);
            let _ = o.finish();
            let _ = error_to_openai(&bytes, status);
            let _ = error_to_openai(v.to_string().as_bytes(), status);
            let _ = error_to_anthropic(status, "m");
        }
    }
}
