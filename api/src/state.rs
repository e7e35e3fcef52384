//! The one state value every handler receives.

use crate::admission::Admission;
use crate::auth::BuyerTokens;
use crate::metrics::Gauges;
use crate::outbox::Outbox;
use crate::publisher::Publisher;
use crate::recorder::Recorder;
use crate::waiters::Waiters;
use chrono::{DateTime, Utc};
use shared::Config;
use shared::db::products::ProductRow;
use shared::domain::ProductId;
use sqlx::MySqlPool;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Shared by every handler through `State`: one allocation, so that the
/// clone every extractor makes is one reference count, not a dozen (it
/// was 5 % of the api's CPU on the hot path).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// The state around `shared`.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Shared {
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
    /// so a flood of orders does not ask the database each time, with their
    /// sale start as last seen by this api: the hint to check it while
    /// recording (a stale hint only costs the fast answer; the worker checks
    /// the rules in every deciding transaction).
    pub known_products: Arc<RwLock<HashMap<ProductId, Option<DateTime<Utc>>>>>,
    /// Verifies buyers' tokens; `None` when buyers are anonymous.
    pub buyers: Option<Arc<BuyerTokens>>,
    /// Slots for requests waiting with `Prefer: wait` (`MAX_WAITING`), so a
    /// flood of slow clients cannot pile up without bound.
    pub waiting_slots: Arc<tokio::sync::Semaphore>,
    /// The client connections of the public listener (for `/metrics`).
    pub connections: Arc<shared::http::connections::Registry>,
    /// Configuration.
    pub config: Arc<Config>,
}

impl AppState {
    /// Notes that `row` exists, with its sale start.
    pub fn remember_product(&self, row: &ProductRow) {
        if let Ok(id) = ProductId::new(row.id as i64) {
            self.known_products
                .write()
                .expect("known products lock")
                .insert(id, row.sale_starts_at);
        }
    }

    /// The gauges served at `/metrics`, read now.
    pub fn gauges(&self) -> Gauges {
        Gauges {
            broker_up: self.publisher.is_connected(),
            broker_blocked: self.publisher.is_blocked(),
            undecided: self.admission.undecided(),
            waiters: self.waiters.len(),
            deferred: self.outbox.deferred_len(),
            unconfirmed: self.outbox.unconfirmed_len(),
            connections: self.connections.counts(),
            evicted: self.connections.evictions(),
        }
    }
}
