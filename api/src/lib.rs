//! The flashstock HTTP api.
//!
//! - [`startup`]: `Application::build(config)` wires everything; `run_until_stopped` serves.
//! - [`serve`]: the accept loop, with a deadline on request headers.
//! - [`routes`]: one module per resource (products, inventory, orders, health).
//! - [`recorder`]: recording orders in batches, one commit for many.
//! - [`publisher`]: publishing orders with confirms, the relay, decision notices.
//! - [`auth`]: the admin boundary (`ADMIN_TOKEN`).
//! - [`error`], [`envelope`], [`extract`]: the response envelope and our extractors.
//! - [`metrics`]: counters served at `/metrics`.
//! - [`openapi`]: the OpenAPI document derived from the handlers.

pub mod auth;
pub mod envelope;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod pagination;
pub mod publisher;
pub mod recorder;
pub mod routes;
pub mod serve;
pub mod startup;
pub mod state;

pub use startup::Application;
