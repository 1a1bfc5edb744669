//! A window applied by merge-on-read: the live rows of the keys it changes are
//! deleted by deletion vectors (one DV file for the window, a vector per data
//! file, the union with the file's earlier one), and its changes that are not
//! deletions are written as new Parquet files. Nothing is rewritten: what a
//! window writes is its changes and its vectors, whatever the table's size.
//! Which rows are deleted and which changes written is [`super::decide`]'s:
//! the copy-on-write MERGE's rules, `order_by` and the memory of deletes
//! included. The commit engine carries the actions with the window's offsets.

use deltalake::DeltaTable;
use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::compute::filter_record_batch;
use deltalake::kernel::engine::arrow_conversion::TryIntoArrow as _;
use deltalake::kernel::{Action, Add};
use deltalake::logstore::object_store;
use deltalake::writer::DeltaWriter;
use object_store::ObjectStoreExt as _;

use super::decide::{Decision, decide};
use super::error::LocateError;
use super::index::KeyIndex;
use super::positions::{Located, locate};
use super::{DvError, replace, union, write_file};
use crate::decode::changes::Changes;
use crate::sink::upsert::MergePlan;

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

/// Write (the DV file and the new data files are uploaded; nothing is
/// committed) the merge-on-read of `plan`'s changes, reduced to one per key,
/// found through `index`.
pub async fn apply(
    table: &DeltaTable,
    index: &KeyIndex,
    plan: &MergePlan,
    now_ms: i64,
) -> Result<MergeOnRead, ApplyError> {
    let changes = &plan.changes;
    let keys = changes
        .rows
        .project(
            &plan
                .key
                .iter()
                .map(|k| changes.rows.schema().index_of(k))
                .collect::<Result<Vec<_>, _>>()
                .map_err(ApplyError::Changes)?,
        )
        .map_err(ApplyError::Changes)?;
    let located = locate(table, index, &keys, plan.order_by.as_deref()).await?;
    let decision = decide(plan, &located).map_err(ApplyError::Changes)?;
    let mut out = MergeOnRead {
        actions: Vec::new(),
        rows_deleted: 0,
        files_with_vectors: 0,
        rows_written: 0,
    };
    let touched: Vec<usize> = (0..located.files.len())
        .filter(|f| !decision.deletes[*f].is_empty())
        .collect();
    if !touched.is_empty() {
        out.actions = vectors(table, &located, &decision, &touched, now_ms).await?;
        out.files_with_vectors = touched.len() as u64;
        out.rows_deleted = touched
            .iter()
            .map(|f| decision.deletes[*f].len() as u64)
            .sum();
    }
    let rows = live_rows(table, changes, &decision.write)?;
    out.rows_written = rows.num_rows() as u64;
    if out.rows_written > 0 {
        let mut w = deltalake::writer::RecordBatchWriter::for_table(table)?
            .with_writer_properties(plan.parquet.clone().unwrap_or_default());
        w.write(rows).await?;
        out.actions
            .extend(w.flush().await?.into_iter().map(Action::Add));
    }
    Ok(out)
}

/// The DV file of the window (uploaded) and, per touched file, the `remove`
/// and `add` that give it its new vector: the union with the one it had.
async fn vectors(
    table: &DeltaTable,
    located: &Located,
    decision: &Decision,
    touched: &[usize],
    now_ms: i64,
) -> Result<Vec<Action>, ApplyError> {
    let paths: std::collections::HashSet<&str> = touched
        .iter()
        .map(|f| located.files[*f].path.as_str())
        .collect();
    #[allow(deprecated)] // the file as an Add: the commit needs the action
    let adds: std::collections::HashMap<String, Add> = table
        .snapshot()?
        .log_data()
        .iter()
        .filter(|f| paths.contains(f.path().as_ref()))
        .map(|f| (f.path().into_owned(), f.add_action()))
        .collect();
    let vectors: Vec<_> = touched
        .iter()
        .map(|f| {
            union(
                Some((*located.files[*f].deleted).clone()),
                decision.deletes[*f].iter().copied(),
            )
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
    let mut actions = Vec::with_capacity(touched.len() * 2);
    for ((f, v), d) in touched.iter().zip(&vectors).zip(file.descriptors) {
        let at = &located.files[*f];
        let add = adds.get(&at.path).ok_or_else(|| {
            ApplyError::Delta(Box::new(deltalake::DeltaTableError::Generic(format!(
                "data file {} left the table while its vector was written",
                at.path
            ))))
        })?;
        let (remove, add) = replace(add, d, v, at.keys.rows(), now_ms)?;
        actions.push(Action::Remove(remove));
        actions.push(Action::Add(add));
    }
    Ok(actions)
}

/// The changes to write, in the table's columns (a column the
/// changes lack is null).
fn live_rows(
    table: &DeltaTable,
    changes: &Changes,
    write: &deltalake::arrow::array::BooleanArray,
) -> Result<RecordBatch, ApplyError> {
    let rows = filter_record_batch(&changes.rows, write).map_err(ApplyError::Changes)?;
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
