//! A client connection and, while a request is in flight, the upstream connection serving it.
//!
//! `pump` makes every move the sockets' readiness allows: read the client, parse a head, pick a
//! target, connect, send the head and body, read the response, send it back. It returns a
//! `Verdict` for the loop. What the session is doing is its `Mode`; which timeout guards it is
//! its `Phase`, derived from the mode in one place (`phase`). Bytes flow through four pooled
//! buffers, held only while there is something in them:
//!
//! - `cin`: raw bytes from the client; the current request's body sits at its front (`body_ready`
//!   bytes, of which `body_sent` were written upstream and are still held for a retry), then any
//!   pipelined requests.
//! - `uout`: the rewritten request head, kept whole until the response starts so a failed
//!   attempt can be replayed on another target.
//! - `uin`: raw bytes from the upstream; the response body's classified bytes at its front.
//! - `cout`: the rewritten response head, or a response the proxy made itself.
//!
//! Every exchange ends in `end_exchange`, whatever ends it: it releases the upstream connection
//! (to the pool or closed), settles the request body bytes the client still owes, and records
//! the outcome. `docs/ARCHITECTURE.md` walks a request through these steps.

mod answer;
mod tunnel;

use super::client::Client;
use super::exchange::{Exchange, Resp};
use super::local;
use super::retry::{self, Attempt, Budget, Decision};
use super::upstream::{Peek, UpstreamConn};
use super::{Ctx, Verdict};
use crate::balance::Request;
use crate::config::{AllDown, HashKey, Policy};
use crate::health::Failure;
use crate::http::{self, BodyFramer, BodyKind, Forwarding, HttpError, ResponseContext};
use crate::observe::accesslog::Outcome;
use crate::observe::oplog::Noisy;
use crate::runtime::buffer::{self, Buffer};
use crate::runtime::clock::millis;
use crate::runtime::limits::LocalError;
use crate::runtime::ready::{Connect, Io};
use crate::runtime::timer::Timer;
use crate::runtime::wheel::TimerId;
use crate::{info_noisy, warn_noisy};
use log::debug;
use std::io;
use std::net::SocketAddr;

/// The session must be closed now (the reason was logged where it was found).
struct Closed;

/// Whether a step moved any byte or changed any state; when none does, the session waits for
/// readiness or a timer.
type Moved = bool;

type Step = Result<Moved, Closed>;

/// Steps in one `pump` before the session yields to others.
const TURN: usize = 32;
/// The same for a session moving a bulk body through large buffers, 16 times a head-sized one:
/// the same bytes per turn.
const BULK_TURN: usize = 2;

/// Most bytes of an unfinished request body read and dropped after its exchange ended (the
/// target answered early), so that the connection can carry the next request. A longer rest
/// closes the connection instead.
const DISCARD_LIMIT: u64 = 16 << 20;

/// Response bodies longer than this stream through a large buffer, when one is free.
const BULK_BODY: u64 = 64 * 1024;

/// Idle upstream connections closed to make room when the proxy runs out of descriptors.
const SHED: usize = 16;

/// How long a closing connection keeps reading what its client still sends, so that our close
/// does not become a reset that destroys a response the client has not read yet.
const LINGER_MS: u64 = 5_000;

/// What the client side of the connection is doing.
enum Mode {
    /// Between requests: waiting for, or reading, the next request head.
    Waiting,
    /// One request in flight, from its head to the last byte of its response.
    Exchange(Box<Exchange>),
    /// The last exchange ended before its request body did: the rest is read and dropped, so
    /// that the bytes after it are parsed as the next request and never before. The exchange's
    /// box is kept for its body framer until then.
    Discard(Box<Exchange>),
    /// Our side is shut: what the client still sends is read and dropped until it closes.
    Linger,
    /// The target switched protocols (`101`, a WebSocket): bytes go both ways as they come,
    /// until both sides have closed. The exchange's box is kept for its log line.
    Tunnel(Box<Exchange>),
}

/// Which timeout applies.
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
    Discard,
    Linger,
    Tunnel,
}

impl Phase {
    fn timeout(self, ctx: &Ctx<'_>) -> u64 {
        let c = ctx.config;
        match self {
            Phase::Idle => millis(c.timeouts.keepalive),
            Phase::Header => millis(c.timeouts.client_header),
            Phase::Body | Phase::Discard => millis(c.timeouts.client_body),
            Phase::Connect => millis(c.timeouts.connect),
            Phase::Response | Phase::Stream => millis(c.timeouts.upstream),
            Phase::Linger => LINGER_MS,
            Phase::Tunnel => millis(c.timeouts.tunnel),
        }
    }

    /// Phases whose timeout is a limit on silence: any movement restarts it.
    fn is_idle_limit(self) -> bool {
        matches!(self, Phase::Stream | Phase::Body | Phase::Discard | Phase::Tunnel)
    }
}

/// The session's one timer: the phase it guards (with the request and attempt it belongs to,
/// so that a new request or attempt in the same phase starts a fresh timeout), when that phase
/// times out, and the wheel entry, which may fire early.
#[derive(Default)]
struct Deadline {
    guards: Option<(Phase, u64)>,
    at: u64,
    entry: Option<(TimerId, u64)>,
}

pub struct Session {
    key: usize,
    client: Client,
    mode: Mode,
    cin: Option<Buffer>,
    uout: Option<Buffer>,
    uin: Option<Buffer>,
    cout: Option<Buffer>,
    up: Option<UpstreamConn>,
    /// Close once `cout` is flushed.
    close_after: bool,
    /// An exchange ended before its request body did: the client may still be sending.
    owes_body: bool,
    /// Requests answered on this connection; before the first, the header timeout applies.
    served: u32,
    deadline: Deadline,
}

impl Session {
    pub fn new(key: usize, client: Client) -> Session {
        Session {
            key,
            client,
            mode: Mode::Waiting,
            cin: None,
            uout: None,
            uin: None,
            cout: None,
            up: None,
            close_after: false,
            owes_body: false,
            served: 0,
            deadline: Deadline::default(),
        }
    }

    fn peer(&self) -> SocketAddr {
        self.client.peer()
    }

    pub fn client_event(&mut self, event: &mio::event::Event) {
        self.client.event(event);
    }

    /// Records readiness of the upstream socket in `slot`, if it is still this session's.
    pub fn upstream_event(&mut self, slot: usize, event: &mio::event::Event) {
        if let Some(up) = self.up.as_mut().filter(|up| up.slot == slot) {
            up.ready.update(event);
        }
    }

    /// Idle between requests: the first to go when the proxy drains.
    fn is_idle(&self) -> bool {
        matches!(self.mode, Mode::Waiting)
            && self.cin.as_ref().is_none_or(Buffer::is_empty)
            && self.cout.as_ref().is_none_or(Buffer::is_empty)
            && !self.client.has_pending_output()
    }

    /// Makes every move readiness allows, up to one turn.
    pub fn pump(&mut self, cx: &mut Ctx<'_>) -> Verdict {
        let mut moved = false;
        // A step moves up to a buffer's worth: a bulk body's large buffers move as many bytes
        // in a few steps as the others in a whole turn, and the other sessions wait less.
        let bulk = [&self.uin, &self.cin].iter().any(|b| b.as_ref().is_some_and(Buffer::is_large));
        for _ in 0..if bulk { BULK_TURN } else { TURN } {
            match self.step(cx) {
                Ok(true) => moved = true,
                Ok(false) => return self.settle(cx, moved),
                Err(Closed) => return Verdict::Close,
            }
        }
        match self.settle(cx, true) {
            Verdict::Open => Verdict::Requeue,
            other => other,
        }
    }

    /// The session's timer fired.
    pub fn on_timer(&mut self, cx: &mut Ctx<'_>) -> Verdict {
        self.deadline.entry = None;
        if cx.now < self.deadline.at {
            self.arm_timer(cx);
            return Verdict::Open;
        }
        let peer = self.peer();
        let outcome = match self.deadline.guards.map(|(phase, _)| phase) {
            Some(Phase::Idle | Phase::Linger) | None => Err(Closed),
            Some(Phase::Discard) => {
                debug!("{peer}: the rest of a request body stalled; closing");
                Err(Closed)
            }
            Some(Phase::Header) if self.client.is_handshaking() => {
                cx.metrics.tls_handshakes_failed += 1;
                info_noisy!(
                    Noisy::TlsHandshake,
                    "{peer}: TLS handshake not completed within client_header_timeout; closed"
                );
                Err(Closed)
            }
            // Nothing sent at all: close quietly, as nginx and HAProxy do.
            Some(Phase::Header) if self.cin.as_ref().is_none_or(Buffer::is_empty) => Err(Closed),
            Some(Phase::Header) => {
                debug!("{peer}: request head not received in time");
                self.respond_local(cx, 408, http::reason(408), false);
                Ok(true)
            }
            Some(Phase::Connect) => self.attempt_failed(cx, Failure::ConnectTimeout),
            Some(Phase::Body) => {
                debug!("{peer}: request body stalled past client_body_timeout");
                self.refuse_exchange(cx, 408, "request body stalled")
            }
            Some(Phase::Response) => self.attempt_failed(cx, Failure::ResponseTimeout),
            Some(Phase::Stream) => {
                warn_noisy!(Noisy::Stalled, "{peer}: transfer stalled past the timeout, closing");
                Err(Closed)
            }
            Some(Phase::Tunnel) => {
                debug!("{peer}: tunnel silent past tunnel_timeout, closing");
                Err(Closed)
            }
        };
        match outcome {
            Err(Closed) => Verdict::Close,
            Ok(_) => self.pump(cx),
        }
    }

    /// Releases everything the session holds. The client socket closes when the session drops.
    pub fn teardown(&mut self, cx: &mut Ctx<'_>) {
        // Closed first: a session torn down mid-exchange never hands its connection to the pool.
        if let Some(up) = self.detach(cx) {
            cx.upstreams.close(up);
        }
        self.end_exchange(cx, None, false);
        match std::mem::replace(&mut self.mode, Mode::Waiting) {
            Mode::Discard(ex) => cx.exchanges.recycle(ex),
            Mode::Tunnel(ex) => {
                cx.metrics.tunnel_closed(ex.body_total, ex.sent_bytes);
                self.record(cx, &ex, None);
                cx.exchanges.recycle(ex);
            }
            Mode::Waiting | Mode::Exchange(_) | Mode::Linger => {}
        }
        if let Some((id, _)) = self.deadline.entry.take() {
            cx.wheel.cancel(id);
        }
        for slot in [&mut self.cin, &mut self.uout, &mut self.uin, &mut self.cout] {
            buffer::release(slot, cx.buffers);
        }
    }

    fn step(&mut self, cx: &mut Ctx<'_>) -> Step {
        if matches!(self.mode, Mode::Linger) {
            return self.linger(cx);
        }
        if matches!(self.mode, Mode::Tunnel(_)) {
            return self.tunnel(cx);
        }
        let mut moved = self.read_client(cx)?;
        match self.mode {
            Mode::Discard(_) => moved |= self.discard_body(cx)?,
            Mode::Waiting => moved |= self.start_request(cx)?,
            Mode::Exchange(_) | Mode::Linger | Mode::Tunnel(_) => {}
        }
        if matches!(self.mode, Mode::Exchange(_)) {
            moved |= self.classify_request_body(cx)?;
            moved |= self.check_connect(cx)?;
            moved |= self.write_upstream(cx)?;
            moved |= self.read_upstream(cx)?;
            moved |= self.parse_response_head(cx)?;
            moved |= self.classify_response_body(cx)?;
        }
        moved |= self.write_client(cx)?;
        if matches!(self.mode, Mode::Tunnel(_)) {
            // Switched in this step: the tunnel's own rules apply from the next one (a client
            // that half-closed before the 101 may still hear the target).
            return Ok(true);
        }
        if matches!(self.mode, Mode::Exchange(_)) {
            moved |= self.finish_if_complete(cx)?;
        } else if self.cout.as_ref().is_none_or(Buffer::is_empty) {
            if self.close_after || (self.client.eof && self.cin.as_ref().is_none_or(Buffer::is_empty)) {
                return self.close_or_linger(cx);
            }
            if cx.draining && self.is_idle() {
                return self.close_or_linger(cx);
            }
        }
        Ok(moved)
    }

    /// After a pump: give idle buffers back and keep the phase timer right.
    fn settle(&mut self, cx: &mut Ctx<'_>, moved: Moved) -> Verdict {
        if !matches!(self.mode, Mode::Exchange(_)) {
            for slot in [&mut self.cin, &mut self.uout, &mut self.uin, &mut self.cout] {
                buffer::release_if_empty(slot, cx.buffers);
            }
        }
        let phase = self.phase();
        // Attempts never exceed `retries` + 1, at most one more than the targets (256).
        let attempt = match &self.mode {
            Mode::Exchange(ex) => ex.seq.wrapping_mul(512).wrapping_add(ex.attempts as u64 + 1),
            _ => 0,
        };
        if self.deadline.guards != Some((phase, attempt)) || (moved && phase.is_idle_limit()) {
            self.deadline.guards = Some((phase, attempt));
            self.deadline.at = cx.now + phase.timeout(cx);
        }
        self.arm_timer(cx);
        Verdict::Open
    }

    /// Which timeout applies now, from what the session is doing.
    fn phase(&self) -> Phase {
        let cout_pending = self.cout.as_ref().is_some_and(|b| !b.is_empty());
        match &self.mode {
            Mode::Linger => Phase::Linger,
            Mode::Tunnel(_) => Phase::Tunnel,
            Mode::Discard(_) => Phase::Discard,
            // An answer still going out comes first: a header timeout must not cut into it.
            Mode::Waiting if cout_pending => Phase::Stream,
            Mode::Waiting if self.cin.as_ref().is_some_and(|b| !b.is_empty()) => Phase::Header,
            // A new connection gets the header timeout from its first moment (slowloris).
            Mode::Waiting if self.served == 0 => Phase::Header,
            Mode::Waiting => Phase::Idle,
            Mode::Exchange(_) if self.up.as_ref().is_some_and(|up| !up.connected) => Phase::Connect,
            // Once the target has answered, a stall is the transfer's, whichever side stalls.
            Mode::Exchange(ex) if matches!(ex.resp, Resp::Body(_)) => Phase::Stream,
            // Everything the client sent is upstream: the client owes the next byte.
            Mode::Exchange(ex) if !ex.upload_cut && !ex.req_body.is_done() && ex.body_sent >= ex.body_forwardable() => {
                Phase::Body
            }
            Mode::Exchange(_) => Phase::Response,
        }
    }

    /// Keeps one wheel entry no later than the deadline; a later deadline is caught lazily
    /// when the early entry fires.
    fn arm_timer(&mut self, cx: &mut Ctx<'_>) {
        let at = self.deadline.at;
        if let Some((id, when)) = self.deadline.entry {
            if when <= at {
                return;
            }
            cx.wheel.cancel(id);
        }
        let id = cx.wheel.insert(at, Timer::Session(self.key));
        self.deadline.entry = Some((id, at));
    }

    fn read_client(&mut self, cx: &mut Ctx<'_>) -> Step {
        if !self.client.readable() || self.client.eof || self.close_after {
            return Ok(false);
        }
        let cin = buffer::ensure(&mut self.cin, cx.buffers);
        if !cin.has_space() {
            // Full: only body bytes already sent can make room, at the price of a retry.
            let Mode::Exchange(ex) = &mut self.mode else {
                return Ok(false);
            };
            if ex.body_sent == 0 {
                return Ok(false);
            }
            cin.consume(ex.body_sent);
            ex.body_ready -= ex.body_sent;
            ex.body_sent = 0;
            ex.replayable = false;
        }
        match self.client.read(cin.space()) {
            Io::Bytes(n) => {
                cin.fill(n);
                Ok(true)
            }
            Io::Eof => {
                self.client.eof = true;
                if matches!(&self.mode, Mode::Exchange(ex) if !ex.req_body.is_done()) {
                    debug!("{}: client closed in the middle of a request body", self.peer());
                    return Err(Closed);
                }
                Ok(true)
            }
            Io::Blocked => Ok(false),
            Io::Retry => Ok(true),
            Io::Failed(e) if e.kind() == io::ErrorKind::InvalidData && self.client.is_tls() => {
                // A bad handshake (an old protocol, plain HTTP on the TLS port, garbage).
                cx.metrics.tls_handshakes_failed += 1;
                let peer = self.peer();
                let Some(plain) = self.client.plain_http() else {
                    info_noisy!(Noisy::TlsHandshake, "{peer}: {e}; closed");
                    return Err(Closed);
                };
                info_noisy!(Noisy::TlsHandshake, "{peer}: plain HTTP sent to the TLS port; answered 400; closed");
                self.answer(cx, 400, local::PLAIN_HTTP_ON_TLS, false, plain.head);
                Ok(true)
            }
            Io::Failed(e) => {
                debug!("{}: client read failed: {e}", self.peer());
                Err(Closed)
            }
        }
    }

    /// Drops the rest of a request body whose exchange ended before it (the target answered
    /// early), so that it is never taken for a request; past `DISCARD_LIMIT` the connection
    /// closes instead.
    fn discard_body(&mut self, cx: &mut Ctx<'_>) -> Step {
        let (Mode::Discard(ex), Some(cin)) = (&mut self.mode, self.cin.as_mut()) else {
            return Ok(false);
        };
        if cin.is_empty() {
            return Ok(false);
        }
        let progress = ex.req_body.advance(cin.data(), HttpError::BadRequest);
        let used = progress.map_or(0, |p| p.used);
        cin.consume(used);
        let over = used as u64 > ex.discard_budget;
        ex.discard_budget = ex.discard_budget.saturating_sub(used as u64);
        let peer = self.client.peer();
        match progress {
            Ok(p) if p.done => self.owes_body = false,
            Ok(_) if !over => return Ok(used > 0),
            Ok(_) => debug!("{peer}: more than {DISCARD_LIMIT} bytes of an unread request body; closing"),
            Err(e) => debug!("{peer}: the rest of a request body is malformed ({e}); closing"),
        }
        self.close_after |= self.owes_body;
        if let Mode::Discard(ex) = std::mem::replace(&mut self.mode, Mode::Waiting) {
            cx.exchanges.recycle(ex);
        }
        Ok(true)
    }

    /// The connection is to close. If the client may still be sending (an unfinished body,
    /// unread bytes), shut our side first and read until the client closes or `LINGER_MS`
    /// pass: closing with unread data sends a reset, which can destroy the response in the
    /// client's receive buffer before it reads it (nginx's lingering close).
    fn close_or_linger(&mut self, cx: &mut Ctx<'_>) -> Step {
        if !self.client.finish_tls() {
            // TLS records of the last answer, and the close_notify after them, are still on
            // their way: close once they are out.
            return Ok(false);
        }
        let unread = self.owes_body || self.client.readable() || self.cin.as_ref().is_some_and(|b| !b.is_empty());
        if self.client.eof || !unread || self.client.shutdown_write().is_err() {
            return Err(Closed);
        }
        if let Mode::Discard(ex) = std::mem::replace(&mut self.mode, Mode::Linger) {
            cx.exchanges.recycle(ex);
        }
        if let Some(cin) = self.cin.as_mut() {
            cin.clear();
        }
        Ok(true)
    }

    /// Reads and drops what a lingering client sends; its close ends the session.
    fn linger(&mut self, cx: &mut Ctx<'_>) -> Step {
        let cin = buffer::ensure(&mut self.cin, cx.buffers);
        match self.client.read(cin.space()) {
            Io::Bytes(_) | Io::Retry => Ok(true),
            Io::Blocked => Ok(false),
            Io::Eof | Io::Failed(_) => Err(Closed),
        }
    }

    /// Parses the next request head in `cin`, if a whole one is there, and sends it on its way.
    fn start_request(&mut self, cx: &mut Ctx<'_>) -> Step {
        let Some(cin) = self.cin.as_mut().filter(|b| !b.is_empty()) else {
            return Ok(false);
        };
        if self.close_after || self.cout.as_ref().is_some_and(|b| !b.is_empty()) {
            return Ok(false);
        }
        let uout = buffer::ensure(&mut self.uout, cx.buffers);
        uout.clear();
        let seq = *cx.seq;
        let id = request_id(cx.id_prefix, seq);
        let fwd = Forwarding {
            client_ip: self.client.peer().ip(),
            path_prefix: cx.config.path_prefix(),
            request_id: &id,
            upgrades: &cx.config.upgrade_protocols,
            tls: self.client.is_tls(),
        };
        let max_head = cx.config.limits.max_request_head;
        let limit = cin.len().min(max_head);
        let head = match http::parse_request(&cin.data()[..limit], &fwd, uout.space()) {
            Ok(Some(head)) => head,
            Ok(None) if limit < max_head && !self.client.eof => return Ok(false),
            Ok(None) if self.client.eof => {
                debug!("{}: client closed in the middle of a request head", self.client.peer());
                return Err(Closed);
            }
            Ok(None) => return Ok(self.reject(cx, HttpError::HeadTooLarge)),
            Err(e) => return Ok(self.reject(cx, e)),
        };
        if let (BodyKind::Length(n), Some(max)) = (head.body, cx.config.limits.max_body_size) {
            if n > max {
                return Ok(self.reject(cx, HttpError::BodyTooLarge));
            }
        }
        cin.consume(head.head_len);
        uout.fill(head.out_len);
        let bulk_upload =
            matches!(head.body, BodyKind::Chunked) || matches!(head.body, BodyKind::Length(n) if n > BULK_BODY);
        if bulk_upload {
            // A bulk request body: fewer, larger reads and writes, as for bulk responses.
            buffer::enlarge(&mut self.cin, cx.buffers);
        }
        *cx.seq += 1;
        let mut exchange = Exchange::new(cx.link.next_seq(), cx.now, head, cx.config.limits.chunk_limits);
        if cx.config.balancing.policy == Policy::Hash {
            exchange.key = request_key(&cx.config.balancing.hash_key, self.client.peer().ip(), uout.data());
        }
        self.mode = Mode::Exchange(cx.exchanges.fill(exchange));
        self.send_to_target(cx, false)?;
        Ok(true)
    }

    /// Answers a request the proxy will not forward, and closes after: what follows it cannot
    /// be trusted.
    fn reject(&mut self, cx: &mut Ctx<'_>, e: HttpError) -> Moved {
        warn_noisy!(Noisy::BadRequest, "{}: {e} -> {}", self.peer(), e.status());
        self.respond_local(cx, e.status(), http::reason(e.status()), false);
        true
    }

    /// Sends the exchange to a target: the same one again over a fresh connection after a
    /// stale pooled one, otherwise the balancer's pick among live targets not tried yet. A
    /// target that fails before any packet leaves (no address, a socket error) is counted and
    /// the next one tried, within the retry budget.
    fn send_to_target(&mut self, cx: &mut Ctx<'_>, mut same_target: bool) -> Result<(), Closed> {
        // Idle upstream connections were closed to make room for this request's connect.
        let mut shed = false;
        loop {
            let Mode::Exchange(ex) = &mut self.mode else {
                return Ok(());
            };
            let fail_open = cx.config.balancing.all_down == AllDown::TryAll;
            let picked = match same_target {
                true => Some(ex.target),
                false => {
                    let request = Request { seq: ex.seq, key: ex.key, tried: &ex.tried, now: cx.now };
                    cx.balancer.pick(cx.targets, &request, fail_open)
                }
            };
            let Some(target) = picked else {
                let keep = ex.client_keep_alive;
                if ex.timeouts > 0 {
                    // A target is slow, not gone: that is a timeout, not the all-down answer.
                    let (peer, seq) = (self.client.peer(), ex.seq);
                    warn_noisy!(
                        Noisy::NoTarget,
                        "{peer}: request #{seq} timed out and no other live target is left -> 504"
                    );
                    self.respond_local(cx, 504, http::reason(504), keep);
                } else {
                    warn_noisy!(Noisy::NoTarget, "{}: no live target left for request #{}", self.client.peer(), ex.seq);
                    self.respond_local(cx, cx.config.balancing.all_down_status, local::ALL_DOWN, keep);
                }
                return Ok(());
            };
            ex.target = target;
            ex.attempts += 1;
            if !same_target {
                if let Some(conn) = cx.upstreams.checkout(target, self.key, !ex.head.idempotent) {
                    self.attach(cx, conn);
                    return Ok(());
                }
            }
            let failure = match cx.targets.addr(target) {
                None => Failure::Unresolved,
                Some(addr) => match cx.upstreams.connect(cx.registry, target, addr, self.key, upstream_room(cx)) {
                    Ok(conn) => {
                        self.attach(cx, conn);
                        return Ok(());
                    }
                    Err(e) => match LocalError::of(&e) {
                        None => Failure::Connect(e.kind()),
                        Some(local) => {
                            cx.metrics.local_error(local);
                            // The pool's idle connections hold descriptors too: closing some
                            // may make room, once.
                            let keep = cx.upstreams.len().saturating_sub(SHED);
                            if local.wants_descriptors() && !shed && cx.upstreams.shed_idle(keep) > 0 {
                                (shed, same_target) = (true, true);
                                ex.attempts -= 1;
                                continue;
                            }
                            self.out_of_resources(cx, target, &e);
                            return Ok(());
                        }
                    },
                },
            };
            ex.tried.insert(target);
            ex.trace.push(target, Outcome::Failed(failure));
            cx.target_failed(target, failure);
            if !budget(cx).allows(ex.attempts, cx.now.saturating_sub(ex.started)) {
                warn_noisy!(
                    Noisy::TargetFailed,
                    "{}: target {} {failure}; retry budget spent -> 502",
                    self.client.peer(),
                    cx.targets.url(target)
                );
                self.respond_local(cx, 502, http::reason(502), false);
                return Ok(());
            }
            same_target = false;
        }
    }

    /// The upstream connection now serves this session's request: it counts as in flight on
    /// its target (for `least_conn` and `p2c`) until `detach`.
    fn attach(&mut self, cx: &mut Ctx<'_>, conn: UpstreamConn) {
        cx.targets.attempt_started(conn.target);
        self.up = Some(conn);
    }

    fn detach(&mut self, cx: &mut Ctx<'_>) -> Option<UpstreamConn> {
        let up = self.up.take()?;
        cx.targets.attempt_ended(up.target);
        Some(up)
    }

    /// A non-blocking connect finished, one way or the other.
    fn check_connect(&mut self, cx: &mut Ctx<'_>) -> Step {
        let Some(up) = self.up.as_mut().filter(|up| !up.connected) else {
            return Ok(false);
        };
        match up.ready.connect_outcome(&up.stream) {
            Connect::Done => {
                up.connected = true;
                // Best effort: a failure here only costs latency.
                let _ = up.stream.set_nodelay(true);
                Ok(true)
            }
            Connect::Pending => Ok(false),
            Connect::Failed(e) => match LocalError::of(&e) {
                None => self.attempt_failed(cx, Failure::Connect(e.kind())),
                Some(local) => {
                    cx.metrics.local_error(local);
                    if let Some(up) = self.detach(cx) {
                        let target = up.target;
                        cx.upstreams.close(up);
                        self.out_of_resources(cx, target, &e);
                    }
                    Ok(true)
                }
            },
        }
    }

    fn classify_request_body(&mut self, cx: &mut Ctx<'_>) -> Step {
        let (Mode::Exchange(ex), Some(cin)) = (&mut self.mode, self.cin.as_mut()) else {
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
            Err(e) => return self.refuse_exchange(cx, e.status(), &e.to_string()),
        };
        ex.body_ready += progress.used;
        ex.body_total += progress.used as u64;
        if cx.config.limits.max_body_size.is_some_and(|max| ex.body_total > max) {
            return self.refuse_exchange(cx, 413, "request body too large");
        }
        Ok(moved || progress.used > 0 || progress.done)
    }

    /// Ends an exchange the client got wrong: its status if the client has seen nothing of a
    /// response yet, otherwise a close. Either way the connection closes after.
    fn refuse_exchange(&mut self, cx: &mut Ctx<'_>, status: u16, why: &str) -> Step {
        warn_noisy!(Noisy::BadRequest, "{}: {why} -> {status}", self.peer());
        if matches!(&self.mode, Mode::Exchange(ex) if ex.resp_started) {
            return Err(Closed);
        }
        self.respond_local(cx, status, http::reason(status), false);
        Ok(true)
    }

    fn write_upstream(&mut self, cx: &mut Ctx<'_>) -> Step {
        let (Mode::Exchange(ex), Some(up), Some(uout)) = (&mut self.mode, self.up.as_mut(), self.uout.as_ref()) else {
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
                debug!("{}: target {} stopped reading the request: {e}", self.client.peer(), cx.targets.url(up.target));
                ex.upload_cut = true;
                up.ready.read = true;
                Ok(true)
            }
        }
    }

    fn read_upstream(&mut self, cx: &mut Ctx<'_>) -> Step {
        let (Mode::Exchange(ex), Some(up)) = (&mut self.mode, self.up.as_mut()) else {
            return Ok(false);
        };
        if !up.connected || !up.ready.read || ex.upstream_eof {
            return Ok(false);
        }
        let uin = buffer::ensure(&mut self.uin, cx.buffers);
        match up.ready.read(&mut up.stream, uin.space()) {
            Io::Bytes(n) => {
                uin.fill(n);
                Ok(true)
            }
            Io::Eof => {
                ex.upstream_eof = true;
                self.upstream_closed(cx)
            }
            Io::Blocked => Ok(false),
            Io::Retry => Ok(true),
            // A reset may follow an answer already read (a target that closed with our request
            // body unread): let `parse_response_head` look at what came before failing.
            Io::Failed(_) if matches!(ex.resp, Resp::Head) && !uin.is_empty() => {
                ex.upstream_eof = true;
                Ok(true)
            }
            Io::Failed(e) if matches!(ex.resp, Resp::Head) => self.attempt_failed(cx, Failure::Reset(e.kind())),
            Io::Failed(e) => {
                let why = if e.kind() == io::ErrorKind::ConnectionReset {
                    "reset mid-response"
                } else {
                    "failed mid-response"
                };
                self.broken_response(cx, why)
            }
        }
    }

    /// The target closed its side: the end of a close-delimited body, or a failure.
    fn upstream_closed(&mut self, cx: &mut Ctx<'_>) -> Step {
        let Mode::Exchange(ex) = &self.mode else {
            return Ok(false);
        };
        match &ex.resp {
            // A head may still wait in `uin` behind a 1xx: `parse_response_head` decides.
            Resp::Head if self.uin.as_ref().is_some_and(|b| !b.is_empty()) => Ok(true),
            Resp::Head => self.attempt_failed(cx, Failure::Eof),
            Resp::Body(framer) if framer.until_close() || framer.is_done() => Ok(true),
            Resp::Body(_) => self.broken_response(cx, "closed before the response body ended"),
        }
    }

    fn parse_response_head(&mut self, cx: &mut Ctx<'_>) -> Step {
        let (Mode::Exchange(ex), Some(uin)) = (&mut self.mode, self.uin.as_mut()) else {
            return Ok(false);
        };
        if !matches!(ex.resp, Resp::Head) {
            return Ok(false);
        }
        if uin.is_empty() {
            // The target closed after an interim response, with no final one behind it.
            return if ex.upstream_eof { self.attempt_failed(cx, Failure::Eof) } else { Ok(false) };
        }
        let cout = buffer::ensure(&mut self.cout, cx.buffers);
        if !cout.is_empty() {
            return Ok(false);
        }
        let ctx = ResponseContext {
            request_is_head: ex.head.is_head,
            client_minor: ex.head.minor,
            client_keep_alive: ex.client_keep_alive && !cx.draining && !self.client.eof && !ex.body_withheld(),
            upgrade_offer: self
                .uout
                .as_ref()
                .filter(|_| ex.head.upgrade)
                .and_then(|h| http::field_value(h.data(), b"upgrade")),
        };
        let head = match http::parse_response(uin.data(), &ctx, cout.space()) {
            Ok(Some(head)) => head,
            Ok(None) if ex.upstream_eof => return self.attempt_failed(cx, Failure::Eof),
            Ok(None) if uin.has_space() => return Ok(false),
            Ok(None) => return self.bad_gateway(cx, HttpError::BadResponse("head too large")),
            Err(e) => return self.bad_gateway(cx, e),
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
        if matches!(head.body, BodyKind::Chunked | BodyKind::UntilClose)
            || matches!(head.body, BodyKind::Length(n) if n > BULK_BODY)
        {
            // A bulk body: fewer, larger reads and writes (and wake-ups of the reader).
            buffer::enlarge(&mut self.uin, cx.buffers);
        }
        if head.switching {
            ex.status = head.status;
            ex.answered = Some(cx.now);
            ex.trace.push(ex.target, Outcome::Ok);
            cx.target_answered(ex.target);
            return self.start_tunnel(cx);
        }
        ex.resp = Resp::Body(BodyFramer::with_limits(head.body, cx.config.limits.chunk_limits));
        ex.client_keep_alive = head.client_keep_alive;
        ex.upstream_reusable = head.upstream_reusable;
        ex.answered_early = !ex.request_sent(self.uout.as_ref().map_or(0, Buffer::len));
        // The response has begun: the request will not be replayed, so its bytes can go.
        if let Some(cin) = self.cin.as_mut() {
            cin.consume(ex.body_sent);
        }
        ex.body_ready -= ex.body_sent;
        ex.body_sent = 0;
        ex.replayable = false;
        ex.status = head.status;
        ex.answered = Some(cx.now);
        ex.trace.push(ex.target, Outcome::Ok);
        cx.target_answered(ex.target);
        Ok(true)
    }

    /// The target's response cannot be forwarded: 502 if the client has seen nothing yet.
    fn bad_gateway(&mut self, cx: &mut Ctx<'_>, e: HttpError) -> Step {
        let Mode::Exchange(ex) = &mut self.mode else {
            return Err(Closed);
        };
        warn_noisy!(Noisy::TargetFailed, "{}: target {}: {e} -> 502", self.client.peer(), cx.targets.url(ex.target));
        ex.trace.push(ex.target, Outcome::BadResponse);
        if ex.resp_started {
            return Err(Closed);
        }
        self.respond_local(cx, 502, http::reason(502), false);
        Ok(true)
    }

    /// The target's response broke after its head arrived: a 502 if the client has seen none of
    /// it yet, otherwise a close, which shows a framed response to the client as cut short.
    fn broken_response(&mut self, cx: &mut Ctx<'_>, why: impl std::fmt::Display) -> Step {
        let Mode::Exchange(ex) = &mut self.mode else {
            return Err(Closed);
        };
        let url = cx.targets.url(ex.target);
        if ex.resp_started {
            warn_noisy!(Noisy::TargetFailed, "{}: target {url} {why}; closing", self.client.peer());
            return Err(Closed);
        }
        warn_noisy!(Noisy::TargetFailed, "{}: target {url} {why} -> 502", self.client.peer());
        ex.trace.set_last(Outcome::BadResponse);
        self.respond_local(cx, 502, http::reason(502), false);
        Ok(true)
    }

    fn classify_response_body(&mut self, cx: &mut Ctx<'_>) -> Step {
        let (Mode::Exchange(ex), Some(uin)) = (&mut self.mode, self.uin.as_ref()) else {
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
            Err(e) => self.broken_response(cx, e),
        }
    }

    fn write_client(&mut self, cx: &mut Ctx<'_>) -> Step {
        let head = self.cout.as_ref().map_or(&[][..], Buffer::data);
        let ready = match &self.mode {
            Mode::Exchange(ex) => ex.resp_forwardable(),
            _ => 0,
        };
        let body = self.uin.as_ref().map_or(&[][..], |uin| &uin.data()[..ready]);
        match self.client.write(head, body, cx.record) {
            Io::Bytes(n) => {
                let from_head = n.min(head.len());
                if let Some(cout) = self.cout.as_mut() {
                    cout.consume(from_head);
                }
                if let Mode::Exchange(ex) = &mut self.mode {
                    if let Some(uin) = self.uin.as_mut() {
                        uin.consume(n - from_head);
                        ex.resp_ready -= n - from_head;
                        ex.sent_bytes += (n - from_head) as u64;
                    }
                    if matches!(ex.resp, Resp::Body(_)) {
                        ex.resp_started = true;
                    }
                }
                Ok(true)
            }
            Io::Blocked | Io::Eof => Ok(false),
            Io::Retry => Ok(true),
            Io::Failed(e) => {
                debug!("{}: client write failed: {e}", self.peer());
                Err(Closed)
            }
        }
    }

    /// Ends the exchange once its response is fully delivered.
    fn finish_if_complete(&mut self, cx: &mut Ctx<'_>) -> Step {
        let Mode::Exchange(ex) = &self.mode else {
            return Ok(false);
        };
        if !ex.response_complete() || self.cout.as_ref().is_some_and(|b| !b.is_empty()) {
            return Ok(false);
        }
        let keep_alive = ex.client_keep_alive;
        self.end_exchange(cx, None, keep_alive);
        Ok(true)
    }

    /// The one exit of every exchange, whatever ends it. It logs the outcome and releases the
    /// upstream connection: back to the pool when its response was completely framed, the
    /// whole request went out and nothing followed, closed otherwise. Its buffers' contents go,
    /// so that `settle` can return them to the pool (an idle keep-alive connection holds no
    /// buffer), and so do its request body bytes at the front of `cin`. A body the client has
    /// not finished sending is then read and dropped (`Mode::Discard`) or the connection
    /// closes: it never becomes a request. `status` replaces the exchange's own (a local
    /// answer); `keep_alive` says whether the client connection may carry another request.
    fn end_exchange(&mut self, cx: &mut Ctx<'_>, status: Option<u16>, keep_alive: bool) {
        // Only an exchange ends here: a discard, linger or tunnel keeps its mode for teardown.
        if !matches!(self.mode, Mode::Exchange(_)) {
            return;
        }
        let Mode::Exchange(ex) = std::mem::replace(&mut self.mode, Mode::Waiting) else {
            return;
        };
        self.served += 1;
        if let Some(up) = self.detach(cx) {
            let request_sent = ex.request_sent(self.uout.as_ref().map_or(0, Buffer::len));
            let uin_clean = self.uin.as_ref().is_none_or(Buffer::is_empty);
            let mut stray = status.is_none() && !uin_clean;
            let mut reusable = status.is_none()
                && ex.response_complete()
                && ex.upstream_reusable
                && !ex.answered_early
                && request_sent
                && uin_clean
                && !ex.upstream_eof
                && !cx.draining;
            // A last read that filled the buffer did not show the socket drained, and no event
            // will tell of bytes already behind the response: they have to be looked for.
            if reusable && up.ready.read {
                match up.peek() {
                    Peek::Quiet => {}
                    peeked => (reusable, stray) = (false, peeked == Peek::Stray),
                }
            }
            if reusable {
                cx.upstreams.checkin(up, cx.config.limits.max_idle_upstream);
            } else {
                if stray {
                    let url = cx.targets.url(ex.target);
                    cx.metrics.stray_responses += 1;
                    warn_noisy!(
                        Noisy::StrayBytes,
                        "target {url} sent bytes nobody asked for, after its response; closed the connection"
                    );
                }
                cx.upstreams.close(up);
            }
        }
        self.record(cx, &ex, status);
        for held in [self.uout.as_mut(), self.uin.as_mut()].into_iter().flatten() {
            held.clear();
        }
        if let Some(cin) = self.cin.as_mut() {
            cin.consume(ex.body_ready.min(cin.len()));
        }
        self.close_after |= !leaves_client_open(&ex, keep_alive);
        if !ex.req_body.is_done() {
            self.owes_body = true;
            if !self.close_after {
                let mut ex = ex;
                ex.discard_budget = DISCARD_LIMIT;
                self.mode = Mode::Discard(ex);
                return;
            }
        }
        cx.exchanges.recycle(ex);
    }

    /// A connection attempt or an exchange with a target failed before the client saw any of
    /// the response: count it, then replay elsewhere or answer, as `retry::decide` says.
    fn attempt_failed(&mut self, cx: &mut Ctx<'_>, failure: Failure) -> Step {
        if !matches!(self.mode, Mode::Exchange(_)) {
            return Err(Closed);
        }
        let Some(up) = self.detach(cx) else {
            return Err(Closed);
        };
        let Mode::Exchange(ex) = &mut self.mode else {
            cx.upstreams.close(up);
            return Err(Closed);
        };
        // A pooled connection that ended without a byte of answer: the target may have closed
        // it while idle (a keep-alive timeout whose FIN was still on its way), so it is not
        // blamed. Only an idempotent request calls it stale and goes again; for another the
        // trace keeps the EOF or reset, since the target may have had it.
        let pooled_race = up.reused && matches!(failure, Failure::Eof | Failure::Reset(_));
        let stale_pooled = pooled_race && ex.head.idempotent;
        let nothing_sent = !up.connected || (ex.head_sent == 0 && ex.body_sent == 0);
        cx.upstreams.close(up);
        if failure == Failure::ResponseTimeout {
            ex.timeouts = ex.timeouts.saturating_add(1);
        }
        let attempt = Attempt {
            failure,
            stale_pooled,
            nothing_sent,
            idempotent: ex.head.idempotent,
            replayable: ex.replayable,
            response_started: ex.resp_started,
            attempts: ex.attempts,
            timeouts: ex.timeouts,
            elapsed_ms: cx.now.saturating_sub(ex.started),
        };
        let decision = retry::decide(&attempt, budget(cx));
        let url = cx.targets.url(ex.target);
        if decision == Decision::Close {
            warn_noisy!(
                Noisy::TargetFailed,
                "{}: target {url} failed mid-response ({failure}); closing",
                self.client.peer()
            );
            return Err(Closed);
        }
        if stale_pooled {
            ex.trace.push(ex.target, Outcome::Stale);
        } else {
            ex.tried.insert(ex.target);
            ex.trace.push(ex.target, Outcome::Failed(failure));
            if pooled_race {
                // Not the target's fault as far as anyone can tell: no health change.
            } else if failure == Failure::ResponseTimeout {
                // One slow request says little about its target: a probe decides.
                cx.target_suspect(ex.target);
            } else {
                cx.target_failed(ex.target, failure);
            }
        }
        match decision {
            Decision::Retry { same_target } => {
                debug!("{}: request #{} retried after {failure}", self.client.peer(), ex.seq);
                ex.rewind();
                if let Some(uin) = self.uin.as_mut() {
                    uin.clear();
                }
                self.send_to_target(cx, same_target)?;
            }
            Decision::Answer { status, why } => {
                warn_noisy!(
                    Noisy::TargetFailed,
                    "{}: target {} {failure}; {why} -> {status}",
                    self.client.peer(),
                    cx.targets.url(ex.target)
                );
                self.respond_local(cx, status, http::reason(status), false);
            }
            Decision::Close => return Err(Closed),
        }
        Ok(true)
    }
}

/// Whether the client connection may carry another request once `ex` ends: its answer allows
/// it (`keep_alive`), no body may still come that could not be told from the next request, and
/// an unfinished body is short enough to read and drop.
fn leaves_client_open(ex: &Exchange, keep_alive: bool) -> bool {
    keep_alive
        && !ex.body_withheld()
        && (ex.req_body.is_done() || ex.req_body.length_left().is_none_or(|left| left <= DISCARD_LIMIT))
}

/// A request id for a request that came without one: 32 hex digits, the process's random part
/// and the request's sequence number, so ids never repeat within a run and rarely across runs.
fn request_id(prefix: &[u8; 16], seq: u64) -> [u8; 32] {
    let mut id = [0u8; 32];
    id[..16].copy_from_slice(prefix);
    id[16..].copy_from_slice(&super::hex(seq));
    id
}

/// The `hash` policy's key for a request, from the head as forwarded. A request without the
/// header or cookie named hashes as the empty key: all such requests go to one target.
fn request_key(key: &HashKey, client: std::net::IpAddr, head: &[u8]) -> u64 {
    let fnv = crate::balance::hash::fnv1a;
    match key {
        HashKey::ClientIp => match client {
            std::net::IpAddr::V4(ip) => fnv(&ip.octets()),
            std::net::IpAddr::V6(ip) => fnv(&ip.octets()),
        },
        HashKey::Header(name) => fnv(http::field_value(head, name.as_bytes()).unwrap_or(b"")),
        HashKey::Cookie(name) => {
            fnv(http::field_value(head, b"cookie").and_then(|c| cookie(c, name.as_bytes())).unwrap_or(b""))
        }
        HashKey::Path => {
            let target = head.split(|&b| b == b' ').nth(1).unwrap_or(b"");
            fnv(target.split(|&b| b == b'?').next().unwrap_or(b""))
        }
    }
}

/// The value of cookie `name` in a `Cookie` field (`a=1; b=2`).
fn cookie<'h>(field: &'h [u8], name: &[u8]) -> Option<&'h [u8]> {
    field.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (&pair[..eq] == name).then(|| &pair[eq + 1..])
    })
}

/// Upstream connections this worker may hold, in use and idle, before a new one closes an
/// idle one: its share of `max_connections`, which was fitted to the descriptor limit.
fn upstream_room(cx: &Ctx<'_>) -> usize {
    cx.config.limits.max_connections.div_ceil(cx.link.count().max(1))
}

/// The retry budget, from the config.
fn budget(cx: &Ctx<'_>) -> Budget {
    let retries = cx.config.balancing.retries.unwrap_or_else(|| cx.targets.len());
    Budget { retries, timeout_ms: millis(cx.config.timeouts.retry) }
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
        assert!(size <= 320, "Session is {size} bytes");
    }
}
