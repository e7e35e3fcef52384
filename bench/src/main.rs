//! `bench`: drives a running flashstock (api + workers) through its public
//! API and checks the outcome.
//!
//! Scenarios: `flash-sale` (one product, many buyers), `many-products`
//! (uniform or skewed over P products), `sold-out` (a product with no stock).
//! Load: closed loop (`--clients` each sending its next order when the last
//! is answered) or open loop (`--rate` orders arriving per second for
//! `--duration` seconds, whatever the answers).
//! Requests go to loopback addresses only; every run is bounded in orders
//! and in time. Exits 1 when a check fails.

// A command-line report is this binary's output.
#![allow(clippy::print_stdout)]

mod api;
mod events;
mod load;
mod procstat;
mod report;
mod stats;
mod wire;

use anyhow::{Context, bail};
use api::{Api, OrderKey};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use load::{Plan, Schedule, Tally};
use report::{Check, PerSecond, ProcessReport, Summary};
use stats::Latencies;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Orders read at once when reading decision times after the run.
const READ_CONCURRENCY: usize = 64;

/// Open-loop default for `--latency-sample`: orders read per second of `--duration`.
const SAMPLE_PER_SECOND: usize = 500;

/// File descriptors kept free for everything but the requests in flight.
const SPARE_FILES: u64 = 256;

#[derive(Parser, Debug)]
#[command(about = "Load generator and checker for flashstock")]
struct Cli {
    /// The api's base URL; loopback addresses only.
    #[arg(long, default_value = "http://127.0.0.1:3000", global = true)]
    base_url: String,
    /// Closed loop: concurrent clients, each with its own keep-alive connection
    /// (ignored with --rate).
    #[arg(long, default_value_t = 64, global = true)]
    clients: usize,
    /// Open loop: orders arriving per second, on schedule whatever the answers,
    /// each sent as its own request (no fixed pool of clients). Needs
    /// --duration; rate × duration orders are sent, and the scenario's
    /// --orders and --clients are ignored.
    #[arg(long, global = true)]
    rate: Option<f64>,
    /// Open loop: seconds of arrivals (with --rate).
    #[arg(long, global = true)]
    duration: Option<f64>,
    /// Open loop: most requests outstanding at once; an arrival while this
    /// many are outstanding is not sent and counts as client_dropped.
    /// Lowered, with a warning, to fit the open-files limit.
    #[arg(long, default_value_t = 20_000, global = true)]
    max_in_flight: usize,
    /// Read the decision latency from up to this many admitted orders, picked
    /// evenly through the run (0 = every one). Default: 2000 in closed loop,
    /// 500 per second of --duration in open loop.
    #[arg(long, global = true)]
    latency_sample: Option<usize>,
    /// Send `Prefer: wait=N` with every order (0 = asynchronous, poll afterwards).
    #[arg(long, default_value_t = 0, global = true)]
    wait: u64,
    /// Give up (and fail) when the run takes longer than this many seconds.
    #[arg(long, default_value_t = 600, global = true)]
    max_seconds: u64,
    /// Print the summary as one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Buyers: sign N buyers' tokens (HS256) with --buyer-secret; order n
    /// is placed by buyer n % N (so one buyer's orders come from several
    /// connections at once).
    #[arg(long, global = true)]
    buyers: Option<usize>,
    /// The api's BUYER_JWT_SECRET (its BUYER_JWT_ISSUER and
    /// BUYER_JWT_AUDIENCE, when set, are read from the environment too).
    #[arg(long, env = "BUYER_JWT_SECRET", hide_env_values = true, global = true)]
    buyer_secret: Option<String>,
    /// Every product's max_per_buyer.
    #[arg(long, global = true)]
    max_per_buyer: Option<u32>,
    /// The admin token (ADMIN_TOKEN), for creating products and reading.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true, global = true)]
    admin_token: Option<String>,
    /// The payment token (PAYMENT_TOKEN), for reading orders when there is
    /// no admin token.
    #[arg(long, env = "PAYMENT_TOKEN", hide_env_values = true, global = true)]
    payment_token: Option<String>,
    /// Report the CPU time, peak resident memory (VmHWM) and name of these process ids.
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
        /// Orders to send (closed loop; ignored with --rate).
        #[arg(long, default_value_t = 100_000)]
        orders: usize,
    },
    /// `products` products with `stock` units each; orders spread uniformly or skewed (Zipf-like).
    ManyProducts {
        #[arg(long, default_value_t = 16)]
        products: usize,
        #[arg(long, default_value_t = 1_000)]
        stock: i64,
        /// Orders to send (closed loop; ignored with --rate).
        #[arg(long, default_value_t = 20_000)]
        orders: usize,
        #[arg(long)]
        skewed: bool,
    },
    /// Orders for a product with no stock: every one must be rejected.
    SoldOut {
        /// Orders to send (closed loop; ignored with --rate).
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

/// How the load is driven.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Closed,
    Open {
        rate: f64,
        duration: f64,
        max_in_flight: usize,
        /// The --max-in-flight asked for, when the open-files limit lowered it.
        asked_in_flight: Option<usize>,
    },
}

impl Mode {
    fn of(cli: &Cli) -> anyhow::Result<Self> {
        let (rate, duration) = match (cli.rate, cli.duration) {
            (None, None) => return Ok(Self::Closed),
            (Some(r), Some(d)) => (r, d),
            (Some(_), None) => bail!("--rate needs --duration"),
            (None, Some(_)) => bail!("--duration needs --rate"),
        };
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be a positive number of orders per second");
        }
        if !(duration.is_finite() && duration > 0.0) {
            bail!("--duration must be a positive number of seconds");
        }
        if (rate * duration).round() < 1.0 {
            bail!("--rate × --duration must be at least one order");
        }
        if cli.max_in_flight == 0 {
            bail!("--max-in-flight must be at least 1");
        }
        // Each request in flight holds a socket: stay under the open-files limit.
        let mut max_in_flight = cli.max_in_flight;
        let mut asked_in_flight = None;
        if let Some(limit) = procstat::open_files_limit() {
            let fits =
                usize::try_from(limit.saturating_sub(SPARE_FILES).max(1)).unwrap_or(usize::MAX);
            if max_in_flight > fits {
                eprintln!(
                    "warning: --max-in-flight {max_in_flight} lowered to {fits}: the open-files limit is {limit} (raise it with ulimit -n)"
                );
                asked_in_flight = Some(max_in_flight);
                max_in_flight = fits;
            }
        }
        Ok(Self::Open {
            rate,
            duration,
            max_in_flight,
            asked_in_flight,
        })
    }

    fn orders(self, scenario: &Scenario) -> usize {
        match self {
            Self::Closed => scenario.orders(),
            Self::Open { rate, duration, .. } => (rate * duration).round() as usize,
        }
    }
}

/// A process whose CPU time is measured over the run.
struct Watched {
    pid: u32,
    /// Its `/proc` entry: a pid, or `self` for the bench.
    proc: String,
    role: &'static str,
    name: String,
    ticks_at_start: Option<u64>,
}

impl Watched {
    fn start(pid: u32, proc: String, role: &'static str) -> Self {
        Self {
            pid,
            name: procstat::name(&proc),
            ticks_at_start: procstat::cpu_ticks(&proc),
            proc,
            role,
        }
    }

    /// CPU seconds since `start`; `None` if either reading failed.
    fn cpu_seconds(&self, ticks_per_second: u64) -> Option<f64> {
        let end = procstat::cpu_ticks(&self.proc)?;
        Some(end.saturating_sub(self.ticks_at_start?) as f64 / ticks_per_second as f64)
    }
}

/// The service token, and the buyers' tokens when --buyers is given.
fn credentials(cli: &Cli) -> anyhow::Result<api::Credentials> {
    let service = cli
        .admin_token
        .clone()
        .or_else(|| cli.payment_token.clone())
        .map(Arc::from);
    let Some(n) = cli.buyers else {
        return Ok(api::Credentials {
            service,
            buyers: Arc::default(),
        });
    };
    if n == 0 {
        bail!("--buyers needs at least 1");
    }
    let secret = cli
        .buyer_secret
        .as_deref()
        .context("--buyers needs --buyer-secret (or BUYER_JWT_SECRET): the api's HS256 secret")?;
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    let now = chrono::Utc::now().timestamp();
    let issuer = std::env::var("BUYER_JWT_ISSUER").ok();
    let audience = std::env::var("BUYER_JWT_AUDIENCE").ok();
    let buyers = (0..n)
        .map(|b| {
            let mut claims = serde_json::json!({
                "sub": format!("bench-buyer-{b}"),
                "iat": now,
                "exp": now + 24 * 3600,
            });
            if let Some(iss) = &issuer {
                claims["iss"] = iss.as_str().into();
            }
            if let Some(aud) = &audience {
                claims["aud"] = aud.as_str().into();
            }
            jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(api::Credentials {
        service,
        buyers: Arc::new(buyers),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    ensure_loopback(&cli.base_url)?;
    let mode = Mode::of(&cli)?;
    let deadline = Instant::now() + Duration::from_secs(cli.max_seconds);
    let credentials = credentials(&cli)?;
    let api = Api::new(&cli.base_url, 1, &credentials)?;
    let total = mode.orders(&cli.scenario);
    let limit = cli.max_per_buyer;

    // The world: products and their stock.
    let (stocks, plan): (Vec<(u64, i64)>, Vec<usize>) = match &cli.scenario {
        Scenario::FlashSale { stock, .. } => (
            vec![(api.product("flash-sale", *stock, limit).await?, *stock)],
            vec![0; total],
        ),
        Scenario::SoldOut { .. } => (
            vec![(api.product("sold-out", 0, limit).await?, 0)],
            vec![0; total],
        ),
        Scenario::ManyProducts {
            products,
            stock,
            skewed,
            ..
        } => {
            let mut ids = Vec::new();
            for i in 0..*products {
                let id = api.product(&format!("product-{i}"), *stock, limit).await?;
                ids.push((id, *stock));
            }
            (ids, spread(total, *products, *skewed))
        }
    };
    let plan = Plan {
        products: Arc::new(stocks.iter().map(|(id, _)| *id).collect()),
        orders: Arc::new(plan),
    };

    // CPU time from here to the last decision.
    let (ticks_per_second, ticks_source) = procstat::clock_ticks_per_second();
    let mut watched = vec![Watched::start(std::process::id(), "self".into(), "bench")];
    for &pid in &cli.watch_pids {
        watched.push(Watched::start(pid, pid.to_string(), "watched"));
    }

    // The events stream, heard from now on (when bench.sh says where).
    let listener = match std::env::var("BROKER_NAMESPACE") {
        Ok(namespace) => {
            let amqp = std::env::var("AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
            events::Listener::start(&amqp, &namespace).await
        }
        Err(_) => None,
    };

    // Submit.
    let progress = ProgressBar::new(total as u64);
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, {eta})",
        )?
        .progress_chars("=> "),
    );
    progress.set_message("submitting");
    let started = Instant::now();
    let (mut tally, schedule): (Tally, Option<Schedule>) = match mode {
        Mode::Closed => (
            load::closed_loop(
                &wire::Client::new(&cli.base_url, cli.wait, 0, &credentials)?,
                cli.clients,
                &plan,
                deadline,
                &progress,
            )
            .await?,
            None,
        ),
        Mode::Open {
            rate,
            max_in_flight,
            ..
        } => {
            // One client for every request; it keeps as many idle
            // connections as requests may be in flight.
            let shared = wire::Client::new(&cli.base_url, cli.wait, max_in_flight, &credentials)?;
            let (tally, schedule) =
                load::open_loop(shared, &plan, rate, max_in_flight, deadline, &progress).await?;
            (tally, Some(schedule))
        }
    };
    let submit_seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();

    // Drain: wait until nothing is pending.
    let spinner = ProgressBar::new_spinner();
    spinner.set_message("waiting for every decision");
    spinner.enable_steady_tick(Duration::from_millis(120));
    let mut finished_in_time = true;
    let (mut accepted, mut rejected, mut pending);
    loop {
        let (mut pend, mut acc, mut rej) = (0, 0, 0);
        for &product in plan.products.iter() {
            let s = api
                .get(&format!("/api/products/{product}/orders/summary"))
                .await?;
            pend += s["pending"].as_u64().unwrap_or(0);
            acc += s["accepted"].as_u64().unwrap_or(0);
            rej += s["rejected"].as_u64().unwrap_or(0);
        }
        (accepted, rejected, pending) = (acc, rej, pend);
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
    let cpu_seconds: Vec<Option<f64>> = watched
        .iter()
        .map(|w| w.cpu_seconds(ticks_per_second))
        .collect();

    // Every decision's event, when events are on (none come when off).
    let heard = match listener {
        Some(listener) => Some(
            listener
                .finish(accepted + rejected, Duration::from_secs(30))
                .await,
        ),
        None => None,
    };

    // Submit-to-decision latency, on the database clock, from a sample.
    let sample_limit = cli.latency_sample.unwrap_or(match mode {
        Mode::Closed => 2_000,
        Mode::Open { duration, .. } => SAMPLE_PER_SECOND * duration.ceil() as usize,
    });
    let sample = pick(&mut tally.admitted, sample_limit);
    let reading_bar = ProgressBar::new(sample.len() as u64);
    reading_bar.set_style(ProgressStyle::with_template(
        "{spinner} reading decisions [{bar:40}] {pos}/{len} ({per_sec}, {eta})",
    )?);
    let reader = Api::new(&cli.base_url, READ_CONCURRENCY, &credentials)?;
    let read_started = Instant::now();
    let reading = reader
        .decision_latencies(&sample, READ_CONCURRENCY, &reading_bar)
        .await;
    reading_bar.finish_and_clear();
    let read_seconds = read_started.elapsed().as_secs_f64();

    // Checks through the public API.
    let admitted = tally.admitted.len() as u64;
    let decided = accepted + rejected;
    let mut checks = Vec::new();
    let mut check = |what: String, ok: bool| checks.push(Check { what, ok });
    check(
        format!("finished within {} s", cli.max_seconds),
        finished_in_time,
    );
    if let Mode::Closed = mode {
        check(
            "every submission answered 2xx (or shed: 503 OVERLOADED)".into(),
            tally.errors == 0 && admitted + tally.shed == total as u64,
        );
    }
    check(
        format!(
            "every shed answer carried Retry-After ({} of {} without)",
            tally.shed_without_retry_after, tally.shed
        ),
        tally.shed_without_retry_after == 0,
    );
    let mut expected_accepted = 0u64;
    let mut total_stock = 0i64;
    // With a per-buyer limit (and buyers), no product can accept more than
    // the buyers may hold; the exact count then depends on who got in first.
    let buyer_cap = match (limit, credentials.buyers.len()) {
        (Some(l), n) if n > 0 => Some(i64::from(l) * n as i64),
        _ => None,
    };
    for (i, &(product, stock)) in stocks.iter().enumerate() {
        let ordered = tally.admitted_per_product[i] as i64;
        let expect = ordered.min(stock) as u64;
        expected_accepted += expect;
        total_stock += stock;
        let inv = api
            .get(&format!("/api/products/{product}/inventory"))
            .await?;
        let reserved = inv["reserved_stock"].as_i64().unwrap_or(-1);
        match mode {
            _ if buyer_cap.is_some() => {
                let cap = buyer_cap.unwrap_or_default().min(stock);
                expected_accepted = expected_accepted - expect + reserved.max(0) as u64;
                check(
                    format!(
                        "product {product}: reserved {reserved} <= min(stock {stock}, buyers x max_per_buyer) = {cap}"
                    ),
                    (0..=cap).contains(&reserved),
                )
            }
            Mode::Closed => check(
                format!(
                    "product {product}: reserved {reserved} = min(orders {ordered}, stock {stock})"
                ),
                reserved == expect as i64,
            ),
            // An error may hide an order that was recorded: then only the bound holds.
            Mode::Open { .. } if tally.errors > 0 => check(
                format!("product {product}: reserved {reserved} <= stock {stock}"),
                (0..=stock).contains(&reserved),
            ),
            Mode::Open { .. } => check(
                format!(
                    "product {product}: reserved {reserved} = min(admitted {ordered}, stock {stock})"
                ),
                reserved == expect as i64,
            ),
        }
        check(
            format!("product {product}: available = stock - reserved"),
            inv["available_stock"].as_i64() == Some(stock - reserved),
        );
    }
    match mode {
        Mode::Closed => check(
            format!("accepted {accepted} = expected {expected_accepted}"),
            accepted == expected_accepted,
        ),
        Mode::Open { .. } => check(
            format!("accepted {accepted} <= stock {total_stock}"),
            accepted as i64 <= total_stock,
        ),
    }
    check(
        format!("nothing pending at the end ({pending})"),
        pending == 0,
    );
    if tally.errors == 0 {
        check(
            format!("decided {decided} = admitted {admitted}"),
            decided == admitted,
        );
    } else {
        check(
            format!(
                "decided {decided} >= admitted {admitted} ({} errors: an order may be recorded without its answer)",
                tally.errors
            ),
            decided >= admitted,
        );
    }
    check(
        format!(
            "read {} of {} sampled orders, every one decided ({} undecided)",
            reading.read,
            sample.len(),
            reading.undecided
        ),
        reading.failed == 0 && reading.undecided == 0,
    );
    if let Some(heard) = heard.as_ref().filter(|h| h.order_events > 0) {
        check(
            format!(
                "an event heard for every decision ({} order events, {decided} decided)",
                heard.order_events
            ),
            heard.order_events >= decided,
        );
    }
    let invariants = api.get("/api/admin/invariants").await?;
    check("invariant check ok".into(), invariants["ok"] == true);

    // CPU per process, per decided order.
    let per_order = |seconds: f64| (decided > 0).then(|| seconds * 1e6 / decided as f64);
    let processes: Vec<ProcessReport> = watched
        .iter()
        .zip(&cpu_seconds)
        .map(|(w, &cpu)| ProcessReport {
            pid: w.pid,
            name: w.name.clone(),
            role: w.role,
            cpu_seconds: cpu,
            cpu_us_per_decided_order: cpu.and_then(per_order),
            peak_rss_mib: procstat::peak_rss_mib(&w.proc),
        })
        .collect();
    let sum = |role: Option<&str>| -> f64 {
        processes
            .iter()
            .filter(|p| role.is_none_or(|r| p.role == r))
            .filter_map(|p| p.cpu_seconds)
            .fold(0.0, |a, b| a + b)
    };
    let (watched_cpu, all_cpu) = (sum(Some("watched")), sum(None));
    let any_watched = !cli.watch_pids.is_empty();

    let per_second: Vec<PerSecond> = (0..tally.seconds.len().max(reading.per_second.len()))
        .map(|s| {
            let counts = tally.seconds.get(s).cloned().unwrap_or_default();
            let empty = Latencies::default();
            let latencies = reading.per_second.get(s).unwrap_or(&empty);
            PerSecond {
                second: s as u32,
                arrivals: counts.arrivals,
                sent: counts.sent,
                admitted: counts.admitted,
                shed: counts.shed,
                client_dropped: counts.client_dropped,
                errors: counts.errors,
                decision_latency_ms: latencies.percentiles(),
                decision_latency_read: latencies.len(),
            }
        })
        .collect();

    let sent = tally.sent();
    let (mode_name, rate, duration, max_in_flight, asked_in_flight) = match mode {
        Mode::Closed => ("closed", None, None, None, None),
        Mode::Open {
            rate,
            duration,
            max_in_flight,
            asked_in_flight,
        } => (
            "open",
            Some(rate),
            Some(duration),
            Some(max_in_flight),
            asked_in_flight,
        ),
    };
    let send_seconds = schedule.as_ref().map_or(submit_seconds, |s| s.send_seconds);
    let summary = Summary {
        scenario: cli.scenario.name(),
        mode: mode_name,
        orders: total,
        clients: matches!(mode, Mode::Closed).then_some(cli.clients),
        wait: cli.wait,
        offered_per_second: rate,
        duration_seconds: duration,
        max_in_flight,
        max_in_flight_asked: asked_in_flight,
        arrivals: schedule.as_ref().map_or(sent, |s| s.arrivals),
        sent,
        send_seconds,
        send_per_second: rate_of(sent, send_seconds),
        max_schedule_lag_ms: schedule.as_ref().map(|s| s.max_lag.as_secs_f64() * 1e3),
        peak_in_flight: schedule.as_ref().map(|s| s.peak_in_flight),
        submitted: tally.admitted.len(),
        admitted,
        shed: tally.shed,
        shed_without_retry_after: tally.shed_without_retry_after,
        client_dropped: tally.client_dropped,
        accepted,
        rejected,
        pending,
        errors: tally.errors as usize,
        first_error: tally.first_error.clone(),
        submit_seconds,
        submit_per_second: rate_of(admitted, submit_seconds),
        decided_seconds,
        decided_per_second: rate_of(decided, decided_seconds),
        submit_latency_ms: tally.submit_latency.percentiles(),
        shed_latency_ms: tally.shed_latency.percentiles(),
        decision_latency_ms: reading.overall.percentiles(),
        decision_latency_read: reading.overall.len(),
        decision_read_seconds: read_seconds,
        events_heard: heard.as_ref().map(|h| h.order_events + h.product_events),
        event_lag_ms: heard
            .as_ref()
            .filter(|h| h.lag.len() > 0)
            .map(|h| h.lag.percentiles()),
        series_lines: report::series_lines(&per_second, &reading.per_second),
        per_second,
        clock_ticks_per_second: ticks_per_second,
        clock_ticks_source: ticks_source,
        processes,
        watched_cpu_seconds: watched_cpu,
        watched_cpu_us_per_decided_order: per_order(watched_cpu).filter(|_| any_watched),
        all_cpu_us_per_decided_order: per_order(all_cpu),
        peak_rss_mib: cli
            .watch_pids
            .iter()
            .map(|&pid| (pid, procstat::peak_rss_mib(&pid.to_string())))
            .collect(),
        ok: checks.iter().all(|c| c.ok),
        checks,
    };
    if cli.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        report::print_table(&summary);
    }
    if !summary.ok {
        std::process::exit(1);
    }
    Ok(())
}

fn rate_of(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// `limit` (0 = no limit) of the admitted orders, or all when there are no
/// more: sorted by the second they were sent in, then taken at even spacing
/// so that every part of the run is read in proportion.
fn pick(admitted: &mut [(OrderKey, u32)], limit: usize) -> Vec<(OrderKey, u32)> {
    admitted.sort_by_key(|&(_, second)| second);
    let n = admitted.len();
    if limit == 0 || n <= limit {
        return admitted.to_vec();
    }
    (0..limit).map(|j| admitted[j * n / limit]).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_evenly_and_at_most_the_limit() {
        let mut admitted: Vec<(OrderKey, u32)> = (0..1000u32)
            .map(|i| (OrderKey::parse(&format!("{i:032x}")).unwrap(), 9 - i % 10))
            .collect();
        let picked = pick(&mut admitted, 100);
        assert_eq!(picked.len(), 100);
        for s in 0..10 {
            assert_eq!(picked.iter().filter(|p| p.1 == s).count(), 10);
        }
        assert_eq!(pick(&mut admitted, 0).len(), 1000);
        assert_eq!(pick(&mut admitted, 5000).len(), 1000);
    }

    #[test]
    fn open_loop_flags_go_together() {
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from(args).unwrap();
            Mode::of(&cli).map(|m| m.orders(&cli.scenario))
        };
        assert_eq!(parse(&["bench", "flash-sale", "--orders", "7"]).unwrap(), 7);
        assert_eq!(
            parse(&[
                "bench",
                "--rate",
                "300",
                "--duration",
                "10",
                "flash-sale",
                "--orders",
                "7"
            ])
            .unwrap(),
            3000
        );
        assert_eq!(
            parse(&["bench", "sold-out", "--rate", "2.5", "--duration", "2"]).unwrap(),
            5
        );
        assert!(parse(&["bench", "--rate", "300", "flash-sale"]).is_err());
        assert!(parse(&["bench", "--duration", "3", "flash-sale"]).is_err());
        assert!(parse(&["bench", "--rate", "0", "--duration", "3", "flash-sale"]).is_err());
    }
}
