//! What the proxy tells its operator: the access log, with each request's failover trace; the
//! operational log, which never blocks the loop; and the counters behind `/metrics` and `/status`.

pub mod accesslog;
pub mod metrics;
pub mod oplog;
pub mod timefmt;
