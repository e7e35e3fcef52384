//! Serving HTTP/1.1 so that no idle, slow or silent client can take a
//! listener down: the accept loop ([`serve`]) and its record of which
//! connections are busy ([`connections`]). The api serves its routes this
//! way, and the api and the workers their `/metrics`.
//!
//! A router served here marks each request busy once it holds the whole
//! request, and keeps it busy until the answer is written: the api's
//! `receive` layer does so after reading the body; [`busy_while_handled`]
//! does so for routers that read no bodies.

pub mod connections;
pub mod serve;

pub use connections::{Activity, Busy};
pub use serve::serve;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::pin::Pin;
use std::task::{Context, Poll};

/// `response`, whose connection stays busy until its body has been written
/// (and dropped).
pub fn track(response: Response, busy: Busy) -> Response {
    busy.writing();
    response.map(|inner| Body::new(Tracked { inner, _busy: busy }))
}

/// A middleware for routers that take no request bodies (`/metrics`): the
/// connection is busy from the request's arrival until its answer is
/// written. A connection already chosen to make room gets a bare 503.
pub async fn busy_while_handled(request: Request, next: Next) -> Response {
    let Some(activity) = request.extensions().get::<Activity>().cloned() else {
        return next.run(request).await;
    };
    match activity.begin() {
        Some(busy) => track(next.run(request).await, busy),
        None => {
            let mut response = StatusCode::SERVICE_UNAVAILABLE.into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}

/// A response body that keeps its connection busy until it is dropped.
struct Tracked {
    inner: Body,
    _busy: Busy,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
