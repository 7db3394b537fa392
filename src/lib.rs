//! ringproxy: an HTTP/1.1 load-balancing reverse proxy on one hand-written mio reactor.
//! `docs/ARCHITECTURE.md` walks one request through these modules.

pub mod accesslog;
pub mod buffer;
pub mod config;
pub mod health;
pub mod http;
pub mod reactor;
pub mod ready;
pub mod resolve;
pub mod ring;
pub mod session;
pub mod token;
pub mod upstream;
pub mod wheel;
