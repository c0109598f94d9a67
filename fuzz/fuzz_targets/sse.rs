//! The client's server-sent-events parser (client/src/sse.rs) on arbitrary bytes cut into
//! arbitrary chunks. The client is a binary crate, so the module is compiled in here by
//! path (it depends on nothing but std).
//!
//! The property: however the stream is split into reads, the same events come out (a line
//! may be split anywhere, even between `\r` and `\n`), and no event holds more bytes than
//! the stream carried.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../client/src/sse.rs"]
#[allow(dead_code)]
mod sse;

use sse::SseParser;

fn events(chunks: &[&[u8]]) -> Vec<String> {
    let mut p = SseParser::default();
    let mut out = Vec::new();
    for c in chunks {
        out.extend(p.feed(c));
    }
    out.extend(p.finish());
    out
}

fuzz_target!(|data: &[u8]| {
    // The first byte seeds where the rest is cut; the rest is the stream.
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let whole = events(&[stream]);
    let mut chunks = Vec::new();
    let mut rest = stream;
    let mut state = u32::from(seed) | 1;
    while !rest.is_empty() {
        // xorshift: cheap, deterministic cut lengths of 0..=7 bytes (0 feeds an empty read).
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state % 8) as usize;
        let (c, r) = rest.split_at(n.min(rest.len()));
        chunks.push(c);
        rest = r;
    }
    let byte_by_byte: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(events(&chunks), whole, "chunked differently, other events");
    assert_eq!(events(&byte_by_byte), whole, "byte by byte, other events");
    // Lossy decoding turns one bad byte into at most 3 bytes of U+FFFD; joining lines adds
    // one `\n` per `data:` line, which its own 5-byte field name pays for.
    let total: usize = whole.iter().map(String::len).sum();
    assert!(
        total <= 3 * stream.len(),
        "{total} bytes of events from {}",
        stream.len()
    );
});
