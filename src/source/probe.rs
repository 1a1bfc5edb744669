//! Read-only Kafka probes for operator commands: topic partitions, watermarks,
//! consumer-group membership, and reading a partition's records.
//!
//! Watermarks come from *fetch responses* (librdkafka's statistics `lo_offset` /
//! `hi_offset`), not from ListOffsets: some Kafka-compatible brokers answer
//! ListOffsets "latest" wrongly, while every fetch response carries the high
//! watermark. The probe assigns the partitions (it never joins the group or commits)
//! and polls until each has answered a fetch.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::record::TopicPartition;
use crate::source::client_config;
use crate::source::{KafkaConfig, Subscription};

/// Errors from probes.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Kafka failed.
    #[error("kafka ({brokers}): {message}")]
    Kafka {
        /// `bootstrap.servers`.
        brokers: String,
        /// What failed.
        message: String,
    },
    /// The brokers did not answer for some partitions in time.
    #[error("no fetch response within {0:?} for: {1}")]
    Timeout(Duration, String),
}

/// Run a blocking probe on tokio's blocking pool.
pub async fn blocking<T: Send + 'static>(
    cfg: &KafkaConfig,
    f: impl FnOnce(&KafkaConfig) -> Result<T, ProbeError> + Send + 'static,
) -> Result<T, ProbeError> {
    let owned = cfg.clone();
    tokio::task::spawn_blocking(move || f(&owned))
        .await
        .map_err(|e| kafka_err(cfg, e))?
}

#[derive(Default)]
struct StatsContext {
    latest: Mutex<Option<Statistics>>,
}

impl ClientContext for StatsContext {
    fn stats(&self, statistics: Statistics) {
        *self.latest.lock().expect("stats lock") = Some(statistics);
    }
}

impl ConsumerContext for StatsContext {}

fn probe_consumer(cfg: &KafkaConfig) -> Result<BaseConsumer<StatsContext>, ProbeError> {
    let mut c = client_config(cfg);
    c.set("statistics.interval.ms", "100")
        .set("enable.partition.eof", "true");
    c.create_with_context(StatsContext::default())
        .map_err(|e| kafka_err(cfg, e))
}

fn kafka_err(cfg: &KafkaConfig, e: impl std::fmt::Display) -> ProbeError {
    ProbeError::Kafka {
        brokers: cfg.brokers.clone(),
        message: e.to_string(),
    }
}

/// All partitions of the subscribed topics.
pub fn partitions(cfg: &KafkaConfig, timeout: Duration) -> Result<Vec<TopicPartition>, ProbeError> {
    let consumer = probe_consumer(cfg)?;
    let md = consumer
        .fetch_metadata(None, timeout)
        .map_err(|e| kafka_err(cfg, e))?;
    let matches: Box<dyn Fn(&str) -> bool> = match &cfg.subscription {
        Subscription::Topics(t) => {
            let t = t.clone();
            Box::new(move |name| t.iter().any(|x| x == name))
        }
        Subscription::Pattern(p) => {
            let re = regex::Regex::new(p).map_err(|e| kafka_err(cfg, e))?;
            Box::new(move |name| re.is_match(name))
        }
    };
    let mut out = Vec::new();
    for t in md.topics().iter().filter(|t| matches(t.name())) {
        for p in t.partitions() {
            out.push(TopicPartition::new(t.name(), p.id()));
        }
    }
    out.sort();
    Ok(out)
}

/// How many partitions each of `topics` has now, from one metadata request;
/// an error names a topic the brokers do not know.
pub fn partition_counts(
    cfg: &KafkaConfig,
    topics: &[String],
    timeout: Duration,
) -> Result<HashMap<String, u32>, ProbeError> {
    let consumer = probe_consumer(cfg)?;
    let only = match topics {
        [one] => Some(one.as_str()),
        _ => None,
    };
    let md = consumer
        .fetch_metadata(only, timeout)
        .map_err(|e| kafka_err(cfg, e))?;
    topics
        .iter()
        .map(
            |topic| match md.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    Ok((topic.clone(), t.partitions().len() as u32))
                }
                found => Err(kafka_err(
                    cfg,
                    format!(
                        "no partitions for topic `{topic}` in the metadata{}",
                        found
                            .and_then(|t| t.error())
                            .map(|e| format!(" ({e:?})"))
                            .unwrap_or_default()
                    ),
                )),
            },
        )
        .collect()
}

/// Low and high watermark of a partition, from a fetch response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Watermarks {
    /// Oldest retained offset.
    pub low: i64,
    /// Offset the next produced record will get.
    pub high: i64,
    /// Whether a record lies between the fetch's start and the end: false when
    /// what is left is only transaction markers (a transactional producer's
    /// commit or abort takes an offset of its own) or, under `read_committed`,
    /// aborted records, which no consumer reads.
    pub records_ahead: bool,
}

/// Watermarks of `parts`, fetching from `start` (where known) so brokers answer
/// fast; a partition is done once its first record arrived or its fetch reached
/// the end with none.
pub fn watermarks(
    cfg: &KafkaConfig,
    parts: &[(TopicPartition, Option<i64>)],
    timeout: Duration,
) -> Result<BTreeMap<TopicPartition, Watermarks>, ProbeError> {
    let consumer = probe_consumer(cfg)?;
    let mut tpl = TopicPartitionList::new();
    for (tp, start) in parts {
        let offset = start.map_or(Offset::Beginning, Offset::Offset);
        tpl.add_partition_offset(&tp.topic, tp.partition, offset)
            .map_err(|e| kafka_err(cfg, e))?;
    }
    consumer.assign(&tpl).map_err(|e| kafka_err(cfg, e))?;
    let deadline = Instant::now() + timeout;
    let mut ahead = std::collections::BTreeSet::new();
    loop {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
            let tp = TopicPartition::new(m.topic(), m.partition());
            // One record is enough: stop fetching this partition.
            let mut one = TopicPartitionList::new();
            let _ = one.add_partition(m.topic(), m.partition());
            let _ = consumer.pause(&one);
            ahead.insert(tp);
        }
        let found = read_stats(&consumer, parts, &ahead);
        if found.len() == parts.len() {
            return Ok(found);
        }
        if Instant::now() >= deadline {
            let missing: Vec<String> = parts
                .iter()
                .filter(|(tp, _)| !found.contains_key(tp))
                .map(|(tp, _)| tp.to_string())
                .collect();
            return Err(ProbeError::Timeout(timeout, missing.join(", ")));
        }
    }
}

/// The watermarks of the partitions of `parts` that are done: a record of it
/// arrived (`ahead`), or its fetch signalled the end.
fn read_stats(
    consumer: &BaseConsumer<StatsContext>,
    parts: &[(TopicPartition, Option<i64>)],
    ahead: &std::collections::BTreeSet<TopicPartition>,
) -> BTreeMap<TopicPartition, Watermarks> {
    let guard = consumer.context().latest.lock().expect("stats lock");
    let mut out = BTreeMap::new();
    let Some(stats) = guard.as_ref() else {
        return out;
    };
    for (tp, _) in parts {
        let p = stats
            .topics
            .get(tp.topic.as_ref())
            .and_then(|t| t.partitions.get(&tp.partition));
        let records_ahead = ahead.contains(tp);
        if let Some(p) = p
            && p.hi_offset >= 0
            && (records_ahead || p.eof_offset >= 0)
        {
            out.insert(
                tp.clone(),
                Watermarks {
                    low: p.lo_offset.max(0),
                    high: p.hi_offset,
                    records_ahead,
                },
            );
        }
    }
    out
}

/// Per partition, the offset of the first record with a timestamp at or after
/// `ts_ms`; `None` when no such record exists yet.
///
/// The broker's ListOffsets-by-time answer is a candidate only: it is checked by
/// reading the records just before and at it (some Kafka-compatible brokers answer
/// wrongly), and when the check fails the partition is scanned from its start.
pub fn offsets_for_timestamp(
    cfg: &KafkaConfig,
    parts: &[TopicPartition],
    ts_ms: i64,
    timeout: Duration,
) -> Result<BTreeMap<TopicPartition, Option<i64>>, ProbeError> {
    let consumer = probe_consumer(cfg)?;
    let mut tpl = TopicPartitionList::new();
    for tp in parts {
        tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(ts_ms))
            .map_err(|e| kafka_err(cfg, e))?;
    }
    let candidates = consumer.offsets_for_times(tpl, timeout).ok();
    drop(consumer);
    let mut out = BTreeMap::new();
    for tp in parts {
        let candidate = candidates.as_ref().and_then(|c| {
            c.find_partition(&tp.topic, tp.partition)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) if e.error().is_ok() => Some(o),
                    _ => None,
                })
        });
        let verified = match candidate {
            Some(o) => check_candidate(cfg, tp, o, ts_ms, timeout)?,
            None => false,
        };
        let found = if verified {
            candidate
        } else {
            scan_for_timestamp(cfg, tp, ts_ms, timeout)?
        };
        out.insert(tp.clone(), found);
    }
    Ok(out)
}

/// Timestamps of the records from `start` on, read until `f` returns false.
fn read_timestamps(
    cfg: &KafkaConfig,
    tp: &TopicPartition,
    start: Offset,
    timeout: Duration,
    mut f: impl FnMut(i64, i64) -> bool,
) -> Result<(), ProbeError> {
    let consumer = probe_consumer(cfg)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&tp.topic, tp.partition, start)
        .map_err(|e| kafka_err(cfg, e))?;
    consumer.assign(&tpl).map_err(|e| kafka_err(cfg, e))?;
    let mut last_progress = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_progress = Instant::now();
                let ts = m.timestamp().to_millis().unwrap_or(i64::MIN);
                if !f(m.offset(), ts) {
                    return Ok(());
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return Ok(()),
            Some(Err(e)) => return Err(kafka_err(cfg, e)),
            None if last_progress.elapsed() > timeout => {
                return Err(ProbeError::Timeout(timeout, tp.to_string()));
            }
            None => {}
        }
    }
}

/// Whether `candidate` is the first offset with a timestamp >= `ts_ms`.
fn check_candidate(
    cfg: &KafkaConfig,
    tp: &TopicPartition,
    candidate: i64,
    ts_ms: i64,
    timeout: Duration,
) -> Result<bool, ProbeError> {
    let start = if candidate > 0 {
        Offset::Offset(candidate - 1)
    } else {
        Offset::Beginning
    };
    let mut seen = Vec::new();
    read_timestamps(cfg, tp, start, timeout, |o, ts| {
        seen.push((o, ts));
        o < candidate
    })?;
    let at = seen.iter().find(|(o, _)| *o == candidate);
    let before = seen.iter().rev().find(|(o, _)| *o < candidate);
    Ok(at.is_some_and(|(_, ts)| *ts >= ts_ms) && before.is_none_or(|(_, ts)| *ts < ts_ms))
}

/// The first offset with a timestamp >= `ts_ms`, reading from the start.
fn scan_for_timestamp(
    cfg: &KafkaConfig,
    tp: &TopicPartition,
    ts_ms: i64,
    timeout: Duration,
) -> Result<Option<i64>, ProbeError> {
    let mut found = None;
    read_timestamps(cfg, tp, Offset::Beginning, timeout, |o, ts| {
        if ts >= ts_ms {
            found = Some(o);
            false
        } else {
            true
        }
    })?;
    Ok(found)
}

/// Members of the consumer group, or an error when the broker cannot tell.
pub fn group_members(cfg: &KafkaConfig, timeout: Duration) -> Result<usize, ProbeError> {
    let consumer = probe_consumer(cfg)?;
    let groups = consumer
        .fetch_group_list(Some(&cfg.group_id), timeout)
        .map_err(|e| kafka_err(cfg, e))?;
    Ok(groups
        .groups()
        .iter()
        .filter(|g| g.name() == cfg.group_id)
        .map(|g| g.members().len())
        .sum())
}

/// One record read back from Kafka.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// Offset.
    pub offset: i64,
    /// Value bytes.
    pub value: Option<Vec<u8>>,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Timestamp in milliseconds since the epoch, when the broker gave one.
    pub timestamp_ms: Option<i64>,
    /// Headers, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Read every record of each partition from its low watermark up to and including
/// `until`, calling `f` per record.
pub fn read_partitions(
    cfg: &KafkaConfig,
    until: &HashMap<TopicPartition, i64>,
    timeout: Duration,
    mut f: impl FnMut(&TopicPartition, RawRecord),
) -> Result<(), ProbeError> {
    if until.is_empty() {
        return Ok(());
    }
    let consumer = probe_consumer(cfg)?;
    let mut tpl = TopicPartitionList::new();
    for tp in until.keys() {
        tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Beginning)
            .map_err(|e| kafka_err(cfg, e))?;
    }
    consumer.assign(&tpl).map_err(|e| kafka_err(cfg, e))?;
    let mut open: HashMap<TopicPartition, i64> = until.clone();
    let mut last_progress = Instant::now();
    while !open.is_empty() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_progress = Instant::now();
                let tp = TopicPartition::new(m.topic(), m.partition());
                let Some(&end) = open.get(&tp) else { continue };
                if m.offset() <= end {
                    f(
                        &tp,
                        RawRecord {
                            offset: m.offset(),
                            value: m.payload().map(<[u8]>::to_vec),
                            key: m.key().map(<[u8]>::to_vec),
                            timestamp_ms: m.timestamp().to_millis(),
                            headers: m
                                .headers()
                                .map(|h| {
                                    h.iter()
                                        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                                        .collect()
                                })
                                .unwrap_or_default(),
                        },
                    );
                }
                if m.offset() >= end {
                    open.remove(&tp);
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                // The EOF names the partition number only: with one open partition of
                // that number it is that one; otherwise ask for positions.
                let same: Vec<TopicPartition> = open
                    .keys()
                    .filter(|tp| tp.partition == p)
                    .cloned()
                    .collect();
                if same.len() == 1 {
                    open.remove(&same[0]);
                } else if let Ok(pos) = consumer.position() {
                    for e in pos.elements() {
                        let tp = TopicPartition::new(e.topic(), e.partition());
                        if let (Some(end), Offset::Offset(next)) = (open.get(&tp), e.offset())
                            && next > *end
                        {
                            open.remove(&tp);
                        }
                    }
                }
            }
            Some(Err(e)) => return Err(kafka_err(cfg, e)),
            None => {
                if last_progress.elapsed() > timeout {
                    let left: Vec<String> = open.keys().map(ToString::to_string).collect();
                    return Err(ProbeError::Timeout(timeout, left.join(", ")));
                }
            }
        }
    }
    Ok(())
}
