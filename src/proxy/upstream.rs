//! Upstream connections and the keep-alive pool.
//!
//! Each upstream socket owns a slot whose key is its token, for its whole life, so moving a
//! connection between a session and the idle pool costs no `epoll_ctl`. The slot says who the
//! socket belongs to right now: a session (events go to it) or the pool (any event means the
//! target closed or misbehaved, so the connection is closed at once).
//!
//! A target that sends bytes nobody asked for (a second response to one request) must be caught
//! while its connection idles: handed out, those bytes would answer the next request, and every
//! request after it on that connection would get the answer before its own. So the pool hands
//! out the connection that has idled longest, and the loop closes idle connections that have
//! something to say before anything else in its batch can take them (`Proxy::sweep_idle`).
//! Bytes that arrive after a connection was handed out cannot be told from its answer: under
//! load, nginx and HAProxy pass them on alike.
//!
//! Handing out the oldest means every idle connection stays in use, so a pool that grew in a
//! burst (a thousand clients at once) would keep cycling through all of them, each one cold in
//! the caches of both hosts' kernels and of the target, for as long as the traffic lasts. So,
//! as HAProxy purges its idle pools, `trim` closes every period the idle connections beyond
//! the most the target had in use at once during the last one, and beyond `max_idle`.
//!
//! Between trims a returning connection is always parked: under steady load the number in use
//! swings by dozens from one pass to the next, and closing a connection because `max_idle`
//! others happen to idle at that instant only means opening another a moment later (at c1000
//! that was 4 000 connects a second, each request behind one waiting a loop pass more for its
//! handshake). What idles is bounded by the most the target had in use at once this period or
//! the last.

use crate::ids::TargetId;
use crate::runtime::ready::Ready;
use crate::runtime::token::{token, Kind};
use mio::net::TcpStream;
use mio::{Interest, Registry};
use slab::Slab;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;

pub struct UpstreamConn {
    pub stream: TcpStream,
    pub slot: usize,
    pub target: TargetId,
    pub ready: Ready,
    pub connected: bool,
    /// Taken from the pool: it may have been closed by the target while idle.
    pub reused: bool,
    /// The loop pass that parked it in the pool.
    parked: u64,
}

/// What an idle connection has to say, by one non-blocking `MSG_PEEK`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peek {
    /// Nothing: it can carry a request.
    Quiet,
    /// Bytes nobody asked for: a second answer to the last request.
    Stray,
    /// The end of the stream, or an error: the target closed it.
    Closed,
}

impl UpstreamConn {
    /// Asked of idle connections before a request that is not idempotent or in the pass that
    /// parked them, and after a response whose last read did not show the socket drained,
    /// where no event will tell of what came behind it. Only a `Quiet` one carries a request.
    pub fn peek(&self) -> Peek {
        let mut byte = [0u8; 1];
        match self.stream.peek(&mut byte) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Peek::Quiet,
            Ok(n) if n > 0 => Peek::Stray,
            Ok(_) | Err(_) => Peek::Closed,
        }
    }
}

enum Slot {
    Active { session: usize },
    Idle { target: TargetId },
}

/// Who an upstream socket's event is for.
pub enum Owner {
    Session(usize),
    /// It idles in the pool, where an event means it is no use any more.
    Pool,
}

pub struct Upstreams {
    slots: Slab<Slot>,
    /// Idle connections by target slot, oldest first; a connection whose target is gone is
    /// dropped on sight.
    idle: Vec<VecDeque<UpstreamConn>>,
    /// Connections owned by sessions, by target slot, for the metrics; a connection to a
    /// target that has since been replaced in its slot is not counted.
    active: Vec<Option<(TargetId, usize)>>,
    /// The most connections each target slot had in use at once since the last `trim`.
    peak: Vec<usize>,
    /// Loop passes so far (`next_pass`).
    pass: u64,
}

impl Upstreams {
    pub fn new(targets: usize) -> Upstreams {
        let mut upstreams =
            Upstreams { slots: Slab::new(), idle: Vec::new(), active: Vec::new(), peak: Vec::new(), pass: 0 };
        for slot in 0..targets {
            upstreams.target_added(TargetId::first(slot));
        }
        upstreams
    }

    /// A new pass of the loop: its batch of events has been read.
    pub fn next_pass(&mut self) {
        self.pass += 1;
    }

    /// A target took `id`'s slot (at start or by a reload): its pool and count start empty.
    pub fn target_added(&mut self, id: TargetId) {
        let slot = id.slot();
        if self.idle.len() <= slot {
            self.idle.resize_with(slot + 1, VecDeque::new);
            self.active.resize(slot + 1, None);
            self.peak.resize(slot + 1, 0);
        }
        self.drop_idle_slot(slot);
        self.active[slot] = Some((id, 0));
    }

    /// `id` left the table: its idle connections close now, and those serving requests close
    /// when their requests end.
    pub fn target_removed(&mut self, id: TargetId) {
        if self.is_current(id) {
            self.drop_idle_slot(id.slot());
            self.active[id.slot()] = None;
        }
    }

    fn is_current(&self, id: TargetId) -> bool {
        self.active.get(id.slot()).is_some_and(|a| a.is_some_and(|(t, _)| t == id))
    }

    /// Connections open, in use and idle.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Connections to `id`: (owned by sessions, idle in the pool).
    pub fn counts(&self, id: TargetId) -> (usize, usize) {
        let active = self.active.get(id.slot()).copied().flatten().filter(|(t, _)| *t == id).map_or(0, |(_, n)| n);
        let idle = self.idle.get(id.slot()).map_or(0, |idle| idle.iter().filter(|c| c.target == id).count());
        (active, idle)
    }

    fn count(&mut self, id: TargetId, opened: bool) {
        if let Some((_, n)) = self.active.get_mut(id.slot()).and_then(Option::as_mut).filter(|(t, _)| *t == id) {
            *n = if opened { *n + 1 } else { n.saturating_sub(1) };
            if let Some(peak) = self.peak.get_mut(id.slot()) {
                *peak = (*peak).max(*n);
            }
        }
    }

    /// Closes, oldest first, the idle connections to each target that make its connections
    /// (in use and idle) more than the most it had in use at once since the last call, or its
    /// idle ones more than `max_idle`, and starts the next period. Returns how many closed.
    pub fn trim(&mut self, max_idle: usize) -> usize {
        let mut closed = 0;
        for slot in 0..self.idle.len() {
            let in_use = self.active[slot].map_or(0, |(_, n)| n);
            let keep = self.peak[slot].saturating_sub(in_use).min(max_idle);
            while self.idle[slot].len() > keep {
                if let Some(conn) = self.idle[slot].pop_front() {
                    self.slots.try_remove(conn.slot);
                    closed += 1;
                }
            }
            self.peak[slot] = in_use;
        }
        closed
    }

    /// Starts a non-blocking connect to `addr` on behalf of `session`. With `most` connections
    /// open already (in use and idle), an idle one closes first: the descriptors the pool holds
    /// stay within what `max_connections` was fitted to (`runtime::limits`).
    pub fn connect(
        &mut self,
        registry: &Registry,
        target: TargetId,
        addr: SocketAddr,
        session: usize,
        most: usize,
    ) -> io::Result<UpstreamConn> {
        if self.slots.len() >= most {
            self.shed_idle(most.saturating_sub(1));
        }
        let mut stream = TcpStream::connect(addr)?;
        let entry = self.slots.vacant_entry();
        let slot = entry.key();
        registry.register(&mut stream, token(Kind::Upstream(slot)), Interest::READABLE | Interest::WRITABLE)?;
        entry.insert(Slot::Active { session });
        self.count(target, true);
        // On loopback or a near host the handshake has often completed by the time connect(2)
        // returns: ready to write means `check_connect` asks at once, instead of a loop pass
        // later when the event comes.
        let ready = Ready { read: false, write: true, hup: false };
        Ok(UpstreamConn { stream, slot, target, ready, connected: false, reused: false, parked: 0 })
    }

    /// The connection to `target` that has idled longest, now owned by `session`. With
    /// `verify`, each candidate is first asked whether the target has closed it (one
    /// non-blocking `MSG_PEEK`), and a closed one is dropped: a request that is not safe to
    /// send twice must not go out on a connection already dead, where its failure could not be
    /// told from the target losing it.
    ///
    /// A connection parked in this very pass is checked whatever the request: its response
    /// has just ended, and bytes a target sent right behind it (a second answer) may have
    /// arrived since without an event yet, where the sweep would have caught them.
    pub fn checkout(&mut self, target: TargetId, session: usize, verify: bool) -> Option<UpstreamConn> {
        let pass = self.pass;
        let idle = self.idle.get_mut(target.slot())?;
        while let Some(mut conn) = idle.pop_front() {
            if conn.target != target || ((verify || conn.parked == pass) && conn.peek() != Peek::Quiet) {
                self.slots.try_remove(conn.slot);
                continue;
            }
            self.slots[conn.slot] = Slot::Active { session };
            self.count(target, true);
            conn.reused = true;
            conn.ready = Ready { read: false, write: true, hup: false };
            return Some(conn);
        }
        None
    }

    /// Closes idle connections until at most `keep` connections are open in all, or none idles:
    /// the oldest of the target with the most idle first. Returns how many closed.
    pub fn shed_idle(&mut self, keep: usize) -> usize {
        let mut closed = 0;
        while self.slots.len() > keep {
            let fullest = (0..self.idle.len()).max_by_key(|&slot| self.idle[slot].len());
            let Some(conn) = fullest.and_then(|slot| self.idle[slot].pop_front()) else {
                break;
            };
            self.slots.try_remove(conn.slot);
            closed += 1;
        }
        closed
    }

    /// Parks a connection whose last response was completely framed, or closes it when its
    /// target is no longer in the table or `max_idle` is 0 (no keep-alive to targets). `trim`
    /// decides how many stay.
    pub fn checkin(&mut self, conn: UpstreamConn, max_idle: usize) {
        let current = self.is_current(conn.target);
        let Some(idle) = self.idle.get_mut(conn.target.slot()).filter(|_| current && max_idle > 0) else {
            return self.close(conn);
        };
        let target = conn.target;
        self.slots[conn.slot] = Slot::Idle { target };
        let mut conn = conn;
        conn.parked = self.pass;
        idle.push_back(conn);
        self.count(target, false);
    }

    /// Closes a connection a session owned. Closing the socket removes it from epoll; only the
    /// slot needs freeing.
    pub fn close(&mut self, conn: UpstreamConn) {
        self.slots.try_remove(conn.slot);
        self.count(conn.target, false);
    }

    /// Drops every idle connection to `target` (it was found dead, or left the table).
    pub fn drop_idle(&mut self, target: TargetId) {
        self.drop_idle_slot(target.slot());
    }

    fn drop_idle_slot(&mut self, slot: usize) {
        if let Some(idle) = self.idle.get_mut(slot) {
            for conn in std::mem::take(idle) {
                self.slots.try_remove(conn.slot);
            }
        }
    }

    /// Who an event on `slot` is for; `None` for a slot already freed.
    pub fn owner(&self, slot: usize) -> Option<Owner> {
        match *self.slots.get(slot)? {
            Slot::Active { session } => Some(Owner::Session(session)),
            Slot::Idle { .. } => Some(Owner::Pool),
        }
    }

    /// Closes the idle connection in `slot`: the target closed it or sent what nobody asked for.
    /// Returns the target when it sent bytes nobody asked for, rather than just closing.
    pub fn close_idle(&mut self, slot: usize) -> Option<TargetId> {
        let Some(&Slot::Idle { target }) = self.slots.get(slot) else {
            return None;
        };
        let idle = self.idle.get_mut(target.slot())?;
        let conn = idle.iter().position(|c| c.slot == slot).and_then(|at| idle.remove(at))?;
        // The peek tells a target's close (EOF, a reset) from stray bytes; idle events are rare.
        let stray = conn.peek() == Peek::Stray;
        self.slots.try_remove(conn.slot);
        stray.then_some(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::{Duration, Instant};

    /// A pool of one target holding one idle connection, and the target's end of it (the poll
    /// the connection is registered with lives as long as the test).
    fn one_idle_connection() -> (Upstreams, TargetId, std::net::TcpStream, mio::Poll) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let poll = mio::Poll::new().expect("poll");
        let mut pool = Upstreams::new(1);
        let target = TargetId::first(0);
        let addr = listener.local_addr().expect("addr");
        let conn = pool.connect(poll.registry(), target, addr, 0, usize::MAX).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        pool.checkin(conn, 2);
        (pool, target, server, poll)
    }

    #[test]
    fn a_checkout_that_verifies_skips_a_connection_the_target_has_closed() {
        let (mut pool, target, server, _poll) = one_idle_connection();
        let open = pool.checkout(target, 0, true).expect("an open connection passes the check");
        pool.checkin(open, 2);
        drop(server);
        // Until the target's FIN has arrived (loopback: at once), without the check.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // A later pass than the one that parked it: only `verify` checks it.
            pool.next_pass();
            let conn = pool.checkout(target, 0, false).expect("kept without the check");
            let closed = conn.peek() != Peek::Quiet;
            pool.checkin(conn, 2);
            if closed {
                break;
            }
            assert!(Instant::now() < deadline, "the FIN never arrived");
            std::thread::yield_now();
        }
        pool.next_pass();
        assert!(pool.checkout(target, 0, true).is_none(), "a closed connection is not handed out");
        assert_eq!(pool.counts(target), (0, 0), "and it left the pool");
    }

    #[test]
    fn a_connection_parked_in_this_pass_is_checked_for_any_request() {
        let (mut pool, target, mut server, _poll) = one_idle_connection();
        // A second answer right behind the first, before any event could report it.
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").expect("stray bytes");
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.idle[0].front().is_some_and(|c| c.peek() == Peek::Quiet) {
            assert!(Instant::now() < deadline, "the bytes never arrived");
            std::thread::yield_now();
        }
        assert!(pool.checkout(target, 0, false).is_none(), "parked this pass: checked, and dropped");
    }

    #[test]
    fn returning_connections_stay_until_a_trim_keeps_what_the_period_needed_up_to_max_idle() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let poll = mio::Poll::new().expect("poll");
        let mut pool = Upstreams::new(1);
        let target = TargetId::first(0);
        let conns: Vec<_> =
            (0..5).map(|_| pool.connect(poll.registry(), target, addr, 0, usize::MAX).expect("connect")).collect();
        let _servers: Vec<_> = (0..5).map(|_| listener.accept().expect("accept")).collect();
        for conn in conns {
            pool.checkin(conn, 2);
        }
        assert_eq!(pool.counts(target), (0, 5), "all five go back to the pool, beyond max_idle");
        assert_eq!(pool.trim(2), 3, "five were needed at once, but only max_idle stay idle");
        assert_eq!(pool.counts(target), (0, 2));
        let taken = pool.checkout(target, 0, false).expect("one idle");
        assert_eq!(pool.trim(2), 1, "the period needed one at once, in use now: the idle one goes");
        pool.checkin(taken, 2);
        assert_eq!(pool.trim(2), 0, "the period needed the one in use at its start: it stays");
        assert_eq!(pool.trim(2), 1, "a quiet period: none stay");
        assert_eq!(pool.counts(target), (0, 0));
        let conn = pool.connect(poll.registry(), target, addr, 0, usize::MAX).expect("connect");
        pool.checkin(conn, 0);
        assert_eq!(pool.counts(target), (0, 0), "max_idle 0: no keep-alive to the target");
    }
}
