//! The prototype's target: `GET /` answers `Hello, world!`, `GET /ping/` answers 200, and every
//! 10 s it logs `<uptime> : <count>`. A few more endpoints let tests and people exercise a
//! proxy in front of it:
//!
//! - `/echo` sends the request body back, framed the way it came (Content-Length or chunked);
//! - `/bytes/N` sends N bytes with Content-Length, `/chunked/N` sends them chunked, and
//!   `/close/N` sends them delimited by closing the connection;
//! - `/status/N` answers status N with no body; `/headers` sends back the request head;
//! - `/sleep/N` answers `Hello, world!` after N milliseconds: a slow URL.
//!
//! Every response carries `X-Target: <name>`. One thread per connection keeps it simple and,
//! behind a keep-alive proxy, fast: the proxy holds a handful of connections open.

use ringproxy::http::{BodyFramer, BodyKind, HttpError};
use std::io::{self, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const USAGE: &str = "\
target-svc: the prototype's target service

Usage: target-svc [--port PORT] [--host ADDR] [--name NAME] [--delay-ms MS]

  -p, --port PORT   port to listen on (default 8080; 0 picks a free one)
      --host ADDR   address to listen on (default 0.0.0.0)
  -n, --name NAME   sent back in an X-Target header (default: $TARGET_NAME, else
                    target-PORT; Swarm sets TARGET_NAME to each task's name)
      --name-from-hostname
                    the name is $HOSTNAME: each replica of `docker compose --scale`
                    answers as its container
      --delay-ms MS wait this long before every answer but /ping/'s (a slow target for
                    the balancing benchmarks; default 0)";

struct Options {
    host: String,
    port: u16,
    name: Option<String>,
    delay: Duration,
}

fn parse_args() -> Result<Options, String> {
    let mut opts = Options { host: "0.0.0.0".into(), port: 8080, name: None, delay: Duration::ZERO };
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        let mut value = || argv.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "-p" | "--port" => opts.port = value()?.parse().map_err(|_| "--port needs a number".to_string())?,
            "--host" => opts.host = value()?,
            "-n" | "--name" => opts.name = Some(value()?),
            "--name-from-hostname" => opts.name = std::env::var("HOSTNAME").ok(),
            "--delay-ms" => {
                let ms = value()?.parse().map_err(|_| "--delay-ms needs a number".to_string())?;
                opts.delay = Duration::from_millis(ms);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(opts)
}

fn main() {
    let opts = match parse_args() {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("target-svc: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind((opts.host.as_str(), opts.port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("target-svc: cannot listen on {}:{}: {e}", opts.host, opts.port);
            std::process::exit(1);
        }
    };
    let addr = listener.local_addr().map_or_else(|_| format!("{}:{}", opts.host, opts.port), |a| a.to_string());
    let name: Arc<str> = opts
        .name
        .or_else(|| std::env::var("TARGET_NAME").ok().filter(|n| !n.is_empty()))
        .unwrap_or_else(|| format!("target-{}", addr.rsplit(':').next().unwrap_or("?")))
        .into();
    println!("target-svc {name} listening on {addr}");
    // As PID 1 in a container the default SIGTERM action does not apply: exit on it explicitly,
    // so `docker compose stop` takes milliseconds, not its 10 s grace period.
    match signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    println!("target-svc {}: signal {signal}, exiting", addr);
                    std::process::exit(0);
                }
            });
        }
        Err(e) => eprintln!("target-svc: cannot handle signals: {e}"),
    }
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let ticker = Arc::clone(&count);
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(10));
        println!("{} : {}", started.elapsed().as_secs(), ticker.load(Ordering::Relaxed));
    });
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let (name, count, delay) = (Arc::clone(&name), Arc::clone(&count), opts.delay);
        std::thread::spawn(move || {
            let peer = stream.peer_addr().ok();
            if let Err(e) = serve(stream, &name, &count, delay) {
                if !matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe) {
                    eprintln!("target-svc {name}: {peer:?}: {e}");
                }
            }
        });
    }
}

/// Bytes read from the client but not yet used.
struct Input {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Input {
    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Reads more; `false` at end of stream.
    fn fill(&mut self) -> io::Result<bool> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request head too large"));
        }
        let n = self.stream.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n > 0)
    }
}

struct Request {
    method: String,
    path: String,
    body: BodyKind,
    close: bool,
    http10: bool,
    expect_continue: bool,
    raw_head: Vec<u8>,
}

fn serve(stream: TcpStream, name: &str, count: &AtomicU64, delay: Duration) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut out = BufWriter::with_capacity(64 * 1024, stream.try_clone()?);
    let mut input = Input { stream, buf: vec![0; 64 * 1024], start: 0, end: 0 };
    loop {
        let Some(req) = read_head(&mut input)? else {
            return Ok(());
        };
        count.fetch_add(1, Ordering::Relaxed);
        if !delay.is_zero() && !req.path.starts_with("/ping") {
            std::thread::sleep(delay);
        }
        let close = respond(&req, &mut input, &mut out, name)?;
        // Flush only when no pipelined request is already waiting: one write per batch.
        if close || input.pending().is_empty() {
            out.flush()?;
        }
        if close || req.close {
            return Ok(());
        }
    }
}

fn read_head(input: &mut Input) -> io::Result<Option<Request>> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        let status = parsed.parse(input.pending()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if let httparse::Status::Complete(len) = status {
            let mut req = Request {
                method: parsed.method.unwrap_or("GET").to_owned(),
                path: parsed.path.unwrap_or("/").to_owned(),
                body: BodyKind::None,
                close: parsed.version == Some(0),
                http10: parsed.version == Some(0),
                expect_continue: false,
                raw_head: input.pending()[..len].to_vec(),
            };
            for h in parsed.headers.iter() {
                let value = String::from_utf8_lossy(h.value);
                if h.name.eq_ignore_ascii_case("content-length") {
                    req.body = BodyKind::Length(value.trim().parse().unwrap_or(0));
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked") {
                    req.body = BodyKind::Chunked;
                } else if h.name.eq_ignore_ascii_case("expect") {
                    req.expect_continue = value.eq_ignore_ascii_case("100-continue");
                } else if h.name.eq_ignore_ascii_case("connection") {
                    req.close |= value.eq_ignore_ascii_case("close");
                    req.close &= !value.eq_ignore_ascii_case("keep-alive");
                }
            }
            input.start += len;
            return Ok(Some(req));
        }
        if !input.fill()? {
            return Ok(None);
        }
    }
}

/// Writes the response; `true` when the connection must close after it.
fn respond(req: &Request, input: &mut Input, out: &mut impl Write, name: &str) -> io::Result<bool> {
    let head = req.method == "HEAD";
    let mut parts = req.path.trim_start_matches('/').splitn(2, '/');
    let (first, arg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let size = || arg.trim_end_matches('/').parse::<u64>().unwrap_or(0);
    if req.expect_continue && req.body != BodyKind::None {
        out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        out.flush()?;
    }
    if first != "echo" {
        copy_body(req.body, input, &mut io::sink())?;
    }
    match first {
        "" => fixed(out, name, "200 OK", b"Hello, world!", head)?,
        "ping" => fixed(out, name, "200 OK", b"pong", head)?,
        "sleep" => {
            std::thread::sleep(Duration::from_millis(size()));
            fixed(out, name, "200 OK", b"Hello, world!", head)?;
        }
        "headers" => fixed(out, name, "200 OK", &req.raw_head, head)?,
        "echo" => {
            let framing = match req.body {
                BodyKind::Chunked => "Transfer-Encoding: chunked".to_string(),
                BodyKind::Length(n) => format!("Content-Length: {n}"),
                _ => "Content-Length: 0".to_string(),
            };
            write!(out, "HTTP/1.1 200 OK\r\nX-Target: {name}\r\n{framing}\r\n\r\n")?;
            copy_body(req.body, input, out)?;
        }
        "bytes" => {
            write!(out, "HTTP/1.1 200 OK\r\nX-Target: {name}\r\nContent-Length: {}\r\n\r\n", size())?;
            if !head {
                pattern(out, size(), None)?;
            }
        }
        // HTTP/1.0 has no chunked framing (RFC 9112 §6.1): its clients get the bytes until close.
        "chunked" if req.http10 => {
            write!(out, "HTTP/1.1 200 OK\r\nX-Target: {name}\r\nConnection: close\r\n\r\n")?;
            if !head {
                pattern(out, size(), None)?;
            }
            return Ok(true);
        }
        "chunked" => {
            write!(out, "HTTP/1.1 200 OK\r\nX-Target: {name}\r\nTransfer-Encoding: chunked\r\n\r\n")?;
            if !head {
                pattern(out, size(), Some(1000))?;
                out.write_all(b"0\r\n\r\n")?;
            }
        }
        "close" => {
            write!(out, "HTTP/1.1 200 OK\r\nX-Target: {name}\r\nConnection: close\r\n\r\n")?;
            pattern(out, size(), None)?;
            return Ok(true);
        }
        "status" => {
            let code = size();
            let length = if code == 204 || code == 304 || code < 200 { "" } else { "Content-Length: 0\r\n" };
            write!(out, "HTTP/1.1 {code} Status\r\nX-Target: {name}\r\n{length}\r\n")?;
        }
        _ => fixed(out, name, "404 Not Found", b"not found", head)?,
    }
    Ok(false)
}

fn fixed(out: &mut impl Write, name: &str, status: &str, body: &[u8], head: bool) -> io::Result<()> {
    write!(
        out,
        "HTTP/1.1 {status}\r\nX-Target: {name}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    if !head {
        out.write_all(body)?;
    }
    Ok(())
}

/// `n` bytes of a repeating alphabet, as one body or as chunks of `chunk` bytes.
fn pattern(out: &mut impl Write, n: u64, chunk: Option<usize>) -> io::Result<()> {
    let block: Vec<u8> = (0..64 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let step = chunk.unwrap_or(block.len()) as u64;
    let mut left = n;
    while left > 0 {
        let take = left.min(step) as usize;
        if chunk.is_some() {
            write!(out, "{take:x}\r\n")?;
        }
        out.write_all(&block[..take])?;
        if chunk.is_some() {
            out.write_all(b"\r\n")?;
        }
        left -= take as u64;
    }
    Ok(())
}

/// Streams the request body's raw bytes (chunk framing included) into `out`.
fn copy_body(kind: BodyKind, input: &mut Input, out: &mut impl Write) -> io::Result<()> {
    let mut framer = BodyFramer::new(kind);
    while !framer.is_done() {
        if input.pending().is_empty() && !input.fill()? {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body cut short"));
        }
        let progress = framer
            .advance(input.pending(), HttpError::BadRequest)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        out.write_all(&input.pending()[..progress.used])?;
        input.start += progress.used;
    }
    Ok(())
}
