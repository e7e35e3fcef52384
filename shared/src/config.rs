//! Configuration read from the environment (a `.env` file is optional).
//!
//! Every variable has a default that works against a local MariaDB and
//! RabbitMQ; a value that does not parse is an error naming the variable.

use std::net::SocketAddr;
use std::time::Duration;

/// A configuration value that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid value for {variable}: {message}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub variable: &'static str,
    /// What is wrong with its value.
    pub message: String,
}

/// Everything the api and the worker read from the environment. Its
/// `Debug` hides the passwords in the URLs and every token.
#[derive(Clone)]
pub struct Config {
    /// `DATABASE_URL`: the MySQL/MariaDB database; created if missing. It
    /// may list the servers of a primary and its replicas
    /// (`mysql://u:p@db1:3306/flashstock,db2,db3:3307`): flashstock then uses
    /// only the writable one ([`crate::db::servers`]).
    pub database_url: String,
    /// `AMQP_URL`: the RabbitMQ broker, or the nodes of one cluster separated
    /// by commas ([`crate::broker::Addresses`]).
    pub amqp_url: String,
    /// `QUORUM_INITIAL_GROUP_SIZE`: replicas of each new quorum queue; unset
    /// leaves it to the broker (every node of the cluster, up to 3).
    pub quorum_initial_group_size: Option<u16>,
    /// `BROKER_NAMESPACE`: prefix of every exchange and queue name.
    pub broker_namespace: String,
    /// `ORDER_PARTITIONS`: number of partition queues; api and workers must agree.
    pub order_partitions: u16,
    /// `API_ADDR`: where the api listens.
    pub api_addr: SocketAddr,
    /// `WORKER_METRICS_ADDR`: where a worker serves `/metrics`.
    pub worker_metrics_addr: SocketAddr,
    /// `RESERVATION_TTL`: how long an accepted, unpaid order holds its units.
    pub reservation_ttl: Duration,
    /// `MAX_ORDER_TOTAL`: the largest `total` one order may ask for.
    pub max_order_total: u32,
    /// `MAX_WAIT`: the longest `Prefer: wait` the api honours.
    pub max_wait: Duration,
    /// `DATABASE_MAX_CONNECTIONS`: size of each process's connection pool.
    pub database_max_connections: u32,
    /// `RELAY_INTERVAL`: how often each api heartbeats and its relay
    /// publishes what this api, or a dead one, could not.
    pub relay_interval: Duration,
    /// `ADMISSION_MAX_DELAY`: the longest an admitted order should wait for
    /// its decision; past it, new orders are shed (503 `OVERLOADED`). Zero
    /// turns admission control off.
    pub admission_max_delay: Duration,
    /// `QUEUE_MAX_LENGTH`: messages a partition queue holds before the
    /// broker refuses more (a backstop behind admission control).
    pub queue_max_length: u32,
    /// `WORKER_BATCH_SIZE`: most orders one deciding transaction takes.
    pub worker_batch_size: u16,
    /// `SWEEP_INTERVAL`: how often each worker expires overdue reservations.
    pub sweep_interval: Duration,
    /// `LEASE_DURATION`: how long a partition lease (and a worker's
    /// liveness) lasts without renewal.
    pub lease_duration: Duration,
    /// `HEARTBEAT_INTERVAL`: how often workers heartbeat, renew leases and rebalance.
    pub heartbeat_interval: Duration,
    /// `DELIVERY_LIMIT`: deliveries of one message before it is dead-lettered.
    pub delivery_limit: u32,
    /// `LOG_FORMAT`: `json` for JSON logs, anything else for human-readable ones.
    pub log_json: bool,
    /// `ADMIN_TOKEN`: when set, product creation, inventory writes and the
    /// admin endpoints require `Authorization: Bearer <token>`. At least 32
    /// bytes, and not the placeholder of the examples.
    pub admin_token: Option<Secret>,
    /// `MAX_WAITING`: most requests waiting with `Prefer: wait` at once;
    /// beyond it a request is answered at once (202) instead of waiting.
    pub max_waiting: u32,
    /// `REQUEST_TIMEOUT`: longest an api request's handling may take once
    /// the whole request has arrived (408 after it); must exceed `MAX_WAIT`.
    pub request_timeout: Duration,
    /// `HEADER_READ_TIMEOUT`: longest a connection may take to send a
    /// request's head (from its opening, or from the end of its previous
    /// answer), and then again its body, before the api closes it.
    pub header_read_timeout: Duration,
    /// `MAX_CONNECTIONS`: most client connections the api keeps open at
    /// once; past it the one idle the longest is closed for a new one.
    pub max_connections: u32,
    /// `PAYMENT_TOKEN`: the payment service's bearer token; with it (or the
    /// admin token) `POST /api/orders/{id}/pay` is allowed. At least 32
    /// bytes, and not the placeholder of the examples.
    pub payment_token: Option<Secret>,
    /// `API_METRICS_ADDR`: when set, the api serves `/metrics` there (a
    /// listener of its own, for Prometheus on a private network) and not
    /// on `API_ADDR`.
    pub api_metrics_addr: Option<SocketAddr>,
    /// How buyers' tokens are verified; `None` leaves buyers anonymous.
    pub buyer_jwt: Option<BuyerJwt>,
    /// `CORS_ALLOWED_ORIGINS`: origins (`https://shop.example`) whose pages
    /// may call the api from a browser, or `*` for any; empty: no CORS.
    pub cors_allowed_origins: Vec<String>,
    /// `ORDER_EVENTS`: `on` records every transition's event and publishes
    /// it to the events stream; `off` records and publishes none.
    pub order_events: bool,
    /// `EVENTS_MAX_AGE`: how long the events stream keeps an event.
    pub events_max_age: Duration,
    /// `EVENTS_MAX_BYTES`: how large the events stream may grow before its
    /// oldest events are dropped.
    pub events_max_bytes: u64,
    /// `WEBHOOKS_FILE`: a JSON file of the endpoints the workers POST each
    /// event to ([`crate::webhooks`]); unset: none.
    pub webhooks: Vec<crate::webhooks::Endpoint>,
}

/// `BUYER_JWT_*`: buyers' bearer tokens are JWTs from the shop's identity
/// provider, verified with this key; `sub` is the buyer.
#[derive(Debug, Clone)]
pub struct BuyerJwt {
    /// The verifying key.
    pub key: BuyerKey,
    /// `BUYER_JWT_ISSUER`: the `iss` a token must carry, when set.
    pub issuer: Option<String>,
    /// `BUYER_JWT_AUDIENCE`: an `aud` a token must carry, when set.
    pub audience: Option<String>,
}

/// The key buyers' tokens are signed with.
#[derive(Debug, Clone)]
pub enum BuyerKey {
    /// `BUYER_JWT_SECRET`: a shared HS256 secret.
    Secret(Secret),
    /// `BUYER_JWT_PUBLIC_KEY_FILE`: a PEM public key (RSA for RS256, EC P-256
    /// for ES256), read at start.
    PublicKeyPem(String),
}

/// A value that must never be printed: its `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for comparing; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured without `..`, so a new field cannot be added without
        // deciding here whether it may be printed.
        let Config {
            database_url,
            amqp_url,
            quorum_initial_group_size,
            broker_namespace,
            order_partitions,
            api_addr,
            worker_metrics_addr,
            reservation_ttl,
            max_order_total,
            max_wait,
            database_max_connections,
            relay_interval,
            admission_max_delay,
            queue_max_length,
            worker_batch_size,
            sweep_interval,
            lease_duration,
            heartbeat_interval,
            delivery_limit,
            log_json,
            admin_token,
            max_waiting,
            request_timeout,
            header_read_timeout,
            max_connections,
            payment_token,
            api_metrics_addr,
            buyer_jwt,
            cors_allowed_origins,
            order_events,
            events_max_age,
            events_max_bytes,
            webhooks,
        } = self;
        f.debug_struct("Config")
            .field("database_url", &without_password(database_url))
            .field("amqp_url", &without_amqp_passwords(amqp_url))
            .field("quorum_initial_group_size", quorum_initial_group_size)
            .field("broker_namespace", broker_namespace)
            .field("order_partitions", order_partitions)
            .field("api_addr", api_addr)
            .field("worker_metrics_addr", worker_metrics_addr)
            .field("reservation_ttl", reservation_ttl)
            .field("max_order_total", max_order_total)
            .field("max_wait", max_wait)
            .field("database_max_connections", database_max_connections)
            .field("relay_interval", relay_interval)
            .field("admission_max_delay", admission_max_delay)
            .field("queue_max_length", queue_max_length)
            .field("worker_batch_size", worker_batch_size)
            .field("sweep_interval", sweep_interval)
            .field("lease_duration", lease_duration)
            .field("heartbeat_interval", heartbeat_interval)
            .field("delivery_limit", delivery_limit)
            .field("log_json", log_json)
            .field("admin_token", admin_token)
            .field("max_waiting", max_waiting)
            .field("request_timeout", request_timeout)
            .field("header_read_timeout", header_read_timeout)
            .field("max_connections", max_connections)
            .field("payment_token", payment_token)
            .field("api_metrics_addr", api_metrics_addr)
            .field("buyer_jwt", buyer_jwt)
            .field("cors_allowed_origins", cors_allowed_origins)
            .field("order_events", order_events)
            .field("events_max_age", events_max_age)
            .field("events_max_bytes", events_max_bytes)
            .field("webhooks", webhooks)
            .finish()
    }
}

/// `url` with the password in its user info replaced by `***`:
/// `mysql://app:***@db/flashstock`. The user info is taken to end at the
/// last `@`, so a password holding `/`, `?`, `#`, `,` or `@` is hidden
/// whole; an `@` further on (in a query) hides more than the password,
/// never less.
fn without_password(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    match rest.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{scheme}{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// `AMQP_URL` with every node's password hidden ([`without_password`]);
/// its nodes are separated by commas (a comma in a password is `%2C`).
fn without_amqp_passwords(nodes: &str) -> String {
    nodes
        .split(',')
        .map(without_password)
        .collect::<Vec<_>>()
        .join(",")
}

impl Config {
    /// Reads the configuration from the process environment, after loading
    /// `.env` when one exists.
    pub fn from_env() -> Result<Self, ConfigError> {
        let _ = dotenvy::dotenv();
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup`, so tests can supply values
    /// without touching the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &'static str, default: &str| -> (&'static str, String) {
            let value = lookup(name)
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| default.to_owned());
            (name, value.trim().to_owned())
        };
        let config = Config {
            database_url: database_url(get(
                "DATABASE_URL",
                "mysql://root@127.0.0.1:3306/flashstock",
            ))?,
            amqp_url: amqp_url(get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))?,
            quorum_initial_group_size: match get("QUORUM_INITIAL_GROUP_SIZE", "") {
                (_, v) if v.is_empty() => None,
                given => Some(number(given, 1, 255)?),
            },
            broker_namespace: namespace(get("BROKER_NAMESPACE", "flashstock"))?,
            order_partitions: number(get("ORDER_PARTITIONS", "16"), 1, 1024)?,
            api_addr: parse(get("API_ADDR", "0.0.0.0:3000"))?,
            worker_metrics_addr: parse(get("WORKER_METRICS_ADDR", "0.0.0.0:9091"))?,
            reservation_ttl: duration(get("RESERVATION_TTL", "15m"))?,
            max_order_total: number(get("MAX_ORDER_TOTAL", "1000"), 1, 1_000_000)?,
            max_wait: duration(get("MAX_WAIT", "30s"))?,
            database_max_connections: number(get("DATABASE_MAX_CONNECTIONS", "10"), 1, 1000)?,
            relay_interval: duration(get("RELAY_INTERVAL", "1s"))?,
            admission_max_delay: duration_or_zero(get("ADMISSION_MAX_DELAY", "3s"))?,
            queue_max_length: number(get("QUEUE_MAX_LENGTH", "50000"), 1, 100_000_000)?,
            worker_batch_size: number(get("WORKER_BATCH_SIZE", "500"), 1, 10_000)?,
            delivery_limit: number(get("DELIVERY_LIMIT", "20"), 1, 1000)?,
            sweep_interval: duration(get("SWEEP_INTERVAL", "1s"))?,
            lease_duration: duration(get("LEASE_DURATION", "5s"))?,
            heartbeat_interval: duration(get("HEARTBEAT_INTERVAL", "1s"))?,
            log_json: get("LOG_FORMAT", "text").1.eq_ignore_ascii_case("json"),
            admin_token: service_token(get("ADMIN_TOKEN", ""))?,
            max_waiting: number(get("MAX_WAITING", "1000"), 1, 1_000_000)?,
            request_timeout: duration(get("REQUEST_TIMEOUT", "60s"))?,
            header_read_timeout: duration(get("HEADER_READ_TIMEOUT", "10s"))?,
            max_connections: number(get("MAX_CONNECTIONS", "4096"), 1, 1_000_000)?,
            payment_token: service_token(get("PAYMENT_TOKEN", ""))?,
            api_metrics_addr: match get("API_METRICS_ADDR", "") {
                (_, v) if v.is_empty() => None,
                given => Some(parse(given)?),
            },
            cors_allowed_origins: origins(get("CORS_ALLOWED_ORIGINS", ""))?,
            order_events: switch(get("ORDER_EVENTS", "on"))?,
            events_max_age: duration(get("EVENTS_MAX_AGE", "7days"))?,
            events_max_bytes: number(
                get("EVENTS_MAX_BYTES", "2000000000"),
                1_000_000,
                1_000_000_000_000_000,
            )?,
            webhooks: webhooks(get("WEBHOOKS_FILE", ""))?,
            buyer_jwt: buyer_jwt(
                get("BUYER_JWT_SECRET", ""),
                get("BUYER_JWT_PUBLIC_KEY_FILE", ""),
                get("BUYER_JWT_ISSUER", "").1,
                get("BUYER_JWT_AUDIENCE", "").1,
            )?,
        };
        if config.buyer_jwt.is_some() && config.admin_token.is_none() {
            return Err(ConfigError {
                variable: "ADMIN_TOKEN",
                message: "buyers' tokens are verified (BUYER_JWT_*), so the sellers' endpoints \
                          must not be open to them: set ADMIN_TOKEN (and PAYMENT_TOKEN for the \
                          payment service)"
                    .into(),
            });
        }
        if !config.webhooks.is_empty() && !config.order_events {
            return Err(ConfigError {
                variable: "WEBHOOKS_FILE",
                message: "webhooks deliver order events, and ORDER_EVENTS is off: turn it on, \
                          or leave WEBHOOKS_FILE unset"
                    .into(),
            });
        }
        if config.request_timeout <= config.max_wait {
            return Err(ConfigError {
                variable: "REQUEST_TIMEOUT",
                message: format!(
                    "{:?} must exceed MAX_WAIT ({:?}) so a waiting request can be answered",
                    config.request_timeout, config.max_wait
                ),
            });
        }
        if config.heartbeat_interval * 2 > config.lease_duration {
            return Err(ConfigError {
                variable: "LEASE_DURATION",
                message: format!(
                    "{:?} must be at least twice HEARTBEAT_INTERVAL ({:?}) so leases are renewed in time",
                    config.lease_duration, config.heartbeat_interval
                ),
            });
        }
        if config.relay_interval * 2 > config.lease_duration {
            return Err(ConfigError {
                variable: "LEASE_DURATION",
                message: format!(
                    "{:?} must be at least twice RELAY_INTERVAL ({:?}), the apis' heartbeat",
                    config.lease_duration, config.relay_interval
                ),
            });
        }
        Ok(config)
    }
}

fn database_url((variable, value): (&'static str, String)) -> Result<String, ConfigError> {
    crate::db::servers::Servers::parse(&value)
        .map_err(|message| ConfigError { variable, message })?;
    Ok(value)
}

fn amqp_url((variable, value): (&'static str, String)) -> Result<String, ConfigError> {
    crate::broker::Addresses::parse(&value).map_err(|message| ConfigError { variable, message })?;
    Ok(value)
}

fn origins((variable, value): (&'static str, String)) -> Result<Vec<String>, ConfigError> {
    let origins: Vec<String> = value
        .split(',')
        .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
        .filter(|o| !o.is_empty())
        .collect();
    for origin in &origins {
        let valid = origin == "*"
            || (origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin
                    .split_once("://")
                    .is_some_and(|(_, rest)| rest.is_empty() || rest.contains('/'));
        if !valid || (origin == "*" && origins.len() > 1) {
            return Err(ConfigError {
                variable,
                message: format!(
                    "{origin:?} is not an origin: list scheme://host[:port] values separated by commas, or * alone"
                ),
            });
        }
    }
    Ok(origins)
}

/// The shortest HS256 secret accepted (RFC 7518 §3.2: at least the hash's
/// size), and the shortest service token: 32 random bytes cannot be guessed.
const MIN_SECRET_BYTES: usize = 32;

/// What the examples (`.env.example`, earlier compose files) put where a
/// secret goes: public, so never accepted as one.
const PLACEHOLDER: &str = "change-me";

/// A service token (`ADMIN_TOKEN`, `PAYMENT_TOKEN`): unset when empty;
/// refused when shorter than [`MIN_SECRET_BYTES`] or a placeholder.
fn service_token((variable, value): (&'static str, String)) -> Result<Option<Secret>, ConfigError> {
    if value.is_empty() {
        return Ok(None);
    }
    let refuse = |why: String| ConfigError {
        variable,
        message: format!(
            "{why}: use at least {MIN_SECRET_BYTES} random bytes (`openssl rand -hex 32`)"
        ),
    };
    if value.to_ascii_lowercase().contains(PLACEHOLDER) {
        return Err(refuse(
            "this is the examples' placeholder, which anyone can read".into(),
        ));
    }
    if value.len() < MIN_SECRET_BYTES {
        return Err(refuse(format!(
            "{} bytes is too short to resist guessing",
            value.len()
        )));
    }
    Ok(Some(Secret(value)))
}

fn buyer_jwt(
    (_, secret): (&'static str, String),
    (key_var, key_file): (&'static str, String),
    issuer: String,
    audience: String,
) -> Result<Option<BuyerJwt>, ConfigError> {
    let key = match (secret.is_empty(), key_file.is_empty()) {
        (true, true) => return Ok(None),
        (false, false) => {
            return Err(ConfigError {
                variable: "BUYER_JWT_SECRET",
                message: "set BUYER_JWT_SECRET or BUYER_JWT_PUBLIC_KEY_FILE, not both".into(),
            });
        }
        (false, true) if secret.len() < MIN_SECRET_BYTES => {
            return Err(ConfigError {
                variable: "BUYER_JWT_SECRET",
                message: format!(
                    "{} bytes is too short to resist guessing from a token: use at least \
                     {MIN_SECRET_BYTES} random bytes",
                    secret.len()
                ),
            });
        }
        (false, true) => BuyerKey::Secret(Secret(secret)),
        (true, false) => {
            // An identity provider's key signs tokens for every app it
            // serves: only those issued by it for this one are buyers'.
            for (variable, value) in [
                ("BUYER_JWT_ISSUER", &issuer),
                ("BUYER_JWT_AUDIENCE", &audience),
            ] {
                if value.is_empty() {
                    return Err(ConfigError {
                        variable,
                        message:
                            "with BUYER_JWT_PUBLIC_KEY_FILE (an identity provider's key, which \
                                  signs tokens for its other apps too) set both BUYER_JWT_ISSUER \
                                  and BUYER_JWT_AUDIENCE"
                                .into(),
                    });
                }
            }
            let pem = std::fs::read_to_string(&key_file).map_err(|e| ConfigError {
                variable: key_var,
                message: format!("cannot read {key_file:?}: {e}"),
            })?;
            BuyerKey::PublicKeyPem(pem)
        }
    };
    let nonempty = |v: String| Some(v).filter(|v| !v.is_empty());
    Ok(Some(BuyerJwt {
        key,
        issuer: nonempty(issuer),
        audience: nonempty(audience),
    }))
}

fn parse<T: std::str::FromStr>((variable, value): (&'static str, String)) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e: T::Err| ConfigError {
        variable,
        message: format!("{value:?}: {e}"),
    })
}

fn number<T>((variable, value): (&'static str, String), min: T, max: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    T::Err: std::fmt::Display,
{
    let n: T = parse((variable, value))?;
    if n < min || n > max {
        return Err(ConfigError {
            variable,
            message: format!("{n} is outside {min}..={max}"),
        });
    }
    Ok(n)
}

fn duration((variable, value): (&'static str, String)) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(&value).map_err(|e| ConfigError {
        variable,
        message: format!("{value:?}: {e} (examples: 15m, 30s, 1h)"),
    })?;
    if d.is_zero() {
        return Err(ConfigError {
            variable,
            message: "must be longer than zero".into(),
        });
    }
    Ok(d)
}

/// A duration, where `0` means "off".
fn duration_or_zero((variable, value): (&'static str, String)) -> Result<Duration, ConfigError> {
    if value == "0" {
        return Ok(Duration::ZERO);
    }
    duration((variable, value))
}

/// The endpoints of the file `path` names (none when unset).
fn webhooks(
    (variable, path): (&'static str, String),
) -> Result<Vec<crate::webhooks::Endpoint>, ConfigError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
        variable,
        message: format!("cannot read {path:?}: {e}"),
    })?;
    crate::webhooks::parse(&text).map_err(|message| ConfigError {
        variable,
        message: format!("{path:?}: {message}"),
    })
}

/// `on` or `off`.
fn switch((variable, value): (&'static str, String)) -> Result<bool, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => Err(ConfigError {
            variable,
            message: format!("{value:?}: use on or off"),
        }),
    }
}

fn namespace((variable, value): (&'static str, String)) -> Result<String, ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 100
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(value)
    } else {
        Err(ConfigError {
            variable,
            message: format!("{value:?}: use 1 to 100 of A-Z a-z 0-9 - _ ."),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_brief() {
        let c = Config::from_lookup(|_| None).unwrap();
        assert_eq!(c.database_url, "mysql://root@127.0.0.1:3306/flashstock");
        assert_eq!(c.amqp_url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(c.broker_namespace, "flashstock");
        assert_eq!(c.order_partitions, 16);
        assert_eq!(c.api_addr.to_string(), "0.0.0.0:3000");
        assert_eq!(c.reservation_ttl, Duration::from_secs(15 * 60));
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let err =
            Config::from_lookup(|n| (n == "ORDER_PARTITIONS").then(|| "zero".into())).unwrap_err();
        assert_eq!(err.variable, "ORDER_PARTITIONS");
        let err =
            Config::from_lookup(|n| (n == "RESERVATION_TTL").then(|| "soon".into())).unwrap_err();
        assert_eq!(err.variable, "RESERVATION_TTL");
        let err =
            Config::from_lookup(|n| (n == "BROKER_NAMESPACE").then(|| "a b".into())).unwrap_err();
        assert_eq!(err.variable, "BROKER_NAMESPACE");
    }

    #[test]
    fn amqp_url_may_list_the_nodes_of_a_cluster() {
        let c = Config::from_lookup(|n| match n {
            "AMQP_URL" => Some("amqp://u:p@rabbit1:5672/%2f, rabbit2,rabbit3:5673".into()),
            "QUORUM_INITIAL_GROUP_SIZE" => Some("3".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.quorum_initial_group_size, Some(3));
        assert_eq!(
            Config::from_lookup(|_| None)
                .unwrap()
                .quorum_initial_group_size,
            None
        );
        for bad in [
            "amqp://u:p@rabbit1/%2f,,rabbit2",
            "rabbit1:5672",
            "amqp://u:p@r/%2f,r2:x",
        ] {
            let err = Config::from_lookup(|n| (n == "AMQP_URL").then(|| bad.into())).unwrap_err();
            assert_eq!(err.variable, "AMQP_URL", "{bad}");
        }
        let err = Config::from_lookup(|n| (n == "QUORUM_INITIAL_GROUP_SIZE").then(|| "0".into()))
            .unwrap_err();
        assert_eq!(err.variable, "QUORUM_INITIAL_GROUP_SIZE");
    }

    #[test]
    fn buyer_keys_are_one_of_two_long_enough_and_need_the_admin_token() {
        let from = |vars: &'static [(&'static str, &'static str)]| {
            Config::from_lookup(move |n| {
                vars.iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| (*v).to_owned())
            })
        };
        const LONG: &str = "a-secret-of-thirty-two-bytes-0123";
        const ADMIN: &str = "an-admin-token-of-32-bytes-012345";
        let err = from(&[("BUYER_JWT_SECRET", LONG), ("PAYMENT_TOKEN", ADMIN)]).unwrap_err();
        assert_eq!(err.variable, "ADMIN_TOKEN");
        let short = &[("BUYER_JWT_SECRET", "short"), ("ADMIN_TOKEN", ADMIN)];
        assert_eq!(from(short).unwrap_err().variable, "BUYER_JWT_SECRET");
        let both = &[
            ("BUYER_JWT_SECRET", LONG),
            ("BUYER_JWT_PUBLIC_KEY_FILE", "/k.pem"),
            ("ADMIN_TOKEN", ADMIN),
        ];
        assert_eq!(from(both).unwrap_err().variable, "BUYER_JWT_SECRET");
        let missing = &[
            ("BUYER_JWT_PUBLIC_KEY_FILE", "/nonexistent/k.pem"),
            ("BUYER_JWT_ISSUER", "https://id.example"),
            ("BUYER_JWT_AUDIENCE", "shop"),
            ("ADMIN_TOKEN", ADMIN),
        ];
        assert_eq!(
            from(missing).unwrap_err().variable,
            "BUYER_JWT_PUBLIC_KEY_FILE"
        );
        // A shared identity provider's key: its tokens for other apps must not pass.
        let no_audience = &[
            ("BUYER_JWT_PUBLIC_KEY_FILE", "/k.pem"),
            ("BUYER_JWT_ISSUER", "https://id.example"),
            ("ADMIN_TOKEN", ADMIN),
        ];
        assert_eq!(
            from(no_audience).unwrap_err().variable,
            "BUYER_JWT_AUDIENCE"
        );
        let no_issuer = &[
            ("BUYER_JWT_PUBLIC_KEY_FILE", "/k.pem"),
            ("BUYER_JWT_AUDIENCE", "shop"),
            ("ADMIN_TOKEN", ADMIN),
        ];
        assert_eq!(from(no_issuer).unwrap_err().variable, "BUYER_JWT_ISSUER");
        let ok = from(&[
            ("BUYER_JWT_SECRET", LONG),
            ("ADMIN_TOKEN", ADMIN),
            ("BUYER_JWT_AUDIENCE", "shop"),
        ])
        .unwrap();
        let jwt = ok.buyer_jwt.expect("buyer keys");
        assert!(matches!(jwt.key, BuyerKey::Secret(_)));
        assert_eq!(jwt.audience.as_deref(), Some("shop"));
        assert_eq!(jwt.issuer, None);
        assert!(from(&[]).unwrap().buyer_jwt.is_none());
    }

    #[test]
    fn service_tokens_are_long_and_never_the_placeholder() {
        for variable in ["ADMIN_TOKEN", "PAYMENT_TOKEN"] {
            for bad in [
                "x",
                "0123456789abcdef0123456789abcde",
                "change-me-before-going-live",
                "CHANGE-ME-before-going-live-0123456789",
            ] {
                let err = Config::from_lookup(|n| (n == variable).then(|| bad.into())).unwrap_err();
                assert_eq!(err.variable, variable, "{bad}");
            }
            let ok = "0123456789abcdef0123456789abcdef";
            assert!(Config::from_lookup(|n| (n == variable).then(|| ok.into())).is_ok());
        }
    }

    #[test]
    fn the_admin_token_never_prints() {
        let token = "s3cret-token-0123456789abcdef0123";
        let c = Config::from_lookup(|n| (n == "ADMIN_TOKEN").then(|| token.into())).unwrap();
        assert_eq!(c.admin_token.as_ref().map(Secret::expose), Some(token));
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(Config::from_lookup(|_| None).unwrap().admin_token.is_none());
    }

    #[test]
    fn passwords_in_the_urls_never_print() {
        let c = Config::from_lookup(|n| match n {
            "DATABASE_URL" => Some("mysql://app:db-pa55@db:3306/flashstock".into()),
            "AMQP_URL" => Some(
                "amqp://app:mq-pa55@rabbit-1:5672/%2f,amqp://app:mq-pa55@rabbit-2:5672/%2f".into(),
            ),
            _ => None,
        })
        .unwrap();
        let printed = format!("{c:?}");
        assert!(!printed.contains("pa55"), "{printed}");
        assert!(
            printed.contains("mysql://app:***@db:3306/flashstock"),
            "{printed}"
        );
        assert!(
            printed.contains("amqp://app:***@rabbit-1:5672/%2f,amqp://app:***@rabbit-2:5672/%2f"),
            "{printed}"
        );
        assert_eq!(c.database_url, "mysql://app:db-pa55@db:3306/flashstock");
        for (url, printed) in [
            (
                "mysql://root@127.0.0.1:3306/flashstock",
                "mysql://root@127.0.0.1:3306/flashstock",
            ),
            ("amqp://u:p@ss@host/vh?x=1", "amqp://u:***@host/vh?x=1"),
            ("mysql://app:pa,ss/w?#d@db/x", "mysql://app:***@db/x"),
            ("mysql://app:secret@db/x?ssl=a@b", "mysql://app:***@b"),
        ] {
            assert_eq!(without_password(url), printed);
        }
        assert_eq!(
            without_amqp_passwords("amqp://u:p%2Cq@rabbit1:5672/%2f,rabbit2:5672,rabbit3:5672"),
            "amqp://u:***@rabbit1:5672/%2f,rabbit2:5672,rabbit3:5672"
        );
    }

    #[test]
    fn a_request_timeout_must_outlast_the_longest_wait() {
        let err = Config::from_lookup(|n| match n {
            "MAX_WAIT" => Some("30s".into()),
            "REQUEST_TIMEOUT" => Some("30s".into()),
            _ => None,
        })
        .unwrap_err();
        assert_eq!(err.variable, "REQUEST_TIMEOUT");
        let c = Config::from_lookup(|_| None).unwrap();
        assert!(c.request_timeout > c.max_wait);
    }

    #[test]
    fn short_durations_parse() {
        let c = Config::from_lookup(|n| (n == "RESERVATION_TTL").then(|| "2s".into())).unwrap();
        assert_eq!(c.reservation_ttl, Duration::from_secs(2));
    }
}
