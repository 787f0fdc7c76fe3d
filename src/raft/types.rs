//! openraft type configuration: what a log entry carries and what applying it returns.

use std::io::Cursor;

use crate::state::{Command, CommandResult};

openraft::declare_raft_types!(
    /// Type configuration of shir's Raft group.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
);

pub use crate::state::NodeId;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Node = openraft::BasicNode;
