//! This machine's load as heartbeats report it: CPU busy %, available memory, cores.
//! Read from /proc (Linux), the only platform shir runs on.

use std::fs;

/// CPU time counters from the first line of /proc/stat.
#[derive(Clone, Copy, Default)]
pub struct CpuSample {
    busy: u64,
    total: u64,
}

pub fn cpu_sample() -> CpuSample {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    CpuSample {
        busy: total.saturating_sub(idle),
        total,
    }
}

/// Busy percentage between two samples.
pub fn cpu_percent(before: CpuSample, after: CpuSample) -> f32 {
    let total = after.total.saturating_sub(before.total);
    if total == 0 {
        return 0.0;
    }
    (after.busy.saturating_sub(before.busy) as f64 * 100.0 / total as f64) as f32
}

fn meminfo_kb(field: &str) -> u64 {
    let text = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn available_memory_mb() -> u64 {
    meminfo_kb("MemAvailable:") / 1024
}

/// The default number of jobs a node runs at once: two per core, but no more than one per
/// 2 GiB of memory, and at least one. Copy jobs mostly wait on I/O, so two per core keeps
/// the cores busy; the memory cap keeps buffered rows from swapping a small machine.
pub fn default_jobs_limit() -> u32 {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as u64;
    let mem_gib = meminfo_kb("MemTotal:") / (1024 * 1024);
    (cores * 2).min((mem_gib / 2).max(1)).max(1) as u32
}
