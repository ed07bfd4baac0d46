//! The test API server answers kube-rs's real client code: list, watch with resourceVersion (and
//! 410 Gone after compaction), get, strategic-merge patch of node status, JSON patch with a failing
//! `test`, event creation (and the API server's limit on an Event's note), injected 403s and 500s,
//! list pages with `limit`/`continue` and an injected expiry of the token.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use pullgate_testenv::apiserver::ApiServer;
use serde_json::json;

async fn client(server: &ApiServer) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

fn node(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"pool": "gpu"}},
           "spec": {"taints": [{"key": "pullgate.io/not-ready", "effect": "NoSchedule"}, {"key": "other", "effect": "NoExecute"}]},
           "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}})
}

#[test]
fn kube_rs_talks_to_the_test_api_server() {
    let server = ApiServer::start().unwrap();
    server.apply(node("n1"));
    server.apply(node("n2"));
    server.apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred", "namespace": "team"},
        "type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "e30="}}));
    pullgate_testenv::block_on(async {
        let client = client(&server).await;
        let nodes: Api<Node> = Api::all(client.clone());

        // List with a field selector.
        let listed = nodes
            .list(&ListParams::default().fields("metadata.name=n1"))
            .await
            .unwrap();
        assert_eq!(listed.items.len(), 1);
        let rv = listed.metadata.resource_version.clone().unwrap();

        // Watch from that resourceVersion sees later changes of n1 only.
        let mut stream = nodes
            .watch(
                &WatchParams::default().fields("metadata.name=n1").timeout(5),
                &rv,
            )
            .await
            .unwrap()
            .boxed();
        // Strategic merge of status: our condition is added, the kubelet's is untouched.
        let patch = json!({"status": {"conditions": [{"type": "CriticalImagesReady", "status": "True", "reason": "Ok"}]}});
        nodes
            .patch_status("n1", &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .unwrap();
        let patch = json!({"status": {"conditions": [{"type": "CriticalImagesReady", "status": "False", "reason": "NotFound"}]}});
        let patched = nodes
            .patch_status("n1", &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .unwrap();
        let conditions = patched.status.unwrap().conditions.unwrap();
        let types: Vec<(&str, &str)> = conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str()))
            .collect();
        assert_eq!(types, [("Ready", "True"), ("CriticalImagesReady", "False")]);
        server.apply(node("n2"));
        match stream.next().await.unwrap().unwrap() {
            WatchEvent::Modified(n) => assert_eq!(n.metadata.name.as_deref(), Some("n1")),
            other => panic!("unexpected {other:?}"),
        }

        // JSON patch removing our taint, guarded by a test of its position.
        let remove = json!([{"op": "test", "path": "/spec/taints/0/key", "value": "pullgate.io/not-ready"},
                            {"op": "remove", "path": "/spec/taints/0"}]);
        let ok = nodes
            .patch(
                "n1",
                &PatchParams::default(),
                &Patch::<()>::Json(serde_json::from_value(remove.clone()).unwrap()),
            )
            .await
            .unwrap();
        assert_eq!(ok.spec.unwrap().taints.unwrap().len(), 1);
        // The same patch again: the test fails, nothing is clobbered.
        let err = nodes
            .patch(
                "n1",
                &PatchParams::default(),
                &Patch::<()>::Json(serde_json::from_value(remove).unwrap()),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 422),
            "{err:?}"
        );

        // Events are created.
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(client.clone(), "team");
        let event = serde_json::from_value(json!({"metadata": {"generateName": "pullset."},
            "reason": "PrePulled", "action": "PrePull", "type": "Normal", "note": "ok",
            "reportingController": "pullgate.io/agent", "reportingInstance": "n1", "eventTime": "2026-11-23T00:00:00.000000Z",
                "regarding": {"apiVersion": "pullgate.io/v1alpha1", "kind": "PullSet", "namespace": "team", "name": "pullset"}}))
            .unwrap();
        events.create(&PostParams::default(), &event).await.unwrap();
        assert_eq!(server.list("events.k8s.io/v1", "events").len(), 1);
        // As the real server, a note over 1,024 bytes is refused (and one at the limit is not).
        let event_with_note = |note: String| -> k8s_openapi::api::events::v1::Event {
            serde_json::from_value(json!({"metadata": {"generateName": "pullset."},
                "reason": "PrePullFailed", "action": "PrePull", "type": "Warning", "note": note,
                "reportingController": "pullgate.io/agent", "reportingInstance": "n1", "eventTime": "2026-11-23T00:00:00.000000Z",
                "regarding": {"apiVersion": "pullgate.io/v1alpha1", "kind": "PullSet", "namespace": "team", "name": "pullset"}}))
            .unwrap()
        };
        let err = events
            .create(&PostParams::default(), &event_with_note("é".repeat(513)))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("note")),
            "{err:?}"
        );
        events
            .create(&PostParams::default(), &event_with_note("é".repeat(512)))
            .await
            .unwrap();
        assert_eq!(server.list("events.k8s.io/v1", "events").len(), 2);

        // Get by name; 403 for a forbidden namespace; 500 injected; 410 after compaction.
        let secrets: Api<Secret> = Api::namespaced(client.clone(), "team");
        assert_eq!(
            secrets.get("regcred").await.unwrap().type_.as_deref(),
            Some("kubernetes.io/dockerconfigjson")
        );
        assert!(
            matches!(secrets.get("absent").await.unwrap_err(), kube::Error::Api(s) if s.code == 404)
        );
        server.fail_next(1);
        assert!(
            matches!(secrets.get("regcred").await.unwrap_err(), kube::Error::Api(s) if s.code == 500)
        );
        server.forbid_namespace("team");
        assert!(
            matches!(secrets.get("regcred").await.unwrap_err(), kube::Error::Api(s) if s.code == 403)
        );
        server.compact();
        server.apply(node("n3"));
        let mut stream = nodes
            .watch(&WatchParams::default().timeout(5), "1")
            .await
            .unwrap()
            .boxed();
        match stream.next().await.unwrap().unwrap() {
            WatchEvent::Error(e) => assert_eq!(e.code, 410),
            other => panic!("expected 410 Gone, got {other:?}"),
        }
    });
}

#[test]
fn lists_are_paged_with_limit_and_an_opaque_continue_token_that_can_expire() {
    let server = ApiServer::start().unwrap();
    for name in ["n1", "n2", "n3"] {
        server.apply(node(name));
    }
    pullgate_testenv::block_on(async {
        let nodes: Api<Node> = Api::all(client(&server).await);

        // Page by page with kube-rs's own limit and continue.
        let first = nodes.list(&ListParams::default().limit(2)).await.unwrap();
        let names = |l: &kube::core::ObjectList<Node>| -> Vec<String> {
            l.items
                .iter()
                .map(|n| n.metadata.name.clone().unwrap())
                .collect()
        };
        assert_eq!(names(&first), ["n1", "n2"]);
        let token = first.metadata.continue_.clone().unwrap();
        assert!(!token.contains("n2"), "the token is opaque: {token}");
        let rest = nodes
            .list(&ListParams::default().limit(2).continue_token(&token))
            .await
            .unwrap();
        assert_eq!(names(&rest), ["n3"]);
        assert_eq!(rest.metadata.continue_.as_deref().unwrap_or(""), "");
        // Later pages carry the first page's list resourceVersion.
        assert_eq!(
            rest.metadata.resource_version,
            first.metadata.resource_version
        );

        // Without limit: one page, no token.
        let all = nodes.list(&ListParams::default()).await.unwrap();
        assert_eq!(names(&all), ["n1", "n2", "n3"]);
        assert_eq!(all.metadata.continue_.as_deref().unwrap_or(""), "");

        // A server-side cap pages even a list that asked for more.
        server.cap_list_pages(1);
        let capped = nodes.list(&ListParams::default().limit(500)).await.unwrap();
        assert_eq!(names(&capped), ["n1"]);
        assert!(capped.metadata.continue_.is_some());

        // An expired token: 410 Gone, reason Expired, the real server's message; once only.
        server.expire_continue_tokens(1);
        let params = ListParams::default().limit(2).continue_token(&token);
        match nodes.list(&params).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
                assert!(
                    status
                        .message
                        .starts_with("The provided continue parameter is too old"),
                    "{}",
                    status.message
                );
            }
            other => panic!("expected 410 Expired, got {other:?}"),
        }
        // A garbled token is a 400, not a panic.
        match nodes
            .list(&ListParams::default().continue_token("not-a-token"))
            .await
        {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 400),
            other => panic!("expected 400, got {other:?}"),
        }
        // The injected expiry is spent: the token works again.
        let rest = nodes.list(&params).await.unwrap();
        assert_eq!(names(&rest), ["n3"]);
    });
}
