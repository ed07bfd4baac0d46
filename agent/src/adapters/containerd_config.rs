//! The container runtime's registry configuration (containerd's `hosts.toml` under its
//! `config_path`): which registries the node's real pull path routes through a mirror or a peer
//! cache. A mirror may serve cached content without checking credentials, so a runtime canary
//! through it proves less than a registry-direct one; outcomes say so. [`HostsDir`] is the
//! runtime canary's `RegistryMirrors`; the files are read on every look-up, so a changed
//! configuration counts from the next canary on.
//!
//! The one home of the file format: [`read_host_dir`] reads a registry's directory as containerd
//! does (`hosts.toml`, else its certificate files) into the plain data
//! `decide::registry_hosts::resolve` turns into the hosts the registry-direct canary uses
//! ([`RuntimeRegistry`]); [`RuntimeRegistry::from_cri_config`] reads containerd's CRI
//! configuration from the verbose CRI `Status` (1.6, 1.7: `registry.configPath`; 2.x sends no
//! registry section there, so [`config_file`] reads it from containerd's configuration file and
//! its imports). Nothing read here is logged as written: a `header` value may be a
//! credential, a legacy `registry.configs.*.auth` is one, and TOML/JSON errors can quote values,
//! so errors name the file, the line or the field only.

use crate::decide::registry_hosts::{
    self, Dialect, HeaderValue, Host, HostDir, HostSettings, HostsFile, LegacyRegistry, TlsSettings,
};
use crate::decide::runtime::RegistryMirrors;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// containerd's registry `config_path` (`/etc/containerd/certs.d`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostsDir(pub PathBuf);

impl HostsDir {
    /// The mirrors of `dir`, for a canary runner; none without a directory.
    pub fn shared(dir: Option<PathBuf>) -> Option<Arc<dyn RegistryMirrors>> {
        dir.map(|d| Arc::new(Self(d)) as Arc<dyn RegistryMirrors>)
    }
}

impl RegistryMirrors for HostsDir {
    fn mirrors(&self, registry: &str) -> Vec<String> {
        mirrors(&self.0, registry)
    }
}

/// The hosts other than `registry` itself that the runtime tries for `registry`, in the file's
/// order, from the directory containerd picks (the same in 1.6, 1.7 and 2.x, `remotes/docker/config`'s
/// `hostPaths`): the first of `DIR/<host>_<port>_`, `DIR/<host>:<port>` and `DIR/_default` that
/// exists, whether or not it holds a `hosts.toml` (a directory of certificates only routes
/// nothing). Unreadable or malformed files count as none, as containerd falls back to plain
/// certificates then.
pub fn mirrors(config_dir: &Path, registry: &str) -> Vec<String> {
    let Some((
        HostDir {
            file: Some(file), ..
        },
        _,
    )) = read_host_dir(&[config_dir.to_path_buf()], registry)
    else {
        return Vec::new();
    };
    let server_host = file.server.as_deref().map(host_of);
    file.hosts
        .iter()
        .map(|(url, _)| host_of(url))
        .filter(|h| {
            h != registry && Some(h.as_str()) != server_host.as_deref().filter(|s| *s == registry)
        })
        .collect()
}

/// containerd's candidate directory names for `host`, in its order: `:port` spelled `_port_`
/// first, then the host as given, then `_default`.
fn host_paths(host: &str) -> Vec<String> {
    let mut paths = Vec::with_capacity(3);
    if let Some(idx) = host.rfind(':').filter(|&i| i > 0) {
        paths.push(format!("{}_{}_", &host[..idx], &host[idx + 1..]));
    }
    paths.push(host.to_string());
    paths.push("_default".to_string());
    paths
}

/// Roots as `config_path` spells them (`:`-separated), for the log.
fn join(roots: &[PathBuf]) -> String {
    std::env::join_paths(roots)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// Why containerd's registry configuration could not be read as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {cause}", path.display())]
    Read { path: PathBuf, cause: String },
    #[error("{}: not valid TOML (line {line})", path.display())]
    Toml { path: PathBuf, line: usize },
    #[error("{}: `{field}` must be {expected}", path.display())]
    Field {
        path: PathBuf,
        field: String,
        expected: &'static str,
    },
    #[error("{}: {source}", path.display())]
    Hosts {
        path: PathBuf,
        source: registry_hosts::HostsError,
    },
    #[error(
        "the runtime's CRI configuration (verbose CRI Status `config`) is not the JSON expected: {0}"
    )]
    CriConfig(String),
}

/// The directory containerd picks for `registry` under the roots of `config_path`
/// (`hostDirFromRoots`: the first root with a matching directory), read as containerd reads it.
/// `None`: no directory, containerd's defaults apply.
pub fn read_host_dir(roots: &[PathBuf], registry: &str) -> Option<(HostDir, Option<ConfigError>)> {
    let dir = roots.iter().find_map(|root| {
        host_paths(registry)
            .into_iter()
            .map(|name| root.join(name))
            .find(|dir| dir.exists())
    })?;
    let path = dir.join("hosts.toml");
    let (file, problem) = match std::fs::read_to_string(&path) {
        Ok(text) if !text.is_empty() => match parse_hosts_toml(&path, &text) {
            Ok(file) => (Some(file), None),
            Err(e) => (None, Some(e)),
        },
        Ok(_) => (None, None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, None),
        Err(e) => (
            None,
            Some(ConfigError::Read {
                path,
                cause: e.to_string(),
            }),
        ),
    };
    let cert_files = cert_files(&dir);
    Some((
        HostDir {
            dir,
            file,
            cert_files,
        },
        problem,
    ))
}

/// `loadCertFiles`: `*.crt` are CAs, `*.cert` client certificates with the `*.key` of the same
/// name when there is one.
fn cert_files(dir: &Path) -> HostSettings {
    let mut settings = HostSettings::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return settings;
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    for name in names {
        let full = dir.join(&name).display().to_string();
        if name.ends_with(".crt") {
            settings.ca.push(full);
        } else if let Some(stem) = name.strip_suffix(".cert") {
            let key = dir.join(format!("{stem}.key"));
            let key = key.exists().then(|| key.display().to_string());
            settings.client.push((full, key));
        }
    }
    settings
}

/// One `hosts.toml` (`parseHostsFile`): the top level and every `[host."…"]` table in the order
/// the file lists them. Keys containerd does not know are ignored, as it ignores them.
pub fn parse_hosts_toml(path: &Path, text: &str) -> Result<HostsFile, ConfigError> {
    let syntax = |span: Option<std::ops::Range<usize>>| ConfigError::Toml {
        path: path.to_path_buf(),
        line: span
            .and_then(|s| text.get(..s.start))
            .map_or(1, |t| t.lines().count().max(1)),
    };
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| syntax(e.span()))?;
    // The order of the `[host]` tables, by where each first appears (`getSortedHosts`).
    let spanned = toml::de::DeTable::parse(text).map_err(|e| syntax(e.span()))?;
    let mut order: Vec<(usize, String)> = spanned
        .get_ref()
        .iter()
        .filter(|(k, _)| k.get_ref().as_ref() == "host")
        .flat_map(|(_, v)| match v.get_ref() {
            toml::de::DeValue::Table(t) => t
                .iter()
                .map(|(k, _)| (k.span().start, k.get_ref().to_string()))
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        })
        .collect();
    order.sort();
    let field = |field: &str, expected: &'static str| ConfigError::Field {
        path: path.to_path_buf(),
        field: field.to_string(),
        expected,
    };
    let server = match table.get("server") {
        None => None,
        Some(toml::Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(field("server", "a string")),
    };
    let server_settings = settings("", &table, path)?;
    let mut hosts = Vec::new();
    if let Some(value) = table.get("host") {
        let toml::Value::Table(host_tables) = value else {
            return Err(field("host", "a table of host tables"));
        };
        for (_, url) in order {
            let Some(toml::Value::Table(t)) = host_tables.get(&url) else {
                return Err(field(&format!("host.\"{url}\""), "a table"));
            };
            hosts.push((url.clone(), settings(&format!("host.\"{url}\"."), t, path)?));
        }
    }
    Ok(HostsFile {
        server,
        server_settings,
        hosts,
    })
}

/// One table's settings (`hostFileConfig`); `prefix` names the table in errors.
fn settings(prefix: &str, t: &toml::Table, path: &Path) -> Result<HostSettings, ConfigError> {
    let field = |name: &str, expected: &'static str| ConfigError::Field {
        path: path.to_path_buf(),
        field: format!("{prefix}{name}"),
        expected,
    };
    let strings = |v: &toml::Value| -> Option<Vec<String>> {
        match v {
            toml::Value::String(s) => Some(vec![s.clone()]),
            toml::Value::Array(a) => a.iter().map(|x| x.as_str().map(String::from)).collect(),
            _ => None,
        }
    };
    let mut out = HostSettings::default();
    if let Some(v) = t.get("capabilities") {
        let toml::Value::Array(a) = v else {
            return Err(field("capabilities", "a list of strings"));
        };
        let caps: Option<Vec<String>> = a.iter().map(|x| x.as_str().map(String::from)).collect();
        out.capabilities = Some(caps.ok_or_else(|| field("capabilities", "a list of strings"))?);
    }
    if let Some(v) = t.get("ca") {
        out.ca = strings(v).ok_or_else(|| field("ca", "a path or a list of paths"))?;
    }
    if let Some(v) = t.get("client") {
        let bad = || {
            field(
                "client",
                "a path, a list of paths, or a list of [cert, key] pairs",
            )
        };
        out.client = match v {
            toml::Value::String(s) => vec![(s.clone(), None)],
            toml::Value::Array(a) => a
                .iter()
                .map(|x| match x {
                    toml::Value::String(s) => Ok((s.clone(), None)),
                    toml::Value::Array(pair) => match pair.as_slice() {
                        [toml::Value::String(c), toml::Value::String(k)] => {
                            Ok((c.clone(), (!k.is_empty()).then(|| k.clone())))
                        }
                        _ => Err(bad()),
                    },
                    _ => Err(bad()),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(bad()),
        };
    }
    if let Some(v) = t.get("skip_verify") {
        out.skip_verify = Some(
            v.as_bool()
                .ok_or_else(|| field("skip_verify", "true or false"))?,
        );
    }
    if let Some(v) = t.get("override_path") {
        out.override_path = v
            .as_bool()
            .ok_or_else(|| field("override_path", "true or false"))?;
    }
    if let Some(v) = t.get("header") {
        let toml::Value::Table(h) = v else {
            return Err(field("header", "a table of header names"));
        };
        for (name, value) in h {
            let values = strings(value)
                .ok_or_else(|| field(&format!("header.{name}"), "a string or a list of strings"))?;
            out.header
                .push((name.clone(), values.into_iter().map(HeaderValue).collect()));
        }
    }
    Ok(out)
}

/// containerd's registry configuration as the registry-direct canary reads it: the roots of its
/// `config_path` (`--runtime-registry-config`, or what the runtime reported) and the release
/// line's [`Dialect`]. Directories are read on every look-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeRegistry {
    pub roots: Vec<PathBuf>,
    pub dialect: Dialect,
    /// containerd 1.x's legacy `registry.mirrors` / `registry.configs` (TLS only), used when
    /// there are no roots.
    pub legacy: Option<LegacyRegistry>,
}

impl RuntimeRegistry {
    /// The one discovery, for `pullgate run`, `check` and `diagnose`: the roots
    /// `--runtime-registry-config` names; else the `config_path` the runtime reports in its
    /// verbose CRI `Status` (containerd 1.6, 1.7), or its legacy `registry.mirrors` /
    /// `registry.configs`; else, for a containerd that reports no registry section there (2.x),
    /// the images plugin's `config_path` in containerd's configuration file `config_file` and
    /// its imports ([`config_file::read`]); else containerd's defaults (2.x has no default
    /// `config_path`). The dialect is the release line's its `Version` (asked once, `version`)
    /// reports. Said once in the log; what cannot be read is a warning naming the file and
    /// field, never fatal; a runtime that was not reachable is not asked again.
    pub async fn discover(
        cri: &crate::adapters::cri::CriClient,
        version: Option<&crate::adapters::cri::RuntimeVersion>,
        flag: Option<PathBuf>,
        config_file: &Path,
    ) -> Self {
        let is_containerd = version.is_some_and(|v| v.runtime_name == "containerd");
        let dialect = match version {
            Some(v) if is_containerd => Dialect::of_containerd_version(&v.runtime_version),
            _ => Dialect::V2,
        };
        let defaults = Self {
            roots: Vec::new(),
            dialect,
            legacy: None,
        };
        if let Some(dir) = flag {
            return Self {
                roots: vec![dir],
                ..defaults
            };
        }
        if version.is_none() {
            tracing::warn!(
                "the runtime was not reachable: registry-direct canaries use containerd's defaults for every registry (pass --runtime-registry-config to name its config_path)"
            );
            return defaults;
        }
        let json = match cri.status_config().await {
            Ok(json) => json,
            Err(e) => {
                tracing::warn!(error = %e, "the runtime's registry configuration could not be read: registry-direct canaries use containerd's defaults (pass --runtime-registry-config to name it)");
                return defaults;
            }
        };
        let reported = match json.as_deref().map(|json| {
            Ok::<_, ConfigError>((
                Self::reports_registry(json)?,
                Self::roots_from_cri_config(json)?,
                Self::legacy_from_cri_config(json)?,
            ))
        }) {
            Some(Ok(reported)) => Some(reported),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "registry-direct canaries use containerd's defaults for every registry");
                return defaults;
            }
            None => None,
        };
        match reported {
            Some((_, Some(roots), _)) => {
                tracing::info!(config_path = %join(&roots), "registry-direct canaries reach registries as the runtime's hosts.toml files say (config_path reported by the runtime)");
                Self { roots, ..defaults }
            }
            Some((_, None, Some(legacy))) => {
                tracing::info!(
                    "registry-direct canaries reach registries as the runtime's legacy registry.mirrors / registry.configs say (reported by the runtime)"
                );
                Self {
                    legacy: Some(legacy),
                    ..defaults
                }
            }
            Some((true, None, None)) => {
                tracing::info!(
                    "the runtime configures no registry config_path: registry-direct canaries use containerd's defaults"
                );
                defaults
            }
            _ if !is_containerd => {
                tracing::info!(
                    "the runtime reports no registry config_path: registry-direct canaries use containerd's defaults unless --runtime-registry-config names the directory"
                );
                defaults
            }
            _ => Self::from_config_file(config_file, defaults),
        }
    }

    /// containerd 2.x's `config_path` (or legacy settings), from its configuration file: said
    /// once, a problem as a warning naming the file and field (containerd's defaults then).
    fn from_config_file(config_file: &Path, defaults: Self) -> Self {
        let roots = match config_file::read(config_file) {
            Ok(Some(read)) if !read.roots.is_empty() => {
                tracing::info!(config_path = %join(&read.roots), file = %config_file.display(), "registry-direct canaries reach registries as the runtime's hosts.toml files say (config_path read from containerd's configuration file)");
                read.roots
            }
            Ok(Some(config_file::FileRegistry {
                legacy: Some(legacy),
                ..
            })) => {
                tracing::info!(file = %config_file.display(), "registry-direct canaries reach registries as the legacy registry.mirrors / registry.configs of containerd's configuration file say");
                return Self {
                    legacy: Some(legacy),
                    ..defaults
                };
            }
            Ok(Some(_)) => {
                tracing::info!(file = %config_file.display(), "containerd's configuration sets no registry config_path: registry-direct canaries use containerd's defaults");
                Vec::new()
            }
            Ok(None) => {
                tracing::warn!(file = %config_file.display(), "the runtime reports no registry config_path and its configuration file is not there: registry-direct canaries use containerd's defaults (pass --runtime-config-file to name the file containerd reads, or --runtime-registry-config to name its config_path)");
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(error = %e, "containerd's configuration could not be read: registry-direct canaries use containerd's defaults for every registry (pass --runtime-registry-config to name its config_path)");
                Vec::new()
            }
        };
        Self { roots, ..defaults }
    }

    /// Whether the verbose CRI `Status`'s configuration has a `registry` section (containerd
    /// 1.x); 2.x sends its runtime plugin's configuration only. Nothing of it is kept.
    pub fn reports_registry(json: &str) -> Result<bool, ConfigError> {
        #[derive(Deserialize)]
        struct Config {
            #[serde(default)]
            registry: Option<serde::de::IgnoredAny>,
        }
        let config: Config = serde_json::from_str(json).map_err(|e| {
            ConfigError::CriConfig(format!("line {} column {}", e.line(), e.column()))
        })?;
        Ok(config.registry.is_some())
    }

    /// The mirrors the runtime canary names, from the first root (as `pullgate run` has it).
    pub fn mirrors(&self) -> Option<Arc<dyn RegistryMirrors>> {
        HostsDir::shared(self.roots.first().cloned())
    }

    /// The `config_path` of containerd's CRI configuration as the verbose CRI `Status` carries
    /// it (`registry.configPath`, a `:`-separated list as `filepath.SplitList` reads it), pinned
    /// against 1.6 and 1.7 by `tests/tests/registry_hosts.rs`. `Ok(None)`: the runtime sends no
    /// such entry (containerd 2.x, whose images plugin's settings are not in `Status`; CRI-O) or
    /// configures none. Only `registry.configPath` is read: the legacy `registry.configs` can
    /// hold passwords, and nothing of the text is kept or shown.
    pub fn roots_from_cri_config(json: &str) -> Result<Option<Vec<PathBuf>>, ConfigError> {
        #[derive(Deserialize)]
        struct Config {
            #[serde(default)]
            registry: Option<Registry>,
        }
        #[derive(Deserialize)]
        struct Registry {
            #[serde(default, rename = "configPath")]
            config_path: Option<String>,
        }
        let config: Config = serde_json::from_str(json).map_err(|e| {
            ConfigError::CriConfig(format!("line {} column {}", e.line(), e.column()))
        })?;
        let roots: Vec<PathBuf> = config
            .registry
            .and_then(|r| r.config_path)
            .map(|p| {
                std::env::split_paths(&p)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Ok((!roots.is_empty()).then_some(roots))
    }

    /// containerd 1.x's legacy `registry.mirrors` and the TLS of `registry.configs` in the
    /// verbose CRI `Status`'s configuration (`Ok(None)`: neither set). Each config's `auth` — a
    /// password — is never deserialised.
    pub fn legacy_from_cri_config(json: &str) -> Result<Option<LegacyRegistry>, ConfigError> {
        #[derive(Deserialize)]
        struct Config {
            #[serde(default)]
            registry: Option<Registry>,
        }
        #[derive(Deserialize)]
        struct Registry {
            #[serde(default)]
            mirrors: Option<BTreeMap<String, Mirror>>,
            #[serde(default)]
            configs: Option<BTreeMap<String, HostConfig>>,
        }
        #[derive(Deserialize)]
        struct Mirror {
            #[serde(default)]
            endpoint: Option<Vec<String>>,
        }
        #[derive(Deserialize)]
        struct HostConfig {
            #[serde(default)]
            tls: Option<Tls>,
        }
        #[derive(Deserialize)]
        struct Tls {
            #[serde(default)]
            insecure_skip_verify: bool,
            #[serde(default, rename = "caFile")]
            ca_file: String,
            #[serde(default, rename = "certFile")]
            cert_file: String,
            #[serde(default, rename = "keyFile")]
            key_file: String,
        }
        let config: Config = serde_json::from_str(json).map_err(|e| {
            ConfigError::CriConfig(format!("line {} column {}", e.line(), e.column()))
        })?;
        let Some(registry) = config.registry else {
            return Ok(None);
        };
        let mirrors: Vec<(String, Vec<String>)> = registry
            .mirrors
            .unwrap_or_default()
            .into_iter()
            .map(|(name, m)| (name, m.endpoint.unwrap_or_default()))
            .collect();
        let tls: Vec<(String, TlsSettings)> = registry
            .configs
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(host, c)| {
                let t = c.tls?;
                let path = |p: String| (!p.is_empty()).then(|| PathBuf::from(p));
                Some((
                    host,
                    TlsSettings {
                        ca: path(t.ca_file).into_iter().collect(),
                        client: path(t.cert_file)
                            .map(|c| (c, path(t.key_file)))
                            .into_iter()
                            .collect(),
                        skip_verify: t.insecure_skip_verify,
                    },
                ))
            })
            .collect();
        if mirrors.is_empty() && tls.is_empty() {
            return Ok(None);
        }
        Ok(Some(LegacyRegistry { mirrors, tls }))
    }

    /// The hosts containerd tries for `registry`, in order, and what could not be read as
    /// written (containerd then falls back as the hosts say: the directory's certificate files,
    /// or its defaults).
    pub fn hosts(&self, registry: &str) -> (Vec<Host>, Option<ConfigError>) {
        if let (true, Some(legacy)) = (self.roots.is_empty(), &self.legacy) {
            return (registry_hosts::resolve_legacy(registry, legacy), None);
        }
        let read = read_host_dir(&self.roots, registry);
        let (dir, mut problem) = match read {
            Some((dir, problem)) => (Some(dir), problem),
            None => (None, None),
        };
        match registry_hosts::resolve(registry, dir.as_ref(), self.dialect) {
            Ok(hosts) => (hosts, problem),
            Err(e) => {
                let path = dir
                    .as_ref()
                    .map(|d| d.dir.join("hosts.toml"))
                    .unwrap_or_default();
                problem = Some(ConfigError::Hosts { path, source: e });
                let fallback = dir.map(|d| HostDir { file: None, ..d });
                let hosts = registry_hosts::resolve(registry, fallback.as_ref(), self.dialect)
                    .unwrap_or_else(|_| {
                        registry_hosts::resolve(registry, None, self.dialect).unwrap_or_default()
                    });
                (hosts, problem)
            }
        }
    }
}

/// containerd's own configuration file, as `containerd` (2.x) loads it: the file, then every
/// `imports` entry (relative to the importing file's directory, a `*` pattern expanded as
/// `filepath.Glob` does, each file once), merged in that order; read for the images plugin's
/// registry `config_path`, which containerd 2.x does not report over CRI. Ported from
/// `cmd/containerd/server/config/config.go` (`LoadConfig`, `resolveImports`, `mergeConfig`,
/// `v1MigratePluginName`) and `plugins/cri/images/plugin.go` (`configMigration`), v2.1.9.
pub mod config_file {
    use super::ConfigError;
    use crate::decide::registry_hosts::{LegacyRegistry, TlsSettings};
    use std::path::{Path, PathBuf};

    /// The CRI images plugin of containerd 2.x, and the version-2 CRI plugin it migrates from.
    const IMAGES_PLUGIN: &str = "io.containerd.cri.v1.images";
    const CRI_PLUGIN_V2: &str = "io.containerd.grpc.v1.cri";
    /// The configuration version containerd 2.x speaks (`version.ConfigVersion`).
    const CONFIG_VERSION: i64 = 3;
    /// More files than any node imports: an import loop through ever-new paths ends here.
    const MAX_FILES: usize = 64;

    /// What the files say of the registry: the roots of `config_path` (none set, or set empty:
    /// containerd's default, no `config_path`, as `containerd config default` shows) and the
    /// files read, in containerd's order.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct FileRegistry {
        pub roots: Vec<PathBuf>,
        /// The deprecated `registry.mirrors` / the TLS of `registry.configs` (2.1 still
        /// honours them), read only without a `config_path`, as containerd ignores them then.
        pub legacy: Option<LegacyRegistry>,
        pub files: Vec<PathBuf>,
    }

    /// Reads `path` and its imports. `Ok(None)`: no file at `path`, so containerd runs with its
    /// defaults (no `config_path`). Only `version`, `imports` and the two plugins' `registry`
    /// tables are interpreted; no value is kept or shown (a legacy `configs.*.auth` is a password),
    /// errors name the file and the line or field.
    pub fn read(path: &Path) -> Result<Option<FileRegistry>, ConfigError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            _ => {}
        }
        let mut merged = toml::Table::new();
        let mut version = CONFIG_VERSION;
        let mut files = Vec::new();
        let mut pending = vec![path.to_path_buf()];
        while !pending.is_empty() {
            let file = pending.remove(0);
            if files.contains(&file) {
                continue;
            }
            if files.len() == MAX_FILES {
                return Err(ConfigError::Field {
                    path: file,
                    field: "imports".into(),
                    expected: "at most 64 files in all",
                });
            }
            let text = std::fs::read_to_string(&file).map_err(|e| ConfigError::Read {
                path: file.clone(),
                cause: e.to_string(),
            })?;
            let (table, file_version, imports) = parse(&file, &text)?;
            // `LoadConfig`: a version 0/1 file is migrated to the version loaded so far (its
            // plugins renamed); any later version replaces it.
            let table = if file_version < 2 {
                migrate_v1(table)
            } else {
                version = file_version;
                table
            };
            merge(&mut merged, table);
            pending.extend(resolve_imports(&file, &imports));
            files.push(file);
        }
        let mut plugins = match merged.remove("plugins") {
            Some(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        };
        // `configMigration`: below version 3 the CRI plugin's `registry` table replaces the
        // images plugin's.
        if version < CONFIG_VERSION {
            let cri_registry = match plugins.get(CRI_PLUGIN_V2) {
                Some(toml::Value::Table(cri)) => cri.get("registry").cloned(),
                _ => None,
            };
            if let Some(registry) = cri_registry {
                let images = plugins
                    .entry(IMAGES_PLUGIN)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let toml::Value::Table(images) = images {
                    images.insert("registry".into(), registry);
                }
            }
        }
        let prefix = format!("plugins.\"{IMAGES_PLUGIN}\".registry");
        let field = format!("{prefix}.config_path");
        let registry = plugins.get(IMAGES_PLUGIN).and_then(|p| p.get("registry"));
        let config_path = match registry.and_then(|r| r.get("config_path")) {
            None => None,
            Some(toml::Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(ConfigError::Field {
                    path: path.to_path_buf(),
                    field,
                    expected: "a string",
                });
            }
        };
        let roots = config_path
            .map(|p| {
                std::env::split_paths(&p)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let legacy = match registry {
            Some(r) if Vec::is_empty(&roots) => legacy(path, &prefix, r)?,
            _ => None,
        };
        Ok(Some(FileRegistry {
            roots,
            legacy,
            files,
        }))
    }

    /// `registry.mirrors.<host>.endpoint` and `registry.configs.<host>.tls` (`ca_file`,
    /// `cert_file`, `key_file`, `insecure_skip_verify`); a config's `auth` is never read.
    fn legacy(
        path: &Path,
        prefix: &str,
        registry: &toml::Value,
    ) -> Result<Option<LegacyRegistry>, ConfigError> {
        let field = |name: String, expected: &'static str| ConfigError::Field {
            path: path.to_path_buf(),
            field: format!("{prefix}.{name}"),
            expected,
        };
        let tables = |name: &str| -> Result<Vec<(String, toml::Table)>, ConfigError> {
            match registry.get(name) {
                None => Ok(Vec::new()),
                Some(toml::Value::Table(t)) => t
                    .iter()
                    .map(|(host, v)| match v {
                        toml::Value::Table(t) => Ok((host.clone(), t.clone())),
                        _ => Err(field(format!("{name}.\"{host}\""), "a table")),
                    })
                    .collect(),
                Some(_) => Err(field(name.into(), "a table of hosts")),
            }
        };
        let mut mirrors = Vec::new();
        for (host, t) in tables("mirrors")? {
            let bad = || field(format!("mirrors.\"{host}\".endpoint"), "a list of URLs");
            let endpoints = match t.get("endpoint") {
                None => Vec::new(),
                Some(toml::Value::Array(a)) => a
                    .iter()
                    .map(|v| v.as_str().map(String::from).ok_or_else(bad))
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err(bad()),
            };
            mirrors.push((host, endpoints));
        }
        let mut tls = Vec::new();
        for (host, t) in tables("configs")? {
            let Some(v) = t.get("tls") else { continue };
            let toml::Value::Table(t) = v else {
                return Err(field(format!("configs.\"{host}\".tls"), "a table"));
            };
            let file = |key: &str| match t.get(key) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok((!s.is_empty()).then(|| PathBuf::from(s))),
                Some(_) => Err(field(format!("configs.\"{host}\".tls.{key}"), "a path")),
            };
            let skip_verify = match t.get("insecure_skip_verify") {
                None => false,
                Some(toml::Value::Boolean(b)) => *b,
                Some(_) => {
                    return Err(field(
                        format!("configs.\"{host}\".tls.insecure_skip_verify"),
                        "true or false",
                    ));
                }
            };
            let (ca, cert, key) = (file("ca_file")?, file("cert_file")?, file("key_file")?);
            tls.push((
                host,
                TlsSettings {
                    ca: ca.into_iter().collect(),
                    client: cert.map(|c| (c, key)).into_iter().collect(),
                    skip_verify,
                },
            ));
        }
        if mirrors.is_empty() && tls.is_empty() {
            return Ok(None);
        }
        Ok(Some(LegacyRegistry { mirrors, tls }))
    }

    /// One file: its table, `version` (0 when absent) and `imports`.
    fn parse(path: &Path, text: &str) -> Result<(toml::Table, i64, Vec<String>), ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Toml {
                    path: path.to_path_buf(),
                    line: e
                        .span()
                        .and_then(|s| text.get(..s.start))
                        .map_or(1, |t| t.lines().count().max(1)),
                })?;
        let field = |field: &str, expected: &'static str| ConfigError::Field {
            path: path.to_path_buf(),
            field: field.into(),
            expected,
        };
        let version = match table.get("version") {
            None => 0,
            Some(toml::Value::Integer(v)) if (0..=CONFIG_VERSION).contains(v) => *v,
            Some(_) => return Err(field("version", "an integer from 0 to 3")),
        };
        let imports = match table.remove("imports") {
            None => Vec::new(),
            Some(toml::Value::Array(a)) => a
                .into_iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s),
                    _ => Err(field("imports", "a list of paths")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(field("imports", "a list of paths")),
        };
        if table.get("plugins").is_some_and(|p| !p.is_table()) {
            return Err(field("plugins", "a table of plugin tables"));
        }
        Ok((table, version, imports))
    }

    /// `v1MigratePluginName`, for the plugin whose settings are read here: `cri` is
    /// `io.containerd.grpc.v1.cri` in a version 0/1 file.
    fn migrate_v1(mut table: toml::Table) -> toml::Table {
        if let Some(toml::Value::Table(plugins)) = table.get_mut("plugins")
            && let Some(cri) = plugins.remove("cri")
        {
            plugins.insert(CRI_PLUGIN_V2.into(), cri);
        }
        table
    }

    /// `mergeConfig` (mergo with override and the slice transformer): tables merge key by key,
    /// lists gain the entries they lack, any other value is replaced unless the new one is
    /// empty (`""`, `0`, `false`).
    fn merge(to: &mut toml::Table, from: toml::Table) {
        for (key, value) in from {
            match (to.get_mut(&key), value) {
                (Some(toml::Value::Table(t)), toml::Value::Table(f)) => merge(t, f),
                (Some(toml::Value::Array(t)), toml::Value::Array(f)) => {
                    for v in f {
                        if !t.contains(&v) {
                            t.push(v);
                        }
                    }
                }
                (Some(_), v) if is_empty(&v) => {}
                (_, v) => {
                    to.insert(key, v);
                }
            }
        }
    }

    fn is_empty(v: &toml::Value) -> bool {
        match v {
            toml::Value::String(s) => s.is_empty(),
            toml::Value::Integer(i) => *i == 0,
            toml::Value::Float(f) => *f == 0.0,
            toml::Value::Boolean(b) => !b,
            toml::Value::Array(a) => a.is_empty(),
            toml::Value::Table(_) | toml::Value::Datetime(_) => false,
        }
    }

    /// `resolveImports`: relative to the importing file's directory; a path with `*` is a
    /// pattern (`filepath.Glob`: matches in name order, none when nothing matches), any other
    /// path is imported as written (containerd fails to start when it is missing).
    fn resolve_imports(parent: &Path, imports: &[String]) -> Vec<PathBuf> {
        let base = parent.parent().unwrap_or(Path::new("/"));
        imports
            .iter()
            .flat_map(|i| {
                let path = base.join(i);
                if i.contains('*') {
                    glob(&path)
                } else {
                    vec![path]
                }
            })
            .collect()
    }

    /// `filepath.Glob` for `*` and `?` in any component (a `[` class is taken literally).
    fn glob(pattern: &Path) -> Vec<PathBuf> {
        let mut paths = vec![PathBuf::new()];
        for component in pattern.components() {
            let part = component.as_os_str().to_string_lossy();
            if !part.contains(['*', '?']) {
                paths.iter_mut().for_each(|p| p.push(component));
                continue;
            }
            paths = paths
                .iter()
                .flat_map(|dir| {
                    let mut names: Vec<String> = std::fs::read_dir(dir)
                        .into_iter()
                        .flatten()
                        .filter_map(Result::ok)
                        .filter_map(|e| e.file_name().into_string().ok())
                        .filter(|name| matches(part.as_bytes(), name.as_bytes()))
                        .collect();
                    names.sort();
                    names.into_iter().map(|n| dir.join(n)).collect::<Vec<_>>()
                })
                .collect();
        }
        paths.retain(|p| p.exists());
        paths
    }

    /// `filepath.Match` for `*` (any run of characters) and `?` (one).
    fn matches(pattern: &[u8], name: &[u8]) -> bool {
        match pattern.split_first() {
            None => name.is_empty(),
            Some((b'*', rest)) => (0..=name.len()).any(|i| matches(rest, &name[i..])),
            Some((b'?', rest)) => !name.is_empty() && matches(rest, &name[1..]),
            Some((c, rest)) => name.first() == Some(c) && matches(rest, &name[1..]),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            path
        }

        fn roots(r: &[&str]) -> Vec<PathBuf> {
            r.iter().map(PathBuf::from).collect()
        }

        #[test]
        fn config_path_as_containerd_2_loads_its_files() {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            let images = "[plugins.\"io.containerd.cri.v1.images\".registry]";
            let cri = "[plugins.\"io.containerd.grpc.v1.cri\".registry]";
            for (files, want) in [
                // Version 3: the images plugin's.
                (
                    vec![(
                        "config.toml",
                        format!("version = 3\n{images}\nconfig_path = \"/a:/b\"\n"),
                    )],
                    roots(&["/a", "/b"]),
                ),
                // Unset, or set empty: containerd's default, none.
                (vec![("config.toml", "version = 3\n".to_string())], vec![]),
                (
                    vec![(
                        "config.toml",
                        format!("version = 3\n{images}\nconfig_path = \"\"\n"),
                    )],
                    vec![],
                ),
                // Version 2: the CRI plugin's registry, migrated.
                (
                    vec![(
                        "config.toml",
                        format!("version = 2\n{cri}\nconfig_path = \"/v2\"\n"),
                    )],
                    roots(&["/v2"]),
                ),
                // ...replacing what the images plugin says below version 3.
                (
                    vec![(
                        "config.toml",
                        format!(
                            "version = 2\n{cri}\nconfig_path = \"/v2\"\n{images}\nconfig_path = \"/x\"\n"
                        ),
                    )],
                    roots(&["/v2"]),
                ),
                // A version 3 file ignores the old plugin's.
                (
                    vec![(
                        "config.toml",
                        format!("version = 3\n{cri}\nconfig_path = \"/old\"\n"),
                    )],
                    vec![],
                ),
                // Version 1: `cri` is the CRI plugin; the file takes the loaded version (3), so
                // its registry is not migrated, as in containerd.
                (
                    vec![(
                        "config.toml",
                        "[plugins.cri.registry]\nconfig_path = \"/v1\"\n".to_string(),
                    )],
                    vec![],
                ),
                // Imports: relative, globbed in name order, later files win, an empty value
                // does not clear a set one.
                (
                    vec![
                        (
                            "config.toml",
                            "version = 3\nimports = [\"conf.d/*.toml\"]\n".to_string(),
                        ),
                        (
                            "conf.d/20-b.toml",
                            format!("version = 3\n{images}\nconfig_path = \"/b\"\n"),
                        ),
                        (
                            "conf.d/10-a.toml",
                            format!("version = 3\n{images}\nconfig_path = \"/a\"\n"),
                        ),
                        (
                            "conf.d/30-c.toml",
                            format!("{images}\nconfig_path = \"\"\n"),
                        ),
                        (
                            "conf.d/ignored.conf",
                            format!("{images}\nconfig_path = \"/no\"\n"),
                        ),
                    ],
                    roots(&["/b"]),
                ),
                // An imported version 2 file makes the whole configuration version 2.
                (
                    vec![
                        (
                            "config.toml",
                            "version = 3\nimports = [\"/IMPORT\"]\n".to_string(),
                        ),
                        (
                            "v2.toml",
                            format!("version = 2\n{cri}\nconfig_path = \"/from-v2\"\n"),
                        ),
                    ],
                    roots(&["/from-v2"]),
                ),
                // A loop is read once.
                (
                    vec![
                        (
                            "config.toml",
                            format!(
                                "version = 3\nimports = [\"loop.toml\"]\n{images}\nconfig_path = \"/main\"\n"
                            ),
                        ),
                        (
                            "loop.toml",
                            "version = 3\nimports = [\"config.toml\"]\n".to_string(),
                        ),
                    ],
                    roots(&["/main"]),
                ),
            ] {
                let case = tempfile::tempdir_in(d).unwrap();
                for (name, text) in &files {
                    let text = text.replace(
                        "/IMPORT",
                        &case.path().join("v2.toml").display().to_string(),
                    );
                    write(case.path(), name, &text);
                }
                let got = read(&case.path().join("config.toml")).unwrap().unwrap();
                assert_eq!(got.roots, want, "{files:?}");
            }
            assert_eq!(read(&d.join("absent.toml")).unwrap(), None);
        }

        #[test]
        fn legacy_settings_only_without_a_config_path() {
            let dir = tempfile::tempdir().unwrap();
            let reg = "[plugins.\"io.containerd.cri.v1.images\".registry";
            let text = format!(
                "version = 3\n{reg}.mirrors.\"docker.io\"]\nendpoint = [\"https://mirror.local\"]\n{reg}.configs.\"mirror.local\".auth]\npassword = \"pw-in-file-3\"\n{reg}.configs.\"mirror.local\".tls]\nca_file = \"/c/ca.pem\"\ncert_file = \"/c/c.pem\"\nkey_file = \"/c/c.key\"\n{reg}.configs.\"auth-only.local\".auth]\npassword = \"pw-in-file-3\"\n"
            );
            let path = write(dir.path(), "config.toml", &text);
            let got = read(&path).unwrap().unwrap();
            let legacy = got.legacy.unwrap();
            assert_eq!(
                legacy.mirrors,
                [(
                    "docker.io".to_string(),
                    vec!["https://mirror.local".to_string()]
                )]
            );
            assert_eq!(
                legacy.tls,
                [(
                    "mirror.local".to_string(),
                    TlsSettings {
                        ca: vec![PathBuf::from("/c/ca.pem")],
                        client: vec![(PathBuf::from("/c/c.pem"), Some(PathBuf::from("/c/c.key")))],
                        skip_verify: false,
                    }
                )]
            );
            assert!(!format!("{legacy:?}").contains("pw-in-file-3"));
            // With a config_path containerd ignores them.
            let path = write(
                dir.path(),
                "config.toml",
                &format!("{text}{reg}]\nconfig_path = \"/d\"\n"),
            );
            let got = read(&path).unwrap().unwrap();
            assert_eq!((got.roots, got.legacy), (vec![PathBuf::from("/d")], None));
            let path = write(
                dir.path(),
                "config.toml",
                &format!("{reg}.mirrors.\"docker.io\"]\nendpoint = \"pw-in-file-3\"\n"),
            );
            let e = read(&path).unwrap_err().to_string();
            assert!(
                e.contains("`plugins.\"io.containerd.cri.v1.images\".registry.mirrors.\"docker.io\".endpoint` must be a list of URLs")
                    && !e.contains("pw-in-file-3"),
                "{e}"
            );
        }

        #[test]
        fn a_bad_file_is_named_with_its_field_and_no_value() {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            for (text, want) in [
                (
                    "version = 3\n[plugins\nsecret-ish = 1",
                    "config.toml: not valid TOML (line 2)",
                ),
                (
                    "version = \"3\"",
                    "config.toml: `version` must be an integer from 0 to 3",
                ),
                ("version = 9", "`version` must be"),
                (
                    "imports = [1]",
                    "config.toml: `imports` must be a list of paths",
                ),
                ("plugins = \"secret-ish\"", "`plugins` must be a table"),
                (
                    "version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry]\nconfig_path = [\"secret-ish\"]",
                    "config.toml: `plugins.\"io.containerd.cri.v1.images\".registry.config_path` must be a string",
                ),
                ("imports = [\"missing.toml\"]", "missing.toml: "),
            ] {
                let path = write(d, "config.toml", text);
                let e = read(&path).unwrap_err().to_string();
                assert!(e.contains(want), "{text:?}: {e}");
                assert!(!e.contains("secret-ish"), "{e}");
            }
            let unreadable = write(d, "dir.toml/x", "");
            let e = read(unreadable.parent().unwrap()).unwrap_err().to_string();
            assert!(e.contains("dir.toml"), "{e}");
        }

        #[test]
        fn glob_matches_as_filepath_match() {
            for (pattern, name, want) in [
                ("*.toml", "a.toml", true),
                ("*.toml", ".hidden.toml", true),
                ("*.toml", "a.toml.bak", false),
                ("?.toml", "a.toml", true),
                ("?.toml", "ab.toml", false),
                ("a*b*c", "axxbyyc", true),
                ("a*b*c", "axxbyy", false),
                ("*", "", true),
            ] {
                assert_eq!(
                    matches(pattern.as_bytes(), name.as_bytes()),
                    want,
                    "{pattern} {name}"
                );
            }
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), "x/1.toml", "");
            write(dir.path(), "y/2.toml", "");
            write(dir.path(), "y/3.txt", "");
            assert_eq!(
                glob(&dir.path().join("*/*.toml")),
                [dir.path().join("x/1.toml"), dir.path().join("y/2.toml")]
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_table() {
        let dir = tempfile::tempdir().unwrap();
        let write = |registry: &str, text: &str| {
            std::fs::create_dir_all(dir.path().join(registry)).unwrap();
            std::fs::write(dir.path().join(registry).join("hosts.toml"), text).unwrap();
        };
        write(
            "direct.io",
            "server = \"https://direct.io\"\n[host.\"https://direct.io\"]\n  capabilities = [\"pull\"]\n",
        );
        write(
            "mirrored.io:5000",
            "server = \"https://mirrored.io:5000\"\n[host.\"http://cache.local:5000/v2\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        );
        write("_default", "[host.\"https://peer-cache.local\"]\n");
        assert!(mirrors(dir.path(), "direct.io").is_empty());
        assert_eq!(
            mirrors(dir.path(), "mirrored.io:5000"),
            ["cache.local:5000"]
        );
        assert_eq!(mirrors(dir.path(), "other.io"), ["peer-cache.local"]);
        write("broken.io", "not = [toml");
        assert!(mirrors(dir.path(), "broken.io").is_empty());
        assert!(mirrors(Path::new("/nonexistent"), "x.io").is_empty());
        // containerd's `_port_` spelling comes first; a directory without hosts.toml (only
        // certificates) is still the one picked, and routes nothing.
        write(
            "spelled.io_5000_",
            "[host.\"https://spelled-mirror.local\"]\n",
        );
        write("spelled.io:5000", "[host.\"https://colon-mirror.local\"]\n");
        assert_eq!(
            mirrors(dir.path(), "spelled.io:5000"),
            ["spelled-mirror.local"]
        );
        std::fs::create_dir_all(dir.path().join("certs-only.io")).unwrap();
        std::fs::write(dir.path().join("certs-only.io/ca.crt"), "").unwrap();
        assert!(mirrors(dir.path(), "certs-only.io").is_empty());
        assert_eq!(
            host_paths("[::1]:5000"),
            ["[::1]_5000_", "[::1]:5000", "_default"]
        );
        let shared = HostsDir::shared(Some(dir.path().into())).unwrap();
        assert_eq!(shared.mirrors("other.io"), ["peer-cache.local"]);
        assert!(HostsDir::shared(None).is_none());
    }

    #[test]
    fn hosts_toml_as_containerd_reads_it() {
        let path = Path::new("/certs.d/reg.example/hosts.toml");
        let text = r#"
server = "https://reg.example"
capabilities = ["pull", "resolve"]

[host."https://z-first.local"]
  capabilities = ["pull"]
  ca = "z.crt"
  [host."https://z-first.local".header]
    Authorization = "Bearer hdr-secret-9q"
    X-Many = ["a", "b"]

[host."http://a-second.local:5000"]
  client = [["c.cert", "c.key"], "both.pem"]
  skip_verify = true
  override_path = true
  unknown_key = 1
"#;
        let f = parse_hosts_toml(path, text).unwrap();
        assert_eq!(f.server.as_deref(), Some("https://reg.example"));
        assert_eq!(
            f.server_settings.capabilities,
            Some(vec!["pull".to_string(), "resolve".to_string()])
        );
        let names: Vec<&str> = f.hosts.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(
            names,
            ["https://z-first.local", "http://a-second.local:5000"]
        );
        assert_eq!(f.hosts[0].1.ca, ["z.crt"]);
        assert_eq!(f.hosts[0].1.header.len(), 2);
        assert_eq!(
            f.hosts[1].1.client,
            [
                ("c.cert".to_string(), Some("c.key".to_string())),
                ("both.pem".to_string(), None)
            ]
        );
        assert_eq!(f.hosts[1].1.skip_verify, Some(true));
        assert!(f.hosts[1].1.override_path);
        assert!(!format!("{f:?}").contains("hdr-secret-9q"));

        for (text, want) in [
            ("server = 5", "`server` must be a string"),
            (
                "[host.\"https://m\"]\nca = 1",
                "`host.\"https://m\".ca` must be a path or a list of paths",
            ),
            (
                "[host.\"https://m\"]\nclient = [[\"a\"]]",
                "`host.\"https://m\".client` must be",
            ),
            (
                "[host.\"https://m\"]\nskip_verify = \"yes\"",
                "`host.\"https://m\".skip_verify` must be true or false",
            ),
            (
                "[host.\"https://m\".header]\nAuthorization = 7",
                "`host.\"https://m\".header.Authorization` must be",
            ),
            (
                "server = \"https://x\"\n[host\nsecret-ish = 1",
                "not valid TOML (line 2)",
            ),
        ] {
            let e = parse_hosts_toml(path, text).unwrap_err().to_string();
            assert!(e.starts_with("/certs.d/reg.example/hosts.toml: "), "{e}");
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains("secret-ish"), "{e}");
        }
    }

    #[test]
    fn registries_resolve_through_their_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let write = |registry: &str, name: &str, text: &str| {
            std::fs::create_dir_all(root.join(registry)).unwrap();
            std::fs::write(root.join(registry).join(name), text).unwrap();
        };
        write(
            "alias.example:5000",
            "hosts.toml",
            "server = \"http://127.0.0.1:5000\"\n[host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        );
        write("certs.example", "ca.crt", "");
        write("certs.example", "client.cert", "");
        write("certs.example", "client.key", "");
        write("broken.example", "hosts.toml", "server = [");
        write(
            "badcap.example",
            "hosts.toml",
            "[host.\"https://m\"]\ncapabilities = [\"fly\"]\n",
        );
        write("badcap.example", "ca.crt", "");
        let config = RuntimeRegistry {
            roots: vec![PathBuf::from("/nonexistent"), root.clone()],
            dialect: Dialect::V2,
            legacy: None,
        };
        let (hosts, problem) = config.hosts("alias.example:5000");
        assert!(problem.is_none());
        let up = registry_hosts::upstream(&hosts).unwrap();
        assert_eq!(up.origin(), "http://127.0.0.1:5000");
        let (hosts, _) = config.hosts("certs.example");
        assert_eq!(hosts[0].tls.ca, [root.join("certs.example/ca.crt")]);
        assert_eq!(
            hosts[0].tls.client,
            [(
                root.join("certs.example/client.cert"),
                Some(root.join("certs.example/client.key"))
            )]
        );
        let (hosts, problem) = config.hosts("broken.example");
        assert!(problem.unwrap().to_string().contains("not valid TOML"));
        assert_eq!(hosts[0].origin(), "https://broken.example");
        let (hosts, problem) = config.hosts("badcap.example");
        assert!(
            problem
                .unwrap()
                .to_string()
                .contains("unknown capability `fly`")
        );
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].tls.ca, [root.join("badcap.example/ca.crt")]);
        let (hosts, problem) = config.hosts("elsewhere.example");
        assert!(problem.is_none());
        assert_eq!(hosts[0].origin(), "https://elsewhere.example");
    }

    #[test]
    fn config_path_from_the_cri_status() {
        for (json, want) in [
            (
                r#"{"registry":{"configPath":"/etc/containerd/certs.d","mirrors":null}}"#,
                Some(vec!["/etc/containerd/certs.d"]),
            ),
            (
                r#"{"registry":{"configPath":"/a:/b"}}"#,
                Some(vec!["/a", "/b"]),
            ),
            (r#"{"registry":{"configPath":""}}"#, None),
            (
                r#"{"registry":{"configs":{"r":{"auth":{"password":"pw-in-config-1"}}}}}"#,
                None,
            ),
            (r#"{"containerd":{},"cni":{}}"#, None),
        ] {
            let got = RuntimeRegistry::roots_from_cri_config(json).unwrap();
            let want: Option<Vec<PathBuf>> =
                want.map(|w| w.into_iter().map(PathBuf::from).collect());
            assert_eq!(got, want, "{json}");
        }
        // Whether there is a registry section at all: 1.x sends one, 2.x none.
        for (json, want) in [
            (r#"{"registry":{"configPath":""}}"#, true),
            (r#"{"containerdRootDir":"/x","cni":{}}"#, false),
        ] {
            assert_eq!(
                RuntimeRegistry::reports_registry(json).unwrap(),
                want,
                "{json}"
            );
        }
        assert!(RuntimeRegistry::reports_registry("{").is_err());
        // The legacy settings, TLS only: a config's `auth` is never read.
        let legacy = RuntimeRegistry::legacy_from_cri_config(
            r#"{"registry":{"configPath":"","mirrors":{"docker.io":{"endpoint":["https://mirror.local"]}},"configs":{"mirror.local":{"auth":{"username":"u","password":"pw-in-config-1"},"tls":{"insecure_skip_verify":false,"caFile":"/etc/c/ca.pem","certFile":"/etc/c/c.pem","keyFile":""}}}}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            legacy.mirrors,
            [(
                "docker.io".to_string(),
                vec!["https://mirror.local".to_string()]
            )]
        );
        assert_eq!(
            legacy.tls,
            [(
                "mirror.local".to_string(),
                TlsSettings {
                    ca: vec![PathBuf::from("/etc/c/ca.pem")],
                    client: vec![(PathBuf::from("/etc/c/c.pem"), None)],
                    skip_verify: false,
                }
            )]
        );
        assert!(!format!("{legacy:?}").contains("pw-in-config-1"));
        for none in [
            r#"{"registry":{"configPath":"/x","mirrors":null,"configs":null}}"#,
            r#"{"registry":{"configs":{"r":{"auth":{"password":"p"}}}}}"#,
            r#"{"cni":{}}"#,
        ] {
            assert_eq!(
                RuntimeRegistry::legacy_from_cri_config(none).unwrap(),
                None,
                "{none}"
            );
        }
        let with_legacy = RuntimeRegistry {
            roots: Vec::new(),
            dialect: Dialect::V1_7,
            legacy: Some(legacy),
        };
        let (hosts, _) = with_legacy.hosts("docker.io");
        assert_eq!(
            hosts.iter().map(Host::origin).collect::<Vec<_>>(),
            ["https://mirror.local", "https://registry-1.docker.io"]
        );
        let e = RuntimeRegistry::roots_from_cri_config(
            r#"{"registry":{"configPath":5,"x":"pw-in-config-1"}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("pw-in-config-1") && e.contains("line 1"), "{e}");
    }
}
