//! Image references: never panic; a parsed reference prints to one that parses to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullgate::model::image_ref::ImageRef;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(image) = ImageRef::parse(text) {
        let again = ImageRef::parse(&image.pull_reference()).expect("a printed reference parses");
        assert_eq!(again.name(), image.name());
        assert_eq!(again.digest, image.digest);
    }
});
