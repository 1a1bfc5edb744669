//! Keyed changes: what an upsert applies (decoded from keyed records or change
//! events, see [`super::debezium`]).

use deltalake::arrow::array::{BooleanArray, RecordBatch};

/// Changes: rows with the table's columns, and which of them delete their key
/// (the other columns of a deletion are ignored but for the key).
#[derive(Debug, Clone)]
pub struct Changes {
    /// One row per change, in the order read.
    pub rows: RecordBatch,
    /// Whether each row deletes its key.
    pub deleted: BooleanArray,
}
