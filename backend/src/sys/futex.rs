//! Futex wait/wake on a 32-bit word that may live in memory shared between processes.
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Blocks while `*word == expected`, for at most `timeout`. Spurious wake-ups are allowed; the
/// caller re-checks its condition. Shared (non-private) futex so it works across processes.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid, aligned 4-byte atomic for the duration of the call (borrowed);
    // FUTEX_WAIT only reads it, and `ts` outlives the call. Errors (EAGAIN, EINTR, ETIMEDOUT)
    // are all benign: the caller re-checks its condition.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        );
    }
}

/// Wakes every thread (in any process) blocked in [`wait`] on `word`.
pub fn wake_all(word: &AtomicU32) {
    // SAFETY: `word` is a valid aligned atomic; FUTEX_WAKE does not access user memory beyond
    // using the address as a key.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}
