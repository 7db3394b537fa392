//! ringproxy: an HTTP/1.1 load-balancing reverse proxy on one hand-written mio reactor.
//! `docs/ARCHITECTURE.md` says what each module owns and walks one request through them.

pub mod admin;
pub mod balance;
pub mod config;
pub mod health;
pub mod http;
pub mod ids;
pub mod observe;
pub mod proxy;
pub mod random;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod targets;
pub mod tls;
pub mod workers;
