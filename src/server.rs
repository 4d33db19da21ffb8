//! Binding, serving, reloading and shutting down.
//!
//! Shutdown has two stages. [`Running::stop_accepting`] closes the listener and tells every
//! connection to finish what it is doing and close (in-flight requests and streams go on).
//! [`Running::drain`] waits for that up to the grace period; when it runs out, the requests still
//! running are cut: a handler still waiting for its upstream answers 503 `shutting_down`, a stream
//! gets a final error event, and their traces say the shutdown cut them. [`Running::finish`] then
//! writes every pending trace.

use crate::config::Config;
use crate::error::ApiError;
use crate::notify::Notifier;
use crate::proxy::{self, state::AppState};
use crate::reload::{ConfigSource, Reloader};
use crate::traces::{TraceSink, TraceWriter};
use crate::workers::Workers;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long cut requests get to wind down after the grace period before the server stops
/// waiting for their connections.
const CUT_WAIT: Duration = Duration::from_secs(5);

/// Options beyond the config.
#[derive(Debug, Default)]
pub struct StartOptions {
    /// Where reloads read the config (default: the file named by `config.source`, with the
    /// process environment).
    pub source: Option<ConfigSource>,
    /// systemd notifications for reloads (`RELOADING=1` / `READY=1`).
    pub notifier: Option<Arc<Notifier>>,
    /// Serve client connections on this many per-core worker threads ([`crate::workers`]);
    /// `None` serves them on the caller's runtime (what in-process tests do).
    pub workers: Option<usize>,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Every request finished within the grace period.
    Complete,
    /// The grace period ran out; this many requests were cut.
    Cut(usize),
}

/// A running server (used by `stockyard serve` and by the integration tests).
pub struct Running {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub reloader: Arc<Reloader>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
    writer: Option<TraceWriter>,
    cut: watch::Sender<bool>,
    active: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    sink: TraceSink,
}

impl Running {
    /// Requests (handlers and response bodies) currently running.
    pub fn in_flight(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Client connections currently open.
    pub fn open_connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Closes the listener (new connections are refused) and asks every open connection to close
    /// once its current request is answered. Requests and streams in flight go on.
    pub fn stop_accepting(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits up to `grace` for in-flight requests and streams to finish (call
    /// [`Running::stop_accepting`] first). When the grace period runs out the rest are cut.
    pub async fn drain(&mut self, grace: Duration) -> std::io::Result<Drain> {
        if let Ok(joined) = tokio::time::timeout(grace, &mut self.task).await {
            joined.unwrap_or_else(|e| Err(std::io::Error::other(e)))?;
            return Ok(Drain::Complete);
        }
        let cut = self.in_flight();
        tracing::warn!(
            requests = cut,
            grace_ms = grace.as_millis() as u64,
            "shutdown_grace ran out; cutting the requests still running"
        );
        self.sink.mark_cut_by_shutdown();
        let _ = self.cut.send(true);
        match tokio::time::timeout(CUT_WAIT, &mut self.task).await {
            Ok(joined) => {
                joined.unwrap_or_else(|e| Err(std::io::Error::other(e)))?;
            }
            Err(_) => {
                tracing::warn!("connections still open after cutting; closing them");
                self.task.abort();
            }
        }
        Ok(Drain::Cut(cut))
    }

    /// Writes every pending trace and cache entry, and stops the writers.
    pub async fn finish(mut self) {
        let st = self.state.clone();
        let _ = tokio::task::spawn_blocking(move || st.cache.shutdown()).await;
        if let Some(w) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || w.shutdown()).await;
        }
    }

    /// Stops accepting, waits for in-flight requests to finish (however long they take), then
    /// flushes pending traces.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        self.stop_accepting();
        let res = (&mut self.task)
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        self.finish().await;
        res
    }

    /// [`Running::stop_accepting`], [`Running::drain`] within `grace`, [`Running::finish`].
    pub async fn shutdown_within(mut self, grace: Duration) -> std::io::Result<Drain> {
        self.stop_accepting();
        let drained = self.drain(grace).await;
        self.finish().await;
        drained
    }

    /// Waits until every trace recorded so far is in the database.
    pub async fn flush_traces(&self) {
        if let Some(w) = &self.writer {
            w.flush().await;
        }
    }

    /// Waits until every response-cache write queued so far is in the database.
    pub async fn flush_cache(&self) {
        self.state.cache.flush().await;
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

/// Connections the kernel may queue for the accept loop. std and mio listen with 128: a burst
/// of clients larger than that (agents opening their connections at once) overflows the queue,
/// the kernel drops the handshakes it has no room for, and those clients wait for SYN
/// retransmits (1 s, 3 s, ...). The kernel caps this at `net.core.somaxconn` (4096 by default).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listening socket on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as std does,
/// so a restart does not wait for the old connections' TIME_WAIT).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Binds `config.listen` (or `listener` when given) and serves until shut down.
pub async fn start(config: Config, listener: Option<TcpListener>) -> std::io::Result<Running> {
    start_with(config, listener, StartOptions::default()).await
}

/// [`start`] with a reload source and a systemd notifier.
pub async fn start_with(
    config: Config,
    listener: Option<TcpListener>,
    opts: StartOptions,
) -> std::io::Result<Running> {
    let listener = match listener {
        Some(l) => l,
        None => bind(config.listen)?,
    };
    let addr = listener.local_addr()?;
    // Before the providers' runtime state is built: upstream clients keep one pool per worker.
    let workers = match opts.workers {
        Some(n) => Some(Workers::start(n)?),
        None => None,
    };
    let source = opts.source.unwrap_or_else(|| ConfigSource::of(&config));
    let (sink, writer, db_path) = start_traces(&config);
    let cache_on = config.cache.enabled;
    let state = AppState::new(config, sink.clone(), db_path);
    if cache_on {
        // After the trace writer has migrated the database: one migrator at a time.
        let st = state.clone();
        let _ = tokio::task::spawn_blocking(move || st.cache.open_blocking()).await;
    }
    let rt = state.runtime();
    crate::health::discover_all(&rt, crate::health::STARTUP_DISCOVERY_LIMIT).await;
    crate::health::spawn(&rt, true);
    drop(rt);
    let reloader = Arc::new(Reloader::new(source, state.clone(), addr, opts.notifier));
    let (cut, cut_rx) = watch::channel(false);
    let active = Arc::new(AtomicUsize::new(0));
    let guard = Guard {
        cut: cut_rx,
        active: active.clone(),
        proxied: Arc::new(AtomicUsize::new(0)),
        state: state.clone(),
        shed_log: Arc::new(std::sync::Mutex::new(None)),
    };
    let app = proxy::router(state.clone())
        .layer(axum::Extension(reloader.clone()))
        .layer(middleware::from_fn_with_state(guard.clone(), track_request));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let connections = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(serve(
        listener,
        app,
        guard,
        state.clone(),
        rx,
        connections.clone(),
        workers,
    ));
    Ok(Running {
        addr,
        state,
        reloader,
        shutdown: Some(tx),
        task,
        writer,
        cut,
        active,
        connections,
        sink,
    })
}

/// The accept loop. Every connection is served by hyper (HTTP/1.1, or HTTP/2 with prior
/// knowledge) with TCP_NODELAY and the peer address as `ConnectInfo`. A connection must deliver
/// a complete request head within `header_read_timeout` (slowloris), and an idle keep-alive
/// connection is closed after the same time. When `stop` fires the listener is closed, every
/// connection is asked to close once its current request is answered (idle ones close at once),
/// and the loop returns when the last connection has closed. With `workers`, each connection is
/// handed to a per-core worker thread (round-robin) and lives there until it closes.
async fn serve(
    listener: TcpListener,
    app: axum::Router,
    guard: Guard,
    state: Arc<AppState>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    open: Arc<AtomicUsize>,
    workers: Option<Workers>,
) -> std::io::Result<()> {
    let (shut_tx, shut_rx) = watch::channel(false);
    let (close_tx, close_rx) = watch::channel(());
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
        };
        // Small SSE writes must leave at once, not wait for the client's delayed ACK (Nagle).
        let _ = tcp.set_nodelay(true);
        let header_read_timeout = state.runtime().config.header_read_timeout;
        let conn = Conn {
            app: app.clone(),
            guard: guard.clone(),
            peer,
            header_read_timeout,
            shut: shut_rx.clone(),
            _close: close_rx.clone(),
            _open: Active::new(&open),
        };
        match &workers {
            Some(w) => match tcp.into_std() {
                Ok(std) => {
                    if let Err(job) = w.dispatch(move || Box::pin(conn.run_std(std))) {
                        tokio::spawn(job());
                    }
                }
                Err(e) => {
                    tracing::debug!(peer = %peer, error = %e, "cannot hand the connection to a worker")
                }
            },
            None => {
                tokio::spawn(conn.run(tcp));
            }
        }
    }
    drop(listener);
    let _ = shut_tx.send(true);
    drop(close_rx);
    close_tx.closed().await;
    Ok(())
}

/// `accept` failed: a connection that died in the backlog is skipped; anything else (out of
/// file descriptors) is logged and retried after a pause, so the loop does not spin.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "cannot accept connections; retrying in 100ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// The proxy routes, served from the connection straight to their handlers through [`track`]:
/// the router, its layers and per-request extensions cost ~11 k instructions per request and
/// none of these handlers uses them (issue 8 profile). Other methods on these paths (405) and
/// every other route go through the router.
#[derive(Clone, Copy)]
enum FastRoute {
    Chat,
    Messages,
    Embeddings,
}

impl FastRoute {
    fn of<B>(req: &http::Request<B>) -> Option<FastRoute> {
        if req.method() != http::Method::POST {
            return None;
        }
        match req.uri().path() {
            proxy::CHAT_PATH => Some(FastRoute::Chat),
            proxy::MESSAGES_PATH => Some(FastRoute::Messages),
            proxy::EMBEDDINGS_PATH => Some(FastRoute::Embeddings),
            _ => None,
        }
    }
}

/// Everything one connection task needs.
struct Conn {
    app: axum::Router,
    /// For the [`FastRoute`]s.
    guard: Guard,
    peer: SocketAddr,
    header_read_timeout: Duration,
    shut: watch::Receiver<bool>,
    /// Held until the connection closes; the accept loop waits for every one to drop.
    _close: watch::Receiver<()>,
    /// Counts the open client connection while it exists.
    _open: Active,
}

impl Conn {
    /// [`Conn::run`] for a connection accepted on another runtime.
    async fn run_std(self, tcp: std::net::TcpStream) {
        match tokio::net::TcpStream::from_std(tcp) {
            Ok(tcp) => self.run(tcp).await,
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "cannot register the connection on its worker")
            }
        }
    }

    async fn run(mut self, tcp: tokio::net::TcpStream) {
        use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (app, peer, seen) = (self.app.clone(), self.peer, started.clone());
        let guard = self.guard.clone();
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            use futures::future::Either;
            seen.store(true, Ordering::Relaxed);
            let mut req = req.map(Body::new);
            if let Some(route) = FastRoute::of(&req) {
                let g = guard.clone();
                return Either::Left(async move {
                    let st = State(g.state.clone());
                    Ok::<_, std::convert::Infallible>(
                        track(g, req, |req| async move {
                            let (parts, body) = req.into_parts();
                            match route {
                                FastRoute::Chat => {
                                    proxy::chat::chat_completions(st, parts.headers, body).await
                                }
                                FastRoute::Messages => {
                                    proxy::messages::messages(st, parts.headers, body).await
                                }
                                FastRoute::Embeddings => {
                                    proxy::embeddings::embeddings(st, parts.headers, body).await
                                }
                            }
                        })
                        .await,
                    )
                });
            }
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            Either::Right(tower::ServiceExt::oneshot(app.clone(), req))
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // hyper starts this timer whenever it waits for a request head: for the first request
        // and between requests on a kept-alive connection, so it is the idle timeout too.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout);
        // Dead HTTP/2 peers are found by pings.
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(self.header_read_timeout);
        let conn = builder.serve_connection(TokioIo::new(tcp), svc);
        tokio::pin!(conn);
        // hyper's timer only starts once the protocol is known: a connection that sends
        // nothing (or trickles an HTTP/2 preface) is dropped here when its first request has
        // not arrived in time.
        let first = tokio::time::sleep(self.header_read_timeout);
        tokio::pin!(first);
        let mut first_pending = true;
        let mut shutting = false;
        loop {
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::trace!(peer = %self.peer, error = %e, "connection ended with an error");
                    }
                    break;
                }
                _ = self.shut.wait_for(|s| *s), if !shutting => {
                    shutting = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = &mut first, if first_pending => {
                    first_pending = false;
                    if !started.load(Ordering::Relaxed) {
                        tracing::debug!(peer = %self.peer, timeout_ms = self.header_read_timeout.as_millis() as u64, "no request within header_read_timeout; closing the connection");
                        break;
                    }
                }
            }
        }
    }
}

/// Shared by every request: the "cut now" signal and the in-flight count.
#[derive(Clone)]
struct Guard {
    cut: watch::Receiver<bool>,
    active: Arc<AtomicUsize>,
    /// Proxy requests (`/v1/*`) in flight, held against `max_in_flight`.
    proxied: Arc<AtomicUsize>,
    state: Arc<AppState>,
    /// When shedding was last logged, and how many were shed since.
    shed_log: Arc<std::sync::Mutex<Option<(std::time::Instant, u64)>>>,
}

/// How often shedding is logged while it goes on.
const SHED_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Guard {
    /// Takes an in-flight slot for a proxy request, or `None` when `max` are taken.
    fn slot(&self, max: usize) -> Option<Slot> {
        self.proxied
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.proxied.clone()))
    }

    fn shed(&self, max: usize) -> Response {
        self.state.traces.metrics.shed.inc();
        let mut last = self.shed_log.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        match last.as_mut() {
            Some((at, n)) if now.duration_since(*at) < SHED_LOG_INTERVAL => *n += 1,
            _ => {
                let since = (*last).map_or(0, |(_, n)| n);
                tracing::warn!(
                    max_in_flight = max,
                    shed_since_last_log = since + 1,
                    "overloaded: shedding requests with 503"
                );
                *last = Some((now, 0));
            }
        }
        ApiError::Overloaded { limit: max }.into_response()
    }
}

/// One of the `max_in_flight` slots, held until the response body ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts something while it exists: one request from the start of its handler to the end of
/// its response body, or one open client connection.
struct Active(Arc<AtomicUsize>);

impl Active {
    fn new(n: &Arc<AtomicUsize>) -> Active {
        n.fetch_add(1, Ordering::SeqCst);
        Active(n.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts the request and lets the shutdown cut it once the grace period has run out.
async fn track_request(State(g): State<Guard>, req: Request, next: Next) -> Response {
    track(g, req, |req| next.run(req)).await
}

/// The guard every request passes (as axum middleware, or called directly for the
/// [`FastRoute`]s): refused while shutting down, shed past `max_in_flight`, the request body
/// under an idle timeout, the response body cut on a forced shutdown, and counted while open.
async fn track<F, Fut>(g: Guard, req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let active = Active::new(&g.active);
    let mut cut = g.cut.clone();
    if *cut.borrow() {
        return ApiError::ShuttingDown.into_response();
    }
    // Only the proxy routes are shed: health, readiness, metrics and the admin API stay
    // available to see and fix the overload.
    let (slot, req) = if req.uri().path().starts_with("/v1/") {
        let rt = g.state.runtime();
        let max = rt.config.max_in_flight;
        let Some(slot) = g.slot(max) else {
            return g.shed(max);
        };
        // A body that stalls must not hold the slot forever either.
        let idle = rt.config.header_read_timeout;
        (Some(slot), req.map(|b| Body::new(IdleBody::new(b, idle))))
    } else {
        (None, req)
    };
    let sse_kind = if req.uri().path().ends_with("/messages") {
        SseKind::Anthropic
    } else {
        SseKind::OpenAi
    };
    tokio::select! {
        resp = next(req) => {
            let (parts, body) = resp.into_parts();
            let sse = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"))
                .then_some(sse_kind);
            let body = CutBody {
                inner: body,
                cut: g.cut,
                waiting: None,
                sse,
                done: false,
                _slot: slot,
                _active: active,
            };
            Response::from_parts(parts, Body::new(body))
        }
        _ = cut.wait_for(|c| *c) => ApiError::ShuttingDown.into_response(),
    }
}

/// A request body that fails when no data arrives for `idle` (`header_read_timeout`): a client
/// that stops sending half-way through its body is answered (400) instead of holding its
/// in-flight slot and connection forever.
struct IdleBody {
    inner: Body,
    idle: Duration,
    /// Created the first time the body has nothing ready; re-armed after every frame.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl IdleBody {
    fn new(inner: Body, idle: Duration) -> IdleBody {
        IdleBody {
            inner,
            idle,
            timer: None,
            armed: false,
        }
    }
}

impl http_body::Body for IdleBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let deadline = tokio::time::Instant::now() + this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.armed {
                    timer.as_mut().reset(deadline);
                    this.armed = true;
                }
                match std::future::Future::poll(timer.as_mut(), cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Some(Err(axum::Error::new(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "no request body data for {:?} (header_read_timeout)",
                                this.idle
                            ),
                        )))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Clone, Copy)]
enum SseKind {
    OpenAi,
    Anthropic,
}

/// A response body that ends early when the shutdown cuts it: an event stream with a final error
/// event (so the client can tell it from a complete answer), anything else with an error (the
/// connection is closed mid-body).
struct CutBody {
    inner: Body,
    cut: watch::Receiver<bool>,
    /// Created the first time the inner body has nothing ready, then polled with it.
    waiting: Option<Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
    sse: Option<SseKind>,
    done: bool,
    _slot: Option<Slot>,
    _active: Active,
}

impl CutBody {
    fn cut_frame(&mut self) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        self.done = true;
        let message = "stockyard is shutting down: shutdown_grace ran out before the stream ended";
        match self.sse {
            Some(SseKind::OpenAi) => {
                let v = serde_json::json!({"error": {"message": message, "type": "stream_error", "code": "shutting_down"}});
                Poll::Ready(Some(Ok(http_body::Frame::data(crate::sse::data_event(
                    &v.to_string(),
                )))))
            }
            Some(SseKind::Anthropic) => {
                let v = serde_json::json!({"type": "error", "error": {"type": "overloaded_error", "message": message}});
                Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(format!(
                    "event: error\ndata: {v}\n\n"
                ))))))
            }
            None => Poll::Ready(Some(Err(axum::Error::new(std::io::Error::other(message))))),
        }
    }
}

impl http_body::Body for CutBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if *this.cut.borrow() {
            return this.cut_frame();
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                let cut = this.waiting.get_or_insert_with(|| {
                    let mut rx = this.cut.clone();
                    Box::pin(async move {
                        let _ = rx.wait_for(|c| *c).await;
                    })
                });
                match cut.as_mut().poll(cx) {
                    Poll::Ready(()) => this.cut_frame(),
                    Poll::Pending => Poll::Pending,
                }
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::os::fd::AsRawFd;

    /// The accept queue is `LISTEN_BACKLOG` deep (or the kernel's cap): for a listening socket
    /// Linux reports the queue's maximum in `tcp_info.tcpi_sacked`.
    #[tokio::test]
    async fn listens_with_a_deep_accept_queue() {
        let l = super::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = unsafe {
            libc::getsockopt(
                l.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(info.tcpi_sacked, super::LISTEN_BACKLOG.min(somaxconn));
        // And the bound address is what the caller asked for.
        assert_eq!(l.local_addr().unwrap().ip().to_string(), "127.0.0.1");
    }
}
