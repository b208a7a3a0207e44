//! The backend's error type: one variant per failing operation, each message says what to check.
use chorus_kernels::{DType, ReduceOp};

/// Every way an operation of the backend fails. New variants may be added (match with a `_` arm,
/// or on [`ChorusError::kind`], which is exhaustive); [`ChorusError::code`] names each variant
/// with a number that never changes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChorusError {
    // The messages below that print their cause do not also return it as `source()`: a report
    // that walks the chain (anyhow's `{:#}`) would print it twice.
    #[error("{}", store_failure(.0))]
    Store(chorus_bootstrap::BootstrapError),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("rank {rank} is out of range for a group of {size} ranks")]
    InvalidRank { rank: usize, size: usize },
    #[error("unsupported reduction: {0}")]
    Unsupported(chorus_kernels::KernelError),
    #[error("GPU {op} failed: {error}")]
    Device { op: &'static str, error: chorus_kernels::KernelError },
    #[error("reduce op {op:?} is not supported for dtype {dtype:?}")]
    UnsupportedOp { op: ReduceOp, dtype: DType },
    #[error("ranks disagree on {what} in {op}: rank {rank} (this rank) has {mine}, rank {peer} has {theirs} (every rank must call the same collectives in the same order with the same counts, dtypes, ops and roots); {op} failed on every rank that takes part in it, the group stays usable")]
    Mismatch { op: &'static str, what: &'static str, rank: usize, mine: String, peer: usize, theirs: String },
    #[error("rank {peer} found that the ranks disagree on {what} in {op} (its error names both values and ranks); {op} failed on every rank that takes part in it, the group stays usable")]
    PeerReportedMismatch { op: &'static str, peer: usize, what: &'static str },
    #[error("timed out after {waited_ms} ms in {op} waiting for {what} from rank {peer} (check that rank {peer} is alive and calls the same collectives in the same order; to wait longer, {knob})")]
    Timeout { op: &'static str, what: &'static str, peer: usize, waited_ms: u64, knob: crate::options::TimeoutKnob },
    #[error("rank {peer} failed during {op} ({why}); the group is unusable now")]
    PeerFailed { op: &'static str, peer: usize, why: String },
    #[error("the group was aborted ({0}); create a new group")]
    Aborted(String),
    #[error("setting up the {transport} transport to rank {peer} failed: {why}")]
    Connect { transport: &'static str, peer: usize, why: String },
    #[error("shared memory failed: {0} (check that /dev/shm is mounted and has free space)")]
    Shm(String),
    #[error("socket I/O with rank {peer} failed: {error}")]
    Io { peer: usize, error: std::io::Error },
    #[error("rank {peer} sent a malformed point-to-point chunk ({why}); check that every rank runs the same chorus build")]
    Protocol { peer: usize, why: String },
    #[error("the process group has been destroyed; create a new one")]
    Destroyed,
    #[error("the operation was not completed: {0}")]
    Incomplete(String),
    #[error("{op} ran as attempt {mine} (recovery rounds applied) but a peer already runs attempt {theirs}; recovering")]
    ViewChanged { op: &'static str, mine: u64, theirs: u64 },
    #[error("rank {peer} asked for recovery round {round} during {op}")]
    RecoveryRequested { op: &'static str, peer: usize, round: u64 },
    #[error("{op} cannot complete after rank(s) {failed:?} failed: some survivors lack its result and its in-place input was too large to save (CHORUS_FT_SAVE_LIMIT); every survivor gets this error and the group continues at epoch {epoch}")]
    NotRecoverable { op: &'static str, failed: Vec<usize>, epoch: u64 },
    #[error("{op} cannot complete: its root, rank {root}, is not an active member of the group (it failed or was removed); every survivor gets this error")]
    RootInactive { op: &'static str, root: usize },
    #[error("{op} cannot run: rank {peer} is not an active member of the group at epoch {epoch} (it failed or was removed; a replacement can rejoin)")]
    PeerInactive { op: &'static str, peer: usize, epoch: u64 },
    #[error("this rank was removed from the group at epoch {epoch} (it was suspected dead); start the process again as a replacement to rejoin (CHORUS_JOIN=1, ProcessGroup::join, or chorus.join_group under torch)")]
    Excluded { epoch: u64 },
    #[error("{op} failed because rank(s) {failed:?} failed (failure policy `abort`); the group continues at epoch {epoch} without them")]
    FailedByPolicy { op: &'static str, failed: Vec<usize>, epoch: u64 },
    #[error("{op} timed out: a rank waited past its deadline for rank(s) {waited_for:?}, which did not take part in time (check that every rank calls the same collectives in the same order; if they are only slow, to wait longer, {knob}); every rank gets this error for this {op} (failed and removed meanwhile: {failed:?}) and the group continues at epoch {epoch} with the next collective")]
    AgreedTimeout { op: &'static str, waited_for: Vec<usize>, failed: Vec<usize>, epoch: u64, knob: crate::options::TimeoutKnob },
}

/// The class of a failure: what a caller can do about it. The C ABI's status codes are these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A bad pointer, size, rank, root, dtype or list length: fix the call.
    InvalidArgument,
    /// An op/dtype pair or a device feature this build or machine does not have.
    Unsupported,
    /// The ranks called different collectives or passed different arguments.
    Mismatch,
    /// An operation ran past its deadline.
    Timeout,
    /// A peer failed, the view moved, or the group was aborted.
    PeerFailed,
    /// Rendezvous through the store failed.
    Store,
    /// Connecting or moving data (socket, shared memory, device) failed.
    Transport,
    /// The group was destroyed.
    Destroyed,
    /// The operation was abandoned before it completed.
    Incomplete,
}

impl ChorusError {
    /// A stable number for this variant (for logs, metrics and bindings): numbers are never
    /// reused or renumbered; a new variant takes the next free one.
    pub fn code(&self) -> u32 {
        match self {
            ChorusError::Store(_) => 1,
            ChorusError::InvalidArgument(_) => 2,
            ChorusError::InvalidRank { .. } => 3,
            ChorusError::Unsupported(_) => 4,
            ChorusError::Device { .. } => 5,
            ChorusError::UnsupportedOp { .. } => 6,
            ChorusError::Mismatch { .. } => 7,
            ChorusError::PeerReportedMismatch { .. } => 8,
            ChorusError::Timeout { .. } => 9,
            ChorusError::PeerFailed { .. } => 10,
            ChorusError::Aborted(_) => 11,
            ChorusError::Connect { .. } => 12,
            ChorusError::Shm(_) => 13,
            ChorusError::Io { .. } => 14,
            ChorusError::Destroyed => 15,
            ChorusError::Incomplete(_) => 16,
            ChorusError::ViewChanged { .. } => 17,
            ChorusError::RecoveryRequested { .. } => 18,
            ChorusError::NotRecoverable { .. } => 19,
            ChorusError::RootInactive { .. } => 20,
            ChorusError::PeerInactive { .. } => 21,
            ChorusError::Excluded { .. } => 22,
            ChorusError::FailedByPolicy { .. } => 23,
            ChorusError::Protocol { .. } => 24,
            ChorusError::AgreedTimeout { .. } => 25,
        }
    }

    /// The class of this failure. Exhaustive over the variants (and over the device errors), so
    /// a new variant is classified where it is added.
    pub fn kind(&self) -> ErrorKind {
        use chorus_kernels::KernelError as K;
        match self {
            ChorusError::InvalidArgument(_) | ChorusError::InvalidRank { .. } => ErrorKind::InvalidArgument,
            ChorusError::Unsupported(_) | ChorusError::UnsupportedOp { .. } => ErrorKind::Unsupported,
            ChorusError::Mismatch { .. } | ChorusError::PeerReportedMismatch { .. } => ErrorKind::Mismatch,
            ChorusError::Timeout { .. } | ChorusError::AgreedTimeout { .. } => ErrorKind::Timeout,
            ChorusError::PeerFailed { .. } | ChorusError::Aborted(_) => ErrorKind::PeerFailed,
            // Membership outcomes: peers failed or the view moved.
            ChorusError::ViewChanged { .. }
            | ChorusError::RecoveryRequested { .. }
            | ChorusError::NotRecoverable { .. }
            | ChorusError::RootInactive { .. }
            | ChorusError::PeerInactive { .. }
            | ChorusError::Excluded { .. }
            | ChorusError::FailedByPolicy { .. } => ErrorKind::PeerFailed,
            ChorusError::Store(_) => ErrorKind::Store,
            ChorusError::Connect { .. } | ChorusError::Shm(_) | ChorusError::Io { .. } | ChorusError::Protocol { .. } => ErrorKind::Transport,
            ChorusError::Destroyed => ErrorKind::Destroyed,
            ChorusError::Incomplete(_) => ErrorKind::Incomplete,
            ChorusError::Device { error, .. } => match error {
                K::CollectiveTimeout { .. } => ErrorKind::Timeout,
                K::CollectiveAborted { .. } => ErrorKind::PeerFailed,
                K::CudaUnavailable(_) | K::Unsupported { .. } => ErrorKind::Unsupported,
                K::InvalidArgument { .. } => ErrorKind::InvalidArgument,
                K::LengthMismatch { .. } | K::CudaCompile { .. } | K::Cuda { .. } | K::CommSetup(_) => ErrorKind::Transport,
            },
        }
    }

    /// Errors that mean "a peer failed or the view moved": the operation is recovered (re-run
    /// or committed by agreement) instead of failing.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            ChorusError::PeerFailed { .. } | ChorusError::ViewChanged { .. } | ChorusError::RecoveryRequested { .. } | ChorusError::Io { .. }
        )
    }
}

pub type Result<T> = std::result::Result<T, ChorusError>;

impl From<chorus_bootstrap::BootstrapError> for ChorusError {
    fn from(e: chorus_bootstrap::BootstrapError) -> Self {
        ChorusError::Store(e)
    }
}

impl From<chorus_kernels::KernelError> for ChorusError {
    fn from(e: chorus_kernels::KernelError) -> Self {
        ChorusError::Unsupported(e)
    }
}

#[cfg(test)]
mod tests {
    use super::{ChorusError, ErrorKind};

    #[test]
    fn codes_are_distinct_and_kinds_match_the_c_abi_classes() {
        let errors = [
            ChorusError::InvalidArgument("x".into()),
            ChorusError::InvalidRank { rank: 3, size: 2 },
            ChorusError::Timeout { op: "all_reduce", what: "a chunk", peer: 1, waited_ms: 5, knob: crate::options::TimeoutKnob::Env },
            ChorusError::PeerFailed { op: "all_reduce", peer: 1, why: "gone".into() },
            ChorusError::Protocol { peer: 1, why: "bad header".into() },
            ChorusError::Destroyed,
            ChorusError::Excluded { epoch: 2 },
            ChorusError::Incomplete("x".into()),
        ];
        let mut codes: Vec<u32> = errors.iter().map(ChorusError::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), errors.len(), "two variants share a code");
        let kinds: Vec<ErrorKind> = errors.iter().map(ChorusError::kind).collect();
        assert_eq!(
            kinds,
            [
                ErrorKind::InvalidArgument,
                ErrorKind::InvalidArgument,
                ErrorKind::Timeout,
                ErrorKind::PeerFailed,
                ErrorKind::Transport,
                ErrorKind::Destroyed,
                ErrorKind::PeerFailed,
                ErrorKind::Incomplete
            ]
        );
        assert_eq!(ChorusError::Destroyed.code(), 15, "codes are stable: never renumber a variant");
    }
}

/// A store error in words: at rendezvous, what to check in the configuration; once the group
/// exists, the store's own account of its lost host.
fn store_failure(e: &chorus_bootstrap::BootstrapError) -> String {
    match e {
        chorus_bootstrap::BootstrapError::Lost { .. } => e.to_string(),
        _ => format!("rendezvous through the store failed: {e} (check that every rank uses the same MASTER_ADDR/MASTER_PORT or store address and that the store is running)"),
    }
}
