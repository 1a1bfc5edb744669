//! The commit engine: a window's body (appended files, or a MERGE of keyed
//! changes) and its Kafka offsets land in one Delta transaction, exactly once.
//!
//! [`Commit`] is a builder (plan, then execute): the body is chosen first
//! ([`Commit::with_files`], [`Commit::with_upsert`]), and [`Commit::execute`]
//! runs the one retry loop every body shares. [`txn`] attaches the offsets,
//! [`body`] writes the body; the loop decides what a failure means.
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
//! Its uploaded files stay unreferenced until `vacuum` removes them. An upsert
//! table's rows are per key, not per offset: there the invariant is that the
//! table holds, for every key, what its changes up to `v` leave (the last one
//! read, or the newest by `order_by`), and the same compare-and-swap holds.
//!
//! A commit whose outcome is unknown (the PUT landed but the response was lost) is
//! retried; the retry finds `v == last` and reports [`CommitOutcome::AlreadyCommitted`]
//! instead of writing the data twice.
//!
//! # Conflicts, at two levels
//!
//! 1. delta-rs re-bases a commit over other writers' commits that do not
//!    conflict with it (a blind append beside another), up to
//!    `commit.max_conflict_retries` times; this counts in [`CommitReport::conflicts`].
//! 2. A commit the conflict checker refuses (another writer removed or
//!    rewrote files this MERGE read, changed the table's metadata, ...) is
//!    planned again on the new version, up to `commit.max_replans` times
//!    ([`CommitReport::replans`]); past that the commit fails as
//!    [`CommitError::Contended`], which is transient: the pipeline rewinds
//!    the window and reads it again after a backoff. The daemon does not stop.
//!
//! A racing commit that holds one of our `txn` app ids is neither: it makes
//! the commit [`CommitOutcome::Stale`] on the next compare.
//!
//! A merge-on-read body is never re-based by delta-rs: its deletion vectors
//! name rows of files as they were when it read them, and delta-rs' checker
//! lets a commit re-add a file that a concurrent compaction removed
//! (`dataChange = false`), which would bring the compacted rows back twice.
//! So any commit that lands first makes it plan again (level 2, counted in
//! `replans`) on the new version.

mod body;
mod on_read;
pub mod txn;
mod wrote;

use std::time::{Duration, Instant};

use deltalake::DeltaTable;
use deltalake::DeltaTableError;
use deltalake::kernel::Add;

use crate::record::TopicPartition;
use crate::sink::UpsertStrategy;
use crate::sink::retry::{is_conflict, is_retryable};
use crate::sink::upsert::{self, PlanError, UpsertWindow};
use body::Body;
use wrote::{Landed, Wrote};

pub use crate::offsets::PartitionCommit;
pub use crate::sink::table_log::TableLog;

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

/// What a finished commit did and what it cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitReport {
    /// Landed, found landed, or stale.
    pub outcome: CommitOutcome,
    /// Attempts, including the deciding one.
    pub attempts: u32,
    /// Other writers' commits this one was re-based over or lost to (delta-rs'
    /// conflict retries, racing commits, re-plans): the price of several
    /// writers on one table.
    pub conflicts: u64,
    /// Times the body was planned again on a newer version after a conflict.
    pub replans: u32,
    /// Wall time from planning to the outcome.
    pub duration: Duration,
    /// Parquet files the commit added (the window's, or a MERGE's new and
    /// rewritten files).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Errors that end a commit for good (the window is then rewound if
/// [`CommitError::is_retryable`], else the daemon stops).
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
    /// An upsert window's changes cannot be keyed or ordered.
    #[error("upsert into table {uri}: {source}")]
    Changes {
        /// The table.
        uri: String,
        /// What is wrong with them.
        #[source]
        source: crate::decode::changes::ChangesError,
    },
    /// The commit kept losing to conflicting commits (replicas sharing files,
    /// a compaction): the window is rewound and tried again after a backoff.
    #[error(
        "commit to table {uri} lost to conflicting commits {replans} times in a row; \
         rewinding to retry later: {last_error}"
    )]
    Contended {
        /// The table.
        uri: String,
        /// Re-plans made.
        replans: u32,
        /// The last conflict.
        last_error: String,
    },
    /// Shutdown was requested while the commit was retrying, or a commit
    /// that moves no offset (which cannot tell whether a lost attempt landed)
    /// failed once.
    #[error("commit to table {uri} abandoned after {attempts} attempts: {last_error}")]
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
            CommitError::Changes { .. } => false,
            CommitError::Abandoned { .. } | CommitError::Contended { .. } => true,
        }
    }
}

/// Retry and backoff settings.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// delta-rs' own retries on version conflicts with non-overlapping commits.
    pub max_conflict_retries: usize,
    /// Times a commit that conflicted is planned again on the new version
    /// before it gives up ([`CommitError::Contended`]).
    pub max_replans: u32,
    /// First backoff after a transient error.
    pub initial_backoff: Duration,
    /// Backoff cap.
    pub max_backoff: Duration,
}

/// One commit, planned then executed: a body and the offsets it accounts for.
#[derive(Debug)]
pub struct Commit<'a> {
    table: &'a mut DeltaTable,
    log: &'a TableLog,
    app_id: &'a str,
    policy: RetryPolicy,
    partitions: Vec<PartitionCommit>,
    body: Pending,
}

/// The body before planning.
#[derive(Debug)]
enum Pending {
    Files(Vec<Add>),
    Upsert(Box<UpsertWindow>),
}

/// How one attempt ended, when it did not fail.
enum Attempt {
    /// The compare decided: already landed, or stale.
    Decided(CommitOutcome),
    /// The body and offsets landed.
    Landed(Landed),
    /// The body changed nothing and wrote no commit.
    Nothing,
    /// Another commit landed first and the body must be planned again on it.
    Lost,
    /// A racing commit holds one of our app ids: compare again.
    Raced,
}

impl<'a> Commit<'a> {
    /// A commit to `table` under `app_id`'s offsets; with no body set, it
    /// moves the offsets alone.
    pub fn new(
        table: &'a mut DeltaTable,
        log: &'a TableLog,
        app_id: &'a str,
        policy: RetryPolicy,
    ) -> Self {
        Self {
            table,
            log,
            app_id,
            policy,
            partitions: Vec::new(),
            body: Pending::Files(Vec::new()),
        }
    }

    /// The offsets the commit accounts for.
    pub fn with_partitions(mut self, partitions: Vec<PartitionCommit>) -> Self {
        self.partitions = partitions;
        self
    }

    /// An append: files already uploaded.
    pub fn with_files(mut self, adds: Vec<Add>) -> Self {
        self.body = Pending::Files(adds);
        self
    }

    /// An upsert: the window's changes as one MERGE, with its offsets.
    pub fn with_upsert(mut self, window: UpsertWindow) -> Self {
        self.partitions = window.partitions.clone();
        self.body = Pending::Upsert(Box::new(window));
        self
    }

    /// Run the commit, retrying transient failures with exponential backoff
    /// until it lands, turns out stale, or `cancelled()` returns true.
    pub async fn execute(
        mut self,
        cancelled: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<CommitReport, CommitError> {
        let start = Instant::now();
        let uri = self.table.table_url().to_string();
        let mut body = self.plan(&uri).await?;
        // A commit that moves no offset cannot tell from the offsets whether a
        // failed attempt landed: one attempt, and the window is read again.
        let retry_transient = txn::moves_offsets(&self.partitions);
        let mut backoff = self.policy.initial_backoff;
        let mut r = CommitReport {
            outcome: CommitOutcome::AlreadyCommitted,
            attempts: 0,
            conflicts: 0,
            replans: 0,
            duration: Duration::ZERO,
            files: 0,
            bytes: 0,
        };
        loop {
            r.attempts += 1;
            let outcome = match self.attempt(&body).await {
                Ok(Attempt::Decided(outcome)) => outcome,
                Ok(Attempt::Landed(l)) => {
                    (r.files, r.bytes) = (l.files, l.bytes);
                    r.conflicts += l.retries;
                    CommitOutcome::Committed {
                        version: l.version as i64,
                    }
                }
                // The MERGE changed nothing: its offsets alone.
                Ok(Attempt::Nothing) => {
                    body = Body::Files(Vec::new());
                    continue;
                }
                Ok(Attempt::Lost) if r.replans < self.policy.max_replans => {
                    (r.replans, r.conflicts) = (r.replans + 1, r.conflicts + 1);
                    tracing::info!(table = %uri, "another commit landed first; planning again on it");
                    continue;
                }
                Ok(Attempt::Lost) => {
                    return Err(CommitError::Contended {
                        uri,
                        replans: r.replans,
                        last_error: "another commit landed first".into(),
                    });
                }
                Ok(Attempt::Raced) => {
                    r.conflicts += 1;
                    tracing::info!(table = %uri, "concurrent commit on one of our partitions; re-checking offsets");
                    continue;
                }
                Err(e) if is_conflict(&e) && r.replans < self.policy.max_replans => {
                    (r.replans, r.conflicts) = (r.replans + 1, r.conflicts + 1);
                    tracing::info!(table = %uri, error = %e, "commit conflicted; planning it again on the new version");
                    continue;
                }
                Err(e) if is_retryable(&e) && retry_transient && !cancelled() => {
                    tracing::warn!(
                        table = %uri, attempt = r.attempts, backoff_ms = backoff.as_millis() as u64,
                        error = %e, "commit failed; retrying"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.policy.max_backoff);
                    continue;
                }
                Err(e) => return Err(given_up(uri, e, &r)),
            };
            r.outcome = outcome;
            r.duration = start.elapsed();
            return Ok(r);
        }
    }

    /// The body to write: an upsert window is reduced and its deletes
    /// recalled once, before the first attempt.
    async fn plan(&mut self, uri: &str) -> Result<Body, CommitError> {
        match std::mem::replace(&mut self.body, Pending::Files(Vec::new())) {
            Pending::Files(adds) => Ok(Body::Files(adds)),
            Pending::Upsert(window) => {
                let strategy = window.strategy;
                match upsert::plan(self.table, &self.log.deletes, *window).await {
                    Ok(Some(plan)) => Ok(match strategy {
                        UpsertStrategy::CopyOnWrite => Body::Merge(Box::new(plan)),
                        UpsertStrategy::MergeOnRead => Body::MergeOnRead(Box::new(plan)),
                    }),
                    Ok(None) => Ok(Body::Files(Vec::new())),
                    Err(PlanError::Changes(source)) => Err(CommitError::Changes {
                        uri: uri.to_owned(),
                        source,
                    }),
                    Err(PlanError::Delta(e)) => Err(CommitError::Delta {
                        uri: uri.to_owned(),
                        source: Box::new(e),
                    }),
                }
            }
        }
    }

    /// One attempt: the compare on the latest version, then the body with the
    /// offsets; a landed commit is recorded (offsets, checkpoint schedule).
    async fn attempt(&mut self, body: &Body) -> Result<Attempt, DeltaTableError> {
        let table = &mut *self.table;
        table.update_state().await?;
        let tps: Vec<TopicPartition> = self.partitions.iter().map(|p| p.tp.clone()).collect();
        let stored = self
            .log
            .offsets
            .offsets_for_writing(table, self.app_id, &tps)
            .await?;
        if let Some(outcome) = txn::compare(&self.partitions, &stored) {
            return Ok(Attempt::Decided(outcome));
        }
        let (properties, written) =
            txn::commit_properties(self.app_id, &self.partitions, self.policy);
        match body.write(table, self.log, properties).await {
            Ok(Wrote::Landed(landed)) => {
                self.log
                    .offsets
                    .record_commit(landed.version, written)
                    .await;
                self.log.checkpoints.after_commit(table).await;
                Ok(Attempt::Landed(landed))
            }
            Ok(Wrote::Nothing) => Ok(Attempt::Nothing),
            Ok(Wrote::Lost) => Ok(Attempt::Lost),
            Err(DeltaTableError::Transaction {
                source:
                    deltalake::kernel::transaction::TransactionError::CommitConflict(
                        deltalake::kernel::transaction::CommitConflictError::ConcurrentTransaction,
                    ),
            }) => Ok(Attempt::Raced),
            Err(e) => Err(e),
        }
    }
}

/// The error of a commit that stopped trying: contended (re-planned as often
/// as allowed), abandoned (transient, at shutdown or with no offset to tell
/// by), or failed for good.
fn given_up(uri: String, e: DeltaTableError, r: &CommitReport) -> CommitError {
    if is_conflict(&e) {
        CommitError::Contended {
            uri,
            replans: r.replans,
            last_error: e.to_string(),
        }
    } else if is_retryable(&e) {
        CommitError::Abandoned {
            uri,
            attempts: r.attempts,
            last_error: e.to_string(),
        }
    } else {
        CommitError::Delta {
            uri,
            source: Box::new(e),
        }
    }
}

#[cfg(test)]
mod tests;
