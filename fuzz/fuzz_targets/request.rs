//! Request framing: the head parser and rewrite, then the body framer, over any bytes read in
//! two pieces. Beyond "no panic": a head the proxy writes must parse again, with the same
//! framing, and a body never claims more bytes than it was offered. Whatever the client asked
//! of its own connection, the forwarded request keeps the upstream connection alive (the
//! client's Connection field is hop-by-hop; an HTTP/1.0 request gains `Connection: keep-alive`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringproxy::http::{parse_request, BodyFramer, Forwarding, HttpError, MAX_HEADERS};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else { return };
    let fwd = Forwarding { client_ip: [127, 0, 0, 1].into(), path_prefix: "", request_id: b"0", upgrades: &[], tls: false };
    let mut out = [0u8; 20 * 1024];
    let Ok(Some(head)) = parse_request(data, &fwd, &mut out) else { return };
    assert!(head.head_len <= data.len() && head.out_len <= out.len());

    // The proxy adds up to three fields, so a head at the field limit may exceed it when
    // forwarded: check those with httparse alone, with room for the additions.
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS + 8];
    let mut forwarded = httparse::Request::new(&mut fields);
    match forwarded.parse(&out[..head.out_len]) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, head.out_len),
        other => panic!("the forwarded head is not a valid request head: {other:?}"),
    }
    if forwarded.headers.len() > MAX_HEADERS {
        return;
    }
    let mut again = [0u8; 21 * 1024];
    let reparsed = parse_request(&out[..head.out_len], &fwd, &mut again);
    match reparsed {
        Ok(Some(h)) => {
            assert_eq!((h.body, h.minor, h.idempotent, h.is_head), (head.body, head.minor, head.idempotent, head.is_head));
            assert!(h.keep_alive, "the forwarded request must keep the upstream connection alive");
        }
        other => panic!("the forwarded head does not parse again: {other:?}"),
    }

    let body = &data[head.head_len..];
    let split = (cut as usize).min(body.len());
    let mut framer = BodyFramer::new(head.body);
    let mut used = 0;
    for piece in [&body[..split], &body[split..]] {
        let Ok(p) = framer.advance(piece, HttpError::BadRequest) else { return };
        assert!(p.used <= piece.len());
        used += p.used;
        if p.done || p.used < piece.len() {
            break;
        }
    }
    assert!(used <= body.len());
});
