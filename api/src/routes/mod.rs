//! One module per resource, each owning its routes; this only merges them.

pub mod admin;
pub mod health;
pub mod inventory;
pub mod orders;
pub mod products;

use crate::error::ApiError;
use crate::state::AppState;
use axum::http::StatusCode;
use shared::domain::ProductId;
use shared::error_code::ErrorCode;
use utoipa_axum::router::OpenApiRouter;

/// Every route, with its OpenAPI description.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .nest(
            "/api",
            OpenApiRouter::new()
                .merge(products::router())
                .merge(inventory::router())
                .merge(orders::router())
                .merge(admin::router()),
        )
        .merge(health::router())
}

/// Parses a product id from a path segment: 400 unless it is a positive integer.
pub fn parse_product_id(text: &str) -> Result<ProductId, ApiError> {
    text.parse::<i64>()
        .ok()
        .and_then(|n| ProductId::new(n).ok())
        .ok_or_else(|| {
            ApiError::client(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidProductId,
                format!("{text:?} is not a product id (a positive integer)"),
            )
        })
}
