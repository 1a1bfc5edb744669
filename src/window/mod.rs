//! The open window: records accounted for and encoded, waiting for their commit.

pub mod encoder;

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
