//! The offsets a table stores in its `txn` actions.

pub mod store;
