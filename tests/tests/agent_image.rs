//! The agent's own image, as `cargo xtask image` writes it (`target/image/pullgate-<version>.oci.tar`):
//! what the archive holds (the binary, exactly the libraries its ELF needs, the CA bundle; no
//! shell), that the builder reproduces it digest for digest, that `Containerfile` stays in step,
//! that `--push` sends the archive's digest, that the kustomize base lets an overlay set the
//! image — and, against the real containerd of each release line, the agent run FROM the image
//! (`ctr images import`, `ctr run`, read-only rootfs, the mounts the DaemonSet has): PID 1 of its
//! container, it pre-pulls, canaries and reports, and exits 0 with its own shutdown line on
//! SIGTERM.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate_testenv::agent_image::{self, Archive, Inputs, RootFile};
use pullgate_testenv::containerd::Release;
use pullgate_testenv::process::{output_within, wait_until};
use pullgate_testenv::{PASSWORD, TestEnv, USER, block_on, procfs, workspace_root};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Any one step (an import, a pre-pull, a shutdown) gets this long before the test fails.
const DEADLINE: Duration = Duration::from_secs(120);

/// The archive `cargo xtask image` wrote, read back; a loud failure naming the command when it
/// is missing or older than the agent's sources.
fn archive() -> (PathBuf, Archive) {
    let path = agent_image::archive_path(VERSION);
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| {
            panic!(
                "no agent image at {} ({e}): run `cargo xtask image` (`cargo xtask ci` does) first",
                path.display()
            )
        });
    let (newest, file) = newest_source();
    assert!(
        built >= newest,
        "the agent image {} is older than {}: run `cargo xtask image` again",
        path.display(),
        file.display()
    );
    let archive = agent_image::read_archive(&path).unwrap_or_else(|e| panic!("{e:#}"));
    (path, archive)
}

/// The newest of the agent's sources (agent/src, agent/build.rs, agent/Cargo.toml, proto/,
/// Cargo.lock) and its path.
fn newest_source() -> (SystemTime, PathBuf) {
    fn walk(path: &Path, newest: &mut (SystemTime, PathBuf)) {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).unwrap().flatten() {
                walk(&entry.path(), newest);
            }
        } else if let Ok(modified) = meta.modified()
            && modified > newest.0
        {
            *newest = (modified, path.to_path_buf());
        }
    }
    let root = workspace_root();
    let mut newest = (SystemTime::UNIX_EPOCH, root.clone());
    for source in [
        "agent/src",
        "agent/build.rs",
        "agent/Cargo.toml",
        "proto",
        "Cargo.lock",
    ] {
        walk(&root.join(source), &mut newest);
    }
    newest
}

/// The file at `path` in the image's layer.
fn layer_file<'a>(archive: &'a Archive, path: &str) -> &'a [u8] {
    &archive
        .layer_entries
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("no {path} in the image"))
        .data
}

/// The agent binary of the archive, written out (to run `ldd` and `--version` on it).
fn binary_of(archive: &Archive, dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let binary = dir.join("pullgate");
    std::fs::write(&binary, layer_file(archive, agent_image::BINARY_PATH)).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    binary
}

#[test]
fn the_image_holds_the_agent_its_libraries_and_the_ca_bundle_only() {
    let (path, archive) = archive();
    let reference = format!("{}:{VERSION}", agent_image::IMAGE_NAME);

    // The layout: what `ctr images import` (index.json, named by io.containerd.image.name),
    // `docker load` (manifest.json) and the image-layout spec (ref.name: the tag) read.
    assert_eq!(archive.entries.len(), 8, "{:?}", archive.entries);
    assert_eq!(archive.entries[..2], ["blobs/", "blobs/sha256/"]);
    assert!(
        archive.entries[2..5]
            .iter()
            .all(|e| e.starts_with("blobs/sha256/")),
        "three blobs: {:?}",
        archive.entries
    );
    assert_eq!(
        archive.entries[5..],
        ["index.json", "manifest.json", "oci-layout"]
    );
    let annotations = &archive.index["manifests"][0]["annotations"];
    assert_eq!(annotations["io.containerd.image.name"], reference.as_str());
    assert_eq!(annotations["org.opencontainers.image.ref.name"], VERSION);

    // The config: entrypoint, arguments, user, environment and labels the Containerfile has too.
    let config = &archive.config["config"];
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(agent_image::ENTRYPOINT)
    );
    assert_eq!(config["Cmd"], serde_json::json!(agent_image::CMD));
    assert_eq!(config["User"], agent_image::USER);
    assert_eq!(config["Env"], serde_json::json!(agent_image::ENV));
    let labels = config["Labels"].as_object().unwrap();
    let keys: BTreeSet<&str> = labels.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(
            [
                "title",
                "description",
                "version",
                "licenses",
                "source",
                "revision",
                "created"
            ]
            .map(|k| format!("org.opencontainers.image.{k}"))
        )
        .iter()
        .map(String::as_str)
        .collect()
    );
    assert_eq!(labels["org.opencontainers.image.version"], VERSION);
    assert_eq!(labels["org.opencontainers.image.title"], "pullgate");
    let revision = labels["org.opencontainers.image.revision"]
        .as_str()
        .unwrap();
    assert!(
        revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit()),
        "revision {revision:?} is not a git commit"
    );
    assert_eq!(
        labels["org.opencontainers.image.created"],
        archive.config["created"]
    );

    // The files: the binary, exactly the closure of its DT_NEEDED (at the paths ldd resolves,
    // the interpreter at its PT_INTERP path), the CA bundle, and their directories. No shell.
    let dir = tempfile::tempdir().unwrap();
    let binary = binary_of(&archive, dir.path());
    let libraries = agent_image::libraries(&binary).unwrap();
    let names: BTreeSet<String> = libraries
        .iter()
        .map(|(p, _)| p.rsplit('/').next().unwrap().to_string())
        .collect();
    for needed in ["libgcc_s.so.1", "libm.so.6", "libc.so.6"] {
        assert!(names.contains(needed), "{needed} missing from {names:?}");
    }
    assert!(
        names.iter().any(|n| n.starts_with("ld-linux")),
        "no dynamic loader in {names:?}"
    );
    let files: BTreeSet<&str> = archive
        .layer_entries
        .iter()
        .filter(|e| !e.is_dir)
        .map(|e| e.path.as_str())
        .collect();
    let expected: BTreeSet<&str> = libraries
        .iter()
        .map(|(p, _)| p.as_str())
        .chain([agent_image::BINARY_PATH, agent_image::CA_BUNDLE])
        .collect();
    assert_eq!(files, expected);
    for (image_path, host) in &libraries {
        assert_eq!(
            layer_file(&archive, image_path),
            std::fs::read(std::fs::canonicalize(host).unwrap()).unwrap(),
            "{image_path} is not the content of {} (resolved through its symlinks)",
            host.display()
        );
    }
    assert!(
        !files
            .iter()
            .any(|f| f.ends_with("/sh") || f.ends_with("bash")),
        "a shell in the image: {files:?}"
    );
    // Deterministic metadata, sorted entries.
    let paths: Vec<&str> = archive
        .layer_entries
        .iter()
        .map(|e| e.path.as_str())
        .collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
    for entry in &archive.layer_entries {
        assert_eq!(
            (entry.uid, entry.gid, entry.mtime),
            (0, 0, 0),
            "{}: uid, gid, mtime",
            entry.path
        );
    }
    let binary_entry = archive
        .layer_entries
        .iter()
        .find(|e| e.path == agent_image::BINARY_PATH)
        .unwrap();
    assert_eq!(binary_entry.mode & 0o777, 0o755);

    // The figures for the README: the compressed image (its one layer) under 15 MiB.
    let mib = |b: u64| b as f64 / 1024.0 / 1024.0;
    eprintln!(
        "{}: layer {:.2} MiB compressed, binary {:.2} MiB stripped",
        path.display(),
        mib(archive.layer_size),
        mib(binary_entry.data.len() as u64)
    );
    assert!(
        archive.layer_size < 15 * 1024 * 1024,
        "the image is {:.2} MiB compressed, over the 15 MiB goal",
        mib(archive.layer_size)
    );
}

/// The archive's binary with the archive's labels, built again.
fn rebuilt(archive: &Archive, dir: &Path) -> agent_image::Image {
    let labels = &archive.config["config"]["Labels"];
    let created = chrono::DateTime::parse_from_rfc3339(
        labels["org.opencontainers.image.created"].as_str().unwrap(),
    )
    .unwrap()
    .timestamp();
    let inputs = Inputs {
        binary: binary_of(archive, dir),
        version: labels["org.opencontainers.image.version"]
            .as_str()
            .unwrap()
            .to_string(),
        revision: labels["org.opencontainers.image.revision"]
            .as_str()
            .unwrap()
            .to_string(),
        created,
    };
    agent_image::build(&inputs).unwrap()
}

#[test]
fn two_builds_of_the_same_binary_give_the_archive_s_digests() {
    // The first build is `cargo xtask image`'s, the second this one, from the binary the first
    // put in the image, with its version, revision and time.
    let (path, archive) = archive();
    let dir = tempfile::tempdir().unwrap();
    let again = rebuilt(&archive, dir.path());
    assert_eq!(again.diff_id, archive.image.diff_id);
    assert_eq!(again.layer_digest(), archive.layer_digest);
    assert_eq!(again.config_digest(), archive.image.config_digest());
    assert_eq!(again.manifest_digest(), archive.manifest_digest);
    assert_eq!(
        again.archive().unwrap(),
        std::fs::read(&path).unwrap(),
        "the archive differs byte for byte"
    );
}

#[test]
fn the_layer_of_a_file_set_does_not_depend_on_its_order() {
    let files = [
        RootFile {
            path: agent_image::CA_BUNDLE.into(),
            mode: 0o644,
            data: b"ca".to_vec(),
        },
        RootFile {
            path: agent_image::BINARY_PATH.into(),
            mode: 0o755,
            data: b"bin".to_vec(),
        },
    ];
    let mut reversed = files.to_vec();
    reversed.reverse();
    assert_eq!(
        agent_image::digest(&agent_image::layer_tar(&files).unwrap()),
        agent_image::digest(&agent_image::layer_tar(&reversed).unwrap())
    );
}

#[test]
fn push_sends_the_archive_s_manifest() {
    let (_, archive) = archive();
    let image = &archive.image;
    let registry = pullgate_testenv::Registry::start(&[(USER, PASSWORD)]).unwrap();
    let target = format!("{}/pullgate/pullgate", registry.host());
    let auth = oci_client::secrets::RegistryAuth::Basic(USER.into(), PASSWORD.into());
    let pushed = block_on(image.push(&target, &auth, true)).unwrap();
    assert_eq!(
        pushed,
        format!("{target}:{VERSION}@{}", archive.manifest_digest)
    );
    // What the registry now serves under the tag is the archive's manifest.
    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    });
    let reference: oci_client::Reference = format!("{target}:{VERSION}").parse().unwrap();
    let served = block_on(client.fetch_manifest_digest(&reference, &auth)).unwrap();
    assert_eq!(served, archive.manifest_digest);
    // Anonymous pushes are refused by this registry: the error says so, without the password.
    let refused =
        block_on(image.push(&target, &oci_client::secrets::RegistryAuth::Anonymous, true))
            .unwrap_err();
    let text = format!("{refused:#} {refused:?}");
    assert!(!text.contains(PASSWORD), "{text}");
}

/// `Containerfile`'s instructions, continuation lines joined: (instruction, arguments).
fn containerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(workspace_root().join("Containerfile")).unwrap();
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head.trim());
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        if !current.is_empty() {
            joined.push(std::mem::take(&mut current));
        }
    }
    joined
        .into_iter()
        .map(|l| {
            let (word, rest) = l.split_once(' ').unwrap_or((&l, ""));
            (word.to_uppercase(), rest.trim().to_string())
        })
        .collect()
}

/// `KEY="value" KEY2="value"` (the values quoted, as the Containerfile writes them).
fn key_values(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("{text}"));
        let end = after.find('"').unwrap_or_else(|| panic!("{text}"));
        out.insert(key.trim().to_string(), after[..end].to_string());
        rest = after[end + 1..].trim();
    }
    out
}

#[test]
fn the_containerfile_builds_the_same_layout() {
    let instructions = containerfile();
    let last_stage = instructions
        .iter()
        .rposition(|(i, _)| i == "FROM")
        .expect("a FROM");
    let froms: Vec<&String> = instructions
        .iter()
        .filter(|(i, _)| i == "FROM")
        .map(|(_, a)| a)
        .collect();
    assert_eq!(
        froms.len(),
        2,
        "multi-stage: a builder and a runtime: {froms:?}"
    );
    assert!(
        froms[0].starts_with("docker.io/library/rust:1.95") && froms[0].contains("bookworm"),
        "the builder: Rust 1.95 on Debian bookworm (the agent's glibc), not {}",
        froms[0]
    );
    assert!(
        froms[1].starts_with("gcr.io/distroless/cc-debian12"),
        "the runtime: distroless cc (glibc, libgcc_s, libm, CA certificates), not {}",
        froms[1]
    );
    let runtime = &instructions[last_stage..];
    let one = |word: &str| -> &str {
        let found: Vec<&String> = runtime
            .iter()
            .filter(|(i, _)| i == word)
            .map(|(_, a)| a)
            .collect();
        assert_eq!(found.len(), 1, "one {word} in the runtime stage: {found:?}");
        found[0]
    };
    let json = |text: &str| -> Value { serde_json::from_str(text).unwrap() };
    assert_eq!(
        json(one("ENTRYPOINT")),
        serde_json::json!(agent_image::ENTRYPOINT)
    );
    assert_eq!(json(one("CMD")), serde_json::json!(agent_image::CMD));
    assert_eq!(one("USER"), agent_image::USER);
    let copy = one("COPY");
    assert!(
        copy.starts_with("--from=") && copy.ends_with(&format!(" {}", agent_image::BINARY_PATH)),
        "COPY the built binary to {}: {copy}",
        agent_image::BINARY_PATH
    );
    let env: BTreeMap<String, String> = runtime
        .iter()
        .filter(|(i, _)| i == "ENV")
        .flat_map(|(_, a)| key_values(a))
        .collect();
    let expected_env: BTreeMap<String, String> = agent_image::ENV
        .iter()
        .map(|e| {
            let (k, v) = e.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    assert_eq!(env, expected_env);
    // The labels: the same keys and fixed values; version, revision and created from build
    // arguments whose defaults (the version) are the crate's.
    let labels: BTreeMap<String, String> = runtime
        .iter()
        .filter(|(i, _)| i == "LABEL")
        .flat_map(|(_, a)| key_values(a))
        .collect();
    let inputs = Inputs {
        binary: PathBuf::new(),
        version: "${VERSION}".into(),
        revision: "${REVISION}".into(),
        created: 0,
    };
    let mut expected: BTreeMap<String, String> = agent_image::labels(&inputs)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    expected.insert(
        "org.opencontainers.image.created".into(),
        "${CREATED}".into(),
    );
    assert_eq!(labels, expected);
    let args: BTreeMap<String, String> = instructions
        .iter()
        .filter(|(i, a)| i == "ARG" && a.contains('='))
        .map(|(_, a)| {
            let (k, v) = a.split_once('=').unwrap_or((a, ""));
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect();
    assert_eq!(args.get("VERSION").map(String::as_str), Some(VERSION));
    for arg in ["REVISION", "CREATED"] {
        assert!(args.contains_key(arg), "ARG {arg} in the Containerfile");
    }
}

#[test]
fn an_overlay_s_images_entry_sets_the_daemonset_s_image() {
    use pullgate_testenv::kustomize::{kubectl, manifests_dir, parse_documents};
    let image_of = |objs: &[pullgate_testenv::kustomize::Obj]| -> String {
        let ds = objs
            .iter()
            .find(|o| o.kind() == "DaemonSet")
            .expect("a DaemonSet");
        ds.str_at("/spec/template/spec/containers/0/image")
            .unwrap()
            .to_string()
    };
    let render = |dir: &Path| {
        let out = Command::new(kubectl())
            .arg("kustomize")
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl kustomize {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        parse_documents("overlay", &String::from_utf8(out.stdout).unwrap())
    };
    let base = manifests_dir().join("base");
    assert_eq!(
        image_of(&render(&base)),
        format!("{}:{VERSION}", agent_image::IMAGE_NAME),
        "the base names the image `cargo xtask image` builds"
    );
    let overlay = tempfile::Builder::new()
        .prefix("image-overlay-")
        .tempdir_in(workspace_root().join("target"))
        .unwrap();
    let relative = "../../manifests/base";
    assert!(
        overlay
            .path()
            .join(relative)
            .join("kustomization.yaml")
            .is_file()
    );
    for (images, expected) in [
        (
            "  - name: ghcr.io/pullgate/pullgate\n    newName: registry.example.com/mirror/pullgate\n    newTag: 9.9.9\n",
            "registry.example.com/mirror/pullgate:9.9.9",
        ),
        (
            "  - name: ghcr.io/pullgate/pullgate\n    digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n",
            "ghcr.io/pullgate/pullgate@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ),
    ] {
        std::fs::write(
            overlay.path().join("kustomization.yaml"),
            format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {relative}\nimages:\n{images}"
            ),
        )
        .unwrap();
        assert_eq!(image_of(&render(overlay.path())), expected, "{images}");
    }
}

/// `ctr` of the release line running: the system's for 1.6, the unpacked one's for the others.
fn ctr(release: Release) -> PathBuf {
    let containerd = release.binary().unwrap_or_else(|e| panic!("{e:#}"));
    let ctr = containerd.with_file_name("ctr");
    assert!(
        ctr.is_file(),
        "no ctr next to {}: run `cargo xtask deps`",
        containerd.display()
    );
    ctr
}

/// `ctr -a SOCKET -n k8s.io ARGS…`, within [`DEADLINE`]; its stdout, or a panic with both outputs.
fn ctr_ok(ctr: &Path, socket: &Path, args: &[&str]) -> String {
    let mut command = Command::new(ctr);
    command
        .arg("-a")
        .arg(socket)
        .args(["-n", "k8s.io"])
        .args(args);
    let out = output_within(command, DEADLINE).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        out.status.success(),
        "ctr {}: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ctr run` attached: the container's stdout and stderr in files. On drop the task is killed
/// and the container removed (before containerd stops), whatever the test did.
struct Container {
    ctr: PathBuf,
    socket: PathBuf,
    id: String,
    run: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Container {
    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The JSON lines on its stdout so far.
    fn lines(&self) -> Vec<Value> {
        self.stdout()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    fn wait_for(&self, what: &str, predicate: impl Fn(&Value) -> bool) {
        let found = wait_until(what, DEADLINE, || self.lines().iter().any(&predicate));
        if let Err(e) = found {
            panic!(
                "{e}\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
        }
    }

    /// The task's PID on the host (`ctr task ls`).
    fn host_pid(&self) -> u32 {
        let tasks = ctr_ok(&self.ctr, &self.socket, &["task", "ls"]);
        tasks
            .lines()
            .find_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some(self.id.as_str()))
                    .then(|| words.next().and_then(|p| p.parse().ok()))
                    .flatten()
            })
            .unwrap_or_else(|| panic!("no task {} in:\n{tasks}", self.id))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if matches!(self.run.try_wait(), Ok(None)) {
            let _ = Command::new(&self.ctr)
                .arg("-a")
                .arg(&self.socket)
                .args(["-n", "k8s.io", "task", "kill", "-s", "SIGKILL", &self.id])
                .status();
            pullgate_testenv::process::terminate(&mut self.run, Duration::from_secs(20));
        }
        for args in [
            &["task", "delete", "--force", &self.id][..],
            &["container", "delete", &self.id][..],
        ] {
            let _ = Command::new(&self.ctr)
                .arg("-a")
                .arg(&self.socket)
                .args(["-n", "k8s.io"])
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `NSpid:` of `/proc/PID/status`: the PID in each namespace, outermost first.
fn ns_pids(pid: u32) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .unwrap_or_else(|| panic!("no NSpid in /proc/{pid}/status"))
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// A credential plugin for the image, which has no shell: the host's `dash` and `sleep` (they
/// need libc and the loader only, the image's) bind-mounted at [`TOOLS`]. It leaves an orphan
/// (a `sleep` whose parent, a subshell, exits at once; its pid in `$PIDFILE`) and answers
/// `$KEY` → `$PLUGIN_USER`/`$PLUGIN_PASSWORD`.
const PLUGIN: &str = r#"#!/plugin-tools/sh
read -r request || true
( /plugin-tools/sleep 100000 </dev/null >/dev/null 2>&1 & echo $! > "$PIDFILE" )
printf '{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Registry","cacheDuration":"1h","auth":{"%s":{"username":"%s","password":"%s"}}}' "$KEY" "$PLUGIN_USER" "$PLUGIN_PASSWORD"
"#;
/// Where the plugin's tools are mounted in the container.
const TOOLS: &str = "/plugin-tools";

/// `dir/bin/fake-provider` ([`PLUGIN`]) and `dir/config.yaml` for `host`, as the container
/// sees them under `/etc/pullgate/plugins`; the orphan's pid goes to `/run/pullgate/orphan.pid`.
fn install_plugin(dir: &Path, host: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir(dir.join("bin")).unwrap();
    let plugin = dir.join("bin/fake-provider");
    std::fs::write(&plugin, PLUGIN).unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n  - name: fake-provider\n    matchImages: ['{host}']\n    defaultCacheDuration: 1h\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n    env:\n      - {{name: KEY, value: '{host}'}}\n      - {{name: PLUGIN_USER, value: '{USER}'}}\n      - {{name: PLUGIN_PASSWORD, value: '{PASSWORD}'}}\n      - {{name: PIDFILE, value: /run/pullgate/orphan.pid}}\n"
        ),
    )
    .unwrap();
}

/// The host pids of the agent's children named `comm`.
fn children_named(parent: u32, comm: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            procfs::parent(pid) == Some(parent)
                && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}

#[test]
fn the_agent_runs_from_its_image_as_pid_1_and_stops_on_sigterm() {
    let (path, _) = archive();
    let reference = format!("{}:{VERSION}", agent_image::IMAGE_NAME);
    let env = TestEnv::started();
    let release = env.containerd.release();
    let ctr = ctr(release);
    let socket = env.containerd.socket();
    let containerd_dir = socket.parent().unwrap().to_path_buf();

    // Imported as a node's runtime would have it, in the CRI's namespace.
    ctr_ok(
        &ctr,
        &socket,
        &[
            "images",
            "import",
            "--snapshotter",
            "native",
            path.to_str().unwrap(),
        ],
    );
    let images = ctr_ok(&ctr, &socket, &["images", "ls", "-q"]);
    assert!(
        images.lines().any(|l| l.trim() == reference),
        "ctr images import did not name the image {reference}:\n{images}"
    );

    // A PullSet of a private image with a canary, and its pull Secret.
    let image = env
        .seed_canaried("schedule: '0 0 * * *', jitter: 0s, depth: manifest")
        .unwrap();
    // And a PullSet of the same image without a pull Secret: the credential plugin serves it.
    let plugins = tempfile::tempdir().unwrap();
    install_plugin(plugins.path(), &env.registry.host());
    env.write_manifest(
        "plugged.yaml",
        &pullgate_testenv::manifests::pullset("team", "plugged", &[&image.by_tag], &[]),
    )
    .unwrap();

    // The DaemonSet's mounts: the runtime's socket directory at /run/containerd (read-only),
    // containerd's configuration at its own path (config.toml, certs.d: read-only), the local
    // API's directory writable; here also the manifests directory (standalone mode).
    let run_dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mounts = [
        format!(
            "type=bind,src={},dst=/run/containerd,options=bind:ro",
            containerd_dir.display()
        ),
        format!(
            "type=bind,src={0},dst={0},options=bind:ro",
            containerd_dir.display()
        ),
        format!(
            "type=bind,src={},dst=/etc/pullgate/manifests,options=bind:ro",
            env.manifests.path().display()
        ),
        format!(
            "type=bind,src={},dst=/run/pullgate,options=bind:rw",
            run_dir.path().display()
        ),
        format!(
            "type=bind,src={},dst=/etc/pullgate/plugins,options=bind:ro",
            plugins.path().display()
        ),
        format!("type=bind,src=/usr/bin/dash,dst={TOOLS}/sh,options=bind:ro"),
        format!("type=bind,src=/usr/bin/sleep,dst={TOOLS}/sleep,options=bind:ro"),
    ];
    let settings = [
        "PULLGATE_MANIFESTS=/etc/pullgate/manifests".to_string(),
        "PULLGATE_CRI_ENDPOINT=unix:///run/containerd/containerd.sock".to_string(),
        format!(
            "PULLGATE_RUNTIME_CONFIG_FILE={}",
            env.containerd.config_file().display()
        ),
        "PULLGATE_NODE_NAME=image-node".to_string(),
        "PULLGATE_METRICS_ADDR=127.0.0.1:0".to_string(),
        "PULLGATE_MIN_FREE_DISK=0".to_string(),
        "PULLGATE_MIN_CANARY_INTERVAL=0s".to_string(),
        format!("PULLGATE_INSECURE_REGISTRIES={}", env.registry.host()),
        "PULLGATE_IMAGE_CREDENTIAL_PROVIDER_CONFIG=/etc/pullgate/plugins/config.yaml".to_string(),
        "PULLGATE_IMAGE_CREDENTIAL_PROVIDER_BIN_DIR=/etc/pullgate/plugins/bin".to_string(),
    ];
    let id = format!("pullgate-image-{}", std::process::id());
    let mut command = Command::new(&ctr);
    command
        .arg("-a")
        .arg(&socket)
        .args(["-n", "k8s.io", "run", "--rm", "--snapshotter", "native"])
        .args(["--net-host", "--read-only"]);
    for mount in &mounts {
        command.args(["--mount", mount]);
    }
    for setting in &settings {
        command.args(["--env", setting]);
    }
    // No command: the image's own entrypoint and arguments (`pullgate run`).
    command.args([reference.as_str(), id.as_str()]);
    let stdout = out.path().join("stdout");
    let stderr = out.path().join("stderr");
    command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap());
    let run = command.spawn().unwrap();
    let mut container = Container {
        ctr: ctr.clone(),
        socket: socket.clone(),
        id: id.clone(),
        run,
        stdout,
        stderr,
    };

    // It pre-pulls through the mounted socket, canaries the registry over the host's network,
    // and reports.
    container.wait_for("the pre-pull of the PullSet's image", |l| {
        l["kind"] == "prepull" && l["image"] == image.by_tag.as_str() && l["verdict"] == "Ok"
    });
    container.wait_for("the start-up canary", |l| {
        l["kind"] == "canary" && l["image"] == image.by_tag.as_str() && l["verdict"] == "Ok"
    });
    container.wait_for("CriticalImagesReady True", |l| {
        l["kind"] == "condition" && l["type"] == "CriticalImagesReady" && l["status"] == "True"
    });

    // PID 1 of its PID namespace: the process the container runs is the agent itself.
    let pid = container.host_pid();
    let pids = ns_pids(pid);
    assert_eq!(
        pids.last().map(String::as_str),
        Some("1"),
        "the agent (host pid {pid}) is not PID 1 of its container: NSpid {pids:?}"
    );
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "pullgate");

    // As PID 1 it reaps: the plugin (run from the image, through its loader) pulled the second
    // PullSet's image and left an orphan, which came to the agent; killed, it is reaped, not
    // left a zombie.
    container.wait_for("the plugin-served pre-pull", |l| {
        l["kind"] == "prepull" && l["pullset"] == "plugged" && l["verdict"] == "Ok"
    });
    let mut orphans = Vec::new();
    let found = wait_until("the plugin's orphan to come to the agent", DEADLINE, || {
        orphans = children_named(pid, "sleep");
        !orphans.is_empty()
    });
    if let Err(e) = found {
        panic!("{e}\nstderr:\n{}", container.stderr());
    }
    for orphan in &orphans {
        let killed = Command::new("kill")
            .args(["-KILL", &orphan.to_string()])
            .status()
            .unwrap();
        assert!(killed.success(), "kill -KILL {orphan}");
    }
    for &orphan in &orphans {
        wait_until("the orphan to be reaped", DEADLINE, || {
            !procfs::exists(orphan)
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}: pid {orphan} is {:?}, child of {:?}",
                procfs::status_field(orphan, "State"),
                procfs::parent(orphan)
            )
        });
    }
    assert_eq!(procfs::zombie_children(pid), Vec::<u32>::new());

    // SIGTERM to PID 1 (which the kernel delivers only to a handler): a clean exit, its own line.
    ctr_ok(&ctr, &socket, &["task", "kill", "-s", "SIGTERM", &id]);
    let exited = wait_until("ctr run to return", DEADLINE, || {
        matches!(container.run.try_wait(), Ok(Some(_)))
    });
    if let Err(e) = exited {
        panic!(
            "{e}: the agent ignored SIGTERM\nstderr:\n{}",
            container.stderr()
        );
    }
    let status = container.run.wait().unwrap();
    let (stdout, stderr) = (container.stdout(), container.stderr());
    assert_eq!(
        status.code(),
        Some(0),
        "the agent's exit (containerd {})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        env.containerd.version()
    );
    assert!(
        stderr.contains("shutting down"),
        "no shutdown line from the agent:\n{stderr}"
    );
    env.assert_no_leak(&[&stdout, &stderr], &[PASSWORD]);
}
