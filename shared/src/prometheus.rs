//! Just enough of the Prometheus text format for our counters, gauges and
//! histograms, with no global registry: each process owns its metrics struct
//! and renders it on request.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram with fixed upper bounds (the `+Inf` bucket is implicit).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum of observations, in millionths.
    sum_micros: AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bounds, ascending.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            if value <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((value.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }
}

/// Writes metrics in the text exposition format.
#[derive(Debug, Default)]
pub struct Writer {
    out: String,
}

impl Writer {
    /// Starts an empty document.
    pub fn new() -> Self {
        Self::default()
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// A counter, one sample per `(labels, value)`; labels like `status="ACCEPTED"`.
    pub fn counter(&mut self, name: &str, help: &str, samples: &[(&str, &AtomicU64)]) {
        self.header(name, help, "counter");
        for (labels, value) in samples {
            self.sample(name, labels, value.load(Ordering::Relaxed));
        }
    }

    /// A counter family: one sample per `(labels, value)`, labels like
    /// `endpoint="payments"`. Writes nothing but the header when empty.
    pub fn counters_f64(&mut self, name: &str, help: &str, samples: &[(String, f64)]) {
        self.header(name, help, "counter");
        for (labels, value) in samples {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }

    /// A gauge with one value.
    pub fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, help, "gauge");
        self.sample(name, "", value);
    }

    /// A gauge family: one sample per `(labels, value)`, labels like
    /// `partition="3"`. Writes nothing but the header when empty.
    pub fn gauges(&mut self, name: &str, help: &str, samples: &[(String, f64)]) {
        self.header(name, help, "gauge");
        for (labels, value) in samples {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }

    /// `process_resident_memory_bytes` (from `/proc/self/status`) and
    /// `flashstock_memory_limit_bytes`: the process's cgroup memory limit (a
    /// container's; cgroup v2 or v1), or the machine's memory where there is
    /// none. Nothing where neither can be read (not Linux).
    pub fn process_memory(&mut self) {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        if let Some(kib) = kib_field(&status, "VmRSS:") {
            self.header(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                "gauge",
            );
            self.sample("process_resident_memory_bytes", "", kib * 1024);
        }
        if let Some(limit) = memory_limit() {
            self.gauge(
                "flashstock_memory_limit_bytes",
                "The memory this process may use: its cgroup's limit (a container's), or the machine's memory.",
                limit,
            );
        }
    }

    /// A histogram.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.header(name, help, "histogram");
        for (bound, bucket) in h.bounds.iter().zip(&h.buckets) {
            let _ = writeln!(
                self.out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = h.count.load(Ordering::Relaxed);
        let _ = writeln!(self.out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(self.out, "{name}_sum {sum}\n{name}_count {count}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: u64) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }

    /// The finished document.
    pub fn finish(self) -> String {
        self.out
    }
}

/// The value in bytes of a `Name:   123 kB` line of a `/proc` file.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The cgroup memory limit, or else the machine's memory.
fn memory_limit() -> Option<u64> {
    // cgroup v1 writes "no limit" as a number near 2^63.
    const UNLIMITED: u64 = 1 << 60;
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&v| v < UNLIMITED)
    };
    read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .or_else(|| {
            let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
            kib_field(&meminfo, "MemTotal:").map(|kib| kib * 1024)
        })
}

/// Adds one to `counter`.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        static BOUNDS: [f64; 2] = [0.1, 1.0];
        let h = Histogram::new(&BOUNDS);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        let c = AtomicU64::new(3);
        let mut w = Writer::new();
        w.counter("x_total", "An x.", &[("kind=\"a\"", &c)]);
        w.histogram("lat_seconds", "Latency.", &h);
        w.gauges("age_seconds", "An age.", &[("partition=\"3\"".into(), 1.5)]);
        w.process_memory();
        let text = w.finish();
        for name in [
            "process_resident_memory_bytes ",
            "flashstock_memory_limit_bytes ",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "{name} in\n{text}"
            );
        }
        for line in [
            "age_seconds{partition=\"3\"} 1.5",
            "x_total{kind=\"a\"} 3",
            "lat_seconds_bucket{le=\"0.1\"} 1",
            "lat_seconds_bucket{le=\"1\"} 2",
            "lat_seconds_bucket{le=\"+Inf\"} 3",
            "lat_seconds_count 3",
            "lat_seconds_sum 5.55",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
