//! Conditional requests (RFC 9110 §13): an `ETag` on every read of a
//! product, an inventory or an order; `If-None-Match` answered 304; and
//! `If-Match` on the writes that replace what a client read (setting the
//! stock, changing a product's rules), answered 412 when it is stale.
//!
//! The tag is a strong validator: a hash of the representation's JSON.

use crate::envelope::respond;
use crate::error::ApiError;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::Serialize;
use sha2::{Digest, Sha256};
use shared::error_code::ErrorCode;

/// The entity tag of `data`, quoted.
pub fn etag_of<T: Serialize>(data: &T) -> String {
    let bytes = serde_json::to_vec(data).expect("a representation serializes");
    let digest = Sha256::digest(bytes);
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// The tags listed in `name` (`*` included as is); weak markers are
/// dropped for `If-None-Match` (weak comparison) and kept for `If-Match`,
/// so a weak tag never matches there (strong comparison, RFC 9110 §13.1.1).
fn listed(headers: &HeaderMap, name: header::HeaderName) -> Option<Vec<String>> {
    let weak_ok = name == header::IF_NONE_MATCH;
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() {
        return None;
    }
    Some(
        values
            .iter()
            .flat_map(|v| v.split(','))
            .map(|t| {
                let t = t.trim();
                if weak_ok {
                    t.trim_start_matches("W/")
                } else {
                    t
                }
                .to_owned()
            })
            .filter(|t| !t.is_empty())
            .collect(),
    )
}

/// A read: 304 when `If-None-Match` names the current tag (or `*`), else
/// `status` with `data`; both carry the `ETag` and `cache_control`.
pub fn read_response<T: Serialize>(
    headers: &HeaderMap,
    status: StatusCode,
    data: T,
    cache_control: &'static str,
) -> Response {
    let etag = etag_of(&data);
    let not_modified = listed(headers, header::IF_NONE_MATCH)
        .is_some_and(|tags| tags.iter().any(|t| t == "*" || *t == etag));
    let mut response = if not_modified {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        respond(status, data)
    };
    let h = response.headers_mut();
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex is a header value"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    response
}

/// A write's precondition: `If-Match` absent, `*`, or naming the tag of
/// `current` (compared strongly); else 412, and nothing changes.
pub fn check_if_match<T: Serialize>(headers: &HeaderMap, current: &T) -> Result<(), ApiError> {
    let Some(tags) = listed(headers, header::IF_MATCH) else {
        return Ok(());
    };
    let etag = etag_of(current);
    if tags.iter().any(|t| t == "*" || *t == etag) {
        return Ok(());
    }
    Err(ApiError::client(
        StatusCode::PRECONDITION_FAILED,
        ErrorCode::PreconditionFailed,
        format!("If-Match does not name the current version ({etag}); read it again, then retry"),
    ))
}

/// `response` with the `ETag` of `data`.
pub fn with_etag<T: Serialize>(mut response: Response, data: &T) -> Response {
    response.headers_mut().insert(
        header::ETAG,
        HeaderValue::from_str(&etag_of(data)).expect("hex is a header value"),
    );
    response
}
