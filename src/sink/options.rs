//! What a table is and how it is written: location, schema, Parquet settings,
//! storage options, commit retries, and which topics are routed to it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use crate::schema::MetadataColumns;
use crate::secret::Secret;

/// A table URI that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TableUriError(String);

impl TableUriError {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Validated `[table]`.
#[derive(Debug, Clone)]
pub struct TableConfig {
    /// Normalized table URL (for a template: with `{topic}` as `topic`).
    pub uri: Url,
    /// The URI as written when it contains `{topic}` (one table per topic).
    pub uri_template: Option<String>,
    /// The record schema (without metadata columns), when a schema file gives it.
    pub schema: Option<deltalake::kernel::StructType>,
    /// Where the schema came from, for messages.
    pub schema_path: Option<PathBuf>,
    /// Partition columns for table creation.
    pub partition_by: Vec<String>,
    /// Parquet compression.
    pub compression: Compression,
    /// Table properties for creation.
    pub properties: BTreeMap<String, String>,
    /// Metadata columns.
    pub metadata_columns: MetadataColumns,
    /// Rows per row group.
    pub row_group_rows: usize,
    /// Derived columns and the row filter.
    pub transform: crate::decode::transform::TransformSpec,
    /// `mode = "upsert"`: the table holds the latest change per key.
    pub upsert: Option<UpsertSpec>,
}

/// How an upsert table is keyed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpsertSpec {
    /// The key columns (record fields, metadata or derived columns).
    pub key: Vec<String>,
    /// A column ordering a key's changes: an older change never replaces a
    /// newer one.
    pub order_by: Option<String>,
    /// What the records hold: rows, or Debezium change events (whole, or
    /// flattened by `ExtractNewRecordState`).
    pub envelope: crate::decode::envelope::Envelope,
    /// `order_by = "source.FIELD"`: the field of Debezium's `source` whose
    /// value orders a key's changes (kept in the column `order_by` names).
    pub source_order: Option<String>,
    /// With `order_by`: how long the order values of deleted keys are kept
    /// (a change older than a delete that arrives later inserts the key again).
    pub delete_horizon: std::time::Duration,
    /// How a window changes the table: a MERGE rewriting files, or deletion
    /// vectors.
    pub strategy: UpsertStrategy,
}

/// How an upsert window changes the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UpsertStrategy {
    /// One MERGE per window: every file holding a changed key is read and
    /// rewritten whole. Any Delta reader reads the table.
    #[default]
    CopyOnWrite,
    /// The old rows are marked deleted by deletion vectors and the window's
    /// rows written as new files: a window costs its changes, not the table.
    /// The table needs readers with deletion-vector support (reader 3 /
    /// writer 7).
    MergeOnRead,
}

/// Parquet compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Snappy (fast, the Spark default).
    Snappy,
    /// Zstandard at a level (smaller files, similar speed at low levels).
    Zstd(i32),
    /// LZ4 (raw).
    Lz4,
    /// No compression.
    Uncompressed,
}

/// A compression name that is not one of ours, and which ones are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CompressionError(String);

impl std::str::FromStr for Compression {
    type Err = CompressionError;
    fn from_str(s: &str) -> Result<Self, CompressionError> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "snappy" => Ok(Self::Snappy),
            "zstd" => Ok(Self::Zstd(3)),
            "lz4" => Ok(Self::Lz4),
            "uncompressed" | "none" => Ok(Self::Uncompressed),
            other => {
                if let Some(level) = other
                    .strip_prefix("zstd(")
                    .and_then(|r| r.strip_suffix(')'))
                {
                    let level: i32 = level.parse().map_err(|_| {
                        CompressionError(format!("zstd level `{level}` is not a number"))
                    })?;
                    if !(1..=22).contains(&level) {
                        return Err(CompressionError(format!(
                            "zstd level {level} is outside 1..=22"
                        )));
                    }
                    Ok(Self::Zstd(level))
                } else {
                    Err(CompressionError(format!(
                        "unknown compression `{other}`: use snappy, zstd, zstd(LEVEL), lz4 or uncompressed"
                    )))
                }
            }
        }
    }
}

/// Object-store options for delta-rs.
#[derive(Clone, Default)]
pub struct StorageConfig {
    /// Key/value options understood by delta-rs' object stores.
    pub options: BTreeMap<String, Secret>,
}

impl fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.options.iter()).finish()
    }
}

impl StorageConfig {
    /// The options in the form delta-rs takes.
    pub fn to_options(&self) -> std::collections::HashMap<String, String> {
        self.options
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_owned()))
            .collect()
    }
}

/// Validated `[commit]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitConfig {
    /// delta-rs conflict retries.
    pub max_conflict_retries: usize,
    /// Re-plans of a conflicting commit, before a rewind.
    pub max_replans: u32,
    /// Backoff cap.
    pub max_backoff: Duration,
}

/// Accepts `s3://bucket/prefix`, `s3a://`, `file:///abs` and plain local paths
/// (made absolute against the current directory).
pub fn parse_table_uri(raw: &str) -> Result<Url, TableUriError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(TableUriError::new("must not be empty"));
    }
    if raw.contains("://") {
        let url = Url::parse(raw).map_err(|e| TableUriError::new(format!("`{raw}`: {e}")))?;
        match url.scheme() {
            "s3" | "s3a" => {
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(TableUriError::new(format!(
                        "`{raw}` has no bucket: write s3://BUCKET/PATH"
                    )));
                }
                Ok(url)
            }
            "file" | "memory" => Ok(url),
            other => Err(TableUriError::new(format!(
                "unsupported scheme `{other}`: use s3:// or file://"
            ))),
        }
    } else {
        let path = Path::new(raw);
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| TableUriError::new(e.to_string()))?
                .join(path)
        };
        Url::from_directory_path(&abs)
            .map_err(|()| TableUriError::new(format!("`{raw}` is not a usable local path")))
    }
}
