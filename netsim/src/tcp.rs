//! The TCP proxy: each accepted connection gets its own connection to the relay and a pump per
//! direction that reads segments, asks the model when each arrives ([`LinkModel::decide_stream`])
//! and writes it then.
//!
//! Nothing is dropped: loss becomes a retransmission delay and blackouts hold bytes (see
//! `docs/netsim.md`). The queue between reading and writing is bounded by the profile's
//! `queue_bytes`; when it is full the pump stops reading, so the sender stalls as it would on a
//! link that stopped acknowledging.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::model::LinkModel;
use crate::proxy::Core;
use crate::stats::DirectionCounters;

/// Bytes read and scheduled as one segment (a typical TCP MSS).
const SEGMENT: usize = 1400;
/// Bounds on the per-direction queue, in segments.
const MIN_QUEUE: usize = 4;
const MAX_QUEUE: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn serve(core: Arc<Core>, listener: TcpListener, upstream: SocketAddr) {
    loop {
        tokio::select! {
            _ = core.cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    let n = core.counters.flows.fetch_add(1, Ordering::Relaxed);
                    core.tasks.spawn(connection(core.clone(), client, upstream, n));
                }
                Err(err) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

async fn connection(core: Arc<Core>, client: TcpStream, upstream: SocketAddr, n: u64) {
    let active = &core.counters.active_flows;
    active.fetch_add(1, Ordering::Relaxed);
    let cancel = core.path_token();
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream));
    if let Some(Ok(Ok(server))) = cancel.run_until_cancelled(connect).await {
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (up_model, down_model) = core.models(n);
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        tokio::join!(
            pump(&core, client_read, server_write, up_model, &core.counters.up, &cancel),
            pump(&core, server_read, client_write, down_model, &core.counters.down, &cancel),
        );
    }
    active.fetch_sub(1, Ordering::Relaxed);
}

/// One direction. An orderly end of stream is passed on (after the bytes before it); an error
/// on either side ends the whole connection.
async fn pump(
    core: &Core,
    mut reader: impl AsyncReadExt + Unpin,
    mut writer: impl AsyncWriteExt + Unpin,
    mut model: LinkModel,
    counters: &DirectionCounters,
    cancel: &CancellationToken,
) {
    let queue = (model.config().queue_bytes / SEGMENT).clamp(MIN_QUEUE, MAX_QUEUE);
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(queue);
    let read = async {
        let mut buf = vec![0u8; SEGMENT];
        let mut last = Instant::now();
        loop {
            let Some(read) = cancel.run_until_cancelled(reader.read(&mut buf)).await else { return };
            let segment = match read {
                Ok(0) => None,
                Ok(len) => buf.get(..len).map(<[u8]>::to_vec),
                Err(_) => {
                    cancel.cancel();
                    return;
                }
            };
            let at = match &segment {
                Some(bytes) => {
                    let (at, retransmitted) = model.decide_stream(core.elapsed(), bytes.len());
                    counters.record_segment(bytes.len(), retransmitted);
                    core.instant(at)
                }
                None => last,
            };
            last = at;
            let end = segment.is_none();
            if cancel.run_until_cancelled(tx.send((at, segment))).await.is_none_or(|sent| sent.is_err()) || end {
                return;
            }
        }
    };
    let write = async {
        while let Some(Some((at, segment))) = cancel.run_until_cancelled(rx.recv()).await {
            let ready = async {
                tokio::time::sleep_until(at).await;
                core.blackout_clear().await;
            };
            if cancel.run_until_cancelled(ready).await.is_none() {
                return;
            }
            let Some(bytes) = segment else {
                let _ = writer.shutdown().await;
                return;
            };
            if !matches!(cancel.run_until_cancelled(writer.write_all(&bytes)).await, Some(Ok(()))) {
                cancel.cancel();
                return;
            }
        }
    };
    tokio::join!(read, write);
}
