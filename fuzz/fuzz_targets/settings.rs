//! Qwen Code's settings.json as the daemon reads it (daemon/src/settings/file.rs: comments
//! stripped, then JSON, then only an object accepted), followed by the values the daemon
//! takes from a parsed document (`FileValues`).
//!
//! Properties: nothing panics; comment stripping keeps every character's line and column
//! (so JSON errors point at the user's text: the same number of characters, newlines in
//! the same places); anything accepted is an object; an error names the file and stays
//! short; `Debug` of the values never shows the API key.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use qwend::settings::{FileValues, get, parse, strip_json_comments};

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
            let values = FileValues::of(&doc);
            if let Some(key) = get(&doc, &["security", "auth", "apiKey"]).and_then(|v| v.as_str())
                && key.len() >= 8
            {
                let shown = format!("{values:?}");
                assert!(!shown.contains(key), "Debug shows the API key");
            }
            let again = FileValues::parse(path, data).expect("accepted once, accepted twice");
            assert_eq!(format!("{again:?}"), format!("{values:?}"));
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("/fuzz/.qwen/settings.json: "), "{msg}");
            // serde_json's messages quote no input; a bound keeps a huge file out of logs.
            assert!(msg.len() < 400, "error of {} bytes: {msg}", msg.len());
        }
    }
});
