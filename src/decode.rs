//! Decode record values into Arrow batches with the table's schema, and append the
//! Kafka metadata columns.
//!
//! JSON goes through arrow-json's tape decoder straight into Arrow arrays: no
//! `serde_json::Value` per record. A whole chunk is decoded in one pass; only when
//! that fails (malformed JSON, a value of the wrong type, a missing required field,
//! a record holding two JSON documents) is the chunk decoded again record by record
//! to isolate the bad ones. Good data pays nothing for the isolation, and a bad
//! record never takes its neighbours down with it.
//!
//! Every record handed in comes out either as a row or as a [`Rejected`] entry with
//! a reason: nothing is dropped silently.

use std::sync::Arc;

use deltalake::arrow::array::{
    ArrayRef, BinaryBuilder, Int32Builder, Int64Builder, ListBuilder, RecordBatch, StringBuilder,
    StructBuilder, TimestampMicrosecondBuilder,
};
use deltalake::arrow::compute::concat_batches;
use deltalake::arrow::datatypes::{DataType, Field, Fields, SchemaRef};
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::json::reader::{Decoder, ReaderBuilder};

use crate::config::MetadataColumns;
use crate::record::RecordChunk;
use crate::schema::TableSchema;

/// A record that could not become a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Index into [`RecordChunk::records`].
    pub index: usize,
    /// Why, in words an operator can act on.
    pub reason: String,
}

/// The outcome of decoding a chunk.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Rows in table schema, in chunk order; `None` when no record was good.
    pub batch: Option<RecordBatch>,
    /// Indices (into the chunk) of the records that became rows, in row order.
    pub rows: Vec<usize>,
    /// Records that did not.
    pub rejected: Vec<Rejected>,
}

/// Errors that are not about one record: the decoder itself cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// arrow-json rejected the schema.
    #[error("cannot build a JSON decoder for the table schema: {0}")]
    Schema(#[source] ArrowError),
    /// The decoded columns do not fit the table schema (a bug, not bad input).
    #[error("decoded columns do not match the table schema: {0}")]
    Assemble(#[source] ArrowError),
}

/// Decodes JSON record values into batches of the table schema.
pub struct JsonDecoder {
    schema: TableSchema,
    batch_size: usize,
    decoder: Decoder,
}

impl std::fmt::Debug for JsonDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonDecoder")
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

fn build_decoder(schema: &SchemaRef, batch_size: usize) -> Result<Decoder, ArrowError> {
    // Unknown fields are ignored (not an error) so producers can add fields before
    // the table learns them; strict mode would send every such record to dead letters.
    ReaderBuilder::new(schema.clone())
        .with_batch_size(batch_size)
        .with_strict_mode(false)
        .build_decoder()
}

impl JsonDecoder {
    /// A decoder for chunks of up to `batch_size` records.
    pub fn new(schema: TableSchema, batch_size: usize) -> Result<Self, DecodeError> {
        let batch_size = batch_size.max(1);
        let decoder =
            build_decoder(&schema.record_arrow, batch_size).map_err(DecodeError::Schema)?;
        Ok(Self {
            schema,
            batch_size,
            decoder,
        })
    }

    /// The schema batches come out in.
    pub fn schema(&self) -> &TableSchema {
        &self.schema
    }

    /// Decode the records of `chunk` for which `keep(index)` holds.
    pub fn decode(
        &mut self,
        chunk: &RecordChunk,
        keep: impl Fn(usize) -> bool,
    ) -> Result<Decoded, DecodeError> {
        let mut rows = Vec::with_capacity(chunk.len());
        let mut rejected = Vec::new();
        for (i, r) in chunk.records.iter().enumerate() {
            if !keep(i) {
                continue;
            }
            if r.value.is_none() {
                rejected.push(Rejected {
                    index: i,
                    reason: "record has no value (tombstone)".into(),
                });
            } else {
                rows.push(i);
            }
        }
        if rows.is_empty() {
            return Ok(Decoded {
                batch: None,
                rows,
                rejected,
            });
        }
        let values = match self.decode_all(chunk, &rows) {
            Ok(batch) => batch,
            Err(_) => {
                // Isolate: the chunk holds at least one bad record.
                self.decoder = build_decoder(&self.schema.record_arrow, self.batch_size)
                    .map_err(DecodeError::Schema)?;
                let each = self.decode_each(chunk, &rows)?;
                rejected.extend(each.rejected);
                rejected.sort_by_key(|r| r.index);
                rows = each.rows;
                match each.batch {
                    Some(b) => b,
                    None => {
                        return Ok(Decoded {
                            batch: None,
                            rows,
                            rejected,
                        });
                    }
                }
            }
        };
        let batch = append_metadata(&self.schema, values, chunk, &rows)?;
        Ok(Decoded {
            batch: Some(batch),
            rows,
            rejected,
        })
    }

    /// Fast path: every record through one decoder. Any anomaly is an error.
    fn decode_all(&mut self, chunk: &RecordChunk, rows: &[usize]) -> Result<RecordBatch, String> {
        for (n, &i) in rows.iter().enumerate() {
            if n > 0 && n % self.batch_size == 0 {
                // More records than one decoder batch: never happens with the poll
                // thread's chunk size, but stay correct if it does.
                return Err("chunk larger than batch size".into());
            }
            let value = chunk.value(&chunk.records[i]).unwrap_or_default();
            feed_one(&mut self.decoder, value)?;
        }
        match self.decoder.flush() {
            Ok(Some(b)) if b.num_rows() == rows.len() => Ok(b),
            Ok(_) => Err("row count mismatch".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Slow path: each record alone, to tell good from bad.
    fn decode_each(&mut self, chunk: &RecordChunk, rows: &[usize]) -> Result<Decoded, DecodeError> {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        let mut batches = Vec::new();
        let mut single =
            build_decoder(&self.schema.record_arrow, 1).map_err(DecodeError::Schema)?;
        for &i in rows {
            let value = chunk.value(&chunk.records[i]).unwrap_or_default();
            let result = feed_one(&mut single, value).and_then(|()| match single.flush() {
                Ok(Some(b)) if b.num_rows() == 1 => Ok(b),
                Ok(_) => Err("value is not exactly one JSON object".to_owned()),
                Err(e) => Err(e.to_string()),
            });
            match result {
                Ok(b) => {
                    good.push(i);
                    batches.push(b);
                }
                Err(reason) => {
                    bad.push(Rejected {
                        index: i,
                        reason: format!("invalid JSON for the table schema: {reason}"),
                    });
                    single =
                        build_decoder(&self.schema.record_arrow, 1).map_err(DecodeError::Schema)?;
                }
            }
        }
        let batch = if batches.is_empty() {
            None
        } else {
            Some(
                concat_batches(&self.schema.record_arrow, &batches)
                    .map_err(DecodeError::Assemble)?,
            )
        };
        Ok(Decoded {
            batch,
            rows: good,
            rejected: bad,
        })
    }
}

/// Feed exactly one record to a decoder, checking it was one complete JSON value.
fn feed_one(decoder: &mut Decoder, value: &[u8]) -> Result<(), String> {
    let before = decoder.len();
    let consumed = decoder.decode(value).map_err(|e| e.to_string())?;
    if consumed != value.len() {
        return Err("decoder stopped before the end of the value".into());
    }
    if decoder.has_partial_record() {
        return Err("truncated JSON value".into());
    }
    match decoder.len() - before {
        1 => Ok(()),
        0 => Err("empty value".into()),
        n => Err(format!("value holds {n} JSON documents, expected one")),
    }
}

/// Append the configured Kafka metadata columns for `rows` of `chunk` to `values`.
fn append_metadata(
    schema: &TableSchema,
    values: RecordBatch,
    chunk: &RecordChunk,
    rows: &[usize],
) -> Result<RecordBatch, DecodeError> {
    let m: &MetadataColumns = &schema.metadata;
    let mut columns: Vec<ArrayRef> = values.columns().to_vec();
    let records = || rows.iter().map(|&i| &chunk.records[i]);
    if m.topic.is_some() {
        let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * 8);
        for r in records() {
            b.append_value(&chunk.partitions[r.part as usize].tp.topic);
        }
        columns.push(Arc::new(b.finish()));
    }
    if m.partition.is_some() {
        let mut b = Int32Builder::with_capacity(rows.len());
        for r in records() {
            b.append_value(chunk.partitions[r.part as usize].tp.partition);
        }
        columns.push(Arc::new(b.finish()));
    }
    if m.offset.is_some() {
        let mut b = Int64Builder::with_capacity(rows.len());
        for r in records() {
            b.append_value(r.offset);
        }
        columns.push(Arc::new(b.finish()));
    }
    if m.timestamp.is_some() {
        let mut b = TimestampMicrosecondBuilder::with_capacity(rows.len()).with_timezone("UTC");
        for r in records() {
            b.append_option(r.timestamp_ms.map(|ms| ms.saturating_mul(1000)));
        }
        columns.push(Arc::new(b.finish()));
    }
    if m.key.is_some() {
        let mut b = BinaryBuilder::with_capacity(rows.len(), 0);
        for r in records() {
            b.append_option(chunk.key(r));
        }
        columns.push(Arc::new(b.finish()));
    }
    if let Some(name) = &m.headers {
        columns.push(headers_array(schema, name, chunk, rows)?);
    }
    RecordBatch::try_new(schema.arrow.clone(), columns).map_err(DecodeError::Assemble)
}

fn headers_array(
    schema: &TableSchema,
    name: &str,
    chunk: &RecordChunk,
    rows: &[usize],
) -> Result<ArrayRef, DecodeError> {
    let list_type = schema
        .arrow
        .field_with_name(name)
        .map_err(DecodeError::Assemble)?
        .data_type()
        .clone();
    let DataType::List(element) = list_type else {
        return Err(DecodeError::Assemble(ArrowError::SchemaError(format!(
            "headers column `{name}` is not a list"
        ))));
    };
    let DataType::Struct(fields) = element.data_type().clone() else {
        return Err(DecodeError::Assemble(ArrowError::SchemaError(format!(
            "headers column `{name}` is not a list of structs"
        ))));
    };
    let fields: Fields = fields;
    let entry = StructBuilder::new(
        fields.clone(),
        vec![
            Box::new(StringBuilder::new()),
            Box::new(BinaryBuilder::new()),
        ],
    );
    let element_field: Arc<Field> = element.clone();
    let mut list = ListBuilder::new(entry).with_field(element_field);
    for &i in rows {
        let r = &chunk.records[i];
        for h in &chunk.headers[r.headers.clone()] {
            let s = list.values();
            s.field_builder::<StringBuilder>(0)
                .expect("key builder")
                .append_value(&h.key);
            s.field_builder::<BinaryBuilder>(1)
                .expect("value builder")
                .append_option(h.value.clone().map(|v| &chunk.data[v]));
            s.append(true);
        }
        list.append(true);
    }
    Ok(Arc::new(list.finish()))
}

#[cfg(test)]
mod tests {
    use deltalake::arrow::array::{Array, AsArray};
    use deltalake::arrow::datatypes::{Int64Type, TimestampMicrosecondType};

    use super::*;
    use crate::record::{HeaderMeta, TopicPartition};
    use crate::schema::parse_schema_json;

    fn decoder(meta: MetadataColumns) -> JsonDecoder {
        let record = parse_schema_json(
            r#"{"type":"struct","fields":[
                {"name":"id","type":"long","nullable":false,"metadata":{}},
                {"name":"name","type":"string","nullable":true,"metadata":{}},
                {"name":"ts","type":"timestamp","nullable":true,"metadata":{}}]}"#,
        )
        .unwrap();
        JsonDecoder::new(TableSchema::new(&record, &meta).unwrap(), 1024).unwrap()
    }

    fn chunk(values: &[&str]) -> RecordChunk {
        RecordChunk::from_values(
            &TopicPartition::new("t", 3),
            100,
            values.iter().map(|v| v.as_bytes()),
        )
    }

    #[test]
    fn good_records_decode_in_one_batch() {
        let mut d = decoder(MetadataColumns::default());
        let c = chunk(&[
            r#"{"id":1,"name":"a","ts":"2024-01-01T00:00:00Z"}"#,
            r#"{"id":2,"extra":true}"#,
        ]);
        let out = d.decode(&c, |_| true).unwrap();
        let b = out.batch.unwrap();
        assert_eq!(b.num_rows(), 2);
        assert!(out.rejected.is_empty());
        let ts = b.column(2).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(ts.value(0), 1_704_067_200_000_000);
        assert!(ts.is_null(1));
    }

    #[test]
    fn bad_records_are_isolated_with_reasons() {
        let mut d = decoder(MetadataColumns::default());
        let c = chunk(&[
            r#"{"id":1}"#,
            r#"{"id":"#,           // truncated
            r#"{"id":"x"}"#,       // wrong type
            r#"{"name":"no id"}"#, // required field missing
            r#"{"id":5}{"id":6}"#, // two documents
            "",                    // empty
            r#"[1,2]"#,            // not an object
            r#"{"id":8}"#,
        ]);
        let out = d.decode(&c, |_| true).unwrap();
        assert_eq!(out.rows, vec![0, 7]);
        let ids = out.batch.unwrap();
        let ids = ids.column(0).as_primitive::<Int64Type>();
        assert_eq!(ids.values().to_vec(), vec![1, 8]);
        let bad: Vec<usize> = out.rejected.iter().map(|r| r.index).collect();
        assert_eq!(bad, vec![1, 2, 3, 4, 5, 6]);
        assert!(out.rejected.iter().all(|r| !r.reason.is_empty()));
        // The decoder is usable again after isolation.
        let again = d.decode(&chunk(&[r#"{"id":9}"#]), |_| true).unwrap();
        assert_eq!(again.batch.unwrap().num_rows(), 1);
    }

    #[test]
    fn metadata_columns_follow_the_rows() {
        let meta = MetadataColumns {
            topic: Some("_topic".into()),
            partition: Some("_partition".into()),
            offset: Some("_offset".into()),
            timestamp: Some("_ts".into()),
            key: Some("_key".into()),
            headers: Some("_headers".into()),
        };
        let mut d = decoder(meta);
        let mut c = chunk(&[r#"{"id":1}"#, "garbage", r#"{"id":3}"#]);
        let k = c.push_bytes(b"k3");
        c.records[2].key = Some(k);
        let hv = c.push_bytes(b"v");
        c.headers.push(HeaderMeta {
            key: "h".into(),
            value: Some(hv),
        });
        c.records[2].headers = 0..1;
        let out = d.decode(&c, |_| true).unwrap();
        let b = out.batch.unwrap();
        assert_eq!(b.num_rows(), 2);
        let offsets = b
            .column_by_name("_offset")
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!(offsets.values().to_vec(), vec![100, 102]);
        assert_eq!(
            b.column_by_name("_topic")
                .unwrap()
                .as_string::<i32>()
                .value(1),
            "t"
        );
        let keys = b.column_by_name("_key").unwrap().as_binary::<i32>();
        assert!(keys.is_null(0));
        assert_eq!(keys.value(1), b"k3");
        let headers = b.column_by_name("_headers").unwrap().as_list::<i32>();
        assert_eq!(headers.value(0).len(), 0);
        assert_eq!(headers.value(1).len(), 1);
        assert_eq!(out.rejected.len(), 1);
    }

    #[test]
    fn keep_filter_and_tombstones() {
        let mut d = decoder(MetadataColumns::default());
        let mut c = chunk(&[r#"{"id":1}"#, r#"{"id":2}"#, r#"{"id":3}"#]);
        c.records[2].value = None;
        let out = d.decode(&c, |i| i != 0).unwrap();
        assert_eq!(out.rows, vec![1]);
        assert_eq!(out.rejected.len(), 1);
        assert!(out.rejected[0].reason.contains("tombstone"));
    }
}
