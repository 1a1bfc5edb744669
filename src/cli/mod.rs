//! The command line: its grammar ([`args`]), one function per command
//! (`commands`) and the text each prints (`render`). `main.rs` parses, sets up
//! logging and calls [`run`]; only this module and `config` know the whole
//! [`Config`].

pub mod args;
mod commands;
mod render;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

pub use args::{Cli, Command, LogFormat};
pub use commands::run;

use crate::config::{Config, RawConfig};
use crate::telemetry::logging::DEFAULT_FILTER;

/// The log filter and format for `cli`: flags first, then (for `ingest`) the
/// config file's `[log]`, then the defaults. A config that does not load is
/// reported by the command itself.
pub fn log_settings(cli: &Cli) -> (String, bool) {
    let default = match cli.command {
        // The demo's screen is its progress line and report (which counts the
        // rejected records); per-record and per-file warnings would bury them.
        Command::Demo { .. } => "error",
        _ => DEFAULT_FILTER,
    };
    let (file_level, file_json) = match &cli.command {
        Command::Ingest { config } => load_config(config)
            .map(|c| (c.log_level, c.log_json))
            .unwrap_or_default(),
        _ => (None, false),
    };
    let level = cli.log_level.clone().or(file_level);
    let json = match cli.log_format {
        Some(f) => matches!(f, LogFormat::Json),
        None => file_json,
    };
    (level.unwrap_or_else(|| default.to_owned()), json)
}

/// Read, expand (`${NAME}` from the environment) and validate a config file.
pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    let env = |name: &str| std::env::var(name).ok();
    let raw = RawConfig::load(path, &env)?;
    Ok(raw.validate()?)
}

/// A config for commands that read one table and its partitions (status, verify,
/// offsets): one that routes topics to several tables is refused with what to do.
fn load_single_table_config(path: &Path) -> anyhow::Result<Config> {
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

/// A spinner on stderr when it is a terminal; nothing otherwise (logs still go out).
fn spinner(msg: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_message(msg.to_owned());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

fn tempdir_path() -> anyhow::Result<PathBuf> {
    let base = std::env::temp_dir();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("clock before 1970")?
        .as_millis();
    Ok(base.join(format!("tributary-demo-{stamp}")))
}

/// An error and its causes joined with ": ", leaving out a cause whose text the
/// message before it already includes (many of our errors and delta-rs' print their
/// source in their own message, and would otherwise print it twice).
pub fn error_chain(e: &anyhow::Error) -> String {
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
