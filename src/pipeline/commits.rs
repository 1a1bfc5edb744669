//! Windows out: start a table's commit when its window is due, and act on the
//! outcome (offsets advanced, a lost race, a failure to retry).

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::ledger::{self, Flushed, dead_letter_commit};
use super::{Pipeline, PipelineError, TableSink};
use crate::record::TopicPartition;
use crate::sink::commit::{CommitOutcome, CommitReport};
use crate::source::SourceCommand;
use crate::telemetry::events;
use crate::window::Body;
use crate::window::budget::{Held, MemoryBudget};
use crate::window::flush::{CommitDone, DeadCommit, TaskError, WindowRows, flush_and_commit};

impl Pipeline {
    pub(super) async fn await_inflight(
        &mut self,
        sink: usize,
        deadline: Duration,
    ) -> Result<(), PipelineError> {
        let Some(mut inflight) = self.sinks[sink].inflight.take() else {
            return Ok(());
        };
        match tokio::time::timeout(deadline, &mut inflight.handle).await {
            Ok(done) => self.on_commit_done(sink, done, inflight),
            Err(_) => {
                self.sinks[sink].inflight = Some(inflight);
                Ok(())
            }
        }
    }

    pub(super) fn maybe_flush(&mut self) {
        if self.recovery.needs_rewind() {
            return;
        }
        for i in 0..self.sinks.len() {
            if self.sinks[i].inflight.is_none() && self.sinks[i].flush_due() {
                self.start_commit(i);
            }
        }
        let held = self.held();
        let budget = self.cfg.memory_budget;
        let total = MemoryBudget::total(&held);
        for i in budget.flush_early(&held) {
            events::flushed_early(
                &self.stats,
                self.sinks[i].tcfg.uri.as_str(),
                held[i].open,
                total,
                budget.limit(),
            );
            self.start_commit(i);
        }
    }

    /// What each table's windows hold, for the memory budget.
    pub(super) fn held(&self) -> Vec<Held> {
        self.sinks
            .iter()
            .map(|s| Held {
                open: s.window.held_bytes(s.tcfg.row_group_rows as u64),
                committing: s.inflight.as_ref().map_or(0, |f| f.bytes),
            })
            .collect()
    }

    pub(super) fn start_commit(&mut self, sink: usize) {
        let window = std::mem::take(&mut self.sinks[sink].window);
        // The decoder's memory goes with the window it decoded (with many tables,
        // an idle table keeps nothing).
        self.sinks[sink].decoder.release();
        if window.is_empty() {
            return;
        }
        let bytes = window.committing_bytes(self.sinks[sink].tcfg.row_group_rows as u64);
        let (partitions, parts) = ledger::plan_commit(&self.parts, window.parts);
        let dead = match &self.dead {
            Some(d) if !window.dead.is_empty() => Some(DeadCommit {
                table: d.table.clone(),
                log: d.log.clone(),
                batches: window.dead,
                partitions: partitions
                    .iter()
                    .filter(|p| window.dead_parts.contains(&p.tp))
                    .map(|p| {
                        dead_letter_commit(p, self.parts.get(&p.tp).and_then(|s| s.dead_committed))
                    })
                    .collect(),
                props: d.props.clone(),
            }),
            _ => None,
        };
        let rows = window.rows;
        let table = self.sinks[sink].table.clone();
        let log = self.sinks[sink].log.clone();
        let app_id = self.cfg.app_id.clone();
        let policy = self.policy;
        let abandon = self.abandon.clone();
        let tcfg = &self.sinks[sink].tcfg;
        let writer = match (window.body, &tcfg.upsert) {
            (Body::Changes(c), Some(spec)) => WindowRows::Changes {
                spec: spec.clone(),
                changes: c.list,
                parquet: Box::new(crate::sink::table::writer_properties(
                    tcfg.compression,
                    tcfg.row_group_rows,
                )),
            },
            (Body::Files(w), _) => WindowRows::Files(Some(w)),
            (Body::Empty | Body::Changes(_), _) => WindowRows::Files(None),
        };
        let stats = self.stats.clone();
        let handle = tokio::spawn(async move {
            // With several tables, overlapping commits share the slot; the
            // stuck-commit rule in `is_ready` still covers the one left running.
            let _call = crate::telemetry::stats::StorageCall::begin(&stats.commit_since_ms);
            flush_and_commit(
                writer,
                (table, log),
                app_id,
                partitions,
                policy,
                abandon,
                dead,
            )
            .await
        });
        self.sinks[sink].inflight = Some(Inflight {
            handle,
            started: Instant::now(),
            parts,
            rows,
            bytes,
        });
    }

    pub(super) fn on_commit_done(
        &mut self,
        sink: usize,
        done: Result<CommitDone, tokio::task::JoinError>,
        inflight: Inflight,
    ) -> Result<(), PipelineError> {
        let done = match done {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "commit task failed; rewinding");
                self.fail_and_rewind();
                return Ok(());
            }
        };
        self.sinks[sink].table = done.table;
        ledger::dead_committed(&mut self.parts, &inflight.parts, &done.dead_committed);
        let uri = self.sinks[sink].uri();
        match after_commit(done.result, uri.clone()) {
            AfterCommit::Stored(report) => {
                self.report_landed(&uri, &inflight, &report);
                self.offsets_stored(&inflight.parts);
                Ok(())
            }
            AfterCommit::Stale(partitions) => {
                events::window_stale(&self.stats, &uri, &partitions);
                self.abort_windows();
                self.recovery.rewind_now();
                Ok(())
            }
            AfterCommit::Rewind(e) => {
                tracing::warn!(table = %uri, error = %e, "the window's flush did not complete; rewinding");
                self.fail_and_rewind();
                Ok(())
            }
            AfterCommit::Stop(e) => Err(e),
        }
    }

    /// The events and metrics of a window whose commit landed (or was found
    /// landed).
    fn report_landed(&self, uri: &str, inflight: &Inflight, report: &CommitReport) {
        match report.outcome {
            CommitOutcome::Committed { version } => events::commit_landed(
                &self.stats,
                &events::CommitLanded {
                    table: uri,
                    version,
                    rows: inflight.rows,
                    files: report.files as usize,
                    bytes: report.bytes,
                    partitions: inflight.parts.len(),
                    attempts: report.attempts,
                    conflicts: report.conflicts,
                    duration: report.duration,
                },
            ),
            _ => events::commit_found_landed(
                &self.stats,
                uri,
                inflight.rows,
                report.attempts,
                report.duration,
            ),
        }
    }

    /// A window's offsets are in its table: the ledger, the status view and the
    /// consumer group (for lag tooling only) learn them, and the backoff resets.
    fn offsets_stored(&mut self, flushed: &Flushed) {
        ledger::committed(&mut self.parts, flushed);
        let offsets: Vec<(TopicPartition, i64)> = flushed
            .iter()
            .map(|(tp, _, last)| (tp.clone(), *last))
            .collect();
        self.stats.set_committed(offsets.iter().cloned());
        if let Some(source) = &self.source {
            source.send(SourceCommand::CommitOffsets(
                offsets
                    .into_iter()
                    .map(|(tp, last)| (tp, last + 1))
                    .collect(),
            ));
        }
        self.recovery.committed();
    }
}

/// What the pipeline does with a window's finished commit.
#[derive(Debug)]
enum AfterCommit {
    /// It landed (or had landed): the offsets are stored.
    Stored(CommitReport),
    /// Another writer moved these partitions: drop the windows, rewind now.
    Stale(Vec<(TopicPartition, Option<i64>)>),
    /// It failed in a way a later attempt may not: rewind after a backoff.
    Rewind(TaskError),
    /// It failed for good: the daemon stops with this error.
    Stop(PipelineError),
}

fn after_commit(result: Result<CommitReport, TaskError>, uri: String) -> AfterCommit {
    match result {
        Ok(CommitReport {
            outcome: CommitOutcome::Stale { partitions },
            ..
        }) => AfterCommit::Stale(partitions),
        Ok(report) => AfterCommit::Stored(report),
        Err(e) if e.is_retryable() => AfterCommit::Rewind(e),
        Err(TaskError::Write(source)) => AfterCommit::Stop(PipelineError::Write {
            uri,
            source: Box::new(source),
        }),
        Err(TaskError::Commit(e)) => AfterCommit::Stop(Box::new(e).into()),
        Err(TaskError::Changes(source)) => {
            AfterCommit::Stop(PipelineError::Changes { uri, source })
        }
    }
}

pub(super) struct Inflight {
    pub(super) handle: JoinHandle<CommitDone>,
    pub(super) started: Instant,
    /// (partition, epoch at flush, last offset)
    pub(super) parts: Flushed,
    pub(super) rows: u64,
    /// What the window holds while committing
    /// ([`crate::window::Window::committing_bytes`]), until the commit is done.
    pub(super) bytes: u64,
}

/// The next commit task of any sink to finish.
pub(super) async fn next_commit(
    sinks: &mut [TableSink],
) -> (usize, Result<CommitDone, tokio::task::JoinError>) {
    std::future::poll_fn(|cx| {
        for (i, s) in sinks.iter_mut().enumerate() {
            if let Some(inflight) = s.inflight.as_mut()
                && let std::task::Poll::Ready(done) =
                    std::pin::Pin::new(&mut inflight.handle).poll(cx)
            {
                return std::task::Poll::Ready((i, done));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::commit::CommitError;

    fn report(outcome: CommitOutcome) -> CommitReport {
        CommitReport {
            outcome,
            attempts: 1,
            conflicts: 0,
            replans: 0,
            duration: Duration::ZERO,
            files: 1,
            bytes: 10,
        }
    }

    fn decide(r: Result<CommitReport, TaskError>) -> AfterCommit {
        after_commit(r, "s3://b/t".into())
    }

    #[test]
    fn a_landed_or_found_commit_stores_and_a_stale_one_rewinds_at_once() {
        let landed = decide(Ok(report(CommitOutcome::Committed { version: 3 })));
        assert!(matches!(landed, AfterCommit::Stored(r) if r.files == 1));
        let found = decide(Ok(report(CommitOutcome::AlreadyCommitted)));
        assert!(matches!(found, AfterCommit::Stored(_)));
        let tp = TopicPartition::new("t", 0);
        let stale = decide(Ok(report(CommitOutcome::Stale {
            partitions: vec![(tp.clone(), Some(9))],
        })));
        assert!(matches!(stale, AfterCommit::Stale(p) if p == [(tp, Some(9))]));
    }

    #[test]
    fn transient_failures_rewind_and_permanent_ones_stop_the_daemon() {
        let uri = "s3://b/t".to_owned();
        let contended = CommitError::Contended {
            uri: uri.clone(),
            replans: 10,
            last_error: "conflict".into(),
        };
        let abandoned = CommitError::Abandoned {
            uri: uri.clone(),
            attempts: 3,
            last_error: "timeout".into(),
        };
        for e in [contended, abandoned] {
            assert!(matches!(
                decide(Err(TaskError::Commit(e))),
                AfterCommit::Rewind(_)
            ));
        }
        let keyless = CommitError::Changes {
            uri: uri.clone(),
            source: crate::decode::changes::ChangesError::NullKey {
                column: "id".into(),
                count: 2,
            },
        };
        let stop = decide(Err(TaskError::Commit(keyless)));
        assert!(
            matches!(&stop, AfterCommit::Stop(e) if e.to_string().contains("null in 2")),
            "{stop:?}"
        );
        let denied = deltalake::DeltaTableError::ObjectStore {
            source: deltalake::ObjectStoreError::PermissionDenied {
                path: "t/x.parquet".into(),
                source: "403".into(),
            },
        };
        assert!(matches!(
            decide(Err(TaskError::Write(denied))),
            AfterCommit::Stop(PipelineError::Write { .. })
        ));
        let outage = deltalake::DeltaTableError::ObjectStore {
            source: deltalake::ObjectStoreError::Generic {
                store: "S3",
                source: "connection reset".into(),
            },
        };
        assert!(matches!(
            decide(Err(TaskError::Write(outage))),
            AfterCommit::Rewind(_)
        ));
        let join = TaskError::Changes(crate::decode::changes::ChangesError::Empty);
        assert!(matches!(
            decide(Err(join)),
            AfterCommit::Stop(PipelineError::Changes { .. })
        ));
    }
}
