//! The media port's connections that have not started a stream yet (the WebSocket handshake,
//! then Twilio's `start`): bounded in all and per source, so that idle sockets cannot take the
//! places real calls need. Pure: the acceptor holds the table and closes what it evicts.
//!
//! When a source already has its share waiting, or every place is taken, the *oldest* waiting
//! connection (of that source, else of all) makes room for the new one, rather than the new
//! one being refused: an idle flood then only ever displaces itself, while a real call, whose
//! handshake and `start` take one round trip, is through long before it could become the
//! oldest. Each eviction is returned, with why, to be closed, logged and counted.

use std::collections::VecDeque;
use std::net::IpAddr;

use crate::metrics::MediaDrop;

/// A connection that was made to leave, with its source and why.
#[derive(Debug, PartialEq, Eq)]
pub struct Evicted<H> {
    pub handle: H,
    pub source: IpAddr,
    pub why: MediaDrop,
}

#[derive(Debug)]
struct Entry<H> {
    ticket: u64,
    source: IpAddr,
    handle: H,
}

/// The waiting connections, oldest first; `H` is what closes one (a clone of its socket).
#[derive(Debug)]
pub struct Pending<H> {
    total: usize,
    per_source: usize,
    next_ticket: u64,
    entries: VecDeque<Entry<H>>,
}

impl<H> Pending<H> {
    /// At most `total` waiting connections, at most `per_source` of them from one source.
    pub fn new(total: usize, per_source: usize) -> Pending<H> {
        Pending {
            total: total.max(1),
            per_source: per_source.clamp(1, total.max(1)),
            next_ticket: 1,
            entries: VecDeque::new(),
        }
    }

    /// A new connection from `source`: returns its ticket (for [`Pending::rekey`] and
    /// [`Pending::release`]) and the connection evicted to make room, if any.
    pub fn admit(&mut self, source: IpAddr, handle: H) -> (u64, Option<Evicted<H>>) {
        let evicted = self.make_room(source, 0);
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.entries.push_back(Entry {
            ticket,
            source,
            handle,
        });
        (ticket, evicted)
    }

    /// The connection's source turned out to be `source` (the address a trusted proxy
    /// forwarded): it now counts against that source's share, taking its place there as a
    /// newcomer would (the source's oldest other connection may be evicted).
    pub fn rekey(&mut self, ticket: u64, source: IpAddr) -> Option<Evicted<H>> {
        let current = self.entries.iter().find(|e| e.ticket == ticket)?.source;
        if current == source {
            return None;
        }
        let evicted = if self.count(source) >= self.per_source {
            self.evict_oldest(
                |e| e.source == source && e.ticket != ticket,
                MediaDrop::PeerLimit,
            )
        } else {
            None
        };
        if let Some(entry) = self.entries.iter_mut().find(|e| e.ticket == ticket) {
            entry.source = source;
        }
        evicted
    }

    /// The connection no longer waits (its stream started, or it ended). Returns whether it
    /// was still here (`false`: it had been evicted).
    pub fn release(&mut self, ticket: u64) -> bool {
        match self.entries.iter().position(|e| e.ticket == ticket) {
            Some(pos) => {
                self.entries.remove(pos);
                true
            }
            None => false,
        }
    }

    /// Connections waiting, in all.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Connections waiting from `source`.
    pub fn count(&self, source: IpAddr) -> usize {
        self.entries.iter().filter(|e| e.source == source).count()
    }

    fn make_room(&mut self, source: IpAddr, except: u64) -> Option<Evicted<H>> {
        if self.count(source) >= self.per_source {
            return self.evict_oldest(
                |e| e.source == source && e.ticket != except,
                MediaDrop::PeerLimit,
            );
        }
        if self.entries.len() >= self.total {
            return self.evict_oldest(|e| e.ticket != except, MediaDrop::GlobalLimit);
        }
        None
    }

    fn evict_oldest(
        &mut self,
        which: impl Fn(&Entry<H>) -> bool,
        why: MediaDrop,
    ) -> Option<Evicted<H>> {
        let pos = self.entries.iter().position(which)?;
        self.entries.remove(pos).map(|e| Evicted {
            handle: e.handle,
            source: e.source,
            why,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn a_source_over_its_share_displaces_its_own_oldest_connection_only() {
        let mut pending = Pending::new(10, 3);
        for handle in 0..3 {
            assert_eq!(pending.admit(ip(1), handle).1, None);
        }
        pending.admit(ip(2), 100);
        let (_, evicted) = pending.admit(ip(1), 3);
        assert_eq!(
            evicted,
            Some(Evicted {
                handle: 0,
                source: ip(1),
                why: MediaDrop::PeerLimit
            })
        );
        // A flood of a thousand from one source: it never holds more than its share, and the
        // other source's connection stays.
        for handle in 4..1004 {
            pending.admit(ip(1), handle);
        }
        assert_eq!(pending.count(ip(1)), 3);
        assert_eq!(pending.count(ip(2)), 1);
    }

    #[test]
    fn when_every_place_is_taken_the_oldest_makes_room() {
        let mut pending = Pending::new(4, 2);
        let mut tickets = Vec::new();
        for (n, source) in [1, 1, 2, 2].into_iter().enumerate() {
            tickets.push(pending.admit(ip(source), n).0);
        }
        let (_, evicted) = pending.admit(ip(3), 9);
        assert_eq!(
            evicted.map(|e| (e.handle, e.why)),
            Some((0, MediaDrop::GlobalLimit))
        );
        assert_eq!(pending.len(), 4);
        // The evicted one's own release says it was gone; the others leave normally.
        assert!(!pending.release(tickets[0]));
        assert!(pending.release(tickets[1]));
        assert_eq!(pending.len(), 3);
    }

    #[test]
    fn a_connection_forwarded_by_the_proxy_counts_against_its_real_source() {
        let proxy = IpAddr::from([127, 0, 0, 1]);
        let mut pending = Pending::new(10, 2);
        let (a, _) = pending.admit(proxy, 'a');
        let (b, _) = pending.admit(proxy, 'b');
        assert_eq!(pending.rekey(a, ip(7)), None);
        assert_eq!(pending.rekey(b, ip(7)), None);
        assert_eq!(pending.count(proxy), 0);
        // The same source again through the proxy: its oldest makes room.
        let (c, _) = pending.admit(proxy, 'c');
        let evicted = pending.rekey(c, ip(7));
        assert_eq!(evicted.map(|e| e.handle), Some('a'));
        assert_eq!(pending.count(ip(7)), 2);
        // Rekeying to the same source, or an unknown ticket, changes nothing.
        assert_eq!(pending.rekey(c, ip(7)), None);
        assert_eq!(pending.rekey(999, ip(8)), None);
    }
}
