//! Reading the events stream in tests, and checking it against the
//! database: for every order, the stream holds exactly the transitions the
//! database shows, in order (duplicates allowed, each with the same id),
//! and nothing for a transition that did not commit.

use futures::StreamExt;
use lapin::options::BasicAckOptions;
use shared::broker::Topology;
use shared::events::{CloudEvent, From, Kind};
use sqlx::MySqlPool;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// One event and the stream offset of the entry that carried it.
#[derive(Debug, Clone)]
pub struct Read {
    /// The entry's offset.
    pub offset: u64,
    /// The event.
    pub event: CloudEvent,
    /// Why the event, as it was on the stream, does not match the `Event`
    /// schema of `asyncapi.json` (`None`: it does).
    pub nonconforming: Option<String>,
}

/// The `Event` schema of the repository's `asyncapi.json`.
fn event_schema() -> &'static jsonschema::Validator {
    static SCHEMA: std::sync::LazyLock<jsonschema::Validator> = std::sync::LazyLock::new(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../asyncapi.json");
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("asyncapi.json"))
                .expect("asyncapi.json is JSON");
        // The schemas refer to each other as #/components/schemas/<Name>.
        let root = serde_json::json!({
            "$ref": "#/components/schemas/Event",
            "components": {"schemas": doc["components"]["schemas"]},
        });
        jsonschema::draft7::new(&root).expect("the Event schema compiles")
    });
    &SCHEMA
}

/// Why `event` does not match the `Event` schema, if it does not.
pub fn nonconformity(event: &serde_json::Value) -> Option<String> {
    let errors: Vec<String> = event_schema()
        .iter_errors(event)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    (!errors.is_empty()).then(|| errors.join("; "))
}

/// Each node of `amqp_url` as a URL of its own: an entry without a
/// scheme is `host:port` and takes the rest from the first.
fn node_urls(amqp_url: &str) -> Vec<String> {
    let mut entries = amqp_url.split(',');
    let first = entries.next().unwrap_or(amqp_url).trim().to_owned();
    let authority = first
        .split_once('@')
        .map_or("", |(_, rest)| rest.split('/').next().unwrap_or(""))
        .to_owned();
    std::iter::once(first.clone())
        .chain(entries.map(|entry| {
            let entry = entry.trim();
            if entry.contains("://") || authority.is_empty() {
                entry.to_owned()
            } else {
                first.replacen(&authority, entry, 1)
            }
        }))
        .collect()
}

/// A consumer of the events stream, attached (its start fixed) once
/// [`Reader::open`] returns.
pub struct Reader {
    conn: lapin::Connection,
    consumer: lapin::Consumer,
}

impl Reader {
    /// Subscribes to the events stream of `topology` from `from`, on the
    /// first node of `amqp_url` that holds a replica of it (a node that
    /// has none, or whose replica has not caught up since it restarted,
    /// refuses stream consumers): every node in turn, for up to a minute.
    pub async fn open(amqp_url: &str, topology: &Topology, from: From) -> Reader {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        while Instant::now() < deadline {
            for url in node_urls(amqp_url) {
                let Ok(conn) = shared::broker::connect(&url, "flashstock test events reader").await
                else {
                    continue;
                };
                match shared::events::subscribe(
                    &conn,
                    &topology.events_stream(),
                    from,
                    200,
                    "flashstock-test-reader",
                )
                .await
                {
                    Ok(consumer) => return Reader { conn, consumer },
                    Err(e) => {
                        last = e.to_string();
                        let _ = conn.close(200, "no replica here".into()).await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("no node would serve the events stream: {last}");
    }

    /// Reads until nothing has arrived for `idle` (or `limit` events were
    /// read), in stream order.
    pub async fn take(mut self, idle: Duration, limit: usize) -> Vec<Read> {
        let mut out = Vec::new();
        while out.len() < limit {
            let Ok(Some(delivery)) = tokio::time::timeout(idle, self.consumer.next()).await else {
                break;
            };
            let delivery = delivery.expect("a stream delivery");
            let offset =
                shared::events::offset_of(&delivery.properties).expect("an entry's offset");
            let raw: Vec<serde_json::Value> =
                serde_json::from_slice(&delivery.data).expect("an entry is a JSON array");
            for raw in raw {
                let nonconforming = nonconformity(&raw);
                let event: CloudEvent = serde_json::from_value(raw).expect("a CloudEvent");
                out.push(Read {
                    offset,
                    event,
                    nonconforming,
                });
            }
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
        let _ = self.conn.close(200, "read".into()).await;
        out
    }
}

/// Reads the events stream of `topology` from `from` until nothing has
/// arrived for `idle` (or `limit` events were read), in stream order.
pub async fn read(
    amqp_url: &str,
    topology: &Topology,
    from: From,
    idle: Duration,
    limit: usize,
) -> Vec<Read> {
    Reader::open(amqp_url, topology, from)
        .await
        .take(idle, limit)
        .await
}

/// Waits (up to `timeout`) until the outbox is empty: every event
/// committed so far is on the stream. False if it never was.
pub async fn wait_published(db: &MySqlPool, timeout: Duration) -> bool {
    let started = Instant::now();
    loop {
        let left: Result<(i64,), _> = sqlx::query_as("SELECT COUNT(*) FROM order_events")
            .fetch_one(db)
            .await;
        if matches!(left, Ok((0,))) {
            return true;
        }
        if started.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct EventsReport {
    /// Events read from the stream, duplicates included.
    pub read: usize,
    /// Of those, the same event published again.
    pub duplicates: usize,
    /// What does not match the database, one line each.
    pub findings: Vec<String>,
}

/// An order as the database shows it, for the events check.
#[derive(Debug, sqlx::FromRow)]
struct Stored {
    id: Uuid,
    product_id: u64,
    total: i64,
    status: String,
    reason: Option<String>,
    was_accepted: i64,
}

impl Stored {
    /// The transitions its row shows, in order.
    fn transitions(&self) -> Vec<Kind> {
        let accepted = self.was_accepted == 1;
        match self.status.as_str() {
            "ACCEPTED" => vec![Kind::Accepted],
            "REJECTED" => vec![Kind::Rejected],
            "PAID" => vec![Kind::Accepted, Kind::Paid],
            "EXPIRED" => vec![Kind::Accepted, Kind::Expired],
            "CANCELLED" if accepted => vec![Kind::Accepted, Kind::Cancelled],
            "CANCELLED" => vec![Kind::Cancelled],
            _ => vec![],
        }
    }
}

/// Waits for the outbox to empty, reads the whole stream, and compares it
/// with the database: each order's first-seen events are exactly its
/// transitions in order, every repeat carries the same id and content,
/// and each product's sold-out and available events alternate and end
/// where its stock is.
pub async fn check(
    db: &MySqlPool,
    amqp_url: &str,
    topology: &Topology,
    timeout: Duration,
) -> EventsReport {
    let mut report = EventsReport::default();
    if !wait_published(db, timeout).await {
        report.findings.push(format!(
            "events: the outbox was not empty after {timeout:?}"
        ));
    }
    let events = read(
        amqp_url,
        topology,
        From::First,
        Duration::from_secs(2),
        usize::MAX,
    )
    .await;
    report.read = events.len();
    let orders: Vec<Stored> = sqlx::query_as(
        "SELECT id, product_id, CAST(total AS SIGNED) AS total, status, reason, \
         CAST(expires_at IS NOT NULL AS SIGNED) AS was_accepted FROM orders",
    )
    .fetch_all(db)
    .await
    .expect("reading the orders");
    let available: HashMap<u64, i64> = sqlx::query_as::<_, (u64, i64)>(
        "SELECT product_id, stored_stock - reserved_stock FROM inventories",
    )
    .fetch_all(db)
    .await
    .expect("reading the inventories")
    .into_iter()
    .collect();
    compare(&events, &orders, &available, &mut report);
    report
}

fn compare(
    events: &[Read],
    orders: &[Stored],
    available: &HashMap<u64, i64>,
    report: &mut EventsReport,
) {
    let mut first_seen: HashMap<&str, &CloudEvent> = HashMap::new();
    let mut per_order: HashMap<Uuid, Vec<Kind>> = HashMap::new();
    let mut per_product: HashMap<u64, Vec<Kind>> = HashMap::new();
    let by_id: HashMap<Uuid, &Stored> = orders.iter().map(|o| (o.id, o)).collect();
    for Read {
        offset,
        event,
        nonconforming,
    } in events
    {
        if let Some(why) = nonconforming {
            report.findings.push(format!(
                "events: {} does not match asyncapi.json: {why}",
                event.id
            ));
        }
        if let Some(earlier) = first_seen.get(event.id.as_str()) {
            report.duplicates += 1;
            if *earlier != event {
                report.findings.push(format!(
                    "events: {} at offset {offset} differs from its first publication",
                    event.id
                ));
            }
            continue;
        }
        first_seen.insert(&event.id, event);
        let Some(kind) = event.kind() else {
            report
                .findings
                .push(format!("events: unknown type {}", event.event_type));
            continue;
        };
        if !kind.is_order() {
            per_product
                .entry(event.product_id())
                .or_default()
                .push(kind);
            continue;
        }
        let Some(data) = event.order() else {
            report
                .findings
                .push(format!("events: {} carries no order", event.id));
            continue;
        };
        let expected_id = format!("{}.{}", data.order_id, kind.name());
        if event.id != expected_id || event.subject != data.order_id.to_string() {
            report.findings.push(format!(
                "events: {} (subject {}) is not {expected_id}",
                event.id, event.subject
            ));
        }
        match by_id.get(&data.order_id) {
            None => report.findings.push(format!(
                "events: {} tells of an order that does not exist",
                event.id
            )),
            Some(o) => {
                if data.product_id != o.product_id
                    || i64::from(data.total) != o.total
                    || Some(data.status) != kind.status()
                    || (kind == Kind::Rejected && data.reason != o.reason)
                {
                    report.findings.push(format!(
                        "events: {} says {data:?}, the database {o:?}",
                        event.id
                    ));
                }
            }
        }
        per_order.entry(data.order_id).or_default().push(kind);
    }
    for order in orders {
        let expected = order.transitions();
        let seen = per_order.remove(&order.id).unwrap_or_default();
        if seen != expected {
            report.findings.push(format!(
                "events: order {} ({}) shows {expected:?}, the stream {seen:?}",
                order.id, order.status
            ));
        }
    }
    for (product, kinds) in per_product {
        let alternates = kinds.windows(2).all(|w| w[0] != w[1]);
        let last_says_available = kinds.last().map(|k| *k == Kind::Available);
        let now_available = available.get(&product).map(|a| *a > 0);
        if !alternates || (last_says_available.is_some() && last_says_available != now_available) {
            report.findings.push(format!(
                "events: product {product}: {kinds:?}, available now: {now_available:?}"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::events::{EventData, OrderData};

    fn stored(id: Uuid, status: &str, was_accepted: bool) -> Stored {
        Stored {
            id,
            product_id: 1,
            total: 2,
            status: status.into(),
            reason: None,
            was_accepted: i64::from(was_accepted),
        }
    }

    fn event(id: Uuid, kind: Kind) -> Read {
        Read {
            offset: 0,
            nonconforming: None,
            event: CloudEvent {
                specversion: "1.0".into(),
                id: format!("{id}.{}", kind.name()),
                source: "/flashstock/t".into(),
                event_type: kind.event_type(),
                subject: id.to_string(),
                time: "2026-12-04T10:00:00.000000Z".into(),
                datacontenttype: "application/json".into(),
                data: EventData::Order(OrderData {
                    order_id: id,
                    product_id: 1,
                    total: 2,
                    buyer_id: None,
                    status: kind.status().unwrap(),
                    reason: None,
                    created_at: "2026-12-04T10:00:00.000000Z".into(),
                    decided_at: None,
                    expires_at: None,
                }),
            },
        }
    }

    #[test]
    fn a_node_list_becomes_one_url_per_node() {
        assert_eq!(
            node_urls("amqp://guest:guest@127.0.0.1:5672/%2f,127.0.0.1:5673, amqp://u:p@h:1/v"),
            [
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://guest:guest@127.0.0.1:5673/%2f",
                "amqp://u:p@h:1/v"
            ]
        );
    }

    #[test]
    fn the_schema_refuses_an_event_that_breaks_the_contract() {
        let mut good = serde_json::to_value(&event(Uuid::now_v7(), Kind::Rejected).event).unwrap();
        good["time"] = "2026-12-04T10:00:00.123456Z".into();
        good["data"]["decided_at"] = "2026-12-04T10:00:00.123456Z".into();
        good["data"]["reason"] = "OUT_OF_STOCK".into();
        assert_eq!(nonconformity(&good), None);
        for (field, value) in [
            ("time", serde_json::json!("2026-12-04T10:00:00Z")),
            ("type", serde_json::json!("flashstock.order.shipped")),
            ("extra", serde_json::json!(1)),
        ] {
            let mut bad = good.clone();
            bad[field] = value;
            assert!(nonconformity(&bad).is_some(), "{field}");
        }
    }

    #[test]
    fn the_events_check_finds_missing_invented_and_reordered_events() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let orders = [
            stored(a, "PAID", true),
            stored(b, "CANCELLED", false),
            stored(c, "REJECTED", false),
        ];
        let good = [
            event(a, Kind::Accepted),
            event(b, Kind::Cancelled),
            event(a, Kind::Accepted),
            event(a, Kind::Paid),
            event(c, Kind::Rejected),
        ];
        let mut report = EventsReport::default();
        compare(&good, &orders, &HashMap::new(), &mut report);
        assert!(report.findings.is_empty(), "{:?}", report.findings);
        assert_eq!(report.duplicates, 1);

        // a paid before accepted, c missing, b accepted though never accepted.
        let bad = [
            event(a, Kind::Paid),
            event(a, Kind::Accepted),
            event(b, Kind::Accepted),
            event(b, Kind::Cancelled),
            event(Uuid::now_v7(), Kind::Accepted),
        ];
        let mut report = EventsReport::default();
        compare(&bad, &orders, &HashMap::new(), &mut report);
        assert_eq!(report.findings.len(), 4, "{:?}", report.findings);
    }
}
