//! How containerd reaches a registry: the ordered hosts it tries for one registry name, from that
//! registry's `hosts.toml` (as parsed by `adapters::containerd_config`) or, without one, its
//! defaults. Ported from containerd's `core/remotes/docker/config/hosts.go` (`ConfigureHosts`,
//! `parseHostsFile`, `parseHostConfig`; the same in 1.7 and 2.x) and
//! `core/remotes/docker/resolver.go` (`IsLocalhost`, `request`'s path join):
//!
//! - every `[host."…"]` entry in file order, then the `server` (the file's top level) last;
//!   without `server`, that last entry is the registry itself: `registry-1.docker.io` over HTTPS
//!   for `docker.io`, and for `localhost` or a loopback IP plain HTTP with `skip_verify` unless
//!   its port is empty or 443 (HTTPS only) — with any TLS setting on such an HTTP host, containerd
//!   tries HTTPS first and falls back to HTTP when the answer is not TLS ([`Host::http_fallback`]);
//! - a URL without a scheme is `https://`; its path is cleaned and gets `/v2` appended unless it
//!   ends with `/v2` or `override_path = true`; no path is `/v2`;
//! - `capabilities` (default all four), `ca` (a path or a list), `client` (a path, a list of paths,
//!   or a list of `[cert, key]` pairs), `skip_verify`, `header` (a value or a list): relative paths
//!   are relative to the `hosts.toml`'s directory.
//!
//! The release lines differ ([`Dialect`], from the tags `v1.6.20`, `v1.7.24`, `v2.1.9`): 1.6 has
//! no HTTPS-first fallback (a loopback registry is plain HTTP), and 1.6 and 1.7 ignore a
//! `hosts.toml` without any `[host]` table (their go-toml v1 `getSortedHosts` fails, and the
//! directory is read for certificate files only):
//! [`Dialect::V1_7`].

use std::path::{Path, PathBuf};

/// The directory containerd picked for a registry (`<config_path>/<host>`), as read by the
/// adapter: its `hosts.toml`, if one was there and could be parsed, and what its certificate
/// files say (`*.crt` CAs, `*.cert` with `*.key` client pairs), which containerd uses when there
/// is no usable `hosts.toml`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostDir {
    /// The directory: relative `ca` / `client` paths are joined to it.
    pub dir: PathBuf,
    pub file: Option<HostsFile>,
    /// Only `ca` and `client` are ever set (absolute paths).
    pub cert_files: HostSettings,
}

/// One `hosts.toml` as written: the top level (`server` and its settings) and each `[host."…"]`
/// table in file order. Plain data; the adapter parses the TOML.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostsFile {
    pub server: Option<String>,
    /// The top level's own settings (they apply to `server`).
    pub server_settings: HostSettings,
    /// `[host."URL"]` tables, in the order the file lists them.
    pub hosts: Vec<(String, HostSettings)>,
}

/// The settings of one host table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostSettings {
    pub capabilities: Option<Vec<String>>,
    pub ca: Vec<String>,
    /// `(certificate, key)`; no key: the key is in the certificate's file.
    pub client: Vec<(String, Option<String>)>,
    pub skip_verify: Option<bool>,
    pub override_path: bool,
    pub header: Vec<(String, Vec<HeaderValue>)>,
}

/// A `header` value of a `hosts.toml`: it may be a credential (`Authorization`), so its `Debug`
/// shows nothing of it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HeaderValue(pub String);

impl std::fmt::Debug for HeaderValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeaderValue(<redacted>)")
    }
}

/// Which containerd release line's semantics apply where the lines differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// 1.6: a loopback registry without configuration is plain HTTP (with `skip_verify`), and
    /// an HTTP host is never tried over HTTPS first; a `hosts.toml` without `[host]` is ignored.
    V1_6,
    /// 1.7: HTTPS first with the HTTP fallback; a `hosts.toml` without `[host]` is ignored.
    V1_7,
    /// 2.x (and anything unknown): every `hosts.toml` counts.
    V2,
}

impl Dialect {
    /// The dialect of a runtime version as CRI `Version` reports it (`1.6.20~ds1`, `v1.7.24`,
    /// `2.1.9`); anything else reads as 2.x.
    pub fn of_containerd_version(version: &str) -> Self {
        let v = version.trim().trim_start_matches('v');
        if v.starts_with("1.6.") || v == "1.6" || v.starts_with("1.5.") {
            Self::V1_6
        } else if v.starts_with("1.") {
            Self::V1_7
        } else {
            Self::V2
        }
    }

    fn ignores_server_only_file(self) -> bool {
        matches!(self, Self::V1_6 | Self::V1_7)
    }

    fn https_first(self) -> bool {
        !matches!(self, Self::V1_6)
    }
}

/// `http` or `https`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// What a host may be used for (containerd's `HostCapabilities`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Capabilities {
    pub pull: bool,
    pub resolve: bool,
    pub push: bool,
    pub referrers: bool,
}

impl Capabilities {
    pub const ALL: Self = Self {
        pull: true,
        resolve: true,
        push: true,
        referrers: true,
    };
}

/// How TLS is set up for one host. `Default` is the built-in roots, verified, no client
/// certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct TlsSettings {
    /// CA files trusted besides the built-in roots (containerd adds them to the system pool).
    pub ca: Vec<PathBuf>,
    /// Client certificate and key files; no key: it is in the certificate's file.
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    pub skip_verify: bool,
}

/// One host containerd tries for a registry, in its order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub scheme: Scheme,
    /// `host[:port]`.
    pub host: String,
    /// The API root, e.g. `/v2` or `/registry/v2`; requests go to `PATH/REPOSITORY/…`.
    pub path: String,
    pub capabilities: Capabilities,
    pub tls: TlsSettings,
    /// HTTPS first, then plain HTTP when the answer is not TLS (containerd's `NewHTTPFallback`).
    pub http_fallback: bool,
    pub header: Vec<(String, Vec<HeaderValue>)>,
}

impl Host {
    /// `scheme://host`.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme.as_str(), self.host)
    }
}

/// Why a `hosts.toml` cannot be used as written (containerd then logs it and reads the
/// directory's certificate files instead).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostsError {
    #[error(
        "`{table}`: `capabilities` holds unknown capability `{value}` (pull, resolve, push, referrers)"
    )]
    UnknownCapability { table: String, value: String },
    #[error("`{table}`: the URL `{url}` is not a valid registry URL: {reason}")]
    BadUrl {
        table: String,
        url: String,
        reason: String,
    },
}

/// The hosts containerd tries for `registry`, in order: from its directory's `hosts.toml` (as
/// [`Dialect`] reads it), else its certificate files and containerd's defaults. Never empty.
pub fn resolve(
    registry: &str,
    dir: Option<&HostDir>,
    dialect: Dialect,
) -> Result<Vec<Host>, HostsError> {
    let file = dir.and_then(|d| {
        d.file
            .as_ref()
            .filter(|f| !dialect.ignores_server_only_file() || !f.hosts.is_empty())
            .map(|f| (f, d.dir.as_path()))
    });
    // Each host with whether it names a TLS setting (containerd: a non-nil `ca`, `client` or
    // `skip_verify`, even `skip_verify = false`).
    let mut hosts: Vec<(Host, bool)> = Vec::new();
    if let Some((file, base)) = file {
        for (url, settings) in &file.hosts {
            hosts.push(parse_host(
                &format!("host.\"{url}\""),
                Some(url),
                settings,
                base,
            )?);
        }
        hosts.push(parse_host(
            "server",
            file.server.as_deref().filter(|s| !s.is_empty()),
            &file.server_settings,
            base,
        )?);
    } else if let Some(d) = dir {
        // `loadCertFiles`: one unset host with the directory's certificates.
        hosts.push(parse_host(
            "certificate files",
            None,
            &d.cert_files,
            &d.dir,
        )?);
    } else {
        hosts.push((unset_host(), false));
    }
    if let Some((last, explicit)) = hosts.last_mut().filter(|(h, _)| h.host.is_empty()) {
        default_host(registry, last, dialect);
        *explicit |= last.tls.skip_verify;
    }
    let hosts: Vec<Host> = hosts
        .into_iter()
        .map(|(mut host, explicit_tls)| {
            if dialect.https_first()
                && host.scheme == Scheme::Http
                && explicit_tls
                && port_of(&host.host) != Some("80")
            {
                host.scheme = Scheme::Https;
                host.http_fallback = true;
            }
            host
        })
        .collect();
    Ok(hosts)
}

/// The registry itself among the hosts, as containerd reaches it — the last host (the `server`,
/// or the default), or the first earlier entry for that same endpoint, whose settings (`ca`,
/// `client`…) containerd uses first. The entries before it that name other endpoints are mirrors
/// (`MirrorInPath`). The registry-direct canary walks every host
/// (`decide::canary::hosts_walk`), not only this one.
pub fn upstream(hosts: &[Host]) -> Option<&Host> {
    let last = hosts.last()?;
    hosts
        .iter()
        .find(|h| h.host == last.host && h.scheme == last.scheme && h.capabilities.resolve)
        .or(Some(last))
}

/// containerd 1.x's legacy CRI registry settings, used when no `config_path` is set:
/// `registry.mirrors` (endpoints per registry name, `*` for any) and the TLS part of
/// `registry.configs` (per endpoint host; its `auth` is never read).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LegacyRegistry {
    pub mirrors: Vec<(String, Vec<String>)>,
    pub tls: Vec<(String, TlsSettings)>,
}

/// The hosts containerd 1.x tries for `registry` from its legacy settings (`registryEndpoints`
/// and `registryHosts` in `pkg/cri/server/image_pull.go`, v1.7.24): the mirror endpoints of
/// `registry` (else of `*`), an endpoint without a scheme getting `http` for loopback and `https`
/// otherwise, then the registry itself unless an endpoint already names it; each with the TLS
/// of `registry.configs` for its host, its path or `/v2`, and pull and resolve only.
pub fn resolve_legacy(registry: &str, legacy: &LegacyRegistry) -> Vec<Host> {
    let default_scheme = |host: &str| {
        if is_localhost(host) {
            Scheme::Http
        } else {
            Scheme::Https
        }
    };
    let endpoints = legacy
        .mirrors
        .iter()
        .find(|(name, _)| name == registry)
        .or_else(|| legacy.mirrors.iter().find(|(name, _)| name == "*"))
        .map(|(_, e)| e.clone())
        .unwrap_or_default();
    let mut hosts: Vec<Host> = Vec::new();
    for endpoint in endpoints {
        let (scheme, rest) = match endpoint.split_once("://") {
            Some(("http", rest)) => (Scheme::Http, rest.to_string()),
            Some(("https", rest)) => (Scheme::Https, rest.to_string()),
            // containerd refuses the whole list over a URL it cannot parse; another scheme is
            // one it cannot use.
            Some(_) => continue,
            None => {
                let host = endpoint.split('/').next().unwrap_or("");
                (default_scheme(host), endpoint.clone())
            }
        };
        let (host, path) = match rest.find('/') {
            Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
            None => (rest, String::new()),
        };
        hosts.push(legacy_host(scheme, host, path, legacy));
    }
    if !hosts.iter().any(|h| h.host == registry) {
        let default = if registry == "docker.io" {
            "registry-1.docker.io".to_string()
        } else {
            registry.to_string()
        };
        let scheme = default_scheme(&default);
        hosts.push(legacy_host(scheme, default, String::new(), legacy));
    }
    hosts
}

fn legacy_host(scheme: Scheme, host: String, path: String, legacy: &LegacyRegistry) -> Host {
    let mut tls = legacy
        .tls
        .iter()
        .find(|(h, _)| *h == host)
        .map(|(_, t)| t.clone())
        .unwrap_or_default();
    if tls == TlsSettings::default() && is_localhost(&host) && scheme == Scheme::Http {
        tls.skip_verify = true;
    }
    Host {
        scheme,
        path: if path.is_empty() { "/v2".into() } else { path },
        host,
        capabilities: Capabilities {
            pull: true,
            resolve: true,
            ..Capabilities::default()
        },
        tls,
        http_fallback: false,
        header: Vec::new(),
    }
}

fn unset_host() -> Host {
    Host {
        scheme: Scheme::Https,
        host: String::new(),
        path: "/v2".into(),
        capabilities: Capabilities::ALL,
        tls: TlsSettings::default(),
        http_fallback: false,
        header: Vec::new(),
    }
}

/// containerd's default for a host entry that names no server (`ConfigureHosts`).
fn default_host(registry: &str, host: &mut Host, dialect: Dialect) {
    if registry == "docker.io" {
        host.scheme = Scheme::Https;
        host.host = "registry-1.docker.io".into();
    } else if is_localhost(registry) {
        host.host = registry.into();
        let port = port_of(registry);
        host.scheme = if dialect.https_first() && matches!(port, None | Some("443")) {
            Scheme::Https
        } else {
            Scheme::Http
        };
        if port != Some("80") || !dialect.https_first() {
            host.tls.skip_verify = true;
        }
    } else {
        host.host = registry.into();
        host.scheme = Scheme::Https;
    }
    host.path = "/v2".into();
    host.capabilities = Capabilities::ALL;
}

/// `localhost` or a loopback IP, with or without a port (`resolver.go`'s `IsLocalhost`).
pub fn is_localhost(host: &str) -> bool {
    let name = split_host_port(host).0;
    if name == "localhost" {
        return true;
    }
    name.parse::<core::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// `host[:port]` split as Go's `net.SplitHostPort` does for the cases a registry name has (a
/// bracketed IPv6 literal, or one colon); anything else is all host.
fn split_host_port(host: &str) -> (&str, Option<&str>) {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, tail)) => (ip, tail.strip_prefix(':')),
            None => (host, None),
        };
    }
    match host.split_once(':') {
        Some((name, port)) if !port.contains(':') => (name, Some(port)),
        _ => (host, None),
    }
}

fn port_of(host: &str) -> Option<&str> {
    split_host_port(host).1
}

/// `parseHostConfig`: one table's URL and settings.
fn parse_host(
    table: &str,
    url: Option<&str>,
    settings: &HostSettings,
    dir: &Path,
) -> Result<(Host, bool), HostsError> {
    let mut host = unset_host();
    let explicit_tls =
        settings.skip_verify.is_some() || !settings.ca.is_empty() || !settings.client.is_empty();
    if let Some(url) = url {
        let bad = |reason: &str| HostsError::BadUrl {
            table: table.to_string(),
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let full = if url.starts_with("http") {
            url.to_string()
        } else {
            format!("https://{url}")
        };
        let (scheme, rest) = full
            .split_once("://")
            .ok_or_else(|| bad("expected http:// or https://"))?;
        host.scheme = match scheme {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(bad("expected http:// or https://")),
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let path = path.split(['?', '#']).next().unwrap_or("");
        if authority.is_empty()
            || authority.contains('@')
            || authority.contains(char::is_whitespace)
        {
            return Err(bad("expected scheme://host[:port][/path]"));
        }
        host.host = authority.to_string();
        host.path = if path.is_empty() {
            if settings.override_path {
                String::new()
            } else {
                "/v2".into()
            }
        } else {
            let cleaned = clean_path(path);
            if cleaned.ends_with("/v2") || settings.override_path {
                cleaned
            } else {
                format!("{}/v2", cleaned.trim_end_matches('/'))
            }
        };
    }
    host.tls.skip_verify = settings.skip_verify.unwrap_or(false);
    host.tls.ca = settings.ca.iter().map(|p| absolute(p, dir)).collect();
    host.tls.client = settings
        .client
        .iter()
        .map(|(cert, key)| {
            (
                absolute(cert, dir),
                key.as_deref().map(|k| absolute(k, dir)),
            )
        })
        .collect();
    if let Some(list) = &settings.capabilities {
        let mut caps = Capabilities::default();
        for c in list {
            match c.to_ascii_lowercase().as_str() {
                "pull" => caps.pull = true,
                "resolve" => caps.resolve = true,
                "push" => caps.push = true,
                "referrers" => caps.referrers = true,
                _ => {
                    return Err(HostsError::UnknownCapability {
                        table: table.to_string(),
                        value: c.clone(),
                    });
                }
            }
        }
        // containerd treats an empty list as unset (`len(config.Capabilities) > 0`).
        host.capabilities = if list.is_empty() {
            Capabilities::ALL
        } else {
            caps
        };
    }
    host.header.clone_from(&settings.header);
    Ok((host, explicit_tls))
}

fn absolute(path: &str, dir: &Path) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// Go's `path.Clean` for an absolute URL path: no empty, `.` or `..` segments, no trailing slash.
fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> HostSettings {
        HostSettings::default()
    }

    fn file(server: Option<&str>, hosts: &[(&str, HostSettings)]) -> HostDir {
        HostDir {
            dir: PathBuf::from("/etc/containerd/certs.d/reg.example"),
            file: Some(HostsFile {
                server: server.map(String::from),
                server_settings: settings(),
                hosts: hosts
                    .iter()
                    .map(|(u, s)| (u.to_string(), s.clone()))
                    .collect(),
            }),
            cert_files: settings(),
        }
    }

    fn hosts_of(f: &mut HostDir) -> &mut Vec<(String, HostSettings)> {
        &mut f.file.as_mut().unwrap().hosts
    }

    /// `(scheme, host, path, fallback)` of each host.
    fn shape(hosts: &[Host]) -> Vec<(&'static str, String, String, bool)> {
        hosts
            .iter()
            .map(|h| {
                (
                    h.scheme.as_str(),
                    h.host.clone(),
                    h.path.clone(),
                    h.http_fallback,
                )
            })
            .collect()
    }

    #[test]
    fn defaults_without_a_file() {
        for (registry, want) in [
            ("reg.example", ("https", "reg.example", false, false)),
            (
                "reg.example:5000",
                ("https", "reg.example:5000", false, false),
            ),
            ("docker.io", ("https", "registry-1.docker.io", false, false)),
            // Loopback on a port: HTTP, but skip_verify makes it a TLS setting, so HTTPS first
            // with the fallback (1.7 and 2.x).
            ("127.0.0.1:5000", ("https", "127.0.0.1:5000", true, true)),
            ("localhost:5000", ("https", "localhost:5000", true, true)),
            ("[::1]:5000", ("https", "[::1]:5000", true, true)),
            // Port 80 is unambiguous: plain HTTP, nothing to skip.
            ("localhost:80", ("http", "localhost:80", false, false)),
            // No port or 443: HTTPS only, unverified.
            ("localhost", ("https", "localhost", true, false)),
            ("127.0.0.1:443", ("https", "127.0.0.1:443", true, false)),
            ("10.0.0.1:5000", ("https", "10.0.0.1:5000", false, false)),
        ] {
            let hosts = resolve(registry, None, Dialect::V2).unwrap();
            assert_eq!(hosts.len(), 1, "{registry}");
            let h = &hosts[0];
            assert_eq!(
                (
                    h.scheme.as_str(),
                    h.host.as_str(),
                    h.tls.skip_verify,
                    h.http_fallback
                ),
                want,
                "{registry}"
            );
            assert_eq!(h.path, "/v2", "{registry}");
            assert_eq!(h.capabilities, Capabilities::ALL, "{registry}");
        }
    }

    #[test]
    fn files_as_containerd_reads_them() {
        let pull = HostSettings {
            capabilities: Some(vec!["pull".into(), "resolve".into()]),
            ..settings()
        };
        for (name, registry, f, want) in [
            (
                "the opening scenario: plain HTTP server, same host entry",
                "127.0.0.1:5000",
                file(
                    Some("http://127.0.0.1:5000"),
                    &[("http://127.0.0.1:5000", pull.clone())],
                ),
                vec![
                    ("http", "127.0.0.1:5000", "/v2", false),
                    ("http", "127.0.0.1:5000", "/v2", false),
                ],
            ),
            (
                "a name routed elsewhere, server only",
                "reg.example:5000",
                file(Some("http://127.0.0.1:5000"), &[]),
                vec![("http", "127.0.0.1:5000", "/v2", false)],
            ),
            (
                "no scheme is https; a path gets /v2",
                "reg.example",
                file(Some("mirror.local/registry/"), &[]),
                vec![("https", "mirror.local", "/registry/v2", false)],
            ),
            (
                "a path ending in /v2 is kept, cleaned",
                "reg.example",
                file(Some("https://m.local//a/./b/../v2"), &[]),
                vec![("https", "m.local", "/a/v2", false)],
            ),
            (
                "no server: the registry's default comes last, mirrors in file order",
                "reg.example",
                file(
                    None,
                    &[
                        ("https://b.local", pull.clone()),
                        ("http://a.local:5000", pull.clone()),
                    ],
                ),
                vec![
                    ("https", "b.local", "/v2", false),
                    ("http", "a.local:5000", "/v2", false),
                    ("https", "reg.example", "/v2", false),
                ],
            ),
            (
                "no server for docker.io",
                "docker.io",
                file(None, &[]),
                vec![("https", "registry-1.docker.io", "/v2", false)],
            ),
        ] {
            let hosts = resolve(registry, Some(&f), Dialect::V2).unwrap();
            let want: Vec<_> = want
                .into_iter()
                .map(|(s, h, p, fb)| (s, h.to_string(), p.to_string(), fb))
                .collect();
            assert_eq!(shape(&hosts), want, "{name}");
        }
    }

    #[test]
    fn settings_per_host() {
        let mut f = file(Some("https://reg.example"), &[]);
        hosts_of(&mut f).push((
            "https://reg.example".into(),
            HostSettings {
                capabilities: Some(vec!["Pull".into(), "RESOLVE".into()]),
                ca: vec!["ca.crt".into(), "/abs/other.pem".into()],
                client: vec![
                    ("client.cert".into(), Some("client.key".into())),
                    ("both.pem".into(), None),
                ],
                header: vec![(
                    "X-Team".into(),
                    vec![HeaderValue("a".into()), HeaderValue("b".into())],
                )],
                ..settings()
            },
        ));
        hosts_of(&mut f).push((
            "http://plain.local:5000/custom".into(),
            HostSettings {
                override_path: true,
                capabilities: Some(vec!["pull".into()]),
                ..settings()
            },
        ));
        hosts_of(&mut f).push((
            "http://tls-on-http.local:5000".into(),
            HostSettings {
                skip_verify: Some(true),
                ..settings()
            },
        ));
        // Even `skip_verify = false` is a TLS setting to containerd; port 80 never upgrades.
        hosts_of(&mut f).push((
            "http://verify.local:5000".into(),
            HostSettings {
                skip_verify: Some(false),
                ..settings()
            },
        ));
        hosts_of(&mut f).push((
            "http://port80.local:80".into(),
            HostSettings {
                skip_verify: Some(true),
                ..settings()
            },
        ));
        let hosts = resolve("reg.example", Some(&f), Dialect::V2).unwrap();
        let dir = Path::new("/etc/containerd/certs.d/reg.example");
        assert_eq!(
            hosts[0].tls,
            TlsSettings {
                ca: vec![dir.join("ca.crt"), PathBuf::from("/abs/other.pem")],
                client: vec![
                    (dir.join("client.cert"), Some(dir.join("client.key"))),
                    (dir.join("both.pem"), None),
                ],
                skip_verify: false,
            }
        );
        assert_eq!(
            hosts[0].capabilities,
            Capabilities {
                pull: true,
                resolve: true,
                ..Capabilities::default()
            }
        );
        assert_eq!(
            hosts[0].header,
            [(
                "X-Team".to_string(),
                vec![HeaderValue("a".into()), HeaderValue("b".into())]
            )]
        );
        assert!(!format!("{:?}", hosts[0]).contains("\"a\""));
        assert_eq!(
            (
                hosts[1].scheme,
                hosts[1].path.as_str(),
                hosts[1].capabilities.resolve
            ),
            (Scheme::Http, "/custom", false)
        );
        // A TLS setting on an HTTP host (not port 80): HTTPS first, then HTTP.
        assert_eq!(
            (
                hosts[2].scheme,
                hosts[2].http_fallback,
                hosts[2].tls.skip_verify
            ),
            (Scheme::Https, true, true)
        );
        assert_eq!(
            (hosts[3].scheme, hosts[3].http_fallback),
            (Scheme::Https, true)
        );
        assert_eq!(
            (hosts[4].scheme, hosts[4].http_fallback),
            (Scheme::Http, false)
        );
        // The upstream is the first entry for the server's endpoint, with its CA.
        let up = upstream(&hosts).unwrap();
        assert_eq!(up.tls.ca.len(), 2);
        assert_eq!(up.host, "reg.example");
    }

    #[test]
    fn the_upstream_skips_mirrors_and_hosts_that_cannot_resolve() {
        let pull_only = HostSettings {
            capabilities: Some(vec!["pull".into()]),
            ..settings()
        };
        let f = file(
            Some("https://reg.example"),
            &[
                ("https://mirror.local", settings()),
                ("https://reg.example", pull_only),
            ],
        );
        let hosts = resolve("reg.example", Some(&f), Dialect::V2).unwrap();
        let up = upstream(&hosts).unwrap();
        assert_eq!(
            (up.host.as_str(), up.capabilities.resolve),
            ("reg.example", true)
        );
        assert!(std::ptr::eq(up, hosts.last().unwrap()));
    }

    #[test]
    fn release_lines_differ_on_a_server_only_file() {
        let f = file(Some("http://127.0.0.1:5000"), &[]);
        let current = resolve("reg.example:5000", Some(&f), Dialect::V2).unwrap();
        assert_eq!(current[0].host, "127.0.0.1:5000");
        let old = resolve("reg.example:5000", Some(&f), Dialect::V1_7).unwrap();
        assert_eq!(
            shape(&old),
            [("https", "reg.example:5000".into(), "/v2".into(), false)]
        );
    }

    #[test]
    fn release_line_1_6_has_no_https_first() {
        let hosts = resolve("127.0.0.1:5000", None, Dialect::V1_6).unwrap();
        assert_eq!(
            shape(&hosts),
            [("http", "127.0.0.1:5000".into(), "/v2".into(), false)]
        );
        assert!(hosts[0].tls.skip_verify);
        let hosts = resolve("localhost", None, Dialect::V1_6).unwrap();
        assert_eq!(hosts[0].scheme, Scheme::Http);
        let mut f = file(Some("http://10.0.0.1:5000"), &[]);
        hosts_of(&mut f).push((
            "http://10.0.0.1:5000".into(),
            HostSettings {
                skip_verify: Some(true),
                ..settings()
            },
        ));
        let hosts = resolve("reg.example", Some(&f), Dialect::V1_6).unwrap();
        assert_eq!(
            (hosts[0].scheme, hosts[0].http_fallback),
            (Scheme::Http, false)
        );
        for (version, want) in [
            ("1.6.20~ds1", Dialect::V1_6),
            ("v1.7.24", Dialect::V1_7),
            ("1.7.24~ds1", Dialect::V1_7),
            ("2.1.9", Dialect::V2),
            ("v2.0.0", Dialect::V2),
            ("", Dialect::V2),
        ] {
            assert_eq!(Dialect::of_containerd_version(version), want, "{version}");
        }
    }

    #[test]
    fn certificate_files_apply_to_the_default_host() {
        let dir = HostDir {
            dir: PathBuf::from("/certs.d/127.0.0.1:5000"),
            file: None,
            cert_files: HostSettings {
                ca: vec!["/certs.d/127.0.0.1:5000/ca.crt".into()],
                ..settings()
            },
        };
        let hosts = resolve("127.0.0.1:5000", Some(&dir), Dialect::V2).unwrap();
        assert_eq!(
            shape(&hosts),
            [("https", "127.0.0.1:5000".into(), "/v2".into(), true)]
        );
        assert_eq!(
            hosts[0].tls.ca,
            [PathBuf::from("/certs.d/127.0.0.1:5000/ca.crt")]
        );
        // Without any certificate and off loopback: the plain default.
        let empty = HostDir {
            file: None,
            ..HostDir::default()
        };
        let hosts = resolve("reg.example", Some(&empty), Dialect::V2).unwrap();
        assert_eq!(
            shape(&hosts),
            [("https", "reg.example".into(), "/v2".into(), false)]
        );
    }

    #[test]
    fn legacy_mirrors_and_configs_as_containerd_1_x_reads_them() {
        let tls = TlsSettings {
            ca: vec![PathBuf::from("/etc/certs/reg.crt")],
            ..TlsSettings::default()
        };
        let legacy = LegacyRegistry {
            mirrors: vec![
                (
                    "reg.example".into(),
                    vec!["mirror.local:5000".into(), "http://10.0.0.9/custom".into()],
                ),
                ("self.example".into(), vec!["https://self.example".into()]),
                ("*".into(), vec!["https://any.local".into()]),
                ("docker.io".into(), vec![]),
            ],
            tls: vec![("reg.example".into(), tls.clone())],
        };
        let hosts = resolve_legacy("reg.example", &legacy);
        assert_eq!(
            shape(&hosts),
            [
                ("https", "mirror.local:5000".into(), "/v2".into(), false),
                ("http", "10.0.0.9".into(), "/custom".into(), false),
                ("https", "reg.example".into(), "/v2".into(), false),
            ]
        );
        assert_eq!(hosts[2].tls, tls);
        assert!(!hosts[2].capabilities.push);
        assert_eq!(upstream(&hosts).unwrap().host, "reg.example");
        // An endpoint naming the registry itself: no default appended.
        assert_eq!(resolve_legacy("self.example", &legacy).len(), 1);
        // `*` for any other name; docker.io's default host.
        assert_eq!(
            shape(&resolve_legacy("other.example", &legacy)),
            [
                ("https", "any.local".into(), "/v2".into(), false),
                ("https", "other.example".into(), "/v2".into(), false)
            ]
        );
        assert_eq!(
            shape(&resolve_legacy("docker.io", &legacy)),
            [("https", "registry-1.docker.io".into(), "/v2".into(), false)]
        );
        // Loopback without a mirror: plain HTTP.
        assert_eq!(
            shape(&resolve_legacy(
                "127.0.0.1:5000",
                &LegacyRegistry::default()
            )),
            [("http", "127.0.0.1:5000".into(), "/v2".into(), false)]
        );
    }

    #[test]
    fn bad_tables_are_named() {
        let f = file(
            Some("https://reg.example"),
            &[(
                "https://m.local",
                HostSettings {
                    capabilities: Some(vec!["pull".into(), "fly".into()]),
                    ..settings()
                },
            )],
        );
        assert_eq!(
            resolve("reg.example", Some(&f), Dialect::V2)
                .unwrap_err()
                .to_string(),
            "`host.\"https://m.local\"`: `capabilities` holds unknown capability `fly` (pull, resolve, push, referrers)"
        );
        for url in ["https://", "https://user@x", "https://a b", "httpx://a"] {
            let f = file(Some(url), &[]);
            let e = resolve("reg.example", Some(&f), Dialect::V2).unwrap_err();
            assert!(matches!(e, HostsError::BadUrl { .. }), "{url}: {e}");
            assert!(e.to_string().starts_with("`server`"), "{url}: {e}");
        }
    }
}
