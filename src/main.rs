use clap::Parser;
use std::sync::Arc;
use stockyard::cli::{self, Cli, Command};
use stockyard::config::{self, Env};
use stockyard::notify::{self, Notifier};
use stockyard::reload::ConfigSource;
use stockyard::server::StartOptions;

fn serve(path: Option<&std::path::Path>) -> i32 {
    let env = Env::process();
    let cfg = match cli::load_or_report(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    stockyard::logging::init(&cfg);
    if let Some((before, after)) = stockyard::service::raise_fd_limit() {
        tracing::debug!(before, after, "raised the open-file limit");
    }
    // Reloads read the same file (or rebuild the same built-in default) as this start did.
    let source = ConfigSource {
        path: config::load::config_path(path, &env),
        env,
    };
    let notifier = match Notifier::from_env() {
        Ok(n) => n.map(Arc::new),
        Err(e) => {
            tracing::warn!(error = %e, "systemd notifications disabled");
            None
        }
    };
    // Client connections are served on per-core worker threads (src/workers.rs);
    // STOCKYARD_WORKERS=N sets their number, 0 serves them on the main runtime instead.
    let workers = match std::env::var("STOCKYARD_WORKERS") {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => {
                eprintln!("STOCKYARD_WORKERS must be a whole number, got `{v}`");
                return 2;
            }
        },
        Err(_) => Some(stockyard::workers::Workers::default_count()),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return 1;
        }
    };
    let code = rt.block_on(async move {
        let listen = cfg.listen;
        let config_name = cfg.source.clone();
        let providers: Vec<String> = cfg.providers.iter().map(|p| p.name.clone()).collect();
        let opts = StartOptions {
            source: Some(source),
            notifier: notifier.clone(),
            workers,
        };
        let signals = match stockyard::service::Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cannot install signal handlers: {e}");
                return 1;
            }
        };
        let running = match stockyard::server::start_with(cfg, None, opts).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("cannot listen on {listen}: {e}");
                return 1;
            }
        };
        tracing::info!(addr = %running.addr, config = %config_name, providers = ?providers, "stockyard listening");
        if let Some(n) = &notifier {
            n.send(&format!(
                "READY=1\nSTATUS=Listening on {} ({} providers)",
                running.addr,
                providers.len()
            ));
            if let Some(every) = notify::watchdog_interval() {
                tracing::debug!(interval_ms = every.as_millis() as u64, "systemd watchdog on");
                notify::spawn_watchdog(n.clone(), every);
            }
        }
        stockyard::service::run(running, notifier, signals).await
    });
    // Everything that matters has finished (or a second signal asked for an immediate exit):
    // do not wait for stray tasks.
    rt.shutdown_background();
    code
}

fn main() {
    let cli = Cli::parse();
    let path = cli.config.as_deref();
    let code = match cli.command {
        None | Some(Command::Serve) => serve(path),
        Some(Command::Check) => cli::check(path),
        Some(Command::Route { model, local_only }) => cli::route(path, &model, local_only),
        Some(Command::Init) => cli::init(path),
        Some(Command::Traces {
            limit,
            failover,
            json,
        }) => cli::traces(path, limit, failover, json),
        Some(Command::Health { url, timeout }) => cli::health(path, url.as_deref(), timeout),
    };
    std::process::exit(code);
}
