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
    /// Print recent traces from the database
    Traces {
        /// How many (newest first)
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only requests that failed over
        #[arg(long)]
        failover: bool,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 when a running proxy answers GET /health, else 1 (for container health checks)
    Health {
        /// Base URL of the proxy, e.g. http://127.0.0.1:4200 (default: from the config's listen
        /// address, with 0.0.0.0 / :: meaning this machine)
        #[arg(long)]
        url: Option<String>,
        /// Seconds to wait for the answer
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
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

pub fn traces(path: Option<&std::path::Path>, limit: u32, failover: bool, json: bool) -> i32 {
    let cfg = match load_or_report(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let db = cfg.data_dir.join("stockyard.db");
    if !db.exists() {
        eprintln!(
            "{}: no trace database yet (it is created when the proxy first runs)",
            db.display()
        );
        return 1;
    }
    let filter = crate::traces::query::TraceFilter {
        limit: Some(limit),
        failover: failover.then_some(true),
        ..Default::default()
    };
    let rows = match crate::traces::db::open_reader(&db)
        .and_then(|c| crate::traces::query::list(&c, &filter))
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: {e}", db.display());
            return 1;
        }
    };
    if json {
        println!("{}", serde_json::json!({ "traces": rows }));
        return 0;
    }
    print!("{}", traces_table(&rows));
    0
}

/// Why `stockyard health` failed.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("invalid --url `{0}`: {1}")]
    Url(String, String),
    #[error("cannot reach {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0} answered `{1}`")]
    Unhealthy(String, String),
}

/// `stockyard health`: GET /health on the running proxy; exit 0 when it answers 200 `ok`.
pub fn health(path: Option<&std::path::Path>, url: Option<&str>, timeout_s: u64) -> i32 {
    let target = match url {
        Some(u) => u.to_string(),
        None => match load_or_report(path) {
            Ok(cfg) => format!("http://{}", local_addr(cfg.listen)),
            Err(code) => return code,
        },
    };
    let timeout = std::time::Duration::from_secs(timeout_s.max(1));
    match check_health(&target, timeout) {
        Ok(()) => {
            println!("{target}/health: ok");
            0
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            1
        }
    }
}

/// The address to reach a server listening on `listen` from this machine.
pub fn local_addr(listen: std::net::SocketAddr) -> std::net::SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match listen.ip() {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    std::net::SocketAddr::new(ip, listen.port())
}

/// A plain HTTP/1.1 GET of `<base>/health` (no TLS: the proxy serves plain HTTP).
pub fn check_health(base: &str, timeout: std::time::Duration) -> Result<(), HealthError> {
    use std::io::{Read, Write};
    let bad = |m: &str| HealthError::Url(base.to_string(), m.to_string());
    let parsed = url::Url::parse(base).map_err(|e| bad(&e.to_string()))?;
    if parsed.scheme() != "http" {
        return Err(bad("only http:// is supported"));
    }
    let host = parsed.host_str().ok_or_else(|| bad("no host"))?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    let host_port = match parsed.host() {
        Some(url::Host::Ipv6(a)) => format!("[{a}]:{port}"),
        _ => format!("{host}:{port}"),
    };
    let addrs = std::net::ToSocketAddrs::to_socket_addrs(&host_port)
        .map_err(|e| HealthError::Connect(host_port.clone(), e))?;
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    let mut stream = None;
    for a in addrs {
        match std::net::TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let mut stream = stream.ok_or(HealthError::Connect(host_port.clone(), last))?;
    let io = |e| HealthError::Io(host_port.clone(), e);
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let path = format!("{}/health", parsed.path().trim_end_matches('/'));
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\nUser-Agent: stockyard-health\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).map_err(io)?;
    let mut resp = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut resp).map_err(io)?;
    let text = String::from_utf8_lossy(&resp);
    let status_line = text.lines().next().unwrap_or("").trim().to_string();
    let ok_status = status_line
        .split_whitespace()
        .nth(1)
        .is_some_and(|s| s == "200");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let ok_body = serde_json::from_str::<serde_json::Value>(body.trim())
        .ok()
        .is_some_and(|v| v["status"] == "ok");
    if ok_status && ok_body {
        Ok(())
    } else {
        Err(HealthError::Unhealthy(
            format!("http://{host_port}{path}"),
            if status_line.is_empty() {
                "nothing".to_string()
            } else {
                status_line
            },
        ))
    }
}

/// The table `stockyard traces` prints.
pub fn traces_table(rows: &[serde_json::Value]) -> String {
    let mut out = format!(
        "{:<30} {:<19} {:<24} {:<12} {:<6} {:>4} {:>3} {:>8} {:>11} {:>10}\n",
        "ID", "TIME (UTC)", "MODEL", "PROVIDER", "STATUS", "HTTP", "TRY", "MS", "TOKENS", "COST $"
    );
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        let n = |k: &str| {
            r[k].as_i64()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into())
        };
        let model = s("model_requested");
        let mut provider = s("provider");
        if r["failover"].as_bool() == Some(true) {
            provider.push('*');
        }
        out.push_str(&format!(
            "{:<30} {:<19} {:<24} {:<12} {:<6} {:>4} {:>3} {:>8} {:>11} {:>10}\n",
            s("id"),
            format_time(r["created_at"].as_i64().unwrap_or(0)),
            truncate(&model, 24),
            truncate(&provider, 12),
            truncate(&s("status"), 6),
            n("http_status"),
            n("attempts"),
            n("latency_ms"),
            format!("{}/{}", n("tokens_in"), n("tokens_out")),
            r["cost_usd"]
                .as_f64()
                .map(|c| format!("{c:.6}"))
                .unwrap_or_else(|| "-".into()),
        ));
    }
    if rows.is_empty() {
        out.push_str("(no traces)\n");
    } else {
        out.push_str("* = failed over\n");
    }
    out
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('~');
        t
    }
}

/// (year, month, day) of a day counted from 1970-01-01 (Howard Hinnant's civil-from-days).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) from unix milliseconds.
pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn format_time_is_utc_civil() {
        assert_eq!(super::format_time(0), "1970-01-01 00:00:00");
        assert_eq!(super::format_time(1_795_427_155_166), "2026-11-23 09:45:55");
    }
}
