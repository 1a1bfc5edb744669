//! Windows out: start a table's commit when its window is due, and act on the
//! outcome (offsets advanced, a lost race, a failure to retry).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deltalake::arrow::array::RecordBatch;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::writer::DeltaWriter;
use deltalake::{DeltaTable, DeltaTableError};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::ledger::{self, Flushed, dead_letter_commit};
use super::{Pipeline, PipelineError, Sink};
use crate::record::TopicPartition;
use crate::sink::commit::{
    self, CommitError, CommitOutcome, CommitRequest, CommitStats, PartitionCommit, RetryPolicy,
    TableLog,
};
use crate::sink::table;
use crate::source::SourceCommand;
use crate::telemetry::events;
use crate::window::encoder::WindowWriter;

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
    }

    pub(super) fn start_commit(&mut self, sink: usize) {
        let window = std::mem::take(&mut self.sinks[sink].window);
        if window.is_empty() {
            return;
        }
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
        let writer = window.writer;
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
        match done.result {
            Ok((
                outcome @ (CommitOutcome::Committed { .. } | CommitOutcome::AlreadyCommitted),
                cstats,
                files,
                bytes,
            )) => {
                ledger::committed(&mut self.parts, &inflight.parts);
                let offsets: Vec<(TopicPartition, i64)> = inflight
                    .parts
                    .iter()
                    .map(|(tp, _, last)| (tp.clone(), *last))
                    .collect();
                match outcome {
                    CommitOutcome::Committed { version } => events::commit_landed(
                        &self.stats,
                        &events::CommitLanded {
                            table: &uri,
                            version,
                            rows: inflight.rows,
                            files,
                            bytes,
                            partitions: inflight.parts.len(),
                            attempts: cstats.attempts,
                            duration: cstats.duration,
                        },
                    ),
                    _ => events::commit_found_landed(
                        &self.stats,
                        &uri,
                        inflight.rows,
                        cstats.attempts,
                        cstats.duration,
                    ),
                }
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
                Ok(())
            }
            Ok((CommitOutcome::Stale { partitions }, _, _, _)) => {
                events::window_stale(&self.stats, &uri, &partitions);
                self.abort_windows();
                self.recovery.rewind_now();
                Ok(())
            }
            Err(TaskError::Write(e)) if crate::sink::retry::is_retryable(&e) => {
                tracing::warn!(table = %uri, error = %e, "uploading Parquet failed; rewinding");
                self.fail_and_rewind();
                Ok(())
            }
            Err(TaskError::Commit(e)) if e.is_retryable() => {
                tracing::warn!(table = %uri, error = %e, "commit did not complete; rewinding");
                self.fail_and_rewind();
                Ok(())
            }
            Err(TaskError::Write(source)) => Err(PipelineError::Write {
                uri,
                source: Box::new(source),
            }),
            Err(TaskError::Commit(e)) => Err(Box::new(e).into()),
        }
    }
}

/// A window's dead letters, committed to the dead-letter table before its rows.
struct DeadCommit {
    table: DeltaTable,
    log: TableLog,
    batches: Vec<RecordBatch>,
    partitions: Vec<PartitionCommit>,
    props: WriterProperties,
}

async fn flush_and_commit(
    writer: Option<WindowWriter>,
    (mut table, log): (DeltaTable, TableLog),
    app_id: String,
    partitions: Vec<PartitionCommit>,
    policy: RetryPolicy,
    abandon: Arc<AtomicBool>,
    dead: Option<DeadCommit>,
) -> CommitDone {
    let cancelled = move || abandon.load(Ordering::Acquire);
    // Dead letters first: if we die before the rows land, the replay finds them
    // already stored and does not write them again.
    let mut dead_committed = Vec::new();
    if let Some(d) = dead {
        let committed: Vec<(TopicPartition, i64)> = d
            .partitions
            .iter()
            .map(|p| (p.tp.clone(), p.last))
            .collect();
        match commit_dead_letters(d, &app_id, policy, &cancelled).await {
            Ok((CommitOutcome::Stale { partitions }, s)) => {
                return CommitDone {
                    table,
                    dead_committed,
                    result: Ok((CommitOutcome::Stale { partitions }, s, 0, 0)),
                };
            }
            Ok(_) => dead_committed = committed,
            Err(e) => {
                return CommitDone {
                    table,
                    dead_committed,
                    result: Err(e),
                };
            }
        }
    }
    let adds = match writer {
        Some(w) => match w.finish().await {
            Ok(adds) => adds,
            Err(e) => {
                return CommitDone {
                    table,
                    dead_committed,
                    result: Err(TaskError::Write(e)),
                };
            }
        },
        None => Vec::new(),
    };
    let files = adds.len();
    let bytes: u64 = adds.iter().map(|a| a.size.max(0) as u64).sum();
    let req = CommitRequest { adds, partitions };
    let result = commit::commit(&mut table, &log, &app_id, &req, policy, &cancelled)
        .await
        .map(|(o, s)| (o, s, files, bytes))
        .map_err(TaskError::Commit);
    CommitDone {
        table,
        dead_committed,
        result,
    }
}

async fn commit_dead_letters(
    d: DeadCommit,
    app_id: &str,
    policy: RetryPolicy,
    cancelled: &(dyn Fn() -> bool + Send + Sync),
) -> Result<(CommitOutcome, CommitStats), TaskError> {
    let mut table = d.table;
    let mut w = table::new_writer(&table, d.props, 128 * 1024 * 1024).map_err(TaskError::Write)?;
    for b in d.batches {
        w.write(b).await.map_err(TaskError::Write)?;
    }
    let adds = w.flush().await.map_err(TaskError::Write)?;
    let req = CommitRequest {
        adds,
        partitions: d.partitions,
    };
    // Moving no offset, a retry could not tell whether an attempt whose response
    // was lost landed: one attempt, and on failure the window is re-read, which
    // reads the dead letters that did land.
    let once = || true;
    let cancelled = if req.moves_offsets() {
        cancelled
    } else {
        &once
    };
    commit::commit(&mut table, &d.log, app_id, &req, policy, cancelled)
        .await
        .map_err(TaskError::Commit)
}

pub(super) struct CommitDone {
    table: DeltaTable,
    /// Partitions whose dead letters were committed, with the offset stored.
    dead_committed: Vec<(TopicPartition, i64)>,
    result: Result<(CommitOutcome, CommitStats, usize, u64), TaskError>,
}

enum TaskError {
    Write(DeltaTableError),
    Commit(CommitError),
}

pub(super) struct Inflight {
    pub(super) handle: JoinHandle<CommitDone>,
    pub(super) started: Instant,
    /// (partition, epoch at flush, last offset)
    pub(super) parts: Flushed,
    pub(super) rows: u64,
}

/// The next commit task of any sink to finish.
pub(super) async fn next_commit(
    sinks: &mut [Sink],
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
