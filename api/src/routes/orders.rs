//! `/api/orders`: submit an order, read it.

use super::products::product_not_found;
use crate::envelope::{Envelope, ErrorBody, respond};
use crate::error::ApiError;
use crate::extract::{AppJson, AppPath};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::db::{self, orders::OrderRow};
use shared::domain::{OrderId, OrderStatus, ProductId, Quantity};
use shared::message::OrderMessage;
use std::time::Duration;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_order))
        .routes(routes!(get_order))
}

/// A new order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    /// The product to buy.
    #[schema(example = 1, minimum = 1)]
    pub product_id: i64,
    /// Units, from 1 to `MAX_ORDER_TOTAL` (default 1000).
    #[schema(example = 1, minimum = 1)]
    pub total: i64,
}

/// An order.
#[derive(Debug, Serialize, ToSchema)]
pub struct Order {
    /// Its id (a UUID).
    pub id: uuid::Uuid,
    /// The product.
    #[schema(example = 1)]
    pub product_id: u64,
    /// Units.
    #[schema(example = 1)]
    pub total: u32,
    /// Where it is in its life.
    pub status: OrderStatus,
    /// Why it was rejected: `OUT_OF_STOCK`, `PRODUCT_NOT_FOUND`, `DEAD_LETTERED`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
    /// When it was decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<DateTime<Utc>>,
    /// Until when an accepted order holds its units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl From<OrderRow> for Order {
    fn from(row: OrderRow) -> Self {
        Self {
            status: row.status(),
            id: row.id,
            product_id: row.product_id,
            total: row.total,
            reason: row.reason,
            created_at: row.created_at,
            decided_at: row.decided_at,
            expires_at: row.expires_at,
        }
    }
}

/// `data` of a 400 from `POST /api/orders`: the rejected order, or an error.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum OrderOrError {
    /// The order, rejected (with `Prefer: wait`).
    Order(Order),
    /// Malformed JSON.
    Error(ErrorBody),
}

/// Submits an order. It is recorded and queued; the answer is 202 with a
/// `Location` to poll. With `Prefer: wait=N` the api waits up to N seconds
/// for the decision: 201 when accepted, 400 when rejected, 202 if still pending.
#[utoipa::path(post, path = "/orders", tag = "orders",
    request_body = CreateOrder,
    params(("Prefer" = Option<String>, Header, description = "`wait=N`: wait up to N seconds (capped by MAX_WAIT) for the decision")),
    responses(
        (status = 201, description = "Decided and accepted (with `Prefer: wait`)", body = Envelope<Order>),
        (status = 202, description = "Recorded, not yet decided; poll `Location`", body = Envelope<Order>,
            headers(("Location" = String, description = "/api/orders/{id}"))),
        (status = 400, description = "Decided and rejected (with `Prefer: wait`; `data` is the order with its reason), or malformed JSON (`data` is an error)", body = Envelope<OrderOrError>),
        (status = 404, description = "No such product", body = Envelope<ErrorBody>),
        (status = 413, description = "Body too large", body = Envelope<ErrorBody>),
        (status = 415, description = "Not JSON", body = Envelope<ErrorBody>),
        (status = 422, description = "Invalid product_id or total", body = Envelope<ErrorBody>),
        (status = 503, description = "Database unavailable: the order was not recorded", body = Envelope<ErrorBody>,
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ))]
pub async fn create_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    AppJson(body): AppJson<CreateOrder>,
) -> Result<Response, ApiError> {
    let product = ProductId::new(body.product_id)?;
    let total = Quantity::new(body.total, state.config.max_order_total)?;
    let wait = preferred_wait(&headers).map(|w| w.min(state.config.max_wait));
    ensure_product_exists(&state, product).await?;

    let id = OrderId::generate();
    let row = db::orders::insert(&state.db, id, product, total)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => product_not_found(product),
            _ => e.into(),
        })?;

    // Register before publishing so a fast decision cannot slip past.
    let waiting = wait.map(|_| state.waiters.register(id));
    let message = OrderMessage {
        order_id: id,
        product_id: product,
        total,
    };
    if let Err(e) = state.publisher.publish(&message).await {
        // Recorded: the relay publishes it once the broker is back.
        tracing::warn!(order_id = %id, product_id = %product, error = %e, "order recorded but not yet published");
    }

    let mut order = Order::from(row);
    if let (Some(waiting), Some(wait)) = (waiting, wait) {
        // Whether the notice came or the wait ran out, the row is the truth
        // (a notice can be lost while the broker reconnects).
        let _ = waiting.decision(wait).await;
        if let Some(row) = db::orders::fetch(&state.db, id).await? {
            order = Order::from(row);
        }
    }
    let status = match order.status {
        OrderStatus::Pending => StatusCode::ACCEPTED,
        OrderStatus::Rejected => StatusCode::BAD_REQUEST,
        _ => StatusCode::CREATED,
    };
    let mut response = respond(status, order);
    let location =
        HeaderValue::from_str(&format!("/api/orders/{id}")).expect("a uuid is a header value");
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

/// The `wait` preference of RFC 7240 (`Prefer: wait=N`, N in seconds), if
/// present and well formed; anything else is ignored, as the RFC asks.
fn preferred_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|pref| {
            let (name, value) = pref.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            let secs: u64 = value.trim().trim_matches('"').parse().ok()?;
            Some(Duration::from_secs(secs))
        })
        .next()
}

async fn ensure_product_exists(state: &AppState, product: ProductId) -> Result<(), ApiError> {
    if state
        .known_products
        .read()
        .expect("known products lock")
        .contains(&product)
    {
        return Ok(());
    }
    if !db::products::exists(&state.db, product).await? {
        return Err(product_not_found(product));
    }
    state
        .known_products
        .write()
        .expect("known products lock")
        .insert(product);
    Ok(())
}

/// Reads an order: its status, reason and timestamps.
#[utoipa::path(get, path = "/orders/{id}", tag = "orders",
    params(("id" = uuid::Uuid, Path, description = "Order id (UUID)")),
    responses(
        (status = 200, description = "The order", body = Envelope<Order>),
        (status = 400, description = "Not an order id", body = Envelope<ErrorBody>),
        (status = 404, description = "No such order", body = Envelope<ErrorBody>),
        (status = 503, description = "Database unavailable", body = Envelope<ErrorBody>),
    ))]
pub async fn get_order(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<Response, ApiError> {
    let id = OrderId::parse(&id)
        .map_err(|e| ApiError::client(StatusCode::BAD_REQUEST, e.code, e.message))?;
    let row = db::orders::fetch(&state.db, id).await?.ok_or_else(|| {
        ApiError::not_found("ORDER_NOT_FOUND", format!("order {id} does not exist"))
    })?;
    Ok(respond(StatusCode::OK, Order::from(row)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefer(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("prefer", HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn wait_preference_is_read_per_rfc_7240() {
        assert_eq!(
            preferred_wait(&prefer("wait=5")),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            preferred_wait(&prefer("respond-async, wait=10")),
            Some(Duration::from_secs(10))
        );
        assert_eq!(preferred_wait(&prefer("wait=soon")), None);
        assert_eq!(preferred_wait(&prefer("return=minimal")), None);
        assert_eq!(preferred_wait(&HeaderMap::new()), None);
    }
}
