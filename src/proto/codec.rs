//! Encoding and decoding frames in the two codecs, and the length-prefixed stream framing QUIC
//! streams use. Bytes in, frames out: nothing here touches a socket.

use bytes::{Buf, Bytes, BytesMut};
use serde::{Serialize, de::DeserializeOwned};

use super::codes::ErrorCode;

/// The wire codec of a connection, fixed by the encoding of its `hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// postcard 1.x (serde, varint integers), compact binary.
    Postcard,
    /// UTF-8 JSON, one object per frame.
    Json,
}

impl Codec {
    pub const ALL: [Codec; 2] = [Codec::Postcard, Codec::Json];

    /// The codec a first frame was written in: JSON frames are objects and start with `{`
    /// (after optional whitespace); a postcard `hello` starts with its variant index, 0.
    pub fn detect(first_frame: &[u8]) -> Codec {
        match first_frame.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Codec::Json,
            _ => Codec::Postcard,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Postcard => "postcard",
            Codec::Json => "json",
        }
    }

    pub fn index(self) -> usize {
        match self {
            Codec::Postcard => 0,
            Codec::Json => 1,
        }
    }

    /// The frame body alone (what a WebSocket message carries).
    pub fn encode<T: Serialize>(self, frame: &T) -> Bytes {
        self.frame(frame).body()
    }

    /// Encodes a frame once, with room for the stream length prefix, for any transport.
    pub fn frame<T: Serialize>(self, frame: &T) -> WireFrame {
        // Most frames fit in 128 bytes; starting there avoids repeated regrowth while serializing.
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&[0u8; LENGTH_PREFIX]);
        let result = match self {
            Codec::Postcard => postcard::to_io(frame, &mut buf).map(|_| ()).map_err(|e| e.to_string()),
            Codec::Json => serde_json::to_writer(&mut buf, frame).map_err(|e| e.to_string()),
        };
        if let Err(err) = result {
            unreachable!("frame serialization failed: {err}");
        }
        let body_len = buf.len() - LENGTH_PREFIX;
        buf[..LENGTH_PREFIX].copy_from_slice(&length_prefix(body_len));
        WireFrame(Bytes::from(buf))
    }

    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, DecodeError> {
        match self {
            Codec::Postcard => match postcard::take_from_bytes::<T>(bytes) {
                Ok((frame, [])) => Ok(frame),
                Ok((_, rest)) => Err(DecodeError::Malformed(format!("{} trailing bytes", rest.len()))),
                Err(err) => Err(DecodeError::Malformed(err.to_string())),
            },
            Codec::Json => serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string())),
        }
    }
}

/// JSON text with every lone UTF-16 surrogate escape (`\\udc00`, or `\\ud800` not followed by a
/// low surrogate, which `JSON.stringify` writes for broken strings) replaced by `\\ufffd`; `None`
/// when there is none. Such text is valid JSON syntax but no UTF-8 string can hold it, so serde
/// refuses it: with the replacement, the relay can still read a frame's type and `req` and
/// refuse that frame alone (`bad_request`) instead of closing the connection.
pub fn replace_lone_surrogates(json: &[u8]) -> Option<Vec<u8>> {
    let hex = |at: usize| -> Option<u16> {
        let digits = json.get(at..at + 4)?;
        u16::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    };
    // A `\uXXXX` escape at `at` (the backslash) and its code unit.
    let escape = |at: usize| -> Option<u16> {
        if json.get(at) == Some(&b'\\') && json.get(at + 1) == Some(&b'u') { hex(at + 2) } else { None }
    };
    let mut lone = Vec::new();
    let mut i = 0;
    while i < json.len() {
        if json[i] != b'\\' {
            i += 1;
            continue;
        }
        match escape(i) {
            Some(0xD800..=0xDBFF) if matches!(escape(i + 6), Some(0xDC00..=0xDFFF)) => i += 12,
            Some(0xD800..=0xDFFF) => {
                lone.push(i);
                i += 6;
            }
            // Any other escape is two characters or a complete `\uXXXX`.
            Some(_) => i += 6,
            None => i += 2,
        }
    }
    if lone.is_empty() {
        return None;
    }
    let mut fixed = json.to_vec();
    for at in lone {
        fixed[at + 2..at + 6].copy_from_slice(b"fffd");
    }
    Some(fixed)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("frame of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::Malformed(_) => ErrorCode::BAD_FRAME,
            DecodeError::TooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
        }
    }
}

/// Length of the frame-size prefix on QUIC streams: a big-endian u32.
pub const LENGTH_PREFIX: usize = 4;

/// The prefix to write before a frame body on a QUIC stream.
pub fn length_prefix(body_len: usize) -> [u8; LENGTH_PREFIX] {
    (body_len as u32).to_be_bytes()
}

/// An encoded frame ready for any transport: `[u32 big-endian length][body]`. Stream transports
/// (QUIC) write it whole; message transports (WebSocket) send the body, a zero-copy slice. Fanout
/// shares one `WireFrame` among all subscribers of a codec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireFrame(Bytes);

impl WireFrame {
    /// Wraps a frame body (copying it once to add the prefix).
    pub fn from_body(body: &[u8]) -> WireFrame {
        let mut buf = Vec::with_capacity(LENGTH_PREFIX + body.len());
        buf.extend_from_slice(&length_prefix(body.len()));
        buf.extend_from_slice(body);
        WireFrame(Bytes::from(buf))
    }

    /// Prefix and body, as written on a QUIC stream.
    pub fn prefixed(&self) -> &Bytes {
        &self.0
    }

    /// The body alone, as sent in a WebSocket message.
    pub fn body(&self) -> Bytes {
        self.0.slice(LENGTH_PREFIX..)
    }

    /// The body alone, borrowed (for writers that copy it into their own buffer).
    pub fn body_slice(&self) -> &[u8] {
        &self.0[LENGTH_PREFIX..]
    }

    /// Bytes this frame takes on a stream (prefix included).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.len() <= LENGTH_PREFIX
    }
}

/// A frame encoded at most once per codec, for fanout: every receiver of one codec shares the
/// same bytes.
pub struct EncodeOnce<'a, T: Serialize> {
    frame: &'a T,
    cache: [Option<WireFrame>; 2],
}

impl<'a, T: Serialize> EncodeOnce<'a, T> {
    pub fn new(frame: &'a T) -> Self {
        EncodeOnce { frame, cache: [None, None] }
    }

    /// The frame in `codec`, encoded on first use.
    pub fn get(&mut self, codec: Codec) -> WireFrame {
        let frame = self.frame;
        self.cache[codec.index()].get_or_insert_with(|| codec.frame(frame)).clone()
    }
}

/// Splits a byte stream into frame bodies: `[u32 big-endian length][body]`, repeated.
/// The length is checked against the limit before any of the body is buffered.
#[derive(Debug)]
pub struct FrameReader {
    buf: BytesMut,
    max_frame: usize,
}

impl FrameReader {
    pub fn new(max_frame: usize) -> Self {
        FrameReader { buf: BytesMut::new(), max_frame }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame body, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, DecodeError> {
        if self.buf.len() < LENGTH_PREFIX {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > self.max_frame {
            return Err(DecodeError::TooLarge { size: len, limit: self.max_frame });
        }
        if self.buf.len() < LENGTH_PREFIX + len {
            self.buf.reserve(LENGTH_PREFIX + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(LENGTH_PREFIX);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Bytes received that do not yet form a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_splits_frames_across_pushes() {
        let mut r = FrameReader::new(16);
        r.push(&[0, 0, 0, 3, b'a']);
        assert_eq!(r.next_frame().unwrap(), None);
        r.push(&[b'b', b'c', 0, 0, 0, 0, 0, 0]);
        assert_eq!(r.next_frame().unwrap().unwrap(), Bytes::from_static(b"abc"));
        assert_eq!(r.next_frame().unwrap().unwrap(), Bytes::new());
        assert_eq!(r.next_frame().unwrap(), None);
        assert_eq!(r.pending(), 2);
    }

    #[test]
    fn reader_rejects_oversized_length_before_buffering() {
        let mut r = FrameReader::new(16);
        r.push(&[0, 0, 0, 17]);
        assert_eq!(r.next_frame(), Err(DecodeError::TooLarge { size: 17, limit: 16 }));
    }

    #[test]
    fn wire_frames_carry_their_length_prefix() {
        let f = Codec::Json.frame(&serde_json::json!({"a": 1}));
        assert_eq!(f.prefixed().as_ref(), b"\x00\x00\x00\x07{\"a\":1}");
        assert_eq!(f.body().as_ref(), b"{\"a\":1}");
        assert_eq!(WireFrame::from_body(b"{\"a\":1}"), f);
        let mut r = FrameReader::new(100);
        r.push(f.prefixed());
        assert_eq!(r.next_frame().unwrap().unwrap(), f.body());
    }

    #[test]
    fn lone_surrogate_escapes_are_found_and_replaced() {
        let fixed = |s: &str| replace_lone_surrogates(s.as_bytes()).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(fixed(r#"{"a":"\udc00"}"#).as_deref(), Some(r#"{"a":"\ufffd"}"#));
        assert_eq!(fixed(r#"{"a":"x\ud800y"}"#).as_deref(), Some(r#"{"a":"x\ufffdy"}"#));
        assert_eq!(fixed(r#"{"a":"\ud800\ud800\udc00"}"#).as_deref(), Some(r#"{"a":"\ufffd\ud800\udc00"}"#));
        assert_eq!(fixed(r#"{"a":"\ud83d\ude00 \u00e9 \\udc00 \n"}"#), None, "pairs, other escapes, \\\\");
        assert_eq!(fixed(r#"{"a":"\ud8"}"#), None, "not an escape");
    }

    #[test]
    fn detect_codec() {
        assert_eq!(Codec::detect(b" {\"hello\":{}}"), Codec::Json);
        assert_eq!(Codec::detect(&[0, 1, 2]), Codec::Postcard);
        assert_eq!(Codec::detect(b""), Codec::Postcard);
    }
}
