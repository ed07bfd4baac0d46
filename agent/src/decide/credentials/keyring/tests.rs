//! The kubelet's keyring rules as data tables, written from the rules (see the module docs).

use super::*;

#[test]
fn key_normalisation() {
    let cases = [
        // (key as written, normalised key or None when the kubelet ignores it)
        ("registry.example.com", Some("registry.example.com")),
        ("https://registry.example.com", Some("registry.example.com")),
        ("http://registry.example.com", Some("registry.example.com")),
        ("https://index.docker.io/v1/", Some("index.docker.io")),
        ("index.docker.io/v1/", Some("index.docker.io")),
        (
            "https://registry.example.com/v2/",
            Some("registry.example.com"),
        ),
        (
            "registry.example.com:5000",
            Some("registry.example.com:5000"),
        ),
        (
            "https://registry.example.com:5000/v1/",
            Some("registry.example.com:5000"),
        ),
        (
            "registry.example.com/team",
            Some("registry.example.com/team"),
        ),
        (
            "registry.example.com/team/",
            Some("registry.example.com/team/"),
        ),
        (
            "https://registry.example.com/v2/team/app",
            Some("registry.example.com/team/app"),
        ),
        // Only a leading /v1/ or /v2/ with its slash is dropped.
        ("registry.example.com/v1", Some("registry.example.com/v1")),
        ("registry.example.com/v3/", Some("registry.example.com/v3/")),
        ("registry.example.com/", Some("registry.example.com")),
        // No lower-casing.
        ("Registry.Example.com", Some("Registry.Example.com")),
        ("*.example.com", Some("*.example.com")),
        ("[::1]:5000", Some("[::1]:5000")),
        ("user@registry.example.com", Some("registry.example.com")),
        (
            "registry.example.com/a%2Fb",
            Some("registry.example.com/a/b"),
        ),
        ("registry.example.com?x=1", Some("registry.example.com")),
        // Ignored by the kubelet: not a URL it can parse.
        ("registry.example.com:abc", None),
        ("registry.example.com:50:00", None),
        ("registry example.com", None),
        ("registry.example.com/a%zz", None),
        ("[::1", None),
    ];
    for (key, expected) in cases {
        assert_eq!(normalize_key(key).as_deref(), expected, "{key}");
    }
}

#[test]
fn globs_per_label() {
    let cases = [
        ("*", "anything", Some(true)),
        ("*", "", Some(true)),
        ("reg*", "registry", Some(true)),
        ("*try", "registry", Some(true)),
        ("r*g*y", "registry", Some(true)),
        ("r?g", "reg", Some(true)),
        ("r?g", "rg", Some(false)),
        ("[a-c]x", "bx", Some(true)),
        ("[a-c]x", "dx", Some(false)),
        ("[^a-c]x", "dx", Some(true)),
        ("[abc]", "b", Some(true)),
        ("\\*", "*", Some(true)),
        ("\\*", "a", Some(false)),
        ("[\\]]", "]", Some(true)),
        ("exact", "exact", Some(true)),
        ("exact", "Exact", Some(false)),
        ("[", "x", None),
        ("[]", "x", None),
        ("[z-a]", "x", None),
        ("[-a]", "x", None),
        ("abc\\", "abc", None),
        ("*a*a*a*a*a*a*a*a*a*a*b", &"a".repeat(200), Some(false)),
    ];
    for (pattern, name, expected) in cases {
        assert_eq!(glob_match(pattern, name), expected, "{pattern} vs {name}");
    }
}

#[test]
fn key_matches_image() {
    let cases = [
        // (normalised key, image as registry/repository, match)
        (
            "registry.example.com",
            "registry.example.com/team/app",
            true,
        ),
        (
            "registry.example.com",
            "registry.example.com:5000/team/app",
            false,
        ),
        (
            "registry.example.com:5000",
            "registry.example.com/team/app",
            false,
        ),
        (
            "registry.example.com:5000",
            "registry.example.com:5000/team/app",
            true,
        ),
        (
            "registry.example.com:05000",
            "registry.example.com:5000/app",
            false,
        ),
        ("*.example.com", "registry.example.com/app", true),
        ("*.example.com", "a.b.example.com/app", false),
        ("*.*.example.com", "a.b.example.com/app", true),
        ("*.example.com", "example.com/app", false),
        ("*", "localhost/app", true),
        ("*", "registry.example.com/app", false),
        ("*:5000", "localhost:5000/app", true),
        ("*.example.com:5000", "registry.example.com:5000/app", true),
        ("registry.*.com", "registry.example.com/app", true),
        ("reg*.example.com", "registry.example.com/app", true),
        (
            "registry.example.com/team",
            "registry.example.com/team/app",
            true,
        ),
        (
            "registry.example.com/team",
            "registry.example.com/other/app",
            false,
        ),
        // A string prefix, not a path-segment prefix.
        (
            "registry.example.com/team",
            "registry.example.com/teamster/app",
            true,
        ),
        (
            "registry.example.com/team/",
            "registry.example.com/team/app",
            true,
        ),
        (
            "registry.example.com/team/app/extra",
            "registry.example.com/team/app",
            false,
        ),
        ("Registry.example.com", "registry.example.com/app", false),
        ("docker.io", "docker.io/library/nginx", true),
        ("index.docker.io", "docker.io/library/nginx", false),
        ("[::1]:5000", "[::1]:5000/app", true),
        ("127.0.0.1:5000", "127.0.0.1:5000/app", true),
        ("127.0.0.*:5000", "127.0.0.1:5000/app", true),
    ];
    for (key, image, expected) in cases {
        assert_eq!(urls_match(key, image), expected, "{key} vs {image}");
    }
}

#[test]
fn docker_hub_default_match() {
    for (image, expected) in [
        ("docker.io/library/nginx", true),
        ("index.docker.io/library/nginx", true),
        ("library/nginx", true),
        ("nginx", true),
        ("bitnami/redis", true),
        ("registry.example.com/app", false),
        ("localhost:5000/app", false),
        ("/app", false),
    ] {
        assert_eq!(is_default_registry_match(image), expected, "{image}");
    }
}

fn keyring(keys: &[(&str, &'static str)]) -> Keyring<&'static str> {
    let mut k = Keyring::default();
    for (key, who) in keys {
        k.add(key, *who);
    }
    k
}

fn who(k: &Keyring<&'static str>, image: &str) -> Vec<&'static str> {
    k.lookup(image).iter().map(|f| f.value).collect()
}

#[test]
fn lookup_order_and_fallbacks() {
    type Case = (
        &'static [(&'static str, &'static str)],
        &'static str,
        &'static [&'static str],
    );
    let cases: &[Case] = &[
        // Most specific first when paths nest...
        (
            &[("quay.io", "host"), ("quay.io/coreos", "org")],
            "quay.io/coreos/etcd",
            &["org", "host"],
        ),
        // ...but the order is reverse byte order, not specificity: `teamz` sorts after `team/`.
        (
            &[
                ("reg.io/team/", "team-slash"),
                ("reg.io/team", "team"),
                ("reg.io/teamz", "teamz"),
            ],
            "reg.io/team/app",
            &["team-slash", "team"],
        ),
        (
            &[("reg.io/team", "team"), ("reg.io/teamz", "teamz")],
            "reg.io/teamz/app",
            &["teamz", "team"],
        ),
        // A glob and an exact key both match; `r` > `*` in byte order.
        (
            &[("*.example.com", "glob"), ("registry.example.com", "exact")],
            "registry.example.com/a",
            &["exact", "glob"],
        ),
        // Duplicated keys across secrets: every credential, in the order added.
        (
            &[
                ("reg.io", "first"),
                ("https://reg.io/v1/", "second"),
                ("reg.io/", "third"),
            ],
            "reg.io/a",
            &["first", "second", "third"],
        ),
        // Ports compared as strings.
        (
            &[("reg.io:5000", "port"), ("reg.io", "bare")],
            "reg.io:5000/a",
            &["port"],
        ),
        (
            &[("reg.io:5000", "port"), ("reg.io", "bare")],
            "reg.io/a",
            &["bare"],
        ),
        // Docker Hub: `docker login` writes https://index.docker.io/v1/.
        (
            &[("https://index.docker.io/v1/", "hub")],
            "docker.io/library/nginx",
            &["hub"],
        ),
        (
            &[("docker.io", "short")],
            "docker.io/library/nginx",
            &["short"],
        ),
        // The fallback only applies when nothing matched.
        (
            &[("docker.io", "short"), ("index.docker.io", "hub")],
            "docker.io/library/nginx",
            &["short"],
        ),
        (&[("index.docker.io", "hub")], "registry.example.com/a", &[]),
        (
            &[("registry-1.docker.io", "alias")],
            "docker.io/library/nginx",
            &[],
        ),
        // No match: anonymous.
        (&[("other.io", "x")], "reg.io/a", &[]),
        (&[], "reg.io/a", &[]),
        // Ignored keys never match.
        (
            &[("reg.io:abc", "bad"), ("reg.io", "good")],
            "reg.io/a",
            &["good"],
        ),
    ];
    for (keys, image, expected) in cases {
        let k = keyring(keys);
        assert_eq!(who(&k, image), *expected, "{keys:?} for {image}");
    }
    let k = keyring(&[("reg.io:abc", "bad")]);
    assert_eq!(k.ignored, ["reg.io:abc"]);
}

#[test]
fn near_misses_name_the_key_and_why() {
    let cases: &[(&str, &str, Option<&str>)] = &[
        (
            "registry.example.com",
            "registry.example.com:5000/a",
            Some("no port"),
        ),
        (
            "registry.example.com:5000",
            "registry.example.com/a",
            Some("has a port"),
        ),
        (
            "registry.example.com:5001",
            "registry.example.com:5000/a",
            Some("another port"),
        ),
        (
            "registry.example.com/other",
            "registry.example.com/team/a",
            Some("path"),
        ),
        (
            "Registry.Example.com",
            "registry.example.com/a",
            Some("letter case"),
        ),
        (
            "registry-1.docker.io",
            "docker.io/library/nginx",
            Some("Docker Hub"),
        ),
        (
            "*.example.com",
            "a.b.example.com/x",
            Some("exactly one DNS label"),
        ),
        (
            "oci://registry.example.com",
            "registry.example.com/a",
            Some("scheme"),
        ),
        ("elsewhere.io", "registry.example.com/a", None),
    ];
    for (key, image, reason) in cases {
        let k = keyring(&[(key, "x")]);
        assert!(k.lookup(image).is_empty(), "{key} should not match {image}");
        let misses = k.near_misses(image);
        match reason {
            Some(r) => {
                assert_eq!(misses.len(), 1, "{key} vs {image}");
                assert_eq!(misses[0].0.key, *key);
                assert!(misses[0].1.contains(r), "{key} vs {image}: {}", misses[0].1);
            }
            None => assert!(misses.is_empty(), "{key} vs {image}: {misses:?}"),
        }
    }
}
