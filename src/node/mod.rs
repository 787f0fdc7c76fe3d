//! A node: its shared handle (`handle`), how calls reach the dispatcher (`forward`), the
//! services it serves and the operator calls behind them, its background loops
//! (heartbeats, membership), and `run`, which builds it all and stops it.
//!
//! `handle` and `forward` depend on nothing that uses them: the dispatcher (`crate::dispatch`)
//! and the worker (`crate::worker`) build on them, and only `run` and `services` name those.

pub mod admin;
pub mod admission;
pub mod calls;
pub mod forward;
pub mod handle;
pub mod job_history;
pub mod jobs_admin;
pub mod linked_services;
pub mod liveness;
pub mod membership;
pub mod proposer;
pub mod provision;
pub mod restored;
pub mod run;
pub mod schedules_admin;
pub mod services;
pub mod sysload;

pub use handle::{Node, NodeError};
pub use run::{EXIT_REMOVED, Removed, open_db, run};
