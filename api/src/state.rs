//! The one state value every handler receives.

use crate::admission::Admission;
use crate::metrics::Gauges;
use crate::outbox::Outbox;
use crate::publisher::Publisher;
use crate::recorder::Recorder;
use crate::waiters::Waiters;
use shared::Config;
use shared::domain::ProductId;
use sqlx::MySqlPool;
use std::collections::HashSet;
use std::sync::{Arc, RwLock};

/// Shared by every handler through `State`.
#[derive(Clone)]
pub struct AppState {
    /// The database pool.
    pub db: MySqlPool,
    /// Records orders in batches.
    pub recorder: Recorder,
    /// Publishes orders to the broker.
    pub publisher: Publisher,
    /// Requests waiting for decisions.
    pub waiters: Waiters,
    /// Admission control.
    pub admission: Admission,
    /// This api's unconfirmed orders.
    pub outbox: Outbox,
    /// Products known to exist (products are never deleted through the api),
    /// so a flood of orders does not ask the database each time.
    pub known_products: Arc<RwLock<HashSet<ProductId>>>,
    /// Slots for requests waiting with `Prefer: wait` (`MAX_WAITING`), so a
    /// flood of slow clients cannot pile up without bound.
    pub waiting_slots: Arc<tokio::sync::Semaphore>,
    /// Configuration.
    pub config: Arc<Config>,
}

impl AppState {
    /// The gauges served at `/metrics`, read now.
    pub fn gauges(&self) -> Gauges {
        Gauges {
            broker_up: self.publisher.is_connected(),
            broker_blocked: self.publisher.is_blocked(),
            undecided: self.admission.undecided(),
            waiters: self.waiters.len(),
            deferred: self.outbox.deferred_len(),
            unconfirmed: self.outbox.unconfirmed_len(),
        }
    }
}
