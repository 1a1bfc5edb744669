//! Decoding a run of Confluent-framed records that share one schema id, with bad
//! records isolated: the format-independent part of the registry formats.
//!
//! A streaming decoder appends each record's fields to column builders. When a
//! record fails halfway, the builders may hold part of it, so the decoder is
//! rebuilt, the records decoded since the last flush are fed again (they decode
//! exactly as before), flushed, and decoding goes on after the bad one. Good data
//! pays nothing for this; a bad record costs one re-decode of the records before it
//! in its batch.

use crate::decode::Reason;
use deltalake::arrow::array::RecordBatch;

/// A streaming decoder for one schema's records.
pub trait FramedDecoder {
    /// The format's name, for reasons (`Avro`, `JSON`).
    const FORMAT: &'static str;
    /// Decode one whole framed record into the open batch: exactly one row from
    /// exactly these bytes, or an error.
    fn feed(&mut self, value: &[u8]) -> Result<(), Reason>;
    /// Whether the open batch is full.
    fn is_full(&self) -> bool;
    /// Close the open batch.
    fn flush(&mut self) -> Result<Option<RecordBatch>, Reason>;
    /// Drop all state (after a failed record).
    fn reset(&mut self) -> Result<(), Reason>;
}

/// One decoded run.
#[derive(Debug, Default)]
pub struct RunOutput {
    /// Batches in the producer's shape, in record order.
    pub batches: Vec<RecordBatch>,
    /// Positions (into the run) of the records that became rows, in row order.
    pub good: Vec<usize>,
    /// Positions and reasons of those that did not.
    pub bad: Vec<(usize, String)>,
}

/// Decode `values` (all framed with `d`'s schema id).
pub fn decode_run<D: FramedDecoder>(d: &mut D, values: &[&[u8]]) -> Result<RunOutput, Reason> {
    let mut out = RunOutput::default();
    // Positions fed to the open batch.
    let mut pending: Vec<usize> = Vec::new();
    for (k, value) in values.iter().enumerate() {
        if let Err(reason) = d.feed(value) {
            d.reset()?;
            let mut refed = Vec::with_capacity(pending.len());
            for &g in &pending {
                match d.feed(values[g]) {
                    Ok(()) => refed.push(g),
                    Err(r) => out.bad.push((g, format!("invalid {}: {r}", D::FORMAT))),
                }
            }
            flush_into(d, values, &mut out, &mut refed)?;
            pending.clear();
            out.bad
                .push((k, format!("invalid {}: {reason}", D::FORMAT)));
            continue;
        }
        pending.push(k);
        if d.is_full() {
            flush_into(d, values, &mut out, &mut pending)?;
        }
    }
    flush_into(d, values, &mut out, &mut pending)?;
    out.bad.sort_by_key(|(k, _)| *k);
    Ok(out)
}

/// Close the open batch of `pending` records. When the batch as a whole fails
/// (some formats check types or required fields only here), decode each record
/// alone to find the ones at fault.
fn flush_into<D: FramedDecoder>(
    d: &mut D,
    values: &[&[u8]],
    out: &mut RunOutput,
    pending: &mut Vec<usize>,
) -> Result<(), Reason> {
    if pending.is_empty() {
        return Ok(());
    }
    match d.flush() {
        Ok(Some(b)) if b.num_rows() == pending.len() => {
            out.batches.push(b);
            out.good.append(pending);
            return Ok(());
        }
        _ => d.reset()?,
    }
    for g in pending.drain(..) {
        let one = d.feed(values[g]).and_then(|()| match d.flush()? {
            Some(b) if b.num_rows() == 1 => Ok(b),
            _ => Err(Reason::from(
                "the value did not decode to exactly one row".to_owned(),
            )),
        });
        match one {
            Ok(b) => {
                out.batches.push(b);
                out.good.push(g);
            }
            Err(reason) => {
                out.bad
                    .push((g, format!("invalid {}: {reason}", D::FORMAT)));
                d.reset()?;
            }
        }
    }
    Ok(())
}
