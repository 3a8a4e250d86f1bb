//! Prerequisites of tests. A test that lacks one returns early with a printed reason on a
//! developer's machine, and **fails** under CI (`CI` set and not `0`/`false`), where
//! `scripts/test.sh` installs and starts everything: a green CI run can never hide a test
//! that did not run.

/// Whether the tests run under CI.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// A prerequisite found missing: a panic under CI, a printed skip elsewhere (the caller
/// then returns).
pub fn missing(what: &str, how: &str) {
    let _: Option<()> = require(what, how, None);
}

/// `found`, or — when it is `None` — a panic under CI and a printed skip elsewhere.
/// `what` names the prerequisite, `how` says how to get it.
pub fn require<T>(what: &str, how: &str, found: Option<T>) -> Option<T> {
    if found.is_none() {
        if in_ci() {
            panic!("missing test prerequisite under CI: {what} ({how})");
        }
        eprintln!("skipping: {what} is missing ({how})");
    }
    found
}

/// A non-empty environment variable.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}
