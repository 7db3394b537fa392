//! Zero-copy forwarding: `splice(2)` moves a long body from one socket into a pipe and from the
//! pipe into the other socket, as HAProxy does above a size threshold. The pages the kernel
//! received are handed on by reference, so the proxy neither copies them into a buffer of its
//! own nor out of it again: for a 1 MiB body that is two copies of 1 MiB saved per response.
//!
//! A pipe is two descriptors and a kernel ring of page references. Pipes come from a small
//! per-loop pool, like the large buffers, and only an empty pipe goes back to it: one that
//! still holds bytes of a body that will never be sent is closed.

use crate::runtime::buffer::Spares;
use crate::runtime::ready::{Io, Ready};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// What one pipe holds at most: 256 KiB, the size of a large buffer, so a 1 MiB body moves in
/// four rounds (a pipe's default is 64 KiB). Best effort: `fs.pipe-max-size` may refuse it.
pub const PIPE_SIZE: usize = 256 * 1024;

/// Pipes a loop lends out at once (two descriptors each), as many as it has large buffers.
const PIPES_MAX: usize = 64;

pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes in the pipe, taken from one socket and not yet given to the other.
    pub held: usize,
    /// What the pipe can hold.
    pub size: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: F_SETPIPE_SZ takes an int and touches nothing but the pipe.
        let set = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) };
        // SAFETY: F_GETPIPE_SZ only reads the pipe's size.
        let size = if set > 0 { set } else { unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) } };
        Ok(Pipe { read, write, held: 0, size: usize::try_from(size).unwrap_or(0).max(4096) })
    }

    /// Room left in the pipe.
    pub fn room(&self) -> usize {
        self.size.saturating_sub(self.held)
    }

    /// Moves up to `len` bytes from the socket `from` into the pipe, if `ready` says the socket
    /// may have some. `WouldBlock` with the pipe empty means the socket is drained; with bytes
    /// in the pipe it may mean the pipe is out of slots, so readiness is kept and the caller
    /// tries again once the pipe has been emptied.
    pub fn fill(&mut self, from: &impl AsRawFd, ready: &mut Ready, len: usize) -> Io {
        if !ready.read || len == 0 {
            return Io::Blocked;
        }
        match splice(from.as_raw_fd(), self.write.as_raw_fd(), len, false) {
            Ok(0) => {
                ready.read = false;
                Io::Eof
            }
            Ok(n) => {
                self.held += n;
                Io::Bytes(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if self.held == 0 {
                    ready.read = false;
                }
                Io::Blocked
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Io::Retry,
            Err(e) => Io::Failed(e),
        }
    }

    /// Moves what the pipe holds into the socket `to`, if `ready` says it may take bytes; `more`
    /// says more of the body will follow (the kernel may wait to fill a segment).
    pub fn drain(&mut self, to: &impl AsRawFd, ready: &mut Ready, more: bool) -> Io {
        if !ready.write || self.held == 0 {
            return Io::Blocked;
        }
        match splice(self.read.as_raw_fd(), to.as_raw_fd(), self.held, more) {
            Ok(0) => {
                ready.write = false;
                Io::Blocked
            }
            Ok(n) => {
                if n < self.held {
                    ready.write = false;
                }
                self.held -= n;
                Io::Bytes(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready.write = false;
                Io::Blocked
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Io::Retry,
            Err(e) => Io::Failed(e),
        }
    }
}

fn splice(from: RawFd, to: RawFd, len: usize, more: bool) -> io::Result<usize> {
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK | if more { libc::SPLICE_F_MORE } else { 0 };
    // SAFETY: null offsets mean "the descriptors' own positions"; the kernel checks the fds.
    let n = unsafe { libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, flags) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// The loop's pipes: a free list that keeps what the last period's busiest moment needed.
#[derive(Default)]
pub struct PipePool {
    spares: Spares<Pipe>,
    /// Set once creating a pipe failed (out of descriptors, or no splice here): the buffered
    /// path serves until the next trim tries again.
    failing: bool,
}

impl PipePool {
    /// An empty pipe, from the pool or new; `None` when `PIPES_MAX` are out or none can be
    /// had, and the body then goes through buffers.
    pub fn take(&mut self) -> Option<Pipe> {
        if self.spares.out() >= PIPES_MAX || (self.failing && self.spares.waiting() == 0) {
            return None;
        }
        if let Some(pipe) = self.spares.take() {
            return Some(pipe);
        }
        match Pipe::new() {
            Ok(pipe) => Some(pipe),
            Err(e) => {
                self.spares.lost();
                log::warn!("cannot create a pipe for splice ({e}); long bodies go through buffers for now");
                self.failing = true;
                None
            }
        }
    }

    /// Takes back a pipe: kept if it is empty, closed if it still holds bytes nobody will send.
    pub fn give(&mut self, pipe: Pipe) {
        if pipe.held == 0 {
            self.spares.give(pipe);
        } else {
            self.spares.lost();
        }
    }

    /// Closes the idle pipes the last period did not need, and lets a failed creation be tried
    /// again. Returns how many closed.
    pub fn trim(&mut self) -> usize {
        self.failing = false;
        self.spares.trim()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_body_moves_socket_to_socket_through_a_pipe_and_the_pipe_goes_back_empty() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut source = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (from, _) = listener.accept().expect("accept");
        let to = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut sink, _) = listener.accept().expect("accept");
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            sink.read_to_end(&mut got).map(|_| got)
        });
        from.set_nonblocking(true).expect("nonblocking");
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let writer = std::thread::spawn(move || source.write_all(&body).map(|_| body));
        let mut pool = PipePool::default();
        let mut pipe = pool.take().expect("a pipe");
        let (mut up, mut down) = (Ready { read: true, ..Ready::default() }, Ready { write: true, ..Ready::default() });
        let mut moved = 0;
        while moved < 200_000 {
            up.read = true;
            match pipe.fill(&from, &mut up, (200_000 - moved).min(pipe.room())) {
                Io::Bytes(n) => moved += n,
                Io::Blocked | Io::Retry => std::thread::yield_now(),
                other => panic!("fill: {other:?}"),
            }
            down.write = true;
            while pipe.held > 0 {
                assert!(matches!(pipe.drain(&to, &mut down, moved < 200_000), Io::Bytes(_)), "drain");
            }
        }
        drop(to);
        let got = reader.join().expect("reader").expect("read");
        let body = writer.join().expect("writer").expect("write");
        assert_eq!(got, body, "the same bytes, in order");
        pool.give(pipe);
        assert_eq!(pool.trim(), 0, "the period needed the pipe: it stays");
        assert_eq!(pool.trim(), 1, "a quiet period: it goes");
    }
}
