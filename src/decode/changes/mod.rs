//! Keyed changes, what an upsert table applies: the rows, which of them delete,
//! which replace their key's row whatever the order values; joined segment by
//! segment by column name, and reduced to the last change per key
//! ([`reduce`]). The envelope decoders ([`super::envelope`],
//! [`super::debezium`]) make them; the window holds them; the MERGE applies
//! them; verify replays them.

pub mod reduce;

pub use reduce::{Order, reduce, reduce_growing};

use std::sync::Arc;

use deltalake::arrow::array::ArrayRef;
use deltalake::arrow::array::{Array, BooleanArray, RecordBatch};
use deltalake::arrow::compute::{concat, concat_batches};
use deltalake::arrow::datatypes::{Field, Schema, SchemaRef};
use deltalake::arrow::error::ArrowError;

/// Why changes cannot be joined, keyed or ordered: a fault of the table's
/// configuration or of the records, never transient.
#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    /// A column the key, the order or the join needs is not there.
    #[error("column `{column}` is not in the changes")]
    MissingColumn {
        /// The column.
        column: String,
    },
    /// A key column holds nulls: those changes name no key.
    #[error("key column `{column}` is null in {count} change(s)")]
    NullKey {
        /// The column.
        column: String,
        /// Changes with a null in it.
        count: usize,
    },
    /// A window segment's columns are not the first segment's.
    #[error("window segment {segment} does not hold the columns of the first: {what}")]
    SegmentMismatch {
        /// The segment, counted from 0.
        segment: usize,
        /// What differs.
        what: String,
    },
    /// A join of no changes was asked for.
    #[error("no changes to join")]
    Empty,
    /// A field the change events need is not in them.
    #[error("no `{field}` in the change events")]
    MissingField {
        /// The field (`before`, `source.lsn`, ...).
        field: String,
    },
    /// A field of the change events is not of the type the envelope needs.
    #[error("`{field}` is not {expected}")]
    WrongType {
        /// The field.
        field: String,
        /// What it must be.
        expected: &'static str,
    },
    /// The envelope's schema cannot be built from the table's.
    #[error("the change events' schema: {0}")]
    EnvelopeSchema(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Arrow failed on well-formed input (a kernel's own limits).
    #[error(transparent)]
    Arrow(#[from] ArrowError),
}

/// The source column that marks a change as a deletion.
pub const DELETED: &str = "__tributary_deleted";
/// The source column that marks a change as replacing its key's row whatever
/// the order values ([`Changes::unconditional`]).
pub const UNCONDITIONAL: &str = "__tributary_unconditional";
/// The source column holding the order value of each change's key's latest
/// delete (the upsert sink's memory of deletes).
pub const DELETED_ORDER: &str = "__tributary_deleted_order";

/// Changes: rows with the table's columns, and which of them delete their key
/// (the other columns of a deletion are ignored but for the key).
#[derive(Debug, Clone)]
pub struct Changes {
    /// One row per change, in the order read.
    pub rows: RecordBatch,
    /// Whether each row deletes its key.
    pub deleted: BooleanArray,
    /// With `order_by`: whether each change replaces its key's row whatever
    /// the two order values (a reduction set it: a change of the key without
    /// an order value came before it; see [`reduce`]).
    /// `None`: no change does.
    pub unconditional: Option<BooleanArray>,
}

impl Changes {
    /// Changes read from records (none of them unconditional yet).
    pub fn new(rows: RecordBatch, deleted: BooleanArray) -> Self {
        Self {
            rows,
            deleted,
            unconditional: None,
        }
    }

    /// Whether change `i` replaces its key's row whatever the order values.
    pub fn is_unconditional(&self, i: usize) -> bool {
        self.unconditional.as_ref().is_some_and(|u| u.value(i))
    }

    /// `list` as one batch of changes, in order, every segment's columns taken
    /// by name in the first one's order; an error for an empty list, or for a
    /// segment whose columns (names or types) are not the first one's.
    pub fn concat(list: &[Changes]) -> Result<Changes, ChangesError> {
        let Some(first) = list.first() else {
            return Err(ChangesError::Empty);
        };
        let schema = first.rows.schema();
        let segments = list
            .iter()
            .enumerate()
            .map(|(n, c)| by_name(&c.rows, &schema, n))
            .collect::<Result<Vec<_>, _>>()?;
        let rows = concat_batches(&schema, &segments)?;
        let deleted = concat_flags(list.iter().map(|c| c.deleted.clone()))?;
        let unconditional = if list.iter().all(|c| c.unconditional.is_none()) {
            None
        } else {
            let flags = list.iter().map(|c| {
                c.unconditional
                    .clone()
                    .unwrap_or_else(|| BooleanArray::from(vec![false; c.rows.num_rows()]))
            });
            Some(concat_flags(flags)?)
        };
        Ok(Changes {
            rows,
            deleted,
            unconditional,
        })
    }
}

/// `rows` with `extra` columns after its own.
pub fn with_columns(
    rows: &RecordBatch,
    extra: impl IntoIterator<Item = (Field, ArrayRef)>,
) -> Result<RecordBatch, ArrowError> {
    let mut fields: Vec<Field> = rows
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut columns = rows.columns().to_vec();
    for (f, c) in extra {
        fields.push(f);
        columns.push(c);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

fn concat_flags(flags: impl Iterator<Item = BooleanArray>) -> Result<BooleanArray, ArrowError> {
    let flags: Vec<BooleanArray> = flags.collect();
    let refs: Vec<&dyn Array> = flags.iter().map(|f| f as &dyn Array).collect();
    concat(&refs)?
        .as_any()
        .downcast_ref::<BooleanArray>()
        .cloned()
        .ok_or_else(|| ArrowError::CastError("change flags".into()))
}

/// Segment `n`'s columns by name in `schema`'s order; an error naming the
/// column when the segment lacks one, has another, or holds another type.
fn by_name(batch: &RecordBatch, schema: &SchemaRef, n: usize) -> Result<RecordBatch, ChangesError> {
    if batch.schema_ref() == schema {
        return Ok(batch.clone());
    }
    let mismatch = |what: String| ChangesError::SegmentMismatch { segment: n, what };
    if let Some(extra) = batch
        .schema()
        .fields()
        .iter()
        .find(|f| schema.field_with_name(f.name()).is_err())
    {
        return Err(mismatch(format!("it has column `{}`", extra.name())));
    }
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            let c = batch
                .column_by_name(f.name())
                .ok_or_else(|| mismatch(format!("it lacks column `{}`", f.name())))?;
            if c.data_type() != f.data_type() {
                return Err(mismatch(format!(
                    "column `{}` is {} there, {} in the first",
                    f.name(),
                    c.data_type(),
                    f.data_type()
                )));
            }
            Ok(c.clone())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::ArrayRef;
    use deltalake::arrow::array::{AsArray, Int64Array, StringArray};
    use deltalake::arrow::datatypes::DataType;
    use deltalake::arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn segment(columns: &[(&str, Vec<&str>)]) -> Changes {
        let n = columns[0].1.len();
        let mut fields = vec![Field::new("id", DataType::Int64, true)];
        let mut arrays: Vec<ArrayRef> = vec![Arc::new(Int64Array::from_iter_values(0..n as i64))];
        for (name, values) in columns {
            fields.push(Field::new(*name, DataType::Utf8, true));
            arrays.push(Arc::new(StringArray::from(values.clone())));
        }
        let rows = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap();
        Changes::new(rows, BooleanArray::from(vec![false; n]))
    }

    /// Issue 22, case 6: `concat` joined segments by column position, so a
    /// segment whose columns came in another order (a tombstone-only segment
    /// takes the table's order, one with rows the decoder's) had its values
    /// land in the wrong columns.
    #[test]
    fn window_segments_are_joined_by_column_name() {
        let first = segment(&[("a", vec!["a0"]), ("b", vec!["b0"])]);
        let second = segment(&[("b", vec!["b1"]), ("a", vec!["a1"])]);
        let joined = Changes::concat(&[first, second]).unwrap();
        let col = |name: &str| -> Vec<String> {
            let c = joined.rows.column_by_name(name).unwrap().as_string::<i32>();
            c.iter().map(|v| v.unwrap_or_default().to_owned()).collect()
        };
        assert_eq!(col("a"), ["a0", "a1"]);
        assert_eq!(col("b"), ["b0", "b1"]);
        assert_eq!(joined.deleted.len(), 2);
    }

    /// A segment with other columns is an error naming the column, never a
    /// silent join.
    #[test]
    fn segments_with_other_columns_are_refused_by_name() {
        let first = segment(&[("a", vec!["a0"]), ("b", vec!["b0"])]);
        let lacks = segment(&[("a", vec!["a1"])]);
        let err = Changes::concat(&[first.clone(), lacks])
            .unwrap_err()
            .to_string();
        assert!(err.contains("lacks column `b`"), "{err}");
        let other = segment(&[("a", vec!["a1"]), ("c", vec!["c1"])]);
        let err = Changes::concat(&[first.clone(), other])
            .unwrap_err()
            .to_string();
        assert!(err.contains("has column `c`"), "{err}");
        let typed = {
            let rows = RecordBatch::try_new(
                Arc::new(Schema::new(vec![
                    Field::new("id", DataType::Int64, true),
                    Field::new("a", DataType::Int64, true),
                    Field::new("b", DataType::Utf8, true),
                ])),
                vec![
                    Arc::new(Int64Array::from(vec![1])),
                    Arc::new(Int64Array::from(vec![7])),
                    Arc::new(StringArray::from(vec!["b"])),
                ],
            )
            .unwrap();
            Changes::new(rows, BooleanArray::from(vec![false]))
        };
        let err = Changes::concat(&[first, typed]).unwrap_err().to_string();
        assert!(
            err.contains("column `a` is Int64 there, Utf8 in the first"),
            "{err}"
        );
    }

    /// The unconditional flags of reduced segments travel with their rows.
    #[test]
    fn unconditional_flags_are_joined_with_their_rows() {
        let mut first = segment(&[("a", vec!["a0", "a1"])]);
        first.unconditional = Some(BooleanArray::from(vec![false, true]));
        let second = segment(&[("a", vec!["a2"])]);
        let joined = Changes::concat(&[second.clone(), first]).unwrap();
        assert_eq!(
            (0..3)
                .map(|i| joined.is_unconditional(i))
                .collect::<Vec<_>>(),
            [false, false, true]
        );
        assert!(Changes::concat(&[second]).unwrap().unconditional.is_none());
    }
}
