//! Upsert tables: a segment's decoded rows and tombstones become keyed changes
//! in the window (see [`crate::decode::envelope`] for how).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::Pipeline;
use super::error::PipelineError;
use crate::decode::Decoded;
use crate::decode::changes::Changes;
use crate::decode::envelope::{self, Keying};
use crate::record::{RecordChunk, TopicPartition};
use crate::sink::table::TableError;
use crate::sink::upsert::partitions::{self, Verdict};
use crate::source::probe;

/// The most rows an upsert window's changes reach before their first reduction.
const REDUCE_AT: u64 = 1 << 18;

/// How long reading a topic's partition count may take.
const PARTITION_COUNT_TIMEOUT: Duration = Duration::from_secs(10);

impl Pipeline {
    /// For an upsert table: take the segment's rows and tombstones out of
    /// `decoded` as changes (rows whose key has a null become rejections).
    /// `None` for an append table.
    pub(super) fn take_changes(
        &mut self,
        sink: usize,
        chunk: &RecordChunk,
        decoded: &mut Decoded,
    ) -> Result<Option<Changes>, PipelineError> {
        let s = &mut self.sinks[sink];
        let Some(spec) = &s.tcfg.upsert else {
            return Ok(None);
        };
        let keying = Keying {
            key: &spec.key,
            envelope: spec.envelope,
            source_order: spec.source_order.as_deref(),
        };
        let uri = s.uri();
        let taken = envelope::take(
            s.decoder.schema(),
            keying,
            chunk,
            decoded,
            &mut s.last_deletes,
        )
        .map_err(|source| PipelineError::Changes { uri, source })?;
        Ok(taken.map(|(c, _)| c))
    }

    /// Keep an upsert window's changes reduced to a change per key as it grows
    /// ([`reduce_growing`]): first at a quarter of `max_rows` (at most
    /// [`REDUCE_AT`] rows), then whenever they have doubled.
    pub(super) fn reduce_window_changes(&mut self, sink: usize) {
        let s = &mut self.sinks[sink];
        let Some(spec) = &s.tcfg.upsert else {
            return;
        };
        let (key, order) = (spec.key.as_slice(), spec.order_by.as_deref());
        let at = (s.flush.max_rows / 4).clamp(1, REDUCE_AT) as usize;
        if let Err(e) = s.window.reduce_changes(key, order, at) {
            // The commit's own reduction reports it; try again once doubled.
            tracing::debug!(table = %s.tcfg.uri, error = %e, "window changes left as they are");
        }
    }

    /// For the upsert tables among `tps`' sinks: each topic's partition count
    /// against the one the table was written with ([`partitions`]); recorded
    /// the first time (and after a harmless change), a change that can leave a
    /// key twice or out of order stops the daemon, saying what to do.
    pub(super) async fn check_partition_counts(
        &mut self,
        tps: &[(TopicPartition, usize)],
    ) -> Result<(), PipelineError> {
        let mut pairs: Vec<(usize, Arc<str>)> = tps
            .iter()
            .filter(|(_, s)| self.sinks[*s].tcfg.upsert.is_some())
            .map(|(tp, s)| (*s, tp.topic.clone()))
            .collect();
        pairs.sort();
        pairs.dedup();
        if pairs.is_empty() {
            return Ok(());
        }
        let mut topics: Vec<String> = pairs.iter().map(|(_, t)| t.to_string()).collect();
        topics.sort();
        topics.dedup();
        let mut counts: HashMap<String, u32> = probe::blocking(&self.cfg.kafka, move |k| {
            probe::partition_counts(k, &topics, PARTITION_COUNT_TIMEOUT)
        })
        .await
        .map_err(PipelineError::PartitionCount)?;
        // The assignment itself shows partitions the metadata may not yet.
        for (tp, _) in tps {
            let c = counts.entry(tp.topic.to_string()).or_default();
            *c = (*c).max(tp.partition.max(0) as u32 + 1);
        }
        for (sink, topic) in pairs {
            if let Some(&now) = counts.get(topic.as_ref()) {
                self.judge_partition_count(sink, &topic, now).await?;
            }
        }
        Ok(())
    }

    /// One upsert table's judgement of `topic`'s partition count `now`:
    /// record it, or stop naming both counts and what to do.
    async fn judge_partition_count(
        &mut self,
        sink: usize,
        topic: &Arc<str>,
        now: u32,
    ) -> Result<(), PipelineError> {
        let app_id = self.cfg.app_id.clone();
        let s = &mut self.sinks[sink];
        let Some(spec) = &s.tcfg.upsert else {
            return Ok(());
        };
        let partition = s.tcfg.metadata_columns.partition.as_deref();
        let recorded = partitions::recorded(&s.table, topic);
        // A table that records no count (written before the check, restored
        // to an older version) was written with at least the partitions
        // it holds offsets of.
        let was = match recorded {
            Some(c) => Some(c),
            None => count_written(&s.log, &s.table, &app_id, topic, now)
                .await
                .map_err(|e| table_error(s, e))?,
        };
        let verdict = match partitions::judge(spec, partition, was, now) {
            // Offsets up to the count, none recorded: record it now.
            Verdict::Same if recorded.is_none() => Verdict::Record,
            v => v,
        };
        match verdict {
            Verdict::Same => {}
            Verdict::Record => {
                tracing::info!(table = %s.uri(), %topic, partitions = now, previously = ?was, "recording the topic's partition count in the upsert table");
                let raced = partitions::record(&mut s.table, topic, now)
                    .await
                    .map_err(|e| table_error(s, e))?;
                // Another replica recorded another count first: judge it.
                if let Err(other) = raced
                    && let Verdict::Refuse(why) =
                        partitions::judge(spec, partition, Some(other), now)
                {
                    return Err(PipelineError::PartitionsMoved(partitions::refusal(
                        &s.uri(),
                        topic,
                        Some(other),
                        now,
                        &why,
                    )));
                }
            }
            Verdict::Refuse(why) => {
                let why = if recorded.is_none() {
                    format!(
                        "{why} (the table records no count: it holds offsets of partitions \
                         below {})",
                        was.unwrap_or_default()
                    )
                } else {
                    why
                };
                return Err(PipelineError::PartitionsMoved(partitions::refusal(
                    &s.uri(),
                    topic,
                    was,
                    now,
                    &why,
                )));
            }
        }

        Ok(())
    }
}

/// A table that records no partition count (written before the check,
/// restored to an older version) was written with at least the partitions it
/// holds offsets of.
async fn count_written(
    log: &crate::sink::commit::TableLog,
    table: &deltalake::DeltaTable,
    app_id: &str,
    topic: &Arc<str>,
    now: u32,
) -> Result<Option<u32>, deltalake::DeltaTableError> {
    let all: Vec<TopicPartition> = (0..now as i32)
        .map(|p| TopicPartition::new(topic.clone(), p))
        .collect();
    let stored = log.offsets.offsets(table, app_id, &all).await?;
    Ok(partitions::written_with(&stored))
}

fn table_error(s: &super::TableSink, e: deltalake::DeltaTableError) -> PipelineError {
    PipelineError::Table(Box::new(TableError::Delta {
        uri: s.uri(),
        source: Box::new(e),
    }))
}
