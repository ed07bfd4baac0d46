//! Tracing set-up, once: stderr, `RUST_LOG` with a quiet default for noisy dependencies, and a cap
//! on the dependencies that see credentials, which no `RUST_LOG` lifts.

use crate::cli::LogFormat;
use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

const DEFAULT_FILTER: &str =
    "info,h2=warn,hyper=warn,hyper_util=warn,tower=warn,tonic=warn,notify=warn";

/// Always applied, whatever `RUST_LOG` says (even `RUST_LOG=trace` or `RUST_LOG=hyper::proto=trace`:
/// a target's cap covers every module under it). Each of these sees request or response bodies or
/// headers that carry credentials below the level given:
///
/// - `kube_client::client` at ERROR: kube logs the whole response body at WARN when it cannot
///   decode one, and a Secret's body carries its data;
/// - `oci_client` at INFO: at DEBUG it logs the token endpoint's response body (the bearer token);
/// - `reqwest`, `hyper`, `hyper_util`, `h2`, `tower`, `tower_http`, `tonic`, `rustls` at INFO: at
///   DEBUG/TRACE they log connections, frames and headers (`Authorization`, the CRI's `AuthConfig`).
///
/// Our own targets (`pullgate`) and every other dependency follow `RUST_LOG` unchanged.
pub const CAPPED_TARGETS: &[(&str, Level)] = &[
    ("kube_client::client", Level::ERROR),
    ("oci_client", Level::INFO),
    ("reqwest", Level::INFO),
    ("hyper", Level::INFO),
    ("hyper_util", Level::INFO),
    ("h2", Level::INFO),
    ("tower", Level::INFO),
    ("tower_http", Level::INFO),
    ("tonic", Level::INFO),
    ("rustls", Level::INFO),
];

/// The cap as a filter: the levels above for those targets, everything for the rest (which
/// `RUST_LOG` then filters).
fn cap() -> Targets {
    Targets::new()
        .with_default(Level::TRACE)
        .with_targets(CAPPED_TARGETS.iter().copied())
}

pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // Both filters must enable an event. try_init: a second call (tests) keeps the first
    // subscriber.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(cap())
            .try_init(),
        LogFormat::Text => builder.finish().with(cap()).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_seeing_targets_are_capped() {
        let cap = cap();
        for (target, level, enabled) in [
            ("oci_client::client", Level::DEBUG, false),
            ("oci_client", Level::INFO, true),
            ("reqwest::connect", Level::TRACE, false),
            ("hyper::proto::h1::role", Level::TRACE, false),
            ("hyper_util::client::legacy", Level::DEBUG, false),
            ("h2::codec", Level::TRACE, false),
            ("tonic::transport", Level::DEBUG, false),
            ("tower::buffer", Level::DEBUG, false),
            ("rustls::client", Level::DEBUG, false),
            ("rustls::client", Level::WARN, true),
            ("kube_client::client", Level::WARN, false),
            ("kube_client::client::builder", Level::WARN, false),
            ("kube_client::client", Level::ERROR, true),
            // Targets match by prefix: a crate whose name starts like a capped one is capped too.
            ("hyperlocal", Level::DEBUG, false),
            ("kube_runtime", Level::DEBUG, true),
            ("pullgate::adapters::registry", Level::TRACE, true),
            ("pullgate", Level::DEBUG, true),
        ] {
            assert_eq!(
                cap.would_enable(target, &level),
                enabled,
                "{target} {level}"
            );
        }
    }
}
