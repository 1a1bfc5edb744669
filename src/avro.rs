//! Avro records (Confluent-framed) straight into Arrow columns with arrow-avro.
//!
//! One [`AvroWriterSchema`] per registry schema id: arrow-avro's streaming decoder,
//! keyed by the Confluent id, appends each record's fields to column builders; no
//! per-record value tree. Logical types keep their meaning: decimals stay decimals,
//! `date` is a date, `timestamp-millis`/`-micros` are UTC timestamps (`local-*` are
//! timestamp_ntz), `uuid` becomes its canonical string, enums their symbol, maps
//! maps, unions with null nullable fields.
//!
//! A record that does not decode (truncated, garbage, trailing bytes) is isolated
//! without losing its neighbours: the rows decoded before it are rebuilt in a fresh
//! decoder (the failed one may hold half a row), flushed, and decoding goes on.

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::kernel::StructType;

use arrow_avro::codec::Tz;
use arrow_avro::reader::{Decoder, ReaderBuilder};
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};

/// Decoding state for one registered Avro schema.
#[derive(Debug)]
pub struct AvroWriterSchema {
    id: u32,
    schema: AvroSchema,
    batch_size: usize,
    decoder: Decoder,
    /// What the decoder produces.
    pub arrow: SchemaRef,
    /// The Delta schema of those columns.
    pub delta: StructType,
}

/// One decoded run of records.
#[derive(Debug, Default)]
pub struct RunOutput {
    /// Batches in the producer's shape, in record order.
    pub batches: Vec<RecordBatch>,
    /// Positions (into the run) of the records that became rows, in row order.
    pub good: Vec<usize>,
    /// Positions and reasons of those that did not.
    pub bad: Vec<(usize, String)>,
}

fn build(id: u32, schema: &AvroSchema, batch_size: usize) -> Result<Decoder, String> {
    let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
    store
        .set(Fingerprint::Id(id), schema.clone())
        .map_err(|e| e.to_string())?;
    ReaderBuilder::new()
        .with_writer_schema_store(store)
        .with_batch_size(batch_size)
        .with_tz(Tz::Utc)
        .build_decoder()
        .map_err(|e| e.to_string())
}

impl AvroWriterSchema {
    /// Parse the registry's schema text; the error says why it cannot be used.
    pub fn new(id: u32, text: &str, batch_size: usize) -> Result<Self, String> {
        let schema = AvroSchema::new(text.to_owned());
        let batch_size = batch_size.max(1);
        let decoder = build(id, &schema, batch_size)
            .map_err(|e| format!("Avro schema id {id} cannot be decoded: {e}"))?;
        let arrow = decoder.schema();
        let delta = crate::evolve::delta_struct(arrow.fields(), "")
            .map_err(|e| format!("Avro schema id {id}: {e}"))?;
        Ok(Self {
            id,
            schema,
            batch_size,
            decoder,
            arrow,
            delta,
        })
    }

    /// Decode a run of Confluent-framed values that all carry this schema's id.
    pub fn decode_run(&mut self, values: &[&[u8]]) -> Result<RunOutput, String> {
        let mut out = RunOutput::default();
        // Positions fed to the current decoder batch and not yet flushed.
        let mut pending: Vec<usize> = Vec::new();
        for (k, value) in values.iter().enumerate() {
            match feed(&mut self.decoder, value) {
                Ok(()) => pending.push(k),
                Err(reason) => {
                    // The decoder may hold part of this record: start over with the
                    // good ones, which decode again exactly as before.
                    self.decoder = build(self.id, &self.schema, self.batch_size)?;
                    let mut refed = Vec::with_capacity(pending.len());
                    for &g in &pending {
                        match feed(&mut self.decoder, values[g]) {
                            Ok(()) => refed.push(g),
                            Err(r) => out.bad.push((g, format!("invalid Avro: {r}"))),
                        }
                    }
                    self.flush_into(&mut out, &mut refed)?;
                    pending.clear();
                    out.bad.push((k, format!("invalid Avro: {reason}")));
                    continue;
                }
            }
            if self.decoder.batch_is_full() {
                self.flush_into(&mut out, &mut pending)?;
            }
        }
        self.flush_into(&mut out, &mut pending)?;
        out.bad.sort_by_key(|(k, _)| *k);
        Ok(out)
    }

    fn flush_into(&mut self, out: &mut RunOutput, pending: &mut Vec<usize>) -> Result<(), String> {
        if pending.is_empty() {
            return Ok(());
        }
        match self.decoder.flush().map_err(|e| e.to_string())? {
            Some(b) if b.num_rows() == pending.len() => {
                out.batches.push(b);
                out.good.append(pending);
                Ok(())
            }
            other => Err(format!(
                "Avro decoder returned {} rows for {} records",
                other.map_or(0, |b| b.num_rows()),
                pending.len()
            )),
        }
    }
}

/// Feed one whole framed record; anything but exactly one row from exactly these
/// bytes is an error.
fn feed(decoder: &mut Decoder, value: &[u8]) -> Result<(), String> {
    let before = decoder.capacity();
    let consumed = decoder.decode(value).map_err(|e| e.to_string())?;
    if consumed < value.len() {
        return Err(format!(
            "the payload ends early or has {} byte(s) the schema does not account for",
            value.len() - consumed
        ));
    }
    if before - decoder.capacity() != 1 {
        return Err("the payload is truncated".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use apache_avro::types::Value;

    use super::*;

    const SCHEMA: &str = r#"{"type":"record","name":"R","fields":[
        {"name":"id","type":"long"},
        {"name":"name","type":["null","string"],"default":null}]}"#;

    #[allow(deprecated)] // GenericDatumWriter's builder is the new spelling; same bytes
    fn frame(id: u32, v: Value) -> Vec<u8> {
        let schema = apache_avro::Schema::parse_str(SCHEMA).unwrap();
        let mut out = vec![0];
        out.extend_from_slice(&id.to_be_bytes());
        out.extend(apache_avro::to_avro_datum(&schema, v).unwrap());
        out
    }

    fn rec(id: i64, name: Option<&str>) -> Value {
        Value::Record(vec![
            ("id".into(), Value::Long(id)),
            (
                "name".into(),
                match name {
                    Some(n) => Value::Union(1, Box::new(Value::String(n.into()))),
                    None => Value::Union(0, Box::new(Value::Null)),
                },
            ),
        ])
    }

    #[test]
    fn bad_records_are_isolated_and_neighbours_kept() {
        let mut w = AvroWriterSchema::new(7, SCHEMA, 100).unwrap();
        let good1 = frame(7, rec(1, Some("a")));
        let good2 = frame(7, rec(2, None));
        let truncated = good1[..good1.len() - 1].to_vec();
        let mut trailing = frame(7, rec(3, Some("c")));
        trailing.extend_from_slice(&[1, 2, 3]);
        let good3 = frame(7, rec(4, Some("d")));
        let values: Vec<&[u8]> = vec![&good1, &truncated, &good2, &trailing, &good3];
        let out = w.decode_run(&values).unwrap();
        assert_eq!(out.good, [0, 2, 4]);
        assert_eq!(out.bad.iter().map(|b| b.0).collect::<Vec<_>>(), [1, 3]);
        let rows: usize = out.batches.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, 3);
        let ids: Vec<i64> = out
            .batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<deltalake::arrow::array::Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(ids, [1, 2, 4]);
    }
}
