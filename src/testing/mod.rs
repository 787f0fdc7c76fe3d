//! Helpers for tests: real servers started from the machine's own binaries, for this
//! crate's unit tests and for integration tests. Not part of the product's interface.

pub mod object_stores;
pub mod postgres;

/// Says why a test skips and returns `None`; under `CI=true`, where `.ci/run` installs what
/// the tests need, fails instead.
pub fn skip<T>(reason: &str) -> Option<T> {
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "CI=true but {reason}: .ci/run must install it"
    );
    eprintln!("skipped: {reason}");
    None
}

/// `Some` if `python3` can import `module` (a tool we did not write, to read our output
/// back); otherwise [`skip`].
pub fn python_with(module: &str) -> Option<()> {
    let found = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output();
    match found {
        Ok(out) if out.status.success() => Some(()),
        Ok(_) => skip(&format!("python3 cannot import {module}")),
        Err(e) => skip(&format!("python3 is not available ({e})")),
    }
}

/// Pseudo-random bytes, reproducible, without a generator crate.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
