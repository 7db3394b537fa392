//! A session after a `101 Switching Protocols`: bytes both ways as they come, each side's close
//! passed on once what it sent before is delivered, until both have closed.

use super::{Closed, Mode, Session, Step};
use crate::proxy::exchange;
use crate::proxy::Ctx;
use crate::runtime::buffer::{self, Buffer};
use crate::runtime::ready::Io;
use log::debug;

impl Session {
    /// The target agreed to switch protocols: from here on the session relays bytes both ways.
    /// Whatever the client sent after its request head, and the target after its `101`, is
    /// the new protocol's already.
    pub(super) fn start_tunnel(&mut self, cx: &mut Ctx<'_>) -> Step {
        let Mode::Exchange(mut ex) = std::mem::replace(&mut self.mode, Mode::Waiting) else {
            return Err(Closed);
        };
        debug!("{}: request #{} switched protocols: a tunnel to {}", self.peer(), ex.seq, cx.targets.url(ex.target));
        // A tunnel may idle for an hour: of its request head it keeps what its log line says,
        // and the head's buffer goes back to the pool.
        ex.log_head = exchange::log_head(self.uout.as_ref().map_or(&[][..], Buffer::data));
        buffer::release(&mut self.uout, cx.buffers);
        cx.metrics.tunnel_opened();
        self.mode = Mode::Tunnel(ex);
        Ok(true)
    }

    /// One pass of a tunnel: each direction moves what it can, and a side's close is passed on
    /// once everything it sent before has been delivered (half-close). The session ends when
    /// both directions are closed, or either side fails.
    pub(super) fn tunnel(&mut self, cx: &mut Ctx<'_>) -> Step {
        let (Mode::Tunnel(ex), Some(up)) = (&mut self.mode, self.up.as_mut()) else {
            return Err(Closed);
        };
        let mut moved = false;
        // Client to target.
        let cin = buffer::ensure(&mut self.cin, cx.buffers);
        if !cin.is_empty() {
            match up.ready.write(&mut up.stream, cin.data(), &[]) {
                Io::Bytes(n) => {
                    cin.consume(n);
                    ex.body_total += n as u64;
                    moved = true;
                }
                Io::Failed(_) => return Err(Closed),
                Io::Retry => moved = true,
                Io::Blocked | Io::Eof => {}
            }
        }
        if cin.is_empty() && !self.client.eof {
            match self.client.read(cin.space()) {
                Io::Bytes(n) => {
                    cin.fill(n);
                    moved = true;
                }
                Io::Eof => {
                    self.client.eof = true;
                    moved = true;
                }
                Io::Failed(_) => return Err(Closed),
                Io::Retry => moved = true,
                Io::Blocked => {}
            }
        }
        if self.client.eof && cin.is_empty() && !ex.upload_cut {
            // The client is done sending: the target hears it, and may still answer.
            let _ = up.stream.shutdown(std::net::Shutdown::Write);
            ex.upload_cut = true;
            moved = true;
        }
        // Target to client, after the `101` head in `cout`.
        let cout = self.cout.as_ref().map_or(&[][..], Buffer::data);
        let uin = buffer::ensure(&mut self.uin, cx.buffers);
        if !cout.is_empty() || !uin.is_empty() {
            match self.client.write(cout, uin.data(), cx.record) {
                Io::Bytes(n) => {
                    let from_head = n.min(cout.len());
                    if let Some(cout) = self.cout.as_mut() {
                        cout.consume(from_head);
                    }
                    uin.consume(n - from_head);
                    ex.sent_bytes += (n - from_head) as u64;
                    moved = true;
                }
                Io::Failed(_) => return Err(Closed),
                Io::Retry => moved = true,
                Io::Blocked | Io::Eof => {}
            }
        }
        if uin.is_empty() && !ex.upstream_eof {
            match up.ready.read(&mut up.stream, uin.space()) {
                Io::Bytes(n) => {
                    uin.fill(n);
                    moved = true;
                }
                Io::Eof => {
                    ex.upstream_eof = true;
                    moved = true;
                }
                Io::Failed(_) => return Err(Closed),
                Io::Retry => moved = true,
                Io::Blocked => {}
            }
        }
        let delivered =
            uin.is_empty() && self.cout.as_ref().is_none_or(Buffer::is_empty) && !self.client.pending_output();
        if ex.upstream_eof && delivered {
            if ex.upload_cut && !self.client.has_pending_output() {
                return Err(Closed);
            }
            if !ex.client_shut {
                // The target is done: the client hears it, and may still send.
                let _ = self.client.shutdown_write();
                ex.client_shut = true;
                moved = true;
            }
        }
        Ok(moved)
    }
}
