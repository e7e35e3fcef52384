//! Extractors whose rejections go through [`ApiError`], so malformed input
//! gets our envelope instead of axum's plain text.

use crate::error::ApiError;
use axum::extract::{FromRequest, FromRequestParts};
use shared::error_code::ErrorCode;

/// A JSON body that must be an object: an array or a scalar is a 422, as
/// is an object that does not fit `T` (a missing or unknown field is named;
/// no line or column, no parser internals).
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(value) = axum::Json::<serde_json::Value>::from_request(req, state).await?;
        if !value.is_object() {
            return Err(invalid_body("the body must be a JSON object"));
        }
        serde_json::from_value(value)
            .map(AppJson)
            .map_err(|e| invalid_body(format!("the body does not fit: {e}")))
    }
}

fn invalid_body(message: impl Into<String>) -> ApiError {
    ApiError::client(
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::InvalidBody,
        message,
    )
}

/// Path parameters.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct AppPath<T>(pub T);

/// Query string.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct AppQuery<T>(pub T);

/// An integer field read leniently: a value of another JSON type is kept
/// (as text) rather than failing the whole body, so the handler answers
/// with the field's own error code: `"total": "1"` is `INVALID_TOTAL`, as
/// `"total": 0` is. One field, one code.
#[derive(Debug, Clone)]
pub struct IntField {
    value: Option<i64>,
    raw: String,
}

/// A client's value as an error message echoes it: JSON, at most 40 bytes.
fn echo(value: &serde_json::Value) -> String {
    let mut raw = value.to_string();
    if raw.len() > 40 {
        let cut = (0..=40)
            .rev()
            .find(|&i| raw.is_char_boundary(i))
            .unwrap_or(0);
        raw.truncate(cut);
        raw.push('…');
    }
    raw
}

impl<'de> serde::Deserialize<'de> for IntField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        Ok(Self {
            value: value.as_i64(),
            raw: echo(&value),
        })
    }
}

/// Any other field read leniently, for the same reason as [`IntField`]: it
/// keeps whatever JSON came, and [`Field::parse`] turns it into a `T` or
/// answers with the field's own code (`"name": 5` is `INVALID_NAME`, as an
/// empty name is).
#[derive(Debug, Clone)]
pub struct Field<T> {
    value: serde_json::Value,
    _type: std::marker::PhantomData<T>,
}

impl<'de, T> serde::Deserialize<'de> for Field<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self {
            value: serde_json::Value::deserialize(d)?,
            _type: std::marker::PhantomData,
        })
    }
}

impl<T: serde::de::DeserializeOwned> Field<T> {
    /// The value as a `T`, or a 422 with `code` saying what `field` must be.
    pub fn parse(&self, code: ErrorCode, field: &str, must: &str) -> Result<T, ApiError> {
        T::deserialize(&self.value).map_err(|_| {
            ApiError::client(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                code,
                format!("{field} must be {must}, got {}", echo(&self.value)),
            )
        })
    }
}

impl IntField {
    /// The integer, or a 422 with `code` saying what `field` must be.
    pub fn integer(&self, code: ErrorCode, field: &str, must: &str) -> Result<i64, ApiError> {
        self.value.ok_or_else(|| {
            ApiError::client(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                code,
                format!("{field} must be {must}, got {}", self.raw),
            )
        })
    }
}
