//! Named events. Each event that both counts and logs does both here, once, at the
//! level the policy gives (in the manner of vector's `internal_events`):
//!
//! - INFO: what an operator follows in normal operation (a commit landed, a
//!   rebalance, a rewind to the stored offsets).
//! - WARN: what costs records or time but is handled (a record rejected, a
//!   window dropped because another writer committed first).
//! - ERROR: only what stops the daemon (logged where it stops, not here).
//!
//! Counters are the [`PipelineStats`] fields `/metrics` serves; a call site never
//! touches one of them and the log separately.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::stats::PipelineStats;
use crate::record::TopicPartition;

/// A window's commit landed as a new table version.
#[derive(Debug, Clone)]
pub struct CommitLanded<'a> {
    /// The table.
    pub table: &'a str,
    /// The version written.
    pub version: i64,
    /// Rows committed.
    pub rows: u64,
    /// Data files added.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Partitions whose offsets moved.
    pub partitions: usize,
    /// Attempts it took (1: no retry).
    pub attempts: u32,
    /// Other writers' commits it was re-based over.
    pub conflicts: u64,
    /// Wall time of the commit.
    pub duration: Duration,
}

/// Count and log a landed commit.
pub fn commit_landed(stats: &PipelineStats, c: &CommitLanded<'_>) {
    commit_attempted(stats, c.attempts, c.duration);
    stats
        .table_version
        .store(c.version as u64, Ordering::Relaxed);
    PipelineStats::add(&stats.commits, 1);
    PipelineStats::add(&stats.rows_committed, c.rows);
    PipelineStats::add(&stats.files_committed, c.files as u64);
    PipelineStats::add(&stats.bytes_committed, c.bytes);
    PipelineStats::add(&stats.commit_conflicts, c.conflicts);
    tracing::info!(
        table = %c.table,
        version = c.version,
        rows = c.rows,
        files = c.files,
        bytes = c.bytes,
        partitions = c.partitions,
        attempts = c.attempts,
        conflicts = c.conflicts,
        ms = c.duration.as_millis() as u64,
        "committed"
    );
}

/// A commit found its offsets already stored (an earlier attempt whose response
/// was lost had landed): nothing written.
pub fn commit_found_landed(
    stats: &PipelineStats,
    table: &str,
    rows: u64,
    attempts: u32,
    duration: Duration,
) {
    commit_attempted(stats, attempts, duration);
    tracing::info!(table = %table, rows, "offsets were already committed; nothing written");
}

fn commit_attempted(stats: &PipelineStats, attempts: u32, duration: Duration) {
    stats.commit_seconds.observe(duration.as_secs_f64());
    PipelineStats::add(&stats.commit_retries, u64::from(attempts.saturating_sub(1)));
}

/// Another writer committed these partitions first: the window is dropped and the
/// pipeline rewinds (no record is lost or duplicated; the work is redone).
pub fn window_stale(
    stats: &PipelineStats,
    table: &str,
    partitions: &[(TopicPartition, Option<i64>)],
) {
    PipelineStats::add(&stats.stale_commits, 1);
    tracing::warn!(
        table = %table,
        partitions = ?partitions,
        "another writer committed these partitions first; dropping this window and rewinding"
    );
}

/// Records rejected (each with its partition, offset and reason): counted, logged,
/// and their offsets accounted for by the caller.
pub fn records_rejected<'a>(
    stats: &PipelineStats,
    rejected: impl ExactSizeIterator<Item = (&'a TopicPartition, i64, &'a str)>,
) {
    PipelineStats::add(&stats.records_rejected, rejected.len() as u64);
    for (tp, offset, reason) in rejected {
        tracing::warn!(
            topic = %tp.topic, partition = tp.partition, offset,
            reason = %reason, "record rejected; counted and skipped"
        );
    }
}

/// Replayed records whose dead letters already landed (their window's rows did
/// not): rejected again and counted as rejected, not written a second time.
pub fn dead_letters_replayed(stats: &PipelineStats, records: usize) {
    PipelineStats::add(&stats.records_rejected, records as u64);
    tracing::info!(
        records,
        "replayed records already in the dead-letter table: rejected again, not rows"
    );
}

/// Every assigned partition was sought back to the offset stored in its table.
pub fn rewound(stats: &PipelineStats, partitions: &[(TopicPartition, Option<i64>)]) {
    PipelineStats::add(&stats.rewinds, 1);
    for (tp, stored) in partitions {
        tracing::info!(partition = %tp, stored_offset = ?stored, "rewinding partition to its stored offset");
    }
}

/// The group assigned or revoked partitions.
pub fn rebalance(stats: &PipelineStats, assigned: bool, partitions: usize, lost: bool) {
    PipelineStats::add(&stats.rebalances, 1);
    tracing::debug!(assigned, partitions, lost, "rebalance served");
}

/// A table's window was committed before its flush policy said so: all tables'
/// windows together held more than the memory budget.
pub fn flushed_early(stats: &PipelineStats, table: &str, bytes: u64, held: u64, budget: u64) {
    PipelineStats::add(&stats.windows_flushed_early, 1);
    tracing::debug!(
        table,
        bytes,
        held,
        budget,
        "memory budget reached: committing this window early"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_moves_its_counters() {
        let stats = PipelineStats::default();
        commit_landed(
            &stats,
            &CommitLanded {
                table: "t",
                version: 7,
                rows: 10,
                files: 2,
                bytes: 300,
                partitions: 1,
                attempts: 3,
                conflicts: 4,
                duration: Duration::from_millis(5),
            },
        );
        commit_found_landed(&stats, "t", 4, 2, Duration::from_millis(1));
        let tp = TopicPartition::new("t", 0);
        window_stale(&stats, "t", &[(tp.clone(), Some(3))]);
        records_rejected(&stats, [(&tp, 4, "bad"), (&tp, 5, "worse")].into_iter());
        dead_letters_replayed(&stats, 3);
        rewound(&stats, &[(tp, Some(3))]);
        rebalance(&stats, true, 1, false);
        flushed_early(&stats, "t", 10, 20, 15);
        let get = PipelineStats::get;
        assert_eq!(
            (
                get(&stats.commits),
                get(&stats.rows_committed),
                get(&stats.files_committed)
            ),
            (1, 10, 2)
        );
        assert_eq!(get(&stats.bytes_committed), 300);
        assert_eq!(get(&stats.table_version), 7);
        assert_eq!(get(&stats.commit_retries), 2 + 1, "retries of both commits");
        assert_eq!(get(&stats.stale_commits), 1);
        assert_eq!(get(&stats.commit_conflicts), 4);
        assert_eq!(get(&stats.records_rejected), 2 + 3);
        assert_eq!((get(&stats.rewinds), get(&stats.rebalances)), (1, 1));
        assert_eq!(get(&stats.windows_flushed_early), 1);
    }
}
