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

/// What one message on a partition queue carries: the orders of one
/// recording batch that fall in that partition, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderBatch {
    /// The orders, first come first.
    pub orders: Vec<OrderMessage>,
}

/// Reads a partition message: an [`OrderBatch`], or a single
/// [`OrderMessage`] (as earlier versions and hand-made tools publish).
pub fn parse_orders(bytes: &[u8]) -> Result<Vec<OrderMessage>, serde_json::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Batch(OrderBatch),
        One(OrderMessage),
    }
    Ok(match serde_json::from_slice::<Wire>(bytes)? {
        Wire::Batch(batch) => batch.orders,
        Wire::One(order) => vec![order],
    })
}

/// Decisions a worker committed, announced on the decisions fanout so that
/// api instances can answer requests waiting with `Prefer: wait`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionNotice {
    /// Orders decided in committed transactions (a worker sends every
    /// decision it committed meanwhile in one notice).
    pub decisions: Vec<DecidedOrder>,
    /// Products left with nothing available (a hint: the api then checks
    /// the stock before queueing more orders for them).
    #[serde(default)]
    pub sold_out: Vec<ProductId>,
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
    /// When it was decided (database clock). Absent from the notices of
    /// workers before this field: the api then reads the order instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Until when an accepted order holds its units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_and_single_orders_both_parse() {
        let one = r#"{"order_id":"0190c7a4-5d1e-7bb2-9d1f-3c2a1b0e9f10","product_id":3,"total":2}"#;
        assert_eq!(parse_orders(one.as_bytes()).unwrap().len(), 1);
        let batch = format!(r#"{{"orders":[{one},{one}]}}"#);
        assert_eq!(parse_orders(batch.as_bytes()).unwrap().len(), 2);
        assert!(parse_orders(b"{\"order_id\": 5}").is_err());
        assert!(parse_orders(b"\x00").is_err());
    }
}
