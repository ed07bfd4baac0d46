//! Stable, deterministic smoke fuzzing of every parser that reads user input (runs in CI; the
//! coverage-guided targets in `agent/fuzz/` go further with `cargo xtask fuzz`). Random strings over
//! the characters the grammars care about: nothing may panic, and printed references re-parse.
//! Credential expiry (a JWT `exp`, an ECR `expiration`) gets random numbers of every size and sign,
//! and whatever time comes out must be writable as RFC 3339.

use crate::decide::credentials::dockerconfig::{DockerConfigFormat, parse};
use crate::decide::credentials::expiry::expires_at;
use crate::decide::credentials::keyring::{Keyring, glob_match, normalize_key, urls_match};
use crate::model::image_ref::ImageRef;
use crate::model::time::{
    from_unix_seconds, from_unix_seconds_f64, rfc3339_millis, rfc3339_seconds,
};
use base64::Engine as _;

const ALPHABET: &[u8] = b"abcAZ019.:/@*?[]^\\-_%{}\",=+ \nxyzv12sha256:";

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A JSON-ish number: any sign, any length, fractions and exponents (and sometimes junk).
    fn number(&mut self) -> String {
        const DIGITS: &[u8] = b"0123456789";
        let mut out = String::new();
        if self.next().is_multiple_of(3) {
            out.push('-');
        }
        for _ in 0..=(self.next() % 24) {
            out.push(DIGITS[(self.next() % 10) as usize] as char);
        }
        match self.next() % 6 {
            0 => out.push_str(&format!(".{}", self.next() % 1000)),
            1 => out.push_str(&format!("e{}", self.next() % 400)),
            2 => out.push_str(&format!("e-{}", self.next() % 400)),
            3 => out.push_str(&self.string(4)),
            _ => {}
        }
        out
    }

    fn string(&mut self, max: usize) -> String {
        let len = (self.next() % max as u64) as usize;
        (0..len)
            .map(|_| ALPHABET[(self.next() % ALPHABET.len() as u64) as usize] as char)
            .collect()
    }
}

#[test]
fn parsers_never_panic_on_random_input() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut parsed_images = 0;
    for _ in 0..20_000 {
        let a = rng.string(40);
        let b = rng.string(40);
        if let Ok(image) = ImageRef::parse(&a) {
            parsed_images += 1;
            let again =
                ImageRef::parse(&image.pull_reference()).expect("a printed reference parses");
            assert_eq!(
                (again.name(), again.digest.clone()),
                (image.name(), image.digest.clone()),
                "{a}"
            );
        }
        let _ = glob_match(&a, &b);
        if let Some(key) = normalize_key(&a) {
            let _ = urls_match(&key, &b);
        }
        let mut keyring = Keyring::default();
        keyring.add(&a, ());
        let _ = keyring.lookup(&b);
        let _ = keyring.near_misses(&b);
        let json = format!(r#"{{"auths":{{"{a}":{{"auth":"{b}","username":"{a}"}}}}}}"#);
        let _ = parse(DockerConfigFormat::ConfigJson, json.as_bytes());
        let _ = parse(DockerConfigFormat::Cfg, a.as_bytes());
    }
    // The generator must reach the accepting paths, or the loop proves little.
    assert!(
        parsed_images > 100,
        "only {parsed_images} random references parsed"
    );
}

/// containerd's `hosts.toml` (read from the node's `config_path`) and the host resolution of what
/// it says: random URLs, capabilities and paths in every position, never a panic.
#[test]
fn hosts_toml_never_panics_on_random_input() {
    use crate::adapters::containerd_config::parse_hosts_toml;
    use crate::decide::registry_hosts::{Dialect, HostDir, resolve, upstream};
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    let mut resolved = 0;
    let path = std::path::Path::new("/certs.d/r/hosts.toml");
    for _ in 0..5_000 {
        let (a, b, c) = (rng.string(30), rng.string(30), rng.string(12));
        for text in [
            format!("server = \"{a}\"\n[host.\"{b}\"]\ncapabilities = [\"{c}\"]\nca = \"{c}\"\n"),
            format!(
                "server = \"http://{a}\"\n[host.\"https://{b}/{c}\"]\nclient = [[\"{a}\", \"{c}\"]]\noverride_path = true\n"
            ),
            format!("{a} = {b}\n[{c}]"),
            a.clone(),
        ] {
            if let Ok(file) = parse_hosts_toml(path, &text) {
                let dir = HostDir {
                    file: Some(file),
                    ..HostDir::default()
                };
                for dialect in [Dialect::V1_6, Dialect::V1_7, Dialect::V2] {
                    if let Ok(hosts) = resolve(&c, Some(&dir), dialect) {
                        resolved += 1;
                        assert!(upstream(&hosts).is_some(), "{text}");
                    }
                }
            }
        }
    }
    assert!(resolved > 1000, "only {resolved} random files resolved");
}

#[test]
fn expiry_never_panics_on_random_numbers() {
    let b64url = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
    let mut with_expiry = 0;
    let edges = [
        "253402300799",
        "253402300800",
        "568971849600",
        "18446744073709551615",
        "18446744073709551616",
        "9223372036854775807",
        "-9223372036854775808",
        "1e30",
        "-1e30",
        "1e308",
        "-1",
        "0",
    ];
    for i in 0..20_000 {
        let exp = edges
            .get(i)
            .map_or_else(|| rng.number(), |e| (*e).to_string());
        let jwt = format!(
            "{}.{}.sig",
            b64url(r#"{"alg":"RS256"}"#),
            b64url(&format!(r#"{{"exp":{exp},"sub":"x"}}"#))
        );
        let ecr = b64(&format!(
            r#"{{"payload":"p","datakey":"d","version":"2","type":"DATA_KEY","expiration":{exp}}}"#
        ));
        for secrets in [
            vec![jwt.as_str()],
            vec![ecr.as_str()],
            vec![jwt.as_str(), ecr.as_str()],
        ] {
            if let Some(t) = expires_at(secrets) {
                with_expiry += 1;
                let _ = (rfc3339_seconds(t), rfc3339_millis(t));
            }
        }
        let n = rng.next();
        for secs in [
            i128::from(n),
            -i128::from(n),
            i128::from(n as i64),
            i128::from(n) << 64,
        ] {
            if let Some(t) = from_unix_seconds(secs) {
                let _ = (rfc3339_seconds(t), rfc3339_millis(t));
            }
        }
        if let Some(t) = from_unix_seconds_f64(f64::from_bits(n)) {
            let _ = (rfc3339_seconds(t), rfc3339_millis(t));
        }
    }
    assert!(
        with_expiry > 10_000,
        "only {with_expiry} random expiries parsed"
    );
}
