//! `worker events`: prints order events from the events stream, for
//! operators (one JSON object per line: the entry's offset and the event).
//!
//! ```text
//! worker events [--from first|last|next|OFFSET|TIME|DURATION] [--type TYPE]... [--product ID]... [--count N]
//! ```

use futures::StreamExt;
use lapin::options::BasicAckOptions;
use shared::Config;
use shared::broker::{BrokerLink, Topology};
use shared::events::{CloudEvent, From, Kind};
use std::io::Write as _;
use tokio_util::sync::CancellationToken;

/// What to print.
#[derive(Debug, PartialEq)]
pub struct Tail {
    /// Where to start (`next` by default: only new events).
    pub from: From,
    /// Only these types (`flashstock.order.rejected`, or just `rejected`);
    /// empty: all.
    pub types: Vec<String>,
    /// Only these products' events; empty: all.
    pub products: Vec<u64>,
    /// Stop after this many events; `None`: follow until interrupted.
    pub count: Option<u64>,
}

/// The usage line.
pub const USAGE: &str = "usage: worker events [--from first|last|next|OFFSET|RFC3339-TIME|DURATION-AGO] \
                         [--type TYPE]... [--product ID]... [--count N]";

impl Tail {
    /// Parses the arguments after `events`.
    pub fn parse(args: &[String]) -> Result<Tail, String> {
        let mut tail = Tail {
            from: From::Next,
            types: Vec::new(),
            products: Vec::new(),
            count: None,
        };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
                "--from" => tail.from = From::parse(value()?)?,
                "--type" => {
                    let given = value()?;
                    let kind = Kind::of_type(given)
                        .or_else(|| Kind::parse(given))
                        .ok_or(format!("--type {given:?}: not an event type"))?;
                    tail.types.push(kind.event_type());
                }
                "--product" => tail.products.push(
                    value()?
                        .parse()
                        .map_err(|_| "--product takes a product id".to_owned())?,
                ),
                "--count" => {
                    tail.count = Some(
                        value()?
                            .parse()
                            .map_err(|_| "--count takes a number".to_owned())?,
                    );
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(tail)
    }

    fn wants(&self, event: &CloudEvent) -> bool {
        (self.types.is_empty() || self.types.contains(&event.event_type))
            && (self.products.is_empty() || self.products.contains(&event.product_id()))
    }

    /// Prints matching events until `count` or `stop`.
    pub async fn run(self, config: Config, stop: CancellationToken) -> anyhow::Result<()> {
        let topology = Topology::from_config(&config);
        let link = BrokerLink::start(
            config.amqp_url.clone(),
            "flashstock events tail".into(),
            topology.clone(),
            stop.clone(),
        )
        .await?;
        let Some(conn) = link.connected(&stop).await else {
            return Ok(());
        };
        let mut consumer = shared::events::subscribe(
            &conn,
            &topology.events_stream(),
            self.from,
            100,
            "flashstock-tail",
        )
        .await?;
        let mut printed = 0u64;
        let mut out = std::io::stdout().lock();
        loop {
            let delivery = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                next = consumer.next() => match next {
                    Some(delivery) => delivery?,
                    None => anyhow::bail!("the broker closed the stream consumer"),
                },
            };
            let offset = shared::events::offset_of(&delivery.properties);
            for event in shared::events::parse_entry(&delivery.data)? {
                if !self.wants(&event) {
                    continue;
                }
                let line = serde_json::json!({"offset": offset, "event": event});
                writeln!(out, "{line}")?;
                printed += 1;
                if self.count.is_some_and(|n| printed >= n) {
                    out.flush()?;
                    return Ok(());
                }
            }
            out.flush()?;
            delivery.ack(BasicAckOptions::default()).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn the_tail_takes_a_start_types_products_and_a_count() {
        let tail = Tail::parse(&args(
            "--from first --type rejected --type flashstock.order.paid --product 7 --count 3",
        ))
        .unwrap();
        assert_eq!(
            tail,
            Tail {
                from: From::First,
                types: vec![
                    "flashstock.order.rejected".into(),
                    "flashstock.order.paid".into()
                ],
                products: vec![7],
                count: Some(3),
            }
        );
        assert_eq!(Tail::parse(&[]).unwrap().from, From::Next);
        for bad in [
            "--from",
            "--type shipped",
            "--product x",
            "--colour red",
            "--from yesterday",
        ] {
            assert!(Tail::parse(&args(bad)).is_err(), "{bad}");
        }
    }
}
