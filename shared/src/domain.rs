//! Domain types, each built through a fallible constructor so a value that
//! exists is a value that is valid.

use crate::error_code::ErrorCode;
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// Why a value from outside could not become a domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DomainError {
    /// A machine-readable code, such as `INVALID_TOTAL`.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

impl DomainError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The largest stock a product may hold; anything above is a typo, not a warehouse.
pub const MAX_STOCK: i64 = 1_000_000_000;
/// The longest product name, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// A product's identifier: a positive integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProductId(u64);

impl ProductId {
    /// Accepts any positive id that fits the database column.
    pub fn new(id: i64) -> Result<Self, DomainError> {
        if id <= 0 {
            return Err(DomainError::new(
                ErrorCode::InvalidProductId,
                format!("product_id must be a positive integer, got {id}"),
            ));
        }
        Ok(Self(id as u64))
    }

    /// The id as stored in the database.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ProductId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An order's identifier: a UUID (version 7, so ids sort by creation time;
/// within one process they strictly increase).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderId(Uuid);

impl OrderId {
    /// A fresh id for a new order.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// Parses an id from its text form.
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        Uuid::parse_str(text).map(Self).map_err(|_| {
            DomainError::new(
                ErrorCode::InvalidOrderId,
                format!("{text:?} is not an order id (a UUID such as 0190c7a4-5d1e-7bb2-9d1f-3c2a1b0e9f10)"),
            )
        })
    }

    /// The UUID inside.
    pub fn uuid(self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for OrderId {
    fn from(value: Uuid) -> Self {
        Self(value)
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How many units one order asks for: at least one, at most the configured maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Quantity(u32);

impl Quantity {
    /// Accepts `1..=max`.
    pub fn new(total: i64, max: u32) -> Result<Self, DomainError> {
        if total <= 0 || total > i64::from(max) {
            return Err(DomainError::new(
                ErrorCode::InvalidTotal,
                format!("total must be an integer from 1 to {max}, got {total}"),
            ));
        }
        Ok(Self(total as u32))
    }

    /// The number of units.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// A stock level a seller sets: `0..=MAX_STOCK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stock(i64);

impl Stock {
    /// Accepts `0..=MAX_STOCK`.
    pub fn new(stock: i64) -> Result<Self, DomainError> {
        if !(0..=MAX_STOCK).contains(&stock) {
            return Err(DomainError::new(
                ErrorCode::InvalidStock,
                format!("stock must be an integer from 0 to {MAX_STOCK}, got {stock}"),
            ));
        }
        Ok(Self(stock))
    }

    /// The number of units.
    pub fn get(self) -> i64 {
        self.0
    }
}

/// A product's name: trimmed, 1 to 200 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductName(String);

impl ProductName {
    /// Trims `name` and checks it.
    pub fn parse(name: &str) -> Result<Self, DomainError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(DomainError::new(
                ErrorCode::InvalidName,
                "name must not be empty",
            ));
        }
        if name.chars().count() > MAX_NAME_CHARS {
            return Err(DomainError::new(
                ErrorCode::InvalidName,
                format!("name must be at most {MAX_NAME_CHARS} characters"),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(DomainError::new(
                ErrorCode::InvalidName,
                "name must not contain control characters",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where an order is in its life. A status never moves backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Recorded, not yet decided.
    Pending,
    /// Units are reserved for the order.
    Accepted,
    /// Not accepted; `reason` says why.
    Rejected,
    /// Paid: the units left the store.
    Paid,
    /// Cancelled by the buyer; any reservation was released.
    Cancelled,
    /// Not paid in time; the reservation was released.
    Expired,
}

impl OrderStatus {
    /// The text stored in the database and shown in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Accepted => "ACCEPTED",
            Self::Rejected => "REJECTED",
            Self::Paid => "PAID",
            Self::Cancelled => "CANCELLED",
            Self::Expired => "EXPIRED",
        }
    }

    /// Parses the stored text.
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        Ok(match text {
            "PENDING" => Self::Pending,
            "ACCEPTED" => Self::Accepted,
            "REJECTED" => Self::Rejected,
            "PAID" => Self::Paid,
            "CANCELLED" => Self::Cancelled,
            "EXPIRED" => Self::Expired,
            other => {
                return Err(DomainError::new(
                    ErrorCode::InvalidStatus,
                    format!("unknown order status {other:?}"),
                ));
            }
        })
    }

    /// Whether the order has been decided (anything but PENDING).
    pub fn is_decided(self) -> bool {
        self != Self::Pending
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an order was rejected.
/// Why an order was rejected: the closed set of reasons an order can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    /// Fewer units were available than the order asked for.
    OutOfStock,
    /// The buyer would hold more than the product's `max_per_buyer` units.
    BuyerLimit,
    /// The product's sale had not started.
    SaleNotStarted,
    /// The product's sale had ended.
    SaleEnded,
    /// The product vanished between recording and deciding.
    ProductNotFound,
    /// The order's message could not be processed within the delivery limit.
    DeadLettered,
    /// Deciding this order failed in the database for a reason that is not transient.
    DecisionFailed,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 7] = [
        Reason::OutOfStock,
        Reason::BuyerLimit,
        Reason::SaleNotStarted,
        Reason::SaleEnded,
        Reason::ProductNotFound,
        Reason::DeadLettered,
        Reason::DecisionFailed,
    ];

    /// Its text, as stored and answered: the constants of [`reason`], which
    /// every writer uses, are these, so no reason is written that the spec's
    /// enum lacks.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::OutOfStock => "OUT_OF_STOCK",
            Reason::BuyerLimit => "BUYER_LIMIT",
            Reason::SaleNotStarted => "SALE_NOT_STARTED",
            Reason::SaleEnded => "SALE_ENDED",
            Reason::ProductNotFound => "PRODUCT_NOT_FOUND",
            Reason::DeadLettered => "DEAD_LETTERED",
            Reason::DecisionFailed => "DECISION_FAILED",
        }
    }
}

/// The text of each [`Reason`], as the writers use it.
pub mod reason {
    use super::Reason;

    /// Fewer units were available than the order asked for.
    pub const OUT_OF_STOCK: &str = Reason::OutOfStock.as_str();
    /// The product vanished between recording and deciding.
    pub const PRODUCT_NOT_FOUND: &str = Reason::ProductNotFound.as_str();
    /// The order's message could not be processed within the delivery limit.
    pub const DEAD_LETTERED: &str = Reason::DeadLettered.as_str();
    /// Deciding this order failed in the database for a reason that is not
    /// transient, while the orders around it were decided; it holds nothing.
    pub const DECISION_FAILED: &str = Reason::DecisionFailed.as_str();
    /// The buyer would hold more than the product's `max_per_buyer` units.
    pub const BUYER_LIMIT: &str = Reason::BuyerLimit.as_str();
    /// The product's sale had not started (`sale_starts_at`, database clock).
    pub const SALE_NOT_STARTED: &str = Reason::SaleNotStarted.as_str();
    /// The product's sale had ended (`sale_ends_at`, database clock).
    pub const SALE_ENDED: &str = Reason::SaleEnded.as_str();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_serializes_as_its_stored_text() {
        for r in Reason::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }

    #[test]
    fn quantities_outside_the_range_are_refused() {
        assert!(Quantity::new(0, 10).is_err());
        assert!(Quantity::new(-1, 10).is_err());
        assert!(Quantity::new(11, 10).is_err());
        assert_eq!(Quantity::new(10, 10).unwrap().get(), 10);
    }

    #[test]
    fn names_are_trimmed_and_checked() {
        assert_eq!(
            ProductName::parse("  Kaos Polos ").unwrap().as_str(),
            "Kaos Polos"
        );
        assert!(ProductName::parse("   ").is_err());
        assert!(ProductName::parse("a\u{0}b").is_err());
        assert!(ProductName::parse(&"x".repeat(201)).is_err());
        assert!(ProductName::parse(&"é".repeat(200)).is_ok());
    }

    #[test]
    fn statuses_round_trip() {
        for s in [
            OrderStatus::Pending,
            OrderStatus::Accepted,
            OrderStatus::Rejected,
            OrderStatus::Paid,
            OrderStatus::Cancelled,
            OrderStatus::Expired,
        ] {
            assert_eq!(OrderStatus::parse(s.as_str()).unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn stock_is_bounded() {
        assert!(Stock::new(-1).is_err());
        assert!(Stock::new(MAX_STOCK + 1).is_err());
        assert_eq!(Stock::new(100).unwrap().get(), 100);
    }
}
