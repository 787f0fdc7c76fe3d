//! Fail points where tests pause a worker at an exact step of an attempt, to kill, pause or
//! partition its node there. They exist only with the `failpoints` feature, which `cargo test`
//! enables and release builds do not: a production worker has no such pause, and its binary
//! holds none of these names.
//!
//! A test configures them through the `fail` crate's `FAILPOINTS` environment variable, e.g.
//! `FAILPOINTS=worker-hold-before-publish=return(hold-:3000)`: attempts of jobs whose name
//! starts with `hold-` wait 3000 ms at that point.

use std::time::Duration;

/// Between staging and asking to publish.
#[cfg(feature = "failpoints")]
pub fn hold_before_publish(job_name: &str) -> Option<Duration> {
    fail::fail_point!("worker-hold-before-publish", |setting| hold_for(setting, job_name));
    None
}

/// Published, before the outcome is reported.
#[cfg(feature = "failpoints")]
pub fn hold_after_publish(job_name: &str) -> Option<Duration> {
    fail::fail_point!("worker-hold-after-publish", |setting| hold_for(setting, job_name));
    None
}

#[cfg(not(feature = "failpoints"))]
pub fn hold_before_publish(_job_name: &str) -> Option<Duration> {
    None
}

#[cfg(not(feature = "failpoints"))]
pub fn hold_after_publish(_job_name: &str) -> Option<Duration> {
    None
}

/// How long a job named `job_name` waits for a `return(PREFIX:MS)` setting: MS milliseconds
/// if the name starts with PREFIX, else not at all.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn hold_for(setting: Option<String>, job_name: &str) -> Option<Duration> {
    let setting = setting?;
    let (prefix, ms) = setting.rsplit_once(':')?;
    job_name
        .starts_with(prefix)
        .then(|| ms.parse().ok().map(Duration::from_millis))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_holds_only_the_jobs_it_names() {
        let setting = || Some("hold-:1500".to_string());
        assert_eq!(hold_for(setting(), "hold-7"), Some(Duration::from_millis(1500)));
        assert_eq!(hold_for(setting(), "plain-7"), None);
        assert_eq!(hold_for(Some("hold-".into()), "hold-7"), None);
        assert_eq!(hold_for(Some("hold-:soon".into()), "hold-7"), None);
        assert_eq!(hold_for(None, "hold-7"), None);
    }
}
