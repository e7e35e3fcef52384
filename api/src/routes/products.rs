//! `/api/products`: create, list, read.

use super::parse_product_id;
use crate::auth::Admin;
use crate::envelope::{Envelope, ErrorBody, respond};
use crate::error::ApiError;
use crate::extract::{AppJson, AppPath, AppQuery};
use crate::pagination::{Page, PageQuery};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::db::products::{self, ProductRow};
use shared::domain::{ProductName, Stock};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_product, list_products))
        .routes(routes!(get_product))
}

/// A new product.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    /// 1 to 200 characters (trimmed), no control characters.
    #[schema(example = "Kaos Polos", min_length = 1, max_length = 200)]
    pub name: String,
    /// Initial `stored_stock`, 0 to 1,000,000,000; 0 when absent.
    #[schema(example = 100, minimum = 0, maximum = 1000000000)]
    pub stock: Option<i64>,
}

/// A product.
#[derive(Debug, Serialize, ToSchema)]
pub struct Product {
    /// Its id.
    #[schema(example = 1)]
    pub id: u64,
    /// Its name.
    pub name: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

impl From<ProductRow> for Product {
    fn from(row: ProductRow) -> Self {
        Self {
            id: row.id,
            name: row.name,
            created_at: row.created_at,
        }
    }
}

/// Creates a product and its inventory.
#[utoipa::path(post, path = "/products", tag = "products",
    request_body = CreateProduct,
    responses(
        (status = 401, description = "ADMIN_TOKEN is set and the request lacks `Authorization: Bearer <token>`", body = Envelope<ErrorBody>),
        (status = 201, description = "Created", body = Envelope<Product>),
        (status = 400, description = "Malformed JSON", body = Envelope<ErrorBody>),
        (status = 413, description = "Body too large", body = Envelope<ErrorBody>),
        (status = 415, description = "Not JSON", body = Envelope<ErrorBody>),
        (status = 422, description = "Invalid name or stock", body = Envelope<ErrorBody>),
        (status = 503, description = "Database unavailable", body = Envelope<ErrorBody>),
    ))]
pub async fn create_product(
    _admin: Admin,
    State(state): State<AppState>,
    AppJson(body): AppJson<CreateProduct>,
) -> Result<Response, ApiError> {
    let name = ProductName::parse(&body.name)?;
    let stock = Stock::new(body.stock.unwrap_or(0))?;
    let row = products::create(&state.db, &name, stock).await?;
    Ok(respond(StatusCode::CREATED, Product::from(row)))
}

/// Lists products by id, a page at a time.
#[utoipa::path(get, path = "/products", tag = "products",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of products", body = Envelope<Page<Product>>),
        (status = 400, description = "Invalid page or per_page", body = Envelope<ErrorBody>),
        (status = 503, description = "Database unavailable", body = Envelope<ErrorBody>),
    ))]
pub async fn list_products(
    State(state): State<AppState>,
    AppQuery(query): AppQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let bounds = query.bounds()?;
    let (rows, total_items) = products::list(&state.db, bounds.per_page, bounds.offset()).await?;
    let items = rows.into_iter().map(Product::from).collect();
    Ok(respond(
        StatusCode::OK,
        Page::new(items, bounds, total_items),
    ))
}

/// Reads one product.
#[utoipa::path(get, path = "/products/{id}", tag = "products",
    params(("id" = u64, Path, description = "Product id")),
    responses(
        (status = 200, description = "The product", body = Envelope<Product>),
        (status = 400, description = "Not a product id", body = Envelope<ErrorBody>),
        (status = 404, description = "No such product", body = Envelope<ErrorBody>),
        (status = 503, description = "Database unavailable", body = Envelope<ErrorBody>),
    ))]
pub async fn get_product(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<Response, ApiError> {
    let id = parse_product_id(&id)?;
    let row = products::get(&state.db, id)
        .await?
        .ok_or_else(|| product_not_found(id))?;
    Ok(respond(StatusCode::OK, Product::from(row)))
}

/// 404 for product `id`.
pub fn product_not_found(id: shared::domain::ProductId) -> ApiError {
    ApiError::not_found("PRODUCT_NOT_FOUND", format!("product {id} does not exist"))
}
