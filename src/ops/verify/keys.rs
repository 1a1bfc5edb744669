//! `verify` for upsert tables: replay each partition up to its stored offset,
//! turn its records into changes with the daemon's own decoder, reduce them to
//! the last change of every key (by offset, or by `order_by`), and compare that
//! state with the table's rows.
//!
//! - a key whose last change leaves a row, absent from the table: *missing*;
//! - a row whose key has no change in Kafka, or whose last change deletes it:
//!   *extra* (or *unverifiable* when its partition no longer holds its first
//!   records: retention may have taken the key's changes);
//! - a row that differs from the last change of its key: *wrong value*;
//! - a key twice in the table: *duplicate key*.
//!
//! A key changed in several partitions has no single order without `order_by`
//! (nor with ties of it): the table may hold the last change of any of them.
//! Records in the dead-letter table, and those over the size limit, are not
//! changes, as for the daemon.
//!
//! Memory: the reduced state (one row per key) and the table's key and value
//! encodings are held; the replay is streamed.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::arrow::array::{ArrayRef, Int64Array, UInt32Array};
use deltalake::arrow::datatypes::{DataType, Field};
use tokio::sync::mpsc;

use super::judge::{Judge, judge_for, records_chunk};
use super::*;
use crate::decode::changes::{Changes, ChangesError, reduce, reduce_growing, with_columns};
use crate::decode::envelope::{self, Keying};
use crate::decode::segment::{EnvelopeDecoder, decode_segment};

mod report;
mod state;

use report::Tally;
pub(super) use report::render;
pub use report::{KeyedPartitionReport, UpsertReport};
use state::{Expected, PartitionOf, all_extra};

/// The carried columns: the partition (index into the partitions verified) and
/// offset of each change.
const PART: &str = "__verify_partition";
const OFFSET: &str = "__verify_offset";
/// Reduce a partition's pending changes when they reach this many rows (then
/// whenever they have doubled: a partition of many keys is not reduced again at
/// every chunk).
const REDUCE_AT: usize = 100_000;
/// Records read from Kafka per decoded chunk.
const CHUNK: usize = 2_048;

/// Verify the upsert table of `cfg` against its topics.
pub(super) async fn verify_keys(
    cfg: &Config,
    spec: &crate::config::UpsertSpec,
    timeout: Duration,
) -> Result<VerifyReport, VerifyError> {
    let t = tables::open(&cfg.table.uri, &cfg.storage).await?;
    let uri = cfg.table.uri.to_string();
    let qerr = |e: &dyn std::fmt::Display| query_error(&uri, e);
    let parts = probe::blocking(&cfg.kafka, move |k| probe::partitions(k, timeout)).await?;
    let (stored, foreign_restore) = stored_offsets(&t, cfg, &parts, &uri).await?;
    let dead = dead_letter_offsets(cfg, &uri).await?.unwrap_or_default();
    let keying = Keying {
        key: &spec.key,
        envelope: spec.envelope,
        source_order: spec.source_order.as_deref(),
    };
    let order_by = spec.order_by.as_deref();
    let mut replay = Replay::new(judge_for(cfg, &t, &uri)?, keying, order_by, &parts, dead)?;
    replay.run(cfg, &stored, timeout).await?;
    let (expected, counts) = replay.expected(&uri)?;
    let mut tally = Tally::new(&parts, &stored, &counts);
    let m = &cfg.table.metadata_columns;
    let partition_of = PartitionOf {
        parts: &parts,
        topic: m.topic.as_deref(),
        partition: m.partition.as_deref(),
    };
    match expected {
        Some(e) => e.compare(&t, &partition_of, &mut tally).await,
        None => all_extra(&t, &spec.key, &partition_of, &mut tally).await,
    }
    .map_err(|e| qerr(&e))?;
    let report = tally.finish(spec);
    let clean = report.is_clean() && foreign_restore.is_none();
    Ok(VerifyReport {
        table: uri,
        partitions: Vec::new(),
        clean,
        foreign_restore,
        upsert: Some(report),
    })
}

/// Per partition: records read, changes, rejections, first offset held.
#[derive(Debug, Default, Clone)]
pub(super) struct Counts {
    pub(super) records: u64,
    pub(super) changes: u64,
    pub(super) rejected: u64,
    pub(super) first_offset: Option<i64>,
}

/// The replay: each partition's changes, reduced as they grow.
struct Replay<'k> {
    judge: Judge,
    envelope: EnvelopeDecoder,
    keying: Keying<'k>,
    order_by: Option<&'k str>,
    parts: Vec<TopicPartition>,
    dead: Offsets,
    counts: HashMap<TopicPartition, Counts>,
    /// Each partition's changes, and the rows their last reduction left.
    pending: HashMap<TopicPartition, (Vec<Changes>, usize)>,
    /// Flattened rows: each partition's last record, for a tombstone after it.
    last_deletes: envelope::LastDeletes,
}

impl<'k> Replay<'k> {
    fn new(
        judge: Judge,
        keying: Keying<'k>,
        order_by: Option<&'k str>,
        parts: &[TopicPartition],
        dead: Offsets,
    ) -> Result<Self, VerifyError> {
        let envelope = EnvelopeDecoder::new(
            keying.envelope,
            keying.source_order.map(str::to_owned),
            CHUNK,
        );
        Ok(Self {
            judge,
            envelope,
            keying,
            order_by,
            parts: parts.to_vec(),
            dead,
            counts: HashMap::new(),
            pending: HashMap::new(),
            last_deletes: Default::default(),
        })
    }

    /// Read every partition up to its stored offset, decoding as it streams in.
    async fn run(
        &mut self,
        cfg: &Config,
        stored: &HashMap<TopicPartition, Option<i64>>,
        timeout: Duration,
    ) -> Result<(), VerifyError> {
        let until: HashMap<TopicPartition, i64> = stored
            .iter()
            .filter_map(|(tp, o)| o.filter(|o| *o >= 0).map(|o| (tp.clone(), o)))
            .collect();
        let (tx, mut rx) = mpsc::channel::<(TopicPartition, Vec<probe::RawRecord>)>(4);
        let reader = probe::blocking(&cfg.kafka, move |k| {
            let mut batches: HashMap<TopicPartition, Vec<probe::RawRecord>> = HashMap::new();
            probe::read_partitions(k, &until, timeout, |tp, r| {
                let b = batches.entry(tp.clone()).or_default();
                b.push(r);
                if b.len() >= CHUNK {
                    let full = std::mem::take(b);
                    // A closed channel means the decoding side failed: its
                    // error is the one reported.
                    let _ = tx.blocking_send((tp.clone(), full));
                }
            })?;
            for (tp, b) in batches {
                let _ = tx.blocking_send((tp, b));
            }
            Ok(())
        });
        let decoding = async {
            while let Some((tp, records)) = rx.recv().await {
                self.add(&tp, &records).await?;
            }
            Ok::<(), VerifyError>(())
        };
        let (read, decoded) = tokio::join!(reader, decoding);
        decoded?;
        Ok(read?)
    }

    /// Decode `records` of `tp` into changes, as the daemon would.
    async fn add(
        &mut self,
        tp: &TopicPartition,
        records: &[probe::RawRecord],
    ) -> Result<(), VerifyError> {
        let err = |e: ChangesError| query_error(&tp.to_string(), &e);
        let dead = self.dead.get(tp).map_or(&[][..], Vec::as_slice);
        let limit = self.judge.max_record_bytes;
        let keep: Vec<bool> = records
            .iter()
            .map(|r| {
                r.value.as_ref().map_or(0, Vec::len) as u64 <= limit
                    && dead.binary_search(&r.offset).is_err()
            })
            .collect();
        let chunk = records_chunk(tp, records);
        let in_segment = |i: usize| keep[i];
        // Registry formats: fetch the records' schemas (the table has already
        // taken every change they needed).
        self.judge.decoder.prepare(&chunk, &in_segment).await?;
        let mut decoded = decode_segment(
            &mut self.judge.decoder,
            &mut self.envelope,
            self.judge.transform.as_ref(),
            &chunk,
            &in_segment,
        )?;
        let schema = self.judge.decoder.schema();
        let taken = envelope::take(
            schema,
            self.keying,
            &chunk,
            &mut decoded,
            &mut self.last_deletes,
        )
        .map_err(err)?;
        let counts = self.counts.entry(tp.clone()).or_default();
        counts.records += records.len() as u64;
        counts.rejected += (decoded.rejected.len() + keep.iter().filter(|k| !**k).count()) as u64;
        if let Some(first) = records.first() {
            counts.first_offset = Some(
                counts
                    .first_offset
                    .map_or(first.offset, |f| f.min(first.offset)),
            );
        }
        let Some((c, indices)) = taken else {
            return Ok(());
        };
        counts.changes += indices.len() as u64;
        let part = self
            .parts
            .iter()
            .position(|p| p == tp)
            .unwrap_or(self.parts.len());
        let offsets: Int64Array = indices
            .iter()
            .map(|&i| Some(chunk.records[i].offset))
            .collect();
        let carried: [(Field, ArrayRef); 2] = [
            (
                Field::new(PART, DataType::UInt32, false),
                Arc::new(UInt32Array::from(vec![part as u32; indices.len()])),
            ),
            (
                Field::new(OFFSET, DataType::Int64, false),
                Arc::new(offsets),
            ),
        ];
        let rows = with_columns(&c.rows, carried).map_err(|e| err(e.into()))?;
        let (list, reduced) = self.pending.entry(tp.clone()).or_default();
        list.push(Changes::new(rows, c.deleted));
        reduce_growing(list, reduced, self.keying.key, self.order_by, REDUCE_AT).map_err(err)?;
        Ok(())
    }

    /// The last change of every key: each partition's, then across them the
    /// candidates (all of them without `order_by`, those with its greatest
    /// value with it). `None` when no partition holds a change.
    fn expected(
        mut self,
        uri: &str,
    ) -> Result<(Option<Expected>, HashMap<TopicPartition, Counts>), VerifyError> {
        let err = |e: ChangesError| query_error(uri, &e);
        let mut last = Vec::new();
        for tp in &self.parts {
            if let Some((list, _)) = self.pending.remove(tp) {
                last.push(reduce_all(self.keying.key, self.order_by, &list).map_err(err)?);
            }
        }
        let expected = if last.is_empty() {
            None
        } else {
            Some(Expected::new(self.keying.key, self.order_by, &last).map_err(err)?)
        };
        Ok((expected, self.counts))
    }
}

/// `list` as one batch of changes, reduced to the last change per key.
fn reduce_all(
    key: &[String],
    order_by: Option<&str>,
    list: &[Changes],
) -> Result<Changes, ChangesError> {
    reduce(key, order_by, &Changes::concat(list)?)
}
