//! pullgate: a node agent that keeps a cluster's critical images present and proves that the
//! registry credentials pods will use still work.
//!
//! The folders are the architecture (ARCHITECTURE.md is the map):
//!
//! - [`model`]: plain data (image references, the PullSet, inventory and snapshot, verdicts, outcomes);
//! - [`decide`]: pure rules over the model, tested with data tables; no adapter crate, no process;
//! - [`adapters`]: the CRI, registries, containerd's config, credential plugins, the API server,
//!   files, and what the agent serves; each the only module that knows its crate;
//! - [`daemon`]: `pullgate run`, its loops and their wiring;
//! - [`commands`]: the one-shot commands (`auth`, `check`, `diagnose`, `audit`, `status`).

pub mod adapters;
pub mod cli;
pub mod commands;
pub mod daemon;
pub mod decide;
pub mod model;
#[cfg(test)]
mod parsers_smoke;

use std::process::ExitCode;

/// Runs the parsed command line; the binary's `main` is only this call.
pub async fn main(cli: cli::Cli) -> ExitCode {
    daemon::telemetry::init(cli.log.log_format);
    match cli.command {
        cli::Command::Run(args) => match daemon::run::run(*args).await {
            Ok(daemon::run::RunOutcome::AllOk | daemon::run::RunOutcome::Stopped) => {
                ExitCode::SUCCESS
            }
            Ok(daemon::run::RunOutcome::SomeFailed) => ExitCode::from(1),
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("pullgate: {e}");
                ExitCode::from(2)
            }
        },
        cli::Command::Status(args) => exit(commands::status::status(args).await),
        cli::Command::Canary(args) => exit(commands::status::canary(args).await),
        cli::Command::Diagnose(args) => exit(commands::diagnose::diagnose(args).await),
        cli::Command::Audit(args) => exit(commands::audit::audit(args).await),
        cli::Command::Crd => {
            print!("{}", model::pullset::crd_yaml());
            ExitCode::SUCCESS
        }
        cli::Command::Check(args) => exit(commands::check::check(args).await),
        cli::Command::Auth(cli::AuthArgs {
            command: cli::AuthCommand::Resolve(args),
        }) => exit(commands::auth::resolve(args).await),
    }
}

/// 0 when all is well, 1 when the command ran and found something wrong, 2 when it could not run.
fn exit<E: std::fmt::Display>(result: Result<bool, E>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("pullgate: {e}");
            ExitCode::from(2)
        }
    }
}
