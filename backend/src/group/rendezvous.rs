//! Peers that die while a group is being created (issue 25). Creation waits for the peers'
//! records, their links and their mapping of each other's segments; a peer that died in that
//! window held every other rank until the deadline. Every wait here is cut into short slices, and
//! between slices a rank checks the processes of the peers it knows on its host (from their
//! records) and the group's failure record in the store, which the first rank to find a dead peer
//! writes, so ranks on other hosts learn of it too. Every rank then fails well under a second after
//! the death, naming the dead rank. The survivors remove a dead peer's shared-memory names, which
//! nobody else would.
use crate::error::{ChorusError, Result};
use crate::sys::shm::Segment;
use crate::transport::PeerInfo;
use chorus_bootstrap::{BootstrapError, Store};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest single wait on the store between two checks.
const SLICE: Duration = Duration::from_millis(50);
/// Checks closer together than this are skipped (socket accept loops poll every few ms).
const CHECK_EVERY: Duration = Duration::from_millis(20);

/// What the failure is reported as.
const OP: &str = "group creation";

/// One rank's watch over its peers during the creation of group `uid`.
pub(super) struct Watch<'a> {
    store: &'a dyn Store,
    uid: &'a str,
    me: &'a PeerInfo,
    /// The creation's whole deadline, for the message of a wait that reaches it.
    timeout: Duration,
    /// Records of the peers that published theirs, by rank.
    known: Mutex<Vec<Option<PeerInfo>>>,
    next_check: Mutex<Instant>,
    /// The failure found, kept for callers that see it only through a store error.
    failure: Mutex<Option<(usize, String)>>,
}

impl<'a> Watch<'a> {
    pub fn new(store: &'a dyn Store, uid: &'a str, me: &'a PeerInfo, size: usize, timeout: Duration) -> Watch<'a> {
        Watch { store, uid, me, timeout, known: Mutex::new(vec![None; size]), next_check: Mutex::new(Instant::now()), failure: Mutex::new(None) }
    }

    fn failure_key(&self) -> String {
        super::setup::key(self.uid, "creation-failed")
    }

    /// Remembers a peer's published record (its process can be watched from now on).
    pub fn learn(&self, peer: &PeerInfo) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = known.get_mut(peer.rank) {
            *slot = Some(peer.clone());
        }
    }

    /// The failure found so far, as the error every rank reports.
    pub fn failure(&self) -> Option<ChorusError> {
        let f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        f.as_ref().map(|(peer, why)| ChorusError::PeerFailed { op: OP, peer: *peer, why: why.clone() })
    }

    /// Records the failure (the first one found stands) and returns it as an error.
    fn fail(&self, peer: usize, why: String) -> ChorusError {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        let (peer, why) = f.get_or_insert((peer, why)).clone();
        ChorusError::PeerFailed { op: OP, peer, why }
    }

    /// Fails if a known peer on this host has exited, or another rank reported a dead peer. At
    /// most once per [`CHECK_EVERY`]; the calls in between pass.
    pub fn check(&self) -> Result<()> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        {
            let mut next = self.next_check.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if now < *next {
                return Ok(());
            }
            *next = now + CHECK_EVERY;
        }
        if let Some(v) = self.store.get(&self.failure_key())? {
            let text = String::from_utf8_lossy(&v);
            let (peer, why) = text.split_once(' ').and_then(|(r, why)| Some((r.parse().ok()?, why.to_string()))).unwrap_or((usize::MAX, text.to_string()));
            return Err(self.fail(peer, why));
        }
        let dead = {
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            // Process ids mean something only on this host (the host id includes the boot and the
            // network namespace).
            known.iter().flatten().find(|p| p.rank != self.me.rank && p.host_id == self.me.host_id && !crate::sys::proc::alive(p.pid)).cloned()
        };
        let Some(p) = dead else { return Ok(()) };
        // Its names would stay in /dev/shm: the process that would have removed them is gone.
        Segment::unlink(&p.shm_signals);
        Segment::unlink(&p.shm_data);
        let why = format!("its process {} exited before the group's links were up, as rank {} on the same host saw; creation fails on every rank", p.pid, self.me.rank);
        tracing::warn!(peer = p.rank, pid = p.pid, "a peer died during group creation");
        // The first report stands; the others find it there.
        let _ = self.store.compare_set(&self.failure_key(), None, format!("{} {why}", p.rank).as_bytes());
        Err(self.fail(p.rank, why))
    }

    /// [`Watch::check`] now, however recent the last one: a step that failed on a peer (its
    /// segments or its socket gone) asks whether the peer died.
    pub fn check_now(&self) -> Result<()> {
        *self.next_check.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.check()
    }

    /// Waits for every key of `keys` until `deadline`, checking the peers between slices; `got`
    /// sees each key's value (by its place in `keys`) as it comes. While waiting for one key, it
    /// also looks at one other missing key per slice, so the records of peers that already
    /// published are learnt (and watched) even while an earlier one is missing. A failure found
    /// once every key is present is not one of creation: the keys are returned.
    pub fn wait(&self, keys: &[String], deadline: Instant, got: &mut dyn FnMut(usize, &[u8]) -> Result<()>) -> Result<Vec<Vec<u8>>> {
        let mut values: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
        let mut cursor = 0;
        while let Some(next) = values.iter().position(Option::is_none) {
            if let Err(e) = self.check() {
                return self.all_present(keys, &mut values).ok_or(e);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.store.wait(&[keys[next].as_str()], left.min(SLICE)) {
                Ok(mut v) => {
                    let v = v.pop().unwrap_or_default();
                    got(next, &v)?;
                    values[next] = Some(v);
                }
                Err(BootstrapError::WaitTimeout { .. }) if Instant::now() < deadline => {
                    // One other missing key, in turn.
                    let others: Vec<usize> = (0..keys.len()).filter(|&i| i != next && values[i].is_none()).collect();
                    if !others.is_empty() {
                        cursor = (cursor + 1) % others.len();
                        let i = others[cursor];
                        if let Some(v) = self.store.get(&keys[i])? {
                            got(i, &v)?;
                            values[i] = Some(v);
                        }
                    }
                }
                Err(BootstrapError::WaitTimeout { .. }) => {
                    let missing = keys.iter().zip(&values).filter(|(_, v)| v.is_none()).map(|(k, _)| k.clone()).collect();
                    return Err(BootstrapError::WaitTimeout { missing, timeout: self.timeout }.into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(values.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Every key's value if all are in the store now.
    fn all_present(&self, keys: &[String], values: &mut [Option<Vec<u8>>]) -> Option<Vec<Vec<u8>>> {
        for (k, v) in keys.iter().zip(values.iter_mut()) {
            if v.is_none() {
                *v = Some(self.store.get(k).ok()??);
            }
        }
        Some(values.iter_mut().map(|v| v.take().unwrap_or_default()).collect())
    }
}

/// The store as the transports see it while the group is created: its waits are sliced and
/// watched like [`Watch::wait`]'s (a failure comes back as a store error; the creation reports
/// [`Watch::failure`] instead).
pub(super) struct WatchedStore<'a> {
    pub watch: &'a Watch<'a>,
}

impl Store for WatchedStore<'_> {
    fn set(&self, key: &str, value: &[u8]) -> chorus_bootstrap::Result<()> {
        self.watch.store.set(key, value)
    }

    fn get(&self, key: &str) -> chorus_bootstrap::Result<Option<Vec<u8>>> {
        self.watch.store.get(key)
    }

    fn wait(&self, keys: &[&str], timeout: Duration) -> chorus_bootstrap::Result<Vec<Vec<u8>>> {
        let deadline = Instant::now() + timeout.min(chorus_bootstrap::store::MAX_WAIT);
        loop {
            if let Err(e) = self.watch.check() {
                if let Ok(v) = self.watch.store.wait(keys, Duration::ZERO) {
                    return Ok(v);
                }
                return Err(BootstrapError::Callback { op: "wait", store: "group creation".into(), message: e.to_string() });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.watch.store.wait(keys, left.min(SLICE)) {
                Err(BootstrapError::WaitTimeout { .. }) if Instant::now() < deadline => {}
                Err(BootstrapError::WaitTimeout { missing, .. }) => return Err(BootstrapError::WaitTimeout { missing, timeout }),
                other => return other,
            }
        }
    }

    fn add(&self, key: &str, delta: i64) -> chorus_bootstrap::Result<i64> {
        self.watch.store.add(key, delta)
    }

    fn compare_set(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> chorus_bootstrap::Result<(bool, Vec<u8>)> {
        self.watch.store.compare_set(key, expected, new)
    }

    fn delete(&self, key: &str) -> chorus_bootstrap::Result<bool> {
        self.watch.store.delete(key)
    }

    fn list_prefix(&self, prefix: &str) -> chorus_bootstrap::Result<Vec<String>> {
        self.watch.store.list_prefix(prefix)
    }

    fn host(&self) -> String {
        self.watch.store.host()
    }
}
