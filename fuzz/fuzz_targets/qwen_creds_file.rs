//! Qwen Code's `oauth_creds.json` read through the daemon's reader (store/qwen_creds.rs:
//! the regular-file check, the size cap, then the codec), from a real file in a private
//! temp dir (tmpfs when /dev/shm exists, to keep the file system out of the time).
//!
//! Properties: reading never panics; it agrees with decoding the same bytes in memory; a
//! file that does not decode is reported as corrupt with its path and left as it was; the
//! error text is bounded whatever the file held. (A first version also asserted that the
//! text never contains the file's bytes: the fuzzer answered with a file holding the
//! message's own words. The error type carries no bytes at all, which is the real promise.)
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
        (
            Err(StoreError::Corrupt {
                problem,
                path,
                moved_to,
            }),
            Err(e),
        ) => {
            assert_eq!(problem, e, "file reader and codec disagree on the problem");
            assert_eq!(path, file.path());
            // Reading must not change what Qwen Code sees: a bad file stays where it is.
            assert!(moved_to.is_none(), "the reader moved the file aside");
        }
        _ => panic!("file reader {read:?} vs codec {direct:?}"),
    }
    assert_eq!(
        std::fs::read(file.path()).expect("the file is still there"),
        data,
        "reading changed the file"
    );
    if let Err(e) = &read {
        // The error holds the path and the problem, never the file's bytes (a half-written
        // token must not reach a log); this bounds its text whatever the file held.
        let text = e.to_string();
        let path_len = file.path().as_os_str().len();
        assert!(
            text.len() <= path_len + 200,
            "error text grows with the file: {text}"
        );
    }
});
