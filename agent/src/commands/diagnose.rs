//! `pullgate diagnose IMAGE -n NS [--service-account SA | --pod POD]`: the ladder an engineer
//! walks by hand when a pod is stuck in `ImagePullBackOff`, step by step with a ✓/✗ each — the
//! pod's or ServiceAccount's `imagePullSecrets`, each Secret's existence, type and keys against the
//! image's registry (near misses named), the credential tried, the registry's answer for the
//! manifest and the blobs, the runtime's answer and the node's cache — ending with the one most
//! likely cause and what to do. Objects come from a manifest directory (`--manifests`) or else the
//! API server; the pull is resolved with the one-shot commands' PullSet
//! ([`crate::commands::one_shot::pullset_for`]) and the agent's own resolver.

use crate::adapters::containerd_config::{HostsDir, RuntimeRegistry};
use crate::adapters::credential_plugin::{PluginError, kubelet_resolver_with_tokens};
use crate::adapters::cri::{CriClient, CriEndpoint, CriTimeouts};
use crate::adapters::registry::RegistryClient;
use crate::cli::DiagnoseArgs;
use crate::commands::one_shot::{self, OneShotError, Puller, pullset_for};
use crate::decide::canary::runner::{CanaryOutcome, CanaryRunner, Trigger};
use crate::decide::credentials::keyring::Keyring;
use crate::decide::credentials::pull_secret::{KeyRead, read_pull_secret};
use crate::decide::credentials::shown_key::shown;
use crate::decide::credentials::{CredentialResolver as _, Resolution, pull_secret_names};
use crate::decide::runtime::ImageRuntime;
use crate::model::image_ref::ImageRef;
use crate::model::inventory::{Inventory, ObjectKey, TYPE_DOCKERCFG, TYPE_DOCKERCONFIGJSON};
use crate::model::pullset::{CanaryDepth, ValidPullSet};
use crate::model::verdict::Verdict;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum DiagnoseError {
    #[error(transparent)]
    Image(#[from] crate::model::image_ref::ImageRefError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Puller(#[from] OneShotError),
    #[error(transparent)]
    Manifests(#[from] crate::adapters::files::manifests::ManifestError),
    #[error(transparent)]
    Cluster(#[from] crate::adapters::kube::source::ClusterError),
    #[error(transparent)]
    Kubeconfig(#[from] crate::adapters::kube::kubeconfig::KubeconfigError),
    #[error(transparent)]
    Registry(#[from] crate::adapters::registry::RegistryError),
    #[error("invalid --cri-endpoint: {0}")]
    CriEndpoint(String),
}

/// One rung of the ladder.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Step {
    pub step: String,
    /// `true` ✓, `false` ✗, `None` – (not applicable or skipped).
    pub ok: Option<bool>,
    pub detail: String,
}

/// The most likely cause, from the first failed rung.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Conclusion {
    pub verdict: Verdict,
    pub cause: String,
    pub action: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Diagnosis {
    pub image: String,
    pub namespace: String,
    pub steps: Vec<Step>,
    pub conclusion: Conclusion,
}

/// What the ladder is walked for: the objects, and the pull as a PullSet.
struct Subject {
    inventory: Inventory,
    set: ValidPullSet,
    /// `pod NS/NAME`, or `a pod with ServiceAccount NS/SA`.
    describe: String,
    /// `--pod`'s images (containers and image volumes); `None` without `--pod`.
    pod_images: Option<Vec<crate::model::pod_images::PodImageUse>>,
    /// ServiceAccount tokens (TokenRequest) for service-account-token plugins, with the API server.
    tokens: Option<std::sync::Arc<dyn crate::decide::credentials::ServiceAccountTokens>>,
}

pub async fn diagnose(args: DiagnoseArgs) -> Result<bool, DiagnoseError> {
    let image = ImageRef::parse(&args.image)?;
    let Subject {
        inventory,
        set,
        describe,
        pod_images,
        tokens,
    } = load(&args, &image).await?;
    let resolver = kubelet_resolver_with_tokens(&args.node_credentials, tokens)?;
    let resolution = resolver.resolve(&inventory, &set, &image).await;

    let mut steps = vec![Step {
        step: "image reference".into(),
        ok: Some(true),
        detail: format!("{image} (registry {})", image.registry),
    }];
    if let Some(uses) = &pod_images {
        steps.push(pod_image_step(&describe, uses, &image));
    }
    steps.extend(secret_steps(&inventory, &set, &describe, &image));
    steps.push(credential_step(&resolution));

    let cri = runtime_client(&args)?;
    let mut probe = RegistryClient::from_args(&args.registry)?;
    let mut mirrors = HostsDir::shared(args.registry.runtime_registry_config.clone());
    if let Some(cri) = &cri {
        // The registry-direct steps reach registries as the runtime does, as `pullgate run`.
        let version = cri.version().await.ok();
        let runtime_registry = RuntimeRegistry::discover(
            cri,
            version.as_ref(),
            args.registry.runtime_registry_config.clone(),
            &args.registry.runtime_config_file,
        )
        .await;
        mirrors = runtime_registry.mirrors();
        probe = probe.with_runtime_registry(runtime_registry);
    }
    let runner = CanaryRunner {
        probe,
        node: one_shot::node_name(),
        expiry_warning: *args.registry.expiry_warning,
        runtime: None,
        mirrors,
    };
    let ns = &set.key.namespace;
    for (name, depth) in [
        ("registry: manifest", CanaryDepth::Manifest),
        ("registry: blobs", CanaryDepth::Blobs),
    ] {
        let o = runner
            .check_image(ns, "diagnose", &image, &resolution, depth, Trigger::Manual)
            .await;
        steps.push(outcome_step(name, &o));
        if !o.verdict.is_ok() {
            break;
        }
    }
    steps.extend(runtime_steps(&set, cri, &runner, &image, &resolution).await);

    let conclusion = conclude(&steps, &resolution);
    let ok = steps.iter().all(|s| s.ok != Some(false));
    let diagnosis = Diagnosis {
        image: image.to_string(),
        namespace: set.key.namespace.clone(),
        steps,
        conclusion,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&diagnosis).unwrap_or_default()
        );
    } else {
        print!(
            "{}",
            crate::model::printable::printable_text(&render(&diagnosis, &describe))
        );
    }
    Ok(ok)
}

/// The objects, and who pulls: a pod with `--service-account` (else `default`), or in cluster mode
/// `--pod`'s own pull secrets and ServiceAccount. The namespace: `-n`, else (cluster mode) the
/// kubeconfig context's, else `default`.
async fn load(args: &DiagnoseArgs, image: &ImageRef) -> Result<Subject, DiagnoseError> {
    let with_service_account = Puller {
        service_account: args.service_account.clone(),
        pod_secrets: Vec::new(),
    };
    let as_service_account = |set: &ValidPullSet| {
        format!(
            "a pod with ServiceAccount {}/{}",
            set.key.namespace,
            set.service_account()
        )
    };
    if let Some(dir) = &args.manifests {
        let loaded = crate::adapters::files::manifests::load_dir(dir)?;
        let namespace = &args.cluster.namespace_or_default();
        let set = pullset_for(namespace, "diagnose", &with_service_account, image)?;
        return Ok(Subject {
            inventory: loaded.inventory,
            describe: as_service_account(&set),
            set,
            pod_images: None,
            tokens: None,
        });
    }
    let crate::adapters::kube::kubeconfig::Connection { client, namespace } =
        crate::adapters::kube::kubeconfig::connect(&args.cluster).await?;
    let namespace = &namespace;
    let mut pod_images = None;
    let (set, describe) = match &args.pod {
        Some(pod) => {
            let key = ObjectKey::new(namespace, pod);
            let (pod_secrets, service_account, images) =
                crate::adapters::kube::source::get_pod_pull_spec(&client, &key).await?;
            pod_images = Some(images);
            let puller = Puller {
                service_account: Some(service_account),
                pod_secrets,
            };
            (
                pullset_for(namespace, "diagnose", &puller, image)?,
                format!("pod {key}"),
            )
        }
        None => {
            let set = pullset_for(namespace, "diagnose", &with_service_account, image)?;
            let describe = as_service_account(&set);
            (set, describe)
        }
    };
    let pod_secrets: Vec<String> = set
        .spec
        .image_pull_secrets
        .iter()
        .map(|r| r.name.clone())
        .collect();
    let inventory = crate::adapters::kube::source::read_pull_objects(
        &client,
        namespace,
        set.service_account(),
        &pod_secrets,
    )
    .await;
    Ok(Subject {
        inventory,
        set,
        describe,
        pod_images,
        tokens: Some(crate::adapters::kube::token_request::TokenRequests::shared(
            client.clone(),
        )),
    })
}

/// Where the pod names the image: a container's or an image volume's (`volume NAME image REF`),
/// both pulled with the pod's pull secrets; a pod that does not name it is said (`–`), since its
/// pull secrets are then diagnosed for an image it does not pull.
fn pod_image_step(
    describe: &str,
    uses: &[crate::model::pod_images::PodImageUse],
    image: &ImageRef,
) -> Step {
    let same = |written: &str| ImageRef::parse(written).is_ok_and(|r| r == *image);
    let found: Vec<String> = uses
        .iter()
        .filter(|u| same(&u.image))
        .map(|u| format!("{} image {}", u.used_by, u.image))
        .collect();
    if found.is_empty() {
        let named: Vec<String> = uses
            .iter()
            .map(|u| format!("{} image {}", u.used_by, u.image))
            .collect();
        return Step {
            step: "pod image".into(),
            ok: None,
            detail: format!(
                "{describe} does not name {image} (it names: {}); its pull secrets are checked for it anyway",
                if named.is_empty() {
                    "nothing".to_string()
                } else {
                    named.join(", ")
                }
            ),
        };
    }
    Step {
        step: "pod image".into(),
        ok: Some(true),
        detail: format!(
            "{describe}: {} — pulled with the pod's pull secrets",
            found.join(", ")
        ),
    }
}

/// The pod rule's secrets, then each Secret: existence, type, keys against the registry.
fn secret_steps(
    inventory: &Inventory,
    set: &ValidPullSet,
    describe: &str,
    image: &ImageRef,
) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut findings = Vec::new();
    let names = pull_secret_names(inventory, set, &mut findings);
    let sa_key = ObjectKey::new(&set.key.namespace, set.service_account());
    let whose = if set.spec.image_pull_secrets.is_empty() {
        format!("ServiceAccount {sa_key}")
    } else {
        format!("{describe}'s own")
    };
    let sa_missing = findings
        .iter()
        .any(|f| f.verdict == Verdict::ServiceAccountNotFound);
    steps.push(if sa_missing {
        Step {
            step: "imagePullSecrets".into(),
            ok: Some(false),
            detail: format!("ServiceAccountNotFound: ServiceAccount {sa_key} does not exist"),
        }
    } else if names.is_empty() {
        Step {
            step: "imagePullSecrets".into(),
            ok: None,
            detail: format!(
                "{whose}: none — the kubelet pulls anonymously (or with the node's credentials)"
            ),
        }
    } else {
        Step {
            step: "imagePullSecrets".into(),
            ok: Some(true),
            detail: format!("{whose}: {}", names.join(", ")),
        }
    });
    for name in names {
        let key = ObjectKey::new(&set.key.namespace, &name);
        steps.push(secret_step(inventory, &key, image));
    }
    steps
}

fn secret_step(inventory: &Inventory, key: &ObjectKey, image: &ImageRef) -> Step {
    let step = format!("secret {key}");
    let fail = |detail: String| Step {
        step: step.clone(),
        ok: Some(false),
        detail,
    };
    if let Some(why) = inventory.forbidden.get(key) {
        return fail(format!("Forbidden: {why}"));
    }
    let Some(secret) = inventory.secrets.get(key) else {
        return fail(format!("SecretNotFound: Secret {key} does not exist"));
    };
    let entries = match read_pull_secret(secret) {
        Some((_, KeyRead::Entries(entries))) => entries,
        None => {
            return fail(format!(
                "SecretWrongType: type {:?}; the kubelet uses only {TYPE_DOCKERCONFIGJSON} and {TYPE_DOCKERCFG}",
                secret.type_
            ));
        }
        Some((data_key, KeyRead::Absent)) => {
            return fail(format!("SecretMalformed: no (or an empty) {data_key} key"));
        }
        Some((data_key, KeyRead::Unparsable(e))) => {
            return fail(format!("SecretMalformed: {data_key}: {e}"));
        }
    };
    let mut ring = Keyring::default();
    for entry in &entries {
        ring.add(&entry.key, ());
    }
    // Keys as `shown_key` shows them: no userinfo, nothing of an unparseable key.
    let keys: Vec<String> = entries.iter().map(|e| shown(&e.key)).collect();
    let registry = &image.registry;
    let matching: Vec<String> = ring
        .lookup(&image.name())
        .into_iter()
        .map(|f| shown(&f.key))
        .collect();
    if matching.is_empty() {
        let near: Vec<String> = ring
            .near_misses(&image.name())
            .into_iter()
            .map(|(f, why)| format!("`{}` ({why})", shown(&f.key)))
            .collect();
        let near = if near.is_empty() {
            String::new()
        } else {
            format!("; near miss: {}", near.join(", "))
        };
        return fail(format!(
            "HostMismatch: keys [{}], none matches {}{near}",
            keys.join(", "),
            image.name()
        ));
    }
    Step {
        step,
        ok: Some(true),
        detail: format!(
            "{} with keys [{}]; matches {registry}: {}",
            secret.type_,
            keys.join(", "),
            matching.join(", ")
        ),
    }
}

fn credential_step(resolution: &Resolution) -> Step {
    if let Some(blocked) = &resolution.blocked {
        return Step {
            step: "credential".into(),
            ok: Some(false),
            detail: format!(
                "{}: the kubelet fails the pull before trying anything: {}",
                blocked.verdict, blocked.message
            ),
        };
    }
    match resolution.candidates.first() {
        None => Step {
            step: "credential".into(),
            ok: None,
            detail: "none matches: anonymous".into(),
        },
        Some(c) => Step {
            step: "credential".into(),
            ok: Some(true),
            detail: format!(
                "{} (user {}){}",
                c.source,
                c.username,
                if resolution.candidates.len() > 1 {
                    format!(
                        ", then {} more in the kubelet's order",
                        resolution.candidates.len() - 1
                    )
                } else {
                    String::new()
                }
            ),
        },
    }
}

fn outcome_step(name: &str, o: &CanaryOutcome) -> Step {
    Step {
        step: name.into(),
        ok: Some(o.verdict.is_ok()),
        detail: if o.verdict.is_ok() {
            format!(
                "{} ({} request(s), {} ms) via {}",
                o.message,
                o.requests,
                o.duration_ms,
                o.credential.as_deref().unwrap_or("anonymous")
            )
        } else {
            format!("{}: {}", o.verdict, o.message)
        },
    }
}

/// The node's cache (`ImageStatus`) and the runtime's answer (`PullImage`).
/// The runtime `--cri-endpoint` names, `None` with `off`.
fn runtime_client(args: &DiagnoseArgs) -> Result<Option<CriClient>, DiagnoseError> {
    if args.cri_endpoint.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let endpoint: CriEndpoint = args
        .cri_endpoint
        .parse()
        .map_err(|e: crate::adapters::cri::CriError| DiagnoseError::CriEndpoint(e.to_string()))?;
    Ok(Some(CriClient::new(
        endpoint,
        CriTimeouts {
            reconnect_budget: std::time::Duration::from_secs(2),
            ..CriTimeouts::default()
        },
    )))
}

async fn runtime_steps(
    set: &ValidPullSet,
    cri: Option<CriClient>,
    runner: &CanaryRunner<RegistryClient>,
    image: &ImageRef,
    resolution: &Resolution,
) -> Vec<Step> {
    let Some(cri) = cri else {
        return vec![Step {
            step: "runtime".into(),
            ok: None,
            detail: "skipped (--cri-endpoint off)".into(),
        }];
    };
    let cache = match cri.image_status(&image.pull_reference()).await {
        Ok(Some(present)) => Step {
            step: "node cache".into(),
            ok: Some(true),
            detail: format!(
                "present ({}): a pod with imagePullPolicy IfNotPresent starts without pulling (unless the kubelet re-verifies credentials)",
                present.id
            ),
        },
        Ok(None) => Step {
            step: "node cache".into(),
            ok: None,
            detail: "absent: the kubelet will pull".into(),
        },
        Err(e) => {
            return vec![Step {
                step: "node cache".into(),
                ok: None,
                detail: format!("runtime not reachable here ({e}); run diagnose on the node"),
            }];
        }
    };
    let runner = CanaryRunner {
        probe: runner.probe.clone(),
        node: runner.node.clone(),
        expiry_warning: runner.expiry_warning,
        runtime: Some(std::sync::Arc::new(cri) as std::sync::Arc<dyn ImageRuntime>),
        mirrors: runner.mirrors.clone(),
    };
    let pulled = runner
        .check_runtime(
            &set.key.namespace,
            "diagnose",
            image,
            resolution,
            Trigger::Manual,
        )
        .await;
    vec![cache, outcome_step("runtime: PullImage", &pulled)]
}

/// The first failed rung is the most likely cause.
pub fn conclude(steps: &[Step], resolution: &Resolution) -> Conclusion {
    let Some(failed) = steps.iter().find(|s| s.ok == Some(false)) else {
        return Conclusion {
            verdict: Verdict::Ok,
            cause: "every rung holds: this node can pull the image with the pod's credentials"
                .into(),
            action: "if a pod still fails, compare its exact image string and namespace with these"
                .into(),
        };
    };
    let verdict = Verdict::ALL
        .into_iter()
        .filter(|v| !v.is_ok())
        .find(|v| failed.detail.starts_with(v.as_str()))
        .or_else(|| {
            resolution
                .findings
                .iter()
                .map(|f| f.verdict)
                .find(|v| !v.is_ok())
        })
        .unwrap_or(Verdict::RuntimeError);
    Conclusion {
        verdict,
        cause: format!("{}: {}", failed.step, failed.detail),
        action: verdict.hint().to_string(),
    }
}

fn render(d: &Diagnosis, who: &str) -> String {
    let mut out = format!(
        "diagnose {} for {who} in namespace {}\n\n",
        d.image, d.namespace
    );
    for s in &d.steps {
        let mark = match s.ok {
            Some(true) => "✓",
            Some(false) => "✗",
            None => "–",
        };
        out.push_str(&format!("{mark} {:<20} {}\n", s.step, s.detail));
    }
    out.push_str(&format!(
        "\nmost likely cause: {}\n  {}\nwhat to do: {}\n",
        d.conclusion.verdict, d.conclusion.cause, d.conclusion.action
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_image_step_names_an_image_volume() {
        use crate::model::pod_images::PodImageUse;
        let uses = [
            PodImageUse {
                used_by: "container web".into(),
                image: "r.io/team/web:1".into(),
            },
            PodImageUse {
                used_by: "volume models".into(),
                image: "r.io/team/models:v3".into(),
            },
        ];
        let image = ImageRef::parse("r.io/team/models:v3").unwrap();
        let s = pod_image_step("pod team/web-0", &uses, &image);
        assert_eq!(s.ok, Some(true));
        assert_eq!(
            s.detail,
            "pod team/web-0: volume models image r.io/team/models:v3 — pulled with the pod's pull secrets"
        );
        let other = ImageRef::parse("r.io/team/other:1").unwrap();
        let s = pod_image_step("pod team/web-0", &uses, &other);
        assert_eq!(s.ok, None);
        assert!(s.detail.contains("does not name r.io/team/other:1 (it names: container web image r.io/team/web:1, volume models image r.io/team/models:v3)"), "{}", s.detail);
    }

    fn step(name: &str, ok: Option<bool>, detail: &str) -> Step {
        Step {
            step: name.into(),
            ok,
            detail: detail.into(),
        }
    }

    #[test]
    fn the_first_failed_rung_is_the_cause() {
        let none = Resolution::default();
        for (steps, verdict) in [
            (vec![step("image reference", Some(true), "x")], Verdict::Ok),
            (
                vec![
                    step("imagePullSecrets", Some(true), "a"),
                    step(
                        "secret ns/a",
                        Some(false),
                        "SecretNotFound: Secret ns/a does not exist",
                    ),
                    step("registry: manifest", Some(false), "Unauthorized: 401"),
                ],
                Verdict::SecretNotFound,
            ),
            (
                vec![
                    step("secret ns/a", Some(true), "ok"),
                    step("registry: manifest", Some(false), "Unauthorized: 401"),
                ],
                Verdict::Unauthorized,
            ),
            (
                vec![step("secret ns/a", Some(false), "HostMismatch: keys [r]")],
                Verdict::HostMismatch,
            ),
            (
                vec![
                    step("node cache", None, "absent"),
                    step("runtime: PullImage", Some(false), "something new"),
                ],
                Verdict::RuntimeError,
            ),
        ] {
            let c = conclude(&steps, &none);
            assert_eq!(c.verdict, verdict, "{steps:?}");
            if verdict != Verdict::Ok {
                assert_eq!(c.action, verdict.hint());
            }
        }
    }
}
