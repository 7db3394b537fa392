//! Response framing: the status-line and header parser and rewrite, then the body framer.
//! A head the proxy writes for the client must be a valid response head itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringproxy::http::{parse_response, BodyFramer, HttpError, ResponseContext};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else { return };
    let ctx = ResponseContext {
        request_is_head: flags & 1 != 0,
        client_minor: (flags >> 1) & 1,
        client_keep_alive: flags & 4 != 0,
        upgrade_offer: (flags & 8 != 0).then_some(&b"websocket"[..]),
    };
    let mut out = [0u8; 20 * 1024];
    let Ok(Some(head)) = parse_response(data, &ctx, &mut out) else { return };
    assert!(head.head_len <= data.len() && head.out_len <= out.len());
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&out[..head.out_len]) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, head.out_len),
        other => panic!("the head sent to the client does not parse: {other:?}"),
    }
    let mut framer = BodyFramer::new(head.body);
    if let Ok(p) = framer.advance(&data[head.head_len..], HttpError::BadResponse) {
        assert!(p.used <= data.len() - head.head_len);
    }
});
