//! Image references: parsing and Docker-style normalisation.
//!
//! Follows the grammar of the distribution `reference` package that containerd and the kubelet use:
//! `[domain/]path[:tag][@digest]`, where the first path component is a domain when it contains a `.`
//! or a `:`, or is `localhost`; otherwise the image lives on Docker Hub (`docker.io`), and a single
//! component name gets the `library/` prefix. Pure code: no I/O, no dependency on any adapter.

use std::fmt;

/// The registry host that short names resolve to.
pub const DOCKER_HUB: &str = "docker.io";

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    /// Registry host, with port when one was given (`registry.example.com:5000`).
    pub registry: String,
    /// Repository path inside the registry (`payments/api`, `library/nginx`).
    pub repository: String,
    /// Tag, when one was given.
    pub tag: Option<String>,
    /// Digest (`sha256:…`), when one was given.
    pub digest: Option<String>,
}

/// Why an image reference was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    #[error("image reference is empty")]
    Empty,
    #[error("image reference `{0}` contains whitespace")]
    Whitespace(String),
    #[error("invalid registry host `{host}` in `{reference}`")]
    InvalidHost { reference: String, host: String },
    #[error(
        "invalid repository path `{path}` in `{reference}`: components must be lower-case letters, digits and single separators (`.`, `_`, `__`, `-`)"
    )]
    InvalidRepository { reference: String, path: String },
    #[error(
        "invalid tag `{tag}` in `{reference}`: up to 128 of [A-Za-z0-9_.-], not starting with `.` or `-`"
    )]
    InvalidTag { reference: String, tag: String },
    #[error(
        "invalid digest `{digest}` in `{reference}`: expected `sha256:` and 64 lower-case hex digits"
    )]
    InvalidDigest { reference: String, digest: String },
    #[error("image reference `{0}`: the normalised name is longer than 255 characters")]
    TooLong(String),
}

impl ImageRef {
    /// Parses and normalises a reference. A reference with neither tag nor digest gets no tag here;
    /// [`ImageRef::pull_reference`] supplies `latest` as the runtime does.
    pub fn parse(input: &str) -> Result<Self, ImageRefError> {
        let reference = input.to_string();
        if input.is_empty() {
            return Err(ImageRefError::Empty);
        }
        if input.chars().any(char::is_whitespace) {
            return Err(ImageRefError::Whitespace(reference));
        }

        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                if !valid_digest(digest) {
                    return Err(ImageRefError::InvalidDigest {
                        reference,
                        digest: digest.to_string(),
                    });
                }
                (rest, Some(digest.to_string()))
            }
            None => (input, None),
        };

        // A tag is what follows the last `:` after the last `/` (a `:` before it is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let split = last_slash + i;
                let tag = &rest[split + 1..];
                if !valid_tag(tag) {
                    return Err(ImageRefError::InvalidTag {
                        reference,
                        tag: tag.to_string(),
                    });
                }
                (&rest[..split], Some(tag.to_string()))
            }
            None => (rest, None),
        };

        let (registry, path) = match name.split_once('/') {
            Some((first, remainder)) if looks_like_domain(first) => {
                if !valid_host(first) {
                    return Err(ImageRefError::InvalidHost {
                        reference,
                        host: first.to_string(),
                    });
                }
                (first.to_string(), remainder.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        if !valid_path(&path) {
            return Err(ImageRefError::InvalidRepository { reference, path });
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        // The limit applies to the normalised name, as distribution applies it after adding
        // `docker.io/library/` (found by fuzzing: otherwise a printed reference may not re-parse).
        if registry.len() + 1 + repository.len() > 255 {
            return Err(ImageRefError::TooLong(reference));
        }
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// True when the reference pins a digest.
    pub fn is_pinned(&self) -> bool {
        self.digest.is_some()
    }

    /// The fully qualified reference to hand to a runtime: `latest` is assumed when neither a tag
    /// nor a digest is given, as containerd and the kubelet do.
    pub fn pull_reference(&self) -> String {
        match (&self.tag, &self.digest) {
            (_, Some(d)) if self.tag.is_none() => format!("{}@{d}", self.name()),
            (Some(t), Some(d)) => format!("{}:{t}@{d}", self.name()),
            (Some(t), None) => format!("{}:{t}", self.name()),
            (None, _) => format!("{}:latest", self.name()),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pull_reference())
    }
}

fn looks_like_domain(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

fn valid_host(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: `[::1]:5000`.
        match rest.split_once(']') {
            Some((addr, tail)) => {
                if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
                    return false;
                }
                match tail {
                    "" => return true,
                    t => ("x", t.strip_prefix(':')),
                }
            }
            None => return false,
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || !port.chars().all(|c| c.is_ascii_digit()))
    {
        return false;
    }
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn valid_path(path: &str) -> bool {
    !path.is_empty() && path.split('/').all(valid_path_component)
}

fn valid_path_component(component: &str) -> bool {
    // [a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*
    let bytes = component.as_bytes();
    if bytes.is_empty() || !is_alnum(bytes[0]) || !is_alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if is_alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn valid_digest(digest: &str) -> bool {
    match digest.split_once(':') {
        Some(("sha256", hex)) => {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
        Some(("sha512", hex)) => {
            hex.len() == 128
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn check(input: &str, expected: Option<(&str, &str, Option<&str>, bool)>) {
        let got = ImageRef::parse(input);
        match expected {
            Some((registry, repository, tag, has_digest)) => {
                let got = got.unwrap_or_else(|e| panic!("{input}: {e}"));
                assert_eq!(got.registry, registry, "{input}");
                assert_eq!(got.repository, repository, "{input}");
                assert_eq!(got.tag.as_deref(), tag, "{input}");
                assert_eq!(got.digest.is_some(), has_digest, "{input}");
            }
            None => assert!(got.is_err(), "{input} should be rejected, got {got:?}"),
        }
    }

    #[test]
    fn parse_table() {
        let with_digest = format!("registry.example.com:5000/payments/api@{D}");
        let tag_and_digest = format!("quay.io/a/b:v1@{D}");
        let long_short_name = "a".repeat(250);
        let long_full_name = format!("r.io/{}", "b".repeat(250));
        let cases: Vec<(&str, Option<(&str, &str, Option<&str>, bool)>)> = vec![
            ("nginx", Some(("docker.io", "library/nginx", None, false))),
            (
                "nginx:1.25",
                Some(("docker.io", "library/nginx", Some("1.25"), false)),
            ),
            (
                "bitnami/redis:7",
                Some(("docker.io", "bitnami/redis", Some("7"), false)),
            ),
            (
                "docker.io/nginx",
                Some(("docker.io", "library/nginx", None, false)),
            ),
            (
                "index.docker.io/nginx",
                Some(("docker.io", "library/nginx", None, false)),
            ),
            (
                "localhost/app:1",
                Some(("localhost", "app", Some("1"), false)),
            ),
            (
                "localhost:5000/app",
                Some(("localhost:5000", "app", None, false)),
            ),
            (
                "127.0.0.1:5000/team/app:v2",
                Some(("127.0.0.1:5000", "team/app", Some("v2"), false)),
            ),
            (
                &with_digest,
                Some(("registry.example.com:5000", "payments/api", None, true)),
            ),
            (&tag_and_digest, Some(("quay.io", "a/b", Some("v1"), true))),
            (
                "[::1]:5000/app:1",
                Some(("[::1]:5000", "app", Some("1"), false)),
            ),
            (
                "ghcr.io/org/sub/deep/image:tag_1.0-rc",
                Some(("ghcr.io", "org/sub/deep/image", Some("tag_1.0-rc"), false)),
            ),
            (
                "my_org/my__app",
                Some(("docker.io", "my_org/my__app", None, false)),
            ),
            ("", None),
            ("Nginx", None),
            ("registry.example.com/Payments/api", None),
            ("nginx:", None),
            ("nginx:-bad", None),
            ("nginx@sha256:short", None),
            ("nginx@md5:0123", None),
            ("a//b", None),
            ("reg.io:port/app", None),
            ("app name", None),
            ("-bad.io/app", None),
            // 250 characters are fine as written but not once `docker.io/library/` is added.
            (&long_short_name, None),
            (
                &long_full_name,
                Some(("r.io", &long_full_name[5..], None, false)),
            ),
        ];
        for (input, expected) in cases {
            check(input, expected);
        }
    }

    #[test]
    fn pull_reference_defaults_to_latest() {
        assert_eq!(
            ImageRef::parse("nginx").unwrap().pull_reference(),
            "docker.io/library/nginx:latest"
        );
        let pinned = ImageRef::parse(&format!("reg.io/app@{D}")).unwrap();
        assert_eq!(pinned.pull_reference(), format!("reg.io/app@{D}"));
        assert!(pinned.is_pinned());
        let both = ImageRef::parse(&format!("reg.io/app:v1@{D}")).unwrap();
        assert_eq!(both.pull_reference(), format!("reg.io/app:v1@{D}"));
    }
}
