//! The admin port under floods (issue 25): a healthcheck always gets in, whether the port is
//! flooded by keep-alive clients pipelining `/livez` or by connections that never send a byte,
//! and clients pipelining `/metrics` over 256 targets cannot slow the proxy down.
//! Every flood is bounded in time and sends only to 127.0.0.1.

mod common;

use common::{eventually, targets, Client, Proxy};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long any flood runs at most, whatever the test does meanwhile.
const FLOOD_LIMIT: Duration = Duration::from_secs(12);

/// The floods load a small machine's cores: one test at a time, so that no test measures
/// another's flood.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn my_turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Threads that load the admin port until stopped (or `FLOOD_LIMIT`), counting what they did.
struct Flood {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
    /// Streams to shut when stopping, so a thread blocked on one returns.
    streams: Vec<TcpStream>,
}

impl Flood {
    fn new() -> Flood {
        Flood { stop: Arc::default(), count: Arc::default(), threads: Vec::new(), streams: Vec::new() }
    }

    fn spawn(&mut self, work: impl FnOnce(&AtomicBool, &AtomicU64) + Send + 'static) {
        let (stop, count) = (Arc::clone(&self.stop), Arc::clone(&self.count));
        self.threads.push(std::thread::spawn(move || work(&stop, &count)));
    }

    fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Relaxed);
        for stream in &self.streams {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for thread in self.threads {
            thread.join().expect("a flood thread");
        }
        self.count.load(Relaxed)
    }
}

fn running(stop: &AtomicBool, started: Instant) -> bool {
    !stop.load(Relaxed) && started.elapsed() < FLOOD_LIMIT
}

/// The exact bytes of one keep-alive `/livez` answer, read off a connection of its own.
fn livez_answer_len(admin: SocketAddr) -> usize {
    let mut s = TcpStream::connect(admin).expect("connect to the admin port");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(b"GET /livez HTTP/1.1\r\nHost: f\r\n\r\n").expect("send");
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\nok\n") {
        let n = s.read(&mut chunk).expect("the answer");
        assert!(n > 0, "closed before answering: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    got.len()
}

/// One client that keeps a connection and pipelines `/livez` in batches, reconnecting whenever
/// the proxy closes it; counts the answers it read.
fn pipeline_livez(admin: SocketAddr, answer_len: usize, stop: &AtomicBool, answered: &AtomicU64) {
    const BATCH: usize = 32;
    let batch = "GET /livez HTTP/1.1\r\nHost: f\r\n\r\n".repeat(BATCH);
    let started = Instant::now();
    let mut chunk = vec![0u8; 16 * 1024];
    while running(stop, started) {
        let Ok(mut s) = TcpStream::connect_timeout(&admin, Duration::from_secs(1)) else {
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        while running(stop, started) && s.write_all(batch.as_bytes()).is_ok() {
            let mut want = BATCH * answer_len;
            while want > 0 {
                match s.read(&mut chunk) {
                    Ok(n) if n > 0 => want = want.saturating_sub(n),
                    _ => break,
                }
            }
            if want > 0 {
                break;
            }
            answered.fetch_add(BATCH as u64, Relaxed);
        }
    }
}

/// One connection that never sends a byte, opened again as soon as the proxy closes it;
/// counts the connections it opened.
fn squat(admin: SocketAddr, stop: &AtomicBool, opened: &AtomicU64) {
    let started = Instant::now();
    while running(stop, started) {
        let Ok(mut s) = TcpStream::connect_timeout(&admin, Duration::from_secs(1)) else {
            continue;
        };
        opened.fetch_add(1, Relaxed);
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let mut byte = [0u8; 1];
        while running(stop, started) {
            match s.read(&mut byte) {
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                _ => break,
            }
        }
    }
}

/// `ringproxy --probe http://ADMIN/livez`: its failure, if it failed.
fn probe(admin: SocketAddr) -> Result<(), String> {
    let out = Command::new(common::proxy_bin())
        .args(["--probe", &format!("http://{admin}/livez")])
        .output()
        .map_err(|e| format!("run the probe: {e}"))?;
    match out.status.code() {
        Some(0) => Ok(()),
        code => Err(format!("probe exited {code:?}: {}", String::from_utf8_lossy(&out.stderr).trim())),
    }
}

/// Connect, send `GET /livez`, read the answer: its failure, if it failed.
fn raw_check(admin: SocketAddr) -> Result<(), String> {
    let mut c = Client::try_connect(admin)?;
    c.stream.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    let answer = c.try_request("GET", "/livez", &[], b"")?;
    match (answer.status, answer.text().as_str()) {
        (200, "ok\n") => Ok(()),
        (status, text) => Err(format!("raw check got {status} {text:?}")),
    }
}

/// Runs `probes` probes and twice as many raw checks, interleaved; how many of each passed,
/// and the first failures.
fn healthchecks(admin: SocketAddr, probes: usize) -> (usize, usize, Vec<String>) {
    let (mut probed, mut raw, mut failures) = (0, 0, Vec::new());
    for _ in 0..probes {
        match probe(admin) {
            Ok(()) => probed += 1,
            Err(e) => failures.push(e),
        }
        for _ in 0..2 {
            match raw_check(admin) {
                Ok(()) => raw += 1,
                Err(e) => failures.push(e),
            }
        }
    }
    failures.truncate(5);
    (probed, raw, failures)
}

/// Once `flood` has done `warm` of its work (answers, or connections opened), runs 15 probes and
/// 30 raw checks against `admin`, stops the flood, and asserts that every one got in.
fn every_healthcheck_gets_in(admin: SocketAddr, flood: Flood, warm: u64, what: &str) {
    eventually(Duration::from_secs(10), what, || (flood.count() >= warm).then_some(()));
    let probes = 15;
    let (probed, raw, failures) = healthchecks(admin, probes);
    let done = flood.stop();
    println!("{what}: {done}; probes passed {probed} of {probes}, raw checks {raw} of {}", 2 * probes);
    assert!(
        probed == probes && raw == 2 * probes,
        "{what}: probes passed {probed} of {probes}, raw checks {raw} of {}: {failures:?}",
        2 * probes
    );
}

#[test]
fn healthchecks_get_in_while_80_clients_pipeline_livez_on_the_admin_port() {
    let _turn = my_turn();
    let t = targets(1);
    let proxy = Proxy::start(&t, "");
    let admin = proxy.admin.expect("admin");
    let answer_len = livez_answer_len(admin);
    let mut flood = Flood::new();
    for _ in 0..80 {
        flood.spawn(move |stop, answered| pipeline_livez(admin, answer_len, stop, answered));
    }
    every_healthcheck_gets_in(admin, flood, 5_000, "the pipelining flood's /livez answers");
}

#[test]
fn healthchecks_get_in_among_300_connections_that_never_send() {
    let _turn = my_turn();
    let t = targets(1);
    let proxy = Proxy::start(&t, "");
    let admin = proxy.admin.expect("admin");
    let mut flood = Flood::new();
    for _ in 0..300 {
        flood.spawn(move |stop, opened| squat(admin, stop, opened));
    }
    // Over the limit of 64: the squatters keep pushing one another out, and coming back.
    every_healthcheck_gets_in(admin, flood, 2_000, "the idle flood's connections opened");
}

/// Sequential requests through the proxy on one keep-alive connection for `within` (long
/// enough to include a rendering of `/metrics`, once a second); the median latency.
fn p50(proxy: SocketAddr, within: Duration) -> Duration {
    let mut c = Client::connect(proxy);
    let started = Instant::now();
    let mut took = Vec::new();
    while started.elapsed() < within {
        let sent = Instant::now();
        assert_eq!(c.request("GET", "/", &[], b"").status, 200);
        took.push(sent.elapsed());
    }
    took.sort();
    took[took.len() / 2]
}

/// One client pipelining `/metrics` without pause, draining the answers on a second thread;
/// counts the bytes it read.
fn pipeline_metrics(flood: &mut Flood, admin: SocketAddr) {
    let stream = TcpStream::connect(admin).expect("connect to the admin port");
    let mut reader = stream.try_clone().expect("clone");
    let mut writer = stream.try_clone().expect("clone");
    flood.streams.push(stream);
    flood.spawn(move |stop, read| {
        let started = Instant::now();
        let mut sink = vec![0u8; 256 * 1024];
        while running(stop, started) {
            match reader.read(&mut sink) {
                Ok(n) if n > 0 => {
                    read.fetch_add(n as u64, Relaxed);
                }
                _ => return,
            }
        }
    });
    flood.spawn(move |stop, _| {
        let batch = "GET /metrics HTTP/1.1\r\nHost: s\r\n\r\n".repeat(16);
        let started = Instant::now();
        while running(stop, started) && writer.write_all(batch.as_bytes()).is_ok() {}
    });
}

#[test]
fn clients_pipelining_metrics_over_256_targets_do_not_slow_the_proxy() {
    let _turn = my_turn();
    let t = targets(1);
    // 255 more targets on closed loopback ports: the first request takes them out of the
    // rotation, and `sleeping` keeps their probes away for the test's length.
    let mut ports = std::collections::BTreeSet::new();
    while ports.len() < 255 {
        let port = common::closed_port();
        if port != t[0].port {
            ports.insert(port);
        }
    }
    let mut urls = vec![format!("\"{}\"", t[0].url())];
    urls.extend(ports.iter().map(|p| format!("\"http://127.0.0.1:{p}/\"")));
    let config = format!("{{\"ports\": [{}], \"listen\": \"127.0.0.1:0\", \"sleeping\": 60}}", urls.join(", "));
    let proxy = Proxy::with_config(&config);
    let admin = proxy.admin.expect("admin");
    // Requests take the closed ports out of the rotation. A port another process on the machine
    // took meanwhile would stay in: what is measured is the latency to whatever is live.
    eventually(Duration::from_secs(10), "the closed ports out of the rotation", || {
        proxy.get("/");
        let status: serde_json::Value = serde_json::from_slice(&proxy.admin_get("/status.json").body).ok()?;
        (status["live"].as_u64()? <= 3).then_some(())
    });
    let size = proxy.admin_get("/metrics").body.len();
    assert!(size > 500_000, "256 targets make a large exposition: {size} bytes");
    let baseline = p50(proxy.addr, Duration::from_secs(2));

    let mut flood = Flood::new();
    for _ in 0..3 {
        pipeline_metrics(&mut flood, admin);
    }
    eventually(Duration::from_secs(10), "the scrapers busy", || (flood.count() >= 3 * size as u64).then_some(()));
    let before = flood.count();
    let flooded = p50(proxy.addr, Duration::from_secs(3));
    let scraped = flood.count() - before;
    flood.stop();
    let bound = (baseline * 10).max(Duration::from_millis(5));
    println!(
        "/metrics is {size} bytes; proxy p50 {baseline:?} alone, {flooded:?} while 3 clients pipelined /metrics \
         ({} MB scraped meanwhile); bound {bound:?}",
        scraped / 1_000_000
    );
    for line in proxy.proc.lines().iter().filter(|l| l.contains("rendered /metrics")).take(3) {
        println!("{line}");
    }
    assert!(flooded < bound, "p50 {flooded:?} under the scrape flood, {baseline:?} without it");
}
