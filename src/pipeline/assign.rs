//! Rebalances: where assigned partitions start (their stored offsets, `latest`
//! pinned once), and what a revoke commits or drops.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use deltalake::{DeltaTable, DeltaTableError};

use super::drain::Budget;
use super::{PartState, Pipeline, PipelineError};
use crate::config::OffsetReset;
use crate::record::TopicPartition;
use crate::sink::commit::{Commit, CommitOutcome, PartitionCommit};
use crate::sink::table::TableError;
use crate::source::probe;
use crate::source::{AssignReply, StartAt};

impl Pipeline {
    /// The offsets stored for `tps` in their sinks' tables, and in the dead-letter
    /// table.
    pub(super) async fn stored_offsets(
        &mut self,
        tps: &[(TopicPartition, usize)],
    ) -> Result<HashMap<TopicPartition, (Option<i64>, Option<i64>)>, PipelineError> {
        let read_error = |table: &DeltaTable, e: DeltaTableError| {
            PipelineError::Table(Box::new(TableError::Delta {
                uri: table.table_url().to_string(),
                source: Box::new(e),
            }))
        };
        let mut dead = HashMap::new();
        if let Some(d) = self.dead.as_mut() {
            d.table
                .update_state()
                .await
                .map_err(|e| read_error(&d.table, e))?;
            let all: Vec<TopicPartition> = tps.iter().map(|(tp, _)| tp.clone()).collect();
            dead = d
                .log
                .offsets
                .offsets(&d.table, &self.cfg.app_id, &all)
                .await
                .map_err(|e| read_error(&d.table, e))?;
        }
        let mut out = HashMap::with_capacity(tps.len());
        for (i, sink) in self.sinks.iter_mut().enumerate() {
            let mine: Vec<TopicPartition> = tps
                .iter()
                .filter(|(_, s)| *s == i)
                .map(|(tp, _)| tp.clone())
                .collect();
            if mine.is_empty() {
                continue;
            }
            sink.table
                .update_state()
                .await
                .map_err(|e| read_error(&sink.table, e))?;
            let stored = sink
                .log
                .offsets
                .offsets_for_writing(&sink.table, &self.cfg.app_id, &mine)
                .await
                .map_err(|e| read_error(&sink.table, e))?;
            out.extend(
                stored
                    .into_iter()
                    .map(|(tp, o)| (tp.clone(), (o, dead.get(&tp).copied().flatten()))),
            );
        }
        Ok(out)
    }

    /// Where `tps` start (on assign and rewind): their stored offsets, with
    /// `latest` pinned for partitions that have none, and the dead letters kept
    /// above them.
    pub(super) async fn start_offsets(
        &mut self,
        tps: &[(TopicPartition, usize)],
    ) -> Result<Starts, PipelineError> {
        let mut stored = self.stored_offsets(tps).await?;
        self.check_partition_counts(tps).await?;
        self.pin_latest(tps, &mut stored).await?;
        let mut kept = HashMap::new();
        if let Some(d) = &self.dead {
            for (tp, (committed, dead_committed)) in &stored {
                // Only after a window's dead letters landed and its rows did not.
                if let Some(upto) = dead_committed.filter(|d| committed.is_none_or(|c| *d > c)) {
                    let offsets =
                        crate::sink::dead_letter::offsets_above(&d.table, tp, *committed, upto)
                            .await
                            .map_err(|e| {
                                PipelineError::Table(Box::new(TableError::Delta {
                                    uri: d.table.table_url().to_string(),
                                    source: Box::new(e),
                                }))
                            })?;
                    tracing::info!(partition = %tp, stored_offset = ?committed, dead_letter_offset = upto, kept = offsets.len(), "replaying a window whose dead letters landed: its rejections are kept");
                    kept.insert(tp.clone(), offsets);
                }
            }
        }
        Ok((stored, kept))
    }

    /// Under `auto_offset_reset = "latest"`, give every partition the table has
    /// never stored an offset for a concrete one, once: the partition's end now,
    /// stored in a txn-only commit (a compare-and-swap like any other, so racing
    /// replicas agree on one). Without it "latest" would be resolved again at every
    /// rewind and restart until the first data commit, skipping what was produced
    /// in between. Bounded by [`PIN_LATEST_TIMEOUT`]; an error leaves the partitions
    /// to the rewind, which tries again.
    pub(super) async fn pin_latest(
        &mut self,
        tps: &[(TopicPartition, usize)],
        stored: &mut HashMap<TopicPartition, (Option<i64>, Option<i64>)>,
    ) -> Result<(), PipelineError> {
        if self.cfg.kafka.auto_offset_reset != OffsetReset::Latest {
            return Ok(());
        }
        let fresh: Vec<(TopicPartition, usize)> = tps
            .iter()
            .filter(|(tp, _)| stored.get(tp).is_none_or(|(c, _)| c.is_none()))
            .cloned()
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        let parts: Vec<(TopicPartition, Option<i64>)> = fresh
            .iter()
            .filter(|(tp, _)| !self.latest_ends.contains_key(tp))
            .map(|(tp, _)| (tp.clone(), None))
            .collect();
        if !parts.is_empty() {
            let marks = probe::blocking(&self.cfg.kafka, move |k| {
                probe::watermarks(k, &parts, PIN_LATEST_TIMEOUT)
            })
            .await
            .map_err(PipelineError::Latest)?;
            self.latest_ends
                .extend(marks.into_iter().map(|(tp, w)| (tp, w.high)));
        }
        let budget = Budget::new(PIN_LATEST_TIMEOUT);
        let abandon = self.abandon.clone();
        let give_up = move || abandon.load(Ordering::Acquire) || budget.spent();
        let mut sinks: Vec<usize> = fresh.iter().map(|(_, s)| *s).collect();
        sinks.sort_unstable();
        sinks.dedup();
        for sink in sinks {
            let partitions: Vec<PartitionCommit> = fresh
                .iter()
                .filter(|(_, s)| *s == sink)
                .filter_map(|(tp, _)| {
                    self.latest_ends.get(tp).map(|high| PartitionCommit {
                        tp: tp.clone(),
                        expected: None,
                        last: high - 1,
                    })
                })
                .collect();
            let s = &mut self.sinks[sink];
            let report = Commit::new(&mut s.table, &s.log, &self.cfg.app_id, self.policy)
                .with_partitions(partitions.clone())
                .execute(&give_up)
                .await
                .map_err(|e| PipelineError::Commit(Box::new(e)))?;
            let outcome = report.outcome;
            let now: Vec<(TopicPartition, Option<i64>)> = match outcome {
                CommitOutcome::Stale { partitions } => partitions,
                CommitOutcome::Committed { .. } | CommitOutcome::AlreadyCommitted => Vec::new(),
            };
            for p in &partitions {
                let at = now
                    .iter()
                    .find(|(tp, _)| *tp == p.tp)
                    .map_or(Some(p.last), |(_, v)| *v);
                tracing::info!(partition = %p.tp, stored_offset = ?at, "auto_offset_reset = latest: partition starts after this offset, stored in the table");
                stored.entry(p.tp.clone()).or_default().0 = at;
                self.latest_ends.remove(&p.tp);
            }
        }
        Ok(())
    }

    pub(super) async fn on_assign(
        &mut self,
        partitions: Vec<TopicPartition>,
    ) -> Result<AssignReply, PipelineError> {
        let mut routed = Vec::with_capacity(partitions.len());
        let mut unopened = Vec::new();
        let topics: Vec<Arc<str>> = partitions.iter().map(|tp| tp.topic.clone()).collect();
        self.open_sinks(&topics).await;
        for tp in partitions {
            match self.sink_for(&tp.topic).await {
                Ok(sink) => routed.push((tp, sink)),
                // Storage or the registry is unavailable: the partition waits for
                // the rewind, which opens its table with backoff. The group gets
                // its answer now either way.
                Err(e) if e.is_retryable() => {
                    tracing::warn!(partition = %tp, error = %e, "cannot open the partition's table; will retry");
                    unopened.push(tp);
                }
                Err(e) => return Err(e),
            }
        }
        let mut stored = match self.start_offsets(&routed).await {
            Ok(m) => Some(m),
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "cannot read stored offsets; will retry");
                None
            }
            Err(e) => return Err(e),
        };
        let reset = self.cfg.kafka.auto_offset_reset;
        let mut reply = Vec::with_capacity(routed.len() + unopened.len());
        let waiting = routed
            .iter()
            .filter(|_| stored.is_none())
            .map(|(tp, sink)| (tp.clone(), Some(*sink)))
            .chain(unopened.into_iter().map(|tp| (tp, None)))
            .collect::<Vec<_>>();
        if let Some((m, kept)) = &mut stored {
            for (tp, sink) in routed {
                let epoch = self.epoch();
                let (committed, dead_committed) = m.get(&tp).copied().unwrap_or_default();
                let dead_kept = kept.remove(&tp).unwrap_or_default();
                tracing::info!(partition = %tp, stored_offset = ?committed, table = %self.sinks[sink].tcfg.uri, "starting partition after its stored offset");
                reply.push((tp.clone(), StartAt::after(committed, reset), epoch));
                // The lag series and readiness know the partition at once, not
                // only after its next commit (an idle partition may have none).
                if let Some(o) = committed {
                    self.stats.set_committed([(tp.clone(), o)]);
                }
                self.parts.insert(
                    tp,
                    PartState::starting(epoch, Some(sink), (committed, dead_committed, dead_kept)),
                );
            }
        }
        for (tp, sink) in waiting {
            // Offsets unknown: tag the partition's records with an epoch the
            // pipeline will not accept; the rewind seeks it properly.
            let epoch = self.epoch();
            let rejected_epoch = self.epoch();
            reply.push((tp.clone(), StartAt::End, rejected_epoch));
            self.parts.insert(
                tp,
                PartState::starting(epoch, sink, (None, None, BTreeSet::new())),
            );
            self.recovery.rewind_now();
        }
        Ok(reply)
    }

    pub(super) async fn on_revoke(
        &mut self,
        partitions: &[TopicPartition],
        lost: bool,
    ) -> Result<(), PipelineError> {
        // One budget for the whole callback, however many tables: the group waits
        // for this answer.
        let budget = Budget::new(revoke_budget(
            self.options.revoke_commit_timeout,
            &self.cfg.kafka,
        ));
        let left = || budget.left();
        for i in 0..self.sinks.len() {
            let touches_window = partitions
                .iter()
                .any(|tp| self.sinks[i].window.parts.contains_key(tp));
            self.await_inflight(i, left()).await?;
            if !touches_window {
                continue;
            }
            if lost || self.recovery.needs_rewind() || self.sinks[i].inflight.is_some() {
                // Another consumer may already own these partitions, or we cannot
                // commit in time: drop the window, it is re-read by whoever owns them.
                tracing::info!(
                    records = self.sinks[i].window.records,
                    table = %self.sinks[i].tcfg.uri,
                    lost,
                    "dropping buffered records of revoked partitions"
                );
                self.abort_windows();
                self.recovery.rewind_now();
            } else {
                self.start_commit(i);
                self.await_inflight(i, left()).await?;
                if self.sinks[i].inflight.is_some() {
                    tracing::warn!(
                        "commit on revoke did not finish in time; its outcome is checked later"
                    );
                }
            }
        }
        for tp in partitions {
            self.parts.remove(tp);
        }
        self.stats.forget(partitions);
        Ok(())
    }
}

/// librdkafka's default `session.timeout.ms`.
const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(45);

/// How long a revoke may wait for commits: the configured budget, but at most half
/// the session timeout. The whole group waits for this answer, and waiting is only
/// an optimisation (a commit that lands after the partitions moved is stale for
/// their new owner, or makes the new owner's commit stale: never a duplicate), so a
/// commit stuck on storage must not keep a joining member out for longer than the
/// group's own liveness bound.
fn revoke_budget(configured: Duration, kafka: &crate::config::KafkaConfig) -> Duration {
    let session = kafka
        .properties
        .get("session.timeout.ms")
        .and_then(|v| v.expose().trim().parse::<u64>().ok())
        .map_or(DEFAULT_SESSION_TIMEOUT, Duration::from_millis);
    configured.min(session / 2)
}

/// Per partition: (offset stored in its table, offset stored in the dead-letter
/// table), and the dead letters kept above the first.
type Starts = (
    HashMap<TopicPartition, (Option<i64>, Option<i64>)>,
    HashMap<TopicPartition, BTreeSet<i64>>,
);

/// How long resolving `auto_offset_reset = "latest"` may take at an assignment.
const PIN_LATEST_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{KafkaConfig, Subscription};

    #[test]
    fn a_revoke_waits_at_most_half_the_session_timeout() {
        let mut kafka = KafkaConfig {
            brokers: "b:9092".into(),
            group_id: "g".into(),
            subscription: Subscription::Topics(vec!["t".into()]),
            auto_offset_reset: OffsetReset::Earliest,
            properties: Default::default(),
            max_chunk_records: 1,
            channel_capacity: 1,
            prefetch_bytes: 1 << 20,
        };
        let s = Duration::from_secs;
        // librdkafka's default session timeout, 45 s: half of it.
        assert_eq!(
            revoke_budget(s(30), &kafka),
            s(22) + Duration::from_millis(500)
        );
        kafka.properties.insert(
            "session.timeout.ms".into(),
            crate::secret::Secret::new("6000"),
        );
        assert_eq!(revoke_budget(s(30), &kafka), s(3));
        assert_eq!(revoke_budget(s(1), &kafka), s(1));
    }
}
