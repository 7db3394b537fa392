//! Request heads: parse one, decide how its body is framed, write the head to forward.

use super::fields::{trim, valid_host, valid_request_id, Coding, Field, Fields};
use super::writer::HeadWriter;
use super::{BodyKind, HttpError, MAX_HEADERS, MAX_URI};
use std::net::IpAddr;

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
    /// A protocol switch the proxy will tunnel (WebSocket) was asked for and forwarded.
    pub upgrade: bool,
}

/// The method at the start of `bytes`, when they begin as a request line does: a token (RFC
/// 9112 §3.1) and a space. A connection's first bytes tell plain HTTP from TLS this way: a TLS
/// record starts with 0x16, which is no `tchar`.
pub fn leading_method(bytes: &[u8]) -> Option<&[u8]> {
    let len = bytes.iter().position(|&b| !super::is_tchar(b))?;
    (len > 0 && bytes[len] == b' ').then(|| &bytes[..len])
}

/// What the proxy adds to each request it forwards.
#[derive(Clone, Copy, Debug)]
pub struct Forwarding<'a> {
    pub client_ip: IpAddr,
    /// Prepended to the path (a target URL's path).
    pub path_prefix: &'a str,
    /// The `X-Request-Id` to send when the client sent no well-formed one.
    pub request_id: &'a [u8],
    /// Protocols a client may switch to through the proxy (`Upgrade`), lower case.
    pub upgrades: &'a [String],
    /// The request came over TLS: `X-Forwarded-Proto: https`.
    pub tls: bool,
}

/// Longest request line: the longest target, and room for a method and the version.
const MAX_LINE: usize = MAX_URI + 32;

/// Parses a request head at the start of `input` and writes the head to forward into `out`.
/// `Ok(None)`: the head is not complete yet.
pub fn parse_request(input: &[u8], fwd: &Forwarding<'_>, out: &mut [u8]) -> Result<Option<RequestHead>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(input) {
        // The same verdict as below whatever the reads: a line this long is refused even when
        // it came whole (a long method with a short target).
        Ok(httparse::Status::Complete(n)) if n > MAX_LINE && !input[..=MAX_LINE].contains(&b'\n') => {
            return Err(HttpError::UriTooLong)
        }
        Ok(httparse::Status::Complete(n)) => n,
        // A request line longer than any allowed URI will never end well (RFC 9112 §3).
        Ok(httparse::Status::Partial) if input.len() > MAX_LINE && !input.contains(&b'\n') => {
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
    // A switch to a protocol the proxy tunnels: a bodiless HTTP/1.1 GET (RFC 6455 §4.1) whose
    // every offered protocol is allowed. Any other Upgrade is dropped, as RFC 9110 §7.8 lets an
    // intermediary do, and the request goes on as plain HTTP (h2c included).
    let upgrade = fields
        .upgrade(req.headers)
        .filter(|_| minor == 1 && method == "GET" && body == BodyKind::None)
        .filter(|offer| upgrade_allowed(offer, fwd.upgrades));

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
    let mut te_written = false;
    for (i, h) in req.headers.iter().enumerate() {
        match fields.kinds[i] {
            Field::XForwardedFor | Field::XForwardedProto | Field::RequestId => {}
            Field::Host if uri_authority.is_some() => {}
            Field::ContentLength => w.content_length(h.value, &mut length_written),
            Field::TransferEncoding => w.transfer_encoding(fields.transfer_codings(req.headers), &mut te_written),
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
    w.put(if fwd.tls {
        b"\r\nX-Forwarded-Proto: https\r\nX-Request-Id: "
    } else {
        b"\r\nX-Forwarded-Proto: http\r\nX-Request-Id: "
    });
    let sent_id = req.headers.iter().enumerate().find(|(i, _)| fields.kinds[*i] == Field::RequestId);
    match sent_id.map(|(_, h)| trim(h.value)).filter(|id| valid_request_id(id)) {
        Some(id) => w.put(id),
        None => w.put(fwd.request_id),
    }
    w.put(b"\r\n");
    if let Some(offer) = upgrade {
        w.field(b"Connection", b"Upgrade");
        w.field(b"Upgrade", offer);
    } else if minor == 0 {
        w.put(b"Connection: keep-alive\r\n");
    }
    w.put(b"\r\n");
    let out_len = w.finish()?;
    let is_head = method == "HEAD";
    let idempotent = matches!(method, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE");
    let expect_continue = fields.expect_continue && minor == 1;
    Ok(Some(RequestHead {
        head_len,
        out_len,
        body,
        keep_alive,
        minor,
        is_head,
        idempotent,
        expect_continue,
        upgrade: upgrade.is_some(),
    }))
}

/// Every protocol an `Upgrade` value offers (`websocket`, `foo/2`) is one of `allowed`.
fn upgrade_allowed(offer: &[u8], allowed: &[String]) -> bool {
    let mut protocols = super::fields::list_items(offer).peekable();
    protocols.peek().is_some()
        && protocols.all(|p| {
            let name = p.split(|&b| b == b'/').next().unwrap_or(p);
            allowed.iter().any(|a| name.eq_ignore_ascii_case(a.as_bytes()))
        })
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
