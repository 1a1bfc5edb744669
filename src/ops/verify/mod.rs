//! `tributary verify`: compare the table with the topic, partition by partition,
//! and report duplicates and gaps.
//!
//! Reads the table's Kafka metadata columns (topic, partition and offset must be
//! configured) and every record Kafka still holds up to each partition's stored
//! offset. A (partition, offset) present in the table more than once is a
//! *duplicate*. A record of Kafka that is not in the table is judged the way the
//! daemon would judge it, with the configured format (JSON, or Avro, Protobuf and
//! JSON Schema through the registry), size limit, derived columns and filter:
//!
//! - in the dead-letter table (when one is configured): *rejected*, kept there;
//! - dropped by the table's `filter`: *filtered*, accounted for and written nowhere;
//! - rejected by the decoder or a transform, with no dead-letter table configured:
//!   *rejected*;
//! - anything else is a *gap*: a record that should be a row (or, with a
//!   dead-letter table, a dead letter) and is in neither table.
//!
//! A record both in the table and in the dead-letter table is counted under
//! `in_both`: each record belongs in exactly one of the two.
//!
//! The table's offsets are held in memory (8 bytes per row), and so are the Kafka
//! records missing from it; run it on a table of up to some hundred million rows.
//!
//! An upsert table holds a row per key, not per record: it is compared key by
//! key with the last change of each key instead (see [`keys`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use deltalake::DeltaTable;
use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Int32Type, Int64Type};

use crate::config::Config;
use crate::decode::registry::{Registry, RegistryError};
use crate::decode::transform::Transform;
use crate::decode::{DecodeError, Decoder};
use crate::ops::tables::{self, MaintenanceError};
use crate::record::{HeaderMeta, RecordChunk, RecordMeta, TopicPartition};
use crate::sink::table;
use crate::source::probe::{self, ProbeError};

mod judge;
mod keys;

use judge::{Fate, Judge, judge_for};
pub use keys::{KeyedPartitionReport, UpsertReport};

/// How many offsets to list per problem.
const SAMPLE: usize = 20;

/// Errors from `verify`.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The table.
    #[error(transparent)]
    Table(#[from] MaintenanceError),
    /// Kafka.
    #[error(transparent)]
    Kafka(#[from] ProbeError),
    /// Metadata columns missing from the config.
    #[error(
        "verify needs the topic, partition and offset metadata columns: set them in [table.metadata_columns]"
    )]
    NoMetadataColumns,
    /// Reading the table failed.
    #[error("reading table {uri}: {message}")]
    Query {
        /// The table.
        uri: String,
        /// The error.
        message: String,
    },
    /// The records cannot be judged as the daemon would (the registry is
    /// unreachable, the decoder or a transform cannot be built).
    #[error("cannot decode records as the daemon does: {0}")]
    Decode(#[from] DecodeError),
    /// The registry client cannot be built.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A derived column or the filter cannot be planned.
    #[error("table transform: {0}")]
    Transform(crate::decode::Reason),
}

impl VerifyError {
    /// Whether running verify again later may succeed (Kafka, storage or the
    /// registry unavailable).
    pub fn is_retryable(&self) -> bool {
        match self {
            VerifyError::Kafka(_) => true,
            VerifyError::Decode(e) => e.is_retryable(),
            VerifyError::Registry(e) => e.is_retryable(),
            VerifyError::Table(_) | VerifyError::Query { .. } => true,
            VerifyError::NoMetadataColumns | VerifyError::Transform(_) => false,
        }
    }
}

/// One partition's findings.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PartitionReport {
    /// `topic/partition`.
    pub partition: String,
    /// Offset stored in the table.
    pub stored_offset: Option<i64>,
    /// Rows in the table.
    pub rows: u64,
    /// Records Kafka holds up to the stored offset.
    pub kafka_records: u64,
    /// Offsets present more than once (count of extra rows).
    pub duplicates: u64,
    /// Some duplicated offsets.
    pub duplicate_sample: Vec<i64>,
    /// Kafka records in neither the table nor (where one is configured) the
    /// dead-letter table, that the daemon would not have filtered out.
    pub gaps: u64,
    /// Some missing offsets.
    pub gap_sample: Vec<i64>,
    /// Kafka records missing from the table because they were rejected: in the
    /// dead-letter table, or (without one) rejected by the decoder today.
    pub rejected: u64,
    /// Kafka records missing from the table because the table's filter drops them.
    pub filtered: u64,
    /// Records both in the table and in the dead-letter table.
    pub in_both: u64,
    /// Some offsets in both tables.
    pub in_both_sample: Vec<i64>,
    /// Rows with an offset beyond the stored offset (should never happen).
    pub beyond_stored: u64,
}

/// The whole report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    /// The table.
    pub table: String,
    /// Per partition.
    pub partitions: Vec<PartitionReport>,
    /// Whether no partition has duplicates, gaps, records in both tables or rows
    /// beyond its stored offset, and no foreign restore left a hole.
    pub clean: bool,
    /// A RESTORE by another engine left the stored offsets ahead of the rows:
    /// what happened and what to run.
    pub foreign_restore: Option<String>,
    /// An upsert table's findings, key by key (`partitions` is then empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upsert: Option<UpsertReport>,
}

/// (topic, partition) -> sorted offsets.
type Offsets = HashMap<TopicPartition, Vec<i64>>;

/// Every (topic, partition, offset) of `sql`'s three columns, offsets sorted.
async fn offsets_of(t: &DeltaTable, sql: &str, uri: &str) -> Result<Offsets, VerifyError> {
    let qerr = |e: &dyn std::fmt::Display| VerifyError::Query {
        uri: uri.to_owned(),
        message: e.to_string(),
    };
    let batches = table::query(t, sql).await.map_err(|e| qerr(&e))?;
    let mut out: Offsets = HashMap::new();
    for b in batches {
        let topics = cast(b.column(0), &DataType::Utf8).map_err(|e| qerr(&e))?;
        let topics = topics.as_string::<i32>();
        let parts = b.column(1).as_primitive::<Int32Type>();
        let offs = b.column(2).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            if topics.is_null(i) {
                continue;
            }
            out.entry(TopicPartition::new(topics.value(i), parts.value(i)))
                .or_default()
                .push(offs.value(i));
        }
    }
    for v in out.values_mut() {
        v.sort_unstable();
    }
    Ok(out)
}

/// Per partition, the records Kafka has up to the stored offset that the table lacks.
type Missing = HashMap<TopicPartition, Vec<probe::RawRecord>>;

/// Verify the table of `cfg` against its topics.
pub async fn verify(cfg: &Config, timeout: Duration) -> Result<VerifyReport, VerifyError> {
    if let Some(spec) = &cfg.table.upsert {
        return keys::verify_keys(cfg, spec, timeout).await;
    }
    let m = &cfg.table.metadata_columns;
    let (Some(tcol), Some(pcol), Some(ocol)) = (&m.topic, &m.partition, &m.offset) else {
        return Err(VerifyError::NoMetadataColumns);
    };
    let t = tables::open(&cfg.table.uri, &cfg.storage).await?;
    let uri = cfg.table.uri.to_string();
    // Table side: every (topic, partition, offset); dead letters headed for it.
    let sql = format!("SELECT \"{tcol}\", \"{pcol}\", \"{ocol}\" FROM t");
    let in_table = offsets_of(&t, &sql, &uri).await?;
    let dead = dead_letter_offsets(cfg, &uri).await?;
    // Which partitions: the configured topics' and any the table mentions.
    let mut parts = probe::blocking(&cfg.kafka, move |k| probe::partitions(k, timeout)).await?;
    for tp in in_table.keys() {
        if !parts.contains(tp) {
            parts.push(tp.clone());
        }
    }
    parts.sort();
    let (stored, foreign_restore) = stored_offsets(&t, cfg, &parts, &uri).await?;
    let (in_table, kafka_counts, mut missing) =
        missing_from_table(cfg, &parts, &stored, in_table, timeout).await?;
    let mut judge = judge_for(cfg, &t, &uri)?;
    let mut reports = Vec::with_capacity(parts.len());
    let no_offsets = Vec::new();
    for tp in &parts {
        let seen = Seen {
            stored_offset: stored.get(tp).copied().flatten(),
            rows: in_table.get(tp).unwrap_or(&no_offsets),
            dead: dead
                .as_ref()
                .map(|d| d.get(tp).map_or(&[][..], Vec::as_slice)),
            kafka_records: kafka_counts.get(tp).copied().unwrap_or_default(),
        };
        let missing = missing.remove(tp).unwrap_or_default();
        reports.push(partition_report(tp, &seen, missing, &mut judge).await?);
    }
    let clean = reports
        .iter()
        .all(|r| r.duplicates == 0 && r.gaps == 0 && r.beyond_stored == 0 && r.in_both == 0);
    Ok(VerifyReport {
        table: uri,
        partitions: reports,
        clean: clean && foreign_restore.is_none(),
        foreign_restore,
        upsert: None,
    })
}

/// The offsets stored for `parts`, and what a RESTORE by another engine left
/// (a hole below them), if one did.
async fn stored_offsets(
    t: &DeltaTable,
    cfg: &Config,
    parts: &[TopicPartition],
    uri: &str,
) -> Result<(HashMap<TopicPartition, Option<i64>>, Option<String>), VerifyError> {
    let store = crate::offsets::store::OffsetStore::new();
    let stored = store
        .offsets(t, &cfg.app_id, parts)
        .await
        .map_err(|e| query_error(uri, &e))?;
    let foreign_restore = store
        .hole(t, &cfg.app_id)
        .await
        .map_err(|e| query_error(uri, &e))?
        .map(|h| h.to_string());
    Ok((stored, foreign_restore))
}

fn query_error(uri: &str, e: &dyn std::fmt::Display) -> VerifyError {
    VerifyError::Query {
        uri: uri.to_owned(),
        message: e.to_string(),
    }
}

/// The offsets of the dead letters headed for table `uri` (None: no dead-letter
/// table configured).
async fn dead_letter_offsets(cfg: &Config, uri: &str) -> Result<Option<Offsets>, VerifyError> {
    let qerr = |e: &dyn std::fmt::Display| query_error(uri, e);
    let mut dead: Option<Offsets> = None;
    if let Some(dead_uri) = &cfg.dead_letters {
        let found = table::load(dead_uri, &cfg.storage)
            .await
            .map_err(|e| qerr(&e))?;
        dead = Some(match found {
            Some(d) => {
                let sql = format!(
                    "SELECT topic, \"partition\", \"offset\" FROM t WHERE \"table\" = '{}'",
                    uri.replace('\'', "''")
                );
                offsets_of(&d, &sql, dead_uri.as_str()).await?
            }
            None => HashMap::new(),
        });
    }

    Ok(dead)
}

/// Read each partition up to its stored offset; keep the records the table lacks.
async fn missing_from_table(
    cfg: &Config,
    parts: &[TopicPartition],
    stored: &HashMap<TopicPartition, Option<i64>>,
    in_table: Offsets,
    timeout: Duration,
) -> Result<(Offsets, HashMap<TopicPartition, u64>, Missing), VerifyError> {
    let until: HashMap<TopicPartition, i64> = parts
        .iter()
        .filter_map(|tp| {
            stored
                .get(tp)
                .copied()
                .flatten()
                .filter(|o| *o >= 0)
                .map(|o| (tp.clone(), o))
        })
        .collect();
    let present = Arc::new(in_table);
    let seen = present.clone();
    let (kafka_counts, missing) = probe::blocking(&cfg.kafka, move |k| {
        let mut counts: HashMap<TopicPartition, u64> = HashMap::new();
        let mut missing: HashMap<TopicPartition, Vec<probe::RawRecord>> = HashMap::new();
        probe::read_partitions(k, &until, timeout, |tp, r| {
            *counts.entry(tp.clone()).or_default() += 1;
            let found = seen
                .get(tp)
                .is_some_and(|offs| offs.binary_search(&r.offset).is_ok());
            if !found {
                missing.entry(tp.clone()).or_default().push(r);
            }
        })
        .map(|()| (counts, missing))
    })
    .await?;
    let in_table = Arc::try_unwrap(present).unwrap_or_else(|shared| (*shared).clone());

    Ok((in_table, kafka_counts, missing))
}

/// What verify knows of a partition before judging its missing records.
struct Seen<'a> {
    stored_offset: Option<i64>,
    rows: &'a [i64],
    /// The dead letters headed for the table (None: no dead-letter table).
    dead: Option<&'a [i64]>,
    kafka_records: u64,
}

async fn partition_report(
    tp: &TopicPartition,
    seen: &Seen<'_>,
    missing: Vec<probe::RawRecord>,
    judge: &mut Judge,
) -> Result<PartitionReport, VerifyError> {
    let (stored_offset, rows) = (seen.stored_offset, seen.rows);
    let dead_here = seen.dead.unwrap_or(&[]);
    let mut r = PartitionReport {
        partition: tp.to_string(),
        stored_offset,
        rows: rows.len() as u64,
        kafka_records: seen.kafka_records,
        ..Default::default()
    };
    let mut counts: BTreeMap<i64, u64> = BTreeMap::new();
    for o in rows {
        *counts.entry(*o).or_default() += 1;
        if stored_offset.is_none_or(|s| *o > s) {
            r.beyond_stored += 1;
        }
    }
    for (o, c) in &counts {
        if *c > 1 {
            r.duplicates += c - 1;
            if r.duplicate_sample.len() < SAMPLE {
                r.duplicate_sample.push(*o);
            }
        }
        if dead_here.binary_search(o).is_ok() {
            r.in_both += 1;
            if r.in_both_sample.len() < SAMPLE {
                r.in_both_sample.push(*o);
            }
        }
    }
    for rec in missing {
        if dead_here.binary_search(&rec.offset).is_ok() {
            r.rejected += 1;
            continue;
        }
        match judge.fate(tp, &rec).await? {
            Fate::Filtered => r.filtered += 1,
            // Without a dead-letter table a rejection is only counted and
            // logged; with one it must be there.
            Fate::Rejected if seen.dead.is_none() => r.rejected += 1,
            Fate::Rejected | Fate::Row => {
                r.gaps += 1;
                if r.gap_sample.len() < SAMPLE {
                    r.gap_sample.push(rec.offset);
                }
            }
        }
    }
    Ok(r)
}

/// The human-readable report.
pub fn render(r: &VerifyReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "table {}", r.table);
    if let Some(hole) = &r.foreign_restore {
        let _ = writeln!(s, "ERROR {hole}");
    }
    if let Some(u) = &r.upsert {
        keys::render(u, &mut s);
        let _ = writeln!(
            s,
            "{}",
            if r.clean {
                "OK: every key holds its last change, no key missing, extra or twice"
            } else {
                "PROBLEMS FOUND"
            }
        );
        return s;
    }
    let _ = writeln!(
        s,
        "{:<36} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "partition", "stored", "rows", "in kafka", "duplicates", "gaps", "rejected", "filtered"
    );
    for p in &r.partitions {
        let stored = p.stored_offset.map_or("-".to_owned(), |o| o.to_string());
        let _ = writeln!(
            s,
            "{:<36} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}",
            p.partition,
            stored,
            p.rows,
            p.kafka_records,
            p.duplicates,
            p.gaps,
            p.rejected,
            p.filtered
        );
        if !p.duplicate_sample.is_empty() {
            let _ = writeln!(s, "  duplicated offsets: {:?}", p.duplicate_sample);
        }
        if !p.gap_sample.is_empty() {
            let _ = writeln!(s, "  missing offsets: {:?}", p.gap_sample);
        }
        if p.in_both > 0 {
            let _ = writeln!(
                s,
                "  {} record(s) both in the table and in the dead-letter table: {:?}",
                p.in_both, p.in_both_sample
            );
        }
        if p.beyond_stored > 0 {
            let _ = writeln!(s, "  {} row(s) beyond the stored offset", p.beyond_stored);
        }
    }
    let _ = writeln!(
        s,
        "{}",
        if r.clean {
            "OK: no duplicates, no gaps, every record in exactly one table"
        } else {
            "PROBLEMS FOUND"
        }
    );
    s
}
