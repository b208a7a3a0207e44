//! `include/chorus.h` is rendered from `chorus_ffi::header`; this test fails on any drift between
//! the checked-in header, the table and the exported functions. `CHORUS_BLESS=1` rewrites it.
use chorus_ffi::header::{render, FUNCS};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn checked_in_header_matches_the_table() {
    let path = root().join("include/chorus.h");
    let want = render();
    if std::env::var_os("CHORUS_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(have == want, "include/chorus.h is stale; regenerate it with CHORUS_BLESS=1 cargo test -p chorus-ffi --test header");
}

/// `#[no_mangle]` functions of the crate's sources (`src/*.rs`) with their parameter counts.
fn exported() -> BTreeMap<String, usize> {
    // Every source file of the crate (the entry points live in several modules) but the header's
    // own table, whose documentation names the attribute.
    let mut src = String::new();
    for entry in std::fs::read_dir(root().join("src")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("header.rs") {
            src += &std::fs::read_to_string(&path).unwrap();
        }
    }
    let mut out = BTreeMap::new();
    for part in src.split("#[no_mangle]").skip(1) {
        let after_fn = &part[part.find("extern \"C\" fn ").expect("#[no_mangle] without extern \"C\" fn") + 14..];
        let name: String = after_fn.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let open = after_fn.find('(').unwrap();
        let mut depth = 0;
        let mut close = open;
        for (i, c) in after_fn[open..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        close = open + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let params = after_fn[open + 1..close].split(',').filter(|p| !p.trim().is_empty()).count();
        out.insert(name, params);
    }
    out
}

#[test]
fn every_exported_function_is_declared_with_its_parameters() {
    let exported = exported();
    let declared: BTreeMap<String, usize> = FUNCS.iter().map(|f| (f.name.to_string(), f.args.len())).collect();
    assert_eq!(exported, declared, "the #[no_mangle] functions of src/ (left) and header::FUNCS (right) differ");
}

#[test]
#[cfg_attr(not(chorus_has_cc), ignore = "no C compiler (cc, gcc or clang) was found when the tests were built")]
fn header_compiles_as_c() {
    let cc = which_cc().expect("a C compiler (cc, gcc or clang) was found when this test was built but is gone now");
    let dir = std::env::temp_dir().join(format!("chorus-h-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c = dir.join("t.c");
    std::fs::write(&c, "#include \"chorus.h\"\nint main(void) { return (int)chorus_abi_version() - CHORUS_ABI_VERSION; }\n").unwrap();
    let st = std::process::Command::new(cc)
        .args(["-std=c99", "-Wall", "-Werror", "-fsyntax-only", "-I"])
        .arg(root().join("include"))
        .arg(&c)
        .status()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(st.success(), "include/chorus.h does not compile as C99");
}

fn which_cc() -> Result<&'static str, ()> {
    for cc in ["cc", "gcc", "clang"] {
        if std::process::Command::new(cc).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return Ok(cc);
        }
    }
    Err(())
}
