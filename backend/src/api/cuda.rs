//! GPU collectives of a [`ProcessGroup`]: one [`DeviceComm`] per CUDA device the group's tensors live
//! on, set up through the group's store on first use (an all-gather of workspace handles), then used
//! for every collective on that device. Everything is stream-ordered on the caller's stream.
use super::ProcessGroup;
use crate::error::{ChorusError, Result};
use crate::group::DeviceSlot;
use crate::memory::Location;
use chorus_kernels::cuda::{CommOptions, DeviceComm};
use chorus_kernels::{DType, ReduceOp};
use std::sync::Arc;

impl ProcessGroup {
    /// The GPU communicator of this group on CUDA device `ordinal`, created on first use: every rank
    /// must reach its first GPU collective together (as with any collective); ranks may use different
    /// devices. Compiles and preloads the kernels before it returns (design invariant 4). Its host
    /// control block is registered as host memory (invariant 3).
    ///
    /// A communicator spans the view it was built in. Once the view changed (a rank failed and a
    /// replacement rejoined), the next GPU collective builds a new one; while a rank is missing from the
    /// view the kernel path is refused (the host path, `cuda_path = host`, carries on without it). A
    /// communicator aborted because a peer died reports that until the view moves on.
    pub fn device_comm(&self, ordinal: usize) -> Result<Arc<DeviceComm>> {
        let mut comms = self.inner.device_comms.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = self.current_epoch();
        if let Some(i) = comms.iter().position(|s| s.ordinal == ordinal) {
            if comms[i].epoch == epoch {
                let comm = comms[i].comm.clone();
                comm.check().map_err(|source| ChorusError::Device { op: "setup", source })?;
                return Ok(comm);
            }
            let stale = comms.remove(i);
            tracing::debug!(ordinal, built = stale.epoch, epoch, "the view changed: rebuilding the GPU communicator");
            self.inner.registry.unregister(stale.comm.control_region().0);
        }
        let (rank, size) = (self.rank(), self.size());
        let members = self.active_ranks();
        if members.len() != size {
            let missing: Vec<usize> = (0..size).filter(|r| !members.contains(r)).collect();
            return Err(ChorusError::Device {
                op: "setup",
                source: chorus_kernels::KernelError::CommSetup(format!(
                    "the GPU kernel path needs every rank of the group, but rank(s) {missing:?} are not in the view at \
                     epoch {epoch} (they failed or were removed); a replacement can rejoin, or run GPU tensors on the \
                     fault-tolerant host path (CHORUS_CUDA_PATH=host)"
                )),
            });
        }
        // The k-th communicator of this group built in this view, on every rank (ranks create them
        // in the same order).
        let k = comms.iter().filter(|s| s.epoch == epoch).count();
        let _span = tracing::debug_span!("device_comm", ordinal, epoch, k, rank, size).entered();
        let store = self.inner.store.clone();
        let keys: Vec<String> = (0..size).map(|r| self.inner.store_key(&format!("cuda/{epoch}/{k}/{r}"))).collect();
        let timeout = self.inner.opts.timeout;
        let mut exchange = |mine: String| -> chorus_kernels::Result<Vec<String>> {
            let fail = |e: chorus_bootstrap::BootstrapError| chorus_kernels::KernelError::CommSetup(format!("store exchange: {e}"));
            store.set(&keys[rank], mine.as_bytes()).map_err(fail)?;
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            let vals = store.wait(&refs, timeout).map_err(fail)?;
            Ok(vals.into_iter().map(|v| String::from_utf8_lossy(&v).into_owned()).collect())
        };
        let comm = DeviceComm::new(ordinal, rank, size, CommOptions::from_env(size), &mut exchange)
            .map_err(|source| ChorusError::Device { op: "setup", source })?;
        let (ctl, ctl_len) = comm.control_region();
        self.inner.registry.register(ctl, ctl_len, Location::Host);
        tracing::debug!(?comm, "device communicator ready");
        let comm = Arc::new(comm);
        comms.push(DeviceSlot { ordinal, epoch, comm: comm.clone() });
        Ok(comm)
    }

    /// Where the memory registry of this group says `ptr` lives (`None`: not registered).
    pub fn registered_location(&self, ptr: usize) -> Option<Location> {
        self.inner.registry.lookup(ptr).map(|r| r.location)
    }

    /// `Err` once the GPU communicator on device `ordinal` failed (a kernel passed its deadline, or
    /// it was aborted because a peer died); reads host memory only, so it is cheap to poll after a
    /// stream synchronization. `Ok` when the device has no communicator.
    pub fn device_status(&self, ordinal: usize) -> Result<()> {
        let comms = self.inner.device_comms.lock().unwrap_or_else(|p| p.into_inner());
        match comms.iter().find(|s| s.ordinal == ordinal) {
            Some(s) => s.comm.check().map_err(|source| ChorusError::Device { op: "collective", source }),
            None => Ok(()),
        }
    }

    /// The byte splits `(offset, length)` of an uneven all_to_all of `dtype` elements on the device
    /// path, and the longest block of any pair on any rank, agreed through a host all_reduce (the
    /// device communicator splits into the same sub-operations on every rank only with it).
    #[allow(clippy::type_complexity)]
    pub fn device_all_to_all_v_splits(&self, send_counts: &[usize], recv_counts: &[usize], dtype: DType) -> Result<(Vec<(usize, usize)>, Vec<(usize, usize)>, usize)> {
        let e = dtype.size();
        let total = |c: &[usize]| c.iter().try_fold(0usize, |a, &x| a.checked_add(x)).and_then(|s| s.checked_mul(e));
        let (Some(s), Some(r)) = (total(send_counts), total(recv_counts)) else {
            return Err(ChorusError::InvalidArgument("all_to_all_v: counts overflow".into()));
        };
        let (send, recv) = self.check_all_to_all_v(s, send_counts, r, recv_counts, dtype)?;
        let mine = send.iter().chain(&recv).map(|&(_, len)| len).max().unwrap_or(0);
        let mut longest = [i64::try_from(mine).map_err(|_| ChorusError::InvalidArgument(format!("all_to_all_v: a block of {mine} bytes is too large")))?];
        self.all_reduce(&mut longest, ReduceOp::Max)?;
        Ok((send, recv, longest[0] as usize))
    }
}
