//! The protobuf codec of the generated API: prost's, except that bytes that do not decode
//! are INVALID_ARGUMENT (the peer sent a bad message: invalid UTF-8 in a string, a
//! truncated field) instead of the INTERNAL that tonic-prost answers, which would blame
//! the daemon. The message stays short and quotes nothing of the input.
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Named by `build.rs` as the codec of every generated client and server.
#[derive(Debug, Clone)]
pub struct QwendCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for QwendCodec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
    }
}

impl<T, U> Codec for QwendCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CheckedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder(self.0.decoder())
    }
}

#[derive(Debug, Clone)]
pub struct CheckedDecoder<U>(ProstDecoder<U>);

/// The longest decode error text passed on (prost's name the field and the problem).
const MAX_DETAIL: usize = 200;

impl<U: prost::Message + Default> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(src).map_err(|s| {
            if s.code() == tonic::Code::Internal {
                Status::invalid_argument(format!(
                    "undecodable protobuf message: {}",
                    bounded(s.message(), MAX_DETAIL)
                ))
            } else {
                s
            }
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// `s` cut to at most `max` bytes on a character boundary, with "…" when cut: for quoting
/// untrusted input in an error message.
pub fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_cuts_on_a_char_boundary() {
        assert_eq!(bounded("abc", 3), "abc");
        assert_eq!(bounded("abcd", 3), "abc…");
        assert_eq!(bounded("ééé", 3), "é…");
    }
}
