//! The `stockyard` command line (SPEC section 2).

use crate::config::{self, defaults, Config, Env};
use crate::providers::FAMILIES;
use crate::routing::{self, RouteOptions};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "stockyard",
    version,
    about = "OpenAI-compatible LLM proxy with failover and circuit breakers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Config file (default: $STOCKYARD_CONFIG, else ./stockyard.yaml, else built-in)
    #[arg(short = 'c', long = "config", global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default)
    Serve,
    /// Validate the config and print the provider chain of every alias and model family
    Check,
    /// Print the chain a request for MODEL would take, with skip reasons
    Route {
        /// Model or alias, e.g. gpt-4o, fast, ollama/llama3
        model: String,
        /// Plan as if the request were marked local-only
        #[arg(long)]
        local_only: bool,
    },
    /// Write a commented starter stockyard.yaml (refuses to overwrite)
    Init,
}

/// Loads the config or prints `file:line:col: message` and returns exit code 1.
pub fn load_or_report(path: Option<&std::path::Path>) -> Result<Config, i32> {
    config::load(path, &Env::process()).map_err(|e| {
        eprintln!("{e}");
        1
    })
}

pub fn check(path: Option<&std::path::Path>) -> i32 {
    let cfg = match load_or_report(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    print!("{}", describe_config(&cfg));
    0
}

/// The report `stockyard check` prints.
pub fn describe_config(cfg: &Config) -> String {
    let mut out = format!("{}: ok\n", cfg.source);
    out.push_str(&format!(
        "listen {}  data_dir {}  api_keys {}  admin_key {}\n",
        cfg.listen,
        cfg.data_dir.display(),
        cfg.api_keys.len(),
        if cfg.admin_key.is_some() {
            "set"
        } else {
            "unset (admin API loopback-only)"
        }
    ));
    out.push_str(&format!(
        "\nproviders ({}), failover order:\n",
        cfg.providers.len()
    ));
    let uwidth = cfg
        .providers
        .iter()
        .map(|p| p.base_url.len())
        .max()
        .unwrap_or(20);
    let width = cfg
        .providers
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(8)
        .max(8);
    let mut listed: Vec<usize> = cfg.failover.order.clone();
    listed.extend((0..cfg.providers.len()).filter(|i| !cfg.failover.order.contains(i)));
    for (n, &i) in listed.iter().enumerate() {
        let p = &cfg.providers[i];
        let mut flags = vec![if p.local { "local" } else { "cloud" }.to_string()];
        if !p.enabled {
            flags.push("disabled".into());
        } else if !cfg.failover.order.contains(&i) {
            flags.push("not in failover.providers".into());
        }
        if p.api_key.is_none() && !p.local {
            flags.push("no api_key".into());
        }
        if !p.models.is_empty() {
            flags.push(format!(
                "models [{}]",
                p.models
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        out.push_str(&format!(
            "  {:>2}. {:width$}  {:17}  priority {:<4} {:uwidth$}  {}\n",
            n + 1,
            p.name,
            p.kind.name(),
            p.priority,
            p.base_url,
            flags.join(", ")
        ));
    }
    let none = |_: usize| None;
    if cfg.aliases_enabled && !cfg.aliases.is_empty() {
        out.push_str("\naliases:\n");
        for name in cfg.aliases.keys() {
            let route = routing::plan(cfg, name, &RouteOptions::default());
            let lo = if route.local_only {
                " (local only)"
            } else {
                ""
            };
            out.push_str(&format!("  {name}{lo}:\n"));
            out.push_str(&routing::describe(cfg, &route, &none));
        }
    }
    out.push_str("\nmodel families (natural provider first):\n");
    let mut unowned = Vec::new();
    for (family, example) in FAMILIES {
        if routing::natural_provider(cfg, example).is_none() {
            unowned.push(*family);
            continue;
        }
        let route = routing::plan(cfg, example, &RouteOptions::default());
        out.push_str(&format!("  {family} (e.g. {example}):\n"));
        out.push_str(&routing::describe(cfg, &route, &none));
    }
    let local: Vec<&str> = cfg
        .providers
        .iter()
        .filter(|p| p.local && p.enabled)
        .map(|p| p.name.as_str())
        .collect();
    if !unowned.is_empty() {
        out.push_str(&format!(
            "  no provider of the owning kind for: {} (these go down the priority chain)\n",
            unowned.join(", ")
        ));
    }
    if !local.is_empty() {
        out.push_str(&format!(
            "  models a local provider lists go to it first: {}\n",
            local.join(", ")
        ));
    }
    out
}

pub fn route(path: Option<&std::path::Path>, model: &str, local_only: bool) -> i32 {
    let cfg = match load_or_report(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let opts = RouteOptions {
        local_only,
        no_failover: false,
    };
    let route = routing::plan(&cfg, model, &opts);
    let mut head = format!("route for `{model}`");
    if let Some(a) = &cfg.aliases.get(model).filter(|_| cfg.aliases_enabled) {
        let t: Vec<String> = a
            .targets
            .iter()
            .map(|t| match t.provider {
                Some(p) => format!("{}/{}", cfg.providers[p].name, t.model),
                None => t.model.clone(),
            })
            .collect();
        head.push_str(&format!(" (alias of {})", t.join(", ")));
    }
    if route.local_only {
        head.push_str(" [local only]");
    }
    println!("{head}:");
    print!("{}", routing::describe(&cfg, &route, &|_| None));
    if route.viable().next().is_none() {
        println!("no provider would be tried: the request would fail");
    }
    0
}

pub fn init(path: Option<&std::path::Path>) -> i32 {
    let path = path
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("stockyard.yaml"));
    if path.exists() {
        eprintln!("{}: already exists; not overwriting", path.display());
        return 1;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, defaults::STARTER.as_bytes()))
    {
        Ok(()) => {
            println!(
                "wrote {}; check it with `stockyard check -c {}`",
                path.display(),
                path.display()
            );
            0
        }
        Err(e) => {
            eprintln!("{}: cannot write: {e}", path.display());
            1
        }
    }
}
