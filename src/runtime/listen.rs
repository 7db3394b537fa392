//! Listening sockets. One worker binds as mio does; several share one address with
//! `SO_REUSEPORT`, each with a socket of its own, so the kernel spreads new connections over
//! their accept queues and no worker ever takes a lock to accept.

use mio::net::TcpListener;
use std::io;
use std::mem::size_of;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Pending connections each listener's accept queue holds (the kernel caps it at `somaxconn`).
/// mio's and std's `bind` ask for 128: a flood of a few hundred connections would fill that
/// and the kernel would drop the next SYN, a healthcheck's among them, for a second or more.
/// nginx asks for 511, HAProxy for as many as `maxconn`.
const BACKLOG: libc::c_int = 1024;

/// `count` listeners on `addr`: one plain socket when `count` is 1, else `count` sockets in one
/// `SO_REUSEPORT` group. Port 0 is resolved by the first, and the rest join its port.
///
/// A group would silently share the port with another process of the same user that also set
/// `SO_REUSEPORT`, so a fixed port is first bound plainly, which fails with "address in use"
/// when anyone holds it, as a single worker's bind would. (A process of the same user that
/// sets `SO_REUSEPORT` itself can still join the group afterwards: the kernel allows it.)
pub fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<TcpListener>> {
    if count <= 1 {
        return Ok(vec![one(addr)?]);
    }
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    let first = reuseport(addr)?;
    let addr = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..count {
        all.push(reuseport(addr)?);
    }
    Ok(all)
}

/// Elsewhere `SO_REUSEPORT` does not spread connections over the group, so several workers
/// would not share the load: Linux only.
#[cfg(not(target_os = "linux"))]
fn reuseport(_: SocketAddr) -> io::Result<TcpListener> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "more than one worker needs Linux (SO_REUSEPORT)"))
}

#[cfg(not(target_os = "linux"))]
fn one(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// One listener on `addr`, with `SO_REUSEADDR` as mio sets it, and a `BACKLOG`-long queue.
#[cfg(target_os = "linux")]
fn one(addr: SocketAddr) -> io::Result<TcpListener> {
    listener(addr, &[libc::SO_REUSEADDR])
}

/// A listener of a `SO_REUSEPORT` group.
#[cfg(target_os = "linux")]
fn reuseport(addr: SocketAddr) -> io::Result<TcpListener> {
    listener(addr, &[libc::SO_REUSEADDR, libc::SO_REUSEPORT])
}

/// A non-blocking listener with `options` set before `bind`, listening with `BACKLOG`.
#[cfg(target_os = "linux")]
fn listener(addr: SocketAddr, options: &[libc::c_int]) -> io::Result<TcpListener> {
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain syscalls on a descriptor this function owns from `socket` on; `OwnedFd`
    // closes it on every error path.
    unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let on: libc::c_int = 1;
        for &option in options {
            let set = libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
            if set < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let (storage, len) = sockaddr(addr);
        if libc::bind(fd.as_raw_fd(), (&storage as *const libc::sockaddr_storage).cast(), len) < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::listen(fd.as_raw_fd(), BACKLOG) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(TcpListener::from_std(std::net::TcpListener::from(fd)))
    }
}

/// `addr` in the C layout `bind` takes.
#[cfg(target_os = "linux")]
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid, and each arm writes the variant whose size
    // it returns, which fits in the storage.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr = libc::in_addr { s_addr: u32::from(*a.ip()).to_be() };
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
                sin6.sin6_flowinfo = a.flowinfo();
                sin6.sin6_scope_id = a.scope_id();
                size_of::<libc::sockaddr_in6>()
            }
        };
        (storage, len as libc::socklen_t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_shares_one_port_and_a_held_port_is_refused() {
        let group = bind("127.0.0.1:0".parse().expect("addr"), 3).expect("bind");
        let addrs: Vec<SocketAddr> = group.iter().map(|l| l.local_addr().expect("addr")).collect();
        assert_eq!(addrs.len(), 3);
        assert!(addrs.iter().all(|a| *a == addrs[0] && a.port() != 0), "{addrs:?}");
        let again = bind(addrs[0], 2).expect_err("the port is held");
        assert_eq!(again.kind(), io::ErrorKind::AddrInUse);
        let v6 = bind("[::1]:0".parse().expect("addr"), 2);
        if let Ok(v6) = v6 {
            assert_eq!(v6[0].local_addr().expect("addr"), v6[1].local_addr().expect("addr"));
        }
    }
}
