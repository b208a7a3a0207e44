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
    /// The store failed: rendezvous could not complete, or the store lost its host once the group
    /// exists.
    #[error("{}", store_failure(.0))]
    Store(chorus_bootstrap::BootstrapError),
    /// A call passed a bad argument (pointer, size, count, dtype or list length); the message says
    /// which.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A rank (peer, root or this rank) is not below the size of the group.
    #[error("rank {rank} is out of range for a group of {size} ranks")]
    InvalidRank {
        /// The rank that was asked for.
        rank: usize,
        /// The number of ranks in the group.
        size: usize,
    },
    /// The kernels cannot run this reduction (op, dtype or device feature missing in this build or
    /// machine).
    #[error("unsupported reduction: {0}")]
    Unsupported(chorus_kernels::KernelError),
    /// A GPU operation (setup, a copy or a collective) failed in the device layer.
    #[error("GPU {op} failed: {error}")]
    Device {
        /// The device operation that failed (e.g. `setup`, `collective`, or the collective's name).
        op: &'static str,
        /// The device layer's error.
        error: chorus_kernels::KernelError,
    },
    /// The reduce op is not defined for the dtype.
    #[error("reduce op {op:?} is not supported for dtype {dtype:?}")]
    UnsupportedOp {
        /// The reduce op that was asked for.
        op: ReduceOp,
        /// The element type it was asked for.
        dtype: DType,
    },
    /// This rank found that a peer passed different arguments to the same collective; every peer is
    /// told, so the collective fails on all ranks.
    #[error("ranks disagree on {what} in {op}: rank {rank} (this rank) has {mine}, rank {peer} has {theirs} (every rank must call the same collectives in the same order with the same counts, dtypes, ops and roots); {op} failed on every rank that takes part in it, the group stays usable")]
    Mismatch {
        /// The collective the ranks disagree on.
        op: &'static str,
        /// The argument that differs (e.g. count, dtype, op or root).
        what: &'static str,
        /// This rank.
        rank: usize,
        /// This rank's value, in words.
        mine: String,
        /// The rank whose chunk disagreed.
        peer: usize,
        /// The peer's value, in words.
        theirs: String,
    },
    /// A peer found that the ranks disagree on a collective's arguments and told this rank; that
    /// peer's own error names the values.
    #[error("rank {peer} found that the ranks disagree on {what} in {op} (its error names both values and ranks); {op} failed on every rank that takes part in it, the group stays usable")]
    PeerReportedMismatch {
        /// The collective the ranks disagree on.
        op: &'static str,
        /// The rank that found the disagreement.
        peer: usize,
        /// The argument that differs.
        what: &'static str,
    },
    /// An operation waited past its deadline for a peer.
    #[error("timed out after {waited_ms} ms in {op} waiting for {what} from rank {peer} (check that rank {peer} is alive and calls the same collectives in the same order; to wait longer, {knob})")]
    Timeout {
        /// The operation that timed out.
        op: &'static str,
        /// What it waited for (e.g. a chunk, a failure report).
        what: &'static str,
        /// The rank it waited for.
        peer: usize,
        /// How long it waited, in milliseconds.
        waited_ms: u64,
        /// The setting that chose the deadline, named in the message so the user knows what to
        /// raise.
        knob: crate::options::TimeoutKnob,
    },
    /// A peer died (its process exited, its connection closed or its heartbeat stopped) during an
    /// operation. With fault tolerance (the default) the group goes on without it: point-to-point
    /// operations with other peers are unaffected and the next collective removes it from the view
    /// (a replacement can rejoin); without, the group is unusable.
    #[error("rank {peer} failed during {op} ({why}); with fault tolerance (the default) the group goes on without it (its view drops the rank), otherwise the group is unusable now")]
    PeerFailed {
        /// The operation that was running (empty when the transport reports it before an operation
        /// names it).
        op: &'static str,
        /// The rank that failed.
        peer: usize,
        /// How the failure was noticed (e.g. the process exited, no heartbeat).
        why: String,
    },
    /// A rank aborted the group (it destroyed it or reported a failure); the group must be
    /// recreated.
    #[error("the group was aborted ({0}); create a new group")]
    Aborted(String),
    /// Setting up a transport link to a peer failed while the group was created.
    #[error("setting up the {transport} transport to rank {peer} failed: {why}")]
    Connect {
        /// The name of the transport (e.g. `tcp`, `shm`).
        transport: &'static str,
        /// The rank the link was to (`usize::MAX` when not yet known).
        peer: usize,
        /// What went wrong.
        why: String,
    },
    /// Creating or mapping a shared-memory segment failed.
    #[error("shared memory failed: {0} (check that /dev/shm is mounted and has free space)")]
    Shm(String),
    /// Sending to or receiving from a peer over a socket (or an RDMA link) failed.
    #[error("socket I/O with rank {peer} failed: {error}")]
    Io {
        /// The rank at the other end of the link.
        peer: usize,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A peer sent a point-to-point chunk whose header does not fit the stream; the receive it was
    /// streaming into fails.
    #[error("rank {peer} sent a malformed point-to-point chunk ({why}); check that every rank runs the same chorus build")]
    Protocol {
        /// The rank that sent the chunk.
        peer: usize,
        /// What is wrong with the chunk's header.
        why: String,
    },
    /// The group was destroyed before or during the call.
    #[error("the process group has been destroyed; create a new one")]
    Destroyed,
    /// The operation did not complete: a wait ran out, its result was already taken, or the engine
    /// abandoned it.
    #[error("the operation was not completed: {0}")]
    Incomplete(String),
    /// A peer runs a later attempt of this collective (more recovery rounds applied): this rank is
    /// behind and re-runs it after recovery.
    #[error("{op} ran as attempt {mine} (recovery rounds applied) but a peer already runs attempt {theirs}; recovering")]
    ViewChanged {
        /// The collective that was running.
        op: &'static str,
        /// This rank's attempt: the recovery rounds it had applied when the collective began.
        mine: u64,
        /// The attempt the peer's chunk carries.
        theirs: u64,
    },
    /// A peer asked for a recovery round that interrupts this operation; it is re-run or committed
    /// after recovery.
    #[error("rank {peer} asked for recovery round {round} during {op}")]
    RecoveryRequested {
        /// The operation that was interrupted.
        op: &'static str,
        /// The rank that asked for recovery.
        peer: usize,
        /// The recovery round it asked for.
        round: u64,
    },
    /// A collective interrupted by failures cannot be re-run: some survivors lack its result and
    /// its in-place input was not saved.
    #[error("{op} cannot complete after rank(s) {failed:?} failed: some survivors lack its result and its in-place input was too large to save (CHORUS_FT_SAVE_LIMIT); every survivor gets this error and the group continues at epoch {epoch}")]
    NotRecoverable {
        /// The collective that cannot complete.
        op: &'static str,
        /// The ranks that failed.
        failed: Vec<usize>,
        /// The membership epoch the group continues at.
        epoch: u64,
    },
    /// A rooted collective names a root that is no longer an active member of the group.
    #[error("{op} cannot complete: its root, rank {root}, is not an active member of the group (it failed or was removed); every survivor gets this error")]
    RootInactive {
        /// The collective that cannot complete.
        op: &'static str,
        /// The root it names.
        root: usize,
    },
    /// A point-to-point operation or collective names a peer that is no longer an active member of
    /// the group.
    #[error("{op} cannot run: rank {peer} is not an active member of the group at epoch {epoch} (it failed or was removed; a replacement can rejoin)")]
    PeerInactive {
        /// The operation that cannot run.
        op: &'static str,
        /// The rank it names.
        peer: usize,
        /// The membership epoch of the current view.
        epoch: u64,
    },
    /// This rank was removed from the group (it was suspected dead) and must rejoin as a
    /// replacement.
    #[error("this rank was removed from the group at epoch {epoch} (it was suspected dead); start the process again as a replacement to rejoin (CHORUS_JOIN=1, ProcessGroup::join, or chorus.join_group under torch)")]
    Excluded {
        /// The membership epoch at which this rank was removed.
        epoch: u64,
    },
    /// A joining process asked to be admitted, but the group had admitted other ranks since it
    /// linked to the members, so its request was turned down (it has no links to them); it joins
    /// again from the new view. Seen only when that keeps happening until the join's deadline.
    #[error("join: the group admitted other ranks while rank {rank} was joining (view epoch {epoch}), and it kept having no links to them until its deadline; start it again")]
    JoinOutdated {
        /// The joining rank.
        rank: usize,
        /// The view that turned its request down.
        epoch: u64,
    },
    /// A collective failed because participants failed and the failure policy is `abort`; the group
    /// continues without them.
    #[error("{op} failed because rank(s) {failed:?} failed (failure policy `abort`); the group continues at epoch {epoch} without them")]
    FailedByPolicy {
        /// The collective that failed.
        op: &'static str,
        /// The ranks that failed.
        failed: Vec<usize>,
        /// The membership epoch the group continues at.
        epoch: u64,
    },
    /// The ranks agreed that a collective timed out because some ranks did not take part in time;
    /// the group continues with the next collective.
    #[error("{op} timed out: a rank waited past its deadline for rank(s) {waited_for:?}, which did not take part in time (check that every rank calls the same collectives in the same order; if they are only slow, to wait longer, {knob}); every rank gets this error for this {op} (failed and removed meanwhile: {failed:?}) and the group continues at epoch {epoch} with the next collective")]
    AgreedTimeout {
        /// The collective that timed out.
        op: &'static str,
        /// The ranks that did not take part in time.
        waited_for: Vec<usize>,
        /// The ranks that failed and were removed meanwhile.
        failed: Vec<usize>,
        /// The membership epoch the group continues at.
        epoch: u64,
        /// The setting that chose the deadline, named in the message so the user knows what to
        /// raise.
        knob: crate::options::TimeoutKnob,
    },
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
            ChorusError::JoinOutdated { .. } => 26,
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
            | ChorusError::JoinOutdated { .. }
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

/// The result of a backend operation.
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
            ChorusError::JoinOutdated { rank: 4, epoch: 3 },
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
