//! Past one database server: `DATABASE_URL` listing a primary and its
//! semi-synchronous replica (tests/src/mariadb.rs), the primary killed
//! while writes run, the replica promoted as an orchestrator would.
//! Run with the fault profile (`cargo nextest run --profile faults`): each
//! test starts two MariaDB servers of its own.

use flashstock_tests::checker::{self, Load, Plan, Report, Sampler, Target};
use flashstock_tests::mariadb::Replicated;
use flashstock_tests::process::{Process, WorkerProcess};
use flashstock_tests::{Options, TestApp};
use reqwest::StatusCode;
use serde_json::Value;
use shared::{Config, fault};
use sqlx::MySqlPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long the backlog may take to drain once the fault is healed.
const DRAIN: Duration = Duration::from_secs(120);
/// How long progress may stall while a fault is on.
const PROGRESS: Duration = Duration::from_secs(60);

/// A configuration whose `DATABASE_URL` is `url`.
fn config(url: &str) -> Config {
    let url = url.to_owned();
    Config::from_lookup(move |name| (name == "DATABASE_URL").then(|| url.clone()))
        .expect("the configuration")
}

/// The server a pooled connection is on.
async fn server_id(pool: &MySqlPool) -> Result<u32, sqlx::Error> {
    let (id,): (u32,) = sqlx::query_as("SELECT @@server_id").fetch_one(pool).await?;
    Ok(id)
}

/// Connections go only to the writable server, wherever the URL lists it;
/// killed, its replica promoted 2 s later, they move there, and every write
/// the primary acknowledged is on the new primary (semi-sync AFTER_SYNC).
/// An old primary started writable by mistake next to the new one receives
/// nothing: a process that must choose between two writable servers
/// chooses neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_the_primary_through_a_promotion_and_lose_nothing_acknowledged() {
    let mut servers = Replicated::start(true).await;
    // The replica listed first: order does not choose the primary.
    let url = servers.url("flashstock_failover", 1);
    let pool = shared::db::connect(&config(&url))
        .await
        .expect("connects through the router");
    assert_eq!(
        server_id(&pool).await.unwrap(),
        1,
        "the primary, not the replica"
    );
    sqlx::query("CREATE TABLE writes (n INT UNSIGNED NOT NULL PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();

    // Writes one row at a time, noting each one the database acknowledged,
    // and when.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (pool, stop) = (pool.clone(), stop.clone());
        async move {
            let mut acknowledged = Vec::new();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                match sqlx::query("INSERT INTO writes (n) VALUES (?)")
                    .bind(n)
                    .execute(&pool)
                    .await
                {
                    Ok(_) => acknowledged.push((n, Instant::now())),
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            acknowledged
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        servers.semi_sync_status(0),
        "ON",
        "the primary waits for its replica"
    );
    servers.kill(0);
    let killed = Instant::now();
    const PROMOTION_DELAY: Duration = Duration::from_secs(2);
    tokio::time::sleep(PROMOTION_DELAY).await;
    servers.promote(1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while server_id(&pool).await.ok() != Some(2) {
        assert!(
            Instant::now() < deadline,
            "the pool never reached the new primary"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let acknowledged = writer.await.unwrap();
    let first_after = acknowledged
        .iter()
        .map(|(_, at)| *at)
        .find(|at| *at > killed)
        .expect("writes resumed after the kill");
    let recovered = first_after.saturating_duration_since(killed + PROMOTION_DELAY);
    eprintln!(
        "failover: {} writes acknowledged; the first on the new primary {} ms after the kill, the promotion delay (2 s) subtracted",
        acknowledged.len(),
        recovered.as_millis()
    );
    assert!(recovered < Duration::from_secs(5), "{recovered:?}");
    let acknowledged: Vec<u32> = acknowledged.into_iter().map(|(n, _)| n).collect();
    let stored: Vec<(u32,)> = sqlx::query_as("SELECT n FROM writes")
        .fetch_all(&pool)
        .await
        .unwrap();
    let stored: std::collections::HashSet<u32> = stored.into_iter().map(|(n,)| n).collect();
    let lost: Vec<&u32> = acknowledged
        .iter()
        .filter(|n| !stored.contains(n))
        .collect();
    assert!(lost.is_empty(), "acknowledged, then lost: {lost:?}");

    // The old primary back, writable by mistake: the running pool reaches
    // the promoted one or, once its watcher sees two writable servers,
    // none (never the stale one); a new process refuses to choose.
    servers.restart(0, false);
    let stale = servers.query(0, "SELECT @@gtid_binlog_pos");
    for _ in 0..10 {
        let asked = tokio::time::timeout(Duration::from_millis(300), async {
            let conn = pool.acquire().await?;
            drop(conn.detach());
            server_id(&pool).await
        });
        if let Ok(Ok(id)) = asked.await {
            assert_eq!(id, 2, "a connection to the stale primary");
        }
    }
    let started = Instant::now();
    let refused = tokio::time::timeout(Duration::from_secs(30), shared::db::connect(&config(&url)))
        .await
        .expect("gives up");
    assert!(refused.is_err(), "chose one of two writable servers");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(
        servers.query(0, "SELECT @@gtid_binlog_pos"),
        stale,
        "the old primary received writes"
    );
    // Fenced by the operator: the old primary read-only, a new process
    // finds the promoted one.
    servers.query(0, "SET GLOBAL read_only = 1");
    let again = shared::db::connect(&config(&url))
        .await
        .expect("connects once one server is writable");
    assert_eq!(server_id(&again).await.unwrap(), 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server_id(&pool).await.ok() != Some(2) {
        assert!(
            Instant::now() < deadline,
            "the running pool did not come back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The whole system on `servers` (server 0 the primary): the api, two
/// worker processes sharing the partitions (leases move between them when
/// one loses its database), products (two that never sell out and two that
/// do), and reservations that expire after `ttl` (2 s under load, so the
/// sweeper runs too).
async fn system_on(
    servers: &Replicated,
    ttl: &str,
) -> (TestApp, HashMap<u64, i64>, Vec<WorkerProcess>, String) {
    let name = format!(
        "fs_test_failover_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let app = TestApp::spawn(
        Options::default()
            .workers(0)
            .env("DATABASE_URL", servers.url(&name, 0))
            .env("ORDER_PARTITIONS", "8")
            .env("HEARTBEAT_INTERVAL", "200ms")
            .env("LEASE_DURATION", "1s")
            .env("RESERVATION_TTL", ttl),
    )
    .await;
    let mut stock = HashMap::new();
    for (i, units) in [1_000_000, 1_000_000, 150, 150].into_iter().enumerate() {
        stock.insert(
            app.create_product(&format!("failover {i}"), units).await,
            units,
        );
    }
    let workers = vec![app.spawn_worker_process(), app.spawn_worker_process()];
    app.wait_for_owners(|l| l.len() == 2).await;
    (app, stock, workers, name)
}

/// Starts 16 clients placing orders on every product, and a closer that
/// pays, cancels or leaves to expire the orders they get accepted.
fn load_on(app: &TestApp, stock: &HashMap<u64, i64>) -> Load {
    let mut products: Vec<u64> = stock.keys().copied().collect();
    products.sort_unstable();
    Load::start(
        &Target::new(&app.address),
        Plan {
            products,
            clients: 16,
            pause: Duration::from_millis(5),
            give_up: Duration::from_secs(30),
            lifecycle: true,
        },
    )
}

/// How long after the kill the orchestrator promotes the replica.
const PROMOTION_DELAY: Duration = Duration::from_secs(2);

/// The primary killed (SIGKILL) under load, the replica promoted
/// [`PROMOTION_DELAY`] later. `semi_sync`: whether the primary waited for
/// its replica at each commit. `behind`: for that long before the kill the
/// replica received nothing (its I/O thread stopped), as a replica across a
/// slow link falls behind; on one machine it otherwise never is. The report,
/// and the time from the kill to the first decision on the new primary, the
/// promotion delay subtracted.
async fn primary_killed(
    semi_sync: bool,
    behind: Duration,
) -> (Report, Duration, Replicated, String) {
    let mut servers = Replicated::start(semi_sync).await;
    let (app, stock, _worker, name) = system_on(&servers, "2s").await;
    // Samples on the replica, which becomes the primary.
    let sampler = Sampler::start(&format!("{}/{name}", servers.server_url(1)));
    let load = load_on(&app, &stock);
    load.wait_for_more(500, PROGRESS).await;
    let expected = if semi_sync { "ON" } else { "OFF" };
    assert_eq!(servers.semi_sync_status(0), expected);
    if !behind.is_zero() {
        servers.query(1, "STOP SLAVE IO_THREAD");
        tokio::time::sleep(behind).await;
    }
    servers.kill(0);
    let killed = chrono::Utc::now();
    tokio::time::sleep(PROMOTION_DELAY).await;
    servers.promote(1);
    load.wait_for_more(500, PROGRESS).await;
    let (first,): (Option<chrono::DateTime<chrono::Utc>>,) =
        // A worker's decision: the api rejects sold-out orders on the spot.
        sqlx::query_as(
            "SELECT MIN(decided_at) FROM orders WHERE decided_at > ? AND decided_by <> 'api'",
        )
            .bind(killed)
            .fetch_one(&app.db)
            .await
            .expect("reading the new primary");
    let first = first.expect("decisions on the new primary");
    let recovered = (first - killed - chrono::TimeDelta::from_std(PROMOTION_DELAY).unwrap())
        .to_std()
        .unwrap_or_default();
    let fault = format!(
        "MariaDB primary killed (semi-sync {expected}, the replica {} ms behind), the replica promoted after 2 s",
        behind.as_millis()
    );
    // Without semi-sync some orders stay PENDING for good (decided on the
    // lost primary, their messages acknowledged): no use waiting long.
    let drain = if semi_sync {
        DRAIN
    } else {
        Duration::from_secs(10)
    };
    (
        checker::check_after(&fault, &app, load, sampler, &stock, drain).await,
        recovered,
        servers,
        name,
    )
}

/// The whole system on a primary and its semi-synchronous replica, under
/// load: the primary killed (SIGKILL), the replica promoted 2 s later. The
/// checker finds nothing lost, duplicated, oversold or decided twice, every
/// answer honest, and the leases moved on without two owners; the first
/// decision on the new primary comes within 5 s of the promotion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_is_replaced_and_nothing_is_lost() {
    let (report, recovered, mut servers, name) = primary_killed(true, Duration::ZERO).await;
    eprintln!(
        "failover: the first decision on the new primary {} ms after the kill, the promotion delay (2 s) subtracted",
        recovered.as_millis()
    );
    report.assert_holds();
    assert!(recovered < Duration::from_secs(5), "{recovered:?}");

    // The old primary back as the new one's replica: its unacknowledged
    // tail truncated, it replicates what happened since and ends up with
    // the same orders, read-only, and the new primary waits for it again.
    servers.rejoin(0, 1);
    let orders = format!("SELECT COUNT(*), COALESCE(SUM(status = 'PAID'), 0) FROM {name}.orders");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let caught_up = servers.query(0, "SELECT @@gtid_current_pos")
            == servers.query(1, "SELECT @@gtid_binlog_pos");
        if caught_up && servers.query(0, &orders) == servers.query(1, &orders) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old primary did not catch up: {} of {}",
            servers.query(0, "SELECT @@gtid_current_pos"),
            servers.query(1, "SELECT @@gtid_binlog_pos")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(servers.query(0, "SELECT @@read_only"), "1");
    // A commit on the new primary is acknowledged by its new replica (one
    // that timed out would leave semi-sync OFF), and reaches it.
    servers.query(
        1,
        "CREATE DATABASE fs_rejoin; CREATE TABLE fs_rejoin.t (n INT PRIMARY KEY); INSERT INTO fs_rejoin.t VALUES (1)",
    );
    assert_eq!(
        servers.semi_sync_status(1),
        "ON",
        "the new primary waits for its replica"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while servers.query(
        0,
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'fs_rejoin'",
    ) != "1"
        || servers.query(0, "SELECT COUNT(*) FROM fs_rejoin.t") != "1"
    {
        assert!(
            Instant::now() < deadline,
            "the rejoined replica did not get the write"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What semi-sync buys, shown: the replica 1 s behind when the primary dies.
/// With semi-sync the primary held every commit for its replica meanwhile
/// (nothing acknowledged that the replica lacks): nothing lost. Without
/// it, every order acknowledged in that second is gone with the primary,
/// and the checker finds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_loses_acknowledged_orders_only_without_semi_sync() {
    let behind = Duration::from_secs(1);
    let (report, ..) = primary_killed(true, behind).await;
    report.assert_holds();
    let (report, ..) = primary_killed(false, behind).await;
    eprintln!(
        "failover: semi-sync off, the replica 1 s behind: {} of {} acknowledged orders lost, {} findings: {}",
        report.lost,
        report.answered_2xx,
        report.findings.len(),
        serde_json::to_string(&report).expect("report json")
    );
    assert!(
        report.lost > 0,
        "asynchronous replication lost nothing: the test did not open the window"
    );
}

/// The replica killed under load: the primary waits for it at each commit
/// up to `rpl_semi_sync_master_timeout` (10 s here), then carries on alone
/// (semi-sync off until a replica acknowledges again): a stall, then
/// service, and nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_stalls_the_primary_at_most_its_timeout() {
    let mut servers = Replicated::start(true).await;
    let (app, stock, _worker, name) = system_on(&servers, "2s").await;
    let sampler = Sampler::start(&format!("{}/{name}", servers.server_url(0)));
    let load = load_on(&app, &stock);
    load.wait_for_more(500, PROGRESS).await;
    let killed = Instant::now();
    servers.kill(1);
    load.wait_for_more(500, PROGRESS).await;
    eprintln!(
        "failover: replica killed; 500 more orders answered {} ms later",
        killed.elapsed().as_millis()
    );
    assert_eq!(
        servers.semi_sync_status(0),
        "OFF",
        "the primary fell back to asynchronous replication"
    );
    checker::check_after("MariaDB replica killed", &app, load, sampler, &stock, DRAIN)
        .await
        .assert_holds();
}

/// The primary paused (SIGSTOP, a network-style stall) for longer than
/// `LEASE_DURATION`, then resumed, with no promotion: nothing commits
/// meanwhile, leases stay with their owner or move once, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_stalled_past_the_lease_loses_nothing() {
    let servers = Replicated::start(true).await;
    let (app, stock, _worker, name) = system_on(&servers, "2s").await;
    let sampler = Sampler::start(&format!("{}/{name}", servers.server_url(0)));
    let load = load_on(&app, &stock);
    load.wait_for_more(500, PROGRESS).await;
    servers.pause(0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    servers.resume(0);
    load.wait_for_more(500, PROGRESS).await;
    checker::check_after(
        "MariaDB primary stalled (SIGSTOP) for 3 s, past LEASE_DURATION 1 s",
        &app,
        load,
        sampler,
        &stock,
        DRAIN,
    )
    .await
    .assert_holds();
}

/// Waits (up to 30 s) until `process` is stopped (SIGSTOP) at its fault point.
async fn stopped(process: &Process) {
    let stat = format!("/proc/{}/stat", process.pid());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&stat).unwrap_or_default();
        // `pid (comm) state ...`: the state follows the last parenthesis.
        let state = text
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next());
        if state == Some("T") {
            return;
        }
        assert!(Instant::now() < deadline, "never reached its fault point");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// With `api` stopped just before it sends a commit (`api-before-commit`),
/// cuts that commit: lets the api send it, and once the primary holds it
/// (its session waiting for the replica's acknowledgement, AFTER_SYNC: the
/// statement `info` in the process list), kills the primary, then promotes
/// the replica 2 s later. `replicated`: the replica receives the transaction
/// but no longer acknowledges (semi-sync off on its side), and the primary
/// is killed once the replica has it; otherwise the replica's I/O thread is
/// stopped, and the transaction exists only on the dead primary.
async fn cut_the_commit(servers: &mut Replicated, api: &Process, replicated: bool, info: &str) {
    stopped(api).await;
    if replicated {
        servers.query(
            1,
            "STOP SLAVE IO_THREAD; SET GLOBAL rpl_semi_sync_slave_enabled = OFF; START SLAVE IO_THREAD",
        );
    } else {
        servers.query(1, "STOP SLAVE IO_THREAD");
    }
    api.signal("CONT");
    let waiting = format!(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
         WHERE STATE LIKE '%semi-sync%' AND INFO LIKE '{info}'"
    );
    let deadline = Instant::now() + Duration::from_secs(8);
    while servers.query(0, &waiting) == "0" {
        assert!(
            Instant::now() < deadline,
            "the commit never waited for the replica"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if replicated {
        let written = sequence(&servers.query(0, "SELECT @@gtid_binlog_pos"));
        while sequence(&applied_position(servers)) < written {
            assert!(
                Instant::now() < deadline,
                "the replica never applied the commit: {written}, it has {}; {}",
                applied_position(servers),
                servers.query(1, "SHOW SLAVE STATUS\\G")
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    servers.kill(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    servers.promote(1);
}

/// What the replica (server 1) has applied: `@@gtid_slave_pos`.
fn applied_position(servers: &Replicated) -> String {
    servers.query(1, "SELECT @@gtid_slave_pos")
}

/// The sequence number of domain 0 in a GTID position (`0-1-1234`), 0 when
/// there is none.
fn sequence(position: &str) -> u64 {
    position
        .split(',')
        .filter_map(|g| g.trim().strip_prefix("0-"))
        .filter_map(|rest| rest.rsplit('-').next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// The status of every order in the database `name` on server `i`.
fn statuses(servers: &Replicated, i: usize, name: &str) -> Vec<String> {
    let out = servers.query(i, &format!("SELECT status FROM {name}.orders ORDER BY seq"));
    out.lines().map(str::to_owned).collect()
}

/// An order whose commit was cut by the primary's death, the transaction
/// already on the replica: the api looks for the order on the new primary
/// once it answers, finds it, and answers 202 with it (never a 503 for an
/// order that exists). The relay publishes it and a worker decides it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_whose_commit_was_cut_but_replicated_is_answered_202() {
    let mut servers = Replicated::start(true).await;
    let (app, stock, _worker, name) = system_on(&servers, "15m").await;
    let product = *stock.keys().min().expect("a product");
    let api = app
        .spawn_api_process(&[(
            "FLASHSTOCK_FAULT",
            format!("{}@1:stop", fault::API_BEFORE_COMMIT),
        )])
        .await;
    let posted = tokio::spawn(post_order(api.address.clone(), product));
    cut_the_commit(&mut servers, &api, true, "%INSERT INTO orders%").await;
    let (status, body) = posted.await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(statuses(&servers, 1, &name).len(), 1, "one order recorded");
    let id = body["data"]["id"].as_str().expect("the order's id");
    let decided = app.wait_for_decision(id, Duration::from_secs(30)).await;
    assert_eq!(decided["status"], "ACCEPTED", "{decided}");
}

/// An order whose commit was cut by the primary's death before any replica
/// had it: the new primary has no such order, and the answer is a 503 that
/// says the order was not recorded. The old primary, restarted, does have
/// it in its binlog: the tail an orchestrator must discard (OPERATIONS.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_whose_commit_was_cut_and_lost_is_answered_503() {
    let mut servers = Replicated::start(true).await;
    let (app, stock, _worker, name) = system_on(&servers, "15m").await;
    let product = *stock.keys().min().expect("a product");
    let api = app
        .spawn_api_process(&[(
            "FLASHSTOCK_FAULT",
            format!("{}@1:stop", fault::API_BEFORE_COMMIT),
        )])
        .await;
    let posted = tokio::spawn(post_order(api.address.clone(), product));
    cut_the_commit(&mut servers, &api, false, "%INSERT INTO orders%").await;
    let (status, body) = posted.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let message = body["data"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("not recorded"), "{body}");
    assert!(statuses(&servers, 1, &name).is_empty(), "nothing recorded");
    // Later requests are recorded on the new primary.
    let (status, body) = post_order(api.address.clone(), product).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    servers.restart(0, true);
    assert_eq!(
        statuses(&servers, 0, &name),
        ["PENDING"],
        "the old primary's unacknowledged tail"
    );
}

/// A payment whose commit was cut, the transaction already on the
/// replica: the api runs it again once the new primary answers, finds the
/// order PAID, and answers 200 PAID (as for a retried payment), never a
/// 503 for a payment made. (Lost with the primary instead, the payment
/// would be made by that second run.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_whose_commit_was_cut_is_answered_with_the_truth() {
    let mut servers = Replicated::start(true).await;
    let (app, stock, _worker, name) = system_on(&servers, "15m").await;
    let product = *stock.keys().min().expect("a product");
    let (status, body) = app.post_order(product, 1, Some(10)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["data"]["id"]
        .as_str()
        .expect("the order's id")
        .to_owned();
    let api = app
        .spawn_api_process(&[(
            "FLASHSTOCK_FAULT",
            format!("{}@1:stop", fault::API_BEFORE_COMMIT),
        )])
        .await;
    let client = reqwest::Client::new();
    let paid = tokio::spawn(
        client
            .post(format!("{}/api/orders/{id}/pay", api.address))
            .send(),
    );
    cut_the_commit(&mut servers, &api, true, "COMMIT").await;
    let r = paid.await.unwrap().expect("an answer");
    let status = r.status();
    let replayed = r.headers().get("idempotent-replayed").cloned();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "PAID");
    assert_eq!(
        replayed.as_ref().and_then(|v| v.to_str().ok()),
        Some("true")
    );
    assert_eq!(statuses(&servers, 1, &name), ["PAID"]);
    app.assert_invariants().await;
}

async fn post_order(address: String, product: u64) -> (StatusCode, Value) {
    let r = reqwest::Client::new()
        .post(format!("{address}/api/orders"))
        .json(&serde_json::json!({"product_id": product, "total": 1}))
        .send()
        .await
        .expect("an answer");
    (r.status(), r.json().await.expect("a JSON body"))
}
