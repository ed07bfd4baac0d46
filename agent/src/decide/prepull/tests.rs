//! Engine rules against the shared in-memory runtime (`runtime::fake`, no socket): dedup, candidate
//! order, retries of transient failures only, findings explaining failures, bounded parallelism.

use super::*;
use crate::decide::credentials::{Finding, Resolution};
use crate::decide::desired::Owner;
use crate::decide::runtime::fake::{FakeRuntime, candidate, rejected};
use crate::model::image_ref::ImageRef;
use crate::model::inventory::ObjectKey;
use std::collections::HashSet;
use std::sync::Mutex;

fn desired(image: &str, owners: Vec<(&str, Vec<Candidate>, Vec<Finding>)>) -> DesiredImage {
    DesiredImage {
        image: ImageRef::parse(image).unwrap(),
        owners: owners
            .into_iter()
            .map(|(name, candidates, findings)| Owner {
                pullset: ObjectKey::new("ns", name),
                resolution: Resolution {
                    candidates,
                    findings,
                    blocked: None,
                },
            })
            .collect(),
    }
}

fn fast() -> PrePullConfig {
    PrePullConfig {
        max_parallel: 2,
        retry: RetryPolicy {
            attempts: 3,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        },
        min_free_disk: MinFreeDisk::Percent(20),
    }
}

async fn run(runtime: Arc<FakeRuntime>, desired: Vec<DesiredImage>) -> Vec<Outcome> {
    let engine = PrePuller::new(runtime, fast(), "node-1");
    let out = Mutex::new(Vec::new());
    engine
        .pass(&desired, &CancellationToken::new(), &|o| {
            out.lock().unwrap().push(o)
        })
        .await;
    let mut v = out.into_inner().unwrap();
    v.sort_by(|a, b| (&a.image, &a.pullset).cmp(&(&b.image, &b.pullset)));
    v
}

const UNAUTHORIZED: &str = "failed to resolve reference: pulling from host r.io failed with status code [manifests 1]: 401 Unauthorized";
const REFUSED: &str = "failed to do request: dial tcp 127.0.0.1:1: connect: connection refused";

#[tokio::test(start_paused = true)]
async fn pulls_once_for_several_owners_and_reports_each() {
    let rt = Arc::new(FakeRuntime::default());
    let out = run(
        rt.clone(),
        vec![desired(
            "r.io/a:1",
            vec![
                ("s1", vec![candidate("good", "pw")], vec![]),
                ("s2", vec![candidate("good", "pw")], vec![]),
            ],
        )],
    )
    .await;
    assert_eq!(rt.pulls.lock().unwrap().len(), 1);
    assert_eq!(out.len(), 2);
    for o in &out {
        assert_eq!((o.verdict, o.action), (Verdict::Ok, Action::Pulled));
        assert_eq!(o.image_ref.as_deref(), Some("sha256:id-of-r.io/a:1"));
        assert_eq!(o.repo_digest.as_deref(), Some("r.io/a@sha256:digest"));
        assert_eq!(o.credential.as_deref(), Some("secret ns/good key r.io"));
    }
}

#[tokio::test(start_paused = true)]
async fn a_present_image_is_resolved_again_with_the_owner_s_own_credential() {
    let rt = Arc::new(FakeRuntime::default());
    rt.hold("r.io/a:1", "sha256:x");
    let out = run(
        rt.clone(),
        vec![desired("r.io/a:1", vec![("s1", vec![], vec![])])],
    )
    .await;
    // One cheap re-resolve (anonymous: the owner has no credential); the image keeps its id.
    assert_eq!(rt.passwords_tried(), [""]);
    assert_eq!(
        (out[0].verdict, out[0].action, out[0].attempts),
        (Verdict::Ok, Action::Present, 1)
    );
    assert_eq!(out[0].image_ref.as_deref(), Some("sha256:x"));
    assert_eq!(out[0].credential.as_deref(), Some("anonymous"));
}

#[tokio::test(start_paused = true)]
async fn the_node_s_cache_does_not_hide_a_stale_password() {
    // Digest-pinned and already on the node: the owner is still judged by its own credential.
    let image = "r.io/a@sha256:0000000000000000000000000000000000000000000000000000000000000000";
    let rt = Arc::new(FakeRuntime::default());
    rt.hold(image, "sha256:x");
    rt.answer(image, "stale", vec![rejected(UNAUTHORIZED)]);
    let out = run(
        rt.clone(),
        vec![desired(
            image,
            vec![("b", vec![candidate("old", "stale")], vec![])],
        )],
    )
    .await;
    assert_eq!(rt.passwords_tried(), ["stale"]);
    assert_eq!(
        (out[0].verdict, out[0].action),
        (Verdict::Unauthorized, Action::Failed)
    );
}

#[tokio::test(start_paused = true)]
async fn candidates_are_tried_in_order_and_failures_are_warned() {
    let rt = Arc::new(FakeRuntime::default());
    rt.answer("r.io/a:1", "old", vec![rejected(UNAUTHORIZED)]);
    let out = run(
        rt.clone(),
        vec![desired(
            "r.io/a:1",
            vec![(
                "s1",
                vec![candidate("stale", "old"), candidate("fresh", "new")],
                vec![],
            )],
        )],
    )
    .await;
    assert_eq!(rt.passwords_tried(), ["old", "new"]);
    assert_eq!(out[0].verdict, Verdict::Ok);
    assert_eq!(
        out[0].credential.as_deref(),
        Some("secret ns/fresh key r.io")
    );
    assert_eq!(out[0].warnings.len(), 1, "{:?}", out[0].warnings);
    assert!(
        out[0].warnings[0].contains("secret ns/stale")
            && out[0].warnings[0].contains("Unauthorized")
    );
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_and_permanent_ones_are_not() {
    let rt = Arc::new(FakeRuntime::default());
    rt.answer(
        "r.io/net:1",
        "pw",
        vec![rejected(REFUSED), rejected(REFUSED)],
    );
    rt.answer(
        "r.io/down:1",
        "pw",
        vec![
            rejected(REFUSED),
            rejected(REFUSED),
            rejected(REFUSED),
            rejected(REFUSED),
        ],
    );
    rt.answer(
        "r.io/auth:1",
        "pw",
        vec![rejected(UNAUTHORIZED), rejected(UNAUTHORIZED)],
    );
    let c = || vec![("s", vec![candidate("good", "pw")], vec![])];
    let out = run(
        rt.clone(),
        vec![
            desired("r.io/net:1", c()),
            desired("r.io/down:1", c()),
            desired("r.io/auth:1", c()),
        ],
    )
    .await;
    let by: HashMap<_, _> = out
        .iter()
        .map(|o| (o.image.as_str(), (o.verdict, o.attempts)))
        .collect();
    // ImageStatus counts as an attempt too.
    assert_eq!(by["r.io/net:1"], (Verdict::Ok, 4));
    assert_eq!(by["r.io/down:1"], (Verdict::Network, 4));
    assert_eq!(by["r.io/auth:1"], (Verdict::Unauthorized, 2));
    assert!(out.iter().all(|o| o.verdict.is_ok() || o.hint.is_some()));
}

#[tokio::test(start_paused = true)]
async fn findings_explain_an_anonymous_failure_per_owner() {
    let rt = Arc::new(FakeRuntime::default());
    rt.answer("r.io/a:1", "", vec![rejected(UNAUTHORIZED)]);
    let missing = Finding {
        verdict: Verdict::SecretNotFound,
        message: "pull secret ns/regcred does not exist".into(),
    };
    let out = run(
        rt.clone(),
        vec![desired("r.io/a:1", vec![("s1", vec![], vec![missing])])],
    )
    .await;
    assert_eq!(out[0].verdict, Verdict::SecretNotFound);
    assert!(
        out[0].message.contains("ns/regcred") && out[0].message.contains("401"),
        "{}",
        out[0].message
    );
    assert_eq!(out[0].credential.as_deref(), Some("anonymous"));
}

#[tokio::test(start_paused = true)]
async fn parallelism_is_bounded() {
    let rt = Arc::new(FakeRuntime::default());
    let images: Vec<_> = (0..10)
        .map(|i| desired(&format!("r.io/img{i}:1"), vec![("s", vec![], vec![])]))
        .collect();
    let out = run(rt.clone(), images).await;
    assert_eq!(out.len(), 10);
    assert!(out.iter().all(|o| o.verdict.is_ok()));
    assert_eq!(rt.max_in_flight(), 2);
}

#[tokio::test(start_paused = true)]
async fn echoed_passwords_are_scrubbed() {
    let rt = Arc::new(FakeRuntime::default());
    rt.answer(
        "r.io/a:1",
        "leaky-password",
        vec![rejected(
            "denied for user u with password leaky-password: 401 Unauthorized",
        )],
    );
    let out = run(
        rt,
        vec![desired(
            "r.io/a:1",
            vec![("s", vec![candidate("c", "leaky-password")], vec![])],
        )],
    )
    .await;
    let json = serde_json::to_string(&out).unwrap();
    assert!(!json.contains("leaky-password"), "{json}");
    assert!(json.contains("[REDACTED]"));
}

#[test]
fn retry_delays_are_capped_and_bounded() {
    let policy = RetryPolicy {
        attempts: 6,
        min_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(400),
    };
    let delays: Vec<_> = policy.delays().collect();
    assert_eq!(delays.len(), 5);
    // Jitter adds at most one min_delay on top of the capped exponential.
    assert!(
        delays.iter().all(|d| *d <= Duration::from_millis(800)),
        "{delays:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn each_owner_is_judged_by_its_own_credentials() {
    let rt = Arc::new(FakeRuntime::default());
    rt.answer("r.io/a:1", "stale", vec![rejected(UNAUTHORIZED)]);
    let missing = Finding {
        verdict: Verdict::SecretNotFound,
        message: "pull secret ns/gone does not exist".into(),
    };
    let out = run(
        rt.clone(),
        vec![desired(
            "r.io/a:1",
            vec![
                ("broken", vec![candidate("old", "stale")], vec![]),
                ("healthy", vec![candidate("new", "fresh")], vec![]),
                ("no-secret", vec![], vec![missing]),
            ],
        )],
    )
    .await;
    let by: HashMap<_, _> = out.iter().map(|o| (o.pullset.as_str(), o)).collect();
    // The image was pulled once by `healthy`; `broken` fails by its own credential even so.
    assert_eq!(
        (by["healthy"].verdict, by["healthy"].action),
        (Verdict::Ok, Action::Pulled)
    );
    assert_eq!(
        by["healthy"].credential.as_deref(),
        Some("secret ns/new key r.io")
    );
    assert_eq!(
        (by["broken"].verdict, by["broken"].credential.as_deref()),
        (Verdict::Unauthorized, Some("secret ns/old key r.io"))
    );
    // `no-secret` is judged by an anonymous pull of its own (cheap: the image is there).
    assert_eq!(
        (
            by["no-secret"].verdict,
            by["no-secret"].credential.as_deref()
        ),
        (Verdict::Ok, Some("anonymous"))
    );
    // Nobody is told of another owner's credential or verdict.
    for o in &out {
        let text = format!("{} {:?} {:?}", o.message, o.warnings, o.hint);
        for other in out.iter().filter(|x| x.pullset != o.pullset) {
            if let Some(c) = other
                .credential
                .as_ref()
                .filter(|c| o.credential.as_ref() != Some(*c))
            {
                assert!(
                    !text.contains(c.as_str()),
                    "{} leaks {c}: {text}",
                    o.pullset
                );
            }
        }
    }
    assert!(by["healthy"].warnings.is_empty() && by["no-secret"].warnings.is_empty());
    assert_eq!(rt.passwords_tried(), ["stale", "fresh", ""]);
}

#[tokio::test(start_paused = true)]
async fn owners_sharing_a_credential_cost_one_pull_and_other_namespaces_are_not_named() {
    let rt = Arc::new(FakeRuntime::default());
    rt.answer("r.io/a:1", "stale", vec![rejected(UNAUTHORIZED)]);
    let owner = |ns: &str, name: &str, secret: &str, pw: &str| {
        let mut c = candidate(secret, pw);
        c.source = crate::decide::credentials::CredentialSource::PullSecret {
            secret: ObjectKey::new(ns, secret),
            key: "r.io".into(),
        };
        Owner {
            pullset: ObjectKey::new(ns, name),
            resolution: Resolution {
                candidates: vec![c],
                findings: vec![],
                blocked: None,
            },
        }
    };
    let image = DesiredImage {
        image: ImageRef::parse("r.io/a:1").unwrap(),
        owners: vec![
            owner("alpha", "a", "alpha-cred", "good"),
            owner("alpha", "a2", "alpha-cred", "good"),
            owner("beta", "b", "beta-cred", "stale"),
        ],
    };
    let out = run(rt.clone(), vec![image]).await;
    // alpha's two PullSets share one pull; beta gets its own check.
    assert_eq!(rt.passwords_tried(), ["good", "stale"]);
    let b = out.iter().find(|o| o.namespace == "beta").unwrap();
    assert_eq!(b.verdict, Verdict::Unauthorized);
    let text = format!(
        "{} {:?} {:?} {:?}",
        b.message, b.warnings, b.credential, b.hint
    );
    assert!(!text.contains("alpha"), "{text}");
    for a in out.iter().filter(|o| o.namespace == "alpha") {
        assert_eq!((a.verdict, a.action), (Verdict::Ok, Action::Pulled));
        let text = format!("{} {:?} {:?}", a.message, a.warnings, a.credential);
        assert!(!text.contains("beta"), "{text}");
    }
}

#[tokio::test(start_paused = true)]
async fn when_all_fail_each_owner_gets_its_own_verdict() {
    let rt = Arc::new(FakeRuntime::default());
    rt.answer("r.io/a:1", "stale", vec![rejected(UNAUTHORIZED)]);
    rt.answer("r.io/a:1", "", vec![rejected(UNAUTHORIZED)]);
    let missing = Finding {
        verdict: Verdict::SecretNotFound,
        message: "pull secret ns/gone does not exist".into(),
    };
    let out = run(
        rt,
        vec![desired(
            "r.io/a:1",
            vec![
                ("broken", vec![candidate("old", "stale")], vec![]),
                ("no-secret", vec![], vec![missing]),
            ],
        )],
    )
    .await;
    let by: HashMap<_, _> = out.iter().map(|o| (o.pullset.as_str(), o)).collect();
    assert_eq!(
        (by["broken"].verdict, by["broken"].credential.as_deref()),
        (Verdict::Unauthorized, Some("secret ns/old key r.io"))
    );
    assert_eq!(
        (
            by["no-secret"].verdict,
            by["no-secret"].credential.as_deref()
        ),
        (Verdict::SecretNotFound, Some("anonymous"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_blocked_owner_attempts_nothing_and_gets_its_verdict() {
    let rt = Arc::new(FakeRuntime::default());
    let malformed = Finding {
        verdict: Verdict::SecretMalformed,
        message: "pull secret ns/broken key `.dockerconfigjson`: not valid JSON".into(),
    };
    let blocked = DesiredImage {
        image: ImageRef::parse("r.io/a:1").unwrap(),
        owners: vec![Owner {
            pullset: ObjectKey::new("ns", "broken"),
            resolution: Resolution {
                candidates: vec![],
                findings: vec![malformed.clone()],
                blocked: Some(malformed.clone()),
            },
        }],
    };
    let out = run(rt.clone(), vec![blocked.clone()]).await;
    assert!(
        rt.pulls.lock().unwrap().is_empty(),
        "nothing may be pulled for a blocked owner"
    );
    assert_eq!(out[0].verdict, Verdict::SecretMalformed);
    assert!(out[0].message.contains("ns/broken"));

    // Pulled by another PullSet: the blocked owner still gets its own verdict.
    let mut shared = blocked;
    shared.owners.push(Owner {
        pullset: ObjectKey::new("ns", "healthy"),
        resolution: Resolution {
            candidates: vec![candidate("good", "pw")],
            findings: vec![],
            blocked: None,
        },
    });
    let out = run(rt.clone(), vec![shared]).await;
    let by: HashMap<_, _> = out.iter().map(|o| (o.pullset.as_str(), o)).collect();
    assert_eq!(by["broken"].verdict, Verdict::SecretMalformed);
    assert!(!by["broken"].message.contains("ns/good"));
    assert_eq!(by["healthy"].verdict, Verdict::Ok);
}

const BUDGET: Duration = Duration::from_secs(30);

fn many(n: usize, candidates: fn() -> Vec<Candidate>) -> Vec<DesiredImage> {
    (0..n)
        .map(|i| desired(&format!("r.io/img{i}:1"), vec![("s", candidates(), vec![])]))
        .collect()
}

fn assert_all_stopped_early(out: &[Outcome], n: usize) {
    assert_eq!(out.len(), n, "every image reported once: {out:#?}");
    let images: HashSet<_> = out.iter().map(|o| o.image.as_str()).collect();
    assert_eq!(images.len(), n, "each image once: {out:#?}");
    for o in out {
        assert_eq!(
            (o.verdict, o.action),
            (Verdict::RuntimeError, Action::Failed)
        );
        assert!(o.verdict.is_transient());
        assert!(
            o.message
                .contains("cannot reach CRI at unix:///run/fake.sock")
                && o.message.contains("the pass stopped early")
                && o.message.contains("the next pass retries"),
            "{}",
            o.message
        );
        assert!(o.hint.is_some());
    }
}

#[tokio::test(start_paused = true)]
async fn a_runtime_down_at_list_images_costs_one_budget_per_pass() {
    let rt = Arc::new(FakeRuntime::default());
    rt.go_down_after(0, BUDGET);
    let started = tokio::time::Instant::now();
    let out = run(rt.clone(), many(10, Vec::new)).await;
    // ListImages found it unreachable: nothing else is called in this pass.
    assert_eq!(rt.calls(), 1);
    assert_all_stopped_early(&out, 10);
    assert!(out.iter().all(|o| o.attempts == 0), "{out:#?}");
    assert!(
        out.iter().all(|o| o.message.starts_with("not attempted")),
        "{out:#?}"
    );
    // One reconnect budget, not one per image and retry (paused time: exact).
    assert!(started.elapsed() < 2 * BUDGET, "{:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_runtime_lost_mid_pass_stops_the_pass_and_the_next_pass_retries() {
    let rt = Arc::new(FakeRuntime::default());
    // ListImages answers; every later call finds the runtime gone.
    rt.go_down_after(1, BUDGET);
    let out = run(
        rt.clone(),
        many(10, || vec![candidate("a", "pw-a"), candidate("b", "pw-b")]),
    )
    .await;
    // The calls in flight when it went (at most one per parallel slot) and none after.
    let max_parallel = fast().max_parallel;
    assert!(
        rt.calls() <= 1 + max_parallel,
        "{} calls after the runtime went down",
        rt.calls()
    );
    assert_all_stopped_early(&out, 10);
    assert!(rt.pulls.lock().unwrap().is_empty());

    // It comes back: the next pass pulls everything.
    rt.come_back();
    let out = run(rt.clone(), many(10, || vec![candidate("a", "pw-a")])).await;
    assert_eq!(out.len(), 10);
    assert!(
        out.iter()
            .all(|o| (o.verdict, o.action) == (Verdict::Ok, Action::Pulled)),
        "{out:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_runtime_lost_during_a_pull_tries_no_other_credential() {
    let rt = Arc::new(FakeRuntime::default());
    let two = || vec![candidate("a", "pw-a"), candidate("b", "pw-b")];
    // ListImages and the first image's ImageStatus answer; its pull finds the runtime gone.
    rt.go_down_after(2, BUDGET);
    let out = run(rt.clone(), many(4, two)).await;
    // At most one call in flight per slot when it went; the second candidate is never tried.
    assert!(
        rt.calls() <= 2 + fast().max_parallel,
        "{} calls",
        rt.calls()
    );
    assert_all_stopped_early(&out, 4);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_pass_starts_nothing_more_and_ends_at_once() {
    let rt = Arc::new(FakeRuntime::default());
    let engine = PrePuller::new(rt.clone(), fast(), "node-1");
    let cancel = CancellationToken::new();
    let out = Mutex::new(Vec::new());
    let images = many(50, Vec::new);
    let stop = cancel.clone();
    let sink = |o| {
        out.lock().unwrap().push(o);
        // Shutdown arrives once the first image is reported.
        stop.cancel();
    };
    let summary = engine.pass(&images, &cancel, &sink).await;
    assert!(summary.cancelled);
    let reported = out.into_inner().unwrap().len();
    // The first outcome, and at most what was already running beside it.
    assert!(reported <= fast().max_parallel, "{reported} reported");
    // ListImages, then at most the images in flight (status and pull each).
    assert!(
        rt.calls() <= 1 + 2 * (fast().max_parallel + 1),
        "{} calls",
        rt.calls()
    );
}

#[tokio::test(start_paused = true)]
async fn no_download_starts_at_or_below_the_disk_headroom() {
    let rt = Arc::new(FakeRuntime::default());
    rt.hold("r.io/present:1", "sha256:p");
    *rt.image_fs.lock().unwrap() = Some(crate::decide::runtime::ImageFsSpace {
        free_bytes: 10 << 30,
        capacity_bytes: 100 << 30,
    });
    let out = run(
        rt.clone(),
        vec![
            desired(
                "r.io/a:1",
                vec![("s1", vec![candidate("good", "pw")], vec![])],
            ),
            desired(
                "r.io/present:1",
                vec![("s1", vec![candidate("good", "pw")], vec![])],
            ),
        ],
    )
    .await;
    // The absent image is not pulled; the present one is still judged (no download).
    assert_eq!(
        *rt.pulls.lock().unwrap(),
        [("r.io/present:1".to_string(), "pw".to_string())]
    );
    let a = out.iter().find(|o| o.image == "r.io/a:1").unwrap();
    assert_eq!(
        (a.verdict, a.action),
        (Verdict::DiskPressure, Action::Failed)
    );
    assert!(a.message.contains("--min-free-disk"), "{}", a.message);
    assert_eq!(a.hint, Some(Verdict::DiskPressure.hint()));
    let p = out.iter().find(|o| o.image == "r.io/present:1").unwrap();
    assert_eq!(p.verdict, Verdict::Ok);

    // Space freed: the next pass pulls it.
    *rt.image_fs.lock().unwrap() = Some(crate::decide::runtime::ImageFsSpace {
        free_bytes: 50 << 30,
        capacity_bytes: 100 << 30,
    });
    let out = run(
        rt.clone(),
        vec![desired(
            "r.io/a:1",
            vec![("s1", vec![candidate("good", "pw")], vec![])],
        )],
    )
    .await;
    assert_eq!(
        (out[0].verdict, out[0].action),
        (Verdict::Ok, Action::Pulled)
    );
}

#[tokio::test(start_paused = true)]
async fn the_image_filesystem_is_read_once_a_pass_and_before_each_download_and_not_with_the_headroom_off()
 {
    let owners = || vec![("s1", vec![candidate("good", "pw")], vec![])];
    let images = || {
        vec![
            desired("r.io/a:1", owners()),
            desired("r.io/b:1", owners()),
            desired("r.io/present:1", owners()),
        ]
    };
    for (min_free_disk, reads) in [
        // One for the pass (the gauges), one before each of the two downloads.
        (MinFreeDisk::Percent(20), 3),
        (MinFreeDisk::Bytes(1), 3),
        (MinFreeDisk::Percent(0), 0),
        (MinFreeDisk::Bytes(0), 0),
    ] {
        let rt = Arc::new(FakeRuntime::default());
        rt.hold("r.io/present:1", "sha256:p");
        let engine = PrePuller::new(
            rt.clone(),
            PrePullConfig {
                min_free_disk,
                ..fast()
            },
            "node-1",
        );
        let out = Mutex::new(Vec::new());
        engine
            .pass(&images(), &CancellationToken::new(), &|o| {
                out.lock().unwrap().push(o)
            })
            .await;
        assert_eq!(
            rt.image_fs_reads.load(std::sync::atomic::Ordering::Relaxed),
            reads,
            "{min_free_disk}"
        );
        // Unreadable (the fake tells nothing): the pulls go ahead, and the present image is
        // re-resolved.
        assert_eq!(rt.pulls.lock().unwrap().len(), 3, "{min_free_disk}");
    }
    // Nothing to download: still one read for the pass.
    let rt = Arc::new(FakeRuntime::default());
    rt.hold("r.io/present:1", "sha256:p");
    run(rt.clone(), vec![desired("r.io/present:1", owners())]).await;
    assert_eq!(
        rt.image_fs_reads.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_credential_that_re_resolved_a_present_image_is_not_asked_again_until_it_changes_or_an_hour_passes()
 {
    let image = "r.io/a:1";
    let rt = Arc::new(FakeRuntime::default());
    rt.hold(image, "sha256:x");
    let engine = PrePuller::new(rt.clone(), fast(), "node-1");
    let pass = |desired: Vec<DesiredImage>| {
        let engine = &engine;
        async move {
            let out = Mutex::new(Vec::new());
            engine
                .pass(&desired, &CancellationToken::new(), &|o| {
                    out.lock().unwrap().push(o)
                })
                .await;
            out.into_inner().unwrap()
        }
    };
    let with = |password: &str| {
        vec![desired(
            image,
            vec![("s1", vec![candidate("cred", password)], vec![])],
        )]
    };
    for _ in 0..3 {
        let out = pass(with("pw")).await;
        assert_eq!(
            (out[0].verdict, out[0].action),
            (Verdict::Ok, Action::Present)
        );
        assert_eq!(
            out[0].credential.as_deref(),
            Some("secret ns/cred key r.io")
        );
    }
    assert_eq!(
        rt.passwords_tried(),
        ["pw"],
        "asked once, not once per pass"
    );
    // A changed Secret is another credential: asked at once, and its failure is never remembered.
    rt.answer(
        image,
        "rotated",
        vec![rejected(UNAUTHORIZED), rejected(UNAUTHORIZED)],
    );
    assert_eq!(
        pass(with("rotated")).await[0].verdict,
        Verdict::Unauthorized
    );
    assert_eq!(
        pass(with("rotated")).await[0].verdict,
        Verdict::Unauthorized
    );
    assert_eq!(rt.passwords_tried(), ["pw", "rotated", "rotated"]);
    // The first credential was forgotten when it failed to hold... it is asked again, then kept
    // for an hour, then asked again.
    pass(with("pw")).await;
    pass(with("pw")).await;
    assert_eq!(rt.passwords_tried().len(), 4);
    tokio::time::advance(REJUDGE_AFTER).await;
    pass(with("pw")).await;
    assert_eq!(
        rt.passwords_tried(),
        ["pw", "rotated", "rotated", "pw", "pw"]
    );
}
