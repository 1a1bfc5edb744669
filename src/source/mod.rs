//! The Kafka side: one OS thread owns the rdkafka consumer, polls it, and hands
//! records to the pipeline in [`RecordChunk`]s.
//!
//! # Rebalances
//!
//! librdkafka runs the rebalance callback on this thread, inside `poll`. The callback
//! sends a typed [`SourceEvent`] to the pipeline and waits for its answer (a
//! rendezvous) before returning:
//!
//! - on assign the pipeline reads each partition's offset from the table and answers
//!   where to start and under which epoch; the callback assigns with those offsets
//!   (`auto_offset_reset` for partitions the table has never seen);
//! - on revoke the pipeline commits (or, failing that, drops) everything buffered
//!   for the revoked partitions before answering, so nothing it holds outlives the
//!   assignment.
//!
//! # Back-pressure
//!
//! Chunks go through a bounded channel. When it is full the thread first waits for
//! room (blocked, not spinning; it wakes the moment the pipeline takes a chunk), as
//! happens all the time when the pipeline is the bottleneck. Only when the channel
//! stays full for [`PAUSE_AFTER`] (a commit retrying through a storage outage) does
//! it pause all its partitions and go back to calling `poll`, so group heartbeats,
//! rebalances and `max.poll.interval.ms` keep being served however long that takes;
//! it resumes them once the chunks it holds have been taken. Pausing at every full
//! channel cost 2.4-3x of the throughput: a pause drops librdkafka's prefetch, and
//! the pipeline starves while the resumed fetch refills it.
//!
//! # Epochs
//!
//! Every record carries the epoch of the assignment or seek it was fetched under. The
//! pipeline picks the epochs; after it rewinds a partition (seek back to the table's
//! offset) it ignores records of older epochs still in the channel.

pub mod options;
pub mod probe;

pub use options::{KafkaConfig, OffsetReset, Subscription};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::sync::{mpsc, oneshot};

use crate::record::{HeaderMeta, RecordChunk, RecordMeta, TopicPartition};

/// Errors from the Kafka side.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The consumer could not be created or subscribed.
    #[error("kafka consumer for brokers {brokers}: {source}")]
    Client {
        /// `bootstrap.servers`.
        brokers: String,
        /// rdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// librdkafka reported a fatal error; the consumer cannot continue.
    #[error("fatal kafka error: {0}")]
    Fatal(String),
    /// The poll thread could not be started.
    #[error("cannot start the kafka poll thread: {0}")]
    Thread(#[source] std::io::Error),
}

impl SourceError {
    /// Whether restarting the consumer may help.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, SourceError::Client { .. })
    }
}

/// Where a partition starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// This offset.
    Offset(i64),
    /// The oldest retained record.
    Beginning,
    /// The next record produced.
    End,
}

impl StartAt {
    /// The position after a stored offset, or the reset policy when there is none.
    pub fn after(stored: Option<i64>, reset: OffsetReset) -> Self {
        match (stored, reset) {
            (Some(v), _) => StartAt::Offset(v + 1),
            (None, OffsetReset::Earliest) => StartAt::Beginning,
            (None, OffsetReset::Latest) => StartAt::End,
        }
    }

    fn offset(self) -> Offset {
        match self {
            StartAt::Offset(o) => Offset::Offset(o),
            StartAt::Beginning => Offset::Beginning,
            StartAt::End => Offset::End,
        }
    }
}

/// The pipeline's answer to an assignment: per partition, where to start and the
/// epoch to tag its records with.
pub type AssignReply = Vec<(TopicPartition, StartAt, u64)>;

/// Events from the poll thread that need the pipeline's answer.
#[derive(Debug)]
pub enum SourceEvent {
    /// Partitions were assigned; answer with their start positions.
    Assigned {
        /// The new partitions.
        partitions: Vec<TopicPartition>,
        /// Where the answer goes.
        reply: oneshot::Sender<AssignReply>,
    },
    /// Partitions are being revoked; answer once nothing buffered for them remains.
    Revoked {
        /// The partitions.
        partitions: Vec<TopicPartition>,
        /// Whether the assignment was lost (session expired) rather than handed over.
        lost: bool,
        /// Where the acknowledgement goes.
        reply: oneshot::Sender<()>,
    },
    /// The consumer hit a fatal error and stopped.
    Fatal(String),
}

/// Requests from the pipeline to the poll thread.
#[derive(Debug)]
pub enum SourceCommand {
    /// Re-position a partition and tag its records with `epoch` from now on.
    Seek {
        /// The partition.
        tp: TopicPartition,
        /// Where to continue.
        to: StartAt,
        /// The new epoch.
        epoch: u64,
    },
    /// Commit consumer-group offsets (next offset to read) for monitoring tools.
    CommitOffsets(Vec<(TopicPartition, i64)>),
    /// Leave the group and stop.
    Shutdown,
}

type EpochMap = HashMap<Arc<str>, HashMap<i32, u64>>;

/// Each assigned partition's epoch, with a generation bumped on every change so
/// the poll loop can keep the last lookup instead of locking per message.
#[derive(Default)]
struct Epochs {
    map: Mutex<EpochMap>,
    generation: AtomicU64,
}

impl Epochs {
    /// Change the map; the generation moves on, so cached lookups are redone.
    fn update<R>(&self, change: impl FnOnce(&mut EpochMap) -> R) -> R {
        let mut map = self.map.lock().expect("epoch map poisoned");
        let result = change(&mut map);
        self.generation.fetch_add(1, Ordering::Release);
        result
    }

    fn get(&self, topic: &str, partition: i32) -> Option<u64> {
        let map = self.map.lock().expect("epoch map poisoned");
        map.get(topic).and_then(|m| m.get(&partition)).copied()
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// The poll loop's last epoch lookup. librdkafka hands out a partition's messages
/// in runs, so this answers almost every message without the lock.
struct EpochCache {
    generation: u64,
    topic: Arc<str>,
    partition: i32,
    epoch: Option<u64>,
}

impl EpochCache {
    fn epoch(
        cache: &mut Option<Self>,
        epochs: &Epochs,
        topic: &str,
        partition: i32,
    ) -> Option<u64> {
        let generation = epochs.generation();
        if let Some(c) = cache.as_ref()
            && c.generation == generation
            && c.partition == partition
            && *c.topic == *topic
        {
            return c.epoch;
        }
        let epoch = epochs.get(topic, partition);
        *cache = Some(EpochCache {
            generation,
            topic: topic.into(),
            partition,
            epoch,
        });
        epoch
    }
}

struct IngestContext {
    stats: Arc<crate::telemetry::stats::PipelineStats>,
    events: mpsc::UnboundedSender<SourceEvent>,
    epochs: Epochs,
    closing: AtomicBool,
    /// A fatal error librdkafka reported through the error callback; the poll
    /// loop stops on it.
    fatal: Mutex<Option<String>>,
}

/// Write a librdkafka log line to tracing at the matching level; true for the
/// error levels.
pub(crate) fn log_to_tracing(level: RDKafkaLogLevel, fac: &str, message: &str) -> bool {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", facility = fac, "{message}");
            true
        }
        RDKafkaLogLevel::Warning => {
            tracing::warn!(target: "librdkafka", facility = fac, "{message}");
            false
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", facility = fac, "{message}");
            false
        }
        RDKafkaLogLevel::Debug => {
            tracing::debug!(target: "librdkafka", facility = fac, "{message}");
            false
        }
    }
}

impl ClientContext for IngestContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_to_tracing(level, fac, log_message);
    }

    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        // High watermarks from fetch responses, for the lag metric.
        let marks: Vec<(TopicPartition, i64)> = statistics
            .topics
            .iter()
            .flat_map(|(topic, t)| {
                t.partitions
                    .iter()
                    .filter(|(p, s)| **p >= 0 && s.hi_offset >= 0)
                    .map(move |(p, s)| (TopicPartition::new(topic.as_str(), *p), s.hi_offset))
            })
            .collect();
        self.stats.set_high_watermarks(marks);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::Fatal) {
            if let Ok(mut fatal) = self.fatal.lock() {
                fatal.get_or_insert_with(|| reason.to_owned());
            }
            return;
        }
        // Transport errors are retried by librdkafka; they are worth a warning, not
        // an error (no data is at risk while the broker is away).
        tracing::warn!(target: "librdkafka", %error, reason, "kafka client error");
    }
}

fn tpl_partitions(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

impl ConsumerContext for IngestContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let closing = self.closing.load(Ordering::Acquire);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions = tpl_partitions(tpl);
                tracing::info!(partitions = ?partitions, "partitions assigned");
                let (reply, answer) = oneshot::channel();
                let starts = if closing
                    || self
                        .events
                        .send(SourceEvent::Assigned {
                            partitions: partitions.clone(),
                            reply,
                        })
                        .is_err()
                {
                    None
                } else {
                    answer.blocking_recv().ok()
                };
                let Some(starts) = starts else {
                    // The pipeline is gone: take no partitions, so none are read
                    // without their stored offsets.
                    let _ = if cooperative {
                        Ok(())
                    } else {
                        consumer.unassign()
                    };
                    return;
                };
                self.epochs.update(|epochs| {
                    for (tp, start, epoch) in &starts {
                        if let Err(e) =
                            tpl.set_partition_offset(&tp.topic, tp.partition, start.offset())
                        {
                            tracing::error!(partition = %tp, error = %e, "cannot set start offset");
                        }
                        epochs
                            .entry(tp.topic.clone())
                            .or_default()
                            .insert(tp.partition, *epoch);
                    }
                });
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let partitions = tpl_partitions(tpl);
                let lost = consumer.assignment_lost();
                tracing::info!(partitions = ?partitions, lost, "partitions revoked");
                if !closing {
                    let (reply, answer) = oneshot::channel();
                    if self
                        .events
                        .send(SourceEvent::Revoked {
                            partitions: partitions.clone(),
                            lost,
                            reply,
                        })
                        .is_ok()
                    {
                        let _ = answer.blocking_recv();
                    }
                }
                self.epochs.update(|epochs| {
                    for tp in &partitions {
                        if let Some(m) = epochs.get_mut(&tp.topic) {
                            m.remove(&tp.partition);
                        }
                    }
                });
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "unassign failed");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error; dropping the assignment");
                let _ = consumer.unassign();
            }
        }
    }
}

/// Handle to the poll thread.
#[derive(Debug)]
pub struct Source {
    commands: std_mpsc::Sender<SourceCommand>,
    thread: Option<JoinHandle<()>>,
}

/// The pipeline's ends of the source's channels.
#[derive(Debug)]
pub struct SourceChannels {
    /// Record chunks.
    pub chunks: mpsc::Receiver<RecordChunk>,
    /// Rebalance and fatal events.
    pub events: mpsc::UnboundedReceiver<SourceEvent>,
}

/// How often librdkafka refreshes metadata, so the bound on discovering a new
/// topic or partition (overridable in `[kafka.properties]`).
pub const METADATA_REFRESH_MS: &str = "30000";

/// Build the librdkafka configuration from the validated config.
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set(
            "auto.offset.reset",
            match cfg.auto_offset_reset {
                OffsetReset::Earliest => "earliest",
                OffsetReset::Latest => "latest",
            },
        )
        // Bound what librdkafka prefetches; the pipeline holds the rest.
        .set("queued.max.messages.kbytes", "16384")
        // Once that bound is reached librdkafka postpones the next fetch by this
        // long (default 1 s): with the default the pipeline drained the queue in a
        // fraction of that and then sat idle, capping ingestion near 110 k records/s
        // on the benchmark. A short backoff keeps the bound and the pipeline fed.
        .set("fetch.queue.backoff.ms", "10")
        // Statistics carry the high watermarks of fetch responses (lag metric).
        .set("statistics.interval.ms", "5000")
        // New partitions of a subscribed topic, and new topics matching
        // `topic_pattern`, are seen at the next metadata refresh: within 30 s
        // rather than librdkafka's default 5 minutes.
        .set("topic.metadata.refresh.interval.ms", METADATA_REFRESH_MS);
    for (k, v) in &cfg.properties {
        c.set(k, v.expose());
    }
    c
}

impl Source {
    /// Create the consumer, subscribe, and start the poll thread.
    pub fn start(
        cfg: &KafkaConfig,
        stats: Arc<crate::telemetry::stats::PipelineStats>,
    ) -> Result<(Self, SourceChannels), SourceError> {
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let (chunk_tx, chunk_rx) = mpsc::channel(cfg.channel_capacity);
        let (cmd_tx, cmd_rx) = std_mpsc::channel();
        let context = IngestContext {
            stats,
            events: event_tx.clone(),
            epochs: Epochs::default(),
            closing: AtomicBool::new(false),
            fatal: Mutex::new(None),
        };
        let consumer: BaseConsumer<IngestContext> = client_config(cfg)
            .create_with_context(context)
            .map_err(|source| SourceError::Client {
                brokers: cfg.brokers.clone(),
                source,
            })?;
        let topics = cfg.subscription.as_subscribe_args();
        let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topic_refs)
            .map_err(|source| SourceError::Client {
                brokers: cfg.brokers.clone(),
                source,
            })?;
        let max_records = cfg.max_chunk_records;
        let thread = std::thread::Builder::new()
            .name("kafka-poll".into())
            .spawn(move || poll_loop(consumer, chunk_tx, cmd_rx, event_tx, max_records))
            .map_err(SourceError::Thread)?;
        Ok((
            Self {
                commands: cmd_tx,
                thread: Some(thread),
            },
            SourceChannels {
                chunks: chunk_rx,
                events: event_rx,
            },
        ))
    }

    /// Send a command; a stopped thread ignores it.
    pub fn send(&self, cmd: SourceCommand) {
        let _ = self.commands.send(cmd);
    }

    /// Ask the thread to leave the group and stop; returns its join handle.
    pub fn shutdown(mut self) -> Option<JoinHandle<()>> {
        let _ = self.commands.send(SourceCommand::Shutdown);
        self.thread.take()
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        let _ = self.commands.send(SourceCommand::Shutdown);
    }
}

const MAX_CHUNK_BYTES: usize = 8 * 1024 * 1024;
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);
/// Epoch of a partition whose seek is pending: its records are not handed on.
const BLOCKED: u64 = 0;

/// Set a partition's epoch; false if it is not assigned.
fn set_epoch(consumer: &BaseConsumer<IngestContext>, tp: &TopicPartition, epoch: u64) -> bool {
    consumer.context().epochs.update(|epochs| {
        match epochs
            .get_mut(&tp.topic)
            .and_then(|m| m.get_mut(&tp.partition))
        {
            Some(e) => {
                *e = epoch;
                true
            }
            None => false,
        }
    })
}

fn is_assigned(consumer: &BaseConsumer<IngestContext>, tp: &TopicPartition) -> bool {
    consumer
        .context()
        .epochs
        .get(&tp.topic, tp.partition)
        .is_some()
}

/// How long `poll` waits while the consumer is paused on back-pressure: the thread
/// sleeps in librdkafka (serving heartbeats and rebalances) instead of spinning.
const PAUSED_POLL: Duration = Duration::from_millis(50);

/// How long one wait for room in the channel lasts before the loop goes round
/// (commands, seeks) again.
const ROOM_WAIT: Duration = Duration::from_millis(100);

/// How long the channel must stay full before the partitions are paused and
/// polling resumes. Shorter stalls (a window waiting for the previous commit) are
/// waited out: rebalance callbacks are served at most this late.
const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// When to pause: after the channel has stayed full for [`PAUSE_AFTER`].
#[derive(Debug, Default)]
struct PausePolicy {
    full_since: Option<Instant>,
}

impl PausePolicy {
    /// The channel is full at `now`: whether to pause.
    fn full(&mut self, now: Instant) -> bool {
        let since = *self.full_since.get_or_insert(now);
        now.duration_since(since) >= PAUSE_AFTER
    }

    /// The channel took a chunk: it is moving.
    fn took(&mut self) {
        self.full_since = None;
    }
}

/// What a wait for room in the channel ended with.
enum Room<'a> {
    Free(mpsc::Permit<'a, RecordChunk>),
    Full,
    Closed,
}

/// Wait up to `wait` for room in `chunks`, blocking this (non-async) thread: it is
/// woken as soon as the pipeline takes a chunk. No runtime is needed: the reserve
/// future is polled here with a waker that unparks the thread.
fn wait_for_room(chunks: &mpsc::Sender<RecordChunk>, wait: Duration) -> Room<'_> {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let deadline = Instant::now() + wait;
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut reserve = std::pin::pin!(chunks.reserve());
    loop {
        match reserve.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(Ok(permit)) => return Room::Free(permit),
            std::task::Poll::Ready(Err(_)) => return Room::Closed,
            std::task::Poll::Pending => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Room::Full;
        }
        std::thread::park_timeout(deadline - now);
    }
}

/// Chunks polled but not yet taken by the pipeline, with the pause they cause.
///
/// A channel that stays full pauses every assigned partition; polling goes on
/// (callbacks, heartbeats, `max.poll.interval.ms`), and records librdkafka had
/// already fetched are held here, never dropped. They are sent in order once the
/// channel has room, and the partitions resume when nothing is held.
#[derive(Default)]
struct Held {
    chunks: std::collections::VecDeque<RecordChunk>,
    paused: Option<TopicPartitionList>,
    policy: PausePolicy,
}

impl Held {
    /// Send what the channel takes, waiting a little for room; pause once it has
    /// stayed full for [`PAUSE_AFTER`], resume once nothing is held. `false` when
    /// the pipeline is gone.
    fn flush(
        &mut self,
        consumer: &BaseConsumer<IngestContext>,
        chunks: &mpsc::Sender<RecordChunk>,
    ) -> bool {
        while let Some(chunk) = self.chunks.pop_front() {
            match chunks.try_send(chunk) {
                Ok(()) => self.policy.took(),
                Err(mpsc::error::TrySendError::Full(chunk)) => {
                    let wait = if self.paused.is_some() {
                        PAUSED_POLL
                    } else {
                        ROOM_WAIT
                    };
                    match wait_for_room(chunks, wait) {
                        Room::Free(permit) => {
                            permit.send(chunk);
                            self.policy.took();
                            continue;
                        }
                        Room::Closed => return false,
                        Room::Full => self.chunks.push_front(chunk),
                    }
                    if self.policy.full(Instant::now())
                        && self.paused.is_none()
                        && let Ok(assignment) = consumer.assignment()
                    {
                        let _ = consumer.pause(&assignment);
                        self.paused = Some(assignment);
                    }
                    return true;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        if let Some(tpl) = self.paused.take() {
            let _ = consumer.resume(&tpl);
        }
        true
    }

    /// Chunks are held and the partitions are not paused yet: the loop waits for
    /// room instead of polling more records.
    fn waiting_for_room(&self) -> bool {
        !self.chunks.is_empty() && self.paused.is_none()
    }

    fn is_paused(&self) -> bool {
        !self.chunks.is_empty()
    }

    fn drop_partition(&mut self, tp: &TopicPartition) {
        for chunk in &mut self.chunks {
            drop_partition(chunk, tp);
        }
    }
}

/// What one poll burst ended with.
enum Burst {
    /// Keep going.
    More,
    /// librdkafka reported a fatal error: the consumer cannot go on.
    Fatal(String),
}

fn poll_loop(
    consumer: BaseConsumer<IngestContext>,
    chunks: mpsc::Sender<RecordChunk>,
    commands: std_mpsc::Receiver<SourceCommand>,
    events: mpsc::UnboundedSender<SourceEvent>,
    max_records: usize,
) {
    let mut held = Held::default();
    // Seeks not yet confirmed by librdkafka. Until one succeeds, its partition's
    // records are dropped here (epoch 0): a failed seek must never let records from
    // the old position through under the new epoch, which would skip offsets.
    let mut seeks: Vec<(TopicPartition, StartAt, u64)> = Vec::new();
    let mut epoch_cache: Option<EpochCache> = None;
    'outer: loop {
        loop {
            match commands.try_recv() {
                Ok(SourceCommand::Seek { tp, to, epoch }) => {
                    if set_epoch(&consumer, &tp, BLOCKED) {
                        held.drop_partition(&tp);
                        seeks.retain(|(t, _, _)| t != &tp);
                        seeks.push((tp, to, epoch));
                    }
                }
                Ok(SourceCommand::CommitOffsets(offsets)) => {
                    commit_group_offsets(&consumer, &offsets)
                }
                Ok(SourceCommand::Shutdown) | Err(std_mpsc::TryRecvError::Disconnected) => {
                    break 'outer;
                }
                Err(std_mpsc::TryRecvError::Empty) => break,
            }
        }
        seeks.retain(|(tp, to, epoch)| {
            if !is_assigned(&consumer, tp) {
                return false;
            }
            // A blocking seek reports failures (e.g. fetch not started yet); an
            // asynchronous one would not.
            match consumer.seek(&tp.topic, tp.partition, to.offset(), SEEK_TIMEOUT) {
                Ok(()) => {
                    set_epoch(&consumer, tp, *epoch);
                    false
                }
                Err(e) => {
                    tracing::debug!(partition = %tp, error = %e, "seek not accepted yet; retrying");
                    true
                }
            }
        });
        if !held.flush(&consumer, &chunks) {
            break;
        }
        if held.waiting_for_room() {
            continue;
        }
        // While paused, poll waits longer (there is nothing to fetch) and only
        // serves callbacks; records that were already queued are held.
        let timeout = if held.is_paused() {
            PAUSED_POLL
        } else {
            Duration::from_millis(100)
        };
        let mut chunk = RecordChunk::default();
        let burst = poll_burst(
            &consumer,
            &mut chunk,
            &mut epoch_cache,
            timeout,
            max_records,
        );
        if !chunk.is_empty() {
            held.chunks.push_back(chunk);
        }
        if let Burst::Fatal(message) = burst {
            tracing::error!(error = %message, "fatal kafka error; stopping");
            let _ = events.send(SourceEvent::Fatal(message));
            break;
        }
    }
    consumer.context().closing.store(true, Ordering::Release);
    consumer.unsubscribe();
    // Dropping the consumer closes it (leaving the group); callbacks no longer wait.
    drop(consumer);
}

/// Poll until `chunk` is full or nothing more is queued (waiting up to `timeout`
/// for the first event).
fn poll_burst(
    consumer: &BaseConsumer<IngestContext>,
    chunk: &mut RecordChunk,
    epoch_cache: &mut Option<EpochCache>,
    timeout: Duration,
    max_records: usize,
) -> Burst {
    let mut wait = timeout;
    while chunk.len() < max_records && chunk.data_bytes() < MAX_CHUNK_BYTES {
        let polled = consumer.poll(wait);
        wait = Duration::ZERO;
        match polled {
            None => break,
            Some(Ok(msg)) => {
                let (topic, partition) = (msg.topic(), msg.partition());
                let epoch =
                    EpochCache::epoch(epoch_cache, &consumer.context().epochs, topic, partition);
                // Not (or no longer) assigned, or waiting for a seek.
                let Some(epoch) = epoch.filter(|e| *e != BLOCKED) else {
                    continue;
                };
                push_message(chunk, &msg, topic, partition, epoch);
            }
            Some(Err(e)) => {
                if let Some(message) = fatal_message(consumer, &e) {
                    return Burst::Fatal(message);
                }
                tracing::warn!(error = %e, "kafka poll error");
                break;
            }
        }
    }
    // A fatal error the error callback saw during these polls; checked once per
    // burst, not per message (the lock stays off the per-record path).
    match consumer.context().fatal.lock().ok().and_then(|f| f.clone()) {
        Some(message) => Burst::Fatal(message),
        None => Burst::More,
    }
}

/// The fatal error behind `e`, if it is one: the consumer can no longer make
/// progress (a fenced static member, a fatal idempotence or authorization state).
fn fatal_message(consumer: &BaseConsumer<IngestContext>, e: &KafkaError) -> Option<String> {
    let fatal = match e {
        KafkaError::MessageConsumptionFatal(_) => true,
        KafkaError::MessageConsumption(code) => *code == rdkafka::types::RDKafkaErrorCode::Fatal,
        _ => false,
    };
    fatal.then(|| match consumer.client().fatal_error() {
        Some((code, reason)) => format!("{reason} ({code:?})"),
        None => e.to_string(),
    })
}

fn commit_group_offsets(consumer: &BaseConsumer<IngestContext>, offsets: &[(TopicPartition, i64)]) {
    let mut tpl = TopicPartitionList::new();
    for (tp, next) in offsets {
        let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*next));
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::debug!(error = %e, "consumer-group offset commit failed (monitoring only)");
    }
}

fn push_message(
    chunk: &mut RecordChunk,
    msg: &rdkafka::message::BorrowedMessage<'_>,
    topic: &str,
    partition: i32,
    epoch: u64,
) {
    // Most messages continue the run of the one before: no lookup, no allocation.
    let part = match chunk.partitions.last() {
        Some(last)
            if last.epoch == epoch
                && last.tp.partition == partition
                && *last.tp.topic == *topic =>
        {
            (chunk.partitions.len() - 1) as u32
        }
        _ => chunk.partition_index(&TopicPartition::new(topic, partition), epoch),
    };
    let key = msg.key().map(|k| chunk.push_bytes(k));
    let value = msg.payload().map(|v| chunk.push_bytes(v));
    let header_start = chunk.headers.len();
    if let Some(headers) = msg.headers() {
        for h in headers.iter() {
            let value = h.value.map(|v| chunk.push_bytes(v));
            chunk.headers.push(HeaderMeta {
                key: h.key.to_owned(),
                value,
            });
        }
    }
    let header_end = chunk.headers.len();
    chunk.records.push(RecordMeta {
        part,
        offset: msg.offset(),
        timestamp_ms: msg.timestamp().to_millis(),
        key,
        value,
        headers: header_start..header_end,
    });
}

/// Remove a partition's records from a held chunk (after a seek).
fn drop_partition(chunk: &mut RecordChunk, tp: &TopicPartition) {
    let parts: Vec<u32> = chunk
        .partitions
        .iter()
        .enumerate()
        .filter(|(_, p)| &p.tp == tp)
        .map(|(i, _)| i as u32)
        .collect();
    if !parts.is_empty() {
        chunk.records.retain(|r| !parts.contains(&r.part));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_full_channel_pauses_only_after_it_stayed_full_for_a_while() {
        use super::{PAUSE_AFTER, PausePolicy};
        let t0 = std::time::Instant::now();
        let ms = |n| std::time::Duration::from_millis(n);
        let mut p = PausePolicy::default();
        assert!(!p.full(t0));
        assert!(!p.full(t0 + PAUSE_AFTER - ms(1)));
        assert!(p.full(t0 + PAUSE_AFTER));
        // Any chunk taken means the pipeline is moving: the clock starts again.
        p.took();
        assert!(!p.full(t0 + PAUSE_AFTER + ms(10)));
        assert!(!p.full(t0 + PAUSE_AFTER * 2));
        assert!(p.full(t0 + PAUSE_AFTER * 2 + ms(10)));
    }

    #[test]
    fn waiting_for_room_wakes_when_the_pipeline_takes_a_chunk_and_gives_up_in_time() {
        use super::{Room, wait_for_room};
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        tx.try_send(crate::record::RecordChunk::default()).unwrap();
        // Nobody takes: the wait ends at its bound.
        let t0 = std::time::Instant::now();
        assert!(matches!(
            wait_for_room(&tx, std::time::Duration::from_millis(30)),
            Room::Full
        ));
        assert!(t0.elapsed() >= std::time::Duration::from_millis(30));
        // The pipeline takes one: the waiter gets the slot (long before its bound).
        let taker = std::thread::spawn(move || {
            let got = rx.blocking_recv().is_some();
            (got, rx)
        });
        match wait_for_room(&tx, std::time::Duration::from_secs(60)) {
            Room::Free(permit) => permit.send(crate::record::RecordChunk::default()),
            _ => panic!("no room after the pipeline took a chunk"),
        }
        let (got, rx) = taker.join().unwrap();
        assert!(got);
        // The pipeline is gone: closed.
        drop(rx);
        assert!(matches!(
            wait_for_room(&tx, std::time::Duration::from_secs(60)),
            Room::Closed
        ));
    }

    use super::*;
    use crate::secret::Secret;
    use crate::source::{KafkaConfig, OffsetReset, Subscription};

    #[test]
    fn a_cached_epoch_is_never_used_after_the_map_changes() {
        let epochs = Epochs::default();
        let mut cache = None;
        epochs.update(|m| m.entry("t".into()).or_default().insert(0, 7));
        assert_eq!(EpochCache::epoch(&mut cache, &epochs, "t", 0), Some(7));
        assert_eq!(EpochCache::epoch(&mut cache, &epochs, "t", 0), Some(7));
        // A seek blocks the partition, then a new epoch: each is seen at once.
        epochs.update(|m| m.get_mut("t").unwrap().insert(0, BLOCKED));
        assert_eq!(
            EpochCache::epoch(&mut cache, &epochs, "t", 0),
            Some(BLOCKED)
        );
        epochs.update(|m| m.get_mut("t").unwrap().insert(0, 8));
        assert_eq!(EpochCache::epoch(&mut cache, &epochs, "t", 0), Some(8));
        // Another partition or topic is looked up, not taken from the cache.
        assert_eq!(EpochCache::epoch(&mut cache, &epochs, "t", 1), None);
        assert_eq!(EpochCache::epoch(&mut cache, &epochs, "u", 0), None);
        // Revoked: gone.
        epochs.update(|m| m.get_mut("t").unwrap().remove(&0));
        assert_eq!(EpochCache::epoch(&mut cache, &epochs, "t", 0), None);
    }

    fn kafka(properties: &[(&str, &str)]) -> KafkaConfig {
        KafkaConfig {
            brokers: "127.0.0.1:1".into(),
            group_id: "g".into(),
            subscription: Subscription::Topics(vec!["t".into()]),
            auto_offset_reset: OffsetReset::Earliest,
            properties: properties
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Secret::new(*v)))
                .collect(),
            max_chunk_records: 1024,
            channel_capacity: 4,
        }
    }

    /// librdkafka refuses TLS and SCRAM at client creation when it was built
    /// without OpenSSL; every secured setup a Kafka operator uses must be accepted.
    #[test]
    fn tls_and_every_sasl_mechanism_are_built_in() {
        for (protocol, mechanism) in [
            ("SSL", None),
            ("SASL_SSL", Some("PLAIN")),
            ("SASL_SSL", Some("SCRAM-SHA-256")),
            ("SASL_SSL", Some("SCRAM-SHA-512")),
            ("SASL_PLAINTEXT", Some("SCRAM-SHA-512")),
        ] {
            let mut props = vec![("security.protocol", protocol)];
            if let Some(m) = mechanism {
                props.extend([
                    ("sasl.mechanism", m),
                    ("sasl.username", "u"),
                    ("sasl.password", "p"),
                ]);
            }
            let created: Result<BaseConsumer, _> = client_config(&kafka(&props)).create();
            if let Err(e) = created {
                panic!("{protocol} {mechanism:?} refused: {e}");
            }
        }
    }
}
