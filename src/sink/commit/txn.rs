//! The transaction half of a commit, the same for every body: the compare of
//! the compare-and-swap (what the offsets stored now say about the commit),
//! and the `txn` actions and commit metadata that carry its offsets.

use std::collections::HashMap;

use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;

use super::{CommitOutcome, PartitionCommit, RetryPolicy};
use crate::offsets::store::txn_app_id;
use crate::record::TopicPartition;

/// Whether a commit of `partitions` moves some partition's stored offset. Only
/// then can a retry tell from the offsets that an earlier attempt landed.
pub fn moves_offsets(partitions: &[PartitionCommit]) -> bool {
    partitions.iter().any(|p| p.expected != Some(p.last))
}

/// The compare half of the compare-and-swap: what the offsets stored now say
/// about a commit of `partitions`. `None`: every partition is at its expected
/// offset, commit.
pub fn compare(
    partitions: &[PartitionCommit],
    stored: &HashMap<TopicPartition, Option<i64>>,
) -> Option<CommitOutcome> {
    // A commit that moves no offset (dead letters of a replayed window that
    // ends below the offset the dead-letter table holds) cannot tell from the
    // offsets whether it landed: the engine makes one attempt only.
    if moves_offsets(partitions)
        && partitions
            .iter()
            .all(|p| stored.get(&p.tp).copied().flatten() == Some(p.last))
    {
        return Some(CommitOutcome::AlreadyCommitted);
    }
    let stale: Vec<(TopicPartition, Option<i64>)> = partitions
        .iter()
        .filter_map(|p| {
            let now = stored.get(&p.tp).copied().flatten();
            (now != p.expected).then(|| (p.tp.clone(), now))
        })
        .collect();
    if !stale.is_empty() {
        return Some(CommitOutcome::Stale { partitions: stale });
    }
    None
}

/// The commit's properties: a txn per partition (and the same offsets in
/// commitInfo), delta-rs' conflict retries, no checkpoint or log cleanup inside
/// it. Also the (app id, offset) pairs written, for the offset store.
pub fn commit_properties(
    app_id: &str,
    partitions: &[PartitionCommit],
    policy: RetryPolicy,
) -> (CommitProperties, Vec<(String, i64)>) {
    let written: Vec<(String, i64)> = partitions
        .iter()
        .map(|p| (txn_app_id(app_id, &p.tp), p.last))
        .collect();
    let txns = written
        .iter()
        .map(|(app, last)| Transaction::new(app, *last))
        .collect();
    // The offsets also go into commitInfo, so history shows which partitions and
    // offsets each commit covered (status reads last commit times from it).
    let by_partition: serde_json::Map<String, serde_json::Value> = partitions
        .iter()
        .map(|p| (p.tp.to_string(), serde_json::Value::from(p.last)))
        .collect();
    let properties = CommitProperties::default()
        .with_application_transactions(txns)
        .with_metadata([
            (
                "tributary.appId".to_owned(),
                serde_json::Value::from(app_id),
            ),
            (
                "tributary.offsets".to_owned(),
                serde_json::Value::Object(by_partition),
            ),
        ])
        .with_max_retries(policy.max_conflict_retries)
        // Checkpoints and log cleanup run after the commit (crate::sink::checkpoint):
        // inside it, a failed checkpoint made a landed commit look failed, and
        // the cleanup listed the whole log on every commit.
        .with_create_checkpoint(false)
        .with_cleanup_expired_logs(Some(false));
    (properties, written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(p: i32, expected: Option<i64>, last: i64) -> PartitionCommit {
        PartitionCommit {
            tp: TopicPartition::new("t", p),
            expected,
            last,
        }
    }

    #[test]
    fn the_compare_half_of_the_swap() {
        let (a, b) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        let partitions = vec![part(0, Some(4), 9), part(1, None, 2)];
        let stored = |x, y| HashMap::from([(a.clone(), x), (b.clone(), y)]);
        // Every partition where this window expects it: commit.
        assert_eq!(compare(&partitions, &stored(Some(4), None)), None);
        // Every partition already at the window's last: an earlier attempt landed.
        assert_eq!(
            compare(&partitions, &stored(Some(9), Some(2))),
            Some(CommitOutcome::AlreadyCommitted)
        );
        // Any other value on any partition: stale, naming what is stored.
        assert_eq!(
            compare(&partitions, &stored(Some(4), Some(0))),
            Some(CommitOutcome::Stale {
                partitions: vec![(b.clone(), Some(0))]
            })
        );
        assert_eq!(
            compare(&partitions, &stored(Some(9), None)),
            Some(CommitOutcome::Stale {
                partitions: vec![(a.clone(), Some(9))]
            })
        );
        // A commit that moves nothing is never taken as already landed.
        assert_eq!(
            compare(&[part(0, Some(9), 9)], &stored(Some(9), None)),
            None
        );
    }

    #[test]
    fn only_a_commit_that_moves_an_offset_can_be_recognised_as_landed() {
        assert!(moves_offsets(&[part(0, None, 4)]));
        assert!(moves_offsets(&[part(0, Some(4), 4), part(1, Some(2), 9)]));
        // Dead letters of a replayed window ending below the stored offset.
        assert!(!moves_offsets(&[part(0, Some(4), 4)]));
        assert!(!moves_offsets(&[part(0, Some(4), 4), part(1, Some(7), 7)]));
    }

    #[test]
    fn every_partition_rides_as_a_txn_action_and_in_commit_info() {
        let (props, written) =
            commit_properties("app", &[part(0, None, 4), part(3, Some(1), 9)], policy());
        assert_eq!(
            written,
            vec![
                (txn_app_id("app", &TopicPartition::new("t", 0)), 4),
                (txn_app_id("app", &TopicPartition::new("t", 3)), 9)
            ]
        );
        let debug = format!("{props:?}");
        assert!(debug.contains("tributary.offsets"), "{debug}");
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_conflict_retries: 3,
            max_replans: 2,
            initial_backoff: std::time::Duration::from_millis(1),
            max_backoff: std::time::Duration::from_millis(2),
        }
    }
}
