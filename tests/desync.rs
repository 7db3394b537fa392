//! Bytes never cross a message boundary: a body byte is never a request, a response never
//! reaches a client that did not ask for it, and a broken response is a 502, not silence.
//! Real processes on loopback; misbehaving targets are listeners of the test's own.

mod common;

use common::{send_in_background, serve_raw, targets, Client, Proxy, Recorder, Then};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A request body that is itself a request, so that a body byte taken for a request shows.
fn smuggling_body(size: usize) -> Vec<u8> {
    let unit = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
    unit.iter().copied().cycle().take(size).collect()
}

fn proxy_for(url: &str, extra: &str) -> Proxy {
    Proxy::with_config(&format!("{{\"ports\": [\"{url}\"], \"listen\": \"127.0.0.1:0\", \"fall\": 100{extra}}}"))
}

/// A target of the test's own: each request head on `conn` is answered with the writes `reply`
/// makes of its request line, one `write` each.
fn answer_each(mut conn: TcpStream, reply: impl Fn(&str) -> Vec<Vec<u8>>) {
    let _ = conn.set_nodelay(true);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        head.clear();
        while !head.ends_with(b"\r\n\r\n") {
            match conn.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let line = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_string();
        for write in reply(&line) {
            if conn.write_all(&write).is_err() {
                return;
            }
        }
    }
}

/// An answer whose body is the request line it answers.
fn echo_line(line: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{line}", line.len()).into_bytes()
}

fn post_head(path: &str, length: usize) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n").into_bytes()
}

#[test]
fn a_body_whose_length_the_connection_field_names_still_reaches_the_target_whole() {
    let ts = targets(1);
    let proxy = Proxy::start(&ts, "");
    let mut client = Client::connect(proxy.addr);
    client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello");
    let r = client.read_response(false);
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    client.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    );
    let r = client.read_response(false);
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    let seen = client.request("GET", "/headers", &[("Connection", "Host, X-Gone"), ("X-Gone", "1")], b"").text();
    assert!(seen.contains("Host: test\r\n") && !seen.contains("X-Gone"), "{seen}");
    let r = client.request("GET", "/", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "Hello, world!"), "the connection stays in step");
}

#[test]
fn a_response_whose_length_the_connection_field_names_stays_framed() {
    let addr = serve_raw(|mut conn: TcpStream| {
        while common::read_head(&mut conn) {
            let reply = b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 2\r\n\r\nok";
            if conn.write_all(reply).is_err() {
                return;
            }
        }
    });
    let proxy = proxy_for(&format!("http://{addr}/"), "");
    let mut client = Client::connect(proxy.addr);
    client.stream.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    for _ in 0..3 {
        let r = client.request("GET", "/", &[], b"");
        assert_eq!((r.status, r.text().as_str(), r.header("content-length")), (200, "ok", Some("2")));
    }
}

#[test]
fn an_upload_answered_early_never_becomes_a_request() {
    // The target answers before reading the body, keeps the connection alive in its answer, and
    // closes: the proxy must drop the rest of the body, then carry the next request.
    let target = Recorder::start(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n", Then::Close);
    let proxy = proxy_for(&target.url(), "");
    let body = smuggling_body(2 << 20);
    let mut client = Client::connect(proxy.addr);
    client.send(&post_head("/upload", body.len()));
    let writer = send_in_background(&client.stream, body);
    assert_eq!(client.read_response(false).status, 413);
    writer.join().expect("writer");
    let r = client.request("GET", "/after", &[], b"");
    assert_eq!(r.status, 413, "the next request reached the target, not a 400 made of body bytes");
    assert_eq!(target.request_lines(), ["POST /upload HTTP/1.1", "GET /after HTTP/1.1"]);
}

#[test]
fn an_early_answer_from_a_target_that_then_closes_still_reaches_an_uploading_client() {
    // The target answers and closes without reading: writing the body to it fails, and its
    // answer, already in the proxy's receive buffer, must still be forwarded.
    let target = Recorder::start(
        b"HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Length: 6\r\n\r\ndenied",
        Then::Close,
    );
    let proxy = proxy_for(&target.url(), "");
    let mut client = Client::connect(proxy.addr);
    for _ in 0..3 {
        let body = smuggling_body(2 << 20);
        client.send(&post_head("/upload", body.len()));
        let writer = send_in_background(&client.stream, body);
        let r = client.read_response(false);
        assert_eq!((r.status, r.text().as_str()), (401, "denied"));
        writer.join().expect("writer");
    }
    assert_eq!(target.request_lines(), ["POST /upload HTTP/1.1"; 3]);
}

#[test]
fn a_keep_alive_client_gets_no_stray_400_after_a_streamed_echo_upload() {
    let ts = targets(1);
    let proxy = Proxy::start(&ts, "");
    let mut client = Client::connect(proxy.addr);
    for _ in 0..3 {
        let body = smuggling_body(2 << 20);
        client.send(&post_head("/echo", body.len()));
        let writer = send_in_background(&client.stream, body.clone());
        let r = client.read_response(false);
        writer.join().expect("writer");
        assert_eq!(r.status, 200);
        assert!(r.body == body, "the echo came back whole");
        let r = client.request("GET", "/", &[], b"");
        assert_eq!((r.status, r.text().as_str()), (200, "Hello, world!"));
    }
}

#[test]
fn an_early_final_answer_to_expect_continue_closes_the_connection() {
    // The client holds its body back; after a final answer it may send the body or its next
    // request, and no one can tell which: the connection must close.
    let target = Recorder::start(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n", Then::Close);
    let proxy = proxy_for(&target.url(), "");
    let mut client = Client::connect(proxy.addr);
    client.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n");
    let r = client.read_response(false);
    assert_eq!((r.status, r.header("connection")), (401, Some("close")));
    assert!(client.is_closed());
}

#[test]
fn a_413_from_the_proxy_reaches_a_client_that_is_still_uploading() {
    let ts = targets(1);
    let proxy = Proxy::start(&ts, "\"max_body_size\": 1000");
    for _ in 0..5 {
        let body = smuggling_body(2 << 20);
        let mut client = Client::connect(proxy.addr);
        client.send(&post_head("/echo", body.len()));
        let writer = send_in_background(&client.stream, body);
        let r = client.try_read_response(false).expect("the 413 arrives before any reset");
        assert_eq!((r.status, r.header("connection")), (413, Some("close")));
        writer.join().expect("writer");
    }
}

#[test]
fn a_local_answer_keeps_the_rest_of_the_body_out_of_the_next_request() {
    let port = common::closed_port();
    let proxy = proxy_for(&format!("http://127.0.0.1:{port}/"), ", \"sleeping\": 60");
    let body = smuggling_body(100_000);
    let mut client = Client::connect(proxy.addr);
    client.send(&post_head("/upload", body.len()));
    let r = client.read_response(false);
    assert_eq!((r.status, r.text().as_str()), (500, "All servers is off"));
    send_in_background(&client.stream, body).join().expect("writer");
    let r = client.request("GET", "/", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (500, "All servers is off"), "not a 400 made of body bytes");
}

#[test]
fn an_endless_chunk_extension_is_refused_and_never_reaches_the_target() {
    let target = Recorder::start(b"", Then::Listen);
    let proxy = proxy_for(&target.url(), "");
    let mut client = Client::connect(proxy.addr);
    client.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    common::eventually(Duration::from_secs(5), "the head to reach the target", || {
        (target.heads().len() == 1).then_some(())
    });
    client.send(b"5;ext=");
    let writer = send_in_background(&client.stream, vec![b'a'; 4 << 20]);
    assert_eq!(client.read_response(false).status, 400);
    writer.join().expect("writer");
    common::eventually(Duration::from_secs(5), "the proxy to close the upstream connection", || {
        (target.ended() == 1).then_some(())
    });
    assert!(target.after().is_empty(), "{} bytes of the chunk-size line were forwarded", target.after().len());
}

#[test]
fn malformed_trailers_and_framing_fields_in_trailers_are_refused() {
    let target = Recorder::start(b"", Then::Listen);
    let proxy = proxy_for(&target.url(), "");
    let cases = [
        "0\r\nNoColon\r\n\r\n",
        "0\r\nX-A: 1\r\n folded\r\n\r\n",
        "0\r\nContent-Length: 5\r\n\r\n",
        "0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "0\r\nHost: elsewhere\r\n\r\n",
        "0\r\nX-A: a\u{7}b\r\n\r\n",
        "5;a=\"unterminated\r\nhello\r\n0\r\n\r\n",
    ];
    for body in cases {
        let mut client = Client::connect(proxy.addr);
        client.send(format!("POST /t HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{body}").as_bytes());
        assert_eq!(client.read_response(false).status, 400, "{body:?}");
    }
    common::eventually(Duration::from_secs(5), "the proxy to close every upstream connection", || {
        (target.ended() == cases.len()).then_some(())
    });
    let after = String::from_utf8_lossy(&target.after()).into_owned();
    for never in ["NoColon", "folded", "Content-Length", "Transfer-Encoding", "elsewhere", "unterminated"] {
        assert!(!after.contains(never), "{never:?} reached the target: {after:?}");
    }
    // A valid trailer still passes.
    let ts = targets(1);
    let proxy = Proxy::start(&ts, "");
    let mut client = Client::connect(proxy.addr);
    client.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n",
    );
    assert_eq!(client.read_response(false).text(), "hello");
}

#[test]
fn a_framing_field_in_a_response_trailer_never_reaches_the_client() {
    let addr = common::raw_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 9\r\n\r\nsmuggled!",
    );
    let proxy = proxy_for(&format!("http://{addr}/"), "");
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut got = Vec::new();
    let _ = client.stream.read_to_end(&mut got);
    let got = String::from_utf8_lossy(&got);
    assert!(!got.contains("Content-Length: 9") && !got.contains("smuggled"), "{got}");
    assert!(got.starts_with("HTTP/1.1 502") || !got.ends_with("0\r\n\r\n"), "never a complete message: {got}");
}

#[test]
fn identical_content_length_fields_reach_the_target_once() {
    let target = Recorder::start(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", Then::Listen);
    let proxy = proxy_for(&target.url(), "");
    let mut client = Client::connect(proxy.addr);
    client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(client.read_response(false).status, 200);
    let head = target.heads().remove(0).to_ascii_lowercase();
    assert_eq!(head.matches("content-length").count(), 1, "{head}");
}

#[test]
fn a_target_that_answers_garbage_gives_a_502_never_an_empty_reply() {
    let replies: [&'static [u8]; 7] = [
        b"HTTP/1.1 2000 X\r\nContent-Length: 0\r\n\r\n",
        b"garbage\r\n\r\n",
        b"Hello, world!",
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;bad ext\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    ];
    for reply in replies {
        let addr = common::raw_upstream(reply);
        let proxy = proxy_for(&format!("http://{addr}/"), "");
        let r = proxy.get("/");
        assert_eq!(r.status, 502, "{:?}", String::from_utf8_lossy(reply));
        proxy.proc.wait_line("-> 502", Duration::from_secs(2));
    }
}

#[test]
fn a_final_answer_that_arrives_with_an_interim_one_and_a_close_is_forwarded() {
    // One read brings a 103, the final 200 and the target's FIN: the FIN must not be taken
    // for "closed without an answer" while the 200 still waits to be parsed.
    let addr = common::raw_upstream(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    );
    let proxy = Proxy::with_config(&format!("{{\"ports\": [\"http://{addr}/\"], \"listen\": \"127.0.0.1:0\"}}"));
    for _ in 0..5 {
        let mut client = Client::connect(proxy.addr);
        client.send(&post_head("/form", 3));
        client.send(b"a=1");
        let interim = client.read_response(false);
        assert_eq!(interim.status, 103);
        let r = client.read_response(false);
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    }
    assert!(!proxy.proc.lines().iter().any(|l| l.contains(" down: ")), "{:#?}", proxy.proc.lines());
}

#[test]
fn loose_transfer_encoding_lists_reach_the_target_as_one_plain_field() {
    // A target that reads only the first field, or compares the last item literally, must see
    // the framing the proxy saw.
    let target = Recorder::start(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", Then::Listen);
    let proxy = proxy_for(&target.url(), "");
    let variants = [
        "Transfer-Encoding: chunked,\r\n",
        "Transfer-Encoding: , CHUNKED ,\r\n",
        "Transfer-Encoding:\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: Chunked\r\n",
    ];
    for te in variants {
        let mut client = Client::connect(proxy.addr);
        client.send(format!("POST / HTTP/1.1\r\nHost: t\r\n{te}\r\n5\r\nhello\r\n0\r\n\r\n").as_bytes());
        assert_eq!(client.read_response(false).status, 200, "{te:?}");
    }
    let heads = target.heads();
    assert_eq!(heads.len(), variants.len());
    for head in &heads[..3] {
        assert_eq!(head.matches("Transfer-Encoding").count(), 1, "{head}");
        assert!(head.contains("\r\nTransfer-Encoding: chunked\r\n"), "{head}");
    }
    assert!(heads[3].contains("\r\nTransfer-Encoding: gzip, chunked\r\n"), "{}", heads[3]);
}

#[test]
fn a_loose_transfer_encoding_from_a_target_reaches_the_client_as_one_plain_field() {
    let addr = common::raw_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\nTransfer-Encoding: Chunked,\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    );
    let proxy = proxy_for(&format!("http://{addr}/"), "");
    let r = proxy.get("/");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let te: Vec<_> = r.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding")).collect();
    assert_eq!(te.len(), 1, "{:?}", r.headers);
    assert_eq!(te[0].1, "chunked");
}

#[test]
fn an_http10_client_never_gets_chunked_framing() {
    // RFC 9112 §6.1: chunked is HTTP/1.1. A target that chunks anyway gets its client a 502,
    // not a body with chunk framing inside it; target-svc answers an HTTP/1.0 request plainly.
    let addr = serve_raw(|mut conn: TcpStream| {
        while common::read_head(&mut conn) {
            let reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
            if conn.write_all(reply).is_err() {
                return;
            }
        }
    });
    let proxy = proxy_for(&format!("http://{addr}/"), "");
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(client.read_response(false).status, 502);
    let ts = targets(1);
    let proxy = Proxy::start(&ts, "");
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET /chunked/5 HTTP/1.0\r\n\r\n");
    let r = client.read_response(false);
    assert_eq!((r.status, r.text().as_str(), r.header("transfer-encoding")), (200, "abcde", None));
    // An HTTP/1.0 response with Transfer-Encoding has faulty framing.
    let addr = common::raw_upstream(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n");
    let proxy = proxy_for(&format!("http://{addr}/"), "");
    assert_eq!(proxy.get("/").status, 502);
}

#[test]
fn framing_fields_spelled_with_underscores_or_other_dashes_never_reach_the_target() {
    // CGI-style servers read Content_Length as HTTP_CONTENT_LENGTH, the field it imitates, and
    // a server that folds separators reads Transfer---Encoding as Transfer-Encoding.
    let target = Recorder::start(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", Then::Listen);
    let proxy = proxy_for(&target.url(), "");
    let mut client = Client::connect(proxy.addr);
    client.send(
        b"GET / HTTP/1.1\r\nHost: t\r\nContent_Length: 5\r\nTransfer_Encoding: chunked\r\nX_Forwarded_For: 127.6.6.6\r\n\
          Transfer---Encoding: chunked\r\nContent-Length_: 7\r\ncontentlength: 8\r\nX_Custom_Thing: kept\r\n\r\n",
    );
    assert_eq!(client.read_response(false).status, 200);
    let head = target.heads().remove(0);
    for gone in [
        "Content_Length",
        "Transfer_Encoding",
        "X_Forwarded_For",
        "127.6.6.6",
        "Transfer---",
        "Length_",
        "contentlength",
    ] {
        assert!(!head.contains(gone), "{gone} reached the target: {head}");
    }
    assert!(head.contains("X_Custom_Thing: kept"), "{head}");
}

#[test]
fn a_second_unsolicited_answer_is_caught_while_its_connection_idles() {
    // Each answer names its request; now and then the target sends a second, unsolicited one.
    // The pool must catch it while the connection idles, not hand it to the next request.
    let addr = serve_raw(|conn: TcpStream| {
        answer_each(conn, |line| {
            let mut writes = vec![echo_line(line)];
            if line.contains("push") {
                writes.push(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL".to_vec());
            }
            writes
        })
    });
    let proxy = proxy_for(&format!("http://{addr}/"), "");
    let mut client = Client::connect(proxy.addr);
    for round in 0..5 {
        let push = format!("/push-{round}");
        assert_eq!(client.request("GET", &push, &[], b"").text(), format!("GET {push} HTTP/1.1"));
        // The stray comes with the answer or while the connection idles, and is counted and
        // dropped there: waiting for that keeps the test out of the race no proxy wins.
        common::eventually(Duration::from_secs(5), "the stray to be caught", || {
            (proxy.metric("ringproxy_stray_responses_total") > round as f64).then_some(())
        });
        for i in 0..3 {
            let path = format!("/n-{round}-{i}");
            assert_eq!(client.request("GET", &path, &[], b"").text(), format!("GET {path} HTTP/1.1"));
        }
    }
}

#[test]
fn a_second_answer_behind_a_response_that_fills_the_read_buffer_is_never_delivered() {
    // The proxy reads a response into a buffer of max_request_head + 1 KiB (17 KiB by
    // default). A response of exactly that size, with a second one right behind it in the same
    // segment, fills the buffer in one read: the socket is not seen drained, and the second
    // answer's event is already spent. It must be looked for before the connection is reused.
    const BUFFER: usize = 16 * 1024 + 1024;
    let addr = serve_raw(|conn: TcpStream| {
        answer_each(conn, |line| {
            if !line.contains("full") {
                return vec![echo_line(line)];
            }
            let length = BUFFER - "HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n".len();
            let mut both = format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n").into_bytes();
            both.resize(BUFFER, b'x');
            both.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL");
            vec![both]
        })
    });
    let proxy = proxy_for(&format!("http://{addr}/"), "");
    let mut client = Client::connect(proxy.addr);
    for round in 0..5 {
        let r = client.request("GET", &format!("/full-{round}"), &[], b"");
        assert!(r.body.len() > 17_000 && r.body.iter().all(|&b| b == b'x'), "the long answer itself");
        for i in 0..3 {
            let path = format!("/n-{round}-{i}");
            assert_eq!(client.request("GET", &path, &[], b"").text(), format!("GET {path} HTTP/1.1"));
        }
    }
    common::eventually(Duration::from_secs(5), "each second answer caught and counted", || {
        (proxy.metric("ringproxy_stray_responses_total") >= 5.0).then_some(())
    });
    // Logged too, by a writer thread of the log's own: the line may still be on its way.
    proxy.proc.wait_line("sent bytes nobody asked for", Duration::from_secs(5));
}
