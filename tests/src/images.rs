//! Small OCI images built in code (deterministic content, configurable layer sizes) and pushed to a
//! test registry with `oci-client`.

use anyhow::{Context as _, Result};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{
    IMAGE_CONFIG_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE, OciImageManifest,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};

/// What to build.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// Repository path in the registry (`team/app`).
    pub repository: String,
    pub tag: String,
    /// One entry per layer: its payload size in bytes. Content is derived from the repository, tag
    /// and layer index, so distinct images never share a layer.
    pub layer_sizes: Vec<usize>,
}

impl ImageSpec {
    pub fn new(repository: &str, tag: &str) -> Self {
        Self {
            repository: repository.to_string(),
            tag: tag.to_string(),
            layer_sizes: vec![4096],
        }
    }

    pub fn with_layers(mut self, sizes: &[usize]) -> Self {
        self.layer_sizes = sizes.to_vec();
        self
    }
}

/// An image in the registry.
#[derive(Clone, Debug)]
pub struct PushedImage {
    /// `host:port/repository:tag`.
    pub by_tag: String,
    /// `host:port/repository@sha256:…`.
    pub by_digest: String,
    /// The manifest digest.
    pub digest: String,
    /// `host:port/repository`.
    pub name: String,
    /// The image config digest (containerd's image id).
    pub config_digest: String,
    /// Layer digests, in order.
    pub layer_digests: Vec<String>,
}

/// The built blobs of an image.
pub struct BuiltImage {
    pub layers: Vec<ImageLayer>,
    pub config: Config,
}

/// Builds the layers (gzip tarballs holding one file each) and the config.
pub fn build(spec: &ImageSpec) -> Result<BuiltImage> {
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, size) in spec.layer_sizes.iter().enumerate() {
        let seed = format!("{}:{}:{i}", spec.repository, spec.tag);
        let tar = layer_tar(&format!("pullgate/layer-{i}.bin"), &content(&seed, *size))?;
        diff_ids.push(format!("sha256:{}", hex::encode(Sha256::digest(&tar))));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
        std::io::Write::write_all(&mut gz, &tar)?;
        layers.push(ImageLayer::new(
            gz.finish()?,
            IMAGE_LAYER_GZIP_MEDIA_TYPE.to_string(),
            None,
        ));
    }
    let config = serde_json::json!({
        "architecture": arch(),
        "os": "linux",
        "config": { "Labels": { "io.pullgate.test": spec.repository } },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": [],
    });
    Ok(BuiltImage {
        layers,
        config: Config::new(
            serde_json::to_vec(&config)?,
            IMAGE_CONFIG_MEDIA_TYPE.to_string(),
            None,
        ),
    })
}

/// Builds and pushes `spec` to the plain-HTTP registry at `host` with basic auth.
pub async fn push(host: &str, user: &str, password: &str, spec: &ImageSpec) -> Result<PushedImage> {
    let built = build(spec)?;
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    });
    let name = format!("{host}/{}", spec.repository);
    let by_tag = format!("{name}:{}", spec.tag);
    let reference: Reference = by_tag.parse().context("reference")?;
    let auth = RegistryAuth::Basic(user.to_string(), password.to_string());
    let manifest = OciImageManifest::build(&built.layers, &built.config, None);
    let config_digest = manifest.config.digest.clone();
    let layer_digests = manifest.layers.iter().map(|l| l.digest.clone()).collect();
    client
        .push(
            &reference,
            &built.layers,
            built.config,
            &auth,
            Some(manifest),
        )
        .await
        .with_context(|| format!("push {by_tag}"))?;
    let digest = client
        .fetch_manifest_digest(&reference, &auth)
        .await
        .with_context(|| format!("fetch digest of {by_tag}"))?;
    Ok(PushedImage {
        by_digest: format!("{name}@{digest}"),
        by_tag,
        digest,
        name,
        config_digest,
        layer_digests,
    })
}

fn layer_tar(path: &str, data: &[u8]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    builder.append_data(&mut header, path, data)?;
    Ok(builder.into_inner()?)
}

/// Deterministic, incompressible bytes (xorshift64* seeded from a hash of `seed`).
pub fn content(seed: &str, size: usize) -> Vec<u8> {
    let h = Sha256::digest(seed.as_bytes());
    let mut state = u64::from_le_bytes(h[..8].try_into().unwrap_or([1; 8])) | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(size);
    out
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Pushes an OCI index as `tag` of `image`'s repository (a multi-platform image, as most of
/// Docker Hub's are), listing `image` (pushed before, plain HTTP) for this host's platform.
/// Returns the index's digest.
pub async fn push_index(
    user: &str,
    password: &str,
    image: &PushedImage,
    tag: &str,
) -> Result<String> {
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    });
    let auth = RegistryAuth::Basic(user.to_string(), password.to_string());
    let by_digest: Reference = image.by_digest.parse().context("reference")?;
    let (bytes, digest) = client
        .pull_manifest_raw(
            &by_digest,
            &auth,
            &["application/vnd.oci.image.manifest.v1+json"],
        )
        .await
        .with_context(|| format!("fetch {}", image.by_digest))?;
    let index: oci_client::manifest::OciImageIndex = serde_json::from_value(serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": bytes.len(),
            "platform": { "os": "linux", "architecture": arch() },
        }],
    }))?;
    let by_tag: Reference = format!("{}:{tag}", image.name)
        .parse()
        .context("reference")?;
    client
        .push_manifest_list(&by_tag, &auth, index)
        .await
        .with_context(|| format!("push the index {}:{tag}", image.name))?;
    let digest = client
        .fetch_manifest_digest(&by_tag, &auth)
        .await
        .with_context(|| format!("fetch digest of {}:{tag}", image.name))?;
    Ok(digest)
}
