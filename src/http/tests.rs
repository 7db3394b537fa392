//! The framing layer's tests: table-driven heads and bodies split every way. The property
//! tests over generated and random streams are in `tests/fuzz_framing.rs`.

use super::body::*;
use super::fields::valid_host;
use super::writer::HeadWriter;
use super::*;
use std::net::IpAddr;

const FWD: Forwarding<'static> = Forwarding {
    client_ip: IpAddr::V4(std::net::Ipv4Addr::new(127, 1, 2, 3)),
    path_prefix: "",
    request_id: b"rid-1",
    upgrades: &[],
    tls: false,
};

#[test]
fn a_websocket_upgrade_is_forwarded_and_any_other_dropped() {
    let ws = [String::from("websocket")];
    let fwd = Forwarding { upgrades: &ws, ..FWD };
    let mut out = [0u8; 512];
    let raw = b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\r\n";
    let head = parse_request(raw, &fwd, &mut out).expect("valid").expect("complete");
    let text = String::from_utf8_lossy(&out[..head.out_len]).into_owned();
    assert!(head.upgrade && text.contains("Connection: Upgrade\r\nUpgrade: WebSocket\r\n"), "{text}");
    for other in ["h2c", "websocket, h2c", "TLS/1.0"] {
        let raw = format!("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: {other}\r\n\r\n");
        let head = parse_request(raw.as_bytes(), &fwd, &mut out).expect("valid").expect("complete");
        let text = String::from_utf8_lossy(&out[..head.out_len]).to_ascii_lowercase();
        assert!(!head.upgrade && !text.contains("upgrade"), "{other}: {text}");
    }
    let raw = b"GET / HTTP/1.0\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    assert!(!parse_request(raw, &fwd, &mut out).expect("valid").expect("complete").upgrade, "not over HTTP/1.0");
}

#[test]
fn a_101_is_a_switch_only_when_one_was_asked_for() {
    let mut out = [0u8; 512];
    let raw = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: x\r\n\r\n";
    assert!(parse_response(raw, &CTX, &mut out).is_err(), "a 101 nobody asked for");
    let ctx = ResponseContext { upgrade_offer: Some(b"websocket"), ..CTX };
    let head = parse_response(raw, &ctx, &mut out).expect("valid").expect("complete");
    assert!(head.switching && !head.informational && !head.upstream_reusable && !head.client_keep_alive);
    let text = String::from_utf8_lossy(&out[..head.out_len]).into_owned();
    assert!(
        text.contains("Connection: Upgrade\r\nUpgrade: websocket\r\n") && text.contains("Sec-WebSocket-Accept"),
        "{text}"
    );
    assert!(parse_response(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", &ctx, &mut out).is_err(), "without Upgrade");
}

#[test]
fn a_101_switches_only_to_a_protocol_the_request_offered() {
    let mut out = [0u8; 512];
    let mut switch = |offer: &[u8], answer: &str| {
        let ctx = ResponseContext { upgrade_offer: Some(offer), ..CTX };
        let raw = format!("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {answer}\r\n\r\n");
        parse_response(raw.as_bytes(), &ctx, &mut out).map(|h| h.is_some_and(|h| h.switching))
    };
    assert_eq!(switch(b"websocket", "websocket"), Ok(true));
    assert_eq!(switch(b"websocket", "WebSocket"), Ok(true), "protocol names are case-insensitive");
    assert_eq!(switch(b"foo/2, websocket", "foo/2"), Ok(true));
    assert_eq!(switch(b"foo/2", "foo"), Ok(true), "a name without a version");
    for (offer, answer) in [
        (&b"websocket"[..], "h2c"),
        (b"websocket", "websocket, h2c"),
        (b"foo/2", "foo/3"),
        (b"foo", "foo/2"),
        (b"websocket", ","),
    ] {
        let refused = switch(offer, answer);
        assert!(refused.is_err(), "{answer} for {}: {refused:?}", String::from_utf8_lossy(offer));
    }
    let ctx = ResponseContext { upgrade_offer: Some(b"websocket"), ..CTX };
    let two = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n\r\n";
    assert!(parse_response(two, &ctx, &mut out).is_err(), "a second Upgrade field is part of the list");
}

fn request(raw: &str) -> Result<(RequestHead, String), HttpError> {
    let mut out = [0u8; 4096];
    let head = parse_request(raw.as_bytes(), &FWD, &mut out)?.expect("complete head");
    Ok((head, String::from_utf8_lossy(&out[..head.out_len]).into_owned()))
}

fn refused(raw: &str) -> u16 {
    match request(raw) {
        Ok(_) => panic!("{raw:?} should be refused"),
        Err(e) => e.status(),
    }
}

#[test]
fn a_simple_get_gains_forwarding_fields() {
    let (head, out) = request("GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n").expect("valid");
    assert_eq!(head.body, BodyKind::None);
    assert!(head.keep_alive && head.idempotent && !head.is_head);
    assert_eq!(
        out,
        "GET /a?b HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 127.1.2.3\r\nX-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n\r\n"
    );
}

#[test]
fn a_well_formed_request_id_is_kept_and_any_other_replaced() {
    let (_, out) = request("GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: 7f3a-b2:c/d=\r\n\r\n").expect("valid");
    assert!(out.ends_with("X-Request-Id: 7f3a-b2:c/d=\r\n\r\n"), "{out}");
    assert_eq!(out.matches("X-Request-Id").count(), 1);
    for bad in ["a b", "<script>", "", &"x".repeat(201)] {
        let raw = format!("GET / HTTP/1.1\r\nHost: x\r\nx-request-id: {bad}\r\nX-Request-Id: ok\r\n\r\n");
        let (_, out) = request(&raw).expect("valid");
        assert!(out.ends_with("\r\nX-Request-Id: rid-1\r\n\r\n"), "{bad:?}: {out}");
        assert_eq!(out.to_ascii_lowercase().matches("x-request-id").count(), 1, "{out}");
    }
}

#[test]
fn hop_by_hop_fields_and_those_connection_names_are_dropped() {
    let raw = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\n\
               TE: trailers\r\nUpgrade: h2c\r\nProxy-Connection: x\r\nTrailer: y\r\nX-Keep: 2\r\n\r\n";
    let (head, out) = request(raw).expect("valid");
    assert!(!head.keep_alive);
    for gone in ["Connection", "X-Secret", "Keep-Alive", "TE:", "Upgrade", "Proxy-Connection", "Trailer"] {
        assert!(!out.contains(gone), "{gone} forwarded in {out}");
    }
    assert!(out.contains("X-Keep: 2\r\n"));
}

#[test]
fn x_forwarded_for_is_appended_and_proto_replaced() {
    let raw = "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 127.0.1.1\r\nX-Forwarded-For: 127.0.2.2\r\n\
               X-Forwarded-Proto: https\r\n\r\n";
    let (_, out) = request(raw).expect("valid");
    assert!(out.contains("X-Forwarded-For: 127.0.1.1, 127.0.2.2, 127.1.2.3\r\n"), "{out}");
    assert!(out.contains("X-Forwarded-Proto: http\r\n") && !out.contains("https"));
}

#[test]
fn client_addresses_are_written_as_std_writes_them() {
    for ip in ["0.0.0.0", "127.0.3.4", "127.0.100.255", "127.255.255.255", "127.168.9.10", "::1", "fe80::1:2"] {
        let ip: IpAddr = ip.parse().expect("ip");
        let mut out = [0u8; 64];
        let mut w = HeadWriter { out: &mut out, len: 0, overflow: HttpError::HeadTooLarge };
        w.ip(ip);
        let len = w.finish().expect("fits");
        assert_eq!(std::str::from_utf8(&out[..len]).expect("utf8"), ip.to_string());
    }
}

#[test]
fn x_forwarded_for_in_the_middle_of_the_head_keeps_every_line_whole() {
    let raw = "GET / HTTP/1.1\r\nX-Forwarded-For: 127.0.1.1\r\nHost: x\r\nX-After: 1\r\n\r\n";
    let (_, out) = request(raw).expect("valid");
    assert_eq!(
        out,
        "GET / HTTP/1.1\r\nHost: x\r\nX-After: 1\r\nX-Forwarded-For: 127.0.1.1, 127.1.2.3\r\nX-Forwarded-Proto: http\r\n\
         X-Request-Id: rid-1\r\n\r\n"
    );
}

#[test]
fn path_prefix_and_absolute_form_whose_authority_becomes_the_host() {
    let fwd = Forwarding { path_prefix: "/api", ..FWD };
    let mut out = [0u8; 512];
    let raw = b"GET http://h.example:81/x HTTP/1.1\r\nHost: other\r\n\r\n";
    let head = parse_request(raw, &fwd, &mut out).expect("valid").expect("complete");
    let text = String::from_utf8_lossy(&out[..head.out_len]).into_owned();
    assert!(text.starts_with("GET /api/x HTTP/1.1\r\nHost: h.example:81\r\n"), "{text}");
    assert!(!text.contains("other"));
}

#[test]
fn hosts() {
    for good in ["a", "a.b-c_d", "a:80", "[::1]", "[::1]:8080", "127.0.0.1:1", "x%41"] {
        assert!(valid_host(good.as_bytes()), "{good}");
    }
    for bad in ["", ":80", "a b", "a:b", "a:80:80", "[::1", "[zz]", "a/b", "a@b", "a:1234567"] {
        assert!(!valid_host(bad.as_bytes()), "{bad}");
    }
}

#[test]
fn body_framing_of_requests() {
    let cases = [
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n", BodyKind::Length(5)),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", BodyKind::None),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n", BodyKind::Length(7)),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", BodyKind::Chunked),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", BodyKind::Chunked),
    ];
    for (raw, kind) in cases {
        assert_eq!(request(raw).expect(raw).0.body, kind, "{raw}");
    }
}

#[test]
fn ambiguous_requests_are_refused_with_their_status() {
    let cases = [
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: bogus, chunked\r\n\r\n", 501),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \r\nContent-Length: 1\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ,\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400),
        ("GET nowhere HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 501),
        ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        ("GET http://u@h/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ];
    for (raw, status) in cases {
        assert_eq!(refused(raw), status, "{raw:?}");
    }
}

#[test]
fn http10_keeps_alive_only_when_asked() {
    let (head, out) = request("GET / HTTP/1.0\r\n\r\n").expect("valid");
    assert!(!head.keep_alive);
    assert!(out.contains("Connection: keep-alive\r\n"), "upstream side stays pooled: {out}");
    let (head, _) = request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").expect("valid");
    assert!(head.keep_alive);
}

#[test]
fn a_partial_head_asks_for_more_and_an_oversized_rewrite_is_431() {
    let mut out = [0u8; 64];
    assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHo", &FWD, &mut out), Ok(None));
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(100));
    assert_eq!(parse_request(big.as_bytes(), &FWD, &mut out), Err(HttpError::HeadTooLarge));
}

fn response(raw: &str, ctx: ResponseContext) -> (ResponseHead, String) {
    let mut out = [0u8; 4096];
    let head = parse_response(raw.as_bytes(), &ctx, &mut out).expect("valid").expect("complete");
    (head, String::from_utf8_lossy(&out[..head.out_len]).into_owned())
}

const CTX: ResponseContext =
    ResponseContext { request_is_head: false, client_minor: 1, client_keep_alive: true, upgrade_offer: None };

#[test]
fn response_framing() {
    let cases = [
        ("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", CTX, BodyKind::Length(3)),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", CTX, BodyKind::Chunked),
        ("HTTP/1.1 200 OK\r\n\r\n", CTX, BodyKind::UntilClose),
        ("HTTP/1.1 204 No Content\r\n\r\n", CTX, BodyKind::None),
        ("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", CTX, BodyKind::None),
        ("HTTP/1.1 100 Continue\r\n\r\n", CTX, BodyKind::None),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
            ResponseContext { request_is_head: true, ..CTX },
            BodyKind::None,
        ),
    ];
    for (raw, ctx, kind) in cases {
        assert_eq!(response(raw, ctx).0.body, kind, "{raw}");
    }
}

#[test]
fn close_delimited_and_conflicting_responses_close_and_are_not_reused() {
    let (head, out) = response("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n", CTX);
    assert!(!head.client_keep_alive && !head.upstream_reusable);
    assert_eq!(out, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
    let (head, out) = response("HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", CTX);
    assert_eq!(head.body, BodyKind::Chunked);
    assert!(!head.upstream_reusable && head.client_keep_alive);
    assert!(!out.contains("Content-Length"));
}

#[test]
fn a_response_to_an_http10_keep_alive_client_says_so() {
    let ctx = ResponseContext { client_minor: 0, ..CTX };
    let (_, out) = response("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nKeep-Alive: timeout=5\r\n\r\n", ctx);
    assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n");
}

#[test]
fn malformed_responses_are_502() {
    let mut out = [0u8; 512];
    for raw in ["HTTP/1.1 abc OK\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "HTTP/1.1 101 Up\r\n\r\n"] {
        let got = parse_response(raw.as_bytes(), &CTX, &mut out);
        assert_eq!(got.map_err(HttpError::status), Err(502), "{raw}");
    }
}

#[test]
fn local_responses_are_complete() {
    let mut out = [0u8; 256];
    let n = write_local_response(&mut out, 500, "All servers is off", true, false).expect("fits");
    assert_eq!(
        std::str::from_utf8(&out[..n]).expect("utf8"),
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 18\r\n\r\nAll servers is off"
    );
    let n = write_local_response(&mut out, 500, "All servers is off", true, true).expect("fits");
    assert!(std::str::from_utf8(&out[..n]).expect("utf8").ends_with("Content-Length: 18\r\n\r\n"), "no body to HEAD");
}

fn frame_all(kind: BodyKind, data: &[u8], splits: &[usize]) -> Result<(usize, bool), HttpError> {
    let mut framer = BodyFramer::new(kind);
    let mut at = 0;
    let mut cuts = splits.to_vec();
    cuts.push(data.len());
    for cut in cuts {
        let p = framer.advance(&data[at..cut.max(at)], HttpError::BadRequest)?;
        at += p.used;
        if p.done {
            return Ok((at, true));
        }
    }
    Ok((at, false))
}

#[test]
fn chunked_bodies_end_at_the_same_byte_however_they_are_split() {
    let body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-T: 1\r\n\r\nNEXT";
    let end = body.len() - 4;
    assert_eq!(frame_all(BodyKind::Chunked, body, &[]), Ok((end, true)));
    for i in 0..body.len() {
        for j in i..body.len() {
            assert_eq!(frame_all(BodyKind::Chunked, body, &[i, j]), Ok((end, true)), "split {i},{j}");
        }
    }
}

#[test]
fn length_and_close_delimited_bodies() {
    assert_eq!(frame_all(BodyKind::Length(3), b"abcdef", &[1]), Ok((3, true)));
    assert_eq!(frame_all(BodyKind::UntilClose, b"abcdef", &[2]), Ok((6, false)));
    assert_eq!(frame_all(BodyKind::None, b"abc", &[]), Ok((0, true)));
}

#[test]
fn malformed_chunks_are_refused() {
    for bad in [&b"x\r\n"[..], b"4\nWiki\r\n", b"4\r\nWikiX\r\n", b"10000000000000000\r\n", b"\r\n", b"0\r\n\n"] {
        assert!(frame_all(BodyKind::Chunked, bad, &[]).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn chunk_extensions_follow_the_grammar() {
    let good = ["5;a\r\n", "5;a=b\r\n", "5 ; a = b ; c\r\n", "5;a=\"q \\\" ;x\"\r\n", "5;a=b;c=\"\"\r\n", "5\t;a\r\n"];
    for good in good {
        let body = format!("{good}hello\r\n0\r\n\r\n");
        assert_eq!(frame_all(BodyKind::Chunked, body.as_bytes(), &[]), Ok((body.len(), true)), "{good:?}");
    }
    let bad = [
        "5;\r\n",
        "5;=b\r\n",
        "5;a=\r\n",
        "5;a b\r\n",
        "5;a=b c\r\n",
        "5;a=\"x\r\n",
        "5;a=\"x\"y\r\n",
        "5;a\0\r\n",
        // Whitespace is only allowed before a `;` or `=` (BWS), never before the CR.
        "5 \r\n",
        "5\t\r\n",
        "5;a \r\n",
        "5;a=b \r\n",
    ];
    for bad in bad {
        let body = format!("{bad}hello\r\n0\r\n\r\n");
        assert!(frame_all(BodyKind::Chunked, body.as_bytes(), &[]).is_err(), "{bad:?}");
    }
}

#[test]
fn an_endless_chunk_extension_is_refused_at_the_limit() {
    let mut framer = BodyFramer::with_limits(BodyKind::Chunked, ChunkLimits { line: 64, trailers: 64 });
    let mut line = b"5;x=".to_vec();
    line.extend(std::iter::repeat_n(b'a', 70));
    assert_eq!(framer.advance(&line[..60], HttpError::BadRequest).map(|p| p.used), Ok(60));
    assert_eq!(framer.held(), 60, "an unfinished size line is not forwarded");
    assert_eq!(
        framer.advance(&line[60..], HttpError::BadRequest),
        Err(HttpError::BadRequest("chunk-size line too long"))
    );
}

#[test]
fn trailers_are_checked_and_held_until_the_body_ends() {
    for good in ["X-T: 1\r\n", "X-T:\r\n", "Content-Lengthy: 2\r\nX: a\tb\r\n", "X: \u{e9}\r\n"] {
        let body = format!("0\r\n{good}\r\n");
        assert_eq!(frame_all(BodyKind::Chunked, body.as_bytes(), &[]), Ok((body.len(), true)), "{good:?}");
    }
    let bad = [
        "No colon\r\n",
        "NoColon\r\n",
        "X: 1\r\n folded\r\n",
        "Content-Length: 5\r\n",
        "transfer-encoding: chunked\r\n",
        "HOST: elsewhere\r\n",
        "X-Forwarded-For: 127.0.3.4\r\n",
        "X : 1\r\n",
        "X: a\u{1}b\r\n",
        "X: 1\n",
    ];
    for bad in bad {
        let body = format!("0\r\n{bad}\r\n");
        assert!(frame_all(BodyKind::Chunked, body.as_bytes(), &[]).is_err(), "{bad:?}");
    }
    let mut framer = BodyFramer::new(BodyKind::Chunked);
    let p = framer.advance(b"3\r\nabc\r\n0\r\nX-T: 1\r\n", HttpError::BadResponse).expect("valid so far");
    assert_eq!((p.used, framer.held()), (19, 11), "the last chunk and its trailers wait for the end");
    assert_eq!(framer.advance(b"\r\n", HttpError::BadResponse).map(|p| (p.done, framer.held())), Ok((true, 0)));
    let limits = ChunkLimits { line: 16, trailers: 32 };
    let fits = format!("0\r\n{}\r\n", "X: 0123456789\r\n".repeat(2));
    assert_eq!(fits.len() - 3, 32);
    assert_eq!(
        BodyFramer::with_limits(BodyKind::Chunked, limits)
            .advance(fits.as_bytes(), HttpError::BadResponse)
            .map(|p| p.done),
        Ok(true)
    );
    let big = "0\r\nX: 0123456789\r\nX: 0123456789\r\nX: 1\r\n\r\n";
    let mut framer = BodyFramer::with_limits(BodyKind::Chunked, limits);
    assert!(framer.advance(big.as_bytes(), HttpError::BadResponse).is_err(), "trailer section over its limit");
}

#[test]
fn connection_options_never_strip_framing_or_host() {
    let raw = "POST / HTTP/1.1\r\nHost: x\r\nConnection: Content-Length, Host, Transfer-Encoding, X-Gone\r\n\
               Content-Length: 5\r\nX-Gone: 1\r\n\r\nhello";
    let (head, out) = request(raw).expect("valid");
    assert_eq!(head.body, BodyKind::Length(5));
    assert!(out.contains("Content-Length: 5\r\n") && out.contains("Host: x\r\n"), "{out}");
    assert!(!out.contains("X-Gone"), "{out}");
    let raw = "POST / HTTP/1.1\r\nHost: x\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert!(request(raw).expect("valid").1.contains("Transfer-Encoding: chunked\r\n"));
    let (head, out) = response("HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 2\r\n\r\n", CTX);
    assert_eq!((head.body, head.client_keep_alive), (BodyKind::Length(2), true));
    assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
    let too_many = format!("GET / HTTP/1.1\r\nHost: x\r\nConnection: {}\r\n\r\n", "a, ".repeat(9));
    assert_eq!(refused(&too_many), 400);
}

#[test]
fn identical_content_lengths_are_forwarded_once() {
    let raw = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 007\r\ncontent-length: 7\r\n\r\n";
    let (head, out) = request(raw).expect("valid");
    assert_eq!(head.body, BodyKind::Length(7));
    assert_eq!(out.matches("Content-Length").count() + out.matches("content-length").count(), 1, "{out}");
    assert!(out.contains("Content-Length: 7\r\n"), "{out}");
    let (_, out) = response("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n", CTX);
    assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
}

#[test]
fn expect_continue_is_noticed() {
    let raw = "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n";
    assert!(request(raw).expect("valid").0.expect_continue);
    assert!(!request("GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect("valid").0.expect_continue);
}

#[test]
fn look_alikes_of_framing_fields_are_dropped_and_refused_in_trailers() {
    let (head, out) =
        request("POST / HTTP/1.1\r\nHost: t\r\nTransfer--Encoding: chunked\r\n_content-length: 3\r\nX-Ok: 1\r\n\r\n")
            .expect("valid");
    assert_eq!(head.body, BodyKind::None);
    assert!(
        !out.to_ascii_lowercase().contains("encoding") && !out.contains("length") && out.contains("X-Ok: 1"),
        "{out}"
    );
    // Other spellings of non-framing fields are other fields: a tracing header stays.
    let (_, out) =
        request("GET / HTTP/1.1\r\nHost: t\r\nX-RequestId: abc\r\nX_Request_Id: evil\r\n\r\n").expect("valid");
    assert!(out.contains("X-RequestId: abc\r\n") && !out.contains("evil"), "{out}");
    for trailer in ["Content_Length: 1", "Transfer--Encoding: x", "XForwardedFor: 127.0.0.9", "hos-t: a"] {
        let body = format!("0\r\n{trailer}\r\n\r\n");
        assert!(frame_all(BodyKind::Chunked, body.as_bytes(), &[]).is_err(), "{trailer}");
    }
    let fine = b"0\r\nContent-Type_: a\r\n\r\n";
    assert_eq!(frame_all(BodyKind::Chunked, fine, &[]), Ok((fine.len(), true)));
}

#[test]
fn a_long_request_line_is_414_whole_or_cut() {
    let raw = format!("{} / HTTP/1.1\r\nHost: a\r\n\r\n", "M".repeat(MAX_URI + 40));
    assert_eq!(refused(&raw), 414);
    let mut out = [0u8; 256];
    let cut = parse_request(&raw.as_bytes()[..MAX_URI + 40], &FWD, &mut out);
    assert_eq!(cut, Err(HttpError::UriTooLong));
}

#[test]
fn a_request_line_is_told_from_a_tls_record_by_its_first_bytes() {
    assert_eq!(leading_method(b"GET / HTTP/1.1\r\n"), Some(&b"GET"[..]));
    assert_eq!(leading_method(b"HEAD /"), Some(&b"HEAD"[..]));
    assert_eq!(leading_method(b"PROPFIND "), Some(&b"PROPFIND"[..]));
    for not_http in [
        &b"\x16\x03\x01\x02\x00\x01"[..],
        b"\x80\x2e\x01\x03\x01",
        b" GET /",
        b"GET\r\n",
        b"GET",
        b"",
        b"\x00\x01hello ",
        b"G(ET /",
    ] {
        assert_eq!(leading_method(not_http), None, "{not_http:?}");
    }
}
