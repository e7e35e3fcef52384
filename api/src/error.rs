//! `ApiError`: every failure the api answers with, written in the envelope.
//! Client mistakes are 4xx with a machine code; a dependency that is down is
//! 503 with `Retry-After`; anything else is a logged 500 that leaks nothing.

use crate::envelope::{ErrorBody, respond};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use shared::domain::DomainError;
use shared::error_code::ErrorCode;

/// Seconds a client should wait before retrying after a 503.
const RETRY_AFTER_SECS: &str = "2";

/// A failure, as the client will see it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The client's request was wrong (4xx).
    #[error("{message}")]
    Client {
        /// The 4xx status.
        status: StatusCode,
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
    /// A dependency (database or broker) is down: 503 with `Retry-After`.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// Past capacity: 503 `OVERLOADED` with `Retry-After`; nothing was recorded.
    #[error("overloaded: {message}")]
    Overloaded {
        /// When to try again.
        retry_after: std::time::Duration,
        /// Human-readable explanation.
        message: String,
    },
    /// Anything unexpected: logged, answered with a bare 500.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// A 4xx with `code` and `message`.
    pub fn client(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Client {
            status,
            code,
            message: message.into(),
        }
    }

    /// 404 with `code`.
    pub fn not_found(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::client(StatusCode::NOT_FOUND, code, message)
    }

    /// 409 with `code`.
    pub fn conflict(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::client(StatusCode::CONFLICT, code, message)
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        Self::client(StatusCode::UNPROCESSABLE_ENTITY, e.code, e.message)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if shared::db::is_unavailable(&e) {
            tracing::warn!(error = %e, "database unavailable");
            Self::Unavailable("the database is unavailable; retry shortly".into())
        } else {
            Self::Internal(anyhow::Error::new(e).context("database query failed"))
        }
    }
}

impl From<shared::db::DbError> for ApiError {
    fn from(e: shared::db::DbError) -> Self {
        match e {
            shared::db::DbError::Sql(e) | shared::db::DbError::Uncertain(e) => e.into(),
            // Our own check failed: a bug, not an outage (no Retry-After).
            e @ shared::db::DbError::Inconsistent(_) => {
                Self::Internal(anyhow::Error::new(e).context("database check failed"))
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let (status, code) = match &rejection {
            JsonRejection::JsonDataError(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidBody)
            }
            JsonRejection::JsonSyntaxError(_) => {
                (StatusCode::BAD_REQUEST, ErrorCode::MalformedJson)
            }
            JsonRejection::MissingJsonContentType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
            ),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge)
            }
            _ => (StatusCode::BAD_REQUEST, ErrorCode::InvalidBody),
        };
        let message = match code {
            ErrorCode::UnsupportedMediaType => {
                "send the body as JSON with Content-Type: application/json".to_owned()
            }
            ErrorCode::PayloadTooLarge => "the request body is too large".to_owned(),
            _ => rejection.body_text(),
        };
        Self::client(status, code, message)
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::client(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidId,
            rejection.body_text(),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::client(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidQuery,
            rejection.body_text(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Client {
                status,
                code,
                message,
            } => {
                let mut response = respond(
                    status,
                    ErrorBody {
                        error: code,
                        message,
                    },
                );
                if status == StatusCode::UNAUTHORIZED {
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                }
                response
            }
            Self::Unavailable(message) => {
                let mut response = respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorBody {
                        error: ErrorCode::ServiceUnavailable,
                        message,
                    },
                );
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECS),
                );
                response
            }
            Self::Overloaded {
                retry_after,
                message,
            } => {
                let mut response = respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorBody {
                        error: ErrorCode::Overloaded,
                        message,
                    },
                );
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_str(&secs.to_string()).expect("digits are a header value"),
                );
                response
            }
            Self::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorBody {
                        error: ErrorCode::Internal,
                        message: "an unexpected error occurred".to_owned(),
                    },
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_check_is_a_500_and_an_outage_a_503() {
        let check = ApiError::from(shared::db::DbError::Inconsistent("released 1 of 2".into()));
        let response = check.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
        let down = ApiError::from(shared::db::DbError::Sql(sqlx::Error::PoolTimedOut));
        assert_eq!(
            down.into_response().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
