//! Real network namespaces: ranks 0,1 in namespace A and ranks 2,3 in namespace B, joined by a
//! veth pair (10.77.0.1/24 in A, 10.77.0.2/24 in B). No host-id override: the default host id
//! includes the network namespace, so pairs inside a namespace must use shared memory and pairs
//! across must use TCP (the worker asserts it). Rank 0 hosts the store itself
//! (MASTER_ADDR=10.77.0.1, no CHORUS_STORE_ADDR), as under torchrun.
//!
//! Needs root and iproute2; skipped (with a message) when `ip` or namespace creation is missing.
mod common;
use common::Launch;
use std::process::Command;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

const PREFIX: &str = "chorus-test-";

/// Deletes namespaces left behind by earlier runs whose process is gone (names carry the pid).
fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let pid = rest.rsplit('-').next().unwrap_or("");
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Two namespaces joined by a veth pair; deleted on drop (deleting a namespace removes its
/// end of the veth, which removes the pair).
struct Namespaces {
    a: String,
    b: String,
}

impl Namespaces {
    fn create() -> Result<Namespaces, String> {
        let pid = std::process::id();
        let ns = Namespaces { a: format!("{PREFIX}a-{pid}"), b: format!("{PREFIX}b-{pid}") };
        let (va, vb) = (format!("cva{pid}"), format!("cvb{pid}"));
        // In case this pid's names survived an earlier crash.
        let _ = ip(&["netns", "del", &ns.a]);
        let _ = ip(&["netns", "del", &ns.b]);
        ip(&["netns", "add", &ns.a])?;
        ip(&["netns", "add", &ns.b])?;
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
        ip(&["link", "set", &va, "netns", &ns.a])?;
        ip(&["link", "set", &vb, "netns", &ns.b])?;
        ip(&["-n", &ns.a, "addr", "add", "10.77.0.1/24", "dev", &va])?;
        ip(&["-n", &ns.b, "addr", "add", "10.77.0.2/24", "dev", &vb])?;
        for (n, v) in [(&ns.a, &va), (&ns.b, &vb)] {
            ip(&["-n", n, "link", "set", v, "up"])?;
            ip(&["-n", n, "link", "set", "lo", "up"])?;
        }
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}

#[test]
fn four_ranks_across_two_network_namespaces() {
    if Command::new("ip").arg("-V").output().is_err() {
        eprintln!("SKIPPED: iproute2 (`ip`) is not installed");
        return;
    }
    remove_leftovers();
    let ns = match Namespaces::create() {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("SKIPPED: cannot create network namespaces ({e}); this test needs root");
            return;
        }
    };
    let env = |_r: usize| {
        vec![
            ("MASTER_ADDR".to_string(), "10.77.0.1".to_string()),
            ("MASTER_PORT".to_string(), "29517".to_string()),
            ("CHORUS_TEST_HOSTS".to_string(), "a,a,b,b".to_string()),
        ]
    };
    let wrap = |r: usize| vec!["ip".to_string(), "netns".into(), "exec".into(), if r < 2 { ns.a.clone() } else { ns.b.clone() }];
    let launch = Launch { wrap: &wrap, host_store: false, ..Launch::new(4, "smoke", &[], &env) };
    let outs = common::run(&launch);
    for (r, o) in outs.iter().enumerate() {
        let s = String::from_utf8_lossy(&o.stdout);
        assert!(s.contains("smoke ok"), "rank {r} did not report success: {s}");
    }
    drop(ns);
}
