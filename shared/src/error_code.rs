//! The machine-readable codes of error answers (`data.error`): one enum,
//! so the code names the same thing wherever it is used and the spec lists
//! exactly these.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! error_codes {
    ($( $(#[doc = $doc:expr])* $variant:ident = $text:literal, )*) => {
        /// A machine-readable error code, as `data.error` carries it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum ErrorCode {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as sent.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $text,)*
                }
            }
        }
    };
}

error_codes! {
    /// The body is not JSON.
    MalformedJson = "MALFORMED_JSON",
    /// The body is JSON but not the expected object (a field missing, unknown or of the wrong type).
    InvalidBody = "INVALID_BODY",
    /// The body is not `application/json`.
    UnsupportedMediaType = "UNSUPPORTED_MEDIA_TYPE",
    /// The body is larger than the api takes.
    PayloadTooLarge = "PAYLOAD_TOO_LARGE",
    /// A path parameter is not what the route expects.
    InvalidId = "INVALID_ID",
    /// A query parameter is malformed or out of range.
    InvalidQuery = "INVALID_QUERY",
    /// `product_id` (or a product id in a path) is not a positive integer.
    InvalidProductId = "INVALID_PRODUCT_ID",
    /// An order id is not a UUID.
    InvalidOrderId = "INVALID_ORDER_ID",
    /// `total` is not an integer from 1 to `MAX_ORDER_TOTAL`.
    InvalidTotal = "INVALID_TOTAL",
    /// `stock` is not an integer from 0 to 1,000,000,000.
    InvalidStock = "INVALID_STOCK",
    /// A product name is empty, too long or has control characters.
    InvalidName = "INVALID_NAME",
    /// A status filter names no order status.
    InvalidStatus = "INVALID_STATUS",
    /// `max_per_buyer` is not an integer from 1 to 1,000,000.
    InvalidMaxPerBuyer = "INVALID_MAX_PER_BUYER",
    /// The sale ends before it starts.
    InvalidSaleWindow = "INVALID_SALE_WINDOW",
    /// `Idempotency-Key` is not 16 to 255 visible ASCII characters, or was sent twice.
    InvalidIdempotencyKey = "INVALID_IDEMPOTENCY_KEY",
    /// `Idempotency-Key` was used before with another request.
    IdempotencyKeyReused = "IDEMPOTENCY_KEY_REUSED",
    /// The new stock is below the units reserved.
    StockBelowReserved = "STOCK_BELOW_RESERVED",
    /// No such product.
    ProductNotFound = "PRODUCT_NOT_FOUND",
    /// No such order (or not the caller's, or not its canonical id).
    OrderNotFound = "ORDER_NOT_FOUND",
    /// No such path.
    NotFound = "NOT_FOUND",
    /// The path does not take this method.
    MethodNotAllowed = "METHOD_NOT_ALLOWED",
    /// The order's status does not allow this transition.
    InvalidTransition = "INVALID_TRANSITION",
    /// The order's reservation expired.
    OrderExpired = "ORDER_EXPIRED",
    /// `If-Match` names a version that is no longer current.
    PreconditionFailed = "PRECONDITION_FAILED",
    /// Credentials are missing or wrong.
    Unauthorized = "UNAUTHORIZED",
    /// The credentials do not allow this.
    Forbidden = "FORBIDDEN",
    /// The request took longer than `REQUEST_TIMEOUT`.
    RequestTimeout = "REQUEST_TIMEOUT",
    /// Past capacity: nothing was recorded; retry after `Retry-After`.
    Overloaded = "OVERLOADED",
    /// The database or the broker is unavailable; retry after `Retry-After`.
    ServiceUnavailable = "SERVICE_UNAVAILABLE",
    /// An unexpected failure (logged; nothing is leaked).
    Internal = "INTERNAL",
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_text_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
            assert!(seen.insert(code.as_str()), "{code} twice");
        }
        assert_eq!(ErrorCode::InvalidTotal, "INVALID_TOTAL");
    }
}
