//! `pullgate check IMAGE…`: a one-shot registry-direct canary for people on call.

use crate::adapters::cri::{CriClient, CriTimeouts};
use crate::adapters::registry::{Platform, RegistryClient, RegistryConfig, RegistryError};
use crate::cli::{CheckArgs, RegistryArgs};
use crate::commands::auth::{AuthError, build_resolver, resolve_selection};
use crate::decide::canary::runner::{CanaryOutcome, CanaryRunner, Trigger};
use crate::model::image_ref::ImageRef;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Image(#[from] crate::model::image_ref::ImageRefError),
}

/// The registry client the flags describe.
pub fn registry_client(args: &RegistryArgs) -> Result<RegistryClient, RegistryError> {
    RegistryClient::new(RegistryConfig {
        plain_http: args.insecure_registries.clone(),
        platform: args.platform.clone().unwrap_or_else(Platform::host),
        request_timeout: *args.registry_timeout,
        ..RegistryConfig::default()
    })
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
    let resolver = build_resolver(&node_credentials)?;
    let runner = CanaryRunner {
        probe: registry_client(&registry)?,
        node: std::env::var("NODE_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "local".into()),
        expiry_warning: *registry.expiry_warning,
        runtime: runtime.then(|| {
            std::sync::Arc::new(CriClient::new(cri_endpoint, CriTimeouts::default()))
                as std::sync::Arc<dyn crate::decide::runtime::ImageRuntime>
        }),
        mirrors: crate::adapters::containerd_config::HostsDir::shared(
            registry.runtime_registry_config.clone(),
        ),
    };
    let namespace = selection.namespace.clone().unwrap_or_default();
    let pullset = selection.pullset.clone().unwrap_or_default();
    let mut all_ok = true;
    for image in images {
        let image = ImageRef::parse(&image)?;
        let resolution = resolve_selection(&selection, &resolver, &image).await?;
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
        for outcome in outcomes {
            all_ok &= outcome.verdict.is_ok();
            if json {
                println!("{}", serde_json::to_string(&outcome).unwrap_or_default());
            } else {
                print!("{}", human(&outcome));
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
