//! RBAC in the test API server, opt-in ([`ApiServer::enforce_rbac`]): every request is taken as
//! made by pullgate's ServiceAccount ([`AGENT_USER`], with the groups the real authenticator gives a
//! ServiceAccount token) and authorized by the Roles, RoleBindings, ClusterRoles and
//! ClusterRoleBindings (`rbac.authorization.k8s.io/v1`) stored in the server, with the real
//! semantics:
//!
//! - request attributes as k8s.io/apiserver `pkg/endpoints/request/requestinfo.go`
//!   (`RequestInfoFactory.NewRequestInfo`) builds them: the verb from the method (`GET` of an
//!   object → `get`, of a collection → `list`, `watch=true` → `watch`, `POST` → `create`, `PUT` →
//!   `update`, `PATCH` → `patch`, `DELETE` → `delete`, of a collection → `deletecollection`), and
//!   for `list`/`watch` the object name from a `metadata.name=` field selector (what makes a by-name
//!   watch authorizable by `resourceNames`);
//! - rule matching as kubernetes `plugin/pkg/auth/authorizer/rbac/rbac.go` (`RuleAllows`) and
//!   `pkg/apis/rbac/v1/evaluation_helpers.go` (`VerbMatches`, `APIGroupMatches`, `ResourceMatches`
//!   with `*`, `resource/subresource` and `*/subresource`, `ResourceNameMatches`: a rule with
//!   `resourceNames` never matches a request without a name, such as `create` or an unnamed
//!   `list`);
//! - subjects as `rbac.go` (`appliesToUser`): `User` by name, `Group` by the user's groups,
//!   `ServiceAccount` as `system:serviceaccount:<namespace>:<name>`, its namespace defaulting to the
//!   RoleBinding's;
//! - bindings as the real rule resolver (`pkg/registry/rbac/validation/rule.go`): every
//!   ClusterRoleBinding, then the RoleBindings of the request's namespace, whose `roleRef` is a
//!   Role of that namespace or a ClusterRole;
//! - a denial is `403 Forbidden` with the real message (k8s.io/apiserver
//!   `pkg/endpoints/handlers/responsewriters/errors.go`, `forbiddenMessage`, wrapped by
//!   `errors.NewForbidden`), and is recorded ([`ApiServer::rbac_denials`]).
//!
//! Not done: aggregated ClusterRoles (`aggregationRule`), non-resource URLs (every request here is
//! a resource request), impersonation, other users than the agent's. TokenReviews and
//! SubjectAccessReviews (`reviews`) are answered before authorization, as if granted.

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::Value;
use std::collections::HashMap;

use super::{ApiServer, Collection, Store, status};

/// The user every request is made as while RBAC is enforced: pullgate's ServiceAccount as the
/// manifests create it (`manifests/base/serviceaccount.yaml`).
pub const AGENT_USER: &str = "system:serviceaccount:pullgate-system:pullgate";
/// The groups the ServiceAccount token authenticator adds (k8s.io/apiserver
/// `pkg/authentication/serviceaccount/util.go`, `MakeGroupNames`), and `system:authenticated`.
const AGENT_GROUPS: [&str; 3] = [
    "system:serviceaccounts",
    "system:serviceaccounts:pullgate-system",
    "system:authenticated",
];

/// Whether RBAC is enforced, and what it denied.
#[derive(Default)]
pub(crate) struct Rbac {
    enforced: bool,
    denials: Vec<String>,
}

/// What the authorizer sees of a request (`authorizer.Attributes`, resource requests only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attributes {
    pub(crate) verb: String,
    pub(crate) group: String,
    pub(crate) resource: String,
    pub(crate) subresource: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
}

impl Attributes {
    /// As `RequestInfoFactory` builds them from the routed request. `api` is `v1` or
    /// `group/version`.
    pub(crate) fn of(
        method: &Method,
        api: &str,
        namespace: Option<&str>,
        plural: &str,
        name: Option<&str>,
        subresource: Option<&str>,
        query: &HashMap<String, String>,
    ) -> Self {
        let group = api.split_once('/').map_or("", |(g, _)| g).to_string();
        let mut name = name.unwrap_or("").to_string();
        let verb = match *method {
            Method::GET | Method::HEAD if name.is_empty() => {
                // requestinfo.go: a get without a name is a list or a watch, and an exact
                // `metadata.name=` field selector is the request's name.
                if let Some(selected) = exact_name(query) {
                    name = selected;
                }
                if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                    "watch"
                } else {
                    "list"
                }
            }
            Method::GET | Method::HEAD => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if name.is_empty() => "deletecollection",
            Method::DELETE => "delete",
            _ => "",
        };
        Self {
            verb: verb.into(),
            group,
            resource: plural.into(),
            subresource: subresource.unwrap_or("").into(),
            namespace: namespace.unwrap_or("").into(),
            name,
        }
    }
}

/// `fieldSelector.RequiresExactMatch("metadata.name")`: a term `metadata.name=X` (or `==X`), taken
/// when it is a valid path segment name (requestinfo.go, `path.IsValidPathSegmentName`).
fn exact_name(query: &HashMap<String, String>) -> Option<String> {
    let selector = query.get("fieldSelector")?;
    selector.split(',').find_map(|term| {
        let value = term
            .strip_prefix("metadata.name==")
            .or_else(|| term.strip_prefix("metadata.name="))?;
        let valid =
            !value.is_empty() && value != "." && value != ".." && !value.contains(['/', '%']);
        valid.then(|| value.to_string())
    })
}

fn strings<'a>(rule: &'a Value, field: &str) -> impl Iterator<Item = &'a str> {
    rule[field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// evaluation_helpers.go `VerbMatches`.
fn verb_matches(rule: &Value, verb: &str) -> bool {
    strings(rule, "verbs").any(|v| v == "*" || v == verb)
}

/// evaluation_helpers.go `APIGroupMatches`.
fn api_group_matches(rule: &Value, group: &str) -> bool {
    strings(rule, "apiGroups").any(|g| g == "*" || g == group)
}

/// evaluation_helpers.go `ResourceMatches`: `*`, the exact `resource[/subresource]`, or
/// `*/subresource`.
fn resource_matches(rule: &Value, combined: &str, subresource: &str) -> bool {
    strings(rule, "resources").any(|r| {
        r == "*"
            || r == combined
            || (!subresource.is_empty() && r.strip_prefix("*/") == Some(subresource))
    })
}

/// evaluation_helpers.go `ResourceNameMatches`: no names is every name; otherwise the request's
/// name must be listed (an unnamed request matches none).
fn resource_name_matches(rule: &Value, name: &str) -> bool {
    let mut names = strings(rule, "resourceNames").peekable();
    names.peek().is_none() || names.any(|n| n == name)
}

/// rbac.go `RuleAllows`, for a resource request.
pub(crate) fn rule_allows(rule: &Value, request: &Attributes) -> bool {
    let combined = if request.subresource.is_empty() {
        request.resource.clone()
    } else {
        format!("{}/{}", request.resource, request.subresource)
    };
    verb_matches(rule, &request.verb)
        && api_group_matches(rule, &request.group)
        && resource_matches(rule, &combined, &request.subresource)
        && resource_name_matches(rule, &request.name)
}

/// rbac.go `appliesToUser`, for [`AGENT_USER`]; `namespace` is the binding's (empty for a
/// ClusterRoleBinding).
fn applies_to_agent(subject: &Value, namespace: &str) -> bool {
    let name = subject["name"].as_str().unwrap_or("");
    match subject["kind"].as_str() {
        Some("User") => name == AGENT_USER,
        Some("Group") => AGENT_GROUPS.contains(&name),
        Some("ServiceAccount") => {
            let sa_namespace = subject["namespace"]
                .as_str()
                .filter(|n| !n.is_empty())
                .unwrap_or(namespace);
            !sa_namespace.is_empty()
                && format!("system:serviceaccount:{sa_namespace}:{name}") == AGENT_USER
        }
        _ => false,
    }
}

fn stored<'a>(
    store: &'a Store,
    plural: &str,
) -> impl Iterator<Item = (&'a (String, String), &'a Value)> {
    store
        .objects
        .get(&Collection {
            api: "rbac.authorization.k8s.io/v1".into(),
            plural: plural.into(),
        })
        .into_iter()
        .flatten()
}

fn role_rules<'a>(store: &'a Store, role_ref: &Value, namespace: &str) -> Vec<&'a Value> {
    let name = role_ref["name"].as_str().unwrap_or("");
    let (plural, key) = match role_ref["kind"].as_str() {
        Some("ClusterRole") => ("clusterroles", (String::new(), name.to_string())),
        Some("Role") if !namespace.is_empty() => {
            ("roles", (namespace.to_string(), name.to_string()))
        }
        _ => return Vec::new(),
    };
    stored(store, plural)
        .filter(|(k, _)| **k == key)
        .flat_map(|(_, role)| role["rules"].as_array().into_iter().flatten())
        .collect()
}

/// Whether the stored bindings grant the agent this request (the real resolver's order:
/// ClusterRoleBindings, then the RoleBindings of the request's namespace).
pub(crate) fn allowed(store: &Store, request: &Attributes) -> bool {
    let bindings = stored(store, "clusterrolebindings")
        .map(|(_, b)| (b, ""))
        .chain(
            stored(store, "rolebindings")
                .filter(|((ns, _), _)| !request.namespace.is_empty() && *ns == request.namespace)
                .map(|((ns, _), b)| (b, ns.as_str())),
        );
    for (binding, namespace) in bindings {
        let applies = binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| applies_to_agent(s, namespace));
        if applies
            && role_rules(store, &binding["roleRef"], namespace)
                .into_iter()
                .any(|rule| rule_allows(rule, request))
        {
            return true;
        }
    }
    false
}

/// errors.go `forbiddenMessage`, wrapped as `errors.NewForbidden` words it.
fn forbidden_message(request: &Attributes) -> String {
    let resource = if request.subresource.is_empty() {
        request.resource.clone()
    } else {
        format!("{}/{}", request.resource, request.subresource)
    };
    let reason = if request.namespace.is_empty() {
        format!(
            "User \"{AGENT_USER}\" cannot {} resource \"{resource}\" in API group \"{}\" at the cluster scope",
            request.verb, request.group
        )
    } else {
        format!(
            "User \"{AGENT_USER}\" cannot {} resource \"{resource}\" in API group \"{}\" in the namespace \"{}\"",
            request.verb, request.group, request.namespace
        )
    };
    // schema.GroupResource.String(): `resource` for the core group, else `resource.group`.
    let group_resource = if request.group.is_empty() {
        request.resource.clone()
    } else {
        format!("{}.{}", request.resource, request.group)
    };
    if request.name.is_empty() {
        format!("{group_resource} is forbidden: {reason}")
    } else {
        format!(
            "{group_resource} \"{}\" is forbidden: {reason}",
            request.name
        )
    }
}

/// The one call `handle` makes: `Some(403)` when RBAC is enforced and denies the request.
pub(super) fn hook(store: &mut Store, request: &Attributes) -> Option<Response> {
    if !store.rbac.enforced || allowed(store, request) {
        return None;
    }
    let message = forbidden_message(request);
    store.rbac.denials.push(message.clone());
    Some(status(StatusCode::FORBIDDEN, "Forbidden", message))
}

impl ApiServer {
    /// From now on every request is made as [`AGENT_USER`] and authorized by the RBAC objects
    /// stored here (apply the rendered manifests first); a denial is a `403 Forbidden`.
    pub fn enforce_rbac(&self) {
        self.state.lock().rbac.enforced = true;
    }

    /// The message of every request RBAC denied so far, in order.
    pub fn rbac_denials(&self) -> Vec<String> {
        self.state.lock().rbac.denials.clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn request(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: "team".into(),
            name: name.into(),
        }
    }

    #[test]
    fn rules_match_as_the_real_authorizer() {
        let secrets_named = json!({"apiGroups": [""], "resources": ["secrets"],
                                   "verbs": ["get", "list", "watch"], "resourceNames": ["regcred"]});
        let nodes = json!({"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]});
        let status = json!({"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]});
        let any_status = json!({"apiGroups": [""], "resources": ["*/status"], "verbs": ["patch"]});
        let all = json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]});
        let events =
            json!({"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]});
        let empty_names = json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": []});
        let cases: &[(&Value, Attributes, bool)] = &[
            (
                &secrets_named,
                request("get", "", "secrets", "", "regcred"),
                true,
            ),
            (
                &secrets_named,
                request("watch", "", "secrets", "", "regcred"),
                true,
            ),
            (
                &secrets_named,
                request("watch", "", "secrets", "", "other"),
                false,
            ),
            // resourceNames never match a request without a name.
            (
                &secrets_named,
                request("list", "", "secrets", "", ""),
                false,
            ),
            (
                &secrets_named,
                request("create", "", "secrets", "", ""),
                false,
            ),
            (
                &secrets_named,
                request("delete", "", "secrets", "", "regcred"),
                false,
            ),
            (
                &secrets_named,
                request("get", "", "serviceaccounts", "", "regcred"),
                false,
            ),
            (
                &secrets_named,
                request("get", "apps", "secrets", "", "regcred"),
                false,
            ),
            // An empty list is no restriction.
            (&empty_names, request("get", "", "secrets", "", "any"), true),
            // A subresource is its own resource.
            (&nodes, request("patch", "", "nodes", "", "n"), true),
            (&nodes, request("patch", "", "nodes", "status", "n"), false),
            (&status, request("patch", "", "nodes", "status", "n"), true),
            (&status, request("patch", "", "nodes", "", "n"), false),
            (
                &any_status,
                request("patch", "", "nodes", "status", "n"),
                true,
            ),
            (&any_status, request("patch", "", "nodes", "", "n"), false),
            (
                &any_status,
                request("patch", "", "nodes", "statusx", "n"),
                false,
            ),
            (
                &all,
                request("deletecollection", "x.io", "things", "scale", ""),
                true,
            ),
            (
                &events,
                request("create", "events.k8s.io", "events", "", ""),
                true,
            ),
            (&events, request("create", "", "events", "", ""), false),
            (
                &events,
                request("patch", "events.k8s.io", "events", "", "e"),
                false,
            ),
        ];
        for (rule, req, want) in cases {
            assert_eq!(rule_allows(rule, req), *want, "{rule} for {req:?}");
        }
    }

    #[test]
    fn attributes_as_the_request_info_factory_builds_them() {
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect()
        };
        let by_name = q(&[
            ("fieldSelector", "metadata.name=regcred"),
            ("watch", "true"),
        ]);
        // method, api, name, query → (verb, group, name)
        type Case = (
            Method,
            &'static str,
            Option<&'static str>,
            HashMap<String, String>,
            (&'static str, &'static str, &'static str),
        );
        let cases: &[Case] = &[
            (
                Method::GET,
                "v1",
                Some("regcred"),
                q(&[]),
                ("get", "", "regcred"),
            ),
            (Method::GET, "v1", None, q(&[]), ("list", "", "")),
            (
                Method::GET,
                "v1",
                None,
                by_name.clone(),
                ("watch", "", "regcred"),
            ),
            (
                Method::GET,
                "v1",
                None,
                q(&[("fieldSelector", "metadata.name=regcred")]),
                ("list", "", "regcred"),
            ),
            (
                Method::GET,
                "v1",
                None,
                q(&[("fieldSelector", "metadata.namespace=team")]),
                ("list", "", ""),
            ),
            (
                Method::GET,
                "v1",
                None,
                q(&[("fieldSelector", "metadata.name=a/b")]),
                ("list", "", ""),
            ),
            (
                Method::POST,
                "events.k8s.io/v1",
                None,
                q(&[]),
                ("create", "events.k8s.io", ""),
            ),
            (Method::PATCH, "v1", Some("n"), q(&[]), ("patch", "", "n")),
            (Method::PUT, "v1", Some("n"), q(&[]), ("update", "", "n")),
            (Method::DELETE, "v1", Some("n"), q(&[]), ("delete", "", "n")),
            (
                Method::DELETE,
                "v1",
                None,
                q(&[]),
                ("deletecollection", "", ""),
            ),
        ];
        for (method, api, name, query, (verb, group, want_name)) in cases {
            let a = Attributes::of(method, api, Some("team"), "secrets", *name, None, query);
            assert_eq!(
                (a.verb.as_str(), a.group.as_str(), a.name.as_str()),
                (*verb, *group, *want_name),
                "{method} {api} {name:?} {query:?}"
            );
        }
    }

    fn store_with(objects: &[Value]) -> Store {
        let mut store = Store::default();
        for o in objects {
            let plural = super::super::plural_of(o["kind"].as_str().unwrap());
            let key = (
                o["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                o["metadata"]["name"].as_str().unwrap().to_string(),
            );
            store
                .objects
                .entry(Collection {
                    api: "rbac.authorization.k8s.io/v1".into(),
                    plural,
                })
                .or_default()
                .insert(key, o.clone());
        }
        store
    }

    #[test]
    fn bindings_and_subjects_decide_whose_rules_count() {
        let rbac = "rbac.authorization.k8s.io/v1";
        let rule = json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]);
        let role = json!({"apiVersion": rbac, "kind": "Role", "metadata": {"name": "r", "namespace": "team"}, "rules": rule});
        let cluster_role = json!({"apiVersion": rbac, "kind": "ClusterRole", "metadata": {"name": "c"}, "rules": rule});
        let sa =
            json!({"kind": "ServiceAccount", "name": "pullgate", "namespace": "pullgate-system"});
        let binding = |ns: &str, kind: &str, role: &str, subject: &Value| {
            json!({"apiVersion": rbac, "kind": "RoleBinding", "metadata": {"name": "b", "namespace": ns},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
                   "subjects": [subject]})
        };
        let cluster_binding = |subject: &Value| {
            json!({"apiVersion": rbac, "kind": "ClusterRoleBinding", "metadata": {"name": "cb"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "c"},
                   "subjects": [subject]})
        };
        let get = request("get", "", "secrets", "", "x");
        let mut elsewhere = get.clone();
        elsewhere.namespace = "other".into();
        let cases: &[(&str, Vec<Value>, &Attributes, bool)] = &[
            (
                "role bound to the agent",
                vec![role.clone(), binding("team", "Role", "r", &sa)],
                &get,
                true,
            ),
            (
                "in another namespace",
                vec![role.clone(), binding("team", "Role", "r", &sa)],
                &elsewhere,
                false,
            ),
            (
                "nothing bound",
                vec![role.clone(), cluster_role.clone()],
                &get,
                false,
            ),
            (
                "another ServiceAccount",
                vec![
                    role.clone(),
                    binding(
                        "team",
                        "Role",
                        "r",
                        &json!({"kind": "ServiceAccount", "name": "pullgate", "namespace": "pullgate"}),
                    ),
                ],
                &get,
                false,
            ),
            (
                "ServiceAccount defaulted to the binding's namespace",
                vec![
                    json!({"apiVersion": rbac, "kind": "Role", "metadata": {"name": "r", "namespace": "pullgate-system"}, "rules": rule}),
                    binding(
                        "pullgate-system",
                        "Role",
                        "r",
                        &json!({"kind": "ServiceAccount", "name": "pullgate"}),
                    ),
                ],
                &Attributes {
                    namespace: "pullgate-system".into(),
                    ..get.clone()
                },
                true,
            ),
            (
                "a group of the agent",
                vec![
                    role.clone(),
                    binding(
                        "team",
                        "Role",
                        "r",
                        &json!({"kind": "Group", "name": "system:serviceaccounts:pullgate-system"}),
                    ),
                ],
                &get,
                true,
            ),
            (
                "the user by name",
                vec![
                    role.clone(),
                    binding(
                        "team",
                        "Role",
                        "r",
                        &json!({"kind": "User", "name": AGENT_USER}),
                    ),
                ],
                &get,
                true,
            ),
            (
                "a ClusterRole through a RoleBinding",
                vec![
                    cluster_role.clone(),
                    binding("team", "ClusterRole", "c", &sa),
                ],
                &get,
                true,
            ),
            (
                "a ClusterRole through a RoleBinding, elsewhere",
                vec![
                    cluster_role.clone(),
                    binding("team", "ClusterRole", "c", &sa),
                ],
                &elsewhere,
                false,
            ),
            (
                "a ClusterRoleBinding",
                vec![cluster_role.clone(), cluster_binding(&sa)],
                &elsewhere,
                true,
            ),
            (
                "a ClusterRoleBinding naming a Role",
                vec![
                    role.clone(),
                    json!({"apiVersion": rbac, "kind": "ClusterRoleBinding", "metadata": {"name": "cb"},
                "roleRef": {"kind": "Role", "name": "r"}, "subjects": [sa]}),
                ],
                &get,
                false,
            ),
            (
                "a missing Role",
                vec![binding("team", "Role", "r", &sa)],
                &get,
                false,
            ),
        ];
        for (what, objects, req, want) in cases {
            assert_eq!(allowed(&store_with(objects), req), *want, "{what}");
        }
    }

    #[test]
    fn denials_read_as_the_real_server_words_them() {
        let cases = [
            (
                request("watch", "", "secrets", "", "x"),
                "secrets \"x\" is forbidden: User \"system:serviceaccount:pullgate-system:pullgate\" cannot watch resource \"secrets\" in API group \"\" in the namespace \"team\"",
            ),
            (
                request("create", "events.k8s.io", "events", "", ""),
                "events.events.k8s.io is forbidden: User \"system:serviceaccount:pullgate-system:pullgate\" cannot create resource \"events\" in API group \"events.k8s.io\" in the namespace \"team\"",
            ),
            (
                Attributes {
                    namespace: String::new(),
                    ..request("patch", "", "nodes", "status", "n")
                },
                "nodes \"n\" is forbidden: User \"system:serviceaccount:pullgate-system:pullgate\" cannot patch resource \"nodes/status\" in API group \"\" at the cluster scope",
            ),
        ];
        for (req, want) in cases {
            assert_eq!(forbidden_message(&req), want);
        }
    }
}
