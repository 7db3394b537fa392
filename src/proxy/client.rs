//! The client's side of a session: its socket, the socket's sticky readiness, whether the
//! client has closed its side, and for a TLS connection the rustls state between the socket
//! and the session. The session only ever goes through these methods, so it moves plaintext
//! the same way over both.
//!
//! TLS follows rustls' non-blocking pattern, as sozu drives it on mio: `read_tls` what the
//! socket has, `process_new_packets`, read the plaintext out; write plaintext in, and
//! `write_tls` to the socket while it takes bytes. A short TLS read does not mean the socket is
//! drained of plaintext: rustls may hold decrypted bytes the session has no room for yet, so
//! `readable` asks rustls too. Bytes rustls holds for the socket are flushed on every call, and
//! `pending_output` tells the session not to close before they are out.
//!
//! A client that speaks plain HTTP to the TLS listener fails the handshake; the connection's
//! first bytes, kept for that, tell it from garbage, and such a client is answered in plain
//! HTTP (`plain_http`), as nginx does, instead of with an alert it cannot read.

use crate::http::leading_method;
use crate::runtime::ready::{Io, Ready};
use mio::net::TcpStream;
use rustls::ServerConnection;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};

/// Most plaintext rustls buffers for the socket: beyond it, a write reports `Blocked`.
const TLS_BUFFER: usize = 64 * 1024;

/// The most plaintext one TLS record carries (RFC 8446 §5.1).
const MAX_RECORD: usize = 16 * 1024;

/// The connection's first bytes kept to tell a plain HTTP request from garbage: room for the
/// longest registered method (`UPDATEREDIRECTREF`) and its space.
const FIRST_BYTES: usize = 24;

/// Hands rustls `head` then `body`, joining the head and the start of the body into one
/// record through `record`: half the records for a small response, and one decryption
/// instead of two for the client. `taken` counts the bytes rustls took.
fn write_joined(
    conn: &mut ServerConnection,
    head: &[u8],
    body: &[u8],
    record: &mut [u8],
    taken: &mut usize,
) -> io::Result<()> {
    let joined = !head.is_empty() && !body.is_empty() && head.len() < record.len();
    let first = if joined {
        let n = body.len().min(record.len() - head.len());
        record[..head.len()].copy_from_slice(head);
        record[head.len()..head.len() + n].copy_from_slice(&body[..n]);
        &record[..head.len() + n]
    } else {
        head
    };
    let rest = if joined { &body[first.len() - head.len()..] } else { body };
    for part in [first, rest] {
        let n = conn.writer().write(part)?;
        *taken += n;
        if n < part.len() {
            break;
        }
    }
    Ok(())
}

/// Where a response head and the start of its body are joined into one TLS record's
/// plaintext: one per loop (`Resources`), taken on the first TLS write and kept.
#[derive(Default)]
pub struct RecordScratch(Vec<u8>);

impl RecordScratch {
    fn get(&mut self) -> &mut [u8] {
        if self.0.is_empty() {
            self.0 = vec![0; MAX_RECORD];
        }
        &mut self.0
    }
}

/// A socket read through its sticky readiness, as rustls's `read_tls` takes it, keeping a
/// copy of the connection's first bytes.
struct Sticky<'a> {
    stream: &'a mut TcpStream,
    ready: &'a mut Ready,
    first: &'a mut FirstBytes,
}

impl io::Read for Sticky<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.ready.read(self.stream, buf) {
            Io::Bytes(n) => {
                self.first.keep(&buf[..n]);
                Ok(n)
            }
            Io::Eof => Ok(0),
            Io::Blocked => Err(io::ErrorKind::WouldBlock.into()),
            Io::Retry => Err(io::ErrorKind::Interrupted.into()),
            Io::Failed(e) => Err(e),
        }
    }
}

pub struct Client {
    stream: TcpStream,
    ready: Ready,
    peer: SocketAddr,
    /// The client closed its side (read EOF).
    pub eof: bool,
    /// `Some` on the TLS listener.
    tls: Option<Box<Tls>>,
}

/// The first `FIRST_BYTES` bytes a TLS client sent, whatever they were.
#[derive(Default)]
struct FirstBytes {
    bytes: [u8; FIRST_BYTES],
    len: usize,
}

impl FirstBytes {
    fn keep(&mut self, read: &[u8]) {
        let n = read.len().min(FIRST_BYTES - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&read[..n]);
        self.len += n;
    }

    /// The method of the plain HTTP request these bytes begin, if they begin one.
    fn plain_http_method(&self) -> Option<&[u8]> {
        leading_method(&self.bytes[..self.len])
    }
}

/// A plain HTTP request on the TLS listener, as far as its first bytes tell.
pub struct PlainHttp {
    /// It is a HEAD request: its answer has no body.
    pub head: bool,
}

struct Tls {
    conn: ServerConnection,
    first: FirstBytes,
    /// Decrypted bytes waiting in rustls.
    plaintext: usize,
    /// The client sent close_notify or closed its TCP side: after the plaintext, the end.
    closed: bool,
    /// Our close_notify is queued: nothing more is written.
    notified: bool,
    /// Our FIN is owed once rustls has written everything out.
    fin_owed: bool,
}

impl Client {
    pub fn new(stream: TcpStream, peer: SocketAddr) -> Client {
        Client { stream, ready: Ready::default(), peer, eof: false, tls: None }
    }

    /// A client of the TLS listener; the handshake happens as the session reads.
    pub fn tls(stream: TcpStream, peer: SocketAddr, mut conn: ServerConnection) -> Client {
        conn.set_buffer_limit(Some(TLS_BUFFER));
        Client {
            stream,
            ready: Ready::default(),
            peer,
            eof: false,
            tls: Some(Box::new(Tls {
                conn,
                first: FirstBytes::default(),
                plaintext: 0,
                closed: false,
                notified: false,
                fin_owed: false,
            })),
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A TLS client whose handshake has not completed.
    pub fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.conn.is_handshaking())
    }

    /// After a failed handshake (a read's `InvalidData`): whether the connection's first bytes
    /// were a plain HTTP request rather than a TLS record. If they were, the connection is
    /// plain from now on, so that the session can answer in HTTP before it closes; nothing
    /// of TLS was sent on it.
    pub fn plain_http(&mut self) -> Option<PlainHttp> {
        let tls = self.tls.as_ref().filter(|t| t.conn.is_handshaking())?;
        let head = tls.first.plain_http_method()? == b"HEAD";
        self.tls = None;
        Some(PlainHttp { head })
    }

    pub fn event(&mut self, event: &mio::event::Event) {
        self.ready.update(event);
    }

    /// Whether a read may find bytes: the socket has not been seen drained since its last
    /// event, or rustls holds decrypted bytes.
    pub fn readable(&self) -> bool {
        self.ready.read || self.tls.as_ref().is_some_and(|t| t.plaintext > 0)
    }

    pub fn read(&mut self, buf: &mut [u8]) -> Io {
        let Some(tls) = self.tls.as_mut() else {
            return self.ready.read(&mut self.stream, buf);
        };
        loop {
            if tls.plaintext > 0 {
                match tls.conn.reader().read(buf) {
                    Ok(0) => return Io::Eof,
                    Ok(n) => {
                        tls.plaintext = tls.plaintext.saturating_sub(n);
                        return Io::Bytes(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => tls.plaintext = 0,
                    // The TCP connection closed without close_notify: a truncation rustls
                    // reports as an error; for the session it is the end it is.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Io::Eof,
                    Err(e) => return Io::Failed(e),
                }
            }
            if tls.closed {
                return Io::Eof;
            }
            if !self.ready.read {
                return match flush(tls, &mut self.stream, &mut self.ready) {
                    Ok(()) => Io::Blocked,
                    Err(e) => Io::Failed(e),
                };
            }
            // Through the sticky readiness, so that a short read counts as drained (unless a
            // FIN is queued) and costs no second read that would only say `WouldBlock`.
            let mut socket = Sticky { stream: &mut self.stream, ready: &mut self.ready, first: &mut tls.first };
            match tls.conn.read_tls(&mut socket) {
                // The end of the TCP stream: what is decrypted already is still read out.
                Ok(0) => tls.closed = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.ready.read = false;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Io::Retry,
                Err(e) => return Io::Failed(e),
            }
            match tls.conn.process_new_packets() {
                Ok(state) => {
                    tls.plaintext = state.plaintext_bytes_to_read();
                    tls.closed |= state.peer_has_closed();
                }
                Err(e) => {
                    // The alert rustls queued tells a TLS client why; a plain HTTP client gets
                    // an answer it can read instead (`plain_http`).
                    if tls.first.plain_http_method().is_none() {
                        let _ = flush(tls, &mut self.stream, &mut self.ready);
                    }
                    return Io::Failed(io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}")));
                }
            }
            // Handshake messages go out as soon as rustls has them.
            if let Err(e) = flush(tls, &mut self.stream, &mut self.ready) {
                return Io::Failed(e);
            }
        }
    }

    /// One write of `head` then `body`: straight to the socket, or into rustls and from it to
    /// the socket as far as the socket takes bytes (`scratch` joins them into one record).
    pub fn write(&mut self, head: &[u8], body: &[u8], scratch: &mut RecordScratch) -> Io {
        let Some(tls) = self.tls.as_mut() else {
            return self.ready.write(&mut self.stream, head, body);
        };
        if let Err(e) = flush(tls, &mut self.stream, &mut self.ready) {
            return Io::Failed(e);
        }
        if !tls.conn.is_handshaking() && (!head.is_empty() || !body.is_empty()) {
            let mut taken = 0;
            let written = write_joined(&mut tls.conn, head, body, scratch.get(), &mut taken);
            if let Err(e) = written {
                return Io::Failed(e);
            }
            if let Err(e) = flush(tls, &mut self.stream, &mut self.ready) {
                return Io::Failed(e);
            }
            if taken > 0 {
                return Io::Bytes(taken);
            }
        }
        Io::Blocked
    }

    /// Bytes written that have not reached the socket yet (TLS records rustls holds), after
    /// writing what the socket takes now; a FIN owed goes out once they have.
    pub fn pending_output(&mut self) -> bool {
        let Some(tls) = self.tls.as_mut() else {
            return false;
        };
        let _ = flush(tls, &mut self.stream, &mut self.ready);
        if tls.conn.wants_write() {
            return true;
        }
        if std::mem::take(&mut tls.fin_owed) {
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        false
    }

    /// The same without writing: for a caller that only looks.
    pub fn has_pending_output(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.conn.wants_write() || t.fin_owed)
    }

    /// Ends our side of a TLS session: a close_notify, so that the client can tell the end of
    /// the stream from a truncation. True once it and everything before it are on the wire;
    /// until then the caller waits for the socket to take more. Always true in plain HTTP.
    pub fn finish_tls(&mut self) -> bool {
        let Some(tls) = self.tls.as_mut() else {
            return true;
        };
        if !tls.notified {
            tls.conn.send_close_notify();
            tls.notified = true;
        }
        !self.pending_output()
    }

    /// Sends our FIN, keeping the read side open (lingering close, a tunnel's half-close). Over
    /// TLS a close_notify goes first, and the FIN only after every record rustls holds: if the
    /// socket cannot take them all now, the FIN is owed and `pending_output` sends it.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        if let Some(tls) = self.tls.as_mut() {
            if !tls.notified {
                tls.conn.send_close_notify();
                tls.notified = true;
            }
            flush(tls, &mut self.stream, &mut self.ready)?;
            if tls.conn.wants_write() {
                tls.fin_owed = true;
                return Ok(());
            }
        }
        self.stream.shutdown(Shutdown::Write)
    }
}

/// Writes what rustls holds for the socket, while the socket takes it.
fn flush(tls: &mut Tls, stream: &mut TcpStream, ready: &mut Ready) -> io::Result<()> {
    while tls.conn.wants_write() && ready.write {
        match tls.conn.write_tls(stream) {
            Ok(0) => {
                ready.write = false;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.write = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
