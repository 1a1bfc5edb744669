//! Recovery: after a failed upload or a lost race, drop the open windows and
//! seek every partition back to the offset stored in its table, after a backoff.

use tokio::time::Instant;

use super::{Pipeline, PipelineError};
use crate::record::TopicPartition;
use crate::source::{SourceCommand, StartAt};
use crate::telemetry::stats::PipelineStats;

impl Pipeline {
    /// Drop every table's open window (a rewind re-reads what they held).
    pub(super) fn abort_windows(&mut self) {
        for s in &mut self.sinks {
            s.window.abort();
        }
    }

    /// Abort the windows and rewind after a backoff.
    pub(super) fn fail_and_rewind(&mut self) {
        self.abort_windows();
        self.needs_rewind = true;
        self.resume_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(self.cfg.commit.max_backoff);
    }

    /// Open the tables of partitions assigned while they could not be opened.
    pub(super) async fn open_waiting_sinks(&mut self) -> Result<(), PipelineError> {
        let waiting: Vec<TopicPartition> = self
            .parts
            .iter()
            .filter(|(_, p)| p.sink.is_none())
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in waiting {
            let sink = self.sink_for(&tp.topic).await?;
            tracing::info!(partition = %tp, table = %self.sinks[sink].tcfg.uri, "table open for an assigned partition");
            if let Some(p) = self.parts.get_mut(&tp) {
                p.sink = Some(sink);
            }
        }
        Ok(())
    }

    /// Seek every assigned partition back to the offset stored in its table.
    pub(super) async fn rewind(&mut self) -> Result<(), PipelineError> {
        self.abort_windows();
        let stored = match self.open_waiting_sinks().await {
            Ok(()) => {
                let tps: Vec<(TopicPartition, usize)> = self
                    .parts
                    .iter()
                    .filter_map(|(tp, p)| p.sink.map(|s| (tp.clone(), s)))
                    .collect();
                self.start_offsets(&tps).await.map(|s| (tps, s))
            }
            Err(e) => Err(e),
        };
        let (tps, (stored, mut kept)) = match stored {
            Ok(s) => s,
            // Refused credentials, a missing bucket, a table that no longer fits:
            // retrying cannot help, so stop and say what to fix.
            Err(e) if !e.is_retryable() => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, backoff_ms = self.backoff.as_millis() as u64, "cannot open tables or read stored offsets; retrying");
                self.resume_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(self.cfg.commit.max_backoff);
                return Ok(());
            }
        };
        let reset = self.cfg.kafka.auto_offset_reset;
        for (tp, _) in tps {
            let epoch = self.epoch();
            let (committed, dead_committed) = stored.get(&tp).copied().unwrap_or_default();
            if let Some(p) = self.parts.get_mut(&tp) {
                p.epoch = epoch;
                p.committed = committed;
                p.seen_last = committed;
                p.dead_committed = dead_committed;
                p.dead_kept = kept.remove(&tp).unwrap_or_default();
            }
            tracing::info!(partition = %tp, stored_offset = ?committed, "rewinding partition to its stored offset");
            self.source().send(SourceCommand::Seek {
                tp,
                to: StartAt::after(committed, reset),
                epoch,
            });
        }
        PipelineStats::add(&self.stats.rewinds, 1);
        self.needs_rewind = false;
        self.resume_at = None;
        Ok(())
    }
}
