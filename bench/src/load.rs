//! The load: closed loop (a fixed pool of clients, each sending its next
//! order when the last one is answered) or open loop (orders arrive on a
//! schedule, whatever the answers), and the tally of the answers.

use crate::api::OrderKey;
use crate::stats::Latencies;
use crate::wire::{Answer, Client};
use indicatif::ProgressBar;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// One answered request.
struct Record {
    /// The second of the run it was sent in (open loop: was due in).
    second: u32,
    /// Index of its product in the world's list.
    product: usize,
    /// From sending (open loop: from its scheduled arrival) to the answer.
    latency: Duration,
    answer: Answer,
}

/// Counts for one second of the run.
#[derive(Debug, Default, Clone)]
pub struct SecondCounts {
    /// Orders due (open loop) or sent (closed loop) in this second.
    pub arrivals: u64,
    /// Requests sent.
    pub sent: u64,
    pub admitted: u64,
    pub shed: u64,
    /// Arrivals not sent because `--max-in-flight` requests were outstanding.
    pub client_dropped: u64,
    pub errors: u64,
}

/// Everything the answers said.
#[derive(Debug)]
pub struct Tally {
    /// Every admitted order with the second it was sent in, in no particular order.
    pub admitted: Vec<(OrderKey, u32)>,
    /// Admitted orders per product (index into the world's list).
    pub admitted_per_product: Vec<u64>,
    pub shed: u64,
    pub shed_without_retry_after: u64,
    pub client_dropped: u64,
    pub errors: u64,
    /// The first error's text, to tell what went wrong.
    pub first_error: Option<String>,
    /// Latency of every answer except shed ones (as before shedding existed).
    pub submit_latency: Latencies,
    /// Latency of the shed answers.
    pub shed_latency: Latencies,
    /// By second of the run.
    pub seconds: Vec<SecondCounts>,
}

impl Tally {
    fn new(products: usize) -> Self {
        Self {
            admitted: Vec::new(),
            admitted_per_product: vec![0; products],
            shed: 0,
            shed_without_retry_after: 0,
            client_dropped: 0,
            errors: 0,
            first_error: None,
            submit_latency: Latencies::default(),
            shed_latency: Latencies::default(),
            seconds: Vec::new(),
        }
    }

    fn second(&mut self, second: u32) -> &mut SecondCounts {
        let s = second as usize;
        if self.seconds.len() <= s {
            self.seconds.resize(s + 1, SecondCounts::default());
        }
        &mut self.seconds[s]
    }

    fn add(&mut self, r: Record) {
        self.second(r.second).sent += 1;
        match r.answer {
            Answer::Admitted(key) => {
                self.second(r.second).admitted += 1;
                self.admitted.push((key, r.second));
                self.admitted_per_product[r.product] += 1;
                self.submit_latency.push(r.latency);
            }
            Answer::Shed { retry_after } => {
                self.second(r.second).shed += 1;
                self.shed += 1;
                if !retry_after {
                    self.shed_without_retry_after += 1;
                }
                self.shed_latency.push(r.latency);
            }
            Answer::Error(text) => {
                self.second(r.second).errors += 1;
                self.errors += 1;
                self.first_error.get_or_insert(text);
                self.submit_latency.push(r.latency);
            }
        }
    }

    /// Requests sent in all.
    pub fn sent(&self) -> u64 {
        self.seconds.iter().map(|s| s.sent).sum()
    }
}

/// Second of the run `at` falls in.
fn second_of(at: Duration) -> u32 {
    u32::try_from(at.as_secs()).unwrap_or(u32::MAX)
}

/// What the world looks like to the load: which product each order goes to.
pub struct Plan {
    /// Product ids.
    pub products: Arc<Vec<u64>>,
    /// For each order, the index of its product.
    pub orders: Arc<Vec<usize>>,
}

/// Closed loop: `clients` clients, each with its own keep-alive connection,
/// each sending its next order when the previous one is answered, until
/// every order is sent or `deadline` passes.
pub async fn closed_loop(
    client: &Client,
    clients: usize,
    plan: &Plan,
    deadline: Instant,
    progress: &ProgressBar,
) -> anyhow::Result<Tally> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        // Each client its own connection, as separate buyers would have;
        // with buyers' tokens, order n is buyer n % N whoever sends it.
        let (mut session, next, orders, products, progress) = (
            client.session(),
            next.clone(),
            plan.orders.clone(),
            plan.products.clone(),
            progress.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= orders.len() || Instant::now() > deadline {
                    return out;
                }
                let sent = Instant::now();
                let answer = session.order(products[orders[i]], i).await;
                out.push(Record {
                    second: second_of(sent - started),
                    product: orders[i],
                    latency: sent.elapsed(),
                    answer,
                });
                progress.inc(1);
            }
        }));
    }
    let mut tally = Tally::new(plan.products.len());
    for task in tasks {
        for record in task.await? {
            tally.add(record);
        }
    }
    for s in &mut tally.seconds {
        s.arrivals = s.sent;
    }
    Ok(tally)
}

/// How well the open loop kept its schedule.
#[derive(Debug)]
pub struct Schedule {
    /// Orders that came due (all of them unless the deadline passed).
    pub arrivals: u64,
    /// From the first arrival to the last launch, at least arrivals / rate.
    pub send_seconds: f64,
    /// The latest any request was launched after its scheduled time.
    pub max_lag: Duration,
    /// Most requests outstanding at once.
    pub peak_in_flight: usize,
}

/// Open loop: order `i` is due `i / rate` seconds after the start and is
/// launched then as its own task, whether or not earlier orders were
/// answered. A scheduler wakes at each due time (the timer's resolution is
/// a millisecond, so at high rates it launches every order due since it
/// last woke, each stamped with its own due time). When `max_in_flight`
/// requests are outstanding, an arrival is not sent and counts as
/// `client_dropped`. Latencies run from the due time, so a late launch
/// shows in them rather than hiding (no coordinated omission). One client
/// is shared: a request takes an idle pooled connection or opens one.
pub async fn open_loop(
    client: Client,
    plan: &Plan,
    rate: f64,
    max_in_flight: usize,
    deadline: Instant,
    progress: &ProgressBar,
) -> anyhow::Result<(Tally, Schedule)> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Record>();
    let products_len = plan.products.len();
    let collector = tokio::spawn(async move {
        let mut tally = Tally::new(products_len);
        while let Some(record) = rx.recv().await {
            tally.add(record);
        }
        tally
    });

    let in_flight = Arc::new(AtomicUsize::new(0));
    let total = plan.orders.len();
    let started = Instant::now();
    let due_at = |i: usize| Duration::from_secs_f64(i as f64 / rate);
    let (mut arrivals, mut dropped) = (Vec::<u64>::new(), Vec::<u64>::new());
    let bump = |v: &mut Vec<u64>, s: u32| {
        let s = s as usize;
        if v.len() <= s {
            v.resize(s + 1, 0);
        }
        v[s] += 1;
    };
    let (mut max_lag, mut peak_in_flight) = (Duration::ZERO, 0);
    let mut i = 0;
    while i < total {
        tokio::time::sleep_until((started + due_at(i)).into()).await;
        let now = started.elapsed();
        if Instant::now() > deadline {
            break;
        }
        // Every order due by now: i / rate <= now.
        let due = ((now.as_secs_f64() * rate) as usize + 1).clamp(i + 1, total);
        while i < due {
            let offset = due_at(i);
            let second = second_of(offset);
            max_lag = max_lag.max(now.saturating_sub(offset));
            bump(&mut arrivals, second);
            // Only this loop adds to `in_flight`, so the cap holds.
            if in_flight.load(Ordering::Acquire) >= max_in_flight {
                bump(&mut dropped, second);
                progress.inc(1);
            } else {
                peak_in_flight = peak_in_flight.max(in_flight.fetch_add(1, Ordering::AcqRel) + 1);
                let (client, tx, in_flight, progress) = (
                    client.clone(),
                    tx.clone(),
                    in_flight.clone(),
                    progress.clone(),
                );
                let product = plan.orders[i];
                let product_id = plan.products[product];
                let scheduled = started + offset;
                tokio::spawn(async move {
                    let answer = client.order_pooled(product_id, i).await;
                    let latency = scheduled.elapsed();
                    // The collector outlives every sender.
                    let _ = tx.send(Record {
                        second,
                        product,
                        latency,
                        answer,
                    });
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                    progress.inc(1);
                });
            }
            i += 1;
        }
    }
    // The last arrival is due at (i - 1) / rate: a scheduler that kept pace
    // sent for i / rate seconds (the --duration); a late one for longer.
    let send_seconds = started.elapsed().as_secs_f64().max(i as f64 / rate);
    // The collector ends when the last request's sender is dropped.
    drop(tx);
    let mut tally = collector.await?;
    for (s, n) in arrivals.iter().enumerate() {
        tally.second(s as u32).arrivals = *n;
    }
    for (s, n) in dropped.iter().enumerate() {
        tally.second(s as u32).client_dropped = *n;
        tally.client_dropped += n;
    }
    let schedule = Schedule {
        arrivals: i as u64,
        send_seconds,
        max_lag,
        peak_in_flight,
    };
    Ok((tally, schedule))
}
