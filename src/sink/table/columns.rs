//! The columns a table must have: the record fields (with the Debezium
//! `source` field kept for `order_by`), the metadata and derived columns, and
//! the upsert key.

use deltalake::kernel::StructType;

use super::TableError;
use crate::schema::TableSchema;
use crate::sink::TableConfig;

/// The table schema to create for `record`: record fields, metadata columns, then
/// the derived columns typed by their expressions.
pub(super) fn wanted_schema(
    cfg: &TableConfig,
    record: &StructType,
) -> Result<TableSchema, TableError> {
    let schema_err = |source| TableError::Schema {
        uri: cfg.uri.to_string(),
        source,
    };
    let record = with_source_order(cfg, record).map_err(|e| TableError::Unsupported {
        uri: cfg.uri.to_string(),
        message: e.to_string(),
    })?;
    let base = TableSchema::new(&record, &cfg.metadata_columns).map_err(schema_err)?;
    let derived = crate::decode::transform::derived_fields(&cfg.transform, &base.decoded_arrow)
        .map_err(|reason| TableError::Unsupported {
            uri: cfg.uri.to_string(),
            message: reason.0,
        })?;
    base.with_derived(derived).map_err(schema_err)
}

/// The record fields and, for `order_by = "source.FIELD"` (Debezium), the
/// nullable integer column that keeps that field.
fn with_source_order(
    cfg: &TableConfig,
    record: &StructType,
) -> Result<StructType, deltalake::DeltaTableError> {
    let Some(column) = cfg
        .upsert
        .as_ref()
        .filter(|u| u.source_order.is_some())
        .and_then(|u| u.order_by.as_ref())
        .filter(|c| record.field(c).is_none())
    else {
        return Ok(record.clone());
    };
    let kept = deltalake::kernel::StructField::new(column, deltalake::kernel::DataType::LONG, true);
    Ok(StructType::try_new(record.fields().cloned().chain([kept]))?)
}

pub(super) fn upsert_missing(cfg: &TableConfig, table: &StructType) -> Vec<String> {
    cfg.upsert
        .iter()
        .flat_map(|u| u.key.iter().chain(&u.order_by))
        .filter(|c| table.field(c).is_none())
        .map(|c| format!("upsert column `{c}` is missing from the table"))
        .collect()
}

pub(super) fn derived_missing<'a>(cfg: &'a TableConfig, table: &StructType) -> Vec<&'a str> {
    cfg.transform
        .columns
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| table.field(n).is_none())
        .collect()
}
