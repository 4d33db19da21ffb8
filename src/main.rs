use clap::Parser;
use stockyard::cli::{self, Cli, Command};
use stockyard::config::{Config, LogFormat};

fn init_logging(cfg: &Config) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| cfg.log_level.clone());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn serve(path: Option<&std::path::Path>) -> i32 {
    let cfg = match cli::load_or_report(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logging(&cfg);
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
    rt.block_on(async move {
        let source = cfg.source.clone();
        let listen = cfg.listen;
        let providers: Vec<String> = cfg.providers.iter().map(|p| p.name.clone()).collect();
        let running = match stockyard::server::start(cfg, None).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("cannot listen on {listen}: {e}");
                return 1;
            }
        };
        tracing::info!(addr = %running.addr, config = %source, providers = ?providers, "stockyard listening");
        shutdown_signal().await;
        tracing::info!("shutting down");
        match running.shutdown().await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("server error: {e}");
                1
            }
        }
    })
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
    };
    std::process::exit(code);
}
