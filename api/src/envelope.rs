//! The response envelope every answer uses:
//! `{"code": <http status>, "status": <short text>, "data": ...}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use shared::error_code::ErrorCode;
use utoipa::ToSchema;

/// Every response body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Envelope<T> {
    /// The HTTP status code, repeated.
    #[schema(example = 200)]
    pub code: u16,
    /// The status's reason phrase, such as `OK` or `Not Found`.
    #[schema(example = "OK")]
    pub status: String,
    /// The payload: the resource, or an [`ErrorBody`] on failure.
    pub data: T,
}

/// `data` of every 4xx and 5xx answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A machine-readable code, such as `INVALID_TOTAL`.
    pub error: ErrorCode,
    /// What went wrong, for people.
    #[schema(example = "total must be an integer from 1 to 1000, got 0")]
    pub message: String,
}

/// Wraps `data` in the envelope with `status`.
pub fn respond<T: Serialize>(status: StatusCode, data: T) -> Response {
    (status, axum::Json(wrap(status, data))).into_response()
}

/// The envelope for `status` around `data`.
pub fn wrap<T>(status: StatusCode, data: T) -> Envelope<T> {
    Envelope {
        code: status.as_u16(),
        status: status.canonical_reason().unwrap_or("Unknown").to_owned(),
        data,
    }
}
