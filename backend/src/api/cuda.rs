//! GPU collectives of a [`ProcessGroup`]: one [`DeviceComm`] per CUDA device the group's tensors live
//! on, set up through the group's store on first use (an all-gather of workspace handles), then used
//! for every collective on that device. Everything is stream-ordered on the caller's stream.
use super::ProcessGroup;
use crate::error::{ChorusError, Result};
use chorus_kernels::cuda::{CommOptions, DeviceComm};
use std::sync::Arc;

impl ProcessGroup {
    /// The GPU communicator of this group on CUDA device `ordinal`, created on first use: every rank
    /// must reach its first GPU collective together (as with any collective); ranks may use different
    /// devices. Compiles and preloads the kernels before it returns (design invariant 4).
    pub fn device_comm(&self, ordinal: usize) -> Result<Arc<DeviceComm>> {
        let mut comms = self.inner.device_comms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = comms.iter().find(|(d, _)| *d == ordinal) {
            return Ok(c.clone());
        }
        // The k-th communicator of this group on every rank (ranks create them in the same order).
        let k = comms.len();
        let (rank, size) = (self.rank(), self.size());
        let _span = tracing::debug_span!("device_comm", ordinal, k, rank, size).entered();
        let store = self.inner.store.clone();
        let keys: Vec<String> = (0..size).map(|r| self.inner.store_key(&format!("cuda/{k}/{r}"))).collect();
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
        tracing::debug!(?comm, "device communicator ready");
        let comm = Arc::new(comm);
        comms.push((ordinal, comm.clone()));
        Ok(comm)
    }

    /// The largest value of `v` over the ranks (a host all_reduce), for sizes every rank must agree on.
    pub fn max_over_ranks(&self, v: u64) -> Result<u64> {
        let mut buf = [i64::try_from(v).map_err(|_| ChorusError::InvalidArgument(format!("max_over_ranks: {v} is too large")))?];
        self.all_reduce(&mut buf, chorus_kernels::ReduceOp::Max)?;
        Ok(buf[0] as u64)
    }
}
