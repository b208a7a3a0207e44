//! Helpers of the launcher tests (here and in the root package's tests/launcher.rs).

/// The children of process `pid` (the launcher's store process and ranks), from /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut kids = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        kids.extend(list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    kids
}

/// Whether `var=` starts one of the variables in process `pid`'s environment.
pub fn has_env(pid: u32, var: &str) -> bool {
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    env.split(|&b| b == 0).any(|v| v.starts_with(format!("{var}=").as_bytes()))
}
