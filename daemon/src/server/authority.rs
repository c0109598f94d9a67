//! Accept the `:authority` that grpc-core (Python, C++, Ruby, PHP, C# gRPC) derives from a
//! Unix socket path, so their default channel works with no options.
//!
//! grpc-core sends the percent-encoded socket path (`tmp%2Fqwend-0%2Fqwend.sock`) as the
//! authority; the `http` crate, and so h2 under tonic, rejects a `%` there and resets every
//! stream with PROTOCOL_ERROR before any service sees the call. Neither h2 nor tonic has a
//! knob for it, so this sits between the socket and h2 and rewrites the client's request
//! headers. Hand-written (the HPACK codec itself is `loona-hpack`): no crate proxies HTTP/2
//! frames, and this needs only the HEADERS/CONTINUATION framing of RFC 9113 §6.2, §6.10.
//!
//! The first header block of a connection decides. When its authority is acceptable (every
//! tonic or grpc-js client), everything passes through untouched from then on. Otherwise
//! every later header block of that connection is decoded and re-encoded as literals
//! without indexing, with the authority replaced by `localhost`: h2's HPACK table then
//! never holds anything, so it cannot disagree with the client's.
//! The authority means nothing on a Unix socket: the peer's uid is what is checked.
use std::io;

use loona_hpack::Decoder;
use loona_hpack::encoder::encode_integer_into;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// h2's default SETTINGS_MAX_FRAME_SIZE, which the daemon keeps: no frame we emit is larger,
/// and a client frame larger than this is left for h2 to refuse.
const MAX_FRAME: usize = 16_384;
/// A header block this large (across CONTINUATION frames) ends the connection.
const MAX_BLOCK: usize = 1 << 20;
/// What the rewritten requests carry.
const LOCAL_AUTHORITY: &[u8] = b"localhost";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Before the client preface.
    Preface,
    /// Reading frames, nothing decided yet.
    Undecided,
    /// This connection's authority is fine: bytes pass untouched.
    PassThrough,
    /// Every header block is re-encoded.
    Rewrite,
}

/// A header block being collected: its HEADERS frame's fields and the fragments so far.
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as received, emitted unchanged if the connection turns out fine.
    original: Vec<u8>,
}

/// The client-to-server byte stream transformer (see the module docs).
pub struct AuthorityFix {
    mode: Mode,
    pending: Vec<u8>,
    block: Option<Block>,
    decoder: Decoder<'static>,
}

impl Default for AuthorityFix {
    fn default() -> Self {
        Self {
            mode: Mode::Preface,
            pending: Vec::new(),
            block: None,
            decoder: Decoder::new(),
        }
    }
}

impl std::fmt::Debug for AuthorityFix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityFix")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

impl AuthorityFix {
    /// Whether bytes now pass through untouched (the caller may skip `feed`).
    pub fn passing_through(&self) -> bool {
        self.mode == Mode::PassThrough
    }

    /// Whether the client has begun a request (or is not speaking HTTP/2 at all, which
    /// h2 deals with).
    pub fn seen_request(&self) -> bool {
        matches!(self.mode, Mode::PassThrough | Mode::Rewrite) || self.block.is_some()
    }

    /// Take bytes read from the client, append what h2 should read to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        if self.mode == Mode::PassThrough {
            out.extend_from_slice(input);
            return Ok(());
        }
        self.pending.extend_from_slice(input);
        if self.mode == Mode::Preface {
            let n = self.pending.len().min(PREFACE.len());
            if self.pending[..n] != PREFACE[..n] {
                // Not HTTP/2 with prior knowledge: h2 will say so.
                self.pass_through(out);
                return Ok(());
            }
            if n < PREFACE.len() {
                return Ok(());
            }
            out.extend_from_slice(PREFACE);
            self.pending.drain(..PREFACE.len());
            self.mode = Mode::Undecided;
        }
        let mut at = 0;
        while self.mode != Mode::PassThrough && self.pending.len() - at >= FRAME_HEADER {
            let h = &self.pending[at..at + FRAME_HEADER];
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            if len > MAX_FRAME {
                // Oversized: h2 refuses it with FRAME_SIZE_ERROR. Before a decision
                // nothing was altered, so the bytes can go as they are.
                if self.mode == Mode::Undecided && self.block.is_none() {
                    self.pending.drain(..at);
                    self.pass_through(out);
                    return Ok(());
                }
                return Err(invalid("HTTP/2 frame larger than the maximum frame size"));
            }
            if self.pending.len() - at < FRAME_HEADER + len {
                break;
            }
            let frame = self.pending[at..at + FRAME_HEADER + len].to_vec();
            at += FRAME_HEADER + len;
            self.frame(&frame, out)?;
            if self.mode == Mode::PassThrough {
                break;
            }
        }
        self.pending.drain(..at);
        if self.mode == Mode::PassThrough {
            out.append(&mut self.pending);
        }
        Ok(())
    }

    fn pass_through(&mut self, out: &mut Vec<u8>) {
        self.mode = Mode::PassThrough;
        out.append(&mut self.pending);
    }

    fn frame(&mut self, frame: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER..];
        match kind {
            HEADERS => {
                if self.block.is_some() {
                    return Err(invalid("HEADERS inside a header block"));
                }
                let mut p = payload;
                let mut pad = 0;
                if flags & PADDED != 0 {
                    let (&n, rest) = p.split_first().ok_or_else(|| invalid("bad padding"))?;
                    pad = usize::from(n);
                    p = rest;
                }
                let mut priority = None;
                if flags & PRIORITY != 0 {
                    let fields: [u8; 5] = p
                        .get(..5)
                        .and_then(|s| s.try_into().ok())
                        .ok_or_else(|| invalid("bad priority"))?;
                    priority = Some(fields);
                    p = &p[5..];
                }
                let fragment = p
                    .get(
                        ..p.len()
                            .checked_sub(pad)
                            .ok_or_else(|| invalid("bad padding"))?,
                    )
                    .ok_or_else(|| invalid("bad padding"))?;
                self.block = Some(Block {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                    fragment: fragment.to_vec(),
                    original: frame.to_vec(),
                });
            }
            CONTINUATION => {
                let block = self
                    .block
                    .as_mut()
                    .ok_or_else(|| invalid("CONTINUATION without HEADERS"))?;
                block.fragment.extend_from_slice(payload);
                block.original.extend_from_slice(frame);
                if block.original.len() > MAX_BLOCK {
                    return Err(invalid("header block too large"));
                }
            }
            _ => {
                if self.block.is_some() {
                    return Err(invalid("frame inside a header block"));
                }
                out.extend_from_slice(frame);
                return Ok(());
            }
        }
        if flags & END_HEADERS != 0 {
            let block = self.block.take().expect("set above");
            self.block_done(block, out)?;
        }
        Ok(())
    }

    fn block_done(&mut self, block: Block, out: &mut Vec<u8>) -> io::Result<()> {
        if self.mode == Mode::PassThrough {
            out.extend_from_slice(&block.original);
            return Ok(());
        }
        let headers = self
            .decoder
            .decode(&block.fragment)
            .map_err(|e| invalid(&format!("bad header block: {e}")))?;
        if self.mode == Mode::Undecided {
            let acceptable = headers
                .iter()
                .filter(|(name, _)| name == b":authority")
                .all(|(_, value)| {
                    tonic::codegen::http::uri::Authority::try_from(value.as_slice()).is_ok()
                });
            if acceptable {
                self.mode = Mode::PassThrough;
                out.extend_from_slice(&block.original);
                return Ok(());
            }
            self.mode = Mode::Rewrite;
        }
        let mut encoded = Vec::with_capacity(block.fragment.len() * 2);
        for (name, value) in &headers {
            let value = if name == b":authority" {
                LOCAL_AUTHORITY
            } else {
                value.as_slice()
            };
            // Literal header field without indexing, new name (RFC 7541 §6.2.2).
            encoded.push(0);
            encode_integer_into(name.len(), 7, 0, &mut encoded)?;
            encoded.extend_from_slice(name);
            encode_integer_into(value.len(), 7, 0, &mut encoded)?;
            encoded.extend_from_slice(value);
        }
        let mut flags = if block.end_stream { END_STREAM } else { 0 };
        let mut first = Vec::new();
        if let Some(p) = block.priority {
            flags |= PRIORITY;
            first.extend_from_slice(&p);
        }
        let room = MAX_FRAME - first.len();
        let (head, mut rest) = encoded.split_at(encoded.len().min(room));
        first.extend_from_slice(head);
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        write_frame(out, HEADERS, flags, block.stream, &first);
        while !rest.is_empty() {
            let (chunk, more) = rest.split_at(rest.len().min(MAX_FRAME));
            let flags = if more.is_empty() { END_HEADERS } else { 0 };
            write_frame(out, CONTINUATION, flags, block.stream, chunk);
            rest = more;
        }
        Ok(())
    }
}

fn write_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len();
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_frame(stream: u32, block: &[u8], flags: u8) -> Vec<u8> {
        let mut f = Vec::new();
        write_frame(&mut f, HEADERS, flags, stream, block);
        f
    }

    /// Feeds `input` one byte at a time (the worst split a socket can produce).
    fn run(input: &[u8]) -> io::Result<Vec<u8>> {
        let mut fix = AuthorityFix::default();
        let mut out = Vec::new();
        for b in input {
            fix.feed(std::slice::from_ref(b), &mut out)?;
        }
        Ok(out)
    }

    fn decode_all(stream: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        assert!(stream.starts_with(PREFACE));
        let mut d = Decoder::new();
        let mut at = PREFACE.len();
        let mut blocks = Vec::new();
        let mut frag = Vec::new();
        while at < stream.len() {
            let len = usize::from(stream[at]) << 16
                | usize::from(stream[at + 1]) << 8
                | usize::from(stream[at + 2]);
            let (kind, flags) = (stream[at + 3], stream[at + 4]);
            let mut p = &stream[at + FRAME_HEADER..at + FRAME_HEADER + len];
            if kind == HEADERS && flags & PRIORITY != 0 {
                p = &p[5..];
            }
            if kind == HEADERS || kind == CONTINUATION {
                frag.extend_from_slice(p);
                if flags & END_HEADERS != 0 {
                    blocks.push(d.decode(&frag).unwrap());
                    frag.clear();
                }
            }
            at += FRAME_HEADER + len;
        }
        blocks
    }

    fn request(authority: &[u8]) -> Vec<(&'static [u8], Vec<u8>)> {
        vec![
            (b":method", b"POST".to_vec()),
            (b":scheme", b"http".to_vec()),
            (b":path", b"/grpc.health.v1.Health/Check".to_vec()),
            (b":authority", authority.to_vec()),
            (b"te", b"trailers".to_vec()),
        ]
    }

    #[test]
    fn a_valid_authority_passes_byte_for_byte() {
        let mut enc = loona_hpack::Encoder::new();
        let req = request(b"qwend.local");
        let block = enc.encode(req.iter().map(|(n, v)| (*n, v.as_slice())));
        let mut input = PREFACE.to_vec();
        write_frame(&mut input, 0x4, 0, 0, &[]); // SETTINGS
        input.extend(headers_frame(1, &block, END_HEADERS));
        write_frame(&mut input, 0x0, END_STREAM, 1, b"\0\0\0\0\0");
        input.extend(headers_frame(3, &block, END_HEADERS));
        assert_eq!(run(&input).unwrap(), input);
    }

    #[test]
    fn a_socket_path_authority_is_replaced_in_every_block() {
        // Indexed on first use by the client's encoder, then referenced from its table:
        // the rewritten stream must stand on its own.
        let mut enc = loona_hpack::Encoder::new();
        let req = request(b"tmp%2Fqwend-0%2Fqwend.sock");
        let mut input = PREFACE.to_vec();
        for stream in [1, 3, 5] {
            let block = enc.encode(req.iter().map(|(n, v)| (*n, v.as_slice())));
            // Split the block over HEADERS (padded, with priority) and a CONTINUATION.
            let (a, b) = block.split_at(block.len() / 2);
            let mut payload = vec![2u8];
            payload.extend_from_slice(&[0, 0, 0, 0, 15]);
            payload.extend_from_slice(a);
            payload.extend_from_slice(&[0, 0]);
            input.extend(headers_frame(stream, &payload, PADDED | PRIORITY));
            write_frame(&mut input, CONTINUATION, END_HEADERS, stream, b);
            write_frame(&mut input, 0x0, END_STREAM, stream, b"\0\0\0\0\0");
        }
        let out = run(&input).unwrap();
        let blocks = decode_all(&out);
        assert_eq!(blocks.len(), 3);
        for b in blocks {
            let auth: Vec<_> = b.iter().filter(|(n, _)| n == b":authority").collect();
            assert_eq!(auth.len(), 1);
            assert_eq!(auth[0].1, b"localhost");
            assert!(
                b.iter()
                    .any(|(n, v)| n == b":path" && v.ends_with(b"/Check"))
            );
        }
        // DATA frames are kept.
        assert!(out.windows(5).filter(|w| *w == b"\0\0\0\0\0").count() >= 3);
    }

    #[test]
    fn garbage_is_left_for_h2_to_refuse() {
        assert_eq!(
            run(b"GET / HTTP/1.1\r\n\r\n").unwrap(),
            b"GET / HTTP/1.1\r\n\r\n"
        );
    }
}
