//! Qwen Code's `oauth_creds.json` read through the daemon's reader (store/qwen_creds.rs:
//! the regular-file check, the size cap, then the codec), from a real file in a private
//! temp dir (tmpfs when /dev/shm exists, to keep the file system out of the time).
//!
//! Properties: reading never panics; it agrees with decoding the same bytes in memory; a
//! file that does not decode is reported as corrupt with its path, and the error text never
//! carries the file's bytes (a half-written token must not reach a log).
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use qwend::clock::SystemClock;
use qwend::store::{QwenCredsFile, StoreError, decode};

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::path::Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("qwend-fuzz-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let file = QwenCredsFile::new(dir().clone(), Arc::new(SystemClock));
    std::fs::write(file.path(), data).expect("write the input file");
    let read = file.read();
    let direct = decode(data);
    match (&read, &direct) {
        (Ok(Some(a)), Ok(b)) => assert_eq!(a, b, "file reader and codec disagree"),
        (Err(StoreError::Corrupt { problem, path, .. }), Err(e)) => {
            assert_eq!(problem, e, "file reader and codec disagree on the problem");
            assert_eq!(path, file.path());
        }
        _ => panic!("file reader {read:?} vs codec {direct:?}"),
    }
    if let Err(e) = &read {
        let text = e.to_string();
        // The message names the path and the problem, never what the file held.
        let path_len = file.path().as_os_str().len();
        assert!(
            text.len() <= path_len + 200,
            "error text grows with the file: {text}"
        );
        if data.len() >= 64 {
            assert!(
                !text.contains(&*String::from_utf8_lossy(data)),
                "error quotes the file: {text}"
            );
        }
    }
});
