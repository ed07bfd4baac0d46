//! Tracing set-up, once: stderr, `RUST_LOG` with a quiet default for noisy dependencies.

use crate::cli::LogFormat;
use tracing_subscriber::EnvFilter;

const DEFAULT_FILTER: &str =
    "info,h2=warn,hyper=warn,hyper_util=warn,tower=warn,tonic=warn,notify=warn";

/// Always applied, whatever `RUST_LOG` says: kube's client logs the whole response body at WARN
/// when it cannot decode one, and a Secret's body carries its data.
const NEVER_LOG_BODIES: &str = "kube_client::client=error";

pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let filter = match NEVER_LOG_BODIES.parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // try_init: a second call (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
