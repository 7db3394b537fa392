//! Test harness: starts the real `ringproxy` and `target-svc` binaries on 127.0.0.1 ephemeral
//! ports and talks HTTP/1.1 to them over real sockets. Readiness is awaited by polling with a
//! deadline, never by a bare sleep. Every process is killed when its handle drops.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn proxy_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ringproxy"))
}

/// target-svc is built beside ringproxy by `cargo test --workspace`.
pub fn target_bin() -> PathBuf {
    let path = proxy_bin().with_file_name("target-svc");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// Polls `check` until it gives a value or `within` passes.
pub fn eventually<T>(within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child process whose output lines are collected as they come.
pub struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a test binary");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("stdout"));
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("stderr"));
        for stream in [out, err] {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().expect("lines").push(line);
                }
            });
        }
        Proc { child, lines }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// The first output line containing `needle`, waiting up to `within` for it.
    pub fn wait_line(&self, needle: &str, within: Duration) -> String {
        eventually(within, &format!("a line with {needle:?}"), || {
            self.lines().into_iter().find(|l| l.contains(needle))
        })
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} failed");
    }

    /// Waits for the process to exit; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        eventually(within, "the process to exit", || {
            self.child.try_wait().ok().flatten()
        })
        .code()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The address in a "listening on ADDR" line.
fn listening_addr(line: &str) -> SocketAddr {
    let addr = line
        .split("listening on ")
        .nth(1)
        .expect("address")
        .split([';', ' '])
        .next()
        .expect("address");
    addr.parse().expect("a socket address")
}

pub struct Target {
    pub name: String,
    pub port: u16,
    proc: Option<Proc>,
}

impl Target {
    pub fn start(name: &str) -> Target {
        Target::on_port(name, 0)
    }

    fn on_port(name: &str, port: u16) -> Target {
        let proc = Proc::spawn(Command::new(target_bin()).args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--name",
            name,
        ]));
        let port = listening_addr(&proc.wait_line("listening on", Duration::from_secs(10))).port();
        Target {
            name: name.to_string(),
            port,
            proc: Some(proc),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(10);
        // The old socket may linger for a moment; retry the bind until it is free.
        loop {
            let proc = Proc::spawn(Command::new(target_bin()).args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--name",
                &self.name,
            ]));
            let started = eventually(Duration::from_secs(5), "target start or failure", || {
                let lines = proc.lines();
                if lines.iter().any(|l| l.contains("listening on")) {
                    Some(true)
                } else if lines.iter().any(|l| l.contains("cannot listen")) {
                    Some(false)
                } else {
                    None
                }
            });
            if started {
                self.proc = Some(proc);
                return;
            }
            assert!(Instant::now() < deadline, "port {port} stayed busy");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.proc.as_ref().map(Proc::lines).unwrap_or_default()
    }
}

pub fn targets(n: usize) -> Vec<Target> {
    (1..=n).map(|i| Target::start(&format!("t{i}"))).collect()
}

static CONFIGS: AtomicUsize = AtomicUsize::new(0);

pub struct Proxy {
    pub addr: SocketAddr,
    pub proc: Proc,
    config: PathBuf,
}

impl Proxy {
    /// Starts ringproxy in front of `targets`; `extra` is more JSON keys, e.g. `"sleeping": 1`.
    pub fn start(targets: &[Target], extra: &str) -> Proxy {
        let ports: Vec<String> = targets.iter().map(|t| format!("\"{}\"", t.url())).collect();
        Proxy::with_config(&format!(
            "{{\"ports\": [{}], \"listen\": \"127.0.0.1:0\"{}{}}}",
            ports.join(", "),
            if extra.is_empty() { "" } else { ", " },
            extra
        ))
    }

    pub fn with_config(json: &str) -> Proxy {
        let config = std::env::temp_dir().join(format!(
            "ringproxy-test-{}-{}.json",
            std::process::id(),
            CONFIGS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&config, json).expect("write config");
        let proc = Proc::spawn(
            Command::new(proxy_bin())
                .arg("--config")
                .arg(&config)
                .args(["--log-level", "debug"]),
        );
        let addr = listening_addr(&proc.wait_line("listening on", Duration::from_secs(10)));
        Proxy { addr, proc, config }
    }

    pub fn get(&self, path: &str) -> Response {
        Client::connect(self.addr).request("GET", path, &[], b"")
    }

    /// Resident set size of the proxy process, and its peak, in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.proc.pid()))
            .expect("proc status");
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn target(&self) -> &str {
        self.header("x-target").unwrap_or("")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A keep-alive HTTP/1.1 client over one connection.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to the proxy");
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).expect("send");
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for (name, value) in headers {
            raw.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        raw.push_str("\r\n");
        let mut bytes = raw.into_bytes();
        bytes.extend_from_slice(body);
        self.send(&bytes);
        self.read_response(method == "HEAD")
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 65536];
        let n = self.stream.read(&mut chunk).expect("read from the proxy");
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Reads one response, framed as RFC 9112 says; `head_request` for a response to HEAD.
    pub fn read_response(&mut self, head_request: bool) -> Response {
        let (status, headers, head_len) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut hs);
            if let httparse::Status::Complete(n) =
                resp.parse(&self.buf).expect("a valid response head")
            {
                let headers = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect::<Vec<_>>();
                break (resp.code.expect("status"), headers, n);
            }
            assert!(self.fill() > 0, "connection closed before a response head");
        };
        self.buf.drain(..head_len);
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let no_body = head_request || status < 200 || status == 204 || status == 304;
        if no_body {
            return response;
        }
        if response
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            response.body = self.read_chunked();
        } else if let Some(len) = response.header("content-length") {
            let len: usize = len.trim().parse().expect("a Content-Length");
            while self.buf.len() < len {
                assert!(self.fill() > 0, "connection closed inside a body");
            }
            response.body = self.buf.drain(..len).collect();
        } else {
            while self.fill() > 0 {}
            response.body = std::mem::take(&mut self.buf);
        }
        response
    }

    fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                assert!(self.fill() > 0, "connection closed inside a chunk size");
            };
            let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .expect("hex size");
            self.buf.drain(..line_end + 2);
            if size == 0 {
                // Trailer section: lines until an empty one.
                loop {
                    let end = loop {
                        if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                            break i;
                        }
                        assert!(self.fill() > 0, "connection closed inside trailers");
                    };
                    self.buf.drain(..end + 2);
                    if end == 0 {
                        return body;
                    }
                }
            }
            while self.buf.len() < size + 2 {
                assert!(self.fill() > 0, "connection closed inside a chunk");
            }
            body.extend(self.buf.drain(..size));
            assert_eq!(
                self.buf.drain(..2).collect::<Vec<_>>(),
                b"\r\n",
                "chunk data ends with CRLF"
            );
        }
    }

    /// Whether the server closed the connection (EOF with nothing more to read).
    pub fn is_closed(&mut self) -> bool {
        self.buf.is_empty() && matches!(self.stream.read(&mut [0u8; 1]), Ok(0) | Err(_))
    }
}

/// The bytes target-svc sends for `/bytes/N`.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| b'a' + (i % (64 * 1024) % 26) as u8)
        .collect()
}

/// Counts of responses per target name.
pub fn tally<'a>(
    responses: impl IntoIterator<Item = &'a Response>,
) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for r in responses {
        *counts.entry(r.target().to_string()).or_insert(0) += 1;
    }
    counts
}

/// A one-shot upstream of the test's own on loopback, for responses target-svc never sends:
/// it answers every connection's first request with `reply`, then closes.
pub fn raw_upstream(reply: &'static [u8]) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handle = std::thread::spawn(move || {
        for conn in listener.incoming().take(4) {
            let Ok(mut conn) = conn else { continue };
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = conn.write_all(reply);
        }
    });
    (addr, handle)
}
