//! One spelling for every path: the form routes match and services receive. Percent-encoded
//! unreserved characters are decoded and the hex of the others upper-cased (RFC 3986 §6.2.2),
//! repeated slashes merged (as nginx does by default), and dot segments removed (§5.2.4). What
//! could be read one way here and another way behind the proxy is refused instead: an encoded
//! `/` or `\`, an encoded NUL or control byte, a raw `\`, a malformed escape, and a `..` that
//! climbs above the root. Pure: bytes in, bytes out, no allocation.

/// Why a path is refused (400).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Not `/` first (origin-form), or `%` without two hex digits after it.
    Malformed,
    /// `%2F` or `%5C`: a separator some servers decode and others do not.
    EncodedSeparator,
    /// `%00` to `%1F` or `%7F`.
    EncodedControl,
    /// A raw `\`, which some servers take for `/`.
    Backslash,
    /// `..` above the root.
    AboveRoot,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathError::Malformed => "malformed path",
            PathError::EncodedSeparator => "an encoded / or \\ in the path",
            PathError::EncodedControl => "an encoded control byte in the path",
            PathError::Backslash => "a backslash in the path",
            PathError::AboveRoot => "a path that climbs above the root",
        })
    }
}

/// Writes the normal form of `path` (the part of a request-target before `?`) into `out`,
/// which must be at least as long: the form is never longer. Returns its length.
pub fn normalize(path: &[u8], out: &mut [u8]) -> Result<usize, PathError> {
    if path.first() != Some(&b'/') || out.len() < path.len() {
        return Err(PathError::Malformed);
    }
    // First pass: decode what may be decoded, check the rest, merge slashes.
    let mut len = 0;
    let mut i = 0;
    while i < path.len() {
        let mut b = path[i];
        i += 1;
        if b == b'%' {
            let hex = |k: usize| path.get(k).and_then(|&c| (c as char).to_digit(16));
            let (Some(hi), Some(lo)) = (hex(i), hex(i + 1)) else {
                return Err(PathError::Malformed);
            };
            let decoded = (hi * 16 + lo) as u8;
            i += 2;
            match decoded {
                b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                0..=0x1f | 0x7f => return Err(PathError::EncodedControl),
                c if unreserved(c) => b = c,
                _ => {
                    out[len..len + 3].copy_from_slice(&[b'%', upper_hex(hi), upper_hex(lo)]);
                    len += 3;
                    continue;
                }
            }
        } else if b == b'\\' {
            return Err(PathError::Backslash);
        }
        if b == b'/' && len > 0 && out[len - 1] == b'/' {
            continue;
        }
        out[len] = b;
        len += 1;
    }
    remove_dot_segments(out, len)
}

fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn upper_hex(digit: u32) -> u8 {
    b"0123456789ABCDEF"[digit as usize & 0xf]
}

/// RFC 3986 §5.2.4 in place over `buf[..len]`, which starts with `/` and has no `//`; `..`
/// above the root is an error rather than clamped, so that no server behind the proxy can
/// resolve it otherwise.
fn remove_dot_segments(buf: &mut [u8], len: usize) -> Result<usize, PathError> {
    let mut out = 0;
    let mut i = 0;
    while i < len {
        // A segment: after its `/`, up to the next `/` or the end.
        let start = i + 1;
        let end = buf[start..len].iter().position(|&b| b == b'/').map_or(len, |p| start + p);
        let last = end == len;
        match &buf[start..end] {
            b"." => {
                if last {
                    buf[out] = b'/';
                    out += 1;
                }
            }
            b".." => {
                if out == 0 {
                    return Err(PathError::AboveRoot);
                }
                // Back to the `/` before the last segment written.
                out = buf[..out].iter().rposition(|&b| b == b'/').unwrap_or(0);
                if last {
                    buf[out] = b'/';
                    out += 1;
                }
            }
            _ => {
                buf.copy_within(i..end, out);
                out += end - i;
            }
        }
        i = end;
    }
    if out == 0 {
        buf[0] = b'/';
        out = 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, PathError> {
        let mut out = vec![0u8; path.len()];
        let n = normalize(path.as_bytes(), &mut out)?;
        Ok(String::from_utf8_lossy(&out[..n]).into_owned())
    }

    #[test]
    fn every_spelling_of_a_path_has_one_form() {
        for (spelling, form) in [
            ("/", "/"),
            ("/internal", "/internal"),
            ("/%69nternal", "/internal"),
            ("/./internal", "/internal"),
            ("//internal", "/internal"),
            ("/x/../internal", "/internal"),
            ("/%2e/internal", "/internal"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/./b/../c/", "/a/c/"),
            ("/a///b", "/a/b"),
            ("/a/%7Euser", "/a/~user"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/..a/b..", "/..a/b.."),
            ("/.", "/"),
            ("/a/..", "/"),
        ] {
            assert_eq!(norm(spelling).as_deref(), Ok(form), "{spelling}");
        }
    }

    #[test]
    fn what_could_be_read_two_ways_is_refused() {
        for (spelling, why) in [
            ("/a%2Fb", PathError::EncodedSeparator),
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%5cb", PathError::EncodedSeparator),
            ("/a%00", PathError::EncodedControl),
            ("/a%0d%0a", PathError::EncodedControl),
            ("/a%7f", PathError::EncodedControl),
            ("/a\\b", PathError::Backslash),
            ("/a%zz", PathError::Malformed),
            ("/a%4", PathError::Malformed),
            ("a/b", PathError::Malformed),
            ("/..", PathError::AboveRoot),
            ("/a/../../b", PathError::AboveRoot),
            ("/%2e%2e/", PathError::AboveRoot),
            ("/%2E%2E/x/../internal", PathError::AboveRoot),
        ] {
            assert_eq!(norm(spelling), Err(why), "{spelling}");
        }
    }

    #[test]
    fn the_form_is_its_own_form() {
        for spelling in ["/a/./b/../c", "/%41%42/c//d/", "/x/%2e%2e/y", "/"] {
            let once = norm(spelling).expect("valid");
            assert_eq!(norm(&once).as_deref(), Ok(once.as_str()), "{spelling}");
        }
    }
}
