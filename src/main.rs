//! The `tributary` command line: parse arguments, set up logging, run one command,
//! and turn its error into a message and an exit code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tributary::config::{Config, RawConfig};
use tributary::pipeline::{self, RunOptions};
use tributary::telemetry::stats::PipelineStats;

#[derive(Parser, Debug)]
#[command(
    name = "tributary",
    version,
    about = "Stream Kafka topics into Delta Lake tables, exactly once"
)]
struct Cli {
    /// Log level or filter (e.g. `debug`, `tributary=debug,librdkafka=warn`); RUST_LOG
    /// overrides it. Default: `info` for tributary and librdkafka, `warn` for the
    /// libraries below (`error` in `demo`, whose report counts what was rejected).
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Log format (default: the config's log.format, else text).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the ingest daemon until SIGTERM/SIGINT, then commit what is buffered and exit.
    Ingest {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration: parse it, reach the brokers and the table. Writes nothing.
    Validate {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// How long to wait for the brokers.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Bin-pack small files into larger ones (optionally z-ordered); safe while ingesting.
    Compact {
        #[command(flatten)]
        table: TableArgs,
        /// Target file size (default: the table's delta.targetFileSize, else 128 MiB).
        #[arg(long)]
        target_size: Option<bytesize::ByteSize>,
        /// Z-order by these columns (comma separated).
        #[arg(long, value_delimiter = ',')]
        zorder: Vec<String>,
        /// Partition filter, e.g. "date = 2025-01-01" or "country in (DE, US)"; repeatable.
        #[arg(long = "where")]
        filters: Vec<String>,
        /// Do nothing unless at least this many small files can be merged.
        #[arg(long, default_value_t = 2)]
        min_files: u64,
        /// Print the plan without writing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete files the table no longer references, older than the retention period.
    Vacuum {
        #[command(flatten)]
        table: TableArgs,
        /// Retention (default: the table's delta.deletedFileRetentionDuration, 7 days).
        #[arg(long, value_parser = humantime::parse_duration)]
        retention: Option<Duration>,
        /// Allow a retention below the table's.
        #[arg(long)]
        force_retention: bool,
        /// Also delete orphan files never committed (e.g. left by a killed writer).
        #[arg(long)]
        full: bool,
        /// List what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a checkpoint of the current version and clean up expired log files.
    Checkpoint {
        #[command(flatten)]
        table: TableArgs,
    },
    /// Per partition: stored offset, high watermark, lag, last commit; table size and files.
    Status {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// How long to wait for the brokers.
        #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Move the offsets stored in the table (replay or skip records).
    Offsets {
        #[command(subcommand)]
        action: OffsetsAction,
    },
    /// Compare the table with the topic: report duplicates and gaps per partition.
    Verify {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// How long to wait for the brokers.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Run the whole pipeline on an in-process Kafka mock and a local table, then check it.
    Demo {
        /// Events to produce.
        #[arg(long, default_value_t = 50_000)]
        records: u64,
        /// Partitions of the demo topic.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// One event in this many is malformed (0 for none).
        #[arg(long, default_value_t = 5_000)]
        bad_every: u64,
        /// Directory for the table (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Quiet defaults: delta-rs and the Delta kernel log every snapshot load at INFO.
const DEFAULT_FILTER: &str = "info,buoyant_kernel=warn,deltalake_core=warn,deltalake_aws=warn,\
deltalake=warn,deltalake_core::writer::stats=error,datafusion=warn,object_store=warn,aws_config=warn,aws_smithy_runtime=warn,hyper=warn";

#[derive(Subcommand, Debug)]
enum ConfigAction {
    /// Print a complete, commented configuration to start from.
    Example,
}

#[derive(clap::Args, Debug)]
struct TableArgs {
    /// Table URI (s3://bucket/path, file:///path or a local path); or use --config.
    #[arg(required_unless_present = "config")]
    uri: Option<String>,
    /// Take the table and storage settings from this config file.
    #[arg(long, short, conflicts_with = "uri")]
    config: Option<PathBuf>,
    /// Object-store option KEY=VALUE, repeatable (e.g. aws_endpoint_url=http://127.0.0.1:9000).
    #[arg(long = "storage-option")]
    storage_options: Vec<String>,
}

impl TableArgs {
    async fn open(&self) -> anyhow::Result<deltalake::DeltaTable> {
        let (uri, storage) = match (&self.uri, &self.config) {
            (_, Some(config)) => {
                let cfg = load_config(config)?;
                if let Some(t) = &cfg.table.uri_template {
                    anyhow::bail!(
                        "table.uri `{t}` is a per-topic template; name one table: pass its URI \
                         (with --storage-option) instead of --config"
                    );
                }
                (cfg.table.uri, cfg.storage)
            }
            (Some(uri), None) => {
                let uri = tributary::config::parse_table_uri(uri)?;
                let storage = tributary::ops::maintenance::parse_storage_options(
                    &uri,
                    &self.storage_options,
                )?;
                (uri, storage)
            }
            (None, None) => anyhow::bail!("name a table URI or --config FILE"),
        };
        Ok(tributary::ops::maintenance::open(&uri, &storage).await?)
    }
}

#[derive(Subcommand, Debug)]
enum OffsetsAction {
    /// Set the next offset to ingest for partitions.
    Set {
        #[command(flatten)]
        sel: OffsetsSelection,
        /// The next offset to ingest.
        #[arg(long)]
        offset: i64,
    },
    /// Reset partitions to the earliest retained record (replay), the latest (skip)
    /// or the first record at or after a time.
    #[command(group(clap::ArgGroup::new("reset_to").required(true)))]
    Reset {
        #[command(flatten)]
        sel: OffsetsSelection,
        /// Replay everything Kafka retains.
        #[arg(long, group = "reset_to")]
        to_earliest: bool,
        /// Skip to the end.
        #[arg(long, group = "reset_to")]
        to_latest: bool,
        /// Replay from the first record at or after this time (RFC 3339, e.g.
        /// 2025-03-01T00:00:00Z); partitions with none yet continue from their end.
        #[arg(long, group = "reset_to", value_parser = parse_rfc3339_ms)]
        to_timestamp: Option<i64>,
    },
}

#[derive(clap::Args, Debug)]
struct OffsetsSelection {
    /// The TOML configuration file.
    #[arg(long, short)]
    config: PathBuf,
    /// Topic (default: all configured topics).
    #[arg(long)]
    topic: Option<String>,
    /// Partition numbers (comma separated; default: all of the topic's).
    #[arg(long, value_delimiter = ',')]
    partition: Vec<i32>,
    /// Proceed even if the consumer group has active members.
    #[arg(long)]
    force: bool,
    /// Show the change without committing it.
    #[arg(long)]
    dry_run: bool,
    /// How long to wait for the brokers.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// A spinner on stderr when it is a terminal; nothing otherwise (logs still go out).
fn spinner(msg: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_message(msg.to_owned());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// A config for commands that read one table and its partitions (status, verify,
/// offsets): one that routes topics to several tables is refused with what to do.
fn load_single_table_config(path: &std::path::Path) -> anyhow::Result<Config> {
    let cfg = load_config(path)?;
    if !cfg.routes.is_empty() || cfg.table.uri_template.is_some() {
        anyhow::bail!(
            "{} routes topics to several tables ([[routes]] or {{topic}} in table.uri); this \
             command reads one table and its topics: run it with a config whose [table] is \
             that table and whose kafka.topics are its topics",
            path.display()
        );
    }
    Ok(cfg)
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn run_offsets(action: OffsetsAction) -> anyhow::Result<ExitCode> {
    use tributary::ops::offsets::Target;
    let (sel, target) = match action {
        OffsetsAction::Set { sel, offset } => (sel, Target::Offset(offset)),
        OffsetsAction::Reset {
            sel,
            to_earliest,
            to_latest: _,
            to_timestamp,
        } => (
            sel,
            match (to_timestamp, to_earliest) {
                (Some(ms), _) => Target::Timestamp(ms),
                (None, true) => Target::Earliest,
                (None, false) => Target::Latest,
            },
        ),
    };
    let cfg = load_single_table_config(&sel.config)?;
    let only: Vec<tributary::record::TopicPartition> = match &sel.topic {
        Some(topic) => {
            if sel.partition.is_empty() {
                let timeout = sel.timeout;
                tributary::source::probe::blocking(&cfg.kafka, move |k| {
                    tributary::source::probe::partitions(k, timeout)
                })
                .await?
                .into_iter()
                .filter(|tp| &*tp.topic == topic)
                .collect()
            } else {
                sel.partition
                    .iter()
                    .map(|p| tributary::record::TopicPartition::new(topic.as_str(), *p))
                    .collect()
            }
        }
        None if !sel.partition.is_empty() => anyhow::bail!("--partition needs --topic"),
        None => Vec::new(),
    };
    let report =
        tributary::ops::offsets::set(&cfg, &only, target, sel.force, sel.dry_run, sel.timeout)
            .await?;
    for c in &report.changes {
        let before = c.before.map_or("-".to_owned(), |b| b.to_string());
        println!(
            "{:<40} stored offset {before:>10} -> {:>10}",
            c.partition, c.after
        );
    }
    match report.version {
        Some(v) => println!("committed as table version {v}"),
        None => println!("dry run: nothing committed"),
    }
    Ok(ExitCode::SUCCESS)
}

/// object_store panics ("Already shut down") when a multipart upload whose
/// completion already failed is then aborted; delta-rs does that when it discards a
/// window during a storage outage, in a task of its own that tokio catches. The
/// daemon is unharmed, so the operator gets one warning instead of a panic report
/// with a backtrace. Every other panic goes to the default hook.
fn contain_known_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("");
        let file = info.location().map_or("", |l| l.file());
        if is_upload_abort_after_shutdown(message, file) {
            tracing::warn!(
                "an upload that could not complete could not be aborted either (object_store:                  {message}); its parts stay until the bucket's multipart lifecycle rule removes them"
            );
        } else {
            default(info);
        }
    }));
}

fn is_upload_abort_after_shutdown(message: &str, file: &str) -> bool {
    message == "Already shut down" && file.contains("object_store") && file.ends_with("buffered.rs")
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => tracing_subscriber::EnvFilter::new(v),
        _ => tracing_subscriber::EnvFilter::new(level),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    let env = |name: &str| std::env::var(name).ok();
    let raw = RawConfig::load(path, &env)?;
    Ok(raw.validate()?)
}

/// An RFC 3339 time as milliseconds since the epoch.
fn parse_rfc3339_ms(text: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("`{text}` is not an RFC 3339 time such as 2025-03-01T00:00:00Z: {e}"))
}

/// SIGTERM or SIGINT; the handler is installed now, so a failure to install it is
/// an error at start rather than a panic later.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| anyhow::anyhow!("cannot install the SIGTERM handler: {e}"))?;
    Ok(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown signal received");
    })
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Ingest { config } => {
            let cfg = load_config(&config)?;
            tracing::info!(app_id = %cfg.app_id, table = %cfg.table.uri, "starting ingest");
            let stats = Arc::new(PipelineStats::default());
            let summary =
                match pipeline::run(cfg, stats, RunOptions::default(), shutdown_signal()?).await {
                    Ok(s) => s,
                    Err(e) => {
                        let hint = e.hint();
                        let e = anyhow::Error::new(e);
                        return Err(match hint {
                            Some(h) => e.context(format!("ingest stopped. {h}")),
                            None => e,
                        });
                    }
                };
            tracing::info!(
                records = summary.records,
                rows = summary.rows,
                rejected = summary.rejected,
                commits = summary.commits,
                "stopped cleanly"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { config, timeout } => {
            let cfg = match load_config(&config) {
                Ok(cfg) => {
                    println!("ok    config: {} parsed and valid", config.display());
                    cfg
                }
                Err(e) => {
                    println!("FAIL  config: {e:#}");
                    return Ok(ExitCode::from(2));
                }
            };
            let checks = tributary::ops::validate::run(&cfg, timeout).await;
            let mut failed = false;
            for c in &checks {
                match &c.outcome {
                    Ok(detail) => println!("ok    {}: {detail}", c.name),
                    Err(problem) => {
                        failed = true;
                        println!("FAIL  {}: {problem}", c.name);
                    }
                }
            }
            Ok(if failed {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Config {
            action: ConfigAction::Example,
        } => {
            print!("{}", include_str!("../examples/config/events.toml"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Compact {
            table,
            target_size,
            zorder,
            filters,
            min_files,
            dry_run,
            json,
        } => {
            let t = table.open().await?;
            let filters = filters
                .iter()
                .map(|f| f.parse())
                .collect::<Result<Vec<tributary::ops::maintenance::PartitionFilter>, _>>()?;
            let compact =
                tributary::ops::maintenance::Compact::new(t, target_size.map(|b| b.as_u64()))
                    .with_zorder(zorder)
                    .with_filters(filters)
                    .with_min_files(min_files);
            let plan = compact.plan().await?;
            if dry_run {
                if json {
                    print_json(&plan)?;
                } else {
                    println!(
                        "plan for {} at version {}: rewrite {} of {} files ({} of {} bytes) into about {} file(s) of up to {} bytes{}",
                        plan.table,
                        plan.version,
                        plan.files_in,
                        plan.files_before,
                        plan.bytes_in,
                        plan.bytes_before,
                        plan.files_out_estimate,
                        plan.target_file_size,
                        plan.skip_reason
                            .as_ref()
                            .map(|r| format!("; nothing to do: {r}"))
                            .unwrap_or_default()
                    );
                    println!("dry run: nothing written");
                }
                return Ok(ExitCode::SUCCESS);
            }
            let pb = spinner("compacting");
            let report = compact.execute(plan).await;
            pb.finish_and_clear();
            let report = report?;
            if json {
                print_json(&report)?;
            } else if let Some(reason) = &report.plan.skip_reason {
                println!("nothing to do: {reason}");
            } else {
                println!(
                    "compacted {}: removed {} files ({} bytes), added {} files ({} bytes), version {}",
                    report.plan.table,
                    report.files_removed,
                    report.bytes_removed,
                    report.files_added,
                    report.bytes_added,
                    report.version.map_or("-".to_owned(), |v| v.to_string())
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Vacuum {
            table,
            retention,
            force_retention,
            full,
            dry_run,
            json,
        } => {
            let t = table.open().await?;
            let pb = spinner("vacuuming");
            let report = tributary::ops::maintenance::vacuum(
                t,
                tributary::ops::maintenance::VacuumOptions {
                    retention,
                    force_retention,
                    dry_run,
                    full,
                    clock: None,
                },
            )
            .await;
            pb.finish_and_clear();
            let report = report?;
            if json {
                print_json(&report)?;
            } else {
                for f in &report.files {
                    println!(
                        "{}{f}",
                        if report.dry_run {
                            "would delete "
                        } else {
                            "deleted "
                        }
                    );
                }
                println!(
                    "{} {} file(s) from {} (retention {:.0}h, {} mode)",
                    if report.dry_run {
                        "would delete"
                    } else {
                        "deleted"
                    },
                    report.files.len(),
                    report.table,
                    report.retention_hours,
                    if report.full { "full" } else { "lite" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Checkpoint { table } => {
            let t = table.open().await?;
            let r = tributary::ops::maintenance::checkpoint(&t).await?;
            println!(
                "checkpoint of {} at version {}; {} expired log file(s) removed",
                r.table, r.version, r.log_files_removed
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            config,
            json,
            timeout,
        } => {
            let cfg = load_single_table_config(&config)?;
            let report = tributary::ops::status::status(&cfg, timeout).await?;
            if json {
                print_json(&report)?;
            } else {
                print!("{}", tributary::ops::status::render(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Offsets { action } => run_offsets(action).await,
        Command::Verify {
            config,
            json,
            timeout,
        } => {
            let cfg = load_single_table_config(&config)?;
            let pb = spinner("reading the table and the topic");
            let report = tributary::ops::verify::verify(&cfg, timeout).await;
            pb.finish_and_clear();
            let report = report?;
            if json {
                print_json(&report)?;
            } else {
                print!("{}", tributary::ops::verify::render(&report));
            }
            Ok(if report.clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Demo {
            records,
            partitions,
            bad_every,
            dir,
        } => {
            let dir = match dir {
                Some(d) => d,
                None => tempdir_path()?,
            };
            let opts = tributary::ops::demo::DemoOptions {
                records,
                partitions,
                bad_every,
                dir,
                max_age: Duration::from_secs(2),
            };
            eprintln!(
                "demo: {records} events into {partitions} partitions of an in-process Kafka mock, \
                 table at {}",
                opts.dir.display()
            );
            let report = tributary::ops::demo::run(opts, |p| {
                eprint!(
                    "\rproduced {}/{}  committed offsets {}  rows {}  commits {}   ",
                    p.produced, p.total, p.accounted, p.rows, p.commits
                );
            })
            .await?;
            eprintln!();
            print_demo_report(&report);
            Ok(if report.exactly_once {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn tempdir_path() -> anyhow::Result<PathBuf> {
    let base = std::env::temp_dir();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("clock before 1970")?
        .as_millis();
    Ok(base.join(format!("tributary-demo-{stamp}")))
}

fn print_demo_report(r: &tributary::ops::demo::DemoReport) {
    println!("table            {}", r.table_uri);
    println!("version          {}", r.version);
    println!("data files       {}", r.files);
    println!(
        "events produced  {} ({} malformed on purpose)",
        r.produced, r.produced_bad
    );
    println!(
        "rows in table    {} ({} distinct partition/offset)",
        r.rows, r.distinct
    );
    println!(
        "rejected         {} (malformed JSON: counted, offsets accounted; a [dead_letters] table keeps each with its reason)",
        r.rejected
    );
    println!("ingest time      {:.1}s", r.elapsed.as_secs_f64());
    println!("partition  stored offset  last produced");
    for (p, (stored, last)) in &r.offsets {
        let s = stored.map_or("-".to_owned(), |s| s.to_string());
        println!("{p:>9}  {s:>13}  {last:>13}");
    }
    if r.exactly_once {
        println!(
            "exactly once     yes: every good event once, every malformed one rejected, offsets at the partition ends"
        );
    } else {
        println!("exactly once     NO: see the figures above");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = match cli.command {
        // The demo's screen is its progress line and report (which counts the
        // rejected records); per-record and per-file warnings would bury them.
        Command::Demo { .. } => "error",
        _ => DEFAULT_FILTER,
    };
    // The daemon's config may set the log level and format; flags win. A config that
    // does not load is reported by the command itself.
    let (file_level, file_json) = match &cli.command {
        Command::Ingest { config } => load_config(config)
            .map(|c| (c.log_level, c.log_json))
            .unwrap_or_default(),
        _ => (None, false),
    };
    let level = cli.log_level.clone().or(file_level);
    let format = cli.log_format.unwrap_or(if file_json {
        LogFormat::Json
    } else {
        LogFormat::Text
    });
    init_logging(level.as_deref().unwrap_or(default), format);
    contain_known_panics();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    };
    // A commit abandoned at shutdown (storage down) may still be inside a
    // blocking call; do not wait for it: its outcome is read from the table on
    // the next start.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}

/// An error and its causes joined with ": ", leaving out a cause whose text the
/// message before it already includes (many of our errors and delta-rs' print their
/// source in their own message, and would otherwise print it twice).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    let mut shown = out.clone();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !shown.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        shown = text;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_object_stores_abort_after_shutdown_panic_is_contained() {
        let file = "/root/.cargo/registry/src/x/object_store-0.13.2/src/buffered.rs";
        assert!(is_upload_abort_after_shutdown("Already shut down", file));
        assert!(!is_upload_abort_after_shutdown("index out of bounds", file));
        assert!(!is_upload_abort_after_shutdown(
            "Already shut down",
            "src/pipeline.rs"
        ));
    }

    #[test]
    fn reset_takes_exactly_one_target_and_an_rfc3339_time() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(
                ["tributary", "offsets", "reset", "--config", "c.toml"]
                    .iter()
                    .chain(args),
            )
        };
        let cli = parse(&["--to-timestamp", "2025-06-15T15:07:50Z"]).unwrap();
        let Command::Offsets {
            action: OffsetsAction::Reset { to_timestamp, .. },
        } = cli.command
        else {
            panic!("not offsets reset");
        };
        assert_eq!(to_timestamp, Some(1_750_000_070_000));
        assert!(parse(&[]).is_err(), "a target is required");
        assert!(parse(&["--to-earliest", "--to-latest"]).is_err());
        let bad = parse(&["--to-timestamp", "yesterday"])
            .unwrap_err()
            .to_string();
        assert!(bad.contains("RFC 3339"), "{bad}");
    }

    #[test]
    fn a_cause_already_in_the_message_is_printed_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("commit to table t failed: {source}")]
        struct Outer {
            #[source]
            source: std::io::Error,
        }
        let io = std::io::Error::other("error sending request");
        let e = anyhow::Error::new(Outer { source: io }).context("ingest stopped");
        assert_eq!(
            error_chain(&e),
            "ingest stopped: commit to table t failed: error sending request"
        );
        let plain = anyhow::anyhow!("bare").context("outer");
        assert_eq!(error_chain(&plain), "outer: bare");
    }
}
