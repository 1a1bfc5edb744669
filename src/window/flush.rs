//! A window's flush, run as a task of its own: its dead letters first (so a crash
//! before its rows land replays them as already kept), then its Parquet files
//! finished and committed with the window's offsets in one transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use deltalake::arrow::array::RecordBatch;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::writer::DeltaWriter;
use deltalake::{DeltaTable, DeltaTableError};

use crate::decode::changes::{Changes, ChangesError};
use crate::record::TopicPartition;
use crate::sink::UpsertSpec;
use crate::sink::commit::{
    Commit, CommitError, CommitOutcome, CommitReport, PartitionCommit, RetryPolicy, TableLog,
};
use crate::sink::table;
use crate::sink::upsert::UpsertWindow;
use crate::window::encoder::WindowWriter;

/// A window's dead letters, committed to the dead-letter table before its rows.
#[derive(Debug)]
pub struct DeadCommit {
    /// The dead-letter table.
    pub table: DeltaTable,
    /// Its stored offsets.
    pub log: TableLog,
    /// The window's dead letters.
    pub batches: Vec<RecordBatch>,
    /// Per partition with dead letters: the dead-letter table's offset move.
    pub partitions: Vec<PartitionCommit>,
    /// Parquet settings of the dead-letter table.
    pub props: WriterProperties,
}

/// What a window writes: Parquet files (appends), or an upsert table's changes.
pub enum WindowRows {
    /// The window's Parquet files, once a row was written.
    Files(Option<WindowWriter>),
    /// The changes, applied with one MERGE.
    Changes {
        /// The table's key.
        spec: UpsertSpec,
        /// The changes in offset order.
        changes: Vec<Changes>,
        /// The table's Parquet settings, for the files the MERGE writes.
        parquet: Box<WriterProperties>,
    },
}

impl std::fmt::Debug for WindowRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WindowRows::Files(w) => write!(f, "Files({})", w.is_some()),
            WindowRows::Changes { changes, .. } => write!(f, "Changes({} batches)", changes.len()),
        }
    }
}

/// Commit the window: dead letters first, then its files (or changes) with its
/// offsets.
pub async fn flush_and_commit(
    rows: WindowRows,
    (mut table, log): (DeltaTable, TableLog),
    app_id: String,
    partitions: Vec<PartitionCommit>,
    policy: RetryPolicy,
    abandon: Arc<AtomicBool>,
    dead: Option<DeadCommit>,
) -> CommitDone {
    let cancelled = move || abandon.load(Ordering::Acquire);
    // Dead letters first: if we die before the rows land, the replay finds them
    // already stored and does not write them again.
    let mut dead_committed = Vec::new();
    if let Some(d) = dead {
        let committed: Vec<(TopicPartition, i64)> = d
            .partitions
            .iter()
            .map(|p| (p.tp.clone(), p.last))
            .collect();
        match commit_dead_letters(d, &app_id, policy, &cancelled).await {
            Ok(
                report @ CommitReport {
                    outcome: CommitOutcome::Stale { .. },
                    ..
                },
            ) => {
                return CommitDone {
                    table,
                    dead_committed,
                    result: Ok(CommitReport {
                        files: 0,
                        bytes: 0,
                        ..report
                    }),
                };
            }
            Ok(_) => dead_committed = committed,
            Err(e) => {
                return CommitDone {
                    table,
                    dead_committed,
                    result: Err(e),
                };
            }
        }
    }
    let result = commit_rows(
        rows, &mut table, &log, &app_id, partitions, policy, &cancelled,
    )
    .await;
    CommitDone {
        table,
        dead_committed,
        result,
    }
}

/// The window's body with its offsets, through the commit engine: its files
/// appended, or its changes merged.
async fn commit_rows(
    rows: WindowRows,
    table: &mut DeltaTable,
    log: &TableLog,
    app_id: &str,
    partitions: Vec<PartitionCommit>,
    policy: RetryPolicy,
    cancelled: &(dyn Fn() -> bool + Send + Sync),
) -> Result<CommitReport, TaskError> {
    let commit = Commit::new(table, log, app_id, policy);
    let commit = match rows {
        WindowRows::Files(w) => {
            let adds = match w {
                Some(w) => w.finish().await.map_err(TaskError::Write)?,
                None => Vec::new(),
            };
            commit.with_partitions(partitions).with_files(adds)
        }
        WindowRows::Changes {
            spec,
            changes,
            parquet,
        } => commit.with_upsert(UpsertWindow {
            key: spec.key,
            order_by: spec.order_by,
            changes: Changes::concat(&changes).map_err(TaskError::Changes)?,
            partitions,
            parquet: Some(*parquet),
            strategy: spec.strategy,
        }),
    };
    commit.execute(cancelled).await.map_err(TaskError::Commit)
}

async fn commit_dead_letters(
    d: DeadCommit,
    app_id: &str,
    policy: RetryPolicy,
    cancelled: &(dyn Fn() -> bool + Send + Sync),
) -> Result<CommitReport, TaskError> {
    let mut table = d.table;
    let mut w = table::new_writer(&table, d.props, 128 * 1024 * 1024).map_err(TaskError::Write)?;
    for b in d.batches {
        w.write(b).await.map_err(TaskError::Write)?;
    }
    let adds = w.flush().await.map_err(TaskError::Write)?;
    Commit::new(&mut table, &d.log, app_id, policy)
        .with_partitions(d.partitions)
        .with_files(adds)
        .execute(cancelled)
        .await
        .map_err(TaskError::Commit)
}

/// What a flush task returns: the table handle (updated by the commit), the dead
/// letters that landed, and the commit's report.
#[derive(Debug)]
pub struct CommitDone {
    /// The table, at the version the commit saw or wrote.
    pub table: DeltaTable,
    /// Partitions whose dead letters were committed, with the offset stored.
    pub dead_committed: Vec<(TopicPartition, i64)>,
    /// The commit's report.
    pub result: Result<CommitReport, TaskError>,
}

/// Why a flush did not complete.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Writing or uploading the Parquet files failed.
    #[error("writing the window's files: {0}")]
    Write(DeltaTableError),
    /// The window's changes could not be joined.
    #[error("joining the window's changes: {0}")]
    Changes(ChangesError),
    /// The commit failed.
    #[error(transparent)]
    Commit(CommitError),
}

impl TaskError {
    /// Whether the window may succeed when read again (storage trouble).
    pub fn is_retryable(&self) -> bool {
        match self {
            TaskError::Write(e) => crate::sink::retry::is_retryable(e),
            TaskError::Changes(_) => false,
            TaskError::Commit(e) => e.is_retryable(),
        }
    }
}
