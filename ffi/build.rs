//! Tells the tests whether a C compiler was found when they were built: the test that compiles
//! `include/chorus.h` as C is ignored without one (reported as not run instead of passing).
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(chorus_has_cc)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=PATH");
    let found = ["cc", "gcc", "clang"].iter().any(|cc| Command::new(cc).arg("--version").output().is_ok_and(|o| o.status.success()));
    if found {
        println!("cargo::rustc-cfg=chorus_has_cc");
    }
}
