//! Media group streams on QUIC and WebTransport (docs/media.md): a publisher's unidirectional
//! streams are read here, one task per group, and handed frame by frame to the calls; a
//! subscriber's groups are written here, one task per group, at the group's priority, and reset
//! as soon as the calls cancel them (stale, queue full, track ended). Thin: every decision is in
//! `crate::media`.

use std::sync::Arc;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use web_transport_quinn::{RecvStream, SendStream, Session, WriteError};

use crate::connection::unix_ms;
use crate::media::calls::Calls;
use crate::media::out::{GroupOpen, MediaOut};
use crate::media::pacer::{self, SharedPacer};
use crate::media::queue::Next;
use crate::proto::media::{MediaReader, reset};

/// Unidirectional streams a connection that publishes media may have open at once (a group
/// per stream; audio groups are short, so several overlap). Others keep the few HTTP/3 needs.
pub const PUBLISHER_UNI_STREAMS: u32 = 64;

/// Reads one group stream of a publisher and forwards its frames. A stream the calls refuse
/// (unknown track, not the connection's, no such layer) or that breaks the format is stopped;
/// a group the publisher resets, or that breaks off, is reset for its subscribers too.
pub async fn read_group(mut recv: RecvStream, calls: Arc<Calls>, id: u64, cancel: CancellationToken) {
    let mut reader = MediaReader::new(calls.config().max_frame_bytes as usize);
    let frames_in = metrics::counter!(crate::metrics::MEDIA_FRAMES_IN_TOTAL);
    let mut group = None;
    let read = async {
        let header = loop {
            match reader.header() {
                Ok(Some(header)) => break header,
                Ok(None) => match recv.read_chunk(READ_CHUNK, true).await {
                    Ok(Some(chunk)) => reader.push(&chunk.bytes),
                    _ => return Err("stream ended before its header"),
                },
                Err(_) => return Err("malformed group header"),
            }
        };
        let forwarding = group.insert(calls.group(id, header, unix_ms()).map_err(|_| "group refused")?);
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => {
                    frames_in.increment(1);
                    forwarding.frame(&frame, unix_ms()).map_err(|_| "above the track's bitrate allowance")?;
                }
                Ok(None) => match recv.read_chunk(READ_CHUNK, true).await {
                    Ok(Some(chunk)) => reader.push(&chunk.bytes),
                    Ok(None) if reader.pending() == 0 => return Ok(()),
                    Ok(None) => return Err("stream ended inside a frame"),
                    Err(_) => return Err("reset by the publisher"),
                },
                Err(_) => return Err("malformed or oversized frame"),
            }
        }
    };
    let outcome = tokio::select! {
        outcome = read => outcome,
        _ = cancel.cancelled() => Err("connection closing"),
    };
    match (outcome, group) {
        (Ok(()), Some(group)) => group.end(unix_ms()),
        (Ok(()), None) => {}
        (Err(why), group) => {
            tracing::debug!(why, "media group stream ended early");
            let _ = recv.stop(reset::REFUSED);
            if let Some(group) = group {
                group.abort();
            }
        }
    }
}

/// Largest chunk taken from a group stream at once.
const READ_CHUNK: usize = 64 * 1024;

/// Writes one group to a subscriber: the header, then frames as they come, then finish (or a
/// reset when the group is cancelled). The group stays in flight until the subscriber has it
/// all, so a newer group can still cancel it while it waits for acknowledgements. Writes bigger
/// than [`pacer::SMALL_BYTES`] (keyframes) go through the relay-wide `pacer`.
pub async fn write_group(
    conn: Arc<Session>,
    media: Arc<MediaOut>,
    pacer: Arc<SharedPacer>,
    open: GroupOpen,
    stop: CancellationToken,
) {
    let key = open.key;
    let cancelled = open.cancel.clone();
    let write = async {
        let mut send = conn.open_uni().await.ok()?;
        let _ = send.set_priority(open.priority);
        let outcome = async {
            send.write_all(&open.header.encode()).await.ok()?;
            loop {
                match media.next(key) {
                    Next::Frames(mut frames) if frames.iter().map(Bytes::len).sum::<usize>() <= pacer::SMALL_BYTES => {
                        send.write_all_chunks(&mut frames).await.ok()?
                    }
                    Next::Frames(frames) => write_paced(&mut send, &pacer, open.priority, frames).await.ok()?,
                    Next::Wait => open.notify.notified().await,
                    Next::Finish => {
                        send.finish().ok()?;
                        let _ = send.stopped().await;
                        return Some(());
                    }
                    Next::Reset => return None,
                }
            }
        };
        let finished = tokio::select! {
            finished = outcome => finished.is_some(),
            _ = cancelled.cancelled() => false,
        };
        if !finished {
            let _ = send.reset(reset::DROPPED);
        }
        Some(())
    };
    tokio::select! {
        _ = write => {}
        _ = stop.cancelled() => {}
    }
    media.done(key);
}

/// Writes a big batch of frames chunk by chunk, each under a grant of the pacer. The grant is
/// kept until this task had a turn after the write: the connection's driver, woken by the
/// write, runs before it, so the chunk is on its way when the next one is granted.
async fn write_paced(
    send: &mut SendStream,
    pacer: &SharedPacer,
    priority: i32,
    frames: Vec<Bytes>,
) -> Result<(), WriteError> {
    let ticket = pacer.ticket();
    for mut chunk in pacer::chunks(frames, pacer::CHUNK_BYTES) {
        let bytes = chunk.iter().map(Bytes::len).sum();
        let _grant = pacer.acquire(ticket, priority, bytes, unix_ms).await;
        send.write_all_chunks(&mut chunk).await?;
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// Hands the connection's congestion window and smoothed RTT to its media side, which turns
/// them into the forwarders' budget and congestion signal (`crate::media::probe`).
pub fn observe_path(conn: &Session, media: &MediaOut) {
    let cwnd = quinn::Connection::stats(conn).path.cwnd;
    media.observe_path(cwnd, conn.rtt(), unix_ms());
}
