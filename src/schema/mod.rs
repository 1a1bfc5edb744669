//! Table schema: the record schema from the config plus the Kafka metadata columns,
//! in Delta form (for creating the table) and Arrow form (for decoding).
//!
//! The schema file uses the Delta/Spark JSON schema format, the one Spark prints with
//! `df.schema.json()`. Its `timestamp` type is UTC-adjusted microseconds; arrow sees
//! it as `Timestamp(Microsecond, "UTC")`. `timestamp_ntz` is accepted only when a
//! user writes it, because it raises the table protocol to reader 3 / writer 7,
//! which older Spark and some Athena setups cannot read.

pub mod evolve;

use std::sync::Arc;

use deltalake::arrow::datatypes::{Schema as ArrowSchema, SchemaRef};
use deltalake::kernel::engine::arrow_conversion::TryIntoArrow;
use deltalake::kernel::{ArrayType, DataType, PrimitiveType, StructField, StructType};

use serde::Deserialize;

/// `[table.metadata_columns]`: the column name for each Kafka attribute to store;
/// `None` leaves a column out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataColumns {
    /// Topic name (string).
    pub topic: Option<String>,
    /// Partition number (int).
    pub partition: Option<String>,
    /// Offset (long).
    pub offset: Option<String>,
    /// Record timestamp (timestamp, UTC, microseconds).
    pub timestamp: Option<String>,
    /// Record key (binary).
    pub key: Option<String>,
    /// Record headers (array of struct<key: string, value: binary>).
    pub headers: Option<String>,
}

impl MetadataColumns {
    /// The configured names, in column order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        [
            &self.topic,
            &self.partition,
            &self.offset,
            &self.timestamp,
            &self.key,
            &self.headers,
        ]
        .into_iter()
        .filter_map(|c| c.as_deref())
    }
}

/// Errors building a schema.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The file is not a Delta/Spark schema JSON document.
    #[error(
        "not a Delta/Spark schema JSON document ({0}); expected {{\"type\":\"struct\",\"fields\":[{{\"name\":..,\"type\":..,\"nullable\":..,\"metadata\":{{}}}}]}}"
    )]
    Json(#[from] serde_json::Error),
    /// The schema has no fields.
    #[error("the schema has no fields")]
    Empty,
    /// The Delta schema could not be assembled.
    #[error("invalid schema: {0}")]
    Delta(String),
    /// The schema has no Arrow equivalent.
    #[error("cannot convert the schema to Arrow: {0}")]
    Arrow(#[from] deltalake::arrow::error::ArrowError),
}

/// Parse a Delta/Spark schema JSON document.
pub fn parse_schema_json(text: &str) -> Result<StructType, SchemaError> {
    let schema: StructType = serde_json::from_str(text)?;
    if schema.fields().next().is_none() {
        return Err(SchemaError::Empty);
    }
    Ok(schema)
}

/// The Delta type of each metadata column.
fn metadata_fields(columns: &MetadataColumns) -> Vec<StructField> {
    let mut fields = Vec::new();
    if let Some(n) = &columns.topic {
        fields.push(StructField::new(n, DataType::STRING, false));
    }
    if let Some(n) = &columns.partition {
        fields.push(StructField::new(n, DataType::INTEGER, false));
    }
    if let Some(n) = &columns.offset {
        fields.push(StructField::new(n, DataType::LONG, false));
    }
    if let Some(n) = &columns.timestamp {
        fields.push(StructField::new(n, DataType::TIMESTAMP, true));
    }
    if let Some(n) = &columns.key {
        fields.push(StructField::new(n, DataType::BINARY, true));
    }
    if let Some(n) = &columns.headers {
        fields.push(StructField::new(n, headers_type(), true));
    }
    fields
}

/// `array<struct<key: string, value: binary>>`: headers keep their order and may
/// repeat a key, which a map type could not represent.
pub fn headers_type() -> DataType {
    let entry = StructType::try_new([
        StructField::new("key", DataType::STRING, false),
        StructField::new("value", DataType::BINARY, true),
    ])
    .expect("static header struct is valid");
    DataType::Array(Box::new(ArrayType::new(
        DataType::Struct(Box::new(entry)),
        false,
    )))
}

/// The record schema, the metadata columns and the derived columns, in both type
/// systems.
#[derive(Debug, Clone)]
pub struct TableSchema {
    /// The table's schema: record fields, metadata columns, derived columns.
    pub delta: StructType,
    /// `delta` as Arrow.
    pub arrow: SchemaRef,
    /// The record fields alone as Arrow (what the value decoder produces).
    pub record_arrow: SchemaRef,
    /// `arrow` without the derived columns: what decoding produces, and what the
    /// derived columns' expressions see.
    pub decoded_arrow: SchemaRef,
    /// Metadata column names.
    pub metadata: MetadataColumns,
    /// Derived column names.
    pub derived: Vec<String>,
}

impl TableSchema {
    /// Build from the record schema and the metadata columns.
    pub fn new(record: &StructType, metadata: &MetadataColumns) -> Result<Self, SchemaError> {
        let fields: Vec<StructField> = record
            .fields()
            .cloned()
            .chain(metadata_fields(metadata))
            .collect();
        let delta = StructType::try_new(fields).map_err(|e| SchemaError::Delta(e.to_string()))?;
        Self::from_table(&delta, metadata, &[])
    }

    /// Append derived columns (at creation).
    pub fn with_derived(self, derived: Vec<StructField>) -> Result<Self, SchemaError> {
        let names: Vec<String> = derived.iter().map(|f| f.name().clone()).collect();
        let delta = StructType::try_new(self.delta.fields().cloned().chain(derived))
            .map_err(|e| SchemaError::Delta(e.to_string()))?;
        Self::from_table(&delta, &self.metadata, &names)
    }

    /// Build from an existing table's schema, keeping its column order (columns added
    /// by schema evolution come after the metadata columns): record fields are those
    /// that are neither metadata nor derived columns.
    pub fn from_table(
        table: &StructType,
        metadata: &MetadataColumns,
        derived: &[String],
    ) -> Result<Self, SchemaError> {
        let meta: Vec<&str> = metadata.names().collect();
        let is_derived = |f: &StructField| derived.contains(f.name());
        let record = StructType::try_new(
            table
                .fields()
                .filter(|f| !meta.contains(&f.name().as_str()) && !is_derived(f))
                .cloned(),
        )
        .map_err(|e| SchemaError::Delta(e.to_string()))?;
        let decoded = StructType::try_new(table.fields().filter(|f| !is_derived(f)).cloned())
            .map_err(|e| SchemaError::Delta(e.to_string()))?;
        let arrow: ArrowSchema = table.try_into_arrow()?;
        let record_arrow: ArrowSchema = (&record).try_into_arrow()?;
        let decoded_arrow: ArrowSchema = (&decoded).try_into_arrow()?;
        Ok(Self {
            delta: table.clone(),
            arrow: Arc::new(arrow),
            record_arrow: Arc::new(record_arrow),
            decoded_arrow: Arc::new(decoded_arrow),
            metadata: metadata.clone(),
            derived: derived.to_vec(),
        })
    }

    /// Column names a producer field may not take: metadata and derived columns.
    pub fn reserved(&self) -> Vec<&str> {
        self.metadata
            .names()
            .chain(self.derived.iter().map(String::as_str))
            .collect()
    }

    /// Whether any column needs `timestamp_ntz` (protocol reader 3 / writer 7).
    pub fn uses_timestamp_ntz(&self) -> bool {
        fn walk(t: &DataType) -> bool {
            match t {
                DataType::Primitive(PrimitiveType::TimestampNtz) => true,
                DataType::Struct(s) => s.fields().any(|f| walk(f.data_type())),
                DataType::Array(a) => walk(a.element_type()),
                DataType::Map(m) => walk(m.key_type()) || walk(m.value_type()),
                _ => false,
            }
        }
        self.delta.fields().any(|f| walk(f.data_type()))
    }
}

#[cfg(test)]
mod tests {
    use deltalake::arrow::datatypes::{DataType as A, TimeUnit};

    use super::*;

    const SCHEMA: &str = r#"{"type":"struct","fields":[
        {"name":"id","type":"long","nullable":false,"metadata":{}},
        {"name":"ts","type":"timestamp","nullable":true,"metadata":{}},
        {"name":"amount","type":"decimal(12,2)","nullable":true,"metadata":{}},
        {"name":"tags","type":{"type":"array","elementType":"string","containsNull":true},"nullable":true,"metadata":{}}
    ]}"#;

    fn all_metadata() -> MetadataColumns {
        MetadataColumns {
            topic: Some("_topic".into()),
            partition: Some("_partition".into()),
            offset: Some("_offset".into()),
            timestamp: Some("_ts".into()),
            key: Some("_key".into()),
            headers: Some("_headers".into()),
        }
    }

    #[test]
    fn timestamps_are_utc_micros_and_metadata_is_appended() {
        let record = parse_schema_json(SCHEMA).unwrap();
        let s = TableSchema::new(&record, &all_metadata()).unwrap();
        let utc = A::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        assert_eq!(s.arrow.field_with_name("ts").unwrap().data_type(), &utc);
        assert_eq!(s.arrow.field_with_name("_ts").unwrap().data_type(), &utc);
        assert_eq!(s.arrow.fields().len(), 10);
        assert_eq!(s.record_arrow.fields().len(), 4);
        assert!(!s.uses_timestamp_ntz());
        assert_eq!(
            s.arrow.field_with_name("amount").unwrap().data_type(),
            &A::Decimal128(12, 2)
        );
    }

    #[test]
    fn from_table_splits_record_and_metadata() {
        let record = parse_schema_json(SCHEMA).unwrap();
        let s = TableSchema::new(&record, &all_metadata()).unwrap();
        let again = TableSchema::from_table(&s.delta, &all_metadata(), &[]).unwrap();
        assert_eq!(again.record_arrow, s.record_arrow);
        assert_eq!(again.arrow, s.arrow);
    }

    #[test]
    fn malformed_schema_says_what_is_expected() {
        let err = parse_schema_json(r#"{"fields": 3}"#).unwrap_err();
        assert!(err.to_string().contains("Delta/Spark schema JSON"), "{err}");
        assert!(matches!(
            parse_schema_json(r#"{"type":"struct","fields":[]}"#),
            Err(SchemaError::Empty)
        ));
    }
}
