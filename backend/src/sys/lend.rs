//! Borrowed memory lent to an operation that outlives the borrow checker's view of it.
//!
//! An asynchronous operation owns its buffers (`OpBuffer: 'static`) because the group's worker
//! runs it later, on another thread. A scope ([`crate::api::scope`]) lends sub-slices of the caller's
//! memory instead and does not return (nor unwind) until every operation it issued completed, so the
//! borrow outlives every use. `Lent` is that loan: a pointer and a length, usable as an owned buffer.
use std::marker::PhantomData;

/// A loan of `len` bytes at `ptr`, exclusive for the loan's life.
pub struct Lent {
    ptr: *mut u8,
    len: usize,
    _bytes: PhantomData<[u8]>,
}

// SAFETY: a `Lent` is the only way to reach its bytes while it lives (its constructor's contract:
// the lender gives up access), so moving it to the worker thread moves that exclusive access.
unsafe impl Send for Lent {}

impl Lent {
    /// Lends `bytes` for as long as the returned value lives.
    ///
    /// # Safety
    /// Until the `Lent` and every reference obtained from it are dropped, the memory of `bytes`
    /// must stay allocated and nothing else may read or write it (the caller must not use the
    /// borrow it was created from, nor let that borrow end): a scope guarantees this by waiting
    /// for every operation holding a loan before it returns or unwinds.
    pub unsafe fn new(bytes: &mut [u8]) -> Lent {
        Lent { ptr: bytes.as_mut_ptr(), len: bytes.len(), _bytes: PhantomData }
    }

    /// The lent bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `new`'s contract keeps the memory allocated and unaliased while `self` lives;
        // the returned borrow is tied to `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The lent bytes, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes this the only live borrow of the loan.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::Lent;

    #[test]
    fn a_loan_reads_and_writes_the_lenders_memory() {
        let mut v = vec![1u8, 2, 3, 4];
        {
            // SAFETY: `v` is not touched until the loan is dropped at the end of this block.
            let mut loan = unsafe { Lent::new(&mut v[1..3]) };
            let moved = std::thread::spawn(move || {
                loan.bytes_mut().copy_from_slice(&[7, 8]);
                loan
            })
            .join()
            .unwrap();
            assert_eq!(moved.bytes(), &[7, 8]);
        }
        assert_eq!(v, [1, 7, 8, 4]);
    }
}
