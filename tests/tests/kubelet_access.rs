//! The kubelet's verification of pre-pulled images (KEP-2535): `pullgate run --kubelet-config`
//! pre-pulls a private image from the test registry into the real containerd and says, on every
//! `prepull` record, who may start it — for each policy of the kubelet's configuration file, with
//! the warning when any pod may start a privately pulled image, and `Unknown` (with a warning
//! naming file and field) when the file cannot be used.

use pullgate_testenv::{ImageSpec, PASSWORD, TestEnv};
use serde_json::Value;
use std::time::Duration;

const ONCE: Duration = Duration::from_secs(120);

const HEAD: &str = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n";

struct Case<'a> {
    name: &'a str,
    /// The kubelet configuration file's text (`None`: no `--kubelet-config`).
    file: Option<String>,
    version: Option<&'a str>,
    access: &'a str,
    /// A text the warning (record, log) holds; `None`: no warning.
    warning: Option<&'a str>,
}

#[test]
fn each_policy_gives_its_kubelet_access() {
    let env = TestEnv::started();
    let image = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    env.write_regcred("team").unwrap();
    env.write_pullset("team", "critical", &[&image.by_tag], &["regcred"])
        .unwrap();
    let host = env.registry.host();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        Case {
            name: "no --kubelet-config",
            file: None,
            version: Some("v1.35.0"),
            access: "Unknown",
            warning: None,
        },
        Case {
            name: "the default policy, NeverVerifyPreloadedImages",
            file: Some(HEAD.to_string()),
            version: None,
            access: "AnyPod",
            warning: Some(
                "any pod on this node can start it without one: the kubelet's imagePullCredentialsVerificationPolicy is NeverVerifyPreloadedImages",
            ),
        },
        Case {
            name: "AlwaysVerify on a 1.35 kubelet",
            file: Some(format!(
                "{HEAD}imagePullCredentialsVerificationPolicy: AlwaysVerify\n"
            )),
            version: Some("v1.35.0"),
            access: "VerifiedPerCredential",
            warning: None,
        },
        Case {
            name: "AlwaysVerify on a 1.34 kubelet, whose gate is off by default",
            file: Some(format!(
                "{HEAD}imagePullCredentialsVerificationPolicy: AlwaysVerify\n"
            )),
            version: Some("v1.34.2"),
            access: "AnyPod",
            warning: Some("KubeletEnsureSecretPulledImages is off (the default of kubelet 1.34)"),
        },
        Case {
            name: "AlwaysVerify, gate on in the file (JSON), version unknown",
            file: Some(
                r#"{"apiVersion":"kubelet.config.k8s.io/v1beta1","kind":"KubeletConfiguration","imagePullCredentialsVerificationPolicy":"AlwaysVerify","featureGates":{"KubeletEnsureSecretPulledImages":true}}"#
                    .to_string(),
            ),
            version: None,
            access: "VerifiedPerCredential",
            warning: None,
        },
        Case {
            name: "AlwaysVerify, version unknown: the gate's default matters",
            file: Some(format!(
                "{HEAD}imagePullCredentialsVerificationPolicy: AlwaysVerify\n"
            )),
            version: None,
            access: "Unknown",
            warning: None,
        },
        Case {
            name: "allowlisted",
            file: Some(format!(
                "{HEAD}imagePullCredentialsVerificationPolicy: NeverVerifyAllowlistedImages\npreloadedImagesVerificationAllowlist: [\"{host}/team/*\"]\n"
            )),
            version: Some("v1.36.1"),
            access: "AnyPod",
            warning: Some("remove it from preloadedImagesVerificationAllowlist"),
        },
        Case {
            name: "not allowlisted",
            file: Some(format!(
                "{HEAD}imagePullCredentialsVerificationPolicy: NeverVerifyAllowlistedImages\npreloadedImagesVerificationAllowlist: [\"{host}/other/*\"]\n"
            )),
            version: Some("v1.36.1"),
            access: "VerifiedPerCredential",
            warning: None,
        },
    ];
    let mut outputs = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let mut args = Vec::new();
        let path = dir.path().join(format!("config-{n}.yaml"));
        if let Some(text) = &case.file {
            std::fs::write(&path, text).unwrap();
            args.extend(["--kubelet-config".to_string(), path.display().to_string()]);
        }
        if let Some(v) = case.version {
            args.extend(["--kubelet-version".to_string(), v.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = env.agent().args(&args).run_once(ONCE).unwrap();
        run.assert_code(0);
        let record = run.prepull(&image.by_tag);
        assert_eq!(record["verdict"], "Ok", "{}: {record}", case.name);
        assert_eq!(
            record["kubelet_access"], case.access,
            "{}: {record}\nstderr:\n{}",
            case.name, run.stderr
        );
        let warning = record["kubelet_access_warning"].as_str();
        match case.warning {
            None => {
                assert_eq!(warning, None, "{}: {record}", case.name);
                assert!(
                    !run.stderr.contains("was pre-pulled with a credential"),
                    "{}: {}",
                    case.name,
                    run.stderr
                );
            }
            Some(text) => {
                let warning =
                    warning.unwrap_or_else(|| panic!("{}: no warning in {record}", case.name));
                assert!(warning.contains(text), "{}: {warning}", case.name);
                assert!(
                    warning.starts_with(&format!(
                        "{} was pre-pulled with a credential",
                        image.by_tag
                    )),
                    "{warning}"
                );
                // At start-up in the log, and in CriticalImagesReady's message.
                assert!(
                    run.stderr.contains(text),
                    "{}: not in the log:\n{}",
                    case.name,
                    run.stderr
                );
                let condition = condition(&run.lines, "CriticalImagesReady");
                let message = condition["message"].as_str().unwrap_or_default();
                assert!(
                    message.contains("any pod on this node can start these privately pre-pulled images without credentials")
                        && message.contains(&image.by_tag),
                    "{}: {condition}",
                    case.name
                );
            }
        }
        outputs.push(run.stdout);
        outputs.push(run.stderr);
    }
    let outputs: Vec<&str> = outputs.iter().map(String::as_str).collect();
    env.assert_no_leak(&outputs, &[PASSWORD]);
}

/// A file that cannot be used: a warning naming file and field, every record `Unknown`, and the
/// agent runs on.
#[test]
fn an_unusable_kubelet_config_is_a_warning_and_unknown() {
    let env = TestEnv::started();
    let image = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    env.write_regcred("team").unwrap();
    env.write_pullset("team", "critical", &[&image.by_tag], &["regcred"])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.yaml");
    let cases = [
        (
            format!("{HEAD}imagePullCredentialsVerificationPolicy: Sometimes\n"),
            "field imagePullCredentialsVerificationPolicy: unknown image pull credential verification policy: Sometimes",
        ),
        (
            format!(
                "{HEAD}imagePullCredentialsVerificationPolicy: NeverVerifyAllowlistedImages\npreloadedImagesVerificationAllowlist: [\"r.example.com/*/app\"]\n"
            ),
            "field preloadedImagesVerificationAllowlist: not a valid wildcard pattern, only patterns ending with '/*' are allowed: r.example.com/*/app",
        ),
        ("kind: [unclosed".to_string(), "neither YAML nor JSON"),
    ];
    let mut files: Vec<(std::path::PathBuf, &str)> = vec![(missing.clone(), "cannot read it")];
    for (n, (text, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{n}.yaml"));
        std::fs::write(&path, text).unwrap();
        files.push((path, expected));
    }
    for (path, expected) in files {
        let path = path.display().to_string();
        let run = env
            .agent()
            .args(&["--kubelet-config", &path, "--kubelet-version", "v1.35.0"])
            .run_once(ONCE)
            .unwrap();
        run.assert_code(0);
        let record = run.prepull(&image.by_tag);
        assert_eq!(record["verdict"], "Ok", "{record}");
        assert_eq!(record["kubelet_access"], "Unknown", "{record}");
        let warned = run
            .stderr
            .lines()
            .find(|l| l.contains("kubelet_access is Unknown for every pre-pull"))
            .unwrap_or_else(|| panic!("no warning for {path}:\n{}", run.stderr));
        assert!(
            warned.contains(&format!("kubelet configuration {path}")) && warned.contains(expected),
            "{expected:?} not in {warned}"
        );
    }
}

fn condition<'a>(lines: &'a [Value], type_: &str) -> &'a Value {
    lines
        .iter()
        .rev()
        .find(|l| l["kind"] == "condition" && l["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {lines:?}"))
}
