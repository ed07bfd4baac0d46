//! Stable, deterministic smoke fuzzing of every parser that reads user input (runs in CI; the
//! coverage-guided targets in `agent/fuzz/` go further with `cargo xtask fuzz`). Random strings over
//! the characters the grammars care about: nothing may panic, and printed references re-parse.

use crate::decide::credentials::dockerconfig::{DockerConfigFormat, parse};
use crate::decide::credentials::keyring::{Keyring, glob_match, normalize_key, urls_match};
use crate::model::image_ref::ImageRef;

const ALPHABET: &[u8] = b"abcAZ019.:/@*?[]^\\-_%{}\",=+ \nxyzv12sha256:";

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
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
