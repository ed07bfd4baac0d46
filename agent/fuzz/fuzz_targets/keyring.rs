//! Keyring rules: never panic, whatever the key, glob or image.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullgate::decide::credentials::keyring::{Keyring, glob_match, normalize_key, urls_match};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (key, image) = text
        .split_once('\n')
        .unwrap_or((text, "registry.example.com/app"));
    let _ = glob_match(key, image);
    if let Some(normalized) = normalize_key(key) {
        let _ = urls_match(&normalized, image);
    }
    let mut keyring = Keyring::default();
    keyring.add(key, ());
    let _ = keyring.lookup(image);
    let _ = keyring.near_misses(image);
});
