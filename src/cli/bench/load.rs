//! A closed-loop write load: N clients, each sending its next write when the last one is
//! acknowledged, for a fixed time. Throughput and latency percentiles of acknowledged writes.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use serde_json::json;

pub type PutFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

pub struct LoadResult {
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latencies of acknowledged writes, sorted.
    latencies: Vec<Duration>,
}

impl LoadResult {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i].as_secs_f64() * 1000.0
    }
    pub fn p50_ms(&self) -> f64 {
        self.percentile_ms(0.50)
    }
    pub fn p99_ms(&self) -> f64 {
        self.percentile_ms(0.99)
    }
    /// The results of several runs as one: their writes over their summed time.
    pub fn merge(runs: &[LoadResult]) -> LoadResult {
        let mut latencies: Vec<Duration> = runs.iter().flat_map(|r| r.latencies.iter().copied()).collect();
        latencies.sort();
        LoadResult {
            ok: runs.iter().map(|r| r.ok).sum(),
            errors: runs.iter().map(|r| r.errors).sum(),
            elapsed: runs.iter().map(|r| r.elapsed).sum(),
            latencies,
        }
    }
    pub fn json(&self) -> serde_json::Value {
        let r = |x: f64| (x * 100.0).round() / 100.0;
        json!({"writes": self.ok, "errors": self.errors, "seconds": r(self.elapsed.as_secs_f64()),
               "per_second": r(self.per_second()), "p50_ms": r(self.p50_ms()), "p99_ms": r(self.p99_ms())})
    }
}

/// Runs `clients` loops of `put(client, seq)` for `duration`.
pub async fn run<F>(clients: usize, duration: Duration, put: F) -> LoadResult
where
    F: Fn(usize, u64) -> PutFuture + Clone + Send + 'static,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let put = put.clone();
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0u64);
                let mut seq = 0u64;
                while start.elapsed() < duration {
                    let t = Instant::now();
                    match put(client, seq).await {
                        Ok(()) => lat.push(t.elapsed()),
                        Err(_) => errors += 1,
                    }
                    seq += 1;
                }
                (lat, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((lat, e)) = t.await {
            latencies.extend(lat);
            errors += e;
        }
    }
    let elapsed = start.elapsed();
    latencies.sort();
    LoadResult {
        ok: latencies.len() as u64,
        errors,
        elapsed,
        latencies,
    }
}
