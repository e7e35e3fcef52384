//! Receiving a whole request before anything acts on it.
//!
//! A request's body is read in full (at most the body limit) within
//! `HEADER_READ_TIMEOUT` of its head, before any handler runs; only then is
//! its connection marked busy (`shared::http::connections`). So a client that
//! trickles a body holds an *idle* connection, which gives way when slots
//! run out, and an answer 408 after the deadline; it never holds a handler,
//! a database connection or a busy slot.

use crate::envelope::{ErrorBody, respond};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use shared::error_code::ErrorCode;
use shared::http::Activity;
use std::time::Duration;

/// Reads `request`'s body (at most `limit` bytes, within `deadline`), marks
/// its connection busy, and hands it on; the connection is idle again once
/// the response has been written.
pub async fn receive(deadline: Duration, limit: usize, request: Request, next: Next) -> Response {
    // Announced too large: refused before a byte of it is read (and before
    // a `100 Continue` invites it).
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    let received = match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return if too_large {
                self::too_large()
            } else {
                // The client went away mid-body, or sent a broken chunk.
                closing(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::InvalidBody,
                    "the request body could not be read".into(),
                )
            };
        }
        Err(_) => {
            return closing(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::RequestTimeout,
                format!(
                    "the request body did not arrive within {deadline:?} (HEADER_READ_TIMEOUT)"
                ),
            );
        }
    };
    let busy = match parts.extensions.get::<Activity>() {
        Some(activity) => match activity.begin() {
            Some(busy) => Some(busy),
            // The connection is being closed to make room: nothing was done.
            None => {
                return closing(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::ServiceUnavailable,
                    "the connection was closed to make room; nothing was done, retry".into(),
                );
            }
        },
        // Served without the accept loop (in-process router tests).
        None => None,
    };
    let response = next
        .run(Request::from_parts(parts, Body::from(received)))
        .await;
    match busy {
        Some(busy) => shared::http::track(response, busy),
        None => response,
    }
}

/// 413, and the connection closes (the rest of the body is never read).
fn too_large() -> Response {
    closing(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::PayloadTooLarge,
        "the request body is too large".into(),
    )
}

/// An error answer after which the connection closes (its body may be
/// partly unread).
fn closing(status: StatusCode, error: ErrorCode, message: String) -> Response {
    let mut response = respond(status, ErrorBody { error, message });
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}
