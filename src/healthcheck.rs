//! `ringproxy --probe URL`: one blocking GET, for a container healthcheck where the image has
//! no shell and no curl. Exit 0 on a 2xx status within the deadline, 1 otherwise, with a line.

use ringproxy::config::parse_target_url;
use ringproxy::health::probe;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(2);

pub fn run(url: &str) -> ExitCode {
    match get_status(url) {
        Ok(status) if (200..300).contains(&status) => ExitCode::SUCCESS,
        Ok(status) => {
            say_err!("ringproxy --probe {url}: status {status}");
            ExitCode::from(1)
        }
        Err(e) => {
            say_err!("ringproxy --probe {url}: {e}");
            ExitCode::from(1)
        }
    }
}

fn get_status(url: &str) -> Result<u16, String> {
    let target = parse_target_url(url).map_err(str::to_owned)?;
    let host = target.bare_host();
    let addr = (host, target.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, DEADLINE).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(DEADLINE)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(DEADLINE)).map_err(|e| e.to_string())?;
    let path = if target.path_prefix.is_empty() { "/" } else { target.path_prefix.as_str() };
    stream.write_all(&probe::request(path, &target.host)).map_err(|e| format!("send: {e}"))?;
    let mut head = [0u8; 64];
    let mut got = 0;
    while got < 13 {
        match stream.read(&mut head[got..]) {
            Ok(0) => return Err("closed before answering".into()),
            Ok(n) => got += n,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    probe::status(&head[..got]).ok_or_else(|| "not an HTTP/1.x status line".into())
}
