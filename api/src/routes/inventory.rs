//! `/api/products/{id}/inventory`: read and set a product's stock.

use super::parse_product_id;
use super::products::product_not_found;
use crate::auth::Admin;
use crate::conditional::{check_if_match, read_response, with_etag};
use crate::envelope::{Envelope, ErrorBody, respond};
use crate::error::ApiError;
use crate::extract::{AppJson, AppPath, IntField};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use shared::db::inventory::{self, InventoryRow, SetStock};
use shared::domain::Stock;
use shared::error_code::ErrorCode;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_inventory, put_inventory))
}

/// A product's stock.
#[derive(Debug, Serialize, ToSchema)]
pub struct Inventory {
    /// The product.
    #[schema(example = 1)]
    pub product_id: u64,
    /// Its name.
    pub product_name: String,
    /// Units the seller holds.
    #[schema(example = 100)]
    pub stored_stock: i64,
    /// Units held for accepted, unpaid orders.
    #[schema(example = 12)]
    pub reserved_stock: i64,
    /// `stored_stock - reserved_stock`.
    #[schema(example = 88)]
    pub available_stock: i64,
}

impl From<InventoryRow> for Inventory {
    fn from(row: InventoryRow) -> Self {
        Self {
            available_stock: row.available_stock(),
            product_id: row.product_id,
            product_name: row.product_name,
            stored_stock: row.stored_stock,
            reserved_stock: row.reserved_stock,
        }
    }
}

/// The new stock level.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetInventory {
    /// The new `stored_stock`, 0 to 1,000,000,000, not below `reserved_stock`.
    #[schema(value_type = i64, example = 100, minimum = 0, maximum = 1000000000)]
    pub stock: IntField,
}

/// Reads a product's stock.
#[utoipa::path(get, path = "/products/{id}/inventory", tag = "inventory",
    params(
        ("id" = u64, Path, minimum = 1, description = "Product id"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier read: 304 when it is still current"),
    ),
    responses(
        (status = 200, description = "The inventory", body = Envelope<Inventory>,
            headers(
                ("ETag" = String, description = "Its entity tag"),
                ("Cache-Control" = String, description = "no-cache: revalidate, stock moves with every decision"),
            )),
        (status = 304, description = "Not modified: If-None-Match names the current ETag",
            headers(
                ("ETag" = String, description = "Its entity tag"),
                ("Cache-Control" = String, description = "no-cache"),
            )),
        (status = 400, description = "Not a product id", body = Envelope<ErrorBody>),
        (status = 404, description = "No such product", body = Envelope<ErrorBody>),
        (status = 503, description = "Database unavailable", body = Envelope<ErrorBody>),
    ))]
pub async fn get_inventory(
    State(state): State<AppState>,
    headers: HeaderMap,
    AppPath(id): AppPath<String>,
) -> Result<Response, ApiError> {
    let id = parse_product_id(&id)?;
    let row = inventory::get(&state.db, id)
        .await?
        .ok_or_else(|| product_not_found(id))?;
    // Stock moves with every decision: revalidate each time.
    Ok(read_response(
        &headers,
        StatusCode::OK,
        Inventory::from(row),
        "no-cache",
    ))
}

/// Sets `stored_stock` (idempotent). Refused with 409 when below `reserved_stock`.
#[utoipa::path(put, path = "/products/{id}/inventory", tag = "inventory",
    params(
        ("id" = u64, Path, minimum = 1, description = "Product id"),
        ("If-Match" = Option<String>, Header, description = "The ETag read last: refused with 412 if the inventory changed since"),
    ),
    request_body = SetInventory,
    responses(
        (status = 401, description = "ADMIN_TOKEN is set and the request lacks `Authorization: Bearer <token>`", body = Envelope<ErrorBody>),
        (status = 200, description = "The inventory after the change", body = Envelope<Inventory>,
            headers(("ETag" = String, description = "Its entity tag"))),
        (status = 412, description = "`If-Match` does not name the current version: someone changed it (a sale, a payment) since it was read; nothing changed", body = Envelope<ErrorBody>),
        (status = 400, description = "Not a product id, or malformed JSON", body = Envelope<ErrorBody>),
        (status = 404, description = "No such product", body = Envelope<ErrorBody>),
        (status = 409, description = "Below the reserved stock; nothing changed", body = Envelope<ErrorBody>),
        (status = 413, description = "Body too large", body = Envelope<ErrorBody>),
        (status = 415, description = "Not JSON", body = Envelope<ErrorBody>),
        (status = 422, description = "Invalid stock", body = Envelope<ErrorBody>),
        (status = 503, description = "Database unavailable", body = Envelope<ErrorBody>),
    ))]
pub async fn put_inventory(
    _admin: Admin,
    State(state): State<AppState>,
    headers: HeaderMap,
    AppPath(id): AppPath<String>,
    AppJson(body): AppJson<SetInventory>,
) -> Result<Response, ApiError> {
    let id = parse_product_id(&id)?;
    let stock = Stock::new(body.stock.integer(
        ErrorCode::InvalidStock,
        "stock",
        "an integer from 0 to 1000000000",
    )?)?;
    let fresh =
        |row: &InventoryRow| check_if_match(&headers, &Inventory::from(row.clone())).is_ok();
    match inventory::set_stock(&state.db, id, stock, fresh, state.config.order_events).await? {
        SetStock::Done(row) => {
            let inventory = Inventory::from(row);
            Ok(with_etag(respond(StatusCode::OK, &inventory), &inventory))
        }
        SetStock::Stale(row) => Err(check_if_match(&headers, &Inventory::from(row))
            .expect_err("the precondition refused this row")),
        SetStock::NotFound => Err(product_not_found(id)),
        SetStock::BelowReserved(row) => Err(ApiError::conflict(
            ErrorCode::StockBelowReserved,
            format!(
                "stock {} is below the {} units reserved for accepted orders",
                stock.get(),
                row.reserved_stock
            ),
        )),
    }
}
