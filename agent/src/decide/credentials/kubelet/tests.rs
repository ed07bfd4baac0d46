//! The kubelet's resolution, case by case: pod rule, secret handling, keyring order across
//! sources, near misses, blocked pulls. (Plugins are driven through their real exec path in
//! tests/tests/credential_plugins.rs.)

use super::super::PluginCredential;
use super::*;
use crate::model::inventory::{
    KEY_DOCKERCFG, KEY_DOCKERCONFIGJSON, SecretObject, ServiceAccountObject,
};
use crate::model::pullset::{PullSetSpec, validate};
use base64::Engine as _;
use std::collections::BTreeMap;

fn dockerconfig(entries: &[(&str, &str, &str)]) -> Vec<u8> {
    let auths: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(k, u, p)| {
            let auth = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            (k.to_string(), serde_json::json!({ "auth": auth }))
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "auths": auths })).unwrap()
}

fn secret(name: &str, type_: &str, data_key: &str, bytes: Vec<u8>) -> SecretObject {
    SecretObject {
        key: ObjectKey::new("ns", name),
        type_: type_.into(),
        data: BTreeMap::from([(data_key.to_string(), bytes.into())]),
    }
}

fn json_secret(name: &str, entries: &[(&str, &str, &str)]) -> SecretObject {
    secret(
        name,
        TYPE_DOCKERCONFIGJSON,
        KEY_DOCKERCONFIGJSON,
        dockerconfig(entries),
    )
}

fn inventory() -> Inventory {
    let mut inv = Inventory::default();
    for s in [
        json_secret("good", &[("https://reg.io:5000", "alice", "pw1")]),
        json_secret("other-port", &[("reg.io", "bob", "pw2")]),
        secret(
            "opaque",
            "Opaque",
            KEY_DOCKERCONFIGJSON,
            dockerconfig(&[("reg.io:5000", "x", "y")]),
        ),
        secret(
            "broken",
            TYPE_DOCKERCONFIGJSON,
            KEY_DOCKERCONFIGJSON,
            b"{not json".to_vec(),
        ),
        secret(
            "bad-auth",
            TYPE_DOCKERCONFIGJSON,
            KEY_DOCKERCONFIGJSON,
            br#"{"auths":{"reg.io:5000":{"auth":"!!"}}}"#.to_vec(),
        ),
        secret(
            "empty",
            TYPE_DOCKERCONFIGJSON,
            KEY_DOCKERCONFIGJSON,
            Vec::new(),
        ),
        secret(
            "wrong-key",
            TYPE_DOCKERCONFIGJSON,
            KEY_DOCKERCFG,
            dockerconfig(&[("reg.io:5000", "x", "y")]),
        ),
        secret(
            "legacy",
            TYPE_DOCKERCFG,
            KEY_DOCKERCFG,
            br#"{"reg.io:5000":{"username":"carol","password":"pw3"}}"#.to_vec(),
        ),
        json_secret("hub", &[("https://index.docker.io/v1/", "dan", "pw4")]),
        json_secret("team", &[("reg.io:5000/team", "erin", "pw5")]),
        json_secret("teamz", &[("reg.io:5000/teamz", "frank", "pw6")]),
        json_secret("glob", &[("*.example.com", "gina", "pw7")]),
        json_secret("exact", &[("registry.example.com", "hank", "pw8")]),
        json_secret("same-key-again", &[("reg.io:5000", "ivan", "pw9")]),
        json_secret(
            "two-spellings",
            &[
                ("reg.io:5000", "judy", "pwA"),
                ("https://reg.io:5000/v2/", "kate", "pwB"),
            ],
        ),
        json_secret("bad-key", &[("reg.io:abc", "x", "y")]),
        json_secret("upper", &[("REG.io:5000", "x", "y")]),
    ] {
        inv.secrets.insert(s.key.clone(), s);
    }
    for (name, secrets) in [
        ("builder", vec!["good"]),
        ("default", vec!["legacy"]),
        ("empty-sa", vec![]),
    ] {
        inv.service_accounts.insert(
            ObjectKey::new("ns", name),
            ServiceAccountObject {
                key: ObjectKey::new("ns", name),
                image_pull_secrets: secrets.into_iter().map(String::from).collect(),
                ..Default::default()
            },
        );
    }
    inv
}

fn pullset(yaml: &str, image: &str) -> ValidPullSet {
    let spec: PullSetSpec =
        serde_yaml::from_str(&format!("{yaml}\nimages: [{{image: '{image}'}}]")).unwrap();
    validate(ObjectKey::new("ns", "set"), spec).unwrap()
}

fn resolve(resolver: &KubeletResolver, yaml: &str, image: &str) -> Resolution {
    let set = pullset(yaml, image);
    let image = ImageRef::parse(image).unwrap();
    futures::executor::block_on(resolver.resolve(&inventory(), &set, &image))
}

/// (pullset yaml, image, candidate users in order, finding verdicts, blocked)
type Case = (
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static [Verdict],
    bool,
);

#[test]
fn resolution_table() {
    use Verdict::*;
    let cases: &[Case] = &[
        (
            "imagePullSecrets: [{name: good}]",
            "reg.io:5000/a:1",
            &["alice"],
            &[],
            false,
        ),
        (
            "imagePullSecrets: [{name: legacy}]",
            "reg.io:5000/a:1",
            &["carol"],
            &[],
            false,
        ),
        // Every matching credential is a candidate: same key in two secrets, in listed order.
        (
            "imagePullSecrets: [{name: good}, {name: legacy}]",
            "reg.io:5000/a:1",
            &["alice", "carol"],
            &[],
            false,
        ),
        (
            "imagePullSecrets: [{name: legacy}, {name: good}]",
            "reg.io:5000/a:1",
            &["carol", "alice"],
            &[],
            false,
        ),
        // Two spellings of one key in one secret normalise to the same key: both, in key order.
        (
            "imagePullSecrets: [{name: two-spellings}]",
            "reg.io:5000/a:1",
            &["kate", "judy"],
            &[],
            false,
        ),
        // Specific paths first (reverse byte order), across secrets.
        (
            "imagePullSecrets: [{name: good}, {name: team}]",
            "reg.io:5000/team/a:1",
            &["erin", "alice"],
            &[],
            false,
        ),
        (
            "imagePullSecrets: [{name: team}, {name: teamz}]",
            "reg.io:5000/teamz/a:1",
            &["frank", "erin"],
            &[],
            false,
        ),
        (
            "imagePullSecrets: [{name: team}]",
            "reg.io:5000/other/a:1",
            &[],
            &[HostMismatch],
            false,
        ),
        // Globs match one label; exact sorts before glob.
        (
            "imagePullSecrets: [{name: glob}, {name: exact}]",
            "registry.example.com/a:1",
            &["hank", "gina"],
            &[],
            false,
        ),
        (
            "imagePullSecrets: [{name: glob}]",
            "a.b.example.com/a:1",
            &[],
            &[HostMismatch],
            false,
        ),
        // Skipped secrets are findings; the rest still count.
        (
            "imagePullSecrets: [{name: missing}, {name: good}]",
            "reg.io:5000/a:1",
            &["alice"],
            &[SecretNotFound],
            false,
        ),
        (
            "imagePullSecrets: [{name: opaque}]",
            "reg.io:5000/a:1",
            &[],
            &[SecretWrongType, NoCredentials],
            false,
        ),
        (
            "imagePullSecrets: [{name: empty}]",
            "reg.io:5000/a:1",
            &[],
            &[SecretMalformed, NoCredentials],
            false,
        ),
        (
            "imagePullSecrets: [{name: wrong-key}]",
            "reg.io:5000/a:1",
            &[],
            &[SecretMalformed, NoCredentials],
            false,
        ),
        // Unparseable secrets fail the pull outright, whatever else is listed.
        (
            "imagePullSecrets: [{name: good}, {name: broken}]",
            "reg.io:5000/a:1",
            &[],
            &[SecretMalformed],
            true,
        ),
        (
            "imagePullSecrets: [{name: bad-auth}, {name: good}]",
            "reg.io:5000/a:1",
            &[],
            &[SecretMalformed],
            true,
        ),
        // An unparseable key is ignored (and reported).
        (
            "imagePullSecrets: [{name: bad-key}, {name: good}]",
            "reg.io:5000/a:1",
            &["alice"],
            &[SecretMalformed],
            false,
        ),
        // Ports compared as strings.
        (
            "imagePullSecrets: [{name: other-port}]",
            "reg.io:5000/a:1",
            &[],
            &[HostMismatch],
            false,
        ),
        (
            "imagePullSecrets: [{name: good}]",
            "reg.io/a:1",
            &[],
            &[HostMismatch],
            false,
        ),
        (
            "imagePullSecrets: [{name: upper}]",
            "reg.io:5000/a:1",
            &[],
            &[HostMismatch],
            false,
        ),
        (
            "imagePullSecrets: [{name: good}]",
            "elsewhere.io/a:1",
            &[],
            &[NoCredentials],
            false,
        ),
        // Docker Hub through the index.docker.io fallback.
        (
            "imagePullSecrets: [{name: hub}]",
            "nginx:1",
            &["dan"],
            &[],
            false,
        ),
        (
            "imagePullSecrets: [{name: hub}]",
            "docker.io/bitnami/redis:7",
            &["dan"],
            &[],
            false,
        ),
        (
            "imagePullSecrets: [{name: hub}]",
            "quay.io/a/b:1",
            &[],
            &[NoCredentials],
            false,
        ),
        // The ServiceAccount's secrets apply only when the set lists none; never merged.
        (
            "serviceAccountName: builder",
            "reg.io:5000/a:1",
            &["alice"],
            &[],
            false,
        ),
        (
            "serviceAccountName: builder\nimagePullSecrets: [{name: legacy}]",
            "reg.io:5000/a:1",
            &["carol"],
            &[],
            false,
        ),
        (
            "serviceAccountName: empty-sa",
            "reg.io:5000/a:1",
            &[],
            &[NoCredentials],
            false,
        ),
        (
            "serviceAccountName: ghost",
            "reg.io:5000/a:1",
            &[],
            &[ServiceAccountNotFound, NoCredentials],
            false,
        ),
        // No SA named: the `default` SA.
        ("gate: true", "reg.io:5000/a:1", &["carol"], &[], false),
    ];
    let resolver = KubeletResolver::default();
    for (yaml, image, users, findings, blocked) in cases {
        let r = resolve(&resolver, yaml, image);
        let got: Vec<&str> = r.candidates.iter().map(|c| c.username.as_str()).collect();
        assert_eq!(got, *users, "{yaml} {image}: {:?}", r.findings);
        let got: Vec<Verdict> = r.findings.iter().map(|f| f.verdict).collect();
        assert_eq!(got, *findings, "{yaml} {image}: {:?}", r.findings);
        assert_eq!(r.blocked.is_some(), *blocked, "{yaml} {image}");
        let rendered = format!("{r:?}");
        for pw in [
            "pw1", "pw2", "pw3", "pw4", "pw5", "pw6", "pw7", "pw8", "pw9", "pwA", "pwB",
        ] {
            assert!(!rendered.contains(pw), "{rendered}");
        }
    }
}

#[test]
fn findings_name_the_secret_key_and_reason() {
    let resolver = KubeletResolver::default();
    let r = resolve(
        &resolver,
        "imagePullSecrets: [{name: other-port}]",
        "reg.io:5000/a:1",
    );
    assert_eq!(
        r.findings[0].message,
        "no credential key matches registry `reg.io:5000` of reg.io:5000/a; near miss: `reg.io` in secret ns/other-port (the key has no port; the image's registry has one)"
    );
    let r = resolve(
        &resolver,
        "imagePullSecrets: [{name: bad-auth}]",
        "reg.io:5000/a:1",
    );
    let blocked = r.blocked.unwrap();
    assert!(
        blocked.message.contains("ns/bad-auth") && blocked.message.contains("`reg.io:5000`"),
        "{}",
        blocked.message
    );
    let r = resolve(
        &resolver,
        "imagePullSecrets: [{name: good}]",
        "reg.io:5000/a:1",
    );
    assert_eq!(
        r.candidates[0].source.to_string(),
        "secret ns/good key https://reg.io:5000"
    );
}

/// The node's Docker config as the file adapter gives it: parsed from its current bytes (`None`:
/// the file is missing).
struct NodeFile {
    path: std::path::PathBuf,
    bytes: std::sync::Mutex<Option<Vec<u8>>>,
}

impl NodeFile {
    fn set(&self, bytes: Option<&[u8]>) {
        *self.bytes.lock().unwrap() = bytes.map(<[u8]>::to_vec);
    }
}

impl NodeDockerConfig for NodeFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn entries(&self) -> ParsedFile {
        Arc::new(match self.bytes.lock().unwrap().as_deref() {
            Some(bytes) => parse_docker_config_file(&self.path, bytes),
            None => Err(format!("cannot read {}: not found", self.path.display())),
        })
    }
}

#[test]
fn node_config_comes_after_pull_secrets() {
    let file = Arc::new(NodeFile {
        path: "/etc/pullgate/config.json".into(),
        bytes: std::sync::Mutex::new(Some(dockerconfig(&[
            ("reg.io:5000", "node", "pwN"),
            ("reg.io:5000/team", "node-team", "pwM"),
        ]))),
    });
    let resolver = KubeletResolver::new(Some(file.clone()), None);
    let r = resolve(
        &resolver,
        "imagePullSecrets: [{name: good}]",
        "reg.io:5000/team/a:1",
    );
    let got: Vec<&str> = r.candidates.iter().map(|c| c.username.as_str()).collect();
    // Pull secrets first, whatever the specificity of the node's keys.
    assert_eq!(got, ["alice", "node-team", "node"]);
    assert_eq!(
        r.candidates[1].source.to_string(),
        "file /etc/pullgate/config.json key reg.io:5000/team"
    );
    // A legacy bare map is read too, and edits are picked up.
    file.set(Some(
        br#"{"reg.io:5000":{"username":"legacy-node","password":"p"}}"#,
    ));
    let r = resolve(&resolver, "serviceAccountName: empty-sa", "reg.io:5000/a:1");
    assert_eq!(
        r.candidates
            .iter()
            .map(|c| c.username.as_str())
            .collect::<Vec<_>>(),
        ["legacy-node"]
    );
    // A missing file is no credential, not an error.
    file.set(None);
    let r = resolve(&resolver, "serviceAccountName: empty-sa", "reg.io:5000/a:1");
    assert!(r.candidates.is_empty());
}

#[test]
fn expiry_is_read_from_the_credential() {
    let jwt = format!(
        "x.{}.y",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"exp":1900000000}"#)
    );
    let mut inv = inventory();
    let s = json_secret("jwt", &[("reg.io:5000", "oauth2accesstoken", &jwt)]);
    inv.secrets.insert(s.key.clone(), s);
    let set = pullset("imagePullSecrets: [{name: jwt}]", "reg.io:5000/a:1");
    let image = ImageRef::parse("reg.io:5000/a:1").unwrap();
    let r = futures::executor::block_on(KubeletResolver::default().resolve(&inv, &set, &image));
    assert_eq!(
        r.candidates[0].expires_at,
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_900_000_000))
    );
}

/// Plugins answering from a table, for the secret-set tests.
struct FixedPlugins(Vec<PluginCredential>);

impl CredentialPlugins for FixedPlugins {
    fn credentials<'a>(
        &'a self,
        _: &'a str,
        _: &'a super::super::PodServiceAccount,
    ) -> BoxFuture<'a, super::super::PluginAnswer> {
        Box::pin(async move {
            super::super::PluginAnswer {
                credentials: self.0.clone(),
                ..Default::default()
            }
        })
    }
}

/// A key with userinfo (`https://user:TOKEN@reg.io`), in a pull secret, the node's file and a
/// plugin's answer: it matches as the kubelet matches it (the host), its label and every finding
/// show it without the userinfo, and a note (verdict `Ok`) says that the key carries some.
#[test]
fn keys_with_userinfo_are_shown_without_it() {
    let token = "tok-Userinfo-9c8b7a";
    let key = format!("https://robot:{token}@reg.io:5000");
    let mut inventory = inventory();
    let s = json_secret("userinfo", &[(key.as_str(), "alice", "pw1")]);
    inventory.secrets.insert(s.key.clone(), s);
    let file = Arc::new(NodeFile {
        path: "/etc/pullgate/config.json".into(),
        bytes: std::sync::Mutex::new(Some(dockerconfig(&[(key.as_str(), "node", "pwN")]))),
    });
    let plugins = Arc::new(FixedPlugins(vec![PluginCredential {
        provider: "ecr".into(),
        key: format!("{token}@reg.io:5000"),
        username: "AWS".into(),
        password: SecretString::from("plugin-Token-5e4d3c"),
        tokens: vec![],
    }]));
    let resolver = KubeletResolver::new(Some(file), Some(plugins));
    let set = pullset("imagePullSecrets: [{name: userinfo}]", "reg.io:5000/a:1");
    let image = ImageRef::parse("reg.io:5000/a:1").unwrap();
    let r = futures::executor::block_on(resolver.resolve(&inventory, &set, &image));
    let labels: Vec<String> = r.candidates.iter().map(|c| c.source.to_string()).collect();
    assert_eq!(
        labels,
        [
            "secret ns/userinfo key https://reg.io:5000",
            "file /etc/pullgate/config.json key https://reg.io:5000",
            "plugin ecr key reg.io:5000",
        ]
    );
    let notes: Vec<&Finding> = r.findings.iter().collect();
    assert_eq!(notes.len(), 3, "{notes:?}");
    for note in &notes {
        assert_eq!(note.verdict, Verdict::Ok, "{note:?}");
        assert!(note.message.contains("carries userinfo"), "{note:?}");
    }
    assert!(
        notes[0]
            .message
            .contains("`https://reg.io:5000` in secret ns/userinfo")
    );
    // Nothing shows the token: labels, findings, the explanation of a failure.
    let (_, explained) = r.explain_failure(Verdict::Unauthorized, "401");
    let shown = format!("{labels:?} {:?} {explained}", r.findings);
    assert!(!shown.contains(token), "{shown}");
    // The plugin's token is the candidate's password: in its secret set, scrubbed.
    let plugin = &r.candidates[2];
    let message =
        crate::decide::secret_scrub::scrub("registry echoed plugin-Token-5e4d3c", plugin.secrets());
    assert_eq!(message, "registry echoed [REDACTED]");
}

/// An entry's `identitytoken` and `registrytoken` are never sent, but are in its candidate's
/// secret set, so a message that quotes them is scrubbed.
#[test]
fn identity_and_registry_tokens_are_in_the_secret_set() {
    let mut inventory = inventory();
    let s = secret(
        "tokens",
        TYPE_DOCKERCONFIGJSON,
        KEY_DOCKERCONFIGJSON,
        br#"{"auths":{"reg.io:5000":{"username":"u","password":"pw-Tokens-1","identitytoken":"idtok-Secret-77","registrytoken":"regtok-Secret-88"}}}"#.to_vec(),
    );
    inventory.secrets.insert(s.key.clone(), s);
    let set = pullset("imagePullSecrets: [{name: tokens}]", "reg.io:5000/a:1");
    let image = ImageRef::parse("reg.io:5000/a:1").unwrap();
    let r =
        futures::executor::block_on(KubeletResolver::default().resolve(&inventory, &set, &image));
    let c = &r.candidates[0];
    let message = format!(
        "echo pw-Tokens-1 idtok-Secret-77 regtok-Secret-88 {}",
        base64::engine::general_purpose::STANDARD.encode("u:pw-Tokens-1")
    );
    assert_eq!(
        crate::decide::secret_scrub::scrub(&message, c.secrets()),
        "echo [REDACTED] [REDACTED] [REDACTED] dTp[REDACTED]Q=="
    );
}

/// Plugins that record the ServiceAccount each pull runs as, answer with a credential carrying
/// the ServiceAccount token they were given, and a note.
struct RecordingPlugins(std::sync::Mutex<Vec<super::super::PodServiceAccount>>);

impl CredentialPlugins for RecordingPlugins {
    fn credentials<'a>(
        &'a self,
        _: &'a str,
        service_account: &'a super::super::PodServiceAccount,
    ) -> BoxFuture<'a, super::super::PluginAnswer> {
        self.0.lock().unwrap().push(service_account.clone());
        Box::pin(async move {
            super::super::PluginAnswer {
                credentials: vec![PluginCredential {
                    provider: "sa-provider".into(),
                    key: "reg.io:5000".into(),
                    username: "u".into(),
                    password: SecretString::from("exchanged-Credential-1"),
                    tokens: vec![SecretString::from("sa-Token-Given-1")],
                }],
                notes: vec![Finding {
                    verdict: Verdict::NoCredentials,
                    message: "credential provider other not invoked: ServiceAccount ns/builder has no annotation `a/b`".into(),
                }],
                ..Default::default()
            }
        })
    }
}

/// The plugins get the pod rule's ServiceAccount (the PullSet's, else `default`) even when the
/// PullSet's own `imagePullSecrets` make the pod rule not read its secrets; one the inventory does
/// not hold is `Unavailable`, naming why. The token given to a plugin is in its candidate's secret
/// set, and the plugins' notes are findings.
#[test]
fn plugins_get_the_pod_rules_service_account() {
    use super::super::PodServiceAccount;
    let plugins = Arc::new(RecordingPlugins(std::sync::Mutex::default()));
    let resolver = KubeletResolver::new(None, Some(plugins.clone()));
    let mut inventory = inventory();
    inventory
        .service_accounts
        .get_mut(&ObjectKey::new("ns", "builder"))
        .unwrap()
        .annotations
        .insert("example.io/id".into(), "123".into());
    inventory
        .forbidden
        .insert(ObjectKey::new("ns", "locked"), "403 Forbidden".into());
    let image = ImageRef::parse("reg.io:5000/a:1").unwrap();
    for yaml in [
        "serviceAccountName: builder",
        "serviceAccountName: builder\nimagePullSecrets: [{name: good}]",
        "",
        "serviceAccountName: ghost",
        "serviceAccountName: locked",
    ] {
        let set = pullset(yaml, "reg.io:5000/a:1");
        let r = futures::executor::block_on(resolver.resolve(&inventory, &set, &image));
        let plugin = r
            .candidates
            .iter()
            .find(|c| c.source.origin() == "plugin sa-provider")
            .unwrap();
        assert_eq!(
            crate::decide::secret_scrub::scrub("plugin said sa-Token-Given-1", plugin.secrets()),
            "plugin said [REDACTED]"
        );
        assert!(
            r.findings
                .iter()
                .any(|f| f.message.contains("has no annotation `a/b`")),
            "{:?}",
            r.findings
        );
    }
    let seen = plugins.0.lock().unwrap().clone();
    let describe: Vec<String> = seen
        .iter()
        .map(|sa| match sa {
            PodServiceAccount::Found(sa) => format!("found {} {:?}", sa.key, sa.annotations),
            PodServiceAccount::Unavailable { key, why } => format!("unavailable {key} {why}"),
            PodServiceAccount::None => "none".into(),
        })
        .collect();
    assert_eq!(
        describe,
        [
            r#"found ns/builder {"example.io/id": "123"}"#,
            r#"found ns/builder {"example.io/id": "123"}"#,
            "found ns/default {}",
            "unavailable ns/ghost does not exist",
            "unavailable ns/locked cannot be read: 403 Forbidden",
        ]
    );
}
