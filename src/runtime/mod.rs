//! The event-loop machinery every connection uses and none owns: what a token means, sticky
//! readiness, the timer wheel, pooled buffers, the clock, listening sockets, signals, and name lookups off the loop.

pub mod buffer;
pub mod clock;
pub mod limits;
pub mod listen;
pub mod ready;
pub mod resolve;
pub mod signals;
pub mod timer;
pub mod token;
pub mod wheel;
