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

pub mod options;
pub mod registry;
pub mod transform;

pub use options::{DecodeConfig, Format, OnError};

use std::sync::Arc;

use deltalake::arrow::array::{
    ArrayRef, BinaryBuilder, Int32Builder, Int64Builder, ListBuilder, RecordBatch, StringBuilder,
    StructBuilder, TimestampMicrosecondBuilder,
};
use deltalake::arrow::compute::concat_batches;
use deltalake::arrow::datatypes::{DataType, Field, Fields, SchemaRef};
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::json::reader::{Decoder as TapeDecoder, ReaderBuilder};

use std::collections::{HashMap, HashSet};

use deltalake::kernel::StructType;

use crate::decode::registry::avro::AvroWriterSchema;
use crate::decode::registry::framed::decode_run;
use crate::decode::registry::json_schema::JsonWriterSchema;
use crate::decode::registry::protobuf::ProtoWriterSchema;
use crate::decode::registry::{Registry, RegistryError, SchemaKind, split_frame};
use crate::record::RecordChunk;
use crate::schema::MetadataColumns;
use crate::schema::TableSchema;
use crate::schema::evolve::{Fit, align_columns, fit};

/// A record that could not become a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Index into [`RecordChunk::records`].
    pub index: usize,
    /// What kind of failure.
    pub kind: RejectKind,
    /// Why, in words an operator can act on.
    pub reason: String,
}

/// The kinds of rejection, as stored in the dead-letter table's `error_kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectKind {
    /// No value (a tombstone).
    Empty,
    /// Not in the Confluent wire format.
    Framing,
    /// The value does not decode with its schema (malformed, truncated, wrong type).
    Decode,
    /// The record's schema is unknown, unusable or incompatible with the table.
    Schema,
    /// A derived column or the filter failed for it.
    Transform,
    /// The value is larger than `decode.max_record_bytes`.
    TooLarge,
}

impl RejectKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::Empty => "empty",
            RejectKind::Framing => "framing",
            RejectKind::Decode => "decode",
            RejectKind::Schema => "schema",
            RejectKind::Transform => "transform",
            RejectKind::TooLarge => "too_large",
        }
    }
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
    /// The schema registry failed or refused us.
    #[error(transparent)]
    Registry(RegistryError),
    /// A producer schema cannot be written to the table and the config says stop.
    #[error(
        "{0} (decode.on_incompatible = \"fail\"; set it to \"skip\" to send such records to dead letters instead)"
    )]
    Incompatible(String),
}

impl DecodeError {
    /// Whether trying again later may succeed (the registry is unreachable).
    pub fn is_retryable(&self) -> bool {
        matches!(self, DecodeError::Registry(e) if e.is_retryable())
    }
}

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
pub(crate) fn feed_one(decoder: &mut TapeDecoder, value: &[u8]) -> Result<(), String> {
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

/// Append the configured Kafka metadata columns for `rows` of `chunk` to `values`,
/// in the table's column order.
pub(crate) fn append_metadata(
    schema: &TableSchema,
    values: RecordBatch,
    chunk: &RecordChunk,
    rows: &[usize],
) -> Result<RecordBatch, DecodeError> {
    let m: &MetadataColumns = &schema.metadata;
    let mut named: Vec<(&str, ArrayRef)> = values
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .zip(values.columns().iter().cloned())
        .collect();
    let records = || rows.iter().map(|&i| &chunk.records[i]);
    if let Some(name) = &m.topic {
        let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * 8);
        for r in records() {
            b.append_value(&chunk.partitions[r.part as usize].tp.topic);
        }
        named.push((name, Arc::new(b.finish())));
    }
    if let Some(name) = &m.partition {
        let mut b = Int32Builder::with_capacity(rows.len());
        for r in records() {
            b.append_value(chunk.partitions[r.part as usize].tp.partition);
        }
        named.push((name, Arc::new(b.finish())));
    }
    if let Some(name) = &m.offset {
        let mut b = Int64Builder::with_capacity(rows.len());
        for r in records() {
            b.append_value(r.offset);
        }
        named.push((name, Arc::new(b.finish())));
    }
    if let Some(name) = &m.timestamp {
        let mut b = TimestampMicrosecondBuilder::with_capacity(rows.len()).with_timezone("UTC");
        for r in records() {
            b.append_option(r.timestamp_ms.map(|ms| ms.saturating_mul(1000)));
        }
        named.push((name, Arc::new(b.finish())));
    }
    if let Some(name) = &m.key {
        let mut b = BinaryBuilder::with_capacity(rows.len(), 0);
        for r in records() {
            b.append_option(chunk.key(r));
        }
        named.push((name, Arc::new(b.finish())));
    }
    if let Some(name) = &m.headers {
        named.push((name, headers_array(schema, name, chunk, rows)?));
    }
    let columns = schema
        .decoded_arrow
        .fields()
        .iter()
        .map(|f| {
            named
                .iter()
                .position(|(n, _)| *n == f.name())
                .map(|i| named.swap_remove(i).1)
                .ok_or_else(|| {
                    DecodeError::Assemble(ArrowError::SchemaError(format!(
                        "no values for table column `{}`",
                        f.name()
                    )))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.decoded_arrow.clone(), columns).map_err(DecodeError::Assemble)
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

// ---------------------------------------------------------------------------
// Registry formats.
// ---------------------------------------------------------------------------

/// A table schema change a producer schema needs before its records can be written.
#[derive(Debug, Clone)]
pub struct Evolution {
    /// The registry id of the producer schema.
    pub schema_id: u32,
    /// The producer's record fields as a Delta struct.
    pub producer: StructType,
    /// What changes, one line each.
    pub changes: Vec<String>,
}

enum Writer {
    Avro(Box<AvroWriterSchema>),
    Json(Box<JsonWriterSchema>),
    Proto(Box<ProtoWriterSchema>),
    /// Records with this id are rejected with the reason.
    Rejected(String),
}

impl Writer {
    fn delta(&self) -> Option<&StructType> {
        match self {
            Writer::Avro(a) => Some(&a.delta),
            Writer::Json(j) => Some(&j.delta),
            Writer::Proto(p) => Some(&p.delta),
            Writer::Rejected(_) => None,
        }
    }
}

/// Decodes Confluent-framed records of a registry format, one decoder per schema
/// id, and reshapes every batch into the table's schema.
pub struct RegistryDecoder {
    registry: Registry,
    kind: SchemaKind,
    schema: TableSchema,
    batch_size: usize,
    on_incompatible: OnError,
    writers: HashMap<u32, Writer>,
    /// Ids known to fit the current table schema.
    fits: HashSet<u32>,
}

impl std::fmt::Debug for RegistryDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryDecoder")
            .field("kind", &self.kind)
            .field("schemas", &self.writers.len())
            .finish_non_exhaustive()
    }
}

impl RegistryDecoder {
    /// A decoder for `kind` records written to a table of `schema`.
    pub fn new(
        registry: Registry,
        kind: SchemaKind,
        schema: TableSchema,
        batch_size: usize,
        on_incompatible: OnError,
    ) -> Self {
        Self {
            registry,
            kind,
            schema,
            batch_size: batch_size.max(1),
            on_incompatible,
            writers: HashMap::new(),
            fits: HashSet::new(),
        }
    }

    /// Fetch the schemas the kept records name and check each against the table.
    /// Returns the first table change needed, if any; call again after applying it.
    pub async fn prepare(
        &mut self,
        chunk: &RecordChunk,
        keep: &(dyn Fn(usize) -> bool + Sync),
    ) -> Result<Option<Evolution>, DecodeError> {
        let mut ids = Vec::new();
        for (i, r) in chunk.records.iter().enumerate() {
            if !keep(i) {
                continue;
            }
            if let Some((id, _)) = chunk.value(r).and_then(|v| split_frame(v).ok())
                && !self.fits.contains(&id)
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
        for id in ids {
            if !self.writers.contains_key(&id) {
                let writer = Self::load(&self.registry, self.kind, self.batch_size, id).await?;
                self.writers.insert(id, writer);
            }
            let Some(producer) = self.writers[&id].delta() else {
                continue;
            };
            match fit(&self.schema.delta, producer, &self.schema.reserved()) {
                Fit::Fits => {
                    self.fits.insert(id);
                }
                Fit::Evolve { changes, .. } => {
                    return Ok(Some(Evolution {
                        schema_id: id,
                        producer: producer.clone(),
                        changes,
                    }));
                }
                Fit::Incompatible(reason) => {
                    let reason = format!("schema id {id} is incompatible with the table: {reason}");
                    if self.on_incompatible == OnError::Fail {
                        return Err(DecodeError::Incompatible(reason));
                    }
                    tracing::error!(schema_id = id, %reason, "records with this schema go to dead letters");
                    self.writers.insert(id, Writer::Rejected(reason));
                }
            }
        }
        Ok(None)
    }

    /// Look `id` up (an associated fn: the decoders are not `Sync`, so no `&self`
    /// may be held across the await).
    async fn load(
        registry: &Registry,
        kind: SchemaKind,
        batch_size: usize,
        id: u32,
    ) -> Result<Writer, DecodeError> {
        match registry.schema(id).await {
            Ok(s) if s.kind != kind => Ok(Writer::Rejected(format!(
                "schema id {id} is a {} schema but the topic is configured as {kind}",
                s.kind
            ))),
            Ok(s) => {
                let imports = match registry.references(&s).await {
                    Ok(i) => i,
                    Err(e) if e.is_retryable() => return Err(DecodeError::Registry(e)),
                    Err(e) => return Ok(Writer::Rejected(e.to_string())),
                };
                Ok(match writer_for(&s, &imports, batch_size) {
                    Ok(w) => w,
                    Err(reason) => Writer::Rejected(reason),
                })
            }
            Err(e @ RegistryError::NotFound { .. }) => Ok(Writer::Rejected(e.to_string())),
            Err(e @ RegistryError::Invalid(_)) => Ok(Writer::Rejected(e.to_string())),
            Err(e) => Err(DecodeError::Registry(e)),
        }
    }

    /// The table schema changed (this worker or another evolved it).
    pub fn set_schema(&mut self, schema: TableSchema) {
        self.schema = schema;
        self.fits.clear();
    }

    /// Decode the kept records of `chunk`. [`Self::prepare`] must have run for them.
    pub fn decode(
        &mut self,
        chunk: &RecordChunk,
        keep: &(dyn Fn(usize) -> bool + Sync),
    ) -> Result<Decoded, DecodeError> {
        let mut rows = Vec::with_capacity(chunk.len());
        let mut rejected = Vec::new();
        let mut batches = Vec::new();
        // Runs of consecutive records with one schema id.
        let mut run: Vec<usize> = Vec::new();
        let mut run_id = None;
        for (i, r) in chunk.records.iter().enumerate() {
            if !keep(i) {
                continue;
            }
            let Some(value) = chunk.value(r) else {
                rejected.push(Rejected {
                    index: i,
                    kind: RejectKind::Empty,
                    reason: "record has no value (tombstone)".into(),
                });
                continue;
            };
            let id = match split_frame(value) {
                Ok((id, _)) => id,
                Err(reason) => {
                    rejected.push(Rejected {
                        index: i,
                        kind: RejectKind::Framing,
                        reason,
                    });
                    continue;
                }
            };
            if run_id != Some(id) {
                self.decode_run(chunk, run_id, &run, &mut rows, &mut rejected, &mut batches)?;
                run.clear();
                run_id = Some(id);
            }
            run.push(i);
        }
        self.decode_run(chunk, run_id, &run, &mut rows, &mut rejected, &mut batches)?;
        rejected.sort_by_key(|r| r.index);
        if batches.is_empty() {
            return Ok(Decoded {
                batch: None,
                rows,
                rejected,
            });
        }
        let values =
            concat_batches(&self.schema.record_arrow, &batches).map_err(DecodeError::Assemble)?;
        let batch = append_metadata(&self.schema, values, chunk, &rows)?;
        Ok(Decoded {
            batch: Some(batch),
            rows,
            rejected,
        })
    }

    fn decode_run(
        &mut self,
        chunk: &RecordChunk,
        id: Option<u32>,
        run: &[usize],
        rows: &mut Vec<usize>,
        rejected: &mut Vec<Rejected>,
        batches: &mut Vec<RecordBatch>,
    ) -> Result<(), DecodeError> {
        let Some(id) = id else { return Ok(()) };
        if run.is_empty() {
            return Ok(());
        }
        let reject_all = |rejected: &mut Vec<Rejected>, kind: RejectKind, reason: &str| {
            rejected.extend(run.iter().map(|&i| Rejected {
                index: i,
                kind,
                reason: reason.to_owned(),
            }));
        };
        let fits = self.fits.contains(&id);
        let out = match self.writers.get_mut(&id) {
            Some(Writer::Rejected(reason)) => {
                reject_all(rejected, RejectKind::Schema, reason);
                return Ok(());
            }
            Some(writer) if fits => {
                let values: Vec<&[u8]> = run
                    .iter()
                    .map(|&i| chunk.value(&chunk.records[i]).unwrap_or_default())
                    .collect();
                match writer {
                    Writer::Avro(w) => decode_run(w.as_mut(), &values),
                    Writer::Json(w) => decode_run(w.as_mut(), &values),
                    Writer::Proto(w) => decode_run(w.as_mut(), &values),
                    Writer::Rejected(_) => unreachable!("matched above"),
                }
            }
            _ => Err(format!("schema id {id} was not prepared (a bug)")),
        };
        let out = match out {
            Ok(out) => out,
            Err(reason) => {
                reject_all(rejected, RejectKind::Decode, &reason);
                return Ok(());
            }
        };
        rejected.extend(out.bad.into_iter().map(|(k, reason)| Rejected {
            index: run[k],
            kind: RejectKind::Decode,
            reason,
        }));
        let target = self.schema.record_arrow.clone();
        let mut good = out.good.into_iter();
        for b in out.batches {
            let positions: Vec<usize> = good.by_ref().take(b.num_rows()).collect();
            let columns: Vec<_> = b
                .schema_ref()
                .fields()
                .iter()
                .cloned()
                .zip(b.columns().iter().cloned())
                .collect();
            match align_columns(&columns, target.fields(), b.num_rows()).and_then(|cols| {
                RecordBatch::try_new(target.clone(), cols).map_err(|e| e.to_string())
            }) {
                Ok(aligned) => {
                    batches.push(aligned);
                    rows.extend(positions.iter().map(|&k| run[k]));
                }
                Err(reason) => rejected.extend(positions.iter().map(|&k| Rejected {
                    index: run[k],
                    kind: RejectKind::Schema,
                    reason: format!("cannot write to the table: {reason}"),
                })),
            }
        }
        Ok(())
    }
}

fn writer_for(
    schema: &crate::decode::registry::Schema,
    imports: &[(String, String)],
    batch_size: usize,
) -> Result<Writer, String> {
    match schema.kind {
        SchemaKind::Avro => Ok(Writer::Avro(Box::new(AvroWriterSchema::new(
            schema.id,
            &schema.text,
            batch_size,
        )?))),
        SchemaKind::Json => Ok(Writer::Json(Box::new(JsonWriterSchema::new(
            schema.id,
            &schema.text,
            batch_size,
        )?))),
        SchemaKind::Protobuf => Ok(Writer::Proto(Box::new(ProtoWriterSchema::new(
            schema.id,
            &schema.text,
            imports,
            batch_size,
        )?))),
    }
}

/// The record fields of a registered schema (with the texts of its references),
/// as the table would store them.
pub fn record_schema(
    schema: &crate::decode::registry::Schema,
    imports: &[(String, String)],
) -> Result<StructType, String> {
    writer_for(schema, imports, 1)?
        .delta()
        .cloned()
        .ok_or_else(|| format!("schema id {} cannot be decoded", schema.id))
}

/// The value decoder a pipeline uses.
#[derive(Debug)]
pub enum Decoder {
    /// Plain JSON against a schema file.
    Json(Box<JsonDecoder>),
    /// A registry format.
    Registry(Box<RegistryDecoder>),
}

impl Decoder {
    /// The decoder for `format`: JSON against the table schema, or a registry
    /// format through `registry` (which the config guarantees for those formats).
    pub fn for_format(
        format: crate::decode::Format,
        registry: Option<&Registry>,
        schema: TableSchema,
        batch_size: usize,
        on_incompatible: OnError,
    ) -> Result<Self, DecodeError> {
        use crate::decode::Format;
        let kind = match format {
            Format::Avro => Some(SchemaKind::Avro),
            Format::JsonSchema => Some(SchemaKind::Json),
            Format::Protobuf => Some(SchemaKind::Protobuf),
            Format::Json => None,
        };
        Ok(match (kind, registry) {
            (Some(kind), Some(registry)) => Decoder::Registry(Box::new(RegistryDecoder::new(
                registry.clone(),
                kind,
                schema,
                batch_size,
                on_incompatible,
            ))),
            _ => Decoder::Json(Box::new(JsonDecoder::new(schema, batch_size)?)),
        })
    }

    /// The table schema batches come out in.
    pub fn schema(&self) -> &TableSchema {
        match self {
            Decoder::Json(d) => d.schema(),
            Decoder::Registry(d) => &d.schema,
        }
    }

    /// See [`RegistryDecoder::prepare`]; JSON needs no preparation.
    pub async fn prepare(
        &mut self,
        chunk: &RecordChunk,
        keep: &(dyn Fn(usize) -> bool + Sync),
    ) -> Result<Option<Evolution>, DecodeError> {
        match self {
            Decoder::Json(_) => Ok(None),
            Decoder::Registry(d) => d.prepare(chunk, keep).await,
        }
    }

    /// The table schema changed.
    pub fn set_schema(&mut self, schema: TableSchema) -> Result<(), DecodeError> {
        match self {
            Decoder::Json(d) => {
                **d = JsonDecoder::new(schema, d.batch_size)?;
                Ok(())
            }
            Decoder::Registry(d) => {
                d.set_schema(schema);
                Ok(())
            }
        }
    }

    /// Decode the kept records of `chunk`.
    pub fn decode(
        &mut self,
        chunk: &RecordChunk,
        keep: &(dyn Fn(usize) -> bool + Sync),
    ) -> Result<Decoded, DecodeError> {
        match self {
            Decoder::Json(d) => d.decode(chunk, keep),
            Decoder::Registry(d) => d.decode(chunk, keep),
        }
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
