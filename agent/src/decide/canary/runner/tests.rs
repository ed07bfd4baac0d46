use super::*;
use crate::decide::credentials::{CredentialSource, Finding};
use crate::model::inventory::ObjectKey;
use secrecy::{ExposeSecret as _, SecretString};
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
                }),
                v => Err(ProbeFailure {
                    verdict: v,
                    message: format!("registry said {v} to {password}"),
                }),
            }
        })
    }
}

fn candidate(secret: &str, password: &str, expires_in: Option<i64>) -> Candidate {
    Candidate {
        source: CredentialSource::PullSecret {
            secret: ObjectKey::new("ns", secret),
            key: "r.io".into(),
        },
        username: "u".into(),
        password: SecretString::from(password.to_string()),
        expires_at: expires_in.map(|s| {
            if s >= 0 {
                SystemTime::now() + Duration::from_secs(s as u64)
            } else {
                SystemTime::now() - Duration::from_secs((-s) as u64)
            }
        }),
    }
}

fn run(answers: &[(&'static str, Verdict)], resolution: Resolution) -> CanaryOutcome {
    let runner = CanaryRunner {
        probe: Scripted(answers.iter().copied().collect()),
        node: "n1".into(),
        expiry_warning: Duration::from_secs(7200),
        runtime: None,
        runtime_config: None,
    };
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
                candidate("stale", "old-password", None),
                candidate("fresh", "new-password", None),
            ],
            vec![],
        ),
    );
    assert_eq!(o.verdict, Verdict::Ok);
    assert_eq!(o.credential.as_deref(), Some("secret ns/fresh key r.io"));
    assert_eq!(o.warnings.len(), 1);
    assert!(
        o.warnings[0].starts_with("CredentialFailing: secret ns/stale key r.io: Unauthorized"),
        "{:?}",
        o.warnings
    );
    assert!(
        !o.warnings[0].contains("old-password"),
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
            resolution(vec![candidate("s", "pw", None)], vec![]),
            Verdict::Unauthorized,
        ),
        (
            &[("pw", Verdict::NotFound)],
            resolution(vec![candidate("s", "pw", None)], vec![]),
            Verdict::NotFound,
        ),
        (
            &[("pw", Verdict::RateLimited)],
            resolution(vec![candidate("s", "pw", None)], vec![]),
            Verdict::RateLimited,
        ),
        (
            &[("pw", Verdict::Network)],
            resolution(vec![candidate("s", "pw", None)], vec![]),
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
            resolution(vec![candidate("s", "pw", Some(-60))], vec![]),
            Verdict::Expired,
        ),
        // Expired but the failure is elsewhere: that failure.
        (
            &[("pw", Verdict::Network)],
            resolution(vec![candidate("s", "pw", Some(-60))], vec![]),
            Verdict::Network,
        ),
        (
            &[],
            resolution(vec![candidate("s", "pw", None)], vec![]),
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
    let o = run(
        &[],
        resolution(vec![candidate("s", "pw", Some(600))], vec![]),
    );
    assert_eq!(o.verdict, Verdict::Ok);
    assert!(o.expires_at.is_some());
    assert!(
        o.warnings.iter().any(|w| w.starts_with("ExpiringSoon")),
        "{:?}",
        o.warnings
    );
    let o = run(
        &[],
        resolution(vec![candidate("s", "pw", Some(86_400))], vec![]),
    );
    assert!(o.warnings.is_empty(), "{:?}", o.warnings);
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
