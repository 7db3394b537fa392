//! The access log: one line per request in common log format, plus what no peer logs, the
//! failover trace: the target that answered, how many attempts it took, the upstream time, and
//! for a retried request every target tried and why each failed (`tried=t3:conn_refused,t4:ok`).
//!
//! Lines are formatted on the reactor thread (only when the log is on) into a batch buffer, and
//! each loop pass hands its batch to a helper thread that writes it, so a slow disk or a full
//! pipe never stalls the proxy. Batches go back to the reactor empty once written: formatting a
//! line allocates nothing. If the writer falls behind, a batch is dropped and its lines counted
//! rather than waited for. SIGUSR1 reopens the file (`reopen`), for log rotation.

use super::oplog::{self, LogCounters};
use super::timefmt;
use crate::config::{LogDestination as Destination, LogFormat};
use crate::health::Failure;
use crate::ids::TargetId;
use log::{error, warn};
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::SystemTime;

/// How one attempt at a target ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed(Failure),
    /// A pooled connection the target had closed while idle; not the target's fault.
    Stale,
    /// The proxy ran out of its own descriptors or memory; not the target's fault either.
    Local,
    BadResponse,
}

/// Why an attempt failed, as the trace, the metrics and the status page name it.
pub const REASONS: [&str; 9] =
    ["conn_refused", "conn_error", "conn_timeout", "unresolved", "reset", "eof", "timeout", "bad_response", "stale"];

impl Outcome {
    /// Its place in `REASONS`; `None` for success (a failed probe is counted as a probe).
    pub fn reason(self) -> Option<usize> {
        match self {
            Outcome::Ok | Outcome::Local | Outcome::Failed(Failure::Probe(_)) => None,
            other => REASONS.iter().position(|&r| r == other.name()),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Stale => "stale",
            Outcome::Local => "local",
            Outcome::BadResponse => "bad_response",
            Outcome::Failed(f) => match f {
                Failure::Connect(io::ErrorKind::ConnectionRefused) => "conn_refused",
                Failure::Connect(_) => "conn_error",
                Failure::ConnectTimeout => "conn_timeout",
                Failure::Unresolved => "unresolved",
                Failure::Reset(_) => "reset",
                Failure::Eof => "eof",
                Failure::ResponseTimeout => "timeout",
                Failure::Probe(_) => "probe",
            },
        }
    }
}

/// The attempts of one request, on the stack; past `CAP` only the count grows.
#[derive(Clone, Copy, Debug)]
pub struct Trace {
    items: [(TargetId, Outcome); Trace::CAP],
    len: usize,
}

impl Default for Trace {
    fn default() -> Trace {
        Trace { items: [(TargetId::first(0), Outcome::Ok); Trace::CAP], len: 0 }
    }
}

impl Trace {
    const CAP: usize = 8;

    pub fn push(&mut self, target: TargetId, outcome: Outcome) {
        if self.len < Trace::CAP {
            self.items[self.len] = (target, outcome);
        }
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Changes how the latest attempt ended (a response that broke after its head).
    pub fn set_last(&mut self, outcome: Outcome) {
        if let Some(last) = self.len.checked_sub(1).filter(|&i| i < Trace::CAP) {
            self.items[last].1 = outcome;
        }
    }

    /// The attempts recorded, in order (the first `CAP` of them).
    pub fn items(&self) -> &[(TargetId, Outcome)] {
        &self.items[..self.len.min(Trace::CAP)]
    }

    /// More than one attempt, or one that failed: the request is worth a line in a failover feed.
    pub fn retried(&self) -> bool {
        self.len > 1 || self.items[..self.len.min(1)].iter().any(|(_, o)| *o != Outcome::Ok)
    }
}

/// Everything one access-log line says.
pub struct Entry<'a> {
    pub client: IpAddr,
    pub time: SystemTime,
    /// The request line as forwarded, without CRLF.
    pub request_line: &'a [u8],
    /// 0 when no response head was sent.
    pub status: u16,
    pub body_bytes: u64,
    /// The URL of the target that answered.
    pub target: Option<&'a str>,
    pub upstream_ms: Option<u64>,
    /// From the request head to the end of the response.
    pub total_ms: u64,
    /// The `User-Agent` and `X-Request-Id` as forwarded; empty when there was none.
    pub user_agent: &'a [u8],
    pub request_id: &'a [u8],
    pub trace: &'a Trace,
}

/// Appends one line (with its newline) to `out`, in `format`.
pub fn format(e: &Entry<'_>, format: LogFormat, out: &mut Vec<u8>) {
    match format {
        LogFormat::Common => common(e, out),
        LogFormat::Json => json(e, out),
    }
}

/// A common-log field's bytes, escaped as nginx escapes them: `"`, `\\`, control bytes and every
/// byte outside printable ASCII become `\xHH`. So a field can never end its quotes early or
/// split the line, the file stays ASCII (valid UTF-8 whatever the client sent), and no
/// invisible or reordering character (U+0085, U+2028, U+202E) reaches a terminal or a parser.
fn escaped(bytes: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b == b'"' || b == b'\\' || !(b' '..=b'~').contains(&b) {
            out.extend_from_slice(&[b'\\', b'x', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        } else {
            out.push(b);
        }
    }
}

/// Common log format, `"user agent"` as the combined format has it, then `key=value` fields.
fn common(e: &Entry<'_>, out: &mut Vec<u8>) {
    let _ = write!(out, "{} - - [", e.client);
    timefmt::clf(e.time, out);
    out.extend_from_slice(b"] \"");
    escaped(e.request_line, out);
    out.extend_from_slice(b"\" ");
    match e.status {
        0 => out.push(b'-'),
        s => {
            let _ = write!(out, "{s}");
        }
    }
    let _ = write!(out, " {} \"", e.body_bytes);
    escaped(if e.user_agent.is_empty() { b"-" } else { e.user_agent }, out);
    out.extend_from_slice(b"\" target=");
    escaped(e.target.unwrap_or("-").as_bytes(), out);
    let _ = write!(out, " attempts={}", e.trace.len());
    match e.upstream_ms {
        Some(ms) => {
            let _ = write!(out, " upstream_ms={ms}");
        }
        None => out.extend_from_slice(b" upstream_ms=-"),
    }
    let _ = write!(out, " total_ms={} request_id=", e.total_ms);
    escaped(if e.request_id.is_empty() { b"-" } else { e.request_id }, out);
    if e.trace.retried() {
        out.extend_from_slice(b" tried=");
        for (i, (target, outcome)) in e.trace.items[..e.trace.len.min(Trace::CAP)].iter().enumerate() {
            let _ = write!(out, "{}t{}:{}", if i > 0 { "," } else { "" }, target.slot() + 1, outcome.name());
        }
        if e.trace.len > Trace::CAP {
            let _ = write!(out, ",+{}", e.trace.len - Trace::CAP);
        }
    }
    out.push(b'\n');
}

/// One JSON object per line, as Caddy and Traefik write.
fn json(e: &Entry<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"time\":\"");
    timefmt::iso(e.time, false, out);
    let _ = write!(out, "\",\"client\":\"{}\",\"request\":", e.client);
    json_string(e.request_line, out);
    let _ = write!(out, ",\"status\":{},\"bytes\":{},\"user_agent\":", e.status, e.body_bytes);
    json_string(e.user_agent, out);
    out.extend_from_slice(b",\"request_id\":");
    json_string(e.request_id, out);
    out.extend_from_slice(b",\"target\":");
    match e.target {
        Some(url) => json_string(url.as_bytes(), out),
        None => out.extend_from_slice(b"null"),
    }
    let _ = write!(out, ",\"attempts\":{},\"upstream_ms\":", e.trace.len());
    match e.upstream_ms {
        Some(ms) => {
            let _ = write!(out, "{ms}");
        }
        None => out.extend_from_slice(b"null"),
    }
    let _ = write!(out, ",\"total_ms\":{},\"tried\":[", e.total_ms);
    if e.trace.retried() {
        for (i, (target, outcome)) in e.trace.items().iter().enumerate() {
            let comma = if i > 0 { "," } else { "" };
            let _ = write!(out, "{comma}{{\"target\":\"t{}\",\"outcome\":\"{}\"}}", target.slot() + 1, outcome.name());
        }
    }
    out.extend_from_slice(b"]}\n");
}

/// `bytes` as a JSON string: UTF-8 kept, invalid bytes replaced, quotes, controls and the
/// characters that move or hide text escaped.
fn json_string(bytes: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                c if invisible(c) => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => {
                    let mut utf8 = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                }
            }
        }
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{fffd}".as_bytes());
        }
    }
    out.push(b'"');
}

/// Characters a log reader should see as escapes, never as themselves: C0 and C1 controls,
/// DEL, the line and paragraph separators, and the bidirectional overrides and isolates.
fn invisible(c: char) -> bool {
    matches!(c, '\0'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The access log's counters, every worker's writer together.
pub static COUNTERS: LogCounters = LogCounters::new();

/// What the reactor hands the writer thread.
enum Message {
    Lines(Vec<u8>),
    Reopen,
}

/// The reactor's end: the batch being filled, and the channels to and from the writer.
pub struct AccessLog {
    to_writer: Option<SyncSender<Message>>,
    /// Written batches coming back, emptied, for reuse.
    returned: Option<Receiver<Vec<u8>>>,
    /// Disconnects when the writer thread ends, so that `drop` can wait for the last lines.
    finished: Option<Receiver<()>>,
    batch: Vec<u8>,
    /// A free batch taken back from the writer but not used yet.
    spare: Option<Vec<u8>>,
    dropped: u64,
    format: LogFormat,
}

/// Batches that may wait for the writer.
const BACKLOG: usize = 64;
/// Batches in circulation between the loop and the writer.
const BATCHES: usize = 8;
/// A batch is handed over early once it holds this much.
const BATCH: usize = 64 * 1024;
/// Room for a batch: `BATCH` and the longest line (a request line is at most 8 KiB of URI).
const SPARE: usize = BATCH + 16 * 1024;
/// While the writer is behind, lines gather in the batch up to this size; beyond it they are
/// dropped and counted, and the reactor never waits.
const MOST: usize = 4 << 20;

impl AccessLog {
    pub fn off() -> AccessLog {
        AccessLog {
            to_writer: None,
            returned: None,
            finished: None,
            batch: Vec::new(),
            spare: None,
            dropped: 0,
            format: LogFormat::Common,
        }
    }

    /// Opens the destination and starts the writer thread.
    pub fn start(dest: &Destination, format: LogFormat) -> io::Result<AccessLog> {
        let sink = match dest {
            Destination::Off => return Ok(AccessLog::off()),
            Destination::Stdout => Sink::Stdout,
            Destination::File(path) => Sink::File(open(path)?, path.clone()),
        };
        let (to_writer, inbox) = sync_channel(BACKLOG);
        let (give_back, returned) = sync_channel(BACKLOG);
        for _ in 1..BATCHES {
            // Free batches wait where the writer returns them: nothing is allocated later.
            let _ = give_back.try_send(Vec::with_capacity(SPARE));
        }
        let (done, finished) = sync_channel(0);
        std::thread::Builder::new().name("access-log".into()).spawn(move || {
            write_lines(inbox, give_back, sink);
            drop(done);
        })?;
        Ok(AccessLog {
            to_writer: Some(to_writer),
            returned: Some(returned),
            finished: Some(finished),
            batch: Vec::with_capacity(SPARE),
            spare: None,
            dropped: 0,
            format,
        })
    }

    /// Lines from now on are written in `format` (a reload may change it).
    pub fn set_format(&mut self, format: LogFormat) {
        self.format = format;
    }

    pub fn enabled(&self) -> bool {
        self.to_writer.is_some()
    }

    /// Formats one line into the current batch.
    pub fn write(&mut self, entry: &Entry<'_>) {
        if !self.enabled() {
            return;
        }
        if self.batch.len() >= MOST {
            self.dropped += 1;
            COUNTERS.dropped.fetch_add(1, Relaxed);
            if self.dropped.is_power_of_two() {
                let dropped = oplog::count(self.dropped, "line", "lines");
                warn!("access log writer is behind: {dropped} dropped so far");
            }
            return;
        }
        format(entry, self.format, &mut self.batch);
        if self.batch.len() >= BATCH {
            self.flush();
        }
    }

    /// Hands the current batch to the writer, if it can take one; the reactor calls this once
    /// per loop pass. A batch the writer cannot take yet keeps gathering lines.
    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let Some(to_writer) = self.to_writer.as_ref() else {
            return;
        };
        // A fixed set of batches circulates; with none free, lines keep gathering here.
        let Some(spare) = self.spare.take().or_else(|| self.returned.as_ref()?.try_recv().ok()) else {
            return;
        };
        let full = std::mem::replace(&mut self.batch, spare);
        match to_writer.try_send(Message::Lines(full)) {
            Ok(()) => {}
            Err(TrySendError::Full(Message::Lines(full))) => {
                self.spare = Some(std::mem::replace(&mut self.batch, full))
            }
            Err(TrySendError::Full(Message::Reopen)) => {}
            Err(TrySendError::Disconnected(_)) => self.to_writer = None,
        }
    }

    /// Replaces this log with `next` (a reload changed the destination). The lines gathered
    /// so far still go to the old destination, whose writer finishes on its own: the loop
    /// never waits for it.
    pub fn replace(&mut self, next: AccessLog) {
        let mut old = std::mem::replace(self, next);
        old.finished = None;
    }

    /// Has the writer reopen a log file (after rotation); nothing for stdout.
    pub fn reopen(&mut self) {
        self.flush();
        if let Some(to_writer) = self.to_writer.as_ref() {
            if to_writer.try_send(Message::Reopen).is_err() {
                warn!("access log writer is behind: the reopen is skipped");
            }
        }
    }
}

impl Drop for AccessLog {
    /// The last lines of a drain go out before the process exits: hand them over, close the
    /// channel, and give the writer a bounded while to finish.
    fn drop(&mut self) {
        if let Some(to_writer) = self.to_writer.take().filter(|_| !self.batch.is_empty()) {
            if let Err(TrySendError::Full(Message::Lines(lost)) | TrySendError::Disconnected(Message::Lines(lost))) =
                to_writer.try_send(Message::Lines(std::mem::take(&mut self.batch)))
            {
                COUNTERS.dropped.fetch_add(lost.iter().filter(|&&b| b == b'\n').count() as u64, Relaxed);
            }
        }
        self.to_writer = None;
        if let Some(finished) = self.finished.take() {
            let _ = finished.recv_timeout(std::time::Duration::from_secs(2));
        }
    }
}

enum Sink {
    Stdout,
    File(std::fs::File, std::path::PathBuf),
}

fn open(path: &std::path::Path) -> io::Result<std::fs::File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The writer thread: writes each batch, hands it back for reuse, reopens the file when told.
/// A failed write (a reader gone, a full disk) loses that batch's lines, counted, and the
/// writer goes on with the next: the destination may come back.
fn write_lines(inbox: Receiver<Message>, give_back: SyncSender<Vec<u8>>, mut sink: Sink) {
    let mut failing = false;
    for message in inbox {
        match message {
            Message::Lines(mut batch) => {
                let written = match &mut sink {
                    Sink::Stdout => oplog::write_stdout(&batch),
                    Sink::File(file, _) => file.write_all(&batch),
                };
                match written {
                    Ok(()) => failing = false,
                    Err(e) => {
                        let lines = batch.iter().filter(|&&b| b == b'\n').count() as u64;
                        COUNTERS.write_failed(lines);
                        if !failing {
                            error!("access log write failed: {e}; its lines are dropped and counted until writes succeed again");
                        }
                        failing = true;
                    }
                }
                batch.clear();
                let _ = give_back.try_send(batch);
            }
            Message::Reopen => {
                if let Sink::File(file, path) = &mut sink {
                    match open(path) {
                        Ok(reopened) => *file = reopened,
                        Err(e) => error!("access log {}: cannot reopen: {e}", path.display()),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn entry<'a>(trace: &'a Trace, status: u16, target: Option<&'a str>) -> Entry<'a> {
        Entry {
            client: "127.0.0.1".parse().expect("ip"),
            time: UNIX_EPOCH + Duration::from_secs(1_795_487_556),
            request_line: b"GET /a HTTP/1.1",
            status,
            body_bytes: 13,
            target,
            upstream_ms: target.map(|_| 3),
            total_ms: 4,
            user_agent: b"curl/8.0",
            request_id: b"abc-1",
            trace,
        }
    }

    fn line(e: &Entry<'_>, f: LogFormat) -> String {
        let mut out = Vec::new();
        format(e, f, &mut out);
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn a_retried_request_names_every_target_tried() {
        let mut trace = Trace::default();
        trace.push(TargetId::first(2), Outcome::Failed(Failure::Connect(io::ErrorKind::ConnectionRefused)));
        trace.push(TargetId::first(3), Outcome::Ok);
        assert_eq!(
            line(&entry(&trace, 200, Some("http://127.0.0.1:9004/")), LogFormat::Common),
            "127.0.0.1 - - [24/Nov/2026:02:32:36 +0000] \"GET /a HTTP/1.1\" 200 13 \"curl/8.0\" \
             target=http://127.0.0.1:9004/ attempts=2 upstream_ms=3 total_ms=4 request_id=abc-1 \
             tried=t3:conn_refused,t4:ok\n"
        );
    }

    #[test]
    fn a_plain_request_has_no_trace_and_a_refused_one_has_no_target() {
        let mut ok = Trace::default();
        ok.push(TargetId::first(0), Outcome::Ok);
        assert!(line(&entry(&ok, 200, Some("t")), LogFormat::Common).ends_with("total_ms=4 request_id=abc-1\n"));
        let refused = line(&entry(&Trace::default(), 400, None), LogFormat::Common);
        assert!(refused.contains("400 13 \"curl/8.0\" target=- attempts=0 upstream_ms=-"), "{refused}");
    }

    #[test]
    fn every_common_log_field_escapes_what_could_break_its_quotes_or_its_encoding() {
        let trace = Trace::default();
        let mut e = entry(&trace, 200, Some("http://h/\"x"));
        e.request_line = b"GET /a\"b\\ HTTP/1.1";
        // A trailing backslash, raw obs-text, NEL, LINE SEPARATOR and RIGHT-TO-LEFT OVERRIDE.
        e.user_agent = "agent\\ \u{85}\u{2028}\u{202e}".as_bytes();
        e.request_id = b"id\xff\x01";
        let text = line(&e, LogFormat::Common);
        assert!(text.is_ascii() && text.lines().count() == 1, "{text}");
        assert!(text.contains("\"GET /a\\x22b\\x5C HTTP/1.1\""), "{text}");
        assert!(
            text.contains("\"agent\\x5C \\xC2\\x85\\xE2\\x80\\xA8\\xE2\\x80\\xAE\" target=http://h/\\x22x "),
            "{text}"
        );
        assert!(text.contains("request_id=id\\xFF\\x01\n"), "{text}");
        // A combined-log parser's view: two quoted fields, each ending at its own quote.
        let quoted: Vec<&str> = text.split('"').collect();
        assert_eq!(quoted.len(), 5, "{text}");
        assert_eq!(quoted[3], "agent\\x5C \\xC2\\x85\\xE2\\x80\\xA8\\xE2\\x80\\xAE");
    }

    #[test]
    fn the_json_format_escapes_characters_that_move_or_hide_text() {
        let trace = Trace::default();
        let mut e = entry(&trace, 200, None);
        e.user_agent = "a\u{85}b\u{2028}c\u{202e}d\u{2066}e".as_bytes();
        let text = line(&e, LogFormat::Json);
        assert!(text.contains(r#""user_agent":"a\u0085b\u2028c\u202ed\u2066e""#), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["user_agent"], "a\u{85}b\u{2028}c\u{202e}d\u{2066}e");
    }

    #[test]
    fn the_json_format_is_one_valid_object_per_line() {
        let mut trace = Trace::default();
        trace.push(TargetId::first(0), Outcome::Failed(Failure::Eof));
        trace.push(TargetId::first(1), Outcome::Ok);
        let mut e = entry(&trace, 200, Some("http://h/"));
        e.user_agent = b"evil \"agent\"\x01\xff";
        let text = line(&e, LogFormat::Json);
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["time"], "2026-11-24T02:32:36Z");
        assert_eq!(v["status"], 200);
        assert_eq!(v["user_agent"], "evil \"agent\"\u{1}\u{fffd}");
        assert_eq!(v["tried"][0]["outcome"], "eof");
        assert_eq!(v["target"], "http://h/");
        assert_eq!(v["total_ms"], 4);
    }
}
