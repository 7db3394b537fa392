//! The one place that says what a `mio::Token` means. The low two bits name the kind of
//! socket, the rest is its key in that kind's slab.

use mio::Token;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A client connection: key into the session slab.
    Client(usize),
    /// An upstream connection: key into the upstream slot slab.
    Upstream(usize),
    /// A health probe: key into the probe slab.
    Probe(usize),
    Listener,
    Waker,
    Signals,
}

const CLIENT: usize = 0;
const UPSTREAM: usize = 1;
const PROBE: usize = 2;
const FIXED: usize = 3;

pub fn token(kind: Kind) -> Token {
    Token(match kind {
        Kind::Client(key) => key << 2 | CLIENT,
        Kind::Upstream(key) => key << 2 | UPSTREAM,
        Kind::Probe(key) => key << 2 | PROBE,
        Kind::Listener => FIXED,
        Kind::Waker => 1 << 2 | FIXED,
        Kind::Signals => 2 << 2 | FIXED,
    })
}

pub fn decode(token: Token) -> Kind {
    let key = token.0 >> 2;
    match token.0 & 3 {
        CLIENT => Kind::Client(key),
        UPSTREAM => Kind::Upstream(key),
        PROBE => Kind::Probe(key),
        _ => match key {
            0 => Kind::Listener,
            1 => Kind::Waker,
            _ => Kind::Signals,
        },
    }
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
            Kind::Listener,
            Kind::Waker,
            Kind::Signals,
        ] {
            assert_eq!(decode(token(kind)), kind);
        }
    }
}
