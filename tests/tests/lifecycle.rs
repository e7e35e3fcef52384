//! Reservation lifecycle: pay, cancel, expire, restock, and idempotent submissions.

use flashstock_tests::{Options, TestApp, spawn_app};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DRAIN: Duration = Duration::from_secs(60);

async fn accepted_order(app: &TestApp, product: u64, total: i64) -> String {
    let (status, body) = app.post_order(product, total, Some(10)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["data"]["id"].as_str().unwrap().to_owned()
}

fn stock(inv: &Value) -> (i64, i64, i64) {
    (
        inv["stored_stock"].as_i64().unwrap(),
        inv["reserved_stock"].as_i64().unwrap(),
        inv["available_stock"].as_i64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paying_moves_the_units_out_of_stored_and_reserved() {
    let app = spawn_app().await;
    let product = app.create_product("Kaos", 100).await;
    let id = accepted_order(&app, product, 12).await;
    assert_eq!(stock(&app.inventory(product).await), (100, 12, 88));
    let (status, body) = app.order_action(&id, "pay").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "PAID");
    assert_eq!(stock(&app.inventory(product).await), (88, 0, 88));
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_accepted_order_releases_its_units() {
    let app = spawn_app().await;
    let product = app.create_product("Kaos", 100).await;
    let id = accepted_order(&app, product, 12).await;
    let (status, body) = app.order_action(&id, "cancel").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "CANCELLED");
    assert_eq!(stock(&app.inventory(product).await), (100, 0, 100));
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_order_cancelled_before_the_worker_sees_it_is_never_accepted() {
    let mut app = TestApp::spawn(Options::default().workers(0)).await;
    let product = app.create_product("Kaos", 5).await;
    let (status, body) = app.post_order(product, 2, None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = body["data"]["id"].as_str().unwrap().to_owned();
    let (status, body) = app.order_action(&id, "cancel").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "CANCELLED");

    app.spawn_worker(app.config.clone()).await;
    // A later order on the same partition proves the worker went past it.
    accepted_order(&app, product, 1).await;
    let order: Value = app
        .get(&format!("/api/orders/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(order["data"]["status"], "CANCELLED");
    assert_eq!(stock(&app.inventory(product).await), (5, 1, 4));
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_the_status_does_not_allow_are_409_with_the_status() {
    let app = spawn_app().await;
    let product = app.create_product("Kaos", 1).await;
    let paid = accepted_order(&app, product, 1).await;
    app.order_action(&paid, "pay").await;
    let (status, rejected) = app.post_order(product, 1, Some(10)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let rejected = rejected["data"]["id"].as_str().unwrap().to_owned();

    // Paying a paid order again is a replay (200), not a conflict: see
    // contract.rs. Every other transition the status does not allow is 409.
    for (id, action, current) in [
        (&paid, "cancel", "PAID"),
        (&rejected, "pay", "REJECTED"),
        (&rejected, "cancel", "REJECTED"),
    ] {
        let (status, body) = app.order_action(id, action).await;
        assert_eq!(status, StatusCode::CONFLICT, "{action} {current}: {body}");
        assert_eq!(body["data"]["error"], "INVALID_TRANSITION");
        assert!(
            body["data"]["message"].as_str().unwrap().contains(current),
            "{body}"
        );
    }
    let cancelled = {
        app.create_product("Other", 0).await;
        let product = app.create_product("Third", 3).await;
        let id = accepted_order(&app, product, 1).await;
        app.order_action(&id, "cancel").await;
        id
    };
    let (status, body) = app.order_action(&cancelled, "pay").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["data"]["message"]
            .as_str()
            .unwrap()
            .contains("CANCELLED")
    );
    let (status, body) = app
        .order_action("0190c7a4-5d1e-7bb2-9d1f-3c2a1b0e9f10", "pay")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["data"]["error"], "ORDER_NOT_FOUND");
    let (status, _) = app.order_action("nope", "cancel").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(stock(&app.inventory(product).await), (0, 0, 0));
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_orders_cannot_be_paid() {
    let app = TestApp::spawn(Options::default().workers(0)).await;
    let product = app.create_product("Kaos", 5).await;
    let (_, body) = app.post_order(product, 1, None).await;
    let (status, body) = app
        .order_action(body["data"]["id"].as_str().unwrap(), "pay")
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["data"]["message"]
            .as_str()
            .unwrap()
            .contains("PENDING")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaid_reservation_expires_and_its_units_come_back() {
    let app = TestApp::spawn(
        Options::default()
            .env("RESERVATION_TTL", "1s")
            .env("SWEEP_INTERVAL", "100ms"),
    )
    .await;
    let product = app.create_product("Kaos", 10).await;
    let id = accepted_order(&app, product, 4).await;
    assert_eq!(stock(&app.inventory(product).await), (10, 4, 6));
    let deadline = Instant::now() + Duration::from_secs(15);
    let order = loop {
        let order: Value = app
            .get(&format!("/api/orders/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if order["data"]["status"] != "ACCEPTED" || Instant::now() > deadline {
            break order;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(order["data"]["status"], "EXPIRED", "{order}");
    assert_eq!(stock(&app.inventory(product).await), (10, 0, 10));
    let (status, body) = app.order_action(&id, "pay").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["data"]["error"], "ORDER_EXPIRED");
    // Cancelling it is refused the same way, and releases nothing twice.
    let (status, body) = app.order_action(&id, "cancel").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["data"]["error"], "ORDER_EXPIRED");
    assert_eq!(stock(&app.inventory(product).await), (10, 0, 10));
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paying_past_expiry_fails_even_before_the_sweeper_runs() {
    let app = TestApp::spawn(
        Options::default()
            .env("RESERVATION_TTL", "1s")
            .env("SWEEP_INTERVAL", "1h"),
    )
    .await;
    let product = app.create_product("Kaos", 10).await;
    let id = accepted_order(&app, product, 4).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (status, body) = app.order_action(&id, "pay").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["data"]["error"], "ORDER_EXPIRED");
    let order: Value = app
        .get(&format!("/api/orders/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(order["data"]["status"], "EXPIRED");
    assert_eq!(
        stock(&app.inventory(product).await),
        (10, 0, 10),
        "nothing left the store"
    );
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_racing_expiry_has_exactly_one_winner_every_round() {
    const ROUNDS: usize = 40;
    let app = Arc::new(
        TestApp::spawn(
            Options::default()
                .env("RESERVATION_TTL", "1s")
                .env("SWEEP_INTERVAL", "20ms"),
        )
        .await,
    );
    let product = app.create_product("Kaos", 1000).await;
    let mut ids = Vec::new();
    for _ in 0..ROUNDS {
        ids.push(accepted_order(&app, product, 1).await);
    }
    // Each payment lands near its order's expiry, racing the sweeper.
    let started = Instant::now();
    let payments = futures::future::join_all(ids.iter().enumerate().map(|(i, id)| {
        let app = app.clone();
        let id = id.clone();
        async move {
            let at = Duration::from_millis(700 + (i as u64 * 600 / ROUNDS as u64));
            tokio::time::sleep(at.saturating_sub(started.elapsed())).await;
            app.order_action(&id, "pay").await
        }
    }))
    .await;
    let counts = app.drain(product, DRAIN).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let counts_after = app.status_counts(product).await;
    assert_eq!(
        counts_after.get("ACCEPTED"),
        None,
        "every reservation ended: {counts_after:?} (was {counts:?})"
    );
    let paid = payments
        .iter()
        .filter(|(s, _)| *s == StatusCode::OK)
        .count() as i64;
    let refused = payments
        .iter()
        .filter(|(s, _)| *s == StatusCode::CONFLICT)
        .count() as i64;
    let odd: Vec<_> = payments
        .iter()
        .filter(|(s, _)| *s != StatusCode::OK && *s != StatusCode::CONFLICT)
        .collect();
    assert_eq!(
        paid + refused,
        ROUNDS as i64,
        "each payment paid or was refused; other answers: {odd:?}"
    );
    assert_eq!(counts_after.get("PAID").copied().unwrap_or(0), paid);
    assert_eq!(counts_after.get("EXPIRED").copied().unwrap_or(0), refused);
    assert_eq!(
        stock(&app.inventory(product).await),
        (1000 - paid, 0, 1000 - paid)
    );
    app.assert_invariants().await;
    eprintln!("pay vs expiry: {paid} paid, {refused} expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restocking_after_a_sell_out_accepts_orders_again() {
    let app = spawn_app().await;
    let product = app.create_product("Kaos", 2).await;
    accepted_order(&app, product, 2).await;
    let (status, _) = app.post_order(product, 1, Some(10)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "sold out");
    let r = app
        .send_json(
            reqwest::Method::PUT,
            &format!("/api/products/{product}/inventory"),
            &json!({"stock": 1}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT, "below the 2 reserved");
    assert_eq!(stock(&app.inventory(product).await), (2, 2, 0), "unchanged");
    let r = app
        .send_json(
            reqwest::Method::PUT,
            &format!("/api/products/{product}/inventory"),
            &json!({"stock": 5}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    for _ in 0..3 {
        accepted_order(&app, product, 1).await;
    }
    let (status, _) = app.post_order(product, 1, Some(10)).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "sold out again at the new stock"
    );
    assert_eq!(stock(&app.inventory(product).await), (5, 5, 0));
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_submissions_with_one_key_make_one_order() {
    let app = Arc::new(spawn_app().await);
    let product = app.create_product("Kaos", 100).await;
    let key = uuid::Uuid::new_v4().to_string();
    let answers = futures::future::join_all((0..20).map(|_| {
        let app = app.clone();
        let key = key.clone();
        async move {
            let r = app
                .client
                .post(format!("{}/api/orders", app.address))
                .header("Idempotency-Key", key)
                .json(&json!({"product_id": product, "total": 3}))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            (status, body)
        }
    }))
    .await;
    let ids: std::collections::HashSet<String> = answers
        .iter()
        .map(|(_, b)| b["data"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|(s, _)| *s == StatusCode::ACCEPTED || *s == StatusCode::CREATED)
    );
    let counts = app.drain(product, DRAIN).await;
    assert_eq!(counts.values().sum::<i64>(), 1, "{counts:?}");
    assert_eq!(stock(&app.inventory(product).await), (100, 3, 97));

    // Later retries still see the same order, now decided.
    let r = app
        .client
        .post(format!("{}/api/orders", app.address))
        .header("Idempotency-Key", &key)
        .header("Prefer", "wait=5")
        .json(&json!({"product_id": product, "total": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    let body: Value = r.json().await.unwrap();
    assert!(ids.contains(body["data"]["id"].as_str().unwrap()));

    // The same key with another body is refused.
    let r = app
        .client
        .post(format!("{}/api/orders", app.address))
        .header("Idempotency-Key", &key)
        .json(&json!({"product_id": product, "total": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.json::<Value>().await.unwrap()["data"]["error"],
        "IDEMPOTENCY_KEY_REUSED"
    );

    // Another caller (other credentials) with the same key gets its own order.
    let r = app
        .client
        .post(format!("{}/api/orders", app.address))
        .header("Idempotency-Key", &key)
        .header("Authorization", "Bearer someone-else")
        .json(&json!({"product_id": product, "total": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let other: Value = r.json().await.unwrap();
    assert!(!ids.contains(other["data"]["id"].as_str().unwrap()));

    for bad in ["short", "has space in it here ok", "ünïcödé-key-0123456789"] {
        let r = app
            .client
            .post(format!("{}/api/orders", app.address))
            .header("Idempotency-Key", bad)
            .json(&json!({"product_id": product, "total": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    app.drain(product, DRAIN).await;
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_listed_by_product_and_status_and_summarised() {
    let app = spawn_app().await;
    let a = app.create_product("A", 2).await;
    let b = app.create_product("B", 5).await;
    for _ in 0..3 {
        app.post_order(a, 1, Some(10)).await;
    }
    app.post_order(b, 1, Some(10)).await;

    let page: Value = app
        .get(&format!("/api/orders?product_id={a}&status=REJECTED"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["data"]["total_items"], 1);
    assert_eq!(page["data"]["items"][0]["reason"], "OUT_OF_STOCK");
    let page: Value = app
        .get(&format!("/api/orders?product_id={a}&per_page=2&page=2"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["data"]["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["data"]["total_pages"], 2);
    let page: Value = app.get("/api/orders").await.json().await.unwrap();
    assert_eq!(page["data"]["total_items"], 4);

    let summary: Value = app
        .get(&format!("/api/products/{a}/orders/summary"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        summary["data"],
        json!({"product_id": a, "total": 3, "pending": 0, "accepted": 2, "rejected": 1, "paid": 0, "cancelled": 0, "expired": 0})
    );
    for bad in [
        "/api/orders?status=LOST",
        "/api/orders?product_id=x",
        "/api/orders?product_id=-2",
        "/api/orders?per_page=1000",
    ] {
        assert_eq!(
            app.get(bad).await.status(),
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    assert_eq!(
        app.get("/api/products/999/orders/summary").await.status(),
        StatusCode::NOT_FOUND
    );
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invariant_check_reports_a_broken_database() {
    let app = spawn_app().await;
    let product = app.create_product("Kaos", 10).await;
    accepted_order(&app, product, 2).await;
    app.assert_invariants().await;
    // Corrupt the books behind the service's back.
    sqlx::query("UPDATE inventories SET reserved_stock = 5 WHERE product_id = ?")
        .bind(product)
        .execute(&app.db)
        .await
        .unwrap();
    let report: Value = app.get("/api/admin/invariants").await.json().await.unwrap();
    assert_eq!(report["data"]["ok"], false);
    assert_eq!(
        report["data"]["violations"][0]["invariant"],
        "RESERVED_NOT_SUM_OF_ACCEPTED"
    );
}

/// `Idempotency-Key` on pay and cancel: a retry with the key does the same
/// transition again (200, `Idempotent-Replayed` once done), and the key
/// used for another action or another order is 422 and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_and_cancel_honour_an_idempotency_key() {
    let app = spawn_app().await;
    let product = app.create_product("Kaos", 10).await;
    let first = accepted_order(&app, product, 2).await;
    let second = accepted_order(&app, product, 3).await;
    let action = |id: &str, verb: &str, key: &str| {
        app.client
            .post(format!("{}/api/orders/{id}/{verb}", app.address))
            .header("Idempotency-Key", key)
            .send()
    };
    let key = "0b6e3c2a-pay-key-for-the-first";

    let r = action(&first, "pay", key).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("idempotent-replayed").is_none());
    let r = action(&first, "pay", key).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "a retry with the key");
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["data"]["status"], "PAID");

    // The same key for another order, or another action: refused, nothing done.
    for (id, verb) in [(&second, "pay"), (&second, "cancel"), (&first, "cancel")] {
        let r = action(id, verb, key).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{verb} {id}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["data"]["error"], "IDEMPOTENCY_KEY_REUSED");
    }
    let order = app.wait_for_decision(&second, Duration::from_secs(1)).await;
    assert_eq!(
        order["status"], "ACCEPTED",
        "the refused requests changed nothing"
    );

    // A refused request keeps no key: cancelling the paid order is 409,
    // and its key stays free for another request.
    let spare = "0b6e3c2a-refused-key-000001";
    let r = action(&first, "cancel", spare).await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM order_action_keys")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(n, 1, "only the pay's key is kept");

    // A key of its own cancels the second; its retry is a replay.
    let cancel_key = "0b6e3c2a-cancel-key-second";
    let r = action(&second, "cancel", cancel_key).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = action(&second, "cancel", cancel_key).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    // A malformed key is 422 before anything happens.
    let r = action(&second, "cancel", "short").await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let inventory = app.inventory(product).await;
    assert_eq!(inventory["stored_stock"], 8);
    assert_eq!(inventory["reserved_stock"], 0);
    app.assert_invariants().await;
}
