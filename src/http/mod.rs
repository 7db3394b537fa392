//! HTTP/1.1 framing, pure: bytes in, a verdict and rewritten bytes out. No sockets, no clocks.
//!
//! - `parse_request` / `parse_response` read one message head with httparse, decide how its body
//!   is framed (RFC 9112 §6), and write the head to forward into a caller's slice with the
//!   hop-by-hop fields removed and the proxy's own fields added.
//! - `BodyFramer` follows a body through any split of reads and says where it ends, so bodies
//!   stream through untouched (chunked stays chunked) and the next message is found.
//! - Every refusal is an `HttpError` that knows the status it deserves.

mod body;
mod fields;
mod request;
mod response;
mod writer;

#[cfg(test)]
mod tests;

pub use body::{BodyFramer, ChunkLimits, Progress};
pub use request::{leading_method, parse_request, Forwarding, RequestHead};
pub use response::{parse_response, write_local_response, LocalHead, ResponseContext, ResponseHead};

use std::fmt;

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

/// The reason phrase the proxy sends with a status of its own.
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

/// The value of the first field called `name` in a head the proxy wrote (one field per CRLF
/// line, after the start line), trimmed; for log lines.
pub fn field_value<'h>(head: &'h [u8], name: &[u8]) -> Option<&'h [u8]> {
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon].eq_ignore_ascii_case(name).then(|| fields::trim(&line[colon + 1..]))
    })
}

/// `tchar` (RFC 9110 §5.6.2).
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A `token`: one or more `tchar`s (a field name, a protocol name).
pub fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(is_tchar)
}
