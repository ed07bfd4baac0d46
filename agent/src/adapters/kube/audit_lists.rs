//! The adapter: ServiceAccounts, PullSets and the audited Secrets of every namespace, listed from
//! the API server page by page (`limit` 500, then `continue`) and converted to the plain types of
//! `inventory` with the same functions as every other source.
//!
//! Workloads are read for what the pod rule needs of their pod specs only (`imagePullSecrets`,
//! `serviceAccountName`, and the images: containers' and image volumes'): the pod templates of
//! Deployments, StatefulSets, DaemonSets, ReplicationControllers, Jobs (not a CronJob's) and
//! CronJobs, and running Pods grouped by their controller. Nothing else of them is kept.
//!
//! This is an admin's command: it lists Secrets cluster-wide, which the agent itself never does.
//! Secrets that are not audited (see `analysis`) are dropped as each page arrives, before their
//! data is decoded. Responses are decoded here rather than by kube's typed `list`, whose decoding
//! errors log the response body: a Secret list's body must never reach a log. An object that
//! cannot be read is skipped with a note (for a Secret: the category of the error only).

use crate::decide::audit::analysis::{
    AgeBasis, AuditInput, DataChanged, Workload, is_audited, referenced_secrets,
};
use crate::model::inventory::{Inventory, ObjectKey};
use crate::model::inventory::{secret_object, service_account_object};
use crate::model::pod_images::{PodImageUse, pod_image_uses};
use crate::model::pullset::{self, PullSet};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::ListParams;
use kube::{Client, Resource as _};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

/// Objects per page.
const PAGE: u32 = 500;

#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error(
        "pullgate audit may not list {resource} in all namespaces ({message}); run it with a kubeconfig allowed to list secrets, serviceaccounts, pullsets.pullgate.io and workloads (pods, deployments, statefulsets, daemonsets, replicationcontrollers, jobs, cronjobs) cluster-wide"
    )]
    Forbidden {
        resource: &'static str,
        message: String,
    },
    #[error("cannot list {resource}: {message}")]
    Failed {
        resource: &'static str,
        message: String,
    },
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    items: Vec<Value>,
    #[serde(default)]
    metadata: PageMeta,
}

#[derive(Deserialize, Default)]
struct PageMeta {
    #[serde(rename = "continue", default)]
    continue_: Option<String>,
}

/// The workload collections read, and where each keeps its pod spec.
const WORKLOADS: &[(&str, &str, &str, &[&str])] = &[
    (
        "/apis/apps/v1/deployments",
        "deployments",
        "Deployment",
        &["spec", "template", "spec"],
    ),
    (
        "/apis/apps/v1/statefulsets",
        "statefulsets",
        "StatefulSet",
        &["spec", "template", "spec"],
    ),
    (
        "/apis/apps/v1/daemonsets",
        "daemonsets",
        "DaemonSet",
        &["spec", "template", "spec"],
    ),
    (
        "/api/v1/replicationcontrollers",
        "replicationcontrollers",
        "ReplicationController",
        &["spec", "template", "spec"],
    ),
    (
        "/apis/batch/v1/jobs",
        "jobs",
        "Job",
        &["spec", "template", "spec"],
    ),
    (
        "/apis/batch/v1/cronjobs",
        "cronjobs",
        "CronJob",
        &["spec", "jobTemplate", "spec", "template", "spec"],
    ),
    ("/api/v1/pods", "pods", "Pod", &["spec"]),
];

/// What the pod rule needs of the pod spec at `path` in `item`: its `imagePullSecrets` names, its
/// ServiceAccount (`default` when unset) and the images it pulls with them (`model::pod_images`:
/// containers and image volumes, decoded from the JSON whatever k8s-openapi knows of them).
fn pod_pull_spec(item: &Value, path: &[&str]) -> (BTreeSet<String>, String, BTreeSet<PodImageUse>) {
    let spec = path.iter().fold(item, |v, field| &v[*field]);
    let service_account = spec["serviceAccountName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    let images = pod_image_uses(spec).into_iter().collect();
    (pull_secret_names(spec), service_account, images)
}

/// The `imagePullSecrets` names of a pod spec.
fn pull_secret_names(spec: &Value) -> BTreeSet<String> {
    spec["imagePullSecrets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str())
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect()
}

/// The controller owning `item` (`ReplicaSet/web-5d9f7c`), if any.
fn controller_of(item: &Value) -> Option<String> {
    item["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|o| o["controller"] == true)
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or("?"),
                o["name"].as_str().unwrap_or("?")
            )
        })
}

/// Every workload that pulls an image (or names pull secrets), with what the pod rule needs of it;
/// `false` when a kind could not be listed (a note says which), so that `Unused` is not judged on
/// a partial picture.
async fn load_workloads(client: &Client, notes: &mut Vec<String>) -> (Vec<Workload>, bool) {
    let mut workloads = Vec::new();
    let mut complete = true;
    // Running pods, grouped by (namespace, controller or pod) → their count and pod rule.
    let mut pods: BTreeMap<(String, String), PodGroup> = BTreeMap::new();
    for (path, resource, kind, spec) in WORKLOADS {
        let listed = list_pages(client, path, resource, |item| {
            let Some(key) = key_of(&item) else { return };
            let (names, service_account, images) = pod_pull_spec(&item, spec);
            if *kind == "Pod" {
                let owner = controller_of(&item).unwrap_or_else(|| format!("Pod/{}", key.name));
                let entry = pods
                    .entry((key.namespace, owner))
                    .or_insert_with(|| PodGroup {
                        count: 0,
                        names: BTreeSet::new(),
                        service_account: service_account.clone(),
                        images: BTreeSet::new(),
                    });
                entry.count += 1;
                entry.names.extend(names);
                entry.images.extend(images);
                return;
            }
            // A CronJob's Jobs are counted under the CronJob.
            if *kind == "Job" && controller_of(&item).is_some_and(|c| c.starts_with("CronJob/")) {
                return;
            }
            if !names.is_empty() || !images.is_empty() {
                workloads.push(Workload {
                    namespace: key.namespace,
                    name: format!("{kind}/{}", key.name),
                    pods: None,
                    image_pull_secrets: names,
                    service_account,
                    images,
                });
            }
        })
        .await;
        if let Err(e) = listed {
            complete = false;
            let why = match e {
                ListError::Forbidden { message, .. } => {
                    format!("{resource} may not be listed cluster-wide ({message})")
                }
                ListError::Failed { message, .. } => format!("cannot list {resource}: {message}"),
            };
            notes.push(format!(
                "{why}: Unused is not judged, since a Secret that only {resource} name would look unused"
            ));
        }
    }
    workloads.extend(
        pods.into_iter()
            .filter(|(_, g)| !g.names.is_empty() || !g.images.is_empty())
            .map(|((namespace, name), g)| Workload {
                namespace,
                name,
                pods: Some(g.count),
                image_pull_secrets: g.names,
                service_account: g.service_account,
                images: g.images,
            }),
    );
    (workloads, complete)
}

/// Running pods of one controller (or one bare pod): how many, and their pod rule's inputs (the
/// first pod's ServiceAccount; a controller's pods share one).
struct PodGroup {
    count: usize,
    names: BTreeSet<String>,
    service_account: String,
    images: BTreeSet<PodImageUse>,
}

/// A failed list: `Ok(())` for a `404` (the resource does not exist in this cluster).
fn classify(resource: &'static str, e: kube::Error) -> Result<(), ListError> {
    match e {
        kube::Error::Api(status) if status.code == 403 => Err(ListError::Forbidden {
            resource,
            message: status.message.clone(),
        }),
        kube::Error::Api(status) if status.code == 404 => Ok(()),
        kube::Error::Api(status) => Err(ListError::Failed {
            resource,
            message: format!("{} ({} {})", status.message, status.code, status.reason),
        }),
        // Transport errors: no response body in them.
        other => Err(ListError::Failed {
            resource,
            message: other.to_string(),
        }),
    }
}

/// Every item of a collection, page by page, handed to `each` as it arrives. `Ok(false)` when the
/// collection does not exist (`404`).
///
/// A `continue` token the server no longer honours (`410 Gone`, reason `Expired`: its
/// resourceVersion was compacted) restarts the list from the beginning, once; the items already
/// handed to `each` (by namespace and name) are skipped the second time, so that nothing is
/// counted twice and pages are still dropped as they arrive. A second expiry is an error naming
/// the resource.
async fn list_pages(
    client: &Client,
    path: &str,
    resource: &'static str,
    mut each: impl FnMut(Value),
) -> Result<bool, ListError> {
    let mut seen = std::collections::BTreeSet::new();
    let mut restarted = false;
    loop {
        let mut once = |item: Value| {
            if seen.insert(key_of(&item)) || key_of(&item).is_none() {
                each(item);
            }
        };
        match list_once(client, path, resource, &mut once).await {
            Err(ListOnce::Expired(message)) if !restarted => {
                tracing::info!(
                    resource,
                    "the list's continue token expired ({message}); listing again from the start"
                );
                restarted = true;
            }
            Err(ListOnce::Expired(message)) => {
                return Err(ListError::Failed {
                    resource,
                    message: format!(
                        "the continue token expired again after the list was restarted once ({message})"
                    ),
                });
            }
            Err(ListOnce::Failed(e)) => return Err(e),
            Ok(found) => return Ok(found),
        }
    }
}

/// Why one attempt at a paged list ended early.
enum ListOnce {
    /// `410 Gone` for a `continue` token: restartable.
    Expired(String),
    Failed(ListError),
}

/// One attempt: every page, each item handed to `each`.
async fn list_once(
    client: &Client,
    path: &str,
    resource: &'static str,
    each: &mut impl FnMut(Value),
) -> Result<bool, ListOnce> {
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let request = kube::core::Request::new(path)
            .list(&params)
            .map_err(|e| ListError::Failed {
                resource,
                message: e.to_string(),
            })
            .map_err(ListOnce::Failed)?;
        let text = match client.request_text(request).await {
            Ok(text) => text,
            Err(kube::Error::Api(status))
                if status.code == 410 && params.continue_token.is_some() =>
            {
                return Err(ListOnce::Expired(status.message.clone()));
            }
            Err(e) => {
                classify(resource, e).map_err(ListOnce::Failed)?;
                return Ok(false);
            }
        };
        // The category and position only: a Secret list's text is credentials.
        let page: Page = serde_json::from_str(&text)
            .map_err(|e| ListError::Failed {
                resource,
                message: format!(
                    "the response is not a list ({:?} error at line {} column {})",
                    e.classify(),
                    e.line(),
                    e.column()
                ),
            })
            .map_err(ListOnce::Failed)?;
        drop(text);
        page.items.into_iter().for_each(&mut *each);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(true),
        }
    }
}

fn key_of(item: &Value) -> Option<ObjectKey> {
    let meta = &item["metadata"];
    Some(ObjectKey::new(
        meta["namespace"].as_str()?,
        meta["name"].as_str()?,
    ))
}

fn system_time(t: &Time) -> Option<SystemTime> {
    crate::model::time::from_unix_seconds(i128::from(t.0.as_second()))
}

/// When the data last changed: the latest time of a managed-fields entry that owns `data` or
/// `stringData` (a manager's time moves when it changes a field it owns, so this is the last write
/// of the data or a later write by the same manager), else the creation time.
pub fn data_changed(meta: &ObjectMeta) -> Option<DataChanged> {
    let owns_data =
        |fields: &Value| fields.get("f:data").is_some() || fields.get("f:stringData").is_some();
    let managed = meta
        .managed_fields
        .iter()
        .flatten()
        .filter(|e| e.fields_v1.as_ref().is_some_and(|f| owns_data(&f.0)))
        .filter_map(|e| e.time.as_ref().and_then(system_time))
        .max();
    match managed {
        Some(at) => Some(DataChanged {
            at,
            basis: AgeBasis::ManagedFields,
        }),
        None => meta
            .creation_timestamp
            .as_ref()
            .and_then(system_time)
            .map(|at| DataChanged {
                at,
                basis: AgeBasis::CreationTimestamp,
            }),
    }
}

/// Lists what the report needs from the cluster.
pub async fn load(client: &Client) -> Result<AuditInput, ListError> {
    let mut input = AuditInput::default();
    let mut notes = Vec::new();
    let mut inventory = Inventory::default();

    let path = ServiceAccount::url_path(&(), None);
    list_pages(client, &path, "serviceaccounts", |item| {
        let key = key_of(&item);
        match (key, serde_json::from_value::<ServiceAccount>(item)) {
            (Some(key), Ok(sa)) => {
                inventory
                    .service_accounts
                    .insert(key.clone(), service_account_object(key, sa));
            }
            (key, Err(e)) => notes.push(format!(
                "ServiceAccount {} skipped: {e}",
                key.map_or_else(|| "?".into(), |k| k.to_string())
            )),
            (None, Ok(_)) => {
                notes.push("a ServiceAccount without namespace or name skipped".into())
            }
        }
    })
    .await?;

    let path = PullSet::url_path(&(), None);
    let found = list_pages(client, &path, "pullsets.pullgate.io", |item| {
        let Some(key) = key_of(&item) else {
            notes.push("a PullSet without namespace or name skipped".into());
            return;
        };
        match serde_json::from_value::<PullSet>(item) {
            Ok(set) => match pullset::validate(key.clone(), set.spec) {
                Ok(mut valid) => {
                    valid.uid = set.metadata.uid;
                    inventory.pullsets.insert(key, valid);
                }
                Err(errors) => notes.push(format!(
                    "PullSet {key} is invalid (the agent ignores it, and so does this report): {}",
                    errors
                        .iter()
                        .map(|e| format!("{}: {}", e.field, e.message))
                        .collect::<Vec<_>>()
                        .join("; ")
                )),
            },
            Err(e) => notes.push(format!(
                "PullSet {key} cannot be read (the agent ignores it, and so does this report): {e}"
            )),
        }
    })
    .await?;
    if !found {
        notes.push(
            "the PullSet CRD (pullsets.pullgate.io) is not installed: no PullSet is audited".into(),
        );
    }

    let (workloads, complete) = load_workloads(client, &mut notes).await;
    let referenced = referenced_secrets(&inventory, &workloads);
    let path = Secret::url_path(&(), None);
    list_pages(client, &path, "secrets", |item| {
        let Some(key) = key_of(&item) else {
            return;
        };
        let type_ = item["type"].as_str().unwrap_or("Opaque");
        let keys = ["data", "stringData"]
            .into_iter()
            .filter_map(|field| item[field].as_object())
            .flat_map(|map| map.keys().map(String::as_str));
        if !is_audited(type_, keys, referenced.contains(&key)) {
            return;
        }
        match serde_json::from_value::<Secret>(item) {
            Ok(secret) => {
                if let Some(changed) = data_changed(&secret.metadata) {
                    input.data_changed.insert(key.clone(), changed);
                }
                inventory
                    .secrets
                    .insert(key.clone(), secret_object(key, secret));
            }
            // The category only: a serde message could quote a value.
            Err(e) => notes.push(format!(
                "Secret {key} cannot be read ({:?} error); it is not audited",
                e.classify()
            )),
        }
    })
    .await?;

    input.inventory = inventory;
    input.notes = notes;
    input.workloads = workloads;
    input.workloads_complete = complete;
    Ok(input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
    use serde_json::json;

    fn time(s: &str) -> Time {
        Time(s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
    }

    fn at(s: &str) -> SystemTime {
        system_time(&time(s)).unwrap_or_else(|| panic!("{s}"))
    }

    fn entry(t: &str, fields: Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            time: Some(time(t)),
            fields_v1: Some(FieldsV1(fields)),
            ..Default::default()
        }
    }

    #[test]
    fn data_changed_table() {
        let created = Some(time("2024-01-01T00:00:00Z"));
        let cases: Vec<(ObjectMeta, Option<DataChanged>)> = vec![
            (ObjectMeta::default(), None),
            (
                ObjectMeta {
                    creation_timestamp: created.clone(),
                    ..Default::default()
                },
                Some(DataChanged {
                    at: at("2024-01-01T00:00:00Z"),
                    basis: AgeBasis::CreationTimestamp,
                }),
            ),
            // The latest entry owning the data wins; a label-only manager does not count.
            (
                ObjectMeta {
                    creation_timestamp: created.clone(),
                    managed_fields: Some(vec![
                        entry(
                            "2024-02-01T00:00:00Z",
                            json!({"f:data": {".": {}}, "f:type": {}}),
                        ),
                        entry("2024-03-01T00:00:00Z", json!({"f:stringData": {}})),
                        entry(
                            "2024-06-01T00:00:00Z",
                            json!({"f:metadata": {"f:labels": {}}}),
                        ),
                    ]),
                    ..Default::default()
                },
                Some(DataChanged {
                    at: at("2024-03-01T00:00:00Z"),
                    basis: AgeBasis::ManagedFields,
                }),
            ),
            // No entry owns the data: the creation time.
            (
                ObjectMeta {
                    creation_timestamp: created,
                    managed_fields: Some(vec![entry(
                        "2024-06-01T00:00:00Z",
                        json!({"f:metadata": {}}),
                    )]),
                    ..Default::default()
                },
                Some(DataChanged {
                    at: at("2024-01-01T00:00:00Z"),
                    basis: AgeBasis::CreationTimestamp,
                }),
            ),
        ];
        for (meta, expected) in cases {
            assert_eq!(data_changed(&meta), expected, "{meta:?}");
        }
    }
}
