//! Who may do what. Every credential is `Authorization: Bearer <token>`
//! (the scheme in any case, RFC 9110 §11.1):
//! - the admin token (`ADMIN_TOKEN`): product creation and changes,
//!   inventory writes, `/api/admin/*`, and any order;
//! - the payment service's token (`PAYMENT_TOKEN`): paying orders;
//! - a buyer's JWT (with `BUYER_JWT_*` configured): placing orders, and
//!   reading, listing and cancelling the buyer's own.
//!
//! With no buyer key configured, buyers are anonymous, as in the original
//! proof of concept.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
use shared::config::{BuyerJwt, BuyerKey};
use shared::error_code::ErrorCode;
use std::time::Duration;

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY: Duration = Duration::from_secs(10);
/// The longest buyer id (`sub`) stored.
const MAX_BUYER_ID: usize = 255;

/// Present in a handler's arguments: the request carries the admin token
/// (or none is configured).
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(token) = &state.config.admin_token else {
            return Ok(Admin);
        };
        let presented = bearer(parts).unwrap_or_default();
        if equal_in_constant_time(presented, token.expose()) {
            Ok(Admin)
        } else {
            Err(ApiError::client(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "this endpoint needs Authorization: Bearer <ADMIN_TOKEN>",
            ))
        }
    }
}

/// The token of `Authorization: Bearer <token>`, if that is what was sent.
fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No buyer key is configured, and no service token was presented:
    /// anyone, as in the original proof of concept.
    Anonymous,
    /// A buyer: the `sub` of a verified token.
    Buyer(String),
    /// The admin token.
    Admin,
    /// The payment service's token.
    Payment,
}

impl Caller {
    /// The buyer id to record on a new order, or the refusal: with buyer
    /// keys configured, orders are placed with a buyer's token; without,
    /// every order is anonymous, whatever token it carries.
    pub fn placing_buyer(&self, state: &AppState) -> Result<Option<String>, ApiError> {
        match self {
            Caller::Buyer(id) => Ok(Some(id.clone())),
            _ if state.buyers.is_none() => Ok(None),
            Caller::Anonymous | Caller::Admin | Caller::Payment => Err(forbidden(
                "orders are placed with a buyer's token, not a service token",
            )),
        }
    }

    /// The scope of this caller's idempotency keys on pay and cancel: who
    /// they are, not the spelling of their token (tokens rotate); `None`
    /// for an anonymous caller (then the `Authorization` header, if any).
    ///
    /// Each starts with a line feed, which no header value can hold, so no
    /// anonymous caller's `Authorization` header can spell one.
    pub fn key_scope(&self) -> Option<String> {
        match self {
            Caller::Buyer(id) => Some(format!("\nbuyer:{id}")),
            Caller::Admin => Some("\nadmin".to_owned()),
            Caller::Payment => Some("\npayment".to_owned()),
            Caller::Anonymous => None,
        }
    }

    /// Whether this caller may see an order that belongs to `owner`. A buyer
    /// who may not is answered 404, so the order's existence is not revealed.
    pub fn may_read(&self, owner: Option<&str>) -> bool {
        match self {
            Caller::Anonymous | Caller::Admin | Caller::Payment => true,
            Caller::Buyer(id) => owner == Some(id.as_str()),
        }
    }

    /// Cancelling: a buyer their own orders, the admin any; the payment
    /// service does not cancel.
    pub fn may_cancel(&self, owner: Option<&str>) -> Result<bool, ApiError> {
        match self {
            Caller::Payment => Err(forbidden("the payment token cannot cancel orders")),
            other => Ok(other.may_read(owner)),
        }
    }

    /// Paying is the payment service's call (or the admin's). Without any
    /// service token configured and with buyers anonymous, anyone may pay,
    /// as in the original proof of concept.
    pub fn may_pay(&self, state: &AppState) -> Result<(), ApiError> {
        match self {
            Caller::Admin | Caller::Payment => Ok(()),
            Caller::Buyer(_) => Err(forbidden(
                "paying is confirmed by the payment service (PAYMENT_TOKEN), not by a buyer",
            )),
            Caller::Anonymous
                if state.config.payment_token.is_none() && state.config.admin_token.is_none() =>
            {
                Ok(())
            }
            Caller::Anonymous => Err(unauthorized(
                "paying needs Authorization: Bearer <PAYMENT_TOKEN> (or the admin token)",
            )),
        }
    }

    /// Listing every order and the per-product summaries: the admin's (and
    /// the payment service's, which reads orders) once buyers have
    /// identities; anyone's while buyers are anonymous.
    pub fn may_see_all(&self) -> Result<(), ApiError> {
        match self {
            Caller::Anonymous | Caller::Admin | Caller::Payment => Ok(()),
            Caller::Buyer(_) => Err(forbidden("this needs the admin token")),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts);
        if let Some(t) = token {
            if let Some(admin) = &state.config.admin_token
                && equal_in_constant_time(t, admin.expose())
            {
                return Ok(Caller::Admin);
            }
            if let Some(payment) = &state.config.payment_token
                && equal_in_constant_time(t, payment.expose())
            {
                return Ok(Caller::Payment);
            }
        }
        let Some(buyers) = &state.buyers else {
            return Ok(Caller::Anonymous);
        };
        let Some(token) = token else {
            return Err(unauthorized(
                "this needs a buyer's token: Authorization: Bearer <JWT>",
            ));
        };
        buyers.verify(token).map(Caller::Buyer)
    }
}

/// Verifies buyers' JWTs.
pub struct BuyerTokens {
    key: DecodingKey,
    validation: Validation,
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

impl BuyerTokens {
    /// From the configured key: HS256 for a secret; RS256 or ES256 for a
    /// PEM public key, by its kind.
    pub fn new(config: &BuyerJwt) -> anyhow::Result<Self> {
        let (key, algorithm) = match &config.key {
            BuyerKey::Secret(secret) => (
                DecodingKey::from_secret(secret.expose().as_bytes()),
                Algorithm::HS256,
            ),
            BuyerKey::PublicKeyPem(pem) => {
                if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                    (key, Algorithm::RS256)
                } else if let Ok(key) = DecodingKey::from_ec_pem(pem.as_bytes()) {
                    (key, Algorithm::ES256)
                } else {
                    anyhow::bail!(
                        "BUYER_JWT_PUBLIC_KEY_FILE holds neither an RSA nor an EC public key in PEM"
                    );
                }
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // A configured issuer or audience must be present, not only right
        // when present.
        let mut required = vec!["exp", "sub"];
        match &config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Self { key, validation })
    }

    /// The buyer id (`sub`) of a valid token.
    pub fn verify(&self, token: &str) -> Result<String, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| unauthorized(format!("the buyer's token is not valid: {e}")))?;
        let sub = data.claims.sub;
        // Stored with a binary, space-padding collation: a `sub` with edge
        // spaces could be taken for another buyer's, so it is refused.
        if sub.is_empty() || sub.len() > MAX_BUYER_ID || sub.trim() != sub {
            return Err(unauthorized(format!(
                "the buyer's token names no buyer: sub must be 1 to {MAX_BUYER_ID} bytes, \
                 without leading or trailing spaces"
            )));
        }
        Ok(sub)
    }
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::client(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
}

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::client(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
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
