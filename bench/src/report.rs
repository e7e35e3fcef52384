//! The printed result: a table, or one JSON object with `--json`.

use crate::stats::{Latencies, Percentiles};
use serde::Serialize;

/// Most lines the per-second series takes in the table; longer runs are
/// shown a few seconds to a line (the JSON always has every second).
const TABLE_SERIES_LINES: usize = 30;

/// The printed result.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub scenario: &'static str,
    /// `closed` (--clients) or `open` (--rate).
    pub mode: &'static str,
    /// Orders planned: --orders, or rate × duration in open loop.
    pub orders: usize,
    /// Closed loop only.
    pub clients: Option<usize>,
    pub wait: u64,
    /// Open loop: --rate.
    pub offered_per_second: Option<f64>,
    /// Open loop: --duration.
    pub duration_seconds: Option<f64>,
    /// Open loop: the cap on outstanding requests in effect.
    pub max_in_flight: Option<usize>,
    /// Open loop: the --max-in-flight asked for, when the open-files limit lowered it.
    pub max_in_flight_asked: Option<usize>,
    /// Orders that came due (open loop) or were sent (closed loop).
    pub arrivals: u64,
    /// Requests sent (arrivals - client_dropped).
    pub sent: u64,
    pub send_seconds: f64,
    /// Achieved send rate: sent / send_seconds.
    pub send_per_second: f64,
    /// Open loop: the latest a request was launched after its due time.
    pub max_schedule_lag_ms: Option<f64>,
    /// Open loop: most requests outstanding at once.
    pub peak_in_flight: Option<usize>,
    /// Same as `admitted` (the name older reports used).
    pub submitted: usize,
    /// Answered 2xx (or 400 with the rejected order, under `Prefer: wait`): recorded.
    pub admitted: u64,
    /// Answered 503 OVERLOADED: not recorded.
    pub shed: u64,
    pub shed_without_retry_after: u64,
    /// Open loop: arrivals not sent because --max-in-flight were outstanding.
    pub client_dropped: u64,
    /// Final statuses of this run's orders (per-product summaries).
    pub accepted: u64,
    pub rejected: u64,
    /// Orders still pending when the run stopped waiting.
    pub pending: u64,
    /// Transport failures, timeouts and unexpected answers.
    pub errors: usize,
    pub first_error: Option<String>,
    /// From the first send to the last answer.
    pub submit_seconds: f64,
    /// admitted / submit_seconds.
    pub submit_per_second: f64,
    pub decided_seconds: f64,
    pub decided_per_second: f64,
    /// Every answer but shed ones; open loop: from the due time.
    pub submit_latency_ms: Percentiles,
    pub shed_latency_ms: Percentiles,
    /// Submit to decision on the database clock, from the orders read.
    pub decision_latency_ms: Percentiles,
    /// Orders the decision latency was read from.
    pub decision_latency_read: usize,
    /// Time spent reading them, after the run.
    pub decision_read_seconds: f64,
    /// Events heard on the events stream during the run (none when
    /// `ORDER_EVENTS=off`; `None` when the stream could not be read).
    pub events_heard: Option<u64>,
    /// From a transition's commit (database clock) to its event reaching
    /// the bench's stream consumer.
    pub event_lag_ms: Option<Percentiles>,
    pub per_second: Vec<PerSecond>,
    /// The per-second series as the table shows it.
    #[serde(skip)]
    pub series_lines: Vec<SeriesLine>,
    /// Unit of /proc/<pid>/stat's CPU times.
    pub clock_ticks_per_second: u64,
    pub clock_ticks_source: &'static str,
    /// The bench itself, then each --watch-pid.
    pub processes: Vec<ProcessReport>,
    /// CPU seconds of the --watch-pid processes together.
    pub watched_cpu_seconds: f64,
    pub watched_cpu_us_per_decided_order: Option<f64>,
    /// The same including the bench.
    pub all_cpu_us_per_decided_order: Option<f64>,
    /// Of each --watch-pid (as before `processes`).
    pub peak_rss_mib: Vec<(u32, f64)>,
    pub checks: Vec<Check>,
    pub ok: bool,
}

/// One second of the run, by the second an order was sent (due) in.
#[derive(Debug, Serialize)]
pub struct PerSecond {
    pub second: u32,
    pub arrivals: u64,
    pub sent: u64,
    pub admitted: u64,
    pub shed: u64,
    pub client_dropped: u64,
    pub errors: u64,
    /// Of the orders of this second that were read.
    pub decision_latency_ms: Percentiles,
    pub decision_latency_read: usize,
}

/// CPU and memory of one process over the run.
#[derive(Debug, Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    /// From /proc/<pid>/comm.
    pub name: String,
    /// `bench` or `watched`.
    pub role: &'static str,
    /// utime + stime from the start of the load to the last decision.
    pub cpu_seconds: Option<f64>,
    pub cpu_us_per_decided_order: Option<f64>,
    pub peak_rss_mib: f64,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub what: String,
    pub ok: bool,
}

fn p(x: &Percentiles) -> String {
    format!(
        "p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}",
        x.p50, x.p95, x.p99, x.max
    )
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

pub fn print_table(s: &Summary) {
    match (s.offered_per_second, s.duration_seconds) {
        (Some(rate), Some(duration)) => {
            println!(
                "scenario            {} ({} orders, open loop {rate} /s for {duration} s, max in flight {}{}, wait {})",
                s.scenario,
                s.orders,
                s.max_in_flight.unwrap_or_default(),
                s.max_in_flight_asked
                    .map_or_else(String::new, |asked| format!(
                        " (asked {asked}, open-files limit)"
                    )),
                s.wait
            );
            println!(
                "offered / sent      {rate:.0} /s offered; {:.0} /s sent ({} of {} arrivals in {:.2} s; schedule lag max {} ms; peak in flight {})",
                s.send_per_second,
                s.sent,
                s.arrivals,
                s.send_seconds,
                opt(s.max_schedule_lag_ms, 1),
                s.peak_in_flight.unwrap_or_default()
            );
        }
        _ => println!(
            "scenario            {} ({} orders, {} clients, wait {})",
            s.scenario,
            s.orders,
            s.clients.unwrap_or_default(),
            s.wait
        ),
    }
    println!("admitted            {} (recorded: 2xx)", s.admitted);
    println!(
        "shed                {} (503 OVERLOADED, not recorded; {} without Retry-After)",
        s.shed, s.shed_without_retry_after
    );
    if s.mode == "open" {
        println!(
            "client dropped      {} (due while max in flight were outstanding; not sent)",
            s.client_dropped
        );
    }
    println!("errors              {}", s.errors);
    if let Some(e) = &s.first_error {
        println!("first error         {e}");
    }
    println!("accepted            {}", s.accepted);
    println!("rejected            {}", s.rejected);
    if s.pending > 0 {
        println!("pending             {}", s.pending);
    }
    println!(
        "submit throughput   {:.0} orders/s admitted ({:.2} s to the last answer)",
        s.submit_per_second, s.submit_seconds
    );
    println!(
        "decided throughput  {:.0} orders/s (first submit to last decision, {:.2} s)",
        s.decided_per_second, s.decided_seconds
    );
    let from = if s.mode == "open" {
        "from due time"
    } else {
        "from send"
    };
    println!(
        "submit latency ms   {} (answers but shed ones, {from})",
        p(&s.submit_latency_ms)
    );
    println!("shed latency ms     {} ({from})", p(&s.shed_latency_ms));
    println!(
        "decision latency ms {} (submit to decision, database clock, {} of {} admitted read in {:.1} s)",
        p(&s.decision_latency_ms),
        s.decision_latency_read,
        s.admitted,
        s.decision_read_seconds
    );
    if let Some(lag) = &s.event_lag_ms {
        println!(
            "event lag ms        {} (commit to the bench's stream consumer, {} events heard)",
            p(lag),
            s.events_heard.unwrap_or_default()
        );
    }
    print_series(s);
    println!(
        "cpu                 pid      name             cpu s  us/decided  peak RSS MiB  ({} ticks/s, {})",
        s.clock_ticks_per_second, s.clock_ticks_source
    );
    for pr in &s.processes {
        println!(
            "  {:<17} {:<8} {:<15} {:>6}  {:>10}  {:>12.1}",
            pr.role,
            pr.pid,
            pr.name,
            opt(pr.cpu_seconds, 2),
            opt(pr.cpu_us_per_decided_order, 1),
            pr.peak_rss_mib
        );
    }
    println!(
        "  {:<17} {:<8} {:<15} {:>6.2}  {:>10}  (with the bench: {} us/decided)",
        "watched total",
        "",
        "",
        s.watched_cpu_seconds,
        opt(s.watched_cpu_us_per_decided_order, 1),
        opt(s.all_cpu_us_per_decided_order, 1)
    );
    for c in &s.checks {
        println!("{} {}", if c.ok { "ok  " } else { "FAIL" }, c.what);
    }
}

/// One line of the table's per-second series: one second, or a few.
#[derive(Debug)]
pub struct SeriesLine {
    label: String,
    counts: [u64; 6],
    decision_latency_ms: Percentiles,
    read: usize,
}

/// The series in at most [`TABLE_SERIES_LINES`] lines; the decision latency
/// percentiles of a group of seconds are those of its merged observations.
pub fn series_lines(per_second: &[PerSecond], latencies: &[Latencies]) -> Vec<SeriesLine> {
    let group = per_second.len().div_ceil(TABLE_SERIES_LINES).max(1);
    per_second
        .chunks(group)
        .map(|chunk| {
            let (first, last) = (chunk[0].second, chunk[chunk.len() - 1].second);
            let mut merged = Latencies::default();
            for second in chunk {
                if let Some(l) = latencies.get(second.second as usize) {
                    merged.extend(l);
                }
            }
            let sum = |f: fn(&PerSecond) -> u64| chunk.iter().map(f).sum::<u64>();
            SeriesLine {
                label: if first == last {
                    format!("{first}")
                } else {
                    format!("{first}-{last}")
                },
                counts: [
                    sum(|x| x.arrivals),
                    sum(|x| x.sent),
                    sum(|x| x.admitted),
                    sum(|x| x.shed),
                    sum(|x| x.client_dropped),
                    sum(|x| x.errors),
                ],
                decision_latency_ms: merged.percentiles(),
                read: merged.len(),
            }
        })
        .collect()
}

/// The per-second series, a few seconds to a line when the run is long.
fn print_series(s: &Summary) {
    if s.series_lines.is_empty() {
        return;
    }
    println!(
        "per second          {:>8} {:>8} {:>8} {:>8} {:>8} {:>7}   decision ms p50 / p99 (read)",
        "arrived", "sent", "admitted", "shed", "dropped", "errors"
    );
    for line in &s.series_lines {
        let [arrived, sent, admitted, shed, dropped, errors] = line.counts;
        println!(
            "  s {:<15} {arrived:>8} {sent:>8} {admitted:>8} {shed:>8} {dropped:>8} {errors:>7}   {:.1} / {:.1} ({})",
            line.label, line.decision_latency_ms.p50, line.decision_latency_ms.p99, line.read
        );
    }
}
