//! Upstream connections and the keep-alive pool.
//!
//! Each upstream socket owns a slot whose key is its token, for its whole life, so moving a
//! connection between a session and the idle pool costs no `epoll_ctl`. The slot says who the
//! socket belongs to right now: a session (events go to it) or the pool (any event means the
//! target closed or misbehaved, so the connection is closed at once).

use crate::ready::Ready;
use crate::token::{token, Kind};
use mio::net::TcpStream;
use mio::{Interest, Registry};
use slab::Slab;
use std::io;
use std::net::SocketAddr;

pub struct UpstreamConn {
    pub stream: TcpStream,
    pub slot: usize,
    pub target: usize,
    pub ready: Ready,
    pub connected: bool,
    /// Taken from the pool: it may have been closed by the target while idle.
    pub reused: bool,
}

enum Slot {
    Active { session: usize },
    Idle { target: usize },
}

pub struct Upstreams {
    slots: Slab<Slot>,
    idle: Vec<Vec<UpstreamConn>>,
    max_idle: usize,
}

impl Upstreams {
    pub fn new(targets: usize, max_idle: usize) -> Upstreams {
        Upstreams { slots: Slab::new(), idle: (0..targets).map(|_| Vec::new()).collect(), max_idle }
    }

    /// Starts a non-blocking connect to `addr` on behalf of `session`.
    pub fn connect(
        &mut self,
        registry: &Registry,
        target: usize,
        addr: SocketAddr,
        session: usize,
    ) -> io::Result<UpstreamConn> {
        let mut stream = TcpStream::connect(addr)?;
        let entry = self.slots.vacant_entry();
        let slot = entry.key();
        registry.register(&mut stream, token(Kind::Upstream(slot)), Interest::READABLE | Interest::WRITABLE)?;
        entry.insert(Slot::Active { session });
        Ok(UpstreamConn { stream, slot, target, ready: Ready::default(), connected: false, reused: false })
    }

    /// The most recently parked connection to `target`, now owned by `session`.
    pub fn checkout(&mut self, target: usize, session: usize) -> Option<UpstreamConn> {
        let mut conn = self.idle[target].pop()?;
        self.slots[conn.slot] = Slot::Active { session };
        conn.reused = true;
        conn.ready = Ready { read: false, write: true, hup: false };
        Some(conn)
    }

    /// Parks a connection whose last response was completely framed, or closes it when the
    /// pool for its target is full.
    pub fn checkin(&mut self, conn: UpstreamConn) {
        if self.idle[conn.target].len() >= self.max_idle {
            return self.close(conn);
        }
        self.slots[conn.slot] = Slot::Idle { target: conn.target };
        self.idle[conn.target].push(conn);
    }

    /// Closing the socket removes it from epoll; only the slot needs freeing.
    pub fn close(&mut self, conn: UpstreamConn) {
        self.slots.try_remove(conn.slot);
    }

    /// Drops every idle connection to `target` (it was found dead).
    pub fn drop_idle(&mut self, target: usize) {
        for conn in std::mem::take(&mut self.idle[target]) {
            self.slots.try_remove(conn.slot);
        }
    }

    /// The session an event on `slot` is for. An idle connection has nothing to say, so an
    /// event on it (data, FIN, reset) closes it and gives `None`.
    pub fn owner(&mut self, slot: usize) -> Option<usize> {
        match *self.slots.get(slot)? {
            Slot::Active { session } => Some(session),
            Slot::Idle { target } => {
                if let Some(at) = self.idle[target].iter().position(|c| c.slot == slot) {
                    let conn = self.idle[target].swap_remove(at);
                    self.close(conn);
                }
                None
            }
        }
    }

    pub fn idle_count(&self) -> usize {
        self.idle.iter().map(Vec::len).sum()
    }
}
