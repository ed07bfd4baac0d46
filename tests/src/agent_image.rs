//! The agent's own OCI image, built without Docker from what the machine has (`cargo xtask
//! image`, through `pullgate-env image`): the stripped release binary, exactly the shared
//! libraries its ELF asks for (`DT_NEEDED`, read here, resolved by `ldd` and followed through
//! symlinks, each at the path the loader looks for it), and the CA bundle. No shell, no package
//! manager: one layer.
//!
//! The layer is deterministic (entries sorted, mtime 0, uid/gid 0, gzip without a name or a
//! time), and so are the config (its `created` is the commit's time, or `SOURCE_DATE_EPOCH`) and
//! the archive: two builds of the same binary at the same commit give the same digests.
//!
//! The archive is an OCI image layout in a tar (`oci-layout`, `index.json`, `blobs/sha256/…`),
//! its one manifest annotated with `io.containerd.image.name` (the full reference: `ctr images
//! import` names the image by it) and `org.opencontainers.image.ref.name` (the tag, as the image
//! layout spec and `docker save` have it), plus a Docker-style `manifest.json` for `docker load`.
//! [`Image::push`] sends the same bytes to a registry, so the pushed digest is the archive's.
//!
//! `Containerfile` at the workspace root builds the same layout from a distroless base for
//! Docker/buildah users; `tests/tests/agent_image.rs` holds the two in step.

use anyhow::{Context as _, Result, bail, ensure};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The image's name; the tag is the crate's version. The kustomize base and the Helm chart name
/// the same.
pub const IMAGE_NAME: &str = "ghcr.io/pullgate/pullgate";
/// Where the agent's binary sits in the image.
pub const BINARY_PATH: &str = "/usr/local/bin/pullgate";
/// The CA bundle (Debian's `ca-certificates`), at the path distroless and Debian use.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The entrypoint: the agent itself, PID 1 of its container (it reaps and handles SIGTERM).
pub const ENTRYPOINT: &[&str] = &[BINARY_PATH];
/// The default arguments (the DaemonSet passes the same).
pub const CMD: &[&str] = &["run"];
/// root: the agent opens the runtime's socket (root:root 0660); the DaemonSet drops every
/// capability.
pub const USER: &str = "0:0";
/// The environment the image sets.
pub const ENV: &[&str] = &[
    "PATH=/usr/local/bin:/usr/bin:/bin",
    "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
];
pub const TITLE: &str = "pullgate";
pub const DESCRIPTION: &str =
    "Node agent that pre-pulls critical images and validates registry pull credentials";
pub const LICENSES: &str = "Apache-2.0";
pub const SOURCE: &str = "https://github.com/pullgate/pullgate";

/// Where the CA bundle is taken from on the build machine (Debian's `ca-certificates`).
pub const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// `target/image/` under the workspace: the stripped binary and the archive.
pub fn output_dir() -> PathBuf {
    crate::workspace_root().join("target/image")
}

/// Where `cargo xtask image` writes the archive of `version`.
pub fn archive_path(version: &str) -> PathBuf {
    output_dir().join(format!("pullgate-{version}.oci.tar"))
}

/// Where `cargo xtask image` puts the stripped binary it builds the image from.
pub fn stripped_binary_path() -> PathBuf {
    output_dir().join("pullgate")
}

/// What the image is built from.
#[derive(Clone, Debug)]
pub struct Inputs {
    /// The stripped agent binary.
    pub binary: PathBuf,
    /// The crate's version: the tag and the `version` label.
    pub version: String,
    /// git HEAD: the `revision` label.
    pub revision: String,
    /// Seconds since the epoch: the `created` label and config field.
    pub created: i64,
}

impl Inputs {
    /// The binary's own version (`pullgate --version`), HEAD of the workspace's git repository,
    /// and `SOURCE_DATE_EPOCH` or HEAD's commit time.
    pub fn for_binary(binary: &Path) -> Result<Self> {
        ensure!(
            binary.is_file(),
            "no agent binary at {}: run `cargo xtask image` (it builds the release binary and strips a copy there)",
            binary.display()
        );
        let version = binary_version(binary)?;
        let root = crate::workspace_root();
        let revision = git(&root, &["rev-parse", "HEAD"])?;
        let created = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(s) => s
                .trim()
                .parse()
                .with_context(|| format!("SOURCE_DATE_EPOCH={s:?} is not a number of seconds"))?,
            Err(_) => {
                let ct = git(&root, &["log", "-1", "--format=%ct", "HEAD"])?;
                ct.parse()
                    .with_context(|| format!("git log printed {ct:?} as HEAD's commit time"))?
            }
        };
        Ok(Self {
            binary: binary.to_path_buf(),
            version,
            revision,
            created,
        })
    }

    /// `ghcr.io/pullgate/pullgate:<version>`.
    pub fn reference(&self) -> String {
        format!("{IMAGE_NAME}:{}", self.version)
    }
}

/// `pullgate --version` prints `pullgate 0.1.0`.
fn binary_version(binary: &Path) -> Result<String> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("run {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().collect::<Vec<_>>()[..] {
        ["pullgate", version] if out.status.success() => Ok(version.to_string()),
        _ => bail!(
            "{} --version printed {text:?}, not `pullgate <version>`",
            binary.display()
        ),
    }
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .with_context(|| format!("run git {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "git {} failed in {}: {}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One file of the image's filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootFile {
    /// Absolute path in the image.
    pub path: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

/// What the ELF file says of its dynamic linking: `PT_INTERP` and the `DT_NEEDED` names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dynamic {
    pub interpreter: Option<String>,
    pub needed: Vec<String>,
}

/// Reads `PT_INTERP` and `DT_NEEDED` from a 64-bit little-endian ELF file (x86-64, aarch64).
/// Every offset is bounds-checked: a file that is not such an ELF is an error naming the field.
pub fn read_dynamic(elf: &[u8]) -> Result<Dynamic> {
    ensure!(elf.get(..4) == Some(b"\x7fELF"), "not an ELF file");
    ensure!(
        elf.get(4) == Some(&2) && elf.get(5) == Some(&1),
        "not a 64-bit little-endian ELF file (EI_CLASS, EI_DATA)"
    );
    let u16_at = |at: usize| -> Result<u64> {
        let b = elf.get(at..at + 2).context("ELF header truncated")?;
        Ok(u64::from(u16::from_le_bytes([b[0], b[1]])))
    };
    let u64_at = |at: usize| -> Result<u64> {
        let b = elf.get(at..at + 8).context("ELF file truncated")?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    };
    let u32_at = |at: usize| -> Result<u64> {
        let b = elf.get(at..at + 4).context("ELF file truncated")?;
        Ok(u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
    };
    let phoff = u64_at(0x20)?;
    let phentsize = u16_at(0x36)?;
    let phnum = u16_at(0x38)?;
    ensure!(phentsize >= 56, "e_phentsize {phentsize} is too small");
    // (type, offset, vaddr, filesz)
    let mut segments = Vec::new();
    for i in 0..phnum {
        let at = usize::try_from(phoff + i * phentsize).context("e_phoff")?;
        segments.push((
            u32_at(at)?,
            u64_at(at + 8)?,
            u64_at(at + 16)?,
            u64_at(at + 32)?,
        ));
    }
    let slice = |offset: u64, size: u64, what: &str| -> Result<&[u8]> {
        let start = usize::try_from(offset).with_context(|| what.to_string())?;
        let end = start
            .checked_add(usize::try_from(size).with_context(|| what.to_string())?)
            .with_context(|| what.to_string())?;
        elf.get(start..end)
            .with_context(|| format!("{what} lies outside the file"))
    };
    let c_str = |bytes: &[u8]| -> String {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..end]).into_owned()
    };
    const PT_LOAD: u64 = 1;
    const PT_DYNAMIC: u64 = 2;
    const PT_INTERP: u64 = 3;
    let mut dynamic = Dynamic::default();
    if let Some(&(_, offset, _, size)) = segments.iter().find(|s| s.0 == PT_INTERP) {
        dynamic.interpreter = Some(c_str(slice(offset, size, "PT_INTERP")?));
    }
    let Some(&(_, offset, _, size)) = segments.iter().find(|s| s.0 == PT_DYNAMIC) else {
        return Ok(dynamic); // statically linked
    };
    let entries = slice(offset, size, "PT_DYNAMIC")?;
    let mut needed_offsets = Vec::new();
    let mut strtab = None;
    for entry in entries.chunks_exact(16) {
        let tag = u64::from_le_bytes(entry[..8].try_into().context("DT entry")?);
        let value = u64::from_le_bytes(entry[8..].try_into().context("DT entry")?);
        match tag {
            0 => break,                      // DT_NULL
            1 => needed_offsets.push(value), // DT_NEEDED
            5 => strtab = Some(value),       // DT_STRTAB (a virtual address)
            _ => {}
        }
    }
    if needed_offsets.is_empty() {
        return Ok(dynamic);
    }
    let strtab = strtab.context("DT_NEEDED without DT_STRTAB")?;
    // The string table's file offset: through the PT_LOAD segment that maps its address.
    let (_, load_offset, load_vaddr, _) = segments
        .iter()
        .find(|s| s.0 == PT_LOAD && s.2 <= strtab && strtab < s.2 + s.3)
        .context("DT_STRTAB is in no PT_LOAD segment")?;
    let strtab_offset = strtab - load_vaddr + load_offset;
    for name_offset in needed_offsets {
        let at = usize::try_from(strtab_offset + name_offset).context("DT_NEEDED")?;
        let rest = elf.get(at..).context("DT_NEEDED lies outside the file")?;
        dynamic.needed.push(c_str(rest));
    }
    Ok(dynamic)
}

/// The shared objects `ldd` resolves `binary` to: file name → the path the loader found it at
/// (`libc.so.6` → `/lib/x86_64-linux-gnu/libc.so.6`), the interpreter included.
pub fn ldd(binary: &Path) -> Result<BTreeMap<String, String>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("run ldd (Debian package libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "ldd {} failed: {text}{}",
        binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut found = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)`, `/lib64/ld-linux-x86-64.so.2
        // (0x…)`, `linux-vdso.so.1 (0x…)` (the kernel's, no file).
        let (name, path) = match line.split_once(" => ") {
            Some((name, rest)) => (name.trim(), rest.split(" (").next().unwrap_or("").trim()),
            None => {
                let path = line.split(" (").next().unwrap_or("").trim();
                (path.rsplit('/').next().unwrap_or(path), path)
            }
        };
        if path == "not found" {
            bail!("ldd {}: {name} not found", binary.display());
        }
        if path.starts_with('/') {
            found.insert(name.to_string(), path.to_string());
        }
    }
    Ok(found)
}

/// The libraries the image needs for `binary`: `(path in the image, host file)`, exactly the
/// closure of `DT_NEEDED` from the binary (each library's own `DT_NEEDED` followed), plus the
/// interpreter at its `PT_INTERP` path. Fails when `ldd` and the ELF files disagree.
pub fn libraries(binary: &Path) -> Result<Vec<(String, PathBuf)>> {
    let elf = std::fs::read(binary).with_context(|| format!("read {}", binary.display()))?;
    let top = read_dynamic(&elf).with_context(|| format!("{}", binary.display()))?;
    let interpreter = top
        .interpreter
        .clone()
        .with_context(|| format!("{} has no PT_INTERP (is it static?)", binary.display()))?;
    let resolved = ldd(binary)?;
    let interp_name = interpreter
        .rsplit('/')
        .next()
        .unwrap_or(&interpreter)
        .to_string();
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    let mut queue: Vec<String> = top.needed.clone();
    let mut out = vec![(interpreter.clone(), PathBuf::from(&interpreter))];
    while let Some(name) = queue.pop() {
        if name == interp_name || !wanted.insert(name.clone()) {
            continue;
        }
        let path = resolved.get(&name).with_context(|| {
            format!(
                "{} needs {name} (DT_NEEDED), which ldd does not resolve",
                binary.display()
            )
        })?;
        let real = std::fs::canonicalize(path).with_context(|| format!("resolve {path}"))?;
        let bytes = std::fs::read(&real).with_context(|| format!("read {}", real.display()))?;
        let own = read_dynamic(&bytes).with_context(|| format!("{}", real.display()))?;
        queue.extend(own.needed);
        out.push((path.clone(), real));
    }
    out.sort();
    Ok(out)
}

/// The image's files: the binary, its libraries, the CA bundle.
pub fn root_files(inputs: &Inputs) -> Result<Vec<RootFile>> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("read {}", p.display()));
    let mut files = vec![RootFile {
        path: BINARY_PATH.to_string(),
        mode: 0o755,
        data: read(&inputs.binary)?,
    }];
    let interpreter = read_dynamic(&files[0].data)?.interpreter;
    for (path, host) in libraries(&inputs.binary)? {
        let real =
            std::fs::canonicalize(&host).with_context(|| format!("resolve {}", host.display()))?;
        let mode = if Some(&path) == interpreter.as_ref() {
            0o755
        } else {
            0o644
        };
        files.push(RootFile {
            path,
            mode,
            data: read(&real)?,
        });
    }
    let ca = Path::new(HOST_CA_BUNDLE);
    if !ca.is_file() {
        bail!(
            "{HOST_CA_BUNDLE} is missing: install Debian's ca-certificates (`apt-get install ca-certificates`, which `cargo xtask image` does as root)"
        );
    }
    files.push(RootFile {
        path: CA_BUNDLE.to_string(),
        mode: 0o644,
        data: read(ca)?,
    });
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// The layer's tar: every parent directory, then the files, sorted by path; mtime 0, uid/gid 0,
/// no user or group names.
pub fn layer_tar(files: &[RootFile]) -> Result<Vec<u8>> {
    let mut entries: BTreeMap<String, Option<&RootFile>> = BTreeMap::new();
    for file in files {
        let rel = file.path.trim_start_matches('/');
        ensure!(
            !rel.is_empty()
                && !rel
                    .split('/')
                    .any(|c| c.is_empty() || c == "." || c == ".."),
            "image path {:?} is not a clean absolute path",
            file.path
        );
        let mut dir = String::new();
        for component in rel
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |s| s.1)
        {
            dir.push_str(component);
            dir.push('/');
            entries.entry(dir.clone()).or_insert(None);
        }
        ensure!(
            entries.insert(rel.to_string(), Some(file)).is_none(),
            "image path {} twice",
            file.path
        );
    }
    let mut builder = tar::Builder::new(Vec::new());
    for (path, file) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        match file {
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, &path, std::io::empty())?;
            }
            Some(file) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(file.mode);
                header.set_size(file.data.len() as u64);
                builder.append_data(&mut header, &path, file.data.as_slice())?;
            }
        }
    }
    Ok(builder.into_inner()?)
}

/// `sha256:<hex>`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The built image: its blobs and the documents that name them.
#[derive(Clone, Debug)]
pub struct Image {
    pub reference: String,
    pub version: String,
    /// The gzip-compressed layer.
    pub layer: Vec<u8>,
    /// The uncompressed layer's digest (the config's `diff_ids`).
    pub diff_id: String,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

/// The labels of the image (and of `Containerfile`'s).
pub fn labels(inputs: &Inputs) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("org.opencontainers.image.title", TITLE.to_string()),
        (
            "org.opencontainers.image.description",
            DESCRIPTION.to_string(),
        ),
        ("org.opencontainers.image.version", inputs.version.clone()),
        ("org.opencontainers.image.licenses", LICENSES.to_string()),
        ("org.opencontainers.image.source", SOURCE.to_string()),
        ("org.opencontainers.image.revision", inputs.revision.clone()),
        ("org.opencontainers.image.created", rfc3339(inputs.created)),
    ])
}

fn rfc3339(epoch: i64) -> String {
    chrono::DateTime::from_timestamp(epoch, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Builds the image from `inputs`.
pub fn build(inputs: &Inputs) -> Result<Image> {
    let files = root_files(inputs)?;
    let tar = layer_tar(&files)?;
    let diff_id = digest(&tar);
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &tar)?;
    let layer = gz.finish()?;
    let created = rfc3339(inputs.created);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch(),
        "os": "linux",
        "created": created,
        "config": {
            "User": USER,
            "Env": ENV,
            "Entrypoint": ENTRYPOINT,
            "Cmd": CMD,
            "WorkingDir": "/",
            "Labels": labels(inputs),
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created": created, "created_by": "cargo xtask image" }],
    }))?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": { "mediaType": CONFIG_MEDIA_TYPE, "digest": digest(&config), "size": config.len() },
        "layers": [{ "mediaType": LAYER_MEDIA_TYPE, "digest": digest(&layer), "size": layer.len() }],
        "annotations": labels(inputs),
    }))?;
    Ok(Image {
        reference: inputs.reference(),
        version: inputs.version.clone(),
        layer,
        diff_id,
        config,
        manifest,
    })
}

impl Image {
    pub fn manifest_digest(&self) -> String {
        digest(&self.manifest)
    }

    pub fn config_digest(&self) -> String {
        digest(&self.config)
    }

    pub fn layer_digest(&self) -> String {
        digest(&self.layer)
    }

    /// The OCI image layout as a tar: `oci-layout`, `index.json`, `manifest.json` and the blobs,
    /// sorted, mtime 0.
    pub fn archive(&self) -> Result<Vec<u8>> {
        let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [{
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": self.manifest_digest(),
                "size": self.manifest.len(),
                "platform": { "os": "linux", "architecture": arch() },
                "annotations": {
                    "io.containerd.image.name": self.reference,
                    "org.opencontainers.image.ref.name": self.version,
                },
            }],
        }))?;
        let docker = serde_json::to_vec(&serde_json::json!([{
            "Config": blob(&self.config_digest()),
            "RepoTags": [self.reference],
            "Layers": [blob(&self.layer_digest())],
        }]))?;
        let mut entries: BTreeMap<String, &[u8]> = BTreeMap::new();
        entries.insert(blob(&self.manifest_digest()), &self.manifest);
        entries.insert(blob(&self.config_digest()), &self.config);
        entries.insert(blob(&self.layer_digest()), &self.layer);
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        entries.insert("oci-layout".into(), layout);
        entries.insert("index.json".into(), &index);
        entries.insert("manifest.json".into(), &docker);
        let mut builder = tar::Builder::new(Vec::new());
        for dir in ["blobs/", "blobs/sha256/"] {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_mtime(0);
            header.set_size(0);
            builder.append_data(&mut header, dir, std::io::empty())?;
        }
        for (path, data) in entries {
            let mut header = tar::Header::new_ustar();
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_size(data.len() as u64);
            builder.append_data(&mut header, &path, data)?;
        }
        Ok(builder.into_inner()?)
    }

    /// Writes [`archive`](Self::archive) to `path` (through a temporary file, then renamed).
    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("mkdir -p {}", dir.display()))?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.archive()?)
            .with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
        Ok(())
    }

    /// Pushes the blobs and the manifest, as they are in the archive, to `target`
    /// (`registry/repository[:tag]`, the tag defaulting to the version). `auth` is used and never
    /// printed. Returns the pushed `registry/repository:tag@sha256:…`.
    pub async fn push(
        &self,
        target: &str,
        auth: &oci_client::secrets::RegistryAuth,
        plain_http: bool,
    ) -> Result<String> {
        use oci_client::client::{ClientConfig, ClientProtocol};
        let target = if has_tag(target) {
            target.to_string()
        } else {
            format!("{target}:{}", self.version)
        };
        let reference: oci_client::Reference = target
            .parse()
            .with_context(|| format!("`{target}` is not an image reference REGISTRY/REPO[:TAG]"))?;
        let client = oci_client::Client::new(ClientConfig {
            protocol: if plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            ..ClientConfig::default()
        });
        client
            .auth(&reference, auth, oci_client::RegistryOperation::Push)
            .await
            .with_context(|| format!("log in to push {target}"))?;
        for (what, blob) in [("layer", &self.layer), ("config", &self.config)] {
            client
                .push_blob(&reference, blob, &digest(blob))
                .await
                .with_context(|| format!("push the {what} of {target}"))?;
        }
        client
            .push_manifest_raw(
                &reference,
                self.manifest.clone(),
                tonic::codegen::http::HeaderValue::from_static(MANIFEST_MEDIA_TYPE),
            )
            .await
            .with_context(|| format!("push the manifest of {target}"))?;
        Ok(format!("{target}@{}", self.manifest_digest()))
    }
}

/// `host:port/repo` has no tag; `host:port/repo:tag` and `repo@sha256:…` do.
fn has_tag(reference: &str) -> bool {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    last.contains(':') || last.contains('@')
}

/// An OCI image archive read back: its index, manifest, config, and the layer's entries.
#[derive(Debug)]
pub struct Archive {
    pub index: serde_json::Value,
    pub manifest: serde_json::Value,
    pub manifest_digest: String,
    pub config: serde_json::Value,
    pub layer_digest: String,
    /// Every top-level entry of the archive's tar, in order.
    pub entries: Vec<String>,
    /// The layer's entries in order: (path, mode, size, uid, gid, mtime, entry type).
    pub layer_entries: Vec<LayerEntry>,
    /// Compressed size of the layer.
    pub layer_size: u64,
    /// The image as the archive holds it, blob for blob.
    pub image: Image,
}

#[derive(Clone, Debug)]
pub struct LayerEntry {
    pub path: String,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub is_dir: bool,
    pub data: Vec<u8>,
}

/// Reads an archive [`Image::archive`] wrote, checking every blob against its digest.
pub fn read_archive(path: &Path) -> Result<Archive> {
    use std::io::Read as _;
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut entries = Vec::new();
    for entry in tar::Archive::new(bytes.as_slice()).entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        entries.push(name.clone());
        files.insert(name, data);
    }
    let file = |name: &str| {
        files
            .get(name)
            .with_context(|| format!("{}: no `{name}`", path.display()))
    };
    let blob = |d: &str| -> Result<&Vec<u8>> {
        let data = file(&format!("blobs/sha256/{}", d.trim_start_matches("sha256:")))?;
        ensure!(digest(data) == d, "blob {d} does not hash to its name");
        Ok(data)
    };
    let index: serde_json::Value = serde_json::from_slice(file("index.json")?)?;
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .context("index.json: manifests[0].digest")?
        .to_string();
    let manifest: serde_json::Value = serde_json::from_slice(blob(&manifest_digest)?)?;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .context("manifest: config.digest")?;
    let config: serde_json::Value = serde_json::from_slice(blob(config_digest)?)?;
    let layer_digest = manifest["layers"][0]["digest"]
        .as_str()
        .context("manifest: layers[0].digest")?
        .to_string();
    let layer = blob(&layer_digest)?;
    let reference = index["manifests"][0]["annotations"]["io.containerd.image.name"]
        .as_str()
        .context("index.json: manifests[0].annotations[io.containerd.image.name]")?
        .to_string();
    let version = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .context("index.json: manifests[0].annotations[org.opencontainers.image.ref.name]")?
        .to_string();
    let image = Image {
        reference,
        version,
        layer: layer.clone(),
        diff_id: String::new(),
        config: blob(config_digest)?.clone(),
        manifest: blob(&manifest_digest)?.clone(),
    };
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(layer.as_slice()).read_to_end(&mut tar)?;
    ensure!(
        config["rootfs"]["diff_ids"][0] == digest(&tar).as_str(),
        "the config's diff_id is not the layer's"
    );
    let image = Image {
        diff_id: digest(&tar),
        ..image
    };
    let mut layer_entries = Vec::new();
    for entry in tar::Archive::new(tar.as_slice()).entries()? {
        let mut entry = entry?;
        let header = entry.header().clone();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        layer_entries.push(LayerEntry {
            path: format!("/{}", entry.path()?.to_string_lossy()),
            mode: header.mode()?,
            uid: header.uid()?,
            gid: header.gid()?,
            mtime: header.mtime()?,
            is_dir: header.entry_type().is_dir(),
            data,
        });
    }
    Ok(Archive {
        index,
        manifest,
        manifest_digest,
        config,
        layer_size: layer.len() as u64,
        layer_digest,
        entries,
        layer_entries,
        image,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_names_its_libraries_and_interpreter() {
        let exe = std::env::current_exe().unwrap();
        let dynamic = read_dynamic(&std::fs::read(&exe).unwrap()).unwrap();
        assert!(
            dynamic
                .interpreter
                .as_deref()
                .is_some_and(|i| i.starts_with('/'))
        );
        assert!(
            dynamic.needed.iter().any(|n| n == "libc.so.6"),
            "{dynamic:?}"
        );
    }

    #[test]
    fn a_file_that_is_not_an_elf_is_an_error() {
        assert!(read_dynamic(b"#!/bin/sh\n").is_err());
        let mut truncated = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        truncated.truncate(70);
        assert!(read_dynamic(&truncated).is_err());
    }

    #[test]
    fn the_layer_is_sorted_with_its_directories_and_fixed_metadata() {
        let files = vec![
            RootFile {
                path: "/usr/local/bin/b".into(),
                mode: 0o755,
                data: b"b".to_vec(),
            },
            RootFile {
                path: "/etc/a".into(),
                mode: 0o644,
                data: b"a".to_vec(),
            },
        ];
        let tar = layer_tar(&files).unwrap();
        let mut reversed = files.clone();
        reversed.reverse();
        assert_eq!(
            tar,
            layer_tar(&reversed).unwrap(),
            "order of the input matters"
        );
        let names: Vec<String> = tar::Archive::new(tar.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "etc/",
                "etc/a",
                "usr/",
                "usr/local/",
                "usr/local/bin/",
                "usr/local/bin/b"
            ]
        );
        assert!(
            layer_tar(&[RootFile {
                path: "/a/../b".into(),
                mode: 0,
                data: vec![]
            }])
            .is_err()
        );
    }

    #[test]
    fn a_target_without_a_tag_gets_the_version() {
        assert!(!has_tag("127.0.0.1:5000/pullgate/pullgate"));
        assert!(has_tag("127.0.0.1:5000/pullgate/pullgate:dev"));
        assert!(has_tag("ghcr.io/pullgate/pullgate@sha256:00"));
    }
}
