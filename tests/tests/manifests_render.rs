#![allow(clippy::unwrap_used)]
//! The Kubernetes manifests under `manifests/`, as a cluster receives them: every kustomization
//! rendered by a real `kubectl kustomize` (`pullgate_testenv::kustomize`), every object of every
//! rendering and every YAML file deserialized into its `k8s-openapi` type (a field the type does
//! not know fails the test, so a misspelt or misplaced field cannot hide), every file used, and
//! the properties the deployment promises checked on the rendered objects: least-privilege RBAC,
//! the per-namespace opt-in, the DaemonSet's placement, security, probes, resources and rollout.
//! The admission policy is `manifests_admission.rs`.
//!
//! Values are cross-checked against each other and against the agent's own command line (clap),
//! not against constants copied from the YAML: the CRI socket's host path is the agent's default
//! `--cri-endpoint`, every `PULLGATE_*` variable is one of `pullgate run`'s flags, the PullSet
//! rule names the CRD's group and plural.
//!
//! No kubectl: the tests fail, naming `cargo xtask deps`, which installs one.

use clap::CommandFactory as _;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pullgate_testenv::kustomize::{
    ManifestFiles, Obj, agent_identity, all_of, is_qualified_name, one_of, render,
    render_with_components, typed,
};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path};

/// The node conditions the agent writes (and the only ones the admission policy lets it write).
const NODE_CONDITIONS: [&str; 2] = ["CriticalImagesReady", "PullCredentialsValid"];
/// The kustomizations a user applies directly.
const ROOTS: [&str; 5] = [
    "base",
    "namespace-access",
    "overlays/example",
    "overlays/example/team-payments",
    "monitoring",
];
/// Standalone examples: applied with `kubectl apply -f`, not part of any kustomization.
const EXAMPLES_DIR: &str = "examples";
/// Opt-in kustomize Components (`kind: Component`), one a directory: an installation's
/// kustomization names them under `components:`; each renders on top of `base`.
const COMPONENTS_DIR: &str = "components";

/// Every object is one of the kinds below, and parses as its type.
fn check_typed(obj: &Obj) {
    match (obj.api_version(), obj.kind()) {
        ("v1", "Namespace") => drop(typed::<Namespace>(obj)),
        ("v1", "ServiceAccount") => drop(typed::<ServiceAccount>(obj)),
        ("v1", "ConfigMap") => drop(typed::<ConfigMap>(obj)),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => drop(typed::<ClusterRole>(obj)),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            drop(typed::<ClusterRoleBinding>(obj));
        }
        ("rbac.authorization.k8s.io/v1", "Role") => drop(typed::<Role>(obj)),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => drop(typed::<RoleBinding>(obj)),
        ("apps/v1", "DaemonSet") => drop(typed::<DaemonSet>(obj)),
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy") => {
            drop(typed::<ValidatingAdmissionPolicy>(obj));
        }
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding") => {
            drop(typed::<ValidatingAdmissionPolicyBinding>(obj));
        }
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            drop(typed::<CustomResourceDefinition>(obj));
        }
        ("v1", "Secret") => drop(typed::<Secret>(obj)),
        // Not a k8s-openapi type: checked field by field in podmonitor_example.
        ("monitoring.coreos.com/v1", "PodMonitor") => {}
        // Not a k8s-openapi type: checked by tests/tests/monitoring.rs (promtool).
        ("monitoring.coreos.com/v1", "PrometheusRule") => {}
        // Not a k8s-openapi type: checked field by field in node_readiness_rule_example.
        ("readiness.node.x-k8s.io/v1alpha1", "NodeReadinessRule") => {}
        (api_version, kind) => panic!(
            "{}: {api_version} {kind} is not a kind this test knows: add it to check_typed",
            obj.what()
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// What the kustomizations reference (kubectl renders them; this only finds the files they use)
// ---------------------------------------------------------------------------------------------

/// The fields of a Kustomization that this test follows to the files they name; a kustomization
/// using another field that names files (generators, components, …) fails here until it is taught.
const KUSTOMIZATION_FIELDS: [&str; 8] = [
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "patches",
    "labels",
    // Names JSON files (monitoring's dashboard), no YAML: tests/tests/monitoring.rs checks them.
    "configMapGenerator",
    // Names an image, no file (the agent's; tests/tests/agent_image.rs checks an override).
    "images",
];

fn kustomization<'a>(m: &'a ManifestFiles, dir: &str) -> &'a Obj {
    let file = format!("{dir}/kustomization.yaml");
    let docs = m.docs(&file);
    assert_eq!(docs.len(), 1, "{file}: one document expected");
    let k = &docs[0];
    let expected = if is_component(dir) {
        ("kustomize.config.k8s.io/v1alpha1", "Component")
    } else {
        ("kustomize.config.k8s.io/v1beta1", "Kustomization")
    };
    assert_eq!(
        (k.api_version(), k.kind()),
        expected,
        "{file}: apiVersion/kind"
    );
    for field in k.value.as_object().unwrap().keys() {
        assert!(
            KUSTOMIZATION_FIELDS.contains(&field.as_str()),
            "{file}: field `{field}` is not one this test follows: teach every_manifest_parses_and_every_file_is_used about it"
        );
    }
    k
}

fn is_component(dir: &str) -> bool {
    dir.starts_with(&format!("{COMPONENTS_DIR}/"))
}

/// `reference`, written in the kustomization of `dir`, relative to `manifests/`.
fn resolve(m: &ManifestFiles, dir: &str, reference: &str) -> String {
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for c in Path::new(reference).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str().unwrap()),
            Component::ParentDir => {
                assert!(
                    parts.pop().is_some(),
                    "{dir}/kustomization.yaml: {reference} leaves manifests/"
                );
            }
            Component::CurDir => {}
            _ => panic!("{dir}/kustomization.yaml: {reference} must be a relative path"),
        }
    }
    let rel = parts.join("/");
    assert!(
        m.root.join(&rel).exists(),
        "{dir}/kustomization.yaml: {reference} does not exist ({rel})"
    );
    rel
}

fn array<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn strings(v: &Value, pointer: &str, at: &str) -> Vec<String> {
    array(v, pointer)
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("{at}: {pointer} must list strings"))
                .to_owned()
        })
        .collect()
}

/// (API group, resource, verb) for every verb of every rule, with the rule's resourceNames.
fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

fn triples(list: &[(&str, &str, &[&str])]) -> BTreeSet<(String, String, String)> {
    list.iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(|v| ((*g).into(), (*r).into(), (*v).into()))
        })
        .collect()
}

fn assert_no_wildcards(rules: &[PolicyRule], what: &str) {
    for (i, rule) in rules.iter().enumerate() {
        let words = rule
            .api_groups
            .iter()
            .flatten()
            .chain(rule.resources.iter().flatten())
            .chain(&rule.verbs);
        for w in words {
            assert!(
                !w.contains('*'),
                "{what}: rules[{i}] uses the wildcard {w:?}"
            );
        }
        assert!(
            rule.non_resource_urls.is_none(),
            "{what}: rules[{i}] grants non-resource URLs"
        );
    }
}

fn the_container(obj: &Obj, ds: &DaemonSet) -> Container {
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(
        pod.containers.len(),
        1,
        "{}: one container expected",
        obj.what()
    );
    assert!(
        pod.init_containers.is_none(),
        "{}: no init container expected",
        obj.what()
    );
    pod.containers[0].clone()
}

fn env_value(obj: &Obj, c: &Container, name: &str) -> k8s_openapi::api::core::v1::EnvVar {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .cloned()
        .unwrap_or_else(|| panic!("{}: container {} has no env {name}", obj.what(), c.name))
}

/// `pullgate run`'s flags: environment variable → (long flag, default value).
fn agent_flags() -> BTreeMap<String, (String, Option<String>)> {
    let mut cli = pullgate::cli::Cli::command();
    cli.build();
    let run = cli
        .get_subcommands()
        .find(|c| c.get_name() == "run")
        .expect("pullgate has a `run` subcommand");
    run.get_arguments()
        .chain(cli.get_arguments())
        .filter_map(|a| {
            let env = a.get_env()?.to_str()?.to_owned();
            let default = a
                .get_default_values()
                .first()
                .map(|d| d.to_string_lossy().into_owned());
            Some((env, (a.get_long().unwrap_or_default().to_owned(), default)))
        })
        .collect()
}

/// Millicores of a CPU quantity, bytes of a memory quantity.
fn quantity(q: &str, what: &str) -> f64 {
    let suffixes: [(&str, f64); 10] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("", 1.0),
    ];
    let (number, factor) = suffixes
        .iter()
        .find_map(|(s, f)| q.strip_suffix(s).map(|n| (n, *f)))
        .unwrap();
    number
        .parse::<f64>()
        .unwrap_or_else(|_| panic!("{what}: {q:?} is not a quantity"))
        * factor
}

// ---------------------------------------------------------------------------------------------
// Checks, run on every rendering that contains the objects they check
// ---------------------------------------------------------------------------------------------

/// The cluster-wide RBAC: exactly what the agent needs, nothing on Secrets or ServiceAccounts,
/// no wildcard.
fn check_cluster_rbac(objs: &[Obj], at: &str) {
    let (ns, sa) = agent_identity(objs, at);
    let service_accounts = all_of::<ServiceAccount>(objs, "ServiceAccount");
    assert!(
        service_accounts
            .iter()
            .any(|(o, _)| o.name() == sa && o.namespace() == Some(ns.as_str())),
        "{at}: the DaemonSet's ServiceAccount {ns}/{sa} is not among the objects"
    );
    let namespaces = all_of::<Namespace>(objs, "Namespace");
    assert!(
        namespaces.iter().any(|(o, _)| o.name() == ns),
        "{at}: the Namespace {ns} is not among the objects"
    );

    let (crd_obj, crd) = one_of::<CustomResourceDefinition>(objs, "CustomResourceDefinition", at);
    assert_eq!(
        crd.spec.names.kind,
        "PullSet",
        "{}: spec.names.kind",
        crd_obj.what()
    );
    let group = crd.spec.group.as_str();
    let plural = crd.spec.names.plural.as_str();

    let expected = triples(&[
        ("", "nodes", &["get", "list", "watch", "patch"]),
        ("", "nodes/status", &["patch"]),
        ("events.k8s.io", "events", &["create", "patch"]),
        (group, plural, &["get", "list", "watch"]),
        // /metrics: the scraper's token reviewed (--metrics-auth kubernetes).
        ("authentication.k8s.io", "tokenreviews", &["create"]),
        ("authorization.k8s.io", "subjectaccessreviews", &["create"]),
    ]);

    let roles = all_of::<ClusterRole>(objs, "ClusterRole");
    for (obj, role) in &roles {
        let rules = role.rules.as_deref().unwrap_or_default();
        assert_no_wildcards(rules, &obj.what());
        assert!(
            role.aggregation_rule.is_none(),
            "{}: an aggregated ClusterRole grants what other roles grant",
            obj.what()
        );
        for (g, r, v) in grants(rules) {
            assert!(
                !(g.is_empty() && (r == "secrets" || r == "serviceaccounts")),
                "{}: grants {v} on {r} cluster-wide; Secrets and ServiceAccounts are granted per namespace (namespace-access)",
                obj.what()
            );
        }
    }

    let mut granted = BTreeSet::new();
    let mut bound = 0;
    for (obj, binding) in all_of::<ClusterRoleBinding>(objs, "ClusterRoleBinding") {
        let ours = binding.subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount" && s.name == sa && s.namespace.as_deref() == Some(&ns)
        });
        if !ours {
            continue;
        }
        bound += 1;
        assert_eq!(
            binding.role_ref.kind,
            "ClusterRole",
            "{}: roleRef.kind",
            obj.what()
        );
        let (_, role) = roles
            .iter()
            .find(|(o, _)| o.name() == binding.role_ref.name)
            .unwrap_or_else(|| {
                panic!(
                    "{}: roleRef names ClusterRole {}, which is not among the objects",
                    obj.what(),
                    binding.role_ref.name
                )
            });
        let rules = role.rules.as_deref().unwrap_or_default();
        for (i, rule) in rules.iter().enumerate() {
            assert!(
                rule.resource_names.is_none(),
                "{}: rules[{i}] has resourceNames; a cluster role cannot know the node's name",
                obj.what()
            );
        }
        granted.extend(grants(rules));
    }
    assert!(bound > 0, "{at}: no ClusterRoleBinding binds {ns}/{sa}");
    assert_eq!(
        granted, expected,
        "{at}: the ClusterRoles bound to {ns}/{sa} must grant exactly these (group, resource, verb)"
    );
    assert!(
        all_of::<Role>(objs, "Role")
            .iter()
            .all(|(o, _)| o.namespace() != Some(ns.as_str())),
        "{at}: no Role is needed in pullgate's own namespace"
    );
}

/// How namespace-access/role.yaml names what nobody has replaced yet.
const PLACEHOLDER_PREFIX: &str = "replace-with-";

/// Whether a rendered Role must still carry the placeholder names (the bare directory) or must
/// have replaced every one of them (a namespace's overlay).
#[derive(Clone, Copy)]
enum Placeholders {
    Only,
    Replaced,
}

/// Secrets and ServiceAccounts are read by name only: every rule that grants them, whatever its
/// verbs, lists `resourceNames` (a rule without them is every object of the namespace).
fn assert_reads_only_by_name(rules: &[PolicyRule], what: &str) {
    for (i, rule) in rules.iter().enumerate() {
        let sensitive = rule.resources.iter().flatten().any(|r| {
            matches!(
                r.as_str(),
                "secrets" | "serviceaccounts" | "serviceaccounts/token" | "*"
            )
        });
        let names = rule.resource_names.as_deref().unwrap_or_default();
        assert!(
            !sensitive || !names.is_empty(),
            "{what}: rules[{i}] grants {:?} {:?} without resourceNames; name the objects (see manifests/README.md, \"Grant a namespace\")",
            rule.verbs,
            rule.resources.as_deref().unwrap_or_default()
        );
    }
}

/// The per-namespace grant: Secrets and ServiceAccounts, read only, bound to the agent's
/// ServiceAccount in its own namespace. `namespace` is where the rendering must put them.
fn check_namespace_access(
    objs: &[Obj],
    at: &str,
    agent: &(String, String),
    namespace: Option<&str>,
    placeholders: Placeholders,
) {
    let expected = triples(&[
        ("", "secrets", &["get", "list", "watch"]),
        ("", "serviceaccounts", &["get", "list", "watch"]),
        ("", "serviceaccounts/token", &["create"]),
    ]);
    let roles: Vec<_> = all_of::<Role>(objs, "Role")
        .into_iter()
        .filter(|(o, _)| o.namespace() == namespace)
        .collect();
    assert_eq!(
        roles.len(),
        1,
        "{at}: one Role in namespace {namespace:?} expected"
    );
    let (role_obj, role) = &roles[0];
    let rules = role.rules.as_deref().unwrap_or_default();
    assert_no_wildcards(rules, &role_obj.what());
    assert_eq!(
        grants(rules),
        expected,
        "{}: must grant exactly get/list/watch on secrets and serviceaccounts, and create on serviceaccounts/token",
        role_obj.what()
    );
    assert_reads_only_by_name(rules, &role_obj.what());
    for (i, rule) in rules.iter().enumerate() {
        let names = rule.resource_names.as_deref().unwrap_or_default();
        let placeholder = names.iter().any(|n| n.starts_with(PLACEHOLDER_PREFIX));
        match placeholders {
            Placeholders::Only => assert!(
                names.iter().all(|n| n.starts_with(PLACEHOLDER_PREFIX)),
                "{}: rules[{i}] of the unpatched Role must name only placeholders ({PLACEHOLDER_PREFIX}…), so that it grants nothing usable: {names:?}",
                role_obj.what()
            ),
            Placeholders::Replaced => assert!(
                !placeholder,
                "{}: rules[{i}] still names a placeholder; replace it with the objects this namespace's PullSets use: {names:?}",
                role_obj.what()
            ),
        }
    }

    let bindings: Vec<_> = all_of::<RoleBinding>(objs, "RoleBinding")
        .into_iter()
        .filter(|(o, _)| o.namespace() == namespace)
        .collect();
    assert_eq!(
        bindings.len(),
        1,
        "{at}: one RoleBinding in namespace {namespace:?} expected"
    );
    let (binding_obj, binding) = &bindings[0];
    assert_eq!(
        (
            binding.role_ref.kind.as_str(),
            binding.role_ref.name.as_str()
        ),
        ("Role", role_obj.name()),
        "{}: roleRef must name the Role beside it",
        binding_obj.what()
    );
    let subjects: Vec<_> = binding
        .subjects
        .iter()
        .flatten()
        .map(|s| (s.kind.as_str(), s.namespace.as_deref(), s.name.as_str()))
        .collect();
    assert_eq!(
        subjects,
        [("ServiceAccount", Some(agent.0.as_str()), agent.1.as_str())],
        "{}: subjects must be exactly the agent's ServiceAccount, in the agent's namespace",
        binding_obj.what()
    );
}

/// The DaemonSet: placement, identity, security, probes, resources, rollout, and the taint key
/// from the ConfigMap the admission policy reads.
fn check_daemonset(objs: &[Obj], at: &str) {
    let flags = agent_flags();
    let (obj, ds) = one_of::<DaemonSet>(objs, "DaemonSet", at);
    let what = obj.what();
    let spec = ds.spec.as_ref().unwrap();
    let pod = spec.template.spec.as_ref().unwrap();
    let c = the_container(&obj, &ds);

    // Rollout: at most 10% of the nodes at once, no surge.
    let strategy = spec
        .update_strategy
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: spec.updateStrategy"));
    assert_eq!(
        strategy.type_.as_deref(),
        Some("RollingUpdate"),
        "{what}: spec.updateStrategy.type"
    );
    let rolling = strategy
        .rolling_update
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: spec.updateStrategy.rollingUpdate"));
    match &rolling.max_unavailable {
        Some(IntOrString::String(p)) => {
            let percent: f64 = p
                .strip_suffix('%')
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{what}: maxUnavailable {p:?} is not a percentage"));
            assert!(
                percent > 0.0 && percent <= 10.0,
                "{what}: spec.updateStrategy.rollingUpdate.maxUnavailable {p} must be at most 10%"
            );
        }
        other => panic!(
            "{what}: spec.updateStrategy.rollingUpdate.maxUnavailable must be a percentage of at most 10%, is {other:?}"
        ),
    }
    assert!(
        matches!(&rolling.max_surge, None | Some(IntOrString::Int(0))),
        "{what}: spec.updateStrategy.rollingUpdate.maxSurge must be 0 (one agent per node)"
    );

    // Placement: every node, whatever its taints, before anything else.
    assert!(
        pod.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.as_deref().unwrap_or("").is_empty()
                && t.effect.is_none()),
        "{what}: spec.template.spec.tolerations needs {{operator: Exists}} without key or effect (tolerate every taint)"
    );
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical"),
        "{what}: spec.template.spec.priorityClassName"
    );
    for (field, on) in [
        ("hostNetwork", pod.host_network),
        ("hostPID", pod.host_pid),
        ("hostIPC", pod.host_ipc),
    ] {
        assert_ne!(
            on,
            Some(true),
            "{what}: spec.template.spec.{field} is not needed"
        );
    }

    // Cluster mode: `pullgate run`, no --manifests.
    let args = c.args.clone().unwrap_or_default();
    let command = c.command.clone().unwrap_or_default();
    assert_eq!(
        args.first().map(String::as_str),
        Some("run"),
        "{what}: container args must start with `run`"
    );
    for a in command.iter().chain(&args) {
        assert!(
            !a.starts_with("--manifests") && !a.starts_with("--kubeconfig"),
            "{what}: {a} would take the agent out of in-cluster mode"
        );
    }

    // Every PULLGATE_* variable is a flag of `pullgate run`.
    for e in c.env.iter().flatten() {
        if e.name.starts_with("PULLGATE_") {
            assert!(
                flags.contains_key(&e.name),
                "{what}: env {} is not a flag of `pullgate run`",
                e.name
            );
        }
        assert!(
            !matches!(
                e.name.as_str(),
                "PULLGATE_MANIFESTS" | "PULLGATE_KUBECONFIG" | "PULLGATE_ONCE"
            ),
            "{what}: env {} would take the agent out of in-cluster daemon mode",
            e.name
        );
    }
    let node_name = env_value(&obj, &c, "PULLGATE_NODE_NAME");
    assert_eq!(
        node_name
            .value_from
            .and_then(|v| v.field_ref)
            .map(|f| f.field_path),
        Some("spec.nodeName".to_owned()),
        "{what}: env PULLGATE_NODE_NAME must come from the downward API (fieldRef spec.nodeName)"
    );

    // The CRI socket comes from the host: the endpoint lies under a hostPath mount, and on the
    // host it is the agent's default endpoint (containerd's socket).
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    let volumes = pod.volumes.clone().unwrap_or_default();
    let endpoint = env_value(&obj, &c, "PULLGATE_CRI_ENDPOINT")
        .value
        .unwrap_or_else(|| panic!("{what}: env PULLGATE_CRI_ENDPOINT needs a value"));
    let socket = endpoint.strip_prefix("unix://").unwrap_or_else(|| {
        panic!("{what}: PULLGATE_CRI_ENDPOINT {endpoint} is not a unix:// socket")
    });
    let (mount, rest) = mounts
        .iter()
        .find_map(|m| {
            Path::new(socket)
                .strip_prefix(&m.mount_path)
                .ok()
                .map(|rest| (m, rest.to_path_buf()))
        })
        .unwrap_or_else(|| panic!("{what}: no volumeMount holds the CRI socket {socket}"));
    let host_path = volumes
        .iter()
        .find(|v| v.name == mount.name)
        .and_then(|v| v.host_path.clone())
        .unwrap_or_else(|| {
            panic!(
                "{what}: volume {} (holding the CRI socket) must be a hostPath",
                mount.name
            )
        });
    let on_host = Path::new(&host_path.path).join(rest);
    let (_, default_endpoint) = &flags["PULLGATE_CRI_ENDPOINT"];
    let default_socket = default_endpoint
        .as_deref()
        .and_then(|e| e.strip_prefix("unix://"))
        .expect("the agent's --cri-endpoint has a unix:// default");
    assert_eq!(
        on_host,
        Path::new(default_socket),
        "{what}: the CRI socket mounted is not the runtime's socket on the host"
    );
    // The agent writes one thing on the host, its local API socket: that directory is the only
    // writable hostPath, and it holds the socket the agent is told to serve.
    let api_socket = env_value(&obj, &c, "PULLGATE_API_SOCKET")
        .value
        .unwrap_or_else(|| panic!("{what}: env PULLGATE_API_SOCKET needs a value"));
    let api_dir = Path::new(&api_socket)
        .parent()
        .unwrap_or_else(|| panic!("{what}: PULLGATE_API_SOCKET {api_socket} has no directory"));
    let mut writable = Vec::new();
    for m in &mounts {
        if volumes
            .iter()
            .any(|v| v.name == m.name && v.host_path.is_some())
            && m.read_only != Some(true)
        {
            writable.push(m.mount_path.clone());
        }
    }
    assert_eq!(
        writable,
        [api_dir.display().to_string()],
        "{what}: the only writable hostPath volumeMount must be the local API socket's directory"
    );

    // Security: read-only root, no capability, no escalation, default seccomp.
    let sc = c
        .security_context
        .clone()
        .unwrap_or_else(|| panic!("{what}: container {} has no securityContext", c.name));
    assert_eq!(
        sc.read_only_root_filesystem,
        Some(true),
        "{what}: securityContext.readOnlyRootFilesystem"
    );
    assert_eq!(
        sc.allow_privilege_escalation,
        Some(false),
        "{what}: securityContext.allowPrivilegeEscalation"
    );
    assert_ne!(
        sc.privileged,
        Some(true),
        "{what}: securityContext.privileged"
    );
    let caps = sc.capabilities.clone().unwrap_or_default();
    assert!(
        caps.drop.iter().flatten().any(|d| d == "ALL"),
        "{what}: securityContext.capabilities.drop must contain ALL"
    );
    assert!(
        caps.add.as_deref().unwrap_or_default().is_empty(),
        "{what}: securityContext.capabilities.add must be empty"
    );
    let seccomp = sc
        .seccomp_profile
        .or_else(|| {
            pod.security_context
                .as_ref()
                .and_then(|p| p.seccomp_profile.clone())
        })
        .map(|s| s.type_);
    assert_eq!(
        seccomp.as_deref(),
        Some("RuntimeDefault"),
        "{what}: seccompProfile"
    );

    // Resources: requests and limits for cpu and memory, requests within limits.
    let resources = c
        .resources
        .clone()
        .unwrap_or_else(|| panic!("{what}: container resources"));
    let requests = resources.requests.unwrap_or_default();
    let limits = resources.limits.unwrap_or_default();
    for r in ["cpu", "memory"] {
        let request = requests
            .get(r)
            .unwrap_or_else(|| panic!("{what}: resources.requests.{r}"));
        let limit = limits
            .get(r)
            .unwrap_or_else(|| panic!("{what}: resources.limits.{r}"));
        assert!(
            quantity(&request.0, &what) <= quantity(&limit.0, &what),
            "{what}: resources.requests.{r} {} exceeds the limit {}",
            request.0,
            limit.0
        );
    }

    // Probes on the agent's HTTP address (the variable, or the flag's default).
    let http_addr = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "PULLGATE_METRICS_ADDR")
        .map(|e| {
            e.value
                .clone()
                .unwrap_or_else(|| panic!("{what}: env PULLGATE_METRICS_ADDR needs a value"))
        })
        .or_else(|| flags["PULLGATE_METRICS_ADDR"].1.clone())
        .expect("the agent's --metrics-addr has a default");
    let http_port: i32 = http_addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .filter(|p| *p != 0)
        .unwrap_or_else(|| {
            panic!("{what}: the agent's HTTP address {http_addr} has no fixed port for the probes")
        });
    for (probe, name, path) in [
        (&c.liveness_probe, "livenessProbe", "/healthz"),
        (&c.readiness_probe, "readinessProbe", "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.clone())
            .unwrap_or_else(|| panic!("{what}: {name} must be an httpGet"));
        assert_eq!(
            get.path.as_deref(),
            Some(path),
            "{what}: {name}.httpGet.path"
        );
        let port = match &get.port {
            IntOrString::Int(p) => *p,
            IntOrString::String(named) => c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(named))
                .unwrap_or_else(|| {
                    panic!(
                        "{what}: {name} names port {named}, which the container does not declare"
                    )
                })
                .container_port,
        };
        assert_eq!(
            port, http_port,
            "{what}: {name} must probe the port of PULLGATE_METRICS_ADDR"
        );
    }

    // The taint key comes from the ConfigMap the admission policy reads.
    let taint = env_value(&obj, &c, "PULLGATE_TAINT_KEY");
    let key_ref = taint
        .value_from
        .and_then(|v| v.config_map_key_ref)
        .unwrap_or_else(|| panic!("{what}: env PULLGATE_TAINT_KEY must come from a configMapKeyRef (shared with the admission policy)"));
    assert_ne!(
        key_ref.optional,
        Some(true),
        "{what}: the taint key must not be optional"
    );
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Lines of a folded block scalar (`>`, `>-`) more indented than its first line: YAML keeps
/// their line breaks, and YAML libraries disagree on how many (libyaml and the Go library
/// kubectl uses give different strings), so none is allowed.
fn more_indented_folded_lines(text: &str) -> Vec<usize> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut bad = Vec::new();
    let mut block: Option<(usize, Option<usize>)> = None; // (indent of the key, of the content)
    for (n, line) in text.lines().enumerate() {
        if let Some((key, content)) = block {
            if line.trim().is_empty() {
                continue;
            }
            let i = indent(line);
            if i <= key {
                block = None;
            } else {
                match content {
                    None => block = Some((key, Some(i))),
                    Some(c) if i > c => bad.push(n + 1),
                    Some(_) => {}
                }
                continue;
            }
        }
        let code = line.split(" #").next().unwrap_or("").trim_end();
        if code.ends_with(": >") || code.ends_with(": >-") || code.ends_with(": >+") {
            block = Some((
                indent(line) + usize::from(line.trim_start().starts_with("- ")) * 2,
                None,
            ));
        }
    }
    bad
}

#[test]
fn folded_scalars_read_the_same_in_every_yaml_library() {
    let m = ManifestFiles::load();
    for file in m.files.keys() {
        let text = std::fs::read_to_string(m.root.join(file)).unwrap();
        let bad = more_indented_folded_lines(&text);
        assert!(
            bad.is_empty(),
            "manifests/{file}: lines {bad:?} are more indented than the rest of their folded (>) scalar; indent them alike"
        );
    }
    // The check itself.
    assert_eq!(
        more_indented_folded_lines("a: >-\n  x (\n    y)\nb: 1\n"),
        [3]
    );
    assert!(more_indented_folded_lines("- e: >-\n    x (\n    y)\n  m: z\n").is_empty());
}

#[test]
fn every_manifest_parses_and_every_file_is_used() {
    let m = ManifestFiles::load();
    assert!(
        m.files.contains_key("base/crd.yaml"),
        "manifests/base/crd.yaml (generated by `cargo xtask manifests`) is missing"
    );

    // Which files the kustomizations use, as resources or as patches.
    let mut resources = BTreeSet::new();
    let mut patches = BTreeSet::new();
    for dir in m.kustomization_dirs() {
        let k = kustomization(&m, &dir);
        let at = format!("{dir}/kustomization.yaml");
        for r in strings(&k.value, "/resources", &at) {
            let rel = resolve(&m, &dir, &r);
            if m.is_kustomization_dir(&rel) {
                resources.insert(format!("{rel}/kustomization.yaml"));
            } else {
                assert!(
                    m.files.contains_key(&rel),
                    "{at}: resource {r} is neither a YAML file nor a kustomization directory"
                );
                resources.insert(rel);
            }
        }
        for (i, p) in array(&k.value, "/patches").iter().enumerate() {
            let path = p["path"].as_str().unwrap_or_else(|| {
                panic!("{at}: patches[{i}].path (inline patches: teach this test)")
            });
            patches.insert(resolve(&m, &dir, path));
        }
    }
    for root in ROOTS {
        assert!(
            m.is_kustomization_dir(root),
            "manifests/{root} is not a kustomization"
        );
    }
    for (file, docs) in &m.files {
        let is_kustomization = file.ends_with("kustomization.yaml");
        let is_example = file.starts_with(&format!("{EXAMPLES_DIR}/"));
        let used = resources.contains(file) || patches.contains(file);
        let is_component = is_kustomization && is_component(file);
        assert!(
            used || is_example
                || is_component
                || (is_kustomization
                    && ROOTS
                        .iter()
                        .any(|r| file == &format!("{r}/kustomization.yaml"))),
            "manifests/{file} is not used by any kustomization (nor an example)"
        );
        assert!(!docs.is_empty(), "manifests/{file} has no document");
        if (resources.contains(file) && !is_kustomization) || is_example {
            docs.iter().for_each(check_typed);
        }
    }
    // Every kustomization renders with kubectl, and every object it renders parses as its type;
    // a Component, on top of the base.
    for dir in m.kustomization_dirs() {
        let objs = if is_component(&dir) {
            render_with_components("base", &[&dir])
        } else {
            render(&dir)
        };
        assert!(!objs.is_empty(), "{dir}: renders nothing");
        objs.iter().for_each(check_typed);
    }
}

#[test]
fn cluster_rbac_is_least_privilege() {
    for root in ["base", "overlays/example"] {
        check_cluster_rbac(&render(root), root);
    }
    let m = ManifestFiles::load();
    // No file anywhere (examples included) grants Secrets cluster-wide.
    for obj in m
        .files
        .values()
        .flatten()
        .filter(|o| o.kind() == "ClusterRole")
    {
        let role: ClusterRole = typed(obj);
        let secrets = grants(role.rules.as_deref().unwrap_or_default())
            .into_iter()
            .any(|(g, r, _)| g.is_empty() && r == "secrets");
        assert!(
            !secrets,
            "{}: grants access to secrets cluster-wide",
            obj.what()
        );
    }
}

#[test]
fn secret_access_is_per_namespace_and_opt_in() {
    let base = render("base");
    let agent = agent_identity(&base, "base");
    assert!(
        all_of::<Role>(&base, "Role").is_empty()
            && all_of::<RoleBinding>(&base, "RoleBinding").is_empty(),
        "base: the per-namespace grant is opt-in, the base has no Role or RoleBinding"
    );

    // The bare directory: no namespace, so that whoever uses it chooses one.
    let bare = render("namespace-access");
    for o in &bare {
        assert_eq!(
            o.namespace(),
            None,
            "{}: names a namespace; namespace-access must be re-namespaced by its user",
            o.what()
        );
    }
    check_namespace_access(&bare, "namespace-access", &agent, None, Placeholders::Only);

    // Re-namespaced, the Role and RoleBinding move, the subject stays in pullgate's namespace.
    let team = render("overlays/example/team-payments");
    check_namespace_access(
        &team,
        "overlays/example/team-payments",
        &agent,
        Some("team-payments"),
        Placeholders::Replaced,
    );
    let example = render("overlays/example");
    check_namespace_access(
        &example,
        "overlays/example",
        &agent,
        Some("team-payments"),
        Placeholders::Replaced,
    );
}

#[test]
fn no_role_reads_secrets_or_serviceaccounts_without_resource_names() {
    let m = ManifestFiles::load();
    for obj in m.files.values().flatten().filter(|o| o.kind() == "Role") {
        let role: Role = typed(obj);
        assert_reads_only_by_name(role.rules.as_deref().unwrap_or_default(), &obj.what());
    }
    for dir in m.kustomization_dirs() {
        for (obj, role) in all_of::<Role>(&render(&dir), "Role") {
            assert_reads_only_by_name(
                role.rules.as_deref().unwrap_or_default(),
                &format!("{dir}: {}", obj.what()),
            );
        }
    }
}

#[test]
fn daemonset() {
    let m = ManifestFiles::load();
    // The selector of a DaemonSet is immutable: no rendering may change the base's (a
    // kustomize `labels` entry with `includeSelectors: true` would), and the pods carry it.
    let base_file: DaemonSet = typed(
        m.docs("base/daemonset.yaml")
            .iter()
            .find(|o| o.kind() == "DaemonSet")
            .unwrap_or_else(|| panic!("base/daemonset.yaml: no DaemonSet")),
    );
    let selector = base_file.spec.unwrap().selector;
    for root in ["base", "overlays/example"] {
        let objs = render(root);
        check_daemonset(&objs, root);
        let (obj, ds) = one_of::<DaemonSet>(&objs, "DaemonSet", root);
        let spec = ds.spec.unwrap();
        assert_eq!(
            spec.selector,
            selector,
            "{}: spec.selector differs from base/daemonset.yaml's; it is immutable once applied",
            obj.what()
        );
        let pod_labels = spec
            .template
            .metadata
            .and_then(|m| m.labels)
            .unwrap_or_default();
        for (k, v) in selector.match_labels.iter().flatten() {
            assert_eq!(
                pod_labels.get(k),
                Some(v),
                "{}: the pod template does not carry the selector's label {k}",
                obj.what()
            );
        }
    }
    // The base keeps the agent's default taint key.
    let base = render("base");
    let (_, ds) = one_of::<DaemonSet>(&base, "DaemonSet", "base");
    let obj = base.iter().find(|o| o.kind() == "DaemonSet").unwrap();
    let key_ref = env_value(obj, &the_container(obj, &ds), "PULLGATE_TAINT_KEY")
        .value_from
        .and_then(|v| v.config_map_key_ref)
        .unwrap();
    let (cm_obj, cm) = all_of::<ConfigMap>(&base, "ConfigMap")
        .into_iter()
        .find(|(o, _)| o.name() == key_ref.name)
        .unwrap();
    let flags = agent_flags();
    let (flag, default) = &flags["PULLGATE_TAINT_KEY"];
    assert_eq!(
        cm.data.unwrap().get(&key_ref.key),
        default.as_ref(),
        "{}: the base's taint key should be the agent's default --{flag}",
        cm_obj.what()
    );
}

#[test]
fn node_readiness_rule_example() {
    let m = ManifestFiles::load();
    let rules: Vec<&Obj> = m
        .files
        .iter()
        .filter(|(f, _)| f.starts_with(&format!("{EXAMPLES_DIR}/")))
        .flat_map(|(_, docs)| docs)
        .filter(|o| o.kind() == "NodeReadinessRule")
        .collect();
    assert_eq!(
        rules.len(),
        1,
        "manifests/{EXAMPLES_DIR}: one NodeReadinessRule expected"
    );
    let rule = rules[0];
    let what = rule.what();
    // Field names and enums of kubernetes-sigs/node-readiness-controller's v1alpha1 API.
    assert_eq!(
        rule.api_version(),
        "readiness.node.x-k8s.io/v1alpha1",
        "{what}: apiVersion"
    );
    let spec = rule.value["spec"]
        .as_object()
        .unwrap_or_else(|| panic!("{what}: spec"));
    for field in spec.keys() {
        assert!(
            [
                "conditions",
                "enforcementMode",
                "taint",
                "nodeSelector",
                "dryRun"
            ]
            .contains(&field.as_str()),
            "{what}: spec.{field} is not a field of NodeReadinessRuleSpec"
        );
    }
    let conditions: BTreeMap<&str, &str> = array(&rule.value, "/spec/conditions")
        .iter()
        .map(|c| {
            (
                c["type"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{what}: spec.conditions[].type")),
                c["requiredStatus"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{what}: spec.conditions[].requiredStatus")),
            )
        })
        .collect();
    let expected: BTreeMap<&str, &str> = NODE_CONDITIONS.iter().map(|c| (*c, "True")).collect();
    assert_eq!(
        conditions, expected,
        "{what}: spec.conditions must require pullgate's conditions to be True"
    );

    let key = rule
        .str_at("/spec/taint/key")
        .unwrap_or_else(|| panic!("{what}: spec.taint.key"));
    let name = key.strip_prefix("readiness.k8s.io/").unwrap_or_else(|| {
        panic!("{what}: spec.taint.key {key} must start with readiness.k8s.io/")
    });
    assert!(
        is_qualified_name(key) && !name.contains('/'),
        "{what}: spec.taint.key {key} is not a valid taint key"
    );
    assert!(
        matches!(
            rule.str_at("/spec/taint/effect"),
            Some("NoSchedule" | "PreferNoSchedule" | "NoExecute")
        ),
        "{what}: spec.taint.effect"
    );
    assert!(
        matches!(
            rule.str_at("/spec/enforcementMode"),
            Some("bootstrap-only" | "continuous")
        ),
        "{what}: spec.enforcementMode must be bootstrap-only or continuous"
    );
    let selector = rule.value["spec"]["nodeSelector"]
        .as_object()
        .unwrap_or_else(|| panic!("{what}: spec.nodeSelector"));
    assert!(
        selector
            .values()
            .any(|v| v.as_object().is_some_and(|o| !o.is_empty())
                || v.as_array().is_some_and(|a| !a.is_empty())),
        "{what}: spec.nodeSelector must not be empty (the controller's webhook refuses it)"
    );
}

#[test]
fn podmonitor_example() {
    let m = ManifestFiles::load();
    let docs: Vec<&Obj> = m
        .files
        .iter()
        .filter(|(f, _)| f.as_str() == format!("{EXAMPLES_DIR}/podmonitor.yaml"))
        .flat_map(|(_, docs)| docs)
        .collect();
    let of = |kind: &str| {
        docs.iter()
            .find(|o| o.kind() == kind)
            .unwrap_or_else(|| panic!("podmonitor.yaml: no {kind}"))
    };
    let monitor = of("PodMonitor");
    let secret = of("Secret");
    let account = of("ServiceAccount");
    // The PodMonitor's bearer token is the scraper ServiceAccount's token Secret, beside it.
    assert_eq!(
        monitor.str_at("/spec/podMetricsEndpoints/0/authorization/credentials/name"),
        Some(secret.name())
    );
    assert_eq!(
        monitor.str_at("/spec/podMetricsEndpoints/0/authorization/type"),
        Some("Bearer")
    );
    assert_eq!(
        monitor.str_at("/spec/podMetricsEndpoints/0/port"),
        Some("metrics")
    );
    assert_eq!(secret.namespace(), monitor.namespace());
    assert_eq!(
        secret.str_at("/type"),
        Some("kubernetes.io/service-account-token")
    );
    assert_eq!(
        secret.str_at("/metadata/annotations/kubernetes.io~1service-account.name"),
        Some(account.name())
    );
    // The scraper may get /metrics, and nothing else.
    let role: ClusterRole = typed(of("ClusterRole"));
    let rules = role.rules.unwrap_or_default();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].non_resource_urls.as_deref(),
        Some(&["/metrics".to_string()][..])
    );
    assert_eq!(rules[0].verbs, ["get"]);
    // The agent may review tokens (TokenReview) and access (SubjectAccessReview).
    let base = m
        .files
        .iter()
        .filter(|(f, _)| f.as_str() == "base/clusterrole.yaml")
        .flat_map(|(_, docs)| docs)
        .next()
        .expect("base/clusterrole.yaml");
    let agent: ClusterRole = typed(base);
    for (group, resource) in [
        ("authentication.k8s.io", "tokenreviews"),
        ("authorization.k8s.io", "subjectaccessreviews"),
    ] {
        assert!(
            agent.rules.iter().flatten().any(|r| {
                r.api_groups.iter().flatten().any(|g| g == group)
                    && r.resources.iter().flatten().any(|x| x == resource)
                    && r.verbs == ["create"]
            }),
            "base/clusterrole.yaml: create on {group} {resource}"
        );
    }
}

/// The image filesystem's mountpoint containerd's CRI reports by default (`ImageFsInfo`): its root
/// (`/var/lib/containerd`, containerd `defaults/defaults_unix.go` `DefaultRootDir`) joined with the
/// snapshotter plugin's id (`imageFSPath` in `pkg/cri/server/service.go` of 1.7,
/// `internal/cri/server/images/service.go` of 2.x): overlayfs by default, native as the test
/// harness runs it.
const CONTAINERD_IMAGE_FS: [&str; 2] = [
    "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs",
    "/var/lib/containerd/io.containerd.snapshotter.v1.native",
];

/// The disk headroom is enforced in the shipped DaemonSet: the path the agent stats for
/// containerd's default mountpoint (by the agent's own join rule, `--host-root` + mountpoint) lies
/// under a read-only hostPath mount that holds that same path on the host.
#[test]
fn daemonset_mounts_the_image_filesystem_where_the_agent_reads_it() {
    let flags = agent_flags();
    assert!(
        flags.contains_key("PULLGATE_HOST_ROOT"),
        "`pullgate run` has no PULLGATE_HOST_ROOT flag"
    );
    for root in ["base", "overlays/example"] {
        let objs = render(root);
        let (obj, ds) = one_of::<DaemonSet>(&objs, "DaemonSet", root);
        let what = obj.what();
        let c = the_container(&obj, &ds);
        let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let host_root: pullgate::adapters::statvfs::HostRoot =
            env_value(&obj, &c, "PULLGATE_HOST_ROOT")
                .value
                .unwrap_or_else(|| panic!("{what}: env PULLGATE_HOST_ROOT needs a value"))
                .parse()
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        let mounts = c.volume_mounts.clone().unwrap_or_default();
        let volumes = pod.volumes.clone().unwrap_or_default();
        for mountpoint in CONTAINERD_IMAGE_FS {
            let read_at =
                pullgate::adapters::statvfs::host_path(Some(&host_root), mountpoint).unwrap();
            // The innermost mount holding the path is the one the agent reads through.
            let (mount, rest) = mounts
                .iter()
                .filter_map(|m| {
                    read_at
                        .strip_prefix(&m.mount_path)
                        .ok()
                        .map(|rest| (m, rest.to_path_buf()))
                })
                .max_by_key(|(m, _)| m.mount_path.len())
                .unwrap_or_else(|| {
                    panic!(
                        "{what}: no volumeMount holds {}, where the agent reads the image filesystem {mountpoint}",
                        read_at.display()
                    )
                });
            assert_eq!(
                mount.read_only,
                Some(true),
                "{what}: volumeMount {} (the image filesystem) must be read-only",
                mount.name
            );
            let host_path = volumes
                .iter()
                .find(|v| v.name == mount.name)
                .and_then(|v| v.host_path.clone())
                .unwrap_or_else(|| {
                    panic!(
                        "{what}: volume {} (the image filesystem) must be a hostPath",
                        mount.name
                    )
                });
            assert_eq!(
                Path::new(&host_path.path).join(&rest),
                Path::new(mountpoint),
                "{what}: {} is not the host's {mountpoint}",
                read_at.display()
            );
            assert_eq!(
                host_path.type_.as_deref(),
                Some("Directory"),
                "{what}: volume {} must be of type Directory (never created on the host)",
                mount.name
            );
        }
    }
}

/// The agent discovers containerd's registry config_path (no `PULLGATE_RUNTIME_REGISTRY_CONFIG`):
/// containerd's configuration file (the default of `--runtime-config-file`, or the env the
/// DaemonSet sets) and the usual config_path `/etc/containerd/certs.d` are each visible in the
/// pod, read-only, at the host's own path (so that relative imports and the config_path the file
/// names resolve alike), through a directory mount that is never a file created on the host.
#[test]
fn daemonset_mounts_containerd_configuration_where_the_agent_reads_it() {
    let flags = agent_flags();
    let (_, default) = flags
        .get("PULLGATE_RUNTIME_CONFIG_FILE")
        .expect("`pullgate run` has no PULLGATE_RUNTIME_CONFIG_FILE flag");
    for root in ["base", "overlays/example"] {
        let objs = render(root);
        let (obj, ds) = one_of::<DaemonSet>(&objs, "DaemonSet", root);
        let what = obj.what();
        let c = the_container(&obj, &ds);
        assert!(
            !c.env
                .iter()
                .flatten()
                .any(|e| e.name == "PULLGATE_RUNTIME_REGISTRY_CONFIG"),
            "{what}: PULLGATE_RUNTIME_REGISTRY_CONFIG overrides the discovered config_path"
        );
        let config_file = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "PULLGATE_RUNTIME_CONFIG_FILE")
            .map(|e| e.value.clone().unwrap_or_default())
            .or(default.clone())
            .unwrap();
        let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let mounts = c.volume_mounts.clone().unwrap_or_default();
        let volumes = pod.volumes.clone().unwrap_or_default();
        for path in [
            config_file.as_str(),
            "/etc/containerd/conf.d",
            "/etc/containerd/certs.d",
        ] {
            let (mount, rest) = mounts
                .iter()
                .filter_map(|m| {
                    Path::new(path)
                        .strip_prefix(&m.mount_path)
                        .ok()
                        .map(|rest| (m, rest.to_path_buf()))
                })
                .max_by_key(|(m, _)| m.mount_path.len())
                .unwrap_or_else(|| panic!("{what}: no volumeMount holds {path}"));
            assert_eq!(
                mount.read_only,
                Some(true),
                "{what}: volumeMount {} ({path}) must be read-only",
                mount.name
            );
            let host_path = volumes
                .iter()
                .find(|v| v.name == mount.name)
                .and_then(|v| v.host_path.clone())
                .unwrap_or_else(|| {
                    panic!("{what}: volume {} ({path}) must be a hostPath", mount.name)
                });
            assert_eq!(
                Path::new(&host_path.path).join(&rest),
                Path::new(path),
                "{what}: {path} in the pod is not the host's {path}"
            );
            assert!(
                matches!(
                    host_path.type_.as_deref(),
                    Some("Directory" | "DirectoryOrCreate")
                ) && (path != config_file || rest.as_os_str() != ""),
                "{what}: volume {} must be a directory holding {path} (a file hostPath is absent on some nodes, and without a type is created there as a directory)",
                mount.name
            );
        }
    }
}

/// The kubelet-config Component (KEP-2535's verification of pre-pulled images): the node's kubelet
/// configuration mounted read-only from its hostPath (type File) at /host + that path, and that
/// path passed as `--kubelet-config`, a flag of `pullgate run`; nothing else of the DaemonSet
/// changes, and the base alone has none of it.
#[test]
fn kubelet_config_component_mounts_the_kubelet_config_and_passes_it() {
    const HOST_PATH: &str = "/var/lib/kubelet/config.yaml";
    const IN_POD: &str = "/host/var/lib/kubelet/config.yaml";
    let flags = agent_flags();
    let (long, _) = flags
        .get("PULLGATE_KUBELET_CONFIG")
        .expect("`pullgate run` has no PULLGATE_KUBELET_CONFIG flag");
    assert_eq!(long, "kubelet-config");
    assert_eq!(
        env_default_host_root(),
        "/host",
        "the base's PULLGATE_HOST_ROOT is the /host the mount path is under"
    );

    let base = render("base");
    let objs = render_with_components("base", &["components/kubelet-config"]);
    let (obj, ds) = one_of::<DaemonSet>(&objs, "DaemonSet", "base + components/kubelet-config");
    let what = obj.what();
    let c = the_container(&obj, &ds);
    assert_eq!(
        c.args.as_deref().unwrap_or_default(),
        ["run".to_string(), format!("--kubelet-config={IN_POD}")],
        "{what}: args"
    );
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    let mount = mounts
        .iter()
        .find(|m| m.mount_path == IN_POD)
        .unwrap_or_else(|| panic!("{what}: no volumeMount at {IN_POD}"));
    assert_eq!(
        mount.read_only,
        Some(true),
        "{what}: {IN_POD} must be read-only"
    );
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap_or_else(|| panic!("{what}: no volume {}", mount.name));
    let host_path = volume
        .host_path
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: volume {} must be a hostPath", mount.name));
    assert_eq!(host_path.path, HOST_PATH, "{what}");
    assert_eq!(host_path.type_.as_deref(), Some("File"), "{what}");

    // Only the DaemonSet changes, and only by the arg, the mount and the volume.
    assert_eq!(objs.len(), base.len());
    let (base_obj, base_ds) = one_of::<DaemonSet>(&base, "DaemonSet", "base");
    let base_c = the_container(&base_obj, &base_ds);
    assert_eq!(c.args.as_ref().map(Vec::len), Some(2));
    assert_eq!(base_c.args.as_deref().unwrap_or_default(), ["run"]);
    let names = |ds: &DaemonSet| -> Vec<String> {
        let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        pod.volumes
            .iter()
            .flatten()
            .map(|v| v.name.clone())
            .collect()
    };
    let mut expected = names(&base_ds);
    expected.push("kubelet-config".into());
    assert_eq!(names(&ds), expected, "{what}: volumes");
    assert_eq!(
        mounts.len(),
        base_c.volume_mounts.as_ref().map_or(0, Vec::len) + 1,
        "{what}: volumeMounts"
    );
    for b in &base {
        if b.kind() != "DaemonSet" {
            let o = objs
                .iter()
                .find(|o| o.kind() == b.kind() && o.name() == b.name())
                .unwrap_or_else(|| panic!("{}: missing with the component", b.what()));
            assert_eq!(o.value, b.value, "{}: changed by the component", b.what());
        }
    }
}

/// The base's PULLGATE_HOST_ROOT.
fn env_default_host_root() -> String {
    let base = render("base");
    let (obj, ds) = one_of::<DaemonSet>(&base, "DaemonSet", "base");
    let c = the_container(&obj, &ds);
    env_value(&obj, &c, "PULLGATE_HOST_ROOT")
        .value
        .unwrap_or_default()
}
