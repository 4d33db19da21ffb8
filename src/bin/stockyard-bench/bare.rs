//! The yardstick proxy: the least a proxy on this stack can do. It forwards each request to the
//! mock upstream through hyper-util's pooled client and streams the answer back — no parsing, no
//! routing, no traces, no metrics — on the same runtime shape as Stockyard (multi-thread tokio,
//! hyper server, hyper-util client). Measuring it beside Stockyard shows how much of the gap to
//! direct-to-mock is the extra HTTP hop itself on this machine, and how much is Stockyard.
//!
//! Started by the benchmark as `stockyard-bench serve -c <config>` (the same command line as
//! Stockyard, so the same child-process harness runs it); it reads `listen:` and the first
//! `base_url:` from the generated config.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

type Body = BoxBody<Bytes, hyper::Error>;

struct Forward {
    client: Client<HttpConnector, Incoming>,
    authority: hyper::http::uri::Authority,
}

/// `stockyard-bench serve -c <config>`: runs the yardstick proxy until killed.
pub fn main(args: &[String]) -> ! {
    let cfg = args
        .windows(2)
        .find(|w| w[0] == "-c")
        .map(|w| w[1].clone())
        .unwrap_or_else(|| die("usage: stockyard-bench serve -c <config>"));
    let text = std::fs::read_to_string(&cfg).unwrap_or_else(|e| die(&format!("{cfg}: {e}")));
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(|v| v.trim().trim_matches('"').to_string())
            .unwrap_or_else(|| die(&format!("{cfg}: no `{key}`")))
    };
    let listen: SocketAddr = value("listen:")
        .parse()
        .unwrap_or_else(|e| die(&format!("listen: {e}")));
    let base: Uri = value("base_url:")
        .parse()
        .unwrap_or_else(|e| die(&format!("base_url: {e}")));
    let authority = base
        .authority()
        .cloned()
        .unwrap_or_else(|| die("base_url has no host"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(&format!("runtime: {e}")));
    rt.block_on(async move {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let fwd = Arc::new(Forward {
            client: Client::builder(TokioExecutor::new()).build(http),
            authority,
        });
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .unwrap_or_else(|e| die(&format!("bind {listen}: {e}")));
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let fwd = fwd.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let fwd = fwd.clone();
                    async move { Ok::<_, Infallible>(fwd.forward(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    })
}

impl Forward {
    async fn forward(&self, req: Request<Incoming>) -> Response<Body> {
        if req.uri().path() == "/health" {
            return plain(StatusCode::OK, "ok");
        }
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/"));
        parts.uri = match Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
        {
            Ok(u) => u,
            Err(e) => return plain(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        parts.headers.remove(hyper::header::HOST);
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(resp) => {
                let mut resp = resp.map(|b| b.boxed());
                // What the benchmark's sanity check looks for.
                resp.headers_mut().insert(
                    "x-stockyard-provider",
                    hyper::header::HeaderValue::from_static("mock"),
                );
                resp
            }
            Err(e) => plain(StatusCode::BAD_GATEWAY, &e.to_string()),
        }
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let body = http_body_util::Full::new(Bytes::from(text.to_string()))
        .map_err(|never: Infallible| match never {})
        .boxed();
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r
}

fn die(msg: &str) -> ! {
    eprintln!("stockyard-bench serve: {msg}");
    std::process::exit(2)
}
