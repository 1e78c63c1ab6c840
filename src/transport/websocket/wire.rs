//! The socket of one WebSocket connection and everything written to it.
//!
//! Frames are written from two places. Whoever queues them (the store's fanout thread, the
//! connection's own task answering a request) writes them at once with a non-blocking write: the
//! [`DirectWrite`] the outbox calls. Only when the socket is full, or another thread holds the
//! socket, does the connection loop take over: it waits until the socket is writable and flushes
//! the rest. Bytes the socket did not take are kept in `pending` and always go out first, so the
//! stream stays in queue order and frames are never cut.
//!
//! Invariant: whoever leaves bytes pending has woken the connection loop (the outbox's
//! notification, or the loop itself when it wrote), and the loop waits for the socket to be
//! writable as long as bytes are pending. A direct write that finds bytes pending therefore
//! leaves its frames queued for the loop without waking it again.

use std::cell::RefCell;
use std::io::ErrorKind;
use std::sync::{Mutex, MutexGuard};

use super::deflate::Deflater;
use super::framing::{self, opcode};
use super::socket::Socket;
use crate::metrics::TransportMetrics;
use crate::outbox::{CloseReason, DirectWrite, Outbox, Take};
use crate::proto::Codec;
use crate::transport::WRITE_BATCH;

/// Largest encoding buffer a thread keeps between writes.
const SCRATCH_KEEP: usize = 64 * 1024;

/// Pending bytes past which control frames (pongs, pings) are dropped instead of queued: a
/// peer that sends pings but does not read cannot grow the buffer (RFC 6455 allows answering
/// only the latest ping).
const CONTROL_BACKLOG: usize = 4096;

thread_local! {
    /// Where frames are encoded before a write; one per thread, reused.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Where a message is compressed before it is framed (permessage-deflate).
    static DEFLATED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// How a flush ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued is written.
    All,
    /// The socket is full: flush again once it is writable.
    Blocked,
    /// The connection is closing and everything queued before the close is written.
    Closing(CloseReason),
    /// Nothing more can be written: the socket failed (the peer is gone), or the close frame is
    /// queued.
    Ended,
}

#[derive(Default)]
struct Output {
    /// Encoded bytes the socket has not taken yet.
    pending: Vec<u8>,
    /// The close frame is queued: nothing is written after it.
    closed: bool,
    /// A write failed: the peer is gone.
    failed: bool,
    /// permessage-deflate was negotiated: messages are compressed in queue order, under this
    /// lock, since each may refer to the ones before it.
    deflate: Option<Deflater>,
}

impl Output {
    /// Bytes wait for the socket to become writable (and the loop knows: see the module docs).
    fn blocked(&self) -> bool {
        !self.pending.is_empty() && !self.failed
    }
}

/// One connection's socket: read by the connection loop, written by anyone (see module docs).
pub struct Wire {
    socket: Socket,
    out: Mutex<Output>,
    metrics: TransportMetrics,
}

impl Wire {
    pub fn new(socket: Socket, metrics: TransportMetrics, deflate: Option<Deflater>) -> Wire {
        Wire { socket, out: Mutex::new(Output { deflate, ..Output::default() }), metrics }
    }

    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    fn lock(&self) -> MutexGuard<'_, Output> {
        // Output is a byte buffer and two flags; a panic while writing cannot leave it worse
        // than a lost connection.
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes (or TLS ciphertext) are waiting for the socket to become writable.
    pub fn is_blocked(&self) -> bool {
        self.lock().blocked() || self.socket.has_backlog()
    }

    /// Writes pending bytes, then everything the outbox holds, until the socket is full.
    pub fn flush(&self, outbox: &Outbox) -> Flushed {
        self.flush_locked(&mut self.lock(), outbox)
    }

    fn flush_locked(&self, out: &mut Output, outbox: &Outbox) -> Flushed {
        match self.write_pending(out) {
            Flushed::All if out.closed => return Flushed::Ended,
            Flushed::All => {}
            other => return other,
        }
        let code = match outbox.codec() {
            Codec::Json => opcode::TEXT,
            Codec::Postcard => opcode::BINARY,
        };
        loop {
            let frames = match outbox.take_all(WRITE_BATCH) {
                Take::Frames(frames) => frames,
                Take::Empty | Take::Finished => return Flushed::All,
                Take::Close(reason) => return Flushed::Closing(reason),
            };
            let written = with_scratch(|buf, deflated| {
                for frame in &frames {
                    framing::encode_message(code, frame.body_slice(), out.deflate.as_mut(), deflated, buf);
                }
                let written = self.write(out, buf);
                self.metrics.frames_out.increment(frames.len() as u64);
                self.metrics.bytes_out.increment(buf.len() as u64);
                written
            });
            if written != Flushed::All {
                return written;
            }
        }
    }

    /// Writes what is pending; `All` once nothing is.
    fn write_pending(&self, out: &mut Output) -> Flushed {
        if out.failed {
            return Flushed::Ended;
        }
        let (written, result) = self.write_some(&out.pending);
        match result {
            // Frees the buffer: an idle connection holds none.
            Flushed::All => out.pending = Vec::new(),
            Flushed::Blocked => drop(out.pending.drain(..written)),
            _ => out.failed = true,
        }
        result
    }

    /// Writes `bytes` (nothing may be pending) and keeps what the socket does not take.
    fn write(&self, out: &mut Output, bytes: &[u8]) -> Flushed {
        let (written, result) = self.write_some(bytes);
        match result {
            Flushed::All => {}
            Flushed::Blocked => out.pending.extend_from_slice(&bytes[written..]),
            _ => out.failed = true,
        }
        result
    }

    /// Writes as much of `bytes` as the socket takes without waiting: how much, and `All`,
    /// `Blocked` (the socket is full, or TLS ciphertext still waits for it) or `Ended` (it
    /// failed).
    fn write_some(&self, bytes: &[u8]) -> (usize, Flushed) {
        let mut written = 0;
        while written < bytes.len() {
            match self.socket.try_write(&bytes[written..]) {
                Ok(0) => return (written, Flushed::Ended),
                Ok(n) => written += n,
                Err(err) if err.kind() == ErrorKind::WouldBlock => return (written, Flushed::Blocked),
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => return (written, Flushed::Ended),
            }
        }
        match self.socket.flush_backlog() {
            Ok(true) => (written, Flushed::All),
            Ok(false) => (written, Flushed::Blocked),
            Err(_) => (written, Flushed::Ended),
        }
    }

    /// Writes what is pending (after the close frame, nothing else is).
    pub fn flush_pending(&self) -> Flushed {
        self.write_pending(&mut self.lock())
    }

    /// Writes a whole message now, or after what is pending (for the echo path, which has no
    /// outbox). Returns `false` once nothing more can be written.
    pub fn send_message(&self, code: u8, payload: &[u8]) -> bool {
        let mut out = self.lock();
        if out.closed || out.failed {
            return false;
        }
        with_scratch(|buf, deflated| {
            framing::encode_message(code, payload, out.deflate.as_mut(), deflated, buf);
            if out.pending.is_empty() {
                self.write(&mut out, buf);
            } else {
                out.pending.extend_from_slice(buf);
            }
        });
        !out.failed
    }

    /// Writes a control frame (ping, pong) now, or after what is pending (if little is).
    pub fn send_control(&self, code: u8, payload: &[u8]) {
        let mut out = self.lock();
        if out.closed || out.failed || out.pending.len() > CONTROL_BACKLOG {
            return;
        }
        let mut frame = Vec::with_capacity(2 + payload.len());
        framing::encode(code, payload, &mut frame);
        if out.pending.is_empty() {
            self.write(&mut out, &frame);
        } else {
            out.pending.extend_from_slice(&frame);
        }
    }

    /// Queues the close frame (`code` and a short `text`) after everything pending and writes
    /// what the socket takes. Nothing is written after it.
    pub fn close(&self, code: u16, text: &str) -> Flushed {
        let mut out = self.lock();
        if out.closed || out.failed {
            return Flushed::Ended;
        }
        out.closed = true;
        framing::encode(opcode::CLOSE, &framing::close_payload(code, text), &mut out.pending);
        self.write_pending(&mut out)
    }
}

/// Runs `f` with this thread's encoding buffers, emptied; large ones are not kept.
fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>, &mut Vec<u8>) -> R) -> R {
    SCRATCH.with(|scratch| {
        DEFLATED.with(|deflated| {
            let (mut buf, mut deflated) = (scratch.borrow_mut(), deflated.borrow_mut());
            buf.clear();
            let result = f(&mut buf, &mut deflated);
            for buf in [&mut *buf, &mut *deflated] {
                if buf.capacity() > SCRATCH_KEEP {
                    *buf = Vec::new();
                }
            }
            result
        })
    })
}

impl DirectWrite for Wire {
    fn write_now(&self, outbox: &Outbox) -> bool {
        // Another thread is writing: it, or the loop it wakes, takes this frame too.
        let Ok(mut out) = self.out.try_lock() else { return false };
        if out.blocked() {
            // The loop already waits for the socket (see the invariant in the module docs).
            return true;
        }
        self.flush_locked(&mut out, outbox) == Flushed::All
    }
}
