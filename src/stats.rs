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
#[derive(Debug, Default)]
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
    committed_offsets: Mutex<BTreeMap<TopicPartition, i64>>,
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

    /// Offsets this process last stored, per partition.
    pub fn committed_offsets(&self) -> BTreeMap<TopicPartition, i64> {
        self.committed_offsets.lock().expect("stats lock").clone()
    }
}
