//! What the proxy tells its operator about the requests it served: the access log, with each
//! request's failover trace, and the counters behind `/metrics` and `/status`.

pub mod accesslog;
pub mod metrics;
