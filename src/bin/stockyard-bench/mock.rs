//! A fast mock OpenAI upstream (hyper HTTP/1.1, keep-alive) on its own tokio runtime.
//!
//! * `POST` any path: a fixed chat completion of about `reply_bytes` bytes, prebuilt once; when
//!   the body contains `"stream":true`, an SSE stream of `chunks` content events, each written as
//!   its own HTTP chunk `chunk_gap` apart (the first one immediately), then one write with the
//!   finish event, the usage event (when `"include_usage":true`) and `[DONE]`.
//! * `GET …/models`: a one-model list. Anything else: 404.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub const MODEL: &str = "bench-model";
const CREATED: u64 = 1_700_000_000;

#[derive(Debug, Clone)]
pub struct MockOpts {
    pub reply_bytes: usize,
    pub chunks: usize,
    pub chunk_gap: Duration,
    pub threads: usize,
}

pub struct Mock {
    pub addr: SocketAddr,
    /// CPU time of the mock's worker threads is not separated out; the runtime lives here.
    _rt: tokio::runtime::Runtime,
}

struct Replies {
    json: Bytes,
    models: Bytes,
    chunks: Vec<Bytes>,
    tail_usage: Bytes,
    tail: Bytes,
    gap: Duration,
}

type Body = BoxBody<Bytes, Infallible>;

/// The content of stream event `i` (what the load generator counts).
pub fn chunk_text(i: usize) -> String {
    format!("tok{i} ")
}

impl Replies {
    fn new(o: &MockOpts) -> Replies {
        let base = serde_json::json!({
            "id": "chatcmpl-bench0000000000000000000000",
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "system_fingerprint": "fp_bench",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ""},
                         "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 14, "completion_tokens": 180, "total_tokens": 194},
        });
        let empty = serde_json::to_vec(&base).expect("json").len();
        let words = [
            "lorem ",
            "ipsum ",
            "dolor ",
            "sit ",
            "amet, ",
            "consectetur ",
        ];
        let mut content = String::new();
        let mut i = 0;
        while empty + content.len() < o.reply_bytes {
            content.push_str(words[i % words.len()]);
            i += 1;
        }
        content.truncate(o.reply_bytes.saturating_sub(empty).max(1));
        let mut reply = base;
        reply["choices"][0]["message"]["content"] = content.into();
        let json = Bytes::from(serde_json::to_vec(&reply).expect("json"));

        let event = |delta: serde_json::Value, finish: serde_json::Value| {
            let v = serde_json::json!({
                "id": "chatcmpl-bench0000000000000000000000",
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": MODEL,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            });
            format!("data: {v}\n\n")
        };
        let chunks = (0..o.chunks)
            .map(|i| {
                let delta = if i == 0 {
                    serde_json::json!({"role": "assistant", "content": chunk_text(i)})
                } else {
                    serde_json::json!({"content": chunk_text(i)})
                };
                Bytes::from(event(delta, serde_json::Value::Null))
            })
            .collect();
        let finish = event(serde_json::json!({}), "stop".into());
        let usage = serde_json::json!({
            "id": "chatcmpl-bench0000000000000000000000",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "choices": [],
            "usage": {"prompt_tokens": 14, "completion_tokens": o.chunks, "total_tokens": 14 + o.chunks},
        });
        let tail_usage = Bytes::from(format!("{finish}data: {usage}\n\ndata: [DONE]\n\n"));
        let tail = Bytes::from(format!("{finish}data: [DONE]\n\n"));
        let models = Bytes::from(
            serde_json::to_vec(&serde_json::json!({
                "object": "list",
                "data": [{"id": MODEL, "object": "model", "created": CREATED, "owned_by": "bench"}],
            }))
            .expect("json"),
        );
        Replies {
            json,
            models,
            chunks,
            tail_usage,
            tail,
            gap: o.chunk_gap,
        }
    }
}

impl Mock {
    pub fn start(opts: &MockOpts) -> Mock {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.threads.max(1))
            .thread_name("bench-mock")
            .enable_all()
            .build()
            .expect("mock runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind mock");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("mock addr");
        let replies = Arc::new(Replies::new(opts));
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("mock listener");
            loop {
                let (tcp, _) = match listener.accept().await {
                    Ok(x) => x,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let r = replies.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(r.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Mock { addr, _rt: rt }
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn full(b: Bytes) -> Body {
    Full::new(b).boxed()
}

async fn handle(r: Arc<Replies>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let json = |status: u16, b: Bytes| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(full(b))
            .expect("response")
    };
    if req.method() == hyper::Method::GET {
        return Ok(if req.uri().path().ends_with("/models") {
            json(200, r.models.clone())
        } else {
            json(
                404,
                Bytes::from_static(br#"{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":null}}"#),
            )
        });
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    if !contains(&body, br#""stream":true"#) {
        return Ok(json(200, r.json.clone()));
    }
    let usage = contains(&body, br#""include_usage":true"#);
    let n = r.chunks.len();
    let events = futures::stream::unfold(0usize, move |i| {
        let r = r.clone();
        async move {
            if i > n {
                return None;
            }
            if i > 0 && !r.gap.is_zero() {
                tokio::time::sleep(r.gap).await;
            }
            let b = if i < n {
                r.chunks[i].clone()
            } else if usage {
                r.tail_usage.clone()
            } else {
                r.tail.clone()
            };
            Some((Ok::<_, Infallible>(Frame::data(b)), i + 1))
        }
    });
    Ok(Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(BodyExt::boxed(StreamBody::new(events)))
        .expect("response"))
}
