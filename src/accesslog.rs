//! The access log: one line per request in common log format, plus what no peer logs, the
//! failover trace: the target that answered, how many attempts it took, the upstream time, and
//! for a retried request every target tried and why each failed (`tried=t3:conn_refused,t4:ok`).
//!
//! Lines are formatted on the reactor thread (only when the log is on) and written by a helper
//! thread, so a slow disk or a full pipe never stalls the proxy. If the writer falls behind, a
//! line is dropped and counted rather than waited for.

use crate::config::AccessLog as Destination;
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
    items: [(u16, Outcome); Trace::CAP],
    len: usize,
}

impl Default for Trace {
    fn default() -> Trace {
        Trace { items: [(0, Outcome::Ok); Trace::CAP], len: 0 }
    }
}

impl Trace {
    const CAP: usize = 8;

    pub fn push(&mut self, target: usize, outcome: Outcome) {
        if self.len < Trace::CAP {
            self.items[self.len] = (target as u16, outcome);
        }
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
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
            let _ = write!(out, "{}t{}:{}", if i > 0 { "," } else { "" }, target + 1, outcome.name());
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

/// The sending end, held by the reactor.
pub struct AccessLog {
    lines: Option<SyncSender<Vec<u8>>>,
    dropped: u64,
}

/// Lines that may wait for the writer before new ones are dropped.
const BACKLOG: usize = 16 * 1024;

impl AccessLog {
    pub fn off() -> AccessLog {
        AccessLog { lines: None, dropped: 0 }
    }

    /// Opens the destination and starts the writer thread.
    pub fn start(dest: &Destination) -> io::Result<AccessLog> {
        let sink: Box<dyn Write + Send> = match dest {
            Destination::Off => return Ok(AccessLog::off()),
            Destination::Stdout => Box::new(io::stdout()),
            Destination::File(path) => Box::new(OpenOptions::new().create(true).append(true).open(path)?),
        };
        let (lines, inbox) = sync_channel(BACKLOG);
        std::thread::Builder::new().name("access-log".into()).spawn(move || write_lines(inbox, sink))?;
        Ok(AccessLog { lines: Some(lines), dropped: 0 })
    }

    pub fn enabled(&self) -> bool {
        self.lines.is_some()
    }

    pub fn send(&mut self, line: Vec<u8>) {
        let Some(lines) = self.lines.as_ref() else {
            return;
        };
        match lines.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped += 1;
                if self.dropped.is_power_of_two() {
                    warn!("access log writer is behind: {} lines dropped so far", self.dropped);
                }
            }
            Err(TrySendError::Disconnected(_)) => self.lines = None,
        }
    }
}

/// The writer thread: writes whatever has arrived, flushes when it has caught up.
fn write_lines(inbox: Receiver<Vec<u8>>, sink: Box<dyn Write + Send>) {
    let mut out = io::BufWriter::with_capacity(64 * 1024, sink);
    while let Ok(line) = inbox.recv() {
        let mut result = out.write_all(&line);
        while let (Ok(()), Ok(more)) = (&result, inbox.try_recv()) {
            result = out.write_all(&more);
        }
        if let Err(e) = result.and_then(|()| out.flush()) {
            error!("access log write failed, logging stops: {e}");
            return;
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
        trace.push(2, Outcome::Failed(Failure::Connect(io::ErrorKind::ConnectionRefused)));
        trace.push(3, Outcome::Ok);
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
        ok.push(0, Outcome::Ok);
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
