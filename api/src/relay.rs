//! The relay: publishes what this api recorded and could not publish, and
//! what dead apis recorded and could not publish. Never a live backlog.
//!
//! Every `RELAY_INTERVAL` it
//! 1. heartbeats into the `apis` table with this api's watermark (see
//!    `outbox`): every order it recorded below it is on the broker;
//! 2. while the broker is reachable, republishes its deferred orders, and
//!    when it lost track of some (the floor), its own PENDING orders from
//!    the floor on, from the database;
//! 3. claims the apis whose heartbeat is older than `LEASE_DURATION`: their
//!    PENDING orders from their watermark on are republished, then become
//!    this api's, and the dead api's row goes. The claim holds the dead row's
//!    lock until the republished orders are confirmed, so they are
//!    republished once, by one api.

use crate::outbox::Outbox;
use crate::publisher::Publisher;
use shared::db::apis::{self, Claim};
use shared::domain::OrderId;
use shared::message::OrderMessage;
use sqlx::MySqlPool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Most orders republished per query.
const PAGE: u32 = 500;
/// Most pages one round republishes, so a huge claim cannot starve the
/// heartbeat.
const PAGES_PER_ROUND: usize = 20;

/// What the relay needs.
pub struct Relay {
    /// The database.
    pub db: MySqlPool,
    /// This api's publisher.
    pub publisher: Publisher,
    /// This api's unconfirmed orders.
    pub outbox: Outbox,
    /// This api's id in the `apis` table and in `orders.recorded_by`.
    pub api_id: String,
    /// How often to run.
    pub interval: Duration,
    /// How old a heartbeat makes an api dead.
    pub lease: Duration,
}

impl Relay {
    /// Runs until `shutdown`, then leaves the `apis` table (or, with orders
    /// still unpublished, marks this api dead so another claims them now).
    ///
    /// An api cut off from the broker for longer than the lease stops
    /// heartbeating, so that a live api with a broker publishes what it
    /// records meanwhile; once back, it heartbeats again (an order both
    /// publish is decided once all the same).
    pub async fn run(self, shutdown: CancellationToken) {
        // On a timer of its own: publishing can take seconds while the
        // broker is slow, and a late heartbeat would get this api claimed.
        let heartbeat = tokio::spawn(heartbeat(
            self.db.clone(),
            self.publisher.clone(),
            self.outbox.clone(),
            self.api_id.clone(),
            self.interval,
            self.lease,
            shutdown.clone(),
        ));
        loop {
            if self.publisher.is_connected() && !self.publisher.is_blocked() {
                self.round(&shutdown).await;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
        let _ = heartbeat.await;
        // One last try at what is still owed, then hand over the rest.
        if self.publisher.is_connected() && !self.publisher.is_blocked() {
            self.republish_deferred().await;
        }
        let unpublished = (!self.outbox.is_clean()).then(|| self.outbox.watermark());
        if let Err(e) = apis::leave(&self.db, &self.api_id, unpublished).await {
            tracing::warn!(error = %e, "could not leave the api list; another api will claim this one's orders after the lease");
        }
    }

    async fn round(&self, shutdown: &CancellationToken) {
        self.republish_deferred().await;
        self.republish_floor(shutdown).await;
        self.claim_dead(shutdown).await;
    }

    /// Republishes the orders this api could not publish; keeps the ones
    /// that fail again.
    async fn republish_deferred(&self) {
        let deferred = self.outbox.take_deferred();
        if deferred.is_empty() {
            return;
        }
        let (published, failed) = self.publish(deferred).await;
        self.outbox.confirmed(&published);
        let (n, left) = (published.len(), failed.len());
        self.outbox.redefer(failed);
        tracing::info!(
            published = n,
            failed = left,
            "relay republished deferred orders"
        );
    }

    /// Republishes this api's PENDING orders from its floor on, page by
    /// page; the floor follows each confirmed page, so a long scan never
    /// starts over (and never republishes what it already did).
    async fn republish_floor(&self, shutdown: &CancellationToken) {
        let Some((floor, version)) = self.outbox.floor() else {
            return;
        };
        // Orders recorded from here on are tracked one by one.
        let until = OrderId::generate();
        let mut from = floor;
        for _ in 0..PAGES_PER_ROUND {
            let page = match apis::own_pending(&self.db, &self.api_id, from, until, PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "relay could not read this api's unpublished orders");
                    return;
                }
            };
            let full = page.len() == PAGE as usize;
            let next = page.last().map(|o| next_after(o.order_id));
            let (published, failed) = self.publish(page).await;
            if !published.is_empty() {
                tracing::info!(
                    published = published.len(),
                    failed = failed.len(),
                    "relay republished orders this api had lost track of"
                );
            }
            if !failed.is_empty() {
                return;
            }
            match next {
                Some(next) if full => {
                    self.outbox.advance_floor(version, Some(next));
                    from = next;
                }
                _ => {
                    self.outbox.advance_floor(version, None);
                    return;
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
        }
    }

    /// Claims dead apis' unpublished orders and republishes them.
    async fn claim_dead(&self, shutdown: &CancellationToken) {
        let dead = match apis::dead(&self.db, &self.api_id, self.lease).await {
            Ok(dead) => dead,
            Err(e) => {
                tracing::warn!(error = %e, "relay could not list dead apis");
                return;
            }
        };
        for api in dead {
            for _ in 0..PAGES_PER_ROUND {
                let claim = match Claim::open(&self.db, &api, self.lease, PAGE).await {
                    Ok(Some(claim)) => claim,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, dead_api = %api, "relay could not claim a dead api's orders");
                        return;
                    }
                };
                let last = claim.last;
                let (published, failed) = self.publish(claim.orders.clone()).await;
                if !failed.is_empty() {
                    // Rolled back: the orders stay the dead api's, for the next round.
                    drop(claim);
                    return;
                }
                if let Err(e) = claim.finish(&self.api_id).await {
                    tracing::warn!(error = %e, dead_api = %api, "relay republished a dead api's orders but could not take them over; they may be republished again");
                    return;
                }
                if !published.is_empty() {
                    tracing::info!(dead_api = %api, published = published.len(), "relay republished a dead api's unpublished orders");
                }
                if last || shutdown.is_cancelled() {
                    break;
                }
            }
        }
    }

    /// Publishes `orders`; returns the confirmed and the failed ones.
    async fn publish(&self, orders: Vec<OrderMessage>) -> (Vec<OrderMessage>, Vec<OrderMessage>) {
        let (mut published, mut failed) = (Vec::new(), Vec::new());
        if orders.is_empty() {
            return (published, failed);
        }
        for (batch, result) in self.publisher.publish_all(orders).await {
            if result.is_ok() {
                published.extend(batch);
            } else {
                failed.extend(batch);
            }
        }
        self.publisher
            .metrics
            .relay_republished
            .fetch_add(published.len() as u64, Ordering::Relaxed);
        (published, failed)
    }
}

/// Every `interval` until `shutdown`: records that this api is alive, with
/// its watermark. An api cut off from the broker for longer than `lease`
/// keeps its row but stops refreshing it (creating it, already stale, if a
/// claimer retired it), so a live api with a broker publishes what it
/// records meanwhile; once back, it heartbeats again.
async fn heartbeat(
    db: MySqlPool,
    publisher: Publisher,
    outbox: Outbox,
    api_id: String,
    interval: Duration,
    lease: Duration,
    shutdown: CancellationToken,
) {
    let mut cut_off_since: Option<std::time::Instant> = None;
    loop {
        if publisher.is_connected() {
            cut_off_since = None;
        } else {
            cut_off_since.get_or_insert_with(std::time::Instant::now);
        }
        let alive = cut_off_since.is_none_or(|t| t.elapsed() <= lease);
        let beat = if alive {
            apis::heartbeat(&db, &api_id, outbox.watermark()).await
        } else {
            apis::ensure_listed(&db, &api_id, outbox.watermark(), lease).await
        };
        if let Err(e) = beat {
            tracing::warn!(error = %e, "api heartbeat failed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// The smallest id above `id`.
fn next_after(id: OrderId) -> OrderId {
    OrderId::from(uuid::Uuid::from_u128(id.uuid().as_u128().wrapping_add(1)))
}
