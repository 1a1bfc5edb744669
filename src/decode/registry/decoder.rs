//! Records framed with a registry schema id: fetch each writer schema once,
//! evolve the table when one needs it, and decode runs of records of one schema.
//!
//! Records that hold an envelope (Debezium change events, whole or flattened)
//! are judged by the row inside it: the table takes the `after` record's
//! fields, and the records decode into the envelope around the table's row
//! (see [`crate::decode::envelope::envelope_schema`]).

use crate::decode::envelope::Envelope;
use crate::decode::*;

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

/// Records that hold change events: what their rows are wrapped in.
#[derive(Debug)]
struct Enveloped {
    envelope: Envelope,
    /// Debezium's `source` field kept for `order_by`.
    source_order: Option<String>,
    /// What the envelopes decode into, for the table's current schema.
    decoded: TableSchema,
}

impl Enveloped {
    fn new(
        schema: &TableSchema,
        envelope: Envelope,
        source_order: Option<String>,
    ) -> Result<Option<Self>, DecodeError> {
        let decoded =
            crate::decode::envelope::envelope_schema(schema, envelope, source_order.as_deref())?;
        Ok(decoded.map(|decoded| Self {
            envelope,
            source_order,
            decoded,
        }))
    }
}

/// Decodes Confluent-framed records of a registry format, one decoder per schema
/// id, and reshapes every batch into the table's schema.
pub struct RegistryDecoder {
    registry: Registry,
    kind: SchemaKind,
    schema: TableSchema,
    envelope: Option<Enveloped>,
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
            envelope: None,
            batch_size: batch_size.max(1),
            on_incompatible,
            writers: HashMap::new(),
            fits: HashSet::new(),
        }
    }

    /// Records hold `envelope` (with `source_order` kept for `order_by`): the
    /// table is judged by, and takes, the row inside it.
    pub fn with_envelope(
        mut self,
        envelope: Envelope,
        source_order: Option<&str>,
    ) -> Result<Self, DecodeError> {
        self.envelope = Enveloped::new(&self.schema, envelope, source_order.map(str::to_owned))?;
        Ok(self)
    }

    /// What records decode into: the table's columns, or the envelope around them.
    fn target(&self) -> &TableSchema {
        self.envelope.as_ref().map_or(&self.schema, |e| &e.decoded)
    }

    /// The table's record fields in a producer schema (the row inside an
    /// envelope); the reason when the schema does not hold the envelope.
    fn rows_of(&self, producer: &StructType) -> Result<StructType, Reason> {
        match &self.envelope {
            Some(e) => e.envelope.rows_of(producer),
            None => Ok(producer.clone()),
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
            let producer = match self.rows_of(producer) {
                Ok(rows) => rows,
                Err(reason) => {
                    let reason = format!("schema id {id}: {reason}");
                    tracing::error!(schema_id = id, %reason, "records with this schema go to dead letters");
                    self.writers.insert(id, Writer::Rejected(reason));
                    continue;
                }
            };
            match fit(&self.schema.delta, &producer, &self.schema.reserved()) {
                Fit::Fits => {
                    self.fits.insert(id);
                }
                Fit::Evolve { changes, .. } => {
                    return Ok(Some(Evolution {
                        schema_id: id,
                        producer,
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
                    Err(reason) => Writer::Rejected(reason.0),
                })
            }
            Err(e @ RegistryError::NotFound { .. }) => Ok(Writer::Rejected(e.to_string())),
            Err(e @ RegistryError::Invalid(_)) => Ok(Writer::Rejected(e.to_string())),
            Err(e) => Err(DecodeError::Registry(e)),
        }
    }

    /// The table schema records are decoded into.
    pub fn schema(&self) -> &TableSchema {
        &self.schema
    }

    /// The table schema changed (this worker or another evolved it): decode into
    /// `schema` from now on.
    pub fn set_schema(&mut self, schema: TableSchema) -> Result<(), DecodeError> {
        if let Some(e) = self.envelope.take() {
            self.envelope = Enveloped::new(&schema, e.envelope, e.source_order)?;
        }
        self.schema = schema;
        self.fits.clear();
        Ok(())
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
                        reason: reason.0,
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
        let target = self.target();
        let values =
            concat_batches(&target.record_arrow, &batches).map_err(DecodeError::Assemble)?;
        let batch = append_metadata(target, values, chunk, &rows)?;
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
            _ => Err(Reason::from(format!(
                "schema id {id} was not prepared (a bug)"
            ))),
        };
        let out = match out {
            Ok(out) => out,
            Err(reason) => {
                reject_all(rejected, RejectKind::Decode, &reason.0);
                return Ok(());
            }
        };
        rejected.extend(out.bad.into_iter().map(|(k, reason)| Rejected {
            index: run[k],
            kind: RejectKind::Decode,
            reason,
        }));
        let target = self.target().record_arrow.clone();
        align_run(
            &target,
            (out.batches, out.good),
            run,
            rows,
            rejected,
            batches,
        );
        Ok(())
    }
}

/// Reshape a decoded run's batches into the table's record schema; rows that
/// cannot be written to the table are rejected with the reason.
fn align_run(
    target: &deltalake::arrow::datatypes::SchemaRef,
    (decoded, good): (Vec<RecordBatch>, Vec<usize>),
    run: &[usize],
    rows: &mut Vec<usize>,
    rejected: &mut Vec<Rejected>,
    batches: &mut Vec<RecordBatch>,
) {
    let mut good = good.into_iter();
    for b in decoded {
        let positions: Vec<usize> = good.by_ref().take(b.num_rows()).collect();
        let columns: Vec<_> = b
            .schema_ref()
            .fields()
            .iter()
            .cloned()
            .zip(b.columns().iter().cloned())
            .collect();
        match align_columns(&columns, target.fields(), b.num_rows()).and_then(|cols| {
            RecordBatch::try_new(target.clone(), cols).map_err(|e| Mismatch::from(e.to_string()))
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
}

fn writer_for(
    schema: &crate::decode::registry::Schema,
    imports: &[(String, String)],
    batch_size: usize,
) -> Result<Writer, Reason> {
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
) -> Result<StructType, Reason> {
    writer_for(schema, imports, 1)?
        .delta()
        .cloned()
        .ok_or_else(|| Reason(format!("schema id {} cannot be decoded", schema.id)))
}
