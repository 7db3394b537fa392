//! Session-level fuzzing inside `cargo test` (proptest): the real proxy, driven by generated
//! client byte streams, in front of a target whose behaviour each request picks: answer,
//! answer before the body arrived, close, reset, stall past `upstream_timeout`, or answer and
//! then send bytes nobody asked for. Request bodies carry text that reads as a request.
//! After each case:
//!
//! - the proxy is alive and still answers;
//! - every request was answered, or its connection was closed: none hangs;
//! - every answer that came from the target names the request it answers (`X-For`), in order:
//!   no response reaches a client that did not ask for it, and the unsolicited bytes never do;
//! - every request head the target read is one the client sent: no body byte ever started a
//!   request;
//! - a request with ambiguous framing gets a 4xx and its connection closes.
//!
//! Budget: `SESSION_FUZZ_CASES` cases (default 150), seeded afresh each run.

mod common;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    Answer,
    Early,
    Close,
    Reset,
    Stall,
    Extra,
}

impl Behaviour {
    fn name(self) -> &'static str {
        match self {
            Behaviour::Answer => "answer",
            Behaviour::Early => "early",
            Behaviour::Close => "close",
            Behaviour::Reset => "reset",
            Behaviour::Stall => "stall",
            Behaviour::Extra => "extra",
        }
    }

    fn from(path: &str) -> Behaviour {
        match path.rsplit('/').next() {
            Some("early") => Behaviour::Early,
            Some("close") => Behaviour::Close,
            Some("reset") => Behaviour::Reset,
            Some("stall") => Behaviour::Stall,
            Some("extra") => Behaviour::Extra,
            _ => Behaviour::Answer,
        }
    }
}

/// A request that reads as one inside a body: it must stay body.
const SMUGGLED: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: s\r\n\r\n";
/// What an `Extra` target sends after its answer, unasked.
const UNSOLICITED: &[u8] = b"HTTP/1.1 200 OK\r\nX-For: /unsolicited\r\nContent-Length: 5\r\n\r\nbogus";
/// A stall outlasts `upstream_timeout` (0.2 s).
const STALL: Duration = Duration::from_millis(350);

#[derive(Clone, Debug)]
enum Framing {
    None,
    Length(Vec<u8>),
    Chunked(Vec<Vec<u8>>),
}

/// Framing the proxy must refuse with 400, with a request hidden behind it.
#[derive(Clone, Copy, Debug)]
enum Hazard {
    LengthAndChunked,
    ChunkedNotLast,
    TwoLengths,
}

#[derive(Clone, Debug)]
struct Req {
    method: &'static str,
    framing: Framing,
    behaviour: Behaviour,
    hazard: Option<Hazard>,
}

fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
    (prop::collection::vec(any::<u8>(), 0..200), any::<bool>(), any::<prop::sample::Index>()).prop_map(
        |(mut bytes, smuggle, at)| {
            if smuggle {
                let at = at.index(bytes.len() + 1);
                bytes.splice(at..at, SMUGGLED.iter().copied());
            }
            bytes
        },
    )
}

fn req() -> impl Strategy<Value = Req> {
    let behaviour = prop_oneof![
        8 => Just(Behaviour::Answer),
        2 => Just(Behaviour::Early),
        2 => Just(Behaviour::Close),
        2 => Just(Behaviour::Reset),
        1 => Just(Behaviour::Stall),
        2 => Just(Behaviour::Extra),
    ];
    let framing = prop_oneof![
        Just(Framing::None),
        body_bytes().prop_map(Framing::Length),
        prop::collection::vec(body_bytes(), 0..3).prop_map(Framing::Chunked),
    ];
    let hazard = prop_oneof![
        12 => Just(None),
        1 => Just(Some(Hazard::LengthAndChunked)),
        1 => Just(Some(Hazard::ChunkedNotLast)),
        1 => Just(Some(Hazard::TwoLengths)),
    ];
    (prop::sample::select(vec!["GET", "HEAD", "POST", "PUT"]), framing, behaviour, hazard).prop_map(
        |(method, framing, behaviour, hazard)| {
            // A GET or HEAD has no body here, so that its retries are what the proxy chooses.
            let framing = if matches!(method, "GET" | "HEAD") { Framing::None } else { framing };
            Req { method, framing, behaviour, hazard }
        },
    )
}

impl Req {
    fn path(&self, case: usize, k: usize) -> String {
        format!("/c{case}/r{k}/{}", self.behaviour.name())
    }

    fn bytes(&self, case: usize, k: usize) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\nHost: fuzz\r\n", self.method, self.path(case, k)).into_bytes();
        let body = match &self.framing {
            Framing::None => Vec::new(),
            Framing::Length(b) => b.clone(),
            Framing::Chunked(chunks) => {
                let mut enc = Vec::new();
                for c in chunks.iter().filter(|c| !c.is_empty()) {
                    enc.extend(format!("{:x}\r\n", c.len()).bytes());
                    enc.extend(c);
                    enc.extend(b"\r\n");
                }
                enc.extend(b"0\r\n\r\n");
                enc
            }
        };
        match (&self.framing, self.hazard) {
            (_, Some(Hazard::LengthAndChunked)) => {
                out.extend(format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", body.len()).bytes())
            }
            (_, Some(Hazard::ChunkedNotLast)) => out.extend(b"Transfer-Encoding: chunked, gzip\r\n"),
            (_, Some(Hazard::TwoLengths)) => {
                out.extend(format!("Content-Length: {}\r\nContent-Length: {}\r\n", body.len(), body.len() + 1).bytes())
            }
            (Framing::Length(b), None) => out.extend(format!("Content-Length: {}\r\n", b.len()).bytes()),
            (Framing::Chunked(_), None) => out.extend(b"Transfer-Encoding: chunked\r\n"),
            (Framing::None, None) => {}
        }
        out.extend(b"\r\n");
        out.extend(body);
        // Behind a refused request, one that must never reach the target.
        if self.hazard.is_some() {
            out.extend(SMUGGLED);
        }
        out
    }
}

// --- the target ---------------------------------------------------------------------------

/// Every request head the target read, by its request line.
type Seen = Arc<Mutex<Vec<String>>>;

fn start_target() -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            let log = Arc::clone(&log);
            std::thread::spawn(move || serve(conn, &log));
        }
    });
    (addr, seen)
}

/// Reads more into `pending`; `None` at end of stream or on an error.
fn fill(conn: &mut TcpStream, pending: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    match conn.read(&mut chunk) {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            pending.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// Takes the bytes of `pending` up to and including the first `end`, reading as needed.
fn read_through(conn: &mut TcpStream, pending: &mut Vec<u8>, end: &[u8]) -> Option<Vec<u8>> {
    loop {
        if let Some(at) = pending.windows(end.len()).position(|w| w == end) {
            return Some(pending.drain(..at + end.len()).collect());
        }
        fill(conn, pending)?;
    }
}

/// Reads up to the end of a head; its bytes, or `None` at end of stream.
fn read_head(conn: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    read_through(conn, pending, b"\r\n\r\n")
}

fn read_line(conn: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    read_through(conn, pending, b"\r\n")
}

fn read_exact_pending(conn: &mut TcpStream, pending: &mut Vec<u8>, n: usize) -> Option<Vec<u8>> {
    while pending.len() < n {
        fill(conn, pending)?;
    }
    Some(pending.drain(..n).collect())
}

fn field<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads a request body as the head frames it; `false` if the stream ended first.
fn read_body(conn: &mut TcpStream, pending: &mut Vec<u8>, head: &str) -> bool {
    if let Some(n) = field(head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        return read_exact_pending(conn, pending, n).is_some();
    }
    if field(head, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().ends_with("chunked")) {
        loop {
            let Some(line) = read_line(conn, pending) else { return false };
            let size = String::from_utf8_lossy(&line);
            let size = size.trim().split(';').next().unwrap_or("");
            let Ok(n) = usize::from_str_radix(size, 16) else { return false };
            if n == 0 {
                // Trailers, then the empty line.
                loop {
                    match read_line(conn, pending) {
                        Some(l) if l == b"\r\n" => return true,
                        Some(_) => {}
                        None => return false,
                    }
                }
            }
            if read_exact_pending(conn, pending, n + 2).is_none() {
                return false;
            }
        }
    }
    true
}

fn reset(conn: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn serve(mut conn: TcpStream, seen: &Mutex<Vec<String>>) {
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut pending = Vec::new();
    while let Some(head) = read_head(&mut conn, &mut pending) {
        let head = String::from_utf8_lossy(&head).into_owned();
        let line = head.lines().next().unwrap_or("").to_owned();
        let path = line.split(' ').nth(1).unwrap_or("").to_owned();
        if let Ok(mut seen) = seen.lock() {
            seen.push(line.clone());
        }
        if path == "/ping/" {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong");
            continue;
        }
        // An early answer says it closes, as RFC 9112 §9.6 asks of a server that will: a
        // target that closes a kept-alive connection without a word, just as the next request
        // goes out on it, makes that request fail in a way no proxy can tell from a loss.
        let answer = |conn: &mut TcpStream, close: bool| {
            let body = if line.starts_with("HEAD ") { "" } else { path.as_str() };
            let connection = if close { "Connection: close\r\n" } else { "" };
            let head =
                format!("HTTP/1.1 200 OK\r\nX-For: {path}\r\n{connection}Content-Length: {}\r\n\r\n", path.len());
            conn.write_all(head.as_bytes()).and_then(|()| conn.write_all(body.as_bytes()))
        };
        match Behaviour::from(&path) {
            Behaviour::Answer => {
                if !read_body(&mut conn, &mut pending, &head) || answer(&mut conn, false).is_err() {
                    return;
                }
            }
            Behaviour::Early => {
                let _ = answer(&mut conn, true);
                read_body(&mut conn, &mut pending, &head);
                return;
            }
            Behaviour::Close => return,
            Behaviour::Reset => return reset(&conn),
            Behaviour::Stall => {
                std::thread::sleep(STALL);
                return;
            }
            Behaviour::Extra => {
                if !read_body(&mut conn, &mut pending, &head) {
                    return;
                }
                // The answer and a second one in one write, as a target that answers twice
                // sends them. (Bytes sent later, once the connection carries the next request,
                // cannot be told from its answer by any HTTP/1.1 proxy.)
                let mut both = format!("HTTP/1.1 200 OK\r\nX-For: {path}\r\nContent-Length: {}\r\n\r\n", path.len());
                if !line.starts_with("HEAD ") {
                    both.push_str(&path);
                }
                let mut both = both.into_bytes();
                both.extend_from_slice(UNSOLICITED);
                if conn.write_all(&both).is_err() {
                    return;
                }
            }
        }
    }
}

// --- the client ---------------------------------------------------------------------------

#[derive(Debug)]
struct Answer {
    status: u16,
    x_for: Option<String>,
}

/// Reads responses until `expected` arrived or the proxy closed; `Err` if it neither answered
/// nor closed in time.
fn read_answers(conn: &mut TcpStream, heads: &[bool]) -> Result<(Vec<Answer>, bool), String> {
    let mut pending = Vec::new();
    let mut answers = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let mut fill = |pending: &mut Vec<u8>| -> Result<bool, String> {
        loop {
            let mut chunk = [0u8; 8192];
            match conn.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    pending.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    if Instant::now() > deadline {
                        return Err("neither answered nor closed within 10 s".into());
                    }
                }
                Err(_) => return Ok(false),
            }
        }
    };
    while answers.len() < heads.len() {
        let end = loop {
            if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            if !fill(&mut pending)? {
                return Ok((answers, true));
            }
        };
        let head = String::from_utf8_lossy(&pending[..end + 4]).into_owned();
        pending.drain(..end + 4);
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(format!("a bad status line: {head}"))?;
        let length = if heads[answers.len()] {
            0
        } else {
            field(&head, "content-length").and_then(|v| v.parse::<usize>().ok()).ok_or(format!("no length: {head}"))?
        };
        while pending.len() < length {
            if !fill(&mut pending)? {
                return Ok((answers, true));
            }
        }
        pending.drain(..length);
        answers.push(Answer { status, x_for: field(&head, "x-for").map(str::to_owned) });
    }
    // Nothing may follow the last answer: a short look.
    let _ = conn.set_read_timeout(Some(Duration::from_millis(30)));
    let mut chunk = [0u8; 8192];
    let closed = match conn.read(&mut chunk) {
        Ok(0) => true,
        Ok(n) => {
            pending.extend_from_slice(&chunk[..n]);
            false
        }
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    };
    if !pending.is_empty() {
        return Err(format!("bytes after the last answer: {:?}", String::from_utf8_lossy(&pending)));
    }
    Ok((answers, closed))
}

fn cases() -> u32 {
    std::env::var("SESSION_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(150)
}

#[test]
fn generated_clients_and_hostile_targets_never_cross_messages() {
    let (target, seen) = start_target();
    let proxy = common::Proxy::with_config(&format!(
        "{{\"ports\": [\"http://{target}/\"], \"listen\": \"127.0.0.1:0\", \"upstream_timeout\": 0.2, \
         \"fall\": 1000, \"sleeping\": 0.2}}"
    ));
    let case_no = std::sync::atomic::AtomicUsize::new(0);
    let strategy = (prop::collection::vec(req(), 1..5), prop::collection::vec(any::<prop::sample::Index>(), 0..6));
    let mut runner = TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
    let result = runner.run(&strategy, |(reqs, cuts)| {
        let case = case_no.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let stream: Vec<u8> = reqs.iter().enumerate().flat_map(|(k, r)| r.bytes(case, k)).collect();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.sort_unstable();
        points.push(stream.len());
        if let Ok(mut seen) = seen.lock() {
            seen.clear();
        }
        let mut conn = TcpStream::connect(proxy.addr).map_err(|e| TestCaseError::fail(format!("connect: {e}")))?;
        let _ = conn.set_nodelay(true);
        let mut at = 0;
        for p in points {
            // A write may fail once the proxy closed after a refusal: the rest is not read.
            if conn.write_all(&stream[at..p]).is_err() {
                break;
            }
            at = p;
        }
        let heads: Vec<bool> = reqs.iter().map(|r| r.method == "HEAD").collect();
        let (answers, closed) = read_answers(&mut conn, &heads).map_err(TestCaseError::fail)?;
        // Answers in order, each naming its own request or made by the proxy.
        for (k, a) in answers.iter().enumerate() {
            let r = &reqs[k];
            let path = r.path(case, k);
            match &a.x_for {
                Some(x) => prop_assert_eq!(x, &path, "answer {} of {:?}", k, answers),
                None => prop_assert!(a.status >= 400, "a target answer without X-For: {:?}", a),
            }
            if r.hazard.is_some() {
                prop_assert_eq!(a.status, 400, "ambiguous framing answered {}", a.status);
                prop_assert_eq!(answers.len(), k + 1, "answers after a refusal");
            }
            if matches!(r.behaviour, Behaviour::Answer | Behaviour::Early | Behaviour::Extra) && r.hazard.is_none() {
                prop_assert!(a.status == 200 || r.behaviour == Behaviour::Early, "{:?} got {}", r.behaviour, a.status);
            }
        }
        prop_assert!(answers.len() == reqs.len() || closed, "unanswered requests on an open connection");
        // The target read only heads the client sent, never a body's bytes, never past a refusal.
        let refused_at = reqs.iter().position(|r| r.hazard.is_some()).unwrap_or(reqs.len());
        let sent: Vec<String> = (0..refused_at).map(|k| reqs[k].path(case, k)).collect();
        let lines = seen.lock().map(|s| s.clone()).unwrap_or_default();
        let ours = format!("/c{case}/");
        for line in lines.iter().filter(|l| !l.contains(" /ping/ ")) {
            let path = line.split(' ').nth(1).unwrap_or("");
            // A late retry of an earlier case's request is that case's business.
            if path.starts_with("/c") && !path.starts_with(&ours) && !path.contains("smuggled") {
                continue;
            }
            prop_assert!(sent.iter().any(|s| s == path), "the target read {:?}; the client sent {:?}", line, sent);
        }
        // The proxy is alive and still answers, on a new connection.
        let mut probe = TcpStream::connect(proxy.addr).map_err(|e| TestCaseError::fail(format!("proxy gone: {e}")))?;
        probe
            .write_all(format!("GET /c{case}/alive/answer HTTP/1.1\r\nHost: fuzz\r\n\r\n").as_bytes())
            .map_err(|e| TestCaseError::fail(format!("proxy gone: {e}")))?;
        let (alive, _) = read_answers(&mut probe, &[false]).map_err(TestCaseError::fail)?;
        prop_assert!(alive.first().is_some_and(|a| a.status == 200), "the proxy stopped answering: {:?}", alive);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\nproxy log:\n{}", proxy.proc.lines().join("\n"));
    }
    println!("{} cases", case_no.into_inner());
}
