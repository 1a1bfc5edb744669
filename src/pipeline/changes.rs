//! Upsert tables: a segment's decoded rows and tombstones become keyed changes
//! in the window (see [`crate::decode::changes`] for how).

use deltalake::arrow::error::ArrowError;

use super::Pipeline;
use super::error::PipelineError;
use crate::decode::changes::{self, Changes, Envelope, Keying};
use crate::decode::{DecodeError, Decoded, JsonDecoder};
use crate::record::RecordChunk;

/// The decoder of an upsert table's `envelope` (Debezium events, whole or
/// flattened), (re)built for the table's current schema.
pub(super) fn sink_envelope_decoder(
    s: &mut super::Sink,
    batch_size: usize,
) -> Result<&mut JsonDecoder, PipelineError> {
    let schema = s.decoder.schema();
    let stale = s
        .envelope
        .as_ref()
        .is_none_or(|(built, _)| *built != schema.delta);
    if stale {
        let keying = Keying {
            key: &[],
            envelope: s
                .tcfg
                .upsert
                .as_ref()
                .map_or(Envelope::Rows, |u| u.envelope),
            source_order: s
                .tcfg
                .upsert
                .as_ref()
                .and_then(|u| u.source_order.as_deref()),
        };
        let decoder = changes::envelope_decoder(schema, keying, batch_size)?.ok_or_else(|| {
            DecodeError::Schema(ArrowError::InvalidArgumentError(
                "rows have no envelope to decode".into(),
            ))
        })?;
        s.envelope = Some((schema.delta.clone(), decoder));
    }
    s.envelope.as_mut().map(|(_, d)| d).ok_or_else(|| {
        PipelineError::Decode(DecodeError::Schema(ArrowError::InvalidArgumentError(
            "no envelope decoder".into(),
        )))
    })
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
        let keying = Keying {
            key: &spec.key,
            envelope: spec.envelope,
            source_order: spec.source_order.as_deref(),
        };
        let taken = changes::take(s.decoder.schema(), keying, chunk, decoded).map_err(
            |e: ArrowError| PipelineError::Write {
                uri: s.uri(),
                source: Box::new(e.into()),
            },
        )?;
        Ok(taken.map(|(c, _)| c))
    }
}
