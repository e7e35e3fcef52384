//! Buyers: identity from a verified JWT, ownership of orders, payment by the
//! payment service only, a limit per buyer and the sale's window.

use chrono::{Duration as TimeDelta, Utc};
use flashstock_tests::{Options, TestApp};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &str = "buyer-signing-secret-0123456789abcdef";
const PAYMENT: &str = "payment-service-token-0123456789";
const ADMIN: &str = "admin-token-0123456789abcdef0123456789";
const ISSUER: &str = "https://id.shop.example";
const AUDIENCE: &str = "flashstock";

fn with_buyers() -> Options {
    Options::default()
        .env("BUYER_JWT_SECRET", SECRET)
        .env("BUYER_JWT_ISSUER", ISSUER)
        .env("BUYER_JWT_AUDIENCE", AUDIENCE)
        .env("PAYMENT_TOKEN", PAYMENT)
        .env("ADMIN_TOKEN", ADMIN)
}

fn sign(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A valid token for `buyer`, good for ten minutes.
fn token(buyer: &str) -> String {
    let now = Utc::now().timestamp();
    sign(
        json!({"sub": buyer, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600}),
        SECRET,
    )
}

fn bearer(req: RequestBuilder, token: &str) -> RequestBuilder {
    req.header("Authorization", format!("Bearer {token}"))
}

async fn send(req: RequestBuilder) -> (StatusCode, Value) {
    let r = req.send().await.expect("request");
    let status = r.status();
    if status == StatusCode::UNAUTHORIZED {
        assert_eq!(
            r.headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some("Bearer"),
            "a 401 names the scheme"
        );
    }
    (status, r.json().await.expect("json body"))
}

async fn order_as(app: &TestApp, token: &str, product: u64, wait: u64) -> (StatusCode, Value) {
    let req = app
        .client
        .post(format!("{}/api/orders", app.address))
        .header("Prefer", format!("wait={wait}"))
        .json(&json!({"product_id": product, "total": 1}));
    send(bearer(req, token)).await
}

async fn count_orders(app: &TestApp) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM orders")
        .fetch_one(&app.db)
        .await
        .unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyers_see_and_cancel_only_their_own_orders_and_only_the_payment_service_pays() {
    let app = TestApp::spawn(with_buyers()).await;
    let url = |p: &str| format!("{}{p}", app.address);
    let product = app.create_product("Kaos", 10).await;
    let (alice, bob) = (token("alice"), token("bob"));

    let (status, body) = order_as(&app, &alice, product, 10).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["data"]["buyer_id"], "alice");
    let id = body["data"]["id"].as_str().unwrap().to_owned();
    let order = format!("/api/orders/{id}");

    // Bob cannot see it, cancel it or pay it; its existence is not revealed.
    let (status, body) = send(bearer(app.client.get(url(&order)), &bob)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["data"]["error"], "ORDER_NOT_FOUND");
    let (status, _) = send(bearer(
        app.client.post(url(&format!("{order}/cancel"))),
        &bob,
    ))
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = send(bearer(app.client.post(url(&format!("{order}/pay"))), &bob)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // Nobody anonymous reads or pays.
    let (status, _) = send(app.client.get(url(&order))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = send(app.client.post(url(&format!("{order}/pay")))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Alice reads it (the scheme's case does not matter); still ACCEPTED.
    let (status, body) = send(
        app.client
            .get(url(&order))
            .header("Authorization", format!("bearer {alice}")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["status"], "ACCEPTED");
    // The payment service pays.
    let (status, body) = send(bearer(
        app.client.post(url(&format!("{order}/pay"))),
        PAYMENT,
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "PAID");

    // Lists: each buyer their own; the payment service every order.
    let (status, body) = order_as(&app, &bob, product, 10).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let bobs = body["data"]["id"].as_str().unwrap().to_owned();
    for (who, token, expected) in [
        ("alice", &alice, vec![id.clone()]),
        ("bob", &bob, vec![bobs.clone()]),
    ] {
        let (status, body) = send(bearer(app.client.get(url("/api/orders")), token)).await;
        assert_eq!(status, StatusCode::OK);
        let ids: Vec<&str> = body["data"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, expected, "{who}'s list");
    }
    let (_, body) = send(bearer(app.client.get(url("/api/orders")), PAYMENT)).await;
    assert_eq!(body["data"]["total_items"], 2);
    let (status, _) = send(app.client.get(url("/api/orders"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Summaries are not for buyers.
    let summary = url(&format!("/api/products/{product}/orders/summary"));
    assert_eq!(
        send(bearer(app.client.get(&summary), &bob)).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(app.client.get(&summary)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(bearer(app.client.get(&summary), PAYMENT)).await.0,
        StatusCode::OK
    );

    // Bob cancels his own; the payment service cannot cancel.
    let cancel = url(&format!("/api/orders/{bobs}/cancel"));
    assert_eq!(
        send(bearer(app.client.post(&cancel), PAYMENT)).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, body) = send(bearer(app.client.post(&cancel), &bob)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "CANCELLED");

    // An order is placed with a buyer's token: none, or a service token, records nothing.
    let before = count_orders(&app).await;
    let new_order = || {
        app.client
            .post(url("/api/orders"))
            .json(&json!({"product_id": product, "total": 1}))
    };
    assert_eq!(send(new_order()).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        send(bearer(new_order(), PAYMENT)).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(count_orders(&app).await, before);

    // An Idempotency-Key belongs to the buyer, whatever token they bring.
    let keyed = |token: &str| {
        bearer(new_order(), token).header("Idempotency-Key", "alice-checkout-0001-abcdef")
    };
    let (status, first) = send(keyed(&alice)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, again) = send(keyed(&token("alice"))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(first["data"]["id"], again["data"]["id"]);
    let (_, bobs_key) = send(keyed(&bob)).await;
    assert_ne!(first["data"]["id"], bobs_key["data"]["id"]);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_401_and_change_nothing() {
    let app = TestApp::spawn(with_buyers()).await;
    let product = app.create_product("Kaos", 10).await;
    let now = Utc::now().timestamp();
    let claims = |extra: Value| {
        let mut c = json!({"sub": "mallory", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 600});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    // alg "none": the header {"alg":"none","typ":"JWT"}, a valid token's
    // claims, no signature.
    let valid = sign(claims(json!({})), SECRET);
    let unsigned = format!(
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
        valid.split('.').nth(1).unwrap()
    );
    let cases = [
        ("expired", sign(claims(json!({"exp": now - 3600})), SECRET)),
        (
            "not yet valid",
            sign(claims(json!({"nbf": now + 3600})), SECRET),
        ),
        (
            "forged signature",
            sign(claims(json!({})), "another-secret-0123456789abcdef"),
        ),
        ("alg none", unsigned),
        (
            "wrong audience",
            sign(claims(json!({"aud": "someone-else"})), SECRET),
        ),
        (
            "wrong issuer",
            sign(claims(json!({"iss": "https://evil.example"})), SECRET),
        ),
        (
            "no subject",
            sign(
                json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now + 600}),
                SECRET,
            ),
        ),
        (
            "no expiry",
            sign(
                json!({"sub": "mallory", "iss": ISSUER, "aud": AUDIENCE}),
                SECRET,
            ),
        ),
        (
            "no audience",
            sign(
                json!({"sub": "mallory", "iss": ISSUER, "exp": now + 600}),
                SECRET,
            ),
        ),
        (
            "no issuer",
            sign(
                json!({"sub": "mallory", "aud": AUDIENCE, "exp": now + 600}),
                SECRET,
            ),
        ),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    let (status, body) = order_as(&app, &token("alice"), product, 10).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["data"]["id"].as_str().unwrap().to_owned();
    let before = count_orders(&app).await;
    for (what, bad) in &cases {
        let (status, body) = order_as(&app, bad, product, 0).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(body["data"]["error"], "UNAUTHORIZED", "{what}");
        let cancel = app
            .client
            .post(format!("{}/api/orders/{id}/cancel", app.address));
        assert_eq!(
            send(bearer(cancel, bad)).await.0,
            StatusCode::UNAUTHORIZED,
            "{what}"
        );
    }
    assert_eq!(count_orders(&app).await, before);
    let inventory: Value = app
        .get(&format!("/api/products/{product}/inventory"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        inventory["data"]["reserved_stock"], 1,
        "only alice's order holds units"
    );
}

/// Sends `orders` of 1 each, every one on a connection of its own, all at
/// once, waiting for the decisions; returns the final order bodies.
async fn flood(app: &Arc<TestApp>, product: u64, tokens: Vec<String>) -> Vec<Value> {
    let sends = tokens.into_iter().map(|token| {
        let app = app.clone();
        async move {
            let client = reqwest::Client::new();
            let req = client
                .post(format!("{}/api/orders", app.address))
                .header("Prefer", "wait=20")
                .json(&json!({"product_id": product, "total": 1}));
            let (status, body) = send(bearer(req, &token)).await;
            assert!(
                [
                    StatusCode::CREATED,
                    StatusCode::BAD_REQUEST,
                    StatusCode::ACCEPTED
                ]
                .contains(&status),
                "{status}: {body}"
            );
            let id = body["data"]["id"].as_str().unwrap().to_owned();
            let order = bearer(
                client.get(format!("{}/api/orders/{id}", app.address)),
                PAYMENT,
            );
            let mut order = send(order).await.1["data"].clone();
            for _ in 0..200 {
                if order["status"] != "PENDING" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                let again = bearer(
                    client.get(format!("{}/api/orders/{id}", app.address)),
                    PAYMENT,
                );
                order = send(again).await.1["data"].clone();
            }
            order
        }
    });
    futures::future::join_all(sends).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_buyer_through_fifty_connections_gets_exactly_the_limit() {
    let app = Arc::new(TestApp::spawn(with_buyers()).await);
    let r = app
        .post_json(
            "/api/products",
            &json!({"name": "Sepatu", "stock": 100, "max_per_buyer": 2}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let product = r.json::<Value>().await.unwrap()["data"]["id"]
        .as_u64()
        .unwrap();
    let alice = token("alice");
    let orders = flood(&app, product, vec![alice; 50]).await;
    let accepted = orders.iter().filter(|o| o["status"] == "ACCEPTED").count();
    let limited = orders
        .iter()
        .filter(|o| o["status"] == "REJECTED" && o["reason"] == "BUYER_LIMIT")
        .count();
    assert_eq!((accepted, limited), (2, 48), "{orders:?}");
    app.assert_invariants().await;
}

/// Creates a product of `stock` units with the rules in `extra`.
async fn product_with(app: &TestApp, stock: u64, extra: Value) -> u64 {
    let mut body = json!({"name": "Kaos", "stock": stock});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let r = app.post_json("/api/products", &body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["data"]["id"]
        .as_u64()
        .unwrap()
}

/// Places one order of 1 as `token`, waiting for the decision: its id, and
/// its status (with the reason when rejected).
async fn buy(app: &TestApp, token: &str, product: u64) -> (String, String) {
    let (status, body) = order_as(app, token, product, 10).await;
    assert!(
        status == StatusCode::CREATED || status == StatusCode::BAD_REQUEST,
        "{status} {body}"
    );
    let order = &body["data"];
    let outcome = match order["reason"].as_str() {
        Some(reason) => format!("{} {reason}", order["status"].as_str().unwrap()),
        None => order["status"].as_str().unwrap().to_owned(),
    };
    (order["id"].as_str().unwrap().to_owned(), outcome)
}

/// Makes `order`'s reservation due now and waits for the sweeper to expire it.
async fn expire_now(app: &TestApp, order: &str) {
    sqlx::query("UPDATE orders SET expires_at = NOW(6) WHERE id = ?")
        .bind(uuid::Uuid::parse_str(order).unwrap())
        .execute(&app.db)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = send(bearer(
            app.client
                .get(format!("{}/api/orders/{order}", app.address)),
            PAYMENT,
        ))
        .await;
        if body["data"]["status"] == "EXPIRED" {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_buyer_holds_falls_with_a_cancel_or_an_expiry_and_not_with_a_payment() {
    let app = TestApp::spawn(with_buyers().env("SWEEP_INTERVAL", "100ms")).await;
    let product = product_with(&app, 100, json!({"max_per_buyer": 2})).await;
    let alice = token("alice");
    // A paid order still counts.
    let (first, outcome) = buy(&app, &alice, product).await;
    assert_eq!(outcome, "ACCEPTED");
    let pay = format!("{}/api/orders/{first}/pay", app.address);
    let (status, body) = send(bearer(app.client.post(&pay), PAYMENT)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (second, outcome) = buy(&app, &alice, product).await;
    assert_eq!(outcome, "ACCEPTED");
    assert_eq!(buy(&app, &alice, product).await.1, "REJECTED BUYER_LIMIT");

    // A cancelled one no longer does.
    let cancel = format!("{}/api/orders/{second}/cancel", app.address);
    let (status, body) = send(bearer(app.client.post(&cancel), &alice)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (third, outcome) = buy(&app, &alice, product).await;
    assert_eq!(outcome, "ACCEPTED");
    assert_eq!(buy(&app, &alice, product).await.1, "REJECTED BUYER_LIMIT");

    // Nor does an expired one.
    expire_now(&app, &third).await;
    assert_eq!(buy(&app, &alice, product).await.1, "ACCEPTED");
    assert_eq!(buy(&app, &alice, product).await.1, "REJECTED BUYER_LIMIT");
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holding_gone_wrong_is_reported_and_recounted_when_released() {
    let app = TestApp::spawn(with_buyers().env("SWEEP_INTERVAL", "100ms")).await;
    let product = product_with(&app, 100, json!({"max_per_buyer": 5})).await;
    let alice = token("alice");
    let mut accepted = Vec::new();
    for _ in 0..3 {
        let (id, outcome) = buy(&app, &alice, product).await;
        assert_eq!(outcome, "ACCEPTED");
        accepted.push(id);
    }
    app.assert_invariants().await;
    // Lose the row behind the service's back (as an older worker deciding
    // past the migration would leave it).
    sqlx::query("DELETE FROM buyer_holdings WHERE product_id = ?")
        .bind(product)
        .execute(&app.db)
        .await
        .unwrap();
    let report = app.invariants_report().await;
    assert_eq!(report["data"]["ok"], false, "{report}");
    assert_eq!(
        report["data"]["violations"][0]["invariant"], "HOLDINGS_NOT_SUM_OF_ORDERS",
        "{report}"
    );
    assert_eq!(report["data"]["violations"][0]["product_id"], product);
    // The cancel still goes through and recounts the row (2 held); the
    // expiries then take it down to 0 as usual.
    let cancel = format!("{}/api/orders/{}/cancel", app.address, accepted[0]);
    let (status, body) = send(bearer(app.client.post(&cancel), &alice)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.assert_invariants().await;
    for order in &accepted[1..] {
        sqlx::query("UPDATE orders SET expires_at = NOW(6) WHERE id = ?")
            .bind(uuid::Uuid::parse_str(order).unwrap())
            .execute(&app.db)
            .await
            .unwrap();
    }
    expire_now(&app, &accepted[2]).await;
    expire_now(&app, &accepted[1]).await;
    app.assert_invariants().await;
    let (held,): (i64,) = sqlx::query_as(
        "SELECT held FROM buyer_holdings WHERE product_id = ? AND buyer_id = 'alice'",
    )
    .bind(product)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(held, 0);
    for _ in 0..5 {
        assert_eq!(buy(&app, &alice, product).await.1, "ACCEPTED");
    }
    assert_eq!(buy(&app, &alice, product).await.1, "REJECTED BUYER_LIMIT");
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_set_during_the_sale_counts_what_was_bought_before_it() {
    let app = TestApp::spawn(with_buyers()).await;
    let product = product_with(&app, 100, json!({})).await;
    let bob = token("bob");
    for _ in 0..3 {
        assert_eq!(buy(&app, &bob, product).await.1, "ACCEPTED");
    }
    let r = app
        .as_admin(
            app.client
                .patch(format!("{}/api/products/{product}", app.address)),
        )
        .json(&json!({"max_per_buyer": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(buy(&app, &bob, product).await.1, "REJECTED BUYER_LIMIT");
    assert_eq!(buy(&app, &token("carol"), product).await.1, "ACCEPTED");
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_buyers_three_orders_each_stock_one_hundred_limit_one() {
    let app = Arc::new(TestApp::spawn(with_buyers()).await);
    let r = app
        .post_json(
            "/api/products",
            &json!({"name": "Tas", "stock": 100, "max_per_buyer": 1}),
        )
        .await;
    let product = r.json::<Value>().await.unwrap()["data"]["id"]
        .as_u64()
        .unwrap();
    let tokens: Vec<String> = (0..200)
        .flat_map(|b| {
            let t = token(&format!("buyer-{b}"));
            [t.clone(), t.clone(), t]
        })
        .collect();
    let orders = flood(&app, product, tokens).await;
    let mut per_buyer: HashMap<String, usize> = HashMap::new();
    let mut accepted = 0;
    for o in &orders {
        match (o["status"].as_str().unwrap(), o["reason"].as_str()) {
            ("ACCEPTED", _) => {
                accepted += 1;
                *per_buyer
                    .entry(o["buyer_id"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
            ("REJECTED", Some("OUT_OF_STOCK" | "BUYER_LIMIT")) => {}
            other => panic!("unexpected {other:?}: {o}"),
        }
    }
    assert_eq!(accepted, 100);
    assert!(per_buyer.values().all(|&n| n == 1), "{per_buyer:?}");
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sale_window_is_kept_on_the_database_clock() {
    let app = TestApp::spawn(with_buyers()).await;
    let starts = Utc::now() + TimeDelta::seconds(3);
    let r = app
        .post_json(
            "/api/products",
            &json!({"name": "Jaket", "stock": 10, "sale_starts_at": starts.to_rfc3339()}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    let product = body["data"]["id"].as_u64().unwrap();
    assert_eq!(body["data"]["max_per_buyer"], Value::Null);
    assert!(body["data"]["sale_starts_at"].is_string(), "{body}");

    // Before the start: rejected at once, on the spot, holding nothing.
    let alice = token("alice");
    let req = app
        .client
        .post(format!("{}/api/orders", app.address))
        .json(&json!({"product_id": product, "total": 1}));
    let (status, body) = send(bearer(req, &alice)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        body["data"]["status"], "REJECTED",
        "answered at once: {body}"
    );
    assert_eq!(body["data"]["reason"], "SALE_NOT_STARTED");
    let (status, body) = order_as(&app, &alice, product, 10).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["data"]["reason"], "SALE_NOT_STARTED");
    let inventory: Value = app
        .get(&format!("/api/products/{product}/inventory"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(inventory["data"]["reserved_stock"], 0);

    // After it: decided normally.
    let wait = (starts - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(300);
    tokio::time::sleep(wait).await;
    let (status, body) = order_as(&app, &alice, product, 10).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // The admin closes the sale: later orders are SALE_ENDED.
    let patch = |body: Value| {
        app.as_admin(
            app.client
                .patch(format!("{}/api/products/{product}", app.address)),
        )
        .json(&body)
    };
    // Not for buyers.
    let (status, _) = send(bearer(
        app.client
            .patch(format!("{}/api/products/{product}", app.address))
            .json(&json!({"max_per_buyer": 1})),
        &token("alice"),
    ))
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = send(patch(json!({"sale_ends_at": starts.to_rfc3339()}))).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "an end at the start: {body}"
    );
    assert_eq!(body["data"]["error"], "INVALID_SALE_WINDOW");
    let (status, body) = send(patch(json!({"max_per_buyer": 0}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let ended = Utc::now() - TimeDelta::milliseconds(1);
    let (status, body) = send(patch(
        json!({"sale_ends_at": ended.to_rfc3339(), "max_per_buyer": 5}),
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["max_per_buyer"], 5);
    let (status, body) = order_as(&app, &token("bob"), product, 10).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["data"]["reason"], "SALE_ENDED");
    // Reopened (null removes the end): decided normally again.
    let (status, body) = send(patch(json!({"sale_ends_at": null}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["sale_ends_at"], Value::Null);
    assert_eq!(body["data"]["max_per_buyer"], 5, "a field left out stays");
    let (status, body) = order_as(&app, &token("bob"), product, 10).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let got: Value = app
        .get(&format!("/api/products/{product}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["data"]["max_per_buyer"], 5);
    app.assert_invariants().await;
}

/// Generates a key pair with openssl: the private key (PKCS#8 PEM) and the
/// path of the public key file.
fn key_pair(dir: &std::path::Path, name: &str, genpkey: &[&str]) -> (Vec<u8>, std::path::PathBuf) {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let run = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl {args:?}");
    };
    let mut args = vec!["genpkey", "-out", private.to_str().unwrap()];
    args.extend_from_slice(genpkey);
    run(&args);
    run(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (std::fs::read(&private).unwrap(), public)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_es256_tokens_verify_with_the_public_key_file() {
    let dir =
        std::env::temp_dir().join(format!("flashstock-keys-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let kinds = [
        (
            "rsa",
            Algorithm::RS256,
            vec!["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        ),
        (
            "ec",
            Algorithm::ES256,
            vec!["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
    ];
    for (name, algorithm, genpkey) in kinds {
        let (private, public) = key_pair(&dir, name, &genpkey);
        let app = TestApp::spawn(
            Options::default()
                .env("BUYER_JWT_PUBLIC_KEY_FILE", public.to_str().unwrap())
                .env("BUYER_JWT_ISSUER", ISSUER)
                .env("BUYER_JWT_AUDIENCE", AUDIENCE)
                .env("PAYMENT_TOKEN", PAYMENT)
                .env("ADMIN_TOKEN", ADMIN),
        )
        .await;
        let product = app.create_product("Kaos", 5).await;
        let key = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&private).unwrap(),
            _ => EncodingKey::from_ec_pem(&private).unwrap(),
        };
        let now = Utc::now().timestamp();
        let claims = json!({"sub": format!("{name}-buyer"), "exp": now + 600,
                            "iss": ISSUER, "aud": AUDIENCE});
        let good = jsonwebtoken::encode(&Header::new(algorithm), &claims, &key).unwrap();
        let (status, body) = order_as(&app, &good, product, 10).await;
        assert_eq!(status, StatusCode::CREATED, "{name}: {body}");
        assert_eq!(body["data"]["buyer_id"], format!("{name}-buyer"));
        // The same identity provider's token for another of its apps is no buyer's.
        let elsewhere =
            json!({"sub": "someone", "exp": now + 600, "iss": ISSUER, "aud": "another-app"});
        let elsewhere = jsonwebtoken::encode(&Header::new(algorithm), &elsewhere, &key).unwrap();
        let (status, body) = order_as(&app, &elsewhere, product, 0).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        // The classic confusion: HS256 "signed" with the public key as the secret.
        let public_pem = std::fs::read_to_string(&public).unwrap();
        let confused = sign(claims, &public_pem);
        let (status, body) = order_as(&app, &confused, product, 0).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The hot paths write values into their SQL as literals (hex for text):
/// a buyer whose name is made of quotes, SQL and non-ASCII is recorded,
/// decided and read back byte for byte, and the answer to the submission
/// shows what the database holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_named_with_quotes_and_sql_is_stored_as_written() {
    let app = TestApp::spawn(with_buyers()).await;
    let product = app.create_product("Kaos", 10).await;
    let name = "o'brien\"; DROP TABLE orders; -- \\ ünï 🙂";
    let buyer = token(name);
    let req = app
        .client
        .post(format!("{}/api/orders", app.address))
        .json(&json!({"product_id": product, "total": 1}));
    let (status, submitted) = send(bearer(req, &buyer)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{submitted}");
    assert_eq!(submitted["data"]["buyer_id"], name);
    let id = submitted["data"]["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status,): (String,) = sqlx::query_as("SELECT status FROM orders")
            .fetch_one(&app.db)
            .await
            .unwrap();
        if status != "PENDING" || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, decided) = send(bearer(
        app.client.get(format!("{}/api/orders/{id}", app.address)),
        &buyer,
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{decided}");
    assert_eq!(decided["data"]["status"], "ACCEPTED", "{decided}");
    assert_eq!(decided["data"]["buyer_id"], name);
    assert_eq!(
        decided["data"]["created_at"],
        submitted["data"]["created_at"]
    );
    let (stored,): (String,) = sqlx::query_as("SELECT buyer_id FROM orders")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, name);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sales_opening_under_load_reject_no_order_recorded_after_they_opened() {
    use chrono::{DateTime, SecondsFormat};
    let app = Arc::new(flashstock_tests::spawn_app().await);
    // A hundred sales opening 12 ms apart, from a second ahead on the database
    // clock: each opening may fall inside a recording batch.
    let (now,): (DateTime<Utc>,) = sqlx::query_as("SELECT NOW(6)")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let mut products = Vec::new();
    for i in 0..100 {
        let starts = now + TimeDelta::milliseconds(1000 + 12 * i);
        let r = app
            .post_json(
                "/api/products",
                &json!({"name": format!("sale {i}"), "stock": 1_000_000,
                        "sale_starts_at": starts.to_rfc3339_opts(SecondsFormat::Micros, true)}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        products.push(
            r.json::<Value>().await.unwrap()["data"]["id"]
                .as_u64()
                .unwrap(),
        );
    }
    let products = Arc::new(products);
    // 64 clients ordering every product in turn until the last sale is open.
    let until = Instant::now() + Duration::from_millis(1000 + 12 * 100 + 300);
    let clients: Vec<_> = (0..64)
        .map(|c| {
            let (app, products) = (app.clone(), products.clone());
            tokio::spawn(async move {
                let mut n = c;
                while Instant::now() < until {
                    let (status, body) =
                        app.post_order(products[n % products.len()], 1, None).await;
                    // Shed past capacity (a slow machine) is fine: nothing recorded.
                    assert!(
                        status == StatusCode::ACCEPTED || body["data"]["error"] == "OVERLOADED",
                        "{status}: {body}"
                    );
                    n += 1;
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    let (mut accepted, mut rejected) = (0, 0);
    for product in products.iter() {
        let counts = app.drain(*product, Duration::from_secs(60)).await;
        assert!(!counts.contains_key("PENDING"), "{product}: {counts:?}");
        accepted += counts.get("ACCEPTED").copied().unwrap_or(0);
        rejected += counts.get("REJECTED").copied().unwrap_or(0);
    }
    // Orders came both before and after the openings.
    assert!(
        accepted > 0 && rejected > 0,
        "{accepted} accepted, {rejected} rejected"
    );
    let wrong: Vec<(Option<String>, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT o.decided_by, o.created_at, p.sale_starts_at FROM orders o JOIN products p ON p.id = o.product_id \
         WHERE o.reason = 'SALE_NOT_STARTED' AND o.created_at >= p.sale_starts_at",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert!(
        wrong.is_empty(),
        "{} orders recorded after their sale opened were rejected SALE_NOT_STARTED: {wrong:?}",
        wrong.len()
    );
    // And none recorded before it was accepted.
    let (early,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM orders o JOIN products p ON p.id = o.product_id \
         WHERE o.status = 'ACCEPTED' AND o.created_at < p.sale_starts_at",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(early, 0);
    app.assert_invariants().await;
}
