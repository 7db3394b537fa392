//! Answers the proxy makes itself, as opposed to those it relays.

use crate::http::write_local_response;

/// The prototype's answer when no target is left.
pub const ALL_DOWN: &str = "All servers is off";

/// The answer to a connection over `max_connections`, written once before the close.
pub fn busy(out: &mut [u8]) -> usize {
    write_local_response(out, 503, "Too many connections", false, false).unwrap_or(0)
}
