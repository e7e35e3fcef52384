//! Building and running the api.

use crate::admission::{self, Admission};
use crate::decisions::{self, Listeners};
use crate::envelope::{ErrorBody, respond};
use crate::openapi;
use crate::outbox::Outbox;
use crate::publisher::Publisher;
use crate::recorder::Recorder;
use crate::relay::Relay;
use crate::sold_out::SoldOut;
use crate::state::{AppState, Shared};
use crate::waiters::Waiters;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use shared::Config;
use shared::broker::{BrokerLink, Topology};
use shared::error_code::ErrorCode;
use shared::http::connections::Registry;
use shared::http::serve::{Limits, serve};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Largest request body accepted; an order or a product is a few dozen bytes.
const BODY_LIMIT: usize = 64 * 1024;

/// The api, bound to its port and ready to serve.
pub struct Application {
    listener: TcpListener,
    router: Router,
    /// `/metrics` on a listener of its own (`API_METRICS_ADDR`), if set.
    metrics: Option<(TcpListener, Router)>,
    limits: Limits,
    connections: Arc<Registry>,
    shutdown: CancellationToken,
    relay: tokio::task::JoinHandle<()>,
}

impl Application {
    /// Connects to the database (creating and migrating it) and the broker
    /// (declaring the topology; refusing on a partition mismatch), starts the
    /// background tasks, and binds `API_ADDR` (port 0 picks a free port).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let db = shared::db::connect(&config).await?;
        let topology = Topology::from_config(&config);
        let api_id = format!(
            "api-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let link = BrokerLink::start(
            config.amqp_url.clone(),
            format!("flashstock {api_id}"),
            topology.clone(),
            shutdown.clone(),
        )
        .await?;
        let publisher = Publisher::new(link.clone(), topology.clone());
        let outbox = Outbox::default();
        // In the api list before the first order, so that if this api dies,
        // another one claims what it could not publish.
        shared::db::apis::heartbeat(&db, &api_id, outbox.watermark()).await?;
        let waiters = Waiters::default();
        let sold_out = SoldOut::default();
        let admission = Admission::new(topology.partitions(), config.admission_max_delay);
        tokio::spawn(decisions::run_decision_listener(
            link.clone(),
            topology,
            api_id.clone(),
            Listeners {
                waiters: waiters.clone(),
                sold_out: sold_out.clone(),
                admission: admission.clone(),
                metrics: publisher.metrics.clone(),
            },
            shutdown.clone(),
        ));
        tokio::spawn(admission::run_reconciler(
            db.clone(),
            admission.clone(),
            shutdown.clone(),
        ));
        let relay = tokio::spawn(
            Relay {
                db: db.clone(),
                publisher: publisher.clone(),
                outbox: outbox.clone(),
                api_id: api_id.clone(),
                interval: config.relay_interval,
                lease: config.lease_duration,
            }
            .run(shutdown.clone()),
        );
        let buyers = match &config.buyer_jwt {
            Some(jwt) => Some(Arc::new(crate::auth::BuyerTokens::new(jwt)?)),
            None => {
                tracing::warn!(
                    "BUYER_JWT_SECRET and BUYER_JWT_PUBLIC_KEY_FILE are not set: buyers are anonymous, \
                     anyone can read and cancel any order"
                );
                None
            }
        };
        if config.admin_token.is_none() {
            tracing::warn!("ADMIN_TOKEN is not set: anyone can create products and change stock");
        }
        let addr = config.api_addr;
        let listener = listen(addr).map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {addr} (API_ADDR): {e}; stop what uses it or set API_ADDR to another address"
            )
        })?;
        let metrics_listener = match config.api_metrics_addr {
            Some(addr) => Some(listen(addr).map_err(|e| {
                anyhow::anyhow!(
                    "cannot serve /metrics on {addr} (API_METRICS_ADDR): {e}; stop what uses it \
                     or set API_METRICS_ADDR to another address"
                )
            })?),
            None => {
                tracing::warn!(
                    "API_METRICS_ADDR is not set: /metrics (sale volumes, shed counts) is served \
                     to anyone who reaches API_ADDR"
                );
                None
            }
        };
        let limits = Limits {
            header_read_timeout: config.header_read_timeout,
            max_connections: connection_limit(&config),
        };
        let connections = Arc::new(Registry::default());
        tracing::info!(%api_id, "api started");
        let state = AppState::new(Shared {
            recorder: Recorder::start(
                db.clone(),
                publisher.clone(),
                outbox.clone(),
                sold_out,
                &api_id,
                config.order_events,
            ),
            db,
            publisher,
            waiters,
            admission,
            outbox,
            known_products: Arc::default(),
            buyers,
            waiting_slots: Arc::new(tokio::sync::Semaphore::new(config.max_waiting as usize)),
            connections: connections.clone(),
            config: Arc::new(config),
        });
        Ok(Self {
            listener,
            metrics: metrics_listener.map(|l| (l, metrics_router(state.clone()))),
            router: router(state),
            limits,
            connections,
            shutdown,
            relay,
        })
    }

    /// The port the api listens on.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The port `/metrics` is served on when `API_METRICS_ADDR` is set.
    pub fn metrics_port(&self) -> Option<u16> {
        let (listener, _) = self.metrics.as_ref()?;
        listener.local_addr().map(|a| a.port()).ok()
    }

    /// Serves until `stop` fires, then stops accepting, drains in-flight
    /// requests and stops the background tasks.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> std::io::Result<()> {
        // Prometheus, and whoever else may reach the private address: a few
        // connections are plenty.
        let metrics = self.metrics.map(|(listener, router)| {
            let limits = Limits {
                max_connections: METRICS_CONNECTIONS,
                ..self.limits
            };
            tokio::spawn(serve(
                listener,
                router,
                limits,
                Arc::default(),
                stop.clone(),
            ))
        });
        serve(
            self.listener,
            self.router,
            self.limits,
            self.connections,
            stop,
        )
        .await;
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        self.shutdown.cancel();
        // The relay hands over what is still unpublished before it ends.
        let _ = self.relay.await;
        Ok(())
    }
}

/// Most connections the `API_METRICS_ADDR` listener holds.
const METRICS_CONNECTIONS: usize = 64;

/// `GET /metrics`: Prometheus text.
async fn get_metrics(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.publisher.metrics.render(&state.gauges()),
    )
        .into_response()
}

/// The router of the `API_METRICS_ADDR` listener: `/metrics` alone.
fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(get_metrics))
        .layer(axum::middleware::from_fn(shared::http::busy_while_handled))
        .with_state(state)
}

/// File descriptors kept back from client connections: the database pool
/// (added below), the broker, logs, and the connections that linger while
/// they close, here and on the metrics listener.
const RESERVED_FILES: u64 =
    128 + 2 * shared::http::serve::MAX_CLOSING as u64 + METRICS_CONNECTIONS as u64;

/// `MAX_CONNECTIONS`, or fewer when the open-file limit (raised to its hard
/// limit first) cannot hold that many beside what the api needs itself.
fn connection_limit(config: &Config) -> usize {
    let wanted = config.max_connections as usize;
    let Some(files) = shared::limits::raise_open_files() else {
        return wanted;
    };
    let room = files.saturating_sub(RESERVED_FILES + u64::from(config.database_max_connections));
    if (wanted as u64) <= room {
        return wanted;
    }
    let limit = room.max(1) as usize;
    tracing::warn!(
        max_connections = wanted,
        open_file_limit = files,
        using = limit,
        "the open-file limit cannot hold MAX_CONNECTIONS connections; raise the limit (ulimit -n) or lower MAX_CONNECTIONS"
    );
    limit
}

/// The whole router: every route, the spec, the envelope for 404 and 405;
/// `/metrics` too, unless it has a listener of its own (`API_METRICS_ADDR`).
pub fn router(state: AppState) -> Router {
    let request_timeout = state.config.request_timeout;
    let header_read_timeout = state.config.header_read_timeout;
    let cors = cors(&state.config.cors_allowed_origins);
    let (mut routes, _) = crate::routes::router().split_for_parts();
    if state.config.api_metrics_addr.is_none() {
        routes = routes.route("/metrics", get(get_metrics));
    }
    let spec = openapi::document_json();
    routes
        .route(
            "/api/openapi.json",
            get(move || async move { ([("content-type", "application/json")], spec) }),
        )
        .fallback(|| async {
            respond(
                StatusCode::NOT_FOUND,
                ErrorBody {
                    error: ErrorCode::NotFound,
                    message: "no such route".into(),
                },
            )
        })
        .method_not_allowed_fallback(|| async {
            respond(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorBody {
                    error: ErrorCode::MethodNotAllowed,
                    message: "this route does not take that method".into(),
                },
            )
            .into_response()
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(
            move |mut request: axum::extract::Request, next: axum::middleware::Next| async move {
                let claimed = crate::recorder::Claimed::default();
                request.extensions_mut().insert(claimed.clone());
                let handling = next.run(request);
                tokio::pin!(handling);
                // A handler stuck: answer rather than hold on.
                let mut response = match tokio::time::timeout(request_timeout, &mut handling).await {
                    Ok(response) => response,
                    // Its order is being recorded: the answer must say what
                    // became of it, never that it timed out.
                    Err(_) if !claimed.abandon() => handling.await,
                    Err(_) => respond(
                        StatusCode::REQUEST_TIMEOUT,
                        ErrorBody {
                            error: ErrorCode::RequestTimeout,
                            message: format!(
                                "the request was not completed within {request_timeout:?} (REQUEST_TIMEOUT)"
                            ),
                        },
                    )
                    .into_response(),
                };
                // A body cut short by the limit, or a timed-out request:
                // hyper closes the connection after this response, so say
                // so, or a client may send its next request down a
                // connection about to close.
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
        // The whole request is read before any handler (or the timeout
        // above) runs, within HEADER_READ_TIMEOUT; only then is its
        // connection busy (shared/src/http).
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                crate::receive::receive(header_read_timeout, BODY_LIMIT, request, next)
            },
        ))
        // Outermost but for the trace: a preflight is answered before any
        // timeout or handler, and every answer carries the CORS headers.
        .layer(cors)
        .layer(axum::middleware::from_fn(preflight_no_content))
        // Responses above 1 KiB go out gzip- or brotli-compressed when the
        // client accepts it (lists, the OpenAPI document).
        .layer(
            tower_http::compression::CompressionLayer::new()
                .compress_when(tower_http::compression::predicate::SizeAbove::new(1024)),
        )
        // A 5xx is logged where it arises (an internal error at ERROR, the
        // database down at WARN); a shed order (503 OVERLOADED) is expected
        // past capacity and must not flood the log, so the trace layer's
        // own failure line is DEBUG. Every request's span carries its
        // request id, so its log lines can be found from the client's side.
        .layer(tower_http::request_id::PropagateRequestIdLayer::x_request_id())
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(|request: &axum::http::Request<_>| {
                    let id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!("request", method = %request.method(), uri = %request.uri(), request_id = %id)
                })
                .on_failure(
                    tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
                ),
        )
        // Outermost: a request without a usable `x-request-id` gets a fresh
        // one (a client's id goes on log lines: at most 64 plain characters).
        .layer(tower_http::request_id::SetRequestIdLayer::x_request_id(
            tower_http::request_id::MakeRequestUuid,
        ))
        .layer(axum::middleware::map_request(drop_unusable_request_id))
        .with_state(state)
}

/// CORS for `origins` (`*`: any); none at all when the list is empty.
fn cors(
    origins: &[String],
) -> tower::util::Either<tower_http::cors::CorsLayer, tower::layer::util::Identity> {
    use axum::http::{HeaderName, HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return tower::util::Either::Right(tower::layer::util::Identity::new());
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let layer = CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("prefer"),
            HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            header::LOCATION,
            header::RETRY_AFTER,
            header::ETAG,
            header::LINK,
            HeaderName::from_static("idempotent-replayed"),
            HeaderName::from_static("preference-applied"),
            HeaderName::from_static("x-request-id"),
        ])
        .max_age(Duration::from_secs(600));
    tower::util::Either::Left(layer)
}

/// Removes an `x-request-id` longer than 64 characters or with anything but
/// letters, digits, `.`, `_` and `-`, so that a fresh one is made.
async fn drop_unusable_request_id(mut request: axum::extract::Request) -> axum::extract::Request {
    let usable = request.headers().get("x-request-id").is_none_or(|v| {
        let b = v.as_bytes();
        !b.is_empty()
            && b.len() <= 64
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
    });
    if !usable {
        request.headers_mut().remove("x-request-id");
    }
    request
}

/// A CORS preflight is answered 204 No Content (tower-http answers 200).
async fn preflight_no_content(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let preflight = request.method() == axum::http::Method::OPTIONS
        && request
            .headers()
            .contains_key(axum::http::header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = next.run(request).await;
    if preflight && response.status() == StatusCode::OK {
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    response
}

/// Most connections waiting to be accepted. tokio's `bind` asks for 1,024:
/// a sale's first second, when a thousand clients connect at once, then
/// overflowed it and some waited a whole SYN retransmission (a 1.1 s
/// outlier in every 1,024-client run). The kernel caps it at `somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `addr` with [`LISTEN_BACKLOG`] (and, on Unix,
/// `SO_REUSEADDR`, as tokio's `bind` sets).
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
