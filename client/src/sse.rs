//! Server-sent events framing (the subset OpenAI-compatible APIs use): `data:` lines joined
//! per event, events ended by a blank line, `:` comments and other fields ignored. Bytes
//! arrive in arbitrary chunks, so a line may be split anywhere, even between `\r` and `\n`.

#[derive(Debug, Default)]
pub struct SseParser {
    pending: Vec<u8>,
    /// How much of `pending` is known to hold no line end: a long line arriving in many
    /// small reads is scanned once, not once per read.
    scanned: usize,
    data: Option<String>,
}

impl SseParser {
    /// Feed a chunk; returns the data of every event it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        let mut i = self.scanned;
        while i < self.pending.len() {
            let b = self.pending[i];
            if b == b'\n' || b == b'\r' {
                // A `\r` at the very end may be the first half of `\r\n`: wait for more.
                if b == b'\r' && i + 1 == self.pending.len() {
                    break;
                }
                let line = String::from_utf8_lossy(&self.pending[start..i]).into_owned();
                self.line(&line, &mut events);
                i += if b == b'\r' && self.pending[i + 1] == b'\n' {
                    2
                } else {
                    1
                };
                start = i;
            } else {
                i += 1;
            }
        }
        self.pending.drain(..start);
        self.scanned = i - start;
        events
    }

    /// The stream ended: an event not closed by a blank line still counts (lenient, as
    /// servers that close right after the last `data:` line exist).
    pub fn finish(&mut self) -> Vec<String> {
        let mut events = Vec::new();
        self.scanned = 0;
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            let line =
                String::from_utf8_lossy(rest.strip_suffix(b"\r").unwrap_or(&rest)).into_owned();
            self.line(&line, &mut events);
        }
        if let Some(d) = self.data.take() {
            events.push(d);
        }
        events
    }

    fn line(&mut self, line: &str, events: &mut Vec<String>) {
        if line.is_empty() {
            if let Some(d) = self.data.take() {
                events.push(d);
            }
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        if field == "data" {
            match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8], cuts: &[usize]) -> Vec<String> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        let mut last = 0;
        for &c in cuts {
            out.extend(p.feed(&input[last..c]));
            last = c;
        }
        out.extend(p.feed(&input[last..]));
        out.extend(p.finish());
        out
    }

    #[test]
    fn events_comments_and_multiline_data() {
        let input =
            b": keep-alive\n\ndata: {\"a\":1}\n\nevent: x\ndata: one\ndata:two\n\ndata: [DONE]\n\n";
        assert_eq!(all(input, &[]), vec!["{\"a\":1}", "one\ntwo", "[DONE]"]);
    }

    #[test]
    fn crlf_and_cr_line_ends() {
        assert_eq!(
            all(b"data: a\r\n\r\ndata: b\r\rdata: c", &[]),
            vec!["a", "b", "c"]
        );
    }

    #[test]
    fn a_long_line_in_many_reads_keeps_its_line_ends() {
        // Resuming the scan where the last read stopped must still see a `\r` left at the
        // end of one read and its `\n` at the start of the next.
        let mut p = SseParser::default();
        let mut out = Vec::new();
        let line = format!("data: {}", "x".repeat(10_000));
        for b in line.as_bytes().chunks(7) {
            out.extend(p.feed(b));
        }
        out.extend(p.feed(b"\r"));
        out.extend(p.feed(b"\n\r"));
        assert!(out.is_empty(), "{out:?}");
        out.extend(p.feed(b"\ndata: y\r"));
        assert_eq!(out, vec!["x".repeat(10_000)]);
        out.extend(p.finish());
        assert_eq!(out.len(), 2);
        assert_eq!(out[1], "y");
    }

    proptest::proptest! {
        /// However the bytes are split, the same events come out.
        #[test]
        fn chunking_does_not_matter(mut cuts in proptest::collection::vec(0usize..60, 0..8), crlf in proptest::bool::ANY) {
            let text = "data: {\"x\":\"h\u{e9}llo\"}\n\n: c\ndata: l1\ndata: l2\n\ndata: [DONE]\n\n";
            let text = if crlf { text.replace('\n', "\r\n") } else { text.to_string() };
            let bytes = text.as_bytes();
            cuts.iter_mut().for_each(|c| *c = (*c).min(bytes.len()));
            cuts.sort();
            proptest::prop_assert_eq!(all(bytes, &cuts), vec!["{\"x\":\"h\u{e9}llo\"}", "l1\nl2", "[DONE]"]);
        }
    }
}
