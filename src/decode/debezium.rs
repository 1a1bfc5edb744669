//! Debezium change events to keyed changes, in Arrow.
//!
//! A Debezium envelope holds `before` and `after` (rows of the source table,
//! null where they do not apply), `op` (`c` create, `r` snapshot read, `u`
//! update, `d` delete) and `source` (connector metadata: `lsn`, `ts_ms`, ...).
//! A decoded batch of envelopes becomes the rows an upsert applies: `after` for
//! c/r/u, `before` (its key) for d, each marked deleted or not; chosen `source`
//! fields ride along as columns (for `order_by`). The JSON converter's embedded
//! schema form (`{"schema": ..., "payload": {envelope}}`) is the same once its
//! `payload` column is taken. `ExtractNewRecordState`'s flattened rows carry
//! `__deleted` (`"true"`) or `__op`; [`flattened`] reads those.
//!
//! An event that cannot be applied (an unknown op, or no row on the side the
//! op needs) is rejected with the reason, like any record that does not decode.
//!
//! Through a schema registry the envelope's schema is the producer's:
//! [`row_fields`] and [`flattened_row_fields`] give the source table's row in
//! it, which is what the Delta table holds.

use std::sync::Arc;

use deltalake::arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, StructArray,
};
use deltalake::arrow::compute::kernels::zip::zip;
use deltalake::arrow::compute::{cast, filter, filter_record_batch};
use deltalake::arrow::datatypes::{DataType, Field, Schema};
use deltalake::arrow::error::ArrowError;

use deltalake::kernel::{DataType as DeltaType, StructField, StructType};

use super::changes::{Changes, ChangesError, with_columns};

/// The changes of a batch of envelopes, and the rows (of the input batch) that
/// were rejected, with why.
#[derive(Debug)]
pub struct Flattened {
    /// The applicable events' rows, in input order.
    pub changes: Changes,
    /// Input rows that are not applicable changes.
    pub rejected: Vec<(usize, String)>,
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, ChangesError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| ChangesError::MissingField {
            field: name.to_owned(),
        })
}

fn strings(a: &ArrayRef) -> Result<StringArray, ChangesError> {
    let s = cast(a, &DataType::Utf8)?;
    s.as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| ChangesError::WrongType {
            field: "__deleted`/`__op".into(),
            expected: "a string",
        })
}

/// The table column that keeps a `source` field (for `order_by`).
pub fn source_column(field: &str) -> String {
    format!("_source_{field}")
}

/// The record schema to decode Debezium events with, for a table whose rows
/// have `record`'s fields: `before`, `after` and `op`, and `source` with the
/// (integer) `source_fields`, at the top or in `payload` (the JSON converter
/// with its schema embedded).
pub fn envelope_record(
    record: &StructType,
    source_fields: &[&str],
) -> Result<StructType, ChangesError> {
    let row = StructType::try_new(
        record
            .fields()
            .map(|f| StructField::new(f.name(), f.data_type().clone(), true)),
    )
    .map_err(|e| ChangesError::EnvelopeSchema(Box::new(e)))?;
    let source = StructType::try_new(
        source_fields
            .iter()
            .map(|f| StructField::new(*f, DeltaType::LONG, true)),
    )
    .map_err(|e| ChangesError::EnvelopeSchema(Box::new(e)))?;
    let envelope = || {
        let mut fields = vec![
            StructField::new("before", DeltaType::Struct(Box::new(row.clone())), true),
            StructField::new("after", DeltaType::Struct(Box::new(row.clone())), true),
            StructField::new("op", DeltaType::STRING, true),
        ];
        if !source_fields.is_empty() {
            fields.push(StructField::new(
                "source",
                DeltaType::Struct(Box::new(source.clone())),
                true,
            ));
        }
        fields
    };
    let payload =
        StructType::try_new(envelope()).map_err(|e| ChangesError::EnvelopeSchema(Box::new(e)))?;
    let mut fields = envelope();
    fields.push(StructField::new(
        "payload",
        DeltaType::Struct(Box::new(payload)),
        true,
    ));
    StructType::try_new(fields).map_err(|e| ChangesError::EnvelopeSchema(Box::new(e)))
}

/// The source table's row in a Debezium envelope schema: the `after` record
/// (or `before`'s, where the schema has no `after`), fields as the source
/// declares them. The reason when `envelope` is not a Debezium envelope.
pub fn row_fields(envelope: &StructType) -> Result<StructType, super::Reason> {
    let side = |name: &str| match envelope.field(name).map(|f| f.data_type()) {
        Some(DeltaType::Struct(row)) => Some(row.as_ref().clone()),
        _ => None,
    };
    match (
        envelope.field("op"),
        side("after").or_else(|| side("before")),
    ) {
        (Some(_), Some(row)) => Ok(row),
        (None, _) => Err("not a Debezium envelope: the schema has no `op` field".into()),
        (Some(_), None) => {
            Err("not a Debezium envelope: the schema has no `after` or `before` record".into())
        }
    }
}

/// The row of a flattened (`ExtractNewRecordState`) schema: its fields but
/// the markers Debezium adds (`__deleted`, `__op`, every `__` field), which
/// [`flattened`] reads and drops.
pub fn flattened_row_fields(record: &StructType) -> Result<StructType, super::Reason> {
    StructType::try_new(
        record
            .fields()
            .filter(|f| !f.name().starts_with("__"))
            .cloned(),
    )
    .map_err(|e| super::Reason(e.to_string()))
}

/// The envelope columns each row has: from `payload` where it has one.
fn unwrap_payload(batch: &RecordBatch) -> Result<RecordBatch, ChangesError> {
    let Some(payload) = batch.column_by_name("payload") else {
        return Ok(batch.clone());
    };
    let payload = payload
        .as_any()
        .downcast_ref::<StructArray>()
        .ok_or_else(|| ChangesError::WrongType {
            field: "payload".into(),
            expected: "a struct",
        })?;
    let inside: Vec<bool> = (0..payload.len()).map(|i| payload.is_valid(i)).collect();
    let inside = BooleanArray::from(inside);
    let schema = batch.schema();
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        if f.name() == "payload" {
            continue;
        }
        let column = match payload.column_by_name(f.name()) {
            Some(p) => zip(&inside, p, c)?,
            None => c.clone(),
        };
        fields.push(f.as_ref().clone().with_nullable(true));
        columns.push(column);
    }
    for (name, p) in ["before", "after", "op", "source"]
        .iter()
        .filter_map(|n| payload.column_by_name(n).map(|p| (n, p)))
    {
        if schema.column_with_name(name).is_none() {
            fields.push(Field::new(*name, p.data_type().clone(), true));
            columns.push(p.clone());
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Debezium envelopes (`before`, `after`, `op`, `source`; at the top or in a
/// `payload` column) to changes. `source_fields` are copied from `source` into
/// columns named by [`source_column`] (e.g. `_source_lsn` for `order_by`);
/// other top-level columns (the Kafka metadata) ride along. With
/// `keyed_elsewhere` (the key is the Kafka key) a delete without `before` is
/// applied all the same. A truncate (`t`) is rejected: it removes rows of every
/// partition at once, which no per-key change can say.
pub fn envelopes(
    batch: &RecordBatch,
    source_fields: &[&str],
    keyed_elsewhere: bool,
) -> Result<Flattened, ChangesError> {
    let batch = &unwrap_payload(batch)?;
    let op = strings(column(batch, "op")?)?;
    let before = column(batch, "before")?;
    let after = column(batch, "after")?;
    let mut rejected = Vec::new();
    let mut keep = Vec::with_capacity(batch.num_rows());
    let mut deleted = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let (ok, del) = match op.is_valid(i).then(|| op.value(i)) {
            Some("c" | "r" | "u") if after.is_valid(i) => (true, false),
            Some("d") if before.is_valid(i) || keyed_elsewhere => (true, true),
            Some("c" | "r" | "u") => {
                rejected.push((i, "change event has no `after` row".to_owned()));
                (false, false)
            }
            Some("d") => {
                rejected.push((i, "delete event has no `before` row (its key)".to_owned()));
                (false, false)
            }
            Some("t") => {
                rejected.push((
                    i,
                    "a truncate (op `t`) is not applied: it names no key; empty the table by \
                     hand (DELETE) if it should follow, or leave truncates out (Debezium's \
                     default skipped.operations=t)"
                        .to_owned(),
                ));
                (false, false)
            }
            Some(other) => {
                rejected.push((i, format!("unknown Debezium op `{other}`")));
                (false, false)
            }
            None => {
                rejected.push((i, "change event has no `op`".to_owned()));
                (false, false)
            }
        };
        keep.push(ok);
        deleted.push(del);
    }
    let is_delete = BooleanArray::from(deleted);
    let row = zip(&is_delete, before, after)?;
    let row =
        row.as_any()
            .downcast_ref::<StructArray>()
            .ok_or_else(|| ChangesError::WrongType {
                field: "before`/`after".into(),
                expected: "rows",
            })?;
    let mut rows = rows_of(row)?;
    if !source_fields.is_empty() {
        rows = with_source(rows, batch, source_fields)?;
    }
    rows = with_others(rows, batch)?;
    let keep = BooleanArray::from(keep);
    Ok(Flattened {
        changes: Changes::new(
            filter_record_batch(&rows, &keep)?,
            filter_bool(&is_delete, &keep)?,
        ),
        rejected,
    })
}

/// A struct column's rows as a batch, every field nullable (a null row's fields
/// read null; such rows are filtered out afterwards). `RecordBatch::from`
/// panics on a struct column with nulls.
fn rows_of(a: &StructArray) -> Result<RecordBatch, ChangesError> {
    let (fields, columns, _nulls) = a.clone().into_parts();
    let fields: Vec<Field> = fields
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

fn filter_bool(a: &BooleanArray, keep: &BooleanArray) -> Result<BooleanArray, ChangesError> {
    filter(a, keep)?
        .as_any()
        .downcast_ref::<BooleanArray>()
        .cloned()
        .ok_or_else(|| ArrowError::CastError("deleted flags".into()).into())
}

/// `rows` with `batch`'s columns that are not part of the envelope.
fn with_others(rows: RecordBatch, batch: &RecordBatch) -> Result<RecordBatch, ChangesError> {
    const ENVELOPE: [&str; 6] = ["before", "after", "op", "source", "payload", "ts_ms"];
    let schema = batch.schema();
    let extra = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .filter(|(f, _)| {
            !ENVELOPE.contains(&f.name().as_str()) && rows.column_by_name(f.name()).is_none()
        })
        .map(|(f, c)| (f.as_ref().clone().with_nullable(true), c.clone()));
    Ok(with_columns(&rows, extra)?)
}

fn with_source(
    rows: RecordBatch,
    batch: &RecordBatch,
    fields: &[&str],
) -> Result<RecordBatch, ChangesError> {
    let source = column(batch, "source")?
        .as_any()
        .downcast_ref::<StructArray>()
        .ok_or_else(|| ChangesError::WrongType {
            field: "source".into(),
            expected: "a struct",
        })?;
    let extra = fields
        .iter()
        .map(|name| {
            let c = source
                .column_by_name(name)
                .ok_or_else(|| ChangesError::MissingField {
                    field: format!("source.{name}"),
                })?;
            let column = source_column(name);
            Ok((Field::new(column, c.data_type().clone(), true), c.clone()))
        })
        .collect::<Result<Vec<_>, ChangesError>>()?;
    Ok(with_columns(&rows, extra)?)
}

/// Rows flattened by `ExtractNewRecordState`: deleted where `__deleted` is
/// `"true"` or `__op` is `d`; both columns are dropped from the rows.
pub fn flattened(batch: &RecordBatch) -> Result<Changes, ChangesError> {
    let flag = |name: &str, yes: &str| -> Result<Option<Vec<bool>>, ChangesError> {
        batch
            .column_by_name(name)
            .map(|c| {
                let s = strings(c)?;
                Ok((0..s.len())
                    .map(|i| s.is_valid(i) && s.value(i).eq_ignore_ascii_case(yes))
                    .collect())
            })
            .transpose()
    };
    let by_deleted = flag("__deleted", "true")?;
    let by_op = flag("__op", "d")?;
    let deleted: Vec<bool> = (0..batch.num_rows())
        .map(|i| by_deleted.as_ref().is_some_and(|d| d[i]) || by_op.as_ref().is_some_and(|o| o[i]))
        .collect();
    let keep: Vec<usize> = batch
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.name().starts_with("__"))
        .map(|(i, _)| i)
        .collect();
    Ok(Changes::new(
        batch.project(&keep)?,
        BooleanArray::from(deleted),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{AsArray, Int64Array};
    use deltalake::arrow::datatypes::Int64Type;
    use deltalake::arrow::json::ReaderBuilder;
    use deltalake::kernel::engine::arrow_conversion::TryIntoArrow as _;

    fn row_type() -> DataType {
        DataType::Struct(
            vec![
                Field::new("id", DataType::Int64, false),
                Field::new("name", DataType::Utf8, true),
            ]
            .into(),
        )
    }

    fn decode(schema: Schema, lines: &str) -> RecordBatch {
        ReaderBuilder::new(Arc::new(schema))
            .build(lines.as_bytes())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
    }

    fn envelope_schema() -> Schema {
        Schema::new(vec![
            Field::new("before", row_type(), true),
            Field::new("after", row_type(), true),
            Field::new("op", DataType::Utf8, true),
            Field::new(
                "source",
                DataType::Struct(vec![Field::new("lsn", DataType::Int64, true)].into()),
                true,
            ),
        ])
    }

    const EVENTS: &str = r#"{"before":null,"after":{"id":1,"name":"a"},"op":"c","source":{"lsn":10}}
{"before":null,"after":{"id":2,"name":"b"},"op":"r","source":{"lsn":11}}
{"before":{"id":1,"name":"a"},"after":{"id":1,"name":"a2"},"op":"u","source":{"lsn":12}}
{"before":{"id":2,"name":"b"},"after":null,"op":"d","source":{"lsn":13}}
{"before":null,"after":{"id":3,"name":"c"},"op":"t","source":{"lsn":14}}
{"before":null,"after":null,"op":"d","source":{"lsn":15}}
{"before":null,"after":null,"op":"u","source":{"lsn":16}}
"#;

    fn ids(c: &Changes) -> Vec<(i64, bool)> {
        let id = c.rows.column(0).as_primitive::<Int64Type>();
        (0..c.rows.num_rows())
            .map(|i| (id.value(i), c.deleted.value(i)))
            .collect()
    }

    #[test]
    fn envelopes_become_rows_marked_deleted_or_not_and_bad_events_are_rejected() {
        let f = envelopes(&decode(envelope_schema(), EVENTS), &["lsn"], false).unwrap();
        assert_eq!(
            ids(&f.changes),
            vec![(1, false), (2, false), (1, false), (2, true)]
        );
        let names = f.changes.rows.column(1).as_string::<i32>();
        assert_eq!(names.value(2), "a2", "an update takes `after`");
        let lsn = f.changes.rows.column_by_name("_source_lsn").unwrap();
        let lsn = lsn.as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(lsn.values().to_vec(), vec![10, 11, 12, 13]);
        let reasons: Vec<(usize, &str)> =
            f.rejected.iter().map(|(i, r)| (*i, r.as_str())).collect();
        assert_eq!(
            reasons,
            vec![
                (
                    4,
                    "a truncate (op `t`) is not applied: it names no key; empty the table by \
                     hand (DELETE) if it should follow, or leave truncates out (Debezium's \
                     default skipped.operations=t)"
                ),
                (5, "delete event has no `before` row (its key)"),
                (6, "change event has no `after` row"),
            ]
        );
    }

    #[test]
    fn the_embedded_schema_form_is_read_from_its_payload() {
        let schema = Schema::new(vec![Field::new(
            "payload",
            DataType::Struct(envelope_schema().fields().clone()),
            true,
        )]);
        let lines: String = EVENTS
            .lines()
            .take(4)
            .map(|l| format!("{{\"schema\":{{}},\"payload\":{l}}}\n"))
            .collect();
        let f = envelopes(&decode(schema, &lines), &[], false).unwrap();
        assert_eq!(
            ids(&f.changes),
            vec![(1, false), (2, false), (1, false), (2, true)]
        );
        assert!(f.rejected.is_empty());
    }

    #[test]
    fn flattened_rows_are_deleted_by_their_marker_columns() {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("__deleted", DataType::Utf8, true),
            Field::new("__op", DataType::Utf8, true),
        ]);
        let lines = r#"{"id":1,"name":"a","__deleted":"false","__op":"c"}
{"id":2,"name":null,"__deleted":"true","__op":"d"}
{"id":3,"name":"c","__op":"d"}
{"id":4,"name":"d"}
"#;
        let c = flattened(&decode(schema, lines)).unwrap();
        assert_eq!(ids(&c), vec![(1, false), (2, true), (3, true), (4, false)]);
        assert_eq!(c.rows.num_columns(), 2, "the marker columns are dropped");
    }

    #[test]
    fn the_decoding_schema_takes_both_forms_and_other_columns_ride_along() {
        let record = StructType::try_new(vec![
            StructField::new("id", DeltaType::LONG, false),
            StructField::new("name", DeltaType::STRING, true),
        ])
        .unwrap();
        let envelope = envelope_record(&record, &[]).unwrap();
        let arrow: Schema = (&envelope).try_into_arrow().unwrap();
        let mut fields: Vec<Field> = arrow.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("_offset", DataType::Int64, true));
        let lines = r#"{"before":null,"after":{"id":1,"name":"a"},"op":"c","_offset":7}
{"schema":{"type":"struct"},"payload":{"before":{"id":1},"after":null,"op":"d"},"_offset":8}
{"schema":{},"payload":{"before":null,"after":{"id":2,"name":"b"},"op":"u"},"_offset":9}
"#;
        let f = envelopes(&decode(Schema::new(fields), lines), &[], false).unwrap();
        assert!(f.rejected.is_empty(), "{:?}", f.rejected);
        assert_eq!(ids(&f.changes), vec![(1, false), (1, true), (2, false)]);
        let offsets = f.changes.rows.column_by_name("_offset").expect("carried");
        let offsets = offsets.as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(offsets.values().to_vec(), vec![7, 8, 9]);
    }

    #[test]
    fn a_registry_schema_gives_the_row_inside_its_envelope_or_says_why_not() {
        let kernel = |s: Schema| -> StructType {
            deltalake::kernel::engine::arrow_conversion::TryIntoKernel::try_into_kernel(&s).unwrap()
        };
        let row = row_fields(&kernel(envelope_schema())).unwrap();
        let names: Vec<&str> = row.fields().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "name"]);
        assert!(!row.field("id").unwrap().is_nullable());

        let only_before = Schema::new(vec![
            Field::new("before", row_type(), true),
            Field::new("op", DataType::Utf8, true),
        ]);
        assert_eq!(
            row_fields(&kernel(only_before)).unwrap().fields().count(),
            2
        );
        let no_op = Schema::new(vec![Field::new("after", row_type(), true)]);
        let why = row_fields(&kernel(no_op)).unwrap_err().0;
        assert!(why.contains("no `op`"), "{why}");
        let no_row = Schema::new(vec![
            Field::new("after", DataType::Utf8, true),
            Field::new("op", DataType::Utf8, true),
        ]);
        let why = row_fields(&kernel(no_row)).unwrap_err().0;
        assert!(why.contains("no `after` or `before` record"), "{why}");

        let flat = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("__deleted", DataType::Utf8, true),
            Field::new("__op", DataType::Utf8, true),
            Field::new("__source_ts_ms", DataType::Int64, true),
        ]);
        let names: Vec<String> = flattened_row_fields(&kernel(flat))
            .unwrap()
            .fields()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, ["id"]);
    }
}
