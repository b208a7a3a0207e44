//! Tells the root tests what the build machine offers, so a test that needs it is ignored (reported
//! as not run) where it is missing instead of passing without running: `chorus_netns` when the
//! build runs as root with iproute2 (tests/netns.rs creates network namespaces).
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(chorus_netns)");
    println!("cargo::rerun-if-changed=build.rs");
    let out = |cmd: &str, args: &[&str]| Command::new(cmd).args(args).output().ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let root = out("id", &["-u"]).is_some_and(|uid| uid == "0");
    if root && out("ip", &["-V"]).is_some() {
        println!("cargo::rustc-cfg=chorus_netns");
    }
}
