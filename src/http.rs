//! HTTP/1.1 framing, pure: bytes in, a verdict and rewritten bytes out. No sockets, no clocks.
//!
//! - `parse_request` / `parse_response` read one message head with httparse, decide how its body
//!   is framed (RFC 9112 §6), and write the head to forward into a caller's slice with the
//!   hop-by-hop fields removed and the proxy's own fields added.
//! - `BodyFramer` follows a body through any split of reads and says where it ends, so bodies
//!   stream through untouched (chunked stays chunked) and the next message is found.
//! - Every refusal is an `HttpError` that knows the status it deserves.

use std::fmt;
use std::io::Write as _;
use std::net::IpAddr;

/// Most header fields a message may have; more is 431 (request) or 502 (response).
pub const MAX_HEADERS: usize = 100;
/// Longest request-target; longer is 414.
pub const MAX_URI: usize = 8 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// The request is malformed or ambiguous (400).
    BadRequest(&'static str),
    /// The request head does not fit the limit (431).
    HeadTooLarge,
    /// More header fields than `MAX_HEADERS` (431).
    TooManyHeaders,
    /// The request-target is longer than `MAX_URI` (414).
    UriTooLong,
    /// The request body is larger than `max_body_size` (413).
    BodyTooLarge,
    /// A method or transfer coding the proxy does not implement (501).
    NotImplemented(&'static str),
    /// An HTTP version other than 1.0 and 1.1 (505).
    Version,
    /// The target's response is malformed or ambiguous (502).
    BadResponse(&'static str),
}

impl HttpError {
    pub fn status(self) -> u16 {
        match self {
            HttpError::BadRequest(_) => 400,
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::UriTooLong => 414,
            HttpError::BodyTooLarge => 413,
            HttpError::NotImplemented(_) => 501,
            HttpError::Version => 505,
            HttpError::BadResponse(_) => 502,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::BadRequest(why) => write!(f, "bad request: {why}"),
            HttpError::HeadTooLarge => f.write_str("request head too large"),
            HttpError::TooManyHeaders => f.write_str("too many header fields"),
            HttpError::UriTooLong => f.write_str("request-target too long"),
            HttpError::BodyTooLarge => f.write_str("request body too large"),
            HttpError::NotImplemented(what) => write!(f, "not implemented: {what}"),
            HttpError::Version => f.write_str("unsupported HTTP version"),
            HttpError::BadResponse(why) => write!(f, "bad response from target: {why}"),
        }
    }
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
    /// Responses only: the body runs until the target closes.
    UntilClose,
}

/// What the proxy learned from a request head it forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of input the head took.
    pub head_len: usize,
    /// Bytes of rewritten head written to the output.
    pub out_len: usize,
    pub body: BodyKind,
    /// Whether the client wants the connection kept after this exchange.
    pub keep_alive: bool,
    /// HTTP/1.`minor`.
    pub minor: u8,
    pub is_head: bool,
    /// Safe to send twice (RFC 9110 §9.2.2).
    pub idempotent: bool,
    /// `Expect: 100-continue`: the client may hold the body back until it hears from the target.
    pub expect_continue: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub head_len: usize,
    pub out_len: usize,
    pub status: u16,
    pub body: BodyKind,
    /// A 1xx: another head follows for the same request.
    pub informational: bool,
    /// The client connection may carry another request after this response.
    pub client_keep_alive: bool,
    /// The upstream connection may carry another request after this response.
    pub upstream_reusable: bool,
}

/// What the proxy adds to each request it forwards.
#[derive(Clone, Copy, Debug)]
pub struct Forwarding<'a> {
    pub client_ip: IpAddr,
    /// Prepended to the path (a target URL's path).
    pub path_prefix: &'a str,
}

/// What the response framing depends on from its request.
#[derive(Clone, Copy, Debug)]
pub struct ResponseContext {
    pub request_is_head: bool,
    pub client_minor: u8,
    /// Whether the client connection may stay open as far as the request and proxy go.
    pub client_keep_alive: bool,
}

/// What one header field is to the proxy, decided once from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    /// End to end: forwarded unless the `Connection` field names it.
    Other,
    ContentLength,
    TransferEncoding,
    Host,
    Connection,
    Expect,
    XForwardedFor,
    XForwardedProto,
    /// Describes one connection only and is never forwarded (RFC 9110 §7.6.1).
    HopByHop,
}

impl Field {
    fn of(name: &str) -> Field {
        let is = |known: &str| name.eq_ignore_ascii_case(known);
        match name.len() {
            2 if is("te") => Field::HopByHop,
            4 if is("host") => Field::Host,
            6 if is("expect") => Field::Expect,
            7 if is("upgrade") || is("trailer") => Field::HopByHop,
            10 if is("connection") => Field::Connection,
            10 if is("keep-alive") => Field::HopByHop,
            14 if is("content-length") => Field::ContentLength,
            14 if is("http2-settings") => Field::HopByHop,
            15 if is("x-forwarded-for") => Field::XForwardedFor,
            16 if is("proxy-connection") => Field::HopByHop,
            17 if is("transfer-encoding") => Field::TransferEncoding,
            17 if is("x-forwarded-proto") => Field::XForwardedProto,
            _ => Field::Other,
        }
    }

    /// The fields the message's framing and routing rest on, and those the proxy rewrites. A
    /// `Connection` option naming one of them is ignored: dropping `Content-Length` would turn
    /// the body into a second message, dropping `Host` would reroute the request.
    fn immune_to_connection(self) -> bool {
        matches!(
            self,
            Field::ContentLength
                | Field::TransferEncoding
                | Field::Host
                | Field::XForwardedFor
                | Field::XForwardedProto
        )
    }
}

/// Most field names one message's `Connection` fields may list besides `close` and `keep-alive`.
const MAX_CONNECTION_OPTIONS: usize = 8;

/// Parses a request head at the start of `input` and writes the head to forward into `out`.
/// `Ok(None)`: the head is not complete yet.
pub fn parse_request(input: &[u8], fwd: &Forwarding<'_>, out: &mut [u8]) -> Result<Option<RequestHead>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        // A request line longer than any allowed URI will never end well (RFC 9112 §3).
        Ok(httparse::Status::Partial) if input.len() > MAX_URI + 32 && !input.contains(&b'\n') => {
            return Err(HttpError::UriTooLong)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(request_parse_error(e)),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HttpError::BadRequest("incomplete request line"));
    };
    let minor = minor.min(1);
    if target.len() > MAX_URI {
        return Err(HttpError::UriTooLong);
    }
    if method == "CONNECT" {
        return Err(HttpError::NotImplemented("CONNECT"));
    }
    let (path, uri_authority) = split_target(target)?;
    // Scanned in place: the struct is a few hundred bytes, and moving it costs more than the scan.
    let mut fields = Fields::new();
    fields.scan(req.headers, false)?;
    if minor == 1 && fields.host_count != 1 {
        return Err(HttpError::BadRequest("HTTP/1.1 needs exactly one Host field"));
    }
    if fields.host_count > 1 {
        return Err(HttpError::BadRequest("more than one Host field"));
    }
    let host_ok = |(i, h): (usize, &httparse::Header<'_>)| fields.kinds[i] != Field::Host || valid_host(h.value);
    if !req.headers.iter().enumerate().all(host_ok) || uri_authority.is_some_and(|a| !valid_host(a.as_bytes())) {
        return Err(HttpError::BadRequest("invalid Host"));
    }
    let body = match (fields.transfer_encoding, fields.content_length) {
        (Some(_), Some(_)) => return Err(HttpError::BadRequest("both Content-Length and Transfer-Encoding")),
        (Some(_), None) if minor == 0 => return Err(HttpError::BadRequest("Transfer-Encoding in an HTTP/1.0 request")),
        (Some(Coding::Chunked), None) => BodyKind::Chunked,
        (Some(Coding::NotChunkedLast), None) => {
            return Err(HttpError::BadRequest("Transfer-Encoding does not end in chunked"))
        }
        (Some(Coding::Unknown), None) => return Err(HttpError::NotImplemented("unknown transfer coding")),
        (None, Some(0)) | (None, None) => BodyKind::None,
        (None, Some(n)) => BodyKind::Length(n),
    };
    let keep_alive = if minor == 1 { !fields.close } else { fields.keep_alive && !fields.close };

    let mut w = HeadWriter { out, len: 0, overflow: HttpError::HeadTooLarge };
    w.put(method.as_bytes());
    w.put(b" ");
    if path != "*" {
        w.put(fwd.path_prefix.as_bytes());
    }
    w.put(path.as_bytes());
    w.put(if minor == 1 { b" HTTP/1.1\r\n" } else { b" HTTP/1.0\r\n" });
    // With an absolute-form target, the URI's authority is the Host (RFC 9112 §3.2.2).
    if let Some(authority) = uri_authority {
        w.field(b"Host", authority.as_bytes());
    }
    let mut length_written = false;
    for (i, h) in req.headers.iter().enumerate() {
        match fields.kinds[i] {
            Field::XForwardedFor | Field::XForwardedProto => {}
            Field::Host if uri_authority.is_some() => {}
            Field::ContentLength => w.content_length(h.value, &mut length_written),
            _ if fields.is_hop_by_hop(i, h.name) => {}
            _ => w.field(h.name.as_bytes(), h.value),
        }
    }
    // Earlier hops stay in order, joined into one field; this client comes last.
    w.put(b"X-Forwarded-For: ");
    for (i, h) in req.headers.iter().enumerate() {
        if fields.kinds[i] == Field::XForwardedFor {
            w.put(trim(h.value));
            w.put(b", ");
        }
    }
    w.ip(fwd.client_ip);
    w.put(b"\r\nX-Forwarded-Proto: http\r\n");
    if minor == 0 {
        w.put(b"Connection: keep-alive\r\n");
    }
    w.put(b"\r\n");
    let out_len = w.finish()?;
    let is_head = method == "HEAD";
    let idempotent = matches!(method, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE");
    let expect_continue = fields.expect_continue && minor == 1;
    Ok(Some(RequestHead { head_len, out_len, body, keep_alive, minor, is_head, idempotent, expect_continue }))
}

/// Parses a response head at the start of `input` and writes the head to send the client.
pub fn parse_response(input: &[u8], ctx: &ResponseContext, out: &mut [u8]) -> Result<Option<ResponseHead>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::BadResponse("too many header fields")),
        Err(_) => return Err(HttpError::BadResponse("malformed head")),
    };
    let (Some(minor), Some(status)) = (resp.version, resp.code) else {
        return Err(HttpError::BadResponse("incomplete status line"));
    };
    if !(100..=599).contains(&status) {
        return Err(HttpError::BadResponse("status code out of range"));
    }
    if status == 101 {
        return Err(HttpError::BadResponse("101 Switching Protocols was not asked for"));
    }
    let informational = status < 200;
    let mut fields = Fields::new();
    fields.scan(resp.headers, true)?;
    let chunked_and_length = fields.transfer_encoding.is_some() && fields.content_length.is_some();
    let body = if ctx.request_is_head || informational || status == 204 || status == 304 {
        BodyKind::None
    } else {
        match (fields.transfer_encoding, fields.content_length) {
            (Some(Coding::Chunked), _) => BodyKind::Chunked,
            (Some(_), _) => BodyKind::UntilClose,
            (None, Some(0)) => BodyKind::None,
            (None, Some(n)) => BodyKind::Length(n),
            (None, None) => BodyKind::UntilClose,
        }
    };
    let upstream_keep_alive = if minor == 1 { !fields.close } else { fields.keep_alive };
    let upstream_reusable = upstream_keep_alive && body != BodyKind::UntilClose && !chunked_and_length;
    let client_keep_alive = ctx.client_keep_alive && body != BodyKind::UntilClose;

    let mut w = HeadWriter { out, len: 0, overflow: HttpError::BadResponse("head too large") };
    w.put(b"HTTP/1.1 ");
    w.status(status);
    w.put(b" ");
    w.put(resp.reason.unwrap_or("").as_bytes());
    w.put(b"\r\n");
    let mut length_written = chunked_and_length;
    for (i, h) in resp.headers.iter().enumerate() {
        match fields.kinds[i] {
            Field::ContentLength => w.content_length(h.value, &mut length_written),
            _ if fields.is_hop_by_hop(i, h.name) => {}
            _ => w.field(h.name.as_bytes(), h.value),
        }
    }
    if !informational {
        if !client_keep_alive {
            w.put(b"Connection: close\r\n");
        } else if ctx.client_minor == 0 {
            w.put(b"Connection: keep-alive\r\n");
        }
    }
    w.put(b"\r\n");
    let out_len = w.finish()?;
    Ok(Some(ResponseHead { head_len, out_len, status, body, informational, client_keep_alive, upstream_reusable }))
}

/// Writes a complete response made by the proxy itself (errors, the all-down answer).
/// Returns the bytes written, or `None` if `out` is too small.
pub fn write_local_response(out: &mut [u8], status: u16, body: &str, keep_alive: bool) -> Option<usize> {
    let mut w = HeadWriter { out, len: 0, overflow: HttpError::HeadTooLarge };
    w.put(b"HTTP/1.1 ");
    w.status(status);
    w.put(b" ");
    w.put(reason(status).as_bytes());
    w.put(b"\r\nContent-Type: text/plain\r\nContent-Length: ");
    w.decimal(body.len() as u64);
    w.put(if keep_alive { b"\r\n\r\n" } else { b"\r\nConnection: close\r\n\r\n" });
    w.put(body.as_bytes());
    w.finish().ok()
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

fn request_parse_error(e: httparse::Error) -> HttpError {
    match e {
        httparse::Error::Version => HttpError::Version,
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        httparse::Error::HeaderName => HttpError::BadRequest("invalid field name"),
        httparse::Error::HeaderValue => HttpError::BadRequest("invalid field value"),
        httparse::Error::Token => HttpError::BadRequest("invalid method"),
        httparse::Error::NewLine => HttpError::BadRequest("invalid line ending"),
        _ => HttpError::BadRequest("malformed request line"),
    }
}

/// The path to send upstream, and for an absolute-form target its authority (RFC 9112 §3.2).
fn split_target(target: &str) -> Result<(&str, Option<&str>), HttpError> {
    if target.starts_with('/') || target == "*" {
        return Ok((target, None));
    }
    let scheme_len = ["http://", "https://"]
        .iter()
        .find(|s| target.get(..s.len()).is_some_and(|t| t.eq_ignore_ascii_case(s)))
        .map(|s| s.len())
        .ok_or(HttpError::BadRequest("request-target is not origin- or absolute-form"))?;
    let rest = &target[scheme_len..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return Err(HttpError::BadRequest("absolute-form target without a plain authority"));
    }
    match path.as_bytes().first() {
        None => Ok(("/", Some(authority))),
        Some(b'/') => Ok((path, Some(authority))),
        // "http://h?q" means "/?q", which cannot be forwarded without a copy: refuse it.
        Some(_) => Err(HttpError::BadRequest("absolute-form target with a query but no path")),
    }
}

/// `uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2): a reg-name or an IP literal.
fn valid_host(value: &[u8]) -> bool {
    let value = trim(value);
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(close) = value.iter().position(|&b| b == b']') else { return false };
        let literal = &value[1..close];
        if literal.is_empty() || !literal.iter().all(|b| b.is_ascii_hexdigit() || b":.".contains(b)) {
            return false;
        }
        (&value[1..close], &value[close + 1..])
    } else {
        let colon = value.iter().position(|&b| b == b':').unwrap_or(value.len());
        let (host, port) = value.split_at(colon);
        let reg_name = |b: &u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(b);
        if host.is_empty() || !host.iter().all(reg_name) {
            return false;
        }
        (host, port)
    };
    let port_ok = port.is_empty() || (port[0] == b':' && port.len() <= 6 && port[1..].iter().all(u8::is_ascii_digit));
    !host.is_empty() && port_ok
}

#[derive(Clone, Copy)]
enum Coding {
    Chunked,
    NotChunkedLast,
    Unknown,
}

/// The framing-relevant facts of one header block, and what each field is.
struct Fields<'b> {
    kinds: [Field; MAX_HEADERS],
    /// Field names the `Connection` fields list, besides `close` and `keep-alive`: those fields
    /// are hop-by-hop too, unless `Field::immune_to_connection` says otherwise.
    options: [&'b [u8]; MAX_CONNECTION_OPTIONS],
    option_count: usize,
    content_length: Option<u64>,
    transfer_encoding: Option<Coding>,
    host_count: usize,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
}

impl<'b> Fields<'b> {
    #[inline]
    fn new() -> Self {
        Fields {
            kinds: [Field::Other; MAX_HEADERS],
            options: [&[]; MAX_CONNECTION_OPTIONS],
            option_count: 0,
            content_length: None,
            transfer_encoding: None,
            host_count: 0,
            close: false,
            keep_alive: false,
            expect_continue: false,
        }
    }

    fn scan(&mut self, headers: &[httparse::Header<'b>], response: bool) -> Result<(), HttpError> {
        let bad = |why| {
            if response {
                HttpError::BadResponse(why)
            } else {
                HttpError::BadRequest(why)
            }
        };
        let f = self;
        let mut te_field = false;
        let mut unknown_coding = false;
        for (i, h) in headers.iter().enumerate() {
            let kind = Field::of(h.name);
            f.kinds[i] = kind;
            match kind {
                Field::ContentLength => {
                    let n = parse_content_length(h.value).ok_or(bad("invalid Content-Length"))?;
                    if f.content_length.is_some_and(|m| m != n) {
                        return Err(bad("conflicting Content-Length fields"));
                    }
                    f.content_length = Some(n);
                }
                Field::TransferEncoding => {
                    te_field = true;
                    for coding in list_items(h.value) {
                        if matches!(f.transfer_encoding, Some(Coding::Chunked)) {
                            return Err(bad("chunked is not the last transfer coding"));
                        }
                        let class = classify_coding(coding);
                        unknown_coding |= matches!(class, Coding::Unknown);
                        f.transfer_encoding = Some(class);
                    }
                }
                Field::Host => f.host_count += 1,
                Field::Expect => f.expect_continue |= trim(h.value).eq_ignore_ascii_case(b"100-continue"),
                Field::Connection => {
                    for token in list_items(h.value) {
                        if token.eq_ignore_ascii_case(b"close") {
                            f.close = true;
                        } else if token.eq_ignore_ascii_case(b"keep-alive") {
                            f.keep_alive = true;
                        } else if f.option_count == MAX_CONNECTION_OPTIONS {
                            return Err(bad("too many Connection options"));
                        } else {
                            f.options[f.option_count] = token;
                            f.option_count += 1;
                        }
                    }
                }
                _ => {}
            }
        }
        // `Transfer-Encoding:` with no coding in it: some targets let its mere presence
        // override Content-Length, so it is refused rather than ignored.
        if f.transfer_encoding.is_none() && te_field {
            return Err(bad("empty Transfer-Encoding"));
        }
        if unknown_coding {
            f.transfer_encoding = Some(Coding::Unknown);
        }
        Ok(())
    }

    /// Whether header `i`, named `name`, stays on this side of the proxy.
    fn is_hop_by_hop(&self, i: usize, name: &str) -> bool {
        match self.kinds[i] {
            Field::HopByHop | Field::Connection => true,
            kind if kind.immune_to_connection() => false,
            _ => self.options[..self.option_count].iter().any(|option| option.eq_ignore_ascii_case(name.as_bytes())),
        }
    }
}

fn classify_coding(coding: &[u8]) -> Coding {
    const KNOWN: [&[u8]; 6] = [b"gzip", b"x-gzip", b"deflate", b"compress", b"x-compress", b"identity"];
    if coding.eq_ignore_ascii_case(b"chunked") {
        Coding::Chunked
    } else if KNOWN.iter().any(|k| coding.eq_ignore_ascii_case(k)) {
        Coding::NotChunkedLast
    } else {
        Coding::Unknown
    }
}

/// `1*DIGIT`, nothing else (RFC 9110 §8.6): no sign, no list, no spaces inside.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    let digits = trim(value);
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// The non-empty, trimmed items of a comma-separated field value.
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim).filter(|item| !item.is_empty())
}

fn trim(value: &[u8]) -> &[u8] {
    let is_ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ws(b)).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !is_ws(b)).map_or(start, |i| i + 1);
    &value[start..end]
}

/// Appends to a fixed slice; the first overflow is remembered and reported by `finish`.
struct HeadWriter<'a> {
    out: &'a mut [u8],
    len: usize,
    overflow: HttpError,
}

impl HeadWriter<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if end <= self.out.len() {
            self.out[self.len..end].copy_from_slice(bytes);
        }
        self.len = end;
    }

    fn field(&mut self, name: &[u8], value: &[u8]) {
        self.put(name);
        self.put(b": ");
        self.put(value);
        self.put(b"\r\n");
    }

    /// One `Content-Length` field, however many identical ones came in (RFC 9112 §6.3), its
    /// value trimmed and without leading zeros; `written` says whether it is out already. The
    /// value is `1*DIGIT` (checked by `Fields::scan`).
    fn content_length(&mut self, value: &[u8], written: &mut bool) {
        if *written {
            return;
        }
        let digits = trim(value);
        let zeros = digits.iter().take_while(|&&d| d == b'0').count().min(digits.len().saturating_sub(1));
        self.put(b"Content-Length: ");
        self.put(&digits[zeros..]);
        self.put(b"\r\n");
        *written = true;
    }

    fn ip(&mut self, ip: IpAddr) {
        // IPv4 by hand: `write!` through `core::fmt` cost some 700 instructions per request.
        if let IpAddr::V4(v4) = ip {
            let mut text = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                let digits = [octet / 100, octet / 10 % 10, octet % 10];
                let skip = if octet >= 100 {
                    0
                } else if octet >= 10 {
                    1
                } else {
                    2
                };
                for d in &digits[skip..] {
                    text[len] = b'0' + d;
                    len += 1;
                }
            }
            return self.put(&text[..len]);
        }
        let mut scratch = [0u8; 48];
        let mut cursor = &mut scratch[..];
        let written = match write!(cursor, "{ip}") {
            Ok(()) => 48 - cursor.len(),
            Err(_) => 0,
        };
        self.put(&scratch[..written]);
    }

    fn status(&mut self, status: u16) {
        self.decimal(u64::from(status));
    }

    fn decimal(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.put(&digits[at..]);
    }

    fn finish(self) -> Result<usize, HttpError> {
        if self.len <= self.out.len() {
            Ok(self.len)
        } else {
            Err(self.overflow)
        }
    }
}

/// How far the framing bytes of a chunked body may run: one chunk-size line with its
/// extensions, and the trailer section after the last chunk. Past them the body is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLimits {
    pub line: u32,
    pub trailers: u32,
}

impl Default for ChunkLimits {
    fn default() -> ChunkLimits {
        ChunkLimits { line: 4096, trailers: 8192 }
    }
}

/// Follows one message body through the bytes that arrive, however they are split.
///
/// Data bytes pass at once. Framing bytes are checked against the grammar of RFC 9112 §7.1, and
/// those of a chunk-size line or of the trailer section are `held` until the line or section
/// is complete and valid: a caller forwards only bytes the framer has vouched for, so a
/// malformed extension or a `Content-Length` in a trailer never leaves the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyFramer {
    state: Chunk,
    until_close: bool,
    held: u32,
    /// Where in the held bytes the trailer section starts.
    trailers_from: u32,
    limits: ChunkLimits,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Plain bytes left: a Content-Length body, or the data of one chunk.
    Data {
        left: u64,
        chunked: bool,
    },
    Size {
        value: u64,
        digits: u8,
    },
    /// After the size, in the extensions, up to the CR.
    Ext {
        value: u64,
        at: Ext,
    },
    SizeLf {
        value: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer field line, or of the CRLF that ends the body.
    TrailerStart,
    /// In a trailer field name: its length so far, and which forbidden names it still matches.
    TrailerName {
        len: u8,
        forbidden: u16,
    },
    TrailerValue,
    TrailerLf,
    LastLf,
    Done,
}

/// Where in `*( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )` the framer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ext {
    /// After the size or a complete extension: whitespace, `;` or the CR.
    Next,
    BeforeName,
    Name,
    AfterName,
    BeforeValue,
    Token,
    Quoted,
    QuotedPair,
}

/// Fields a trailer may not carry (RFC 9110 §6.5.1): framing, routing and connection control.
/// Forwarded, a recipient that merges trailers into the head would reframe or reroute.
/// The `X-Forwarded-*` fields are the proxy's to write: in a trailer they would reach a merging
/// recipient unchecked.
const FORBIDDEN_TRAILERS: [&[u8]; 11] = [
    b"content-length",
    b"transfer-encoding",
    b"host",
    b"connection",
    b"keep-alive",
    b"te",
    b"trailer",
    b"upgrade",
    b"proxy-connection",
    b"x-forwarded-for",
    b"x-forwarded-proto",
];

/// The outcome of offering bytes to a `BodyFramer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes at the front of the offer that belong to the body.
    pub used: usize,
    /// The body ended within them.
    pub done: bool,
}

/// `tchar` (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A field-value or quoted-string character besides the quote and backslash: SP, HTAB,
/// VCHAR, obs-text.
fn is_text(b: u8) -> bool {
    b == b' ' || b == b'\t' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

impl BodyFramer {
    pub fn new(kind: BodyKind) -> BodyFramer {
        BodyFramer::with_limits(kind, ChunkLimits::default())
    }

    pub fn with_limits(kind: BodyKind, limits: ChunkLimits) -> BodyFramer {
        let state = match kind {
            BodyKind::None | BodyKind::Length(0) => Chunk::Done,
            BodyKind::Length(n) => Chunk::Data { left: n, chunked: false },
            BodyKind::Chunked => Chunk::Size { value: 0, digits: 0 },
            BodyKind::UntilClose => Chunk::Data { left: u64::MAX, chunked: false },
        };
        BodyFramer { state, until_close: kind == BodyKind::UntilClose, held: 0, trailers_from: 0, limits }
    }

    pub fn is_done(&self) -> bool {
        self.state == Chunk::Done
    }

    /// Whether only the peer closing can end this body.
    pub fn until_close(&self) -> bool {
        self.until_close
    }

    /// Of the bytes classified so far, how many at the end are framing not yet complete (a
    /// chunk-size line, the trailer section): they may not be forwarded yet.
    pub fn held(&self) -> usize {
        self.held as usize
    }

    /// Data bytes still expected by a Content-Length body; `None` for other framings.
    pub fn length_left(&self) -> Option<u64> {
        match self.state {
            Chunk::Data { left, chunked: false } if !self.until_close => Some(left),
            Chunk::Done => Some(0),
            _ => None,
        }
    }

    /// Classifies the bytes at the front of `data`; `bad` is the error to report for malformed
    /// chunk framing (400 for requests, 502 for responses).
    pub fn advance(&mut self, data: &[u8], bad: fn(&'static str) -> HttpError) -> Result<Progress, HttpError> {
        let mut used = 0;
        while used < data.len() && self.state != Chunk::Done {
            if let Chunk::Data { left, chunked } = self.state {
                let take = left.min((data.len() - used) as u64);
                used += take as usize;
                let left = if self.until_close { left } else { left - take };
                self.state = match (left, chunked) {
                    (0, true) => Chunk::DataCr,
                    (0, false) => Chunk::Done,
                    _ => Chunk::Data { left, chunked },
                };
                continue;
            }
            let prev = self.state;
            self.state = self.step(data[used], bad)?;
            used += 1;
            self.hold(prev, bad)?;
        }
        Ok(Progress { used, done: self.state == Chunk::Done })
    }

    /// Counts one framing byte as held, or releases the line it completed.
    fn hold(&mut self, prev: Chunk, bad: fn(&'static str) -> HttpError) -> Result<(), HttpError> {
        match self.state {
            // A size line ended (its data follows), the CRLF after a chunk's data, or the body.
            Chunk::Data { .. } | Chunk::DataLf | Chunk::Size { digits: 0, .. } | Chunk::Done => self.held = 0,
            Chunk::DataCr => {}
            Chunk::Size { .. } | Chunk::Ext { .. } | Chunk::SizeLf { .. } => {
                self.held += 1;
                if self.held > self.limits.line {
                    return Err(bad("chunk-size line too long"));
                }
            }
            Chunk::TrailerStart
            | Chunk::TrailerName { .. }
            | Chunk::TrailerValue
            | Chunk::TrailerLf
            | Chunk::LastLf => {
                self.held += 1;
                if matches!(prev, Chunk::SizeLf { .. }) {
                    // The last-chunk line ends here; the trailer section starts.
                    self.trailers_from = self.held;
                }
                if self.held - self.trailers_from > self.limits.trailers {
                    return Err(bad("trailer section too large"));
                }
            }
        }
        Ok(())
    }

    fn step(&self, byte: u8, bad: fn(&'static str) -> HttpError) -> Result<Chunk, HttpError> {
        Ok(match (self.state, byte) {
            (Chunk::Size { value, digits }, b) if b.is_ascii_hexdigit() => {
                if digits >= 15 {
                    return Err(bad("chunk size too large"));
                }
                let digit = (b as char).to_digit(16).unwrap_or(0);
                Chunk::Size { value: value * 16 + u64::from(digit), digits: digits + 1 }
            }
            (Chunk::Size { digits: 0, .. }, _) => return Err(bad("chunk size is not hex")),
            (Chunk::Size { value, .. }, b'\r') => Chunk::SizeLf { value },
            (Chunk::Size { value, .. }, b';') => Chunk::Ext { value, at: Ext::BeforeName },
            (Chunk::Size { value, .. }, b) if is_ws(b) => Chunk::Ext { value, at: Ext::Next },
            (Chunk::Size { .. }, _) => return Err(bad("chunk size is not hex")),
            (Chunk::Ext { value, at }, b) => match extension_step(at, b) {
                Some(Ext::Next) if b == b'\r' => Chunk::SizeLf { value },
                Some(at) => Chunk::Ext { value, at },
                None => return Err(bad("malformed chunk extension")),
            },
            (Chunk::SizeLf { value: 0 }, b'\n') => Chunk::TrailerStart,
            (Chunk::SizeLf { value }, b'\n') => Chunk::Data { left: value, chunked: true },
            (Chunk::SizeLf { .. }, _) => return Err(bad("chunk size line not ended by CRLF")),
            (Chunk::DataCr, b'\r') => Chunk::DataLf,
            (Chunk::DataCr, _) => return Err(bad("chunk data not followed by CRLF")),
            (Chunk::DataLf, b'\n') => Chunk::Size { value: 0, digits: 0 },
            (Chunk::DataLf, _) => return Err(bad("chunk data not followed by CRLF")),
            (Chunk::TrailerStart, b'\r') => Chunk::LastLf,
            (Chunk::TrailerStart, b) if is_ws(b) => return Err(bad("obs-fold in the trailer section")),
            (Chunk::TrailerStart, b) if is_tchar(b) => {
                Chunk::TrailerName { len: 1, forbidden: narrow_forbidden(u16::MAX, 0, b) }
            }
            (Chunk::TrailerStart, _) => return Err(bad("malformed trailer field")),
            (Chunk::TrailerName { len, forbidden }, b) if is_tchar(b) => {
                Chunk::TrailerName { len: len.saturating_add(1), forbidden: narrow_forbidden(forbidden, len, b) }
            }
            (Chunk::TrailerName { len, forbidden }, b':') => {
                let named = (0..FORBIDDEN_TRAILERS.len())
                    .any(|i| forbidden & (1 << i) != 0 && FORBIDDEN_TRAILERS[i].len() == usize::from(len));
                if named {
                    return Err(bad("a framing or connection field in the trailer section"));
                }
                Chunk::TrailerValue
            }
            (Chunk::TrailerName { .. }, _) => return Err(bad("trailer field line without a colon")),
            (Chunk::TrailerValue, b'\r') => Chunk::TrailerLf,
            (Chunk::TrailerValue, b) if is_text(b) => Chunk::TrailerValue,
            (Chunk::TrailerValue, _) => return Err(bad("invalid character in a trailer field")),
            (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
            (Chunk::TrailerLf, _) => return Err(bad("trailer line not ended by CRLF")),
            (Chunk::LastLf, b'\n') => Chunk::Done,
            (Chunk::LastLf, _) => return Err(bad("chunked body not ended by CRLF")),
            (Chunk::Data { .. } | Chunk::Done, _) => self.state,
        })
    }
}

/// One byte of a chunk extension; `None` if the grammar does not allow it there. A CR ends the
/// line wherever a complete extension (or none) stands, and comes back as `Ext::Next`.
fn extension_step(at: Ext, b: u8) -> Option<Ext> {
    let ends = |b: u8| b == b'\r';
    Some(match at {
        Ext::Next | Ext::AfterName if is_ws(b) => at,
        Ext::Next | Ext::AfterName | Ext::Name | Ext::Token if ends(b) => Ext::Next,
        Ext::Next | Ext::AfterName | Ext::Name | Ext::Token if b == b';' => Ext::BeforeName,
        Ext::AfterName | Ext::Name if b == b'=' => Ext::BeforeValue,
        Ext::Name | Ext::Token if is_ws(b) => {
            if at == Ext::Name {
                Ext::AfterName
            } else {
                Ext::Next
            }
        }
        Ext::Name if is_tchar(b) => Ext::Name,
        Ext::Token if is_tchar(b) => Ext::Token,
        Ext::BeforeName if is_ws(b) => Ext::BeforeName,
        Ext::BeforeName if is_tchar(b) => Ext::Name,
        Ext::BeforeValue if is_ws(b) => Ext::BeforeValue,
        Ext::BeforeValue if is_tchar(b) => Ext::Token,
        Ext::BeforeValue if b == b'"' => Ext::Quoted,
        Ext::Quoted if b == b'"' => Ext::Next,
        Ext::Quoted if b == b'\\' => Ext::QuotedPair,
        Ext::Quoted if is_text(b) => Ext::Quoted,
        Ext::QuotedPair if is_text(b) || b == b'"' || b == b'\\' => Ext::Quoted,
        _ => return None,
    })
}

/// Keeps the forbidden trailer names whose byte at `at` is `b`, ASCII case aside.
fn narrow_forbidden(forbidden: u16, at: u8, b: u8) -> u16 {
    let b = b.to_ascii_lowercase();
    let mut left = 0;
    for (i, name) in FORBIDDEN_TRAILERS.iter().enumerate() {
        if forbidden & (1 << i) != 0 && name.get(usize::from(at)) == Some(&b) {
            left |= 1 << i;
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    const FWD: Forwarding<'static> =
        Forwarding { client_ip: IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 2, 3)), path_prefix: "" };

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
        assert_eq!(out, "GET /a?b HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: http\r\n\r\n");
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
        let raw = "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n\
                   X-Forwarded-Proto: https\r\n\r\n";
        let (_, out) = request(raw).expect("valid");
        assert!(out.contains("X-Forwarded-For: 1.1.1.1, 2.2.2.2, 10.1.2.3\r\n"), "{out}");
        assert!(out.contains("X-Forwarded-Proto: http\r\n") && !out.contains("https"));
    }

    #[test]
    fn client_addresses_are_written_as_std_writes_them() {
        for ip in ["0.0.0.0", "1.2.3.4", "10.0.100.255", "255.255.255.255", "192.168.9.10", "::1", "fe80::1:2"] {
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
        let raw = "GET / HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1\r\nHost: x\r\nX-After: 1\r\n\r\n";
        let (_, out) = request(raw).expect("valid");
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: x\r\nX-After: 1\r\nX-Forwarded-For: 1.1.1.1, 10.1.2.3\r\nX-Forwarded-Proto: http\r\n\r\n"
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

    const CTX: ResponseContext = ResponseContext { request_is_head: false, client_minor: 1, client_keep_alive: true };

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
        for raw in
            ["HTTP/1.1 abc OK\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "HTTP/1.1 101 Up\r\n\r\n"]
        {
            let got = parse_response(raw.as_bytes(), &CTX, &mut out);
            assert_eq!(got.map_err(HttpError::status), Err(502), "{raw}");
        }
    }

    #[test]
    fn local_responses_are_complete() {
        let mut out = [0u8; 256];
        let n = write_local_response(&mut out, 500, "All servers is off", true).expect("fits");
        assert_eq!(
            std::str::from_utf8(&out[..n]).expect("utf8"),
            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 18\r\n\r\nAll servers is off"
        );
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
        for good in ["5;a\r\n", "5;a=b\r\n", "5 ; a = b ; c\r\n", "5;a=\"q \\\" ;x\"\r\n", "5;a=b;c=\"\"\r\n", "5 \r\n"]
        {
            let body = format!("{good}hello\r\n0\r\n\r\n");
            assert_eq!(frame_all(BodyKind::Chunked, body.as_bytes(), &[]), Ok((body.len(), true)), "{good:?}");
        }
        for bad in
            ["5;\r\n", "5;=b\r\n", "5;a=\r\n", "5;a b\r\n", "5;a=b c\r\n", "5;a=\"x\r\n", "5;a=\"x\"y\r\n", "5;a\0\r\n"]
        {
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
            "X-Forwarded-For: 1.2.3.4\r\n",
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

    /// A forwarded request: its rewritten head and its raw body.
    type Forwarded = (Vec<u8>, Vec<u8>);

    /// What a session would forward for a byte stream read in pieces cut at `cuts`, or the
    /// first error.
    fn forward_in_pieces(stream: &[u8], cuts: &[usize]) -> Result<Vec<Forwarded>, HttpError> {
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
                    let p = framer.advance(&buf, HttpError::BadRequest)?;
                    bytes.extend(buf.drain(..p.used));
                    if p.done {
                        requests.push((head, bytes));
                        continue;
                    }
                    body = Some((head, bytes, framer));
                    break;
                }
                let mut out = [0u8; 4096];
                let Some(head) = parse_request(&buf, &FWD, &mut out)? else { break };
                buf.drain(..head.head_len);
                body = Some((out[..head.out_len].to_vec(), Vec::new(), BodyFramer::new(head.body)));
            }
        }
        Ok(requests)
    }

    const PIPELINE: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
        POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world\
        POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: X-Y\r\nX-Y: 1\r\n\r\n\
        3;e=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: 1\r\n\r\n\
        HEAD /d HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n\
        GET /e HTTP/1.0\r\n\r\n";

    /// xorshift64: deterministic randomness for the property tests.
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed | 1;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    #[test]
    fn any_split_of_a_pipelined_stream_gives_the_same_requests_as_one_read() {
        let whole = forward_in_pieces(PIPELINE, &[]).expect("valid");
        assert_eq!(whole.len(), 5);
        assert_eq!(whole[2].1, b"3;e=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: 1\r\n\r\n");
        let mut next = rng(0x5eed);
        for _ in 0..3000 {
            let n = (next() % 12) as usize;
            let mut cuts: Vec<usize> = (0..n).map(|_| (next() % PIPELINE.len() as u64) as usize).collect();
            cuts.sort_unstable();
            assert_eq!(forward_in_pieces(PIPELINE, &cuts).expect("valid"), whole, "cuts {cuts:?}");
        }
        let bytewise: Vec<usize> = (1..PIPELINE.len()).collect();
        assert_eq!(forward_in_pieces(PIPELINE, &bytewise).expect("valid"), whole);
    }

    #[test]
    fn arbitrary_and_mutated_bytes_never_panic() {
        let mut next = rng(0xbad);
        for round in 0..20_000 {
            let mut bytes = PIPELINE.to_vec();
            if round % 2 == 0 {
                bytes = (0..(next() % 300) as usize).map(|_| next() as u8).collect();
            } else {
                for _ in 0..1 + next() % 4 {
                    let at = (next() % bytes.len() as u64) as usize;
                    match next() % 3 {
                        0 => bytes[at] = next() as u8,
                        1 => bytes.insert(at, next() as u8),
                        _ => {
                            bytes.remove(at);
                        }
                    }
                }
            }
            let cut = (next() % (bytes.len() as u64 + 1)) as usize;
            let _ = forward_in_pieces(&bytes, &[cut]);
            let mut out = [0u8; 512];
            let _ = parse_response(&bytes, &CTX, &mut out);
            let mut framer = BodyFramer::new(BodyKind::Chunked);
            let _ = framer.advance(&bytes, HttpError::BadResponse);
        }
    }
}
