//! Compaction one partition at a time: each partition's rewrite is its own
//! commit, planned on the table's current version, and planned again when
//! another writer's commit (an upsert's MERGE) touched its files first.
//!
//! An upsert's MERGE rewrites the files holding the keys it changes. A
//! compaction of the whole table would then lose to almost any MERGE (and a
//! MERGE lose to it). Partition by partition, a rewrite only conflicts with the
//! MERGEs into that partition (with an ownership column, one replica's), and a
//! lost one is tried again with backoff, up to a number of attempts, then left
//! for the next run and reported.

use std::time::Duration;

use deltalake::operations::optimize::OptimizeType;
use deltalake::{DeltaTable, FilterLiteral, FilterValue};
use futures::TryStreamExt as _;

use super::{MaintenanceError, PartitionFilter};
use crate::sink::retry::is_conflict;

/// One partition to compact (an unpartitioned table is one, named "").
#[derive(Debug, Clone)]
pub(super) struct Unit {
    pub(super) name: String,
    pub(super) filters: Vec<PartitionFilter>,
}

/// One partition's compaction.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PartitionCompaction {
    /// `col=value/...`, or empty for an unpartitioned table.
    pub partition: String,
    /// Files removed (logically; physically at vacuum).
    pub files_removed: u64,
    /// Files added.
    pub files_added: u64,
    /// Bytes removed.
    pub bytes_removed: u64,
    /// Bytes added.
    pub bytes_added: u64,
    /// The version its commit made, when it committed.
    pub version: Option<i64>,
    /// Attempts made.
    pub attempts: u32,
    /// Attempts lost to another writer's commit.
    pub conflicts: u32,
    /// Why it is left as it was (every attempt conflicted).
    pub gave_up: Option<String>,
}

/// How each partition is rewritten.
pub(super) struct How {
    /// Z-order columns; none: bin-packing.
    pub(super) zorder: Vec<String>,
    pub(super) target: std::num::NonZeroU64,
    pub(super) max_attempts: u32,
}

/// `filters` as delta-rs' partition filter literals.
pub(super) fn literals(
    filters: &[PartitionFilter],
) -> Result<Vec<FilterLiteral<'_>>, deltalake::DeltaTableError> {
    filters
        .iter()
        .map(|f| {
            let value = if f.op == "in" || f.op == "not in" {
                FilterValue::Set(f.values.iter().map(String::as_str).collect())
            } else {
                FilterValue::Scalar(f.values[0].as_str())
            };
            deltalake::filter_literal(&f.column, &f.op, value)
        })
        .collect()
}

/// The partitions (among those `user` selects) with work: at least two files
/// under `target` bytes, or any file when z-ordering. In partition order.
pub(super) async fn units(
    table: &DeltaTable,
    user: &[PartitionFilter],
    target: u64,
    zorder: bool,
) -> Result<Vec<Unit>, MaintenanceError> {
    let uri = table.table_url().clone();
    let columns = table
        .snapshot()
        .map_err(MaintenanceError::delta(&uri))?
        .metadata()
        .partition_columns()
        .to_vec();
    if columns.is_empty() {
        return Ok(vec![Unit {
            name: String::new(),
            filters: user.to_vec(),
        }]);
    }
    let lits = literals(user).map_err(MaintenanceError::delta(&uri))?;
    let files: Vec<(Vec<Option<String>>, u64)> = table
        .get_active_add_actions_by_partitions(&lits)
        .map_ok(|f| {
            let values = f.partition_values_map();
            let key = columns
                .iter()
                .map(|c| values.get(c).cloned().flatten())
                .collect();
            (key, f.size().max(0) as u64)
        })
        .try_collect()
        .await
        .map_err(MaintenanceError::delta(&uri))?;
    let mut small: std::collections::BTreeMap<Vec<Option<String>>, u64> = Default::default();
    for (key, size) in files {
        let n = small.entry(key).or_default();
        if zorder || size < target {
            *n += 1;
        }
    }
    let needed = if zorder { 1 } else { 2 };
    Ok(small
        .into_iter()
        .filter(|(_, n)| *n >= needed)
        .map(|(values, _)| unit(&columns, &values, user))
        .collect())
}

/// The unit of one partition: the user's filters and one equality per column
/// with a value (a null value leaves its column open: a wider rewrite, which
/// finds the other partitions of that column already compacted).
fn unit(columns: &[String], values: &[Option<String>], user: &[PartitionFilter]) -> Unit {
    let mut filters = user.to_vec();
    let mut name = Vec::new();
    for (c, v) in columns.iter().zip(values) {
        match v {
            Some(v) => {
                filters.push(PartitionFilter {
                    column: c.clone(),
                    op: "=".to_owned(),
                    values: vec![v.clone()],
                });
                name.push(format!("{c}={v}"));
            }
            None => name.push(format!("{c}=null")),
        }
    }
    Unit {
        name: name.join("/"),
        filters,
    }
}

/// The wait after attempt `attempt` lost: 200 ms, doubling up to 3.2 s.
pub(super) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200 << attempt.clamp(1, 5).saturating_sub(1))
}

/// Compact one partition: optimize it, planning again on the new version
/// when another writer's commit wins, up to `how.max_attempts`.
pub(super) async fn compact_unit(
    table: &mut DeltaTable,
    unit: &Unit,
    how: &How,
) -> Result<PartitionCompaction, MaintenanceError> {
    let uri = table.table_url().clone();
    let mut done = PartitionCompaction {
        partition: unit.name.clone(),
        ..Default::default()
    };
    let lits = literals(&unit.filters).map_err(MaintenanceError::delta(&uri))?;
    loop {
        done.attempts += 1;
        let result = table
            .clone()
            .optimize()
            .with_type(if how.zorder.is_empty() {
                OptimizeType::Compact
            } else {
                OptimizeType::ZOrder(how.zorder.clone())
            })
            .with_filters(&lits)
            .with_target_size(how.target)
            .with_commit_properties(
                deltalake::kernel::transaction::CommitProperties::default().with_max_retries(100),
            )
            .await;
        match result {
            Ok((t, m)) => {
                if m.num_files_added > 0 {
                    done.version = t.version().map(|v| v as i64);
                }
                *table = t;
                done.files_removed = m.num_files_removed;
                done.files_added = m.num_files_added;
                done.bytes_removed = m.files_removed.total_size.max(0) as u64;
                done.bytes_added = m.files_added.total_size.max(0) as u64;
                return Ok(done);
            }
            Err(e) if is_conflict(&e) => {
                done.conflicts += 1;
                tracing::info!(table = %uri, partition = %unit.name, attempt = done.attempts,
                    error = %e, "compaction lost to another commit; planning it again");
                if done.attempts >= how.max_attempts {
                    done.gave_up = Some(e.to_string());
                    return Ok(done);
                }
                tokio::time::sleep(backoff(done.attempts)).await;
                table
                    .update_state()
                    .await
                    .map_err(MaintenanceError::delta(&uri))?;
            }
            Err(e) => return Err(MaintenanceError::delta(&uri)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_200ms_to_3_2s() {
        let waits: Vec<u64> = (1..=7).map(|a| backoff(a).as_millis() as u64).collect();
        assert_eq!(waits, vec![200, 400, 800, 1600, 3200, 3200, 3200]);
    }

    #[test]
    fn a_partition_unit_adds_one_equality_per_valued_column() {
        let user: Vec<PartitionFilter> = vec!["day >= 2024-01-01".parse().unwrap()];
        let u = unit(
            &["day".into(), "p".into()],
            &[Some("2024-01-02".into()), None],
            &user,
        );
        assert_eq!(u.name, "day=2024-01-02/p=null");
        assert_eq!(u.filters.len(), 2);
        assert_eq!(u.filters[1].values, vec!["2024-01-02".to_owned()]);
    }
}
