//! SFU-lite: the media plane (see docs/media.md).

pub mod speaker;
