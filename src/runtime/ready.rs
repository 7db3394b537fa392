//! Sticky readiness: what the reactor last said about a socket, and the reads and writes that use
//! it up. mio is edge-triggered, so a flag stays set until a syscall shows the socket is drained
//! (`WouldBlock`, or a short read or write, as nginx does) and the next event sets it again.
//! Every socket of the proxy, client, upstream or probe, reads and writes through here.

use std::io::{self, IoSlice, Read, Write};

#[derive(Clone, Copy, Debug, Default)]
pub struct Ready {
    pub read: bool,
    pub write: bool,
    /// The peer's FIN was seen: a short read does not mean the socket is drained.
    pub hup: bool,
}

/// What one read or write did.
#[derive(Debug)]
pub enum Io {
    /// This many bytes moved (never 0).
    Bytes(usize),
    /// The peer closed its side (reads only).
    Eof,
    /// Not ready: nothing was tried, or the kernel said `WouldBlock`.
    Blocked,
    /// Interrupted by a signal: try again.
    Retry,
    Failed(io::Error),
}

/// Where a non-blocking connect stands.
pub enum Connect {
    Done,
    /// No answer yet: wait for the socket's next event.
    Pending,
    Failed(io::Error),
}

impl Ready {
    /// Whether a non-blocking connect on `stream` has finished, as mio's `TcpStream::connect`
    /// says to ask once the socket is writable: `take_error`, then `peer_addr`, whose
    /// `NotConnected` means not yet. Waiting clears the flags, so the next event asks again.
    pub fn connect_outcome(&mut self, stream: &mio::net::TcpStream) -> Connect {
        if !(self.write || self.read) {
            return Connect::Pending;
        }
        let outcome = match stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => stream.peer_addr().map(|_| ()),
        };
        match outcome {
            Ok(()) => Connect::Done,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                (self.write, self.read) = (false, false);
                Connect::Pending
            }
            Err(e) => Connect::Failed(e),
        }
    }

    pub fn update(&mut self, event: &mio::event::Event) {
        self.read |= event.is_readable() || event.is_read_closed() || event.is_error();
        self.write |= event.is_writable() || event.is_write_closed() || event.is_error();
        self.hup |= event.is_read_closed() || event.is_error();
    }

    /// One read into `buf`, if the socket is readable.
    pub fn read(&mut self, stream: &mut impl Read, buf: &mut [u8]) -> Io {
        if !self.read || buf.is_empty() {
            return Io::Blocked;
        }
        match stream.read(buf) {
            Ok(0) => {
                self.read = false;
                Io::Eof
            }
            Ok(n) => {
                // A short read drained the socket, unless a FIN is queued behind the data.
                if n < buf.len() && !self.hup {
                    self.read = false;
                }
                Io::Bytes(n)
            }
            Err(e) => self.failed(e, false),
        }
    }

    /// One vectored write of `first` then `second`, if the socket is writable.
    pub fn write(&mut self, stream: &mut impl Write, first: &[u8], second: &[u8]) -> Io {
        let want = first.len() + second.len();
        if !self.write || want == 0 {
            return Io::Blocked;
        }
        let written = if second.is_empty() {
            stream.write(first)
        } else if first.is_empty() {
            stream.write(second)
        } else {
            stream.write_vectored(&[IoSlice::new(first), IoSlice::new(second)])
        };
        match written {
            Ok(0) => {
                self.write = false;
                Io::Blocked
            }
            Ok(n) => {
                if n < want {
                    self.write = false;
                }
                Io::Bytes(n)
            }
            Err(e) => self.failed(e, true),
        }
    }

    fn failed(&mut self, e: io::Error, writing: bool) -> Io {
        match e.kind() {
            io::ErrorKind::WouldBlock => {
                if writing {
                    self.write = false;
                } else {
                    self.read = false;
                }
                Io::Blocked
            }
            io::ErrorKind::Interrupted => Io::Retry,
            _ => Io::Failed(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that gives back scripted results.
    struct Script(Vec<io::Result<usize>>);

    impl Read for Script {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            self.0.remove(0)
        }
    }

    impl Write for Script {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            self.0.remove(0)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn ready() -> Ready {
        Ready { read: true, write: true, hup: false }
    }

    #[test]
    fn a_short_read_uses_readiness_up_unless_a_fin_is_queued() {
        let mut r = ready();
        assert!(matches!(r.read(&mut Script(vec![Ok(3)]), &mut [0; 8]), Io::Bytes(3)));
        assert!(!r.read);
        assert!(matches!(r.read(&mut Script(vec![]), &mut [0; 8]), Io::Blocked), "no syscall once drained");
        let mut r = Ready { hup: true, ..ready() };
        assert!(matches!(r.read(&mut Script(vec![Ok(3)]), &mut [0; 8]), Io::Bytes(3)));
        assert!(r.read, "the FIN behind the data still has to be read");
    }

    #[test]
    fn would_block_clears_and_interrupted_retries() {
        let mut r = ready();
        let mut s = Script(vec![Err(io::ErrorKind::Interrupted.into()), Err(io::ErrorKind::WouldBlock.into())]);
        assert!(matches!(r.write(&mut s, b"abc", b""), Io::Retry));
        assert!(r.write);
        assert!(matches!(r.write(&mut s, b"abc", b""), Io::Blocked));
        assert!(!r.write && r.read);
    }

    #[test]
    fn a_full_write_keeps_writability_and_a_short_one_clears_it() {
        let mut r = ready();
        assert!(matches!(r.write(&mut Script(vec![Ok(3)]), b"abc", b""), Io::Bytes(3)));
        assert!(r.write);
        assert!(matches!(r.write(&mut Script(vec![Ok(2)]), b"abc", b""), Io::Bytes(2)));
        assert!(!r.write);
    }

    #[test]
    fn eof_and_errors() {
        let mut r = ready();
        assert!(matches!(r.read(&mut Script(vec![Ok(0)]), &mut [0; 4]), Io::Eof));
        let mut r = ready();
        let reset = io::ErrorKind::ConnectionReset;
        assert!(
            matches!(r.read(&mut Script(vec![Err(reset.into())]), &mut [0; 4]), Io::Failed(e) if e.kind() == reset)
        );
    }
}
