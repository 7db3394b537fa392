//! TLS termination with real clients (curl, `openssl s_client`, Python's websockets over
//! wss) against certificates the test makes with `openssl req`: the right certificate by SNI,
//! TLS 1.2 and 1.3 only, `X-Forwarded-Proto: https`, bad clients closed with one log line,
//! renewed certificates served after SIGHUP, and `--check` naming a bad key or certificate.

mod common;

use common::{targets, Proxy};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// A directory of certificates: `localhost` (with 127.0.0.1) and `other.test`.
struct Certs(PathBuf);

impl Certs {
    fn make(tag: &str) -> Certs {
        let dir = std::env::temp_dir().join(format!("ringproxy-tls-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cert dir");
        let certs = Certs(dir);
        certs.issue("localhost", "DNS:localhost,IP:127.0.0.1");
        certs.issue("other", "DNS:other.test");
        certs
    }

    /// A self-signed certificate `name.pem` with key `name-key.pem`.
    fn issue(&self, name: &str, san: &str) {
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
            .arg("-keyout")
            .arg(self.key(name))
            .arg("-out")
            .arg(self.cert(name))
            .args(["-subj", &format!("/CN={name}"), "-addext", &format!("subjectAltName={san}")])
            .output()
            .expect("openssl req");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    fn cert(&self, name: &str) -> PathBuf {
        self.0.join(format!("{name}.pem"))
    }

    fn key(&self, name: &str) -> PathBuf {
        self.0.join(format!("{name}-key.pem"))
    }

    fn tls_json(&self) -> String {
        format!(
            "\"tls\": {{\"listen\": \"127.0.0.1:0\", \"cert\": \"{}\", \"key\": \"{}\", \
             \"sni\": [{{\"names\": [\"other.test\"], \"cert\": \"{}\", \"key\": \"{}\"}}]}}",
            self.cert("localhost").display(),
            self.key("localhost").display(),
            self.cert("other").display(),
            self.key("other").display()
        )
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tls_addr(proxy: &Proxy) -> SocketAddr {
    common::listening_addr(&proxy.proc.wait_line("TLS listening on", Duration::from_secs(10)))
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl").args(["-sS", "-m", "10"]).args(args).output().expect("curl")
}

fn s_client(addr: SocketAddr, args: &[&str]) -> Output {
    Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-servername", "localhost"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client")
}

#[test]
fn https_with_the_certificate_sni_picks_and_x_forwarded_proto() {
    let certs = Certs::make("sni");
    let t = targets(1);
    let proxy = Proxy::start(&t, &certs.tls_json());
    let addr = tls_addr(&proxy);
    let url = format!("https://localhost:{}/headers", addr.port());
    let out = curl(&["-v", "--cacert", &certs.cert("localhost").to_string_lossy(), &url]);
    let (body, trace) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{trace}");
    assert!(body.contains("X-Forwarded-Proto: https\r\n"), "{body}");
    assert!(trace.contains("ALPN: server accepted http/1.1"), "{trace}");
    // SNI: other.test gets its own certificate, which only its own CA file accepts.
    let resolve = format!("other.test:{}:127.0.0.1", addr.port());
    let other = format!("https://other.test:{}/", addr.port());
    let out = curl(&["--resolve", &resolve, "--cacert", &certs.cert("other").to_string_lossy(), &other]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Hello, world!", "{}", String::from_utf8_lossy(&out.stderr));
    let wrong = curl(&["--resolve", &resolve, "--cacert", &certs.cert("localhost").to_string_lossy(), &other]);
    assert!(!wrong.status.success(), "the localhost certificate is not served for other.test");
    // Plain HTTP keeps working beside it.
    assert_eq!(proxy.get("/").status, 200);
}

#[test]
fn only_tls_1_2_and_1_3_are_offered() {
    let certs = Certs::make("versions");
    let t = targets(1);
    let proxy = Proxy::start(&t, &certs.tls_json());
    let addr = tls_addr(&proxy);
    for (flag, ok) in [("-tls1", false), ("-tls1_1", false), ("-tls1_2", true), ("-tls1_3", true)] {
        let out = s_client(addr, &[flag]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        let agreed = text.contains("Cipher is ") && !text.contains("Cipher is (NONE)");
        assert_eq!(agreed, ok, "{flag}: {text}");
    }
}

#[test]
fn plain_http_gets_a_plain_400_and_garbage_and_a_stalled_handshake_a_close_all_counted() {
    let certs = Certs::make("bad");
    let t = targets(1);
    let proxy = Proxy::start(&t, &format!("{}, \"client_header_timeout\": 0.5", certs.tls_json()));
    let addr = tls_addr(&proxy);
    let exchange = |bytes: &[u8]| {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        std::io::Write::write_all(&mut s, bytes).expect("send");
        let mut answer = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    // Plain HTTP is told so in plain HTTP (as nginx does), with no TLS alert in front, and closed.
    let plain = exchange(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(plain.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{plain:?}");
    assert!(plain.contains("\r\nContent-Type: text/plain\r\n"), "{plain:?}");
    assert!(plain.contains("\r\nConnection: close\r\n"), "{plain:?}");
    assert!(plain.ends_with("\r\n\r\nThe plain HTTP request was sent to the HTTPS port"), "{plain:?}");
    let head = exchange(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 400 ") && head.ends_with("\r\n\r\n"), "no body to HEAD: {head:?}");
    // A client still sending its body reads the whole answer all the same (a lingering close).
    let mut upload = std::net::TcpStream::connect(addr).expect("connect");
    upload.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut request = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 4000000\r\n\r\n".to_vec();
    request.resize(request.len() + 4_000_000, b'x');
    let sender = common::send_in_background(&upload, request);
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut upload, &mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 ") && answer.ends_with("HTTPS port"), "{answer:?}");
    drop(upload);
    let _ = sender.join();
    let plain_url = format!("http://127.0.0.1:{}/", addr.port());
    let out = curl(&["-w", "\n%{http_code}", &plain_url]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        said,
        "The plain HTTP request was sent to the HTTPS port\n400",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Neither TLS nor HTTP: a close, and never an HTTP answer.
    let tls_garbage = exchange(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8]);
    assert!(!tls_garbage.contains("HTTP/"), "{tls_garbage:?}");
    let junk = exchange(b"\x00\x01hello world\r\n\r\n");
    assert!(!junk.contains("HTTP/"), "{junk:?}");
    let mut stalled = std::net::TcpStream::connect(addr).expect("connect");
    std::io::Write::write_all(&mut stalled, &[0x16, 0x03, 0x01]).expect("a third of a record");
    // Each is counted; the log says the first of them, and at most one a second after it.
    common::eventually(Duration::from_secs(5), "seven failed handshakes counted", || {
        (proxy.metric("ringproxy_tls_handshake_failures_total") >= 7.0).then_some(())
    });
    proxy.proc.wait_line("plain HTTP sent to the TLS port; answered 400; closed", Duration::from_secs(5));
    let url = format!("https://localhost:{}/", addr.port());
    let out = curl(&["--cacert", &certs.cert("localhost").to_string_lossy(), &url]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Hello, world!", "the listener still serves");
}

#[test]
fn a_renewed_certificate_is_served_after_sighup_without_a_restart() {
    let certs = Certs::make("renew");
    let t = targets(1);
    let proxy = Proxy::start(&t, &certs.tls_json());
    let addr = tls_addr(&proxy);
    let url = format!("https://localhost:{}/", addr.port());
    let old = std::fs::read(certs.cert("localhost")).expect("old cert");
    let old_ca = certs.0.join("old.pem");
    std::fs::write(&old_ca, &old).expect("keep the old cert");
    certs.issue("localhost", "DNS:localhost,IP:127.0.0.1");
    proxy.reload(&common::config_json(&t, &certs.tls_json()));
    proxy.proc.wait_line("reloaded the config", Duration::from_secs(5));
    let new = curl(&["--cacert", &certs.cert("localhost").to_string_lossy(), &url]);
    assert_eq!(String::from_utf8_lossy(&new.stdout), "Hello, world!", "{}", String::from_utf8_lossy(&new.stderr));
    let stale = curl(&["--cacert", &old_ca.to_string_lossy(), &url]);
    assert!(!stale.status.success(), "the old certificate is no longer served");
}

#[test]
fn check_names_a_missing_certificate_and_a_key_that_does_not_match() {
    let certs = Certs::make("check");
    let config = certs.0.join("config.json");
    let check = |tls: String| {
        std::fs::write(&config, format!("{{\"ports\": [\"http://127.0.0.1:1/\"], {tls}}}")).expect("config");
        let out = Command::new(common::proxy_bin()).arg("--check").arg("--config").arg(&config).output().expect("run");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout))
    };
    let (code, text) = check(certs.tls_json());
    assert_eq!(code, Some(0), "{text}");
    let valid = format!("{{\"ports\": [\"http://127.0.0.1:1/\"], {}}}", certs.tls_json());
    common::schema_check(&valid).expect("the schema accepts the config");
    let missing = certs.tls_json().replace(&*certs.cert("localhost").to_string_lossy(), "/nonexistent/cert.pem");
    let (code, text) = check(missing);
    assert!(code == Some(1) && text.contains("`tls.cert`"), "{text}");
    let mismatched =
        certs.tls_json().replacen(&*certs.key("localhost").to_string_lossy(), &certs.key("other").to_string_lossy(), 1);
    let (code, text) = check(mismatched);
    assert!(code == Some(1) && text.contains("`tls.key`") && text.contains("does not go with"), "{text}");
    assert_eq!(text.trim().lines().count(), 1, "{text}");
}

#[test]
fn a_websocket_works_over_tls() {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/ws.py");
    if !common::needs_python("websockets") {
        return;
    }
    let certs = Certs::make("wss");
    let server = common::Proc::spawn(Command::new("python3").arg(&ws).arg("serve"));
    let port: u16 =
        server.wait_line("PORT ", Duration::from_secs(10)).trim_start_matches("PORT ").trim().parse().expect("port");
    let proxy = Proxy::with_config(&format!(
        "{{\"ports\": [\"http://127.0.0.1:{port}/\"], \"listen\": \"127.0.0.1:0\", {}}}",
        certs.tls_json()
    ));
    let addr = tls_addr(&proxy);
    let out = Command::new("python3")
        .arg(&ws)
        .args(["echo", &format!("wss://localhost:{}/chat", addr.port())])
        .env("SSL_CERT_FILE", certs.cert("localhost"))
        .output()
        .expect("the client");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("OK 100 messages"), "{text}");
}

fn peers() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/tls_peers.py")
}

/// `tls_peers.py fetch` against the proxy's TLS port: its one line of output.
fn fetch(addr: SocketAddr, path: &str, flags: &[&str]) -> common::Proc {
    let port = addr.port().to_string();
    common::Proc::spawn(Command::new("python3").arg(peers()).args(["fetch", "127.0.0.1", &port, path]).args(flags))
}

#[test]
fn a_slow_tls_client_gets_every_byte_even_through_a_drain_and_then_a_close_notify() {
    let certs = Certs::make("drain");
    let t = targets(1);
    let proxy = Proxy::start(&t, &certs.tls_json());
    let addr = tls_addr(&proxy);
    let slow = fetch(addr, "/bytes/2840000", &["tls", "slow"]);
    std::thread::sleep(Duration::from_millis(500));
    proxy.signal("TERM");
    let line = slow.wait_line("STATUS", Duration::from_secs(15));
    assert!(line.starts_with("STATUS 200 BODY 2840000 "), "{line} {:?}", slow.lines());
    assert!(!slow.lines().iter().any(|l| l.starts_with("RAGGED")), "{:?}", slow.lines());
}

#[test]
fn a_close_delimited_response_over_tls_ends_with_close_notify() {
    let certs = Certs::make("notify");
    let t = targets(1);
    let proxy = Proxy::start(&t, &certs.tls_json());
    let client = fetch(tls_addr(&proxy), "/close/100000", &["tls"]);
    let line = client.wait_line("STATUS", Duration::from_secs(10));
    assert!(line.starts_with("STATUS 200 BODY 100000 "), "{line}");
    assert!(
        !client.lines().iter().any(|l| l.starts_with("RAGGED")),
        "a truncation, to the client: {:?}",
        client.lines()
    );
}

#[test]
fn a_slow_wss_client_gets_all_a_target_sent_before_closing() {
    let certs = Certs::make("bulk");
    let portfile = certs.0.join("port");
    let _target = common::Proc::spawn(Command::new("python3").arg(peers()).arg("upgrader").arg(&portfile).arg("bulk"));
    let port: u16 = common::eventually(Duration::from_secs(10), "the upgrader's port", || {
        std::fs::read_to_string(&portfile).ok()?.trim().parse().ok()
    });
    let proxy = Proxy::with_config(&format!(
        "{{\"ports\": [\"http://127.0.0.1:{port}/\"], \"listen\": \"127.0.0.1:0\", {}}}",
        certs.tls_json()
    ));
    let client = fetch(tls_addr(&proxy), "/", &["tls", "slow", "upgrade"]);
    let line = client.wait_line("STATUS", Duration::from_secs(15));
    assert!(line.starts_with("STATUS 101 BODY 2820000 "), "{line} {:?}", client.lines());
}

#[test]
fn a_session_resumes_after_300_other_clients_on_any_worker_and_across_a_reload() {
    let certs = Certs::make("resume");
    let t = targets(1);
    let json = format!("{}, \"workers\": 2", certs.tls_json());
    let proxy = Proxy::start(&t, &json);
    let port = tls_addr(&proxy).port().to_string();
    let gate = certs.0.join("gate");
    let client = common::Proc::spawn(
        Command::new("python3").arg(peers()).args(["resume", "127.0.0.1", &port, "300"]).arg(&gate),
    );
    client.wait_line("OTHERS DONE", Duration::from_secs(30));
    proxy.reload(&common::config_json(&t, &json));
    proxy.proc.wait_line("reloaded the config", Duration::from_secs(5));
    std::fs::write(&gate, "").expect("gate");
    let line = client.wait_line("REUSED", Duration::from_secs(10));
    assert_eq!(line.trim(), "REUSED True STATUS 200", "{:?}", client.lines());
}
