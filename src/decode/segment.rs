//! What ingest makes of a segment of records: the one decoding path, used by
//! the daemon (`pipeline`) and by `verify`'s replay and judging, so that the
//! two can never disagree about a record.

use deltalake::kernel::StructType;

use super::envelope::{Envelope, Keying, envelope_decoder};
use super::transform::Transform;
use super::{DecodeError, Decoded, Decoder, JsonDecoder};
use crate::record::RecordChunk;

/// An upsert table's envelope decoder (Debezium events, whole or flattened,
/// read as JSON), built for the table's current schema and rebuilt when it
/// changes. Rows need none, nor do registry formats, whose decoder reads
/// envelopes itself.
#[derive(Debug)]
pub struct EnvelopeDecoder {
    envelope: Envelope,
    source_order: Option<String>,
    batch_size: usize,
    built: Option<(StructType, JsonDecoder)>,
}

impl EnvelopeDecoder {
    /// For a table whose records hold `envelope`.
    pub fn new(envelope: Envelope, source_order: Option<String>, batch_size: usize) -> Self {
        Self {
            envelope,
            source_order,
            batch_size,
            built: None,
        }
    }

    /// The decoder for `decoder`'s current schema; `None` when `decoder` reads
    /// the records itself.
    fn for_schema(&mut self, decoder: &Decoder) -> Result<Option<&mut JsonDecoder>, DecodeError> {
        if self.envelope == Envelope::Rows || decoder.reads_envelopes() {
            return Ok(None);
        }
        let schema = decoder.schema();
        if self
            .built
            .as_ref()
            .is_none_or(|(built, _)| *built != schema.delta)
        {
            let keying = Keying {
                key: &[],
                envelope: self.envelope,
                source_order: self.source_order.as_deref(),
            };
            self.built = envelope_decoder(schema, keying, self.batch_size)?
                .map(|d| (schema.delta.clone(), d));
        }
        Ok(self.built.as_mut().map(|(_, d)| d))
    }
}

/// Decode the records of `chunk` that `keep` selects as ingest does: through
/// the table's envelope decoder or its own decoder, then the table's
/// transform (derived columns, filter).
pub fn decode_segment(
    decoder: &mut Decoder,
    envelope: &mut EnvelopeDecoder,
    transform: Option<&Transform>,
    chunk: &RecordChunk,
    keep: &(dyn Fn(usize) -> bool + Sync),
) -> Result<Decoded, DecodeError> {
    let decoded = match envelope.for_schema(decoder)? {
        Some(d) => d.decode(chunk, keep)?,
        None => decoder.decode(chunk, keep)?,
    };
    Ok(match transform {
        Some(t) => t.apply(decoded),
        None => decoded,
    })
}
