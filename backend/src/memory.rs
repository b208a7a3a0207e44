//! The memory registry: which regions this rank exposes to peers, where they live, and how often
//! each allocation is registered.
//!
//! A registration always covers a whole allocation (its base and length) and is refcounted per
//! base (docs/design.md invariant 2); a sub-range is addressed as (registration, offset). Host
//! control/signal memory is always `Location::Host` (invariant 3).
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Where a registered region lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// Host memory: reachable by every transport ("wildcard").
    Host,
    /// Memory of one GPU.
    Device(u32),
}

/// A registered region, addressed at its allocation base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registration {
    /// Start address of the allocation.
    pub base: usize,
    /// Length of the allocation in bytes.
    pub len: usize,
    /// Offset of the caller's pointer inside the allocation.
    pub offset: usize,
    /// Where the allocation lives.
    pub location: Location,
}

/// This rank's registered allocations, keyed by base, each with its location and refcount.
#[derive(Default)]
pub struct Registry {
    regions: Mutex<BTreeMap<usize, (usize, Location, u64)>>,
}

impl Registry {
    /// Registers the allocation `[base, base+len)`; registering the same base again only raises
    /// its refcount.
    pub fn register(&self, base: usize, len: usize, location: Location) -> Registration {
        let mut g = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        let e = g.entry(base).or_insert((len, location, 0));
        e.2 += 1;
        Registration { base, len: e.0, offset: 0, location: e.1 }
    }

    /// The registration that contains `ptr` (with the offset of `ptr` inside it), if any.
    pub fn lookup(&self, ptr: usize) -> Option<Registration> {
        let g = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        let (&base, &(len, location, _)) = g.range(..=ptr).next_back()?;
        (ptr < base + len.max(1)).then_some(Registration { base, len, offset: ptr - base, location })
    }

    /// Drops one reference to the allocation containing `ptr` (resolved to its base the same way
    /// registration did); returns whether the registration is gone.
    pub fn unregister(&self, ptr: usize) -> bool {
        let Some(reg) = self.lookup(ptr) else { return false };
        let mut g = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        match g.get_mut(&reg.base) {
            Some(e) if e.2 > 1 => {
                e.2 -= 1;
                false
            }
            Some(_) => {
                g.remove(&reg.base);
                true
            }
            None => false,
        }
    }

    /// The number of registered allocations (not references).
    pub fn len(&self) -> usize {
        self.regions.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no allocation is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_ranges_resolve_to_their_allocation_and_refcount_per_base() {
        let r = Registry::default();
        let a = r.register(0x1000, 0x4000, Location::Host);
        assert_eq!(a.base, 0x1000);
        r.register(0x1000, 0x4000, Location::Host);
        let sub = r.lookup(0x1000 + 64).expect("inside");
        assert_eq!((sub.base, sub.offset), (0x1000, 64));
        assert!(r.lookup(0x5000).is_none());
        assert!(!r.unregister(0x1000 + 4096));
        assert!(r.unregister(0x1000 + 8));
        assert!(r.is_empty());
    }
}
