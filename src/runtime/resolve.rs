//! Host name lookups off the loop thread. `getaddrinfo` blocks (inside compose a stopped
//! target's name stops resolving, and the lookup may take seconds), so lookups run on a helper
//! thread and each answer comes back through a channel and a `mio::Waker`.

use log::error;
use mio::Waker;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread;

/// An answer, every address the name has, with the tag its question was asked under.
type Answer<T> = (T, io::Result<Vec<SocketAddr>>);

pub struct Resolver<T> {
    requests: Sender<(T, String, u16)>,
    answers: Receiver<Answer<T>>,
}

impl<T: Send + 'static> Resolver<T> {
    /// Starts the lookup thread; it wakes the loop through `waker` after each answer.
    pub fn start(waker: Arc<Waker>) -> io::Result<Resolver<T>> {
        let (requests, inbox) = channel::<(T, String, u16)>();
        let (outbox, answers) = channel();
        thread::Builder::new().name("resolver".into()).spawn(move || {
            for (id, host, port) in inbox {
                if outbox.send((id, lookup_all(&host, port))).is_err() {
                    return;
                }
                if let Err(e) = waker.wake() {
                    error!("resolver cannot wake the reactor: {e}");
                }
            }
        })?;
        Ok(Resolver { requests, answers })
    }

    /// Queues a lookup of a bare host name (no IPv6 brackets); its answer arrives through
    /// `answer` after the waker fires.
    pub fn lookup(&self, id: T, host: &str, port: u16) {
        if self.requests.send((id, host.to_owned(), port)).is_err() {
            error!("resolver thread is gone; {host} cannot be looked up");
        }
    }

    pub fn answer(&self) -> Option<Answer<T>> {
        self.answers.try_recv().ok()
    }
}

/// Every address a bare `host` resolves to, sorted and without repeats; an error when there is
/// none. Blocks: call it off the loop, or before the loop starts.
pub fn lookup_all(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let mut addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    addrs.sort_unstable();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address")));
    }
    Ok(addrs)
}

/// The address `http://name/` usually means: the first IPv4 one, else the first.
pub fn preferred(addrs: &[SocketAddr]) -> Option<SocketAddr> {
    addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).copied()
}
