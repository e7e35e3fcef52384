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
//! framing, a malformed head) is an error, and the connection is closed. A
//! request is never retried: the api may have recorded it, and a retry
//! would be a second order. So a connection the api may have closed (it
//! closes one left idle for `HEADER_READ_TIMEOUT`) is never written to: an
//! idle pooled connection is used only if it is younger than
//! [`MAX_IDLE_AGE`] and the socket shows no end.

use crate::api::{Credentials, OrderKey};
use anyhow::{Context, bail};
use serde::Deserialize;
use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How the api answered one `POST /api/orders`.
#[derive(Debug)]
pub enum Answer {
    /// Recorded: a 2xx carrying the order (or, with `Prefer: wait`, a 400
    /// carrying the rejected order, which was recorded and decided).
    Admitted(OrderKey),
    /// 503 with `data.error` = `OVERLOADED`: shed, nothing recorded.
    Shed {
        /// Whether the answer carried a `Retry-After` header.
        retry_after: bool,
    },
    /// Anything else: transport failure, timeout, another status or body.
    Error(String),
}

/// Largest answer head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest answer body accepted.
const MAX_BODY: usize = 1024 * 1024;
/// Read buffer kept between answers; a larger one is shrunk back.
const KEPT_BUFFER: usize = 8 * 1024;
/// Oldest idle connection reused: well inside the api's idle timeout
/// (`HEADER_READ_TIMEOUT`, 10 s by default).
const MAX_IDLE_AGE: Duration = Duration::from_millis(500);

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
    /// When its last answer was read.
    idle_since: Instant,
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
        let mut session = self.session();
        session.conn = self.take_idle();
        let answer = session.order(product, n).await;
        if let Some(conn) = session.conn.take() {
            self.put_idle(conn);
        }
        answer
    }

    /// Keeps `conn` for a later order, unless the pool is full.
    fn put_idle(&self, conn: Conn) {
        let mut idle = self.inner.idle.lock().expect("pool lock");
        if idle.len() < self.inner.max_idle {
            idle.push(conn);
        }
    }

    /// The most recently used idle connection that is still usable;
    /// older ones are closed.
    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.inner.idle.lock().expect("pool lock");
        // Most recent last: everything below a stale one is older still.
        while let Some(conn) = idle.pop() {
            if conn.reusable() {
                return Some(conn);
            }
            idle.clear();
        }
        None
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
        // A session's own connection is reused at once (closed loop), so
        // its age is checked, not the socket (a system call per order).
        if self
            .conn
            .as_ref()
            .is_some_and(|c| c.idle_since.elapsed() >= MAX_IDLE_AGE)
        {
            self.conn = None;
        }
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
                    idle_since: Instant::now(),
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
    /// Whether a request may be written to it: idle for less than
    /// [`MAX_IDLE_AGE`], and nothing to read (no end of stream from the
    /// api, no stray bytes).
    fn reusable(&self) -> bool {
        self.idle_since.elapsed() < MAX_IDLE_AGE
            && matches!(
                self.stream.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
            )
    }

    /// Reads one answer: its head, then exactly `Content-Length` bytes.
    async fn read_reply(&mut self) -> anyhow::Result<Reply> {
        self.buf.clear();
        if self.buf.capacity() > KEPT_BUFFER {
            self.buf.shrink_to(KEPT_BUFFER);
        }
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
            .filter(|rest| {
                let b = rest.as_bytes();
                b.len() >= 3
                    && b[..3].iter().all(u8::is_ascii_digit)
                    && b.get(3).is_none_or(|&c| c == b' ')
            })
            .and_then(|rest| rest[..3].parse().ok())
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
                if length.is_some_and(|m| m != n) {
                    bail!("two different Content-Lengths");
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                bail!("an answer framed by Transfer-Encoding: {value}");
            } else if name.eq_ignore_ascii_case("retry-after") {
                retry_after = true;
            } else if name.eq_ignore_ascii_case("connection") {
                close |= value
                    .split(',')
                    .any(|token| token.trim().eq_ignore_ascii_case("close"));
            }
        }
        let length = length.with_context(|| format!("a {status} answer without Content-Length"))?;
        while self.buf.len() < head_end + length {
            self.fill().await?;
        }
        // Bytes past the answer belong to no request of ours: the answer
        // stands, the connection goes.
        let stray = self.buf.len() > head_end + length;
        let body = self.buf[head_end..head_end + length].to_vec();
        self.idle_since = Instant::now();
        Ok(Reply {
            status,
            retry_after,
            close: close || stray,
            body,
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

/// What the load makes of an answer, as `Api::order` did with reqwest: a
/// typed read of the envelope, and where that fails (a field of another
/// type, a repeated key), the same read of any JSON value.
fn classify(reply: &Reply) -> Answer {
    let text = || String::from_utf8_lossy(&reply.body).into_owned();
    let (id, error) = match serde_json::from_slice::<Envelope<'_>>(&reply.body) {
        Ok(envelope) => envelope.data.map_or((None, None), |d| (d.id, d.error)),
        Err(e) => match serde_json::from_slice::<serde_json::Value>(&reply.body) {
            Ok(body) => {
                let field = |name: &str| {
                    body["data"][name]
                        .as_str()
                        .map(|s| Cow::Owned(s.to_owned()))
                };
                (field("id"), field("error"))
            }
            Err(_) => return Answer::Error(format!("{}: {e}: {}", reply.status, text())),
        },
    };
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

    const ID: &str = "0190f3a2-7c1e-7b3d-9a4f-0123456789ab";

    /// An answer carrying an order, with `head` lines before the body.
    fn order_answer(head: &str) -> Vec<u8> {
        let body = format!(r#"{{"data":{{"id":"{ID}"}}}}"#);
        format!(
            "HTTP/1.1 202 Accepted\r\n{head}content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// Reads one whole request (head and `Content-Length` body) off `socket`.
    async fn read_request(socket: &mut TcpStream) -> Option<String> {
        let mut got = Vec::new();
        loop {
            if let Some(end) = find(&got, b"\r\n\r\n") {
                let head = String::from_utf8(got[..end].to_vec()).unwrap();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .unwrap()
                    .parse()
                    .unwrap();
                if got.len() >= end + 4 + length {
                    assert_eq!(got.len(), end + 4 + length, "one request at a time");
                    return Some(String::from_utf8(got).unwrap());
                }
            }
            let mut chunk = [0u8; 1024];
            match socket.read(&mut chunk).await.unwrap() {
                0 => return None,
                n => got.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// A fake api: on each connection it accepts, in turn, it answers the
    /// requests with the next answers of `script` (one list per
    /// connection), then closes it. Returns its base URL and a task giving
    /// every request it read, per connection.
    async fn fake_api(
        script: Vec<Vec<Vec<u8>>>,
    ) -> (String, tokio::task::JoinHandle<Vec<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            for answers in script {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut requests = Vec::new();
                for answer in answers {
                    requests.push(read_request(&mut socket).await.unwrap());
                    socket.write_all(&answer).await.unwrap();
                }
                seen.push(requests);
            }
            seen
        });
        (base, task)
    }

    #[tokio::test]
    async fn orders_are_well_formed_requests_on_one_kept_alive_connection() {
        let (base, api) = fake_api(vec![vec![
            order_answer("Content-Type: application/json\r\n"),
            order_answer("X-Extra:  spaced \r\n"),
        ]])
        .await;
        let credentials = Credentials {
            service: None,
            buyers: Arc::new(vec!["t0".into(), "t1".into()]),
        };
        let client = Client::new(&base, 3, 1, &credentials).unwrap();
        let mut session = client.session();
        for (product, n) in [(42, 5), (7, 6)] {
            let answer = session.order(product, n).await;
            assert!(
                matches!(answer, Answer::Admitted(k) if k.to_string() == ID),
                "{answer:?}"
            );
        }
        let seen = api.await.unwrap();
        assert_eq!(seen.len(), 1, "both orders on one connection");
        let host = base.trim_start_matches("http://");
        for (request, (product, token)) in seen[0].iter().zip([(42, "t1"), (7, "t0")]) {
            let (head, body) = request.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with("POST /api/orders HTTP/1.1\r\n"), "{head}");
            assert!(head.contains(&format!("\r\nHost: {host}\r\n")), "{head}");
            assert!(
                head.contains(&format!("\r\nAuthorization: Bearer {token}\r\n")),
                "{head}"
            );
            assert!(head.ends_with("\r\nPrefer: wait=3"), "{head}");
            assert_eq!(body, format!(r#"{{"product_id":{product},"total":1}}"#));
        }
    }

    #[tokio::test]
    async fn misframed_answers_are_errors_and_drop_the_connection() {
        // Each carries an order: a client that misread its framing would
        // count it admitted.
        let body = format!(r#"{{"data":{{"id":"{ID}"}}}}"#);
        for answer in [
            format!(
                "HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            ),
            format!("HTTP/1.1 202 Accepted\r\n\r\n{body}"),
            format!(
                "HTTP/1.1 202 Accepted\r\ncontent-length: {}\r\ncontent-length: 2\r\n\r\n{body}",
                body.len()
            ),
            format!(
                "HTTP/1.1 2020 Accepted\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            ),
            format!(
                "HTTP/1.1 202 Accepted\r\ncontent-length: {}\r\n\r\n{}",
                body.len() + 1,
                body
            ),
        ] {
            let (base, _api) = fake_api(vec![vec![answer.clone().into_bytes()]]).await;
            let client = Client::new(&base, 0, 1, &Credentials::default()).unwrap();
            let mut session = client.session();
            let got = session.order(1, 0).await;
            assert!(matches!(got, Answer::Error(_)), "{answer:?} gave {got:?}");
            assert!(session.conn.is_none());
        }
    }

    #[tokio::test]
    async fn an_answer_with_stray_bytes_or_connection_close_stands_and_drops_the_connection() {
        let mut stray = order_answer("");
        stray.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        for answer in [stray, order_answer("Connection: keep-alive, Close\r\n")] {
            let (base, _api) = fake_api(vec![vec![answer]]).await;
            let client = Client::new(&base, 0, 1, &Credentials::default()).unwrap();
            let mut session = client.session();
            assert!(matches!(session.order(1, 0).await, Answer::Admitted(_)));
            assert!(session.conn.is_none());
        }
    }

    #[tokio::test]
    async fn a_pooled_connection_the_api_closed_is_not_written_to() {
        // The first connection answers once and is closed by the api; the
        // second order must go on a new connection, not be lost on the old.
        let (base, api) = fake_api(vec![vec![order_answer("")], vec![order_answer("")]]).await;
        let client = Client::new(&base, 0, 4, &Credentials::default()).unwrap();
        assert!(matches!(
            client.order_pooled(1, 0).await,
            Answer::Admitted(_)
        ));
        // Let the close reach this side.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(matches!(
            client.order_pooled(1, 1).await,
            Answer::Admitted(_)
        ));
        let seen = api.await.unwrap();
        assert_eq!(seen.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1]);
    }

    #[tokio::test]
    async fn the_pool_keeps_at_most_its_limit() {
        let client = Client::new("http://127.0.0.1:1", 0, 2, &Credentials::default()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for _ in 0..3 {
            client.put_idle(Conn {
                stream: TcpStream::connect(addr).await.unwrap(),
                buf: Vec::new(),
                idle_since: Instant::now(),
            });
        }
        assert_eq!(client.inner.idle.lock().unwrap().len(), 2);
        // An idle connection past MAX_IDLE_AGE is closed, not reused.
        client.inner.idle.lock().unwrap()[1].idle_since -= MAX_IDLE_AGE;
        assert!(client.take_idle().is_none());
        assert!(client.inner.idle.lock().unwrap().is_empty());
    }

    #[test]
    fn a_shed_answer_needs_the_overloaded_code() {
        let shed = r#"{"data":{"error":"OVERLOADED"}}"#;
        assert!(matches!(
            classify(&reply(503, false, shed)),
            Answer::Shed { retry_after: false }
        ));
        let down = r#"{"data":{"error":"SERVICE_UNAVAILABLE"}}"#;
        assert!(matches!(
            classify(&reply(503, true, down)),
            Answer::Error(_)
        ));
        // A field of another type: read as the old client read it.
        let odd = r#"{"data":{"error":"OVERLOADED","id":7}}"#;
        assert!(matches!(
            classify(&reply(503, true, odd)),
            Answer::Shed { .. }
        ));
    }
}
