//! Past capacity: admission control sheds with 503 `OVERLOADED` and records
//! nothing, the broker's length limit does the same, waiting requests leave
//! no trace in memory, and a live backlog is never republished.

use flashstock_tests::process::metric;
use flashstock_tests::{Options, TestApp};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Orders in this test's database.
async fn orders_recorded(app: &TestApp) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM orders")
        .fetch_one(&app.db)
        .await
        .unwrap();
    n
}

/// Posts an order and returns the status, the `Retry-After` header and the body.
async fn post(app: &TestApp, product: u64) -> (StatusCode, Option<String>, Value) {
    let r = app
        .post_json("/api/orders", &json!({"product_id": product, "total": 1}))
        .await;
    let status = r.status();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry_after, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_worker_the_api_sheds_within_the_bound_and_records_nothing_for_shed_orders() {
    let app = TestApp::spawn(
        Options::default()
            .workers(0)
            .env("ADMISSION_MAX_DELAY", "2s"),
    )
    .await;
    let product = app.create_product("Kaos", 1_000_000).await;
    let started = Instant::now();
    let mut admitted = 0;
    let shed = loop {
        let (status, retry_after, body) = post(&app, product).await;
        match status {
            StatusCode::ACCEPTED => admitted += 1,
            StatusCode::SERVICE_UNAVAILABLE => break (retry_after, body),
            other => panic!("unexpected {other}: {body}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nothing was shed within 10 s ({admitted} admitted)"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let (retry_after, body) = shed;
    assert_eq!(body["code"], 503);
    assert_eq!(body["data"]["error"], "OVERLOADED", "{body}");
    assert!(retry_after.is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
    // The shed order was not recorded, and shedding goes on while nothing decides.
    for _ in 0..20 {
        let (status, _, _) = post(&app, product).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(orders_recorded(&app).await, admitted);
    assert_eq!(
        metric(&app.address, "flashstock_api_orders_undecided").await,
        admitted as f64
    );
    assert_eq!(
        metric(&app.address, "flashstock_api_orders_shed_total").await,
        21.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_workers_decide_the_backlog_the_api_admits_again() {
    let mut app = TestApp::spawn(
        Options::default()
            .workers(0)
            .env("ADMISSION_MAX_DELAY", "1s"),
    )
    .await;
    let product = app.create_product("Kaos", 1_000_000).await;
    let started = Instant::now();
    while post(&app, product).await.0 != StatusCode::SERVICE_UNAVAILABLE {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    app.spawn_worker(app.config.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, body) = post(&app, product).await;
        if status == StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(Instant::now() < deadline, "never admitted again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&app.address, "flashstock_api_orders_undecided").await > 0.0 {
        assert!(
            Instant::now() < deadline,
            "admitted orders stayed undecided"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_the_full_queue_refuses_is_shed_and_removed() {
    // Admission control off: the broker's length limit is the only brake.
    let app = TestApp::spawn(
        Options::default()
            .workers(0)
            .env("ADMISSION_MAX_DELAY", "0")
            .env("QUEUE_MAX_LENGTH", "3"),
    )
    .await;
    let product = app.create_product("Kaos", 100).await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let (status, retry_after, body) = post(&app, product).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(body["data"]["error"], "OVERLOADED", "{body}");
            assert!(retry_after.is_some());
        }
        statuses.push(status);
    }
    let accepted = statuses
        .iter()
        .filter(|s| **s == StatusCode::ACCEPTED)
        .count();
    // A quorum queue checks its limit as it applies each publish, so it may
    // take one more than the limit before it refuses.
    assert!((3..=4).contains(&accepted), "{statuses:?}");
    assert_eq!(orders_recorded(&app).await, accepted as i64);
    assert_eq!(
        metric(&app.address, "flashstock_api_relay_republished_total").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sold_out_orders_waiting_for_their_decision_leave_no_waiter_behind() {
    let app = TestApp::spawn(Options::default().workers(1)).await;
    let product = app.create_product("Kaos", 1).await;
    let (status, _) = app.post_order(product, 1, Some(5)).await;
    assert_eq!(status, StatusCode::CREATED);
    // Once the workers report it sold out, orders are rejected on the spot.
    let answers = futures::stream::iter(0..2_000)
        .map(|_| app.post_order(product, 1, Some(5)))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    for (status, body) in answers {
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    assert!(
        metric(
            &app.address,
            "flashstock_api_orders_rejected_sold_out_total"
        )
        .await
            > 0.0
    );
    assert_eq!(metric(&app.address, "flashstock_api_waiters").await, 0.0);
    assert_eq!(
        metric(&app.address, "flashstock_api_orders_undecided").await,
        0.0
    );
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_backlog_is_never_republished() {
    let mut app = TestApp::spawn(
        Options::default()
            .workers(0)
            .env("ADMISSION_MAX_DELAY", "0")
            .env("HEARTBEAT_INTERVAL", "200ms")
            .env("LEASE_DURATION", "1s"),
    )
    .await;
    // A second api on the same database and broker: its relay would claim
    // the first one's orders if it took a slow backlog for a lost one.
    app.spawn_api(app.config.clone()).await;
    let product = app.create_product("Kaos", 1_000).await;
    for _ in 0..200 {
        assert_eq!(post(&app, product).await.0, StatusCode::ACCEPTED);
    }
    // Several lease durations and relay rounds with no worker at all.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let relayed: f64 =
        sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM orders WHERE relayed_at IS NOT NULL")
            .fetch_one(&app.db)
            .await
            .unwrap()
            .0 as f64;
    assert_eq!(relayed, 0.0);
    assert_eq!(
        metric(&app.address, "flashstock_api_relay_republished_total").await,
        0.0
    );
    app.spawn_worker(app.config.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (pending,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM orders WHERE status = 'PENDING'")
                .fetch_one(&app.db)
                .await
                .unwrap();
        if pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{pending} still pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_cancelled_through_another_api_frees_its_partition_however_many_partitions_are_backed_up()
 {
    use shared::domain::ProductId;
    use shared::partition::partition_of;
    let mut app = TestApp::spawn(
        Options::default()
            .workers(0)
            .env("ORDER_PARTITIONS", "32")
            .env("ADMISSION_MAX_DELAY", "2s"),
    )
    .await;
    let other_api = app.spawn_api(app.config.clone()).await;
    // A product in each of 16 low partitions, and one in partition 31.
    let mut by_partition = std::collections::HashMap::new();
    while by_partition.len() < 17 {
        let id = app.create_product("Kaos", 1_000).await;
        let p = partition_of(ProductId::new(id as i64).unwrap(), 32);
        if p < 16 || p == 31 {
            by_partition.entry(p).or_insert(id);
        }
    }
    // No worker: 16 orders wait in each low partition, more than the
    // reconciler checks per partition when the budget is split evenly.
    for p in 0..16 {
        for _ in 0..16 {
            assert_eq!(post(&app, by_partition[&p]).await.0, StatusCode::ACCEPTED);
        }
    }
    let lonely = by_partition[&31];
    let (status, _, order) = post(&app, lonely).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = order["data"]["id"].as_str().unwrap();
    // Cancelled while PENDING through the other api: this api hears nothing.
    let r = app
        .client
        .post(format!("{other_api}/api/orders/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Once the cancelled order is past the target (1 s) the partition looks
    // stalled until the reconciler (every 250 ms) finds it cancelled.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let deadline = Instant::now() + Duration::from_millis(600);
    loop {
        let (status, _, body) = post(&app, lonely).await;
        if status == StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            Instant::now() < deadline,
            "partition 31 still shed past a reconcile period: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_retry_of_a_recorded_order_gets_that_order_while_its_partition_is_shed() {
    let app = TestApp::spawn(
        Options::default()
            .workers(0)
            .env("ADMISSION_MAX_DELAY", "1s"),
    )
    .await;
    let product = app.create_product("Kaos", 10).await;
    let keyed = || {
        app.client
            .post(format!("{}/api/orders", app.address))
            .header("Idempotency-Key", "retry-after-a-lost-answer-0001")
            .json(&json!({"product_id": product, "total": 1}))
    };
    let first = keyed().send().await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    // No worker: the partition is stalled, and new orders are shed.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, _, _) = post(&app, product).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // The client lost the first answer and retries with its key: the order exists.
    let retry = keyed().send().await.unwrap();
    assert_eq!(retry.status(), StatusCode::ACCEPTED);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry["data"]["id"], first["data"]["id"]);
    // The same key with another body is still refused, and nothing more is recorded.
    let other = app
        .client
        .post(format!("{}/api/orders", app.address))
        .header("Idempotency-Key", "retry-after-a-lost-answer-0001")
        .json(&json!({"product_id": product, "total": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(orders_recorded(&app).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_that_falls_behind_on_notices_keeps_them_on_the_broker_and_bounded() {
    use api::decisions::{NOTICE_QUEUE_MAX, listen};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let app = TestApp::spawn(Options::default().workers(0)).await;
    let topology = app.topology();
    let stop = tokio_util::sync::CancellationToken::new();
    let link = shared::broker::BrokerLink::start(
        flashstock_tests::amqp_url(),
        "flashstock slow listener".into(),
        topology.clone(),
        stop.clone(),
    )
    .await
    .unwrap();
    // A listener that takes 5 ms a notice: 200 a second.
    let queue = format!("{}.slow-listener", topology.decisions_exchange());
    let heard = Arc::new(AtomicUsize::new(0));
    let listener = tokio::spawn(listen(
        link.clone(),
        topology.clone(),
        queue.clone(),
        {
            let heard = heard.clone();
            move |_| {
                heard.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        },
        stop.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while heard.load(Ordering::Relaxed) == 0 {
        // Until it listens, a notice reaches nobody: send one now and then.
        app.publish_raw(&topology.decisions_exchange(), "", br#"{"decisions":[]}"#)
            .await;
        assert!(
            Instant::now() < deadline,
            "the listener never heard a notice"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Far more notices than it can take, and than its queue holds.
    let burst = NOTICE_QUEUE_MAX as usize + 5_000;
    let notices: Vec<(String, Vec<u8>)> = (0..burst)
        .map(|_| (String::new(), br#"{"decisions":[]}"#.to_vec()))
        .collect();
    app.publish_raw_many(&topology.decisions_exchange(), &notices)
        .await;
    // The backlog waits on the broker, not in the api's memory, and the
    // queue kept only the newest. (The queue is exclusive to the listener's
    // connection: counted through it.)
    let ch = link.connection().unwrap().create_channel().await.unwrap();
    let counted = ch
        .queue_declare(
            format!("{queue}.1").into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let (ready, consumers) = (counted.message_count(), counted.consumer_count());
    let handled = heard.load(Ordering::Relaxed);
    assert_eq!(consumers, 1);
    assert!(
        ready as usize >= burst / 2,
        "only {ready} of {burst} notices wait on the broker ({handled} handled): the client buffers them"
    );
    assert!(
        ready <= NOTICE_QUEUE_MAX,
        "{ready} notices queued, past the bound"
    );
    stop.cancel();
    let _ = listener.await;
}
