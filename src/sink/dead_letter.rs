//! The dead-letter table: every rejected record, kept whole with the reason.
//!
//! Columns: `topic`, `partition`, `offset`, `timestamp` (Kafka's), `key`,
//! `headers`, `value` (the raw bytes), `error_kind` (`empty`, `framing`, `decode`,
//! `schema`, `transform`), `error` (the reason), `table` (where the record was
//! going) and `ingested_at`.
//!
//! Dead letters are written in batches with the window they belong to, never a
//! commit per record, and exactly once: a window's dead letters are committed to
//! this table *before* its rows are committed to the destination, with a `txn` per
//! partition (the same app ids as the destination's) holding the window's last
//! offset, under the same compare-and-swap as data commits (never moving it back).
//!
//! If the process dies between the two commits (or the rows' commit fails), the
//! replay re-reads the window, and rejection need not come out the same: a registry
//! that answered 40403 may know the schema now, or the reverse. So each record's
//! fate on the first pass is kept: the pipeline reads the offsets this table holds
//! above the destination's stored offset ([`offsets_above`]), and on the replay a
//! record among them is rejected again (never a row: it would be in both tables),
//! while a record not among them that is rejected now is written here even though
//! its offset is at or below this table's stored offset (never in neither).

use std::collections::BTreeSet;
use std::sync::Arc;

use deltalake::arrow::array::{ArrayRef, AsArray, TimestampMicrosecondArray};
use deltalake::arrow::array::{BinaryBuilder, RecordBatch, StringBuilder};
use deltalake::arrow::datatypes::Int64Type;
use deltalake::kernel::{DataType, StructField, StructType};
use deltalake::{DeltaTable, DeltaTableError};
use url::Url;

use crate::decode::{DecodeError, Rejected};
use crate::record::RecordChunk;
use crate::schema::MetadataColumns;
use crate::schema::TableSchema;
use crate::sink::table::{self, OpenTable, TableError};
use crate::sink::{Compression, StorageConfig, TableConfig};

/// The Kafka attributes, as the metadata-column machinery names them here.
fn metadata() -> MetadataColumns {
    MetadataColumns {
        topic: Some("topic".into()),
        partition: Some("partition".into()),
        offset: Some("offset".into()),
        timestamp: Some("timestamp".into()),
        key: Some("key".into()),
        headers: Some("headers".into()),
    }
}

fn record_fields() -> StructType {
    StructType::try_new([
        StructField::new("value", DataType::BINARY, true),
        StructField::new("error_kind", DataType::STRING, false),
        StructField::new("error", DataType::STRING, false),
        StructField::new("table", DataType::STRING, false),
        StructField::new("ingested_at", DataType::TIMESTAMP, false),
    ])
    .expect("static dead-letter schema is valid")
}

/// The dead-letter table's configuration.
pub fn table_config(uri: &Url) -> TableConfig {
    TableConfig {
        uri: uri.clone(),
        uri_template: None,
        schema: Some(record_fields()),
        schema_path: None,
        partition_by: Vec::new(),
        compression: Compression::Zstd(3),
        properties: Default::default(),
        metadata_columns: metadata(),
        row_group_rows: 128 * 1024,
        transform: Default::default(),
        upsert: None,
    }
}

/// Open (or create) the dead-letter table.
pub async fn open(uri: &Url, storage: &StorageConfig) -> Result<OpenTable, TableError> {
    table::open_or_create(&table_config(uri), storage, None).await
}

/// The batch of dead letters for `rejected` records of `chunk`, headed for `table_uri`.
pub fn batch(
    schema: &TableSchema,
    chunk: &RecordChunk,
    rejected: &[&Rejected],
    table_uri: &str,
) -> Result<RecordBatch, DecodeError> {
    let n = rejected.len();
    let mut value = BinaryBuilder::with_capacity(n, 0);
    let mut kind = StringBuilder::with_capacity(n, n * 8);
    let mut error = StringBuilder::with_capacity(n, n * 64);
    let mut table = StringBuilder::with_capacity(n, n * table_uri.len());
    for r in rejected {
        value.append_option(chunk.value(&chunk.records[r.index]));
        kind.append_value(r.kind.as_str());
        error.append_value(&r.reason);
        table.append_value(table_uri);
    }
    let now = chrono::Utc::now().timestamp_micros();
    let ingested: ArrayRef =
        Arc::new(TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC"));
    let values = RecordBatch::try_new(
        schema.record_arrow.clone(),
        vec![
            Arc::new(value.finish()),
            Arc::new(kind.finish()),
            Arc::new(error.finish()),
            Arc::new(table.finish()),
            ingested,
        ],
    )
    .map_err(DecodeError::Assemble)?;
    let rows: Vec<usize> = rejected.iter().map(|r| r.index).collect();
    crate::decode::append_metadata(schema, values, chunk, &rows)
}

/// The offsets of `tp`'s dead letters in `(after, upto]`: the records a window
/// rejected whose dead letters landed while its rows did not.
pub async fn offsets_above(
    table: &DeltaTable,
    tp: &crate::record::TopicPartition,
    after: Option<i64>,
    upto: i64,
) -> Result<BTreeSet<i64>, DeltaTableError> {
    // Topic names are [a-zA-Z0-9._-]: nothing to escape.
    let sql = format!(
        "SELECT \"offset\" FROM t WHERE topic = '{}' AND \"partition\" = {} AND \"offset\" > {} AND \"offset\" <= {upto}",
        tp.topic,
        tp.partition,
        after.unwrap_or(-1),
    );
    let mut out = BTreeSet::new();
    for b in table::query(table, &sql).await? {
        out.extend(b.column(0).as_primitive::<Int64Type>().iter().flatten());
    }
    Ok(out)
}
