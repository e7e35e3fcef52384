//! The admin boundary and the cap on waiting requests.

use flashstock_tests::{Options, TestApp};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seller_endpoints_need_the_admin_token_and_buyers_do_not() {
    let app = TestApp::spawn(
        Options::default().env("ADMIN_TOKEN", "let-me-in-0123456789abcdef0123456789"),
    )
    .await;
    let url = |p: &str| format!("{}{p}", app.address);
    let body = json!({"name": "Kaos", "stock": 5});
    for auth in [
        None,
        Some("Bearer wrong-token"),
        Some("let-me-in-0123456789abcdef0123456789"),
        Some("Basic let-me-in-0123456789abcdef0123456789"),
    ] {
        let mut req = app.client.post(url("/api/products")).json(&body);
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["data"]["error"], "UNAUTHORIZED");
    }
    let listed: Value = app.get("/api/products").await.json().await.unwrap();
    assert_eq!(listed["data"]["total_items"], 0, "nothing was created");

    let admin = "Bearer let-me-in-0123456789abcdef0123456789";
    let r = app
        .client
        .post(url("/api/products"))
        .header("Authorization", admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let product = r.json::<Value>().await.unwrap()["data"]["id"]
        .as_u64()
        .unwrap();
    let inventory = url(&format!("/api/products/{product}/inventory"));
    let r = app
        .client
        .put(&inventory)
        .json(&json!({"stock": 9}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app
        .client
        .put(&inventory)
        .header("Authorization", admin)
        .json(&json!({"stock": 9}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        app.get("/api/admin/invariants").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let r = app
        .client
        .get(url("/api/admin/invariants"))
        .header("Authorization", admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["data"]["ok"], true);

    // Buyers need no token (no buyer key is configured)...
    assert_eq!(
        app.get(&format!("/api/products/{product}/inventory"))
            .await
            .status(),
        StatusCode::OK
    );
    let (status, body) = app.post_order(product, 1, Some(10)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["data"]["id"].as_str().unwrap();
    // ...but paying is the payment service's call: the admin token will do.
    assert_eq!(
        app.order_action(id, "pay").await.0,
        StatusCode::UNAUTHORIZED
    );
    let r = app
        .client
        .post(url(&format!("/api/orders/{id}/pay")))
        .header("Authorization", admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_waiting_a_request_is_answered_without_waiting() {
    // No worker: nothing gets decided, so a waiting request waits its full time.
    let app = std::sync::Arc::new(
        TestApp::spawn(Options::default().workers(0).env("MAX_WAITING", "1")).await,
    );
    let product = app.create_product("Kaos", 5).await;
    let started = Instant::now();
    let waits = futures::future::join_all((0..2).map(|_| {
        let app = app.clone();
        async move {
            let sent = Instant::now();
            let (status, _) = app.post_order(product, 1, Some(3)).await;
            (status, sent.elapsed())
        }
    }))
    .await;
    assert!(
        waits.iter().all(|(s, _)| *s == StatusCode::ACCEPTED),
        "{waits:?}"
    );
    let (fast, slow) = (
        waits.iter().map(|w| w.1).min().unwrap(),
        waits.iter().map(|w| w.1).max().unwrap(),
    );
    assert!(
        slow >= Duration::from_millis(2900),
        "one request held the slot and waited: {waits:?}"
    );
    assert!(
        fast < Duration::from_millis(2000),
        "the other did not wait: {waits:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Sends `head` (and nothing more) on a raw connection and returns what the
/// api answered and how long it took to answer or hang up.
async fn send_raw_and_read(address: &str, head: &[u8]) -> (String, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream.write_all(head).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    // One answer is enough; don't wait for keep-alive to end.
                    if String::from_utf8_lossy(&answer).contains("\r\n\r\n{") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the api held a slow connection open past 10 s"
    );
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_change_nothing() {
    let app = TestApp::spawn(
        Options::default()
            .env("HEADER_READ_TIMEOUT", "500ms")
            .env("REQUEST_TIMEOUT", "1s")
            .env("MAX_WAIT", "500ms"),
    )
    .await;
    let product = app.create_product("Kaos", 5).await;

    // Headers that never end: the connection is closed.
    let (answer, after) = send_raw_and_read(
        &app.address,
        b"POST /api/orders HTTP/1.1\r\nHost: flashstock\r\nContent-Type: application/json\r\n",
    )
    .await;
    assert!(after >= Duration::from_millis(400), "{after:?}");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );

    // A body that never ends: 408 in the envelope, once HEADER_READ_TIMEOUT
    // has passed again (the body has as long as the head), before any
    // handler ran.
    let body = format!(r#"{{"product_id": {product}, "total": 1}}"#);
    let head = format!(
        "POST /api/orders HTTP/1.1\r\nHost: flashstock\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len() + 10,
        body
    );
    let (answer, after) = send_raw_and_read(&app.address, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""error":"REQUEST_TIMEOUT""#), "{answer}");
    assert!(answer.contains("HEADER_READ_TIMEOUT"), "{answer}");
    assert!(after >= Duration::from_millis(400), "{after:?}");

    // Meanwhile and afterwards everyone else is served, and nothing was recorded.
    let (status, _) = app.post_order(product, 1, None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (orders,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM orders")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(orders, 1);
}
