//! permessage-deflate (RFC 7692), without IO: negotiating it in the upgrade, inflating what a
//! client sent and deflating what the relay sends.
//!
//! It is off unless `websocket.permessage_deflate` is set: on chat-sized JSON it saves bytes but
//! costs the relay CPU per subscriber (the fanout encodes a frame once for everyone; compressed
//! with a context, it is compressed once per connection) and memory per connection (see
//! docs/decisions.md for the figures). The deflate implementation is `flate2` on `miniz_oxide`,
//! pure Rust.
//!
//! Limits a client cannot get around: the compressed message is bounded by
//! `limits.max_frame_bytes` like any message, and inflating stops as soon as the output passes
//! the same limit (a deflate bomb costs at most that much memory), which closes with 1009.
//!
//! `miniz_oxide` always compresses with a 32 KiB window. When a client asks for a smaller one
//! (`server_max_window_bits`), the relay agrees and compresses each message on its own, and only
//! messages no longer than that window: no back reference can then reach further. Larger
//! messages go out uncompressed, which RFC 7692 allows for any message.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::config::WebSocketConfig;

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const NAME: &str = "permessage-deflate";

/// What every message's compressed data ends with, which the sender removes (section 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Output grown per step while inflating, so a small message never reserves the whole limit.
const INFLATE_STEP: usize = 16 * 1024;

/// Compressor calls for one message before giving up on it (sending it uncompressed, with a
/// fresh compressor): each call has room for at least half the message, so a message takes a
/// handful; this only bounds a compressor that never finishes its flush.
const MAX_FLUSH_CALLS: usize = 64;

/// The parameters agreed with one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The relay compresses each message on its own.
    pub server_no_context_takeover: bool,
    /// The client compresses each message on its own.
    pub client_no_context_takeover: bool,
    /// The window the relay keeps within (15 unless the client asked for less).
    pub server_max_window_bits: u8,
    /// The window the client is told to keep within, when it offered to be told.
    pub client_max_window_bits: Option<u8>,
}

impl Agreed {
    /// The `Sec-WebSocket-Extensions` value of the 101 response.
    pub fn response_header(&self) -> String {
        let mut out = String::from(NAME);
        if self.server_no_context_takeover {
            out.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            out.push_str("; client_no_context_takeover");
        }
        if self.server_max_window_bits < 15 {
            out.push_str(&format!("; server_max_window_bits={}", self.server_max_window_bits));
        }
        if let Some(bits) = self.client_max_window_bits {
            out.push_str(&format!("; client_max_window_bits={bits}"));
        }
        out
    }
}

/// Picks the first `permessage-deflate` offer in the client's `Sec-WebSocket-Extensions`
/// values that the relay can accept, or `None` (the connection then goes uncompressed). An
/// offer with an unknown, repeated or out-of-range parameter is declined, as section 7.1 asks.
pub fn negotiate<'a>(headers: impl IntoIterator<Item = &'a str>, cfg: &WebSocketConfig) -> Option<Agreed> {
    if !cfg.permessage_deflate {
        return None;
    }
    headers.into_iter().flat_map(|value| value.split(',')).find_map(|offer| accept_offer(offer, cfg))
}

fn accept_offer(offer: &str, cfg: &WebSocketConfig) -> Option<Agreed> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut agreed = Agreed {
        server_no_context_takeover: cfg.server_no_context_takeover,
        client_no_context_takeover: cfg.client_no_context_takeover,
        server_max_window_bits: 15,
        client_max_window_bits: None,
    };
    let mut seen: Vec<&str> = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        match (name, value) {
            ("server_no_context_takeover", None) => agreed.server_no_context_takeover = true,
            ("client_no_context_takeover", None) => agreed.client_no_context_takeover = true,
            ("server_max_window_bits", Some(value)) => agreed.server_max_window_bits = window_bits(value)?,
            ("client_max_window_bits", None) => {
                agreed.client_max_window_bits = (cfg.client_max_window_bits < 15).then_some(cfg.client_max_window_bits)
            }
            ("client_max_window_bits", Some(value)) => {
                agreed.client_max_window_bits = Some(window_bits(value)?.min(cfg.client_max_window_bits))
            }
            _ => return None,
        }
    }
    Some(agreed)
}

/// A window size parameter: 8 to 15, digits only (no sign, no leading zero).
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    #[error("inflated message exceeds {max} bytes")]
    TooLarge { max: usize },
    #[error("invalid deflate data")]
    Corrupt,
}

/// Inflates what one client sends. With context takeover the state (a 32 KiB window) is kept
/// between messages; without it, it is dropped after each, so an idle connection holds none.
pub struct Inflater {
    state: Option<Box<Decompress>>,
    keep: bool,
}

impl Inflater {
    pub fn new(agreed: &Agreed) -> Inflater {
        Inflater { state: None, keep: !agreed.client_no_context_takeover }
    }

    /// The message whose compressed payload is `compressed`; an error as soon as it would
    /// exceed `max` bytes.
    pub fn inflate(&mut self, compressed: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
        let state = self.state.get_or_insert_with(|| Box::new(Decompress::new(false)));
        let mut out = Vec::new();
        let mut ended = false;
        let result = (|| {
            for input in [compressed, &TAIL[..]] {
                let mut used = 0;
                loop {
                    if out.len() == out.capacity() {
                        // One byte past the limit tells a message at the limit from a larger one.
                        let room = (max + 1).saturating_sub(out.len());
                        if room == 0 {
                            return Err(InflateError::TooLarge { max });
                        }
                        out.reserve_exact(room.min(INFLATE_STEP));
                    }
                    let (before_in, before_out) = (state.total_in(), out.len());
                    let status = state
                        .decompress_vec(&input[used..], &mut out, FlushDecompress::Sync)
                        .map_err(|_| InflateError::Corrupt)?;
                    used += (state.total_in() - before_in) as usize;
                    if out.len() > max {
                        return Err(InflateError::TooLarge { max });
                    }
                    if status == Status::StreamEnd {
                        // A final block: whatever follows is not part of the stream.
                        ended = true;
                        return Ok(());
                    }
                    let full = out.len() == out.capacity();
                    if used == input.len() && !full {
                        break;
                    }
                    if !full && used < input.len() && out.len() == before_out && state.total_in() == before_in {
                        return Err(InflateError::Corrupt);
                    }
                }
            }
            Ok(())
        })();
        if result.is_err() || ended || !self.keep {
            // A final block ends the stream: the next message starts a new one.
            self.state = None;
        }
        result.map(|()| out)
    }
}

/// Compresses what the relay sends to one client.
pub struct Deflater {
    state: Option<Box<Compress>>,
    /// Each message is compressed on its own.
    fresh_each: bool,
    /// Largest message compressed: the window the client allowed, when it is below 32 KiB.
    max_input: usize,
    min_input: usize,
    level: Compression,
}

impl Deflater {
    pub fn new(agreed: &Agreed, cfg: &WebSocketConfig) -> Deflater {
        let small_window = agreed.server_max_window_bits < 15;
        Deflater {
            state: None,
            fresh_each: agreed.server_no_context_takeover || small_window,
            max_input: if small_window { 1 << agreed.server_max_window_bits } else { usize::MAX },
            min_input: cfg.compress_min_bytes,
            level: Compression::new(cfg.compression_level.min(9)),
        }
    }

    /// Appends `payload` compressed to `out` (without the tail section 7.2.1 removes) and
    /// returns `true`, or appends nothing and returns `false` when the message goes
    /// uncompressed (shorter than `compress_min_bytes`, or longer than the client's window).
    pub fn deflate(&mut self, payload: &[u8], out: &mut Vec<u8>) -> bool {
        if payload.len() < self.min_input || payload.len() > self.max_input {
            return false;
        }
        let level = self.level;
        let state = self.state.get_or_insert_with(|| Box::new(Compress::new(level, false)));
        let start = out.len();
        let (mut used, mut calls) = (0, 0);
        loop {
            out.reserve(payload.len() / 2 + 64);
            let before = state.total_in();
            // Deflating into a Vec cannot fail: miniz_oxide reports no error for a sync flush.
            if state.compress_vec(&payload[used..], out, FlushCompress::Sync).is_err() {
                out.truncate(start);
                self.state = None;
                return false;
            }
            used += (state.total_in() - before) as usize;
            // Done once all input is taken and the sync flush finished: it ends with TAIL.
            // Room left in `out` is not enough: when its input buffer filled up before the
            // flush, miniz_oxide may stop flushing with room to spare and go on at the next
            // call (a sync flush again, with no more input). Stopping there cut large
            // compressible messages short, the rest arriving at the start of the next one
            // (Autobahn 12.2.9, 12.5.10, docs/fuzzing.md).
            if used == payload.len() && out.len() < out.capacity() && out[start..].ends_with(&TAIL) {
                break;
            }
            if calls == MAX_FLUSH_CALLS {
                out.truncate(start);
                self.state = None;
                return false;
            }
            calls += 1;
        }
        out.truncate(out.len() - TAIL.len());
        if self.fresh_each {
            // Reset, not dropped: allocating miniz_oxide's compressor anew per message cost
            // ~4x the CPU of compressing a chat message (docs/decisions.md).
            state.reset();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> WebSocketConfig {
        WebSocketConfig { permessage_deflate: true, ..WebSocketConfig::default() }
    }

    fn offer(header: &str) -> Option<Agreed> {
        negotiate([header], &cfg())
    }

    #[test]
    fn offers_are_accepted_with_their_parameters_or_declined() {
        let plain = Agreed {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: None,
        };
        assert_eq!(offer("permessage-deflate"), Some(plain));
        assert_eq!(offer("permessage-deflate").map(|a| a.response_header()).as_deref(), Some("permessage-deflate"));
        let asked =
            offer("permessage-deflate; server_no_context_takeover; client_max_window_bits; server_max_window_bits=10")
                .unwrap();
        assert!(asked.server_no_context_takeover);
        assert_eq!(asked.server_max_window_bits, 10);
        assert_eq!(
            asked.response_header(),
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=10"
        );
        assert_eq!(offer("permessage-deflate; client_max_window_bits=\"9\"").unwrap().client_max_window_bits, Some(9));
        // The first acceptable offer wins; a bad one is skipped.
        assert_eq!(offer("permessage-deflate; server_max_window_bits=7, permessage-deflate"), Some(plain));
        for bad in [
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=+9",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; mystery",
        ] {
            assert_eq!(offer(bad), None, "{bad}");
        }
        // Off unless configured.
        assert_eq!(negotiate(["permessage-deflate"], &WebSocketConfig::default()), None);
        // The relay's own settings apply to every accepted offer.
        let strict = WebSocketConfig { client_no_context_takeover: true, client_max_window_bits: 10, ..cfg() };
        let agreed = negotiate(["permessage-deflate; client_max_window_bits"], &strict).unwrap();
        assert_eq!(
            agreed.response_header(),
            "permessage-deflate; client_no_context_takeover; client_max_window_bits=10"
        );
    }

    #[test]
    fn the_rfc_examples_inflate() {
        let agreed = offer("permessage-deflate").unwrap();
        let mut inflater = Inflater::new(&agreed);
        // Section 7.2.3.1: "Hello" in one compressed message...
        assert_eq!(inflater.inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100).unwrap(), b"Hello");
        // ...and 7.2.3.2: the second "Hello" referring to the first (context takeover).
        assert_eq!(inflater.inflate(&[0xf2, 0x00, 0x11, 0x00, 0x00], 100).unwrap(), b"Hello");
        // 7.2.3.3: a stored (uncompressed) block.
        let stored = [0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00];
        assert_eq!(Inflater::new(&agreed).inflate(&stored, 100).unwrap(), b"Hello");
        assert_eq!(Inflater::new(&agreed).inflate(&[0xff, 0xff, 0xff], 100), Err(InflateError::Corrupt));
    }

    #[test]
    fn a_deflate_bomb_stops_at_the_limit() {
        let agreed = offer("permessage-deflate").unwrap();
        let mut deflater = Deflater::new(&agreed, &cfg());
        let mut bomb = Vec::new();
        assert!(deflater.deflate(&vec![0u8; 10_000_000], &mut bomb));
        assert!(bomb.len() < 100_000, "{} bytes", bomb.len());
        assert_eq!(Inflater::new(&agreed).inflate(&bomb, 65_536), Err(InflateError::TooLarge { max: 65_536 }));
        // Exactly at the limit is fine.
        let mut at_limit = Vec::new();
        Deflater::new(&agreed, &cfg()).deflate(&vec![7u8; 65_536], &mut at_limit);
        assert_eq!(Inflater::new(&agreed).inflate(&at_limit, 65_536).unwrap().len(), 65_536);
    }

    /// Large, partly compressible messages (like Autobahn 12.2.x's bitmap): each must come out
    /// whole. The compressor used to be taken as done when it left room in the output, but
    /// miniz_oxide can stop a sync flush early and finish it at the next call, so a message
    /// was cut short and its end arrived at the start of the next one.
    #[test]
    fn large_messages_compress_whole_with_context_takeover() {
        // An image-like byte stream: a random walk, with 4 KiB of noise in every 20 KiB.
        let mut seed = 0x2545_f491_4f6c_dd1du64 ^ 5;
        let mut value = 128i32;
        let data: Vec<u8> = (0..6 * 65_536)
            .map(|i| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                value = (value + (seed % 5) as i32 - 2).clamp(0, 255);
                if (i / 4096) % 5 == 0 { (seed >> 32) as u8 } else { value as u8 }
            })
            .collect();
        for header in ["permessage-deflate", "permessage-deflate; server_no_context_takeover"] {
            let agreed = offer(header).unwrap();
            let mut deflater = Deflater::new(&agreed, &cfg());
            // The client inflates what the relay sends: its context follows the server's.
            let mut inflater =
                Inflater::new(&Agreed { client_no_context_takeover: agreed.server_no_context_takeover, ..agreed });
            for (i, message) in data.chunks(65_536).chain(data.chunks(32_768)).enumerate() {
                let mut out = Vec::new();
                assert!(deflater.deflate(message, &mut out));
                assert_eq!(inflater.inflate(&out, 1 << 20).unwrap(), message, "{header}: message {i}");
            }
        }
    }

    /// The figures in docs/decisions.md: `cargo test --lib chat_json_compression_figures --
    /// --ignored --nocapture` (ratios are build-independent; the time is a debug build's).
    #[test]
    #[ignore]
    fn chat_json_compression_figures() {
        let messages: Vec<Vec<u8>> = (0..2000u64)
            .map(|i| {
                format!(
                    r#"{{"message":{{"room":"chat:lobby","position":{{"epoch":1,"offset":{}}},"from":"user{}","time":{},"id":"m{i}","data":{{"text":"message number {i} about {}"}}}}}}"#,
                    1000 + i,
                    i % 17,
                    1_765_000_000_000u64 + i * 37,
                    ["the weather", "lunch", "the release", "a bug"][(i % 4) as usize]
                )
                .into_bytes()
            })
            .collect();
        let raw: usize = messages.iter().map(Vec::len).sum();
        for header in ["permessage-deflate", "permessage-deflate; server_no_context_takeover"] {
            let agreed = offer(header).unwrap();
            let mut deflater = Deflater::new(&agreed, &cfg());
            let started = std::time::Instant::now();
            let mut sent = 0;
            for message in &messages {
                let mut out = Vec::new();
                sent += if deflater.deflate(message, &mut out) { out.len() } else { message.len() };
            }
            let elapsed = started.elapsed();
            println!(
                "{header}: {} messages, {raw} bytes -> {sent} bytes ({:.2}x), {:.1} us per message",
                messages.len(),
                raw as f64 / sent as f64,
                elapsed.as_secs_f64() * 1e6 / messages.len() as f64
            );
        }
    }

    #[test]
    fn messages_round_trip_with_and_without_context_takeover() {
        let messages: Vec<Vec<u8>> = (0..50)
            .map(|i| {
                format!(r#"{{"msg":{{"room":"chat","seq":{i},"data":"hello number {i} {}"}}}}"#, "x".repeat(i * 37))
            })
            .map(String::into_bytes)
            .collect();
        for header in [
            "permessage-deflate",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_max_window_bits=9",
        ] {
            let agreed = offer(header).unwrap();
            let mut deflater = Deflater::new(&agreed, &cfg());
            let mut inflater = Inflater::new(&agreed);
            let mut sent = 0;
            for message in &messages {
                let mut out = Vec::new();
                let inflated = if deflater.deflate(message, &mut out) {
                    sent += out.len();
                    inflater.inflate(&out, 1 << 20).unwrap()
                } else {
                    let too_long = agreed.server_max_window_bits < 15 && message.len() > 512;
                    assert!(too_long || message.len() < cfg().compress_min_bytes, "{header}");
                    message.clone()
                };
                assert_eq!(&inflated, message, "{header}");
            }
            assert!(sent > 0, "{header}");
        }
    }
}
