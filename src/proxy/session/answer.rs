//! What a session says itself: the proxy's own answers (an error, the all-down answer, a 503
//! when the proxy runs out of its own resources), and the access-log line and counters of
//! every request it ends.

use super::{leaves_client_open, Mode, Session};
use crate::http;
use crate::ids::TargetId;
use crate::observe::accesslog::{Entry, Outcome, Trace};
use crate::observe::metrics::Ended;
use crate::observe::oplog::Noisy;
use crate::proxy::exchange::{Exchange, Resp};
use crate::proxy::Ctx;
use crate::runtime::buffer::{self, Buffer};
use crate::warn_noisy;
use std::io;

impl Session {
    /// Replaces whatever the exchange was doing with a response made by the proxy. Interim
    /// (1xx) heads already queued for the client stay in front of it: each is whole.
    pub(super) fn respond_local(&mut self, cx: &mut Ctx<'_>, status: u16, body: &str, keep_alive: bool) {
        // A refused request is still in the input: its method is what the client sent.
        let head_request = match &self.mode {
            Mode::Exchange(ex) => ex.head.is_head,
            _ => self.cin.as_ref().is_some_and(|b| b.data().starts_with(b"HEAD ")),
        };
        self.answer(cx, status, body, keep_alive, head_request);
    }

    /// Queues the proxy's own answer for the client, and ends the exchange (or logs the refused
    /// request) with the body bytes it carries: none to a HEAD request (RFC 9110 §9.3.2).
    pub(super) fn answer(&mut self, cx: &mut Ctx<'_>, status: u16, body: &str, keep_alive: bool, head_request: bool) {
        let interim_queued = matches!(&self.mode, Mode::Exchange(ex) if matches!(ex.resp, Resp::Head));
        let open = keep_alive
            && !cx.draining
            && !self.close_after
            && match &self.mode {
                Mode::Exchange(ex) => leaves_client_open(ex, keep_alive),
                _ => true,
            };
        // Written before the exchange ends, so that its log line says what the client gets.
        let cout = buffer::ensure(&mut self.cout, cx.buffers);
        if !interim_queued {
            cout.clear();
        }
        let written = http::write_local_response(cout.space(), status, body, open, head_request);
        if let Some(n) = written {
            cout.fill(n);
        }
        let open = open && written.is_some();
        let body_bytes = match written {
            Some(_) if !head_request => body.len() as u64,
            _ => 0,
        };
        match &mut self.mode {
            Mode::Exchange(ex) => {
                // No byte of a response reached the client before (else there is no answer).
                ex.sent_bytes = body_bytes;
                self.end_exchange(cx, Some(status), open);
            }
            _ => {
                self.served += 1;
                self.log_refused(cx, status, body_bytes);
                self.close_after |= !open;
            }
        }
    }

    /// The proxy could not open a connection to `target` for want of its own descriptors or
    /// memory: nothing to hold against the target, and nothing another target would cure. The
    /// request gets 503, and the client may try again.
    pub(super) fn out_of_resources(&mut self, cx: &mut Ctx<'_>, target: TargetId, e: &io::Error) {
        let Mode::Exchange(ex) = &mut self.mode else {
            return;
        };
        ex.trace.push(target, Outcome::Local);
        let keep = ex.client_keep_alive;
        let (peer, url) = (self.client.peer(), cx.targets.url(target));
        warn_noisy!(
            Noisy::LocalError,
            "{peer}: cannot open a connection to target {url}: {e} (the proxy's own limit) -> 503"
        );
        self.respond_local(cx, 503, http::reason(503), keep);
    }

    /// Counts an ended exchange and writes its access-log line. `local` is the status of an
    /// answer the proxy made itself.
    pub(super) fn record(&self, cx: &mut Ctx<'_>, ex: &Exchange, local: Option<u16>) {
        let head = match ex.log_head.is_empty() {
            true => self.uout.as_ref().map_or(&[][..], Buffer::data),
            false => &ex.log_head[..],
        };
        let request_line = head.split(|&b| b == b'\r').next().unwrap_or(&[]);
        let answered = ex.answered.is_some();
        let status = local.unwrap_or(ex.status);
        cx.metrics.exchange_ended(&Ended {
            seq: ex.seq,
            trace: &ex.trace,
            answered_by: (answered && local.is_none()).then_some(ex.target),
            status,
            request_line,
            duration_ms: cx.now.saturating_sub(ex.started),
            now_ms: cx.now,
        });
        if !cx.log.enabled() {
            return;
        }
        cx.log.write(&Entry {
            client: self.peer().ip(),
            time: std::time::SystemTime::now(),
            request_line,
            status,
            body_bytes: ex.sent_bytes,
            target: answered.then(|| cx.targets.url(ex.target)),
            upstream_ms: ex.answered.map(|t| t - ex.started),
            total_ms: cx.now.saturating_sub(ex.started),
            user_agent: http::field_value(head, b"user-agent").unwrap_or(b""),
            request_id: http::field_value(head, b"x-request-id").unwrap_or(b""),
            trace: &ex.trace,
        });
    }

    /// A request refused before it became an exchange (malformed, too large, too slow).
    pub(super) fn log_refused(&self, cx: &mut Ctx<'_>, status: u16, body_bytes: u64) {
        cx.metrics.answered_locally(status);
        if !cx.log.enabled() {
            return;
        }
        cx.log.write(&Entry {
            client: self.peer().ip(),
            time: std::time::SystemTime::now(),
            request_line: b"-",
            status,
            body_bytes,
            target: None,
            upstream_ms: None,
            total_ms: 0,
            user_agent: b"",
            request_id: b"",
            trace: &Trace::default(),
        });
    }
}
