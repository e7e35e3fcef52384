//! Several real worker processes on one machine: spreading partitions,
//! joining, SIGKILL under load, and a paused worker fenced off.

use flashstock_tests::{Options, TestApp};
use futures::StreamExt;
use reqwest::StatusCode;
use shared::domain::ProductId;
use shared::partition::partition_of;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DRAIN: Duration = Duration::from_secs(90);

fn sixteen_partitions() -> Options {
    Options::default()
        .workers(0)
        .env("ORDER_PARTITIONS", "16")
        .env("HEARTBEAT_INTERVAL", "200ms")
        .env("LEASE_DURATION", "1s")
        // These count every order through a stalled partition: no shedding.
        .env("ADMISSION_MAX_DELAY", "0")
}

/// Submits `per_product` orders of 1 to each product from `clients`
/// concurrent clients; every answer must be 202.
async fn flood(app: Arc<TestApp>, products: Vec<u64>, per_product: usize, clients: usize) {
    let orders: Vec<u64> = (0..per_product)
        .flat_map(|_| products.iter().copied())
        .collect();
    let answers: Vec<StatusCode> = futures::stream::iter(orders)
        .map(|product| {
            let app = app.clone();
            async move { app.post_order(product, 1, None).await.0 }
        })
        .buffer_unordered(clients)
        .collect()
        .await;
    assert!(
        answers.iter().all(|s| *s == StatusCode::ACCEPTED),
        "{answers:?}"
    );
}

/// Every product ends with exactly `min(orders, stock)` accepted and nothing PENDING.
async fn assert_sold_exactly(app: &TestApp, products: &[u64], per_product: i64, stock: i64) {
    for &product in products {
        let counts = app.drain(product, DRAIN).await;
        assert_eq!(counts.get("PENDING"), None, "product {product}: {counts:?}");
        assert_eq!(
            counts.get("ACCEPTED").copied().unwrap_or(0),
            per_product.min(stock),
            "product {product}: {counts:?}"
        );
        assert_eq!(
            counts.values().sum::<i64>(),
            per_product,
            "product {product}: {counts:?}"
        );
    }
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_worker_processes_share_sixteen_partitions_and_a_fourth_takes_its_share() {
    let app = TestApp::spawn(sixteen_partitions()).await;
    let _workers: Vec<_> = (0..3).map(|_| app.spawn_worker_process()).collect();
    // Settles (within the harness's deadline) with none below 4 or above 7.
    let loads = app
        .wait_for_owners(|l| l.len() == 3 && l.values().all(|&n| (4..=7).contains(&n)))
        .await;
    assert_eq!(loads.values().sum::<usize>(), 16, "{loads:?}");

    let _fourth = app.spawn_worker_process();
    let loads = app
        .wait_for_owners(|l| l.len() == 4 && l.values().all(|&n| n >= 3))
        .await;
    assert_eq!(loads.values().sum::<usize>(), 16, "{loads:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_worker_under_load_hands_its_partitions_to_the_others() {
    const PER_PRODUCT: usize = 60;
    const STOCK: i64 = 40;
    let app = Arc::new(TestApp::spawn(sixteen_partitions()).await);
    let mut workers: Vec<_> = (0..3).map(|_| app.spawn_worker_process()).collect();
    let loads = app.wait_for_owners(|l| l.len() == 3).await;
    let mut products = Vec::new();
    for i in 0..16 {
        products.push(app.create_product(&format!("p{i}"), STOCK).await);
    }
    let load = tokio::spawn(flood(app.clone(), products.clone(), PER_PRODUCT, 32));
    tokio::time::sleep(Duration::from_millis(300)).await;
    workers[0].kill();
    load.await.unwrap();
    let survivors = app.wait_for_owners(|l| l.len() == 2).await;
    assert!(
        loads.len() == 3 && survivors.len() == 2,
        "{loads:?} then {survivors:?}"
    );
    assert_sold_exactly(&app, &products, PER_PRODUCT as i64, STOCK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_paused_past_its_lease_cannot_commit_afterwards() {
    let app = Arc::new(TestApp::spawn(sixteen_partitions()).await);
    let paused = app.spawn_worker_process();
    let loads = app.wait_for_owners(|l| l.len() == 1).await;
    let paused_id = loads.keys().next().unwrap().clone();
    let products: Vec<u64> = {
        let mut v = Vec::new();
        for i in 0..16 {
            v.push(app.create_product(&format!("p{i}"), 5).await);
        }
        v
    };

    let lost_epochs: HashMap<u16, u64> = shared::db::leases::owners(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|(p, _, epoch, _)| (p, epoch))
        .collect();
    paused.signal("STOP");
    let paused_at = Instant::now();
    // Its leases expire; a new worker takes every partition over.
    let _rescuer = app.spawn_worker_process();
    app.wait_for_owners(|l| l.len() == 1 && !l.contains_key(&paused_id))
        .await;
    let (since,): (chrono::NaiveDateTime,) = sqlx::query_as("SELECT NOW(6)")
        .fetch_one(&app.db)
        .await
        .unwrap();
    // Orders now go to queues whose single active consumer is still the
    // paused worker's: it holds them, unable to decide.
    flood(app.clone(), products.clone(), 8, 16).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    paused.signal("CONT");
    assert!(
        paused_at.elapsed() > Duration::from_secs(1),
        "paused longer than the lease"
    );

    assert_sold_exactly(&app, &products, 8, 5).await;
    // Back from its pause the worker may rightly win partitions again, under
    // new epochs; what it must never do is commit under an epoch it lost.
    let late: Vec<(u64, Option<u64>)> = sqlx::query_as(
        "SELECT product_id, decided_epoch FROM orders WHERE decided_by = ? AND decided_at >= ?",
    )
    .bind(&paused_id)
    .bind(since)
    .fetch_all(&app.db)
    .await
    .unwrap();
    for (product, epoch) in &late {
        let p = partition_of(ProductId::new(*product as i64).unwrap(), 16);
        assert!(
            epoch.unwrap_or(0) > lost_epochs[&p],
            "product {product} decided by the fenced-off worker under epoch {epoch:?}; it lost epoch {}",
            lost_epochs[&p]
        );
    }
    eprintln!(
        "after its pause the worker decided {} orders, all under newly won epochs",
        late.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_with_sigterm_releases_its_partitions_at_once() {
    let app = TestApp::spawn(sixteen_partitions().env("LEASE_DURATION", "30s")).await;
    let mut first = app.spawn_worker_process();
    app.wait_for_owners(|l| l.len() == 1).await;
    let second = app.spawn_worker_process();
    app.wait_for_owners(|l| l.len() == 2).await;
    first.signal("TERM");
    let status = first
        .wait_exit(Duration::from_secs(20))
        .expect("the worker exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    let after_exit = shared::db::leases::owners(&app.db).await.unwrap();
    let workers_after_exit: Vec<(String,)> = sqlx::query_as("SELECT id FROM workers")
        .fetch_all(&app.db)
        .await
        .unwrap();
    // With a 30 s lease, only a release explains a takeover this fast.
    let started = Instant::now();
    app.wait_for_owners(|l| l.len() == 1).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "the takeover took {took:?}\nleases after the exit: {after_exit:?}\nworkers: {workers_after_exit:?}\n--- stopped worker ---\n{}\n--- remaining worker ---\n{}",
        first.log_text(),
        second.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_acks_what_it_decided_once_its_queue_is_quiet() {
    // Acks are gathered for a few milliseconds; they must still go out when
    // no further delivery comes, or a killed worker's decided messages
    // would all come back to the next owner.
    let app = Arc::new(TestApp::spawn(sixteen_partitions()).await);
    let mut worker = app.spawn_worker_process();
    app.wait_for_owners(|l| l.len() == 1).await;
    let product = app.create_product("acked", 100).await;
    flood(app.clone(), vec![product], 40, 8).await;
    assert_sold_exactly(&app, &[product], 40, 100).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    worker.kill();
    let queue = app
        .topology()
        .partition_queue(partition_of(ProductId::new(product as i64).unwrap(), 16));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ready, consumers) = app.queue_counts(&queue).await;
        if consumers == 0 {
            // Anything unacked is back in the queue by now.
            assert_eq!(ready, 0, "decided messages were never acked");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the killed worker's consumer stayed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_start_and_run_log_no_error() {
    let app = Arc::new(TestApp::spawn(sixteen_partitions()).await);
    // Every start asks the broker for the queue past the last partition,
    // which must not exist: that refusal is expected, not an error.
    let api = app.spawn_api_process(&[]).await;
    let worker = app.spawn_worker_process();
    app.wait_for_owners(|l| l.len() == 1).await;
    let product = app.create_product("quiet", 10).await;
    let (status, _) = app.post_order(product, 1, Some(10)).await;
    assert_eq!(status, StatusCode::CREATED);
    for (who, log) in [("api", api.log_text()), ("worker", worker.log_text())] {
        assert!(!log.is_empty(), "{who} logged nothing");
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
        assert!(
            errors.is_empty(),
            "{who} logged errors:\n{}",
            errors.join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_and_a_worker_given_a_dead_broker_first_use_the_next() {
    let app = TestApp::spawn(Options::default().workers(0)).await;
    // Nothing listens on port 1; the second entry is the live broker.
    let url = format!(
        "amqp://guest:guest@127.0.0.1:1/%2f,{}",
        flashstock_tests::amqp_url()
    );
    let api = app.spawn_api_process(&[("AMQP_URL", url.clone())]).await;
    let worker = app.spawn_worker_process_with(&[("AMQP_URL", url)]);
    app.wait_for_owners(|l| l.len() == 1).await;
    let product = app.create_product("second address", 10).await;
    // Submitted to the api process, decided by the worker process.
    let r = app
        .client
        .post(format!("{}/api/orders", api.address))
        .header("Prefer", "wait=10")
        .json(&serde_json::json!({"product_id": product, "total": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let ready = app
        .client
        .get(format!("{}/readyz", api.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    for (who, log) in [("api", api.log_text()), ("worker", worker.log_text())] {
        assert!(
            log.contains("broker node did not answer") && log.contains("127.0.0.1:1"),
            "{who} did not say it skipped the dead node:\n{log}"
        );
    }
    assert_eq!(app.inventory(product).await["reserved_stock"], 1);
}
