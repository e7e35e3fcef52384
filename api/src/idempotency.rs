//! `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header): one
//! header, 16 to 255 visible ASCII characters, scoped by who sends it and
//! stored only as a hash together with a hash of the request.

use crate::error::ApiError;
use axum::http::{HeaderMap, StatusCode, header};
use sha2::{Digest, Sha256};
use shared::db::orders::IdempotencyKey;
use shared::error_code::ErrorCode;

/// The request's `Idempotency-Key`, scoped and hashed with `request` (what
/// identifies the request: its body, its target). Scope: `scope` when given
/// (`buyer:<id>` with buyers' tokens: tokens rotate, the buyer does not;
/// `admin` for the sellers' endpoints), otherwise the `Authorization`
/// header (when present), so callers with different identities never
/// collide or read each other's results; without credentials the key
/// itself is the secret, which is why at least 16 characters are required.
pub fn key(
    headers: &HeaderMap,
    scope: Option<&str>,
    request: &[u8],
) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let invalid = |message: &str| {
        ApiError::client(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidIdempotencyKey,
            message,
        )
    };
    if values.next().is_some() {
        return Err(invalid("send one Idempotency-Key header, not several"));
    }
    let text = value
        .to_str()
        .map_err(|_| invalid("Idempotency-Key must be visible ASCII"))?
        .trim();
    // The draft makes the key a structured-field string ("..."); accept it bare too.
    let key = text
        .strip_prefix('"')
        .and_then(|k| k.strip_suffix('"'))
        .unwrap_or(text);
    if !(16..=255).contains(&key.len()) || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "Idempotency-Key must be 16 to 255 visible ASCII characters, such as a random UUID",
        ));
    }
    let scope = match scope {
        Some(scope) => scope.as_bytes().to_vec(),
        None => headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default(),
    };
    Ok(Some(IdempotencyKey {
        key: scoped_key(&scope, key),
        request_hash: Sha256::digest(request).into(),
    }))
}

/// What is stored for a client's `Idempotency-Key` sent with `scope` (empty
/// without one): a hex SHA-256, never the key itself.
pub fn scoped_key(scope: &[u8], key: &str) -> String {
    let mut scoped = Sha256::new();
    scoped.update(b"flashstock idempotency v1\n");
    scoped.update(Sha256::digest(scope));
    scoped.update(key.as_bytes());
    scoped
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// 422 for a key used before with another request.
pub fn reused() -> ApiError {
    ApiError::client(
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::IdempotencyKeyReused,
        "this Idempotency-Key was used with a different request",
    )
}
