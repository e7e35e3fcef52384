//! Code shared by the flashstock `api` and `worker`.
//!
//! - [`config`]: configuration from the environment.
//! - [`domain`]: parsed domain types (`ProductId`, `OrderId`, `Quantity`, `OrderStatus`, …).
//! - [`error_code`]: the machine-readable codes of error answers.
//! - [`db`]: connecting, migrating, and the shared queries.
//! - [`broker`]: RabbitMQ names, topology and a self-healing connection.
//! - [`partition`]: which partition a product's orders go to.
//! - [`message`]: what travels over the broker.
//! - [`events`]: order events (CloudEvents) on the events stream.
//! - [`webhooks`]: the endpoints events are POSTed to, and their signatures.
//! - [`telemetry`]: logging setup.
//! - [`time`]: times as answers and events carry them (six fractional digits).
//! - [`http`]: serving HTTP/1.1 so that no idle, slow or silent client can take a listener down.
//! - [`limits`]: the process's open-file limit.
//! - [`fault`]: fault points for the fault-injection tests (debug builds only).

pub mod broker;
pub mod config;
pub mod db;
pub mod domain;
pub mod error_code;
pub mod events;
pub mod fault;
pub mod http;
pub mod limits;
pub mod message;
pub mod partition;
pub mod prometheus;
pub mod shutdown;
pub mod telemetry;
pub mod time;
pub mod webhooks;

pub use config::Config;
