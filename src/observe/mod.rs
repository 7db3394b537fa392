//! What the proxy tells its operator about the requests it served: the access log, with each
//! request's failover trace.

pub mod accesslog;
