//! Routing decisions (SPEC section 5), pure and synchronous: alias resolution, pinned
//! providers, the natural provider of a model, and the rest of the failover chain. Request-time
//! admission (breakers, concurrency) happens in the proxy; this module only plans.

pub mod context;

use crate::config::{Config, Target};
use crate::providers::Kind;
use serde::Serialize;
use std::sync::Arc;

/// Why a candidate was not tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    CircuitOpen,
    Overloaded,
    ModelUnsupported,
    ContextTooSmall,
    NotLocal,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::CircuitOpen => "circuit_open",
            SkipReason::Overloaded => "overloaded",
            SkipReason::ModelUnsupported => "model_unsupported",
            SkipReason::ContextTooSmall => "context_too_small",
            SkipReason::NotLocal => "not_local",
        }
    }
}

/// One provider to try, with the model name to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Index into `Config::providers`.
    pub provider: usize,
    pub model: String,
    /// Set when the plan already knows this candidate cannot serve the request.
    pub skip: Option<SkipReason>,
}

#[derive(Debug, Clone, Default)]
pub struct RouteOptions {
    /// `x-stockyard-local-only: true`
    pub local_only: bool,
    /// `x-stockyard-no-failover: true`
    pub no_failover: bool,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub requested: String,
    /// Set when the requested model was an alias.
    pub alias: Option<String>,
    pub local_only: bool,
    pub candidates: Vec<Candidate>,
    /// How many leading candidates are explicit `provider/model` pins (kept first by every
    /// strategy).
    pub pinned: usize,
}

impl Route {
    /// Candidates that will actually be attempted (no static skip).
    pub fn viable(&self) -> impl Iterator<Item = &Candidate> {
        self.candidates.iter().filter(|c| c.skip.is_none())
    }
}

/// What routing knows beyond the config: the models local providers reported (discovery),
/// indexed like `Config::providers` (missing or `None`: not known, the config's `models` apply).
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub discovered: Vec<Option<Arc<Vec<String>>>>,
}

impl Live {
    fn discovered(&self, p: usize) -> Option<&[String]> {
        self.discovered.get(p)?.as_deref().map(Vec::as_slice)
    }

    /// Whether provider `p` serves `model`: its discovered list when known, else its globs.
    pub fn serves(&self, cfg: &Config, p: usize, model: &str) -> bool {
        match self.discovered(p) {
            Some(list) => model_in(list, model),
            None => cfg.providers[p].serves(model),
        }
    }

    /// Whether provider `p` names `model` explicitly (globs or discovered list).
    fn lists(&self, cfg: &Config, p: usize, model: &str) -> bool {
        cfg.providers[p].lists(model) || self.discovered(p).is_some_and(|l| model_in(l, model))
    }
}

/// Whether a discovered model list holds `model`; as in Ollama, a name without a tag means
/// `:latest`.
pub fn model_in(list: &[String], model: &str) -> bool {
    list.iter().any(|m| {
        m == model
            || m.strip_suffix(":latest") == Some(model)
            || model.strip_suffix(":latest") == Some(m.as_str())
    })
}

/// Plans the provider chain for a requested model from the config alone.
pub fn plan(cfg: &Config, model: &str, opts: &RouteOptions) -> Route {
    plan_live(cfg, &Live::default(), model, opts)
}

/// Plans the provider chain for a requested model, with what the proxy learned at run time.
pub fn plan_live(cfg: &Config, live: &Live, model: &str, opts: &RouteOptions) -> Route {
    let mut local_only = opts.local_only;
    let (alias, targets): (Option<String>, Vec<Target>) =
        match cfg.aliases.get(model).filter(|_| cfg.aliases_enabled) {
            Some(a) => {
                local_only |= a.local_only;
                (Some(model.to_string()), a.targets.clone())
            }
            None => (None, vec![request_target(cfg, model)]),
        };

    let mut chain: Vec<Candidate> = Vec::new();
    let push = |chain: &mut Vec<Candidate>, c: Candidate| {
        if !chain
            .iter()
            .any(|x| x.provider == c.provider && x.model == c.model)
        {
            chain.push(c);
        }
    };
    let mut pinned = 0;
    let mut pins_only = true;
    for t in &targets {
        pins_only &= t.provider.is_some();
        let provider = t
            .provider
            .or_else(|| natural_provider_live(cfg, live, &t.model));
        if let Some(p) = provider {
            let model = if t.provider.is_some() {
                t.model.clone()
            } else {
                cfg.providers[p].map_model(&t.model).to_string()
            };
            // A discovered list is the provider's own word: a model it lacks is not tried.
            let skip = live
                .discovered(p)
                .filter(|l| !model_in(l, &model))
                .map(|_| SkipReason::ModelUnsupported);
            let before = chain.len();
            push(
                &mut chain,
                Candidate {
                    provider: p,
                    model,
                    skip,
                },
            );
            if pins_only && chain.len() > before {
                pinned = chain.len();
            }
        }
    }

    let base = targets.first().map(|t| t.model.as_str()).unwrap_or(model);
    if cfg.failover.enabled && !opts.no_failover {
        for &p in &cfg.failover.order {
            if chain.iter().any(|c| c.provider == p) {
                continue;
            }
            let pc = &cfg.providers[p];
            // A model_map entry for the base model wins, then one for the alias name.
            let mapped = pc
                .model_map
                .get(base)
                .or_else(|| alias.as_ref().and_then(|a| pc.model_map.get(a)))
                .map(String::as_str)
                .unwrap_or(base);
            let skip = (!live.serves(cfg, p, mapped)).then_some(SkipReason::ModelUnsupported);
            push(
                &mut chain,
                Candidate {
                    provider: p,
                    model: mapped.to_string(),
                    skip,
                },
            );
        }
    } else {
        chain.truncate(1);
    }
    if chain.is_empty() && !opts.no_failover {
        // Failover disabled and no natural provider: the first provider in order.
        if let Some(&p) = cfg.failover.order.first() {
            let pc = &cfg.providers[p];
            let m = pc.map_model(base).to_string();
            let skip = (!live.serves(cfg, p, &m)).then_some(SkipReason::ModelUnsupported);
            chain.push(Candidate {
                provider: p,
                model: m,
                skip,
            });
        }
    }
    if local_only {
        for c in &mut chain {
            if !cfg.providers[c.provider].local {
                c.skip = Some(SkipReason::NotLocal);
            }
        }
    }
    pinned = pinned.min(chain.len());
    Route {
        requested: model.to_string(),
        alias,
        local_only,
        candidates: chain,
        pinned,
    }
}

/// What `strategy: latency` knows of a provider now.
#[derive(Debug, Clone, Copy, Default)]
pub struct Health {
    /// EWMA of time to first byte in microseconds (0: no sample yet).
    pub ewma_us: u64,
    /// Consecutive retryable failures (the breaker's count).
    pub failures: u32,
    /// The circuit is open (the candidate will be skipped).
    pub open: bool,
}

/// `strategy: latency`: orders the non-pinned candidates by time to first byte, penalising
/// recent failures (each consecutive failure doubles the score; open circuits go last); a
/// provider with no sample yet scores 0 so it gets measured. A healthy local provider (circuit
/// closed, no recent failure) still goes first while its score is within `local_factor` of
/// the fastest.
pub fn order_by_latency(route: &mut Route, cfg: &Config, health: &[Health], local_factor: f64) {
    let score = |c: &Candidate| -> f64 {
        let h = health.get(c.provider).copied().unwrap_or_default();
        if c.skip.is_some() || h.open {
            return f64::INFINITY;
        }
        h.ewma_us as f64 * f64::from(1u32 << h.failures.min(16))
    };
    let rest = &mut route.candidates[route.pinned..];
    rest.sort_by(|a, b| score(a).total_cmp(&score(b)));
    let Some(best) = rest.first().map(score).filter(|s| s.is_finite()) else {
        return;
    };
    let local = rest.iter().position(|c| {
        let h = health.get(c.provider).copied().unwrap_or_default();
        cfg.providers[c.provider].local
            && c.skip.is_none()
            && !h.open
            && h.failures == 0
            && score(c) <= best.max(1.0) * local_factor
    });
    if let Some(i) = local {
        rest[..=i].rotate_right(1);
    }
}

/// A requested model: `P/model` pins configured provider `P`, anything else is a plain model.
fn request_target(cfg: &Config, model: &str) -> Target {
    if let Some((p, m)) = model.split_once('/') {
        if let Some(idx) = cfg.provider_index(p) {
            if !m.is_empty() && cfg.providers[idx].enabled {
                return Target {
                    provider: Some(idx),
                    model: m.to_string(),
                };
            }
        }
    }
    Target {
        provider: None,
        model: model.to_string(),
    }
}

/// Enabled providers in failover order, then any enabled ones not listed there.
fn preference(cfg: &Config) -> impl Iterator<Item = usize> + '_ {
    let listed = cfg.failover.order.iter().copied();
    let rest = crate::config::validate::priority_order(&cfg.providers)
        .into_iter()
        .filter(|p| !cfg.failover.order.contains(p));
    listed.chain(rest)
}

/// The provider that owns a model: a local provider that lists it, else the first provider of
/// the kind its name belongs to.
pub fn natural_provider(cfg: &Config, model: &str) -> Option<usize> {
    natural_provider_live(cfg, &Live::default(), model)
}

fn natural_provider_live(cfg: &Config, live: &Live, model: &str) -> Option<usize> {
    if let Some(p) = preference(cfg).find(|&p| cfg.providers[p].local && live.lists(cfg, p, model))
    {
        return Some(p);
    }
    let kind = Kind::natural_for(model)?;
    preference(cfg).find(|&p| cfg.providers[p].kind == kind)
}

/// Human-readable chain, used by `stockyard route` and `stockyard check`.
pub fn describe(
    cfg: &Config,
    route: &Route,
    extra_skip: &dyn Fn(usize) -> Option<String>,
) -> String {
    let mut out = String::new();
    let width = cfg
        .providers
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(8)
        .max(8);
    let mut n = 0;
    for c in &route.candidates {
        let p = &cfg.providers[c.provider];
        let place = if p.local { "local" } else { "cloud" };
        let reason = c
            .skip
            .map(|s| s.as_str().to_string())
            .or_else(|| extra_skip(c.provider));
        match reason {
            Some(r) => out.push_str(&format!(
                "   -  {:width$}  {}  ({place}) skipped: {r}\n",
                p.name, c.model
            )),
            None => {
                n += 1;
                out.push_str(&format!(
                    "  {n:>2}. {:width$}  {}  ({place})\n",
                    p.name, c.model
                ));
            }
        }
    }
    if route.candidates.is_empty() {
        out.push_str("   (no provider can serve this model)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::{load_str, Env};

    fn cfg(y: &str) -> Config {
        load_str(y, "test.yaml", &Env::from_pairs([("HOME", "/tmp")])).unwrap()
    }

    fn names(c: &Config, r: &Route) -> Vec<String> {
        r.candidates
            .iter()
            .map(|x| {
                let mut s = format!("{}:{}", c.providers[x.provider].name, x.model);
                if let Some(k) = x.skip {
                    s.push_str(&format!("!{}", k.as_str()));
                }
                s
            })
            .collect()
    }

    const BASE: &str = r#"
providers:
  - {name: ollama, priority: 1, models: ["llama3*", "qwen*"], model_map: {gpt-4o: "llama3:8b"}}
  - {name: openai, priority: 10, api_key: k}
  - {name: anthropic, priority: 20, api_key: k, model_map: {gpt-4o: claude-sonnet-4-5}}
  - {name: groq, priority: 30, api_key: k, models: ["llama*"]}
model_alias:
  aliases:
    fast: ollama/llama3
    smart: claude-sonnet-4-20250514
    default-model: [openai/gpt-4o, anthropic/claude-sonnet-4-5-20250929]
    private: {targets: [ollama/llama3], local_only: true}
"#;

    #[test]
    fn natural_provider_first_then_priority() {
        let c = cfg(BASE);
        let r = plan(&c, "gpt-4o", &RouteOptions::default());
        assert_eq!(
            names(&c, &r),
            [
                "openai:gpt-4o",
                "ollama:llama3:8b",
                "anthropic:claude-sonnet-4-5",
                "groq:gpt-4o!model_unsupported"
            ]
        );
    }

    #[test]
    fn local_model_goes_to_the_local_provider_that_lists_it() {
        let c = cfg(BASE);
        let r = plan(&c, "llama3:8b", &RouteOptions::default());
        assert_eq!(
            names(&c, &r),
            [
                "ollama:llama3:8b",
                "openai:llama3:8b",
                "anthropic:llama3:8b",
                "groq:llama3:8b"
            ]
        );
    }

    #[test]
    fn aliases() {
        let c = cfg(BASE);
        let r = plan(&c, "fast", &RouteOptions::default());
        assert_eq!(r.alias.as_deref(), Some("fast"));
        assert_eq!(names(&c, &r)[0], "ollama:llama3");
        let r = plan(&c, "smart", &RouteOptions::default());
        assert_eq!(names(&c, &r)[0], "anthropic:claude-sonnet-4-20250514");
        let r = plan(&c, "default-model", &RouteOptions::default());
        assert_eq!(
            names(&c, &r),
            [
                "openai:gpt-4o",
                "anthropic:claude-sonnet-4-5-20250929",
                "ollama:llama3:8b",
                "groq:gpt-4o!model_unsupported"
            ]
        );
    }

    #[test]
    fn local_only_marks_cloud_candidates() {
        let c = cfg(BASE);
        let r = plan(&c, "private", &RouteOptions::default());
        assert!(r.local_only);
        assert_eq!(r.viable().count(), 1);
        assert!(names(&c, &r)[1..].iter().all(|n| n.ends_with("!not_local")));
        let r = plan(
            &c,
            "gpt-4o",
            &RouteOptions {
                local_only: true,
                ..Default::default()
            },
        );
        assert_eq!(r.viable().map(|x| x.provider).collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn pinned_request_and_no_failover() {
        let c = cfg(BASE);
        let r = plan(&c, "groq/llama-3.1-8b", &RouteOptions::default());
        assert_eq!(names(&c, &r)[0], "groq:llama-3.1-8b");
        let r = plan(
            &c,
            "gpt-4o",
            &RouteOptions {
                no_failover: true,
                ..Default::default()
            },
        );
        assert_eq!(names(&c, &r), ["openai:gpt-4o"]);
        // A slash that is not a provider name is part of the model.
        let r = plan(&c, "meta-llama/Llama-3-70b", &RouteOptions::default());
        assert_eq!(
            names(&c, &r)[0],
            "ollama:meta-llama/Llama-3-70b!model_unsupported"
        );
    }

    #[test]
    fn explicit_failover_order() {
        let c = cfg(&format!(
            "{BASE}failover:\n  providers: [anthropic, openai]\n"
        ));
        let r = plan(&c, "llama3", &RouteOptions::default());
        assert_eq!(
            names(&c, &r),
            ["ollama:llama3", "anthropic:llama3", "openai:llama3"]
        );
        let r = plan(&c, "claude-x", &RouteOptions::default());
        assert_eq!(names(&c, &r), ["anthropic:claude-x", "openai:claude-x"]);
    }

    #[test]
    fn failover_disabled_keeps_first() {
        let c = cfg(&format!("{BASE}failover:\n  enabled: false\n"));
        let r = plan(&c, "gpt-4o", &RouteOptions::default());
        assert_eq!(names(&c, &r), ["openai:gpt-4o"]);
        let r = plan(&c, "unknown-model", &RouteOptions::default());
        assert_eq!(names(&c, &r), ["ollama:unknown-model!model_unsupported"]);
    }

    #[test]
    fn map_form_providers() {
        let c = cfg("providers:\n  openai: {api_key: k, priority: 2}\n  local:\n    kind: openai-compatible\n    base_url: http://127.0.0.1:8000/v1\n    priority: 1\n");
        assert!(c.providers[1].local);
        let r = plan(&c, "gpt-4o-mini", &RouteOptions::default());
        assert_eq!(names(&c, &r), ["openai:gpt-4o-mini", "local:gpt-4o-mini"]);
        let r = plan(&c, "mistral-7b", &RouteOptions::default());
        assert_eq!(names(&c, &r), ["local:mistral-7b", "openai:mistral-7b"]);
    }

    #[test]
    fn latency_orders_unpinned_candidates_and_keeps_a_near_local_first() {
        let c = cfg(r#"
providers:
  - {name: local, kind: openai-compatible, base_url: "http://127.0.0.1:9/v1", priority: 1}
  - {name: a, kind: openai-compatible, base_url: "https://a.example/v1", priority: 2}
  - {name: b, kind: openai-compatible, base_url: "https://b.example/v1", priority: 3}
model_alias:
  aliases:
    pinned: b/m
"#);
        let h = |ewma_us, failures, open| Health {
            ewma_us,
            failures,
            open,
        };
        let order = |model: &str, health: &[Health], factor: f64| {
            let mut r = plan(&c, model, &RouteOptions::default());
            order_by_latency(&mut r, &c, health, factor);
            names(&c, &r)
        };
        // b fastest; local 3x slower than b: beyond factor 2, within factor 4.
        let hs = [
            h(30_000, 0, false),
            h(50_000, 0, false),
            h(10_000, 0, false),
        ];
        assert_eq!(order("m", &hs, 2.0), ["b:m", "local:m", "a:m"]);
        assert_eq!(order("m", &hs, 4.0), ["local:m", "b:m", "a:m"]);
        // A local provider with a recent failure loses its place (even within the factor),
        // and each failure doubles a score.
        let hs = [
            h(12_000, 1, false),
            h(50_000, 0, false),
            h(10_000, 0, false),
        ];
        assert_eq!(order("m", &hs, 4.0), ["b:m", "local:m", "a:m"]);
        let hs = [
            h(12_000, 0, false),
            h(50_000, 0, false),
            h(10_000, 2, false),
        ];
        assert_eq!(order("m", &hs, 1.0), ["local:m", "b:m", "a:m"]);
        // Open circuits go last; unmeasured providers first (so they get measured).
        let hs = [h(0, 0, false), h(5_000, 0, true), h(10_000, 0, false)];
        assert_eq!(order("m", &hs, 1.0), ["local:m", "b:m", "a:m"]);
        // A pinned alias target stays first whatever its latency.
        let hs = [h(1_000, 0, false), h(2_000, 0, false), h(90_000, 0, false)];
        assert_eq!(order("pinned", &hs, 1.0)[0], "b:m");
    }
}
