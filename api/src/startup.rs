//! Building and running the api.

use crate::envelope::{ErrorBody, respond};
use crate::openapi;
use crate::publisher::{self, Publisher, Waiters};
use crate::recorder::{Recorder, SoldOut};
use crate::state::AppState;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use shared::Config;
use shared::broker::{BrokerLink, Topology};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Largest request body accepted; an order or a product is a few dozen bytes.
const BODY_LIMIT: usize = 64 * 1024;

/// The api, bound to its port and ready to serve.
pub struct Application {
    listener: TcpListener,
    router: Router,
    header_read_timeout: std::time::Duration,
    shutdown: CancellationToken,
}

impl Application {
    /// Connects to the database (creating and migrating it) and the broker
    /// (declaring the topology; refusing on a partition mismatch), starts the
    /// background tasks, and binds `API_ADDR` (port 0 picks a free port).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let db = shared::db::connect(&config).await?;
        let topology = Topology::from_config(&config);
        let link = BrokerLink::start(
            config.amqp_url.clone(),
            format!("flashstock-api {}", std::process::id()),
            topology.clone(),
            shutdown.clone(),
        )
        .await?;
        let publisher = Publisher::new(link.clone(), topology.clone());
        let waiters = Waiters::default();
        let sold_out = SoldOut::default();
        tokio::spawn(publisher::run_decision_listener(
            link.clone(),
            topology,
            waiters.clone(),
            sold_out.clone(),
            publisher.metrics.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(publisher::run_relay(
            db.clone(),
            publisher.clone(),
            config.relay_interval,
            config.relay_after,
            shutdown.clone(),
        ));
        if config.admin_token.is_none() {
            tracing::warn!("ADMIN_TOKEN is not set: anyone can create products and change stock");
        }
        let listener = TcpListener::bind(config.api_addr).await?;
        let header_read_timeout = config.header_read_timeout;
        let state = AppState {
            recorder: Recorder::start(db.clone(), publisher.clone(), sold_out),
            db,
            publisher,
            waiters,
            known_products: Arc::default(),
            waiting_slots: Arc::new(tokio::sync::Semaphore::new(config.max_waiting as usize)),
            config: Arc::new(config),
        };
        Ok(Self {
            listener,
            router: router(state),
            header_read_timeout,
            shutdown,
        })
    }

    /// The port the api listens on.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until `stop` fires, then stops accepting, drains in-flight
    /// requests and stops the background tasks.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> std::io::Result<()> {
        crate::serve::serve(self.listener, self.router, self.header_read_timeout, stop).await;
        self.shutdown.cancel();
        Ok(())
    }
}

/// The whole router: every route, the spec, the envelope for 404 and 405.
pub fn router(state: AppState) -> Router {
    let request_timeout = state.config.request_timeout;
    let (routes, _) = crate::routes::router().split_for_parts();
    let spec = openapi::document_json();
    routes
        .route(
            "/metrics",
            get(
                |axum::extract::State(state): axum::extract::State<AppState>| async move {
                    (
                        [("content-type", "text/plain; version=0.0.4")],
                        state
                            .publisher
                            .metrics
                            .render(state.publisher.is_connected()),
                    )
                },
            ),
        )
        .route(
            "/api/openapi.json",
            get(move || async move { ([("content-type", "application/json")], spec) }),
        )
        .fallback(|| async {
            respond(
                StatusCode::NOT_FOUND,
                ErrorBody {
                    error: "NOT_FOUND".into(),
                    message: "no such route".into(),
                },
            )
        })
        .method_not_allowed_fallback(|| async {
            respond(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorBody {
                    error: "METHOD_NOT_ALLOWED".into(),
                    message: "this route does not take that method".into(),
                },
            )
            .into_response()
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| async move {
                // A body trickled in or a handler stuck: answer rather than hold on.
                let mut response = match tokio::time::timeout(request_timeout, next.run(request)).await {
                    Ok(response) => response,
                    Err(_) => respond(
                        StatusCode::REQUEST_TIMEOUT,
                        ErrorBody {
                            error: "REQUEST_TIMEOUT".into(),
                            message: format!(
                                "the request was not completed within {request_timeout:?} (REQUEST_TIMEOUT)"
                            ),
                        },
                    )
                    .into_response(),
                };
                // Answered before the body was read: hyper closes the
                // connection after this response, so say so, or a client may
                // send its next request down a connection about to close.
                if matches!(
                    response.status(),
                    StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
                ) {
                    response.headers_mut().insert(
                        axum::http::header::CONNECTION,
                        axum::http::HeaderValue::from_static("close"),
                    );
                }
                response
            },
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}
