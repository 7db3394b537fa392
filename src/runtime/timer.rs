//! What a timer in the wheel is for. One wheel serves the whole loop, so that its next deadline
//! is the poll timeout.

use crate::ids::TargetId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// A session's phase timeout: key into the session slab.
    Session(usize),
    /// A probe in flight timed out: key into the probe slab.
    Probe(usize),
    /// A target's next probe is due, in its probe round (a replaced timer's round is stale).
    ProbeDue(TargetId, u32),
    /// An admin connection stayed silent too long: key into the admin slab.
    Admin(usize),
    /// The admin port's send budget is back: the connections it stopped go on.
    AdminBudget,
    /// The admin listener's pause after a failed accept is over.
    AdminAcceptRetry,
    /// The next round of lookups of `discover` names is due.
    Discover,
    AcceptRetry,
    /// Idle upstream connections beyond what the last period used close (`Upstreams::trim`).
    PoolTrim,
    DrainDeadline,
}
