//! The command line's grammar: commands, their flags and what they parse into.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "tributary",
    version,
    about = "Stream Kafka topics into Delta Lake tables, exactly once"
)]
pub struct Cli {
    /// Log level or filter (e.g. `debug`, `tributary=debug,librdkafka=warn`); RUST_LOG
    /// overrides it. Default: `info` for tributary and librdkafka, `warn` for the
    /// libraries below (`error` in `demo`, whose report counts what was rejected).
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// Log format (default: the config's log.format, else text).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
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
        /// Attempts per partition when other writers' commits (upserts) touch
        /// its files first; a partition still losing is left for the next run.
        #[arg(long, default_value_t = 10)]
        max_attempts: u32,
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
    /// Restore the table to an earlier version together with its stored offsets,
    /// so the daemon replays exactly the records written after it.
    Restore(RestoreArgs),
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

/// `tributary restore`'s flags.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("restore_to").required(true)))]
pub struct RestoreArgs {
    /// The TOML configuration file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// The table version to restore.
    #[arg(long, group = "restore_to")]
    pub to_version: Option<u64>,
    /// Restore the last version committed at or before this time (RFC 3339,
    /// e.g. 2025-03-01T00:00:00Z).
    #[arg(long, group = "restore_to", value_parser = parse_rfc3339_ms)]
    pub to_timestamp: Option<i64>,
    /// Proceed even if the consumer group has active members.
    #[arg(long)]
    pub force: bool,
    /// Print the plan (files restored and removed, offsets per partition,
    /// records to replay) without committing it.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for the brokers.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Subcommand, Debug)]
pub enum ConfigAction {
    /// Print a complete, commented configuration to start from.
    Example,
}

#[derive(clap::Args, Debug)]
pub struct TableArgs {
    /// Table URI (s3://bucket/path, file:///path or a local path); or use --config.
    #[arg(required_unless_present = "config")]
    pub uri: Option<String>,
    /// Take the table and storage settings from this config file.
    #[arg(long, short, conflicts_with = "uri")]
    pub config: Option<PathBuf>,
    /// Object-store option KEY=VALUE, repeatable (e.g. aws_endpoint_url=http://127.0.0.1:9000).
    #[arg(long = "storage-option")]
    pub storage_options: Vec<String>,
}

/// Open the table the arguments name.
impl TableArgs {
    pub async fn open(&self) -> anyhow::Result<deltalake::DeltaTable> {
        let (uri, storage) = match (&self.uri, &self.config) {
            (_, Some(config)) => {
                let cfg = super::load_config(config)?;
                if let Some(t) = &cfg.table.uri_template {
                    anyhow::bail!(
                        "table.uri `{t}` is a per-topic template; name one table: pass its URI \
                         (with --storage-option) instead of --config"
                    );
                }
                (cfg.table.uri, cfg.storage)
            }
            (Some(uri), None) => {
                let uri = crate::config::parse_table_uri(uri)?;
                let storage =
                    crate::ops::tables::parse_storage_options(&uri, &self.storage_options)?;
                (uri, storage)
            }
            (None, None) => anyhow::bail!("name a table URI or --config FILE"),
        };
        Ok(crate::ops::tables::open(&uri, &storage).await?)
    }
}

#[derive(Subcommand, Debug)]
pub enum OffsetsAction {
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
pub struct OffsetsSelection {
    /// The TOML configuration file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Topic (default: all configured topics).
    #[arg(long)]
    pub topic: Option<String>,
    /// Partition numbers (comma separated; default: all of the topic's).
    #[arg(long, value_delimiter = ',')]
    pub partition: Vec<i32>,
    /// Proceed even if the consumer group has active members.
    #[arg(long)]
    pub force: bool,
    /// Show the change without committing it.
    #[arg(long)]
    pub dry_run: bool,
    /// How long to wait for the brokers.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// An RFC 3339 time as milliseconds since the epoch.
pub fn parse_rfc3339_ms(text: &str) -> Result<i64, NotATime> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|source| NotATime {
            text: text.to_owned(),
            source,
        })
}

/// A `--to-timestamp` that is not an RFC 3339 time.
#[derive(Debug, thiserror::Error)]
#[error("`{text}` is not an RFC 3339 time such as 2025-03-01T00:00:00Z: {source}")]
pub struct NotATime {
    text: String,
    source: chrono::ParseError,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README's table of commands and the command line name the same
    /// commands (`config` and `help` aside: README shows `config example` in
    /// prose).
    #[test]
    fn the_readme_lists_every_command_and_only_commands_that_exist() {
        use clap::CommandFactory;
        let readme = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"),
        )
        .unwrap();
        let table = readme.split("| command | does |").nth(1).unwrap();
        let table = table.split("\n\n").next().unwrap();
        let mut listed: Vec<String> = table
            .lines()
            .filter_map(|l| l.strip_prefix("| "))
            .filter_map(|l| l.split(" |").next())
            .flat_map(|names| {
                names
                    .split(", ")
                    .map(|n| n.trim_matches('`').to_owned())
                    .collect::<Vec<_>>()
            })
            .filter(|n| !n.starts_with('-'))
            .collect();
        listed.sort();
        let mut commands: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .filter(|n| n != "config")
            .collect();
        commands.sort();
        assert_eq!(listed, commands);
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
    fn restore_takes_a_version_or_a_time_not_both() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(
                ["tributary", "restore", "--config", "c.toml"]
                    .iter()
                    .chain(args),
            )
        };
        let Command::Restore(a) = parse(&["--to-version", "7", "--dry-run"]).unwrap().command
        else {
            panic!("not restore");
        };
        assert_eq!(
            (a.to_version, a.to_timestamp, a.dry_run, a.force),
            (Some(7), None, true, false)
        );
        let Command::Restore(a) = parse(&["--to-timestamp", "2025-06-15T15:07:50Z", "--force"])
            .unwrap()
            .command
        else {
            panic!("not restore");
        };
        assert_eq!((a.to_timestamp, a.force), (Some(1_750_000_070_000), true));
        assert!(parse(&[]).is_err(), "a target is required");
        assert!(
            parse(&[
                "--to-version",
                "1",
                "--to-timestamp",
                "2025-06-15T15:07:50Z"
            ])
            .is_err()
        );
    }
}
