//! The operational log: the `log` crate's lines (start, targets up and down, reloads, refused
//! requests), one per line on stdout as `2026-12-02T00:27:44.809Z WARN  [module] message`.
//!
//! A line is formatted on the thread that logs it and queued; a writer thread of its own writes
//! the queue to stdout. So no line can block or kill the event loop: a stalled reader (a stuck
//! log driver) fills the queue, after which lines are dropped and counted, and a gone reader
//! (EPIPE) or any other write error is counted, never a panic. The access log's stdout writer
//! goes through `write_stdout` too, so the two never split each other's lines.
//!
//! Lines an outsider can cause at will (one per malformed request, bad TLS hello, failing
//! target) go through `admit` first: at most one a second per `Noisy` kind, the next one
//! saying how many were suppressed, and `report_suppressed` tells the rest once their second
//! is over.

use super::timefmt;
use log::{Level, LevelFilter, Log, Metadata, Record};
use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

/// Bytes of lines that may wait for the writer; past this, lines are dropped and counted.
const QUEUE: usize = 256 * 1024;

/// What happened to the lines of one log, for `/metrics`.
pub struct LogCounters {
    /// Lines lost: the queue was full, or their write failed.
    pub dropped: AtomicU64,
    /// Writes that failed (EPIPE, EIO, ENOSPC, ...).
    pub write_errors: AtomicU64,
}

impl LogCounters {
    pub const fn new() -> LogCounters {
        LogCounters { dropped: AtomicU64::new(0), write_errors: AtomicU64::new(0) }
    }

    /// A write of `lines` lines failed.
    pub fn write_failed(&self, lines: u64) {
        self.write_errors.fetch_add(1, Relaxed);
        self.dropped.fetch_add(lines, Relaxed);
    }
}

impl Default for LogCounters {
    fn default() -> LogCounters {
        LogCounters::new()
    }
}

/// The operational log's counters.
pub static COUNTERS: LogCounters = LogCounters::new();

/// Serialises whole writes to stdout, so the two logs never interleave inside a line. Only
/// writer threads take it; the event loops never write stdout.
static STDOUT: Mutex<()> = Mutex::new(());

/// Writes `bytes` to stdout whole (or fails), without Rust's `Stdout`: no buffer, no lock that
/// a loop thread could wait on, and an error is returned, never a panic.
pub fn write_stdout(mut bytes: &[u8]) -> io::Result<()> {
    let _turn = STDOUT.lock().unwrap_or_else(PoisonError::into_inner);
    // SAFETY: fd 1 belongs to the process for its whole life; ManuallyDrop never closes it.
    let mut out = ManuallyDrop::new(unsafe { File::from_raw_fd(1) });
    while !bytes.is_empty() {
        match out.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A stdout another process made non-blocking: wait here, on the writer's thread.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut fd = libc::pollfd { fd: 1, events: libc::POLLOUT, revents: 0 };
                // SAFETY: poll reads and writes the one pollfd it is given.
                unsafe { libc::poll(&mut fd, 1, 1000) };
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Lines waiting for the writer.
struct Pending {
    bytes: Vec<u8>,
    lines: u64,
    /// The writer holds a batch it has not finished writing.
    writing: bool,
}

struct Queue {
    pending: Mutex<Pending>,
    /// Signalled when lines are queued (for the writer) and when a batch is written (for `flush`).
    changed: Condvar,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues one formatted line, or drops and counts it when the queue is full.
    fn push(&self, line: &[u8]) {
        let mut pending = self.lock();
        if pending.bytes.len() + line.len() > QUEUE {
            COUNTERS.dropped.fetch_add(1, Relaxed);
            return;
        }
        pending.bytes.extend_from_slice(line);
        pending.lines += 1;
        drop(pending);
        self.changed.notify_all();
    }

    /// The writer thread: takes everything queued, writes it, and counts what failed.
    fn write_forever(&self) {
        let mut batch = Vec::new();
        let mut failing = false;
        loop {
            let lines = {
                let mut pending = self.lock();
                while pending.bytes.is_empty() {
                    pending = self.changed.wait(pending).unwrap_or_else(PoisonError::into_inner);
                }
                std::mem::swap(&mut pending.bytes, &mut batch);
                pending.writing = true;
                std::mem::take(&mut pending.lines)
            };
            match write_stdout(&batch) {
                Ok(()) => failing = false,
                Err(e) => {
                    COUNTERS.write_failed(lines);
                    if !failing {
                        // Once per outage, on stderr: the log itself cannot carry it. Never
                        // `eprintln!`, which panics when stderr is gone too.
                        let _ = writeln!(
                            io::stderr(),
                            "ringproxy: writing the log to stdout failed: {e}; lines are dropped and counted \
                             (ringproxy_log_lines_dropped_total)"
                        );
                    }
                    failing = true;
                }
            }
            batch.clear();
            batch.shrink_to(QUEUE);
            self.lock().writing = false;
            self.changed.notify_all();
        }
    }

    /// Waits until everything queued is written, for at most `within`.
    fn flush(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let mut pending = self.lock();
        while !pending.bytes.is_empty() || pending.writing {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            pending = self.changed.wait_timeout(pending, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }
}

static QUEUE_STATE: Queue =
    Queue { pending: Mutex::new(Pending { bytes: Vec::new(), lines: 0, writing: false }), changed: Condvar::new() };

/// Whether `init` started the writer.
static STARTED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Each thread formats its lines here, outside the queue's lock, reusing the allocation.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

struct Logger {
    level: LevelFilter,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // `try_with`: a line logged while the thread's locals are torn down is dropped, not a panic.
        let _ = LINE.try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut line) => {
                format_line(record, SystemTime::now(), &mut line);
                QUEUE_STATE.push(&line);
                if line.capacity() > 64 * 1024 {
                    *line = Vec::new();
                }
            }
            // A line logged while formatting another (a Display that logs): format it apart.
            Err(_) => {
                let mut line = Vec::new();
                format_line(record, SystemTime::now(), &mut line);
                QUEUE_STATE.push(&line);
            }
        });
    }

    fn flush(&self) {}
}

/// `2026-12-02T00:27:44.809Z WARN  [ringproxy::server] message`, with any control byte in the
/// message written as `\xHH`, so that no message can forge or split a line.
fn format_line(record: &Record<'_>, now: SystemTime, line: &mut Vec<u8>) {
    line.clear();
    timefmt::iso(now, true, line);
    let _ = write!(line, " {:<5} [{}] ", record.level(), record.target());
    let start = line.len();
    let _ = write!(line, "{}", record.args());
    if line[start..].iter().any(|&b| b < b' ' || b == 0x7f) {
        let message = line.split_off(start);
        for b in message {
            match b {
                b if b < b' ' || b == 0x7f => {
                    let _ = write!(line, "\\x{b:02x}");
                }
                b => line.push(b),
            }
        }
    }
    line.push(b'\n');
}

/// Installs the logger at `level` and starts its writer thread.
pub fn init(level: LevelFilter) -> io::Result<()> {
    std::thread::Builder::new().name("log".into()).spawn(|| QUEUE_STATE.write_forever())?;
    // Once per process: the logger lives as long as the process does.
    let logger: &'static Logger = Box::leak(Box::new(Logger { level }));
    log::set_logger(logger).map_err(|e| io::Error::other(e.to_string()))?;
    log::set_max_level(level);
    STARTED.store(true, Relaxed);
    Ok(())
}

/// Waits, at most `within`, for the lines logged so far to be written: before the process exits.
pub fn flush(within: Duration) {
    if STARTED.load(Relaxed) {
        QUEUE_STATE.flush(within);
    }
}

/// The kinds of line an outsider can cause once per request: each is logged at most once a
/// second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Noisy {
    /// A client's request refused: malformed, too large, too slow.
    BadRequest,
    /// A TLS handshake that failed or never finished.
    TlsHandshake,
    /// A target failed a request: 502, 504, or a cut response.
    TargetFailed,
    /// A request with no live target left.
    NoTarget,
    /// A target sent bytes nobody asked for.
    StrayBytes,
    /// A transfer stalled past its timeout.
    Stalled,
    /// The proxy ran out of something of its own: descriptors, buffers, memory.
    LocalError,
}

impl Noisy {
    const ALL: [Noisy; 7] = [
        Noisy::BadRequest,
        Noisy::TlsHandshake,
        Noisy::TargetFailed,
        Noisy::NoTarget,
        Noisy::StrayBytes,
        Noisy::Stalled,
        Noisy::LocalError,
    ];

    /// The level its lines are logged at; the count of those held back is said at the same.
    pub fn level(self) -> Level {
        match self {
            Noisy::TlsHandshake => Level::Info,
            _ => Level::Warn,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Noisy::BadRequest => "refused requests",
            Noisy::TlsHandshake => "failed TLS handshakes",
            Noisy::TargetFailed => "target failures",
            Noisy::NoTarget => "requests with no live target",
            Noisy::StrayBytes => "stray bytes from targets",
            Noisy::Stalled => "stalled transfers",
            Noisy::LocalError => "local resource errors",
        }
    }
}

/// At most one line a second, and a count of the ones held back. Time is given, so tests can
/// drive it; the atomics let every worker share one.
pub struct Throttle {
    /// The loop millisecond from which the next line may go out.
    next: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle { next: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// Whether a line may be logged at `now_ms`: if so, how many were held back before it.
    pub fn admit(&self, now_ms: u64) -> Option<u64> {
        let next = self.next.load(Relaxed);
        if now_ms < next || self.next.compare_exchange(next, now_ms + 1000, Relaxed, Relaxed).is_err() {
            self.suppressed.fetch_add(1, Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Relaxed))
    }

    /// Lines held back whose second is over and that no later line has reported yet.
    pub fn overdue(&self, now_ms: u64) -> Option<u64> {
        if now_ms < self.next.load(Relaxed) || self.suppressed.load(Relaxed) == 0 {
            return None;
        }
        Some(self.suppressed.swap(0, Relaxed)).filter(|&n| n > 0)
    }
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle::new()
    }
}

static THROTTLES: [Throttle; Noisy::ALL.len()] = [const { Throttle::new() }; Noisy::ALL.len()];

/// Milliseconds on one process-wide clock, for the throttles.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Whether a `kind` line may be logged now; if so, how many were held back before it. Call it
/// before formatting anything: a suppressed line costs two atomic operations.
pub fn admit(kind: Noisy) -> Option<u64> {
    THROTTLES[kind as usize].admit(now_ms())
}

/// Logs, for each kind, how many lines were held back and not reported yet, once their second
/// is over. The loop calls it every couple of seconds.
pub fn report_suppressed() {
    let now = now_ms();
    for kind in Noisy::ALL {
        if let Some(n) = THROTTLES[kind as usize].overdue(now) {
            let lines = count(n, "more line", "more lines");
            log::log!(kind.level(), "{lines} of {} {} not logged (at most one a second)", kind.describe(), were(n));
        }
    }
}

/// `was` or `were`, to go with a count.
fn were(n: u64) -> &'static str {
    if n == 1 {
        "was"
    } else {
        "were"
    }
}

/// A count and its noun, singular or plural as the count asks (`1 target`, `0 targets`), for
/// log and command-line lines; formatted in place, with nothing allocated.
pub struct Counted<N> {
    n: N,
    one: &'static str,
    many: &'static str,
}

/// `n` `one` or `many`: `count(1, "address", "addresses")` says `1 address`.
pub fn count<N>(n: N, one: &'static str, many: &'static str) -> Counted<N> {
    Counted { n, one, many }
}

impl<N: std::fmt::Display + PartialEq + From<u8>> std::fmt::Display for Counted<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let noun = if self.n == N::from(1) { self.one } else { self.many };
        write!(f, "{} {noun}", self.n)
    }
}

/// What a throttled line says after its message: nothing, or how many like it were held back.
pub struct Suppressed(pub u64);

impl std::fmt::Display for Suppressed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, " ({n} more like this in the last second not logged)"),
        }
    }
}

/// A line an outsider can cause once per request, at `level`: at most one a second per kind.
/// Below the log level nothing is counted either, so no summary speaks of lines never shown.
#[macro_export]
macro_rules! log_noisy {
    ($level:expr, $kind:expr, $($arg:tt)+) => {
        if log::log_enabled!($level) {
            if let Some(held) = $crate::observe::oplog::admit($kind) {
                log::log!($level, "{}{}", format_args!($($arg)+), $crate::observe::oplog::Suppressed(held));
            }
        }
    };
}

/// `warn!`, throttled as `log_noisy!` says.
#[macro_export]
macro_rules! warn_noisy {
    ($kind:expr, $($arg:tt)+) => {
        $crate::log_noisy!(log::Level::Warn, $kind, $($arg)+)
    };
}

/// `info!`, throttled the same way.
#[macro_export]
macro_rules! info_noisy {
    ($kind:expr, $($arg:tt)+) => {
        $crate::log_noisy!(log::Level::Info, $kind, $($arg)+)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_says_its_noun_in_the_singular_only_for_one() {
        assert_eq!(count(1usize, "target", "targets").to_string(), "1 target");
        assert_eq!(count(0usize, "target", "targets").to_string(), "0 targets");
        assert_eq!(count(2u64, "address", "addresses").to_string(), "2 addresses");
        assert_eq!(format!("{}, {}", count(1u64, "more line", "more lines"), were(1)), "1 more line, was");
    }

    #[test]
    fn a_throttle_lets_one_line_a_second_through_and_counts_the_rest() {
        let t = Throttle::new();
        assert_eq!(t.admit(5), Some(0));
        assert_eq!((t.admit(6), t.admit(900), t.admit(1004)), (None, None, None));
        assert_eq!(t.overdue(1004), None, "its second is not over");
        assert_eq!(t.admit(1005), Some(3));
        assert_eq!(t.admit(1500), None);
        assert_eq!(t.overdue(2005), Some(1));
        assert_eq!(t.overdue(2006), None, "reported once");
        assert_eq!(t.admit(2007), Some(0));
    }

    #[test]
    fn a_message_cannot_split_or_forge_a_line() {
        let mut line = Vec::new();
        let args = format_args!("bad\r\n2026-01-01T00:00:00.000Z ERROR [x] forged\x1b[0m");
        let record = Record::builder().args(args).level(Level::Warn).target("ringproxy::proxy").build();
        format_line(&record, std::time::UNIX_EPOCH, &mut line);
        let text = String::from_utf8(line).expect("utf8");
        assert_eq!(
            text,
            "1970-01-01T00:00:00.000Z WARN  [ringproxy::proxy] bad\\x0d\\x0a2026-01-01T00:00:00.000Z ERROR [x] \
             forged\\x1b[0m\n"
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let queue = Queue {
            pending: Mutex::new(Pending { bytes: Vec::new(), lines: 0, writing: false }),
            changed: Condvar::new(),
        };
        let before = COUNTERS.dropped.load(Relaxed);
        let line = [b'x'; 1000];
        for _ in 0..(QUEUE / 1000 + 10) {
            queue.push(&line);
        }
        assert_eq!(queue.lock().lines as usize, QUEUE / 1000);
        assert!(COUNTERS.dropped.load(Relaxed) >= before + 10);
    }
}
