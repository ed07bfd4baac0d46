//! The CRI adapter's calls against a real containerd.

use pullgate::decide::runtime::{ImageRuntime as _, PullAuth, RuntimeFailure};
use pullgate::model::verdict::Verdict;
use pullgate_testenv::{ImageSpec, PASSWORD, TestEnv, USER, block_on};
use secrecy::SecretString;

#[test]
fn every_cri_call_works_against_containerd() {
    let env = TestEnv::started();
    let image = env
        .push(&ImageSpec::new("cri/app", "v1").with_layers(&[200_000]))
        .unwrap();
    block_on(async {
        let cri = env.containerd.cri();
        let version = cri.version().await.unwrap();
        assert_eq!(version.runtime_name, "containerd");
        assert_eq!(version.runtime_api_version, "v1");

        assert_eq!(cri.image_status(&image.by_tag).await.unwrap(), None);
        let password = SecretString::from(PASSWORD);
        let id = cri
            .pull_image(
                &image.by_tag,
                Some(PullAuth {
                    username: USER,
                    password: &password,
                }),
            )
            .await
            .unwrap();
        assert_eq!(id, image.config_digest);
        let status = cri
            .image_status(&image.by_tag)
            .await
            .unwrap()
            .expect("present after pull");
        assert_eq!(status.repo_digests, vec![image.by_digest.clone()]);
        assert!(cri.list_images().await.unwrap().iter().any(|i| i.id == id));

        // containerd samples usage periodically (every 10 s), so only the filesystem is asserted.
        let fs = cri.image_fs_info().await.unwrap();
        assert_eq!(fs.len(), 1, "{fs:?}");
        assert!(
            fs[0]
                .mountpoint
                .ends_with("io.containerd.snapshotter.v1.native"),
            "{fs:?}"
        );
        // No pods on this node: no container uses any image.
        assert!(cri.list_containers().await.unwrap().is_empty());

        cri.remove_image(&image.by_tag).await.unwrap();
        assert_eq!(cri.image_status(&image.by_tag).await.unwrap(), None);
        // Anonymous pulls from a private registry are refused by the registry, not the adapter
        // (each release's words for it are pinned in `runtime_versions`).
        let err = cri.pull_image(&image.by_tag, None).await.unwrap_err();
        assert!(
            matches!(
                err,
                RuntimeFailure::Rejected {
                    operation: "PullImage",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.verdict(), Verdict::Unauthorized, "{err}");
    });
}
