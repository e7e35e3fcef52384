//! `/api/orders`: submit an order, read it.

use super::products::product_not_found;
use crate::admission::Ticket;
use crate::auth::Caller;
use crate::envelope::{Envelope, ErrorBody, respond};
use crate::error::ApiError;
use crate::extract::AppQuery;
use crate::extract::{AppJson, AppPath, IntField};
use crate::metrics::Metrics;
use crate::pagination::PageQuery;
use crate::recorder::{Claimed, Recorded, Submission};
use crate::routes::parse_product_id;
use crate::state::AppState;
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::db::orders::{OrderFilter, Transition};
use shared::db::{self, DbError, orders::OrderRow};
use shared::domain::{OrderId, OrderStatus, ProductId, Quantity};
use shared::error_code::ErrorCode;
use shared::partition::partition_of;
use std::time::Duration;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_order, list_orders))
        .routes(routes!(get_order))
        .routes(routes!(pay_order))
        .routes(routes!(cancel_order))
        .routes(routes!(get_order_summary))
}

/// A new order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    /// The product to buy.
    #[schema(value_type = i64, example = 1, minimum = 1)]
    pub product_id: IntField,
    /// Units, from 1 to `MAX_ORDER_TOTAL` (default 1000).
    #[schema(value_type = i64, example = 1, minimum = 1)]
    pub total: IntField,
}

/// An order.
#[derive(Debug, Serialize, ToSchema)]
pub struct Order {
    /// Its id (a UUID).
    pub id: uuid::Uuid,
    /// The product.
    #[schema(example = 1, minimum = 1)]
    pub product_id: u64,
    /// Units, from 1 to `MAX_ORDER_TOTAL`.
    #[schema(example = 1, value_type = i64, format = Int64, minimum = 1)]
    pub total: u32,
    /// Where it is in its life.
    pub status: OrderStatus,
    /// Why it was rejected; only on a REJECTED order.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<shared::domain::Reason>, nullable = false)]
    pub reason: Option<String>,
    /// When it was recorded.
    #[serde(serialize_with = "shared::time::serialize")]
    pub created_at: DateTime<Utc>,
    /// When it was decided; absent while PENDING, and on an order
    /// cancelled while PENDING.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "shared::time::serialize_option"
    )]
    #[schema(nullable = false)]
    pub decided_at: Option<DateTime<Utc>>,
    /// Until when an accepted order holds its units; only on orders that
    /// were accepted (ACCEPTED, PAID, EXPIRED, and CANCELLED after acceptance).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "shared::time::serialize_option"
    )]
    #[schema(nullable = false)]
    pub expires_at: Option<DateTime<Utc>>,
    /// The buyer (the `sub` of their token); absent while buyers are anonymous.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub buyer_id: Option<String>,
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
            buyer_id: row.buyer_id,
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
    params(
        ("Prefer" = Option<String>, Header, pattern = r"^wait=\d+$", description = "`wait=N`: wait up to N seconds (capped by MAX_WAIT) for the decision"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 16, max_length = 255, pattern = r"^[!-~]+$", description = "16 to 255 visible ASCII characters (a random UUID is ideal): resending the same key with the same body returns the same order; with another body, 422. Keys are kept as long as the order (flashstock deletes no order it answered 2xx for), so a retry is recognised however late it comes."),
    ),
    responses(
        (status = 201, description = "Decided and accepted (with `Prefer: wait`)", body = Envelope<Order>,
            headers(
                ("Location" = String, description = "/api/orders/{id}"),
                ("Preference-Applied" = String, description = "`wait=N`: the wait was honoured (RFC 7240)"),
                ("Idempotent-Replayed" = String, description = "`true` when answered from an earlier order with the same Idempotency-Key"),
                ("Cache-Control" = String, description = "no-store"),
            )),
        (status = 202, description = "Recorded; poll `Location` (after `Retry-After` seconds while PENDING). Usually PENDING; already REJECTED when the product was sold out or its sale had not started at submission; CANCELLED when it was cancelled while the request waited", body = Envelope<Order>,
            headers(
                ("Location" = String, description = "/api/orders/{id}"),
                ("Retry-After" = String, description = "Seconds until polling is worth it"),
                ("Preference-Applied" = String, description = "`wait=N`: the wait was honoured and ran out (RFC 7240)"),
                ("Idempotent-Replayed" = String, description = "`true` when answered from an earlier order with the same Idempotency-Key"),
                ("Cache-Control" = String, description = "no-store"),
            )),
        (status = 400, description = "Decided and rejected (with `Prefer: wait`; `data` is the order with its reason), or malformed JSON (`data` is an error)", body = Envelope<OrderOrError>,
            headers(
                ("Location" = String, description = "/api/orders/{id}, when `data` is the rejected order"),
                ("Preference-Applied" = String, description = "`wait=N`: the wait was honoured (RFC 7240)"),
                ("Idempotent-Replayed" = String, description = "`true` when answered from an earlier order with the same Idempotency-Key"),
                ("Cache-Control" = String, description = "no-store, when `data` is the rejected order"),
            )),
        (status = 404, description = "No such product", body = Envelope<ErrorBody>),
        (status = 413, description = "Body too large", body = Envelope<ErrorBody>),
        (status = 401, description = "A buyer key is configured and the request has no valid buyer's token (`WWW-Authenticate: Bearer`)", body = Envelope<ErrorBody>,
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 403, description = "A service token (admin, payment): orders are placed with a buyer's token", body = Envelope<ErrorBody>),
        (status = 415, description = "Not JSON", body = Envelope<ErrorBody>),
        (status = 422, description = "Invalid product_id or total, invalid Idempotency-Key, or a key reused with another body", body = Envelope<ErrorBody>),
        (status = 503, description = "`OVERLOADED`: more orders are waiting than can be decided within ADMISSION_MAX_DELAY (or the broker refused more); `SERVICE_UNAVAILABLE`: the database is down. Either way the order was not recorded, except in one case the message says: the connection was lost under the commit and no primary answered for 20 s, so whether it was recorded is not known yet (a keyed retry settles it; the message names the order to GET)", body = Envelope<ErrorBody>,
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ))]
pub async fn create_order(
    State(state): State<AppState>,
    caller: Caller,
    claimed: Option<Extension<Claimed>>,
    headers: HeaderMap,
    AppJson(body): AppJson<CreateOrder>,
) -> Result<Response, ApiError> {
    let buyer = caller.placing_buyer(&state)?;
    let product = ProductId::new(body.product_id.integer(
        ErrorCode::InvalidProductId,
        "product_id",
        "a positive integer",
    )?)?;
    let max = state.config.max_order_total;
    let total = Quantity::new(
        body.total.integer(
            ErrorCode::InvalidTotal,
            "total",
            &format!("an integer from 1 to {max}"),
        )?,
        max,
    )?;
    // A request waits only if a waiting slot is free; otherwise it is
    // answered at once, as without the preference.
    let slot = waiting_slot(&state, &headers);
    let wait = slot.as_ref().map(|(w, _)| *w);
    let request = format!("{}:{}", product.get(), total.get());
    let scope = buyer.as_ref().map(|b| format!("buyer:{b}"));
    let key = crate::idempotency::key(&headers, scope.as_deref(), request.as_bytes())?;
    let sale_start = product_sale_start(&state, product).await?;
    // Checked while recording when the start may lie ahead (by this api's
    // clock, with room for skew); the database clock decides.
    let opening = sale_start.is_some_and(|start| start > Utc::now() - CLOCK_SKEW);

    let new_id = state.outbox.new_id();
    let order_id = new_id.get();
    let mut waiting = None;
    // Kept for a shed below: the key goes with the submission.
    let retried = key.clone();
    let (recorded, ticket) = match admit(&state, product, order_id) {
        Err(shed) => {
            drop(new_id);
            let earlier = unless_recorded(&state, retried.as_ref(), shed).await?;
            (Ok(Recorded::from(earlier)), None)
        }
        Ok(ticket) => {
            // Register before publishing so a fast decision cannot slip past.
            waiting = wait.map(|_| state.waiters.register(order_id));
            let recorded = state
                .recorder
                .record(Submission {
                    id: new_id,
                    product,
                    total,
                    buyer,
                    opening,
                    key,
                    claimed: claimed.map(|Extension(c)| c).unwrap_or_default(),
                })
                .await;
            (recorded, Some(ticket))
        }
    };
    let recorded = match recorded {
        Ok(recorded) => recorded,
        // The connection was lost under the commit: whether the order is
        // recorded, a primary tells once one answers (a failover). Recorded,
        // the relay publishes it, and the answer says so; not recorded, the
        // 503 is the truth.
        Err(e) if e.is_uncertain() => {
            let settled = crate::settle::until_answered(|| async {
                Ok(db::orders::fetch_settled(&state.db, order_id).await?)
            })
            .await;
            match settled {
                Ok(Some(row)) => Recorded::New(row),
                Ok(None) => {
                    tracing::warn!(error = %e, order_id = %order_id, "an order's commit was cut and lost");
                    return Err(ApiError::Unavailable(
                        "the order was not recorded: the database connection was lost while it committed, \
                         and the primary does not have it; retry"
                            .into(),
                    ));
                }
                Err(_) => return Err(crate::settle::unknown("the order", order_id)),
            }
        }
        // The failure may have come after the commit: then the order is
        // recorded (and the relay publishes it), and the answer says so.
        Err(e) => match db::orders::fetch(&state.db, order_id).await {
            Ok(Some(row)) => Recorded::New(row),
            _ => return Err(order_error(e, product)),
        },
    };
    let metrics = &state.publisher.metrics;
    let (row, replayed) = match recorded {
        Recorded::New(row) => (row, false),
        Recorded::Existing(row) => (row, true),
        Recorded::KeyReused => return Err(crate::idempotency::reused()),
        Recorded::Shed => {
            let shed = queue_full(&state);
            match unless_recorded(&state, retried.as_ref(), shed).await? {
                db::orders::Recorded::Existing(row) => (row, true),
                _ => return Err(crate::idempotency::reused()),
            }
        }
    };
    let id = OrderId::from(row.id);
    let waiting = match waiting {
        _ if wait.is_none() => None,
        // Decided already (sold out, or a replay of a decided order): nothing to wait for.
        _ if row.status() != OrderStatus::Pending => None,
        _ if replayed => Some(state.waiters.register(id)),
        other => other,
    };
    if replayed {
        Metrics::inc(&metrics.orders_replayed);
    } else if row.status() == OrderStatus::Rejected {
        // Sold out (or not on sale yet): decided on the spot by the
        // recorder, never queued.
        if row.reason.as_deref() == Some(shared::domain::reason::OUT_OF_STOCK) {
            Metrics::inc(&metrics.orders_rejected_sold_out);
        }
    } else {
        Metrics::inc(&metrics.orders_recorded);
        // Queued: it counts against capacity until its decision.
        if let Some(ticket) = ticket {
            ticket.keep();
        }
    }

    let mut order = Order::from(row);
    if let (Some(waiting), Some(wait)) = (waiting, wait) {
        // The notice of a committed decision carries all the order lacks:
        // the answer needs no read. Without it (the wait ran out, or the
        // notice was lost while the broker reconnected, or came from a
        // worker that does not send the times) the row is the truth. If the
        // database does not answer then, the order is recorded all the
        // same: answer with what is known.
        if let Some(decided) = waiting.decision(wait).await
            && let Some(decided_at) = decided.decided_at
        {
            order.status = decided.status;
            order.reason = decided.reason;
            order.decided_at = Some(decided_at);
            order.expires_at = decided.expires_at;
        } else {
            match db::orders::fetch(&state.db, id).await {
                Ok(Some(row)) => order = Order::from(row),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, order_id = %id, "could not re-read a waited-for order")
                }
            }
        }
    }
    // Asynchronous submissions are always 202 (the order, whatever its
    // status, is in `data`); only a client that waited gets the decision's code.
    // An order cancelled while PENDING during the wait was never decided:
    // 202 with its status, like an asynchronous answer. Any other status
    // past PENDING and REJECTED came through an acceptance.
    let status = match (wait, order.status) {
        (None, _) | (_, OrderStatus::Pending) => StatusCode::ACCEPTED,
        (_, OrderStatus::Rejected) => StatusCode::BAD_REQUEST,
        (_, OrderStatus::Cancelled) if order.decided_at.is_none() => StatusCode::ACCEPTED,
        _ => StatusCode::CREATED,
    };
    let pending = order.status == OrderStatus::Pending;
    let mut response = order_response(status, order);
    let location =
        HeaderValue::from_str(&format!("/api/orders/{id}")).expect("a uuid is a header value");
    response.headers_mut().insert(header::LOCATION, location);
    if pending {
        // Not decided yet: when to poll `Location`.
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if let Some(wait) = wait {
        // RFC 7240 §3: the preference was honoured, for this long.
        let applied = HeaderValue::from_str(&format!("wait={}", wait.as_secs()))
            .expect("digits are a header value");
        response.headers_mut().insert("preference-applied", applied);
    }
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Shed means "nothing was recorded", which must not be said of an order
/// that exists: a submission about to be shed whose `key` recorded an
/// order earlier is answered with that order (or told the key was used for
/// another request); otherwise `shed` is counted and returned.
async fn unless_recorded(
    state: &AppState,
    key: Option<&db::orders::IdempotencyKey>,
    shed: ApiError,
) -> Result<db::orders::Recorded, ApiError> {
    let earlier = match key {
        Some(key) => db::orders::find_keyed(&state.db, key).await,
        None => Ok(None),
    };
    match earlier {
        Ok(Some(earlier)) => Ok(earlier),
        Ok(None) => {
            Metrics::inc(&state.publisher.metrics.orders_shed);
            Err(shed)
        }
        // Not recorded now either: shed, and the database's trouble said.
        Err(e) => {
            Metrics::inc(&state.publisher.metrics.orders_shed);
            Err(e.into())
        }
    }
}

/// Admits order `id` for `product`, or says why it must be shed: its
/// partition is past capacity, or the broker blocked this api (a memory or
/// disk alarm). The caller counts what it sheds ([`unless_recorded`]).
fn admit(state: &AppState, product: ProductId, id: OrderId) -> Result<Ticket, ApiError> {
    if state.publisher.is_blocked() {
        return Err(queue_full(state));
    }
    let partition = partition_of(product, state.config.order_partitions);
    state
        .admission
        .admit(partition, id)
        .map_err(|o| ApiError::Overloaded {
            retry_after: o.retry_after,
            message: "more orders than can be decided in time are waiting; nothing was recorded, retry after Retry-After".into(),
        })
}

/// 503 `OVERLOADED`: the queue took no more.
fn queue_full(state: &AppState) -> ApiError {
    ApiError::Overloaded {
        retry_after: (state.config.admission_max_delay / 2).max(Duration::from_secs(1)),
        message: "the order queue is full; nothing was recorded, retry after Retry-After".into(),
    }
}

/// A recording failure as the client sees it: a product deleted meanwhile
/// is a 404, a database that is down a 503.
fn order_error(e: DbError, product: ProductId) -> ApiError {
    match &e {
        DbError::Sql(sqlx::Error::Database(d)) if d.is_foreign_key_violation() => {
            product_not_found(product)
        }
        _ => e.into(),
    }
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

/// The `Prefer: wait` a request may honour: its wait, capped by `MAX_WAIT`,
/// and one of the `MAX_WAITING` slots (shared by submissions and long
/// polls), held while it waits. `None` without the preference or without a
/// free slot: the request is then answered at once, as without it.
fn waiting_slot(
    state: &AppState,
    headers: &HeaderMap,
) -> Option<(Duration, tokio::sync::OwnedSemaphorePermit)> {
    let wait = preferred_wait(headers)?.min(state.config.max_wait);
    let slot = state.waiting_slots.clone().try_acquire_owned().ok()?;
    Some((wait, slot))
}

/// Room for the difference between this api's clock and the database's.
const CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

/// The product's sale start (as last seen), or 404 when there is no such
/// product. Cached: a flood of orders does not ask the database each time.
async fn product_sale_start(
    state: &AppState,
    product: ProductId,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    if let Some(start) = state
        .known_products
        .read()
        .expect("known products lock")
        .get(&product)
    {
        return Ok(*start);
    }
    let row = db::products::get(&state.db, product)
        .await?
        .ok_or_else(|| product_not_found(product))?;
    state.remember_product(&row);
    Ok(row.sale_starts_at)
}

/// Reads an order: its status, reason and timestamps. With `Prefer:
/// wait=N` a PENDING order is a long poll: the answer comes as soon as the
/// order is decided, or after N seconds (capped by `MAX_WAIT`) still PENDING.
#[utoipa::path(get, path = "/orders/{id}", tag = "orders",
    params(
        ("id" = uuid::Uuid, Path, description = "Order id (UUID, any case)"),
        ("Prefer" = Option<String>, Header, pattern = r"^wait=\d+$", description = "`wait=N`: while the order is PENDING, wait up to N seconds (capped by MAX_WAIT) for its decision and answer as soon as it comes"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier read: 304 while the order has not changed"),
    ),
    responses(
        (status = 200, description = "The order", body = Envelope<Order>,
            headers(
                ("ETag" = String, description = "Its entity tag: changes when its status does"),
                ("Cache-Control" = String, description = "no-store"),
                ("Retry-After" = u32, description = "While PENDING: seconds until reading again is worth it"),
                ("Preference-Applied" = String, description = "`wait=N`: the order was PENDING and the wait was honoured (RFC 7240)"),
            )),
        (status = 304, description = "Not modified: If-None-Match names the current ETag",
            headers(
                ("ETag" = String, description = "Its entity tag"),
                ("Cache-Control" = String, description = "no-store"),
                ("Retry-After" = u32, description = "While PENDING: seconds until reading again is worth it"),
                ("Preference-Applied" = String, description = "`wait=N`: the order was PENDING and the wait was honoured (RFC 7240)"),
            )),
        (status = 400, description = "Not an order id", body = Envelope<ErrorBody>),
        (status = 404, description = "No such order, another buyer's, or an id not in its hyphenated form (any case is read)", body = Envelope<ErrorBody>),
        (status = 401, description = "A buyer key is configured and the request has no valid buyer's token (`WWW-Authenticate: Bearer`)", body = Envelope<ErrorBody>,
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 503, description = "Database unavailable", body = Envelope<ErrorBody>),
    ))]
pub async fn get_order(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    AppPath(id): AppPath<String>,
) -> Result<Response, ApiError> {
    let id = parse_order_id(&id)?;
    // Registered before the read, so a decision committed between the read
    // and the wait is not missed. A request waits only while it holds one
    // of the MAX_WAITING slots shared with `POST /api/orders`; without one
    // it is answered at once, as without the preference.
    let wait =
        waiting_slot(&state, &headers).map(|(w, slot)| (w, slot, state.waiters.register(id)));
    let mut row = read_order(&state, &caller, id).await?;
    let mut waited = None;
    if let Some((wait, _slot, mut waiting)) = wait
        && row.status() == OrderStatus::Pending
    {
        // Decision notices go to every api, and a cancel here wakes the
        // wait; the row is the truth either way. It is read again every
        // LONG_POLL_CHECK too: a cancel through another api sends no
        // notice, and a notice can be lost.
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let news = waiting.news(left.min(LONG_POLL_CHECK)).await;
            row = read_order(&state, &caller, id).await?;
            if news || row.status() != OrderStatus::Pending || left <= LONG_POLL_CHECK {
                break;
            }
        }
        waited = Some(wait);
    }
    let pending = row.status() == OrderStatus::Pending;
    // Polled until decided: a poll whose ETag is current costs no body.
    let mut response =
        crate::conditional::read_response(&headers, StatusCode::OK, Order::from(row), "no-store");
    if pending {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if let Some(wait) = waited {
        let applied = HeaderValue::from_str(&format!("wait={}", wait.as_secs()))
            .expect("digits are a header value");
        response.headers_mut().insert("preference-applied", applied);
    }
    Ok(response)
}

/// How often a long poll reads its order while no news comes.
const LONG_POLL_CHECK: Duration = Duration::from_secs(2);

/// Order `id`, if `caller` may read it; 404 otherwise (another buyer's
/// order is not said to exist).
async fn read_order(state: &AppState, caller: &Caller, id: OrderId) -> Result<OrderRow, ApiError> {
    db::orders::fetch(&state.db, id)
        .await?
        .filter(|row| caller.may_read(row.buyer_id.as_deref()))
        .ok_or_else(|| order_not_found(id))
}

/// Pays an accepted order: its units leave the store (`stored_stock` and
/// `reserved_stock` both drop by `total`).
#[utoipa::path(post, path = "/orders/{id}/pay", tag = "orders",
    params(
        ("id" = uuid::Uuid, Path, description = "Order id (UUID)"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 16, max_length = 255, pattern = r"^[!-~]+$", description = "16 to 255 visible ASCII characters: resending the same key for the same action on the same order does it again (answered as above: 200, `Idempotent-Replayed: true` once done); the same key with another action or order, 422. Keys are kept as long as the order they paid or cancelled: a retry is recognised however late it comes."),
    ),
    responses(
        (status = 200, description = "Paid (or paid already: `Idempotent-Replayed: true`)", body = Envelope<Order>,
            headers(
                ("Idempotent-Replayed" = String, description = "`true` when the order was paid before this request"),
                ("Cache-Control" = String, description = "no-store"),
            )),
        (status = 400, description = "Not an order id", body = Envelope<ErrorBody>),
        (status = 404, description = "No such order, or an id not in its hyphenated form (any case is read)", body = Envelope<ErrorBody>),
        (status = 409, description = "`INVALID_TRANSITION`: PENDING, REJECTED or CANCELLED; `ORDER_EXPIRED`: past `expires_at` (the order is then EXPIRED)", body = Envelope<ErrorBody>),
        (status = 401, description = "PAYMENT_TOKEN or ADMIN_TOKEN (or a buyer key) is configured and the request carries neither service token", body = Envelope<ErrorBody>,
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 403, description = "A buyer's token: payments are confirmed by the payment service", body = Envelope<ErrorBody>),
        (status = 422, description = "`INVALID_IDEMPOTENCY_KEY`, or `IDEMPOTENCY_KEY_REUSED`: the key was used with another action or order (nothing done)", body = Envelope<ErrorBody>),
        (status = 503, description = "Database unavailable", body = Envelope<ErrorBody>),
    ))]
pub async fn pay_order(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    AppPath(id): AppPath<String>,
) -> Result<Response, ApiError> {
    caller.may_pay(&state)?;
    let id = parse_order_id(&id)?;
    let request = format!("pay {id}");
    let key = crate::idempotency::key(&headers, caller.key_scope().as_deref(), request.as_bytes())?;
    // Pay, cancel and the sweeper lock the same rows; a lost deadlock is retried.
    let pay = || {
        db::retry_lock_conflicts(|| {
            db::orders::pay(&state.db, id, key.as_ref(), state.config.order_events)
        })
    };
    let result = transition_settled(id, "the payment", pay).await?;
    transition_response(id, "pay", result)
}

/// Cancels a PENDING or ACCEPTED order, releasing any units it held.
#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "orders",
    params(
        ("id" = uuid::Uuid, Path, description = "Order id (UUID)"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 16, max_length = 255, pattern = r"^[!-~]+$", description = "16 to 255 visible ASCII characters: resending the same key for the same action on the same order does it again (answered as above: 200, `Idempotent-Replayed: true` once done); the same key with another action or order, 422. Keys are kept as long as the order they paid or cancelled: a retry is recognised however late it comes."),
    ),
    responses(
        (status = 200, description = "Cancelled (or cancelled already: `Idempotent-Replayed: true`)", body = Envelope<Order>,
            headers(
                ("Idempotent-Replayed" = String, description = "`true` when the order was cancelled before this request"),
                ("Cache-Control" = String, description = "no-store"),
            )),
        (status = 400, description = "Not an order id", body = Envelope<ErrorBody>),
        (status = 404, description = "No such order, another buyer's, or an id not in its hyphenated form (any case is read)", body = Envelope<ErrorBody>),
        (status = 409, description = "`INVALID_TRANSITION`: already REJECTED or PAID; `ORDER_EXPIRED`: already EXPIRED", body = Envelope<ErrorBody>),
        (status = 401, description = "A buyer key is configured and the request has no valid buyer's token (`WWW-Authenticate: Bearer`)", body = Envelope<ErrorBody>,
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 403, description = "The payment token: it cannot cancel", body = Envelope<ErrorBody>),
        (status = 422, description = "`INVALID_IDEMPOTENCY_KEY`, or `IDEMPOTENCY_KEY_REUSED`: the key was used with another action or order (nothing done)", body = Envelope<ErrorBody>),
        (status = 503, description = "Database unavailable", body = Envelope<ErrorBody>),
    ))]
pub async fn cancel_order(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    AppPath(id): AppPath<String>,
) -> Result<Response, ApiError> {
    let id = parse_order_id(&id)?;
    // An order's buyer never changes: checked before, not under, the lock.
    let owner = db::orders::fetch(&state.db, id)
        .await?
        .ok_or_else(|| order_not_found(id))?
        .buyer_id;
    if !caller.may_cancel(owner.as_deref())? {
        return Err(order_not_found(id));
    }
    let request = format!("cancel {id}");
    let key = crate::idempotency::key(&headers, caller.key_scope().as_deref(), request.as_bytes())?;
    let cancel = || {
        db::retry_lock_conflicts(|| {
            db::orders::cancel(&state.db, id, key.as_ref(), state.config.order_events)
        })
    };
    let result = transition_settled(id, "the cancel", cancel).await?;
    let cancelled = match &result {
        Transition::Done(_) => true,
        // Done by an attempt whose commit was cut, or by another request:
        // telling the waiters and admission again changes nothing.
        Transition::Refused(row) => row.status() == OrderStatus::Cancelled,
        _ => false,
    };
    if cancelled {
        // Cancelled while PENDING, it will get no decision notice; it
        // leaves admission without counting as a decision, and the
        // requests waiting on it here read it now.
        state.admission.cancelled(&[id]);
        state.waiters.wake(id);
    }
    transition_response(id, "cancel", result)
}

/// A pay or cancel's outcome. When the connection was lost under its
/// commit, it runs again once a primary answers: done by the cut attempt,
/// it finds the order PAID (or CANCELLED) and answers 200 as for a retry;
/// not done, it does it now.
async fn transition_settled<F, Fut>(
    id: OrderId,
    what: &str,
    mut attempt: F,
) -> Result<Transition, ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Transition, DbError>>,
{
    match attempt().await {
        Err(e) if e.is_uncertain() => crate::settle::until_answered(attempt)
            .await
            .map_err(|_| crate::settle::unknown(what, id)),
        other => Ok(other?),
    }
}

/// The answer to pay or cancel. Asking again for the transition the order
/// already made (a retry after a lost answer) is 200 with
/// `Idempotent-Replayed: true`, so a client can tell it from a conflict.
fn transition_response(id: OrderId, verb: &str, result: Transition) -> Result<Response, ApiError> {
    let done = match verb {
        "pay" => OrderStatus::Paid,
        _ => OrderStatus::Cancelled,
    };
    match result {
        Transition::Done(row) => Ok(order_response(StatusCode::OK, Order::from(row))),
        Transition::NotFound => Err(order_not_found(id)),
        Transition::KeyReused => Err(crate::idempotency::reused()),
        Transition::Refused(row) if row.status() == done => {
            let mut response = order_response(StatusCode::OK, Order::from(row));
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(response)
        }
        Transition::Refused(row) => {
            let status = row.status();
            let code = if status == OrderStatus::Expired {
                ErrorCode::OrderExpired
            } else {
                ErrorCode::InvalidTransition
            };
            Err(ApiError::conflict(
                code,
                format!("cannot {verb} order {id}: its status is {status}"),
            ))
        }
    }
}

/// An order id from a path or a query: not a UUID is 400; the hyphenated
/// form in any case is the order (UUIDs are case-insensitive on input, RFC
/// 9562 §4; answers always carry lower case); any other form of a UUID
/// (braced, unhyphenated, a URN) is 404, so that an order has one URL up to case.
pub(crate) fn parse_order_id(text: &str) -> Result<OrderId, ApiError> {
    let id = OrderId::parse(text)
        .map_err(|e| ApiError::client(StatusCode::BAD_REQUEST, e.code, e.message))?;
    if !id.to_string().eq_ignore_ascii_case(text) {
        return Err(ApiError::not_found(
            ErrorCode::OrderNotFound,
            format!("no order at this address; its canonical form is /api/orders/{id}"),
        ));
    }
    Ok(id)
}

/// An order (or a page of them): never cached, since its status changes.
fn order_response<T: Serialize>(status: StatusCode, body: T) -> Response {
    let mut response = respond(status, body);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn order_not_found(id: OrderId) -> ApiError {
    ApiError::not_found(
        ErrorCode::OrderNotFound,
        format!("order {id} does not exist"),
    )
}

/// Filters for `GET /api/orders`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrderQuery {
    /// Only this product's orders.
    #[param(minimum = 1)]
    pub product_id: Option<i64>,
    /// Only orders in this status.
    pub status: Option<OrderStatus>,
    /// Page number, from 1 (default 1). Not with `after`.
    #[param(minimum = 1, maximum = 1000000)]
    pub page: Option<u32>,
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub per_page: Option<u32>,
    /// A cursor: the orders recorded after this one (an order id, as
    /// `next_after` and `Link: rel=next` give it). Unlike `page`, it stays
    /// put while orders arrive: following it never repeats or skips one.
    #[param(value_type = Option<uuid::Uuid>)]
    pub after: Option<String>,
}

/// One page of orders.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderPage {
    /// The orders on this page, in the order they were recorded.
    pub items: Vec<Order>,
    /// The page its first order is on, counting `per_page` from the first
    /// matching order (with `after`, as of this read).
    #[schema(minimum = 1)]
    pub page: u32,
    /// Items per page.
    #[schema(minimum = 1, maximum = 100)]
    pub per_page: u32,
    /// Matching orders in all pages.
    pub total_items: u64,
    /// Number of pages.
    pub total_pages: u64,
    /// The cursor of the next page (`?after=` it), or `null` on the last
    /// page.
    #[schema(required = true)]
    pub next_after: Option<uuid::Uuid>,
}

/// Lists orders in the order they were recorded, optionally by product and
/// status: a buyer's own orders with a buyer's token; every order with the
/// admin or payment token, or while buyers are anonymous. Pages by `page`,
/// or by the cursor `after` (what `Link: rel=next` and `next_after` give),
/// which no arriving order can shift.
#[utoipa::path(get, path = "/orders", tag = "orders",
    params(OrderQuery),
    responses(
        (status = 200, description = "A page of orders", body = Envelope<OrderPage>,
            headers(
                ("Cache-Control" = String, description = "no-store"),
                ("Link" = String, description = "RFC 8288: `first` and `last` pages by number, `prev` by number (with `page`), `next` by cursor (`after`)"),
            )),
        (status = 400, description = "Invalid filter, page or cursor (`after` with `page`, or naming no order this caller can read)", body = Envelope<ErrorBody>),
        (status = 401, description = "A buyer key is configured and the request has no valid buyer's token (`WWW-Authenticate: Bearer`)", body = Envelope<ErrorBody>,
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 503, description = "Database unavailable", body = Envelope<ErrorBody>),
    ))]
pub async fn list_orders(
    State(state): State<AppState>,
    caller: Caller,
    AppQuery(query): AppQuery<OrderQuery>,
) -> Result<Response, ApiError> {
    let bounds = PageQuery {
        page: query.page,
        per_page: query.per_page,
    }
    .bounds()?;
    let product = query
        .product_id
        .map(|p| {
            ProductId::new(p)
                .map_err(|e| ApiError::client(StatusCode::BAD_REQUEST, e.code, e.message))
        })
        .transpose()?;
    let filter = OrderFilter {
        product,
        status: query.status,
        buyer: match &caller {
            Caller::Buyer(buyer) => Some(buyer.clone()),
            _ => None,
        },
    };
    let from = match &query.after {
        None => db::orders::From::Offset(bounds.offset()),
        Some(_) if query.page.is_some() => {
            return Err(invalid_query("give `page` or `after`, not both"));
        }
        Some(after) => {
            let id = OrderId::parse(after)
                .map_err(|_| invalid_query(&format!("after must be an order id, got {after:?}")))?;
            match db::orders::position(&state.db, id).await? {
                Some((seq, owner)) if caller.may_read(owner.as_deref()) => {
                    db::orders::From::After(seq)
                }
                _ => return Err(invalid_query(&format!("after: no order {id}"))),
            }
        }
    };
    let listed = db::orders::list(&state.db, &filter, bounds.per_page, from).await?;
    let per_page = u64::from(bounds.per_page);
    let next_after = listed.rows.last().filter(|_| listed.more).map(|row| row.id);
    let page = OrderPage {
        page: u32::try_from(listed.before / per_page + 1).unwrap_or(u32::MAX),
        per_page: bounds.per_page,
        total_items: listed.total,
        total_pages: listed.total.div_ceil(per_page),
        next_after,
        items: listed.rows.into_iter().map(Order::from).collect(),
    };
    let mut filters = Vec::new();
    if let Some(p) = filter.product {
        filters.push(("product_id", p.get().to_string()));
    }
    if let Some(s) = filter.status {
        filters.push(("status", s.as_str().to_owned()));
    }
    let link = crate::pagination::Links {
        path: "/api/orders",
        filters: &filters,
        per_page: bounds.per_page,
        total_items: page.total_items,
        prev: matches!(from, db::orders::From::Offset(_)).then_some(page.page),
        next: next_after.map(|id| ("after", id.to_string())),
    }
    .header();
    let mut response = order_response(StatusCode::OK, page);
    if let Some(link) = link {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

/// 400 `INVALID_QUERY`.
fn invalid_query(message: &str) -> ApiError {
    ApiError::client(StatusCode::BAD_REQUEST, ErrorCode::InvalidQuery, message)
}

/// A product's orders counted by status.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderSummary {
    /// The product.
    pub product_id: u64,
    /// Orders in all statuses.
    pub total: u64,
    /// Recorded, not yet decided.
    pub pending: u64,
    /// Holding units.
    pub accepted: u64,
    /// Refused.
    pub rejected: u64,
    /// Paid.
    pub paid: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// Released unpaid.
    pub expired: u64,
}

/// Counts a product's orders by status: a sale is fully decided when `pending` is 0.
#[utoipa::path(get, path = "/products/{id}/orders/summary", tag = "orders",
    params(("id" = u64, Path, minimum = 1, description = "Product id")),
    responses(
        (status = 200, description = "Counts by status", body = Envelope<OrderSummary>),
        (status = 401, description = "A buyer key is configured and the request carries neither the admin token nor a valid buyer's token", body = Envelope<ErrorBody>,
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 403, description = "A buyer's token: summaries are for the admin", body = Envelope<ErrorBody>),
        (status = 400, description = "Not a product id", body = Envelope<ErrorBody>),
        (status = 404, description = "No such product", body = Envelope<ErrorBody>),
        (status = 503, description = "Database unavailable", body = Envelope<ErrorBody>),
    ))]
pub async fn get_order_summary(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(id): AppPath<String>,
) -> Result<Response, ApiError> {
    let product = parse_product_id(&id)?;
    caller.may_see_all()?;
    product_sale_start(&state, product).await?;
    let mut summary = OrderSummary {
        product_id: product.get(),
        total: 0,
        pending: 0,
        accepted: 0,
        rejected: 0,
        paid: 0,
        cancelled: 0,
        expired: 0,
    };
    for (status, n) in db::orders::count_by_status(&state.db, product).await? {
        summary.total += n;
        *match status {
            OrderStatus::Pending => &mut summary.pending,
            OrderStatus::Accepted => &mut summary.accepted,
            OrderStatus::Rejected => &mut summary.rejected,
            OrderStatus::Paid => &mut summary.paid,
            OrderStatus::Cancelled => &mut summary.cancelled,
            OrderStatus::Expired => &mut summary.expired,
        } = n;
    }
    Ok(respond(StatusCode::OK, summary))
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
