//! Hostile requests: each gets a 4xx envelope and changes nothing.

use flashstock_tests::spawn_app;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_a_4xx_envelope_and_change_nothing() {
    let app = spawn_app().await;
    let product = app.create_product("Kaos", 10).await;
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let huge = format!(r#"{{"name": "{}"}}"#, "x".repeat(1024 * 1024));
    let cases: Vec<(Method, String, Option<&str>, String)> = vec![
        (
            Method::POST,
            "/api/orders".into(),
            None,
            json!({"product_id": product, "total": 9_223_372_036_854_775_807i64}).to_string(),
        ),
        (
            Method::POST,
            "/api/orders".into(),
            None,
            json!({"product_id": product, "total": -9_223_372_036_854_775_807i64}).to_string(),
        ),
        (
            Method::POST,
            "/api/orders".into(),
            None,
            r#"{"product_id": 1e400, "total": 1}"#.into(),
        ),
        (
            Method::POST,
            "/api/orders".into(),
            None,
            json!({"product_id": product, "total": 1.0}).to_string(),
        ),
        (
            Method::POST,
            "/api/orders".into(),
            None,
            json!({"product_id": "1; DROP TABLE orders", "total": 1}).to_string(),
        ),
        (
            Method::POST,
            "/api/orders".into(),
            None,
            r#"{"product_id": 1, "product_id": 2, "total": 1, "total": 2}"#.into(),
        ),
        (Method::POST, "/api/orders".into(), None, deep.clone()),
        (Method::POST, "/api/orders".into(), None, "".into()),
        (Method::POST, "/api/orders".into(), None, "null".into()),
        (Method::POST, "/api/products".into(), None, huge),
        (
            Method::POST,
            "/api/products".into(),
            None,
            json!({"name": "\u{0007}bell"}).to_string(),
        ),
        (
            Method::POST,
            "/api/products".into(),
            None,
            json!({"name": "a", "stock": "'; DELETE FROM inventories; --"}).to_string(),
        ),
        (
            Method::PUT,
            format!("/api/products/{product}/inventory"),
            None,
            json!({"stock": -1}).to_string(),
        ),
        (
            Method::PUT,
            format!("/api/products/{product}/inventory"),
            None,
            json!({"stock": 1e30}).to_string(),
        ),
        (
            Method::PUT,
            format!("/api/products/{product}' OR '1'='1/inventory"),
            None,
            json!({"stock": 0}).to_string(),
        ),
        (
            Method::PUT,
            "/api/products/1%00/inventory".into(),
            None,
            json!({"stock": 0}).to_string(),
        ),
        (
            Method::DELETE,
            format!("/api/products/{product}"),
            None,
            "".into(),
        ),
        (Method::PATCH, "/api/orders".into(), None, "{}".into()),
        (
            Method::POST,
            "/api/orders".into(),
            Some("text/plain"),
            json!({"product_id": product, "total": 1}).to_string(),
        ),
    ];
    for (method, path, content_type, body) in cases {
        let r = app
            .client
            .request(method.clone(), format!("{}{path}", app.address))
            .header("content-type", content_type.unwrap_or("application/json"))
            .body(body.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path} ({} bytes): {e:?}", body.len()));
        let status = r.status();
        let text = r.text().await.unwrap();
        let what = format!("{method} {path} {}", &body[..body.len().min(60)]);
        assert!(status.is_client_error(), "{what}: {status} {text}");
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{what}: not an envelope: {text}"));
        assert_eq!(v["code"], status.as_u16(), "{what}");
        assert!(v["data"]["error"].is_string(), "{what}: {v}");
    }
    // Unicode in names is fine (and kept exactly).
    let id = app.create_product("Kaos Polos 👕 ñ 日本", 1).await;
    let p: Value = app
        .get(&format!("/api/products/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(p["data"]["name"], "Kaos Polos 👕 ñ 日本");

    assert_eq!(
        app.inventory(product).await["stored_stock"],
        10,
        "unchanged"
    );
    assert!(
        app.status_counts(product).await.is_empty(),
        "no order recorded"
    );
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_storm_records_one_order_per_key() {
    let app = std::sync::Arc::new(spawn_app().await);
    let product = app.create_product("Kaos", 100_000).await;
    const KEYS: usize = 10_000;
    use futures::StreamExt;
    let answers: Vec<StatusCode> = futures::stream::iter(0..KEYS * 2)
        .map(|i| {
            let app = app.clone();
            async move {
                // Every key sent twice; a 503 (the suite's other tests share
                // the two cores) retried with its key, as a keyed client does.
                let key = format!("storm-key-{:08}-padding", i % KEYS);
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                loop {
                    let status = app
                        .client
                        .post(format!("{}/api/orders", app.address))
                        .header("Idempotency-Key", &key)
                        .json(&json!({"product_id": product, "total": 1}))
                        .send()
                        .await
                        .unwrap()
                        .status();
                    if status != StatusCode::SERVICE_UNAVAILABLE
                        || std::time::Instant::now() > deadline
                    {
                        break status;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(
        answers.iter().all(|s| *s == StatusCode::ACCEPTED),
        "every answer 202"
    );
    let counts = app
        .drain(product, std::time::Duration::from_secs(120))
        .await;
    assert_eq!(
        counts.values().sum::<i64>(),
        KEYS as i64,
        "one order per key: {counts:?}"
    );
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_duplicate_headers_get_a_4xx_envelope_and_change_nothing() {
    use reqwest::header::{HeaderMap, HeaderValue};
    let app = spawn_app().await;
    let product = app.create_product("Kaos", 10).await;
    let body = json!({"product_id": product, "total": 1}).to_string();
    let key = |v: &'static [u8]| HeaderValue::from_bytes(v).unwrap();
    type Headers = Vec<(&'static str, HeaderValue)>;
    let cases: Vec<(&str, Headers, StatusCode)> = vec![
        (
            "no content type",
            vec![],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "two idempotency keys",
            vec![
                ("idempotency-key", key(b"first-key-0123456789")),
                ("idempotency-key", key(b"second-key-0123456789")),
            ],
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "a short idempotency key",
            vec![("idempotency-key", key(b"short"))],
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "a non-ASCII idempotency key",
            vec![("idempotency-key", key(b"key-\xff\xfe-0123456789abcdef"))],
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "an idempotency key with spaces inside",
            vec![("idempotency-key", key(b"key with spaces 0123456789"))],
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (what, headers, expected) in cases {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(name, value);
        }
        if what != "no content type" {
            map.insert("content-type", HeaderValue::from_static("application/json"));
        }
        let r = app
            .client
            .post(format!("{}/api/orders", app.address))
            .headers(map)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, expected, "{what}: {v}");
        assert_eq!(v["code"], status.as_u16(), "{what}");
        assert!(v["data"]["error"].is_string(), "{what}: {v}");
    }
    assert!(
        app.status_counts(product).await.is_empty(),
        "no order recorded"
    );
    app.assert_invariants().await;
}
