//! Partition leases across workers: spreading, joining, releasing, fencing.

use flashstock_tests::{Options, TestApp};
use reqwest::StatusCode;
use shared::db::leases;
use shared::domain::{OrderId, ProductId, Quantity};
use shared::message::OrderMessage;
use shared::partition::partition_of;
use std::time::{Duration, Instant};

fn fast_leases() -> Options {
    Options::default()
        .env("ORDER_PARTITIONS", "16")
        .env("HEARTBEAT_INTERVAL", "100ms")
        .env("LEASE_DURATION", "1s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_sixteen_partitions_and_a_fourth_takes_its_share() {
    let mut app = TestApp::spawn(fast_leases().workers(3)).await;
    let loads = app
        .wait_for_owners(|l| l.len() == 3 && l.values().all(|&n| (4..=7).contains(&n)))
        .await;
    assert_eq!(loads.values().sum::<usize>(), 16, "{loads:?}");

    app.spawn_worker(app.config.clone()).await;
    // Settles (within the harness's deadline) with none below 3; right after
    // joining, the newcomer may hold fewer while the others release.
    let loads = app
        .wait_for_owners(|l| l.len() == 4 && l.values().all(|&n| n >= 3))
        .await;
    assert_eq!(loads.values().sum::<usize>(), 16, "{loads:?}");

    // The system still decides correctly while partitions move.
    let product = app.create_product("Kaos", 3).await;
    for _ in 0..3 {
        let (status, body) = app.post_order(product, 1, Some(10)).await;
        assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
    }
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_releases_its_partitions_at_once() {
    let mut app = TestApp::spawn(fast_leases().workers(1)).await;
    app.wait_for_owners(|l| l.len() == 1).await;
    app.stop().await;
    let owners = leases::owners(&app.db).await.unwrap();
    assert!(
        owners.iter().all(|(_, owner, _, _)| owner.is_none()),
        "{owners:?}"
    );
    let live = leases::live_workers(&app.db, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(live.is_empty(), "{live:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_lease_was_taken_cannot_commit() {
    let app = TestApp::spawn(Options::default().workers(0)).await;
    let product = app.create_product("Kaos", 5).await;
    let id = app.record_order_without_publishing(product, 1).await;
    leases::ensure_partitions(&app.db, 4).await.unwrap();
    let lease_duration = Duration::from_millis(300);
    let old = leases::acquire(&app.db, 0, "paused-worker", lease_duration)
        .await
        .unwrap()
        .unwrap();
    // The paused worker misses its renewals; another worker takes over.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let new = leases::acquire(&app.db, 0, "other-worker", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert!(new.epoch > old.epoch);
    assert!(
        !leases::renew(&app.db, &old, lease_duration).await.unwrap(),
        "a lost lease cannot be renewed"
    );

    let order = OrderMessage {
        order_id: OrderId::from(id),
        product_id: ProductId::new(product as i64).unwrap(),
        total: Quantity::new(1, 10).unwrap(),
    };
    let fenced = worker::decide::decide_fenced(
        &app.db,
        &[order],
        worker::decide::Terms::new(Duration::from_secs(60)),
        &old,
    )
    .await
    .unwrap();
    assert!(fenced.is_none(), "the old owner was fenced off");
    let status: (String,) = sqlx::query_as("SELECT status FROM orders WHERE id = ?")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(status.0, "PENDING", "nothing was written");

    let decided = worker::decide::decide_fenced(
        &app.db,
        &[order],
        worker::decide::Terms::new(Duration::from_secs(60)),
        &new,
    )
    .await
    .unwrap();
    assert_eq!(
        decided.unwrap().decisions[0].outcome,
        worker::decide::Outcome::Accepted
    );
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_metrics_count_decisions_and_owned_partitions() {
    let app = TestApp::spawn(Options::default()).await;
    let product = app.create_product("Kaos", 1).await;
    // Rejected by the worker (2 > 1 available), then accepted.
    app.post_order(product, 2, Some(10)).await;
    app.post_order(product, 1, Some(10)).await;
    let port = app.worker_metrics_ports[0];
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "flashstock_worker_orders_decided_total{outcome=\"accepted\"} 1",
        "flashstock_worker_orders_decided_total{outcome=\"rejected\"} 1",
        "flashstock_worker_partitions_owned 4",
        "flashstock_worker_decision_latency_seconds_count 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    assert!(text.contains("flashstock_worker_batch_size_bucket{le=\"+Inf\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_partition_shows_its_backlog_and_its_age() {
    let app = TestApp::spawn(Options::default()).await;
    let stuck = app.create_product("stuck", 10).await;
    let flowing = app.create_product("flowing", 10).await;
    let (status, _) = app.post_order(flowing, 1, Some(10)).await;
    assert_eq!(status, StatusCode::CREATED);
    // Recorded but never published: nothing will decide them, as when a
    // partition's consumer is stuck.
    let stuck_id = ProductId::new(stuck as i64).unwrap();
    for _ in 0..3 {
        let order = shared::db::orders::NewOrder {
            id: OrderId::generate(),
            product: stuck_id,
            total: Quantity::new(1, 10).unwrap(),
            buyer: None,
        };
        shared::db::orders::insert(&app.db, &order, "nobody")
            .await
            .unwrap();
    }
    let partitions = app.config.order_partitions;
    let stuck_partition = partition_of(stuck_id, partitions);
    let port = app.worker_metrics_ports[0];
    let waiting = format!("flashstock_worker_backlog_orders{{partition=\"{stuck_partition}\"}} 3");
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let age = text.lines().find_map(|l| {
            l.strip_prefix(&format!(
                "flashstock_worker_backlog_oldest_seconds{{partition=\"{stuck_partition}\"}} "
            ))?
            .parse::<f64>()
            .ok()
        });
        if text.lines().any(|l| l == waiting) && age.is_some_and(|a| a >= 1.0) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no backlog of 3 aged 1 s in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Every other partition is held and shows no backlog: one sample each.
    for p in (0..partitions).filter(|&p| p != stuck_partition) {
        let line = format!("flashstock_worker_backlog_orders{{partition=\"{p}\"}} 0");
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    let samples = text
        .lines()
        .filter(|l| l.starts_with("flashstock_worker_backlog_orders{"))
        .count();
    assert_eq!(samples, usize::from(partitions), "{text}");
    for line in [
        "flashstock_worker_database_up 1".to_owned(),
        format!("flashstock_worker_partition_count {partitions}"),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_starting_together_agree_and_a_different_partition_count_is_refused() {
    let app = TestApp::spawn(Options::default().workers(0).env("ORDER_PARTITIONS", "16")).await;
    // A fresh namespace declared by several processes at once: none of them
    // may mistake the others' half-done declaration for a mismatch.
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(
            shared::broker::connect(&flashstock_tests::amqp_url(), "declarer")
                .await
                .unwrap(),
        );
    }
    for round in 0..10 {
        let mut config = app.config.clone();
        config.broker_namespace = format!("{}_r{round}", app.config.broker_namespace);
        let topology = shared::broker::Topology::from_config(&config);
        // Staggered, so later ones check while earlier ones are declaring.
        let declared = futures::future::join_all(conns.iter().enumerate().map(|(i, c)| {
            let topology = &topology;
            async move {
                tokio::time::sleep(Duration::from_millis(i as u64 * 4 * (round + 1))).await;
                topology.declare(c).await
            }
        }))
        .await;
        let failures: Vec<String> = declared
            .iter()
            .filter_map(|r| r.as_ref().err().map(ToString::to_string))
            .collect();
        flashstock_tests::delete_broker_objects(&topology).await;
        assert!(failures.is_empty(), "round {round}: {failures:?}");
    }
    // Another partition count on the same namespace is refused, both ways.
    for partitions in [8, 32] {
        let mut other = app.config.clone();
        other.order_partitions = partitions;
        let err = match worker::Worker::build(other).await {
            Ok(_) => panic!("a worker with ORDER_PARTITIONS={partitions} started"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("ORDER_PARTITIONS"), "{err}");
    }
}

/// Several partitions' batches in one transaction: each group is fenced by
/// its own lease, each order carries its own partition's epoch, and a group
/// whose lease was lost is left untouched while the others commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_transaction_decides_each_partition_under_its_own_epoch() {
    use worker::decide::{Group, Outcome, decide_fenced_groups};
    let app = TestApp::spawn(Options::default().workers(0)).await;
    leases::ensure_partitions(&app.db, 4).await.unwrap();
    let long = Duration::from_secs(30);
    let a = leases::acquire(&app.db, 0, "w", long)
        .await
        .unwrap()
        .unwrap();
    // Partition 1 changes hands twice, so its epoch differs from partition 0's.
    let first = leases::acquire(&app.db, 1, "x", long)
        .await
        .unwrap()
        .unwrap();
    leases::release(&app.db, &first).await.unwrap();
    let b = leases::acquire(&app.db, 1, "w", long)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(a.epoch, b.epoch);
    let short = Duration::from_millis(200);
    let lost = leases::acquire(&app.db, 2, "w", short)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    leases::acquire(&app.db, 2, "y", long)
        .await
        .unwrap()
        .unwrap();

    let mut products = Vec::new();
    for stock in [1, 5, 5, 5] {
        products.push(app.create_product("Kaos", stock).await);
    }
    let message = |product: u64| {
        let app = &app;
        async move {
            let id = app.record_order_without_publishing(product, 1).await;
            OrderMessage {
                order_id: OrderId::from(id),
                product_id: ProductId::new(product as i64).unwrap(),
                total: Quantity::new(1, 10).unwrap(),
            }
        }
    };
    let group_a = vec![
        message(products[0]).await,
        message(products[0]).await,
        message(products[1]).await,
    ];
    let group_b = vec![message(products[2]).await];
    let group_lost = vec![message(products[3]).await];
    let groups = [
        Group {
            orders: &group_a,
            lease: &a,
        },
        Group {
            orders: &group_b,
            lease: &b,
        },
        Group {
            orders: &group_lost,
            lease: &lost,
        },
    ];
    let decided = decide_fenced_groups(&app.db, &groups, worker::decide::Terms::new(long))
        .await
        .unwrap();
    let outcomes = |i: usize| -> Vec<Outcome> {
        decided[i]
            .as_ref()
            .unwrap()
            .decisions
            .iter()
            .map(|d| d.outcome.clone())
            .collect()
    };
    assert_eq!(
        outcomes(0),
        [
            Outcome::Accepted,
            Outcome::Rejected("OUT_OF_STOCK"),
            Outcome::Accepted
        ]
    );
    assert_eq!(outcomes(1), [Outcome::Accepted]);
    assert!(decided[2].is_none(), "the lost lease's group is fenced off");

    for (messages, lease) in [
        (&group_a, Some(&a)),
        (&group_b, Some(&b)),
        (&group_lost, None),
    ] {
        for m in messages.iter() {
            let (status, by, epoch): (String, Option<String>, Option<u64>) =
                sqlx::query_as("SELECT status, decided_by, decided_epoch FROM orders WHERE id = ?")
                    .bind(m.order_id.uuid())
                    .fetch_one(&app.db)
                    .await
                    .unwrap();
            match lease {
                Some(l) => {
                    assert_ne!(status, "PENDING");
                    assert_eq!(by.as_deref(), Some("w"));
                    assert_eq!(epoch, Some(l.epoch), "{status}");
                }
                None => assert_eq!((status.as_str(), by, epoch), ("PENDING", None, None)),
            }
        }
    }
    assert_eq!(app.inventory(products[0]).await["reserved_stock"], 1);
    assert_eq!(app.inventory(products[1]).await["reserved_stock"], 1);
    assert_eq!(app.inventory(products[2]).await["reserved_stock"], 1);
    assert_eq!(app.inventory(products[3]).await["reserved_stock"], 0);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_committed_before_a_fence_are_announced_all_the_same() {
    use futures::StreamExt;
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    use shared::message::{DecisionNotice, OrderBatch};
    // One order per transaction, so that one message's orders commit one
    // by one and a fence can fall between them.
    let mut app = TestApp::spawn(fast_leases().workers(0).env("WORKER_BATCH_SIZE", "1")).await;
    let product = app.create_product("Kaos", 1_000).await;
    // 300 orders recorded by an api that is alive and never republishes
    // them, and sent as one message.
    let quiet_api = app.quiet_api().await;
    let mut orders = Vec::new();
    for _ in 0..300 {
        let id = uuid::Uuid::now_v7();
        sqlx::query("INSERT INTO orders (id, product_id, total, recorded_by) VALUES (?, ?, 1, ?)")
            .bind(id)
            .bind(product)
            .bind(&quiet_api)
            .execute(&app.db)
            .await
            .unwrap();
        orders.push(OrderMessage {
            order_id: OrderId::from(id),
            product_id: ProductId::new(product as i64).unwrap(),
            total: Quantity::new(1, 1000).unwrap(),
        });
    }
    let topology = app.topology();
    let partition = partition_of(orders[0].product_id, app.config.order_partitions);
    let payload = serde_json::to_vec(&OrderBatch { orders }).unwrap();
    app.publish_raw(
        &topology.orders_exchange(),
        &shared::broker::Topology::routing_key(partition),
        &payload,
    )
    .await;

    // Hear every notice, as an api does.
    let conn = shared::broker::connect(&flashstock_tests::amqp_url(), "notice listener")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let queue = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.queue_bind(
        queue.name().clone(),
        topology.decisions_exchange().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let heard = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let listener = {
        let heard = heard.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let notice: DecisionNotice = serde_json::from_slice(&d.data).unwrap();
                let mut heard = heard.lock().unwrap();
                heard.extend(notice.decisions.iter().map(|o| o.order_id.uuid()));
            }
        })
    };

    app.spawn_worker(app.config.clone()).await;
    // Some of the message's orders are committed: take the partition away.
    let decided = || async {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM orders WHERE status <> 'PENDING'")
            .fetch_one(&app.db)
            .await
            .unwrap();
        n
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while decided().await < 10 {
        assert!(Instant::now() < deadline, "nothing decided");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sqlx::query("UPDATE partition_leases SET epoch = epoch + 1 WHERE partition_no = ?")
        .bind(partition)
        .execute(&app.db)
        .await
        .unwrap();
    let fenced_at = decided().await;
    assert!(fenced_at < 300, "the fence fell after the whole message");
    // The partition is leased again and the message redelivered: every
    // order ends up decided, and every decision was heard.
    let counts = app.drain(product, Duration::from_secs(60)).await;
    assert!(!counts.contains_key("PENDING"), "{counts:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let decided_ids: Vec<(uuid::Uuid,)> =
        sqlx::query_as("SELECT id FROM orders WHERE status <> 'PENDING'")
            .fetch_all(&app.db)
            .await
            .unwrap();
    let heard = heard.lock().unwrap().clone();
    let unheard = decided_ids
        .iter()
        .filter(|(id,)| !heard.contains(id))
        .count();
    assert_eq!(
        unheard,
        0,
        "{unheard} of {} decisions never announced ({fenced_at} decided when the fence fell)",
        decided_ids.len()
    );
    listener.abort();
    let _ = conn.close(200, "done".into()).await;
}
