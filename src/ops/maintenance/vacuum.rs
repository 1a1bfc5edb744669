//! `vacuum`: delete unreferenced files older than the retention, refusing a
//! retention below the table's unless forced.

use super::*;

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
