//! [`RegistryClient::probe_walk`] against scripted loopback registries routed by a `hosts.toml`:
//! the hosts in containerd's order, its fall-through and error rule, the hosts after the one that
//! answered asked at `manifest` depth, capabilities, and `--insecure-registry` keeping the
//! mirrors. Every wait is bounded by the adapter's own deadlines.

#![allow(clippy::unwrap_used)] // test fixtures

use super::*;
use secrecy::SecretString;
use sha2::{Digest as _, Sha256};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:c0","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:l1","size":3}]}"#;

fn manifest_digest() -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(MANIFEST.as_bytes()))
    )
}

/// How a scripted registry answers.
#[derive(Clone, Copy)]
enum Script {
    /// The manifest and its blobs, no auth.
    Serves,
    /// `/v2/` is fine; every manifest and blob request gets this status.
    Status(u16),
}

struct Host {
    port: u16,
    /// `METHOD PATH` of each request.
    seen: Arc<Mutex<Vec<String>>>,
}

impl Host {
    fn name(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

async fn registry(script: Script) -> Host {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let mut words = head.split_whitespace();
                let (method, path) = (
                    words.next().unwrap_or("").to_string(),
                    words.next().unwrap_or("").to_string(),
                );
                log.lock().unwrap().push(format!("{method} {path}"));
                let (status, headers, body): (u16, String, String) = match script {
                    _ if path == "/v2/" => (200, String::new(), "{}".into()),
                    Script::Status(s) => (
                        s,
                        String::new(),
                        r#"{"errors":[{"code":"UNKNOWN","message":"scripted"}]}"#.into(),
                    ),
                    // As distribution answers: the digest with the manifest, on GET and HEAD.
                    Script::Serves if path.contains("/manifests/") => (
                        200,
                        format!(
                            "Content-Type: application/vnd.oci.image.manifest.v1+json\r\nDocker-Content-Digest: {}\r\n",
                            manifest_digest()
                        ),
                        MANIFEST.into(),
                    ),
                    Script::Serves if path.ends_with("sha256:c0") => {
                        (200, String::new(), "{}".into())
                    }
                    Script::Serves if path.ends_with("sha256:l1") => {
                        (200, String::new(), "abc".into())
                    }
                    Script::Serves => (404, String::new(), String::new()),
                };
                let response = format!(
                    "HTTP/1.1 {status} X\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{}",
                    body.len(),
                    if method == "HEAD" { "" } else { body.as_str() }
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Host { port, seen }
}

/// A port nothing listens on.
fn dead() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
}

const REGISTRY: &str = "reg.invalid:5000";

/// A client whose runtime configuration routes [`REGISTRY`] through `mirrors` (each `(host,
/// capabilities)`), in order, then `server`.
fn client(
    dir: &tempfile::TempDir,
    mirrors: &[(&str, &str)],
    server: &str,
    dialect: Dialect,
    plain_http: &[&str],
) -> RegistryClient {
    let mut text = format!("server = \"http://{server}\"\n");
    for (host, caps) in mirrors {
        text.push_str(&format!(
            "[host.\"http://{host}\"]\n  capabilities = [{caps}]\n"
        ));
    }
    std::fs::create_dir_all(dir.path().join(REGISTRY)).unwrap();
    std::fs::write(dir.path().join(REGISTRY).join("hosts.toml"), text).unwrap();
    RegistryClient::new(RegistryConfig {
        plain_http: plain_http.iter().map(|s| s.to_string()).collect(),
        request_timeout: Duration::from_secs(60),
        canary_timeout: Duration::from_secs(120),
        ..RegistryConfig::default()
    })
    .unwrap()
    .with_runtime_registry(RuntimeRegistry {
        roots: vec![dir.path().to_path_buf()],
        dialect,
        legacy: None,
    })
}

const PULL_RESOLVE: &str = r#""pull", "resolve""#;

async fn walk(
    client: &RegistryClient,
    reference: &str,
    depth: CanaryDepth,
) -> (Result<Probe, RegistryError>, Walk) {
    let password = SecretString::from("walk-Passw0rd-77");
    let auth = ProbeAuth {
        username: "u",
        password: &password,
    };
    let image = ImageRef::parse(&format!("{REGISTRY}/team/app{reference}")).unwrap();
    client.probe_walk(&image, Some(auth), depth).await
}

fn verdicts(walk: &Walk) -> Vec<(String, Verdict)> {
    walk.hosts
        .iter()
        .map(|h| (h.host.clone(), h.verdict))
        .collect()
}

#[tokio::test]
async fn the_hosts_in_order_falling_through_to_the_first_that_serves() {
    let stopped = dead();
    let empty = registry(Script::Status(404)).await;
    let upstream = registry(Script::Serves).await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(
        &dir,
        &[(&stopped, PULL_RESOLVE), (&empty.name(), PULL_RESOLVE)],
        &upstream.name(),
        Dialect::V2,
        &[],
    );
    let (result, walk) = walk(&client, ":v1", CanaryDepth::Blobs).await;
    let probe = result.unwrap();
    assert_eq!(probe.manifest_digest, manifest_digest());
    assert_eq!(
        verdicts(&walk),
        [
            (stopped.clone(), Verdict::Network),
            (empty.name(), Verdict::NotFound),
            (upstream.name(), Verdict::Ok),
        ]
    );
    assert_eq!(walk.node_host(), Some(upstream.name().as_str()));
    // The requests of every host walked are counted: the stopped mirror's one, the empty
    // mirror's three (the ping, the tag's `HEAD` refused, the `GET` that explains it), the
    // upstream's five (the ping, the tag's `HEAD`, the `GET` of the digest it names, two blob
    // `HEAD`s).
    assert_eq!(probe.requests, 1 + 3 + 5, "{:?}", upstream.seen());
}

#[tokio::test]
async fn after_the_answer_later_hosts_are_asked_at_manifest_depth_and_an_endpoint_once() {
    let mirror = registry(Script::Serves).await;
    let upstream = registry(Script::Serves).await;
    let dir = tempfile::tempdir().unwrap();
    // The upstream is listed as a `[host]` too: containerd would ask it twice.
    let client = client(
        &dir,
        &[
            (&mirror.name(), PULL_RESOLVE),
            (&upstream.name(), PULL_RESOLVE),
        ],
        &upstream.name(),
        Dialect::V2,
        &[],
    );
    let (result, walk) = walk(&client, ":v1", CanaryDepth::Blobs).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        verdicts(&walk),
        [(mirror.name(), Verdict::Ok), (upstream.name(), Verdict::Ok),]
    );
    assert_eq!(walk.node_host(), Some(mirror.name().as_str()));
    assert_eq!(
        upstream.seen(),
        ["GET /v2/", "HEAD /v2/team/app/manifests/v1"],
        "no blob asked of a host after the answer, only the manifest's HEAD, the endpoint asked once"
    );
    assert!(mirror.seen().iter().any(|r| r.starts_with("HEAD ")));
}

#[tokio::test]
async fn when_every_host_fails_the_node_reports_by_its_release_line() {
    let empty = registry(Script::Status(404)).await;
    let refusing = registry(Script::Status(401)).await;
    let dir = tempfile::tempdir().unwrap();
    for (dialect, node, verdict) in [
        (Dialect::V1_6, refusing.name(), Verdict::Unauthorized),
        (Dialect::V1_7, refusing.name(), Verdict::Unauthorized),
        (Dialect::V2, empty.name(), Verdict::NotFound),
    ] {
        let client = client(
            &dir,
            &[(&empty.name(), PULL_RESOLVE)],
            &refusing.name(),
            dialect,
            &[],
        );
        let (result, walk) = walk(&client, ":v1", CanaryDepth::Manifest).await;
        assert_eq!(result.unwrap_err().verdict(), verdict, "{dialect:?}");
        assert_eq!(walk.node_host(), Some(node.as_str()), "{dialect:?}");
        assert_eq!(walk.hosts.len(), 2, "{dialect:?}");
    }
}

#[tokio::test]
async fn a_pull_only_mirror_serves_digests_not_tags() {
    let mirror = registry(Script::Serves).await;
    let upstream = registry(Script::Serves).await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(
        &dir,
        &[(&mirror.name(), r#""pull""#)],
        &upstream.name(),
        Dialect::V2,
        &[],
    );
    let (_, by_tag) = walk(&client, ":v1", CanaryDepth::Manifest).await;
    assert_eq!(verdicts(&by_tag), [(upstream.name(), Verdict::Ok)]);
    let (result, by_digest) = walk(
        &client,
        &format!("@{}", manifest_digest()),
        CanaryDepth::Manifest,
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(by_digest.node_host(), Some(mirror.name().as_str()));
}

#[tokio::test]
async fn insecure_registry_replaces_the_upstream_and_keeps_the_mirrors() {
    let stopped = dead();
    let dir = tempfile::tempdir().unwrap();
    // The `server` is elsewhere; `--insecure-registry` names the registry itself, over plain
    // HTTP (which does not resolve here), behind the same mirror.
    let client = client(
        &dir,
        &[(&stopped, PULL_RESOLVE)],
        "127.0.0.1:9",
        Dialect::V2,
        &[REGISTRY],
    );
    let (result, walk) = walk(&client, ":v1", CanaryDepth::Manifest).await;
    assert_eq!(result.unwrap_err().verdict(), Verdict::Network);
    let hosts: Vec<_> = walk.hosts.iter().map(|h| h.host.as_str()).collect();
    assert_eq!(hosts, [stopped.as_str(), REGISTRY]);
}
