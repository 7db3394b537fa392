//! Zero heap allocations per request on the warm keep-alive path, access log on. The reactor
//! runs in this process, in front of a real target-svc, and a counting global allocator counts
//! only what its thread allocates.

mod common;

use ringproxy::config::Config;
use ringproxy::server::Server;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static ON_REACTOR: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ON_REACTOR.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ON_REACTOR.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Sends `n` GETs on one connection and reads each 200 response whole, with fixed buffers.
fn requests(stream: &mut std::net::TcpStream, n: usize) {
    let mut buf = [0u8; 4096];
    for _ in 0..n {
        stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
        let mut got = 0;
        loop {
            got += stream.read(&mut buf[got..]).expect("read");
            let text = &buf[..got];
            if let Some(head_end) = text.windows(4).position(|w| w == b"\r\n\r\n") {
                if text.ends_with(b"Hello, world!") && got >= head_end + 4 + 13 {
                    break;
                }
            }
        }
        assert!(buf.starts_with(b"HTTP/1.1 200"));
    }
}

#[test]
fn the_warm_keep_alive_path_allocates_nothing_per_request() {
    let targets = common::targets(2);
    let urls: Vec<String> = targets.iter().map(|t| format!("\"{}\"", t.url())).collect();
    // With the access log on: its lines are formatted on the reactor thread too.
    let log = common::temp_log("alloc");
    let config = Config::parse(&format!(
        "{{\"ports\": [{}], \"listen\": \"127.0.0.1:0\", \"access_log\": \"{}\"}}",
        urls.join(", "),
        log.display()
    ))
    .expect("config");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reactor = Server::new(&config).expect("server");
        tx.send(reactor.local_addr()).expect("address");
        ON_REACTOR.with(|c| c.set(true));
        let _ = reactor.run();
    });
    let addr = rx.recv().expect("the reactor's address");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    requests(&mut stream, 200); // warm: buffers, pools, slab and wheel slots reach their size
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    assert!(before > 0, "the counter must see the reactor's warm-up allocations");
    requests(&mut stream, 2000);
    let during = ALLOCATIONS.load(Ordering::Relaxed) - before;
    println!("{during} allocations on the reactor thread over 2000 keep-alive requests");
    assert_eq!(during, 0, "allocations on the keep-alive path");
    let logged = common::eventually(std::time::Duration::from_secs(5), "the access log", || {
        Some(common::read_lines(&log).len()).filter(|&n| n >= 2200)
    });
    assert_eq!(logged, 2200, "every request was logged");
    let _ = std::fs::remove_file(log);
}
