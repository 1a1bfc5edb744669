//! Records in: admit a chunk's new records, decode them into their table's
//! window, reject what cannot be decoded, and evolve the table when a producer
//! schema needs it.

use std::collections::{BTreeSet, HashMap, HashSet};

use deltalake::arrow::array::RecordBatch;

use tokio::time::Instant;

use super::ledger::{self, PartState};
use super::{DUE_WINDOW_WAIT, Pipeline, PipelineError};
use crate::config::OnError;
use crate::decode::segment::decode_segment;
use crate::decode::transform::Transform;
use crate::decode::{Decoded, Evolution, RejectKind, Rejected};
use crate::record::{RecordChunk, TopicPartition};
use crate::sink::table;
use crate::telemetry::events;
use crate::telemetry::stats::PipelineStats;
use crate::window::Window;
use crate::window::admission::{self, Position};
use crate::window::encoder::WindowWriter;

impl Pipeline {
    pub(super) async fn on_chunk(&mut self, chunk: RecordChunk) -> Result<(), PipelineError> {
        // Which records to take: current epoch, beyond what is already accounted for.
        let keep = admission::admit(&chunk, |tp| {
            self.parts.get(tp).map(|p| Position {
                epoch: p.epoch,
                seen_last: p.seen_last,
            })
        });
        let sink_of: Vec<Option<usize>> = chunk
            .partitions
            .iter()
            .map(|cp| self.parts.get(&cp.tp).and_then(|p| p.sink))
            .collect();
        let mut sinks: Vec<usize> = sink_of.iter().flatten().copied().collect();
        sinks.sort_unstable();
        sinks.dedup();
        for sink in sinks {
            let keep: Vec<bool> = chunk
                .records
                .iter()
                .enumerate()
                .map(|(i, r)| keep[i] && sink_of[r.part as usize] == Some(sink))
                .collect();
            self.on_sink_chunk(sink, &chunk, &keep).await?;
            if self.recovery.needs_rewind() {
                return Ok(()); // the rest is re-read after the rewind
            }
        }
        self.maybe_flush();
        Ok(())
    }

    /// The kept records of `chunk` that go to `sink`, split where its window
    /// reaches max_rows, so no window (and no file) holds more rows than the policy
    /// allows.
    pub(super) async fn on_sink_chunk(
        &mut self,
        sink: usize,
        chunk: &RecordChunk,
        keep: &[bool],
    ) -> Result<(), PipelineError> {
        let mut start = 0;
        while start < chunk.len() {
            let s = &self.sinks[sink];
            // An upsert window grows on while the previous MERGE runs.
            let growing = s.inflight.is_some() && !s.window_full();
            if s.flush_due() && !growing {
                // Bounded: while the last commit retries (storage trouble) the
                // loop must get back to serving shutdown and rebalances. If it
                // does not finish in time, this window takes the rest of the
                // chunk (at most `max_chunk_records` over `max_rows`) and no
                // further chunk is taken until the commit is done.
                if self.sinks[sink].inflight.is_some() {
                    self.await_inflight(sink, DUE_WINDOW_WAIT).await?;
                }
                if self.sinks[sink].inflight.is_some() {
                    let rest = chunk.len() - start;
                    self.on_segment(sink, chunk, keep, start..chunk.len())
                        .await?;
                    tracing::debug!(
                        records = rest,
                        "previous commit still running; window exceeds max_rows by this chunk"
                    );
                    return Ok(());
                }
                if !self.recovery.needs_rewind() && self.sinks[sink].inflight.is_none() {
                    self.start_commit(sink);
                }
            }
            if self.recovery.needs_rewind() {
                return Ok(());
            }
            let s = &self.sinks[sink];
            let limit = if s.inflight.is_some() {
                Window::row_limit(&s.flush, s.tcfg.upsert.is_some())
            } else {
                s.flush.max_rows
            };
            let budget = limit.saturating_sub(s.window.rows).max(1);
            let mut end = start;
            let mut taken = 0u64;
            while end < chunk.len() && taken < budget {
                if keep[end] {
                    taken += 1;
                }
                end += 1;
            }
            self.on_segment(sink, chunk, keep, start..end).await?;
            start = end;
        }
        Ok(())
    }

    /// Account for, decode and write the kept records of `chunk[range]`.
    pub(super) async fn on_segment(
        &mut self,
        sink: usize,
        chunk: &RecordChunk,
        keep: &[bool],
        range: std::ops::Range<usize>,
    ) -> Result<(), PipelineError> {
        let accounted = range.clone().filter(|&i| keep[i]).count() as u64;
        if accounted == 0 {
            return Ok(());
        }
        if self.sinks[sink].window.is_empty() {
            self.adopt_table_schema(sink)?;
        }
        // Oversized values are rejected before any decoder sees them, and records
        // whose dead letters landed before a crash stay rejected.
        let limit = self.cfg.decode.max_record_bytes;
        let too_large = too_large(chunk, keep, range.clone(), limit);
        let already_dead = already_dead(&self.parts, chunk, keep, range.clone());
        let in_segment = |i: usize| {
            range.contains(&i)
                && keep[i]
                && !too_large.iter().any(|r| r.index == i)
                && !already_dead.contains(&i)
        };
        if !self.prepare_schemas(sink, chunk, &in_segment).await? {
            return Ok(()); // rewinding
        }
        // The decoder keeps about twice the values of its largest run (its tape
        // holds the bytes and a token per value) until it is released at commit.
        let values: usize = range
            .clone()
            .filter(|&i| in_segment(i))
            .map(|i| chunk.records[i].value.as_ref().map_or(0, |v| v.len()))
            .sum();
        let s = &mut self.sinks[sink];
        s.window.decoder_bytes = s.window.decoder_bytes.max(2 * values as u64);
        let mut decoded = decode_segment(
            &mut s.decoder,
            &mut s.envelope,
            s.transform.as_ref(),
            chunk,
            &in_segment,
        )?;
        let changes = self.take_changes(sink, chunk, &mut decoded)?;
        self.reject(chunk, &mut decoded, too_large, &already_dead)?;
        self.keep_dead_letters(sink, chunk, &decoded.rejected, &already_dead)?;
        // Account for every kept record, good or rejected: the window's offset for a
        // partition is its last kept record, whatever became of it.
        let last_kept = admission::last_kept(chunk, keep, range.clone());
        let window = &mut self.sinks[sink].window;
        ledger::account(&mut self.parts, window, chunk, &last_kept);
        PipelineStats::add(&self.stats.records_accounted, accounted);
        window.records += accounted;
        window.opened_at.get_or_insert_with(Instant::now);
        if let Some(c) = changes {
            // Held as they are (`Window::held_bytes` counts them), not encoded,
            // and reduced to a change per key as they grow; `rows` counts the
            // changes taken, which is what `max_rows` bounds.
            window.rows += c.rows.num_rows() as u64;
            window.add_changes(c);
            self.reduce_window_changes(sink);
        }
        match decoded.batch {
            Some(batch) => self.write_rows(sink, batch).await,
            None => Ok(()),
        }
    }

    /// Registry formats: fetch the segment's new schema ids and evolve the table
    /// where they need it. False when the pipeline is to rewind instead.
    async fn prepare_schemas(
        &mut self,
        sink: usize,
        chunk: &RecordChunk,
        in_segment: &(dyn Fn(usize) -> bool + Sync),
    ) -> Result<bool, PipelineError> {
        loop {
            match self.sinks[sink].decoder.prepare(chunk, in_segment).await {
                Ok(None) => return Ok(true),
                Ok(Some(evolution)) => {
                    self.evolve(sink, evolution).await?;
                    if self.recovery.needs_rewind() {
                        return Ok(false);
                    }
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "schema registry unavailable; rewinding and retrying");
                    self.fail_and_rewind();
                    return Ok(false);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// All of the segment's rejections in record order: the decoder's, the
    /// oversized values, and the replayed records already in the dead-letter table.
    /// Under `decode.on_error = "fail"` the first one stops the daemon.
    fn reject(
        &self,
        chunk: &RecordChunk,
        decoded: &mut Decoded,
        too_large: Vec<Rejected>,
        already_dead: &HashSet<usize>,
    ) -> Result<(), PipelineError> {
        decoded.rejected.extend(too_large);
        if self.cfg.decode.on_error == OnError::Fail
            && let Some(rej) = decoded.rejected.iter().min_by_key(|r| r.index)
        {
            let r = &chunk.records[rej.index];
            return Err(PipelineError::Rejected {
                tp: chunk.partitions[r.part as usize].tp.clone(),
                offset: r.offset,
                reason: rej.reason.clone(),
            });
        }
        events::records_rejected(
            &self.stats,
            decoded.rejected.iter().map(|rej| {
                let r = &chunk.records[rej.index];
                let tp = &chunk.partitions[r.part as usize].tp;
                (tp, r.offset, rej.reason.as_str())
            }),
        );
        if !already_dead.is_empty() {
            events::dead_letters_replayed(&self.stats, already_dead.len());
            decoded
                .rejected
                .extend(already_dead.iter().map(|&index| Rejected {
                    index,
                    kind: RejectKind::Decode,
                    reason: "already in the dead-letter table".into(),
                }));
        }
        decoded.rejected.sort_by_key(|r| r.index);
        Ok(())
    }

    /// Put the segment's dead letters in the window, except those already in the
    /// dead-letter table (a replay after a crash between the two commits
    /// re-rejects records that are).
    fn keep_dead_letters(
        &mut self,
        sink: usize,
        chunk: &RecordChunk,
        rejected: &[Rejected],
        already_dead: &HashSet<usize>,
    ) -> Result<(), PipelineError> {
        let Some(d) = &self.dead else {
            return Ok(());
        };
        let fresh: Vec<&Rejected> = rejected
            .iter()
            .filter(|rej| !already_dead.contains(&rej.index))
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        let uri = self.sinks[sink].uri();
        let batch = crate::sink::dead_letter::batch(&d.schema, chunk, &fresh, &uri)?;
        let w = &mut self.sinks[sink].window;
        w.dead.push(batch);
        for rej in fresh {
            let r = &chunk.records[rej.index];
            w.dead_parts
                .insert(chunk.partitions[r.part as usize].tp.clone());
        }
        Ok(())
    }

    /// Encode decoded rows into the window's Parquet files (starting its encoder on
    /// the first rows); a storage error rewinds.
    async fn write_rows(&mut self, sink: usize, batch: RecordBatch) -> Result<(), PipelineError> {
        let rows = batch.num_rows() as u64;
        let raw = batch.get_array_memory_size() as u64;
        let s = &mut self.sinks[sink];
        let (table, props, max_bytes) = (&s.table, s.props.clone(), s.flush.max_bytes);
        let stats = self.stats.clone();
        let writer = s
            .window
            .files(|| {
                let writer = table::new_writer(table, props, max_bytes)?;
                Ok(WindowWriter::start(writer, stats))
            })
            .map_err(|source| PipelineError::Write {
                uri: table.table_url().to_string(),
                source: Box::new(source),
            })?;
        if let Err(e) = writer.write(batch).await {
            if crate::sink::retry::is_retryable(&e) {
                tracing::warn!(error = %e, "writing Parquet failed; rewinding to the table's offsets");
                self.fail_and_rewind();
                return Ok(());
            }
            return Err(PipelineError::Write {
                uri: s.uri(),
                source: Box::new(e),
            });
        }
        s.window.rows += rows;
        s.window.raw_bytes += raw;
        Ok(())
    }

    /// Before a window opens: if the table's schema is no longer the one records
    /// are decoded into (another worker evolved it, or an operator added a column
    /// with another engine), decode into the table's schema from now on. New
    /// nullable columns are filled with null (or from records that carry them);
    /// the same check as at start refuses a table that no longer fits.
    pub(super) fn adopt_table_schema(&mut self, sink: usize) -> Result<(), PipelineError> {
        let s = &mut self.sinks[sink];
        let write_err = |source| PipelineError::Write {
            uri: s.tcfg.uri.to_string(),
            source: Box::new(source),
        };
        let current = s.table.snapshot().map_err(write_err)?.schema();
        if *current == s.decoder.schema().delta {
            return Ok(());
        }
        let schema = table::check_schema(&s.table, &s.tcfg).map_err(Box::new)?;
        tracing::info!(table = %s.tcfg.uri, "the table's schema was changed by another writer; decoding into it");
        s.transform =
            Transform::new(&s.tcfg.transform, &schema).map_err(PipelineError::Transform)?;
        s.decoder.set_schema(schema)?;
        Ok(())
    }

    /// Apply a table schema change a producer schema needs. Buffered rows were
    /// written with the old columns, so they are committed first.
    pub(super) async fn evolve(
        &mut self,
        sink: usize,
        evolution: Evolution,
    ) -> Result<(), PipelineError> {
        tracing::info!(
            schema_id = evolution.schema_id,
            changes = ?evolution.changes,
            table = %self.sinks[sink].tcfg.uri,
            "producer schema needs a table schema change"
        );
        // The rows buffered so far are committed under the old schema first. Each
        // wait is bounded so that shutdown and rebalances are still served while
        // storage is slow: a commit that does not finish in time leaves these
        // records to a rewind, taken once it has.
        self.await_inflight(sink, DUE_WINDOW_WAIT).await?;
        if self.sinks[sink].inflight.is_none()
            && !self.sinks[sink].window.is_empty()
            && !self.recovery.needs_rewind()
        {
            self.start_commit(sink);
            self.await_inflight(sink, DUE_WINDOW_WAIT).await?;
        }
        if self.sinks[sink].inflight.is_some() && !self.recovery.needs_rewind() {
            tracing::warn!(
                table = %self.sinks[sink].tcfg.uri,
                "previous commit still running; records needing the schema change are re-read after it"
            );
            self.abort_windows();
            self.recovery.rewind_now();
        }
        if self.recovery.needs_rewind() {
            return Ok(());
        }
        let s = &mut self.sinks[sink];
        let derived = s.decoder.schema().derived.clone();
        match table::evolve(
            &mut s.table,
            &evolution.producer,
            &s.tcfg.metadata_columns,
            &derived,
        )
        .await
        {
            Ok(schema) => {
                s.transform =
                    Transform::new(&s.tcfg.transform, &schema).map_err(PipelineError::Transform)?;
                s.decoder.set_schema(schema)?;
                Ok(())
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "schema change failed; rewinding and retrying");
                self.fail_and_rewind();
                Ok(())
            }
            Err(e) => Err(Box::new(e).into()),
        }
    }
}

/// The kept records of `chunk[range]` whose value is over `limit` bytes, rejected
/// as too large.
fn too_large(
    chunk: &RecordChunk,
    keep: &[bool],
    range: std::ops::Range<usize>,
    limit: u64,
) -> Vec<Rejected> {
    range
        .filter(|&i| keep[i])
        .filter_map(|i| {
            let len = chunk.value(&chunk.records[i]).map_or(0, <[u8]>::len) as u64;
            (len > limit).then(|| Rejected {
                index: i,
                kind: RejectKind::TooLarge,
                reason: format!("value is {len} bytes, over decode.max_record_bytes ({limit})"),
            })
        })
        .collect()
}

/// The kept records of `chunk[range]` whose dead letters are already in the
/// dead-letter table (see [`PartState::dead_kept`]), as chunk indices.
fn already_dead(
    parts: &HashMap<TopicPartition, PartState>,
    chunk: &RecordChunk,
    keep: &[bool],
    range: std::ops::Range<usize>,
) -> HashSet<usize> {
    let kept: Vec<Option<&BTreeSet<i64>>> = chunk
        .partitions
        .iter()
        .map(|cp| {
            parts
                .get(&cp.tp)
                .map(|p| &p.dead_kept)
                .filter(|k| !k.is_empty())
        })
        .collect();
    if kept.iter().all(Option::is_none) {
        return HashSet::new();
    }
    range
        .filter(|&i| keep[i])
        .filter(|&i| {
            let r = &chunk.records[i];
            kept[r.part as usize].is_some_and(|k| k.contains(&r.offset))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(committed: Option<i64>, dead_kept: &[i64]) -> PartState {
        PartState {
            epoch: 1,
            committed,
            seen_last: committed,
            sink: Some(0),
            dead_committed: dead_kept.last().copied(),
            dead_kept: dead_kept.iter().copied().collect(),
        }
    }

    #[test]
    fn a_replay_keeps_first_pass_rejections_and_only_those() {
        let tp = TopicPartition::new("t", 0);
        let other = TopicPartition::new("t", 1);
        // Offsets 10..16 of partition 0, then 10..12 of partition 1.
        let mut chunk =
            RecordChunk::from_values(&tp, 10, ["a", "b", "c", "d", "e", "f"].map(str::as_bytes));
        let more = RecordChunk::from_values(&other, 10, ["x", "y"].map(str::as_bytes));
        let p1 = chunk.partition_index(&other, 0);
        for r in &more.records {
            let mut r = r.clone();
            r.part = p1;
            r.value = r.value.map(|v| chunk.push_bytes(&more.data[v]));
            chunk.records.push(r);
        }
        let parts: HashMap<TopicPartition, PartState> = [
            (tp.clone(), part(Some(9), &[11, 14])),
            (other.clone(), part(Some(9), &[])),
        ]
        .into();
        let keep = vec![true; chunk.len()];
        let found = already_dead(&parts, &chunk, &keep, 0..chunk.len());
        assert_eq!(
            found,
            HashSet::from([1, 4]),
            "offsets 11 and 14 of partition 0"
        );
        // Only within the range and among the kept records.
        let mut keep = keep;
        keep[4] = false;
        assert_eq!(
            already_dead(&parts, &chunk, &keep, 0..3),
            HashSet::from([1])
        );
        assert!(already_dead(&parts, &chunk, &keep, 2..4).is_empty());
        // Nothing kept anywhere: nothing to look up.
        let plain: HashMap<TopicPartition, PartState> = [(tp.clone(), part(Some(9), &[]))].into();
        assert!(already_dead(&plain, &chunk, &keep, 0..chunk.len()).is_empty());
    }
}
