//! The one place that says what a `mio::Token` means. The low three bits name the kind of
//! socket, the rest is its key in that kind's slab, or the listener's number.

use mio::Token;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A client connection: key into the session slab.
    Client(usize),
    /// An upstream connection: key into the upstream slot slab.
    Upstream(usize),
    /// A health probe: key into the probe slab.
    Probe(usize),
    /// A listening socket, by its number (the proxy's listener is 0; more come with the admin
    /// and TLS listeners).
    Listener(usize),
    Waker,
    Signals,
    /// An admin connection: key into the admin slab.
    Admin(usize),
}

const BITS: usize = 3;
const CLIENT: usize = 0;
const UPSTREAM: usize = 1;
const PROBE: usize = 2;
const LISTENER: usize = 3;
const WAKER: usize = 4;
const SIGNALS: usize = 5;
const ADMIN: usize = 6;

pub fn token(kind: Kind) -> Token {
    Token(match kind {
        Kind::Client(key) => key << BITS | CLIENT,
        Kind::Upstream(key) => key << BITS | UPSTREAM,
        Kind::Probe(key) => key << BITS | PROBE,
        Kind::Listener(n) => n << BITS | LISTENER,
        Kind::Waker => WAKER,
        Kind::Signals => SIGNALS,
        Kind::Admin(key) => key << BITS | ADMIN,
    })
}

/// What a token stands for; `None` for one the proxy never made.
pub fn decode(token: Token) -> Option<Kind> {
    let key = token.0 >> BITS;
    Some(match token.0 & ((1 << BITS) - 1) {
        CLIENT => Kind::Client(key),
        UPSTREAM => Kind::Upstream(key),
        PROBE => Kind::Probe(key),
        LISTENER => Kind::Listener(key),
        WAKER => Kind::Waker,
        SIGNALS => Kind::Signals,
        ADMIN => Kind::Admin(key),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        for kind in [
            Kind::Client(0),
            Kind::Client(12345),
            Kind::Upstream(0),
            Kind::Upstream(7),
            Kind::Probe(3),
            Kind::Listener(0),
            Kind::Listener(2),
            Kind::Waker,
            Kind::Signals,
            Kind::Admin(9),
        ] {
            assert_eq!(decode(token(kind)), Some(kind));
        }
        assert_eq!(decode(Token(7)), None);
    }
}
