//! Several database servers in `DATABASE_URL` (a primary and its replicas,
//! as an orchestrator runs them): every connection goes to the one server
//! that is writable.
//!
//! `mysql://user:pass@db1:3306/flashstock,db2,db3:3307` lists three servers:
//! the first entry a whole URL, the others `host[:port]` taking everything
//! else from it (the shape of `AMQP_URL`; a comma in the password is
//! `%2C`). A value whose later entries are not all `host[:port]` is one URL,
//! used as it always was, like a single server (a proxy or a cloud endpoint
//! that moves by itself).
//!
//! With several, the process runs a [`Router`]: a TCP forwarder on
//! 127.0.0.1 that the pool connects to, which sends each new connection to
//! the current primary, the one server with `read_only` off. A watcher asks
//! every server every [`WATCH`]; the primary is given up (every connection
//! forwarded to it cut, so the pool reconnects through the router to the
//! next one, found with backoff) when it turns read-only, fails to answer
//! [`MISSES`] rounds in a row, or another server is writable too. While two
//! are writable none is used and an error is logged: a guess could send
//! decisions to a stale primary. A server that does not answer counts as not
//! writable, so an old primary that is alive but unreachable from here
//! cannot be seen: fencing it (stopping it, or `read_only`) before promoting
//! remains the orchestrator's job.

use futures::future::join_all;
use sqlx::mysql::MySqlConnectOptions;
use sqlx::{ConnectOptions, Connection, MySqlConnection};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often every server's `read_only` is read.
const WATCH: Duration = Duration::from_millis(500);
/// Rounds in a row the primary may fail to answer before it is given up.
const MISSES: u32 = 2;
/// The longest one server may take to say whether it is writable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a forwarded connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a new connection waits for a primary before it is refused.
const FIND_FOR: Duration = Duration::from_secs(5);
/// Least time between two "several writable" errors in the log.
const COMPLAIN_EVERY: Duration = Duration::from_secs(10);

/// The servers `DATABASE_URL` lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Servers {
    /// The first entry, a whole URL.
    pub url: String,
    /// Every server, `(host, port)`, in the order listed.
    pub hosts: Vec<(String, u16)>,
}

impl Servers {
    /// Reads `DATABASE_URL`: several servers when every entry after the
    /// first is `host[:port]`; otherwise (`None`) one URL, as it is. Errors
    /// never repeat the value: it holds a password.
    pub fn parse(value: &str) -> Result<Option<Self>, String> {
        let entries: Vec<&str> = value.split(',').map(str::trim).collect();
        let several = entries.len() > 1
            && entries[1..]
                .iter()
                .all(|e| !e.contains(['/', '@', '?']) && host_port(e).is_some());
        if !several {
            return Ok(None);
        }
        let url = entries[0].to_owned();
        let first = authority(&url).ok_or_else(|| {
            "the first entry is not a mysql://[user[:password]@]host[:port]/database URL \
             (with several servers, IPv6 addresses are not supported)"
                .to_owned()
        })?;
        let mut hosts = vec![first];
        hosts.extend(entries[1..].iter().filter_map(|e| host_port(e)));
        // One server listed twice would be seen writable twice, and so
        // never used: say so at start instead.
        for (i, (host, port)) in hosts.iter().enumerate() {
            if hosts[..i]
                .iter()
                .any(|(h, p)| h.eq_ignore_ascii_case(host) && p == port)
            {
                return Err(format!("{host}:{port} is listed twice"));
            }
        }
        Ok(Some(Self { url, hosts }))
    }

    /// The first URL with its host and port replaced by `addr`.
    pub fn url_at(&self, addr: SocketAddr) -> String {
        let (scheme, rest) = self.url.split_at(self.url.find("://").map_or(0, |i| i + 3));
        let start = userinfo_end(rest);
        let end = rest[start..]
            .find(['/', '?'])
            .map_or(rest.len(), |i| start + i);
        format!("{scheme}{}{addr}{}", &rest[..start], &rest[end..])
    }
}

/// Where the host starts in what follows `scheme://`: after the last `@`
/// before the path (a password may hold one).
fn userinfo_end(rest: &str) -> usize {
    let path = rest.find(['/', '?']).unwrap_or(rest.len());
    rest[..path].rfind('@').map_or(0, |i| i + 1)
}

/// The host and port of a `mysql://` URL (3306 when none is given).
fn authority(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("mysql://")
        .or_else(|| url.strip_prefix("mariadb://"))?;
    let start = userinfo_end(rest);
    let end = rest[start..]
        .find(['/', '?'])
        .map_or(rest.len(), |i| start + i);
    host_port(&rest[start..end])
}

/// `host[:port]`, 3306 by default; not an IPv6 address.
fn host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().ok()?),
        None => (text, 3306),
    };
    let plain = !host.is_empty() && !host.contains([':', '[', ']', '@', '/', ' ']);
    plain.then(|| (host.to_owned(), port))
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
    /// Credentials and options for asking each server.
    options: MySqlConnectOptions,
    hosts: Vec<(String, u16)>,
    /// The current primary; its token cuts the connections forwarded to it.
    primary: Mutex<Option<Primary>>,
    /// When "several writable" was last logged.
    complained: std::sync::Mutex<Option<Instant>>,
}

#[derive(Debug, Clone)]
struct Primary {
    index: usize,
    cut: CancellationToken,
}

/// What a server said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Writable,
    ReadOnly,
    Silent,
}

impl Router {
    /// Starts forwarding to the writable one of `servers`, for as long as
    /// the process runs (one per process: [`super::connect`] is called
    /// once); `options` (the first URL's) carry the credentials it asks each
    /// server with.
    pub async fn start(servers: &Servers, options: MySqlConnectOptions) -> std::io::Result<Router> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            options,
            hosts: servers.hosts.clone(),
            primary: Mutex::new(None),
            complained: std::sync::Mutex::new(None),
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
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), *port)));
    let mut server = tokio::select! {
        connected = connect => match connected {
            Ok(Ok(server)) => server,
            failed => {
                let error = failed.map_or_else(|_| "timed out".to_owned(), |r| r.err().map(|e| e.to_string()).unwrap_or_default());
                tracing::warn!(error, host, port, "database router: could not reach the primary");
                shared.give_up(&primary).await;
                return;
            }
        },
        () = primary.cut.cancelled() => return,
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        () = primary.cut.cancelled() => {}
    }
}

/// Asks every server every [`WATCH`]; gives the primary up when it turned
/// read-only, stayed silent [`MISSES`] rounds, or another is writable too.
async fn watch(shared: Arc<Shared>) {
    let mut misses = 0;
    loop {
        tokio::time::sleep(WATCH).await;
        let Some(primary) = shared.primary.lock().await.clone() else {
            misses = 0;
            continue;
        };
        let states = shared.ask_all().await;
        misses = match states[primary.index] {
            State::Silent => misses + 1,
            _ => 0,
        };
        let others_writable = states
            .iter()
            .enumerate()
            .any(|(i, s)| i != primary.index && *s == State::Writable);
        if states[primary.index] == State::ReadOnly || misses >= MISSES || others_writable {
            if others_writable {
                shared.complain(&states);
            }
            shared.give_up(&primary).await;
            misses = 0;
        }
    }
}

impl Shared {
    /// The primary, found if need be, retrying with backoff for up to `wait`.
    async fn primary_within(&self, wait: Duration) -> Option<Primary> {
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(50);
        loop {
            if let Some(primary) = self.primary().await {
                return Some(primary);
            }
            if Instant::now() + pause > deadline {
                return None;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// The current primary, or the one writable server if there is exactly
    /// one. One search at a time (under the lock), every server asked at
    /// once: a search takes at most [`PROBE_TIMEOUT`].
    async fn primary(&self) -> Option<Primary> {
        let mut current = self.primary.lock().await;
        if let Some(primary) = current.as_ref() {
            return Some(primary.clone());
        }
        let states = self.ask_all().await;
        let writable: Vec<usize> = (0..states.len())
            .filter(|i| states[*i] == State::Writable)
            .collect();
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
            _ => {
                self.complain(&states);
                None
            }
        }
    }

    /// Logs, at most every [`COMPLAIN_EVERY`], that several servers are writable.
    fn complain(&self, states: &[State]) {
        let mut last = self.complained.lock().expect("complaint lock");
        if last.is_some_and(|at| at.elapsed() < COMPLAIN_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        let writable: Vec<String> = states
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == State::Writable)
            .map(|(i, _)| format!("{}:{}", self.hosts[i].0, self.hosts[i].1))
            .collect();
        tracing::error!(
            servers = ?writable,
            "several database servers are writable: using none until all but one are read-only (SET GLOBAL read_only = 1 on the stale one)"
        );
    }

    /// Gives `primary` up, if it still is the primary: cuts every
    /// connection forwarded to it.
    async fn give_up(&self, primary: &Primary) {
        let mut current = self.primary.lock().await;
        let same = current.as_ref().is_some_and(|p| p.cut.eq(&primary.cut));
        if same && let Some(gone) = current.take() {
            let (host, port) = &self.hosts[gone.index];
            tracing::warn!(host, port, "database primary given up: finding the next");
            gone.cut.cancel();
        }
    }

    /// What every server says, asked at once.
    async fn ask_all(&self) -> Vec<State> {
        join_all((0..self.hosts.len()).map(|i| self.ask(i))).await
    }

    /// Whether server `index` is writable.
    async fn ask(&self, index: usize) -> State {
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
            let writable = is_writable(&mut conn).await.ok();
            let _ = conn.close().await;
            writable
        };
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Some(true)) => State::Writable,
            Ok(Some(false)) => State::ReadOnly,
            _ => State::Silent,
        }
    }
}

/// Whether the server `conn` is on takes writes: `read_only` off (read as
/// text: MariaDB 12 makes it an enum, `OFF` or `ON`, `NO_LOCK`, …).
pub async fn is_writable(conn: &mut MySqlConnection) -> Result<bool, sqlx::Error> {
    let (read_only,): (String,) = sqlx::query_as("SELECT CAST(@@GLOBAL.read_only AS CHAR)")
        .fetch_one(conn)
        .await?;
    Ok(matches!(read_only.as_str(), "0" | "OFF"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_listed_as_amqp_url_lists_nodes() {
        let s = Servers::parse("mysql://u:p@db1:3307/flashstock?ssl-mode=DISABLED, db2,db3:3308")
            .unwrap()
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
        // A password with an @ (its last one ends the user's part).
        let s = Servers::parse("mysql://u:p@ss@db1/f,db2").unwrap().unwrap();
        assert_eq!(s.hosts[0], ("db1".into(), 3306));
        assert_eq!(
            s.url_at("127.0.0.1:1".parse().unwrap()),
            "mysql://u:p@ss@127.0.0.1:1/f"
        );
    }

    #[test]
    fn anything_else_is_one_url_as_before() {
        for one in [
            "mysql://root@127.0.0.1/flashstock",
            // A raw comma in a password: the rest is not a host.
            "mysql://app:12,secret@db1/fs",
            "mysql://app:ab,cd@db1:3306/fs",
            "mysql://[::1]/flashstock",
            "mysql:///flashstock?socket=/run/mysqld/mysqld.sock",
        ] {
            assert_eq!(Servers::parse(one), Ok(None), "{one}");
        }
        // Several servers, but the first cannot be read: the error names
        // no part of the value.
        let err = Servers::parse("mysql://u:s3cret@[::1]/f,db2").unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn a_server_listed_twice_is_refused() {
        for twice in ["mysql://u:p@db1/f,DB1:3306", "mysql://u:p@db1/f,db2,db2"] {
            let err = Servers::parse(twice).unwrap_err();
            assert!(
                err.contains("listed twice") && !err.contains(":p@"),
                "{err}"
            );
        }
        assert!(Servers::parse("mysql://u:p@db1/f,db1:3307").is_ok());
    }
}
