//! Writing a head into a fixed slice, field by field, without allocating.

use super::fields::trim;
use super::HttpError;
use std::io::Write as _;
use std::net::IpAddr;

/// Appends to a fixed slice; the first overflow is remembered and reported by `finish`.
pub(super) struct HeadWriter<'a> {
    pub(super) out: &'a mut [u8],
    pub(super) len: usize,
    pub(super) overflow: HttpError,
}

impl HeadWriter<'_> {
    pub(super) fn put(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if end <= self.out.len() {
            self.out[self.len..end].copy_from_slice(bytes);
        }
        self.len = end;
    }

    pub(super) fn field(&mut self, name: &[u8], value: &[u8]) {
        self.put(name);
        self.put(b": ");
        self.put(value);
        self.put(b"\r\n");
    }

    /// One `Content-Length` field, however many identical ones came in (RFC 9112 §6.3), its
    /// value trimmed and without leading zeros; `written` says whether it is out already. The
    /// value is `1*DIGIT` (checked by `Fields::scan`).
    pub(super) fn content_length(&mut self, value: &[u8], written: &mut bool) {
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

    /// One `Transfer-Encoding` field listing `codings`, however many fields and empty list
    /// items they came in, with `chunked` spelled one way: no recipient can then read the
    /// framing differently from the proxy (one that reads only the first field, or compares
    /// the last item literally). `written` says whether it is out already.
    pub(super) fn transfer_encoding<'c>(&mut self, codings: impl Iterator<Item = &'c [u8]>, written: &mut bool) {
        if *written {
            return;
        }
        self.put(b"Transfer-Encoding: ");
        for (i, coding) in codings.enumerate() {
            if i > 0 {
                self.put(b", ");
            }
            self.put(if coding.eq_ignore_ascii_case(b"chunked") { b"chunked" } else { coding });
        }
        self.put(b"\r\n");
        *written = true;
    }

    pub(super) fn ip(&mut self, ip: IpAddr) {
        // IPv4 by hand: `write!` through `core::fmt` cost some 700 instructions per request.
        if let IpAddr::V4(v4) = ip {
            let mut text = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    text[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    text[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                text[len] = b'0' + octet % 10;
                len += 1;
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

    pub(super) fn status(&mut self, status: u16) {
        self.decimal(u64::from(status));
    }

    pub(super) fn decimal(&mut self, mut n: u64) {
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

    pub(super) fn finish(self) -> Result<usize, HttpError> {
        if self.len <= self.out.len() {
            Ok(self.len)
        } else {
            Err(self.overflow)
        }
    }
}
