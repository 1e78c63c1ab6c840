//! The client's WebSocket link: every frame on one socket, text for JSON, binary for postcard.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{ClientError, Shared};
use crate::proto::{Codec, ErrorCode, ServerFrame, WireFrame};

/// Bytes tungstenite reads per call. Its default (128 KiB) is zeroed before every read: with
/// small frames that `memset` was half of a receiving client's CPU. Larger frames still
/// arrive, in several reads.
const READ_BUFFER: usize = 8 * 1024;

pub(super) struct WsLink {
    outgoing: mpsc::UnboundedSender<Message>,
    shared: Arc<Shared>,
    codec: Codec,
}

pub(super) async fn connect(
    url: &str,
    codec: Codec,
    hello: WireFrame,
    shared: Arc<Shared>,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<(WsLink, ServerFrame), ClientError> {
    // TCP_NODELAY: each frame is written whole; Nagle would hold small ones behind a delayed ACK.
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let (socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .map_err(|e| ClientError::Connect(e.to_string()))?;
    let (mut sink, mut stream) = socket.split();
    sink.send(message(codec, &hello)).await.map_err(|e| ClientError::Connect(e.to_string()))?;
    let first = match next_body(&mut stream).await {
        Ok(body) => body,
        Err((code, reason)) if code.is_some() => return Err(ClientError::Closed { code, reason }),
        Err((_, reason)) => return Err(ClientError::Connect(format!("before welcome: {reason}"))),
    };
    let first = codec.decode::<ServerFrame>(&first).map_err(|e| ClientError::Protocol(e.to_string()))?;
    if let ServerFrame::Error { code, message, .. } = first {
        return Err(ClientError::Rejected { code, message });
    }

    let (outgoing, mut queue) = mpsc::unbounded_channel::<Message>();
    let writer_cancel = cancel.clone();
    tasks.spawn(async move {
        loop {
            let next = tokio::select! {
                _ = writer_cancel.cancelled() => None,
                next = queue.recv() => next,
            };
            let Some(msg) = next else { break };
            let closing = matches!(msg, Message::Close(_));
            if sink.send(msg).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let reader_shared = shared.clone();
    // One cancellation future for the reader's life, not one per message.
    tasks.spawn(cancel.clone().run_until_cancelled_owned(async move {
        loop {
            let body = match next_body(&mut stream).await {
                Ok(body) => body,
                Err((code, reason)) => {
                    reader_shared.closed(code, reason).await;
                    return;
                }
            };
            match codec.decode::<ServerFrame>(&body) {
                Ok(frame) => reader_shared.dispatch(frame).await,
                Err(err) => tracing::warn!(%err, "undecodable frame from relay"),
            }
        }
    }));
    Ok((WsLink { outgoing, shared, codec }, first))
}

/// The next frame body, skipping pings and pongs; `Err` with the close code and reason once the
/// socket closes or fails.
async fn next_body<S>(stream: &mut S) -> Result<Bytes, (Option<ErrorCode>, String)>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        return match stream.next().await {
            Some(Ok(Message::Text(text))) => Ok(Bytes::copy_from_slice(text.as_bytes())),
            Some(Ok(Message::Binary(bytes))) => Ok(bytes),
            Some(Ok(Message::Close(frame))) => Err(close_info(frame.as_ref())),
            Some(Ok(_)) => continue,
            Some(Err(err)) => Err((None, err.to_string())),
            None => Err((None, "socket ended".into())),
        };
    }
}

fn message(codec: Codec, frame: &WireFrame) -> Message {
    match codec {
        // JSON frames are UTF-8 by construction; the check shares the bytes instead of copying.
        Codec::Json => match Utf8Bytes::try_from(frame.body()) {
            Ok(text) => Message::Text(text),
            Err(_) => Message::Binary(frame.body()),
        },
        Codec::Postcard => Message::Binary(frame.body()),
    }
}

fn close_info(frame: Option<&CloseFrame>) -> (Option<ErrorCode>, String) {
    match frame {
        Some(frame) => (ErrorCode::from_ws_close_code(u16::from(frame.code)), frame.reason.to_string()),
        None => (None, "closed without a code".into()),
    }
}

impl WsLink {
    pub(super) fn send(&self, frame: WireFrame) -> Result<(), ClientError> {
        self.outgoing.send(message(self.codec, &frame)).map_err(|_| {
            self.shared.closed_error().unwrap_or(ClientError::Closed { code: None, reason: "socket closed".into() })
        })
    }

    pub(super) fn close(&self) {
        let _ = self.outgoing.send(Message::Close(None));
    }
}
