//! The process's own limits: the descriptor limit, raised at start; how many connections fit
//! in it; and which I/O errors mean the proxy ran out of something of its own rather than a
//! target failing.
//!
//! A proxy that runs out of descriptors must not blame its targets: `socket()` failing with
//! EMFILE says nothing about the target it was for. So `LocalError::of` sorts those errors out
//! where they happen (a connect, a probe, an accept), and the callers answer `503`, count the
//! error, and leave the target's health alone.

use std::io;

/// A failure of the proxy's own resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalError {
    /// The process's descriptor limit (RLIMIT_NOFILE).
    Emfile,
    /// The system's descriptor table.
    Enfile,
    /// Socket buffers.
    Enobufs,
    /// Kernel memory.
    Enomem,
}

impl LocalError {
    pub const ALL: [LocalError; 4] = [LocalError::Emfile, LocalError::Enfile, LocalError::Enobufs, LocalError::Enomem];

    /// The local failure `e` is, if it is one.
    pub fn of(e: &io::Error) -> Option<LocalError> {
        match e.raw_os_error()? {
            libc::EMFILE => Some(LocalError::Emfile),
            libc::ENFILE => Some(LocalError::Enfile),
            libc::ENOBUFS => Some(LocalError::Enobufs),
            libc::ENOMEM => Some(LocalError::Enomem),
            _ => None,
        }
    }

    /// The errno's name, as `/metrics` labels it.
    pub fn name(self) -> &'static str {
        match self {
            LocalError::Emfile => "EMFILE",
            LocalError::Enfile => "ENFILE",
            LocalError::Enobufs => "ENOBUFS",
            LocalError::Enomem => "ENOMEM",
        }
    }

    /// Whether closing some of the proxy's own idle descriptors may cure it.
    pub fn wants_descriptors(self) -> bool {
        matches!(self, LocalError::Emfile | LocalError::Enfile)
    }
}

/// The soft and hard descriptor limits.
pub fn nofile() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given, nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Raises the soft descriptor limit to the hard one, as nginx's `worker_rlimit_nofile` and
/// HAProxy do: a container's soft limit is often 1,024 whatever its hard limit allows. Returns
/// the soft limit before and after.
pub fn raise_nofile() -> io::Result<(u64, u64)> {
    let (soft, hard) = nofile()?;
    // An unlimited hard limit cannot be the soft one: the kernel caps descriptors at nr_open.
    let most = match hard {
        libc::RLIM_INFINITY => nr_open().unwrap_or(1 << 20),
        hard => hard,
    };
    if soft >= most {
        return Ok((soft, soft));
    }
    let limit = libc::rlimit { rlim_cur: most, rlim_max: hard };
    // SAFETY: setrlimit only reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((soft, most))
}

/// The kernel's cap on one process's descriptors.
fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open").ok()?.trim().parse().ok()
}

/// What the proxy needs besides its client connections, in descriptors.
#[derive(Clone, Copy, Debug)]
pub struct Needs {
    pub workers: usize,
    /// Targets that may be probed at once: one probe each.
    pub targets: usize,
    /// The admin listener's connections, and the listener.
    pub admin: usize,
}

/// Descriptors the process keeps whatever the traffic: stdio, the signal pipe, the resolver
/// and discovery threads' lookups, a config or certificate read during a reload.
const FIXED: u64 = 32;

/// Per worker: its poll, its waker, two listeners, its access-log file, one spare.
const PER_WORKER: u64 = 6;

impl Needs {
    /// Descriptors taken before the first client connects.
    pub fn reserved(&self) -> u64 {
        FIXED + PER_WORKER * self.workers as u64 + self.targets as u64 + self.admin as u64
    }

    /// Descriptors one client connection may cost: its own and its upstream connection's. With
    /// several workers each pool is capped on its own, so idle connections may add one more.
    pub fn per_connection(&self) -> u64 {
        if self.workers > 1 {
            3
        } else {
            2
        }
    }

    /// How many client connections fit under a descriptor limit of `limit`.
    pub fn connections_within(&self, limit: u64) -> usize {
        let left = limit.saturating_sub(self.reserved());
        usize::try_from(left / self.per_connection()).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_descriptors_is_local_and_a_refused_connect_is_not() {
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(LocalError::of(&emfile), Some(LocalError::Emfile));
        assert!(LocalError::of(&emfile).is_some_and(LocalError::wants_descriptors));
        assert_eq!(LocalError::of(&io::Error::from_raw_os_error(libc::ENOBUFS)), Some(LocalError::Enobufs));
        assert_eq!(LocalError::of(&io::Error::from_raw_os_error(libc::ECONNREFUSED)), None);
        assert_eq!(LocalError::of(&io::Error::from(io::ErrorKind::ConnectionRefused)), None);
    }

    #[test]
    fn connections_fit_after_what_the_proxy_keeps_for_itself() {
        let one = Needs { workers: 1, targets: 5, admin: 65 };
        assert_eq!(one.reserved(), 32 + 6 + 5 + 65);
        assert_eq!(one.connections_within(256), (256 - 108) / 2);
        assert_eq!(one.connections_within(50), 0);
        let four = Needs { workers: 4, ..one };
        assert_eq!(four.connections_within(1_048_576), (1_048_576 - 32 - 24 - 70) / 3);
    }
}
