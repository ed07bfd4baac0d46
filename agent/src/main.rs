use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    pullgate::main(pullgate::cli::Cli::parse_args()).await
}
