//! The built-in default configuration (no file at all) and the starter file `stockyard init`
//! writes.

use super::load::{load_str, ConfigError, Env};
use super::Config;
use crate::providers::{Kind, KINDS};

/// Builds the built-in default: Ollama (priority 1) and LM Studio (priority 2) locally, then
/// every cloud provider whose key is in the environment. It is rendered as YAML and loaded
/// through the same path as a file, so it obeys exactly the same rules.
pub fn builtin(env: &Env) -> Result<Config, ConfigError> {
    load_str(&builtin_yaml(env), "<built-in>", env)
}

/// The YAML text of the built-in default for this environment.
pub fn builtin_yaml(env: &Env) -> String {
    let mut y = String::from("providers:\n");
    let ollama = env
        .get("OLLAMA_HOST")
        .map(|h| ollama_base_from_host(&h))
        .unwrap_or_else(|| Kind::Ollama.info().base_url.to_string());
    y.push_str(&format!(
        "  - name: ollama\n    base_url: {}\n    priority: 1\n",
        yaml_str(&ollama)
    ));
    y.push_str("  - name: lmstudio\n    priority: 2\n");
    let mut priority = 10;
    for k in KINDS {
        let Some(var) = k.key_env else { continue };
        if env.get(var).is_none() {
            continue;
        }
        if k.kind == Kind::Azure {
            let Some(endpoint) = env.get("AZURE_OPENAI_ENDPOINT") else {
                continue;
            };
            let base = format!("{}/openai/v1", endpoint.trim_end_matches('/'));
            y.push_str(&format!(
                "  - name: azure\n    base_url: {}\n    api_key: ${{{var}}}\n    priority: {priority}\n",
                yaml_str(&base)
            ));
        } else {
            y.push_str(&format!(
                "  - name: {}\n    api_key: ${{{var}}}\n    priority: {priority}\n",
                k.name
            ));
        }
        priority += 1;
    }
    y
}

/// `OLLAMA_HOST` as Ollama reads it: `host`, `host:port`, `http://host:port`; `0.0.0.0` means
/// this machine.
pub fn ollama_base_from_host(h: &str) -> String {
    let h = h.trim().trim_end_matches('/');
    let (scheme, rest) = match h.split_once("://") {
        Some((s, r)) => (s, r),
        None => ("http", h),
    };
    let rest = rest.replace("0.0.0.0", "127.0.0.1");
    let has_port = rest
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
    let hostport = if has_port {
        rest
    } else {
        format!("{rest}:11434")
    };
    format!("{scheme}://{hostport}/v1")
}

fn yaml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The commented starter file written by `stockyard init`. It passes `stockyard check` with no
/// environment variables set.
pub const STARTER: &str = r#"# Stockyard configuration. Apps point their OpenAI base_url at http://localhost:4200/v1.
# Validate with `stockyard check`; see which provider a model goes to with `stockyard route MODEL`.

listen: 127.0.0.1:4200            # or `port: 4200`; non-loopback needs api_keys (or allow_unauthenticated)
data_dir: ~/.stockyard            # traces live in <data_dir>/stockyard.db
log_level: info
shutdown_grace: 30s               # on SIGTERM/SIGINT, how long in-flight requests and streams may finish

# Optional proxy keys that clients send as `Authorization: Bearer KEY`.
api_keys: [${STOCKYARD_API_KEY:-}]

# Providers are tried local first (lower priority first). Keys come from the environment;
# a provider whose key is empty simply fails and is skipped.
providers:
  - name: ollama
    base_url: ${OLLAMA_BASE_URL:-http://localhost:11434/v1}
    priority: 1
    timeouts: {connect: 2s, first_byte: 60s}
  - name: lmstudio
    base_url: http://localhost:1234/v1
    priority: 2
  - name: openai
    api_key: ${OPENAI_API_KEY:-}
    priority: 10
    model_map: {llama3: gpt-4o-mini}        # what to ask OpenAI for when a llama3 request falls over
  - name: anthropic
    api_key: ${ANTHROPIC_API_KEY:-}
    priority: 20

model_alias:
  enabled: true
  aliases:
    fast: ollama/llama3                   # pin a provider: provider/model
    smart: [openai/gpt-4o, anthropic/claude-sonnet-4-5-20250929]   # an ordered chain
    private:
      targets: [ollama/llama3]
      local_only: true                    # never leaves this machine

failover:
  enabled: true
  strategy: priority
  retry_on: [408, 409, 429, 500, 502, 503, 504, 529, timeout, connect, stream_error]
  circuit_breaker:
    failure_threshold: 3
    recovery_timeout: 30s

traces:
  enabled: true
  store_bodies: false
  retention_days: 30
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ollama_host_forms() {
        assert_eq!(
            ollama_base_from_host("0.0.0.0"),
            "http://127.0.0.1:11434/v1"
        );
        assert_eq!(
            ollama_base_from_host("http://172.20.0.1:11434"),
            "http://172.20.0.1:11434/v1"
        );
        assert_eq!(
            ollama_base_from_host("myhost:9999"),
            "http://myhost:9999/v1"
        );
    }

    #[test]
    fn builtin_has_locals_and_keyed_clouds() {
        let env = Env::from_pairs([
            ("OPENAI_API_KEY", "sk-test"),
            ("GROQ_API_KEY", "gsk_test"),
            ("AZURE_OPENAI_API_KEY", "az"),
            ("AZURE_OPENAI_ENDPOINT", "https://r.openai.azure.com/"),
            ("HOME", "/home/u"),
        ]);
        let c = builtin(&env).unwrap();
        let names: Vec<&str> = c.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ollama", "lmstudio", "openai", "groq", "azure"]);
        assert!(c.providers[0].local && c.providers[1].local && !c.providers[2].local);
        assert_eq!(
            c.providers[4].base_url,
            "https://r.openai.azure.com/openai/v1"
        );
        assert_eq!(c.providers[2].api_key.as_ref().unwrap().expose(), "sk-test");
        assert_eq!(c.listen.to_string(), "127.0.0.1:4200");
        assert_eq!(c.data_dir.to_str().unwrap(), "/home/u/.stockyard");
    }

    #[test]
    fn starter_passes_with_empty_env() {
        let c = load_str(
            STARTER,
            "stockyard.yaml",
            &Env::from_pairs::<[(&str, &str); 0], &str, &str>([]),
        )
        .unwrap();
        assert!(c.api_keys.is_empty());
        assert_eq!(c.providers.len(), 4);
        assert!(c.aliases["private"].local_only);
    }
}
