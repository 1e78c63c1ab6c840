//! The media plane on the wire (docs/media.md): the types the control frames carry, and the
//! binary layout of media itself. Media never goes through the JSON or postcard codecs: every
//! group travels on its own QUIC unidirectional stream as a [`GroupHeader`] followed by frames,
//! each a length, a [`FrameHeader`] and the opaque payload. The layout is the same in both
//! directions (publisher → relay, relay → subscriber) and uses the protocol's LEB128 varints.
//! Decoding is incremental ([`MediaReader`]) and never trusts a length it was not allowed.

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// What a track carries; decides its priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    Audio,
    Video,
    Screen,
}

/// One simulcast layer as the publisher announced it (audio: one layer, size 0x0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    pub width: u16,
    pub height: u16,
    /// The layer's target bitrate, bits per second.
    pub bitrate: u32,
}

/// A track of a call (room) as members see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    /// The relay's id of the track: what `track_subscribe` names and group headers carry.
    pub track: u64,
    /// The publishing user.
    pub user: String,
    /// The publisher's name for it (`cam`, `mic`, `screen`...), unique per connection.
    pub name: String,
    pub kind: TrackKind,
    /// Free-form codec string (`vp8`, `opus`, `avc1.42e01f`...), for the subscriber's decoder.
    pub codec: String,
    pub layers: Vec<LayerInfo>,
    pub muted: bool,
}

/// One speaker in a `speakers` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpeakerLevel {
    pub user: String,
    /// Smoothed loudness, 0 (silent) to 100 (loudest).
    pub level: u8,
}

/// The first byte of every unidirectional stream: what the stream carries.
pub const STREAM_MEDIA_GROUP: u8 = 0x01;

/// `flags` bit: the group starts with a keyframe (every video group does).
pub const FLAG_KEYFRAME: u8 = 0x01;

/// Stream reset codes the relay uses on group streams.
pub mod reset {
    /// The relay dropped this group for the subscriber: a newer group of the track started
    /// (stale), the subscriber's media queue was full, or the track ended.
    pub const DROPPED: u32 = 0x10;
    /// The relay refused a publisher's group stream (unknown track, not the connection's, no
    /// such layer, malformed, frame over `media.max_frame_bytes`).
    pub const REFUSED: u32 = 0x11;
}

/// What opens a group stream: `[0x01][track varint][layer u8][group varint][flags u8]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupHeader {
    pub track: u64,
    pub layer: u8,
    /// The group's sequence number within its track and layer (increasing).
    pub group: u64,
    pub flags: u8,
}

impl GroupHeader {
    pub fn keyframe(&self) -> bool {
        self.flags & FLAG_KEYFRAME != 0
    }

    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(24);
        out.push(STREAM_MEDIA_GROUP);
        put_varint(&mut out, self.track);
        out.push(self.layer);
        put_varint(&mut out, self.group);
        out.push(self.flags);
        Bytes::from(out)
    }
}

/// What precedes a frame's payload: `[timestamp_us varint][level u8]`. `level` is the audio
/// level of RFC 6464: bits 0-6 the magnitude in -dBov (0 loudest, 127 silence), bit 7 voice
/// activity; 0 on video frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Presentation time, microseconds, on the publisher's clock.
    pub timestamp_us: u64,
    pub level: u8,
}

/// A frame as it travels: `[length varint][FrameHeader][payload]`, where length counts the
/// header and payload.
pub fn encode_frame(header: FrameHeader, payload: &[u8]) -> Bytes {
    let mut head = Vec::with_capacity(12);
    put_varint(&mut head, header.timestamp_us);
    head.push(header.level);
    let mut out = Vec::with_capacity(10 + head.len() + payload.len());
    put_varint(&mut out, (head.len() + payload.len()) as u64);
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    Bytes::from(out)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Reads a varint at the front of `buf` without consuming: `(value, bytes)`, `Ok(None)` when
/// more bytes are needed.
fn peek_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, MediaError> {
    let mut value = 0u64;
    for (i, byte) in buf.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 10 { Err(MediaError::Malformed("varint longer than 10 bytes")) } else { Ok(None) }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("malformed media stream: {0}")]
    Malformed(&'static str),
    #[error("media frame of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: u64, limit: usize },
}

/// One frame read from a group stream: its header and payload, and the whole frame as it
/// travels (length included), which the relay forwards without re-encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaFrame {
    pub header: FrameHeader,
    pub payload: Bytes,
    pub wire: Bytes,
}

/// Splits a group stream into its header and frames as bytes arrive.
#[derive(Debug)]
pub struct MediaReader {
    buf: BytesMut,
    max_frame: usize,
    header: Option<GroupHeader>,
}

impl MediaReader {
    /// A reader refusing frames longer than `max_frame` bytes before buffering them.
    pub fn new(max_frame: usize) -> MediaReader {
        MediaReader { buf: BytesMut::new(), max_frame, header: None }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The stream's header, once it arrived.
    pub fn header(&mut self) -> Result<Option<GroupHeader>, MediaError> {
        if self.header.is_some() {
            return Ok(self.header);
        }
        let buf = &self.buf[..];
        let Some(&kind) = buf.first() else { return Ok(None) };
        if kind != STREAM_MEDIA_GROUP {
            return Err(MediaError::Malformed("unknown stream type"));
        }
        let Some((track, a)) = peek_varint(&buf[1..])? else { return Ok(None) };
        let Some(&layer) = buf.get(1 + a) else { return Ok(None) };
        let Some((group, b)) = peek_varint(&buf[2 + a..])? else { return Ok(None) };
        let Some(&flags) = buf.get(2 + a + b) else { return Ok(None) };
        self.buf.advance(3 + a + b);
        self.header = Some(GroupHeader { track, layer, group, flags });
        Ok(self.header)
    }

    /// The next whole frame, after the header.
    pub fn next_frame(&mut self) -> Result<Option<MediaFrame>, MediaError> {
        if self.header()?.is_none() {
            return Ok(None);
        }
        let Some((len, prefix)) = peek_varint(&self.buf)? else { return Ok(None) };
        if len > self.max_frame as u64 {
            return Err(MediaError::TooLarge { size: len, limit: self.max_frame });
        }
        let len = len as usize;
        if self.buf.len() < prefix + len {
            self.buf.reserve(prefix + len - self.buf.len());
            return Ok(None);
        }
        let wire = self.buf.split_to(prefix + len).freeze();
        let body = wire.slice(prefix..);
        let Some((timestamp_us, t)) = peek_varint(&body)? else {
            return Err(MediaError::Malformed("frame shorter than its header"));
        };
        let Some(&level) = body.get(t) else { return Err(MediaError::Malformed("frame shorter than its header")) };
        Ok(Some(MediaFrame { header: FrameHeader { timestamp_us, level }, payload: body.slice(t + 1..), wire }))
    }

    /// Bytes received that do not form a whole frame yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_stream_round_trips_in_any_split() {
        let header = GroupHeader { track: 300, layer: 2, group: 1 << 40, flags: FLAG_KEYFRAME };
        let frames = [
            (FrameHeader { timestamp_us: 0, level: 0 }, vec![7u8; 1000]),
            (FrameHeader { timestamp_us: 33_333, level: 0x80 | 30 }, vec![]),
        ];
        let mut stream = header.encode().to_vec();
        for (h, payload) in &frames {
            stream.extend_from_slice(&encode_frame(*h, payload));
        }
        for split in [1, 2, 3, 7, 500, stream.len()] {
            let mut reader = MediaReader::new(2000);
            let mut got = Vec::new();
            for chunk in stream.chunks(split) {
                reader.push(chunk);
                while let Some(frame) = reader.next_frame().unwrap() {
                    assert_eq!(frame.wire, encode_frame(frame.header, &frame.payload));
                    got.push((frame.header, frame.payload.to_vec()));
                }
            }
            assert_eq!(reader.header().unwrap(), Some(header));
            assert_eq!(got, frames.to_vec(), "split {split}");
            assert_eq!(reader.pending(), 0);
        }
    }

    #[test]
    fn the_layout_is_pinned_byte_for_byte() {
        // The example of docs/media.md.
        let header = GroupHeader { track: 300, layer: 2, group: 5, flags: FLAG_KEYFRAME };
        assert_eq!(header.encode().as_ref(), [0x01, 0xac, 0x02, 0x02, 0x05, 0x01]);
        let frame = encode_frame(FrameHeader { timestamp_us: 33_333, level: 0 }, &[0xaa, 0xbb]);
        assert_eq!(frame.as_ref(), [0x06, 0xb5, 0x84, 0x02, 0x00, 0xaa, 0xbb]);
    }

    #[test]
    fn bad_streams_are_refused_before_buffering() {
        let mut reader = MediaReader::new(100);
        reader.push(&[0x02]);
        assert!(matches!(reader.header(), Err(MediaError::Malformed(_))));
        let mut reader = MediaReader::new(100);
        reader.push(&GroupHeader { track: 1, layer: 0, group: 1, flags: 0 }.encode());
        reader.push(&[0xff, 0x01]);
        assert_eq!(reader.next_frame(), Err(MediaError::TooLarge { size: 255, limit: 100 }));
        let mut reader = MediaReader::new(100);
        reader.push(&[0x01, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80]);
        assert!(matches!(reader.header(), Err(MediaError::Malformed(_))));
        let mut reader = MediaReader::new(100);
        reader.push(&GroupHeader { track: 1, layer: 0, group: 1, flags: 0 }.encode());
        reader.push(&[0x00]);
        assert!(matches!(reader.next_frame(), Err(MediaError::Malformed(_))), "an empty frame has no header");
    }
}
