//! A client frame body in either codec, as the session decodes it (`Codec::decode`, with the
//! JSON lone-surrogate repair): decoding never panics, and whatever decodes re-encodes (the
//! relay echoes frames it accepted; `Codec::frame` would panic on a frame it cannot encode) and
//! decodes again: to the same frame in postcard, and in JSON to a frame that encodes the same
//! way in postcard except for floats (serde_json without `float_roundtrip` may move a float's
//! last digit: docs/fuzzing.md, finding 1).
#![no_main]

use edgerelay::proto::codec::replace_lone_surrogates;
use edgerelay::proto::{ClientFrame, Codec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let codec = if selector & 1 == 0 { Codec::Postcard } else { Codec::Json };
    let frame = match codec.decode::<ClientFrame>(body) {
        Ok(frame) => frame,
        Err(err) => {
            let _ = err.code();
            match replace_lone_surrogates(body).map(|fixed| codec.decode::<ClientFrame>(&fixed)) {
                Some(Ok(frame)) => frame,
                _ => return,
            }
        }
    };
    let _ = frame.req();
    let encoded = Codec::Postcard.encode(&frame);
    let again: ClientFrame = Codec::Postcard.decode(&encoded).expect("a re-encoded frame decodes");
    // Compared as bytes: a NaN float is not equal to itself.
    assert_eq!(Codec::Postcard.encode(&again), encoded, "postcard round trip");
    let json = Codec::Json.encode(&frame);
    // Only a frame that came as JSON must come back from JSON: a postcard frame may hold a NaN
    // or an infinity, which JSON writes as `null` (the relay refuses such quality reports).
    if codec == Codec::Json {
        let _: ClientFrame = Codec::Json.decode(&json).expect("a frame re-encoded as JSON decodes");
    }
});
