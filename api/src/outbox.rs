//! What this api owes the broker: the orders it recorded and has not yet
//! seen confirmed.
//!
//! The order row is the outbox; this is the api's memory of which rows are
//! still unpublished, so that the relay republishes exactly those and never
//! a live backlog. Order ids are UUIDv7 and increase within a process, and
//! every id is handed out here, so one id sums it up: the **watermark**, the
//! lowest id this api cannot vouch for. Every order it recorded below the
//! watermark is on the broker. The relay writes the watermark with each
//! heartbeat; when this api dies, another one republishes its PENDING orders
//! from the watermark on, once.
//!
//! Memory is bounded: ids in flight are bounded by admission control, and at
//! most [`MAX_DEFERRED`] unpublished orders are kept; past that, the lowest
//! lost id is kept instead (the *floor*) and the relay finds the rest in the
//! database once the broker is back.

use shared::domain::OrderId;
use shared::message::OrderMessage;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// Most recorded-but-unpublished orders kept in memory for the relay.
pub const MAX_DEFERRED: usize = 10_000;

/// This api's unconfirmed orders. Cheap to clone.
#[derive(Clone, Default)]
pub struct Outbox(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    /// Ids handed out whose orders are not known to be on the broker (or
    /// known not to be recorded).
    unconfirmed: BTreeSet<OrderId>,
    /// Recorded orders whose publish failed, oldest first.
    deferred: Vec<OrderMessage>,
    /// The lowest id of an order this api may have recorded and no longer
    /// tracks one by one (more than `MAX_DEFERRED`, or a recording whose
    /// outcome is unknown); the relay looks in the database from here.
    floor: Option<OrderId>,
    /// Bumped whenever an id is handed to the floor (whether or not it
    /// lowers it), so a relay scan that started before can tell.
    floor_changes: u64,
}

/// An id handed out for a new order. Dropping it says the order was not
/// recorded, or is confirmed on the broker; [`Outbox::defer`] and
/// [`Outbox::lose_track`] take it over otherwise.
pub struct NewId {
    id: OrderId,
    outbox: Outbox,
    /// Cleared when the outbox takes the id over.
    armed: bool,
}

impl NewId {
    /// The id.
    pub fn get(&self) -> OrderId {
        self.id
    }

    /// The outbox has taken the id over: dropping no longer forgets it.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for NewId {
    fn drop(&mut self) {
        if self.armed {
            self.outbox.lock().unconfirmed.remove(&self.id);
        }
    }
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().expect("outbox lock")
    }

    /// A fresh order id, unconfirmed until the returned guard is dropped.
    pub fn new_id(&self) -> NewId {
        let mut inner = self.lock();
        // Generated under the lock, so the watermark never passes it unseen.
        let id = OrderId::generate();
        inner.unconfirmed.insert(id);
        NewId {
            id,
            outbox: self.clone(),
            armed: true,
        }
    }

    /// Keeps recorded orders whose publish failed, for the relay; past
    /// [`MAX_DEFERRED`], only their lowest id is kept (the floor).
    pub fn defer(&self, orders: Vec<OrderMessage>, ids: Vec<NewId>) {
        self.lock().keep(orders);
        // Their ids stay unconfirmed (or under the floor) past the guards.
        ids.into_iter().for_each(NewId::disarm);
    }

    /// Orders whose recording failed in a way that may still have committed
    /// them: the relay checks the database for them from the floor on.
    pub fn lose_track(&self, ids: Vec<NewId>) {
        let mut inner = self.lock();
        for id in &ids {
            inner.lower_floor(id.id);
            inner.unconfirmed.remove(&id.id);
        }
        drop(inner);
        ids.into_iter().for_each(NewId::disarm);
    }

    /// Takes the deferred orders (the relay publishes them, then calls
    /// [`Outbox::confirmed`] or [`Outbox::redefer`]).
    pub fn take_deferred(&self) -> Vec<OrderMessage> {
        std::mem::take(&mut self.lock().deferred)
    }

    /// Deferred orders the relay published and the broker confirmed.
    pub fn confirmed(&self, orders: &[OrderMessage]) {
        let mut inner = self.lock();
        for order in orders {
            inner.unconfirmed.remove(&order.order_id);
        }
    }

    /// Deferred orders the relay could not publish either: kept again.
    pub fn redefer(&self, orders: Vec<OrderMessage>) {
        self.lock().keep(orders);
    }

    /// The floor, if any, with its version for [`Outbox::advance_floor`].
    pub fn floor(&self) -> Option<(OrderId, u64)> {
        let inner = self.lock();
        inner.floor.map(|f| (f, inner.floor_changes))
    }

    /// The relay republished every PENDING order of this api from the floor
    /// up to `to`: the floor moves there (or goes, with `to` = `None`),
    /// unless an order was lost track of meanwhile (then the next round
    /// scans from the floor again).
    /// Returns whether it moved.
    pub fn advance_floor(&self, version: u64, to: Option<OrderId>) -> bool {
        let mut inner = self.lock();
        let current = inner.floor_changes == version;
        if current {
            inner.floor = to;
        }
        current
    }

    /// The lowest id this api cannot vouch for: every order it recorded
    /// below it is on the broker.
    pub fn watermark(&self) -> OrderId {
        let inner = self.lock();
        // A fresh id is above every id handed out so far.
        let fresh = OrderId::generate();
        [inner.unconfirmed.first().copied(), inner.floor, Some(fresh)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(fresh)
    }

    /// Whether every order this api recorded is on the broker.
    pub fn is_clean(&self) -> bool {
        let inner = self.lock();
        inner.unconfirmed.is_empty() && inner.floor.is_none()
    }

    /// Unpublished orders kept in memory (a gauge).
    pub fn deferred_len(&self) -> usize {
        self.lock().deferred.len()
    }

    /// Ids handed out and not yet confirmed (a gauge).
    pub fn unconfirmed_len(&self) -> usize {
        self.lock().unconfirmed.len()
    }
}

impl Inner {
    /// Keeps unpublished orders, up to [`MAX_DEFERRED`]; past it, only the
    /// floor remembers them.
    fn keep(&mut self, orders: Vec<OrderMessage>) {
        for order in orders {
            if self.deferred.len() < MAX_DEFERRED {
                self.deferred.push(order);
            } else {
                self.lower_floor(order.order_id);
                self.unconfirmed.remove(&order.order_id);
            }
        }
    }

    fn lower_floor(&mut self, id: OrderId) {
        if self.floor.is_none_or(|f| id < f) {
            self.floor = Some(id);
        }
        self.floor_changes += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::domain::{ProductId, Quantity};

    fn message(id: OrderId) -> OrderMessage {
        OrderMessage {
            order_id: id,
            product_id: ProductId::new(1).unwrap(),
            total: Quantity::new(1, 10).unwrap(),
        }
    }

    #[test]
    fn the_watermark_stays_below_every_unconfirmed_id() {
        let outbox = Outbox::default();
        let first = outbox.new_id();
        let second = outbox.new_id();
        assert_eq!(outbox.watermark(), first.get());
        // Confirmed (dropped): the watermark moves on to the next one.
        let first_id = first.get();
        drop(first);
        assert_eq!(outbox.watermark(), second.get());
        // Deferred: it stays until the relay confirms it.
        let order = message(second.get());
        outbox.defer(vec![order], vec![second]);
        assert_eq!(outbox.watermark(), order.order_id);
        assert_eq!(outbox.take_deferred(), vec![order]);
        outbox.confirmed(&[order]);
        assert!(outbox.watermark() > first_id);
        assert!(outbox.is_clean());
    }

    #[test]
    fn past_the_bound_only_the_floor_is_kept_until_the_relay_moves_it() {
        let outbox = Outbox::default();
        let ids: Vec<NewId> = (0..MAX_DEFERRED + 5).map(|_| outbox.new_id()).collect();
        let lowest = ids[0].get();
        let orders: Vec<OrderMessage> = ids.iter().map(|i| message(i.get())).collect();
        outbox.defer(orders, ids);
        assert_eq!(outbox.deferred_len(), MAX_DEFERRED);
        let (floor, version) = outbox.floor().expect("a floor");
        assert!(floor > lowest, "the first ones are kept one by one");
        assert_eq!(outbox.watermark(), lowest);
        // A scan that saw no new loss moves the floor; one that did does not.
        let lost = outbox.new_id();
        outbox.lose_track(vec![lost]);
        outbox.advance_floor(version, None);
        assert!(outbox.floor().is_some());
        let (_, version) = outbox.floor().unwrap();
        outbox.advance_floor(version, None);
        assert!(outbox.floor().is_none());
    }
}
