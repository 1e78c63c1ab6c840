//! A WebSocket connection's socket: a plain `TcpStream`, or one with TLS (`wss://`) on it.
//!
//! Both are used the same non-blocking way (readiness, then `try_read` / `try_write`), so the
//! transport's direct writes from the fanout thread work over TLS too. The TLS side is rustls'
//! sans-IO `ServerConnection`, taken back from the TLS stream hyper served the upgrade on: reads
//! decrypt what the socket holds, writes encrypt into rustls' buffer and write what the socket
//! takes. Ciphertext the socket did not take is the *backlog*: the connection waits for the
//! socket to be writable while there is one, exactly as for plaintext bytes pending.
//!
//! Readiness stays truthful: plaintext is only read from the socket when rustls holds none
//! decrypted, so whenever a read found the socket empty (which clears tokio's readiness) rustls
//! holds no plaintext either. What it held when the upgrade took it over is handed out first
//! (`into_socket` adds it to the early bytes).

use std::io::{self, ErrorKind, Read, Write};
use std::sync::{Mutex, MutexGuard};

use rustls::ServerConnection;
use tokio::net::TcpStream;

pub struct Socket {
    stream: TcpStream,
    /// Boxed: a plain connection keeps one pointer, not rustls' state.
    tls: Option<Box<Mutex<ServerConnection>>>,
}

/// `io::Read` / `io::Write` over a `TcpStream`'s non-blocking calls, for rustls.
struct NonBlocking<'a>(&'a TcpStream);

impl Read for NonBlocking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for NonBlocking<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Socket {
    pub fn plain(stream: TcpStream) -> Socket {
        Socket { stream, tls: None }
    }

    /// `conn` is the TLS session already established on `stream`.
    pub fn tls(stream: TcpStream, conn: ServerConnection) -> Socket {
        Socket { stream, tls: Some(Box::new(Mutex::new(conn))) }
    }

    /// The TCP socket, for readiness and for the last reads before closing.
    pub fn tcp(&self) -> &TcpStream {
        &self.stream
    }

    fn lock(tls: &Mutex<ServerConnection>) -> MutexGuard<'_, ServerConnection> {
        // rustls' state after a panic elsewhere is at worst a broken connection.
        tls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads what is available without waiting, like `TcpStream::try_read`: `Ok(0)` at the end
    /// of the stream, `WouldBlock` when nothing is there.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = &self.tls else { return self.stream.try_read(buf) };
        let mut conn = Self::lock(tls);
        loop {
            match conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
            if conn.read_tls(&mut NonBlocking(&self.stream))? == 0 {
                return Ok(0);
            }
            let processed = conn.process_new_packets();
            // What TLS itself answers (an alert, a key update): best effort, the rest is backlog.
            Self::write_backlog(&mut conn, &self.stream)?;
            if let Err(err) = processed {
                return Err(io::Error::new(ErrorKind::InvalidData, err));
            }
        }
    }

    /// Writes without waiting, like `TcpStream::try_write`: how much of `bytes` was taken, or
    /// `WouldBlock` when nothing could be. With TLS, taken bytes may still wait as ciphertext:
    /// see [`Socket::flush_backlog`].
    pub fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        let Some(tls) = &self.tls else { return self.stream.try_write(bytes) };
        let mut conn = Self::lock(tls);
        if !Self::write_backlog(&mut conn, &self.stream)? {
            return Err(ErrorKind::WouldBlock.into());
        }
        let taken = conn.writer().write(bytes)?;
        if taken == 0 && !bytes.is_empty() {
            return Err(ErrorKind::WouldBlock.into());
        }
        Self::write_backlog(&mut conn, &self.stream)?;
        Ok(taken)
    }

    /// Writes TLS ciphertext waiting for the socket; `true` once none is left (always without
    /// TLS).
    pub fn flush_backlog(&self) -> io::Result<bool> {
        match &self.tls {
            None => Ok(true),
            Some(tls) => Self::write_backlog(&mut Self::lock(tls), &self.stream),
        }
    }

    /// TLS ciphertext waits for the socket.
    pub fn has_backlog(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| Self::lock(tls).wants_write())
    }

    fn write_backlog(conn: &mut ServerConnection, stream: &TcpStream) -> io::Result<bool> {
        while conn.wants_write() {
            match conn.write_tls(&mut NonBlocking(stream)) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(true)
    }

    /// Ends the sending side: TLS `close_notify` (if the socket takes it now), then a TCP
    /// half-close.
    pub fn shutdown_write(&self) {
        if let Some(tls) = &self.tls {
            let mut conn = Self::lock(tls);
            conn.send_close_notify();
            let _ = Self::write_backlog(&mut conn, &self.stream);
        }
        let _ = socket2::SockRef::from(&self.stream).shutdown(std::net::Shutdown::Write);
    }
}
