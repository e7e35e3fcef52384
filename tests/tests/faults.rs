//! The fault suite: load through the public api, one fault injected while it
//! runs, the fault healed, the backlog drained, and then the checker's model
//! (`flashstock_tests::checker`): nothing oversold, nothing acknowledged
//! lost, nothing decided twice, nothing nobody submitted.
//!
//! Some of these stop the MariaDB and RabbitMQ every other test uses, so
//! this binary runs alone, one test at a time, after the rest:
//! `cargo nextest run --profile faults` (the default profile leaves it out).
//! Each test restarts what it stopped, even when it fails.

use flashstock_tests::checker::{self, Load, Plan, Report, Sampler, Target};
use flashstock_tests::cluster::{self, Cluster};
use flashstock_tests::process::{Process, WorkerProcess, metric};
use flashstock_tests::services::{MemoryAlarm, Outage, Server};
use flashstock_tests::{Options, TestApp};
use shared::broker::Topology;
use shared::fault;
use shared::message::{OrderBatch, OrderMessage};
use shared::partition::partition_of;
use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

/// How long the backlog may take to drain once the fault is healed.
const DRAIN: Duration = Duration::from_secs(120);
/// How long progress may stall while a fault is on.
const PROGRESS: Duration = Duration::from_secs(60);

/// A system with no in-process worker, 8 partitions and short leases, and
/// its products: four that never sell out and two that do.
async fn world() -> (TestApp, HashMap<u64, i64>) {
    world_with(Options::default()).await
}

/// [`world`], with the variables of `options` on top.
async fn world_with(options: Options) -> (TestApp, HashMap<u64, i64>) {
    let mut base = Options::default()
        .workers(0)
        .env("ORDER_PARTITIONS", "8")
        .env("HEARTBEAT_INTERVAL", "200ms")
        .env("LEASE_DURATION", "1s");
    base.env.extend(options.env);
    let app = TestApp::spawn(base).await;
    let mut stock = HashMap::new();
    for (i, units) in [1_000_000, 1_000_000, 1_000_000, 1_000_000, 150, 150]
        .into_iter()
        .enumerate()
    {
        stock.insert(
            app.create_product(&format!("fault {i}"), units).await,
            units,
        );
    }
    (app, stock)
}

/// [`world`] with one worker process, once it owns every partition.
async fn world_with_one_worker() -> (TestApp, HashMap<u64, i64>, WorkerProcess) {
    let (app, stock) = world().await;
    let worker = app.spawn_worker_process();
    app.wait_for_owners(|l| l.len() == 1).await;
    (app, stock, worker)
}

/// Starts sampling the stock invariant and the load, sending to `target`.
fn start_load(app: &TestApp, stock: &HashMap<u64, i64>, target: &Target) -> (Load, Sampler) {
    let sampler = Sampler::start(&app.config.database_url);
    (Load::start(target, plan(stock)), sampler)
}

fn plan(stock: &HashMap<u64, i64>) -> Plan {
    let mut products: Vec<u64> = stock.keys().copied().collect();
    products.sort_unstable();
    Plan {
        products,
        clients: 16,
        pause: Duration::from_millis(5),
        give_up: Duration::from_secs(30),
        lifecycle: false,
    }
}

/// Stops the load, checks the outcome, prints the report, and panics with
/// the findings unless every property held.
async fn finish(
    fault: &str,
    app: &TestApp,
    load: Load,
    sampler: Sampler,
    stock: &HashMap<u64, i64>,
) -> Report {
    let report = checker::check_after(fault, app, load, sampler, stock, DRAIN).await;
    report.assert_holds();
    report
}

/// Waits (without blocking the runtime) for `process` to kill itself at
/// its fault point.
async fn killed_at_fault_point(process: &mut Process) {
    let deadline = Instant::now() + PROGRESS;
    let status = loop {
        if let Some(status) = process.wait_exit(Duration::ZERO) {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the process never reached its fault point"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.signal(), Some(9), "{status}: {}", process.log_text());
}

/// Two worker processes, the second armed to SIGKILL itself at fault
/// `point`; load started; returns once it has died.
async fn kill_a_worker_at(
    point: &str,
) -> (TestApp, HashMap<u64, i64>, WorkerProcess, Load, Sampler) {
    let (app, stock) = world().await;
    let steady = app.spawn_worker_process();
    let mut doomed = app.spawn_worker_process_with(&[("FLASHSTOCK_FAULT", format!("{point}@40"))]);
    app.wait_for_owners(|l| l.len() == 2).await;
    let (load, sampler) = start_load(&app, &stock, &Target::new(&app.address));
    killed_at_fault_point(&mut doomed).await;
    (app, stock, steady, load, sampler)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_loses_nothing() {
    // It writes its 40th batch of decisions and dies before the commit.
    let (app, stock, _steady, load, sampler) = kill_a_worker_at(fault::WORKER_BEFORE_COMMIT).await;
    load.wait_for_more(500, PROGRESS).await;
    let _replacement = app.spawn_worker_process();
    load.wait_for_more(500, PROGRESS).await;
    finish("SIGKILL worker mid-batch", &app, load, sampler, &stock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_commit_before_ack_decides_nothing_twice() {
    // Its 40th batch is committed; the messages are not acknowledged.
    let (app, stock, steady, load, sampler) = kill_a_worker_at(fault::WORKER_AFTER_COMMIT).await;
    load.wait_for_more(1000, PROGRESS).await;
    finish(
        "SIGKILL worker after commit, before ack",
        &app,
        load,
        sampler,
        &stock,
    )
    .await;
    // The survivor took the partitions over and got the unacknowledged
    // messages again: their orders were decided already, and stayed so.
    assert!(
        steady
            .metric("flashstock_worker_already_decided_total")
            .await
            > 0.0,
        "the redelivered orders reached the survivor"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_publisher_killed_after_the_stream_confirmed_loses_and_invents_nothing() {
    // It publishes its 20th round of events, has it confirmed, and dies
    // before deleting those rows from the outbox.
    let (app, stock) = world().await;
    let mut doomed = app.spawn_worker_process_with(&[(
        "FLASHSTOCK_FAULT",
        format!("{}@20", fault::EVENTS_AFTER_CONFIRM),
    )]);
    let deadline = Instant::now() + PROGRESS;
    while doomed.metric("flashstock_events_publisher").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the first worker never published events"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let steady = app.spawn_worker_process();
    let (load, sampler) = start_load(&app, &stock, &Target::new(&app.address));
    killed_at_fault_point(&mut doomed).await;
    load.wait_for_more(1000, PROGRESS).await;
    let report = finish(
        "SIGKILL events publisher after confirm, before delete",
        &app,
        load,
        sampler,
        &stock,
    )
    .await;
    // The survivor took the lock over and published that round again.
    assert_eq!(steady.metric("flashstock_events_publisher").await, 1.0);
    assert!(
        report.event_duplicates > 0,
        "the confirmed round was never published again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_killed_between_recording_and_publishing_loses_nothing() {
    let (app, stock, _worker) = world_with_one_worker().await;
    let mut doomed = app
        .spawn_api_process(&[(
            "FLASHSTOCK_FAULT",
            format!("{}@30", fault::API_AFTER_RECORD),
        )])
        .await;
    let target = Target::new(&doomed.address);
    let (load, sampler) = start_load(&app, &stock, &target);

    // Its 30th batch is committed and never published; its clients get no
    // answer and retry, with the same keys, on the api that replaces it.
    killed_at_fault_point(&mut doomed).await;
    let replacement = app.spawn_api_process(&[]).await;
    target.switch(&replacement.address);
    load.wait_for_more(1000, PROGRESS).await;
    finish(
        "SIGKILL api between recording and publishing",
        &app,
        load,
        sampler,
        &stock,
    )
    .await;
    // What the dead api recorded and never published, a live api's relay
    // published (whichever got to it first), once: each claimed order is
    // marked when it is claimed, and nothing else was republished (not the
    // dead api's confirmed orders, not anybody's live backlog).
    let mut relayed = 0.0;
    for api in [&app.address, &replacement.address] {
        relayed += metric(api, "flashstock_api_relay_republished_total").await;
    }
    assert!(relayed > 0.0, "no order needed the relay");
    let (claimed,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM orders WHERE relayed_at IS NOT NULL")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(relayed, claimed as f64);
    assert!(
        claimed <= 500,
        "{claimed} orders republished: more than the one unpublished batch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_stopped_and_started_under_load_loses_nothing() {
    let (app, stock, _worker) = world_with_one_worker().await;
    let (load, sampler) = start_load(&app, &stock, &Target::new(&app.address));
    load.wait_for_more(500, PROGRESS).await;

    let mut outage = Outage::begin(Server::RabbitMq).await;
    // The api goes on recording (the outbox) and acknowledging.
    load.wait_for_more(300, PROGRESS).await;
    outage.heal().await;
    load.wait_for_more(500, PROGRESS).await;
    finish("RabbitMQ stop_app / start_app", &app, load, sampler, &stock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_stopped_and_started_under_load_loses_nothing() {
    let (app, stock, _worker) = world_with_one_worker().await;
    let (load, sampler) = start_load(&app, &stock, &Target::new(&app.address));
    load.wait_for_more(500, PROGRESS).await;

    let mut outage = Outage::begin(Server::MariaDb).await;
    // Nothing can be recorded: requests wait, then fail (503 or the
    // client's 5 s timeout); clients with a key retry, the others give up.
    tokio::time::sleep(Duration::from_secs(8)).await;
    outage.heal().await;
    load.wait_for_more(500, PROGRESS).await;
    let report = finish("MariaDB stopped and started", &app, load, sampler, &stock).await;
    assert!(
        report.retries > 0 && report.unanswered > 0,
        "the outage went unnoticed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_messages_have_no_effect() {
    let (app, stock, _worker) = world_with_one_worker().await;
    let (load, sampler) = start_load(&app, &stock, &Target::new(&app.address));
    load.wait_for_more(500, PROGRESS).await;

    // Publish every order recorded so far once more, as a broker
    // redelivering or a producer retrying would.
    let topology = app.topology();
    let batches = recorded_batches(&app).await;
    let recorded: usize = batches.values().map(Vec::len).sum();
    for (partition, orders) in batches {
        let payload = serde_json::to_vec(&OrderBatch { orders }).unwrap();
        app.publish_raw("", &topology.partition_queue(partition), &payload)
            .await;
    }
    load.wait_for_more(500, PROGRESS).await;
    let report = finish("duplicate messages", &app, load, sampler, &stock).await;
    assert!(report.decided >= recorded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_set_aside_and_the_partitions_flow_on() {
    let (app, stock, worker) = world_with_one_worker().await;
    let (load, sampler) = start_load(&app, &stock, &Target::new(&app.address));
    load.wait_for_more(300, PROGRESS).await;

    let topology = app.topology();
    let poison: [&[u8]; 4] = [
        b"\x00\xff not json",
        br#"{"order_id": 5}"#,
        br#"{"orders": [{"order_id": "not-a-uuid", "product_id": 1, "total": 1}]}"#,
        br#"{"order_id": "0190c7a4-5d1e-7bb2-9d1f-3c2a1b0e9f10", "product_id": -1, "total": 0}"#,
    ];
    for partition in 0..topology.partitions() {
        for payload in poison {
            app.publish_raw("", &topology.partition_queue(partition), payload)
                .await;
        }
    }
    load.wait_for_more(500, PROGRESS).await;
    finish("poison messages", &app, load, sampler, &stock).await;
    let expected = f64::from(topology.partitions()) * poison.len() as f64;
    assert_eq!(
        worker
            .metric("flashstock_worker_poison_messages_total")
            .await,
        expected
    );
}

/// Every order recorded so far, as one message per partition.
async fn recorded_batches(app: &TestApp) -> HashMap<u16, Vec<OrderMessage>> {
    let partitions = app.topology().partitions();
    let recorded: Vec<(uuid::Uuid, u64, u32)> =
        sqlx::query_as("SELECT id, product_id, total FROM orders")
            .fetch_all(&app.db)
            .await
            .unwrap();
    let mut batches: HashMap<u16, Vec<OrderMessage>> = HashMap::new();
    for (id, product, total) in &recorded {
        let product = shared::domain::ProductId::new(*product as i64).unwrap();
        batches
            .entry(partition_of(product, partitions))
            .or_default()
            .push(OrderMessage {
                order_id: shared::domain::OrderId::from(*id),
                product_id: product,
                total: shared::domain::Quantity::new(i64::from(*total), u32::MAX).unwrap(),
            });
    }
    batches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_last_in_a_batch_is_set_aside_alone() {
    let (app, stock, worker) = world_with_one_worker().await;
    let (load, sampler) = start_load(&app, &stock, &Target::new(&app.address));
    load.wait_for_more(300, PROGRESS).await;

    // While the worker is stopped, each partition gets a healthy message
    // and then a poison one, so the batch it takes next ends with poison:
    // the ack must cover the healthy deliveries and not the rejected tag.
    let topology = app.topology();
    let rounds = 5;
    let mut published = 0;
    for _ in 0..rounds {
        let mut messages = Vec::new();
        for (partition, orders) in recorded_batches(&app).await {
            let payload = serde_json::to_vec(&OrderBatch { orders }).unwrap();
            let queue = topology.partition_queue(partition);
            messages.push((queue.clone(), payload));
            messages.push((queue, b"{\"orders\": 7}".to_vec()));
            published += 1;
        }
        worker.signal("STOP");
        app.publish_raw_many("", &messages).await;
        worker.signal("CONT");
        load.wait_for_more(100, PROGRESS).await;
    }
    finish(
        "poison message last in a batch",
        &app,
        load,
        sampler,
        &stock,
    )
    .await;
    // Every poison message was seen exactly once: none came back because a
    // channel closed on an ack of a tag already rejected.
    assert_eq!(
        worker
            .metric("flashstock_worker_poison_messages_total")
            .await,
        f64::from(published)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_error_on_one_order_rejects_it_alone() {
    let (app, stock, worker) = world_with_one_worker().await;
    // A trigger refuses to accept the orders listed in `fault_orders`: a
    // permanent error in the middle of a deciding transaction.
    for ddl in [
        "CREATE TABLE fault_orders (id BINARY(16) PRIMARY KEY)",
        "CREATE TRIGGER refuse_fault_orders BEFORE UPDATE ON orders FOR EACH ROW \
         IF NEW.status = 'ACCEPTED' AND EXISTS (SELECT 1 FROM fault_orders f WHERE f.id = NEW.id) THEN \
         SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by the fault test'; END IF",
    ] {
        sqlx::query(ddl).execute(&app.db).await.unwrap();
    }
    let big: Vec<u64> = stock
        .iter()
        .filter(|(_, units)| **units > 1000)
        .map(|(p, _)| *p)
        .collect();
    let (load, sampler) = start_load(&app, &stock, &Target::new(&app.address));
    load.wait_for_more(300, PROGRESS).await;

    // A backlog builds while the worker is stopped; one order from its
    // middle, for a product that never sells out, is made to fail.
    worker.signal("STOP");
    load.wait_for_more(400, PROGRESS).await;
    let pending: Vec<(uuid::Uuid, u64)> = sqlx::query_as(
        "SELECT id, product_id FROM orders WHERE status = 'PENDING' ORDER BY created_at",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let candidates: Vec<uuid::Uuid> = pending
        .iter()
        .filter(|(_, p)| big.contains(p))
        .map(|(id, _)| *id)
        .collect();
    assert!(
        candidates.len() > 10,
        "a backlog built up: {}",
        candidates.len()
    );
    let doomed = candidates[candidates.len() / 2];
    sqlx::query("INSERT INTO fault_orders (id) VALUES (?)")
        .bind(doomed)
        .execute(&app.db)
        .await
        .unwrap();
    worker.signal("CONT");
    load.wait_for_more(300, PROGRESS).await;
    let report = finish("database error on one order", &app, load, sampler, &stock).await;
    assert_eq!(report.decision_failed, 1);
    let (status, reason): (String, Option<String>) =
        sqlx::query_as("SELECT status, reason FROM orders WHERE id = ?")
            .bind(doomed)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("REJECTED", Some("DECISION_FAILED"))
    );
    assert_eq!(
        worker
            .metric("flashstock_worker_decision_failed_total")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_memory_alarm_under_load_sheds_and_loses_nothing() {
    let (app, stock, worker) = world_with_one_worker().await;
    let (load, sampler) = start_load(&app, &stock, &Target::new(&app.address));
    load.wait_for_more(500, PROGRESS).await;

    let mut alarm = MemoryAlarm::raise().await;
    // Publishing connections are blocked: the api sheds instead of hanging,
    // and the worker, which acks on a connection that does not publish,
    // keeps deciding what was queued.
    let shed_before = load.shed();
    let deadline = Instant::now() + PROGRESS;
    while load.shed() < shed_before + 20 {
        assert!(
            Instant::now() < deadline,
            "nothing was shed during the alarm"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric(&app.address, "flashstock_api_broker_blocked").await,
        1.0
    );
    let decided = worker
        .metric("flashstock_worker_orders_decided_total{outcome=\"accepted\"}")
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    alarm.clear();
    load.wait_for_more(500, PROGRESS).await;
    finish("RabbitMQ memory alarm", &app, load, sampler, &stock).await;
    assert!(
        worker
            .metric("flashstock_worker_orders_decided_total{outcome=\"accepted\"}")
            .await
            > decided
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_paused_past_its_lease_loses_nothing() {
    let (app, stock) = world().await;
    let _steady = app.spawn_worker_process();
    let paused = app.spawn_worker_process();
    app.wait_for_owners(|l| l.len() == 2).await;
    let (load, sampler) = start_load(&app, &stock, &Target::new(&app.address));
    load.wait_for_more(500, PROGRESS).await;

    paused.signal("STOP");
    // Three lease durations: the other worker takes its partitions over,
    // though the broker still holds the paused one's deliveries.
    tokio::time::sleep(Duration::from_secs(3)).await;
    paused.signal("CONT");
    load.wait_for_more(500, PROGRESS).await;
    finish(
        "SIGSTOP worker past its lease, SIGCONT",
        &app,
        load,
        sampler,
        &stock,
    )
    .await;
}

// A three-node RabbitMQ cluster (`flashstock_tests::cluster`), one node lost
// under load and started again. The partition queues are declared through
// node 2, so node 2 leads them; the api lists node 0 first and the worker
// node 1, so each loss is a different one.

/// How many orders submitted after a node loss must be decided before
/// decisions count as resumed.
const RESUMED: i64 = 100;

/// A system on `cluster`, its partition queues replicated on all three
/// nodes and led by node 2, the api on node 0 and one worker process on
/// node 1 (each given every node's address).
async fn cluster_world(cluster: &Cluster) -> (TestApp, HashMap<u64, i64>, WorkerProcess) {
    let namespace = format!(
        "fs_cluster_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let vars = HashMap::from([
        ("BROKER_NAMESPACE".to_owned(), namespace),
        ("ORDER_PARTITIONS".to_owned(), "8".to_owned()),
        ("QUORUM_INITIAL_GROUP_SIZE".to_owned(), "3".to_owned()),
    ]);
    let config = shared::Config::from_lookup(|k| vars.get(k).cloned()).unwrap();
    let conn = shared::broker::connect(&cluster.url_of(2), "flashstock test declarer")
        .await
        .unwrap();
    Topology::from_config(&config).declare(&conn).await.unwrap();
    let _ = conn.close(200, "declared".into()).await;

    let mut options = Options::default().env("AMQP_URL", cluster.url_from(0));
    options.env.extend(vars);
    let (app, stock) = world_with(options).await;
    let worker = app.spawn_worker_process_with(&[("AMQP_URL", cluster.url_from(1))]);
    app.wait_for_owners(|l| l.len() == 1).await;
    (app, stock, worker)
}

/// The node leading each partition queue of `app`.
async fn partition_leaders(cluster: &Cluster, app: &TestApp) -> Vec<(String, usize)> {
    let prefix = format!("{}.orders.", app.config.broker_namespace);
    let mut leaders = cluster.leaders(&prefix).await;
    leaders.retain(|(queue, _)| !queue.ends_with(".dead"));
    leaders
}

/// The node of every connection whose name contains `who`.
async fn nodes_of(cluster: &Cluster, who: &str) -> Vec<usize> {
    let connections = cluster.connections().await;
    connections
        .into_iter()
        .filter(|(name, _)| name.contains(who))
        .map(|(_, node)| node)
        .collect()
}

/// Waits until `who`'s `count` connections are all on nodes other than
/// `lost`.
async fn wait_moved(cluster: &Cluster, who: &str, count: usize, lost: usize) {
    let deadline = Instant::now() + PROGRESS;
    loop {
        let nodes = nodes_of(cluster, who).await;
        if nodes.len() == count && !nodes.contains(&lost) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{who} did not reconnect away from node {lost}: {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Under load, times decisions (for `products` only, when given) without
/// a fault, then kills node `lost` and times them again from the kill:
/// each is how long it took until [`RESUMED`] orders submitted from its
/// start (from the node's death) were decided. Returns (baseline, resumed).
async fn time_node_loss(
    cluster: &Cluster,
    app: &TestApp,
    lost: usize,
    products: Option<&[u64]>,
) -> (Duration, Duration) {
    let start = Instant::now();
    let baseline = wait_decided_after(app, products, uuid::Uuid::now_v7(), start).await;
    let killed = Instant::now();
    cluster.kill(lost).await;
    let resumed = wait_decided_after(app, products, uuid::Uuid::now_v7(), killed).await;
    (baseline, resumed)
}

/// Starts node `lost` again, lets the load run on, checks the outcome and
/// reports the times [`time_node_loss`] measured.
async fn heal_and_finish(
    fault: &str,
    cluster: &Cluster,
    lost: usize,
    app: &TestApp,
    (load, sampler): (Load, Sampler),
    stock: &HashMap<u64, i64>,
    (baseline, resumed): (Duration, Duration),
) {
    cluster.restart(lost).await;
    load.wait_for_more(500, PROGRESS).await;
    finish(fault, app, load, sampler, stock).await;
    eprintln!(
        "{fault}: decisions resumed {resumed:?} after the kill ({baseline:?} without a fault)"
    );
}

/// Waits until [`RESUMED`] orders with ids above `mark` (submitted after
/// it) are decided; returns the time since `start`.
async fn wait_decided_after(
    app: &TestApp,
    products: Option<&[u64]>,
    mark: uuid::Uuid,
    start: Instant,
) -> Duration {
    let only = products.map_or(String::new(), |ps| {
        let ids: Vec<String> = ps.iter().map(u64::to_string).collect();
        format!(" AND product_id IN ({})", ids.join(","))
    });
    let count = format!("SELECT COUNT(*) FROM orders WHERE id > ? AND status <> 'PENDING'{only}");
    loop {
        let (decided,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(count.as_str()))
            .bind(mark)
            .fetch_one(&app.db)
            .await
            .unwrap();
        if decided >= RESUMED {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < PROGRESS,
            "decisions did not resume ({decided} decided)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every partition queue has a leader on a node other than
/// `lost`; returns the leaders.
async fn wait_for_leaders_off(
    cluster: &Cluster,
    app: &TestApp,
    lost: usize,
) -> Vec<(String, usize)> {
    let deadline = Instant::now() + PROGRESS;
    loop {
        let leaders = partition_leaders(cluster, app).await;
        if leaders.len() == 8 && leaders.iter().all(|(_, node)| *node != lost) {
            return leaders;
        }
        assert!(
            Instant::now() < deadline,
            "no new leaders on the other nodes: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Who holds each partition, under which epoch.
async fn leases(app: &TestApp) -> Vec<(u16, Option<String>, u64)> {
    let owners = shared::db::leases::owners(&app.db).await.unwrap();
    owners.into_iter().map(|(p, o, e, _)| (p, o, e)).collect()
}

/// Adds products to `stock` (never selling out) until one falls on a
/// partition `worker` owns; returns the products on its partitions.
async fn products_of(
    app: &TestApp,
    worker: &WorkerProcess,
    stock: &mut HashMap<u64, i64>,
) -> Vec<u64> {
    let owner = format!("worker-{}-", worker.pid());
    let mut held = Vec::new();
    for (partition, who, _, _) in shared::db::leases::owners(&app.db).await.unwrap() {
        if who.is_some_and(|w| w.starts_with(&owner)) {
            held.push(partition);
        }
    }
    assert!(!held.is_empty(), "the worker holds no partition");
    let partitions = app.config.order_partitions;
    let on_held = |product: u64| {
        let id = shared::domain::ProductId::new(product as i64).unwrap();
        held.contains(&partition_of(id, partitions))
    };
    let mut extra = 0;
    while !stock.keys().any(|&p| on_held(p)) {
        assert!(extra < 64, "no product fell on partitions {held:?}");
        let units = 1_000_000;
        stock.insert(
            app.create_product(&format!("cluster extra {extra}"), units)
                .await,
            units,
        );
        extra += 1;
    }
    stock.keys().copied().filter(|&p| on_held(p)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_rabbitmq_node_that_leads_the_partitions_loses_nothing() {
    let cluster = Cluster::start().await;
    let (app, stock, _worker) = cluster_world(&cluster).await;
    let leaders = partition_leaders(&cluster, &app).await;
    assert_eq!(leaders.len(), 8, "{leaders:?}");
    let mut led = [0; cluster::NODES];
    for (_, node) in &leaders {
        led[*node] += 1;
    }
    let lost = (0..cluster::NODES).max_by_key(|&n| led[n]).unwrap();
    // It serves no client: only its queues' leadership is lost.
    assert_eq!(lost, 2, "{leaders:?}");
    let clients = cluster.connections().await;
    assert!(
        !clients.is_empty() && clients.iter().all(|(_, node)| *node != lost),
        "{clients:?}"
    );
    let (load, sampler) = start_load(&app, &stock, &Target::new(&app.address));
    load.wait_for_more(500, PROGRESS).await;

    let times = time_node_loss(&cluster, &app, lost, None).await;
    wait_for_leaders_off(&cluster, &app, lost).await;
    let fault = format!("RabbitMQ cluster: node {lost}, leading {led:?} partitions, killed");
    heal_and_finish(&fault, &cluster, lost, &app, (load, sampler), &stock, times).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_rabbitmq_node_a_worker_is_on_loses_nothing() {
    let cluster = Cluster::start().await;
    let (app, mut stock, worker) = cluster_world(&cluster).await;
    // A second worker, on node 2; each holds its leases in the database.
    let _other = app.spawn_worker_process_with(&[("AMQP_URL", cluster.url_from(2))]);
    app.wait_for_owners(|l| l.len() == 2 && l.values().all(|&n| n == 4))
        .await;
    let before = leases(&app).await;
    // Timed on the partitions of the worker that loses its node.
    let its_products = products_of(&app, &worker, &mut stock).await;
    // Each worker has two connections: consuming and announcing.
    let mut workers = nodes_of(&cluster, "worker").await;
    workers.sort_unstable();
    assert_eq!(workers, [1, 1, 2, 2]);
    let (load, sampler) = start_load(&app, &stock, &Target::new(&app.address));
    load.wait_for_more(500, PROGRESS).await;

    let times = time_node_loss(&cluster, &app, 1, Some(&its_products)).await;
    wait_moved(&cluster, "worker", 4, 1).await;
    // The cut-off worker kept its partitions, under the same epochs:
    // nothing was handed over.
    assert_eq!(before, leases(&app).await);
    let fault = "RabbitMQ cluster: a worker's node killed";
    heal_and_finish(fault, &cluster, 1, &app, (load, sampler), &stock, times).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_rabbitmq_node_the_api_is_on_loses_nothing() {
    let cluster = Cluster::start().await;
    let (app, stock, _worker) = cluster_world(&cluster).await;
    let apis = nodes_of(&cluster, "api").await;
    assert!(!apis.is_empty() && apis.iter().all(|&n| n == 0), "{apis:?}");
    let (load, sampler) = start_load(&app, &stock, &Target::new(&app.address));
    load.wait_for_more(500, PROGRESS).await;

    let times = time_node_loss(&cluster, &app, 0, None).await;
    wait_moved(&cluster, "api", apis.len(), 0).await;
    let fault = "RabbitMQ cluster: the api's node killed";
    heal_and_finish(fault, &cluster, 0, &app, (load, sampler), &stock, times).await;
}
