//! Pinned images (`spec.pin: true`) against the real containerd of the line
//! `PULLGATE_TEST_CONTAINERD` names: on 1.7 and 2.1 the agent pins each image after the pre-pull
//! (the CRI's own `ImageStatus` says `pinned: true`), takes its pins back when the PullSet's file
//! is removed, and leaves alone a pin another tool (`ctr images label`) made; on 1.6.20, whose
//! CRI reports no pinned images, it says so once — when the first `pin: true` PullSet appears,
//! never at a start-up without one — and the pre-pull still reports Ok.
//!
//! In cluster mode (the test API server) only the `--pin-namespaces` pin: a tenant's `pin: true`
//! PullSet is pre-pulled, not pinned, with the `PinNotAllowed` warning; `pullgate status` (the
//! local API) and the `pullgate_pinned_images` / `pullgate_pinned_image_bytes` gauges say what
//! is pinned; deleting the PullSet unpins. An agent restarted after its PullSet went takes back
//! the pins it made before (its label remembers them), and only those.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{ImageSpec as CriImageSpec, ImageStatusRequest};
use pullgate::adapters::serve::local_api::{Client, pb};
use pullgate_testenv::agent::pullgate_binary;
use pullgate_testenv::apiserver::objects;
use pullgate_testenv::cluster::Cluster;
use pullgate_testenv::containerd::Release;
use pullgate_testenv::manifests::pullset;
use pullgate_testenv::process::{free_port, output_within, require_binary, wait_until};
use pullgate_testenv::{ImageSpec, PASSWORD, TestEnv, USER, block_on};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
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
    cri_image(env, image).map(|(pinned, _)| pinned)
}

/// `pinned` and `size` as the CRI's `ImageStatus` reports them; `None` when the image is absent.
fn cri_image(env: &TestEnv, image: &str) -> Option<(bool, u64)> {
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
        status.image.map(|i| (i.pinned, i.size))
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

/// `team/theirs:v1`, pulled and its tag pinned by another tool (`ctr images label`), the CRI
/// reporting it pinned. (Never listed by a PullSet here: containerd's CRI drops the pin label of a
/// record it pulls again — 1.7.24 — so a pin another tool made on an image the agent pre-pulls
/// does not survive the pre-pull, whatever the agent does.)
fn another_tools_pin(env: &TestEnv) -> pullgate_testenv::PushedImage {
    let theirs = env.push(&ImageSpec::new("team/theirs", "v1")).unwrap();
    block_on(async {
        use pullgate::decide::runtime::ImageRuntime as _;
        let auth = pullgate::decide::runtime::PullAuth {
            username: USER,
            password: &secrecy::SecretString::from(PASSWORD),
        };
        env.containerd
            .cri()
            .pull_image(&theirs.by_tag, Some(auth))
            .await
            .unwrap();
    });
    ctr_images(
        env,
        &["label", &theirs.by_tag, "io.cri-containerd.pinned=pinned"],
    );
    wait_until("the CRI reporting the other tool's pin", WAIT, || {
        cri_pinned(env, &theirs.by_tag) == Some(true)
    })
    .unwrap();
    theirs
}

/// The other tool's pin is as it made it: pinned, not marked as the agent's.
fn assert_theirs_untouched(env: &TestEnv, theirs: &str) {
    let row = labels_of(env, theirs);
    assert!(
        row.contains("io.cri-containerd.pinned=pinned") && !row.contains("pullgate.io/pinned"),
        "{row}"
    );
    assert_eq!(
        cri_pinned(env, theirs),
        Some(true),
        "another tool's pin is never taken back"
    );
}

/// The value of an unlabelled gauge in a `/metrics` scrape.
fn gauge(metrics: &str, name: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `pullgate_pinned_images` and `pullgate_pinned_image_bytes` as the agent on `port` exports them.
fn pinned_gauges(port: u16) -> Option<(u64, u64)> {
    let (_, metrics) = pullgate_testenv::http::get(port, "/metrics")?;
    Some((
        gauge(&metrics, "pullgate_pinned_images")?,
        gauge(&metrics, "pullgate_pinned_image_bytes")?,
    ))
}

/// `GetStatus` through the agent's local socket.
fn local_status(socket: &Path) -> pb::GetStatusResponse {
    block_on(async {
        Client::connect(socket)
            .await
            .unwrap()
            .status()
            .await
            .unwrap()
    })
}

/// The PullSet `namespace/name` of a status and its only image.
fn status_of<'a>(
    status: &'a pb::GetStatusResponse,
    namespace: &str,
    name: &str,
) -> Option<(&'a pb::PullSetStatus, &'a pb::ImageStatus)> {
    let set = status
        .pullsets
        .iter()
        .find(|s| s.namespace == namespace && s.name == name)?;
    Some((set, set.images.first()?))
}

/// `pullgate status` (the table) against the agent's socket.
fn status_table(socket: &Path) -> String {
    let mut command = Command::new(pullgate_binary().unwrap());
    command.arg("status").arg("--api-socket").arg(socket);
    let out = output_within(command, Duration::from_secs(30)).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The last cell (PINNED) of the table's row for `pullset`.
fn pinned_cell(table: &str, pullset: &str) -> String {
    let row = table
        .lines()
        .find(|l| {
            // The CRD defaults `gate: true`: the cell reads `NS/NAME (gate)`.
            l.split("  ").next().map(|c| c.trim_end_matches(" (gate)")) == Some(pullset)
        })
        .unwrap_or_else(|| panic!("no row for {pullset} in\n{table}"));
    row.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .last()
        .unwrap_or_default()
        .to_string()
}

const NOT_PINNED_SAID: &str = "images are not pinned: containerd";

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
    let theirs = another_tools_pin(&env);
    env.write_regcred("team").unwrap();

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
    assert_theirs_untouched(&env, &theirs.by_tag);
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

#[test]
fn in_cluster_mode_only_the_pin_namespaces_pin_status_and_metrics_say_so_and_deletion_unpins() {
    let cluster = Cluster::start(&[]);
    let env = &cluster.env;
    let one_six = env.containerd.release() == Release::V1_6;
    let plain = env.push(&ImageSpec::new("team/plain", "v1")).unwrap();
    let app = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    let hog = env.push(&ImageSpec::new("tenant/hog", "v1")).unwrap();
    cluster.api.apply(cluster.secret(PASSWORD));
    cluster.api.apply(objects::pull_secret(
        "tenant",
        "regcred",
        &env.registry.host(),
        USER,
        PASSWORD,
    ));
    let spec = |pin: bool| json!({"pin": pin, "imagePullSecrets": [{"name": "regcred"}]});
    cluster.api.apply(objects::pullset(
        "team",
        "plain",
        &[&plain.by_tag],
        spec(false),
    ));
    let port = free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let agent = cluster.agent(&[
        "--pin-namespaces",
        "team",
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--metrics-auth",
        "none",
        "--api-socket",
        socket.to_str().unwrap(),
    ]);
    let prepull = |image: &str| {
        let image = image.to_string();
        move |l: &Value| l["kind"] == "prepull" && l["image"] == image.as_str()
    };
    agent
        .wait_for("the plain pre-pull", WAIT, 1, prepull(&plain.by_tag))
        .unwrap();
    // No `pin: true` PullSet yet: nothing said about pins, nothing pinned, nothing counted.
    let plain_line = agent.last(prepull(&plain.by_tag));
    assert!(plain_line.get("pinned").is_none(), "{plain_line}");
    wait_until("the pinned gauges at zero", WAIT, || {
        pinned_gauges(port) == Some((0, 0))
    })
    .unwrap();
    assert!(
        !agent.stderr().contains("images are not pinned"),
        "said at start-up, with no pin: true PullSet:\n{}",
        agent.stderr()
    );

    // Two `pin: true` PullSets appear: team's (a --pin-namespaces namespace) and a tenant's.
    cluster.api.apply(objects::pullset(
        "team",
        "critical",
        &[&app.by_tag],
        spec(true),
    ));
    cluster.api.apply(objects::pullset(
        "tenant",
        "hog",
        &[&hog.by_tag],
        spec(true),
    ));
    for image in [&app.by_tag, &hog.by_tag] {
        agent
            .wait_for("the pin: true pre-pull", WAIT, 1, prepull(image))
            .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()));
    }
    // The tenant's: pre-pulled, not pinned, told why.
    let hog_line = agent.last(prepull(&hog.by_tag));
    assert_eq!(hog_line["verdict"], "Ok", "{hog_line}");
    assert_eq!(hog_line["pinned"], false, "{hog_line}");
    assert!(
        hog_line["warnings"].to_string().contains(
            "PinNotAllowed: spec.pin is ignored: namespace tenant may not pin images (--pin-namespaces: team)"
        ),
        "{hog_line}"
    );
    assert_eq!(cri_pinned(env, &hog.by_tag), Some(false));
    let app_line = agent.last(prepull(&app.by_tag));
    assert_eq!(app_line["verdict"], "Ok", "{app_line}");
    let app_size = if one_six {
        // containerd 1.6.20 cannot pin: said once, on the outcome too; nothing counted.
        assert_eq!(app_line["pinned"], false, "{app_line}");
        assert!(
            app_line["warnings"]
                .to_string()
                .contains("does not report pinned images"),
            "{app_line}"
        );
        assert_eq!(
            agent.stderr().matches(NOT_PINNED_SAID).count(),
            1,
            "{}",
            agent.stderr()
        );
        0
    } else {
        assert_eq!(app_line["pinned"], true, "{app_line}");
        wait_until("the CRI reporting the app pinned", WAIT, || {
            cri_pinned(env, &app.by_tag) == Some(true)
        })
        .unwrap();
        cri_image(env, &app.by_tag).unwrap().1
    };
    // The gauges: the one image the agent pinned, its size as the CRI reports it.
    let expected = if one_six { (0, 0) } else { (1, app_size) };
    wait_until("the pinned gauges counting the app", WAIT, || {
        pinned_gauges(port) == Some(expected)
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", pinned_gauges(port)));
    assert!(one_six || app_size > 0, "the CRI reports the app's size");

    // `pullgate status`: the local API's records and the table's PINNED column.
    let status = local_status(&socket);
    let (set, image) = status_of(&status, "team", "critical").unwrap();
    assert!(set.pin, "{set:?}");
    if one_six {
        assert_eq!(image.pinned, Some(false), "{image:?}");
        assert!(
            image.pin_warning.contains("does not report pinned images"),
            "{image:?}"
        );
    } else {
        assert_eq!(image.pinned, Some(true), "{image:?}");
        assert_eq!(image.pin_warning, "", "{image:?}");
    }
    let (set, image) = status_of(&status, "tenant", "hog").unwrap();
    assert!(set.pin, "{set:?}");
    assert_eq!(image.pinned, Some(false), "{image:?}");
    assert!(
        image.pin_warning.starts_with("PinNotAllowed: "),
        "{image:?}"
    );
    let (set, image) = status_of(&status, "team", "plain").unwrap();
    assert!(!set.pin, "{set:?}");
    assert_eq!(image.pinned, None, "{image:?}");
    let table = status_table(&socket);
    assert!(table.contains("PINNED"), "{table}");
    assert_eq!(
        pinned_cell(&table, "team/critical"),
        if one_six { "no" } else { "yes" },
        "{table}"
    );
    assert_eq!(pinned_cell(&table, "tenant/hog"), "no", "{table}");
    assert_eq!(pinned_cell(&table, "team/plain"), "-", "{table}");
    assert!(
        table.contains(&format!(
            "tenant/hog {} pinned: no\n  why: PinNotAllowed: ",
            hog.by_tag
        )),
        "{table}"
    );

    // team/critical is deleted: its pins are taken back (1.7, 2.1), the gauges go to zero.
    cluster
        .api
        .delete("pullgate.io/v1alpha1", "pullsets", "team", "critical");
    wait_until("team/critical gone from the status", WAIT, || {
        status_of(&local_status(&socket), "team", "critical").is_none()
    })
    .unwrap();
    if !one_six {
        wait_until("the agent's three unpins", WAIT, || {
            agent.stderr().matches("image unpinned").count() >= 3
        })
        .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()));
        wait_until("the CRI reporting the app unpinned", WAIT, || {
            cri_pinned(env, &app.by_tag) == Some(false)
        })
        .unwrap();
    }
    wait_until("the pinned gauges back at zero", WAIT, || {
        pinned_gauges(port) == Some((0, 0))
    })
    .unwrap();
    let (stdout, stderr) = agent.finish();
    assert_eq!(
        stderr.matches("image unpinned").count(),
        if one_six { 0 } else { 3 },
        "{stderr}"
    );
    assert!(
        !stderr
            .lines()
            .any(|l| l.contains("image pinned") && l.contains("tenant/hog")),
        "the tenant's image was pinned:\n{stderr}"
    );
    if one_six {
        assert_eq!(stderr.matches(NOT_PINNED_SAID).count(), 1, "{stderr}");
    }
    cluster.assert_no_leak(&[&stdout, &stderr, &table], &[PASSWORD]);
}

#[test]
fn a_restarted_agent_takes_back_its_own_pins_of_a_pullset_gone_while_it_was_down() {
    let env = TestEnv::started();
    let one_six = env.containerd.release() == Release::V1_6;
    let app = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    env.write_regcred("team").unwrap();
    env.write_manifest("set.yaml", &pinned_set("team", "critical", &[&app.by_tag]))
        .unwrap();
    let first = env.agent().run_once(WAIT).unwrap();
    first.assert_code(0);
    let set = env.manifests.path().join("set.yaml");
    if one_six {
        // Said by the run with a pin: true PullSet, not by a start-up without one.
        assert_eq!(
            first.stderr.matches(NOT_PINNED_SAID).count(),
            1,
            "{}",
            first.stderr
        );
        std::fs::remove_file(&set).unwrap();
        let second = env.agent().run_once(WAIT).unwrap();
        second.assert_code(0);
        assert_eq!(
            second.stderr.matches("images are not pinned").count(),
            0,
            "{}",
            second.stderr
        );
        return;
    }
    assert_eq!(first.prepull(&app.by_tag)["pinned"], true);
    wait_until("the CRI reporting the app pinned", WAIT, || {
        cri_pinned(&env, &app.by_tag) == Some(true)
    })
    .unwrap();
    let theirs = another_tools_pin(&env);

    // The PullSet goes while no agent runs: the pins stay (stopping takes nothing back).
    std::fs::remove_file(&set).unwrap();
    assert_eq!(cri_pinned(&env, &app.by_tag), Some(true));
    for name in [&app.by_tag, &app.by_digest, &app.config_digest] {
        assert!(
            labels_of(&env, name).contains("pullgate.io/pinned=true"),
            "{name}"
        );
    }

    // The next agent finds its own label on the three records and takes them back, only them.
    let second = env.agent().run_once(WAIT).unwrap();
    second.assert_code(0);
    assert_eq!(
        second.stderr.matches("image unpinned").count(),
        3,
        "{}",
        second.stderr
    );
    wait_until("the CRI reporting the app unpinned", WAIT, || {
        cri_pinned(&env, &app.by_tag) == Some(false)
    })
    .unwrap();
    for name in [&app.by_tag, &app.by_digest, &app.config_digest] {
        let row = labels_of(&env, name);
        assert!(!row.contains("pinned"), "{name} still labelled: {row}");
    }
    assert_theirs_untouched(&env, &theirs.by_tag);
    assert!(
        !second.stderr.lines().any(|l| l.contains("team/theirs")),
        "the other tool's image was touched:\n{}",
        second.stderr
    );
    env.assert_no_leak(
        &[&first.stdout, &first.stderr, &second.stdout, &second.stderr],
        &[PASSWORD],
    );
}
