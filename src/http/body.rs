//! Message bodies: where one ends, however its bytes are split across reads.

use super::is_tchar;
use super::{BodyKind, HttpError};

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
    /// In a trailer field name: its length so far without `-` and `_`, and which forbidden
    /// names it still matches.
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
    /// Whitespace after the size or an extension: more of it, or a `;`.
    Space,
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
/// recipient unchecked. Written without `-`, as names are matched without `-` and `_`: a
/// look-alike (`Content_Length`, `Transfer--Encoding`) is refused with the name it imitates.
const FORBIDDEN_TRAILERS: [&[u8]; 11] = [
    b"contentlength",
    b"transferencoding",
    b"host",
    b"connection",
    b"keepalive",
    b"te",
    b"trailer",
    b"upgrade",
    b"proxyconnection",
    b"xforwardedfor",
    b"xforwardedproto",
];

/// The outcome of offering bytes to a `BodyFramer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes at the front of the offer that belong to the body.
    pub used: usize,
    /// The body ended within them.
    pub done: bool,
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
            (Chunk::Size { value, .. }, b) if is_ws(b) => Chunk::Ext { value, at: Ext::Space },
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
            (Chunk::TrailerStart, b) if is_tchar(b) => trailer_name(0, u16::MAX, b),
            (Chunk::TrailerStart, _) => return Err(bad("malformed trailer field")),
            (Chunk::TrailerName { len, forbidden }, b) if is_tchar(b) => trailer_name(len, forbidden, b),
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
/// Whitespace is `BWS`: only before a `;` or `=`, never before the CR.
fn extension_step(at: Ext, b: u8) -> Option<Ext> {
    Some(match at {
        Ext::Next | Ext::Name | Ext::Token if b == b'\r' => Ext::Next,
        Ext::Next | Ext::Space | Ext::Name | Ext::AfterName | Ext::Token if b == b';' => Ext::BeforeName,
        Ext::Next | Ext::Space | Ext::Token if is_ws(b) => Ext::Space,
        Ext::Name | Ext::AfterName if is_ws(b) => Ext::AfterName,
        Ext::Name | Ext::AfterName if b == b'=' => Ext::BeforeValue,
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

/// A trailer field name after byte `b`: `-` and `_` are passed over.
fn trailer_name(len: u8, forbidden: u16, b: u8) -> Chunk {
    if b == b'-' || b == b'_' {
        return Chunk::TrailerName { len, forbidden };
    }
    Chunk::TrailerName { len: len.saturating_add(1), forbidden: narrow_forbidden(forbidden, len, b) }
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
