//! End-to-end benchmark: a real broker, real S3, the `tributary` daemon(s), and a
//! report of what it cost, with a chart of the run.
//!
//! Run it with the servers the tests use (Apache Kafka or Tansu, moto S3 on 127.0.0.1):
//!
//! ```sh
//! benches/e2e.sh                                  # catch up on 5 M JSON records, 8 partitions
//! benches/e2e.sh --format avro                    # the same events, Confluent Avro
//! benches/e2e.sh --partitions 4096 --rate 4096 --duration 180   # many partitions, low rate
//! benches/e2e.sh --tables 200 --records 2000000   # a {topic} route over 200 topics
//! benches/e2e.sh --replicas 4 --config fast.toml  # 4 daemons in one group on one table
//! benches/e2e.sh --long-log 100000                # the table's log grown first
//! ```
//!
//! Scenarios combine. Without `--rate` the topics are pre-filled and the daemons
//! run until they have caught up; with it, records are produced at that rate for
//! `--duration` seconds while they run, and the bench waits until all are
//! committed. The Avro variant registers `schemas/bench_events.avsc` in the
//! in-process Confluent-compatible registry the tests use, and the tables are
//! created from it.
//!
//! Reported: records/s and MB/s, start-up (tables open, assignment, stored offsets
//! read), CPU seconds per million records, peak RSS, what the windows held,
//! commits per minute, files per commit, conflicts per commit, commit latency
//! p50/p99 (overall and by quarter of the run, as the log grows), S3 requests per
//! GB. The report is printed and written to `report.txt` beside `chart.svg` in the
//! run's directory.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

mod args;
mod chart;
mod daemons;
mod events;
mod kafka;
#[path = "../../tests/it/long_log.rs"]
mod long_log;
mod measure;
#[allow(dead_code)] // the bench uses a part of the tests' registry
#[path = "../../tests/it/registry.rs"]
mod registry;
mod report;
#[path = "../common/send.rs"]
mod send;
mod upsert;

use args::Format;
use kafka::{Producing, Targets};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args::parse()?;
    let run_id = std::process::id();
    let topics: Vec<String> = if args.tables == 1 {
        vec![format!("bench-{run_id}-{}", args.partitions)]
    } else {
        (0..args.tables)
            .map(|t| format!("bench-{run_id}-t{t}"))
            .collect()
    };
    let bucket = format!("bench-{run_id}");
    let dir = std::env::temp_dir().join(format!("tributary-bench-{run_id}"));
    std::fs::create_dir_all(&dir)?;
    let daemon_bin = match &args.daemon {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
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
    kafka::create_topics(&args.brokers, &topics, args.partitions).await?;
    kafka::create_bucket(&args.s3, &bucket).await?;
    // Avro: the schema is registered as a producer's serializer would (one subject
    // per topic); the registry lives as long as the bench.
    let registry = match args.format {
        Format::Json => None,
        Format::Avro => Some(registry::TestRegistry::start(None).await),
    };
    let avro_id = registry.as_ref().map(|r| {
        // One schema: every subject gets the same id.
        topics.iter().fold(0, |_, t| {
            r.register(&format!("{t}-value"), "AVRO", events::BENCH_AVRO)
        })
    });
    let config_of = |port, upsert_mode| {
        daemons::config(
            &args,
            run_id,
            &bucket,
            &topics,
            registry.as_ref().map(|r| r.url()).as_deref(),
            port,
            upsert_mode,
        )
    };
    let config = |port| config_of(port, args.upsert.is_some());
    let grown = if args.long_log > 0 {
        eprintln!(
            "bench: growing the table's log by {} versions",
            args.long_log
        );
        let secs = daemons::grow_table_log(&config(0), args.long_log).await?;
        Some((args.long_log, secs.as_secs_f64()))
    } else {
        None
    };
    let targets = Targets {
        topics: topics.clone(),
        partitions: args.partitions,
    };
    let mut producing = Producing::new(&args.brokers, avro_id)?;
    // Upsert: load the table, then produce the changes (their bytes count).
    let loaded = match args.upsert {
        Some(keys) => {
            let load_dir = dir.join("load");
            std::fs::create_dir_all(&load_dir)?;
            let start = || daemons::start(&daemon_bin, &load_dir, 1, |p| config_of(p, false));
            let version = upsert::load(&args, &targets, keys, start, &config_of(0, false)).await?;
            let (t, brokers, n) = (targets.clone(), args.brokers.clone(), args.records);
            let began = Instant::now();
            producing.bytes = tokio::task::spawn_blocking(move || {
                upsert::Keyed::new(&brokers)?.changes(&t, keys, n)
            })
            .await??;
            eprintln!(
                "bench: produced {n} changes ({:.1} MB) in {:.1}s",
                producing.bytes as f64 / 1e6,
                began.elapsed().as_secs_f64()
            );
            Some(version)
        }
        None => None,
    };
    if args.rate.is_none() && loaded.is_none() {
        eprintln!(
            "bench: producing {} events to {} topic(s) of {} partitions",
            args.records,
            topics.len(),
            args.partitions
        );
        let t = Instant::now();
        let (targets, n) = (targets.clone(), args.records);
        let mut p = producing;
        producing =
            tokio::task::spawn_blocking(move || p.prefill(&targets, n).map(|()| p)).await??;
        eprintln!(
            "bench: produced {:.1} MB in {:.1}s",
            producing.bytes as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
    }

    let s3_log_start = args
        .moto_log
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len());
    let servers_before: Vec<f64> = [args.broker_pid, args.s3_pid]
        .iter()
        .map(|p| p.map_or(0.0, |p| measure::cpu_and_peak_rss(p).0))
        .collect();
    eprintln!("bench: starting {} daemon(s)", args.replicas);
    let started = chrono::Utc::now().fixed_offset();
    let mut group = daemons::start(&daemon_bin, &dir, args.replicas, config)?;
    // With --rate, the records are produced while the daemons run.
    let prefilled_bytes = producing.bytes;
    let paced = args.rate.map(|rate| {
        let (targets, secs) = (targets.clone(), args.duration);
        let mut p = producing;
        std::thread::spawn(move || p.paced(&targets, rate, secs).map(|n| (n, p.bytes)))
    });
    let deadline = Duration::from_secs(3600 + args.duration);
    let ((samples, cpu_at_assign), (records, payload_bytes)) = match paced {
        None => {
            let target = args.records as f64;
            let watched = daemons::watch(&mut group, deadline, |s| s.rows >= target)?;
            (watched, (args.records, prefilled_bytes))
        }
        Some(handle) => {
            let mut produced: Option<(u64, u64)> = None;
            let mut handle = Some(handle);
            let watched = daemons::watch(&mut group, deadline, |s| {
                if handle.as_ref().is_some_and(|h| h.is_finished()) {
                    produced = handle
                        .take()
                        .and_then(|h| h.join().ok())
                        .and_then(Result::ok);
                }
                produced.is_some_and(|(n, _)| s.rows >= n as f64)
            })?;
            (watched, produced.context("the paced producer failed")?)
        }
    };
    let mut per_daemon = Vec::new();
    for (i, d) in group.iter().enumerate() {
        let (cpu, rss) = measure::cpu_and_peak_rss(d.child.id());
        per_daemon.push((cpu, cpu_at_assign[i], rss));
    }
    let servers_cpu: Vec<f64> = [args.broker_pid, args.s3_pid]
        .iter()
        .zip(&servers_before)
        .map(|(p, before)| p.map_or(0.0, |p| measure::cpu_and_peak_rss(p).0 - before))
        .collect();
    for d in &mut group {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &d.child.id().to_string()])
            .status();
        let _ = d.child.wait();
    }
    let mut commits = Vec::new();
    let mut daemons_out = Vec::new();
    for (d, (cpu, at_assign, rss)) in group.iter().zip(per_daemon) {
        let lines = measure::log_lines(&d.log);
        commits.extend(measure::commits(&lines));
        daemons_out.push((cpu, at_assign, rss, measure::startup(&lines)));
    }
    commits.sort_by_key(|c| c.at);
    let wall = samples.last().map_or(0.0, |s| s.t);
    let outcome = report::Outcome {
        scenario: args.scenario(),
        settings: settings(&args),
        records,
        payload_bytes,
        wall,
        samples,
        daemons: daemons_out,
        commits,
        started,
        servers_cpu: (servers_cpu[0], servers_cpu[1]),
        s3: args
            .moto_log
            .as_ref()
            .map(|p| measure::s3_requests(p, s3_log_start))
            .unwrap_or_default(),
        grown,
    };
    let mut text = report::render(&outcome);
    if let Some(from) = loaded {
        let w = upsert::written(&config(0), from).await?;
        let lines: Vec<serde_json::Value> = group
            .iter()
            .flat_map(|d| measure::log_lines(&d.log))
            .collect();
        let m = upsert::merged(&lines);
        let on_read = upsert::merged_on_read(&lines);
        text.push_str(&upsert::render(&w, outcome.payload_bytes, m, on_read));
    }
    print!("{text}");
    std::fs::write(dir.join("report.txt"), &text)?;
    chart::write(&dir.join("chart.svg"), &outcome)?;
    println!(
        "files         {}/report.txt, chart.svg, daemon-*.log",
        dir.display()
    );
    Ok(())
}

/// The settings line: what the daemons were given beyond their defaults.
fn settings(args: &args::Args) -> String {
    let extra = (args.kafka_keys.clone() + &args.extra_config)
        .trim()
        .replace('\n', "; ");
    format!(
        "{}; events of ~260 B as JSON (12 fields), lz4 on the wire, table compression {}, daemon defaults{}",
        args.broker_name,
        args.compression,
        if extra.is_empty() {
            String::new()
        } else {
            format!(" + {extra}")
        }
    )
}
