//! Shutdown: commit what is buffered within one budget for all tables, then
//! leave the group.

use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::{Pipeline, PipelineError, RunSummary};
use crate::source::{AssignReply, SourceChannels, SourceEvent, StartAt};
use crate::telemetry::stats::PipelineStats;

impl Pipeline {
    /// Commit what is buffered, leave the group and stop the poll thread.
    pub(super) async fn drain(
        &mut self,
        mut channels: SourceChannels,
    ) -> Result<RunSummary, PipelineError> {
        tracing::info!(
            records = self.sinks.iter().map(|s| s.window.records).sum::<u64>(),
            "shutting down: committing buffered records"
        );
        let abandon = self.abandon.clone();
        let grace = self.options.shutdown_grace;
        let timer = tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            abandon.store(true, Ordering::Release);
        });
        // One deadline for every table together: the drain ends within `grace`
        // (plus leaving the group), whatever the number of tables or the state of
        // storage. A commit still running then is abandoned; its outcome is read
        // from the table on the next start.
        let deadline = Instant::now() + grace;
        let left = move || deadline.saturating_duration_since(Instant::now());
        let result = async {
            for i in 0..self.sinks.len() {
                self.await_inflight(i, left()).await?;
            }
            for i in 0..self.sinks.len() {
                if !self.needs_rewind
                    && self.sinks[i].inflight.is_none()
                    && !self.sinks[i].window.is_empty()
                {
                    self.start_commit(i);
                }
            }
            for i in 0..self.sinks.len() {
                self.await_inflight(i, left()).await?;
            }
            Ok::<(), PipelineError>(())
        }
        .await;
        timer.abort();
        self.stats.ready.store(false, Ordering::Relaxed);
        // Leave the group. Keep answering rebalance events until the thread is gone:
        // it may be inside a callback waiting for us.
        if let Some(source) = self.source.take()
            && let Some(thread) = source.shutdown()
        {
            let mut join = tokio::task::spawn_blocking(move || thread.join());
            loop {
                tokio::select! {
                    _ = &mut join => break,
                    ev = channels.events.recv() => match ev {
                        Some(SourceEvent::Assigned { partitions, reply }) => {
                            let dead: AssignReply = partitions.into_iter().map(|tp| (tp, StartAt::End, 0)).collect();
                            let _ = reply.send(dead);
                        }
                        Some(SourceEvent::Revoked { reply, .. }) => { let _ = reply.send(()); }
                        Some(SourceEvent::Fatal(_)) | None => {}
                    },
                }
            }
        }
        result?;
        let s = &self.stats;
        Ok(RunSummary {
            records: PipelineStats::get(&s.records_accounted),
            rows: PipelineStats::get(&s.rows_committed),
            rejected: PipelineStats::get(&s.records_rejected),
            commits: PipelineStats::get(&s.commits),
        })
    }
}
