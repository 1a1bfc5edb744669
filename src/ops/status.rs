//! `tributary status`: where each partition stands and what the table looks like.
//!
//! Lag is counted in records: `lag = high watermark - (stored offset + 1)`, the
//! records Kafka holds for the partition that are not yet accounted for in the table
//! (for a partition with no stored offset: `high - low`), and 0 where no record is
//! left to read (only transaction markers, or aborted records under
//! `read_committed`). The high watermark is read from a fetch response (see
//! [`crate::source::probe`]). The last commit time of a partition
//! comes from the newest commit whose `commitInfo` names it (tributary records the
//! offsets of every commit there), searched over the last 1000 commits.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;

use crate::config::Config;
use crate::offsets::store::OffsetStore;
use crate::ops::tables::{self, FileSummary, MaintenanceError};
use crate::record::TopicPartition;
use crate::source::probe::{self, ProbeError};

/// How many commits to search for per-partition commit times.
const HISTORY_DEPTH: usize = 1000;

/// Errors from `status`.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The table.
    #[error(transparent)]
    Table(#[from] MaintenanceError),
    /// Kafka.
    #[error(transparent)]
    Kafka(#[from] ProbeError),
}

/// One partition's standing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionStatus {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Last offset accounted for in the table.
    pub stored_offset: Option<i64>,
    /// Oldest offset Kafka retains.
    pub low_watermark: i64,
    /// Offset of the next record Kafka will store.
    pub high_watermark: i64,
    /// Records in Kafka not yet in the table.
    pub lag: i64,
    /// When a commit last advanced this partition (ms since the epoch).
    pub last_commit_ms: Option<i64>,
}

/// The whole report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusReport {
    /// The table.
    pub table: String,
    /// Its version.
    pub version: i64,
    /// Time of the latest commit (ms since the epoch).
    pub last_commit_ms: Option<i64>,
    /// Target file size used to count small files.
    pub target_file_size: u64,
    /// File counts and sizes.
    pub files: FileSummary,
    /// Per partition.
    pub partitions: Vec<PartitionStatus>,
    /// Sum of the partitions' lag.
    pub total_lag: i64,
    /// A RESTORE by another engine left the stored offsets ahead of the rows:
    /// what happened and what to run (the daemon stops on it).
    pub foreign_restore: Option<String>,
}

/// Build the report for a config.
pub async fn status(cfg: &Config, timeout: Duration) -> Result<StatusReport, StatusError> {
    let t = tables::open(&cfg.table.uri, &cfg.storage).await?;
    let uri = cfg.table.uri.to_string();
    let target = tables::target_file_size(&t, None);
    let files = tables::file_summary(&t, target).await?;

    let parts = probe::blocking(&cfg.kafka, move |k| probe::partitions(k, timeout)).await?;
    let delta = |e| MaintenanceError::Delta {
        uri: uri.clone(),
        source: Box::new(e),
    };
    let store = OffsetStore::new();
    let stored = store
        .offsets(&t, &cfg.app_id, &parts)
        .await
        .map_err(delta)?;
    let foreign_restore = store
        .hole(&t, &cfg.app_id)
        .await
        .map_err(delta)?
        .map(|h| h.to_string());
    let starts: Vec<(TopicPartition, Option<i64>)> = parts
        .iter()
        .map(|tp| (tp.clone(), stored.get(tp).copied().flatten().map(|o| o + 1)))
        .collect();
    let marks =
        probe::blocking(&cfg.kafka, move |k| probe::watermarks(k, &starts, timeout)).await?;

    let (last_commit_ms, per_partition) = commit_times(&t, &cfg.app_id).await;
    let mut partitions = Vec::with_capacity(parts.len());
    for tp in &parts {
        let w = marks[tp];
        let stored_offset = stored.get(tp).copied().flatten();
        let lag = match stored_offset {
            _ if !w.records_ahead => 0,
            Some(s) => (w.high - (s + 1)).max(0),
            None => (w.high - w.low).max(0),
        };
        partitions.push(PartitionStatus {
            topic: tp.topic.to_string(),
            partition: tp.partition,
            stored_offset,
            low_watermark: w.low,
            high_watermark: w.high,
            lag,
            last_commit_ms: per_partition.get(&tp.to_string()).copied(),
        });
    }
    let total_lag = partitions.iter().map(|p| p.lag).sum();
    Ok(StatusReport {
        table: uri,
        version: t.version().map_or(-1, |v| v as i64),
        last_commit_ms,
        target_file_size: target,
        files,
        partitions,
        total_lag,
        foreign_restore,
    })
}

/// Latest commit time overall and per `topic/partition` named in `commitInfo`.
async fn commit_times(
    t: &deltalake::DeltaTable,
    app_id: &str,
) -> (Option<i64>, BTreeMap<String, i64>) {
    let mut latest = None;
    let mut per = BTreeMap::new();
    let mut history = t.history(Some(HISTORY_DEPTH));
    while let Some(Ok(info)) = history.next().await {
        let Some(ts) = info.timestamp else { continue };
        latest = latest.max(Some(ts));
        if info.info.get("tributary.appId").and_then(|v| v.as_str()) != Some(app_id) {
            continue;
        }
        if let Some(offsets) = info
            .info
            .get("tributary.offsets")
            .and_then(|v| v.as_object())
        {
            for key in offsets.keys() {
                let e = per.entry(key.clone()).or_insert(ts);
                *e = (*e).max(ts);
            }
        }
    }
    (latest, per)
}

/// Format milliseconds since the epoch as RFC 3339 (UTC).
pub fn format_ms(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || "-".to_owned(),
            |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        )
}

/// The human-readable table.
pub fn render(r: &StatusReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "table        {}", r.table);
    let _ = writeln!(
        s,
        "version      {} (last commit {})",
        r.version,
        format_ms(r.last_commit_ms)
    );
    let _ = writeln!(
        s,
        "files        {} ({} bytes); {} smaller than {} bytes",
        r.files.files, r.files.bytes, r.files.small_files, r.target_file_size
    );
    if r.files.files_with_vectors > 0 {
        let _ = writeln!(
            s,
            "deleted      {} of {} rows ({:.1}%) by deletion vectors in {} files \
             (`compact` drops them from the small files it rewrites)",
            r.files.deleted_rows,
            r.files.rows,
            100.0 * r.files.deleted_fraction(),
            r.files.files_with_vectors
        );
    }
    let _ = writeln!(s, "total lag    {} records", r.total_lag);
    if let Some(hole) = &r.foreign_restore {
        let _ = writeln!(s, "ERROR        {hole}");
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<32} {:>9} {:>14} {:>14} {:>10}  last commit",
        "topic", "partition", "stored offset", "high watermark", "lag"
    );
    for p in &r.partitions {
        let stored = p.stored_offset.map_or("-".to_owned(), |o| o.to_string());
        let _ = writeln!(
            s,
            "{:<32} {:>9} {:>14} {:>14} {:>10}  {}",
            p.topic,
            p.partition,
            stored,
            p.high_watermark,
            p.lag,
            format_ms(p.last_commit_ms)
        );
    }
    s
}
