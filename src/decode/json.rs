//! JSON values straight into Arrow through arrow-json's tape decoder: one pass for
//! a clean run of records, record by record only when one is bad.

use super::*;

/// Decodes JSON record values into batches of the table schema.
pub struct JsonDecoder {
    schema: TableSchema,
    batch_size: usize,
    decoder: TapeDecoder,
}

impl std::fmt::Debug for JsonDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonDecoder")
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

fn build_decoder(schema: &SchemaRef, batch_size: usize) -> Result<TapeDecoder, ArrowError> {
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

    /// Give back the memory the decoder kept from the records it decoded (its tape
    /// keeps the capacity of the largest run): a fresh decoder.
    pub fn release(&mut self) {
        if let Ok(fresh) = build_decoder(&self.schema.record_arrow, self.batch_size) {
            self.decoder = fresh;
        }
    }

    /// Rows per decoded batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
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
        let keep = &keep;
        let mut rows = Vec::with_capacity(chunk.len());
        let mut rejected = Vec::new();
        for (i, r) in chunk.records.iter().enumerate() {
            if !keep(i) {
                continue;
            }
            if r.value.is_none() {
                rejected.push(Rejected {
                    index: i,
                    kind: RejectKind::Empty,
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
    fn decode_all(&mut self, chunk: &RecordChunk, rows: &[usize]) -> Result<RecordBatch, Reason> {
        for (n, &i) in rows.iter().enumerate() {
            if n > 0 && n % self.batch_size == 0 {
                // More records than one decoder batch: never happens with the poll
                // thread's chunk size, but stay correct if it does.
                return Err(Reason::from("chunk larger than batch size"));
            }
            let value = chunk.value(&chunk.records[i]).unwrap_or_default();
            feed_one(&mut self.decoder, value)?;
        }
        match self.decoder.flush() {
            Ok(Some(b)) if b.num_rows() == rows.len() => Ok(b),
            Ok(_) => Err(Reason::from("row count mismatch")),
            Err(e) => Err(Reason::from(e.to_string())),
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
                Ok(_) => Err(Reason::from(
                    "value is not exactly one JSON object".to_owned(),
                )),
                Err(e) => Err(Reason::from(e.to_string())),
            });
            match result {
                Ok(b) => {
                    good.push(i);
                    batches.push(b);
                }
                Err(reason) => {
                    bad.push(Rejected {
                        index: i,
                        kind: RejectKind::Decode,
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
pub(crate) fn feed_one(decoder: &mut TapeDecoder, value: &[u8]) -> Result<(), Reason> {
    let before = decoder.len();
    let consumed = decoder
        .decode(value)
        .map_err(|e| Reason::from(e.to_string()))?;
    if consumed != value.len() {
        return Err(Reason::from("decoder stopped before the end of the value"));
    }
    if decoder.has_partial_record() {
        return Err(Reason::from("truncated JSON value"));
    }
    match decoder.len() - before {
        1 => Ok(()),
        0 => Err(Reason::from("empty value")),
        n => Err(Reason::from(format!(
            "value holds {n} JSON documents, expected one"
        ))),
    }
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
