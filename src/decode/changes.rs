//! Keyed changes: what an upsert applies (decoded from keyed records or change
//! events, see [`super::debezium`]).

use std::sync::Arc;

use deltalake::arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use deltalake::arrow::datatypes::{Field, Schema};
use deltalake::arrow::error::ArrowError;

/// Changes: rows with the table's columns, and which of them delete their key
/// (the other columns of a deletion are ignored but for the key).
#[derive(Debug, Clone)]
pub struct Changes {
    /// One row per change, in the order read.
    pub rows: RecordBatch,
    /// Whether each row deletes its key.
    pub deleted: BooleanArray,
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
