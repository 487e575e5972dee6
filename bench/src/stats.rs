//! Latency samples and their percentiles.

use std::time::Duration;

use serde::Serialize;

/// Every latency sample of one measurement, in microseconds. Benchmarks here take at most a few
/// hundred thousand samples, so keeping them all (rather than a histogram) is cheap and exact.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    micros: Vec<u32>,
}

impl Samples {
    pub fn with_capacity(n: usize) -> Samples {
        Samples {
            micros: Vec::with_capacity(n),
        }
    }

    pub fn record(&mut self, latency: Duration) {
        self.micros
            .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
    }

    pub fn merge(&mut self, other: Samples) {
        self.micros.extend(other.micros);
    }

    pub fn len(&self) -> usize {
        self.micros.len()
    }

    pub fn is_empty(&self) -> bool {
        self.micros.is_empty()
    }

    /// p50, p99, p99.9 and max, in milliseconds; `None` without samples.
    pub fn summary(mut self) -> Option<Percentiles> {
        if self.is_empty() {
            return None;
        }
        self.micros.sort_unstable();
        let at = |q: f64| {
            // Nearest-rank percentile: the smallest sample with at least q of them at or below.
            let rank = (q * self.micros.len() as f64).ceil() as usize;
            f64::from(self.micros[rank.clamp(1, self.micros.len()) - 1]) / 1000.0
        };
        Some(Percentiles {
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: at(1.0),
        })
    }
}

/// Latency percentiles of one measurement, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples = Samples::default();
        for ms in 1..=1000 {
            samples.record(Duration::from_millis(ms));
        }
        let p = samples.summary().unwrap();
        assert_eq!(p.p50_ms, 500.0);
        assert_eq!(p.p99_ms, 990.0);
        assert_eq!(p.p999_ms, 999.0);
        assert_eq!(p.max_ms, 1000.0);
    }

    #[test]
    fn one_sample_is_every_percentile() {
        let mut samples = Samples::default();
        samples.record(Duration::from_micros(1500));
        let p = samples.summary().unwrap();
        assert_eq!((p.p50_ms, p.p999_ms, p.max_ms), (1.5, 1.5, 1.5));
        assert!(Samples::default().summary().is_none());
    }
}
