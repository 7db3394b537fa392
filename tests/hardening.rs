//! HTTP/1.1 hardening, byte for byte: every refusal names the rule it enforces. Real processes
//! on loopback; upstream misbehaviour comes from listeners of the test's own.

mod common;

use common::{read_head, serve_raw, targets, Client, Proxy};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sends `raw` on a fresh connection; the status answered and whether the proxy closed after.
fn exchange(proxy: &Proxy, raw: &[u8]) -> (u16, bool) {
    let mut client = Client::connect(proxy.addr);
    client.send(raw);
    let status = client.read_response(false).status;
    (status, client.is_closed())
}

fn chunked(body: &str) -> Vec<u8> {
    format!("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{body}").into_bytes()
}

#[test]
fn malformed_and_ambiguous_requests_get_their_status_and_a_close() {
    let ts = targets(1);
    let proxy = Proxy::start(&ts, "");
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(9000));
    let long_line = format!("GET /{}", "a".repeat(20_000));
    // Refused however it is read: whole, or cut before its end.
    let long_method = format!("{} / HTTP/1.1\r\nHost: t\r\n\r\n", "M".repeat(8300));
    let big_head = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "b".repeat(17_000));
    let many_fields = format!("GET / HTTP/1.1\r\nHost: t\r\n{}\r\n", "X-F: 1\r\n".repeat(101));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "RFC 9112 §6.3 ¶3: Content-Length and Transfer-Encoding together",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        (
            "RFC 9110 §8.6: Content-Length repeated with different values",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(),
            400,
        ),
        (
            "RFC 9110 §8.6: Content-Length as a list",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1, 1\r\n\r\na".to_vec(),
            400,
        ),
        (
            "RFC 9110 §8.6: Content-Length with a sign",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +1\r\n\r\na".to_vec(),
            400,
        ),
        (
            "RFC 9110 §8.6: Content-Length with non-digits",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0x1\r\n\r\na".to_vec(),
            400,
        ),
        (
            "RFC 9110 §8.6: Content-Length overflowing",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 184467440737095516160\r\n\r\n".to_vec(),
            400,
        ),
        (
            "RFC 9112 §6.3 ¶4: Transfer-Encoding whose final coding is not chunked",
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n".to_vec(),
            400,
        ),
        (
            "RFC 9112 §6.1: an unknown transfer coding",
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: zstd-ish, chunked\r\n\r\n".to_vec(),
            501,
        ),
        (
            "RFC 9112 §6.1 ¶16: Transfer-Encoding in an HTTP/1.0 request",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        ("RFC 9112 §7.1: a chunk size that is not hex", chunked("zz\r\nabc\r\n0\r\n\r\n"), 400),
        ("RFC 9112 §7.1: a chunk size that overflows", chunked("fffffffffffffffff\r\n"), 400),
        ("RFC 9112 §7.1: chunk data not followed by CRLF", chunked("3\r\nabcX\r\n0\r\n\r\n"), 400),
        ("RFC 9112 §2.2: a bare LF ending a chunk size line", chunked("3\nabc\r\n0\r\n\r\n"), 400),
        ("RFC 9112 §2.2: a bare CR in a chunk size line", chunked("3\rabc\r\n0\r\n\r\n"), 400),
        ("RFC 9112 §5.1: whitespace between field name and colon", b"GET / HTTP/1.1\r\nHost : t\r\n\r\n".to_vec(), 400),
        ("RFC 9112 §5.2: obs-fold", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n".to_vec(), 400),
        ("RFC 9110 §5.5: NUL in a field value", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n".to_vec(), 400),
        ("RFC 9110 §5.5: a bare CR in a field value", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n".to_vec(), 400),
        ("RFC 9110 §5.5: SOH in a field value", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n".to_vec(), 400),
        ("RFC 9110 §5.5: VT in a field value", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x0bb\r\n\r\n".to_vec(), 400),
        ("RFC 9110 §5.5: DEL in a field value", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x7fb\r\n\r\n".to_vec(), 400),
        (
            "RFC 9110 §5.5: VT before a framing value",
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        (
            "RFC 9110 §5.1: an invalid character in a field name",
            b"GET / HTTP/1.1\r\nHost: t\r\nX(A): 1\r\n\r\n".to_vec(),
            400,
        ),
        ("RFC 9112 §3.2: HTTP/1.1 without Host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("RFC 9112 §3.2: two Host fields", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), 400),
        ("RFC 9110 §7.2: an invalid Host", b"GET / HTTP/1.1\r\nHost: a b/c\r\n\r\n".to_vec(), 400),
        ("RFC 9112 §3: a malformed request line", b"GET  / HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400),
        ("RFC 9112 §3.2: a request-target in no known form", b"GET foo HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400),
        ("RFC 9112 §2.3: an unsupported HTTP version", b"GET / HTTP/2.0\r\nHost: t\r\n\r\n".to_vec(), 505),
        ("RFC 9110 §9.3.6: CONNECT is not served", b"CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n".to_vec(), 501),
        ("RFC 9112 §3: a request-target over 8 KiB", long_uri.into_bytes(), 414),
        ("RFC 9112 §3: a request line that never ends", long_line.into_bytes(), 414),
        ("RFC 9112 §3: a request line over 8 KiB by its method", long_method.into_bytes(), 414),
        ("RFC 6585 §5: a request head over 16 KiB", big_head.into_bytes(), 431),
        ("RFC 6585 §5: more than 100 header fields", many_fields.into_bytes(), 431),
    ];
    for (rule, raw, status) in cases {
        assert_eq!(exchange(&proxy, &raw), (status, true), "{rule}");
    }
    // The proxy is still fine for everyone else.
    assert_eq!(proxy.get("/").status, 200);
}

#[test]
fn absolute_form_takes_the_host_from_the_uri() {
    // RFC 9112 §3.2.2: the authority in an absolute-form target replaces any Host field.
    let ts = targets(1);
    let proxy = Proxy::start(&ts, "");
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET http://example.test:81/headers HTTP/1.1\r\nHost: other\r\n\r\n");
    let seen = client.read_response(false).text();
    assert!(seen.starts_with("GET /headers HTTP/1.1\r\nHost: example.test:81\r\n"), "{seen}");
    assert!(!seen.contains("other"));
}

#[test]
fn an_http10_client_is_closed_after_its_response_unless_it_asked_for_keep_alive() {
    // RFC 9112 §9.3: HTTP/1.0 is persistent only with Connection: keep-alive.
    let ts = targets(1);
    let proxy = Proxy::start(&ts, "");
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET / HTTP/1.0\r\n\r\n");
    let r = client.read_response(false);
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(client.is_closed());

    let mut client = Client::connect(proxy.addr);
    for _ in 0..2 {
        client.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let r = client.read_response(false);
        assert_eq!((r.status, r.header("connection")), (200, Some("keep-alive")));
    }
}

#[test]
fn a_half_closed_client_still_gets_its_response() {
    let ts = targets(1);
    let proxy = Proxy::start(&ts, "");
    let mut client = Client::connect(proxy.addr);
    client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
    client.stream.shutdown(std::net::Shutdown::Write).expect("half-close");
    let r = client.read_response(false);
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    assert!(client.is_closed());
}

/// A proxy in front of one upstream of the test's own that sends `reply` to every request.
fn proxy_before(reply: &'static [u8], extra: &str) -> (Proxy, Arc<AtomicUsize>) {
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&connections);
    let addr = serve_raw(move |mut conn: TcpStream| {
        counter.fetch_add(1, Ordering::SeqCst);
        while read_head(&mut conn) {
            if conn.write_all(reply).is_err() {
                return;
            }
        }
    });
    let proxy = Proxy::with_config(&format!(
        "{{\"ports\": [\"http://{addr}/\"], \"listen\": \"127.0.0.1:0\", \"fall\": 100{extra}}}"
    ));
    (proxy, connections)
}

#[test]
fn malformed_responses_become_502_and_the_upstream_connection_is_dropped() {
    let cases: [(&str, &'static [u8]); 9] = [
        ("RFC 9112 §4: a malformed status line", b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n"),
        ("RFC 9110 §5.5: NUL in a field value", b"HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 0\r\n\r\n"),
        ("RFC 9110 §5.5: SOH in a field value", b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 0\r\n\r\n"),
        ("RFC 9110 §5.5: VT in a field value", b"HTTP/1.1 200 OK\r\nX-A: a\x0bb\r\nContent-Length: 0\r\n\r\n"),
        ("RFC 9110 §5.5: DEL in a field value", b"HTTP/1.1 200 OK\r\nX-A: a\x7fb\r\nContent-Length: 0\r\n\r\n"),
        ("RFC 9112 §4: a status code out of range", b"HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n"),
        ("RFC 9112 §5: a malformed field line", b"HTTP/1.1 200 OK\r\nNo colon here\r\nContent-Length: 0\r\n\r\n"),
        (
            "RFC 9110 §8.6: conflicting Content-Length",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        ),
        ("RFC 9110 §15.2.2: an unrequested 101", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"),
    ];
    for (rule, reply) in cases {
        let (proxy, connections) = proxy_before(reply, "");
        for _ in 0..2 {
            assert_eq!(proxy.get("/").status, 502, "{rule}");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 2, "{rule}: a connection that sent garbage is not reused");
    }
}

#[test]
fn a_response_with_both_content_length_and_chunked_is_forwarded_chunked_and_not_reused() {
    // RFC 9112 §6.3 ¶3: Transfer-Encoding overrides Content-Length; the message is suspect.
    let (proxy, connections) = proxy_before(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "",
    );
    let mut client = Client::connect(proxy.addr);
    for _ in 0..2 {
        let r = client.request("GET", "/", &[], b"");
        assert_eq!((r.text().as_str(), r.header("content-length")), ("hello", None));
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    }
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[test]
fn body_size_limit_answers_413() {
    let ts = targets(1);
    let proxy = Proxy::start(&ts, "\"max_body_size\": 1000");
    let mut client = Client::connect(proxy.addr);
    assert_eq!(client.request("POST", "/echo", &[], &[b'a'; 1000]).status, 200);
    assert_eq!(exchange(&proxy, b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n"), (413, true));
    let big_chunked = chunked(&format!("7d0\r\n{}\r\n0\r\n\r\n", "a".repeat(2000)));
    assert_eq!(exchange(&proxy, &big_chunked), (413, true));
}

#[test]
fn slow_clients_time_out_with_408_and_idle_ones_are_closed() {
    let ts = targets(1);
    let proxy =
        Proxy::start(&ts, "\"client_header_timeout\": 0.3, \"client_body_timeout\": 0.3, \"keepalive_timeout\": 0.3");
    let started = Instant::now();
    // A head that never finishes (slowloris): 408, then close.
    assert_eq!(exchange(&proxy, b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: "), (408, true));
    // A body that stops coming: 408, then close.
    assert_eq!(exchange(&proxy, b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc"), (408, true));
    // A connection that never says anything, and one idle after a request: closed quietly.
    let mut silent = Client::connect(proxy.addr);
    assert!(silent.is_closed());
    let mut idle = Client::connect(proxy.addr);
    assert_eq!(idle.request("GET", "/", &[], b"").status, 200);
    assert!(idle.is_closed());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_stalled_response_body_closes_the_client_connection() {
    let addr = serve_raw(|mut conn: TcpStream| {
        if read_head(&mut conn) {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial");
            // Then silence, until the proxy gives up and closes.
            let _ = conn.read(&mut [0u8; 1]);
        }
    });
    let proxy = Proxy::with_config(&format!(
        "{{\"ports\": [\"http://{addr}/\"], \"listen\": \"127.0.0.1:0\", \"upstream_timeout\": 0.3}}"
    ));
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut got = Vec::new();
    let _ = client.stream.read_to_end(&mut got);
    assert!(got.ends_with(b"partial"), "{}", String::from_utf8_lossy(&got));
}

#[test]
fn connections_beyond_max_connections_get_503_while_the_others_are_served() {
    let ts = targets(1);
    let proxy = Proxy::start(&ts, "\"max_connections\": 4");
    let mut held: Vec<Client> = (0..4).map(|_| Client::connect(proxy.addr)).collect();
    assert_eq!(held[0].request("GET", "/", &[], b"").status, 200);
    let (status, closed) = exchange(&proxy, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!((status, closed), (503, true));
    assert_eq!(held[3].request("GET", "/", &[], b"").status, 200);
    proxy.proc.wait_line("max_connections (4) reached", Duration::from_secs(2));
}

#[test]
fn a_thousand_clients_sending_a_byte_a_second_do_not_slow_anyone_else() {
    let ts = targets(1);
    let proxy = Proxy::start(&ts, "");
    let measure = |rounds: usize| {
        let mut client = Client::connect(proxy.addr);
        let mut worst = Duration::ZERO;
        for _ in 0..rounds {
            let t = Instant::now();
            assert_eq!(client.request("GET", "/", &[], b"").status, 200);
            worst = worst.max(t.elapsed());
        }
        worst
    };
    let alone = measure(200);
    let mut slow: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut s = TcpStream::connect(proxy.addr).expect("connect");
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ").expect("send");
            s
        })
        .collect();
    let mut worst = Duration::ZERO;
    for _second in 0..3 {
        let tick = Instant::now();
        for s in &mut slow {
            s.write_all(b"a").expect("a byte");
        }
        worst = worst.max(measure(100));
        std::thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
    }
    println!("worst request latency: {alone:?} alone, {worst:?} beside 1000 slow clients");
    assert!(worst < Duration::from_millis(250), "{worst:?} beside 1000 slow clients ({alone:?} alone)");
}
