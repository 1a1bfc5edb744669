//! Producer schemas meet table schemas: deriving a Delta schema from what a format
//! decoder produces, deciding whether a new producer schema fits the table (as is,
//! after evolving the table, or not at all), and reshaping decoded batches into the
//! table's exact Arrow schema.
//!
//! The rules, which hold for every format:
//!
//! - A field the table lacks becomes a new nullable column (earlier rows read null).
//! - A column the producer no longer sends is filled with nulls; a required column
//!   is made nullable first ("a field made optional"), as is any nested field or
//!   element that starts arriving as null.
//! - A producer type narrower than the column is widened on write (int into long,
//!   float into double, int into double, decimal(p, s) into a decimal that holds
//!   every value of it). Table columns themselves are never retyped: without the
//!   `typeWidening` table feature (which Athena and most readers lack) Delta forbids
//!   it, so a producer type wider than the column is an incompatible change.
//! - Anything else (string where the column is long, a struct where it is a list)
//!   is incompatible, and the message names the field.
//!
//! The table's column order is kept: new columns go at the end.

use std::sync::Arc;

use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeBinaryArray, ListArray, MapArray, StringBuilder,
    StructArray, new_null_array,
};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType as A, Field, FieldRef, Fields, TimeUnit};
use deltalake::kernel::{ArrayType, DataType, MapType, PrimitiveType, StructField, StructType};

/// Field metadata key Arrow uses for extension types.
const EXTENSION_NAME: &str = "ARROW:extension:name";

/// Why a producer schema (or a value of it) does not fit the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Mismatch(pub String);

impl From<String> for Mismatch {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// The Delta type for an Arrow field a format decoder produced. `path` names the
/// field in errors.
pub fn delta_type(field: &Field, path: &str) -> Result<DataType, Mismatch> {
    let uuid = field
        .metadata()
        .get(EXTENSION_NAME)
        .is_some_and(|n| n == "arrow.uuid");
    Ok(match field.data_type() {
        A::Boolean => DataType::BOOLEAN,
        A::Int8 => DataType::BYTE,
        A::Int16 => DataType::SHORT,
        A::Int32 | A::UInt8 | A::UInt16 => DataType::INTEGER,
        A::Int64 | A::UInt32 => DataType::LONG,
        A::Float16 | A::Float32 => DataType::FLOAT,
        A::Float64 => DataType::DOUBLE,
        A::Utf8 | A::LargeUtf8 | A::Utf8View => DataType::STRING,
        A::FixedSizeBinary(16) if uuid => DataType::STRING,
        A::Binary | A::LargeBinary | A::BinaryView | A::FixedSizeBinary(_) => DataType::BINARY,
        A::Date32 | A::Date64 => DataType::DATE,
        A::Timestamp(_, Some(_)) => DataType::TIMESTAMP,
        A::Timestamp(_, None) => DataType::TIMESTAMP_NTZ,
        // Delta has no time-of-day type: microseconds since midnight.
        A::Time32(_) | A::Time64(_) => DataType::LONG,
        A::Decimal128(p, s) | A::Decimal64(p, s) | A::Decimal32(p, s) if *s >= 0 && *p <= 38 => {
            DataType::decimal(*p, *s as u8)
                .map_err(|e| Mismatch::from(format!("field `{path}`: {e}")))?
        }
        A::Dictionary(_, v) if matches!(v.as_ref(), A::Utf8 | A::LargeUtf8) => DataType::STRING,
        A::List(f) | A::LargeList(f) => DataType::Array(Box::new(ArrayType::new(
            delta_type(f, &format!("{path}[]"))?,
            f.is_nullable(),
        ))),
        A::Map(entries, _) => {
            let A::Struct(kv) = entries.data_type() else {
                return Err(Mismatch::from(format!(
                    "field `{path}`: map entries are not a struct"
                )));
            };
            DataType::Map(Box::new(MapType::new(
                delta_type(&kv[0], &format!("{path}.key"))?,
                delta_type(&kv[1], &format!("{path}.value"))?,
                kv[1].is_nullable(),
            )))
        }
        A::Struct(fields) => DataType::Struct(Box::new(delta_struct(fields, path)?)),
        other => {
            return Err(Mismatch::from(format!(
                "field `{path}`: {other} has no Delta equivalent (a union of several \
                 non-null types, a duration or an interval); change the producer schema"
            )));
        }
    })
}

/// The Delta struct for Arrow fields.
pub fn delta_struct(fields: &Fields, prefix: &str) -> Result<StructType, Mismatch> {
    let out = fields
        .iter()
        .map(|f| {
            let path = join(prefix, f.name());
            Ok(StructField::new(
                f.name(),
                delta_type(f, &path)?,
                f.is_nullable(),
            ))
        })
        .collect::<Result<Vec<_>, Mismatch>>()?;
    StructType::try_new(out).map_err(|e| Mismatch::from(e.to_string()))
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// How a producer schema fits the table.
#[derive(Debug, Clone, PartialEq)]
pub enum Fit {
    /// Records can be written as they are (with widening and null filling).
    Fits,
    /// The table must change first: the new full table schema and what changes.
    Evolve {
        /// The table's schema after the change.
        schema: StructType,
        /// One line per change, for the log and commit history.
        changes: Vec<String>,
    },
    /// The producer schema cannot be written to the table.
    Incompatible(String),
}

/// Decide how `producer` (record fields) fits `table` (the full table schema,
/// metadata columns included; `reserved` names those so a producer field cannot
/// collide with one).
pub fn fit(table: &StructType, producer: &StructType, reserved: &[&str]) -> Fit {
    for f in producer.fields() {
        if reserved.contains(&f.name().as_str()) {
            return Fit::Incompatible(format!(
                "field `{}` has the name of a Kafka metadata column; rename one of them",
                f.name()
            ));
        }
    }
    let mut changes = Vec::new();
    match merge_struct(table, producer, "", &mut changes, reserved) {
        Err(reason) => Fit::Incompatible(reason.0),
        Ok(_) if changes.is_empty() => Fit::Fits,
        Ok(schema) => Fit::Evolve { schema, changes },
    }
}

fn merge_struct(
    table: &StructType,
    producer: &StructType,
    prefix: &str,
    changes: &mut Vec<String>,
    keep: &[&str],
) -> Result<StructType, Mismatch> {
    let mut out = Vec::new();
    for t in table.fields() {
        let path = join(prefix, t.name());
        match producer.field(t.name()) {
            Some(p) => {
                let ty = merge_type(t.data_type(), p.data_type(), &path, changes)?;
                let nullable = t.is_nullable() || p.is_nullable();
                if nullable && !t.is_nullable() {
                    changes.push(format!("`{path}` made nullable"));
                }
                out.push(
                    StructField::new(t.name(), ty, nullable).with_metadata(t.metadata().clone()),
                );
            }
            None => {
                if !t.is_nullable() && !keep.contains(&t.name().as_str()) {
                    changes.push(format!("`{path}` is no longer sent: made nullable"));
                    out.push(
                        StructField::new(t.name(), t.data_type().clone(), true)
                            .with_metadata(t.metadata().clone()),
                    );
                } else {
                    out.push(t.clone());
                }
            }
        }
    }
    for p in producer.fields() {
        if table.field(p.name()).is_none() {
            let path = join(prefix, p.name());
            changes.push(format!("new column `{path}` {}", type_name(p.data_type())));
            out.push(StructField::new(p.name(), p.data_type().clone(), true));
        }
    }
    StructType::try_new(out).map_err(|e| Mismatch::from(e.to_string()))
}

fn merge_type(
    table: &DataType,
    producer: &DataType,
    path: &str,
    changes: &mut Vec<String>,
) -> Result<DataType, Mismatch> {
    use DataType as D;
    match (table, producer) {
        (D::Struct(t), D::Struct(p)) => {
            Ok(D::Struct(Box::new(merge_struct(t, p, path, changes, &[])?)))
        }
        (D::Array(t), D::Array(p)) => {
            let element = merge_type(
                t.element_type(),
                p.element_type(),
                &format!("{path}[]"),
                changes,
            )?;
            let contains_null = t.contains_null() || p.contains_null();
            if contains_null && !t.contains_null() {
                changes.push(format!("`{path}` elements made nullable"));
            }
            Ok(D::Array(Box::new(ArrayType::new(element, contains_null))))
        }
        (D::Map(t), D::Map(p)) => {
            if t.key_type() != p.key_type() {
                return Err(incompatible(path, table, producer));
            }
            let value = merge_type(
                t.value_type(),
                p.value_type(),
                &format!("{path}.value"),
                changes,
            )?;
            let value_null = t.value_contains_null() || p.value_contains_null();
            if value_null && !t.value_contains_null() {
                changes.push(format!("`{path}` values made nullable"));
            }
            Ok(D::Map(Box::new(MapType::new(
                t.key_type().clone(),
                value,
                value_null,
            ))))
        }
        (D::Primitive(t), D::Primitive(p)) if t == p || widens(p, t) => Ok(table.clone()),
        _ => Err(incompatible(path, table, producer)),
    }
}

/// Whether every value of `from` is exactly a value of `to`.
fn widens(from: &PrimitiveType, to: &PrimitiveType) -> bool {
    use PrimitiveType as P;
    match (from, to) {
        (P::Byte, P::Short | P::Integer | P::Long | P::Double)
        | (P::Short, P::Integer | P::Long | P::Double)
        | (P::Integer, P::Long | P::Double)
        | (P::Float, P::Double)
        | (P::Date, P::Timestamp | P::TimestampNtz) => true,
        (P::Decimal(f), P::Decimal(t)) => {
            t.scale() >= f.scale() && (t.precision() - t.scale()) >= (f.precision() - f.scale())
        }
        _ => false,
    }
}

fn incompatible(path: &str, table: &DataType, producer: &DataType) -> Mismatch {
    Mismatch(format!(
        "field `{path}`: the producer sends {} but the table column is {}; Delta cannot \
         change a column's type, so this is an incompatible schema change",
        type_name(producer),
        type_name(table)
    ))
}

/// A short type name: `long`, `decimal(10,2)`, `struct`, `array<string>`.
pub fn type_name(t: &DataType) -> String {
    match t {
        DataType::Primitive(p) => p.to_string(),
        DataType::Array(a) => format!("array<{}>", type_name(a.element_type())),
        DataType::Map(m) => format!(
            "map<{},{}>",
            type_name(m.key_type()),
            type_name(m.value_type())
        ),
        DataType::Struct(_) => "struct".into(),
        other => format!("{other:?}"),
    }
}

/// Reshape `array` into `target`: widen, fill missing struct fields with nulls,
/// convert what Delta stores differently (enums, UUIDs, times, millisecond
/// timestamps), and take the table's field names and nullability.
pub fn align(array: &ArrayRef, target: &Field, path: &str) -> Result<ArrayRef, Mismatch> {
    let from = array.data_type();
    let to = target.data_type();
    if from == to {
        return Ok(array.clone());
    }
    let fail = |e: &dyn std::fmt::Display| {
        Mismatch(format!("field `{path}`: cannot write {from} as {to}: {e}"))
    };
    match (from, to) {
        (A::Struct(_), A::Struct(fields)) => {
            let s = array.as_struct();
            let mut children = Vec::with_capacity(fields.len());
            for f in fields {
                let child_path = join(path, f.name());
                children.push(match s.column_by_name(f.name()) {
                    Some(c) => align(c, f, &child_path)?,
                    None => new_null_array(f.data_type(), s.len()),
                });
            }
            let out = StructArray::try_new(fields.clone(), children, s.nulls().cloned())
                .map_err(|e| fail(&e))?;
            Ok(Arc::new(out))
        }
        (A::List(_), A::List(element)) => {
            let l = array.as_list::<i32>();
            let values = align(l.values(), element, &format!("{path}[]"))?;
            let out = ListArray::try_new(
                element.clone(),
                l.offsets().clone(),
                values,
                l.nulls().cloned(),
            )
            .map_err(|e| fail(&e))?;
            Ok(Arc::new(out))
        }
        (A::Map(_, _), A::Map(entries, ordered)) => {
            let m = array.as_map();
            let entries_struct: ArrayRef = Arc::new(m.entries().clone());
            let aligned = align(&entries_struct, entries, &format!("{path}.entries"))?;
            let out = MapArray::try_new(
                entries.clone(),
                m.offsets().clone(),
                aligned.as_struct().clone(),
                m.nulls().cloned(),
                *ordered,
            )
            .map_err(|e| fail(&e))?;
            Ok(Arc::new(out))
        }
        (A::FixedSizeBinary(16), A::Utf8) => Ok(uuid_strings(array.as_fixed_size_binary())),
        (A::Time32(_) | A::Time64(_), A::Int64) => {
            let micros = cast(array, &A::Time64(TimeUnit::Microsecond)).map_err(|e| fail(&e))?;
            cast(&micros, &A::Int64).map_err(|e| fail(&e))
        }
        _ => cast(array, to).map_err(|e| fail(&e)),
    }
}

fn uuid_strings(a: &FixedSizeBinaryArray) -> ArrayRef {
    let mut b = StringBuilder::with_capacity(a.len(), a.len() * 36);
    for v in a.iter() {
        match v.and_then(|bytes| uuid::Uuid::from_slice(bytes).ok()) {
            Some(u) => b.append_value(
                u.hyphenated()
                    .encode_lower(&mut uuid::Uuid::encode_buffer()),
            ),
            None => b.append_null(),
        }
    }
    Arc::new(b.finish())
}

/// Align every column of a decoded record batch to the table's record fields.
pub fn align_columns(
    columns: &[(FieldRef, ArrayRef)],
    target: &Fields,
    rows: usize,
) -> Result<Vec<ArrayRef>, Mismatch> {
    target
        .iter()
        .map(
            |f| match columns.iter().find(|(src, _)| src.name() == f.name()) {
                Some((_, a)) => align(a, f, f.name()),
                None => Ok(new_null_array(f.data_type(), rows)),
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use deltalake::arrow::array::{Int32Array, StringArray};

    use super::*;

    fn st(json: &str) -> StructType {
        crate::schema::parse_schema_json(json).unwrap()
    }

    const T: &str = r#"{"type":"struct","fields":[
        {"name":"id","type":"long","nullable":false,"metadata":{}},
        {"name":"name","type":"string","nullable":false,"metadata":{}},
        {"name":"score","type":"double","nullable":true,"metadata":{}},
        {"name":"_offset","type":"long","nullable":true,"metadata":{}}]}"#;

    #[test]
    fn same_schema_fits_and_narrower_types_widen() {
        let p = st(r#"{"type":"struct","fields":[
            {"name":"id","type":"integer","nullable":false,"metadata":{}},
            {"name":"name","type":"string","nullable":false,"metadata":{}},
            {"name":"score","type":"float","nullable":true,"metadata":{}}]}"#);
        assert_eq!(fit(&st(T), &p, &["_offset"]), Fit::Fits);
    }

    #[test]
    fn new_fields_become_nullable_columns_at_the_end_and_dropped_required_fields_relax() {
        let p = st(r#"{"type":"struct","fields":[
            {"name":"id","type":"long","nullable":false,"metadata":{}},
            {"name":"email","type":"string","nullable":false,"metadata":{}}]}"#);
        let Fit::Evolve { schema, changes } = fit(&st(T), &p, &["_offset"]) else {
            panic!("expected evolution");
        };
        let names: Vec<_> = schema.fields().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "name", "score", "_offset", "email"]);
        assert!(schema.field("email").unwrap().is_nullable());
        assert!(schema.field("name").unwrap().is_nullable());
        assert!(!schema.field("id").unwrap().is_nullable());
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(
            changes
                .iter()
                .any(|c| c.contains("new column `email` string"))
        );
    }

    #[test]
    fn wider_or_different_producer_types_are_incompatible_and_named() {
        let p = st(r#"{"type":"struct","fields":[
            {"name":"id","type":"string","nullable":false,"metadata":{}}]}"#);
        let Fit::Incompatible(why) = fit(&st(T), &p, &["_offset"]) else {
            panic!("expected incompatible");
        };
        assert!(
            why.contains("field `id`") && why.contains("string") && why.contains("long"),
            "{why}"
        );
        let p = st(r#"{"type":"struct","fields":[
            {"name":"_offset","type":"long","nullable":true,"metadata":{}}]}"#);
        assert!(
            matches!(fit(&st(T), &p, &["_offset"]), Fit::Incompatible(w) if w.contains("metadata column"))
        );
    }

    #[test]
    fn align_widens_and_fills_missing_columns() {
        let columns: Vec<(FieldRef, ArrayRef)> = vec![
            (
                Arc::new(Field::new("id", A::Int32, false)),
                Arc::new(Int32Array::from(vec![1, 2])),
            ),
            (
                Arc::new(Field::new("name", A::Utf8, false)),
                Arc::new(StringArray::from(vec!["a", "b"])),
            ),
        ];
        let target: Fields = vec![
            Field::new("id", A::Int64, false),
            Field::new("name", A::Utf8, false),
            Field::new("score", A::Float64, true),
        ]
        .into();
        let out = align_columns(&columns, &target, 2).unwrap();
        assert_eq!(out[0].data_type(), &A::Int64);
        assert_eq!(out[2].null_count(), 2);
    }
}
