//! A window applied by merge-on-read: the live rows of the keys it changes are
//! deleted by deletion vectors (one DV file for the window, a vector per data
//! file, the union with the file's earlier one), and its changes that are not
//! deletions are written as new Parquet files. Nothing is rewritten: what a
//! window writes is its changes and its vectors, whatever the table's size.
//!
//! Not yet: `order_by` (a change must not replace a newer row, which needs the
//! matched rows' order values), the memory of deletes, and the commit body that
//! carries these actions with the window's offsets through the engine.

use deltalake::DeltaTable;
use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::compute::filter_record_batch;
use deltalake::kernel::engine::arrow_conversion::TryIntoArrow as _;
use deltalake::kernel::{Action, Add};
use deltalake::logstore::object_store;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::writer::DeltaWriter;
use object_store::ObjectStoreExt as _;

use super::positions::{LocateError, locate};
use super::{DvError, replace, union, write_file};
use crate::decode::changes::Changes;

/// What applying a window by merge-on-read puts in its commit.
#[derive(Debug)]
pub struct MergeOnRead {
    /// The `remove` + `add` of every file whose vector changes, then the
    /// `add`s of the new files.
    pub actions: Vec<Action>,
    /// Live rows the window's vectors delete.
    pub rows_deleted: u64,
    /// Data files given a new vector.
    pub files_with_vectors: u64,
    /// Rows written in new files.
    pub rows_written: u64,
}

/// Why a window cannot be applied by merge-on-read.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Finding the changed keys' rows failed.
    #[error(transparent)]
    Locate(Box<LocateError>),
    /// A vector cannot be written.
    #[error(transparent)]
    Vector(Box<DvError>),
    /// Writing the new files or the DV file failed.
    #[error(transparent)]
    Delta(Box<deltalake::DeltaTableError>),
    /// A change's column does not fit the table's.
    #[error("the window's changes do not fit the table: {0}")]
    Align(#[source] crate::schema::evolve::Mismatch),
    /// The changes do not have the key or the table's columns.
    #[error("the window's changes: {0}")]
    Changes(#[source] deltalake::arrow::error::ArrowError),
}

impl From<LocateError> for ApplyError {
    fn from(e: LocateError) -> Self {
        ApplyError::Locate(Box::new(e))
    }
}

impl From<DvError> for ApplyError {
    fn from(e: DvError) -> Self {
        ApplyError::Vector(Box::new(e))
    }
}

impl From<deltalake::DeltaTableError> for ApplyError {
    fn from(e: deltalake::DeltaTableError) -> Self {
        ApplyError::Delta(Box::new(e))
    }
}

/// Plan and write (the DV file and the new data files are uploaded; nothing
/// is committed) the merge-on-read of `changes`, reduced to one per key, on
/// `key`.
pub async fn apply(
    table: &DeltaTable,
    key: &[String],
    changes: &Changes,
    parquet: WriterProperties,
    now_ms: i64,
) -> Result<MergeOnRead, ApplyError> {
    let keys = changes
        .rows
        .project(
            &key.iter()
                .map(|k| changes.rows.schema().index_of(k))
                .collect::<Result<Vec<_>, _>>()
                .map_err(ApplyError::Changes)?,
        )
        .map_err(ApplyError::Changes)?;
    let found = locate(table, &keys).await?;
    let mut actions = Vec::new();
    let (mut rows_deleted, mut files_with_vectors) = (0, 0);
    if !found.is_empty() {
        #[allow(deprecated)] // the file as an Add: the commit needs the action
        let adds: Vec<Add> = table
            .snapshot()?
            .log_data()
            .iter()
            .filter(|f| found.contains_key(f.path().as_ref()))
            .map(|f| f.add_action())
            .collect();
        // `locate` read each file's current vector: the new one is the union.
        let vectors: Vec<_> = adds
            .iter()
            .map(|add| {
                let f = &found[&add.path];
                rows_deleted += f.rows.len();
                union(Some(f.deleted.clone()), f.rows.iter())
            })
            .collect();
        let file = write_file("", uuid::Uuid::new_v4(), &vectors)?;
        table
            .log_store()
            .object_store(None)
            .put(
                &deltalake::Path::from(file.path.as_str()),
                file.bytes.into(),
            )
            .await
            .map_err(deltalake::DeltaTableError::from)?;
        for ((add, v), d) in adds.iter().zip(&vectors).zip(file.descriptors) {
            let physical = found[&add.path].physical;
            let (remove, add) = replace(add, d, v, physical, now_ms)?;
            actions.push(Action::Remove(remove));
            actions.push(Action::Add(add));
            files_with_vectors += 1;
        }
    }
    let rows = live_rows(table, changes)?;
    let rows_written = rows.num_rows() as u64;
    if rows_written > 0 {
        let mut w =
            deltalake::writer::RecordBatchWriter::for_table(table)?.with_writer_properties(parquet);
        w.write(rows).await?;
        actions.extend(w.flush().await?.into_iter().map(Action::Add));
    }
    Ok(MergeOnRead {
        actions,
        rows_deleted,
        files_with_vectors,
        rows_written,
    })
}

/// The changes that are not deletions, in the table's columns (a column the
/// changes lack is null).
fn live_rows(table: &DeltaTable, changes: &Changes) -> Result<RecordBatch, ApplyError> {
    let kept = deltalake::arrow::compute::not(&changes.deleted).map_err(ApplyError::Changes)?;
    let rows = filter_record_batch(&changes.rows, &kept).map_err(ApplyError::Changes)?;
    let schema: deltalake::arrow::datatypes::Schema = table
        .snapshot()?
        .schema()
        .as_ref()
        .try_into_arrow()
        .map_err(ApplyError::Changes)?;
    let schema = std::sync::Arc::new(schema);
    let have: Vec<_> = rows
        .schema()
        .fields()
        .iter()
        .cloned()
        .zip(rows.columns().iter().cloned())
        .collect();
    let columns = crate::schema::evolve::align_columns(&have, schema.fields(), rows.num_rows())
        .map_err(ApplyError::Align)?;
    RecordBatch::try_new(schema, columns).map_err(ApplyError::Changes)
}
