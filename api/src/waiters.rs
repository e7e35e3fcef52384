//! Requests waiting for their order's decision (`Prefer: wait`), by order id.
//!
//! Bounded: a request registers only while it holds one of the
//! `MAX_WAITING` slots, and every registration leaves the map when it is
//! dropped, on every path (decided, timed out, answered early, failed).

use crate::metrics::Metrics;
use shared::domain::{OrderId, OrderStatus};
use shared::message::{DecidedOrder, DecisionNotice};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Requests waiting for decisions. Cheap to clone.
#[derive(Clone, Default)]
pub struct Waiters {
    inner: Arc<Mutex<HashMap<OrderId, Vec<oneshot::Sender<DecidedOrder>>>>>,
}

/// A registration; dropping it unregisters.
pub struct Waiting {
    id: OrderId,
    rx: Option<oneshot::Receiver<DecidedOrder>>,
    waiters: Waiters,
}

impl Waiting {
    /// Waits up to `timeout` for the decision.
    pub async fn decision(mut self, timeout: Duration) -> Option<DecidedOrder> {
        let rx = self.rx.take()?;
        tokio::time::timeout(timeout, rx).await.ok()?.ok()
    }

    /// Waits up to `timeout` for news of the order: its decision, or a
    /// [`Waiters::wake`] (then the row says what happened). False when
    /// `timeout` ran out first; it may be called again then.
    pub async fn news(&mut self, timeout: Duration) -> bool {
        let Some(rx) = self.rx.as_mut() else {
            return true;
        };
        if tokio::time::timeout(timeout, rx).await.is_err() {
            return false;
        }
        self.rx = None;
        true
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        // Close our receiver first: the sender it pairs with then reads as
        // closed, and is removed with every other one nobody waits on.
        drop(self.rx.take());
        let mut map = self.waiters.inner.lock().expect("waiters lock");
        if let Some(list) = map.get_mut(&self.id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                map.remove(&self.id);
            }
        }
    }
}

impl Waiters {
    /// Registers interest in `id`'s decision.
    pub fn register(&self, id: OrderId) -> Waiting {
        let (tx, rx) = oneshot::channel();
        self.inner
            .lock()
            .expect("waiters lock")
            .entry(id)
            .or_default()
            .push(tx);
        Waiting {
            id,
            rx: Some(rx),
            waiters: self.clone(),
        }
    }

    /// Wakes everyone waiting on `id` without a decision (it was cancelled
    /// while PENDING, which sends no notice): they read the order.
    pub fn wake(&self, id: OrderId) {
        // Dropping the senders ends each receiver's wait.
        self.inner.lock().expect("waiters lock").remove(&id);
    }

    /// Orders with at least one request waiting (a gauge).
    pub fn len(&self) -> usize {
        self.inner.lock().expect("waiters lock").len()
    }

    /// Whether no request waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wakes everyone waiting on the orders in `notice`.
    pub fn notify(&self, notice: &DecisionNotice, metrics: &Metrics) {
        for d in &notice.decisions {
            match d.status {
                OrderStatus::Accepted => Metrics::inc(&metrics.notified_accepted),
                _ => Metrics::inc(&metrics.notified_rejected),
            }
        }
        let mut map = self.inner.lock().expect("waiters lock");
        if map.is_empty() {
            return;
        }
        for decided in &notice.decisions {
            if let Some(list) = map.remove(&decided.order_id) {
                for tx in list {
                    let _ = tx.send(decided.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_leaves_the_map_on_every_path() {
        let waiters = Waiters::default();
        // Dropped without waiting (answered early, failed).
        drop(waiters.register(OrderId::generate()));
        assert!(waiters.is_empty());
        // Two requests on one order, one gone.
        let id = OrderId::generate();
        let first = waiters.register(id);
        let second = waiters.register(id);
        drop(first);
        assert_eq!(waiters.len(), 1);
        drop(second);
        assert!(waiters.is_empty());
    }

    #[tokio::test]
    async fn a_wake_ends_the_wait_without_a_decision() {
        let waiters = Waiters::default();
        let id = OrderId::generate();
        let mut waiting = waiters.register(id);
        assert!(!waiting.news(Duration::from_millis(1)).await, "nothing yet");
        waiters.wake(id);
        assert!(waiting.news(Duration::from_secs(5)).await);
        assert!(waiters.is_empty());
        drop(waiting);
        assert!(waiters.is_empty());
    }

    #[tokio::test]
    async fn a_timed_out_wait_leaves_the_map() {
        let waiters = Waiters::default();
        let waiting = waiters.register(OrderId::generate());
        assert!(waiting.decision(Duration::from_millis(1)).await.is_none());
        assert!(waiters.is_empty());
    }
}
