//! Process identity and liveness.

/// This process's id.
pub fn pid() -> u32 {
    std::process::id()
}

/// Whether a process with this pid exists (on this host). `kill(pid, 0)` sends nothing.
pub fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 performs only the existence/permission check and delivers nothing.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    if rc == 0 {
        return true;
    }
    // EPERM means it exists but belongs to someone else.
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The network namespace this process lives in: ranks in different namespaces cannot share
/// loopback-only endpoints, so they count as different hosts.
pub fn netns_id() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}
