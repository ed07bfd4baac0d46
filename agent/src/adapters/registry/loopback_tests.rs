//! The registry adapter against scripted loopback servers: a registry or token realm that never
//! answers, answers too much, or names a realm it should not; the byte budget of `full` depth.
//! Real sockets, short deadlines; every wait is bounded by the adapter's own deadlines, and the
//! tests assert what ended the probe, never how long it took.

#![allow(clippy::unwrap_used)] // test fixtures

use super::*;
use crate::adapters::containerd_config::RuntimeRegistry;
use secrecy::SecretString;
use sha2::{Digest as _, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// What the scripted server does with one request.
enum Reply {
    /// Accepts, reads the request, never answers (keeps the connection open).
    Never,
    /// These bytes, then closes.
    Raw(Vec<u8>),
}

fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    Reply::Raw(bytes)
}

type Handler = dyn Fn(&str, &str, &str) -> Reply + Send + Sync;

struct Server {
    port: u16,
    requests: Arc<AtomicUsize>,
}

impl Server {
    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Serves `handler(method, path, head)` on 127.0.0.1 until the test's runtime ends.
async fn serve(handler: impl Fn(&str, &str, &str) -> Reply + Send + Sync + 'static) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let handler: Arc<Handler> = Arc::new(handler);
    let count = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (handler, count) = (handler.clone(), count.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let head = String::from_utf8_lossy(&head).into_owned();
                let mut words = head.split_whitespace();
                let method = words.next().unwrap_or("").to_string();
                let path = words.next().unwrap_or("").to_string();
                match handler(&method, &path, &head) {
                    Reply::Never => {
                        // Hold the connection until the client gives up.
                        let _ = stream.read(&mut byte).await;
                    }
                    Reply::Raw(bytes) => {
                        let _ = stream.write_all(&bytes).await;
                        let _ = stream.shutdown().await;
                    }
                }
            });
        }
    });
    Server { port, requests }
}

/// A client that reaches `plain_http` (`host:port`) over plain HTTP.
fn client(plain_http: &str, request_timeout: Duration, canary_timeout: Duration) -> RegistryClient {
    RegistryClient::new(RegistryConfig {
        plain_http: vec![plain_http.to_string()],
        request_timeout,
        read_timeout: Duration::from_secs(30),
        canary_timeout,
        ..RegistryConfig::default()
    })
    .unwrap()
}

fn image(host: &str) -> ImageRef {
    ImageRef::parse(&format!("{host}/team/app:v1")).unwrap()
}

const PASSWORD: &str = "unit-Passw0rd-91f2";

async fn probe(
    client: &RegistryClient,
    host: &str,
    depth: CanaryDepth,
) -> Result<Probe, RegistryError> {
    let password = SecretString::from(PASSWORD);
    let auth = ProbeAuth {
        username: "u",
        password: &password,
    };
    client.probe(&image(host), Some(auth), depth).await
}

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_ping_that_never_answers_times_out_naming_the_registry() {
    let server = serve(|_, _, _| Reply::Never).await;
    let host = server.host();
    let err = probe(&client(&host, SHORT, LONG), &host, CanaryDepth::Manifest)
        .await
        .unwrap_err();
    assert_eq!(err.verdict(), Verdict::Network, "{err}");
    assert_eq!(
        err.to_string(),
        format!("registry {host}: /v2/: timed out after 300ms (a slow or stalled registry)")
    );
}

#[tokio::test]
async fn the_canary_deadline_bounds_the_whole_probe_and_says_where_it_stopped() {
    // Each request would be allowed a minute: the canary's own deadline ends it.
    let server = serve(|_, _, _| Reply::Never).await;
    let host = server.host();
    let err = probe(&client(&host, LONG, SHORT), &host, CanaryDepth::Manifest)
        .await
        .unwrap_err();
    assert_eq!(err.verdict(), Verdict::Network, "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "registry {host}: the canary did not finish within 300ms (stopped during the /v2/ ping; see --canary-timeout)"
        )
    );
}

/// A registry on `host` whose `/v2/` challenge sends clients to `realm`, which `token` answers.
async fn token_registry(
    realm: impl Fn(&str) -> String + Send + Sync + 'static,
    token: impl Fn(&str) -> Reply + Send + Sync + 'static,
) -> (Server, Server) {
    let realm_server = serve(move |_, path, head| token(&format!("{path}\n{head}"))).await;
    let realm_url = realm(&realm_server.host());
    let registry = serve(move |_, path, head| {
        if path == "/v2/" {
            let challenge = format!(r#"Bearer realm="{realm_url}",service="test""#);
            return response("401 Unauthorized", &[("WWW-Authenticate", &challenge)], b"");
        }
        if head
            .to_ascii_lowercase()
            .contains("authorization: bearer tok-3e1b")
        {
            response(
                "404 Not Found",
                &[],
                br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"echo tok-3e1b-secret"}]}"#,
            )
        } else {
            response("401 Unauthorized", &[], b"")
        }
    })
    .await;
    (registry, realm_server)
}

#[tokio::test]
async fn a_token_realm_that_never_answers_times_out_naming_it() {
    let (registry, _realm) =
        token_registry(|h| format!("http://{h}/token"), |_| Reply::Never).await;
    let host = registry.host();
    let err = probe(&client(&host, SHORT, LONG), &host, CanaryDepth::Manifest)
        .await
        .unwrap_err();
    assert_eq!(err.verdict(), Verdict::Network, "{err}");
    assert!(
        err.to_string().starts_with(&format!(
            "token service http://{}/token: timed out after 300ms",
            _realm.host()
        )),
        "{err}"
    );
}

#[tokio::test]
async fn the_token_is_sent_as_bearer_and_scrubbed_from_what_the_registry_echoes() {
    let (registry, realm) = token_registry(
        |h| format!("http://{h}/token"),
        |request| {
            // The credential goes to the realm as Basic auth, with the pull scope.
            if request.contains("scope=repository%3Ateam%2Fapp%3Apull")
                && request.contains("service=test")
                && request
                    .to_ascii_lowercase()
                    .contains("authorization: basic ")
            {
                response(
                    "200 OK",
                    &[],
                    br#"{"token":"tok-3e1b-secret","expires_in":60}"#,
                )
            } else {
                response("400 Bad Request", &[], b"")
            }
        },
    )
    .await;
    let host = registry.host();
    // `manifest` depth: the `HEAD`'s 404 has no body; the `GET` that explains it does, and
    // the registry echoes the token in it.
    let err = probe(&client(&host, LONG, LONG), &host, CanaryDepth::Manifest)
        .await
        .unwrap_err();
    assert_eq!(err.verdict(), Verdict::NotFound, "{err}");
    assert_eq!(
        err.to_string(),
        "manifest v1: HTTP 404 MANIFEST_UNKNOWN: echo [REDACTED]"
    );
    assert_eq!(realm.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn what_a_token_realm_sends_is_bounded_and_never_shown() {
    let marker = "MARKER-internal-9d2c";
    let big = vec![b'a'; 50 << 20];
    for (status, body, verdict, expected) in [
        (
            "200 OK",
            big.clone(),
            Verdict::RuntimeError,
            "token service http://H/token: larger than the 1048576-byte limit".to_string(),
        ),
        (
            "401 Unauthorized",
            big,
            Verdict::Unauthorized,
            "token service http://H/token: HTTP 401: Unauthorized".to_string(),
        ),
        (
            "401 Unauthorized",
            format!("<html>{marker}</html>").into_bytes(),
            Verdict::Unauthorized,
            "token service http://H/token: HTTP 401: Unauthorized".to_string(),
        ),
        (
            "200 OK",
            format!(r#"{{"detail":"{marker}"}}"#).into_bytes(),
            Verdict::Unauthorized,
            "authentication failed: token service http://H/token: the answer holds no token"
                .to_string(),
        ),
        (
            "200 OK",
            format!("not json {marker}").into_bytes(),
            Verdict::Unauthorized,
            "authentication failed: token service http://H/token: the answer is not a token (JSON with `token` or `access_token`)".to_string(),
        ),
        (
            "403 Forbidden",
            format!(
                r#"{{"errors":[{{"code":"DENIED","message":"no pull access {}{marker}"}}]}}"#,
                "x".repeat(300)
            )
            .into_bytes(),
            Verdict::Unauthorized,
            format!("token service http://H/token: HTTP 403 DENIED: no pull access {}…", "x".repeat(185)),
        ),
    ] {
        let body = Arc::new(body);
        let (registry, realm) = token_registry(|h| format!("http://{h}/token"), move |_| {
            response(status, &[], &body)
        })
        .await;
        let host = registry.host();
        let err = probe(&client(&host, LONG, LONG), &host, CanaryDepth::Manifest)
            .await
            .unwrap_err();
        let text = err.to_string().replace(&realm.host(), "H");
        assert_eq!((err.verdict(), text.as_str()), (verdict, expected.as_str()));
        assert!(!text.contains(marker) && !text.contains(PASSWORD));
    }
}

/// A registry (plain HTTP, no auth) serving one image whose layer declares `layer_size` bytes; the
/// config blob is real. `HEAD` of the layer answers 200; `GET` of it never ends.
async fn huge_layer_registry(layer_size: u64) -> (Server, String) {
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let config_digest = format!("sha256:{}", hex::encode(Sha256::digest(&config)));
    let layer_digest = format!("sha256:{}", "ab".repeat(32));
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer_digest}","size":{layer_size}}}]}}"#,
        config.len()
    );
    let layer = layer_digest.clone();
    let server = serve(move |method, path, _| {
        if path == "/v2/" {
            response("200 OK", &[], b"{}")
        } else if path.ends_with("/manifests/v1") {
            response("200 OK", &[], manifest.as_bytes())
        } else if path.ends_with(&config_digest) {
            response("200 OK", &[], &config)
        } else if path.ends_with(&layer) && method == "HEAD" {
            Reply::Raw(
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
            )
        } else {
            Reply::Never
        }
    })
    .await;
    (server, layer_digest)
}

#[tokio::test]
async fn full_depth_checks_a_blob_over_the_byte_budget_by_head_only_with_a_warning() {
    let petabyte = 1u64 << 50;
    let (server, layer) = huge_layer_registry(petabyte).await;
    let host = server.host();
    let probe = probe(&client(&host, LONG, LONG), &host, CanaryDepth::Full)
        .await
        .unwrap();
    assert_eq!(probe.blobs, 2, "{probe:?}");
    let [
        CanaryWarning::NotDownloaded {
            blob,
            size,
            left,
            budget,
        },
    ] = &probe.warnings[..]
    else {
        panic!("{probe:?}");
    };
    assert_eq!((blob, *size, *budget), (&layer, petabyte, MAX_CANARY_BYTES));
    assert_eq!(*left, MAX_CANARY_BYTES - probe.bytes);
}

#[test]
fn byte_counts() {
    for (text, want) in [
        ("0", Some(0)),
        ("1073741824", Some(1 << 30)),
        ("1GiB", Some(1 << 30)),
        ("512MiB", Some(512 << 20)),
        ("512 MiB", Some(512 << 20)),
        ("2T", Some(2 << 40)),
        ("64KiB", Some(64 << 10)),
        ("1.5GiB", None),
        ("GiB", None),
        ("-1", None),
        ("1PiB", None),
        ("99999999999TiB", None),
    ] {
        assert_eq!(text.parse::<ByteCount>().ok().map(|b| b.0), want, "{text}");
    }
}

/// A plain-HTTP registry that answers a TLS ClientHello as a Go server does (`400 Bad Request`
/// in plain HTTP), and every HTTP request with a Basic challenge (`401`). Returns its port and
/// the request lines it saw over HTTP.
async fn plain_http_registry() -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let Ok(n) = stream.read(&mut buf).await else {
                    return;
                };
                if n > 0 && buf[0] == 0x16 {
                    let _ = stream
                        .write_all(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
                        .await;
                    return;
                }
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                log.lock()
                    .unwrap()
                    .push(head.lines().next().unwrap_or("").to_string());
                // A registry that echoes a request header into its error message.
                let echoed = head
                    .lines()
                    .find_map(|l| l.strip_prefix("x-route: "))
                    .unwrap_or("")
                    .to_string();
                let body = format!(
                    r#"{{"errors":[{{"code":"UNAUTHORIZED","message":"denied {echoed}"}}]}}"#
                );
                let _ = stream
                    .write_all(
                        format!(
                            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"t\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    (port, seen)
}

fn runtime_client(roots: Vec<std::path::PathBuf>) -> RegistryClient {
    RegistryClient::new(RegistryConfig {
        request_timeout: LONG,
        canary_timeout: LONG,
        ..RegistryConfig::default()
    })
    .unwrap()
    .with_runtime_registry(RuntimeRegistry {
        roots,
        dialect: Dialect::V2,
        legacy: None,
    })
}

#[tokio::test]
async fn a_loopback_registry_without_configuration_is_reached_as_containerd_does() {
    // containerd's default for a loopback registry on a port: HTTPS first, then plain HTTP when
    // the answer is not TLS. No flag, no hosts.toml.
    let (port, seen) = plain_http_registry().await;
    let host = format!("127.0.0.1:{port}");
    let err = probe(&runtime_client(Vec::new()), &host, CanaryDepth::Manifest)
        .await
        .unwrap_err();
    assert_eq!(err.verdict(), Verdict::Unauthorized, "{err}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.first().map(String::as_str),
        Some("GET /v2/ HTTP/1.1"),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.starts_with("HEAD /v2/team/app/manifests/v1 ")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_registry_name_is_routed_by_its_hosts_toml() {
    let (port, seen) = plain_http_registry().await;
    let dir = tempfile::tempdir().unwrap();
    let alias = format!("alias.invalid:{port}");
    std::fs::create_dir_all(dir.path().join(&alias)).unwrap();
    std::fs::write(
        dir.path().join(&alias).join("hosts.toml"),
        format!(
            "server = \"http://127.0.0.1:{port}/prefix\"\n[host.\"http://127.0.0.1:{port}/prefix\"]\n  capabilities = [\"pull\", \"resolve\"]\n  [host.\"http://127.0.0.1:{port}/prefix\".header]\n    X-Route = \"hdr-value-5k\"\n"
        ),
    )
    .unwrap();
    let client = runtime_client(vec![dir.path().to_path_buf()]);
    let err = probe(&client, &alias, CanaryDepth::Manifest)
        .await
        .unwrap_err();
    assert_eq!(err.verdict(), Verdict::Unauthorized, "{err}");
    assert!(!err.to_string().contains("hdr-value-5k"), "{err}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            "GET /prefix/v2/ HTTP/1.1",
            "HEAD /prefix/v2/team/app/manifests/v1 HTTP/1.1",
            // The refusal explained (its body echoes the header, scrubbed above).
            "GET /prefix/v2/team/app/manifests/v1 HTTP/1.1"
        ]
    );
    // --insecure-registry stays an explicit override: the name itself, over plain HTTP (which
    // does not resolve here).
    let overridden = RegistryClient::new(RegistryConfig {
        plain_http: vec![alias.clone()],
        request_timeout: LONG,
        canary_timeout: LONG,
        ..RegistryConfig::default()
    })
    .unwrap()
    .with_runtime_registry(RuntimeRegistry {
        roots: vec![dir.path().to_path_buf()],
        dialect: Dialect::V2,
        legacy: None,
    });
    let err = probe(&overridden, &alias, CanaryDepth::Manifest)
        .await
        .unwrap_err();
    assert_eq!(err.verdict(), Verdict::Network, "{err}");
    assert_eq!(seen.len(), 3);
}

#[tokio::test]
async fn an_https_route_answered_in_plain_http_names_tls_and_the_fix() {
    let (port, seen) = plain_http_registry().await;
    let dir = tempfile::tempdir().unwrap();
    let registry = format!("reg.invalid:{port}");
    std::fs::create_dir_all(dir.path().join(&registry)).unwrap();
    std::fs::write(
        dir.path().join(&registry).join("hosts.toml"),
        format!("server = \"https://127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let err = probe(
        &runtime_client(vec![dir.path().to_path_buf()]),
        &registry,
        CanaryDepth::Manifest,
    )
    .await
    .unwrap_err();
    assert_eq!(err.verdict(), Verdict::Network, "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "registry {registry}: /v2/: TLS with 127.0.0.1:{port} failed: it answered in plain HTTP, not TLS ("
        )),
        "{text}"
    );
    assert!(
        text.ends_with("write `server = \"http://…\"` in the registry's hosts.toml (or pass --insecure-registry)"),
        "{text}"
    );
    assert!(seen.lock().unwrap().is_empty());
}

/// What [`image_registry`] does, changeable while it runs.
#[derive(Clone, Copy, Default)]
struct Script {
    /// `HEAD` of a manifest answered `405 Method Not Allowed`.
    head_405: bool,
    /// `HEAD` of a manifest answered without `Docker-Content-Digest`.
    head_without_digest: bool,
    /// `HEAD` of a manifest names this digest instead of its own.
    head_wrong_digest: bool,
    /// `GET` of the index by digest serves other bytes than the digest's.
    corrupt_index: bool,
    /// Manifests refused (`401`), as after a password rotation.
    refuse: bool,
    /// Manifests answered `429 Too Many Requests`.
    rate_limited: bool,
    /// `HEAD` of a manifest announces 5 MiB.
    head_huge: bool,
    /// Tag `v1` moved to the second index, whose amd64 entry is the second image manifest.
    tag_moved: bool,
}

/// The digests [`image_registry`] serves.
struct Served {
    server: Server,
    index: String,
    manifest: String,
    /// The second index and its amd64 manifest (where `v1` points once `tag_moved`).
    index2: String,
    manifest2: String,
    script: Arc<std::sync::Mutex<Script>>,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Served {
    fn set(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.script.lock().unwrap());
    }

    /// The requests since the last call, as `METHOD path` with digests shortened to `idx`,
    /// `man`, `cfg`, `lay`.
    fn take(&self, digests: &[(&str, &str)]) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
            .into_iter()
            .map(|l| {
                digests
                    .iter()
                    .fold(l, |l, (digest, name)| l.replace(digest, name))
            })
            .collect()
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// A plain-HTTP registry, no auth, serving `team/app`: an OCI index (tag `v1`, and by digest)
/// for linux/amd64 and linux/arm64 whose amd64 entry is an image manifest (tag `single`, and by
/// digest) of a config and one layer; and a second index and image manifest (by digest, and
/// `v1` once [`Script::tag_moved`]) of the same blobs. Logs every request; as distribution
/// does, every manifest answer (`GET` and `HEAD`) names its digest in `Docker-Content-Digest`.
async fn image_registry() -> (Served, Vec<(String, &'static str)>) {
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = b"layer bytes".to_vec();
    let (config_digest, layer_digest) = (sha256(&config), sha256(&layer));
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_TYPE}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    )
    .into_bytes();
    let manifest_digest = sha256(&manifest);
    let other = format!("sha256:{}", "cd".repeat(32));
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX_TYPE}","manifests":[{{"mediaType":"{MANIFEST_TYPE}","digest":"{other}","size":1,"platform":{{"os":"linux","architecture":"arm64"}}}},{{"mediaType":"{MANIFEST_TYPE}","digest":"{manifest_digest}","size":{},"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
        manifest.len()
    )
    .into_bytes();
    let index_digest = sha256(&index);
    // The same image, annotated: another manifest digest, the same blobs.
    let manifest2 = String::from_utf8(manifest.clone())
        .unwrap()
        .replacen('{', r#"{"annotations":{"build":"2"},"#, 1)
        .into_bytes();
    let manifest2_digest = sha256(&manifest2);
    let index2 = format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX_TYPE}","manifests":[{{"mediaType":"{MANIFEST_TYPE}","digest":"{manifest2_digest}","size":{},"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
        manifest2.len()
    )
    .into_bytes();
    let index2_digest = sha256(&index2);
    let script = Arc::new(std::sync::Mutex::new(Script::default()));
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (s, l) = (script.clone(), log.clone());
    let (idx, man, cfg, lay) = (
        index_digest.clone(),
        manifest_digest.clone(),
        config_digest.clone(),
        layer_digest.clone(),
    );
    let (idx2, man2) = (index2_digest.clone(), manifest2_digest.clone());
    let server = serve(move |method, path, _| {
        l.lock().unwrap().push(format!("{method} {path}"));
        let script = *s.lock().unwrap();
        let head = method == "HEAD";
        // A HEAD's answer: the GET's headers, no body.
        let answer = |media_type: &str, body: &[u8], digest: &str| {
            let digest = if script.head_wrong_digest && head {
                format!("sha256:{}", "ee".repeat(32))
            } else {
                digest.to_string()
            };
            let length = if head && script.head_huge {
                5 << 20
            } else {
                body.len()
            };
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {media_type}\r\nContent-Length: {length}\r\n"
            );
            if !(head && script.head_without_digest) {
                out.push_str(&format!("Docker-Content-Digest: {digest}\r\n"));
            }
            out.push_str("Connection: close\r\n\r\n");
            let mut bytes = out.into_bytes();
            if !head {
                bytes.extend_from_slice(body);
            }
            Reply::Raw(bytes)
        };
        if path == "/v2/" {
            return response("200 OK", &[], b"{}");
        }
        if let Some(reference) = path.strip_prefix("/v2/team/app/manifests/") {
            if script.refuse {
                return response(
                    "401 Unauthorized",
                    &[],
                    br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                );
            }
            if script.rate_limited {
                return response(
                    "429 Too Many Requests",
                    &[],
                    br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"pull rate limit"}]}"#,
                );
            }
            if head && script.head_405 {
                return response("405 Method Not Allowed", &[], b"");
            }
            return if (reference == "v1" && script.tag_moved) || reference == idx2 {
                answer(INDEX_TYPE, &index2, &idx2)
            } else if reference == man2 {
                answer(MANIFEST_TYPE, &manifest2, &man2)
            } else if reference == "v1" || reference == idx {
                if script.corrupt_index && reference == idx && !head {
                    let mut other = index.clone();
                    other.push(b' ');
                    answer(INDEX_TYPE, &other, &idx)
                } else {
                    answer(INDEX_TYPE, &index, &idx)
                }
            } else if reference == "single" || reference == man {
                answer(MANIFEST_TYPE, &manifest, &man)
            } else {
                response(
                    "404 Not Found",
                    &[],
                    br#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#,
                )
            };
        }
        if let Some(digest) = path.strip_prefix("/v2/team/app/blobs/") {
            let body = if digest == cfg {
                &config
            } else if digest == lay {
                &layer
            } else {
                return response("404 Not Found", &[], b"");
            };
            return answer("application/octet-stream", body, digest);
        }
        response("404 Not Found", &[], b"")
    })
    .await;
    let names = vec![
        (index_digest.clone(), "idx"),
        (manifest_digest.clone(), "man"),
        (index2_digest.clone(), "idx2"),
        (manifest2_digest.clone(), "man2"),
        (config_digest, "cfg"),
        (layer_digest, "lay"),
    ];
    (
        Served {
            server,
            index: index_digest,
            manifest: manifest_digest,
            index2: index2_digest,
            manifest2: manifest2_digest,
            script,
            log,
        },
        names,
    )
}

/// A client of `host` over plain HTTP, for linux/amd64.
fn amd64_client(host: &str) -> RegistryClient {
    RegistryClient::new(RegistryConfig {
        plain_http: vec![host.to_string()],
        request_timeout: LONG,
        canary_timeout: LONG,
        platform: "linux/amd64".parse().unwrap(),
        ..RegistryConfig::default()
    })
    .unwrap()
}

async fn probe_ref(
    client: &RegistryClient,
    reference: &str,
    depth: CanaryDepth,
) -> Result<Probe, RegistryError> {
    let password = SecretString::from(PASSWORD);
    let auth = ProbeAuth {
        username: "u",
        password: &password,
    };
    client
        .probe(&ImageRef::parse(reference).unwrap(), Some(auth), depth)
        .await
}

/// Two probes of one client (the first, then the steady state): each one's requests.
async fn first_and_steady(
    registry: &Served,
    names: &[(String, &str)],
    reference: &str,
    depth: CanaryDepth,
) -> [Vec<String>; 2] {
    let names: Vec<(&str, &str)> = names.iter().map(|(d, n)| (d.as_str(), *n)).collect();
    let client = amd64_client(&registry.server.host());
    let mut out = [Vec::new(), Vec::new()];
    for seen in &mut out {
        let probe = probe_ref(&client, reference, depth).await.unwrap();
        assert_eq!(probe.manifest_digest, registry.manifest, "{depth:?}");
        *seen = registry.take(&names);
        assert_eq!(probe.requests as usize, seen.len(), "{depth:?}: {seen:?}");
    }
    out
}

fn lines(text: &[&str]) -> Vec<String> {
    text.iter().map(|l| l.to_string()).collect()
}

#[tokio::test]
async fn a_pinned_index_costs_manifest_gets_once_then_heads_only_at_every_depth() {
    let (registry, names) = image_registry().await;
    let reference = format!("{}/team/app@{}", registry.server.host(), registry.index);
    for (depth, first, steady) in [
        (
            CanaryDepth::Manifest,
            vec!["GET /v2/", "HEAD m idx", "GET m idx", "HEAD m man"],
            vec!["GET /v2/", "HEAD m idx", "HEAD m man"],
        ),
        (
            CanaryDepth::Blobs,
            vec![
                "GET /v2/",
                "GET m idx",
                "GET m man",
                "HEAD b cfg",
                "HEAD b lay",
            ],
            vec![
                "GET /v2/",
                "HEAD m idx",
                "HEAD m man",
                "HEAD b cfg",
                "HEAD b lay",
            ],
        ),
        (
            CanaryDepth::Full,
            vec![
                "GET /v2/",
                "GET m idx",
                "GET m man",
                "GET b cfg",
                "GET b lay",
            ],
            vec![
                "GET /v2/",
                "HEAD m idx",
                "HEAD m man",
                "GET b cfg",
                "GET b lay",
            ],
        ),
    ] {
        let got = first_and_steady(&registry, &names, &reference, depth).await;
        assert_eq!(got, [expand(&first), expand(&steady)], "{depth:?}");
    }
}

/// Request lines as the tests write them: `HEAD m v1` is the `HEAD` of `team/app`'s manifest
/// `v1`, `GET b cfg` the `GET` of its blob `cfg`.
fn expand(text: &[&str]) -> Vec<String> {
    text.iter()
        .map(|l| {
            l.replace(" m ", " /v2/team/app/manifests/")
                .replace(" b ", " /v2/team/app/blobs/")
        })
        .collect()
}

#[tokio::test]
async fn a_tag_is_headed_every_time_and_the_body_of_the_digest_it_names_fetched_once() {
    let (registry, names) = image_registry().await;
    let host = registry.server.host();
    // containerd's way: the tag's `HEAD` says which digest it names now; that digest's body is
    // fetched by digest once, then read from the cache. No manifest `GET` in the steady state.
    for (tag, depth, first, steady) in [
        (
            "v1",
            CanaryDepth::Manifest,
            &["GET /v2/", "HEAD m v1", "GET m idx", "HEAD m man"][..],
            &["GET /v2/", "HEAD m v1", "HEAD m man"][..],
        ),
        (
            "v1",
            CanaryDepth::Blobs,
            &[
                "GET /v2/",
                "HEAD m v1",
                "GET m idx",
                "GET m man",
                "HEAD b cfg",
                "HEAD b lay",
            ][..],
            &[
                "GET /v2/",
                "HEAD m v1",
                "HEAD m man",
                "HEAD b cfg",
                "HEAD b lay",
            ][..],
        ),
        (
            "v1",
            CanaryDepth::Full,
            &[
                "GET /v2/",
                "HEAD m v1",
                "GET m idx",
                "GET m man",
                "GET b cfg",
                "GET b lay",
            ][..],
            &[
                "GET /v2/",
                "HEAD m v1",
                "HEAD m man",
                "GET b cfg",
                "GET b lay",
            ][..],
        ),
        // An image manifest by tag: at `manifest` depth its `HEAD` alone, every time.
        (
            "single",
            CanaryDepth::Manifest,
            &["GET /v2/", "HEAD m single"][..],
            &["GET /v2/", "HEAD m single"][..],
        ),
        (
            "single",
            CanaryDepth::Blobs,
            &[
                "GET /v2/",
                "HEAD m single",
                "GET m man",
                "HEAD b cfg",
                "HEAD b lay",
            ][..],
            &["GET /v2/", "HEAD m single", "HEAD b cfg", "HEAD b lay"][..],
        ),
    ] {
        let got =
            first_and_steady(&registry, &names, &format!("{host}/team/app:{tag}"), depth).await;
        assert_eq!(got, [expand(first), expand(steady)], "{tag} {depth:?}");
    }
}

/// One probe of `reference` by `client`, which must succeed: its manifest digest and its
/// requests (digests named).
async fn probe_seen(
    client: &RegistryClient,
    registry: &Served,
    names: &[(String, &str)],
    reference: &str,
    depth: CanaryDepth,
) -> (String, Vec<String>) {
    let names: Vec<(&str, &str)> = names.iter().map(|(d, n)| (d.as_str(), *n)).collect();
    let probe = probe_ref(client, reference, depth).await.unwrap();
    let seen = registry.take(&names);
    assert_eq!(probe.requests as usize, seen.len(), "{seen:?}");
    (probe.manifest_digest, seen)
}

#[tokio::test]
async fn a_tag_that_moves_is_followed_to_its_new_digest_never_served_the_old_body() {
    let (registry, names) = image_registry().await;
    let host = registry.server.host();
    let client = amd64_client(&host);
    let reference = format!("{host}/team/app:v1");
    let (digest, _) = probe_seen(&client, &registry, &names, &reference, CanaryDepth::Blobs).await;
    assert_eq!(digest, registry.manifest);
    // `v1` now names the second index: its body (and its platform's manifest) fetched, though
    // the old index's body is cached.
    registry.set(|s| s.tag_moved = true);
    let got = probe_seen(&client, &registry, &names, &reference, CanaryDepth::Blobs).await;
    let moved = expand(&[
        "GET /v2/",
        "HEAD m v1",
        "GET m idx2",
        "GET m man2",
        "HEAD b cfg",
        "HEAD b lay",
    ]);
    assert_eq!(got, (registry.manifest2.clone(), moved));
    let got = probe_seen(
        &client,
        &registry,
        &names,
        &reference,
        CanaryDepth::Manifest,
    )
    .await;
    let steady = expand(&["GET /v2/", "HEAD m v1", "HEAD m man2"]);
    assert_eq!(got, (registry.manifest2.clone(), steady));
    // Moved back: the first index, whose body is still cached (by its digest, not by the tag).
    registry.set(|s| s.tag_moved = false);
    let got = probe_seen(
        &client,
        &registry,
        &names,
        &reference,
        CanaryDepth::Manifest,
    )
    .await;
    let back = expand(&["GET /v2/", "HEAD m v1", "HEAD m man"]);
    assert_eq!(got, (registry.manifest.clone(), back));
    assert_ne!(registry.index, registry.index2);
}

#[tokio::test]
async fn a_head_refused_with_405_or_a_tag_without_a_digest_falls_back_to_get_as_containerd() {
    let (registry, names) = image_registry().await;
    let host = registry.server.host();
    let m = "/v2/team/app/manifests/";
    let names: Vec<(&str, &str)> = names.iter().map(|(d, n)| (d.as_str(), *n)).collect();
    // 405: every HEAD of a manifest is followed by its GET; the probe succeeds.
    registry.set(|s| s.head_405 = true);
    let client = amd64_client(&host);
    let probe = probe_ref(
        &client,
        &format!("{host}/team/app@{}", registry.index),
        CanaryDepth::Manifest,
    )
    .await
    .unwrap();
    assert_eq!(probe.manifest_digest, registry.manifest);
    assert_eq!(
        registry.take(&names),
        lines(&[
            "GET /v2/",
            &format!("HEAD {m}idx"),
            &format!("GET {m}idx"),
            &format!("HEAD {m}man"),
            &format!("GET {m}man"),
        ])
    );
    // No Docker-Content-Digest: a tag needs the GET to know its digest; a pinned digest is its
    // own (containerd trusts the reference's digest), so its HEAD is enough.
    registry.set(|s| {
        s.head_405 = false;
        s.head_without_digest = true;
    });
    let probe = probe_ref(
        &client,
        &format!("{host}/team/app:single"),
        CanaryDepth::Manifest,
    )
    .await
    .unwrap();
    assert_eq!(probe.manifest_digest, registry.manifest);
    assert_eq!(
        registry.take(&names),
        lines(&[
            "GET /v2/",
            &format!("HEAD {m}single"),
            &format!("GET {m}single")
        ])
    );
    let probe = probe_ref(
        &client,
        &format!("{host}/team/app@{}", registry.manifest),
        CanaryDepth::Manifest,
    )
    .await
    .unwrap();
    assert_eq!(probe.manifest_digest, registry.manifest);
    assert_eq!(
        registry.take(&names),
        lines(&["GET /v2/", &format!("HEAD {m}man")])
    );
}

#[tokio::test]
async fn a_head_naming_another_digest_is_a_digest_mismatch() {
    let (registry, _) = image_registry().await;
    let host = registry.server.host();
    registry.set(|s| s.head_wrong_digest = true);
    let reference = format!("{host}/team/app@{}", registry.manifest);
    let err = probe_ref(&amd64_client(&host), &reference, CanaryDepth::Manifest)
        .await
        .unwrap_err();
    assert_eq!(err.verdict(), Verdict::DigestMismatch, "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "manifest {0}: digest mismatch: expected {0}, got sha256:{1}",
            registry.manifest,
            "ee".repeat(32)
        )
    );
}

#[tokio::test]
async fn a_body_that_does_not_match_its_digest_is_refused_and_never_cached() {
    let (registry, names) = image_registry().await;
    let host = registry.server.host();
    let names: Vec<(&str, &str)> = names.iter().map(|(d, n)| (d.as_str(), *n)).collect();
    registry.set(|s| s.corrupt_index = true);
    let client = amd64_client(&host);
    // Pinned, and by a tag whose `HEAD` names the index: the body fetched by that digest is
    // checked against it alike.
    for (reference, seen) in [
        (
            format!("{host}/team/app@{}", registry.index),
            expand(&["GET /v2/", "GET m idx"]),
        ),
        (
            format!("{host}/team/app:v1"),
            expand(&["GET /v2/", "HEAD m v1", "GET m idx"]),
        ),
    ] {
        for _ in 0..2 {
            let err = probe_ref(&client, &reference, CanaryDepth::Blobs)
                .await
                .unwrap_err();
            assert_eq!(err.verdict(), Verdict::DigestMismatch, "{reference}: {err}");
            let text = err.to_string();
            assert!(
                text.starts_with(&format!(
                    "manifest {0}: digest mismatch: expected {0}, got sha256:",
                    registry.index
                )),
                "{reference}: {text}"
            );
            // Each probe GETs it again: nothing was cached.
            assert_eq!(registry.take(&names), seen, "{reference}");
        }
    }
}

#[tokio::test]
async fn a_cached_body_never_answers_for_the_registry() {
    let (registry, names) = image_registry().await;
    let host = registry.server.host();
    let names: Vec<(&str, &str)> = names.iter().map(|(d, n)| (d.as_str(), *n)).collect();
    let client = amd64_client(&host);
    let reference = format!("{host}/team/app@{}", registry.index);
    for depth in [CanaryDepth::Blobs, CanaryDepth::Manifest] {
        registry.set(|s| s.refuse = false);
        probe_ref(&client, &reference, depth).await.unwrap();
        // Both bodies cached; the credential stops working: the manifest's HEAD says so.
        registry.set(|s| s.refuse = true);
        registry.take(&names);
        let err = probe_ref(&client, &reference, depth).await.unwrap_err();
        assert_eq!(err.verdict(), Verdict::Unauthorized, "{depth:?}: {err}");
        // The refused HEAD explained by a GET of the same URL (its error body).
        assert_eq!(
            err.to_string(),
            format!(
                "manifest {}: HTTP 401 UNAUTHORIZED: authentication required",
                registry.index
            )
        );
        assert_eq!(
            registry.take(&names),
            lines(&[
                "GET /v2/",
                "HEAD /v2/team/app/manifests/idx",
                "GET /v2/team/app/manifests/idx"
            ]),
            "{depth:?}"
        );
    }
}

#[tokio::test]
async fn a_rate_limited_head_gets_no_further_request() {
    let (registry, names) = image_registry().await;
    let host = registry.server.host();
    let names: Vec<(&str, &str)> = names.iter().map(|(d, n)| (d.as_str(), *n)).collect();
    registry.set(|s| s.rate_limited = true);
    let reference = format!("{host}/team/app@{}", registry.index);
    let err = probe_ref(&amd64_client(&host), &reference, CanaryDepth::Manifest)
        .await
        .unwrap_err();
    assert_eq!(err.verdict(), Verdict::RateLimited, "{err}");
    assert_eq!(
        registry.take(&names),
        lines(&["GET /v2/", "HEAD /v2/team/app/manifests/idx"])
    );
}

#[tokio::test]
async fn a_head_announcing_a_manifest_over_the_limit_is_refused_as_containerd_does() {
    let (registry, names) = image_registry().await;
    let host = registry.server.host();
    let names: Vec<(&str, &str)> = names.iter().map(|(d, n)| (d.as_str(), *n)).collect();
    registry.set(|s| s.head_huge = true);
    let reference = format!("{host}/team/app@{}", registry.manifest);
    let err = probe_ref(&amd64_client(&host), &reference, CanaryDepth::Manifest)
        .await
        .unwrap_err();
    assert_eq!(err.verdict(), Verdict::RuntimeError, "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "manifest {}: larger than the 4194304-byte limit",
            registry.manifest
        )
    );
    assert_eq!(
        registry.take(&names),
        lines(&["GET /v2/", "HEAD /v2/team/app/manifests/man"])
    );
}
