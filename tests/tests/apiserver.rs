//! The test API server answers kube-rs's real client code: list, watch with resourceVersion (and
//! 410 Gone after compaction), get, strategic-merge patch of node status, JSON patch with a failing
//! `test`, event creation (and the API server's limit on an Event's note), injected 403s and 500s,
//! list pages with `limit`/`continue` and an injected expiry of the token; no-op patches that are
//! no write; injected 429/503 with `Retry-After`; `Time`/`MicroTime` truncation and
//! `creationTimestamp`; strategic merge by each list's real merge key, with `$patch` directives,
//! and `415` for a custom resource; watch bookmarks a watcher resumes from past compaction.

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
            "reportingController": "pullgate.io/agent", "reportingInstance": "n1",
            "regarding": {"kind": "PullSet", "namespace": "team", "name": "critical"}, "eventTime": "2026-11-23T00:00:00.000000Z"}))
            .unwrap();
        events.create(&PostParams::default(), &event).await.unwrap();
        assert_eq!(server.list("events.k8s.io/v1", "events").len(), 1);
        // As the real server, a note over 1,024 bytes is refused (and one at the limit is not).
        let event_with_note = |note: String| -> k8s_openapi::api::events::v1::Event {
            serde_json::from_value(json!({"metadata": {"generateName": "pullset."},
                "reason": "PrePullFailed", "action": "PrePull", "type": "Warning", "note": note,
                "reportingController": "pullgate.io/agent", "reportingInstance": "n1",
            "regarding": {"kind": "PullSet", "namespace": "team", "name": "critical"}, "eventTime": "2026-11-23T00:00:00.000000Z"}))
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

/// The next event of a watch that is not a bookmark.
async fn next_change<S>(stream: &mut S) -> WatchEvent<Node>
where
    S: futures::Stream<Item = kube::Result<WatchEvent<Node>>> + Unpin,
{
    loop {
        match stream.next().await.unwrap().unwrap() {
            WatchEvent::Bookmark(_) => {}
            other => return other,
        }
    }
}

#[test]
fn a_no_op_patch_is_no_write_no_new_resource_version_and_no_watch_event() {
    let server = ApiServer::start().unwrap();
    server.apply(node("n1"));
    pullgate_testenv::block_on(async {
        let client = client(&server).await;
        let nodes: Api<Node> = Api::all(client);
        let before = nodes.get("n1").await.unwrap();
        let rv = before.metadata.resource_version.clone().unwrap();
        let mut stream = nodes
            .watch(&WatchParams::default().timeout(10), &rv)
            .await
            .unwrap()
            .boxed();
        // The condition as stored: the result equals the stored object.
        let same = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}});
        let answered = nodes
            .patch_status("n1", &PatchParams::default(), &Patch::Strategic(&same))
            .await
            .unwrap();
        assert_eq!(answered.metadata.resource_version.as_deref(), Some(&*rv));
        assert_eq!(
            server.get("v1", "nodes", "", "n1").unwrap()["metadata"]["resourceVersion"],
            json!(rv)
        );
        // A change is a write; the watch's first event is that one, not the no-op.
        let change = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]}});
        let changed = nodes
            .patch_status("n1", &PatchParams::default(), &Patch::Strategic(&change))
            .await
            .unwrap();
        assert_ne!(changed.metadata.resource_version.as_deref(), Some(&*rv));
        match next_change(&mut stream).await {
            WatchEvent::Modified(n) => {
                assert_eq!(
                    n.metadata.resource_version,
                    changed.metadata.resource_version
                )
            }
            other => panic!("unexpected {other:?}"),
        }
    });
}

/// One raw HTTP/1.1 `GET`: (status line and headers, body), lower-cased headers.
fn raw_get(server: &ApiServer, path: &str) -> (String, serde_json::Value) {
    use std::io::{Read as _, Write as _};
    let addr = server.url().trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (
        head.to_ascii_lowercase(),
        serde_json::from_str(body).unwrap(),
    )
}

#[test]
fn throttled_requests_get_429_or_503_with_retry_after_as_the_real_server_answers() {
    let server = ApiServer::start().unwrap();
    server.apply(node("n1"));
    server.throttle_next(1, 429, 3);
    let (head, body) = raw_get(&server, "/api/v1/nodes/n1");
    assert!(head.starts_with("http/1.1 429"), "{head}");
    assert!(head.contains("\r\nretry-after: 3"), "{head}");
    assert_eq!(
        (
            &body["reason"],
            &body["code"],
            &body["details"]["retryAfterSeconds"]
        ),
        (&json!("TooManyRequests"), &json!(429), &json!(3))
    );
    // Only the next one: the one after is answered.
    let (head, body) = raw_get(&server, "/api/v1/nodes/n1");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body["metadata"]["name"], "n1");

    server.throttle_next(1, 503, 1);
    pullgate_testenv::block_on(async {
        // kube-rs retries a 503 itself by default (with Retry-After): without, it sees the Status.
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig()).unwrap();
        let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        config.default_retry = false;
        let nodes: Api<Node> = Api::all(kube::Client::try_from(config).unwrap());
        let err = nodes.get("n1").await.unwrap_err();
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 503 && s.reason == "ServiceUnavailable"),
            "{err:?}"
        );
        nodes.get("n1").await.unwrap();
        // With its retries (the default), the throttled requests are retried to an answer.
        server.throttle_next(2, 429, 0);
        let nodes: Api<Node> = Api::all(client(&server).await);
        nodes.get("n1").await.unwrap();
        assert_eq!(server.pending_throttles(), 0);
    });
}

fn is_time(value: &serde_json::Value, fraction_digits: usize) -> bool {
    let Some(s) = value.as_str() else {
        return false;
    };
    let fraction = s
        .strip_suffix('Z')
        .and_then(|s| s.split_once('.').map(|(_, f)| f.len()))
        .unwrap_or(0);
    s.ends_with('Z') && s.len() >= 20 && fraction == fraction_digits
}

#[test]
fn times_are_stored_truncated_as_time_and_micro_time_and_creation_is_stamped() {
    let server = ApiServer::start().unwrap();
    server.apply(node("n1"));
    pullgate_testenv::block_on(async {
        let client = client(&server).await;
        let nodes: Api<Node> = Api::all(client.clone());
        let patch = json!({"status": {"conditions": [{"type": "CriticalImagesReady", "status": "True", "reason": "Ok",
            "lastHeartbeatTime": "2026-11-23T00:00:01.987654321Z",
            "lastTransitionTime": "2026-11-23T01:00:02.5+01:00"}]}});
        let patched = nodes
            .patch_status("n1", &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .unwrap();
        assert!(patched.metadata.creation_timestamp.is_some());
        let stored = server.node_condition("n1", "CriticalImagesReady").unwrap();
        assert_eq!(
            (&stored["lastHeartbeatTime"], &stored["lastTransitionTime"]),
            (
                &json!("2026-11-23T00:00:01Z"),
                &json!("2026-11-23T00:00:02Z")
            )
        );
        assert!(is_time(
            &server.get("v1", "nodes", "", "n1").unwrap()["metadata"]["creationTimestamp"],
            0
        ));

        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(client.clone(), "team");
        let event = serde_json::from_value(json!({"metadata": {"name": "pullset.1"},
            "reason": "PrePulled", "action": "PrePull", "type": "Normal", "note": "ok",
            "reportingController": "pullgate.io/agent", "reportingInstance": "n1",
            "regarding": {"kind": "PullSet", "namespace": "team", "name": "critical"},
            "eventTime": "2026-11-23T00:00:00.123456789Z",
            "series": {"count": 2, "lastObservedTime": "2026-11-23T00:00:03.1Z"}}))
        .unwrap();
        events.create(&PostParams::default(), &event).await.unwrap();
        let stored = server
            .get("events.k8s.io/v1", "events", "team", "pullset.1")
            .unwrap();
        assert_eq!(
            (&stored["eventTime"], &stored["series"]["lastObservedTime"]),
            (
                &json!("2026-11-23T00:00:00.123456Z"),
                &json!("2026-11-23T00:00:03.100000Z")
            )
        );
        assert!(
            is_time(&stored["metadata"]["creationTimestamp"], 0),
            "{stored}"
        );
    });
}

#[test]
fn strategic_merge_uses_each_lists_real_merge_key_and_the_patch_directives() {
    let server = ApiServer::start().unwrap();
    let mut n1 = node("n1");
    n1["metadata"]["finalizers"] = json!(["a"]);
    n1["metadata"]["ownerReferences"] =
        json!([{"apiVersion": "v1", "kind": "Pod", "name": "p1", "uid": "u1"}]);
    n1["status"]["addresses"] = json!([{"type": "InternalIP", "address": "10.0.0.1"},
                                       {"type": "Hostname", "address": "n1"}]);
    n1["status"]["images"] = json!([{"names": ["old"], "sizeBytes": 1}]);
    server.apply(n1);
    pullgate_testenv::block_on(async {
        let nodes: Api<Node> = Api::all(client(&server).await);
        // Spec and metadata: taints replaced (no merge key in core/v1), finalizers a set,
        // ownerReferences merged by uid, labels replaced by `$patch: replace`.
        let patch = json!({"metadata": {"finalizers": ["b"],
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p2", "uid": "u2"}],
                "labels": {"$patch": "replace", "only": "this"}},
            "spec": {"taints": [{"key": "new", "effect": "NoSchedule"}]}});
        let patched = nodes
            .patch("n1", &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .unwrap();
        let meta = &patched.metadata;
        assert_eq!(
            meta.finalizers.as_deref(),
            Some(&["a".into(), "b".into()][..])
        );
        let owners: Vec<&str> = meta
            .owner_references
            .iter()
            .flatten()
            .map(|o| o.uid.as_str())
            .collect();
        assert_eq!(owners, ["u1", "u2"]);
        assert_eq!(
            meta.labels.clone().unwrap().into_iter().collect::<Vec<_>>(),
            [("only".to_string(), "this".to_string())]
        );
        let taints: Vec<String> = patched
            .spec
            .unwrap()
            .taints
            .unwrap()
            .into_iter()
            .map(|t| t.key)
            .collect();
        assert_eq!(taints, ["new"]);

        // Status: addresses merged by type, images replaced, a condition deleted by `$patch`.
        let patch = json!({"status": {
            "addresses": [{"type": "InternalIP", "address": "10.0.0.2"}],
            "images": [{"names": ["new"], "sizeBytes": 2}],
            "conditions": [{"type": "Ready", "$patch": "delete"},
                           {"type": "CriticalImagesReady", "status": "True"}]}});
        let status = nodes
            .patch_status("n1", &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .unwrap()
            .status
            .unwrap();
        let addresses: Vec<(String, String)> = status
            .addresses
            .unwrap()
            .into_iter()
            .map(|a| (a.type_, a.address))
            .collect();
        assert_eq!(
            addresses,
            [
                ("InternalIP".to_string(), "10.0.0.2".to_string()),
                ("Hostname".to_string(), "n1".to_string())
            ]
        );
        let images: Vec<Vec<String>> = status
            .images
            .unwrap()
            .into_iter()
            .map(|i| i.names.unwrap_or_default())
            .collect();
        assert_eq!(images, [vec!["new".to_string()]]);
        let conditions: Vec<String> = status
            .conditions
            .unwrap()
            .into_iter()
            .map(|c| c.type_)
            .collect();
        assert_eq!(conditions, ["CriticalImagesReady"]);

        // `$patch: replace` as a list item: the patch's other items are the list.
        let patch = json!({"status": {"addresses": [{"$patch": "replace"}, {"type": "Hostname", "address": "h"}]}});
        let status = nodes
            .patch_status("n1", &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .unwrap()
            .status
            .unwrap();
        let addresses: Vec<String> = status
            .addresses
            .unwrap()
            .into_iter()
            .map(|a| a.address)
            .collect();
        assert_eq!(addresses, ["h"]);
    });
    // No directive is ever stored.
    assert!(!server.dump().contains("$patch"));
}

#[test]
fn a_strategic_merge_patch_of_a_custom_resource_is_415_as_the_real_server_answers() {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let server = ApiServer::start().unwrap();
    server.apply(pullgate_testenv::apiserver::objects::pullset(
        "team",
        "critical",
        &["example.com/app:v1"],
        json!({}),
    ));
    pullgate_testenv::block_on(async {
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("pullgate.io", "v1alpha1", "PullSet"),
            "pullsets",
        );
        let sets: Api<DynamicObject> =
            Api::namespaced_with(client(&server).await, "team", &resource);
        let patch = json!({"metadata": {"labels": {"a": "b"}}});
        let err = sets
            .patch(
                "critical",
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 415
                && s.reason == "UnsupportedMediaType"
                && s.message.contains("accepted media types include: application/json-patch+json, application/merge-patch+json")
                && !s.message.contains("strategic")),
            "{err:?}"
        );
        // A JSON merge patch of it is fine.
        let merged = sets
            .patch("critical", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        assert_eq!(merged.metadata.labels.unwrap()["a"], "b");
    });
}

/// Polls `check` (yielding to the runtime's other tasks) until it holds; panics after 30 s.
async fn until(server: &ApiServer, what: &str, check: impl Fn(&ApiServer) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !check(server) {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            server.requests()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[test]
fn watch_bookmarks_carry_the_current_resource_version_so_a_watcher_resumes_past_compaction() {
    use kube::runtime::watcher;
    let server = ApiServer::start().unwrap();
    server.apply(node("n1"));
    server.bookmark_every(std::time::Duration::from_millis(200));
    let node_watches = |server: &ApiServer| -> Vec<String> {
        server
            .requests()
            .into_iter()
            .filter(|r| r.starts_with("GET /api/v1/nodes?") && r.contains("watch=true"))
            .collect()
    };
    let node_lists = |server: &ApiServer| {
        server
            .requests()
            .into_iter()
            .filter(|r| r.starts_with("GET /api/v1/nodes") && !r.contains("watch=true"))
            .count()
    };
    let resumes_from = |request: &str, rv: &str| {
        request
            .split(['?', '&'])
            .any(|term| term == format!("resourceVersion={rv}"))
    };
    pullgate_testenv::block_on(async {
        let nodes: Api<Node> = Api::all(client(&server).await);
        let mut stream = watcher(nodes, watcher::Config::default().timeout(2)).boxed();
        let watching = tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                event.unwrap();
            }
        });
        until(&server, "a watch of nodes", |s| !node_watches(s).is_empty()).await;
        // A write elsewhere: the nodes' watch has no event for it, only a bookmark.
        server.apply(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "namespace": "team"}}));
        let rv = server.get("v1", "secrets", "team", "s").unwrap()["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        until(
            &server,
            "a watch resumed from the bookmark's resourceVersion",
            |s| node_watches(s).iter().any(|r| resumes_from(r, &rv)),
        )
        .await;
        // Compaction now: the bookmark's resourceVersion is still good, the node's is not.
        server.compact();
        let seen = node_watches(&server).len();
        until(&server, "two more watches", |s| {
            node_watches(s).len() >= seen + 2
        })
        .await;
        assert_eq!(node_lists(&server), 1, "{:?}", server.requests());
        watching.abort();
    });
}
