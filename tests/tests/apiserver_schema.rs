//! The test API server decodes PullSets as the real one does from the stored CRD's schema
//! (apiextensions-apiserver's pruning and defaulting), through kube-rs's real client: the CRD is
//! created, got (accepted and established) and listed; an unknown field in `spec` is dropped on create and on merge patch; a
//! field below `x-kubernetes-preserve-unknown-fields` is kept; the CRD's defaults are in the stored,
//! the got, the listed and the watched object, those below `spec.canary` only when it is there;
//! `metadata` keeps what `ObjectMeta` holds; an object stored before its CRD is defaulted when read;
//! a CRD that is not structural is refused naming the field, and a version no CRD serves is `404`.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use futures::StreamExt as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::GroupVersionKind;
use pullgate::model::pullset::PullSet;
use pullgate_testenv::apiserver::{ApiServer, objects};
use serde_json::{Value, json};

async fn client(server: &ApiServer) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

fn pullsets(client: &kube::Client, version: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("pullgate.io", version, "PullSet");
    Api::namespaced_with(
        client.clone(),
        "team",
        &ApiResource::from_gvk_with_plural(&gvk, "pullsets"),
    )
}

fn dynamic(value: Value) -> DynamicObject {
    serde_json::from_value(value).unwrap()
}

fn spec_of(object: &DynamicObject) -> Value {
    object.data["spec"].clone()
}

/// What the shipped CRD defaults in every PullSet's `spec`.
const TOP_DEFAULTS: [(&str, bool); 2] = [("gate", true), ("prePull", true)];

/// `spec` with the shipped CRD's top-level defaults added.
fn with_top_defaults(spec: Value) -> Value {
    let mut spec = spec;
    for (k, v) in TOP_DEFAULTS {
        spec[k] = json!(v);
    }
    spec
}

#[test]
fn pullsets_are_pruned_and_defaulted_by_the_crd_created_through_the_api() {
    let server = ApiServer::start().unwrap();
    pullgate_testenv::block_on(async {
        let client = client(&server).await;
        // The CRD, created as `kubectl apply` would, then got and listed.
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let crd: CustomResourceDefinition = serde_json::from_value(objects::pullset_crd()).unwrap();
        crds.create(&PostParams::default(), &crd).await.unwrap();
        let got = crds.get("pullsets.pullgate.io").await.unwrap();
        assert_eq!(got.spec.names.plural, "pullsets");
        // Accepted and established, as the real server's controllers mark it.
        let status = got.status.unwrap();
        let established = status.conditions.unwrap_or_default();
        assert!(
            established
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True"),
            "{established:?}"
        );
        let accepted = status.accepted_names.unwrap();
        assert_eq!(
            (accepted.kind.as_str(), accepted.list_kind.as_deref()),
            ("PullSet", Some("PullSetList"))
        );
        assert_eq!(status.stored_versions, Some(vec!["v1alpha1".to_string()]));
        let listed = crds.list(&ListParams::default()).await.unwrap();
        assert_eq!(listed.items.len(), 1);

        let api = pullsets(&client, "v1alpha1");
        let before = api
            .list(&ListParams::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        let mut watch = api
            .watch(&WatchParams::default().timeout(30), &before)
            .await
            .unwrap()
            .boxed();

        // Create: the unknown field is dropped, the defaults are filled; `canary` is absent,
        // so none of the defaults below it apply. The metadata sent is kept.
        let sent = objects::pullset(
            "team",
            "minimal",
            &["registry.example/app:v1"],
            json!({"priority": "high"}),
        );
        let mut sent = sent;
        sent["metadata"]["labels"] = json!({"tier": "critical"});
        sent["metadata"]["annotations"] = json!({"note": "kept"});
        let created = api
            .create(&PostParams::default(), &dynamic(sent))
            .await
            .unwrap();
        let expected = with_top_defaults(json!({"images": [{"image": "registry.example/app:v1"}]}));
        assert_eq!(spec_of(&created), expected);
        assert_eq!(
            created.metadata.labels.unwrap()["tier"],
            "critical",
            "metadata is not the schema's"
        );
        assert_eq!(created.metadata.annotations.unwrap()["note"], "kept");
        let stored = server
            .get("pullgate.io/v1alpha1", "pullsets", "team", "minimal")
            .unwrap();
        assert_eq!(stored["spec"], expected, "stored: {stored}");
        assert_eq!(
            stored["apiVersion"], "pullgate.io/v1alpha1",
            "kept at the root"
        );
        assert_eq!(stored["kind"], "PullSet", "kept at the root");
        let listed = api.list(&ListParams::default()).await.unwrap();
        assert_eq!(spec_of(&listed.items[0]), expected);
        match watch.next().await.unwrap().unwrap() {
            WatchEvent::Added(o) => assert_eq!(spec_of(&o), expected),
            other => panic!("unexpected {other:?}"),
        }

        // A merge patch of only an unknown field is pruned to nothing: no write at all.
        let rv = created.metadata.resource_version.clone();
        let patched = api
            .patch(
                "minimal",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"priority": "high"}})),
            )
            .await
            .unwrap();
        assert_eq!(spec_of(&patched), expected);
        assert_eq!(
            patched.metadata.resource_version, rv,
            "a no-op after pruning"
        );

        // A merge patch that adds `canary` (with an unknown field in it): the unknown field is
        // dropped and the defaults below `canary` now apply.
        let patched = api
            .patch(
                "minimal",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"canary": {"schedule": "0 * * * *", "bogus": 1}}})),
            )
            .await
            .unwrap();
        let mut expected = expected;
        expected["canary"] = json!({"schedule": "0 * * * *", "depth": "manifest",
                                    "onRotation": true, "runtime": false});
        assert_eq!(spec_of(&patched), expected);
        let stored = server
            .get("pullgate.io/v1alpha1", "pullsets", "team", "minimal")
            .unwrap();
        assert_eq!(stored["spec"], expected, "stored: {stored}");
        match watch.next().await.unwrap().unwrap() {
            WatchEvent::Modified(o) => assert_eq!(spec_of(&o), expected),
            other => panic!("unexpected {other:?}"),
        }

        // kube-rs's typed client and pullgate's own type read what the server made of it.
        let typed: Api<PullSet> = Api::namespaced(client.clone(), "team");
        let read = typed.get("minimal").await.unwrap();
        assert!(read.spec.gate && read.spec.pre_pull);
        assert!(read.spec.canary.unwrap().on_rotation);
    });
}

/// The shipped CRD with `spec.priority` and `spec.extra` (below
/// `x-kubernetes-preserve-unknown-fields`) added, as a newer CRD during a rollout.
fn newer_crd() -> Value {
    let mut crd = objects::pullset_crd_with_spec_field(
        "priority",
        json!({"type": "string", "default": "normal"}),
    );
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["extra"] = json!({"type": "object",
            "x-kubernetes-preserve-unknown-fields": true,
            "properties": {"owner": {"type": "object", "properties": {"team": {"type": "string"}}}}});
    crd
}

#[test]
fn preserve_unknown_fields_keeps_what_is_below_it_and_a_newer_crd_keeps_its_own_fields() {
    let server = ApiServer::start().unwrap();
    server.apply(newer_crd());
    pullgate_testenv::block_on(async {
        let api = pullsets(&client(&server).await, "v1alpha1");
        let sent = objects::pullset(
            "team",
            "newer",
            &["registry.example/app:v1"],
            json!({"priority": "high",
                   "extra": {"anything": {"deep": [1, {"x": 2}]},
                             "owner": {"team": "t", "unknown": "u"}},
                   "unknown": true}),
        );
        let created = api
            .create(&PostParams::default(), &dynamic(sent))
            .await
            .unwrap();
        let spec = spec_of(&created);
        assert_eq!(spec["priority"], "high", "the newer CRD's field: {spec}");
        assert_eq!(
            spec["extra"],
            json!({"anything": {"deep": [1, {"x": 2}]}, "owner": {"team": "t"}}),
            "kept below x-kubernetes-preserve-unknown-fields, pruned where its schema speaks"
        );
        assert!(spec.get("unknown").is_none(), "{spec}");
    });
}

#[test]
fn an_object_stored_before_its_crd_is_defaulted_when_read_and_an_unserved_version_is_404() {
    let server = ApiServer::start().unwrap();
    // Without a CRD the object is kept as sent (today's behaviour of the stand-in).
    server.apply(objects::pullset(
        "team",
        "early",
        &["registry.example/app:v1"],
        json!({"canary": {}}),
    ));
    let stored = server
        .get("pullgate.io/v1alpha1", "pullsets", "team", "early")
        .unwrap();
    assert_eq!(stored["spec"]["canary"], json!({}), "as sent: {stored}");
    server.install_pullset_crd();
    pullgate_testenv::block_on(async {
        let client = client(&server).await;
        let api = pullsets(&client, "v1alpha1");
        let read = api.get("early").await.unwrap();
        assert_eq!(
            spec_of(&read)["canary"],
            json!({"depth": "manifest", "onRotation": true, "runtime": false}),
            "defaulted when read from storage"
        );
        assert_eq!(spec_of(&read)["gate"], true);
        let listed = api.list(&ListParams::default()).await.unwrap();
        assert_eq!(spec_of(&listed.items[0])["prePull"], true);
        // Storage itself is untouched until the next write.
        let stored = server
            .get("pullgate.io/v1alpha1", "pullsets", "team", "early")
            .unwrap();
        assert_eq!(stored["spec"]["canary"], json!({}));

        let unserved = pullsets(&client, "v1beta1");
        match unserved.get("early").await {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 404, "{status:?}"),
            other => panic!("expected 404, got {other:?}"),
        }
    });
}

#[test]
fn a_crd_that_is_not_structural_is_refused_naming_the_field() {
    let server = ApiServer::start().unwrap();
    let mut crd = objects::pullset_crd();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["images"]
        ["items"] = json!([{"type": "object"}]);
    pullgate_testenv::block_on(async {
        let crds: Api<DynamicObject> = Api::all_with(
            client(&server).await,
            &ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
                "customresourcedefinitions",
            ),
        );
        match crds.create(&PostParams::default(), &dynamic(crd)).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{status:?}");
                assert!(
                    status.message.contains(
                        "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[images].items: must be a schema"
                    ),
                    "{status:?}"
                );
            }
            other => panic!("expected 422, got {other:?}"),
        }
    });
    assert!(
        server
            .list("apiextensions.k8s.io/v1", "customresourcedefinitions")
            .is_empty()
    );
}
