//! `checkpoint`: a checkpoint of the current version, and expired log files removed.

use super::*;

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
