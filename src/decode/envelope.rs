//! An upsert table's envelope: how a decoded segment (keyed records, or change
//! events, see [`super::debezium`]) becomes [`Changes`] in offset order; a
//! change without a key is rejected.
//!
//! A tombstone (a record with no value) deletes its key when the key is the
//! Kafka key (every key column a metadata column): its row holds the metadata
//! columns and nulls. With a key from the value, a tombstone cannot name what it
//! deletes and stays rejected (`empty`), as in an append table.

use std::sync::Arc;

use deltalake::arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions, new_null_array,
};
use deltalake::arrow::compute::{filter_record_batch, interleave_record_batch};
use deltalake::arrow::datatypes::{Field, Schema, SchemaRef};
use deltalake::arrow::error::ArrowError;

use super::{DecodeError, Decoded, JsonDecoder, RejectKind, Rejected, append_metadata};
use crate::record::RecordChunk;
use crate::schema::TableSchema;

use super::changes::{Changes, ChangesError};
pub use super::tombstones::LastDeletes;

/// What an upsert table's records hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Envelope {
    /// Rows: each record is its key's new row; a tombstone deletes the Kafka key.
    #[default]
    Rows,
    /// Debezium change events (`before`, `after`, `op`).
    Debezium,
    /// Rows flattened by Debezium's `ExtractNewRecordState`: the row, and
    /// `__deleted` (`"true"`) or `__op` (`d`) marking deletions.
    DebeziumFlattened,
}

/// How an upsert table's records become changes.
#[derive(Debug, Clone, Copy)]
pub struct Keying<'a> {
    /// The key columns.
    pub key: &'a [String],
    /// What the records hold.
    pub envelope: Envelope,
    /// Debezium: the `source` field kept for `order_by` (in the column
    /// [`super::debezium::source_column`] names).
    pub source_order: Option<&'a str>,
}

/// Take the segment's rows and tombstones out of `decoded` as changes, with the
/// chunk index of each; rows whose key has a null become rejections in
/// `decoded`. `None` when nothing is left to change.
pub fn take(
    schema: &TableSchema,
    keying: Keying<'_>,
    chunk: &RecordChunk,
    decoded: &mut Decoded,
    last_deletes: &mut LastDeletes,
) -> Result<Option<(Changes, Vec<usize>)>, ChangesError> {
    let combined = match keying.envelope {
        Envelope::Rows => keyed_rows(schema, keying.key, chunk, decoded, None)?,
        Envelope::DebeziumFlattened => {
            keyed_rows(schema, keying.key, chunk, decoded, Some(last_deletes))?
        }
        Envelope::Debezium => {
            let by_kafka_key = keying
                .key
                .iter()
                .all(|k| schema.metadata.names().any(|m| m == k));
            debezium_rows(schema, decoded, keying.source_order, by_kafka_key)?
        }
    };
    let Some((combined, indices, deleted)) = combined else {
        return Ok(None);
    };
    let (changes, keyless) = keep_keyed(keying.key, combined, deleted)?;
    let bad: std::collections::HashSet<usize> = keyless.iter().map(|(row, _)| *row).collect();
    let kept: Vec<usize> = (0..indices.len())
        .filter(|r| !bad.contains(r))
        .map(|r| indices[r])
        .collect();
    decoded
        .rejected
        .extend(keyless.into_iter().map(|(row, column)| Rejected {
            index: indices[row],
            kind: RejectKind::Decode,
            reason: format!("upsert key column `{column}` is null"),
        }));
    decoded.rejected.sort_by_key(|r| r.index);
    Ok((changes.rows.num_rows() > 0).then_some((changes, kept)))
}

impl Envelope {
    /// The table's record fields in a producer's (registry) schema of records
    /// that hold this envelope; the reason when the schema does not hold it.
    pub fn rows_of(
        self,
        producer: &deltalake::kernel::StructType,
    ) -> Result<deltalake::kernel::StructType, super::Reason> {
        match self {
            Envelope::Rows => Ok(producer.clone()),
            Envelope::Debezium => super::debezium::row_fields(producer),
            Envelope::DebeziumFlattened => super::debezium::flattened_row_fields(producer),
        }
    }
}

/// What an envelope's records decode into for a table of `schema` (`None` for
/// rows, which decode into the table's own columns): Debezium's `before`/`after`
/// holding the table's record fields (or a `payload` holding them), or the
/// flattened row with its `__deleted` and `__op`; the metadata columns beside.
pub fn envelope_schema(
    schema: &TableSchema,
    envelope: Envelope,
    source_order: Option<&str>,
) -> Result<Option<TableSchema>, DecodeError> {
    let source: Vec<&str> = source_order.into_iter().collect();
    let kept: Vec<String> = source
        .iter()
        .map(|f| super::debezium::source_column(f))
        .collect();
    let record_fields = schema.delta.fields().filter(|f| {
        !schema.metadata.names().any(|m| m == f.name())
            && !schema.derived.iter().any(|d| d == f.name())
            && !kept.contains(f.name())
    });
    let decoded = match envelope {
        Envelope::Rows => return Ok(None),
        Envelope::Debezium => {
            let record = deltalake::kernel::StructType::try_new(record_fields.cloned())
                .map_err(|e| DecodeError::Envelope(ChangesError::EnvelopeSchema(Box::new(e))))?;
            super::debezium::envelope_record(&record, &source).map_err(DecodeError::Envelope)?
        }
        Envelope::DebeziumFlattened => {
            let markers = ["__deleted", "__op"].map(|m| {
                deltalake::kernel::StructField::new(m, deltalake::kernel::DataType::STRING, true)
            });
            deltalake::kernel::StructType::try_new(record_fields.cloned().chain(markers))
                .map_err(|e| DecodeError::Envelope(ChangesError::EnvelopeSchema(Box::new(e))))?
        }
    };
    TableSchema::new(&decoded, &schema.metadata)
        .map(Some)
        .map_err(|e| DecodeError::Envelope(ChangesError::EnvelopeSchema(Box::new(e))))
}

/// The JSON decoder of an envelope's records for a table of `schema` (`None`
/// for rows, which the table's own decoder reads); see [`envelope_schema`].
pub fn envelope_decoder(
    schema: &TableSchema,
    keying: Keying<'_>,
    batch_size: usize,
) -> Result<Option<JsonDecoder>, DecodeError> {
    envelope_schema(schema, keying.envelope, keying.source_order)?
        .map(|table| JsonDecoder::new(table, batch_size))
        .transpose()
}

/// Rows: the segment's decoded rows and, keyed by the Kafka key, its tombstones
/// (deletions), in chunk order; with the chunk index of each and which delete.
type Rows = Option<(RecordBatch, Vec<usize>, Vec<bool>)>;

/// Rows (flattened: with their deletion markers) and tombstones. Keyed by the
/// Kafka key, a tombstone deletes it. Keyed by record fields a tombstone names
/// no key and is rejected (`empty`) as in an append table, except for flattened
/// Debezium rows, where [`super::tombstones`] keys it by its Kafka key, accounts
/// for Debezium's own after a delete, and rejects the rest with the reason.
fn keyed_rows(
    schema: &TableSchema,
    key: &[String],
    chunk: &RecordChunk,
    decoded: &mut Decoded,
    flattened: Option<&mut LastDeletes>,
) -> Result<Rows, ChangesError> {
    let by_kafka_key = key.iter().all(|k| schema.metadata.names().any(|m| m == k));
    let rows = decoded.batch.take();
    let row_indices = std::mem::take(&mut decoded.rows);
    let (rows, row_deleted) = match rows {
        Some(b) if flattened.is_some() => {
            let c = super::debezium::flattened(&b)?;
            let deleted = c.deleted.iter().map(|d| d == Some(true)).collect();
            (Some(c.rows), deleted)
        }
        Some(b) => {
            let n = b.num_rows();
            (Some(b), vec![false; n])
        }
        None => (None, Vec::new()),
    };
    let empties: Vec<usize> = decoded
        .rejected
        .iter()
        .filter(|r| r.kind == RejectKind::Empty)
        .map(|r| r.index)
        .collect();
    // Keyed by the Kafka key a tombstone names its key itself: nothing to follow.
    let after = flattened
        .filter(|_| !by_kafka_key)
        .map(|carry| carry.follow(chunk, &row_indices, &row_deleted));
    let (tombstones, tomb_keys) = match after {
        _ if by_kafka_key => {
            decoded.rejected.retain(|r| r.kind != RejectKind::Empty);
            (empties, None)
        }
        Some(after) if !empties.is_empty() => {
            let (tombstones, keys) =
                super::tombstones::flattened(schema, key, chunk, decoded, &empties, &after)?;
            (tombstones, Some(keys))
        }
        _ => (Vec::new(), None),
    };
    if rows.is_none() && tombstones.is_empty() {
        return Ok(None);
    }
    let target = nullable(rows.as_ref().map_or(&schema.arrow, |b| b.schema_ref()));
    let rows = Deletions {
        rows,
        row_indices: &row_indices,
        row_deleted: &row_deleted,
        tombstones: &tombstones,
        tomb_keys,
    };
    combine(schema, &target, chunk, rows).map(Some)
}

/// Debezium change events: `after` or `before` per op, the events that cannot
/// be applied rejected with why. The tombstone Debezium sends after a delete is
/// accounted for and nothing else (the delete event did the work). Keyed by
/// the Kafka key, a delete needs no `before` row.
fn debezium_rows(
    schema: &TableSchema,
    decoded: &mut Decoded,
    source_order: Option<&str>,
    by_kafka_key: bool,
) -> Result<Rows, ChangesError> {
    decoded.rejected.retain(|r| r.kind != RejectKind::Empty);
    let Some(batch) = decoded.batch.take() else {
        return Ok(None);
    };
    let row_indices = std::mem::take(&mut decoded.rows);
    let source: Vec<&str> = source_order.into_iter().collect();
    let flat = super::debezium::envelopes(&batch, &source, by_kafka_key)?;
    let bad: std::collections::HashSet<usize> = flat.rejected.iter().map(|(r, _)| *r).collect();
    decoded
        .rejected
        .extend(flat.rejected.into_iter().map(|(r, reason)| Rejected {
            index: row_indices[r],
            kind: RejectKind::Decode,
            reason,
        }));
    let indices: Vec<usize> = row_indices
        .iter()
        .enumerate()
        .filter(|(r, _)| !bad.contains(r))
        .map(|(_, i)| *i)
        .collect();
    let rows = conform(&flat.changes.rows, &nullable(&schema.arrow))?;
    let deleted = flat
        .changes
        .deleted
        .iter()
        .map(|d| d == Some(true))
        .collect();
    Ok(Some((rows, indices, deleted)))
}

/// `schema` with every field nullable: the rows of a window's changes (a
/// deletion's non-key columns are null).
fn nullable(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<Field>>(),
    ))
}

/// `batch`'s columns by name in `target`'s order, nulls where it has none.
fn conform(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch, ChangesError> {
    let columns: Vec<ArrayRef> = target
        .fields()
        .iter()
        .map(|f| {
            batch
                .column_by_name(f.name())
                .cloned()
                .unwrap_or_else(|| new_null_array(f.data_type(), batch.num_rows()))
        })
        .collect();
    Ok(RecordBatch::try_new(target.clone(), columns)?)
}

/// The decoded rows and the tombstones' deletion rows, interleaved in chunk
/// order: the rows, the chunk index of each, and which delete.
/// A segment's rows (and which of them delete) and its tombstones.
struct Deletions<'a> {
    rows: Option<RecordBatch>,
    row_indices: &'a [usize],
    row_deleted: &'a [bool],
    tombstones: &'a [usize],
    /// The tombstones' key columns that come from the value (read from their
    /// Kafka keys), one row per tombstone.
    tomb_keys: Option<RecordBatch>,
}

fn combine(
    schema: &TableSchema,
    target: &SchemaRef,
    chunk: &RecordChunk,
    d: Deletions<'_>,
) -> Result<(RecordBatch, Vec<usize>, Vec<bool>), ChangesError> {
    let (row_indices, tombstones) = (d.row_indices, d.tombstones);
    let rows = match d.rows {
        Some(b) => conform(&b, target)?,
        None => RecordBatch::new_empty(target.clone()),
    };
    let values = RecordBatch::try_new_with_options(
        nullable(&schema.record_arrow),
        schema
            .record_arrow
            .fields()
            .iter()
            .map(|f| {
                d.tomb_keys
                    .as_ref()
                    .and_then(|k| k.column_by_name(f.name()))
                    .cloned()
                    .unwrap_or_else(|| new_null_array(f.data_type(), tombstones.len()))
            })
            .collect(),
        &RecordBatchOptions::new().with_row_count(Some(tombstones.len())),
    )?;
    // The metadata columns of the tombstones, in a table schema whose columns
    // may be null (a deletion has no values).
    let mut loose = schema.clone();
    loose.decoded_arrow = nullable(&schema.decoded_arrow);
    let tombs = append_metadata(&loose, values, chunk, tombstones)
        .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
    let tombs = conform(&tombs, target)?;
    // Both sides are in chunk order: merge them.
    let (mut i, mut j) = (0, 0);
    let mut order = Vec::with_capacity(row_indices.len() + tombstones.len());
    let (mut indices, mut deleted) = (Vec::new(), Vec::new());
    while i < row_indices.len() || j < tombstones.len() {
        if j == tombstones.len() || (i < row_indices.len() && row_indices[i] < tombstones[j]) {
            order.push((0, i));
            indices.push(row_indices[i]);
            deleted.push(d.row_deleted[i]);
            i += 1;
        } else {
            order.push((1, j));
            indices.push(tombstones[j]);
            deleted.push(true);
            j += 1;
        }
    }
    let combined = interleave_record_batch(&[&rows, &tombs], &order)?;
    Ok((combined, indices, deleted))
}

/// The changes whose key columns all have a value, and the (row, column) of
/// each that has not.
fn keep_keyed(
    key: &[String],
    rows: RecordBatch,
    deleted: Vec<bool>,
) -> Result<(Changes, Vec<(usize, String)>), ChangesError> {
    let mut keyless = Vec::new();
    let mut keep = vec![true; rows.num_rows()];
    for k in key {
        let c = rows
            .column_by_name(k)
            .ok_or_else(|| ChangesError::MissingColumn { column: k.clone() })?;
        for (row, kept) in keep.iter_mut().enumerate() {
            if *kept && c.is_null(row) {
                *kept = false;
                keyless.push((row, k.clone()));
            }
        }
    }
    let mask = BooleanArray::from(keep.clone());
    let deleted: Vec<bool> = deleted
        .into_iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(d, _)| d)
        .collect();
    Ok((
        Changes::new(
            filter_record_batch(&rows, &mask)?,
            BooleanArray::from(deleted),
        ),
        keyless,
    ))
}
