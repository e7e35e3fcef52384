//! The load's own HTTP/1.1 client for the one request it sends by the
//! hundred thousand, `POST /api/orders`.
//!
//! The load client shares the machine's cores with what it measures, so
//! its CPU per order is taken from the service's. reqwest spent about
//! 20 µs per order here (`perf`: its pool, its dispatcher task and header
//! map, a URL parsed per request, on top of the socket's own work); this
//! client writes each request as one buffer on a kept-alive connection and
//! reads the answer back in the same task.
//!
//! It understands what the api sends and nothing more: a status line,
//! headers, and a body framed by `Content-Length`. Anything else (chunked
//! framing, a malformed head, more bytes than the answer) is an error, and
//! the connection is closed. A request is never retried: the api may have
//! recorded it, and a retry would be a second order.

use crate::api::{Answer, Credentials, OrderKey};
use anyhow::{Context, bail};
use serde::Deserialize;
use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest answer head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest answer body accepted.
const MAX_BODY: usize = 1024 * 1024;

/// Where orders go and as whom. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// `host:port`, to connect to and for the `Host` header.
    authority: String,
    /// `Prefer: wait=N`, when waiting.
    wait: u64,
    /// The whole exchange may take this long (as reqwest's timeout did).
    timeout: Duration,
    credentials: Credentials,
    /// Idle connections of the shared pool (open loop).
    idle: Mutex<Vec<Conn>>,
    /// Most idle connections the pool keeps.
    max_idle: usize,
}

/// One kept-alive connection and its read buffer.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A client's own connection (closed loop): opened on first use, and
/// again after a failure.
pub struct Session {
    client: Client,
    conn: Option<Conn>,
    request: Vec<u8>,
}

/// An answer's status, and what the load needs of its head and body.
struct Reply {
    status: u16,
    retry_after: bool,
    /// The api asked to close the connection after this answer.
    close: bool,
    body: Vec<u8>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    data: Option<Data<'a>>,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    error: Option<Cow<'a, str>>,
}

impl Client {
    /// A client of the api at `base` (`http://host:port`, no path), keeping
    /// at most `max_idle` idle connections in its shared pool.
    pub fn new(
        base: &str,
        wait: u64,
        max_idle: usize,
        credentials: &Credentials,
    ) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(base).context("--base-url is not a URL")?;
        if url.scheme() != "http" {
            bail!("--base-url must be http:// (the load speaks plain HTTP/1.1)");
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            bail!("--base-url must not have a path or query, got {base:?}");
        }
        let host = url.host_str().context("--base-url has no host")?;
        let port = url.port_or_known_default().unwrap_or(80);
        Ok(Self {
            inner: Arc::new(Inner {
                authority: format!("{host}:{port}"),
                wait,
                timeout: Duration::from_secs(30 + wait),
                credentials: credentials.clone(),
                idle: Mutex::new(Vec::new()),
                max_idle,
            }),
        })
    }

    /// A session with a connection of its own.
    pub fn session(&self) -> Session {
        Session {
            client: self.clone(),
            conn: None,
            request: Vec::with_capacity(512),
        }
    }

    /// Submits order `n` (one unit of `product`) on an idle pooled
    /// connection, or a new one; the connection goes back to the pool
    /// after a clean answer.
    pub async fn order_pooled(&self, product: u64, n: usize) -> Answer {
        let pooled = self.inner.idle.lock().expect("pool lock").pop();
        let mut session = Session {
            client: self.clone(),
            conn: pooled,
            request: Vec::with_capacity(512),
        };
        let answer = session.order(product, n).await;
        if let Some(conn) = session.conn.take() {
            let mut idle = self.inner.idle.lock().expect("pool lock");
            if idle.len() < self.inner.max_idle {
                idle.push(conn);
            }
        }
        answer
    }
}

impl Session {
    /// Submits order `n`: one unit of `product`, as buyer `n` modulo the
    /// buyers, with `Prefer: wait` when waiting.
    pub async fn order(&mut self, product: u64, n: usize) -> Answer {
        self.write_request(product, n);
        let timeout = self.client.inner.timeout;
        let reply = match tokio::time::timeout(timeout, self.exchange()).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                self.conn = None;
                return Answer::Error(format!("{e:#}"));
            }
            Err(_) => {
                self.conn = None;
                return Answer::Error(format!("no answer within {timeout:?}"));
            }
        };
        if reply.close {
            self.conn = None;
        }
        classify(&reply)
    }

    /// The request's bytes, in `self.request`.
    fn write_request(&mut self, product: u64, n: usize) {
        use std::io::Write;
        let inner = &self.client.inner;
        let body_len = body_len(product);
        let r = &mut self.request;
        r.clear();
        // Writing to a Vec cannot fail.
        let _ = write!(
            r,
            "POST /api/orders HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {body_len}\r\n",
            inner.authority
        );
        let buyers = &inner.credentials.buyers;
        if !buyers.is_empty() {
            let _ = write!(r, "Authorization: Bearer {}\r\n", buyers[n % buyers.len()]);
        }
        if inner.wait > 0 {
            let _ = write!(r, "Prefer: wait={}\r\n", inner.wait);
        }
        let _ = write!(r, "\r\n{{\"product_id\":{product},\"total\":1}}");
    }

    /// Sends `self.request` and reads the answer.
    async fn exchange(&mut self) -> anyhow::Result<Reply> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let stream = TcpStream::connect(&self.client.inner.authority)
                    .await
                    .with_context(|| format!("connecting to {}", self.client.inner.authority))?;
                stream.set_nodelay(true)?;
                self.conn.insert(Conn {
                    stream,
                    buf: Vec::with_capacity(4096),
                })
            }
        };
        conn.stream
            .write_all(&self.request)
            .await
            .context("sending the order")?;
        conn.read_reply().await
    }
}

impl Conn {
    /// Reads one answer: its head, then exactly `Content-Length` bytes.
    async fn read_reply(&mut self) -> anyhow::Result<Reply> {
        self.buf.clear();
        let head_end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at + 4;
            }
            if self.buf.len() > MAX_HEAD {
                bail!("an answer head longer than {MAX_HEAD} bytes");
            }
            self.fill().await?;
        };
        let head =
            std::str::from_utf8(&self.buf[..head_end]).context("an answer head not in UTF-8")?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("not an HTTP/1.1 status line: {status_line:?}"))?;
        let (mut length, mut retry_after, mut close) = (None, false, false);
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line
                .split_once(':')
                .with_context(|| format!("not a header: {line:?}"))?;
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                let n: usize = value
                    .parse()
                    .with_context(|| format!("a Content-Length of {value:?}"))?;
                if n > MAX_BODY {
                    bail!("an answer body of {n} bytes");
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                bail!("an answer framed by Transfer-Encoding: {value}");
            } else if name.eq_ignore_ascii_case("retry-after") {
                retry_after = true;
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        let length = length.with_context(|| format!("a {status} answer without Content-Length"))?;
        while self.buf.len() < head_end + length {
            self.fill().await?;
        }
        if self.buf.len() > head_end + length {
            bail!("more bytes than the answer's Content-Length");
        }
        Ok(Reply {
            status,
            retry_after,
            close,
            body: self.buf.split_off(head_end),
        })
    }

    /// Reads what the socket has into the buffer; an error at its end.
    async fn fill(&mut self) -> anyhow::Result<()> {
        self.buf.reserve(4096);
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            bail!("the api closed the connection mid-answer");
        }
        Ok(())
    }
}

/// What the load makes of an answer, as `Api::order` did with reqwest.
fn classify(reply: &Reply) -> Answer {
    let text = || String::from_utf8_lossy(&reply.body).into_owned();
    let data = match serde_json::from_slice::<Envelope<'_>>(&reply.body) {
        Ok(envelope) => envelope.data,
        Err(e) => return Answer::Error(format!("{}: {e}: {}", reply.status, text())),
    };
    let (id, error) = data.map_or((None, None), |d| (d.id, d.error));
    match (reply.status, id) {
        (200..=299 | 400, Some(id)) => match OrderKey::parse(&id) {
            Some(key) => Answer::Admitted(key),
            None => Answer::Error(format!("{}: not an order id: {}", reply.status, text())),
        },
        (503, _) if error.as_deref() == Some("OVERLOADED") => Answer::Shed {
            retry_after: reply.retry_after,
        },
        _ => Answer::Error(format!("{}: {}", reply.status, text())),
    }
}

/// Bytes of `{"product_id":P,"total":1}`.
fn body_len(product: u64) -> usize {
    let digits = product.checked_ilog10().map_or(1, |d| d as usize + 1);
    r#"{"product_id":,"total":1}"#.len() + digits
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_length_counts_the_product_digits() {
        for product in [0u64, 7, 10, 99, 100, 123_456, u64::MAX] {
            let body = format!("{{\"product_id\":{product},\"total\":1}}");
            assert_eq!(body_len(product), body.len(), "product {product}");
        }
    }

    fn reply(status: u16, retry_after: bool, body: &str) -> Reply {
        Reply {
            status,
            retry_after,
            close: false,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn answers_are_classified_as_the_api_means_them() {
        let id = "0190f3a2-7c1e-7b3d-9a4f-0123456789ab";
        let order = format!(r#"{{"data":{{"id":"{id}","status":"PENDING"}}}}"#);
        assert!(
            matches!(classify(&reply(202, false, &order)), Answer::Admitted(k) if k.to_string() == id)
        );
        assert!(matches!(
            classify(&reply(400, false, &order)),
            Answer::Admitted(_)
        ));
        let shed = r#"{"data":{"error":"OVERLOADED","message":"come back"}}"#;
        assert!(matches!(
            classify(&reply(503, true, shed)),
            Answer::Shed { retry_after: true }
        ));
        let other = r#"{"data":{"error":"VALIDATION_FAILED"}}"#;
        assert!(
            matches!(classify(&reply(422, false, other)), Answer::Error(t) if t.contains("VALIDATION_FAILED"))
        );
        assert!(matches!(
            classify(&reply(202, false, "not json")),
            Answer::Error(_)
        ));
        assert!(matches!(
            classify(&reply(500, false, r#"{"data":null}"#)),
            Answer::Error(_)
        ));
    }

    /// One fake api answer per accepted connection, then the bytes it read.
    async fn serve_once(answer: &'static [u8]) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut got = vec![0u8; 4096];
            let n = socket.read(&mut got).await.unwrap();
            got.truncate(n);
            socket.write_all(answer).await.unwrap();
            got
        });
        (base, task)
    }

    #[tokio::test]
    async fn an_order_is_one_well_formed_request_and_its_answer_is_read_whole() {
        let id = "0190f3a2-7c1e-7b3d-9a4f-0123456789ab";
        let body = format!(r#"{{"data":{{"id":"{id}"}}}}"#);
        let answer: &'static [u8] = format!(
            "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .leak()
        .as_bytes();
        let (base, server) = serve_once(answer).await;
        let credentials = Credentials {
            service: None,
            buyers: Arc::new(vec!["t0".into(), "t1".into()]),
        };
        let client = Client::new(&base, 3, 1, &credentials).unwrap();
        let mut session = client.session();
        assert!(matches!(session.order(42, 5).await, Answer::Admitted(k) if k.to_string() == id));
        let sent = String::from_utf8(server.await.unwrap()).unwrap();
        let (head, sent_body) = sent.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST /api/orders HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nAuthorization: Bearer t1\r\n"), "{head}");
        assert!(head.contains("\r\nPrefer: wait=3"), "{head}");
        assert_eq!(sent_body, r#"{"product_id":42,"total":1}"#);
        assert!(head.contains(&format!("Content-Length: {}\r\n", sent_body.len())));
    }

    #[tokio::test]
    async fn chunked_or_cut_answers_are_errors_and_drop_the_connection() {
        for answer in [
            &b"HTTP/1.1 202 Accepted\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 202 Accepted\r\ncontent-length: 50\r\n\r\n{\"data\":",
            b"HTTP/1.1 202 Accepted\r\n\r\n",
        ] {
            let (base, _server) = serve_once(answer).await;
            let client = Client::new(&base, 0, 1, &Credentials::default()).unwrap();
            let mut session = client.session();
            assert!(matches!(session.order(1, 0).await, Answer::Error(_)));
            assert!(session.conn.is_none());
        }
    }
}
