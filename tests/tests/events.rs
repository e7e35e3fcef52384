//! Order events: every committed transition told once (or again, with the
//! same id) on the events stream, in order, and nothing else; consumers
//! that start late catch up, consumers that start now see only what is new.

use flashstock_tests::events::{self, Read};
use flashstock_tests::{Options, TestApp};
use shared::events::{EventData, From, Kind};
use std::collections::HashMap;
use std::time::Duration;

const DECIDED: Duration = Duration::from_secs(10);
const PUBLISHED: Duration = Duration::from_secs(20);
const IDLE: Duration = Duration::from_secs(1);

/// Places an order, waits for its decision and returns it.
async fn decided_order(app: &TestApp, product: u64, total: i64) -> serde_json::Value {
    let (_, body) = app.post_order(product, total, Some(5)).await;
    let id = body["data"]["id"].as_str().expect("an order id").to_owned();
    app.wait_for_decision(&id, DECIDED).await
}

/// Every event on the stream, once the outbox is empty.
async fn stream(app: &TestApp) -> Vec<Read> {
    assert!(events::wait_published(&app.db, PUBLISHED).await);
    events::read(
        &app.config.amqp_url,
        &app.topology(),
        From::First,
        IDLE,
        usize::MAX,
    )
    .await
}

#[tokio::test]
async fn every_transition_is_told_once_in_order_with_what_a_consumer_needs() {
    // Long enough for the pay and the cancel to come first on a busy machine.
    let app = TestApp::spawn(Options::default().env("RESERVATION_TTL", "8s")).await;
    let product = app.create_product("three left", 3).await;
    let paid = decided_order(&app, product, 1).await;
    let cancelled = decided_order(&app, product, 1).await;
    let expiring = decided_order(&app, product, 1).await;
    let rejected = decided_order(&app, product, 1).await;
    for order in [&paid, &cancelled, &expiring] {
        assert_eq!(order["status"], "ACCEPTED", "{order}");
    }
    assert_eq!(rejected["reason"], "OUT_OF_STOCK", "{rejected}");
    let id = |o: &serde_json::Value| o["id"].as_str().unwrap().to_owned();
    assert_eq!(app.order_action(&id(&paid), "pay").await.0, 200);
    assert_eq!(app.order_action(&id(&cancelled), "cancel").await.0, 200);
    // The sweeper expires the third once its eight seconds are up.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while app.wait_for_decision(&id(&expiring), DECIDED).await["status"] != "EXPIRED" {
        assert!(std::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let read = stream(&app).await;
    let told: Vec<(String, String)> = read
        .iter()
        .map(|r| (r.event.subject.clone(), r.event.event_type.clone()))
        .collect();
    let order = |o: &serde_json::Value, kind: Kind| (id(o), kind.event_type());
    let product_event = |kind: Kind| (product.to_string(), kind.event_type());
    assert_eq!(
        told,
        [
            order(&paid, Kind::Accepted),
            order(&cancelled, Kind::Accepted),
            order(&expiring, Kind::Accepted),
            product_event(Kind::SoldOut),
            order(&rejected, Kind::Rejected),
            order(&paid, Kind::Paid),
            product_event(Kind::Available),
            order(&cancelled, Kind::Cancelled),
            order(&expiring, Kind::Expired),
        ]
        .to_vec(),
        "{read:#?}"
    );

    // What a consumer needs without calling back, on the database clock.
    let by_subject_type: HashMap<(String, String), &Read> = read
        .iter()
        .map(|r| ((r.event.subject.clone(), r.event.event_type.clone()), r))
        .collect();
    let accepted = &by_subject_type[&order(&paid, Kind::Accepted)].event;
    assert_eq!(accepted.specversion, "1.0");
    assert_eq!(accepted.id, format!("{}.accepted", id(&paid)));
    assert_eq!(
        accepted.source,
        format!("/flashstock/{}", app.config.broker_namespace)
    );
    assert_eq!(accepted.datacontenttype, "application/json");
    let EventData::Order(data) = &accepted.data else {
        panic!("an order event carries the order");
    };
    assert_eq!(data.product_id, product);
    assert_eq!(data.total, 1);
    assert_eq!(data.status.as_str(), "ACCEPTED");
    assert_eq!(data.reason, None);
    let same_instant = |a: &str, b: &serde_json::Value| {
        let a: chrono::DateTime<chrono::Utc> = a.parse().unwrap();
        let b: chrono::DateTime<chrono::Utc> = b.as_str().unwrap().parse().unwrap();
        a == b
    };
    assert!(
        same_instant(&accepted.time, &paid["decided_at"]),
        "{accepted:?} {paid}"
    );
    assert!(same_instant(
        data.expires_at.as_deref().unwrap(),
        &paid["expires_at"]
    ));
    assert_eq!(accepted.time.len(), "2026-12-04T10:00:00.000000Z".len());
    let refused = &by_subject_type[&order(&rejected, Kind::Rejected)].event;
    let EventData::Order(data) = &refused.data else {
        panic!("an order event carries the order");
    };
    assert_eq!(data.reason.as_deref(), Some("OUT_OF_STOCK"));
    assert_eq!(data.expires_at, None);
    let available = &by_subject_type[&product_event(Kind::Available)].event;
    let EventData::Product(data) = &available.data else {
        panic!("a product event carries the product");
    };
    assert_eq!((data.product_id, data.available_stock), (product, 1));

    let report = events::check(&app.db, &app.config.amqp_url, &app.topology(), PUBLISHED).await;
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

#[tokio::test]
async fn a_restock_of_a_sold_out_product_and_a_rejection_at_submission_are_told() {
    let app = TestApp::spawn(Options::default()).await;
    let product = app.create_product("one left", 1).await;
    assert_eq!(decided_order(&app, product, 1).await["status"], "ACCEPTED");
    // Sold out now; the api learns it and refuses the next orders on the spot.
    for _ in 0..3 {
        decided_order(&app, product, 1).await;
    }
    let restock = app
        .as_admin(
            app.client
                .put(format!("{}/api/products/{product}/inventory", app.address)),
        )
        .json(&serde_json::json!({"stock": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(restock.status(), 200);
    let read = stream(&app).await;
    let product_events: Vec<&str> = read
        .iter()
        .filter(|r| r.event.subject == product.to_string())
        .map(|r| r.event.event_type.as_str())
        .collect();
    assert_eq!(
        product_events,
        [
            "flashstock.product.sold_out",
            "flashstock.product.available"
        ]
    );
    let rejected = read
        .iter()
        .filter(|r| r.event.kind() == Some(Kind::Rejected))
        .count();
    assert_eq!(rejected, 3);
    // Once the api heard of the sell-out, it rejected orders on the spot.
    let (by_api,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM orders WHERE decided_by = 'api' AND product_id = ?")
            .bind(product)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(by_api >= 1, "no order was rejected at submission");
    let report = events::check(&app.db, &app.config.amqp_url, &app.topology(), PUBLISHED).await;
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

#[tokio::test]
async fn a_late_consumer_catches_up_from_the_first_event_and_a_new_one_sees_only_new_events() {
    let app = TestApp::spawn(Options::default()).await;
    let product = app.create_product("plenty", 1_000_000).await;
    // The events of a busy hour, compressed: 3,000 orders in batches.
    let mut placed = 0;
    while placed < 3_000 {
        let batch =
            futures::future::join_all((0..100).map(|_| app.post_order(product, 1, None))).await;
        assert!(batch.iter().all(|(s, _)| s.as_u16() == 202));
        placed += batch.len();
    }
    app.drain(product, Duration::from_secs(60)).await;
    let history = stream(&app).await;
    assert_eq!(history.len(), 3_000, "one accepted event per order");
    let nonconforming: Vec<_> = history
        .iter()
        .filter_map(|r| r.nonconforming.as_ref())
        .collect();
    assert!(nonconforming.is_empty(), "{nonconforming:?}");
    // Batched: far fewer stream entries than events.
    let mut entries: Vec<u64> = history.iter().map(|r| r.offset).collect();
    entries.dedup();
    assert!(entries.len() < 3_000, "{} entries", entries.len());

    // From an offset: that entry first.
    let middle = entries[entries.len() / 2];
    let from_middle = events::read(
        &app.config.amqp_url,
        &app.topology(),
        From::Offset(middle),
        IDLE,
        usize::MAX,
    )
    .await;
    assert_eq!(from_middle.first().map(|r| r.offset), Some(middle));
    let expected: Vec<&str> = history
        .iter()
        .filter(|r| r.offset >= middle)
        .map(|r| r.event.id.as_str())
        .collect();
    let got: Vec<&str> = from_middle.iter().map(|r| r.event.id.as_str()).collect();
    assert_eq!(got, expected);

    // From now: only what happens next (attached once `open` returns).
    let listener = events::Reader::open(&app.config.amqp_url, &app.topology(), From::Next).await;
    let listener = tokio::spawn(listener.take(Duration::from_secs(5), 5));
    let mut fresh = Vec::new();
    for _ in 0..5 {
        fresh.push(
            decided_order(&app, product, 1).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let heard = listener.await.unwrap();
    let heard: Vec<String> = heard.iter().map(|r| r.event.subject.clone()).collect();
    assert_eq!(heard, fresh);
}

#[tokio::test]
async fn with_events_off_nothing_is_recorded_or_published() {
    let app = TestApp::spawn(Options::default().env("ORDER_EVENTS", "off")).await;
    let product = app.create_product("quiet", 1).await;
    decided_order(&app, product, 1).await;
    decided_order(&app, product, 1).await;
    let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM order_events")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    let read = events::read(
        &app.config.amqp_url,
        &app.topology(),
        From::First,
        IDLE,
        usize::MAX,
    )
    .await;
    assert!(read.is_empty(), "{read:?}");
}

#[tokio::test]
async fn the_tail_prints_the_events_an_operator_asks_for() {
    let app = TestApp::spawn(Options::default()).await;
    let product = app.create_product("tailed", 2).await;
    let other = app.create_product("not tailed", 5).await;
    let mut placed = Vec::new();
    for _ in 0..3 {
        placed.push(
            decided_order(&app, product, 1).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    decided_order(&app, other, 1).await;
    assert!(events::wait_published(&app.db, PUBLISHED).await);

    let tail = |args: Vec<String>| {
        let env = app.env.clone();
        async move {
            let output = tokio::process::Command::new(flashstock_tests::process::binary("worker"))
                .arg("events")
                .args(args)
                .env_clear()
                .envs(env)
                .output();
            let output = tokio::time::timeout(Duration::from_secs(30), output)
                .await
                .expect("the tail ends after --count")
                .unwrap();
            assert!(output.status.success(), "{output:?}");
            String::from_utf8(output.stdout)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .collect::<Vec<_>>()
        }
    };
    let args = |text: &str| {
        text.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let lines = tail(args(&format!(
        "--from first --product {product} --type accepted --count 2"
    )))
    .await;
    let subjects: Vec<&str> = lines
        .iter()
        .map(|l| l["event"]["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, [placed[0].as_str(), placed[1].as_str()]);
    assert!(lines.iter().all(|l| l["offset"].is_u64()));

    let rejected = tail(args(
        "--from first --type flashstock.order.rejected --count 1",
    ))
    .await;
    assert_eq!(rejected[0]["event"]["subject"], placed[2].as_str());
    assert_eq!(rejected[0]["event"]["data"]["reason"], "OUT_OF_STOCK");
}
