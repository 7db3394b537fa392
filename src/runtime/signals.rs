//! The signals the proxy answers, and what each one asks of it. Conventions follow nginx:
//! TERM, INT and QUIT stop gracefully, USR1 reopens log files, HUP reloads the configuration.
//! Every other registered signal is logged and ignored, never left to its default action,
//! which would kill the process without a drain.

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};

/// Every signal the loop registers.
pub const HANDLED: [i32; 6] = [SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Stop accepting, let requests in flight finish, exit; a second one exits at once.
    Drain,
    ReopenLog,
    /// Load the configuration again.
    Reload,
    Ignore,
}

pub fn action(signal: i32) -> Action {
    match signal {
        SIGTERM | SIGINT | SIGQUIT => Action::Drain,
        SIGUSR1 => Action::ReopenLog,
        SIGHUP => Action::Reload,
        _ => Action::Ignore,
    }
}

/// The signal's conventional name, for log lines.
pub fn name(signal: i32) -> &'static str {
    match signal {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        SIGQUIT => "SIGQUIT",
        SIGHUP => "SIGHUP",
        SIGUSR1 => "SIGUSR1",
        SIGUSR2 => "SIGUSR2",
        _ => "a signal",
    }
}
