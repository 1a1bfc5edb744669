//! The merge-on-read body: the window's deletion vectors and new files
//! ([`crate::sink::dv::apply`]) and its offsets in one commit, on the version
//! the vectors were computed from and no other (see the engine's notes on
//! re-planning).

use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Add};
use deltalake::protocol::DeltaOperation;
use deltalake::{DeltaTable, DeltaTableError};

use super::wrote::{Landed, Wrote};
use crate::sink::dv::apply::{ApplyError, apply};
use crate::sink::dv::error::LocateError;
use crate::sink::dv::index::KeyIndex;
use crate::sink::upsert::MergePlan;

/// Apply `plan` by merge-on-read and commit it with `properties`.
pub(super) async fn write(
    table: &mut DeltaTable,
    keys: &KeyIndex,
    plan: &MergePlan,
    properties: CommitProperties,
) -> Result<Wrote, DeltaTableError> {
    let started = std::time::Instant::now();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let m = apply(table, keys, plan, now_ms)
        .await
        .map_err(delta_error)?;
    if m.actions.is_empty() {
        return Ok(Wrote::Nothing);
    }
    let applied_ms = started.elapsed().as_millis() as u64;
    let new_files: Vec<&Add> = m
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Add(add) if add.deletion_vector.is_none() => Some(add),
            _ => None,
        })
        .collect();
    let (files, bytes) = (
        new_files.len() as u64,
        new_files.iter().map(|a| a.size.max(0) as u64).sum(),
    );
    let on = plan
        .key
        .iter()
        .map(|k| format!("t.`{k}` = s.`{k}`"))
        .collect::<Vec<_>>()
        .join(" AND ");
    let operation = DeltaOperation::Merge {
        predicate: None,
        merge_predicate: Some(on),
        matched_predicates: Vec::new(),
        not_matched_predicates: Vec::new(),
        not_matched_by_source_predicates: Vec::new(),
    };
    let snapshot = table.snapshot()?;
    let committed = CommitBuilder::from(properties.with_max_retries(0))
        .with_actions(m.actions)
        .build(Some(snapshot), table.log_store(), operation)
        .await;
    let finalized = match committed {
        Ok(f) => f,
        Err(DeltaTableError::Transaction {
            source:
                TransactionError::MaxCommitAttempts(_) | TransactionError::VersionAlreadyExists(_),
        }) => return Ok(Wrote::Lost),
        Err(e) => return Err(e),
    };
    let landed = Landed {
        version: finalized.version(),
        files,
        bytes,
        retries: 0,
    };
    table.state = Some(finalized.snapshot());
    tracing::info!(
        table = %table.table_url(), version = landed.version,
        rows_deleted = m.rows_deleted, files_with_vectors = m.files_with_vectors,
        rows_written = m.rows_written, files_added = files, bytes_added = bytes,
        apply_ms = applied_ms, ms = started.elapsed().as_millis() as u64,
        "merged on read"
    );
    Ok(Wrote::Landed(landed))
}

/// An apply error as delta-rs' kind, so that the engine classifies it the
/// same way (storage trouble is transient, a table that cannot hold the
/// changes is not).
fn delta_error(e: ApplyError) -> DeltaTableError {
    match e {
        ApplyError::Delta(e) => *e,
        ApplyError::Locate(l) => match *l {
            LocateError::Delta(e) => e,
            LocateError::Parquet { source, .. } => DeltaTableError::Parquet { source },
            other => DeltaTableError::Generic(other.to_string()),
        },
        other => DeltaTableError::Generic(other.to_string()),
    }
}
