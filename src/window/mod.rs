//! The open window: records accounted for and encoded, waiting for their commit.

pub mod encoder;

use std::collections::{HashMap, HashSet};

use deltalake::arrow::array::RecordBatch;
use tokio::time::Instant;

use crate::record::TopicPartition;
use encoder::WindowWriter;

use std::time::Duration;

/// When to write and commit buffered records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushPolicy {
    /// Rows.
    pub max_rows: u64,
    /// Encoded Parquet bytes.
    pub max_bytes: u64,
    /// Age of the oldest buffered record.
    pub max_age: Duration,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        Self {
            max_rows: 1_000_000,
            max_bytes: 128 * 1024 * 1024,
            max_age: Duration::from_secs(30),
        }
    }
}

/// A table's open window: the records accounted for since its last commit.
#[derive(Default)]
pub struct Window {
    /// The encoder of the window's Parquet files, once a row is written.
    pub writer: Option<WindowWriter>,
    /// Rows written.
    pub rows: u64,
    /// Records accounted for (rows and rejected).
    pub records: u64,
    /// When the first record was accounted for.
    pub opened_at: Option<Instant>,
    /// Last offset accounted for per partition.
    pub parts: HashMap<TopicPartition, i64>,
    /// Dead letters of this window, for the dead-letter table.
    pub dead: Vec<RecordBatch>,
    /// The partitions they come from.
    pub dead_parts: HashSet<TopicPartition>,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("rows", &self.rows)
            .field("records", &self.records)
            .field("partitions", &self.parts.len())
            .field("dead_letter_batches", &self.dead.len())
            .finish_non_exhaustive()
    }
}

impl Window {
    /// Whether no record is accounted for.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Parquet bytes encoded so far.
    pub fn encoded_bytes(&self) -> u64 {
        self.writer.as_ref().map_or(0, WindowWriter::encoded_bytes)
    }

    /// Drop what the window holds, aborting its uploads.
    pub fn abort(&mut self) {
        if let Some(w) = self.writer.take() {
            w.abort();
        }
        *self = Window::default();
    }
}
