//! `bench`: drives a running flashstock (api + workers) through its public
//! API and checks the outcome.
//!
//! Scenarios: `flash-sale` (one product, many buyers), `many-products`
//! (uniform or skewed over P products), `sold-out` (a product with no stock).
//! Requests go to loopback addresses only; every run is bounded in orders
//! and in time. Exits 1 when a check fails.

// A command-line report is this binary's output.
#![allow(clippy::print_stdout)]

mod stats;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{Value, json};
use stats::{Latencies, Percentiles};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Load generator and checker for flashstock")]
struct Cli {
    /// The api's base URL; loopback addresses only.
    #[arg(long, default_value = "http://127.0.0.1:3000", global = true)]
    base_url: String,
    /// Concurrent clients, each with its own keep-alive connection.
    #[arg(long, default_value_t = 64, global = true)]
    clients: usize,
    /// Send `Prefer: wait=N` with every order (0 = asynchronous, poll afterwards).
    #[arg(long, default_value_t = 0, global = true)]
    wait: u64,
    /// Give up (and fail) when the run takes longer than this many seconds.
    #[arg(long, default_value_t = 600, global = true)]
    max_seconds: u64,
    /// Print the summary as one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Report the peak resident memory (VmHWM) of these process ids.
    #[arg(long = "watch-pid", global = true)]
    watch_pids: Vec<u32>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug, Clone)]
enum Scenario {
    /// One product with `stock` units, `orders` orders of one unit.
    FlashSale {
        #[arg(long, default_value_t = 10_000)]
        stock: i64,
        #[arg(long, default_value_t = 100_000)]
        orders: usize,
    },
    /// `products` products with `stock` units each; orders spread uniformly or skewed (Zipf-like).
    ManyProducts {
        #[arg(long, default_value_t = 16)]
        products: usize,
        #[arg(long, default_value_t = 1_000)]
        stock: i64,
        #[arg(long, default_value_t = 20_000)]
        orders: usize,
        #[arg(long)]
        skewed: bool,
    },
    /// Orders for a product with no stock: every one must be rejected.
    SoldOut {
        #[arg(long, default_value_t = 20_000)]
        orders: usize,
    },
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Self::FlashSale { .. } => "flash-sale",
            Self::ManyProducts { .. } => "many-products",
            Self::SoldOut { .. } => "sold-out",
        }
    }

    fn orders(&self) -> usize {
        match self {
            Self::FlashSale { orders, .. }
            | Self::ManyProducts { orders, .. }
            | Self::SoldOut { orders } => *orders,
        }
    }
}

/// The printed result.
#[derive(Debug, Serialize)]
struct Summary {
    scenario: &'static str,
    orders: usize,
    clients: usize,
    wait: u64,
    submitted: usize,
    accepted: u64,
    rejected: u64,
    errors: usize,
    submit_seconds: f64,
    submit_per_second: f64,
    decided_seconds: f64,
    decided_per_second: f64,
    submit_latency_ms: Percentiles,
    decision_latency_ms: Percentiles,
    peak_rss_mib: Vec<(u32, f64)>,
    checks: Vec<Check>,
    ok: bool,
}

#[derive(Debug, Serialize)]
struct Check {
    what: String,
    ok: bool,
}

fn check(checks: &mut Vec<Check>, what: impl Into<String>, ok: bool) {
    checks.push(Check {
        what: what.into(),
        ok,
    });
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    ensure_loopback(&cli.base_url)?;
    let deadline = Instant::now() + Duration::from_secs(cli.max_seconds);
    let api = Api::new(&cli.base_url, cli.wait)?;

    // The world: products and their stock.
    let (stocks, plan): (Vec<(u64, i64)>, Vec<usize>) = match &cli.scenario {
        Scenario::FlashSale { stock, orders } => (
            vec![(api.product("flash-sale", *stock).await?, *stock)],
            vec![0; *orders],
        ),
        Scenario::SoldOut { orders } => (
            vec![(api.product("sold-out", 0).await?, 0)],
            vec![0; *orders],
        ),
        Scenario::ManyProducts {
            products,
            stock,
            orders,
            skewed,
        } => {
            let mut ids = Vec::new();
            for i in 0..*products {
                ids.push((api.product(&format!("product-{i}"), *stock).await?, *stock));
            }
            (ids, spread(*orders, *products, *skewed))
        }
    };
    let products: Arc<Vec<u64>> = Arc::new(stocks.iter().map(|(id, _)| *id).collect());
    let plan = Arc::new(plan);
    let total = cli.scenario.orders();

    // Submit.
    let progress = ProgressBar::new(total as u64);
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, {eta})",
        )?
        .progress_chars("=> "),
    );
    progress.set_message("submitting");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..cli.clients {
        // Each client its own connection, as separate buyers would have.
        let (api, next, plan, products, progress) = (
            Api::new(&cli.base_url, cli.wait)?,
            next.clone(),
            plan.clone(),
            products.clone(),
            progress.clone(),
        );
        let wait = cli.wait;
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= plan.len() || Instant::now() > deadline {
                    return out;
                }
                let sent = Instant::now();
                let result = api.order(products[plan[i]], wait).await;
                out.push((sent.elapsed(), result));
                progress.inc(1);
            }
        }));
    }
    let mut submit_latency = Latencies::default();
    let mut ids = Vec::with_capacity(total);
    let mut errors = 0;
    for task in tasks {
        for (latency, result) in task.await? {
            submit_latency.push(latency);
            match result {
                Ok(id) => ids.push(id),
                Err(_) => errors += 1,
            }
        }
    }
    let submit_seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();

    // Drain: wait until nothing is pending.
    let spinner = ProgressBar::new_spinner();
    spinner.set_message("waiting for every decision");
    spinner.enable_steady_tick(Duration::from_millis(120));
    let mut finished_in_time = true;
    let (mut accepted, mut rejected);
    loop {
        let (mut pending, mut acc, mut rej) = (0, 0, 0);
        for &product in products.iter() {
            let s = api
                .get(&format!("/api/products/{product}/orders/summary"))
                .await?;
            pending += s["pending"].as_u64().unwrap_or(0);
            acc += s["accepted"].as_u64().unwrap_or(0);
            rej += s["rejected"].as_u64().unwrap_or(0);
        }
        (accepted, rejected) = (acc, rej);
        if pending == 0 {
            break;
        }
        if Instant::now() > deadline {
            finished_in_time = false;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let decided_seconds = started.elapsed().as_secs_f64();
    spinner.finish_and_clear();

    // Submit-to-decision latency, on the database clock, from a sample.
    let decision_latency = api.decision_latencies(&ids, 2_000).await?;

    // Checks through the public API.
    let mut checks = Vec::new();
    check(
        &mut checks,
        format!("finished within {} s", cli.max_seconds),
        finished_in_time,
    );
    check(
        &mut checks,
        "every submission answered 2xx",
        errors == 0 && ids.len() == total,
    );
    let mut expected_accepted = 0u64;
    for (i, &(product, stock)) in stocks.iter().enumerate() {
        let ordered = plan.iter().filter(|&&p| p == i).count() as i64;
        let expect = ordered.min(stock) as u64;
        expected_accepted += expect;
        let inv = api
            .get(&format!("/api/products/{product}/inventory"))
            .await?;
        let reserved = inv["reserved_stock"].as_i64().unwrap_or(-1);
        check(
            &mut checks,
            format!(
                "product {product}: reserved {reserved} = min(orders {ordered}, stock {stock})"
            ),
            reserved == expect as i64,
        );
        check(
            &mut checks,
            format!("product {product}: available = stock - reserved"),
            inv["available_stock"].as_i64() == Some(stock - reserved),
        );
    }
    check(
        &mut checks,
        format!("accepted {accepted} = expected {expected_accepted}"),
        accepted == expected_accepted,
    );
    check(
        &mut checks,
        format!("decided {} = submitted {}", accepted + rejected, ids.len()),
        accepted + rejected == ids.len() as u64,
    );
    let invariants = api.get("/api/admin/invariants").await?;
    check(&mut checks, "invariant check ok", invariants["ok"] == true);

    let submitted = ids.len();
    let summary = Summary {
        scenario: cli.scenario.name(),
        orders: total,
        clients: cli.clients,
        wait: cli.wait,
        submitted,
        accepted,
        rejected,
        errors,
        submit_seconds,
        submit_per_second: submitted as f64 / submit_seconds,
        decided_seconds,
        decided_per_second: (accepted + rejected) as f64 / decided_seconds,
        submit_latency_ms: submit_latency.percentiles(),
        decision_latency_ms: decision_latency.percentiles(),
        peak_rss_mib: cli
            .watch_pids
            .iter()
            .map(|&pid| (pid, peak_rss_mib(pid)))
            .collect(),
        ok: checks.iter().all(|c| c.ok),
        checks,
    };
    if cli.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print_table(&summary);
    }
    if !summary.ok {
        std::process::exit(1);
    }
    Ok(())
}

/// Refuses any base URL that is not on this machine.
fn ensure_loopback(base: &str) -> anyhow::Result<()> {
    let url = reqwest::Url::parse(base).context("--base-url is not a URL")?;
    let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']);
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("--base-url must be a loopback address (127.0.0.0/8, ::1, localhost), got {host:?}");
    }
    Ok(())
}

/// Which product each order goes to: round-robin, or Zipf-like (product i
/// weighted 1/(i+1)) from a fixed-seed generator so runs repeat.
fn spread(orders: usize, products: usize, skewed: bool) -> Vec<usize> {
    if !skewed {
        return (0..orders).map(|i| i % products).collect();
    }
    let weights: Vec<f64> = (0..products).map(|i| 1.0 / (i as f64 + 1.0)).collect();
    let sum: f64 = weights.iter().sum();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..orders)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut x = (state >> 11) as f64 / (1u64 << 53) as f64 * sum;
            for (i, w) in weights.iter().enumerate() {
                if x < *w {
                    return i;
                }
                x -= w;
            }
            products - 1
        })
        .collect()
}

/// Peak resident set (VmHWM) of `pid`, in MiB; 0 when unreadable.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn print_table(s: &Summary) {
    let p = |x: &Percentiles| {
        format!(
            "p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}",
            x.p50, x.p95, x.p99, x.max
        )
    };
    println!(
        "scenario            {} ({} orders, {} clients, wait {})",
        s.scenario, s.orders, s.clients, s.wait
    );
    println!("submitted           {}", s.submitted);
    println!("accepted            {}", s.accepted);
    println!("rejected            {}", s.rejected);
    println!("errors              {}", s.errors);
    println!(
        "submit throughput   {:.0} orders/s ({:.2} s)",
        s.submit_per_second, s.submit_seconds
    );
    println!(
        "decided throughput  {:.0} orders/s (first submit to last decision, {:.2} s)",
        s.decided_per_second, s.decided_seconds
    );
    println!("submit latency ms   {}", p(&s.submit_latency_ms));
    println!(
        "decision latency ms {} (submit to decision, database clock, sampled)",
        p(&s.decision_latency_ms)
    );
    for (pid, mib) in &s.peak_rss_mib {
        println!("peak RSS pid {pid:<7} {mib:.1} MiB");
    }
    for c in &s.checks {
        println!("{} {}", if c.ok { "ok  " } else { "FAIL" }, c.what);
    }
}

/// The public API, as the bench uses it.
#[derive(Clone)]
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(base: &str, wait: u64) -> anyhow::Result<Self> {
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(30 + wait))
                .build()?,
        })
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let body: Value = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await?
            .json()
            .await?;
        Ok(body["data"].clone())
    }

    async fn product(&self, name: &str, stock: i64) -> anyhow::Result<u64> {
        let r = self
            .http
            .post(format!("{}/api/products", self.base))
            .json(&json!({"name": name, "stock": stock}))
            .send()
            .await?;
        let body: Value = r.json().await?;
        body["data"]["id"]
            .as_u64()
            .with_context(|| format!("creating a product: {body}"))
    }

    /// Submits one order of one unit; the order id on any 2xx or 400 (a decided rejection).
    async fn order(&self, product: u64, wait: u64) -> anyhow::Result<String> {
        let mut req = self
            .http
            .post(format!("{}/api/orders", self.base))
            .json(&json!({"product_id": product, "total": 1}));
        if wait > 0 {
            req = req.header("Prefer", format!("wait={wait}"));
        }
        let r = req.send().await?;
        let status = r.status();
        let body: Value = r.json().await?;
        match (status.as_u16(), body["data"]["id"].as_str()) {
            (200..=299 | 400, Some(id)) => Ok(id.to_owned()),
            _ => bail!("{status}: {body}"),
        }
    }

    /// `decided_at - created_at` of up to `sample` orders spread over `ids`.
    async fn decision_latencies(&self, ids: &[String], sample: usize) -> anyhow::Result<Latencies> {
        let step = (ids.len() / sample.max(1)).max(1);
        let picked: Vec<&String> = ids.iter().step_by(step).collect();
        let orders: Vec<anyhow::Result<Value>> = futures::stream::iter(picked)
            .map(|id| self.get_order(id))
            .buffer_unordered(32)
            .collect()
            .await;
        let mut latencies = Latencies::default();
        for order in orders.into_iter().flatten() {
            let parse = |k: &str| {
                order[k]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            };
            if let (Some(created), Some(decided)) = (parse("created_at"), parse("decided_at")) {
                latencies.push((decided - created).to_std().unwrap_or_default());
            }
        }
        Ok(latencies)
    }

    async fn get_order(&self, id: &str) -> anyhow::Result<Value> {
        self.get(&format!("/api/orders/{id}")).await
    }
}
