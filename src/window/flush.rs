//! A window's flush, run as a task of its own: its dead letters first (so a crash
//! before its rows land replays them as already kept), then its Parquet files
//! finished and committed with the window's offsets in one transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use deltalake::arrow::array::RecordBatch;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::writer::DeltaWriter;
use deltalake::{DeltaTable, DeltaTableError};

use crate::decode::changes::Changes;
use crate::record::TopicPartition;
use crate::sink::UpsertSpec;
use crate::sink::commit::{
    self, CommitError, CommitOutcome, CommitRequest, CommitStats, PartitionCommit, RetryPolicy,
    TableLog,
};
use crate::sink::table;
use crate::sink::upsert::{self, UpsertError, UpsertWindow};
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
    let result = match rows {
        WindowRows::Files(w) => {
            commit_files(w, &mut table, &log, &app_id, partitions, policy, &cancelled).await
        }
        WindowRows::Changes {
            spec,
            changes,
            parquet,
        } => match Changes::concat(&changes) {
            Ok(changes) => {
                let window = UpsertWindow {
                    key: spec.key,
                    order_by: spec.order_by,
                    changes,
                    partitions,
                    parquet: Some(*parquet),
                };
                apply_changes(&mut table, &log, &app_id, &window, policy, &cancelled).await
            }
            Err(e) => Err(TaskError::Write(e.into())),
        },
    };
    CommitDone {
        table,
        dead_committed,
        result,
    }
}

/// An append table's window: its files with its offsets.
async fn commit_files(
    writer: Option<WindowWriter>,
    table: &mut DeltaTable,
    log: &TableLog,
    app_id: &str,
    partitions: Vec<PartitionCommit>,
    policy: RetryPolicy,
    cancelled: &(dyn Fn() -> bool + Send + Sync),
) -> Result<(CommitOutcome, CommitStats, usize, u64), TaskError> {
    let adds = match writer {
        Some(w) => w.finish().await.map_err(TaskError::Write)?,
        None => Vec::new(),
    };
    let files = adds.len();
    let bytes: u64 = adds.iter().map(|a| a.size.max(0) as u64).sum();
    let req = CommitRequest { adds, partitions };
    commit::commit(table, log, app_id, &req, policy, cancelled)
        .await
        .map(|(o, s)| (o, s, files, bytes))
        .map_err(TaskError::Commit)
}

/// An upsert table's window: its changes as one MERGE with its offsets.
async fn apply_changes(
    table: &mut DeltaTable,
    log: &TableLog,
    app_id: &str,
    window: &UpsertWindow,
    policy: RetryPolicy,
    cancelled: &(dyn Fn() -> bool + Send + Sync),
) -> Result<(CommitOutcome, CommitStats, usize, u64), TaskError> {
    let (o, s, w) = upsert::apply(table, log, app_id, window, policy, cancelled)
        .await
        .map_err(TaskError::Upsert)?;
    Ok((o, s, w.files as usize, w.bytes))
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
    /// An upsert's MERGE failed.
    #[error(transparent)]
    Upsert(UpsertError),
}

impl TaskError {
    /// Whether the window may succeed when read again (storage trouble).
    pub fn is_retryable(&self) -> bool {
        match self {
            TaskError::Write(e) => crate::sink::retry::is_retryable(e),
            TaskError::Commit(e) => e.is_retryable(),
            TaskError::Upsert(UpsertError::Commit(e)) => e.is_retryable(),
            TaskError::Upsert(UpsertError::Key { .. }) => false,
        }
    }
}
