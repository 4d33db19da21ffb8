//! Source handling for config files: `${VAR}` expansion that keeps line numbers, and a map from
//! YAML paths (`providers.2.name`) to their line and column so that semantic errors (duplicate
//! names, unknown providers) can point at the exact place in the file.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// An error found while expanding `${VAR}` references.
#[derive(Debug, PartialEq, Eq)]
pub struct ExpandError {
    pub pos: Pos,
    pub message: String,
}

/// Expands `${VAR}` and `${VAR:-default}` in the text of a YAML file, outside comments.
/// Expansion never adds or removes newlines, so line numbers stay valid.
pub fn expand_env(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(text.len());
    for (line_idx, line) in text.split_inclusive('\n').enumerate() {
        let code_end = comment_start(line).unwrap_or(line.len());
        let (code, comment) = line.split_at(code_end);
        let mut rest = code;
        let mut col = 0usize;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            col += rest[..start].chars().count();
            let pos = Pos {
                line: line_idx + 1,
                col: col + 1,
            };
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                return Err(ExpandError {
                    pos,
                    message: "unterminated `${` (expected `${VAR}` or `${VAR:-default}`)".into(),
                });
            };
            let inner = &after[..end];
            let (name, default) = match inner.find(":-") {
                Some(i) => (&inner[..i], Some(&inner[i + 2..])),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ExpandError {
                    pos,
                    message: format!("invalid variable reference `${{{inner}}}`"),
                });
            }
            match (lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(ExpandError {
                        pos,
                        message: format!(
                            "environment variable `{name}` is not set (use `${{{name}:-}}` to make it optional)"
                        ),
                    })
                }
            }
            col += inner.chars().count() + 3;
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out.push_str(comment);
    }
    Ok(out)
}

/// Byte offset where a `#` comment starts on this line, ignoring `#` inside quotes or words.
fn comment_start(line: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '#' && prev_space => return Some(i),
            None if (c == '"' || c == '\'') && prev_space_or_indicator(line, i) => quote = Some(c),
            None => {}
        }
        prev_space = c.is_whitespace();
    }
    None
}

fn prev_space_or_indicator(line: &str, i: usize) -> bool {
    line[..i]
        .chars()
        .rev()
        .find(|c| *c != ' ')
        .is_none_or(|c| matches!(c, ':' | '-' | '[' | '{' | ','))
}

/// Where each YAML node sits in the file, keyed by its dotted path (`providers.0.name`,
/// `model_alias.aliases.fast`). `keys` holds the position of a mapping key, `values` that of the
/// value.
#[derive(Debug, Default)]
pub struct SourceMap {
    values: HashMap<String, Pos>,
    keys: HashMap<String, Pos>,
}

impl SourceMap {
    /// Builds the map; on YAML syntax errors returns an empty map (the typed parse reports them).
    pub fn build(text: &str) -> SourceMap {
        let mut b = Builder {
            map: SourceMap::default(),
            stack: Vec::new(),
        };
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut b, false);
        b.map
    }

    /// Position of the value at `path`, falling back to its key, then to its parents.
    pub fn value(&self, path: &str) -> Option<Pos> {
        self.values
            .get(path)
            .or_else(|| self.keys.get(path))
            .copied()
            .or_else(|| path.rsplit_once('.').and_then(|(p, _)| self.value(p)))
    }

    /// Position of the key at `path` (for "unknown key"/"duplicate" errors), else its value.
    pub fn key(&self, path: &str) -> Option<Pos> {
        self.keys.get(path).copied().or_else(|| self.value(path))
    }
}

enum Frame {
    Map { key: Option<String>, path: String },
    Seq { index: usize, path: String },
}

struct Builder {
    map: SourceMap,
    stack: Vec<Frame>,
}

fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

/// Where the second YAML document of `text` starts, if it has more than one.
pub fn second_document(text: &str) -> Option<Pos> {
    struct Docs(Vec<Pos>);
    impl MarkedEventReceiver for Docs {
        fn on_event(&mut self, ev: Event, mark: Marker) {
            if matches!(ev, Event::DocumentStart) {
                self.0.push(pos(&mark));
            }
        }
    }
    let mut docs = Docs(Vec::new());
    let mut parser = Parser::new_from_str(text);
    let _ = parser.load(&mut docs, true);
    docs.0.get(1).copied()
}

fn pos(m: &Marker) -> Pos {
    // yaml-rust2 markers: line is 1-based, col is 0-based.
    Pos {
        line: m.line(),
        col: m.col() + 1,
    }
}

impl Builder {
    /// Path of the node about to be read as a value in the current container, or None when the
    /// current container expects a mapping key.
    fn value_path(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Map { key: Some(k), path }) => Some(join(path, k)),
            Some(Frame::Map { key: None, .. }) => None,
            Some(Frame::Seq { index, path }) => Some(join(path, &index.to_string())),
        }
    }

    fn advance(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => match self.value_path() {
                Some(p) => {
                    self.map.values.insert(p, pos(&mark));
                    self.advance();
                }
                None => {
                    if let Some(Frame::Map { key, path }) = self.stack.last_mut() {
                        self.map.keys.insert(join(path, &value), pos(&mark));
                        *key = Some(value);
                    }
                }
            },
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let path = self.value_path().unwrap_or_default();
                self.map.values.insert(path.clone(), pos(&mark));
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { key: None, path }
                } else {
                    Frame::Seq { index: 0, path }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.advance();
            }
            Event::Alias(_) if self.value_path().is_some() => self.advance(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("sk-123".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_and_keeps_lines() {
        let t = "a: ${KEY}\nb: ${NOPE:-fallback} # ${MISSING} in comment\nc: '#x ${KEY}'\n";
        let out = expand_env(t, &env).unwrap();
        assert_eq!(
            out,
            "a: sk-123\nb: fallback # ${MISSING} in comment\nc: '#x sk-123'\n"
        );
    }

    #[test]
    fn missing_var_has_position() {
        let e = expand_env("x: 1\n  key: ${MISSING}\n", &env).unwrap_err();
        assert_eq!(e.pos, Pos { line: 2, col: 8 });
        assert!(e.message.contains("MISSING"));
        let e = expand_env("a: ${KEY} ${NOPE}", &env).unwrap_err();
        assert_eq!(e.pos, Pos { line: 1, col: 11 });
    }

    #[test]
    fn source_map_paths() {
        let t = "listen: x\nproviders:\n  - name: a\n    kind: openai\n  - name: b\nmodel_alias:\n  aliases:\n    fast: [a/x, b/y]\n";
        let m = SourceMap::build(t);
        assert_eq!(m.value("providers.1.name"), Some(Pos { line: 5, col: 11 }));
        assert_eq!(m.key("providers.0.kind"), Some(Pos { line: 4, col: 5 }));
        assert_eq!(
            m.value("model_alias.aliases.fast.1"),
            Some(Pos { line: 8, col: 17 })
        );
        // Unknown paths fall back to the nearest parent.
        assert_eq!(m.value("providers.1.zzz").map(|p| p.line), Some(5));
    }
}
