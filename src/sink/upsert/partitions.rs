//! The partition count an upsert table was written with, per topic, kept in
//! the table's properties (`tributary.upsert.partitions.<topic>`).
//!
//! When a topic gains partitions the producer's partitioner sends a key's new
//! changes to another partition. Two things can then go wrong: with the Kafka
//! partition in the key (the ownership column) the key gets a second row, and
//! without `order_by` the old partition's last changes of a key can be applied
//! after the new partition's newer ones (they are consumed in parallel).
//! With `order_by` (and no partition column in the key) neither can happen:
//! an older change never replaces a newer row, and the table remembers the
//! order values of deleted keys for its delete horizon ([`super::deletes`]),
//! so the new count is recorded by itself; otherwise the daemon stops and
//! says what to do. An operator who has judged it safe (e.g. the old
//! partitions are drained) sets the property to the new count.

use std::collections::HashMap;

use deltalake::{DeltaTable, DeltaTableError};

use crate::record::TopicPartition;
use crate::sink::options::UpsertSpec;

/// The table property holding `topic`'s partition count.
pub fn property(topic: &str) -> String {
    format!("tributary.upsert.partitions.{topic}")
}

/// The partition count the table records for `topic` (`None` when it records
/// none or something that is not a count).
pub fn recorded(table: &DeltaTable, topic: &str) -> Option<u32> {
    let snapshot = table.snapshot().ok()?;
    snapshot
        .metadata()
        .configuration()
        .get(&property(topic))
        .and_then(|v| v.trim().parse().ok())
}

/// The partition count a table that records none was written with, at
/// least: one more than the highest partition it holds an offset of (`None`
/// when it holds none).
pub fn written_with(stored: &HashMap<TopicPartition, Option<i64>>) -> Option<u32> {
    stored
        .iter()
        .filter(|(_, o)| o.is_some())
        .map(|(tp, _)| tp.partition.max(0) as u32 + 1)
        .max()
}

/// What to do about a topic's partition count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The table records this count already.
    Same,
    /// Record the count (first time, or a change that cannot harm the table).
    Record,
    /// The count changed in a way that can leave a key twice or out of order:
    /// stop and say so.
    Refuse(String),
}

/// Judge the topic's partition count `now` against the table's `recorded`
/// one, for a table keyed by `spec` whose partition metadata column is
/// `partition_column`.
pub fn judge(
    spec: &UpsertSpec,
    partition_column: Option<&str>,
    recorded: Option<u32>,
    now: u32,
) -> Verdict {
    let Some(was) = recorded else {
        return Verdict::Record;
    };
    if was == now {
        return Verdict::Same;
    }
    let owned = partition_column.is_some_and(|p| spec.key.iter().any(|k| k == p));
    let why = if owned {
        format!(
            "the key includes the Kafka partition column `{}`: a key whose changes move to \
             another partition would get a second row",
            partition_column.unwrap_or_default()
        )
    } else if spec.order_by.is_none() {
        "the table has no order_by: a moved key's last changes in its old partition could be \
         applied after newer ones in its new partition"
            .to_owned()
    } else {
        // With order_by the table remembers deleted keys' order values
        // (`deletes`): a moved key's older change stays out.
        return Verdict::Record;
    };
    Verdict::Refuse(why)
}

/// The message for a refused change of `topic`'s count on table `uri`.
pub fn refusal(uri: &str, topic: &str, was: Option<u32>, now: u32, why: &str) -> String {
    let was = was.map_or_else(|| "?".to_owned(), |w| w.to_string());
    format!(
        "topic `{topic}` has {now} partitions but upsert table {uri} was written with {was}; \
         {why}. Upsert a new table from this topic (or rebuild this one from a compacted \
         topic); or, once the old partitions are drained and the result is acceptable, set \
         the table property `{}` to {now} (Spark: ALTER TABLE ... SET TBLPROPERTIES; \
         Python deltalake: DeltaTable(uri).alter.set_table_properties) and restart",
        property(topic)
    )
}

/// How many times [`record`] tries before giving up on racing commits.
const RECORD_ATTEMPTS: u32 = 10;

/// Record `now` as `topic`'s partition count in the table's properties (a
/// metadata commit) where it records none. Replicas starting together race to
/// record it: a commit that loses reads the table again and is done when the
/// winner recorded the same count; a winner that recorded another count (the
/// replicas' metadata disagreed, the topic grew meanwhile) is never
/// overwritten: `Err(that count)`, to be judged like any changed count.
pub async fn record(
    table: &mut DeltaTable,
    topic: &str,
    now: u32,
) -> Result<Result<(), u32>, DeltaTableError> {
    let mut attempt = 1;
    loop {
        let result = table
            .clone()
            .set_tbl_properties()
            .with_properties(HashMap::from([(property(topic), now.to_string())]))
            .with_raise_if_not_exists(false)
            .await;
        match result {
            Ok(updated) => {
                *table = updated;
                return Ok(Ok(()));
            }
            Err(DeltaTableError::Transaction { .. }) if attempt < RECORD_ATTEMPTS => {
                attempt += 1;
                table.update_state().await?;
                match recorded(table, topic) {
                    Some(was) if was == now => return Ok(Ok(())),
                    Some(was) => return Ok(Err(was)),
                    None => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(key: &[&str], order_by: Option<&str>) -> UpsertSpec {
        UpsertSpec {
            key: key.iter().map(|k| k.to_string()).collect(),
            order_by: order_by.map(str::to_owned),
            envelope: Default::default(),
            source_order: None,
            delete_horizon: std::time::Duration::ZERO,
            strategy: Default::default(),
        }
    }

    #[test]
    fn a_count_is_recorded_once_and_a_change_is_refused_unless_it_is_harmless() {
        let by_key = spec(&["_key"], None);
        let owned = spec(&["_partition", "_key"], Some("lsn"));
        let ordered = spec(&["_key"], Some("lsn"));
        let p = Some("_partition");
        assert_eq!(judge(&by_key, p, None, 8), Verdict::Record);
        assert_eq!(judge(&by_key, p, Some(8), 8), Verdict::Same);
        assert!(
            matches!(judge(&by_key, p, Some(8), 12), Verdict::Refuse(w) if w.contains("order_by"))
        );
        assert!(
            matches!(judge(&owned, p, Some(8), 12), Verdict::Refuse(w) if w.contains("`_partition`"))
        );
        // With order_by, deletes are remembered: a moved key's older change
        // stays out.
        assert_eq!(judge(&ordered, p, Some(8), 12), Verdict::Record);
        // Without a partition metadata column the key cannot hold it.
        assert_eq!(judge(&owned, None, Some(8), 12), Verdict::Record);
    }

    /// Issue 22, case 7: a table with no recorded count accepted any count;
    /// its stored offsets show the partitions it was written with at least.
    #[test]
    fn a_table_without_a_count_was_written_with_the_partitions_it_has_offsets_of() {
        let tp = |p| TopicPartition::new("t", p);
        let stored = HashMap::from([(tp(0), Some(5)), (tp(1), Some(0)), (tp(2), None)]);
        assert_eq!(written_with(&stored), Some(2));
        let by_key = spec(&["_key"], None);
        assert!(matches!(
            judge(&by_key, None, written_with(&stored), 4),
            Verdict::Refuse(_)
        ));
        assert_eq!(
            judge(&by_key, None, written_with(&stored), 2),
            Verdict::Same
        );
        assert_eq!(written_with(&HashMap::from([(tp(0), None)])), None);
    }

    #[test]
    fn the_refusal_names_the_counts_the_property_and_what_to_do() {
        let m = refusal("s3://b/t", "orders", Some(8), 12, "because");
        assert!(m.contains("`orders` has 12 partitions"), "{m}");
        assert!(m.contains("written with 8"), "{m}");
        assert!(m.contains("tributary.upsert.partitions.orders"), "{m}");
        assert!(m.contains("new table"), "{m}");
    }
}
