//! The [`Store`] trait, the in-memory store the server is built on, and [`PrefixStore`].

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::{BootstrapError, Result};

/// Waits longer than this are clamped, so deadline arithmetic can never overflow.
pub const MAX_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// A shared key/value store used for rendezvous and membership agreement.
///
/// Keys are UTF-8 strings, values are raw bytes. Every blocking call takes a deadline.
pub trait Store: Send + Sync {
    /// Sets `key` to `value`, replacing any value it had.
    fn set(&self, key: &str, value: &[u8]) -> Result<()>;
    /// `None` if the key is absent.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Blocks until every key exists or `timeout` elapses ([`BootstrapError::WaitTimeout`] naming the
    /// missing keys). Returns the values in the order of `keys`.
    fn wait(&self, keys: &[&str], timeout: Duration) -> Result<Vec<Vec<u8>>>;
    /// Atomic counter: treats the value as decimal i64 text (absent = 0), adds `delta`, stores and
    /// returns the new value.
    fn add(&self, key: &str, delta: i64) -> Result<i64>;
    /// Sets `key` to `new` only if its current value equals `expected` (`None` = key absent).
    /// Returns whether it swapped, and the value stored after the operation (for a failed swap on an
    /// absent key, that is an empty vector).
    fn compare_set(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<(bool, Vec<u8>)>;
    /// Returns true if the key existed.
    fn delete(&self, key: &str) -> Result<bool>;
    /// Keys starting with `prefix`, sorted.
    fn list_prefix(&self, prefix: &str) -> Result<Vec<String>>;
    /// Which store this is and where it lives, for errors that say the store is gone (e.g. "the
    /// store at 10.0.0.1:29500, hosted in rank 0's process").
    fn host(&self) -> String {
        "the job's store".into()
    }
}

/// Thread-safe in-process store; the state behind [`crate::StoreServer`], also handy for
/// single-process groups and tests.
#[derive(Debug)]
pub struct MemStore {
    map: Mutex<HashMap<String, Vec<u8>>>,
    /// Notified on every insertion so `wait` can re-check.
    changed: Condvar,
    /// The same notification for the server's asynchronous waits: a count of insertions (only
    /// grows), so a waiter that subscribed before checking the map cannot miss one.
    insertions: tokio::sync::watch::Sender<u64>,
}

impl Default for MemStore {
    fn default() -> Self {
        Self {
            map: Mutex::default(),
            changed: Condvar::new(),
            insertions: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn notify_insertion(&self) {
        self.changed.notify_all();
        self.insertions.send_modify(|n| *n += 1);
    }

    /// The values of `keys` if all are present, else the missing ones.
    fn lookup(&self, keys: &[&str]) -> std::result::Result<Vec<Vec<u8>>, Vec<String>> {
        let map = self.lock();
        lookup_in(&map, keys)
    }

    /// [`MemStore::wait_for`] for the server's event loop: the same answer, without blocking a
    /// thread. Dropping the future (the client went away) frees everything the wait held.
    pub async fn wait_async(
        &self,
        keys: &[&str],
        timeout: Duration,
    ) -> std::result::Result<Vec<Vec<u8>>, Vec<String>> {
        let deadline = tokio::time::Instant::now() + timeout.min(MAX_WAIT);
        // Subscribe before looking, so an insertion between the look and the sleep wakes us.
        let mut insertions = self.insertions.subscribe();
        loop {
            let missing = match self.lookup(keys) {
                Ok(values) => return Ok(values),
                Err(missing) => missing,
            };
            match tokio::time::timeout_at(deadline, insertions.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives in `self`, so it cannot be gone; `timeout_at` elapsed.
                Ok(Err(_)) | Err(_) => return self.lookup(keys).map_err(|_| missing),
            }
        }
    }

    /// A poisoned lock only means another thread panicked mid-operation; every operation leaves the
    /// map consistent, so keep serving.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<u8>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Like [`Store::wait`] but reports the missing keys instead of building an error, so the server
    /// can send them back.
    pub fn wait_for(
        &self,
        keys: &[&str],
        timeout: Duration,
    ) -> std::result::Result<Vec<Vec<u8>>, Vec<String>> {
        let deadline = Instant::now() + timeout.min(MAX_WAIT);
        let mut map = self.lock();
        loop {
            let missing = match lookup_in(&map, keys) {
                Ok(values) => return Ok(values),
                Err(missing) => missing,
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(missing);
            }
            map = self
                .changed
                .wait_timeout(map, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

fn lookup_in(
    map: &HashMap<String, Vec<u8>>,
    keys: &[&str],
) -> std::result::Result<Vec<Vec<u8>>, Vec<String>> {
    let missing: Vec<String> = keys
        .iter()
        .filter(|k| !map.contains_key(**k))
        .map(|k| k.to_string())
        .collect();
    if missing.is_empty() {
        Ok(keys.iter().map(|k| map[*k].clone()).collect())
    } else {
        Err(missing)
    }
}

pub(crate) fn parse_counter(key: &str, value: &[u8]) -> Result<i64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .ok_or_else(|| BootstrapError::NotACounter {
            key: key.to_string(),
            value: String::from_utf8_lossy(value).into_owned(),
        })
}

impl Store for MemStore {
    fn host(&self) -> String {
        "the in-process store".into()
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.lock().insert(key.to_string(), value.to_vec());
        self.notify_insertion();
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().get(key).cloned())
    }

    fn wait(&self, keys: &[&str], timeout: Duration) -> Result<Vec<Vec<u8>>> {
        self.wait_for(keys, timeout)
            .map_err(|missing| BootstrapError::WaitTimeout { missing, timeout })
    }

    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        let mut map = self.lock();
        let current = match map.get(key) {
            Some(v) => parse_counter(key, v)?,
            None => 0,
        };
        let new = current
            .checked_add(delta)
            .ok_or_else(|| BootstrapError::CounterOverflow {
                key: key.to_string(),
                current,
                delta,
            })?;
        map.insert(key.to_string(), new.to_string().into_bytes());
        drop(map);
        self.notify_insertion();
        Ok(new)
    }

    fn compare_set(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<(bool, Vec<u8>)> {
        let mut map = self.lock();
        let current = map.get(key).map(Vec::as_slice);
        if current == expected {
            map.insert(key.to_string(), new.to_vec());
            drop(map);
            self.notify_insertion();
            Ok((true, new.to_vec()))
        } else {
            Ok((false, current.map(<[u8]>::to_vec).unwrap_or_default()))
        }
    }

    fn delete(&self, key: &str) -> Result<bool> {
        Ok(self.lock().remove(key).is_some())
    }

    fn list_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        let mut keys: Vec<String> = self
            .lock()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        keys.sort();
        Ok(keys)
    }
}

/// Namespaces another store: key `k` becomes `"{prefix}/{k}"`. `list_prefix` returns keys relative to
/// this namespace (the `"{prefix}/"` part stripped), so nested prefix stores compose.
#[derive(Clone)]
pub struct PrefixStore {
    inner: Arc<dyn Store>,
    prefix: String,
}

impl PrefixStore {
    /// `inner` with every key placed under `"{prefix}/"`.
    pub fn new(inner: Arc<dyn Store>, prefix: &str) -> Self {
        Self {
            inner,
            prefix: format!("{prefix}/"),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

impl std::fmt::Debug for PrefixStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Store for PrefixStore {
    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.inner.set(&self.key(key), value)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get(&self.key(key))
    }

    fn wait(&self, keys: &[&str], timeout: Duration) -> Result<Vec<Vec<u8>>> {
        let full: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        self.inner.wait(&refs, timeout)
    }

    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        self.inner.add(&self.key(key), delta)
    }

    fn compare_set(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<(bool, Vec<u8>)> {
        self.inner.compare_set(&self.key(key), expected, new)
    }

    fn delete(&self, key: &str) -> Result<bool> {
        self.inner.delete(&self.key(key))
    }

    fn list_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        let keys = self.inner.list_prefix(&self.key(prefix))?;
        Ok(keys
            .into_iter()
            .filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_string))
            .collect())
    }

    fn host(&self) -> String {
        self.inner.host()
    }
}

/// Lets `Arc<dyn Store>` (and `Arc<S>`) be used wherever a `Store` is expected.
impl<S: Store + ?Sized> Store for Arc<S> {
    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        (**self).set(key, value)
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        (**self).get(key)
    }
    fn wait(&self, keys: &[&str], timeout: Duration) -> Result<Vec<Vec<u8>>> {
        (**self).wait(keys, timeout)
    }
    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        (**self).add(key, delta)
    }
    fn compare_set(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<(bool, Vec<u8>)> {
        (**self).compare_set(key, expected, new)
    }
    fn delete(&self, key: &str) -> Result<bool> {
        (**self).delete(key)
    }
    fn list_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        (**self).list_prefix(prefix)
    }
    fn host(&self) -> String {
        (**self).host()
    }
}

/// A group's store once the group exists: the same store, but a failure to reach it is reported
/// as [`BootstrapError::Lost`], naming the store's host and what to do. After rendezvous the
/// store still holds the group's membership (recovery rounds, joins), so losing it is not a
/// configuration problem but the loss of the process or machine that hosts it.
pub struct AfterRendezvous {
    inner: Arc<dyn Store>,
}

impl AfterRendezvous {
    /// Wraps a group's store once the group exists.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self { inner }
    }

    fn check<T>(&self, op: &'static str, r: Result<T>) -> Result<T> {
        r.map_err(|e| match e {
            BootstrapError::Io { .. }
            | BootstrapError::RequestTimeout { .. }
            | BootstrapError::Connect { .. }
            | BootstrapError::Protocol { .. }
            | BootstrapError::Callback { .. } => BootstrapError::Lost {
                op,
                host: self.inner.host(),
                cause: Box::new(e),
            },
            other => other,
        })
    }
}

impl Store for AfterRendezvous {
    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.check("set", self.inner.set(key, value))
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.check("get", self.inner.get(key))
    }
    fn wait(&self, keys: &[&str], timeout: Duration) -> Result<Vec<Vec<u8>>> {
        self.check("wait", self.inner.wait(keys, timeout))
    }
    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        self.check("add", self.inner.add(key, delta))
    }
    fn compare_set(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<(bool, Vec<u8>)> {
        self.check("compare_set", self.inner.compare_set(key, expected, new))
    }
    fn delete(&self, key: &str) -> Result<bool> {
        self.check("delete", self.inner.delete(key))
    }
    fn list_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        self.check("list_prefix", self.inner.list_prefix(prefix))
    }
    fn host(&self) -> String {
        self.inner.host()
    }
}
