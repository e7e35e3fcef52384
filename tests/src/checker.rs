//! The fault tests' model of what must hold.
//!
//! [`Load`] submits orders through the public api and records every
//! submission with the answer it got. Half its clients are careful: one
//! `Idempotency-Key` per order, retried on errors and 5xx until it gets an
//! answer or gives up. The other half send no key (the api's batching path)
//! and so cannot retry safely: an error leaves their order unanswered.
//! [`Sampler`] reads the stock invariant while faults happen. After
//! the fault is healed and the load stopped, [`check`] waits for the backlog
//! to drain and compares the database with the record:
//!
//! - no oversell: `0 <= reserved <= stored` in every sample and at the end,
//!   and no product accepted more than its stock;
//! - no lost order: every order answered 2xx is in the database, decided;
//!   nothing is PENDING;
//! - no duplicate effect: one order per submission, `reserved` equals the sum
//!   over ACCEPTED orders and `stored` is untouched;
//! - no unexpected order: every order in the database is one a client
//!   submitted, for the product and total it asked for (a keyless order that
//!   got no answer may or may not have been recorded: such orders may exist
//!   up to the number of those submissions);
//! - honest answers: an order rejected as sold out asked for more than was
//!   left (stock only falls during these tests, so what is left at the end
//!   is at most what was left when it was decided).
//!
//! With [`Plan::lifecycle`], accepted orders also move on while the fault
//! happens: a closer pays a third of them, cancels a third and leaves a
//! third to expire (`RESERVATION_TTL`), each pay or cancel with a key,
//! retried until answered. Then PAID, CANCELLED and EXPIRED are outcomes,
//! not findings; every pay or cancel answered 2xx (or 409 `ORDER_EXPIRED`)
//! must have left the order as answered; `reserved` equals the ACCEPTED
//! orders and `stored` the stock less the PAID ones; the sold-out honesty
//! check keeps to products that released nothing (a release raises what is
//! left after the rejection).

use serde::Serialize;
use serde_json::{Value, json};
use sqlx::MySqlPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The api address the load sends to; a test switches it when it replaces
/// a killed api.
#[derive(Debug, Clone)]
pub struct Target(Arc<RwLock<String>>);

impl Target {
    /// Sends to `address` (`http://host:port`).
    pub fn new(address: &str) -> Target {
        Target(Arc::new(RwLock::new(address.to_owned())))
    }

    /// Sends to `address` from now on.
    pub fn switch(&self, address: &str) {
        *self.0.write().expect("target lock") = address.to_owned();
    }

    fn get(&self) -> String {
        self.0.read().expect("target lock").clone()
    }
}

/// The answer a submission finally got.
#[derive(Debug, Clone)]
pub enum Answer {
    /// 2xx: the order is recorded and will be decided.
    Acknowledged {
        /// The HTTP status.
        status: u16,
        /// The order's id.
        id: Uuid,
    },
    /// 4xx: refused; nothing was promised.
    Refused {
        /// The HTTP status.
        status: u16,
        /// The envelope's error code.
        error: String,
    },
    /// No answer before the client gave up (connection errors, 5xx).
    Unanswered {
        /// The last error seen.
        last: String,
    },
    /// 503 `OVERLOADED` to a keyless submission: nothing may be recorded
    /// for it (a keyed one retries with its key instead).
    Shed,
}

/// One order a client submitted, however many attempts it took.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The client's `Idempotency-Key`, if it sent one.
    pub key: Option<String>,
    /// The product asked for.
    pub product: u64,
    /// The units asked for.
    pub total: i64,
    /// Requests sent for it.
    pub attempts: u32,
    /// What it finally got.
    pub answer: Answer,
}

/// What the load does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Products to order, in turn.
    pub products: Vec<u64>,
    /// Concurrent clients.
    pub clients: usize,
    /// Each client's pause between submissions.
    pub pause: Duration,
    /// How long a submission in hand is still retried once the load stops.
    pub give_up: Duration,
    /// Whether accepted orders are paid, cancelled and left to expire.
    pub lifecycle: bool,
}

/// A pay or cancel the closer sent, or an order it left to expire.
#[derive(Debug, Clone)]
pub struct Closing {
    /// The order.
    pub id: Uuid,
    /// `pay`, `cancel`, or `leave`.
    pub action: &'static str,
    /// The status the answer gave it (a 2xx, or EXPIRED from a 409
    /// `ORDER_EXPIRED`); `None`: left, or no answer before giving up.
    pub told: Option<String>,
    /// Any other answer: `status error`.
    pub refused: Option<String>,
}

/// Orders the closer takes at most at once, and waits for at most.
const CLOSING_AT_ONCE: usize = 16;
const CLOSING_QUEUE: usize = 256;

/// Clients submitting orders until stopped.
pub struct Load {
    stop: CancellationToken,
    clients: Vec<JoinHandle<Vec<Submission>>>,
    closer: Option<JoinHandle<Vec<Closing>>>,
    lifecycle: bool,
    acknowledged: Arc<AtomicUsize>,
    shed: Arc<AtomicUsize>,
}

impl Load {
    /// Starts `plan.clients` clients sending to `target`.
    pub fn start(target: &Target, plan: Plan) -> Load {
        let stop = CancellationToken::new();
        let acknowledged = Arc::new(AtomicUsize::new(0));
        let shed = Arc::new(AtomicUsize::new(0));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        let (closings, closer) = if plan.lifecycle {
            let (tx, rx) = tokio::sync::mpsc::channel(CLOSING_QUEUE);
            let closer = Closer {
                http: http.clone(),
                target: target.clone(),
                give_up: plan.give_up,
            };
            (Some(tx), Some(tokio::spawn(closer.run(rx))))
        } else {
            (None, None)
        };
        let clients = (0..plan.clients)
            .map(|n| {
                let client = Client {
                    http: http.clone(),
                    target: target.clone(),
                    stop: stop.clone(),
                    acknowledged: acknowledged.clone(),
                    shed: shed.clone(),
                    give_up: plan.give_up,
                    closings: closings.clone(),
                };
                let plan = plan.clone();
                tokio::spawn(async move { client.run(n, &plan).await })
            })
            .collect();
        Load {
            stop,
            clients,
            closer,
            lifecycle: plan.lifecycle,
            acknowledged,
            shed,
        }
    }

    /// Answers 503 `OVERLOADED` so far (keyed submissions retry after them).
    pub fn shed(&self) -> usize {
        self.shed.load(Ordering::Relaxed)
    }

    /// Submissions answered 2xx so far.
    pub fn acknowledged(&self) -> usize {
        self.acknowledged.load(Ordering::Relaxed)
    }

    /// Waits until `n` more submissions than now have been answered 2xx
    /// (panics after `timeout`).
    pub async fn wait_for_more(&self, n: usize, timeout: Duration) {
        let target = self.acknowledged() + n;
        let deadline = Instant::now() + timeout;
        while self.acknowledged() < target {
            assert!(
                Instant::now() < deadline,
                "the load made no progress: {} of {target} acknowledged",
                self.acknowledged()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops starting submissions, lets those in hand finish (or give up),
    /// and returns every submission.
    pub async fn stop(self) -> Vec<Submission> {
        self.stop_all().await.0
    }

    /// [`Load::stop`], and the closer's pay, cancel and leave records once
    /// it has finished the orders in hand.
    pub async fn stop_all(self) -> (Vec<Submission>, Vec<Closing>) {
        self.stop.cancel();
        let mut all = Vec::new();
        for client in self.clients {
            all.extend(client.await.expect("a load client"));
        }
        // The clients (and their senders) are gone: the closer ends.
        let closings = match self.closer {
            Some(closer) => closer.await.expect("the closer"),
            None => Vec::new(),
        };
        (all, closings)
    }
}

/// Pays, cancels or leaves the orders the clients got accepted.
struct Closer {
    http: reqwest::Client,
    target: Target,
    give_up: Duration,
}

impl Closer {
    async fn run(self, mut ids: tokio::sync::mpsc::Receiver<Uuid>) -> Vec<Closing> {
        let this = Arc::new(self);
        let permits = Arc::new(tokio::sync::Semaphore::new(CLOSING_AT_ONCE));
        let mut running = tokio::task::JoinSet::new();
        let mut n = 0usize;
        while let Some(id) = ids.recv().await {
            let permit = permits.clone().acquire_owned().await.expect("open");
            let action = ["pay", "cancel", "leave"][n % 3];
            n += 1;
            let this = this.clone();
            running.spawn(async move {
                let closing = this.close(id, action).await;
                drop(permit);
                closing
            });
        }
        running.join_all().await.into_iter().flatten().collect()
    }

    /// Waits for `id`'s decision; accepted, does `action` to it.
    async fn close(&self, id: Uuid, action: &'static str) -> Option<Closing> {
        let give_up_at = Instant::now() + self.give_up;
        let status = loop {
            let answer = self
                .http
                .get(format!("{}/api/orders/{id}", self.target.get()))
                .header("Prefer", "wait=5")
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            if let Ok(r) = answer
                && r.status().is_success()
                && let Ok(body) = r.json::<Value>().await
                && body["data"]["status"] != "PENDING"
            {
                break body["data"]["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
            }
            if Instant::now() > give_up_at {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if status != "ACCEPTED" {
            return None;
        }
        let mut closing = Closing {
            id,
            action,
            told: None,
            refused: None,
        };
        if action == "leave" {
            return Some(closing);
        }
        let key = format!("fault-{action}-{}", Uuid::new_v4().simple());
        loop {
            let answer = self
                .http
                .post(format!("{}/api/orders/{id}/{action}", self.target.get()))
                .header("Idempotency-Key", &key)
                .send()
                .await;
            if let Ok(r) = answer {
                let code = r.status();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                if code.is_success() {
                    closing.told = body["data"]["status"].as_str().map(str::to_owned);
                    return Some(closing);
                }
                if code == reqwest::StatusCode::CONFLICT && body["data"]["error"] == "ORDER_EXPIRED"
                {
                    closing.told = Some("EXPIRED".into());
                    return Some(closing);
                }
                if code.is_client_error() {
                    closing.refused = Some(format!("{code} {}", body["data"]["error"]));
                    return Some(closing);
                }
            }
            if Instant::now() > give_up_at {
                return Some(closing);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

struct Client {
    http: reqwest::Client,
    target: Target,
    stop: CancellationToken,
    acknowledged: Arc<AtomicUsize>,
    shed: Arc<AtomicUsize>,
    give_up: Duration,
    /// Where accepted orders go to be closed, with [`Plan::lifecycle`].
    closings: Option<tokio::sync::mpsc::Sender<Uuid>>,
}

impl Client {
    async fn run(&self, n: usize, plan: &Plan) -> Vec<Submission> {
        let mut done = Vec::new();
        let mut i = n;
        while !self.stop.is_cancelled() {
            let product = plan.products[i % plan.products.len()];
            let total = 1 + (i / plan.products.len() % 3) as i64;
            i += plan.clients;
            done.push(self.submit(product, total, n.is_multiple_of(2)).await);
            tokio::select! {
                _ = self.stop.cancelled() => {}
                _ = tokio::time::sleep(plan.pause) => {}
            }
        }
        done
    }

    /// Submits one order; with a key, retries until it is answered.
    async fn submit(&self, product: u64, total: i64, keyed: bool) -> Submission {
        let key = keyed.then(|| format!("fault-check-{}", Uuid::new_v4().simple()));
        let body = json!({"product_id": product, "total": total});
        let mut attempts = 0;
        let mut give_up_at = None;
        let answer = loop {
            attempts += 1;
            let mut request = self
                .http
                .post(format!("{}/api/orders", self.target.get()))
                .json(&body);
            if let Some(key) = &key {
                request = request.header("Idempotency-Key", key);
            }
            let sent = request.send().await;
            let last = match sent {
                Ok(response) => {
                    let status = response.status();
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    if status.is_success() {
                        let id = body["data"]["id"]
                            .as_str()
                            .and_then(|id| id.parse().ok())
                            .unwrap_or_else(|| panic!("a 2xx without an order id: {body}"));
                        self.acknowledged.fetch_add(1, Ordering::Relaxed);
                        // A full closer leaves this one to expire.
                        if let Some(closings) = &self.closings {
                            let _ = closings.try_send(id);
                        }
                        break Answer::Acknowledged {
                            status: status.as_u16(),
                            id,
                        };
                    }
                    if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
                        && body["data"]["error"] == "OVERLOADED"
                    {
                        self.shed.fetch_add(1, Ordering::Relaxed);
                        if key.is_none() {
                            break Answer::Shed;
                        }
                    }
                    if status.is_client_error() {
                        break Answer::Refused {
                            status: status.as_u16(),
                            error: body["error"].as_str().unwrap_or_default().to_owned(),
                        };
                    }
                    format!("{status}: {body}")
                }
                Err(e) => e.to_string(),
            };
            if key.is_none() {
                break Answer::Unanswered { last };
            }
            if self.stop.is_cancelled() {
                let at = *give_up_at.get_or_insert_with(|| Instant::now() + self.give_up);
                if Instant::now() > at {
                    break Answer::Unanswered { last };
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        Submission {
            key,
            product,
            total,
            attempts,
            answer,
        }
    }
}

/// Reads `0 <= reserved <= stored` every 100 ms on a connection of its own,
/// while the database is up.
pub struct Sampler {
    stop: CancellationToken,
    task: JoinHandle<(u64, Vec<String>)>,
}

impl Sampler {
    /// Starts sampling the database at `database_url`.
    pub fn start(database_url: &str) -> Sampler {
        let stop = CancellationToken::new();
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(1))
            .connect_lazy(database_url)
            .expect("the sampler's pool");
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let (mut samples, mut violations) = (0, Vec::new());
                while !stop.is_cancelled() {
                    let read: Result<Vec<(u64, i64, i64)>, _> = sqlx::query_as(
                        "SELECT product_id, stored_stock, reserved_stock FROM inventories \
                         WHERE reserved_stock < 0 OR reserved_stock > stored_stock",
                    )
                    .fetch_all(&pool)
                    .await;
                    // While the database is down there is nothing to read.
                    if let Ok(rows) = read {
                        samples += 1;
                        violations.extend(rows.into_iter().map(|(product, stored, reserved)| {
                            format!("product {product}: reserved {reserved}, stored {stored}")
                        }));
                    }
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
                pool.close().await;
                (samples, violations)
            }
        });
        Sampler { stop, task }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.cancel();
        self.task.await.expect("the sampler")
    }
}

/// What one fault test saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The fault injected.
    pub fault: String,
    /// Orders the clients submitted (distinct idempotency keys).
    pub submitted: usize,
    /// Submissions answered 2xx.
    pub answered_2xx: usize,
    /// Submissions answered 4xx.
    pub refused: usize,
    /// Submissions that got no answer before the client gave up.
    pub unanswered: usize,
    /// Keyless submissions answered 503 `OVERLOADED` (nothing may be
    /// recorded for them: an order that matches no other submission is
    /// unexpected).
    pub shed: usize,
    /// Requests sent beyond the first, over all submissions.
    pub retries: u64,
    /// Orders in the database with a final decision.
    pub decided: usize,
    /// Of those, accepted.
    pub accepted: usize,
    /// Of those, rejected.
    pub rejected: usize,
    /// Of those, accepted and then paid, cancelled or expired (only with
    /// [`Plan::lifecycle`]).
    pub closed: usize,
    /// Pays and cancels the closer had answered.
    pub closings: usize,
    /// Acknowledged orders missing, different, or still PENDING after the drain.
    pub lost: usize,
    /// Submissions with more than one order, plus units by which `reserved`
    /// differs from the ACCEPTED orders or `stored` from the stock.
    pub duplicated: usize,
    /// Orders in the database no client submitted (as stored).
    pub unexpected: usize,
    /// Orders rejected as sold out while enough was left for them.
    pub dishonest: usize,
    /// Orders rejected `DEAD_LETTERED`: every order the load submits is
    /// healthy, so each one is a finding.
    pub dead_lettered: usize,
    /// Orders rejected `DECISION_FAILED` (only a test that breaks one
    /// order's decision on purpose expects any).
    pub decision_failed: usize,
    /// Invariant samples taken during the run.
    pub samples: u64,
    /// Samples (and final reads) with `reserved` outside `0..=stored`.
    pub oversold: usize,
    /// From the end of the load to nothing PENDING, in milliseconds.
    pub drain_ms: u128,
    /// Events read from the events stream (duplicates included), when
    /// it was checked.
    pub events: usize,
    /// Of those, events published again.
    pub event_duplicates: usize,
    /// What broke, one line each (empty when everything held).
    pub findings: Vec<String>,
}

impl Report {
    /// Adds the events check ([`crate::events::check`]): the stream of
    /// `topology` on `amqp_url` against the database.
    pub async fn check_events(
        &mut self,
        db: &MySqlPool,
        amqp_url: &str,
        topology: &shared::broker::Topology,
    ) {
        let events = crate::events::check(db, amqp_url, topology, Duration::from_secs(60)).await;
        self.events = events.read;
        self.event_duplicates = events.duplicates;
        self.findings.extend(events.findings);
    }

    /// Panics with the findings unless every property held.
    pub fn assert_holds(&self) {
        eprintln!(
            "fault report: {}",
            serde_json::to_string(self).expect("report json")
        );
        assert!(
            self.findings.is_empty(),
            "{}: {} findings:\n{}",
            self.fault,
            self.findings.len(),
            self.findings.join("\n")
        );
        assert!(
            self.answered_2xx > 0,
            "{}: nothing was acknowledged",
            self.fault
        );
    }
}

/// Stops `load` and checks `app` after `fault`: [`check`], then the events
/// stream ([`Report::check_events`]). The caller asserts.
pub async fn check_after(
    fault: &str,
    app: &crate::TestApp,
    load: Load,
    sampler: Sampler,
    stock: &HashMap<u64, i64>,
    drain_timeout: Duration,
) -> Report {
    let lifecycle = load.lifecycle;
    let (submissions, closings) = load.stop_all().await;
    let mut report = check_with(
        fault,
        &app.db,
        &submissions,
        stock,
        sampler,
        drain_timeout,
        lifecycle.then_some(&closings[..]),
    )
    .await;
    report
        .check_events(&app.db, &app.config.amqp_url, &app.topology())
        .await;
    report
}

/// Waits (up to `drain_timeout`) for nothing to be PENDING, then checks the
/// database against `submissions`; `stock` is each product's starting stock.
pub async fn check(
    fault: &str,
    db: &MySqlPool,
    submissions: &[Submission],
    stock: &HashMap<u64, i64>,
    sampler: Sampler,
    drain_timeout: Duration,
) -> Report {
    check_with(fault, db, submissions, stock, sampler, drain_timeout, None).await
}

/// [`check`]; with `closings` (the load had [`Plan::lifecycle`]), accepted
/// orders may have been paid, cancelled or expired, as the module says.
async fn check_with(
    fault: &str,
    db: &MySqlPool,
    submissions: &[Submission],
    stock: &HashMap<u64, i64>,
    sampler: Sampler,
    drain_timeout: Duration,
    closings: Option<&[Closing]>,
) -> Report {
    let lifecycle = closings.is_some();
    let mut report = Report {
        fault: fault.to_owned(),
        submitted: submissions.len(),
        ..Report::default()
    };
    let drain_started = Instant::now();
    // With the lifecycle, accepted orders go on expiring after the load:
    // wait for that too, so the orders and the stock are read at rest.
    let unsettled = if lifecycle {
        "SELECT COUNT(*) FROM orders WHERE status IN ('PENDING', 'ACCEPTED')"
    } else {
        "SELECT COUNT(*) FROM orders WHERE status = 'PENDING'"
    };
    loop {
        let pending: Result<(i64,), _> = sqlx::query_as(unsettled).fetch_one(db).await;
        if matches!(pending, Ok((0,))) || drain_started.elapsed() > drain_timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report.drain_ms = drain_started.elapsed().as_millis();
    let (samples, violations) = sampler.finish().await;
    report.samples = samples;
    report.oversold = violations.len();
    report
        .findings
        .extend(violations.into_iter().map(|v| format!("oversold: {v}")));

    let orders: Vec<StoredOrder> = sqlx::query_as(
        "SELECT id, product_id, CAST(total AS SIGNED) AS total, status, reason, idempotency_key FROM orders",
    )
    .fetch_all(db)
    .await
    .expect("reading the orders");
    match_orders(submissions, &orders, lifecycle, &mut report);
    if let Some(closings) = closings {
        check_closings(closings, &orders, &mut report);
    }
    check_stock(db, &orders, stock, lifecycle, &mut report).await;
    if let Ok(violations) = shared::db::invariants::check(db).await {
        report
            .findings
            .extend(violations.into_iter().map(|v| format!("invariant: {v:?}")));
    }
    report
}

/// Matches the orders in the database with the submissions: counts the
/// decisions and finds lost, duplicated and unexpected orders.
fn match_orders(
    submissions: &[Submission],
    orders: &[StoredOrder],
    lifecycle: bool,
    report: &mut Report,
) {
    let stored_key = |s: &Submission| s.key.as_ref().map(|k| api::idempotency::scoped_key(b"", k));
    let keyed: HashMap<String, &Submission> = submissions
        .iter()
        .filter_map(|s| Some((stored_key(s)?, s)))
        .collect();
    let acknowledged: HashMap<Uuid, &Submission> = submissions
        .iter()
        .filter_map(|s| match s.answer {
            Answer::Acknowledged { id, .. } => Some((id, s)),
            _ => None,
        })
        .collect();
    // A keyless submission that got no answer may have left one order.
    let mut maybe_recorded: HashMap<(u64, i64), usize> = HashMap::new();
    for s in submissions {
        if s.key.is_none() && matches!(s.answer, Answer::Unanswered { .. }) {
            *maybe_recorded.entry((s.product, s.total)).or_default() += 1;
        }
    }

    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for order in orders {
        let asked = |s: &Submission| s.product == order.product_id && s.total == order.total;
        let submitted = match order.idempotency_key.as_deref() {
            Some(key) => match keyed.get_key_value(key) {
                Some((key, s)) if asked(s) => {
                    *per_key.entry(key.as_str()).or_default() += 1;
                    true
                }
                _ => false,
            },
            None => match acknowledged.get(&order.id) {
                Some(s) => s.key.is_none() && asked(s),
                None => maybe_recorded
                    .get_mut(&(order.product_id, order.total))
                    .is_some_and(|left| {
                        let some = *left > 0;
                        *left = left.saturating_sub(1);
                        some
                    }),
            },
        };
        if !submitted {
            report.unexpected += 1;
            report.findings.push(format!(
                "unexpected: order {} ({}, {}, {}) matches no submission",
                order.id, order.product_id, order.total, order.status
            ));
        }
        match order.reason.as_deref() {
            Some(shared::domain::reason::DEAD_LETTERED) => {
                report.dead_lettered += 1;
                report.findings.push(format!(
                    "dead-lettered: healthy order {} was rejected DEAD_LETTERED",
                    order.id
                ));
            }
            Some(shared::domain::reason::DECISION_FAILED) => report.decision_failed += 1,
            _ => {}
        }
        match order.status.as_str() {
            "PENDING" => {}
            "ACCEPTED" => report.accepted += 1,
            "REJECTED" => report.rejected += 1,
            "PAID" | "CANCELLED" | "EXPIRED" if lifecycle => report.closed += 1,
            other => report.findings.push(format!(
                "order {} ended {other}, {:?}: nothing here pays or cancels",
                order.id, order.reason
            )),
        }
        if order.status != "PENDING" {
            report.decided += 1;
        }
    }
    for (key, n) in per_key.iter().filter(|(_, n)| **n > 1) {
        report.duplicated += n - 1;
        report.findings.push(format!(
            "duplicated: {n} orders for one submission (key {key})"
        ));
    }

    let by_id: HashMap<Uuid, &StoredOrder> = orders.iter().map(|o| (o.id, o)).collect();
    for s in submissions {
        report.retries += u64::from(s.attempts - 1);
        match &s.answer {
            Answer::Acknowledged { id, status } => {
                report.answered_2xx += 1;
                let found = by_id.get(id);
                let problem = match found {
                    None => Some("missing from the database"),
                    Some(o) if o.idempotency_key != stored_key(s) => Some("another submission's"),
                    Some(o) if o.status == "PENDING" => Some("still PENDING"),
                    Some(_) => None,
                };
                if let Some(problem) = problem {
                    report.lost += 1;
                    report
                        .findings
                        .push(format!("lost: order {id} (answered {status}) is {problem}"));
                }
            }
            Answer::Refused { status, error } => {
                report.refused += 1;
                report
                    .findings
                    .push(format!("refused: a valid order got {status} {error}"));
            }
            Answer::Unanswered { .. } => report.unanswered += 1,
            Answer::Shed => report.shed += 1,
        }
    }
}

/// Every pay or cancel answered left its order as answered; none was
/// refused; and every PAID or CANCELLED order is one the closer paid or
/// cancelled.
fn check_closings(closings: &[Closing], orders: &[StoredOrder], report: &mut Report) {
    let by_id: HashMap<Uuid, &StoredOrder> = orders.iter().map(|o| (o.id, o)).collect();
    let asked: std::collections::HashSet<(Uuid, &str)> =
        closings.iter().map(|c| (c.id, c.action)).collect();
    for o in orders {
        let action = match o.status.as_str() {
            "PAID" => "pay",
            "CANCELLED" => "cancel",
            _ => continue,
        };
        if !asked.contains(&(o.id, action)) {
            report.unexpected += 1;
            report.findings.push(format!(
                "unexpected: order {} is {} and nobody asked for it",
                o.id, o.status
            ));
        }
    }
    for c in closings {
        if let Some(refused) = &c.refused {
            report.findings.push(format!(
                "refused: {} of accepted order {} got {refused}",
                c.action, c.id
            ));
        }
        let Some(told) = &c.told else { continue };
        report.closings += 1;
        let stored = by_id.get(&c.id).map(|o| o.status.as_str());
        if stored != Some(told.as_str()) {
            report.lost += 1;
            report.findings.push(format!(
                "lost: {} of order {} was answered {told}, and the order is {stored:?}",
                c.action, c.id
            ));
        }
    }
}

/// An order as the database holds it.
#[derive(Debug, sqlx::FromRow)]
struct StoredOrder {
    id: Uuid,
    product_id: u64,
    total: i64,
    status: String,
    reason: Option<String>,
    idempotency_key: Option<String>,
}

/// Per product: the stock adds up, nothing oversold, every sold-out
/// rejection honest.
async fn check_stock(
    db: &MySqlPool,
    orders: &[StoredOrder],
    stock: &HashMap<u64, i64>,
    lifecycle: bool,
    report: &mut Report,
) {
    let inventories: Vec<(u64, i64, i64)> =
        sqlx::query_as("SELECT product_id, stored_stock, reserved_stock FROM inventories")
            .fetch_all(db)
            .await
            .expect("reading the inventories");
    for (product, stored, reserved) in inventories {
        let Some(&initial) = stock.get(&product) else {
            continue;
        };
        let ours = || orders.iter().filter(move |o| o.product_id == product);
        let units =
            |status: &str| -> i64 { ours().filter(|o| o.status == status).map(|o| o.total).sum() };
        let (accepted, paid) = (units("ACCEPTED"), units("PAID"));
        // What is held or sold never exceeds the stock, released or not.
        let released = ours().any(|o| o.status == "CANCELLED" || o.status == "EXPIRED");
        if !(0..=stored).contains(&reserved) || accepted + paid > initial {
            report.oversold += 1;
            report.findings.push(format!(
                "oversold: product {product}: stock {initial}, stored {stored}, reserved {reserved}, accepted {accepted}"
            ));
        }
        let off = (reserved - accepted).unsigned_abs() + (stored - (initial - paid)).unsigned_abs();
        if off > 0 {
            report.duplicated += off as usize;
            report.findings.push(format!(
                "effect: product {product}: stock {initial}, stored {stored}, reserved {reserved}, accepted orders hold {accepted}"
            ));
        }
        if lifecycle && released {
            continue;
        }
        let left = stored - reserved;
        for o in
            ours().filter(|o| o.reason.as_deref() == Some(shared::domain::reason::OUT_OF_STOCK))
        {
            if o.total <= left {
                report.dishonest += 1;
                report.findings.push(format!(
                    "dishonest: order {} for {} rejected sold out with {left} left",
                    o.id, o.total
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submission(key: Option<&str>, answer: Answer) -> Submission {
        Submission {
            key: key.map(str::to_owned),
            product: 1,
            total: 2,
            attempts: 1,
            answer,
        }
    }

    fn order(id: Uuid, key: Option<&str>, status: &str) -> StoredOrder {
        StoredOrder {
            id,
            product_id: 1,
            total: 2,
            status: status.to_owned(),
            reason: None,
            idempotency_key: key.map(|k| api::idempotency::scoped_key(b"", k)),
        }
    }

    fn acknowledged(id: Uuid) -> Answer {
        Answer::Acknowledged { status: 202, id }
    }

    fn unanswered() -> Answer {
        Answer::Unanswered {
            last: "connection reset".into(),
        }
    }

    #[test]
    fn the_checker_finds_lost_duplicated_and_unexpected_orders() {
        let (a, b, c, d, e) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let submissions = [
            submission(Some("key-a-0123456789"), acknowledged(a)),
            submission(Some("key-b-0123456789"), acknowledged(b)),
            submission(None, acknowledged(c)),
            submission(None, unanswered()),
        ];
        let clean = [
            order(a, Some("key-a-0123456789"), "ACCEPTED"),
            order(b, Some("key-b-0123456789"), "REJECTED"),
            order(c, None, "ACCEPTED"),
            // The unanswered keyless submission was recorded after all.
            order(d, None, "ACCEPTED"),
        ];
        let mut report = Report::default();
        match_orders(&submissions, &clean, false, &mut report);
        assert!(report.findings.is_empty(), "{:?}", report.findings);
        assert_eq!(
            (report.decided, report.answered_2xx, report.unanswered),
            (4, 3, 1)
        );

        // b still PENDING, c missing, a second keyless order nobody sent, a's key twice.
        let broken = [
            order(a, Some("key-a-0123456789"), "ACCEPTED"),
            order(b, Some("key-b-0123456789"), "PENDING"),
            order(d, None, "ACCEPTED"),
            order(e, None, "ACCEPTED"),
            order(Uuid::now_v7(), Some("key-a-0123456789"), "ACCEPTED"),
        ];
        let mut report = Report::default();
        match_orders(&submissions, &broken, false, &mut report);
        assert_eq!(
            (report.lost, report.unexpected, report.duplicated),
            (2, 1, 1),
            "{:?}",
            report.findings
        );
    }
}
