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
use tributary::stats::PipelineStats;

#[derive(Parser, Debug)]
#[command(
    name = "tributary",
    version,
    about = "Stream Kafka topics into Delta Lake tables, exactly once"
)]
struct Cli {
    /// Log level or filter (e.g. `debug`, `tributary=debug,librdkafka=warn`); RUST_LOG
    /// overrides it. Default: `info` for tributary and librdkafka, `warn` for the
    /// libraries below (`warn` for everything in `demo`).
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
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

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown signal received");
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Ingest { config } => {
            let cfg = load_config(&config)?;
            tracing::info!(app_id = %cfg.app_id, table = %cfg.table.uri, "starting ingest");
            let stats = Arc::new(PipelineStats::default());
            let summary =
                pipeline::run(cfg, stats, RunOptions::default(), shutdown_signal()).await?;
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
            let checks = tributary::preflight::run(&cfg, timeout).await;
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
            let opts = tributary::demo::DemoOptions {
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
            let report = tributary::demo::run(opts, |p| {
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

fn print_demo_report(r: &tributary::demo::DemoReport) {
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
    println!("rejected         {}", r.rejected);
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
        Command::Demo { .. } => "warn",
        _ => DEFAULT_FILTER,
    };
    init_logging(cli.log_level.as_deref().unwrap_or(default), cli.log_format);
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
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
