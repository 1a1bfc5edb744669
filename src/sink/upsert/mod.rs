//! Upsert: a window of keyed changes planned as one MERGE on the key, which
//! the commit engine ([`crate::sink::commit`]) runs with the window's offsets in
//! its commit, exactly once.
//!
//! A window is first reduced to one change per key ([`reduce`]): the last one
//! read (a key lives in one Kafka partition, whose records arrive in offset
//! order), or with `order_by` the newest. Then one delta-rs MERGE on the key: a
//! matched key is deleted or updated, an unmatched one inserted (a deletion of
//! an absent key does nothing). [`deletes`] remembers deleted keys' order
//! values, so a late change cannot bring a deleted key back; [`partitions`]
//! keeps the topic's partition count the table was written with.

pub mod deletes;
pub(crate) mod merge;
pub mod partitions;

use deltalake::DeltaTable;
use deltalake::arrow::array::ArrayRef;
use deltalake::parquet::file::properties::WriterProperties;

use crate::decode::changes::{ChangesError, reduce};
use crate::offsets::PartitionCommit;
use crate::sink::UpsertStrategy;
use deletes::DeleteMemory;

pub use crate::decode::changes::Changes;

/// What one window asks of an upsert table.
#[derive(Debug, Clone)]
pub struct UpsertWindow {
    /// The key columns.
    pub key: Vec<String>,
    /// A column ordering the changes of a key (a source LSN, a change time): a
    /// change never replaces a newer one, in the window or in the table.
    pub order_by: Option<String>,
    /// The window's changes.
    pub changes: Changes,
    /// The offsets they account for, per partition.
    pub partitions: Vec<PartitionCommit>,
    /// Parquet settings of the files the MERGE writes (the table's compression
    /// and row groups); delta-rs' defaults when `None`.
    pub parquet: Option<WriterProperties>,
    /// A MERGE rewriting files, or deletion vectors.
    pub strategy: UpsertStrategy,
}

/// A window planned as a MERGE: its changes reduced to one per key, and with
/// a memory of deletes each key's latest delete.
#[derive(Debug)]
pub struct MergePlan {
    /// The key columns.
    pub key: Vec<String>,
    /// The order column.
    pub order_by: Option<String>,
    /// One change per key.
    pub changes: Changes,
    /// Per change, the order value of its key's latest delete.
    pub deleted_order: Option<ArrayRef>,
    /// Parquet settings of the files the MERGE writes.
    pub parquet: Option<WriterProperties>,
}

/// Why a window could not be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The changes cannot be keyed or ordered (a key column missing or null).
    #[error(transparent)]
    Changes(#[from] ChangesError),
    /// Reading the table, or the memory of deletes, failed.
    #[error(transparent)]
    Delta(#[from] deltalake::DeltaTableError),
}

/// Plan `window` against `table`: `None` when it reduces to nothing (its
/// offsets are then committed alone). With `order_by` and a memory of deletes,
/// the window's deletes are remembered first ([`deletes`]).
pub async fn plan(
    table: &mut DeltaTable,
    deletes: &DeleteMemory,
    window: UpsertWindow,
) -> Result<Option<MergePlan>, PlanError> {
    let reduced = reduce(&window.key, window.order_by.as_deref(), &window.changes)?;
    if reduced.rows.num_rows() == 0 {
        return Ok(None);
    }
    let deleted_order = match window.order_by.as_deref() {
        Some(order_by) if deletes.is_on() => {
            // The version is the markers' sequence: at least the partition's
            // last window's, whichever replica committed it.
            table.update_state().await?;
            let w = deletes::Window {
                key: &window.key,
                order_by,
                changes: &reduced,
                table,
            };
            deletes
                .remember_and_recall(&w, std::time::SystemTime::now())
                .await?
        }
        _ => None,
    };
    Ok(Some(MergePlan {
        key: window.key,
        order_by: window.order_by,
        changes: reduced,
        deleted_order,
        parquet: window.parquet,
    }))
}
