//! Qwen Code's settings.json as the daemon reads it (today daemon/src/qwen_settings.rs:
//! comments stripped, then JSON, then only an object accepted), followed by the lookups
//! the daemon makes in a parsed document.
//!
//! Properties: nothing panics; comment stripping keeps every character's line and column
//! (so JSON errors point at the user's text: the same number of characters, newlines in
//! the same places); anything accepted is an object; an error names the file and stays
//! short.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use qwend::qwen_settings::{Exclusions, get, parse, strip_json_comments};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let stripped = strip_json_comments(&text);
    assert_eq!(
        stripped.chars().count(),
        text.chars().count(),
        "stripping moved characters"
    );
    for (a, b) in text.chars().zip(stripped.chars()) {
        assert_eq!(a == '\n', b == '\n', "stripping moved a line break");
    }
    let path = Path::new("/fuzz/.qwen/settings.json");
    match parse(path, &text) {
        Ok(doc) => {
            assert!(doc.is_object());
            for keys in [
                &["security", "auth", "selectedType"][..],
                &["selectedAuthType"],
                &["model", "name"],
                &["advanced", "excludedEnvVars"],
            ] {
                let _ = get(&doc, keys);
            }
            let exclusions = Exclusions::from_settings([&doc, &doc]);
            for key in ["DEBUG", "OPENAI_API_KEY", "", "A"] {
                let _ = exclusions.excludes(key);
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("/fuzz/.qwen/settings.json: "), "{msg}");
            // serde_json's messages quote no input; a bound keeps a huge file out of logs.
            assert!(msg.len() < 400, "error of {} bytes: {msg}", msg.len());
        }
    }
});
