//! RFC 6455 framing, without IO: a decoder for what clients send and an encoder for what the
//! relay sends.
//!
//! The relay owns its WebSocket framing (instead of a socket library's stream) so that a
//! connection holds no buffer while idle, and so that frames can be written straight to the
//! socket from whichever thread queues them (see `wire.rs`). Only what a server needs is here:
//! client frames must be masked, server frames never are; the reserved bits must be zero except
//! RSV1 on the first frame of a compressed message when permessage-deflate was negotiated
//! (`deflate.rs`). Messages may be fragmented; control frames may arrive between the fragments.
//! A message longer than the limit is refused as soon as its header says so, before its payload
//! is buffered; a compressed one also when its inflated size passes the limit.

use bytes::Bytes;

use super::deflate::{InflateError, Inflater};

/// The opcodes of RFC 6455 section 5.2.
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// Longest payload of a control frame (ping, pong, close).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Most bytes reserved at once for an unfinished frame whose header has arrived: a peer that
/// announces big frames and sends nothing more gets no more than this set aside.
const RESERVE_AHEAD: usize = 64 * 1024;

/// What a client's bytes amounted to.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A whole message: text (valid UTF-8, checked) or binary.
    Message { text: bool, body: Bytes },
    /// A ping: the relay answers with a pong carrying the same payload.
    Ping(Bytes),
    /// A pong (an answer to the relay's ping): the peer is alive.
    Pong,
    /// The peer closed the WebSocket (with a status code, if it gave one).
    Close(Option<u16>),
}

/// Why the decoder refuses a client's bytes; the connection is then closed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// A violation of RFC 6455 (unmasked frame, reserved bit, unknown opcode...).
    #[error("websocket protocol violation: {0}")]
    Protocol(&'static str),
    /// A message longer than the limit (announced by a header or reached by fragments).
    #[error("message of {len} bytes exceeds {max}")]
    TooLarge { len: u64, max: usize },
    /// A text message that is not UTF-8.
    #[error("text message is not valid UTF-8")]
    NotUtf8,
    /// A compressed message whose inflated size passes the limit (a deflate bomb).
    #[error("inflated message exceeds {max} bytes")]
    InflatedTooLarge { max: usize },
}

/// A fragmented message being assembled.
struct Fragments {
    text: bool,
    compressed: bool,
    body: Vec<u8>,
}

/// Turns the bytes a client sends into [`Event`]s. Holds no buffer between frames: only the
/// unfinished tail of a frame (or of a fragmented message) is kept.
pub struct Decoder {
    max_message: usize,
    /// Bytes of a frame that has not fully arrived yet.
    partial: Vec<u8>,
    fragments: Option<Fragments>,
    /// permessage-deflate was negotiated: RSV1 marks a compressed message.
    inflater: Option<Inflater>,
}

/// A frame header as it arrived.
struct Header {
    fin: bool,
    /// RSV1: the message is compressed.
    compressed: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Header bytes, mask key included.
    len: usize,
    payload_len: u64,
}

impl Decoder {
    pub fn new(max_message: usize) -> Decoder {
        Decoder { max_message, partial: Vec::new(), fragments: None, inflater: None }
    }

    /// A decoder for a connection with permessage-deflate.
    pub fn with_inflater(max_message: usize, inflater: Inflater) -> Decoder {
        Decoder { inflater: Some(inflater), ..Decoder::new(max_message) }
    }

    /// Decodes what arrived (appended to any unfinished frame from earlier calls) and hands every
    /// complete event to `emit`, in order. After an error the connection must be closed.
    pub fn feed(&mut self, input: &[u8], emit: &mut impl FnMut(Event)) -> Result<(), FramingError> {
        if self.partial.is_empty() {
            let (used, whole) = self.decode_frames(input, emit)?;
            let rest = &input[used..];
            if !rest.is_empty() {
                // Once the frame's size is known it is reserved whole, not grown read by read.
                self.partial = Vec::with_capacity(whole.min(RESERVE_AHEAD).max(rest.len()));
                self.partial.extend_from_slice(rest);
            }
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(input);
            let (used, whole) = self.decode_frames(&buf, emit)?;
            // When everything was used the buffer is dropped: an idle connection holds none.
            if used < buf.len() {
                buf.drain(..used);
                buf.reserve_exact(whole.min(RESERVE_AHEAD).saturating_sub(buf.len()));
                self.partial = buf;
            }
        }
        Ok(())
    }

    /// Decodes every complete frame at the start of `buf`. Returns the bytes used and the whole
    /// size of the unfinished frame after them, once its header has arrived (else 0).
    fn decode_frames(&mut self, buf: &[u8], emit: &mut impl FnMut(Event)) -> Result<(usize, usize), FramingError> {
        let mut used = 0;
        while let Some(header) = self.header(&buf[used..])? {
            let start = used + header.len;
            // `header` checked the length against the limit, which fits in memory.
            let end = start + header.payload_len as usize;
            if buf.len() < end {
                return Ok((used, end - used));
            }
            let mut payload = buf[start..end].to_vec();
            unmask(&mut payload, header.mask);
            self.frame(&header, payload, emit)?;
            used = end;
        }
        Ok((used, 0))
    }

    /// Parses a header at the start of `buf`, or `None` if it has not fully arrived.
    fn header(&self, buf: &[u8]) -> Result<Option<Header>, FramingError> {
        let [first, second, ..] = *buf else { return Ok(None) };
        let compressed = first & 0x40 != 0;
        if first & 0x30 != 0 || (compressed && self.inflater.is_none()) {
            return Err(FramingError::Protocol("reserved bits set without a negotiated extension"));
        }
        if second & 0x80 == 0 {
            return Err(FramingError::Protocol("client frames must be masked"));
        }
        let fin = first & 0x80 != 0;
        let opcode = first & 0x0F;
        let (payload_len, len_bytes) = match second & 0x7F {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 2),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => (u64::from_be_bytes(b.try_into().unwrap_or_default()), 8),
                None => return Ok(None),
            },
            n => (u64::from(n), 0),
        };
        if compressed && !matches!(opcode, opcode::TEXT | opcode::BINARY) {
            return Err(FramingError::Protocol("RSV1 set on a frame that does not start a message"));
        }
        match opcode {
            opcode::CLOSE | opcode::PING | opcode::PONG => {
                if !fin {
                    return Err(FramingError::Protocol("fragmented control frame"));
                }
                if payload_len > MAX_CONTROL_PAYLOAD as u64 {
                    return Err(FramingError::Protocol("control frame longer than 125 bytes"));
                }
            }
            opcode::CONTINUATION | opcode::TEXT | opcode::BINARY => {
                let before = self.fragments.as_ref().map_or(0, |f| f.body.len());
                let total = payload_len.saturating_add(before as u64);
                if total > self.max_message as u64 {
                    return Err(FramingError::TooLarge { len: total, max: self.max_message });
                }
            }
            _ => return Err(FramingError::Protocol("unknown opcode")),
        }
        let mask_at = 2 + len_bytes;
        let Some(mask) = buf.get(mask_at..mask_at + 4) else { return Ok(None) };
        let mask = [mask[0], mask[1], mask[2], mask[3]];
        Ok(Some(Header { fin, compressed, opcode, mask, len: mask_at + 4, payload_len }))
    }

    /// Handles one complete, unmasked frame.
    fn frame(&mut self, header: &Header, payload: Vec<u8>, emit: &mut impl FnMut(Event)) -> Result<(), FramingError> {
        let (fin, code) = (header.fin, header.opcode);
        match code {
            opcode::PING => emit(Event::Ping(payload.into())),
            opcode::PONG => emit(Event::Pong),
            opcode::CLOSE => {
                let status = match payload.len() {
                    0 => None,
                    1 => return Err(FramingError::Protocol("close frame with a one-byte payload")),
                    _ => Some(u16::from_be_bytes([payload[0], payload[1]])),
                };
                if status.is_some_and(|code| !valid_close_code(code)) {
                    return Err(FramingError::Protocol("invalid close code"));
                }
                if payload.len() > 2 && std::str::from_utf8(&payload[2..]).is_err() {
                    return Err(FramingError::NotUtf8);
                }
                emit(Event::Close(status));
            }
            opcode::CONTINUATION => {
                let Some(fragments) = self.fragments.as_mut() else {
                    return Err(FramingError::Protocol("continuation frame without a message"));
                };
                fragments.body.extend_from_slice(&payload);
                if fin && let Some(Fragments { text, compressed, body }) = self.fragments.take() {
                    emit(self.message(text, compressed, body)?);
                }
            }
            _ => {
                if self.fragments.is_some() {
                    return Err(FramingError::Protocol("new message before the fragmented one ended"));
                }
                let text = code == opcode::TEXT;
                if fin {
                    emit(self.message(text, header.compressed, payload)?);
                } else {
                    self.fragments = Some(Fragments { text, compressed: header.compressed, body: payload });
                }
            }
        }
        Ok(())
    }

    /// A whole message: inflated if it is compressed, then checked.
    fn message(&mut self, text: bool, compressed: bool, body: Vec<u8>) -> Result<Event, FramingError> {
        let body = match (compressed, self.inflater.as_mut()) {
            (true, Some(inflater)) => inflater.inflate(&body, self.max_message).map_err(|err| match err {
                InflateError::TooLarge { max } => FramingError::InflatedTooLarge { max },
                InflateError::Corrupt => FramingError::Protocol("invalid deflate data"),
            })?,
            _ => body,
        };
        if text && std::str::from_utf8(&body).is_err() {
            return Err(FramingError::NotUtf8);
        }
        Ok(Event::Message { text, body: body.into() })
    }
}

/// A close code a peer may send (RFC 6455 section 7.4, and 1012-1014 registered since): not the
/// reserved 1004-1006 and 1015, nothing unassigned below 3000.
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// XORs a client payload with its masking key (RFC 6455 section 5.3).
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i];
    }
}

/// Appends a server frame (final, unmasked) with `payload` to `out`.
pub fn encode(code: u8, payload: &[u8], out: &mut Vec<u8>) {
    encode_frame(code, false, payload, out);
}

/// Appends a message to `out`: compressed (RSV1 set) when `deflater` is given and compresses it.
/// `scratch` holds the compressed bytes meanwhile.
pub fn encode_message(
    code: u8,
    payload: &[u8],
    deflater: Option<&mut super::deflate::Deflater>,
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) {
    scratch.clear();
    if deflater.is_some_and(|deflater| deflater.deflate(payload, scratch)) {
        encode_frame(code, true, scratch, out);
    } else {
        encode_frame(code, false, payload, out);
    }
}

fn encode_frame(code: u8, compressed: bool, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | if compressed { 0x40 } else { 0 } | code);
    let len = payload.len();
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// The payload of a close frame: the status code and a short reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    let room = MAX_CONTROL_PAYLOAD - payload.len();
    let mut end = reason.len().min(room);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked with a fixed key.
    fn client_frame(fin: bool, code: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![if fin { 0x80 } else { 0 } | code];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xFFFF {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn decode_all(decoder: &mut Decoder, input: &[u8]) -> Result<Vec<Event>, FramingError> {
        let mut events = Vec::new();
        decoder.feed(input, &mut |e| events.push(e))?;
        Ok(events)
    }

    fn text(s: &str) -> Event {
        Event::Message { text: true, body: Bytes::copy_from_slice(s.as_bytes()) }
    }

    #[test]
    fn the_rfc_example_of_a_masked_text_frame_decodes() {
        // RFC 6455 section 5.7: a single-frame masked text message "Hello".
        let frame = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        assert_eq!(decode_all(&mut Decoder::new(100), &frame), Ok(vec![text("Hello")]));
    }

    #[test]
    fn frames_split_at_every_byte_decode_the_same_and_leave_no_buffer() {
        let mut input = client_frame(true, opcode::BINARY, &[1u8; 300]);
        input.extend(client_frame(true, opcode::PING, b"p"));
        input.extend(client_frame(false, opcode::TEXT, "hé".as_bytes()));
        input.extend(client_frame(true, opcode::PONG, b""));
        input.extend(client_frame(true, opcode::CONTINUATION, "llo".as_bytes()));
        input.extend(client_frame(true, opcode::BINARY, &vec![2u8; 70_000]));
        let expected = vec![
            Event::Message { text: false, body: vec![1u8; 300].into() },
            Event::Ping(Bytes::from_static(b"p")),
            Event::Pong,
            text("héllo"),
            Event::Message { text: false, body: vec![2u8; 70_000].into() },
        ];
        for step in [1, 2, 3, 7, 1000, input.len()] {
            let mut decoder = Decoder::new(100_000);
            let mut events = Vec::new();
            for piece in input.chunks(step) {
                events.extend(decode_all(&mut decoder, piece).unwrap());
            }
            assert_eq!(events, expected, "split every {step} bytes");
            assert_eq!(decoder.partial.capacity(), 0, "split every {step} bytes");
            assert!(decoder.fragments.is_none());
        }
    }

    #[test]
    fn a_message_over_the_limit_is_refused_from_its_header_alone() {
        let frame = client_frame(true, opcode::BINARY, &[0u8; 2000]);
        let err = decode_all(&mut Decoder::new(1000), &frame[..8]).unwrap_err();
        assert_eq!(err, FramingError::TooLarge { len: 2000, max: 1000 });
        // A 64-bit length announcing petabytes is refused the same way.
        let huge = [0x82, 0xFF, 0, 0x10, 0, 0, 0, 0, 0, 0];
        assert!(matches!(decode_all(&mut Decoder::new(1000), &huge), Err(FramingError::TooLarge { .. })));
        // Fragments count together.
        let mut decoder = Decoder::new(1000);
        decode_all(&mut decoder, &client_frame(false, opcode::BINARY, &[0u8; 600])).unwrap();
        let err = decode_all(&mut decoder, &client_frame(true, opcode::CONTINUATION, &[0u8; 600])).unwrap_err();
        assert_eq!(err, FramingError::TooLarge { len: 1200, max: 1000 });
    }

    #[test]
    fn protocol_violations_are_refused() {
        let unmasked = [0x82, 0x01, 0x00];
        let reserved = {
            let mut f = client_frame(true, opcode::BINARY, b"x");
            f[0] |= 0x40;
            f
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("unmasked", unmasked.to_vec()),
            ("reserved bit", reserved),
            ("unknown opcode", client_frame(true, 0x3, b"")),
            ("fragmented ping", client_frame(false, opcode::PING, b"")),
            ("long ping", client_frame(true, opcode::PING, &[0u8; 126])),
            ("lone continuation", client_frame(true, opcode::CONTINUATION, b"x")),
            ("one-byte close", client_frame(true, opcode::CLOSE, b"x")),
            ("interleaved messages", {
                let mut f = client_frame(false, opcode::TEXT, b"a");
                f.extend(client_frame(true, opcode::TEXT, b"b"));
                f
            }),
        ];
        for (what, input) in cases {
            let result = decode_all(&mut Decoder::new(1000), &input);
            assert!(matches!(result, Err(FramingError::Protocol(_))), "{what}: {result:?}");
        }
        let bad_utf8 = client_frame(true, opcode::TEXT, &[0xff, 0xfe]);
        assert_eq!(decode_all(&mut Decoder::new(1000), &bad_utf8), Err(FramingError::NotUtf8));
    }

    #[test]
    fn arbitrary_bytes_in_arbitrary_pieces_never_panic_nor_pass_the_limit() {
        // A fixed xorshift sequence: the same inputs on every run.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..5000 {
            let len = (next() % 400) as usize;
            let mut input: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Half the cases start like a plausible masked client frame, to get past the header.
            if next() % 2 == 0 && input.len() > 2 {
                input[0] =
                    0x80 | [opcode::TEXT, opcode::BINARY, opcode::PING, opcode::CONTINUATION][(next() % 4) as usize];
                input[1] = 0x80 | (next() % 128) as u8;
            }
            let mut decoder = Decoder::new(200);
            let mut rest = &input[..];
            while !rest.is_empty() {
                let take = 1 + (next() as usize % rest.len());
                let mut events = Vec::new();
                let result = decoder.feed(&rest[..take], &mut |e| events.push(e));
                for event in events {
                    if let Event::Message { body, .. } = event {
                        assert!(body.len() <= 200);
                    }
                }
                if result.is_err() {
                    break;
                }
                rest = &rest[take..];
            }
        }
    }

    #[test]
    fn compressed_messages_inflate_only_when_negotiated_and_only_up_to_the_limit() {
        use crate::config::WebSocketConfig;
        use crate::transport::websocket::deflate::{Deflater, negotiate};
        let cfg = WebSocketConfig { permessage_deflate: true, compress_min_bytes: 0, ..WebSocketConfig::default() };
        let agreed = negotiate(["permessage-deflate"], &cfg).unwrap();
        let compressed = |payload: &[u8], fin: bool, code: u8| {
            let mut deflated = Vec::new();
            assert!(Deflater::new(&agreed, &cfg).deflate(payload, &mut deflated));
            let mut frame = client_frame(fin, code, &deflated);
            frame[0] |= 0x40;
            (frame, deflated)
        };
        let inflating = || Decoder::with_inflater(1000, Inflater::new(&agreed));
        let (hello, _) = compressed(b"hello hello hello", true, opcode::TEXT);
        assert_eq!(decode_all(&mut inflating(), &hello), Ok(vec![text("hello hello hello")]));
        // Without the extension RSV1 is a protocol violation.
        assert!(matches!(decode_all(&mut Decoder::new(1000), &hello), Err(FramingError::Protocol(_))));
        // A compressed message in fragments: RSV1 on the first only.
        let (_, deflated) = compressed(b"fragmented", true, opcode::BINARY);
        let mut first = client_frame(false, opcode::BINARY, &deflated[..3]);
        first[0] |= 0x40;
        first.extend(client_frame(true, opcode::CONTINUATION, &deflated[3..]));
        let body = Bytes::from_static(b"fragmented");
        assert_eq!(decode_all(&mut inflating(), &first), Ok(vec![Event::Message { text: false, body }]));
        let mut rsv1_continuation = client_frame(false, opcode::BINARY, &deflated[..3]);
        rsv1_continuation.extend(client_frame(true, opcode::CONTINUATION, &deflated[3..]));
        rsv1_continuation[deflated[..3].len() + 6] |= 0x40;
        assert!(matches!(decode_all(&mut inflating(), &rsv1_continuation), Err(FramingError::Protocol(_))));
        // A bomb: 100 bytes on the wire, far more inflated.
        let (bomb, _) = compressed(&[b'a'; 50_000], true, opcode::BINARY);
        assert!(bomb.len() < 1000);
        assert_eq!(decode_all(&mut inflating(), &bomb), Err(FramingError::InflatedTooLarge { max: 1000 }));
    }

    #[test]
    fn close_frames_with_a_reserved_code_or_a_reason_that_is_not_utf8_are_refused() {
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            let close = client_frame(true, opcode::CLOSE, &code.to_be_bytes());
            assert!(matches!(decode_all(&mut Decoder::new(10), &close), Err(FramingError::Protocol(_))), "{code}");
        }
        for code in [1000u16, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
            let close = client_frame(true, opcode::CLOSE, &code.to_be_bytes());
            assert_eq!(decode_all(&mut Decoder::new(10), &close), Ok(vec![Event::Close(Some(code))]));
        }
        let bad_reason = client_frame(true, opcode::CLOSE, &[0x03, 0xe8, 0xff]);
        assert_eq!(decode_all(&mut Decoder::new(10), &bad_reason), Err(FramingError::NotUtf8));
    }

    #[test]
    fn close_frames_carry_their_status() {
        let mut close = client_frame(true, opcode::CLOSE, &close_payload(1000, "bye"));
        close.extend(client_frame(true, opcode::CLOSE, b""));
        assert_eq!(decode_all(&mut Decoder::new(10), &close), Ok(vec![Event::Close(Some(1000)), Event::Close(None)]));
    }

    #[test]
    fn server_frames_use_the_shortest_length_and_no_mask() {
        for (len, header) in [(0usize, 2usize), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let mut out = Vec::new();
            encode(opcode::BINARY, &vec![9u8; len], &mut out);
            assert_eq!(out.len(), header + len, "payload of {len}");
            assert_eq!(out[0], 0x82);
            assert_eq!(out[1] & 0x80, 0, "server frames are not masked");
        }
        let mut out = Vec::new();
        encode(opcode::TEXT, b"Hello", &mut out);
        assert_eq!(out, [0x81, 0x05, b'H', b'e', b'l', b'l', b'o']);
    }

    #[test]
    fn a_close_reason_is_cut_to_fit_a_control_frame_on_a_character_boundary() {
        let payload = close_payload(4102, &"é".repeat(100));
        assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
        assert_eq!(&payload[..2], &4102u16.to_be_bytes());
    }
}
