//! Schedules: when their slots fall (`slots`), what each run's job reads and writes
//! (`placeholders`), and how the dispatcher fires due slots exactly once (`fire`). The
//! replicated record of a schedule and its runs is `state::schedules`.

pub mod fire;
pub mod placeholders;
pub mod slots;
