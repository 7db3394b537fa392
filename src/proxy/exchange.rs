//! One request from its head to the last byte of its response: what was sent where, what came
//! back, and every attempt made. The boxes exchanges live in are pooled, so a request allocates
//! nothing.

use crate::http::{BodyFramer, ChunkLimits, RequestHead};
use crate::ids::{TargetId, TargetSet};
use crate::observe::accesslog::Trace;
use crate::runtime::buffer::Spares;

/// Where the response stands.
pub enum Resp {
    /// No final response head yet (1xx heads may have passed).
    Head,
    Body(BodyFramer),
}

pub struct Exchange {
    pub seq: u64,
    /// The `hash` policy's key for this request (0 for the other policies).
    pub key: u64,
    /// When the head arrived (wheel ms).
    pub started: u64,
    /// When the final response head arrived.
    pub answered: Option<u64>,
    pub status: u16,
    /// Response body bytes sent to the client.
    pub sent_bytes: u64,
    pub trace: Trace,
    pub head: RequestHead,
    pub req_body: BodyFramer,
    /// Bytes at the front of `cin` that belong to this request's body.
    pub body_ready: usize,
    /// Of those, bytes already written upstream (held for a retry).
    pub body_sent: usize,
    /// Bytes of `uout` (the rewritten head) already written upstream.
    pub head_sent: usize,
    /// Every byte of the request sent so far is still held.
    pub replayable: bool,
    pub tried: TargetSet,
    pub target: TargetId,
    pub attempts: usize,
    /// Attempts that ended in a response timeout.
    pub timeouts: u8,
    /// Writing the request to the target failed: nothing more is sent on this attempt. In a
    /// tunnel: the client's close was passed on (our write side to the target is shut).
    pub upload_cut: bool,
    pub resp: Resp,
    /// Bytes at the front of `uin` that belong to the response body.
    pub resp_ready: usize,
    /// Some byte of a final response reached the client: no retry is possible any more.
    pub resp_started: bool,
    /// Raw request body bytes seen so far, for `max_body_size`; in a tunnel, the bytes sent to
    /// the target (and `sent_bytes` those sent to the client).
    pub body_total: u64,
    pub client_keep_alive: bool,
    pub upstream_reusable: bool,
    /// The final response head came before the whole request went out: whatever the target
    /// made of the rest, its connection is not trusted with another request.
    pub answered_early: bool,
    pub upstream_eof: bool,
    /// In a tunnel: the target's close was passed on to the client (our write side is shut).
    pub client_shut: bool,
    /// After the exchange ended: bytes of its unfinished body that may still be dropped before
    /// the connection is closed instead.
    pub discard_budget: u64,
    /// In a tunnel: what its access-log line needs of the request head (`log_head`), kept
    /// instead of the head's buffer. Empty otherwise.
    pub log_head: Vec<u8>,
}

impl Exchange {
    /// A request whose head has just been parsed.
    pub fn new(seq: u64, now: u64, head: RequestHead, limits: ChunkLimits) -> Exchange {
        Exchange {
            seq,
            key: 0,
            started: now,
            answered: None,
            status: 0,
            sent_bytes: 0,
            trace: Trace::default(),
            head,
            req_body: BodyFramer::with_limits(head.body, limits),
            body_ready: 0,
            body_sent: 0,
            head_sent: 0,
            replayable: true,
            tried: TargetSet::default(),
            target: TargetId::first(0),
            attempts: 0,
            timeouts: 0,
            upload_cut: false,
            resp: Resp::Head,
            resp_ready: 0,
            resp_started: false,
            body_total: 0,
            client_keep_alive: head.keep_alive,
            upstream_reusable: false,
            answered_early: false,
            upstream_eof: false,
            client_shut: false,
            discard_budget: 0,
            log_head: Vec::new(),
        }
    }

    /// The whole request, head and body, went to the target on this attempt.
    pub fn request_sent(&self, uout_len: usize) -> bool {
        !self.upload_cut && self.head_sent == uout_len && self.req_body.is_done() && self.body_sent == self.body_ready
    }

    /// Request body bytes at the front of `cin` that may go upstream: classified, and not part
    /// of a chunk-size line or trailer section still being checked.
    pub fn body_forwardable(&self) -> usize {
        self.body_ready.saturating_sub(self.req_body.held())
    }

    /// Response body bytes at the front of `uin` that may go to the client.
    pub fn resp_forwardable(&self) -> usize {
        match &self.resp {
            Resp::Head => 0,
            Resp::Body(framer) => self.resp_ready.saturating_sub(framer.held()),
        }
    }

    /// The request said `Expect: 100-continue` and no byte of its body has come: after a final
    /// response, the client may send the body or the next request, and nobody can tell which.
    pub fn body_withheld(&self) -> bool {
        self.head.expect_continue && self.body_total == 0 && !self.req_body.is_done()
    }

    pub fn response_complete(&self) -> bool {
        match &self.resp {
            Resp::Head => false,
            Resp::Body(framer) => {
                self.resp_ready == 0 && (framer.is_done() || (framer.until_close() && self.upstream_eof))
            }
        }
    }

    /// Gets ready to send the request again, to another target or over a fresh connection.
    pub fn rewind(&mut self) {
        self.head_sent = 0;
        self.body_sent = 0;
        self.resp = Resp::Head;
        self.resp_ready = 0;
        self.upstream_eof = false;
        self.upload_cut = false;
    }
}

/// The longest request line, and field value, a tunnel keeps for its log line.
const LOG_LINE: usize = 2048;
const LOG_FIELD: usize = 512;

/// What an access-log line needs of a request head, in the head's own form: its request line,
/// `User-Agent` and `X-Request-Id`, each cut to a bound (at most 3 KiB in all). A tunnel may
/// idle for an hour and should not hold a head-sized buffer (17 KiB) for one line.
pub fn log_head(head: &[u8]) -> Vec<u8> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or(&[]);
    let line = &line[..line.len().min(LOG_LINE)];
    let fields = ["User-Agent", "X-Request-Id"].map(|name| {
        let value = crate::http::field_value(head, name.as_bytes()).map(|v| &v[..v.len().min(LOG_FIELD)]);
        (name, value)
    });
    let size = line.len() + 4 + fields.iter().filter_map(|&(n, v)| Some(n.len() + 4 + v?.len())).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(line);
    for (name, value) in fields {
        if let Some(value) = value {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
        }
    }
    out.extend_from_slice(b"\r\n\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tunnels_log_head_keeps_what_the_line_says_and_no_more() {
        let long = format!("GET /{} HTTP/1.1", "a".repeat(5000));
        let head = format!("{long}\r\nHost: h\r\nUser-Agent: ua/1\r\nCookie: secret\r\nX-Request-Id: r-1\r\n\r\n");
        let kept = log_head(head.as_bytes());
        assert_eq!(kept.len(), kept.capacity(), "one allocation, of the right size");
        let text = String::from_utf8(kept.clone()).expect("utf8");
        assert!(text.starts_with(&long[..LOG_LINE]) && !text.contains("Cookie") && text.ends_with("\r\n\r\n"));
        assert_eq!(crate::http::field_value(&kept, b"user-agent"), Some(&b"ua/1"[..]));
        assert_eq!(crate::http::field_value(&kept, b"x-request-id"), Some(&b"r-1"[..]));
        assert_eq!(log_head(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"), b"GET / HTTP/1.1\r\n\r\n");
    }
}

/// Spare exchange boxes: a request reuses one instead of allocating.
// The boxes themselves move between sessions and the pool; unboxed, they would be copied.
#[derive(Default)]
pub struct ExchangePool(Spares<Box<Exchange>>);

impl ExchangePool {
    pub fn fill(&mut self, exchange: Exchange) -> Box<Exchange> {
        match self.0.take() {
            Some(mut spare) => {
                *spare = exchange;
                spare
            }
            None => Box::new(exchange),
        }
    }

    pub fn recycle(&mut self, exchange: Box<Exchange>) {
        self.0.give(exchange);
    }

    /// Frees the spares the last period did not need (`Spares::trim`). Returns the bytes
    /// freed.
    pub fn trim(&mut self) -> usize {
        self.0.trim() * std::mem::size_of::<Exchange>()
    }
}
