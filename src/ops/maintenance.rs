//! Table maintenance: compaction, vacuum and checkpoints, safe to run while
//! `ingest` keeps writing.
//!
//! Each operation is planned first and executed second; `--dry-run` prints the plan.
//! The work itself is delta-rs' (`optimize`, `vacuum`, checkpoints); this module adds
//! the guard rails an operator needs.
//!
//! # Guarantees and dangers
//!
//! - **compact** rewrites small files into larger ones and commits the adds and
//!   removes with `dataChange = false`: readers see the same rows, and concurrent
//!   appends from `ingest` do not conflict with it (delta-rs retries the commit on
//!   top of them). The files it replaces stay on storage until `vacuum`.
//! - **vacuum** deletes files that the table no longer references and that were
//!   removed (lite) or written (full) longer ago than the retention period. Readers
//!   of versions older than the retention, and writers whose uploads are older than
//!   it, can lose files: that is why a retention below the table's
//!   `delta.deletedFileRetentionDuration` (7 days by default) is refused unless
//!   forced. Full mode also removes orphans left by crashed writers (uploaded but
//!   never committed), again only those older than the retention.
//! - **checkpoint** writes a Parquet checkpoint of the current version and removes
//!   log files older than `delta.logRetentionDuration` that the checkpoint makes
//!   unnecessary. The daemon already checkpoints every `delta.checkpointInterval`
//!   commits (delta-rs' post-commit hook, in the commit task, off the ingest path).

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::optimize::OptimizeType;
use deltalake::operations::vacuum::{Clock, VacuumMode};
use deltalake::table::config::TablePropertiesExt as _;
use deltalake::{DeltaTable, DeltaTableError, FilterValue};
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
    fn delta(uri: &Url) -> impl Fn(DeltaTableError) -> Self + '_ {
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
                hint: crate::sink::table::storage_hint(&message)
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
    let files: Vec<(String, u64)> = snapshot
        .snapshot()
        .file_views(log_store.as_ref(), None)
        .map_ok(|f| (f.path().to_string(), f.size().max(0) as u64))
        .try_collect()
        .await
        .map_err(MaintenanceError::delta(&uri))?;
    for (path, size) in files {
        summary.files += 1;
        summary.bytes += size;
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

/// A parsed `--where` partition filter: `col = v`, `col != v`, `col < v` (and
/// `<=`, `>`, `>=`), `col in (a, b)`, `col not in (a, b)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionFilter {
    column: String,
    op: String,
    values: Vec<String>,
}

impl std::str::FromStr for PartitionFilter {
    type Err = MaintenanceError;
    fn from_str(s: &str) -> Result<Self, MaintenanceError> {
        let err = |m: &str| MaintenanceError::Filter {
            filter: s.to_owned(),
            message: m.to_owned(),
        };
        let lower = s.to_ascii_lowercase();
        for op in [" not in ", " in "] {
            if let Some(pos) = lower.find(op) {
                let column = s[..pos].trim().to_owned();
                let list = s[pos + op.len()..].trim();
                let inner = list
                    .strip_prefix('(')
                    .and_then(|l| l.strip_suffix(')'))
                    .ok_or_else(|| err("write the values as (a, b, c)"))?;
                let values = inner
                    .split(',')
                    .map(|v| v.trim().trim_matches('\'').to_owned())
                    .filter(|v| !v.is_empty())
                    .collect::<Vec<_>>();
                if column.is_empty() || values.is_empty() {
                    return Err(err("expected COLUMN in (VALUES)"));
                }
                return Ok(Self {
                    column,
                    op: op.trim().to_owned(),
                    values,
                });
            }
        }
        for op in ["!=", "<=", ">=", "=", "<", ">"] {
            if let Some(pos) = s.find(op) {
                let column = s[..pos].trim().to_owned();
                let value = s[pos + op.len()..].trim().trim_matches('\'').to_owned();
                if column.is_empty() || value.is_empty() {
                    return Err(err("expected COLUMN OP VALUE"));
                }
                return Ok(Self {
                    column,
                    op: op.to_owned(),
                    values: vec![value],
                });
            }
        }
        Err(err("no operator: use =, !=, <, <=, >, >=, in or not in"))
    }
}

/// What compaction would do.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CompactPlan {
    /// The table.
    pub table: String,
    /// Table version the plan was made against.
    pub version: i64,
    /// Target file size in bytes.
    pub target_file_size: u64,
    /// Z-order columns, if any.
    pub zorder: Vec<String>,
    /// Active files before.
    pub files_before: u64,
    /// Bytes before.
    pub bytes_before: u64,
    /// Small files that would be rewritten (in partitions with at least two).
    pub files_in: u64,
    /// Their bytes.
    pub bytes_in: u64,
    /// Estimated files written (bytes in / target, at least one per partition).
    pub files_out_estimate: u64,
    /// Why nothing would be done, when so.
    pub skip_reason: Option<String>,
}

/// What compaction did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CompactReport {
    /// The plan it followed.
    pub plan: CompactPlan,
    /// Files removed (logically; physically at vacuum).
    pub files_removed: u64,
    /// Files added.
    pub files_added: u64,
    /// Bytes removed.
    pub bytes_removed: u64,
    /// Bytes added.
    pub bytes_added: u64,
    /// The new table version, when something was committed.
    pub version: Option<i64>,
}

/// Compaction of one table: build with [`Compact::new`], inspect [`Compact::plan`],
/// then [`Compact::execute`].
#[derive(Debug)]
pub struct Compact {
    table: DeltaTable,
    target: u64,
    zorder: Vec<String>,
    filters: Vec<PartitionFilter>,
    min_files: u64,
}

impl Compact {
    /// Compaction of `table` with the target size from [`target_file_size`].
    pub fn new(table: DeltaTable, target: Option<u64>) -> Self {
        let target = target_file_size(&table, target);
        Self {
            table,
            target,
            zorder: Vec::new(),
            filters: Vec::new(),
            min_files: 2,
        }
    }

    /// Z-order by these columns instead of plain bin-packing.
    pub fn with_zorder(mut self, columns: Vec<String>) -> Self {
        self.zorder = columns;
        self
    }

    /// Only partitions matching all filters.
    pub fn with_filters(mut self, filters: Vec<PartitionFilter>) -> Self {
        self.filters = filters;
        self
    }

    /// Do nothing unless at least this many small files could be merged.
    pub fn with_min_files(mut self, n: u64) -> Self {
        self.min_files = n.max(2);
        self
    }

    /// The plan, read from the table's current file list. Writes nothing.
    pub async fn plan(&self) -> Result<CompactPlan, MaintenanceError> {
        let s = file_summary(&self.table, self.target).await?;
        let files_out = if s.compactable_files == 0 {
            0
        } else {
            s.compactable_bytes
                .div_ceil(self.target)
                .max(s.compactable_partitions)
        };
        let skip_reason = if !self.zorder.is_empty() {
            None // z-order rewrites regardless of file sizes
        } else if s.compactable_files < self.min_files {
            Some(format!(
                "{} small file(s) that can be merged, fewer than --min-files {}",
                s.compactable_files, self.min_files
            ))
        } else {
            None
        };
        Ok(CompactPlan {
            table: self.table.table_url().to_string(),
            version: self.table.version().map_or(-1, |v| v as i64),
            target_file_size: self.target,
            zorder: self.zorder.clone(),
            files_before: s.files,
            bytes_before: s.bytes,
            files_in: if self.zorder.is_empty() {
                s.compactable_files
            } else {
                s.files
            },
            bytes_in: if self.zorder.is_empty() {
                s.compactable_bytes
            } else {
                s.bytes
            },
            files_out_estimate: if self.zorder.is_empty() {
                files_out
            } else {
                s.bytes.div_ceil(self.target).max(1)
            },
            skip_reason,
        })
    }

    /// Run delta-rs' optimize. Safe while `ingest` appends.
    pub async fn execute(self, plan: CompactPlan) -> Result<CompactReport, MaintenanceError> {
        if plan.skip_reason.is_some() {
            return Ok(CompactReport {
                plan,
                files_removed: 0,
                files_added: 0,
                bytes_removed: 0,
                bytes_added: 0,
                version: None,
            });
        }
        let uri = self.table.table_url().clone();
        let filters: Vec<deltalake::FilterLiteral<'_>> = self
            .filters
            .iter()
            .map(|f| {
                let value = if f.op == "in" || f.op == "not in" {
                    FilterValue::Set(f.values.iter().map(String::as_str).collect())
                } else {
                    FilterValue::Scalar(f.values[0].as_str())
                };
                deltalake::filter_literal(&f.column, &f.op, value)
            })
            .collect::<Result<_, _>>()
            .map_err(MaintenanceError::delta(&uri))?;
        let optimize_type = if self.zorder.is_empty() {
            OptimizeType::Compact
        } else {
            OptimizeType::ZOrder(self.zorder.clone())
        };
        let target = NonZeroU64::new(self.target).unwrap_or(NonZeroU64::MIN);
        tracing::info!(
            table = %uri, files = plan.files_in, bytes = plan.bytes_in,
            target = self.target, zorder = ?self.zorder, "compaction started"
        );
        let (table, metrics) = self
            .table
            .clone()
            .optimize()
            .with_type(optimize_type)
            .with_filters(&filters)
            .with_target_size(target)
            .with_commit_properties(CommitProperties::default().with_max_retries(100))
            .await
            .map_err(MaintenanceError::delta(&uri))?;
        let version =
            (metrics.num_files_added > 0).then(|| table.version().map_or(-1, |v| v as i64));
        Ok(CompactReport {
            plan,
            files_removed: metrics.num_files_removed,
            files_added: metrics.num_files_added,
            bytes_removed: metrics.files_removed.total_size.max(0) as u64,
            bytes_added: metrics.files_added.total_size.max(0) as u64,
            version,
        })
    }
}

/// The table's `delta.deletedFileRetentionDuration` (7 days when unset).
pub fn table_retention(table: &DeltaTable) -> Duration {
    table
        .snapshot()
        .ok()
        .map(|s| s.table_config().deleted_file_retention_duration())
        .unwrap_or(Duration::from_secs(7 * 24 * 3600))
}

/// Vacuum options.
#[derive(Debug, Clone, Default)]
pub struct VacuumOptions {
    /// Retention; the table's when `None`.
    pub retention: Option<Duration>,
    /// Allow a retention below the table's.
    pub force_retention: bool,
    /// List only.
    pub dry_run: bool,
    /// Also remove unreferenced files never named in the log (orphans).
    pub full: bool,
    /// Clock override (tests).
    pub clock: Option<Arc<dyn Clock>>,
}

/// What vacuum removed (or would remove).
#[derive(Debug, Clone, serde::Serialize)]
pub struct VacuumReport {
    /// The table.
    pub table: String,
    /// Whether nothing was deleted.
    pub dry_run: bool,
    /// Full mode.
    pub full: bool,
    /// Retention applied, in hours.
    pub retention_hours: f64,
    /// Files removed, or that would be.
    pub files: Vec<String>,
}

/// Vacuum `table`.
pub async fn vacuum(
    table: DeltaTable,
    opts: VacuumOptions,
) -> Result<VacuumReport, MaintenanceError> {
    let uri = table.table_url().clone();
    let table_retention = table_retention(&table);
    let retention = opts.retention.unwrap_or(table_retention);
    if retention < table_retention && !opts.force_retention {
        return Err(MaintenanceError::RetentionTooShort {
            uri: uri.to_string(),
            requested_hours: retention.as_secs() / 3600,
            table_hours: table_retention.as_secs() / 3600,
        });
    }
    let mut builder = table
        .vacuum()
        .with_retention_period(
            chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX),
        )
        .with_enforce_retention_duration(!opts.force_retention)
        .with_dry_run(opts.dry_run)
        .with_mode(if opts.full {
            VacuumMode::Full
        } else {
            VacuumMode::Lite
        });
    if let Some(clock) = opts.clock {
        builder = builder.with_clock(clock);
    }
    tracing::info!(
        table = %uri, retention_hours = retention.as_secs() / 3600, full = opts.full,
        dry_run = opts.dry_run, "vacuum started"
    );
    let (_, metrics) = builder.await.map_err(MaintenanceError::delta(&uri))?;
    tracing::info!(table = %uri, files = metrics.files_deleted.len(), dry_run = opts.dry_run, "vacuum finished");
    let mut files = metrics.files_deleted;
    files.sort();
    Ok(VacuumReport {
        table: uri.to_string(),
        dry_run: opts.dry_run,
        full: opts.full,
        retention_hours: retention.as_secs_f64() / 3600.0,
        files,
    })
}

/// What `checkpoint` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckpointReport {
    /// The table.
    pub table: String,
    /// Version checkpointed.
    pub version: i64,
    /// Expired log files removed.
    pub log_files_removed: usize,
}

/// Write a checkpoint at the current version and clean up expired log files.
pub async fn checkpoint(table: &DeltaTable) -> Result<CheckpointReport, MaintenanceError> {
    let uri = table.table_url().clone();
    deltalake::checkpoints::create_checkpoint(table, None)
        .await
        .map_err(MaintenanceError::delta(&uri))?;
    let removed = deltalake::checkpoints::cleanup_metadata(table, None)
        .await
        .map_err(MaintenanceError::delta(&uri))?;
    Ok(CheckpointReport {
        table: uri.to_string(),
        version: table.version().map_or(-1, |v| v as i64),
        log_files_removed: removed,
    })
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

    #[test]
    fn filters_parse() {
        let f: PartitionFilter = "date = 2024-01-01".parse().unwrap();
        assert_eq!((f.column.as_str(), f.op.as_str()), ("date", "="));
        let f: PartitionFilter = "country not in ('DE', US)".parse().unwrap();
        assert_eq!(f.op, "not in");
        assert_eq!(f.values, vec!["DE", "US"]);
        let f: PartitionFilter = "n>=3".parse().unwrap();
        assert_eq!(f.op, ">=");
        assert!("date".parse::<PartitionFilter>().is_err());
        assert!("x in 1,2".parse::<PartitionFilter>().is_err());
    }
}
