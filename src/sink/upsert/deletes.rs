//! The memory of deleted keys of an upsert table with `order_by`: a deleted key
//! leaves no row, so no order value, and without a memory a change older than
//! the delete, arriving in a later window (a connector resending after a
//! restart, a replay), would insert the key again.
//!
//! The memory is a Delta table of its own beside the data, in the table's
//! directory (`_tributary_deletes/`: readers read only the files the data
//! table's log lists, and vacuum skips directories starting with `_`). Each
//! window appends, before its MERGE, one marker per key it deletes: the key,
//! the delete's order value (null for a delete without one, which clears what
//! came before), the window's sequence (the data table's version it was planned
//! at: a key lives in one partition, whose windows commit in order, so a later
//! window's markers have a greater one) and the time. The MERGE then inserts a
//! key only where its change is at least as new as the key's latest marker.
//! Writing markers first is safe: a marker whose MERGE never lands records a
//! delete the replay of its window applies again.
//!
//! Markers older than the horizon (`[table] delete_horizon`) are pruned, and
//! the memory's small files compacted, every [`PRUNE_EVERY`] windows: a change
//! older than a delete that arrives later than the horizon inserts the key
//! again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::{Duration, SystemTime};

use deltalake::arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, TimestampMicrosecondArray, UInt32Array,
};
use deltalake::arrow::compute::{concat_batches, take};
use deltalake::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use deltalake::arrow::row::{RowConverter, SortField};
use deltalake::datafusion::datasource::MemTable;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::StructField;
use deltalake::{DeltaTable, DeltaTableError};
use url::Url;

use crate::decode::changes::Changes;
use crate::sink::StorageConfig;

/// The directory of the memory inside the data table's.
pub const DIR: &str = "_tributary_deletes/";
/// The memory's own columns beside the key columns.
const ORDER: &str = "__tributary_order";
const SEQ: &str = "__tributary_seq";
const AT: &str = "__tributary_deleted_at";
/// Prune and compact the memory every this many windows that wrote to it.
pub const PRUNE_EVERY: u64 = 64;

/// An upsert table's memory of deleted keys; `Default` remembers nothing.
#[derive(Debug, Clone, Default)]
pub struct DeleteMemory {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    uri: Url,
    storage: StorageConfig,
    horizon: Duration,
    table: tokio::sync::Mutex<Option<DeltaTable>>,
    writes: AtomicU64,
}

/// What a window asks of the memory.
#[derive(Debug)]
pub struct Window<'a> {
    /// The key columns.
    pub key: &'a [String],
    /// The order column.
    pub order_by: &'a str,
    /// The window's reduced changes.
    pub changes: &'a Changes,
    /// The data table (its version and column types).
    pub table: &'a DeltaTable,
}

impl DeleteMemory {
    /// The memory of the table at `table_uri`, keeping markers for `horizon`.
    pub fn new(table_uri: &Url, storage: &StorageConfig, horizon: Duration) -> Self {
        let mut uri = table_uri.clone();
        if !uri.path().ends_with('/') {
            uri.set_path(&format!("{}/", uri.path()));
        }
        let uri = uri.join(DIR).unwrap_or(uri);
        Self {
            inner: Some(Arc::new(Inner {
                uri,
                storage: storage.clone(),
                horizon,
                table: tokio::sync::Mutex::new(None),
                writes: AtomicU64::new(0),
            })),
        }
    }

    /// Whether this memory remembers anything.
    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// Remember the window's deletes, then return, for each of its changes,
    /// the order value of its key's latest delete (null where there is none,
    /// or where the change deletes or replaces unconditionally); `None` when
    /// the memory is off or holds nothing.
    pub async fn remember_and_recall(
        &self,
        w: &Window<'_>,
        now: SystemTime,
    ) -> Result<Option<ArrayRef>, DeltaTableError> {
        let Some(inner) = &self.inner else {
            return Ok(None);
        };
        let mut guard = inner.table.lock().await;
        let latest = match inner.load(&mut guard).await? {
            Some(table) => recall(table, w).await?,
            None => none(w)?,
        };
        let seq = w.table.version().map_or(-1, |v| v as i64);
        let markers = markers(w.changes, w.key, w.order_by, &latest, seq, now)?;
        if markers.num_rows() > 0 {
            let table = inner.open_or_create(&mut guard, w, &markers).await?;
            *table = table.clone().write(vec![markers]).await?;
            if inner.writes.fetch_add(1, AtomicOrdering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
                inner.prune_logged(table, now).await;
            }
        }
        Ok(Some(latest))
    }

    /// Remove the markers older than the horizon at `now`, and compact the
    /// memory's files; the number of markers removed.
    pub async fn prune(&self, now: SystemTime) -> Result<u64, DeltaTableError> {
        let Some(inner) = &self.inner else {
            return Ok(0);
        };
        let mut guard = inner.table.lock().await;
        let Some(table) = inner.load(&mut guard).await? else {
            return Ok(0);
        };
        inner.prune(table, now).await
    }
}

impl Inner {
    /// The memory's table, loaded once (and again at each call, for the
    /// markers of the partition's previous owner).
    async fn load<'t>(
        &self,
        guard: &'t mut Option<DeltaTable>,
    ) -> Result<Option<&'t mut DeltaTable>, DeltaTableError> {
        match guard {
            Some(t) => t.update_state().await?,
            None => {
                let found = crate::sink::table::load(&self.uri, &self.storage)
                    .await
                    .map_err(|e| match e {
                        crate::sink::table::TableError::Delta { source, .. } => *source,
                        other => crate::fault::permanent(other),
                    })?;
                *guard = found;
            }
        }
        Ok(guard.as_mut())
    }

    async fn open_or_create<'t>(
        &self,
        guard: &'t mut Option<DeltaTable>,
        w: &Window<'_>,
        markers: &RecordBatch,
    ) -> Result<&'t mut DeltaTable, DeltaTableError> {
        if self.load(guard).await?.is_none() {
            let columns = markers
                .schema()
                .fields()
                .iter()
                .map(|f| {
                    let t = match f.name().as_str() {
                        SEQ => deltalake::kernel::DataType::LONG,
                        AT => deltalake::kernel::DataType::TIMESTAMP,
                        ORDER => column_type(w.table, w.order_by)?,
                        name => column_type(w.table, name)?,
                    };
                    Ok(StructField::new(f.name(), t, true))
                })
                .collect::<Result<Vec<_>, DeltaTableError>>()?;
            let created = deltalake::operations::create::CreateBuilder::new()
                .with_location(self.uri.as_str())
                .with_storage_options(self.storage.to_options())
                .with_columns(columns)
                .with_comment("tributary: the order values of deleted keys")
                .await;
            match created {
                Ok(t) => *guard = Some(t),
                // A replica created it first.
                Err(e) => {
                    if self.load(guard).await?.is_none() {
                        return Err(e);
                    }
                }
            }
        }
        guard
            .as_mut()
            .ok_or_else(|| crate::fault::permanent(MemoryError::NotCreated))
    }

    async fn prune_logged(&self, table: &mut DeltaTable, now: SystemTime) {
        match self.prune(table, now).await {
            Ok(n) => tracing::info!(memory = %self.uri, removed = n, "pruned the delete memory"),
            Err(e) => {
                tracing::warn!(memory = %self.uri, error = %e, "pruning the delete memory failed; next time")
            }
        }
    }

    async fn prune(&self, table: &mut DeltaTable, now: SystemTime) -> Result<u64, DeltaTableError> {
        let cutoff = micros(
            now.checked_sub(self.horizon)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        );
        let (t, metrics) = table
            .clone()
            .delete()
            .with_predicate(format!(
                "\"{AT}\" < arrow_cast({cutoff}, 'Timestamp(Microsecond, Some(\"UTC\"))')"
            ))
            .await?;
        *table = t;
        let (t, _) = table.clone().optimize().await?;
        *table = t;
        Ok(metrics.num_deleted_rows.unwrap_or_default() as u64)
    }
}

/// The Delta type of the data table's column `name`.
fn column_type(
    table: &DeltaTable,
    name: &str,
) -> Result<deltalake::kernel::DataType, DeltaTableError> {
    table
        .snapshot()?
        .schema()
        .field(name)
        .map(|f| f.data_type().clone())
        .ok_or_else(|| DeltaTableError::SchemaMismatch {
            msg: format!("the table has no column `{name}`"),
        })
}

/// The window's markers: for each delete, the key's order state after it
/// (its own order value, or the latest marker's when that is greater: an
/// older delete of an absent key changes nothing; none for a delete without
/// one or applied unconditionally); for each change that may insert a key
/// with a marker, a marker without an order value (the key's row holds its
/// order from then on). With the window's sequence and the time.
fn markers(
    c: &Changes,
    key: &[String],
    order_by: &str,
    latest: &ArrayRef,
    seq: i64,
    now: SystemTime,
) -> Result<RecordBatch, DeltaTableError> {
    let order = column(c, order_by)?;
    let older = deltalake::arrow::compute::kernels::cmp::lt(order, latest)?;
    let mut rows = Vec::new();
    let mut keep_latest = Vec::new();
    for i in 0..c.rows.num_rows() {
        let forced = c.is_unconditional(i);
        let older = older.is_valid(i) && older.value(i);
        if c.deleted.value(i) {
            rows.push(i as u32);
            keep_latest.push(Some(!forced && older));
        } else if latest.is_valid(i) && (forced || !older) {
            rows.push(i as u32);
            keep_latest.push(None);
        }
    }
    let n = rows.len();
    let rows = UInt32Array::from(rows);
    // The order value each marker holds: the delete's, the latest marker's,
    // or none (a reset).
    let own = take(order, &rows, None)?;
    let prior = take(latest, &rows, None)?;
    let use_prior = deltalake::arrow::array::BooleanArray::from(
        keep_latest
            .iter()
            .map(|k| Some(k.unwrap_or(false)))
            .collect::<Vec<_>>(),
    );
    let reset = deltalake::arrow::array::BooleanArray::from(
        keep_latest
            .iter()
            .map(|k| Some(k.is_none()))
            .collect::<Vec<_>>(),
    );
    let values = deltalake::arrow::compute::kernels::zip::zip(&use_prior, &prior, &own)?;
    let nulls = deltalake::arrow::array::new_null_array(order.data_type(), n);
    let values = deltalake::arrow::compute::kernels::zip::zip(&reset, &nulls, &values)?;
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for name in key {
        let col = column(c, name)?;
        fields.push(Field::new(name, col.data_type().clone(), true));
        columns.push(take(col, &rows, None)?);
    }
    fields.push(Field::new(ORDER, order.data_type().clone(), true));
    columns.push(values);
    fields.push(Field::new(SEQ, DataType::Int64, true));
    columns.push(Arc::new(Int64Array::from(vec![seq; n])));
    fields.push(Field::new(
        AT,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        true,
    ));
    columns.push(Arc::new(
        TimestampMicrosecondArray::from(vec![micros(now); n]).with_timezone("UTC"),
    ));
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

fn column<'c>(c: &'c Changes, name: &str) -> Result<&'c ArrayRef, DeltaTableError> {
    c.rows.column_by_name(name).ok_or_else(|| {
        crate::fault::permanent(crate::decode::changes::ChangesError::MissingColumn {
            column: name.to_owned(),
        })
    })
}

/// No marker for any change.
fn none(w: &Window<'_>) -> Result<ArrayRef, DeltaTableError> {
    let order = column(w.changes, w.order_by)?;
    Ok(deltalake::arrow::array::new_null_array(
        order.data_type(),
        w.changes.rows.num_rows(),
    ))
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// For each change, its key's latest marker's order value (null where it has
/// no marker, or one without an order value).
async fn recall(table: &DeltaTable, w: &Window<'_>) -> Result<ArrayRef, DeltaTableError> {
    let c = w.changes;
    let order = column(c, w.order_by)?;
    if c.rows.num_rows() == 0 {
        return none(w);
    }
    let key_cols: Vec<ArrayRef> = w
        .key
        .iter()
        .map(|k| column(c, k).cloned())
        .collect::<Result<_, _>>()?;
    let fields: Vec<Field> = w
        .key
        .iter()
        .zip(&key_cols)
        .map(|(k, col)| Field::new(k, col.data_type().clone(), true))
        .collect();
    let keys = RecordBatch::try_new(Arc::new(Schema::new(fields)), key_cols.clone())?;
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state())?;
    ctx.register_table("m", table.table_provider().await?)?;
    ctx.register_table(
        "k",
        Arc::new(MemTable::try_new(keys.schema(), vec![vec![keys]])?),
    )?;
    let q = |k: &String| format!("\"{}\"", k.replace('"', "\"\""));
    let on = w
        .key
        .iter()
        .map(|k| format!("m.{0} = k.{0}", q(k)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let select = w
        .key
        .iter()
        .map(|k| format!("m.{}", q(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("SELECT {select}, m.\"{ORDER}\", m.\"{SEQ}\" FROM m JOIN k ON {on}");
    let found = ctx.sql(&sql).await?.collect().await?;
    let schema = match found.first() {
        Some(b) => b.schema(),
        None => return none(w),
    };
    let found = concat_batches(&schema, &found)?;
    latest(&found, &key_cols, order.data_type())
}

/// For each change (its key columns `key_cols`), the order value of the
/// latest (greatest sequence) of the `found` markers of its key.
fn latest(
    found: &RecordBatch,
    key_cols: &[ArrayRef],
    order_type: &DataType,
) -> Result<ArrayRef, DeltaTableError> {
    let nk = key_cols.len();
    let fields: Vec<SortField> = key_cols
        .iter()
        .map(|c| SortField::new(c.data_type().clone()))
        .collect();
    let conv = RowConverter::new(fields)?;
    let found_keys: Vec<ArrayRef> = (0..nk)
        .map(|i| cast_like(found.column(i), key_cols[i].data_type()))
        .collect::<Result<_, _>>()?;
    let found_rows = conv.convert_columns(&found_keys)?;
    let seqs = deltalake::arrow::compute::cast(found.column(nk + 1), &DataType::Int64)?;
    let seqs = seqs
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| crate::fault::permanent(MemoryError::NotASequence))?;
    let mut latest: HashMap<_, (i64, u32)> = HashMap::new();
    for i in 0..found.num_rows() {
        let s = seqs.value(i);
        let e = latest.entry(found_rows.row(i)).or_insert((s, i as u32));
        if s >= e.0 {
            *e = (s, i as u32);
        }
    }
    let ask_rows = conv.convert_columns(key_cols)?;
    let pick: Vec<Option<u32>> = (0..ask_rows.num_rows())
        .map(|j| latest.get(&ask_rows.row(j)).map(|(_, r)| *r))
        .collect();
    let orders = cast_like(found.column(nk), order_type)?;
    Ok(take(&orders, &UInt32Array::from(pick), None)?)
}

/// `c` as `t` (DataFusion may read strings as views).
fn cast_like(c: &ArrayRef, t: &DataType) -> Result<ArrayRef, DeltaTableError> {
    if c.data_type() == t {
        return Ok(c.clone());
    }
    Ok(deltalake::arrow::compute::cast(c, t)?)
}

/// A memory of deletes that cannot be used.
#[derive(Debug, thiserror::Error)]
enum MemoryError {
    /// The memory's table was neither found nor created.
    #[error("the memory of deletes was not created")]
    NotCreated,
    /// Its marker column is not a sequence of numbers.
    #[error("the memory of deletes holds a marker sequence that is not a number")]
    NotASequence,
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{AsArray, BooleanArray, StringArray};
    use deltalake::arrow::datatypes::Int64Type;

    /// (id, deletes, lsn) changes, some unconditional.
    fn changes(c: &[(&str, bool, Option<i64>, bool)]) -> Changes {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("lsn", DataType::Int64, true),
        ]));
        let rows = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(c.iter().map(|c| c.0))),
                Arc::new(Int64Array::from_iter(c.iter().map(|c| c.2))),
            ],
        )
        .unwrap();
        let mut out = Changes::new(rows, c.iter().map(|c| Some(c.1)).collect());
        out.unconditional = Some(c.iter().map(|c| Some(c.3)).collect::<BooleanArray>());
        out
    }

    /// The key's order state after each delete, as the fold of its changes
    /// keeps it; a reset where an insert takes a remembered key back.
    #[test]
    fn markers_keep_the_order_state_a_key_is_left_in() {
        let c = changes(&[
            ("a", true, Some(50), false),  // newer than its marker 40: 50
            ("b", true, Some(30), false),  // older than its marker 40: stays 40
            ("c", true, Some(30), true),   // unconditional: 30
            ("d", true, None, false),      // no order value: none
            ("e", false, Some(45), false), // takes a key deleted at 40 back: reset
            ("f", false, Some(35), false), // older than its delete at 40: nothing
            ("g", false, Some(10), false), // no marker: nothing
        ]);
        let latest: ArrayRef = Arc::new(Int64Array::from(vec![
            Some(40),
            Some(40),
            Some(40),
            Some(40),
            Some(40),
            Some(40),
            None,
        ]));
        let key = ["id".to_owned()];
        let m = markers(&c, &key, "lsn", &latest, 7, SystemTime::now()).unwrap();
        let ids: Vec<&str> = m.column(0).as_string::<i32>().iter().flatten().collect();
        assert_eq!(ids, ["a", "b", "c", "d", "e"]);
        let orders = m.column(1).as_primitive::<Int64Type>();
        let orders: Vec<Option<i64>> = orders.iter().collect();
        assert_eq!(orders, [Some(50), Some(40), Some(30), None, None]);
        assert!(
            m.column(2)
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .all(|s| *s == 7)
        );
    }
}
