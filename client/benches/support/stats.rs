//! Summary figures shared by the benches that print a mean/p50/p99 table.
use std::time::Duration;

/// The samples' count, mean, median and 99th percentile.
pub struct Summary {
    pub n: usize,
    pub mean: Duration,
    pub p50: Duration,
    pub p99: Duration,
}

impl Summary {
    /// Panics on an empty set: a bench that measured nothing has failed.
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
        Summary {
            n: samples.len(),
            mean: samples.iter().sum::<Duration>() / samples.len() as u32,
            p50: at(0.5),
            p99: at(0.99),
        }
    }
}

/// Milliseconds, for the tables.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
