//! Batched credit return over a socket, as a state machine without I/O (tested in memory).
//!
//! The receiver of a pair's chunks owes the sender credits: how many chunks of each stream it has
//! consumed (monotonic counts, never a delta, so a credit sent twice or late does no harm). Every
//! frame the receiver writes carries its counts for both streams, so credits ride along with the
//! data, controls and aborts it sends anyway. A frame of its own (an ACK) goes out only when
//! `batch` consumed chunks of one stream are still unreported, or when the engine flushes: before
//! a wait that may block and when an operation ends. Then a rank that waits has reported
//! everything it consumed, so a peer's view of its free slots is what it would be with one ACK per
//! chunk whenever anybody could be waiting on it (the plan simulator's deadlock freedom carries
//! over), and a batch is at most half the ring, so a sender that streams always has the other half.
use crate::transport::signals::STREAMS;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credits {
    /// Chunks consumed per stream (what [`Credits::consume`] was last told).
    consumed: [u64; STREAMS],
    /// The counts the last frame written carried.
    reported: [u64; STREAMS],
    /// Unreported chunks of one stream that make an ACK frame due.
    batch: u64,
}

impl Credits {
    /// Credits for a ring of `slots` slots: an ACK is due once half the ring is unreported.
    pub fn new(slots: usize) -> Credits {
        Credits { consumed: [0; STREAMS], reported: [0; STREAMS], batch: (slots as u64 / 2).max(1) }
    }

    /// Records that chunks `0..consumed` of `stream` were consumed; whether an ACK frame is due now.
    pub fn consume(&mut self, stream: usize, consumed: u64) -> bool {
        self.consumed[stream] = self.consumed[stream].max(consumed);
        self.consumed[stream] - self.reported[stream] >= self.batch
    }

    /// Whether some consumed chunk has not been reported yet (a flush must write a frame).
    pub fn pending(&self) -> bool {
        self.consumed != self.reported
    }

    /// The counts a frame written now carries; they count as reported once it is written.
    pub fn carry(&mut self) -> [u64; STREAMS] {
        self.reported = self.consumed;
        self.consumed
    }
}

/// The receiving end: which carried counts are news (raise the sender's credit counters only
/// for those, so a frame without news rings no doorbell).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Received {
    seen: [u64; STREAMS],
}

impl Received {
    /// Per stream, the count `carried` raised it to (`None`: no news).
    pub fn news(&mut self, carried: [u64; STREAMS]) -> [Option<u64>; STREAMS] {
        std::array::from_fn(|s| {
            let raised = carried[s] > self.seen[s];
            if raised {
                self.seen[s] = carried[s];
            }
            raised.then_some(carried[s])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory pair: a sender with `slots` slots streaming `chunks` chunks to a receiver that
    /// consumes each one as soon as it is there; frames carry credits as the link's do. Returns
    /// the ACK frames written and whether the sender ever found no free slot while the receiver
    /// had consumed every chunk (a stall batching caused).
    fn stream(slots: u64, chunks: u64, data_back: bool) -> (u64, bool) {
        let mut rx = Credits::new(slots as usize);
        let mut seen = Received::default();
        let (mut sent, mut consumed, mut credit, mut acks, mut stalled) = (0u64, 0u64, 0u64, 0u64, false);
        while consumed < chunks {
            // The sender fills every free slot.
            while sent < chunks && sent < credit + slots {
                sent += 1;
            }
            if sent < chunks && sent == credit + slots && consumed == sent {
                stalled = true;
            }
            // The receiver consumes one chunk; a due credit goes out in an ACK frame, otherwise
            // (with traffic back) on the next data frame.
            consumed += 1;
            let due = rx.consume(0, consumed);
            if due || data_back {
                acks += u64::from(due && !data_back);
                if let [Some(v), _] = seen.news(rx.carry()) {
                    credit = v;
                }
            }
            // Nothing more to consume: the receiver is about to wait, so it flushes.
            if consumed == sent && rx.pending() {
                acks += 1;
                if let [Some(v), _] = seen.news(rx.carry()) {
                    credit = v;
                }
            }
        }
        (acks, stalled)
    }

    #[test]
    fn an_ack_is_due_once_half_the_ring_is_unreported() {
        let mut c = Credits::new(4);
        assert!(!c.pending());
        assert!(!c.consume(0, 1));
        assert!(c.pending());
        assert!(c.consume(0, 2), "two of four slots unreported");
        assert_eq!(c.carry(), [2, 0]);
        assert!(!c.pending());
        // Counts are monotonic: an older count changes nothing.
        assert!(!c.consume(0, 1));
        assert!(!c.pending());
        // Streams are counted apart.
        assert!(!c.consume(0, 3));
        assert!(!c.consume(1, 1));
        assert!(c.consume(1, 2));
        assert_eq!(c.carry(), [3, 2]);
        // A ring of one slot reports every chunk.
        let mut one = Credits::new(1);
        assert!(one.consume(1, 1));
    }

    #[test]
    fn only_raised_counts_are_news() {
        let mut r = Received::default();
        assert_eq!(r.news([0, 0]), [None, None]);
        assert_eq!(r.news([2, 0]), [Some(2), None]);
        assert_eq!(r.news([2, 1]), [None, Some(1)]);
        assert_eq!(r.news([1, 1]), [None, None], "a late frame with older counts");
        assert_eq!(r.news([5, 7]), [Some(5), Some(7)]);
    }

    #[test]
    fn streaming_sends_fewer_acks_and_never_stalls_a_sender() {
        for slots in [1u64, 2, 4, 8] {
            let (acks, stalled) = stream(slots, 64, false);
            assert!(!stalled, "{slots} slots: the sender waited for a credit the receiver held back");
            let batch = (slots / 2).max(1);
            assert!(acks <= 64 / batch + 1, "{slots} slots: {acks} ACK frames for 64 chunks");
            if slots >= 4 {
                assert!(acks < 64, "{slots} slots: no batching ({acks} ACK frames)");
            }
            // With data flowing back every credit rides on it: ACK frames only for a flush.
            let (acks, stalled) = stream(slots, 64, true);
            assert!(!stalled);
            assert_eq!(acks, 0, "{slots} slots");
        }
    }
}
