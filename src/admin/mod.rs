//! The admin listener: `/metrics`, `/status` and `/status.json`, `/livez`, `/readyz`. It runs in
//! the same loop as the proxy, on its own port, with its own small connection limit, and never
//! forwards anything. Its answers are rendered from the loop's counters when asked for, so the
//! proxy's hot path pays nothing for them.
//!
//! An admin connection reads one request head at a time (8 KiB at most), answers it whole, and
//! keeps the connection for the next one if the client wants that (the status page polls every
//! second). Each request must come within 10 s of the connection's start or the last answer,
//! however slowly its bytes trickle in; when the connection limit is reached, the connection
//! that has waited longest makes room for the new one, so a healthcheck always gets in. One
//! event answers at most `TURN` requests, then the connection waits for the loop's next pass,
//! as a proxy session does: a client pipelining requests cannot hold the loop. A connection that
//! must close after its answer shuts its side and reads what the client still sends for a
//! moment, so the answer is not destroyed by a reset.

mod status;

use crate::proxy::{Env, Proxy};
use crate::runtime::ready::{Io, Ready};
use crate::runtime::timer::Timer;
use crate::runtime::token::{token, Kind};
use crate::runtime::wheel::TimerId;
use log::{debug, warn};
use mio::net::{TcpListener, TcpStream};
use mio::Interest;
use slab::Slab;
use std::io;
use std::net::{Shutdown, SocketAddr};

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
    output: Vec<u8>,
    sent: usize,
    /// Close once `output` is sent.
    close_after: bool,
    /// Our side is shut: what the client sends is dropped until it closes.
    lingering: bool,
    timer: TimerId,
    /// When the connection started waiting for its current request (loop ms).
    waiting_since: u64,
}

pub struct Admin {
    listener: TcpListener,
    addr: SocketAddr,
    conns: Slab<Conn>,
    /// Connections that used up their turn with work left.
    requeued: Vec<usize>,
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
        let mut listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        env.registry.register(&mut listener, token(Kind::Listener(ADMIN_LISTENER)), Interest::READABLE)?;
        Ok(Admin { listener, addr, conns: Slab::new(), requeued: Vec::new() })
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
    }

    /// Accepts until the backlog is empty. At the limit, the connection that has waited
    /// longest for a request is closed to make room.
    pub fn accept(&mut self, env: &mut Env) {
        loop {
            let (mut stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("admin accept failed: {e}");
                    return;
                }
            };
            if self.conns.len() >= env.config.admin_max_connections {
                let oldest = self.conns.iter().min_by_key(|(_, c)| c.waiting_since).map(|(key, _)| key);
                if let Some(conn) = oldest.and_then(|key| self.conns.try_remove(key)) {
                    debug!("admin: admin_max_connections reached; closed the connection waiting longest");
                    env.wheel.cancel(conn.timer);
                }
            }
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if let Err(e) = env.registry.register(&mut stream, token(Kind::Admin(key)), Interest::READABLE) {
                warn!("admin: cannot register {peer}: {e}");
                continue;
            }
            let timer = env.wheel.insert(env.now + IDLE_MS, Timer::Admin(key));
            entry.insert(Conn {
                stream,
                ready: Ready::default(),
                input: Vec::new(),
                output: Vec::new(),
                sent: 0,
                close_after: false,
                lingering: false,
                timer,
                waiting_since: env.now,
            });
        }
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

    pub fn has_requeued(&self) -> bool {
        !self.requeued.is_empty()
    }

    /// Gives the connections that used up their turn another one.
    pub fn pump_requeued(&mut self, view: &View<'_>) -> Vec<Touched> {
        let keys = std::mem::take(&mut self.requeued);
        keys.into_iter().map(|key| self.turn(key, view)).collect()
    }

    /// One turn of one connection.
    fn turn(&mut self, key: usize, view: &View<'_>) -> Touched {
        let Some(conn) = self.conns.get_mut(key) else {
            return Touched::Gone;
        };
        let was_lingering = conn.lingering;
        let outcome = match conn.lingering {
            true => linger(conn),
            false => serve(conn, view),
        };
        let mut open = outcome.is_ok();
        if open {
            let interest = if conn.sent < conn.output.len() {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            open = view.env.registry.reregister(&mut conn.stream, token(Kind::Admin(key)), interest).is_ok();
        }
        let Turn { answered, more } = match outcome {
            Ok(turn) if open => turn,
            _ => return self.conns.try_remove(key).map_or(Touched::Gone, |conn| Touched::Closed(conn.timer)),
        };
        if more {
            self.requeued.push(key);
        }
        if conn.lingering && !was_lingering {
            return Touched::Lingering(key);
        }
        if answered {
            conn.waiting_since = view.env.now;
        }
        Touched::Open { key, answered }
    }

    /// Gives a connection that answered a fresh deadline for its next request, a lingering one
    /// its short one, or cancels the timer of one that closed.
    pub fn rearm(&mut self, touched: Touched, env: &mut Env) {
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
    /// The turn ended with work left: another turn is due without a new event.
    more: bool,
}

/// Writes what is pending, reads, and answers the whole requests that came, up to `TURN`.
fn serve(conn: &mut Conn, view: &View<'_>) -> Result<Turn, Done> {
    let mut answered = 0;
    loop {
        while conn.sent < conn.output.len() {
            match conn.ready.write(&mut conn.stream, &conn.output[conn.sent..], &[]) {
                Io::Bytes(n) => conn.sent += n,
                Io::Retry => {}
                Io::Blocked | Io::Eof => return Ok(Turn { answered: answered > 0, more: false }),
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
            return linger(conn).map(|_| Turn { answered: true, more: false });
        }
        conn.output.clear();
        conn.sent = 0;
        if answered == TURN {
            return Ok(Turn { answered: true, more: true });
        }
        if answer_one(conn, view) {
            answered += 1;
            continue;
        }
        let mut chunk = [0u8; 2048];
        match conn.ready.read(&mut conn.stream, &mut chunk) {
            Io::Bytes(n) => conn.input.extend_from_slice(&chunk[..n]),
            Io::Retry => {}
            Io::Blocked => return Ok(Turn { answered: answered > 0, more: false }),
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
            Io::Blocked => return Ok(Turn { answered: false, more: false }),
            Io::Eof | Io::Failed(_) => return Err(Done),
        }
    }
    Ok(Turn { answered: false, more: true })
}

/// Answers the first request in `conn.input` if a whole head is there; whether it did.
fn answer_one(conn: &mut Conn, view: &View<'_>) -> bool {
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
        None => route(method, path, view),
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
    body: Vec<u8>,
    allow: bool,
}

impl Answer {
    fn text(status: u16, body: &str) -> Answer {
        Answer { status, content_type: "text/plain; charset=utf-8", body: body.as_bytes().to_vec(), allow: false }
    }

    fn write(&self, out: &mut Vec<u8>, head_only: bool, close: bool) {
        use std::io::Write;
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{}{}\r\n",
            self.status,
            crate::http::reason(self.status),
            self.content_type,
            self.body.len(),
            if self.allow { "Allow: GET, HEAD\r\n" } else { "" },
            if close { "Connection: close\r\n" } else { "" },
        );
        if !head_only {
            out.extend_from_slice(&self.body);
        }
    }
}

/// The admin endpoints.
fn route(method: &str, target: &str, view: &View<'_>) -> Answer {
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
            body: status::metrics(view).into_bytes(),
            allow: false,
        },
        "/status.json" => Answer {
            status: 200,
            content_type: "application/json",
            body: status::json(view).into_bytes(),
            allow: false,
        },
        "/status" | "/" => Answer {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: STATUS_PAGE.as_bytes().to_vec(),
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
