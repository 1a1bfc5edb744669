//! What ingest would have made of a record the table lacks: a row, a rejection
//! or nothing (filtered), judged with the same decoder, transform and limits.

use super::*;
use crate::decode::envelope::Envelope;
use crate::decode::segment::{EnvelopeDecoder, decode_segment};

/// What the daemon would make of a record today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fate {
    Row,
    Filtered,
    Rejected,
}

/// Judges records with the pipeline's own decoder, size limit and transform.
pub(super) struct Judge {
    pub(super) decoder: Decoder,
    /// Append tables' judge decodes rows: no envelope.
    pub(super) envelope: EnvelopeDecoder,
    pub(super) transform: Option<Transform>,
    pub(super) max_record_bytes: u64,
}

impl Judge {
    pub(super) async fn fate(
        &mut self,
        tp: &TopicPartition,
        rec: &probe::RawRecord,
    ) -> Result<Fate, VerifyError> {
        if rec.value.as_ref().map_or(0, Vec::len) as u64 > self.max_record_bytes {
            return Ok(Fate::Rejected);
        }
        let chunk = records_chunk(tp, std::slice::from_ref(rec));
        if self.decoder.prepare(&chunk, &|_| true).await?.is_some() {
            // Its schema needs a table change first: the daemon would have made it
            // and written the row.
            return Ok(Fate::Row);
        }
        let decoded = decode_segment(
            &mut self.decoder,
            &mut self.envelope,
            self.transform.as_ref(),
            &chunk,
            &|_| true,
        )?;
        if !decoded.rejected.is_empty() {
            return Ok(Fate::Rejected);
        }
        Ok(if decoded.rows.is_empty() {
            Fate::Filtered
        } else {
            Fate::Row
        })
    }
}

/// A chunk of `records`, all of partition `tp`.
pub(super) fn records_chunk(tp: &TopicPartition, records: &[probe::RawRecord]) -> RecordChunk {
    let mut chunk = RecordChunk::default();
    let part = chunk.partition_index(tp, 0);
    for rec in records {
        let value = rec.value.as_deref().map(|v| chunk.push_bytes(v));
        let key = rec.key.as_deref().map(|k| chunk.push_bytes(k));
        let first_header = chunk.headers.len();
        for (k, v) in &rec.headers {
            let value = v.as_deref().map(|v| chunk.push_bytes(v));
            chunk.headers.push(HeaderMeta {
                key: k.clone(),
                value,
            });
        }
        chunk.records.push(RecordMeta {
            part,
            offset: rec.offset,
            timestamp_ms: rec.timestamp_ms,
            key,
            value,
            headers: first_header..chunk.headers.len(),
        });
    }
    chunk
}

/// The decoder, transform and limits ingest applies, to tell what a missing
/// record would have become.
pub(super) fn judge_for(
    cfg: &Config,
    t: &deltalake::DeltaTable,
    uri: &str,
) -> Result<Judge, VerifyError> {
    let qerr = |e: &dyn std::fmt::Display| query_error(uri, e);
    let schema = crate::schema::TableSchema::from_table(
        t.snapshot().map_err(|e| qerr(&e))?.schema().as_ref(),
        &cfg.table.metadata_columns,
        &cfg.table
            .transform
            .columns
            .iter()
            .map(|(n, _)| n.clone())
            .collect::<Vec<_>>(),
    )
    .map_err(|e| qerr(&e))?;
    let registry = cfg
        .decode
        .registry
        .as_ref()
        .map(Registry::new)
        .transpose()?;
    let transform =
        Transform::new(&cfg.table.transform, &schema).map_err(VerifyError::Transform)?;
    let upsert = cfg.table.upsert.as_ref();
    let decoder = Decoder::for_format(
        cfg.decode.format,
        registry.as_ref(),
        schema,
        1,
        cfg.decode.on_incompatible,
    )?
    .with_envelope(
        upsert.map_or_else(Default::default, |u| u.envelope),
        upsert.and_then(|u| u.source_order.as_deref()),
    )?;
    Ok(Judge {
        decoder,
        envelope: EnvelopeDecoder::new(Envelope::Rows, None, 1),
        transform,
        max_record_bytes: cfg.decode.max_record_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::transform::TransformSpec;
    use crate::schema::{MetadataColumns, TableSchema};

    /// A judge for a JSON table `(id long not null, s string)` whose filter
    /// keeps `s <> 'skip'`, with records of at most 64 bytes.
    fn judge() -> Judge {
        let record = crate::schema::parse_schema_json(
            r#"{"type":"struct","fields":[
                {"name":"id","type":"long","nullable":false,"metadata":{}},
                {"name":"s","type":"string","nullable":true,"metadata":{}}]}"#,
        )
        .unwrap();
        let schema = TableSchema::new(&record, &MetadataColumns::default()).unwrap();
        let spec = TransformSpec {
            columns: Vec::new(),
            filter: Some("s <> 'skip'".into()),
        };
        let transform = Transform::new(&spec, &schema).unwrap();
        let decoder = Decoder::for_format(
            crate::decode::Format::Json,
            None,
            schema,
            1,
            crate::decode::OnError::Skip,
        )
        .unwrap();
        Judge {
            decoder,
            envelope: EnvelopeDecoder::new(Envelope::Rows, None, 1),
            transform,
            max_record_bytes: 64,
        }
    }

    fn record(value: &str) -> probe::RawRecord {
        probe::RawRecord {
            offset: 7,
            value: Some(value.as_bytes().to_vec()),
            key: None,
            timestamp_ms: Some(0),
            headers: Vec::new(),
        }
    }

    /// What verify says a missing record would have become is what ingest
    /// makes of it: the same decoder, size limit and filter.
    #[tokio::test]
    async fn a_missing_record_is_judged_as_ingest_would_have_taken_it() {
        let tp = TopicPartition::new("t", 0);
        let mut j = judge();
        let mut fate = async |v: &str| j.fate(&tp, &record(v)).await.unwrap();
        assert_eq!(fate(r#"{"id": 1, "s": "a"}"#).await, Fate::Row);
        assert_eq!(fate(r#"{"id": 2, "s": "skip"}"#).await, Fate::Filtered);
        assert_eq!(fate("not json").await, Fate::Rejected);
        assert_eq!(fate(r#"{"s": "no id"}"#).await, Fate::Rejected);
        let large = format!(r#"{{"id": 3, "s": "{}"}}"#, "x".repeat(64));
        assert_eq!(fate(&large).await, Fate::Rejected, "over max_record_bytes");
    }

    #[test]
    fn a_chunk_of_raw_records_keeps_their_offsets_keys_and_headers() {
        let tp = TopicPartition::new("t", 3);
        let mut r = record("{}");
        r.key = Some(b"k".to_vec());
        r.headers = vec![("h".into(), Some(b"v".to_vec())), ("n".into(), None)];
        let chunk = records_chunk(&tp, &[r, record("[]")]);
        assert_eq!(chunk.records.len(), 2);
        assert_eq!(chunk.records[0].offset, 7);
        assert_eq!(chunk.records[0].headers, 0..2);
        assert_eq!(chunk.records[1].headers, 2..2);
        assert!(chunk.records[0].key.is_some() && chunk.records[1].key.is_none());
        assert_eq!(chunk.headers[1].key, "n");
        assert!(chunk.headers[1].value.is_none());
    }
}
