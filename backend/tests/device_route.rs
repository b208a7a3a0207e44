//! Which path a group's collectives on GPU memory take, decided without a GPU: the kernels for a
//! group on one host with at most 8 active ranks, the kernels within each host (hybrid) for a group
//! spanning hosts none of which has more, else (or when the options ask for it) the host path,
//! with the reason. Ranks are threads of this process; no CUDA call is made.
use chorus_backend::{DeviceOps, DevicePath, DeviceRoute, HostReason, Options, ProcessGroup};
use chorus_bootstrap::{MemStore, Store};
use std::sync::Arc;
use std::time::Duration;

/// The route every rank of an `n`-rank group decides; `host_of` names each rank's host.
fn routes(n: usize, name: &str, path: DevicePath, host_of: fn(usize) -> String) -> Vec<(DeviceRoute, Option<HostReason>)> {
    std::env::set_var("CHORUS_HEARTBEAT_TIMEOUT_MS", "30000");
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let handles: Vec<_> = (0..n)
        .map(|r| {
            let store = store.clone();
            let opts = Options::default().with_timeout(Duration::from_secs(60)).with_name(name).with_host_id(host_of(r)).with_device_path(path);
            std::thread::spawn(move || {
                let pg = ProcessGroup::new(store, r, n, opts).expect("group");
                let route = pg.device_route();
                // On the host path no device communicator is built (none could be here).
                let ops = match route {
                    DeviceRoute::Host(_) => match pg.device_ops(0).expect("host-path ops") {
                        DeviceOps::Host(h) => Some(h.reason()),
                        DeviceOps::Kernels(_) | DeviceOps::Hybrid(..) => panic!("kernels although the route is the host path"),
                    },
                    // Both build a device communicator (this rank's host's, for the hybrid).
                    DeviceRoute::Kernels | DeviceRoute::Hybrid => None,
                };
                pg.barrier().expect("barrier");
                (route, ops)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("rank thread")).collect()
}

fn one_host(_: usize) -> String {
    "host".into()
}
fn own_host(r: usize) -> String {
    format!("host{r}")
}

#[test]
fn one_host_and_few_ranks_take_the_kernels() {
    assert!(routes(2, "route-shm", DevicePath::Kernels, one_host).iter().all(|r| *r == (DeviceRoute::Kernels, None)));
}

#[test]
fn the_host_path_when_asked_for() {
    let want = (DeviceRoute::Host(HostReason::Requested), Some(HostReason::Requested));
    assert!(routes(2, "route-asked", DevicePath::Host, one_host).iter().all(|r| *r == want));
}

/// Issue 26, item 2: a group spanning hosts takes the kernels within each host and the host
/// transports across, even with more ranks in all than one communicator spans.
#[test]
fn several_hosts_take_the_kernels_within_each_host() {
    assert!(routes(2, "route-tcp", DevicePath::Kernels, own_host).iter().all(|r| *r == (DeviceRoute::Hybrid, None)));
    assert!(routes(10, "route-ten", DevicePath::Kernels, |r| format!("host{}", r % 2)).iter().all(|r| *r == (DeviceRoute::Hybrid, None)));
}

/// A host with more ranks than a device communicator spans sends the group to the host path.
#[test]
fn a_host_wider_than_the_kernels_span_takes_the_host_path() {
    let want = (DeviceRoute::Host(HostReason::SeveralHosts), Some(HostReason::SeveralHosts));
    assert!(routes(10, "route-wide", DevicePath::Kernels, |r| format!("host{}", (r == 9) as usize)).iter().all(|r| *r == want));
}

#[test]
fn more_ranks_than_the_kernels_span_take_the_host_path() {
    let reason = HostReason::TooManyRanks { ranks: 9, max: 8 };
    assert!(routes(9, "route-nine", DevicePath::Kernels, one_host).iter().all(|r| *r == (DeviceRoute::Host(reason), Some(reason))));
}
