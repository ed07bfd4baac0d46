//! The disk headroom against a real containerd: with `--min-free-disk` above the image
//! filesystem's free space, no download starts and the image is reported `DiskPressure`.

use pullgate::decide::runtime::ImageRuntime as _;
use pullgate_testenv::{ImageSpec, TestEnv, block_on};
use std::time::Duration;

const ONCE: Duration = Duration::from_secs(120);

#[test]
fn no_image_is_pulled_past_the_disk_headroom() {
    let env = TestEnv::started();
    let pushed = env.push(&ImageSpec::new("team/big", "v1")).unwrap();
    env.write_regcred("team").unwrap();
    env.write_pullset("team", "critical", &[&pushed.by_tag], &["regcred"])
        .unwrap();

    let run = env
        .agent()
        .args(&["--min-free-disk", "100%"])
        .run_once(ONCE)
        .unwrap();
    run.assert_code(1);
    let o = run.prepull(&pushed.by_tag);
    assert_eq!(o["verdict"], "DiskPressure", "{o}");
    assert!(
        o["message"].as_str().unwrap().contains("--min-free-disk"),
        "{o}"
    );
    assert!(o["hint"].as_str().unwrap().contains("free space"), "{o}");
    let event = run
        .lines
        .iter()
        .find(|l| l["kind"] == "event" && l["reason"] == "PrePullSkippedDiskPressure")
        .unwrap_or_else(|| panic!("no disk-pressure Event: {}", run.stdout));
    assert_eq!(event["regarding"], "PullSet team/critical");
    let gate = run
        .lines
        .iter()
        .find(|l| l["kind"] == "condition")
        .unwrap_or_else(|| panic!("no condition: {}", run.stdout));
    assert_eq!(
        (gate["status"].as_str(), gate["reason"].as_str()),
        (Some("False"), Some("DiskPressure")),
        "{gate}"
    );
    let images = block_on(async { env.containerd.cri().list_images().await }).unwrap();
    assert!(
        !images.iter().any(|i| i.repo_tags.contains(&pushed.by_tag)),
        "pulled despite the headroom: {images:?}"
    );

    // With no headroom (the harness's default) it is pulled.
    let run = env.agent().run_once(ONCE).unwrap();
    run.assert_code(0);
    assert_eq!(run.prepull(&pushed.by_tag)["action"], "pulled");
}
