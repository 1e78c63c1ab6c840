//! The client's side of calls (docs/media.md): publishing a track's groups on unidirectional
//! streams, and receiving the groups the relay forwards. Frames are opaque here too: the tests
//! and the load generator send synthetic ones with the group and keyframe pattern of real
//! media.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use web_transport_quinn::{RecvStream, SendStream, Session};

use super::ClientError;
use crate::media::TrackId;
use crate::proto::media::{FrameHeader, GroupHeader, MediaFrame, MediaReader, encode_frame};

/// Largest media frame the client accepts from the relay.
const MAX_MEDIA_FRAME: usize = 4 << 20;

/// What arrives of the groups the relay forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// A group stream opened (its header: track, layer, the subscriber's group number).
    Group(GroupHeader),
    /// A frame of a group.
    Frame { track: TrackId, group: u64, frame: MediaFrame },
    /// A group stream ended: complete, or reset by the relay (`reset` holds the code, e.g.
    /// `reset::DROPPED` when it was stale).
    End { track: TrackId, group: u64, reset: Option<u32> },
}

/// One group being published: frames go out in order on its stream.
pub struct GroupWriter {
    send: SendStream,
}

impl GroupWriter {
    pub(super) async fn open(conn: &Session, header: GroupHeader, priority: i32) -> Result<GroupWriter, ClientError> {
        let send = conn.open_uni().await.map_err(|e| ClientError::Closed { code: None, reason: e.to_string() })?;
        let _ = send.set_priority(priority);
        let mut writer = GroupWriter { send };
        writer.write(&header.encode()).await?;
        Ok(writer)
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.send.write_all(bytes).await.map_err(|e| ClientError::Closed { code: None, reason: e.to_string() })
    }

    /// Sends one frame: its presentation time, its audio level (RFC 6464 byte; 0 for video) and
    /// the encoded payload.
    pub async fn frame(&mut self, timestamp_us: u64, level: u8, payload: &[u8]) -> Result<(), ClientError> {
        self.write(&encode_frame(FrameHeader { timestamp_us, level }, payload)).await
    }

    /// Ends the group (the next one starts on a new stream).
    pub fn finish(mut self) {
        let _ = self.send.finish();
    }

    /// Abandons the group (e.g. the encoder restarted): the relay resets it for subscribers.
    pub fn abandon(mut self) {
        let _ = self.send.reset(0);
    }
}

/// Accepts the relay's group streams for as long as the connection lives, a reader each.
pub(super) async fn accept_groups(
    conn: Session,
    media: mpsc::Sender<MediaEvent>,
    tasks: TaskTracker,
    cancel: CancellationToken,
) {
    cancel
        .run_until_cancelled(async {
            while let Ok(recv) = conn.accept_uni().await {
                tasks.spawn(read_group(recv, media.clone(), cancel.clone()));
            }
        })
        .await;
}

async fn read_group(mut recv: RecvStream, media: mpsc::Sender<MediaEvent>, cancel: CancellationToken) {
    let mut reader = MediaReader::new(MAX_MEDIA_FRAME);
    let read = async {
        let mut header: Option<GroupHeader> = None;
        loop {
            if header.is_none() {
                header = reader.header().ok()?;
                if let Some(h) = header {
                    media.send(MediaEvent::Group(h)).await.ok()?;
                }
            }
            if let Some(h) = header {
                while let Some(frame) = reader.next_frame().ok()? {
                    media.send(MediaEvent::Frame { track: h.track, group: h.group, frame }).await.ok()?;
                }
            }
            match recv.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => reader.push(&chunk.bytes),
                Ok(None) => {
                    let h = header?;
                    media.send(MediaEvent::End { track: h.track, group: h.group, reset: None }).await.ok()?;
                    return Some(());
                }
                Err(web_transport_quinn::ReadError::Reset(code)) => {
                    let h = header?;
                    let end = MediaEvent::End { track: h.track, group: h.group, reset: Some(code) };
                    media.send(end).await.ok()?;
                    return Some(());
                }
                Err(_) => return None,
            }
        }
    };
    cancel.run_until_cancelled(read).await;
}
