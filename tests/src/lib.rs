//! The test harness: each test gets its own database and broker namespace,
//! the real api on port 0 and real workers, so tests run in parallel and
//! never see each other's data.
//!
//! - [`spawn_app`] / [`TestApp::spawn`]: the whole system, in-process.
//! - [`TestApp`] helpers: `post_json`, `create_product`, `post_order`, `wait_for_decision`, …
//! - [`proxy::Proxy`]: a TCP proxy the tests can cut, to play "the database is down".
//! - [`process`]: the api and worker binaries as processes, to kill and pause.
//! - [`checker`]: load that records every submission, and the check of what must hold after a fault.
//! - [`cluster`]: a real three-node RabbitMQ cluster on this machine (cluster fault tests only).
//! - [`spec`]: answers checked strictly against the served OpenAPI document.
//! - [`mariadb`]: a MariaDB primary and replica on this machine (database failover tests only).
//! - [`services`]: stopping and starting the shared MariaDB and RabbitMQ (fault tests only).

pub mod checker;
pub mod cluster;
pub mod events;
pub mod mariadb;
pub mod process;
pub mod proxy;
pub mod services;
pub mod spec;

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use shared::Config;
use shared::broker::Topology;
use sqlx::MySqlPool;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The database server tests create their databases on.
pub fn database_server() -> String {
    std::env::var("TEST_DATABASE_SERVER").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

/// The broker tests use.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Settings for one test's world.
#[derive(Debug, Clone)]
pub struct Options {
    /// Environment overrides, by variable name.
    pub env: HashMap<String, String>,
    /// In-process workers to start.
    pub workers: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            env: HashMap::new(),
            workers: 1,
        }
    }
}

impl Options {
    /// Sets an environment override.
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }

    /// Sets the number of in-process workers.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }
}

/// One test's running system.
pub struct TestApp {
    /// `http://127.0.0.1:{port}`.
    pub address: String,
    /// The configuration the api and workers run with.
    pub config: Config,
    /// The environment that configuration was read from, for child processes.
    pub env: HashMap<String, String>,
    /// A pool on the test's database, for checks.
    pub db: MySqlPool,
    /// A keep-alive HTTP client.
    pub client: reqwest::Client,
    /// The `/metrics` port of each in-process worker.
    pub worker_metrics_ports: Vec<u16>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts a fresh system: a new database, a new namespace, the api and one worker.
pub async fn spawn_app() -> TestApp {
    TestApp::spawn(Options::default()).await
}

impl TestApp {
    /// Starts a fresh system with `options`.
    pub async fn spawn(options: Options) -> TestApp {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("fs_test_{}", &suffix[..16]);
        let mut env: HashMap<String, String> = HashMap::from([
            (
                "DATABASE_URL".into(),
                format!("{}/{name}", database_server()),
            ),
            ("AMQP_URL".into(), amqp_url()),
            ("BROKER_NAMESPACE".into(), name.clone()),
            ("ORDER_PARTITIONS".into(), "4".into()),
            ("API_ADDR".into(), "127.0.0.1:0".into()),
            ("DATABASE_MAX_CONNECTIONS".into(), "6".into()),
            ("RELAY_INTERVAL".into(), "250ms".into()),
            ("WORKER_METRICS_ADDR".into(), "127.0.0.1:0".into()),
        ]);
        env.extend(options.env);
        let config = Config::from_lookup(|k| env.get(k).cloned()).expect("test configuration");
        Self::start(config, env, options.workers).await
    }

    /// Starts the api and `workers` workers on `config` (read from `env`).
    async fn start(config: Config, env: HashMap<String, String>, workers: usize) -> TestApp {
        let stop = CancellationToken::new();
        let app = api::Application::build(config.clone())
            .await
            .expect("the api starts");
        let address = format!("http://127.0.0.1:{}", app.port());
        let mut tasks = vec![tokio::spawn({
            let stop = stop.clone();
            async move {
                let _ = app.run_until_stopped(stop).await;
            }
        })];
        let mut worker_metrics_ports = Vec::new();
        for _ in 0..workers {
            let worker = worker::Worker::build(config.clone())
                .await
                .expect("the worker starts");
            worker_metrics_ports.push(worker.metrics_port());
            tasks.push(tokio::spawn(worker.run_until_stopped(stop.clone())));
        }
        // Several servers (a primary and its replica): through the router,
        // as the api and workers connect.
        let db = if config.database_url.contains(',') {
            shared::db::connect(&config).await.expect("test pool")
        } else {
            MySqlPool::connect(&config.database_url)
                .await
                .expect("test pool")
        };
        TestApp {
            address,
            config,
            env,
            db,
            client: reqwest::Client::new(),
            worker_metrics_ports,
            stop,
            tasks,
        }
    }

    /// Starts one more api on `config` (same database and namespace unless
    /// changed) and returns its address.
    pub async fn spawn_api(&mut self, config: Config) -> String {
        let app = api::Application::build(config)
            .await
            .expect("the api starts");
        let address = format!("http://127.0.0.1:{}", app.port());
        let stop = self.stop.clone();
        self.tasks.push(tokio::spawn(async move {
            let _ = app.run_until_stopped(stop).await;
        }));
        address
    }

    /// Waits until all `config.order_partitions` partitions are leased (and
    /// unexpired) and `check` holds for the leases each owner holds; returns
    /// those loads.
    pub async fn wait_for_owners(
        &self,
        check: impl Fn(&HashMap<String, usize>) -> bool,
    ) -> HashMap<String, usize> {
        let partitions = usize::from(self.config.order_partitions);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let owners = shared::db::leases::owners(&self.db).await.unwrap();
            let mut loads = HashMap::new();
            for (_, owner, _, _) in &owners {
                if let Some(o) = owner {
                    *loads.entry(o.clone()).or_insert(0) += 1;
                }
            }
            let all_owned = owners.len() == partitions
                && owners
                    .iter()
                    .all(|(_, o, _, left)| o.is_some() && *left > 0.0);
            if all_owned && check(&loads) {
                return loads;
            }
            assert!(
                Instant::now() < deadline,
                "ownership did not settle: {owners:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a worker as a process of its own, on this test's configuration.
    pub fn spawn_worker_process(&self) -> process::WorkerProcess {
        process::WorkerProcess::start(&self.env, &[])
    }

    /// Starts a worker process with `extra` variables on top of this test's
    /// configuration (such as `FLASHSTOCK_FAULT`).
    pub fn spawn_worker_process_with(&self, extra: &[(&str, String)]) -> process::WorkerProcess {
        process::WorkerProcess::start(&self.env, extra)
    }

    /// Starts an api as a process of its own, with `extra` variables on top
    /// of this test's configuration, and waits until it answers.
    pub async fn spawn_api_process(&self, extra: &[(&str, String)]) -> process::ApiProcess {
        process::ApiProcess::start(&self.env, extra).await
    }

    /// Starts one more in-process worker on `config`.
    pub async fn spawn_worker(&mut self, config: Config) {
        let worker = worker::Worker::build(config)
            .await
            .expect("the worker starts");
        self.tasks
            .push(tokio::spawn(worker.run_until_stopped(self.stop.clone())));
    }

    /// Publishes raw bytes to `routing_key` on `exchange`, as a misbehaving
    /// producer would.
    pub async fn publish_raw(&self, exchange: &str, routing_key: &str, payload: &[u8]) {
        self.publish_raw_many(exchange, &[(routing_key.to_owned(), payload.to_vec())])
            .await;
    }

    /// Publishes several raw messages, in order, over one connection, and
    /// waits for the broker's confirms.
    pub async fn publish_raw_many(&self, exchange: &str, messages: &[(String, Vec<u8>)]) {
        use lapin::options::BasicPublishOptions;
        let conn = shared::broker::connect(&amqp_url(), "flashstock test publisher")
            .await
            .unwrap();
        let ch = shared::broker::confirm_channel(&conn).await.unwrap();
        let mut confirms = Vec::with_capacity(messages.len());
        for (routing_key, payload) in messages {
            let confirm = ch
                .basic_publish(
                    exchange.into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    payload,
                    lapin::BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap();
            confirms.push(confirm);
        }
        for confirm in confirms {
            confirm.await.unwrap();
        }
        let _ = conn.close(200, "done".into()).await;
    }

    /// Messages ready in `queue`.
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        self.queue_counts(queue).await.0
    }

    /// Messages ready in `queue`, and its consumers.
    pub async fn queue_counts(&self, queue: &str) -> (u32, u32) {
        use lapin::options::QueueDeclareOptions;
        let conn = shared::broker::connect(&amqp_url(), "flashstock test inspector")
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = conn.close(200, "done".into()).await;
        (q.message_count(), q.consumer_count())
    }

    /// Records a PENDING order straight in the database, as if the api had
    /// crashed between recording and publishing. Returns its id.
    pub async fn record_order_without_publishing(&self, product: u64, total: u32) -> uuid::Uuid {
        let id = uuid::Uuid::now_v7();
        let dead_api = format!(
            "api-dead-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        // An api that recorded it, confirmed nothing, and stopped heartbeating.
        sqlx::query(
            "INSERT INTO apis (id, heartbeat_at, confirmed_below) VALUES (?, '2000-01-01', ?)",
        )
        .bind(&dead_api)
        .bind(uuid::Uuid::nil())
        .execute(&self.db)
        .await
        .unwrap();
        sqlx::query("INSERT INTO orders (id, product_id, total, recorded_by) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(product)
            .bind(total)
            .bind(&dead_api)
            .execute(&self.db)
            .await
            .unwrap();
        id
    }

    /// Registers an api that is alive and has confirmed nothing, so that no
    /// relay ever republishes the orders a test records under its id (and
    /// publishes itself, as it likes). Returns its id.
    pub async fn quiet_api(&self) -> String {
        let id = format!(
            "api-quiet-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        sqlx::query(
            "INSERT INTO apis (id, heartbeat_at, confirmed_below) VALUES (?, '2999-01-01', ?)",
        )
        .bind(&id)
        .bind(uuid::Uuid::nil())
        .execute(&self.db)
        .await
        .unwrap();
        id
    }

    /// Stops the api and workers and waits for them to finish.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }

    /// The broker names of this test.
    pub fn topology(&self) -> Topology {
        Topology::from_config(&self.config)
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request")
    }

    /// `method path` with a JSON body.
    pub async fn send_json(&self, method: reqwest::Method, path: &str, body: &Value) -> Response {
        self.client
            .request(method, format!("{}{path}", self.address))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.as_admin(self.client.post(format!("{}{path}", self.address)))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// `req` with `Authorization: Bearer <ADMIN_TOKEN>` when this test
    /// configured an admin token.
    pub fn as_admin(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.env.get("ADMIN_TOKEN") {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    /// Creates a product with `stock` and returns its id.
    pub async fn create_product(&self, name: &str, stock: i64) -> u64 {
        let r = self
            .post_json("/api/products", &json!({"name": name, "stock": stock}))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: Value = r.json().await.unwrap();
        body["data"]["id"].as_u64().expect("product id")
    }

    /// The inventory `data` of `product`.
    pub async fn inventory(&self, product: u64) -> Value {
        let r = self
            .get(&format!("/api/products/{product}/inventory"))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<Value>().await.unwrap()["data"].clone()
    }

    /// Submits an order; `wait` adds `Prefer: wait=N`. Returns status and body.
    pub async fn post_order(
        &self,
        product: u64,
        total: i64,
        wait: Option<u64>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .post(format!("{}/api/orders", self.address))
            .json(&json!({"product_id": product, "total": total}));
        if let Some(n) = wait {
            req = req.header("Prefer", format!("wait={n}"));
        }
        let r = req.send().await.expect("request");
        (r.status(), r.json().await.expect("json body"))
    }

    /// Polls `GET /api/orders/{id}` until it is no longer PENDING (or `timeout`).
    pub async fn wait_for_decision(&self, id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let order = self
                .get(&format!("/api/orders/{id}"))
                .await
                .json::<Value>()
                .await
                .unwrap()["data"]
                .clone();
            if order["status"] != "PENDING" || Instant::now() > deadline {
                return order;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Counts of orders by status for `product`, read from the database.
    pub async fn status_counts(&self, product: u64) -> HashMap<String, i64> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, COUNT(*) FROM orders WHERE product_id = ? GROUP BY status",
        )
        .bind(product)
        .fetch_all(&self.db)
        .await
        .unwrap();
        rows.into_iter().collect()
    }

    /// Waits until `product` has no PENDING orders (or `timeout`).
    pub async fn drain(&self, product: u64, timeout: Duration) -> HashMap<String, i64> {
        let deadline = Instant::now() + timeout;
        loop {
            let counts = self.status_counts(product).await;
            if !counts.contains_key("PENDING") || Instant::now() > deadline {
                return counts;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Checks the stock invariants over the whole database with the same
    /// check operators run (`shared::db::invariants`), and through the
    /// admin endpoint.
    pub async fn assert_invariants(&self) {
        let violations = shared::db::invariants::check(&self.db).await.unwrap();
        assert!(violations.is_empty(), "invariants broken: {violations:?}");
        let report = self.invariants_report().await;
        assert_eq!(report["data"]["ok"], true, "{report}");
    }

    /// `GET /api/admin/invariants`, as the admin when there is one.
    pub async fn invariants_report(&self) -> Value {
        self.as_admin(
            self.client
                .get(format!("{}/api/admin/invariants", self.address)),
        )
        .send()
        .await
        .expect("request")
        .json()
        .await
        .unwrap()
    }

    /// `POST /api/orders/{id}/{action}` (`pay` or `cancel`).
    pub async fn order_action(&self, id: &str, action: &str) -> (StatusCode, Value) {
        let r = self
            .client
            .post(format!("{}/api/orders/{id}/{action}", self.address))
            .send()
            .await
            .expect("request");
        (r.status(), r.json().await.expect("json body"))
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
        let database_url = self.config.database_url.clone();
        let topology = self.topology();
        // Clean up on a thread of its own: Drop cannot await.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    cleanup(&database_url, &topology),
                )
                .await;
            });
        })
        .join();
    }
}

/// Drops the test's database and deletes its broker objects.
async fn cleanup(database_url: &str, topology: &Topology) {
    delete_broker_objects(topology).await;
    let name = database_url
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    if name.starts_with("fs_test_")
        && let Ok(pool) = MySqlPool::connect(&database_server()).await
    {
        let _ = sqlx::query("SET SESSION lock_wait_timeout = 5")
            .execute(&pool)
            .await;
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS `{name}`"
        )))
        .execute(&pool)
        .await;
        pool.close().await;
    }
}

/// Deletes the queues and exchanges of `topology` from the broker.
pub async fn delete_broker_objects(topology: &Topology) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    if let Ok(conn) = shared::broker::connect(&amqp_url(), "flashstock test cleanup").await
        && let Ok(ch) = conn.create_channel().await
    {
        let mut queues: Vec<String> = (0..topology.partitions())
            .map(|p| topology.partition_queue(p))
            .collect();
        queues.push(topology.dead_letter_queue());
        queues.push(topology.events_stream());
        for q in queues {
            let _ = ch
                .queue_delete(q.into(), QueueDeleteOptions::default())
                .await;
        }
        for x in [
            topology.orders_exchange(),
            topology.dead_letter_exchange(),
            topology.decisions_exchange(),
        ] {
            let _ = ch
                .exchange_delete(x.into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = conn.close(200, "cleaned".into()).await;
    }
}
