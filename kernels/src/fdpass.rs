//! Passing file descriptors between processes of one host (the POSIX file descriptors of shareable
//! VMM allocations, `cuda::vmm`), two ways:
//!
//! - [`pidfd_getfd`]: the receiver copies the descriptor straight out of the sender's descriptor table
//!   (`pidfd_open` + `pidfd_getfd`, Linux 5.6+), knowing only the sender's pid and descriptor number.
//!   This is how PyTorch shares expandable segments. It needs ptrace access to the sender
//!   (`PTRACE_MODE_ATTACH_REALCREDS`): same user and, under Yama `ptrace_scope >= 1`, an ancestor
//!   relation or `CAP_SYS_PTRACE`; otherwise it fails with `EPERM`.
//! - `SCM_RIGHTS`: the sender runs an [`FdServer`] on a Unix socket in the abstract namespace, and the
//!   receiver [`fetch_fd`]s the descriptor from it. Works wherever both processes share a network
//!   namespace; the server only hands the descriptor to peers of its own effective uid (`SO_PEERCRED`).
//!
//! [`receive_fd`] tries the first and falls back to the second, and says which one worked.
//!
//! Linux only. The `unsafe` of this module is confined to the functions that call libc.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The payload byte that travels with the descriptor (a stream message cannot be empty).
const TAG: u8 = b'F';
/// Descriptors a receiver accepts in one message (more than one is a protocol error; the extra ones
/// are closed).
const MAX_FDS: usize = 4;

/// Which way [`receive_fd`] got the descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FdPath {
    /// `pidfd_getfd` from the sender's descriptor table.
    PidfdGetfd,
    /// `SCM_RIGHTS` over the sender's [`FdServer`] socket.
    ScmRights,
}

fn cvt(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A copy of descriptor `remote_fd` of process `pid` (a new descriptor number in this process, close-on
/// -exec, referring to the same open file): `pidfd_open(pid)` + `pidfd_getfd(pidfd, remote_fd)`.
///
/// `EPERM` without ptrace access to `pid`, `ENOSYS` on kernels before 5.6 (or sandboxes without the
/// calls), `ESRCH` for no such process, `EBADF` for a descriptor `pid` does not have open.
pub fn pidfd_getfd(pid: u32, remote_fd: i32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open(pid, flags = 0) takes two integers and returns a new descriptor or -1.
    let pidfd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) })?;
    // SAFETY: the syscall returned a fresh descriptor that nothing else owns; the OwnedFd closes it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    // SAFETY: pidfd_getfd(pidfd, targetfd, flags = 0) takes three integers and returns a new
    // descriptor (with FD_CLOEXEC set) or -1; `pidfd` is open for the duration of the call.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), remote_fd, 0 as libc::c_uint) })?;
    // SAFETY: as above, a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The abstract-namespace address `\0name` (no file on disk; gone when the last socket closes).
fn abstract_addr(name: &str) -> io::Result<SocketAddr> {
    if name.is_empty() || name.len() > 100 || name.as_bytes().contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd-passing socket name {name:?}: 1 to 100 bytes, no NUL"),
        ));
    }
    SocketAddr::from_abstract_name(name.as_bytes())
}

/// The effective uid of this process.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The uid of the process at the other end of `stream` (`SO_PEERCRED`).
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes at most `len` bytes (one ucred) through a valid pointer, and the new
    // length through `len`; the socket is open (borrowed).
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Control-message buffer, aligned for `cmsghdr` (size_t fields).
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

/// Room for `n` descriptors in a control message (`CMSG_SPACE(n * sizeof(int))`).
fn cmsg_space(n: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
    unsafe { libc::CMSG_SPACE((n * std::mem::size_of::<libc::c_int>()) as libc::c_uint) as usize }
}

/// A message header over `iov` and the first `space` bytes of `buf` (raw pointers into both: use it
/// while they are alive and not moved).
fn msg_header(iov: &mut libc::iovec, buf: &mut CmsgBuf, space: usize) -> libc::msghdr {
    // SAFETY: msghdr is a plain C struct (integers and pointers, on some targets private padding
    // fields), for which all-zero bytes are a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = buf.0.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    msg
}

/// Sends one byte with `fd` attached (`SCM_RIGHTS`) on `stream`.
fn send_fd(stream: &UnixStream, fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut byte = [TAG];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr() as *mut libc::c_void, iov_len: 1 };
    let mut buf = CmsgBuf([0; 64]);
    let space = cmsg_space(1);
    assert!(space <= buf.0.len());
    let msg = msg_header(&mut iov, &mut buf, space);
    // SAFETY: `msg` describes `buf` (aligned for cmsghdr, `space` >= CMSG_SPACE(4) bytes), so
    // CMSG_FIRSTHDR returns a non-null header inside it and CMSG_DATA points 4 writable bytes inside
    // it; the data is written unaligned-safe. sendmsg reads `msg`, `iov` (1 byte of `byte`) and `buf`,
    // all alive for the call, and duplicates `fd` (open: borrowed) into the peer.
    let r = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as libc::c_uint) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut libc::c_int, fd.as_raw_fd());
        loop {
            let r = libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
            if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break r;
        }
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one byte and the descriptor attached to it (`SCM_RIGHTS`), close-on-exec.
fn recv_fd(stream: &UnixStream) -> io::Result<OwnedFd> {
    let mut byte = [0u8];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr() as *mut libc::c_void, iov_len: 1 };
    let mut buf = CmsgBuf([0; 64]);
    let space = cmsg_space(MAX_FDS);
    assert!(space <= buf.0.len());
    let mut msg = msg_header(&mut iov, &mut buf, space);
    // SAFETY: recvmsg writes at most 1 byte into `byte` (through `iov`) and at most `space` bytes into
    // `buf`, all alive and exclusively borrowed for the call; it updates `msg`'s lengths and flags.
    let n = unsafe {
        loop {
            let n = libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break n;
        }
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.kind() {
            io::ErrorKind::WouldBlock => io::Error::new(io::ErrorKind::TimedOut, "no descriptor arrived before the deadline"),
            _ => e,
        });
    }
    // Take ownership of every descriptor that arrived first, so none leaks whatever happens next.
    let mut fds: Vec<OwnedFd> = Vec::new();
    // SAFETY: the kernel filled `buf` with `msg.msg_controllen` bytes of well-formed control messages;
    // CMSG_FIRSTHDR/CMSG_NXTHDR walk them within that length (returning null at the end), and each
    // SCM_RIGHTS payload holds (cmsg_len - CMSG_LEN(0)) / sizeof(int) descriptors, read unaligned. Each
    // is a fresh descriptor installed for this process, owned by nothing else.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg) as *const libc::c_int;
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / std::mem::size_of::<libc::c_int>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if n == 0 && fds.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the fd server closed the connection without sending a descriptor (it refuses peers of another uid)",
        ));
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "descriptor message truncated (MSG_CTRUNC)"));
    }
    if byte[0] != TAG || fds.len() != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected one descriptor with tag {TAG:#x}, got {} with tag {:#x}", fds.len(), byte[0]),
        ));
    }
    Ok(fds.remove(0))
}

/// Serves one descriptor over `SCM_RIGHTS` to up to `clients` peers, on a Unix socket in the abstract
/// namespace, from a background thread. The thread exits after serving `clients` peers, at the
/// deadline, or when the server is dropped (which waits for it, briefly, and never panics). Peers of
/// another effective uid are refused (their connection is closed without a descriptor).
pub struct FdServer {
    name: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<usize>>>,
}

impl std::fmt::Debug for FdServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FdServer").field("name", &self.name).finish()
    }
}

impl FdServer {
    /// Binds `\0name` now (an error if the name is taken) and serves `fd` to up to `clients` peers
    /// until `deadline` from now. Names are host-wide per network namespace: make them unique, e.g.
    /// `chorus-<uid>-<job>-<rank>`.
    pub fn start(name: &str, fd: OwnedFd, clients: usize, deadline: Duration) -> io::Result<FdServer> {
        let listener = UnixListener::bind_addr(&abstract_addr(name)?).map_err(|e| {
            io::Error::new(e.kind(), format!("binding the fd-passing socket @{name}: {e}"))
        })?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let until = Instant::now() + deadline;
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("chorus-fdserver-{name}"))
                .spawn(move || serve(listener, fd, clients, until, &stop))?
        };
        Ok(FdServer { name: name.to_string(), stop, thread: Some(thread) })
    }

    /// The socket name (without the leading NUL).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until the server thread exits (all clients served or the deadline) and returns how many
    /// peers got the descriptor.
    pub fn wait(mut self) -> io::Result<usize> {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("the fd server thread panicked")),
            None => Ok(0),
        }
    }
}

impl Drop for FdServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // The thread polls `stop` every few milliseconds; a panic in it is ignored here.
            let _ = t.join();
        }
    }
}

/// The server loop: non-blocking accepts, polled every 1..=10 ms.
fn serve(listener: UnixListener, fd: OwnedFd, clients: usize, until: Instant, stop: &AtomicBool) -> io::Result<usize> {
    let me = euid();
    let mut served = 0;
    let mut nap = Duration::from_millis(1);
    while served < clients && !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= until {
            break;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                nap = Duration::from_millis(1);
                let serve_one = || -> io::Result<bool> {
                    stream.set_nonblocking(false)?;
                    stream.set_write_timeout(Some((until - now).clamp(Duration::from_millis(10), Duration::from_secs(5))))?;
                    if peer_uid(&stream)? != me {
                        // Refused: the connection is closed without a descriptor.
                        return Ok(false);
                    }
                    send_fd(&stream, fd.as_fd())?;
                    Ok(true)
                };
                // A refused peer, or one that hung up early, does not count; the next one may still come.
                if let Ok(true) = serve_one() {
                    served += 1;
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
                std::thread::sleep(nap.min(until - now));
                nap = (nap * 2).min(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(served)
}

/// Connects to the [`FdServer`] named `name` and receives its descriptor, retrying the connection
/// until `timeout` (the server may not be up yet). `TimedOut` if nothing arrives by then.
pub fn fetch_fd(name: &str, timeout: Duration) -> io::Result<OwnedFd> {
    let addr = abstract_addr(name)?;
    let until = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    let stream = loop {
        match UnixStream::connect_addr(&addr) {
            Ok(s) => break s,
            // ECONNREFUSED: nobody bound the name (yet); EAGAIN: the backlog is full.
            Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound | io::ErrorKind::WouldBlock) => {
                let now = Instant::now();
                if now >= until {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no fd server on socket @{name} within {timeout:?} (last error: {e})"),
                    ));
                }
                std::thread::sleep(nap.min(until - now));
                nap = (nap * 2).min(Duration::from_millis(20));
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("connecting to the fd server @{name}: {e}"))),
        }
    };
    let left = until.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    stream.set_read_timeout(Some(left))?;
    recv_fd(&stream).map_err(|e| io::Error::new(e.kind(), format!("receiving the descriptor from @{name}: {e}")))
}

/// Whether a `pidfd_getfd` failure means "not allowed or not available here" (fall back to
/// `SCM_RIGHTS`), rather than a wrong pid or descriptor.
pub fn pidfd_unavailable(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOSYS | libc::EACCES))
}

/// Gets descriptor `remote_fd` of process `pid`: by [`pidfd_getfd`] if this process may, otherwise
/// (`EPERM`, `ENOSYS`, `EACCES`) from the sender's [`FdServer`] `socket_name` ([`fetch_fd`], waiting up
/// to `timeout`). Returns the descriptor and the way that worked; an error names both attempts.
pub fn receive_fd(pid: u32, remote_fd: i32, socket_name: &str, timeout: Duration) -> io::Result<(OwnedFd, FdPath)> {
    receive_fd_with(pid, remote_fd, socket_name, timeout, pidfd_getfd)
}

fn receive_fd_with(
    pid: u32,
    remote_fd: i32,
    socket_name: &str,
    timeout: Duration,
    getfd: impl FnOnce(u32, i32) -> io::Result<OwnedFd>,
) -> io::Result<(OwnedFd, FdPath)> {
    match getfd(pid, remote_fd) {
        Ok(fd) => Ok((fd, FdPath::PidfdGetfd)),
        Err(e) if pidfd_unavailable(&e) => match fetch_fd(socket_name, timeout) {
            Ok(fd) => Ok((fd, FdPath::ScmRights)),
            Err(e2) => Err(io::Error::new(
                e2.kind(),
                format!("pidfd_getfd({pid}, {remote_fd}) failed ({e}) and SCM_RIGHTS from @{socket_name} failed ({e2})"),
            )),
        },
        Err(e) => Err(io::Error::new(e.kind(), format!("pidfd_getfd({pid}, {remote_fd}): {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::AtomicU32;

    const BYTES: &[u8] = b"chorus fdpass: the same open file through a new descriptor\n";

    /// A memfd holding [`BYTES`].
    fn memfd() -> OwnedFd {
        // SAFETY: the name is a NUL-terminated literal; memfd_create returns a new descriptor or -1.
        let fd = unsafe { libc::memfd_create(c"chorus-fdpass-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        // SAFETY: a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut f = File::from(fd);
        f.write_all(BYTES).unwrap();
        f.into()
    }

    /// Checks that `got` is another descriptor number for the same open file as `orig`: the bytes read
    /// back match, and a write through `got` is seen through `orig`.
    fn assert_same_file(orig: &OwnedFd, got: OwnedFd) {
        assert_ne!(orig.as_raw_fd(), got.as_raw_fd(), "expected a new descriptor number");
        let got = File::from(got);
        let mut buf = vec![0u8; BYTES.len()];
        got.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(buf, BYTES);
        let marker = format!("written through fd {}", got.as_raw_fd());
        got.write_all_at(marker.as_bytes(), BYTES.len() as u64).unwrap();
        let orig = File::from(orig.try_clone().unwrap());
        let mut back = vec![0u8; marker.len()];
        orig.read_exact_at(&mut back, BYTES.len() as u64).unwrap();
        assert_eq!(back, marker.as_bytes());
    }

    fn unique_name(what: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        format!("chorus-test-{what}-{}-{}-{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
    }

    #[test]
    fn scm_rights_serves_every_client_a_new_descriptor_of_the_same_file() {
        let orig = memfd();
        let name = unique_name("scm");
        let server = FdServer::start(&name, orig.try_clone().unwrap(), 3, Duration::from_secs(20)).unwrap();
        assert_eq!(server.name(), name);
        let got: Vec<OwnedFd> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..3).map(|_| s.spawn(|| fetch_fd(&name, Duration::from_secs(10)))).collect();
            hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
        });
        assert_eq!(server.wait().unwrap(), 3);
        for g in got {
            assert_same_file(&orig, g);
        }
        // The server is gone after its N clients: the name is free and connecting times out.
        let e = fetch_fd(&name, Duration::from_millis(50)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    }

    #[test]
    fn fetch_fd_waits_for_a_server_that_starts_later() {
        let orig = memfd();
        let name = unique_name("late");
        let client = {
            let name = name.clone();
            std::thread::spawn(move || fetch_fd(&name, Duration::from_secs(10)))
        };
        std::thread::sleep(Duration::from_millis(150));
        let server = FdServer::start(&name, orig.try_clone().unwrap(), 1, Duration::from_secs(10)).unwrap();
        let got = client.join().unwrap().unwrap();
        assert_eq!(server.wait().unwrap(), 1);
        assert_same_file(&orig, got);
    }

    #[test]
    fn fetch_fd_without_a_server_times_out() {
        let t = Instant::now();
        let e = fetch_fd(&unique_name("none"), Duration::from_millis(100)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(t.elapsed() >= Duration::from_millis(100) && t.elapsed() < Duration::from_secs(5));
        assert_eq!(fetch_fd("", Duration::from_millis(1)).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn the_server_stops_at_its_deadline_and_on_drop() {
        let name = unique_name("deadline");
        let t = Instant::now();
        let server = FdServer::start(&name, memfd(), 5, Duration::from_millis(100)).unwrap();
        assert_eq!(server.wait().unwrap(), 0);
        assert!(t.elapsed() < Duration::from_secs(5));
        // A second server cannot take a name that is in use, and dropping one returns promptly.
        let name = unique_name("drop");
        let server = FdServer::start(&name, memfd(), 5, Duration::from_secs(600)).unwrap();
        assert_eq!(FdServer::start(&name, memfd(), 1, Duration::from_secs(1)).unwrap_err().kind(), io::ErrorKind::AddrInUse);
        let t = Instant::now();
        drop(server);
        assert!(t.elapsed() < Duration::from_secs(2), "drop took {:?}", t.elapsed());
        // The name is free again.
        drop(FdServer::start(&name, memfd(), 1, Duration::from_millis(10)).unwrap());
    }

    /// pidfd_getfd on this very process. Where the kernel allows it (Linux 5.6+, not filtered), it
    /// yields a new descriptor of the same file and `receive_fd` takes that path; where it does not
    /// (EPERM/ENOSYS/EACCES), `receive_fd` must take the SCM_RIGHTS path.
    #[test]
    fn pidfd_getfd_on_our_own_pid_or_the_fallback() {
        let orig = memfd();
        let pid = std::process::id();
        let name = unique_name("pidfd");
        let server = FdServer::start(&name, orig.try_clone().unwrap(), 1, Duration::from_secs(20)).unwrap();
        let direct = pidfd_getfd(pid, orig.as_raw_fd());
        let (got, path) = receive_fd(pid, orig.as_raw_fd(), &name, Duration::from_secs(10)).unwrap();
        match direct {
            Ok(fd) => {
                println!("pidfd_getfd works here");
                assert_same_file(&orig, fd);
                assert_eq!(path, FdPath::PidfdGetfd);
                drop(server); // never used
            }
            Err(e) => {
                assert!(pidfd_unavailable(&e), "pidfd_getfd failed with an unexpected error: {e}");
                println!("pidfd_getfd unavailable here ({e}); receive_fd fell back to SCM_RIGHTS");
                assert_eq!(path, FdPath::ScmRights);
                assert_eq!(server.wait().unwrap(), 1);
            }
        }
        assert_same_file(&orig, got);
    }

    /// The fallback logic, whatever this kernel allows: an EPERM / ENOSYS / EACCES from pidfd_getfd
    /// goes to SCM_RIGHTS; any other error (a wrong pid or descriptor) is returned as it is.
    #[test]
    fn receive_fd_falls_back_on_eperm_enosys_eacces_only() {
        let orig = memfd();
        for errno in [libc::EPERM, libc::ENOSYS, libc::EACCES] {
            let name = unique_name("fallback");
            let server = FdServer::start(&name, orig.try_clone().unwrap(), 1, Duration::from_secs(20)).unwrap();
            let (got, path) = receive_fd_with(1, 3, &name, Duration::from_secs(10), |_, _| Err(io::Error::from_raw_os_error(errno))).unwrap();
            assert_eq!(path, FdPath::ScmRights);
            assert_eq!(server.wait().unwrap(), 1);
            assert_same_file(&orig, got);
        }
        let e = receive_fd_with(1, 3, &unique_name("x"), Duration::from_secs(1), |_, _| Err(io::Error::from_raw_os_error(libc::EBADF))).unwrap_err();
        assert!(e.to_string().contains("pidfd_getfd(1, 3)") && !e.to_string().contains("SCM_RIGHTS"), "{e}");
        // Both ways failing: the error names both.
        let e = receive_fd_with(1, 3, &unique_name("y"), Duration::from_millis(30), |_, _| Err(io::Error::from_raw_os_error(libc::EPERM))).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("pidfd_getfd") && e.to_string().contains("SCM_RIGHTS"), "{e}");
        // A pid that does not exist is not a reason to fall back.
        let e = pidfd_getfd(u32::MAX, 0).unwrap_err();
        assert!(!pidfd_unavailable(&e), "{e}");
    }
}
