use super::*;
use crate::model::inventory::ServiceAccountObject;
use base64::Engine as _;
use serde_json::{Value, json};

const DAY: Duration = Duration::from_secs(86_400);

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000)
}

fn options() -> Options {
    Options {
        now: now(),
        expiry_warning: 7 * DAY,
        max_age: 90 * DAY,
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn b64url(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// A JWT whose `exp` is `now() + offset` (negative: in the past).
fn jwt(offset_secs: i64) -> String {
    let exp = 1_900_000_000 + offset_secs;
    format!(
        "{}.{}.c2lnbmF0dXJl",
        b64url(r#"{"alg":"RS256","typ":"JWT"}"#),
        b64url(&format!(r#"{{"exp":{exp}}}"#))
    )
}

fn config_json(entries: &[(&str, &str, &str)]) -> String {
    let auths: serde_json::Map<String, Value> = entries
        .iter()
        .map(|(host, user, pass)| {
            (
                host.to_string(),
                json!({"auth": b64(&format!("{user}:{pass}"))}),
            )
        })
        .collect();
    json!({ "auths": auths }).to_string()
}

fn cfg(entries: &[(&str, &str, &str)]) -> String {
    let map: serde_json::Map<String, Value> = entries
        .iter()
        .map(|(host, user, pass)| {
            (
                host.to_string(),
                json!({"auth": b64(&format!("{user}:{pass}"))}),
            )
        })
        .collect();
    Value::Object(map).to_string()
}

/// The objects of one case.
#[derive(Default)]
struct Cluster {
    input: AuditInput,
}

impl Cluster {
    fn secret(mut self, ns: &str, name: &str, type_: &str, data: &[(&str, &str)]) -> Self {
        let key = ObjectKey::new(ns, name);
        let data = data
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec().into()))
            .collect();
        self.input.inventory.secrets.insert(
            key.clone(),
            SecretObject {
                key,
                type_: type_.into(),
                data,
            },
        );
        self
    }

    fn pull_secret(self, ns: &str, name: &str, entries: &[(&str, &str, &str)]) -> Self {
        self.secret(
            ns,
            name,
            TYPE_DOCKERCONFIGJSON,
            &[(KEY_DOCKERCONFIGJSON, &config_json(entries))],
        )
    }

    fn sa(mut self, ns: &str, name: &str, secrets: &[&str]) -> Self {
        let key = ObjectKey::new(ns, name);
        self.input.inventory.service_accounts.insert(
            key.clone(),
            ServiceAccountObject {
                key,
                image_pull_secrets: secrets.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        );
        self
    }

    fn pullset(mut self, ns: &str, name: &str, spec: Value) -> Self {
        let key = ObjectKey::new(ns, name);
        let mut spec = spec;
        spec["images"] = json!([{"image": "r.io/app@sha256:0000000000000000000000000000000000000000000000000000000000000000"}]);
        let spec = serde_json::from_value(spec).unwrap_or_else(|e| panic!("{e}"));
        let valid = crate::model::pullset::validate(key.clone(), spec)
            .unwrap_or_else(|e| panic!("{key}: {e:?}"));
        self.input.inventory.pullsets.insert(key, valid);
        self
    }

    fn workload(mut self, ns: &str, name: &str, pods: Option<usize>, secrets: &[&str]) -> Self {
        self.input.workloads.push(Workload {
            namespace: ns.into(),
            name: name.into(),
            pods,
            image_pull_secrets: secrets.iter().map(|s| s.to_string()).collect(),
            service_account: "default".into(),
            images: BTreeSet::new(),
        });
        self
    }

    /// A workload with its ServiceAccount and images (`("volume models", "r.io/models:1")`).
    fn workload_pulling(
        mut self,
        ns: &str,
        name: &str,
        secrets: &[&str],
        service_account: &str,
        images: &[(&str, &str)],
    ) -> Self {
        self.input.workloads.push(Workload {
            namespace: ns.into(),
            name: name.into(),
            pods: None,
            image_pull_secrets: secrets.iter().map(|s| s.to_string()).collect(),
            service_account: service_account.into(),
            images: images
                .iter()
                .map(|(used_by, image)| PodImageUse {
                    used_by: used_by.to_string(),
                    image: image.to_string(),
                })
                .collect(),
        });
        self
    }

    fn incomplete(mut self) -> Self {
        self.input.workloads_complete = false;
        self
    }

    fn changed(mut self, ns: &str, name: &str, ago: Duration, basis: AgeBasis) -> Self {
        self.input.data_changed.insert(
            ObjectKey::new(ns, name),
            DataChanged {
                at: now() - ago,
                basis,
            },
        );
        self
    }

    fn report(&self) -> Report {
        build(
            &self.input,
            &options(),
            &FingerprintKey::from_bytes([7; 32]),
        )
    }
}

fn c() -> Cluster {
    let mut cluster = Cluster::default();
    cluster.input.workloads_complete = true;
    cluster
}

/// Every password the cases use: none may appear in a report.
const PASSWORDS: [&str; 6] = [
    "pw-team-shared-1",
    "pw-other-2",
    "pw-legacy-3",
    "pw-opaque-4",
    "pw-unused-5",
    "pw-bad-json-6",
];

#[test]
fn findings_table() {
    let [shared, other, legacy, opaque, unused, bad] = PASSWORDS;
    let soon = jwt(3_600);
    let later = jwt(30 * 86_400);
    let expired = jwt(-60);
    type Expected = Vec<(FindingKind, Vec<&'static str>)>;
    let cases: Vec<(&str, Cluster, Expected)> = vec![
        (
            "a used pull secret: clean",
            c().pull_secret("team", "regcred", &[("r.io", "u", shared)])
                .sa("team", "default", &["regcred"]),
            vec![],
        ),
        (
            "used by a PullSet directly: clean",
            c().pull_secret("team", "regcred", &[("r.io", "u", shared)])
                .pullset(
                    "team",
                    "critical",
                    json!({"imagePullSecrets": [{"name": "regcred"}]}),
                ),
            vec![],
        ),
        (
            "nobody names it",
            c().pull_secret("team", "spare", &[("r.io", "u", unused)]),
            vec![(FindingKind::Unused, vec!["Secret team/spare"])],
        ),
        (
            "only a Deployment's pod template names it: used",
            c().pull_secret("team", "regcred", &[("r.io", "u", shared)])
                .workload("team", "Deployment/web", None, &["regcred"]),
            vec![],
        ),
        (
            "only running pods name it: used",
            c().pull_secret("team", "regcred", &[("r.io", "u", shared)])
                .workload("team", "Pod/debug", Some(1), &["regcred"]),
            vec![],
        ),
        (
            "a workload in another namespace does not count",
            c().pull_secret("team", "spare", &[("r.io", "u", unused)])
                .workload("other", "Deployment/web", None, &["spare"]),
            vec![
                (FindingKind::Missing, vec!["Secret other/spare"]),
                (FindingKind::Unused, vec!["Secret team/spare"]),
            ],
        ),
        (
            "workloads could not all be listed: Unused is not judged",
            c().pull_secret("team", "spare", &[("r.io", "u", unused)])
                .incomplete(),
            vec![],
        ),
        (
            "a ServiceAccount names a Secret that does not exist",
            c().sa("team", "builder", &["gone"]),
            vec![(FindingKind::Missing, vec!["Secret team/gone"])],
        ),
        (
            "a PullSet's own reference to a missing Secret",
            c().pullset(
                "team",
                "critical",
                json!({"imagePullSecrets": [{"name": "gone"}]}),
            ),
            vec![(FindingKind::Missing, vec!["Secret team/gone"])],
        ),
        (
            "a PullSet names a ServiceAccount that does not exist",
            c().pullset("team", "critical", json!({"serviceAccountName": "ghost"})),
            vec![(
                FindingKind::Missing,
                vec!["ServiceAccount team/ghost", "PullSet team/critical"],
            )],
        ),
        (
            "a missing default ServiceAccount is an empty one (the API server creates it)",
            c().pullset("team", "critical", json!({})),
            vec![],
        ),
        (
            "Opaque with .dockerconfigjson, used",
            c().secret(
                "team",
                "opaque",
                "Opaque",
                &[(KEY_DOCKERCONFIGJSON, &config_json(&[("r.io", "u", opaque)]))],
            )
            .sa("team", "default", &["opaque"]),
            vec![(FindingKind::WrongType, vec!["Secret team/opaque"])],
        ),
        (
            "Opaque with .dockercfg, unused",
            c().secret(
                "team",
                "opaque",
                "Opaque",
                &[(KEY_DOCKERCFG, &cfg(&[("r.io", "u", opaque)]))],
            ),
            vec![
                (FindingKind::WrongType, vec!["Secret team/opaque"]),
                (FindingKind::Unused, vec!["Secret team/opaque"]),
            ],
        ),
        (
            "legacy kubernetes.io/dockercfg, used",
            c().secret(
                "team",
                "old-style",
                TYPE_DOCKERCFG,
                &[(KEY_DOCKERCFG, &cfg(&[("r.io", "u", legacy)]))],
            )
            .sa("team", "default", &["old-style"]),
            vec![(FindingKind::WrongType, vec!["Secret team/old-style"])],
        ),
        (
            "a referenced Secret that holds no Docker config",
            c().secret(
                "team",
                "tls",
                "kubernetes.io/tls",
                &[("tls.crt", "x"), ("tls.key", "y")],
            )
            .sa("team", "default", &["tls"]),
            vec![(FindingKind::WrongType, vec!["Secret team/tls"])],
        ),
        (
            "a dockerconfigjson Secret without its key",
            c().secret(
                "team",
                "empty",
                TYPE_DOCKERCONFIGJSON,
                &[("config.json", "{}")],
            )
            .sa("team", "default", &["empty"]),
            vec![(FindingKind::Malformed, vec!["Secret team/empty"])],
        ),
        (
            "not JSON",
            c().secret(
                "team",
                "broken",
                TYPE_DOCKERCONFIGJSON,
                &[(KEY_DOCKERCONFIGJSON, &format!("{{\"auths\": {bad}"))],
            )
            .sa("team", "default", &["broken"]),
            vec![(FindingKind::Malformed, vec!["Secret team/broken"])],
        ),
        (
            "covers no registry",
            c().secret(
                "team",
                "hollow",
                TYPE_DOCKERCONFIGJSON,
                &[(KEY_DOCKERCONFIGJSON, r#"{"auths":{}}"#)],
            )
            .sa("team", "default", &["hollow"]),
            vec![(FindingKind::Malformed, vec!["Secret team/hollow"])],
        ),
        (
            "a registry key the kubelet ignores",
            c().pull_secret("team", "regcred", &[("r.io:port", "u", shared)])
                .sa("team", "default", &["regcred"]),
            vec![(FindingKind::Malformed, vec!["Secret team/regcred"])],
        ),
        (
            "the same credential in two namespaces",
            c().pull_secret("team", "regcred", &[("r.io", "u", shared)])
                .pull_secret("ops", "regcred", &[("https://r.io/v1/", "u", shared)])
                .sa("team", "default", &["regcred"])
                .sa("ops", "default", &["regcred"]),
            vec![(
                FindingKind::Reused,
                vec![
                    "Secret ops/regcred key https://r.io/v1/",
                    "Secret team/regcred key r.io",
                ],
            )],
        ),
        (
            "the same credential twice in one namespace is not reuse across namespaces",
            c().pull_secret("team", "a", &[("r.io", "u", shared)])
                .pull_secret("team", "b", &[("r.io", "u", shared)])
                .sa("team", "default", &["a", "b"]),
            vec![],
        ),
        (
            "same password, another user or another registry: another credential",
            c().pull_secret("team", "regcred", &[("r.io", "u", shared)])
                .pull_secret(
                    "ops",
                    "regcred",
                    &[("r.io", "v", shared), ("s.io", "u", shared)],
                )
                .sa("team", "default", &["regcred"])
                .sa("ops", "default", &["regcred"]),
            vec![],
        ),
        (
            "a token that expires within the warning",
            c().pull_secret("team", "token", &[("r.io", "oauth2", &soon)])
                .sa("team", "default", &["token"]),
            vec![(FindingKind::ExpiresSoon, vec!["Secret team/token"])],
        ),
        (
            "a token that expired",
            c().pull_secret("team", "token", &[("r.io", "oauth2", &expired)])
                .sa("team", "default", &["token"]),
            vec![(FindingKind::Expired, vec!["Secret team/token"])],
        ),
        (
            "a token that expires after the warning",
            c().pull_secret("team", "token", &[("r.io", "oauth2", &later)])
                .sa("team", "default", &["token"]),
            vec![],
        ),
        (
            "data older than --max-age",
            c().pull_secret("team", "regcred", &[("r.io", "u", other)])
                .sa("team", "default", &["regcred"])
                .changed("team", "regcred", 100 * DAY, AgeBasis::ManagedFields),
            vec![(FindingKind::Old, vec!["Secret team/regcred"])],
        ),
        (
            "data younger than --max-age",
            c().pull_secret("team", "regcred", &[("r.io", "u", other)])
                .sa("team", "default", &["regcred"])
                .changed("team", "regcred", 10 * DAY, AgeBasis::CreationTimestamp),
            vec![],
        ),
    ];
    for (what, cluster, expected) in cases {
        let report = cluster.report();
        let got: Vec<(FindingKind, Vec<String>)> = report
            .findings
            .iter()
            .map(|f| (f.kind, f.objects.clone()))
            .collect();
        let expected: Vec<(FindingKind, Vec<String>)> = expected
            .into_iter()
            .map(|(k, o)| (k, o.into_iter().map(String::from).collect()))
            .collect();
        assert_eq!(got, expected, "{what}: {:#?}", report.findings);
        // Never a credential in the report, its JSON or its Debug.
        let json = serde_json::to_string(&report).unwrap_or_default();
        let debug = format!("{report:?} {:?}", cluster.input);
        for secret in PASSWORDS
            .iter()
            .copied()
            .chain([soon.as_str(), expired.as_str()])
        {
            // The table (commands::audit::render) prints fields of the report only.
            for (out, name) in [(&json, "json"), (&debug, "debug")] {
                assert!(!out.contains(secret), "{what}: a credential in the {name}");
            }
        }
        for f in &report.findings {
            assert!(!f.hint.is_empty(), "{what}: {f:?}");
        }
        assert_eq!(
            report.counts.values().sum::<usize>(),
            report.findings.len(),
            "{what}"
        );
    }
}

#[test]
fn users_follow_the_pod_rule() {
    let cluster = c()
        .pull_secret("team", "sa-cred", &[("r.io", "u", "p1")])
        .pull_secret("team", "own-cred", &[("r.io", "u", "p2")])
        .sa("team", "builder", &["sa-cred"])
        .pullset("team", "via-sa", json!({"serviceAccountName": "builder"}))
        // Its own list replaces the ServiceAccount's: it does not use sa-cred.
        .pullset(
            "team",
            "own",
            json!({"serviceAccountName": "builder", "imagePullSecrets": [{"name": "own-cred"}]}),
        )
        .workload("team", "CronJob/nightly", None, &["own-cred"])
        .workload("team", "ReplicaSet/web-5d9f7c", Some(3), &["own-cred"]);
    let report = cluster.report();
    let secrets = &report.namespaces[0].secrets;
    let users = |name: &str| -> Vec<String> {
        secrets
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.users.iter().map(ToString::to_string).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        users("sa-cred"),
        [
            "ServiceAccount builder",
            "PullSet via-sa (via serviceAccount builder)"
        ]
    );
    assert_eq!(
        users("own-cred"),
        [
            "PullSet own (via imagePullSecrets)",
            "CronJob/nightly",
            "ReplicaSet/web-5d9f7c (3 pods)"
        ]
    );
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    assert_eq!(
        referenced_secrets(&cluster.input.inventory, &cluster.input.workloads),
        [
            ObjectKey::new("team", "own-cred"),
            ObjectKey::new("team", "sa-cred")
        ]
        .into_iter()
        .collect()
    );
}

#[test]
fn registries_and_fingerprints() {
    let cluster = c()
        .pull_secret(
            "team",
            "regcred",
            &[
                ("https://index.docker.io/v1/", "u", "p"),
                ("r.io:5000", "u", "p"),
            ],
        )
        .pull_secret("ops", "regcred", &[("index.docker.io", "u", "p")])
        .sa("team", "default", &["regcred"])
        .sa("ops", "default", &["regcred"]);
    let report = cluster.report();
    let entry = |ns: &str, key: &str| -> RegistryEntry {
        report
            .namespaces
            .iter()
            .find(|n| n.namespace == ns)
            .and_then(|n| n.secrets[0].registries.iter().find(|e| e.key == key))
            .cloned()
            .unwrap_or_else(|| panic!("{ns} {key}"))
    };
    let hub = entry("team", "https://index.docker.io/v1/");
    assert_eq!(hub.registry.as_deref(), Some("index.docker.io"));
    assert_eq!(hub.username, "u");
    // Written differently, the same registry: the same credential.
    assert_eq!(hub.fingerprint, entry("ops", "index.docker.io").fingerprint);
    // Another registry: another fingerprint.
    assert_ne!(hub.fingerprint, entry("team", "r.io:5000").fingerprint);
    let reused: Vec<&Finding> = report
        .findings
        .iter()
        .filter(|f| f.kind == FindingKind::Reused)
        .collect();
    assert_eq!(reused.len(), 1);
    assert_eq!(reused[0].fingerprint, hub.fingerprint);
    assert_eq!(reused[0].namespaces, ["ops", "team"]);
    assert_eq!(reused[0].registry.as_deref(), Some("index.docker.io"));
    // Each copy is marked.
    for ns in &report.namespaces {
        assert_eq!(ns.secrets[0].findings, [FindingKind::Reused]);
    }
    // Another key: other fingerprints.
    let other = build(
        &cluster.input,
        &options(),
        &FingerprintKey::from_bytes([8; 32]),
    );
    assert_ne!(
        other.namespaces[0].secrets[0].registries[0].fingerprint,
        report.namespaces[0].secrets[0].registries[0].fingerprint
    );
    assert!(report.fingerprint_key_per_run);
    assert!(report.fingerprints.contains("within this output only"));
    // The operator's --fingerprint-key: the same fingerprints on every run, and the report says
    // they compare across runs.
    let given = || FingerprintKey::given(&secrecy::SecretString::from("audit-key"));
    let (a, b) = (
        build(&cluster.input, &options(), &given()),
        build(&cluster.input, &options(), &given()),
    );
    let fp = |r: &Report| r.namespaces[0].secrets[0].registries[0].fingerprint.clone();
    assert_eq!(fp(&a), fp(&b));
    assert_ne!(fp(&a), fp(&report));
    assert!(!a.fingerprint_key_per_run);
    assert!(
        a.fingerprints.contains("--fingerprint-key"),
        "{}",
        a.fingerprints
    );
}

#[test]
fn expiry_and_age_are_reported() {
    let cluster = c()
        .pull_secret("team", "token", &[("r.io", "oauth2", &jwt(3_600))])
        .sa("team", "default", &["token"])
        .changed("team", "token", 200 * DAY, AgeBasis::CreationTimestamp);
    let report = cluster.report();
    let s = &report.namespaces[0].secrets[0];
    assert_eq!(
        s.registries[0].expires_at.as_deref(),
        Some("2030-03-17T18:46:40Z")
    );
    let changed = s.data_changed.as_ref().map(|c| (c.at.as_str(), c.basis));
    assert_eq!(
        changed,
        Some(("2029-08-29T17:46:40Z", AgeBasis::CreationTimestamp))
    );
    assert_eq!(s.findings, [FindingKind::ExpiresSoon, FindingKind::Old]);
    let messages: Vec<&str> = report.findings.iter().map(|f| f.message.as_str()).collect();
    assert!(messages[0].contains("in 1h"), "{messages:?}");
    assert!(
        messages[1].contains("200d") && messages[1].contains("creationTimestamp"),
        "{messages:?}"
    );
    let json = serde_json::to_value(&report).unwrap_or_default();
    assert_eq!(
        json["namespaces"][0]["secrets"][0]["data_changed"]["basis"],
        "creationTimestamp"
    );
    assert_eq!(json["counts"]["ExpiresSoon"], 1);
    assert_eq!(
        (json["expiry_warning"].as_str(), json["max_age"].as_str()),
        (Some("168h"), Some("2160h"))
    );
}

#[test]
fn audited_secrets_table() {
    let cases: Vec<(&str, &[&str], bool, bool)> = vec![
        (TYPE_DOCKERCONFIGJSON, &[], false, true),
        (TYPE_DOCKERCFG, &[], false, true),
        ("Opaque", &[KEY_DOCKERCONFIGJSON], false, true),
        ("Opaque", &["other", KEY_DOCKERCFG], false, true),
        ("Opaque", &["password"], false, false),
        (
            "kubernetes.io/service-account-token",
            &["token"],
            false,
            false,
        ),
        ("kubernetes.io/tls", &["tls.crt"], true, true),
    ];
    for (type_, keys, referenced, expected) in cases {
        assert_eq!(
            is_audited(type_, keys.iter().copied(), referenced),
            expected,
            "{type_} {keys:?} {referenced}"
        );
    }
}

#[test]
fn missing_secrets_are_rows_of_their_namespace() {
    let report = c()
        .sa("team", "builder", &["gone"])
        .pullset(
            "team",
            "critical",
            json!({"imagePullSecrets": [{"name": "gone"}]}),
        )
        .report();
    let s = &report.namespaces[0].secrets[0];
    assert_eq!((s.name.as_str(), s.type_.as_deref()), ("gone", None));
    assert_eq!(s.findings, [FindingKind::Missing]);
    assert_eq!(s.users.len(), 2);
    assert!(
        report.findings[0]
            .message
            .contains("ServiceAccount builder, PullSet critical (via imagePullSecrets)"),
        "{:?}",
        report.findings[0]
    );
}

/// One crafted Secret must not break the audit of the cluster (issue #13): tokens whose `exp` lies
/// past year 9999 (or overflows, or is negative) are reported, never a panic, and the other
/// Secrets are audited as usual.
#[test]
fn out_of_range_expiry_is_reported_not_a_panic() {
    use crate::model::time::{AFTER_9999, BEFORE_1970};
    let token = |exp: &str| {
        format!(
            "{}.{}.c2lnbmF0dXJl",
            b64url(r#"{"alg":"RS256","typ":"JWT"}"#),
            b64url(&format!(r#"{{"exp":{exp}}}"#))
        )
    };
    let (year_10000, year_20000, huge, negative) = (
        token("253402300800"),
        token("568971849600"),
        token(&u64::MAX.to_string()),
        token("-1"),
    );
    let report = c()
        .pull_secret("team", "a", &[("a.io", "u", &year_10000)])
        .pull_secret("team", "b", &[("b.io", "u", &year_20000)])
        .pull_secret("team", "c", &[("c.io", "u", &huge)])
        .pull_secret("team", "d", &[("d.io", "u", &negative)])
        .pull_secret("team", "e", &[("e.io", "u", &jwt(3_600))])
        .sa("team", "default", &["a", "b", "c", "d", "e"])
        .report();
    let expires: Vec<(&str, Option<&str>)> = report.namespaces[0]
        .secrets
        .iter()
        .map(|s| (s.name.as_str(), s.registries[0].expires_at.as_deref()))
        .collect();
    assert_eq!(
        expires,
        [
            ("a", Some(AFTER_9999)),
            ("b", Some(AFTER_9999)),
            ("c", Some(AFTER_9999)),
            ("d", Some(BEFORE_1970)),
            ("e", Some("2030-03-17T18:46:40Z")),
        ]
    );
    // Far future: not expiring. Before 1970: expired. The ordinary one: as usual.
    let kinds: Vec<(&str, &[FindingKind])> = report.namespaces[0]
        .secrets
        .iter()
        .map(|s| (s.name.as_str(), s.findings.as_slice()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("a", &[][..]),
            ("b", &[][..]),
            ("c", &[][..]),
            ("d", &[FindingKind::Expired][..]),
            ("e", &[FindingKind::ExpiresSoon][..]),
        ]
    );
    let expired = report
        .findings
        .iter()
        .find(|f| f.kind == FindingKind::Expired)
        .map(|f| f.message.as_str())
        .unwrap_or_default();
    assert!(expired.contains(BEFORE_1970), "{expired}");
    assert!(serde_json::to_string(&report).is_ok());
}

#[test]
fn image_volumes_are_pulls_with_the_pod_rules_secrets() {
    let cluster = c()
        .pull_secret("team", "vol-cred", &[("r.io", "u", "p1")])
        .pull_secret("team", "sa-cred", &[("r.io", "u", "p2")])
        .pull_secret("team", "other-cred", &[("q.io", "u", "p3")])
        .sa("team", "builder", &["sa-cred", "other-cred"])
        // Its only private image is an image volume: the Secret it names covers that registry.
        .workload_pulling(
            "team",
            "Deployment/models",
            &["vol-cred"],
            "builder",
            &[
                ("container c", "busybox:1"),
                ("volume models", "r.io/team/models:v3"),
            ],
        )
        // No own imagePullSecrets: the pod rule gives it its ServiceAccount's; it uses those
        // that cover one of its images (an image volume's), not the others.
        .workload_pulling(
            "team",
            "Deployment/via-sa",
            &[],
            "builder",
            &[("volume weights", "r.io/team/weights@sha256:0000000000000000000000000000000000000000000000000000000000000000")],
        )
        // A ServiceAccount that does not exist gives nothing (and is not a panic).
        .workload_pulling(
            "team",
            "Job/orphan",
            &[],
            "nobody",
            &[("volume models", "r.io/team/models:v3")],
        );
    let report = cluster.report();
    let secrets = &report.namespaces[0].secrets;
    let users = |name: &str| -> Vec<(String, Vec<String>)> {
        secrets
            .iter()
            .find(|s| s.name == name)
            .map(|s| {
                s.users
                    .iter()
                    .map(|u| (u.to_string(), u.images.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let none = Vec::<String>::new;
    assert_eq!(
        users("vol-cred"),
        [(
            "Deployment/models".to_string(),
            vec!["volume models r.io/team/models:v3".to_string()]
        )]
    );
    assert_eq!(
        users("sa-cred"),
        [
            ("ServiceAccount builder".to_string(), none()),
            (
                "Deployment/via-sa (serviceAccount builder)".to_string(),
                vec!["volume weights r.io/team/weights@sha256:0000000000000000000000000000000000000000000000000000000000000000".to_string()]
            ),
        ]
    );
    assert_eq!(
        users("other-cred"),
        [("ServiceAccount builder".to_string(), none())]
    );
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    // The JSON names the covered images; a user without any has no `images` field.
    let json = serde_json::to_value(&report).unwrap();
    let row = |name: &str| {
        json["namespaces"][0]["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        row("vol-cred")["users"],
        json!([{"kind": "Workload", "name": "Deployment/models", "images": ["volume models r.io/team/models:v3"]}])
    );
    assert_eq!(
        row("other-cred")["users"],
        json!([{"kind": "ServiceAccount", "name": "builder"}])
    );
    let text = json.to_string();
    for p in ["p1", "p2", "p3"] {
        assert!(!text.contains(&format!("\"{p}\"")), "{p} in {text}");
    }
}
