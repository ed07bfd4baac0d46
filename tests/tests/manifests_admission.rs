#![allow(clippy::unwrap_used)]
//! The ValidatingAdmissionPolicy `pullgate-own-node` (`manifests/base/validatingadmissionpolicy.yaml`)
//! and its binding, as `kubectl kustomize` renders them, evaluated for real: every CEL expression
//! is compiled and run by the `cel` crate against admission requests built the way the API server
//! builds them, and each request must come out allowed or denied by the rule the policy promises.
//!
//! What the API server does, and [`Admission::admit`] does in the same order
//! (k8s.io/apiserver `pkg/admission/plugin/policy/validating`):
//!
//! 1. `spec.matchConstraints`: operation, group, version, resource and subresource
//!    (`nodes/status`), `excludeResourceRules`; the binding's `matchResources` narrow further.
//! 2. The parameter: the binding's `paramRef` names an object of `spec.paramKind`, looked up among
//!    the rendered objects; when it is missing, `parameterNotFoundAction: Deny` denies.
//! 3. `spec.matchConditions`, in order: one `false` and the policy does not apply; otherwise an
//!    error is handled by `failurePolicy` (`Fail`: denied).
//! 4. `spec.variables`, in order, each seeing the ones before it as `variables.NAME`. (The server
//!    evaluates them lazily; evaluated eagerly here, a variable whose expression fails is left
//!    out, so every expression that reads it fails, as it would there.)
//! 5. `spec.validations`: `false` denies with the evaluated `messageExpression` (falling back to
//!    `message`, then to `failed expression: …`); an error is handled by `failurePolicy`.
//!
//! The variables are bound as the server binds them: `object` and `oldObject` are the Node after
//! and before the write as unstructured JSON (integers as CEL `int`), `request` is the
//! `admission.k8s.io/v1` AdmissionRequest the server builds (`CreateAdmissionRequest`), converted
//! to unstructured with its `omitempty` fields omitted — so `request.subResource` does not exist
//! on a write to the Node itself, and `request.userInfo.extra` does not exist for a user without
//! extra information —, `params` is the ConfigMap, `namespaceObject` is null (a Node is
//! cluster-scoped). The policy may not use `authorizer` (a check below says so; this test has none).
//!
//! A patch reaches admission as an UPDATE with the patched object: the writes below are the
//! agent's own patches (a strategic merge of `status.conditions` keyed by type; a JSON patch that
//! tests and removes one taint), applied to a Node as the kubelet registers it, with the
//! server's own bookkeeping (`managedFields`) on every write.

use k8s_openapi::api::admissionregistration::v1::{
    NamedRuleWithOperations, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    ValidatingAdmissionPolicyBindingSpec, ValidatingAdmissionPolicySpec,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ConfigMap;
use pullgate_testenv::kustomize::{Obj, agent_identity, all_of, is_qualified_name, one_of, render};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// The node conditions the agent writes (and the only ones the admission policy lets it write).
const NODE_CONDITIONS: [&str; 2] = ["CriticalImagesReady", "PullCredentialsValid"];
/// The renderings that install the policy.
const ROOTS: [&str; 2] = ["base", "overlays/example"];
/// The user information key a pod-bound ServiceAccount token carries its node in.
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// The Node every write is about, and another one.
const NODE: &str = "worker-1";
const OTHER_NODE: &str = "worker-2";

// ---------------------------------------------------------------------------------------------
// The policy as the API server runs it
// ---------------------------------------------------------------------------------------------

/// One write to a Node, as admission sees it.
#[derive(Clone)]
struct Write {
    operation: &'static str,
    /// `""` for the Node itself, `"status"` for `nodes/status`.
    subresource: &'static str,
    user: User,
    old: Value,
    new: Value,
}

#[derive(Clone)]
struct User {
    username: String,
    uid: String,
    groups: Vec<String>,
    extra: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, PartialEq)]
enum Decision {
    /// The policy does not apply (matchConstraints or a matchCondition).
    NotApplicable,
    Allowed,
    /// Denied, with the message of every validation that failed, and their indices.
    Denied(Vec<(Option<usize>, String)>),
}

struct Validation {
    expression: String,
    program: cel::Program,
    message: Option<String>,
    message_expression: Option<cel::Program>,
}

/// A compiled policy and its binding, with the parameter the binding resolves to.
struct Admission {
    at: String,
    policy: ValidatingAdmissionPolicySpec,
    binding: ValidatingAdmissionPolicyBindingSpec,
    params: Option<Value>,
    env: Arc<cel::Env>,
    match_conditions: Vec<(String, cel::Program)>,
    variables: Vec<(String, cel::Program)>,
    validations: Vec<Validation>,
}

impl Admission {
    /// The one policy of the rendering, its binding, and the binding's parameter among the
    /// rendered objects. Every expression must compile.
    fn from_rendering(objs: &[Obj], at: &str) -> Self {
        let (policy_obj, policy) =
            one_of::<ValidatingAdmissionPolicy>(objs, "ValidatingAdmissionPolicy", at);
        let what = policy_obj.what();
        let bindings: Vec<_> =
            all_of::<ValidatingAdmissionPolicyBinding>(objs, "ValidatingAdmissionPolicyBinding")
                .into_iter()
                .filter(|(_, b)| {
                    b.spec.as_ref().and_then(|s| s.policy_name.as_deref())
                        == Some(policy_obj.name())
                })
                .collect();
        assert_eq!(
            bindings.len(),
            1,
            "{at}: one ValidatingAdmissionPolicyBinding of {} expected",
            policy_obj.name()
        );
        let binding = bindings[0].1.spec.clone().unwrap();
        let policy = policy.spec.unwrap();

        // The parameter, as the server finds it: an object of paramKind named by paramRef.
        let params = policy.param_kind.as_ref().and_then(|kind| {
            let param_ref = binding.param_ref.as_ref().unwrap_or_else(|| {
                panic!("{at}: the policy has a paramKind, its binding no paramRef")
            });
            assert!(
                param_ref.selector.is_none(),
                "{at}: paramRef.selector: this test resolves paramRef by name only; teach it"
            );
            objs.iter()
                .find(|o| {
                    Some(o.api_version()) == kind.api_version.as_deref()
                        && Some(o.kind()) == kind.kind.as_deref()
                        && Some(o.name()) == param_ref.name.as_deref()
                        && o.namespace() == param_ref.namespace.as_deref()
                })
                .map(|o| o.value.clone())
        });

        let env = Arc::new(cel::Env::stdlib());
        let compile = |expression: &str, field: &str| -> cel::Program {
            let program = env.compile(expression).unwrap_or_else(|e| {
                panic!("{what}: {field} does not compile as CEL: {e}\n  {expression}")
            });
            let refs = program.references();
            assert!(
                !refs.has_variable("authorizer"),
                "{what}: {field} uses `authorizer`, which this test does not bind: teach it"
            );
            program
        };
        let match_conditions = policy
            .match_conditions
            .iter()
            .flatten()
            .map(|c| {
                (
                    c.name.clone(),
                    compile(&c.expression, &format!("matchConditions {}", c.name)),
                )
            })
            .collect();
        let variables = policy
            .variables
            .iter()
            .flatten()
            .map(|v| {
                (
                    v.name.clone(),
                    compile(&v.expression, &format!("variables {}", v.name)),
                )
            })
            .collect();
        let validations = policy
            .validations
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, v)| Validation {
                expression: v.expression.clone(),
                program: compile(&v.expression, &format!("validations[{i}].expression")),
                message: v.message.clone().filter(|m| !m.is_empty()),
                message_expression: v
                    .message_expression
                    .as_deref()
                    .map(|m| compile(m, &format!("validations[{i}].messageExpression"))),
            })
            .collect();
        Self {
            at: at.to_owned(),
            policy,
            binding,
            params,
            env,
            match_conditions,
            variables,
            validations,
        }
    }

    fn failure_policy_denies(&self) -> bool {
        self.policy.failure_policy.as_deref().unwrap_or("Fail") == "Fail"
    }

    fn admit(&self, write: &Write) -> Decision {
        // 1. Which requests the policy and the binding apply to.
        let constraints = self
            .policy
            .match_constraints
            .as_ref()
            .unwrap_or_else(|| panic!("{}: spec.matchConstraints is required", self.at));
        let matches = |rules: Option<&Vec<NamedRuleWithOperations>>| {
            rules.into_iter().flatten().any(|r| rule_matches(r, write))
        };
        for (field, set) in [
            ("namespaceSelector", &constraints.namespace_selector),
            ("objectSelector", &constraints.object_selector),
        ] {
            assert!(
                set.as_ref().is_none_or(|s| s == &Default::default()),
                "{}: matchConstraints.{field}: this test does not evaluate selectors; teach it",
                self.at
            );
        }
        assert!(
            self.binding.match_resources.is_none(),
            "{}: the binding's matchResources: teach this test to apply them",
            self.at
        );
        if !matches(constraints.resource_rules.as_ref())
            || matches(constraints.exclude_resource_rules.as_ref())
        {
            return Decision::NotApplicable;
        }

        // 2. The parameter.
        if self.policy.param_kind.is_some() && self.params.is_none() {
            let action = self
                .binding
                .param_ref
                .as_ref()
                .and_then(|p| p.parameter_not_found_action.as_deref())
                .unwrap_or("Allow");
            return if action == "Deny" {
                Decision::Denied(vec![(
                    None,
                    "no params found for policy binding with `Deny` parameterNotFoundAction".into(),
                )])
            } else {
                Decision::NotApplicable
            };
        }

        let mut context = cel::Context::with_env(self.env.clone());
        context.add_variable_from_value("object", cel_value(&write.new));
        context.add_variable_from_value("oldObject", cel_value(&write.old));
        context.add_variable_from_value("request", cel_value(&admission_request(write)));
        context.add_variable_from_value(
            "params",
            self.params.as_ref().map_or(cel::Value::Null, cel_value),
        );
        context.add_variable_from_value("namespaceObject", cel::Value::Null);

        // 3. matchConditions: any false skips the policy, else an error fails by failurePolicy.
        let mut errors = Vec::new();
        for (name, program) in &self.match_conditions {
            match program.execute(&context) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => return Decision::NotApplicable,
                other => errors.push(format!("matchCondition {name}: {other:?}")),
            }
        }
        if !errors.is_empty() {
            return if self.failure_policy_denies() {
                Decision::Denied(errors.into_iter().map(|e| (None, e)).collect())
            } else {
                Decision::NotApplicable
            };
        }

        // 4. variables, in order.
        let mut variables: HashMap<String, cel::Value> = HashMap::new();
        for (name, program) in &self.variables {
            let mut scope = context.new_inner_scope();
            scope.add_variable_from_value("variables", variables.clone());
            if let Ok(value) = program.execute(&scope) {
                variables.insert(name.clone(), value);
            }
        }
        context.add_variable_from_value("variables", variables);

        // 5. validations.
        let mut denials = Vec::new();
        for (i, v) in self.validations.iter().enumerate() {
            match v.program.execute(&context) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => {
                    let evaluated =
                        v.message_expression
                            .as_ref()
                            .and_then(|m| match m.execute(&context) {
                                Ok(cel::Value::String(s))
                                    if !s.trim().is_empty() && !s.contains('\n') =>
                                {
                                    Some(s.to_string())
                                }
                                _ => None,
                            });
                    let message = evaluated
                        .or_else(|| v.message.clone())
                        .unwrap_or_else(|| format!("failed expression: {}", v.expression));
                    denials.push((Some(i), message));
                }
                other if self.failure_policy_denies() => denials.push((
                    Some(i),
                    format!("expression '{}' resulted in error: {other:?}", v.expression),
                )),
                _ => {}
            }
        }
        let deny = self
            .binding
            .validation_actions
            .iter()
            .flatten()
            .any(|a| a == "Deny");
        if denials.is_empty() || !deny {
            Decision::Allowed
        } else {
            Decision::Denied(denials)
        }
    }
}

/// One rule of `matchConstraints` against a write: operation, group, version, resource with
/// subresource (`nodes` is the Node itself only, `nodes/status` its status, `*` and `*/*`).
fn rule_matches(rule: &NamedRuleWithOperations, write: &Write) -> bool {
    let has = |list: &Option<Vec<String>>, value: &str| {
        list.iter().flatten().any(|v| v == "*" || v == value)
    };
    let resource = rule
        .resources
        .iter()
        .flatten()
        .any(|r| match r.split_once('/') {
            None => write.subresource.is_empty() && (r == "*" || r == "nodes"),
            Some((res, sub)) => {
                (res == "*" || res == "nodes") && (sub == "*" || sub == write.subresource)
            }
        });
    let names = rule.resource_names.as_deref().unwrap_or_default();
    has(&rule.operations, write.operation)
        && has(&rule.api_groups, "")
        && has(&rule.api_versions, "v1")
        && resource
        && rule
            .scope
            .as_deref()
            .is_none_or(|s| s == "*" || s == "Cluster")
        && (names.is_empty() || names.iter().any(|n| n == NODE))
}

/// The AdmissionRequest the API server builds for a policy (`CreateAdmissionRequest`), as
/// unstructured JSON: fields tagged `omitempty` are absent when empty.
fn admission_request(write: &Write) -> Value {
    let gvk = json!({"group": "", "version": "v1", "kind": "Node"});
    let gvr = json!({"group": "", "version": "v1", "resource": "nodes"});
    let mut user = json!({ "username": write.user.username });
    if !write.user.uid.is_empty() {
        user["uid"] = json!(write.user.uid);
    }
    if !write.user.groups.is_empty() {
        user["groups"] = json!(write.user.groups);
    }
    if !write.user.extra.is_empty() {
        user["extra"] = json!(write.user.extra);
    }
    let name = write.new["metadata"]["name"].clone();
    let mut request = json!({
        "uid": "",
        "kind": gvk,
        "resource": gvr,
        "requestKind": gvk,
        "requestResource": gvr,
        "name": name,
        "operation": write.operation,
        "userInfo": user,
        "object": null,
        "oldObject": null,
        "dryRun": false,
        "options": {"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"},
    });
    if !write.subresource.is_empty() {
        request["subResource"] = json!(write.subresource);
        request["requestSubResource"] = json!(write.subresource);
    }
    request
}

/// Unstructured JSON as CEL sees it: integers are `int`, other numbers `double`.
fn cel_value(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => n
            .as_i64()
            .map_or_else(|| cel::Value::Float(n.as_f64().unwrap()), cel::Value::Int),
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(a) => cel::Value::List(Arc::new(a.iter().map(cel_value).collect())),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| (k.clone(), cel_value(v)))
            .collect::<HashMap<String, cel::Value>>()
            .into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes, users and writes
// ---------------------------------------------------------------------------------------------

/// A Node as the kubelet registers it and the API server stores it, tainted with pullgate's
/// `own_taint` (NoSchedule) and one taint of someone else's.
fn stored_node(name: &str, own_taint: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": "0b4f6c1e-52b5-4c43-9a51-3f0c2b8d1a77",
            "resourceVersion": "48213",
            "creationTimestamp": "2026-03-01T10:00:00Z",
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "m6i.large",
            },
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
            "managedFields": [{
                "manager": "kubelet",
                "operation": "Update",
                "apiVersion": "v1",
                "time": "2026-03-01T10:00:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {}}},
            }],
        },
        "spec": {
            "podCIDR": "10.244.1.0/24",
            "podCIDRs": ["10.244.1.0/24"],
            "providerID": format!("aws:///eu-west-1a/i-0{name}"),
            "taints": [
                {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
                {"key": own_taint, "effect": "NoSchedule"},
            ],
        },
        "status": {
            "capacity": {"cpu": "2", "memory": "8012284Ki", "pods": "110"},
            "allocatable": {"cpu": "1930m", "memory": "7295484Ki", "pods": "110"},
            "conditions": [
                kubelet_condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                kubelet_condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                kubelet_condition("PIDPressure", "False", "KubeletHasSufficientPID"),
                kubelet_condition("Ready", "True", "KubeletReady"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": "10.0.1.17"},
                {"type": "Hostname", "address": name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": "ec2a3b0f", "systemUUID": "ec2a3b0f", "bootID": "5d1c",
                "kernelVersion": "6.1.0", "osImage": "Debian GNU/Linux 13", "containerRuntimeVersion": "containerd://2.1.0",
                "kubeletVersion": "v1.33.1", "kubeProxyVersion": "v1.33.1", "operatingSystem": "linux", "architecture": "amd64",
            },
            "images": [{"names": ["registry.k8s.io/pause@sha256:ee6521f290b2168b6e0935a181d4cff9be1ac3f505666ef0e3c98fae8199917a"], "sizeBytes": 320_368}],
        },
    })
}

fn kubelet_condition(type_: &str, status: &str, reason: &str) -> Value {
    json!({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": format!("kubelet says {reason}"),
        "lastHeartbeatTime": "2026-03-01T10:05:00Z",
        "lastTransitionTime": "2026-03-01T10:00:00Z",
    })
}

/// A condition as the agent writes it (`node_status.rs`): all six fields.
fn own_condition(type_: &str, status: &str, heartbeat: &str) -> Value {
    json!({
        "type": type_,
        "status": status,
        "reason": if status == "True" { "AllPresent" } else { "Pending" },
        "message": format!("{type_} is {status}"),
        "lastTransitionTime": "2026-03-01T10:01:00Z",
        "lastHeartbeatTime": heartbeat,
    })
}

/// The agent's strategic-merge patch of `status.conditions`: merged by `type`, each given
/// field replacing the stored one, new types appended.
fn merge_conditions(node: &Value, conditions: &[Value]) -> Value {
    let mut node = node.clone();
    let list = node["status"]
        .as_object_mut()
        .unwrap()
        .entry("conditions")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .unwrap();
    for c in conditions {
        match list.iter_mut().find(|e| e["type"] == c["type"]) {
            Some(existing) => {
                for (k, v) in c.as_object().unwrap() {
                    existing[k] = v.clone();
                }
            }
            None => list.push(c.clone()),
        }
    }
    node
}

/// `patch` (RFC 6902) applied to `node`.
fn json_patch(node: &Value, patch: Value) -> Value {
    let mut node = node.clone();
    let patch: json_patch::Patch = serde_json::from_value(patch).unwrap();
    json_patch::patch(&mut node, &patch).unwrap();
    node
}

/// The agent's taint removal (`node_taint.rs`): `test` the element, then `remove` it.
fn remove_taint(node: &Value, key: &str, effect: &str) -> Value {
    let taints = node["spec"]["taints"].as_array().unwrap();
    let index = taints
        .iter()
        .position(|t| t["key"] == key && t["effect"] == effect)
        .unwrap_or_else(|| panic!("no taint {key}:{effect} on the node"));
    let path = format!("/spec/taints/{index}");
    json_patch(
        node,
        json!([
            {"op": "test", "path": path, "value": taints[index]},
            {"op": "remove", "path": path},
        ]),
    )
}

/// What the API server itself changes on every write: the writer's `managedFields` entry.
fn server_bookkeeping(mut node: Value, manager: &str, subresource: &str) -> Value {
    let mut entry = json!({
        "manager": manager,
        "operation": "Update",
        "apiVersion": "v1",
        "time": "2026-03-01T10:06:00Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": {},
    });
    if !subresource.is_empty() {
        entry["subresource"] = json!(subresource);
    }
    node["metadata"]["managedFields"]
        .as_array_mut()
        .unwrap()
        .push(entry);
    node
}

/// The agent's ServiceAccount, with a pod-bound token of a pod on `node` (or no node at all).
fn agent_user(agent: &(String, String), node: Option<&str>) -> User {
    let (ns, sa) = agent;
    let mut extra = BTreeMap::from([(
        "authentication.kubernetes.io/credential-id".to_owned(),
        vec!["JTI=7e2c1f0a-8a55-4a36-9d8e-3b1c2d4e5f60".to_owned()],
    )]);
    if let Some(node) = node {
        extra.insert(
            "authentication.kubernetes.io/pod-name".into(),
            vec!["pullgate-x7k2p".into()],
        );
        extra.insert(
            "authentication.kubernetes.io/pod-uid".into(),
            vec!["5c1e7d2a-1111-4b2c-8d3e-000000000001".into()],
        );
        extra.insert(NODE_NAME_EXTRA.into(), vec![node.into()]);
        extra.insert(
            "authentication.kubernetes.io/node-uid".into(),
            vec!["0b4f6c1e-52b5-4c43-9a51-3f0c2b8d1a77".into()],
        );
    }
    User {
        username: format!("system:serviceaccount:{ns}:{sa}"),
        uid: "9f8e7d6c-0000-4000-8000-00000000beef".into(),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
        extra,
    }
}

fn kubelet_user() -> User {
    User {
        username: format!("system:node:{NODE}"),
        uid: String::new(),
        groups: vec!["system:nodes".into(), "system:authenticated".into()],
        extra: BTreeMap::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
enum Expect {
    NotApplicable,
    Allow,
    /// Denied, by validations whose messages contain these, one each, in order.
    Deny(&'static [&'static str]),
}

const OTHER_NODE_MSG: &str = "may write only the Node its own pod runs on";
const METADATA_MSG: &str = "may not change a Node's metadata";
const SPEC_MSG: &str = "may change no field of a Node's spec but spec.taints";
const ADD_TAINT_MSG: &str = "may not add or change a taint";
const OWN_TAINT_MSG: &str = "may remove only its own taint";
const STATUS_MSG: &str = "may change no field of a Node's status but status.conditions";
const CONDITIONS_MSG: &str = "may write only its own node conditions";

/// The cases, for a rendering whose taint key is `key` and whose agent is `agent`.
fn cases(key: &str, agent: &(String, String)) -> Vec<(&'static str, Write, Expect)> {
    let stored = stored_node(NODE, key);
    let own = agent_user(agent, Some(NODE));
    let status = |old: &Value, new: Value, user: &User| Write {
        operation: "UPDATE",
        subresource: "status",
        user: user.clone(),
        old: old.clone(),
        new: server_bookkeeping(new, "pullgate", "status"),
    };
    let node = |old: &Value, new: Value, user: &User| Write {
        operation: "UPDATE",
        subresource: "",
        user: user.clone(),
        old: old.clone(),
        new: server_bookkeeping(new, "pullgate", ""),
    };
    let first = [
        own_condition(NODE_CONDITIONS[0], "False", "2026-03-01T10:01:00Z"),
        own_condition(NODE_CONDITIONS[1], "True", "2026-03-01T10:01:00Z"),
    ];
    let with_own = merge_conditions(&stored, &first);
    let heartbeat = [
        own_condition(NODE_CONDITIONS[0], "True", "2026-03-01T10:02:00Z"),
        own_condition(NODE_CONDITIONS[1], "True", "2026-03-01T10:02:00Z"),
    ];
    let mut no_conditions = stored.clone();
    no_conditions["status"]
        .as_object_mut()
        .unwrap()
        .remove("conditions");
    let untainted = remove_taint(&stored, key, "NoSchedule");
    let mut only_own_taint = stored.clone();
    only_own_taint["spec"]["taints"] = json!([{"key": key, "effect": "NoSchedule"}]);
    let mut no_taints_field = json_patch(
        &only_own_taint,
        json!([{"op": "remove", "path": "/spec/taints"}]),
    );
    no_taints_field["metadata"]["resourceVersion"] = json!("48214");

    vec![
        // --- what the agent does ---
        (
            "the agent writes its two conditions for the first time",
            status(&stored, with_own.clone(), &own),
            Expect::Allow,
        ),
        (
            "the agent updates its conditions (status and heartbeat)",
            status(&with_own, merge_conditions(&with_own, &heartbeat), &own),
            Expect::Allow,
        ),
        (
            "the agent writes one of its conditions",
            status(
                &with_own,
                merge_conditions(&with_own, &heartbeat[..1]),
                &own,
            ),
            Expect::Allow,
        ),
        (
            "the agent writes its conditions on a node that has none yet",
            status(
                &no_conditions,
                merge_conditions(&no_conditions, &first),
                &own,
            ),
            Expect::Allow,
        ),
        (
            "the agent removes its own taint, others stay",
            node(&stored, untainted.clone(), &own),
            Expect::Allow,
        ),
        (
            "the agent removes its own taint, the last one (taints: [])",
            node(
                &only_own_taint,
                remove_taint(&only_own_taint, key, "NoSchedule"),
                &own,
            ),
            Expect::Allow,
        ),
        (
            "the agent removes its own taint, the last one (no taints field; resourceVersion moves)",
            node(&only_own_taint, no_taints_field, &own),
            Expect::Allow,
        ),
        (
            "a no-op write of the node",
            node(&stored, stored.clone(), &own),
            Expect::Allow,
        ),
        // --- the node: only the caller's own ---
        (
            "conditions on another node",
            status(
                &stored_node(OTHER_NODE, key),
                merge_conditions(&stored_node(OTHER_NODE, key), &first),
                &own,
            ),
            Expect::Deny(&[OTHER_NODE_MSG]),
        ),
        (
            "own taint removed from another node",
            node(
                &stored_node(OTHER_NODE, key),
                remove_taint(&stored_node(OTHER_NODE, key), key, "NoSchedule"),
                &own,
            ),
            Expect::Deny(&[OTHER_NODE_MSG]),
        ),
        (
            "a token without a node (legacy Secret token, feature gate off)",
            status(&stored, with_own.clone(), &agent_user(agent, None)),
            Expect::Deny(&[OTHER_NODE_MSG]),
        ),
        (
            "a user without any extra information (impersonation)",
            status(
                &stored,
                with_own.clone(),
                &User {
                    extra: BTreeMap::new(),
                    ..own.clone()
                },
            ),
            Expect::Deny(&[OTHER_NODE_MSG]),
        ),
        (
            "a token naming two nodes",
            status(
                &stored,
                with_own.clone(),
                &User {
                    extra: BTreeMap::from([(
                        NODE_NAME_EXTRA.to_owned(),
                        vec![NODE.to_owned(), OTHER_NODE.to_owned()],
                    )]),
                    ..own.clone()
                },
            ),
            Expect::Deny(&[OTHER_NODE_MSG]),
        ),
        // --- metadata ---
        (
            "a label added (with the conditions)",
            status(
                &stored,
                json_patch(
                    &with_own,
                    json!([{"op": "add", "path": "/metadata/labels/pullgate.io~1ready", "value": "true"}]),
                ),
                &own,
            ),
            Expect::Deny(&[METADATA_MSG]),
        ),
        (
            "a label changed (with the taint removal)",
            node(
                &stored,
                json_patch(
                    &untainted,
                    json!([{"op": "replace", "path": "/metadata/labels/kubernetes.io~1os", "value": "windows"}]),
                ),
                &own,
            ),
            Expect::Deny(&[METADATA_MSG]),
        ),
        (
            "an annotation removed",
            node(
                &stored,
                json_patch(
                    &stored,
                    json!([{"op": "remove", "path": "/metadata/annotations/node.alpha.kubernetes.io~1ttl"}]),
                ),
                &own,
            ),
            Expect::Deny(&[METADATA_MSG]),
        ),
        (
            "a finalizer added",
            status(
                &stored,
                json_patch(
                    &with_own,
                    json!([{"op": "add", "path": "/metadata/finalizers", "value": ["pullgate.io/hold"]}]),
                ),
                &own,
            ),
            Expect::Deny(&[METADATA_MSG]),
        ),
        // --- nodes: the spec and the taints ---
        (
            "the node cordoned (spec.unschedulable)",
            node(
                &stored,
                json_patch(
                    &stored,
                    json!([{"op": "add", "path": "/spec/unschedulable", "value": true}]),
                ),
                &own,
            ),
            Expect::Deny(&[SPEC_MSG]),
        ),
        (
            "spec.podCIDR changed",
            node(
                &stored,
                json_patch(
                    &stored,
                    json!([{"op": "replace", "path": "/spec/podCIDR", "value": "10.244.9.0/24"}]),
                ),
                &own,
            ),
            Expect::Deny(&[SPEC_MSG]),
        ),
        (
            "another taint removed",
            node(
                &stored,
                remove_taint(&stored, "dedicated", "NoSchedule"),
                &own,
            ),
            Expect::Deny(&[OWN_TAINT_MSG]),
        ),
        (
            "every taint removed",
            node(
                &stored,
                json_patch(
                    &stored,
                    json!([{"op": "replace", "path": "/spec/taints", "value": []}]),
                ),
                &own,
            ),
            Expect::Deny(&[OWN_TAINT_MSG]),
        ),
        (
            "a taint added",
            node(
                &stored,
                json_patch(
                    &stored,
                    json!([{"op": "add", "path": "/spec/taints/-", "value": {"key": "example.com/x", "effect": "NoExecute"}}]),
                ),
                &own,
            ),
            Expect::Deny(&[ADD_TAINT_MSG]),
        ),
        (
            "its own taint added back",
            node(&untainted, stored.clone(), &own),
            Expect::Deny(&[ADD_TAINT_MSG]),
        ),
        (
            "another taint's value changed",
            node(
                &stored,
                json_patch(
                    &stored,
                    json!([{"op": "replace", "path": "/spec/taints/0/value", "value": "cpu"}]),
                ),
                &own,
            ),
            Expect::Deny(&[ADD_TAINT_MSG, OWN_TAINT_MSG]),
        ),
        (
            "its own taint's effect changed to NoExecute",
            node(
                &stored,
                json_patch(
                    &stored,
                    json!([{"op": "replace", "path": "/spec/taints/1/effect", "value": "NoExecute"}]),
                ),
                &own,
            ),
            Expect::Deny(&[ADD_TAINT_MSG]),
        ),
        (
            "a taint with its own key but another effect (NoExecute) removed",
            {
                let mut old = stored.clone();
                old["spec"]["taints"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"key": key, "effect": "NoExecute"}));
                node(&old, remove_taint(&old, key, "NoExecute"), &own)
            },
            Expect::Deny(&[OWN_TAINT_MSG]),
        ),
        (
            "its own taint removed and another added",
            node(
                &stored,
                json_patch(
                    &untainted,
                    json!([{"op": "add", "path": "/spec/taints/-", "value": {"key": "example.com/x", "effect": "NoSchedule"}}]),
                ),
                &own,
            ),
            Expect::Deny(&[ADD_TAINT_MSG]),
        ),
        // --- nodes/status: the conditions ---
        (
            "the kubelet's Ready changed",
            status(&with_own, kubelet_ready_false_of(&with_own), &own),
            Expect::Deny(&[CONDITIONS_MSG]),
        ),
        (
            "the kubelet's MemoryPressure removed",
            status(
                &with_own,
                json_patch(
                    &with_own,
                    json!([{"op": "remove", "path": "/status/conditions/0"}]),
                ),
                &own,
            ),
            Expect::Deny(&[CONDITIONS_MSG]),
        ),
        (
            "every condition replaced by its own two",
            status(
                &stored,
                json_patch(
                    &stored,
                    json!([{"op": "replace", "path": "/status/conditions", "value": first}]),
                ),
                &own,
            ),
            Expect::Deny(&[CONDITIONS_MSG]),
        ),
        (
            "a condition of someone else's added",
            status(
                &with_own,
                merge_conditions(
                    &with_own,
                    &[own_condition(
                        "NetworkUnavailable",
                        "True",
                        "2026-03-01T10:02:00Z",
                    )],
                ),
                &own,
            ),
            Expect::Deny(&[CONDITIONS_MSG]),
        ),
        (
            "a condition type that only resembles its own",
            status(
                &stored,
                merge_conditions(
                    &stored,
                    &[own_condition(
                        "CriticalImagesReadyX",
                        "True",
                        "2026-03-01T10:02:00Z",
                    )],
                ),
                &own,
            ),
            Expect::Deny(&[CONDITIONS_MSG]),
        ),
        (
            "status.capacity changed with the conditions",
            status(
                &stored,
                json_patch(
                    &with_own,
                    json!([{"op": "replace", "path": "/status/capacity/pods", "value": "250"}]),
                ),
                &own,
            ),
            Expect::Deny(&[STATUS_MSG]),
        ),
        (
            "status.addresses removed",
            status(
                &stored,
                json_patch(
                    &stored,
                    json!([{"op": "remove", "path": "/status/addresses"}]),
                ),
                &own,
            ),
            Expect::Deny(&[STATUS_MSG]),
        ),
        (
            "status.config added",
            status(
                &stored,
                json_patch(
                    &stored,
                    json!([{"op": "add", "path": "/status/config", "value": {}}]),
                ),
                &own,
            ),
            Expect::Deny(&[STATUS_MSG]),
        ),
        // --- who and what the policy is about ---
        (
            "the kubelet's own writes are not the policy's business",
            Write {
                user: kubelet_user(),
                ..status(
                    &with_own,
                    json_patch(
                        &with_own,
                        json!([{"op": "replace", "path": "/status/conditions/3/status", "value": "False"}]),
                    ),
                    &own,
                )
            },
            Expect::NotApplicable,
        ),
        (
            "an administrator removing every taint",
            Write {
                user: User {
                    username: "kubernetes-admin".into(),
                    uid: String::new(),
                    groups: vec![
                        "kubeadm:cluster-admins".into(),
                        "system:authenticated".into(),
                    ],
                    extra: BTreeMap::new(),
                },
                ..node(
                    &stored,
                    json_patch(&stored, json!([{"op": "remove", "path": "/spec/taints"}])),
                    &own,
                )
            },
            Expect::NotApplicable,
        ),
        (
            "a ServiceAccount of the same name in another namespace",
            status(
                &stored,
                kubelet_ready_false_of(&stored),
                &agent_user(&("kube-system".into(), agent.1.clone()), Some(NODE)),
            ),
            Expect::NotApplicable,
        ),
        (
            "a DELETE of the node is not matched (and RBAC grants none)",
            Write {
                operation: "DELETE",
                ..node(&stored, stored.clone(), &own)
            },
            Expect::NotApplicable,
        ),
    ]
}

fn kubelet_ready_false_of(node: &Value) -> Value {
    let mut n = node.clone();
    n["status"]["conditions"][3]["status"] = json!("False");
    n
}

/// The ConfigMap (name, key) the DaemonSet takes its taint key from.
fn taint_source(objs: &[Obj], at: &str) -> (String, String) {
    let (obj, ds) = one_of::<DaemonSet>(objs, "DaemonSet", at);
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let key_ref = pod
        .containers
        .iter()
        .flat_map(|c| c.env.iter().flatten())
        .find(|e| e.name == "PULLGATE_TAINT_KEY")
        .and_then(|e| e.value_from.clone())
        .and_then(|v| v.config_map_key_ref)
        .unwrap_or_else(|| {
            panic!(
                "{}: env PULLGATE_TAINT_KEY must come from a configMapKeyRef (shared with the admission policy)",
                obj.what()
            )
        });
    (key_ref.name, key_ref.key)
}

/// The taint key the rendering configures: the DaemonSet's ConfigMap, which must exist in the
/// agent's namespace.
fn taint_key(objs: &[Obj], at: &str) -> String {
    let (ns, _) = agent_identity(objs, at);
    let (name, key) = taint_source(objs, at);
    let (cm_obj, cm) = all_of::<ConfigMap>(objs, "ConfigMap")
        .into_iter()
        .find(|(o, _)| o.name() == name && o.namespace() == Some(ns.as_str()))
        .unwrap_or_else(|| panic!("{at}: ConfigMap {ns}/{name} is not among the objects"));
    let value = cm
        .data
        .as_ref()
        .and_then(|d| d.get(&key))
        .unwrap_or_else(|| panic!("{}: data.{key} is missing", cm_obj.what()))
        .clone();
    assert!(
        is_qualified_name(&value),
        "{}: {value:?} is not a valid taint key",
        cm_obj.what()
    );
    value
}

fn check(admission: &Admission, name: &str, write: &Write, expect: &Expect) -> BTreeSet<usize> {
    let at = &admission.at;
    let decision = admission.admit(write);
    match (expect, &decision) {
        (Expect::NotApplicable, Decision::NotApplicable) | (Expect::Allow, Decision::Allowed) => {
            BTreeSet::new()
        }
        (Expect::Deny(expected), Decision::Denied(denials))
            if denials.len() == expected.len()
                && denials
                    .iter()
                    .zip(expected.iter())
                    .all(|((_, message), e)| message.contains(e)) =>
        {
            denials.iter().filter_map(|(i, _)| *i).collect()
        }
        _ => panic!("{at}: {name}: expected {expect:?}, the policy decides {decision:#?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn the_policy_allows_the_agents_own_writes_and_denies_everything_else() {
    for root in ROOTS {
        let objs = render(root);
        let admission = Admission::from_rendering(&objs, root);
        let agent = agent_identity(&objs, root);
        let key = taint_key(&objs, root);
        let mut denied_by = BTreeSet::new();
        for (name, write, expect) in cases(&key, &agent) {
            denied_by.extend(check(&admission, name, &write, &expect));
        }
        // Every validation is the one that denies some case: none is dead or untested.
        let all: BTreeSet<usize> = (0..admission.validations.len()).collect();
        assert_eq!(
            denied_by,
            all,
            "{root}: validations that deny no case of the table (add one): {:?}",
            all.difference(&denied_by).collect::<Vec<_>>()
        );
    }
}

#[test]
fn the_policy_follows_the_taint_key_of_its_parameter() {
    // The overlay changes the key; the policy reads it from the ConfigMap, not from a constant.
    let base_key = taint_key(&render("base"), "base");
    let objs = render("overlays/example");
    let key = taint_key(&objs, "overlays/example");
    assert_ne!(
        key, base_key,
        "overlays/example is expected to change the taint key (taint-key.yaml)"
    );
    let admission = Admission::from_rendering(&objs, "overlays/example");
    let own = agent_user(&agent_identity(&objs, "overlays/example"), Some(NODE));
    let mut old = stored_node(NODE, &key);
    old["spec"]["taints"]
        .as_array_mut()
        .unwrap()
        .push(json!({"key": base_key, "effect": "NoSchedule"}));
    let write = |new: Value| Write {
        operation: "UPDATE",
        subresource: "",
        user: own.clone(),
        old: old.clone(),
        new: server_bookkeeping(new, "pullgate", ""),
    };
    check(
        &admission,
        "the overlay's key removed",
        &write(remove_taint(&old, &key, "NoSchedule")),
        &Expect::Allow,
    );
    check(
        &admission,
        "the base's default key removed under the overlay",
        &write(remove_taint(&old, &base_key, "NoSchedule")),
        &Expect::Deny(&[OWN_TAINT_MSG]),
    );
}

#[test]
fn without_its_parameter_the_policy_denies() {
    for root in ROOTS {
        let objs = render(root);
        let (name, _) = taint_source(&objs, root);
        let without: Vec<Obj> = objs
            .iter()
            .filter(|o| !(o.kind() == "ConfigMap" && o.name() == name))
            .cloned()
            .collect();
        let admission = Admission::from_rendering(&without, root);
        let key = taint_key(&objs, root);
        let own = agent_user(&agent_identity(&objs, root), Some(NODE));
        let stored = stored_node(NODE, &key);
        let write = Write {
            operation: "UPDATE",
            subresource: "",
            user: own,
            old: stored.clone(),
            new: server_bookkeeping(remove_taint(&stored, &key, "NoSchedule"), "pullgate", ""),
        };
        assert_eq!(
            admission.admit(&write),
            Decision::Denied(vec![(
                None,
                "no params found for policy binding with `Deny` parameterNotFoundAction".into()
            )]),
            "{root}: without the ConfigMap the agent's writes must be denied, not allowed unchecked"
        );
    }
}

#[test]
fn the_policy_and_its_binding_are_wired_to_the_agent() {
    for root in ROOTS {
        let objs = render(root);
        let (ns, sa) = agent_identity(&objs, root);
        let (policy_obj, policy) =
            one_of::<ValidatingAdmissionPolicy>(&objs, "ValidatingAdmissionPolicy", root);
        let what = policy_obj.what();
        let spec = policy.spec.unwrap();
        assert_eq!(
            spec.failure_policy.as_deref(),
            Some("Fail"),
            "{what}: spec.failurePolicy"
        );
        let param_kind = spec
            .param_kind
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: spec.paramKind"));
        assert_eq!(
            (
                param_kind.api_version.as_deref(),
                param_kind.kind.as_deref()
            ),
            (Some("v1"), Some("ConfigMap")),
            "{what}: spec.paramKind"
        );
        assert!(
            spec.validations
                .iter()
                .flatten()
                .all(|v| v.reason.as_deref() == Some("Forbidden")),
            "{what}: every validation should deny with reason Forbidden"
        );

        // Applies to UPDATE of nodes and nodes/status by the DaemonSet's ServiceAccount: the
        // matchConditions select exactly that user (checked by evaluating them in the table).
        let admission = Admission::from_rendering(&objs, root);
        let stored = stored_node(NODE, "pullgate.io/not-ready");
        for subresource in ["", "status"] {
            let write = Write {
                operation: "UPDATE",
                subresource,
                user: User {
                    username: format!("system:serviceaccount:{ns}:{sa}"),
                    ..kubelet_user()
                },
                old: stored.clone(),
                new: stored.clone(),
            };
            assert_ne!(
                admission.admit(&write),
                Decision::NotApplicable,
                "{what}: must apply to UPDATE of nodes{} by {ns}/{sa}",
                if subresource.is_empty() {
                    ""
                } else {
                    "/status"
                }
            );
        }

        // The binding denies, with the DaemonSet's ConfigMap as its required parameter.
        let (cm_name, cm_key) = taint_source(&objs, root);
        let (binding_obj, binding) = one_of::<ValidatingAdmissionPolicyBinding>(
            &objs,
            "ValidatingAdmissionPolicyBinding",
            root,
        );
        let bwhat = binding_obj.what();
        let bspec = binding.spec.unwrap();
        assert_eq!(
            bspec.validation_actions.as_deref(),
            Some(&["Deny".to_owned()][..]),
            "{bwhat}: spec.validationActions"
        );
        let param_ref = bspec
            .param_ref
            .unwrap_or_else(|| panic!("{bwhat}: spec.paramRef"));
        assert_eq!(
            (param_ref.name.as_deref(), param_ref.namespace.as_deref()),
            (Some(cm_name.as_str()), Some(ns.as_str())),
            "{bwhat}: spec.paramRef must name the DaemonSet's ConfigMap"
        );
        assert_eq!(
            param_ref.parameter_not_found_action.as_deref(),
            Some("Deny"),
            "{bwhat}: spec.paramRef.parameterNotFoundAction"
        );
        // The policy reads the key the DaemonSet reads.
        let reads_key = spec
            .variables
            .iter()
            .flatten()
            .map(|v| &v.expression)
            .chain(spec.validations.iter().flatten().map(|v| &v.expression))
            .any(|e| e.contains(&format!("params.data['{cm_key}']")));
        assert!(
            reads_key,
            "{what}: the policy must read the taint key params.data['{cm_key}'], the key the DaemonSet reads"
        );
    }
}
