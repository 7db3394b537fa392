//! The admin listener: `/metrics`, `/status` and `/status.json`, `/livez`, `/readyz`. It runs in
//! the same loop as the proxy, on its own port, with its own small connection limit, and never
//! forwards anything. Its answers are rendered from the loop's counters when asked for, so the
//! proxy's hot path pays nothing for them.
//!
//! An admin connection reads one request head at a time (8 KiB at most), answers it whole, and
//! keeps the connection for the next one if the client wants that (the status page polls every
//! second). It is closed after 10 s of silence, as a malformed or oversized request is.

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
use std::net::SocketAddr;

/// The admin listener's number in its token.
pub const ADMIN_LISTENER: usize = 1;

/// Longest admin request head.
const MAX_HEAD: usize = 8 * 1024;

/// How long an admin connection may stay silent.
const IDLE_MS: u64 = 10_000;

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
    timer: TimerId,
}

pub struct Admin {
    listener: TcpListener,
    addr: SocketAddr,
    conns: Slab<Conn>,
}

impl Admin {
    pub fn bind(addr: SocketAddr, env: &Env) -> io::Result<Admin> {
        let mut listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        env.registry.register(&mut listener, token(Kind::Listener(ADMIN_LISTENER)), Interest::READABLE)?;
        Ok(Admin { listener, addr, conns: Slab::new() })
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

    /// Accepts until the backlog is empty; over the limit, connections are closed at once.
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
                debug!("admin: {peer} turned away over admin_max_connections");
                continue;
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
                timer,
            });
        }
    }

    /// Serves what an event allows. The view borrows the loop's state, so the connection's
    /// timer is re-armed after, by `rearm` with the returned `Touched`.
    pub fn on_event(&mut self, key: usize, event: &mio::event::Event, view: &View<'_>) -> Touched {
        let Some(conn) = self.conns.get_mut(key) else {
            return Touched::Gone;
        };
        conn.ready.update(event);
        let mut open = serve(conn, view).is_ok();
        if open {
            let interest = if conn.sent < conn.output.len() {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            open = view.env.registry.reregister(&mut conn.stream, token(Kind::Admin(key)), interest).is_ok();
        }
        match open {
            true => Touched::Open(key),
            false => self.conns.try_remove(key).map_or(Touched::Gone, |conn| Touched::Closed(conn.timer)),
        }
    }

    /// Restarts the idle timer of a connection that moved, or cancels that of one that closed.
    pub fn rearm(&mut self, touched: Touched, env: &mut Env) {
        match touched {
            Touched::Open(key) => {
                if let Some(conn) = self.conns.get_mut(key) {
                    env.wheel.cancel(conn.timer);
                    conn.timer = env.wheel.insert(env.now + IDLE_MS, Timer::Admin(key));
                }
            }
            Touched::Closed(timer) => env.wheel.cancel(timer),
            Touched::Gone => {}
        }
    }

    /// A connection stayed silent too long.
    pub fn on_timer(&mut self, key: usize) {
        if self.conns.try_remove(key).is_some() {
            debug!("admin: connection idle for {IDLE_MS} ms, closed");
        }
    }
}

/// What became of an admin connection after an event.
pub enum Touched {
    Open(usize),
    /// Closed: its timer is to be cancelled.
    Closed(TimerId),
    Gone,
}

/// Why a connection must close now.
struct Done;

/// Writes what is pending, reads, and answers every whole request that came.
fn serve(conn: &mut Conn, view: &View<'_>) -> Result<(), Done> {
    loop {
        while conn.sent < conn.output.len() {
            match conn.ready.write(&mut conn.stream, &conn.output[conn.sent..], &[]) {
                Io::Bytes(n) => conn.sent += n,
                Io::Retry => {}
                Io::Blocked | Io::Eof => return Ok(()),
                Io::Failed(_) => return Err(Done),
            }
        }
        if conn.close_after {
            return Err(Done);
        }
        conn.output.clear();
        conn.sent = 0;
        if answer_one(conn, view) {
            continue;
        }
        let mut chunk = [0u8; 2048];
        match conn.ready.read(&mut conn.stream, &mut chunk) {
            Io::Bytes(n) => conn.input.extend_from_slice(&chunk[..n]),
            Io::Retry => {}
            Io::Blocked => return Ok(()),
            Io::Eof | Io::Failed(_) => return Err(Done),
        }
    }
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
    let close = status.is_some() || request.version == Some(0) || wants_close(request.headers);
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
