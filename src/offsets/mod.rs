//! The offsets a table stores in its `txn` actions.

pub mod restores;
pub mod store;

use crate::record::TopicPartition;

/// One partition's part of a commit: the move of its stored offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionCommit {
    /// The partition.
    pub tp: TopicPartition,
    /// The offset the table must still hold for the commit to be valid.
    pub expected: Option<i64>,
    /// The last offset accounted for by this commit (becomes the stored offset).
    pub last: i64,
}
