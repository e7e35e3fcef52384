//! Webhooks: every event delivered to a receiver that fails 30 % of
//! requests and is down for a minute, signed as README says, each order's
//! events in order, and a delivering worker killed midway resumes where it
//! was instead of starting over.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use flashstock_tests::events;
use flashstock_tests::process::WorkerProcess;
use flashstock_tests::{Options, TestApp};
use hmac::{Hmac, KeyInit, Mac};
use shared::events::From;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The endpoint's two secrets (a rotation in progress: both sign).
const SECRETS: [&str; 2] = [
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldCBrZXk=",
];
const DOWN_FOR: Duration = Duration::from_secs(60);

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    /// Answered 2xx.
    acknowledged: bool,
    /// Every signature in the header verified with a secret.
    verified: bool,
    /// The signature header carried one signature per secret.
    signatures: usize,
    at: Instant,
}

#[derive(Default)]
struct Receiver {
    received: Mutex<Vec<Received>>,
    requests: std::sync::atomic::AtomicU64,
}

/// The documented recipe (README, "Verifying a webhook"): HMAC-SHA256 over
/// `{webhook-id}.{webhook-timestamp}.{body}` keyed with the base64 part of
/// the secret, base64-encoded, compared with each `v1,` signature.
fn verifies(headers: &HeaderMap, body: &[u8]) -> (bool, usize) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
    let signatures: Vec<&str> = header("webhook-signature").split(' ').collect();
    let expected: Vec<String> = SECRETS
        .iter()
        .map(|secret| {
            let key = base64::engine::general_purpose::STANDARD
                .decode(secret.trim_start_matches("whsec_"))
                .unwrap();
            let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key).unwrap();
            mac.update(format!("{id}.{timestamp}.").as_bytes());
            mac.update(body);
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
            )
        })
        .collect();
    let fresh = timestamp
        .parse::<i64>()
        .is_ok_and(|t| (chrono::Utc::now().timestamp() - t).abs() < 300);
    let all_verify = fresh && signatures.iter().all(|s| expected.iter().any(|e| e == s));
    (all_verify, signatures.len())
}

async fn hook(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let n = receiver
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // 3 of every 10 requests fail, spread through the run.
    let fails = (n.wrapping_mul(7919) % 10) < 3;
    let (verified, signatures) = verifies(&headers, &body);
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    receiver.received.lock().unwrap().push(Received {
        id: headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        acknowledged: !fails,
        verified: verified && event["id"] == headers["webhook-id"].to_str().unwrap_or_default(),
        signatures,
        at: Instant::now(),
    });
    if fails {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::NO_CONTENT
    }
}

/// Serves the receiver on `listener` until `stop`.
fn serve(listener: tokio::net::TcpListener, receiver: Arc<Receiver>, stop: CancellationToken) {
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(receiver);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
}

/// Places `n` orders, paying every third and cancelling every fifth.
async fn trade(app: &TestApp, product: u64, n: usize) {
    for i in 0..n {
        // Shed (503) while a killed worker's partitions wait for their
        // lease to expire: placed again.
        let id = loop {
            let (status, body) = app.post_order(product, 1, Some(5)).await;
            if let Some(id) = body["data"]["id"].as_str() {
                break id.to_owned();
            }
            assert_eq!(status.as_u16(), 503, "{body}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if i % 3 == 0 {
            app.order_action(&id, "pay").await;
        } else if i % 5 == 0 {
            app.order_action(&id, "cancel").await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_reach_a_flaky_receiver_that_was_down_for_a_minute_signed_in_order_and_resumed() {
    let receiver: Arc<Receiver> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let up = CancellationToken::new();
    serve(listener, receiver.clone(), up.clone());

    let file =
        std::env::temp_dir().join(format!("flashstock-webhooks-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(
        &file,
        serde_json::json!([{
            "name": "shop",
            "url": format!("http://{addr}/hook"),
            "secrets": SECRETS,
            "from": "first",
            "retry_for": "10m",
        }])
        .to_string(),
    )
    .unwrap();
    let app = TestApp::spawn(
        Options::default()
            .workers(0)
            .env("WEBHOOKS_FILE", file.to_string_lossy()),
    )
    .await;
    let mut courier: WorkerProcess = app.spawn_worker_process();
    let product = app.create_product("hooked", 1_000_000).await;

    trade(&app, product, 60).await;
    // The receiver goes down for a minute while the shop goes on.
    up.cancel();
    let down_since = Instant::now();
    trade(&app, product, 60).await;
    tokio::time::sleep(DOWN_FOR.saturating_sub(down_since.elapsed())).await;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let up = CancellationToken::new();
    serve(listener, receiver.clone(), up.clone());

    // Once deliveries flow again, the delivering worker dies and another
    // takes over from the saved progress.
    let acknowledged = |r: &Receiver| {
        r.received
            .lock()
            .unwrap()
            .iter()
            .filter(|x| x.acknowledged)
            .count()
    };
    let before = acknowledged(&receiver);
    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged(&receiver) < before + 20 {
        assert!(Instant::now() < deadline, "deliveries never resumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    courier.kill();
    let killed_at = Instant::now();
    courier = app.spawn_worker_process();
    trade(&app, product, 30).await;

    // Every event on the stream is acknowledged.
    assert!(events::wait_published(&app.db, Duration::from_secs(30)).await);
    let stream = events::read(
        &app.config.amqp_url,
        &app.topology(),
        From::First,
        Duration::from_secs(1),
        usize::MAX,
    )
    .await;
    let ids: Vec<&str> = stream.iter().map(|r| r.event.id.as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "the stream repeats no event here");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let received = receiver.received.lock().unwrap().clone();
        let done: HashSet<&str> = received
            .iter()
            .filter(|r| r.acknowledged)
            .map(|r| r.id.as_str())
            .collect();
        if unique.iter().all(|id| done.contains(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} events acknowledged",
            done.len(),
            unique.len()
        );
        drop(received);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    up.cancel();

    let received = receiver.received.lock().unwrap().clone();
    // Signed as documented, with both secrets of the rotation.
    assert!(received.iter().all(|r| r.verified && r.signatures == 2));
    // Nothing invented.
    assert!(received.iter().all(|r| unique.contains(r.id.as_str())));
    // Each order's events in stream order: an event is first sent only
    // after the one before it (same subject) was acknowledged.
    let position: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut acked_at: HashMap<&str, Instant> = HashMap::new();
    for r in received.iter().filter(|r| r.acknowledged) {
        acked_at.entry(r.id.as_str()).or_insert(r.at);
    }
    let mut by_subject: HashMap<&str, Vec<&str>> = HashMap::new();
    for r in &stream {
        by_subject
            .entry(r.event.subject.as_str())
            .or_default()
            .push(r.event.id.as_str());
    }
    for chain in by_subject.values() {
        for pair in chain.windows(2) {
            let first_sent = received
                .iter()
                .filter(|r| r.id == pair[1])
                .map(|r| r.at)
                .min()
                .unwrap();
            assert!(
                acked_at[pair[0]] <= first_sent,
                "{} was sent before {} was acknowledged ({} then {})",
                pair[1],
                pair[0],
                position[pair[1]],
                position[pair[0]]
            );
        }
    }
    // The restart re-sent at most the entry that was in hand (500 events at
    // most), never everything acknowledged before it.
    let acked_before_kill: HashSet<&str> = received
        .iter()
        .filter(|r| r.acknowledged && r.at < killed_at)
        .map(|r| r.id.as_str())
        .collect();
    let sent_again: HashSet<&str> = received
        .iter()
        .filter(|r| r.at > killed_at && acked_before_kill.contains(r.id.as_str()))
        .map(|r| r.id.as_str())
        .collect();
    assert!(
        sent_again.len() <= 500 && sent_again.len() < acked_before_kill.len(),
        "{} of {} acknowledged events sent again after the restart",
        sent_again.len(),
        acked_before_kill.len()
    );
    let given_up: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM webhook_failures")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(given_up.0, 0);
    assert!(
        courier
            .metric(r#"flashstock_webhook_delivered_total{endpoint="shop"}"#)
            .await
            > 0.0
    );
    assert!(
        courier
            .metric(r#"flashstock_webhook_retries_total{endpoint="shop"}"#)
            .await
            > 0.0
    );
    eprintln!(
        "webhooks: {} events, {} requests ({} failed), {} sent again after the restart",
        unique.len(),
        received.len(),
        received.iter().filter(|r| !r.acknowledged).count(),
        sent_again.len()
    );
    let _ = std::fs::remove_file(file);
}

#[tokio::test]
async fn an_event_past_its_retry_period_is_given_up_on_and_recorded() {
    // Nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let file =
        std::env::temp_dir().join(format!("flashstock-webhooks-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(
        &file,
        serde_json::json!([{
            "name": "gone",
            "url": format!("http://127.0.0.1:{port}/hook"),
            "secrets": [SECRETS[0]],
            "types": ["flashstock.order.accepted"],
            "from": "first",
            "retry_for": "2s",
        }])
        .to_string(),
    )
    .unwrap();
    let app = TestApp::spawn(Options::default().env("WEBHOOKS_FILE", file.to_string_lossy())).await;
    let product = app.create_product("unheard", 10).await;
    let (_, order) = app.post_order(product, 1, Some(5)).await;
    let id = order["data"]["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let failure = loop {
        let found: Option<(String, String, String, u32)> =
            sqlx::query_as("SELECT endpoint, event_id, last_error, attempts FROM webhook_failures")
                .fetch_optional(&app.db)
                .await
                .unwrap();
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "never given up on");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(failure.0, "gone");
    assert_eq!(failure.1, format!("{id}.accepted"));
    assert!(failure.3 >= 2, "retried before giving up: {failure:?}");
    let _ = std::fs::remove_file(file);
}

#[tokio::test]
async fn a_new_endpoint_starting_now_saves_its_start_then_gets_what_follows() {
    let receiver: Arc<Receiver> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let up = CancellationToken::new();
    serve(listener, receiver.clone(), up.clone());
    let file =
        std::env::temp_dir().join(format!("flashstock-webhooks-{}.json", uuid::Uuid::new_v4()));
    // No "from": an endpoint starts from now.
    std::fs::write(
        &file,
        serde_json::json!([{
            "name": "fresh",
            "url": format!("http://{addr}/hook"),
            "secrets": [SECRETS[0], SECRETS[1]],
        }])
        .to_string(),
    )
    .unwrap();
    let app = TestApp::spawn(Options::default().env("WEBHOOKS_FILE", file.to_string_lossy())).await;
    // The start is saved before anything is delivered, so a restart before
    // the first entry would resume from it rather than from a later "now".
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let saved: Option<(Option<u64>, Option<chrono::DateTime<chrono::Utc>>)> = sqlx::query_as(
            "SELECT next_offset, start_at FROM webhook_progress WHERE endpoint = 'fresh'",
        )
        .fetch_optional(&app.db)
        .await
        .unwrap();
        if let Some((None, Some(_))) = saved {
            break;
        }
        assert!(Instant::now() < deadline, "no start saved: {saved:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let product = app.create_product("fresh", 10).await;
    let (_, order) = app.post_order(product, 1, Some(5)).await;
    let expected = format!("{}.accepted", order["data"]["id"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !receiver
        .received
        .lock()
        .unwrap()
        .iter()
        .any(|r| r.acknowledged && r.id == expected)
    {
        assert!(Instant::now() < deadline, "{expected} never delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then its progress is an offset.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (next,): (Option<u64>,) =
            sqlx::query_as("SELECT next_offset FROM webhook_progress WHERE endpoint = 'fresh'")
                .fetch_one(&app.db)
                .await
                .unwrap();
        if next.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "progress never saved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    up.cancel();
    let _ = std::fs::remove_file(file);
}
