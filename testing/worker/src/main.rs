//! `chorus-test-worker SCENARIO [ARGS...]`: one rank of chorus's multi-process tests (see the
//! library's documentation for the scenarios and the environment).
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(chorus_test_worker::run(&args));
}
