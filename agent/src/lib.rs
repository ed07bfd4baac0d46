//! pullgate: a node agent that keeps a cluster's critical images present and proves that the
//! registry credentials pods will use still work.
//!
//! Decisions live in plain modules (`image_ref`, `pullset`, `credentials`, `desired`, `prepull`,
//! `verdict`) that import neither kube's client nor tonic; adapters (`cri`, `source`, `report`) are
//! the only modules that know their crates' types. See ARCHITECTURE.md.

pub mod audit;
pub mod auth;
pub mod canary;
pub mod check;
pub mod cli;
pub mod conditions;
pub mod credentials;
pub mod cri;
pub mod desired;
pub mod diagnose;
pub mod event_policy;
pub mod event_recorder;
pub mod gate;
pub mod http_endpoints;
pub mod image_ref;
pub mod inventory;
pub mod local_api;
pub mod metrics;
pub mod node;
pub mod node_report;
pub mod node_status;
pub mod node_taint;
pub mod outcome;
#[cfg(test)]
mod parsers_smoke;
pub mod prepull;
pub mod pullset;
pub mod registry;
pub mod report;
pub mod run;
pub mod runtime;
pub mod runtime_config;
pub mod secret_scrub;
pub mod source;
pub mod status_board;
pub mod status_cmd;
pub mod telemetry;
pub mod verdict;

use std::process::ExitCode;

/// Runs the parsed command line; the binary's `main` is only this call.
pub async fn main(cli: cli::Cli) -> ExitCode {
    telemetry::init(cli.log.log_format);
    match cli.command {
        cli::Command::Run(args) => match run::run(*args).await {
            Ok(run::RunOutcome::AllOk | run::RunOutcome::Stopped) => ExitCode::SUCCESS,
            Ok(run::RunOutcome::SomeFailed) => ExitCode::from(1),
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("pullgate: {e}");
                ExitCode::from(2)
            }
        },
        cli::Command::Status(args) => exit(status_cmd::status(args).await),
        cli::Command::Canary(args) => exit(status_cmd::canary(args).await),
        cli::Command::Diagnose(args) => exit(diagnose::diagnose(args).await),
        cli::Command::Audit(args) => exit(audit::audit(args).await),
        cli::Command::Crd => {
            print!("{}", pullset::crd_yaml());
            ExitCode::SUCCESS
        }
        cli::Command::Check(args) => exit(check::check(args).await),
        cli::Command::Auth(cli::AuthArgs {
            command: cli::AuthCommand::Resolve(args),
        }) => exit(auth::resolve(args).await),
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
