//! Response heads: parse one from a target, decide its framing and what the connections on
//! both sides may do after it, write the head to send the client; and the proxy's own answers.

use super::fields::{list_items, Coding, Field, Fields};
use super::writer::HeadWriter;
use super::{reason, BodyKind, HttpError, MAX_HEADERS};

/// What the proxy learned from a response head, and what may happen after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub head_len: usize,
    pub out_len: usize,
    pub status: u16,
    pub body: BodyKind,
    /// A 1xx: another head follows for the same request.
    pub informational: bool,
    /// `101 Switching Protocols` to an upgrade the proxy forwarded: the connection is a tunnel
    /// from the end of this head.
    pub switching: bool,
    /// The client connection may carry another request after this response.
    pub client_keep_alive: bool,
    /// The upstream connection may carry another request after this response.
    pub upstream_reusable: bool,
}

/// What the response framing depends on from its request.
#[derive(Clone, Copy, Debug)]
pub struct ResponseContext<'a> {
    pub request_is_head: bool,
    pub client_minor: u8,
    /// Whether the client connection may stay open as far as the request and proxy go.
    pub client_keep_alive: bool,
    /// The `Upgrade` the proxy forwarded (only protocols the config allows), when it did: a
    /// `101` may switch to these and no others (RFC 9110 §7.8).
    pub upgrade_offer: Option<&'a [u8]>,
}

/// Parses a response head at the start of `input` and writes the head to send the client.
pub fn parse_response(
    input: &[u8],
    ctx: &ResponseContext<'_>,
    out: &mut [u8],
) -> Result<Option<ResponseHead>, HttpError> {
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
    let Some(offer) = ctx.upgrade_offer.filter(|_| status == 101).or((status != 101).then_some(&[][..])) else {
        return Err(HttpError::BadResponse("101 Switching Protocols was not asked for"));
    };
    let mut fields = Fields::new();
    fields.scan(resp.headers, true)?;
    let switching = status == 101;
    if switching {
        // Two Upgrade fields are one list: a second one could name what the first does not.
        if fields.kinds[..resp.headers.len()].iter().filter(|&&k| k == Field::Upgrade).count() > 1 {
            return Err(HttpError::BadResponse("101 Switching Protocols with more than one Upgrade field"));
        }
        match fields.upgrade(resp.headers) {
            None => {
                return Err(HttpError::BadResponse("101 Switching Protocols without Connection: upgrade and Upgrade"))
            }
            Some(chosen) if !switch_offered(chosen, offer) => {
                return Err(HttpError::BadResponse("101 Switching Protocols to a protocol the client did not offer"))
            }
            Some(_) => {}
        }
    }
    let informational = status < 200 && !switching;
    if fields.transfer_encoding.is_some() && minor == 0 {
        // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
        return Err(HttpError::BadResponse("Transfer-Encoding in an HTTP/1.0 response"));
    }
    let chunked_and_length = fields.transfer_encoding.is_some() && fields.content_length.is_some();
    let body = if ctx.request_is_head || informational || switching || status == 204 || status == 304 {
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
    if body == BodyKind::Chunked && ctx.client_minor == 0 {
        // The request went out as HTTP/1.0, and its client cannot read chunked framing.
        return Err(HttpError::BadResponse("chunked answer to an HTTP/1.0 request"));
    }
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
    let mut te_written = false;
    for (i, h) in resp.headers.iter().enumerate() {
        match fields.kinds[i] {
            Field::ContentLength => w.content_length(h.value, &mut length_written),
            Field::TransferEncoding => w.transfer_encoding(fields.transfer_codings(resp.headers), &mut te_written),
            _ if fields.is_hop_by_hop(i, h.name) => {}
            _ => w.field(h.name.as_bytes(), h.value),
        }
    }
    if let (true, Some(protocol)) = (switching, fields.upgrade(resp.headers)) {
        w.field(b"Connection", b"Upgrade");
        w.field(b"Upgrade", protocol);
    } else if !informational {
        if !client_keep_alive {
            w.put(b"Connection: close\r\n");
        } else if ctx.client_minor == 0 {
            w.put(b"Connection: keep-alive\r\n");
        }
    }
    w.put(b"\r\n");
    let out_len = w.finish()?;
    Ok(Some(ResponseHead {
        head_len,
        out_len,
        status,
        body,
        informational,
        switching,
        client_keep_alive: client_keep_alive && !switching,
        upstream_reusable: upstream_reusable && !switching,
    }))
}

/// Every protocol a `101`'s `Upgrade` names is one the request offered: the same name, and the
/// same version when the answer gives one (`websocket` for `websocket`; `foo/2` for `foo/2`).
fn switch_offered(chosen: &[u8], offer: &[u8]) -> bool {
    fn split(protocol: &[u8]) -> (&[u8], Option<&[u8]>) {
        match protocol.iter().position(|&b| b == b'/') {
            Some(slash) => (&protocol[..slash], Some(&protocol[slash + 1..])),
            None => (protocol, None),
        }
    }
    let mut chosen = list_items(chosen).peekable();
    chosen.peek().is_some()
        && chosen.all(|c| {
            let (name, version) = split(c);
            list_items(offer).map(split).any(|(offered, offered_version)| {
                offered.eq_ignore_ascii_case(name)
                    && version.is_none_or(|v| offered_version.is_some_and(|o| o.eq_ignore_ascii_case(v)))
            })
        })
}

/// Writes a complete response made by the proxy itself (errors, the all-down answer): to a
/// HEAD request without its body (RFC 9110 §9.3.2), which the client would otherwise read as
/// the start of the next response. Returns the bytes written, or `None` if `out` is too small.
pub fn write_local_response(out: &mut [u8], status: u16, body: &str, keep_alive: bool, head: bool) -> Option<usize> {
    let local = LocalHead { status, content_type: "text/plain", length: body.len() as u64, fields: &[], keep_alive };
    let mut w = HeadWriter { out, len: 0, overflow: HttpError::HeadTooLarge };
    local.put(&mut w);
    if !head {
        w.put(body.as_bytes());
    }
    w.finish().ok()
}

/// The head of an answer the proxy or its admin port makes itself.
pub struct LocalHead<'a> {
    pub status: u16,
    pub content_type: &'a str,
    /// The body's length, whether or not the body follows (a HEAD request's answer has none).
    pub length: u64,
    /// More fields, each a whole `Name: value` line without its CRLF.
    pub fields: &'a [&'a str],
    pub keep_alive: bool,
}

impl LocalHead<'_> {
    /// Writes the head into `out`: the bytes written, or `None` if `out` is too small.
    pub fn write(&self, out: &mut [u8]) -> Option<usize> {
        let mut w = HeadWriter { out, len: 0, overflow: HttpError::HeadTooLarge };
        self.put(&mut w);
        w.finish().ok()
    }

    fn put(&self, w: &mut HeadWriter<'_>) {
        w.put(b"HTTP/1.1 ");
        w.status(self.status);
        w.put(b" ");
        w.put(reason(self.status).as_bytes());
        w.put(b"\r\nContent-Type: ");
        w.put(self.content_type.as_bytes());
        w.put(b"\r\nContent-Length: ");
        w.decimal(self.length);
        w.put(b"\r\n");
        for field in self.fields {
            w.put(field.as_bytes());
            w.put(b"\r\n");
        }
        w.put(if self.keep_alive { b"\r\n" } else { b"Connection: close\r\n\r\n" });
    }
}
