//! The flashstock HTTP api.
//!
//! - [`startup`]: `Application::build(config)` wires everything; `run_until_stopped` serves.
//! - [`receive`]: a request's body read in full, within its deadline, before any handler
//!   (the accept loop is `shared::http`).
//! - [`routes`]: one module per resource (products, inventory, orders, health).
//! - [`admission`]: shedding orders past capacity (503 `OVERLOADED`).
//! - [`recorder`]: recording orders in batches, one commit for many.
//! - [`publisher`]: publishing orders with confirms.
//! - [`outbox`]: which recorded orders are not yet confirmed on the broker.
//! - [`relay`]: republishing what this api, or a dead one, could not publish.
//! - [`decisions`]: hearing decision notices; [`waiters`]: requests waiting
//!   on them; [`sold_out`]: the sold-out hint.
//! - [`auth`]: who may do what (admin and payment tokens, buyers' JWTs).
//! - [`conditional`]: `ETag`, `If-None-Match`, `If-Match`.
//! - [`idempotency`]: `Idempotency-Key`, scoped and hashed.
//! - [`error`], [`envelope`], [`extract`]: the response envelope and our extractors.
//! - [`metrics`]: counters served at `/metrics`.
//! - [`openapi`]: the OpenAPI document derived from the handlers.

pub mod admission;
pub mod auth;
pub mod conditional;
pub mod decisions;
pub mod envelope;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod metrics;
pub mod openapi;
pub mod outbox;
pub mod pagination;
pub mod publisher;
pub mod receive;
pub mod recorder;
pub mod relay;
pub mod routes;
pub mod settle;
pub mod sold_out;
pub mod startup;
pub mod state;
pub mod waiters;

pub use startup::Application;
