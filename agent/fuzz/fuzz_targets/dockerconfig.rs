//! The Docker config parser must never panic, and its errors never quote the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullgate::decide::credentials::dockerconfig::{DockerConfigFormat, parse};

fuzz_target!(|data: &[u8]| {
    for format in [DockerConfigFormat::ConfigJson, DockerConfigFormat::Cfg] {
        if let Err(e) = parse(format, data) {
            let message = e.to_string();
            // Keys may be quoted (they are names, not secrets); values never: a long run of the
            // input that is not a key must not appear in the message.
            if let Ok(text) = std::str::from_utf8(data) {
                for word in text
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .filter(|w| w.len() >= 24)
                {
                    let is_key = text.contains(&format!("\"{word}\":"));
                    assert!(
                        is_key || !message.contains(word),
                        "error quotes input: {message}"
                    );
                }
            }
        }
    }
});
