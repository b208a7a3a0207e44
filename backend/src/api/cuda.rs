//! GPU collectives of a [`ProcessGroup`]: one [`DeviceComm`] per CUDA device the group's tensors live
//! on, set up through the group's store on first use (an all-gather of workspace handles), then used
//! for every collective on that device, rebuilt over the members whenever the view changes. Everything
//! is stream-ordered on the caller's stream.
use super::device_group::DeviceGroup;
use super::ProcessGroup;
use crate::error::{ChorusError, Result};
use crate::group::DeviceSlot;
use crate::memory::Location;
use chorus_kernels::cuda::{CommOptions, DeviceComm};
use chorus_kernels::{DType, ReduceOp};
use std::sync::Arc;

impl ProcessGroup {
    /// The GPU communicator of this group on CUDA device `ordinal` (see [`ProcessGroup::device_group`]);
    /// its ranks are positions among the view's members (group ranks while the view is full).
    pub fn device_comm(&self, ordinal: usize) -> Result<Arc<DeviceComm>> {
        Ok(self.device_group(ordinal)?.comm().clone())
    }

    /// The GPU collectives of this group on CUDA device `ordinal`, in group ranks. The communicator is
    /// created on first use: every member must reach its first GPU collective together (as with any
    /// collective); ranks may use different devices. Compiles and preloads the kernels before it
    /// returns (docs/design.md invariant 4). Its host control block is registered as host memory (invariant 3).
    ///
    /// A communicator spans the members of the view it was built in (on a group spanning hosts,
    /// those on this rank's host: [`crate::DeviceRoute::Hybrid`]). When the view changes (a failed
    /// rank was removed, or a replacement rejoined), the next GPU collective builds one over the new
    /// view's members, so GPU collectives go on over the survivors. A communicator aborted because a
    /// peer died reports that until the view moves on.
    pub fn device_group(&self, ordinal: usize) -> Result<DeviceGroup> {
        let mut comms = self.inner.device_comms.lock().unwrap_or_else(|p| p.into_inner());
        let size = self.size();
        // The epoch alone on the hot path (every GPU op); the member list only to build.
        let epoch = self.current_epoch();
        if let Some(i) = comms.iter().position(|s| s.ordinal == ordinal) {
            if comms[i].epoch == epoch {
                let s = &comms[i];
                s.comm.check().map_err(|error| ChorusError::Device { op: "setup", error })?;
                return Ok(DeviceGroup::new(s.comm.clone(), s.members.clone(), size, epoch));
            }
            let stale = comms.remove(i);
            tracing::debug!(ordinal, built = stale.epoch, epoch, "the view changed: rebuilding the GPU communicator");
            self.inner.registry.unregister(stale.comm.control_region().0);
        }
        let (epoch, members) = {
            let v = self.inner.view.lock().unwrap_or_else(|p| p.into_inner());
            (v.epoch, v.members())
        };
        let rank = self.rank();
        // A group spanning hosts: the communicator spans this rank's host (`api::hybrid` crosses
        // hosts with the host transports).
        let members = match self.device_route() {
            super::DeviceRoute::Hybrid => self.host_layout().hosts.into_iter().find(|h| h.contains(&rank)).unwrap_or(members),
            _ => members,
        };
        let Some(me) = members.iter().position(|&r| r == rank) else {
            return Err(ChorusError::Excluded { epoch });
        };
        // The k-th communicator of this group built in this view, on every member (members create
        // them in the same order).
        let k = comms.iter().filter(|s| s.epoch == epoch).count();
        let _span = tracing::debug_span!("device_comm", ordinal, epoch, k, rank, members = ?members).entered();
        let store = self.inner.store.clone();
        let keys: Vec<String> = members.iter().map(|r| self.inner.store_key(&format!("cuda/{epoch}/{k}/{r}"))).collect();
        let timeout = self.inner.opts.timeout;
        let mut exchange = |mine: String| -> chorus_kernels::Result<Vec<String>> {
            let fail = |e: chorus_bootstrap::BootstrapError| chorus_kernels::KernelError::CommSetup(format!("store exchange: {e}"));
            store.set(&keys[me], mine.as_bytes()).map_err(fail)?;
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            let vals = store.wait(&refs, timeout).map_err(fail)?;
            Ok(vals.into_iter().map(|v| String::from_utf8_lossy(&v).into_owned()).collect())
        };
        let m = members.len();
        let comm = DeviceComm::new(ordinal, me, m, CommOptions::from_env(m), &mut exchange)
            .map_err(|error| ChorusError::Device { op: "setup", error })?;
        let (ctl, ctl_len) = comm.control_region();
        self.inner.registry.register(ctl, ctl_len, Location::Host);
        tracing::debug!(?comm, "device communicator ready");
        let (comm, members): (Arc<DeviceComm>, Arc<[usize]>) = (Arc::new(comm), members.into());
        comms.push(DeviceSlot { ordinal, epoch, members: members.clone(), comm: comm.clone() });
        Ok(DeviceGroup::new(comm, members, size, epoch))
    }

    /// `Err` once the GPU communicator on device `ordinal` failed (a kernel passed its deadline, or
    /// it was aborted because a peer died); reads host memory only, so it is cheap to poll after a
    /// stream synchronization. `Ok` when the device has no communicator.
    pub fn device_status(&self, ordinal: usize) -> Result<()> {
        let comms = self.inner.device_comms.lock().unwrap_or_else(|p| p.into_inner());
        match comms.iter().find(|s| s.ordinal == ordinal) {
            Some(s) => s.comm.check().map_err(|error| ChorusError::Device { op: "collective", error }),
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
