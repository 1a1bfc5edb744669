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
    let record = upsert_record(cfg, record).map_err(|e| TableError::Unsupported {
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

/// The record fields; for an upsert table its key columns required (a change
/// whose key is null is rejected before it is written) and, for
/// `order_by = "source.FIELD"` (Debezium), the nullable integer column that
/// keeps that field.
fn upsert_record(
    cfg: &TableConfig,
    record: &StructType,
) -> Result<StructType, deltalake::DeltaTableError> {
    let Some(upsert) = &cfg.upsert else {
        return Ok(record.clone());
    };
    let fields = record.fields().map(|f| {
        if upsert.key.contains(f.name()) {
            deltalake::kernel::StructField::new(f.name(), f.data_type().clone(), false)
                .with_metadata(f.metadata().clone())
        } else {
            f.clone()
        }
    });
    let kept = upsert
        .order_by
        .as_ref()
        .filter(|c| upsert.source_order.is_some() && record.field(c).is_none())
        .map(|c| deltalake::kernel::StructField::new(c, deltalake::kernel::DataType::LONG, true));
    Ok(StructType::try_new(fields.chain(kept))?)
}

pub(super) fn upsert_missing(cfg: &TableConfig, table: &StructType) -> Vec<String> {
    let Some(u) = &cfg.upsert else {
        return Vec::new();
    };
    u.key
        .iter()
        .chain(&u.order_by)
        .filter(|c| table.field(c).is_none())
        .map(|c| format!("upsert column `{c}` is missing from the table"))
        .chain(float_keys(&u.key, table))
        .collect()
}

/// Key columns of a floating-point type: -0.0 and 0.0 are one value to the
/// MERGE's join and two to the window's reduction (and NaN the other way
/// round), so one key could match twice, stopping the daemon, or never.
fn float_keys(key: &[String], table: &StructType) -> Vec<String> {
    use deltalake::kernel::{DataType, PrimitiveType};
    key.iter()
        .filter(|k| {
            table.field(k).is_some_and(|f| {
                matches!(
                    f.data_type(),
                    DataType::Primitive(PrimitiveType::Float | PrimitiveType::Double)
                )
            })
        })
        .map(|k| {
            format!(
                "upsert key column `{k}` is a floating-point column: -0.0 and 0.0, or NaNs, make \
                 one key match twice or never; key the table by an integer, decimal or string \
                 column"
            )
        })
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
