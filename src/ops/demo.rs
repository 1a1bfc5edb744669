//! `tributary demo`: the whole pipeline with no external service.
//!
//! An in-process Kafka mock cluster (librdkafka's, via `rdkafka::mocking`) holds a
//! topic; a generator produces sample JSON events into it, a few of them malformed
//! on purpose; the ingest pipeline writes them to a Delta table in a local
//! directory; then the table is read back with DataFusion and checked: every good
//! event exactly once, every malformed one counted as rejected, and the stored
//! offsets equal to the last offset of each partition.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::arrow::array::{AsArray, RecordBatch};
use deltalake::arrow::datatypes::Int64Type;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::config::{Config, RawConfig};
use crate::pipeline::{self, PipelineError, RunOptions};
use crate::record::TopicPartition;
use crate::sink::table;
use crate::telemetry::stats::PipelineStats;

/// The demo's record schema, also shipped as `schemas/demo_events.json`.
pub const DEMO_SCHEMA: &str = include_str!("../../schemas/demo_events.json");

const TOPIC: &str = "demo-events";
/// librdkafka's mock cluster keeps at most 5 MiB or 100k records per partition and
/// trims older ones; staying well under keeps every produced record readable.
const MAX_RECORDS_PER_PARTITION: u64 = 15_000;

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Events to produce.
    pub records: u64,
    /// Partitions of the topic.
    pub partitions: i32,
    /// One event in this many is malformed (0 for none).
    pub bad_every: u64,
    /// Directory the table is written to (created; must not hold another table).
    pub dir: PathBuf,
    /// Flush window age.
    pub max_age: Duration,
}

/// Errors running the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The options cannot work.
    #[error("{0}")]
    Options(String),
    /// The mock cluster or producer failed.
    #[error("mock kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] Box<PipelineError>),
    /// Reading the table back failed.
    #[error("reading the table back: {0}")]
    Verify(String),
    /// The table directory.
    #[error("table directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Progress, reported about twice a second.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Events produced so far.
    pub produced: u64,
    /// Events to produce.
    pub total: u64,
    /// Records accounted for by committed windows.
    pub accounted: u64,
    /// Rows committed.
    pub rows: u64,
    /// Commits.
    pub commits: u64,
}

/// What the demo found in the table.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// The table.
    pub table_uri: String,
    /// Events produced, and how many of them were malformed.
    pub produced: u64,
    /// Malformed events produced.
    pub produced_bad: u64,
    /// Rows in the table.
    pub rows: u64,
    /// Distinct (partition, offset) pairs among the rows.
    pub distinct: u64,
    /// Records the pipeline rejected.
    pub rejected: u64,
    /// Data files in the table.
    pub files: usize,
    /// Table version.
    pub version: i64,
    /// Per partition: (offset stored in the table, last offset produced).
    pub offsets: BTreeMap<i32, (Option<i64>, i64)>,
    /// Wall time of the ingest phase.
    pub elapsed: Duration,
    /// Whether every good event is in the table exactly once, every bad one was
    /// rejected, and each stored offset is the partition's last offset.
    pub exactly_once: bool,
}

/// The demo's configuration, written as TOML and loaded through the same parsing
/// and validation as any config file (the schema goes to a file next to the table
/// directory, as `table.schema_file`).
fn demo_config(
    brokers: String,
    dir: &Path,
    partitions: i32,
    max_age: Duration,
) -> Result<Config, DemoError> {
    let schema_file = dir.with_extension("schema.json");
    std::fs::write(&schema_file, DEMO_SCHEMA).map_err(|source| DemoError::Dir {
        path: schema_file.clone(),
        source,
    })?;
    let toml_str = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let text = format!(
        r#"app_id = "tributary-demo"

[kafka]
brokers = {brokers}
group_id = "tributary-demo"
topics = ["{TOPIC}"]
auto_offset_reset = "earliest"

[kafka.properties]
"session.timeout.ms" = "6000"

[table]
uri = {uri}
schema_file = {schema_file}
compression = "zstd(1)"

[table.metadata_columns]
topic = "_kafka_topic"
partition = "_kafka_partition"
offset = "_kafka_offset"
timestamp = "_kafka_timestamp"
key = "_kafka_key"

[flush]
max_rows = {max_rows}
max_bytes = "64 MiB"
max_age = "{max_age}ms"

[commit]
max_backoff = "5s"
"#,
        brokers = toml_str(&brokers),
        uri = toml_str(&dir.display().to_string()),
        schema_file = toml_str(&schema_file.display().to_string()),
        max_rows = (partitions as u64 * MAX_RECORDS_PER_PARTITION / 4).max(1000),
        max_age = max_age.as_millis(),
    );
    let no_env = |_: &str| None;
    let cfg = RawConfig::parse(&text, None, &no_env)
        .and_then(RawConfig::validate)
        .map_err(|e| DemoError::Options(e.to_string()))?;
    Ok(cfg)
}

/// A sample event; deterministic in `i`.
pub fn sample_event(i: u64) -> String {
    const KINDS: [&str; 4] = ["view", "click", "add_to_cart", "purchase"];
    const COUNTRIES: [&str; 5] = ["DE", "US", "BR", "JP", "IN"];
    let secs = 1_735_689_600 + i; // 2025-01-01T00:00:00Z + i seconds
    let ts = chrono_like_rfc3339(secs);
    format!(
        r#"{{"event_id":{i},"user_id":"user-{}","kind":"{}","amount":{}.{:02},"country":"{}","ts":"{ts}","tags":["t{}","demo"]}}"#,
        i % 997,
        KINDS[(i % 4) as usize],
        i % 500,
        i % 100,
        COUNTRIES[(i % 5) as usize],
        i % 7,
    )
}

/// RFC 3339 for a UTC second count, without a date crate.
fn chrono_like_rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Run the demo; `progress` is called about twice a second while ingesting.
pub async fn run(opts: DemoOptions, progress: impl Fn(Progress)) -> Result<DemoReport, DemoError> {
    let dir = prepare(&opts)?;
    let cluster = MockCluster::new(1)?;
    cluster.create_topic(TOPIC, opts.partitions, 1)?;
    let brokers = cluster.bootstrap_servers();
    let cfg = demo_config(brokers.clone(), &dir, opts.partitions, opts.max_age)?;
    let stats = Arc::new(PipelineStats::default());
    let (total, partitions) = (opts.records, opts.partitions);
    let produced = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let producer_thread = produce(&brokers, &opts, produced.clone())?;
    // Stop the pipeline once every partition's last offset is committed.
    let start = Instant::now();
    let expected_last: BTreeMap<i32, i64> = (0..partitions)
        .map(|p| {
            let n = (total / partitions as u64) + u64::from((p as u64) < total % partitions as u64);
            (p, n as i64 - 1)
        })
        .collect();
    let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel();
    let done = caught_up(stats.clone(), expected_last, produced, total, progress_tx);
    let run = pipeline::run(cfg.clone(), stats.clone(), RunOptions::default(), done);
    tokio::pin!(run);
    let summary = loop {
        tokio::select! {
            r = &mut run => break r.map_err(Box::new)?,
            Some(p) = progress_rx.recv() => progress(p),
        }
    };
    while let Ok(p) = progress_rx.try_recv() {
        progress(p);
    }
    let elapsed = start.elapsed();
    let (produced_bad, produced_last) = producer_thread
        .join()
        .map_err(|_| DemoError::Options("producer thread panicked".into()))??;
    drop(cluster);
    verify(
        &cfg,
        total,
        produced_bad,
        &produced_last,
        summary.rejected,
        elapsed,
    )
    .await
}

/// Check the options and make the (empty) table directory.
fn prepare(opts: &DemoOptions) -> Result<PathBuf, DemoError> {
    if opts.partitions < 1 || opts.partitions > 64 {
        return Err(DemoError::Options(
            "partitions must be between 1 and 64".into(),
        ));
    }
    if opts.records == 0 {
        return Err(DemoError::Options("records must be at least 1".into()));
    }
    let per_partition = opts.records.div_ceil(opts.partitions as u64);
    if per_partition > MAX_RECORDS_PER_PARTITION {
        return Err(DemoError::Options(format!(
            "{} records over {} partitions is {per_partition} per partition; the in-process mock \
             broker trims partitions beyond {MAX_RECORDS_PER_PARTITION}: add partitions or produce fewer",
            opts.records, opts.partitions
        )));
    }
    std::fs::create_dir_all(&opts.dir).map_err(|source| DemoError::Dir {
        path: opts.dir.clone(),
        source,
    })?;
    let dir = std::fs::canonicalize(&opts.dir).map_err(|source| DemoError::Dir {
        path: opts.dir.clone(),
        source,
    })?;
    if dir.join("_delta_log").exists() {
        return Err(DemoError::Options(format!(
            "{} already holds a Delta table; pass an empty --dir",
            dir.display()
        )));
    }

    Ok(dir)
}

/// What the producer thread returns: malformed events sent, last offset per partition.
type Produced = Result<(u64, BTreeMap<i32, i64>), rdkafka::error::KafkaError>;

/// Produce the demo's events on a thread of their own, round-robin over the
/// partitions so the expected offsets of every event are known.
fn produce(
    brokers: &str,
    opts: &DemoOptions,
    produced_in_thread: Arc<std::sync::atomic::AtomicU64>,
) -> Result<std::thread::JoinHandle<Produced>, DemoError> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()?;
    let total = opts.records;
    let partitions = opts.partitions;
    let bad_every = opts.bad_every;
    Ok(std::thread::spawn(move || -> Produced {
        let mut bad = 0;
        let mut last = BTreeMap::new();
        for i in 0..total {
            let p = (i % partitions as u64) as i32;
            let payload = if bad_every > 0 && i % bad_every == bad_every - 1 {
                bad += 1;
                format!(r#"{{"event_id":{i},"user_id":"#) // truncated JSON
            } else {
                sample_event(i)
            };
            let key = format!("user-{}", i % 997);
            loop {
                match producer.send(
                    BaseRecord::to(TOPIC)
                        .partition(p)
                        .key(&key)
                        .payload(&payload),
                ) {
                    Ok(()) => break,
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull,
                        ),
                        _,
                    )) => std::thread::sleep(Duration::from_millis(5)),
                    Err((e, _)) => return Err(e),
                }
            }
            *last.entry(p).or_insert(-1) += 1;
            produced_in_thread.store(i + 1, std::sync::atomic::Ordering::Relaxed);
        }
        producer.flush(Duration::from_secs(30))?;
        Ok((bad, last))
    }))
}

/// Resolves once every partition's last produced offset is committed, sending
/// progress every half second meanwhile.
async fn caught_up(
    watch_stats: Arc<PipelineStats>,
    watch_expected: BTreeMap<i32, i64>,
    watch_produced: Arc<std::sync::atomic::AtomicU64>,
    total: u64,
    progress_tx: tokio::sync::mpsc::UnboundedSender<Progress>,
) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let committed = watch_stats.committed_offsets();
        let _ = progress_tx.send(Progress {
            produced: watch_produced.load(std::sync::atomic::Ordering::Relaxed),
            total,
            accounted: committed.values().map(|o| (*o + 1) as u64).sum(),
            rows: PipelineStats::get(&watch_stats.rows_committed),
            commits: PipelineStats::get(&watch_stats.commits),
        });
        let caught_up = watch_expected.iter().all(|(p, last)| {
            *last < 0 || committed.get(&TopicPartition::new(TOPIC, *p)) == Some(last)
        });
        if caught_up {
            break;
        }
    }
}

async fn verify(
    cfg: &Config,
    produced: u64,
    produced_bad: u64,
    produced_last: &BTreeMap<i32, i64>,
    rejected: u64,
    elapsed: Duration,
) -> Result<DemoReport, DemoError> {
    let verr = |e: &dyn std::fmt::Display| DemoError::Verify(e.to_string());
    let t = table::load(&cfg.table.uri, &cfg.storage)
        .await
        .map_err(|e| verr(&e))?
        .ok_or_else(|| DemoError::Verify("the table was not created".into()))?;
    let batches: Vec<RecordBatch> = table::query(
        &t,
        "SELECT count(*) AS n, \
                count(DISTINCT (CAST(_kafka_partition AS BIGINT) * 1000000000 + _kafka_offset)) AS d \
         FROM t",
    )
    .await
    .map_err(|e| verr(&e))?;
    let b = &batches[0];
    let rows = b.column(0).as_primitive::<Int64Type>().value(0) as u64;
    let distinct = b.column(1).as_primitive::<Int64Type>().value(0) as u64;
    let tps: Vec<TopicPartition> = produced_last
        .keys()
        .map(|p| TopicPartition::new(TOPIC, *p))
        .collect();
    let stored = table::stored_offsets(&t, &cfg.app_id, &tps)
        .await
        .map_err(|e| verr(&e))?;
    let offsets: BTreeMap<i32, (Option<i64>, i64)> = produced_last
        .iter()
        .map(|(p, last)| {
            let s = stored
                .get(&TopicPartition::new(TOPIC, *p))
                .copied()
                .flatten();
            (*p, (s, *last))
        })
        .collect();
    let files = t.snapshot().map_err(|e| verr(&e))?.log_data().num_files();
    let good = produced - produced_bad;
    let exactly_once = rows == good
        && distinct == good
        && rejected == produced_bad
        && offsets.values().all(|(s, last)| *s == Some(*last));
    Ok(DemoReport {
        table_uri: cfg.table.uri.to_string(),
        produced,
        produced_bad,
        rows,
        distinct,
        rejected,
        files,
        version: t.version().map_or(-1, |v| v as i64),
        offsets,
        elapsed,
        exactly_once,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_goes_through_the_same_validation_as_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let table = dir.path().join("table");
        let cfg = demo_config("127.0.0.1:9092".into(), &table, 4, Duration::from_secs(2)).unwrap();
        assert_eq!(cfg.kafka.group_id, "tributary-demo");
        assert_eq!(cfg.flush.max_age, Duration::from_secs(2));
        assert_eq!(
            cfg.table.metadata_columns.offset.as_deref(),
            Some("_kafka_offset")
        );
        assert!(
            cfg.table.schema.is_some(),
            "schema read from the file written"
        );
        assert!(
            cfg.table.uri.as_str().starts_with("file://"),
            "{}",
            cfg.table.uri
        );
        // A broker list validation refuses is refused for the demo too.
        assert!(demo_config("no-port".into(), &table, 4, Duration::from_secs(2)).is_err());
    }

    #[test]
    fn sample_events_are_valid_json_with_utc_timestamps() {
        let v: serde_json::Value = serde_json::from_str(&sample_event(86_399)).unwrap();
        assert_eq!(v["ts"], "2025-01-01T23:59:59Z");
        let v: serde_json::Value = serde_json::from_str(&sample_event(86_400 * 59)).unwrap();
        assert_eq!(v["ts"], "2025-03-01T00:00:00Z");
    }
}
