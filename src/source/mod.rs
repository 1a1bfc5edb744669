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
//! stays full for `PAUSE_AFTER` (a commit retrying through a storage outage) does
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

mod context;
pub mod options;
mod poll;
pub mod probe;

pub(crate) use context::log_to_tracing;
use context::{EpochCache, Epochs, IngestContext};
use poll::poll_loop;

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
        // Bound what librdkafka prefetches; the pipeline holds the rest. Its
        // queue, and the fetch response that may overshoot it: with librdkafka's
        // default 50 MB responses, 200 partitions' fetches held ~300 MiB of RSS
        // outside the memory budget.
        .set(
            "queued.max.messages.kbytes",
            (cfg.prefetch_bytes / 1024).to_string(),
        )
        .set("fetch.max.bytes", cfg.prefetch_bytes.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

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
            prefetch_bytes: 1 << 20,
        }
    }

    #[test]
    fn the_prefetch_bound_reaches_librdkafka_and_properties_override_it() {
        let mut cfg = kafka(&[]);
        cfg.prefetch_bytes = 4 << 20;
        let c = client_config(&cfg);
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("4096"));
        assert_eq!(c.get("fetch.max.bytes"), Some("4194304"));
        let c = client_config(&kafka(&[("fetch.max.bytes", "52428800")]));
        assert_eq!(c.get("fetch.max.bytes"), Some("52428800"));
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("1024"));
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
