//! End-to-end benchmark: pre-fill a topic on a real broker, run the `tributary`
//! daemon from an empty table until it has caught up, and report what it cost.
//!
//! Run it with the servers the tests use (Tansu broker, moto S3 on 127.0.0.1):
//!
//! ```sh
//! benches/e2e.sh                                  # 5 M JSON records, 8 partitions
//! benches/e2e.sh --format avro                    # the same events, Confluent Avro
//! benches/e2e.sh --records 1000000 --partitions 64
//! ```
//!
//! The Avro variant registers `schemas/bench_events.avsc` in the in-process
//! Confluent-compatible registry the tests use (`tests/it/registry.rs`), and the
//! table is created from it.
//!
//! Reported: records/s and MB/s (from the daemon's start to the last commit, and in
//! steady state from the first commit), CPU seconds of the daemon per million
//! records, its peak RSS, commits, files and mean file size, S3 requests per GB
//! ingested (counted in the S3 server's request log), and commit latency p50/p99
//! (from the daemon's own commit log lines). The settings are printed with them.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

#[allow(dead_code)] // the bench uses a part of the tests' registry
#[path = "../tests/it/registry.rs"]
mod registry;
#[path = "common/send.rs"]
mod send;

const BENCH_AVRO: &str = include_str!("../schemas/bench_events.avsc");

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Json,
    Avro,
}

#[derive(Debug)]
struct Args {
    brokers: String,
    s3: String,
    moto_log: Option<PathBuf>,
    records: u64,
    partitions: i32,
    format: Format,
    compression: String,
    extra_config: String,
    kafka_keys: String,
    broker_pid: Option<u32>,
    s3_pid: Option<u32>,
    /// The daemon to run (default: the `tributary` built beside this example), for
    /// comparing two builds on the same servers.
    daemon: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        brokers: String::new(),
        s3: String::new(),
        moto_log: None,
        records: 5_000_000,
        partitions: 8,
        format: Format::Json,
        compression: "zstd(1)".into(),
        extra_config: String::new(),
        kafka_keys: String::new(),
        broker_pid: None,
        s3_pid: None,
        daemon: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--brokers" => a.brokers = value()?,
            "--s3" => a.s3 = value()?,
            "--moto-log" => a.moto_log = Some(value()?.into()),
            "--records" => a.records = value()?.parse().context("--records")?,
            "--partitions" => a.partitions = value()?.parse().context("--partitions")?,
            "--compression" => a.compression = value()?,
            "--format" => {
                a.format = match value()?.as_str() {
                    "json" => Format::Json,
                    "avro" => Format::Avro,
                    other => bail!("--format {other}: expected json or avro"),
                }
            }
            "--config" => a.extra_config = std::fs::read_to_string(value()?)?,
            // A `[kafka]` key (e.g. max_chunk_records = 16384); repeatable.
            "--kafka" => {
                a.kafka_keys.push_str(&value()?);
                a.kafka_keys.push('\n');
            }
            "--broker-pid" => a.broker_pid = Some(value()?.parse()?),
            "--s3-pid" => a.s3_pid = Some(value()?.parse()?),
            "--daemon" => a.daemon = Some(value()?.into()),
            other => bail!(
                "unknown argument {other}; usage: bench --brokers HOST:PORT --s3 URL \
                 [--moto-log FILE] [--records N] [--partitions P] [--format json|avro] [--compression C] \
                 [--config EXTRA.toml] [--kafka 'KEY = VALUE'] [--broker-pid PID] [--s3-pid PID] [--daemon PATH]"
            ),
        }
    }
    if a.brokers.is_empty() || a.s3.is_empty() {
        bail!(
            "--brokers and --s3 are required (benches/e2e.sh starts the servers and passes them)"
        );
    }
    Ok(a)
}

/// One event of `schemas/bench_events.json`: 12 mixed-type fields, about 260 bytes.
fn event(i: u64, out: &mut String) {
    use std::fmt::Write;
    const KINDS: [&str; 4] = ["view", "click", "purchase", "signup"];
    const COUNTRIES: [&str; 6] = ["DE", "US", "FR", "JP", "BR", "IN"];
    const DEVICES: [&str; 3] = ["android", "ios", "web"];
    out.clear();
    let _ = write!(
        out,
        "{{\"event_id\":{i},\"user_id\":\"user-{:06}\",\"session_id\":\"{:016x}\",\"kind\":\"{}\",\
         \"country\":\"{}\",\"device\":\"{}\",\"page\":\"/products/category-{}/item-{}\",\
         \"amount\":{}.{:02},\"score\":{:.6},\"quantity\":{},\"is_mobile\":{},\
         \"ts\":\"2026-11-29T12:{:02}:{:02}.{:06}Z\"}}",
        i % 100_000,
        i.wrapping_mul(2_654_435_761),
        KINDS[(i % 4) as usize],
        COUNTRIES[(i % 6) as usize],
        DEVICES[(i % 3) as usize],
        i % 50,
        i % 10_000,
        i % 1000,
        i % 100,
        (i % 1000) as f64 / 1000.0,
        i % 20,
        i.is_multiple_of(3),
        (i / 60) % 60,
        i % 60,
        i % 1_000_000,
    );
}

/// The same event as Confluent-framed Avro (schema id `id`).
#[allow(deprecated)] // GenericDatumWriter's builder is the new spelling; same bytes
fn avro_event(schema: &apache_avro::Schema, id: u32, i: u64, out: &mut Vec<u8>) {
    use apache_avro::types::Value as Av;
    const KINDS: [&str; 4] = ["view", "click", "purchase", "signup"];
    const COUNTRIES: [&str; 6] = ["DE", "US", "FR", "JP", "BR", "IN"];
    const DEVICES: [&str; 3] = ["android", "ios", "web"];
    let some = |v: Av| Av::Union(1, Box::new(v));
    let s = |v: String| some(Av::String(v));
    let cents = ((i % 1000) * 100 + i % 100) as i64;
    let ts = 1_795_953_600_000_000i64
        + ((i / 60) % 60 * 60 + i % 60) as i64 * 1_000_000
        + (i % 1_000_000) as i64;
    let record = Av::Record(vec![
        ("event_id".into(), Av::Long(i as i64)),
        ("user_id".into(), s(format!("user-{:06}", i % 100_000))),
        (
            "session_id".into(),
            s(format!("{:016x}", i.wrapping_mul(2_654_435_761))),
        ),
        ("kind".into(), s(KINDS[(i % 4) as usize].into())),
        ("country".into(), s(COUNTRIES[(i % 6) as usize].into())),
        ("device".into(), s(DEVICES[(i % 3) as usize].into())),
        (
            "page".into(),
            s(format!("/products/category-{}/item-{}", i % 50, i % 10_000)),
        ),
        (
            "amount".into(),
            some(Av::Decimal(cents.to_be_bytes().to_vec().into())),
        ),
        ("score".into(), some(Av::Double((i % 1000) as f64 / 1000.0))),
        ("quantity".into(), some(Av::Int((i % 20) as i32))),
        ("is_mobile".into(), some(Av::Boolean(i.is_multiple_of(3)))),
        ("ts".into(), some(Av::TimestampMicros(ts))),
    ]);
    out.clear();
    out.push(0);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend(apache_avro::to_avro_datum(schema, record).expect("event matches its schema"));
}

async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?;
    for r in results {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    Ok(())
}

async fn create_bucket(endpoint: &str, bucket: &str) -> anyhow::Result<()> {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "bench",
        ))
        .load()
        .await;
    let client = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    client.create_bucket().bucket(bucket).send().await?;
    Ok(())
}

/// Produce `n` events round-robin over the partitions, as JSON or as Avro with
/// schema id `avro_id`; returns the payload bytes.
fn prefill(
    brokers: &str,
    topic: &str,
    n: u64,
    partitions: i32,
    avro_id: Option<u32>,
) -> anyhow::Result<u64> {
    let avro = apache_avro::Schema::parse_str(BENCH_AVRO)?;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "262144")
        .set("compression.type", "lz4")
        .create()?;
    let mut json = String::with_capacity(320);
    let mut framed = Vec::with_capacity(320);
    let mut bytes = 0u64;
    for i in 0..n {
        let payload: &[u8] = match avro_id {
            None => {
                event(i, &mut json);
                json.as_bytes()
            }
            Some(id) => {
                avro_event(&avro, id, i, &mut framed);
                &framed
            }
        };
        bytes += payload.len() as u64;
        let partition = (i % partitions as u64) as i32;
        let record = BaseRecord::<(), [u8]>::to(topic)
            .partition(partition)
            .payload(payload);
        send::send_waiting(&producer, record)?;
    }
    producer.flush(Duration::from_secs(300))?;
    Ok(bytes)
}

/// Counters read from the daemon's `/metrics`.
fn scrape(addr: &str) -> Option<BTreeMap<String, f64>> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(
        body.lines()
            .filter(|l| l.starts_with("tributary_") && !l.contains('{'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect(),
    )
}

/// (user + system CPU seconds, peak RSS bytes) of a live process.
fn cpu_and_peak_rss(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`; utime and stime are fields 14 and 15 overall.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    // Linux reports these in USER_HZ clock ticks, 100 per second on every
    // mainstream kernel configuration.
    let cpu = ticks / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    (cpu, hwm)
}

/// S3 requests by kind in the server's request log from byte `from` on.
fn s3_requests(log: &Path, from: u64) -> BTreeMap<&'static str, u64> {
    let mut counts = BTreeMap::new();
    let Ok(mut f) = std::fs::File::open(log) else {
        return counts;
    };
    let mut text = String::new();
    let _ = std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(from));
    let _ = f.read_to_string(&mut text);
    for line in text.lines() {
        let Some(req) = line.split('"').nth(1) else {
            continue;
        };
        let mut parts = req.split(' ');
        let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
            continue;
        };
        let kind = match method {
            "PUT" => "PUT",
            "POST" => "POST",
            "HEAD" => "HEAD",
            "DELETE" => "DELETE",
            "GET" if path.contains("list-type") || path.contains("?prefix") => "LIST",
            "GET" => "GET",
            _ => continue,
        };
        *counts.entry(kind).or_default() += 1;
    }
    counts
}

/// `(ms, bytes, files)` of every commit in the daemon's JSON log.
fn commits_from_log(log: &Path) -> Vec<(u64, u64, u64)> {
    let Ok(f) = std::fs::File::open(log) else {
        return Vec::new();
    };
    std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .filter(|v| v["fields"]["message"] == "committed")
        .map(|v| {
            let f = &v["fields"];
            (
                f["ms"].as_u64().unwrap_or(0),
                f["bytes"].as_u64().unwrap_or(0),
                f["files"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Seconds from the first partition assignment to the last commit, from the
/// daemon's log timestamps: the ingest time without the consumer-group join.
fn assigned_to_last_commit(log: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let at = |line: &str| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str()?).ok()
    };
    let assigned = text
        .lines()
        .find(|l| l.contains("\"partitions assigned\""))
        .and_then(at)?;
    let last = text
        .lines()
        .rev()
        .find(|l| l.contains("\"message\":\"committed\""))
        .and_then(at)?;
    Some((last - assigned).num_milliseconds() as f64 / 1000.0)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let run_id = std::process::id();
    let topic = format!("bench-{run_id}-{}", args.partitions);
    let bucket = format!("bench-{run_id}");
    let dir = std::env::temp_dir().join(format!("tributary-bench-{run_id}"));
    std::fs::create_dir_all(&dir)?;
    let exe = std::env::current_exe()?;
    let daemon_bin = match &args.daemon {
        Some(path) => path.clone(),
        None => exe
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("tributary"))
            .context("locating the tributary binary next to the example")?,
    };
    if !daemon_bin.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release --bin tributary` (benches/e2e.sh does)",
            daemon_bin.display()
        );
    }

    create_topic(&args.brokers, &topic, args.partitions).await?;
    create_bucket(&args.s3, &bucket).await?;
    eprintln!(
        "bench: producing {} events to {topic} ({} partitions)",
        args.records, args.partitions
    );
    let t = Instant::now();
    // Avro: the schema is registered as a producer's serializer would; the registry
    // lives as long as the bench.
    let registry = match args.format {
        Format::Json => None,
        Format::Avro => Some(registry::TestRegistry::start(None).await),
    };
    let avro_id = registry
        .as_ref()
        .map(|r| r.register(&format!("{topic}-value"), "AVRO", BENCH_AVRO));
    let (brokers, topic2, n, parts) = (
        args.brokers.clone(),
        topic.clone(),
        args.records,
        args.partitions,
    );
    let payload_bytes =
        tokio::task::spawn_blocking(move || prefill(&brokers, &topic2, n, parts, avro_id))
            .await??;
    eprintln!(
        "bench: produced {:.1} MB in {:.1}s",
        payload_bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    let port = free_port()?;
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/bench_events.json");
    let (schema_line, decode) = match &registry {
        None => (
            format!("schema_file = \"{}\"", schema.display()),
            String::new(),
        ),
        Some(r) => (
            String::new(),
            format!(
                "[decode]\nformat = \"avro\"\n\n[schema_registry]\nurl = \"{}\"\n",
                r.url()
            ),
        ),
    };
    let config = format!(
        r#"app_id = "bench-{run_id}"

[kafka]
brokers = "{brokers}"
topics = ["{topic}"]
auto_offset_reset = "earliest"
{kafka_keys}
[table]
uri = "s3://{bucket}/events"
{schema_line}
compression = "{compression}"

{decode}
[storage]
endpoint = "{s3}"
region = "us-east-1"
allow_http = true
path_style = true
access_key_id = "test"
secret_access_key = "test"

[observability]
listen = "127.0.0.1:{port}"

[log]
format = "json"

{extra}
"#,
        brokers = args.brokers,
        compression = args.compression,
        kafka_keys = args.kafka_keys,
        s3 = args.s3,
        extra = args.extra_config,
    );
    let config_path = dir.join("bench.toml");
    std::fs::write(&config_path, &config)?;
    let log_path = dir.join("daemon.log");
    let s3_log_start = args
        .moto_log
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len());
    let others_before: Vec<(f64, u64)> = [args.broker_pid, args.s3_pid]
        .iter()
        .map(|p| p.map_or((0.0, 0), cpu_and_peak_rss))
        .collect();

    eprintln!("bench: starting the daemon");
    let started = Instant::now();
    let mut child = Command::new(&daemon_bin)
        .args(["ingest", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()
        .context("starting the daemon")?;
    let pid = child.id();
    let addr = format!("127.0.0.1:{port}");
    let mut first_commit: Option<(Instant, f64)> = None;
    // The daemon's CPU seconds when its partitions were first seen assigned: what
    // it spent starting and joining the group, left out of the ingest-only figure.
    let mut cpu_at_assign: Option<f64> = None;
    let mut last_print = Instant::now();
    let deadline = Duration::from_secs(3600);
    let (done_at, metrics) = loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the daemon exited with {status} before catching up; log: {}",
                log_path.display()
            );
        }
        if started.elapsed() > deadline {
            bail!(
                "not caught up within {deadline:?}; log: {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
        let Some(m) = scrape(&addr) else { continue };
        let rows = m.get("tributary_rows_out_total").copied().unwrap_or(0.0);
        if cpu_at_assign.is_none()
            && m.get("tributary_assigned_partitions")
                .copied()
                .unwrap_or(0.0)
                > 0.0
        {
            cpu_at_assign = Some(cpu_and_peak_rss(pid).0);
        }
        if rows > 0.0 && first_commit.is_none() {
            first_commit = Some((Instant::now(), rows));
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "bench: {:.0}s {rows:.0} rows committed",
                started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        if rows as u64 >= args.records {
            break (Instant::now(), m);
        }
    };
    let (cpu, peak_rss) = cpu_and_peak_rss(pid);
    let others: Vec<f64> = [args.broker_pid, args.s3_pid]
        .iter()
        .zip(&others_before)
        .map(|(p, before)| p.map_or(0.0, |p| cpu_and_peak_rss(p).0 - before.0))
        .collect();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();

    let wall = done_at.duration_since(started).as_secs_f64();
    let n = args.records as f64;
    let mb = payload_bytes as f64 / 1e6;
    let steady = first_commit.map(|(t, rows)| {
        let secs = done_at.duration_since(t).as_secs_f64();
        ((n - rows) / secs, secs)
    });
    let mut commits = commits_from_log(&log_path);
    commits.sort_unstable();
    let ms: Vec<u64> = commits.iter().map(|c| c.0).collect();
    let mut ms_sorted = ms.clone();
    ms_sorted.sort_unstable();
    let files: u64 = commits.iter().map(|c| c.2).sum();
    let bytes: u64 = commits.iter().map(|c| c.1).sum();
    let requests = args
        .moto_log
        .as_ref()
        .map(|p| s3_requests(p, s3_log_start))
        .unwrap_or_default();
    let gb = payload_bytes as f64 / 1e9;

    println!(
        "settings      {} records of {:.0} B {} (12 fields), {} partitions, lz4 on the wire, table compression {}, daemon defaults otherwise{}",
        args.records,
        payload_bytes as f64 / n,
        match args.format {
            Format::Json => "JSON",
            Format::Avro => "Confluent Avro",
        },
        args.partitions,
        args.compression,
        if args.extra_config.is_empty() && args.kafka_keys.is_empty() {
            String::new()
        } else {
            format!(
                " + {}",
                (args.kafka_keys.clone() + &args.extra_config)
                    .trim()
                    .replace('\n', "; ")
            )
        }
    );
    println!(
        "records/s     {:.0} (start to caught up, {wall:.1} s, group join included)",
        n / wall
    );
    if let Some(secs) = assigned_to_last_commit(&log_path) {
        println!(
            "from assign   {:.0} records/s, {:.1} MB/s ({secs:.1} s from the partition assignment to the last commit; the group join took {:.1} s)",
            n / secs,
            mb / secs,
            wall - secs
        );
    }
    if let Some((rate, secs)) = steady {
        println!("steady        {rate:.0} records/s over {secs:.1} s (first commit to caught up)");
    }
    println!("MB/s          {:.1} of record payload", mb / wall);
    println!(
        "CPU           {:.2} s per million records ({cpu:.1} s in all; broker {:.1} s, S3 server {:.1} s)",
        cpu / (n / 1e6),
        others[0],
        others[1]
    );
    if let Some(before) = cpu_at_assign {
        println!(
            "CPU ingesting {:.2} s per million records from the partition assignment ({:.1} s before it: start and group join)",
            (cpu - before) / (n / 1e6),
            before
        );
    }
    println!(
        "peak RSS      {:.0} MiB",
        peak_rss as f64 / (1 << 20) as f64
    );
    println!(
        "commits       {} ({} files, mean file {:.1} MiB, {:.1} MiB Parquet in all)",
        commits.len(),
        files,
        if files > 0 {
            bytes as f64 / files as f64 / (1 << 20) as f64
        } else {
            0.0
        },
        bytes as f64 / (1 << 20) as f64
    );
    println!(
        "commit ms     p50 {} p99 {} max {}",
        percentile(&ms_sorted, 0.50),
        percentile(&ms_sorted, 0.99),
        ms_sorted.last().copied().unwrap_or(0)
    );
    if !requests.is_empty() {
        let per_gb: Vec<String> = requests
            .iter()
            .map(|(k, v)| format!("{k} {:.0}", *v as f64 / gb))
            .collect();
        println!(
            "S3 per GB     {} (of payload ingested; counted in the S3 server log)",
            per_gb.join(", ")
        );
    }
    println!(
        "metrics       rows_out {:.0}, rejected {:.0}, rewinds {:.0}, stale commits {:.0}",
        metrics
            .get("tributary_rows_out_total")
            .copied()
            .unwrap_or(0.0),
        metrics
            .get("tributary_records_rejected_total")
            .copied()
            .unwrap_or(0.0),
        metrics
            .get("tributary_rewinds_total")
            .copied()
            .unwrap_or(0.0),
        metrics
            .get("tributary_stale_commits_total")
            .copied()
            .unwrap_or(0.0),
    );
    println!("daemon log    {}", log_path.display());
    Ok(())
}
