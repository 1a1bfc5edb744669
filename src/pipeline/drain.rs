//! Shutdown: commit what is buffered within one budget for all tables, then
//! leave the group.

use std::sync::atomic::Ordering;

use std::time::Duration;

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
        let budget = Budget::new(grace);
        let left = || budget.left();
        let result = async {
            for i in 0..self.sinks.len() {
                self.await_inflight(i, left()).await?;
            }
            for i in 0..self.sinks.len() {
                if !self.recovery.needs_rewind()
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

/// One deadline shared by every wait of a callback or a shutdown, however many
/// tables there are: each wait gets what is left, so N tables never multiply it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Budget {
    deadline: Instant,
}

impl Budget {
    pub(super) fn new(total: Duration) -> Self {
        Self {
            deadline: Instant::now() + total,
        }
    }

    /// What is left of it now (zero once spent).
    pub(super) fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Whether it is spent.
    pub(super) fn spent(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_many_tables_share_one_budget() {
        let budget = Budget::new(Duration::from_secs(60));
        let start = Instant::now();
        // Five tables whose commits never finish (storage hangs).
        for _ in 0..5 {
            let r = tokio::time::timeout(budget.left(), std::future::pending::<()>()).await;
            assert!(r.is_err());
        }
        assert_eq!(start.elapsed(), Duration::from_secs(60));
        assert!(budget.spent());
        assert_eq!(budget.left(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn what_one_wait_leaves_is_left_for_the_next() {
        let budget = Budget::new(Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(budget.left(), Duration::from_secs(3));
        assert!(!budget.spent());
    }
}
