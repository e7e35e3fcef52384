//! Admission control: an order is recorded only if it can be decided in
//! time; beyond that, `POST /api/orders` answers 503 `OVERLOADED` at once
//! and records nothing.
//!
//! Per partition, this api tracks the orders it admitted that are not yet
//! decided (the workers' decision notices remove them) and how fast its
//! orders get decided there. A new order is shed when its partition
//!
//! - already holds as many undecided orders as it decides in half of
//!   `ADMISSION_MAX_DELAY` (at least [`MIN_PER_PARTITION`]): by Little's law
//!   an admitted order then waits about that long; or
//! - has an undecided order older than half of `ADMISSION_MAX_DELAY`: the
//!   partition is stalled (no worker, a broker or database outage), which
//!   the rate alone would notice only slowly.
//!
//! Each api counts only its own orders and their decisions, so several apis
//! together admit what the workers decide, not a multiple of it. The check
//! is per partition because partitions are decided in parallel: a hot
//! product sheds its own excess without shedding everyone else's orders.
//! A notice can be lost (a broker reconnect): [`run_reconciler`] asks the
//! database about orders undecided for too long.
//!
//! tower's `load_shed` and concurrency limits shed on a count of requests in
//! flight; what matters here is the decision backlog per partition, which
//! outlives the requests (an order is admitted long after its 202), so this
//! is our own.

use shared::db;
use shared::domain::OrderId;
use sqlx::MySqlPool;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Undecided orders a partition may always hold, whatever its rate: above
/// the 1,024 clients a hot product may have at once before its first rate
/// window closes (at 1,000 they shed 8 % of a sale's first second).
pub const MIN_PER_PARTITION: usize = 2_048;
/// Most undecided orders one api tracks, over all partitions.
pub const MAX_UNDECIDED: usize = 100_000;
/// How often the decision rate is folded into its moving average.
const RATE_WINDOW: Duration = Duration::from_secs(1);
/// Most overdue orders the reconciler checks per round.
const RECONCILE_BATCH: usize = 256;
/// How long after its admission an order the database does not have stops
/// counting: longer than any recording takes (one whose commit was cut
/// waits up to [`crate::settle::SETTLE_WITHIN`] to learn its fate), so what
/// is still absent then was lost (with a primary that failed over before
/// its replica had it) and will never be decided.
const VANISHED_AFTER: Duration = Duration::from_secs(30);

/// The answer to an order past capacity.
#[derive(Debug, Clone, Copy)]
pub struct Overloaded {
    /// When the client may try again.
    pub retry_after: Duration,
}

/// Admission control for this api's orders. Cheap to clone.
#[derive(Clone)]
pub struct Admission {
    inner: Arc<Mutex<State>>,
    /// Half of `ADMISSION_MAX_DELAY`; zero turns admission control off.
    target: Duration,
}

struct State {
    parts: Vec<Part>,
    /// Admitted, undecided orders and their partitions.
    undecided: HashMap<OrderId, u16>,
    /// The partition the reconciler's next round starts with.
    reconcile_from: usize,
}

struct Part {
    /// Admitted orders in admission order, with when; decided ones are
    /// dropped from the front lazily.
    queue: VecDeque<(OrderId, Instant)>,
    /// How many in `queue` are still undecided.
    undecided: usize,
    /// Decisions in the current rate window.
    window_decided: u64,
    window_start: Instant,
    /// Decisions per second, a moving average.
    rate: f64,
}

impl Part {
    fn new(now: Instant) -> Self {
        Self {
            queue: VecDeque::new(),
            undecided: 0,
            window_decided: 0,
            window_start: now,
            rate: 0.0,
        }
    }

    fn roll(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.window_start);
        if elapsed >= RATE_WINDOW {
            let current = self.window_decided as f64 / elapsed.as_secs_f64();
            // The first measured window is the estimate, not half of it.
            self.rate = if self.rate == 0.0 {
                current
            } else {
                0.5 * self.rate + 0.5 * current
            };
            self.window_decided = 0;
            self.window_start = now;
        }
    }
}

/// An admitted order. Dropping it un-admits the order (it was not recorded,
/// or needs no decision); [`Ticket::keep`] keeps it until its decision.
pub struct Ticket {
    id: OrderId,
    admission: Option<Admission>,
}

impl Ticket {
    /// The order was recorded PENDING: it counts until decided.
    pub fn keep(mut self) {
        self.admission = None;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(admission) = self.admission.take() {
            admission.remove(&[self.id], false);
        }
    }
}

impl Admission {
    /// Admission control over `partitions`, keeping an admitted order's wait
    /// for its decision under `max_delay` (zero: admit everything).
    pub fn new(partitions: u16, max_delay: Duration) -> Self {
        let now = Instant::now();
        Self {
            inner: Arc::new(Mutex::new(State {
                parts: (0..partitions).map(|_| Part::new(now)).collect(),
                undecided: HashMap::new(),
                reconcile_from: 0,
            })),
            target: max_delay / 2,
        }
    }

    /// Admits order `id` on `partition`, or says the partition is past
    /// capacity.
    pub fn admit(&self, partition: u16, id: OrderId) -> Result<Ticket, Overloaded> {
        if self.target.is_zero() {
            return Ok(Ticket {
                id,
                admission: None,
            });
        }
        let now = Instant::now();
        let mut state = self.inner.lock().expect("admission lock");
        let overloaded = Overloaded {
            retry_after: self.target.max(Duration::from_secs(1)),
        };
        if state.undecided.len() >= MAX_UNDECIDED {
            return Err(overloaded);
        }
        let State {
            parts, undecided, ..
        } = &mut *state;
        let part = &mut parts[usize::from(partition)];
        part.roll(now);
        while part
            .queue
            .front()
            .is_some_and(|(id, _)| !undecided.contains_key(id))
        {
            part.queue.pop_front();
        }
        let stalled = part
            .queue
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at) > self.target);
        let capacity = ((part.rate * self.target.as_secs_f64()) as usize).max(MIN_PER_PARTITION);
        if stalled || part.undecided >= capacity || part.queue.len() >= MAX_UNDECIDED {
            return Err(overloaded);
        }
        part.queue.push_back((id, now));
        part.undecided += 1;
        undecided.insert(id, partition);
        Ok(Ticket {
            id,
            admission: Some(self.clone()),
        })
    }

    /// Orders decided (from the workers' notices, or found decided in the
    /// database).
    pub fn decided(&self, ids: &[OrderId]) {
        self.remove(ids, true);
    }

    /// Orders cancelled before their decision: they leave the count
    /// without adding to the decision rate.
    pub fn cancelled(&self, ids: &[OrderId]) {
        self.remove(ids, false);
    }

    fn remove(&self, ids: &[OrderId], decided: bool) {
        if self.target.is_zero() {
            return;
        }
        let mut state = self.inner.lock().expect("admission lock");
        if state.undecided.is_empty() {
            return;
        }
        let now = Instant::now();
        let State {
            parts, undecided, ..
        } = &mut *state;
        for id in ids {
            if let Some(partition) = undecided.remove(id) {
                let part = &mut parts[usize::from(partition)];
                part.undecided -= 1;
                if decided {
                    part.roll(now);
                    part.window_decided += 1;
                }
                // Decided entries leave the front now, not only on the next
                // admission, so the queue stays as short as the backlog.
                while part
                    .queue
                    .front()
                    .is_some_and(|(id, _)| !undecided.contains_key(id))
                {
                    part.queue.pop_front();
                }
            }
        }
    }

    /// Undecided orders admitted more than `age` ago, at most `limit`, taken
    /// round-robin over the partitions: every partition's oldest first,
    /// then every partition's second oldest, and so on. The oldest is what makes a partition look
    /// stalled, so however many partitions there are and however many of
    /// them are backed up, each one's front is checked within a few rounds.
    fn overdue(&self, age: Duration, limit: usize) -> Vec<(OrderId, Instant)> {
        let now = Instant::now();
        let mut state = self.inner.lock().expect("admission lock");
        let parts = state.parts.len();
        if parts == 0 || limit == 0 {
            return Vec::new();
        }
        let start = state.reconcile_from % parts;
        // With more partitions than the budget, the next round starts where
        // this one's first pass ends.
        state.reconcile_from = (start + limit.min(parts)) % parts;
        let State {
            parts: all,
            undecided,
            ..
        } = &*state;
        let mut fronts: Vec<_> = (0..parts)
            .map(|i| {
                all[(start + i) % parts]
                    .queue
                    .iter()
                    .take_while(|(_, at)| now.duration_since(*at) > age)
                    .filter(|(id, _)| undecided.contains_key(id))
                    .copied()
            })
            .collect();
        let mut found = Vec::new();
        loop {
            let before = found.len();
            for front in &mut fronts {
                if found.len() >= limit {
                    return found;
                }
                found.extend(front.next());
            }
            if found.len() == before {
                return found;
            }
        }
    }

    /// Admitted orders not yet decided (a gauge).
    pub fn undecided(&self) -> usize {
        self.inner.lock().expect("admission lock").undecided.len()
    }
}

/// Until `shutdown`, a few times per target: asks the database about orders
/// undecided for longer than half the target (their notice may have been
/// lost, or they were cancelled while PENDING) and stops counting those
/// that are decided.
pub async fn run_reconciler(db: MySqlPool, admission: Admission, shutdown: CancellationToken) {
    if admission.target.is_zero() {
        return;
    }
    // An order whose notice never comes (cancelled while PENDING through
    // another api, or a notice lost in a reconnect) must be found before it
    // looks like a stalled partition: checked from half the target on, a
    // few times per target.
    let every = (admission.target / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let overdue = admission.overdue(admission.target / 2, RECONCILE_BATCH);
        if overdue.is_empty() {
            continue;
        }
        let ids: Vec<OrderId> = overdue.iter().map(|(id, _)| *id).collect();
        match db::orders::decided_among(&db, &ids, false).await {
            Ok((decided, recorded)) => {
                admission.decided(&decided);
                // Never recorded, or lost with a primary: no decision will come.
                let vanished: Vec<OrderId> = overdue
                    .iter()
                    .filter(|(id, at)| at.elapsed() > VANISHED_AFTER && !recorded.contains(id))
                    .map(|(id, _)| *id)
                    .collect();
                if !vanished.is_empty() {
                    tracing::warn!(
                        orders = vanished.len(),
                        "admitted orders the database does not have: no longer counted"
                    );
                    admission.cancelled(&vanished);
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not check overdue orders"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_past_its_floor_sheds_and_a_decision_makes_room() {
        let admission = Admission::new(2, Duration::from_secs(60));
        let mut tickets = Vec::new();
        for _ in 0..MIN_PER_PARTITION {
            let id = OrderId::generate();
            tickets.push((id, admission.admit(0, id).expect("under the floor")));
        }
        assert!(admission.admit(0, OrderId::generate()).is_err());
        // Another partition is unaffected.
        assert!(admission.admit(1, OrderId::generate()).is_ok());
        let (first, ticket) = tickets.remove(0);
        ticket.keep();
        admission.decided(&[first]);
        assert!(admission.admit(0, OrderId::generate()).is_ok());
    }

    #[test]
    fn a_dropped_ticket_is_not_counted() {
        let admission = Admission::new(1, Duration::from_secs(60));
        drop(admission.admit(0, OrderId::generate()).unwrap());
        assert_eq!(admission.undecided(), 0);
        admission.admit(0, OrderId::generate()).unwrap().keep();
        assert_eq!(admission.undecided(), 1);
    }

    #[test]
    fn a_stalled_partition_sheds() {
        let admission = Admission::new(1, Duration::from_millis(20));
        admission.admit(0, OrderId::generate()).unwrap().keep();
        std::thread::sleep(Duration::from_millis(30));
        assert!(admission.admit(0, OrderId::generate()).is_err());
    }

    #[test]
    fn the_reconciler_reaches_every_partitions_oldest_however_many_are_backed_up() {
        let admission = Admission::new(32, Duration::from_secs(60));
        // The first 16 partitions hold 100 undecided orders each...
        for p in 0..16 {
            for _ in 0..100 {
                admission.admit(p, OrderId::generate()).unwrap().keep();
            }
        }
        // ...and the last one a single order whose notice never comes.
        let lonely = OrderId::generate();
        admission.admit(31, lonely).unwrap().keep();
        let overdue = admission.overdue(Duration::ZERO, RECONCILE_BATCH);
        assert_eq!(overdue.len(), RECONCILE_BATCH);
        assert!(
            overdue.iter().any(|(id, _)| *id == lonely),
            "partition 31's oldest is checked"
        );
        // More partitions than the budget: every one's oldest within a few rounds.
        let admission = Admission::new(1024, Duration::from_secs(60));
        let fronts: Vec<OrderId> = (0..1024)
            .map(|p| {
                let id = OrderId::generate();
                admission.admit(p, id).unwrap().keep();
                admission.admit(p, OrderId::generate()).unwrap().keep();
                id
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..8 {
            seen.extend(
                admission
                    .overdue(Duration::ZERO, RECONCILE_BATCH)
                    .into_iter()
                    .map(|(id, _)| id),
            );
        }
        assert!(fronts.iter().all(|id| seen.contains(id)));
    }

    #[test]
    fn zero_turns_it_off() {
        let admission = Admission::new(1, Duration::ZERO);
        for _ in 0..(2 * MIN_PER_PARTITION) {
            admission.admit(0, OrderId::generate()).unwrap().keep();
        }
        assert_eq!(admission.undecided(), 0);
    }
}
