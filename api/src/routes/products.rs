//! `/api/products`: create, list, read, change the sale rules.

use super::parse_product_id;
use crate::auth::Admin;
use crate::conditional::{check_if_match, read_response, with_etag};
use crate::envelope::{Envelope, ErrorBody, respond};
use crate::error::ApiError;
use crate::extract::{AppJson, AppPath, AppQuery, Field, IntField};
use crate::pagination::{Bounds, PageQuery};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use shared::db::products::{self, ProductRow, SaleRules};
use shared::domain::{ProductName, Stock};
use shared::error_code::ErrorCode;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_product, list_products))
        .routes(routes!(get_product, update_product))
}

/// The largest `max_per_buyer`.
const MAX_PER_BUYER: i64 = 1_000_000;

/// A new product.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    /// 1 to 200 characters (trimmed), no control characters.
    #[schema(example = "Kaos Polos", min_length = 1, max_length = 200)]
    #[schema(value_type = String)]
    pub name: Field<String>,
    /// Initial `stored_stock`, 0 to 1,000,000,000; 0 when absent.
    #[schema(value_type = Option<i64>, example = 100, minimum = 0, maximum = 1000000000)]
    pub stock: Option<IntField>,
    /// The most units one buyer may hold (ACCEPTED and PAID), 1 to
    /// 1,000,000; no limit when absent. Counted per buyer id, so it needs
    /// buyers' tokens (`BUYER_JWT_*`); anonymous orders are not limited.
    #[schema(value_type = Option<i64>, example = 2, minimum = 1, maximum = 1000000)]
    pub max_per_buyer: Option<IntField>,
    /// RFC 3339: orders before it are rejected `SALE_NOT_STARTED`, at once.
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub sale_starts_at: Option<Field<DateTime<Utc>>>,
    /// RFC 3339, after `sale_starts_at`: orders from it on are rejected `SALE_ENDED`.
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub sale_ends_at: Option<Field<DateTime<Utc>>>,
}

/// A change of a product's sale rules: a field left out stays as it is,
/// `null` removes the rule.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProduct {
    /// The most units one buyer may hold, 1 to 1,000,000; `null`: no limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 1000000, example = 2)]
    pub max_per_buyer: Option<Option<IntField>>,
    /// RFC 3339; `null`: open from the start.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub sale_starts_at: Option<Option<Field<DateTime<Utc>>>>,
    /// RFC 3339; `null`: never closes.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub sale_ends_at: Option<Option<Field<DateTime<Utc>>>>,
}

/// A field that is present, possibly `null`.
fn present<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A product.
#[derive(Debug, Serialize, ToSchema)]
pub struct Product {
    /// Its id.
    #[schema(example = 1, minimum = 1)]
    pub id: u64,
    /// Its name.
    pub name: String,
    /// When it was created.
    #[serde(serialize_with = "shared::time::serialize")]
    pub created_at: DateTime<Utc>,
    /// The most units one buyer may hold; `null`: no limit.
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 1000000, required = true)]
    pub max_per_buyer: Option<u32>,
    /// When the sale opens; `null`: open.
    #[serde(serialize_with = "shared::time::serialize_option")]
    #[schema(required = true)]
    pub sale_starts_at: Option<DateTime<Utc>>,
    /// When it closes; `null`: never.
    #[serde(serialize_with = "shared::time::serialize_option")]
    #[schema(required = true)]
    pub sale_ends_at: Option<DateTime<Utc>>,
}

impl From<ProductRow> for Product {
    fn from(row: ProductRow) -> Self {
        Self {
            id: row.id,
            name: row.name,
            created_at: row.created_at,
            max_per_buyer: row.max_per_buyer,
            sale_starts_at: row.sale_starts_at,
            sale_ends_at: row.sale_ends_at,
        }
    }
}

/// A sale time, checked: anything but an RFC 3339 time is
/// `INVALID_SALE_WINDOW`, like a window that ends before it starts.
fn sale_time(
    value: Option<&Field<DateTime<Utc>>>,
    field: &str,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .map(|f| f.parse(ErrorCode::InvalidSaleWindow, field, "an RFC 3339 time"))
        .transpose()
}

/// `max_per_buyer`, checked: a value of the wrong type gets the same code
/// as one out of range.
fn max_per_buyer(value: Option<&IntField>) -> Result<Option<u32>, ApiError> {
    let must = format!("an integer from 1 to {MAX_PER_BUYER}");
    match value {
        None => Ok(None),
        Some(field) => {
            match field.integer(ErrorCode::InvalidMaxPerBuyer, "max_per_buyer", &must)? {
                n if (1..=MAX_PER_BUYER).contains(&n) => Ok(Some(n as u32)),
                n => Err(ApiError::client(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    ErrorCode::InvalidMaxPerBuyer,
                    format!("max_per_buyer must be {must}, got {n}"),
                )),
            }
        }
    }
}

/// Stored to the microsecond, so compared and shown to the microsecond.
fn micros(at: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    use chrono::SubsecRound;
    at.map(|t| t.trunc_subsecs(6))
}

fn check_window(rules: SaleRules) -> Result<SaleRules, ApiError> {
    let rules = SaleRules {
        sale_starts_at: micros(rules.sale_starts_at),
        sale_ends_at: micros(rules.sale_ends_at),
        ..rules
    };
    if let (Some(start), Some(end)) = (rules.sale_starts_at, rules.sale_ends_at)
        && end <= start
    {
        return Err(ApiError::client(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidSaleWindow,
            format!("sale_ends_at ({end}) must be after sale_starts_at ({start})"),
        ));
    }
    Ok(rules)
}

/// Creates a product and its inventory.
#[utoipa::path(post, path = "/products", tag = "products",
    request_body = CreateProduct,
    params(
        ("Idempotency-Key" = Option<String>, Header, min_length = 16, max_length = 255, pattern = r"^[!-~]+$", description = "16 to 255 visible ASCII characters: resending the same key with the same body returns the same product; with another body, 422. Keys are kept as long as the product: a retry is recognised however late it comes."),
    ),
    responses(
        (status = 401, description = "ADMIN_TOKEN is set and the request lacks `Authorization: Bearer <token>`", body = Envelope<ErrorBody>),
        (status = 201, description = "Created (or created before with this Idempotency-Key and body: `Idempotent-Replayed: true`)", body = Envelope<Product>,
            headers(
                ("Location" = String, description = "/api/products/{id}"),
                ("Idempotent-Replayed" = String, description = "`true` when answered from the product an earlier request with the same key created"),
            )),
        (status = 400, description = "Malformed JSON", body = Envelope<ErrorBody>),
        (status = 413, description = "Body too large", body = Envelope<ErrorBody>),
        (status = 415, description = "Not JSON", body = Envelope<ErrorBody>),
        (status = 422, description = "Invalid name, stock, max_per_buyer or sale window; an invalid Idempotency-Key, or one used with another body", body = Envelope<ErrorBody>),
        (status = 503, description = "Database unavailable", body = Envelope<ErrorBody>),
    ))]
pub async fn create_product(
    _admin: Admin,
    State(state): State<AppState>,
    headers: HeaderMap,
    AppJson(body): AppJson<CreateProduct>,
) -> Result<Response, ApiError> {
    let name = ProductName::parse(
        &body
            .name
            .parse(ErrorCode::InvalidName, "name", "a string")?,
    )?;
    let stock = match &body.stock {
        Some(field) => field.integer(
            ErrorCode::InvalidStock,
            "stock",
            "an integer from 0 to 1000000000",
        )?,
        None => 0,
    };
    let stock = Stock::new(stock)?;
    let rules = check_window(SaleRules {
        max_per_buyer: max_per_buyer(body.max_per_buyer.as_ref())?,
        sale_starts_at: sale_time(body.sale_starts_at.as_ref(), "sale_starts_at")?,
        sale_ends_at: sale_time(body.sale_ends_at.as_ref(), "sale_ends_at")?,
    })?;
    // The request, as the key's hash sees it: the normalized fields.
    let request = serde_json::to_vec(&json!({
        "name": name.as_str(),
        "stock": stock.get(),
        "max_per_buyer": rules.max_per_buyer,
        "sale_starts_at": rules.sale_starts_at,
        "sale_ends_at": rules.sale_ends_at,
    }))
    .expect("json");
    // A sellers' endpoint: keys are the sellers', whatever form or
    // rotation of the admin token they come with.
    let key = crate::idempotency::key(&headers, Some("admin"), &request)?;
    let (row, replayed) =
        match products::create(&state.db, &name, stock, rules, key.as_ref()).await? {
            products::Created::New(row) => (row, false),
            products::Created::Existing(row) => (row, true),
            products::Created::KeyReused => return Err(crate::idempotency::reused()),
        };
    state.remember_product(&row);
    let location = format!("/api/products/{}", row.id);
    let mut response = respond(StatusCode::CREATED, Product::from(row));
    response.headers_mut().insert(
        axum::http::header::LOCATION,
        axum::http::HeaderValue::from_str(&location).expect("digits are a header value"),
    );
    if replayed {
        response.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

/// Changes a product's per-buyer limit and sale window (admin). Orders
/// already decided keep their decisions; the worker applies the new rules
/// from its next transaction.
#[utoipa::path(patch, path = "/products/{id}", tag = "products",
    params(
        ("id" = u64, Path, minimum = 1, description = "Product id"),
        ("If-Match" = Option<String>, Header, description = "The ETag read last: refused with 412 if the product changed since"),
    ),
    request_body = UpdateProduct,
    responses(
        (status = 200, description = "The product as it is now", body = Envelope<Product>,
            headers(("ETag" = String, description = "Its entity tag"))),
        (status = 412, description = "`If-Match` does not name the current version; nothing changed", body = Envelope<ErrorBody>),
        (status = 400, description = "Not a product id, or malformed JSON", body = Envelope<ErrorBody>),
        (status = 401, description = "ADMIN_TOKEN is set and the request lacks `Authorization: Bearer <token>`", body = Envelope<ErrorBody>),
        (status = 404, description = "No such product", body = Envelope<ErrorBody>),
        (status = 413, description = "Body too large", body = Envelope<ErrorBody>),
        (status = 415, description = "Not JSON", body = Envelope<ErrorBody>),
        (status = 422, description = "Invalid max_per_buyer or sale window", body = Envelope<ErrorBody>),
        (status = 503, description = "Database unavailable", body = Envelope<ErrorBody>),
    ))]
pub async fn update_product(
    _admin: Admin,
    State(state): State<AppState>,
    headers: HeaderMap,
    AppPath(id): AppPath<String>,
    AppJson(body): AppJson<UpdateProduct>,
) -> Result<Response, ApiError> {
    let id = parse_product_id(&id)?;
    let starts = body
        .sale_starts_at
        .as_ref()
        .map(|v| sale_time(v.as_ref(), "sale_starts_at"))
        .transpose()?;
    let ends = body
        .sale_ends_at
        .as_ref()
        .map(|v| sale_time(v.as_ref(), "sale_ends_at"))
        .transpose()?;
    let limit = body
        .max_per_buyer
        .as_ref()
        .map(|v| max_per_buyer(v.as_ref()))
        .transpose()?;
    let changed = products::update_rules(&state.db, id, |row| {
        check_if_match(&headers, &Product::from(row.clone()))?;
        let current = row.rules();
        check_window(SaleRules {
            max_per_buyer: limit.unwrap_or(current.max_per_buyer),
            sale_starts_at: starts.unwrap_or(current.sale_starts_at),
            sale_ends_at: ends.unwrap_or(current.sale_ends_at),
        })
    })
    .await?
    .ok_or_else(|| product_not_found(id))??;
    state.remember_product(&changed);
    let product = Product::from(changed);
    Ok(with_etag(respond(StatusCode::OK, &product), &product))
}

/// One page of products.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductPage {
    /// The products on this page, by id.
    pub items: Vec<Product>,
    /// This page's number.
    #[schema(minimum = 1)]
    pub page: u32,
    /// Items per page.
    #[schema(minimum = 1, maximum = 100)]
    pub per_page: u32,
    /// Products in all pages.
    pub total_items: u64,
    /// Number of pages.
    pub total_pages: u64,
}

impl ProductPage {
    /// The page `bounds` asked for, holding `items` out of `total_items`.
    fn new(items: Vec<Product>, bounds: Bounds, total_items: u64) -> Self {
        Self {
            items,
            page: bounds.page,
            per_page: bounds.per_page,
            total_items,
            total_pages: total_items.div_ceil(u64::from(bounds.per_page)),
        }
    }
}

/// Lists products by id, a page at a time.
#[utoipa::path(get, path = "/products", tag = "products",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of products", body = Envelope<ProductPage>,
            headers(
                ("Link" = String, description = "RFC 8288: first, prev, next and last pages"),
                ("Cache-Control" = String, description = "no-cache"),
            )),
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
    let mut response = respond(StatusCode::OK, ProductPage::new(items, bounds, total_items));
    // Products change by sellers' writes and sales: revalidate, like one product.
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-cache"),
    );
    if let Some(link) = crate::pagination::links("/api/products", &[], bounds, total_items) {
        response
            .headers_mut()
            .insert(axum::http::header::LINK, link);
    }
    Ok(response)
}

/// Reads one product.
#[utoipa::path(get, path = "/products/{id}", tag = "products",
    params(
        ("id" = u64, Path, minimum = 1, description = "Product id"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier read: 304 when it is still current"),
    ),
    responses(
        (status = 200, description = "The product", body = Envelope<Product>,
            headers(
                ("ETag" = String, description = "Its entity tag"),
                ("Cache-Control" = String, description = "no-cache"),
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
pub async fn get_product(
    State(state): State<AppState>,
    headers: HeaderMap,
    AppPath(id): AppPath<String>,
) -> Result<Response, ApiError> {
    let id = parse_product_id(&id)?;
    let row = products::get(&state.db, id)
        .await?
        .ok_or_else(|| product_not_found(id))?;
    Ok(read_response(
        &headers,
        StatusCode::OK,
        Product::from(row),
        "no-cache",
    ))
}

/// 404 for product `id`.
pub fn product_not_found(id: shared::domain::ProductId) -> ApiError {
    ApiError::not_found(
        ErrorCode::ProductNotFound,
        format!("product {id} does not exist"),
    )
}
