//! Order events: what flashstock decided and did, told to the rest of the
//! shop.
//!
//! Every transition that commits writes a row to the `order_events`
//! outbox in its own transaction ([`crate::db::events`]), so an event
//! exists exactly when its transition committed. One worker at a time
//! publishes those rows to the events stream (a RabbitMQ stream,
//! `{namespace}.events`) as CloudEvents 1.0 in structured JSON, many to a
//! stream entry (a JSON array, `application/cloudevents-batch+json`), and
//! deletes them once the broker confirmed them: at least once, never an
//! event for a transition that did not commit. An event's `id` is the same
//! every time it is published, so consumers deduplicate by it.
//!
//! Consumers read the stream over AMQP 0.9.1 from an offset, the first
//! entry, the next one, or a time ([`From`]).

use crate::domain::OrderStatus;
use chrono::{DateTime, Utc};
use lapin::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The content type of a stream entry: a JSON array of CloudEvents.
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";
/// Every event type starts with this.
pub const TYPE_PREFIX: &str = "flashstock.";

/// A transition an event tells of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// An order was accepted: units are held for it.
    Accepted,
    /// An order was rejected, with a reason.
    Rejected,
    /// An accepted order was paid.
    Paid,
    /// An order was cancelled (pending or accepted).
    Cancelled,
    /// An accepted order was not paid in time; its units are free again.
    Expired,
    /// A product has nothing left available.
    SoldOut,
    /// A sold-out product has units available again (a cancel, an expiry,
    /// a restock).
    Available,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 7] = [
        Kind::Accepted,
        Kind::Rejected,
        Kind::Paid,
        Kind::Cancelled,
        Kind::Expired,
        Kind::SoldOut,
        Kind::Available,
    ];

    /// Its name in the outbox and in event ids and types.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Accepted => "accepted",
            Kind::Rejected => "rejected",
            Kind::Paid => "paid",
            Kind::Cancelled => "cancelled",
            Kind::Expired => "expired",
            Kind::SoldOut => "sold_out",
            Kind::Available => "available",
        }
    }

    /// The kind named `name` ([`Kind::name`]).
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The CloudEvents `type`: `flashstock.order.accepted`, …,
    /// `flashstock.product.sold_out`, `flashstock.product.available`.
    pub fn event_type(self) -> String {
        let subject = if self.is_order() { "order" } else { "product" };
        format!("{TYPE_PREFIX}{subject}.{}", self.name())
    }

    /// The kind of the CloudEvents type `event_type`.
    pub fn of_type(event_type: &str) -> Option<Kind> {
        let rest = event_type.strip_prefix(TYPE_PREFIX)?;
        let name = rest
            .strip_prefix("order.")
            .or_else(|| rest.strip_prefix("product."))?;
        Kind::parse(name).filter(|k| k.event_type() == event_type)
    }

    /// Whether it is an order's transition (else a product's).
    pub fn is_order(self) -> bool {
        !matches!(self, Kind::SoldOut | Kind::Available)
    }

    /// The status an order has after this transition.
    pub fn status(self) -> Option<OrderStatus> {
        Some(match self {
            Kind::Accepted => OrderStatus::Accepted,
            Kind::Rejected => OrderStatus::Rejected,
            Kind::Paid => OrderStatus::Paid,
            Kind::Cancelled => OrderStatus::Cancelled,
            Kind::Expired => OrderStatus::Expired,
            Kind::SoldOut | Kind::Available => return None,
        })
    }
}

/// One event, as CloudEvents 1.0 structured JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    /// Always `1.0`.
    pub specversion: String,
    /// Stable for the transition: `{order id}.{kind}` for an order's,
    /// `product-{id}.{kind}.{n}` for a product's.
    pub id: String,
    /// `/flashstock/{namespace}`.
    pub source: String,
    /// `flashstock.order.accepted`, … ([`Kind::event_type`]).
    #[serde(rename = "type")]
    pub event_type: String,
    /// The order id (the product id for a product's event).
    pub subject: String,
    /// When the transition happened, by the database clock (RFC 3339, six
    /// fractional digits, UTC).
    pub time: String,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// What a consumer needs without calling back.
    pub data: EventData,
}

/// An event's `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EventData {
    /// An order's transition.
    Order(OrderData),
    /// A product's.
    Product(ProductData),
}

/// The order as it is after the transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderData {
    /// The order.
    pub order_id: Uuid,
    /// Its product.
    pub product_id: u64,
    /// Units it asks for.
    pub total: u32,
    /// The buyer (`sub` of their token); null when anonymous.
    pub buyer_id: Option<String>,
    /// Its status after the transition.
    pub status: OrderStatus,
    /// Why it was rejected; null otherwise.
    pub reason: Option<String>,
    /// When it was recorded.
    pub created_at: String,
    /// When it was decided; null for an order cancelled while pending.
    pub decided_at: Option<String>,
    /// Until when an accepted order holds its units; null for one never
    /// accepted.
    pub expires_at: Option<String>,
}

/// A product's availability after the change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductData {
    /// The product.
    pub product_id: u64,
    /// Units available after the change (0 when sold out).
    pub available_stock: i64,
}

impl CloudEvent {
    /// The kind of transition it tells of, when its type is one of ours.
    pub fn kind(&self) -> Option<Kind> {
        Kind::of_type(&self.event_type)
    }

    /// The order it is about (`None` for a product's event).
    pub fn order(&self) -> Option<&OrderData> {
        match &self.data {
            EventData::Order(o) => Some(o),
            EventData::Product(_) => None,
        }
    }

    /// The product it is about.
    pub fn product_id(&self) -> u64 {
        match &self.data {
            EventData::Order(o) => o.product_id,
            EventData::Product(p) => p.product_id,
        }
    }
}

/// The CloudEvents `source` of a deployment.
pub fn source(namespace: &str) -> String {
    format!("/flashstock/{namespace}")
}

/// A time as events carry it: RFC 3339, UTC, always six fractional digits.
pub fn timestamp(at: DateTime<Utc>) -> String {
    crate::time::rfc3339(at)
}

/// Where a consumer starts reading the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// The oldest entry retention kept.
    First,
    /// The last chunk written (a few recent entries, then new ones).
    Last,
    /// Only entries written from now on.
    Next,
    /// The entry at this offset (or the first kept, if it is gone).
    Offset(u64),
    /// The first entries written at or after this time (to the second).
    Time(DateTime<Utc>),
}

impl From {
    /// Parses `first`, `last`, `next`, an offset, an RFC 3339 time, or a
    /// duration ago (`1h`, `15m`).
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        match value {
            "first" => return Ok(From::First),
            "last" => return Ok(From::Last),
            "next" => return Ok(From::Next),
            _ => {}
        }
        if let Ok(offset) = value.parse::<u64>() {
            return Ok(From::Offset(offset));
        }
        if let Ok(at) = DateTime::parse_from_rfc3339(value) {
            return Ok(From::Time(at.with_timezone(&Utc)));
        }
        if let Ok(ago) = humantime::parse_duration(value) {
            let ago = chrono::Duration::from_std(ago).map_err(|e| e.to_string())?;
            return Ok(From::Time(Utc::now() - ago));
        }
        Err(format!(
            "{value:?}: use first, last, next, an offset, an RFC 3339 time or a duration ago (1h)"
        ))
    }

    /// The `x-stream-offset` argument of a consumer starting here.
    pub fn argument(self) -> AMQPValue {
        match self {
            From::First => AMQPValue::LongString("first".into()),
            From::Last => AMQPValue::LongString("last".into()),
            From::Next => AMQPValue::LongString("next".into()),
            From::Offset(o) => AMQPValue::LongLongInt(o.min(i64::MAX as u64) as i64),
            From::Time(at) => AMQPValue::Timestamp(at.timestamp().max(0) as u64),
        }
    }

    /// The consumer arguments for starting here.
    pub fn consumer_arguments(self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-stream-offset".into(), self.argument());
        args
    }
}

/// Opens a consumer of `stream` on `conn` starting at `from`, with at most
/// `prefetch` entries unacknowledged (a stream consumer must ack).
pub async fn subscribe(
    conn: &lapin::Connection,
    stream: &str,
    from: From,
    prefetch: u16,
    tag: &str,
) -> Result<lapin::Consumer, lapin::Error> {
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(prefetch, lapin::options::BasicQosOptions::default())
        .await?;
    channel
        .basic_consume(
            stream.into(),
            tag.into(),
            lapin::options::BasicConsumeOptions::default(),
            from.consumer_arguments(),
        )
        .await
}

/// The events of one stream entry: a JSON array of CloudEvents, or one
/// CloudEvent.
pub fn parse_entry(body: &[u8]) -> Result<Vec<CloudEvent>, serde_json::Error> {
    match serde_json::from_slice::<Vec<CloudEvent>>(body) {
        Ok(events) => Ok(events),
        Err(e) => serde_json::from_slice::<CloudEvent>(body)
            .map(|one| vec![one])
            .map_err(|_| e),
    }
}

/// The stream offset of a delivered entry, from its `x-stream-offset` header.
pub fn offset_of(properties: &lapin::BasicProperties) -> Option<u64> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get("x-stream-offset")? {
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongUInt(v) => Some(u64::from(*v)),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::Timestamp(v) => Some(*v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_name_and_type() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.name()), Some(kind));
            assert_eq!(Kind::of_type(&kind.event_type()), Some(kind));
        }
        assert_eq!(Kind::Paid.event_type(), "flashstock.order.paid");
        assert_eq!(Kind::SoldOut.event_type(), "flashstock.product.sold_out");
        assert_eq!(Kind::of_type("flashstock.product.paid"), None);
        assert_eq!(Kind::of_type("flashstock.order.sold_out"), None);
    }

    #[test]
    fn a_start_is_a_word_an_offset_a_time_or_a_time_ago() {
        assert_eq!(From::parse("first"), Ok(From::First));
        assert_eq!(From::parse("next"), Ok(From::Next));
        assert_eq!(From::parse("42"), Ok(From::Offset(42)));
        let at = From::parse("2026-12-04T10:00:00Z").unwrap();
        assert_eq!(
            at,
            From::Time("2026-12-04T10:00:00Z".parse::<DateTime<Utc>>().unwrap())
        );
        let From::Time(ago) = From::parse("1h").unwrap() else {
            panic!("a duration is a time ago");
        };
        let off = (Utc::now() - ago).num_seconds();
        assert!((3590..=3610).contains(&off), "{off}");
        assert!(From::parse("yesterday").is_err());
    }

    #[test]
    fn times_always_carry_six_fractional_digits() {
        let at: DateTime<Utc> = "2026-12-04T10:00:00Z".parse().unwrap();
        assert_eq!(timestamp(at), "2026-12-04T10:00:00.000000Z");
    }
}
