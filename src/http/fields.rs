//! Header fields: what each one is to the proxy, the framing facts of a header block, and the
//! small grammars (lists, Content-Length, Host) the parsers share.

use super::{HttpError, MAX_HEADERS};

/// What one header field is to the proxy, decided once from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Field {
    /// End to end: forwarded unless the `Connection` field names it.
    Other,
    ContentLength,
    TransferEncoding,
    Host,
    Connection,
    Expect,
    XForwardedFor,
    XForwardedProto,
    /// Kept when well formed, replaced otherwise: one per request, written by the proxy.
    RequestId,
    /// Hop-by-hop; forwarded only with a protocol switch the proxy agreed to tunnel.
    Upgrade,
    /// Describes one connection only and is never forwarded (RFC 9110 §7.6.1).
    HopByHop,
    /// One of the fields above spelled with `_` for `-` (`Content_Length`), or a framing field
    /// with other separators (`Transfer---Encoding`). The proxy does not act on it, but a
    /// server behind a CGI-style gateway reads `Content_Length` as the field it imitates
    /// (`HTTP_CONTENT_LENGTH`), and one that folds separators reads the framing ones so: it is
    /// never forwarded, as nginx drops names with underscores.
    LookAlike,
}

impl Field {
    pub(super) fn of(name: &str) -> Field {
        match Field::named(name.len(), |known| name.eq_ignore_ascii_case(known)) {
            Field::Other if imitates_a_known_field(name) => Field::LookAlike,
            field => field,
        }
    }

    /// The field whose name is `len` bytes long and matches by `is`.
    fn named(len: usize, is: impl Fn(&str) -> bool) -> Field {
        match len {
            2 if is("te") => Field::HopByHop,
            4 if is("host") => Field::Host,
            6 if is("expect") => Field::Expect,
            7 if is("upgrade") => Field::Upgrade,
            7 if is("trailer") => Field::HopByHop,
            10 if is("connection") => Field::Connection,
            10 if is("keep-alive") => Field::HopByHop,
            12 if is("x-request-id") => Field::RequestId,
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
                | Field::RequestId
        )
    }
}

/// The framing fields, lower case, without `-`: a name that reads as one of them once its `-`
/// and `_` are gone, but is not spelled as it, is a look-alike however its separators go.
const FRAMING: [&[u8]; 2] = [b"contentlength", b"transferencoding"];

/// Whether `name` imitates a field the proxy acts on: any of them but `Expect` spelled with
/// `_` for `-` (`X_Forwarded_For`, which CGI-style servers read as the real one), or a framing
/// field with other separators (`Transfer---Encoding`, `Content-Length_`, `contentlength`).
/// Other spellings (`X-RequestId`) are other fields. Called only for names that are none of
/// the known fields as spelled; bounded at 17 bytes without separators.
fn imitates_a_known_field(name: &str) -> bool {
    if name.bytes().any(|b| b == b'_') {
        let alias = |known: &str| {
            name.bytes().zip(known.bytes()).all(|(a, b)| a.eq_ignore_ascii_case(&b) || (a == b'_' && b == b'-'))
        };
        if !matches!(Field::named(name.len(), alias), Field::Other | Field::Expect) {
            return true;
        }
    }
    let mut squashed = [0u8; 16];
    let mut len = 0;
    for b in name.bytes() {
        if b == b'-' || b == b'_' {
            continue;
        }
        if len == squashed.len() {
            return false;
        }
        squashed[len] = b.to_ascii_lowercase();
        len += 1;
    }
    FRAMING.contains(&&squashed[..len])
}

/// Most field names one message's `Connection` fields may list besides `close` and `keep-alive`.
const MAX_CONNECTION_OPTIONS: usize = 8;

/// `uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2): a reg-name or an IP literal.
/// The bytes of a `reg-name` (RFC 3986 §3.2.2): unreserved, sub-delims and `%`.
const REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'.' | b'_' | b'~' | b'%')
            || matches!(c, b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=');
        b += 1;
    }
    table
};

/// A request id worth keeping: 1 to 200 bytes of letters, digits and `-_.:+/=@`, as the ids
/// Heroku, AWS and tracing systems send are.
pub(super) fn valid_request_id(value: &[u8]) -> bool {
    (1..=200).contains(&value.len())
        && value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'+' | b'/' | b'=' | b'@'))
}

pub(super) fn valid_host(value: &[u8]) -> bool {
    let value = trim(value);
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(close) = value.iter().position(|&b| b == b']') else { return false };
        let literal = &value[1..close];
        if literal.is_empty() || !literal.iter().all(|b| b.is_ascii_hexdigit() || b":.".contains(b)) {
            return false;
        }
        (&value[1..close], &value[close + 1..])
    } else {
        // One table lookup a byte: the Host is checked on every request.
        let name_len = value.iter().position(|&b| !REG_NAME[usize::from(b)]).unwrap_or(value.len());
        let (host, port) = value.split_at(name_len);
        if host.is_empty() || port.first().is_some_and(|&b| b != b':') {
            return false;
        }
        (host, port)
    };
    let port_ok = port.is_empty() || (port[0] == b':' && port.len() <= 6 && port[1..].iter().all(u8::is_ascii_digit));
    !host.is_empty() && port_ok
}

#[derive(Clone, Copy)]
pub(super) enum Coding {
    Chunked,
    NotChunkedLast,
    Unknown,
}

/// The framing-relevant facts of one header block, and what each field is.
pub(super) struct Fields<'b> {
    pub(super) kinds: [Field; MAX_HEADERS],
    /// Field names the `Connection` fields list, besides `close` and `keep-alive`: those fields
    /// are hop-by-hop too, unless `Field::immune_to_connection` says otherwise.
    pub(super) options: [&'b [u8]; MAX_CONNECTION_OPTIONS],
    pub(super) option_count: usize,
    pub(super) content_length: Option<u64>,
    pub(super) transfer_encoding: Option<Coding>,
    pub(super) host_count: usize,
    pub(super) close: bool,
    pub(super) keep_alive: bool,
    pub(super) expect_continue: bool,
    /// `Connection` lists `upgrade`.
    pub(super) upgrade: bool,
}

impl<'b> Fields<'b> {
    #[inline]
    pub(super) fn new() -> Self {
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
            upgrade: false,
        }
    }

    pub(super) fn scan(&mut self, headers: &[httparse::Header<'b>], response: bool) -> Result<(), HttpError> {
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
                        } else if token.eq_ignore_ascii_case(b"upgrade") {
                            f.upgrade = true;
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

    /// Every transfer coding the message's Transfer-Encoding fields list, in order, across
    /// fields, without empty list items.
    pub(super) fn transfer_codings<'h>(
        &'h self,
        headers: &'h [httparse::Header<'b>],
    ) -> impl Iterator<Item = &'b [u8]> + 'h {
        headers
            .iter()
            .enumerate()
            .filter(|(i, _)| self.kinds[*i] == Field::TransferEncoding)
            .flat_map(|(_, h)| list_items(h.value))
    }

    /// The first `Upgrade` field's value, when `Connection` lists `upgrade` too.
    pub(super) fn upgrade<'h>(&self, headers: &'h [httparse::Header<'b>]) -> Option<&'b [u8]> {
        if !self.upgrade {
            return None;
        }
        headers.iter().enumerate().find(|(i, _)| self.kinds[*i] == Field::Upgrade).map(|(_, h)| trim(h.value))
    }

    /// Whether header `i`, named `name`, stays on this side of the proxy.
    pub(super) fn is_hop_by_hop(&self, i: usize, name: &str) -> bool {
        match self.kinds[i] {
            Field::HopByHop | Field::Connection | Field::LookAlike | Field::Upgrade => true,
            kind if kind.immune_to_connection() => false,
            _ => self.options[..self.option_count].iter().any(|option| option.eq_ignore_ascii_case(name.as_bytes())),
        }
    }
}

pub(super) fn classify_coding(coding: &[u8]) -> Coding {
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
pub(super) fn parse_content_length(value: &[u8]) -> Option<u64> {
    let digits = trim(value);
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// The non-empty, trimmed items of a comma-separated field value.
pub(super) fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim).filter(|item| !item.is_empty())
}

pub(super) fn trim(value: &[u8]) -> &[u8] {
    let is_ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ws(b)).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !is_ws(b)).map_or(start, |i| i + 1);
    &value[start..end]
}
