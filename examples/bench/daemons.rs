//! The daemons under test: their configuration, processes and what they report
//! while they run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::args::{Args, Format};
use crate::measure;

/// One daemon process.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
    pub log: PathBuf,
}

/// The whole group at one moment (sums over the daemons).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Seconds since the daemons were started.
    pub t: f64,
    pub rows: f64,
    pub held_bytes: f64,
    pub assigned: f64,
    pub flushed_early: f64,
    pub conflicts: f64,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The configuration of one daemon: all share the app id, the group and the
/// tables; each serves its metrics on its own port.
pub fn config(
    args: &Args,
    run_id: u32,
    bucket: &str,
    topics: &[String],
    registry_url: Option<&str>,
    port: u16,
    upsert_mode: bool,
) -> String {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/bench_events.json");
    let schema_line = match args.format {
        Format::Json => format!("schema_file = \"{}\"", schema.display()),
        Format::Avro => String::new(),
    };
    let decode = registry_url.map_or(String::new(), |url| {
        format!("[decode]\nformat = \"avro\"\n\n[schema_registry]\nurl = \"{url}\"\n")
    });
    let (subscription, uri) = if topics.len() == 1 {
        (
            format!("topics = [\"{}\"]", topics[0]),
            format!("s3://{bucket}/events"),
        )
    } else {
        (
            format!("topic_pattern = \"^bench-{run_id}-t[0-9]+$\""),
            format!("s3://{bucket}/t/{{topic}}"),
        )
    };
    format!(
        r#"app_id = "bench-{run_id}"

[kafka]
brokers = "{brokers}"
{subscription}
auto_offset_reset = "earliest"
{kafka_keys}
[table]
uri = "{uri}"
{schema_line}
compression = "{compression}"
{upsert}
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
        upsert = args.upsert.map_or(String::new(), |_| {
            crate::upsert::table_lines(args.owned, upsert_mode, args.merge_on_read)
        }),
    )
}

/// Start `n` daemons of `bin` with configurations from `config(port)`.
pub fn start(
    bin: &Path,
    dir: &Path,
    n: u32,
    config: impl Fn(u16) -> String,
) -> anyhow::Result<Vec<Daemon>> {
    (0..n)
        .map(|i| {
            let port = free_port()?;
            let path = dir.join(format!("daemon-{i}.toml"));
            std::fs::write(&path, config(port))?;
            let log = dir.join(format!("daemon-{i}.log"));
            let child = Command::new(bin)
                .args(["ingest", "--config"])
                .arg(&path)
                .env("RUST_LOG", "")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?)
                .spawn()
                .context("starting a daemon")?;
            Ok(Daemon {
                child,
                addr: format!("127.0.0.1:{port}"),
                log,
            })
        })
        .collect()
}

/// Sample the daemons every 200 ms until `done(sample)` (or fail after
/// `deadline`, or when a daemon exits); also (daemon, its CPU seconds) when it
/// first held partitions.
pub fn watch(
    daemons: &mut [Daemon],
    deadline: Duration,
    mut done: impl FnMut(&Sample) -> bool,
) -> anyhow::Result<(Vec<Sample>, Vec<Option<f64>>)> {
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut cpu_at_assign = vec![None; daemons.len()];
    let mut last_print = Instant::now();
    loop {
        for d in daemons.iter_mut() {
            if let Some(status) = d.child.try_wait()? {
                bail!("a daemon exited with {status}; log: {}", d.log.display());
            }
        }
        if started.elapsed() > deadline {
            bail!(
                "not caught up within {deadline:?}; logs in {}",
                daemons[0].log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut s = Sample {
            t: started.elapsed().as_secs_f64(),
            ..Sample::default()
        };
        for (i, d) in daemons.iter().enumerate() {
            let Some(m) = measure::scrape(&d.addr) else {
                continue;
            };
            let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
            s.rows += get("tributary_rows_out_total");
            s.held_bytes += get("tributary_windows_held_bytes");
            s.assigned += get("tributary_assigned_partitions");
            s.flushed_early += get("tributary_windows_flushed_early_total");
            s.conflicts += get("tributary_commit_conflicts_total");
            if cpu_at_assign[i].is_none() && get("tributary_assigned_partitions") > 0.0 {
                cpu_at_assign[i] = Some(measure::cpu_and_peak_rss(d.child.id()).0);
            }
        }
        samples.push(s);
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!("bench: {:.0}s {:.0} rows committed", s.t, s.rows);
            last_print = Instant::now();
        }
        if done(&s) {
            return Ok((samples, cpu_at_assign));
        }
    }
}

/// Grow the table of the daemons' configuration by `versions` empty commits
/// before they start (see `tests/it/long_log.rs`); returns how long it took.
pub async fn grow_table_log(config_text: &str, versions: u64) -> anyhow::Result<Duration> {
    let cfg = tributary::config::RawConfig::parse(config_text, None, &|_| None)?.validate()?;
    let mut table = tributary::sink::table::open_or_create(&cfg.table, &cfg.storage, None)
        .await?
        .table;
    let began = Instant::now();
    crate::long_log::grow_log(&mut table, versions).await;
    Ok(began.elapsed())
}
