//! The `tributary` binary, a thin shell: parse the command line, set up logging,
//! run the command (see `tributary::cli`), and turn its outcome into an exit code.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tributary::cli::{self, Cli};
use tributary::telemetry::logging;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (level, json) = cli::log_settings(&cli);
    logging::init(&level, json);
    logging::contain_known_panics();
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
    let code = match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", cli::error_chain(&e));
            ExitCode::FAILURE
        }
    };
    // A commit abandoned at shutdown (storage down) may still be inside a
    // blocking call; do not wait for it: its outcome is read from the table on
    // the next start.
    runtime.shutdown_timeout(Duration::from_secs(2));
    code
}
