//! `tributary verify`: compare the table with the topic, partition by partition,
//! and report duplicates and gaps.
//!
//! Reads the table's Kafka metadata columns (topic, partition and offset must be
//! configured) and every record Kafka still holds up to each partition's stored
//! offset. A record of Kafka that is not in the table is a *gap*, unless the
//! decoder rejects it today (then it was rejected at ingest, not lost). A
//! (partition, offset) present in the table more than once is a *duplicate*.
//!
//! Everything is held in memory (8 bytes per row and per Kafka offset checked); run
//! it on a table of up to some hundred million rows.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Int32Type, Int64Type};

use crate::config::Config;
use crate::decode::JsonDecoder;
use crate::maintenance::{self, MaintenanceError};
use crate::probe::{self, ProbeError};
use crate::record::{RecordChunk, RecordMeta, TopicPartition};
use crate::table;

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
    /// Kafka records missing from the table that the decoder accepts.
    pub gaps: u64,
    /// Some missing offsets.
    pub gap_sample: Vec<i64>,
    /// Kafka records missing from the table that the decoder rejects.
    pub rejected: u64,
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
    /// Whether no partition has duplicates, gaps or rows beyond its stored offset.
    pub clean: bool,
}

/// Verify the table of `cfg` against its topics.
pub async fn verify(cfg: &Config, timeout: Duration) -> Result<VerifyReport, VerifyError> {
    let m = &cfg.table.metadata_columns;
    let (Some(tcol), Some(pcol), Some(ocol)) = (&m.topic, &m.partition, &m.offset) else {
        return Err(VerifyError::NoMetadataColumns);
    };
    let t = maintenance::open(&cfg.table.uri, &cfg.storage).await?;
    let uri = cfg.table.uri.to_string();
    let qerr = |e: &dyn std::fmt::Display| VerifyError::Query {
        uri: uri.clone(),
        message: e.to_string(),
    };

    // Table side: every (topic, partition, offset).
    let sql = format!("SELECT \"{tcol}\", \"{pcol}\", \"{ocol}\" FROM t");
    let batches = table::query(&t, &sql).await.map_err(|e| qerr(&e))?;
    let mut in_table: HashMap<TopicPartition, Vec<i64>> = HashMap::new();
    for b in batches {
        let topics = cast(b.column(0), &DataType::Utf8).map_err(|e| qerr(&e))?;
        let topics = topics.as_string::<i32>();
        let parts = b.column(1).as_primitive::<Int32Type>();
        let offs = b.column(2).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            if topics.is_null(i) {
                continue;
            }
            in_table
                .entry(TopicPartition::new(topics.value(i), parts.value(i)))
                .or_default()
                .push(offs.value(i));
        }
    }

    // Which partitions: the configured topics' and any the table mentions.
    let mut parts = probe::blocking(&cfg.kafka, move |k| probe::partitions(k, timeout)).await?;
    for tp in in_table.keys() {
        if !parts.contains(tp) {
            parts.push(tp.clone());
        }
    }
    parts.sort();
    let stored = table::stored_offsets(&t, &cfg.app_id, &parts)
        .await
        .map_err(|e| qerr(&e))?;

    // Kafka side: records up to each stored offset.
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
    let kafka_records = probe::blocking(&cfg.kafka, move |k| {
        let mut out: HashMap<TopicPartition, Vec<probe::RawRecord>> = HashMap::new();
        probe::read_partitions(k, &until, timeout, |tp, r| {
            out.entry(tp.clone()).or_default().push(r)
        })
        .map(|()| out)
    })
    .await?;

    let schema = crate::schema::TableSchema::from_table(
        t.snapshot().map_err(|e| qerr(&e))?.schema().as_ref(),
        &cfg.table.metadata_columns,
        &cfg.table
            .transform
            .columns
            .iter()
            .map(|(n, _)| n.clone())
            .collect::<Vec<_>>(),
    )
    .map_err(|e| qerr(&e))?;
    let mut decoder = JsonDecoder::new(schema, 1).map_err(|e| qerr(&e))?;

    let mut reports = Vec::with_capacity(parts.len());
    for tp in &parts {
        let stored_offset = stored.get(tp).copied().flatten();
        let mut rows = in_table.remove(tp).unwrap_or_default();
        rows.sort_unstable();
        let mut r = PartitionReport {
            partition: tp.to_string(),
            stored_offset,
            rows: rows.len() as u64,
            ..Default::default()
        };
        let mut counts: BTreeMap<i64, u64> = BTreeMap::new();
        for o in &rows {
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
        }
        for rec in kafka_records.get(tp).map(Vec::as_slice).unwrap_or_default() {
            r.kafka_records += 1;
            if counts.contains_key(&rec.offset) {
                continue;
            }
            if decodes(&mut decoder, tp, rec) {
                r.gaps += 1;
                if r.gap_sample.len() < SAMPLE {
                    r.gap_sample.push(rec.offset);
                }
            } else {
                r.rejected += 1;
            }
        }
        reports.push(r);
    }
    let clean = reports
        .iter()
        .all(|r| r.duplicates == 0 && r.gaps == 0 && r.beyond_stored == 0);
    Ok(VerifyReport {
        table: uri,
        partitions: reports,
        clean,
    })
}

/// Whether the decoder accepts the record (so its absence is a real gap).
fn decodes(decoder: &mut JsonDecoder, tp: &TopicPartition, rec: &probe::RawRecord) -> bool {
    let mut chunk = RecordChunk::default();
    let part = chunk.partition_index(tp, 0);
    let value = rec.value.as_deref().map(|v| chunk.push_bytes(v));
    chunk.records.push(RecordMeta {
        part,
        offset: rec.offset,
        timestamp_ms: None,
        key: None,
        value,
        headers: 0..0,
    });
    decoder
        .decode(&chunk, |_| true)
        .is_ok_and(|d| d.rejected.is_empty())
}

/// The human-readable report.
pub fn render(r: &VerifyReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "table {}", r.table);
    let _ = writeln!(
        s,
        "{:<36} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9}",
        "partition", "stored", "rows", "in kafka", "duplicates", "gaps", "rejected"
    );
    for p in &r.partitions {
        let stored = p.stored_offset.map_or("-".to_owned(), |o| o.to_string());
        let _ = writeln!(
            s,
            "{:<36} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9}",
            p.partition, stored, p.rows, p.kafka_records, p.duplicates, p.gaps, p.rejected
        );
        if !p.duplicate_sample.is_empty() {
            let _ = writeln!(s, "  duplicated offsets: {:?}", p.duplicate_sample);
        }
        if !p.gap_sample.is_empty() {
            let _ = writeln!(s, "  missing offsets: {:?}", p.gap_sample);
        }
        if p.beyond_stored > 0 {
            let _ = writeln!(s, "  {} row(s) beyond the stored offset", p.beyond_stored);
        }
    }
    let _ = writeln!(
        s,
        "{}",
        if r.clean {
            "OK: no duplicates, no gaps"
        } else {
            "PROBLEMS FOUND"
        }
    );
    s
}
