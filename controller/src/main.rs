//! `sluice-controller`: reconciles StreamJobs into worker StatefulSets. The work is in the
//! library (`lib.rs`); this only sets up logging and runs the command.

use std::process::ExitCode;

use clap::Parser;
use sluice_controller::cli::{Cli, run};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    sluice_controller::telemetry::init(cli.log_format, &cli.log);
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
