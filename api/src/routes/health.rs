//! Liveness and readiness.

use crate::envelope::{Envelope, respond};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_health))
        .routes(routes!(get_ready))
}

/// What `/healthz` and `/readyz` report.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `alive`, `ready` or `not ready`.
    pub status: &'static str,
    /// `up` or `down` (only in `/readyz`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<&'static str>,
    /// `up` or `down` (only in `/readyz`). While it is down, orders are still
    /// recorded and published once it is back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker: Option<&'static str>,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Alive", body = Envelope<Health>)))]
pub async fn get_health() -> Response {
    respond(
        StatusCode::OK,
        Health {
            status: "alive",
            database: None,
            broker: None,
        },
    )
}

/// The database and the broker are reachable.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Database and broker reachable", body = Envelope<Health>),
        (status = 503, description = "A dependency is down; `data` says which", body = Envelope<Health>),
    ))]
pub async fn get_ready(State(state): State<AppState>) -> Response {
    let database = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&state.db),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let broker = state.publisher.is_connected();
    let ready = database && broker;
    let up = |ok: bool| if ok { "up" } else { "down" };
    respond(
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Health {
            status: if ready { "ready" } else { "not ready" },
            database: Some(up(database)),
            broker: Some(up(broker)),
        },
    )
}
