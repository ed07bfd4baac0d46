//! The kubelet's keyring rules, reproduced: which keys of a Docker config match an image, and in
//! which order their credentials are tried.
//!
//! - A key is read as a URL with `https://` assumed; its scheme is dropped, a leading `/v1/` or
//!   `/v2/` of its path is dropped, and the remaining key is `host[:port][/path]`, not lower-cased.
//!   A key that is not a valid URL (a non-numeric port, say) is ignored.
//! - A key matches an image (`registry/repository`, normalised, no tag or digest) when the ports are
//!   equal as strings, the hosts have the same number of DNS labels and each label of the key
//!   glob-matches the image's (`*`, `?`, `[a-z]`, per label), and the key's path is a string prefix
//!   of the image's path.
//! - Matching keys are visited in reverse byte order of the normalised key (which is not always
//!   "most specific first": `reg.io/team` sorts after `reg.io/teamz`), and every credential of every
//!   matching key is a candidate, in the order the keys were added.
//! - When nothing matches and the image is on Docker Hub, the credentials of `index.docker.io`
//!   (written `https://index.docker.io/v1/` by `docker login`) apply.

use std::collections::BTreeMap;

/// Where Docker Hub credentials are filed.
const DEFAULT_REGISTRY_KEY: &str = "index.docker.io";

/// A host and path read from a key or an image, the way Go's `url.Parse("https://" + s)` reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemelessUrl {
    /// `host[:port]` as written.
    pub host: String,
    /// Decoded path, possibly empty.
    pub path: String,
}

impl SchemelessUrl {
    /// Parses `s` as the authority and path of an `https://` URL. `None` where Go's parser fails
    /// (bad port, bad percent-escape, control characters, empty or malformed IPv6 host).
    pub fn parse(s: &str) -> Option<Self> {
        if s.chars().any(|c| c.is_control() || c == ' ') {
            return None;
        }
        let end = s.find(['?', '#']).unwrap_or(s.len());
        let s = &s[..end];
        let (authority, path) = match s.find('/') {
            Some(i) => (&s[..i], &s[i..]),
            None => (s, ""),
        };
        // Userinfo is allowed by the URL grammar and not part of the host.
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if !valid_authority_host(host) {
            return None;
        }
        Some(Self {
            host: host.to_string(),
            path: percent_decode(path)?,
        })
    }

    /// DNS labels and port (`""` when none), as Go's `net.SplitHostPort` splits them.
    fn labels_and_port(&self) -> (Vec<&str>, &str) {
        let (host, port) = split_host_port(&self.host).unwrap_or((self.host.as_str(), ""));
        (host.split('.').collect(), port)
    }
}

fn valid_authority_host(host: &str) -> bool {
    if let Some(rest) = host.strip_prefix('[') {
        let Some((addr, tail)) = rest.split_once(']') else {
            return false;
        };
        return !addr.is_empty()
            && (tail.is_empty()
                || tail
                    .strip_prefix(':')
                    .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit())));
    }
    match host.rsplit_once(':') {
        Some((name, port)) => !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()),
        None => true,
    }
}

/// `net.SplitHostPort`: `None` when there is no port.
fn split_host_port(host: &str) -> Option<(&str, &str)> {
    if let Some(rest) = host.strip_prefix('[') {
        let (addr, tail) = rest.split_once(']')?;
        return Some((addr, tail.strip_prefix(':')?));
    }
    let (name, port) = host.rsplit_once(':')?;
    if name.contains(':') {
        return None;
    }
    Some((name, port))
}

fn percent_decode(path: &str) -> Option<String> {
    if !path.contains('%') {
        return Some(path.to_string());
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = path.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Normalises a Docker config key as the kubelet does; `None` for a key it ignores.
pub fn normalize_key(key: &str) -> Option<String> {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let url = SchemelessUrl::parse(rest)?;
    let mut path = url.path.as_str();
    if path.starts_with("/v2/") || path.starts_with("/v1/") {
        path = &path[3..];
    }
    if path.is_empty() || path == "/" {
        Some(url.host)
    } else {
        Some(format!("{}{path}", url.host))
    }
}

/// Whether the key (a glob, normalised) matches the image (`registry/repository`).
pub fn urls_match(key: &str, image: &str) -> bool {
    let (Some(glob), Some(target)) = (SchemelessUrl::parse(key), SchemelessUrl::parse(image))
    else {
        return false;
    };
    let (glob_labels, glob_port) = glob.labels_and_port();
    let (target_labels, target_port) = target.labels_and_port();
    glob_port == target_port
        && glob_labels.len() == target_labels.len()
        && target.path.starts_with(&glob.path)
        && glob_labels
            .iter()
            .zip(&target_labels)
            .all(|(g, t)| glob_match(g, t) == Some(true))
}

/// Go's `filepath.Match` for one label (no separators): `*`, `?`, `[...]` with ranges and `^`
/// negation, `\` escapes. `None` for a malformed pattern (which the kubelet treats as no match).
pub fn glob_match(pattern: &str, name: &str) -> Option<bool> {
    let tokens = tokenize(pattern)?;
    let name: Vec<char> = name.chars().collect();
    Some(match_tokens(&tokens, &name))
}

#[derive(Debug, PartialEq)]
enum Token {
    Star,
    Any,
    Lit(char),
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

fn tokenize(pattern: &str) -> Option<Vec<Token>> {
    let mut chars = pattern.chars().peekable();
    let mut tokens = Vec::new();
    while let Some(c) = chars.next() {
        tokens.push(match c {
            '*' => Token::Star,
            '?' => Token::Any,
            '\\' => Token::Lit(chars.next()?),
            '[' => {
                let negated = chars.next_if_eq(&'^').is_some();
                let mut ranges = Vec::new();
                loop {
                    let c = chars.next()?;
                    if c == ']' && !ranges.is_empty() {
                        break;
                    }
                    let lo = class_char(c, &mut chars)?;
                    let hi = if chars.next_if_eq(&'-').is_some() {
                        let c = chars.next()?;
                        class_char(c, &mut chars)?
                    } else {
                        lo
                    };
                    if hi < lo {
                        return None;
                    }
                    ranges.push((lo, hi));
                }
                Token::Class { negated, ranges }
            }
            c => Token::Lit(c),
        });
    }
    Some(tokens)
}

/// One character of a class: `-` and `]` must be escaped.
fn class_char(c: char, rest: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<char> {
    match c {
        '\\' => rest.next(),
        '-' | ']' => None,
        c => Some(c),
    }
}

/// Dynamic programming over (token, position): linear in the pattern times the name, whatever
/// the stars (keys come from users' secrets; a pathological glob must not hang the agent).
fn match_tokens(tokens: &[Token], name: &[char]) -> bool {
    let mut reach = vec![false; name.len() + 1];
    reach[0] = true;
    for token in tokens {
        let mut next = vec![false; name.len() + 1];
        match token {
            Token::Star => {
                let mut any = false;
                for (j, r) in reach.iter().enumerate() {
                    any |= *r;
                    next[j] = any;
                }
            }
            single => {
                for (j, &c) in name.iter().enumerate() {
                    if reach[j] && single_matches(single, c) {
                        next[j + 1] = true;
                    }
                }
            }
        }
        reach = next;
    }
    reach[name.len()]
}

fn single_matches(token: &Token, c: char) -> bool {
    match token {
        Token::Any => true,
        Token::Lit(l) => *l == c,
        Token::Class { negated, ranges } => {
            ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
        }
        Token::Star => true,
    }
}

/// Is `image` (`registry/repository`) pulled from Docker Hub, by the kubelet's rule?
pub fn is_default_registry_match(image: &str) -> bool {
    let mut parts = image.splitn(2, '/');
    let first = parts.next().unwrap_or_default();
    if first.is_empty() {
        return false;
    }
    if parts.next().is_none() {
        return true;
    }
    first == "docker.io" || first == "index.docker.io" || !first.contains(['.', ':'])
}

/// A credential filed under a key.
#[derive(Clone, Debug)]
pub struct Filed<T> {
    /// The key exactly as written.
    pub key: String,
    pub value: T,
}

/// A keyring: credentials by normalised key, visited in the kubelet's order.
#[derive(Clone, Debug)]
pub struct Keyring<T> {
    by_key: BTreeMap<String, Vec<Filed<T>>>,
    /// Keys that were ignored because the kubelet cannot parse them.
    pub ignored: Vec<String>,
}

impl<T> Default for Keyring<T> {
    fn default() -> Self {
        Self {
            by_key: BTreeMap::new(),
            ignored: Vec::new(),
        }
    }
}

impl<T> Keyring<T> {
    /// Files `value` under `key` (after every earlier value of the same normalised key).
    pub fn add(&mut self, key: &str, value: T) {
        match normalize_key(key) {
            Some(normalized) => self.by_key.entry(normalized).or_default().push(Filed {
                key: key.to_string(),
                value,
            }),
            None => self.ignored.push(key.to_string()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Every credential filed, in normalised-key order.
    pub fn entries(&self) -> impl Iterator<Item = &Filed<T>> {
        self.by_key.values().flatten()
    }

    /// Every credential that applies to `image` (`registry/repository`), in the kubelet's order.
    pub fn lookup(&self, image: &str) -> Vec<&Filed<T>> {
        let found: Vec<&Filed<T>> = self
            .by_key
            .iter()
            .rev()
            .filter(|(key, _)| urls_match(key, image))
            .flat_map(|(_, filed)| filed.iter())
            .collect();
        if !found.is_empty() {
            return found;
        }
        if is_default_registry_match(image)
            && let Some(filed) = self.by_key.get(DEFAULT_REGISTRY_KEY)
        {
            return filed.iter().collect();
        }
        Vec::new()
    }

    /// Keys that almost match `image`, with why they do not — for `HostMismatch`.
    pub fn near_misses(&self, image: &str) -> Vec<(&Filed<T>, &'static str)> {
        let Some(target) = SchemelessUrl::parse(image) else {
            return Vec::new();
        };
        let (target_labels, target_port) = target.labels_and_port();
        let target_host = target_labels.join(".");
        let mut out = Vec::new();
        for (key, filed) in &self.by_key {
            let Some(glob) = SchemelessUrl::parse(key) else {
                continue;
            };
            let (labels, port) = glob.labels_and_port();
            let host = labels.join(".");
            let labels_match = labels.len() == target_labels.len()
                && labels
                    .iter()
                    .zip(&target_labels)
                    .all(|(g, t)| glob_match(g, t) == Some(true));
            let foreign_scheme = filed.iter().any(|f| {
                f.key.split_once("://").is_some_and(|(scheme, rest)| {
                    !scheme.eq_ignore_ascii_case("https")
                        && !scheme.eq_ignore_ascii_case("http")
                        && normalize_key(rest)
                            .is_some_and(|k| k.split('/').next() == Some(target.host.as_str()))
                })
            });
            let reason = if foreign_scheme {
                Some("the key has a scheme other than https:// or http://")
            } else if labels_match && port != target_port {
                Some(if port.is_empty() {
                    "the key has no port; the image's registry has one"
                } else if target_port.is_empty() {
                    "the key has a port; the image's registry has none"
                } else {
                    "the key names another port"
                })
            } else if labels_match && !target.path.starts_with(&glob.path) {
                Some("the key's path is not a prefix of the image's repository")
            } else if !labels_match && host.eq_ignore_ascii_case(&target_host) {
                Some(
                    "the key differs from the image's registry in letter case (keys are not lower-cased)",
                )
            } else if !labels_match && is_hub_alias(&host) && is_hub_alias(&target_host) {
                Some(
                    "Docker Hub credentials must be filed under `https://index.docker.io/v1/` (or `docker.io`)",
                )
            } else if !labels_match
                && labels.len() != target_labels.len()
                && host.contains('*')
                && target_host.ends_with(host.trim_start_matches(['*', '.']))
            {
                Some("`*` matches exactly one DNS label; the label counts differ")
            } else {
                None
            };
            if let Some(reason) = reason {
                out.extend(filed.iter().map(|f| (f, reason)));
            }
        }
        out
    }
}

fn is_hub_alias(host: &str) -> bool {
    matches!(
        host.to_ascii_lowercase().as_str(),
        "docker.io"
            | "index.docker.io"
            | "registry-1.docker.io"
            | "registry.hub.docker.com"
            | "hub.docker.com"
            | "docker.com"
    )
}

#[cfg(test)]
mod tests;
