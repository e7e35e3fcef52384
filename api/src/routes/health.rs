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

/// What `/healthz` reports.
#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    /// Always `alive`.
    pub status: Alive,
}

/// The one state `/healthz` reports.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Alive {
    /// The process answers.
    Alive,
}

/// What `/readyz` reports.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` when both dependencies are up.
    pub status: Ready,
    /// The database.
    pub database: Dependency,
    /// The broker. While it is down, orders are still recorded, and
    /// published once it is back.
    pub broker: Dependency,
}

/// Whether the api can take orders.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub enum Ready {
    /// Database and broker reachable.
    #[serde(rename = "ready")]
    Ready,
    /// A dependency is down.
    #[serde(rename = "not ready")]
    NotReady,
}

/// Whether a dependency answers.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Dependency {
    /// It answers.
    Up,
    /// It does not.
    Down,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Alive", body = Envelope<Liveness>)))]
pub async fn get_health() -> Response {
    respond(
        StatusCode::OK,
        Liveness {
            status: Alive::Alive,
        },
    )
}

/// The database and the broker are reachable.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Database and broker reachable", body = Envelope<Readiness>),
        (status = 503, description = "A dependency is down; `data` says which", body = Envelope<Readiness>),
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
    let up = |ok: bool| if ok { Dependency::Up } else { Dependency::Down };
    respond(
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Readiness {
            status: if ready { Ready::Ready } else { Ready::NotReady },
            database: up(database),
            broker: up(broker),
        },
    )
}
