//! What the source reads and how: brokers, group, subscription, start position.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::secret::Secret;

/// Where a partition starts when the table holds no offset for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    /// The oldest retained record.
    #[default]
    Earliest,
    /// Only records produced from now on.
    Latest,
}

/// Validated `[kafka]`.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Consumer group.
    pub group_id: String,
    /// What to subscribe to.
    pub subscription: Subscription,
    /// Start position for partitions without a stored offset.
    pub auto_offset_reset: OffsetReset,
    /// librdkafka properties, secrets included (never logged).
    pub properties: BTreeMap<String, Secret>,
    /// Records per chunk from the poll thread.
    pub max_chunk_records: usize,
    /// Chunks queued before the poll thread pauses.
    pub channel_capacity: usize,
    /// What librdkafka may prefetch: its queue of fetched records, and one fetch
    /// response, each at most this many bytes (a sixteenth of
    /// `[flush] memory_budget`, at least 1 MiB; `[kafka.properties]` overrides).
    pub prefetch_bytes: u64,
}

impl KafkaConfig {
    /// The prefetch bound that goes with a memory budget of `budget` bytes.
    pub fn prefetch_for_budget(budget: u64) -> u64 {
        (budget / 16).max(1 << 20)
    }
}

/// The topics a pipeline reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    /// A fixed list.
    Topics(Vec<String>),
    /// A regular expression (librdkafka syntax, anchored with `^`).
    Pattern(String),
}

impl Subscription {
    /// The strings handed to `subscribe`.
    pub fn as_subscribe_args(&self) -> Vec<String> {
        match self {
            Subscription::Topics(t) => t.clone(),
            Subscription::Pattern(p) => vec![p.clone()],
        }
    }
}
