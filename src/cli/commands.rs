//! One function per command: load what it needs, call the library, print through
//! [`super::render`], return the exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use super::args::{Command, ConfigAction, OffsetsAction, RestoreArgs, TableArgs};
use super::{load_config, load_single_table_config, print_json, render, spinner, tempdir_path};
use crate::ops::maintenance::{self, Compact, PartitionFilter, VacuumOptions};
use crate::ops::offsets::Target;
use crate::ops::restore::RestoreTarget;
use crate::pipeline::{self, RunOptions};
use crate::record::TopicPartition;
use crate::source::probe;
use crate::telemetry::stats::PipelineStats;

/// Run one command.
pub async fn run(cli: super::Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Ingest { config } => ingest(&config).await,
        Command::Validate { config, timeout } => validate(&config, timeout).await,
        Command::Config {
            action: ConfigAction::Example,
        } => {
            print!("{}", include_str!("../../examples/config/events.toml"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Compact {
            table,
            target_size,
            zorder,
            filters,
            min_files,
            max_attempts,
            dry_run,
            json,
        } => {
            let filters = filters
                .iter()
                .map(|f| f.parse())
                .collect::<Result<Vec<PartitionFilter>, _>>()?;
            let compact = Compact::new(table.open().await?, target_size.map(|b| b.as_u64()))
                .with_zorder(zorder)
                .with_filters(filters)
                .with_min_files(min_files)
                .with_max_attempts(max_attempts);
            self::compact(compact, dry_run, json).await
        }
        Command::Vacuum {
            table,
            retention,
            force_retention,
            full,
            dry_run,
            json,
        } => {
            let options = VacuumOptions {
                retention,
                force_retention,
                dry_run,
                full,
                clock: None,
            };
            vacuum(&table, options, json).await
        }
        Command::Checkpoint { table } => {
            let r = maintenance::checkpoint(&table.open().await?).await?;
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
        } => status(&config, json, timeout).await,
        Command::Offsets { action } => offsets(action).await,
        Command::Restore(args) => restore(args).await,
        Command::Verify {
            config,
            json,
            timeout,
        } => verify(&config, json, timeout).await,
        Command::Demo {
            records,
            partitions,
            bad_every,
            dir,
        } => demo(records, partitions, bad_every, dir).await,
    }
}

async fn ingest(config: &Path) -> anyhow::Result<ExitCode> {
    let cfg = load_config(config)?;
    tracing::info!(app_id = %cfg.app_id, table = %cfg.table.uri, "starting ingest");
    let stats = Arc::new(PipelineStats::default());
    let summary = match pipeline::run(cfg, stats, RunOptions::default(), shutdown_signal()?).await {
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

async fn validate(config: &Path, timeout: Duration) -> anyhow::Result<ExitCode> {
    let cfg = match load_config(config) {
        Ok(cfg) => {
            println!("ok    config: {} parsed and valid", config.display());
            cfg
        }
        Err(e) => {
            println!("FAIL  config: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let checks = crate::ops::validate::run(&cfg, timeout).await;
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

async fn compact(compact: Compact, dry_run: bool, json: bool) -> anyhow::Result<ExitCode> {
    let plan = compact.plan().await?;
    if dry_run {
        if json {
            print_json(&plan)?;
        } else {
            println!("{}", render::compact_plan(&plan));
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
    } else {
        println!("{}", render::compact_report(&report));
    }
    Ok(if report.gave_up == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn vacuum(table: &TableArgs, options: VacuumOptions, json: bool) -> anyhow::Result<ExitCode> {
    let t = table.open().await?;
    let pb = spinner("vacuuming");
    let report = maintenance::vacuum(t, options).await;
    pb.finish_and_clear();
    let report = report?;
    if json {
        print_json(&report)?;
    } else {
        print!("{}", render::vacuum_report(&report));
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(config: &Path, json: bool, timeout: Duration) -> anyhow::Result<ExitCode> {
    let cfg = load_single_table_config(config)?;
    let report = crate::ops::status::status(&cfg, timeout).await?;
    if json {
        print_json(&report)?;
    } else {
        print!("{}", crate::ops::status::render(&report));
    }
    // A foreign restore's hole is what a status check must not pass over.
    Ok(if report.foreign_restore.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn verify(config: &Path, json: bool, timeout: Duration) -> anyhow::Result<ExitCode> {
    let cfg = load_single_table_config(config)?;
    let pb = spinner("reading the table and the topic");
    let report = crate::ops::verify::verify(&cfg, timeout).await;
    pb.finish_and_clear();
    let report = report?;
    if json {
        print_json(&report)?;
    } else {
        print!("{}", crate::ops::verify::render(&report));
    }
    Ok(if report.clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn demo(
    records: u64,
    partitions: i32,
    bad_every: u64,
    dir: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let dir = match dir {
        Some(d) => d,
        None => tempdir_path()?,
    };
    let opts = crate::ops::demo::DemoOptions {
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
    let report = crate::ops::demo::run(opts, |p| {
        eprint!(
            "\rproduced {}/{}  committed offsets {}  rows {}  commits {}   ",
            p.produced, p.total, p.accounted, p.rows, p.commits
        );
    })
    .await?;
    eprintln!();
    print!("{}", render::demo_report(&report));
    Ok(if report.exactly_once {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let target = match (args.to_version, args.to_timestamp) {
        (Some(v), _) => RestoreTarget::Version(v),
        (None, Some(ms)) => RestoreTarget::Timestamp(ms),
        (None, None) => anyhow::bail!("pass --to-version or --to-timestamp"),
    };
    let cfg = load_single_table_config(&args.config)?;
    if let Some(note) = crate::ops::offsets::replay_note(&cfg.table) {
        eprintln!("{note}");
    }
    let report =
        crate::ops::restore::restore(&cfg, target, args.force, args.dry_run, args.timeout).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render::restore_report(&report));
    }
    Ok(ExitCode::SUCCESS)
}

async fn offsets(action: OffsetsAction) -> anyhow::Result<ExitCode> {
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
    let only: Vec<TopicPartition> = match &sel.topic {
        Some(topic) if sel.partition.is_empty() => {
            let timeout = sel.timeout;
            probe::blocking(&cfg.kafka, move |k| probe::partitions(k, timeout))
                .await?
                .into_iter()
                .filter(|tp| &*tp.topic == topic)
                .collect()
        }
        Some(topic) => sel
            .partition
            .iter()
            .map(|p| TopicPartition::new(topic.as_str(), *p))
            .collect(),
        None if !sel.partition.is_empty() => anyhow::bail!("--partition needs --topic"),
        None => Vec::new(),
    };
    if let Some(note) = crate::ops::offsets::replay_note(&cfg.table) {
        eprintln!("{note}");
    }
    let report =
        crate::ops::offsets::set(&cfg, &only, target, sel.force, sel.dry_run, sel.timeout).await?;
    print!("{}", render::offsets_report(&report));
    Ok(ExitCode::SUCCESS)
}
