//! Several database servers in `DATABASE_URL` (a primary and its replicas,
//! as an orchestrator runs them): every connection goes to the one server
//! that is writable, and moves when another becomes so.
//!
//! `mysql://user:pass@db1:3306/flashstock,db2,db3:3307` lists three servers:
//! the first entry a whole URL, the others `host[:port]` taking everything
//! else from it (the shape of `AMQP_URL`). A single server is used as it is
//! (a proxy or a cloud endpoint that moves by itself).
//!
//! With several, the process runs a [`Router`]: a TCP forwarder on
//! 127.0.0.1 that the pool connects to, which sends each new connection to
//! the current primary. The primary is the server with `@@read_only = 0`;
//! when two are writable (an old primary started writable by mistake next
//! to the promoted one), none is chosen, an error is logged, and the
//! database is unavailable until an operator makes one read-only: a guess
//! could send decisions to the stale one. A watcher reads the primary's
//! `@@read_only` every [`WATCH`]; when it cannot, or the server turned
//! read-only, every connection forwarded to it is cut, so the pool
//! reconnects through the router to the next primary, found with backoff.

use sqlx::mysql::MySqlConnectOptions;
use sqlx::{ConnectOptions, Connection};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// How often the primary's `@@read_only` is read.
const WATCH: Duration = Duration::from_millis(500);
/// The longest one server may take to answer whether it is writable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a new connection waits for a primary before it is refused.
const FIND_FOR: Duration = Duration::from_secs(5);

/// The servers `DATABASE_URL` lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Servers {
    /// The first entry, a whole URL.
    pub url: String,
    /// Every server, `(host, port)`, in the order listed.
    pub hosts: Vec<(String, u16)>,
}

impl Servers {
    /// Reads `DATABASE_URL`.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut entries = value.split(',').map(str::trim);
        let url = entries.next().unwrap_or_default().to_owned();
        let (host, port) = authority(&url)
            .ok_or_else(|| format!("{:?} is not a mysql://host URL", redact(&url)))?;
        let mut hosts = vec![(host, port)];
        for entry in entries {
            if entry.is_empty() || entry.contains(['/', '@', '?']) {
                return Err(format!(
                    "{entry:?}: after the first URL, list servers as host[:port]"
                ));
            }
            hosts.push(host_port(entry).ok_or_else(|| format!("{entry:?} is not host[:port]"))?);
        }
        Ok(Self { url, hosts })
    }

    /// The first URL with its host and port replaced by `addr`.
    pub fn url_at(&self, addr: SocketAddr) -> String {
        let (scheme, rest) = self.url.split_at(self.url.find("://").map_or(0, |i| i + 3));
        let start = rest.find('@').map_or(0, |i| i + 1);
        let end = rest[start..]
            .find(['/', '?'])
            .map_or(rest.len(), |i| start + i);
        format!("{scheme}{}{addr}{}", &rest[..start], &rest[end..])
    }
}

/// The host and port of a `mysql://` URL (3306 when none is given).
fn authority(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("mysql://")
        .or_else(|| url.strip_prefix("mariadb://"))?;
    let start = rest.find('@').map_or(0, |i| i + 1);
    let end = rest[start..]
        .find(['/', '?'])
        .map_or(rest.len(), |i| start + i);
    host_port(&rest[start..end])
}

/// `host[:port]`, 3306 by default.
fn host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().ok()?),
        None => (text, 3306),
    };
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// `url` with its password hidden.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if s < at => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

/// The forwarder to the current primary.
#[derive(Debug)]
pub struct Router {
    /// Where the pool connects.
    pub addr: SocketAddr,
}

/// What the forwarder and the watcher share.
#[derive(Debug)]
struct Shared {
    /// Credentials and options for probing each server.
    options: MySqlConnectOptions,
    hosts: Vec<(String, u16)>,
    /// The current primary and the token that cuts its connections.
    primary: Mutex<Option<Primary>>,
}

#[derive(Debug, Clone)]
struct Primary {
    index: usize,
    cut: CancellationToken,
}

impl Router {
    /// Starts forwarding to the writable one of `servers`, for as long as
    /// the process runs; `options` (the first URL's) carry the credentials
    /// it asks each server with.
    pub async fn start(servers: &Servers, options: MySqlConnectOptions) -> std::io::Result<Router> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            options,
            hosts: servers.hosts.clone(),
            primary: Mutex::new(None),
        });
        tokio::spawn(watch(shared.clone()));
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((client, _)) => {
                        tokio::spawn(forward(shared.clone(), client));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "database router: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(Router { addr })
    }
}

/// One client connection, spliced to the current primary until either side
/// closes or the primary is given up.
async fn forward(shared: Arc<Shared>, mut client: TcpStream) {
    let Some(primary) = shared.primary_within(FIND_FOR).await else {
        return;
    };
    let (host, port) = &shared.hosts[primary.index];
    let mut server = match TcpStream::connect((host.as_str(), *port)).await {
        Ok(server) => server,
        Err(e) => {
            tracing::warn!(error = %e, host, port, "database router: the primary refused a connection");
            shared.give_up(primary.index).await;
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        () = primary.cut.cancelled() => {}
    }
}

/// Reads the primary's `@@read_only` every [`WATCH`]; gives it up when it
/// does not answer or turned read-only.
async fn watch(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(WATCH).await;
        let current = shared.primary.lock().await.clone();
        let Some(primary) = current else {
            continue;
        };
        if shared.probe(primary.index).await != Some(false) {
            shared.give_up(primary.index).await;
        }
    }
}

impl Shared {
    /// The primary, found if need be, retrying with backoff for up to `wait`.
    async fn primary_within(&self, wait: Duration) -> Option<Primary> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(50);
        loop {
            if let Some(primary) = self.primary().await {
                return Some(primary);
            }
            if tokio::time::Instant::now() + pause > deadline {
                return None;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// The current primary, or the one writable server if there is exactly
    /// one (probed under the lock: one search at a time).
    async fn primary(&self) -> Option<Primary> {
        let mut current = self.primary.lock().await;
        if let Some(primary) = current.as_ref() {
            return Some(primary.clone());
        }
        let mut writable = Vec::new();
        for index in 0..self.hosts.len() {
            if self.probe(index).await == Some(false) {
                writable.push(index);
            }
        }
        match writable.as_slice() {
            [index] => {
                let (host, port) = &self.hosts[*index];
                tracing::info!(host, port, "database primary found");
                let primary = Primary {
                    index: *index,
                    cut: CancellationToken::new(),
                };
                *current = Some(primary.clone());
                Some(primary)
            }
            [] => None,
            several => {
                let names: Vec<String> = several
                    .iter()
                    .map(|i| format!("{}:{}", self.hosts[*i].0, self.hosts[*i].1))
                    .collect();
                tracing::error!(
                    servers = ?names,
                    "several database servers are writable: using none until all but one are read-only (SET GLOBAL read_only = 1 on the stale one)"
                );
                None
            }
        }
    }

    /// Gives up server `index` as primary, if it still is: cuts every
    /// connection forwarded to it.
    async fn give_up(&self, index: usize) {
        let mut current = self.primary.lock().await;
        if current.as_ref().is_some_and(|p| p.index == index) {
            let (host, port) = &self.hosts[index];
            tracing::warn!(
                host,
                port,
                "database primary lost or read-only: finding the next"
            );
            if let Some(primary) = current.take() {
                primary.cut.cancel();
            }
        }
    }

    /// Whether server `index` is read-only; `None` when it does not answer.
    async fn probe(&self, index: usize) -> Option<bool> {
        let (host, port) = &self.hosts[index];
        // A database every user may read: flashstock's may not exist yet.
        let options = self
            .options
            .clone()
            .host(host)
            .port(*port)
            .database("information_schema");
        let probe = async {
            let mut conn = options.connect().await.ok()?;
            let (read_only,): (i64,) = sqlx::query_as("SELECT @@GLOBAL.read_only")
                .fetch_one(&mut conn)
                .await
                .ok()?;
            let _ = conn.close().await;
            Some(read_only != 0)
        };
        tokio::time::timeout(PROBE_TIMEOUT, probe)
            .await
            .ok()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_listed_as_amqp_url_lists_nodes() {
        let s = Servers::parse("mysql://u:p@db1:3307/flashstock?ssl-mode=DISABLED, db2,db3:3308")
            .unwrap();
        assert_eq!(
            s.hosts,
            [
                ("db1".into(), 3307),
                ("db2".into(), 3306),
                ("db3".into(), 3308)
            ]
        );
        assert_eq!(
            s.url_at("127.0.0.1:4000".parse().unwrap()),
            "mysql://u:p@127.0.0.1:4000/flashstock?ssl-mode=DISABLED"
        );
        let one = Servers::parse("mysql://root@127.0.0.1/flashstock").unwrap();
        assert_eq!(one.hosts, [("127.0.0.1".into(), 3306)]);
        for bad in [
            "postgres://x/y",
            "mysql://u:p@db1/f,db2/other",
            "mysql://a/f,,b",
            "mysql://a/f,b:port",
        ] {
            let err = Servers::parse(bad).unwrap_err();
            assert!(!err.contains(":p@"), "{err}");
        }
    }
}
