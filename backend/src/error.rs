//! The backend's error type: one variant per failing operation, each message says what to check.
use chorus_kernels::{DType, ReduceOp};

#[derive(Debug, thiserror::Error)]
pub enum ChorusError {
    #[error("rendezvous through the store failed: {0} (check that every rank uses the same MASTER_ADDR/MASTER_PORT or store address and that the store is running)")]
    Store(#[from] chorus_bootstrap::BootstrapError),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("rank {rank} is out of range for a group of {size} ranks")]
    InvalidRank { rank: usize, size: usize },
    #[error("unsupported reduction: {0}")]
    Unsupported(#[from] chorus_kernels::KernelError),
    #[error("GPU {op} failed: {source}")]
    Device { op: &'static str, #[source] source: chorus_kernels::KernelError },
    #[error("reduce op {op:?} is not supported for dtype {dtype:?}")]
    UnsupportedOp { op: ReduceOp, dtype: DType },
    #[error("ranks disagree on {what} in {op}: this rank has {mine:#x}, rank {peer} sent {theirs:#x} (every rank must call the same collectives in the same order with the same counts, dtypes, ops and roots)")]
    Mismatch { op: &'static str, what: &'static str, peer: usize, mine: u64, theirs: u64 },
    #[error("rank {peer} reported that the ranks disagree on the arguments of {op} (see rank {peer}'s error for details); the group is unusable now")]
    PeerReportedMismatch { op: &'static str, peer: usize },
    #[error("timed out after {waited_ms} ms in {op} waiting for {what} from rank {peer} (check that rank {peer} is alive and calls the same collectives in the same order; raise the timeout with CHORUS_TIMEOUT_MS)")]
    Timeout { op: &'static str, what: &'static str, peer: usize, waited_ms: u64 },
    #[error("rank {peer} failed during {op} ({why}); the group is unusable now")]
    PeerFailed { op: &'static str, peer: usize, why: String },
    #[error("the group was aborted ({0}); create a new group")]
    Aborted(String),
    #[error("setting up the {transport} transport to rank {peer} failed: {why}")]
    Connect { transport: &'static str, peer: usize, why: String },
    #[error("shared memory failed: {0} (check that /dev/shm is mounted and has free space)")]
    Shm(String),
    #[error("socket I/O with rank {peer} failed: {source}")]
    Io { peer: usize, #[source] source: std::io::Error },
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
    #[error("this rank was removed from the group at epoch {epoch} (it was suspected dead); start it again with join_group to rejoin")]
    Excluded { epoch: u64 },
    #[error("{op} failed because rank(s) {failed:?} failed (failure policy `abort`); the group continues at epoch {epoch} without them")]
    FailedByPolicy { op: &'static str, failed: Vec<usize>, epoch: u64 },
}

impl ChorusError {
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
