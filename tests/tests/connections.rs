//! Hostile clients at the connection level: silent sockets by the thousand,
//! idle HTTP/2 connections, headers and bodies trickled a byte a second,
//! 10,000 connections opened and held. Throughout, a fresh client's
//! `/healthz` must answer within a second and a flash sale beside them must
//! keep being decided and lose nothing (the fault suite's checker).
//!
//! The api runs as a process of its own with the default `MAX_CONNECTIONS`
//! (4,096) and `HEADER_READ_TIMEOUT` (10 s). These tests time answers, so
//! they run alone, with the fault suite (`cargo nextest run --profile
//! faults`). The hostile sockets come from 127.0.0.2 to 127.0.0.9, so that
//! their closed connections never use up the ephemeral ports of 127.0.0.1.
//! The test raises its open-file limit to the hard limit (the api does so
//! itself), which must allow about 20,000.

use flashstock_tests::checker::{self, Load, Plan, Sampler, Target};
use flashstock_tests::process::ApiProcess;
use flashstock_tests::{Options, TestApp};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The longest a fresh client's `/healthz` may take, whatever else is going on.
const HEALTHZ_WITHIN: Duration = Duration::from_secs(1);

/// The system under attack: the api as a process, a worker, two products
/// (one that sells out), and a sale running against the api.
struct World {
    app: TestApp,
    api: ApiProcess,
    addr: SocketAddr,
    stock: HashMap<u64, i64>,
    load: Load,
    sampler: Sampler,
}

async fn world() -> World {
    let app = TestApp::spawn(Options::default().env("ORDER_PARTITIONS", "4")).await;
    let api = app.spawn_api_process(&[]).await;
    let addr: SocketAddr = api.address.trim_start_matches("http://").parse().unwrap();
    let mut stock = HashMap::new();
    for (name, units) in [("plenty", 1_000_000), ("scarce", 300)] {
        stock.insert(app.create_product(name, units).await, units);
    }
    let mut products: Vec<u64> = stock.keys().copied().collect();
    products.sort_unstable();
    let sampler = Sampler::start(&app.config.database_url);
    let load = Load::start(
        &Target::new(&api.address),
        Plan {
            products,
            clients: 8,
            pause: Duration::from_millis(10),
            give_up: Duration::from_secs(30),
            lifecycle: false,
        },
    );
    World {
        app,
        api,
        addr,
        stock,
        load,
        sampler,
    }
}

impl World {
    /// Orders decided so far.
    async fn decided(&self) -> i64 {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM orders WHERE status <> 'PENDING'")
            .fetch_one(&self.app.db)
            .await
            .unwrap();
        n
    }

    /// Runs `attack` and then holds what it opened for `period`, while
    /// probing `/healthz` from fresh connections (on a task of its own) the
    /// whole time; checks every probe answered within [`HEALTHZ_WITHIN`] and
    /// that orders were decided meanwhile. Returns what `attack` opened.
    async fn under<T>(&self, what: &str, period: Duration, attack: impl Future<Output = T>) -> T {
        let before = self.decided().await;
        let stop = tokio_util::sync::CancellationToken::new();
        let probe = tokio::spawn(probe(self.addr, stop.clone()));
        let held = attack.await;
        tokio::time::sleep(period).await;
        stop.cancel();
        let (probes, slowest, slow) = probe.await.unwrap();
        let after = self.decided().await;
        eprintln!(
            "hostile report: {what}: {probes} probes, slowest /healthz {} ms, {} orders decided meanwhile",
            slowest.as_millis(),
            after - before
        );
        assert!(
            slow.is_empty(),
            "{what}: /healthz too slow or unanswered: {slow:?}\n{}",
            self.api.log_text()
        );
        assert!(after > before, "{what}: no order was decided meanwhile");
        held
    }

    /// Stops the sale and checks it lost nothing.
    async fn finish(self, fault: &str) {
        let submissions = self.load.stop().await;
        let mut report = checker::check(
            fault,
            &self.app.db,
            &submissions,
            &self.stock,
            self.sampler,
            Duration::from_secs(120),
        )
        .await;
        report
            .check_events(
                &self.app.db,
                &self.app.config.amqp_url,
                &self.app.topology(),
            )
            .await;
        report.assert_holds();
        self.app.assert_invariants().await;
    }
}

/// Probes `/healthz` every 100 ms until `stop`: how many probes, the
/// slowest answer, and every probe that took longer than [`HEALTHZ_WITHIN`]
/// or got no 200 (with when it started).
async fn probe(
    addr: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
) -> (usize, Duration, Vec<(Duration, Option<Duration>)>) {
    let started = Instant::now();
    let (mut probes, mut slowest, mut slow) = (0, Duration::ZERO, Vec::new());
    while !stop.is_cancelled() {
        let at = started.elapsed();
        let took = healthz(addr).await;
        probes += 1;
        match took {
            Some(t) if t < HEALTHZ_WITHIN => slowest = slowest.max(t),
            other => slow.push((at, other)),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (probes, slowest, slow)
}

/// `GET /healthz` on a new connection: how long until a 200 (None: no 200
/// within 5 s).
async fn healthz(addr: SocketAddr) -> Option<Duration> {
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        Some(answer)
    })
    .await
    .ok()??;
    answer
        .starts_with(b"HTTP/1.1 200")
        .then(|| started.elapsed())
}

/// Opens `n` connections to `addr` from 127.0.0.`first_host` onwards (at most
/// 256 connecting at once, as a client on a network would be paced by its
/// round trips), sends each `greeting`, and returns those that connected.
async fn open(
    addr: SocketAddr,
    n: usize,
    first_host: u8,
    greeting: &'static [u8],
) -> Vec<TcpStream> {
    use futures::StreamExt;
    let streams: Vec<TcpStream> = futures::stream::iter(0..n)
        .map(|i| async move {
            let host = first_host + (i / 20_000) as u8;
            let socket = TcpSocket::new_v4().ok()?;
            socket
                .bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, host), 0)))
                .ok()?;
            let mut stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(addr))
                .await
                .ok()?
                .ok()?;
            if !greeting.is_empty() {
                stream.write_all(greeting).await.ok()?;
            }
            Some(stream)
        })
        .buffer_unordered(256)
        .filter_map(|s| async move { s })
        .collect()
        .await;
    streams
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_http2_connections_never_lock_a_client_out() {
    shared::limits::raise_open_files();
    let world = world().await;
    world
        .under("no attack", Duration::from_secs(2), async {})
        .await;

    // The full default MAX_CONNECTIONS of sockets that send nothing, held
    // past HEADER_READ_TIMEOUT.
    let silent = world
        .under(
            "4,096 silent sockets",
            Duration::from_secs(12),
            open(world.addr, 4096, 2, b""),
        )
        .await;
    assert!(silent.len() >= 4000, "only {} connected", silent.len());
    drop(silent);

    // As many idle h2c connections: the preface and an empty SETTINGS frame.
    const H2C: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let h2c = world
        .under(
            "4,096 idle h2c connections",
            Duration::from_secs(4),
            open(world.addr, 4096, 3, H2C),
        )
        .await;
    assert!(h2c.len() >= 4000, "only {} connected", h2c.len());
    drop(h2c);

    world.finish("silent sockets and idle h2c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_requests_and_ten_thousand_held_connections_never_lock_a_client_out() {
    shared::limits::raise_open_files();
    let world = world().await;

    // Slowloris: request heads a byte a second (a header value that never
    // ends) on the full MAX_CONNECTIONS; and on 1,000 more, whole orders
    // whose bodies come two bytes a second and are whole only after the
    // deadline: they must never be acted on (the checker finds any).
    let product = *world.stock.keys().next().unwrap();
    let order = format!(r#"{{"product_id": {product}, "total": 1}}"#);
    let body_head: &'static [u8] = format!(
        "POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        order.len(),
        &order[..1]
    )
    .leak()
    .as_bytes();
    let trickling = tokio_util::sync::CancellationToken::new();
    let (trickle,) = world
        .under(
            "4,096 trickled heads and 1,000 trickled orders",
            Duration::from_secs(15),
            async {
                let heads = open(
                    world.addr,
                    4096,
                    4,
                    b"POST /api/orders HTTP/1.1\r\nHost: x\r\nX-Pad: ",
                )
                .await;
                let bodies = open(world.addr, 1000, 5, body_head).await;
                let trickling = trickling.clone();
                let rest = order.as_bytes()[1..].to_vec();
                let trickle = tokio::spawn(async move {
                    let mut streams: Vec<(TcpStream, Option<usize>)> = heads
                        .into_iter()
                        .map(|s| (s, None))
                        .chain(bodies.into_iter().map(|s| (s, Some(0))))
                        .collect();
                    while !trickling.is_cancelled() {
                        for (stream, sent) in &mut streams {
                            // A head a byte a second; an order's body two,
                            // so it is whole after ~14 s: past the deadline,
                            // within the phase.
                            let bytes: &[u8] = match sent {
                                None => b"a",
                                Some(n) if *n < rest.len() => {
                                    let from = *n;
                                    *n = (from + 2).min(rest.len());
                                    &rest[from..*n]
                                }
                                Some(_) => continue,
                            };
                            let _ = tokio::time::timeout(
                                Duration::from_millis(5),
                                stream.write_all(bytes),
                            )
                            .await;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                });
                (trickle,)
            },
        )
        .await;
    trickling.cancel();
    trickle.await.unwrap();

    // 10,000 connections opened and held (only the newest can be open on
    // the api at once; it closes the others to make room).
    let held = world
        .under(
            "10,000 connections opened and held",
            Duration::from_secs(5),
            open(world.addr, 10_000, 6, b""),
        )
        .await;
    assert!(held.len() >= 9_000, "only {} connected", held.len());
    drop(held);

    // No trickled request was ever acted on: the checker finds no order
    // that the sale's clients did not submit.
    world
        .finish("trickled requests and 10,000 held connections")
        .await;
}
