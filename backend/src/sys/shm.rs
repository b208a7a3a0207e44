//! POSIX shared-memory segments mapped read-write into this process.
//!
//! A [`Segment`] is created by its owner (`create`) and opened by peers (`open`); the name is
//! unlinked as soon as every peer has mapped it, so a crash never leaks `/dev/shm` entries past
//! rendezvous. Access goes through raw pointers: the bytes are written by other processes, so the
//! protocol on top (sequence signals and credits) is what makes each access race-free.
use std::ffi::CString;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// A mapping of a shared-memory object.
pub struct Segment {
    ptr: *mut u8,
    len: usize,
    /// Kept open for segments this process created, so a replacement peer can map them through
    /// `/proc/<pid>/fd/<fd>` after the name is gone.
    fd: Option<libc::c_int>,
}

// SAFETY: the mapping is plain shared memory; all concurrent access is mediated by atomics and
// the credit protocol of the layers above.
unsafe impl Send for Segment {}
// SAFETY: as above.
unsafe impl Sync for Segment {}

fn c_name(name: &str) -> io::Result<CString> {
    CString::new(format!("/{name}")).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "shm name has a NUL byte"))
}

impl Segment {
    /// Creates (exclusively) and maps a zero-filled segment of `len` bytes.
    pub fn create(name: &str, len: usize) -> io::Result<Segment> {
        let cname = c_name(name)?;
        // SAFETY: cname is a valid NUL-terminated string.
        let fd = unsafe { libc::shm_open(cname.as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_RDWR, 0o600) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a valid descriptor we own.
        let rc = unsafe { libc::ftruncate(fd, len as libc::off_t) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            // SAFETY: closing/unlinking what we just created.
            unsafe {
                libc::close(fd);
                libc::shm_unlink(cname.as_ptr());
            }
            return Err(err);
        }
        Self::map(fd, len, name, true)
    }

    /// Opens and maps a segment a peer created.
    pub fn open(name: &str, len: usize) -> io::Result<Segment> {
        let cname = c_name(name)?;
        // SAFETY: cname is a valid NUL-terminated string.
        let fd = unsafe { libc::shm_open(cname.as_ptr(), libc::O_RDWR, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Self::map(fd, len, name, false)
    }

    /// Maps a segment another process created and still holds open as descriptor `fd`, after its
    /// name was unlinked (a replacement rank joining survivors).
    pub fn open_from_process(pid: u32, fd: i32, len: usize) -> io::Result<Segment> {
        let path = CString::new(format!("/proc/{pid}/fd/{fd}")).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad path"))?;
        // SAFETY: path is a valid NUL-terminated string.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Self::map(fd, len, &format!("pid{pid}-fd{fd}"), false)
    }

    /// The descriptor kept open for this segment (segments this process created).
    pub fn fd(&self) -> Option<i32> {
        self.fd
    }

    fn map(fd: libc::c_int, len: usize, name: &str, keep_fd: bool) -> io::Result<Segment> {
        let map_len = len.max(1);
        if !keep_fd {
            // A peer's segment: touching a page past its real end is SIGBUS, so a segment smaller
            // than this rank's layout (a peer with other settings) is an error here instead.
            // SAFETY: an all-zero stat is a valid value for fstat to fill.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: fd is a valid descriptor and st a valid, writable stat.
            let rc = unsafe { libc::fstat(fd, &mut st) };
            let size = usize::try_from(st.st_size).unwrap_or(0);
            if rc != 0 || size < len {
                let err = if rc != 0 { io::Error::last_os_error() } else { io::Error::new(io::ErrorKind::InvalidData, format!("shared-memory segment {name} holds {size} bytes, this rank expects at least {len}: was the peer started with other ring settings (CHORUS_SHM_CHUNK) or another chorus version?")) };
                // SAFETY: the descriptor is ours and not used after this.
                unsafe { libc::close(fd) };
                return Err(err);
            }
        }
        // SAFETY: fd is valid; a fresh shared mapping of the object; the result is checked.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), map_len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        let err = io::Error::last_os_error();
        if !keep_fd || ptr == libc::MAP_FAILED {
            // SAFETY: the mapping keeps the object alive; the descriptor is no longer needed.
            unsafe { libc::close(fd) };
        }
        if ptr == libc::MAP_FAILED {
            return Err(err);
        }
        Ok(Segment { ptr: ptr as *mut u8, len, fd: keep_fd.then_some(fd) })
    }

    /// Maps `len` bytes of private zero-filled memory with the same access methods: inbound slot
    /// rings that a local reader thread (not a peer process) fills.
    pub fn anonymous(len: usize) -> io::Result<Segment> {
        let map_len = len.max(1);
        // SAFETY: a fresh anonymous mapping; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Segment { ptr: ptr as *mut u8, len, fd: None })
    }

    /// Names of the segments on this host that start with `prefix` (the entries of `/dev/shm`,
    /// where Linux keeps POSIX shared-memory objects); empty where that cannot be read.
    pub fn names_starting_with(prefix: &str) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir("/dev/shm") else { return Vec::new() };
        dir.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.starts_with(prefix)).collect()
    }

    /// Removes the name; existing mappings stay valid.
    pub fn unlink(name: &str) {
        if let Ok(cname) = c_name(name) {
            // SAFETY: cname is valid; failure (already unlinked) is fine.
            unsafe { libc::shm_unlink(cname.as_ptr()) };
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Base address (for the memory registry).
    pub fn base(&self) -> usize {
        self.ptr as usize
    }

    /// A 64-bit atomic at byte offset `off` (8-byte aligned, in bounds).
    pub fn atomic_u64(&self, off: usize) -> &AtomicU64 {
        assert!(off.is_multiple_of(8) && off + 8 <= self.len, "atomic offset {off} out of segment");
        // SAFETY: in bounds and aligned (mmap is page aligned); AtomicU64 has the layout of u64 and
        // the mapping lives as long as `self`.
        unsafe { &*(self.ptr.add(off) as *const AtomicU64) }
    }

    /// A 32-bit atomic at byte offset `off` (4-byte aligned, in bounds).
    pub fn atomic_u32(&self, off: usize) -> &AtomicU32 {
        assert!(off.is_multiple_of(4) && off + 4 <= self.len, "atomic offset {off} out of segment");
        // SAFETY: in bounds and aligned; lives as long as `self`.
        unsafe { &*(self.ptr.add(off) as *const AtomicU32) }
    }

    /// Read-only view of `len` bytes at `off`.
    ///
    /// The caller must hold the right to read these bytes under the slot protocol (the writer
    /// published them with a release-store of a sequence signal the caller acquired, and will not
    /// write again until the caller returns a credit). Crate-private: only the slot ring, which
    /// keeps that protocol, may take views of a segment (another process may write the rest of
    /// it at any time).
    pub(crate) fn bytes(&self, off: usize, len: usize) -> &[u8] {
        assert!(off + len <= self.len, "range {off}+{len} out of segment of {}", self.len);
        // SAFETY: in bounds; exclusivity of writers is guaranteed by the slot protocol (above).
        unsafe { std::slice::from_raw_parts(self.ptr.add(off), len) }
    }

    /// Writable view of `len` bytes at `off`; same protocol contract as [`Segment::bytes`], from
    /// the writer's side (the credit proves the reader is done with these bytes). Crate-private
    /// for the same reason: a safe caller outside the ring could alias the range.
    #[allow(clippy::mut_from_ref)]
    pub(crate) fn bytes_mut(&self, off: usize, len: usize) -> &mut [u8] {
        assert!(off + len <= self.len, "range {off}+{len} out of segment of {}", self.len);
        // SAFETY: in bounds; the slot protocol grants this writer exclusive access to the range.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(off), len) }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; nothing borrowed from it outlives `self`; the
        // descriptor (if kept) is ours.
        unsafe {
            libc::munmap(self.ptr as *mut libc::c_void, self.len.max(1));
            if let Some(fd) = self.fd {
                libc::close(fd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 25: a peer's segment smaller than this rank's layout was mapped anyway, and the first
    /// access past its end was SIGBUS.
    #[test]
    fn opening_a_smaller_segment_than_expected_is_an_error() {
        let name = format!("chorus-test-size-{}", std::process::id());
        let created = Segment::create(&name, 4096).expect("create");
        let e = Segment::open(&name, 8192).err().expect("a too small segment is refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains("4096") && e.to_string().contains("8192"), "{e}");
        assert!(Segment::open(&name, 4096).is_ok());
        Segment::unlink(&name);
        drop(created);
    }
}
