//! The status page's feed of failovers: the newest `FEED` requests that needed more than one
//! attempt, each a fixed-size copy, in a ring that allocates nothing once made.

use super::{Ended, FEED};
use crate::ids::TargetId;
use crate::observe::accesslog::Trace;

/// A request that needed more than one attempt, for the status page's feed.
#[derive(Clone, Copy)]
pub struct Failover {
    pub at: f64,
    pub seq: u64,
    /// The status the client got (0: none, the connection closed).
    pub status: u16,
    pub trace: Trace,
    /// The target whose answer the client got, if one did.
    pub answered_by: Option<TargetId>,
    request: [u8; 80],
    request_len: u8,
}

impl Failover {
    /// The start of the request line: method and path, cut at 80 bytes.
    pub fn request(&self) -> &[u8] {
        &self.request[..usize::from(self.request_len)]
    }
}

/// The ring of failovers, and how many there were in all.
#[derive(Clone)]
pub struct Feed {
    ring: Box<[Option<Failover>; FEED]>,
    /// Where the next failover goes.
    next: usize,
    /// Failovers ever, kept or not.
    pub total: u64,
}

impl Default for Feed {
    fn default() -> Feed {
        Feed { ring: Box::new([None; FEED]), next: 0, total: 0 }
    }
}

impl Feed {
    /// Keeps a copy of a request that failed over, in place of the oldest.
    pub(super) fn push(&mut self, e: &Ended<'_>) {
        let mut request = [0u8; 80];
        let len = e.request_line.len().min(request.len());
        request[..len].copy_from_slice(&e.request_line[..len]);
        self.ring[self.next] = Some(Failover {
            at: super::unix_now(),
            seq: e.seq,
            status: e.status,
            trace: *e.trace,
            answered_by: e.answered_by,
            request,
            request_len: len as u8,
        });
        self.next = (self.next + 1) % FEED;
        self.total += 1;
    }

    /// The failovers kept, newest first.
    pub fn iter(&self) -> impl Iterator<Item = &Failover> {
        (1..=FEED).filter_map(move |back| self.ring[(self.next + FEED - back) % FEED].as_ref())
    }

    /// Adds another worker's: the newest `FEED` of both are kept.
    pub(super) fn absorb(&mut self, other: &Feed) {
        self.total += other.total;
        let mut both: Vec<Failover> = self.iter().chain(other.iter()).copied().collect();
        both.sort_by(|a, b| b.at.total_cmp(&a.at));
        both.truncate(FEED);
        *self.ring = [None; FEED];
        for (i, f) in both.into_iter().rev().enumerate() {
            self.ring[i] = Some(f);
        }
        self.next = self.ring.iter().position(Option::is_none).unwrap_or(0);
    }
}
