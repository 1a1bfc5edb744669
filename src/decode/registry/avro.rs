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

use crate::decode::Reason;
use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::kernel::StructType;

use crate::decode::registry::framed::FramedDecoder;
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

fn build(id: u32, schema: &AvroSchema, batch_size: usize) -> Result<Decoder, Reason> {
    let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
    store
        .set(Fingerprint::Id(id), schema.clone())
        .map_err(|e| Reason::from(e.to_string()))?;
    ReaderBuilder::new()
        .with_writer_schema_store(store)
        .with_batch_size(batch_size)
        .with_tz(Tz::Utc)
        .build_decoder()
        .map_err(|e| Reason::from(e.to_string()))
}

impl AvroWriterSchema {
    /// Parse the registry's schema text; the error says why it cannot be used.
    pub fn new(id: u32, text: &str, batch_size: usize) -> Result<Self, Reason> {
        let schema = AvroSchema::new(text.to_owned());
        let batch_size = batch_size.max(1);
        let decoder = build(id, &schema, batch_size)
            .map_err(|e| Reason::from(format!("Avro schema id {id} cannot be decoded: {e}")))?;
        let arrow = decoder.schema();
        let delta = crate::schema::evolve::delta_struct(arrow.fields(), "")
            .map_err(|e| Reason::from(format!("Avro schema id {id}: {e}")))?;
        Ok(Self {
            id,
            schema,
            batch_size,
            decoder,
            arrow,
            delta,
        })
    }
}

impl FramedDecoder for AvroWriterSchema {
    const FORMAT: &'static str = "Avro";

    fn feed(&mut self, value: &[u8]) -> Result<(), Reason> {
        feed(&mut self.decoder, value)
    }

    fn is_full(&self) -> bool {
        self.decoder.batch_is_full()
    }

    fn flush(&mut self) -> Result<Option<RecordBatch>, Reason> {
        self.decoder
            .flush()
            .map_err(|e| Reason::from(e.to_string()))
    }

    fn reset(&mut self) -> Result<(), Reason> {
        self.decoder = build(self.id, &self.schema, self.batch_size)?;
        Ok(())
    }
}

/// Feed one whole framed record; anything but exactly one row from exactly these
/// bytes is an error.
fn feed(decoder: &mut Decoder, value: &[u8]) -> Result<(), Reason> {
    let before = decoder.capacity();
    let consumed = decoder
        .decode(value)
        .map_err(|e| Reason::from(e.to_string()))?;
    if consumed < value.len() {
        return Err(Reason::from(format!(
            "the payload ends early or has {} byte(s) the schema does not account for",
            value.len() - consumed
        )));
    }
    if before - decoder.capacity() != 1 {
        return Err(Reason::from("the payload is truncated"));
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
        let out = crate::decode::registry::framed::decode_run(&mut w, &values).unwrap();
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
