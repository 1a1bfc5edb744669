//! `compact`: bin-pack small files (optionally z-ordered), planned then executed
//! one partition at a time (see [`units`]), committed with `dataChange = false`
//! so that concurrent appends do not conflict.

use super::*;

mod units;

pub use units::PartitionCompaction;

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
    /// The newest table version it committed, when it committed.
    pub version: Option<i64>,
    /// Per partition with work (one entry for an unpartitioned table).
    pub partitions: Vec<PartitionCompaction>,
    /// Attempts lost to other writers' commits, over all partitions.
    pub conflicts: u64,
    /// Partitions left as they were (every attempt lost to another commit).
    pub gave_up: u64,
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
    max_attempts: u32,
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
            max_attempts: 10,
        }
    }

    /// Attempts per partition before it is left for the next run (when other
    /// writers' commits keep touching its files).
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
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

    /// Run delta-rs' optimize, one partition (one commit) at a time. Safe
    /// while `ingest` appends or upserts: a partition whose files another
    /// commit touched first is planned again.
    pub async fn execute(self, plan: CompactPlan) -> Result<CompactReport, MaintenanceError> {
        let mut report = CompactReport {
            plan,
            files_removed: 0,
            files_added: 0,
            bytes_removed: 0,
            bytes_added: 0,
            version: None,
            partitions: Vec::new(),
            conflicts: 0,
            gave_up: 0,
        };
        if report.plan.skip_reason.is_some() {
            return Ok(report);
        }
        let uri = self.table.table_url().clone();
        let how = units::How {
            zorder: self.zorder.clone(),
            target: NonZeroU64::new(self.target).unwrap_or(NonZeroU64::MIN),
            max_attempts: self.max_attempts,
        };
        let todo = units::units(
            &self.table,
            &self.filters,
            self.target,
            !self.zorder.is_empty(),
        )
        .await?;
        tracing::info!(
            table = %uri, files = report.plan.files_in, bytes = report.plan.bytes_in,
            partitions = todo.len(), target = self.target, zorder = ?self.zorder,
            "compaction started"
        );
        let mut table = self.table;
        for unit in &todo {
            let done = units::compact_unit(&mut table, unit, &how).await?;
            report.files_removed += done.files_removed;
            report.files_added += done.files_added;
            report.bytes_removed += done.bytes_removed;
            report.bytes_added += done.bytes_added;
            report.version = done.version.or(report.version);
            report.conflicts += u64::from(done.conflicts);
            report.gave_up += u64::from(done.gave_up.is_some());
            report.partitions.push(done);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
