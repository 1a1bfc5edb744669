//! A window's flush, run as a task of its own: its dead letters first (so a crash
//! before its rows land replays them as already kept), then its Parquet files
//! finished and committed with the window's offsets in one transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use deltalake::arrow::array::RecordBatch;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::writer::DeltaWriter;
use deltalake::{DeltaTable, DeltaTableError};

use crate::record::TopicPartition;
use crate::sink::commit::{
    self, CommitError, CommitOutcome, CommitRequest, CommitStats, PartitionCommit, RetryPolicy,
    TableLog,
};
use crate::sink::table;
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

/// Commit the window: dead letters first, then its files with its offsets.
pub async fn flush_and_commit(
    writer: Option<WindowWriter>,
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
            Ok((CommitOutcome::Stale { partitions }, s)) => {
                return CommitDone {
                    table,
                    dead_committed,
                    result: Ok((CommitOutcome::Stale { partitions }, s, 0, 0)),
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
    let adds = match writer {
        Some(w) => match w.finish().await {
            Ok(adds) => adds,
            Err(e) => {
                return CommitDone {
                    table,
                    dead_committed,
                    result: Err(TaskError::Write(e)),
                };
            }
        },
        None => Vec::new(),
    };
    let files = adds.len();
    let bytes: u64 = adds.iter().map(|a| a.size.max(0) as u64).sum();
    let req = CommitRequest { adds, partitions };
    let result = commit::commit(&mut table, &log, &app_id, &req, policy, &cancelled)
        .await
        .map(|(o, s)| (o, s, files, bytes))
        .map_err(TaskError::Commit);
    CommitDone {
        table,
        dead_committed,
        result,
    }
}

async fn commit_dead_letters(
    d: DeadCommit,
    app_id: &str,
    policy: RetryPolicy,
    cancelled: &(dyn Fn() -> bool + Send + Sync),
) -> Result<(CommitOutcome, CommitStats), TaskError> {
    let mut table = d.table;
    let mut w = table::new_writer(&table, d.props, 128 * 1024 * 1024).map_err(TaskError::Write)?;
    for b in d.batches {
        w.write(b).await.map_err(TaskError::Write)?;
    }
    let adds = w.flush().await.map_err(TaskError::Write)?;
    let req = CommitRequest {
        adds,
        partitions: d.partitions,
    };
    // Moving no offset, a retry could not tell whether an attempt whose response
    // was lost landed: one attempt, and on failure the window is re-read, which
    // reads the dead letters that did land.
    let once = || true;
    let cancelled = if req.moves_offsets() {
        cancelled
    } else {
        &once
    };
    commit::commit(&mut table, &d.log, app_id, &req, policy, cancelled)
        .await
        .map_err(TaskError::Commit)
}

/// What a flush task returns: the table handle (updated by the commit), the dead
/// letters that landed, and the outcome with its figures (files, bytes).
#[derive(Debug)]
pub struct CommitDone {
    /// The table, at the version the commit saw or wrote.
    pub table: DeltaTable,
    /// Partitions whose dead letters were committed, with the offset stored.
    pub dead_committed: Vec<(TopicPartition, i64)>,
    /// The outcome, with its stats, files and bytes written.
    pub result: Result<(CommitOutcome, CommitStats, usize, u64), TaskError>,
}

/// Why a flush did not complete.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Writing or uploading the Parquet files failed.
    #[error("writing the window's files: {0}")]
    Write(DeltaTableError),
    /// The commit failed.
    #[error(transparent)]
    Commit(CommitError),
}

impl TaskError {
    /// Whether the window may succeed when read again (storage trouble).
    pub fn is_retryable(&self) -> bool {
        match self {
            TaskError::Write(e) => crate::sink::retry::is_retryable(e),
            TaskError::Commit(e) => e.is_retryable(),
        }
    }
}
