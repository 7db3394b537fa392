//! Stable fuzzing of the framing layer inside `cargo test` (proptest; the cargo-fuzz targets in
//! `fuzz/` need nightly and stay for long runs). Generated messages, valid and hostile, read in
//! generated pieces:
//!
//! - however a stream is split across reads, it gives the same requests (heads, framing, body
//!   bytes) or the same refusal as one read;
//! - a valid request or response survives parse and rewrite with its meaning unchanged:
//!   method, target, version, end-to-end fields, framing and body bytes;
//! - every head the proxy writes passes a strict checker written apart from the parser (one
//!   framing, canonical names, no control bytes), so no other parser can read it differently;
//! - a hazard (conflicting framing, a control byte in a value, a fold, a look-alike name) is
//!   refused with a 4xx, or dropped before forwarding, never passed on.
//!
//! Budget: `FUZZ_CASES` cases per property (default 2,000), seeded afresh each run; a failure
//! prints its seed and shrunk case, and `PROPTEST_CASES` or a regression file replays it.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use ringproxy::http::{
    parse_request, parse_response, BodyFramer, BodyKind, Forwarding, HttpError, ResponseContext, MAX_HEADERS,
};
use std::net::IpAddr;

const FWD: Forwarding<'static> = Forwarding {
    client_ip: IpAddr::V4(std::net::Ipv4Addr::new(127, 9, 8, 7)),
    path_prefix: "",
    request_id: b"fuzz-id",
    upgrades: &[],
    tls: false,
};

fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000)
}

fn run<S: Strategy>(strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    let config = Config { cases: cases(), failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

// --- generators ---------------------------------------------------------------------------

/// Names the proxy acts on or rewrites, with `-` and `_` squashed out and lower case.
const FRAMING_NAMES: [&str; 14] = [
    "te",
    "host",
    "expect",
    "upgrade",
    "trailer",
    "connection",
    "keepalive",
    "xrequestid",
    "contentlength",
    "http2settings",
    "xforwardedfor",
    "proxyconnection",
    "transferencoding",
    "xforwardedproto",
];

/// The fields the proxy acts on, as spelled (`Expect` aside).
const KNOWN_NAMES: [&str; 13] = [
    "te",
    "host",
    "upgrade",
    "trailer",
    "connection",
    "keep-alive",
    "x-request-id",
    "content-length",
    "http2-settings",
    "x-forwarded-for",
    "proxy-connection",
    "transfer-encoding",
    "x-forwarded-proto",
];

fn squashed(name: &[u8]) -> String {
    name.iter().filter(|b| !matches!(b, b'-' | b'_')).map(|b| b.to_ascii_lowercase() as char).collect()
}

/// An end-to-end field name that is none of the proxy's, nor a look-alike of one.
fn plain_name() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,20}"
        .prop_filter("not a field the proxy knows", |n| !FRAMING_NAMES.contains(&squashed(n.as_bytes()).as_str()))
}

/// A field value: visible ASCII and obs-text with single spaces inside, no edge whitespace.
fn plain_value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop_oneof![8 => 0x21u8..=0x7e, 1 => Just(b' '), 1 => Just(b'\t'), 1 => 0x80u8..=0xff], 0..40)
        .prop_map(|mut v| {
            while v.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
                v.remove(0);
            }
            while v.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
                v.pop();
            }
            v
        })
}

#[derive(Clone, Debug)]
enum Body {
    None,
    Length(Vec<u8>),
    /// Chunks (each with an optional extension), then trailer fields.
    Chunked(Vec<(Vec<u8>, bool)>, Vec<(String, Vec<u8>)>),
}

impl Body {
    fn kind(&self) -> BodyKind {
        match self {
            Body::None => BodyKind::None,
            Body::Length(b) if b.is_empty() => BodyKind::None,
            Body::Length(b) => BodyKind::Length(b.len() as u64),
            Body::Chunked(..) => BodyKind::Chunked,
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Body::None => Vec::new(),
            Body::Length(b) => b.clone(),
            Body::Chunked(chunks, trailers) => {
                let mut out = Vec::new();
                for (data, ext) in chunks.iter().filter(|(d, _)| !d.is_empty()) {
                    out.extend(format!("{:x}", data.len()).bytes());
                    if *ext {
                        out.extend(b";name=\"va lue\"");
                    }
                    out.extend(b"\r\n");
                    out.extend(data);
                    out.extend(b"\r\n");
                }
                out.extend(b"0\r\n");
                for (name, value) in trailers {
                    out.extend(name.bytes());
                    out.extend(b": ");
                    out.extend(value);
                    out.extend(b"\r\n");
                }
                out.extend(b"\r\n");
                out
            }
        }
    }
}

fn body() -> impl Strategy<Value = Body> {
    let bytes = || prop::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        Just(Body::None),
        bytes().prop_map(Body::Length),
        (
            prop::collection::vec((bytes(), any::<bool>()), 0..5),
            prop::collection::vec((plain_name(), plain_value()), 0..3)
        )
            .prop_map(|(c, t)| Body::Chunked(c, t)),
    ]
}

#[derive(Clone, Debug)]
struct Request {
    method: String,
    /// Origin-form path, or with `absolute` the authority goes in front of it.
    path: String,
    absolute: bool,
    host: String,
    minor: u8,
    fields: Vec<(String, Vec<u8>)>,
    connection: Option<&'static str>,
    body: Body,
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"])
            .prop_map(str::to_owned),
        1 => "[A-Z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,11}".prop_filter("not CONNECT", |m| m != "CONNECT"),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    (
        method(),
        "(/[A-Za-z0-9._~!$&'()*+,;=:@%-]{0,12}){1,4}(\\?[A-Za-z0-9=&/?._-]{0,20})?",
        any::<bool>(),
        "[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?(:[0-9]{1,5})?",
        0u8..=1,
        prop::collection::vec((plain_name(), plain_value()), 0..10),
        prop::sample::select(vec![None, Some("close"), Some("keep-alive")]),
        body(),
    )
        .prop_map(|(method, path, absolute, host, minor, fields, connection, body)| {
            // HTTP/1.0 has no chunked framing.
            let body = match body {
                Body::Chunked(..) if minor == 0 => Body::None,
                b => b,
            };
            Request { method, path, absolute, host, minor, fields, connection, body }
        })
}

impl Request {
    fn head(&self) -> Vec<u8> {
        let target = if self.absolute { format!("http://{}{}", self.host, self.path) } else { self.path.clone() };
        let mut out =
            format!("{} {} HTTP/1.{}\r\nHost: {}\r\n", self.method, target, self.minor, self.host).into_bytes();
        for (name, value) in &self.fields {
            out.extend(name.bytes());
            out.extend(b": ");
            out.extend(value);
            out.extend(b"\r\n");
        }
        if let Some(c) = self.connection {
            out.extend(format!("Connection: {c}\r\n").bytes());
        }
        match &self.body {
            Body::Length(b) => out.extend(format!("Content-Length: {}\r\n", b.len()).bytes()),
            Body::Chunked(..) => out.extend(b"Transfer-Encoding: chunked\r\n"),
            Body::None => {}
        }
        out.extend(b"\r\n");
        out
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = self.head();
        out.extend(self.body.encode());
        out
    }
}

/// Cut points into a stream of `len` bytes, sorted.
fn cuts(len: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0..=len, 0..12).prop_map(|mut c| {
        c.sort_unstable();
        c
    })
}

// --- the session's reading, pure -----------------------------------------------------------

/// A forwarded request: the head the proxy wrote, and the body bytes it would stream.
type Forwarded = (Vec<u8>, Vec<u8>);

/// What a session forwards of `stream` read in pieces cut at `cuts`: every complete request,
/// then the first refusal if there is one.
fn forward_in_pieces(stream: &[u8], cuts: &[usize]) -> (Vec<Forwarded>, Option<u16>) {
    let mut requests = Vec::new();
    let mut buf = Vec::new();
    let mut body: Option<(Vec<u8>, Vec<u8>, BodyFramer)> = None;
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        let cut = cut.clamp(at, stream.len());
        buf.extend_from_slice(&stream[at..cut]);
        at = cut;
        loop {
            if let Some((head, mut bytes, mut framer)) = body.take() {
                let p = match framer.advance(&buf, HttpError::BadRequest) {
                    Ok(p) => p,
                    Err(e) => return (requests, Some(e.status())),
                };
                bytes.extend(buf.drain(..p.used));
                if p.done {
                    requests.push((head, bytes));
                    continue;
                }
                body = Some((head, bytes, framer));
                break;
            }
            let mut out = vec![0u8; 24 * 1024];
            match parse_request(&buf, &FWD, &mut out) {
                Ok(Some(head)) => {
                    buf.drain(..head.head_len);
                    out.truncate(head.out_len);
                    strict_check(&out, false).unwrap_or_else(|why| panic!("forwarded {why}: {:?}", ascii(&out)));
                    body = Some((out, Vec::new(), BodyFramer::new(head.body)));
                }
                Ok(None) => break,
                Err(e) => return (requests, Some(e.status())),
            }
        }
    }
    (requests, None)
}

fn ascii(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

// --- the strict checker, written apart from the parser --------------------------------------

/// A message head as a strict reader sees it: its start line, and its fields by name (lower
/// case) in order. Refuses anything RFC 9112 lets a reader treat more than one way.
struct Strict {
    start: Vec<u8>,
    fields: Vec<(String, Vec<u8>)>,
}

impl Strict {
    fn all(&self, name: &str) -> Vec<&[u8]> {
        self.fields.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_slice()).collect()
    }
}

fn strict_parse(head: &[u8]) -> Result<Strict, String> {
    let text = head.strip_suffix(b"\r\n\r\n").ok_or("a head that does not end in CRLF CRLF")?;
    let mut lines = Vec::new();
    let mut rest = text;
    loop {
        match rest.windows(2).position(|w| w == b"\r\n") {
            Some(i) => {
                lines.push(&rest[..i]);
                rest = &rest[i + 2..];
            }
            None => {
                lines.push(rest);
                break;
            }
        }
    }
    let start = lines[0].to_vec();
    if start.iter().any(|&b| b < 0x21 && b != b' ' || b == 0x7f) {
        return Err("a control byte in the start line".into());
    }
    let mut fields = Vec::new();
    for line in &lines[1..] {
        if line.iter().any(|&b| b == b'\r' || b == b'\n') {
            return Err("a bare CR or LF in a field line".into());
        }
        let colon = line.iter().position(|&b| b == b':').ok_or("a field line without a colon")?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) {
            return Err(format!("field name {:?} is not a token", ascii(name)));
        }
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(format!("a control byte in the value of {:?}", ascii(name)));
        }
        let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
        // `_` for `-` in any field the proxy acts on; any other spelling of a framing field.
        let underscored = lower.contains('_') && KNOWN_NAMES.contains(&lower.replace('_', "-").as_str());
        let framing = ["contentlength", "transferencoding"].contains(&squashed(name).as_str())
            && !["content-length", "transfer-encoding"].contains(&lower.as_str());
        if underscored || framing {
            return Err(format!("look-alike of a framing field: {:?}", ascii(name)));
        }
        let trimmed: &[u8] = value.trim_ascii();
        fields.push((lower, trimmed.to_vec()));
    }
    Ok(Strict { start, fields })
}

/// Checks a head the proxy wrote: one framing only, and nothing a strict reader would read
/// another way.
fn strict_check(head: &[u8], response: bool) -> Result<Strict, String> {
    let s = strict_parse(head)?;
    let lengths = s.all("content-length");
    let codings = s.all("transfer-encoding");
    if lengths.len() > 1 {
        return Err("more than one Content-Length".into());
    }
    if !lengths.is_empty() && !codings.is_empty() {
        return Err("both Content-Length and Transfer-Encoding".into());
    }
    if lengths.iter().any(|v| v.is_empty() || !v.iter().all(u8::is_ascii_digit)) {
        return Err("a Content-Length that is not digits".into());
    }
    if let Some(last) = codings.last() {
        let last = last.rsplit(|&b| b == b',').next().unwrap_or(last).trim_ascii();
        if !last.eq_ignore_ascii_case(b"chunked") {
            return Err("a Transfer-Encoding that does not end in chunked".into());
        }
    }
    if !response && s.all("host").len() != 1 && s.start.ends_with(b"HTTP/1.1") {
        return Err("an HTTP/1.1 request without exactly one Host".into());
    }
    Ok(s)
}

// --- properties ---------------------------------------------------------------------------

#[test]
fn a_generated_request_keeps_its_meaning_through_parse_and_rewrite() {
    run((request(), request(), any::<u64>()), |(first, second, seed)| {
        let mut stream = first.bytes();
        let first_len = stream.len();
        stream.extend(second.bytes());
        let cut_points: Vec<usize> = {
            let mut x = seed | 1;
            let mut c: Vec<usize> = (0..(seed % 8))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % (stream.len() as u64 + 1)) as usize
                })
                .collect();
            c.sort_unstable();
            c
        };
        let (forwarded, refused) = forward_in_pieces(&stream, &cut_points);
        prop_assert_eq!(refused, None, "stream {:?}", ascii(&stream));
        prop_assert_eq!(forwarded.len(), 2);
        for (req, (head, body)) in [&first, &second].into_iter().zip(&forwarded) {
            let s = strict_check(head, false).map_err(TestCaseError::fail)?;
            let start = String::from_utf8_lossy(&s.start).into_owned();
            prop_assert_eq!(start, format!("{} {} HTTP/1.{}", req.method, req.path, req.minor));
            prop_assert_eq!(s.all("host"), vec![req.host.as_bytes()]);
            // End-to-end fields, in order, with their values.
            let names: Vec<String> = req.fields.iter().map(|(n, _)| n.to_ascii_lowercase()).collect();
            let kept: Vec<(String, Vec<u8>)> = s.fields.iter().filter(|(n, _)| names.contains(n)).cloned().collect();
            let sent: Vec<(String, Vec<u8>)> =
                req.fields.iter().map(|(n, v)| (n.to_ascii_lowercase(), v.trim_ascii().to_vec())).collect();
            prop_assert_eq!(kept, sent);
            prop_assert_eq!(body, &req.body.encode());
            // The framing fields as sent (`Content-Length: 0` included).
            let framing = match &req.body {
                Body::Length(b) => (vec![b.len().to_string().into_bytes()], vec![]),
                Body::Chunked(..) => (vec![], vec![b"chunked".to_vec()]),
                Body::None => (vec![], vec![]),
            };
            let lengths: Vec<Vec<u8>> = s.all("content-length").iter().map(|v| v.to_vec()).collect();
            let codings: Vec<Vec<u8>> = s.all("transfer-encoding").iter().map(|v| v.to_vec()).collect();
            prop_assert_eq!((lengths, codings), framing);
        }
        prop_assert_eq!(forwarded[0].1.len() + first.head().len(), first_len);
        Ok(())
    });
}

/// A valid request with one hazard in it, and whether the hazard must be refused (`true`) or
/// may be dropped.
fn hazardous() -> impl Strategy<Value = (Vec<u8>, &'static str, bool)> {
    let hazard = prop::sample::select(vec![
        ("X-A: a\x00b\r\n", true),
        ("X-A: a\x01b\r\n", true),
        ("X-A: a\x0bb\r\n", true),
        ("X-A: a\x7fb\r\n", true),
        ("X-A: a\rb\r\n", true),
        ("X-A: a\r\n b\r\n", true),
        ("X-A : b\r\n", true),
        (" X-A: b\r\n", true),
        ("Content-Length: 5\r\nContent-Length: 6\r\n", true),
        ("Content-Length: +5\r\n", true),
        ("Content-Length: 0x5\r\n", true),
        ("Content-Length: 5, 6\r\n", true),
        ("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", true),
        ("Transfer-Encoding: chunked, gzip\r\n", true),
        ("Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n", true),
        ("Transfer-Encoding: xchunked\r\n", true),
        ("Transfer-Encoding:\x0bchunked\r\n", true),
        ("Content_Length: 5\r\n", false),
        ("Transfer_Encoding: chunked\r\n", false),
        ("Transfer---Encoding: chunked\r\n", false),
        ("Transfer-Encoding_: chunked\r\n", false),
        ("content--length: 5\r\n", false),
        ("_Content-Length: 5\r\n", false),
        ("X-Forwarded_For: 127.6.6.6\r\n", false),
        ("X_Forwarded_For: 127.6.6.6\r\n", false),
    ]);
    (request(), hazard, 0usize..8).prop_map(|(req, (line, refuse), at)| {
        let req = Request { body: Body::None, minor: 1, ..req };
        let head = req.head();
        // Insert the hazard after the request line and `at` field lines at most.
        let mut pos = head.windows(2).position(|w| w == b"\r\n").map_or(0, |i| i + 2);
        for _ in 0..at {
            match head[pos..].windows(2).position(|w| w == b"\r\n") {
                Some(i) if pos + i + 2 < head.len() - 2 => pos += i + 2,
                _ => break,
            }
        }
        let mut bytes = head[..pos].to_vec();
        bytes.extend(line.bytes());
        bytes.extend(&head[pos..]);
        bytes.extend(b"hello");
        (bytes, line, refuse)
    })
}

#[test]
fn a_hazard_in_a_request_is_refused_or_dropped_never_forwarded() {
    run(hazardous(), |(bytes, line, refuse)| {
        let mut out = vec![0u8; 24 * 1024];
        match parse_request(&bytes, &FWD, &mut out) {
            Err(e) => prop_assert!((400..=505).contains(&e.status()), "{e:?}"),
            Ok(None) => prop_assert!(false, "a complete head read as partial: {:?}", ascii(&bytes)),
            Ok(Some(head)) => {
                prop_assert!(!refuse, "accepted {:?}: {:?}", line, ascii(&bytes));
                let forwarded = &out[..head.out_len];
                strict_check(forwarded, false).map_err(TestCaseError::fail)?;
                let name = &line[..line.find(':').unwrap_or(0)];
                let lower = ascii(forwarded).to_ascii_lowercase();
                prop_assert!(!lower.contains(&name.to_ascii_lowercase()), "{name} forwarded: {lower}");
                prop_assert_eq!(head.body, BodyKind::None, "a dropped look-alike framed the body");
            }
        }
        Ok(())
    });
}

/// Bytes near a valid pipeline: generated requests, then a few random edits.
fn mutated_stream() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
    (prop::collection::vec(request(), 1..3), prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..6))
        .prop_flat_map(|(reqs, edits)| {
            let mut bytes: Vec<u8> = reqs.iter().flat_map(Request::bytes).collect();
            for (at, byte, op) in edits {
                let at = at % (bytes.len() + 1);
                match op {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => {}
                }
            }
            let len = bytes.len();
            (Just(bytes), cuts(len))
        })
}

#[test]
fn any_split_of_any_stream_forwards_the_same_as_one_read() {
    run(mutated_stream(), |(bytes, cut_points)| {
        let whole = forward_in_pieces(&bytes, &[]);
        let pieces = forward_in_pieces(&bytes, &cut_points);
        prop_assert_eq!(pieces, whole, "stream {:?} cut at {:?}", ascii(&bytes), cut_points);
        Ok(())
    });
}

#[test]
fn random_bytes_never_panic_and_what_is_forwarded_is_strict() {
    let bytes = prop::collection::vec(any::<u8>(), 0..400);
    run((bytes.clone(), bytes), |(head, tail)| {
        let mut stream = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        stream.extend(&head);
        let _ = forward_in_pieces(&head, &[head.len() / 2]);
        let _ = forward_in_pieces(&stream, &[]);
        let mut out = vec![0u8; 24 * 1024];
        let ctx =
            ResponseContext { request_is_head: false, client_minor: 1, client_keep_alive: true, upgrade_offer: None };
        let mut response = b"HTTP/1.1 200 OK\r\n".to_vec();
        response.extend(&tail);
        for input in [&tail, &response] {
            if let Ok(Some(h)) = parse_response(input, &ctx, &mut out) {
                strict_check(&out[..h.out_len], true).map_err(TestCaseError::fail)?;
            }
        }
        let mut framer = BodyFramer::new(BodyKind::Chunked);
        let _ = framer.advance(&tail, HttpError::BadResponse);
        Ok(())
    });
}

#[derive(Clone, Debug)]
struct Response {
    status: u16,
    minor: u8,
    fields: Vec<(String, Vec<u8>)>,
    body: Body,
    ctx: (bool, u8, bool),
}

fn response() -> impl Strategy<Value = Response> {
    (
        prop_oneof![3 => 200u16..=599, 1 => prop::sample::select(vec![204u16, 304, 100, 103])],
        0u8..=1,
        prop::collection::vec((plain_name(), plain_value()), 0..10),
        body(),
        (any::<bool>(), 0u8..=1, any::<bool>()),
    )
        .prop_map(|(status, minor, fields, body, ctx)| {
            let body = match body {
                Body::Chunked(..) if minor == 0 => Body::None,
                b => b,
            };
            Response { status, minor, fields, body, ctx }
        })
}

impl Response {
    fn head(&self) -> Vec<u8> {
        let mut out = format!("HTTP/1.{} {} Some Reason\r\n", self.minor, self.status).into_bytes();
        for (name, value) in &self.fields {
            out.extend(name.bytes());
            out.extend(b": ");
            out.extend(value);
            out.extend(b"\r\n");
        }
        match &self.body {
            Body::Length(b) => out.extend(format!("Content-Length: {}\r\n", b.len()).bytes()),
            Body::Chunked(..) => out.extend(b"Transfer-Encoding: chunked\r\n"),
            Body::None => out.extend(b"Content-Length: 0\r\n"),
        }
        out.extend(b"\r\n");
        out
    }

    /// The framing RFC 9112 §6.3 gives this response to this request.
    fn framing(&self) -> BodyKind {
        let (is_head, _, _) = self.ctx;
        if is_head || self.status < 200 || self.status == 204 || self.status == 304 {
            return BodyKind::None;
        }
        self.body.kind()
    }
}

#[test]
fn a_generated_response_keeps_its_meaning_however_its_head_is_split() {
    run((response(), any::<prop::sample::Index>()), |(resp, at)| {
        let (request_is_head, client_minor, client_keep_alive) = resp.ctx;
        let ctx = ResponseContext { request_is_head, client_minor, client_keep_alive, upgrade_offer: None };
        let mut bytes = resp.head();
        let head_len = bytes.len();
        bytes.extend(resp.body.encode());
        let mut out = vec![0u8; 24 * 1024];
        // Every prefix short of the head asks for more; the whole head gives one answer.
        let cut = at.index(head_len);
        prop_assert_eq!(parse_response(&bytes[..cut], &ctx, &mut out), Ok(None));
        if resp.framing() == BodyKind::Chunked && client_minor == 0 {
            // An HTTP/1.0 client cannot read chunked framing: the target is at fault.
            prop_assert_eq!(parse_response(&bytes, &ctx, &mut out).map_err(HttpError::status), Err(502));
            return Ok(());
        }
        let head = parse_response(&bytes, &ctx, &mut out).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let head = head.ok_or_else(|| TestCaseError::fail("partial"))?;
        prop_assert_eq!(head.head_len, head_len);
        prop_assert_eq!(head.status, resp.status);
        prop_assert_eq!(head.body, resp.framing());
        let s = strict_check(&out[..head.out_len], true).map_err(TestCaseError::fail)?;
        let names: Vec<String> = resp.fields.iter().map(|(n, _)| n.to_ascii_lowercase()).collect();
        let kept: Vec<(String, Vec<u8>)> = s.fields.iter().filter(|(n, _)| names.contains(n)).cloned().collect();
        let sent: Vec<(String, Vec<u8>)> =
            resp.fields.iter().map(|(n, v)| (n.to_ascii_lowercase(), v.trim_ascii().to_vec())).collect();
        prop_assert_eq!(kept, sent);
        // The body ends at the same byte however it is read.
        if head.body != BodyKind::None {
            let body = &bytes[head_len..];
            let mut framer = BodyFramer::new(head.body);
            let split = at.index(body.len() + 1);
            let mut used = 0;
            for piece in [&body[..split], &body[split..]] {
                let p =
                    framer.advance(piece, HttpError::BadResponse).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                used += p.used;
            }
            prop_assert!(framer.is_done());
            prop_assert_eq!(used, body.len());
        }
        Ok(())
    });
}

const PIPELINE: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
    POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world\
    POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: X-Y\r\nX-Y: 1\r\n\r\n\
    3;e=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: 1\r\n\r\n\
    HEAD /d HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 127.0.3.4\r\n\r\n\
    GET /e HTTP/1.0\r\n\r\n";

#[test]
fn a_fixed_pipeline_forwards_the_same_whole_or_byte_by_byte() {
    // Chunk extensions, trailers, a Connection option, a client's X-Forwarded-For, HTTP/1.0.
    let (whole, refused) = forward_in_pieces(PIPELINE, &[]);
    assert_eq!((whole.len(), refused), (5, None));
    assert_eq!(whole[2].1, b"3;e=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: 1\r\n\r\n");
    let bytewise: Vec<usize> = (1..PIPELINE.len()).collect();
    assert_eq!(forward_in_pieces(PIPELINE, &bytewise), (whole, None));
}

#[test]
fn the_checker_catches_what_it_guards_against() {
    // The strict checker is the oracle of the properties above: it must itself refuse.
    let bad: [&[u8]; 6] = [
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\r\n\r\n",
    ];
    for head in bad {
        assert!(strict_check(head, false).is_err(), "{:?}", ascii(head));
    }
    assert!(strict_check(b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false).is_ok());
    assert_eq!(MAX_HEADERS, 100, "the generators stay well under the field limit");
}
