//! The client's side of a session: its socket, the socket's sticky readiness, and whether the
//! client has closed its side. A TLS transport will make this a two-variant type, each with its
//! own rule for when a read has drained the socket (for TLS records, a short read does not mean
//! the socket is empty); the session only ever goes through these methods.

use crate::runtime::ready::{Io, Ready};
use mio::net::TcpStream;
use std::net::{Shutdown, SocketAddr};

pub struct Client {
    stream: TcpStream,
    ready: Ready,
    peer: SocketAddr,
    /// The client closed its side (read EOF).
    pub eof: bool,
}

impl Client {
    pub fn new(stream: TcpStream, peer: SocketAddr) -> Client {
        Client { stream, ready: Ready::default(), peer, eof: false }
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn event(&mut self, event: &mio::event::Event) {
        self.ready.update(event);
    }

    /// Whether a read may find bytes: the socket has not been seen drained since its last event.
    pub fn readable(&self) -> bool {
        self.ready.read
    }

    pub fn read(&mut self, buf: &mut [u8]) -> Io {
        self.ready.read(&mut self.stream, buf)
    }

    /// One vectored write of `head` then `body`.
    pub fn write(&mut self, head: &[u8], body: &[u8]) -> Io {
        self.ready.write(&mut self.stream, head, body)
    }

    /// Sends our FIN, keeping the read side open (lingering close).
    pub fn shutdown_write(&self) -> std::io::Result<()> {
        self.stream.shutdown(Shutdown::Write)
    }
}
