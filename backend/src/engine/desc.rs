//! What a collective is, as every rank must agree on it: its kind, dtype, reduction op, root and
//! size. Every chunk of a collective carries the whole descriptor in its header (two words), so
//! a receiver that disagrees names the argument and both values, at no extra cost. Ranks that
//! would only wait for each other (different roots or kinds, both receiving) learn each other's
//! descriptor from a probe: a header-only chunk a rank sends to the peer it has waited on for a
//! while (`Comm::wait_chunk`).
use chorus_kernels::{DType, ReduceOp};

/// Collective kinds. The numbers travel in chunk headers: never renumber one.
pub mod kind {
    pub const ALL_REDUCE: u8 = 1;
    pub const REDUCE: u8 = 2;
    pub const BROADCAST: u8 = 3;
    pub const ALL_GATHER: u8 = 4;
    pub const REDUCE_SCATTER: u8 = 5;
    pub const ALL_TO_ALL: u8 = 6;
    pub const GATHER: u8 = 7;
    pub const SCATTER: u8 = 8;
    pub const BARRIER: u8 = 9;
    pub const ALL_TO_ALL_V: u8 = 10;
    /// A rank that rejected its own arguments after the collective was numbered (an
    /// `all_to_all_v` whose block to itself and from itself differ): its probes say so.
    pub const REJECTED: u8 = 0xff;
}

fn kind_name(k: u8) -> String {
    let name = match k {
        kind::ALL_REDUCE => "all_reduce",
        kind::REDUCE => "reduce",
        kind::BROADCAST => "broadcast",
        kind::ALL_GATHER => "all_gather",
        kind::REDUCE_SCATTER => "reduce_scatter",
        kind::ALL_TO_ALL => "all_to_all",
        kind::GATHER => "gather",
        kind::SCATTER => "scatter",
        kind::BARRIER => "barrier",
        kind::ALL_TO_ALL_V => "all_to_all_v",
        kind::REJECTED => "arguments it rejected (see that rank's error)",
        0 => "no collective",
        k => return format!("collective kind {k}"),
    };
    name.to_string()
}

/// A collective's arguments that every rank must pass alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpDesc {
    pub kind: u8,
    /// `None` for the byte forms (`broadcast_raw`, ...), which know no dtype: a rank that passes
    /// one agrees with any dtype of the same size in bytes.
    pub dtype: Option<DType>,
    pub op: Option<ReduceOp>,
    pub root: Option<usize>,
    /// The size every rank passes alike, in bytes: the buffer (all_reduce, reduce, broadcast),
    /// one rank's block (all_gather, gather: the input; reduce_scatter, scatter: the output), the
    /// input (all_to_all); 0 where sizes are per peer (all_to_all_v: checked chunk by chunk).
    pub bytes: u64,
}

/// `offset` of a probe chunk's header (a collective's data chunks have offset 0).
pub const PROBE: u64 = u64::MAX;

impl OpDesc {
    pub fn new(kind: u8, dtype: Option<DType>, op: Option<ReduceOp>, root: Option<usize>, bytes: u64) -> OpDesc {
        OpDesc { kind, dtype, op, root, bytes }
    }

    /// The header words: kind, dtype, op and root packed in the first, the size in the second.
    pub fn words(&self) -> [u64; 2] {
        let code = |v: Option<u8>| v.map_or(0, |v| v as u64 + 1);
        // Roots beyond 2^32 - 2 cannot exist (groups are far smaller); they saturate.
        let root = self.root.map_or(0, |r| (r as u64).min(u32::MAX as u64 - 1) + 1);
        [self.kind as u64 | code(self.dtype.map(|d| d as u8)) << 8 | code(self.op.map(|o| o as u8)) << 16 | root << 32, self.bytes]
    }

    pub fn from_words(w: [u64; 2]) -> OpDesc {
        let field = |shift: u32| ((w[0] >> shift) & 0xff) as u8;
        let root = w[0] >> 32;
        OpDesc {
            kind: field(0),
            dtype: field(8).checked_sub(1).and_then(DType::from_u8),
            op: field(16).checked_sub(1).and_then(ReduceOp::from_u8),
            root: (root != 0).then(|| (root - 1) as usize),
            bytes: w[1],
        }
    }

    fn size(&self) -> String {
        match self.dtype {
            Some(d) if self.bytes.is_multiple_of(d.size() as u64) => format!("{} elements of {} ({} bytes)", self.bytes / d.size() as u64, d.name(), self.bytes),
            _ => format!("{} bytes", self.bytes),
        }
    }

    /// The first argument on which `self` (this rank's) and `theirs` disagree: its name, this
    /// rank's value and theirs. `None` when they agree (a byte form agrees with any dtype).
    pub fn disagreement(&self, theirs: &OpDesc) -> Option<(&'static str, String, String)> {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "none".to_string());
        if self.kind != theirs.kind {
            return Some(("the collective", kind_name(self.kind), kind_name(theirs.kind)));
        }
        if let (Some(a), Some(b)) = (self.dtype, theirs.dtype) {
            if a != b {
                return Some(("the dtype", a.name().to_string(), b.name().to_string()));
            }
        }
        if self.op != theirs.op {
            return Some(("the reduction op", opt(self.op.map(|o| o.to_string())), opt(theirs.op.map(|o| o.to_string()))));
        }
        if self.root != theirs.root {
            return Some(("the root", opt(self.root.map(|r| format!("root {r}"))), opt(theirs.root.map(|r| format!("root {r}")))));
        }
        if self.bytes != theirs.bytes {
            return Some(("the count", self.size(), theirs.size()));
        }
        None
    }
}

/// Mismatch notices: a rank that finds a disagreement tells every peer through the abort signal
/// (every transport carries its code), with a code that names the collective (low bits of its
/// number) and what was found, so the peers fail that one collective only. Codes fit the 29
/// bits the narrowest transport carries.
pub mod notice {
    /// The low bits of an abort code that mark a mismatch notice (`signals::ABORT_MISMATCH`).
    pub const MARK: u64 = crate::transport::signals::ABORT_MISMATCH;
    const OP_BITS: u32 = 21;
    const WHATS: [&str; 8] = ["the arguments", "the collective", "the dtype", "the reduction op", "the root", "the count", "the message size", "the sequence of collectives"];

    pub fn encode(op_seq: u64, what: &str) -> u64 {
        let w = WHATS.iter().position(|&x| x == what).unwrap_or(0) as u64;
        MARK | w << 4 | (op_seq & ((1 << OP_BITS) - 1)) << 8
    }

    /// Whether `code` is a notice about collective `op_seq`, and what it found.
    pub fn about(code: u64, op_seq: u64) -> Option<&'static str> {
        let mine = (code & 0xf == MARK) && (code >> 8) & ((1 << OP_BITS) - 1) == op_seq & ((1 << OP_BITS) - 1);
        mine.then(|| WHATS[((code >> 4) & 0x7) as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_disagreements_name_the_argument() {
        let a = OpDesc::new(kind::REDUCE, Some(DType::F32), Some(ReduceOp::Sum), Some(3), 40);
        assert_eq!(OpDesc::from_words(a.words()), a);
        let untyped = OpDesc::new(kind::BROADCAST, None, None, Some(0), 8);
        assert_eq!(OpDesc::from_words(untyped.words()), untyped);
        assert!(untyped.disagreement(&OpDesc { dtype: Some(DType::I32), ..untyped }).is_none(), "a byte form agrees with any dtype");
        let (what, mine, theirs) = a.disagreement(&OpDesc { dtype: Some(DType::I32), ..a }).unwrap();
        assert_eq!((what, mine.as_str(), theirs.as_str()), ("the dtype", DType::F32.name(), DType::I32.name()));
        assert_eq!(a.disagreement(&OpDesc { root: Some(1), ..a }).unwrap().0, "the root");
        assert_eq!(a.disagreement(&OpDesc { bytes: 44, ..a }).unwrap().0, "the count");
        assert_eq!(a.disagreement(&OpDesc { kind: kind::GATHER, ..a }).unwrap().2, "gather");
    }

    #[test]
    fn notices_name_their_collective() {
        let c = notice::encode(77, "the root");
        assert!(c < 1 << 29);
        assert_eq!(notice::about(c, 77), Some("the root"));
        assert_eq!(notice::about(c, 78), None);
        assert_eq!(notice::about(crate::transport::signals::ABORT_DESTROYED, 77), None);
    }
}
