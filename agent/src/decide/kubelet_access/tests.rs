use super::*;
use KubeletAccess::{AnyPod, Unknown, VerifiedPerCredential};

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The kubelet's own table (`image_pull_policies_test.go`), plus its texts.
#[test]
fn allowlist_validation_table() {
    for (pattern, error) in [
        (
            "image.repo/pokus*/imagename",
            Some(
                "not a valid wildcard pattern, only patterns ending with '/*' are allowed: image.repo/pokus*/imagename",
            ),
        ),
        (
            "image.repo/pokus*",
            Some(
                "not a valid wildcard pattern, only patterns ending with '/*' are allowed: image.repo/pokus*",
            ),
        ),
        (
            "image.repo/*/imagename",
            Some(
                "not a valid wildcard pattern, only patterns ending with '/*' are allowed: image.repo/*/imagename",
            ),
        ),
        ("/*", Some("at least registry hostname is required")),
        ("image.repo/", Some("failed to parse as an image name")),
        ("", Some("the supplied pattern is too short: ")),
        (
            "*",
            Some("not a valid wildcard pattern, only patterns ending with '/*' are allowed: *"),
        ),
        (
            "test.io/test/image1:tagged",
            Some(
                "neither tag nor digest is accepted in an image reference: test.io/test/image1:tagged",
            ),
        ),
        (
            "test.io/test/image1@sha256:38a8906435c4dd5f4258899d46621bfd8eea3ad6ff494ee3c2f17ef0321625bd",
            Some("neither tag nor digest is accepted"),
        ),
        (
            "test.io/test/image1 ",
            Some("leading/trailing spaces are not allowed: test.io/test/image1 "),
        ),
        (
            " test.io/*",
            Some("leading/trailing spaces are not allowed"),
        ),
        ("test.io/test/image1", None),
        ("test.io/*", None),
        ("test.io/test/*", None),
        ("ubuntu", None),
        ("localhost:5000/team/app", None),
    ] {
        let got = Allowlist::parse(&strings(&[pattern]));
        match error {
            None => assert!(got.is_ok(), "{pattern:?}: {got:?}"),
            Some(text) => {
                let e = got.expect_err(pattern).to_string();
                assert!(
                    e.starts_with(text),
                    "{pattern:?}: {e:?} does not start with {text:?}"
                );
            }
        }
    }
}

/// The kubelet's matching (a pod's image as written): exact names without tag and digest,
/// prefixes by path segment.
#[test]
fn allowlist_matching_table() {
    let list = |l: &[&str]| Allowlist::parse(&strings(l)).unwrap();
    for (allow, image, expected) in [
        (
            &["test.io/test/test-image"][..],
            "test.io/test/test-image:tag",
            true,
        ),
        (
            &["test.io/test/image1", "test.io/test/image2"],
            "test.io/test/test-image:tag",
            false,
        ),
        (
            &["different.repo/test/*"],
            "test.io/test/test-image:tag",
            false,
        ),
        (&["test.io/test/*"], "test.io/test/test-image:tag", true),
        (&["test.io/*"], "test.io/test/test-image:tag", true),
        // A prefix is a whole path segment: `test.io/te/*` is not `test.io/test/…`.
        (&["test.io/te/*"], "test.io/test/test-image:tag", false),
        (&["docker.io/library/ubuntu"], "ubuntu", false),
        (&["docker.io/library/*"], "ubuntu", false),
        (&["ubuntu"], "ubuntu", true),
        (&["ubuntu"], "ubuntu:tagged", true),
        (
            &["ubuntu"],
            "ubuntu@sha256:38a8906435c4dd5f4258899d46621bfd8eea3ad6ff494ee3c2f17ef0321625bd",
            true,
        ),
        (
            &["localhost:5000/myimage"],
            "localhost:5000/myimage:v1",
            true,
        ),
        (
            &["localhost:5000/myimage"],
            "localhost:5000/myimage2:v1",
            false,
        ),
    ] {
        assert_eq!(
            list(allow).matches_written(image),
            expected,
            "{allow:?} {image}"
        );
    }
}

#[test]
fn trimming_tag_and_digest_as_the_kubelet() {
    for (image, trimmed) in [
        ("myimage", "myimage"),
        ("myimage:latest", "myimage"),
        ("myimage:v1@sha256:38a8", "myimage"),
        (
            "registry.io/myorg/myimage:v2@sha256:38a8",
            "registry.io/myorg/myimage",
        ),
        ("localhost:5000/myimage:v1", "localhost:5000/myimage"),
        ("localhost:5000/myimage", "localhost:5000/myimage"),
        ("docker.io/taghere/image:taghere", "docker.io/taghere/image"),
    ] {
        assert_eq!(trim_tag_digest(image), trimmed, "{image}");
    }
}

/// A PullSet's image, normalised, matches when a pod could write it so.
#[test]
fn a_pullset_image_matches_in_any_spelling_a_pod_may_use() {
    let image = |s: &str| ImageRef::parse(s).unwrap();
    let list = |l: &[&str]| Allowlist::parse(&strings(l)).unwrap();
    assert!(list(&["nginx"]).matches(&image("nginx:1.27")));
    assert!(list(&["docker.io/library/nginx"]).matches(&image("nginx:1.27")));
    assert!(list(&["library/nginx"]).matches(&image("docker.io/library/nginx:1")));
    assert!(list(&["127.0.0.1:5000/team/*"]).matches(&image("127.0.0.1:5000/team/app:v1")));
    assert!(!list(&["127.0.0.1:5000/other/*"]).matches(&image("127.0.0.1:5000/team/app:v1")));
    assert!(!list(&["nginx"]).matches(&image("registry.example.com/nginx:1")));
}

#[test]
fn the_file_is_validated_as_the_kubelet_validates_it() {
    let none: &[String] = &[];
    assert_eq!(
        KubeletPolicy::new(None, none, None).unwrap().policy,
        VerificationPolicy::NeverVerifyPreloadedImages
    );
    assert_eq!(
        KubeletPolicy::new(Some("Sometimes"), none, None)
            .unwrap_err()
            .to_string(),
        "unknown image pull credential verification policy: Sometimes"
    );
    let e = KubeletPolicy::new(Some("AlwaysVerify"), &strings(&["r.io/a"]), None).unwrap_err();
    assert!(
        e.to_string()
            .contains("imagePullCredentialsVerificationPolicy is AlwaysVerify"),
        "{e}"
    );
    let e = KubeletPolicy::new(
        Some("NeverVerifyAllowlistedImages"),
        &strings(&["r.io/"]),
        None,
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("failed to parse"), "{e}");
}

#[test]
fn versions_and_the_gate_default() {
    for (text, expected) in [
        ("v1.35.2", Some((1, 35, true))),
        ("v1.34.0-eks-1234", Some((1, 34, false))),
        ("1.33.1", Some((1, 33, false))),
        ("v1.36.0+k3s1", Some((1, 36, true))),
        ("v1.32.9", Some((1, 32, false))),
        ("v2.0.0", Some((2, 0, true))),
        ("latest", None),
        ("v1", None),
        ("", None),
    ] {
        let got = KubeletVersion::parse(text).map(|v| (v.major, v.minor, v.gate_default()));
        assert_eq!(got, expected, "{text}");
    }
}

/// Policy × gate (file, version) × allowlist × private: the access and whether it warns.
#[test]
fn decision_table() {
    let image = ImageRef::parse("127.0.0.1:5000/team/app:v1").unwrap();
    let v = |s: &str| KubeletVersion::parse(s);
    let policy = |p: &str, allow: &[&str], gate: Option<bool>| {
        KubeletPolicy::new(Some(p), &strings(allow), gate).unwrap()
    };
    let covering = ["127.0.0.1:5000/team/*"];
    let other = ["127.0.0.1:5000/other/*"];
    for (row, p, version, private, access, warns) in [
        ("no config", None, v("v1.35.0"), true, Unknown, false),
        (
            "default policy, gate on by version",
            Some(policy("NeverVerifyPreloadedImages", &[], None)),
            v("v1.35.0"),
            true,
            AnyPod,
            true,
        ),
        (
            "default policy, version unknown: AnyPod either way",
            Some(policy("NeverVerifyPreloadedImages", &[], None)),
            None,
            true,
            AnyPod,
            true,
        ),
        (
            "public image: AnyPod, no warning",
            Some(policy("NeverVerifyPreloadedImages", &[], None)),
            v("v1.35.0"),
            false,
            AnyPod,
            false,
        ),
        (
            "NeverVerify",
            Some(policy("NeverVerify", &[], Some(true))),
            None,
            true,
            AnyPod,
            true,
        ),
        (
            "AlwaysVerify, gate on by version",
            Some(policy("AlwaysVerify", &[], None)),
            v("v1.35.1"),
            true,
            VerifiedPerCredential,
            false,
        ),
        (
            "AlwaysVerify, gate on in the file",
            Some(policy("AlwaysVerify", &[], Some(true))),
            v("v1.33.0"),
            true,
            VerifiedPerCredential,
            false,
        ),
        (
            "AlwaysVerify, 1.34: gate off by default",
            Some(policy("AlwaysVerify", &[], None)),
            v("v1.34.3"),
            true,
            AnyPod,
            true,
        ),
        (
            "AlwaysVerify, gate off in the file",
            Some(policy("AlwaysVerify", &[], Some(false))),
            v("v1.36.0"),
            true,
            AnyPod,
            true,
        ),
        (
            "AlwaysVerify, version unknown",
            Some(policy("AlwaysVerify", &[], None)),
            None,
            true,
            Unknown,
            false,
        ),
        (
            "allowlisted",
            Some(policy("NeverVerifyAllowlistedImages", &covering, None)),
            v("v1.35.0"),
            true,
            AnyPod,
            true,
        ),
        (
            "not allowlisted",
            Some(policy("NeverVerifyAllowlistedImages", &other, None)),
            v("v1.35.0"),
            true,
            VerifiedPerCredential,
            false,
        ),
        (
            "not allowlisted, version unknown",
            Some(policy("NeverVerifyAllowlistedImages", &other, None)),
            None,
            true,
            Unknown,
            false,
        ),
        (
            "allowlisted public image",
            Some(policy("NeverVerifyAllowlistedImages", &covering, None)),
            v("v1.35.0"),
            false,
            AnyPod,
            false,
        ),
    ] {
        let d = decide(p.as_ref(), version, &image, private);
        assert_eq!(
            (d.access, d.warning.is_some()),
            (access, warns),
            "{row}: {:?}",
            d.warning
        );
    }
}

/// The warning names the image, the setting that exposes it and the one that would change it.
#[test]
fn warnings_name_the_policy_that_would_change_it() {
    let image = ImageRef::parse("127.0.0.1:5000/team/app:v1").unwrap();
    let v135 = KubeletVersion::parse("v1.35.0");
    let warning = |p: KubeletPolicy, v| decide(Some(&p), v, &image, true).warning.unwrap();
    let w = warning(KubeletPolicy::new(None, &[], None).unwrap(), v135);
    assert!(
        w.starts_with("127.0.0.1:5000/team/app:v1 was pre-pulled with a credential"),
        "{w}"
    );
    assert!(
        w.contains("imagePullCredentialsVerificationPolicy is NeverVerifyPreloadedImages"),
        "{w}"
    );
    assert!(
        w.contains("set imagePullCredentialsVerificationPolicy: AlwaysVerify"),
        "{w}"
    );

    let w = warning(
        KubeletPolicy::new(Some("AlwaysVerify"), &[], None).unwrap(),
        KubeletVersion::parse("v1.34.2"),
    );
    assert!(
        w.contains("KubeletEnsureSecretPulledImages is off (the default of kubelet 1.34)"),
        "{w}"
    );
    assert!(
        w.contains("turn the feature gate KubeletEnsureSecretPulledImages on"),
        "{w}"
    );
    assert!(
        !w.contains("set imagePullCredentialsVerificationPolicy"),
        "{w}"
    );

    let w = warning(
        KubeletPolicy::new(
            Some("NeverVerifyAllowlistedImages"),
            &strings(&["127.0.0.1:5000/team/app"]),
            None,
        )
        .unwrap(),
        v135,
    );
    assert!(
        w.contains("matches the kubelet's preloadedImagesVerificationAllowlist"),
        "{w}"
    );
    assert!(
        w.contains("remove it from preloadedImagesVerificationAllowlist"),
        "{w}"
    );
}

#[test]
fn the_condition_note_lists_three_and_counts_the_rest() {
    let p = KubeletPolicy::new(None, &[], None).unwrap();
    assert_eq!(condition_note(&BTreeSet::new(), Some(&p)), "");
    let exposed: BTreeSet<String> = ["r/a:1", "r/b:1", "r/c:1", "r/d:1"]
        .into_iter()
        .map(String::from)
        .collect();
    let note = condition_note(&exposed, Some(&p));
    assert!(note.contains("NeverVerifyPreloadedImages"), "{note}");
    assert!(note.ends_with(": r/a:1, r/b:1, r/c:1 and 1 more"), "{note}");
}

#[test]
fn records_are_annotated_with_the_node_version_first() {
    use crate::model::outcome::Action;
    use crate::model::verdict::Verdict;
    let mut o = crate::decide::event_policy::tests::prepull(Action::Pulled, Verdict::Ok);
    o.image = "127.0.0.1:5000/team/app:v1".into();
    o.credential = Some("secret team/regcred key 127.0.0.1:5000".into());
    let view = KubeletView {
        policy: Some(KubeletPolicy::new(Some("AlwaysVerify"), &[], None).unwrap()),
        flag_version: KubeletVersion::parse("v1.34.0"),
    };
    view.annotate(&mut o, None);
    assert_eq!(o.kubelet_access, AnyPod);
    assert!(o.kubelet_access_warning.is_some());
    view.annotate(&mut o, Some("v1.35.0"));
    assert_eq!(
        (o.kubelet_access, o.kubelet_access_warning.as_deref()),
        (VerifiedPerCredential, None)
    );
    // Anonymous and failed pre-pulls warn of nothing.
    let view = KubeletView {
        policy: Some(KubeletPolicy::new(None, &[], None).unwrap()),
        flag_version: None,
    };
    o.credential = Some("anonymous".into());
    view.annotate(&mut o, None);
    assert_eq!(
        (o.kubelet_access, o.kubelet_access_warning.as_deref()),
        (AnyPod, None)
    );
    o.credential = Some("secret team/regcred key r".into());
    o.verdict = Verdict::Unauthorized;
    view.annotate(&mut o, None);
    assert_eq!(o.kubelet_access_warning, None);
    KubeletView::default().annotate(&mut o, None);
    assert_eq!(o.kubelet_access, Unknown);
}
