//! Cost per request: USD per 1M input/output tokens, from a built-in table of common models of
//! every cloud kind, overridable by `pricing:` in the config. Local providers cost nothing.

use crate::config::RawPrice;
use std::collections::BTreeMap;

/// (model prefix, input USD/1M, output USD/1M). Longest matching prefix wins.
static BUILTIN: &[(&str, f64, f64)] = &[
    // OpenAI
    ("gpt-4o-mini", 0.15, 0.60),
    ("gpt-4o", 2.50, 10.00),
    ("gpt-4.1-nano", 0.10, 0.40),
    ("gpt-4.1-mini", 0.40, 1.60),
    ("gpt-4.1", 2.00, 8.00),
    ("gpt-5-nano", 0.05, 0.40),
    ("gpt-5-mini", 0.25, 2.00),
    ("gpt-5", 1.25, 10.00),
    ("gpt-4-turbo", 10.00, 30.00),
    ("gpt-3.5-turbo", 0.50, 1.50),
    ("o1-mini", 1.10, 4.40),
    ("o1", 15.00, 60.00),
    ("o3-mini", 1.10, 4.40),
    ("o3", 2.00, 8.00),
    ("o4-mini", 1.10, 4.40),
    ("text-embedding-3-small", 0.02, 0.0),
    ("text-embedding-3-large", 0.13, 0.0),
    // Anthropic
    ("claude-opus-4", 15.00, 75.00),
    ("claude-sonnet-4", 3.00, 15.00),
    ("claude-3-7-sonnet", 3.00, 15.00),
    ("claude-3-5-sonnet", 3.00, 15.00),
    ("claude-haiku-4", 1.00, 5.00),
    ("claude-3-5-haiku", 0.80, 4.00),
    ("claude-3-haiku", 0.25, 1.25),
    // Google
    ("gemini-2.5-pro", 1.25, 10.00),
    ("gemini-2.5-flash-lite", 0.10, 0.40),
    ("gemini-2.5-flash", 0.30, 2.50),
    ("gemini-2.0-flash", 0.10, 0.40),
    ("gemini-1.5-pro", 1.25, 5.00),
    ("gemini-1.5-flash", 0.075, 0.30),
    // Groq / Together / Fireworks / Cerebras (Llama and friends)
    ("llama-3.1-8b", 0.05, 0.08),
    ("llama-3.3-70b", 0.59, 0.79),
    ("llama-3.1-70b", 0.59, 0.79),
    ("meta-llama/", 0.88, 0.88),
    ("accounts/fireworks/", 0.90, 0.90),
    ("openai/gpt-oss-120b", 0.15, 0.75),
    ("openai/gpt-oss-20b", 0.10, 0.50),
    // Mistral
    ("mistral-large", 2.00, 6.00),
    ("mistral-medium", 0.40, 2.00),
    ("mistral-small", 0.10, 0.30),
    ("codestral", 0.30, 0.90),
    ("ministral", 0.10, 0.10),
    ("pixtral-large", 2.00, 6.00),
    // DeepSeek
    ("deepseek-chat", 0.27, 1.10),
    ("deepseek-reasoner", 0.55, 2.19),
    // xAI
    ("grok-3-mini", 0.30, 0.50),
    ("grok-3", 3.00, 15.00),
    ("grok-4", 3.00, 15.00),
    // Perplexity
    ("sonar-pro", 3.00, 15.00),
    ("sonar-reasoning", 1.00, 5.00),
    ("sonar", 1.00, 1.00),
    // Cohere
    ("command-r-plus", 2.50, 10.00),
    ("command-r", 0.15, 0.60),
    ("command-a", 2.50, 10.00),
];

/// The price of `model` in USD per 1M tokens: an exact `pricing:` entry, else the longest
/// built-in prefix.
pub fn price(model: &str, overrides: &BTreeMap<String, RawPrice>) -> Option<(f64, f64)> {
    if let Some(p) = overrides.get(model) {
        return Some((p.input, p.output));
    }
    BUILTIN
        .iter()
        .filter(|(prefix, ..)| model.starts_with(prefix))
        .max_by_key(|(prefix, ..)| prefix.len())
        .map(|(_, i, o)| (*i, *o))
}

/// Cost in USD of one request; zero for local providers and unknown models.
pub fn cost(
    model: &str,
    local: bool,
    tokens_in: u64,
    tokens_out: u64,
    overrides: &BTreeMap<String, RawPrice>,
) -> f64 {
    if local {
        return 0.0;
    }
    match price(model, overrides) {
        Some((i, o)) => (tokens_in as f64 * i + tokens_out as f64 * o) / 1_000_000.0,
        None => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_and_overrides() {
        let none = BTreeMap::new();
        assert_eq!(price("gpt-4o-mini-2024-07-18", &none), Some((0.15, 0.60)));
        assert_eq!(price("gpt-4o-2024-08-06", &none), Some((2.50, 10.00)));
        assert_eq!(
            price("claude-sonnet-4-5-20250929", &none),
            Some((3.0, 15.0))
        );
        assert_eq!(price("my-model", &none), None);
        let mut o = BTreeMap::new();
        o.insert(
            "my-model".to_string(),
            RawPrice {
                input: 0.5,
                output: 1.5,
            },
        );
        assert_eq!(price("my-model", &o), Some((0.5, 1.5)));
        assert!((cost("gpt-4o", false, 1_000_000, 100_000, &none) - 3.5).abs() < 1e-9);
        assert_eq!(cost("gpt-4o", true, 1_000_000, 100_000, &none), 0.0);
    }
}
