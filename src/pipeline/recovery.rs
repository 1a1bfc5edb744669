//! Recovery: after a failed upload or a lost race, drop the open windows and
//! seek every partition back to the offset stored in its table, after a backoff.

use std::time::Duration;

use tokio::time::Instant;

use super::{Pipeline, PipelineError};
use crate::record::TopicPartition;
use crate::source::{SourceCommand, StartAt};
use crate::telemetry::events;

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
        self.recovery.fail(Instant::now());
    }

    /// Open the tables of partitions assigned while they could not be opened.
    pub(super) async fn open_waiting_sinks(&mut self) -> Result<(), PipelineError> {
        let waiting: Vec<TopicPartition> = self
            .parts
            .iter()
            .filter(|(_, p)| p.sink.is_none())
            .map(|(tp, _)| tp.clone())
            .collect();
        let topics: Vec<std::sync::Arc<str>> = waiting.iter().map(|tp| tp.topic.clone()).collect();
        self.open_sinks(&topics).await;
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
                let backoff = self.recovery.retry_later(Instant::now());
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "cannot open tables or read stored offsets; retrying");
                return Ok(());
            }
        };
        let reset = self.cfg.kafka.auto_offset_reset;
        let mut sought = Vec::with_capacity(tps.len());
        for (tp, _) in tps {
            let epoch = self.epoch();
            let (committed, dead_committed) = stored.get(&tp).copied().unwrap_or_default();
            if let Some(p) = self.parts.get_mut(&tp) {
                p.rewind(
                    epoch,
                    (
                        committed,
                        dead_committed,
                        kept.remove(&tp).unwrap_or_default(),
                    ),
                );
            }
            sought.push((tp.clone(), committed));
            self.source().send(SourceCommand::Seek {
                tp,
                to: StartAt::after(committed, reset),
                epoch,
            });
        }
        events::rewound(&self.stats, &sought);
        self.recovery.rewound();
        Ok(())
    }
}

/// The recovery schedule: whether a rewind is needed, and when it may run. Storage
/// failures back off exponentially from the initial delay up to the cap; a commit
/// that lands resets the delay; a lost race rewinds at once (nothing failed).
#[derive(Debug, Clone)]
pub(super) struct Recovery {
    needs_rewind: bool,
    resume_at: Option<Instant>,
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Recovery {
    pub(super) fn new(initial: Duration, max: Duration) -> Self {
        Self {
            needs_rewind: false,
            resume_at: None,
            initial,
            max,
            next: initial,
        }
    }

    /// Whether the open windows were dropped and a rewind is pending.
    pub(super) fn needs_rewind(&self) -> bool {
        self.needs_rewind
    }

    /// The next delay, doubling the one after it (up to the cap).
    fn take_backoff(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Storage or the registry failed: rewind after the backoff.
    pub(super) fn fail(&mut self, now: Instant) {
        self.needs_rewind = true;
        self.resume_at = Some(now + self.take_backoff());
    }

    /// Rewind as soon as the commits in flight are done (a lost race, a revoke that
    /// dropped a window): nothing failed, so no backoff.
    pub(super) fn rewind_now(&mut self) {
        self.needs_rewind = true;
    }

    /// The rewind itself could not read the tables: try again after the backoff,
    /// which is returned.
    pub(super) fn retry_later(&mut self, now: Instant) -> Duration {
        let d = self.take_backoff();
        self.resume_at = Some(now + d);
        d
    }

    /// Whether the pending rewind may run at `now`.
    pub(super) fn rewind_due(&self, now: Instant) -> bool {
        self.needs_rewind && self.resume_at.is_none_or(|t| now >= t)
    }

    /// The rewind ran: partitions continue from their stored offsets.
    pub(super) fn rewound(&mut self) {
        self.needs_rewind = false;
        self.resume_at = None;
    }

    /// A commit landed: storage works, the next failure starts from the initial delay.
    pub(super) fn committed(&mut self) {
        self.next = self.initial;
    }

    /// Whether records may be taken at `now` (not while a rewind is pending or
    /// the backoff runs).
    pub(super) fn takes_records(&self, now: Instant) -> bool {
        !self.needs_rewind && self.resume_at.is_none_or(|t| now >= t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_up_to_the_cap_and_a_commit_resets_it() {
        let mut r = Recovery::new(200 * MS, 1000 * MS);
        let mut waits = Vec::new();
        for _ in 0..5 {
            r.fail(Instant::now());
            let start = Instant::now();
            assert!(!r.takes_records(Instant::now()));
            while !r.rewind_due(Instant::now()) {
                tokio::time::advance(MS).await;
            }
            waits.push(start.elapsed().as_millis());
            r.rewound();
            assert!(r.takes_records(Instant::now()));
        }
        assert_eq!(waits, [200, 400, 800, 1000, 1000]);
        r.committed();
        r.fail(Instant::now());
        tokio::time::advance(199 * MS).await;
        assert!(!r.rewind_due(Instant::now()));
        tokio::time::advance(MS).await;
        assert!(r.rewind_due(Instant::now()), "back to the initial delay");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_race_rewinds_at_once_and_a_failed_rewind_waits_then_retries() {
        let mut r = Recovery::new(200 * MS, 30_000 * MS);
        r.rewind_now();
        assert!(r.rewind_due(Instant::now()));
        assert!(
            !r.takes_records(Instant::now()),
            "no records until the rewind ran"
        );
        // The rewind cannot read the table: it stays pending, after a backoff.
        assert_eq!(r.retry_later(Instant::now()), 200 * MS);
        assert!(r.needs_rewind());
        assert!(!r.rewind_due(Instant::now()));
        tokio::time::advance(200 * MS).await;
        assert!(r.rewind_due(Instant::now()));
        r.rewound();
        assert!(!r.needs_rewind());
        assert!(r.takes_records(Instant::now()));
    }
}
