//! Provider kinds as data: each kind's default base URL, auth style, key variable, wire format and
//! health-check path. Adding an OpenAI-compatible vendor is one row in [`KINDS`], not new code.

pub mod anthropic;
pub mod openai;
pub mod transport;

use serde::Serialize;

/// How a provider expects its API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer KEY`
    Bearer,
    /// `api-key: KEY` (Azure OpenAI)
    ApiKeyHeader,
    /// `x-api-key: KEY` (Anthropic)
    XApiKey,
}

/// The request/response format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// OpenAI Chat Completions; bodies pass through untouched except for `model`.
    OpenAi,
    /// Anthropic Messages; requests and responses are translated ([`anthropic`]).
    Anthropic,
}

/// Static facts about a provider kind.
#[derive(Debug)]
pub struct KindInfo {
    pub kind: Kind,
    pub name: &'static str,
    pub base_url: &'static str,
    pub auth: Auth,
    pub wire: Wire,
    /// Environment variable that holds the key in the built-in default config.
    pub key_env: Option<&'static str>,
    /// Local kinds are inferred `local: true`.
    pub local: bool,
    /// Path, relative to the host root (not the API root), for health checks and discovery,
    /// when it differs from `<base_url>/models`.
    pub native_models_path: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Openai,
    Anthropic,
    Google,
    Ollama,
    Lmstudio,
    Azure,
    Groq,
    Mistral,
    Together,
    Deepseek,
    Fireworks,
    Perplexity,
    Openrouter,
    Xai,
    Cerebras,
    Cohere,
    OpenaiCompatible,
}

const fn row(
    kind: Kind,
    name: &'static str,
    base_url: &'static str,
    key_env: Option<&'static str>,
) -> KindInfo {
    KindInfo {
        kind,
        name,
        base_url,
        auth: Auth::Bearer,
        wire: Wire::OpenAi,
        key_env,
        local: false,
        native_models_path: None,
    }
}

/// Every known kind. The order is the order cloud providers are added to the built-in default.
pub static KINDS: &[KindInfo] = &[
    KindInfo {
        local: true,
        native_models_path: Some("/api/tags"),
        ..row(Kind::Ollama, "ollama", "http://localhost:11434/v1", None)
    },
    KindInfo {
        local: true,
        ..row(Kind::Lmstudio, "lmstudio", "http://localhost:1234/v1", None)
    },
    row(
        Kind::Openai,
        "openai",
        "https://api.openai.com/v1",
        Some("OPENAI_API_KEY"),
    ),
    // Native Messages API: `x-api-key` + `anthropic-version`, bodies translated.
    KindInfo {
        auth: Auth::XApiKey,
        wire: Wire::Anthropic,
        ..row(
            Kind::Anthropic,
            "anthropic",
            "https://api.anthropic.com/v1",
            Some("ANTHROPIC_API_KEY"),
        )
    },
    row(
        Kind::Google,
        "google",
        "https://generativelanguage.googleapis.com/v1beta/openai",
        Some("GEMINI_API_KEY"),
    ),
    row(
        Kind::Groq,
        "groq",
        "https://api.groq.com/openai/v1",
        Some("GROQ_API_KEY"),
    ),
    row(
        Kind::Mistral,
        "mistral",
        "https://api.mistral.ai/v1",
        Some("MISTRAL_API_KEY"),
    ),
    row(
        Kind::Together,
        "together",
        "https://api.together.xyz/v1",
        Some("TOGETHER_API_KEY"),
    ),
    row(
        Kind::Deepseek,
        "deepseek",
        "https://api.deepseek.com/v1",
        Some("DEEPSEEK_API_KEY"),
    ),
    row(
        Kind::Fireworks,
        "fireworks",
        "https://api.fireworks.ai/inference/v1",
        Some("FIREWORKS_API_KEY"),
    ),
    row(
        Kind::Perplexity,
        "perplexity",
        "https://api.perplexity.ai",
        Some("PERPLEXITY_API_KEY"),
    ),
    row(
        Kind::Openrouter,
        "openrouter",
        "https://openrouter.ai/api/v1",
        Some("OPENROUTER_API_KEY"),
    ),
    row(Kind::Xai, "xai", "https://api.x.ai/v1", Some("XAI_API_KEY")),
    row(
        Kind::Cerebras,
        "cerebras",
        "https://api.cerebras.ai/v1",
        Some("CEREBRAS_API_KEY"),
    ),
    row(
        Kind::Cohere,
        "cohere",
        "https://api.cohere.ai/compatibility/v1",
        Some("COHERE_API_KEY"),
    ),
    KindInfo {
        auth: Auth::ApiKeyHeader,
        // The resource host comes from AZURE_OPENAI_ENDPOINT; see config::defaults.
        ..row(Kind::Azure, "azure", "", Some("AZURE_OPENAI_API_KEY"))
    },
    row(Kind::OpenaiCompatible, "openai-compatible", "", None),
];

impl Kind {
    pub fn info(self) -> &'static KindInfo {
        // KINDS holds one row per variant; the fallback is unreachable but keeps this total.
        KINDS
            .iter()
            .find(|k| k.kind == self)
            .unwrap_or(&KINDS[KINDS.len() - 1])
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    pub fn parse(s: &str) -> Option<Kind> {
        KINDS.iter().find(|k| k.name == s).map(|k| k.kind)
    }

    pub fn all_names() -> impl Iterator<Item = &'static str> {
        KINDS.iter().map(|k| k.name)
    }

    /// The kind that owns a model by name (SPEC section 5, rule 3).
    pub fn natural_for(model: &str) -> Option<Kind> {
        let m = model.to_ascii_lowercase();
        let starts = |p: &str| m.starts_with(p);
        Some(
            if ["gpt-", "o1", "o3", "o4", "chatgpt-", "text-embedding-"]
                .iter()
                .any(|p| starts(p))
            {
                Kind::Openai
            } else if starts("claude-") {
                Kind::Anthropic
            } else if starts("gemini-") {
                Kind::Google
            } else if starts("grok-") {
                Kind::Xai
            } else if ["mistral-", "codestral", "pixtral", "ministral"]
                .iter()
                .any(|p| starts(p))
            {
                Kind::Mistral
            } else if starts("deepseek") {
                Kind::Deepseek
            } else if starts("command-") {
                Kind::Cohere
            } else if starts("sonar") {
                Kind::Perplexity
            } else {
                return None;
            },
        )
    }

    /// The kind a bring-your-own key belongs to, by its prefix (SPEC section 5).
    pub fn for_key_shape(key: &str) -> Option<Kind> {
        KEY_SHAPES
            .iter()
            .find(|(p, _)| key.starts_with(p) && key.len() > p.len())
            .map(|(_, k)| *k)
    }
}

/// Key prefixes of bring-your-own keys, most specific first.
const KEY_SHAPES: &[(&str, Kind)] = &[
    ("sk-ant-", Kind::Anthropic),
    ("gsk_", Kind::Groq),
    ("xai-", Kind::Xai),
    ("pplx-", Kind::Perplexity),
    ("fw_", Kind::Fireworks),
    ("sk-", Kind::Openai),
];

impl Kind {
    /// Kinds that accept a bring-your-own key.
    pub fn for_key_shape_kinds() -> Vec<Kind> {
        KEY_SHAPES.iter().map(|(_, k)| *k).collect()
    }
}

/// Family patterns used by `stockyard check` to show the chain of each natural-provider family.
pub static FAMILIES: &[(&str, &str)] = &[
    ("gpt-*", "gpt-4o"),
    ("o1*/o3*/o4*", "o3-mini"),
    ("claude-*", "claude-sonnet-4-5"),
    ("gemini-*", "gemini-2.5-flash"),
    ("grok-*", "grok-3"),
    ("mistral-*", "mistral-large-latest"),
    ("deepseek*", "deepseek-chat"),
    ("command-*", "command-r-plus"),
    ("sonar*", "sonar-pro"),
    ("text-embedding-*", "text-embedding-3-small"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_row() {
        for k in KINDS {
            assert_eq!(k.kind.info().name, k.name);
            assert_eq!(Kind::parse(k.name), Some(k.kind));
        }
        assert_eq!(KINDS.len(), 17);
    }

    #[test]
    fn natural_rules() {
        assert_eq!(Kind::natural_for("gpt-4o"), Some(Kind::Openai));
        assert_eq!(Kind::natural_for("o3-mini"), Some(Kind::Openai));
        assert_eq!(
            Kind::natural_for("text-embedding-3-small"),
            Some(Kind::Openai)
        );
        assert_eq!(Kind::natural_for("claude-sonnet-4"), Some(Kind::Anthropic));
        assert_eq!(Kind::natural_for("gemini-2.0-flash"), Some(Kind::Google));
        assert_eq!(Kind::natural_for("grok-3"), Some(Kind::Xai));
        assert_eq!(Kind::natural_for("codestral-latest"), Some(Kind::Mistral));
        assert_eq!(Kind::natural_for("deepseek-chat"), Some(Kind::Deepseek));
        assert_eq!(Kind::natural_for("command-r"), Some(Kind::Cohere));
        assert_eq!(Kind::natural_for("sonar-pro"), Some(Kind::Perplexity));
        assert_eq!(Kind::natural_for("llama3:8b"), None);
    }

    #[test]
    fn key_shapes() {
        assert_eq!(Kind::for_key_shape("sk-ant-abc"), Some(Kind::Anthropic));
        assert_eq!(Kind::for_key_shape("sk-proj-abc"), Some(Kind::Openai));
        assert_eq!(Kind::for_key_shape("gsk_abc"), Some(Kind::Groq));
        assert_eq!(Kind::for_key_shape("xai-abc"), Some(Kind::Xai));
        assert_eq!(Kind::for_key_shape("pplx-abc"), Some(Kind::Perplexity));
        assert_eq!(Kind::for_key_shape("fw_abc"), Some(Kind::Fireworks));
        assert_eq!(Kind::for_key_shape("ollama"), None);
        assert_eq!(Kind::for_key_shape("sk-"), None);
    }
}
