//! Pinned images (`spec.pin: true`) against the real containerd of the line
//! `PULLGATE_TEST_CONTAINERD` names: on 1.7 and 2.1 the agent pins each image after the pre-pull
//! (the CRI's own `ImageStatus` says `pinned: true`), takes its pins back when the PullSet's file
//! is removed, and leaves alone a pin another tool (`ctr images label`) made; on 1.6.20, whose
//! CRI reports no pinned images, it says so once and the pre-pull still reports Ok.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{ImageSpec as CriImageSpec, ImageStatusRequest};
use pullgate_testenv::containerd::Release;
use pullgate_testenv::manifests::pullset;
use pullgate_testenv::process::{output_within, require_binary, wait_until};
use pullgate_testenv::{ImageSpec, PASSWORD, TestEnv, block_on};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);

/// A `pin: true` PullSet of `images` with the test's pull Secret.
fn pinned_set(namespace: &str, name: &str, images: &[&str]) -> String {
    format!(
        "{}  pin: true\n",
        pullset(namespace, name, images, &["regcred"])
    )
}

/// `pinned` as the CRI's `ImageStatus` reports it; `None` when the image is absent.
fn cri_pinned(env: &TestEnv, image: &str) -> Option<bool> {
    let endpoint: pullgate::adapters::cri::CriEndpoint = env.containerd.endpoint().parse().unwrap();
    block_on(async move {
        let channel = pullgate::adapters::cri::connect(&endpoint, Duration::from_secs(10));
        let status = ImageServiceClient::new(channel)
            .image_status(ImageStatusRequest {
                image: Some(CriImageSpec {
                    image: image.to_string(),
                    ..CriImageSpec::default()
                }),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner();
        status.image.map(|i| i.pinned)
    })
}

/// The `ctr` of the release line under test (the system's for 1.6).
fn ctr(release: Release) -> PathBuf {
    if release == Release::V1_6 {
        return require_binary("ctr", "containerd").unwrap();
    }
    let ctr = release.binary().unwrap().with_file_name("ctr");
    assert!(
        ctr.exists(),
        "{} is missing: run `cargo xtask deps` (it unpacks containerd {} with its ctr)",
        ctr.display(),
        release.line()
    );
    ctr
}

/// `ctr -n k8s.io images ARGS` against the test's containerd.
fn ctr_images(env: &TestEnv, args: &[&str]) -> String {
    let mut command = Command::new(ctr(env.containerd.release()));
    command
        .arg("--address")
        .arg(env.containerd.socket())
        .args(["-n", "k8s.io", "images"])
        .args(args);
    let out = output_within(command, Duration::from_secs(30)).unwrap();
    assert!(
        out.status.success(),
        "ctr images {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The labels column of `ctr images ls` for the record `name`.
fn labels_of(env: &TestEnv, name: &str) -> String {
    ctr_images(env, &["ls"])
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no record {name} in the k8s.io image store"))
        .to_string()
}

fn prepull_of<'a>(lines: &'a [Value], image: &str) -> Option<&'a Value> {
    lines
        .iter()
        .rev()
        .find(|l| l["kind"] == "prepull" && l["image"] == image)
}

#[test]
fn pinned_after_the_prepull_unpinned_when_the_pullset_goes_and_another_tools_pin_kept() {
    let env = TestEnv::started();
    let release = env.containerd.release();
    if release == Release::V1_6 {
        return one_six_says_once_that_it_cannot_pin(&env);
    }
    let app = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    let theirs = env.push(&ImageSpec::new("team/theirs", "v1")).unwrap();
    env.write_regcred("team").unwrap();

    // Another tool pulled `theirs` and pinned its tag. (Not listed by the PullSet: containerd's
    // CRI drops the pin label of a record it pulls again — 1.7.24 — so a pin another tool made
    // on an image the agent pre-pulls does not survive the pre-pull, whatever the agent does.)
    block_on(async {
        use pullgate::decide::runtime::ImageRuntime as _;
        let auth = pullgate::decide::runtime::PullAuth {
            username: pullgate_testenv::USER,
            password: &secrecy::SecretString::from(PASSWORD),
        };
        env.containerd
            .cri()
            .pull_image(&theirs.by_tag, Some(auth))
            .await
            .unwrap();
    });
    ctr_images(
        &env,
        &["label", &theirs.by_tag, "io.cri-containerd.pinned=pinned"],
    );
    wait_until("the CRI reporting the other tool's pin", WAIT, || {
        cri_pinned(&env, &theirs.by_tag) == Some(true)
    })
    .unwrap();

    env.write_manifest("set.yaml", &pinned_set("team", "critical", &[&app.by_tag]))
        .unwrap();
    let agent = env.agent().spawn().unwrap();
    agent
        .wait_for("the app's pre-pull", WAIT, 1, |l| {
            l["kind"] == "prepull" && l["image"] == app.by_tag.as_str()
        })
        .unwrap();
    let lines = agent.lines();
    let o = prepull_of(&lines, &app.by_tag).unwrap();
    assert_eq!(o["verdict"], "Ok", "{o}");
    assert_eq!(o["pinned"], true, "the prepull line says it is pinned: {o}");
    wait_until("the CRI reporting the app pinned", WAIT, || {
        cri_pinned(&env, &app.by_tag) == Some(true)
    })
    .unwrap();
    // Every reference of the image carries the pin and the agent's own mark.
    for name in [&app.by_tag, &app.by_digest, &app.config_digest] {
        let row = labels_of(&env, name);
        assert!(
            row.contains("io.cri-containerd.pinned=pinned")
                && row.contains("pullgate.io/pinned=true"),
            "{name}: {row}"
        );
    }
    // The other tool's pin is neither taken nor marked as the agent's.
    let row = labels_of(&env, &theirs.by_tag);
    assert!(
        !row.contains("pullgate.io/pinned"),
        "{row}\nstderr:\n{}",
        agent.stderr()
    );

    // The PullSet goes: the agent takes back its own pins (the app's three records), only those.
    std::fs::remove_file(env.manifests.path().join("set.yaml")).unwrap();
    wait_until("the agent's three unpins", WAIT, || {
        agent.stderr().matches("image unpinned").count() >= 3
    })
    .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()));
    wait_until("the CRI reporting the app unpinned", WAIT, || {
        cri_pinned(&env, &app.by_tag) == Some(false)
    })
    .unwrap();
    for name in [&app.by_tag, &app.by_digest, &app.config_digest] {
        let row = labels_of(&env, name);
        assert!(!row.contains("pinned"), "{name} still labelled: {row}");
    }
    let row = labels_of(&env, &theirs.by_tag);
    assert!(
        row.contains("io.cri-containerd.pinned=pinned") && !row.contains("pullgate.io/pinned"),
        "{row}"
    );
    assert_eq!(
        cri_pinned(&env, &theirs.by_tag),
        Some(true),
        "another tool's pin is never taken back"
    );
    let stderr = agent.stderr();
    assert_eq!(
        stderr.matches("image unpinned").count(),
        3,
        "the agent's own three records unpinned, no other:\n{stderr}"
    );
    assert!(
        !stderr.lines().any(|l| l.contains("team/theirs")),
        "the other tool's image was touched:\n{stderr}"
    );
    env.assert_no_leak(&[&agent.stdout(), &stderr], &[PASSWORD]);
}

/// containerd 1.6.20: one warning naming why, the pre-pull Ok, `pinned: false` with the reason.
fn one_six_says_once_that_it_cannot_pin(env: &TestEnv) {
    let app = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    env.write_regcred("team").unwrap();
    env.write_manifest("set.yaml", &pinned_set("team", "critical", &[&app.by_tag]))
        .unwrap();
    let run = env.agent().run_once(WAIT).unwrap();
    run.assert_code(0);
    let o = run.prepull(&app.by_tag);
    assert_eq!(o["verdict"], "Ok", "{o}");
    assert_eq!(o["pinned"], false, "{o}");
    let warnings = o["warnings"].to_string();
    assert!(
        warnings.contains("does not report pinned images"),
        "{warnings}"
    );
    let said = run
        .stderr
        .matches("images are not pinned: containerd")
        .count();
    assert_eq!(said, 1, "said once:\n{}", run.stderr);
    assert_eq!(cri_pinned(env, &app.by_tag), Some(false));
    // Nothing was labelled either.
    assert!(!labels_of(env, &app.by_tag).contains("pinned"));
}
