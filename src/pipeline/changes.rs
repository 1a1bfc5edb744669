//! Upsert tables: a segment's decoded rows and tombstones become keyed changes
//! in the window, in offset order; a change without a key is rejected.
//!
//! A tombstone (a record with no value) deletes its key when the key is the
//! Kafka key (every key column a metadata column): its row holds the metadata
//! columns and nulls. With a key from the value, a tombstone cannot name what it
//! deletes and stays rejected (`empty`), as in an append table.

use std::sync::Arc;

use deltalake::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, new_null_array};
use deltalake::arrow::compute::{filter_record_batch, interleave_record_batch};
use deltalake::arrow::datatypes::{Field, Schema, SchemaRef};
use deltalake::arrow::error::ArrowError;

use super::Pipeline;
use super::error::PipelineError;
use crate::decode::changes::Changes;
use crate::decode::{Decoded, RejectKind, Rejected, append_metadata};
use crate::record::RecordChunk;
use crate::schema::TableSchema;

/// The decoder of Debezium change events for a table of `schema`: its record
/// fields inside `before`/`after` (or a `payload`), the metadata columns beside.
pub(super) fn envelope_decoder(
    schema: &TableSchema,
    batch_size: usize,
) -> Result<crate::decode::JsonDecoder, PipelineError> {
    let record = deltalake::kernel::StructType::try_new(
        schema
            .delta
            .fields()
            .filter(|f| {
                !schema.metadata.names().any(|m| m == f.name())
                    && !schema.derived.iter().any(|d| d == f.name())
            })
            .cloned(),
    )
    .map_err(|e| {
        PipelineError::Decode(crate::decode::DecodeError::Schema(ArrowError::SchemaError(
            e.to_string(),
        )))
    })?;
    let envelope = crate::decode::debezium::envelope_record(&record)
        .map_err(|e| PipelineError::Decode(crate::decode::DecodeError::Schema(e)))?;
    let table = TableSchema::new(&envelope, &schema.metadata).map_err(|e| {
        PipelineError::Decode(crate::decode::DecodeError::Schema(ArrowError::SchemaError(
            e.to_string(),
        )))
    })?;
    Ok(crate::decode::JsonDecoder::new(table, batch_size)?)
}

/// A Debezium table's decoder of change events, (re)built for the table's
/// current schema.
pub(super) fn sink_envelope_decoder(
    s: &mut super::Sink,
    batch_size: usize,
) -> Result<&mut crate::decode::JsonDecoder, PipelineError> {
    let schema = s.decoder.schema();
    if s.envelope
        .as_ref()
        .is_none_or(|(built, _)| *built != schema.delta)
    {
        let decoder = envelope_decoder(schema, batch_size)?;
        s.envelope = Some((schema.delta.clone(), decoder));
    }
    let (_, decoder) = s.envelope.as_mut().expect("just built");
    Ok(decoder)
}

impl Pipeline {
    /// For an upsert table: take the segment's rows and tombstones out of
    /// `decoded` as changes (rows whose key has a null become rejections).
    /// `None` for an append table.
    pub(super) fn take_changes(
        &self,
        sink: usize,
        chunk: &RecordChunk,
        decoded: &mut Decoded,
    ) -> Result<Option<Changes>, PipelineError> {
        let s = &self.sinks[sink];
        let Some(spec) = &s.tcfg.upsert else {
            return Ok(None);
        };
        let schema = s.decoder.schema();
        let arrow_err = |e: ArrowError| PipelineError::Write {
            uri: s.uri(),
            source: Box::new(e.into()),
        };
        let combined = if spec.debezium {
            debezium_rows(schema, decoded)
        } else {
            keyed_rows(schema, &spec.key, chunk, decoded)
        };
        let Some((combined, indices, deleted)) = combined.map_err(arrow_err)? else {
            return Ok(None);
        };
        let (changes, keyless) = keep_keyed(&spec.key, combined, deleted).map_err(arrow_err)?;
        decoded
            .rejected
            .extend(keyless.into_iter().map(|(row, column)| Rejected {
                index: indices[row],
                kind: RejectKind::Decode,
                reason: format!("upsert key column `{column}` is null"),
            }));
        decoded.rejected.sort_by_key(|r| r.index);
        Ok((changes.rows.num_rows() > 0).then_some(changes))
    }
}

/// Rows: the segment's decoded rows and, keyed by the Kafka key, its tombstones
/// (deletions), in chunk order; with the chunk index of each and which delete.
type Rows = Option<(RecordBatch, Vec<usize>, Vec<bool>)>;

fn keyed_rows(
    schema: &TableSchema,
    key: &[String],
    chunk: &RecordChunk,
    decoded: &mut Decoded,
) -> Result<Rows, ArrowError> {
    let by_kafka_key = key.iter().all(|k| schema.metadata.names().any(|m| m == k));
    let tombstones: Vec<usize> = if by_kafka_key {
        let t: Vec<usize> = decoded
            .rejected
            .iter()
            .filter(|r| r.kind == RejectKind::Empty)
            .map(|r| r.index)
            .collect();
        decoded.rejected.retain(|r| r.kind != RejectKind::Empty);
        t
    } else {
        Vec::new()
    };
    let rows = decoded.batch.take();
    let row_indices = std::mem::take(&mut decoded.rows);
    if rows.is_none() && tombstones.is_empty() {
        return Ok(None);
    }
    let target = nullable(rows.as_ref().map_or(&schema.arrow, |b| b.schema_ref()));
    combine(schema, &target, chunk, rows, &row_indices, &tombstones).map(Some)
}

/// Debezium change events: `after` or `before` per op, the events that cannot
/// be applied rejected with why. The tombstone Debezium sends after a delete is
/// accounted for and nothing else (the delete event did the work).
fn debezium_rows(schema: &TableSchema, decoded: &mut Decoded) -> Result<Rows, ArrowError> {
    decoded.rejected.retain(|r| r.kind != RejectKind::Empty);
    let Some(batch) = decoded.batch.take() else {
        return Ok(None);
    };
    let row_indices = std::mem::take(&mut decoded.rows);
    let flat = crate::decode::debezium::envelopes(&batch, &[])?;
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
fn conform(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch, ArrowError> {
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
    RecordBatch::try_new(target.clone(), columns)
}

/// The decoded rows and the tombstones' deletion rows, interleaved in chunk
/// order: the rows, the chunk index of each, and which delete.
fn combine(
    schema: &TableSchema,
    target: &SchemaRef,
    chunk: &RecordChunk,
    rows: Option<RecordBatch>,
    row_indices: &[usize],
    tombstones: &[usize],
) -> Result<(RecordBatch, Vec<usize>, Vec<bool>), ArrowError> {
    let rows = match rows {
        Some(b) => conform(&b, target)?,
        None => RecordBatch::new_empty(target.clone()),
    };
    let values = RecordBatch::try_new_with_options(
        nullable(&schema.record_arrow),
        schema
            .record_arrow
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), tombstones.len()))
            .collect(),
        &deltalake::arrow::array::RecordBatchOptions::new().with_row_count(Some(tombstones.len())),
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
            deleted.push(false);
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
) -> Result<(Changes, Vec<(usize, String)>), ArrowError> {
    let mut keyless = Vec::new();
    let mut keep = vec![true; rows.num_rows()];
    for k in key {
        let c = rows
            .column_by_name(k)
            .ok_or_else(|| ArrowError::SchemaError(format!("key column `{k}` is not decoded")))?;
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
        Changes {
            rows: filter_record_batch(&rows, &mask)?,
            deleted: BooleanArray::from(deleted),
        },
        keyless,
    ))
}
