//! The length-prefixed stream framing of QUIC streams (`FrameReader`), fed in pieces whose sizes
//! the input chooses: never a panic, never a frame over the limit, and the frames are the same
//! whatever the split.
#![no_main]

use edgerelay::proto::codec::FrameReader;
use libfuzzer_sys::fuzz_target;

const MAX_FRAME: usize = 4096;

fn frames(input: &[u8], step: usize) -> (Vec<bytes::Bytes>, bool) {
    let mut reader = FrameReader::new(MAX_FRAME);
    let mut out = Vec::new();
    for piece in input.chunks(step.max(1)) {
        reader.push(piece);
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= MAX_FRAME);
                    out.push(frame);
                }
                Ok(None) => break,
                Err(err) => {
                    let _ = err.code();
                    return (out, true);
                }
            }
        }
        assert!(reader.pending() <= input.len());
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else { return };
    let whole = frames(input, input.len());
    let split = frames(input, usize::from(step));
    assert_eq!(whole, split);
});
