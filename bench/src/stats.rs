//! Latency percentiles.

use serde::Serialize;
use std::time::Duration;

/// Collected latencies.
#[derive(Debug, Default)]
pub struct Latencies(Vec<Duration>);

/// Percentiles in milliseconds.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latencies {
    /// Adds one observation.
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    /// Observations held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Adds every observation of `other`.
    pub fn extend(&mut self, other: &Self) {
        self.0.extend_from_slice(&other.0);
    }

    /// Nearest-rank percentiles; zeros when empty.
    pub fn percentiles(&self) -> Percentiles {
        if self.0.is_empty() {
            return Percentiles::default();
        }
        let mut v = self.0.clone();
        v.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
            v[rank - 1].as_secs_f64() * 1e3
        };
        Percentiles {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut l = Latencies::default();
        for ms in 1..=100 {
            l.push(Duration::from_millis(ms));
        }
        let p = l.percentiles();
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(Latencies::default().percentiles(), Percentiles::default());
    }
}
