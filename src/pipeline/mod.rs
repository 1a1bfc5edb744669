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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deltalake::arrow::array::RecordBatch;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::writer::DeltaWriter;
use deltalake::{DeltaTable, DeltaTableError};
use tokio::task::JoinHandle;

use crate::config::{
    Compression, Config, FlushPolicy, OffsetReset, OnError, Route, Subscription, TableConfig,
    TopicMatch,
};
use crate::decode::registry::{Registry, RegistryError};
use crate::decode::transform::Transform;
use crate::decode::{DecodeError, Decoder, Evolution, RejectKind, Rejected};
use crate::record::{RecordChunk, TopicPartition};
use crate::schema::TableSchema;
use crate::sink::commit::{
    self, CommitError, CommitOutcome, CommitRequest, CommitStats, PartitionCommit, RetryPolicy,
    TableLog,
};
use crate::sink::table::{self, TableError};
use crate::source::probe;
use crate::source::{
    AssignReply, Source, SourceChannels, SourceCommand, SourceError, SourceEvent, StartAt,
};
use crate::telemetry::stats::PipelineStats;
use crate::window::encoder::WindowWriter;

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The table could not be opened or created.
    #[error(transparent)]
    Table(#[from] Box<TableError>),
    /// The Kafka consumer failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The decoder could not be built.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A record was rejected and `decode.on_error = "fail"`.
    #[error(
        "record {tp} offset {offset} rejected: {reason} (decode.on_error = \"fail\"; set it to \"skip\" to count and skip such records)"
    )]
    Rejected {
        /// The partition.
        tp: TopicPartition,
        /// The record's offset.
        offset: i64,
        /// Why.
        reason: String,
    },
    /// Writing Parquet failed in a way retrying will not fix.
    #[error("writing to table {uri} failed: {source}")]
    Write {
        /// The table.
        uri: String,
        /// delta-rs' error.
        #[source]
        source: Box<DeltaTableError>,
    },
    /// A commit failed in a way retrying will not fix.
    #[error(transparent)]
    Commit(#[from] Box<CommitError>),
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Metrics(#[from] crate::telemetry::metrics::MetricsError),
    /// The poll thread stopped unexpectedly.
    #[error("the kafka poll thread stopped: {0}")]
    SourceStopped(String),
    /// A topic's table URI cannot be built from the route's template.
    #[error("routing: {0}")]
    Route(String),
    /// A derived column or filter expression cannot be planned.
    #[error("table transform: {0}")]
    Transform(String),
    /// The schema registry failed at start.
    #[error("{0}")]
    Registry(#[from] RegistryError),
    /// The registry's schema cannot create the table.
    #[error("cannot create the table from registry subject `{subject}`: {message}")]
    RegistrySchema {
        /// The subject.
        subject: String,
        /// Why.
        message: String,
    },
    /// The partitions' ends could not be read for `auto_offset_reset = "latest"`.
    #[error("reading the partitions' ends for auto_offset_reset = latest: {0}")]
    Latest(#[source] crate::source::probe::ProbeError),
}

impl PipelineError {
    /// Whether trying again later may succeed: storage, the registry or the
    /// brokers are unavailable. The pipeline retries these with backoff where they
    /// happen outside a commit (opening a table at assignment, reading stored
    /// offsets); anything else stops the daemon with the error.
    pub fn is_retryable(&self) -> bool {
        match self {
            PipelineError::Table(e) => e.is_retryable(),
            PipelineError::Registry(e) => e.is_retryable(),
            PipelineError::Decode(e) => e.is_retryable(),
            PipelineError::Commit(e) => e.is_retryable(),
            PipelineError::Latest(_) => true,
            _ => false,
        }
    }

    /// What the operator should fix, for storage errors that have a known cause
    /// (credentials, permissions, a missing bucket).
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            PipelineError::Table(_) | PipelineError::Commit(_) | PipelineError::Write { .. } => {
                table::storage_hint(&self.to_string())
            }
            _ => None,
        }
    }
}

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
    let cfg = Arc::new(cfg);
    let registry = match &cfg.decode.registry {
        Some(r) => Some(Registry::new(r)?),
        None => None,
    };
    let mut pipeline = Pipeline {
        policy: RetryPolicy {
            max_conflict_retries: cfg.commit.max_conflict_retries,
            initial_backoff: options.initial_backoff,
            max_backoff: cfg.commit.max_backoff,
        },
        backoff: options.initial_backoff,
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
        needs_rewind: false,
        resume_at: None,
        abandon: Arc::new(AtomicBool::new(false)),
        latest_ends: HashMap::new(),
    };
    if let Some(uri) = &pipeline.cfg.dead_letters {
        let opened = crate::sink::dead_letter::open(uri, &pipeline.cfg.storage)
            .await
            .map_err(Box::new)?;
        tracing::info!(table = %uri, created = opened.created, "dead-letter table open");
        let props = table::writer_properties(Compression::Zstd(3), 128 * 1024);
        pipeline.dead = Some(DeadLetters {
            table: opened.table,
            log: TableLog::default(),
            schema: opened.schema,
            props,
        });
    } else {
        tracing::warn!(
            "no [dead_letters] table: rejected records are counted and logged, not kept"
        );
    }
    // Tables named outright (no `{topic}` in the URI) open now, so a bad schema or
    // missing credentials fail at start; per-topic tables open on first assignment.
    for i in 0..pipeline.routes.len() {
        if pipeline.routes[i].table.uri_template.is_some() {
            continue;
        }
        // The first subscribed topic this route takes (a topic goes to the first
        // route that matches it); with a pattern subscription, any.
        let topic = match &pipeline.cfg.kafka.subscription {
            Subscription::Topics(t) => t
                .iter()
                .find(|t| pipeline.routes.iter().position(|r| r.topics.matches(t)) == Some(i))
                .cloned(),
            Subscription::Pattern(_) => match &pipeline.routes[i].topics {
                TopicMatch::Topics(t) => t.first().cloned(),
                _ => Some(String::new()),
            },
        };
        if let Some(topic) = topic {
            pipeline.open_sink(i, &topic).await?;
        }
    }
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

#[derive(Debug)]
struct PartState {
    /// Epoch of the current assignment or seek; records of other epochs are stale.
    epoch: u64,
    /// Offset stored in the table, as far as this pipeline knows.
    committed: Option<i64>,
    /// Last offset accounted for (in the window, in flight or committed).
    seen_last: Option<i64>,
    /// The sink (table) its records go to; `None` while its table cannot be
    /// opened (storage or registry unavailable at assignment): the rewind opens it.
    sink: Option<usize>,
    /// Offset stored in the dead-letter table.
    dead_committed: Option<i64>,
    /// Offsets above `committed` whose dead letters are already in the dead-letter
    /// table (their window's rows never landed): on the replay they are rejected
    /// again whatever the decoder says now, and only records not among them are
    /// written there (see `dead_letter`).
    dead_kept: BTreeSet<i64>,
}

#[derive(Default)]
struct Window {
    writer: Option<WindowWriter>,
    rows: u64,
    records: u64,
    opened_at: Option<Instant>,
    /// Last offset accounted for per partition.
    parts: HashMap<TopicPartition, i64>,
    /// Dead letters of this window, for the dead-letter table.
    dead: Vec<RecordBatch>,
    /// The partitions they come from.
    dead_parts: HashSet<TopicPartition>,
}

impl Window {
    fn is_empty(&self) -> bool {
        self.records == 0
    }

    fn encoded_bytes(&self) -> u64 {
        self.writer.as_ref().map_or(0, WindowWriter::encoded_bytes)
    }

    fn abort(&mut self) {
        if let Some(w) = self.writer.take() {
            w.abort();
        }
        *self = Window::default();
    }
}

struct Inflight {
    handle: JoinHandle<CommitDone>,
    started: Instant,
    /// (partition, epoch at flush, last offset)
    parts: Vec<(TopicPartition, u64, i64)>,
    rows: u64,
}

struct CommitDone {
    table: DeltaTable,
    /// Partitions whose dead letters were committed, with the offset stored.
    dead_committed: Vec<(TopicPartition, i64)>,
    result: Result<(CommitOutcome, CommitStats, usize, u64), TaskError>,
}

enum TaskError {
    Write(DeltaTableError),
    Commit(CommitError),
}

/// One destination table and everything written to it: its decoder, its open
/// window and its commit in flight. Each table's commits carry the offsets of the
/// partitions routed to it, so exactly-once holds per table.
struct Sink {
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
}

impl Sink {
    fn uri(&self) -> String {
        self.tcfg.uri.to_string()
    }

    fn flush_due(&self) -> bool {
        let w = &self.window;
        if w.is_empty() {
            return false;
        }
        let f = &self.flush;
        w.rows >= f.max_rows
            || w.encoded_bytes() >= f.max_bytes
            || w.opened_at.is_some_and(|t| t.elapsed() >= f.max_age)
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
    sinks: Vec<Sink>,
    sink_of_topic: HashMap<Arc<str>, usize>,
    parts: HashMap<TopicPartition, PartState>,
    source: Option<Source>,
    next_epoch: u64,
    needs_rewind: bool,
    resume_at: Option<Instant>,
    backoff: Duration,
    abandon: Arc<AtomicBool>,
    /// Partition ends read for `auto_offset_reset = "latest"` and not yet stored:
    /// a retry stores these, never a later end.
    latest_ends: HashMap<TopicPartition, i64>,
}

/// The next commit task of any sink to finish.
async fn next_commit(sinks: &mut [Sink]) -> (usize, Result<CommitDone, tokio::task::JoinError>) {
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

/// How long the pipeline waits for the previous commit when the open window is
/// due in the middle of a chunk, before it takes the rest of the chunk anyway (so
/// `max_rows` is exceeded, by at most one chunk, only when a commit takes longer
/// than this: storage trouble). Shutdown and rebalances wait at most this long.
const DUE_WINDOW_WAIT: Duration = Duration::from_secs(10);

/// Per partition: (offset stored in its table, offset stored in the dead-letter
/// table), and the dead letters kept above the first.
type Starts = (
    HashMap<TopicPartition, (Option<i64>, Option<i64>)>,
    HashMap<TopicPartition, BTreeSet<i64>>,
);

/// How long resolving `auto_offset_reset = "latest"` may take at an assignment.
const PIN_LATEST_TIMEOUT: Duration = Duration::from_secs(10);

impl Pipeline {
    async fn run(
        &mut self,
        mut channels: SourceChannels,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<RunSummary, PipelineError> {
        let min_age = self
            .routes
            .iter()
            .map(|r| r.flush.max_age)
            .min()
            .unwrap_or(self.cfg.flush.max_age);
        let tick_every = (min_age / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut tick = tokio::time::interval(tick_every);
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
                    if self.needs_rewind
                        && self.sinks.iter().all(|s| s.inflight.is_none())
                        && self.resume_at.is_none_or(|t| Instant::now() >= t)
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
            self.stats.ready.store(self.is_ready(), Ordering::Relaxed);
            let s = &self.stats;
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
        }
        self.drain(channels).await
    }

    /// The sink for `topic`'s records, opening (or creating) its table on first use.
    async fn sink_for(&mut self, topic: &Arc<str>) -> Result<usize, PipelineError> {
        if let Some(&i) = self.sink_of_topic.get(topic) {
            return Ok(i);
        }
        let route = self
            .routes
            .iter()
            .position(|r| r.topics.matches(topic))
            .expect("the [table] route matches every topic");
        let i = self.open_sink(route, topic).await?;
        self.sink_of_topic.insert(topic.clone(), i);
        Ok(i)
    }

    /// Open the table of route `route` for `topic` (or find it open already).
    async fn open_sink(&mut self, route: usize, topic: &str) -> Result<usize, PipelineError> {
        let r = &self.routes[route];
        let tcfg = r
            .table_for(topic)
            .map_err(|e| PipelineError::Route(e.to_string()))?;
        if let Some(i) = self.sinks.iter().position(|s| s.tcfg.uri == tcfg.uri) {
            return Ok(i);
        }
        let flush = r.flush;
        let cfg = self.cfg.clone();
        // A registry format without a schema file creates the table from the
        // subject's latest schema.
        let existing = table::load(&tcfg.uri, &cfg.storage)
            .await
            .map_err(Box::new)?;
        let mut fallback = None;
        if tcfg.schema.is_none()
            && existing.is_none()
            && let Some(registry) = &self.registry
        {
            let subject = cfg.decode.subject_for(topic);
            let latest = registry.latest(&subject).await?;
            let imports = registry.references(&latest).await?;
            let record = crate::decode::record_schema(&latest, &imports).map_err(|message| {
                PipelineError::RegistrySchema {
                    subject: subject.clone(),
                    message,
                }
            })?;
            tracing::info!(%subject, schema_id = latest.id, "creating the table from the registry schema");
            fallback = Some(record);
        }
        let opened = table::open_or_create_loaded(&tcfg, &cfg.storage, existing, fallback.as_ref())
            .await
            .map_err(Box::new)?;
        tracing::info!(
            table = %tcfg.uri,
            created = opened.created,
            version = opened.table.version().map_or(-1, |v| v as i64),
            "table open"
        );
        let decoder = Decoder::for_format(
            cfg.decode.format,
            self.registry.as_ref(),
            opened.schema.clone(),
            cfg.kafka.max_chunk_records,
            cfg.decode.on_incompatible,
        )?;
        let transform =
            Transform::new(&tcfg.transform, &opened.schema).map_err(PipelineError::Transform)?;
        let props = table::writer_properties(tcfg.compression, tcfg.row_group_rows);
        self.sinks.push(Sink {
            tcfg,
            flush,
            table: opened.table,
            log: TableLog::default(),
            decoder,
            transform,
            props,
            window: Window::default(),
            inflight: None,
        });
        Ok(self.sinks.len() - 1)
    }

    /// Ready: partitions assigned, not recovering, and commits landing: a commit in
    /// flight for longer than twice the backoff cap (at least 30 s) means storage is
    /// failing, and the pod should not count as available.
    fn is_ready(&self) -> bool {
        let stuck_after = (self.cfg.commit.max_backoff * 2).max(Duration::from_secs(30));
        !self.parts.is_empty()
            && !self.needs_rewind
            && self.sinks.iter().all(|s| {
                s.inflight
                    .as_ref()
                    .is_none_or(|i| i.started.elapsed() < stuck_after)
            })
    }

    fn accepting_data(&self) -> bool {
        if self.needs_rewind {
            return false;
        }
        if self.resume_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        // Back-pressure: a table's open window is due but its previous commit still runs.
        !self
            .sinks
            .iter()
            .any(|s| s.inflight.is_some() && s.flush_due())
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
                PipelineStats::add(&self.stats.rebalances, 1);
                let answer = self.on_assign(partitions).await?;
                let _ = reply.send(answer);
            }
            SourceEvent::Revoked {
                partitions,
                lost,
                reply,
            } => {
                PipelineStats::add(&self.stats.rebalances, 1);
                self.on_revoke(&partitions, lost).await?;
                let _ = reply.send(());
            }
            SourceEvent::Fatal(msg) => return Err(SourceError::Fatal(msg).into()),
        }
        Ok(())
    }

    /// The offsets stored for `tps` in their sinks' tables, and in the dead-letter
    /// table.
    async fn stored_offsets(
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
                .offsets(&sink.table, &self.cfg.app_id, &mine)
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
    async fn start_offsets(
        &mut self,
        tps: &[(TopicPartition, usize)],
    ) -> Result<Starts, PipelineError> {
        let mut stored = self.stored_offsets(tps).await?;
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
    async fn pin_latest(
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
        let deadline = Instant::now() + PIN_LATEST_TIMEOUT;
        let abandon = self.abandon.clone();
        let give_up = move || abandon.load(Ordering::Acquire) || Instant::now() >= deadline;
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
            let req = CommitRequest {
                adds: Vec::new(),
                partitions,
            };
            let s = &mut self.sinks[sink];
            let (outcome, _) = commit::commit(
                &mut s.table,
                &s.log,
                &self.cfg.app_id,
                &req,
                self.policy,
                &give_up,
            )
            .await
            .map_err(|e| PipelineError::Commit(Box::new(e)))?;
            let now: Vec<(TopicPartition, Option<i64>)> = match outcome {
                CommitOutcome::Stale { partitions } => partitions,
                CommitOutcome::Committed { .. } | CommitOutcome::AlreadyCommitted => Vec::new(),
            };
            for p in &req.partitions {
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

    async fn on_assign(
        &mut self,
        partitions: Vec<TopicPartition>,
    ) -> Result<AssignReply, PipelineError> {
        let mut routed = Vec::with_capacity(partitions.len());
        let mut unopened = Vec::new();
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
                self.parts.insert(
                    tp,
                    PartState {
                        epoch,
                        committed,
                        seen_last: committed,
                        sink: Some(sink),
                        dead_committed,
                        dead_kept,
                    },
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
                PartState {
                    epoch,
                    committed: None,
                    seen_last: None,
                    sink,
                    dead_committed: None,
                    dead_kept: BTreeSet::new(),
                },
            );
            self.needs_rewind = true;
        }
        Ok(reply)
    }

    async fn on_revoke(
        &mut self,
        partitions: &[TopicPartition],
        lost: bool,
    ) -> Result<(), PipelineError> {
        // One budget for the whole callback, however many tables: the group waits
        // for this answer.
        let deadline =
            Instant::now() + revoke_budget(self.options.revoke_commit_timeout, &self.cfg.kafka);
        let left = || deadline.saturating_duration_since(Instant::now());
        for i in 0..self.sinks.len() {
            let touches_window = partitions
                .iter()
                .any(|tp| self.sinks[i].window.parts.contains_key(tp));
            self.await_inflight(i, left()).await?;
            if !touches_window {
                continue;
            }
            if lost || self.needs_rewind || self.sinks[i].inflight.is_some() {
                // Another consumer may already own these partitions, or we cannot
                // commit in time: drop the window, it is re-read by whoever owns them.
                tracing::info!(
                    records = self.sinks[i].window.records,
                    table = %self.sinks[i].tcfg.uri,
                    lost,
                    "dropping buffered records of revoked partitions"
                );
                self.abort_windows();
                self.needs_rewind = true;
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

    async fn await_inflight(
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

    async fn on_chunk(&mut self, chunk: RecordChunk) -> Result<(), PipelineError> {
        // Which records to take: current epoch, beyond what is already accounted for.
        let mut last: Vec<Option<Option<i64>>> = chunk
            .partitions
            .iter()
            .map(|cp| {
                self.parts
                    .get(&cp.tp)
                    .filter(|p| p.epoch == cp.epoch)
                    .map(|p| p.seen_last)
            })
            .collect();
        let sink_of: Vec<Option<usize>> = chunk
            .partitions
            .iter()
            .map(|cp| self.parts.get(&cp.tp).and_then(|p| p.sink))
            .collect();
        let mut keep = vec![false; chunk.len()];
        for (i, r) in chunk.records.iter().enumerate() {
            if let Some(seen) = &mut last[r.part as usize]
                && seen.is_none_or(|s| r.offset > s)
            {
                keep[i] = true;
                *seen = Some(r.offset);
            }
        }
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
            if self.needs_rewind {
                return Ok(()); // the rest is re-read after the rewind
            }
        }
        self.maybe_flush();
        Ok(())
    }

    /// The kept records of `chunk` that go to `sink`, split where its window
    /// reaches max_rows, so no window (and no file) holds more rows than the policy
    /// allows.
    async fn on_sink_chunk(
        &mut self,
        sink: usize,
        chunk: &RecordChunk,
        keep: &[bool],
    ) -> Result<(), PipelineError> {
        let mut start = 0;
        while start < chunk.len() {
            if self.sinks[sink].flush_due() {
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
                if !self.needs_rewind && self.sinks[sink].inflight.is_none() {
                    self.start_commit(sink);
                }
            }
            if self.needs_rewind {
                return Ok(());
            }
            let s = &self.sinks[sink];
            let budget = s.flush.max_rows.saturating_sub(s.window.rows).max(1);
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
    async fn on_segment(
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
        // Oversized values are rejected before any decoder sees them.
        let limit = self.cfg.decode.max_record_bytes;
        let too_large: Vec<Rejected> = range
            .clone()
            .filter(|&i| keep[i])
            .filter_map(|i| {
                let len = chunk.value(&chunk.records[i]).map_or(0, <[u8]>::len) as u64;
                (len > limit).then(|| Rejected {
                    index: i,
                    kind: RejectKind::TooLarge,
                    reason: format!("value is {len} bytes, over decode.max_record_bytes ({limit})"),
                })
            })
            .collect();
        // Records whose dead letters landed before a crash stay rejected.
        let already_dead = already_dead(&self.parts, chunk, keep, range.clone());
        let in_segment = |i: usize| {
            range.contains(&i)
                && keep[i]
                && !too_large.iter().any(|r| r.index == i)
                && !already_dead.contains(&i)
        };
        // Registry formats: fetch new schema ids, evolve the table where they need it.
        loop {
            match self.sinks[sink].decoder.prepare(chunk, &in_segment).await {
                Ok(None) => break,
                Ok(Some(evolution)) => {
                    self.evolve(sink, evolution).await?;
                    if self.needs_rewind {
                        return Ok(());
                    }
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "schema registry unavailable; rewinding and retrying");
                    self.fail_and_rewind();
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
        let s = &mut self.sinks[sink];
        let mut decoded = s.decoder.decode(chunk, &in_segment)?;
        if let Some(t) = &s.transform {
            decoded = t.apply(decoded);
        }
        if !too_large.is_empty() {
            decoded.rejected.extend(too_large);
            decoded.rejected.sort_by_key(|r| r.index);
        }
        for rej in &decoded.rejected {
            let r = &chunk.records[rej.index];
            let tp = &chunk.partitions[r.part as usize].tp;
            if self.cfg.decode.on_error == OnError::Fail {
                return Err(PipelineError::Rejected {
                    tp: tp.clone(),
                    offset: r.offset,
                    reason: rej.reason.clone(),
                });
            }
            tracing::warn!(
                topic = %tp.topic, partition = tp.partition, offset = r.offset,
                reason = %rej.reason, "record rejected; counted and skipped"
            );
        }
        if !already_dead.is_empty() {
            tracing::info!(
                records = already_dead.len(),
                "replayed records already in the dead-letter table: rejected again, not rows"
            );
            decoded
                .rejected
                .extend(already_dead.iter().map(|&index| Rejected {
                    index,
                    kind: RejectKind::Decode,
                    reason: "already in the dead-letter table".into(),
                }));
            decoded.rejected.sort_by_key(|r| r.index);
        }
        // Dead letters not already in the dead-letter table (a replay after a crash
        // between the two commits re-rejects records that are).
        if let Some(d) = &self.dead {
            let fresh: Vec<&Rejected> = decoded
                .rejected
                .iter()
                .filter(|rej| !already_dead.contains(&rej.index))
                .collect();
            if !fresh.is_empty() {
                let uri = self.sinks[sink].uri();
                let batch = crate::sink::dead_letter::batch(&d.schema, chunk, &fresh, &uri)?;
                let w = &mut self.sinks[sink].window;
                w.dead.push(batch);
                for rej in fresh {
                    let r = &chunk.records[rej.index];
                    w.dead_parts
                        .insert(chunk.partitions[r.part as usize].tp.clone());
                }
            }
        }
        // Account for every kept record, good or rejected: the window's offset for a
        // partition is its last kept record, whatever became of it.
        // Kept offsets only grow within a partition, so one pass finds each chunk
        // partition's last, and the maps are touched once per partition, not per record.
        let mut last_kept: Vec<Option<i64>> = vec![None; chunk.partitions.len()];
        for i in range.clone().filter(|&i| keep[i]) {
            let r = &chunk.records[i];
            last_kept[r.part as usize] = Some(r.offset);
        }
        let window = &mut self.sinks[sink].window;
        for (cp, last) in chunk.partitions.iter().zip(last_kept) {
            if let Some(offset) = last
                && let Some(p) = self.parts.get_mut(&cp.tp)
            {
                p.seen_last = Some(offset);
                window.parts.insert(cp.tp.clone(), offset);
            }
        }
        PipelineStats::add(&self.stats.records_rejected, decoded.rejected.len() as u64);
        PipelineStats::add(&self.stats.records_accounted, accounted);
        window.records += accounted;
        window.opened_at.get_or_insert_with(Instant::now);
        if let Some(batch) = decoded.batch {
            let rows = batch.num_rows() as u64;
            let s = &mut self.sinks[sink];
            if s.window.writer.is_none() {
                let writer = table::new_writer(&s.table, s.props.clone(), s.flush.max_bytes)
                    .map_err(|source| PipelineError::Write {
                        uri: s.uri(),
                        source: Box::new(source),
                    })?;
                s.window.writer = Some(WindowWriter::start(writer, self.stats.clone()));
            }
            let writer = s.window.writer.as_mut().expect("writer just set");
            if let Err(e) = writer.write(batch).await {
                if table::is_retryable(&e) {
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
        }
        Ok(())
    }

    /// Before a window opens: if the table's schema is no longer the one records
    /// are decoded into (another worker evolved it, or an operator added a column
    /// with another engine), decode into the table's schema from now on. New
    /// nullable columns are filled with null (or from records that carry them);
    /// the same check as at start refuses a table that no longer fits.
    fn adopt_table_schema(&mut self, sink: usize) -> Result<(), PipelineError> {
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
    async fn evolve(&mut self, sink: usize, evolution: Evolution) -> Result<(), PipelineError> {
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
            && !self.needs_rewind
        {
            self.start_commit(sink);
            self.await_inflight(sink, DUE_WINDOW_WAIT).await?;
        }
        if self.sinks[sink].inflight.is_some() && !self.needs_rewind {
            tracing::warn!(
                table = %self.sinks[sink].tcfg.uri,
                "previous commit still running; records needing the schema change are re-read after it"
            );
            self.abort_windows();
            self.needs_rewind = true;
        }
        if self.needs_rewind {
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

    fn maybe_flush(&mut self) {
        if self.needs_rewind {
            return;
        }
        for i in 0..self.sinks.len() {
            if self.sinks[i].inflight.is_none() && self.sinks[i].flush_due() {
                self.start_commit(i);
            }
        }
    }

    fn start_commit(&mut self, sink: usize) {
        let window = std::mem::take(&mut self.sinks[sink].window);
        if window.is_empty() {
            return;
        }
        let mut partitions = Vec::with_capacity(window.parts.len());
        let mut parts = Vec::with_capacity(window.parts.len());
        for (tp, last) in window.parts {
            let Some(p) = self.parts.get(&tp) else {
                continue;
            };
            partitions.push(PartitionCommit {
                tp: tp.clone(),
                expected: p.committed,
                last,
            });
            parts.push((tp, p.epoch, last));
        }
        partitions.sort_by(|a, b| a.tp.cmp(&b.tp));
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

    fn on_commit_done(
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
        let epochs: HashMap<&TopicPartition, u64> =
            inflight.parts.iter().map(|(tp, e, _)| (tp, *e)).collect();
        for (tp, last) in &done.dead_committed {
            if let Some(p) = self.parts.get_mut(tp)
                && epochs.get(tp) == Some(&p.epoch)
            {
                p.dead_committed = Some(*last);
            }
        }
        let uri = self.sinks[sink].uri();
        match done.result {
            Ok((
                outcome @ (CommitOutcome::Committed { .. } | CommitOutcome::AlreadyCommitted),
                cstats,
                files,
                bytes,
            )) => {
                let mut offsets = Vec::with_capacity(inflight.parts.len());
                for (tp, epoch, last) in &inflight.parts {
                    if let Some(p) = self.parts.get_mut(tp)
                        && p.epoch == *epoch
                    {
                        p.committed = Some(*last);
                    }
                    offsets.push((tp.clone(), *last));
                }
                self.stats
                    .commit_seconds
                    .observe(cstats.duration.as_secs_f64());
                PipelineStats::add(
                    &self.stats.commit_retries,
                    u64::from(cstats.attempts.saturating_sub(1)),
                );
                if let CommitOutcome::Committed { version } = outcome {
                    self.stats
                        .table_version
                        .store(version as u64, Ordering::Relaxed);
                    PipelineStats::add(&self.stats.commits, 1);
                    PipelineStats::add(&self.stats.rows_committed, inflight.rows);
                    PipelineStats::add(&self.stats.files_committed, files as u64);
                    PipelineStats::add(&self.stats.bytes_committed, bytes);
                    tracing::info!(
                        table = %uri,
                        version,
                        rows = inflight.rows,
                        files,
                        bytes,
                        partitions = inflight.parts.len(),
                        attempts = cstats.attempts,
                        ms = cstats.duration.as_millis() as u64,
                        "committed"
                    );
                } else {
                    tracing::info!(
                        table = %uri,
                        rows = inflight.rows,
                        "offsets were already committed; nothing written"
                    );
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
                self.backoff = self.options.initial_backoff;
                Ok(())
            }
            Ok((CommitOutcome::Stale { partitions }, _, _, _)) => {
                PipelineStats::add(&self.stats.stale_commits, 1);
                tracing::warn!(
                    table = %uri,
                    partitions = ?partitions,
                    "another writer committed these partitions first; dropping this window and rewinding"
                );
                self.abort_windows();
                self.needs_rewind = true;
                Ok(())
            }
            Err(TaskError::Write(e)) if table::is_retryable(&e) => {
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

    /// Drop every table's open window (a rewind re-reads what they held).
    fn abort_windows(&mut self) {
        for s in &mut self.sinks {
            s.window.abort();
        }
    }

    /// Abort the windows and rewind after a backoff.
    fn fail_and_rewind(&mut self) {
        self.abort_windows();
        self.needs_rewind = true;
        self.resume_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(self.cfg.commit.max_backoff);
    }

    /// Open the tables of partitions assigned while they could not be opened.
    async fn open_waiting_sinks(&mut self) -> Result<(), PipelineError> {
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
    async fn rewind(&mut self) -> Result<(), PipelineError> {
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

    /// Commit what is buffered, leave the group and stop the poll thread.
    async fn drain(&mut self, mut channels: SourceChannels) -> Result<RunSummary, PipelineError> {
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

/// The dead-letter table's part of a window's commit for one partition: from the
/// offset that table holds to the window's last, except that a replayed window
/// ending below what the table already holds never moves it back.
fn dead_letter_commit(window: &PartitionCommit, dead_committed: Option<i64>) -> PartitionCommit {
    PartitionCommit {
        tp: window.tp.clone(),
        expected: dead_committed,
        last: dead_committed.map_or(window.last, |d| d.max(window.last)),
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

    #[test]
    fn a_revoke_waits_at_most_half_the_session_timeout() {
        let mut kafka = crate::config::KafkaConfig {
            brokers: "b:9092".into(),
            group_id: "g".into(),
            subscription: Subscription::Topics(vec!["t".into()]),
            auto_offset_reset: OffsetReset::Earliest,
            properties: Default::default(),
            max_chunk_records: 1,
            channel_capacity: 1,
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

    #[test]
    fn the_dead_letter_offset_never_moves_back() {
        let window = |last| PartitionCommit {
            tp: TopicPartition::new("t", 0),
            expected: Some(3),
            last,
        };
        // First window of the partition in the dead-letter table.
        assert_eq!(dead_letter_commit(&window(9), None).expected, None);
        assert_eq!(dead_letter_commit(&window(9), None).last, 9);
        // A replay that goes past what the table holds moves it forward.
        let c = dead_letter_commit(&window(12), Some(9));
        assert_eq!((c.expected, c.last), (Some(9), 12));
        // A replay that ends below it leaves it where it is (no move).
        let c = dead_letter_commit(&window(6), Some(9));
        assert_eq!((c.expected, c.last), (Some(9), 9));
    }

    fn storage_error(source: deltalake::ObjectStoreError) -> PipelineError {
        PipelineError::Table(Box::new(TableError::Delta {
            uri: "s3://b/t".into(),
            source: Box::new(DeltaTableError::ObjectStore { source }),
        }))
    }

    #[test]
    fn storage_trouble_is_retried_and_refused_credentials_stop_with_a_hint() {
        let outage = storage_error(deltalake::ObjectStoreError::Generic {
            store: "S3",
            source: "error sending request: connection reset".into(),
        });
        assert!(outage.is_retryable());
        let denied = storage_error(deltalake::ObjectStoreError::PermissionDenied {
            path: "t/_delta_log/".into(),
            source: "<Code>AccessDenied</Code> 403 Forbidden".into(),
        });
        assert!(!denied.is_retryable());
        assert!(
            denied
                .hint()
                .is_some_and(|h| h.starts_with("Access denied")),
            "{:?}",
            denied.hint()
        );
        let route = PipelineError::Route("no {topic}".into());
        assert!(!route.is_retryable());
        assert!(route.hint().is_none());
    }
}
