//! `/api/products`: create, list, read.

use super::parse_product_id;
use crate::envelope::{Envelope, ErrorBody, respond};
use crate::error::ApiError;
use crate::extract::{AppJson, AppPath, AppQuery};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::db::products::{self, ProductRow};
use shared::domain::{ProductName, Stock};
use utoipa::{IntoParams, ToSchema};
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

/// Which page of a list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page number, from 1 (default 1).
    #[param(minimum = 1, maximum = 1000000)]
    pub page: Option<u32>,
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub per_page: Option<u32>,
}

/// A page of products.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductPage {
    /// The products on this page, by id.
    pub items: Vec<Product>,
    /// This page's number.
    pub page: u32,
    /// Items per page.
    pub per_page: u32,
    /// Products in all pages.
    pub total_items: u64,
    /// Number of pages.
    pub total_pages: u64,
}

/// Creates a product and its inventory.
#[utoipa::path(post, path = "/products", tag = "products",
    request_body = CreateProduct,
    responses(
        (status = 201, description = "Created", body = Envelope<Product>),
        (status = 400, description = "Malformed JSON", body = Envelope<ErrorBody>),
        (status = 413, description = "Body too large", body = Envelope<ErrorBody>),
        (status = 415, description = "Not JSON", body = Envelope<ErrorBody>),
        (status = 422, description = "Invalid name or stock", body = Envelope<ErrorBody>),
        (status = 503, description = "Database unavailable", body = Envelope<ErrorBody>),
    ))]
pub async fn create_product(
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
        (status = 200, description = "A page of products", body = Envelope<ProductPage>),
        (status = 400, description = "Invalid page or per_page", body = Envelope<ErrorBody>),
        (status = 503, description = "Database unavailable", body = Envelope<ErrorBody>),
    ))]
pub async fn list_products(
    State(state): State<AppState>,
    AppQuery(query): AppQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let (page, per_page) = page_bounds(&query)?;
    let offset = u64::from(page - 1) * u64::from(per_page);
    let (rows, total_items) = products::list(&state.db, per_page, offset).await?;
    Ok(respond(
        StatusCode::OK,
        ProductPage {
            items: rows.into_iter().map(Product::from).collect(),
            page,
            per_page,
            total_items,
            total_pages: total_items.div_ceil(u64::from(per_page)),
        },
    ))
}

/// Checks `page` (from 1) and `per_page` (1 to 100).
pub fn page_bounds(query: &PageQuery) -> Result<(u32, u32), ApiError> {
    let page = query.page.unwrap_or(1);
    let per_page = query.per_page.unwrap_or(20);
    if page == 0 || page > 1_000_000 {
        return Err(ApiError::client(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY",
            "page must be from 1 to 1000000",
        ));
    }
    if !(1..=100).contains(&per_page) {
        return Err(ApiError::client(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY",
            "per_page must be from 1 to 100",
        ));
    }
    Ok((page, per_page))
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
