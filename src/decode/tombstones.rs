//! Tombstones of an upsert table keyed by record fields (Debezium rows flattened
//! by `ExtractNewRecordState`): a tombstone has no value to take the key from.
//!
//! Debezium keys its records by the row's primary key, so a tombstone's Kafka
//! key names what it deletes: a JSON key (`{"id": 1}`, or the JSON converter's
//! `{"schema": .., "payload": {"id": 1}}`) holding every key column that comes
//! from the value makes it a deletion of that key. Otherwise a tombstone right
//! after a flattened delete of its partition is Debezium's own (the delete row
//! did the work: it is only accounted for), and any other cannot be keyed: it is
//! rejected with the reason, never dropped.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::arrow::array::{RecordBatch, UInt32Array, new_null_array};
use deltalake::arrow::compute::{concat_batches, take_record_batch};
use deltalake::arrow::datatypes::{Field, Schema, SchemaRef};
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::json::ReaderBuilder;

use super::{Decoded, RejectKind};
use crate::record::{RecordChunk, TopicPartition};
use crate::schema::TableSchema;

/// Whether the last record read of each partition was a flattened delete, and
/// its offset. Debezium sends its tombstone right after the delete row, and the
/// two often arrive in different chunks: this carries the answer from one chunk
/// to the next. A record whose offset does not follow the carried one (after a
/// seek or a rewind) is judged by its own chunk alone.
#[derive(Debug, Default)]
pub struct LastDeletes(HashMap<TopicPartition, (i64, bool)>);

impl LastDeletes {
    /// Whether each record of `chunk` follows a flattened delete of its
    /// partition (`row_deleted` of the rows at `row_indices`), remembering each
    /// partition's last record for the next chunk.
    pub(super) fn follow(
        &mut self,
        chunk: &RecordChunk,
        row_indices: &[usize],
        row_deleted: &[bool],
    ) -> Vec<bool> {
        let mut after = vec![false; chunk.records.len()];
        let mut last: HashMap<u32, (i64, bool)> = HashMap::new();
        let mut rows = row_indices.iter().zip(row_deleted).peekable();
        for (i, r) in chunk.records.iter().enumerate() {
            after[i] = match last.get(&r.part) {
                Some(&(_, deleted)) => deleted,
                None => chunk.partitions.get(r.part as usize).is_some_and(|p| {
                    self.0
                        .get(&p.tp)
                        .is_some_and(|&(o, deleted)| deleted && o + 1 == r.offset)
                }),
            };
            let deleted = match rows.peek().copied() {
                Some((&ri, &d)) if ri == i => {
                    rows.next();
                    d
                }
                _ => false,
            };
            last.insert(r.part, (r.offset, deleted));
        }
        for (part, v) in last {
            if let Some(p) = chunk.partitions.get(part as usize) {
                self.0.insert(p.tp.clone(), v);
            }
        }
        after
    }
}

/// Flattened rows keyed by record fields: the tombstones (`empties`) keyed by
/// their Kafka key, with their key columns; Debezium's own after a delete
/// (`after`, from [`LastDeletes::follow`]) are taken out of the rejections, and
/// the rest keep theirs, with the reason.
pub(super) fn flattened(
    schema: &TableSchema,
    key: &[String],
    chunk: &RecordChunk,
    decoded: &mut Decoded,
    empties: &[usize],
    after: &[bool],
) -> Result<(Vec<usize>, RecordBatch), ArrowError> {
    let from_value: Vec<Field> = key
        .iter()
        .filter_map(|k| schema.record_arrow.field_with_name(k).ok().cloned())
        .collect();
    let fields: SchemaRef = Arc::new(Schema::new(from_value));
    let (keys, fates) = key_tombstones(&fields, chunk, empties, |i| after[i])?;
    let names: Vec<String> = fields.fields().iter().map(|f| f.name().clone()).collect();
    let reason = unkeyed_reason(&names);
    let fate: HashMap<usize, Fate> = empties.iter().copied().zip(fates.iter().copied()).collect();
    decoded.rejected.retain_mut(|r| {
        if r.kind != RejectKind::Empty {
            return true;
        }
        match fate.get(&r.index) {
            Some(Fate::Unkeyed) => {
                r.reason = reason.clone();
                true
            }
            _ => false,
        }
    });
    let keyed: Vec<u32> = (0..empties.len())
        .filter(|&j| fates[j] == Fate::Keyed)
        .map(|j| j as u32)
        .collect();
    let tombstones = keyed.iter().map(|&j| empties[j as usize]).collect();
    let keys = take_record_batch(&keys, &UInt32Array::from(keyed))?;
    Ok((tombstones, keys))
}

/// What becomes of each tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fate {
    /// Its Kafka key names the key: a deletion.
    Keyed,
    /// Debezium's tombstone after a delete row of its partition: accounted for.
    AfterDelete,
    /// Nothing names its key: rejected.
    Unkeyed,
}

/// The reason an unkeyed tombstone is rejected with.
pub(super) fn unkeyed_reason(fields: &[String]) -> String {
    format!(
        "a tombstone cannot be keyed: the key ({}) comes from the value, and the record's Kafka \
         key is not a JSON object holding it; have Debezium send deletes as rows \
         (delete.handling.mode=rewrite, or delete.tombstone.handling.mode=rewrite-with-tombstone) \
         or key the table by the Kafka key",
        fields.join(", ")
    )
}

/// The key columns of each tombstone `indices` of `chunk` (in `fields`, the
/// key columns that come from the value), read from its Kafka key, and what
/// becomes of it; `after_delete(i)` tells whether record `i` follows a
/// flattened delete of its partition.
pub(super) fn key_tombstones(
    fields: &SchemaRef,
    chunk: &RecordChunk,
    indices: &[usize],
    after_delete: impl Fn(usize) -> bool,
) -> Result<(RecordBatch, Vec<Fate>), ArrowError> {
    let nullable: SchemaRef = Arc::new(Schema::new(
        fields
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<Field>>(),
    ));
    let mut decoder = ReaderBuilder::new(nullable.clone()).build_decoder()?;
    let mut rows = Vec::with_capacity(indices.len());
    let mut fates = Vec::with_capacity(indices.len());
    for &i in indices {
        let key = chunk.key(&chunk.records[i]);
        let row = match key.and_then(|k| key_object(k, fields)) {
            Some(line) => decode_one(&mut decoder, &line)?,
            None => None,
        };
        match row {
            Some(r) => {
                rows.push(r);
                fates.push(Fate::Keyed);
            }
            None => {
                rows.push(null_row(&nullable)?);
                fates.push(if after_delete(i) {
                    Fate::AfterDelete
                } else {
                    Fate::Unkeyed
                });
            }
        }
    }
    let batch = if rows.is_empty() {
        RecordBatch::new_empty(nullable)
    } else {
        concat_batches(&nullable, &rows)?
    };
    Ok((batch, fates))
}

/// The key's JSON object holding every field of `fields` with a value (the
/// JSON converter's `payload` when it embeds its schema), as one JSON line.
fn key_object(key: &[u8], fields: &SchemaRef) -> Option<Vec<u8>> {
    let v: serde_json::Value = serde_json::from_slice(key).ok()?;
    let o = match v.get("payload") {
        Some(p) if v.get("schema").is_some() => p.as_object()?,
        _ => v.as_object()?,
    };
    let mut kept = serde_json::Map::new();
    for f in fields.fields() {
        let value = o.get(f.name()).filter(|v| !v.is_null())?;
        kept.insert(f.name().clone(), value.clone());
    }
    serde_json::to_vec(&kept).ok()
}

/// One JSON line decoded into a row; `None` when its values do not fit the
/// columns' types (the decoder is left clean for the next).
fn decode_one(
    decoder: &mut deltalake::arrow::json::reader::Decoder,
    line: &[u8],
) -> Result<Option<RecordBatch>, ArrowError> {
    let decoded = decoder.decode(line).and_then(|_| decoder.flush());
    match decoded {
        Ok(Some(b)) if b.num_rows() == 1 => Ok(Some(b)),
        Ok(_) => Ok(None),
        Err(_) => {
            // A failed decode may leave a partial row buffered: drop it.
            let _ = decoder.flush();
            Ok(None)
        }
    }
}

fn null_row(schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    RecordBatch::try_new(
        schema.clone(),
        schema
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), 1))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{Array, AsArray};
    use deltalake::arrow::datatypes::{DataType, Int64Type};

    /// Tombstones (no value) with these Kafka keys.
    fn chunk(keys: &[Option<&str>]) -> RecordChunk {
        let mut c = RecordChunk::default();
        let part = c.partition_index(&crate::record::TopicPartition::new("t", 0), 0);
        for (offset, k) in keys.iter().enumerate() {
            let key = k.map(|k| c.push_bytes(k.as_bytes()));
            c.records.push(crate::record::RecordMeta {
                part,
                offset: offset as i64,
                timestamp_ms: None,
                key,
                value: None,
                headers: 0..0,
            });
        }
        c
    }

    fn id_fields() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]))
    }

    /// Issue 22, case 5: with the key from the value, flattened tombstones were
    /// all dropped, so deletes sent only as tombstones were lost. A JSON Kafka
    /// key (plain, or with the converter's schema) keys them.
    #[test]
    fn a_tombstone_is_keyed_by_its_json_kafka_key() {
        let c = chunk(&[
            Some(r#"{"id": 7}"#),
            Some(r#"{"schema": {"type": "struct"}, "payload": {"id": 8}}"#),
            Some(r#"{"other": 1}"#),
            Some(r#"{"id": "not a number"}"#),
            Some("plain-text"),
            None,
        ]);
        let (rows, fates) =
            key_tombstones(&id_fields(), &c, &[0, 1, 2, 3, 4, 5], |_| false).unwrap();
        assert_eq!(
            fates,
            [
                Fate::Keyed,
                Fate::Keyed,
                Fate::Unkeyed,
                Fate::Unkeyed,
                Fate::Unkeyed,
                Fate::Unkeyed
            ]
        );
        let ids = rows.column(0).as_primitive::<Int64Type>();
        assert_eq!((ids.value(0), ids.value(1)), (7, 8));
        assert_eq!(ids.null_count(), 4);
    }

    /// A tombstone that cannot be keyed right after a flattened delete of its
    /// partition is Debezium's own: only accounted for.
    #[test]
    fn an_unkeyed_tombstone_after_a_delete_is_accounted_for() {
        let c = chunk(&[Some("avro-bytes"), Some("avro-bytes")]);
        let (_, fates) = key_tombstones(&id_fields(), &c, &[0, 1], |i| i == 1).unwrap();
        assert_eq!(fates, [Fate::Unkeyed, Fate::AfterDelete]);
        assert!(unkeyed_reason(&["id".into()]).contains("delete.handling.mode=rewrite"));
    }

    /// Records of partition 0 at `offsets`.
    fn at(offsets: std::ops::Range<i64>) -> RecordChunk {
        let mut c = chunk(&vec![None; offsets.clone().count()]);
        for (r, o) in c.records.iter_mut().zip(offsets) {
            r.offset = o;
        }
        c
    }

    /// Debezium's tombstone comes right after the delete row, and the two often
    /// arrive in different chunks (a spurious dead letter on Apache Kafka
    /// before): the answer carries over, but only to the very next offset.
    #[test]
    fn a_delete_at_the_end_of_a_chunk_is_followed_into_the_next() {
        let mut last = LastDeletes::default();
        // Offsets 0..3: rows at 0 and 2, the one at 2 a delete.
        assert_eq!(
            last.follow(&at(0..3), &[0, 2], &[false, true]),
            [false, false, false]
        );
        // Offset 3, the tombstone, opens the next chunk.
        assert_eq!(last.follow(&at(3..5), &[1], &[false]), [true, false]);
        // A delete at 5, then a seek: offset 9 does not follow it.
        assert_eq!(last.follow(&at(5..6), &[0], &[true]), [false]);
        assert_eq!(last.follow(&at(9..10), &[], &[]), [false]);
    }
}
