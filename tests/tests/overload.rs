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
