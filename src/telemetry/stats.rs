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
    /// Whether the pipeline holds partitions and is not recovering (see
    /// [`PipelineStats::is_ready`] for the full readiness rule).
    pub ready: AtomicBool,
    /// Start (ms since the Unix epoch) of the Parquet upload outstanding now; 0: none.
    pub upload_since_ms: AtomicU64,
    /// Start (ms since the Unix epoch) of the commit outstanding now; 0: none.
    pub commit_since_ms: AtomicU64,
    /// Last table version committed by this process.
    pub table_version: AtomicU64,
    /// Commit attempts beyond the first (transient storage errors).
    pub commit_retries: AtomicU64,
    /// Other writers' commits that commits were re-based over.
    pub commit_conflicts: AtomicU64,
    /// Records accounted for in the open window.
    pub window_records: AtomicU64,
    /// Parquet bytes written to the open window so far.
    pub window_bytes: AtomicU64,
    /// Partitions currently assigned.
    pub assigned_partitions: AtomicU64,
    /// Bytes held by every table's open and committing windows (estimated).
    pub windows_held_bytes: AtomicU64,
    /// Windows committed before their flush policy said so, to stay within the
    /// memory budget.
    pub windows_flushed_early: AtomicU64,
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
            upload_since_ms: AtomicU64::default(),
            commit_since_ms: AtomicU64::default(),
            table_version: AtomicU64::default(),
            commit_retries: AtomicU64::default(),
            commit_conflicts: AtomicU64::default(),
            window_records: AtomicU64::default(),
            window_bytes: AtomicU64::default(),
            assigned_partitions: AtomicU64::default(),
            windows_held_bytes: AtomicU64::default(),
            windows_flushed_early: AtomicU64::default(),
            commit_seconds: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 14),
            ),
            metrics_addr: std::sync::OnceLock::new(),
            committed_offsets: Mutex::default(),
            high_watermarks: Mutex::default(),
        }
    }
}

/// A storage call outstanding for longer than this means the object store is
/// failing or unreachable: the replica stops counting as ready until it returns.
/// A healthy upload of one Parquet part or one Delta commit takes well under it.
pub const STORAGE_STALL: std::time::Duration = std::time::Duration::from_secs(10);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Marks a storage call as outstanding in one of the `*_since_ms` slots until
/// dropped.
#[derive(Debug)]
pub struct StorageCall<'a>(&'a AtomicU64);

impl<'a> StorageCall<'a> {
    /// Mark the call started now.
    pub fn begin(slot: &'a AtomicU64) -> Self {
        slot.store(now_ms(), Ordering::Relaxed);
        Self(slot)
    }
}

impl Drop for StorageCall<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

impl PipelineStats {
    /// Readiness: the pipeline says it is ready (partitions assigned, not
    /// recovering, no commit stuck), and no upload or commit has been outstanding
    /// for longer than [`STORAGE_STALL`]. Evaluated when asked, so a pipeline task
    /// blocked inside a storage call still turns not-ready.
    pub fn is_ready(&self) -> bool {
        let now = now_ms();
        let stalled = |slot: &AtomicU64| {
            let since = slot.load(Ordering::Relaxed);
            since != 0 && now.saturating_sub(since) > STORAGE_STALL.as_millis() as u64
        };
        self.ready.load(Ordering::Relaxed)
            && !stalled(&self.upload_since_ms)
            && !stalled(&self.commit_since_ms)
    }

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

    /// Offsets this process last stored, per partition (from the table's
    /// stored offsets when the partition was assigned, until its first commit).
    pub fn committed_offsets(&self) -> BTreeMap<TopicPartition, i64> {
        self.committed_offsets.lock().expect("stats lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storage_call_outstanding_too_long_makes_the_replica_unready() {
        let s = PipelineStats::default();
        assert!(!s.is_ready(), "not ready before the pipeline says so");
        s.ready.store(true, Ordering::Relaxed);
        assert!(s.is_ready());
        {
            let _call = StorageCall::begin(&s.upload_since_ms);
            assert!(s.is_ready(), "a call just started is not a stall");
            let long_ago = now_ms() - STORAGE_STALL.as_millis() as u64 - 1000;
            s.upload_since_ms.store(long_ago, Ordering::Relaxed);
            assert!(!s.is_ready(), "an upload outstanding past the limit");
        }
        assert!(s.is_ready(), "ready again once the call returns");
        s.commit_since_ms.store(
            now_ms() - 2 * STORAGE_STALL.as_millis() as u64,
            Ordering::Relaxed,
        );
        assert!(!s.is_ready(), "a commit outstanding past the limit");
    }
}
