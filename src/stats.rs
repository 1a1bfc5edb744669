//! Counters the pipeline keeps about itself, shared with whoever observes it (the
//! demo's progress line, `status`, and later the metrics endpoint).
//!
//! Updated once per chunk or commit, never per record, so observing costs the hot
//! path nothing.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::record::TopicPartition;

/// Pipeline counters.
#[derive(Debug)]
pub struct PipelineStats {
    /// Records taken from Kafka and accounted for (rows + rejected).
    pub records_accounted: AtomicU64,
    /// Rows committed to the table.
    pub rows_committed: AtomicU64,
    /// Records rejected (undecodable or schema-violating).
    pub records_rejected: AtomicU64,
    /// Successful Delta commits.
    pub commits: AtomicU64,
    /// Commits that lost a race and were dropped.
    pub stale_commits: AtomicU64,
    /// Rewinds to the table's offsets.
    pub rewinds: AtomicU64,
    /// Parquet bytes committed.
    pub bytes_committed: AtomicU64,
    /// Data files committed.
    pub files_committed: AtomicU64,
    /// Rebalance events seen.
    pub rebalances: AtomicU64,
    /// Whether the pipeline holds partitions and is not recovering.
    pub ready: AtomicBool,
    /// Last table version committed by this process.
    pub table_version: AtomicU64,
    /// Commit attempts beyond the first (transient storage errors).
    pub commit_retries: AtomicU64,
    /// Records accounted for in the open window.
    pub window_records: AtomicU64,
    /// Parquet bytes written to the open window so far.
    pub window_bytes: AtomicU64,
    /// Partitions currently assigned.
    pub assigned_partitions: AtomicU64,
    /// Commit wall time, seconds.
    pub commit_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Where `/metrics` is served, once it is.
    pub metrics_addr: std::sync::OnceLock<std::net::SocketAddr>,
    committed_offsets: Mutex<BTreeMap<TopicPartition, i64>>,
    high_watermarks: Mutex<BTreeMap<TopicPartition, i64>>,
}

impl Default for PipelineStats {
    fn default() -> Self {
        Self {
            records_accounted: AtomicU64::default(),
            rows_committed: AtomicU64::default(),
            records_rejected: AtomicU64::default(),
            commits: AtomicU64::default(),
            stale_commits: AtomicU64::default(),
            rewinds: AtomicU64::default(),
            bytes_committed: AtomicU64::default(),
            files_committed: AtomicU64::default(),
            rebalances: AtomicU64::default(),
            ready: AtomicBool::default(),
            table_version: AtomicU64::default(),
            commit_retries: AtomicU64::default(),
            window_records: AtomicU64::default(),
            window_bytes: AtomicU64::default(),
            assigned_partitions: AtomicU64::default(),
            commit_seconds: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 14),
            ),
            metrics_addr: std::sync::OnceLock::new(),
            committed_offsets: Mutex::default(),
            high_watermarks: Mutex::default(),
        }
    }
}

impl PipelineStats {
    /// Add to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Read a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Record the offsets a commit stored.
    pub fn set_committed(&self, offsets: impl IntoIterator<Item = (TopicPartition, i64)>) {
        let mut m = self.committed_offsets.lock().expect("stats lock");
        for (tp, o) in offsets {
            m.insert(tp, o);
        }
    }

    /// Record high watermarks seen in fetch responses (librdkafka statistics).
    pub fn set_high_watermarks(&self, marks: impl IntoIterator<Item = (TopicPartition, i64)>) {
        let mut m = self.high_watermarks.lock().expect("stats lock");
        for (tp, o) in marks {
            m.insert(tp, o);
        }
    }

    /// Lag in records per partition with a known high watermark and stored offset:
    /// `high watermark - (stored offset + 1)`.
    pub fn lag(&self) -> BTreeMap<TopicPartition, i64> {
        let committed = self.committed_offsets.lock().expect("stats lock");
        let marks = self.high_watermarks.lock().expect("stats lock");
        marks
            .iter()
            .filter_map(|(tp, hw)| committed.get(tp).map(|c| (tp.clone(), (hw - c - 1).max(0))))
            .collect()
    }

    /// Forget partitions no longer assigned.
    pub fn forget(&self, tps: &[TopicPartition]) {
        let mut c = self.committed_offsets.lock().expect("stats lock");
        let mut m = self.high_watermarks.lock().expect("stats lock");
        for tp in tps {
            c.remove(tp);
            m.remove(tp);
        }
    }

    /// Offsets this process last stored, per partition.
    pub fn committed_offsets(&self) -> BTreeMap<TopicPartition, i64> {
        self.committed_offsets.lock().expect("stats lock").clone()
    }
}
