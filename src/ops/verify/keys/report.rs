//! What `verify` found in an upsert table, per partition, and how it reads.

use std::collections::HashMap;
use std::fmt::Write as _;

use deltalake::arrow::array::{Array, ArrayRef, AsArray};
use deltalake::arrow::datatypes::DataType;
use deltalake::arrow::util::display::array_value_to_string;

use super::Counts;
use crate::record::TopicPartition;

/// How many keys to list per problem.
const SAMPLE: usize = 20;

/// One partition's findings in an upsert table. Keys are attributed to the
/// partition of their last change (rows whose key has none, to the partition
/// their metadata column names, or to `-`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct KeyedPartitionReport {
    /// `topic/partition`, or `-` for rows no partition can be told for.
    pub partition: String,
    /// Offset stored in the table.
    pub stored_offset: Option<i64>,
    /// Records Kafka holds up to the stored offset.
    pub kafka_records: u64,
    /// Of them, changes (rows, deletions).
    pub changes: u64,
    /// Of them, rejected (dead letters, undecodable, keyless, too large).
    pub rejected: u64,
    /// Keys whose last change leaves a row.
    pub keys: u64,
    /// Of them, not in the table.
    pub missing_keys: u64,
    /// Some missing keys.
    pub missing_sample: Vec<String>,
    /// Rows whose key has no change, or whose last change deletes it.
    pub extra_keys: u64,
    /// Some extra keys.
    pub extra_sample: Vec<String>,
    /// Rows that differ from their key's last change.
    pub wrong_values: u64,
    /// Some keys with wrong values.
    pub wrong_sample: Vec<String>,
    /// Keys in the table more than once (count of extra rows).
    pub duplicate_keys: u64,
    /// Some duplicated keys.
    pub duplicate_sample: Vec<String>,
    /// Rows whose key has no change Kafka still holds, in a partition whose
    /// first records are gone (retention): they cannot be judged. A row whose
    /// retained last change deletes it is extra, never unverifiable.
    pub unverifiable_keys: u64,
    /// Whether Kafka no longer holds this partition's first records.
    pub log_truncated: bool,
}

/// The whole upsert report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpsertReport {
    /// The key columns.
    pub key: Vec<String>,
    /// The ordering column, if any.
    pub order_by: Option<String>,
    /// Columns compared between the last change and the row.
    pub compared_columns: Vec<String>,
    /// Columns that cannot be compared (their type has no row encoding).
    pub not_compared: Vec<String>,
    /// Keys changed in several partitions: the table may hold any of their
    /// partitions' last changes (no order across partitions).
    pub keys_in_several_partitions: u64,
    /// Per partition; the last entry (`-`) holds rows with no partition.
    pub partitions: Vec<KeyedPartitionReport>,
}

impl UpsertReport {
    /// No missing, extra, wrong or duplicated key.
    pub fn is_clean(&self) -> bool {
        self.partitions.iter().all(|p| {
            p.missing_keys == 0 && p.extra_keys == 0 && p.wrong_values == 0 && p.duplicate_keys == 0
        })
    }
}

/// Findings as they are made, by partition index (the last is `-`).
pub(super) struct Tally {
    pub(super) parts: Vec<KeyedPartitionReport>,
    pub(super) compared: Vec<String>,
    pub(super) not_compared: Vec<String>,
    pub(super) several: u64,
}

/// A finding about a key.
#[derive(Debug, Clone, Copy)]
pub(super) enum Finding {
    Key,
    Missing,
    /// A row whose key has no change in Kafka.
    Extra,
    /// A row whose key's last change in Kafka deletes it.
    Deleted,
    Wrong,
    Duplicate,
}

impl Tally {
    pub(super) fn new(
        parts: &[TopicPartition],
        stored: &HashMap<TopicPartition, Option<i64>>,
        counts: &HashMap<TopicPartition, Counts>,
    ) -> Self {
        let mut reports: Vec<KeyedPartitionReport> = parts
            .iter()
            .map(|tp| {
                let c = counts.get(tp).cloned().unwrap_or_default();
                let stored_offset = stored.get(tp).copied().flatten();
                KeyedPartitionReport {
                    partition: tp.to_string(),
                    stored_offset,
                    kafka_records: c.records,
                    changes: c.changes,
                    rejected: c.rejected,
                    log_truncated: stored_offset.is_some_and(|s| s >= 0)
                        && c.first_offset != Some(0),
                    ..Default::default()
                }
            })
            .collect();
        let any_truncated = reports.iter().any(|r| r.log_truncated);
        reports.push(KeyedPartitionReport {
            partition: "-".to_owned(),
            log_truncated: any_truncated,
            ..Default::default()
        });
        Self {
            parts: reports,
            compared: Vec::new(),
            not_compared: Vec::new(),
            several: 0,
        }
    }

    /// Count `finding` of `key` against partition `part` (out of range: `-`).
    pub(super) fn note(&mut self, part: usize, finding: Finding, key: impl FnOnce() -> String) {
        let last = self.parts.len() - 1;
        let r = &mut self.parts[part.min(last)];
        let (count, sample) = match finding {
            Finding::Key => {
                r.keys += 1;
                return;
            }
            Finding::Extra if r.log_truncated => {
                r.unverifiable_keys += 1;
                return;
            }
            Finding::Missing => (&mut r.missing_keys, &mut r.missing_sample),
            Finding::Extra | Finding::Deleted => (&mut r.extra_keys, &mut r.extra_sample),
            Finding::Wrong => (&mut r.wrong_values, &mut r.wrong_sample),
            Finding::Duplicate => (&mut r.duplicate_keys, &mut r.duplicate_sample),
        };
        *count += 1;
        if sample.len() < SAMPLE {
            sample.push(key());
        }
    }

    pub(super) fn finish(mut self, spec: &crate::config::UpsertSpec) -> UpsertReport {
        // The `-` line only when it holds something.
        if self.parts.last().is_some_and(|r| {
            r.extra_keys + r.duplicate_keys + r.unverifiable_keys + r.wrong_values == 0
        }) {
            self.parts.pop();
        }
        UpsertReport {
            key: spec.key.clone(),
            order_by: spec.order_by.clone(),
            compared_columns: self.compared,
            not_compared: self.not_compared,
            keys_in_several_partitions: self.several,
            partitions: self.parts,
        }
    }
}

/// `name=value` of each key column at `row`; binary keys (the Kafka key) as
/// text where they are UTF-8.
pub(super) fn render_key(names: &[String], columns: &[ArrayRef], row: usize) -> String {
    names
        .iter()
        .zip(columns)
        .map(|(n, c)| {
            let v = if c.is_null(row) {
                "null".to_owned()
            } else if c.data_type() == &DataType::Binary {
                String::from_utf8_lossy(c.as_binary::<i32>().value(row)).into_owned()
            } else {
                array_value_to_string(c, row).unwrap_or_else(|e| format!("<{e}>"))
            };
            format!("{n}={v}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The human-readable report.
pub(in crate::ops::verify) fn render(r: &UpsertReport, s: &mut String) {
    let _ = writeln!(
        s,
        "upsert table, key ({}){}",
        r.key.join(", "),
        r.order_by
            .as_ref()
            .map_or(String::new(), |o| format!(", ordered by {o}"))
    );
    let _ = writeln!(
        s,
        "{:<30} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "partition",
        "stored",
        "in kafka",
        "changes",
        "keys",
        "missing",
        "extra",
        "wrong",
        "dup keys",
        "rejected"
    );
    for p in &r.partitions {
        let stored = p.stored_offset.map_or("-".to_owned(), |o| o.to_string());
        let _ = writeln!(
            s,
            "{:<30} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
            p.partition,
            stored,
            p.kafka_records,
            p.changes,
            p.keys,
            p.missing_keys,
            p.extra_keys,
            p.wrong_values,
            p.duplicate_keys,
            p.rejected
        );
        for (what, sample) in [
            ("missing", &p.missing_sample),
            ("extra", &p.extra_sample),
            ("wrong value", &p.wrong_sample),
            ("duplicated", &p.duplicate_sample),
        ] {
            if !sample.is_empty() {
                let _ = writeln!(s, "  {what}: {}", sample.join("; "));
            }
        }
        if p.unverifiable_keys > 0 {
            let _ = writeln!(
                s,
                "  {} row(s) whose key Kafka holds no change of: its first records are gone \
                 (retention), so they cannot be judged",
                p.unverifiable_keys
            );
        }
    }
    if r.keys_in_several_partitions > 0 {
        let _ = writeln!(
            s,
            "note: {} key(s) changed in several partitions (no order across partitions{}): \
             any partition's last change was accepted",
            r.keys_in_several_partitions,
            if r.order_by.is_some() {
                " among equal order values"
            } else {
                "; set order_by"
            }
        );
    }
    if !r.not_compared.is_empty() {
        let _ = writeln!(s, "not compared: {}", r.not_compared.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(first_offset: i64) -> Tally {
        let tp = TopicPartition::new("t", 0);
        let stored = HashMap::from([(tp.clone(), Some(99))]);
        let counts = HashMap::from([(
            tp.clone(),
            Counts {
                records: 100 - first_offset as u64,
                changes: 100 - first_offset as u64,
                rejected: 0,
                first_offset: Some(first_offset),
            },
        )]);
        Tally::new(&[tp], &stored, &counts)
    }

    fn spec() -> crate::config::UpsertSpec {
        crate::config::UpsertSpec {
            key: vec!["id".into()],
            order_by: None,
            envelope: crate::decode::envelope::Envelope::Rows,
            source_order: None,
            delete_horizon: std::time::Duration::ZERO,
            strategy: Default::default(),
        }
    }

    /// Issue 22, case 3: once a partition's first records were gone, every
    /// extra row counted as unverifiable, and verify called the table clean.
    /// Only a row whose key has no change in Kafka is unverifiable; one whose
    /// retained last change deletes it is extra.
    #[test]
    fn a_row_whose_retained_last_change_deletes_it_is_extra_in_a_truncated_log() {
        let mut t = tally(40);
        t.note(0, Finding::Extra, || "id=1".into());
        let clean = t.finish(&spec());
        assert_eq!(clean.partitions[0].unverifiable_keys, 1);
        assert!(clean.partitions[0].log_truncated);
        assert!(
            clean.is_clean(),
            "a key Kafka holds nothing of cannot be judged"
        );

        let mut t = tally(40);
        t.note(0, Finding::Extra, || "id=1".into());
        t.note(0, Finding::Deleted, || "id=2".into());
        let r = t.finish(&spec());
        assert_eq!(r.partitions[0].unverifiable_keys, 1);
        assert_eq!(r.partitions[0].extra_keys, 1);
        assert_eq!(r.partitions[0].extra_sample, ["id=2"]);
        assert!(!r.is_clean());
    }

    /// With the whole log held, a row with no change is extra too.
    #[test]
    fn with_the_whole_log_a_row_with_no_change_is_extra() {
        let mut t = tally(0);
        t.note(0, Finding::Extra, || "id=1".into());
        let r = t.finish(&spec());
        assert_eq!(
            (
                r.partitions[0].extra_keys,
                r.partitions[0].unverifiable_keys
            ),
            (1, 0)
        );
        assert!(!r.is_clean());
    }
}
