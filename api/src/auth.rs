//! The admin boundary: with `ADMIN_TOKEN` set, product creation, inventory
//! writes and `/api/admin/*` need `Authorization: Bearer <token>`. Buyers'
//! endpoints stay open.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use sha2::{Digest, Sha256};

/// Present in a handler's arguments: the request carries the admin token
/// (or none is configured).
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(token) = &state.config.admin_token else {
            return Ok(Admin);
        };
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if equal_in_constant_time(presented, token.expose()) {
            Ok(Admin)
        } else {
            Err(ApiError::client(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "this endpoint needs Authorization: Bearer <ADMIN_TOKEN>",
            ))
        }
    }
}

/// Compares two secrets without an early exit: both are hashed to the same
/// length first, then every byte is compared.
fn equal_in_constant_time(a: &str, b: &str) -> bool {
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn compares_whole_values() {
        assert!(super::equal_in_constant_time("abc", "abc"));
        assert!(!super::equal_in_constant_time("abc", "abd"));
        assert!(!super::equal_in_constant_time("", "abc"));
    }
}
