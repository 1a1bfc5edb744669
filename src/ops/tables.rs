//! Opening a table for an operator command (status, verify, restore,
//! offsets, and the maintenance commands), and the facts about its files they
//! report.

use std::collections::{BTreeMap, HashMap};

use deltalake::{DeltaTable, DeltaTableError};
use futures::TryStreamExt;
use url::Url;

use crate::config::StorageConfig;

/// Default compaction target when the table sets no `delta.targetFileSize`.
pub const DEFAULT_TARGET_FILE_SIZE: u64 = 128 * 1024 * 1024;

/// Errors from maintenance commands.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    /// There is no table at the location.
    #[error(
        "no Delta table at {uri}: check the URI (and [storage] settings or --storage-option for S3)"
    )]
    NoTable {
        /// The location.
        uri: String,
    },
    /// The table's storage could not be read.
    #[error("cannot read table {uri}: {message}{hint}")]
    Storage {
        /// The table.
        uri: String,
        /// The underlying error.
        message: String,
        /// What to check, when the error says enough to tell.
        hint: String,
    },
    /// delta-rs failed.
    #[error("table {uri}: {source}")]
    Delta {
        /// The table.
        uri: String,
        /// The error.
        #[source]
        source: Box<DeltaTableError>,
    },
    /// The requested retention is below the table's.
    #[error(
        "refusing to vacuum {uri} with a retention of {requested_hours}h: the table keeps deleted files for \
         {table_hours}h (delta.deletedFileRetentionDuration), and readers of older versions or writers still \
         uploading could lose files. Use a longer --retention, or --force-retention if you are sure"
    )]
    RetentionTooShort {
        /// The table.
        uri: String,
        /// Requested retention in hours.
        requested_hours: u64,
        /// The table's retention in hours.
        table_hours: u64,
    },
    /// A `--where` filter could not be parsed.
    #[error("invalid --where filter `{filter}`: {message}")]
    Filter {
        /// The filter text.
        filter: String,
        /// What is wrong.
        message: String,
    },
}

impl MaintenanceError {
    pub(crate) fn delta(uri: &Url) -> impl Fn(DeltaTableError) -> Self + '_ {
        move |e| MaintenanceError::Delta {
            uri: uri.to_string(),
            source: Box::new(e),
        }
    }
}

/// Open an existing table; a clear error when there is none.
pub async fn open(uri: &Url, storage: &StorageConfig) -> Result<DeltaTable, MaintenanceError> {
    match crate::sink::table::load(uri, storage).await {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(MaintenanceError::NoTable {
            uri: uri.to_string(),
        }),
        Err(crate::sink::table::TableError::Delta { source, .. }) => {
            let message = source.to_string();
            Err(MaintenanceError::Storage {
                uri: uri.to_string(),
                hint: crate::sink::retry::storage_hint(&message)
                    .map(|h| format!(". {h}"))
                    .unwrap_or_default(),
                message,
            })
        }
        Err(e) => Err(MaintenanceError::Storage {
            uri: uri.to_string(),
            message: e.to_string(),
            hint: String::new(),
        }),
    }
}

/// The target file size: explicit, else the table's `delta.targetFileSize`, else 128 MiB.
pub fn target_file_size(table: &DeltaTable, explicit: Option<u64>) -> u64 {
    explicit
        .or_else(|| {
            table.snapshot().ok().and_then(|s| {
                s.metadata()
                    .configuration()
                    .get("delta.targetFileSize")
                    .and_then(|v| v.parse().ok())
            })
        })
        .unwrap_or(DEFAULT_TARGET_FILE_SIZE)
}

/// Sizes of the table's active files.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FileSummary {
    /// Active data files.
    pub files: u64,
    /// Their total size.
    pub bytes: u64,
    /// Files smaller than the target size.
    pub small_files: u64,
    /// Their total size.
    pub small_bytes: u64,
    /// Partitions holding at least two small files (what compaction can merge).
    pub compactable_partitions: u64,
    /// Small files in those partitions.
    pub compactable_files: u64,
    /// Their total size.
    pub compactable_bytes: u64,
    /// Rows the files hold, as their statistics state them (deleted rows
    /// included).
    pub rows: u64,
    /// Rows deletion vectors delete (merge-on-read tables).
    pub deleted_rows: u64,
    /// Files with a deletion vector.
    pub files_with_vectors: u64,
}

impl FileSummary {
    /// The fraction of the files' rows deletion vectors delete (0 without any).
    pub fn deleted_fraction(&self) -> f64 {
        self.deleted_rows as f64 / self.rows.max(1) as f64
    }
}

/// Summarize active files against a target size.
pub async fn file_summary(
    table: &DeltaTable,
    target: u64,
) -> Result<FileSummary, MaintenanceError> {
    let uri = table.table_url().clone();
    let snapshot = table.snapshot().map_err(MaintenanceError::delta(&uri))?;
    let log_store = table.log_store();
    let mut summary = FileSummary::default();
    let mut small_by_partition: HashMap<String, (u64, u64)> = HashMap::new();
    let files: Vec<(String, u64, u64, Option<u64>)> = snapshot
        .snapshot()
        .file_views(log_store.as_ref(), None)
        .map_ok(|f| {
            (
                f.path().to_string(),
                f.size().max(0) as u64,
                f.num_records().unwrap_or_default() as u64,
                f.deletion_vector_descriptor()
                    .map(|d| d.cardinality.max(0) as u64),
            )
        })
        .try_collect()
        .await
        .map_err(MaintenanceError::delta(&uri))?;
    for (path, size, rows, deleted) in files {
        summary.files += 1;
        summary.bytes += size;
        summary.rows += rows;
        if let Some(deleted) = deleted {
            summary.files_with_vectors += 1;
            summary.deleted_rows += deleted;
        }
        if size < target {
            summary.small_files += 1;
            summary.small_bytes += size;
            let partition = path.rsplit_once('/').map_or("", |(dir, _)| dir).to_owned();
            let e = small_by_partition.entry(partition).or_default();
            e.0 += 1;
            e.1 += size;
        }
    }
    for (n, bytes) in small_by_partition.values() {
        if *n >= 2 {
            summary.compactable_partitions += 1;
            summary.compactable_files += n;
            summary.compactable_bytes += bytes;
        }
    }
    Ok(summary)
}

/// Parse `KEY=VALUE` storage options.
pub fn parse_storage_options(
    uri: &Url,
    pairs: &[String],
) -> Result<StorageConfig, crate::config::ConfigError> {
    let mut options = BTreeMap::new();
    if matches!(uri.scheme(), "s3" | "s3a") {
        options.insert(
            "aws_conditional_put".to_owned(),
            crate::secret::Secret::new("etag"),
        );
    }
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or(crate::config::ConfigError::Invalid {
                key: "--storage-option",
                message: format!("`{p}` is not KEY=VALUE"),
            })?;
        if matches!(uri.scheme(), "s3" | "s3a") {
            crate::config::check_commit_safety("--storage-option", k, v)?;
        }
        options.insert(k.trim().to_owned(), crate::secret::Secret::new(v.trim()));
    }
    Ok(StorageConfig { options })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storage_option_cannot_switch_off_conditional_put() {
        let s3: Url = "s3://b/t".parse().unwrap();
        for bad in [
            "aws_conditional_put=disabled",
            "AWS_CONDITIONAL_PUT=dynamo",
            "conditional_put=none",
            "AWS_S3_LOCKING_PROVIDER=dynamodb",
        ] {
            let err = parse_storage_options(&s3, &[bad.to_owned()]).unwrap_err();
            assert!(err.to_string().contains("--storage-option"), "{bad}: {err}");
        }
        let ok = parse_storage_options(&s3, &["aws_conditional_put=etag".to_owned()]).unwrap();
        assert_eq!(
            ok.options.get("aws_conditional_put").map(|s| s.expose()),
            Some("etag")
        );
    }
}
