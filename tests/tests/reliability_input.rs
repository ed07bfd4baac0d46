//! Reliability, hostile input: 1,000 PullSets with a malformed one every tenth; a 50 MiB pull
//! Secret; a 10,000-layer manifest, and manifests over the 4 MiB limit (announced and streamed).
//! Each is reported by name, and the agent stays up and bounded in memory (a generous cap on the
//! process's `VmHWM`, a resource bound, never a timing).

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use base64::Engine as _;
use pullgate_testenv::agent::MEMORY_CAP_KIB;
use pullgate_testenv::http;
use pullgate_testenv::manifests::pullset;
use pullgate_testenv::process::wait_until;
use pullgate_testenv::{ImageSpec, PASSWORD, TestEnv, USER, block_on};
use serde_json::{Value, json};
use std::io::Write as _;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const MIB: usize = 1024 * 1024;

fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

// ---------------------------------------------------------------------------------------------
// 4. 1,000 PullSets, a malformed one every tenth.

#[test]
fn a_thousand_pullsets_with_every_tenth_malformed() {
    let env = TestEnv::started();
    let images: Vec<_> = (0..3)
        .map(|i| {
            env.push(&ImageSpec::new(&format!("team/app{i}"), "v1"))
                .unwrap()
        })
        .collect();
    env.write_regcred("team").unwrap();
    let host = env.registry.host();
    // Each malformed set breaks exactly one field, five ways in turn.
    let broken = |i: usize| -> (String, &'static str) {
        let valid_image = format!("{host}/team/app0:v1");
        match (i / 10) % 5 {
            0 => (
                format!(
                    "  imagePullSecrets: [{{name: regcred}}]\n  images: [{{image: '{host}/Team/App:bad tag'}}]\n"
                ),
                "spec.images[0].image",
            ),
            1 => (
                format!(
                    "  imagePullSecrets: [{{name: Not_A_Name}}]\n  images: [{{image: '{valid_image}'}}]\n"
                ),
                "spec.imagePullSecrets[0].name",
            ),
            2 => (
                format!(
                    "  imagePullSecrets: [{{name: regcred}}]\n  images: [{{image: '{valid_image}'}}]\n  canary: {{schedule: 'every other tuesday'}}\n"
                ),
                "spec.canary.schedule",
            ),
            3 => (
                "  imagePullSecrets: [{name: regcred}]\n  images: []\n".to_string(),
                "spec.images",
            ),
            _ => (
                format!(
                    "  imagePullSecrets: [{{name: regcred}}]\n  images: [{{image: '{valid_image}'}}]\n  prePul: true\n"
                ),
                "spec.prePul",
            ),
        }
    };
    let mut yaml = String::new();
    let mut expected_problems = Vec::new();
    for i in 0..1000 {
        let spec = if i % 10 == 9 {
            let (spec, field) = broken(i);
            expected_problems.push((i, format!("PullSet team/set-{i:04}"), field));
            spec
        } else {
            format!(
                "  imagePullSecrets: [{{name: regcred}}]\n  images: [{{image: '{}'}}]\n",
                images[i % 3].by_tag
            )
        };
        yaml.push_str(&format!(
            "---\napiVersion: pullgate.io/v1alpha1\nkind: PullSet\nmetadata: {{name: set-{i:04}, namespace: team}}\nspec:\n{spec}"
        ));
    }
    env.write_manifest("sets.yaml", &yaml).unwrap();
    let agent = env.daemon(&["--recheck-interval", "1h"]);
    let ok = |l: &Value| l["kind"] == "prepull" && l["verdict"] == "Ok";
    agent
        .wait_for("900 Ok outcomes", Duration::from_secs(120), 900, ok)
        .unwrap();

    let lines = agent.lines();
    // One outcome per valid set, all Ok; nothing for the broken ones.
    let mut sets: Vec<String> = lines
        .iter()
        .filter(|l| l["kind"] == "prepull")
        .map(|l| {
            assert_eq!(l["verdict"], "Ok", "{l}");
            l["pullset"].as_str().unwrap().to_string()
        })
        .collect();
    sets.sort();
    sets.dedup();
    assert_eq!(sets.len(), 900);
    assert!(
        sets.iter().all(|s| !s.ends_with('9')),
        "a broken set was acted on"
    );
    // Three images pulled, however many sets name them.
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["kind"] == "prepull" && l["action"] == "pulled")
            .map(|l| l["image"].as_str().unwrap())
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3
    );
    // Exactly one problem per broken set, naming the file, the document, the object and the field.
    let problems: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "source").collect();
    let mut reported = std::collections::BTreeSet::new();
    for p in &problems {
        assert!(p["file"].as_str().unwrap().ends_with("sets.yaml"), "{p}");
        reported.insert((
            p["document"].as_u64().unwrap() as usize,
            p["object"].as_str().unwrap().to_string(),
        ));
    }
    assert_eq!(reported.len(), 100, "{problems:#?}");
    for (i, object, field) in &expected_problems {
        let found: Vec<&&Value> = problems
            .iter()
            .filter(|p| p["object"] == object.as_str())
            .collect();
        assert!(!found.is_empty(), "no problem reported for {object}");
        for p in found {
            assert_eq!(p["document"], *i, "{p}");
            let reported_field = p["field"]
                .as_str()
                .unwrap_or_else(|| panic!("no field: {p}"));
            assert_eq!(reported_field, *field, "{object}: {p}");
            assert!(!p["message"].as_str().unwrap().is_empty(), "{p}");
        }
    }
    // Still up, and still watching: one more valid set in another file is picked up.
    let extra = pullset("team", "one-more", &[&images[0].by_tag], &["regcred"]);
    env.write_manifest("more.yaml", &extra).unwrap();
    agent
        .wait_for("the added set", Duration::from_secs(60), 1, |l| {
            ok(l) && l["pullset"] == "one-more"
        })
        .unwrap();
    agent.assert_up_and_bounded(MEMORY_CAP_KIB, "1,000 PullSets");
    let (stdout, stderr) = agent.finish();
    env.assert_no_leak(&[&stdout, &stderr], &[PASSWORD]);
}

// ---------------------------------------------------------------------------------------------
// 5. A 50 MiB pull Secret.

#[test]
fn a_50_mib_pull_secret_file_is_refused_by_name_in_bounded_memory() {
    let env = TestEnv::started();
    let image = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    let host = env.registry.host();
    // A dockerconfigjson whose right key sits beside a 26 MiB junk entry (valid, so the kubelet
    // would parse it and use the right key), plus a 16 MiB opaque value under another data key:
    // over 50 MiB of Secret data, 67 MiB of base64 in the file.
    let junk = format!("junk:{}", "j".repeat(26 * MIB));
    let config = json!({"auths": {
        "junk.example.com": {"auth": b64(junk)},
        host.clone(): {"auth": b64(format!("{USER}:{PASSWORD}"))},
    }})
    .to_string();
    let padding = vec![b'p'; 16 * MIB];
    assert!(config.len() + padding.len() > 50 * MIB);
    env.write_manifest(
        "secret.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: huge, namespace: team}}\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: {}\n  padding: {}\n",
            b64(&config),
            b64(&padding)
        ),
    )
    .unwrap();
    drop((config, padding));
    env.write_pullset("team", "huge", &[&image.by_tag], &["huge"])
        .unwrap();
    let agent = env.daemon(&["--recheck-interval", "1h"]);
    agent
        .wait_for("the pre-pull", Duration::from_secs(120), 1, |l| {
            l["kind"] == "prepull"
        })
        .unwrap();
    // The file is 45 times what one Kubernetes object may be: it is reported, naming the file and
    // the limit, and skipped before it is read; the PullSet then misses its Secret, and says so.
    let problem = agent.last(|l| l["kind"] == "source");
    assert!(
        problem["file"].as_str().unwrap().ends_with("secret.yaml")
            && problem["message"]
                .as_str()
                .unwrap()
                .contains("over the 16 MiB limit for one file"),
        "{problem}"
    );
    let o = agent.last(|l| l["kind"] == "prepull");
    assert_eq!(o["verdict"], "SecretNotFound", "{o}");
    assert!(o["message"].as_str().unwrap().contains("team/huge"), "{o}");
    // Bounded: the DaemonSet's limit is 128 MiB; a 50 MiB Secret must not cost four times its
    // size (the process would be OOM-killed in a loop on the node).
    agent.assert_up_and_bounded(MEMORY_CAP_KIB, "50 MiB Secret");
    let (stdout, stderr) = agent.finish();
    assert!(!stdout.contains("jjjjjjjj") && !stderr.contains("jjjjjjjj"));
    env.assert_no_leak(
        &[&stdout, &stderr],
        &[PASSWORD, &b64(format!("{USER}:{PASSWORD}"))],
    );
}

// ---------------------------------------------------------------------------------------------
// 6. A 10,000-layer manifest, and manifests over the 4 MiB limit.

/// Pushes `tag` of `repository`: a manifest listing one tiny layer `layers` times (a registry
/// accepts repeated descriptors), with a config whose `diff_ids` match. Returns the manifest's
/// size and digest.
fn push_wide(env: &TestEnv, repository: &str, tag: &str, layers: usize) -> (usize, String) {
    use oci_client::client::{ClientConfig, ClientProtocol};
    use oci_client::secrets::RegistryAuth;
    use oci_client::{Client, Reference, RegistryOperation};
    use sha2::{Digest as _, Sha256};
    let digest_of = |bytes: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    // One real layer (pushed with the test library's image builder).
    let spec = ImageSpec::new(repository, "base").with_layers(&[512]);
    env.push(&spec).unwrap();
    let built = pullgate_testenv::images::build(&spec).unwrap();
    let layer = &built.layers[0];
    let base_config: Value = serde_json::from_slice(&built.config.data).unwrap();
    let diff_id = base_config["rootfs"]["diff_ids"][0].clone();
    let config = json!({
        "architecture": base_config["architecture"], "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": vec![diff_id; layers]},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let descriptor = json!({
        "mediaType": layer.media_type, "digest": digest_of(&layer.data), "size": layer.data.len(),
    });
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest_of(&config), "size": config.len()},
        "layers": vec![descriptor; layers],
    }))
    .unwrap();
    let (size, digest) = (manifest.len(), digest_of(&manifest));
    let reference: Reference = format!("{}/{repository}:{tag}", env.registry.host())
        .parse()
        .unwrap();
    block_on(async {
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..ClientConfig::default()
        });
        let auth = RegistryAuth::Basic(USER.into(), PASSWORD.into());
        client
            .auth(&reference, &auth, RegistryOperation::Push)
            .await
            .unwrap();
        client
            .push_blob(&reference, &config, &digest_of(&config))
            .await
            .unwrap();
        client
            .push_manifest_raw(
                &reference,
                manifest,
                "application/vnd.oci.image.manifest.v1+json"
                    .parse()
                    .unwrap(),
            )
            .await
            .unwrap_or_else(|e| panic!("push a {size}-byte manifest: {e}"));
    });
    (size, digest)
}

fn canaried_set(name: &str, image: &str, depth: &str, secrets: bool) -> String {
    let secrets = if secrets {
        "  imagePullSecrets: [{name: regcred}]\n"
    } else {
        ""
    };
    format!(
        "apiVersion: pullgate.io/v1alpha1\nkind: PullSet\nmetadata: {{name: {name}, namespace: team}}\nspec:\n  prePull: false\n  gate: false\n{secrets}  images: [{{image: '{image}'}}]\n  canary: {{depth: {depth}}}\n"
    )
}

#[test]
fn a_10000_layer_manifest_is_checked_blob_by_blob_in_bounded_memory() {
    let env = TestEnv::started();
    let (size, digest) = push_wide(&env, "team/wide", "v1", 10_000);
    assert!(size > MIB && size < 4 * MIB, "{size}");
    let image = format!("{}/team/wide:v1", env.registry.host());
    env.write_regcred("team").unwrap();
    env.write_manifest("set.yaml", &canaried_set("wide", &image, "blobs", true))
        .unwrap();
    let agent = env
        .agent()
        .canary_defaults(&env.registry.host())
        .spawn()
        .unwrap();
    agent
        .wait_for("the canary", Duration::from_secs(150), 1, |l| {
            l["kind"] == "canary"
        })
        .unwrap();
    let o = agent.last(|l| l["kind"] == "canary");
    assert_eq!(o["verdict"], "Ok", "{o}");
    assert_eq!(o["manifest_digest"], digest.as_str(), "{o}");
    assert_eq!(o["message"], "manifest and 10001 blob(s) reachable", "{o}");
    // The auth challenge, the manifest and one HEAD per blob.
    assert!(o["requests"].as_u64().unwrap() >= 10_002, "{o}");
    agent.assert_up_and_bounded(MEMORY_CAP_KIB, "10,000-layer manifest");
    let (stdout, stderr) = agent.finish();
    env.assert_no_leak(&[&stdout, &stderr], &[PASSWORD]);
}

/// A minimal anonymous registry that serves oversized manifests: `…/announced/manifests/…` a
/// 5 MiB manifest with its `Content-Length`, anything else an endless chunked stream (no length:
/// only the agent's own limit can stop the read). Counts the bytes it sent, and the connections
/// it is still serving.
struct OversizedManifests {
    host: String,
    sent: Arc<AtomicU64>,
    open: Arc<AtomicU64>,
}

impl OversizedManifests {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
        let sent = Arc::new(AtomicU64::new(0));
        let open = Arc::new(AtomicU64::new(0));
        let (total, serving) = (sent.clone(), open.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let total = total.clone();
                serving.fetch_add(1, Ordering::SeqCst);
                let serving = serving.clone();
                std::thread::spawn(move || {
                    serve_oversized(stream, &total);
                    serving.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self { host, sent, open }
    }
}

fn serve_oversized(mut stream: std::net::TcpStream, total: &AtomicU64) {
    let Some(head) = http::read_request_head(&mut stream) else {
        return;
    };
    let path = http::request_path(&head);
    const TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
    let chunk = vec![b' '; 256 * 1024];
    if !path.contains("/manifests/") {
        let _ = stream.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        );
    } else if path.contains("/announced/") {
        let length = 5 * MIB;
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: {TYPE}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
        );
        for _ in 0..length / chunk.len() {
            if stream.write_all(&chunk).is_err() {
                return;
            }
            total.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    } else {
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: {TYPE}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        // Up to 256 MiB, or until the client hangs up.
        for _ in 0..1024 {
            let ok = write!(stream, "{:x}\r\n", chunk.len()).is_ok()
                && stream.write_all(&chunk).is_ok()
                && stream.write_all(b"\r\n").is_ok();
            if !ok {
                return;
            }
            total.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        let _ = stream.write_all(b"0\r\n\r\n");
    }
}

#[test]
fn a_manifest_over_4_mib_is_a_clear_error_not_an_oom() {
    let env = TestEnv::started();
    // Just under the limit (the registry itself refuses a manifest over 4 MiB): fine.
    let (size, digest) = push_wide(&env, "team/wide", "v1", 26_500);
    assert!(size > 4 * MIB - 200 * 1024 && size < 4 * MIB, "{size}");
    let under = format!("{}/team/wide:v1", env.registry.host());
    // Over it, from a registry that does not refuse them: announced with a 5 MiB length, or
    // streamed with no length and no end in sight.
    let bad = OversizedManifests::start();
    let bad_host = bad.host.clone();
    let announced = format!("{bad_host}/team/announced:v1");
    let endless = format!("{bad_host}/team/endless:v1");
    env.write_regcred("team").unwrap();
    env.write_manifest(
        "sets.yaml",
        &[
            canaried_set("under", &under, "manifest", true),
            canaried_set("announced", &announced, "manifest", false),
            canaried_set("endless", &endless, "manifest", false),
        ]
        .join("---\n"),
    )
    .unwrap();
    let agent = env
        .agent()
        .canary_defaults(&format!("{},{bad_host}", env.registry.host()))
        .spawn()
        .unwrap();
    agent
        .wait_for("three canaries", Duration::from_secs(90), 3, |l| {
            l["kind"] == "canary"
        })
        .unwrap();
    let o = agent.last(|l| l["kind"] == "canary" && l["pullset"] == "under");
    assert_eq!(o["verdict"], "Ok", "{o}");
    assert_eq!(o["manifest_digest"], digest.as_str(), "{o}");
    for set in ["announced", "endless"] {
        let o = agent.last(|l| l["kind"] == "canary" && l["pullset"] == set);
        assert_eq!(o["verdict"], "RuntimeError", "{set}: {o}");
        assert!(
            o["message"]
                .as_str()
                .unwrap()
                .contains("larger than the 4194304-byte limit"),
            "{set}: {o}"
        );
        assert!(o["hint"].as_str().is_some(), "{o}");
    }
    // The streams were cut near the limit, not read to their end: once the server has no
    // connection left to serve, the count is final.
    wait_until(
        "the oversized manifests' connections closed",
        Duration::from_secs(60),
        || bad.open.load(Ordering::SeqCst) == 0,
    )
    .unwrap();
    let streamed = bad.sent.load(Ordering::Relaxed);
    assert!(streamed < 64 * MIB as u64, "{streamed} bytes were read");
    agent.assert_up_and_bounded(MEMORY_CAP_KIB, "manifests over 4 MiB");
    let (stdout, stderr) = agent.finish();
    env.assert_no_leak(&[&stdout, &stderr], &[PASSWORD]);
}
