//! The disk headroom against a real containerd: with `--min-free-disk` above the image
//! filesystem's free space, no download starts and the image is reported `DiskPressure`; with
//! `--host-root` (the shipped DaemonSet's way of seeing the host) the mountpoint the runtime
//! reports is read under it, the `pullgate_image_fs_*` gauges tell what was read, and a path that
//! cannot be read is said once, by name, and the pulls go ahead.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate::decide::runtime::ImageRuntime as _;
use pullgate_testenv::process::{free_port, wait_until};
use pullgate_testenv::{ImageSpec, TestEnv, block_on, http};
use serde_json::Value;
use std::path::{Path, PathBuf};
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

/// The image filesystem's mountpoint the test containerd reports (`ImageFsInfo`).
fn runtime_mountpoint(env: &TestEnv) -> String {
    let filesystems = block_on(async { env.containerd.cri().image_fs_info().await }).unwrap();
    let mountpoint = filesystems
        .into_iter()
        .map(|fs| fs.mountpoint)
        .find(|m| !m.is_empty())
        .expect("containerd names its image filesystem");
    assert!(mountpoint.starts_with('/'), "{mountpoint}");
    mountpoint
}

/// `root` + `mountpoint`, as the agent joins them.
fn under(root: &Path, mountpoint: &str) -> PathBuf {
    root.join(mountpoint.trim_start_matches('/'))
}

/// Scrapes `/metrics` until `settled` holds; returns that scrape.
fn scrape_until(port: u16, what: &str, settled: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    wait_until(what, Duration::from_secs(60), || {
        last = http::get(port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default();
        settled(&last)
    })
    .unwrap_or_else(|e| panic!("{e}\nlast scrape:\n{last}"));
    last
}

fn prepull_of(image: &str) -> impl Fn(&Value) -> bool + '_ {
    move |l: &Value| l["kind"] == "prepull" && l["image"] == image
}

#[test]
fn the_headroom_is_enforced_through_the_host_root_and_its_gauges_are_exported() {
    let env = TestEnv::started();
    let pushed = env.push(&ImageSpec::new("team/big", "v1")).unwrap();
    env.write_regcred("team").unwrap();
    env.write_pullset("team", "critical", &[&pushed.by_tag], &["regcred"])
        .unwrap();
    // The host as a container sees it: the runtime's mountpoint reachable under the host root,
    // as a read-only hostPath mount would make it. A symlink to a directory on another file
    // system (tmpfs), so that the figures show which path was read: --host-root + mountpoint,
    // not the mountpoint itself.
    let mountpoint = runtime_mountpoint(&env);
    let other_fs = tempfile::tempdir_in("/dev/shm").expect("/dev/shm (a tmpfs) for this test");
    let read = |path: &str| {
        pullgate::adapters::statvfs::ImageFsProbe::new(None)
            .read(path)
            .unwrap_or_else(|| panic!("statvfs {path}"))
    };
    let expected = read(other_fs.path().to_str().unwrap());
    assert_ne!(
        expected.capacity_bytes,
        read(&mountpoint).capacity_bytes,
        "/dev/shm must be another file system than the runtime's {mountpoint}"
    );
    let host = tempfile::tempdir().unwrap();
    let seen = under(host.path(), &mountpoint);
    std::fs::create_dir_all(seen.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(other_fs.path(), &seen).unwrap();

    let port = free_port().unwrap();
    let agent = env
        .agent()
        .args(&[
            "--host-root",
            host.path().to_str().unwrap(),
            "--min-free-disk",
            "100%",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .spawn()
        .unwrap();
    agent
        .wait_for(
            "the pre-pull outcome",
            Duration::from_secs(120),
            1,
            prepull_of(&pushed.by_tag),
        )
        .unwrap();
    let o = agent.first(prepull_of(&pushed.by_tag));
    assert_eq!(o["verdict"], "DiskPressure", "{o}\n{}", agent.stderr());
    let label = format!(r#"{{mountpoint="{mountpoint}"}}"#);
    let text = scrape_until(port, "the image filesystem gauges", |m| {
        m.contains(&format!("pullgate_image_fs_readable{label} 1"))
    });
    let gauge = |name: &str| -> u64 {
        let prefix = format!("{name}{label} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .parse()
            .unwrap()
    };
    let (free, capacity) = (
        gauge("pullgate_image_fs_free_bytes"),
        gauge("pullgate_image_fs_capacity_bytes"),
    );
    assert_eq!(capacity, expected.capacity_bytes, "{text}");
    assert!(free <= capacity, "{free} of {capacity}");
    assert!(
        !agent.stderr().contains("not enforced"),
        "the filesystem was read, yet:\n{}",
        agent.stderr()
    );
    let images = block_on(async { env.containerd.cri().list_images().await }).unwrap();
    assert!(
        !images.iter().any(|i| i.repo_tags.contains(&pushed.by_tag)),
        "pulled despite the headroom: {images:?}"
    );
}

#[test]
fn an_image_filesystem_not_under_the_host_root_is_said_once_by_path_and_the_pulls_go_ahead() {
    let env = TestEnv::started();
    let a = env.push(&ImageSpec::new("team/a", "v1")).unwrap();
    let b = env.push(&ImageSpec::new("team/b", "v1")).unwrap();
    env.write_regcred("team").unwrap();
    env.write_pullset("team", "critical", &[&a.by_tag, &b.by_tag], &["regcred"])
        .unwrap();
    let mountpoint = runtime_mountpoint(&env);
    let empty = tempfile::tempdir().unwrap();
    let tried = under(empty.path(), &mountpoint);

    let port = free_port().unwrap();
    let agent = env
        .agent()
        .args(&[
            "--host-root",
            empty.path().to_str().unwrap(),
            "--min-free-disk",
            "100%",
            // One pull at a time: the pass and each download read the filesystem, three reads in all.
            "--max-parallel-pulls",
            "1",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .spawn()
        .unwrap();
    for image in [&a.by_tag, &b.by_tag] {
        agent
            .wait_for(
                "the pre-pull outcome",
                Duration::from_secs(120),
                1,
                prepull_of(image),
            )
            .unwrap();
        let o = agent.first(prepull_of(image));
        assert_eq!(
            (o["verdict"].as_str(), o["action"].as_str()),
            (Some("Ok"), Some("pulled")),
            "{o}\n{}",
            agent.stderr()
        );
    }
    let stderr = agent.stderr();
    let said = format!(
        "cannot read the image filesystem's size at {}",
        tried.display()
    );
    // Said once as a warning (the second read goes to the debug log only).
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("not enforced"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning expected in\n{stderr}");
    for words in [
        said.as_str(),
        "--min-free-disk is not enforced, pulls go ahead",
        &format!("--host-root {}", empty.path().display()),
    ] {
        assert!(
            warnings[0].contains(words),
            "{words:?} not in {}",
            warnings[0]
        );
    }
    let label = format!(r#"{{mountpoint="{mountpoint}"}}"#);
    let text = scrape_until(port, "the image filesystem unreadable", |m| {
        m.contains(&format!("pullgate_image_fs_readable{label} 0"))
    });
    assert!(
        !text.contains("pullgate_image_fs_free_bytes{"),
        "a figure for a filesystem not read:\n{text}"
    );
}
