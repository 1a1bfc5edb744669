//! `tributary offsets set|reset`: move the offsets stored in the table, to replay
//! or skip records.
//!
//! The change is an explicit Delta commit holding only `txn` actions (and a
//! `commitInfo` naming the operation), so it is atomic, visible in the table
//! history, and ordered with the daemon's commits. A running daemon of the same app
//! id would race it, so the command refuses while the consumer group has members,
//! unless forced; a daemon that does race it loses its next commit (the offsets it
//! expected have moved), rewinds, and continues from the new offsets.
//!
//! Offsets are given as the *next* record to ingest: `--offset 100` stores 99.

use std::collections::BTreeMap;
use std::time::Duration;

use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::protocol::{DeltaOperation, SaveMode};

use crate::config::Config;
use crate::ops::tables::{self, MaintenanceError};
use crate::record::TopicPartition;
use crate::sink::table;
use crate::source::probe::{self, ProbeError};

/// Where to move the partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The next record to ingest has this offset.
    Offset(i64),
    /// Replay everything Kafka retains.
    Earliest,
    /// Skip to the end: ingest only records produced from now on.
    Latest,
    /// Replay from the first record with a timestamp at or after this one (ms since
    /// the epoch); partitions with no such record skip to their end.
    Timestamp(i64),
}

/// Errors from `offsets`.
#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    /// The table.
    #[error(transparent)]
    Table(#[from] MaintenanceError),
    /// Kafka.
    #[error(transparent)]
    Kafka(#[from] ProbeError),
    /// A daemon may be running.
    #[error(
        "consumer group {group} has {members} active member(s): a running daemon of this app would race \
         the change. Stop it first, or pass --force"
    )]
    Active {
        /// Group id.
        group: String,
        /// Members.
        members: usize,
    },
    /// The group could not be inspected.
    #[error(
        "cannot tell whether a daemon of group {group} is running ({message}); pass --force to proceed anyway"
    )]
    Unknown {
        /// Group id.
        group: String,
        /// Why.
        message: String,
    },
    /// A named partition does not exist.
    #[error("partition {0} is not a partition of the configured topics")]
    NoSuchPartition(String),
}

/// One partition's move.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OffsetChange {
    /// Partition as `topic/partition`.
    pub partition: String,
    /// Stored offset before.
    pub before: Option<i64>,
    /// Stored offset after (next record to ingest minus one).
    pub after: i64,
}

/// The result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OffsetsReport {
    /// Per partition.
    pub changes: Vec<OffsetChange>,
    /// The commit, unless a dry run.
    pub version: Option<i64>,
}

/// What moving an upsert table's offsets back does to what readers see: the
/// daemon applies the changes from there on again. `None` for an append table
/// (the replay's rows are appended: `verify` counts them as duplicates).
pub fn replay_note(table: &crate::config::TableConfig) -> Option<String> {
    let u = table.upsert.as_ref()?;
    Some(match &u.order_by {
        None => format!(
            "note: {} is an upsert table without order_by: the daemon applies the changes \
             from the new offset on again, so until it passes the old position readers see \
             older values, and keys deleted since come back; set order_by (a source position \
             or change time) to make replays change nothing",
            table.uri
        ),
        Some(o) => format!(
            "note: {} is an upsert table ordered by `{o}`: replayed changes never replace newer \
             rows, and keys deleted within delete_horizon ({}) stay deleted",
            table.uri,
            humantime::format_duration(u.delete_horizon)
        ),
    })
}

/// Move the stored offsets of `only` (all partitions of the configured topics when
/// empty) to `target`.
pub async fn set(
    cfg: &Config,
    only: &[TopicPartition],
    target: Target,
    force: bool,
    dry_run: bool,
    timeout: Duration,
) -> Result<OffsetsReport, OffsetsError> {
    let all = probe::blocking(&cfg.kafka, move |k| probe::partitions(k, timeout)).await?;
    let parts: Vec<TopicPartition> = if only.is_empty() {
        all
    } else {
        for tp in only {
            if !all.contains(tp) {
                return Err(OffsetsError::NoSuchPartition(tp.to_string()));
            }
        }
        only.to_vec()
    };
    if !force && !dry_run {
        refuse_active_group(cfg, timeout).await?;
    }
    let mut t = tables::open(&cfg.table.uri, &cfg.storage).await?;
    let uri = cfg.table.uri.to_string();
    let delta_err = |e| MaintenanceError::Delta {
        uri: uri.clone(),
        source: Box::new(e),
    };
    let before = table::stored_offsets(&t, &cfg.app_id, &parts)
        .await
        .map_err(delta_err)?;
    let next = next_offsets(cfg, &parts, target, timeout).await?;
    let changes: Vec<OffsetChange> = next
        .iter()
        .map(|(tp, n)| OffsetChange {
            partition: tp.to_string(),
            before: before.get(tp).copied().flatten(),
            after: n - 1,
        })
        .collect();
    if dry_run {
        return Ok(OffsetsReport {
            changes,
            version: None,
        });
    }
    let version = commit_offsets(cfg, &mut t, &next)
        .await
        .map_err(delta_err)?;
    Ok(OffsetsReport {
        changes,
        version: Some(version),
    })
}

/// Moving offsets under a running consumer group races its commits: refuse
/// unless the group is empty.
pub(crate) async fn refuse_active_group(
    cfg: &Config,
    timeout: Duration,
) -> Result<(), OffsetsError> {
    let members = probe::blocking(&cfg.kafka, move |k| probe::group_members(k, timeout)).await;
    match members {
        Ok(0) => {}
        Ok(n) => {
            return Err(OffsetsError::Active {
                group: cfg.kafka.group_id.clone(),
                members: n,
            });
        }
        Err(e) => {
            return Err(OffsetsError::Unknown {
                group: cfg.kafka.group_id.clone(),
                message: e.to_string(),
            });
        }
    }
    Ok(())
}

/// The next offset to ingest per partition for `target`.
async fn next_offsets(
    cfg: &Config,
    parts: &[TopicPartition],
    target: Target,
    timeout: Duration,
) -> Result<BTreeMap<TopicPartition, i64>, OffsetsError> {
    Ok(match target {
        Target::Offset(o) => parts.iter().map(|tp| (tp.clone(), o)).collect(),
        Target::Timestamp(ts) => {
            let all = parts.to_vec();
            let found = probe::blocking(&cfg.kafka, move |k| {
                probe::offsets_for_timestamp(k, &all, ts, timeout)
            })
            .await?;
            // No record at or after the time yet: continue from the end.
            let ends: Vec<(TopicPartition, Option<i64>)> = parts
                .iter()
                .filter(|tp| found.get(*tp).copied().flatten().is_none())
                .map(|tp| (tp.clone(), None))
                .collect();
            let marks = if ends.is_empty() {
                BTreeMap::new()
            } else {
                probe::blocking(&cfg.kafka, move |k| probe::watermarks(k, &ends, timeout)).await?
            };
            parts
                .iter()
                .map(|tp| {
                    let next = found
                        .get(tp)
                        .copied()
                        .flatten()
                        .or_else(|| marks.get(tp).map(|w| w.high))
                        .unwrap_or(0);
                    (tp.clone(), next)
                })
                .collect()
        }
        Target::Earliest | Target::Latest => {
            let starts: Vec<(TopicPartition, Option<i64>)> =
                parts.iter().map(|tp| (tp.clone(), None)).collect();
            let marks =
                probe::blocking(&cfg.kafka, move |k| probe::watermarks(k, &starts, timeout))
                    .await?;
            marks
                .into_iter()
                .map(|(tp, w)| {
                    (
                        tp,
                        if target == Target::Earliest {
                            w.low
                        } else {
                            w.high
                        },
                    )
                })
                .collect()
        }
    })
}

/// One txn-only commit that stores `next - 1` for each partition; its version.
async fn commit_offsets(
    cfg: &Config,
    t: &mut deltalake::DeltaTable,
    next: &BTreeMap<TopicPartition, i64>,
) -> Result<i64, deltalake::DeltaTableError> {
    let txns = next
        .iter()
        .map(|(tp, n)| Transaction::new(table::txn_app_id(&cfg.app_id, tp), n - 1))
        .collect();
    let offsets: serde_json::Map<String, serde_json::Value> = next
        .iter()
        .map(|(tp, n)| (tp.to_string(), serde_json::Value::from(n - 1)))
        .collect();
    let props = CommitProperties::default()
        .with_application_transactions(txns)
        .with_metadata([
            ("tributary.operation".to_owned(), "offsets-set".into()),
            ("tributary.appId".to_owned(), cfg.app_id.clone().into()),
            (
                "tributary.offsets".to_owned(),
                serde_json::Value::Object(offsets),
            ),
        ])
        .with_max_retries(100);
    t.update_state().await?;
    let snapshot = t.snapshot()?;
    let finalized = CommitBuilder::from(props)
        .with_actions(vec![])
        .build(
            Some(snapshot),
            t.log_store(),
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: None,
                predicate: None,
            },
        )
        .await?;
    Ok(finalized.version() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;

    fn table(extra: &str) -> crate::config::TableConfig {
        let schema = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            schema.path(),
            r#"{"type":"struct","fields":[{"name":"id","type":"long","nullable":false,"metadata":{}},{"name":"lsn","type":"long","nullable":true,"metadata":{}}]}"#,
        )
        .unwrap();
        let text = format!(
            "app_id = \"a\"\n[kafka]\nbrokers = \"127.0.0.1:9092\"\ntopics = [\"t\"]\n[table]\n\
             uri = \"s3://b/t\"\nschema_file = \"{}\"\n{extra}",
            schema.path().display()
        );
        RawConfig::parse(&text, None, &|_| None)
            .unwrap()
            .validate()
            .unwrap()
            .table
    }

    /// Issue 22, case 8: moving an upsert table's offsets back replays its
    /// changes; the operator is told what readers will see.
    #[test]
    fn moving_an_upsert_tables_offsets_back_says_what_a_replay_does() {
        assert_eq!(replay_note(&table("")), None);
        let unordered = replay_note(&table("mode = \"upsert\"\nkey = [\"id\"]")).unwrap();
        assert!(unordered.contains("older values"), "{unordered}");
        assert!(unordered.contains("set order_by"), "{unordered}");
        let ordered = replay_note(&table(
            "mode = \"upsert\"\nkey = [\"id\"]\norder_by = \"lsn\"\ndelete_horizon = \"2d\"",
        ))
        .unwrap();
        assert!(ordered.contains("never replace newer rows"), "{ordered}");
        assert!(ordered.contains("(2days)"), "{ordered}");
    }
}
