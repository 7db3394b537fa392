//! A client connection and, while a request is in flight, the upstream connection serving it.
//!
//! `pump` makes every move the sockets' readiness allows: read the client, parse a head, pick a
//! target, connect, send the head and body, read the response, send it back. It returns a
//! `Verdict` for the reactor. Bytes flow through four pooled buffers, held only while a request
//! is in flight:
//!
//! - `cin`: raw bytes from the client; the current request's body sits at its front (`body_ready`
//!   bytes, of which `body_sent` were written upstream and are still held for a retry), then any
//!   pipelined requests.
//! - `uout`: the rewritten request head, kept whole until the response starts so a failed
//!   attempt can be replayed on another target.
//! - `uin`: raw bytes from the upstream; the response body's classified bytes at its front.
//! - `cout`: the rewritten response head, or a response the proxy made itself.
//!
//! `docs/ARCHITECTURE.md` walks a request through these steps.

use crate::accesslog::{Entry, Outcome, Trace};
use crate::buffer::{self, Buffer};
use crate::config::AllDown;
use crate::health::{self, Failure};
use crate::http::{self, BodyFramer, BodyKind, Forwarding, HttpError, RequestHead, ResponseContext};
use crate::reactor::{Shared, Timeouts, Timer};
use crate::ready::{Io, Ready};
use crate::ring::TargetSet;
use crate::upstream::UpstreamConn;
use crate::wheel::TimerId;
use log::{debug, warn};
use mio::net::TcpStream;
use std::io;
use std::net::SocketAddr;

/// What the reactor should do with a session after pumping it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Open,
    Close,
    /// Still has work but gave up its turn so others get theirs: pump again soon.
    Requeue,
}

/// The session must be closed now (the reason was logged where it was found).
struct Closed;

type Step = Result<bool, Closed>;

/// Steps in one `pump` before the session yields to others.
const TURN: usize = 32;

/// Most bytes of an unfinished request body read and dropped after its exchange ended (the
/// target answered early), so that the connection can carry the next request. A longer rest
/// closes the connection instead.
pub const DISCARD_LIMIT: u64 = 16 << 20;

/// How long a closing connection keeps reading what its client still sends, so that our close
/// does not become a reset that destroys a response the client has not read yet.
const LINGER_MS: u64 = 5_000;

/// Which timeout applies in the current phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Between requests on a kept-alive connection.
    Idle,
    /// Waiting for a request head, on a new connection or part-way through one.
    Header,
    Connect,
    /// Waiting for more of the request body from the client.
    Body,
    Response,
    Stream,
    /// Reading and dropping the rest of a request body whose exchange has ended.
    Discard,
    /// Our side is shut; reading what the client still sends until it closes.
    Linger,
}

enum Resp {
    /// No final response head yet (1xx heads may have passed).
    Head,
    Body(BodyFramer),
}

fn timeout_for(phase: Phase, t: &Timeouts) -> u64 {
    match phase {
        Phase::Idle => t.keepalive,
        Phase::Header => t.client_header,
        Phase::Body | Phase::Discard => t.client_body,
        Phase::Connect => t.connect,
        Phase::Response | Phase::Stream => t.upstream,
        Phase::Linger => LINGER_MS,
    }
}

/// One request from its head to the last byte of its response.
struct Exchange {
    seq: u64,
    /// When the head arrived (wheel ms).
    started: u64,
    /// When the final response head arrived.
    answered: Option<u64>,
    status: u16,
    /// Response body bytes sent to the client.
    sent_bytes: u64,
    trace: Trace,
    head: RequestHead,
    req_body: BodyFramer,
    /// Bytes at the front of `cin` that belong to this request's body.
    body_ready: usize,
    /// Of those, bytes already written upstream (held for a retry).
    body_sent: usize,
    /// Bytes of `uout` (the rewritten head) already written upstream.
    head_sent: usize,
    /// Every byte of the request sent so far is still held.
    replayable: bool,
    tried: TargetSet,
    target: usize,
    attempts: usize,
    /// Attempts that ended in a response timeout.
    timeouts: u8,
    /// Writing the request to the target failed: nothing more is sent on this attempt.
    upload_cut: bool,
    resp: Resp,
    /// Bytes at the front of `uin` that belong to the response body.
    resp_ready: usize,
    /// Some byte of a final response reached the client: no retry is possible any more.
    resp_started: bool,
    /// Raw request body bytes seen so far, for `max_body_size`.
    body_total: u64,
    client_keep_alive: bool,
    upstream_reusable: bool,
    upstream_eof: bool,
}

impl Exchange {
    fn request_sent(&self, uout_len: usize) -> bool {
        !self.upload_cut && self.head_sent == uout_len && self.req_body.is_done() && self.body_sent == self.body_ready
    }

    /// Request body bytes at the front of `cin` that may go upstream: classified, and not part
    /// of a chunk-size line or trailer section still being checked.
    fn body_forwardable(&self) -> usize {
        self.body_ready.saturating_sub(self.req_body.held())
    }

    /// Response body bytes at the front of `uin` that may go to the client.
    fn resp_forwardable(&self) -> usize {
        match &self.resp {
            Resp::Head => 0,
            Resp::Body(framer) => self.resp_ready.saturating_sub(framer.held()),
        }
    }

    /// The request said `Expect: 100-continue` and no byte of its body has come: after a final
    /// response, the client may send the body or the next request, and nobody can tell which.
    fn body_withheld(&self) -> bool {
        self.head.expect_continue && self.body_total == 0 && !self.req_body.is_done()
    }

    /// Whether another attempt may start: within `retries` and `retry_timeout`.
    fn in_budget(&self, sh: &Shared) -> bool {
        self.attempts <= sh.retries && sh.now.saturating_sub(self.started) < sh.retry_timeout
    }

    fn response_complete(&self) -> bool {
        match &self.resp {
            Resp::Head => false,
            Resp::Body(framer) => {
                self.resp_ready == 0 && (framer.is_done() || (framer.until_close() && self.upstream_eof))
            }
        }
    }
}

/// Spare exchange boxes: a request reuses one instead of allocating.
#[derive(Default)]
// The boxes themselves move between sessions and the pool; `Vec<Exchange>` would copy them.
#[allow(clippy::vec_box)]
pub struct ExchangePool(Vec<Box<Exchange>>);

impl ExchangePool {
    fn fill(&mut self, exchange: Exchange) -> Box<Exchange> {
        match self.0.pop() {
            Some(mut spare) => {
                *spare = exchange;
                spare
            }
            None => Box::new(exchange),
        }
    }

    fn recycle(&mut self, exchange: Box<Exchange>) {
        self.0.push(exchange);
    }
}

/// The rest of a request body nobody will read, followed to its end so that the bytes after it
/// are parsed as the next request and never before.
#[derive(Clone, Copy, Debug)]
struct Discard {
    body: BodyFramer,
    /// Bytes that may still be dropped before the connection is closed instead.
    budget: u64,
}

pub struct Session {
    key: usize,
    client: TcpStream,
    peer: SocketAddr,
    ready: Ready,
    client_eof: bool,
    cin: Option<Buffer>,
    uout: Option<Buffer>,
    uin: Option<Buffer>,
    cout: Option<Buffer>,
    up: Option<UpstreamConn>,
    /// Boxed so an idle session stays small; the boxes are recycled through `ExchangePool`.
    ex: Option<Box<Exchange>>,
    /// Close once `cout` is flushed.
    close_after: bool,
    /// The rest of an ended exchange's request body, being read and dropped.
    discard: Option<Discard>,
    /// An exchange ended before its request body did: the client may still be sending.
    owes_body: bool,
    /// Our side is shut down; what the client sends is read and dropped until it closes.
    lingering: bool,
    /// Requests answered on this connection; before the first, the header timeout applies.
    served: u32,
    phase: Option<Phase>,
    deadline: u64,
    timer: Option<(TimerId, u64)>,
}

impl Session {
    pub fn new(key: usize, client: TcpStream, peer: SocketAddr) -> Session {
        Session {
            key,
            client,
            peer,
            ready: Ready::default(),
            client_eof: false,
            cin: None,
            uout: None,
            uin: None,
            cout: None,
            up: None,
            ex: None,
            close_after: false,
            discard: None,
            owes_body: false,
            lingering: false,
            served: 0,
            phase: None,
            deadline: 0,
            timer: None,
        }
    }

    pub fn client_event(&mut self, event: &mio::event::Event) {
        self.ready.update(event);
    }

    /// Records readiness of the upstream socket in `slot`, if it is still this session's.
    pub fn upstream_event(&mut self, slot: usize, event: &mio::event::Event) {
        if let Some(up) = self.up.as_mut().filter(|up| up.slot == slot) {
            up.ready.update(event);
        }
    }

    /// Idle between requests: the first to go when the proxy drains.
    pub fn is_idle(&self) -> bool {
        self.ex.is_none()
            && self.discard.is_none()
            && !self.lingering
            && self.cin.as_ref().is_none_or(Buffer::is_empty)
            && self.cout.as_ref().is_none_or(Buffer::is_empty)
    }

    /// Makes every move readiness allows, up to one turn.
    pub fn pump(&mut self, sh: &mut Shared) -> Verdict {
        let mut moved = false;
        for _ in 0..TURN {
            match self.step(sh) {
                Ok(true) => moved = true,
                Ok(false) => return self.settle(sh, moved),
                Err(Closed) => return Verdict::Close,
            }
        }
        match self.settle(sh, true) {
            Verdict::Open => Verdict::Requeue,
            other => other,
        }
    }

    /// The session's timer fired.
    pub fn on_timer(&mut self, sh: &mut Shared) -> Verdict {
        self.timer = None;
        if sh.now < self.deadline {
            self.arm_timer(sh);
            return Verdict::Open;
        }
        let outcome = match self.phase {
            Some(Phase::Idle) | None => Err(Closed),
            Some(Phase::Linger) => Err(Closed),
            Some(Phase::Discard) => {
                debug!("{}: the rest of a request body stalled; closing", self.peer);
                Err(Closed)
            }
            // Nothing sent at all: close quietly, as nginx and HAProxy do.
            Some(Phase::Header) if self.cin.as_ref().is_none_or(Buffer::is_empty) => Err(Closed),
            Some(Phase::Header) => {
                debug!("{}: request head not received in time", self.peer);
                self.respond_local(sh, 408, http::reason(408), false);
                Ok(true)
            }
            Some(Phase::Connect) => self.attempt_failed(sh, Failure::ConnectTimeout),
            Some(Phase::Body) => {
                debug!("{}: request body stalled past client_body_timeout", self.peer);
                self.refuse_exchange(sh, 408, "request body stalled")
            }
            Some(Phase::Response) => self.attempt_failed(sh, Failure::ResponseTimeout),
            Some(Phase::Stream) => {
                warn!("{}: transfer stalled past the timeout, closing", self.peer);
                Err(Closed)
            }
        };
        match outcome {
            Err(Closed) => Verdict::Close,
            Ok(_) => self.pump(sh),
        }
    }

    /// Releases everything the session holds. The client socket closes when the session drops.
    pub fn teardown(&mut self, sh: &mut Shared) {
        self.end_exchange(sh, None, false);
        if let Some((id, _)) = self.timer.take() {
            sh.wheel.cancel(id);
        }
        if let Some(up) = self.up.take() {
            sh.upstreams.close(up);
        }
        for slot in [&mut self.cin, &mut self.uout, &mut self.uin, &mut self.cout] {
            buffer::release(slot, &mut sh.pool);
        }
    }

    fn step(&mut self, sh: &mut Shared) -> Step {
        if self.lingering {
            return self.linger(sh);
        }
        let mut moved = self.read_client(sh)?;
        if self.discard.is_some() {
            moved |= self.discard_body()?;
        }
        if self.ex.is_none() && self.discard.is_none() {
            moved |= self.start_request(sh)?;
        }
        if self.ex.is_some() {
            moved |= self.classify_request_body(sh)?;
            moved |= self.check_connect(sh)?;
            moved |= self.write_upstream(sh)?;
            moved |= self.read_upstream(sh)?;
            moved |= self.parse_response_head(sh)?;
            moved |= self.classify_response_body(sh)?;
        }
        moved |= self.write_client()?;
        if self.ex.is_some() {
            moved |= self.finish_if_complete(sh)?;
        } else if self.cout.as_ref().is_none_or(Buffer::is_empty) {
            if self.close_after || (self.client_eof && self.cin.as_ref().is_none_or(Buffer::is_empty)) {
                return self.close_or_linger();
            }
            if sh.draining && self.is_idle() {
                return Err(Closed);
            }
        }
        Ok(moved)
    }

    /// After a pump: give idle buffers back and keep the phase timer right.
    fn settle(&mut self, sh: &mut Shared, moved: bool) -> Verdict {
        if self.ex.is_none() {
            for slot in [&mut self.cin, &mut self.uout, &mut self.uin, &mut self.cout] {
                buffer::release_if_empty(slot, &mut sh.pool);
            }
        }
        let phase = self.current_phase();
        let idle_timer = matches!(phase, Phase::Stream | Phase::Body | Phase::Discard);
        if self.phase != Some(phase) || (moved && idle_timer) {
            self.phase = Some(phase);
            self.deadline = sh.now + timeout_for(phase, &sh.timeouts);
        }
        self.arm_timer(sh);
        Verdict::Open
    }

    fn current_phase(&self) -> Phase {
        if self.lingering {
            return Phase::Linger;
        }
        match (&self.ex, &self.up) {
            (None, _) if self.discard.is_some() => Phase::Discard,
            // An answer still going out comes first: a header timeout must not cut into it.
            (None, _) if self.cout.as_ref().is_some_and(|b| !b.is_empty()) => Phase::Stream,
            (None, _) if self.cin.as_ref().is_some_and(|b| !b.is_empty()) => Phase::Header,
            // A new connection gets the header timeout from its first moment (slowloris).
            (None, _) if self.served == 0 => Phase::Header,
            (None, _) => Phase::Idle,
            (Some(_), Some(up)) if !up.connected => Phase::Connect,
            // Once the target has answered, a stall is the transfer's, whichever side stalls.
            (Some(ex), _) if matches!(ex.resp, Resp::Body(_)) => Phase::Stream,
            // Everything the client sent is upstream: the client owes the next byte.
            (Some(ex), _) if !ex.upload_cut && !ex.req_body.is_done() && ex.body_sent >= ex.body_forwardable() => {
                Phase::Body
            }
            (Some(_), _) => Phase::Response,
        }
    }

    /// Keeps one wheel entry no later than the deadline; a later deadline is caught lazily
    /// when the early entry fires.
    fn arm_timer(&mut self, sh: &mut Shared) {
        if let Some((id, when)) = self.timer {
            if when <= self.deadline {
                return;
            }
            sh.wheel.cancel(id);
        }
        let id = sh.wheel.insert(self.deadline, Timer::Session(self.key));
        self.timer = Some((id, self.deadline));
    }

    fn read_client(&mut self, sh: &mut Shared) -> Step {
        if !self.ready.read || self.client_eof || self.close_after {
            return Ok(false);
        }
        let cin = buffer::ensure(&mut self.cin, &mut sh.pool);
        if !cin.has_space() {
            // Full: only body bytes already sent can make room, at the price of a retry.
            let Some(ex) = self.ex.as_mut().filter(|ex| ex.body_sent > 0) else {
                return Ok(false);
            };
            cin.consume(ex.body_sent);
            ex.body_ready -= ex.body_sent;
            ex.body_sent = 0;
            ex.replayable = false;
        }
        match self.ready.read(&mut self.client, cin.space()) {
            Io::Bytes(n) => {
                cin.fill(n);
                Ok(true)
            }
            Io::Eof => {
                self.client_eof = true;
                if self.ex.as_ref().is_some_and(|ex| !ex.req_body.is_done()) {
                    debug!("{}: client closed in the middle of a request body", self.peer);
                    return Err(Closed);
                }
                Ok(true)
            }
            Io::Blocked => Ok(false),
            Io::Retry => Ok(true),
            Io::Failed(e) => {
                debug!("{}: client read failed: {e}", self.peer);
                Err(Closed)
            }
        }
    }

    /// Drops the rest of a request body whose exchange ended before it (the target answered
    /// early), so that it is never taken for a request; past `DISCARD_LIMIT` the connection
    /// closes instead.
    fn discard_body(&mut self) -> Step {
        let (Some(discard), Some(cin)) = (self.discard.as_mut(), self.cin.as_mut()) else {
            return Ok(false);
        };
        if cin.is_empty() {
            return Ok(false);
        }
        let progress = match discard.body.advance(cin.data(), HttpError::BadRequest) {
            Ok(p) => p,
            Err(e) => {
                debug!("{}: the rest of a request body is malformed ({e}); closing", self.peer);
                self.discard = None;
                self.close_after = true;
                return Ok(true);
            }
        };
        cin.consume(progress.used);
        if progress.done {
            self.discard = None;
            self.owes_body = false;
        } else if progress.used as u64 > discard.budget {
            debug!("{}: more than {DISCARD_LIMIT} bytes of an unread request body; closing", self.peer);
            self.discard = None;
            self.close_after = true;
        } else {
            discard.budget -= progress.used as u64;
        }
        Ok(progress.used > 0 || progress.done)
    }

    /// The connection is to close. If the client may still be sending (an unfinished body,
    /// unread bytes), shut our side first and read until the client closes or `LINGER_MS`
    /// pass: closing with unread data sends a reset, which can destroy the response in the
    /// client's receive buffer before it reads it (nginx's lingering close).
    fn close_or_linger(&mut self) -> Step {
        let unread = self.owes_body || self.ready.read || self.cin.as_ref().is_some_and(|b| !b.is_empty());
        if self.client_eof || !unread || self.client.shutdown(std::net::Shutdown::Write).is_err() {
            return Err(Closed);
        }
        self.lingering = true;
        self.discard = None;
        if let Some(cin) = self.cin.as_mut() {
            cin.clear();
        }
        Ok(true)
    }

    /// Reads and drops what a lingering client sends; its close ends the session.
    fn linger(&mut self, sh: &mut Shared) -> Step {
        let cin = buffer::ensure(&mut self.cin, &mut sh.pool);
        match self.ready.read(&mut self.client, cin.space()) {
            Io::Bytes(_) | Io::Retry => Ok(true),
            Io::Blocked => Ok(false),
            Io::Eof | Io::Failed(_) => Err(Closed),
        }
    }

    /// Parses the next request head in `cin`, if a whole one is there, and sends it on its way.
    fn start_request(&mut self, sh: &mut Shared) -> Step {
        let Some(cin) = self.cin.as_mut().filter(|b| !b.is_empty()) else {
            return Ok(false);
        };
        if self.close_after || self.cout.as_ref().is_some_and(|b| !b.is_empty()) {
            return Ok(false);
        }
        let uout = buffer::ensure(&mut self.uout, &mut sh.pool);
        uout.clear();
        let fwd = Forwarding { client_ip: self.peer.ip(), path_prefix: &sh.path_prefix };
        let limit = cin.len().min(sh.max_request_head);
        let parsed = http::parse_request(&cin.data()[..limit], &fwd, uout.space());
        let head = match parsed {
            Ok(Some(head)) => head,
            Ok(None) if limit < sh.max_request_head && !self.client_eof => return Ok(false),
            Ok(None) if self.client_eof => {
                debug!("{}: client closed in the middle of a request head", self.peer);
                return Err(Closed);
            }
            Ok(None) => return Ok(self.refuse(sh, HttpError::HeadTooLarge)),
            Err(e) => return Ok(self.refuse(sh, e)),
        };
        if let (BodyKind::Length(n), Some(max)) = (head.body, sh.max_body_size) {
            if n > max {
                return Ok(self.refuse(sh, HttpError::BodyTooLarge));
            }
        }
        cin.consume(head.head_len);
        uout.fill(head.out_len);
        let seq = sh.seq;
        sh.seq += 1;
        self.ex = Some(sh.exchanges.fill(Exchange {
            seq,
            started: sh.now,
            answered: None,
            status: 0,
            sent_bytes: 0,
            trace: Trace::default(),
            head,
            req_body: BodyFramer::with_limits(head.body, sh.chunk_limits),
            body_ready: 0,
            body_sent: 0,
            head_sent: 0,
            replayable: true,
            tried: TargetSet::default(),
            target: 0,
            attempts: 0,
            timeouts: 0,
            upload_cut: false,
            resp: Resp::Head,
            resp_ready: 0,
            resp_started: false,
            body_total: 0,
            client_keep_alive: head.keep_alive,
            upstream_reusable: false,
            upstream_eof: false,
        }));
        self.dispatch(sh, false)?;
        Ok(true)
    }

    /// Answers a request the proxy refuses, and closes after: what follows it cannot be trusted.
    fn refuse(&mut self, sh: &mut Shared, e: HttpError) -> bool {
        warn!("{}: {e} -> {}", self.peer, e.status());
        self.respond_local(sh, e.status(), http::reason(e.status()), false);
        true
    }

    /// Sends the exchange to a target: the same one again for a stale pooled connection,
    /// otherwise the ring's pick among live targets not tried yet.
    fn dispatch(&mut self, sh: &mut Shared, mut same_target: bool) -> Result<(), Closed> {
        loop {
            let Some(ex) = self.ex.as_mut() else {
                return Ok(());
            };
            let ring = &sh.targets.ring;
            let fail_open = sh.all_down == AllDown::TryAll;
            let picked = if same_target {
                Some(ex.target)
            } else {
                ring.pick(ex.seq, &ex.tried).or_else(|| ring.pick_any(ex.seq, &ex.tried).filter(|_| fail_open))
            };
            let Some(target) = picked else {
                let keep = ex.client_keep_alive;
                if ex.timeouts > 0 {
                    // A target is slow, not gone: that is a timeout, not the all-down answer.
                    warn!("{}: request #{} timed out and no other live target is left -> 504", self.peer, ex.seq);
                    self.respond_local(sh, 504, http::reason(504), keep);
                } else {
                    warn!("{}: no live target left for request #{}", self.peer, ex.seq);
                    let status = sh.all_down_status;
                    self.respond_local(sh, status, "All servers is off", keep);
                }
                return Ok(());
            };
            ex.target = target;
            ex.attempts += 1;
            self.phase = None;
            if !same_target {
                if let Some(conn) = sh.upstreams.checkout(target, self.key) {
                    self.up = Some(conn);
                    return Ok(());
                }
            }
            let failure = match sh.targets.addr(target) {
                None => Failure::Unresolved,
                Some(addr) => match sh.upstreams.connect(&sh.registry, target, addr, self.key) {
                    Ok(conn) => {
                        self.up = Some(conn);
                        return Ok(());
                    }
                    Err(e) => Failure::Connect(e.kind()),
                },
            };
            ex.tried.insert(target);
            ex.trace.push(target, Outcome::Failed(failure));
            health::failed(sh, target, failure);
            if !ex.in_budget(sh) {
                warn!("{}: target {} {failure}; retry budget spent -> 502", self.peer, sh.targets.url(target));
                self.respond_local(sh, 502, http::reason(502), false);
                return Ok(());
            }
            same_target = false;
        }
    }

    /// A non-blocking connect finished, one way or the other.
    fn check_connect(&mut self, sh: &mut Shared) -> Step {
        let Some(up) = self.up.as_mut().filter(|up| !up.connected && (up.ready.write || up.ready.read)) else {
            return Ok(false);
        };
        let outcome = match up.stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => up.stream.peer_addr().map(|_| ()),
        };
        match outcome {
            Ok(()) => {
                up.connected = true;
                // Best effort: a failure here only costs latency.
                let _ = up.stream.set_nodelay(true);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                up.ready.write = false;
                up.ready.read = false;
                Ok(false)
            }
            Err(e) => self.attempt_failed(sh, Failure::Connect(e.kind())),
        }
    }

    fn classify_request_body(&mut self, sh: &mut Shared) -> Step {
        let (Some(ex), Some(cin)) = (self.ex.as_mut(), self.cin.as_mut()) else {
            return Ok(false);
        };
        let mut moved = false;
        if ex.upload_cut && matches!(ex.resp, Resp::Body(_)) && ex.body_ready > 0 {
            // The target stopped reading and has answered: the rest of the body goes nowhere,
            // and the client must not stall on it while its response streams.
            cin.consume(ex.body_ready);
            ex.body_ready = 0;
            ex.body_sent = 0;
            moved = true;
        }
        if ex.req_body.is_done() || cin.len() == ex.body_ready {
            return Ok(moved);
        }
        let progress = match ex.req_body.advance(&cin.data()[ex.body_ready..], HttpError::BadRequest) {
            Ok(p) => p,
            Err(e) => return self.refuse_exchange(sh, e.status(), &e.to_string()),
        };
        ex.body_ready += progress.used;
        ex.body_total += progress.used as u64;
        if sh.max_body_size.is_some_and(|max| ex.body_total > max) {
            return self.refuse_exchange(sh, 413, "request body too large");
        }
        Ok(moved || progress.used > 0 || progress.done)
    }

    /// Ends an exchange the client got wrong: its status if the client has seen nothing of a
    /// response yet, otherwise a close. Either way the connection closes after.
    fn refuse_exchange(&mut self, sh: &mut Shared, status: u16, why: &str) -> Step {
        warn!("{}: {why} -> {status}", self.peer);
        if self.ex.as_ref().is_some_and(|ex| ex.resp_started) {
            return Err(Closed);
        }
        self.respond_local(sh, status, http::reason(status), false);
        Ok(true)
    }

    fn write_upstream(&mut self, sh: &mut Shared) -> Step {
        let (Some(ex), Some(up), Some(uout)) = (self.ex.as_mut(), self.up.as_mut(), self.uout.as_ref()) else {
            return Ok(false);
        };
        if !up.connected || ex.upload_cut {
            return Ok(false);
        }
        let head = &uout.data()[ex.head_sent..];
        let forwardable = ex.body_forwardable();
        let body = self.cin.as_ref().map_or(&[][..], |cin| &cin.data()[ex.body_sent.min(forwardable)..forwardable]);
        match up.ready.write(&mut up.stream, head, body) {
            Io::Bytes(n) => {
                let from_head = n.min(head.len());
                ex.head_sent += from_head;
                ex.body_sent += n - from_head;
                Ok(true)
            }
            Io::Blocked | Io::Eof => Ok(false),
            Io::Retry => Ok(true),
            Io::Failed(e) => {
                // The target stopped reading: it may have answered already (an early 413 or
                // 401) and closed. Its answer is in our receive buffer, so read before judging:
                // a response is forwarded; a reset or close without one fails the attempt.
                debug!("{}: target {} stopped reading the request: {e}", self.peer, sh.targets.url(up.target));
                ex.upload_cut = true;
                up.ready.read = true;
                Ok(true)
            }
        }
    }

    fn read_upstream(&mut self, sh: &mut Shared) -> Step {
        let (Some(ex), Some(up)) = (self.ex.as_mut(), self.up.as_mut()) else {
            return Ok(false);
        };
        if !up.connected || !up.ready.read || ex.upstream_eof {
            return Ok(false);
        }
        let uin = buffer::ensure(&mut self.uin, &mut sh.pool);
        match up.ready.read(&mut up.stream, uin.space()) {
            Io::Bytes(n) => {
                uin.fill(n);
                Ok(true)
            }
            Io::Eof => {
                ex.upstream_eof = true;
                self.upstream_closed(sh)
            }
            Io::Blocked => Ok(false),
            Io::Retry => Ok(true),
            // A reset may follow an answer already read (a target that closed with our request
            // body unread): let `parse_response_head` look at what came before failing.
            Io::Failed(_) if matches!(ex.resp, Resp::Head) && !uin.is_empty() => {
                ex.upstream_eof = true;
                Ok(true)
            }
            Io::Failed(e) if matches!(ex.resp, Resp::Head) => self.attempt_failed(sh, Failure::Reset(e.kind())),
            Io::Failed(e) => {
                let why = if e.kind() == io::ErrorKind::ConnectionReset {
                    "reset mid-response"
                } else {
                    "failed mid-response"
                };
                self.broken_response(sh, why)
            }
        }
    }

    /// The target closed its side: the end of a close-delimited body, or a failure.
    fn upstream_closed(&mut self, sh: &mut Shared) -> Step {
        let Some(ex) = self.ex.as_ref() else {
            return Ok(false);
        };
        match &ex.resp {
            // A head may still wait in `uin` behind a 1xx: `parse_response_head` decides.
            Resp::Head if self.uin.as_ref().is_some_and(|b| !b.is_empty()) => Ok(true),
            Resp::Head => self.attempt_failed(sh, Failure::Eof),
            Resp::Body(framer) if framer.until_close() => Ok(true),
            Resp::Body(framer) if framer.is_done() => Ok(true),
            Resp::Body(_) => self.broken_response(sh, "closed before the response body ended"),
        }
    }

    fn parse_response_head(&mut self, sh: &mut Shared) -> Step {
        let (Some(ex), Some(uin)) = (self.ex.as_mut(), self.uin.as_mut()) else {
            return Ok(false);
        };
        if !matches!(ex.resp, Resp::Head) {
            return Ok(false);
        }
        if uin.is_empty() {
            // The target closed after an interim response, with no final one behind it.
            return if ex.upstream_eof { self.attempt_failed(sh, Failure::Eof) } else { Ok(false) };
        }
        let cout = buffer::ensure(&mut self.cout, &mut sh.pool);
        if !cout.is_empty() {
            return Ok(false);
        }
        let ctx = ResponseContext {
            request_is_head: ex.head.is_head,
            client_minor: ex.head.minor,
            client_keep_alive: ex.client_keep_alive && !sh.draining && !self.client_eof && !ex.body_withheld(),
        };
        let head = match http::parse_response(uin.data(), &ctx, cout.space()) {
            Ok(Some(head)) => head,
            Ok(None) if ex.upstream_eof => return self.attempt_failed(sh, Failure::Eof),
            Ok(None) if uin.has_space() => return Ok(false),
            Ok(None) => return self.bad_gateway(sh, HttpError::BadResponse("head too large")),
            Err(e) => return self.bad_gateway(sh, e),
        };
        uin.consume(head.head_len);
        if head.informational {
            // HTTP/1.0 clients do not expect interim responses (RFC 9110 §15.2).
            if ex.head.minor == 1 {
                cout.fill(head.out_len);
            }
            return Ok(true);
        }
        cout.fill(head.out_len);
        ex.resp = Resp::Body(BodyFramer::with_limits(head.body, sh.chunk_limits));
        ex.client_keep_alive = head.client_keep_alive;
        ex.upstream_reusable = head.upstream_reusable;
        // The response has begun: the request will not be replayed, so its bytes can go.
        if let Some(cin) = self.cin.as_mut() {
            cin.consume(ex.body_sent);
        }
        ex.body_ready -= ex.body_sent;
        ex.body_sent = 0;
        ex.replayable = false;
        ex.status = head.status;
        ex.answered = Some(sh.now);
        ex.trace.push(ex.target, Outcome::Ok);
        health::succeeded(sh, ex.target);
        Ok(true)
    }

    /// The target's response cannot be forwarded: 502 if the client has seen nothing yet.
    fn bad_gateway(&mut self, sh: &mut Shared, e: HttpError) -> Step {
        let Some(ex) = self.ex.as_mut() else {
            return Err(Closed);
        };
        warn!("{}: target {}: {e} -> 502", self.peer, sh.targets.url(ex.target));
        ex.trace.push(ex.target, Outcome::BadResponse);
        if ex.resp_started {
            return Err(Closed);
        }
        self.respond_local(sh, 502, http::reason(502), false);
        Ok(true)
    }

    /// The target's response broke after its head arrived: a 502 if the client has seen none of
    /// it yet, otherwise a close, which shows a framed response to the client as cut short.
    fn broken_response(&mut self, sh: &mut Shared, why: impl std::fmt::Display) -> Step {
        let Some(ex) = self.ex.as_mut() else {
            return Err(Closed);
        };
        let url = sh.targets.url(ex.target);
        if ex.resp_started {
            warn!("{}: target {url} {why}; closing", self.peer);
            return Err(Closed);
        }
        warn!("{}: target {url} {why} -> 502", self.peer);
        ex.trace.set_last(Outcome::BadResponse);
        self.respond_local(sh, 502, http::reason(502), false);
        Ok(true)
    }

    fn classify_response_body(&mut self, sh: &mut Shared) -> Step {
        let (Some(ex), Some(uin)) = (self.ex.as_mut(), self.uin.as_ref()) else {
            return Ok(false);
        };
        let Resp::Body(framer) = &mut ex.resp else {
            return Ok(false);
        };
        if framer.is_done() || uin.len() == ex.resp_ready {
            return Ok(false);
        }
        match framer.advance(&uin.data()[ex.resp_ready..], HttpError::BadResponse) {
            Ok(p) => {
                ex.resp_ready += p.used;
                Ok(p.used > 0 || p.done)
            }
            Err(e) => self.broken_response(sh, e),
        }
    }

    fn write_client(&mut self) -> Step {
        let head = self.cout.as_ref().map_or(&[][..], Buffer::data);
        let ready = self.ex.as_ref().map_or(0, |ex| ex.resp_forwardable());
        let body = self.uin.as_ref().map_or(&[][..], |uin| &uin.data()[..ready]);
        match self.ready.write(&mut self.client, head, body) {
            Io::Bytes(n) => {
                let from_head = n.min(head.len());
                if let Some(cout) = self.cout.as_mut() {
                    cout.consume(from_head);
                }
                if let (Some(uin), Some(ex)) = (self.uin.as_mut(), self.ex.as_mut()) {
                    uin.consume(n - from_head);
                    ex.resp_ready -= n - from_head;
                    ex.sent_bytes += (n - from_head) as u64;
                }
                if let Some(ex) = self.ex.as_mut().filter(|ex| matches!(ex.resp, Resp::Body(_))) {
                    ex.resp_started = true;
                }
                Ok(true)
            }
            Io::Blocked | Io::Eof => Ok(false),
            Io::Retry => Ok(true),
            Io::Failed(e) => {
                debug!("{}: client write failed: {e}", self.peer);
                Err(Closed)
            }
        }
    }

    /// Ends the exchange once its response is fully delivered: the upstream connection goes
    /// back to the pool if its framing allows, and the client connection waits for the next
    /// request or closes.
    fn finish_if_complete(&mut self, sh: &mut Shared) -> Step {
        let Some(ex) = self.ex.as_ref() else {
            return Ok(false);
        };
        if !ex.response_complete() || self.cout.as_ref().is_some_and(|b| !b.is_empty()) {
            return Ok(false);
        }
        let request_sent = ex.request_sent(self.uout.as_ref().map_or(0, Buffer::len));
        let uin_clean = self.uin.as_ref().is_none_or(Buffer::is_empty);
        if let Some(up) = self.up.take() {
            if ex.upstream_reusable && request_sent && uin_clean && !ex.upstream_eof {
                sh.upstreams.checkin(up);
            } else {
                sh.upstreams.close(up);
            }
        }
        self.served += 1;
        let keep_alive = ex.client_keep_alive;
        self.end_exchange(sh, None, keep_alive);
        Ok(true)
    }

    /// Logs the exchange and lets go of it. Its buffers' contents go, so that `settle` can
    /// return them to the pool (an idle keep-alive connection holds no buffer), and so do its
    /// request body bytes at the front of `cin`. A body the client has not finished sending is
    /// then read and dropped (`discard_body`) or the connection closes: it never becomes a
    /// request. `keep_alive`: whether the client connection may carry another request.
    fn end_exchange(&mut self, sh: &mut Shared, status: Option<u16>, keep_alive: bool) {
        let Some(ex) = self.ex.take() else {
            return;
        };
        self.log_access(sh, &ex, status.unwrap_or(ex.status));
        for held in [self.uout.as_mut(), self.uin.as_mut()].into_iter().flatten() {
            held.clear();
        }
        if let Some(cin) = self.cin.as_mut() {
            cin.consume(ex.body_ready.min(cin.len()));
        }
        self.close_after |= !keep_alive || ex.body_withheld();
        if !ex.req_body.is_done() {
            self.owes_body = true;
            let fits = ex.req_body.length_left().is_none_or(|left| left <= DISCARD_LIMIT);
            if self.close_after || !fits {
                self.close_after = true;
            } else {
                self.discard = Some(Discard { body: ex.req_body, budget: DISCARD_LIMIT });
            }
        }
        sh.exchanges.recycle(ex);
    }

    /// A connection attempt or an exchange with a target failed before the client saw any of
    /// the response. Decide: replay elsewhere, or answer with an error.
    fn attempt_failed(&mut self, sh: &mut Shared, failure: Failure) -> Step {
        let Some(ex) = self.ex.as_mut() else {
            return Err(Closed);
        };
        let Some(up) = self.up.take() else {
            return Err(Closed);
        };
        let stale_pooled = up.reused && matches!(failure, Failure::Eof | Failure::Reset(_));
        let nothing_sent = !up.connected || (ex.head_sent == 0 && ex.body_sent == 0);
        sh.upstreams.close(up);
        let url = sh.targets.url(ex.target);
        if ex.resp_started {
            warn!("{}: target {url} failed mid-response ({failure}); closing", self.peer);
            return Err(Closed);
        }
        let timed_out = failure == Failure::ResponseTimeout;
        if stale_pooled {
            ex.trace.push(ex.target, Outcome::Stale);
        } else {
            ex.tried.insert(ex.target);
            ex.trace.push(ex.target, Outcome::Failed(failure));
            if timed_out {
                // One slow request says little about its target: a probe decides.
                ex.timeouts = ex.timeouts.saturating_add(1);
                health::suspect(sh, ex.target);
            } else {
                health::failed(sh, ex.target, failure);
            }
        }
        let safe = failure.before_request() || nothing_sent || ex.head.idempotent;
        // A request that timed out gets one more target, never a walk through all of them.
        let in_budget = ex.in_budget(sh) && ex.timeouts <= 1;
        if !(ex.replayable && safe && in_budget) {
            let status = if timed_out { 504 } else { 502 };
            let why = if !in_budget { "retry budget spent" } else { "not safe to retry" };
            warn!("{}: target {} {failure}; {why} -> {status}", self.peer, sh.targets.url(ex.target));
            self.respond_local(sh, status, http::reason(status), false);
            return Ok(true);
        }
        debug!("{}: request #{} retried after {failure}", self.peer, ex.seq);
        ex.head_sent = 0;
        ex.body_sent = 0;
        ex.resp = Resp::Head;
        ex.resp_ready = 0;
        ex.upstream_eof = false;
        ex.upload_cut = false;
        if let Some(uin) = self.uin.as_mut() {
            uin.clear();
        }
        self.dispatch(sh, stale_pooled)?;
        Ok(true)
    }

    /// Replaces whatever the exchange was doing with a response made by the proxy. Interim
    /// (1xx) heads already queued for the client stay in front of it: each is whole.
    fn respond_local(&mut self, sh: &mut Shared, status: u16, body: &str, keep_alive: bool) {
        if let Some(up) = self.up.take() {
            sh.upstreams.close(up);
        }
        let interim_queued = self.ex.as_ref().is_some_and(|ex| matches!(ex.resp, Resp::Head));
        let keep_alive = keep_alive && !sh.draining;
        if self.ex.is_some() {
            self.end_exchange(sh, Some(status), keep_alive);
        } else {
            self.log_refused(sh, status);
            self.close_after |= !keep_alive;
        }
        self.served += 1;
        let cout = buffer::ensure(&mut self.cout, &mut sh.pool);
        if !interim_queued {
            cout.clear();
        }
        match http::write_local_response(cout.space(), status, body, !self.close_after) {
            Some(n) => cout.fill(n),
            None => self.close_after = true,
        }
    }

    fn log_access(&self, sh: &mut Shared, ex: &Exchange, status: u16) {
        if !sh.access_log.enabled() {
            return;
        }
        let head = self.uout.as_ref().map_or(&[][..], Buffer::data);
        let request_line = head.split(|&b| b == b'\r').next().unwrap_or(&[]);
        let answered = ex.answered.is_some();
        sh.access_log.write(&Entry {
            client: self.peer.ip(),
            time: std::time::SystemTime::now(),
            request_line,
            status,
            body_bytes: ex.sent_bytes,
            target: answered.then(|| sh.targets.url(ex.target)),
            upstream_ms: ex.answered.map(|t| t - ex.started),
            trace: &ex.trace,
        });
    }

    /// A request refused before it became an exchange (malformed, too large, too slow).
    fn log_refused(&self, sh: &mut Shared, status: u16) {
        if !sh.access_log.enabled() {
            return;
        }
        sh.access_log.write(&Entry {
            client: self.peer.ip(),
            time: std::time::SystemTime::now(),
            request_line: b"-",
            status,
            body_bytes: 0,
            target: None,
            upstream_ms: None,
            trace: &Trace::default(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_session_is_small() {
        // An idle keep-alive connection costs its Session in the slab and nothing else; the
        // benchmark target is 512 bytes of RSS per idle connection.
        let size = std::mem::size_of::<Session>();
        println!("Session: {size} bytes");
        assert!(size <= 400, "Session is {size} bytes");
    }
}
