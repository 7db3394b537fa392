//! The proxy end to end: real ringproxy and target-svc processes on loopback ports.

mod common;

use common::{eventually, pattern, raw_upstream, read_head, serve_raw, tally, targets, Client, Proxy};
use std::io::Write;
use std::time::{Duration, Instant};

#[test]
fn fifty_fresh_connections_spread_ten_to_each_of_five_targets() {
    let ts = targets(5);
    let proxy = Proxy::start(&ts, "");
    let responses: Vec<_> = (0..50).map(|_| proxy.get("/")).collect();
    assert!(responses.iter().all(|r| r.status == 200 && r.body == b"Hello, world!"));
    let counts = tally(&responses);
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![10; 5], "{counts:?}");
}

#[test]
fn fifty_requests_on_one_keep_alive_connection_spread_ten_each() {
    let ts = targets(5);
    let proxy = Proxy::start(&ts, "");
    let mut client = Client::connect(proxy.addr);
    let responses: Vec<_> = (0..50).map(|_| client.request("GET", "/", &[], b"")).collect();
    assert!(responses.iter().all(|r| r.status == 200));
    assert_eq!(tally(&responses).values().copied().collect::<Vec<_>>(), vec![10; 5]);
}

#[test]
fn killed_target_gets_no_requests_while_every_request_succeeds() {
    let mut ts = targets(5);
    let proxy = Proxy::start(&ts, "");
    let mut client = Client::connect(proxy.addr);
    for _ in 0..10 {
        assert_eq!(client.request("GET", "/", &[], b"").status, 200);
    }
    ts[2].kill();
    let responses: Vec<_> = (0..60).map(|_| client.request("GET", "/", &[], b"")).collect();
    assert!(responses.iter().all(|r| r.status == 200 && r.body == b"Hello, world!"));
    let counts = tally(&responses);
    assert!(!counts.contains_key("t3"), "{counts:?}");
    assert_eq!(counts.len(), 4);
    proxy.proc.wait_line("target http://127.0.0.1", Duration::from_secs(1));
    assert!(proxy.proc.lines().iter().any(|l| l.contains("down: connect failed")));
}

#[test]
fn restarted_target_is_back_within_three_sleeping_periods() {
    let mut ts = targets(3);
    let proxy = Proxy::start(&ts, "\"sleeping\": 1");
    ts[1].kill();
    for _ in 0..3 {
        assert_eq!(proxy.get("/").status, 200);
    }
    proxy.proc.wait_line("down: connect failed", Duration::from_secs(5));
    ts[1].restart();
    let restarted = Instant::now();
    eventually(Duration::from_secs(3), "t2 to serve again", || {
        (0..3).any(|_| proxy.get("/").target() == "t2").then_some(())
    });
    let took = restarted.elapsed();
    assert!(took <= Duration::from_secs(3), "back after {took:?}");
    proxy.proc.wait_line("up (3 of 3 live)", Duration::from_secs(1));
}

#[test]
fn all_killed_answers_500_all_servers_is_off_and_all_restarted_answers_200() {
    let mut ts = targets(3);
    let proxy = Proxy::start(&ts, "\"sleeping\": 1");
    ts.iter_mut().for_each(|t| t.kill());
    let r = proxy.get("/");
    assert_eq!(r.status, 500);
    assert_eq!(r.body, b"All servers is off");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("content-length"), Some("18"));
    ts.iter_mut().for_each(|t| t.restart());
    eventually(Duration::from_secs(3), "a 200 after the restart", || (proxy.get("/").status == 200).then_some(()));
    eventually(Duration::from_secs(3), "every target back", || {
        let seen = tally(&(0..6).map(|_| proxy.get("/")).collect::<Vec<_>>());
        (seen.len() == 3).then_some(())
    });
}

#[test]
fn a_one_mib_post_body_arrives_intact() {
    let ts = targets(2);
    let proxy = Proxy::start(&ts, "");
    let body = pattern(1 << 20);
    let mut client = Client::connect(proxy.addr);
    for _ in 0..2 {
        let r = client.request("POST", "/echo", &[], &body);
        assert_eq!(r.status, 200);
        assert!(r.body == body, "echoed body differs");
    }
}

/// Bytes with no period that a lost, repeated or reordered stretch could hide behind.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn long_bodies_pass_through_whole_and_the_connection_carries_on() {
    // Over 64 KiB a response body moves through a large buffer; what comes before and after
    // it on the connection must not notice.
    let ts = targets(2);
    let proxy = Proxy::start(&ts, "");
    let mut client = Client::connect(proxy.addr);
    for (i, size) in [64 * 1024 + 1, 1 << 20, (5 << 20) + 3].into_iter().enumerate() {
        let body = noise(size, i as u64 + 1);
        let r = client.request("POST", "/echo", &[], &body);
        assert_eq!(r.status, 200);
        assert!(r.body == body, "the {size}-byte echo came back different");
        let r = client.request("GET", &format!("/bytes/{size}"), &[], b"");
        assert!(r.body == pattern(size), "the {size}-byte download came back different");
        let r = client.request("HEAD", &format!("/bytes/{size}"), &[], b"");
        assert_eq!((r.status, r.body.len()), (200, 0));
        assert_eq!(client.request("GET", "/", &[], b"").body, b"Hello, world!");
    }
}

#[test]
fn a_client_that_stops_reading_a_long_body_holds_up_nobody_else() {
    let ts = targets(1);
    let proxy = Proxy::start(&ts, "");
    let size = 32 << 20;
    let mut slow = Client::connect(proxy.addr);
    slow.send(format!("GET /bytes/{size} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    let mut other = Client::connect(proxy.addr);
    for _ in 0..20 {
        assert_eq!(other.request("GET", "/", &[], b"").body, b"Hello, world!");
    }
    let r = slow.read_response(false);
    assert!(r.body == pattern(size), "the body the slow client read at last differs");
    assert_eq!(slow.request("GET", "/", &[], b"").body, b"Hello, world!");
}

#[test]
fn a_target_that_dies_inside_a_long_body_cuts_the_client_off_and_says_so() {
    let addr = serve_raw(|mut conn| {
        if read_head(&mut conn) {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n");
            let _ = conn.write_all(&[b'x'; 300_000]);
        }
    });
    let proxy =
        Proxy::with_config(&format!("{{\"ports\": [\"http://{addr}/\"], \"listen\": \"127.0.0.1:0\", \"fall\": 100}}"));
    for _ in 0..3 {
        let mut client = Client::connect(proxy.addr);
        let err = client.try_request("GET", "/", &[], b"").expect_err("a cut body is no response");
        assert!(err.contains("inside a body"), "{err}");
    }
    proxy.proc.wait_line("closed before the response body ended", Duration::from_secs(5));
}

#[test]
fn chunked_request_and_response_bodies_stream_through() {
    let ts = targets(2);
    let proxy = Proxy::start(&ts, "");
    let mut client = Client::connect(proxy.addr);
    client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    client.send(b"7;ext=1\r\n, world\r\n0\r\nX-Trailer: yes\r\n\r\n");
    let r = client.read_response(false);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.text(), "hello, world");
    let r = client.request("GET", "/chunked/100000", &[], b"");
    assert_eq!(r.body.len(), 100_000);
    assert_eq!(client.request("GET", "/", &[], b"").body, b"Hello, world!");
}

#[test]
fn head_204_and_304_carry_no_body_and_keep_the_connection_in_step() {
    let ts = targets(1);
    let proxy = Proxy::start(&ts, "");
    let mut client = Client::connect(proxy.addr);
    let r = client.request("HEAD", "/", &[], b"");
    assert_eq!((r.status, r.header("content-length")), (200, Some("13")));
    assert_eq!(client.request("GET", "/status/204", &[], b"").status, 204);
    assert_eq!(client.request("GET", "/status/304", &[], b"").status, 304);
    assert_eq!(client.request("GET", "/", &[], b"").body, b"Hello, world!");
}

#[test]
fn expect_100_continue_gets_the_interim_response_before_the_body() {
    let ts = targets(1);
    let proxy = Proxy::start(&ts, "");
    let mut client = Client::connect(proxy.addr);
    client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    assert_eq!(client.read_response(false).status, 100);
    client.send(b"ping");
    let r = client.read_response(false);
    assert_eq!((r.status, r.text().as_str()), (200, "ping"));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let ts = targets(3);
    let proxy = Proxy::start(&ts, "");
    let mut client = Client::connect(proxy.addr);
    client.send(
        b"GET /bytes/5 HTTP/1.1\r\nHost: t\r\n\r\nPOST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc\
          GET /status/204 HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(client.read_response(false).body, b"abcde");
    assert_eq!(client.read_response(false).body, b"abc");
    assert_eq!(client.read_response(false).status, 204);
    assert_eq!(client.read_response(false).body, b"Hello, world!");
}

#[test]
fn a_close_delimited_response_is_forwarded_whole_and_then_closed() {
    let ts = targets(1);
    let proxy = Proxy::start(&ts, "");
    let mut client = Client::connect(proxy.addr);
    let r = client.request("GET", "/close/100000", &[], b"");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(r.body == pattern(100_000));
    assert!(client.is_closed());
}

#[test]
fn hop_by_hop_fields_are_removed_in_both_directions() {
    let ts = targets(1);
    let proxy = Proxy::start(&ts, "");
    let mut client = Client::connect(proxy.addr);
    let seen = client
        .request(
            "GET",
            "/headers",
            &[
                ("Connection", "keep-alive, X-Private"),
                ("X-Private", "secret"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"),
                ("TE", "trailers"),
                ("Upgrade", "websocket"),
                ("X-Forwarded-For", "192.0.2.1"),
                ("X-End-To-End", "kept"),
            ],
            b"",
        )
        .text()
        .to_ascii_lowercase();
    for gone in ["connection:", "x-private", "keep-alive:", "proxy-connection", "te:", "upgrade"] {
        assert!(!seen.contains(gone), "{gone} reached the target:\n{seen}");
    }
    assert!(seen.contains("x-end-to-end: kept"), "{seen}\n{:#?}", proxy.proc.lines());
    assert!(seen.contains("x-forwarded-for: 192.0.2.1, 127.0.0.1"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: http"));

    let addr = raw_upstream(
        b"HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: x\r\n\
          Trailer: X-T\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok",
    );
    let proxy = Proxy::with_config(&format!("{{\"ports\": [\"http://{addr}/\"], \"listen\": \"127.0.0.1:0\"}}"));
    let r = proxy.get("/");
    assert_eq!((r.status, r.text().as_str(), r.header("x-kept")), (200, "ok", Some("yes")));
    for gone in ["x-hop", "keep-alive", "proxy-connection", "trailer"] {
        assert!(r.header(gone).is_none(), "{gone} reached the client: {:?}", r.headers);
    }
}

#[test]
fn a_64_mib_response_streams_while_the_proxy_stays_small() {
    let ts = targets(1);
    let proxy = Proxy::start(&ts, "");
    let mut client = Client::connect(proxy.addr);
    let size = 64 << 20;
    let r = client.request("GET", &format!("/bytes/{size}"), &[], b"");
    assert_eq!(r.body.len(), size);
    assert!(r.body[..100_000] == pattern(100_000)[..]);
    let (rss, peak) = proxy.rss_kib();
    println!("proxy RSS after streaming 64 MiB: {rss} KiB, peak {peak} KiB");
    assert!(peak < 16 * 1024, "peak RSS {peak} KiB while streaming 64 MiB");
}

#[test]
fn sigterm_finishes_the_request_in_flight_and_exits_zero() {
    let ts = targets(1);
    let mut proxy = Proxy::start(&ts, "");
    let mut idle = Client::connect(proxy.addr);
    assert_eq!(idle.request("GET", "/", &[], b"").status, 200);
    let mut busy = Client::connect(proxy.addr);
    busy.send(b"GET /bytes/20000000 HTTP/1.1\r\nHost: t\r\n\r\n");
    // Let the response start before the signal, then read it all after.
    let mut first = [0u8; 1];
    std::io::Read::read_exact(&mut busy.stream, &mut first).expect("first byte");
    proxy.proc.signal("TERM");
    proxy.proc.wait_line("draining", Duration::from_secs(5));
    assert!(idle.is_closed(), "an idle keep-alive connection is closed at once");
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut busy.stream, &mut rest).expect("rest of the response");
    assert!(rest.len() > 20_000_000, "the response in flight was cut: {} bytes", rest.len());
    assert_eq!(proxy.proc.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(std::net::TcpStream::connect(proxy.addr).is_err(), "still accepting after the drain");
}

#[test]
fn sighup_sigusr1_and_sigusr2_leave_the_proxy_serving() {
    let ts = targets(1);
    let log = common::temp_log("rotate");
    let mut proxy = Proxy::start(&ts, &format!("\"access_log\": \"{}\"", log.display()));
    assert_eq!(proxy.get("/").status, 200);
    for signal in ["HUP", "USR1", "USR2"] {
        proxy.proc.signal(signal);
        proxy.proc.wait_line(&format!("SIG{signal}"), Duration::from_secs(5));
        assert_eq!(proxy.get("/").status, 200, "still serving after SIG{signal}");
    }
    // SIGUSR1 reopened the log: a rotated file is left alone and a new one is written.
    let rotated = log.with_extension("1");
    std::fs::rename(&log, &rotated).expect("rotate the log");
    proxy.proc.signal("USR1");
    eventually(Duration::from_secs(5), "a reopened log", || {
        assert_eq!(proxy.get("/").status, 200);
        std::fs::metadata(&log).ok().filter(|m| m.len() > 0)
    });
    assert_eq!(proxy.proc.wait_exit_or_none(), None, "the proxy is still running");
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&rotated);
}

#[test]
fn sigquit_drains_like_sigterm() {
    let ts = targets(1);
    let mut proxy = Proxy::start(&ts, "");
    assert_eq!(proxy.get("/").status, 200);
    proxy.proc.signal("QUIT");
    proxy.proc.wait_line("draining", Duration::from_secs(5));
    assert_eq!(proxy.proc.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn idle_upstream_connections_a_burst_opened_close_once_traffic_no_longer_needs_them() {
    let slow = common::Target::on("slow", "127.0.0.1", 0, &["--delay-ms", "300"]);
    let proxy = Proxy::start(std::slice::from_ref(&slow), "");
    let idle = format!("ringproxy_target_connections{{target=\"{}\",state=\"idle\"}}", slow.url());
    // Twelve requests at once: twelve upstream connections, idle in the pool afterwards.
    let mut clients: Vec<Client> = (0..12).map(|_| Client::connect(proxy.addr)).collect();
    for c in &mut clients {
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    for c in &mut clients {
        assert_eq!(c.read_response(false).status, 200);
    }
    assert_eq!(proxy.metric(&idle), 12.0);
    // One request at a time needs one connection: within two periods the rest close.
    let deadline = Instant::now() + Duration::from_secs(8);
    while proxy.metric(&idle) > 1.0 {
        assert!(Instant::now() < deadline, "the pool still holds {} idle connections", proxy.metric(&idle));
        assert_eq!(clients[0].request("GET", "/", &[], b"").status, 200);
    }
}
