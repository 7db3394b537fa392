//! The admin listener: `/metrics`, `/status` and `/status.json`, `/livez`, `/readyz`. It runs in
//! the same loop as the proxy, on its own port, with its own small connection limit, and never
//! forwards anything. Its answers are rendered from the loop's counters when asked for, so the
//! proxy's hot path pays nothing for them. `/metrics` and `/status.json` are rendered afresh
//! while renderings take less than 5 % of the loop's time; beyond that, the last rendering is
//! sent again, shared rather than copied (`status.rs`): under a flood of scrapes, what they
//! say can be up to a second old.
//!
//! An admin connection reads one request head at a time (8 KiB at most), answers it whole, and
//! keeps the connection for the next one if the client wants that (the status page polls every
//! second). Each request must come within 10 s of the connection's start or the last answer,
//! however slowly its bytes trickle in. One turn of a connection answers at most `TURN`
//! requests, then it waits for the loop's next pass, as a proxy session does: a client
//! pipelining requests cannot hold the loop. Long answers (`/metrics`, `/status.json`,
//! `/status`) share a send budget of `SEND_PER_MS` bytes per millisecond, all connections
//! together: those it stops wait for the next millisecond in a line of their own, so clients
//! pulling them without pause cannot take the loop's time, nor each other's turn; short answers
//! (`/livez`, `/readyz`) never wait for it. A connection that must close after its answer shuts
//! its side and reads what the client still sends for a moment, so the answer is not destroyed
//! by a reset.
//!
//! A healthcheck always gets in, whatever floods the port. When `admin_max_connections` is
//! reached, a new connection takes the place of another by `Standing`: lingering ones go first,
//! then those answered at least once, then those still waiting for their first answer, the
//! oldest accepted first within each; nothing a client sends moves its place, so clients that
//! keep asking cannot push out one that has not been answered yet. A new connection gets its
//! first turn in the pass that accepted it, and one pass accepts at most an eighth of the limit
//! (the rest wait in the kernel's queue for the next pass), so a connection whose request is on
//! its way is read before even a flood of connections that never send can push it out.

mod status;

use crate::http::LocalHead;
use crate::observe::oplog::Noisy;
use crate::proxy::{Env, Proxy};
use crate::runtime::ready::{Io, Ready};
use crate::runtime::timer::Timer;
use crate::runtime::token::{token, Kind};
use crate::runtime::wheel::TimerId;
use crate::warn_noisy;
use log::{debug, warn};
use mio::net::{TcpListener, TcpStream};
use mio::Interest;
use slab::Slab;
use status::Copies;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::ops::Deref;
use std::sync::Arc;

/// The admin listener's number in its token.
pub const ADMIN_LISTENER: usize = 1;

/// Longest admin request head.
const MAX_HEAD: usize = 8 * 1024;

/// How long a request may take to arrive, from the connection's start or the last answer.
const IDLE_MS: u64 = 10_000;

/// How long a closing connection reads what its client still sends.
const LINGER_MS: u64 = 2_000;

/// Requests answered in one turn of one connection.
const TURN: usize = 8;

/// Bytes the admin port sends in one millisecond of the loop, all connections together: 64 MB/s,
/// some 80 answers a second of `/metrics` for 256 targets, and a few percent of the loop's time
/// however many clients pipeline them. Without it, three clients pipelining `/metrics` pulled
/// 2.3 GB/s from one shared copy and took both cores of a small machine.
const SEND_PER_MS: usize = 64 * 1024;

/// Answers this long or shorter (`/livez`, `/readyz`, errors) never wait for the send budget.
const SHORT_ANSWER: usize = 4 * 1024;

/// New connections one pass of the loop accepts at most, for a limit of `max` connections: a
/// connection accepted in a pass is pushed out by new ones no sooner than eight passes later.
fn accepts_per_pass(max: usize) -> usize {
    (max / 8).max(1)
}

/// The status page, served from the binary: no external assets.
const STATUS_PAGE: &str = include_str!("status.html");

/// What the admin answers are made from, borrowed for one request.
pub struct View<'a> {
    pub env: &'a Env,
    pub proxy: &'a Proxy,
}

struct Conn {
    stream: TcpStream,
    ready: Ready,
    input: Vec<u8>,
    output: Output,
    /// Close once `output` is sent.
    close_after: bool,
    /// Our side is shut: what the client sends is dropped until it closes.
    lingering: bool,
    /// A request of it was answered.
    answered: bool,
    /// The send budget stopped it: it moves again when the budget is back, not on an event.
    waiting: bool,
    /// Its place in accept order.
    seq: u64,
    timer: TimerId,
}

/// Which connections make room first when `admin_max_connections` is reached (lowest first):
/// a lingering one has had its answer, an answered one has had its turn, a new one is still
/// waiting for its first answer, and one sending a long answer (a scrape of `/metrics`, held
/// back by the send budget) would lose what it has had of it. A client cannot move itself up by
/// asking more: short answers (`/livez`) never make a connection `Sending`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Standing {
    Lingering,
    Answered,
    New,
    Sending,
}

impl Conn {
    /// Its place in the line to be closed when room is needed: by standing, then oldest first.
    fn rank(&self) -> (Standing, u64) {
        let sending = self.output.pending() && !self.output.short();
        let standing = match (self.lingering, sending, self.answered) {
            (true, _, _) => Standing::Lingering,
            (false, true, _) => Standing::Sending,
            (false, false, true) => Standing::Answered,
            (false, false, false) => Standing::New,
        };
        (standing, self.seq)
    }
}

/// An answer on its way out: its head (with a short body) in `head`, then `body`.
#[derive(Default)]
struct Output {
    head: Vec<u8>,
    body: Body,
    sent: usize,
}

impl Output {
    fn pending(&self) -> bool {
        self.sent < self.head.len() + self.body.len()
    }

    fn short(&self) -> bool {
        self.head.len() + self.body.len() <= SHORT_ANSWER
    }

    /// What is left to send, `limit` bytes at most, as two slices for one vectored write.
    fn rest(&self, limit: usize) -> (&[u8], &[u8]) {
        let head = &self.head[self.head.len().min(self.sent)..];
        let body = &self.body[self.sent.saturating_sub(self.head.len()).min(self.body.len())..];
        let head = &head[..head.len().min(limit)];
        let body = &body[..body.len().min(limit - head.len())];
        (head, body)
    }

    fn clear(&mut self) {
        self.head.clear();
        self.body = Body::default();
        self.sent = 0;
    }
}

/// An answer's body: text built into the binary, or a rendering shared by every answer that
/// sends it, so a pipelined `/metrics` is not copied per request.
#[derive(Clone)]
enum Body {
    Static(&'static [u8]),
    Shared(Arc<[u8]>),
}

impl Default for Body {
    fn default() -> Body {
        Body::Static(b"")
    }
}

impl Deref for Body {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Body::Static(bytes) => bytes,
            Body::Shared(bytes) => bytes,
        }
    }
}

pub struct Admin {
    listener: TcpListener,
    addr: SocketAddr,
    conns: Slab<Conn>,
    /// Connections owed a turn without an event: new ones, and those that used up their turn
    /// with work left.
    requeued: Vec<usize>,
    /// Spare lists for `pump`, reused between passes.
    spare_keys: Vec<usize>,
    touched: Vec<Touched>,
    /// Connections may be waiting in the listener's queue: the edge-triggered listener will
    /// not say so again.
    backlog: bool,
    /// How many more this pass may accept.
    accepts_left: usize,
    /// Connections accepted so far: the next one's `seq`.
    accepted: u64,
    /// An accept failed (out of descriptors, most likely): the listener waits for
    /// `Timer::AdminAcceptRetry` instead of failing again on every pass.
    accept_paused: bool,
    copies: Copies,
    budget: Budget,
    /// Connections the budget stopped, in the order they go when it is back: those it stopped
    /// before they sent anything, then those that sent some (so each gets its share in turn).
    starved: Vec<usize>,
    parked: Vec<usize>,
    /// The timer that brings the budget back (`Timer::AdminBudget`), while one is set.
    wake: Option<TimerId>,
}

/// What the admin port may still send in the current millisecond of the loop.
struct Budget {
    left: usize,
    ms: u64,
}

impl Budget {
    /// A new millisecond brings the whole budget back.
    fn refill(&mut self, now: u64) {
        if now != self.ms {
            self.ms = now;
            self.left = SEND_PER_MS;
        }
    }
}

/// What became of an admin connection after a turn.
pub enum Touched {
    /// Still open; `answered`: it answered a request, so the next one gets a fresh deadline.
    Open {
        key: usize,
        answered: bool,
    },
    /// Its answer is out and it lingers.
    Lingering(usize),
    /// Closed: its timer is to be cancelled.
    Closed(TimerId),
    Gone,
}

impl Admin {
    pub fn bind(addr: SocketAddr, env: &Env) -> io::Result<Admin> {
        let mut listener = crate::runtime::listen::bind(addr, 1)?.pop().ok_or(io::ErrorKind::AddrNotAvailable)?;
        let addr = listener.local_addr()?;
        env.registry.register(&mut listener, token(Kind::Listener(ADMIN_LISTENER)), Interest::READABLE)?;
        Ok(Admin {
            listener,
            addr,
            conns: Slab::new(),
            requeued: Vec::new(),
            spare_keys: Vec::new(),
            touched: Vec::new(),
            backlog: false,
            accepts_left: accepts_per_pass(env.config.admin.max_connections),
            accepted: 0,
            accept_paused: false,
            copies: Copies::default(),
            budget: Budget { left: SEND_PER_MS, ms: env.now },
            starved: Vec::new(),
            parked: Vec::new(),
            wake: None,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening and closes every admin connection (a reload moved the listener).
    pub fn close(mut self, env: &mut Env) {
        let _ = env.registry.deregister(&mut self.listener);
        for conn in self.conns.drain() {
            env.wheel.cancel(conn.timer);
        }
        if let Some(wake) = self.wake.take() {
            env.wheel.cancel(wake);
        }
    }

    /// Accepts what this pass may (`accepts_per_pass`); the rest stay in the kernel's queue
    /// for the next pass (`pump`). Each new connection is owed a turn this pass.
    pub fn accept(&mut self, env: &mut Env) {
        self.backlog = false;
        while self.accepts_left > 0 && !self.accept_paused {
            let (stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors or memory, most likely: the queue waits for the
                    // loop's accept retry rather than spinning here.
                    crate::proxy::local_failure(env, &e);
                    warn_noisy!(Noisy::LocalError, "admin accept failed: {e}; trying again in 100 ms");
                    self.accept_paused = true;
                    env.wheel.insert(env.now + 100, Timer::AdminAcceptRetry);
                    return;
                }
            };
            self.accepts_left -= 1;
            if self.conns.len() >= env.config.admin.max_connections {
                self.make_room(env);
            }
            self.admit(stream, peer, env);
        }
        self.backlog = true;
    }

    /// Closes the connection first in line (`Conn::rank`) to make room for a new one.
    fn make_room(&mut self, env: &mut Env) {
        let first = self.conns.iter().min_by_key(|(_, c)| c.rank()).map(|(key, c)| (key, c.rank().0));
        let Some((key, standing)) = first else {
            return;
        };
        if let Some(conn) = self.conns.try_remove(key) {
            debug!("admin: admin_max_connections reached; closed the oldest {standing:?} connection");
            env.wheel.cancel(conn.timer);
        }
    }

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr, env: &mut Env) {
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = env.registry.register(&mut stream, token(Kind::Admin(key)), Interest::READABLE) {
            warn!("admin: cannot register {peer}: {e}");
            return;
        }
        let timer = env.wheel.insert(env.now + IDLE_MS, Timer::Admin(key));
        entry.insert(Conn {
            stream,
            // Not known yet: its first turn tries, and the request is often there already.
            ready: Ready { read: true, write: true, hup: false },
            input: Vec::new(),
            output: Output::default(),
            close_after: false,
            lingering: false,
            answered: false,
            waiting: false,
            seq: self.accepted,
            timer,
        });
        self.accepted += 1;
        self.requeued.push(key);
    }

    /// Serves what an event allows. The view borrows the loop's state, so the connection's
    /// timer is dealt with after, by `rearm` with the returned `Touched`.
    pub fn on_event(&mut self, key: usize, event: &mio::event::Event, view: &View<'_>) -> Touched {
        match self.conns.get_mut(key) {
            Some(conn) => conn.ready.update(event),
            None => return Touched::Gone,
        }
        self.turn(key, view)
    }

    /// Whether the loop owes the admin a pass without waiting for an event: a connection is
    /// owed a turn, or the listener's queue may hold connections.
    pub fn has_requeued(&self) -> bool {
        !self.requeued.is_empty() || self.backlog
    }

    /// The admin's share of a pass of the loop, once its events are handled: accepts what the
    /// pass may still take from the listener's queue, gives every connection owed a turn one,
    /// and sets how many the next pass may accept.
    pub fn pump(&mut self, env: &mut Env, proxy: &Proxy) {
        if self.backlog {
            self.accept(env);
        }
        // Turns first (they read the loop's state), timers after (they change it); the two
        // lists are kept between passes, so a busy admin port allocates nothing per pass.
        let mut keys = std::mem::replace(&mut self.requeued, std::mem::take(&mut self.spare_keys));
        let mut touched = std::mem::take(&mut self.touched);
        let view = View { env, proxy };
        touched.extend(keys.drain(..).map(|key| self.turn(key, &view)));
        for t in touched.drain(..) {
            self.rearm(t, env);
        }
        (self.spare_keys, self.touched) = (keys, touched);
        self.accepts_left = accepts_per_pass(env.config.admin.max_connections);
    }

    /// One turn of one connection.
    fn turn(&mut self, key: usize, view: &View<'_>) -> Touched {
        let Some(conn) = self.conns.get_mut(key) else {
            return Touched::Gone;
        };
        if conn.waiting {
            // Its place is kept in the budget's line; an event must not let it jump the line.
            return Touched::Open { key, answered: false };
        }
        self.budget.refill(view.env.now);
        let was_lingering = conn.lingering;
        let outcome = match conn.lingering {
            true => linger(conn),
            false => serve(conn, view, &mut self.copies, &mut self.budget.left),
        };
        let mut open = outcome.is_ok();
        if open {
            let interest =
                if conn.output.pending() { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            open = view.env.registry.reregister(&mut conn.stream, token(Kind::Admin(key)), interest).is_ok();
        }
        let Turn { answered, next } = match outcome {
            Ok(turn) if open => turn,
            _ => return self.conns.try_remove(key).map_or(Touched::Gone, |conn| Touched::Closed(conn.timer)),
        };
        match next {
            Next::Event => {}
            Next::Pass => self.requeued.push(key),
            Next::Budget { sent } => {
                conn.waiting = true;
                match sent {
                    false => self.starved.push(key),
                    true => self.parked.push(key),
                }
            }
        }
        conn.answered |= answered;
        if conn.lingering && !was_lingering {
            return Touched::Lingering(key);
        }
        Touched::Open { key, answered }
    }

    /// Gives a connection that answered a fresh deadline for its next request, a lingering one
    /// its short one, or cancels the timer of one that closed.
    pub fn rearm(&mut self, touched: Touched, env: &mut Env) {
        if self.wake.is_none() && !(self.starved.is_empty() && self.parked.is_empty()) {
            self.wake = Some(env.wheel.insert(self.budget.ms + 1, Timer::AdminBudget));
        }
        let (key, delay) = match touched {
            Touched::Open { key, answered: true } => (key, IDLE_MS),
            Touched::Lingering(key) => (key, LINGER_MS),
            Touched::Closed(timer) => return env.wheel.cancel(timer),
            Touched::Open { answered: false, .. } | Touched::Gone => return,
        };
        if let Some(conn) = self.conns.get_mut(key) {
            env.wheel.cancel(conn.timer);
            conn.timer = env.wheel.insert(env.now + delay, Timer::Admin(key));
        }
    }

    /// The pause after a failed accept is over: the listener's queue is tried again.
    pub fn accept_retry(&mut self, env: &mut Env) {
        self.accept_paused = false;
        self.accept(env);
    }

    /// The send budget is back: the connections it stopped get their turns on the next pass,
    /// in their order.
    pub fn budget_back(&mut self) {
        self.wake = None;
        for key in self.starved.drain(..).chain(self.parked.drain(..)) {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.waiting = false;
            }
            self.requeued.push(key);
        }
    }

    /// A connection's deadline passed.
    pub fn on_timer(&mut self, key: usize) {
        if self.conns.try_remove(key).is_some() {
            debug!("admin: connection closed at its deadline");
        }
    }
}

/// Why a connection must close now.
struct Done;

/// What one turn did.
struct Turn {
    answered: bool,
    next: Next,
}

/// What a connection waits for after its turn.
enum Next {
    /// An event: it is blocked, or has nothing to do.
    Event,
    /// The loop's next pass: its turn ended with work left.
    Pass,
    /// The send budget (`SEND_PER_MS`); `sent`: it sent some of its answers this turn.
    Budget { sent: bool },
}

/// Writes what is pending, reads, and answers the whole requests that came, up to `TURN`
/// answers and what is `left` of the send budget.
fn serve(conn: &mut Conn, view: &View<'_>, copies: &mut Copies, left: &mut usize) -> Result<Turn, Done> {
    let mut answered = 0;
    let mut sent = false;
    loop {
        while conn.output.pending() {
            let limit = if conn.output.short() { SHORT_ANSWER } else { *left };
            if limit == 0 {
                return Ok(Turn { answered: answered > 0, next: Next::Budget { sent } });
            }
            let (head, body) = conn.output.rest(limit);
            match conn.ready.write(&mut conn.stream, head, body) {
                Io::Bytes(n) => {
                    conn.output.sent += n;
                    *left = left.saturating_sub(n);
                    sent = true;
                }
                Io::Retry => {}
                Io::Blocked | Io::Eof => return Ok(Turn { answered: answered > 0, next: Next::Event }),
                Io::Failed(_) => return Err(Done),
            }
        }
        if conn.close_after {
            // Our FIN goes first; what the client still sends is read and dropped.
            if conn.stream.shutdown(Shutdown::Write).is_err() {
                return Err(Done);
            }
            conn.lingering = true;
            conn.input = Vec::new();
            return linger(conn).map(|turn| Turn { answered: true, ..turn });
        }
        conn.output.clear();
        if answered == TURN {
            return Ok(Turn { answered: true, next: Next::Pass });
        }
        if answer_one(conn, view, copies) {
            answered += 1;
            continue;
        }
        let mut chunk = [0u8; 2048];
        match conn.ready.read(&mut conn.stream, &mut chunk) {
            Io::Bytes(n) => conn.input.extend_from_slice(&chunk[..n]),
            Io::Retry => {}
            Io::Blocked => return Ok(Turn { answered: answered > 0, next: Next::Event }),
            Io::Eof | Io::Failed(_) => return Err(Done),
        }
    }
}

/// Reads and drops what a closing connection's client still sends; its close ends it.
fn linger(conn: &mut Conn) -> Result<Turn, Done> {
    let mut sink = [0u8; 2048];
    for _ in 0..TURN {
        match conn.ready.read(&mut conn.stream, &mut sink) {
            Io::Bytes(_) | Io::Retry => {}
            Io::Blocked => return Ok(Turn { answered: false, next: Next::Event }),
            Io::Eof | Io::Failed(_) => return Err(Done),
        }
    }
    Ok(Turn { answered: false, next: Next::Pass })
}

/// Answers the first request in `conn.input` if a whole head is there; whether it did.
fn answer_one(conn: &mut Conn, view: &View<'_>, copies: &mut Copies) -> bool {
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut fields);
    let parsed = request.parse(&conn.input);
    let (status, len) = match parsed {
        Ok(httparse::Status::Complete(len)) => (None, len),
        Ok(httparse::Status::Partial) if conn.input.len() <= MAX_HEAD => return false,
        Ok(httparse::Status::Partial) => (Some(431), conn.input.len()),
        Err(_) => (Some(400), conn.input.len()),
    };
    let method = request.method.unwrap_or("");
    // A request with a body is answered and the connection closed: the body is never read as
    // the next request.
    let close =
        status.is_some() || request.version == Some(0) || wants_close(request.headers) || has_body(request.headers);
    let path = request.path.unwrap_or("/");
    let answer = match status {
        Some(status) => Answer::text(status, "bad request\n"),
        None => route(method, path, view, copies),
    };
    answer.write(&mut conn.output, method == "HEAD", close);
    conn.close_after = close;
    conn.input.drain(..len);
    true
}

fn has_body(fields: &[httparse::Header<'_>]) -> bool {
    fields.iter().any(|f| {
        f.name.eq_ignore_ascii_case("transfer-encoding")
            || (f.name.eq_ignore_ascii_case("content-length") && f.value.trim_ascii() != b"0")
    })
}

fn wants_close(fields: &[httparse::Header<'_>]) -> bool {
    fields.iter().any(|f| {
        f.name.eq_ignore_ascii_case("connection")
            && f.value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

/// An admin response before it is written.
struct Answer {
    status: u16,
    content_type: &'static str,
    body: Body,
    allow: bool,
}

impl Answer {
    fn text(status: u16, body: &'static str) -> Answer {
        Answer { status, content_type: "text/plain; charset=utf-8", body: Body::Static(body.as_bytes()), allow: false }
    }

    fn write(self, out: &mut Output, head_only: bool, close: bool) {
        out.clear();
        let fields: &[&str] =
            if self.allow { &["Cache-Control: no-store", "Allow: GET, HEAD"] } else { &["Cache-Control: no-store"] };
        let head = LocalHead {
            status: self.status,
            content_type: self.content_type,
            length: self.body.len() as u64,
            fields,
            keep_alive: !close,
        };
        let mut bytes = [0u8; 256];
        // The admin's heads are short and bounded; one that would not fit is an empty answer.
        let written = head.write(&mut bytes).unwrap_or(0);
        out.head.extend_from_slice(&bytes[..written]);
        if !head_only {
            out.body = self.body;
        }
    }
}

/// The admin endpoints.
fn route(method: &str, target: &str, view: &View<'_>, copies: &mut Copies) -> Answer {
    if method != "GET" && method != "HEAD" {
        let mut answer = Answer::text(405, "only GET and HEAD\n");
        answer.allow = true;
        return answer;
    }
    let path = target.split('?').next().unwrap_or(target);
    match path {
        "/livez" => Answer::text(200, "ok\n"),
        "/readyz" => readyz(view),
        "/metrics" => Answer {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: Body::Shared(copies.metrics(view)),
            allow: false,
        },
        "/status.json" => Answer {
            status: 200,
            content_type: "application/json",
            body: Body::Shared(copies.json(view)),
            allow: false,
        },
        "/status" | "/" => Answer {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: Body::Static(STATUS_PAGE.as_bytes()),
            allow: false,
        },
        _ => Answer::text(404, "not found: try /status, /metrics, /livez or /readyz\n"),
    }
}

/// Ready when at least one target is live and the proxy is not draining.
fn readyz(view: &View<'_>) -> Answer {
    if view.env.draining {
        Answer::text(503, "draining\n")
    } else if view.env.targets.live_count() == 0 {
        Answer::text(503, "no live target\n")
    } else {
        Answer::text(200, "ready\n")
    }
}
