//! What an outsider can do to the proxy through its edges — its logs, its descriptors, its
//! tunnels — must never freeze it, kill it, or empty its rotation. Real processes on loopback;
//! the proxy's stdout is a pipe of the test's own, so the test decides when it is read.

mod common;

use common::{eventually, proxy_bin, targets, temp_log, Client, Target};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A ringproxy whose stdout is whatever the test gives it; it is found by polling its ports,
/// since its log may never arrive.
struct Bare {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    config: std::path::PathBuf,
}

impl Bare {
    fn start(targets: &[Target], extra: &str, stdout: Stdio, prepare: impl FnOnce(&mut Command)) -> Bare {
        let (port, admin_port) = (free_port(), free_port());
        let ports: Vec<String> = targets.iter().map(|t| format!("\"{}\"", t.url())).collect();
        let json = format!(
            "{{\"ports\": [{}], \"listen\": \"127.0.0.1:{port}\", \"admin\": \"127.0.0.1:{admin_port}\"{}{extra}}}",
            ports.join(", "),
            if extra.is_empty() { "" } else { ", " },
        );
        let config = temp_log("edges-config").with_extension("json");
        common::schema_check(&json).expect("the schema accepts the config");
        std::fs::write(&config, json).expect("write config");
        let mut command = Command::new(proxy_bin());
        command.arg("--config").arg(&config).stdin(Stdio::null()).stdout(stdout).stderr(Stdio::null());
        prepare(&mut command);
        let child = command.spawn().expect("spawn ringproxy");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
        let mut bare = Bare { child, addr, admin, config };
        eventually(Duration::from_secs(10), "the proxy to listen", || {
            assert!(bare.child.try_wait().ok().flatten().is_none(), "ringproxy exited at start");
            (TcpStream::connect(addr).is_ok() && TcpStream::connect(admin).is_ok()).then_some(())
        });
        bare
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// One value of `/metrics`, by its whole series as rendered.
    fn metric(&self, series: &str) -> f64 {
        common::metric_at(self.admin, series)
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// A pipe already full to the brim: (its read end, its write end for the proxy's stdout). A
/// write to it blocks until the read end is read, as when a log driver stalls.
fn full_pipe() -> (File, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two new descriptors into the array it is given.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    // SAFETY: both descriptors were just made and are owned here alone.
    let (read, write) = unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut writer = File::from(write.try_clone().expect("dup"));
    set_nonblocking(fds[1], true);
    let chunk = [b'.'; 4096];
    while writer.write(&chunk).is_ok() {}
    // Blocking again: the proxy's writes wait, as they do behind a stuck reader.
    set_nonblocking(fds[1], false);
    (read, write)
}

fn set_nonblocking(fd: i32, on: bool) {
    // SAFETY: fcntl on a descriptor this test owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        let flags = if on { flags | libc::O_NONBLOCK } else { flags & !libc::O_NONBLOCK };
        assert_eq!(libc::fcntl(fd, libc::F_SETFL, flags), 0, "fcntl");
    }
}

/// `n` malformed requests, each on its own connection: each must get its 400 within 5 s.
fn malformed(addr: SocketAddr, n: usize) {
    for i in 0..n {
        let mut client = Client::connect(addr);
        client.stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
        let status = client.try_read_response(false).map(|r| r.status);
        assert_eq!(status, Ok(400), "malformed request #{i}");
    }
}

/// `/livez` answers within 5 s.
fn livez(admin: SocketAddr) {
    let mut client = Client::connect(admin);
    client.stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    assert_eq!(client.try_request("GET", "/livez", &[], b"").map(|r| r.status), Ok(200), "/livez");
}

#[test]
fn a_stalled_log_reader_never_stops_the_proxy() {
    let t = targets(1);
    for access_log in ["\"access_log\": \"off\"", "\"access_log\": \"stdout\""] {
        let (mut reader, writer) = full_pipe();
        let mut proxy = Bare::start(&t, access_log, Stdio::from(writer), |c| {
            c.args(["--log-level", "debug"]);
        });
        // Far more lines than the pipe and the proxy's queues hold, of both logs.
        let mut client = Client::connect(proxy.addr);
        for _ in 0..3000 {
            assert_eq!(client.request("GET", "/", &[("User-Agent", &"u".repeat(200))], b"").status, 200);
        }
        malformed(proxy.addr, 1000);
        livez(proxy.admin);
        assert!(proxy.alive(), "{access_log}: the proxy died");
        // The reader comes back: the log flows again, and the proxy still serves.
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let drained = Arc::clone(&got);
        std::thread::spawn(move || {
            let mut sink = [0u8; 65536];
            while let Ok(n @ 1..) = reader.read(&mut sink) {
                drained.lock().expect("drained").extend_from_slice(&sink[..n]);
            }
        });
        assert_eq!(client.request("GET", "/", &[], b"").status, 200);
        malformed(proxy.addr, 1);
        // What waited in the queues comes out, the start lines among it.
        eventually(Duration::from_secs(20), "the queued start lines", || {
            String::from_utf8_lossy(&got.lock().expect("drained")).contains("listening on").then_some(())
        });
    }
}

#[test]
fn a_gone_log_reader_is_counted_not_fatal() {
    let t = targets(1);
    for access_log in ["\"access_log\": \"off\"", "\"access_log\": \"stdout\""] {
        let (reader, writer) = full_pipe();
        drop(reader);
        let mut proxy = Bare::start(&t, access_log, Stdio::from(writer), |c| {
            c.args(["--log-level", "debug"]);
        });
        let mut client = Client::connect(proxy.addr);
        for _ in 0..50 {
            assert_eq!(client.request("GET", "/", &[], b"").status, 200);
        }
        malformed(proxy.addr, 50);
        livez(proxy.admin);
        assert!(proxy.alive(), "{access_log}: EPIPE killed the proxy");
        eventually(Duration::from_secs(5), "the failed writes counted", || {
            (proxy.metric("ringproxy_log_write_errors_total{log=\"operational\"}") >= 1.0).then_some(())
        });
        if access_log.contains("stdout") {
            eventually(Duration::from_secs(5), "the access log's failed writes counted", || {
                (proxy.metric("ringproxy_log_write_errors_total{log=\"access\"}") >= 1.0).then_some(())
            });
        }
        assert!(proxy.metric("ringproxy_log_lines_dropped_total{log=\"operational\"}") >= 1.0);
    }
}

/// Runs the proxy with a soft and hard descriptor limit of `limit`, as a container might.
fn with_nofile(limit: u64) -> impl FnOnce(&mut Command) {
    move |command| {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe, and touches nothing but the child's limit.
        unsafe {
            command.pre_exec(move || {
                let rlimit = libc::rlimit { rlim_cur: limit, rlim_max: limit };
                match libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            });
        }
    }
}

/// A request on a connection of its own, within 5 s: its status, or what went wrong.
fn fresh_request(addr: SocketAddr) -> Result<u16, String> {
    let mut client = Client::try_connect(addr)?;
    client.stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    client.try_request("GET", "/", &[], b"").map(|r| r.status)
}

/// Holds `n` idle connections to `addr` from a thread of its own, opening a new one for each
/// the proxy closes, until `stop` is set or 20 s pass; `held` says how many it holds now.
/// Returns the most held at once.
fn hold_idle(
    addr: SocketAddr,
    n: usize,
    stop: Arc<AtomicBool>,
    held_now: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let (mut held, mut most) = (Vec::<TcpStream>::new(), 0);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            // A connection the proxy closed (or answered: a 503 before its close) is replaced.
            held.retain(|s| matches!(s.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock));
            while held.len() < n {
                match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                    Ok(s) if s.set_nonblocking(true).is_ok() => held.push(s),
                    _ => break,
                }
            }
            most = most.max(held.len());
            held_now.store(held.len(), Ordering::Relaxed);
            // Pacing only: how often the held connections are looked at.
            std::thread::sleep(Duration::from_millis(20));
        }
        most
    })
}

#[test]
fn an_idle_connection_flood_under_a_low_descriptor_limit_never_empties_the_rotation() {
    let t = targets(2);
    let proxy = Bare::start(&t, "\"sleeping\": 1", Stdio::null(), with_nofile(256));
    let mut watcher = Client::connect(proxy.addr);
    watcher.stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    assert_eq!(watcher.request("GET", "/", &[], b"").status, 200);
    // More idle connections than the process has descriptors, far fewer than max_connections'
    // default of 10,000, held for as long as the test watches.
    let (stop, held) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let flood = hold_idle(proxy.addr, 400, Arc::clone(&stop), Arc::clone(&held));
    eventually(Duration::from_secs(10), "the flood to hold more than the descriptors allow", || {
        (held.load(Ordering::Relaxed) > 286).then_some(())
    });
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut served = 0;
    while Instant::now() < deadline {
        // The ring takes both targets in turn, so new upstream connections are needed.
        for _ in 0..4 {
            let status = watcher.try_request("GET", "/", &[], b"").map(|r| r.status);
            assert!(matches!(status, Ok(200 | 503)), "the kept-alive client got {status:?}");
            served += usize::from(status == Ok(200));
        }
        let status = fresh_request(proxy.addr);
        assert!(matches!(status, Ok(200 | 503)), "a new client got {status:?}");
        let ready = fresh_admin(proxy.admin, "/readyz");
        assert_eq!(ready, Ok(200), "/readyz during the flood");
    }
    stop.store(true, Ordering::Relaxed);
    let most = flood.join().expect("flood");
    assert!(most >= 286, "the flood held only {most} connections");
    assert!(served > 0, "the kept-alive client was never served");
    for target in &t {
        assert_eq!(proxy.metric(&format!("ringproxy_target_up{{target=\"{}\"}}", target.url())), 1.0);
    }
    assert!(proxy.metric("ringproxy_client_connections_refused_total") > 0.0, "max_connections was fitted");
}

/// A GET to the admin port on a connection of its own, within 5 s.
fn fresh_admin(admin: SocketAddr, path: &str) -> Result<u16, String> {
    let mut client = Client::try_connect(admin)?;
    client.stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    client.try_request("GET", path, &[], b"").map(|r| r.status)
}

#[test]
fn running_out_of_descriptors_is_the_proxys_own_failure_not_the_targets() {
    let t = targets(1);
    // No pooled connections: every request needs a new descriptor.
    let proxy = Bare::start(&t, "\"max_idle_upstream\": 0, \"sleeping\": 0.2", Stdio::null(), |_| {});
    let mut client = Client::connect(proxy.addr);
    client.stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    assert_eq!(client.request("GET", "/", &[], b"").status, 200);
    let mut admin = Client::connect(proxy.admin);
    admin.stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    // Answered: the proxy has accepted it, and needs no descriptor for it any more.
    assert_eq!(admin.request("GET", "/livez", &[], b"").status, 200);
    let pid = proxy.child.id() as libc::pid_t;
    let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: prlimit reads `old`'s address and writes it.
    assert_eq!(unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) }, 0);
    // A new descriptor takes the lowest free number, which must be under the limit: with a
    // limit of 3 (stdio), the proxy keeps what it holds and its next socket() fails with EMFILE.
    let tight = libc::rlimit { rlim_cur: 3, rlim_max: old.rlim_max };
    // SAFETY: as above, with `tight` read.
    assert_eq!(unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &tight, std::ptr::null_mut()) }, 0);
    for i in 0..20 {
        let status = client.try_request("GET", "/", &[], b"").map(|r| r.status);
        assert_eq!(status, Ok(503), "request #{i} with no descriptor left");
    }
    let metrics = admin.request("GET", "/metrics", &[], b"").text();
    // New clients of both ports wait in the listeners' queues: accepts fail, and are retried
    // every 100 ms without the loop spinning.
    let mut late = [proxy.addr, proxy.admin].map(|addr| {
        let mut c = Client::connect(addr);
        c.stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        c.send(b"GET /livez HTTP/1.1\r\nHost: a\r\n\r\n");
        c
    });
    let (cpu, started) = (common::cpu_seconds(pid as u32), Instant::now());
    eventually(Duration::from_secs(5), "two seconds of failing accepts", || {
        (started.elapsed() >= Duration::from_secs(2)).then_some(())
    });
    let busy = common::cpu_seconds(pid as u32) - cpu;
    assert!(busy < 1.0, "{busy} s of CPU in 2 s of failing accepts: the retries spin");
    // SAFETY: as above, with `old` read.
    assert_eq!(unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &old, std::ptr::null_mut()) }, 0);
    // The retries take them in: the proxy answers 404 (target-svc has no /livez), the admin 200.
    let statuses = late.each_mut().map(|c| c.try_read_response(false).map(|r| r.status));
    assert_eq!(statuses, [Ok(404), Ok(200)], "the clients queued while descriptors ran out");
    let value = |series: &str| common::sample(&metrics, series).unwrap_or_else(|| panic!("no {series}"));
    assert!(value("ringproxy_local_errors_total{error=\"EMFILE\"}") >= 20.0, "{metrics}");
    let url = t[0].url();
    assert_eq!(value(&format!("ringproxy_target_up{{target=\"{url}\"}}")), 1.0, "{metrics}");
    for reason in ["conn_error", "conn_refused"] {
        let failures = value(&format!("ringproxy_target_failures_total{{target=\"{url}\",reason=\"{reason}\"}}"));
        assert_eq!(failures, 0.0, "{reason}: {metrics}");
    }
    // Descriptors back: service is back, from the same connection.
    assert_eq!(client.request("GET", "/", &[], b"").status, 200);
}

#[test]
fn a_switch_to_a_protocol_the_client_did_not_offer_is_a_502_not_a_tunnel() {
    let target = common::raw_upstream(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let proxy = common::Proxy::with_config(&format!(
        "{{\"ports\": [\"http://{target}/\"], \"listen\": \"127.0.0.1:0\", \"fall\": 100}}"
    ));
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    let answer = client.read_response(false);
    assert_eq!(answer.status, 502, "{answer:?}");
    assert!(client.is_closed(), "nothing of the h2c bytes reaches the client");
    assert_eq!(proxy.metric("ringproxy_tunnels_total"), 0.0);
}

/// An upstream that switches every connection to WebSocket and then only reads, as a target
/// whose clients are quiet.
fn quiet_websocket_target() -> SocketAddr {
    common::serve_raw(|mut conn: TcpStream| {
        if common::read_head(&mut conn) {
            let switch = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
            if conn.write_all(switch).is_ok() {
                let mut sink = [0u8; 1024];
                while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
            }
        }
    })
}

/// Opens a tunnel through the proxy: the upgrade request, and its 101 read.
fn open_tunnel(addr: SocketAddr) -> TcpStream {
    let mut client = Client::connect(addr);
    client.send(
        b"GET /chat HTTP/1.1\r\nHost: a\r\nUser-Agent: quiet/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    assert_eq!(client.read_response(false).status, 101);
    client.stream
}

#[test]
fn an_idle_tunnel_holds_a_few_kib_not_a_head_buffer() {
    const TUNNELS: usize = 400;
    let target = quiet_websocket_target();
    let log = temp_log("tunnel-memory");
    let proxy = common::Proxy::with_config(&format!(
        "{{\"ports\": [\"http://{target}/\"], \"listen\": \"127.0.0.1:0\", \"access_log\": \"{}\"}}",
        log.display()
    ));
    // Warm: the pools, the slab and the allocator's arenas exist before the count starts.
    let mut open: Vec<TcpStream> = (0..20).map(|_| open_tunnel(proxy.addr)).collect();
    let (before, _) = proxy.rss_kib();
    open.extend((0..TUNNELS).map(|_| open_tunnel(proxy.addr)));
    assert_eq!(proxy.metric("ringproxy_tunnels"), (TUNNELS + 20) as f64);
    let (after, _) = proxy.rss_kib();
    let per_tunnel = (after.saturating_sub(before) * 1024) as usize / TUNNELS;
    println!("RSS per idle tunnel: {per_tunnel} B ({before} KiB before, {after} KiB after {TUNNELS} tunnels)");
    assert!(per_tunnel <= 4096, "an idle tunnel holds {per_tunnel} B");
    // What the tunnel kept is what its log line says, when it closes.
    drop(open);
    eventually(Duration::from_secs(5), "the tunnels' log lines", || {
        let lines = common::read_lines(&log);
        (lines.len() >= TUNNELS + 20).then_some(lines)
    })
    .iter()
    .for_each(|line| assert!(line.contains("\"GET /chat HTTP/1.1\" 101 0 \"quiet/1.0\""), "{line}"));
    let _ = std::fs::remove_file(&log);
}

#[test]
fn no_request_can_break_an_access_log_line() {
    let t = targets(1);
    // A user agent ending in a backslash, with a quote, raw obs-text, NEL, LINE SEPARATOR and
    // RIGHT-TO-LEFT OVERRIDE in it.
    let mut request = b"GET /?q=\"x\" HTTP/1.1\r\nHost: a\r\nUser-Agent: evil \"agent\xff ".to_vec();
    request.extend_from_slice("\u{85}\u{2028}\u{202e}\\".as_bytes());
    request.extend_from_slice(b"\r\nX-Request-Id: id-1\r\n\r\n");
    for format in ["common", "json"] {
        let log = temp_log(&format!("escape-{format}"));
        let proxy = common::Proxy::start(
            &t,
            &format!("\"access_log\": \"{}\", \"access_log_format\": \"{format}\"", log.display()),
        );
        let mut client = Client::connect(proxy.addr);
        client.send(&request);
        client.read_response(false);
        let text = eventually(Duration::from_secs(5), "the access log line", || {
            std::fs::read(&log).ok().filter(|bytes| bytes.ends_with(b"\n"))
        });
        let text = String::from_utf8(text).expect("the access log is valid UTF-8");
        assert_eq!(text.lines().count(), 1, "{text}");
        match format {
            "common" => {
                assert!(text.is_ascii(), "{text}");
                // A combined-log parser: quoted fields end at the first unescaped quote.
                let quoted: Vec<&str> = text.split('"').collect();
                assert_eq!(quoted.len(), 5, "{text}");
                assert_eq!(quoted[1], "GET /?q=\\x22x\\x22 HTTP/1.1");
                assert_eq!(quoted[3], "evil \\x22agent\\xFF \\xC2\\x85\\xE2\\x80\\xA8\\xE2\\x80\\xAE\\x5C");
            }
            _ => {
                let v: serde_json::Value = serde_json::from_str(&text).expect("a JSON line");
                assert_eq!(v["user_agent"], "evil \"agent\u{fffd} \u{85}\u{2028}\u{202e}\\");
                assert!(text.contains(r"\u0085\u2028\u202e\\"), "{text}");
            }
        }
        let _ = std::fs::remove_file(&log);
    }
}
