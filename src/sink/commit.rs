//! Commit written files and Kafka offsets to the table in one Delta transaction.
//!
//! # The exactly-once invariant
//!
//! For every partition `p` this pipeline reads, the table holds a `txn` action
//! `(<app_id>/<topic>/<p>, v)`: every record of `p` with offset `<= v` is accounted
//! for in the table (as a row, or rejected and counted) and no record with offset
//! `> v` is. Each commit moves `v` forward and adds exactly the rows in between, in
//! the same atomic log entry.
//!
//! A commit is a compare-and-swap on each partition's `v`: the pipeline remembers
//! the `v` it started its buffer from (`expected`); before committing it reloads the
//! table and checks that `v` is still `expected`, and delta-rs' conflict checker
//! rejects the commit if a concurrent commit that landed between that check and our
//! write touched the same app id (`ConcurrentTransaction`). The log entry itself is
//! written with S3 conditional put, so no two commits can claim one version.
//!
//! So when two workers hold the same partition (a rebalance they disagree about, a
//! zombie after a network partition), at most one lands each range; the other sees
//! [`CommitOutcome::Stale`], drops its buffer and rewinds to the table's offsets.
//! Its uploaded files stay unreferenced until `vacuum` removes them.
//!
//! A commit whose outcome is unknown (the PUT landed but the response was lost) is
//! retried; the retry finds `v == last` and reports [`CommitOutcome::AlreadyCommitted`]
//! instead of writing the data twice.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Add, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableError};

use crate::offsets::store::OffsetStore;
use crate::record::TopicPartition;
use crate::sink::checkpoint::Checkpoints;
use crate::sink::retry::is_retryable;
use crate::sink::table::txn_app_id;

/// What a writer keeps of one table's log between its commits: the offsets stored
/// in it and the checkpoint schedule. Clones share both (the pipeline's handle and
/// its commit task's).
#[derive(Debug, Clone, Default)]
pub struct TableLog {
    /// The offsets stored in the table.
    pub offsets: OffsetStore,
    /// When the next checkpoint is due.
    pub checkpoints: Checkpoints,
    /// Upsert tables with `order_by`: the order values of deleted keys.
    pub deletes: crate::sink::upsert::deletes::DeleteMemory,
}

/// One partition's part of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionCommit {
    /// The partition.
    pub tp: TopicPartition,
    /// The offset the table must still hold for the commit to be valid.
    pub expected: Option<i64>,
    /// The last offset accounted for by this commit (becomes the stored offset).
    pub last: i64,
}

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The data and offsets landed as this table version.
    Committed {
        /// The new table version.
        version: i64,
    },
    /// Every partition already held `last`: an earlier attempt whose response was
    /// lost landed (or another worker wrote the same ranges). Nothing was written.
    AlreadyCommitted,
    /// Another writer moved these partitions' offsets; nothing was written.
    Stale {
        /// The partitions and the offsets the table now holds for them.
        partitions: Vec<(TopicPartition, Option<i64>)>,
    },
}

/// Errors that end a commit attempt for good.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// delta-rs failed with an error that retrying will not fix.
    #[error("commit to table {uri} failed: {source}")]
    Delta {
        /// The table.
        uri: String,
        /// delta-rs' error.
        #[source]
        source: Box<DeltaTableError>,
    },
    /// A MERGE kept losing to conflicting commits (replicas sharing files,
    /// a compaction): the window is rewound and tried again after a backoff.
    #[error(
        "upsert into table {uri} lost to conflicting commits {replans} times in a row; \
         rewinding to retry later: {last_error}"
    )]
    Contended {
        /// The table.
        uri: String,
        /// Re-plans made.
        replans: u64,
        /// The last conflict.
        last_error: String,
    },
    /// Shutdown was requested while the commit was retrying.
    #[error("commit to table {uri} abandoned at shutdown after {attempts} attempts: {last_error}")]
    Abandoned {
        /// The table.
        uri: String,
        /// Attempts made.
        attempts: u32,
        /// The last transient error.
        last_error: String,
    },
}

impl CommitError {
    /// Whether a later attempt with the same data could succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            CommitError::Delta { source, .. } => is_retryable(source),
            CommitError::Abandoned { .. } | CommitError::Contended { .. } => true,
        }
    }
}

/// Retry and backoff settings.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// delta-rs' own retries on version conflicts with non-overlapping commits.
    pub max_conflict_retries: usize,
    /// Upsert: times a MERGE that conflicted is planned again on the new
    /// version before its window gives up ([`CommitError::Contended`]).
    pub max_merge_replans: u32,
    /// First backoff after a transient error.
    pub initial_backoff: Duration,
    /// Backoff cap.
    pub max_backoff: Duration,
}

/// A commit request: files already uploaded, and the offsets they account for.
#[derive(Debug, Clone)]
pub struct CommitRequest {
    /// Add actions for the uploaded files.
    pub adds: Vec<Add>,
    /// One entry per partition touched.
    pub partitions: Vec<PartitionCommit>,
}

impl CommitRequest {
    /// Whether the commit moves some partition's stored offset. Only then can a
    /// retry tell from the offsets that an earlier attempt landed.
    pub fn moves_offsets(&self) -> bool {
        self.partitions.iter().any(|p| p.expected != Some(p.last))
    }
}

/// Statistics of a finished commit.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommitStats {
    /// Attempts, including the successful one.
    pub attempts: u32,
    /// Wall time from the first attempt to the outcome.
    pub duration: Duration,
    /// Other writers' commits this one was re-based over (delta-rs' conflict
    /// retries, and our re-checks after a conflicting one): the price of several
    /// writers on one table.
    pub conflicts: u64,
}

/// Commit `req` to `table`, retrying transient failures with exponential backoff
/// until it lands, turns out stale, or `cancelled()` returns true.
pub async fn commit(
    table: &mut DeltaTable,
    log: &TableLog,
    app_id: &str,
    req: &CommitRequest,
    policy: RetryPolicy,
    cancelled: &(dyn Fn() -> bool + Send + Sync),
) -> Result<(CommitOutcome, CommitStats), CommitError> {
    let start = Instant::now();
    let uri = table.table_url().to_string();
    let mut backoff = policy.initial_backoff;
    let mut attempts = 0u32;
    let mut conflicts = 0u64;
    loop {
        attempts += 1;
        match attempt(table, log, app_id, req, policy, &mut conflicts).await {
            Ok(outcome) => {
                return Ok((
                    outcome,
                    CommitStats {
                        attempts,
                        duration: start.elapsed(),
                        conflicts,
                    },
                ));
            }
            Err(source) if is_retryable(&source) => {
                if cancelled() {
                    return Err(CommitError::Abandoned {
                        uri,
                        attempts,
                        last_error: source.to_string(),
                    });
                }
                tracing::warn!(
                    table = %uri, attempt = attempts, backoff_ms = backoff.as_millis() as u64,
                    error = %source, "commit failed; retrying"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(policy.max_backoff);
            }
            Err(source) => {
                return Err(CommitError::Delta {
                    uri,
                    source: Box::new(source),
                });
            }
        }
    }
}

/// The compare half of the compare-and-swap: what the offsets stored now say
/// about `req`. `None`: every partition is at its expected offset, commit.
pub(crate) fn compare(
    req: &CommitRequest,
    stored: &HashMap<TopicPartition, Option<i64>>,
) -> Option<CommitOutcome> {
    // A request that moves no offset (dead letters of a replayed window that
    // ends below the offset the dead-letter table holds) cannot tell from the
    // offsets whether it landed: its caller makes one attempt only.
    if req.moves_offsets()
        && req
            .partitions
            .iter()
            .all(|p| stored.get(&p.tp).copied().flatten() == Some(p.last))
    {
        return Some(CommitOutcome::AlreadyCommitted);
    }
    let stale: Vec<(TopicPartition, Option<i64>)> = req
        .partitions
        .iter()
        .filter_map(|p| {
            let now = stored.get(&p.tp).copied().flatten();
            (now != p.expected).then(|| (p.tp.clone(), now))
        })
        .collect();
    if !stale.is_empty() {
        return Some(CommitOutcome::Stale { partitions: stale });
    }

    None
}

/// The commit's properties: a txn per partition (and the same offsets in
/// commitInfo), the conflict retries, no checkpoint or log cleanup inside it.
/// Also the (app id, offset) pairs written, for the offset store.
pub(crate) fn commit_properties(
    app_id: &str,
    req: &CommitRequest,
    policy: RetryPolicy,
) -> (CommitProperties, Vec<(String, i64)>) {
    let written: Vec<(String, i64)> = req
        .partitions
        .iter()
        .map(|p| (txn_app_id(app_id, &p.tp), p.last))
        .collect();
    let txns = written
        .iter()
        .map(|(app, last)| Transaction::new(app, *last))
        .collect();
    // The offsets also go into commitInfo, so history shows which partitions and
    // offsets each commit covered (status reads last commit times from it).
    let by_partition: serde_json::Map<String, serde_json::Value> = req
        .partitions
        .iter()
        .map(|p| (p.tp.to_string(), serde_json::Value::from(p.last)))
        .collect();
    let properties = CommitProperties::default()
        .with_application_transactions(txns)
        .with_metadata([
            (
                "tributary.appId".to_owned(),
                serde_json::Value::from(app_id),
            ),
            (
                "tributary.offsets".to_owned(),
                serde_json::Value::Object(by_partition),
            ),
        ])
        .with_max_retries(policy.max_conflict_retries)
        // Checkpoints and log cleanup run after the commit (crate::sink::checkpoint):
        // inside it, a failed checkpoint made a landed commit look failed, and
        // the cleanup listed the whole log on every commit.
        .with_create_checkpoint(false)
        .with_cleanup_expired_logs(Some(false));
    (properties, written)
}

async fn attempt(
    table: &mut DeltaTable,
    log: &TableLog,
    app_id: &str,
    req: &CommitRequest,
    policy: RetryPolicy,
    conflicts: &mut u64,
) -> Result<CommitOutcome, DeltaTableError> {
    loop {
        table.update_state().await?;
        let tps: Vec<TopicPartition> = req.partitions.iter().map(|p| p.tp.clone()).collect();
        let stored = log.offsets.offsets_for_writing(table, app_id, &tps).await?;
        if let Some(outcome) = compare(req, &stored) {
            return Ok(outcome);
        }
        let snapshot = table.snapshot()?;
        let partition_cols: Vec<String> = snapshot.metadata().partition_columns().to_vec();
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: (!partition_cols.is_empty()).then_some(partition_cols),
            predicate: None,
        };
        let (properties, written) = commit_properties(app_id, req, policy);
        let result = CommitBuilder::from(properties)
            .with_actions(req.adds.iter().cloned().map(Action::Add).collect())
            .build(Some(snapshot), table.log_store(), operation)
            .await;
        match result {
            Ok(finalized) => {
                *conflicts += finalized.metrics.num_retries;
                let version = finalized.version();
                log.offsets.record_commit(version, written).await;
                table.state = Some(finalized.snapshot());
                log.checkpoints.after_commit(table).await;
                return Ok(CommitOutcome::Committed {
                    version: version as i64,
                });
            }
            // A concurrent commit touched one of our app ids: loop to re-read the
            // offsets, which will report the partitions as stale.
            Err(DeltaTableError::Transaction {
                source:
                    TransactionError::CommitConflict(
                        c @ deltalake::kernel::transaction::CommitConflictError::ConcurrentTransaction,
                    ),
            }) => {
                tracing::info!(error = %c, "concurrent commit on one of our partitions; re-checking offsets");
                *conflicts += 1;
                continue;
            }
            // Another worker evolved the schema: our files (written with the columns
            // they had) are still valid, so re-check and commit again.
            Err(DeltaTableError::Transaction {
                source:
                    TransactionError::CommitConflict(
                        c @ deltalake::kernel::transaction::CommitConflictError::MetadataChanged,
                    ),
            }) => {
                tracing::info!(error = %c, "table metadata changed concurrently; re-checking and retrying");
                *conflicts += 1;
                continue;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 22, case 10: a MERGE that kept losing to conflicting commits
    /// stopped the daemon; it is a window to rewind and retry later.
    #[test]
    fn a_contended_upsert_is_retried_later_not_fatal() {
        let e = CommitError::Contended {
            uri: "s3://b/t".into(),
            replans: 10,
            last_error: "concurrent append".into(),
        };
        assert!(e.is_retryable());
        assert!(e.to_string().contains("10 times"), "{e}");
    }

    #[test]
    fn the_compare_half_of_the_swap() {
        let (a, b) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        let req = CommitRequest {
            adds: Vec::new(),
            partitions: vec![
                PartitionCommit {
                    tp: a.clone(),
                    expected: Some(4),
                    last: 9,
                },
                PartitionCommit {
                    tp: b.clone(),
                    expected: None,
                    last: 2,
                },
            ],
        };
        let stored = |x, y| HashMap::from([(a.clone(), x), (b.clone(), y)]);
        // Every partition where this window expects it: commit.
        assert_eq!(compare(&req, &stored(Some(4), None)), None);
        // Every partition already at the window's last: an earlier attempt landed.
        assert_eq!(
            compare(&req, &stored(Some(9), Some(2))),
            Some(CommitOutcome::AlreadyCommitted)
        );
        // Any other value on any partition: stale, naming what is stored.
        assert_eq!(
            compare(&req, &stored(Some(4), Some(0))),
            Some(CommitOutcome::Stale {
                partitions: vec![(b.clone(), Some(0))]
            })
        );
        assert_eq!(
            compare(&req, &stored(Some(9), None)),
            Some(CommitOutcome::Stale {
                partitions: vec![(a.clone(), Some(9))]
            })
        );
        // A request that moves nothing is never taken as already landed.
        let still = CommitRequest {
            adds: Vec::new(),
            partitions: vec![PartitionCommit {
                tp: a.clone(),
                expected: Some(9),
                last: 9,
            }],
        };
        assert_eq!(compare(&still, &stored(Some(9), None)), None);
    }

    fn part(p: i32, expected: Option<i64>, last: i64) -> PartitionCommit {
        PartitionCommit {
            tp: TopicPartition::new("t", p),
            expected,
            last,
        }
    }

    #[test]
    fn only_a_request_that_moves_an_offset_can_be_recognised_as_landed() {
        let req = |partitions| CommitRequest {
            adds: Vec::new(),
            partitions,
        };
        assert!(req(vec![part(0, None, 4)]).moves_offsets());
        assert!(req(vec![part(0, Some(4), 4), part(1, Some(2), 9)]).moves_offsets());
        // Dead letters of a replayed window ending below the stored offset.
        assert!(!req(vec![part(0, Some(4), 4)]).moves_offsets());
        assert!(!req(vec![part(0, Some(4), 4), part(1, Some(7), 7)]).moves_offsets());
    }
}
