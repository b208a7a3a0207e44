//! Process identity and liveness.

/// This process's id.
pub fn pid() -> u32 {
    std::process::id()
}

/// Whether a process with this pid exists (on this host) and has not exited. `kill(pid, 0)`
/// sends nothing; it also succeeds for a zombie (a process that exited but that its parent has
/// not reaped yet), so a process that exists is then checked in `/proc` as well: a rank that died
/// is dead from the moment it exits, not from when its launcher gets around to reaping it.
pub fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 performs only the existence/permission check and delivers nothing.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    // EPERM means it exists but belongs to someone else.
    let exists = rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !exited(pid)
}

/// Whether `/proc` shows `pid` as exited but not reaped (state `Z`) or being torn down (`X`).
/// Without a readable `/proc` entry nothing is known, and the process counts as running.
fn exited(pid: u32) -> bool {
    match std::fs::read(format!("/proc/{pid}/stat")) {
        Ok(stat) => matches!(stat_state(&stat), Some(b'Z' | b'X' | b'x')),
        Err(_) => false,
    }
}

/// The state letter of a `/proc/<pid>/stat` line: `pid (comm) S ...`, where `comm` may itself
/// hold spaces and parentheses, so the state follows the last `)`.
fn stat_state(stat: &[u8]) -> Option<u8> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    stat[close + 1..].iter().copied().find(|b| !b.is_ascii_whitespace())
}

/// The network namespace this process lives in: ranks in different namespaces cannot share
/// loopback-only endpoints, so they count as different hosts.
pub fn netns_id() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    #[test]
    fn the_state_follows_the_last_parenthesis() {
        assert_eq!(stat_state(b"12 (sh) S 1 12"), Some(b'S'));
        assert_eq!(stat_state(b"12 (a) Z (b)) Z 1 12"), Some(b'Z'));
        assert_eq!(stat_state(b"12 (odd name) R 1"), Some(b'R'));
        assert_eq!(stat_state(b"garbage"), None);
    }

    /// Issue 25: a child that exited but was not reaped passed `kill(pid, 0)`, so a dead rank
    /// counted as alive until its parent reaped it.
    #[test]
    fn an_exited_child_that_was_not_reaped_is_dead() {
        assert!(alive(pid()));
        let mut running = Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        let mut exits = Command::new("true").spawn().expect("spawn true");
        let child_pid = exits.id();
        let deadline = Instant::now() + Duration::from_secs(20);
        // Not reaped: `true` stays a zombie until `wait` below.
        while alive(child_pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let zombie = std::fs::read(format!("/proc/{child_pid}/stat")).ok().and_then(|s| stat_state(&s));
        let still_alive = alive(child_pid);
        let sleeping_alive = alive(running.id());
        let _ = running.kill();
        let _ = running.wait();
        let _ = exits.wait();
        assert_eq!(zombie, Some(b'Z'), "the child should be an unreaped zombie here");
        assert!(!still_alive, "an exited, unreaped child counts as alive");
        assert!(sleeping_alive, "a running child counts as dead");
        assert!(!alive(child_pid), "a reaped child counts as alive");
    }
}
