//! Products, inventory, health and the envelope: happy paths and bad input.

use flashstock_tests::spawn_app;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn envelope(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    let body: Value = r.json().await.expect("every answer is JSON");
    assert_eq!(
        body["code"],
        status.as_u16(),
        "code repeats the status: {body}"
    );
    assert!(body["status"].is_string(), "{body}");
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_is_created_with_its_stock_and_read_back() {
    let app = spawn_app().await;
    let (status, body) = envelope(
        app.post_json("/api/products", &json!({"name": "Kaos Polos", "stock": 7}))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["status"], "Created");
    let id = body["data"]["id"].as_u64().unwrap();
    assert_eq!(body["data"]["name"], "Kaos Polos");

    let (status, body) = envelope(app.get(&format!("/api/products/{id}")).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["name"], "Kaos Polos");

    let inv = app.inventory(id).await;
    assert_eq!(
        inv,
        json!({"product_id": id, "product_name": "Kaos Polos", "stored_stock": 7, "reserved_stock": 0, "available_stock": 7})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_defaults_to_zero() {
    let app = spawn_app().await;
    let (status, body) = envelope(
        app.post_json("/api/products", &json!({"name": "No stock yet"}))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let inv = app.inventory(body["data"]["id"].as_u64().unwrap()).await;
    assert_eq!(inv["stored_stock"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn putting_the_same_stock_twice_gives_the_same_state() {
    let app = spawn_app().await;
    let id = app.create_product("Kaos", 0).await;
    for _ in 0..2 {
        let (status, body) = envelope(
            app.send_json(
                Method::PUT,
                &format!("/api/products/{id}/inventory"),
                &json!({"stock": 100}),
            )
            .await,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["data"]["stored_stock"], 100);
    }
    let inv = app.inventory(id).await;
    assert_eq!(
        (
            inv["stored_stock"].clone(),
            inv["reserved_stock"].clone(),
            inv["available_stock"].clone()
        ),
        (json!(100), json!(0), json!(100))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_are_listed_a_page_at_a_time() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.create_product(&format!("p{i}"), 1).await;
    }
    let (status, body) = envelope(app.get("/api/products?page=2&per_page=2").await).await;
    assert_eq!(status, StatusCode::OK);
    let data = &body["data"];
    assert_eq!(data["items"].as_array().unwrap().len(), 2);
    assert_eq!(data["items"][0]["name"], "p2");
    assert_eq!(
        (
            data["page"].clone(),
            data["per_page"].clone(),
            data["total_items"].clone(),
            data["total_pages"].clone()
        ),
        (json!(2), json!(2), json!(5), json!(3))
    );

    let (_, body) = envelope(app.get("/api/products").await).await;
    assert_eq!(body["data"]["items"].as_array().unwrap().len(), 5);
    assert_eq!(body["data"]["per_page"], 20);

    for bad in [
        "page=0",
        "per_page=0",
        "per_page=101",
        "page=abc",
        "per_page=-1",
        "page=99999999999",
    ] {
        let (status, body) = envelope(app.get(&format!("/api/products?{bad}")).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["data"]["error"], "INVALID_QUERY", "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_product_input_gets_a_4xx_envelope_and_creates_nothing() {
    let app = spawn_app().await;
    let long_name = "x".repeat(201);
    let cases: Vec<(&str, String, &str, StatusCode, &str)> = vec![
        (
            "malformed JSON",
            r#"{"name": "a""#.into(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "MALFORMED_JSON",
        ),
        (
            "wrong content type",
            r#"{"name": "a"}"#.into(),
            "text/plain",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            "missing name",
            r#"{"stock": 1}"#.into(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_BODY",
        ),
        (
            "name of wrong type",
            r#"{"name": 5}"#.into(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_NAME",
        ),
        (
            "sale start not a time",
            r#"{"name": "a", "sale_starts_at": "tomorrow"}"#.into(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_SALE_WINDOW",
        ),
        (
            "sale end of wrong type",
            r#"{"name": "a", "sale_ends_at": 5}"#.into(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_SALE_WINDOW",
        ),
        (
            "empty name",
            r#"{"name": "   "}"#.into(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_NAME",
        ),
        (
            "over-long name",
            format!(r#"{{"name": "{long_name}"}}"#),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_NAME",
        ),
        (
            "control characters",
            r#"{"name": "a\u0000b"}"#.into(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_NAME",
        ),
        (
            "negative stock",
            r#"{"name": "a", "stock": -1}"#.into(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_STOCK",
        ),
        (
            "absurd stock",
            r#"{"name": "a", "stock": 1000000000000}"#.into(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_STOCK",
        ),
        // One field, one code: a stock of the wrong type is INVALID_STOCK too.
        (
            "stock beyond i64",
            r#"{"name": "a", "stock": 1e30}"#.into(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_STOCK",
        ),
        (
            "fractional stock",
            r#"{"name": "a", "stock": 1.5}"#.into(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_STOCK",
        ),
        (
            "stock as text",
            r#"{"name": "a", "stock": "1"}"#.into(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_STOCK",
        ),
        (
            "max_per_buyer as text",
            r#"{"name": "a", "max_per_buyer": "2"}"#.into(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_MAX_PER_BUYER",
        ),
        (
            "fractional max_per_buyer",
            r#"{"name": "a", "max_per_buyer": 1.5}"#.into(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_MAX_PER_BUYER",
        ),
        (
            "unknown field",
            r#"{"name": "a", "price": 1}"#.into(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_BODY",
        ),
        (
            "not an object",
            r#"[1, 2]"#.into(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_BODY",
        ),
        (
            "oversized body",
            format!(r#"{{"name": "{}"}}"#, "y".repeat(100 * 1024)),
            "application/json",
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
        ),
    ];
    for (what, body, content_type, expected, code) in cases {
        let r = app
            .client
            .post(format!("{}/api/products", app.address))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, body) = envelope(r).await;
        assert_eq!(status, expected, "{what}: {body}");
        assert_eq!(body["data"]["error"], code, "{what}: {body}");
        assert!(
            body["data"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
    let (_, body) = envelope(app.get("/api/products").await).await;
    assert_eq!(body["data"]["total_items"], 0, "nothing was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inventory_input_gets_a_4xx_and_changes_nothing() {
    let app = spawn_app().await;
    let id = app.create_product("Kaos", 10).await;
    let path = format!("/api/products/{id}/inventory");
    let cases: Vec<(&str, &str, StatusCode, &str)> = vec![
        (
            r#"{"stock": -5}"#,
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_STOCK",
        ),
        (
            r#"{"stock": 1000000001}"#,
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_STOCK",
        ),
        (
            r#"{"stock": "100"}"#,
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_STOCK",
        ),
        (
            r#"{"stock": 2.5}"#,
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_STOCK",
        ),
        (
            r#"{}"#,
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_BODY",
        ),
        (
            r#"{"stock": 1"#,
            "application/json",
            StatusCode::BAD_REQUEST,
            "MALFORMED_JSON",
        ),
        (
            r#"stock=1"#,
            "application/x-www-form-urlencoded",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
    ];
    for (body, content_type, expected, code) in cases {
        let r = app
            .client
            .put(format!("{}{path}", app.address))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, resp) = envelope(r).await;
        assert_eq!(status, expected, "{body}: {resp}");
        assert_eq!(resp["data"]["error"], code, "{body}");
    }
    assert_eq!(app.inventory(id).await["stored_stock"], 10, "unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_malformed_ids_are_4xx() {
    let app = spawn_app().await;
    for (path, expected, code) in [
        (
            "/api/products/999",
            StatusCode::NOT_FOUND,
            "PRODUCT_NOT_FOUND",
        ),
        (
            "/api/products/999/inventory",
            StatusCode::NOT_FOUND,
            "PRODUCT_NOT_FOUND",
        ),
        (
            "/api/products/abc",
            StatusCode::BAD_REQUEST,
            "INVALID_PRODUCT_ID",
        ),
        (
            "/api/products/-1/inventory",
            StatusCode::BAD_REQUEST,
            "INVALID_PRODUCT_ID",
        ),
        (
            "/api/products/0",
            StatusCode::BAD_REQUEST,
            "INVALID_PRODUCT_ID",
        ),
        (
            "/api/products/99999999999999999999999",
            StatusCode::BAD_REQUEST,
            "INVALID_PRODUCT_ID",
        ),
        ("/api/nothing-here", StatusCode::NOT_FOUND, "NOT_FOUND"),
    ] {
        let (status, body) = envelope(app.get(path).await).await;
        assert_eq!(status, expected, "{path}");
        assert_eq!(body["data"]["error"], code, "{path}");
    }
    let r = app
        .send_json(
            Method::PUT,
            "/api/products/999/inventory",
            &json!({"stock": 1}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = app
        .send_json(Method::DELETE, "/api/products", &json!({}))
        .await;
    let (status, body) = envelope(r).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["data"]["error"], "METHOD_NOT_ALLOWED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    let (status, body) = envelope(app.get("/healthz").await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["status"], "alive");
    let (status, body) = envelope(app.get("/readyz").await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"],
        json!({"status": "ready", "database": "up", "broker": "up"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_spec_is_the_committed_apispec() {
    let app = spawn_app().await;
    let served: Value = app.get("/api/openapi.json").await.json().await.unwrap();
    let committed: Value = serde_json::from_str(include_str!("../../apispec.json")).unwrap();
    assert_eq!(
        served, committed,
        "run `UPDATE_APISPEC=1 cargo test -p flashstock-api apispec` to regenerate"
    );
}
