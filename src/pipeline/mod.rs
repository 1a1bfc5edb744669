//! The ingest daemon's event loop: records in, Parquet out, one Delta commit per
//! flush window with the offsets it accounts for.
//!
//! ```text
//!  kafka-poll thread          pipeline task                         commit task
//!  ─────────────────          ─────────────                         ───────────
//!  poll ─▶ RecordChunk ─▶ epoch/dup filter ─▶ decode ─▶ window ─▶ flush files
//!                                                         │ (encoder task: Parquet)
//!  rebalance ─▶ event  ─▶ read table offsets / commit on revoke       │
//!  seek ◀── rewind ◀────────────────────────── stale / failed ◀── txn commit (CAS)
//!  commit group offsets ◀───────────────────── committed ◀────────────┘
//! ```
//!
//! # Guarantees
//!
//! - A record is in the table at most once: per partition the pipeline drops records
//!   at or below the offset it has accounted for, tags records with the epoch of the
//!   assignment or seek they came from, and commits with a compare-and-swap on the
//!   stored offsets (see [`crate::sink::commit`]).
//! - A record is in the table at least once (or counted as rejected): offsets only
//!   advance in the commit that carries the record's row, and anything not committed
//!   is read again from the table's offset after a restart, rebalance or rewind.
//! - One commit is in flight at a time, so a partition's offsets are committed in
//!   order. While it runs, the next window fills; when that one is due too, the
//!   pipeline stops taking chunks and the poll thread pauses its partitions.
//!
//! # Failures
//!
//! A failed upload or a lost commit race aborts the open window and *rewinds*: every
//! assigned partition seeks back to the offset stored in the table and continues from
//! there, after a backoff when storage is failing. Nothing is lost; the work since
//! the last commit is redone. Non-transient errors (a table whose schema no longer
//! fits, a rejected record in strict mode) stop the daemon with an error.

mod assign;
mod commits;
mod drain;
mod error;
mod ledger;
mod open;
mod records;
mod recovery;
mod upserts;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deltalake::DeltaTable;
use deltalake::parquet::file::properties::WriterProperties;
use tokio::time::Instant;

pub use error::PipelineError;

use crate::config::{
    Compression, Config, FlushPolicy, Route, Subscription, TableConfig, TopicMatch,
};
use crate::decode::Decoder;
use crate::decode::registry::Registry;
use crate::decode::transform::Transform;
use crate::record::TopicPartition;
use crate::schema::TableSchema;
use crate::sink::commit::{RetryPolicy, TableLog};
use crate::sink::table;
use crate::source::{Source, SourceChannels, SourceError, SourceEvent};
use crate::telemetry::events;
use crate::telemetry::stats::PipelineStats;
use crate::window::Window;
use commits::{Inflight, next_commit};
use ledger::PartState;

/// Knobs that are not part of the config file.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How long shutdown may spend committing what is buffered before abandoning it
    /// (it is then re-read on the next start).
    pub shutdown_grace: Duration,
    /// How long a revoke may spend committing before the buffer is dropped instead.
    pub revoke_commit_timeout: Duration,
    /// First retry delay after a storage failure.
    pub initial_backoff: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            shutdown_grace: Duration::from_secs(60),
            revoke_commit_timeout: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(200),
        }
    }
}

/// What a run did, returned at clean shutdown.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Records accounted for.
    pub records: u64,
    /// Rows committed.
    pub rows: u64,
    /// Records rejected.
    pub rejected: u64,
    /// Commits made.
    pub commits: u64,
}

/// Run the ingest daemon until `shutdown` resolves, then commit what is buffered,
/// leave the consumer group and return.
pub async fn run(
    cfg: Config,
    stats: Arc<PipelineStats>,
    options: RunOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<RunSummary, PipelineError> {
    let mut pipeline = Pipeline::new(Arc::new(cfg), stats, options)?;
    pipeline.open_dead_letters().await?;
    pipeline.open_named_tables().await?;
    let endpoint = match pipeline.cfg.metrics_listen {
        Some(addr) => {
            let e = crate::telemetry::metrics::serve(addr, pipeline.stats.clone()).await?;
            let _ = pipeline.stats.metrics_addr.set(e.addr);
            Some(e)
        }
        None => None,
    };
    let (source, channels) = Source::start(&pipeline.cfg.kafka, pipeline.stats.clone())?;
    pipeline.source = Some(source);
    let result = pipeline.run(channels, shutdown).await;
    drop(endpoint);
    result
}

impl Pipeline {
    fn new(
        cfg: Arc<Config>,
        stats: Arc<PipelineStats>,
        options: RunOptions,
    ) -> Result<Self, PipelineError> {
        let registry = match &cfg.decode.registry {
            Some(r) => Some(Registry::new(r)?),
            None => None,
        };
        Ok(Pipeline {
            policy: RetryPolicy {
                max_conflict_retries: cfg.commit.max_conflict_retries,
                max_replans: cfg.commit.max_replans,
                initial_backoff: options.initial_backoff,
                max_backoff: cfg.commit.max_backoff,
            },
            recovery: recovery::Recovery::new(options.initial_backoff, cfg.commit.max_backoff),
            options,
            routes: cfg.all_routes(),
            cfg,
            stats,
            registry,
            dead: None,
            sinks: Vec::new(),
            sink_of_topic: HashMap::new(),
            parts: HashMap::new(),
            source: None,
            next_epoch: 1,
            abandon: Arc::new(AtomicBool::new(false)),
            latest_ends: HashMap::new(),
        })
    }

    async fn open_dead_letters(&mut self) -> Result<(), PipelineError> {
        let Some(uri) = &self.cfg.dead_letters else {
            tracing::warn!(
                "no [dead_letters] table: rejected records are counted and logged, not kept"
            );
            return Ok(());
        };
        let opened = crate::sink::dead_letter::open(uri, &self.cfg.storage)
            .await
            .map_err(Box::new)?;
        tracing::info!(table = %uri, created = opened.created, "dead-letter table open");
        let props = table::writer_properties(Compression::Zstd(3), 128 * 1024);
        self.dead = Some(DeadLetters {
            table: opened.table,
            log: TableLog::default(),
            schema: opened.schema,
            props,
        });
        Ok(())
    }

    /// Tables named outright (no `{topic}` in the URI) open now, so a bad schema or
    /// missing credentials fail at start; per-topic tables open on first assignment.
    async fn open_named_tables(&mut self) -> Result<(), PipelineError> {
        for i in 0..self.routes.len() {
            if self.routes[i].table.uri_template.is_some() {
                continue;
            }
            // The first subscribed topic this route takes (a topic goes to the first
            // route that matches it); with a pattern subscription, any.
            let topic = match &self.cfg.kafka.subscription {
                Subscription::Topics(t) => t
                    .iter()
                    .find(|t| self.routes.iter().position(|r| r.topics.matches(t)) == Some(i))
                    .cloned(),
                Subscription::Pattern(_) => match &self.routes[i].topics {
                    TopicMatch::Topics(t) => t.first().cloned(),
                    _ => Some(String::new()),
                },
            };
            if let Some(topic) = topic {
                self.open_sink(i, &topic).await?;
            }
        }
        Ok(())
    }
}

/// One destination table and everything written to it: its decoder, its open
/// window and its commit in flight. Each table's commits carry the offsets of the
/// partitions routed to it, so exactly-once holds per table.
struct TableSink {
    /// The table's configuration (URI resolved).
    tcfg: TableConfig,
    flush: FlushPolicy,
    table: DeltaTable,
    /// The offsets stored in `table` and its checkpoint schedule, shared with its
    /// commit task.
    log: TableLog,
    decoder: Decoder,
    transform: Option<Transform>,
    props: WriterProperties,
    window: Window,
    inflight: Option<Inflight>,
    /// Debezium tables: the decoder of change events, and the table schema it
    /// was built for.
    envelope: crate::decode::segment::EnvelopeDecoder,
    /// Flattened Debezium rows: whether each partition's last record was a
    /// delete, for the tombstone that follows it in a later chunk.
    last_deletes: crate::decode::envelope::LastDeletes,
}

impl TableSink {
    fn uri(&self) -> String {
        self.tcfg.uri.to_string()
    }

    fn flush_due(&self) -> bool {
        self.window.due(&self.flush, Instant::now())
    }

    /// Whether the due window must wait for the previous commit (see
    /// [`Window::full`]).
    fn window_full(&self) -> bool {
        self.window
            .full(&self.flush, self.tcfg.upsert.is_some(), Instant::now())
    }
}

/// The dead-letter table.
struct DeadLetters {
    table: DeltaTable,
    log: TableLog,
    schema: TableSchema,
    props: WriterProperties,
}

struct Pipeline {
    cfg: Arc<Config>,
    dead: Option<DeadLetters>,
    routes: Vec<Route>,
    stats: Arc<PipelineStats>,
    options: RunOptions,
    policy: RetryPolicy,
    registry: Option<Registry>,
    sinks: Vec<TableSink>,
    sink_of_topic: HashMap<Arc<str>, usize>,
    parts: HashMap<TopicPartition, PartState>,
    source: Option<Source>,
    next_epoch: u64,
    recovery: recovery::Recovery,
    abandon: Arc<AtomicBool>,
    /// Partition ends read for `auto_offset_reset = "latest"` and not yet stored:
    /// a retry stores these, never a later end.
    latest_ends: HashMap<TopicPartition, i64>,
}

/// How long the pipeline waits for the previous commit when the open window is
/// due in the middle of a chunk, before it takes the rest of the chunk anyway (so
/// `max_rows` is exceeded, by at most one chunk, only when a commit takes longer
/// than this: storage trouble). Shutdown and rebalances wait at most this long.
const DUE_WINDOW_WAIT: Duration = Duration::from_secs(10);

impl Pipeline {
    async fn run(
        &mut self,
        mut channels: SourceChannels,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<RunSummary, PipelineError> {
        let mut tick = tokio::time::interval(self.tick_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            let data_open = self.accepting_data();
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                ev = channels.events.recv() => match ev {
                    Some(ev) => self.on_event(ev).await?,
                    None => return Err(PipelineError::SourceStopped("event channel closed".into())),
                },
                (i, done) = next_commit(&mut self.sinks) => {
                    let inflight = self.sinks[i].inflight.take().expect("inflight present");
                    self.on_commit_done(i, done, inflight)?;
                }
                _ = tick.tick() => {
                    if self.recovery.rewind_due(Instant::now())
                        && self.sinks.iter().all(|s| s.inflight.is_none())
                    {
                        self.rewind().await?;
                    }
                    self.maybe_flush();
                }
                chunk = channels.chunks.recv(), if data_open => match chunk {
                    Some(chunk) => self.on_chunk(chunk).await?,
                    None => return Err(PipelineError::SourceStopped("record channel closed".into())),
                },
            }
            self.publish_gauges();
        }
        self.drain(channels).await
    }

    /// How often the loop checks for due windows and rewinds: a tenth of the
    /// shortest `max_age`, between 10 ms and 1 s.
    fn tick_every(&self) -> Duration {
        let min_age = self
            .routes
            .iter()
            .map(|r| r.flush.max_age)
            .min()
            .unwrap_or(self.cfg.flush.max_age);
        (min_age / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Readiness and the gauges `/metrics` serves, after every loop turn.
    fn publish_gauges(&self) {
        let s = &self.stats;
        s.ready.store(self.is_ready(), Ordering::Relaxed);
        s.window_records.store(
            self.sinks.iter().map(|k| k.window.records).sum(),
            Ordering::Relaxed,
        );
        s.window_bytes.store(
            self.sinks.iter().map(|k| k.window.encoded_bytes()).sum(),
            Ordering::Relaxed,
        );
        s.assigned_partitions
            .store(self.parts.len() as u64, Ordering::Relaxed);
        s.windows_held_bytes.store(
            crate::window::budget::MemoryBudget::total(&self.held()),
            Ordering::Relaxed,
        );
    }

    /// Ready: partitions assigned, not recovering, and commits landing: a commit in
    /// flight for longer than twice the backoff cap (at least 30 s) means storage is
    /// failing, and the pod should not count as available.
    fn is_ready(&self) -> bool {
        let stuck_after = (self.cfg.commit.max_backoff * 2).max(Duration::from_secs(30));
        !self.parts.is_empty()
            && !self.recovery.needs_rewind()
            && self.sinks.iter().all(|s| {
                s.inflight
                    .as_ref()
                    .is_none_or(|i| i.started.elapsed() < stuck_after)
            })
    }

    fn accepting_data(&self) -> bool {
        if !self.recovery.takes_records(Instant::now()) {
            return false;
        }
        // Back-pressure: a table's open window is due but its previous commit still
        // runs, or all windows together hold the memory budget and none can be
        // committed early.
        !self
            .sinks
            .iter()
            .any(|s| s.inflight.is_some() && s.window_full())
            && !self.cfg.memory_budget.exhausted(&self.held())
    }

    fn epoch(&mut self) -> u64 {
        self.next_epoch += 1;
        self.next_epoch
    }

    fn source(&self) -> &Source {
        self.source.as_ref().expect("source runs until drain")
    }

    async fn on_event(&mut self, ev: SourceEvent) -> Result<(), PipelineError> {
        match ev {
            SourceEvent::Assigned { partitions, reply } => {
                events::rebalance(&self.stats, true, partitions.len(), false);
                let answer = self.on_assign(partitions).await?;
                let _ = reply.send(answer);
            }
            SourceEvent::Revoked {
                partitions,
                lost,
                reply,
            } => {
                events::rebalance(&self.stats, false, partitions.len(), lost);
                self.on_revoke(&partitions, lost).await?;
                let _ = reply.send(());
            }
            SourceEvent::Fatal(msg) => return Err(SourceError::Fatal(msg).into()),
        }
        Ok(())
    }
}
