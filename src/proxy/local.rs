//! Answers the proxy makes itself, as opposed to those it relays.

use crate::http::write_local_response;

/// The prototype's answer when no target is left.
pub const ALL_DOWN: &str = "All servers is off";

/// The body of the `400` to a plain HTTP request on the TLS listener (nginx says the same).
pub const PLAIN_HTTP_ON_TLS: &str = "The plain HTTP request was sent to the HTTPS port";

/// The answer to a connection over `max_connections`, written once before the close.
pub fn busy(out: &mut [u8]) -> usize {
    write_local_response(out, 503, "Too many connections", false, false).unwrap_or(0)
}
