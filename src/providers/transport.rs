//! The upstream HTTP client on the request path: hyper-util's pooled client over rustls, one per
//! provider (its connect timeout is the provider's).
//!
//! Why not reqwest here: every reqwest request goes through its redirect layer, which turns the
//! request URI back into a string and re-parses it as a `Url` (IDNA included), plus a retry and
//! a timeout layer the proxy does not use — about 15% of Stockyard's instructions per request in
//! the benchmark's profile (bench/profile.md). The proxy needs none of it: it never follows
//! redirects (a 3xx is an upstream error), and its own timeouts wrap the call. Health probes and
//! model discovery, off the request path, still use reqwest.
//!
//! The answer is handed on as an [`UpstreamResponse`]: hyper's response with the few reading
//! methods the relays use (status, headers, the body as a stream of byte chunks). Converting it
//! into a `reqwest::Response` instead cost a URL parse and two body wrappers per request.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);
/// Idle connections kept per upstream host.
const POOL_MAX_IDLE: usize = 256;

/// Why a request got no answer.
#[derive(Debug)]
pub enum SendError {
    /// No connection: refused, unreachable, DNS or TLS failure.
    Connect(String),
    /// The connection attempt ran out of time.
    ConnectTimeout,
    /// The connection failed after it was made (reset, closed early, protocol error).
    Transport(String),
}

/// A pooled HTTP/1.1 + HTTP/2 (by ALPN) client for one provider: one pool per connection
/// worker ([`crate::workers`]), so a request only ever uses upstream connections driven by its
/// own thread.
#[derive(Clone, Debug)]
pub struct Upstream {
    clients: std::sync::Arc<[Client<Connector, Full<Bytes>>]>,
}

impl Upstream {
    pub fn new(connect_timeout: Duration) -> Upstream {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let clients = (0..crate::workers::pools())
            .map(|_| {
                Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(POOL_IDLE)
                    .pool_max_idle_per_host(POOL_MAX_IDLE)
                    .build(https.clone())
            })
            .collect();
        Upstream { clients }
    }

    /// This thread's client (its worker's pool; the shared one off the workers).
    fn client(&self) -> &Client<Connector, Full<Bytes>> {
        let i = crate::workers::current();
        self.clients.get(i).unwrap_or(&self.clients[0])
    }

    /// Sends a POST of `body` to `uri` with `headers` and returns once response headers arrive.
    pub async fn post(
        &self,
        uri: Uri,
        headers: impl IntoIterator<Item = (HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Result<UpstreamResponse, SendError> {
        let mut req = http::Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        h.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static(USER_AGENT),
        );
        for (name, value) in headers {
            h.insert(name, value);
        }
        match self.client().request(req).await {
            Ok(resp) => Ok(UpstreamResponse(resp)),
            Err(e) => Err(classify(&e)),
        }
    }
}

/// An upstream's answer, its body not read yet.
#[derive(Debug)]
pub struct UpstreamResponse(http::Response<hyper::body::Incoming>);

/// The body of an [`UpstreamResponse`] as its data chunks (trailers skipped).
pub type BodyStream = http_body_util::BodyDataStream<hyper::body::Incoming>;

impl UpstreamResponse {
    pub fn status(&self) -> http::StatusCode {
        self.0.status()
    }

    pub fn headers(&self) -> &http::HeaderMap {
        self.0.headers()
    }

    /// The body, chunk by chunk as it arrives.
    pub fn bytes_stream(self) -> BodyStream {
        http_body_util::BodyDataStream::new(self.0.into_body())
    }

    /// The whole body.
    pub async fn bytes(self) -> Result<Bytes, hyper::Error> {
        use http_body_util::BodyExt;
        Ok(self.0.into_body().collect().await?.to_bytes())
    }
}

const USER_AGENT: &str = concat!("stockyard/", env!("CARGO_PKG_VERSION"));

fn classify(e: &hyper_util::client::legacy::Error) -> SendError {
    let msg = error_chain(e);
    if e.is_connect() {
        if timed_out(e) {
            SendError::ConnectTimeout
        } else {
            SendError::Connect(msg)
        }
    } else {
        SendError::Transport(msg)
    }
}

/// Whether an I/O "timed out" error is in the chain (the connector's connect timeout).
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// The messages of an error chain, deduplicated, without URLs that could carry secrets.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !s.contains("http://") && !s.contains("https://") && !parts.iter().any(|p| p == &s) {
            parts.push(s);
        }
        cur = err.source();
    }
    if parts.is_empty() {
        "request failed".into()
    } else {
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn posts_and_hands_back_the_response() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !String::from_utf8_lossy(&got).contains("\r\n\r\nhello") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
            )
            .await
            .unwrap();
            String::from_utf8(got).unwrap()
        });
        let up = Upstream::new(Duration::from_secs(2));
        let uri: Uri = format!("http://{addr}/v1/chat/completions")
            .parse()
            .unwrap();
        let resp = up
            .post(
                uri,
                [(
                    http::header::AUTHORIZATION,
                    HeaderValue::from_static("Bearer k"),
                )],
                Bytes::from_static(b"hello"),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.bytes().await.unwrap(), Bytes::from_static(b"{}"));
        let req = server.await.unwrap().to_ascii_lowercase();
        assert!(
            req.starts_with("post /v1/chat/completions http/1.1\r\n"),
            "{req}"
        );
        assert!(req.contains("authorization: bearer k\r\n"));
        assert!(req.contains("content-length: 5\r\n"));
        assert!(req.contains(&format!("host: {addr}\r\n")));
        assert!(req.contains("user-agent: stockyard/"));
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error_without_the_url() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let up = Upstream::new(Duration::from_secs(2));
        let uri: Uri = format!("http://{addr}/x").parse().unwrap();
        match up.post(uri, [], Bytes::new()).await {
            Err(SendError::Connect(m)) => assert!(!m.contains("http://"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
