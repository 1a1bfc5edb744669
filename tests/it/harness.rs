//! Shared test harness: the real servers started by `tests/servers.sh`, unique
//! names, topic and bucket creation, producing, reading tables back, and running
//! the daemon as a real process.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deltalake::DeltaTable;
use deltalake::arrow::array::{AsArray, RecordBatch};
use deltalake::arrow::datatypes::{Int32Type, Int64Type};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tributary::config::{Config, RawConfig};
use tributary::record::TopicPartition;

/// Addresses of the servers `tests/servers.sh` started.
pub struct Servers {
    /// The default broker: Apache Kafka.
    pub brokers: String,
    /// Tansu, for the tests kept on it ([`Scenario::on_tansu`]).
    pub tansu: String,
    pub s3: String,
}

pub fn servers() -> Servers {
    let get = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| {
            panic!(
                "{k} is not set: the integration tests need the Kafka and S3 servers that \
                 tests/run.sh starts; run the tests with `tests/run.sh`"
            )
        })
    };
    Servers {
        brokers: get("TRIBUTARY_TEST_BROKERS"),
        tansu: get("TRIBUTARY_TEST_TANSU_BROKERS"),
        s3: get("TRIBUTARY_TEST_S3_ENDPOINT"),
    }
}

/// A name no other test (or earlier run against the same servers) uses.
/// Commit retries for tests that call the commit engine directly: ten of
/// each, with short backoffs.
pub fn policy() -> tributary::sink::commit::RetryPolicy {
    tributary::sink::commit::RetryPolicy {
        max_conflict_retries: 10,
        max_replans: 10,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
    }
}

/// What a commit wrote, as the tests compare it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    pub files: u64,
    pub bytes: u64,
}

/// An append the tests commit: files already uploaded, and the offsets they
/// account for.
#[derive(Debug, Clone)]
pub struct CommitRequest {
    pub adds: Vec<deltalake::kernel::Add>,
    pub partitions: Vec<tributary::sink::commit::PartitionCommit>,
}

/// An append of `req` through the commit engine: its outcome and report.
pub async fn commit(
    t: &mut deltalake::DeltaTable,
    log: &tributary::sink::commit::TableLog,
    app_id: &str,
    req: &CommitRequest,
    policy: tributary::sink::commit::RetryPolicy,
    cancelled: &(dyn Fn() -> bool + Send + Sync),
) -> Result<
    (
        tributary::sink::commit::CommitOutcome,
        tributary::sink::commit::CommitReport,
    ),
    tributary::sink::commit::CommitError,
> {
    let r = tributary::sink::commit::Commit::new(t, log, app_id, policy)
        .with_partitions(req.partitions.clone())
        .with_files(req.adds.clone())
        .execute(cancelled)
        .await?;
    Ok((r.outcome.clone(), r))
}

/// An upsert window through the commit engine: its outcome, report and
/// what it wrote.
pub async fn apply(
    t: &mut deltalake::DeltaTable,
    log: &tributary::sink::commit::TableLog,
    app_id: &str,
    w: &tributary::sink::upsert::UpsertWindow,
    policy: tributary::sink::commit::RetryPolicy,
    cancelled: &(dyn Fn() -> bool + Send + Sync),
) -> Result<
    (
        tributary::sink::commit::CommitOutcome,
        tributary::sink::commit::CommitReport,
        Written,
    ),
    tributary::sink::commit::CommitError,
> {
    let r = tributary::sink::commit::Commit::new(t, log, app_id, policy)
        .with_upsert(w.clone())
        .execute(cancelled)
        .await?;
    let written = Written {
        files: r.files,
        bytes: r.bytes,
    };
    Ok((r.outcome.clone(), r, written))
}

pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000;
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Poll `f` until it returns `Some`, or panic with `what` after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Kafka client config for `brokers`; with `tls_ca`, over TLS trusting that CA.
pub fn kafka_client(brokers: &str, tls_ca: Option<&Path>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    if let Some(ca) = tls_ca {
        c.set("security.protocol", "SSL")
            .set("ssl.ca.location", ca.display().to_string());
    }
    c
}

pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    create_topic_via(&kafka_client(brokers, None), topic, partitions).await
}

/// Grow `s.topic` to `partitions` partitions (Tansu cannot).
pub async fn grow_topic(s: &Scenario, partitions: usize) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        kafka_client(&s.servers.brokers, None).create().unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin
        .create_partitions(&[NewPartitions::new(&s.topic, partitions)], &opts)
        .await
        .unwrap()
    {
        r.unwrap();
    }
}

/// Create a topic through the client config `client`, and wait for its metadata.
pub async fn create_topic_via(client: &ClientConfig, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = client.create().expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create_topics");
    for r in results {
        r.expect("topic created");
    }
    let consumer: BaseConsumer = client.create().unwrap();
    let topic_owned = topic.to_owned();
    eventually(Duration::from_secs(20), "topic metadata", || {
        let ok = consumer
            .fetch_metadata(Some(&topic_owned), Duration::from_secs(2))
            .ok()
            .is_some_and(|m| {
                m.topics()
                    .iter()
                    .any(|t| t.name() == topic_owned && t.partitions().len() == partitions as usize)
            });
        async move { ok.then_some(()) }
    })
    .await;
}

/// Create a bucket on the S3 server with a plain HTTP PUT (moto does not check
/// signatures).
pub fn create_bucket(endpoint: &str, bucket: &str) {
    let hostport = endpoint.trim_start_matches("http://");
    let mut s = TcpStream::connect(hostport).expect("connect to S3 server");
    write!(
        s,
        "PUT /{bucket} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "bucket creation failed: {resp}"
    );
}

pub fn producer(brokers: &str) -> FutureProducer {
    producer_via(kafka_client(brokers, None))
}

/// A producer from the client config `client`.
pub fn producer_via(mut client: ClientConfig) -> FutureProducer {
    client
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer")
}

/// Produce `(partition, payload)` records; returns the offsets per partition in order.
/// Records with explicit Kafka keys, one at a time in order; `None` values are
/// tombstones. Each partition's offsets.
pub async fn produce_keyed<B: AsRef<[u8]>>(
    s: &Scenario,
    records: &[(i32, &str, Option<B>)],
) -> BTreeMap<i32, Vec<i64>> {
    let producer = producer(&s.servers.brokers);
    let mut out: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (p, key, value) in records {
        let mut r = FutureRecord::<str, [u8]>::to(&s.topic)
            .partition(*p)
            .key(key);
        if let Some(v) = value {
            r = r.payload(v.as_ref());
        }
        let d = producer
            .send(r, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        out.entry(d.partition).or_default().push(d.offset);
    }
    out
}

pub async fn produce<B: AsRef<[u8]>>(
    producer: &FutureProducer,
    topic: &str,
    records: impl IntoIterator<Item = (i32, B)>,
) -> BTreeMap<i32, Vec<i64>> {
    let records: Vec<(i32, String, B)> = records
        .into_iter()
        .enumerate()
        .map(|(i, (p, payload))| (p, format!("k{i}"), payload))
        .collect();
    let mut out: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for batch in records.chunks(500) {
        let mut futures: Vec<_> = batch
            .iter()
            .map(|(p, key, payload)| {
                producer.send(
                    FutureRecord::to(topic)
                        .partition(*p)
                        .key(key)
                        .payload(payload.as_ref()),
                    Duration::from_secs(30),
                )
            })
            .collect();
        for (p, o) in drain(&mut futures).await {
            out.entry(p).or_default().push(o);
        }
    }
    out
}

async fn drain<F>(futures: &mut Vec<F>) -> Vec<(i32, i64)>
where
    F: std::future::Future<
            Output = Result<
                rdkafka::producer::future_producer::Delivery,
                (rdkafka::error::KafkaError, rdkafka::message::OwnedMessage),
            >,
        >,
{
    let results = futures::future::join_all(futures.drain(..)).await;
    results
        .into_iter()
        .map(|r| {
            let d = r.map_err(|(e, _)| e).expect("delivery");
            (d.partition, d.offset)
        })
        .collect()
}

/// A JSON event for the demo schema.
pub fn event(i: u64) -> String {
    tributary::ops::demo::sample_event(i)
}

/// The path of the demo record schema.
pub fn demo_schema_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/demo_events.json")
}

/// A test's Kafka topic, S3 bucket and table.
pub struct Scenario {
    pub servers: Servers,
    pub topic: String,
    pub bucket: String,
    pub app_id: String,
    pub dir: tempfile::TempDir,
}

/// Parse and validate a config text (no environment).
pub fn parse_config(text: &str) -> Config {
    RawConfig::parse(text, None, &|_| None)
        .expect("config parses")
        .validate()
        .expect("config valid")
}

/// Send the library's logs to the test's captured output (shown when it fails).
pub fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = std::env::var("RUST_LOG")
            .ok()
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| "warn,tributary=info".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    });
}

impl Scenario {
    pub async fn new(name: &str, partitions: i32) -> Self {
        Self::with_servers(servers(), name, partitions).await
    }

    /// A scenario whose broker is Tansu rather than Apache Kafka.
    pub async fn on_tansu(name: &str, partitions: i32) -> Self {
        let mut servers = servers();
        servers.brokers = servers.tansu.clone();
        Self::with_servers(servers, name, partitions).await
    }

    async fn with_servers(servers: Servers, name: &str, partitions: i32) -> Self {
        init_logs();
        let topic = unique(name);
        let bucket = unique("b").to_lowercase();
        create_topic(&servers.brokers, &topic, partitions).await;
        create_bucket(&servers.s3, &bucket);
        Self {
            servers,
            topic,
            bucket,
            app_id: unique("app"),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn table_uri(&self) -> String {
        format!("s3://{}/events", self.bucket)
    }

    /// The config as TOML; `extra` is appended (e.g. a `[flush]` section).
    pub fn config_toml(&self, extra: &str) -> String {
        format!(
            r#"
app_id = "{app_id}"

[kafka]
brokers = "{brokers}"
topics = ["{topic}"]
auto_offset_reset = "earliest"

[kafka.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"

[table]
uri = "{uri}"
schema_file = "{schema}"
compression = "zstd(1)"

[table.metadata_columns]
topic = "_topic"
partition = "_partition"
offset = "_offset"
timestamp = "_timestamp"
key = "_key"
headers = "_headers"

[storage]
endpoint = "{s3}"
region = "us-east-1"
allow_http = true
path_style = true
access_key_id = "test"
secret_access_key = "test"

{extra}
"#,
            app_id = self.app_id,
            brokers = self.servers.brokers,
            topic = self.topic,
            uri = self.table_uri(),
            schema = demo_schema_path().display(),
            s3 = self.servers.s3,
        )
    }

    /// A proxy in front of the scenario's S3 server, to cut, refuse or count its
    /// requests; [`Self::config_toml_via`] points a config at it.
    pub async fn storage_proxy(&self) -> Outage {
        Outage::start(self.servers.s3.trim_start_matches("http://")).await
    }

    /// [`Self::config_toml`] with storage reached through `proxy`.
    pub fn config_toml_via(&self, proxy: &Outage, extra: &str) -> String {
        self.config_toml(extra)
            .replace(&self.servers.s3, &format!("http://{}", proxy.addr))
    }

    pub fn config(&self, extra: &str) -> Config {
        parse_config(&self.config_toml(extra))
    }

    /// A config for a registry `format` (no schema file: the table comes from the
    /// registry at `registry_url`); `extra` as for [`Self::config_toml`].
    pub fn registry_config(&self, format: &str, registry_url: &str, extra: &str) -> Config {
        let text = self
            .config_toml(&format!(
                "[decode]\nformat = \"{format}\"\n\n[schema_registry]\nurl = \"{registry_url}\"\n\n{extra}"
            ))
            .replace(
                &format!("schema_file = \"{}\"\n", demo_schema_path().display()),
                "",
            );
        parse_config(&text)
    }

    /// `text` with `other` subscribed besides the scenario's topic.
    pub fn also_subscribe(&self, text: &str, other: &str) -> String {
        text.replace(
            &format!("topics = [\"{}\"]", self.topic),
            &format!("topics = [\"{}\", \"{other}\"]", self.topic),
        )
    }

    pub fn write_config(&self, extra: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{}.toml", unique("cfg")));
        std::fs::write(&path, self.config_toml(extra)).unwrap();
        path
    }

    pub async fn table(&self) -> Option<DeltaTable> {
        let cfg = self.config("");
        tributary::sink::table::load(&cfg.table.uri, &cfg.storage)
            .await
            .expect("load table")
    }

    /// Stored txn versions for partitions `0..n`.
    pub async fn stored_offsets(&self, n: i32) -> BTreeMap<i32, Option<i64>> {
        let Some(t) = self.table().await else {
            return (0..n).map(|p| (p, None)).collect();
        };
        let tps: Vec<TopicPartition> = (0..n)
            .map(|p| TopicPartition::new(self.topic.as_str(), p))
            .collect();
        let stored = tributary::sink::table::stored_offsets(&t, &self.app_id, &tps)
            .await
            .unwrap();
        (0..n).map(|p| (p, stored[&tps[p as usize]])).collect()
    }

    /// The operation of every commit, newest first.
    pub async fn operations(&self) -> Vec<String> {
        use futures::StreamExt;
        let t = self.table().await.expect("table exists");
        let mut h = t.history(None);
        let mut ops = Vec::new();
        while let Some(Ok(c)) = h.next().await {
            ops.push(c.operation.unwrap_or_default());
        }
        ops
    }

    /// The table's version, once it exists.
    pub async fn version(&self) -> Option<u64> {
        self.table().await.and_then(|t| t.version())
    }

    /// Wait until the table reaches version 2 (created, then two commits), so a
    /// fault injected next lands mid-stream; returns the rows committed by then.
    pub async fn rows_after_first_commits(&self) -> usize {
        eventually(Duration::from_secs(90), "first commits", || async {
            (self.version().await >= Some(2)).then_some(())
        })
        .await;
        self.rows().await.len()
    }

    /// Wait up to `deadline` until the offsets stored for partitions `0..partitions`
    /// reach the ends of what was `produced`.
    pub async fn wait_caught_up(
        &self,
        produced: &BTreeMap<i32, Vec<i64>>,
        partitions: i32,
        deadline: Duration,
    ) {
        let last = last_offsets(produced);
        eventually(
            deadline,
            "table offsets to reach the produced ends",
            || async { (self.stored_offsets(partitions).await == last).then_some(()) },
        )
        .await;
    }

    /// Every (partition, offset) row of the table at `uri` (none while it does not
    /// exist), e.g. a `{topic}` route's table.
    pub async fn rows_at(&self, uri: &str) -> Vec<(i32, i64)> {
        let cfg = self.config("");
        let url = tributary::config::parse_table_uri(uri).unwrap();
        match tributary::sink::table::load(&url, &cfg.storage)
            .await
            .unwrap()
        {
            Some(t) => query_rows(&t).await,
            None => Vec::new(),
        }
    }

    /// Every (partition, offset) row in the table.
    pub async fn rows(&self) -> Vec<(i32, i64)> {
        let Some(t) = self.table().await else {
            return Vec::new();
        };
        query_rows(&t).await
    }
}

pub async fn query(t: &DeltaTable, sql: &str) -> Vec<RecordBatch> {
    tributary::sink::table::query(t, sql).await.unwrap()
}

pub async fn query_rows(t: &DeltaTable) -> Vec<(i32, i64)> {
    let batches = query(t, "SELECT _partition, _offset FROM t").await;
    let mut rows = Vec::new();
    for b in batches {
        let p = b.column(0).as_primitive::<Int32Type>();
        let o = b.column(1).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            rows.push((p.value(i), o.value(i)));
        }
    }
    rows.sort_unstable();
    rows
}

/// Lost and duplicated (partition, offset) pairs of `rows` against `expected`.
pub fn diff(rows: &[(i32, i64)], expected: &BTreeMap<i32, Vec<i64>>) -> (usize, usize) {
    let mut counts: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    for r in rows {
        *counts.entry(*r).or_default() += 1;
    }
    let duplicated = counts.values().filter(|c| **c > 1).map(|c| c - 1).sum();
    let lost = expected
        .iter()
        .flat_map(|(p, offs)| offs.iter().map(move |o| (*p, *o)))
        .filter(|k| !counts.contains_key(k))
        .count();
    (lost, duplicated)
}

/// The `tributary` binary running `ingest`.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(config: &Path, log_dir: &Path) -> Self {
        let log = log_dir.join(format!("{}.log", unique("daemon")));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(["ingest", "--config"])
            .arg(config)
            .env("RUST_LOG", "")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn tributary");
        Self { child, log }
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and assert a clean exit within 60 s (showing the log otherwise).
    pub async fn stop_cleanly(&mut self) {
        let status = self.terminate(Duration::from_secs(60)).await;
        assert!(
            status.success(),
            "daemon exit {status:?}; log:\n{}",
            self.log_text()
        );
    }

    /// SIGTERM, then wait for the exit status.
    pub async fn terminate(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let child = &mut self.child;
        eventually(deadline, "daemon exit after SIGTERM", || {
            let r = child.try_wait().unwrap();
            async move { r }
        })
        .await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!(
                "---- daemon pid {} log (last {} lines) ----",
                self.child.id(),
                tail.len()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Wait until the daemon's log contains `needle`, failing at once if it exits.
pub async fn log_shows(daemon: &mut Daemon, needle: &str, deadline: Duration) {
    let t0 = Instant::now();
    loop {
        if daemon.log_text().contains(needle) {
            return;
        }
        if let Some(status) = daemon.child.try_wait().unwrap() {
            panic!(
                "daemon exited ({status}) before logging {needle:?}:\n{}",
                daemon.log_text()
            );
        }
        assert!(
            t0.elapsed() < deadline,
            "no {needle:?} in the log within {deadline:?}:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait up to `deadline` for the daemon to exit on its own; its status and log.
pub async fn exits_within(
    daemon: &mut Daemon,
    deadline: Duration,
) -> (std::process::ExitStatus, String) {
    let child = &mut daemon.child;
    let status = eventually(deadline, "the daemon to stop by itself", || {
        let r = child.try_wait().unwrap();
        async move { r }
    })
    .await;
    (status, daemon.log_text())
}

/// A background producer writing events round-robin over `partitions` in small
/// batches, so a daemon sees a steady stream; `finish()` returns the offsets.
pub struct BackgroundProducer {
    handle: tokio::task::JoinHandle<BTreeMap<i32, Vec<i64>>>,
}

impl BackgroundProducer {
    pub fn start(brokers: &str, topic: &str, partitions: i32, total: u64, per_batch: u64) -> Self {
        let producer = producer(brokers);
        let topic = topic.to_owned();
        let handle = tokio::spawn(async move {
            let mut all: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
            let mut i = 0u64;
            while i < total {
                let n = per_batch.min(total - i);
                let batch: Vec<(i32, String)> = (i..i + n)
                    .map(|j| ((j % partitions as u64) as i32, event(j)))
                    .collect();
                for (p, offs) in produce(&producer, &topic, batch).await {
                    all.entry(p).or_default().extend(offs);
                }
                i += n;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            all
        });
        Self { handle }
    }

    pub async fn finish(self) -> BTreeMap<i32, Vec<i64>> {
        self.handle.await.unwrap()
    }
}

/// Last offsets per partition.
pub fn last_offsets(produced: &BTreeMap<i32, Vec<i64>>) -> BTreeMap<i32, Option<i64>> {
    produced
        .iter()
        .map(|(p, o)| (*p, o.iter().max().copied()))
        .collect()
}

/// A plain HTTP/1.1 GET; returns the status code and body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A TCP proxy on 127.0.0.1 in front of a server, which a test can take down (new
/// connections are cut at once, open ones are dropped: the server is gone, as far
/// as clients can tell) and bring back.
pub struct Outage {
    pub addr: std::net::SocketAddr,
    /// Object GETs of `_delta_log/` files that went through the proxy.
    pub log_reads: std::sync::Arc<AtomicU64>,
    /// LIST requests (pages) under a `_delta_log/` prefix.
    pub log_lists: std::sync::Arc<AtomicU64>,
    /// Requests whose path contains this are refused (the connection is cut).
    refuse: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// Requests whose path contains this are answered 403 AccessDenied, as S3
    /// answers refused credentials.
    deny: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Outage {
    /// Proxy to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        use std::sync::atomic::AtomicBool;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = std::sync::Arc::new(AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let upstream = upstream.to_owned();
        let (d, c) = (down.clone(), conns.clone());
        let log_reads = std::sync::Arc::new(AtomicU64::new(0));
        let reads = log_reads.clone();
        let log_lists = std::sync::Arc::new(AtomicU64::new(0));
        let lists = log_lists.clone();
        let refuse = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let refusing = refuse.clone();
        let deny = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let denying = deny.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if d.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection cut
                }
                let upstream = upstream.clone();
                let counts = (reads.clone(), lists.clone());
                let refusing = refusing.clone();
                let denying = denying.clone();
                let h = tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    if let Ok(server) = tokio::net::TcpStream::connect(&upstream).await {
                        let (mut from_server, mut to_server) = server.into_split();
                        let (mut from_client, mut to_client) = client.split();
                        let up = count_log_reads(
                            &mut from_client,
                            &mut to_server,
                            &counts,
                            &refusing,
                            &denying,
                        );
                        let down = tokio::io::copy(&mut from_server, &mut to_client);
                        // Whichever side ends (or a refused request) ends the connection.
                        let denied = tokio::select! {
                            r = up => matches!(r, Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied),
                            _ = down => false,
                        };
                        if denied {
                            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
                            let response = format!(
                                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = to_client.write_all(response.as_bytes()).await;
                            let _ = to_client.shutdown().await;
                        }
                    }
                });
                c.lock().unwrap().push(h);
            }
        });
        Self {
            addr,
            log_reads,
            log_lists,
            refuse,
            deny,
            down,
            conns,
            task,
        }
    }

    /// Cut every request whose path contains `pattern` (None: let all through).
    pub fn refuse(&self, pattern: Option<&str>) {
        *self.refuse.lock().unwrap() = pattern.map(str::to_owned);
    }

    /// Answer every request whose path contains `pattern` with 403 AccessDenied,
    /// as S3 does for refused credentials (None: let all through).
    pub fn deny(&self, pattern: Option<&str>) {
        *self.deny.lock().unwrap() = pattern.map(str::to_owned);
    }

    /// The number of `_delta_log/` object reads so far.
    pub fn log_reads(&self) -> u64 {
        self.log_reads.load(Ordering::SeqCst)
    }

    /// The number of LIST pages requested under a `_delta_log/` prefix so far.
    pub fn log_lists(&self) -> u64 {
        self.log_lists.load(Ordering::SeqCst)
    }

    /// The server goes away.
    pub fn take_down(&self) {
        self.down.store(true, Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    /// The server is back.
    pub fn bring_up(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

/// Copy an HTTP/1.1 client's bytes to the server, counting the requests that GET
/// an object under `_delta_log/` and, apart, the LISTs of that prefix (URL-encoded
/// in the query). Request lines are found at the start of the stream or after CRLF; a
/// line split across reads is caught by keeping the last bytes of each read.
async fn count_log_reads(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    (reads, lists): &(std::sync::Arc<AtomicU64>, std::sync::Arc<AtomicU64>),
    refuse: &std::sync::Mutex<Option<String>>,
    deny: &std::sync::Mutex<Option<String>>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    let mut carry: Vec<u8> = b"\r\n".to_vec();
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        let mut scan = std::mem::take(&mut carry);
        scan.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&scan);
        let mut rest = text.as_ref();
        const METHODS: [&str; 5] = [
            "\r\nGET ",
            "\r\nPUT ",
            "\r\nPOST ",
            "\r\nHEAD ",
            "\r\nDELETE ",
        ];
        while let Some(i) = METHODS.iter().filter_map(|m| rest.find(m)).min() {
            let line = &rest[i + 2..];
            let Some(end) = line
                .find(' ')
                .and_then(|s| line[s + 1..].find(' ').map(|e| s + 1 + e))
            else {
                break; // the path is cut off: the carry below holds it
            };
            if let Some(p) = refuse.lock().unwrap().as_deref()
                && line[..end].contains(p)
            {
                return Err(std::io::Error::other("refused by the test proxy"));
            }
            if let Some(p) = deny.lock().unwrap().as_deref()
                && line[..end].contains(p)
            {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "denied by the test proxy",
                ));
            }
            if line.starts_with("GET ") && line[..end].contains("/_delta_log/") {
                reads.fetch_add(1, Ordering::SeqCst);
            }
            if line.starts_with("GET ")
                && line[..end].contains("list-type")
                && line[..end].contains("_delta_log%2F")
            {
                lists.fetch_add(1, Ordering::SeqCst);
            }
            rest = &line[end..];
        }
        to.write_all(&buf[..n]).await?;
        // Keep enough to see a request line that straddles this read and the next.
        let keep = rest.len().min(4096);
        carry = rest.as_bytes()[rest.len() - keep..].to_vec();
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A free port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait up to `deadline` until something accepts connections on 127.0.0.1:`port`.
pub async fn wait_listening(port: u16, deadline: Duration, what: &str) {
    eventually(deadline, what, || async move {
        TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    })
    .await;
}

/// Resident set size of a process, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Every offset the topic holds in each partition, up to the last offset the
/// producer had acknowledged there. Without idempotence a producer retry across a
/// broker restart can store a batch twice, so the log, not the acknowledgements, is
/// what the table must match.
pub async fn topic_offsets(
    brokers: &str,
    topic: &str,
    last: &BTreeMap<i32, Option<i64>>,
) -> BTreeMap<i32, Vec<i64>> {
    use rdkafka::{Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader consumer");
    let mut tpl = TopicPartitionList::new();
    for p in last.keys() {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let last = last.clone();
    tokio::task::spawn_blocking(move || {
        let mut seen: BTreeMap<i32, Vec<i64>> = last.keys().map(|p| (*p, Vec::new())).collect();
        let done = |seen: &BTreeMap<i32, Vec<i64>>| {
            last.iter().all(|(p, l)| match l {
                None => true,
                Some(l) => seen[p].last().is_some_and(|o| o >= l),
            })
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(&seen) {
            assert!(
                Instant::now() < deadline,
                "reading the topic back timed out"
            );
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                let m = m.expect("read the topic");
                if last[&m.partition()].is_some_and(|l| m.offset() <= l) {
                    seen.get_mut(&m.partition()).unwrap().push(m.offset());
                }
            }
        }
        seen
    })
    .await
    .unwrap()
}

/// A Tansu broker of the test's own, storing its log in a bucket of the S3 server so
/// that it survives a restart (the shared broker keeps it in memory).
pub struct OwnBroker {
    bin: String,
    port: u16,
    advertised: u16,
    bucket: String,
    s3: String,
    log: PathBuf,
    child: std::process::Child,
}

impl OwnBroker {
    fn spawn(
        bin: &str,
        port: u16,
        advertised: u16,
        bucket: &str,
        s3: &str,
        log: &Path,
    ) -> std::process::Child {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        std::process::Command::new(bin)
            .args(["broker", "--listener-url"])
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{advertised}"))
            .arg("--storage-engine")
            .arg(format!("s3://{bucket}/"))
            .env("AWS_ENDPOINT", s3)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_REGION", "us-east-1")
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start tansu")
    }

    /// Start on a free port; clients are told to connect to `advertised` (a proxy
    /// in front of it) when given, else to the broker itself.
    pub async fn start(s3: &str, dir: &Path, advertised: Option<u16>) -> Self {
        let bin = std::env::var("TRIBUTARY_TEST_TANSU_BIN")
            .expect("TRIBUTARY_TEST_TANSU_BIN is set by tests/servers.sh; run tests/run.sh");
        let bucket = unique("tansu").to_lowercase();
        create_bucket(s3, &bucket);
        let port = free_port();
        let advertised = advertised.unwrap_or(port);
        let log = dir.join("tansu.log");
        let child = Self::spawn(&bin, port, advertised, &bucket, s3, &log);
        let b = Self {
            bin,
            port,
            advertised,
            bucket,
            s3: s3.to_owned(),
            log,
            child,
        };
        b.wait_listening().await;
        b
    }

    async fn wait_listening(&self) {
        wait_listening(self.port, Duration::from_secs(30), "broker listening").await;
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub async fn restart(&mut self) {
        self.child = Self::spawn(
            &self.bin,
            self.port,
            self.advertised,
            &self.bucket,
            &self.s3,
            &self.log,
        );
        self.wait_listening().await;
    }

    /// The broker's own address.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private CA and a server certificate for 127.0.0.1 signed by it, made with the
/// openssl CLI: returns the CA certificate (what clients trust) and the server's
/// certificate plus key. (A self-signed certificate marked as a CA would not do:
/// rustls refuses a CA certificate as a server's own.)
pub fn private_ca(dir: &Path) -> (PathBuf, PathBuf) {
    let f = |name: &str| dir.join(name);
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(Stdio::null())
            .status()
            .expect("openssl (installed by .ci/run)");
        assert!(status.success(), "openssl {args:?} failed");
    };
    std::fs::write(
        f("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=tributary test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
    let pem = std::fs::read_to_string(f("server.crt")).unwrap()
        + &std::fs::read_to_string(f("server.key")).unwrap();
    std::fs::write(f("server.pem"), pem).unwrap();
    (f("ca.pem"), f("server.pem"))
}

/// socat terminating TLS on `port` in front of a plaintext listener.
pub struct TlsTerminator(std::process::Child);

impl TlsTerminator {
    pub async fn start(port: u16, server_pem: &std::path::Path, upstream: &str) -> Self {
        let child = std::process::Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},verify=0",
                server_pem.display()
            ))
            .arg(format!("TCP:{upstream}"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("socat (installed by .ci/run)");
        wait_listening(port, Duration::from_secs(10), "TLS listener").await;
        Self(child)
    }
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
