//! The containerd release line under test (`PULLGATE_TEST_CONTAINERD=1.6|1.7|2.1`) as the agent
//! sees it: the words it uses for every failure a pull can meet and the verdict the agent draws
//! from them, whether a cached image's `PullImage` still goes to the registry with the credential
//! (the runtime canary depends on it), and what `ImageStatus`/`ListImages` report.
//!
//! Each release's words are pinned here, so a message that changes between releases fails the
//! run for the release that changed it, naming it, instead of quietly becoming a wrong verdict.

use pullgate::decide::runtime::{ImageRuntime as _, PullAuth, RuntimeFailure};
use pullgate::model::verdict::Verdict;
use pullgate_testenv::containerd::{Options, Release};
use pullgate_testenv::proxy::{Mode, Proxy};
use pullgate_testenv::tls::UntrustedTlsServer;
use pullgate_testenv::{
    Containerd, ImageSpec, PASSWORD, Registry, USER, WRONG_PASSWORD, block_on, images,
};
use secrecy::SecretString;

/// One failure: the verdict it must get and the words each release uses for it.
struct Case {
    name: &'static str,
    verdict: Verdict,
    /// Phrases the runtime's message holds, per release (1.6, 1.7, 2.1).
    says: [&'static [&'static str]; 3],
}

fn says(case: &Case, release: Release) -> &'static [&'static str] {
    match release {
        Release::V1_6 => case.says[0],
        Release::V1_7 => case.says[1],
        Release::V2_1 => case.says[2],
    }
}

/// 1.6 reports an HTTP status as `pulling from host … failed with status code [manifests v1]`, 1.7
/// and 2.1 as `unexpected status from HEAD request to …`; 2.1's CRI pulls through the transfer
/// service, which says `failed to resolve image` where 1.x says `failed to resolve reference`.
const CASES: &[Case] = &[
    Case {
        name: "wrong password (401)",
        verdict: Verdict::Unauthorized,
        says: [
            &[
                "failed to resolve reference",
                "failed with status code [manifests v1]: 401 Unauthorized",
            ],
            &[
                "failed to resolve reference",
                "unexpected status from HEAD request to",
                "401 Unauthorized",
            ],
            &[
                "failed to resolve image:",
                "unexpected status from HEAD request to",
                "401 Unauthorized",
            ],
        ],
    },
    Case {
        name: "no credential (401)",
        verdict: Verdict::Unauthorized,
        says: [
            &[
                "failed to resolve reference",
                "failed with status code [manifests v1]: 401 Unauthorized",
            ],
            &[
                "failed to resolve reference",
                "pull access denied",
                "authorization failed: no basic auth credentials",
            ],
            &[
                "failed to resolve image:",
                "pull access denied",
                "authorization failed: no basic auth credentials",
            ],
        ],
    },
    Case {
        name: "forbidden (403)",
        verdict: Verdict::Unauthorized,
        says: [
            &["failed with status code [manifests v1]: 403 Forbidden"],
            &[
                "failed to resolve reference",
                "unexpected status from HEAD request to",
                "403 Forbidden",
            ],
            &[
                "failed to resolve image:",
                "unexpected status from HEAD request to",
                "403 Forbidden",
            ],
        ],
    },
    Case {
        name: "missing tag (404)",
        verdict: Verdict::NotFound,
        says: [
            &[
                "failed to resolve reference",
                "/versions/app:absent: not found",
            ],
            &[
                "failed to resolve reference",
                "/versions/app:absent: not found",
            ],
            &[
                "failed to resolve image:",
                "/versions/app:absent: not found",
            ],
        ],
    },
    Case {
        name: "missing digest (404)",
        verdict: Verdict::NotFound,
        says: [
            &[
                "failed to resolve reference",
                "/versions/app@sha256:0000",
                ": not found",
            ],
            &[
                "failed to resolve reference",
                "/versions/app@sha256:0000",
                ": not found",
            ],
            &[
                "failed to resolve image:",
                "/versions/app@sha256:0000",
                ": not found",
            ],
        ],
    },
    Case {
        name: "rate limited (429)",
        verdict: Verdict::RateLimited,
        says: [
            &["failed with status code [manifests v1]: 429 Too Many Requests"],
            &[
                "unexpected status from HEAD request to",
                "429 Too Many Requests",
            ],
            &[
                "failed to resolve image:",
                "unexpected status from HEAD request to",
                "429 Too Many Requests",
            ],
        ],
    },
    Case {
        name: "unavailable (503)",
        verdict: Verdict::Network,
        says: [
            &["failed with status code [manifests v1]: 503 Service Unavailable"],
            &[
                "unexpected status from HEAD request to",
                "503 Service Unavailable",
            ],
            &[
                "failed to resolve image:",
                "unexpected status from HEAD request to",
                "503 Service Unavailable",
            ],
        ],
    },
    Case {
        name: "connection reset",
        verdict: Verdict::Network,
        says: [
            &[
                "failed to resolve reference",
                "failed to do request: Head",
                "read: connection reset by peer",
            ],
            &[
                "failed to resolve reference",
                "failed to do request: Head",
                "read: connection reset by peer",
            ],
            &[
                "failed to resolve image:",
                "failed to do request: Head",
                "read: connection reset by peer",
            ],
        ],
    },
    Case {
        name: "connection refused",
        verdict: Verdict::Network,
        says: [
            &[
                "failed to resolve reference",
                "failed to do request: Head",
                "connect: connection refused",
            ],
            &[
                "failed to resolve reference",
                "failed to do request: Head",
                "connect: connection refused",
            ],
            &[
                "failed to resolve image:",
                "failed to do request: Head",
                "connect: connection refused",
            ],
        ],
    },
    Case {
        name: "untrusted certificate (TLS)",
        verdict: Verdict::Network,
        says: [
            // Built with an older Go, whose message has no `tls: failed to verify certificate`.
            &[
                "failed to do request: Head \"https://",
                "x509: certificate signed by unknown authority",
            ],
            &[
                "failed to do request: Head \"https://",
                "tls: failed to verify certificate: x509: certificate signed by unknown authority",
            ],
            &[
                "failed to do request: Head \"https://",
                "tls: failed to verify certificate: x509: certificate signed by unknown authority",
            ],
        ],
    },
    Case {
        name: "layer digest does not match",
        verdict: Verdict::DigestMismatch,
        says: [
            &[
                "failed commit on ref \"layer-sha256:",
                "unexpected commit digest",
                "failed precondition",
            ],
            &[
                "failed commit on ref \"layer-sha256:",
                "unexpected commit digest",
                "failed precondition",
            ],
            &[
                "failed commit on ref \"layer-sha256:",
                "unexpected commit digest",
                "failed precondition",
            ],
        ],
    },
];

#[test]
fn every_pull_failure_gets_its_verdict_from_this_release_s_words() {
    let registry = Registry::start(&[(USER, PASSWORD)]).unwrap();
    let proxy = Proxy::start(&registry.host()).unwrap();
    let refused = format!(
        "127.0.0.1:{}",
        pullgate_testenv::process::free_port().unwrap()
    );
    let tls = UntrustedTlsServer::start().unwrap();
    let containerd = Containerd::start_with(
        &[registry.host(), proxy.host(), refused.clone()],
        &Options {
            https: vec![tls.host()],
            ..Options::default()
        },
    )
    .unwrap();
    let release = containerd.release();
    let host = registry.host();
    let push = |spec: &ImageSpec| block_on(images::push(&host, USER, PASSWORD, spec)).unwrap();
    let app = push(&ImageSpec::new("versions/app", "v1").with_layers(&[50_000]));
    let corrupt = push(&ImageSpec::new("versions/corrupt", "v1").with_layers(&[50_000]));
    let layer = registry.blob_path(&corrupt.layer_digests[0]);
    let mut bytes = std::fs::read(&layer).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&layer, bytes).unwrap();

    let good = SecretString::from(PASSWORD);
    let wrong = SecretString::from(WRONG_PASSWORD);
    let through_proxy = app.by_tag.replace(&registry.host(), &proxy.host());
    let absent_digest = format!("{}@sha256:{}", app.name, "0".repeat(64));
    let failures: Vec<RuntimeFailure> = block_on(async {
        let cri = containerd.cri();
        let pull = async |image: &str, password: Option<&SecretString>| -> RuntimeFailure {
            cri.pull_image(
                image,
                password.map(|password| PullAuth {
                    username: USER,
                    password,
                }),
            )
            .await
            .expect_err(&format!("pulling {image} must fail"))
        };
        let mut failures = Vec::new();
        for case in CASES {
            let failure = match case.name {
                "wrong password (401)" => pull(&app.by_tag, Some(&wrong)).await,
                "no credential (401)" => pull(&app.by_tag, None).await,
                "forbidden (403)" => {
                    proxy.set_mode(Mode::Forbidden);
                    pull(&through_proxy, Some(&good)).await
                }
                "missing tag (404)" => pull(&format!("{}:absent", app.name), Some(&good)).await,
                "missing digest (404)" => pull(&absent_digest, Some(&good)).await,
                "rate limited (429)" => {
                    proxy.set_mode(Mode::TooManyRequests);
                    pull(&through_proxy, Some(&good)).await
                }
                "unavailable (503)" => {
                    proxy.set_mode(Mode::Unavailable);
                    pull(&through_proxy, Some(&good)).await
                }
                "connection reset" => {
                    proxy.set_mode(Mode::Reset);
                    pull(&through_proxy, Some(&good)).await
                }
                "connection refused" => {
                    pull(&format!("{refused}/versions/app:v1"), Some(&good)).await
                }
                "untrusted certificate (TLS)" => {
                    pull(&format!("{}/versions/app:v1", tls.host()), Some(&good)).await
                }
                "layer digest does not match" => pull(&corrupt.by_tag, Some(&good)).await,
                other => panic!("no way to provoke `{other}`"),
            };
            failures.push(failure);
        }
        // The good credential still pulls, through the proxy and directly.
        proxy.set_mode(Mode::Pass);
        for image in [&through_proxy, &app.by_tag] {
            cri.pull_image(
                image,
                Some(PullAuth {
                    username: USER,
                    password: &good,
                }),
            )
            .await
            .unwrap_or_else(|e| panic!("{image}: {e}"));
        }
        failures
    });
    let mut wrong_answers = Vec::new();
    for (case, failure) in CASES.iter().zip(&failures) {
        let message = failure.to_string();
        for secret in [PASSWORD, WRONG_PASSWORD] {
            assert!(
                !message.contains(secret),
                "{}: a password in {message}",
                case.name
            );
        }
        let phrases = says(case, release);
        eprintln!(
            "{} | {} | {:?} | {message}",
            release.line(),
            case.name,
            failure.verdict()
        );
        if failure.verdict() != case.verdict {
            wrong_answers.push(format!(
                "{}: verdict {:?}, expected {:?}, from: {message}",
                case.name,
                failure.verdict(),
                case.verdict
            ));
        }
        for phrase in phrases.iter().filter(|p| !message.contains(**p)) {
            wrong_answers.push(format!(
                "{}: containerd {} no longer says {phrase:?}; it says: {message}",
                case.name,
                containerd.version()
            ));
        }
    }
    let log = containerd.log();
    assert!(
        !log.contains(PASSWORD) && !log.contains(WRONG_PASSWORD),
        "a password in containerd's log"
    );
    assert!(
        wrong_answers.is_empty(),
        "containerd {} (PULLGATE_TEST_CONTAINERD={}):\n{}",
        containerd.version(),
        release.line(),
        wrong_answers.join("\n")
    );
}

/// The runtime canary relies on this: containerd resolves a cached image's reference against the
/// registry on every `PullImage`, with the credential the call carries, so a cached image does not
/// hide a credential that stopped working. And `ImageStatus`/`ListImages` report the same image
/// alike: its id, tag and repo digest, its size, and whether the CRI pins it (the sandbox image,
/// from 1.7 on; 1.6 pins nothing).
#[test]
fn a_cached_image_is_resolved_again_with_the_call_s_credential_and_reported_alike() {
    let registry = Registry::start(&[(USER, PASSWORD)]).unwrap();
    let host = registry.host();
    let push = |spec: &ImageSpec| block_on(images::push(&host, USER, PASSWORD, spec)).unwrap();
    let app = push(&ImageSpec::new("versions/app", "v1").with_layers(&[30_000, 20_000]));
    let pause = push(&ImageSpec::new("versions/pause", "3.10").with_layers(&[1_000]));
    let containerd = Containerd::start_with(
        &[registry.host()],
        &Options {
            sandbox_image: Some(pause.by_tag.clone()),
            ..Options::default()
        },
    )
    .unwrap();
    let release = containerd.release();
    let good = SecretString::from(PASSWORD);
    let wrong = SecretString::from(WRONG_PASSWORD);
    let auth = |password| {
        Some(PullAuth {
            username: USER,
            password,
        })
    };
    block_on(async {
        let cri = containerd.cri();
        let id = cri.pull_image(&app.by_tag, auth(&good)).await.unwrap();
        assert_eq!(id, app.config_digest);
        // Cached now; still every pull goes to the registry with the call's credential.
        for (password, by) in [(Some(&wrong), "a wrong password"), (None, "no credential")] {
            for image in [&app.by_tag, &app.by_digest] {
                let failure = cri
                    .pull_image(image, password.and_then(auth))
                    .await
                    .expect_err(&format!(
                        "containerd {}: a cached {image} pulled with {by}",
                        containerd.version()
                    ));
                assert_eq!(failure.verdict(), Verdict::Unauthorized, "{failure}");
            }
        }
        assert_eq!(
            cri.pull_image(&app.by_digest, auth(&good)).await.unwrap(),
            id
        );

        let status = cri.image_status(&app.by_tag).await.unwrap().unwrap();
        assert_eq!(status.id, app.config_digest);
        assert_eq!(status.repo_tags, vec![app.by_tag.clone()]);
        assert_eq!(status.repo_digests, vec![app.by_digest.clone()]);
        // The image's content as stored: manifest, config and compressed layers.
        let blobs = [&app.digest, &app.config_digest]
            .into_iter()
            .chain(&app.layer_digests)
            .map(|digest| std::fs::metadata(registry.blob_path(digest)).unwrap().len())
            .sum::<u64>();
        assert_eq!(
            status.size,
            blobs,
            "containerd {}: ImageStatus size",
            containerd.version()
        );
        assert_eq!(
            cri.image_status(&app.by_digest).await.unwrap(),
            Some(status.clone())
        );
        let listed = cri.list_images().await.unwrap();
        assert_eq!(listed.iter().find(|i| i.id == id), Some(&status));

        cri.pull_image(&pause.by_tag, auth(&good)).await.unwrap();
        let pinned = raw_pinned(&containerd, &[&app.by_tag, &pause.by_tag]).await;
        let pins_sandbox = release >= Release::V1_7;
        assert_eq!(
            pinned,
            vec![false, pins_sandbox],
            "containerd {}: `pinned` of [app, sandbox image]",
            containerd.version()
        );
    });
}

/// `pinned` from the CRI's own `ImageStatus` and `ListImages`, which must agree.
async fn raw_pinned(containerd: &Containerd, images: &[&str]) -> Vec<bool> {
    use k8s_cri::v1::image_service_client::ImageServiceClient;
    use k8s_cri::v1::{ImageSpec as CriImage, ImageStatusRequest, ListImagesRequest};
    let endpoint = containerd
        .endpoint()
        .parse()
        .expect("the harness's endpoint parses");
    let channel = pullgate::adapters::cri::connect(&endpoint, std::time::Duration::from_secs(5));
    let mut client = ImageServiceClient::new(channel);
    let listed = client
        .list_images(ListImagesRequest { filter: None })
        .await
        .expect("ListImages")
        .into_inner()
        .images;
    let mut pinned = Vec::new();
    for image in images {
        let status = client
            .image_status(ImageStatusRequest {
                image: Some(CriImage {
                    image: image.to_string(),
                    ..CriImage::default()
                }),
                verbose: false,
            })
            .await
            .expect("ImageStatus")
            .into_inner()
            .image
            .unwrap_or_else(|| panic!("{image} is present"));
        let in_list = listed
            .iter()
            .find(|i| i.id == status.id)
            .unwrap_or_else(|| panic!("{image} is listed"));
        assert_eq!(
            in_list.pinned, status.pinned,
            "{image}: ListImages and ImageStatus"
        );
        pinned.push(status.pinned);
    }
    pinned
}
