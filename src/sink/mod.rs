//! One sink per table: the table handle, the commit engine with its
//! compare-and-swap (an append or an upsert's MERGE), dead letters and
//! checkpoints.

pub mod checkpoint;
pub mod cleanup;
pub mod commit;
pub mod dead_letter;
pub mod dv;
pub mod log_cache;
pub mod options;
pub mod retry;
pub mod table;
pub mod table_log;
pub mod upsert;

pub use options::{
    CommitConfig, Compression, StorageConfig, TableConfig, TableUriError, UpsertSpec,
    UpsertStrategy, parse_table_uri,
};
