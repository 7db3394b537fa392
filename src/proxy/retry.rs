//! Whether a failed attempt is tried again: a pure function of the failure, what the exchange
//! has sent and received, and the budget. Every path that fails an attempt asks it.

use crate::health::Failure;

/// What the decision rests on.
#[derive(Clone, Copy, Debug)]
pub struct Attempt {
    pub failure: Failure,
    /// An idempotent request's pooled connection ended without a byte of answer, as one the
    /// target closed while idle does: not counted against the target, and tried again on a
    /// fresh connection to it. (Other requests only go out on pooled connections checked open.)
    pub stale_pooled: bool,
    /// Nothing of the request reached the target.
    pub nothing_sent: bool,
    /// Safe to send twice (RFC 9110 §9.2.2).
    pub idempotent: bool,
    /// Every byte of the request sent so far is still held, so it can be sent again.
    pub replayable: bool,
    /// Some byte of a final response reached the client.
    pub response_started: bool,
    /// Attempts so far, this one included.
    pub attempts: usize,
    /// Attempts so far that ended in a response timeout, this one included.
    pub timeouts: u8,
    /// Since the request arrived.
    pub elapsed_ms: u64,
}

/// `retries` and `retry_timeout`.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub retries: usize,
    pub timeout_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send the request again: over a fresh connection to the same target (a stale pooled one
    /// failed), or to the next untried target.
    Retry { same_target: bool },
    /// Answer the client with this status; `why` is for the log line.
    Answer { status: u16, why: &'static str },
    /// The client has seen part of a response: close its connection, so the cut shows.
    Close,
}

impl Budget {
    /// Whether another attempt may start after `attempts` of them, `elapsed_ms` in.
    pub fn allows(self, attempts: usize, elapsed_ms: u64) -> bool {
        attempts <= self.retries && elapsed_ms < self.timeout_ms
    }
}

pub fn decide(a: &Attempt, budget: Budget) -> Decision {
    if a.response_started {
        return Decision::Close;
    }
    let safe = a.failure.before_request() || a.nothing_sent || a.idempotent;
    // A request that timed out gets one more target, never a walk through all of them: one
    // slow URL must not cost every target a timeout.
    let in_budget = budget.allows(a.attempts, a.elapsed_ms) && a.timeouts <= 1;
    if a.replayable && safe && in_budget {
        return Decision::Retry { same_target: a.stale_pooled };
    }
    let status = if a.failure == Failure::ResponseTimeout { 504 } else { 502 };
    let why = if in_budget { "not safe to retry" } else { "retry budget spent" };
    Decision::Answer { status, why }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    const BUDGET: Budget = Budget { retries: 5, timeout_ms: 60_000 };

    fn attempt(failure: Failure) -> Attempt {
        Attempt {
            failure,
            stale_pooled: false,
            nothing_sent: false,
            idempotent: false,
            replayable: true,
            response_started: false,
            attempts: 1,
            timeouts: 0,
            elapsed_ms: 10,
        }
    }

    #[test]
    fn a_post_is_replayed_only_when_nothing_reached_the_target() {
        let refused = attempt(Failure::Connect(ErrorKind::ConnectionRefused));
        assert_eq!(decide(&refused, BUDGET), Decision::Retry { same_target: false });
        let reset = attempt(Failure::Reset(ErrorKind::ConnectionReset));
        assert_eq!(decide(&reset, BUDGET), Decision::Answer { status: 502, why: "not safe to retry" });
        assert_eq!(decide(&Attempt { idempotent: true, ..reset }, BUDGET), Decision::Retry { same_target: false });
        assert_eq!(decide(&Attempt { nothing_sent: true, ..reset }, BUDGET), Decision::Retry { same_target: false });
    }

    #[test]
    fn a_stale_pooled_connection_is_retried_on_the_same_target() {
        let stale = Attempt { stale_pooled: true, idempotent: true, ..attempt(Failure::Eof) };
        assert_eq!(decide(&stale, BUDGET), Decision::Retry { same_target: true });
    }

    #[test]
    fn a_timeout_gets_one_more_target_and_then_504() {
        let timeout = Attempt { idempotent: true, timeouts: 1, ..attempt(Failure::ResponseTimeout) };
        assert_eq!(decide(&timeout, BUDGET), Decision::Retry { same_target: false });
        let again = Attempt { timeouts: 2, attempts: 2, ..timeout };
        assert_eq!(decide(&again, BUDGET), Decision::Answer { status: 504, why: "retry budget spent" });
    }

    #[test]
    fn the_budget_and_a_started_response_end_retries() {
        let refused = attempt(Failure::Connect(ErrorKind::ConnectionRefused));
        let spent = Attempt { attempts: 6, ..refused };
        assert_eq!(decide(&spent, BUDGET), Decision::Answer { status: 502, why: "retry budget spent" });
        let late = Attempt { elapsed_ms: 60_000, ..refused };
        assert_eq!(decide(&late, BUDGET), Decision::Answer { status: 502, why: "retry budget spent" });
        let cut = Attempt { response_started: true, ..refused };
        assert_eq!(decide(&cut, BUDGET), Decision::Close);
        let unheld = Attempt { replayable: false, ..refused };
        assert_eq!(decide(&unheld, BUDGET), Decision::Answer { status: 502, why: "not safe to retry" });
    }
}
