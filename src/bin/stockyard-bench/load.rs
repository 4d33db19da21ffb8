//! The load generator: raw hyper HTTP/1.1 client connections (TCP_NODELAY, keep-alive, one
//! request in flight per connection), in closed loop (N connections, each sending its next request
//! when the previous answer is complete) or open loop (a fixed arrival rate, latency measured from
//! each request's scheduled start, so queueing is not hidden: no coordinated omission).
//! Latencies go to HDR histograms, in nanoseconds.

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

pub type Conn = SendRequest<Full<Bytes>>;

/// Where and what to send.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub path: String,
    pub body: Bytes,
    pub stream: bool,
    host: String,
}

impl Target {
    pub fn new(addr: SocketAddr, path: &str, body: Bytes, stream: bool) -> Arc<Target> {
        Arc::new(Target {
            addr,
            path: path.to_string(),
            body,
            stream,
            host: addr.to_string(),
        })
    }

    fn request(&self) -> Request<Full<Bytes>> {
        Request::post(self.path.as_str())
            .header(hyper::header::HOST, self.host.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, "application/json, text/event-stream")
            .body(Full::new(self.body.clone()))
            .expect("request")
    }
}

pub fn histogram() -> Histogram<u64> {
    // 1 ns .. 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("histogram")
}

fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

pub async fn connect(addr: SocketAddr) -> Result<Conn, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(tx)
}

/// One simple request on a fresh connection (health checks, admin API).
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, hyper::HeaderMap, Bytes), String> {
    let mut c = connect(addr).await?;
    let req = Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = c.send_request(req).await.map_err(|e| e.to_string())?;
    collect(resp).await
}

/// One request to `t` on a fresh connection, with its answer.
pub async fn once(t: &Target) -> Result<(u16, hyper::HeaderMap, Bytes), String> {
    let mut c = connect(t.addr).await?;
    let resp = c
        .send_request(t.request())
        .await
        .map_err(|e| e.to_string())?;
    collect(resp).await
}

/// Status, headers and the whole body of an answer.
async fn collect(
    resp: hyper::Response<hyper::body::Incoming>,
) -> Result<(u16, hyper::HeaderMap, Bytes), String> {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, headers, body))
}

/// What one completed request looked like.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sample {
    pub total: Duration,
    /// Streams: time to the first body frame (the first content event).
    pub ttft: Option<Duration>,
    /// Streams: body frames (HTTP chunks) received.
    pub frames: u32,
    /// Streams: content events received.
    pub events: u32,
    /// Streams: content events that arrived in the same frame as the previous one.
    pub shared: u32,
    /// Streams: content events that arrived in their own frame but less than half the mock's
    /// inter-chunk gap after the previous one (batched in transit, or a stalled reader).
    pub close: u32,
}

fn count(hay: &[u8], needle: &[u8]) -> u32 {
    hay.windows(needle.len()).filter(|w| *w == needle).count() as u32
}

/// Sends one request on `c` and reads the whole answer.
pub async fn send(c: &mut Conn, t: &Target, close_gap: Duration) -> Result<Sample, String> {
    c.ready().await.map_err(|e| e.to_string())?;
    let start = Instant::now();
    let resp = c
        .send_request(t.request())
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut s = Sample::default();
    let mut last: Option<Instant> = None;
    let mut bytes = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        bytes += data.len();
        if !t.stream {
            continue;
        }
        let now = Instant::now();
        s.frames += 1;
        if s.ttft.is_none() {
            s.ttft = Some(now - start);
        }
        let n = count(data, br#""content":"tok"#);
        if n > 0 {
            s.events += n;
            s.shared += n - 1;
            if last.is_some_and(|p| now - p < close_gap) {
                s.close += 1;
            }
            last = Some(now);
        }
    }
    s.total = start.elapsed();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    if bytes == 0 {
        return Err("empty body".into());
    }
    Ok(s)
}

/// Everything one run (or several merged runs) measured.
pub struct Stats {
    /// Latency (whole answer), ns.
    pub latency: Histogram<u64>,
    /// Streams: time to first token, ns.
    pub ttft: Histogram<u64>,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Error messages and how often each occurred (at most 20 distinct ones).
    pub kinds: std::collections::BTreeMap<String, u64>,
    /// Length of the measurement window(s).
    pub window: Duration,
    pub frames: u64,
    pub events: u64,
    pub shared: u64,
    pub close: u64,
    /// CPU seconds the watched process used during the window(s).
    pub cpu_s: f64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            latency: histogram(),
            ttft: histogram(),
            ok: 0,
            errors: 0,
            first_error: None,
            kinds: Default::default(),
            window: Duration::ZERO,
            frames: 0,
            events: 0,
            shared: 0,
            close: 0,
            cpu_s: 0.0,
        }
    }
}

impl Stats {
    fn record(&mut self, s: &Sample, latency: Duration) {
        self.ok += 1;
        self.latency.saturating_record(ns(latency));
        if let Some(t) = s.ttft {
            self.ttft.saturating_record(ns(t));
        }
        self.frames += s.frames as u64;
        self.events += s.events as u64;
        self.shared += s.shared as u64;
        self.close += s.close as u64;
    }

    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.kinds.len() < 20 || self.kinds.contains_key(&e) {
            *self.kinds.entry(e.clone()).or_default() += 1;
        }
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }

    pub fn merge(&mut self, o: &Stats) {
        let _ = self.latency.add(&o.latency);
        let _ = self.ttft.add(&o.ttft);
        self.ok += o.ok;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
        for (k, n) in &o.kinds {
            if self.kinds.len() < 20 || self.kinds.contains_key(k) {
                *self.kinds.entry(k.clone()).or_default() += n;
            }
        }
        self.window += o.window;
        self.frames += o.frames;
        self.events += o.events;
        self.shared += o.shared;
        self.close += o.close;
        self.cpu_s += o.cpu_s;
    }

    /// Merges the per-connection parts of one run (same window).
    fn absorb(&mut self, o: &Stats) {
        let w = self.window;
        let c = self.cpu_s;
        self.merge(o);
        self.window = w;
        self.cpu_s = c;
    }

    pub fn rps(&self) -> f64 {
        if self.window.is_zero() {
            0.0
        } else {
            self.ok as f64 / self.window.as_secs_f64()
        }
    }
}

/// Measures the CPU a process uses between `from` and `to`.
fn cpu_window(pid: Option<u32>, from: Instant, to: Instant) -> tokio::task::JoinHandle<f64> {
    tokio::spawn(async move {
        let Some(pid) = pid else { return 0.0 };
        tokio::time::sleep_until(from.into()).await;
        let a = crate::child::cpu_seconds(pid);
        tokio::time::sleep_until(to.into()).await;
        crate::child::cpu_seconds(pid) - a
    })
}

/// Closed loop: `conc` connections send back to back for `warmup + dur`; answers completed in the
/// last `dur` are measured. `pid`: a process whose CPU time to measure over the window.
pub async fn closed(
    t: Arc<Target>,
    conc: usize,
    warmup: Duration,
    dur: Duration,
    close_gap: Duration,
    pid: Option<u32>,
) -> Stats {
    let start = Instant::now();
    let (from, to) = (start + warmup, start + warmup + dur);
    let cpu = cpu_window(pid, from, to);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..conc {
        let t = t.clone();
        set.spawn(async move {
            let mut st = Stats::default();
            let mut conn: Option<Conn> = None;
            while Instant::now() < to {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match connect(t.addr).await {
                        Ok(c) => conn.insert(c),
                        Err(e) => {
                            if Instant::now() >= from {
                                st.error(e);
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                let r = send(c, &t, close_gap).await;
                let done = Instant::now();
                let counted = done >= from && done <= to;
                match r {
                    Ok(s) if counted => st.record(&s, s.total),
                    Ok(_) => {}
                    Err(e) => {
                        if counted {
                            st.error(e);
                        }
                        conn = None;
                        // No reconnect storm: a failing server sees ~1000 tries/s per connection.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            st
        });
    }
    let mut all = Stats {
        window: dur,
        ..Stats::default()
    };
    while let Some(r) = set.join_next().await {
        if let Ok(st) = r {
            all.absorb(&st);
        }
    }
    all.cpu_s = cpu.await.unwrap_or(0.0);
    all
}

/// Open loop: requests are scheduled at a fixed `rate` (by a pacing thread with a fine timer)
/// and served by up to `conns` connections; latency is measured from the scheduled start.
pub async fn open(
    t: Arc<Target>,
    rate: f64,
    conns: usize,
    warmup: Duration,
    dur: Duration,
    pid: Option<u32>,
) -> Stats {
    let mut pool = Vec::with_capacity(conns);
    let mut st0 = Stats::default();
    for _ in 0..conns {
        match connect(t.addr).await {
            Ok(c) => pool.push(c),
            Err(e) => st0.error(e),
        }
    }
    let start = Instant::now() + Duration::from_millis(5);
    let (from, to) = (start + warmup, start + warmup + dur);
    let cpu = cpu_window(pid, from, to);
    let arrivals = Arc::new(Arrivals::default());
    let pacer = {
        let a = arrivals.clone();
        std::thread::Builder::new()
            .name("bench-pacer".into())
            .spawn(move || pace(&a, start, rate, to))
            .expect("pacer thread")
    };
    let mut set = tokio::task::JoinSet::new();
    for c in pool {
        let (t, arrivals) = (t.clone(), arrivals.clone());
        set.spawn(async move {
            let mut st = Stats::default();
            let mut conn = Some(c);
            while let Some(due) = arrivals.next().await {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match connect(t.addr).await {
                        Ok(c) => conn.insert(c),
                        Err(e) => {
                            if due >= from {
                                st.error(e);
                            }
                            continue;
                        }
                    },
                };
                let r = send(c, &t, Duration::ZERO).await;
                let done = Instant::now();
                let counted = due >= from;
                match r {
                    Ok(s) if counted => st.record(&s, done - due),
                    Ok(_) => {}
                    Err(e) => {
                        if counted {
                            st.error(e);
                        }
                        conn = None;
                    }
                }
            }
            st
        });
    }
    let mut all = Stats {
        window: dur,
        ..Stats::default()
    };
    all.absorb(&st0);
    while let Some(r) = set.join_next().await {
        if let Ok(st) = r {
            all.absorb(&st);
        }
    }
    let _ = pacer.join();
    all.cpu_s = cpu.await.unwrap_or(0.0);
    all
}

/// Scheduled arrivals waiting for a free connection: the pacer pushes each one and wakes one idle
/// connection task; a task that finishes a request takes the next due arrival without waiting.
/// (A queue under a plain mutex and one `Notify`, rather than a channel receiver shared behind
/// an async mutex: that handed the lock from task to task on every arrival, and the generator's
/// own CPU competes with what it measures on a small machine.)
#[derive(Default)]
struct Arrivals {
    due: std::sync::Mutex<std::collections::VecDeque<Instant>>,
    ready: tokio::sync::Notify,
    closed: std::sync::atomic::AtomicBool,
}

impl Arrivals {
    fn push(&self, due: Instant) {
        self.due
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(due);
        self.ready.notify_one();
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_waiters();
    }

    /// The next arrival, waiting for one; `None` once the pacer is done and the queue empty.
    async fn next(&self) -> Option<Instant> {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            // Registered before looking, so a push or close in between is not missed.
            notified.as_mut().enable();
            if let Some(d) = self
                .due
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front()
            {
                return Some(d);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            notified.await;
        }
    }
}

fn pace(arrivals: &Arrivals, start: Instant, rate: f64, end: Instant) {
    // A 1 µs timer slack instead of the default 50 µs, so arrivals stay evenly spaced.
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }
    let mut i: u64 = 0;
    loop {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        arrivals.push(due);
        i += 1;
    }
    arrivals.close();
}

/// Sequential, interleaved requests over one keep-alive connection per target: round `i` sends
/// one request to each target in turn, so all see the same machine state. Returns one
/// histogram per target (after `warmup` unrecorded rounds).
pub async fn interleaved(targets: &[Arc<Target>], samples: usize, warmup: usize) -> Vec<Stats> {
    let mut conns: Vec<Option<Conn>> = targets.iter().map(|_| None).collect();
    let mut out: Vec<Stats> = targets.iter().map(|_| Stats::default()).collect();
    let begin = Instant::now();
    for round in 0..warmup + samples {
        for (i, t) in targets.iter().enumerate() {
            let c = match conns[i].as_mut() {
                Some(c) => c,
                None => match connect(t.addr).await {
                    Ok(c) => conns[i].insert(c),
                    Err(e) => {
                        out[i].error(e);
                        continue;
                    }
                },
            };
            match send(c, t, Duration::ZERO).await {
                Ok(s) if round >= warmup => out[i].record(&s, s.total),
                Ok(_) => {}
                Err(e) => {
                    out[i].error(e);
                    conns[i] = None;
                }
            }
        }
    }
    let window = begin.elapsed();
    for s in &mut out {
        s.window = window;
    }
    out
}

/// Closed loop for exactly `total` requests over `conc` connections; `on_progress` is polled
/// every 10 ms with the number of requests completed so far (for RSS sampling).
pub async fn count_run(
    t: Arc<Target>,
    conc: usize,
    total: u64,
    mut on_progress: impl FnMut(u64),
) -> Stats {
    let issued = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let exited = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let begin = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..conc {
        let (t, issued, done) = (t.clone(), issued.clone(), done.clone());
        let exited = exited.clone();
        set.spawn(async move {
            let mut st = Stats::default();
            let mut conn: Option<Conn> = None;
            while issued.fetch_add(1, Ordering::Relaxed) < total {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match connect(t.addr).await {
                        Ok(c) => conn.insert(c),
                        Err(e) => {
                            st.error(e);
                            done.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                match send(c, &t, Duration::ZERO).await {
                    Ok(s) => st.record(&s, s.total),
                    Err(e) => {
                        st.error(e);
                        conn = None;
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            exited.fetch_add(1, Ordering::Relaxed);
            st
        });
    }
    loop {
        on_progress(done.load(Ordering::Relaxed));
        let all_exited = exited.load(Ordering::Relaxed) == conc;
        if all_exited || done.load(Ordering::Relaxed) >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut all = Stats::default();
    while let Some(r) = set.join_next().await {
        if let Ok(st) = r {
            all.absorb(&st);
        }
    }
    on_progress(done.load(Ordering::Relaxed));
    all.window = begin.elapsed();
    all
}
