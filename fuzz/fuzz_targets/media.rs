//! A media group stream (`MediaReader`: group header, then length-prefixed frames), fed in
//! pieces whose sizes the input chooses: never a panic, no frame over the limit, and the same
//! header and frames whatever the split.
#![no_main]

use edgerelay::proto::media::{GroupHeader, MediaFrame, MediaReader};
use libfuzzer_sys::fuzz_target;

const MAX_FRAME: usize = 4096;

fn read(input: &[u8], step: usize) -> (Option<GroupHeader>, Vec<MediaFrame>, bool) {
    let mut reader = MediaReader::new(MAX_FRAME);
    let mut frames = Vec::new();
    for piece in input.chunks(step.max(1)) {
        reader.push(piece);
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.payload.len() <= MAX_FRAME);
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(_) => return (reader.header().ok().flatten(), frames, true),
            }
        }
    }
    (reader.header().ok().flatten(), frames, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else { return };
    let whole = read(input, input.len());
    assert_eq!(whole, read(input, usize::from(step)));
});
