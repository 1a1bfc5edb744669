//! What ingest would have made of a record the table lacks: a row, a rejection
//! or nothing (filtered), judged with the same decoder, transform and limits.

use super::*;

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
        let mut decoded = self.decoder.decode(&chunk, &|_| true)?;
        if !decoded.rejected.is_empty() {
            return Ok(Fate::Rejected);
        }
        if let Some(t) = &self.transform {
            decoded = t.apply(decoded);
            if !decoded.rejected.is_empty() {
                return Ok(Fate::Rejected);
            }
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
        transform,
        max_record_bytes: cfg.decode.max_record_bytes,
    })
}
