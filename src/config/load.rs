//! Finding and loading the config file: lookup order, `${VAR}` expansion, YAML parsing with
//! positions, and precise `file:line:col: message` errors.

use super::schema::RawConfig;
use super::source::{expand_env, second_document, Pos, SourceMap};
use super::{defaults, validate, Config};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A config problem with its location, printed as `file:line:col: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub pos: Option<Pos>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some(p) => write!(f, "{}:{}:{}: {}", self.file, p.line, p.col, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// The process environment, or a fixed map in tests.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: Option<HashMap<String, String>>,
}

impl Env {
    pub fn process() -> Env {
        Env { vars: None }
    }

    pub fn from_pairs<I: IntoIterator<Item = (K, V)>, K: Into<String>, V: Into<String>>(
        pairs: I,
    ) -> Env {
        Env {
            vars: Some(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
        }
    }

    /// The value of a variable; empty values count as unset.
    pub fn get(&self, name: &str) -> Option<String> {
        let v = match &self.vars {
            Some(m) => m.get(name).cloned(),
            None => std::env::var(name).ok(),
        };
        v.filter(|s| !s.is_empty())
    }
}

/// Loads the config per the SPEC lookup order: `-c FILE`, `$STOCKYARD_CONFIG`, `./stockyard.yaml`,
/// else the built-in default. Environment overrides (`PORT`, `STOCKYARD_DATA_DIR`,
/// `STOCKYARD_ADMIN_KEY`) apply in every case.
pub fn load(explicit: Option<&Path>, env: &Env) -> Result<Config, ConfigError> {
    match config_path(explicit, env) {
        Some(path) => load_file(&path, env),
        None => defaults::builtin(env),
    }
}

/// Which file [`load`] reads, if any.
pub fn config_path(explicit: Option<&Path>, env: &Env) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = env.get("STOCKYARD_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let local = PathBuf::from("stockyard.yaml");
    local.exists().then_some(local)
}

pub fn load_file(path: &Path, env: &Env) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        pos: None,
        message: format!("cannot read config file: {e}"),
    })?;
    load_str(&text, &file, env)
}

/// Parses and validates config text; `file` names it in errors.
pub fn load_str(text: &str, file: &str, env: &Env) -> Result<Config, ConfigError> {
    let expanded = expand_env(text, &|name| env.get(name)).map_err(|e| ConfigError {
        file: file.to_string(),
        pos: Some(e.pos),
        message: e.message,
    })?;
    let raw: RawConfig = if expanded.trim().is_empty() {
        RawConfig::default()
    } else {
        serde_yaml::from_str::<Option<RawConfig>>(&expanded)
            .map_err(|e| yaml_error(file, &expanded, &e))?
            .unwrap_or_default()
    };
    let map = SourceMap::build(&expanded);
    validate::validate(raw, &map, file, env)
}

fn yaml_error(file: &str, text: &str, e: &serde_yaml::Error) -> ConfigError {
    // serde_yaml has no location for some whole-file errors (several documents, the alias
    // expansion limit): point at the second document, else at the start of the file.
    let pos = e
        .location()
        .map(|l| Pos {
            line: l.line(),
            col: l.column(),
        })
        .or_else(|| second_document(text))
        .unwrap_or(Pos { line: 1, col: 1 });
    let mut msg = e.to_string();
    if let Some(i) = msg.find(" at line ") {
        msg.truncate(i);
    }
    ConfigError {
        file: file.to_string(),
        pos: Some(pos),
        message: improve_message(&msg),
    }
}

/// Rewrites serde's "unknown field `x`, expected one of ..." into "unknown key `x` (did you mean
/// `y`?)", keeping any path prefix serde put in front.
fn improve_message(msg: &str) -> String {
    let Some(start) = msg.find("unknown field `") else {
        return msg.to_string();
    };
    let prefix = &msg[..start];
    let rest = &msg[start + "unknown field `".len()..];
    let Some(end) = rest.find('`') else {
        return msg.to_string();
    };
    let unknown = &rest[..end];
    let expected: Vec<&str> = rest[end..]
        .split('`')
        .skip(2)
        .step_by(2)
        .filter(|s| !s.is_empty())
        .collect();
    let mut out = format!("{prefix}unknown key `{unknown}`");
    match did_you_mean(unknown, expected.iter().copied()) {
        Some(s) => out.push_str(&format!(" (did you mean `{s}`?)")),
        None if !expected.is_empty() => {
            out.push_str(&format!("; expected one of: {}", expected.join(", ")))
        }
        None => {}
    }
    out
}

/// The closest candidate to `word`, if it is close enough to be a plausible typo.
pub fn did_you_mean<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_documents_error_points_at_the_second() {
        // Found by the `config` fuzz target: this error used to have no position.
        let env = Env::from_pairs(Vec::<(String, String)>::new());
        let e = load_str("log_level: info\n---\nlog_level: debug\n", "c.yaml", &env)
            .expect_err("two documents");
        assert_eq!(e.pos, Some(Pos { line: 2, col: 1 }), "{e}");
        assert!(e.to_string().starts_with("c.yaml:2:1: "), "{e}");
        let e = load_str("a: [1\n", "c.yaml", &env).expect_err("syntax error");
        assert!(e.pos.is_some(), "{e}");
    }

    #[test]
    fn semantic_error_has_a_position_when_the_source_map_gives_up() {
        // Found by the `config` fuzz target: yaml-rust2 (source map) rejects this file early,
        // serde_yaml accepts it, and the "unknown provider" error used to have no position.
        let text = include_str!(
            "../../fuzz/regressions/config/crash-b7b79fbaf7540fa0a0eee59cad8b39e3189aa392"
        );
        let env = Env::from_pairs(Vec::<(String, String)>::new());
        let e = load_str(text, "c.yaml", &env).expect_err("unknown provider");
        assert!(e.message.contains("unknown provider"), "{e}");
        assert!(e.pos.is_some(), "{e}");
    }

    #[test]
    fn did_you_mean_rewrites_serde_message() {
        let m = improve_message(
            "providers[0]: unknown field `priorty`, expected one of `name`, `kind`, `priority`",
        );
        assert_eq!(
            m,
            "providers[0]: unknown key `priorty` (did you mean `priority`?)"
        );
        let m = improve_message("unknown field `zzz`, expected `a` or `b`");
        assert_eq!(m, "unknown key `zzz`; expected one of: a, b");
    }
}
