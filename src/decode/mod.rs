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

pub mod changes;
pub mod debezium;
pub mod envelope;
mod json;
mod metadata;
pub mod options;
pub mod registry;
pub mod segment;
mod tombstones;
pub mod transform;

pub use json::JsonDecoder;
pub(crate) use json::feed_one;
pub(crate) use metadata::append_metadata;
pub use options::{DecodeConfig, Format, OnError};
pub use registry::decoder::{Evolution, RegistryDecoder, record_schema};

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
use crate::schema::evolve::{Fit, Mismatch, align_columns, fit};

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

/// Why a record (or a run of records, or a schema) cannot be decoded: the reason a
/// rejection carries into the dead-letter table. Never worth retrying: the same
/// bytes fail the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Reason(pub String);

impl From<String> for Reason {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Reason {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
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
    /// A table column the decoded values cannot fill as the schema says (a
    /// bug, not bad input).
    #[error("table column `{column}` {problem}")]
    Layout {
        /// The column.
        column: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The schema registry failed or refused us.
    #[error(transparent)]
    Registry(RegistryError),
    /// The table's schema does not make an upsert envelope's schema.
    #[error("cannot decode the table's change events: {0}")]
    Envelope(#[source] changes::ChangesError),
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

/// The value decoder a pipeline uses.
#[derive(Debug)]
pub enum Decoder {
    /// Plain JSON against a schema file.
    Json(Box<JsonDecoder>),
    /// A registry format.
    Registry(Box<RegistryDecoder>),
}

impl Decoder {
    /// Give back what decoding kept in memory (the JSON decoder's tape; the
    /// registry decoders keep nothing that grows with the records).
    pub fn release(&mut self) {
        if let Decoder::Json(d) = self {
            d.release();
        }
    }

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

    /// Records hold `envelope`: a registry decoder reads the envelopes itself
    /// (see [`RegistryDecoder::with_envelope`]); JSON envelopes are read by a
    /// decoder of their own ([`changes::envelope_decoder`]).
    pub fn with_envelope(
        self,
        envelope: envelope::Envelope,
        source_order: Option<&str>,
    ) -> Result<Self, DecodeError> {
        Ok(match self {
            Decoder::Registry(d) => {
                Decoder::Registry(Box::new(d.with_envelope(envelope, source_order)?))
            }
            json => json,
        })
    }

    /// Whether [`Self::decode`] reads the records' envelopes (a registry
    /// format) rather than rows only.
    pub fn reads_envelopes(&self) -> bool {
        matches!(self, Decoder::Registry(_))
    }

    /// The table schema batches come out in.
    pub fn schema(&self) -> &TableSchema {
        match self {
            Decoder::Json(d) => d.schema(),
            Decoder::Registry(d) => d.schema(),
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
                **d = JsonDecoder::new(schema, d.batch_size())?;
                Ok(())
            }
            Decoder::Registry(d) => d.set_schema(schema),
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
