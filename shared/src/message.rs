//! What travels over RabbitMQ.

use crate::domain::{OrderId, OrderStatus, ProductId, Quantity};
use serde::{Deserialize, Serialize};

/// An order to decide, published to its product's partition queue.
///
/// The worker trusts the database row, not this message: the message only
/// says which order to look at, in what arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderMessage {
    /// The order recorded as PENDING.
    pub order_id: OrderId,
    /// Its product, which chose the partition.
    pub product_id: ProductId,
    /// Units asked for.
    pub total: Quantity,
}

/// Decisions a worker committed, announced on the decisions fanout so that
/// api instances can answer requests waiting with `Prefer: wait`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionNotice {
    /// Every order decided in one committed transaction.
    pub decisions: Vec<DecidedOrder>,
}

/// One decided order in a [`DecisionNotice`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecidedOrder {
    /// The order.
    pub order_id: OrderId,
    /// ACCEPTED or REJECTED.
    pub status: OrderStatus,
    /// Why it was rejected, when it was.
    pub reason: Option<String>,
}
