//! The latest group of one track layer, kept so that a new subscriber starts rendering at once:
//! a video group begins with a keyframe, so handing over the group in progress (its keyframe and
//! the frames since) lets the decoder start without asking the publisher for a keyframe and
//! waiting a round trip for it. The cache holds one group and is bounded in bytes; a group too
//! big for it is not cached (its subscribers wait for the next group or a keyframe request).

use bytes::Bytes;

#[derive(Debug, Clone, Default)]
pub struct GroupCache {
    /// The group being cached (its sequence number), `None` when nothing is usable.
    group: Option<u64>,
    frames: Vec<Bytes>,
    bytes: usize,
    cap: usize,
}

impl GroupCache {
    /// A cache holding at most `cap` bytes of frames.
    pub fn new(cap: usize) -> GroupCache {
        GroupCache { group: None, frames: Vec::new(), bytes: 0, cap }
    }

    /// A new group starts: the previous one is dropped. Only groups that start at a keyframe
    /// can be handed to a new subscriber.
    pub fn start(&mut self, group: u64, keyframe: bool) {
        self.frames.clear();
        self.bytes = 0;
        self.group = keyframe.then_some(group);
    }

    /// A frame of `group`. Frames of another group than the current one are ignored; a frame
    /// that would pass the cap drops the cached group.
    pub fn push(&mut self, group: u64, frame: &Bytes) {
        if self.group != Some(group) {
            return;
        }
        if self.bytes + frame.len() > self.cap {
            self.group = None;
            self.frames = Vec::new();
            self.bytes = 0;
            return;
        }
        self.bytes += frame.len();
        self.frames.push(frame.clone());
    }

    /// The group in progress and its frames so far, if it can start a decoder.
    pub fn latest(&self) -> Option<(u64, &[Bytes])> {
        self.group.filter(|_| !self.frames.is_empty()).map(|g| (g, self.frames.as_slice()))
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Bytes {
        Bytes::from(vec![1u8; n])
    }

    #[test]
    fn holds_the_group_in_progress_from_its_keyframe() {
        let mut c = GroupCache::new(1000);
        assert!(c.latest().is_none());
        c.start(1, true);
        c.push(1, &frame(100));
        c.push(1, &frame(10));
        c.push(0, &frame(10));
        assert_eq!(c.latest().map(|(g, f)| (g, f.len())), Some((1, 2)));
        c.start(2, true);
        assert!(c.latest().is_none(), "a new group with no frame yet");
        c.push(2, &frame(5));
        assert_eq!(c.latest().map(|(g, f)| (g, f.len())), Some((2, 1)));
        assert_eq!(c.bytes(), 5);
    }

    #[test]
    fn a_group_without_keyframe_or_too_big_is_not_offered() {
        let mut c = GroupCache::new(100);
        c.start(1, false);
        c.push(1, &frame(10));
        assert!(c.latest().is_none());
        c.start(2, true);
        c.push(2, &frame(60));
        c.push(2, &frame(60));
        assert!(c.latest().is_none(), "over the cap: dropped, not truncated");
        assert_eq!(c.bytes(), 0);
        c.push(2, &frame(1));
        assert!(c.latest().is_none(), "the rest of a dropped group is not cached");
    }
}
