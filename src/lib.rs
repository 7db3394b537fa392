//! ringproxy: an HTTP/1.1 load-balancing reverse proxy on one hand-written mio reactor.
//! `docs/ARCHITECTURE.md` walks one request through these modules.

pub mod buffer;
pub mod config;
pub mod http;
pub mod ring;
pub mod wheel;
