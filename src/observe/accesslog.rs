//! The access log: one line per request in common log format, plus what no peer logs, the
//! failover trace: the target that answered, how many attempts it took, the upstream time, and
//! for a retried request every target tried and why each failed (`tried=t3:conn_refused,t4:ok`).
//!
//! Lines are formatted on the reactor thread (only when the log is on) into a batch buffer, and
//! each loop pass hands its batch to a helper thread that writes it, so a slow disk or a full
//! pipe never stalls the proxy. Batches go back to the reactor empty once written: formatting a
//! line allocates nothing. If the writer falls behind, a batch is dropped and its lines counted
//! rather than waited for. SIGUSR1 reopens the file (`reopen`), for log rotation.

use crate::balance::TargetId;
use crate::config::LogDestination as Destination;
use crate::health::Failure;
use log::{error, warn};
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::{SystemTime, UNIX_EPOCH};

/// How one attempt at a target ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed(Failure),
    /// A pooled connection the target had closed while idle; not the target's fault.
    Stale,
    BadResponse,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Stale => "stale",
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

    fn retried(&self) -> bool {
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
    pub trace: &'a Trace,
}

/// Appends one line (with its newline) to `out`.
pub fn format(e: &Entry<'_>, out: &mut Vec<u8>) {
    let _ = write!(out, "{} - - [", e.client);
    clf_time(e.time, out);
    out.extend_from_slice(b"] \"");
    out.extend(e.request_line.iter().map(|&b| if b == b'"' || b < b' ' { b'?' } else { b }));
    out.extend_from_slice(b"\" ");
    match e.status {
        0 => out.push(b'-'),
        s => {
            let _ = write!(out, "{s}");
        }
    }
    let _ = write!(out, " {} target={} attempts={}", e.body_bytes, e.target.unwrap_or("-"), e.trace.len());
    match e.upstream_ms {
        Some(ms) => {
            let _ = write!(out, " upstream_ms={ms}");
        }
        None => out.extend_from_slice(b" upstream_ms=-"),
    }
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

/// `10/Oct/2000:13:55:36 +0000` (UTC).
fn clf_time(time: SystemTime, out: &mut Vec<u8>) {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let _ = write!(
        out,
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's date algorithms.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

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
        AccessLog { to_writer: None, returned: None, finished: None, batch: Vec::new(), spare: None, dropped: 0 }
    }

    /// Opens the destination and starts the writer thread.
    pub fn start(dest: &Destination) -> io::Result<AccessLog> {
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
        })
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
            if self.dropped.is_power_of_two() {
                warn!("access log writer is behind: {} lines dropped so far", self.dropped);
            }
            return;
        }
        format(entry, &mut self.batch);
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
            let _ = to_writer.try_send(Message::Lines(std::mem::take(&mut self.batch)));
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
fn write_lines(inbox: Receiver<Message>, give_back: SyncSender<Vec<u8>>, mut sink: Sink) {
    for message in inbox {
        match message {
            Message::Lines(mut batch) => {
                let written = match &mut sink {
                    Sink::Stdout => io::stdout().lock().write_all(&batch),
                    Sink::File(file, _) => file.write_all(&batch),
                };
                if let Err(e) = written {
                    error!("access log write failed, logging stops: {e}");
                    return;
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
    use std::time::Duration;

    #[test]
    fn dates_convert_like_the_calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_781), (2026, 11, 24));
    }

    #[test]
    fn a_retried_request_names_every_target_tried() {
        let mut trace = Trace::default();
        trace.push(TargetId::first(2), Outcome::Failed(Failure::Connect(io::ErrorKind::ConnectionRefused)));
        trace.push(TargetId::first(3), Outcome::Ok);
        let mut out = Vec::new();
        format(
            &Entry {
                client: "127.0.0.1".parse().expect("ip"),
                time: UNIX_EPOCH + Duration::from_secs(1_795_487_556),
                request_line: b"GET /a HTTP/1.1",
                status: 200,
                body_bytes: 13,
                target: Some("http://127.0.0.1:9004/"),
                upstream_ms: Some(3),
                trace: &trace,
            },
            &mut out,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "127.0.0.1 - - [24/Nov/2026:02:32:36 +0000] \"GET /a HTTP/1.1\" 200 13 \
             target=http://127.0.0.1:9004/ attempts=2 upstream_ms=3 tried=t3:conn_refused,t4:ok\n"
        );
    }

    #[test]
    fn a_plain_request_has_no_trace_and_a_refused_one_has_no_target() {
        let mut ok = Trace::default();
        ok.push(TargetId::first(0), Outcome::Ok);
        let entry = |trace, status, target| Entry {
            client: "::1".parse().expect("ip"),
            time: UNIX_EPOCH,
            request_line: b"GET / HTTP/1.1",
            status,
            body_bytes: 0,
            target,
            upstream_ms: None,
            trace,
        };
        let mut out = Vec::new();
        format(&entry(&ok, 200, Some("t")), &mut out);
        assert!(String::from_utf8_lossy(&out).ends_with("200 0 target=t attempts=1 upstream_ms=-\n"));
        out.clear();
        format(&entry(&Trace::default(), 400, None), &mut out);
        assert!(String::from_utf8_lossy(&out).ends_with("400 0 target=- attempts=0 upstream_ms=-\n"));
    }
}
