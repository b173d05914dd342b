//! Helpers shared by the tools' integration tests (one copy of each).

use quoll_tools::run_with_io;

/// Runs a `quoll` tool in-process with `args`; returns its exit code, stdout
/// and stderr.
pub fn run_tool<S: AsRef<str>>(args: &[S]) -> (i32, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let args = args.iter().map(|a| a.as_ref().to_string()).collect();
    let code = run_with_io(args, &mut out, &mut err);
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}
