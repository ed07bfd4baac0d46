//! Runner rules: candidates in order, fallbacks warned, expiry, blocked resolutions; the runtime
//! path against the shared in-memory runtime (`runtime::fake`).

use super::*;
use crate::decide::credentials::Finding;
use crate::decide::runtime::RuntimeFailure;
use crate::decide::runtime::fake::{FakeRuntime, candidate, rejected};
use secrecy::ExposeSecret as _;
use std::collections::HashMap;

/// Answers by password: Ok, or a failure with the given verdict.
struct Scripted(HashMap<&'static str, Verdict>);

impl RegistryProbe for Scripted {
    fn probe<'a>(
        &'a self,
        _image: &'a ImageRef,
        candidate: Option<&'a Candidate>,
        _depth: CanaryDepth,
    ) -> BoxFuture<'a, Result<ProbeReport, ProbeFailure>> {
        let password = candidate.map_or(String::new(), |c| c.password.expose_secret().to_string());
        let answer = self
            .0
            .get(password.as_str())
            .copied()
            .unwrap_or(Verdict::Ok);
        Box::pin(async move {
            match answer {
                Verdict::Ok => Ok(ProbeReport {
                    manifest_digest: "sha256:m".into(),
                    blobs: 2,
                    bytes: 10,
                    requests: 4,
                    ..ProbeReport::default()
                }),
                v => Err(ProbeFailure::new(
                    v,
                    format!("registry said {v} to {password}"),
                )),
            }
        })
    }
}

/// A candidate that says it expires `expires_in` seconds from now (negative: ago).
fn expiring(secret: &str, password: &str, expires_in: i64) -> Candidate {
    let now = SystemTime::now();
    let by = Duration::from_secs(expires_in.unsigned_abs());
    Candidate {
        expires_at: Some(if expires_in >= 0 { now + by } else { now - by }),
        ..candidate(secret, password)
    }
}

fn runner(answers: &[(&'static str, Verdict)]) -> CanaryRunner<Scripted> {
    CanaryRunner {
        probe: Scripted(answers.iter().copied().collect()),
        node: "n1".into(),
        expiry_warning: Duration::from_secs(7200),
        runtime: None,
        mirrors: None,
    }
}

/// A canary outcome as the runner makes one, for the modules that consume them.
pub(crate) fn outcome(
    image: &str,
    verdict: Verdict,
    warnings: Vec<CanaryWarning>,
) -> CanaryOutcome {
    let mut o = runner(&[]).blank(
        "payments",
        "critical",
        &ImageRef::parse(image).unwrap_or_else(|e| panic!("{image}: {e}")),
        CanaryDepth::Manifest,
        Trigger::Schedule,
        CanaryPath::Registry,
    );
    o.image = image.into();
    o.credential = Some("secret payments/regcred key r".into());
    o.verdict = verdict;
    o.message = "m".into();
    o.warnings = warnings;
    o
}

fn run(answers: &[(&'static str, Verdict)], resolution: Resolution) -> CanaryOutcome {
    let runner = runner(answers);
    let image = ImageRef::parse("r.io/a:1").unwrap();
    futures::executor::block_on(runner.check_image(
        "ns",
        "set",
        &image,
        &resolution,
        CanaryDepth::Blobs,
        Trigger::Rotation,
    ))
}

fn resolution(candidates: Vec<Candidate>, findings: Vec<Finding>) -> Resolution {
    Resolution {
        candidates,
        findings,
        blocked: None,
    }
}

#[test]
fn fallbacks_never_hide_a_broken_secret() {
    let o = run(
        &[("old-password", Verdict::Unauthorized)],
        resolution(
            vec![
                candidate("stale", "old-password"),
                candidate("fresh", "new-password"),
            ],
            vec![],
        ),
    );
    assert_eq!(o.verdict, Verdict::Ok);
    assert_eq!(o.credential.as_deref(), Some("secret ns/fresh key r.io"));
    assert_eq!(o.warnings.len(), 1);
    let CanaryWarning::CredentialFailing {
        credential,
        verdict,
        message,
    } = &o.warnings[0]
    else {
        panic!("{:?}", o.warnings)
    };
    assert_eq!(
        (credential.as_str(), *verdict),
        ("secret ns/stale key r.io", Verdict::Unauthorized)
    );
    assert!(
        !message.contains("old-password"),
        "password scrubbed: {:?}",
        o.warnings
    );
    assert_eq!(
        (o.requests, o.bytes, o.manifest_digest.as_deref()),
        (4, 10, Some("sha256:m"))
    );
}

#[test]
fn verdict_table() {
    let missing = Finding {
        verdict: Verdict::SecretNotFound,
        message: "pull secret ns/regcred does not exist".into(),
    };
    let cases: Vec<(&[(&'static str, Verdict)], Resolution, Verdict)> = vec![
        (
            &[("pw", Verdict::Unauthorized)],
            resolution(vec![candidate("s", "pw")], vec![]),
            Verdict::Unauthorized,
        ),
        (
            &[("pw", Verdict::NotFound)],
            resolution(vec![candidate("s", "pw")], vec![]),
            Verdict::NotFound,
        ),
        (
            &[("pw", Verdict::RateLimited)],
            resolution(vec![candidate("s", "pw")], vec![]),
            Verdict::RateLimited,
        ),
        (
            &[("pw", Verdict::Network)],
            resolution(vec![candidate("s", "pw")], vec![]),
            Verdict::Network,
        ),
        // Anonymous failure explained by what resolution found.
        (
            &[("", Verdict::Unauthorized)],
            resolution(vec![], vec![missing.clone()]),
            Verdict::SecretNotFound,
        ),
        // The credential says it has expired and the registry refuses it: Expired.
        (
            &[("pw", Verdict::Unauthorized)],
            resolution(vec![expiring("s", "pw", -60)], vec![]),
            Verdict::Expired,
        ),
        // Expired but the failure is elsewhere: that failure.
        (
            &[("pw", Verdict::Network)],
            resolution(vec![expiring("s", "pw", -60)], vec![]),
            Verdict::Network,
        ),
        (
            &[],
            resolution(vec![candidate("s", "pw")], vec![]),
            Verdict::Ok,
        ),
    ];
    for (answers, r, expected) in cases {
        let o = run(answers, r);
        assert_eq!(o.verdict, expected, "{answers:?}: {}", o.message);
        assert_eq!(o.hint.is_some(), expected != Verdict::Ok);
    }
}

#[test]
fn expiring_soon_is_a_warning_on_success() {
    let o = run(&[], resolution(vec![expiring("s", "pw", 600)], vec![]));
    assert_eq!(o.verdict, Verdict::Ok);
    assert!(o.expires_at.is_some());
    assert!(
        matches!(o.warnings[..], [CanaryWarning::ExpiringSoon { .. }]),
        "{:?}",
        o.warnings
    );
    let o = run(&[], resolution(vec![expiring("s", "pw", -60)], vec![]));
    assert_eq!(o.verdict, Verdict::Ok);
    assert_eq!(o.warnings, [CanaryWarning::ExpiryPassed]);
    let o = run(&[], resolution(vec![expiring("s", "pw", 86_400)], vec![]));
    assert!(o.warnings.is_empty(), "{:?}", o.warnings);
}

/// A credential whose own `exp` lies past year 9999 (issue #13): the canary completes, the expiry
/// is written as out of range, and a far-future expiry is simply not expiring. One before 1970 is
/// expired.
#[test]
fn out_of_range_expiry_is_not_a_panic() {
    use crate::decide::credentials::expiry::expires_at;
    use crate::model::time::{AFTER_9999, BEFORE_1970};
    use base64::Engine as _;
    let token = |exp: &str| {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256"}"#),
            b64(&format!(r#"{{"exp":{exp}}}"#))
        )
    };
    let with_exp = |exp: &str| Candidate {
        expires_at: expires_at([token(exp).as_str()]),
        ..candidate("s", "pw")
    };
    // Year 20000, year 10000, u64::MAX, 1e30.
    for exp in [
        "568971849600",
        "253402300800",
        &u64::MAX.to_string(),
        "1e30",
    ] {
        let o = run(&[], resolution(vec![with_exp(exp)], vec![]));
        assert_eq!(o.verdict, Verdict::Ok, "{exp}");
        assert_eq!(o.expires_at.as_deref(), Some(AFTER_9999), "{exp}");
        assert!(o.warnings.is_empty(), "{exp}: {:?}", o.warnings);
        let o = run(
            &[("pw", Verdict::Unauthorized)],
            resolution(vec![with_exp(exp)], vec![]),
        );
        assert_eq!(o.verdict, Verdict::Unauthorized, "{exp}");
    }
    let o = run(&[], resolution(vec![with_exp("-1")], vec![]));
    assert_eq!(o.verdict, Verdict::Ok);
    assert_eq!(o.expires_at.as_deref(), Some(BEFORE_1970));
    assert_eq!(o.warnings, [CanaryWarning::ExpiryPassed]);
    let o = run(
        &[("pw", Verdict::Unauthorized)],
        resolution(vec![with_exp("-1")], vec![]),
    );
    assert_eq!(o.verdict, Verdict::Expired);
    // The warning text is safe too.
    let far = expires_at([token("568971849600").as_str()]).unwrap_or(SystemTime::UNIX_EPOCH);
    assert_eq!(
        CanaryWarning::ExpiringSoon { at: far }.to_string(),
        format!("ExpiringSoon: the credential expires at {AFTER_9999}")
    );
}

#[test]
fn a_blocked_resolution_probes_nothing() {
    let blocked = Finding {
        verdict: Verdict::SecretMalformed,
        message: "pull secret ns/broken key `.dockerconfigjson`: not valid JSON".into(),
    };
    let mut r = resolution(vec![], vec![blocked.clone()]);
    r.blocked = Some(blocked);
    let o = run(&[("", Verdict::Ok)], r);
    assert_eq!((o.verdict, o.requests), (Verdict::SecretMalformed, 0));
    let json = serde_json::to_value(&o).unwrap();
    assert_eq!(json["kind"], "canary");
    assert_eq!(json["trigger"], "rotation");
    assert_eq!(json["depth"], "blobs");
}

/// Mirrors for every registry.
struct Mirrors(&'static [&'static str]);

impl RegistryMirrors for Mirrors {
    fn mirrors(&self, _registry: &str) -> Vec<String> {
        self.0.iter().map(|m| m.to_string()).collect()
    }
}

async fn run_runtime(
    runtime: Option<Arc<FakeRuntime>>,
    mirrors: &'static [&'static str],
    resolution: Resolution,
) -> CanaryOutcome {
    let runner = CanaryRunner {
        runtime: runtime.map(|r| r as Arc<dyn ImageRuntime>),
        mirrors: Some(Arc::new(Mirrors(mirrors))),
        ..runner(&[])
    };
    let image = ImageRef::parse("r.io/a:1").unwrap();
    runner
        .check_runtime("ns", "set", &image, &resolution, Trigger::Manual)
        .await
}

const UNAUTHORIZED: &str = "failed to resolve reference: pulling from host r.io failed with status code [manifests 1]: 401 Unauthorized: old-password";

#[tokio::test(start_paused = true)]
async fn the_runtime_path_judges_the_runtime_by_its_words() {
    let rt = Arc::new(FakeRuntime::default());
    rt.answer("r.io/a:1", "old-password", vec![rejected(UNAUTHORIZED)]);
    let o = run_runtime(
        Some(rt.clone()),
        &[],
        resolution(
            vec![
                candidate("stale", "old-password"),
                candidate("fresh", "new-password"),
            ],
            vec![],
        ),
    )
    .await;
    assert_eq!(rt.passwords_tried(), ["old-password", "new-password"]);
    assert_eq!((o.path, o.verdict), (CanaryPath::Runtime, Verdict::Ok));
    assert_eq!(o.credential.as_deref(), Some("secret ns/fresh key r.io"));
    assert!(
        o.message.starts_with("pulled through the runtime"),
        "{}",
        o.message
    );
    assert_eq!(o.manifest_digest, None);
    let [
        CanaryWarning::CredentialFailing {
            verdict, message, ..
        },
    ] = &o.warnings[..]
    else {
        panic!("{:?}", o.warnings)
    };
    assert_eq!(*verdict, Verdict::Unauthorized);
    assert!(!message.contains("old-password"), "{message}");

    // Every candidate refused: the last one's verdict.
    rt.answer("r.io/a:1", "pw", vec![rejected(UNAUTHORIZED)]);
    let o = run_runtime(
        Some(rt),
        &[],
        resolution(vec![candidate("s", "pw")], vec![]),
    )
    .await;
    assert_eq!(o.verdict, Verdict::Unauthorized);
    assert!(o.hint.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_runtime_that_cannot_answer_is_a_runtime_error() {
    let rt = Arc::new(FakeRuntime::default());
    rt.answer(
        "r.io/a:1",
        "pw",
        vec![Err(RuntimeFailure::Unreachable {
            endpoint: "unix:///run/containerd/containerd.sock".into(),
            cause: "connection refused".into(),
        })],
    );
    let o = run_runtime(
        Some(rt),
        &[],
        resolution(vec![candidate("s", "pw")], vec![]),
    )
    .await;
    assert_eq!(o.verdict, Verdict::RuntimeError);
    assert!(
        o.message.contains("cannot reach CRI at unix://"),
        "{}",
        o.message
    );

    let o = run_runtime(None, &[], resolution(vec![candidate("s", "pw")], vec![])).await;
    assert_eq!(
        (o.verdict, o.message.as_str()),
        (
            Verdict::RuntimeError,
            "runtime canary requested but no CRI endpoint is configured"
        )
    );
}

#[tokio::test(start_paused = true)]
async fn a_mirror_in_the_runtime_path_is_warned() {
    let rt = Arc::new(FakeRuntime::default());
    let o = run_runtime(
        Some(rt),
        &["cache.local:5000"],
        resolution(vec![candidate("s", "pw")], vec![]),
    )
    .await;
    assert_eq!(o.verdict, Verdict::Ok);
    assert_eq!(
        o.warnings,
        [CanaryWarning::MirrorInPath {
            registry: "r.io".into(),
            mirrors: vec!["cache.local:5000".into()],
        }]
    );
}

/// Answers with a scripted walk of hosts: each `(host, verdict)` in order, and the index of the
/// node's answer; messages quote the password, to show they are scrubbed.
struct Walking(Vec<(&'static str, Verdict)>, usize);

impl RegistryProbe for Walking {
    fn probe<'a>(
        &'a self,
        _image: &'a ImageRef,
        candidate: Option<&'a Candidate>,
        _depth: CanaryDepth,
    ) -> BoxFuture<'a, Result<ProbeReport, ProbeFailure>> {
        let password = candidate.map_or(String::new(), |c| c.password.expose_secret().to_string());
        let walk = Walk {
            hosts: self
                .0
                .iter()
                .map(|(host, verdict)| HostVerdict {
                    host: host.to_string(),
                    verdict: *verdict,
                    message: if verdict.is_ok() {
                        String::new()
                    } else {
                        format!("{host} refused {password}")
                    },
                })
                .collect(),
            node: Some(self.1),
        };
        let node = self.0[self.1].1;
        Box::pin(async move {
            if node.is_ok() {
                Ok(ProbeReport {
                    manifest_digest: "sha256:m".into(),
                    walk,
                    ..ProbeReport::default()
                })
            } else {
                Err(ProbeFailure {
                    verdict: node,
                    message: format!("the node's error, {password}"),
                    walk,
                })
            }
        })
    }
}

fn walked(hosts: &[(&'static str, Verdict)], node: usize) -> CanaryOutcome {
    let runner = CanaryRunner {
        probe: Walking(hosts.to_vec(), node),
        node: "n1".into(),
        expiry_warning: Duration::from_secs(7200),
        runtime: None,
        mirrors: None,
    };
    let image = ImageRef::parse("r.io/a:1").unwrap();
    futures::executor::block_on(runner.check_image(
        "ns",
        "set",
        &image,
        &resolution(vec![candidate("s", "pw-Walk-9x")], vec![]),
        CanaryDepth::Manifest,
        Trigger::Schedule,
    ))
}

#[test]
fn the_walk_names_the_answering_host_and_each_host_that_differs() {
    use Verdict::{Network, NotFound, Ok as Fine, Unauthorized};
    let hv = |host: &str, verdict: Verdict| HostVerdict {
        host: host.into(),
        verdict,
        message: format!("{host} refused [REDACTED]"),
    };
    for (name, hosts, node, verdict, host, warning) in [
        (
            "one host, no warning",
            vec![("r.io", Fine)],
            0,
            Fine,
            "r.io",
            None,
        ),
        (
            "all agree: no warning",
            vec![("m.local", Fine), ("r.io", Fine)],
            0,
            Fine,
            "m.local",
            None,
        ),
        (
            "the mirror serves, the upstream refuses the credential",
            vec![("m.local", Fine), ("r.io", Unauthorized)],
            0,
            Fine,
            "m.local",
            Some(CanaryWarning::MirrorMasks {
                registry: "r.io".into(),
                answered: "m.local".into(),
                before: vec![],
                after: vec![hv("r.io", Unauthorized)],
            }),
        ),
        (
            "a broken mirror masked by the upstream",
            vec![("m.local", Network), ("r.io", Fine)],
            1,
            Fine,
            "r.io",
            Some(CanaryWarning::MirrorMasks {
                registry: "r.io".into(),
                answered: "r.io".into(),
                before: vec![hv("m.local", Network)],
                after: vec![],
            }),
        ),
        (
            "all fail alike: no warning",
            vec![("m.local", Unauthorized), ("r.io", Unauthorized)],
            0,
            Unauthorized,
            "m.local",
            None,
        ),
        (
            "all fail otherwise: the others' verdicts",
            vec![("m.local", NotFound), ("r.io", Unauthorized)],
            0,
            NotFound,
            "m.local",
            Some(CanaryWarning::HostsDisagree {
                registry: "r.io".into(),
                reported: "m.local".into(),
                others: vec![hv("r.io", Unauthorized)],
            }),
        ),
    ] {
        let o = walked(&hosts, node);
        assert_eq!(o.verdict, verdict, "{name}");
        assert_eq!(o.host.as_deref(), Some(host), "{name}");
        let walk_warnings: Vec<_> = o
            .warnings
            .iter()
            .filter(|w| {
                matches!(
                    w,
                    CanaryWarning::MirrorMasks { .. } | CanaryWarning::HostsDisagree { .. }
                )
            })
            .cloned()
            .collect();
        assert_eq!(
            walk_warnings,
            warning.into_iter().collect::<Vec<_>>(),
            "{name}"
        );
        let json = serde_json::to_string(&o).unwrap();
        assert!(!json.contains("pw-Walk-9x"), "{name}: {json}");
        assert!(
            json.contains(&format!("\"host\":\"{host}\"")),
            "{name}: {json}"
        );
    }
}

#[test]
fn no_walk_no_host() {
    let o = run(&[], resolution(vec![candidate("s", "p")], vec![]));
    assert_eq!(o.host, None);
    assert!(!serde_json::to_string(&o).unwrap().contains("\"host\""));
}
