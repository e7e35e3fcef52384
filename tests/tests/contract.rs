//! What client developers expect of the API: CORS, object bodies, safe
//! retries of pay and cancel, polling hints, one URL per order (up to case).

use flashstock_tests::spec::Walk;
use flashstock_tests::{Options, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SHOP: &str = "https://shop.example";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storefront_on_an_allowed_origin_may_call_and_another_may_not() {
    let app = TestApp::spawn(Options::default().env(
        "CORS_ALLOWED_ORIGINS",
        format!("{SHOP}, https://m.shop.example"),
    ))
    .await;
    let url = format!("{}/api/orders", app.address);
    let preflight = |origin: &str| {
        app.client
            .request(Method::OPTIONS, &url)
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "content-type, idempotency-key, authorization",
            )
            .send()
    };
    let r = preflight(SHOP).await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], SHOP);
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("idempotency-key") && allowed.contains("authorization"),
        "{allowed}"
    );
    let r = preflight("https://evil.example").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());

    let product = app.create_product("Kaos", 5).await;
    let r = app
        .client
        .post(&url)
        .header("Origin", SHOP)
        .json(&json!({"product_id": product, "total": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["access-control-allow-origin"], SHOP);
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for header in ["location", "retry-after", "idempotent-replayed", "etag"] {
        assert!(exposed.contains(header), "{header} in {exposed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_allowed_origins_there_are_no_cors_headers() {
    let app = TestApp::spawn(Options::default()).await;
    let r = app
        .client
        .get(format!("{}/api/products", app.address))
        .header("Origin", SHOP)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_must_be_objects_and_errors_speak_of_fields() {
    let app = TestApp::spawn(Options::default()).await;
    let product = app.create_product("Kaos", 5).await;
    let inventory = format!("/api/products/{product}/inventory");
    for (path, method, body) in [
        ("/api/orders".to_owned(), Method::POST, json!([product, 1])),
        ("/api/orders".to_owned(), Method::POST, json!(1)),
        (inventory.clone(), Method::PUT, json!([20])),
        ("/api/products".to_owned(), Method::POST, json!("Kaos")),
    ] {
        let r = app
            .client
            .request(method.clone(), format!("{}{path}", app.address))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{method} {path} {body}"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["data"]["error"], "INVALID_BODY");
        assert_eq!(body["data"]["message"], "the body must be a JSON object");
    }
    let r = app
        .post_json("/api/orders", &json!({"product_id": product, "total": "1"}))
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["data"]["error"], "INVALID_TOTAL",
        "one field, one code: {body}"
    );
    let message = body["data"]["message"].as_str().unwrap().to_owned();
    assert!(
        !message.contains("line") && !message.contains("Failed to deserialize"),
        "no parser internals: {message}"
    );
    assert_eq!(
        app.status_counts(product).await.values().sum::<i64>(),
        0,
        "nothing recorded"
    );
    let stock: Value = app.get(&inventory).await.json().await.unwrap();
    assert_eq!(stock["data"]["stored_stock"], 5, "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_and_cancel_are_safe_to_retry() {
    let app = TestApp::spawn(Options::default()).await;
    let product = app.create_product("Kaos", 5).await;
    for action in ["pay", "cancel"] {
        let (status, body) = app.post_order(product, 1, Some(10)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let id = body["data"]["id"].as_str().unwrap().to_owned();
        let url = format!("{}/api/orders/{id}/{action}", app.address);
        let first = app.client.post(&url).send().await.unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        assert!(first.headers().get("idempotent-replayed").is_none());
        let again = app.client.post(&url).send().await.unwrap();
        assert_eq!(again.status(), StatusCode::OK, "a repeated {action}");
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(again.headers()["cache-control"], "no-store");
    }
    // The other transition after one was made is still a conflict.
    let (_, body) = app.post_order(product, 1, Some(10)).await;
    let id = body["data"]["id"].as_str().unwrap();
    assert_eq!(app.order_action(id, "pay").await.0, StatusCode::OK);
    let (status, body) = app.order_action(id, "cancel").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["data"]["error"], "INVALID_TRANSITION");
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_carry_polling_hints_and_each_order_has_one_url() {
    // No worker, and no admission control: nothing is decided, nothing shed.
    let app = TestApp::spawn(
        Options::default()
            .workers(0)
            .env("ADMISSION_MAX_DELAY", "0"),
    )
    .await;
    let r = app
        .post_json("/api/products", &json!({"name": "Kaos", "stock": 5}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let product = r.json::<Value>().await.unwrap()["data"]["id"]
        .as_u64()
        .unwrap();
    assert_eq!(location, format!("/api/products/{product}"));

    // No worker: every order stays PENDING.
    let order = |prefer: Option<&str>| {
        let mut req = app
            .client
            .post(format!("{}/api/orders", app.address))
            .json(&json!({"product_id": product, "total": 1}));
        if let Some(p) = prefer {
            req = req.header("Prefer", p);
        }
        req.send()
    };
    let r = order(None).await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["retry-after"], "1");
    assert!(r.headers().get("preference-applied").is_none());
    assert_eq!(r.headers()["cache-control"], "no-store");
    let r = order(Some("wait=1")).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "still pending after the wait"
    );
    assert_eq!(r.headers()["preference-applied"], "wait=1");
    for malformed in ["wait=abc", "wait=-1", "wait=5.5"] {
        let r = order(Some(malformed)).await.unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{malformed} is ignored");
        assert!(
            r.headers().get("preference-applied").is_none(),
            "{malformed}"
        );
    }
    let id = r.json::<Value>().await.unwrap()["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let canonical = app.get(&format!("/api/orders/{id}")).await;
    assert_eq!(canonical.status(), StatusCode::OK);
    assert_eq!(canonical.headers()["cache-control"], "no-store");
    // UUIDs are case-insensitive on input (RFC 9562): an id in upper case
    // (Swift's `uuidString`) reads the order, answered in lower case.
    let upper = app.get(&format!("/api/orders/{}", id.to_uppercase())).await;
    assert_eq!(upper.status(), StatusCode::OK);
    assert_eq!(upper.json::<Value>().await.unwrap()["data"]["id"], id);
    let upper = |action: &str| {
        app.client
            .post(format!(
                "{}/api/orders/{}/{action}",
                app.address,
                id.to_uppercase()
            ))
            .send()
    };
    // Still PENDING (no worker): paying it is refused for its status, not
    // for its id; cancelling it works, answered in lower case.
    let r = upper("pay").await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(
        r.json::<Value>().await.unwrap()["data"]["error"],
        "INVALID_TRANSITION"
    );
    let r = upper("cancel").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cancelled = r.json::<Value>().await.unwrap();
    assert_eq!(cancelled["data"]["id"], id);
    assert_eq!(cancelled["data"]["status"], "CANCELLED");
    // Other spellings are not the order's address.
    let simple = id.replace('-', "");
    for other in [simple, format!("urn:uuid:{id}"), format!("{{{id}}}")] {
        let r = app.get(&format!("/api/orders/{other}")).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{other}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_carry_etags_and_writes_honour_if_match() {
    let app = TestApp::spawn(Options::default()).await;
    let product = app.create_product("Kaos", 5).await;
    let get = |path: String, tag: Option<String>| {
        let mut req = app.client.get(format!("{}{path}", app.address));
        if let Some(t) = tag {
            req = req.header("If-None-Match", t);
        }
        req.send()
    };
    for path in [
        format!("/api/products/{product}"),
        format!("/api/products/{product}/inventory"),
    ] {
        let r = get(path.clone(), None).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["cache-control"], "no-cache");
        let etag = r.headers()["etag"].to_str().unwrap().to_owned();
        let r = get(path.clone(), Some(etag.clone())).await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
        assert!(r.bytes().await.unwrap().is_empty(), "a 304 has no body");
        let r = get(path.clone(), Some("\"other\"".into())).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }

    // Setting the stock: a stale If-Match is 412 and changes nothing.
    let inventory = format!("{}/api/products/{product}/inventory", app.address);
    let put = |tag: &str, stock: i64| {
        app.client
            .put(&inventory)
            .header("If-Match", tag)
            .json(&json!({"stock": stock}))
            .send()
    };
    let r = put("\"nope\"", 9).await.unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["data"]["error"], "PRECONDITION_FAILED");
    // If-Match compares strongly: a weak form of the current tag is stale.
    let r = get(format!("/api/products/{product}/inventory"), None)
        .await
        .unwrap();
    let weak = format!("W/{}", r.headers()["etag"].to_str().unwrap());
    assert_eq!(
        put(&weak, 9).await.unwrap().status(),
        StatusCode::PRECONDITION_FAILED
    );
    let r = get(format!("/api/products/{product}/inventory"), None)
        .await
        .unwrap();
    let current = r.headers()["etag"].to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["data"]["stored_stock"], 5, "nothing changed");
    // A decision changes the stock's representation: the old tag is stale.
    let (status, _) = app.post_order(product, 1, Some(10)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        put(&current, 9).await.unwrap().status(),
        StatusCode::PRECONDITION_FAILED
    );
    let fresh = get(format!("/api/products/{product}/inventory"), None)
        .await
        .unwrap();
    let fresh = fresh.headers()["etag"].to_str().unwrap().to_owned();
    let r = put(&fresh, 9).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_ne!(r.headers()["etag"].to_str().unwrap(), fresh);

    // Changing a product's rules likewise.
    let patch = |tag: &str| {
        app.client
            .patch(format!("{}/api/products/{product}", app.address))
            .header("If-Match", tag)
            .json(&json!({"max_per_buyer": 3}))
            .send()
    };
    assert_eq!(
        patch("\"nope\"").await.unwrap().status(),
        StatusCode::PRECONDITION_FAILED
    );
    let r = get(format!("/api/products/{product}"), None).await.unwrap();
    let tag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(patch(&tag).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        patch(&tag).await.unwrap().status(),
        StatusCode::PRECONDITION_FAILED
    );

    // An order's tag changes with its status.
    let (_, body) = app.post_order(product, 1, Some(10)).await;
    let id = body["data"]["id"].as_str().unwrap().to_owned();
    let r = get(format!("/api/orders/{id}"), None).await.unwrap();
    let tag = r.headers()["etag"].to_str().unwrap().to_owned();
    let r = get(format!("/api/orders/{id}"), Some(tag.clone()))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(app.order_action(&id, "cancel").await.0, StatusCode::OK);
    let r = get(format!("/api/orders/{id}"), Some(tag)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_link_their_neighbours_requests_carry_ids_and_big_answers_are_compressed() {
    let app = TestApp::spawn(Options::default()).await;
    for name in ["A", "B", "C"] {
        app.create_product(name, 1).await;
    }
    let r = app.get("/api/products?page=2&per_page=1").await;
    let link = r.headers()["link"].to_str().unwrap().to_owned();
    for rel in [
        "</api/products?page=1&per_page=1>; rel=\"prev\"",
        "</api/products?page=3&per_page=1>; rel=\"next\"",
        "</api/products?page=3&per_page=1>; rel=\"last\"",
    ] {
        assert!(link.contains(rel), "{rel} in {link}");
    }

    let r = app
        .client
        .get(format!("{}/api/products", app.address))
        .header("x-request-id", "storefront-7f3a")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "storefront-7f3a");
    let r = app.get("/api/products").await;
    let made = r.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(made).is_ok(), "{made}");
    // An id that would be unfit for a log line is replaced.
    let r = app
        .client
        .get(format!("{}/api/products", app.address))
        .header("x-request-id", "x".repeat(65))
        .send()
        .await
        .unwrap();
    let replaced = r.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(replaced).is_ok(), "{replaced}");

    let r = app
        .client
        .get(format!("{}/api/openapi.json", app.address))
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let r = app
        .client
        .get(format!("{}/api/products/1", app.address))
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert!(
        r.headers().get("content-encoding").is_none(),
        "small answers stay plain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_post_with_an_idempotency_key_creates_one_product() {
    let app = TestApp::spawn(Options::default()).await;
    let post = |body: Value| {
        app.client
            .post(format!("{}/api/products", app.address))
            .header("Idempotency-Key", "seller-tool-7c1e-0001")
            .json(&body)
            .send()
    };
    let first = post(json!({"name": "Kaos", "stock": 5})).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let again = post(json!({"name": "Kaos", "stock": 5})).await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["data"]["id"], again["data"]["id"]);
    let other = post(json!({"name": "Kaos", "stock": 6})).await.unwrap();
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let other: Value = other.json().await.unwrap();
    assert_eq!(other["data"]["error"], "IDEMPOTENCY_KEY_REUSED");
    let list: Value = app.get("/api/products").await.json().await.unwrap();
    assert_eq!(list["data"]["total_items"], 1, "one product");
}

/// What the answers carry is what the served spec says, for that operation
/// and status, as a generated client reads it: every header of ours is
/// listed and every required one sent; every body matches its schema (no
/// undeclared field, no `null` where not nullable, no required field left
/// out, six-digit times); nullable fields are required; and a field sent in
/// every answer seen is required. A walk through every operation, on
/// success and on the usual refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answers_are_what_the_spec_says() {
    const ADMIN: &str = "contract-admin-token-0123456789abcdef";
    let app = TestApp::spawn(Options::default().env("ADMIN_TOKEN", ADMIN)).await;
    let spec: Value = app.get("/api/openapi.json").await.json().await.unwrap();
    let mut walk = Walk::new(spec);
    let url = |path: &str| format!("{}{path}", app.address);
    let admin = |req: reqwest::RequestBuilder| req.bearer_auth(ADMIN);
    let c = &app.client;

    // Products.
    let body = json!({"name": "Kaos", "stock": 5});
    let r = c
        .post(url("/api/products"))
        .json(&body)
        .send()
        .await
        .unwrap();
    walk.check("POST", "/api/products", r).await;
    let key = "contract-product-key-0001";
    let r = admin(
        c.post(url("/api/products"))
            .header("Idempotency-Key", key)
            .json(&body),
    )
    .send()
    .await
    .unwrap();
    let id = walk.check("POST", "/api/products", r).await["data"]["id"]
        .as_u64()
        .unwrap();
    let r = admin(
        c.post(url("/api/products"))
            .header("Idempotency-Key", key)
            .json(&body),
    )
    .send()
    .await
    .unwrap();
    walk.check("POST", "/api/products", r).await;
    let r = c.get(url("/api/products?per_page=1")).send().await.unwrap();
    assert_eq!(r.headers()["cache-control"], "no-cache");
    walk.check("GET", "/api/products", r).await;
    let product = format!("/api/products/{id}");
    let r = c.get(url(&product)).send().await.unwrap();
    let tag = r.headers()["etag"].clone();
    walk.check("GET", "/api/products/{id}", r).await;
    let r = c
        .get(url(&product))
        .header("If-None-Match", tag.clone())
        .send()
        .await
        .unwrap();
    walk.check("GET", "/api/products/{id}", r).await;
    let r = c.delete(url(&product)).send().await.unwrap();
    walk.check("GET", "/api/products/{id}", r).await;
    let r = admin(c.patch(url(&product)).json(&json!({"max_per_buyer": 3})))
        .send()
        .await
        .unwrap();
    walk.check("PATCH", "/api/products/{id}", r).await;
    let r = admin(
        c.patch(url(&product))
            .header("If-Match", tag)
            .json(&json!({})),
    )
    .send()
    .await
    .unwrap();
    walk.check("PATCH", "/api/products/{id}", r).await;
    let inventory = format!("{product}/inventory");
    let r = c.get(url(&inventory)).send().await.unwrap();
    walk.check("GET", "/api/products/{id}/inventory", r).await;
    let r = admin(c.put(url(&inventory)).json(&json!({"stock": 6})))
        .send()
        .await
        .unwrap();
    walk.check("PUT", "/api/products/{id}/inventory", r).await;
    let r = c
        .put(url(&inventory))
        .json(&json!({"stock": 6}))
        .send()
        .await
        .unwrap();
    walk.check("PUT", "/api/products/{id}/inventory", r).await;

    // Orders.
    let order = json!({"product_id": id, "total": 1});
    let r = c
        .post(url("/api/orders"))
        .json(&order)
        .send()
        .await
        .unwrap();
    walk.check("POST", "/api/orders", r).await;
    let key = "contract-order-key-000001";
    let r = c
        .post(url("/api/orders"))
        .header("Prefer", "wait=10")
        .header("Idempotency-Key", key)
        .json(&order)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(r.headers().contains_key("location"), "a 201 has Location");
    let order_id = walk.check("POST", "/api/orders", r).await["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // More than the stock left: rejected, 400 with the order and Location.
    let r = c
        .post(url("/api/orders"))
        .header("Prefer", "wait=10")
        .json(&json!({"product_id": id, "total": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(
        r.headers().contains_key("location"),
        "a rejected order has Location"
    );
    walk.check("POST", "/api/orders", r).await;
    let r = c
        .post(url("/api/orders"))
        .header("Idempotency-Key", key)
        .json(&order)
        .send()
        .await
        .unwrap();
    walk.check("POST", "/api/orders", r).await;
    let r = c.get(url("/api/orders?per_page=1")).send().await.unwrap();
    let next = walk.check("GET", "/api/orders", r).await["data"]["next_after"].clone();
    let r = c
        .get(url(&format!(
            "/api/orders?per_page=2&after={}",
            next.as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    walk.check("GET", "/api/orders", r).await;
    let r = c.get(url("/api/orders?after=nope")).send().await.unwrap();
    walk.check("GET", "/api/orders", r).await;
    // A long poll on an order placed just now, by its id in upper case
    // (answered at its decision, or at once if the worker was quicker).
    let pending = walk
        .check(
            "POST",
            "/api/orders",
            c.post(url("/api/orders"))
                .json(&json!({"product_id": id, "total": 1}))
                .send()
                .await
                .unwrap(),
        )
        .await;
    let r = c
        .get(url(&format!(
            "/api/orders/{}",
            pending["data"]["id"].as_str().unwrap().to_uppercase()
        )))
        .header("Prefer", "wait=5")
        .send()
        .await
        .unwrap();
    walk.check("GET", "/api/orders/{id}", r).await;
    let path = format!("/api/orders/{order_id}");
    let r = c.get(url(&path)).send().await.unwrap();
    let tag = r.headers()["etag"].clone();
    walk.check("GET", "/api/orders/{id}", r).await;
    let r = c
        .get(url(&path))
        .header("If-None-Match", tag)
        .send()
        .await
        .unwrap();
    walk.check("GET", "/api/orders/{id}", r).await;
    for _ in 0..2 {
        let r = admin(c.post(url(&format!("{path}/pay"))))
            .send()
            .await
            .unwrap();
        walk.check("POST", "/api/orders/{id}/pay", r).await;
    }
    let r = c.post(url(&format!("{path}/pay"))).send().await.unwrap();
    walk.check("POST", "/api/orders/{id}/pay", r).await;
    let r = admin(c.post(url(&format!("{path}/cancel"))))
        .send()
        .await
        .unwrap();
    walk.check("POST", "/api/orders/{id}/cancel", r).await;
    let r = c
        .get(url(&format!("{product}/orders/summary")))
        .send()
        .await
        .unwrap();
    walk.check("GET", "/api/products/{id}/orders/summary", r)
        .await;
    let r = c.get(url("/api/admin/invariants")).send().await.unwrap();
    walk.check("GET", "/api/admin/invariants", r).await;
    for health in ["/healthz", "/readyz"] {
        let r = c.get(url(health)).send().await.unwrap();
        walk.check("GET", health, r).await;
    }
    assert!(walk.headers > 40, "{} headers checked", walk.headers);
    let answers = walk.answers;
    let findings = walk.finish();
    assert!(
        findings.is_empty(),
        "{} findings in {answers} answers:\n{}",
        findings.len(),
        findings.join("\n")
    );
}
