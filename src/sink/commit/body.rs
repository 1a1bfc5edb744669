//! What a commit writes besides its offsets: appended files, a MERGE of
//! keyed changes, or the same changes by deletion vectors ([`super::on_read`]). Each body writes one Delta
//! commit carrying the properties [`super::txn`] made.

use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableError};

use super::wrote::{Landed, Wrote};
use crate::sink::table_log::TableLog;
use crate::sink::upsert::MergePlan;
use crate::sink::upsert::merge::merge;

/// A commit's body.
#[derive(Debug)]
pub(super) enum Body {
    /// Files already uploaded, appended (none: the offsets alone).
    Files(Vec<Add>),
    /// A window's changes, merged on the key.
    Merge(Box<MergePlan>),
    /// A window's changes by deletion vectors and new files.
    MergeOnRead(Box<MergePlan>),
}

impl Body {
    /// Write the body and `properties` as one commit on `table`'s version.
    pub(super) async fn write(
        &self,
        table: &mut DeltaTable,
        log: &TableLog,
        properties: CommitProperties,
    ) -> Result<Wrote, DeltaTableError> {
        match self {
            Body::Files(adds) => append(table, adds, properties).await,
            Body::Merge(plan) => merged(table, plan, properties).await,
            Body::MergeOnRead(plan) => {
                super::on_read::write(table, &log.keys, plan, properties).await
            }
        }
    }
}

async fn append(
    table: &mut DeltaTable,
    adds: &[Add],
    properties: CommitProperties,
) -> Result<Wrote, DeltaTableError> {
    let snapshot = table.snapshot()?;
    let partition_cols: Vec<String> = snapshot.metadata().partition_columns().to_vec();
    let operation = DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: (!partition_cols.is_empty()).then_some(partition_cols),
        predicate: None,
    };
    let finalized = CommitBuilder::from(properties)
        .with_actions(adds.iter().cloned().map(Action::Add).collect())
        .build(Some(snapshot), table.log_store(), operation)
        .await?;
    let landed = Landed {
        version: finalized.version(),
        files: adds.len() as u64,
        bytes: adds.iter().map(|a| a.size.max(0) as u64).sum(),
        retries: finalized.metrics.num_retries,
    };
    table.state = Some(finalized.snapshot());
    Ok(Wrote::Landed(landed))
}

async fn merged(
    table: &mut DeltaTable,
    plan: &MergePlan,
    properties: CommitProperties,
) -> Result<Wrote, DeltaTableError> {
    let before = table.version();
    let (merged, m) = merge(table, plan)?
        .with_commit_properties(properties)
        .await?;
    if merged.version() == before {
        return Ok(Wrote::Nothing);
    }
    let version = merged.version().unwrap_or_default();
    *table = merged;
    let landed = Landed {
        version,
        files: m.num_target_files_added as u64,
        bytes: added_bytes(table, version).await,
        retries: 0,
    };
    tracing::info!(
        table = %table.table_url(), version,
        inserted = m.num_target_rows_inserted, updated = m.num_target_rows_updated,
        deleted = m.num_target_rows_deleted, copied = m.num_target_rows_copied,
        files_scanned = m.num_target_files_scanned,
        files_removed = m.num_target_files_removed,
        files_added = landed.files, bytes_added = landed.bytes,
        ms = m.execution_time_ms, scan_ms = m.scan_time_ms,
        rewrite_ms = m.rewrite_time_ms,
        "merged"
    );
    Ok(Wrote::Landed(landed))
}

/// The bytes of the files commit `version` added (0 when its entry cannot be
/// read: a count for the metrics, not worth failing a landed commit for).
async fn added_bytes(table: &DeltaTable, version: u64) -> u64 {
    let entry = match table.log_store().read_commit_entry(version).await {
        Ok(Some(e)) => e,
        Ok(None) => return 0,
        Err(e) => {
            tracing::debug!(version, error = %e, "reading the MERGE's commit for its size");
            return 0;
        }
    };
    entry
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .filter_map(|a| a.get("add").and_then(|add| add["size"].as_u64()))
        .sum()
}
