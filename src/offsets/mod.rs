//! The offsets a table stores in its `txn` actions.

pub mod restores;
pub mod store;
