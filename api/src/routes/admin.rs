//! `/api/admin`: operator endpoints.

use crate::auth::Admin;
use crate::envelope::{Envelope, ErrorBody, respond};
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use shared::db::invariants::{self, Violation};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_invariants))
}

/// The result of the invariant check.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvariantReport {
    /// True when nothing is broken.
    pub ok: bool,
    /// What is broken, if anything.
    pub violations: Vec<Violation>,
}

/// Checks the stock invariants over every product and order: `0 <= reserved
/// <= stored`, `reserved` = the sum of ACCEPTED totals, decisions
/// consistent, each buyer's holding = the sum of their ACCEPTED and PAID
/// totals.
#[utoipa::path(get, path = "/admin/invariants", tag = "admin",
    responses(
        (status = 401, description = "ADMIN_TOKEN is set and the request lacks `Authorization: Bearer <token>`", body = Envelope<ErrorBody>),
        (status = 200, description = "The report (`ok` false lists the violations)", body = Envelope<InvariantReport>),
        (status = 503, description = "Database unavailable", body = Envelope<ErrorBody>),
    ))]
pub async fn get_invariants(
    _admin: Admin,
    State(state): State<AppState>,
) -> Result<Response, ApiError> {
    let violations = invariants::check(&state.db).await?;
    if !violations.is_empty() {
        tracing::error!(?violations, "stock invariants are broken");
    }
    Ok(respond(
        StatusCode::OK,
        InvariantReport {
            ok: violations.is_empty(),
            violations,
        },
    ))
}
