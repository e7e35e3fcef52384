//! Listening to the events stream during a run: how long each event took
//! from its transition's commit (its `time`, database clock) to reaching a
//! consumer (this machine's clock: the same machine).

use crate::stats::Latencies;
use futures::StreamExt;
use lapin::options::BasicAckOptions;
use shared::events::From;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Events heard, and their delivery lags.
#[derive(Debug, Default)]
pub struct Heard {
    /// Order events heard (duplicates included).
    pub order_events: u64,
    /// Product events heard.
    pub product_events: u64,
    /// Commit to consumer, per event.
    pub lag: Latencies,
}

/// A consumer of the events stream from now on.
pub struct Listener {
    heard: Arc<Mutex<Heard>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Listener {
    /// Listens to `{namespace}.events` on `amqp_url` from the next entry;
    /// `None` when the stream cannot be read (then nothing is measured).
    pub async fn start(amqp_url: &str, namespace: &str) -> Option<Listener> {
        let conn = shared::broker::connect(amqp_url, "flashstock bench events")
            .await
            .ok()?;
        let stream = format!("{namespace}.events");
        let mut consumer =
            shared::events::subscribe(&conn, &stream, From::Next, 500, "flashstock-bench")
                .await
                .ok()?;
        let heard: Arc<Mutex<Heard>> = Arc::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (heard, stop) = (heard.clone(), stop.clone());
            async move {
                loop {
                    let delivery = tokio::select! {
                        _ = stop.cancelled() => break,
                        d = consumer.next() => d,
                    };
                    let Some(Ok(delivery)) = delivery else { break };
                    let now = chrono::Utc::now();
                    if let Ok(events) = shared::events::parse_entry(&delivery.data) {
                        let mut heard = heard.lock().expect("heard");
                        for event in events {
                            if event.order().is_some() {
                                heard.order_events += 1;
                            } else {
                                heard.product_events += 1;
                            }
                            if let Ok(at) = chrono::DateTime::parse_from_rfc3339(&event.time) {
                                let lag = (now - at.with_timezone(&chrono::Utc))
                                    .to_std()
                                    .unwrap_or_default();
                                heard.lag.push(lag);
                            }
                        }
                    }
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                }
                let _ = conn.close(200, "done".into()).await;
            }
        });
        Some(Listener { heard, stop, task })
    }

    /// Order events heard so far.
    pub fn order_events(&self) -> u64 {
        self.heard.lock().expect("heard").order_events
    }

    /// Waits (up to `patience`) until `decided` order events were heard,
    /// if any were heard at all (with events off none come), then stops.
    pub async fn finish(self, decided: u64, patience: Duration) -> Heard {
        let deadline = tokio::time::Instant::now() + patience;
        while self.order_events() > 0
            && self.order_events() < decided
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.cancel();
        let _ = self.task.await;
        std::mem::take(&mut *self.heard.lock().expect("heard"))
    }
}
