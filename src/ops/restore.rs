//! `tributary restore`: Delta time travel that keeps exactly-once.
//!
//! A plain RESTORE (Spark's `RESTORE TABLE … TO VERSION AS OF n`, delta-rs'
//! `restore`) brings back version `n`'s files but not its offsets: log replay
//! keeps the newest `txn` per app id, so the daemon carries on from the newest
//! offsets and every record written after version `n` is gone for good. This
//! command makes one commit that restores the files (delta-rs' restore: adds for
//! the files `n` had and the table lost, removes for the files added since,
//! `n`'s schema) and, in the same commit, sets every partition's `txn` back to
//! the offset stored at version `n`. The daemon then replays exactly the records
//! after that point.
//!
//! A partition with no offset stored at `n` (first written after it) is set to
//! -1: it replays from the earliest record Kafka retains. The dead-letter table
//! is left as it is: a replayed record that was dead-lettered before is
//! recognised there (the table holds its offset) and is rejected again without a
//! second copy, so each record stays in exactly one of the two tables.
//!
//! Like `offsets set`, it refuses while the consumer group has members unless
//! forced. A daemon that commits anyway cannot duplicate anything: delta-rs'
//! restore commits with no conflict retries (any concurrent commit fails it and
//! this command plans again against the new version, up to [`ATTEMPTS`] times),
//! and the daemon's next commit finds its partitions' offsets moved (stale), so
//! it drops its window and rewinds to the restored offsets.

use std::collections::HashSet;
use std::time::Duration;

use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::{CommitProperties, TransactionError};
use deltalake::{DeltaTable, DeltaTableError};
use futures::TryStreamExt as _;

use crate::config::Config;
use crate::offsets::store::OffsetStore;
use crate::ops::offsets::{OffsetsError, refuse_active_group};
use crate::ops::tables::{self, MaintenanceError};
use crate::record::TopicPartition;
use crate::sink::table;

/// Plans made and commits tried before giving up on a table that keeps changing.
pub const ATTEMPTS: u32 = 5;

/// The `tributary.operation` of a restore commit in `commitInfo`; a RESTORE
/// commit without it was made by another engine.
pub const OPERATION: &str = "restore";

/// The version to go back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreTarget {
    /// This table version.
    Version(u64),
    /// The last version committed at or before this time (ms since the epoch).
    Timestamp(i64),
}

/// Errors from `restore`.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Opening the table.
    #[error(transparent)]
    Table(#[from] MaintenanceError),
    /// The consumer group check.
    #[error(transparent)]
    Group(#[from] OffsetsError),
    /// delta-rs failed.
    #[error("restoring table {uri}: {source}")]
    Delta {
        /// The table.
        uri: String,
        /// delta-rs' error.
        #[source]
        source: Box<DeltaTableError>,
    },
    /// The target is the current version or newer.
    #[error(
        "table {uri} is at version {current}: restore to an earlier version (asked for {asked})"
    )]
    NotEarlier {
        /// The table.
        uri: String,
        /// Its current version.
        current: u64,
        /// The version asked for.
        asked: u64,
    },
    /// Concurrent commits beat every attempt.
    #[error(
        "table {uri} kept changing: {ATTEMPTS} restore attempts lost to concurrent commits; \
         stop the daemons (or whatever else writes) and run it again"
    )]
    Contended {
        /// The table.
        uri: String,
    },
}

/// One partition's stored offset before and after the restore.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OffsetMove {
    /// The partition.
    #[serde(skip)]
    pub tp: TopicPartition,
    /// Partition as `topic/partition`.
    pub partition: String,
    /// Stored now.
    pub before: Option<i64>,
    /// Stored after the restore (as at the target version; -1: from the start).
    pub after: i64,
    /// Offsets the daemon will read again: `before - after`.
    pub replayed: i64,
}

/// What a restore does (or did).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreReport {
    /// The version the table was at.
    pub from_version: u64,
    /// The version restored.
    pub to_version: u64,
    /// Files of the target version brought back.
    pub files_restored: usize,
    /// Files added since the target version, removed.
    pub files_removed: usize,
    /// Partitions whose stored offset moves.
    pub partitions: Vec<OffsetMove>,
    /// Offsets the daemons will read again, all partitions together.
    pub replayed: i64,
    /// The restore commit, unless a dry run.
    pub version: Option<u64>,
}

/// Restore the configured table to `target` with its offsets (or, with
/// `dry_run`, say what that would do).
pub async fn restore(
    cfg: &Config,
    target: RestoreTarget,
    force: bool,
    dry_run: bool,
    timeout: Duration,
) -> Result<RestoreReport, RestoreError> {
    if !force && !dry_run {
        refuse_active_group(cfg, timeout).await?;
    }
    let uri = cfg.table.uri.to_string();
    let delta = |source| RestoreError::Delta {
        uri: uri.clone(),
        source: Box::new(source),
    };
    for _ in 0..ATTEMPTS {
        let latest = tables::open(&cfg.table.uri, &cfg.storage).await?;
        let mut report = plan(cfg, &latest, target).await?;
        if dry_run {
            return Ok(report);
        }
        let restored = latest
            .restore()
            .with_version_to_restore(report.to_version)
            .with_commit_properties(properties(cfg, &report))
            .await;
        match restored {
            Ok((table, metrics)) => {
                report.files_restored = metrics.num_restored_file;
                report.files_removed = metrics.num_removed_file;
                report.version = table.version();
                return Ok(report);
            }
            // No conflict retries in delta-rs' restore: a commit landed since
            // the plan was made. Plan again against it.
            Err(DeltaTableError::Transaction {
                source: TransactionError::MaxCommitAttempts(_),
            }) => {
                tracing::warn!(table = %uri, "a commit landed while restoring; planning again");
            }
            Err(e) => return Err(delta(e)),
        }
    }
    Err(RestoreError::Contended { uri })
}

/// The restore of `latest` to `target`: the files either side and every
/// partition's offset now and at the target.
async fn plan(
    cfg: &Config,
    latest: &DeltaTable,
    target: RestoreTarget,
) -> Result<RestoreReport, RestoreError> {
    let uri = cfg.table.uri.to_string();
    let delta = |source| RestoreError::Delta {
        uri: uri.clone(),
        source: Box::new(source),
    };
    let current = latest.version().unwrap_or(0);
    let mut old = table::table_handle(&cfg.table.uri, &cfg.storage).map_err(|e| {
        RestoreError::Table(MaintenanceError::Storage {
            uri: uri.clone(),
            message: e.to_string(),
            hint: String::new(),
        })
    })?;
    match target {
        RestoreTarget::Version(v) if v >= current => {
            return Err(RestoreError::NotEarlier {
                uri,
                current,
                asked: v,
            });
        }
        RestoreTarget::Version(v) => old.load_version(v).await.map_err(delta)?,
        RestoreTarget::Timestamp(ms) => {
            let at = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
            old.load_with_datetime(at).await.map_err(delta)?
        }
    }
    let to_version = old.version().unwrap_or(0);
    if to_version >= current {
        return Err(RestoreError::NotEarlier {
            uri,
            current,
            asked: to_version,
        });
    }
    let partitions = offset_moves(cfg, latest, &old).await.map_err(delta)?;
    let (now, then) = (
        file_paths(latest).await.map_err(delta)?,
        file_paths(&old).await.map_err(delta)?,
    );
    Ok(RestoreReport {
        from_version: current,
        to_version,
        files_restored: then.difference(&now).count(),
        files_removed: now.difference(&then).count(),
        replayed: partitions.iter().map(|m| m.replayed).sum(),
        partitions,
        version: None,
    })
}

/// Every partition stored now whose offset differs at the target version.
async fn offset_moves(
    cfg: &Config,
    latest: &DeltaTable,
    old: &DeltaTable,
) -> Result<Vec<OffsetMove>, DeltaTableError> {
    let app = &cfg.app_id;
    let parts: Vec<TopicPartition> = OffsetStore::new().partitions(latest, app).await?;
    let now = OffsetStore::new().offsets(latest, app, &parts).await?;
    let then = OffsetStore::new().offsets(old, app, &parts).await?;
    Ok(parts
        .iter()
        .filter_map(|tp| {
            let before = now.get(tp).copied().flatten();
            let after = then.get(tp).copied().flatten().unwrap_or(-1);
            (before != Some(after)).then(|| OffsetMove {
                tp: tp.clone(),
                partition: tp.to_string(),
                before,
                after,
                replayed: (before.unwrap_or(-1) - after).max(0),
            })
        })
        .collect())
}

async fn file_paths(t: &DeltaTable) -> Result<HashSet<String>, DeltaTableError> {
    t.snapshot()?
        .snapshot()
        .file_views(t.log_store().as_ref(), None)
        .map_ok(|f| f.path().to_string())
        .try_collect()
        .await
}

/// The restore commit's `txn` actions (the target's offsets) and `commitInfo`
/// (what it was, so a daemon can tell it from a foreign RESTORE).
fn properties(cfg: &Config, report: &RestoreReport) -> CommitProperties {
    let actions = report
        .partitions
        .iter()
        .map(|m| Transaction::new(table::txn_app_id(&cfg.app_id, &m.tp), m.after))
        .collect();
    let offsets: serde_json::Map<String, serde_json::Value> = report
        .partitions
        .iter()
        .map(|m| (m.partition.clone(), serde_json::Value::from(m.after)))
        .collect();
    CommitProperties::default()
        .with_application_transactions(actions)
        .with_metadata([
            ("tributary.operation".to_owned(), OPERATION.into()),
            ("tributary.appId".to_owned(), cfg.app_id.clone().into()),
            (
                "tributary.restoredVersion".to_owned(),
                report.to_version.into(),
            ),
            (
                "tributary.offsets".to_owned(),
                serde_json::Value::Object(offsets),
            ),
        ])
}
