//! target-svc as the prototype's target: the real binary on a loopback port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn answers_hello_and_ping_and_logs_its_count_every_ten_seconds() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_target-svc"))
        .args(["--host", "127.0.0.1", "--port", "0", "--name", "svc-a"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn target-svc");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(10)).expect("a start line");
    let port: u16 = first.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port in the start line");

    let hello = get(port, "/");
    assert!(hello.starts_with("HTTP/1.1 200 OK\r\n"), "{hello}");
    assert!(hello.contains("X-Target: svc-a\r\n"));
    assert!(hello.ends_with("\r\n\r\nHello, world!"));
    assert!(get(port, "/ping/").starts_with("HTTP/1.1 200 OK\r\n"));

    // "<uptime> : <count>" within a little over ten seconds, counting the two requests.
    let line = rx.recv_timeout(Duration::from_secs(15)).expect("a count line");
    let _ = child.kill();
    let _ = child.wait();
    let (uptime, count) = line.split_once(" : ").expect("uptime : count");
    assert!(uptime.parse::<u64>().is_ok_and(|u| u >= 10), "{line}");
    assert_eq!(count, "2", "{line}");
}
