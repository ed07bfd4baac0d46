//! `pullgate check IMAGE…`: one-shot canaries for people on call — registry-direct, and with
//! `--runtime` also through the container runtime (CRI `PullImage`) — with the credentials the
//! selected source gives ([`crate::commands::one_shot::select`]).

use crate::adapters::containerd_config::{HostsDir, RuntimeRegistry};
use crate::adapters::credential_plugin::{PluginError, kubelet_resolver_with_tokens};
use crate::adapters::cri::{CriClient, CriTimeouts};
use crate::adapters::registry::{RegistryClient, RegistryError};
use crate::cli::CheckArgs;
use crate::commands::one_shot::{self, OneShotError, select};
use crate::decide::canary::runner::{CanaryOutcome, CanaryRunner, Trigger};
use crate::model::image_ref::ImageRef;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Selection(#[from] OneShotError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Image(#[from] crate::model::image_ref::ImageRefError),
}

/// Checks every image; `Ok(true)` when all are `Ok`.
pub async fn check(args: CheckArgs) -> Result<bool, CheckError> {
    let CheckArgs {
        images,
        selection,
        node_credentials,
        registry,
        depth,
        runtime,
        cri_endpoint,
        json,
    } = args;
    let cri =
        runtime.then(|| std::sync::Arc::new(CriClient::new(cri_endpoint, CriTimeouts::default())));
    let mut probe = RegistryClient::from_args(&registry)?;
    let mut mirrors = HostsDir::shared(registry.runtime_registry_config.clone());
    if let Some(cri) = &cri {
        // With the runtime at hand, the registry-direct canary reaches registries as it does
        // (its config_path, its release line's host walk), as `pullgate run` does.
        let version = cri.version().await.ok();
        let runtime_registry = RuntimeRegistry::discover(
            cri,
            version.as_ref(),
            registry.runtime_registry_config.clone(),
            &registry.runtime_config_file,
        )
        .await;
        mirrors = runtime_registry.mirrors();
        probe = probe.with_runtime_registry(runtime_registry);
    }
    let runner = CanaryRunner {
        probe,
        node: one_shot::node_name(),
        expiry_warning: *registry.expiry_warning,
        runtime: cri.map(|c| c as std::sync::Arc<dyn crate::decide::runtime::ImageRuntime>),
        mirrors,
    };
    let selected = select(&selection).await?;
    // Cluster objects: the providers in service-account token mode get real tokens.
    let resolver = kubelet_resolver_with_tokens(&node_credentials, selected.tokens())?;
    let (namespace, pullset) = (selected.namespace.clone(), selected.pullset.clone());
    let mut all_ok = true;
    for image in images {
        let image = ImageRef::parse(&image)?;
        let resolution = selected.resolve(&resolver, &image).await?;
        let outcome = runner
            .check_image(
                &namespace,
                &pullset,
                &image,
                &resolution,
                depth.into(),
                Trigger::Manual,
            )
            .await;
        let mut outcomes = vec![outcome];
        if runtime {
            outcomes.push(
                runner
                    .check_runtime(&namespace, &pullset, &image, &resolution, Trigger::Manual)
                    .await,
            );
        }
        for mut outcome in outcomes {
            all_ok &= outcome.verdict.is_ok();
            // The message quotes the registry or runtime: no control character reaches the
            // terminal, in text or (once a reader decodes it) in JSON.
            outcome.message = crate::model::printable::printable_text(&outcome.message);
            if json {
                println!("{}", serde_json::to_string(&outcome).unwrap_or_default());
            } else {
                print!(
                    "{}",
                    crate::model::printable::printable_text(&human(&outcome))
                );
            }
        }
    }
    Ok(all_ok)
}

fn human(o: &CanaryOutcome) -> String {
    let mark = if o.verdict.is_ok() { "✓" } else { "✗" };
    let mut out = format!("{mark} {}  {}  {}\n", o.image, o.verdict, o.message);
    if let Some(c) = &o.credential {
        out.push_str(&format!("    credential: {c}\n"));
    }
    match o.path {
        crate::decide::canary::runner::CanaryPath::Registry => out.push_str(&format!(
            "    registry-direct, depth {}: {} request(s), {} byte(s), {} ms\n",
            o.depth, o.requests, o.bytes, o.duration_ms
        )),
        crate::decide::canary::runner::CanaryPath::Runtime => out.push_str(&format!(
            "    through the runtime (CRI PullImage), {} ms\n",
            o.duration_ms
        )),
    }
    if let Some(h) = o.hint {
        out.push_str(&format!("    what to check: {h}\n"));
    }
    for w in &o.warnings {
        out.push_str(&format!("    warning: {w}\n"));
    }
    out
}
