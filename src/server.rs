//! Binding, serving and shutting down.

use crate::config::Config;
use crate::proxy::{self, state::AppState};
use crate::traces::{TraceSink, TraceWriter};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// A running server (used by `stockyard serve` and by the integration tests).
pub struct Running {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
    writer: Option<TraceWriter>,
}

impl Running {
    /// Stops accepting, waits for in-flight requests to finish, then flushes pending traces.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let res = (&mut self.task)
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Some(w) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || w.shutdown()).await;
        }
        res
    }

    /// Waits until every trace recorded so far is in the database.
    pub async fn flush_traces(&self) {
        if let Some(w) = &self.writer {
            w.flush().await;
        }
    }
}

/// Opens the trace database under `data_dir` and starts its writer; on failure the proxy still
/// runs and counts every trace as dropped.
fn start_traces(config: &Config) -> (TraceSink, Option<TraceWriter>, Option<std::path::PathBuf>) {
    if !config.traces.enabled {
        return (TraceSink::disabled(), None, None);
    }
    let path = config.data_dir.join("stockyard.db");
    match TraceWriter::start(path.clone(), config.traces.store_bodies) {
        Ok(w) => {
            w.spawn_retention(config.traces.retention_days);
            (w.sink.clone(), Some(w), Some(path))
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot open the trace database; requests will be served but not traced");
            (TraceSink::broken(), None, None)
        }
    }
}

/// Binds `config.listen` (or `listener` when given) and serves until shut down.
pub async fn start(config: Config, listener: Option<TcpListener>) -> std::io::Result<Running> {
    let listener = match listener {
        Some(l) => l,
        None => TcpListener::bind(config.listen).await?,
    };
    let addr = listener.local_addr()?;
    // Small SSE writes must leave at once, not wait for the client's delayed ACK (Nagle).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let (sink, writer, db_path) = start_traces(&config);
    let state = AppState::new(config, sink, db_path);
    let rt = state.runtime();
    crate::health::discover_all(&rt, crate::health::STARTUP_DISCOVERY_LIMIT).await;
    crate::health::spawn(&rt, true);
    drop(rt);
    let app = proxy::router(state.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = rx.await;
        })
        .await
    });
    Ok(Running {
        addr,
        state,
        shutdown: Some(tx),
        task,
        writer,
    })
}
