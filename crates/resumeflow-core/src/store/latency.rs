//! Latency figures the store measures itself (commits, run-state loads), for metrics and
//! health checks: a fixed-bucket histogram (atomic counters, nothing allocated per sample)
//! and the most recent samples for a p95.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the histogram buckets.
pub const BOUNDS_S: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// Recent samples kept for the p95.
const RECENT: usize = 512;

/// One latency series.
#[derive(Default)]
pub struct Latency {
    /// Samples per bucket (the last one is `+Inf`).
    buckets: [AtomicU64; BOUNDS_S.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
    recent: Mutex<VecDeque<f64>>,
}

/// A copy of a series at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySnapshot {
    /// Cumulative counts for each bound of [`BOUNDS_S`], then the total (`+Inf`).
    pub cumulative: Vec<u64>,
    pub sum_s: f64,
    pub count: u64,
    /// The 95th percentile of the recent samples, if there are any.
    pub recent_p95_s: Option<f64>,
}

impl Latency {
    /// Records one sample.
    ///
    /// ```
    /// use resumeflow_core::store::latency::Latency;
    /// let l = Latency::default();
    /// l.record(std::time::Duration::from_millis(3));
    /// let s = l.snapshot();
    /// assert_eq!((s.count, s.cumulative[3], s.cumulative[2]), (1, 1, 0));
    /// ```
    pub fn record(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = BOUNDS_S
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BOUNDS_S.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut recent = self.recent.lock().expect("latency samples");
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(secs);
    }

    /// The series now.
    pub fn snapshot(&self) -> LatencySnapshot {
        let mut running = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                running += b.load(Ordering::Relaxed);
                running
            })
            .collect();
        let mut recent: Vec<f64> = self
            .recent
            .lock()
            .expect("latency samples")
            .iter()
            .copied()
            .collect();
        recent.sort_by(f64::total_cmp);
        let recent_p95_s = (!recent.is_empty()).then(|| {
            let index = ((recent.len() as f64) * 0.95).ceil() as usize;
            recent[index.clamp(1, recent.len()) - 1]
        });
        LatencySnapshot {
            cumulative,
            sum_s: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            count: self.count.load(Ordering::Relaxed),
            recent_p95_s,
        }
    }
}

/// What a store measured: group commits and run-state loads.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreLatency {
    pub commit: LatencySnapshot,
    pub state_load: LatencySnapshot,
}
